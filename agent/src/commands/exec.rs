//! guest-exec and guest-exec-status.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};
use crate::state::{Captured, ExecInfo};

/// Most output kept per stream (16 MiB, as qemu-ga).
pub const CAPTURE_MAX: usize = 16 << 20;
/// Most children tracked at once (exited ones are kept until reported).
pub const MAX_CHILDREN: usize = 4096;

/// Which output streams guest-exec captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Nothing captured (outputs go to /dev/null).
    None,
    /// stdout only.
    Stdout,
    /// stderr only.
    Stderr,
    /// Both, separately.
    Separated,
    /// Both, interleaved into out-data.
    Merged,
}

/// Parses `capture-output` (bool, or the 8.0+ enum strings).
pub fn parse_capture(name: &str, v: Option<Value>) -> QgaResult<Capture> {
    match v {
        None | Some(Value::Bool(false)) => Ok(Capture::None),
        Some(Value::Bool(true)) => Ok(Capture::Separated),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Capture::None),
            "stdout" => Ok(Capture::Stdout),
            "stderr" => Ok(Capture::Stderr),
            "separated" => Ok(Capture::Separated),
            "merged" => Ok(Capture::Merged),
            _ => Err(QgaError::generic(format!(
                "Parameter '{name}' does not accept value '{s}'"
            ))),
        },
        Some(_) => Err(QgaError::generic(format!(
            "Invalid parameter type for '{name}', expected: GuestExecCaptureOutput"
        ))),
    }
}

/// A validated guest-exec request.
#[derive(Debug)]
pub struct ExecRequest {
    /// Program (searched in PATH when it has no '/').
    pub path: String,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// Replacement environment (`K=V`), when given.
    pub env: Option<Vec<String>>,
    /// Bytes written to stdin.
    pub input: Option<Vec<u8>>,
    /// Capture mode.
    pub capture: Capture,
}

/// Reads guest-exec arguments.
pub fn parse_exec(mut a: Args) -> QgaResult<ExecRequest> {
    let path = a.str("path")?;
    let args = a.opt_str_list("arg")?.unwrap_or_default();
    let env = a.opt_str_list("env")?;
    let input = a.opt_str("input-data")?;
    let cname = a.name_of("capture-output");
    let capture = parse_capture(&cname, a.opt_raw("capture-output"))?;
    a.finish()?;
    let input = input.map(|s| super::file::decode_b64(&s)).transpose()?;
    Ok(ExecRequest {
        path,
        args,
        env,
        input,
        capture,
    })
}

/// Most captured output held by all children together; beyond it output is
/// truncated (a host starting many chatty children cannot exhaust memory).
pub const CAPTURE_TOTAL_MAX: usize = 512 << 20;
static CAPTURED_TOTAL: AtomicUsize = AtomicUsize::new(0);
/// Stack size of the reaper thread and of a child's reader and writer threads.
const HELPER_STACK: usize = 64 * 1024;

/// Takes up to `want` bytes from the global capture budget.
fn take_budget(want: usize) -> usize {
    let mut got = 0;
    let _ = CAPTURED_TOTAL.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
        got = want.min(CAPTURE_TOTAL_MAX.saturating_sub(used));
        Some(used + got)
    });
    got
}

fn release_budget(n: usize) {
    let _ = CAPTURED_TOTAL.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
        Some(used.saturating_sub(n))
    });
}

fn helper<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .stack_size(HELPER_STACK)
        .spawn(f)
        .ok()
}

