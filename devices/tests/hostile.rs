//! A hostile guest: bad descriptors, bad control messages, bad register use. The device must
//! not panic, hang, leak or corrupt another port; fatal ring errors set DEVICE_NEEDS_RESET.

mod common;

use common::*;
use devices::virtio::console::control::Event;
use devices::virtio::console::{rx_queue_index, tx_queue_index, ConsoleConfig, PortConfig};
use devices::virtio::status;

const F_NEXT: u16 = VRING_DESC_F_NEXT;
const F_WRITE: u16 = VRING_DESC_F_WRITE;
const F_INDIRECT: u16 = 4;
/// One past the last guest-physical byte.
const END: u64 = MEM_SIZE as u64;

/// Ports 1 and 2 (generic), open in the guest, probed Linux-style.
fn setup() -> (Guest, HostEnd, HostEnd) {
    let a = HostEnd::default();
    let b = HostEnd::default();
    let mut g = new_guest(
        ConsoleConfig {
            max_nr_ports: 4,
            ..Default::default()
        },
        vec![
            (PortConfig::serial(1, "victim"), a.clone()),
            (PortConfig::serial(2, "attacker"), b.clone()),
        ],
    );
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    g.set_open(2, true);
    (g, a, b)
}

/// Port 1 still moves data both ways, and the device is healthy.
fn assert_port1_works(g: &mut Guest, a: &HostEnd) {
    let before = a.received().len();
    assert!(g.write(1, b"still fine", 1));
    assert_eq!(&a.received()[before..], b"still fine");
    g.host(|c| c.port_write(1, b"pong"));
    assert_eq!(g.read(1), b"pong");
    assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0);
}

/// Post a raw chain on queue `q`, notify, and return the used length of that chain.
fn post_raw(g: &mut Guest, q: u16, descs: &[(u64, u32, u16, usize)]) -> u32 {
    let head = g.vqs.get_mut(&q).unwrap().add_raw(&g.mem, descs);
    g.notify(q);
    let (h, len, _) = g
        .vqs
        .get_mut(&q)
        .unwrap()
        .get_used(&g.mem)
        .expect("bad buffer returned");
    assert_eq!(h, head);
    len
}

#[test]
fn tx_buffer_outside_guest_memory() {
    let (mut g, a, b) = setup();
    let q = tx_queue_index(2);
    assert_eq!(post_raw(&mut g, q, &[(END + 0x1000, 64, 0, 9)]), 0);
    // Straddling the end of memory.
    assert_eq!(post_raw(&mut g, q, &[(END - 10, 100, 0, 9)]), 0);
    // Wrapping the address space.
    assert_eq!(post_raw(&mut g, q, &[(u64::MAX - 4, 64, 0, 9)]), 0);
    // A good segment chained to a bad one: nothing of it reaches the host.
    let good = g.alloc.take(64, 8);
    assert_eq!(
        post_raw(&mut g, q, &[(good.0, 64, F_NEXT, 1), (END, 8, 0, 9)]),
        0
    );
    assert!(b.received().is_empty());
    assert_port1_works(&mut g, &a);
}

/// Use up every receive buffer of `port` and take them back without re-posting.
fn starve_rx(g: &mut Guest, port: u32) {
    let rxq = rx_queue_index(port);
    let n = g.vqs[&rxq].inflight.len();
    let mut left = n * 4096;
    while left > 0 {
        left -= g.host(|c| c.port_write(port, &vec![0u8; left]));
    }
    while g.vqs.get_mut(&rxq).unwrap().get_used(&g.mem).is_some() {}
    assert_eq!(g.t().device().port_pending(port), Some(0));
}

