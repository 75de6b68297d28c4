//! Machine state and the QMP commands that act on it (`query-status`, `stop`, `quit`, ...).

use chardev::Chardev;
use qmp::protocol::{Param, ParamKind};
use qmp::{CommandSpec, Machine, MonitorHandle, QmpError};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// QEMU's RunState values this VMM can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Shutdown,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
        }
    }
}

/// State shared by the QMP commands, the signal handler and the main loop.
pub struct VmState {
    pub name: Option<String>,
    pub run_state: Cell<RunState>,
    /// Set when the process should leave its event loop.
    pub exit: Cell<bool>,
    pub monitor: MonitorHandle,
}

impl VmState {
    /// QMP `stop`: a running VM pauses (`pause` stops the vCPUs first), then STOP is emitted.
    pub fn stop(&self, pause: impl FnOnce()) {
        if self.run_state.get() == RunState::Running {
            pause();
            self.run_state.set(RunState::Paused);
            self.monitor.event("STOP", None);
        }
    }

    /// QMP `cont`: a paused or not yet started VM runs (`resume` restarts the vCPUs), then
    /// RESUME is emitted. A VM that shut down must be reset first.
    pub fn cont(&self, resume: impl FnOnce()) -> Result<(), QmpError> {
        match self.run_state.get() {
            RunState::Shutdown => Err(QmpError::generic(
                "Resetting the Virtual Machine is required",
            )),
            RunState::Paused | RunState::Prelaunch => {
                self.run_state.set(RunState::Running);
                resume();
                self.monitor.event("RESUME", None);
                Ok(())
            }
            RunState::Running => Ok(()),
        }
    }

    /// Ends the VM: SHUTDOWN event with `reason`, then the event loop stops.
    pub fn shutdown(&self, guest: bool, reason: &str) {
        if self.exit.get() {
            return;
        }
        self.run_state.set(RunState::Shutdown);
        self.monitor
            .event("SHUTDOWN", Some(json!({"guest": guest, "reason": reason})));
        self.exit.set(true);
    }
}

/// The QMP face of a `-machine none` VM.
pub struct NoneMachine {
    pub state: Rc<VmState>,
    pub chardevs: Rc<RefCell<Vec<Chardev>>>,
}

const NONE: &[Param] = &[];
const RINGBUF_READ: &[Param] = &[
    Param {
        name: "device",
        kind: ParamKind::Str,
        required: true,
    },
    Param {
        name: "size",
        kind: ParamKind::Int,
        required: true,
    },
    Param {
        name: "format",
        kind: ParamKind::Str,
        required: false,
    },
];
const RINGBUF_WRITE: &[Param] = &[
    Param {
        name: "device",
        kind: ParamKind::Str,
        required: true,
    },
    Param {
        name: "data",
        kind: ParamKind::Str,
        required: true,
    },
    Param {
        name: "format",
        kind: ParamKind::Str,
        required: false,
    },
];

impl NoneMachine {
    fn ringbuf(&self, args: &Map<String, Value>) -> Result<Chardev, QmpError> {
        let id = args["device"].as_str().unwrap_or_default();
        let cds = self.chardevs.borrow();
        let cd = cds
            .iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| QmpError::generic(format!("Device '{id}' not found")))?;
        if !cd.is_ringbuf() {
            return Err(QmpError::generic(format!("{id} is not a ringbuf device")));
        }
        Ok(cd.clone())
    }
}

fn format_is_base64(args: &Map<String, Value>) -> Result<bool, QmpError> {
    match args.get("format").and_then(Value::as_str) {
        None | Some("utf8") => Ok(false),
        Some("base64") => Ok(true),
        Some(f) => Err(QmpError::generic(format!(
            "Parameter 'format' does not accept value '{f}'"
        ))),
    }
}

impl Machine for NoneMachine {
    fn commands(&self) -> Vec<CommandSpec> {
        [
            ("query-status", NONE),
            ("query-name", NONE),
            ("query-chardev", NONE),
            ("query-kvm", NONE),
            ("stop", NONE),
            ("cont", NONE),
            ("quit", NONE),
            ("ringbuf-read", RINGBUF_READ),
            ("ringbuf-write", RINGBUF_WRITE),
        ]
        .into_iter()
        .map(|(name, params)| CommandSpec { name, params })
        .collect()
    }

    fn execute(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let st = &self.state;
        match name {
            "query-status" => {
                let s = st.run_state.get();
                Ok(json!({"status": s.as_str(), "running": s == RunState::Running, "singlestep": false}))
            }
            "query-name" => Ok(match &st.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            }),
            "query-chardev" => Ok(Value::Array(
                self.chardevs
                    .borrow()
                    .iter()
                    .map(|c| json!({"label": c.id(), "filename": c.filename(), "frontend-open": c.has_frontend()}))
                    .collect(),
            )),
            "query-kvm" => Ok(json!({"enabled": false, "present": std::path::Path::new("/dev/kvm").exists()})),
            "stop" => {
                st.stop(|| {});
                Ok(json!({}))
            }
            "cont" => st.cont(|| {}).map(|_| json!({})),
            "quit" => {
                st.shutdown(false, "host-qmp-quit");
                Ok(json!({}))
            }
            "ringbuf-read" => {
                let cd = self.ringbuf(args)?;
                let size = args["size"].as_i64().unwrap_or(-1);
                if size < 0 {
                    return Err(QmpError::generic("size must be greater than zero"));
                }
                let b64 = format_is_base64(args)?;
                let data = cd.ringbuf_read(size as usize).unwrap_or_default();
                Ok(Value::String(if b64 {
                    base64_encode(&data)
                } else {
                    String::from_utf8_lossy(&data).into_owned()
                }))
            }
            "ringbuf-write" => {
                let cd = self.ringbuf(args)?;
                let data = args["data"].as_str().unwrap_or_default();
                let bytes = if format_is_base64(args)? {
                    base64_decode(data).ok_or_else(|| QmpError::generic("Invalid base64 data"))?
                } else {
                    data.as_bytes().to_vec()
                };
                cd.write(&bytes)
                    .map_err(|e| QmpError::generic(format!("Could not write to chardev: {e}")))?;
                Ok(json!({}))
            }
            other => Err(QmpError::not_found(format!(
                "The command {other} has not been found"
            ))),
        }
    }
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
