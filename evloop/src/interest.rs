//! The epoll interest of a subscriber whose set of fds changes as it runs.

use event_manager::{EventOps, EventSet, Events};
use std::os::fd::RawFd;

/// What a subscriber has registered with the event manager, per fd. After each event the
/// subscriber says what it wants now, and [`Interest::apply`] makes the registrations match:
/// fds no longer wanted are removed, new ones added, changed sets modified.
///
/// A descriptor that ended while registered must stay open until `apply` has removed it (the
/// event manager keys on fd numbers, so a new fd could otherwise take the number of a stale
/// registration); the owner closes such descriptors after `apply` returns.
#[derive(Debug, Default)]
pub struct Interest {
    registered: Vec<(RawFd, EventSet)>,
}

impl Interest {
    /// Nothing registered.
    pub fn new() -> Interest {
        Interest::default()
    }

    /// Registers exactly `want`; `what` names the owner in log lines (formatted only then).
    pub fn apply(
        &mut self,
        ops: &mut EventOps,
        want: &[(RawFd, EventSet)],
        what: &dyn std::fmt::Display,
    ) {
        self.registered.retain(|&(fd, _)| {
            let keep = want.iter().any(|&(f, _)| f == fd);
            if !keep {
                let _ = ops.remove(Events::empty_raw(fd));
            }
            keep
        });
        for &(fd, set) in want {
            match self.registered.iter_mut().find(|(f, _)| *f == fd) {
                Some((_, cur)) if *cur == set => {}
                Some((_, cur)) => {
                    if ops.modify(Events::new_raw(fd, set)).is_ok() {
                        *cur = set;
                    }
                }
                None => match ops.add(Events::new_raw(fd, set)) {
                    Ok(()) => self.registered.push((fd, set)),
                    Err(e) => log::error!("{what}: cannot watch fd {fd}: {e:?}"),
                },
            }
        }
    }
}
