//! `QmpProxy`: forwards `guest-*` commands from QMP sessions to one guest agent channel.
//!
//! One proxy per agent channel, shared by every session. Requests are queued FIFO and sent one at a
//! time (agents are serial); each reply goes back to the session that asked, with that client's
//! `id`. Before the first request after the agent (re)appears, and after any timeout, the proxy
//! resynchronises with `0xFF` + `guest-sync-delimited` and a fresh random id, discarding stale
//! bytes. Commands that send no reply on success (`guest-shutdown`, `guest-suspend-*`) are followed
//! by a sync, so their errors are still reported and success is known without guessing.

use evloop::Timer;
use qjson::{Parsed, Streamer};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::hub::{MonitorHandle, SessionId};
use crate::protocol::{self, QmpError};

/// Default host-side timeout for one guest command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest agent reply accepted: a 48 MiB `guest-file-read` is 64 MiB of base64, plus framing.
pub const MAX_REPLY: usize = 80 << 20;
/// Most bytes of requests an agent channel may hold for an agent that reads slowly (the
/// virtio-serial port's outbox, the `path=` socket's buffer): the proxy sends one request at a
/// time, and the largest (QMP takes requests of up to 64 MiB; an 8 MiB `guest-file-write` is
/// about 11 MiB of JSON) must fit.
pub const MAX_AGENT_BACKLOG: usize = 96 << 20;
/// Most requests waiting for the agent at once (each session has at most one).
pub const MAX_QUEUE: usize = 4096;
/// How long one sync attempt waits before a new one is sent.
const SYNC_RETRY: Duration = Duration::from_secs(2);

/// Commands that qemu-ga answers only on failure (`success-response: false`).
const NO_SUCCESS_RESPONSE: &[&str] = &[
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

/// The byte path to the agent (a socket to a host-side agent, or a virtio-serial port).
pub trait AgentChannel {
    /// Queues `data` for the agent. Errors mean the channel is gone; the owner reports that with
    /// [`QmpProxy::on_close`].
    fn send(&mut self, data: &[u8]) -> io::Result<()>;
}

#[derive(Debug)]
enum Origin {
    Client {
        session: SessionId,
        id: Option<Value>,
    },
    /// The proxy's own `guest-info`, to learn the agent's command list.
    Info,
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    name: String,
    args: Map<String, Value>,
    deadline: Instant,
}

#[derive(Debug)]
enum State {
    /// Nothing sent; the next request may go.
    Idle,
    /// Waiting for `0xFF{"return": id}`.
    Syncing { id: i64, retry_at: Instant },
    /// Waiting for the reply to `req`, sent with wire id `wire_id`.
    InFlight { req: Pending, wire_id: u64 },
    /// `req` has no success reply; waiting for the sync sent right after it.
    NoReply { req: Option<Pending>, sync_id: i64 },
}

/// Whether the input path is skipping bytes up to the next 0xFF delimiter.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    SkipToDelimiter,
    Normal,
}

/// See the module documentation.
pub struct QmpProxy {
    id: String,
    timeout: Duration,
    monitor: MonitorHandle,
    channel: Option<Box<dyn AgentChannel>>,
    connected: bool,
    up: bool,
    needs_sync: bool,
    state: State,
    queue: VecDeque<Pending>,
    rx: Rx,
    parser: Streamer,
    next_wire_id: u64,
    guest_commands: Vec<(String, bool)>,
    timer: Timer,
    /// Parse errors in the agent's output since the channel opened (for rate-limited logging).
    bad_data: u64,
}

impl QmpProxy {
    /// A proxy for the agent channel named `id` (the chardev id, used in events).
    pub fn new(id: &str, timeout: Duration, monitor: MonitorHandle) -> io::Result<Self> {
        Ok(QmpProxy {
            id: id.to_string(),
            timeout,
            monitor,
            channel: None,
            connected: false,
            up: false,
            needs_sync: true,
            state: State::Idle,
            queue: VecDeque::new(),
            rx: Rx::SkipToDelimiter,
            parser: Streamer::with_limits(MAX_REPLY, qjson::MAX_NESTING),
            next_wire_id: 1,
            guest_commands: Vec::new(),
            timer: Timer::new()?,
            bad_data: 0,
        })
    }

    /// The chardev id this proxy serves.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Attaches the byte path to the agent.
    pub fn set_channel(&mut self, ch: Box<dyn AgentChannel>) {
        self.channel = Some(ch);
    }

