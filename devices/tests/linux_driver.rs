//! The virtio-serial device driven the way the Linux `virtio_console` driver drives it, over
//! the virtio-mmio registers, on real guest memory.

mod common;

use common::*;
use devices::virtio::console::control::Event;
use devices::virtio::console::{
    rx_queue_index, tx_queue_index, ConsoleConfig, PortConfig, CONTROL_TX_QUEUE,
    VIRTIO_CONSOLE_F_MULTIPORT,
};
use devices::virtio::status;
use devices::virtio::VIRTIO_RING_F_EVENT_IDX;

const AGENT: &str = "org.qemu.guest_agent.0";

fn cfg() -> ConsoleConfig {
    ConsoleConfig {
        max_nr_ports: 4,
        ..Default::default()
    }
}

/// A console at port 0 and the agent port at 1, both host-connected.
fn two_ports() -> (Guest, HostEnd, HostEnd) {
    let con = HostEnd::default();
    let agent = HostEnd::default();
    let g = new_guest(
        cfg(),
        vec![
            (PortConfig::console(0), con.clone()),
            (PortConfig::serial(1, AGENT), agent.clone()),
        ],
    );
    (g, con, agent)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn probe_handshake_matches_linux_and_qemu_order() {
    let (mut g, con, agent) = two_ports();
    g.probe(ProbeOpts::default());
    assert_eq!(g.status(), 0xf, "ACK|DRIVER|FEATURES_OK|DRIVER_OK");
    assert_eq!(g.max_nr_ports, 4);
    // Every one of the 2*(max_nr_ports+1) queues existed (probe asserts QueueSizeMax != 0).
    assert_eq!(g.vqs.len(), 10);
    assert_eq!(
        g.ctrl_log,
        vec![
            Ctrl::Add(0),
            Ctrl::Add(1),
            Ctrl::Console(0),
            Ctrl::Open(0, true),
            Ctrl::Name(1, AGENT.into()),
            Ctrl::Open(1, true),
        ]
    );
    let p1 = &g.ports[&1];
    assert_eq!(p1.name.as_deref(), Some(AGENT));
    assert!(p1.host_connected && !p1.console && !p1.guest_open);
    assert!(g.ports[&0].console);
    // The driver answered CONSOLE_PORT with PORT_OPEN 1: the host saw the console open.
    assert_eq!(con.open_events(), vec![true]);
    assert!(agent.open_events().is_empty());
    assert!(g.t().device().is_driver_ready());
}

#[test]
fn negotiated_features_are_linux_set() {
    let (mut g, _, _) = two_ports();
    g.probe(ProbeOpts::default());
    let f = g.t().driver_features();
    assert_eq!(
        f,
        1 << 32 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_CONSOLE_F_MULTIPORT,
        "SIZE is not offered without a size; EMERG_WRITE is never acked by Linux"
    );
}

fn transfer_both_ways(opts: ProbeOpts, tx_segs: usize) {
    let (mut g, _, agent) = two_ports();
    g.probe(opts);
    g.set_open(1, true);
    assert_eq!(agent.open_events(), vec![true]);
    // guest → host
    let data = pattern(10_000, 1);
    assert!(g.write(1, &data, tx_segs));
    assert_eq!(agent.received(), data);
    assert_eq!(g.reclaim_tx(1), 1, "tx buffer returned with used len 0");
    // host → guest, larger than one receive buffer
    let back = pattern(20_000, 7);
    assert_eq!(g.host(|c| c.port_write(1, &back)), back.len());
    assert_eq!(g.read(1), back);
    // a zero-length write is consumed too
    assert!(g.write(1, &[], 1));
    assert_eq!(g.reclaim_tx(1), 1);
    assert_eq!(agent.received(), data);
}

#[test]
fn data_both_ways_single_descriptors_event_idx() {
    transfer_both_ways(ProbeOpts::default(), 1);
}

#[test]
fn data_both_ways_single_descriptors_no_event_idx() {
    transfer_both_ways(
        ProbeOpts {
            event_idx: false,
            ..Default::default()
        },
        1,
    );
}

#[test]
fn data_both_ways_chained_descriptors() {
    for event_idx in [true, false] {
        transfer_both_ways(
            ProbeOpts {
                event_idx,
                rx_segs: 3,
                rx_buf: 5000,
                ..Default::default()
            },
            7,
        );
    }
}

#[test]
fn interrupt_status_and_ack() {
    let (mut g, _, _) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    g.take_irqs();
    g.host(|c| c.port_write(1, b"x"));
    // `host` pumped: status was read and acked.
    assert!(g.take_irqs() >= 1);
    assert_eq!(g.rd(0x60), 0);
    assert_eq!(g.read(1), b"x");
    g.t().with_device(|c| c.port_write(1, b"y"));
    assert_eq!(g.rd(0x60) & 1, 1, "used-buffer bit set");
    g.wr(0x64, 1);
    assert_eq!(g.rd(0x60), 0);
}

#[test]
fn event_idx_suppresses_interrupts_and_kicks() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    let rxq = rx_queue_index(1);
    // The driver asks to be interrupted only 100 buffers from now.
    let last = g.vqs[&rxq].last_used;
    g.vqs[&rxq].set_used_event(&g.mem, last.wrapping_add(100));
    g.take_irqs();
    g.t().with_device(|c| c.port_write(1, b"quiet"));
    assert_eq!(g.take_irqs(), 0, "no interrupt before used_event");
    assert_eq!(g.read(1), b"quiet", "but the data is in the used ring");
    // The device publishes avail_event so the driver kicks for each new tx buffer.
    let txq = tx_queue_index(1);
    for i in 0..5u8 {
        let kicks = g.kicks;
        assert!(g.write(1, &[i], 1));
        assert_eq!(g.kicks, kicks + 1, "device asked for the kick");
        assert_eq!(g.vqs[&txq].avail_event(&g.mem), g.vqs[&txq].avail_idx);
    }
    assert_eq!(agent.received(), vec![0, 1, 2, 3, 4]);
}

