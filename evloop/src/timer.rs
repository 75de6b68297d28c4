//! A one-shot timer for the event loop that never blocks it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;

/// A non-blocking timerfd. Watch [`Timer::fd`] for `IN`; when it is reported call
/// [`Timer::fired`], which consumes the expiration without waiting: if the timer was re-armed or
/// cleared between the wakeup and the call (by another handler in the same epoll batch), it
/// answers `false` at once instead of sleeping until the new deadline.
#[derive(Debug)]
pub struct Timer(TimerFd);

impl Timer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Timer> {
        let t = TimerFd::new().map_err(io::Error::from)?;
        crate::set_nonblocking(t.as_raw_fd())?;
        Ok(Timer(t))
    }

    /// Fires once after `after` (a zero duration fires at once; it does not disarm).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        self.0
            .reset(after.max(Duration::from_nanos(1)), None)
            .map_err(io::Error::from)
    }

    /// Cancels a pending expiration.
    pub fn disarm(&mut self) -> io::Result<()> {
        self.0.clear().map_err(io::Error::from)
    }

    /// True when the timer expired since it was last armed or looked at; consumes that. Never
    /// blocks.
    pub fn fired(&mut self) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: `buf` is valid for writes of 8 bytes, the size of a timerfd's counter.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n == 8 && u64::from_ne_bytes(buf) > 0
    }

    /// The descriptor to watch for `IN`.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_timer_rearmed_after_it_expired_does_not_block() {
        let mut t = Timer::new().unwrap();
        assert!(!t.fired(), "a disarmed timer has not fired");
        t.arm(Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Expired (the fd is readable) — then re-armed by someone else before it is read.
        t.arm(Duration::from_secs(30)).unwrap();
        let start = Instant::now();
        assert!(!t.fired());
        assert!(start.elapsed() < Duration::from_millis(100));
        t.arm(Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.fired(), "a zero duration fires at once");
        assert!(!t.fired(), "the expiration was consumed");
    }
}