    /// The timer fd the event loop must watch; call [`QmpProxy::on_timer`] when it fires.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.fd()
    }

    /// The guest commands the agent reported in `guest-info` (name, enabled).
    pub fn guest_commands(&self) -> &[(String, bool)] {
        &self.guest_commands
    }

    /// The channel to the agent opened (socket connected, guest opened the port).
    pub fn on_open(&mut self) {
        log::info!("qmp_proxy {}: agent channel open", self.id);
        self.connected = true;
        self.bad_data = 0;
        self.needs_sync = true;
        self.state = State::Idle;
        self.reset_rx();
        self.pump();
    }

    /// The channel closed: every queued and in-flight request fails at once.
    pub fn on_close(&mut self) {
        if !self.connected {
            return;
        }
        log::info!("qmp_proxy {}: agent channel closed", self.id);
        self.connected = false;
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::InFlight { req, .. } => {
                self.fail(req, QmpError::generic("Guest agent disconnected"))
            }
            // The guest went away after a shutdown/suspend request it did not refuse: success.
            State::NoReply { req: Some(req), .. } => self.complete(req, json!({"return": {}})),
            _ => {}
        }
        for req in std::mem::take(&mut self.queue) {
            self.fail(req, QmpError::generic("Guest agent disconnected"));
        }
        if self.up {
            self.up = false;
            self.monitor
                .event("GUEST_AGENT_DOWN", Some(json!({"id": self.id})));
        }
        self.reset_rx();
        self.arm_timer();
    }

    /// A QMP session asks for guest command `name`. Errors are immediate (agent not connected,
    /// queue full); otherwise the reply arrives later through the monitor handle.
    pub fn submit(
        &mut self,
        session: SessionId,
        name: &str,
        args: Map<String, Value>,
        id: Option<Value>,
    ) -> Result<(), QmpError> {
        if !self.connected || self.channel.is_none() {
            return Err(QmpError::generic("Guest agent is not connected"));
        }
        if self.queue.len() >= MAX_QUEUE {
            return Err(QmpError::generic("Guest agent request queue is full"));
        }
        self.queue.push_back(Pending {
            origin: Origin::Client { session, id },
            name: name.to_string(),
            args,
            deadline: Instant::now() + self.timeout,
        });
        self.pump();
        Ok(())
    }

    /// A session went away: its queued requests are dropped, an in-flight reply will be discarded.
    pub fn session_closed(&mut self, session: SessionId) {
        self.queue
            .retain(|p| !matches!(p.origin, Origin::Client { session: s, .. } if s == session));
    }

    /// Bytes from the agent.
    pub fn on_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let delim = data.iter().position(|&b| b == 0xFF);
            if self.rx == Rx::SkipToDelimiter {
                match delim {
                    None => return,
                    Some(p) => {
                        self.rx = Rx::Normal;
                        self.parser.reset();
                        data = &data[p + 1..];
                        continue;
                    }
                }
            }
            let end = delim.unwrap_or(data.len());
            let mut msgs = Vec::new();
            // While syncing, only a reply right after a 0xFF matters: after bad data, skip to
            // the next delimiter instead of parsing the rest (a guest flooding the port with
            // garbage then costs a byte scan, not a parse).
            let syncing = matches!(self.state, State::Syncing { .. });
            let mut skip_rest = false;
            self.parser.feed(&data[..end], |p| {
                skip_rest |= syncing && matches!(p, Parsed::Error(_));
                msgs.push(p);
                !skip_rest
            });
            for m in msgs {
                if self.rx == Rx::SkipToDelimiter {
                    break;
                }
                match m {
                    Parsed::Value(v) => self.on_message(v),
                    Parsed::Error(e) => {
                        // A hostile guest can send millions of these: log 1, 2, 4, 8, ...
                        self.bad_data += 1;
                        if self.bad_data.is_power_of_two() {
                            log::warn!(
                                "qmp_proxy {}: bad data from agent ({} so far): {}",
                                self.id,
                                self.bad_data,
                                e.desc()
                            );
                        }
                        if e.is_limit() {
                            // Whatever was in flight is lost in there; resync.
                            self.needs_sync = true;
                        }
                    }
                }
            }
            if skip_rest {
                self.rx = Rx::SkipToDelimiter;
            }
            if let Some(p) = delim {
                // 0xFF: a delimiter from the agent (sync-delimited reply follows); reset the parser.
                self.rx = Rx::Normal;
                self.parser.reset();
                data = &data[p + 1..];
            } else {
                break;
            }
        }
        self.pump();
    }

    /// The timer fd was readable: expire requests and retry syncs. Never blocks: the timer may
    /// have been re-armed for a later deadline since the wakeup (a reply handled in the same
    /// epoll batch); then nothing is due and nothing happens but the re-arm below.
    pub fn on_timer(&mut self) {
        self.timer.fired();
        let now = Instant::now();
        // Requests that waited too long in the queue never reached the agent.
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].deadline <= now {
                if let Some(req) = self.queue.remove(i) {
                    let e = self.timeout_error();
                    self.fail(req, e);
                }
            } else {
                i += 1;
            }
        }
        let expired = match &self.state {
            State::Syncing { retry_at, .. } => *retry_at <= now,
            State::InFlight { req, .. } => req.deadline <= now,
            State::NoReply { req, .. } => req.as_ref().is_none_or(|r| r.deadline <= now),
            State::Idle => false,
        };
        if expired {
            match std::mem::replace(&mut self.state, State::Idle) {
                State::InFlight { req, .. } => {
                    log::warn!("qmp_proxy {}: {} timed out", self.id, req.name);
                    let e = self.timeout_error();
                    self.fail(req, e);
                }
                State::NoReply { req: Some(req), .. } => {
                    let e = self.timeout_error();
                    self.fail(req, e);
                }
                _ => {}
            }
            self.needs_sync = true;
        }
        self.pump();
    }

    fn timeout_error(&self) -> QmpError {
        QmpError::generic(format!(
            "Guest agent did not respond within {} ms",
            self.timeout.as_millis()
        ))
    }

    fn reset_rx(&mut self) {
        self.rx = Rx::SkipToDelimiter;
        self.parser.reset();
    }

    fn send(&mut self, data: &[u8]) -> bool {
        match self.channel.as_mut() {
            Some(ch) => match ch.send(data) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("qmp_proxy {}: write to agent failed: {e}", self.id);
                    false
                }
            },
            None => false,
        }
    }

    fn send_sync(&mut self, with_ff: bool) -> i64 {
        let id = random_sync_id();
        let mut msg = Vec::with_capacity(80);
        if with_ff {
            msg.push(0xFF);
        }
        msg.extend_from_slice(
            format!(r#"{{"execute":"guest-sync-delimited","arguments":{{"id":{id}}}}}"#).as_bytes(),
        );
        msg.push(b'\n');
        self.send(&msg);
        id
    }

    /// Sends the next thing if the line is idle.
    fn pump(&mut self) {
        if self.connected && matches!(self.state, State::Idle) {
            if self.needs_sync {
                let id = self.send_sync(true);
                self.reset_rx();
                self.state = State::Syncing {
                    id,
                    retry_at: Instant::now() + SYNC_RETRY.min(self.timeout),
                };
            } else if let Some(req) = self.queue.pop_front() {
                let wire_id = self.next_wire_id;
                self.next_wire_id += 1;
                let mut m = Map::new();
                m.insert("execute".into(), Value::String(req.name.clone()));
                if !req.args.is_empty() {
                    m.insert("arguments".into(), Value::Object(req.args.clone()));
                }
                m.insert("id".into(), json!(wire_id));
                let mut line = Vec::new();
                protocol::encode_line(&Value::Object(m), b"\n", &mut line);
                self.send(&line);
                if self.no_success_response(&req.name) {
                    let sync_id = self.send_sync(false);
                    self.state = State::NoReply {
                        req: Some(req),
                        sync_id,
                    };
                } else {
                    self.state = State::InFlight { req, wire_id };
                }
            }
        }
        self.arm_timer();
    }

    fn no_success_response(&self, name: &str) -> bool {
        NO_SUCCESS_RESPONSE.contains(&name)
    }

    fn arm_timer(&mut self) {
        let mut next: Option<Instant> = self.queue.iter().map(|p| p.deadline).min();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.state {
            State::Syncing { retry_at, .. } => consider(*retry_at),
            State::InFlight { req, .. } => consider(req.deadline),
            State::NoReply { req: Some(req), .. } => consider(req.deadline),
            _ => {}
        }
        let res = match next {
            Some(t) => {
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                self.timer.arm(d)
            }
            None => self.timer.disarm(),
        };
        if let Err(e) = res {
            log::error!("qmp_proxy {}: timer: {e}", self.id);
        }
    }

    fn on_message(&mut self, v: Value) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {
                log::debug!("qmp_proxy {}: unsolicited agent message dropped", self.id);
            }
            State::Syncing { id, retry_at } => {
                if v.get("return").and_then(Value::as_i64) == Some(id) && v.get("error").is_none() {
                    self.needs_sync = false;
                    if !self.up {
                        self.up = true;
                        self.monitor
                            .event("GUEST_AGENT_UP", Some(json!({"id": self.id})));
                        self.queue.push_front(Pending {
                            origin: Origin::Info,
                            name: "guest-info".into(),
                            args: Map::new(),
                            deadline: Instant::now() + self.timeout,
                        });
                    }
                } else {
                    // A stale reply (e.g. the parse error our 0xFF provokes); wait for ours.
                    self.rx = Rx::SkipToDelimiter;
                    self.state = State::Syncing { id, retry_at };
                }
            }
            State::InFlight { req, wire_id } => match v.get("id") {
                Some(rid) if rid != &json!(wire_id) => {
                    log::debug!("qmp_proxy {}: stale reply dropped", self.id);
                    self.state = State::InFlight { req, wire_id };
                }
                _ => {
                    if v.get("return").is_none() && v.get("error").is_none() {
                        self.state = State::InFlight { req, wire_id };
                        return;
                    }
                    self.complete(req, v);
                }
            },
            State::NoReply { req, sync_id } => {
                if v.get("return").and_then(Value::as_i64) == Some(sync_id) {
                    if let Some(req) = req {
                        self.complete(req, json!({"return": {}}));
                    }
                } else if v.get("error").is_some() {
                    if let Some(req) = req {
                        self.complete(req, v);
                    }
                    self.state = State::NoReply { req: None, sync_id };
                } else {
                    self.state = State::NoReply { req, sync_id };
                }
            }
        }
    }

    fn complete(&mut self, req: Pending, mut v: Value) {
        match req.origin {
            Origin::Client { session, id } => {
                if let Value::Object(m) = &mut v {
                    m.remove("id");
                    if let Some(id) = id {
                        m.insert("id".into(), id);
                    }
                }
                self.monitor.reply(session, v);
            }
            Origin::Info => {
                if let Some(cmds) = v
                    .pointer("/return/supported_commands")
                    .and_then(|c| c.as_array())
                {
                    self.guest_commands = cmds
                        .iter()
                        .filter_map(|c| {
                            let name = c.get("name")?.as_str()?;
                            let enabled = c.get("enabled").and_then(Value::as_bool).unwrap_or(true);
                            Some((name.to_string(), enabled))
                        })
                        .collect();
                }
            }
        }
    }

    fn fail(&mut self, req: Pending, e: QmpError) {
        if let Origin::Client { session, id } = req.origin {
            self.monitor.reply(session, protocol::reply_err(&e, id));
        }
    }
}

