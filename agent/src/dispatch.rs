//! Request validation, command lookup and reply encoding.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qjson::{write_value, Parsed, Streamer};
use serde_json::{Map, Value};

use crate::args::Args;
use crate::commands::{self, CommandDef};
use crate::error::{QgaError, QgaResult};
use crate::state::{ExecTable, FileTable, FreezeState};
use crate::worker::{Cleanups, Worker, WorkerError};

/// Commands that stay enabled while filesystems are frozen.
pub const FROZEN_ALLOWED: &[&str] = &[
    "guest-ping",
    "guest-info",
    "guest-sync",
    "guest-sync-delimited",
    "guest-fsfreeze-status",
    "guest-fsfreeze-thaw",
];

/// Settings that shape the agent's behaviour (not its transport).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory holding `qga.state` (handle counter).
    pub statedir: std::path::PathBuf,
    /// Script run as `<hook> freeze|thaw` around fsfreeze, when set.
    pub fsfreeze_hook: Option<std::path::PathBuf>,
    /// Server-side timeout of one command.
    pub timeout: Duration,
    /// Commands disabled by `--block-rpcs`.
    pub blocked: Vec<String>,
    /// When set, only these commands are enabled (`--allow-rpcs`).
    pub allowed: Option<Vec<String>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            statedir: "/var/run".into(),
            fsfreeze_hook: None,
            timeout: Duration::from_secs(30),
            blocked: Vec::new(),
            allowed: None,
        }
    }
}

/// State shared by the dispatcher and the commands running on the worker.
pub struct Shared {
    /// The configuration the agent started with.
    pub config: AgentConfig,
    /// Open guest-file-* handles.
    pub files: Mutex<FileTable>,
    /// guest-exec children.
    pub execs: Mutex<ExecTable>,
    /// Filesystems frozen by guest-fsfreeze-*.
    pub freeze: Mutex<FreezeState>,
    /// True while filesystems are frozen.
    pub frozen: AtomicBool,
    disabled: HashSet<&'static str>,
}

impl Shared {
    /// Whether `name` was disabled by the allow/block lists.
    pub fn is_blocked(&self, name: &str) -> bool {
        self.disabled.contains(name)
    }

    /// Whether `name` can run now (not blocked, not refused while frozen).
    pub fn is_enabled(&self, name: &str) -> bool {
        !self.is_blocked(name)
            && (!self.frozen.load(Ordering::SeqCst) || FROZEN_ALLOWED.contains(&name))
    }

    /// Enters or leaves the frozen state (also switches file logging).
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
        crate::logging::set_file_logging(!frozen);
    }
}

/// What a command handler gets besides its arguments.
pub struct Ctx {
    /// Shared agent state.
    pub shared: Arc<Shared>,
    /// Cleanups run if this command times out.
    pub cleanups: Arc<Cleanups>,
}

/// The agent: parser state, dispatcher and worker. Transport independent.
pub struct Agent {
    streamer: Streamer,
    shared: Arc<Shared>,
    worker: Worker,
}

impl Agent {
    /// An agent with the given configuration.
    pub fn new(config: AgentConfig) -> Self {
        let mut disabled = HashSet::new();
        for c in commands::all() {
            let allowed = config
                .allowed
                .as_ref()
                .is_none_or(|a| a.iter().any(|n| n == c.name));
            if !allowed
                || config.blocked.iter().any(|n| n == c.name)
                || commands::DISABLED_ON_LINUX.contains(&c.name)
            {
                disabled.insert(c.name);
            }
        }
        let files = FileTable::load(&config.statedir);
        let shared = Arc::new(Shared {
            config,
            files: Mutex::new(files),
            execs: Mutex::new(ExecTable::default()),
            freeze: Mutex::new(FreezeState::default()),
            frozen: AtomicBool::new(false),
            disabled,
        });
        Agent {
            streamer: Streamer::new(),
            shared,
            worker: Worker::new(),
        }
    }

