//! The QMP monitor of the real `vmm` binary: protocol rules, hostile input, many sessions,
//! machine commands, signals and command-line errors.

mod common;

use common::*;
use qmp::client::QmpClient;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

#[test]
fn greeting_and_negotiation_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &["-name", "vm1"]);
    let mut c = QmpClient::connect_agent(&vmm.addr()).unwrap();
    let g = c.next_message().unwrap();
    assert_eq!(g["QMP"]["version"]["qemu"]["major"], 7);
    assert!(g["QMP"]["capabilities"].is_array());
    let r = raw(&mut c, json!({"execute":"query-status","id":1}));
    assert_eq!(
        r,
        json!({"id":1,"error":{"class":"CommandNotFound","desc":"Expecting capabilities negotiation with 'qmp_capabilities'"}})
    );
    let r = raw(
        &mut c,
        json!({"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}),
    );
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(
        raw(&mut c, json!({"execute":"qmp_capabilities"})),
        json!({"return":{}})
    );
    let r = raw(&mut c, json!({"execute":"qmp_capabilities"}));
    assert_eq!(r["error"]["class"], "CommandNotFound");
    assert_eq!(
        raw(&mut c, json!({"execute":"query-name"})),
        json!({"return":{"name":"vm1"}})
    );
    let v = raw(&mut c, json!({"execute":"query-version"}));
    assert_eq!(v["return"], g["QMP"]["version"]);
}

#[test]
fn bad_requests_get_qemu_shaped_errors_and_the_session_survives() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &[]);
    let mut c = vmm.client();
    let cases: Vec<(&[u8], &str, Option<Value>)> = vec![
        (b"{\"execute\": }", "GenericError", None),
        (b"[1, 2]", "GenericError", None),
        (b"\"just a string\" ", "GenericError", None),
        (
            b"{\"execute\":\"nope\",\"id\":{\"x\":[1]}}",
            "CommandNotFound",
            Some(json!({"x":[1]})),
        ),
        (
            b"{\"execute\":\"query-status\",\"arguments\":{\"verbose\":true},\"id\":2}",
            "GenericError",
            Some(json!(2)),
        ),
        (
            b"{\"execute\":\"query-status\",\"arguments\":[],\"id\":3}",
            "GenericError",
            Some(json!(3)),
        ),
        (
            b"{\"execute\":\"ringbuf-read\",\"arguments\":{\"device\":1,\"size\":1},\"id\":4}",
            "GenericError",
            Some(json!(4)),
        ),
        (
            b"{\"execute\":\"query-status\",\"control\":1,\"id\":5}",
            "GenericError",
            Some(json!(5)),
        ),
        (
            b"{\"exec-oob\":\"query-status\",\"id\":6}",
            "GenericError",
            Some(json!(6)),
        ),
        (
            b"{'execute':'nope2','id':'sq'}",
            "CommandNotFound",
            Some(json!("sq")),
        ),
        (b"\xff", "GenericError", None),
    ];
    for (input, class, id) in cases {
        c.send_raw(input).unwrap();
        let r = c.next_reply().unwrap();
        assert_eq!(
            r["error"]["class"],
            class,
            "input {:?} -> {r}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(
            r.get("id").cloned(),
            id,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    let r = raw(&mut c, json!({"execute":"query-status","id":"alive"}));
    assert_eq!(
        r,
        json!({"return":{"status":"running","running":true,"singlestep":false},"id":"alive"})
    );
}

#[test]
fn huge_line_and_endless_nesting_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(dir.path(), &[]);
    let rss_before = vmm.proc.rss_kib();
    for (what, prefix, fill) in [
        ("64 MiB string", &b"{\"execute\":\""[..], b'a'),
        ("nesting", &b""[..], b'['),
    ] {
        let mut s = UnixStream::connect(&vmm.qmp).unwrap();
        let mut greeting = [0u8; 512];
        let _ = s.read(&mut greeting).unwrap();
        s.write_all(b"{\"execute\":\"qmp_capabilities\"}").unwrap();
        s.write_all(prefix).unwrap();
        let chunk = vec![fill; 1 << 20];
        let mut sent = 0usize;
        // The VMM may hang up part way (that is allowed); it must not grow without bound.
        while sent < 64 << 20 {
            match s.write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("\"error\""),
            "{what}: expected an error reply, got {text:?}"
        );
        assert!(vmm.proc.is_running(), "{what}: the VMM died");
        let rss = vmm.proc.rss_kib();
        assert!(
            rss < rss_before + 200 * 1024,
            "{what}: RSS grew from {rss_before} KiB to {rss} KiB"
        );
    }
    let mut c = vmm.client();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap().unwrap()["running"],
        true
    );
}