/// Past 65 536 buffers the ring indices wrap. Across the wrap, data must arrive whole in both
/// directions, and interrupts must come exactly when the driver asked: with event-idx, when a
/// write's buffers reach `used_event` (set here at random from 2 buffers behind, already
/// passed, to 3 ahead), without it, for every write.
#[test]
fn indices_wrap_and_interrupts_follow_used_event() {
    const RX_BUF: usize = 64;
    for event_idx in [true, false] {
        let (mut g, _, agent) = two_ports();
        g.probe(ProbeOpts {
            event_idx,
            rx_buf: RX_BUF as u32,
            ..Default::default()
        });
        g.set_open(1, true);
        let rxq = rx_queue_index(1);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let (mut rx_buffers, mut to_host) = (0u32, Vec::new());
        for i in 0..70_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // This write fills `k` receive buffers; the driver wants an interrupt once the
            // used index passes `last_used + ahead`.
            let k = 1 + (rng % 3) as usize;
            let ahead = ((rng >> 8) % 6) as i32 - 2;
            let last = g.vqs[&rxq].last_used;
            g.vqs[&rxq].set_used_event(&g.mem, last.wrapping_add_signed(ahead as i16));
            g.take_irqs();
            let len = (k - 1) * RX_BUF + 1 + (rng >> 16) as usize % RX_BUF;
            let data = pattern(len, i as u8);
            assert_eq!(g.t().with_device(|c| c.port_write(1, &data)), len);
            let raised = g.take_irqs() > 0;
            assert_eq!(
                raised,
                !event_idx || (0..k as i32).contains(&ahead),
                "write {i}: {k} buffers, used_event {ahead} ahead"
            );
            assert_eq!(g.read(1), data, "write {i}");
            rx_buffers += k as u32;
            // And one byte the other way, in one transmit buffer.
            assert!(g.write(1, &[i as u8], 1), "write {i}");
            to_host.push(i as u8);
        }
        assert_eq!(agent.received(), to_host);
        assert!(rx_buffers > 65_536, "the receive ring's indices wrapped");
    }
}

