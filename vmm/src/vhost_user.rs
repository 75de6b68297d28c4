//! A vhost-user backend serving the virtio-serial device core (`devices::virtio::console`).
//!
//! The VMM listens on a unix socket; a vhost-user frontend (QEMU, Cloud Hypervisor, User-Mode
//! Linux) connects, hands over guest memory and its virtqueues, and the same `Console` that the
//! KVM machine puts behind virtio-mmio serves them. One frontend at a time; when it goes away
//! the device is reset (every port guest-closed) and the next one may connect.
//!
//! Everything runs on the VMM's one event-loop thread: the listening socket, the frontend's
//! socket, the queues' kick fds and the device's pending-work eventfd are event-manager fds of
//! [`VhostUserBackend`]. No worker threads, no locks around the device. Nothing the frontend
//! does can stop that thread: its socket is non-blocking, messages are assembled across wakeups
//! however slowly they arrive, replies wait in a small buffer (a frontend that leaves more than
//! [`MAX_REPLY_BACKLOG`] unread is disconnected), and a memory file it shrinks after sharing it
//! turns into a disconnect, not a `SIGBUS` (see [`crate::shared_memory`]).
//!
//! The protocol layer is the project's own (this file), built on the message definitions of
//! the `vhost` crate (`vhost::vhost_user::message`): `vhost` 0.18's request handler insists that
//! `SET_MEM_TABLE`'s payload is exactly as long as the regions it describes, and User-Mode Linux
//! sends a payload sized for two regions while describing one, so that handler cannot serve UML
//! (see docs/vhost-user.md).

use devices::virtio::console::Console;
use devices::virtio::{DeviceIo, InterruptKind, InterruptSignal, Queue, QueueT, VirtioDevice};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use evloop::unix_socket::BoundPath;
use evloop::{AcceptGate, Interest, OutBuf};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::rc::Rc;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserU64,
    VhostUserVirtioFeatures, VhostUserVringAddr, VhostUserVringState, MAX_MSG_SIZE,
};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::shared_memory::{self, SharedMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::ports::PortDevice;

/// Header flag bits (vhost-user spec): protocol version 1, reply, need-reply.
const VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HEADER_LEN: usize = 12;
/// Largest split virtqueue (virtio spec).
const MAX_QUEUE_SIZE: u16 = 32768;
/// Most memory regions one `SET_MEM_TABLE` may describe (the spec's `VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_REGIONS: usize = 8;
/// Most reply bytes a frontend may leave unread before it is disconnected (replies are at most
/// a few KiB; a frontend that sends requests without reading the answers is broken).
pub const MAX_REPLY_BACKLOG: usize = 64 << 10;
/// Most descriptors accepted with one message (`SET_MEM_TABLE` carries one per region).
const MAX_FDS: usize = 8;
/// Most messages handled per wakeup, so the other fds of the loop get their turn.
const MESSAGES_PER_WAKEUP: usize = 64;

/// Protocol features offered. `BACKEND_REQ`: the backend-request channel is kept open for the
/// whole session but never written (the console's configuration never changes after start);
/// UML 6.1 needs it, since without it the first virtqueue asks for IRQ 0 and the probe fails
/// with EBUSY. Not offered: `INBAND_NOTIFICATIONS` (kicks and calls go through fds), `MQ` (the
/// queue count is fixed by the device).
fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// Per-queue state besides the `Queue` itself.
#[derive(Default)]
struct Ring {
    kick: Option<File>,
    call: Option<File>,
    /// `SET_VRING_ENABLE` state (rings start enabled unless protocol features were negotiated).
    enabled: bool,
    addr_set: bool,
}

/// Writes the call fds (eventfds or, with UML, socketpairs: 8 bytes each time).
struct Calls<'a>(&'a [Ring]);