fn read_capped(mut r: impl Read, cap: &mut Captured) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let room = CAPTURE_MAX.saturating_sub(cap.data.len());
                let keep = take_budget(n.min(room));
                if keep < n {
                    cap.truncated = true;
                }
                cap.data.extend_from_slice(&buf[..keep]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Records one finished part of a child (its exit status or a stream's
/// output); the child counts as exited once no part is outstanding.
fn finish_part(info: &Mutex<ExecInfo>, f: impl FnOnce(&mut ExecInfo)) {
    if let Ok(mut i) = info.lock() {
        f(&mut i);
        i.pending = i.pending.saturating_sub(1);
        if i.pending == 0 {
            i.exited = true;
        }
    }
}

fn record_status(info: &Mutex<ExecInfo>, status: std::io::Result<std::process::ExitStatus>) {
    finish_part(info, |i| {
        if let Ok(st) = status {
            i.exitcode = st.code();
            i.signal = st.signal();
        }
    });
}

/// Children waited for by the reaper thread, by pid.
struct Waiting {
    child: Child,
    info: Arc<Mutex<ExecInfo>>,
    /// Registered in the reaper's epoll set; closing it unregisters it.
    _pidfd: OwnedFd,
}

static WAITING: LazyLock<Mutex<HashMap<i32, Waiting>>> = LazyLock::new(Default::default);

/// The reaper's epoll descriptor (None if it could not be started).
///
/// One thread reaps every guest-exec child: it sleeps in `epoll_wait` on the
/// children's pidfds and calls `waitpid` for each one that exits, so a child
/// costs no thread of its own and its exit is seen as soon as it happens.
/// Only our own children's pids are waited for (never `waitpid(-1)`), so
/// other commands that wait for their helpers are not disturbed.
fn reaper() -> Option<RawFd> {
    static EPOLL: OnceLock<Option<RawFd>> = OnceLock::new();
    *EPOLL.get_or_init(|| {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let started = std::thread::Builder::new()
            .name("exec-reaper".into())
            .stack_size(HELPER_STACK)
            .spawn(move || reap_loop(fd));
        if started.is_err() {
            // SAFETY: fd was created above and is used by nobody else.
            unsafe { libc::close(fd) };
            return None;
        }
        Some(fd)
    })
}

fn reap_loop(epfd: RawFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    loop {
        // SAFETY: events is a valid array of the length passed.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("exec reaper: epoll_wait failed; children are no longer reaped");
            return;
        }
        for ev in &events[..n as usize] {
            let pid = ev.u64 as i32;
            let w = WAITING.lock().ok().and_then(|mut m| m.remove(&pid));
            if let Some(mut w) = w {
                // The pidfd is readable: the child has exited, wait() does not block.
                let st = w.child.wait();
                record_status(&w.info, st);
            }
        }
    }
}

/// Has `child` reaped when it exits: by the reaper thread (pidfd), or by a
/// thread of its own where pidfds are unavailable (Linux < 5.3). False if
/// neither could be set up (the caller kills and reaps the child itself).
fn watch_exit(child: Child, info: Arc<Mutex<ExecInfo>>) -> bool {
    match watch_pidfd(child, info) {
        Ok(()) => true,
        Err((mut child, info)) => helper(move || record_status(&info, child.wait())).is_some(),
    }
}

type Unwatched = (Child, Arc<Mutex<ExecInfo>>);

fn watch_pidfd(child: Child, info: Arc<Mutex<ExecInfo>>) -> Result<(), Unwatched> {
    let Some(epfd) = reaper() else {
        return Err((child, info));
    };
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err((child, info));
    }
    // SAFETY: fd is a new pidfd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let raw = pidfd.as_raw_fd();
    let Ok(mut waiting) = WAITING.lock() else {
        return Err((child, info));
    };
    // Inserted before the pidfd is armed, and under the lock the reaper
    // takes: the reaper always finds the child when the pidfd fires.
    waiting.insert(
        pid,
        Waiting {
            child,
            info,
            _pidfd: pidfd,
        },
    );
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: pid as u64,
    };
    // SAFETY: epfd and raw are open descriptors; ev is a valid event.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, raw, &mut ev) } == 0 {
        return Ok(());
    }
    match waiting.remove(&pid) {
        Some(w) => Err((w.child, w.info)),
        None => Ok(()),
    }
}

