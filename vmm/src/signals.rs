//! Termination signals as event-loop events (signalfd): SIGTERM/SIGINT/SIGHUP end the VM with
//! a SHUTDOWN event (`host-signal`), and the process cleans up its sockets on the way out.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;

use crate::machine::VmState;

/// A signalfd for a set of signals, which are blocked for normal delivery.
pub struct SignalFd(File);

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl SignalFd {
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for s in signals {
            // SAFETY: as above; `s` is a valid signal number.
            unsafe { libc::sigaddset(&mut set, *s) };
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by signalfd and is owned by nobody else.
        Ok(SignalFd(unsafe { File::from_raw_fd(fd) }))
    }
}

pub struct SignalSubscriber {
    pub fd: SignalFd,
    pub state: Rc<VmState>,
}

impl MutEventSubscriber for SignalSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd.0.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch signals: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = self.fd.0.read(&mut buf) {
            if n < buf.len() {
                break;
            }
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            log::info!("vmm: signal {signo}, shutting down");
            self.state.shutdown(false, "host-signal");
        }
    }
}
