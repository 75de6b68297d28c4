//! The KVM machine on this host's KVM, with the tiny test guest (tests/tinyguest, built here
//! from source with gcc and ld): long-mode and PVH boot, SMP bring-up (INIT/SIPI), serial
//! output, ACPI discovery of the virtio-mmio device, the virtio-serial handshake up to PORT_OPEN
//! seen by a QMP client, machine control (stop/cont/system_reset/quit), guest power-off; and
//! one-line errors for bad input.
//!
//! Without a usable /dev/kvm (or without gcc/ld) each test prints "skipped: <reason>".

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const AGENT_PORT: &str = "org.qemu.guest_agent.0";
/// A virtio-serial port on a null chardev (the serial tests need the device, not its data).
const NULL_PORT: [&str; 6] = [
    "-chardev",
    "null,id=c0",
    "-device",
    "virtio-serial",
    "-device",
    "virtserialport,chardev=c0,name=test",
];

/// Builds the tiny guest once; Err(reason) when it cannot be built here.
fn tiny_guest() -> Result<PathBuf, String> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tinyguest");
            let o = Command::new(root.join("tests/tinyguest/build.sh"))
                .arg(&out)
                .output()
                .map_err(|e| format!("tests/tinyguest/build.sh: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "tests/tinyguest/build.sh failed (gcc and ld needed): {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Ok(out.join("tinyguest.elf"))
        })
        .clone()
}

fn prerequisites() -> Option<PathBuf> {
    match kvm_usable().and_then(|()| tiny_guest()) {
        Ok(p) => Some(p),
        Err(e) => {
            skipped(e);
            None
        }
    }
}

/// A KVM machine with the agent port and its serial output in a file.
struct KvmVm {
    vmm: Vmm,
    serial: PathBuf,
}

