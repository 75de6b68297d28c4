//! virtio-serial: the virtio-console device with `VIRTIO_CONSOLE_F_MULTIPORT`.
//!
//! Transport independent: the device keeps port and control-protocol state; queue work runs
//! through a [`DeviceIo`] (guest memory, queues, interrupt) handed in by the transport.
//!
//! Host-side calls ([`Console::port_write`], [`Console::set_host_connected`],
//! [`Console::port_drained`], [`Console::add_port`], ...) only change state; the transport
//! then calls [`VirtioDevice::process`] to move data (the MMIO transport does both in
//! [`MmioTransport::with_device`](crate::virtio::mmio::MmioTransport::with_device)).

pub mod control;
mod port;

use std::collections::{BTreeMap, VecDeque};

use vm_memory::{GuestAddress, GuestMemory};

use self::control::{ControlHeader, Event, HEADER_LEN};
use self::port::{Port, TxCursor, TX_CHUNK};
pub use self::port::{PortBackend, PortConfig, PortKind, DEFAULT_TO_GUEST_CAPACITY};
use super::log_once::LogOnce;
use super::queue_io::{self, Popped};
use super::{
    DeviceError, DeviceIo, InterruptKind, InterruptSignal, Queue, QueueSet, QueueT, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Feature bit: `cols`/`rows` in the config space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Feature bit: several ports and the control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Feature bit: `emerg_wr` in the config space works.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;
/// Largest `max_nr_ports` accepted (QEMU's limit).
pub const MAX_NR_PORTS_LIMIT: u32 = 511;

/// Index of the control receive queue (device → driver).
pub const CONTROL_RX_QUEUE: u16 = 2;
/// Index of the control transmit queue (driver → device).
pub const CONTROL_TX_QUEUE: u16 = 3;

/// Bound on control messages waiting for the guest's control receive buffers.
const MAX_PENDING_CONTROL: usize = 1024;
/// Bound on buffers handled per queue per call, so a guest that keeps refilling a queue from
/// another vCPU cannot hold the device thread; the rest is left as pending work
/// ([`VirtioDevice::has_pending_work`]).
const MAX_CHAINS_PER_CALL: usize = 1024;
/// Bound on guest→host bytes copied per port per call (a chain may claim 4 GiB, made of the
/// same guest page many times over); the rest is left as pending work.
const TX_BYTES_PER_CALL: u64 = 16 << 20;

/// Receive queue index of port `id`.
pub fn rx_queue_index(id: u32) -> u16 {
    if id == 0 {
        0
    } else {
        // id <= MAX_NR_PORTS_LIMIT, so this fits.
        (2 * id + 2) as u16
    }
}

/// Transmit queue index of port `id`.
pub fn tx_queue_index(id: u32) -> u16 {
    rx_queue_index(id) + 1
}

/// Device configuration fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Ports the driver may see (`config.max_nr_ports`), `1..=511`. The device has
    /// `2 * (max_nr_ports + 1)` queues.
    pub max_nr_ports: u32,
    /// Console size to offer with `VIRTIO_CONSOLE_F_SIZE` (cols, rows); `None`: not offered.
    pub size: Option<(u16, u16)>,
    /// Offer `VIRTIO_CONSOLE_F_EMERG_WRITE`.
    pub emerg_write: bool,
    /// Maximum size of the data queues (power of two, ≤ 32768).
    pub data_queue_size: u16,
    /// Maximum size of the control queues (power of two, ≤ 32768).
    pub control_queue_size: u16,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            max_nr_ports: 31,
            size: None,
            emerg_write: true,
            data_queue_size: 256,
            control_queue_size: 64,
        }
    }
}

/// Errors of the host-side API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsoleError {
    /// `max_nr_ports` outside `1..=511`.
    #[error("max_nr_ports {0} outside 1..=511")]
    BadMaxPorts(u32),
    /// A queue size that is zero, not a power of two, or above 32768.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadQueueSize(u16),
    /// Port id not below `max_nr_ports`.
    #[error("port {id} not below max_nr_ports {max}")]
    PortIdOutOfRange {
        /// The id asked for.
        id: u32,
        /// `max_nr_ports`.
        max: u32,
    },
    /// A port with this id exists already.
    #[error("port {0} exists already")]
    DuplicatePort(u32),
    /// No port with this id.
    #[error("no port {0}")]
    NoSuchPort(u32),
}

