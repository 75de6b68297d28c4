//! The QEMU-style command line: `-machine none -name test -qmp unix:/tmp/qmp.sock,server=on,wait=off
//! -chardev qmp_proxy,id=qga0,path=/tmp/agent.sock`. Each option may also be spelled `--option`.
//! Every error is one line that names the option.

use chardev::opts::{parse_socket_uri, Opts, OptsError};
use chardev::{ChardevSpec, SocketSpec};

/// A `-device` the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    VirtioSerial {
        id: Option<String>,
        max_ports: u32,
    },
    Port {
        console: bool,
        chardev: String,
        name: Option<String>,
        id: Option<String>,
    },
}

/// Which machine to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKind {
    /// No guest: the monitor, chardevs and QMP proxy only.
    None,
    /// A KVM virtual machine booting `-kernel`.
    Kvm,
    /// The virtio-serial device served to a vhost-user frontend (QEMU, Cloud Hypervisor,
    /// User-Mode Linux) on the unix socket `Config::vhost_user_socket`.
    VhostUser,
}

/// Everything the command line asked for.
#[derive(Debug, Clone)]
pub struct Config {
    pub machine: MachineKind,
    pub name: Option<String>,
    pub qmp: Vec<SocketSpec>,
    pub chardevs: Vec<ChardevSpec>,
    pub devices: Vec<DeviceSpec>,
    /// `-S`: start with vCPUs paused.
    pub start_paused: bool,
    /// `-machine vhost-user,socket=PATH`: where the backend listens.
    pub vhost_user_socket: Option<std::path::PathBuf>,
    /// The guest of a KVM machine.
    pub kvm: Option<crate::kvm::KvmConfig>,
}

/// What the command line asks the process to do.
#[derive(Debug)]
pub enum Action {
    Run(Box<Config>),
    Help,
    Version,
}

pub const USAGE: &str = "\
usage: vmm -kernel IMAGE [-initrd FILE] [-append CMDLINE] [-m SIZE] [-smp N] [options]
       vmm -machine none [options]
       vmm -machine vhost-user,socket=PATH -device virtio-serial -device virtserialport,... [options]

A minimal VMM with a QMP monitor and an in-process QMP proxy to a guest agent.

options (QEMU spellings; --long forms work too):
  -machine|-M TYPE          'microvm' (the KVM machine; default with -kernel; 'pc' and 'q35'
                            mean the same) or 'none' (the monitor and chardevs without a guest)
  -kernel IMAGE             bzImage or ELF vmlinux, entered at its 64-bit entry point
  -initrd FILE              initial ramdisk
  -append CMDLINE           kernel command line
  -m SIZE                   guest RAM, e.g. 512M or 2G (default 128M)
  -smp N                    number of vCPUs (default 1)
  -serial stdio|chardev:ID|file:PATH|none
                            where COM1 goes (default: none)
  -no-reboot                a guest reboot ends the VM
  -enable-kvm, -cpu host    accepted (KVM is always used)
  -machine vhost-user,socket=PATH
                            serve the virtio-serial device (device id 3) to a vhost-user frontend
                            connecting to the unix socket PATH (QEMU vhost-user-device, Cloud
                            Hypervisor, User-Mode Linux 'virtio_uml.device=PATH:3'); a
                            qmp_proxy chardev without path= then talks to the agent in that guest
  -name NAME                VM name reported by query-name
  -qmp ADDR                 QMP monitor on unix:PATH or tcp:HOST:PORT
                            [,server=on|off][,wait=on|off] (listening, no wait, by default)
  -chardev BACKEND,id=ID[,...]
                            null | socket,path=P|host=H,port=N[,server=on|off][,wait=on|off][,reconnect=S]
                            | file,path=P[,append=on] | stdio | pty | ringbuf[,size=N]
                            | qmp_proxy[,path=AGENT_SOCKET][,timeout=SECONDS][,reconnect=SECONDS]
  -device virtio-serial[,id=ID][,max_ports=N]
  -device virtserialport|virtconsole,chardev=ID[,name=NAME][,id=ID]
  -S                        start with the machine paused
  -h|--help                 this text
  -V|--version              version