#[test]
fn wrong_direction_descriptors() {
    let (mut g, a, b) = setup();
    let buf = g.alloc.take(4096, 8);
    // Device-writable descriptor on a transmit queue.
    assert_eq!(
        post_raw(&mut g, tx_queue_index(2), &[(buf.0, 16, F_WRITE, 9)]),
        0
    );
    // Mixed: readable then writable on a transmit queue.
    assert_eq!(
        post_raw(
            &mut g,
            tx_queue_index(2),
            &[(buf.0, 16, F_NEXT, 1), (buf.0, 16, F_WRITE, 9)]
        ),
        0
    );
    assert!(b.received().is_empty());
    // Device-readable descriptor on a receive queue while host data waits: returned empty,
    // and the data is delivered whole in the next good buffer.
    starve_rx(&mut g, 2);
    let rxq = rx_queue_index(2);
    g.t().with_device(|c| c.port_write(2, b"precious"));
    assert_eq!(post_raw(&mut g, rxq, &[(buf.0, 4096, 0, 9)]), 0);
    assert_eq!(g.t().device().port_pending(2), Some(8));
    let good = g.alloc.take(4096, 8);
    assert_eq!(post_raw(&mut g, rxq, &[(good.0, 4096, F_WRITE, 9)]), 8);
    let mut got = [0u8; 8];
    vm_memory::Bytes::read_slice(&g.mem, &mut got, good).unwrap();
    assert_eq!(&got, b"precious");
    assert_port1_works(&mut g, &a);
}

#[test]
fn looping_and_broken_chains() {
    let (mut g, a, b) = setup();
    let q = tx_queue_index(2);
    let buf = g.alloc.take(64, 8);
    // d0 -> d1 -> d0 ...
    assert_eq!(
        post_raw(&mut g, q, &[(buf.0, 8, F_NEXT, 1), (buf.0, 8, F_NEXT, 0)]),
        0
    );
    // A link past the end of the table.
    assert_eq!(post_raw(&mut g, q, &[(buf.0, 8, F_NEXT, 5000)]), 0);
    assert!(b.received().is_empty());
    assert_port1_works(&mut g, &a);
}

#[test]
fn chain_too_long_through_indirect_table() {
    let (mut g, a, b) = setup();
    let q = tx_queue_index(2);
    let buf = g.alloc.take(64, 8);
    // An indirect table of 2048 chained descriptors (INDIRECT_DESC was not even offered).
    let n = 2048u64;
    let table = g.alloc.take(16 * n, 16);
    for i in 0..n {
        let d = table.0 + 16 * i;
        let next = if i + 1 < n { (i + 1) as u16 } else { 0 };
        let flags = if i + 1 < n { F_NEXT } else { 0 };
        use vm_memory::Bytes;
        g.mem
            .write_obj(buf.0.to_le(), vm_memory::GuestAddress(d))
            .unwrap();
        g.mem
            .write_obj(1u32.to_le(), vm_memory::GuestAddress(d + 8))
            .unwrap();
        g.mem
            .write_obj(flags.to_le(), vm_memory::GuestAddress(d + 12))
            .unwrap();
        g.mem
            .write_obj(next.to_le(), vm_memory::GuestAddress(d + 14))
            .unwrap();
    }
    assert_eq!(
        post_raw(&mut g, q, &[(table.0, (16 * n) as u32, F_INDIRECT, 9)]),
        0
    );
    // An indirect table outside memory.
    assert_eq!(post_raw(&mut g, q, &[(END + 4096, 256, F_INDIRECT, 9)]), 0);
    assert!(b.received().is_empty());
    assert_port1_works(&mut g, &a);
}

#[test]
fn zero_length_buffers() {
    let (mut g, a, b) = setup();
    let buf = g.alloc.take(64, 8);
    assert_eq!(post_raw(&mut g, tx_queue_index(2), &[(buf.0, 0, 0, 9)]), 0);
    assert!(b.received().is_empty());
    let rxq = rx_queue_index(1);
    starve_rx(&mut g, 1);
    g.t().with_device(|c| c.port_write(1, b"data"));
    assert_eq!(post_raw(&mut g, rxq, &[(buf.0, 0, F_WRITE, 9)]), 0);
    assert_eq!(g.t().device().port_pending(1), Some(4), "bytes kept");
    let good = g.alloc.take(4096, 8);
    assert_eq!(post_raw(&mut g, rxq, &[(good.0, 4096, F_WRITE, 9)]), 4);
    let mut got = [0u8; 4];
    vm_memory::Bytes::read_slice(&g.mem, &mut got, good).unwrap();
    assert_eq!(&got, b"data");
    assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0);
    let _ = a;
}

