//! A guest-side virtio-console driver for tests and benchmarks, written from the Linux
//! `virtio_mmio` + `virtio_console` probe and I/O sequence. It runs on real guest memory
//! (`GuestMemoryMmap`) and talks to the device only through the MMIO registers and the
//! split virtqueues it lays out itself.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use devices::legacy::EventFdTrigger;
use devices::virtio::console::control::{ControlHeader, Event, BAD_ID};
use devices::virtio::console::{
    rx_queue_index, tx_queue_index, Console, ConsoleConfig, PortBackend, PortConfig,
    CONTROL_RX_QUEUE, CONTROL_TX_QUEUE, VIRTIO_CONSOLE_F_MULTIPORT, VIRTIO_CONSOLE_F_SIZE,
};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::{status, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: usize = 256 << 20;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
pub const PAGE: u32 = 4096;

/// A buffer segment: address, length, device-writable.
pub type Seg = (GuestAddress, u32, bool);

pub type Transport = MmioTransport<Console, GuestMemoryMmap, EventFdTrigger>;

/// What the host end of a port saw.
#[derive(Default, Debug)]
pub struct HostState {
    /// Guest→host bytes taken.
    pub received: Vec<u8>,
    /// Take at most this many bytes per call (`Some(0)`: full).
    pub limit: Option<usize>,
    /// Guest open/close events, in order.
    pub open_events: Vec<bool>,
    /// `to_guest_space` calls.
    pub space_events: usize,
}

/// The host end of a port: records what the guest sent and the events.
#[derive(Clone, Default)]
pub struct HostEnd(pub Arc<Mutex<HostState>>);

impl HostEnd {
    pub fn received(&self) -> Vec<u8> {
        self.0.lock().unwrap().received.clone()
    }
    pub fn set_limit(&self, limit: Option<usize>) {
        self.0.lock().unwrap().limit = limit;
    }
    pub fn open_events(&self) -> Vec<bool> {
        self.0.lock().unwrap().open_events.clone()
    }
    pub fn space_events(&self) -> usize {
        self.0.lock().unwrap().space_events
    }
}

impl PortBackend for HostEnd {
    fn write_to_host(&mut self, data: &[u8]) -> usize {
        let mut s = self.0.lock().unwrap();
        let n = s.limit.map_or(data.len(), |l| l.min(data.len()));
        s.received.extend_from_slice(&data[..n]);
        n
    }
    fn guest_open_changed(&mut self, open: bool) {
        self.0.lock().unwrap().open_events.push(open);
    }
    fn to_guest_space(&mut self) {
        self.0.lock().unwrap().space_events += 1;
    }
}

/// A decoded device→driver control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ctrl {
    Add(u32),
    Remove(u32),
    Console(u32),
    Resize(u32, u16, u16),
    Open(u32, bool),
    Name(u32, String),
    Other(ControlHeader),
}

/// Bump allocator over guest memory.
pub struct Alloc {
    next: u64,
}

impl Alloc {
    pub fn take(&mut self, size: u64, align: u64) -> GuestAddress {
        let a = self.next.div_ceil(align) * align;
        self.next = a + size;
        assert!(self.next <= MEM_SIZE as u64, "test guest out of memory");
        GuestAddress(a)
    }
}

/// Driver side of one split virtqueue.
pub struct Vring {
    pub index: u16,
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    free: Vec<u16>,
    pub avail_idx: u16,
    pub last_used: u16,
    num_added: u16,
    pub event_idx: bool,
    /// head → (descriptor ids, segments posted).
    pub inflight: HashMap<u16, (Vec<u16>, Vec<Seg>)>,
}