/// Starts the machine with `-qmp ...,wait=on`: the guest runs once a client connected.
fn start_vm(dir: &Path, kernel: &Path, append: &str, extra: &[&str]) -> KvmVm {
    let serial = dir.join("serial.log");
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        append.into(),
        "-m".into(),
        "64M".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-chardev".into(),
        "qmp_proxy,id=qga0".into(),
        "-device".into(),
        "virtio-serial".into(),
        "-device".into(),
        format!("virtserialport,chardev=qga0,name={AGENT_PORT},id=agentport"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    KvmVm {
        vmm: Vmm::launch(dir, &args, true, &[]),
        serial,
    }
}

impl KvmVm {
    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the serial output contains `needle` `count` times.
    fn wait_serial(&self, needle: &str, count: usize, limit: Duration) {
        let t = Instant::now();
        while self.serial_text().matches(needle).count() < count {
            assert!(
                t.elapsed() < limit,
                "no '{needle}' x{count} on the serial port within {limit:?}; serial:\n{}\nvmm log:\n{}",
                self.serial_text(),
                self.vmm.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_port_change(c: &mut qmp::client::QmpClient, open: bool) -> Value {
    loop {
        let ev = c
            .wait_event("VSERPORT_CHANGE", Duration::from_secs(60))
            .expect("VSERPORT_CHANGE");
        if ev["data"]["open"] == json!(open) {
            return ev;
        }
    }
}

/// Connects to the machine (started with `wait=on`, so the guest runs now), waits for the
/// guest to open the agent port (VSERPORT_CHANGE for `agentport`, then on its serial port);
/// returns the client and the serial output so far.
fn boot_to_port_open(vm: &KvmVm) -> (qmp::client::QmpClient, String) {
    let mut c = vm.vmm.client();
    let ev = wait_port_change(&mut c, true);
    assert_eq!(ev["data"]["id"], "agentport");
    vm.wait_serial("tinyguest: port 1 open", 1, Duration::from_secs(30));
    (c, vm.serial_text())
}

/// system_reset: the port closes, the guest boots again (boot number `boot`) and re-opens it;
/// returns the RESET event.
fn reset_to_port_open(c: &mut qmp::client::QmpClient, vm: &KvmVm, boot: usize) -> Value {
    c.execute("system_reset", Value::Null).unwrap().unwrap();
    let ev = c.wait_event("RESET", Duration::from_secs(5)).unwrap();
    wait_port_change(c, false);
    wait_port_change(c, true);
    vm.wait_serial("tinyguest: port 1 open", boot, Duration::from_secs(30));
    ev
}

/// system_powerdown: the guest sees the power button and powers off; the vmm exits with 0.
fn power_button_powers_off(c: &mut qmp::client::QmpClient, vm: &mut KvmVm) {
    c.execute("system_powerdown", Value::Null).unwrap().unwrap();
    c.wait_event("POWERDOWN", Duration::from_secs(5)).unwrap();
    let ev = c.wait_event("SHUTDOWN", Duration::from_secs(30)).unwrap();
    assert_eq!(
        ev["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert!(vm.vmm.proc.wait(Duration::from_secs(10)).success());
}

/// Each of `lines` is in `serial`.
fn assert_lines(serial: &str, lines: &[&str]) {
    for line in lines {
        assert!(serial.contains(line), "missing '{line}' in:\n{serial}");
    }
}

fn status(c: &mut qmp::client::QmpClient) -> String {
    c.execute("query-status", Value::Null).unwrap().unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn tiny_guest_boots_finds_the_device_and_opens_the_agent_port() {
    let Some(kernel) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = start_vm(dir.path(), &kernel, "console=ttyS0", &["-smp", "2"]);
    let (mut c, serial) = boot_to_port_open(&vm);
    assert_lines(
        &serial,
        &[
            "tinyguest: hello from 64-bit long mode",
            "tinyguest: RSDP at 0xe0000 (boot params say 0xe0000)",
            "(2 CPUs)",
            // SMP: the BSP starts the AP through the LAPIC (INIT, SIPI); the AP itself prints.
            "tinyguest: starting AP 1 (INIT, SIPI vector 0x3)\r\ntinyguest: AP up in real mode, APIC id 0x1\r\n",
            "tinyguest: AP with APIC id 1 started",
            "tinyguest: virtio-mmio (LNRO0005) at 0xd0000000 size 0x200 gsi 5 edge",
            "virtio_mmio.device=512@0xd0000000:5",
            "tinyguest: <- DEVICE_ADD id=1 value=1",
            &format!("tinyguest: <- PORT_NAME id=1 value=1 name={AGENT_PORT}"),
            "tinyguest: IOAPIC 0xfec00000 pin 5 -> vector 0x30, LAPIC 0xfee00000",
            "tinyguest: interrupt status 0x1, ",
        ],
    );
    // The device's edges reached the vCPU through irqfd -> IOAPIC -> LAPIC (the guest sleeps in
    // hlt until they come), and nothing else was delivered.
    let irqs: u32 = serial
        .split("interrupt status 0x1, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(irqs >= 1, "{serial}");
    assert!(
        serial.contains(" interrupts on vector 0x30, 0 others"),
        "{serial}"
    );
    assert!(!serial.contains("FAIL"), "{serial}");
    assert_eq!(status(&mut c), "running");
    assert_eq!(
        c.execute("query-kvm", Value::Null).unwrap().unwrap(),
        json!({"enabled": true, "present": true})
    );

    // stop / cont: vCPUs paused and resumed.
    c.execute("stop", Value::Null).unwrap().unwrap();
    c.wait_event("STOP", Duration::from_secs(5)).unwrap();
    assert_eq!(status(&mut c), "paused");
    c.execute("cont", Value::Null).unwrap().unwrap();
    c.wait_event("RESUME", Duration::from_secs(5)).unwrap();
    assert_eq!(status(&mut c), "running");

    // The human monitor: the same machine control, and `cpu-index` names one of the 2 vCPUs.
    let mut hmp = |line: &str, cpu: u64| {
        c.execute(
            "human-monitor-command",
            json!({"command-line": line, "cpu-index": cpu}),
        )
        .unwrap()
    };
    assert_eq!(hmp("stop", 1).unwrap(), "");
    assert_eq!(hmp("info status", 0).unwrap(), "VM status: paused\r\n");
    assert_eq!(hmp("c", 1).unwrap(), "");
    assert_eq!(hmp("info kvm", 0).unwrap(), "kvm support: enabled\r\n");
    let help = hmp("help", 0).unwrap();
    let help = help.as_str().unwrap();
    assert!(
        help.contains("system_reset  -- reset the system\r\n"),
        "{help}"
    );
    assert!(
        help.contains("system_powerdown  -- send system power down event\r\n"),
        "{help}"
    );
    assert_eq!(
        hmp("info status", 2).unwrap_err().desc,
        "Parameter 'cpu-index' expects a CPU number"
    );
    c.wait_event("STOP", Duration::from_secs(5)).unwrap();
    c.wait_event("RESUME", Duration::from_secs(5)).unwrap();
    assert_eq!(status(&mut c), "running");

    // system_reset: the guest boots again and re-opens its port.
    let ev = reset_to_port_open(&mut c, &vm, 2);
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    vm.wait_serial(
        "tinyguest: hello from 64-bit long mode",
        2,
        Duration::from_secs(1),
    );
    // The reset put the AP back in wait-for-SIPI: the new boot starts it again.
    vm.wait_serial(
        "tinyguest: AP up in real mode, APIC id 0x1",
        2,
        Duration::from_secs(1),
    );

    // A reset while paused keeps the VM paused until cont.
    c.execute("stop", Value::Null).unwrap().unwrap();
    c.execute("system_reset", Value::Null).unwrap().unwrap();
    c.wait_event("RESET", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        vm.serial_text()
            .matches("tinyguest: hello from 64-bit long mode")
            .count(),
        2
    );
    assert_eq!(status(&mut c), "paused");
    c.execute("cont", Value::Null).unwrap().unwrap();
    vm.wait_serial("tinyguest: port 1 open", 3, Duration::from_secs(30));
    vm.wait_serial(
        "tinyguest: AP up in real mode, APIC id 0x1",
        3,
        Duration::from_secs(1),
    );

    c.execute("quit", Value::Null).unwrap().unwrap();
    let ev = c.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap();
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert!(vm.vmm.proc.wait(Duration::from_secs(10)).success());
}

/// The same guest as an ELF kernel and as a bzImage (both entered at their 64-bit entry point)
/// boots, opens its port and powers off.
#[test]
fn guest_power_off_ends_the_vm_elf_and_bzimage() {
    let Some(elf) = prerequisites() else { return };
    for kernel in [elf.clone(), elf.with_extension("bzImage")] {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = start_vm(
            dir.path(),
            &kernel,
            "console=ttyS0 tinyguest.poweroff",
            &["-smp", "1"],
        );
        let mut c = vm.vmm.client();
        wait_port_change(&mut c, true);
        let ev = c.wait_event("SHUTDOWN", Duration::from_secs(60)).unwrap();
        assert_eq!(
            ev["data"],
            json!({"guest": true, "reason": "guest-shutdown"})
        );
        assert!(vm.vmm.proc.wait(Duration::from_secs(10)).success());
        let serial = vm.serial_text();
        for line in [
            "tinyguest: hello from 64-bit long mode",
            "tinyguest: port 1 open",
            "tinyguest: powering off through the sleep control register at 0x600",
        ] {
            assert!(serial.contains(line), "{}: {serial}", kernel.display());
        }
        // Neither carries a PVH note: both take the 64-bit entry.
        assert!(!serial.contains("PVH entry"), "{serial}");
        // One vCPU: no AP to start.
        assert!(!serial.contains("starting AP"), "{serial}");
    }
}

/// The tiny guest built as a PVH ELF (XEN_ELFNOTE_PHYS32_ENTRY note) is entered through the PVH
/// boot protocol: 32-bit protected mode with paging off at the note's entry, %ebx = the
/// hvm_start_info, whose command line, memory map, initrd module and RSDP it reads; it then
/// sets up long mode itself and reaches the same checkpoints (ACPI discovery, the device
/// handshake, PORT_OPEN seen as VSERPORT_CHANGE); system_reset enters it through PVH again and
/// the power button powers it off.
#[test]
fn tiny_guest_boots_through_pvh() {
    let Some(elf) = prerequisites() else { return };
    let pvh = elf.with_file_name("tinyguest-pvh.elf");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0x5au8; 12345]).unwrap();
    let mut vm = start_vm(
        dir.path(),
        &pvh,
        "console=ttyS0",
        &["-smp", "2", "-initrd", initrd.to_str().unwrap()],
    );
    let (mut c, serial) = boot_to_port_open(&vm);
    assert_lines(
        &serial,
        &[
            "tinyguest: PVH entry: cs=0x28 cr0=0x11 efer=0x0, start_info at 0x6000",
            "tinyguest: hvm_start_info version 1, 1 modules (module 0: 12345 bytes at ",
            "tinyguest: hello from 64-bit long mode",
            "tinyguest: command line: console=ttyS0",
            "tinyguest: e820: 3 entries, 63 MiB RAM",
            "tinyguest: RSDP at 0xe0000 (start_info says 0xe0000)",
            "(2 CPUs)",
            "tinyguest: AP up in real mode, APIC id 0x1",
            "tinyguest: virtio-mmio (LNRO0005) at 0xd0000000 size 0x200 gsi 5 edge",
            &format!("tinyguest: <- PORT_NAME id=1 value=1 name={AGENT_PORT}"),
            "tinyguest: interrupt status 0x1, ",
            " interrupts on vector 0x30, 0 others",
        ],
    );
    assert!(!serial.contains("FAIL"), "{serial}");

    vm.wait_serial("tinyguest: serial input on", 1, Duration::from_secs(30));
    reset_to_port_open(&mut c, &vm, 2);
    vm.wait_serial(
        "tinyguest: PVH entry: cs=0x28 cr0=0x11 ",
        2,
        Duration::from_secs(1),
    );

    vm.wait_serial("tinyguest: serial input on", 2, Duration::from_secs(30));
    power_button_powers_off(&mut c, &mut vm);
    assert!(!vm.serial_text().contains("FAIL"), "{}", vm.serial_text());
}

/// Runs vmm with `args`; returns (exit code, stderr).
fn run_vmm(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_one_error_line(args: &[&str], needle: &str) {
    let (code, err) = run_vmm(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    assert!(lines[0].starts_with("vmm: "), "{err}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: '{needle}' not in: {err}"
    );
}

#[test]
fn bad_input_gives_one_clear_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(d("garbage"), vec![0x5au8; 4096]).unwrap();
    let mut bz = vec![0u8; 4096];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x1f1] = 0x40; // setup_sects: beyond the end of the file
    std::fs::write(d("bzimage"), bz).unwrap();
    let port = |cd: &str, name: &str| format!("virtserialport,chardev={cd},name={name}");
    // Command-line errors need no KVM.
    assert_one_error_line(
        &["-kernel", "k", "-device", "e1000"],
        "unknown driver 'e1000'",
    );
    assert_one_error_line(
        &[
            "-kernel",
            "k",
            "-device",
            "virtio-serial",
            "-device",
            &port("nope", "a"),
        ],
        "chardev 'nope' does not exist",
    );
    assert_one_error_line(
        &[
            "-kernel",
            "k",
            "-chardev",
            "null,id=a",
            "-chardev",
            "null,id=b",
            "-device",
            "virtio-serial",
            "-device",
            &port("a", "x"),
            "-device",
            &port("b", "x"),
        ],
        "two ports are named 'x'",
    );
    assert_one_error_line(&["-kernel", "k", "-m", "8M"], "too small");

    if let Err(e) = kvm_usable() {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("skipped (kernel and initrd checks): {e}\n"),
        );
        return;
    }
    assert_one_error_line(&["-kernel", &d("missing")], "No such file");
    assert_one_error_line(&["-kernel", &d("garbage")], "not a kernel");
    assert_one_error_line(&["-kernel", &d("bzimage")], "bzImage");
    if let Ok(k) = tiny_guest() {
        let big = std::fs::File::create(d("big.cpio")).unwrap();
        big.set_len(40 << 20).unwrap();
        let k = k.display().to_string();
        assert_one_error_line(
            &["-kernel", &k, "-m", "32M", "-initrd", &d("big.cpio")],
            "too big for guest memory",
        );
        assert_one_error_line(&["-kernel", &k, "-initrd", &d("missing")], "-initrd");
    }
}

#[test]
fn guest_reboot_resets_the_vm_or_ends_it_with_no_reboot() {
    let Some(kernel) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vm = start_vm(dir.path(), &kernel, "tinyguest.reboot", &[]);
    let mut c = vm.vmm.client();
    for _ in 0..2 {
        let ev = c
            .wait_event("RESET", Duration::from_secs(60))
            .unwrap_or_else(|e| {
                panic!(
                    "no RESET: {e}; serial:\n{}\nvmm log:\n{}",
                    vm.serial_text(),
                    vm.vmm.log_text()
                )
            });
        assert_eq!(ev["data"], json!({"guest": true, "reason": "guest-reset"}));
    }
    vm.wait_serial(
        "tinyguest: hello from 64-bit long mode",
        3,
        Duration::from_secs(30),
    );
    assert_eq!(status(&mut c), "running");
    c.execute("quit", Value::Null).unwrap().unwrap();
    drop(vm);

    let dir = tempfile::tempdir().unwrap();
    let mut vm = start_vm(dir.path(), &kernel, "tinyguest.reboot", &["-no-reboot"]);
    let mut c = vm.vmm.client();
    let ev = c.wait_event("SHUTDOWN", Duration::from_secs(60)).unwrap();
    assert_eq!(ev["data"], json!({"guest": true, "reason": "guest-reset"}));
    assert!(vm.vmm.proc.wait(Duration::from_secs(10)).success());
    assert_eq!(
        vm.serial_text()
            .matches("tinyguest: hello from 64-bit long mode")
            .count(),
        1
    );
}

#[test]
fn serial_chardev_carries_output_and_input_with_interrupts() {
    use std::io::{Read, Write};
    let Some(kernel) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("serial.sock");
    let _vm = spawn_vmm(
        [
            "-kernel",
            &kernel.display().to_string(),
            "-chardev",
            &format!("socket,id=ser0,path={},server=on,wait=on", sock.display()),
            "-serial",
            "chardev:ser0",
        ]
        .iter()
        .chain(&NULL_PORT),
        &dir.path().join("vmm.log"),
        &[&sock],
    );
    // The socket file appears at bind(), a moment before listen(): retry briefly.
    let t = Instant::now();
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("serial socket connect: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = String::new();
    let read_until =
        |s: &mut std::os::unix::net::UnixStream, out: &mut String, done: &dyn Fn(&str) -> bool| {
            let mut buf = [0u8; 4096];
            while !done(out) {
                let n = s
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("{e}; serial so far:\n{out}"));
                assert!(n > 0, "serial closed; so far:\n{out}");
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
    read_until(&mut s, &mut out, &|o| {
        o.contains("tinyguest: serial input on")
    });
    s.write_all(b"first line\r\n").unwrap();
    read_until(&mut s, &mut out, &|o| {
        o.contains("tinyguest: serial line 'first line' (")
    });
    std::thread::sleep(Duration::from_millis(200));
    // More than the UART's 64-byte FIFO at once: the rest waits in the chardev until the guest
    // has read the FIFO, nothing is lost.
    let long: String = (0..70).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    s.write_all(format!("{long}\n").as_bytes()).unwrap();
    let echo = format!("tinyguest: serial line '{long}' (");
    let tail = |o: &str| o.find(&echo).map(|i| o[i + echo.len()..].to_string());
    read_until(&mut s, &mut out, &|o| {
        tail(o).is_some_and(|t| t.contains("serial interrupts)"))
    });
    // The guest was asleep in hlt when this line came: only COM1's interrupt (irqfd, GSI 4,
    // IOAPIC) could wake it. (The first line may have been read before the guest slept.)
    let n: u32 = tail(&out)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 1, "{out}");
}

#[test]
fn serial_stdio_carries_output_and_input() {
    use std::io::{BufRead, BufReader, Write};
    let Some(kernel) = prerequisites() else {
        return;
    };
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["-kernel", &kernel.display().to_string(), "-serial", "stdio"])
        .args(NULL_PORT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut vm = Proc { child, name: "vmm" };
    let mut stdin = vm.child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = vm.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |needle: &str| loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no '{needle}' on stdout"));
        if l.contains(needle) {
            return l;
        }
    };
    wait_line("tinyguest: serial input on");
    stdin.write_all(b"typed on stdin\n").unwrap();
    stdin.flush().unwrap();
    wait_line("tinyguest: serial line 'typed on stdin' (");
    vm.kill();
}

#[test]
fn system_powerdown_presses_the_acpi_power_button() {
    let Some(kernel) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = start_vm(dir.path(), &kernel, "console=ttyS0", &[]);
    let mut c = vm.vmm.client();
    // The guest routes the GED's interrupt (found in the DSDT) before it takes serial input.
    vm.wait_serial("tinyguest: serial input on", 1, Duration::from_secs(30));
    assert!(vm
        .serial_text()
        .contains("tinyguest: power button: GED (ACPI0013) gsi 10"));
    power_button_powers_off(&mut c, &mut vm);
    assert!(vm.serial_text().contains("tinyguest: power button pressed"));
}

#[test]
fn start_paused_runs_nothing_until_cont() {
    let Some(kernel) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vm = start_vm(dir.path(), &kernel, "console=ttyS0", &["-S"]);
    let mut c = vm.vmm.client();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut c), "prelaunch");
    assert_eq!(vm.serial_text(), "");
    c.execute("cont", Value::Null).unwrap().unwrap();
    c.wait_event("RESUME", Duration::from_secs(5)).unwrap();
    wait_port_change(&mut c, true);
    assert_eq!(status(&mut c), "running");
    vm.wait_serial("tinyguest: port 1 open", 1, Duration::from_secs(30));
    c.execute("quit", Value::Null).unwrap().unwrap();
}

/// The PVH build is a real PVH kernel, not one only this VMM understands: QEMU's own PVH loader
/// (`-kernel` with the ELF note, `-M microvm`) boots it to the same checkpoints, the guest reading
/// QEMU's start_info, ACPI tables and virtio-mmio device (level-triggered there). Skipped without
/// `qemu-system-x86_64`.
#[test]
fn the_pvh_tiny_guest_also_boots_on_qemu() {
    let Some(elf) = prerequisites() else { return };
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        skipped(format_args!("{qemu} not found"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let log = dir.path().join("qemu.log");
    let child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm,acpi=on,ioapic2=off",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-m",
            "64M",
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
            "-kernel",
            elf.with_file_name("tinyguest-pvh.elf").to_str().unwrap(),
            "-append",
            "console=ttyS0",
            "-device",
            "virtio-serial-device",
            "-chardev",
            "null,id=c0",
            "-device",
            &format!("virtserialport,chardev=c0,name={AGENT_PORT}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start qemu");
    let mut proc = Proc {
        child,
        name: "qemu",
    };
    let text = || std::fs::read_to_string(&serial).unwrap_or_default();
    let t = Instant::now();
    while !text().contains("tinyguest: port 1 open") && !text().contains("FAIL") {
        let exited = proc.child.try_wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(60) && exited.is_none(),
            "QEMU ({exited:?}): no port open:\n{}\nQEMU's stderr:\n{}",
            text(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proc.kill();
    let serial = text();
    assert_lines(
        &serial,
        &[
            "tinyguest: PVH entry: cs=",
            " cr0=0x11 efer=0x0, start_info at ",
            "tinyguest: hello from 64-bit long mode",
            " (start_info says ",
            "(2 CPUs)",
            "tinyguest: AP up in real mode, APIC id 0x1",
            &format!("tinyguest: <- PORT_NAME id=1 value=1 name={AGENT_PORT}"),
            "tinyguest: port 1 open",
        ],
    );
    assert!(!serial.contains("FAIL"), "{serial}");
}
