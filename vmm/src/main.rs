//! `vmm`: a minimal VMM with a QMP monitor and an in-process QMP proxy to a guest agent.

use vmm::{cli, kvm, machine, ports, signals, vhost_user};

use chardev::{Backend, Chardev};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use qmp::{Monitor, MonitorHandle, QmpProxy};
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use machine::{NoneMachine, RunState, VmState};

/// Lets the main loop keep a handle on a subscriber the event manager owns.
struct Shared<T>(Rc<RefCell<T>>);

impl<T: MutEventSubscriber> MutEventSubscriber for Shared<T> {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.borrow_mut().init(ops)
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.borrow_mut().process(events, ops)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match cli::parse(&args) {
        Ok(cli::Action::Run(cfg)) => cfg,
        Ok(cli::Action::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(cli::Action::Version) => {
            println!("vmm (virtagent) {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vmm: {}", e.0);
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: &cli::Config) -> Result<(), String> {
    // Signals become events of the loop; block them first so no thread takes them asynchronously.
    let sigs = signals::SignalFd::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .map_err(|e| format!("signalfd: {e}"))?;
    let handle = MonitorHandle::new().map_err(|e| format!("eventfd: {e}"))?;
    let state = Rc::new(VmState {
        name: cfg.name.clone(),
        run_state: Cell::new(if cfg.start_paused {
            RunState::Prelaunch
        } else {
            RunState::Running
        }),
        exit: Cell::new(false),
        monitor: handle.clone(),
    });

    let mut em = EventManager::<Box<dyn MutEventSubscriber>>::new()
        .map_err(|e| format!("event manager: {e:?}"))?;
    let chardevs = Rc::new(RefCell::new(Vec::<Chardev>::new()));
    let mut proxy = None;
    // Virtio-serial ports and their host sides (vhost-user machine).
    let (max_ports, port_plan) = serial_ports(cfg)?;
    let mut hub = match cfg.machine {
        cli::MachineKind::VhostUser | cli::MachineKind::Kvm => {
            Some(ports::PortHub::new(handle.clone()).map_err(|e| format!("eventfd: {e}"))?)
        }
        _ => None,
    };
    let mut port_proxies = Vec::new();
    for spec in &cfg.chardevs {
        let cd = match &spec.backend {
            Backend::QmpProxy {
                path: None,
                timeout,
                ..
            } => {
                // The agent is behind a virtio-serial port (validated by cli).
                let port = port_plan
                    .iter()
                    .find(|p| p.chardev == spec.id)
                    .map(|p| p.port)
                    .ok_or_else(|| format!("chardev '{}': not attached to a port", spec.id))?;
                let hub = hub
                    .as_mut()
                    .ok_or_else(|| format!("chardev '{}': needs a machine with ports", spec.id))?;
                let p = Rc::new(RefCell::new(
                    QmpProxy::new(&spec.id, *timeout, handle.clone())
                        .map_err(|e| format!("chardev '{}': {e}", spec.id))?,
                ));
                em.add_subscriber(qmp::proxy::timer_subscriber(p.clone()));
                let cd =
                    chardev::qmp_proxy::attach_port(&spec.id, p.clone(), hub.proxy_channel(port))
                        .map_err(|e| e.to_string())?;
                port_proxies.push((spec.id.clone(), p.clone()));
                proxy = Some(p);
                cd
            }
            Backend::QmpProxy {
                path: Some(path),
                timeout,
                reconnect,
            } => {
                let p = Rc::new(RefCell::new(
                    QmpProxy::new(&spec.id, *timeout, handle.clone())
                        .map_err(|e| format!("chardev '{}': {e}", spec.id))?,
                ));
                em.add_subscriber(qmp::proxy::timer_subscriber(p.clone()));
                let cd = chardev::qmp_proxy::attach_socket(&spec.id, p.clone(), path, *reconnect)
                    .map_err(|e| e.to_string())?;
                proxy = Some(p);
                cd
            }
            _ => Chardev::new(spec).map_err(|e| e.to_string())?,
        };
        if cd.waits_for_peer() {
            eprintln!(
                "vmm: chardev '{}': waiting for a connection on {}",
                spec.id,
                cd.filename()
            );
            if !cd
                .wait_for_peer(sigs.as_raw_fd())
                .map_err(|e| format!("chardev '{}': {e}", spec.id))?
            {
                cd.cleanup();
                cleanup_chardevs(&chardevs.borrow());
                return Ok(());
            }
        }
        if let Some(sub) = cd.subscriber() {
            em.add_subscriber(sub);
        }
        chardevs.borrow_mut().push(cd);
    }

    let vhost_dev = match (
        cfg.machine,
        hub.take_if(|_| cfg.machine == cli::MachineKind::VhostUser),
    ) {
        (cli::MachineKind::VhostUser, Some(hub)) => {
            let socket = cfg
                .vhost_user_socket
                .as_deref()
                .ok_or("vhost-user: no socket")?;
            let dev = vhost_user::start(
                socket,
                max_ports,
                &port_plan,
                hub,
                &chardevs.borrow(),
                &port_proxies,
                &mut em,
            )?;
            eprintln!("vmm: vhost-user backend listening on {}", socket.display());
            Some(dev)
        }
        _ => None,
    };
    let machine = NoneMachine {
        state: state.clone(),
        chardevs: chardevs.clone(),
    };
    let mut vm = None;
    let machine: Box<dyn qmp::Machine> = match &cfg.kvm {
        None => Box::new(machine),
        Some(k) => {
            let hub = hub.take().ok_or("KVM machine: no port hub")?;
            let mut wiring = kvm::HubWiring::new(hub, &chardevs.borrow(), &port_proxies);
            let v = kvm::Vm::build(
                k,
                &cfg.devices,
                &chardevs.borrow(),
                &mut wiring,
                state.clone(),
            )?;
            for sub in v.subscribers() {
                em.add_subscriber(sub);
            }
            if let Some(sub) = kvm::PortWiring::subscriber(&mut wiring) {
                em.add_subscriber(sub);
            }
            vm = Some(v.clone());
            Box::new(kvm::KvmMachine {
                none: machine,
                vm: v,
            })
        }
    };
    let mut monitor = Monitor::new(handle.clone(), machine);
    if let Some(p) = proxy {
        monitor.set_proxy(p);
    }
    for q in &cfg.qmp {
        if q.server {
            monitor
                .listen(&q.addr)
                .map_err(|e| format!("-qmp {}: {e}", q.addr))?;
            if q.wait {
                eprintln!("vmm: waiting for a QMP client on {}", q.addr);
                let connected = monitor
                    .wait_for_client(sigs.as_raw_fd())
                    .map_err(|e| format!("-qmp {}: {e}", q.addr))?;
                if !connected {
                    monitor.cleanup();
                    cleanup_chardevs(&chardevs.borrow());
                    return Ok(());
                }
            }
        } else {
            monitor
                .connect(&q.addr)
                .map_err(|e| format!("-qmp {}: {e}", q.addr))?;
        }
    }
    let monitor = Rc::new(RefCell::new(monitor));
    em.add_subscriber(Box::new(Shared(monitor.clone())));
    em.add_subscriber(Box::new(signals::SignalSubscriber {
        fd: sigs,
        state: state.clone(),
    }));

    if let Some(v) = &vm {
        v.start()?;
    }
    log::info!("vmm: running");
    let result = loop {
        if state.exit.get() {
            break Ok(());
        }
        if let Err(e) = em.run() {
            break Err(format!("event loop: {e:?}"));
        }
    };
    if let Some(v) = &vm {
        v.stop();
    }
    let mut m = monitor.borrow_mut();
    m.flush_before_exit(Duration::from_secs(1));
    m.cleanup();
    cleanup_chardevs(&chardevs.borrow());
    if let Some(d) = vhost_dev {
        d.0.borrow().cleanup();
    }
    result
}

/// `max_ports` of the virtio-serial device and the numbered ports.
fn serial_ports(cfg: &cli::Config) -> Result<(u32, Vec<ports::PlannedPort>), String> {
    let max_ports = cfg
        .devices
        .iter()
        .find_map(|d| match d {
            cli::DeviceSpec::VirtioSerial { max_ports, .. } => Some(*max_ports),
            _ => None,
        })
        .unwrap_or(31);
    Ok((max_ports, ports::plan(&cfg.devices, max_ports)?))
}

fn cleanup_chardevs(cds: &[Chardev]) {
    for c in cds {
        c.cleanup();
    }
}
