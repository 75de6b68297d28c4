//! Runs commands on a worker thread with a server-side timeout.
//!
//! A command that does not finish in time is abandoned: its registered
//! cleanups run (for example interrupting its blocking syscall), the caller
//! gets [`WorkerError::Timeout`], and the next command goes to a fresh worker
//! thread. At most [`MAX_HUNG`] abandoned threads may exist at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// Upper bound on abandoned (still blocked) worker threads.
pub const MAX_HUNG: usize = 16;

/// Signal sent to a worker thread to interrupt a blocking syscall.
pub const INTERRUPT_SIGNAL: libc::c_int = libc::SIGUSR2;

type Job = Box<dyn FnOnce() + Send>;
type Cleanup = Box<dyn FnOnce() + Send>;

/// Why a job produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The job ran past the timeout and was abandoned.
    #[error("timed out")]
    Timeout,
    /// Too many earlier jobs are still hung; the job was not started.
    #[error("too many hung commands")]
    Busy,
    /// The worker thread died (the job panicked).
    #[error("worker failed")]
    Failed,
}

/// Cleanups a running command registers to run if it times out.
#[derive(Default)]
pub struct Cleanups {
    list: Mutex<Vec<Cleanup>>,
    cancelled: std::sync::atomic::AtomicBool,
}

impl Cleanups {
    /// True once the command timed out: an abandoned command checks this
    /// before each step with lasting effects and stops.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Registers `f` to run if the current command times out.
    pub fn on_timeout(&self, f: impl FnOnce() + Send + 'static) {
        if let Ok(mut l) = self.list.lock() {
            l.push(Box::new(f));
        }
    }

    /// Registers interruption of the calling thread's blocking syscalls
    /// (they fail with EINTR) on timeout.
    pub fn interrupt_me_on_timeout(&self) {
        install_interrupt_handler();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // The worker runs the cleanups while the thread is still alive: it
        // cannot exit before its job channel is dropped, which happens after.
        self.on_timeout(move || {
            // SAFETY: `me` names a live thread (see above); the signal has a
            // no-op handler installed, so delivery only interrupts syscalls.
            unsafe { libc::pthread_kill(me, INTERRUPT_SIGNAL) };
        });
    }

    fn run_all(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let list = match self.list.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => return,
        };
        for f in list {
            f();
        }
    }

    fn clear(&self) {
        if let Ok(mut l) = self.list.lock() {
            l.clear();
        }
    }
}

extern "C" fn noop_handler(_: libc::c_int) {}

fn install_interrupt_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set a handler that does
        // nothing (async-signal-safe) and no SA_RESTART so that blocking
        // syscalls return EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(INTERRUPT_SIGNAL, &sa, std::ptr::null_mut());
        }
    });
}

/// A single worker thread, replaced after a timeout.
pub struct Worker {
    tx: Option<Sender<Job>>,
    hung: Arc<AtomicUsize>,
    cleanups: Arc<Cleanups>,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
    }
}

impl Worker {
    /// A worker; its thread starts with the first job.
    pub fn new() -> Self {
        Worker {
            tx: None,
            hung: Arc::new(AtomicUsize::new(0)),
            cleanups: Arc::new(Cleanups::default()),
        }
    }

    /// The cleanup registry handed to the job currently running.
    pub fn cleanups(&self) -> Arc<Cleanups> {
        self.cleanups.clone()
    }

    /// Number of abandoned threads still blocked.
    pub fn hung(&self) -> usize {
        self.hung.load(Ordering::SeqCst)
    }

    fn spawn(&mut self) -> Option<Sender<Job>> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = mpsc::channel();
        let hung = self.hung.clone();
        let r = std::thread::Builder::new()
            .name("qga-worker".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
                // The sender is only dropped for an abandoned worker (or at exit).
                let _ = hung.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            });
        match r {
            Ok(_) => {
                self.tx = Some(tx.clone());
                Some(tx)
            }
            Err(_) => None,
        }
    }

    /// Runs `f` on the worker, waiting at most `timeout` for its result.
    pub fn run<T: Send + 'static>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let tx = match self.tx.clone() {
            Some(tx) => tx,
            None => {
                if self.hung() >= MAX_HUNG {
                    return Err(WorkerError::Busy);
                }
                self.spawn().ok_or(WorkerError::Failed)?
            }
        };
        self.cleanups.clear();
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        if tx.send(job).is_err() {
            self.tx = None;
            return Err(WorkerError::Failed);
        }
        match rrx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => {
                self.hung.fetch_add(1, Ordering::SeqCst);
                self.cleanups.run_all();
                // Dropping the sender lets the abandoned thread exit once its
                // job returns; the cleanups of the next job are a fresh set.
                self.tx = None;
                self.cleanups = Arc::new(Cleanups::default());
                Err(WorkerError::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.tx = None;
                Err(WorkerError::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_interrupts_and_next_job_runs() {
        let mut w = Worker::new();
        assert_eq!(w.run(Duration::from_secs(5), || 7).unwrap(), 7);
        let c = w.cleanups();
        let r = w.run(Duration::from_millis(100), move || {
            c.interrupt_me_on_timeout();
            // A real blocking syscall: read from a pipe nobody writes to.
            let mut fds = [0; 2];
            // SAFETY: fds is a valid 2-element array.
            unsafe { libc::pipe(fds.as_mut_ptr()) };
            let mut b = [0u8; 1];
            // SAFETY: b is a valid 1-byte buffer and fds[0] an open fd.
            let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            let e = std::io::Error::last_os_error();
            // SAFETY: both fds are open and owned here.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            (n, e.raw_os_error())
        });
        assert_eq!(r.unwrap_err(), WorkerError::Timeout);
        assert_eq!(w.run(Duration::from_secs(5), || "next").unwrap(), "next");
        for _ in 0..100 {
            if w.hung() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.hung(), 0, "interrupted thread exited");
    }
}
