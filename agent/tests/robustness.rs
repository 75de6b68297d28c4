//! Timeouts, channel loss and reopen, one-client-at-a-time semantics.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{class, have_qemu_ga, ret, temp_dir, virtagent_bin, AgentProc, Client, Kind};
use serde_json::{json, Value};

fn mkfifo(p: &Path) {
    let c = CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// True while a thread of process `pid` sleeps in a FIFO open waiting for
/// a writer (kernel `wait_for_partner`). Looking does not disturb it, unlike
/// opening the FIFO for writing, which would complete the open.
fn blocked_in_fifo_open(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).any(|t| {
        std::fs::read_to_string(t.path().join("wchan"))
            .is_ok_and(|w| w.trim() == "wait_for_partner")
    })
}

#[test]
fn hung_command_times_out_and_agent_keeps_serving() {
    let agent = AgentProc::start(Kind::Virtagent, "timeout", &["-T", "1"]);
    let fifo = agent.dir.join("fifo");
    mkfifo(&fifo);
    let mut c = agent.connect();
    for round in 0..3 {
        // open(2) of a FIFO without a writer blocks: a real hung syscall.
        let t0 = Instant::now();
        let r = c.cmd("guest-file-open", json!({"path": fifo.to_str().unwrap()}));
        let took = t0.elapsed();
        assert_eq!(class(&r), "GenericError", "{r}");
        let desc = r["error"]["desc"].as_str().unwrap();
        assert!(desc.contains("timed out"), "{desc}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "round {round}: {took:?}"
        );
        // The next command works at once.
        assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
        // The timeout cleanup interrupted the blocked open.
        let t0 = Instant::now();
        while blocked_in_fifo_open(agent.child.id()) {
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "the hung open was never interrupted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // No handle was consumed by the abandoned opens.
    let f = agent.dir.join("plain");
    std::fs::write(&f, "x").unwrap();
    let h = c.cmd("guest-file-open", json!({"path": f.to_str().unwrap()}));
    assert_eq!(ret(&h), &json!(1000));
}

#[test]
fn reads_of_an_empty_pipe_do_not_hang() {
    let agent = AgentProc::start(Kind::Virtagent, "pipe", &["-T", "5"]);
    let fifo = agent.dir.join("fifo");
    mkfifo(&fifo);
    let c_path = CString::new(fifo.to_str().unwrap()).unwrap();
    // Keep a writer open (non-blocking open for reading first keeps the FIFO openable).
    // SAFETY: valid path; O_RDWR on a FIFO never blocks on Linux.
    let keep = unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR) };
    assert!(keep >= 0);
    // SAFETY: keep is an fd we own.
    let mut keep = unsafe { File::from_raw_fd(keep) };
    let mut c = agent.connect();
    let h = c.cmd("guest-file-open", json!({"path": fifo.to_str().unwrap()}));
    let h = ret(&h).clone();
    let t0 = Instant::now();
    let r = c.cmd("guest-file-read", json!({"handle": h}));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(class(&r), "GenericError", "{r}");
    keep.write_all(b"data").unwrap();
    let r = c.cmd("guest-file-read", json!({"handle": h, "count": 100}));
    assert_eq!(ret(&r)["buf-b64"], json!("ZGF0YQ=="));
}

/// A partial object left by a client swallows the next client's request
/// until a 0xFF resync (parser state belongs to the agent); same as qemu-ga.
fn partial_then_reconnect(kind: Kind) -> Vec<Value> {
    let agent = AgentProc::start(kind, "reconnect", &[]);
    {
        let mut a = agent.connect();
        a.resync();
        a.send(br#"{"execute":"guest-ping","arguments":{"x":"#);
    }
    let mut b = agent.connect();
    b.send(br#"{"execute":"guest-ping","id":"after-partial"}"#);
    let mut got = Vec::new();
    b.send(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":778}}");
    loop {
        let (delim, v) = b.read_line().expect("reply");
        if delim && v == json!({"return": 778}) {
            break;
        }
        got.push(v);
    }
    assert_eq!(ret(&b.cmd("guest-ping", Value::Null)), &json!({}));
    got
}

#[test]
fn client_disconnect_and_reconnect() {
    let ours = partial_then_reconnect(Kind::Virtagent);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(class(&ours[0]), "GenericError");
    if have_qemu_ga() {
        let theirs = partial_then_reconnect(Kind::QemuGa);
        assert_eq!(theirs.len(), ours.len(), "qemu-ga: {theirs:?}");
        assert_eq!(class(&theirs[0]), class(&ours[0]));
    }
}

#[test]
fn one_client_at_a_time() {
    let agent = AgentProc::start(Kind::Virtagent, "oneclient", &[]);
    let mut a = agent.connect();
    assert_eq!(ret(&a.cmd("guest-ping", Value::Null)), &json!({}));
    let mut b = agent.connect();
    b.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    b.send(br#"{"execute":"guest-ping","id":"b"}"#);
    let mut buf = [0u8; 64];
    assert!(
        b.s.read(&mut buf).is_err(),
        "second client served while the first is connected"
    );
    drop(a);
    b.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (_, v) = b.read_line().expect("reply after first client left");
    assert_eq!(v, json!({"return": {}, "id": "b"}));
}

struct Pty {
    master: File,
    slave: String,
}

fn open_pty(raw: bool) -> Pty {
    // SAFETY: standard pty allocation sequence on an fd we own.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let slave = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        if raw {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(fd, &mut t);
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Pty {
            master: File::from_raw_fd(fd),
            slave,
        }
    }
}

/// Reads one `\n`-terminated reply from the pty master (5 s timeout).
fn pty_line(m: &mut File, acc: &mut Vec<u8>) -> Vec<u8> {
    let t0 = Instant::now();
    loop {
        if let Some(i) = acc.iter().position(|b| *b == b'\n') {
            return acc.drain(..=i).collect();
        }
        let mut pfd = libc::pollfd {
            fd: m.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 200) };
        if pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 4096];
            if let Ok(n) = m.read(&mut b) {
                acc.extend_from_slice(&b[..n]);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no reply on the pty; got {:?}",
            String::from_utf8_lossy(acc)
        );
    }
}

