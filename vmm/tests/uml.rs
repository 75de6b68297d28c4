//! A real Linux guest: Debian's User-Mode Linux kernel (6.1) attaches our virtio-serial device
//! over vhost-user (`vmm -machine vhost-user,socket=...`, `virtio_uml.device=SOCKET:3`), its
//! real `virtio_console` driver runs the port handshake, and a real agent inside the guest
//! (Debian's qemu-ga as the oracle, and our virtagent) serves a host QMP client through the
//! proxy. One boot per agent; the scenarios run in order on it, guest-shutdown last.
//!
//! The guest root is the host's `/` over hostfs (read-only), so host binaries run inside it;
//! tests/uml/init.sh is its init. Skipped (with the reason printed) when UML is not installed.

mod common;

use base64::Engine;
use common::*;
use qmp::client::QmpClient;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LINUX: &str = "/usr/bin/linux";
const MKFS: &str = "/sbin/mkfs.ext4";
const AGENT_PORT: &str = "org.qemu.guest_agent.0";
const MIB: usize = 1 << 20;

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Deterministic pseudo-random bytes (xorshift), all 256 values present.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Why the UML tests cannot run here, if they cannot.
fn uml_missing() -> Option<String> {
    if !Path::new(LINUX).exists() {
        return Some(format!(
            "{LINUX} not installed (Debian package user-mode-linux)"
        ));
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox not installed (busybox-static)".into());
    }
    None
}

/// The guest's init script (a host path: the guest's root is the host's /).
fn init_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/uml/init.sh")
        .canonicalize()
        .expect("tests/uml/init.sh")
}

/// `target/<profile>/virtagent`, next to the vmm binary (built by `cargo test --workspace`).
fn virtagent() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_vmm")).with_file_name("virtagent");
    p.exists().then_some(p)
}

/// A UML guest: the kernel runs as several host processes, so it gets its own process group
/// and the whole group is killed when the test ends early (a plain kill of the main process
/// leaves its helpers running).
struct UmlProc(Proc);

impl Drop for UmlProc {
    fn drop(&mut self) {
        if self.0.is_running() {
            // SAFETY: kill(2) on the process group of our own child (it leads the group).
            unsafe { libc::kill(-(self.0.pid() as i32), libc::SIGKILL) };
        }
    }
}

/// vmm in vhost-user mode + a UML guest attached to it, with a QMP client that connected
/// before the guest booted (so it sees every event).
struct Guest {
    agent: String,
    dir: tempfile::TempDir,
    vmm: Vmm,
    uml: UmlProc,
    qmp: QmpClient,
}

impl Guest {
    fn boot(agent: &str) -> Guest {
        let dir = tempfile::Builder::new()
            .prefix("uml")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        // A disk for fsfreeze: ext4 made by the host, mounted by the guest's init.
        let img = d.join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 * MIB as u64)
            .unwrap();
        assert!(
            Path::new(MKFS).exists(),
            "{MKFS} missing: install e2fsprogs (scripts/setup.sh)"
        );
        let st = Command::new(MKFS)
            .args(["-q", "-F"])
            .arg(&img)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4 failed");

        let vu = d.join("vu.sock");
        let args: Vec<String> = vec![
            "-machine".into(),
            format!("vhost-user,socket={}", vu.display()),
            "-chardev".into(),
            "qmp_proxy,id=qga0,timeout=20".into(),
            "-device".into(),
            "virtio-serial,max_ports=8".into(),
            "-device".into(),
            format!("virtserialport,chardev=qga0,name={AGENT_PORT},id=port0"),
            "-chardev".into(),
            format!(
                "socket,id=sock0,path={},server=on,wait=off",
                d.join("port.sock").display()
            ),
            "-device".into(),
            "virtserialport,chardev=sock0,name=test.socket,id=port1".into(),
            "-chardev".into(),
            format!("file,id=file0,path={}", d.join("port.out").display()),
            "-device".into(),
            "virtserialport,chardev=file0,name=test.file,id=port2".into(),
            "-chardev".into(),
            "ringbuf,id=ring0".into(),
            "-device".into(),
            "virtserialport,chardev=ring0,name=test.ring,id=port3".into(),
            "-chardev".into(),
            "pty,id=pty0".into(),
            "-device".into(),
            "virtserialport,chardev=pty0,name=test.pty,id=port4".into(),
            "-chardev".into(),
            "null,id=null0".into(),
            "-device".into(),
            "virtserialport,chardev=null0,name=test.null,id=port5".into(),
        ];
        let vmm = Vmm::launch(d, &args, false, &[&vu]);
        // (connect() negotiates capabilities)
        let qmp = vmm.client();