    /// Shared state (used at exit to thaw filesystems).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Feeds bytes received from the channel; replies are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut msgs = Vec::new();
        self.streamer.feed(data, |p| {
            msgs.push(p);
            true
        });
        for m in msgs {
            self.handle(m, out);
        }
    }

    /// Handles one parsed message, appending its reply (if any) to `out`.
    pub fn handle(&mut self, msg: Parsed, out: &mut Vec<u8>) {
        let obj = match msg {
            Parsed::Error(e) => return write_error(out, None, &QgaError::generic(e.desc())),
            Parsed::Value(Value::Object(o)) => o,
            Parsed::Value(_) => {
                return write_error(
                    out,
                    None,
                    &QgaError::generic("QMP input must be a JSON object"),
                );
            }
        };
        let id = obj.get("id").cloned();
        let (name, args) = match check_request(obj) {
            Ok(x) => x,
            Err(e) => return write_error(out, id.as_ref(), &e),
        };
        let Some(def) = commands::find(&name) else {
            let e = QgaError::not_found(format!("The command {name} has not been found"));
            return write_error(out, id.as_ref(), &e);
        };
        if self.shared.is_blocked(def.name) {
            let e = QgaError::not_found(format!("Command {name} has been disabled"));
            return write_error(out, id.as_ref(), &e);
        }
        if !self.shared.is_enabled(def.name) {
            let e = QgaError::not_found(format!(
                "Command {name} has been disabled: the agent is in frozen state"
            ));
            return write_error(out, id.as_ref(), &e);
        }
        log::debug!("running {name}");
        match self.run(def, args) {
            Ok(v) => {
                if !def.success_response {
                    return;
                }
                if def.name == "guest-sync-delimited" {
                    out.push(0xFF);
                }
                out.extend_from_slice(b"{\"return\": ");
                write_value(out, &v);
                if let Some(id) = &id {
                    out.extend_from_slice(b", \"id\": ");
                    write_value(out, id);
                }
                out.extend_from_slice(b"}\n");
            }
            Err(e) => {
                log::debug!("{name} failed: {}", e.desc);
                write_error(out, id.as_ref(), &e)
            }
        }
    }

    fn run(&mut self, def: &'static CommandDef, args: Args) -> QgaResult<Value> {
        let ctx = Ctx {
            shared: self.shared.clone(),
            cleanups: self.worker.cleanups(),
        };
        if def.inline {
            return (def.handler)(&ctx, args);
        }
        let timeout = self.shared.config.timeout;
        let handler = def.handler;
        match self.worker.run(timeout, move || handler(&ctx, args)) {
            Ok(r) => r,
            Err(WorkerError::Timeout) => {
                log::warn!("{} timed out after {:?}", def.name, timeout);
                Err(QgaError::generic(format!(
                    "Command {} timed out after {} ms and was abandoned",
                    def.name,
                    timeout.as_millis()
                )))
            }
            Err(WorkerError::Busy) => Err(QgaError::generic(format!(
                "Command {} not run: too many earlier commands are still hung",
                def.name
            ))),
            Err(WorkerError::Failed) => Err(QgaError::generic(format!(
                "Command {} failed unexpectedly",
                def.name
            ))),
        }
    }
}

fn write_error(out: &mut Vec<u8>, id: Option<&Value>, e: &QgaError) {
    out.extend_from_slice(b"{");
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\": ");
        write_value(out, id);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"\"error\": ");
    write_value(out, &e.to_json());
    out.extend_from_slice(b"}\n");
}

