//! QEMU itself as the oracle: the same bytes go to a real `qemu-system-x86_64 -M none` QMP monitor
//! (over its unix socket) and to a `qjson::Streamer`; QEMU's replies must be exactly what the
//! streamer predicts: one `JSON parse error, ...` reply with the same text per error, in the same
//! order, and one non-parse-error reply per value.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    // One directory per QEMU: the tests run in parallel in one process.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qjson-oracle-{}-{n}", std::process::id()));
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
        // Error recovery: what ends it.
        b"\x01abc\n\"x\" ",
        b"\x01abc\r\"x\" ",
        b"\x01abc\t\"x\" ",
        b"\x01abc\xfe\"x\" ",
        b"\x01abc \"x\" [1]",
        b"\x01\x02\x03",
        b"-z\x7f\x80\xfd[2]",
        // Unbalanced brackets.
        b"[}",
        b"[}]",
        b"{]",
        b"{]}",
        b"[1}]",
        b"{\"a\":[}}]",
        b"]]",
        b"}}",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    let mut deep = vec![b'['; 1030];
    deep.extend(vec![b']'; 1030]);
    v.push(deep);
    v
}

/// A negotiated session with QEMU's monitor and the streamer that predicts its replies.
struct Oracle {
    _qemu: Qemu,
    stream: UnixStream,
    rd: BufReader<UnixStream>,
    streamer: Streamer,
}

impl Oracle {
    /// None (after printing why) when QEMU is not installed.
    fn start() -> Option<Oracle> {
        if !Path::new(QEMU).exists() {
            println!("skipped: {QEMU} is not installed");
            return None;
        }
        let (qemu, mut stream) = start_qemu();
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
        Some(Oracle {
            _qemu: qemu,
            stream,
            rd,
            streamer: Streamer::new(),
        })
    }

    /// Sends `case` to QEMU and to the streamer and asserts the same outcome.
    fn check(&mut self, case: &[u8], label: &str) {
        // 0xFF ends whatever the case left half done; the sentinel marks the end of its replies.
        let mut bytes = case.to_vec();
        bytes.extend_from_slice(b"\xff{\"execute\":\"query-status\",\"id\":\"end\"}");
        let mut want = Vec::new();
        self.streamer.feed(&bytes, |p| {
            want.push(parsed_kind(&p));
            true
        });
        self.stream.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.rd.read_line(&mut line).unwrap();
            assert!(n > 0, "QEMU closed the monitor after {label}");
            let r: Value = serde_json::from_str(&line).unwrap();
            if r.get("event").is_some() {
                continue;
            }
            got.push(reply_kind(&r));
            if r["id"] == "end" {
                break;
            }
        }
        assert_eq!(got, want, "input {label}");
        assert!(self.streamer.is_idle());
    }
}

#[test]
fn replies_match_qemus_monitor() {
    let Some(mut o) = Oracle::start() else {
        return;
    };
    let cases = cases();
    for case in &cases {
        o.check(case, &format!("{:?}", String::from_utf8_lossy(case)));
    }
    println!(
        "{} inputs: qjson predicts QEMU's replies exactly",
        cases.len()
    );
}

#[test]
fn token_count_limit_matches_qemus_monitor() {
    let Some(mut o) = Oracle::start() else {
        return;
    };
    // Exactly 2^21 tokens: a value.
    let mut v = b"[".to_vec();
    v.extend(b"1,".repeat((1 << 20) - 2));
    v.extend_from_slice(b"[1]]");
    o.check(&v, "2^21 tokens");
    // One more, the closing bracket: QEMU checks the limit before the message completes.
    let mut v = b"[".to_vec();
    v.extend(b"1,".repeat((1 << 20) - 1));
    v.extend_from_slice(b"1]");
    o.check(&v, "2^21 + 1 tokens");
}

/// `[` + `"` + `fill` bytes of `a` + `"` + `]`: the token size is `fill + 4`.
fn string_in_array(fill: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(fill + 4);
    v.extend_from_slice(b"[\"");
    v.resize(fill + 2, b'a');
    v.extend_from_slice(b"\"]");
    v
}

/// QEMU's monitor takes minutes to read 64 MiB (the four cases: about 15 minutes), hence
/// `cargo test -p qjson --test qemu_oracle -- --ignored`.
#[test]
#[ignore = "slow: sends 64 MiB messages to QEMU (about 15 minutes)"]
fn size_limit_matches_qemus_monitor() {
    let Some(mut o) = Oracle::start() else {
        return;
    };
    let max = qjson::MAX_TOKEN_SIZE;
    // Total token size around 64 MiB: the string fits, the closing bracket does not.
    for fill in [max - 5, max - 4] {
        o.check(&string_in_array(fill), &format!("[\"a * {fill}\"]"));
    }
    // A token longer than the limit: QEMU's lexer cuts it off and lexes the rest afresh.
    let mut v = vec![b'"'];
    v.resize(max + 1, b'a');
    v.extend_from_slice(b"b\" [1]");
    o.check(&v, "\"a * 64 MiB\"b\" [1]");
    // The message outgrows the limit inside a token that then has a lexical error.
    let mut v = b"[\"".to_vec();
    v.resize(max - 8, b'a');
    v.extend_from_slice(b"\", \"bcdefghijklmn\x01]");
    o.check(&v, "[\"a * (64 MiB - 10)\", \"bcdefghijklmn\\x01]");
}