fn start_on_device(method: &str, path: &Path, dir: &Path) -> std::process::Child {
    Command::new(common::virtagent_bin())
        .args(["-m", method, "-p"])
        .arg(path)
        .arg("-t")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start virtagent")
}

#[test]
fn isa_serial_sets_raw_mode() {
    let dir = temp_dir("isa");
    let mut pty = open_pty(false);
    let mut child = start_on_device("isa-serial", Path::new(&pty.slave), &dir);
    std::thread::sleep(Duration::from_millis(300));
    // Without raw mode the line discipline would echo and buffer until '\n'.
    pty.master
        .write_all(br#"{"execute":"guest-ping","id":1}"#)
        .unwrap();
    let mut acc = Vec::new();
    let line = pty_line(&mut pty.master, &mut acc);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(line, b"{\"return\": {}, \"id\": 1}\n");
}

#[test]
fn virtio_serial_channel_loss_and_reopen() {
    let dir = temp_dir("virtio");
    let port = dir.join("org.qemu.guest_agent.0");
    // The agent starts before the port exists and waits for it.
    let mut child = start_on_device("virtio-serial", &port, &dir);
    std::thread::sleep(Duration::from_millis(250));
    let mut p1 = open_pty(true);
    std::os::unix::fs::symlink(&p1.slave, &port).unwrap();
    let mut acc = Vec::new();
    p1.master
        .write_all(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1}}")
        .unwrap();
    let mut ok = false;
    for _ in 0..3 {
        let l = pty_line(&mut p1.master, &mut acc);
        if l == b"\xff{\"return\": 1}\n" {
            ok = true;
            break;
        }
    }
    assert!(ok, "no sync reply on the first channel");
    // The channel goes away (hot-unplug): master closed, node removed.
    drop(p1);
    std::thread::sleep(Duration::from_millis(300));
    // A new channel appears at the same path.
    let mut p2 = open_pty(true);
    let tmp = dir.join("port.new");
    std::os::unix::fs::symlink(&p2.slave, &tmp).unwrap();
    std::fs::rename(&tmp, &port).unwrap();
    let t0 = Instant::now();
    let mut acc = Vec::new();
    let mut answered = false;
    while t0.elapsed() < Duration::from_secs(5) && !answered {
        p2.master
            .write_all(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":2}}")
            .unwrap();
        let mut pfd = libc::pollfd {
            fd: p2.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 300) };
        if pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 4096];
            if let Ok(n) = p2.master.read(&mut b) {
                acc.extend_from_slice(&b[..n]);
            }
        }
        let want: &[u8] = b"\xff{\"return\": 2}\n";
        answered = acc.windows(want.len()).any(|w| w == want);
    }
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(alive, "agent exited on channel loss");
    let tail = String::from_utf8_lossy(&acc[acc.len().saturating_sub(200)..]).into_owned();
    assert!(
        answered,
        "agent did not reopen the channel; last bytes: {tail:?}"
    );
}

#[test]
fn hostile_bytes_never_kill_the_agent() {
    let agent = AgentProc::start(Kind::Virtagent, "fuzz", &[]);
    let mut c = agent.connect();
    // Deterministic pseudo-random garbage mixed with JSON fragments.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let frags: [&[u8]; 6] = [b"{", b"}", b"[", b"\"", b"'", b"\\"];
    for _ in 0..20 {
        let mut blob = Vec::new();
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(5) {
                blob.extend_from_slice(frags[(x >> 8) as usize % frags.len()]);
            } else {
                blob.push((x >> 16) as u8);
            }
        }
        c.send(&blob);
    }
    c.resync();
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    let _ = Client::connect(&agent.sock);
}

