//! The vhost-user backend as a hostile frontend meets it: any sequence of messages (codes,
//! flags, sizes and bodies from the input, descriptors attached where the protocol carries
//! them, messages split across writes), writes into the shared memory file and queue kicks,
//! over a real socket to the backend in an event loop. Nothing may panic or block.
#![no_main]

use devices::virtio::console::{Console, ConsoleConfig, PortBackend, PortConfig};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use vmm::vhost_user::{VhostUserBackend, VhostUserDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const MEM: u64 = 1 << 20;

struct Sink;

impl PortBackend for Sink {
    fn write_to_host(&mut self, data: &[u8]) -> usize {
        data.len()
    }
}

struct Rig {
    em: EventManager<Box<dyn MutEventSubscriber>>,
    sock: PathBuf,
    mem: File,
}

impl Rig {
    fn new() -> Rig {
        let sock =
            std::env::temp_dir().join(format!("vhost-user-fuzz-{}.sock", std::process::id()));
        let mut console = Console::new(ConsoleConfig {
            max_nr_ports: 2,
            ..ConsoleConfig::default()
        })
        .unwrap();
        console
            .add_port(PortConfig::serial(1, "p1"), Box::new(Sink))
            .unwrap();
        let backend = VhostUserBackend::new(&sock, console).unwrap();
        let mut em: EventManager<Box<dyn MutEventSubscriber>> = EventManager::new().unwrap();
        em.add_subscriber(Box::new(VhostUserDevice(Rc::new(RefCell::new(backend)))));
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"guest-mem".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nobody else.
        let mem = unsafe { File::from_raw_fd(fd) };
        Rig { em, sock, mem }
    }

    fn settle(&mut self) {
        virtagent_fuzz::settle(&mut self.em);
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn drain(c: &UnixStream) {
    let mut b = [0u8; 4096];
    while matches!((&*c).read(&mut b), Ok(n) if n > 0) {}
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(Rig::new);
        // Fresh, zeroed guest memory for every input.
        rig.mem.set_len(0).unwrap();
        rig.mem.set_len(MEM).unwrap();
        let c = UnixStream::connect(&rig.sock).unwrap();
        c.set_nonblocking(true).unwrap();
        rig.settle();
        let mut kicks: Vec<EventFd> = Vec::new();
        let mut i = 0;
        let take = |i: &mut usize, n: usize| -> &[u8] {
            let s = &data[(*i).min(data.len())..(*i + n).min(data.len())];
            *i += n;
            s
        };
        while i < data.len() {
            let op = take(&mut i, 1)[0];
            match op % 4 {
                0 | 1 => {
                    // A message: code, flags, size, body; descriptors where the code takes them.
                    let h = take(&mut i, 3).to_vec();
                    let code = u32::from(*h.first().unwrap_or(&0)) % 48;
                    let flags = 1 | (u32::from(*h.get(1).unwrap_or(&0)) & 0xc);
                    let len = usize::from(*h.get(2).unwrap_or(&0)) * 2;
                    let body = take(&mut i, len).to_vec();
                    let mut msg = Vec::new();
                    msg.extend_from_slice(&code.to_le_bytes());
                    msg.extend_from_slice(&flags.to_le_bytes());
                    // Now and then a size that does not match the body.
                    let size = if op & 0x80 != 0 {
                        u32::from(op) << 8
                    } else {
                        body.len() as u32
                    };
                    msg.extend_from_slice(&size.to_le_bytes());
                    msg.extend_from_slice(&body);
                    let mut fds: Vec<RawFd> = Vec::new();
                    let ev;
                    match code {
                        5 => fds.extend(std::iter::repeat_n(
                            rig.mem.as_raw_fd(),
                            usize::from(op >> 5 & 3),
                        )),
                        12..=14 | 21 => {
                            ev = EventFd::new(EFD_NONBLOCK).unwrap();
                            fds.push(ev.as_raw_fd());
                            if code == 12 {
                                kicks.push(ev.try_clone().unwrap());
                            }
                        }
                        _ => {}
                    }
                    // Split in two writes (the backend must assemble it without blocking).
                    let cut = if op & 0x40 != 0 {
                        msg.len() / 2
                    } else {
                        msg.len()
                    };
                    let first = if fds.is_empty() {
                        (&c).write(&msg[..cut]).unwrap_or(0)
                    } else {
                        c.send_with_fds(&[&msg[..cut]], &fds).unwrap_or(0)
                    };
                    rig.settle();
                    if first == cut && cut < msg.len() {
                        let _ = (&c).write(&msg[cut..]);
                    }
                    rig.settle();
                    drain(&c);
                }
                2 => {
                    // Guest memory: rings, descriptors, data.
                    let off = u64::from(u16::from_le_bytes([
                        take(&mut i, 1).first().copied().unwrap_or(0),
                        take(&mut i, 1).first().copied().unwrap_or(0),
                    ])) * 16;
                    let len = usize::from(op >> 2);
                    let bytes = take(&mut i, len).to_vec();
                    let _ = rig.mem.write_all_at(&bytes, off % MEM);
                }
                _ => {
                    if let Some(k) = kicks.get(usize::from(op >> 2) % kicks.len().max(1)) {
                        let _ = k.write(1);
                    }
                    rig.settle();
                }
            }
        }
        drop(c);
        rig.settle();
    });
});
