//! Character-device backends behind one handle type.
//!
//! A [`Chardev`] joins a *backend* (socket, file, stdio, pty, ringbuf, null) to one *frontend*
//! (a serial port, a virtio-serial port, the QMP proxy). The frontend writes with
//! [`Chardev::write`] and receives bytes and open/close events through the [`Frontend`] trait.
//! Backends with file descriptors are driven by the event loop through [`Chardev::subscriber`].
//!
//! Everything runs on the VMM's one event-loop thread. Frontend callbacks are never made while
//! the chardev's own state is borrowed, so a frontend may write back from inside `receive`.

pub mod opts;
pub mod qmp_proxy;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use evloop::{AcceptGate, Interest, OutBuf, Timer};
use qmp::server::{Listener, Stream};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use opts::{Backend, ChardevSpec, OptsError, SocketAddr, SocketSpec};

/// Most bytes a chardev buffers toward a slow peer by default; beyond that [`Chardev::write`]
/// takes fewer bytes than offered, and the frontend keeps the rest (a virtio-serial port then
/// stops taking the guest's output: the guest's `write()` blocks until the host reads).
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;

/// A change of the backend's connection state, as the frontend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChardevEvent {
    /// A peer is there (socket connected, pty slave opened, ...).
    Opened,
    /// The peer went away.
    Closed,
}

/// The consumer of a chardev's input.
pub trait Frontend {
    /// Bytes from the backend; never more than the last [`Frontend::can_receive`] said.
    fn receive(&mut self, data: &[u8]);
    /// How many bytes the frontend can take now. Zero pauses input until
    /// [`Chardev::accept_input`] is called.
    fn can_receive(&self) -> usize {
        usize::MAX
    }
    /// The backend connected or disconnected.
    fn event(&mut self, ev: ChardevEvent);
    /// [`Chardev::write`] took fewer bytes than offered earlier, and the peer has since read
    /// enough that at least half the output limit is free again.
    fn write_ready(&mut self) {}
}

/// Errors creating a chardev.
#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    #[error("chardev '{id}': {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: io::Error,
    },
    #[error("chardev '{0}': {1}")]
    Invalid(String, String),
}

enum Kind {
    Null,
    File(File),
    /// `input`: stdin is still a source of bytes (pollable, not at EOF).
    Stdio {
        input: bool,
    },
    Pty {
        master: File,
        path: PathBuf,
        open: bool,
        poll: Timer,
    },
    Ringbuf {
        ring: VecDeque<u8>,
        size: usize,
    },
    Socket(SocketState),
}

/// A listening socket with its accept back-off (at the descriptor limit).
struct Listening {
    listener: Listener,
    gate: AcceptGate,
}

struct SocketState {
    spec: SocketSpec,
    listener: Option<Listening>,
    conn: Option<Stream>,
    retry: Timer,
    /// A client connect in progress, while `conn` is `None`.
    connecting: Option<Connecting>,
}

/// A client connect running on a thread of its own, as QEMU's asynchronous connect does: a
/// TCP peer that never answers (SYNs dropped) keeps `connect` blocked for minutes, and a name
/// may need a DNS lookup, neither of which may stall the event loop. The thread sends its
/// result and signals `done`.
struct Connecting {
    done: EventFd,
    result: std::sync::mpsc::Receiver<io::Result<Stream>>,
}

impl Connecting {
    fn start(addr: &SocketAddr) -> io::Result<Connecting> {
        let done = EventFd::new(EFD_NONBLOCK)?;
        let signal = done.try_clone()?;
        let (tx, result) = std::sync::mpsc::channel();
        let addr = addr.clone();
        std::thread::Builder::new()
            .name("chardev-connect".into())
            .spawn(move || {
                // Nobody listens any more if the chardev went away meanwhile.
                if tx.send(Stream::connect(&addr)).is_ok() {
                    let _ = signal.write(1);
                }
            })?;
        Ok(Connecting { done, result })
    }
}

