//! What a listener does when `accept` fails for lack of resources.

use std::io;
use std::time::Duration;

use crate::Timer;

/// First pause after a failed accept; it doubles while accepts keep failing.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A listener's accept back-off. At the descriptor limit (`EMFILE`, `ENFILE`) or out of memory
/// (`ENOBUFS`, `ENOMEM`) the pending connection stays in the backlog, so a level-triggered
/// listener would be reported again at once, forever. Instead the owner stops watching the
/// listener while [`AcceptGate::paused`], watches [`AcceptGate::timer`], and tries again when it
/// fires; the condition is logged once when it starts and once when it ends. Existing
/// connections are served all along.
#[derive(Debug)]
pub struct AcceptGate {
    what: String,
    timer: Timer,
    pause: Option<Duration>,
    failures: u64,
}

impl AcceptGate {
    /// A gate for the listener described by `what` (used in log lines).
    pub fn new(what: impl Into<String>) -> io::Result<AcceptGate> {
        Ok(AcceptGate {
            what: what.into(),
            timer: Timer::new()?,
            pause: None,
            failures: 0,
        })
    }

    /// True while accepts are paused: do not watch the listener.
    pub fn paused(&self) -> bool {
        self.pause.is_some()
    }

    /// The timer to watch; call [`AcceptGate::on_timer`] when it is readable.
    pub fn timer_fd(&self) -> std::os::fd::RawFd {
        self.timer.fd()
    }

    /// The pause is over (the listener may be watched again) when this returns true.
    pub fn on_timer(&mut self) -> bool {
        self.timer.fired() && self.pause.is_some()
    }

    /// Call after each successful accept.
    pub fn accepted(&mut self) {
        if self.pause.take().is_some() || self.failures > 0 {
            log::warn!(
                "{}: accepting connections again (after {} failed attempts)",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
    }

    /// Call with an accept error other than `WouldBlock`/`Interrupted`. Returns true when the
    /// error pauses accepting (a resource limit); other errors (e.g. `ECONNABORTED`, a peer that
    /// gave up) only concern that one connection.
    pub fn failed(&mut self, e: &io::Error) -> bool {
        let resource = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
        );
        if !resource {
            log::warn!("{}: accept: {e}", self.what);
            return false;
        }
        self.failures += 1;
        let next = match self.pause {
            None => {
                log::warn!(
                    "{}: cannot accept: {e}; existing connections are still served, new ones wait \
                     (retrying every {} ms up to {} ms, logged again when it recovers)",
                    self.what,
                    FIRST_PAUSE.as_millis(),
                    MAX_PAUSE.as_millis()
                );
                FIRST_PAUSE
            }
            Some(p) => (p * 2).min(MAX_PAUSE),
        };
        self.pause = Some(next);
        if let Err(e) = self.timer.arm(next) {
            log::error!("{}: accept back-off timer: {e}", self.what);
        }
        true
    }
}
