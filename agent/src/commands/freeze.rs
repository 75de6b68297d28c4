//! guest-fsfreeze-* (FIFREEZE/FITHAW) and guest-fstrim (FITRIM).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::{Ctx, Shared};
use crate::error::{QgaError, QgaResult};
use crate::mounts::{mounts, Mount};

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
const FITRIM: libc::c_ulong = 0xC018_5879;

#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}

/// Name of the marker file kept in the state directory while frozen.
pub const FROZEN_MARKER: &str = "qga.state.isfrozen";

fn ioctl_int(f: &File, req: libc::c_ulong) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take a pointer to an int; f is an open fd.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn run_hook(ctx: &Ctx, arg: &str) -> QgaResult<()> {
    let shared = &ctx.shared;
    let Some(hook) = &shared.config.fsfreeze_hook else {
        return Ok(());
    };
    let c = std::ffi::CString::new(hook.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: c is a valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(QgaError::io(
            format_args!("can't access fsfreeze hook '{}'", hook.display()),
            &e,
        ));
    }
    let mut child = std::process::Command::new(hook)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| QgaError::io("failed to execute fsfreeze hook", &e))?;
    // A hook that hangs past the timeout is killed.
    let pid = child.id() as libc::pid_t;
    ctx.cleanups.on_timeout(move || {
        // SAFETY: kill(2) on the hook's pid; the worker has not reaped it
        // yet because it is still waiting for it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let st = child
        .wait()
        .map_err(|e| QgaError::io("failed to wait for fsfreeze hook", &e))?;
    if !st.success() {
        return Err(QgaError::generic(format!(
            "fsfreeze hook has failed with status {}",
            st.code().unwrap_or(-1)
        )));
    }
    Ok(())
}

fn marker(shared: &Shared) -> PathBuf {
    shared.config.statedir.join(FROZEN_MARKER)
}

/// Enters the frozen state: marker file, commands disabled, logging off.
fn set_frozen(shared: &Shared) {
    let _ = File::create(marker(shared));
    shared.set_frozen(true);
}

fn unset_frozen(shared: &Shared) {
    let _ = std::fs::remove_file(marker(shared));
    shared.set_frozen(false);
}

/// Restores the frozen state across agent restarts (marker file present).
pub fn restore_frozen(shared: &Shared) {
    if marker(shared).exists() {
        log::warn!("previous instance left filesystems frozen; commands stay disabled until thaw");
        shared.set_frozen(true);
    }
}

/// guest-fsfreeze-status.
pub fn status(ctx: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    Ok(json!(
        if ctx.shared.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            "frozen"
        } else {
            "thawed"
        }
    ))
}

fn do_freeze(ctx: &Ctx, list: Option<Vec<String>>) -> QgaResult<Value> {
    let shared = ctx.shared.clone();
    run_hook(ctx, "freeze")?;
    if ctx.cleanups.is_cancelled() {
        return Err(QgaError::generic("freeze abandoned after a timeout"));
    }
    set_frozen(&shared);
    // If freezing hangs past the timeout, undo what was done.
    let s2 = shared.clone();
    ctx.cleanups.on_timeout(move || {
        let _ = thaw_all(&s2);
    });
    let mut count = 0i64;
    let all: Vec<Mount> = mounts();
    let mut seen = std::collections::HashSet::new();
    for m in all.iter().rev() {
        if let Some(l) = &list {
            if !l.iter().any(|p| p == &m.dir) {
                continue;
            }
        }
        // Freeze each device once (bind mounts share the superblock).
        if !seen.insert((m.major, m.minor)) {
            continue;
        }
        if ctx.cleanups.is_cancelled() {
            let _ = thaw_all(&shared);
            return Err(QgaError::generic("freeze abandoned after a timeout"));
        }
        let f = match File::open(&m.dir) {
            Ok(f) => f,
            Err(e) => {
                let _ = thaw_all(&shared);
                return Err(QgaError::io(format_args!("failed to open {}", m.dir), &e));
            }
        };
        match ioctl_int(&f, FIFREEZE) {
            Ok(()) => {
                if let Ok(mut fs) = shared.freeze.lock() {
                    fs.frozen.push(PathBuf::from(&m.dir));
                }
                count += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => {
                let _ = thaw_all(&shared);
                return Err(QgaError::io(format_args!("failed to freeze {}", m.dir), &e));
            }
        }
    }
    if count == 0 {
        unset_frozen(&shared);
    }
    log::debug!("froze {count} filesystems");
    Ok(json!(count))
}

/// guest-fsfreeze-freeze: freezes every block-device filesystem.
pub fn freeze(ctx: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    do_freeze(ctx, None)
}

/// guest-fsfreeze-freeze-list: freezes the listed mount points.
pub fn freeze_list(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let list = a.opt_str_list("mountpoints")?;
    a.finish()?;
    do_freeze(ctx, list)
}

fn thaw_path(p: &Path) -> bool {
    let Ok(f) = File::open(p) else { return false };
    let mut thawed = false;
    // Nested freezes need one thaw each; stop at the first failure.
    for _ in 0..64 {
        if ioctl_int(&f, FITHAW).is_err() {
            break;
        }
        thawed = true;
    }
    thawed
}

/// Thaws what the agent froze plus any frozen block filesystem; leaves the
/// frozen state. Returns the number of filesystems thawed.
pub fn thaw_all(shared: &Arc<Shared>) -> i64 {
    let mut ours = match shared.freeze.lock() {
        Ok(mut fs) => std::mem::take(&mut fs.frozen),
        Err(_) => Vec::new(),
    };
    let mut count = 0;
    let mut seen = std::collections::HashSet::new();
    for m in mounts() {
        if seen.insert((m.major, m.minor)) && thaw_path(Path::new(&m.dir)) {
            count += 1;
            ours.retain(|p| p != Path::new(&m.dir));
        }
    }
    for p in ours {
        if thaw_path(&p) {
            count += 1;
        }
    }
    unset_frozen(shared);
    count
}

/// guest-fsfreeze-thaw.
pub fn thaw(ctx: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let n = thaw_all(&ctx.shared);
    run_hook(ctx, "thaw")?;
    Ok(json!(n))
}

/// guest-fstrim.
pub fn fstrim(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let minimum = a.opt_int("minimum")?.unwrap_or(0);
    a.finish()?;
    let mut paths = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in mounts().iter().rev() {
        if !seen.insert(m.dir.clone()) {
            continue;
        }
        let f = match File::open(&m.dir) {
            Ok(f) => f,
            Err(e) => {
                paths.push(json!({"path": m.dir, "error": format!("failed to open: {}", crate::error::strerror(&e))}));
                continue;
            }
        };
        let mut r = FstrimRange {
            start: 0,
            len: u64::MAX,
            minlen: minimum as u64,
        };
        // SAFETY: FITRIM takes a pointer to struct fstrim_range.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FITRIM as _, &mut r) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            let msg = match e.raw_os_error() {
                Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) => "trim not supported".to_string(),
                _ => format!("failed to trim: {}", crate::error::strerror(&e)),
            };
            paths.push(json!({"path": m.dir, "error": msg}));
        } else {
            paths.push(json!({"path": m.dir, "trimmed": r.len, "minimum": r.minlen}));
        }
    }
    Ok(json!({"paths": paths}))
}