#[test]
fn two_hundred_sessions_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "30");
    let mut first = vmm.client();
    wait_agent_up(&mut first, Duration::from_secs(10));
    let mut clients: Vec<QmpClient> = (0..200).map(|_| vmm.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&json!({"execute":"guest-sync","arguments":{"id": i},"id": i}))
            .unwrap();
        c.send(&json!({"execute":"query-status","id": format!("s{i}")}))
            .unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.next_reply().unwrap(), json!({"return": i, "id": i}));
        assert_eq!(c.next_reply().unwrap()["id"], format!("s{i}"));
    }
    // Events reach every negotiated session.
    first.execute("stop", Value::Null).unwrap().unwrap();
    for c in clients.iter_mut() {
        c.wait_event("STOP", Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn stop_cont_quit_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(dir.path(), &["-S"]);
    let mut c = vmm.client();
    let mut other = vmm.client();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap().unwrap(),
        json!({"status":"prelaunch","running":false,"singlestep":false})
    );
    c.execute("cont", Value::Null).unwrap().unwrap();
    other.wait_event("RESUME", Duration::from_secs(2)).unwrap();
    c.execute("stop", Value::Null).unwrap().unwrap();
    other.wait_event("STOP", Duration::from_secs(2)).unwrap();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap().unwrap()["status"],
        "paused"
    );
    assert_eq!(c.execute("quit", Value::Null).unwrap().unwrap(), json!({}));
    let ev = other
        .wait_event("SHUTDOWN", Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert!(vmm.proc.wait(Duration::from_secs(5)).success());
    assert!(!vmm.qmp.exists(), "the monitor socket is removed on exit");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let chardev_sock = dir.path().join("serial.sock");
    let cd = format!(
        "socket,id=ser0,path={},server=on,wait=off",
        chardev_sock.display()
    );
    let mut vmm = Vmm::start(dir.path(), &["-chardev", &cd]);
    assert!(chardev_sock.exists());
    let mut c = vmm.client();
    let st = vmm
        .proc
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    assert!(st.success(), "{st:?}");
    let ev = c.wait_event("SHUTDOWN", Duration::from_secs(2)).unwrap();
    assert_eq!(ev["data"]["reason"], "host-signal");
    assert!(
        !vmm.qmp.exists() && !chardev_sock.exists(),
        "sockets removed"
    );
}

#[test]
fn chardevs_are_listed_and_ringbuf_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");
    let sock = dir.path().join("c.sock");
    let args = [
        "-chardev".to_string(),
        "ringbuf,id=rb,size=16".to_string(),
        "-chardev".to_string(),
        format!("file,id=f,path={}", file.display()),
        "-chardev".to_string(),
        format!("socket,id=s,path={},server=on,wait=off", sock.display()),
        "-chardev".to_string(),
        "null,id=n".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let vmm = Vmm::start(dir.path(), &args);
    let mut c = vmm.client();
    let list = c.execute("query-chardev", Value::Null).unwrap().unwrap();
    let labels: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["rb", "f", "s", "n"]);
    assert_eq!(
        list[2]["filename"],
        format!("disconnected:unix:{},server=on", sock.display())
    );
    let _peer = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let list = c.execute("query-chardev", Value::Null).unwrap().unwrap();
    assert_eq!(
        list[2]["filename"],
        format!("unix:{},server=on", sock.display())
    );
    c.execute(
        "ringbuf-write",
        json!({"device":"rb","data":"0123456789abcdefXYZ"}),
    )
    .unwrap()
    .unwrap();
    let r = c
        .execute("ringbuf-read", json!({"device":"rb","size":100}))
        .unwrap()
        .unwrap();
    assert_eq!(
        r, "3456789abcdefXYZ",
        "a 16-byte ring keeps the newest bytes"
    );
    let e = c
        .execute("ringbuf-read", json!({"device":"f","size":1}))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.desc, "f is not a ringbuf device");
    assert!(file.exists());
}

