//! Building the KVM VM, its event-loop subscriber, and its QMP face (machine control).

use chardev::Chardev;
use devices::bus::{Bus, SharedDevice};
use devices::legacy::{
    EventFdTrigger, COM1_BASE, I8042, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_LEN,
};
use devices::virtio::console::{Console, ConsoleConfig, PortBackend, PortConfig};
use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::loader::Cmdline;
use qmp::{CommandSpec, Machine, QmpError};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::acpi::{self, AcpiConfig, MmioDeviceInfo, PmDevice};
use super::boot::{self, EntryPoint};
use super::memory::{self, CMDLINE_MAX, VIRTIO_MMIO_BASE};
use super::serial::SerialLink;
use super::vcpu::{self, VcpuControl, VcpuEvents};
use super::{KvmConfig, SerialSpec};
use crate::cli::DeviceSpec;
use crate::machine::{NoneMachine, RunState, VmState};
use crate::ports::PlannedPort;

/// The virtio-serial device on its MMIO transport.
pub type Transport = MmioTransport<Console, GuestMemoryMmap, EventFdTrigger>;

const SERIAL_GSI: u32 = 4;
const VIRTIO_GSI: u32 = 5;
const GED_GSI: u32 = 10;

/// Checks the `-device` list against this machine: at most one virtio-serial device, and ports
/// only after one. Returns its `max_ports` and the ports, numbered as QEMU does.
pub fn plan_ports(devices: &[DeviceSpec]) -> Result<Option<(u32, Vec<PlannedPort>)>, String> {
    let mut max_ports = None;
    for d in devices {
        match d {
            DeviceSpec::VirtioSerial { max_ports: m, .. } => {
                if max_ports.is_some() {
                    return Err(
                        "-device virtio-serial: only one virtio-serial device is supported".into(),
                    );
                }
                max_ports = Some(*m);
            }
            DeviceSpec::Port { console, .. } => {
                if max_ports.is_none() {
                    return Err(format!(
                        "-device {}: needs a virtio-serial device before it (-device virtio-serial)",
                        if *console { "virtconsole" } else { "virtserialport" }
                    ));
                }
            }
        }
    }
    match max_ports {
        None => Ok(None),
        Some(m) => Ok(Some((m, crate::ports::plan(devices, m)?))),
    }
}

/// Host sides of the virtio-serial ports, given by the caller (see `crate::ports`).
pub trait PortWiring {
    /// The backend of `plan`'s port and whether its host side starts connected.
    fn backend(&mut self, plan: &PlannedPort) -> Result<(Box<dyn PortBackend>, bool), String>;
    /// Called once the transport exists, so host-side writes can reach the device.
    fn attach(&mut self, transport: Arc<Mutex<Transport>>);
    /// The event-loop subscriber of the host side, if it has one.
    fn subscriber(&mut self) -> Option<Box<dyn MutEventSubscriber>>;
}

/// The running VM.
pub struct Vm {
    cfg: KvmConfig,
    _kvm: Kvm,
    /// Kept open for the VM's lifetime (the vCPU fds and irqfds belong to it).
    _vm_fd: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Arc<VcpuControl>,
    pending_vcpus: RefCell<Vec<kvm_ioctls::VcpuFd>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    transport: Option<Arc<Mutex<Transport>>>,
    ioevents: Vec<EventFd>,
    work: EventFd,
    serial: SerialLink,
    events: Arc<VcpuEvents>,
    ged: EventFd,
    cmdline: Cmdline,
    mmio_info: Vec<MmioDeviceInfo>,
    /// The COM1 chardev, when `-serial stdio|file:` made it here.
    own_serial: Option<Chardev>,
    state: Rc<VmState>,
    stopped: Cell<bool>,
}

fn kvm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn efd() -> Result<EventFd, String> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))
}

