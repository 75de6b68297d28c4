//! The virtio-serial device as a hostile guest driver meets it, through the virtio-mmio
//! registers and guest memory only: register writes and reads, raw memory writes (descriptor
//! tables, rings, control messages), structured descriptor and avail-ring writes, queue
//! notifications; interleaved with host-side port writes, host connects and drains. Nothing may
//! panic or hang (a ring that loops, a chain longer than the queue, an index far ahead).
#![no_main]

use devices::legacy::EventFdTrigger;
use devices::virtio::console::{Console, ConsoleConfig, PortBackend, PortConfig};
use devices::virtio::mmio::MmioTransport;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 256 << 10;
const QSIZE: u32 = 16;
const MAX_PORTS: u32 = 3;

/// A host end that takes at most `limit` bytes per call (0 throttles the port).
struct Host {
    got: Arc<AtomicUsize>,
    limit: usize,
}

impl PortBackend for Host {
    fn write_to_host(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.limit);
        self.got.fetch_add(n, Ordering::SeqCst);
        n
    }
}

/// Reads input bytes, zero once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Guest-physical layout of queue `q`: descriptors, avail ring, used ring.
fn ring(q: u32) -> (u64, u64, u64) {
    let base = 0x1000 * u64::from(q + 1);
    (base, base + 0x100, base + 0x200)
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let flags = inp.u8();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut console = Console::new(ConsoleConfig {
        max_nr_ports: MAX_PORTS,
        ..ConsoleConfig::default()
    })
    .unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    for (id, cfg) in [
        (0, PortConfig::console(0)),
        (1, PortConfig::serial(1, "org.qemu.guest_agent.0")),
        (2, PortConfig::serial(2, "p2")),
    ] {
        let limit = if id == 2 && flags & 2 != 0 {
            0
        } else {
            1 << 20
        };
        let _ = console.add_port(
            cfg,
            Box::new(Host {
                got: got.clone(),
                limit,
            }),
        );
    }
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(console, mem.clone(), EventFdTrigger::new(irq)).unwrap();
    let wr = |t: &mut MmioTransport<Console, GuestMemoryMmap, EventFdTrigger>, off: u64, v: u32| {
        t.write(off, &v.to_le_bytes())
    };
    let nq = 2 * (MAX_PORTS + 1);
    if flags & 1 != 0 {
        // The Linux probe, so that short inputs reach the queues.
        wr(&mut t, 0x70, 1);
        wr(&mut t, 0x70, 3);
        wr(&mut t, 0x24, 0);
        wr(
            &mut t,
            0x20,
            (1 << 1) | if flags & 4 != 0 { 1 << 29 } else { 0 },
        );
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, 11);
        for q in 0..nq {
            let (d, a, u) = ring(q);
            wr(&mut t, 0x30, q);
            wr(&mut t, 0x38, QSIZE);
            wr(&mut t, 0x80, d as u32);
            wr(&mut t, 0x90, a as u32);
            wr(&mut t, 0xa0, u as u32);
            wr(&mut t, 0x44, 1);
        }
        wr(&mut t, 0x70, 15);
    }
    let mut avail = [0u16; 8];
    while !inp.0.is_empty() {
        match inp.u8() % 10 {
            0 => {
                let off = u64::from(inp.u16()) % 0x200;
                let v = inp.u32();
                wr(&mut t, off, v);
            }
            1 => {
                let off = u64::from(inp.u16()) % 0x220;
                let mut b = [0u8; 4];
                let len = 1 << (inp.u8() % 3);
                t.read(off, &mut b[..len]);
            }
            2 => {
                let addr = u64::from(inp.u16()) * 4;
                let len = usize::from(inp.u8() % 64);
                let bytes = inp.bytes(len).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(addr));
            }
            3 => {
                // A descriptor: address, length, flags, next, in queue q's table.
                let q = u32::from(inp.u8()) % nq;
                let slot = u64::from(inp.u8() % 16);
                let addr = u64::from(inp.u16()) * 16;
                let len = u32::from(inp.u16());
                let fl = inp.u16() & 7;
                let next = inp.u16() % 18;
                let (d, _, _) = ring(q);
                let mut desc = Vec::new();
                desc.extend_from_slice(&addr.to_le_bytes());
                desc.extend_from_slice(&len.to_le_bytes());
                desc.extend_from_slice(&fl.to_le_bytes());
                desc.extend_from_slice(&next.to_le_bytes());
                let _ = mem.write_slice(&desc, GuestAddress(d + 16 * slot));
            }
            4 => {
                // Make a head available on queue q and notify.
                let q = inp.u8() as u32 % nq;
                let head = u16::from(inp.u8() % 18);
                let (_, a, _) = ring(q);
                let k = q as usize;
                let _ = mem.write_obj(
                    head,
                    GuestAddress(a + 4 + 2 * u64::from(avail[k] % QSIZE as u16)),
                );
                avail[k] = avail[k].wrapping_add(1);
                let _ = mem.write_obj(avail[k], GuestAddress(a + 2));
                wr(&mut t, 0x50, q);
            }
            5 => {
                let q = u32::from(inp.u8()) % (nq + 2);
                wr(&mut t, 0x50, q);
            }
            6 => {
                let port = u32::from(inp.u8()) % (MAX_PORTS + 1);
                let len = usize::from(inp.u16() % 8192);
                let bytes = vec![0xA5u8; len];
                t.with_device_io(|c, io| c.port_write_io(io, port, &bytes));
            }
            7 => {
                let port = u32::from(inp.u8()) % (MAX_PORTS + 1);
                let on = inp.u8() & 1 == 1;
                t.with_device_io(|c, _io| {
                    let _ = c.set_host_connected(port, on);
                    c.port_drained(port);
                    Ok(())
                });
            }
            8 => t.process(),
            _ => {
                let ack = inp.u32();
                let mut b = [0u8; 4];
                t.read(0x60, &mut b);
                wr(&mut t, 0x64, ack & u32::from_le_bytes(b));
            }
        }
    }
});