/// Validates the top-level members of a request like qmp-dispatch.
fn check_request(obj: Map<String, Value>) -> QgaResult<(String, Args)> {
    let mut name = None;
    let mut args = None;
    for (k, v) in obj {
        match k.as_str() {
            "execute" => match v {
                Value::String(s) => name = Some(s),
                _ => {
                    return Err(QgaError::generic(
                        "QMP input member 'execute' must be a string",
                    ))
                }
            },
            "arguments" => match v {
                Value::Object(m) => args = Some(m),
                _ => {
                    return Err(QgaError::generic(
                        "QMP input member 'arguments' must be an object",
                    ))
                }
            },
            "id" => {}
            other => {
                return Err(QgaError::generic(format!(
                    "QMP input member '{other}' is unexpected"
                )))
            }
        }
    }
    let name = name.ok_or_else(|| QgaError::generic("QMP input lacks member 'execute'"))?;
    Ok((name, Args::new(args)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        // These tests open no files: the state directory is never written.
        let dir = std::env::temp_dir().join("virtagent-unit-no-state");
        Agent::new(AgentConfig {
            statedir: dir,
            blocked: vec!["guest-get-time".into()],
            ..Default::default()
        })
    }

    fn talk(a: &mut Agent, input: &[u8]) -> String {
        let mut out = Vec::new();
        a.feed(input, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn replies_and_errors() {
        let mut a = agent();
        assert_eq!(
            talk(&mut a, br#"{"execute":"guest-ping","id":"\u201c"}"#),
            "{\"return\": {}, \"id\": \"\\u201C\"}\n"
        );
        let r = talk(
            &mut a,
            br#"{"execute":"guest-sync-delimited","arguments":{"id":-9223372036854775808}}"#,
        );
        assert_eq!(r, "\u{FFFD}{\"return\": -9223372036854775808}\n");
        let r = talk(&mut a, br#"{"execute":"guest-nosuch","id":1}"#);
        assert!(
            r.contains("CommandNotFound") && r.contains("\"id\": 1"),
            "{r}"
        );
        let r = talk(&mut a, br#"{"execute":"guest-get-time"}"#);
        assert!(r.contains("has been disabled"), "{r}");
        let r = talk(&mut a, br#"{"execute":"guest-ping","control":1}"#);
        assert!(r.contains("'control' is unexpected"), "{r}");
        let r = talk(&mut a, b"[]");
        assert!(r.contains("must be a JSON object"), "{r}");
    }

    #[test]
    fn allow_list_then_block_list() {
        let dir = std::env::temp_dir().join("virtagent-unit-no-state");
        let mut a = Agent::new(AgentConfig {
            statedir: dir,
            allowed: Some(vec![
                "guest-ping".into(),
                "guest-info".into(),
                "guest-get-time".into(),
            ]),
            blocked: vec!["guest-get-time".into()],
            ..Default::default()
        });
        assert!(talk(&mut a, br#"{"execute":"guest-ping"}"#).contains("return"));
        for c in ["guest-get-time", "guest-get-host-name"] {
            let r = talk(&mut a, format!("{{\"execute\":\"{c}\"}}").as_bytes());
            assert!(
                r.contains("CommandNotFound") && r.contains("has been disabled"),
                "{r}"
            );
        }
        let info = talk(&mut a, br#"{"execute":"guest-info"}"#);
        let info: serde_json::Value = serde_json::from_str(info.trim()).expect("guest-info JSON");
        let enabled = |name: &str| {
            info["return"]["supported_commands"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == name))
                .map(|c| c["enabled"].clone())
        };
        assert_eq!(
            enabled("guest-ping"),
            Some(serde_json::json!(true)),
            "{info}"
        );
        assert_eq!(
            enabled("guest-get-time"),
            Some(serde_json::json!(false)),
            "{info}"
        );
    }

    #[test]
    fn frozen_refuses_commands() {
        let mut a = agent();
        a.shared.set_frozen(true);
        let r = talk(&mut a, br#"{"execute":"guest-get-host-name"}"#);
        assert!(
            r.contains("CommandNotFound") && r.contains("frozen state"),
            "{r}"
        );
        assert!(talk(&mut a, br#"{"execute":"guest-ping"}"#).contains("return"));
        a.shared.set_frozen(false);
        assert!(talk(&mut a, br#"{"execute":"guest-get-host-name"}"#).contains("host-name"));
    }
}
