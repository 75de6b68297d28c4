//! Hostile and careless QMP clients against the real `vmm`: memory stays bounded, the event loop
//! never spins or stalls, socket paths are never stolen. (Hostile guests and vhost-user
//! frontends: vhost_user.rs.)

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The memory bound the issue states for a pipelining client and a streaming guest.
const RSS_BOUND_KIB: u64 = 64 << 10;

/// A negotiated raw session: the greeting and the `qmp_capabilities` reply have been read.
fn raw_session(sock: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "greeting: {line}");
    (&s).write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"return\""), "negotiation: {line}");
    (s, r)
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU time process `pid` uses over the next `window`, in clock ticks, with the ticks per second.
fn cpu_ticks_during(pid: u32, window: Duration) -> (u64, u64) {
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    (cpu_ticks(pid) - before, hz)
}

/// A client that pipelines up to 20 000 requests and reads every reply as fast as it can, for
/// 30 s: QEMU stays at 32 MiB on this client; so must `vmm`, and no reply may be lost.
#[test]
fn a_pipelining_client_keeps_vmm_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &[]);
    let (w, mut r) = raw_session(&vmm.qmp);
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, got, stop) = (sent.clone(), got.clone(), stop.clone());
        std::thread::spawn(move || {
            // query-commands: a reply of about 2 KiB for 30 bytes of request.
            let batch = b"{\"execute\":\"query-commands\"}\n".repeat(500);
            let mut w = w;
            while !stop.load(Ordering::SeqCst) {
                if sent.load(Ordering::SeqCst) - got.load(Ordering::SeqCst) > 19_500 {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                if w.write_all(&batch).is_err() {
                    break;
                }
                sent.fetch_add(500, Ordering::SeqCst);
            }
            w
        })
    };
    let reader = {
        let got = got.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        assert!(line.contains("\"query-status\""), "reply: {line}");
                        got.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
        let rss = vmm.proc.rss_kib();
        peak = peak.max(rss);
        assert!(
            rss < RSS_BOUND_KIB,
            "vmm RSS {rss} KiB after {:?} with {} replies outstanding",
            start.elapsed(),
            sent.load(Ordering::SeqCst) - got.load(Ordering::SeqCst)
        );
    }
    stop.store(true, Ordering::SeqCst);
    let w = writer.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    let t = Instant::now();
    while got.load(Ordering::SeqCst) < total {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} of {total} replies arrived",
            got.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
    reader.join().unwrap();
    eprintln!("pipelining client: {total} requests answered in 30 s, vmm peak RSS {peak} KiB");
    assert!(total > 20_000, "only {total} requests in 30 s");
}

/// 20 sessions that never read while events keep coming: the VMM bounds what it holds for them
/// all together, disconnects the slowest with a log line, and keeps serving the others.
#[test]
fn sessions_that_never_read_events_are_dropped_not_buffered_forever() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &[]);
    let sleepers: Vec<_> = (0..20).map(|_| raw_session(&vmm.qmp)).collect();
    let (w, r) = raw_session(&vmm.qmp);
    // The driver pipelines stop/cont (two events each for every session) and reads everything.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut r = r;
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            n
        })
    };
    // Enough events that each silent session is sent 10 MiB: 200 MiB in all, more than the
    // 128 MiB the monitor may hold for its sessions together.
    let batch = b"{\"execute\":\"stop\"}\n{\"execute\":\"cont\"}\n".repeat(200);
    let event_bytes = 2 * 105; // STOP and RESUME with their timestamps, as sent
    let pairs = (10u64 << 20) / event_bytes;
    let start = Instant::now();
    let mut w = w;
    let mut peak = 0;
    let limit_kib = (128 << 10) + RSS_BOUND_KIB;
    for _ in 0..pairs / 200 {
        w.write_all(&batch).unwrap();
        let rss = vmm.proc.rss_kib();
        peak = peak.max(rss);
        assert!(
            rss < limit_kib,
            "vmm RSS {rss} KiB after {:?}",
            start.elapsed()
        );
    }
    let t = Instant::now();
    let dropped = loop {
        let dropped = vmm.log_text().matches("disconnected: it left").count();
        if dropped > 0 || t.elapsed() > Duration::from_secs(20) {
            break dropped;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        dropped > 0,
        "no silent session was dropped; peak RSS {peak} KiB"
    );
    drop(sleepers);
    // The driver, which reads, is still served.
    let mut c = vmm.client();
    assert_eq!(
        c.execute("query-status", serde_json::Value::Null)
            .unwrap()
            .unwrap()["status"],
        "running"
    );
    done.store(true, Ordering::SeqCst);
    let _ = w.shutdown(std::net::Shutdown::Both);
    let n = reader.join().unwrap();
    eprintln!(
        "silent sessions: {dropped} dropped; {pairs} stop/cont in {:?}; driver read {n} bytes; \
         vmm peak RSS {peak} KiB",
        start.elapsed()
    );
}