impl InterruptSignal for Calls<'_> {
    fn trigger(&self, kind: InterruptKind) {
        match kind {
            InterruptKind::Queue(i) => {
                if let Some(Some(f)) = self.0.get(usize::from(i)).map(|r| r.call.as_ref()) {
                    let _ = (&*f).write(&1u64.to_ne_bytes());
                }
            }
            InterruptKind::Config => {
                log::debug!("vhost-user: config interrupt not delivered (no backend channel)")
            }
        }
    }
}

/// A message being received without blocking: the header, then the body; descriptors may come
/// with any part of it.
#[derive(Default)]
struct Incoming {
    hdr: [u8; HEADER_LEN],
    have_hdr: usize,
    body: Vec<u8>,
    have_body: usize,
    files: Vec<File>,
}

/// One complete message from the frontend.
struct Message {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    files: Vec<File>,
}

/// One connected frontend.
struct Session {
    sock: UnixStream,
    /// The message being received.
    rx: Incoming,
    /// Replies the frontend has not read yet.
    out: OutBuf,
    protocol: u64,
    acked_features: u64,
    activated: bool,
    regions: Vec<VhostUserMemoryRegion>,
    mem: Option<SharedMemory>,
    queues: Vec<Queue>,
    rings: Vec<Ring>,
    /// The device returned an error: no queue work until the frontend resets or reconnects.
    broken: bool,
    /// `SET_BACKEND_REQ_FD`: held open (a frontend may drop the device when it closes).
    backend_req: Option<File>,
    /// Queues that just started: buffers posted before they did are looked at once.
    started: Vec<u16>,
}

impl Session {
    fn reply_ack(&self) -> bool {
        self.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Frontend virtual address → guest physical address.
    /// Receives what has arrived of the next message; `Ok(None)` until it is complete.
    fn receive(&mut self) -> io::Result<Option<Message>> {
        let rx = &mut self.rx;
        while rx.have_hdr < HEADER_LEN {
            match recv_some(&self.sock, &mut rx.hdr[rx.have_hdr..], &mut rx.files) {
                Ok(n) => rx.have_hdr += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
            if rx.have_hdr == HEADER_LEN {
                let size = u32::from_le_bytes(rx.hdr[8..12].try_into().expect("4 bytes"));
                if size as usize > MAX_MSG_SIZE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "message {} of {size} bytes",
                            u32::from_le_bytes(rx.hdr[..4].try_into().expect("4 bytes"))
                        ),
                    ));
                }
                rx.body = vec![0; size as usize];
                rx.have_body = 0;
            }
        }
        while rx.have_body < rx.body.len() {
            match recv_some(&self.sock, &mut rx.body[rx.have_body..], &mut rx.files) {
                Ok(n) => rx.have_body += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let rx = std::mem::take(&mut self.rx);
        let w = |i: usize| u32::from_le_bytes(rx.hdr[i..i + 4].try_into().expect("4 bytes"));
        Ok(Some(Message {
            code: w(0),
            flags: w(4),
            body: rx.body,
            files: rx.files,
        }))
    }

    /// Queues a reply and writes what the socket takes.
    fn reply(&mut self, code: u32, payload: &[u8]) -> io::Result<()> {
        self.out.append_with(|msg| {
            msg.extend_from_slice(&code.to_le_bytes());
            msg.extend_from_slice(&(VERSION | FLAG_REPLY).to_le_bytes());
            msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            msg.extend_from_slice(payload);
        });
        self.flush()
    }

    /// Writes pending replies; errors when the frontend is gone or reads none of them.
    fn flush(&mut self) -> io::Result<()> {
        self.out.write_to(&mut &self.sock)?;
        if self.out.len() > MAX_REPLY_BACKLOG {
            return Err(io::Error::other(format!(
                "the frontend left {} bytes of replies unread; disconnected",
                self.out.len()
            )));
        }
        Ok(())
    }

    fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let (ua, size, gpa) = (r.user_addr, r.memory_size, r.guest_phys_addr);
            (va >= ua && va - ua < size).then(|| gpa + (va - ua))
        })
    }

    /// Makes queue `i` ready when everything it needs is there, else not ready.
    fn update_ready(&mut self, i: usize) {
        let Some(r) = self.rings.get(i) else { return };
        let want = r.addr_set && r.kick.is_some() && r.enabled;
        let q = &mut self.queues[i];
        let was_ready = q.ready();
        // `is_valid` looks at ready queues only.
        q.set_ready(want);
        let ok = want && self.mem.as_ref().is_some_and(|m| q.is_valid(m.mem()));
        if want && !ok {
            log::warn!("vhost-user: queue {i}: rings outside guest memory; not started");
        }
        if ok && !was_ready {
            self.started.push(i as u16);
        }
        q.set_ready(ok);
    }
}