impl Vm {
    /// Creates the VM, loads the guest and wires the devices. vCPUs start with [`Vm::start`].
    pub fn build(
        cfg: &KvmConfig,
        devices: &[DeviceSpec],
        chardevs: &[Chardev],
        wiring: &mut dyn PortWiring,
        state: Rc<VmState>,
    ) -> Result<Rc<Vm>, String> {
        let ports = plan_ports(devices)?;
        let serial_cd = match &cfg.serial {
            SerialSpec::None => None,
            SerialSpec::Chardev(id) => Some(
                chardevs
                    .iter()
                    .find(|c| c.id() == *id)
                    .cloned()
                    .ok_or_else(|| {
                        format!("-serial chardev:{id}: chardev '{id}' does not exist")
                    })?,
            ),
            SerialSpec::Stdio => Some(
                Chardev::new(&chardev::ChardevSpec {
                    id: "serial0".into(),
                    backend: chardev::Backend::Stdio,
                })
                .map_err(|e| format!("-serial stdio: {e}"))?,
            ),
            SerialSpec::File(p) => Some(
                Chardev::new(&chardev::ChardevSpec {
                    id: "serial0".into(),
                    backend: chardev::Backend::File {
                        path: p.clone(),
                        append: false,
                    },
                })
                .map_err(|e| format!("-serial file:{}: {e}", p.display()))?,
            ),
        };

        let mem = memory::create(cfg.mem_size)?;
        let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(0xfffb_c000)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: mem
                    .get_host_address(region.start_addr())
                    .map_err(|e| format!("guest memory: {e}"))?
                    as u64,
            };
            // SAFETY: the region is a live mmap of `memory_size` bytes owned by `mem`, which the
            // VM keeps (in `Vm::mem`) for as long as the VM fd exists.
            unsafe { vm_fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        let events = Arc::new(VcpuEvents {
            shutdown: efd()?,
            reset: efd()?,
            crash: efd()?,
        });
        let mut pio = Bus::new();
        let mut mmio = Bus::new();

        let serial_irq = efd()?;
        vm_fd
            .register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let own_serial = match cfg.serial {
            SerialSpec::Stdio | SerialSpec::File(_) => serial_cd.clone(),
            _ => None,
        };
        let serial = SerialLink::new(serial_irq, serial_cd).map_err(|e| format!("serial: {e}"))?;
        let dev_err = |e: devices::bus::BusError| format!("device bus: {e}");
        pio.insert(
            serial.uart.clone() as SharedDevice,
            COM1_BASE,
            SERIAL_PORT_LEN,
        )
        .map_err(dev_err)?;
        let reset_line = events
            .reset
            .try_clone()
            .map_err(|e| format!("eventfd: {e}"))?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(EventFdTrigger::new(reset_line)))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )
        .map_err(dev_err)?;
        let pm = PmDevice::new(
            events
                .shutdown
                .try_clone()
                .map_err(|e| format!("eventfd: {e}"))?,
            events
                .reset
                .try_clone()
                .map_err(|e| format!("eventfd: {e}"))?,
        );
        pio.insert(
            Arc::new(Mutex::new(pm)),
            u64::from(acpi::PM_PORT),
            acpi::PM_PORT_LEN,
        )
        .map_err(dev_err)?;
        let ged = efd()?;
        vm_fd
            .register_irqfd(&ged, GED_GSI)
            .map_err(kvm_err("KVM_IRQFD (GED)"))?;

        let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| format!("-append: {e}"))?;
        if !cfg.append.is_empty() {
            cmdline
                .insert_str(&cfg.append)
                .map_err(|e| format!("-append: {e}"))?;
        }
        let work = efd()?;
        let mut ioevents = Vec::new();
        let mut mmio_info = Vec::new();
        let mut transport = None;
        if let Some((max_ports, plans)) = ports {
            let mut console = Console::new(ConsoleConfig {
                max_nr_ports: max_ports,
                ..Default::default()
            })
            .map_err(|e| format!("-device virtio-serial: {e}"))?;
            for p in &plans {
                let (backend, connected) = wiring.backend(p)?;
                let mut pc = if p.console {
                    PortConfig::console(p.port)
                } else {
                    PortConfig::serial(p.port, "")
                };
                pc.name = p.name.clone();
                pc.host_connected = connected;
                console
                    .add_port(pc, backend)
                    .map_err(|e| format!("-device port {}: {e}", p.port))?;
            }
            let nqueues = devices::virtio::VirtioDevice::queue_max_sizes(&console).len();
            let irq = efd()?;
            vm_fd
                .register_irqfd(&irq, VIRTIO_GSI)
                .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
            let mut t = MmioTransport::new(console, mem.clone(), EventFdTrigger::new(irq))
                .map_err(|e| format!("virtio-mmio: {e}"))?;
            t.set_work_trigger(EventFdTrigger::new(
                work.try_clone().map_err(|e| format!("eventfd: {e}"))?,
            ));
            let t = Arc::new(Mutex::new(t));
            let base = VIRTIO_MMIO_BASE;
            mmio.insert(t.clone() as SharedDevice, base, MMIO_WINDOW_SIZE)
                .map_err(dev_err)?;
            for q in 0..nqueues {
                let fd = efd()?;
                vm_fd
                    .register_ioevent(&fd, &IoEventAddress::Mmio(base + 0x50), q as u32)
                    .map_err(kvm_err("KVM_IOEVENTFD"))?;
                ioevents.push(fd);
            }
            mmio_info.push(MmioDeviceInfo {
                base,
                len: MMIO_WINDOW_SIZE,
                gsi: VIRTIO_GSI,
            });
            cmdline
                .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(base), VIRTIO_GSI, None)
                .map_err(|e| format!("-append: {e}"))?;
            wiring.attach(t.clone());
            transport = Some(t);
        }

        let vcpus = VcpuControl::new(
            EntryPoint {
                rip: 0,
                protocol: boot::BootProtocol::Linux64,
            },
            state.run_state.get() != RunState::Running,
        );
        let mut pending = Vec::new();
        for id in 0..cfg.vcpus {
            let v = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            v.set_cpuid2(&vcpu::cpuid(&kvm, id)?)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            pending.push(v);
        }

        let vm = Vm {
            cfg: cfg.clone(),
            _kvm: kvm,
            _vm_fd: vm_fd,
            mem,
            vcpus,
            pending_vcpus: RefCell::new(pending),
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            transport,
            ioevents,
            work,
            serial,
            events,
            ged,
            cmdline,
            mmio_info,
            own_serial,
            state,
            stopped: Cell::new(false),
        };
        let entry = vm.load()?;
        vm.vcpus.reset(entry);
        Ok(Rc::new(vm))
    }

    /// Writes everything the guest boots from into its memory; returns the entry point.
    fn load(&self) -> Result<EntryPoint, String> {
        boot::write_page_tables_and_gdt(&self.mem)?;
        let kernel = boot::load_kernel(&self.mem, &self.cfg.kernel)?;
        let initrd = match &self.cfg.initrd {
            Some(p) => Some(boot::load_initrd(&self.mem, self.cfg.mem_size, p, &kernel)?),
            None => None,
        };
        let rsdp = acpi::write_tables(
            &self.mem,
            &AcpiConfig {
                vcpus: self.cfg.vcpus,
                mmio: &self.mmio_info,
                serial_gsi: SERIAL_GSI,
                ged_gsi: GED_GSI,
            },
        )?;
        boot::write_boot_params(
            &self.mem,
            self.cfg.mem_size,
            &kernel,
            &self.cmdline,
            initrd,
            rsdp,
        )?;
        Ok(kernel.entry)
    }

    /// Starts the vCPU threads (paused if the VM is not running yet).
    pub fn start(&self) -> Result<(), String> {
        vcpu::install_kick_handler()?;
        for (id, v) in self.pending_vcpus.borrow_mut().drain(..).enumerate() {
            self.vcpus.spawn(
                v,
                id as u8,
                self.pio.clone(),
                self.mmio.clone(),
                self.events.clone(),
            )?;
        }
        Ok(())
    }

    /// Stops and joins the vCPU threads.
    pub fn stop(&self) {
        if !self.stopped.replace(true) {
            self.vcpus.stop();
        }
    }

    fn pause(&self) {
        self.vcpus.pause();
    }

    fn resume(&self) {
        self.vcpus.resume();
    }

    /// Resets the machine: vCPUs to the boot state, guest reloaded, devices reset.
    fn reset(&self, guest: bool, reason: &str) {
        let st = &self.state;
        if guest && self.cfg.no_reboot {
            st.shutdown(true, reason);
            return;
        }
        self.pause();
        if let Some(t) = &self.transport {
            // Status 0 is the virtio reset.
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(0x70, &0u32.to_le_bytes());
        }
        match self.load() {
            Ok(entry) => self.vcpus.reset(entry),
            Err(e) => {
                eprintln!("vmm: reset failed: {e}");
                st.shutdown(false, "host-error");
                return;
            }
        }
        st.monitor
            .event("RESET", Some(json!({"guest": guest, "reason": reason})));
        if st.run_state.get() == RunState::Running {
            self.resume();
        }
    }

    fn powerdown(&self) {
        self.state.monitor.event("POWERDOWN", None);
        let _ = self.ged.write(1);
    }

    fn handle(&self, data: u32) {
        match data {
            EV_SHUTDOWN => {
                let _ = self.events.shutdown.read();
                self.state.shutdown(true, "guest-shutdown");
            }
            EV_RESET => {
                let _ = self.events.reset.read();
                self.reset(true, "guest-reset");
            }
            EV_CRASH => {
                let _ = self.events.crash.read();
                eprintln!("vmm: the guest cannot run any more (KVM error); stopping");
                self.state.shutdown(true, "guest-panic");
            }
            EV_SERIAL_OUT => self.serial.flush_output(),
            EV_SERIAL_SPACE => self.serial.input_space(),
            EV_WORK => {
                let _ = self.work.read();
                if let Some(t) = &self.transport {
                    t.lock().unwrap_or_else(|e| e.into_inner()).process();
                }
            }
            q if q >= EV_QUEUE => {
                let i = (q - EV_QUEUE) as usize;
                if let (Some(fd), Some(t)) = (self.ioevents.get(i), &self.transport) {
                    let _ = fd.read();
                    t.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .queue_notify(i as u16);
                }
            }
            _ => {}
        }
    }

    /// The event-loop subscribers of this VM: its own fds, and the COM1 chardev when the VM
    /// created it (`-serial stdio|file:`; a `-serial chardev:ID` is the caller's).
    pub fn subscribers(self: &Rc<Self>) -> Vec<Box<dyn MutEventSubscriber>> {
        let mut v: Vec<Box<dyn MutEventSubscriber>> = vec![Box::new(VmSubscriber(self.clone()))];
        if let Some(cd) = &self.own_serial {
            v.extend(cd.subscriber());
        }
        v
    }
}

