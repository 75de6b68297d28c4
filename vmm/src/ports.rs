//! Virtio-serial ports ↔ host side (chardevs and the QMP proxy), independent of the transport.
//!
//! The device calls its [`PortBackend`]s while the transport is busy (inside its lock or
//! borrow), possibly from another thread, and they must not call back into it. The host side
//! (chardevs, the [`QmpProxy`], the monitor's events) lives in `Rc<RefCell<..>>` on the event-loop
//! thread. So the two halves meet in a bounded, `Send` queue per port plus an eventfd:
//!
//! - device side: [`BridgeBackend`] (the port's `PortBackend`) appends guest→host bytes, guest
//!   open/close changes and "room again toward the guest" to its port's queue and kicks the
//!   eventfd. It takes at most [`INBOX_LIMIT`] bytes; the rest stays in the device (the port is
//!   throttled, the guest's `write()` blocks).
//! - event-loop side: [`PortHub`], an event-manager subscriber, drains the queues into the
//!   chardevs and the proxy, emits `VSERPORT_CHANGE`, and drives the reverse path through the
//!   transport's [`PortDevice`]: `port_write` (chardev input, proxy output), `port_drained`
//!   (inbox emptied after the device was refused), `set_host_connected` (chardev peer came/went).
//!
//! Nothing is lost and every buffer is bounded: a chardev that refuses bytes (its own buffer,
//! [`chardev::DEFAULT_OUTPUT_LIMIT`], is full) leaves them in the hub, which stops draining that
//! port's queue — so the device stops taking the guest's output — and tries again when the
//! chardev reports room (`Frontend::write_ready`, with a timer as a fallback); a
//! port whose guest buffer is full makes the chardev pause its input (`can_receive` = 0) until the
//! device reports room.

use chardev::{Chardev, ChardevEvent, Frontend};
use devices::virtio::console::PortBackend;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use evloop::Timer;
use qmp::{AgentChannel, MonitorHandle, QmpProxy};
use serde_json::json;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Most guest→host bytes queued per port between the device and the event loop.
pub const INBOX_LIMIT: usize = 256 << 10;
/// How often a chardev that refused bytes is tried again.
const RETRY: Duration = Duration::from_millis(10);
/// Largest chunk handed to `port_write` at once.
const CHUNK: usize = 64 << 10;

/// Host-side calls into a virtio-serial device, made on the event-loop thread and never from
/// inside a [`PortBackend`] callback. Each transport implements it (vhost-user, virtio-mmio).
pub trait PortDevice {
    /// Host→guest bytes; returns how many the port took (short: wait for the port's room event).
    fn port_write(&self, port: u32, data: &[u8]) -> usize;
    /// The host side can take guest bytes again after refusing some.
    fn port_drained(&self, port: u32);
    /// The host side of `port` connected or disconnected.
    fn set_host_connected(&self, port: u32, connected: bool);
}

/// What the device side reports for one port, in order.
#[derive(Debug)]
enum PortEvent {
    Data(Vec<u8>),
    GuestOpen(bool),
    Space,
}

#[derive(Default)]
struct Inbox {
    events: VecDeque<PortEvent>,
    bytes: usize,
    /// `write_to_host` came back short: call `port_drained` once there is room.
    refused: bool,
}

/// The `PortBackend` of one port: queues everything for the event loop (see the module docs).
pub struct BridgeBackend {
    inbox: Arc<Mutex<Inbox>>,
    kick: EventFd,
}

impl BridgeBackend {
    fn push(&self, ev: PortEvent) {
        if let Ok(mut i) = self.inbox.lock() {
            i.events.push_back(ev);
        }
        let _ = self.kick.write(1);
    }
}

impl PortBackend for BridgeBackend {
    fn write_to_host(&mut self, data: &[u8]) -> usize {
        let Ok(mut i) = self.inbox.lock() else {
            return data.len();
        };
        let n = data.len().min(INBOX_LIMIT.saturating_sub(i.bytes));
        if n < data.len() {
            i.refused = true;
        }
        if n > 0 {
            i.bytes += n;
            i.events.push_back(PortEvent::Data(data[..n].to_vec()));
            drop(i);
            let _ = self.kick.write(1);
        }
        n
    }

