//! The CI guest image (Debian's cloud kernel + busybox initramfs with the agent, built by
//! tests/guest-image/build.sh) booted under the KVM machine, driven over the monitor socket:
//! guest-ping, guest-info, guest-exec, a file round trip, then system_powerdown until SHUTDOWN.
//!
//! It needs KVM with hardware virtualization (kvm_intel or kvm_amd loaded): on hosts whose KVM
//! emulates every guest instruction, Linux does not boot in useful time. Elsewhere it prints
//! "skipped: <reason>". The image comes from $VIRTAGENT_GUEST_IMAGE or .cache/guest (built on
//! demand when tests/guest-image/build.sh exists).

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn hardware_kvm() -> Result<(), String> {
    if !["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists())
    {
        return Err(
            "KVM without hardware virtualization (neither kvm_intel nor kvm_amd is loaded)".into(),
        );
    }
    kvm_usable()
}

fn guest_image() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("VIRTAGENT_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/guest"));
    let ready = |d: &Path| d.join("vmlinuz").is_file() && d.join("initramfs.cpio.gz").is_file();
    if ready(&dir) {
        return Ok(dir);
    }
    let script = root.join("tests/guest-image/build.sh");
    if !script.exists() {
        return Err(format!(
            "no guest image in {} and no tests/guest-image/build.sh",
            dir.display()
        ));
    }
    let st = Command::new(&script)
        .arg("--out")
        .arg(&dir)
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !st.success() || !ready(&dir) {
        return Err(format!("{} failed", script.display()));
    }
    Ok(dir)
}

fn ok(r: &Value) -> &Value {
    assert!(r.get("error").is_none(), "error reply: {r}");
    &r["return"]
}

#[test]
fn linux_guest_agent_over_the_monitor_then_powerdown() {
    let img = match hardware_kvm().and_then(|()| guest_image()) {
        Ok(d) => d,
        Err(e) => {
            skipped(e);
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let mut vm = Vmm::launch(
        dir.path(),
        [
            "-kernel",
            &img.join("vmlinuz").display().to_string(),
            "-initrd",
            &img.join("initramfs.cpio.gz").display().to_string(),
            "-append",
            "console=ttyS0 panic=-1 agent=qemu-ga",
            "-m",
            "512M",
            "-smp",
            "2",
            "-chardev",
            "qmp_proxy,id=qga0",
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=agent",
            "-serial",
            &format!("file:{}", serial.display()),
        ],
        false,
        &[],
    );
    let mut c = vm.client();
    let t = Instant::now();
    wait_agent_up(&mut c, Duration::from_secs(120));
    println!("agent up {:?} after connecting", t.elapsed());

    ok(&guest(&mut c, "guest-ping", Value::Null));
    let info = guest(&mut c, "guest-info", Value::Null);
    assert!(!ok(&info)["supported_commands"]
        .as_array()
        .unwrap()
        .is_empty());

    let r = guest(
        &mut c,
        "guest-exec",
        json!({"path": "/bin/echo", "arg": ["hello", "from", "the", "guest"], "capture-output": true}),
    );
    let pid = ok(&r)["pid"].as_i64().unwrap();
    let status = loop {
        let s = guest(&mut c, "guest-exec-status", json!({"pid": pid}));
        if ok(&s)["exited"] == json!(true) {
            break s["return"].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["exitcode"], 0);
    assert_eq!(status["out-data"], "aGVsbG8gZnJvbSB0aGUgZ3Vlc3QK"); // "hello from the guest\n"

    let data = "dmlydGFnZW50IGZpbGUgcm91bmQgdHJpcAo="; // "virtagent file round trip\n"
    let h = guest(
        &mut c,
        "guest-file-open",
        json!({"path": "/tmp/rt", "mode": "w"}),
    );
    let h = ok(&h).as_i64().unwrap();
    ok(&guest(
        &mut c,
        "guest-file-write",
        json!({"handle": h, "buf-b64": data}),
    ));
    ok(&guest(&mut c, "guest-file-close", json!({"handle": h})));
    let h = guest(
        &mut c,
        "guest-file-open",
        json!({"path": "/tmp/rt", "mode": "r"}),
    );
    let h = ok(&h).as_i64().unwrap();
    let r = guest(
        &mut c,
        "guest-file-read",
        json!({"handle": h, "count": 4096}),
    );
    assert_eq!(ok(&r)["buf-b64"], data);
    ok(&guest(&mut c, "guest-file-close", json!({"handle": h})));

    ok(&guest(&mut c, "system_powerdown", Value::Null));
    c.wait_event("POWERDOWN", Duration::from_secs(5)).unwrap();
    let ev = c.wait_event("SHUTDOWN", Duration::from_secs(60)).unwrap();
    assert_eq!(ev["data"]["guest"], true, "{ev}");
    assert!(vm.proc.wait(Duration::from_secs(10)).success());
}