/// The vhost-user backend: listening socket, the current frontend, the device.
pub struct VhostUserBackend {
    bound: BoundPath,
    listener: UnixListener,
    gate: AcceptGate,
    session: Option<Session>,
    console: Console,
    work: EventFd,
    /// What is registered with the event manager.
    interest: Interest,
    /// Files replaced or dropped while registered: kept open until they are deregistered, so
    /// their numbers cannot be reused by a new fd meanwhile (event-manager keys on numbers).
    retired: Vec<File>,
}

/// Shared handle: the event-manager subscriber and the [`PortDevice`] for the port hub.
#[derive(Clone)]
pub struct VhostUserDevice(pub Rc<RefCell<VhostUserBackend>>);

impl VhostUserBackend {
    /// Listens on `path` (a socket file nobody listens on is replaced; a live one or any other
    /// file is an error) and serves `console`.
    pub fn new(path: &Path, console: Console) -> io::Result<Self> {
        let (listener, bound) = evloop::unix_socket::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(VhostUserBackend {
            bound,
            listener,
            gate: AcceptGate::new(format!("vhost-user {}", path.display()))?,
            session: None,
            console,
            work: EventFd::new(EFD_NONBLOCK)?,
            interest: Interest::new(),
            retired: Vec::new(),
        })
    }

    /// Removes the socket file (unless another process's socket is there now).
    pub fn cleanup(&self) {
        self.bound.remove();
    }

    /// Runs `f` with the device and, when a frontend has given memory, its I/O; then schedules
    /// more work if the device left some.
    fn with_io<R>(
        &mut self,
        f: impl FnOnce(
            &mut Console,
            Option<&mut DeviceIo<'_, GuestMemoryMmap, Vec<Queue>>>,
        ) -> Result<R, devices::virtio::DeviceError>,
    ) -> Option<R> {
        let res = match self.session.as_mut() {
            Some(s) if !s.broken && s.mem.is_some() => {
                let mem = s.mem.as_ref().expect("checked").mem();
                let calls = Calls(&s.rings);
                let mut io = DeviceIo {
                    mem,
                    queues: &mut s.queues,
                    irq: &calls,
                };
                let r = f(&mut self.console, Some(&mut io));
                if let Err(e) = &r {
                    log::error!("vhost-user: device error, queues stopped until reset: {e}");
                    s.broken = true;
                }
                r.ok()
            }
            _ => f(&mut self.console, None).ok(),
        };
        if self.console.has_pending_work() {
            let _ = self.work.write(1);
        }
        res
    }

    fn queue_notify(&mut self, index: u16) {
        self.with_io(|c, io| match io {
            Some(io) => c.queue_notify(io, index),
            None => Ok(()),
        });
    }

    fn process(&mut self) {
        self.with_io(|c, io| match io {
            Some(io) => c.process(io),
            None => Ok(()),
        });
    }