/// A random id in `1..=i64::MAX` (agents take signed 64-bit ids).
fn random_sync_id() -> i64 {
    let r = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    ((r >> 1) as i64).max(1)
}

/// The event-loop subscriber for a proxy's timer.
pub fn timer_subscriber(
    proxy: std::rc::Rc<std::cell::RefCell<QmpProxy>>,
) -> Box<dyn event_manager::MutEventSubscriber> {
    Box::new(ProxyTimer(proxy))
}

struct ProxyTimer(std::rc::Rc<std::cell::RefCell<QmpProxy>>);

impl event_manager::MutEventSubscriber for ProxyTimer {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        let fd = self.0.borrow().timer_fd();
        if let Err(e) = ops.add(event_manager::Events::new_raw(
            fd,
            event_manager::EventSet::IN,
        )) {
            log::error!("qmp_proxy: cannot watch timer: {e:?}");
        }
    }

    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        self.0.borrow_mut().on_timer();
    }
}

#[cfg(test)]
mod tests {
    //! The proxy's state machine driven byte by byte, as an agent would answer.
    use super::*;
    use crate::hub::Outgoing;
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Recorder(Rc<RefCell<Vec<u8>>>);

    impl AgentChannel for Recorder {
        fn send(&mut self, data: &[u8]) -> io::Result<()> {
            self.0.borrow_mut().extend_from_slice(data);
            Ok(())
        }
    }

