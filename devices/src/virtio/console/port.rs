//! Ports of the virtio-serial device and the host-side backend interface.

use std::collections::VecDeque;

use crate::virtio::queue_io::Buffer;

/// Default bound of the host→guest buffer of a port.
pub const DEFAULT_TO_GUEST_CAPACITY: usize = 64 * 1024;

/// Largest number of guest bytes read from a tx buffer before they are offered to the backend.
pub(crate) const TX_CHUNK: usize = 64 * 1024;

/// The host side of one port (a chardev backend, the QMP proxy, a test).
///
/// All calls come from the thread that drives the device (the VMM event loop). None may block.
pub trait PortBackend: Send {
    /// Bytes the guest wrote to the port. Return how many were taken, `0..=data.len()`.
    ///
    /// Taking fewer bytes than offered throttles the port (a `virtserialport`): the device
    /// keeps the rest, stops consuming the guest's transmit queue (the guest sees a full
    /// queue) and offers the rest again after the host calls
    /// [`Console::port_drained`](super::Console::port_drained). Nothing is lost.
    /// For a `virtconsole` port the rest is dropped, as in QEMU (the guest's hvc driver
    /// spins waiting for the device, so it must not be stalled).
    fn write_to_host(&mut self, data: &[u8]) -> usize;

    /// A guest process opened (`true`) or closed (`false`) the port; `false` is also
    /// reported when the device is reset while the port was open.
    fn guest_open_changed(&mut self, _open: bool) {}

    /// The host→guest buffer of the port had been full (a
    /// [`Console::port_write`](super::Console::port_write) returned short) and now has room.
    fn to_guest_space(&mut self) {}
}

/// What the guest makes of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// `virtconsole`: an hvc console in the guest (`/dev/hvcN`).
    Console,
    /// `virtserialport`: a generic port (`/dev/vportNpM`, `/dev/virtio-ports/<name>`).
    Serial,
}

/// Static description of a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Port number, `< max_nr_ports` (port 0 is where a `virtconsole` usually sits).
    pub id: u32,
    /// Console or generic port.
    pub kind: PortKind,
    /// Name sent with `PORT_NAME` (e.g. `org.qemu.guest_agent.0`); `None` sends none.
    pub name: Option<String>,
    /// Whether the host side is connected from the start.
    pub host_connected: bool,
    /// Bound of the host→guest buffer, in bytes.
    pub to_guest_capacity: usize,
}

impl PortConfig {
    /// A generic port with a name, host side connected, default buffer size.
    pub fn serial(id: u32, name: &str) -> PortConfig {
        PortConfig {
            id,
            kind: PortKind::Serial,
            name: Some(name.to_owned()),
            host_connected: true,
            to_guest_capacity: DEFAULT_TO_GUEST_CAPACITY,
        }
    }

    /// A console port, host side connected, default buffer size.
    pub fn console(id: u32) -> PortConfig {
        PortConfig {
            id,
            kind: PortKind::Console,
            name: None,
            host_connected: true,
            to_guest_capacity: DEFAULT_TO_GUEST_CAPACITY,
        }
    }
}

/// The guest→host buffer being consumed.
pub(crate) struct TxCursor {
    /// The guest's buffer.
    pub buf: Buffer,
    /// Bytes of `buf` already copied into the staging area.
    pub read: u64,
}

/// Run-time state of a port.
pub(crate) struct Port {
    pub cfg: PortConfig,
    pub backend: Box<dyn PortBackend>,
    pub host_connected: bool,
    /// A guest process has the port open.
    pub guest_open: bool,
    /// The driver answered `DEVICE_ADD` with `PORT_READY 1`.
    pub guest_ready: bool,
    /// Host bytes waiting for guest receive buffers (bounded by `cfg.to_guest_capacity`).
    pub to_guest: VecDeque<u8>,
    /// A `port_write` was short; tell the backend when room appears.
    pub to_guest_was_full: bool,
    /// Guest tx buffer in progress.
    pub tx: Option<TxCursor>,
    /// Staging area for guest bytes (grows to `TX_CHUNK` on first use).
    pub staged: Vec<u8>,
    /// Guest bytes in `staged` (`staged[..staged_len]`).
    pub staged_len: usize,
    /// Bytes of `staged` already taken.
    pub staged_pos: usize,
    /// The backend took fewer bytes than offered; wait for `port_drained`.
    pub throttled: bool,
    /// Look at the transmit queue at the next `process` (throttle lifted, host gone).
    pub tx_kick: bool,
}

impl Port {
    pub(crate) fn new(cfg: PortConfig, backend: Box<dyn PortBackend>) -> Port {
        Port {
            host_connected: cfg.host_connected,
            cfg,
            backend,
            guest_open: false,
            guest_ready: false,
            to_guest: VecDeque::new(),
            to_guest_was_full: false,
            tx: None,
            staged: Vec::new(),
            staged_len: 0,
            staged_pos: 0,
            throttled: false,
            tx_kick: false,
        }
    }

    /// Host→guest: queue what fits; returns bytes accepted.
    pub(crate) fn push_to_guest(&mut self, data: &[u8]) -> usize {
        let room = self
            .cfg
            .to_guest_capacity
            .saturating_sub(self.to_guest.len());
        let n = room.min(data.len());
        self.to_guest.extend(&data[..n]);
        if n < data.len() {
            self.to_guest_was_full = true;
        }
        n
    }

    /// Drop guest→host data in flight (host disconnect, device reset). The tx buffer itself
    /// must be returned by the caller if the queue is still live.
    pub(crate) fn drop_staged(&mut self) {
        self.staged_len = 0;
        self.staged_pos = 0;
        self.throttled = false;
    }

    /// Set the guest-open state and tell the backend if it changed.
    pub(crate) fn set_guest_open(&mut self, open: bool) {
        if self.guest_open != open {
            self.guest_open = open;
            self.backend.guest_open_changed(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink;
    impl PortBackend for Sink {
        fn write_to_host(&mut self, data: &[u8]) -> usize {
            data.len()
        }
    }

    #[test]
    fn to_guest_buffer_is_bounded() {
        let mut cfg = PortConfig::serial(1, "x");
        cfg.to_guest_capacity = 10;
        let mut p = Port::new(cfg, Box::new(Sink));
        assert_eq!(p.push_to_guest(b"0123456"), 7);
        assert!(!p.to_guest_was_full);
        assert_eq!(p.push_to_guest(b"789abc"), 3);
        assert!(p.to_guest_was_full);
        assert_eq!(p.push_to_guest(b"z"), 0);
        assert_eq!(
            p.to_guest.iter().copied().collect::<Vec<_>>(),
            b"0123456789"
        );
    }
}