/// Categories of one-time warnings about guest misbehaviour.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Warn {
    BadChain,
    ShortControl,
    UnknownPort,
    UnknownEvent,
    UnexpectedEvent,
    ControlOverflow,
    ControlTruncated,
    DriverFailed,
    TxReadError,
}

/// What a queue index is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    PortRx(u32),
    PortTx(u32),
    ControlRx,
    ControlTx,
}

/// The virtio-serial device core.
pub struct Console {
    cfg: ConsoleConfig,
    acked: u64,
    ports: BTreeMap<u32, Port>,
    /// The driver sent `DEVICE_READY 1`.
    driver_ready: bool,
    /// Control messages waiting for control receive buffers.
    control_out: VecDeque<Vec<u8>>,
    /// Look at every queue at the next `process` (set at DRIVER_OK).
    rescan: bool,
    /// Look at the control transmit queue at the next `process` (work left over).
    control_kick: bool,
    /// A bound stopped the last call before all work was done.
    more_work: bool,
    warn: LogOnce,
    /// Segment-list storage reused from chain to chain and call to call (no allocation per
    /// buffer on the data path).
    segs: Vec<(GuestAddress, u32)>,
}

impl Console {
    /// A device without ports.
    pub fn new(cfg: ConsoleConfig) -> Result<Console, ConsoleError> {
        if cfg.max_nr_ports == 0 || cfg.max_nr_ports > MAX_NR_PORTS_LIMIT {
            return Err(ConsoleError::BadMaxPorts(cfg.max_nr_ports));
        }
        for size in [cfg.data_queue_size, cfg.control_queue_size] {
            if size == 0 || !size.is_power_of_two() || size > 32768 {
                return Err(ConsoleError::BadQueueSize(size));
            }
        }
        Ok(Console {
            cfg,
            acked: 0,
            ports: BTreeMap::new(),
            driver_ready: false,
            control_out: VecDeque::new(),
            rescan: false,
            control_kick: false,
            more_work: false,
            warn: LogOnce::default(),
            segs: Vec::new(),
        })
    }

    /// The configuration the device was made with.
    pub fn config(&self) -> &ConsoleConfig {
        &self.cfg
    }

    /// Add a port. Before the driver is ready it is announced at `DEVICE_READY`; after, at
    /// once (hot-plug, `DEVICE_ADD`).
    pub fn add_port(
        &mut self,
        cfg: PortConfig,
        backend: Box<dyn PortBackend>,
    ) -> Result<(), ConsoleError> {
        if cfg.id >= self.cfg.max_nr_ports {
            return Err(ConsoleError::PortIdOutOfRange {
                id: cfg.id,
                max: self.cfg.max_nr_ports,
            });
        }
        if self.ports.contains_key(&cfg.id) {
            return Err(ConsoleError::DuplicatePort(cfg.id));
        }
        let id = cfg.id;
        self.ports.insert(id, Port::new(cfg, backend));
        if self.driver_ready {
            self.send_control(id, Event::DeviceAdd, 1, &[]);
        }
        Ok(())
    }

    /// Remove a port (hot-unplug, `DEVICE_REMOVE`); returns its backend. Guest→host bytes not
    /// yet taken and host→guest bytes not yet delivered are dropped.
    pub fn remove_port(&mut self, id: u32) -> Result<Box<dyn PortBackend>, ConsoleError> {
        let port = self.ports.remove(&id).ok_or(ConsoleError::NoSuchPort(id))?;
        if self.driver_ready {
            self.send_control(id, Event::DeviceRemove, 1, &[]);
        }
        Ok(port.backend)
    }

    /// Ids of the ports, ascending.
    pub fn port_ids(&self) -> Vec<u32> {
        self.ports.keys().copied().collect()
    }

    /// Host→guest: queue bytes for port `id`; returns how many were accepted (the rest does
    /// not fit the port's bounded buffer: retry after
    /// [`PortBackend::to_guest_space`]). Accepted bytes are delivered when the guest has the
    /// port open and has posted receive buffers; bytes written while the guest has the port
    /// closed wait for the next open (QEMU's behaviour). Unknown port: 0.
    pub fn port_write(&mut self, id: u32, data: &[u8]) -> usize {
        match self.ports.get_mut(&id) {
            Some(p) => p.push_to_guest(data),
            None => 0,
        }
    }

