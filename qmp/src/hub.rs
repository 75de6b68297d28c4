//! The monitor's inbox: how other parts of the event loop (the proxy, the machine) hand replies and
//! events to QMP sessions without borrowing the monitor. Everything runs in one thread; producers
//! push here and kick an eventfd, and the monitor drains the queue in its own event handler.

use serde_json::Value;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::protocol;

/// Identifies one QMP session of a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A message for the monitor to deliver.
#[derive(Debug)]
pub enum Outgoing {
    /// The reply to the request that session `session` is waiting on.
    Reply { session: SessionId, msg: Value },
    /// An event for every negotiated session.
    Event(Value),
}

struct Shared {
    queue: RefCell<VecDeque<Outgoing>>,
    kick: EventFd,
}

/// A cloneable handle producers use to reach the monitor's sessions.
#[derive(Clone)]
pub struct MonitorHandle {
    inner: Rc<Shared>,
}

impl MonitorHandle {
    pub fn new() -> io::Result<Self> {
        Ok(MonitorHandle {
            inner: Rc::new(Shared {
                queue: RefCell::new(VecDeque::new()),
                kick: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    fn push(&self, m: Outgoing) {
        let was_empty = {
            let mut q = self.inner.queue.borrow_mut();
            let e = q.is_empty();
            q.push_back(m);
            e
        };
        if was_empty {
            // A full eventfd counter only means a wakeup is already pending.
            let _ = self.inner.kick.write(1);
        }
    }

    /// Queues the reply for `session`'s pending request.
    pub fn reply(&self, session: SessionId, msg: Value) {
        self.push(Outgoing::Reply { session, msg });
    }

    /// Queues an event (timestamped now) for every negotiated session.
    pub fn event(&self, name: &str, data: Option<Value>) {
        log::info!(
            "event {name} {}",
            data.as_ref().map(|d| d.to_string()).unwrap_or_default()
        );
        self.push(Outgoing::Event(protocol::event(name, data)));
    }

    /// Takes everything queued so far.
    pub fn drain(&self) -> VecDeque<Outgoing> {
        let _ = self.inner.kick.read();
        std::mem::take(&mut *self.inner.queue.borrow_mut())
    }

    /// The eventfd that becomes readable when something is queued.
    pub fn kick_fd(&self) -> RawFd {
        self.inner.kick.as_raw_fd()
    }
}
