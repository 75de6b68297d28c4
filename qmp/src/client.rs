//! A small blocking QMP client, for tests, benchmarks and command-line tools.
//!
//! It speaks QMP (greeting + negotiation) or, with [`QmpClient::connect_agent`], the agent dialect
//! (no greeting; what `qmp-shell -N` does), and keeps events aside while waiting for replies.

use qjson::{Parsed, Streamer};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::protocol::{ErrorClass, QmpError};
use crate::server::{SocketAddr, Stream};

/// See the module documentation.
pub struct QmpClient {
    stream: Stream,
    parser: Streamer,
    incoming: VecDeque<Value>,
    events: VecDeque<Value>,
    greeting: Option<Value>,
    timeout: Duration,
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl QmpClient {
    /// Connects to a QMP monitor, reads the greeting and negotiates capabilities.
    pub fn connect(addr: &SocketAddr) -> io::Result<Self> {
        let mut c = Self::connect_agent(addr)?;
        let g = c.next_message()?;
        if g.get("QMP").is_none() {
            return Err(proto_err(format!("not a QMP greeting: {g}")));
        }
        c.greeting = Some(g);
        c.execute("qmp_capabilities", json!({}))?
            .map_err(|e| proto_err(format!("negotiation failed: {e}")))?;
        Ok(c)
    }

    /// Connects without expecting a greeting (a guest agent socket).
    pub fn connect_agent(addr: &SocketAddr) -> io::Result<Self> {
        let stream = Stream::connect(addr)?;
        let c = QmpClient {
            stream,
            parser: Streamer::new(),
            incoming: VecDeque::new(),
            events: VecDeque::new(),
            greeting: None,
            timeout: Duration::from_secs(60),
        };
        c.set_timeout(c.timeout)?;
        Ok(c)
    }

    /// The greeting, for QMP connections.
    pub fn greeting(&self) -> Option<&Value> {
        self.greeting.as_ref()
    }

    /// How long a read may block before failing with `TimedOut`.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        match &self.stream {
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.write_all(&line)
    }

    /// The next message that is not an event (events are kept for [`QmpClient::wait_event`]).
    pub fn next_reply(&mut self) -> io::Result<Value> {
        loop {
            let m = self.next_message()?;
            if m.get("event").is_some() {
                self.events.push_back(m);
            } else {
                return Ok(m);
            }
        }
    }

    /// Runs `cmd` and returns its `return` value or its error.
    pub fn execute(&mut self, cmd: &str, args: Value) -> io::Result<Result<Value, QmpError>> {
        let mut req = json!({"execute": cmd});
        if !args.is_null() {
            req["arguments"] = args;
        }
        self.send(&req)?;
        let r = self.next_reply()?;
        Ok(split_reply(&r))
    }

    /// Waits for event `name` (or returns one already received).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> io::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Ok(self.events.remove(i).unwrap_or_default());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {name} event within {timeout:?}"),
                ));
            }
            self.set_timeout(left)?;
            let m = self.next_message();
            self.set_timeout(self.timeout)?;
            match m {
                Ok(m) if m.get("event").is_some() => self.events.push_back(m),
                Ok(m) => self.incoming.push_back(m),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event, waiting as long as it takes (replies arriving meanwhile are dropped).
    pub fn next_event(&mut self) -> io::Result<Value> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            match self.next_message() {
                Ok(m) if m.get("event").is_some() => return Ok(m),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Events received so far and not yet taken.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// The next message of any kind.
    pub fn next_message(&mut self) -> io::Result<Value> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.incoming.pop_front() {
                return Ok(m);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let incoming = &mut self.incoming;
            // 0xFF (sync-delimited replies from an agent) is a delimiter, not an error, here.
            for part in buf[..n].split(|&b| b == 0xFF) {
                self.parser.feed(part, |p| {
                    if let Parsed::Value(v) = p {
                        incoming.push_back(v);
                    }
                    true
                });
            }
        }
    }
}

/// Splits a reply into its `return` value or its error.
pub fn split_reply(r: &Value) -> Result<Value, QmpError> {
    if let Some(v) = r.get("return") {
        return Ok(v.clone());
    }
    let e = r.get("error");
    let class = match e
        .and_then(|e| e["class"].as_str())
        .unwrap_or("GenericError")
    {
        "CommandNotFound" => ErrorClass::CommandNotFound,
        "DeviceNotActive" => ErrorClass::DeviceNotActive,
        "DeviceNotFound" => ErrorClass::DeviceNotFound,
        "KVMMissingCap" => ErrorClass::KVMMissingCap,
        _ => ErrorClass::GenericError,
    };
    Err(QmpError {
        class,
        desc: e
            .and_then(|e| e["desc"].as_str())
            .unwrap_or("malformed reply")
            .to_string(),
    })
}