Logging: RUST_LOG=info (or debug) on stderr.";

fn err(s: impl Into<String>) -> OptsError {
    OptsError(s.into())
}

fn parse_device(s: &str) -> Result<DeviceSpec, OptsError> {
    let mut o = Opts::parse(s, true)?;
    let driver = o
        .head
        .clone()
        .ok_or_else(|| err(format!("-device '{s}': the driver name comes first")))?;
    let d = match driver.as_str() {
        "virtio-serial" | "virtio-serial-device" | "virtio-serial-pci" => {
            let id = o.take_str("id")?;
            let max_ports = match o.take_str("max_ports")? {
                None => 31,
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if (1..=31).contains(&n) => n,
                    _ => {
                        return Err(err(format!(
                            "-device {driver}: option 'max_ports' must be 1..31, not '{v}'"
                        )))
                    }
                },
            };
            DeviceSpec::VirtioSerial { id, max_ports }
        }
        "virtserialport" | "virtconsole" => {
            let chardev = o
                .take_str("chardev")?
                .ok_or_else(|| err(format!("-device {driver}: option 'chardev' is required")))?;
            DeviceSpec::Port {
                console: driver == "virtconsole",
                chardev,
                name: o.take_str("name")?,
                id: o.take_str("id")?,
            }
        }
        other => {
            return Err(err(format!(
            "-device: unknown driver '{other}' (known: virtio-serial, virtserialport, virtconsole)"
        )))
        }
    };
    o.finish(&format!("-device {driver}"))?;
    Ok(d)
}