/// guest-exec.
pub fn exec(ctx: &Ctx, a: Args) -> QgaResult<Value> {
    let req = parse_exec(a)?;
    if ctx
        .shared
        .execs
        .lock()
        .map(|t| t.children.len())
        .unwrap_or(0)
        >= MAX_CHILDREN
    {
        return Err(QgaError::generic("too many unreported guest-exec children"));
    }
    let mut cmd = Command::new(&req.path);
    cmd.args(&req.args).arg0(&req.path);
    if let Some(env) = &req.env {
        let path_var = std::env::var_os("PATH");
        cmd.env_clear();
        // Keep the agent's PATH for the program lookup, as g_spawn does.
        if let Some(p) = path_var {
            if !env.iter().any(|e| e.starts_with("PATH=")) && !req.path.contains('/') {
                if let Some(found) = search_path(&req.path, &p) {
                    cmd = rebuild(found, &req);
                    cmd.env_clear();
                }
            }
        }
        for e in env {
            match e.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    cmd.env(k, v);
                }
                _ => {}
            }
        }
    }
    cmd.stdin(if req.input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let (o, e) = match req.capture {
        Capture::None => (false, false),
        Capture::Stdout => (true, false),
        Capture::Stderr => (false, true),
        Capture::Separated | Capture::Merged => (true, true),
    };
    if req.capture == Capture::Merged {
        let (r, w) = pipe().map_err(|e| QgaError::io("pipe", &e))?;
        let w2 = w.try_clone().map_err(|e| QgaError::io("pipe", &e))?;
        cmd.stdout(w).stderr(w2);
        let child = spawn(&mut cmd, &req)?;
        drop(cmd);
        return register(ctx, child, req.input, Some(r), true, false);
    }
    cmd.stdout(if o { Stdio::piped() } else { Stdio::null() });
    cmd.stderr(if e { Stdio::piped() } else { Stdio::null() });
    let child = spawn(&mut cmd, &req)?;
    register(ctx, child, req.input, None, o, e)
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn search_path(prog: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(prog)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn rebuild(prog: std::path::PathBuf, req: &ExecRequest) -> Command {
    let mut c = Command::new(prog);
    c.args(&req.args).arg0(&req.path);
    c
}

fn spawn(cmd: &mut Command, req: &ExecRequest) -> QgaResult<Child> {
    cmd.spawn().map_err(|e| {
        QgaError::generic(format!(
            "Guest agent command failed, error was 'Failed to execute child process \u{201c}{}\u{201d} ({})'",
            req.path,
            crate::error::strerror(&e)
        ))
    })
}

fn register(
    ctx: &Ctx,
    mut child: Child,
    input: Option<Vec<u8>>,
    merged: Option<std::fs::File>,
    out: bool,
    err: bool,
) -> QgaResult<Value> {
    let pid = child.id() as i64;
    let stdin = child.stdin.take();
    let stdout: Option<Box<dyn Read + Send>> = match merged {
        Some(m) => Some(Box::new(m)),
        None => child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    };
    let stderr: Option<Box<dyn Read + Send>> = child
        .stderr
        .take()
        .map(|e| Box::new(e) as Box<dyn Read + Send>);
    let info = Arc::new(Mutex::new(ExecInfo {
        out: out.then(Captured::default),
        err: err.then(Captured::default),
        // The exit status and one end of file per captured stream.
        pending: 1 + u8::from(stdout.is_some()) + u8::from(stderr.is_some()),
        ..Default::default()
    }));
    if let Ok(mut t) = ctx.shared.execs.lock() {
        t.children.insert(pid, info.clone());
    }
    if let (Some(mut stdin), Some(data)) = (stdin, input) {
        helper(move || {
            let _ = stdin.write_all(&data);
        });
    }
    for (stream, is_out) in [(stdout, true), (stderr, false)] {
        let Some(r) = stream else { continue };
        let i = info.clone();
        let reader = helper(move || {
            let mut c = Captured::default();
            read_capped(r, &mut c);
            finish_part(&i, |i| {
                let slot = if is_out { &mut i.out } else { &mut i.err };
                if slot.is_some() {
                    *slot = Some(c);
                }
            });
        });
        if reader.is_none() {
            // Nothing will read this stream (its pipe is closed): done.
            finish_part(&info, |_| {});
        }
    }
    if !watch_exit(child, info) {
        // Nothing will reap the child: do not leave it running unreaped.
        // SAFETY: kill/waitpid on our own child's pid (not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
        if let Ok(mut t) = ctx.shared.execs.lock() {
            t.children.remove(&pid);
        }
        return Err(QgaError::generic("failed to start watching the exec child"));
    }
    Ok(json!({"pid": pid}))
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// guest-exec-status.
pub fn exec_status(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let pid = a.int("pid")?;
    a.finish()?;
    let mut table = ctx
        .shared
        .execs
        .lock()
        .map_err(|_| QgaError::generic("internal error"))?;
    let info = table
        .children
        .get(&pid)
        .cloned()
        .ok_or_else(|| QgaError::generic("Invalid parameter 'pid'"))?;
    let i = info
        .lock()
        .map_err(|_| QgaError::generic("internal error"))?;
    let mut m = Map::new();
    m.insert("exited".into(), json!(i.exited));
    if !i.exited {
        return Ok(Value::Object(m));
    }
    if let Some(c) = i.exitcode {
        m.insert("exitcode".into(), json!(c));
    }
    if let Some(s) = i.signal {
        m.insert("signal".into(), json!(s));
    }
    for (key, trunc, cap) in [
        ("out-data", "out-truncated", &i.out),
        ("err-data", "err-truncated", &i.err),
    ] {
        if let Some(c) = cap {
            if !c.data.is_empty() {
                m.insert(key.into(), json!(b64(&c.data)));
                m.insert(trunc.into(), json!(c.truncated));
            }
        }
    }
    let held =
        i.out.as_ref().map_or(0, |c| c.data.len()) + i.err.as_ref().map_or(0, |c| c.data.len());
    drop(i);
    table.children.remove(&pid);
    release_budget(held);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_forms() {
        assert_eq!(
            parse_capture("c", Some(json!(true))).unwrap(),
            Capture::Separated
        );
        assert_eq!(
            parse_capture("c", Some(json!("merged"))).unwrap(),
            Capture::Merged
        );
        assert!(parse_capture("c", Some(json!("x")))
            .unwrap_err()
            .desc
            .contains("does not accept"));
        assert!(parse_capture("c", Some(json!(1)))
            .unwrap_err()
            .desc
            .contains("GuestExecCaptureOutput"));
    }
}