    /// Bytes waiting in port `id`'s host→guest buffer.
    pub fn port_pending(&self, id: u32) -> Option<usize> {
        self.ports.get(&id).map(|p| p.to_guest.len())
    }

    /// The host side of port `id` connected or disconnected; the guest is told with
    /// `PORT_OPEN` (now if the port is set up, else after its `PORT_READY`). A disconnect
    /// drops guest→host bytes not yet taken and host→guest bytes not yet delivered (they
    /// belonged to the gone connection) and lifts a throttle. No change: nothing happens.
    pub fn set_host_connected(&mut self, id: u32, connected: bool) -> Result<(), ConsoleError> {
        let port = self
            .ports
            .get_mut(&id)
            .ok_or(ConsoleError::NoSuchPort(id))?;
        if port.host_connected == connected {
            return Ok(());
        }
        port.host_connected = connected;
        if !connected {
            // Finish (discard) a guest buffer in progress at the next `process`.
            port.tx_kick = true;
            port.drop_staged();
            port.to_guest.clear();
            port.to_guest_was_full = false;
        }
        let notify = port.guest_ready;
        if notify {
            self.send_control(id, Event::PortOpen, u16::from(connected), &[]);
        }
        Ok(())
    }

    /// The backend of port `id` can take bytes again after a short
    /// [`PortBackend::write_to_host`]; consumption of the guest's transmit queue resumes at the
    /// next [`VirtioDevice::process`].
    pub fn port_drained(&mut self, id: u32) {
        if let Some(p) = self.ports.get_mut(&id) {
            p.throttled = false;
            p.tx_kick = true;
        }
    }

    /// Whether a guest process has port `id` open.
    pub fn is_guest_open(&self, id: u32) -> Option<bool> {
        self.ports.get(&id).map(|p| p.guest_open)
    }

    /// Whether the host side of port `id` is connected.
    pub fn is_host_connected(&self, id: u32) -> Option<bool> {
        self.ports.get(&id).map(|p| p.host_connected)
    }

    /// Whether guest→host traffic of port `id` waits for [`Console::port_drained`].
    pub fn is_throttled(&self, id: u32) -> Option<bool> {
        self.ports.get(&id).map(|p| p.throttled)
    }

    /// The backend of port `id`.
    pub fn backend_mut(&mut self, id: u32) -> Option<&mut (dyn PortBackend + 'static)> {
        self.ports.get_mut(&id).map(|p| &mut *p.backend)
    }

    /// The driver sent `DEVICE_READY 1` and has not reset the device since.
    pub fn is_driver_ready(&self) -> bool {
        self.driver_ready
    }

    /// Tell the guest a console port's size changed (`RESIZE`, spec order cols then rows).
    pub fn resize(&mut self, id: u32, cols: u16, rows: u16) -> Result<(), ConsoleError> {
        let port = self.ports.get(&id).ok_or(ConsoleError::NoSuchPort(id))?;
        if port.guest_ready {
            let mut payload = [0u8; 4];
            payload[..2].copy_from_slice(&cols.to_le_bytes());
            payload[2..].copy_from_slice(&rows.to_le_bytes());
            self.send_control(id, Event::Resize, 0, &payload);
        }
        Ok(())
    }

    fn multiport(&self) -> bool {
        self.acked & (1 << VIRTIO_CONSOLE_F_MULTIPORT) != 0
    }

    fn num_queues(&self) -> u16 {
        // max_nr_ports <= 511
        (2 * (self.cfg.max_nr_ports + 1)) as u16
    }

    fn role(&self, index: u16) -> Option<Role> {
        let multiport = self.multiport();
        match index {
            0 => Some(Role::PortRx(0)),
            1 => Some(Role::PortTx(0)),
            _ if !multiport || index >= self.num_queues() => None,
            CONTROL_RX_QUEUE => Some(Role::ControlRx),
            CONTROL_TX_QUEUE => Some(Role::ControlTx),
            _ => {
                let id = u32::from(index - 2) / 2;
                Some(if index.is_multiple_of(2) {
                    Role::PortRx(id)
                } else {
                    Role::PortTx(id)
                })
            }
        }
    }