fn parse_machine(s: &str) -> Result<(MachineKind, Option<std::path::PathBuf>), OptsError> {
    let mut o = Opts::parse(s, true)?;
    let ty = match (o.head.clone(), o.take_str("type")?) {
        (Some(t), None) | (None, Some(t)) => t,
        (Some(_), Some(_)) => return Err(err("-machine: the type is given twice")),
        (None, None) => return Err(err("-machine: no machine type given")),
    };
    // Accepted for QEMU compatibility; there is nothing to accelerate without a guest.
    let _ = o.take_str("accel")?;
    let socket = o.take_str("socket")?;
    o.finish("-machine")?;
    match ty.as_str() {
        "none" if socket.is_none() => Ok((MachineKind::None, None)),
        "none" => Err(err("-machine none: option 'socket' belongs to vhost-user")),
        "microvm" | "pc" | "q35" if socket.is_none() => Ok((MachineKind::Kvm, None)),
        "vhost-user" => match socket {
            Some(p) if !p.is_empty() => Ok((MachineKind::VhostUser, Some(p.into()))),
            _ => Err(err("-machine vhost-user: option 'socket=PATH' is required")),
        },
        "help" => Err(err("-machine: supported machine types: microvm, none, vhost-user")),
        other => Err(err(format!(
            "-machine: unknown or unsupported machine type '{other}' (supported: microvm, none, vhost-user)"
        ))),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Action, OptsError> {
    let mut machine = None;
    let mut vhost_user_socket = None;
    let mut name = None;
    let mut qmp = Vec::new();
    let mut chardevs: Vec<ChardevSpec> = Vec::new();
    let mut devices = Vec::new();
    let mut start_paused = false;
    let mut kernel = None;
    let mut initrd = None;
    let mut append = None;
    let mut mem = None;
    let mut smp = None;
    let mut serial = None;
    let mut no_reboot = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let opt = a.strip_prefix("--").or_else(|| a.strip_prefix('-'));
        let Some(opt) = opt.filter(|o| !o.is_empty()) else {
            return Err(err(format!(
                "unexpected argument '{a}' (options start with '-'; see --help)"
            )));
        };
        // `-opt=value` is accepted as well as `-opt value`.
        let (opt, inline) = match opt.split_once('=') {
            Some((o, v)) => (o, Some(v.to_string())),
            None => (opt, None),
        };
        let mut value = |what: &str| -> Result<String, OptsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| err(format!("-{opt}: missing {what}"))),
            }
        };
        match opt {
            "h" | "help" => return Ok(Action::Help),
            "V" | "version" => return Ok(Action::Version),
            "machine" | "M" => {
                let (m, sock) = parse_machine(&value("machine type")?)?;
                machine = Some(m);
                vhost_user_socket = sock;
            }
            "name" => {
                let v = value("name")?;
                let mut o = Opts::parse(&v, true)?;
                let n = match (o.head.take(), o.take_str("guest")?) {
                    (Some(n), _) | (None, Some(n)) => n,
                    (None, None) => return Err(err("-name: empty name")),
                };
                // QEMU's `process=` and `debug-threads=` are accepted and ignored.
                let _ = o.take_str("process")?;
                let _ = o.take_bool("debug-threads")?;
                o.finish("-name")?;
                name = Some(n);
            }
            "qmp" => {
                let v = value("address")?;
                qmp.push(parse_socket_uri(&v).map_err(|e| err(format!("-qmp: {}", e.0)))?);
            }
            "chardev" => {
                let spec = ChardevSpec::parse(&value("chardev options")?)?;
                if chardevs.iter().any(|c| c.id == spec.id) {
                    return Err(err(format!("-chardev: duplicate chardev id '{}'", spec.id)));
                }
                chardevs.push(spec);
            }
            "device" => devices.push(parse_device(&value("device options")?)?),
            "S" => start_paused = true,
            // Display options have no meaning without a display; accepted for QEMU habits.
            "nographic" | "nodefaults" => {}
            "display" => {
                let v = value("display type")?;
                if v != "none" {
                    return Err(err(format!(
                        "-display: only 'none' is supported, not '{v}'"
                    )));
                }
            }
            "kernel" => kernel = Some(std::path::PathBuf::from(value("kernel image")?)),
            "initrd" => initrd = Some(std::path::PathBuf::from(value("initrd file")?)),
            "append" => append = Some(value("command line")?),
            "m" => mem = Some(crate::kvm::parse_mem(&value("memory size")?).map_err(err)?),
            "smp" => smp = Some(crate::kvm::parse_smp(&value("CPU count")?).map_err(err)?),
            "serial" => {
                serial =
                    Some(crate::kvm::SerialSpec::parse(&value("serial backend")?).map_err(err)?)
            }
            "no-reboot" => no_reboot = true,
            "enable-kvm" => {}
            "cpu" => {
                let v = value("CPU model")?;
                if v != "host" && v != "max" {
                    return Err(err(format!("-cpu: only 'host' is supported, not '{v}'")));
                }
            }
            other => return Err(err(format!("unknown option '-{other}' (see --help)"))),
        }
    }
    let machine = match (machine, &kernel) {
        (Some(m), _) => m,
        (None, Some(_)) => MachineKind::Kvm,
        (None, None) => {
            return Err(err(
                "-kernel: required (or '-machine none' for the monitor without a guest)",
            ))
        }
    };
    let kvm = match machine {
        MachineKind::Kvm => Some(crate::kvm::KvmConfig {
            kernel: kernel.ok_or_else(|| err("-kernel: required to boot a guest"))?,
            initrd,
            append: append.unwrap_or_default(),
            mem_size: mem.unwrap_or(crate::kvm::DEFAULT_MEM),
            vcpus: smp.unwrap_or(1),
            serial: serial.unwrap_or(crate::kvm::SerialSpec::None),
            no_reboot,
        }),
        _ => {
            for (given, o) in [
                (kernel.is_some(), "kernel"),
                (initrd.is_some(), "initrd"),
                (append.is_some(), "append"),
                (mem.is_some(), "m"),
                (smp.is_some(), "smp"),
                (serial.is_some(), "serial"),
            ] {
                if given {
                    return Err(err(format!(
                        "-{o}: only the KVM machine (-machine microvm) boots a guest"
                    )));
                }
            }
            None
        }
    };
    let cfg = Config {
        machine,
        name,
        qmp,
        chardevs,
        devices,
        start_paused,
        vhost_user_socket,
        kvm,
    };
    validate(&cfg)?;
    Ok(Action::Run(Box::new(cfg)))
}

