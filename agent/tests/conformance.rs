//! Conformance: the same requests against virtagent and qemu-ga (both real
//! binaries over real unix sockets) must give replies of the same shape
//! (keys and value types) and the same error classes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{have_qemu_ga, AgentProc, Client, Kind};
use serde_json::{json, Value};

/// Static cases: raw bytes sent as they are (host-safe commands only).
fn raw_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        ("ping", br#"{"execute":"guest-ping"}"#.to_vec()),
        ("ping-id-string", br#"{"execute":"guest-ping","id":"abc"}"#.to_vec()),
        ("ping-id-object", br#"{"execute":"guest-ping","id":{"a":[1,null,true]}}"#.to_vec()),
        ("ping-id-nonascii", "{\"execute\":\"guest-ping\",\"id\":\"\u{201c}\u{1F600}\"}".as_bytes().to_vec()),
        ("ping-id-escapes", br#"{"execute":"guest-ping","id":"x\ud83d\ude00\u00e9\n\"\\"}"#.to_vec()),
        ("two-in-one-write", br#"{"execute":"guest-ping"}{"execute":"guest-ping","id":2}"#.to_vec()),
        ("whitespace", b" \n\t{ \"execute\" :\r\n \"guest-ping\" } \n".to_vec()),
        ("single-quoted", b"{'execute':'guest-ping','id':'a\\'b\"c'}".to_vec()),
        ("stray-rcurly", b"}".to_vec()),
        ("stray-rbracket", b"]".to_vec()),
        ("top-level-number", b"42 ".to_vec()),
        ("top-level-string", b"\"abc\"".to_vec()),
        ("top-level-array", b"[1]".to_vec()),
        ("control-char-in-object", b"{\"execute\":\"guest-ping\"\x01}".to_vec()),
        ("control-char-in-string", b"{\"execute\":\"guest-ping\",\"id\":\"a\x01b\"}".to_vec()),
        ("ff-after-object", b"{\"execute\":\"guest-ping\",\"id\":1}\xff".to_vec()),
        ("ff-ff", b"\xff\xff".to_vec()),
        ("bad-keyword", b"bad ".to_vec()),
        ("bad-escape", br#"{"execute":"guest-ping","id":"a\qb"}"#.to_vec()),
        ("leading-zero", br#"{"execute":"guest-ping","id":01}"#.to_vec()),
        ("minus-alone", br#"{"execute":"guest-ping","id":-x}"#.to_vec()),
        ("float-id", br#"{"execute":"guest-ping","id":1.5e3}"#.to_vec()),
        ("trailing-comma", br#"{"a":1,}"#.to_vec()),
        ("duplicate-key", br#"{"execute":"guest-ping","execute":"guest-ping"}"#.to_vec()),
        ("lone-surrogate", br#"{"execute":"guest-ping","id":"\ud83d"}"#.to_vec()),
        ("invalid-utf8", b"{\"execute\":\"guest-ping\",\"id\":\"\xc3\"}".to_vec()),
        ("exec-oob", br#"{"execute":"guest-ping","exec-oob":1}"#.to_vec()),
        ("control-member", br#"{"execute":"guest-ping","control":{}}"#.to_vec()),
        ("execute-not-string", br#"{"execute":5,"id":7}"#.to_vec()),
        ("no-execute", b"{}".to_vec()),
        ("arguments-only", br#"{"arguments":{},"id":"q"}"#.to_vec()),
        ("arguments-array", br#"{"execute":"guest-ping","arguments":[]}"#.to_vec()),
        ("unknown-command", br#"{"execute":"guest-nosuch","id":7}"#.to_vec()),
        ("ping-extra-arg", br#"{"execute":"guest-ping","arguments":{"x":1}}"#.to_vec()),
        ("sync", br#"{"execute":"guest-sync","arguments":{"id":123}}"#.to_vec()),
        ("sync-min-i64", br#"{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}"#.to_vec()),
        ("sync-u64", br#"{"execute":"guest-sync","arguments":{"id":18446744073709551615}}"#.to_vec()),
        ("sync-float", br#"{"execute":"guest-sync","arguments":{"id":3.0}}"#.to_vec()),
        ("sync-string", br#"{"execute":"guest-sync","arguments":{"id":"x"},"id":7}"#.to_vec()),
        ("sync-missing", br#"{"execute":"guest-sync","arguments":{}}"#.to_vec()),
        ("sync-no-arguments", br#"{"execute":"guest-sync"}"#.to_vec()),
        ("sync-extra", br#"{"execute":"guest-sync","arguments":{"id":1,"zz":2}}"#.to_vec()),
        ("sync-delimited", br#"{"execute":"guest-sync-delimited","arguments":{"id":4242},"id":"d"}"#.to_vec()),
        ("file-read-bad-handle", br#"{"execute":"guest-file-read","arguments":{"handle":999}}"#.to_vec()),
        ("file-read-bad-handle-count", br#"{"execute":"guest-file-read","arguments":{"handle":999,"count":-1}}"#.to_vec()),
        ("file-read-handle-string", br#"{"execute":"guest-file-read","arguments":{"handle":"1"}}"#.to_vec()),
        ("file-read-no-handle", br#"{"execute":"guest-file-read","arguments":{"count":1}}"#.to_vec()),
        ("file-close-bad-handle", br#"{"execute":"guest-file-close","arguments":{"handle":999}}"#.to_vec()),
        ("file-flush-bad-handle", br#"{"execute":"guest-file-flush","arguments":{"handle":999}}"#.to_vec()),
        ("file-write-bad-handle", br#"{"execute":"guest-file-write","arguments":{"handle":999,"buf-b64":"aGk="}}"#.to_vec()),
        ("file-write-no-buf", br#"{"execute":"guest-file-write","arguments":{"handle":999}}"#.to_vec()),
        ("file-seek-bad-handle", br#"{"execute":"guest-file-seek","arguments":{"handle":999,"offset":0,"whence":"set"}}"#.to_vec()),
        ("file-seek-bad-whence", br#"{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":"bogus"}}"#.to_vec()),
        ("file-seek-whence-type", br#"{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":true}}"#.to_vec()),
        ("file-open-missing-path", br#"{"execute":"guest-file-open","arguments":{"path":"/nonexistent/virtagent/x"}}"#.to_vec()),
        ("file-open-no-path", br#"{"execute":"guest-file-open","arguments":{"mode":"r"}}"#.to_vec()),
        ("file-open-relative", br#"{"execute":"guest-file-open","arguments":{"path":"no-such-relative-file"}}"#.to_vec()),
        ("file-open-bad-mode", br#"{"execute":"guest-file-open","arguments":{"path":"/etc/hostname","mode":"q"}}"#.to_vec()),
        ("set-vcpus-missing-member", br#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"online":true}]}}"#.to_vec()),
        ("set-vcpus-not-array", br#"{"execute":"guest-set-vcpus","arguments":{"vcpus":{}}}"#.to_vec()),
        ("set-vcpus-empty", br#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[]}}"#.to_vec()),
        ("set-memory-blocks-empty", br#"{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[]}}"#.to_vec()),
        ("set-memory-blocks-bad-member", br#"{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":"x","online":true}]}}"#.to_vec()),
        ("exec-arg-int", br#"{"execute":"guest-exec","arguments":{"path":"/bin/true","arg":[1]}}"#.to_vec()),
        ("exec-no-path", br#"{"execute":"guest-exec","arguments":{"arg":[]}}"#.to_vec()),
        ("exec-nonexistent", br#"{"execute":"guest-exec","arguments":{"path":"/nonexistent/virtagent"}}"#.to_vec()),
        ("exec-bad-input", br#"{"execute":"guest-exec","arguments":{"path":"/bin/true","input-data":"@@"}}"#.to_vec()),
        ("exec-capture-int", br#"{"execute":"guest-exec","arguments":{"path":"/bin/true","capture-output":3}}"#.to_vec()),
        ("exec-status-bad-pid", br#"{"execute":"guest-exec-status","arguments":{"pid":1}}"#.to_vec()),
        ("exec-status-no-pid", br#"{"execute":"guest-exec-status"}"#.to_vec()),
        ("shutdown-bad-mode", br#"{"execute":"guest-shutdown","arguments":{"mode":"bogus"}}"#.to_vec()),
        ("shutdown-mode-type", br#"{"execute":"guest-shutdown","arguments":{"mode":1}}"#.to_vec()),
        ("suspend-ram-extra", br#"{"execute":"guest-suspend-ram","arguments":{"x":1}}"#.to_vec()),
        ("suspend-disk-extra", br#"{"execute":"guest-suspend-disk","arguments":{"x":1}}"#.to_vec()),
        ("set-time-type", br#"{"execute":"guest-set-time","arguments":{"time":"x"}}"#.to_vec()),
        ("set-user-password-bad-b64", br#"{"execute":"guest-set-user-password","arguments":{"username":"nosuchuser","password":"!!!","crypted":false}}"#.to_vec()),
        ("set-user-password-missing", br#"{"execute":"guest-set-user-password","arguments":{"username":"x"}}"#.to_vec()),
        ("ssh-get-nosuchuser", br#"{"execute":"guest-ssh-get-authorized-keys","arguments":{"username":"nosuchuser-virtagent"}}"#.to_vec()),
        ("ssh-add-nosuchuser", br#"{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nosuchuser-virtagent","keys":["ssh-rsa AAAA x"]}}"#.to_vec()),
        ("ssh-remove-no-keys", br#"{"execute":"guest-ssh-remove-authorized-keys","arguments":{"username":"root"}}"#.to_vec()),
        ("get-devices-disabled", br#"{"execute":"guest-get-devices"}"#.to_vec()),
        ("fstrim-bad-minimum", br#"{"execute":"guest-fstrim","arguments":{"minimum":-1}}"#.to_vec()),
        ("fstrim-minimum-type", br#"{"execute":"guest-fstrim","arguments":{"minimum":"x"}}"#.to_vec()),
        ("freeze-list-type", br#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}"#.to_vec()),
    ];
    let mut deep = vec![b'['; 2000];
    deep.push(0xFF);
    v.push(("nesting-limit", deep));
    for c in [
        "guest-info",
        "guest-get-osinfo",
        "guest-get-host-name",
        "guest-get-time",
        "guest-get-timezone",
        "guest-get-users",
        "guest-network-get-interfaces",
        "guest-get-vcpus",
        "guest-get-fsinfo",
        "guest-get-disks",
        "guest-get-memory-blocks",
        "guest-get-memory-block-info",
        "guest-get-cpustats",
        "guest-get-diskstats",
        "guest-fsfreeze-status",
        "guest-fsfreeze-thaw",
    ] {
        v.push((c, format!("{{\"execute\":\"{c}\"}}").into_bytes()));
    }
    v
}

/// Shape of a value: types instead of values; arrays by their set of element shapes.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => {
            let set: BTreeSet<String> = a.iter().map(|x| shape(x).to_string()).collect();
            json!({"array-of": set.into_iter().collect::<Vec<_>>()})
        }
        Value::Object(m) => {
            if let Some(e) = m.get("error") {
                // Error classes are compared exactly, the text only by type.
                let mut s = serde_json::Map::new();
                s.insert(
                    "error".into(),
                    json!({"class": e["class"].clone(), "desc": shape(&e["desc"])}),
                );
                if let Some(id) = m.get("id") {
                    s.insert("id".into(), shape(id));
                }
                return Value::Object(s);
            }
            // qemu-ga fills the optional disk `serial` from udev (absent on
            // this udev-less host); virtagent reads sysfs. Optional either way.
            Value::Object(
                m.iter()
                    .filter(|(k, _)| *k != "serial")
                    .map(|(k, x)| (k.clone(), shape(x)))
                    .collect(),
            )
        }
    }
}

fn poll_exec(c: &mut Client, pid: &Value) -> Value {
    let t0 = Instant::now();
    loop {
        let r = c.cmd("guest-exec-status", json!({"pid": pid}));
        if r["return"]["exited"] == json!(true) || r.get("error").is_some() {
            return r;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "child never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The dynamic part: files and processes, driven by earlier replies.
/// Returns (label, replies, compare-values-exactly).
fn script(c: &mut Client, dir: &Path) -> Vec<(String, Vec<Value>, bool)> {
    let mut out: Vec<(String, Vec<Value>, bool)> = Vec::new();
    let mut rec =
        |label: &str, v: Value, exact: bool| out.push((label.to_string(), vec![v], exact));
    let f = dir.join("f.txt");
    std::fs::write(&f, "hello world\n").unwrap();
    let f = f.to_str().unwrap();
    let h = c.cmd("guest-file-open", json!({"path": f, "mode": "r+"}));
    rec("file-open", h.clone(), false);
    let h = h["return"].clone();
    for (label, args, exact) in [
        ("file-read-5", json!({"handle": h, "count": 5}), true),
        ("file-read-0", json!({"handle": h, "count": 0}), true),
        ("file-read-neg", json!({"handle": h, "count": -1}), false),
        (
            "file-read-huge",
            json!({"handle": h, "count": 100_000_000}),
            false,
        ),
        (
            "file-read-48m+1",
            json!({"handle": h, "count": (48 << 20) + 1}),
            false,
        ),
    ] {
        let r = c.cmd("guest-file-read", args);
        rec(label, r, exact);
    }
    for (label, args, exact) in [
        (
            "file-seek-cur",
            json!({"handle": h, "offset": 1, "whence": "cur"}),
            true,
        ),
        (
            "file-seek-int",
            json!({"handle": h, "offset": 0, "whence": 0}),
            true,
        ),
        (
            "file-seek-neg",
            json!({"handle": h, "offset": -100, "whence": "set"}),
            false,
        ),
        (
            "file-seek-code7",
            json!({"handle": h, "offset": 0, "whence": 7}),
            false,
        ),
        (
            "file-seek-end",
            json!({"handle": h, "offset": -2, "whence": "end"}),
            true,
        ),
    ] {
        let r = c.cmd("guest-file-seek", args);
        rec(label, r, exact);
    }
    for (label, args) in [
        (
            "file-write-count-too-big",
            json!({"handle": h, "buf-b64": "aGVsbG8=", "count": 10}),
        ),
        ("file-write-bad-b64", json!({"handle": h, "buf-b64": "@@@"})),
        (
            "file-write-neg-count",
            json!({"handle": h, "buf-b64": "aGVsbG8=", "count": -1}),
        ),
        (
            "file-write-2",
            json!({"handle": h, "buf-b64": "aGVsbG8=", "count": 2}),
        ),
        ("file-write-all", json!({"handle": h, "buf-b64": "Wlo="})),
    ] {
        let r = c.cmd("guest-file-write", args);
        rec(label, r, false);
    }
    let r = c.cmd(
        "guest-file-seek",
        json!({"handle": h, "offset": 0, "whence": "set"}),
    );
    rec("file-seek-start", r, true);
    let r = c.cmd("guest-file-read", json!({"handle": h}));
    rec("file-read-all", r, true);
    let r = c.cmd("guest-file-read", json!({"handle": h}));
    rec("file-read-at-eof", r, true);
    let r = c.cmd("guest-file-flush", json!({"handle": h}));
    rec("file-flush", r, true);
    let r = c.cmd("guest-file-close", json!({"handle": h}));
    rec("file-close", r, true);
    let r = c.cmd("guest-file-close", json!({"handle": h}));
    rec("file-close-again", r, false);
    let r = c.cmd("guest-file-read", json!({"handle": h}));
    rec("file-read-closed", r, false);
    // A directory opens (fopen "r" works on one) but cannot be read.
    let d = c.cmd("guest-file-open", json!({"path": dir.to_str().unwrap()}));
    rec("file-open-dir", d.clone(), false);
    if let Some(dh) = d.get("return") {
        let r = c.cmd("guest-file-read", json!({"handle": dh}));
        rec("file-read-dir", r, false);
        c.cmd("guest-file-close", json!({"handle": dh}));
    }
    // Write a new file, read it back.
    let g = dir.join("g.bin");
    let gh = c.cmd(
        "guest-file-open",
        json!({"path": g.to_str().unwrap(), "mode": "w"}),
    );
    let gh = gh["return"].clone();
    let r = c.cmd(
        "guest-file-write",
        json!({"handle": gh, "buf-b64": "AAEC/w=="}),
    );
    rec("file-write-new", r, true);
    let r = c.cmd("guest-file-read", json!({"handle": gh}));
    rec("file-read-writeonly", r, false);
    c.cmd("guest-file-close", json!({"handle": gh}));
    assert_eq!(std::fs::read(&g).unwrap(), [0, 1, 2, 255]);

    // Processes.
    let execs: Vec<(&str, Value)> = vec![
        (
            "exec-true-capture",
            json!({"path": "/bin/true", "capture-output": true}),
        ),
        ("exec-true", json!({"path": "/bin/true"})),
        (
            "exec-input-output",
            json!({"path": "/bin/sh", "arg": ["-c", "cat; echo err >&2; exit 3"], "input-data": "aW5wdXQK", "capture-output": true}),
        ),
        (
            "exec-signal",
            json!({"path": "/bin/sh", "arg": ["-c", "kill -9 $$"], "capture-output": true}),
        ),
        (
            "exec-env-path-search",
            json!({"path": "sh", "arg": ["-c", "echo $FOO"], "env": ["FOO=bar"], "capture-output": true}),
        ),
        (
            "exec-no-capture-output",
            json!({"path": "/bin/sh", "arg": ["-c", "echo hi; echo ho >&2"]}),
        ),
        // 16 MiB capture cap: 17 MB of output is truncated identically.
        (
            "exec-capture-cap",
            json!({"path": "/bin/sh", "arg": ["-c", "head -c 17000000 /dev/zero"], "capture-output": true}),
        ),
    ];
    for (label, args) in execs {
        let r = c.cmd("guest-exec", args);
        rec(&format!("{label}-start"), shape_only_pid(&r), false);
        let pid = r["return"]["pid"].clone();
        let st = poll_exec(c, &pid);
        rec(&format!("{label}-status"), st, true);
        let again = c.cmd("guest-exec-status", json!({"pid": pid}));
        rec(&format!("{label}-forgotten"), again, false);
    }
    let r = c.cmd("guest-exec", json!({"path": "/bin/sleep", "arg": ["1"]}));
    let pid = r["return"]["pid"].clone();
    let st = c.cmd("guest-exec-status", json!({"pid": pid}));
    rec("exec-running", st, true);
    let st = poll_exec(c, &pid);
    rec("exec-running-final", st, true);
    out
}

fn shape_only_pid(v: &Value) -> Value {
    let mut v = v.clone();
    if v["return"]["pid"].is_number() {
        v["return"]["pid"] = json!(0);
    }
    v
}

fn run_all(kind: Kind) -> Vec<(String, Vec<Value>, bool)> {
    let agent = AgentProc::start(kind, "conf", &[]);
    let mut c = agent.connect();
    c.resync();
    let mut res = Vec::new();
    for (label, bytes) in raw_cases() {
        let r = c.exchange(&bytes);
        res.push((label.to_string(), r, false));
    }
    // An object split across writes.
    c.send(br#"{"execute":"guest-p"#);
    std::thread::sleep(Duration::from_millis(50));
    let r = c.exchange(br#"ing","id":"split"}"#);
    res.push(("split-across-writes".into(), r, true));
    res.extend(script(&mut c, &agent.dir));
    res
}

#[test]
fn same_replies_as_qemu_ga() {
    if !have_qemu_ga() {
        return;
    }
    let ours = run_all(Kind::Virtagent);
    let theirs = run_all(Kind::QemuGa);
    assert_eq!(ours.len(), theirs.len());
    let mut diffs = Vec::new();
    for ((label, a, exact), (_, b, _)) in ours.iter().zip(&theirs) {
        let sa: Vec<Value> = a.iter().map(shape).collect();
        let sb: Vec<Value> = b.iter().map(shape).collect();
        if sa != sb {
            diffs.push(format!("{label}:\n  virtagent: {a:?}\n  qemu-ga:   {b:?}"));
        } else if *exact && a != b {
            diffs.push(format!(
                "{label} (values):\n  virtagent: {a:?}\n  qemu-ga:   {b:?}"
            ));
        }
    }
    // Error texts are not part of the contract; list where they differ.
    for ((label, a, _), (_, b, _)) in ours.iter().zip(&theirs) {
        for (x, y) in a.iter().zip(b) {
            let (dx, dy) = (&x["error"]["desc"], &y["error"]["desc"]);
            if dx != dy {
                println!("desc differs for {label}: virtagent {dx} / qemu-ga {dy}");
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    println!(
        "{} cases: same shapes and error classes as qemu-ga",
        ours.len()
    );
}

/// Differences on purpose (documented in docs/agent.md).
#[test]
fn deliberate_differences() {
    if !have_qemu_ga() {
        return;
    }
    let ours = AgentProc::start(Kind::Virtagent, "diff", &[]);
    let theirs = AgentProc::start(Kind::QemuGa, "diff", &[]);
    let (mut a, mut b) = (ours.connect(), theirs.connect());
    // guest-get-load (QEMU 10.0) exists here, not in qemu-ga 7.2.
    let r = a.cmd("guest-get-load", Value::Null);
    assert!(r["return"]["load1m"].is_number(), "{r}");
    assert_eq!(
        common::class(&b.cmd("guest-get-load", Value::Null)),
        "CommandNotFound"
    );
    // capture-output strings (QEMU 8.0+) are accepted here.
    let r = a.cmd(
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo o; echo e >&2"], "capture-output": "merged"}),
    );
    let st = poll_exec(&mut a, &r["return"]["pid"]);
    assert_eq!(st["return"]["out-data"], json!("bwplCg=="), "{st}");
    assert_eq!(
        common::class(&b.cmd(
            "guest-exec",
            json!({"path": "/bin/true", "capture-output": "stdout"})
        )),
        "GenericError"
    );
}
