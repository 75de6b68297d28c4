//! fsfreeze rules on a real loop-mounted ext4 filesystem made by the test.
//! Needs root and loop devices; prints "skipped: <reason>" otherwise.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{class, have_qemu_ga, ret, temp_dir, AgentProc, Client, Kind};
use serde_json::{json, Value};

const FITHAW: libc::c_ulong = 0xC004_5878;

/// guest-fsfreeze-thaw thaws every frozen filesystem (as qemu-ga does), so
/// the tests of this file must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct LoopFs {
    dir: PathBuf,
    mnt: PathBuf,
}

impl LoopFs {
    fn make(tag: &str) -> Result<LoopFs, String> {
        let dir = temp_dir(tag);
        let img = dir.join("fs.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        File::create(&img)
            .and_then(|f| f.set_len(32 << 20))
            .map_err(|e| e.to_string())?;
        let mk = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .output();
        match mk {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "mkfs.ext4 failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
            Err(e) => return Err(format!("mkfs.ext4 not runnable: {e}")),
        }
        let m = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output();
        match m {
            Ok(o) if o.status.success() => Ok(LoopFs { dir, mnt }),
            Ok(o) => Err(format!(
                "mount -o loop not permitted: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("mount not runnable: {e}")),
        }
    }

    fn mnt(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    /// Thaws directly; true if the filesystem was frozen.
    fn force_thaw(&self) -> bool {
        let f = File::open(&self.mnt).unwrap();
        let mut arg: libc::c_int = 0;
        // SAFETY: FITHAW takes an int pointer; f is open.
        unsafe { libc::ioctl(f.as_raw_fd(), FITHAW as _, &mut arg) == 0 }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        while self.force_thaw() {}
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn loopfs_or_skip(tag: &str) -> Option<LoopFs> {
    match LoopFs::make(tag) {
        Ok(f) => Some(f),
        Err(reason) => {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("skipped: {reason}\n"),
            );
            None
        }
    }
}

fn write_hook(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("hook.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The freeze rules as a client sees them; returns the observed error classes.
fn freeze_rules(c: &mut Client, mnt: &str) -> Vec<String> {
    let mut classes = Vec::new();
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("thawed")
    );
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-freeze-list", json!({"mountpoints": [mnt]}))),
        &json!(1)
    );
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("frozen")
    );
    for cmd in [
        "guest-get-host-name",
        "guest-file-open",
        "guest-exec",
        "guest-fsfreeze-freeze-list",
        "guest-get-time",
    ] {
        let r = c.cmd(cmd, Value::Null);
        classes.push(class(&r).to_string());
        let d = r["error"]["desc"].as_str().unwrap();
        assert!(d.contains("frozen state"), "{cmd}: {d}");
    }
    for cmd in ["guest-ping", "guest-info", "guest-fsfreeze-status"] {
        assert!(
            c.cmd(cmd, Value::Null).get("return").is_some(),
            "{cmd} refused while frozen"
        );
    }
    assert!(c
        .cmd("guest-sync", json!({"id": 5}))
        .get("return")
        .is_some());
    let info = c.cmd("guest-info", Value::Null);
    let host = info["return"]["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "guest-get-host-name")
        .cloned()
        .unwrap();
    assert_eq!(
        host["enabled"],
        json!(false),
        "guest-info while frozen: {host}"
    );
    assert_eq!(ret(&c.cmd("guest-fsfreeze-thaw", Value::Null)), &json!(1));
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("thawed")
    );
    assert!(ret(&c.cmd("guest-get-host-name", Value::Null))["host-name"].is_string());
    classes
}

#[test]
fn freeze_rules_logging_hook_and_thaw_on_exit() {
    let _g = serial();
    let Some(fs) = loopfs_or_skip("freeze") else {
        return;
    };
    let hooklog = fs.dir.join("hook.log");
    let hook = write_hook(&fs.dir, &format!("echo \"$1\" >> {}", hooklog.display()));
    let logfile = fs.dir.join("agent.log");
    let hook_arg = format!("-F{}", hook.display());
    let agent = AgentProc::start(
        Kind::Virtagent,
        "freeze-agent",
        &["-v", "-l", logfile.to_str().unwrap(), &hook_arg],
    );
    let mut c = agent.connect();
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));

    // Freeze, then check that nothing reaches the log file while frozen.
    assert_eq!(
        ret(&c.cmd(
            "guest-fsfreeze-freeze-list",
            json!({"mountpoints": [fs.mnt()]})
        )),
        &json!(1)
    );
    let frozen_len = std::fs::metadata(&logfile).unwrap().len();
    for _ in 0..5 {
        c.cmd("guest-get-host-name", Value::Null);
        c.cmd("guest-ping", Value::Null);
    }
    assert_eq!(
        std::fs::metadata(&logfile).unwrap().len(),
        frozen_len,
        "log written while frozen"
    );
    assert_eq!(ret(&c.cmd("guest-fsfreeze-thaw", Value::Null)), &json!(1));
    c.cmd("guest-get-host-name", Value::Null);
    assert!(
        std::fs::metadata(&logfile).unwrap().len() > frozen_len,
        "logging not restored by thaw"
    );
    assert_eq!(std::fs::read_to_string(&hooklog).unwrap(), "freeze\nthaw\n");

    // The full rule set.
    let ours = freeze_rules(&mut c, fs.mnt());
    assert!(ours.iter().all(|x| x == "CommandNotFound"), "{ours:?}");

    // Thaw on exit: freeze, then SIGTERM the agent.
    assert_eq!(
        ret(&c.cmd(
            "guest-fsfreeze-freeze-list",
            json!({"mountpoints": [fs.mnt()]})
        )),
        &json!(1)
    );
    drop(c);
    drop(agent);
    assert!(
        !fs.force_thaw(),
        "agent exited leaving the filesystem frozen"
    );
    // A file can be written again.
    std::fs::write(fs.mnt.join("after"), "ok").unwrap();
}

#[test]
fn freeze_rules_match_qemu_ga() {
    let _g = serial();
    if !have_qemu_ga() {
        return;
    }
    let Some(fs) = loopfs_or_skip("freeze-cmp") else {
        return;
    };
    let ours = {
        let a = AgentProc::start(Kind::Virtagent, "fz-ours", &[]);
        freeze_rules(&mut a.connect(), fs.mnt())
    };
    let theirs = {
        let a = AgentProc::start(Kind::QemuGa, "fz-qga", &[]);
        freeze_rules(&mut a.connect(), fs.mnt())
    };
    assert_eq!(ours, theirs);
}

#[test]
fn hung_freeze_hook_times_out_and_leaves_nothing_frozen() {
    let _g = serial();
    let Some(fs) = loopfs_or_skip("freeze-hang") else {
        return;
    };
    let hook = write_hook(&fs.dir, "[ \"$1\" = freeze ] && sleep 30; exit 0");
    let hook_arg = format!("-F{}", hook.display());
    let agent = AgentProc::start(
        Kind::Virtagent,
        "freeze-hang-agent",
        &["-T", "1", &hook_arg],
    );
    let mut c = agent.connect();
    let t0 = Instant::now();
    let r = c.cmd(
        "guest-fsfreeze-freeze-list",
        json!({"mountpoints": [fs.mnt()]}),
    );
    assert_eq!(class(&r), "GenericError", "{r}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("thawed")
    );
    assert!(ret(&c.cmd("guest-get-host-name", Value::Null))["host-name"].is_string());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fs.force_thaw(), "abandoned freeze froze the filesystem");
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("thawed")
    );
}

