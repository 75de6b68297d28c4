//! The guest and the device on different threads, as with a vCPU and the VMM's event loop:
//! guest kicks go through ioeventfds, interrupts through the irq eventfd, and the guest only
//! looks at its rings after an interrupt. A lost notification in either direction stalls the
//! transfer and fails the test at its deadline.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::console::{ConsoleConfig, PortConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// The device's side when it runs in its own thread, as the VMM's event loop: it serves the
/// guest's queue notifications (ioeventfds) and writes its bytes to port 1 in host writes of
/// a fixed size as the guest takes them.
struct DeviceThread {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl DeviceThread {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// A guest with port 1 (serial, 16-entry data queues, 8 receive buffers) probed and open;
/// from then on the device runs in its own thread, writing `to_guest` in `chunk`-byte host
/// writes.
fn start(event_idx: bool, to_guest: Vec<u8>, chunk: usize) -> (Guest, HostEnd, DeviceThread) {
    let host = HostEnd::default();
    let mut g = new_guest(
        ConsoleConfig {
            max_nr_ports: 2,
            data_queue_size: 16,
            ..Default::default()
        },
        vec![(PortConfig::serial(1, "a"), host.clone())],
    );
    g.probe(ProbeOpts {
        event_idx,
        rx_count: 8,
        ..Default::default()
    });
    g.set_open(1, true);

    // From here on the device runs in its own thread.
    let fds: Arc<Vec<EventFd>> = Arc::new(
        (0..g.vqs.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
    );
    g.ioevents = Some(fds.clone());
    let dev = g.dev.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut busy = false;
                for (i, fd) in fds.iter().enumerate() {
                    if fd.read().is_ok() {
                        dev.lock().unwrap().queue_notify(i as u16);
                        busy = true;
                    }
                }
                if sent < to_guest.len() {
                    let end = (sent + chunk).min(to_guest.len());
                    let n = dev
                        .lock()
                        .unwrap()
                        .with_device_io(|c, io| c.port_write_io(io, 1, &to_guest[sent..end]))
                        .unwrap();
                    sent += n;
                    busy |= n > 0;
                }
                if !busy {
                    thread::yield_now();
                }
            }
        })
    };
    (g, host, DeviceThread { stop, thread })
}

fn run(event_idx: bool) {
    let to_guest = pattern(3 << 20, 1);
    let to_host = pattern(2 << 20, 2);
    let (mut g, host, device) = start(event_idx, to_guest.clone(), 3000);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut off = 0;
    let mut got = Vec::new();
    let mut k = 0usize;
    while off < to_host.len() || got.len() < to_guest.len() || host.received().len() < to_host.len()
    {
        assert!(
            Instant::now() < deadline,
            "stalled (event_idx {event_idx}): guest sent {off}, host got {}, guest got {}",
            host.received().len(),
            got.len()
        );
        let mut progress = false;
        if off < to_host.len() {
            k += 1;
            let n = (1 + k * 977 % 9000).min(to_host.len() - off);
            if g.write(1, &to_host[off..off + n], 1 + k % 3) {
                off += n;
                progress = true;
            }
        }
        let r = g.read(1);
        progress |= !r.is_empty();
        got.extend(r);
        if !progress {
            // Sleep until the device interrupts (or the transfer is complete).
            while g.irq.read().is_err() {
                if Instant::now() > deadline
                    || (off == to_host.len()
                        && got.len() == to_guest.len()
                        && host.received().len() == to_host.len())
                {
                    break;
                }
                thread::sleep(Duration::from_micros(50));
            }
        }
    }
    device.stop();
    assert!(host.received() == to_host, "guest->host bytes differ");
    assert!(got == to_guest, "host->guest bytes differ");
}

#[test]
fn concurrent_transfer_with_event_idx() {
    run(true);
}

#[test]
fn concurrent_transfer_without_event_idx() {
    run(false);
}

/// Host→guest only, 4 KiB host writes, and a guest that looks at its receive ring only
/// after an interrupt: `vm_interrupt` (read `InterruptStatus`, acknowledge), then the
/// reader drains the ring. Every other round the reader also drains before the handler ran
/// (a reader on another vCPU re-arming `used_event` while the interrupt is still
/// unacknowledged). If a used buffer were published without an interrupt the guest would see
/// later, the transfer would stall and fail at the deadline.
fn interrupt_driven_receive(event_idx: bool) {
    let to_guest = pattern(4 << 20, 3);
    let (mut g, _host, device) = start(event_idx, to_guest.clone(), 4096);
    let q = devices::virtio::console::rx_queue_index(1);
    let drain = |g: &mut Guest, got: &mut Vec<u8>| {
        let vq = g.vqs.get_mut(&q).unwrap();
        while let Some((_, len, segs)) = vq.get_used(&g.mem) {
            let mut b = vec![0u8; len as usize];
            vm_memory::Bytes::read_slice(&g.mem, &mut b, segs[0].0).unwrap();
            got.extend_from_slice(&b);
            vq.add(&g.mem, &segs).unwrap();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut round = 0usize;
    while got.len() < to_guest.len() {
        // Sleep until the line is raised; nothing else makes this guest look at its ring.
        while g.irq.read().is_err() {
            assert!(
                Instant::now() < deadline,
                "stalled (event_idx {event_idx}): guest got {} of {} bytes",
                got.len(),
                to_guest.len()
            );
            thread::sleep(Duration::from_micros(20));
        }
        round += 1;
        if round.is_multiple_of(2) {
            drain(&mut g, &mut got);
        }
        let isr = g.rd(0x60);
        g.wr(0x64, isr);
        drain(&mut g, &mut got);
        g.kick(q);
    }
    device.stop();
    assert!(got == to_guest, "host->guest bytes differ");
}

#[test]
fn interrupt_driven_receive_with_event_idx() {
    interrupt_driven_receive(true);
}

#[test]
fn interrupt_driven_receive_without_event_idx() {
    interrupt_driven_receive(false);
}