    fn guest_open_changed(&mut self, open: bool) {
        self.push(PortEvent::GuestOpen(open));
    }

    fn to_guest_space(&mut self) {
        self.push(PortEvent::Space);
    }
}

/// Host→guest bytes waiting for room in the port.
#[derive(Default)]
struct Outbox {
    data: VecDeque<u8>,
    limit: usize,
}

/// The proxy's byte path to the agent when the agent is behind a virtio-serial port.
struct PortChannel {
    out: Rc<RefCell<Outbox>>,
    kick: Rc<EventFd>,
}

impl AgentChannel for PortChannel {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut o = self.out.borrow_mut();
        if o.data.len() + data.len() > o.limit {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "agent port buffer full",
            ));
        }
        o.data.extend(data);
        // Written to the port by the hub on its next turn (never from inside the proxy).
        let _ = self.kick.write(1);
        Ok(())
    }
}

/// Chardev input → the port.
struct ChardevFrontend {
    cd: Chardev,
    port: u32,
    dev: Rc<dyn PortDevice>,
    /// Bytes the port did not take; input is paused until they are gone.
    out: Rc<RefCell<Outbox>>,
    /// The hub's eventfd: the chardev can take refused guest bytes again.
    hub_kick: Rc<EventFd>,
}

impl Frontend for ChardevFrontend {
    fn receive(&mut self, data: &[u8]) {
        let mut o = self.out.borrow_mut();
        let n = if o.data.is_empty() {
            self.dev.port_write(self.port, data)
        } else {
            0
        };
        o.data.extend(&data[n..]);
    }

    fn can_receive(&self) -> usize {
        if self.out.borrow().data.is_empty() {
            CHUNK
        } else {
            0
        }
    }

    fn event(&mut self, ev: ChardevEvent) {
        let up = ev == ChardevEvent::Opened;
        if !up {
            // Bytes of the connection that went away are not delivered (the device drops its own too).
            self.out.borrow_mut().data.clear();
        }
        self.dev.set_host_connected(self.port, up);
        // Input may have been paused for the old connection; the new one starts unpaused.
        self.cd.accept_input();
    }

    fn write_ready(&mut self) {
        let _ = self.hub_kick.write(1);
    }
}

/// Where a port's host side goes.
pub enum PortSink {
    /// A chardev backend (socket, file, pty, stdio, ringbuf, null).
    Chardev(Chardev),
    /// The QMP proxy (a `qmp_proxy` chardev without `path=`).
    Proxy(Rc<RefCell<QmpProxy>>),
}

struct HostPort {
    port: u32,
    /// The `-device ...,id=` for `VSERPORT_CHANGE`.
    dev_id: Option<String>,
    inbox: Arc<Mutex<Inbox>>,
    sink: PortSink,
    /// Guest→host bytes the chardev refused (sent first when it takes bytes again).
    stalled: Vec<u8>,
    /// Host→guest bytes waiting for room in the port.
    out: Rc<RefCell<Outbox>>,
}

/// The event-loop half of the port wiring (see the module docs).
pub struct PortHub {
    dev: Option<Rc<dyn PortDevice>>,
    monitor: MonitorHandle,
    ports: Vec<HostPort>,
    outboxes: Vec<(u32, Rc<RefCell<Outbox>>)>,
    kick: Rc<EventFd>,
    retry: Timer,
    retry_armed: bool,
}

impl PortHub {
    /// An empty hub reporting events through `monitor`.
    pub fn new(monitor: MonitorHandle) -> io::Result<Self> {
        Ok(PortHub {
            dev: None,
            monitor,
            ports: Vec::new(),
            outboxes: Vec::new(),
            kick: Rc::new(EventFd::new(EFD_NONBLOCK)?),
            retry: Timer::new()?,
            retry_armed: false,
        })
    }

    fn outbox(&mut self, port: u32, limit: usize) -> Rc<RefCell<Outbox>> {
        if let Some((_, o)) = self.outboxes.iter().find(|(p, _)| *p == port) {
            return o.clone();
        }
        let o = Rc::new(RefCell::new(Outbox {
            data: VecDeque::new(),
            limit,
        }));
        self.outboxes.push((port, o.clone()));
        o
    }