        let child = Command::new(LINUX)
            .arg("mem=256M")
            .arg("root=/dev/root")
            .arg("rootfstype=hostfs")
            .arg("rootflags=/")
            .arg("ro")
            .arg(format!("uml_dir={}", d.display()))
            .arg(format!("ubd0={}", img.display()))
            .arg(format!("init={}", init_script().display()))
            .arg(format!("virtio_uml.device={}:3", vu.display()))
            .arg("con=null")
            .arg("con0=null,fd:1")
            .arg(format!("VA_AGENT={agent}"))
            .arg(format!("VA_OUT={}", d.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("uml.log")).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start linux");
        let uml = UmlProc(Proc {
            child,
            name: "linux",
        });
        let t = Instant::now();
        let mut g = Guest {
            agent: agent.rsplit('/').next().unwrap_or(agent).to_string(),
            dir,
            vmm,
            uml,
            qmp,
        };
        let up = g.qmp.wait_event("GUEST_AGENT_UP", Duration::from_secs(90));
        assert!(up.is_ok(), "agent never came up; guest log:\n{}", g.logs());
        eprintln!(
            "uml {}: booted, agent up ({:.1} s)",
            g.agent,
            t.elapsed().as_secs_f64()
        );
        g
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn logs(&self) -> String {
        let tail = |n: &str| {
            let s = std::fs::read_to_string(self.path(n)).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- uml.log ---\n{}\n--- vmm.log ---\n{}",
            tail("uml.log"),
            tail("vmm.log")
        )
    }

    /// Runs a guest command and returns `return`, failing with the logs on an error.
    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        match self.qmp.execute(cmd, args).expect("QMP I/O") {
            Ok(v) => v,
            Err(e) => panic!("{cmd}: {e}\n{}", self.logs()),
        }
    }

    /// guest-exec with captured output; waits for the exit and returns (exitcode, stdout).
    fn exec(&mut self, path: &str, args: &[&str]) -> (i64, Vec<u8>) {
        let r = self.ok(
            "guest-exec",
            json!({"path": path, "arg": args, "capture-output": true}),
        );
        let pid = r["pid"].as_i64().unwrap();
        let t = Instant::now();
        loop {
            let s = self.ok("guest-exec-status", json!({"pid": pid}));
            if s["exited"].as_bool() == Some(true) {
                let out = s["out-data"].as_str().map(unb64).unwrap_or_default();
                return (s["exitcode"].as_i64().unwrap_or(-1), out);
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{path} still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a shell command in the guest without waiting for it.
    fn spawn_sh(&mut self, script: &str) -> i64 {
        let r = self.ok(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script]}),
        );
        r["pid"].as_i64().unwrap()
    }