impl SocketState {
    /// Starts a client connect unless connected or already connecting; on failure to start,
    /// tries again after the reconnect interval.
    fn start_connect(&mut self, id: &str) {
        if self.spec.server || self.conn.is_some() || self.connecting.is_some() {
            return;
        }
        match Connecting::start(&self.spec.addr) {
            Ok(c) => self.connecting = Some(c),
            Err(e) => {
                log::warn!("chardev '{id}': cannot start connecting: {e}");
                self.retry_later();
            }
        }
    }

    fn retry_later(&mut self) {
        if let Some(d) = self.spec.reconnect {
            let _ = self.retry.arm(d);
        }
    }
}

struct Inner {
    id: String,
    /// Label prefix in `query-chardev`'s filename (e.g. "qmp_proxy:" for a proxy's socket).
    filename_prefix: String,
    kind: Kind,
    frontend: Option<Rc<RefCell<dyn Frontend>>>,
    /// Bytes toward the peer that it has not taken yet (sockets only).
    out: OutBuf,
    /// Most bytes `out` may hold.
    out_limit: usize,
    /// A write was cut short by `out_limit`: tell the frontend when there is room again.
    out_refused: bool,
    kick: EventFd,
    /// What is registered with epoll.
    interest: Interest,
    input_paused: bool,
    /// Descriptors that ended (connections, finished connects), dropped once they are no longer
    /// registered with epoll: closed earlier, their number could be reused by another
    /// subscriber's new fd before the stale registration is removed.
    closed: Vec<Box<dyn AsRawFd>>,
}

/// A handle to one chardev; cheap to clone.
#[derive(Clone)]
pub struct Chardev {
    inner: Rc<RefCell<Inner>>,
}

/// What to tell the frontend after the state borrow is released.
enum Notify {
    Data(Vec<u8>),
    Event(ChardevEvent),
    WriteReady,
}

fn io_err(id: &str, what: impl Into<String>, source: io::Error) -> ChardevError {
    ChardevError::Io {
        id: id.to_string(),
        what: what.into(),
        source,
    }
}

impl Chardev {
    /// Creates the backend `spec` asks for. `qmp_proxy` specs are built with
    /// [`qmp_proxy::attach`] instead, which uses this for its socket.
    pub fn new(spec: &ChardevSpec) -> Result<Chardev, ChardevError> {
        let id = spec.id.clone();
        let kind = match &spec.backend {
            Backend::Null => Kind::Null,
            Backend::File { path, append } => {
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(path)
                    .map_err(|e| io_err(&id, format!("cannot open {}", path.display()), e))?;
                Kind::File(f)
            }
            Backend::Stdio => Kind::Stdio {
                input: stdin_pollable(),
            },
            Backend::Pty => {
                let (master, path) = open_pty().map_err(|e| io_err(&id, "cannot open a pty", e))?;
                eprintln!(
                    "char device redirected to {} (label {})",
                    path.display(),
                    id
                );
                Kind::Pty {
                    master,
                    path,
                    open: false,
                    poll: Timer::new().map_err(|e| io_err(&id, "timerfd", e))?,
                }
            }
            Backend::Ringbuf { size } => Kind::Ringbuf {
                ring: VecDeque::new(),
                size: *size,
            },
            Backend::Socket(s) => {
                let mut st = SocketState {
                    spec: s.clone(),
                    listener: None,
                    conn: None,
                    retry: Timer::new().map_err(|e| io_err(&id, "timerfd", e))?,
                    connecting: None,
                };
                if s.server {
                    let listener = Listener::bind(&s.addr)
                        .map_err(|e| io_err(&id, format!("cannot listen on {}", s.addr), e))?;
                    let gate = AcceptGate::new(format!("chardev '{id}'"))
                        .map_err(|e| io_err(&id, "timerfd", e))?;
                    st.listener = Some(Listening { listener, gate });
                } else if s.reconnect.is_some() {
                    // Connected (or retried) in the background, as QEMU does with `reconnect`.
                    st.start_connect(&id);
                } else {
                    // Without `reconnect` a peer that is not there is a start-up error.
                    let c = Stream::connect(&s.addr)
                        .map_err(|e| io_err(&id, format!("cannot connect to {}", s.addr), e))?;
                    st.conn = Some(c);
                }
                if let Some(c) = &st.conn {
                    c.set_nonblocking(true)
                        .map_err(|e| io_err(&id, "socket", e))?;
                }
                Kind::Socket(st)
            }
            Backend::QmpProxy { .. } => {
                return Err(ChardevError::Invalid(
                    id,
                    "qmp_proxy chardevs are created with chardev::qmp_proxy::attach".into(),
                ))
            }
        };
        Ok(Chardev {
            inner: Rc::new(RefCell::new(Inner {
                id,
                filename_prefix: String::new(),
                kind,
                frontend: None,
                out: OutBuf::new(),
                out_limit: DEFAULT_OUTPUT_LIMIT,
                out_refused: false,
                kick: EventFd::new(EFD_NONBLOCK).map_err(|e| io_err(&spec.id, "eventfd", e))?,
                interest: Interest::new(),
                input_paused: false,
                closed: Vec::new(),
            })),
        })
    }