impl Vring {
    fn new(
        mem: &GuestMemoryMmap,
        alloc: &mut Alloc,
        index: u16,
        size: u16,
        event_idx: bool,
    ) -> Self {
        let n = u64::from(size);
        let desc = alloc.take(16 * n, 16);
        let avail = alloc.take(6 + 2 * n, 2);
        let used = alloc.take(6 + 8 * n, 4);
        // Zero the rings.
        mem.write_slice(&vec![0u8; (16 * n) as usize], desc)
            .unwrap();
        mem.write_slice(&vec![0u8; (6 + 2 * n) as usize], avail)
            .unwrap();
        mem.write_slice(&vec![0u8; (6 + 8 * n) as usize], used)
            .unwrap();
        Vring {
            index,
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            num_added: 0,
            event_idx,
            inflight: HashMap::new(),
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Write a raw descriptor.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let a = self.desc.unchecked_add(16 * u64::from(i));
        mem.write_obj(addr.to_le(), a).unwrap();
        mem.write_obj(len.to_le(), a.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), a.unchecked_add(12)).unwrap();
        mem.write_obj(next.to_le(), a.unchecked_add(14)).unwrap();
    }

    /// Put `head` in the avail ring and publish the new index.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail_idx % self.size;
        mem.write_obj(
            head.to_le(),
            self.avail.unchecked_add(4 + 2 * u64::from(slot)),
        )
        .unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.num_added = self.num_added.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Set the avail index directly (hostile tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Post a chain of segments (address, length, device-writable).
    pub fn add(&mut self, mem: &GuestMemoryMmap, segs: &[Seg]) -> Option<u16> {
        if segs.is_empty() || self.free.len() < segs.len() {
            return None;
        }
        let ids: Vec<u16> = (0..segs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, (&(addr, len, w), &id)) in segs.iter().zip(&ids).enumerate() {
            let mut flags = if w { VRING_DESC_F_WRITE } else { 0 };
            let next = ids.get(k + 1).copied().unwrap_or(0);
            if k + 1 < ids.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(mem, id, addr.0, len, flags, next);
        }
        let head = ids[0];
        self.inflight.insert(head, (ids, segs.to_vec()));
        self.publish(mem, head);
        Some(head)
    }

    /// Post a hand-made chain (hostile tests): descriptors `(addr, len, flags, next)` where
    /// `next` is a position in `descs` (or, past its end, a raw descriptor index).
    pub fn add_raw(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16, usize)]) -> u16 {
        let ids: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (&(addr, len, flags, next), &id) in descs.iter().zip(&ids) {
            let next = ids.get(next).copied().unwrap_or(next as u16);
            self.write_desc(mem, id, addr, len, flags, next);
        }
        let head = ids[0];
        self.inflight.insert(head, (ids, Vec::new()));
        self.publish(mem, head);
        head
    }

    /// Linux's `virtqueue_kick_prepare`: does the device want a notification?
    pub fn kick_needed(&mut self, mem: &GuestMemoryMmap) -> bool {
        fence(Ordering::SeqCst);
        let new = self.avail_idx;
        let old = new.wrapping_sub(self.num_added);
        self.num_added = 0;
        if self.event_idx {
            let event: u16 = u16::from_le(
                mem.read_obj(self.used.unchecked_add(4 + 8 * u64::from(self.size)))
                    .unwrap(),
            );
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = u16::from_le(mem.read_obj(self.used).unwrap());
            flags & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(self.used.unchecked_add(2)).unwrap())
    }

    /// `avail_event` as written by the device.
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(
            mem.read_obj(self.used.unchecked_add(4 + 8 * u64::from(self.size)))
                .unwrap(),
        )
    }

    /// Set `used_event` (interrupt when the used index passes it).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        mem.write_obj(
            v.to_le(),
            self.avail.unchecked_add(4 + 2 * u64::from(self.size)),
        )
        .unwrap();
    }

    /// Next used element: (head, len, segments).
    pub fn get_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32, Vec<Seg>)> {
        // Pairs with the device's fence between add_used and reading used_event.
        fence(Ordering::SeqCst);
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        let e = self.used.unchecked_add(4 + 8 * slot);
        let id: u32 = u32::from_le(mem.read_obj(e).unwrap());
        let len: u32 = u32::from_le(mem.read_obj(e.unchecked_add(4)).unwrap());
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            // virtqueue_enable_cb: interrupt at the next used buffer.
            self.set_used_event(mem, self.last_used);
        }
        let head = u16::try_from(id).expect("device returned a head out of u16 range");
        let (ids, segs) = self
            .inflight
            .remove(&head)
            .unwrap_or_else(|| panic!("queue {}: device returned unknown head {head}", self.index));
        self.free.extend(ids);
        Some((head, len, segs))
    }
}