    fn accept(&mut self) {
        let sock = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    // At the descriptor limit the listener is set aside for a while (`register`).
                    self.gate.failed(&e);
                }
                return;
            }
        };
        self.gate.accepted();
        if self.session.is_some() {
            log::warn!("vhost-user: a second frontend was refused (one at a time)");
            return;
        }
        if let Err(e) = sock.set_nonblocking(true) {
            log::warn!("vhost-user: socket setup: {e}");
            return;
        }
        log::info!("vhost-user: frontend connected");
        // vhost-user has no per-queue maximum: the frontend picks any power of two up to the
        // split-ring limit (UML: 256 for every queue, control queues included).
        let sizes = self.console.queue_max_sizes();
        let queues = sizes
            .iter()
            .map(|_| Queue::new(MAX_QUEUE_SIZE).expect("valid queue size"))
            .collect();
        self.session = Some(Session {
            sock,
            rx: Incoming::default(),
            out: OutBuf::new(),
            protocol: 0,
            acked_features: 0,
            activated: false,
            regions: Vec::new(),
            mem: None,
            queues,
            rings: sizes.iter().map(|_| Ring::default()).collect(),
            broken: false,
            backend_req: None,
            started: Vec::new(),
        });
    }

    /// The frontend went away: the device is reset (every port guest-closed).
    fn disconnect(&mut self) {
        if let Some(s) = self.session.take() {
            log::info!("vhost-user: frontend disconnected; device reset");
            self.retired
                .push(File::from(std::os::fd::OwnedFd::from(s.sock)));
            self.retired
                .extend(s.rings.into_iter().filter_map(|r| r.kick));
            self.console.reset();
        }
    }

    /// Handles one message; Err means the session must end.
    fn handle_message(&mut self, msg: Message) -> io::Result<()> {
        let s = self.session.as_mut().expect("session");
        let Message {
            code,
            flags,
            body,
            files,
        } = msg;
        let req = FrontendReq::try_from(code).ok();
        log::debug!(
            "vhost-user: {req:?} ({code}) size {} fds {}",
            body.len(),
            files.len()
        );
        let need_reply = flags & FLAG_NEED_REPLY != 0;
        let mut replied = false;
        let ok: bool = match req {
            Some(FrontendReq::GET_FEATURES) => {
                let f = self.console.device_features()
                    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
                s.reply(code, VhostUserU64::new(f).as_slice())?;
                replied = true;
                true
            }
            Some(FrontendReq::SET_FEATURES) => match read_body::<VhostUserU64>(&body) {
                Some(v) => {
                    let f = v.value;
                    if s.activated {
                        // A new driver negotiation: start over.
                        self.console.reset();
                    }
                    s.acked_features = f;
                    let event_idx = f & (1 << devices::virtio::VIRTIO_RING_F_EVENT_IDX) != 0;
                    for q in &mut s.queues {
                        q.set_event_idx(event_idx);
                    }
                    // vhost-user has no DRIVER_OK: the device is live once features are set.
                    self.console
                        .ack_features(f & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
                    self.console.activate();
                    s.activated = true;
                    // Without protocol features, rings start enabled.
                    if !s.protocol_features_acked() {
                        for r in &mut s.rings {
                            r.enabled = true;
                        }
                    }
                    true
                }
                None => false,
            },
            Some(FrontendReq::GET_PROTOCOL_FEATURES) => {
                let f = offered_protocol_features().bits();
                s.reply(code, VhostUserU64::new(f).as_slice())?;
                replied = true;
                true
            }
            Some(FrontendReq::SET_PROTOCOL_FEATURES) => match read_body::<VhostUserU64>(&body) {
                Some(v) => {
                    s.protocol = v.value & offered_protocol_features().bits();
                    true
                }
                None => false,
            },
            Some(FrontendReq::SET_OWNER) => true,
            Some(FrontendReq::SET_BACKEND_REQ_FD) => {
                s.backend_req = files.into_iter().next();
                s.backend_req.is_some()
            }
            Some(FrontendReq::RESET_OWNER) | Some(FrontendReq::RESET_DEVICE) => {
                self.console.reset();
                for (i, q) in s.queues.iter_mut().enumerate() {
                    q.reset();
                    self.retired.extend(std::mem::take(&mut s.rings[i]).kick);
                }
                s.activated = false;
                s.broken = false;
                true
            }
            Some(FrontendReq::GET_QUEUE_NUM) => {
                s.reply(code, VhostUserU64::new(s.queues.len() as u64).as_slice())?;
                replied = true;
                true
            }
            Some(FrontendReq::SET_MEM_TABLE) => set_mem_table(s, &body, files),
            Some(FrontendReq::SET_VRING_NUM) => match read_body::<VhostUserVringState>(&body) {
                Some(v) => {
                    let (i, num) = (v.index as usize, v.num);
                    match s.queues.get_mut(i) {
                        Some(q)
                            if num > 0
                                && num <= u32::from(q.max_size())
                                && num.is_power_of_two() =>
                        {
                            q.set_size(num as u16);
                            true
                        }
                        _ => false,
                    }
                }
                None => false,
            },
            Some(FrontendReq::SET_VRING_ADDR) => match read_body::<VhostUserVringAddr>(&body) {
                Some(a) => {
                    let i = a.index as usize;
                    let (d, u, av) = (a.descriptor, a.used, a.available);
                    match (s.va_to_gpa(d), s.va_to_gpa(u), s.va_to_gpa(av)) {
                        (Some(d), Some(u), Some(av)) if i < s.queues.len() => {
                            let q = &mut s.queues[i];
                            q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
                            q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
                            q.set_avail_ring_address(Some(av as u32), Some((av >> 32) as u32));
                            s.rings[i].addr_set = true;
                            s.update_ready(i);
                            true
                        }
                        _ => false,
                    }
                }
                None => false,
            },
            Some(FrontendReq::SET_VRING_BASE) => match read_body::<VhostUserVringState>(&body) {
                Some(v) if (v.index as usize) < s.queues.len() && v.num <= 0xffff => {
                    let q = &mut s.queues[v.index as usize];
                    q.set_next_avail(v.num as u16);
                    q.set_next_used(v.num as u16);
                    true
                }
                _ => false,
            },
            Some(FrontendReq::GET_VRING_BASE) => match read_body::<VhostUserVringState>(&body) {
                Some(v) if (v.index as usize) < s.queues.len() => {
                    let i = v.index as usize;
                    // The ring stops.
                    self.retired.extend(s.rings[i].kick.take());
                    s.rings[i].addr_set = false;
                    s.queues[i].set_ready(false);
                    let st = VhostUserVringState::new(v.index, u32::from(s.queues[i].next_avail()));
                    s.reply(code, st.as_slice())?;
                    replied = true;
                    true
                }
                _ => false,
            },
            Some(FrontendReq::SET_VRING_KICK)
            | Some(FrontendReq::SET_VRING_CALL)
            | Some(FrontendReq::SET_VRING_ERR) => match read_body::<VhostUserU64>(&body) {
                Some(v) => {
                    let i = (v.value & 0xff) as usize;
                    let nofd = v.value & 0x100 != 0;
                    let file = if nofd { None } else { files.into_iter().next() };
                    if let Some(f) = &file {
                        // A kick or call fd the frontend never drains must not block the loop.
                        let _ = evloop::set_nonblocking(f.as_raw_fd());
                    }
                    if i >= s.rings.len() {
                        false
                    } else {
                        match req {
                            Some(FrontendReq::SET_VRING_KICK) => {
                                let old = std::mem::replace(&mut s.rings[i].kick, file);
                                self.retired.extend(old);
                                if !s.protocol_features_acked() {
                                    s.rings[i].enabled = true;
                                }
                                s.update_ready(i);
                            }
                            Some(FrontendReq::SET_VRING_CALL) => s.rings[i].call = file,
                            _ => {}
                        }
                        true
                    }
                }
                None => false,
            },
            Some(FrontendReq::SET_VRING_ENABLE) => match read_body::<VhostUserVringState>(&body) {
                Some(v) if (v.index as usize) < s.rings.len() => {
                    let i = v.index as usize;
                    s.rings[i].enabled = v.num != 0;
                    s.update_ready(i);
                    true
                }
                _ => false,
            },
            Some(FrontendReq::GET_CONFIG) => {
                let hdr_len = std::mem::size_of::<VhostUserConfig>();
                match read_body::<VhostUserConfig>(&body) {
                    Some(c) if c.size <= 4096 => {
                        let (off, sz) = (c.offset, c.size);
                        let mut data = vec![0u8; sz as usize];
                        self.console.read_config(u64::from(off), &mut data);
                        let mut payload = body[..hdr_len].to_vec();
                        payload.extend_from_slice(&data);
                        s.reply(code, &payload)?;
                    }
                    _ => {
                        // A reply with size 0 tells the frontend the read failed.
                        let mut payload =
                            body.get(..hdr_len).map_or(vec![0; hdr_len], |b| b.to_vec());
                        payload[4..8].copy_from_slice(&0u32.to_le_bytes());
                        s.reply(code, &payload)?;
                    }
                }
                replied = true;
                true
            }
            Some(FrontendReq::SET_CONFIG) => {
                let hdr_len = std::mem::size_of::<VhostUserConfig>();
                match read_body::<VhostUserConfig>(&body) {
                    Some(c) if body.len() >= hdr_len + c.size as usize => {
                        let off = c.offset;
                        let data = body[hdr_len..hdr_len + c.size as usize].to_vec();
                        self.console.write_config(u64::from(off), &data);
                        true
                    }
                    _ => false,
                }
            }
            _ => {
                log::warn!("vhost-user: unsupported request {code}; refused");
                false
            }
        };
        let s = self.session.as_mut().expect("session");
        if need_reply && !replied && s.reply_ack() {
            s.reply(code, VhostUserU64::new(u64::from(!ok)).as_slice())?;
        }
        Ok(())
    }

    fn register(&mut self, ops: &mut EventOps) {
        let mut want = vec![
            (self.work.as_raw_fd(), EventSet::IN),
            (self.gate.timer_fd(), EventSet::IN),
        ];
        if !self.gate.paused() {
            want.push((self.listener.as_raw_fd(), EventSet::IN));
        }
        if let Some(s) = &self.session {
            let mut set = EventSet::IN;
            if !s.out.is_empty() {
                set |= EventSet::OUT;
            }
            want.push((s.sock.as_raw_fd(), set));
            want.extend(
                s.rings
                    .iter()
                    .filter_map(|r| r.kick.as_ref().map(|f| (f.as_raw_fd(), EventSet::IN))),
            );
        }
        self.interest.apply(ops, &want, &"vhost-user");
        // Deregistered now: they may close.
        self.retired.clear();
    }

    /// A frontend whose shared memory faulted (it shrank the file) is disconnected.
    fn check_memory(&mut self) {
        let faulted = self
            .session
            .as_ref()
            .is_some_and(|s| s.mem.as_ref().is_some_and(SharedMemory::faulted));
        if faulted {
            log::error!(
                "vhost-user: the frontend shrank the guest memory file it shared (accesses past \
                 its end faulted); disconnected"
            );
            self.disconnect();
        }
    }

    fn on_event(&mut self, fd: RawFd, set: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept();
            return;
        }
        if fd == self.gate.timer_fd() {
            // The pause is over: `register` watches the listener again.
            self.gate.on_timer();
            return;
        }
        if fd == self.work.as_raw_fd() {
            let _ = self.work.read();
            self.process();
            return;
        }
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if fd == s.sock.as_raw_fd() {
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !set.contains(EventSet::IN) {
                self.disconnect();
                return;
            }
            if let Err(e) = self.serve_socket(set) {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    log::warn!("vhost-user: {e}");
                }
                self.disconnect();
            }
            return;
        }
        if let Some(i) = s
            .rings
            .iter()
            .position(|r| r.kick.as_ref().is_some_and(|f| f.as_raw_fd() == fd))
        {
            if let Some(f) = &s.rings[i].kick {
                let mut buf = [0u8; 8];
                while matches!((&*f).read(&mut buf), Ok(n) if n > 0) {}
            }
            if s.queues[i].ready() {
                self.queue_notify(i as u16);
            }
        }
    }
}

