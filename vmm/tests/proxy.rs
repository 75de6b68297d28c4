//! The QMP proxy end to end: real `vmm`, Debian's real `qemu-ga`, real unix sockets.

mod common;

use common::*;
use qmp::client::QmpClient;
use qmp::SocketAddr;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn strip_id(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("id");
    }
    v
}

/// The same requests through the VMM and directly to a second, identical qemu-ga.
#[test]
fn replies_match_qemu_ga_directly() {
    let dir = tempfile::tempdir().unwrap();
    let a_sock = dir.path().join("direct.sock");
    let b_sock = dir.path().join("proxied.sock");
    let _a = start_qemu_ga(dir.path(), &a_sock);
    let _b = start_qemu_ga(dir.path(), &b_sock);
    let vmm = Vmm::with_agent(dir.path(), &b_sock, "10");
    let mut via = vmm.client();
    wait_agent_up(&mut via, Duration::from_secs(10));
    let mut direct = QmpClient::connect_agent(&SocketAddr::Unix(a_sock.clone())).unwrap();
    // Sync the direct channel the way the proxy does, so both start clean.
    direct.send_raw(b"\xff").unwrap();
    direct
        .send(&json!({"execute":"guest-sync-delimited","arguments":{"id":42}}))
        .unwrap();
    loop {
        if direct.next_reply().unwrap() == json!({"return": 42}) {
            break;
        }
    }

    let f_direct = dir.path().join("direct.txt");
    let f_via = dir.path().join("via.txt");
    let script = |path: &std::path::Path| {
        vec![
            json!({"execute":"guest-ping"}),
            json!({"execute":"guest-info"}),
            json!({"execute":"guest-file-open","arguments":{"path": path, "mode":"w+"}}),
            json!({"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"aGVsbG8sIHdvcmxkCg=="}}),
            json!({"execute":"guest-file-seek","arguments":{"handle":1000,"offset":0,"whence":"set"}}),
            json!({"execute":"guest-file-read","arguments":{"handle":1000,"count":4096}}),
            json!({"execute":"guest-file-seek","arguments":{"handle":1000,"offset":-6,"whence":2}}),
            json!({"execute":"guest-file-read","arguments":{"handle":1000,"count":3}}),
            json!({"execute":"guest-file-flush","arguments":{"handle":1000}}),
            json!({"execute":"guest-file-close","arguments":{"handle":1000}}),
            json!({"execute":"guest-file-close","arguments":{"handle":1000}}),
            json!({"execute":"guest-file-read","arguments":{"handle":"x"}}),
            json!({"execute":"guest-nosuch"}),
            json!({"execute":"guest-sync","arguments":{"id":7}}),
        ]
    };
    for (i, (d, v)) in script(&f_direct)
        .into_iter()
        .zip(script(&f_via))
        .enumerate()
    {
        let mut d = d;
        let mut v = v;
        d["id"] = json!(i);
        v["id"] = json!(format!("req-{i}"));
        let rd = direct.send(&d).and_then(|_| direct.next_reply()).unwrap();
        let rv = raw(&mut via, v);
        assert_eq!(rv["id"], json!(format!("req-{i}")), "client id echoed");
        assert_eq!(strip_id(rd), strip_id(rv), "request {i}");
    }
    assert_eq!(std::fs::read(&f_via).unwrap(), b"hello, world\n");
}

#[test]
fn agent_killed_in_flight_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "30");
    let mut c = vmm.client();
    wait_agent_up(&mut c, Duration::from_secs(10));
    freeze(&ga, true);
    c.send(&json!({"execute":"guest-ping","id":"blocked"}))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    ga.kill();
    let r = c.next_reply().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "error must come at once"
    );
    assert_eq!(r["id"], "blocked");
    assert_eq!(r["error"]["class"], "GenericError");
    c.wait_event("GUEST_AGENT_DOWN", Duration::from_secs(2))
        .unwrap();
    // Guest commands now fail fast.
    let t = Instant::now();
    let r = guest(&mut c, "guest-ping", Value::Null);
    assert_eq!(r["error"]["desc"], "Guest agent is not connected");
    assert!(t.elapsed() < Duration::from_millis(500));
    // VMM commands still work.
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap().unwrap()["status"],
        "running"
    );

    // The first agent's GUEST_AGENT_UP is still in the client's event buffer: only an UP
    // after this point is the new agent's.
    c.take_events();
    let _ga2 = start_qemu_ga(dir.path(), &sock);
    let ev = c
        .wait_event("GUEST_AGENT_UP", Duration::from_secs(10))
        .unwrap();
    assert_eq!(ev["data"]["id"], "qga0");
    assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert_eq!(
        guest(&mut c, "guest-ping", Value::Null),
        json!({"return": {}})
    );
}

