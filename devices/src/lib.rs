//! Devices for the virtagent VMM.
//!
//! * [`virtio::console`]: the virtio-serial device (virtio-console with `MULTIPORT`), a
//!   transport-independent core driven through [`virtio::DeviceIo`] so it can be served over
//!   virtio-mmio ([`virtio::mmio::MmioTransport`]) or vhost-user.
//! * [`legacy`]: the 8250 UART and the i8042 reset controller a Linux boot needs.
//! * [`bus`]: PIO/MMIO address ranges mapped to devices, for vCPU exits.
//!
//! See `docs/devices.md` for the host-side port interface and the policies.

pub mod bus;
pub mod legacy;
pub mod virtio;
