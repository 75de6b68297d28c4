//! QEMU itself as the oracle: the same bytes go to a real `qemu-system-x86_64 -M none` QMP monitor
//! (over its unix socket) and to a `qjson::Streamer`; QEMU's replies must be exactly what the
//! streamer predicts: one `JSON parse error, ...` reply with the same text per error, in the same
//! order, and one non-parse-error reply per value.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qjson::{Parsed, Streamer};
use serde_json::Value;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

struct Qemu {
    child: Child,
    dir: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_qemu() -> (Qemu, UnixStream) {
    let dir = std::env::temp_dir().join(format!("qjson-oracle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("qmp.sock");
    let child = Command::new(QEMU)
        .args(["-M", "none", "-display", "none", "-nodefaults", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {QEMU}: {e}"));
    let qemu = Qemu { child, dir };
    let t0 = Instant::now();
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(20), "no QMP socket: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (qemu, stream)
}

/// What a reply or a parsed message stands for: `E:<desc>` for a JSON parse/limit error,
/// `V` for anything the dispatcher answered (a value reached it).
fn reply_kind(r: &Value) -> String {
    match r["error"]["desc"].as_str() {
        Some(d) if d.starts_with("JSON ") => format!("E:{d}"),
        _ => "V".into(),
    }
}

fn parsed_kind(p: &Parsed) -> String {
    match p {
        Parsed::Value(_) => "V".into(),
        Parsed::Error(e) => format!("E:{}", e.desc()),
    }
}

fn cases() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &b"}"[..],
        b"]",
        b"42 ",
        b"\"abc\"",
        b"[1]",
        b"{\"execute\":\"query-status\"\x01}",
        b"{\"execute\":\"query-status\",\"id\":\"a\x01b\"}",
        b"\xff\xff",
        b"bad ",
        b"nul ",
        b"tRue ",
        br#"{"execute":"query-status","id":"a\qb"}"#,
        br#"{"execute":"query-status","id":01}"#,
        br#"{"execute":"query-status","id":-x}"#,
        br#"{"execute":"query-status","id":1.}"#,
        br#"{"execute":"query-status","id":1.e3}"#,
        br#"{"execute":"query-status","id":.5}"#,
        br#"{"execute":"query-status","id":-0}"#,
        br#"{"execute":"query-status","id":1.5e3}"#,
        br#"{"execute":"query-status","id":1E+2}"#,
        br#"{"execute":"query-status","id":18446744073709551616}"#,
        br#"{"a":1,}"#,
        br#"[1,]"#,
        br#"[,1]"#,
        br#"{"execute":"query-status","execute":"query-status"}"#,
        br#"{"execute":"query-status","id":"\ud83d"}"#,
        br#"{"execute":"query-status","id":"\ud83d\ude00\u00e9\/"}"#,
        br#"{"execute":"query-status","id":"\u12"}"#,
        b"{\"execute\":\"query-status\",\"id\":\"\xc3\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xe2\x80\x9c\"}",
        b"{\"execute\":\"query-status\",\"id\":\"a\tb\"}",
        b"{'execute':'query-status','id':'a\\'b\"c'}",
        br#"{"execute" "x"}"#,
        br#"{1:2}"#,
        br#"[1 2]"#,
        br#"{"a":tru}"#,
        b"\x1b[A",
        b"{\"execute\":\xc3\xa9}",
        b"{\"execute\":\"query-status\" , \"id\" : [ { } , [ ] ] }",
        b"\t\r\n {\"execute\"\n:\"query-status\"}",
        // Unicode corner cases of QEMU's parse_string.
        br#"{"execute":"query-status","id":"\uD83D"}"#,
        br#"{"execute":"query-status","id":"\ud83d\u0041"}"#,
        br#"{"execute":"query-status","id":"\ud83d\ud83d"}"#,
        br#"{"execute":"query-status","id":"\udc00"}"#,
        br#"{"execute":"query-status","id":"\uffff"}"#,
        br#"{"execute":"query-status","id":"\uFDD0"}"#,
        br#"{"execute":"query-status","id":"\ud83f\udffe"}"#,
        br#"{"execute":"query-status","id":"\u0000"}"#,
        br#"{"execute":"query-status","id":"x\u"}"#,
        br#"{"execute":"query-status","id":"\uzzzz"}"#,
        b"{\"execute\":\"query-status\",\"id\":\"\\u12\xc3\xa9\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xef\xbf\xbf\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xef\xb7\x90\"}",
        b"{\"execute\":\"query-status\",\"id\":\"a\xc0\x80b\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xc1\xbf\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xed\xa0\x80\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xf4\x90\x80\x80\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xf0\x9f\x98\x80\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\x80\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xc3\\q\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\\q\xc3\"}",
        b"{\"execute\":\"query-status\",\"id\":\"\xfe\"}",
        b"{\"\xc3\":1,\"\\q\":2}",
        b"{\"a\":1 \"b\":2}",
        b"{\"a\"::1}",
        b"[1,,2]",
        b"{,}",
        b"[:]",
        b"{\"a\":[}]",
        b"-",
        b"- ",
        b"1e ",
        b"1e+ ",
        b"0x10 ",
        b"007 ",
        b"truefalse ",
        b"'a' ",
        b"123456789012345678901234567890 ",
        b"-9223372036854775809 ",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    let mut deep = vec![b'['; 1030];
    deep.extend(vec![b']'; 1030]);
    v.push(deep);
    v
}

#[test]
fn replies_match_qemus_monitor() {
    if !Path::new(QEMU).exists() {
        println!("skipped: {QEMU} is not installed");
        return;
    }
    let (_qemu, mut stream) = start_qemu();
    let mut rd = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "greeting: {line}");
    stream
        .write_all(br#"{"execute":"qmp_capabilities"}"#)
        .unwrap();
    line.clear();
    rd.read_line(&mut line).unwrap();
    assert!(line.contains("\"return\""), "{line}");

    let mut streamer = Streamer::new();
    let mut checked = 0;
    for case in cases() {
        // 0xFF ends whatever the case left half done; the sentinel marks the end of its replies.
        let mut bytes = case.clone();
        bytes.extend_from_slice(b"\xff{\"execute\":\"query-status\",\"id\":\"end\"}");
        let mut want = Vec::new();
        streamer.feed(&bytes, |p| {
            want.push(parsed_kind(&p));
            true
        });
        stream.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        loop {
            line.clear();
            let n = rd.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "QEMU closed the monitor after {:?}",
                String::from_utf8_lossy(&case)
            );
            let r: Value = serde_json::from_str(&line).unwrap();
            if r.get("event").is_some() {
                continue;
            }
            got.push(reply_kind(&r));
            if r["id"] == "end" {
                break;
            }
        }
        assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(&case));
        checked += 1;
    }
    assert!(streamer.is_idle());
    println!("{checked} inputs: qjson predicts QEMU's replies exactly");
}
