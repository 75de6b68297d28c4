//! 8250/16550 UART (vm-superio) on the PIO bus.

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialEvents};
use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;

/// Base port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Legacy IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// Ports a UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

/// A UART whose interrupt is a [`Trigger`] and whose output goes to `W`. `EV` receives
/// vm-superio's events; `in_buffer_empty` tells the host it can enqueue more input.
pub struct SerialDevice<T: Trigger, W: Write, EV: SerialEvents = NoEvents> {
    serial: Serial<T, EV, W>,
}

impl<T: Trigger, W: Write> SerialDevice<T, W, NoEvents> {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: T, out: W) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }
}

impl<T: Trigger, W: Write, EV: SerialEvents> SerialDevice<T, W, EV> {
    /// Like [`SerialDevice::new`], with an event sink (e.g. to learn when the guest emptied the
    /// input FIFO and more host input can be enqueued).
    pub fn with_events(irq: T, events: EV, out: W) -> Self {
        SerialDevice {
            serial: Serial::with_events(irq, events, out),
        }
    }

    /// Host input for the guest; returns bytes taken (the FIFO holds 64).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                log::error!("serial: input: {e:?}");
                0
            }
        }
    }

    /// Room left in the input FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// The output writer.
    pub fn output(&self) -> &W {
        self.serial.writer()
    }

    /// The output writer, mutably.
    pub fn output_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

impl<T: Trigger + Send, W: Write + Send, EV: SerialEvents + Send> BusDevice
    for SerialDevice<T, W, EV>
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) if u64::from(off) < SERIAL_PORT_LEN => *b = self.serial.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if u64::from(off) < SERIAL_PORT_LEN {
                if let Err(e) = self.serial.write(off, *b) {
                    log::error!("serial: {e:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn uart() -> SerialDevice<EventFdTrigger, Vec<u8>> {
        SerialDevice::new(
            EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            Vec::new(),
        )
    }

    #[test]
    fn guest_output_reaches_writer() {
        let mut s = uart();
        for b in b"hi\n" {
            BusDevice::write(&mut s, 0, &[*b]);
        }
        assert_eq!(s.output(), b"hi\n");
    }

    #[test]
    fn host_input_reaches_guest_with_interrupt() {
        let mut s = uart();
        // Enable the received-data interrupt.
        BusDevice::write(&mut s, IER, &[1]);
        assert_eq!(s.enqueue_input(b"ok"), 2);
        assert_eq!(s.serial.interrupt_evt().eventfd().read().unwrap(), 1);
        let mut lsr = [0];
        BusDevice::read(&mut s, LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0];
        BusDevice::read(&mut s, 0, &mut b);
        assert_eq!(b[0], b'o');
        BusDevice::read(&mut s, 0, &mut b);
        assert_eq!(b[0], b'k');
    }

    /// Counts `in_buffer_empty` events.
    #[derive(Default)]
    struct Drained(std::sync::atomic::AtomicUsize);
    impl SerialEvents for Drained {
        fn buffer_read(&self) {}
        fn out_byte(&self) {}
        fn tx_lost_byte(&self) {}
        fn in_buffer_empty(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn input_fifo_drained_event() {
        let mut s = SerialDevice::with_events(
            EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            Drained::default(),
            Vec::new(),
        );
        let big = [b'x'; 100];
        assert_eq!(s.enqueue_input(&big), 64, "FIFO holds 64 bytes");
        assert_eq!(s.enqueue_input(&big), 0);
        let mut b = [0];
        for _ in 0..64 {
            BusDevice::read(&mut s, 0, &mut b);
        }
        assert!(
            s.serial
                .events()
                .0
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1
        );
        assert_eq!(s.input_capacity(), 64);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut s = uart();
        let mut two = [0u8; 2];
        BusDevice::read(&mut s, 0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        BusDevice::write(&mut s, 0, &[1, 2]);
        BusDevice::write(&mut s, 1000, &[1]);
        assert!(s.output().is_empty());
    }
}
