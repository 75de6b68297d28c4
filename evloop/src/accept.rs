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
    /// Accepting is paused until the timer fires.
    paused: bool,
    /// The next pause, should accepting fail again.
    next_pause: Duration,
    /// Failed accepts since the last success.
    failures: u64,
}

impl AcceptGate {
    /// A gate for the listener described by `what` (used in log lines).
    pub fn new(what: impl Into<String>) -> io::Result<AcceptGate> {
        Ok(AcceptGate {
            what: what.into(),
            timer: Timer::new()?,
            paused: false,
            next_pause: FIRST_PAUSE,
            failures: 0,
        })
    }

    /// True while accepts are paused: do not watch the listener.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The timer to watch; call [`AcceptGate::on_timer`] when it is readable.
    pub fn timer_fd(&self) -> std::os::fd::RawFd {
        self.timer.fd()
    }

    /// Call when the timer fd is readable. True when the pause is over: watch the listener
    /// again (a connection still waiting is then reported at once and tried).
    pub fn on_timer(&mut self) -> bool {
        if self.timer.fired() && self.paused {
            self.paused = false;
            return true;
        }
        false
    }

    /// Call after each successful accept.
    pub fn accepted(&mut self) {
        if self.failures > 0 {
            log::warn!(
                "{}: accepting connections again (after {} failed attempts)",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
        self.paused = false;
        self.next_pause = FIRST_PAUSE;
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
        if self.failures == 0 {
            log::warn!(
                "{}: cannot accept: {e}; existing connections are still served, new ones wait \
                 (retried after {} ms, doubling up to {} ms; logged again when it recovers)",
                self.what,
                FIRST_PAUSE.as_millis(),
                MAX_PAUSE.as_millis()
            );
        }
        self.failures += 1;
        self.paused = true;
        if let Err(e) = self.timer.arm(self.next_pause) {
            log::error!("{}: accept back-off timer: {e}", self.what);
        }
        self.next_pause = (self.next_pause * 2).min(MAX_PAUSE);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_ends_when_the_timer_fires_and_doubles_while_accepts_fail() {
        let mut g = AcceptGate::new("test").unwrap();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!g.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!g.paused(), "a peer that gave up does not pause accepting");
        assert!(g.failed(&emfile));
        assert!(g.paused());
        assert!(!g.on_timer(), "not before the pause is over");
        std::thread::sleep(FIRST_PAUSE + Duration::from_millis(20));
        assert!(
            g.on_timer(),
            "the listener is watched again once the timer fires"
        );
        assert!(!g.paused());
        // Failing again pauses for twice as long.
        assert!(g.failed(&emfile));
        std::thread::sleep(FIRST_PAUSE + Duration::from_millis(20));
        assert!(!g.on_timer());
        std::thread::sleep(FIRST_PAUSE);
        assert!(g.on_timer());
        g.accepted();
        assert_eq!(g.next_pause, FIRST_PAUSE);
    }
}