/// At the descriptor limit the monitor stops accepting for a while instead of spinning on the
/// listener, logs it once, keeps serving its sessions, and accepts again once fds are free.
#[test]
fn at_the_fd_limit_the_monitor_backs_off_and_keeps_serving() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let log = dir.path().join("vmm.log");
    let cd_sock = dir.path().join("cd.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(["-machine", "none", "-chardev"])
        .arg(format!(
            "socket,id=c0,path={},server=on,wait=off",
            cd_sock.display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = Proc {
        child: cmd.spawn().unwrap(),
        name: "vmm",
    };
    wait_for_path(&qmp, Duration::from_secs(10));
    // Fill the table: sessions until one gets no greeting.
    let mut sessions = Vec::new();
    loop {
        let s = UnixStream::connect(&qmp).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 1];
        match (&s).read(&mut b) {
            Ok(1) => sessions.push(s),
            _ => break,
        }
        assert!(sessions.len() < 48, "no fd limit reached");
    }
    // More connections wait in the backlog while the vmm is out of descriptors: monitor
    // sessions and the chardev's peer.
    let waiting: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(&qmp).unwrap()).collect();
    let _cd_peer = UnixStream::connect(&cd_sock).unwrap();
    let log_before = std::fs::metadata(&log).unwrap().len();
    let (used, hz) = cpu_ticks_during(proc.pid(), Duration::from_secs(3));
    let logged = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(
        used * 100 < 3 * hz * 5,
        "vmm used {used} ticks ({hz}/s) of CPU in 3 s at the fd limit"
    );
    assert!(
        logged < 4096,
        "vmm logged {logged} bytes in 3 s at the fd limit"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for who in ["monitor unix:", "chardev 'c0'"] {
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(who) && l.contains("cannot accept"))
                .count(),
            1,
            "{who}: the condition is logged once:\n{text}"
        );
    }
    // Existing sessions are served all along.
    let s = &sessions[0];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // the rest of the greeting
    (&*s)
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"running\""), "{line}");
    // Free descriptors: the waiting connections are accepted and greeted.
    drop(r);
    sessions.truncate(sessions.len() / 2);
    for s in &waiting {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 7];
        (&*s).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"{\"QMP\":");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("accepting connections again"), "{text}");
    // The chardev's listener is watched again too: its waiting peer is connected.
    let mut c = qmp::client::QmpClient::connect(&qmp::SocketAddr::Unix(qmp.clone())).unwrap();
    let t = Instant::now();
    loop {
        let cds = c
            .execute("query-chardev", serde_json::Value::Null)
            .unwrap()
            .unwrap();
        let f = cds
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == "c0")
            .unwrap()["filename"]
            .as_str()
            .unwrap()
            .to_string();
        if !f.starts_with("disconnected:") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "chardev still {f}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proc);
}