/// State the driver keeps per port (like Linux's `struct port`).
#[derive(Debug, Default, Clone)]
pub struct GuestPort {
    pub name: Option<String>,
    pub console: bool,
    pub host_connected: bool,
    pub guest_open: bool,
    pub received: Vec<u8>,
}

/// Options of a probe.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOpts {
    pub event_idx: bool,
    pub multiport: bool,
    /// Descriptors per receive buffer (Linux: 1 × 4 KiB).
    pub rx_segs: usize,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Receive buffers posted per port (≤ queue size).
    pub rx_count: usize,
    /// Post control receive buffers (Linux does; a hostile guest may not).
    pub control_rx: bool,
    /// Set DRIVER_OK only after DEVICE_READY and the port handshake (Linux before 3.x did).
    pub driver_ok_late: bool,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            event_idx: true,
            multiport: true,
            rx_segs: 1,
            rx_buf: PAGE,
            rx_count: 64,
            control_rx: true,
            driver_ok_late: false,
        }
    }
}

/// The guest: memory, driver state and the device behind its MMIO window.
pub struct Guest {
    pub dev: Arc<Mutex<Transport>>,
    /// When set, kicks write these eventfds (an ioeventfd per queue) instead of QueueNotify.
    pub ioevents: Option<Arc<Vec<EventFd>>>,
    pub mem: GuestMemoryMmap,
    pub irq: EventFd,
    pub alloc: Alloc,
    pub vqs: BTreeMap<u16, Vring>,
    pub ports: BTreeMap<u32, GuestPort>,
    pub ctrl_log: Vec<Ctrl>,
    pub max_nr_ports: u32,
    pub features: u64,
    pub opts: ProbeOpts,
    pub kicks: usize,
    /// Reusable tx buffers (address, capacity).
    tx_pool: Vec<(GuestAddress, u32)>,
    tx_caps: HashMap<u64, u32>,
}

/// A host end that takes every byte and counts them.
pub struct ByteCounter(pub Arc<std::sync::atomic::AtomicU64>);

impl PortBackend for ByteCounter {
    fn write_to_host(&mut self, data: &[u8]) -> usize {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        data.len()
    }
}

/// A guest (not probed yet) whose device has serial port 1 named `name`, its host end counting
/// the bytes it takes into `count`.
pub fn guest_with_counting_port(name: &str, count: &Arc<std::sync::atomic::AtomicU64>) -> Guest {
    let g = new_guest(
        ConsoleConfig {
            max_nr_ports: 2,
            ..Default::default()
        },
        vec![],
    );
    g.t()
        .device_mut()
        .add_port(
            PortConfig::serial(1, name),
            Box::new(ByteCounter(count.clone())),
        )
        .unwrap();
    g
}

pub fn new_guest(cfg: ConsoleConfig, ports: Vec<(PortConfig, HostEnd)>) -> Guest {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut console = Console::new(cfg).unwrap();
    for (pc, end) in ports {
        console.add_port(pc, Box::new(end)).unwrap();
    }
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let dev = MmioTransport::new(
        console,
        mem.clone(),
        EventFdTrigger::new(irq.try_clone().unwrap()),
    )
    .unwrap();
    Guest {
        dev: Arc::new(Mutex::new(dev)),
        ioevents: None,
        mem,
        irq,
        alloc: Alloc { next: 0x10000 },
        vqs: BTreeMap::new(),
        ports: BTreeMap::new(),
        ctrl_log: Vec::new(),
        max_nr_ports: 1,
        features: 0,
        opts: ProbeOpts::default(),
        kicks: 0,
        tx_pool: Vec::new(),
        tx_caps: HashMap::new(),
    }
}

impl Guest {
    /// The transport (locked), as a vCPU exit or the event loop reaches it.
    pub fn t(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.dev.lock().unwrap()
    }