#[test]
fn bad_control_messages_are_ignored() {
    let (mut g, a, b) = setup();
    g.ctrl_log.clear();
    // Short messages.
    g.send_control_raw(&[1, 0, 0, 0]);
    g.send_control_raw(&[]);
    // Unknown ports.
    g.send_control(99, Event::PortOpen, 1);
    g.send_control(3, Event::PortReady, 1);
    g.send_control(u32::MAX, Event::PortOpen, 0);
    // Unknown events and device-only events.
    for ev in [8u16, 42, 0xffff] {
        let mut m = 1u32.to_le_bytes().to_vec();
        m.extend_from_slice(&ev.to_le_bytes());
        m.extend_from_slice(&1u16.to_le_bytes());
        g.send_control_raw(&m);
    }
    for ev in [
        Event::DeviceAdd,
        Event::DeviceRemove,
        Event::ConsolePort,
        Event::Resize,
        Event::PortName,
    ] {
        g.send_control(1, ev, 1);
    }
    // Failure reports.
    g.send_control(u32::MAX, Event::DeviceReady, 0);
    g.send_control(2, Event::PortReady, 0);
    g.pump();
    assert!(
        g.ctrl_log.is_empty(),
        "device answered garbage: {:?}",
        g.ctrl_log
    );
    assert_eq!(a.open_events(), vec![true]);
    assert_eq!(b.open_events(), vec![true]);
    // A long message: only its header counts.
    let mut m = 1u32.to_le_bytes().to_vec();
    m.extend_from_slice(&(Event::PortOpen as u16).to_le_bytes());
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&[0xaa; 5000]);
    g.send_control_raw(&m);
    assert_eq!(a.open_events(), vec![true, false]);
    g.set_open(1, true);
    assert_port1_works(&mut g, &a);
}

#[test]
fn guest_that_never_posts_control_buffers_cannot_grow_the_device() {
    let a = HostEnd::default();
    let mut g = new_guest(
        ConsoleConfig {
            max_nr_ports: 4,
            ..Default::default()
        },
        vec![
            (PortConfig::serial(1, "a"), a.clone()),
            (PortConfig::serial(2, "b"), HostEnd::default()),
        ],
    );
    g.probe(ProbeOpts {
        control_rx: false,
        ..Default::default()
    });
    // Each DEVICE_READY asks for two DEVICE_ADDs; the device keeps at most 1024 messages.
    for _ in 0..3000 {
        g.send_control(u32::MAX, Event::DeviceReady, 1);
    }
    // Now behave: post buffers until the device has nothing more to say.
    for _ in 0..100 {
        g.fill_control(8);
        g.pump();
    }
    let adds = g
        .ctrl_log
        .iter()
        .filter(|c| matches!(c, Ctrl::Add(_)))
        .count();
    assert_eq!(adds, 1024, "bounded queue of control messages");
    // The ports came up anyway.
    assert_eq!(g.ports[&1].name.as_deref(), Some("a"));
    g.set_open(1, true);
    assert_port1_works(&mut g, &a);
}

#[test]
fn guest_that_never_posts_receive_buffers() {
    let a = HostEnd::default();
    let mut g = new_guest(
        ConsoleConfig {
            max_nr_ports: 2,
            ..Default::default()
        },
        vec![(PortConfig::serial(1, "a"), a.clone())],
    );
    g.probe(ProbeOpts {
        rx_count: 0,
        ..Default::default()
    });
    g.set_open(1, true);
    let chunk = vec![5u8; 10_000];
    let mut total = 0;
    for _ in 0..100 {
        total += g.host(|c| c.port_write(1, &chunk));
    }
    assert_eq!(
        total,
        64 * 1024,
        "bounded host buffer, writes come back short"
    );
    assert_eq!(g.t().device().port_pending(1), Some(64 * 1024));
}