    /// Queue a device→driver control message. Messages are only kept once the driver is
    /// ready: earlier ones would be lost anyway and are re-sent after `PORT_READY`.
    fn send_control(&mut self, id: u32, event: Event, value: u16, payload: &[u8]) {
        if !self.driver_ready || !self.multiport() {
            return;
        }
        if self.control_out.len() >= MAX_PENDING_CONTROL {
            self.warn.warn(
                Warn::ControlOverflow as u32,
                format_args!(
                    "virtio-console: guest does not take control messages; dropping {event:?}"
                ),
            );
            return;
        }
        self.control_out
            .push_back(control::encode(id, event, value, payload));
    }

    /// Handle one driver→device control message.
    fn handle_control(&mut self, hdr: ControlHeader) {
        let Some(event) = Event::from_u16(hdr.event) else {
            self.warn.warn(
                Warn::UnknownEvent as u32,
                format_args!("virtio-console: unknown control event {}", hdr.event),
            );
            return;
        };
        match event {
            Event::DeviceReady => {
                if hdr.value != 1 {
                    self.warn.warn(
                        Warn::DriverFailed as u32,
                        format_args!("virtio-console: driver reported DEVICE_READY failure"),
                    );
                    return;
                }
                self.driver_ready = true;
                let ids: Vec<u32> = self.ports.keys().copied().collect();
                for id in ids {
                    self.send_control(id, Event::DeviceAdd, 1, &[]);
                }
            }
            Event::PortReady | Event::PortOpen => {
                let Some(port) = self.ports.get_mut(&hdr.id) else {
                    self.warn.warn(
                        Warn::UnknownPort as u32,
                        format_args!(
                            "virtio-console: control event {event:?} for unknown port {}",
                            hdr.id
                        ),
                    );
                    return;
                };
                if event == Event::PortOpen {
                    port.set_guest_open(hdr.value != 0);
                    return;
                }
                if hdr.value != 1 {
                    port.guest_ready = false;
                    self.warn.warn(
                        Warn::DriverFailed as u32,
                        format_args!("virtio-console: driver failed to add port {}", hdr.id),
                    );
                    return;
                }
                port.guest_ready = true;
                let kind = port.cfg.kind;
                let name = port.cfg.name.clone();
                let host_connected = port.host_connected;
                if kind == PortKind::Console {
                    self.send_control(hdr.id, Event::ConsolePort, 1, &[]);
                }
                if let Some(name) = name {
                    self.send_control(hdr.id, Event::PortName, 1, name.as_bytes());
                }
                if host_connected {
                    self.send_control(hdr.id, Event::PortOpen, 1, &[]);
                }
            }
            Event::DeviceAdd
            | Event::DeviceRemove
            | Event::ConsolePort
            | Event::Resize
            | Event::PortName => {
                self.warn.warn(
                    Warn::UnexpectedEvent as u32,
                    format_args!("virtio-console: driver sent device-only event {event:?}"),
                );
            }
        }
    }