fn validate(cfg: &Config) -> Result<(), OptsError> {
    let mut names = Vec::new();
    for d in &cfg.devices {
        if let DeviceSpec::Port { chardev, name, .. } = d {
            if !cfg.chardevs.iter().any(|c| &c.id == chardev) {
                return Err(err(format!("-device: chardev '{chardev}' does not exist")));
            }
            if let Some(n) = name {
                if names.contains(n) {
                    return Err(err(format!("-device: two ports are named '{n}'")));
                }
                names.push(n.clone());
            }
        }
    }
    if !cfg.devices.is_empty() && cfg.machine == MachineKind::None {
        return Err(err(
            "-device: '-machine none' has no bus for devices; virtio-serial needs a KVM machine",
        ));
    }
    if cfg.machine == MachineKind::VhostUser {
        let serials = cfg
            .devices
            .iter()
            .filter(|d| matches!(d, DeviceSpec::VirtioSerial { .. }))
            .count();
        if serials != 1 {
            return Err(err(
                "-machine vhost-user: give exactly one '-device virtio-serial' (the device served)",
            ));
        }
    }
    if let Some(crate::kvm::SerialSpec::Chardev(id)) = cfg.kvm.as_ref().map(|k| &k.serial) {
        if !cfg.chardevs.iter().any(|c| &c.id == id) {
            return Err(err(format!("-serial: chardev '{id}' does not exist")));
        }
    }
    for c in &cfg.chardevs {
        let on_port = cfg
            .devices
            .iter()
            .any(|d| matches!(d, DeviceSpec::Port { chardev, .. } if *chardev == c.id));
        if on_port && matches!(c.backend, chardev::Backend::QmpProxy { path: Some(_), .. }) {
            return Err(err(format!(
                "-chardev qmp_proxy,id={}: a port's agent is in the guest; drop path=",
                c.id
            )));
        }
        let users = cfg
            .devices
            .iter()
            .filter(|d| matches!(d, DeviceSpec::Port { chardev, .. } if *chardev == c.id))
            .count();
        if users > 1 {
            return Err(err(format!(
                "-device: chardev '{}' is used by {users} ports",
                c.id
            )));
        }
        if cfg.machine == MachineKind::VhostUser && on_port {
            continue;
        }
        if let chardev::Backend::QmpProxy { path: None, .. } = c.backend {
            if cfg.machine == MachineKind::Kvm {
                if on_port {
                    continue;
                }
                return Err(err(format!(
                    "-chardev qmp_proxy,id={}: no virtserialport uses it (add -device virtserialport,chardev={},name=org.qemu.guest_agent.0)",
                    c.id, c.id
                )));
            }
            return Err(err(format!(
                "-chardev qmp_proxy,id={}: without a guest, give path=AGENT_SOCKET (a host-side agent)",
                c.id
            )));
        }
    }
    let proxies = cfg
        .chardevs
        .iter()
        .filter(|c| matches!(c.backend, chardev::Backend::QmpProxy { .. }))
        .count();
    if proxies > 1 {
        return Err(err(
            "-chardev qmp_proxy: only one agent channel per VM is supported",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Action, OptsError> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn seed_command_line() {
        let a = p("-machine none -name test -qmp unix:/tmp/qmp.sock,server=on,wait=off -chardev qmp_proxy,id=qga0,path=/tmp/agent.sock").unwrap();
        let Action::Run(c) = a else { panic!() };
        assert_eq!(c.machine, MachineKind::None);
        assert_eq!(c.name.as_deref(), Some("test"));
        assert_eq!(c.qmp.len(), 1);
        assert_eq!(c.chardevs[0].id, "qga0");
    }

    #[test]
    fn long_spellings_and_inline_values() {
        assert!(matches!(
            p("--machine=none --name=x").unwrap(),
            Action::Run(_)
        ));
    }

    #[test]
    fn vhost_user_machine() {
        let a = p("-machine vhost-user,socket=/tmp/s.sock -chardev qmp_proxy,id=qga0 -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=port0").unwrap();
        let Action::Run(c) = a else { panic!() };
        assert_eq!(c.machine, MachineKind::VhostUser);
        assert_eq!(
            c.vhost_user_socket.as_deref(),
            Some(std::path::Path::new("/tmp/s.sock"))
        );
        assert!(p("-machine vhost-user").unwrap_err().0.contains("socket="));
        assert!(p("-machine none,socket=/x")
            .unwrap_err()
            .0
            .contains("socket"));
        assert!(p(
            "-machine vhost-user,socket=/s -chardev null,id=a -device virtserialport,chardev=a"
        )
        .unwrap_err()
        .0
        .contains("virtio-serial"));
        // A qmp_proxy not on a port still needs path=; one on a port must not have it.
        assert!(
            p("-machine vhost-user,socket=/s -device virtio-serial -chardev qmp_proxy,id=q")
                .unwrap_err()
                .0
                .contains("path=")
        );
        assert!(p("-machine vhost-user,socket=/s -device virtio-serial -chardev qmp_proxy,id=q,path=/a -device virtserialport,chardev=q")
            .unwrap_err()
            .0
            .contains("drop path="));
        assert!(p("-machine vhost-user,socket=/s -device virtio-serial -chardev null,id=a -device virtserialport,chardev=a -device virtconsole,chardev=a")
            .unwrap_err()
            .0
            .contains("2 ports"));
    }

    #[test]
    fn errors_name_the_option() {
        assert!(p("-machine isapc").unwrap_err().0.contains("-machine"));
        assert!(p("-machine pc").unwrap_err().0.contains("-kernel"));
        assert!(p("-kernel k -m lots").unwrap_err().0.contains("-m"));
        assert!(p("-kernel k -smp 0").unwrap_err().0.contains("-smp"));
        assert!(p("-kernel k -serial chardev:nope")
            .unwrap_err()
            .0
            .contains("'nope'"));
        assert!(p("-kernel k -device virtio-blk")
            .unwrap_err()
            .0
            .contains("virtio-blk"));
        assert!(p("-kernel k -chardev null,id=a -chardev null,id=b -device virtio-serial -device virtserialport,chardev=a,name=n -device virtserialport,chardev=b,name=n")
            .unwrap_err()
            .0
            .contains("two ports"));
        assert!(p("-kernel k -chardev qmp_proxy,id=q")
            .unwrap_err()
            .0
            .contains("virtserialport"));
        assert!(matches!(
            p("-kernel k -m 512M -smp 2 -chardev qmp_proxy,id=qga0 -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 -serial stdio").unwrap(),
            Action::Run(_)
        ));
        assert!(p("-machine none -bogus").unwrap_err().0.contains("-bogus"));
        assert!(p("-machine none -qmp").unwrap_err().0.contains("-qmp"));
        assert!(p("-machine none -qmp unix:/x,bad=1")
            .unwrap_err()
            .0
            .contains("'bad'"));
        assert!(p("-name x").unwrap_err().0.contains("-machine"));
        assert!(p("-machine none -chardev qmp_proxy,id=q")
            .unwrap_err()
            .0
            .contains("path="));
        assert!(p("-machine none -chardev null,id=a -chardev null,id=a")
            .unwrap_err()
            .0
            .contains("duplicate"));
        assert!(p("-machine none -device virtserialport,chardev=nope")
            .unwrap_err()
            .0
            .contains("'nope'"));
        assert!(p("-machine none -kernel /x")
            .unwrap_err()
            .0
            .contains("-kernel"));
    }
}
