//! The guest agent's request path as a hostile host meets it: any bytes into `Agent::feed`,
//! with only read-only commands enabled (the rest are refused by the allow list, which is part
//! of what is fuzzed). Nothing may panic, and every reply is a JSON object line.
#![no_main]

use agent::{Agent, AgentConfig};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::time::Duration;

/// Commands that only look at the guest.
const READ_ONLY: &[&str] = &[
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
    "guest-get-time",
    "guest-get-timezone",
    "guest-get-osinfo",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-vcpus",
    "guest-get-memory-block-info",
    "guest-fsfreeze-status",
    "guest-exec-status",
    "guest-get-load",
];

thread_local! {
    static AGENT: RefCell<Option<Agent>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    AGENT.with(|a| {
        let mut a = a.borrow_mut();
        let agent = a.get_or_insert_with(|| {
            let statedir = std::env::temp_dir().join(format!("agent-fuzz-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&statedir);
            Agent::new(AgentConfig {
                statedir,
                fsfreeze_hook: None,
                timeout: Duration::from_secs(5),
                blocked: Vec::new(),
                allowed: Some(READ_ONLY.iter().map(|s| s.to_string()).collect()),
            })
        });
        let mut out = Vec::new();
        // Whole, then once more cut in two: both feed paths of the same agent.
        agent.feed(data, &mut out);
        let mid = data.len() / 2;
        agent.feed(&data[..mid], &mut out);
        agent.feed(&data[mid..], &mut out);
        // A delimiter resets the parser for the next input, as the proxy's resync does.
        agent.feed(b"\xff", &mut out);
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_prefix(b"\xff").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let v: Result<serde_json::Value, _> = serde_json::from_slice(line);
            match v {
                Ok(serde_json::Value::Object(_)) => {}
                // qemu-ga writes non-finite ids as `inf`, which is not JSON; so do we.
                _ if line.windows(3).any(|w| w == b"inf" || w == b"nan") => {}
                other => panic!(
                    "not a JSON object line: {:?} ({other:?})",
                    String::from_utf8_lossy(line)
                ),
            }
        }
    });
});
