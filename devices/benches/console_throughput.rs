//! Throughput of one virtio-serial port through the virtio-mmio transport, guest→host and
//! host→guest, with 4 KiB and 64 KiB buffers, next to plain `memcpy` over the same buffer
//! sizes and working set, measured in the same run.
//!
//! For host→guest, where the device must raise the interrupt line for the buffers the driver
//! asked to hear about, the run also measures what one raise costs (an `eventfd` write, as an
//! irqfd is) and prints the *ceiling*: the rate of a device that did nothing but the `memcpy`
//! and the raises it made, measured as that memcpy loop with the same raises interleaved.
//!
//! Run: `cargo bench -p devices --bench console_throughput` (optional argument: seconds per
//! case, default 1).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::console::{rx_queue_index, tx_queue_index};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Working set: this many buffers of the case's size.
const BUFFERS: usize = 128;
/// The device's guest→host staging area.
const TX_CHUNK_BYTES: usize = 64 * 1024;

/// Throughput end to end (device + this single-threaded test driver) and counting only the
/// time spent in device calls (what the VMM's device thread would spend).
struct Rate {
    total: f64,
    device: f64,
    /// Times the device raised the interrupt line per MiB moved (host→guest only).
    irqs_per_mib: Option<f64>,
}

fn guest(
    event_idx: bool,
    rx_buf: u32,
    rx_count: usize,
    counter: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Guest {
    let mut g = guest_with_counting_port("bench", counter);
    g.probe(ProbeOpts {
        event_idx,
        rx_buf,
        rx_count,
        ..Default::default()
    });
    g.set_open(1, true);
    g
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Guest writes `size`-byte buffers; the host end takes them.
fn guest_to_host(size: u32, secs: f64) -> Rate {
    let counter = Default::default();
    let mut g = guest(true, 4096, 256, &counter);
    let mut in_device = Duration::ZERO;
    let q = tx_queue_index(1);
    let bufs: Vec<GuestAddress> = (0..BUFFERS)
        .map(|i| {
            let a = g.alloc.take(u64::from(size), 4096);
            g.mem.write_slice(&vec![i as u8; size as usize], a).unwrap();
            a
        })
        .collect();
    let mut next = 0;
    let start = Instant::now();
    let mut iters = 0u64;
    loop {
        // Fill the ring, notify, take back what was used.
        while g.vqs[&q].free_count() > 0 {
            let a = bufs[next % BUFFERS];
            next += 1;
            g.vqs
                .get_mut(&q)
                .unwrap()
                .add(&g.mem, &[(a, size, false)])
                .unwrap();
        }
        let t = Instant::now();
        g.kick(q);
        in_device += t.elapsed();
        while g.vqs.get_mut(&q).unwrap().get_used(&g.mem).is_some() {}
        iters += 1;
        if iters.is_multiple_of(16) && start.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    let bytes = counter.load(std::sync::atomic::Ordering::Relaxed);
    Rate {
        total: gbps(bytes, start.elapsed()),
        device: gbps(bytes, in_device),
        irqs_per_mib: None,
    }
}

/// Linux `vm_interrupt` when the line was raised: read `InterruptStatus`, acknowledge it
/// (before looking at the rings, as Linux does). Returns how many times the device raised the
/// line since the last call (the eventfd counter: raises the guest had no time to take
/// separately merge into one interrupt, as with an irqfd).
fn take_interrupt(g: &mut Guest) -> u64 {
    let Ok(raised) = g.irq.read() else {
        return 0;
    };
    let isr = g.rd(0x60);
    g.wr(0x64, isr);
    raised
}

/// Host writes `size`-byte chunks; the guest posts `rx_buf`-byte receive buffers.
fn host_to_guest(size: u32, rx_buf: u32, rx_count: usize, secs: f64) -> Rate {
    let counter = Default::default();
    let mut g = guest(true, rx_buf, rx_count, &counter);
    let mut in_device = Duration::ZERO;
    let q = rx_queue_index(1);
    let src: Vec<Vec<u8>> = (0..BUFFERS).map(|i| vec![i as u8; size as usize]).collect();
    let mut next = 0;
    let mut bytes = 0u64;
    let mut irqs = 0u64;
    let start = Instant::now();
    let mut iters = 0u64;
    loop {
        let chunk = &src[next % BUFFERS];
        next += 1;
        let mut off = 0;
        while off < chunk.len() {
            let t = Instant::now();
            let n = g
                .t()
                .with_device_io(|c, io| c.port_write_io(io, 1, &chunk[off..]))
                .unwrap();
            in_device += t.elapsed();
            off += n;
            bytes += n as u64;
            // The guest runs at once: its interrupt handler (if the line was raised), then its
            // reader takes the used receive buffers and posts them again.
            irqs += take_interrupt(&mut g);
            let vq = g.vqs.get_mut(&q).unwrap();
            while let Some((_, _, segs)) = vq.get_used(&g.mem) {
                vq.add(&g.mem, &segs).unwrap();
            }
            let t = Instant::now();
            g.kick(q);
            in_device += t.elapsed();
        }
        iters += 1;
        if iters.is_multiple_of(16) && start.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    Rate {
        total: gbps(bytes, start.elapsed()),
        device: gbps(bytes, in_device),
        irqs_per_mib: Some(irqs as f64 * 1048576.0 / bytes as f64),
    }
}

/// Host→guest with the guest on its own thread, as a vCPU beside the VMM's event loop: the
/// device thread writes `size`-byte chunks with `port_write_io` as fast as the guest takes
/// them and serves the guest's kicks (ioeventfds); the guest sleeps on the irq eventfd until
/// it is raised, runs `vm_interrupt` (status read, acknowledge), then its reader takes every
/// used buffer, copies it out (`copy_to_user`) and posts it again (re-arming `used_event`
/// each time, as `virtqueue_get_buf` does), and kicks if the device asks.
fn host_to_guest_threaded(
    size: u32,
    rx_buf: u32,
    rx_count: usize,
    event_idx: bool,
    secs: f64,
) -> Rate {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let counter = Default::default();
    let mut g = guest(event_idx, rx_buf, rx_count, &counter);
    let q = rx_queue_index(1);
    let fds: Arc<Vec<EventFd>> = Arc::new(
        (0..g.vqs.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
    );
    g.ioevents = Some(fds.clone());
    g.take_irqs();
    let stop = Arc::new(AtomicBool::new(false));
    let device = {
        let (dev, stop) = (g.dev.clone(), stop.clone());
        std::thread::spawn(move || {
            let src: Vec<Vec<u8>> = (0..BUFFERS).map(|i| vec![i as u8; size as usize]).collect();
            let (mut next, mut off, mut bytes) = (0, 0, 0u64);
            let mut in_device = Duration::ZERO;
            // The event loop sleeps on the receive queue's ioeventfd while the port's host
            // buffer is full (the chardev stops reading its source), as the VMM does.
            let epoll = Epoll::new().unwrap();
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::fd::AsRawFd::as_raw_fd(&fds[usize::from(q)]),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .unwrap();
            let mut events = [EpollEvent::default()];
            while !stop.load(Ordering::Relaxed) {
                // Only the receive queue is kicked in this case. Device time counts the
                // device calls, not the event loop's own syscalls.
                if fds[usize::from(q)].read().is_ok() {
                    let t = Instant::now();
                    dev.lock().unwrap().queue_notify(q);
                    in_device += t.elapsed();
                }
                let t = Instant::now();
                let chunk = &src[next % BUFFERS];
                let n = dev
                    .lock()
                    .unwrap()
                    .with_device_io(|c, io| c.port_write_io(io, 1, &chunk[off..]))
                    .unwrap();
                in_device += t.elapsed();
                bytes += n as u64;
                off += n;
                if off == chunk.len() {
                    off = 0;
                    next += 1;
                }
                if n == 0 {
                    epoll.wait(100, &mut events).unwrap();
                }
            }
            (bytes, in_device)
        })
    };
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&g.irq),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let mut events = [EpollEvent::default()];
    let mut user = vec![0u8; rx_buf as usize];
    let mut irqs = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        irqs += take_interrupt(&mut g);
        let mut took = false;
        let vq = g.vqs.get_mut(&q).unwrap();
        while let Some((_, len, segs)) = vq.get_used(&g.mem) {
            let n = (len as usize).min(user.len());
            g.mem.read_slice(&mut user[..n], segs[0].0).unwrap();
            black_box(&mut user);
            vq.add(&g.mem, &segs).unwrap();
            took = true;
        }
        if took {
            g.kick(q);
        } else {
            epoll.wait(100, &mut events).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let wall = start.elapsed();
    let (bytes, in_device) = device.join().unwrap();
    Rate {
        total: gbps(bytes, wall),
        device: gbps(bytes, in_device),
        irqs_per_mib: Some(irqs as f64 * 1048576.0 / bytes as f64),
    }
}

/// Plain memcpy of `size`-byte pieces from BUFFERS source buffers into a destination area of
/// `dst_bytes`, cyclically: the same working set the device path touches.
fn memcpy(size: usize, dst_bytes: usize, secs: f64) -> f64 {
    copy_loop(size, dst_bytes, 0.0, secs)
}

/// The copy of the guest-thread cases without the device: `size`-byte chunks copied into
/// `rx_count` slots of `rx_buf` bytes (guest memory) that a second thread reads out
/// (`copy_to_user`) and hands back, as the guest thread does with its receive buffers. Each
/// slot's cache lines were last read on the other core, so every copy first takes them back:
/// the physical limit of moving bytes to a reader on another core. Counts only the time in
/// the copies (as *device* counts only device calls); the hand-off is an `mpsc` channel.
fn memcpy_cross_core(size: usize, rx_buf: usize, rx_count: usize, secs: f64) -> f64 {
    use std::sync::mpsc;
    let mem = std::sync::Arc::new(
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), rx_buf * rx_count)])
            .unwrap(),
    );
    let (filled_tx, filled_rx) = mpsc::channel::<(usize, usize)>();
    let (free_tx, free_rx) = mpsc::channel::<usize>();
    let reader = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            let mut user = vec![0u8; rx_buf];
            while let Ok((slot, len)) = filled_rx.recv() {
                mem.read_slice(&mut user[..len], GuestAddress((slot * rx_buf) as u64))
                    .unwrap();
                black_box(&mut user);
                if free_tx.send(slot).is_err() {
                    break;
                }
            }
        })
    };
    let src: Vec<Vec<u8>> = (0..BUFFERS).map(|i| vec![i as u8; size]).collect();
    let mut free: Vec<usize> = (0..rx_count).collect();
    let pieces = size.div_ceil(rx_buf);
    let (mut bytes, mut next, mut copying) = (0u64, 0, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // Slots for the whole chunk first (waiting is not copy time).
        while free.len() < pieces {
            free.push(free_rx.recv().unwrap());
        }
        free.extend(free_rx.try_iter());
        let chunk = &src[next % BUFFERS];
        next += 1;
        let t = Instant::now();
        let used: Vec<(usize, usize)> = chunk
            .chunks(rx_buf)
            .map(|piece| {
                let slot = free.pop().unwrap();
                mem.get_slice(GuestAddress((slot * rx_buf) as u64), piece.len())
                    .unwrap()
                    .copy_from(piece);
                (slot, piece.len())
            })
            .collect();
        copying += t.elapsed();
        bytes += size as u64;
        for u in used {
            filled_tx.send(u).unwrap();
        }
    }
    drop(filled_tx);
    reader.join().unwrap();
    gbps(bytes, copying)
}