const EV_SHUTDOWN: u32 = 1;
const EV_RESET: u32 = 2;
const EV_CRASH: u32 = 3;
const EV_SERIAL_OUT: u32 = 4;
const EV_SERIAL_SPACE: u32 = 5;
const EV_WORK: u32 = 6;
const EV_QUEUE: u32 = 0x100;

struct VmSubscriber(Rc<Vm>);

impl MutEventSubscriber for VmSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let vm = &self.0;
        let mut fds: Vec<(i32, u32)> = vec![
            (vm.events.shutdown.as_raw_fd(), EV_SHUTDOWN),
            (vm.events.reset.as_raw_fd(), EV_RESET),
            (vm.events.crash.as_raw_fd(), EV_CRASH),
            (vm.serial.out_kick.as_raw_fd(), EV_SERIAL_OUT),
            (vm.serial.space.as_raw_fd(), EV_SERIAL_SPACE),
            (vm.work.as_raw_fd(), EV_WORK),
        ];
        for (i, fd) in vm.ioevents.iter().enumerate() {
            fds.push((fd.as_raw_fd(), EV_QUEUE + i as u32));
        }
        for (fd, data) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("cannot watch a VM event fd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.0.handle(events.data());
    }
}

/// The QMP face of the KVM machine: `-machine none`'s commands plus machine control.
pub struct KvmMachine {
    pub none: NoneMachine,
    pub vm: Rc<Vm>,
}

