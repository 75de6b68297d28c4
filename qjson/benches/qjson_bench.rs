//! qjson's streaming parser against serde_json (the peer) in the same run:
//!  1. small requests (`guest-ping` with an id), back to back in one buffer: messages/s;
//!  2. a guest-file-read reply with 48 MiB of data (64 MiB of base64), fed in 64 KiB chunks the way
//!     the QMP proxy reads the agent's port: MiB/s of input.
//!
//! serde_json is handed each complete message in one slice (it cannot split a stream), so the
//! ratio shows what the streaming, QEMU-exact lexing costs on top of plain JSON decoding.
//! Run: `cargo bench -p qjson` (ROUNDS=N, default 5).

use std::hint::black_box;
use std::time::Instant;

use qjson::{Parsed, Streamer};
use serde_json::Value;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds taken by `f`.
fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);

    let ping = br#"{"execute": "guest-ping", "id": 12345}"#;
    let n_ping = 200_000;
    let pings: Vec<u8> = ping.repeat(n_ping);

    let payload = "QUJD".repeat((64 << 20) / 4);
    let reply = format!(
        r#"{{"return": {{"count": 50331648, "buf-b64": "{payload}", "eof": false}}, "id": 7}}"#
    );
    let reply = reply.as_bytes();
    let mib = reply.len() as f64 / (1 << 20) as f64;

    let mut ping_rates = [Vec::new(), Vec::new()];
    let mut read_rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        // 1. pings.
        let mut s = Streamer::new();
        let t = time(|| {
            let mut n = 0;
            s.feed(&pings, |p| {
                n += matches!(black_box(p), Parsed::Value(_)) as usize;
                true
            });
            assert_eq!(n, n_ping);
        });
        ping_rates[0].push(n_ping as f64 / t);
        let t = time(|| {
            for m in pings.chunks(ping.len()) {
                black_box(serde_json::from_slice::<Value>(m).unwrap());
            }
        });
        ping_rates[1].push(n_ping as f64 / t);

        // 2. the big reply.
        let mut s = Streamer::with_limits(80 << 20, qjson::MAX_NESTING);
        let t = time(|| {
            let mut got = None;
            for c in reply.chunks(64 << 10) {
                s.feed(c, |p| {
                    got = Some(p);
                    true
                });
            }
            let Some(Parsed::Value(v)) = got else {
                panic!("no value")
            };
            assert_eq!(
                v["return"]["buf-b64"].as_str().map(str::len),
                Some(64 << 20)
            );
        });
        read_rates[0].push(mib / t);
        let t = time(|| {
            let v: Value = serde_json::from_slice(reply).unwrap();
            assert_eq!(
                v["return"]["buf-b64"].as_str().map(str::len),
                Some(64 << 20)
            );
        });
        read_rates[1].push(mib / t);
    }
    let [pq, ps] = ping_rates.map(median);
    let [rq, rs] = read_rates.map(median);
    println!("{rounds} rounds; medians; ratio = qjson / serde_json (>1: qjson faster)");
    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "metric", "qjson", "serde_json", "ratio"
    );
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>6.2}x",
        "guest-ping requests parsed /s",
        pq,
        ps,
        pq / ps
    );
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>6.2}x",
        "64 MiB base64 reply, MiB/s (64 KiB chunks)",
        rq,
        rs,
        rq / rs
    );
}
