//! guest-shutdown and guest-suspend-*: reply only on failure.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

/// What guest-shutdown will do for a mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownPlan {
    /// Arguments to /sbin/shutdown.
    pub args: Vec<&'static str>,
    /// reboot(2) command used when no shutdown program exists.
    pub reboot_cmd: libc::c_int,
}

/// Validates the mode (default powerdown) and plans the shutdown.
pub fn shutdown_plan(mode: Option<&str>) -> QgaResult<ShutdownPlan> {
    Ok(match mode.unwrap_or("powerdown") {
        "powerdown" => ShutdownPlan {
            args: vec!["-h", "-P", "+0", "hypervisor initiated shutdown"],
            reboot_cmd: libc::RB_POWER_OFF,
        },
        "halt" => ShutdownPlan {
            args: vec!["-h", "-H", "+0", "hypervisor initiated halt"],
            reboot_cmd: libc::RB_HALT_SYSTEM,
        },
        "reboot" => ShutdownPlan {
            args: vec!["-r", "+0", "hypervisor initiated reboot"],
            reboot_cmd: libc::RB_AUTOBOOT,
        },
        _ => {
            return Err(QgaError::generic(
                "mode is invalid (valid values are: halt|powerdown|reboot",
            ))
        }
    })
}

/// guest-shutdown.
pub fn shutdown(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let mode = a.opt_str("mode")?;
    a.finish()?;
    let plan = shutdown_plan(mode.as_deref())?;
    log::info!(
        "guest-shutdown called, mode: {}",
        mode.as_deref().unwrap_or("powerdown")
    );
    let prog = ["/sbin/shutdown", "/usr/sbin/shutdown"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match prog {
        Some(p) => {
            let st = Command::new(p)
                .args(&plan.args)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| QgaError::io("failed to run shutdown", &e))?;
            if !st.success() {
                return Err(QgaError::generic("child process has failed to shutdown"));
            }
        }
        None => {
            // Minimal guests (initramfs) have no shutdown program.
            // SAFETY: sync has no preconditions; reboot only returns on error.
            unsafe { libc::sync() };
            // SAFETY: see above.
            if unsafe { libc::reboot(plan.reboot_cmd) } != 0 {
                return Err(QgaError::io(
                    "failed to shutdown",
                    &std::io::Error::last_os_error(),
                ));
            }
        }
    }
    Ok(json!({}))
}

/// Suspend flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspend {
    /// Suspend to RAM (S3).
    Ram,
    /// Suspend to disk (S4).
    Disk,
    /// Write the image then suspend to RAM.
    Hybrid,
}

/// The sysfs writes for a suspend mode, given the contents of
/// /sys/power/state and /sys/power/disk; errors when unsupported.
pub fn suspend_plan(
    kind: Suspend,
    state: &str,
    disk: &str,
) -> QgaResult<Vec<(&'static str, &'static str)>> {
    let has = |text: &str, w: &str| {
        text.split_whitespace()
            .any(|x| x.trim_matches(|c| c == '[' || c == ']') == w)
    };
    let ok = match kind {
        Suspend::Ram => has(state, "mem"),
        Suspend::Disk => has(state, "disk"),
        Suspend::Hybrid => has(state, "disk") && has(disk, "suspend"),
    };
    if !ok {
        return Err(QgaError::generic(
            "the requested suspend mode is not supported by the guest",
        ));
    }
    Ok(match kind {
        Suspend::Ram => vec![("/sys/power/state", "mem")],
        Suspend::Disk => vec![("/sys/power/state", "disk")],
        Suspend::Hybrid => vec![("/sys/power/disk", "suspend"), ("/sys/power/state", "disk")],
    })
}

/// The selected hibernation mode in /sys/power/disk text (the bracketed
/// word, e.g. `platform` in "[platform] shutdown reboot suspend").
pub fn selected_disk_mode(disk: &str) -> Option<&str> {
    disk.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

fn suspend(kind: Suspend, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let state = std::fs::read_to_string("/sys/power/state").unwrap_or_default();
    let disk = std::fs::read_to_string("/sys/power/disk").unwrap_or_default();
    let plan = suspend_plan(kind, &state, &disk)?;
    // Hybrid switches the hibernation mode to `suspend`; the mode the guest
    // had is put back once the state write returns (failed, or resumed), so
    // a later guest-suspend-disk powers off as before.
    let restore = match kind {
        Suspend::Hybrid => selected_disk_mode(&disk)
            .filter(|m| *m != "suspend")
            .map(str::to_string),
        _ => None,
    };
    // The write to /sys/power/state returns only after resume (or fails at
    // once, e.g. hibernation without swap). Do it on a helper thread and
    // wait briefly: a quick failure is reported (like qemu-ga, which waits
    // for its suspend child); a success or a suspend in progress sends no
    // reply. The monotonic clock stops while suspended.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = Ok(());
        for (path, val) in plan {
            if let Err(e) = std::fs::write(path, val) {
                log::error!("suspend: writing {val} to {path} failed: {e}");
                r = Err(QgaError::io(
                    format_args!("failed to write '{val}' to {path}"),
                    &e,
                ));
                break;
            }
        }
        if let Some(m) = restore {
            if let Err(e) = std::fs::write("/sys/power/disk", &m) {
                log::error!("suspend: restoring {m} in /sys/power/disk failed: {e}");
            }
        }
        let _ = tx.send(r);
    });
    match rx.recv_timeout(SUSPEND_ERROR_WINDOW) {
        Ok(Err(e)) => Err(e),
        _ => Ok(json!({})),
    }
}

/// How long a suspend request waits for an immediate failure.
pub const SUSPEND_ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// guest-suspend-disk.
pub fn suspend_disk(_: &Ctx, a: Args) -> QgaResult<Value> {
    suspend(Suspend::Disk, a)
}

/// guest-suspend-ram.
pub fn suspend_ram(_: &Ctx, a: Args) -> QgaResult<Value> {
    suspend(Suspend::Ram, a)
}

/// guest-suspend-hybrid.
pub fn suspend_hybrid(_: &Ctx, a: Args) -> QgaResult<Value> {
    suspend(Suspend::Hybrid, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_modes() {
        assert_eq!(shutdown_plan(None).unwrap().reboot_cmd, libc::RB_POWER_OFF);
        assert_eq!(shutdown_plan(Some("reboot")).unwrap().args[0], "-r");
        assert_eq!(shutdown_plan(Some("halt")).unwrap().args[1], "-H");
        assert!(shutdown_plan(Some("bogus")).is_err());
    }

    #[test]
    fn suspend_support() {
        assert_eq!(
            suspend_plan(Suspend::Ram, "freeze mem disk\n", "").unwrap(),
            vec![("/sys/power/state", "mem")]
        );
        assert!(suspend_plan(Suspend::Disk, "freeze mem\n", "").is_err());
        assert_eq!(
            suspend_plan(Suspend::Hybrid, "mem disk", "[platform] shutdown suspend")
                .unwrap()
                .len(),
            2
        );
        assert!(suspend_plan(Suspend::Hybrid, "mem disk", "[platform] shutdown").is_err());
        assert_eq!(
            selected_disk_mode("[platform] shutdown reboot suspend test_resume\n"),
            Some("platform")
        );
        assert_eq!(selected_disk_mode("platform [shutdown]"), Some("shutdown"));
        assert_eq!(selected_disk_mode("[disabled]"), Some("disabled"));
        assert_eq!(selected_disk_mode(""), None);
    }
}