#[test]
fn daemonize_pidfile_and_clean_exit() {
    let dir = temp_dir("daemon");
    let sock = dir.join("sock");
    let pidfile = dir.join("agent.pid");
    let st = Command::new(common::virtagent_bin())
        .args(["-d", "-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(&dir)
        .arg("-f")
        .arg(&pidfile)
        .status()
        .expect("start");
    assert!(st.success(), "the foreground process exits 0 after forking");
    let t0 = Instant::now();
    while !(pidfile.exists() && sock.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut c = Client::connect(&sock);
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    // A second instance refuses the locked pid file.
    let second = Command::new(common::virtagent_bin())
        .args(["-m", "unix-listen", "-p"])
        .arg(dir.join("sock2"))
        .arg("-t")
        .arg(&dir)
        .arg("-f")
        .arg(&pidfile)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !second.success(),
        "second instance started despite the pid file lock"
    );
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t0 = Instant::now();
    while pidfile.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "pid file not removed at exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frozen_marker_survives_restart_until_thaw() {
    let dir = temp_dir("marker");
    // A previous instance was killed while filesystems were frozen.
    std::fs::write(dir.join("qga.state.isfrozen"), "").unwrap();
    let sock = dir.join("sock");
    let mut child = Command::new(common::virtagent_bin())
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::connect(&sock);
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("frozen")
    );
    assert_eq!(
        class(&c.cmd("guest-get-host-name", Value::Null)),
        "CommandNotFound"
    );
    assert!(c
        .cmd("guest-fsfreeze-thaw", Value::Null)
        .get("return")
        .is_some());
    assert!(ret(&c.cmd("guest-get-host-name", Value::Null))["host-name"].is_string());
    assert!(!dir.join("qga.state.isfrozen").exists());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Many children at once, exiting in a different order than started, some
/// with captured output: each one's own status and output is reported (the
/// single reaper thread waits for exactly its children), and none is left
/// behind as a zombie once reported.
#[test]
fn many_concurrent_children_are_each_reaped_with_their_status() {
    concurrent_children(Kind::Virtagent);
    // The reference behaves the same (have_qemu_ga: fails loudly where it is missing).
    if have_qemu_ga() {
        concurrent_children(Kind::QemuGa);
    }
}

fn concurrent_children(kind: Kind) {
    let agent = AgentProc::start(kind, "reaper", &[]);
    let mut c = agent.connect();
    let n = 60;
    let mut pids = Vec::new();
    for i in 0..n {
        // Later children exit first (sleep shrinks with i).
        let script = format!("sleep 0.{:02}; echo out{i}; exit {}", (n - i) % 100, i % 7);
        let capture = i % 2 == 0;
        let r = c.cmd(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": capture}),
        );
        pids.push((ret(&r)["pid"].as_i64().expect("pid"), i, capture));
    }
    let t0 = Instant::now();
    for (pid, i, capture) in pids {
        let st = loop {
            let st = c.cmd("guest-exec-status", json!({"pid": pid}));
            if ret(&st)["exited"] == json!(true) {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "child {i} not reaped: {st}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(ret(&st)["exitcode"], json!(i % 7), "{st}");
        if capture {
            let out = format!("out{i}\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(out);
            assert_eq!(ret(&st)["out-data"], json!(b64), "{st}");
        } else {
            assert!(ret(&st).get("out-data").is_none(), "{st}");
        }
        // Reported once: the pid is forgotten, and the process is gone (no zombie).
        let again = c.cmd("guest-exec-status", json!({"pid": pid}));
        assert_eq!(class(&again), "GenericError", "{again}");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left behind"
        );
    }
}

/// `-p` naming something that is not a socket says what is there (not "Address already in
/// use") and leaves it alone; a socket another agent is listening on is refused, and that agent
/// keeps serving and keeps its socket when the refused one exits.
#[test]
fn socket_path_conflicts_are_refused_and_named() {
    let dir = temp_dir("sockpath");
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let run = |path: &Path| {
        Command::new(virtagent_bin())
            .args(["-m", "unix-listen", "-p"])
            .arg(path)
            .arg("-t")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("exists and is a regular file, not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let live = AgentProc::start(Kind::Virtagent, "sockpath-live", &[]);
    let out = run(&live.sock);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is in use: another process is listening on it"),
        "{err}"
    );
    assert!(live.sock.exists());
    let mut c = live.connect();
    assert_eq!(c.cmd("guest-ping", Value::Null), json!({"return": {}}));
    let _ = std::fs::remove_dir_all(&dir);
}