const NONE: &[qmp::protocol::Param] = &[];

impl Machine for KvmMachine {
    fn commands(&self) -> Vec<CommandSpec> {
        let mut v = self.none.commands();
        for name in ["system_reset", "system_powerdown"] {
            v.push(CommandSpec { name, params: NONE });
        }
        v
    }

    fn cpu_count(&self) -> usize {
        self.vm.cfg.vcpus as usize
    }

    fn execute(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let st = self.none.state.clone();
        match name {
            "query-kvm" => Ok(json!({"enabled": true, "present": true})),
            "stop" => {
                st.stop(|| self.vm.pause());
                Ok(json!({}))
            }
            "cont" => st.cont(|| self.vm.resume()).map(|_| json!({})),
            "system_reset" => {
                self.vm.reset(false, "host-qmp-system-reset");
                Ok(json!({}))
            }
            "system_powerdown" => {
                self.vm.powerdown();
                Ok(json!({}))
            }
            _ => self.none.execute(name, args),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(console: bool, chardev: &str, name: Option<&str>) -> DeviceSpec {
        DeviceSpec::Port {
            console,
            chardev: chardev.into(),
            name: name.map(String::from),
            id: None,
        }
    }

    #[test]
    fn ports_are_numbered_as_qemu() {
        let vs = DeviceSpec::VirtioSerial {
            id: None,
            max_ports: 31,
        };
        let (max, p) = plan_ports(&[
            vs.clone(),
            port(false, "a", Some("x")),
            port(true, "b", None),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(max, 31);
        assert_eq!((p[0].port, p[1].port), (1, 0));
        assert!(plan_ports(&[port(false, "a", None)])
            .unwrap_err()
            .contains("needs a virtio-serial"));
        assert!(plan_ports(&[vs.clone(), vs.clone()])
            .unwrap_err()
            .contains("only one"));
        let small = DeviceSpec::VirtioSerial {
            id: None,
            max_ports: 2,
        };
        assert!(
            plan_ports(&[small, port(false, "a", None), port(false, "b", None)])
                .unwrap_err()
                .contains("max_ports")
        );
    }
}
