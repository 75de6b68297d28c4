//! The vhost-user protocol of `vmm -machine vhost-user`, driven by a small frontend written
//! here over the real socket (runs everywhere; the UML tests drive it with a real kernel).

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const GET_CONFIG: u32 = 24;
const NEED_REPLY: u32 = 0x8;

/// One frontend connection.
struct Frontend(UnixStream);

impl Frontend {
    fn connect(p: &Path) -> Frontend {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Frontend(s)
    }

    fn send(&mut self, code: u32, flags: u32, body: &[u8], fds: &[i32]) {
        let mut m = Vec::new();
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&(0x1 | flags).to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        if fds.is_empty() {
            self.0.write_all(&m).unwrap();
        } else {
            let n = self.0.send_with_fds(&[&m[..]], fds).unwrap();
            assert_eq!(n, m.len());
        }
    }

    /// Reads one reply: (code, payload).
    fn reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 12];
        self.0.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        assert_eq!(w(4) & 0x4, 0x4, "reply flag");
        let mut body = vec![0u8; w(8) as usize];
        self.0.read_exact(&mut body).unwrap();
        (w(0), body)
    }

    fn u64_reply(&mut self, code: u32) -> u64 {
        self.send(code, 0, &[], &[]);
        let (c, b) = self.reply();
        assert_eq!((c, b.len()), (code, 8));
        u64::from_le_bytes(b.try_into().unwrap())
    }

    /// A request with NEED_REPLY; returns the ack value (0 = success).
    fn acked(&mut self, code: u32, body: &[u8], fds: &[i32]) -> u64 {
        self.send(code, NEED_REPLY, body, fds);
        let (c, b) = self.reply();
        assert_eq!((c, b.len()), (code, 8));
        u64::from_le_bytes(b.try_into().unwrap())
    }
}