    fn control_tx<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
    ) -> Result<(), DeviceError> {
        let qi = CONTROL_TX_QUEUE;
        let mem = io.mem;
        let Some(q) = io.queues.queue_mut(qi).filter(|q| q.ready()) else {
            return Ok(());
        };
        // Handling a message needs all of `self`: this rare path has its own segment storage.
        let mut segs = Vec::new();
        let mut walk = Walk::new(q, qi, mem, false, &mut segs);
        loop {
            match walk.next(&mut self.warn)? {
                Next::Limit => {
                    self.more_work = true;
                    self.control_kick = true;
                    break;
                }
                Next::Empty => break,
                Next::Buffer(b) => {
                    let mut hdr = [0u8; HEADER_LEN];
                    let n = queue_io::read_at(mem, &b, 0, &mut hdr).unwrap_or(0);
                    walk.give_back(b, 0)?;
                    match ControlHeader::parse(&hdr[..n]) {
                        Some(h) => self.handle_control(h),
                        None => self.warn.warn(
                            Warn::ShortControl as u32,
                            format_args!("virtio-console: control message of {n} bytes ignored"),
                        ),
                    }
                }
            }
        }
        walk.finish(io.irq)
    }

    fn control_rx<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
    ) -> Result<(), DeviceError> {
        let qi = CONTROL_RX_QUEUE;
        let mem = io.mem;
        if self.control_out.is_empty() {
            // Nothing to send: no pass over the ring (process calls this whenever a port has work).
            return Ok(());
        }
        let Some(q) = io.queues.queue_mut(qi).filter(|q| q.ready()) else {
            return Ok(());
        };
        let mut walk = Walk::new(q, qi, mem, true, &mut self.segs);
        while let Some(msg) = self.control_out.front() {
            match walk.next(&mut self.warn)? {
                Next::Limit => {
                    self.more_work = true;
                    break;
                }
                Next::Empty => break,
                Next::Buffer(b) => {
                    let n = queue_io::write_to_buffer(mem, &b, msg);
                    let short = n < msg.len();
                    // n <= buffer length <= u32::MAX
                    walk.give_back(b, n as u32)?;
                    self.control_out.pop_front();
                    if short {
                        self.warn.warn(
                            Warn::ControlTruncated as u32,
                            format_args!("virtio-console: control buffer too small, truncated"),
                        );
                    }
                }
            }
        }
        walk.finish(io.irq)
    }

    /// Guest→host for port `id` (or discard, for queues of a port that does not exist).
    fn port_tx<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
        id: u32,
    ) -> Result<(), DeviceError> {
        let qi = tx_queue_index(id);
        let mem = io.mem;
        let Some(q) = io.queues.queue_mut(qi).filter(|q| q.ready()) else {
            return Ok(());
        };
        let warn = &mut self.warn;
        let more_work = &mut self.more_work;
        let mut port = self.ports.get_mut(&id);
        let mut budget = TX_BYTES_PER_CALL;
        // Buffers of a port that does not exist are consumed and discarded.
        let mut orphan: Option<TxCursor> = None;
        let mut walk = Walk::new(q, qi, mem, false, &mut self.segs);
        loop {
            // 1. Offer staged bytes to the backend.
            if let Some(p) = port.as_deref_mut() {
                if p.throttled {
                    break;
                }
                if p.staged_pos < p.staged_len {
                    if p.host_connected {
                        let rest = &p.staged[p.staged_pos..p.staged_len];
                        let n = p.backend.write_to_host(rest).min(rest.len());
                        p.staged_pos += n;
                        if p.staged_pos < p.staged_len && p.cfg.kind == PortKind::Serial {
                            p.throttled = true;
                            break;
                        }
                    }
                    p.staged_len = 0;
                    p.staged_pos = 0;
                }
            }
            // 2. Continue the buffer in progress.
            let (cursor, staging) = match port.as_deref_mut() {
                Some(p) => {
                    let staging = if p.host_connected {
                        Some((&mut p.staged, &mut p.staged_len))
                    } else {
                        None
                    };
                    (&mut p.tx, staging)
                }
                None => (&mut orphan, None),
            };
            if let Some(cur) = cursor.as_mut() {
                if cur.read < cur.buf.len {
                    match staging {
                        None => cur.read = cur.buf.len,
                        Some((staged, staged_len)) => {
                            if budget == 0 {
                                *more_work = true;
                                if let Some(p) = port.as_deref_mut() {
                                    p.tx_kick = true;
                                }
                                break;
                            }
                            // Bounded by TX_CHUNK.
                            let n = (cur.buf.len - cur.read).min(TX_CHUNK as u64) as usize;
                            budget = budget.saturating_sub(n as u64);
                            if staged.len() < TX_CHUNK {
                                staged.resize(TX_CHUNK, 0);
                            }
                            match queue_io::read_at(mem, &cur.buf, cur.read, &mut staged[..n]) {
                                Some(got) if got == n => {
                                    cur.read += n as u64;
                                    *staged_len = n;
                                }
                                _ => {
                                    cur.read = cur.buf.len;
                                    warn.warn(
                                        Warn::TxReadError as u32,
                                        format_args!(
                                            "virtio-console: port {id}: tx buffer unreadable"
                                        ),
                                    );
                                }
                            }
                        }
                    }
                    continue;
                }
                if let Some(done) = cursor.take() {
                    walk.give_back(done.buf, 0)?;
                }
                continue;
            }
            // 3. Take the next buffer.
            match walk.next(warn)? {
                Next::Limit => {
                    *more_work = true;
                    if let Some(p) = port.as_deref_mut() {
                        p.tx_kick = true;
                    }
                    break;
                }
                Next::Empty => break,
                Next::Buffer(buf) => *cursor = Some(TxCursor { buf, read: 0 }),
            }
        }
        walk.finish(io.irq)
    }

    /// Host→guest for port `id`: move its buffered bytes into the guest's receive buffers.
    fn port_rx<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
        id: u32,
    ) -> Result<(), DeviceError> {
        let qi = rx_queue_index(id);
        let Some(port) = self.ports.get_mut(&id) else {
            return Ok(());
        };
        if port.to_guest.is_empty() || !port.guest_open {
            return Ok(());
        }
        let Some(q) = io.queues.queue_mut(qi).filter(|q| q.ready()) else {
            return Ok(());
        };
        let (a, c) = port.to_guest.as_slices();
        let n = deliver(
            q,
            qi,
            io.mem,
            io.irq,
            &mut self.warn,
            &mut self.segs,
            a,
            c,
            &mut self.more_work,
        )?;
        port.to_guest.drain(..n);
        if port.to_guest_was_full && port.to_guest.len() < port.cfg.to_guest_capacity {
            port.to_guest_was_full = false;
            port.backend.to_guest_space();
        }
        Ok(())
    }

    /// Like [`Console::port_write`], but with queue access: when nothing is buffered ahead of
    /// `data` and the guest has the port open, bytes go straight into the guest's posted
    /// receive buffers (one copy instead of two); the rest is buffered as `port_write` does.
    /// Returns the bytes accepted (delivered or buffered). `io: None` is plain `port_write`.
    pub fn port_write_io<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: Option<&mut DeviceIo<'_, M, Q>>,
        id: u32,
        data: &[u8],
    ) -> Result<usize, DeviceError> {
        let multiport = self.multiport();
        let mut done = 0;
        if let (Some(io), Some(port)) = (io, self.ports.get_mut(&id)) {
            let qi = rx_queue_index(id);
            if port.to_guest.is_empty() && port.guest_open && (multiport || id == 0) {
                if let Some(q) = io.queues.queue_mut(qi).filter(|q| q.ready()) {
                    done = deliver(
                        q,
                        qi,
                        io.mem,
                        io.irq,
                        &mut self.warn,
                        &mut self.segs,
                        data,
                        &[],
                        &mut self.more_work,
                    )?;
                }
            }
        }
        if done == data.len() {
            return Ok(done);
        }
        Ok(done + self.port_write(id, &data[done..]))
    }
}

