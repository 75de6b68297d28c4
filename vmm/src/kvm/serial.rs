//! COM1 joined to a chardev: the UART lives on the vCPU threads' bus, the chardev on the
//! event-loop thread. Output bytes cross in a bounded buffer plus an eventfd; input goes into
//! the UART's FIFO from the loop, paused while the FIFO is full and resumed when the guest
//! has emptied it (the UART's `in_buffer_empty` event).

use chardev::{Chardev, ChardevEvent, Frontend};
use devices::legacy::{EventFdTrigger, SerialDevice};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

/// Guest output kept for the loop, including what the chardev has not taken yet (it buffers
/// another `chardev::DEFAULT_OUTPUT_LIMIT` toward a slow peer); beyond this the UART's bytes are
/// dropped, as a full pty does.
const OUT_LIMIT: usize = 1 << 20;

/// The UART's output: a buffer the event loop drains into the chardev.
pub struct LoopWriter {
    buf: Arc<Mutex<Vec<u8>>>,
    kick: EventFd,
}

impl Write for LoopWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = b.is_empty();
        let n = data.len().min(OUT_LIMIT.saturating_sub(b.len()));
        b.extend_from_slice(&data[..n]);
        drop(b);
        if was_empty && n > 0 {
            let _ = self.kick.write(1);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wakes the loop when the guest has read the whole input FIFO.
pub struct InputSpace(EventFd);

impl SerialEvents for InputSpace {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub type Uart = SerialDevice<EventFdTrigger, LoopWriter, InputSpace>;

/// The loop's side of COM1.
pub struct SerialLink {
    pub uart: Arc<Mutex<Uart>>,
    out: Arc<Mutex<Vec<u8>>>,
    /// Readable when output is waiting.
    pub out_kick: EventFd,
    /// Readable when the FIFO has room again.
    pub space: EventFd,
    chardev: Option<Chardev>,
}

impl SerialLink {
    /// A UART raising `irq`, joined to `chardev` (None: output discarded, no input).
    pub fn new(irq: EventFd, chardev: Option<Chardev>) -> io::Result<Self> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let out_kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
        let space = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
        let uart = SerialDevice::with_events(
            EventFdTrigger::new(irq),
            InputSpace(space.try_clone()?),
            LoopWriter {
                buf: out.clone(),
                kick: out_kick.try_clone()?,
            },
        );
        let uart = Arc::new(Mutex::new(uart));
        if let Some(cd) = &chardev {
            let fe: std::rc::Rc<std::cell::RefCell<dyn Frontend>> =
                std::rc::Rc::new(std::cell::RefCell::new(UartInput {
                    uart: uart.clone(),
                    out_kick: out_kick.try_clone()?,
                }));
            cd.set_frontend(fe);
        }
        Ok(SerialLink {
            uart,
            out,
            out_kick,
            space,
            chardev,
        })
    }

    /// Moves the guest's output to the chardev.
    pub fn flush_output(&self) {
        let _ = self.out_kick.read();
        let data = std::mem::take(&mut *self.out.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(cd) = &self.chardev {
            // A chardev with no peer drops the bytes, as QEMU does (`Err`).
            let n = cd.write(&data).unwrap_or(data.len());
            if n < data.len() {
                // A slow peer: keep the rest in front of what the guest wrote meanwhile; the
                // chardev says when it has room again (`write_ready`).
                let mut b = self.out.lock().unwrap_or_else(|e| e.into_inner());
                let mut rest = data[n..].to_vec();
                rest.extend_from_slice(&b);
                *b = rest;
            }
        }
    }

    /// The FIFO has room: let the chardev deliver input again.
    pub fn input_space(&self) {
        let _ = self.space.read();
        if let Some(cd) = &self.chardev {
            cd.accept_input();
        }
    }
}

struct UartInput {
    uart: Arc<Mutex<Uart>>,
    /// The output eventfd: the chardev can take output again.
    out_kick: EventFd,
}

impl Frontend for UartInput {
    fn receive(&mut self, data: &[u8]) {
        // `can_receive` bounded `data` to the FIFO's room, so nothing is lost here.
        let _ = self
            .uart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(data);
    }

    fn can_receive(&self) -> usize {
        self.uart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_capacity()
    }

    fn event(&mut self, _ev: ChardevEvent) {}

    fn write_ready(&mut self) {
        let _ = self.out_kick.write(1);
    }
}
