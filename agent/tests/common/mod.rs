//! Helpers shared by the integration tests: start an agent binary on a unix
//! socket in a private directory and talk to it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Path of qemu-ga, the reference agent.
pub const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// The virtagent binary under test: `$VIRTAGENT_BIN` (e.g. the static
/// release build) or the one cargo built for this test run.
pub fn virtagent_bin() -> String {
    std::env::var("VIRTAGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_virtagent").to_string())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh private directory under /tmp.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("virtagent-it-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Which agent binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ours.
    Virtagent,
    /// The reference.
    QemuGa,
}

/// A running agent serving a unix socket.
pub struct AgentProc {
    /// The process.
    pub child: Child,
    /// Its private directory (statedir, socket, pidfile, log).
    pub dir: PathBuf,
    /// The socket path.
    pub sock: PathBuf,
}

impl AgentProc {
    /// Starts `kind` with `-m unix-listen -p SOCK -t DIR -f PIDFILE` plus `extra`.
    pub fn start(kind: Kind, tag: &str, extra: &[&str]) -> AgentProc {
        let dir = temp_dir(tag);
        let sock = dir.join("agent.sock");
        let bin = match kind {
            Kind::Virtagent => virtagent_bin(),
            Kind::QemuGa => QEMU_GA.to_string(),
        };
        let child = Command::new(&bin)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(&dir)
            .arg("-f")
            .arg(dir.join("agent.pid"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let p = AgentProc { child, dir, sock };
        let t0 = Instant::now();
        while !p.sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{bin} did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// Connects a client.
    pub fn connect(&self) -> Client {
        Client::connect(&self.sock)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if t0.elapsed() > Duration::from_secs(3) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A socket client speaking the qemu-ga protocol.
pub struct Client {
    /// The connection.
    pub s: UnixStream,
    buf: Vec<u8>,
    sync_id: i64,
}

impl Client {
    /// Connects to `sock`.
    pub fn connect(sock: &Path) -> Client {
        // The socket file appears at bind(), just before listen(): retry
        // "connection refused" for a moment.
        let t0 = Instant::now();
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("connect {}: {e}", sock.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            s,
            buf: Vec::new(),
            sync_id: 1_000_000,
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    /// Reads one reply line (a leading 0xFF is kept out and reported).
    pub fn read_line(&mut self) -> Option<(bool, Value)> {
        // Only bytes not yet searched are scanned for the newline.
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + i;
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                let delimited = line.first() == Some(&0xFF);
                let body = if delimited { &line[1..] } else { &line[..] };
                let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                    panic!("bad reply {:?}: {e}", String::from_utf8_lossy(body))
                });
                return Some((delimited, v));
            }
            scanned = self.buf.len();
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Sends `req` then a guest-sync, returning every reply before the sync's.
    pub fn exchange(&mut self, req: &[u8]) -> Vec<Value> {
        self.sync_id += 1;
        let id = self.sync_id;
        let mut b = req.to_vec();
        b.extend_from_slice(
            format!("{{\"execute\":\"guest-sync\",\"arguments\":{{\"id\":{id}}}}}").as_bytes(),
        );
        self.send(&b);
        let mut out = Vec::new();
        loop {
            let (delimited, v) = self.read_line().expect("agent closed the connection");
            if v == json!({"return": id}) {
                return out;
            }
            // Keep the 0xFF prefix visible to comparisons.
            out.push(if delimited {
                json!({"0xff-prefixed": v})
            } else {
                v
            });
        }
    }

    /// Runs one command and returns its single reply.
    pub fn cmd(&mut self, execute: &str, args: Value) -> Value {
        let req = if args.is_null() {
            json!({"execute": execute})
        } else {
            json!({"execute": execute, "arguments": args})
        };
        let mut r = self.exchange(req.to_string().as_bytes());
        assert_eq!(r.len(), 1, "{execute}: expected one reply, got {r:?}");
        r.remove(0)
    }

    /// Resynchronizes like a host does: 0xFF + guest-sync-delimited.
    pub fn resync(&mut self) {
        self.sync_id += 1;
        let id = self.sync_id;
        let mut b = vec![0xFFu8];
        b.extend_from_slice(
            format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}")
                .as_bytes(),
        );
        self.send(&b);
        loop {
            let (delim, v) = self.read_line().expect("closed during resync");
            if delim && v == json!({"return": id}) {
                return;
            }
        }
    }
}

/// The `return` member, panicking with the reply otherwise.
pub fn ret(v: &Value) -> &Value {
    v.get("return")
        .unwrap_or_else(|| panic!("expected success, got {v}"))
}

/// The error class, panicking on success.
pub fn class(v: &Value) -> &str {
    v["error"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
}

/// Whether qemu-ga is available. Missing qemu-ga fails the test loudly,
/// unless `VIRTAGENT_SKIP_QEMU_GA=1` asks to skip (printing the reason).
pub fn have_qemu_ga() -> bool {
    if Path::new(QEMU_GA).exists() {
        return true;
    }
    let reason = format!("{QEMU_GA} is not installed (apt-get install qemu-guest-agent)");
    if std::env::var("VIRTAGENT_SKIP_QEMU_GA").as_deref() == Ok("1") {
        let _ =
            std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: {reason}\n"));
        return false;
    }
    panic!("{reason}; set VIRTAGENT_SKIP_QEMU_GA=1 to skip the comparison");
}
