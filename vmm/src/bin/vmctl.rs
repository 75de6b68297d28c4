//! `vmctl`: a readable command line for the VMM's QMP monitor (also works on QEMU's).
//!
//!   vmctl -s /tmp/qmp.sock query-status
//!   vmctl -s /tmp/qmp.sock guest-file-open path=/etc/hostname
//!   vmctl -s /tmp/qmp.sock                 # interactive: one command per line
//!   vmctl -s /tmp/qmp.sock --events        # print events as they come
//!
//! Arguments are `key=value`; a value that parses as JSON (numbers, true, [..], {..}) is sent as
//! JSON, anything else as a string — the same convention as QEMU's qmp-shell.

use qmp::client::QmpClient;
use qmp::SocketAddr;
use serde_json::{Map, Value};
use std::io::{BufRead, Write};
use std::process::ExitCode;

const USAGE: &str = "usage: vmctl -s SOCKET [--events] [COMMAND [key=value ...]]
  SOCKET   unix socket path, or tcp:HOST:PORT
  COMMAND  any QMP command (query-status, guest-ping, ...); without one, read commands from stdin";

fn parse_args(words: &[String]) -> Result<Value, String> {
    let mut m = Map::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("argument '{w}' is not key=value"))?;
        let v = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(Value::Object(m))
}

fn run_one(c: &mut QmpClient, words: &[String]) -> Result<bool, String> {
    let args = parse_args(&words[1..])?;
    let r = c
        .execute(&words[0], args)
        .map_err(|e| format!("connection: {e}"))?;
    let out = std::io::stdout();
    let mut out = out.lock();
    for ev in c.take_events() {
        let _ = writeln!(out, "event: {ev}");
    }
    match r {
        Ok(v) => {
            let text = match &v {
                Value::String(s) => s.clone(),
                _ => serde_json::to_string_pretty(&v).unwrap_or_default(),
            };
            let _ = writeln!(out, "{text}");
            Ok(true)
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sock = None;
    let mut events = false;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-s" | "--socket" => sock = it.next(),
            "--events" => events = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                rest.push(a);
                rest.extend(it.by_ref());
            }
        }
    }
    let Some(sock) = sock else {
        eprintln!("vmctl: -s SOCKET is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let addr = match sock.strip_prefix("tcp:") {
        Some(a) => SocketAddr::Tcp(a.to_string()),
        None => SocketAddr::Unix(sock.clone().into()),
    };
    let mut c = match QmpClient::connect(&addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmctl: cannot connect to {sock}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if events {
        loop {
            match c.next_event() {
                Ok(ev) => println!("{ev}"),
                Err(e) => {
                    eprintln!("vmctl: {e}");
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
    if !rest.is_empty() {
        return match run_one(&mut c, &rest) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("vmctl: {e}");
                ExitCode::from(2)
            }
        };
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        if words.is_empty() {
            continue;
        }
        if let Err(e) = run_one(&mut c, &words) {
            eprintln!("vmctl: {e}");
            if e.starts_with("connection") {
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