    pub fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn wr(&mut self, off: u64, v: u32) {
        self.t().write(off, &v.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.rd(0x70)
    }

    /// Interrupts raised on the line since the last call.
    pub fn take_irqs(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// The Linux probe: virtio_mmio + virtio core + virtio_console `virtcons_probe`.
    pub fn probe(&mut self, opts: ProbeOpts) {
        self.opts = opts;
        self.vqs.clear();
        self.ports.clear();
        self.tx_pool.clear();
        assert_eq!(self.rd(0x0), 0x7472_6976, "magic");
        assert_eq!(self.rd(0x4), 2, "version");
        assert_eq!(self.rd(0x8), 3, "device id");
        self.wr(0x70, 0);
        assert_eq!(self.status(), 0);
        self.wr(0x70, status::ACKNOWLEDGE);
        self.wr(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(0x14, 1);
        let hi = u64::from(self.rd(0x10));
        self.wr(0x14, 0);
        let lo = u64::from(self.rd(0x10));
        let offered = hi << 32 | lo;
        assert_ne!(offered & 1 << VIRTIO_F_VERSION_1, 0);
        let mut want = 1u64 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_CONSOLE_F_SIZE;
        if opts.multiport {
            want |= 1 << VIRTIO_CONSOLE_F_MULTIPORT;
        }
        if opts.event_idx {
            want |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        let f = offered & want;
        self.wr(0x24, 1);
        self.wr(0x20, (f >> 32) as u32);
        self.wr(0x24, 0);
        self.wr(0x20, f as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(0x70, st);
        assert_ne!(
            self.status() & status::FEATURES_OK,
            0,
            "device refused features"
        );
        self.features = f;
        let multiport = f & 1 << VIRTIO_CONSOLE_F_MULTIPORT != 0;
        self.max_nr_ports = if multiport { self.config_u32(4) } else { 1 };
        let nq = if multiport {
            2 * (self.max_nr_ports + 1)
        } else {
            2
        };
        for q in 0..nq as u16 {
            self.setup_queue(q);
        }
        if !opts.driver_ok_late {
            self.wr(0x70, st | status::DRIVER_OK);
        }
        if !multiport {
            self.ports.insert(
                0,
                GuestPort {
                    console: true,
                    host_connected: true,
                    guest_open: true,
                    ..Default::default()
                },
            );
            self.fill_rx(0);
            return;
        }
        // Fill the control receive queue, then DEVICE_READY.
        let n = self.vqs[&CONTROL_RX_QUEUE].size as usize;
        self.fill_control(if opts.control_rx { n } else { 0 });
        self.send_control(BAD_ID, Event::DeviceReady, 1);
        self.pump();
        if opts.driver_ok_late {
            self.wr(0x70, st | status::DRIVER_OK);
            self.pump();
        }
    }

    /// Post `n` 4 KiB control receive buffers.
    pub fn fill_control(&mut self, n: usize) {
        for _ in 0..n {
            if self.vqs[&CONTROL_RX_QUEUE].free_count() == 0 {
                break;
            }
            let a = self.alloc.take(u64::from(PAGE), 8);
            self.post(CONTROL_RX_QUEUE, &[(a, PAGE, true)]);
        }
        self.kick(CONTROL_RX_QUEUE);
    }

    pub fn config_u32(&mut self, off: u64) -> u32 {
        self.rd(0x100 + off)
    }

    fn setup_queue(&mut self, q: u16) {
        self.wr(0x30, u32::from(q));
        assert_eq!(self.rd(0x44), 0, "queue {q} already ready");
        let max = self.rd(0x34);
        assert_ne!(max, 0, "queue {q} absent: Linux probe would fail");
        let size = max as u16;
        let vr = Vring::new(&self.mem, &mut self.alloc, q, size, self.opts.event_idx);
        self.wr(0x38, u32::from(size));
        self.wr(0x80, vr.desc.0 as u32);
        self.wr(0x84, (vr.desc.0 >> 32) as u32);
        self.wr(0x90, vr.avail.0 as u32);
        self.wr(0x94, (vr.avail.0 >> 32) as u32);
        self.wr(0xa0, vr.used.0 as u32);
        self.wr(0xa4, (vr.used.0 >> 32) as u32);
        self.wr(0x44, 1);
        assert_eq!(self.rd(0x44), 1);
        self.vqs.insert(q, vr);
    }

    /// Post a chain on queue `q` (which must have room for it); the caller kicks.
    fn post(&mut self, q: u16, chain: &[Seg]) {
        self.vqs
            .get_mut(&q)
            .unwrap()
            .add(&self.mem, chain)
            .expect("no room in the queue for the chain");
    }

    /// Notify queue `q` if the device asks for it (Linux `virtqueue_kick`).
    pub fn kick(&mut self, q: u16) {
        let vr = self.vqs.get_mut(&q).unwrap();
        if vr.kick_needed(&self.mem) {
            self.kicks += 1;
            self.notify(q);
        }
    }

    /// Notify unconditionally (QueueNotify, or the queue's ioeventfd when set).
    pub fn notify(&mut self, q: u16) {
        match &self.ioevents {
            Some(fds) => fds[usize::from(q)].write(1).unwrap(),
            None => self.wr(0x50, u32::from(q)),
        }
    }

    /// Send a control message on the control transmit queue; Linux spins until it is used.
    pub fn send_control(&mut self, id: u32, event: Event, value: u16) {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&(event as u16).to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
        self.send_control_raw(&m);
    }

    pub fn send_control_raw(&mut self, m: &[u8]) {
        let a = self.alloc.take(m.len().max(1) as u64, 8);
        self.mem.write_slice(m, a).unwrap();
        self.post(CONTROL_TX_QUEUE, &[(a, m.len() as u32, false)]);
        self.kick(CONTROL_TX_QUEUE);
        let vq = self.vqs.get_mut(&CONTROL_TX_QUEUE).unwrap();
        let (_, len, _) = vq
            .get_used(&self.mem)
            .expect("control tx buffer not returned at once");
        assert_eq!(len, 0);
    }

    /// Post receive buffers for port `id` up to `rx_count`.
    pub fn fill_rx(&mut self, id: u32) {
        let q = rx_queue_index(id);
        let (segs, size) = (self.opts.rx_segs, self.opts.rx_buf);
        loop {
            let vq = &self.vqs[&q];
            if vq.inflight.len() >= self.opts.rx_count || vq.free_count() < segs {
                break;
            }
            let per = size / segs as u32;
            let chain: Vec<_> = (0..segs)
                .map(|k| {
                    let l = if k + 1 == segs {
                        size - per * (segs as u32 - 1)
                    } else {
                        per
                    };
                    (self.alloc.take(u64::from(l), 4096), l, true)
                })
                .collect();
            self.post(q, &chain);
        }
        self.kick(q);
    }

    /// Interrupt handler + control message handling, as `vm_interrupt` → `control_work_handler`.
    pub fn pump(&mut self) {
        loop {
            let isr = self.rd(0x60);
            self.wr(0x64, isr);
            let mut progress = false;
            while let Some(msg) = self.next_control() {
                progress = true;
                self.handle_control(msg);
            }
            if !progress {
                break;
            }
        }
    }

    fn next_control(&mut self) -> Option<Ctrl> {
        let vq = self.vqs.get_mut(&CONTROL_RX_QUEUE)?;
        let (_, len, segs) = vq.get_used(&self.mem)?;
        let (addr, cap, _) = segs[0];
        let mut buf = vec![0u8; len.min(cap) as usize];
        self.mem.read_slice(&mut buf, addr).unwrap();
        // Re-post the buffer.
        self.post(CONTROL_RX_QUEUE, &segs);
        self.kick(CONTROL_RX_QUEUE);
        let h = ControlHeader::parse(&buf).expect("short control message from device");
        let payload = &buf[8..];
        let c = match Event::from_u16(h.event) {
            Some(Event::DeviceAdd) => Ctrl::Add(h.id),
            Some(Event::DeviceRemove) => Ctrl::Remove(h.id),
            Some(Event::ConsolePort) => Ctrl::Console(h.id),
            Some(Event::PortOpen) => Ctrl::Open(h.id, h.value != 0),
            Some(Event::PortName) => {
                let end = payload
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(payload.len());
                Ctrl::Name(h.id, String::from_utf8_lossy(&payload[..end]).into_owned())
            }
            Some(Event::Resize) => Ctrl::Resize(
                h.id,
                u16::from_le_bytes([payload[0], payload[1]]),
                u16::from_le_bytes([payload[2], payload[3]]),
            ),
            _ => Ctrl::Other(h),
        };
        self.ctrl_log.push(c.clone());
        Some(c)
    }

    fn handle_control(&mut self, c: Ctrl) {
        match c {
            Ctrl::Add(id) => {
                if id >= self.max_nr_ports {
                    return;
                }
                self.ports.entry(id).or_default();
                self.fill_rx(id);
                self.send_control(id, Event::PortReady, 1);
            }
            Ctrl::Remove(id) => {
                self.ports.remove(&id);
            }
            Ctrl::Console(id) => {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.console = true;
                    p.guest_open = true;
                    self.send_control(id, Event::PortOpen, 1);
                }
            }
            Ctrl::Open(id, v) => {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.host_connected = v;
                }
            }
            Ctrl::Name(id, n) => {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.name.get_or_insert(n);
                }
            }
            Ctrl::Resize(..) | Ctrl::Other(_) => {}
        }
    }

    /// A guest process opens (`true`) or closes the port.
    pub fn set_open(&mut self, id: u32, open: bool) {
        self.ports.get_mut(&id).unwrap().guest_open = open;
        self.send_control(id, Event::PortOpen, u16::from(open));
        self.pump();
    }

    /// `write()` on the port: `data` in one buffer of `segs` descriptors. Returns false if the
    /// queue is full (the guest would block).
    pub fn write(&mut self, id: u32, data: &[u8], segs: usize) -> bool {
        self.reclaim_tx(id);
        let q = tx_queue_index(id);
        if self.vqs[&q].free_count() < segs {
            return false;
        }
        let per = data.len().div_ceil(segs).max(1);
        let mut chain = Vec::new();
        for part in data.chunks(per) {
            let a = self.tx_buf(part.len() as u32);
            self.mem.write_slice(part, a).unwrap();
            chain.push((a, part.len() as u32, false));
        }
        if chain.is_empty() {
            chain.push((self.tx_buf(1), 0, false));
        }
        self.post(q, &chain);
        self.kick(q);
        true
    }

    fn tx_buf(&mut self, len: u32) -> GuestAddress {
        if let Some(i) = self.tx_pool.iter().position(|&(_, c)| c >= len) {
            return self.tx_pool.swap_remove(i).0;
        }
        let cap = len.max(PAGE);
        let a = self.alloc.take(u64::from(cap), 4096);
        // Remember the capacity through the pool when it comes back.
        self.tx_caps.insert(a.0, cap);
        a
    }

    /// Take back transmitted buffers; returns how many.
    pub fn reclaim_tx(&mut self, id: u32) -> usize {
        let q = tx_queue_index(id);
        let mut n = 0;
        while let Some((_, len, segs)) = self.vqs.get_mut(&q).unwrap().get_used(&self.mem) {
            assert_eq!(len, 0, "tx used length must be 0");
            for (a, _, _) in segs {
                if let Some(&cap) = self.tx_caps.get(&a.0) {
                    self.tx_pool.push((a, cap));
                }
            }
            n += 1;
        }
        n
    }

    /// Collect bytes the device put in port `id`'s receive buffers, re-posting them.
    pub fn read(&mut self, id: u32) -> Vec<u8> {
        self.pump();
        let q = rx_queue_index(id);
        let mut out = Vec::new();
        while let Some((_, len, segs)) = self.vqs.get_mut(&q).unwrap().get_used(&self.mem) {
            let mut left = len as usize;
            for &(a, l, _) in &segs {
                let n = left.min(l as usize);
                let mut b = vec![0u8; n];
                self.mem.read_slice(&mut b, a).unwrap();
                out.extend_from_slice(&b);
                left -= n;
            }
            assert_eq!(left, 0, "used length larger than the buffer");
            self.post(q, &segs);
        }
        self.kick(q);
        if let Some(p) = self.ports.get_mut(&id) {
            assert!(
                p.guest_open || out.is_empty(),
                "data for a port the guest has closed"
            );
            p.received.extend_from_slice(&out);
        }
        out
    }

    /// Host-side call on the console, then the device's queue work.
    pub fn host<R>(&mut self, f: impl FnOnce(&mut Console) -> R) -> R {
        let r = self.t().with_device(f);
        self.pump();
        r
    }
}
