//! The QMP monitor: listeners, sessions, negotiation, dispatch to the machine and the proxy.
//!
//! One [`Monitor`] is one event-manager subscriber owning every listener and session fd plus the
//! hub's kick eventfd. Unlike QEMU, which serves one client per monitor, every accepted connection
//! gets its own session at once. Requests of a session are answered in order: while a guest
//! command is with the agent, the session's later input waits (and its socket is not read).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use qjson::{Parsed, Streamer};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use evloop::unix_socket::BoundPath;
use evloop::{AcceptGate, OutBuf};

use crate::hmp;
use crate::hub::{MonitorHandle, Outgoing, SessionId};
use crate::protocol::{self, check_args, Param, ParamKind, QmpError, Request};
use crate::proxy::QmpProxy;

/// Unsent output above which a session's requests are no longer read: a client that pipelines
/// requests gets their replies at the rate it reads them, and the monitor holds no more than one
/// read's worth of replies for it (QEMU's monitor likewise stops reading a busy client).
pub const INPUT_PAUSE: usize = 64 << 10;
/// Most unsent output (replies and events) the monitor holds for all sessions together. Above
/// it, the sessions holding the most are disconnected, with a log line, until it is back under:
/// a client that never reads its events cannot grow the VMM. It leaves room for the largest
/// reply ([`crate::proxy::MAX_REPLY`]).
pub const MAX_TOTAL_OUTPUT: usize = 128 << 20;
/// Most parsed requests held for a busy session before its socket stops being read.
const MAX_INBOX: usize = 64;

/// A command the machine implements.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    pub name: &'static str,
    pub params: &'static [Param],
}