    /// The QMP proxy's agent channel through `port` (give it to `QmpProxy::set_channel`, e.g.
    /// with `chardev::qmp_proxy::attach_port`), then add the port with [`PortSink::Proxy`].
    pub fn proxy_channel(&mut self, port: u32) -> Box<dyn AgentChannel> {
        Box::new(PortChannel {
            out: self.outbox(port, qmp::proxy::MAX_AGENT_BACKLOG),
            kick: self.kick.clone(),
        })
    }

    /// Wires `port` (`dev_id` = its `-device id=`) to `sink` and returns the `PortBackend` to add
    /// to the device, with `host_connected` = [`PortSink::connected`].
    pub fn add_port(
        &mut self,
        port: u32,
        dev_id: Option<String>,
        sink: PortSink,
    ) -> io::Result<Box<dyn PortBackend>> {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let limit = match sink {
            PortSink::Proxy(_) => qmp::proxy::MAX_AGENT_BACKLOG,
            PortSink::Chardev(_) => CHUNK,
        };
        let out = self.outbox(port, limit);
        self.ports.push(HostPort {
            port,
            dev_id,
            inbox: inbox.clone(),
            sink,
            stalled: Vec::new(),
            out,
        });
        Ok(Box::new(BridgeBackend {
            inbox,
            kick: self.kick.try_clone()?,
        }))
    }

    /// Joins the hub to the transport once the device is built: chardevs get their frontends
    /// (and report their peers), data starts to flow.
    pub fn connect(&mut self, dev: Rc<dyn PortDevice>) {
        self.dev = Some(dev.clone());
        for p in &self.ports {
            if let PortSink::Chardev(cd) = &p.sink {
                cd.set_frontend(Rc::new(RefCell::new(ChardevFrontend {
                    cd: cd.clone(),
                    port: p.port,
                    dev: dev.clone(),
                    out: p.out.clone(),
                    hub_kick: self.kick.clone(),
                })));
            }
        }
        let _ = self.kick.write(1);
    }

    /// Moves everything that can move now.
    fn run(&mut self) {
        let mut retry = false;
        for i in 0..self.ports.len() {
            retry |= self.run_port(i);
        }
        if retry && !self.retry_armed {
            self.retry_armed = self.retry.arm(RETRY).is_ok();
        }
    }

    /// Returns true when a chardev refused bytes (retry on the timer).
    fn run_port(&mut self, i: usize) -> bool {
        let Some(dev) = self.dev.clone() else {
            return false;
        };
        let monitor = self.monitor.clone();
        let p = &mut self.ports[i];
        // Guest→host: first what the chardev refused last time.
        if !p.stalled.is_empty() {
            let PortSink::Chardev(cd) = &p.sink else {
                unreachable!("only chardevs refuse bytes")
            };
            match cd.write(&p.stalled) {
                Ok(n) => {
                    p.stalled.drain(..n);
                }
                Err(_) => p.stalled.clear(),
            }
            if !p.stalled.is_empty() {
                return true;
            }
        }
        loop {
            let (ev, drained) = {
                let Ok(mut inbox) = p.inbox.lock() else {
                    break;
                };
                let Some(ev) = inbox.events.pop_front() else {
                    break;
                };
                if let PortEvent::Data(d) = &ev {
                    inbox.bytes -= d.len();
                }
                let drained = inbox.refused && inbox.bytes < INBOX_LIMIT / 2;
                if drained {
                    inbox.refused = false;
                }
                (ev, drained)
            };
            match ev {
                PortEvent::Data(d) => match &p.sink {
                    PortSink::Proxy(px) => px.borrow_mut().on_bytes(&d),
                    PortSink::Chardev(cd) => match cd.write(&d) {
                        Ok(n) if n < d.len() => p.stalled.extend_from_slice(&d[n..]),
                        // Not connected: dropped, as the device does while the host is away.
                        _ => {}
                    },
                },
                PortEvent::GuestOpen(open) => {
                    if let Some(id) = &p.dev_id {
                        monitor.event("VSERPORT_CHANGE", Some(json!({"id": id, "open": open})));
                    }
                    if let PortSink::Proxy(px) = &p.sink {
                        if open {
                            px.borrow_mut().on_open();
                        } else {
                            // What the proxy had queued for the agent that left is stale.
                            p.out.borrow_mut().data.clear();
                            px.borrow_mut().on_close();
                        }
                    }
                }
                PortEvent::Space => {
                    if let PortSink::Chardev(cd) = &p.sink {
                        flush(&*dev, p.port, &p.out);
                        if p.out.borrow().data.is_empty() {
                            cd.accept_input();
                        }
                    }
                }
            }
            if drained {
                dev.port_drained(p.port);
            }
            if !p.stalled.is_empty() {
                return true;
            }
        }
        // Host→guest for the proxy: whatever it queued since.
        if matches!(p.sink, PortSink::Proxy(_)) {
            flush(&*dev, p.port, &p.out);
        }
        false
    }
}