    /// For a listening socket with `wait=on`: blocks until a peer connects. Returns false when
    /// `abort` (e.g. a signalfd) becomes readable first.
    pub fn wait_for_peer(&self, abort: RawFd) -> io::Result<bool> {
        let mut i = self.inner.borrow_mut();
        let Kind::Socket(s) = &mut i.kind else {
            return Ok(true);
        };
        let Some(l) = s
            .listener
            .as_ref()
            .map(|l| &l.listener)
            .filter(|_| s.spec.server && s.spec.wait)
        else {
            return Ok(true);
        };
        while s.conn.is_none() {
            if !qmp::server::wait_readable(l.fd(), abort)? {
                return Ok(false);
            }
            match l.accept() {
                Ok(c) => {
                    c.set_nonblocking(true)?;
                    s.conn = Some(c);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// True for a listening socket with `wait=on`.
    pub fn waits_for_peer(&self) -> bool {
        matches!(&self.inner.borrow().kind, Kind::Socket(s) if s.spec.server && s.spec.wait)
    }

    /// The chardev's id.
    pub fn id(&self) -> String {
        self.inner.borrow().id.clone()
    }

    /// QEMU's `query-chardev` filename, e.g. `unix:/tmp/s,server=on` or `disconnected:...`.
    pub fn filename(&self) -> String {
        let i = self.inner.borrow();
        let f = match &i.kind {
            Kind::Null => "null".to_string(),
            Kind::File(_) => "file".to_string(),
            Kind::Stdio { .. } => "stdio".to_string(),
            Kind::Pty { path, .. } => format!("pty:{}", path.display()),
            Kind::Ringbuf { .. } => "ringbuf".to_string(),
            Kind::Socket(s) => {
                let base = format!(
                    "{}{}",
                    s.spec.addr,
                    if s.spec.server { ",server=on" } else { "" }
                );
                if s.conn.is_some() {
                    base
                } else {
                    format!("disconnected:{base}")
                }
            }
        };
        format!("{}{}", i.filename_prefix, f)
    }

    /// True while a peer is connected (always true for backends without a peer).
    pub fn is_open(&self) -> bool {
        match &self.inner.borrow().kind {
            Kind::Socket(s) => s.conn.is_some(),
            Kind::Pty { open, .. } => *open,
            _ => true,
        }
    }

    /// True when a frontend is attached (`frontend-open` in `query-chardev`).
    pub fn has_frontend(&self) -> bool {
        self.inner.borrow().frontend.is_some()
    }

    /// Attaches the frontend. It gets [`ChardevEvent::Opened`] at once if a peer is already there.
    pub fn set_frontend(&self, fe: Rc<RefCell<dyn Frontend>>) {
        self.inner.borrow_mut().frontend = Some(fe.clone());
        if self.is_open() {
            fe.borrow_mut().event(ChardevEvent::Opened);
        }
    }

    /// Sets how many bytes may wait for a slow peer (default [`DEFAULT_OUTPUT_LIMIT`]).
    pub fn set_output_limit(&self, limit: usize) {
        self.inner.borrow_mut().out_limit = limit;
    }

    pub(crate) fn set_filename_prefix(&self, p: &str) {
        self.inner.borrow_mut().filename_prefix = p.to_string();
    }

    /// Writes `data` toward the peer. Returns how many bytes were taken: all of them unless the
    /// buffer limit is reached. Without a peer, data is dropped (as QEMU's socket chardev does)
    /// and `NotConnected` is returned.
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        match &mut i.kind {
            Kind::Null => Ok(data.len()),
            Kind::File(f) => f.write_all(data).map(|_| data.len()),
            Kind::Stdio { .. } => {
                let mut o = io::stdout().lock();
                o.write_all(data)?;
                o.flush()?;
                Ok(data.len())
            }
            Kind::Ringbuf { ring, size } => {
                ring.extend(data);
                while ring.len() > *size {
                    ring.pop_front();
                }
                Ok(data.len())
            }
            Kind::Pty { master, open, .. } => {
                if !*open {
                    return Ok(data.len());
                }
                // Terminal output is best effort, as in QEMU: a full pty drops bytes.
                match master.write(data) {
                    Ok(_) => Ok(data.len()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(data.len()),
                    Err(e) => Err(e),
                }
            }
            Kind::Socket(s) => {
                let Some(conn) = s.conn.as_mut() else {
                    return Err(io::Error::new(io::ErrorKind::NotConnected, "not connected"));
                };
                let pending = i.out.len();
                let mut taken = 0;
                if pending == 0 {
                    // Fast path: straight to the socket.
                    loop {
                        match conn.write(&data[taken..]) {
                            Ok(n) => {
                                taken += n;
                                if taken == data.len() || n == 0 {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // A broken connection is noticed and reported by the read side.
                            Err(_) => return Ok(data.len()),
                        }
                    }
                }
                let rest = &data[taken..];
                let room = i.out_limit.saturating_sub(pending);
                let n = rest.len().min(room);
                if n < rest.len() {
                    i.out_refused = true;
                }
                if n > 0 {
                    i.out.push(&rest[..n]);
                    let _ = i.kick.write(1);
                }
                Ok(taken + n)
            }
        }
    }

    /// The frontend can take input again after returning 0 from `can_receive`.
    pub fn accept_input(&self) {
        let i = self.inner.borrow();
        let _ = i.kick.write(1);
    }

    /// Reads and removes up to `size` bytes from a ringbuf chardev.
    pub fn ringbuf_read(&self, size: usize) -> Option<Vec<u8>> {
        match &mut self.inner.borrow_mut().kind {
            Kind::Ringbuf { ring, .. } => {
                let n = size.min(ring.len());
                Some(ring.drain(..n).collect())
            }
            _ => None,
        }
    }

    /// True for ringbuf chardevs.
    pub fn is_ringbuf(&self) -> bool {
        matches!(self.inner.borrow().kind, Kind::Ringbuf { .. })
    }

    /// Removes the unix socket file this chardev created, if any (unless another process's
    /// socket is there now).
    pub fn cleanup(&self) {
        if let Kind::Socket(SocketState {
            listener: Some(l), ..
        }) = &self.inner.borrow().kind
        {
            l.listener.remove_socket_file();
        }
    }

    /// The event-loop subscriber driving this chardev's fds (None when it has none).
    pub fn subscriber(&self) -> Option<Box<dyn MutEventSubscriber>> {
        match self.inner.borrow().kind {
            Kind::Null | Kind::File(_) | Kind::Ringbuf { .. } => None,
            _ => Some(Box::new(ChardevSubscriber(self.clone()))),
        }
    }

    fn notify(&self, notes: Vec<Notify>) {
        if notes.is_empty() {
            return;
        }
        let fe = self.inner.borrow().frontend.clone();
        if let Some(fe) = fe {
            for n in notes {
                match n {
                    Notify::Data(d) => fe.borrow_mut().receive(&d),
                    Notify::Event(e) => fe.borrow_mut().event(e),
                    Notify::WriteReady => fe.borrow_mut().write_ready(),
                }
            }
        }
    }

    fn room(&self) -> usize {
        let fe = self.inner.borrow().frontend.clone();
        match fe {
            Some(fe) => fe.borrow().can_receive().min(65536),
            None => 65536,
        }
    }

    /// Computes the interest sets wanted now and applies them.
    fn update_interest(&self, ops: &mut EventOps) {
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        let mut want: Vec<(RawFd, EventSet)> = vec![(i.kick.as_raw_fd(), EventSet::IN)];
        let out_pending = !i.out.is_empty();
        match &i.kind {
            Kind::Stdio { input: true } if !i.input_paused => {
                want.push((libc::STDIN_FILENO, EventSet::IN));
            }
            Kind::Pty {
                master, open, poll, ..
            } => {
                want.push((poll.as_raw_fd(), EventSet::IN));
                if *open && !i.input_paused {
                    want.push((master.as_raw_fd(), EventSet::IN));
                }
            }
            Kind::Socket(s) => {
                want.push((s.retry.as_raw_fd(), EventSet::IN));
                if let Some(l) = &s.listener {
                    want.push((l.gate.timer_fd(), EventSet::IN));
                }
                if let Some(c) = &s.connecting {
                    want.push((c.done.as_raw_fd(), EventSet::IN));
                }
                match &s.conn {
                    Some(c) => {
                        let mut set = EventSet::empty();
                        if !i.input_paused {
                            set |= EventSet::IN;
                        }
                        if out_pending {
                            set |= EventSet::OUT;
                        }
                        want.push((c.as_raw_fd(), set));
                    }
                    None => {
                        if let Some(l) = s.listener.as_ref().filter(|l| !l.gate.paused()) {
                            want.push((l.listener.fd(), EventSet::IN));
                        }
                    }
                }
            }
            _ => {}
        }
        i.interest
            .apply(ops, &want, &format_args!("chardev '{}'", i.id));
        // Deregistered now: they may close.
        i.closed.clear();
    }

    /// Handles readiness of `fd`; returns what to tell the frontend.
    fn handle(&self, fd: RawFd, set: EventSet) -> Vec<Notify> {
        let room = self.room();
        let mut notes = Vec::new();
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        if fd == i.kick.as_raw_fd() {
            let _ = i.kick.read();
            i.input_paused = false;
            return notes;
        }
        if room == 0 {
            i.input_paused = true;
            return notes;
        }
        let mut buf = vec![0u8; room];
        match &mut i.kind {
            Kind::Stdio { input } if fd == libc::STDIN_FILENO => match read_stdin(&mut buf) {
                Ok(0) | Err(_) => *input = false,
                Ok(n) => notes.push(Notify::Data(buf[..n].to_vec())),
            },
            Kind::Pty {
                master, open, poll, ..
            } => {
                if fd == poll.as_raw_fd() {
                    if poll.fired() && !*open {
                        *open = true;
                        notes.push(Notify::Event(ChardevEvent::Opened));
                    }
                } else if fd == master.as_raw_fd() {
                    match master.read(&mut buf) {
                        Ok(n) if n > 0 => notes.push(Notify::Data(buf[..n].to_vec())),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        _ => {
                            // No slave open (EIO): look again in a second, as QEMU does.
                            *open = false;
                            let _ = poll.arm(Duration::from_secs(1));
                            notes.push(Notify::Event(ChardevEvent::Closed));
                        }
                    }
                }
            }
            Kind::Socket(s) => {
                if fd == s.retry.as_raw_fd() {
                    if s.retry.fired() {
                        s.start_connect(&i.id);
                    }
                } else if let Some(l) = s.listener.as_mut().filter(|l| l.gate.timer_fd() == fd) {
                    // The pause is over: update_interest watches the listener again.
                    l.gate.on_timer();
                } else if s
                    .connecting
                    .as_ref()
                    .is_some_and(|c| c.done.as_raw_fd() == fd)
                {
                    let c = s.connecting.as_ref().expect("checked above");
                    let _ = c.done.read();
                    let result = match c.result.try_recv() {
                        Ok(r) => r,
                        Err(std::sync::mpsc::TryRecvError::Empty) => return notes,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            Err(io::Error::other("connect thread ended without a result"))
                        }
                    };
                    if let Some(c) = s.connecting.take() {
                        i.closed.push(Box::new(c.done));
                    }
                    match result.and_then(|c| c.set_nonblocking(true).map(|_| c)) {
                        Ok(c) => {
                            log::info!("chardev '{}': connected to {}", i.id, s.spec.addr);
                            s.conn = Some(c);
                            notes.push(Notify::Event(ChardevEvent::Opened));
                        }
                        Err(e) => {
                            log::debug!("chardev '{}': connect to {}: {e}", i.id, s.spec.addr);
                            s.retry_later();
                        }
                    }
                } else if let Some(l) = s.listener.as_mut().filter(|l| l.listener.fd() == fd) {
                    if s.conn.is_none() {
                        match l.listener.accept() {
                            Ok(c) => {
                                l.gate.accepted();
                                if c.set_nonblocking(true).is_ok() {
                                    s.conn = Some(c);
                                    notes.push(Notify::Event(ChardevEvent::Opened));
                                }
                            }
                            Err(e)
                                if !matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) =>
                            {
                                l.gate.failed(&e);
                            }
                            Err(_) => {}
                        }
                    }
                } else if let Some(conn) = s.conn.as_mut().filter(|c| c.as_raw_fd() == fd) {
                    let mut closed = set.contains(EventSet::ERROR);
                    if set.contains(EventSet::OUT) && !closed {
                        closed = i.out.write_to(conn).is_err();
                        if !closed && i.out_refused && i.out.len() <= i.out_limit / 2 {
                            i.out_refused = false;
                            notes.push(Notify::WriteReady);
                        }
                    }
                    if !closed
                        && set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP)
                    {
                        match conn.read(&mut buf) {
                            Ok(0) => closed = true,
                            Ok(n) => notes.push(Notify::Data(buf[..n].to_vec())),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => closed = true,
                        }
                    }
                    if closed {
                        log::info!("chardev '{}': peer disconnected", i.id);
                        // Kept open until its epoll registration is removed (update_interest).
                        if let Some(c) = s.conn.take() {
                            i.closed.push(Box::new(c));
                        }
                        i.out.clear();
                        i.out_refused = false;
                        s.retry_later();
                        notes.push(Notify::Event(ChardevEvent::Closed));
                    }
                }
            }
            _ => {}
        }
        notes
    }
}

struct ChardevSubscriber(Chardev);

impl MutEventSubscriber for ChardevSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        {
            let mut i = self.0.inner.borrow_mut();
            if let Kind::Pty { poll, .. } = &mut i.kind {
                let _ = poll.arm(Duration::from_millis(1));
            }
        }
        self.0.update_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let notes = self.0.handle(events.fd(), events.event_set());
        self.0.notify(notes);
        self.0.update_interest(ops);
    }
}

/// Opens a pty master (non-blocking) and returns it with the slave's path.
fn open_pty() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt takes flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by posix_openpt and is owned by nobody else.
    let master = unsafe { File::from_raw_fd(fd) };
    // SAFETY: grantpt/unlockpt act on the valid master fd we own.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is a writable buffer of the length passed; ptsname_r NUL-terminates it.
    if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Ok((master, PathBuf::from(path.to_string_lossy().into_owned())))
}

/// Reads fd 0 directly: std's buffered stdin could hold bytes epoll no longer reports.
fn read_stdin(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; fd 0 is only read here.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// True when stdin can be watched with epoll (not a regular file or /dev/null, which epoll
/// refuses; such a stdin simply gives no input).
fn stdin_pollable() -> bool {
    // SAFETY: epoll_create1 takes flags only and returns a new fd or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return false;
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: `ep` is our epoll fd and `ev` a valid event struct; fd 0 is only registered.
    let ok = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, libc::STDIN_FILENO, &mut ev) } == 0;
    // SAFETY: `ep` was created above and is closed once.
    unsafe { libc::close(ep) };
    ok
}
