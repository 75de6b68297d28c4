//! Devices for the virtagent VMM.
//!
//! * [`virtio::console`]: the virtio-serial device (virtio-console with `MULTIPORT`), a
//!   transport-independent core driven through [`virtio::DeviceIo`] so it can be served over
//!   virtio-mmio ([`virtio::mmio::MmioTransport`]) or vhost-user.
//! * [`legacy`]: the 8250 UART and the i8042 reset controller a Linux boot needs.
//! * [`bus`]: PIO/MMIO address ranges mapped to devices, for vCPU exits.
//!
//! See `docs/devices.md` for the host-side port interface and the policies.
//!
//! Wiring, as a VMM does it:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use devices::bus::{Bus, SharedDevice};
//! use devices::legacy::{EventFdTrigger, I8042, I8042_PORT_BASE, I8042_PORT_LEN};
//! use devices::virtio::console::{Console, ConsoleConfig, PortBackend, PortConfig};
//! use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! struct Agent(Vec<u8>);
//! impl PortBackend for Agent {
//!     fn write_to_host(&mut self, data: &[u8]) -> usize {
//!         self.0.extend_from_slice(data);
//!         data.len()
//!     }
//! }
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut console = Console::new(ConsoleConfig::default()).unwrap();
//! console
//!     .add_port(PortConfig::serial(1, "org.qemu.guest_agent.0"), Box::new(Agent(Vec::new())))
//!     .unwrap();
//! let irq = EventFd::new(EFD_NONBLOCK).unwrap();
//! let t = MmioTransport::new(console, mem, EventFdTrigger::new(irq.try_clone().unwrap())).unwrap();
//! let t = Arc::new(Mutex::new(t));
//! let mut mmio = Bus::new();
//! mmio.insert(t.clone() as SharedDevice, 0xfeb0_0000, MMIO_WINDOW_SIZE).unwrap();
//! let mut pio = Bus::new();
//! let reset = EventFd::new(EFD_NONBLOCK).unwrap();
//! let i8042 = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()));
//! pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN).unwrap();
//!
//! // A vCPU reads the magic value of the virtio-mmio window...
//! let mut magic = [0u8; 4];
//! assert!(mmio.read(0xfeb0_0000, &mut magic));
//! assert_eq!(&magic, b"virt");
//! // ... and the event loop writes host bytes for the agent port (kept until the guest opens it).
//! let n = t.lock().unwrap().with_device_io(|c, io| c.port_write_io(io, 1, b"{}")).unwrap();
//! assert_eq!(n, 2);
//! // A guest reboot through the keyboard controller.
//! assert!(pio.write(0x64, &[0xfe]));
//! assert_eq!(reset.read().unwrap(), 1);
//! ```

pub mod bus;
pub mod legacy;
pub mod virtio;
