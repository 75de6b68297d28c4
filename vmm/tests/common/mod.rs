//! Shared test fixtures: the real `vmm` binary, Debian's real `qemu-ga`, QMP clients over real sockets.
#![allow(dead_code)]

use qmp::client::QmpClient;
use qmp::SocketAddr;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// Fails loudly (never skips silently) when the oracle agent is missing.
pub fn require_qemu_ga() {
    assert!(
        Path::new(QEMU_GA).exists(),
        "{QEMU_GA} is not installed: run scripts/setup.sh (it installs qemu-guest-agent)"
    );
}

/// Says on stderr why a test does nothing here (`skipped: <reason>`).
pub fn skipped(reason: impl std::fmt::Display) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: {reason}\n"));
}

/// Whether this process may open /dev/kvm read-write.
pub fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// Waits until `p` exists (without connecting to it).
pub fn wait_for_path(p: &Path, limit: Duration) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < limit,
            "{} did not appear within {limit:?}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.wait(limit)
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "{} did not exit within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Freezes or thaws a process (a hung agent: its socket still takes our bytes, nothing answers).
pub fn freeze(p: &Proc, on: bool) {
    let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, sig) }, 0);
}

/// Starts Debian's qemu-ga listening on `sock`, with its own state dir under `dir`.
pub fn start_qemu_ga(dir: &Path, sock: &Path) -> Proc {
    require_qemu_ga();
    let state = dir.join(format!(
        "qga-state-{}",
        sock.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&state).unwrap();
    let _ = std::fs::remove_file(sock);
    let child = Command::new(QEMU_GA)
        .arg("-m")
        .arg("unix-listen")
        .arg("-p")
        .arg(sock)
        .arg("-t")
        .arg(&state)
        .arg("-f")
        .arg(state.join("qga.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-ga");
    wait_for_path(sock, Duration::from_secs(10));
    Proc {
        child,
        name: "qemu-ga",
    }
}

/// Starts the `vmm` binary with `args`, its log (`RUST_LOG=info`) going to `log`, and waits
/// until each of `sockets` exists.
pub fn spawn_vmm<I, S>(args: I, log: &Path, sockets: &[&Path]) -> Proc
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start vmm");
    let proc = Proc { child, name: "vmm" };
    for p in sockets {
        wait_for_path(p, Duration::from_secs(10));
    }
    proc
}

/// A running `vmm` with its monitor socket.
pub struct Vmm {
    pub proc: Proc,
    pub qmp: PathBuf,
    pub log: PathBuf,
}

impl Vmm {
    /// Starts `vmm -machine none -qmp unix:DIR/qmp.sock,server=on,wait=off` plus `extra`.
    pub fn start(dir: &Path, extra: &[&str]) -> Vmm {
        let args = ["-machine", "none"].iter().chain(extra);
        Vmm::launch(dir, args, false, &[])
    }

    /// Starts `vmm` with `args` plus `-qmp unix:DIR/qmp.sock,server=on,wait=on|off`, its log in
    /// DIR/vmm.log; waits until the monitor socket and each of `sockets` exist.
    pub fn launch<I, S>(dir: &Path, args: I, wait_on: bool, sockets: &[&Path]) -> Vmm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let qmp = dir.join("qmp.sock");
        let log = dir.join("vmm.log");
        let wait = if wait_on { "on" } else { "off" };
        let monitor = format!("unix:{},server=on,wait={wait}", qmp.display());
        let args = args
            .into_iter()
            .map(|a| a.as_ref().to_owned())
            .chain(["-qmp".into(), monitor.into()]);
        let mut waits = vec![qmp.as_path()];
        waits.extend_from_slice(sockets);
        let proc = spawn_vmm(args, &log, &waits);
        Vmm { proc, qmp, log }
    }

    /// Starts a vmm whose proxy talks to the agent on `agent` with `timeout` seconds.
    pub fn with_agent(dir: &Path, agent: &Path, timeout: &str) -> Vmm {
        let cd = format!(
            "qmp_proxy,id=qga0,path={},timeout={timeout}",
            agent.display()
        );
        Vmm::start(dir, &["-name", "test", "-chardev", &cd])
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::Unix(self.qmp.clone())
    }

    /// A negotiated QMP session; on failure the panic says whether the VMM is still running and
    /// what it logged.
    pub fn client(&self) -> QmpClient {
        let t = Instant::now();
        loop {
            match QmpClient::connect(&self.addr()) {
                Ok(c) => return c,
                Err(e) if t.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = e;
                }
                Err(e) => {
                    let state =
                        std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
                            .ok()
                            .and_then(|s| {
                                s.lines()
                                    .find(|l| l.starts_with("State:"))
                                    .map(String::from)
                            })
                            .unwrap_or_else(|| "gone".into());
                    panic!(
                        "QMP connect to {}: {e}; vmm {state}; vmm log:\n{}",
                        self.qmp.display(),
                        self.log_text()
                    );
                }
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until guest commands through `c` succeed (the proxy has synced with the agent).
pub fn wait_agent_up(c: &mut QmpClient, limit: Duration) {
    let t = Instant::now();
    loop {
        match c.execute("guest-ping", Value::Null).unwrap() {
            Ok(_) => return,
            Err(e) => assert!(t.elapsed() < limit, "agent not up within {limit:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a raw request and returns the whole reply.
pub fn raw(c: &mut QmpClient, req: Value) -> Value {
    c.send(&req).unwrap();
    c.next_reply().unwrap()
}

pub fn guest(c: &mut QmpClient, cmd: &str, args: Value) -> Value {
    let mut req = json!({"execute": cmd});
    if !args.is_null() {
        req["arguments"] = args;
    }
    raw(c, req)
}
