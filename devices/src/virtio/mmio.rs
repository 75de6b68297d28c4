//! virtio-mmio version 2 ("modern") transport.
//!
//! [`MmioTransport::read`] / [`MmioTransport::write`] take what a vCPU MMIO exit reports
//! (offset in the 0x200-byte window, access bytes). [`MmioTransport::queue_notify`] is the
//! same as a write to `QueueNotify`, for a VMM that registers an ioeventfd on that register.
//! The interrupt line is any [`vm_superio::Trigger`] (an irqfd [`EventFd`] in the VMM, see
//! [`crate::legacy::EventFdTrigger`]).
//!
//! [`EventFd`]: vmm_sys_util::eventfd::EventFd

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vm_superio::Trigger;

use super::log_once::LogOnce;
use super::{
    status, DeviceError, DeviceIo, InterruptKind, InterruptSignal, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;

/// Size of the register window of one transport.
pub const MMIO_WINDOW_SIZE: u64 = 0x200;
/// `MagicValue`: "virt".
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern transport.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` reported ("VTAG" little-endian; Linux ignores it).
pub const MMIO_VENDOR_ID: u32 = 0x4741_5456;

const QUEUE_RESET: u32 = 0xc0;
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device asked for a queue with an invalid maximum size.
    #[error("queue {index}: invalid maximum size {size}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// The size asked for.
        size: u16,
    },
    /// More queues than a `u16` index can name.
    #[error("too many queues: {0}")]
    TooManyQueues(usize),
}

/// `InterruptStatus` plus the line: the [`InterruptSignal`] of an MMIO device.
pub struct MmioInterrupt<T: Trigger> {
    status: AtomicU32,
    line: T,
}

impl<T: Trigger> MmioInterrupt<T> {
    /// Current `InterruptStatus`.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The interrupt line.
    pub fn line(&self) -> &T {
        &self.line
    }
}

impl<T: Trigger> InterruptSignal for MmioInterrupt<T> {
    fn trigger(&self, kind: InterruptKind) {
        let bit = match kind {
            InterruptKind::Queue(_) => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::error!("virtio-mmio: cannot raise interrupt: {e:?}");
        }
    }
}

#[derive(Clone, Copy)]
#[repr(u32)]
enum Warn {
    BadAccess,
    BadRegister,
    BadStatus,
    Features,
    QueueSetup,
    BadQueue,
}

/// A virtio device served over virtio-mmio version 2.
pub struct MmioTransport<D: VirtioDevice, M: GuestMemory, T: Trigger> {
    device: D,
    mem: M,
    irq: MmioInterrupt<T>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    work: Option<T>,
    warn: LogOnce,
}

impl<D: VirtioDevice, M: GuestMemory, T: Trigger> MmioTransport<D, M, T> {
    /// Serve `device` with guest memory `mem`, raising `line` for interrupts.
    pub fn new(device: D, mem: M, line: T) -> Result<Self, MmioError> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > usize::from(u16::MAX) {
            return Err(MmioError::TooManyQueues(sizes.len()));
        }
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::QueueSize { index, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            irq: MmioInterrupt {
                status: AtomicU32::new(0),
                line,
            },
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            work: None,
            warn: LogOnce::default(),
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for host-side calls; call [`MmioTransport::process`] afterwards (or use
    /// [`MmioTransport::with_device`]) so the changes reach the guest.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Run `f` on the device, then let it do the queue work that follows.
    pub fn with_device<R>(&mut self, f: impl FnOnce(&mut D) -> R) -> R {
        let r = f(&mut self.device);
        self.process();
        r
    }

    /// Run `f` on the device with queue access (`None` while the queues may not be used,
    /// before `FEATURES_OK` or after a failure), then let it do the pending work. If `f`
    /// fails the device is marked `DEVICE_NEEDS_RESET` and `None` is returned.
    ///
    /// For the console: `t.with_device_io(|c, io| c.port_write_io(io, port, bytes))`.
    pub fn with_device_io<R>(
        &mut self,
        f: impl FnOnce(&mut D, Option<&mut DeviceIo<'_, M, Vec<Queue>>>) -> Result<R, DeviceError>,
    ) -> Option<R> {
        let r = if self.live() {
            let mut io = DeviceIo {
                mem: &self.mem,
                queues: &mut self.queues,
                irq: &self.irq,
            };
            f(&mut self.device, Some(&mut io))
        } else {
            f(&mut self.device, None)
        };
        match r {
            Ok(v) => {
                self.process();
                Some(v)
            }
            Err(e) => {
                self.needs_reset(e);
                None
            }
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// `InterruptStatus`.
    pub fn interrupt_status(&self) -> u32 {
        self.irq.status()
    }

    /// The interrupt (status and line).
    pub fn interrupt(&self) -> &MmioInterrupt<T> {
        &self.irq
    }

    /// Features the driver accepted (valid once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Queues may be used: features negotiated and the device not failed.
    fn live(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
    }

    /// The driver notified queue `index` (same as writing `QueueNotify`).
    pub fn queue_notify(&mut self, index: u16) {
        if !self.live() {
            return;
        }
        if usize::from(index) >= self.queues.len() {
            self.warn.warn(
                Warn::BadQueue as u32,
                format_args!("virtio-mmio: notify for queue {index} that does not exist"),
            );
            return;
        }
        let mut io = DeviceIo {
            mem: &self.mem,
            queues: &mut self.queues,
            irq: &self.irq,
        };
        if let Err(e) = self.device.queue_notify(&mut io, index) {
            self.needs_reset(e);
        }
        self.settle();
    }

    /// Fire `t` when the device stopped at a per-call bound with work left; the VMM then calls
    /// [`MmioTransport::process`] from its event loop. Without it the transport finishes the
    /// work before returning (which a hostile guest can make long).
    pub fn set_work_trigger(&mut self, t: T) {
        self.work = Some(t);
    }

    /// Whether the device has work left from a bounded call.
    pub fn has_pending_work(&self) -> bool {
        self.live() && self.device.has_pending_work()
    }

    fn settle(&mut self) {
        if !self.has_pending_work() {
            return;
        }
        if let Some(w) = &self.work {
            if let Err(e) = w.trigger() {
                log::error!("virtio-mmio: cannot signal pending work: {e:?}");
            }
            return;
        }
        while self.has_pending_work() {
            self.process_once();
        }
    }

    /// Let the device do pending work (after host-side calls on [`MmioTransport::device_mut`],
    /// or when the work trigger fired).
    pub fn process(&mut self) {
        self.process_once();
        self.settle();
    }

    fn process_once(&mut self) {
        if !self.live() {
            return;
        }
        let mut io = DeviceIo {
            mem: &self.mem,
            queues: &mut self.queues,
            irq: &self.irq,
        };
        if let Err(e) = self.device.process(&mut io) {
            self.needs_reset(e);
        }
    }

    fn needs_reset(&mut self, e: DeviceError) {
        log::error!("virtio-mmio: device needs reset: {e}");
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.irq.trigger(InterruptKind::Config);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.irq.status.store(0, Ordering::SeqCst);
        self.warn.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; the driver cannot set or clear it.
        let keep = self.status & status::DEVICE_NEEDS_RESET;
        let old = self.status & !status::DEVICE_NEEDS_RESET;
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & old != old {
            self.warn.warn(
                Warn::BadStatus as u32,
                format_args!("virtio-mmio: status {old:#x} -> {value:#x} clears bits; ignored"),
            );
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let ok = old & status::DRIVER != 0
                && self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if ok {
                self.device.ack_features(self.driver_features);
            } else {
                self.warn.warn(
                    Warn::Features as u32,
                    format_args!(
                        "virtio-mmio: features {:#x} refused (offered {offered:#x})",
                        self.driver_features
                    ),
                );
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            self.warn.warn(
                Warn::BadStatus as u32,
                format_args!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored"),
            );
            new &= !status::DRIVER_OK;
        }
        self.status = new | keep;
        if new & added & status::DRIVER_OK != 0 {
            self.device.activate();
            self.process();
        }
    }

    /// The selected queue if the driver may configure it now (warns once if not).
    fn config_queue(&mut self) -> Option<&mut Queue> {
        let setup = self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0;
        let sel = self.queue_sel as usize;
        let ok = setup && self.queues.get(sel).is_some_and(|q| !q.ready());
        if !ok {
            self.warn.warn(
                Warn::QueueSetup as u32,
                format_args!(
                    "virtio-mmio: queue {sel} configured outside setup, while ready, or absent"
                ),
            );
            return None;
        }
        self.queues.get_mut(sel)
    }

    fn set_queue_addr(&mut self, reg: u32, v: u32) {
        let Some(q) = self.config_queue() else {
            return;
        };
        let (cur, high) = match reg {
            VIRTIO_MMIO_QUEUE_DESC_LOW => (q.desc_table(), false),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => (q.desc_table(), true),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => (q.avail_ring(), false),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => (q.avail_ring(), true),
            VIRTIO_MMIO_QUEUE_USED_LOW => (q.used_ring(), false),
            _ => (q.used_ring(), true),
        };
        let addr = if high {
            (cur & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (cur & !0xffff_ffff) | u64::from(v)
        };
        let addr = GuestAddress(addr);
        let r = match reg {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(addr)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                q.try_set_avail_ring_address(addr)
            }
            _ => q.try_set_used_ring_address(addr),
        };
        if let Err(e) = r {
            self.warn.warn(
                Warn::QueueSetup as u32,
                format_args!("virtio-mmio: queue {}: {e}", self.queue_sel),
            );
        }
    }

    fn set_queue_ready(&mut self, v: u32) {
        let sel = self.queue_sel;
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        if v == 0 {
            if let Some(q) = self.queues.get_mut(sel as usize) {
                q.set_ready(false);
            }
            return;
        }
        if self.config_queue().is_none() {
            return;
        }
        let q = &mut self.queues[sel as usize];
        q.set_event_idx(event_idx);
        q.set_ready(true);
        if !q.is_valid(&self.mem) {
            q.set_ready(false);
            self.needs_reset(DeviceError::AvailRing {
                queue: sel as u16,
                source: virtio_queue::Error::QueueNotReady,
            });
        }
    }

    /// MMIO read at `offset` in the register window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.warn.warn(
                Warn::BadAccess as u32,
                format_args!(
                    "virtio-mmio: {}-byte read at {offset:#x} (registers are 32-bit)",
                    data.len()
                ),
            );
            data.fill(0);
            return;
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let f = self.device.device_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: length (and base) all ones.
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            QUEUE_RESET => 0,
            _ => {
                self.warn.warn(
                    Warn::BadRegister as u32,
                    format_args!("virtio-mmio: read of write-only or unknown register {offset:#x}"),
                );
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// MMIO write at `offset` in the register window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.warn.warn(
                Warn::BadAccess as u32,
                format_args!(
                    "virtio-mmio: {}-byte write at {offset:#x} (registers are 32-bit)",
                    data.len()
                ),
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            self.warn.warn(
                Warn::BadAccess as u32,
                format_args!("virtio-mmio: misaligned write at {offset:#x}"),
            );
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating =
                    self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
                if !negotiating {
                    self.warn.warn(
                        Warn::Features as u32,
                        format_args!("virtio-mmio: DriverFeatures written outside negotiation"),
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                let sel = self.queue_sel;
                if let Some(q) = self.config_queue() {
                    let ok = u16::try_from(v).ok().map(|s| q.try_set_size(s).is_ok());
                    if ok != Some(true) {
                        self.warn.warn(
                            Warn::QueueSetup as u32,
                            format_args!("virtio-mmio: queue {sel}: invalid size {v}"),
                        );
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.set_queue_ready(v),
            VIRTIO_MMIO_QUEUE_NOTIFY => match u16::try_from(v) {
                Ok(i) => self.queue_notify(i),
                Err(_) => self.warn.warn(
                    Warn::BadQueue as u32,
                    format_args!("virtio-mmio: notify for queue {v}"),
                ),
            },
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.irq.status.fetch_and(!v, Ordering::SeqCst);
            }
            VIRTIO_MMIO_STATUS => self.set_status(v),
            r @ (VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH) => self.set_queue_addr(r, v),
            // No shared memory regions to select.
            VIRTIO_MMIO_SHM_SEL => {}
            QUEUE_RESET => {}
            _ => self.warn.warn(
                Warn::BadRegister as u32,
                format_args!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
            ),
        }
    }
}

impl<D, M, T> BusDevice for MmioTransport<D, M, T>
where
    D: VirtioDevice + Send,
    M: GuestMemory + Send,
    T: Trigger + Send,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}
