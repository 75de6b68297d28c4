//! The ground floor of the VMM's single event loop and of the agent's socket transport: the
//! pieces every subscriber (the monitor, the chardevs, vhost-user, the port hub, the proxy) needs
//! and must get right against a hostile peer.
//!
//! - [`Timer`]: a timerfd that never blocks the loop (reading a blocking timerfd that was
//!   re-armed after it became readable waits for the new deadline).
//! - [`OutBuf`]: bytes waiting for a slow peer, whose consumed front is given back as it drains.
//! - [`unix_socket`]: listening on a unix socket path without taking over another process's
//!   socket, and removing only the socket file this process made.
//! - [`AcceptGate`]: what a listener does when `accept` fails for lack of descriptors or memory:
//!   stop watching, log once, look again later.
//! - [`Interest`]: a subscriber's epoll registrations kept equal to the fds it wants now.

mod accept;
mod interest;
mod outbuf;
mod timer;
pub mod unix_socket;

pub use accept::AcceptGate;
pub use interest::Interest;
pub use outbuf::OutBuf;
pub use timer::Timer;

use std::io;
use std::os::fd::RawFd;

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes no pointers; a bad fd only makes it fail.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