fn mem_table(regions: &[(u64, u64, u64)], room_for: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, uaddr) in regions {
        for v in [gpa, size, uaddr, 0u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.resize(8 + 32 * room_for.max(regions.len()), 0);
    b
}

#[test]
fn handshake_config_and_uml_sized_mem_table() {
    let dir = tempfile::tempdir().unwrap();
    let vu = dir.path().join("vu.sock");
    let _vmm = spawn_vmm(
        [
            "-machine",
            &format!("vhost-user,socket={}", vu.display()),
            "-chardev",
            "null,id=n0",
            "-device",
            "virtio-serial,max_ports=4",
            "-device",
            "virtserialport,chardev=n0,name=test.0,id=p0",
        ],
        &dir.path().join("vmm.log"),
        &[&vu],
    );

    let mut f = Frontend::connect(&vu);
    f.send(SET_OWNER, 0, &[], &[]);
    let feat = f.u64_reply(GET_FEATURES);
    for bit in [1, 32, 30] {
        assert!(
            feat & (1 << bit) != 0,
            "feature bit {bit} missing in {feat:#x}"
        );
    }
    let proto = f.u64_reply(GET_PROTOCOL_FEATURES);
    assert_eq!(proto & 0x8, 0x8, "REPLY_ACK");
    assert_eq!(proto & 0x200, 0x200, "CONFIG");
    assert_eq!(
        proto & (1 << 14),
        0,
        "INBAND_NOTIFICATIONS must not be offered"
    );
    f.send(
        SET_PROTOCOL_FEATURES,
        0,
        &(0x8u64 | 0x200).to_le_bytes(),
        &[],
    );
    assert_eq!(f.u64_reply(GET_QUEUE_NUM), 10, "2 * (max_ports + 1) queues");

    // GET_CONFIG as UML asks: offset 0, size = offset + len; the reply is exactly that size.
    let mut cfg = Vec::new();
    for v in [0u32, 8, 0] {
        cfg.extend_from_slice(&v.to_le_bytes());
    }
    f.send(GET_CONFIG, 0, &cfg, &[]);
    let (c, b) = f.reply();
    assert_eq!((c, b.len()), (GET_CONFIG, 12 + 8));
    assert_eq!(&b[12 + 4..12 + 8], &4u32.to_le_bytes(), "max_nr_ports");

    // SET_MEM_TABLE: one region in a payload sized for two (as UML sends it) is accepted.
    let mem: File = tempfile::tempfile().unwrap();
    mem.set_len(1 << 20).unwrap();
    let fd = mem.as_raw_fd();
    let one = mem_table(&[(0, 1 << 20, 0x7000_0000)], 2);
    assert_eq!(f.acked(SET_MEM_TABLE, &one, &[fd]), 0);
    // A payload shorter than its regions, or a region without fd, is refused.
    let short = &mem_table(&[(0, 1 << 20, 0x7000_0000)], 1)[..30];
    assert_ne!(f.acked(SET_MEM_TABLE, short, &[fd]), 0);
    assert_ne!(f.acked(SET_MEM_TABLE, &one, &[]), 0);
    // So is a file shorter than the region it is said to hold (its pages would fault at once).
    let short: File = tempfile::tempfile().unwrap();
    short.set_len(4096).unwrap();
    assert_ne!(f.acked(SET_MEM_TABLE, &one, &[short.as_raw_fd()]), 0);
    // Unknown requests are refused, and the session goes on.
    assert_ne!(f.acked(99, &[], &[]), 0);
    assert!(f.u64_reply(GET_FEATURES) & (1 << 32) != 0);

    // A message header that promises more than the protocol allows ends the session ...
    f.send(GET_FEATURES, 0, &vec![0u8; 0x1001], &[]);
    let mut b = [0u8; 1];
    assert!(matches!(f.0.read(&mut b), Ok(0) | Err(_)));
    // ... and the next frontend is served.
    let mut g = Frontend::connect(&vu);
    assert!(g.u64_reply(GET_FEATURES) & (1 << 32) != 0);
}

/// A split virtqueue the test drives as the guest driver would, in a shared memory file
/// (written and read with pwrite/pread; the backend maps the same file).
struct Vq {
    index: u32,
    /// Guest-physical base: descriptors at +0, avail ring at +0x100, used ring at +0x200.
    base: u64,
    avail: u16,
    used_seen: u16,
    kick: vmm_sys_util::eventfd::EventFd,
    call: vmm_sys_util::eventfd::EventFd,
}

const QSIZE: u16 = 16;
/// Frontend "virtual address" of guest-physical 0.
const UADDR: u64 = 0x1_0000_0000;

impl Vq {
    fn new(index: u32) -> Vq {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        Vq {
            index,
            base: 0x1000 * (u64::from(index) + 1),
            avail: 0,
            used_seen: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    fn setup(&self, f: &mut Frontend) {
        let st = |n: u32| [self.index.to_le_bytes(), n.to_le_bytes()].concat();
        f.send(8, 0, &st(u32::from(QSIZE)), &[]); // SET_VRING_NUM
        f.send(10, 0, &st(0), &[]); // SET_VRING_BASE
        let mut a = Vec::new();
        a.extend_from_slice(&self.index.to_le_bytes());
        a.extend_from_slice(&0u32.to_le_bytes());
        for off in [0u64, 0x200, 0x100] {
            // descriptor table, used ring, available ring (frontend addresses)
            a.extend_from_slice(&(UADDR + self.base + off).to_le_bytes());
        }
        a.extend_from_slice(&0u64.to_le_bytes());
        f.send(9, 0, &a, &[]); // SET_VRING_ADDR
        let idx = u64::from(self.index).to_le_bytes();
        f.send(13, 0, &idx, &[self.call.as_raw_fd()]); // SET_VRING_CALL
        f.send(12, 0, &idx, &[self.kick.as_raw_fd()]); // SET_VRING_KICK
    }

    /// Posts one buffer and kicks.
    fn post(&mut self, mem: &File, addr: u64, len: u32, writable: bool) {
        use std::os::unix::fs::FileExt;
        let d = self.avail % QSIZE;
        let mut desc = Vec::new();
        desc.extend_from_slice(&addr.to_le_bytes());
        desc.extend_from_slice(&len.to_le_bytes());
        desc.extend_from_slice(&(if writable { 2u16 } else { 0 }).to_le_bytes());
        desc.extend_from_slice(&0u16.to_le_bytes());
        mem.write_all_at(&desc, self.base + 16 * u64::from(d))
            .unwrap();
        mem.write_all_at(&d.to_le_bytes(), self.base + 0x100 + 4 + 2 * u64::from(d))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_all_at(&self.avail.to_le_bytes(), self.base + 0x100 + 2)
            .unwrap();
        self.kick.write(1).unwrap();
    }

    /// Waits for the next used buffer: (descriptor id, length).
    fn next_used(&mut self, mem: &File) -> (u16, u32) {
        use std::os::unix::fs::FileExt;
        let t = std::time::Instant::now();
        loop {
            let mut idx = [0u8; 2];
            mem.read_exact_at(&mut idx, self.base + 0x200 + 2).unwrap();
            if u16::from_le_bytes(idx) != self.used_seen {
                let slot = u64::from(self.used_seen % QSIZE);
                let mut e = [0u8; 8];
                mem.read_exact_at(&mut e, self.base + 0x200 + 4 + 8 * slot)
                    .unwrap();
                self.used_seen = self.used_seen.wrapping_add(1);
                return (
                    u32::from_le_bytes(e[..4].try_into().unwrap()) as u16,
                    u32::from_le_bytes(e[4..].try_into().unwrap()),
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "queue {}: nothing used",
                self.index
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn ctrl(id: u32, event: u16, value: u16) -> Vec<u8> {
    [
        &id.to_le_bytes()[..],
        &event.to_le_bytes(),
        &value.to_le_bytes(),
    ]
    .concat()
}

/// `vmm -machine vhost-user` with port 1 (`test.port`, id `p1`) on a listening socket chardev:
/// the vmm, its vhost-user socket and the connected host end of the port.
fn launch_with_port(dir: &Path) -> (Vmm, std::path::PathBuf, UnixStream) {
    let vu = dir.join("vu.sock");
    let port = dir.join("port.sock");
    let vmm = Vmm::launch(
        dir,
        [
            "-machine",
            &format!("vhost-user,socket={}", vu.display()),
            "-chardev",
            &format!("socket,id=s0,path={},server=on,wait=off", port.display()),
            "-device",
            "virtio-serial,max_ports=2",
            "-device",
            "virtserialport,chardev=s0,name=test.port,id=p1",
        ],
        false,
        &[&vu],
    );
    let host = UnixStream::connect(&port).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (vmm, vu, host)
}

/// The whole guest side of a port — probe handshake, open, data both ways, close — through the
/// backend, with a socket chardev as the port's host side and a QMP client watching events.
#[test]
fn port_handshake_and_data_without_uml() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (vmm, vu, mut host) = launch_with_port(dir.path());
    let mut q = vmm.client();

    let mem: File = tempfile::tempfile().unwrap();
    mem.set_len(1 << 20).unwrap();
    let mut f = Frontend::connect(&vu);
    f.send(SET_OWNER, 0, &[], &[]);
    // VERSION_1 | MULTIPORT; no EVENT_IDX, no protocol features (rings start at SET_VRING_KICK).
    f.send(2, 0, &((1u64 << 32) | 2).to_le_bytes(), &[]);
    f.send(
        SET_MEM_TABLE,
        0,
        &mem_table(&[(0, 1 << 20, UADDR)], 1),
        &[mem.as_raw_fd()],
    );
    // Queues: 2/3 control rx/tx, 4/5 port 1 rx/tx (port 0's 0/1 are left unset).
    let mut qs: Vec<Vq> = (2..6).map(Vq::new).collect();
    for v in &qs {
        v.setup(&mut f);
    }
    let [crx, ctx, prx, ptx] = &mut qs[..] else {
        unreachable!()
    };
    let buf = |i: u64| 0x10000 + 0x1000 * i;
    for i in 0..4 {
        crx.post(&mem, buf(i), 256, true);
    }
    let recv_ctrl = |crx: &mut Vq| {
        let (id, len) = crx.next_used(&mem);
        let mut b = vec![0u8; len as usize];
        mem.read_exact_at(&mut b, buf(u64::from(id))).unwrap();
        crx.post(&mem, buf(u64::from(id)), 256, true);
        b
    };
    let send_ctrl = |ctx: &mut Vq, i: u64, msg: &[u8]| {
        mem.write_all_at(msg, buf(8 + i)).unwrap();
        ctx.post(&mem, buf(8 + i), msg.len() as u32, false);
        ctx.next_used(&mem);
    };
    // DEVICE_READY → DEVICE_ADD(1); PORT_READY(1) → PORT_NAME, PORT_OPEN (host connected).
    send_ctrl(ctx, 0, &ctrl(u32::MAX, 0, 1));
    assert_eq!(recv_ctrl(crx), ctrl(1, 1, 1));
    send_ctrl(ctx, 1, &ctrl(1, 3, 1));
    let mut got = vec![recv_ctrl(crx), recv_ctrl(crx)];
    got.sort();
    let mut want = vec![
        [ctrl(1, 7, 1), b"test.port".to_vec()].concat(),
        ctrl(1, 6, 1),
    ];
    want.sort();
    assert_eq!(got, want);
    // The guest opens the port: QEMU's event.
    send_ctrl(ctx, 2, &ctrl(1, 6, 1));
    let ev = q
        .wait_event("VSERPORT_CHANGE", Duration::from_secs(10))
        .unwrap();
    assert_eq!(ev["data"], serde_json::json!({"id": "p1", "open": true}));

    // guest → host
    mem.write_all_at(b"hello host", buf(12)).unwrap();
    ptx.post(&mem, buf(12), 10, false);
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    // host → guest
    prx.post(&mem, buf(13), 64, true);
    host.write_all(b"hello guest").unwrap();
    let (id, len) = prx.next_used(&mem);
    let mut b = vec![0u8; len as usize];
    mem.read_exact_at(&mut b, buf(13)).unwrap();
    assert_eq!((id, b.as_slice()), (0, &b"hello guest"[..]));

    // The guest closes the port; then the frontend goes away.
    send_ctrl(ctx, 3, &ctrl(1, 6, 0));
    let ev = q
        .wait_event("VSERPORT_CHANGE", Duration::from_secs(10))
        .unwrap();
    assert_eq!(ev["data"], serde_json::json!({"id": "p1", "open": false}));
    drop(f);
    // Host disconnect is noticed by the device even with no frontend; the vmm keeps serving.
    drop(host);
    let mut g = Frontend::connect(&vu);
    assert!(g.u64_reply(GET_FEATURES) & (1 << 32) != 0);
}

/// A `vmm -machine vhost-user` with a socket chardev on port 1, and a frontend driving it as the
/// guest would, up to the guest having opened the port.
struct Rig {
    vmm: Vmm,
    vu: std::path::PathBuf,
    f: Frontend,
    mem: File,
    /// Port 1's receive and transmit queues.
    prx: Vq,
    ptx: Vq,
    /// The host end of port 1's chardev.
    host: UnixStream,
}

impl Rig {
    fn start(dir: &Path, mem_size: u64) -> Rig {
        use std::os::unix::fs::FileExt;
        let (vmm, vu, host) = launch_with_port(dir);
        let mut q = vmm.client();
        let mem: File = tempfile::tempfile().unwrap();
        mem.set_len(mem_size).unwrap();
        let mut f = Frontend::connect(&vu);
        f.send(SET_OWNER, 0, &[], &[]);
        f.send(2, 0, &((1u64 << 32) | 2).to_le_bytes(), &[]);
        f.send(
            SET_MEM_TABLE,
            0,
            &mem_table(&[(0, mem_size, UADDR)], 1),
            &[mem.as_raw_fd()],
        );
        let mut qs: Vec<Vq> = (2..6).map(Vq::new).collect();
        for v in &qs {
            v.setup(&mut f);
        }
        let buf = |i: u64| 0x10000 + 0x1000 * i;
        {
            let [crx, ctx, ..] = &mut qs[..] else {
                unreachable!()
            };
            for i in 0..4 {
                crx.post(&mem, buf(i), 256, true);
            }
            let mut send_ctrl = |i: u64, msg: &[u8]| {
                mem.write_all_at(msg, buf(8 + i)).unwrap();
                ctx.post(&mem, buf(8 + i), msg.len() as u32, false);
                ctx.next_used(&mem);
            };
            send_ctrl(0, &ctrl(u32::MAX, 0, 1)); // DEVICE_READY
            send_ctrl(1, &ctrl(1, 3, 1)); // PORT_READY
            send_ctrl(2, &ctrl(1, 6, 1)); // PORT_OPEN: the guest opens the port
        }
        q.wait_event("VSERPORT_CHANGE", Duration::from_secs(10))
            .unwrap();
        let ptx = qs.pop().unwrap();
        let prx = qs.pop().unwrap();
        Rig {
            vmm,
            vu,
            f,
            mem,
            prx,
            ptx,
            host,
        }
    }
}

/// A guest writing to a port as fast as it can while the host reads at 20 MB/s, for 30 s: the
/// device stops taking the guest's output while the host is behind (the guest's buffers stay
/// queued), `vmm` memory stays bounded, and every byte arrives.
#[test]
fn a_guest_streaming_to_a_slow_host_is_throttled_not_buffered() {
    const BUF: u32 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(dir.path(), 4 << 20);
    let host = rig.host.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut host = host;
            let mut b = vec![0u8; BUF as usize];
            let mut total = 0u64;
            let start = std::time::Instant::now();
            loop {
                let n = match host.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                assert!(
                    b[..n].iter().all(|&x| x == 0x5a),
                    "guest bytes arrive intact"
                );
                total += n as u64;
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // drain at full speed
                }
                // 20 MB/s.
                let due = Duration::from_secs_f64(total as f64 / 20e6);
                if let Some(d) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(d);
                }
            }
            total
        })
    };
    let payload = vec![0x5au8; BUF as usize];
    let addr = |i: u64| (1 << 20) + u64::from(BUF) * i;
    use std::os::unix::fs::FileExt;
    for i in 0..16 {
        rig.mem.write_all_at(&payload, addr(i)).unwrap();
    }
    let mut posted = 0u64;
    for i in 0..16 {
        rig.ptx.post(&rig.mem, addr(i), BUF, false);
        posted += u64::from(BUF);
    }
    let start = std::time::Instant::now();
    let mut peak = 0;
    let mut sampled = start;
    while start.elapsed() < Duration::from_secs(30) {
        let (id, _) = rig.ptx.next_used(&rig.mem);
        rig.ptx.post(&rig.mem, addr(u64::from(id)), BUF, false);
        posted += u64::from(BUF);
        if sampled.elapsed() > Duration::from_millis(200) {
            sampled = std::time::Instant::now();
            let rss = rig.vmm.proc.rss_kib();
            peak = peak.max(rss);
            assert!(
                rss < 64 << 10,
                "vmm RSS {rss} KiB after {:?} ({posted} bytes posted)",
                start.elapsed()
            );
        }
    }
    // The host catches up: the 16 buffers still queued are taken, and everything arrives.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..16 {
        rig.ptx.next_used(&rig.mem);
    }
    let t = std::time::Instant::now();
    loop {
        // The reader finishes when the vmm closes the port's connection (the test ends it below).
        if t.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(rig.vmm);
    let total = reader.join().unwrap();
    assert_eq!(total, posted, "every byte the guest wrote reached the host");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "guest streaming: {posted} bytes in {secs:.1} s ({:.1} MB/s, host reading at 20 MB/s), vmm peak RSS {peak} KiB",
        posted as f64 / secs / 1e6
    );
    assert!(
        posted as f64 / secs > 10e6,
        "the guest's throughput follows the host's reading, not a crawl"
    );
}

/// A frontend that sends a message a few bytes at a time, or stops half way, never stalls the
/// event loop: the monitor keeps answering within 100 ms, and the message is handled once whole.
#[test]
fn a_partial_vhost_user_message_does_not_stall_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let vu = dir.path().join("vu.sock");
    let vmm = Vmm::launch(
        dir.path(),
        [
            "-machine",
            &format!("vhost-user,socket={}", vu.display()),
            "-chardev",
            "null,id=n0",
            "-device",
            "virtio-serial,max_ports=2",
            "-device",
            "virtserialport,chardev=n0,name=test.0",
        ],
        false,
        &[&vu],
    );
    let mut q = vmm.client();
    let mut f = Frontend::connect(&vu);
    let mut m = Vec::new();
    m.extend_from_slice(&GET_FEATURES.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    // Half a header, then nothing for a while.
    f.0.write_all(&m[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = std::time::Instant::now();
        q.execute("query-status", serde_json::Value::Null)
            .unwrap()
            .unwrap();
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worst < Duration::from_millis(100),
        "the monitor took {worst:?} to answer while a vhost-user message was half sent"
    );
    // The rest, one byte at a time: the message is handled once complete.
    for b in &m[5..] {
        f.0.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = f.reply();
    assert_eq!((code, body.len()), (GET_FEATURES, 8));
    assert!(u64::from_le_bytes(body.try_into().unwrap()) & (1 << 32) != 0);
}

/// A frontend that truncates the memory file it shared after SET_MEM_TABLE: the device's next
/// access would raise SIGBUS. The frontend is disconnected with a log line; `vmm` lives on and
/// serves the next frontend.
#[test]
fn a_frontend_shrinking_shared_memory_is_disconnected_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(dir.path(), 1 << 20);
    // The frontend shrinks the file, then kicks: the device reads the rings past its end.
    rig.mem.set_len(0).unwrap();
    rig.ptx.kick.write(1).unwrap();
    rig.prx.kick.write(1).unwrap();
    let mut b = [0u8; 1];
    rig.f
        .0
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        matches!(rig.f.0.read(&mut b), Ok(0)),
        "the frontend is disconnected"
    );
    assert!(
        rig.vmm.proc.is_running(),
        "vmm died:\n{}",
        rig.vmm.log_text()
    );
    assert!(
        rig.vmm
            .log_text()
            .contains("the frontend shrank the guest memory file it shared"),
        "{}",
        rig.vmm.log_text()
    );
    let mut q = rig.vmm.client();
    q.execute("query-status", serde_json::Value::Null)
        .unwrap()
        .unwrap();
    let mut next = Frontend::connect(&rig.vu);
    assert!(next.u64_reply(GET_FEATURES) & (1 << 32) != 0);
}