#[test]
fn host_bytes_wait_for_guest_open_like_qemu() {
    let (mut g, _, _) = two_ports();
    g.probe(ProbeOpts::default());
    // Nobody has the port open in the guest: bytes are kept, not delivered, not dropped.
    assert_eq!(
        g.host(|c| c.port_write(1, b"{\"execute\":\"guest-ping\"}")),
        24
    );
    assert!(g.read(1).is_empty());
    assert_eq!(g.t().device().port_pending(1), Some(24));
    g.set_open(1, true);
    assert_eq!(g.read(1), b"{\"execute\":\"guest-ping\"}");
    // Guest closes: later bytes wait for the next open again.
    g.set_open(1, false);
    g.host(|c| c.port_write(1, b"late"));
    assert!(g.read(1).is_empty());
    g.set_open(1, true);
    assert_eq!(g.read(1), b"late");
}

#[test]
fn guest_open_close_reported_to_host() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    g.set_open(1, false);
    g.set_open(1, true);
    assert_eq!(agent.open_events(), vec![true, false, true]);
    assert_eq!(g.t().device().is_guest_open(1), Some(true));
}

#[test]
fn host_connect_disconnect_signalled_to_guest() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    g.ctrl_log.clear();
    g.host(|c| c.set_host_connected(1, false)).unwrap();
    assert!(!g.ports[&1].host_connected);
    // Unchanged state sends nothing.
    g.host(|c| c.set_host_connected(1, false)).unwrap();
    g.host(|c| c.set_host_connected(1, true)).unwrap();
    assert!(g.ports[&1].host_connected);
    assert_eq!(g.ctrl_log, vec![Ctrl::Open(1, false), Ctrl::Open(1, true)]);
    // While disconnected, guest bytes are consumed and discarded (QEMU).
    g.host(|c| c.set_host_connected(1, false)).unwrap();
    assert!(g.write(1, b"into the void", 1));
    assert_eq!(g.reclaim_tx(1), 1);
    assert!(agent.received().is_empty());
    assert!(g.host(|c| c.port_write(99, b"x")) == 0);
}

#[test]
fn host_connected_before_driver_ready_is_resent_after_port_ready() {
    let agent = HostEnd::default();
    let mut pc = PortConfig::serial(1, AGENT);
    pc.host_connected = false;
    let mut g = new_guest(cfg(), vec![(pc, agent.clone())]);
    // The host connects before the guest even probed: nothing can be sent yet.
    g.t()
        .with_device(|c| c.set_host_connected(1, true))
        .unwrap();
    g.probe(ProbeOpts::default());
    assert_eq!(
        g.ctrl_log,
        vec![
            Ctrl::Add(1),
            Ctrl::Name(1, AGENT.into()),
            Ctrl::Open(1, true)
        ]
    );
}

#[test]
fn reset_and_reprobe() {
    let (mut g, con, agent) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    assert!(g.write(1, b"before", 1));
    // A pending host→guest byte survives the reset (QEMU keeps the socket's bytes).
    g.host(|c| c.port_write(1, b"kept"));
    assert_eq!(g.read(1), b"kept");
    g.set_open(1, false);
    g.host(|c| c.port_write(1, b"-pending"));
    g.wr(0x70, 0);
    assert_eq!(g.status(), 0);
    assert_eq!(g.rd(0x60), 0);
    for q in 0..10 {
        g.wr(0x30, q);
        assert_eq!(g.rd(0x44), 0, "queue {q} not ready after reset");
    }
    assert_eq!(agent.open_events(), vec![true, false]);
    assert_eq!(
        con.open_events(),
        vec![true, false],
        "reset closes the console"
    );
    assert!(!g.t().device().is_driver_ready());
    g.ctrl_log.clear();
    g.probe(ProbeOpts {
        event_idx: false,
        ..Default::default()
    });
    assert_eq!(g.ctrl_log.len(), 6);
    g.set_open(1, true);
    assert_eq!(g.read(1), b"-pending");
    assert!(g.write(1, b"after", 2));
    assert_eq!(agent.received(), b"beforeafter");
}