/// Copy `a` then `c` into the receive buffers the driver posted on queue `qi`, as far as they
/// go; returns the bytes delivered and interrupts the driver if it wants it. Sets `more_work`
/// if the per-call bound stopped it.
#[allow(clippy::too_many_arguments)]
fn deliver<M: GuestMemory>(
    q: &mut Queue,
    qi: u16,
    mem: &M,
    irq: &dyn InterruptSignal,
    warn: &mut LogOnce,
    segs: &mut Vec<(GuestAddress, u32)>,
    a: &[u8],
    c: &[u8],
    more_work: &mut bool,
) -> Result<usize, DeviceError> {
    let total = a.len() + c.len();
    let mut done = 0;
    let mut walk = Walk::new(q, qi, mem, true, segs);
    while done < total {
        match walk.next(warn)? {
            Next::Limit => {
                *more_work = true;
                break;
            }
            Next::Empty => break,
            Next::Buffer(b) => {
                let mut n = 0;
                if done < a.len() {
                    let mut src = &a[done..];
                    n = queue_io::write_at(mem, &b, 0, &mut src);
                }
                let at = done + n;
                if at >= a.len() {
                    let mut src = &c[at - a.len()..];
                    n += queue_io::write_at(mem, &b, n as u64, &mut src);
                }
                done += n;
                // n <= buffer length <= u32::MAX
                walk.give_back(b, n as u32)?;
            }
        }
    }
    walk.finish(irq)?;
    Ok(done)
}