const FIFREEZE: libc::c_ulong = 0xC004_5877;

#[test]
fn write_to_a_frozen_filesystem_times_out_and_agent_keeps_serving() {
    let _g = serial();
    let Some(fs) = loopfs_or_skip("frozen-write") else {
        return;
    };
    let agent = AgentProc::start(Kind::Virtagent, "frozen-write-agent", &["-T", "1"]);
    let mut c = agent.connect();
    let path = fs.mnt.join("data");
    let h = ret(&c.cmd(
        "guest-file-open",
        json!({"path": path.to_str().unwrap(), "mode": "w"}),
    ))
    .clone();
    // Frozen behind the agent's back (another tool, or a host-side freeze).
    let f = File::open(&fs.mnt).unwrap();
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE takes an int pointer; f is open on the mount point.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FIFREEZE as _, &mut arg) };
    assert_eq!(rc, 0, "FIFREEZE");
    // The write blocks uninterruptibly in the kernel: the agent gives up.
    let t0 = Instant::now();
    let r = c.cmd(
        "guest-file-write",
        json!({"handle": h, "buf-b64": "aGVsbG8="}),
    );
    assert_eq!(class(&r), "GenericError", "{r}");
    assert!(
        r["error"]["desc"].as_str().unwrap().contains("timed out"),
        "{r}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // ... and keeps answering, also commands that use the worker.
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    assert!(ret(&c.cmd("guest-get-host-name", Value::Null))["host-name"].is_string());
    // Thaw: the abandoned write completes in the background.
    assert!(fs.force_thaw());
    let t0 = Instant::now();
    while std::fs::read(&path).unwrap_or_default() != b"hello" {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "abandoned write never completed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ret(&c.cmd("guest-file-close", json!({"handle": h}))),
        &json!({})
    );
}