/// A second `vmm` given a monitor path another `vmm` is listening on refuses it in one line;
/// the first keeps its socket. And a `vmm` never deletes a socket someone else put at its path.
#[test]
fn a_live_socket_path_is_never_taken_over_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let first = Vmm::start(dir.path(), &[]);
    let errlog = dir.path().join("second.err");
    let mut refused = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(["-machine", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", first.qmp.display()))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&errlog).unwrap())
            .spawn()
            .unwrap(),
        name: "second vmm on a live monitor path",
    };
    let status = refused.wait(Duration::from_secs(10));
    let err = std::fs::read_to_string(&errlog).unwrap();
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is in use: another process is listening on it"),
        "{err}"
    );
    let mut c = first.client();
    c.execute("query-status", serde_json::Value::Null)
        .unwrap()
        .unwrap();
    // The path is given to someone else meanwhile (removed and bound again by a second vmm)...
    let sub = dir.path().join("second");
    std::fs::create_dir(&sub).unwrap();
    std::fs::remove_file(&first.qmp).unwrap();
    let second = Vmm::launch(
        &sub,
        [
            "-machine".to_string(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", first.qmp.display()),
        ],
        false,
        &[],
    );
    wait_for_path(&first.qmp, Duration::from_secs(10));
    // ... and the first one exits: the second's socket stays.
    let mut first = first;
    first
        .proc
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        first.qmp.exists(),
        "the first vmm deleted the second's socket"
    );
    let mut c = qmp::client::QmpClient::connect(&qmp::SocketAddr::Unix(first.qmp.clone())).unwrap();
    c.execute("query-status", serde_json::Value::Null)
        .unwrap()
        .unwrap();
    drop(second);
    // A socket file nobody listens on is stale and simply replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let sub2 = dir.path().join("third");
    std::fs::create_dir(&sub2).unwrap();
    let third = Vmm::launch(
        &sub2,
        [
            "-machine".to_string(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", stale.display()),
        ],
        false,
        &[],
    );
    let mut c = qmp::client::QmpClient::connect(&qmp::SocketAddr::Unix(stale.clone())).unwrap();
    c.execute("query-status", serde_json::Value::Null)
        .unwrap()
        .unwrap();
    drop(third);
}

/// Numbers beyond a double are infinite, and echoed as QEMU echoes them; doubles are written
/// with QEMU's 17 digits.
#[test]
fn ids_are_echoed_as_qemu_echoes_them() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &[]);
    let (w, mut r) = raw_session(&vmm.qmp);
    (&w).write_all(
        b"{\"execute\":\"query-status\",\"id\":1e400}\n{\"execute\":\"query-status\",\"id\":[-1e400,0.1,18446744073709551616]}\n",
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"id\": inf,"), "{line}");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"id\": [-inf, 0.10000000000000001, 1.8446744073709552e+19]"),
        "{line}"
    );
    // An infinite double is a number, not a string (QEMU's text).
    (&w).write_all(
        b"{\"execute\":\"ringbuf-write\",\"arguments\":{\"device\":1e400,\"data\":\"x\"}}\n",
    )
    .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(
        line.contains("Invalid parameter type for 'device', expected: string"),
        "{line}"
    );
}

/// A client that sends a guest command and more requests behind it, then hangs up while the
/// agent has not answered: its session goes (as QEMU drops a closed client's queue) instead of
/// the loop spinning on the hang-up until the agent answers; the agent's late reply is lost
/// silently and the monitor serves everyone else. (Found by the qmp_monitor fuzz target.)
#[test]
fn a_client_hanging_up_behind_a_waiting_guest_command_costs_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "30");
    let mut c = vmm.client();
    wait_agent_up(&mut c, Duration::from_secs(10));
    freeze(&ga, true);
    {
        let (w, _r) = raw_session(&vmm.qmp);
        (&w).write_all(b"{\"execute\":\"guest-ping\"}{\"execute\":\"query-status\"}\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (used, hz) = cpu_ticks_during(vmm.proc.pid(), Duration::from_secs(2));
    assert!(
        used * 10 < 2 * hz,
        "vmm used {used} ticks ({hz}/s) in 2 s after the client hung up"
    );
    assert_eq!(
        c.execute("query-status", serde_json::Value::Null)
            .unwrap()
            .unwrap()["status"],
        "running"
    );
    freeze(&ga, false);
    assert_eq!(
        guest(&mut c, "guest-ping", serde_json::Value::Null),
        serde_json::json!({"return": {}})
    );
}