/// One pass over the available chains of queue `qi`, at most [`MAX_CHAINS_PER_CALL`] of
/// them: chains that fail validation are returned unused (and warned about once), the usable
/// ones are handed to the caller, which gives each back with [`Walk::give_back`]; the segment
/// list of a given-back buffer is reused for the next chain. [`Walk::finish`] interrupts the
/// driver if it wants to hear about the used buffers.
struct Walk<'a, M: GuestMemory> {
    q: &'a mut Queue,
    qi: u16,
    mem: &'a M,
    /// Buffers must be device-writable (receive queues) rather than device-readable.
    writable: bool,
    /// Chains looked at so far (including bad ones and empty pops).
    handled: usize,
    /// Some buffer went to the used ring.
    used: bool,
    /// Segment-list storage for the next chain (the owner's, lent for the pass).
    spare: &'a mut Vec<(GuestAddress, u32)>,
    /// The common case's short way through the rings (see [`queue_io::Rings`]); `None` when a
    /// ring is not within one region of plain memory. Whether it is present depends only on
    /// the queue's addresses and the memory map, so every pass over a queue decides the
    /// interrupt the same way.
    rings: Option<queue_io::Rings<'a, M>>,
}

/// What [`Walk::next`] found.
enum Next {
    /// A usable buffer; give it back with [`Walk::give_back`].
    Buffer(queue_io::Buffer),
    /// The queue has no more buffers (notifications are re-armed).
    Empty,
    /// The per-call bound was reached; the rest is pending work.
    Limit,
}

impl<'a, M: GuestMemory> Walk<'a, M> {
    fn new(
        q: &'a mut Queue,
        qi: u16,
        mem: &'a M,
        writable: bool,
        spare: &'a mut Vec<(GuestAddress, u32)>,
    ) -> Self {
        let rings = queue_io::Rings::new(q, mem);
        Walk {
            q,
            qi,
            mem,
            writable,
            handled: 0,
            used: false,
            spare,
            rings,
        }
    }

    /// The next usable buffer. (Inlined: it runs once per buffer on the data path, as the
    /// loops it replaced did.)
    #[inline(always)]
    fn next(&mut self, warn: &mut LogOnce) -> Result<Next, DeviceError> {
        let (q, qi, mem) = (&mut *self.q, self.qi, self.mem);
        loop {
            if self.handled >= MAX_CHAINS_PER_CALL {
                return Ok(Next::Limit);
            }
            self.handled += 1;
            if let Some(b) = self
                .rings
                .as_ref()
                .and_then(|r| r.pop(q, self.writable, self.spare))
            {
                return Ok(Next::Buffer(b));
            }
            match queue_io::pop(q, qi, mem, self.writable, std::mem::take(self.spare))? {
                Popped::None => {
                    if queue_io::rearm(q, qi, mem)? {
                        continue;
                    }
                    return Ok(Next::Empty);
                }
                Popped::Bad(head, err) => {
                    queue_io::add_used(q, qi, mem, head, 0)?;
                    self.used = true;
                    warn.warn(
                        Warn::BadChain as u32,
                        format_args!("virtio-console: queue {qi}: {err}; buffer returned unused"),
                    );
                }
                Popped::Buffer(b) => return Ok(Next::Buffer(b)),
            }
        }
    }

    /// Return `buf` to the driver with `len` bytes written into it.
    fn give_back(&mut self, buf: queue_io::Buffer, len: u32) -> Result<(), DeviceError> {
        let fast = self
            .rings
            .as_ref()
            .is_some_and(|r| r.add_used(self.q, buf.head, len));
        if !fast {
            queue_io::add_used(self.q, self.qi, self.mem, buf.head, len)?;
        }
        self.used = true;
        *self.spare = buf.segs;
        Ok(())
    }

    /// End of the pass: interrupt the driver if buffers were used and it wants to hear about
    /// it.
    fn finish(self, irq: &dyn InterruptSignal) -> Result<(), DeviceError> {
        if !self.used {
            return Ok(());
        }
        // With the rings at hand the check covers the whole pass from their own start index
        // (buffers returned either way); `virtio-queue`'s count of its own `add_used` calls is
        // then never consulted.
        let wanted = match &self.rings {
            Some(r) => r.needs_interrupt(self.q),
            None => queue_io::needs_interrupt(self.q, self.qi, self.mem)?,
        };
        if wanted {
            irq.trigger(InterruptKind::Queue(self.qi));
        }
        Ok(())
    }
}

