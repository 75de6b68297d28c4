//! The QMP proxy as a hostile agent (a guest) meets it: requests from sessions interleaved with
//! bytes from the agent, chosen by the input, including replies to the proxy's own sync ids.
//! Nothing may panic, every request gets exactly one reply or none for a closed session, and
//! a reply only ever goes to the session that asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp::hub::Outgoing;
use qmp::{MonitorHandle, QmpProxy, SessionId};
use serde_json::{json, Map};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

struct Recorder(Rc<RefCell<Vec<u8>>>);

impl qmp::AgentChannel for Recorder {
    fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.0.borrow_mut();
        s.extend_from_slice(data);
        if s.len() > 1 << 20 {
            let cut = s.len() - 4096;
            s.drain(..cut);
        }
        Ok(())
    }
}

/// The last `guest-sync-delimited` id the proxy sent, for inputs that answer it.
fn last_sync_id(sent: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(sent);
    let at = text.rfind("\"id\":")?;
    let digits: String = text[at + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let monitor = MonitorHandle::new().unwrap();
    let mut proxy = QmpProxy::new("qga0", Duration::from_secs(30), monitor.clone()).unwrap();
    let sent = Rc::new(RefCell::new(Vec::new()));
    proxy.set_channel(Box::new(Recorder(sent.clone())));
    // Requests outstanding per session (at most one each, as the monitor guarantees).
    let mut waiting: HashMap<u64, u32> = HashMap::new();
    let mut closed: Vec<u64> = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op % 8 {
            0 => proxy.on_open(),
            1 => proxy.on_close(),
            2 | 3 => {
                let s = u64::from(op >> 4);
                if waiting.get(&s).copied().unwrap_or(0) == 0 && !closed.contains(&s) {
                    let name = [
                        "guest-ping",
                        "guest-info",
                        "guest-shutdown",
                        "guest-exec-status",
                    ][usize::from(op >> 3) & 3];
                    let mut args = Map::new();
                    if op & 4 != 0 {
                        args.insert("pid".into(), json!(op));
                    }
                    // Refused at once, the error is the caller's to send, not the proxy's.
                    if proxy
                        .submit(SessionId(s), name, args, Some(json!(i)))
                        .is_ok()
                    {
                        *waiting.entry(s).or_default() += 1;
                    }
                }
            }
            4 => {
                let s = u64::from(op >> 4);
                proxy.session_closed(SessionId(s));
                closed.push(s);
            }
            5 => {
                // The agent answers the last sync, as qemu-ga would.
                let id = last_sync_id(&sent.borrow());
                if let Some(id) = id {
                    let mut reply = vec![0xFF];
                    reply.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
                    proxy.on_bytes(&reply);
                }
            }
            6 => proxy.on_timer(),
            _ => {
                // Raw agent bytes: the next `len` bytes of the input.
                let len = usize::from(op >> 3).min(data.len() - i);
                proxy.on_bytes(&data[i..i + len]);
                i += len;
            }
        }
        for m in monitor.drain() {
            if let Outgoing::Reply { session, msg } = m {
                let n = waiting
                    .get_mut(&session.0)
                    .expect("a reply for a session that asked");
                assert!(*n > 0, "two replies for one request: {msg}");
                *n -= 1;
                assert!(
                    msg.get("return").is_some() || msg.get("error").is_some(),
                    "{msg}"
                );
            }
        }
    }
});
