//! i8042 keyboard controller, only for the CPU reset command (vm-superio).

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port of the controller (data port 0x60; command/status port is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports covered: 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// An i8042 that fires `reset` when the guest writes 0xFE to port 0x64.
pub struct I8042<T: Trigger> {
    dev: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// A controller firing `reset` on the CPU-reset command.
    pub fn new(reset: T) -> Self {
        I8042 {
            dev: I8042Device::new(reset),
        }
    }

    /// The reset trigger.
    pub fn reset_trigger(&self) -> &T {
        self.dev.reset_evt()
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.dev.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.dev.write(off, *b) {
                log::error!("i8042: reset trigger failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::legacy::EventFdTrigger;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_on_port_0x64_fires() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(I8042::new(EventFdTrigger::new(
            fd.try_clone().unwrap(),
        ))));
        let mut bus = Bus::new();
        bus.insert(dev, I8042_PORT_BASE, I8042_PORT_LEN).unwrap();
        // Other commands and the data port do nothing.
        assert!(bus.write(0x64, &[0xaa]));
        assert!(bus.write(0x60, &[0xfe]));
        assert!(fd.read().is_err(), "no reset yet");
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(fd.read().unwrap(), 1);
        let mut st = [0xaa];
        assert!(bus.read(0x64, &mut st));
        assert_eq!(st, [0]);
    }
}