impl Console {
    /// Nothing for [`VirtioDevice::process`] to do short of a full scan: no control message
    /// to send or to read, no port with a transmit kick or with bytes the guest could take.
    /// (The check after every host-side call; it must agree with what `port_rx`,
    /// `control_rx` and the kick flags make `process` do.)
    fn idle(&self) -> bool {
        !self.control_kick
            && self.control_out.is_empty()
            && self
                .ports
                .values()
                .all(|p| !p.tx_kick && (p.to_guest.is_empty() || !p.guest_open))
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn device_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_CONSOLE_F_MULTIPORT);
        if self.cfg.size.is_some() {
            f |= 1 << VIRTIO_CONSOLE_F_SIZE;
        }
        if self.cfg.emerg_write {
            f |= 1 << VIRTIO_CONSOLE_F_EMERG_WRITE;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        (0..self.num_queues())
            .map(|i| {
                if i == CONTROL_RX_QUEUE || i == CONTROL_TX_QUEUE {
                    self.cfg.control_queue_size
                } else {
                    self.cfg.data_queue_size
                }
            })
            .collect()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let (cols, rows) = self.cfg.size.unwrap_or((0, 0));
        let mut space = [0u8; 12];
        space[0..2].copy_from_slice(&cols.to_le_bytes());
        space[2..4].copy_from_slice(&rows.to_le_bytes());
        space[4..8].copy_from_slice(&self.cfg.max_nr_ports.to_le_bytes());
        let len = if self.cfg.emerg_write { 12 } else { 8 };
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .filter(|&o| o < len)
                .map_or(0, |o| space[o as usize]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only emerg_wr (offset 8) is writable; its low byte goes to the console.
        if !self.cfg.emerg_write || offset != 8 || data.is_empty() {
            return;
        }
        let target = self
            .ports
            .values()
            .find(|p| p.cfg.kind == PortKind::Console)
            .map(|p| p.cfg.id)
            .or_else(|| self.ports.contains_key(&0).then_some(0));
        if let Some(p) = target.and_then(|id| self.ports.get_mut(&id)) {
            if p.host_connected {
                p.backend.write_to_host(&data[..1]);
            }
        }
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.device_features();
    }

    fn activate(&mut self) {
        self.rescan = true;
        if !self.multiport() {
            // Without MULTIPORT port 0 is a console that is always open.
            if let Some(p) = self.ports.get_mut(&0) {
                p.guest_ready = true;
                p.set_guest_open(true);
            }
        }
    }

    fn queue_notify<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
        index: u16,
    ) -> Result<(), DeviceError> {
        match self.role(index) {
            Some(Role::PortRx(id)) => self.port_rx(io, id),
            Some(Role::PortTx(id)) => self.port_tx(io, id),
            Some(Role::ControlRx) => self.control_rx(io),
            Some(Role::ControlTx) => {
                // Control messages change port state: do the work that may follow.
                self.control_tx(io)?;
                self.process(io)
            }
            None => Ok(()),
        }
    }

    fn process<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
    ) -> Result<(), DeviceError> {
        // Only what host-side calls made pending, unless a full scan was asked for (at
        // DRIVER_OK, when buffers may have been posted before).
        let full = std::mem::take(&mut self.rescan);
        self.more_work = false;
        if !full && self.idle() {
            return Ok(());
        }
        let multiport = self.multiport();
        if multiport && (full || std::mem::take(&mut self.control_kick)) {
            self.control_tx(io)?;
        }
        let mut next = self.ports.keys().next().copied();
        while let Some(id) = next {
            if multiport || id == 0 {
                let port = self.ports.get_mut(&id).expect("listed port");
                if full || std::mem::take(&mut port.tx_kick) {
                    self.port_tx(io, id)?;
                }
                self.port_rx(io, id)?;
            }
            next = self.ports.range(id + 1..).next().map(|(&k, _)| k);
        }
        if multiport {
            self.control_rx(io)?;
        }
        Ok(())
    }

    fn has_pending_work(&self) -> bool {
        self.more_work
    }

    fn reset(&mut self) {
        for p in self.ports.values_mut() {
            p.set_guest_open(false);
            p.guest_ready = false;
            p.tx = None;
            p.drop_staged();
        }
        self.acked = 0;
        self.driver_ready = false;
        self.control_out.clear();
        self.rescan = false;
        self.control_kick = false;
        self.more_work = false;
        self.warn.clear();
    }
}
