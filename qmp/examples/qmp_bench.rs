//! Round-trip benchmark client; the same client code drives every peer so ratios are fair.
//!
//! usage: qmp_bench MODE SOCKET COUNT
//!   MODE: qmp-guest-ping   guest-ping through a QMP monitor (the VMM's proxy)
//!         agent-guest-ping guest-ping straight to an agent socket (qemu-ga protocol)
//!         qmp-query-status query-status on a QMP monitor (the VMM or QEMU)
//! Prints one JSON line: mode, count, p50_us, p99_us, mean_us, per_sec.

use qmp::client::QmpClient;
use qmp::SocketAddr;
use serde_json::json;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: qmp_bench qmp-guest-ping|agent-guest-ping|qmp-query-status SOCKET COUNT");
        std::process::exit(2);
    }
    let (mode, sock) = (args[1].as_str(), SocketAddr::Unix(args[2].clone().into()));
    let count: usize = args[3].parse().expect("COUNT");
    let (mut c, cmd) = match mode {
        "qmp-guest-ping" => (QmpClient::connect(&sock).expect("connect"), "guest-ping"),
        "qmp-query-status" => (QmpClient::connect(&sock).expect("connect"), "query-status"),
        "agent-guest-ping" => {
            let mut c = QmpClient::connect_agent(&sock).expect("connect");
            c.send_raw(b"\xff").unwrap();
            c.send(&json!({"execute":"guest-sync-delimited","arguments":{"id":1}}))
                .unwrap();
            while c.next_reply().unwrap() != json!({"return": 1}) {}
            (c, "guest-ping")
        }
        m => panic!("unknown mode {m}"),
    };
    let req = json!({"execute": cmd, "id": 1});
    // Warm-up.
    for _ in 0..count.min(200) {
        c.send(&req).unwrap();
        c.next_reply().unwrap();
    }
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        c.send(&req).unwrap();
        let r = c.next_reply().unwrap();
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        assert!(r.get("return").is_some(), "{r}");
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{}",
        json!({
            "mode": mode, "count": count,
            "p50_us": (pct(0.50) * 10.0).round() / 10.0,
            "p99_us": (pct(0.99) * 10.0).round() / 10.0,
            "mean_us": (lat.iter().sum::<f64>() / count as f64 * 10.0).round() / 10.0,
            "per_sec": (count as f64 / total).round(),
        })
    );
}
