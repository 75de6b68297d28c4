//! The QMP monitor as a client meets it: bytes written to a real session socket of an
//! in-process `Monitor` (negotiation, framing, request checking, dispatch, HMP, the proxy's
//! submit path). Nothing may panic, and everything the monitor writes is ASCII lines.
#![no_main]

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use qmp::protocol::{Param, ParamKind};
use qmp::{CommandSpec, Machine, Monitor, MonitorHandle, QmpError, QmpProxy, SocketAddr};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

const ARGS: &[Param] = &[
    Param {
        name: "a",
        kind: ParamKind::Str,
        required: true,
    },
    Param {
        name: "b",
        kind: ParamKind::Int,
        required: false,
    },
    Param {
        name: "c",
        kind: ParamKind::Bool,
        required: false,
    },
    Param {
        name: "d",
        kind: ParamKind::StrList,
        required: false,
    },
    Param {
        name: "e",
        kind: ParamKind::Any,
        required: false,
    },
];

/// A machine with a few commands of every argument kind.
struct FuzzMachine {
    running: bool,
    monitor: MonitorHandle,
}

impl Machine for FuzzMachine {
    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec {
                name: "query-status",
                params: &[],
            },
            CommandSpec {
                name: "stop",
                params: &[],
            },
            CommandSpec {
                name: "cont",
                params: &[],
            },
            CommandSpec {
                name: "x-args",
                params: ARGS,
            },
        ]
    }

    fn execute(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError> {
        match name {
            "query-status" => Ok(json!({"running": self.running, "status": "running"})),
            "stop" | "cont" => {
                self.running = name == "cont";
                self.monitor
                    .event(if self.running { "RESUME" } else { "STOP" }, None);
                Ok(json!({}))
            }
            _ => Ok(Value::Object(args.clone())),
        }
    }

    fn cpu_count(&self) -> usize {
        1
    }
}

/// The proxy's agent channel: what it sends is dropped (the agent never answers here).
struct Sink;

impl qmp::AgentChannel for Sink {
    fn send(&mut self, _data: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

struct Rig {
    em: EventManager<Box<dyn MutEventSubscriber>>,
    sock: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let sock =
            std::env::temp_dir().join(format!("qmp-monitor-fuzz-{}.sock", std::process::id()));
        let handle = MonitorHandle::new().unwrap();
        let mut m = Monitor::new(
            handle.clone(),
            Box::new(FuzzMachine {
                running: true,
                monitor: handle.clone(),
            }),
        );
        let proxy = Rc::new(RefCell::new(
            QmpProxy::new("qga0", Duration::from_secs(30), handle).unwrap(),
        ));
        proxy.borrow_mut().set_channel(Box::new(Sink));
        proxy.borrow_mut().on_open();
        m.set_proxy(proxy);
        m.listen(&SocketAddr::Unix(sock.clone())).unwrap();
        let mut em: EventManager<Box<dyn MutEventSubscriber>> = EventManager::new().unwrap();
        em.add_subscriber(Box::new(m));
        Rig { em, sock }
    }

    fn settle(&mut self) {
        virtagent_fuzz::settle(&mut self.em);
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(Rig::new);
        let c = UnixStream::connect(&rig.sock).unwrap();
        c.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        let mut sent = 0;
        // Half the inputs start negotiated, so that commands are reached at once.
        let negotiated = data.first().is_some_and(|b| b & 1 == 1);
        let mut input = Vec::new();
        if negotiated {
            input.extend_from_slice(b"{\"execute\":\"qmp_capabilities\"}");
        }
        input.extend_from_slice(data.get(1..).unwrap_or_default());
        loop {
            if sent < input.len() {
                if let Ok(n) = (&c).write(&input[sent..]) {
                    sent += n;
                }
            }
            rig.settle();
            let mut progress = false;
            while let Ok(n) = (&c).read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                progress = true;
            }
            if sent == input.len() && !progress {
                break;
            }
        }
        drop(c);
        rig.settle();
        assert!(out.is_ascii(), "the monitor writes ASCII only");
        assert!(out.is_empty() || out.ends_with(b"\r\n"), "whole lines only");
    });
});