#[test]
fn impossible_avail_index_needs_reset() {
    let (mut g, a, _) = setup();
    let q = tx_queue_index(2);
    let size = g.vqs[&q].size;
    let idx = g.vqs[&q].avail_idx.wrapping_add(size + 1);
    g.vqs.get_mut(&q).unwrap().set_avail_idx(&g.mem, idx);
    g.take_irqs();
    g.notify(q);
    assert_ne!(g.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(g.rd(0x60) & 2, 2, "config-change interrupt");
    assert!(g.take_irqs() >= 1);
    // Until reset the device does nothing, whatever the guest does.
    assert!(g.write(1, b"ignored", 1));
    assert!(a.received().is_empty());
    // Driver writes cannot clear NEEDS_RESET.
    let st = g.status();
    g.wr(0x70, st & !status::DEVICE_NEEDS_RESET);
    assert_ne!(g.status() & status::DEVICE_NEEDS_RESET, 0);
    // Reset and re-probe bring it back.
    g.ctrl_log.clear();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    assert_port1_works(&mut g, &a);
}

#[test]
fn head_index_out_of_range_needs_reset() {
    let (mut g, a, _) = setup();
    let q = tx_queue_index(2);
    let size = g.vqs[&q].size;
    g.vqs.get_mut(&q).unwrap().publish(&g.mem, size + 5);
    g.notify(q);
    assert_ne!(g.status() & status::DEVICE_NEEDS_RESET, 0);
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    assert_port1_works(&mut g, &a);
}

#[test]
fn ring_outside_memory_at_queue_ready_needs_reset() {
    let (mut g, _, _) = two_port_guest();
    g.wr(0x70, 0);
    g.wr(0x70, status::ACKNOWLEDGE | status::DRIVER);
    g.wr(0x24, 1);
    g.wr(0x20, 1);
    g.wr(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    g.wr(0x30, 0);
    // Misaligned descriptor table: refused, address unchanged (so still 0).
    g.wr(0x80, 0x1001);
    // Non-power-of-two size: refused.
    g.wr(0x38, 100);
    g.wr(0x80, 0);
    g.wr(0x84, 0x10); // 64 GiB: outside memory
    g.wr(0x44, 1);
    assert_eq!(g.rd(0x44), 0);
    assert_ne!(g.status() & status::DEVICE_NEEDS_RESET, 0);
}

fn two_port_guest() -> (Guest, HostEnd, HostEnd) {
    let a = HostEnd::default();
    let b = HostEnd::default();
    let g = new_guest(
        ConsoleConfig::default(),
        vec![
            (PortConfig::serial(1, "a"), a.clone()),
            (PortConfig::serial(2, "b"), b.clone()),
        ],
    );
    (g, a, b)
}

#[test]
fn register_misuse_is_harmless() {
    let (mut g, a, _) = setup();
    // Notify for queues that do not exist; queue setup after DRIVER_OK; feature writes late.
    g.wr(0x50, 5000);
    g.wr(0x50, 0xffff_ffff);
    g.wr(0x30, 3);
    let desc = g.vqs[&3].desc;
    g.wr(0x80, 0x4000);
    g.wr(0x44, 0);
    g.wr(0x44, 1);
    g.wr(0x20, 0xffff_ffff);
    // Odd sizes and offsets.
    g.t().write(0x51, &[1, 2, 3, 4]);
    g.t().write(0x50, &[1, 2]);
    g.t().write(0x50, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut b = [0u8; 3];
    g.t().read(0x1, &mut b);
    g.t().read(0xfff_ffff, &mut b);
    g.t().write(0xffff_ffff_ffff_fff0, &[1; 4]);
    for off in (0..0x100).step_by(4) {
        let _ = g.rd(off);
    }
    // The address write after DRIVER_OK did not take: QueueReady 1 is refused too, so the
    // control transmit queue stays disabled as the driver asked with QueueReady 0.
    assert_eq!(g.rd(0x44), 0);
    let _ = desc;
    // Port 1 is unaffected.
    assert_port1_works(&mut g, &a);
}

/// xorshift64*
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn garbage_on_one_port_does_not_touch_another() {
    let (mut g, a, _) = setup();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut expect_host = Vec::new();
    let mut expect_guest = Vec::new();
    let mut got_guest = Vec::new();
    // Port 1's buffers must never be touched by the device on behalf of port 2: keep the
    // garbage inside a scratch area and port 2's own rings.
    let scratch = g.alloc.take(2 << 20, 4096);
    for round in 0..2000u32 {
        for q in [rx_queue_index(2), tx_queue_index(2)] {
            let size = g.vqs[&q].size;
            // Never more outstanding buffers than the ring holds (that would be fatal).
            let outstanding = g.vqs[&q].avail_idx.wrapping_sub(g.vqs[&q].used_idx(&g.mem));
            if outstanding >= size {
                continue;
            }
            // Random descriptor contents, valid head.
            let head = (rng.next() % u64::from(size)) as u16;
            for _ in 0..3 {
                let i = (rng.next() % u64::from(size)) as u16;
                let r = rng.next();
                let addr = match r % 4 {
                    0 => scratch.0 + (rng.next() % (1 << 20)),
                    1 => END - (rng.next() % 64),
                    2 => rng.next(),
                    _ => scratch.0,
                };
                let len = (rng.next() % 9000) as u32;
                let flags = (rng.next() % 8) as u16;
                let next = (rng.next() % u64::from(size + 4)) as u16;
                g.vqs[&q].write_desc(&g.mem, i, addr, len, flags, next);
            }
            g.vqs.get_mut(&q).unwrap().publish(&g.mem, head);
            g.notify(q);
        }
        if round % 10 == 0 {
            g.t().with_device(|c| c.port_write(2, b"noise"));
            let msg = round.to_le_bytes();
            assert!(g.write(1, &msg, 1 + (round as usize % 3)));
            expect_host.extend_from_slice(&msg);
            g.host(|c| c.port_write(1, &msg));
            expect_guest.extend_from_slice(&msg);
            got_guest.extend(g.read(1));
        }
        // Never a fatal error: heads are valid and the avail index moves by one.
        assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0, "round {round}");
    }
    assert_eq!(a.received(), expect_host);
    assert_eq!(got_guest, expect_guest);
    assert_port1_works(&mut g, &a);
}

/// Counts bytes, keeps none.
#[test]
fn huge_tx_chain_is_copied_in_bounded_steps() {
    huge_chain(true);
}

#[test]
fn huge_tx_chain_without_work_trigger_completes_in_the_call() {
    huge_chain(false);
}

fn huge_chain(with_trigger: bool) {
    use devices::legacy::EventFdTrigger;
    use std::sync::atomic::Ordering::SeqCst;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut g = guest_with_counting_port("sink", &count);
    let work = EventFd::new(EFD_NONBLOCK).unwrap();
    if with_trigger {
        g.t()
            .set_work_trigger(EventFdTrigger::new(work.try_clone().unwrap()));
    }
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    // 256 descriptors of 1 MiB, all the same guest MiB: a 256 MiB buffer.
    let mib = g.alloc.take(1 << 20, 4096);
    let descs: Vec<(u64, u32, u16, usize)> = (0..256)
        .map(|i| (mib.0, 1 << 20, if i < 255 { F_NEXT } else { 0 }, i + 1))
        .collect();
    let q = tx_queue_index(1);
    g.vqs.get_mut(&q).unwrap().add_raw(&g.mem, &descs);
    g.notify(q);
    if !with_trigger {
        assert_eq!(count.load(SeqCst), 256 << 20);
        assert!(!g.t().has_pending_work());
        return;
    }
    // One notification copies at most 16 MiB, then asks to be called again.
    assert_eq!(count.load(SeqCst), 16 << 20);
    assert!(g.t().has_pending_work());
    // The VMM's event loop: the work eventfd fired, call process().
    let mut rounds = 1;
    while work.read().is_ok() {
        g.t().process();
        rounds += 1;
    }
    assert_eq!(rounds, 16);
    assert_eq!(count.load(SeqCst), 256 << 20);
    assert!(!g.t().has_pending_work());
    assert!(g.vqs.get_mut(&q).unwrap().get_used(&g.mem).is_some());
}