    struct Rig {
        proxy: QmpProxy,
        sent: Rc<RefCell<Vec<u8>>>,
        monitor: MonitorHandle,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::with_timeout(Duration::from_secs(30))
        }

        fn with_timeout(timeout: Duration) -> Rig {
            let monitor = MonitorHandle::new().unwrap();
            let mut proxy = QmpProxy::new("qga0", timeout, monitor.clone()).unwrap();
            let sent = Rc::new(RefCell::new(Vec::new()));
            proxy.set_channel(Box::new(Recorder(sent.clone())));
            Rig {
                proxy,
                sent,
                monitor,
            }
        }

        /// The messages sent to the agent since the last call (0xFF bytes shown as "FF").
        fn take_sent(&self) -> Vec<Value> {
            let bytes = std::mem::take(&mut *self.sent.borrow_mut());
            let mut out = Vec::new();
            let mut p = Streamer::new();
            for part in bytes.split(|&b| b == 0xFF) {
                p.feed(part, |m| {
                    if let Parsed::Value(v) = m {
                        out.push(v);
                    }
                    true
                });
            }
            out
        }

        fn outgoing(&self) -> Vec<Value> {
            self.monitor
                .drain()
                .into_iter()
                .map(|m| match m {
                    Outgoing::Reply { session, msg } => json!({"to": session.0, "msg": msg}),
                    Outgoing::Event(e) => json!({"event": e["event"], "data": e["data"]}),
                })
                .collect()
        }