/// The VMM side of the monitor: machine commands (`query-status`, `quit`, ...).
pub trait Machine {
    /// The commands this machine implements.
    fn commands(&self) -> Vec<CommandSpec>;
    /// Runs `name` with arguments already checked against its [`CommandSpec`].
    fn execute(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError>;
    /// How many vCPUs the machine has (`human-monitor-command`'s `cpu-index` must name one).
    fn cpu_count(&self) -> usize {
        0
    }
}

/// Runs `query-version` or one of the machine's commands, arguments checked as QEMU does.
fn run_command(
    machine: &mut dyn Machine,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Value, QmpError> {
    if name == "query-version" {
        return check_args(&[], args).map(|_| protocol::version_info());
    }
    match machine.commands().into_iter().find(|c| c.name == name) {
        Some(spec) => check_args(spec.params, args).and_then(|_| machine.execute(name, args)),
        None => Err(QmpError::not_found(format!(
            "The command {name} has not been found"
        ))),
    }
}

/// Where a monitor listens (or connects, for client mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl std::fmt::Display for SocketAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A listening unix or tcp socket (non-blocking).
pub enum Listener {
    /// With the socket file it made (removed with [`Listener::remove_socket_file`]).
    Unix(UnixListener, BoundPath),
    Tcp(TcpListener),
}

impl Listener {
    /// Listens on `addr`. A unix socket file nobody listens on is replaced; a socket another
    /// process listens on, or any other kind of file there, is an error saying so.
    pub fn bind(addr: &SocketAddr) -> io::Result<Listener> {
        let l = match addr {
            SocketAddr::Unix(p) => {
                let (l, bound) = evloop::unix_socket::bind(p)?;
                Listener::Unix(l, bound)
            }
            SocketAddr::Tcp(a) => Listener::Tcp(TcpListener::bind(a)?),
        };
        match &l {
            Listener::Unix(u, _) => u.set_nonblocking(true)?,
            Listener::Tcp(t) => t.set_nonblocking(true)?,
        }
        Ok(l)
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Removes the unix socket file this listener made, unless another process has put its
    /// own there since.
    pub fn remove_socket_file(&self) {
        if let Listener::Unix(_, b) = self {
            b.remove();
        }
    }

    /// Accepts one connection (`WouldBlock` when none is pending).
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

/// A connected byte stream (unix or tcp).
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `addr`.
    pub fn connect(addr: &SocketAddr) -> io::Result<Stream> {
        Ok(match addr {
            SocketAddr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            SocketAddr::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        })
    }

    pub fn set_nonblocking(&self, nb: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(nb),
            Stream::Tcp(s) => s.set_nonblocking(nb),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Session {
    id: SessionId,
    stream: Stream,
    parser: Streamer,
    inbox: VecDeque<Parsed>,
    out: OutBuf,
    negotiated: bool,
    /// A guest command of this session is with the proxy.
    busy: bool,
    /// Close once the output is flushed.
    closing: bool,
    /// The interest set registered with epoll now.
    registered: EventSet,
}

impl Session {
    fn queue(&mut self, v: &Value) {
        self.out
            .append_with(|buf| protocol::encode_line(v, b"\r\n", buf));
    }

    fn pending_out(&self) -> usize {
        self.out.len()
    }

    /// Writes as much as the socket takes. Returns false when the peer is gone.
    fn flush(&mut self) -> bool {
        self.out.write_to(&mut self.stream).is_ok()
    }

    /// Whether the session's parsed requests may run now (none waits for the agent, and the
    /// output is not behind).
    fn can_run(&self) -> bool {
        !self.busy && self.pending_out() <= INPUT_PAUSE
    }

    /// Whether the session's requests may be read now.
    fn reads(&self) -> bool {
        let stalled = self.busy && !self.inbox.is_empty() || self.inbox.len() >= MAX_INBOX;
        !self.closing && !stalled && self.pending_out() <= INPUT_PAUSE
    }

    fn wanted(&self) -> EventSet {
        let mut s = EventSet::empty();
        if self.reads() {
            s |= EventSet::IN;
        }
        if self.pending_out() > 0 {
            s |= EventSet::OUT;
        }
        s
    }
}

/// See the module documentation.
pub struct Monitor {
    handle: MonitorHandle,
    machine: Box<dyn Machine>,
    proxy: Option<Rc<RefCell<QmpProxy>>>,
    listeners: Vec<ListenerState>,
    sessions: HashMap<RawFd, Session>,
    /// Sessions connected before the event loop took over (client mode, `wait=on`).
    early: Vec<Stream>,
    next_session: u64,
}

struct ListenerState {
    listener: Listener,
    addr: SocketAddr,
    gate: AcceptGate,
}

impl Monitor {
    pub fn new(handle: MonitorHandle, machine: Box<dyn Machine>) -> Self {
        Monitor {
            handle,
            machine,
            proxy: None,
            listeners: Vec::new(),
            sessions: HashMap::new(),
            early: Vec::new(),
            next_session: 1,
        }
    }

    /// Routes `guest-*` commands to `proxy`.
    pub fn set_proxy(&mut self, proxy: Rc<RefCell<QmpProxy>>) {
        self.proxy = Some(proxy);
    }

    /// Listens on `addr` (see [`Listener::bind`]).
    pub fn listen(&mut self, addr: &SocketAddr) -> io::Result<()> {
        let listener = Listener::bind(addr)?;
        let gate = AcceptGate::new(format!("monitor {addr}"))?;
        self.listeners.push(ListenerState {
            listener,
            addr: addr.clone(),
            gate,
        });
        Ok(())
    }

    /// Blocks until one client connects to the last listener added (QEMU's `wait=on`).
    /// Returns false, connecting nobody, when `abort` (e.g. a signalfd) becomes readable first.
    pub fn wait_for_client(&mut self, abort: RawFd) -> io::Result<bool> {
        let Some(l) = self.listeners.last().map(|l| &l.listener) else {
            return Ok(true);
        };
        loop {
            if !wait_readable(l.fd(), abort)? {
                return Ok(false);
            }
            match l.accept() {
                Ok(s) => {
                    self.early.push(s);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects to a listening client at `addr` and serves it as a session (`server=off`).
    pub fn connect(&mut self, addr: &SocketAddr) -> io::Result<()> {
        self.early.push(Stream::connect(addr)?);
        Ok(())
    }

    /// Delivers everything queued (replies, events) and writes pending output, waiting at most
    /// `limit` overall. Used before the process exits so `quit`'s reply and SHUTDOWN arrive.
    pub fn flush_before_exit(&mut self, limit: Duration) {
        self.deliver_outgoing(None);
        let deadline = Instant::now() + limit;
        for s in self.sessions.values_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if s.pending_out() > 0 && s.stream.set_nonblocking(false).is_ok() {
                let _ = s.stream.set_write_timeout(Some(left));
                let _ = s.stream.write_all(s.out.as_slice());
            }
        }
    }

    /// Removes the unix socket files this monitor created (unless another process's are there now).
    pub fn cleanup(&mut self) {
        for l in &self.listeners {
            l.listener.remove_socket_file();
        }
    }

    fn add_session(&mut self, stream: Stream, ops: &mut EventOps) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("monitor: session setup failed: {e}");
            return;
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let mut s = Session {
            id,
            stream,
            parser: Streamer::new(),
            inbox: VecDeque::new(),
            out: OutBuf::new(),
            negotiated: false,
            busy: false,
            closing: false,
            registered: EventSet::IN,
        };
        s.queue(&protocol::greeting());
        let fd = s.stream.as_raw_fd();
        if !s.flush() {
            return;
        }
        let want = s.wanted();
        if let Err(e) = ops.add(Events::new_raw(fd, want)) {
            log::warn!("monitor: cannot watch session: {e:?}");
            return;
        }
        s.registered = want;
        log::debug!("monitor: session {} connected", id.0);
        self.sessions.insert(fd, s);
    }

    fn close_session(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(s) = self.sessions.remove(&fd) {
            let _ = ops.remove(Events::new_raw(fd, s.registered));
            if let Some(p) = &self.proxy {
                p.borrow_mut().session_closed(s.id);
            }
            log::debug!("monitor: session {} closed", s.id.0);
        }
    }

    /// Reads from session `fd`, runs what it can, updates its epoll interest.
    fn service_session(&mut self, fd: RawFd, readable: bool, ops: &mut EventOps) {
        let mut alive = true;
        if readable {
            alive = self.read_session(fd);
        }
        if alive {
            self.run_inbox(fd);
        }
        self.settle(fd, alive, ops);
    }

    fn read_session(&mut self, fd: RawFd) -> bool {
        let Some(s) = self.sessions.get_mut(&fd) else {
            return false;
        };
        let mut buf = [0u8; 65536];
        // A bounded number of reads per wakeup keeps one busy client from starving the others.
        for _ in 0..16 {
            if !s.reads() {
                break;
            }
            match s.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let inbox = &mut s.inbox;
                    let mut limit_hit = false;
                    s.parser.feed(&buf[..n], |p| {
                        if let Parsed::Error(e) = &p {
                            limit_hit |= e.is_limit();
                        }
                        inbox.push_back(p);
                        true
                    });
                    if limit_hit {
                        // A peer that sends this is broken or hostile: answer, then hang up.
                        s.closing = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Runs the session's parsed requests until one waits for the agent, its output is behind,
    /// or none is left.
    fn run_inbox(&mut self, fd: RawFd) {
        loop {
            let Some(s) = self.sessions.get_mut(&fd) else {
                return;
            };
            if !s.can_run() {
                return;
            }
            let Some(p) = s.inbox.pop_front() else {
                return;
            };
            if let Some(reply) = self.handle_message(fd, p) {
                if let Some(s) = self.sessions.get_mut(&fd) {
                    s.queue(&reply);
                }
            }
        }
    }

    /// Flushes output, closes when dead or done, and re-registers the interest set.
    fn settle(&mut self, fd: RawFd, mut alive: bool, ops: &mut EventOps) {
        // Flush, and run what waited for the output to drain, while the peer keeps taking it.
        while alive {
            let Some(s) = self.sessions.get_mut(&fd) else {
                return;
            };
            alive = s.flush();
            if !alive || s.inbox.is_empty() || !s.can_run() {
                break;
            }
            self.run_inbox(fd);
        }
        if let Some(s) = self.sessions.get_mut(&fd) {
            if alive && s.closing && s.pending_out() == 0 {
                alive = false;
            }
            if alive {
                let want = s.wanted();
                if want != s.registered {
                    if ops.modify(Events::new_raw(fd, want)).is_ok() {
                        s.registered = want;
                    } else {
                        alive = false;
                    }
                }
            }
        }
        if !alive {
            self.close_session(fd, ops);
        }
    }

    /// Handles one parsed message; returns the reply to send now (None: the proxy answers later).
    fn handle_message(&mut self, fd: RawFd, p: Parsed) -> Option<Value> {
        let v = match p {
            Parsed::Value(v) => v,
            Parsed::Error(e) => {
                return Some(protocol::reply_err(&QmpError::generic(e.desc()), None))
            }
        };
        let req = match protocol::parse_request(v) {
            Ok(r) => r,
            Err((e, id)) => return Some(protocol::reply_err(&e, id)),
        };
        let s = self.sessions.get_mut(&fd)?;
        if req.oob {
            return Some(protocol::reply_err(
                &QmpError::generic("QMP input member 'exec-oob' is unexpected"),
                req.id,
            ));
        }
        if !s.negotiated {
            if req.execute != "qmp_capabilities" {
                return Some(protocol::reply_err(
                    &QmpError::not_found(
                        "Expecting capabilities negotiation with 'qmp_capabilities'",
                    ),
                    req.id,
                ));
            }
            return Some(match negotiate(&req) {
                Ok(()) => {
                    s.negotiated = true;
                    protocol::reply_ok(json!({}), req.id)
                }
                Err(e) => protocol::reply_err(&e, req.id),
            });
        }
        let session = s.id;
        let Request {
            execute,
            arguments,
            id,
            ..
        } = req;
        let result = match execute.as_str() {
            "qmp_capabilities" => Err(QmpError::not_found(
                "Capabilities negotiation is already complete, command ignored",
            )),
            "query-commands" => check_args(&[], &arguments).map(|_| self.query_commands()),
            "human-monitor-command" => self.human_monitor_command(&arguments),
            name if name.starts_with("guest-") && self.proxy.is_some() => {
                let proxy = self.proxy.clone()?;
                let r = proxy
                    .borrow_mut()
                    .submit(session, name, arguments, id.clone());
                return match r {
                    Ok(()) => {
                        if let Some(s) = self.sessions.get_mut(&fd) {
                            s.busy = true;
                        }
                        None
                    }
                    Err(e) => Some(protocol::reply_err(&e, id)),
                };
            }
            name => run_command(&mut *self.machine, name, &arguments),
        };
        Some(match result {
            Ok(v) => protocol::reply_ok(v, id),
            Err(e) => protocol::reply_err(&e, id),
        })
    }

    /// `human-monitor-command`: an HMP line run on the machine's QMP commands (see [`crate::hmp`]).
    fn human_monitor_command(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        const PARAMS: &[Param] = &[
            Param {
                name: "command-line",
                kind: ParamKind::Str,
                required: true,
            },
            Param {
                name: "cpu-index",
                kind: ParamKind::Int,
                required: false,
            },
        ];
        check_args(PARAMS, args)?;
        if let Some(i) = args.get("cpu-index") {
            // It must name a CPU, as in QEMU; none of our HMP commands uses it. CPU 0 is
            // accepted on a machine without CPUs too (QEMU refuses it there), because
            // `qmp-shell -H` always sends `cpu-index: 0`.
            let cpus = self.machine.cpu_count().max(1) as u64;
            if i.as_u64().is_none_or(|i| i >= cpus) {
                return Err(QmpError::generic(
                    "Parameter 'cpu-index' expects a CPU number",
                ));
            }
        }
        let line = args["command-line"].as_str().unwrap_or_default();
        let specs = self.machine.commands();
        let has = |name: &str| name == "query-version" || specs.iter().any(|c| c.name == name);
        let machine = &mut *self.machine;
        let mut exec = |name: &str, a: Map<String, Value>| run_command(machine, name, &a);
        let out = hmp::run(
            line,
            &mut hmp::Target {
                has: &has,
                exec: &mut exec,
            },
        );
        Ok(Value::String(out))
    }

    fn query_commands(&self) -> Value {
        let mut names: Vec<String> = [
            "qmp_capabilities",
            "query-version",
            "query-commands",
            "human-monitor-command",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(self.machine.commands().iter().map(|c| c.name.to_string()));
        if let Some(p) = &self.proxy {
            names.extend(
                p.borrow()
                    .guest_commands()
                    .iter()
                    .filter(|(_, enabled)| *enabled)
                    .map(|(n, _)| n.clone()),
            );
        }
        Value::Array(names.into_iter().map(|n| json!({"name": n})).collect())
    }

    /// Accepts what listener `i` has pending (bounded), each connection a new session. At the
    /// descriptor limit the listener is set aside for a while (see [`AcceptGate`]).
    fn accept(&mut self, i: usize, ops: &mut EventOps) {
        for _ in 0..64 {
            let l = &mut self.listeners[i];
            match l.listener.accept() {
                Ok(s) => {
                    l.gate.accepted();
                    self.add_session(s, ops);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if l.gate.failed(&e) {
                        let _ = ops.remove(Events::new_raw(l.listener.fd(), EventSet::IN));
                        break;
                    }
                }
            }
        }
    }

    /// Moves queued replies and events into session output buffers. With `ops`, also flushes
    /// and re-registers the sessions touched.
    fn deliver_outgoing(&mut self, ops: Option<&mut EventOps>) {
        let queued = self.handle.drain();
        if queued.is_empty() {
            return;
        }
        let mut touched = Vec::new();
        for m in queued {
            match m {
                Outgoing::Reply { session, msg } => {
                    if let Some((fd, s)) = self.sessions.iter_mut().find(|(_, s)| s.id == session) {
                        s.queue(&msg);
                        s.busy = false;
                        touched.push(*fd);
                    }
                }
                Outgoing::Event(ev) => {
                    for (fd, s) in self.sessions.iter_mut() {
                        if s.negotiated {
                            s.queue(&ev);
                            touched.push(*fd);
                        }
                    }
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        if let Some(ops) = ops {
            for &fd in &touched {
                self.run_inbox(fd);
                self.settle(fd, true, ops);
            }
            self.enforce_output_budget(ops);
        }
    }

    /// Disconnects the sessions holding the most unsent output until all of them together hold
    /// at most [`MAX_TOTAL_OUTPUT`].
    fn enforce_output_budget(&mut self, ops: &mut EventOps) {
        let mut total: usize = self.sessions.values().map(Session::pending_out).sum();
        while total > MAX_TOTAL_OUTPUT {
            let Some((&fd, s)) = self.sessions.iter().max_by_key(|(_, s)| s.pending_out()) else {
                return;
            };
            let held = s.pending_out();
            log::warn!(
                "monitor: session {} disconnected: it left {} KiB of replies and events unread \
                 (all sessions together may hold {} MiB)",
                s.id.0,
                held >> 10,
                MAX_TOTAL_OUTPUT >> 20
            );
            total -= held;
            self.close_session(fd, ops);
        }
    }
}

fn negotiate(req: &Request) -> Result<(), QmpError> {
    const PARAMS: &[Param] = &[Param {
        name: "enable",
        kind: ParamKind::StrList,
        required: false,
    }];
    check_args(PARAMS, &req.arguments)?;
    if let Some(caps) = req.arguments.get("enable").and_then(Value::as_array) {
        if let Some(c) = caps.first().and_then(Value::as_str) {
            return Err(QmpError::generic(format!("Capability '{c}' not available")));
        }
    }
    Ok(())
}

impl MutEventSubscriber for Monitor {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.handle.kick_fd(), EventSet::IN)) {
            log::error!("monitor: cannot watch its eventfd: {e:?}");
        }
        for l in &self.listeners {
            for fd in [l.listener.fd(), l.gate.timer_fd()] {
                if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                    log::error!("monitor: cannot watch listener {}: {e:?}", l.addr);
                }
            }
        }
        for s in std::mem::take(&mut self.early) {
            self.add_session(s, ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.handle.kick_fd() {
            self.deliver_outgoing(Some(ops));
            return;
        }
        if let Some(i) = self.listeners.iter().position(|l| l.listener.fd() == fd) {
            self.accept(i, ops);
            return;
        }
        if let Some(i) = self.listeners.iter().position(|l| l.gate.timer_fd() == fd) {
            let l = &mut self.listeners[i];
            if l.gate.on_timer() {
                // Watch the listener again; it is reported at once if connections wait.
                if let Err(e) = ops.add(Events::new_raw(l.listener.fd(), EventSet::IN)) {
                    log::error!("monitor: cannot watch listener {}: {e:?}", l.addr);
                }
            }
            return;
        }
        if self.sessions.contains_key(&fd) {
            if set.intersects(EventSet::ERROR) {
                self.close_session(fd, ops);
                return;
            }
            let readable =
                set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP);
            self.service_session(fd, readable, ops);
            // The peer is gone, and what it sent cannot be read now (a guest command of the
            // session is with the agent): epoll reports the hang-up whatever the interest set,
            // so waiting would spin. Drop the session and its queued requests, as QEMU drops
            // a closed client's request queue; the reply in flight is lost silently.
            if set.contains(EventSet::HANG_UP) && self.sessions.get(&fd).is_some_and(|s| !s.reads())
            {
                self.close_session(fd, ops);
            }
        }
        // Replies produced synchronously (e.g. by the machine) go out in this same wakeup.
        self.deliver_outgoing(Some(ops));
    }
}

/// Waits until `fd` is readable (true) or `abort` is (false).
pub fn wait_readable(fd: RawFd, abort: RawFd) -> io::Result<bool> {
    loop {
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: abort,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `pfds` is a valid, exclusively borrowed array of 2 pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfds[1].revents != 0 {
            return Ok(false);
        }
        if pfds[0].revents != 0 {
            return Ok(true);
        }
    }
}