impl VhostUserBackend {
    /// Writes pending replies and handles the messages that have arrived completely (a bounded
    /// number per wakeup). Err: the session must end.
    fn serve_socket(&mut self, set: EventSet) -> io::Result<()> {
        let s = self.session.as_mut().expect("session");
        if set.contains(EventSet::OUT) {
            s.flush()?;
        }
        if !set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            return Ok(());
        }
        for _ in 0..MESSAGES_PER_WAKEUP {
            let Some(s) = self.session.as_mut() else {
                return Ok(());
            };
            let Some(msg) = s.receive()? else {
                return Ok(());
            };
            self.handle_message(msg)?;
            let started = self
                .session
                .as_mut()
                .map(|s| std::mem::take(&mut s.started))
                .unwrap_or_default();
            for i in started {
                self.queue_notify(i);
            }
            // Host-side state may have changed: let the device run.
            self.process();
        }
        Ok(())
    }
}

fn set_mem_table(s: &mut Session, body: &[u8], files: Vec<File>) -> bool {
    // struct { u32 nregions; u32 padding; region[nregions] }. UML sends room for more regions
    // than it describes: only the described ones are read; a payload too short is refused.
    let Some(n) = body
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    else {
        return false;
    };
    let n = n as usize;
    let rsize = std::mem::size_of::<VhostUserMemoryRegion>();
    if n == 0 || n > MAX_REGIONS || body.len() < 8 + n * rsize || files.len() < n {
        log::warn!(
            "vhost-user: SET_MEM_TABLE refused: {n} regions, {} bytes, {} fds",
            body.len(),
            files.len()
        );
        return false;
    }
    let mut regions = Vec::with_capacity(n);
    let mut mapped = Vec::with_capacity(n);
    for (i, file) in files.into_iter().take(n).enumerate() {
        let Some(r) = read_body::<VhostUserMemoryRegion>(&body[8 + i * rsize..8 + (i + 1) * rsize])
        else {
            return false;
        };
        let (gpa, size) = (r.guest_phys_addr, r.memory_size);
        if size == 0 || gpa.checked_add(size).is_none() || r.user_addr.checked_add(size).is_none() {
            return false;
        }
        if let Err(e) = shared_memory::check_file_covers(&file, r.mmap_offset, size) {
            log::warn!("vhost-user: SET_MEM_TABLE refused: region {i}: {e}");
            return false;
        }
        let m = match r.mmap_region::<()>(file) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("vhost-user: cannot map region {i}: {e}");
                return false;
            }
        };
        let Some(g) = GuestRegionMmap::new(m, GuestAddress(gpa)) else {
            return false;
        };
        mapped.push(g);
        regions.push(r);
    }
    match GuestMemoryMmap::from_regions(mapped) {
        Ok(mem) => {
            // The old table goes first: its slots in the fault guard are given back.
            s.mem = None;
            match SharedMemory::new(mem) {
                Ok(m) => {
                    s.mem = Some(m);
                    s.regions = regions;
                    true
                }
                Err(e) => {
                    log::warn!("vhost-user: cannot guard guest memory: {e}");
                    false
                }
            }
        }
        Err(e) => {
            log::warn!("vhost-user: bad memory table: {e}");
            false
        }
    }
}

