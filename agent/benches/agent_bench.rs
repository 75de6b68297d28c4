//! virtagent vs qemu-ga, same client, same run: guest-ping round trips/s,
//! guest-file-read throughput on a 64 MiB file, guest-exec of /bin/true
//! latency (exec + polling guest-exec-status until exited).
//!
//! Run: `cargo bench -p agent --bench agent_bench` (or scripts/bench-agent.sh).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const QEMU_GA: &str = "/usr/sbin/qemu-ga";

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Agent {
    fn start(bin: &str, tag: &str) -> Agent {
        let dir =
            std::env::temp_dir().join(format!("virtagent-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("sock");
        let child = Command::new(bin)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{bin} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { child, dir, sock }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one client used for both agents (reads into one preallocated buffer).
struct Client {
    s: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    fn connect(p: &Path) -> Client {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Client {
            s,
            buf: vec![0; 16 << 20],
            start: 0,
            end: 0,
        };
        c.s.write_all(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":777}}")
            .unwrap();
        loop {
            let l = c.line();
            if l.ends_with(b"{\"return\": 777}") {
                break;
            }
        }
        c
    }

    /// One reply line (without the newline).
    fn line(&mut self) -> Vec<u8> {
        let mut scanned = self.start;
        loop {
            if let Some(i) = self.buf[scanned..self.end].iter().position(|b| *b == b'\n') {
                let l = self.buf[self.start..scanned + i].to_vec();
                self.start = scanned + i + 1;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return l;
            }
            scanned = self.end;
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                scanned -= self.start;
                self.end -= self.start;
                self.start = 0;
                assert!(
                    self.end < self.buf.len(),
                    "reply larger than the client buffer"
                );
            }
            let n = self.s.read(&mut self.buf[self.end..]).unwrap();
            assert!(n > 0, "agent closed the connection");
            self.end += n;
        }
    }

    fn cmd(&mut self, req: &[u8]) -> Vec<u8> {
        self.s.write_all(req).unwrap();
        self.line()
    }

    fn json(&mut self, req: Value) -> Value {
        let l = self.cmd(req.to_string().as_bytes());
        serde_json::from_slice(&l).unwrap()
    }
}

fn bench_ping(c: &mut Client, n: usize) -> f64 {
    let req = br#"{"execute":"guest-ping"}"#;
    let t0 = Instant::now();
    for _ in 0..n {
        let l = c.cmd(req);
        assert_eq!(l, b"{\"return\": {}}");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// (count, eof) of a guest-file-read reply without parsing the payload as
/// JSON (that would cost the client more than the agent): the payload is
/// cut out, checked for its base64 length, and the rest parsed.
fn read_reply(l: &[u8]) -> (u64, bool) {
    let key = b"\"buf-b64\": \"";
    let head = &l[..l.len().min(128)];
    let p = head
        .windows(key.len())
        .position(|w| w == key)
        .expect("buf-b64 member")
        + key.len();
    let q = p + l[p..]
        .iter()
        .position(|b| *b == b'"')
        .expect("end of payload");
    let mut rest = l[..p].to_vec();
    rest.extend_from_slice(&l[q..]);
    let v: Value = serde_json::from_slice(&rest).unwrap_or_else(|e| panic!("bad reply: {e}"));
    let n = v["return"]["count"].as_u64().expect("count");
    assert_eq!(
        (q - p) as u64,
        n.div_ceil(3) * 4,
        "payload length matches count"
    );
    (n, v["return"]["eof"] == json!(true))
}

fn bench_read(c: &mut Client, file: &Path, chunk: usize) -> f64 {
    let h = c
        .json(json!({"execute": "guest-file-open", "arguments": {"path": file.to_str().unwrap()}}))
        ["return"]
        .clone();
    let req = json!({"execute": "guest-file-read", "arguments": {"handle": h, "count": chunk}})
        .to_string();
    let t0 = Instant::now();
    let mut total = 0u64;
    loop {
        let l = c.cmd(req.as_bytes());
        let (n, eof) = read_reply(&l);
        total += n;
        if eof || n == 0 {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    c.json(json!({"execute": "guest-file-close", "arguments": {"handle": h}}));
    assert_eq!(total, 64 << 20, "read the whole file");
    total as f64 / (1 << 20) as f64 / secs
}

/// Median latencies (ms) of guest-exec /bin/true: until its reply (the pid),
/// and until guest-exec-status says exited (polled every 50 us, like a host
/// that does not busy-spin; the client's timer slack is set to 1 ns so a
/// 50 us sleep is 50 us, not the default 50 us + 50 us slack).
fn bench_exec(c: &mut Client, n: usize) -> (f64, f64) {
    let mut reply = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let l = c.cmd(br#"{"execute":"guest-exec","arguments":{"path":"/bin/true"}}"#);
        reply.push(t0.elapsed().as_secs_f64() * 1e3);
        let r: Value = serde_json::from_slice(&l).unwrap();
        let pid = r["return"]["pid"].as_i64().expect("pid");
        let st = format!("{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{pid}}}}}");
        loop {
            let l = c.cmd(st.as_bytes());
            if l.windows(14).any(|w| w == b"\"exited\": true") {
                assert!(
                    l.windows(13).any(|w| w == b"\"exitcode\": 0"),
                    "exit code 0"
                );
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    (median(reply), median(lat))
}

/// The floor for exec latency, from the client itself: spawning /bin/true
/// (stdio on /dev/null, as the agents do without capture), median ms until
/// spawn returns (the child has exec'd) and until it is reaped.
fn bench_spawn_floor(n: usize) -> (f64, f64) {
    let (mut spawned, mut reaped) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        spawned.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(child.wait().unwrap().success());
        reaped.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    (median(spawned), median(reaped))
}

/// Agent processing alone (no transport): parse, dispatch, encode a ping.
fn bench_in_process(n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("virtagent-bench-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut a = agent::Agent::new(agent::AgentConfig {
        statedir: dir.clone(),
        ..Default::default()
    });
    let mut out = Vec::new();
    let t0 = Instant::now();
    for _ in 0..n {
        out.clear();
        a.feed(br#"{"execute":"guest-ping","id":1}"#, &mut out);
    }
    let per = t0.elapsed().as_secs_f64() / n as f64;
    assert_eq!(out, b"{\"return\": {}, \"id\": 1}\n");
    let _ = std::fs::remove_dir_all(dir);
    per * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new(QEMU_GA).exists() {
        println!("skipped: {QEMU_GA} is not installed");
        return;
    }
    let ours_bin = std::env::var("VIRTAGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_virtagent").to_string());
    let file = std::env::temp_dir().join(format!("virtagent-bench-64m-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&file).unwrap();
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for _ in 0..64 {
            f.write_all(&block).unwrap();
        }
    }
    println!(
        "virtagent in-process ping (parse+dispatch+encode): {:.2} us",
        bench_in_process(200_000)
    );
    // A sleep of 50 us is 50 us, not 50 us plus the default 50 us timer slack.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    // Both agents run side by side; each round measures one after the
    // other with the same client code, so machine noise hits both alike.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let (ping_n, exec_n, chunk) = (5_000, 100, 4 << 20);
    let ours = Agent::start(&ours_bin, "virtagent");
    let theirs = Agent::start(QEMU_GA, "qemu-ga");
    let mut clients = [Client::connect(&ours.sock), Client::connect(&theirs.sock)];
    // Per agent: ping/s, read MiB/s, exec reply ms, exec until exited ms.
    let mut res: [[Vec<f64>; 4]; 2] = Default::default();
    let mut ratios: [Vec<f64>; 4] = Default::default();
    let (mut floor_spawn, mut floor) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (fs, f) = bench_spawn_floor(exec_n);
        eprintln!("round {round} floor    : spawn /bin/true {fs:6.3} ms, spawn+reap {f:6.3} ms");
        floor_spawn.push(fs);
        floor.push(f);
        let mut cur = [[0.0; 4]; 2];
        for (i, tag) in ["virtagent", "qemu-ga"].into_iter().enumerate() {
            let c = &mut clients[i];
            let (er, ee) = bench_exec(c, exec_n);
            cur[i] = [bench_ping(c, ping_n), bench_read(c, &file, chunk), er, ee];
            let [p, r, er, ee] = cur[i];
            eprintln!(
                "round {round} {tag:9}: ping {p:9.0}/s  read {r:7.1} MiB/s  exec reply {er:6.3} ms, exited {ee:6.3} ms"
            );
            for k in 0..4 {
                res[i][k].push(cur[i][k]);
            }
        }
        ratios[0].push(cur[0][0] / cur[1][0]);
        ratios[1].push(cur[0][1] / cur[1][1]);
        ratios[2].push(cur[1][2] / cur[0][2]);
        ratios[3].push(cur[1][3] / cur[0][3]);
    }
    drop(clients);
    drop(ours);
    drop(theirs);
    let _ = std::fs::remove_file(&file);
    let m = |i: usize, k: usize| median(res[i][k].clone());
    let r = |k: usize| median(ratios[k].clone());
    println!("{rounds} interleaved rounds; medians; ratio = median of per-round ratios (>1: virtagent better)");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "metric", "virtagent", "qemu-ga", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>7.2}x",
        "guest-ping round trips/s",
        m(0, 0),
        m(1, 0),
        r(0)
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>7.2}x",
        "guest-file-read MiB/s (4 MiB)",
        m(0, 1),
        m(1, 1),
        r(1)
    );
    println!(
        "{:<34} {:>12.3} {:>12.3} {:>7.2}x",
        "guest-exec /bin/true: reply ms",
        m(0, 2),
        m(1, 2),
        r(2)
    );
    println!(
        "{:<34} {:>12.3} {:>12.3} {:>7.2}x",
        "guest-exec /bin/true: exited ms",
        m(0, 3),
        m(1, 3),
        r(3)
    );
    let (fs, fl) = (median(floor_spawn), median(floor));
    println!(
        "floor, from the client itself in the same rounds: spawn /bin/true {fs:.3} ms, spawn + reap {fl:.3} ms"
    );
    println!(
        "reply above spawn: virtagent {:.3} ms, qemu-ga {:.3} ms",
        m(0, 2) - fs,
        m(1, 2) - fs
    );
    println!(
        "above the floor: virtagent {:.3} ms, qemu-ga {:.3} ms; 2x would need virtagent at {:.3} ms",
        m(0, 3) - fl,
        m(1, 3) - fl,
        m(1, 3) / 2.0
    );
}