/// Seconds one interrupt raise costs: an `eventfd` write, which is what `MmioInterrupt` does
/// (and what an irqfd is). The counter is drained now and then, as the guest would.
fn raise_cost(secs: f64) -> f64 {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..1024 {
            fd.write(1).unwrap();
        }
        n += 1024;
        fd.read().unwrap();
        if start.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// The ceiling for a host→guest case: the rate of a device that did nothing but the copies and
/// the interrupt raises it made. Measured, not summed: the `memcpy` loop over the same working
/// set with `raises_per_mib` `eventfd` writes interleaved at the rate the device made them (a
/// system call between copies costs more than one in a tight loop).
fn ceiling(size: usize, dst_bytes: usize, raises_per_mib: f64, secs: f64) -> f64 {
    copy_loop(size, dst_bytes, raises_per_mib, secs)
}

/// The loop behind [`memcpy`] and [`ceiling`]: copies, with `raises_per_mib` eventfd writes
/// interleaved (none for plain memcpy).
fn copy_loop(size: usize, dst_bytes: usize, raises_per_mib: f64, secs: f64) -> f64 {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let per_copy = size as f64 * raises_per_mib / 1048576.0;
    let src: Vec<Vec<u8>> = (0..BUFFERS).map(|i| vec![i as u8; size]).collect();
    let dst_bytes = dst_bytes.max(size) / size * size;
    let mut dst = vec![0u8; dst_bytes];
    let (mut bytes, mut i, mut off, mut debt, mut raised) = (0u64, 0, 0, 0.0, 0u64);
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            dst[off..off + size].copy_from_slice(black_box(&src[i % BUFFERS]));
            black_box(&mut dst);
            i += 1;
            off = (off + size) % dst_bytes;
            bytes += size as u64;
            debt += per_copy;
            while debt >= 1.0 {
                fd.write(1).unwrap();
                debt -= 1.0;
                raised += 1;
                // The guest takes the interrupt now and then (the counter must not fill).
                if raised.is_multiple_of(1024) {
                    fd.read().unwrap();
                }
            }
        }
        if start.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    gbps(bytes, start.elapsed())
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    // Cargo passes `--bench`; anything else that is not a number filters the cases.
    let filter: Option<String> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    println!("virtio-serial throughput, one port, {secs} s per case, GB/s = 1e9 bytes/s");
    println!(
        "end-to-end: device + single-threaded test driver; device: time in device calls only;"
    );
    println!("memcpy: plain copy over the same buffer size and working set, same run");
    let raise = raise_cost(secs.min(0.5));
    println!(
        "ceiling (host->guest): that memcpy loop with one interrupt raise (an eventfd write, {:.3} us",
        raise * 1e6
    );
    println!("  alone) per raise the device made, interleaved, same run; in brackets: % of memcpy");
    println!(
        "{:<66} {:>10} {:>8} {:>8} {:>14} {:>9} {:>15} {:>15}",
        "case",
        "end-to-end",
        "device",
        "memcpy",
        "device/memcpy",
        "irqs/MiB",
        "ceiling",
        "device/ceiling"
    );
    type Case = (String, usize, Box<dyn Fn() -> Rate>);
    for size in [4096u32, 65536] {
        let kib = size / 1024;
        let cases: Vec<Case> = vec![
            (
                format!("guest->host, {kib} KiB tx buffers"),
                TX_CHUNK_BYTES,
                Box::new(move || guest_to_host(size, secs)),
            ),
            (
                format!("host->guest, {kib} KiB writes, 256 x 4 KiB rx"),
                256 * 4096,
                Box::new(move || host_to_guest(size, 4096, 256, secs)),
            ),
            (
                format!("host->guest, {kib} KiB writes, 64 x {kib} KiB rx"),
                64 * size as usize,
                Box::new(move || host_to_guest(size, size, 64, secs)),
            ),
            (
                format!("host->guest, {kib} KiB writes, 256 x 4 KiB rx, guest thread"),
                256 * 4096,
                Box::new(move || host_to_guest_threaded(size, 4096, 256, true, secs)),
            ),
            (
                format!(
                    "host->guest, {kib} KiB writes, 256 x 4 KiB rx, guest thread, no event-idx"
                ),
                256 * 4096,
                Box::new(move || host_to_guest_threaded(size, 4096, 256, false, secs)),
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (name, dst_bytes, run) in cases {
            if !seen.insert(name.clone())
                || filter.as_ref().is_some_and(|f| !name.contains(f.as_str()))
            {
                continue;
            }
            let r = run();
            let m = memcpy(size as usize, dst_bytes, secs);
            let irqs = r
                .irqs_per_mib
                .map_or(String::from("-"), |v| format!("{v:.1}"));
            let dash = || String::from("-");
            let (ceil, of_ceil) = r.irqs_per_mib.map_or((dash(), dash()), |v| {
                let c = ceiling(size as usize, dst_bytes, v, secs);
                (
                    format!("{c:.2} ({:.0}%)", 100.0 * c / m),
                    format!("{:.0}%", 100.0 * r.device / c),
                )
            });
            println!(
                "{name:<66} {:>10.2} {:>8.2} {m:>8.2} {:>13.0}% {irqs:>9} {ceil:>15} {of_ceil:>15}",
                r.total,
                r.device,
                100.0 * r.device / m
            );
            if name.contains("guest thread") {
                let x = memcpy_cross_core(size as usize, 4096, 256, secs);
                println!(
                    "  the same copies into buffers a reader on the other core takes: {x:.2} GB/s \
                     ({:.0}% of memcpy); device / that: {:.0}%",
                    100.0 * x / m,
                    100.0 * r.device / x
                );
            }
        }
    }
}
