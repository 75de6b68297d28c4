//! Virtio device model shared by the transports.
//!
//! A device implements [`VirtioDevice`]. A transport (virtio-mmio here, vhost-user elsewhere)
//! owns the negotiated state and the [`Queue`]s and hands them to the device as a [`DeviceIo`]
//! whenever the device has to touch guest memory. Nothing in a device depends on MMIO.

pub mod console;
mod log_once;
pub mod mmio;
mod queue_io;

use vm_memory::GuestMemory;

pub use virtio_queue::{Queue, QueueT};

/// Feature bit: VIRTIO 1.0 or later device (mandatory for virtio-mmio version 2).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error from which only a reset recovers.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// What an interrupt tells the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device put buffers in the used ring of this queue.
    Queue(u16),
    /// The device configuration (or its status, e.g. `DEVICE_NEEDS_RESET`) changed.
    Config,
}

/// How a device notifies the driver. The transport maps it: virtio-mmio sets a bit in
/// `InterruptStatus` and raises its line; vhost-user writes the queue's call eventfd.
pub trait InterruptSignal {
    /// Notify the driver.
    fn trigger(&self, kind: InterruptKind);
}

/// The device's virtqueues, by index. Implemented for slices and vectors of [`Queue`]; a
/// vhost-user backend can implement it over its locked vrings.
pub trait QueueSet {
    /// The queue with this index, `None` if the device has no such queue.
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue>;
}

impl QueueSet for [Queue] {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        self.get_mut(usize::from(index))
    }
}

impl QueueSet for Vec<Queue> {
    fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        self.get_mut(usize::from(index))
    }
}

/// Everything a device needs to move data: guest memory, its queues and the interrupt.
pub struct DeviceIo<'a, M: GuestMemory, Q: QueueSet + ?Sized> {
    /// Guest memory the queues and buffers live in.
    pub mem: &'a M,
    /// The device's queues (only the ready ones are used).
    pub queues: &'a mut Q,
    /// Where used-buffer and config notifications go.
    pub irq: &'a dyn InterruptSignal,
}

/// Errors after which the device needs a reset (the transport sets `DEVICE_NEEDS_RESET`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The available ring of a queue could not be read or holds an impossible index.
    #[error("queue {queue}: available ring unusable: {source}")]
    AvailRing {
        /// Queue index.
        queue: u16,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// A buffer could not be returned through the used ring (bad head index, ring outside memory).
    #[error("queue {queue}: cannot add used buffer: {source}")]
    UsedRing {
        /// Queue index.
        queue: u16,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// The notification suppression fields could not be accessed.
    #[error("queue {queue}: cannot access notification fields: {source}")]
    Notification {
        /// Queue index.
        queue: u16,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
}

/// A virtio device as seen by a transport.
pub trait VirtioDevice {
    /// Virtio device ID (3 for a console).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers.
    fn device_features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues. A zero size means the
    /// queue does not exist.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Read device configuration space at `offset`; bytes outside it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space at `offset`; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Features the driver accepted (a subset of [`VirtioDevice::device_features`]), set when
    /// the driver sets `FEATURES_OK`.
    fn ack_features(&mut self, features: u64);
    /// The driver set `DRIVER_OK`.
    fn activate(&mut self);
    /// The driver notified queue `index` (new available buffers).
    fn queue_notify<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
        index: u16,
    ) -> Result<(), DeviceError>;
    /// Do any pending work (after host-side calls changed the device's state).
    fn process<M: GuestMemory, Q: QueueSet + ?Sized>(
        &mut self,
        io: &mut DeviceIo<'_, M, Q>,
    ) -> Result<(), DeviceError>;
    /// A per-call bound stopped the last `queue_notify`/`process` before all work was done:
    /// the transport must call [`VirtioDevice::process`] again soon (not in a tight loop
    /// inside one event-loop iteration, so other work gets its turn).
    fn has_pending_work(&self) -> bool {
        false
    }
    /// Return to the initial state (the driver wrote 0 to the status register).
    fn reset(&mut self);
}