        /// Opens the channel and answers the sync and the internal guest-info.
        fn up(&mut self) {
            self.proxy.on_open();
            let sync = self.take_sent();
            let id = sync[0]["arguments"]["id"].clone();
            // qemu-ga answers the 0xFF with a parse error first.
            self.proxy
                .on_bytes(br#"{"error":{"class":"GenericError","desc":"JSON parse error"}}"#);
            self.proxy.on_bytes(b"\n");
            let mut reply = vec![0xFF];
            reply.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            self.proxy.on_bytes(&reply);
            let info = self.take_sent();
            assert_eq!(info[0]["execute"], "guest-info");
            let wid = info[0]["id"].clone();
            self.proxy.on_bytes(
                format!(r#"{{"return":{{"version":"x","supported_commands":[{{"name":"guest-ping","enabled":true}}]}},"id":{wid}}}"#)
                    .as_bytes(),
            );
            let ev = self.outgoing();
            assert_eq!(
                ev,
                vec![json!({"event":"GUEST_AGENT_UP","data":{"id":"qga0"}})]
            );
        }
    }

    #[test]
    fn sync_up_then_reply_with_client_id() {
        let mut r = Rig::new();
        r.up();
        assert_eq!(
            r.proxy.guest_commands(),
            &[("guest-ping".to_string(), true)]
        );
        r.proxy
            .submit(
                SessionId(7),
                "guest-ping",
                Map::new(),
                Some(json!({"mine": 1})),
            )
            .unwrap();
        let sent = r.take_sent();
        assert_eq!(sent[0]["execute"], "guest-ping");
        let wid = sent[0]["id"].clone();
        // A stale reply with another id is dropped; ours is delivered with the client's id.
        r.proxy.on_bytes(br#"{"return":{},"id":999999}"#);
        assert!(r.outgoing().is_empty());
        r.proxy
            .on_bytes(format!(r#"{{"return":{{}},"id":{wid}}}"#).as_bytes());
        assert_eq!(
            r.outgoing(),
            vec![json!({"to":7,"msg":{"return":{},"id":{"mine":1}}})]
        );
    }

    /// The timer became readable, then a reply handled first in the same epoll batch re-armed
    /// it for the next request: `on_timer` must not wait for that new deadline (the whole event
    /// loop would stand still until then).
    #[test]
    fn a_timer_rearmed_in_the_same_batch_does_not_stall_the_loop() {
        let timeout = Duration::from_millis(600);
        let mut r = Rig::with_timeout(timeout);
        r.up();
        r.proxy
            .submit(SessionId(1), "guest-ping", Map::new(), Some(json!(1)))
            .unwrap();
        let wid = r.take_sent()[0]["id"].clone();
        // The request's deadline passes: the timer fd is readable now.
        std::thread::sleep(timeout + Duration::from_millis(50));
        // Handled first: the reply, then a second request, which re-arms the timer.
        r.proxy
            .on_bytes(format!(r#"{{"return":{{}},"id":{wid}}}"#).as_bytes());
        r.proxy
            .submit(SessionId(2), "guest-ping", Map::new(), Some(json!(2)))
            .unwrap();
        let start = Instant::now();
        r.proxy.on_timer();
        let took = start.elapsed();
        assert!(took < Duration::from_millis(100), "on_timer took {took:?}");
        // Neither request was failed: the first was answered, the second is within its time.
        assert_eq!(
            r.outgoing(),
            vec![json!({"to":1,"msg":{"return":{},"id":1}})]
        );
    }

    #[test]
    fn no_reply_command_succeeds_on_sync_and_reports_errors() {
        let mut r = Rig::new();
        r.up();
        r.proxy
            .submit(SessionId(1), "guest-shutdown", Map::new(), Some(json!(1)))
            .unwrap();
        let sent = r.take_sent();
        assert_eq!(sent[0]["execute"], "guest-shutdown");
        assert_eq!(sent[1]["execute"], "guest-sync-delimited");
        let sid = sent[1]["arguments"]["id"].clone();
        let mut reply = vec![0xFF];
        reply.extend_from_slice(format!("{{\"return\": {sid}}}").as_bytes());
        r.proxy.on_bytes(&reply);
        assert_eq!(
            r.outgoing(),
            vec![json!({"to":1,"msg":{"return":{},"id":1}})]
        );

        // An error before the sync reply is the command's answer.
        r.proxy
            .submit(SessionId(2), "guest-suspend-ram", Map::new(), None)
            .unwrap();
        let sent = r.take_sent();
        let sid = sent[1]["arguments"]["id"].clone();
        r.proxy
            .on_bytes(br#"{"error":{"class":"GenericError","desc":"suspend not supported"}}"#);
        let mut reply = vec![0xFF];
        reply.extend_from_slice(format!("{{\"return\": {sid}}}").as_bytes());
        r.proxy.on_bytes(&reply);
        assert_eq!(
            r.outgoing(),
            vec![
                json!({"to":2,"msg":{"error":{"class":"GenericError","desc":"suspend not supported"}}})
            ]
        );

        // The guest going away after a shutdown request means it was obeyed.
        r.proxy
            .submit(SessionId(3), "guest-shutdown", Map::new(), None)
            .unwrap();
        r.proxy.on_close();
        let out = r.outgoing();
        assert_eq!(out[0], json!({"to":3,"msg":{"return":{}}}));
        assert_eq!(
            out[1],
            json!({"event":"GUEST_AGENT_DOWN","data":{"id":"qga0"}})
        );
    }

    #[test]
    fn garbage_from_the_agent_is_bounded_and_survivable() {
        let mut r = Rig::new();
        r.up();
        r.proxy
            .submit(SessionId(1), "guest-ping", Map::new(), None)
            .unwrap();
        let wid = r.take_sent()[0]["id"].clone();
        // Garbage without newlines, invalid UTF-8 and half objects, several MiB of it.
        let mut junk = Vec::new();
        for i in 0..50_000u32 {
            junk.extend_from_slice(b"{\"a\":[\"\xc3\x28");
            junk.extend_from_slice(&i.to_le_bytes());
        }
        for chunk in junk.chunks(4096) {
            r.proxy.on_bytes(chunk);
        }
        assert!(r.proxy.parser.pending_len() <= MAX_REPLY);
        // A 0xFF resets the parser; the real reply then gets through.
        r.proxy.on_bytes(b"\xff");
        r.proxy
            .on_bytes(format!(r#"{{"return":{{}},"id":{wid}}}"#).as_bytes());
        assert_eq!(r.outgoing(), vec![json!({"to":1,"msg":{"return":{}}})]);
    }

    #[test]
    fn requests_fail_at_once_without_an_agent() {
        let mut r = Rig::new();
        let e = r
            .proxy
            .submit(SessionId(1), "guest-ping", Map::new(), None)
            .unwrap_err();
        assert_eq!(e.desc, "Guest agent is not connected");
        r.up();
        r.proxy
            .submit(SessionId(1), "guest-ping", Map::new(), None)
            .unwrap();
        r.proxy
            .submit(SessionId(2), "guest-info", Map::new(), Some(json!("q")))
            .unwrap();
        r.proxy.on_close();
        let out = r.outgoing();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["msg"]["error"]["desc"], "Guest agent disconnected");
        assert_eq!(out[1]["msg"]["id"], "q");
        assert_eq!(out[2]["event"], "GUEST_AGENT_DOWN");
    }
}