#[test]
fn bad_command_lines_fail_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["-machine", "bogus"], "-machine"),
        (
            &["-machine", "none", "-qmp", "unix:/tmp/x,serverr=on"],
            "'serverr'",
        ),
        (
            &["-machine", "none", "-chardev", "socket,id=a"],
            "-chardev socket",
        ),
        (
            &[
                "-machine",
                "none",
                "-chardev",
                "qmp_proxy,id=q,timeout=abc,path=/x",
            ],
            "timeout",
        ),
        (&["-machine", "none", "-frobnicate"], "-frobnicate"),
        (
            &[
                "-machine",
                "none",
                "-device",
                "virtserialport,chardev=missing",
            ],
            "'missing'",
        ),
        (
            &["-machine", "none", "-qmp", "unix:/nonexistent-dir/q.sock"],
            "-qmp",
        ),
        (
            &[
                "-machine",
                "none",
                "-chardev",
                "file,id=f,path=/nonexistent-dir/f",
            ],
            "'f'",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should name {needle}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-chardev"));
}

#[test]
fn wait_on_holds_start_up_and_a_signal_ends_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("w.sock");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args([
                "-machine",
                "none",
                "-qmp",
                &format!("unix:{},server=on,wait=on", qmp.display()),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // A client that connects is served (its session is the one that was waited for).
    let mut p = Proc {
        child: spawn(),
        name: "vmm",
    };
    wait_for_path(&qmp, Duration::from_secs(5));
    let mut c = QmpClient::connect(&qmp::SocketAddr::Unix(qmp.clone())).unwrap();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap().unwrap()["running"],
        true
    );
    c.execute("quit", Value::Null).unwrap().unwrap();
    assert!(p.wait(Duration::from_secs(5)).success());
    // SIGTERM while still waiting ends the process cleanly.
    let mut p = Proc {
        child: spawn(),
        name: "vmm",
    };
    wait_for_path(&qmp, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    assert!(p.is_running(), "still waiting for a client");
    assert!(p
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .success());
    assert!(!qmp.exists());
}

#[test]
fn vmctl_runs_commands_readably() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &["-name", "demo", "-chardev", "ringbuf,id=rb"]);
    let vmctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .arg("-s")
            .arg(&vmm.qmp)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = vmctl(&["query-name"]);
    assert!(ok && out.contains("\"demo\""), "{out}");
    let (ok, _) = vmctl(&["ringbuf-write", "device=rb", "data=hello"]);
    assert!(ok);
    let (ok, out) = vmctl(&["ringbuf-read", "device=rb", "size=100"]);
    assert!(ok);
    assert_eq!(out, "hello\n");
    let (ok, out) = vmctl(&["no-such-thing"]);
    assert!(!ok);
    assert!(out.starts_with("error: CommandNotFound"), "{out}");
}