    fn wait_exec(&mut self, pid: i64, limit: Duration) -> i64 {
        let t = Instant::now();
        loop {
            let s = self.ok("guest-exec-status", json!({"pid": pid}));
            if s["exited"].as_bool() == Some(true) {
                return s["exitcode"].as_i64().unwrap_or(-1);
            }
            assert!(t.elapsed() < limit, "guest process {pid} still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_file(&mut self, path: &str, data: &[u8]) {
        let h = self.ok("guest-file-open", json!({"path": path, "mode": "w"}));
        let mut off = 0;
        // One request per 8 MiB (an 8 MiB file is one guest-file-write of ~11 MB of JSON).
        while off < data.len() || off == 0 {
            let end = (off + 8 * MIB).min(data.len());
            let r = self.ok(
                "guest-file-write",
                json!({"handle": h, "buf-b64": b64(&data[off..end])}),
            );
            assert_eq!(r["count"].as_u64(), Some((end - off) as u64));
            off = end;
            if data.is_empty() {
                break;
            }
        }
        self.ok("guest-file-close", json!({"handle": h}));
    }

    fn read_file(&mut self, path: &str) -> Vec<u8> {
        let h = self.ok("guest-file-open", json!({"path": path, "mode": "r"}));
        let mut out = Vec::new();
        loop {
            let r = self.ok("guest-file-read", json!({"handle": h, "count": 8 * MIB}));
            out.extend(unb64(r["buf-b64"].as_str().unwrap()));
            if r["eof"].as_bool() == Some(true) || r["count"].as_u64() == Some(0) {
                break;
            }
        }
        self.ok("guest-file-close", json!({"handle": h}));
        out
    }

    /// Waits until the socket chardev `id` has accepted its peer (the port's host side is then
    /// connected: the chardev calls the device in the same event-loop turn).
    fn wait_chardev_connected(&mut self, id: &str) {
        let t = Instant::now();
        loop {
            let list = self.ok("query-chardev", Value::Null);
            let f = list
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["label"] == id)
                .and_then(|c| c["filename"].as_str())
                .unwrap_or_default()
                .to_string();
            if !f.is_empty() && !f.starts_with("disconnected:") {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "chardev {id}: {f}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next event called `name` (earlier events of other names are skipped).
    fn event(&mut self, name: &str) -> Value {
        match self.qmp.wait_event(name, Duration::from_secs(30)) {
            Ok(v) => v,
            Err(e) => panic!("no {name} event: {e}\n{}", self.logs()),
        }
    }
}

fn skip_reason() -> Option<String> {
    uml_missing()
}

/// A named scenario.
type Step = (&'static str, fn(&mut Guest));

/// Every scenario, in order, on one booted guest (guest-shutdown last).
fn scenarios(g: &mut Guest) {
    let steps: [Step; 7] = [
        ("basic commands", basic_commands),
        ("file round trips", file_round_trips),
        ("chardev ports", chardev_ports),
        ("fsfreeze", fsfreeze),
        ("agent killed", agent_killed),
        ("hostile guest", hostile_guest),
        ("shutdown", shutdown),
    ];
    for (name, step) in steps {
        let t = Instant::now();
        step(g);
        eprintln!(
            "uml {}: {name}: ok ({:.1} s)",
            g.agent,
            t.elapsed().as_secs_f64()
        );
    }
}

fn basic_commands(g: &mut Guest) {
    g.ok("guest-ping", Value::Null);
    let info = g.ok("guest-info", Value::Null);
    let cmds = info["supported_commands"].as_array().unwrap();
    assert!(cmds.iter().any(|c| c["name"] == "guest-file-read"));
    let os = g.ok("guest-get-osinfo", Value::Null);
    assert!(
        os["kernel-release"].as_str().unwrap().starts_with("6.1"),
        "{os}"
    );
    let (code, out) = g.exec("/bin/echo", &["hello", "from", "uml"]);
    assert_eq!((code, out.as_slice()), (0, &b"hello from uml\n"[..]));
    let ifs = g.ok("guest-network-get-interfaces", Value::Null);
    assert!(
        ifs.as_array().unwrap().iter().any(|i| i["name"] == "lo"),
        "{ifs}"
    );
}

fn file_round_trips(g: &mut Guest) {
    for (i, len) in [0usize, 1, 8 * MIB].into_iter().enumerate() {
        let data = pattern(len, 7 + i as u64);
        let path = format!("/tmp/rt{i}");
        g.write_file(&path, &data);
        let back = g.read_file(&path);
        assert!(back == data, "{len}-byte round trip differs");
    }
}

/// The other chardev backends on ports of the same device, through the real driver.
fn chardev_ports(g: &mut Guest) {
    // socket: guest→host 8 MiB, the host starting to read late (guest write blocks meanwhile).
    let g2h = pattern(8 * MIB, 11);
    std::fs::write(g.path("g2h.bin"), &g2h).unwrap();
    let mut s = UnixStream::connect(g.path("port.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    g.wait_chardev_connected("sock0");
    // The test's directory is /tmp/out in the guest (its /tmp is a tmpfs).
    let pid = g.spawn_sh("cat /tmp/out/g2h.bin > /dev/virtio-ports/test.socket");
    std::thread::sleep(Duration::from_millis(800));
    let mut got = vec![0u8; g2h.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == g2h, "guest→host bytes differ");
    assert_eq!(g.wait_exec(pid, Duration::from_secs(30)), 0);

    // socket: host→guest 8 MiB; the guest reader starts late (the host's writes back up).
    let h2g = pattern(8 * MIB, 13);
    let writer = {
        let mut s = s.try_clone().unwrap();
        let h2g = h2g.clone();
        std::thread::spawn(move || s.write_all(&h2g).unwrap())
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = g.spawn_sh(&format!(
        "head -c {} /dev/virtio-ports/test.socket > /tmp/out/h2g.recv",
        h2g.len()
    ));
    assert_eq!(g.wait_exec(pid, Duration::from_secs(60)), 0);
    writer.join().unwrap();
    let recv = std::fs::read(g.path("h2g.recv")).unwrap();
    assert!(
        recv == h2g,
        "host→guest bytes differ ({} bytes)",
        recv.len()
    );

    // Host disconnects: the guest's reader sees end of file.
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let (code, out) = g.exec("/bin/cat", &["/dev/virtio-ports/test.socket"]);
    assert_eq!((code, out.len()), (0, 0));
    // A new host connection works both ways again.
    let mut s = UnixStream::connect(g.path("port.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    g.wait_chardev_connected("sock0");
    let pid = g.spawn_sh(
        "head -c 5 /dev/virtio-ports/test.socket > /tmp/out/again.recv; \
         printf back > /dev/virtio-ports/test.socket",
    );
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"again").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
    assert_eq!(g.wait_exec(pid, Duration::from_secs(20)), 0);
    assert_eq!(std::fs::read(g.path("again.recv")).unwrap(), b"again");
    drop(s);

    // file
    let (code, _) = g.exec(
        "/bin/sh",
        &["-c", "printf hello-file > /dev/virtio-ports/test.file"],
    );
    assert_eq!(code, 0);
    let t = Instant::now();
    while std::fs::read(g.path("port.out")).unwrap_or_default() != b"hello-file" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "file chardev got nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // ringbuf, both ways through QMP
    let (code, _) = g.exec(
        "/bin/sh",
        &["-c", "printf hello-ring > /dev/virtio-ports/test.ring"],
    );
    assert_eq!(code, 0);
    let t = Instant::now();
    let mut ring = String::new();
    while ring.len() < 10 && t.elapsed() < Duration::from_secs(10) {
        let r = g.ok("ringbuf-read", json!({"device": "ring0", "size": 100}));
        ring.push_str(r.as_str().unwrap());
    }
    assert_eq!(ring, "hello-ring");

    // null: the guest's writes are taken (and dropped), they never block.
    let (code, _) = g.exec(
        "/bin/sh",
        &[
            "-c",
            "head -c 1048576 /dev/zero > /dev/virtio-ports/test.null",
        ],
    );
    assert_eq!(code, 0);

    // pty: the host opens the slave (the chardev notices and connects the port), bytes both ways.
    let log = std::fs::read_to_string(g.path("vmm.log")).unwrap();
    let pts = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("char device redirected to ")
                .and_then(|r| r.strip_suffix(" (label pty0)"))
        })
        .expect("pty path in the vmm's log")
        .to_string();
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pts)
        .unwrap();
    make_raw(&tty);
    // Read on a thread: a tty has no read timeout, and a test must fail, not hang.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = tty.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut got = [0u8; 9];
        let _ = tx.send(reader.read_exact(&mut got).map(|_| got));
    });
    // The chardev looks for an open slave once a second; until it has seen ours, the port's
    // host side is disconnected and the guest's bytes are dropped (as QEMU does): write again.
    let mut tries = 0;
    let got = loop {
        let (code, _) = g.exec(
            "/bin/sh",
            &["-c", "printf hello-pty > /dev/virtio-ports/test.pty"],
        );
        assert_eq!(code, 0);
        match rx.recv_timeout(Duration::from_millis(1500)) {
            Ok(r) => break r.unwrap(),
            Err(_) if tries < 10 => tries += 1,
            Err(_) => panic!("nothing from the pty"),
        }
    };
    assert_eq!(&got, b"hello-pty");
    let pid = g.spawn_sh("head -c 6 /dev/virtio-ports/test.pty > /tmp/out/pty.recv");
    std::thread::sleep(Duration::from_millis(300));
    tty.write_all(b"to-vm!").unwrap();
    assert_eq!(g.wait_exec(pid, Duration::from_secs(20)), 0);
    assert_eq!(std::fs::read(g.path("pty.recv")).unwrap(), b"to-vm!");
}

/// Raw mode (no echo, no line editing) on a terminal.
fn make_raw(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `t` is a valid termios.
    unsafe {
        assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
}

fn fsfreeze(g: &mut Guest) {
    let n = g.ok("guest-fsfreeze-freeze", Value::Null);
    assert!(n.as_i64().unwrap() >= 1, "nothing frozen: {n}");
    assert_eq!(g.ok("guest-fsfreeze-status", Value::Null), "frozen");
    let refused = g
        .qmp
        .execute(
            "guest-file-open",
            json!({"path": "/tmp/disk/x", "mode": "w"}),
        )
        .unwrap();
    assert!(refused.is_err(), "guest-file-open allowed while frozen");
    let t = g.ok("guest-fsfreeze-thaw", Value::Null);
    assert!(t.as_i64().unwrap() >= 1, "{t}");
    assert_eq!(g.ok("guest-fsfreeze-status", Value::Null), "thawed");
    // The disk is writable again.
    g.write_file("/tmp/disk/after-thaw", b"ok");
}

fn agent_killed(g: &mut Guest) {
    g.qmp.take_events();
    // Stop the agent; once the host has sent a ping (now in flight: nobody reads it), kill it.
    g.spawn_sh(
        "p=$(cat /tmp/agent.pid); kill -STOP $p; touch /tmp/out/stopped; \
         while [ ! -e /tmp/out/go ]; do sleep 0.05; done; sleep 0.3; kill -KILL $p",
    );
    wait_for_path(&g.path("stopped"), Duration::from_secs(20));
    g.qmp.send(&json!({"execute": "guest-ping"})).unwrap();
    std::fs::write(g.path("go"), b"").unwrap();
    let t = Instant::now();
    let r = g.qmp.next_reply().unwrap();
    let e = qmp::client::split_reply(&r).expect_err("ping answered by a stopped agent");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "in-flight request failed only after {:?} (the proxy timeout is 20 s)",
        t.elapsed()
    );
    assert!(e.to_string().contains("disconnected"), "{e}");
    g.event("GUEST_AGENT_DOWN");
    // The guest's init restarts the agent.
    g.event("GUEST_AGENT_UP");
    g.ok("guest-ping", Value::Null);
}

fn hostile_guest(g: &mut Guest) {
    // 64 MiB without newlines, with 0xFF bytes and invalid UTF-8, written by a guest program to
    // the agent's port while the agent is held down.
    let mut junk = pattern(64 * MIB, 17);
    for b in junk.iter_mut() {
        if *b == b'\n' {
            *b = 0xC0;
        }
    }
    std::fs::write(g.path("junk.bin"), &junk).unwrap();
    drop(junk);
    g.qmp.take_events();
    let rss0 = g.vmm.proc.rss_kib();
    g.spawn_sh(&format!(
        "touch /tmp/hold; kill -KILL $(cat /tmp/agent.pid); ok=; \
         for i in $(seq 100); do \
           if cat /tmp/out/junk.bin > /dev/virtio-ports/{AGENT_PORT}; then ok=1; break; fi; \
           sleep 0.1; \
         done; \
         [ -n \"$ok\" ] && echo ok > /tmp/out/junk.done; rm /tmp/hold"
    ));
    g.event("GUEST_AGENT_DOWN");
    let mut peak = rss0;
    let t = Instant::now();
    loop {
        peak = peak.max(g.vmm.proc.rss_kib());
        if g.qmp
            .wait_event("GUEST_AGENT_UP", Duration::from_millis(50))
            .is_ok()
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "agent not back after the garbage\n{}",
            g.logs()
        );
    }
    eprintln!(
        "hostile guest: vmm VmRSS {rss0} KiB before, peak {peak} KiB during 64 MiB of garbage"
    );
    assert!(
        peak < rss0 + 48 * 1024,
        "vmm grew by {} KiB for 64 MiB of garbage",
        peak - rss0
    );
    // The guest program got all 64 MiB through the port.
    assert_eq!(
        std::fs::read_to_string(g.path("junk.done")).unwrap_or_default(),
        "ok\n"
    );
    g.ok("guest-ping", Value::Null);
    g.ok("guest-info", Value::Null);
}

fn shutdown(g: &mut Guest) {
    g.qmp.take_events();
    g.ok("guest-shutdown", Value::Null);
    let ev = g.event("VSERPORT_CHANGE");
    assert_eq!(ev["data"], json!({"id": "port0", "open": false}), "{ev}");
    g.event("GUEST_AGENT_DOWN");
    let st = g.uml.0.wait(Duration::from_secs(30));
    eprintln!("uml exited: {st}");
    assert!(g.vmm.proc.is_running(), "vmm must outlive its frontend");
}

fn run(agent: &str) {
    let mut g = Guest::boot(agent);
    scenarios(&mut g);
}

#[test]
fn uml_guest_with_qemu_ga() {
    if let Some(why) = skip_reason() {
        skipped(why);
        return;
    }
    require_qemu_ga();
    run(QEMU_GA_NAME);
}

#[test]
fn uml_guest_with_virtagent() {
    if let Some(why) = skip_reason() {
        skipped(why);
        return;
    }
    let Some(agent) = virtagent() else {
        skipped(
            "virtagent not built next to vmm (cargo build -p agent, or cargo test --workspace)",
        );
        return;
    };
    run(agent.to_str().unwrap());
}

const QEMU_GA_NAME: &str = "qemu-ga";