#[test]
fn backpressure_guest_to_host_loses_nothing() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    agent.set_limit(Some(1000));
    // Four 32 KiB writes (Linux's largest single tx buffer).
    let data = pattern(4 * 32 * 1024, 3);
    for chunk in data.chunks(32 * 1024) {
        assert!(g.write(1, chunk, 1));
    }
    assert_eq!(
        agent.received().len(),
        1000,
        "backend took 1000 bytes then was full"
    );
    assert_eq!(g.t().device().is_throttled(1), Some(true));
    assert_eq!(g.reclaim_tx(1), 0, "guest sees its buffers still in flight");
    let mut rounds = 0;
    while agent.received().len() < data.len() {
        rounds += 1;
        assert!(rounds < 1000);
        g.host(|c| c.port_drained(1));
    }
    assert_eq!(agent.received(), data);
    assert_eq!(g.reclaim_tx(1), 4);
    // A backend that takes nothing at all.
    agent.set_limit(Some(0));
    assert!(g.write(1, b"held", 1));
    g.host(|c| c.port_drained(1));
    assert_eq!(agent.received().len(), data.len());
    agent.set_limit(None);
    g.host(|c| c.port_drained(1));
    assert_eq!(&agent.received()[data.len()..], b"held");
}

#[test]
fn console_port_drops_what_the_backend_refuses_like_qemu() {
    let (mut g, con, _) = two_ports();
    g.probe(ProbeOpts::default());
    con.set_limit(Some(3));
    assert!(g.write(0, b"abcdef", 1));
    assert_eq!(con.received(), b"abc");
    assert_eq!(g.reclaim_tx(0), 1, "hvc buffer returned at once");
    assert_eq!(g.t().device().is_throttled(0), Some(false));
}

#[test]
fn backpressure_host_to_guest_loses_nothing() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts {
        rx_count: 4,
        ..Default::default()
    });
    let data = pattern(300_000, 9);
    let mut sent = 0;
    let mut got = Vec::new();
    // Guest not open yet: the bounded buffer fills and writes come back short.
    sent += g.host(|c| c.port_write(1, &data));
    assert_eq!(sent, 64 * 1024);
    assert_eq!(g.host(|c| c.port_write(1, &data[sent..])), 0);
    g.set_open(1, true);
    let mut rounds = 0;
    while got.len() < data.len() {
        rounds += 1;
        assert!(rounds < 10_000);
        got.extend(g.read(1));
        sent += g.host(|c| c.port_write(1, &data[sent..]));
    }
    assert_eq!(got, data);
    assert!(agent.space_events() >= 1, "backend told when room appeared");
}