#[test]
fn tcp_monitor_client_mode_and_pty() {
    let dir = tempfile::tempdir().unwrap();
    // Pick a free port by binding to port 0 first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Client mode: the VMM connects to a listener of ours and greets it.
    let client_sock = dir.path().join("mgmt.sock");
    let mgmt = std::os::unix::net::UnixListener::bind(&client_sock).unwrap();
    let tcp = format!("tcp:127.0.0.1:{port},server=on,wait=off");
    let client = format!("unix:{},server=off", client_sock.display());
    let vmm = Vmm::start(
        dir.path(),
        &[
            "-name",
            "n1",
            "-qmp",
            &tcp,
            "-qmp",
            &client,
            "-chardev",
            "pty,id=term",
        ],
    );
    let mut t = QmpClient::connect(&qmp::SocketAddr::Tcp(format!("127.0.0.1:{port}"))).unwrap();
    let list = t.execute("query-chardev", Value::Null).unwrap().unwrap();
    let pty = list[0]["filename"].as_str().unwrap().to_string();
    assert!(pty.starts_with("pty:/dev/pts/"), "{pty}");
    assert!(std::path::Path::new(&pty[4..]).exists());
    let (s, _) = mgmt.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(s));
    let greeting = lines.next().unwrap().unwrap();
    assert!(greeting.starts_with("{\"QMP\""), "{greeting}");
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-name\"}")
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "{\"return\": {}}");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "{\"return\": {\"name\": \"n1\"}}"
    );
    drop(vmm);
}

/// Connects to `l` until the kernel stops answering: its accept queue is then full and further
/// SYNs are dropped, so a `connect` hangs as to a host that does not answer. Returns the
/// connections that fill the queue.
fn fill_accept_queue(l: &std::net::TcpListener) -> Vec<std::net::TcpStream> {
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fill.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return fill,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
        assert!(fill.len() < 16, "the kernel keeps accepting SYNs");
    }
}

fn local_ports(s: &[std::net::TcpStream]) -> Vec<u16> {
    s.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

/// Accepts one connection that is not among `known` (local ports of our own fillers).
fn accept_other(l: &std::net::TcpListener, known: &[u16], limit: Duration) -> std::net::TcpStream {
    l.set_nonblocking(true).unwrap();
    let t = std::time::Instant::now();
    loop {
        match l.accept() {
            Ok((s, peer)) if !known.contains(&peer.port()) => return s,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(t.elapsed() < limit, "no connection from the vmm");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn tcp_client_chardev_connecting_to_a_silent_peer_does_not_stall_the_vmm() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket we own; it only shrinks the backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let port = l.local_addr().unwrap().port();
    let fill = fill_accept_queue(&l);
    let mut known = local_ports(&fill);
    let cd = format!("socket,id=up,host=127.0.0.1,port={port},reconnect=1");
    let vmm = Vmm::start(dir.path(), &["-chardev", &cd]);
    // The connect is pending (its SYN dropped): the monitor answers meanwhile.
    let mut c = vmm.client();
    c.set_timeout(Duration::from_secs(2)).unwrap();
    let filename = |c: &mut QmpClient| {
        let list = c.execute("query-chardev", Value::Null).unwrap().unwrap();
        list[0]["filename"].as_str().unwrap().to_string()
    };
    assert_eq!(
        filename(&mut c),
        format!("disconnected:tcp:127.0.0.1:{port}")
    );
    // Room in the queue: the kernel's SYN retry (after 1 s, then 3 s) gets through.
    drop(fill);
    let mut peer = accept_other(&l, &known, Duration::from_secs(10));
    let t = std::time::Instant::now();
    while filename(&mut c) != format!("tcp:127.0.0.1:{port}") {
        assert!(t.elapsed() < Duration::from_secs(5), "not connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill the queue again and go away: the reconnect, started from the event loop, hangs in
    // the kernel the same way, and the monitor keeps answering at once.
    let fill = fill_accept_queue(&l);
    known.extend(local_ports(&fill));
    peer.write_all(b"bye").unwrap();
    drop(peer);
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        let q = std::time::Instant::now();
        let st = c.execute("query-status", Value::Null).unwrap().unwrap();
        assert_eq!(st["status"], "running");
        assert!(
            q.elapsed() < Duration::from_millis(500),
            "{:?}",
            q.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        filename(&mut c),
        format!("disconnected:tcp:127.0.0.1:{port}")
    );
}
