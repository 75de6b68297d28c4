//! Legacy PC devices a Linux boot needs, on the PIO bus.

mod i8042;
mod serial;

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

pub use self::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use self::serial::{SerialDevice, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};

/// A [`Trigger`] that writes an [`EventFd`]: an irqfd for an interrupt line, or an event the
/// VMM's loop waits on (i8042 reset).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wrap `fd`.
    pub fn new(fd: EventFd) -> EventFdTrigger {
        EventFdTrigger(fd)
    }

    /// The eventfd (to register as irqfd or to poll).
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn eventfd_trigger_counts() {
        let t = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
        t.trigger().unwrap();
        t.trigger().unwrap();
        assert_eq!(t.eventfd().read().unwrap(), 2);
    }
}
