//! The KVM machine: a VM with an in-kernel irqchip and PIT, guest RAM, vCPU threads, a COM1
//! UART, an i8042 (for the reset line), ACPI power management, and the virtio-serial device on
//! virtio-mmio, described to the guest in ACPI tables.
//!
//! Threads: each vCPU runs on its own thread and dispatches port / MMIO exits to the buses;
//! everything else (queue notifications through ioeventfds, chardevs, the QMP monitor, machine
//! control) runs on the event-loop thread. Device interrupts go to KVM through irqfds.

pub mod acpi;
pub mod boot;
pub mod memory;
pub mod vcpu;

mod machine;
mod serial;
mod wiring;

pub use machine::{KvmMachine, PortWiring, Vm};
pub use wiring::HubWiring;

use std::path::PathBuf;

/// Where the COM1 UART goes (`-serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    /// The VMM's stdin/stdout.
    Stdio,
    /// A `-chardev` by id.
    Chardev(String),
    /// Output appended to a file.
    File(PathBuf),
    /// No UART output (the UART is still there).
    None,
}

impl SerialSpec {
    /// Parses `-serial` values: `stdio`, `chardev:ID`, `file:PATH`, `none`, `null`.
    pub fn parse(s: &str) -> Result<SerialSpec, String> {
        Ok(match s {
            "stdio" => SerialSpec::Stdio,
            "none" | "null" => SerialSpec::None,
            _ => {
                if let Some(id) = s.strip_prefix("chardev:").filter(|x| !x.is_empty()) {
                    SerialSpec::Chardev(id.to_string())
                } else if let Some(p) = s.strip_prefix("file:").filter(|x| !x.is_empty()) {
                    SerialSpec::File(PathBuf::from(p))
                } else {
                    return Err(format!(
                        "-serial: unsupported value '{s}' (stdio, chardev:ID, file:PATH, none)"
                    ));
                }
            }
        })
    }
}

/// What the command line asked of the KVM machine.
#[derive(Debug, Clone)]
pub struct KvmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    pub vcpus: u8,
    pub serial: SerialSpec,
    /// `-no-reboot`: a guest reset ends the VM instead.
    pub no_reboot: bool,
}

/// Default guest RAM (QEMU's).
pub const DEFAULT_MEM: u64 = 128 << 20;
/// Most vCPUs (APIC ids fit in the MADT's u8 and below the IOAPIC's id).
pub const MAX_VCPUS: u8 = 254;

/// Parses `-m` values: a number with an optional `K`, `M`, `G` suffix (MiB without one).
pub fn parse_mem(s: &str) -> Result<u64, String> {
    let s = s.strip_prefix("size=").unwrap_or(s);
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        Some((i, 't' | 'T')) => (&s[..i], 40),
        _ => (s, 20),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("-m: invalid size '{s}' (e.g. 512M, 2G)"))
}

/// Parses `-smp` values: `N` or `cpus=N` (other QEMU topology keys are accepted and ignored).
pub fn parse_smp(s: &str) -> Result<u8, String> {
    let mut n = None;
    for part in s.split(',') {
        let v = match part.split_once('=') {
            None => part,
            Some(("cpus", v)) => v,
            Some(("sockets" | "cores" | "threads" | "maxcpus" | "dies", _)) => continue,
            Some((k, _)) => return Err(format!("-smp: unknown option '{k}'")),
        };
        n = Some(
            v.parse::<u8>()
                .ok()
                .filter(|&c| (1..=MAX_VCPUS).contains(&c))
                .ok_or_else(|| format!("-smp: '{v}' is not a CPU count in 1..{MAX_VCPUS}"))?,
        );
    }
    n.ok_or_else(|| "-smp: no CPU count given".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem("512M").unwrap(), 512 << 20);
        assert_eq!(parse_mem("2G").unwrap(), 2 << 30);
        assert_eq!(parse_mem("256").unwrap(), 256 << 20);
        assert!(parse_mem("lots").is_err());
        assert!(parse_mem("0").is_err());
        assert!(parse_mem("99999999999999G").is_err());
    }

    #[test]
    fn smp_and_serial() {
        assert_eq!(parse_smp("2").unwrap(), 2);
        assert_eq!(parse_smp("cpus=4,sockets=1").unwrap(), 4);
        assert!(parse_smp("0").is_err());
        assert!(parse_smp("foo=1").is_err());
        assert_eq!(SerialSpec::parse("stdio").unwrap(), SerialSpec::Stdio);
        assert_eq!(
            SerialSpec::parse("chardev:s0").unwrap(),
            SerialSpec::Chardev("s0".into())
        );
        assert!(SerialSpec::parse("tcp:1").is_err());
    }
}