#[test]
fn silent_agent_times_out_and_resync_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "1");
    let mut c = vmm.client();
    wait_agent_up(&mut c, Duration::from_secs(10));
    freeze(&ga, true);
    let t = Instant::now();
    let r = raw(&mut c, json!({"execute":"guest-info","id":"blocked"}));
    let took = t.elapsed();
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("did not respond"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(r["id"], "blocked");
    // Thaw the agent: it now answers the stale request; the resync must discard that reply.
    freeze(&ga, false);
    let r = guest(&mut c, "guest-sync", json!({"id": 99}));
    assert_eq!(r, json!({"return": 99}));
    assert_eq!(
        guest(&mut c, "guest-ping", Value::Null),
        json!({"return": {}})
    );
}

#[test]
fn stale_partial_input_on_the_channel_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _ga = start_qemu_ga(dir.path(), &sock);
    {
        // An earlier client leaves half a command in qemu-ga's (per-process) parser.
        let mut old = QmpClient::connect_agent(&SocketAddr::Unix(sock.clone())).unwrap();
        old.send_raw(br#"{"execute":"guest-ping","arguments":{"x":"#)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let vmm = Vmm::with_agent(dir.path(), &sock, "5");
    let mut c = vmm.client();
    wait_agent_up(&mut c, Duration::from_secs(10));
    let r = guest(&mut c, "guest-sync", json!({"id": 5}));
    assert_eq!(r, json!({"return": 5}));
}

#[test]
fn interleaved_sessions_get_their_own_replies() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "10");
    let mut a = vmm.client();
    let mut b = vmm.client();
    wait_agent_up(&mut a, Duration::from_secs(10));
    for i in 0..100i64 {
        a.send(&json!({"execute":"guest-sync","arguments":{"id": i},"id": format!("a{i}")}))
            .unwrap();
        b.send(&json!({"execute":"guest-sync","arguments":{"id": 1000 + i},"id": format!("b{i}")}))
            .unwrap();
        b.send(&json!({"execute":"query-status","id": format!("bq{i}")}))
            .unwrap();
    }
    for i in 0..100i64 {
        let r = a.next_reply().unwrap();
        assert_eq!(r, json!({"return": i, "id": format!("a{i}")}));
        let r = b.next_reply().unwrap();
        assert_eq!(r, json!({"return": 1000 + i, "id": format!("b{i}")}));
        let r = b.next_reply().unwrap();
        assert_eq!(r["id"], format!("bq{i}"), "in-order replies per session");
    }
}

#[test]
fn session_gone_mid_request_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ga = start_qemu_ga(dir.path(), &sock);
    let vmm = Vmm::with_agent(dir.path(), &sock, "10");
    let mut b = vmm.client();
    wait_agent_up(&mut b, Duration::from_secs(10));
    freeze(&ga, true);
    {
        let mut a = vmm.client();
        a.send(&json!({"execute":"guest-info","id":"in-flight"}))
            .unwrap();
        a.send(&json!({"execute":"guest-ping","id":"queued-behind"}))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    } // a disconnects with a request in flight and one waiting.
    b.send(&json!({"execute":"guest-sync","arguments":{"id":3},"id":"b"}))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    freeze(&ga, false);
    assert_eq!(b.next_reply().unwrap(), json!({"return": 3, "id": "b"}));
    assert_eq!(
        guest(&mut b, "guest-ping", Value::Null),
        json!({"return": {}})
    );
}

#[test]
fn guest_commands_without_agent_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-listens.sock");
    let vmm = Vmm::with_agent(dir.path(), &sock, "30");
    let mut c = vmm.client();
    let t = Instant::now();
    let r = guest(&mut c, "guest-ping", Value::Null);
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(r["error"]["desc"], "Guest agent is not connected");
    assert!(t.elapsed() < Duration::from_millis(500));
    // The agent shows up later: the proxy connects on its own.
    let _ga = start_qemu_ga(dir.path(), &sock);
    c.wait_event("GUEST_AGENT_UP", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        guest(&mut c, "guest-ping", Value::Null),
        json!({"return": {}})
    );
    let cmds = c.execute("query-commands", Value::Null).unwrap().unwrap();
    assert!(
        cmds.as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "guest-file-read"),
        "{cmds}"
    );
}