/// A copy of a message body of type `T` (bodies longer than `T` are accepted; shorter ones not).
fn read_body<T: ByteValued>(body: &[u8]) -> Option<T> {
    body.get(..std::mem::size_of::<T>())
        .and_then(T::from_slice)
        .copied()
}

/// One non-blocking read into `buf`, collecting the descriptors that come with it (at most
/// [`MAX_FDS`] per message). End of stream is `UnexpectedEof`.
fn recv_some(sock: &UnixStream, buf: &mut [u8], files: &mut Vec<File>) -> io::Result<usize> {
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points to `buf`, which is valid for writes of its length and outlives
    // the call.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    for &fd in &fds[..nfds] {
        // SAFETY: these fds were just received with SCM_RIGHTS; nothing else owns them.
        files.push(unsafe { File::from_raw_fd(fd) });
    }
    if files.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} descriptors sent with one message", files.len()),
        ));
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(n)
}

impl MutEventSubscriber for VhostUserDevice {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.borrow_mut().register(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut b = self.0.borrow_mut();
        b.on_event(events.fd(), events.event_set());
        b.check_memory();
        b.register(ops);
    }
}

impl PortDevice for VhostUserDevice {
    fn port_write(&self, port: u32, data: &[u8]) -> usize {
        self.0
            .borrow_mut()
            .with_io(|c, io| match io {
                Some(io) => c.port_write_io(Some(io), port, data),
                None => Ok(c.port_write(port, data)),
            })
            .unwrap_or(0)
    }