#[test]
fn driver_without_multiport_gets_a_plain_console() {
    let con = HostEnd::default();
    let mut g = new_guest(cfg(), vec![(PortConfig::console(0), con.clone())]);
    g.probe(ProbeOpts {
        multiport: false,
        ..Default::default()
    });
    assert_eq!(g.vqs.len(), 2);
    assert_eq!(con.open_events(), vec![true]);
    assert!(g.write(0, b"hvc0 says hi", 1));
    assert_eq!(con.received(), b"hvc0 says hi");
    g.host(|c| c.port_write(0, b"login: "));
    assert_eq!(g.read(0), b"login: ");
    // The control queues do not exist for this driver: notifying them does nothing.
    g.notify(CONTROL_TX_QUEUE);
    assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn hotplug_and_resize() {
    let (mut g, _, _) = two_ports();
    g.probe(ProbeOpts::default());
    g.ctrl_log.clear();
    let extra = HostEnd::default();
    g.host(|c| c.add_port(PortConfig::serial(3, "extra"), Box::new(extra.clone())))
        .unwrap();
    assert_eq!(
        g.ctrl_log,
        vec![
            Ctrl::Add(3),
            Ctrl::Name(3, "extra".into()),
            Ctrl::Open(3, true)
        ]
    );
    g.set_open(3, true);
    assert!(g.write(3, b"three", 1));
    assert_eq!(extra.received(), b"three");
    g.host(|c| c.resize(0, 132, 43)).unwrap();
    g.host(|c| c.remove_port(3).map(|_| ())).unwrap();
    assert_eq!(
        &g.ctrl_log[3..],
        &[Ctrl::Resize(0, 132, 43), Ctrl::Remove(3)]
    );
    assert!(!g.ports.contains_key(&3));
    assert!(g
        .host(|c| c.add_port(PortConfig::serial(4, "x"), Box::new(HostEnd::default())))
        .is_err());
    assert!(g
        .host(|c| c.add_port(PortConfig::serial(1, "x"), Box::new(HostEnd::default())))
        .is_err());
}

#[test]
fn readding_port_makes_driver_resend_port_ready() {
    let (mut g, _, _) = two_ports();
    g.probe(ProbeOpts::default());
    g.ctrl_log.clear();
    // A second DEVICE_READY makes the device announce all ports again; the driver answers
    // PORT_READY and the device repeats its per-port messages. The name is applied once.
    g.send_control(u32::MAX, Event::DeviceReady, 1);
    g.pump();
    assert_eq!(
        g.ctrl_log
            .iter()
            .filter(|c| matches!(c, Ctrl::Add(_)))
            .count(),
        2
    );
    assert_eq!(g.ports[&1].name.as_deref(), Some(AGENT));
}

#[test]
fn mmio_register_map() {
    let (mut g, _, _) = two_ports();
    assert_eq!(g.rd(0x0), 0x7472_6976);
    assert_eq!(g.rd(0x4), 2);
    assert_eq!(g.rd(0x8), 3);
    assert_eq!(g.rd(0xc), devices::virtio::mmio::MMIO_VENDOR_ID);
    g.wr(0x14, 1);
    assert_eq!(g.rd(0x10), 1, "VERSION_1 in the high word");
    g.wr(0x14, 0);
    assert_eq!(g.rd(0x10), 1 << 29 | 1 << 1 | 1 << 2);
    g.wr(0x14, 2);
    assert_eq!(g.rd(0x10), 0);
    // Queue sizes: data 256, control 64; past the last queue: absent.
    for (q, want) in [
        (0, 256),
        (1, 256),
        (2, 64),
        (3, 64),
        (9, 256),
        (10, 0),
        (999, 0),
    ] {
        g.wr(0x30, q);
        assert_eq!(g.rd(0x34), want, "queue {q}");
    }
    // No shared memory.
    for r in [0xb0, 0xb4, 0xb8, 0xbc] {
        assert_eq!(g.rd(r), u32::MAX);
    }
    assert_eq!(g.rd(0xfc), 0, "config generation");
    // Config space: cols, rows = 0, max_nr_ports = 4; any width.
    assert_eq!(g.rd(0x100), 0);
    assert_eq!(g.rd(0x104), 4);
    let mut two = [0xffu8; 2];
    g.t().read(0x104, &mut two);
    assert_eq!(two, [4, 0]);
    let mut eight = [0xffu8; 8];
    g.t().read(0x104, &mut eight);
    assert_eq!(eight, [4, 0, 0, 0, 0, 0, 0, 0]);
    let mut past = [0xffu8; 4];
    g.t().read(0x1f0, &mut past);
    assert_eq!(past, [0; 4]);
    // Sub-word register reads are refused (zeros), nothing breaks.
    let mut b = [0xffu8; 1];
    g.t().read(0x0, &mut b);
    assert_eq!(b, [0]);
    g.t().write(0x70, &[1]);
    assert_eq!(g.status(), 0);
}

#[test]
fn console_size_offered_when_configured() {
    let c = ConsoleConfig {
        size: Some((80, 25)),
        ..cfg()
    };
    let mut g = new_guest(c, vec![(PortConfig::console(0), HostEnd::default())]);
    g.probe(ProbeOpts::default());
    assert_ne!(g.features & 1, 0, "SIZE negotiated");
    assert_eq!(g.rd(0x100), 80 | 25 << 16);
}

#[test]
fn emergency_write_reaches_console_backend() {
    let (mut g, con, agent) = two_ports();
    // Works before the driver is up.
    g.wr(0x108, u32::from(b'!'));
    g.probe(ProbeOpts::default());
    g.t().write(0x108, b"?");
    assert_eq!(con.received(), b"!?");
    assert!(agent.received().is_empty());
}

#[test]
fn feature_negotiation_refusals() {
    let (mut g, _, _) = two_ports();
    g.wr(0x70, 0);
    g.wr(0x70, status::ACKNOWLEDGE | status::DRIVER);
    // No VERSION_1: FEATURES_OK does not stick.
    g.wr(0x24, 0);
    g.wr(0x20, 1 << VIRTIO_CONSOLE_F_MULTIPORT);
    g.wr(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(g.status() & status::FEATURES_OK, 0);
    // A feature the device did not offer (bit 3).
    g.wr(0x24, 1);
    g.wr(0x20, 1);
    g.wr(0x24, 0);
    g.wr(0x20, 1 << 3);
    g.wr(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(g.status() & status::FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK is refused.
    g.wr(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(g.status() & status::DRIVER_OK, 0);
    // A good set works; then clearing bits without a reset is ignored.
    g.wr(0x20, 0);
    g.wr(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(g.status() & status::FEATURES_OK, 0);
    g.wr(0x70, status::ACKNOWLEDGE);
    assert_eq!(g.status(), 0xb);
    // Features cannot change after FEATURES_OK.
    g.wr(0x20, 1 << VIRTIO_CONSOLE_F_MULTIPORT);
    assert_eq!(g.t().driver_features(), 1 << 32);
}

#[test]
fn two_ports_do_not_mix() {
    let a = HostEnd::default();
    let b = HostEnd::default();
    let mut g = new_guest(
        cfg(),
        vec![
            (PortConfig::serial(1, "a"), a.clone()),
            (PortConfig::serial(2, "b"), b.clone()),
        ],
    );
    g.probe(ProbeOpts::default());
    g.set_open(1, true);
    g.set_open(2, true);
    b.set_limit(Some(0));
    assert!(g.write(1, b"to a", 1));
    assert!(g.write(2, b"to b", 1));
    assert_eq!(a.received(), b"to a", "a flows while b is throttled");
    g.host(|c| c.port_write(1, b"from a"));
    g.host(|c| c.port_write(2, b"from b"));
    assert_eq!(g.read(2), b"from b");
    assert_eq!(g.read(1), b"from a");
    b.set_limit(None);
    g.host(|c| c.port_drained(2));
    assert_eq!(b.received(), b"to b");
}

#[test]
fn direct_host_write_keeps_order_and_falls_back_to_buffer() {
    let (mut g, _, _) = two_ports();
    // Before the driver is up: no queue access, bytes are buffered.
    assert_eq!(
        g.t()
            .with_device_io(|c, io| c.port_write_io(io, 1, b"early:")),
        Some(6)
    );
    g.probe(ProbeOpts {
        rx_count: 3,
        ..Default::default()
    });
    g.set_open(1, true);
    assert_eq!(g.read(1), b"early:");
    // Three 4 KiB receive buffers are posted again: 12288 bytes go straight in, the rest
    // is buffered, and a later write queues behind it.
    let data = pattern(20_000, 5);
    assert_eq!(
        g.t().with_device_io(|c, io| c.port_write_io(io, 1, &data)),
        Some(20_000)
    );
    assert_eq!(g.t().device().port_pending(1), Some(20_000 - 3 * 4096));
    assert_eq!(
        g.t()
            .with_device_io(|c, io| c.port_write_io(io, 1, b"tail")),
        Some(4)
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(g.read(1));
    }
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(got, want);
    // Unknown port: nothing accepted.
    assert_eq!(
        g.t().with_device_io(|c, io| c.port_write_io(io, 3, b"x")),
        Some(0)
    );
}

#[test]
fn old_kernels_handshake_before_driver_ok() {
    let (mut g, _, agent) = two_ports();
    g.probe(ProbeOpts {
        driver_ok_late: true,
        ..Default::default()
    });
    assert_eq!(g.status(), 0xf);
    assert_eq!(g.ctrl_log.len(), 6, "handshake done before DRIVER_OK");
    g.set_open(1, true);
    assert!(g.write(1, b"ok", 1));
    assert_eq!(agent.received(), b"ok");
}