/// Writes queued host→guest bytes until the port is full.
fn flush(dev: &dyn PortDevice, port: u32, out: &RefCell<Outbox>) {
    let mut o = out.borrow_mut();
    while !o.data.is_empty() {
        let (n, len) = {
            let (a, _) = o.data.as_slices();
            let chunk = &a[..a.len().min(CHUNK)];
            (dev.port_write(port, chunk), chunk.len())
        };
        o.data.drain(..n.min(len));
        if n < len {
            break;
        }
    }
    if o.data.is_empty() && o.data.capacity() > (1 << 20) {
        o.data = VecDeque::new();
    }
}

impl PortSink {
    /// Whether the host side is there at start (a proxy always is; a chardev when its peer is).
    pub fn connected(&self) -> bool {
        match self {
            PortSink::Proxy(_) => true,
            PortSink::Chardev(cd) => cd.is_open(),
        }
    }
}

impl MutEventSubscriber for PortHub {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.kick.as_raw_fd(), self.retry.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("ports: cannot watch fd {fd}: {e:?}");
            }
        }
        self.run();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.kick.as_raw_fd() {
            let _ = self.kick.read();
        } else {
            if self.retry.fired() {
                self.retry_armed = false;
            }
        }
        self.run();
    }
}

/// One `-device virtserialport|virtconsole` with the port number it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPort {
    pub port: u32,
    pub console: bool,
    pub name: Option<String>,
    pub dev_id: Option<String>,
    pub chardev: String,
}

/// Numbers the ports as QEMU does: the first `virtconsole` gets port 0, every other port the
/// lowest free number from 1 up, in command-line order. Errors when more ports than `max_ports`.
pub fn plan(
    devices: &[crate::cli::DeviceSpec],
    max_ports: u32,
) -> Result<Vec<PlannedPort>, String> {
    let mut out: Vec<PlannedPort> = Vec::new();
    for d in devices {
        let crate::cli::DeviceSpec::Port {
            console,
            chardev,
            name,
            id,
        } = d
        else {
            continue;
        };
        let taken = |n: u32| out.iter().any(|p| p.port == n);
        let port = if *console && !taken(0) {
            0
        } else {
            match (1..max_ports).find(|&n| !taken(n)) {
                Some(n) => n,
                None => {
                    return Err(format!(
                        "-device: more ports than max_ports={max_ports} of the virtio-serial device"
                    ))
                }
            }
        };
        out.push(PlannedPort {
            port,
            console: *console,
            name: name.clone(),
            dev_id: id.clone(),
            chardev: chardev.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::DeviceSpec;

    fn port(console: bool, chardev: &str) -> DeviceSpec {
        DeviceSpec::Port {
            console,
            chardev: chardev.into(),
            name: None,
            id: None,
        }
    }

    #[test]
    fn ports_are_numbered_as_qemu_does() {
        let d = [
            DeviceSpec::VirtioSerial {
                id: None,
                max_ports: 3,
            },
            port(false, "a"),
            port(true, "b"),
        ];
        let p = plan(&d, 3).unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.port, p.chardev.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (0, "b")]
        );
        // A second console is an ordinary numbered port; too many ports is an error.
        let p = plan(&[port(true, "a"), port(true, "b")], 3).unwrap();
        assert_eq!(p[1].port, 1);
        assert!(
            plan(&[port(false, "a"), port(false, "b"), port(false, "c")], 3)
                .unwrap_err()
                .contains("max_ports=3")
        );
    }
}