    fn port_drained(&self, port: u32) {
        self.0.borrow_mut().with_io(|c, io| {
            c.port_drained(port);
            match io {
                Some(io) => c.process(io),
                None => Ok(()),
            }
        });
    }

    fn set_host_connected(&self, port: u32, connected: bool) {
        self.0.borrow_mut().with_io(|c, io| {
            if let Err(e) = c.set_host_connected(port, connected) {
                log::warn!("vhost-user: port {port}: {e}");
            }
            match io {
                Some(io) => c.process(io),
                None => Ok(()),
            }
        });
    }
}

/// Builds the virtio-serial device for `-machine vhost-user,socket=PATH`, wires its ports
/// through `hub` and adds both to the event loop. Returns the device (for cleanup at exit).
pub fn start(
    socket: &Path,
    max_ports: u32,
    plan: &[crate::ports::PlannedPort],
    mut hub: crate::ports::PortHub,
    chardevs: &[chardev::Chardev],
    proxies: &[(String, Rc<RefCell<qmp::QmpProxy>>)],
    em: &mut event_manager::EventManager<Box<dyn MutEventSubscriber>>,
) -> Result<VhostUserDevice, String> {
    use crate::ports::PortSink;
    use devices::virtio::console::{
        ConsoleConfig, PortConfig, PortKind, DEFAULT_TO_GUEST_CAPACITY,
    };
    let mut console = Console::new(ConsoleConfig {
        max_nr_ports: max_ports,
        ..ConsoleConfig::default()
    })
    .map_err(|e| format!("virtio-serial: {e}"))?;
    for p in plan {
        let sink = match proxies.iter().find(|(id, _)| *id == p.chardev) {
            Some((_, px)) => PortSink::Proxy(px.clone()),
            None => PortSink::Chardev(
                chardevs
                    .iter()
                    .find(|c| c.id() == p.chardev)
                    .cloned()
                    .ok_or_else(|| format!("-device: chardev '{}' does not exist", p.chardev))?,
            ),
        };
        let host_connected = sink.connected();
        let backend = hub
            .add_port(p.port, p.dev_id.clone(), sink)
            .map_err(|e| format!("port {}: {e}", p.port))?;
        let cfg = PortConfig {
            id: p.port,
            kind: if p.console {
                PortKind::Console
            } else {
                PortKind::Serial
            },
            name: p.name.clone(),
            host_connected,
            to_guest_capacity: DEFAULT_TO_GUEST_CAPACITY,
        };
        console
            .add_port(cfg, backend)
            .map_err(|e| format!("port {}: {e}", p.port))?;
    }
    let backend = VhostUserBackend::new(socket, console).map_err(|e| {
        format!(
            "-machine vhost-user: cannot listen on {}: {e}",
            socket.display()
        )
    })?;
    let dev = VhostUserDevice(Rc::new(RefCell::new(backend)));
    hub.connect(Rc::new(dev.clone()));
    em.add_subscriber(Box::new(dev.clone()));
    em.add_subscriber(Box::new(hub));
    Ok(dev)
}
