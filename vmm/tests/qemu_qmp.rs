//! QEMU's own Python QMP client (`qemu.qmp` from PyPI, installed into `.venv` by
//! scripts/setup.sh) against the real `vmm`, with Debian's qemu-ga behind the proxy.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh (it creates the venv with qemu.qmp)",
        py.display()
    );
    py
}

/// Runs QEMU's `qmp-shell` (with `flags`) on the vmm's monitor, `input` on its stdin; returns
/// its stdout, after checking that it exited successfully.
fn qmp_shell(vmm: &Vmm, flags: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let shell = venv_python().parent().unwrap().join("qmp-shell");
    let mut child = Command::new(shell)
        .args(flags)
        .arg(&vmm.qmp)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{stderr}");
    text
}

#[test]
fn qemu_qmp_client_works_unmodified() {
    let py = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _ga = start_qemu_ga(dir.path(), &sock);
    let mut vmm = Vmm::with_agent(dir.path(), &sock, "10");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/qemu_qmp_client.py");
    let out = Command::new(py).arg(script).arg(&vmm.qmp).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "qemu.qmp client failed:\n{stdout}\n{stderr}\nvmm log:\n{}",
        vmm.log_text()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // The client ended with `quit`.
    assert!(vmm.proc.wait(Duration::from_secs(5)).success());
}

#[test]
fn qmp_shell_works_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(dir.path(), &["-name", "shelltest"]);
    let text = qmp_shell(
        &vmm,
        &[],
        b"query-status\nquery-name\nringbuf-read device=x size=1\nnope\n",
    );
    assert!(text.contains("Connected to QEMU 7.2.0"), "{text}");
    assert!(
        text.contains(r#""status": "running""#) && text.contains(r#""running": true"#),
        "{text}"
    );
    assert!(
        text.contains(r#"{"return": {"name": "shelltest"}}"#),
        "{text}"
    );
    assert!(text.contains(r#""desc": "Device 'x' not found""#), "{text}");
    assert!(text.contains(r#""class": "CommandNotFound""#), "{text}");
}

#[test]
fn qmp_shell_hmp_mode_works() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start(
        dir.path(),
        &["-name", "hmptest", "-chardev", "ringbuf,id=rb,size=16"],
    );
    let text = qmp_shell(
        &vmm,
        &["-H"],
        b"info status\nstop\ninfo status\ninfo name\nringbuf_write rb \"hi there\"\n\
          ringbuf_read rb 20\nringbuf_read nope 1\nnope\nhelp stop\n",
    );
    assert!(text.contains("Welcome to the HMP shell!"), "{text}");
    for want in [
        "VM status: running",
        "VM status: paused",
        "hmptest",
        "hi there",
        "Error: Device 'nope' not found",
        "unknown command: 'nope'",
        "stop|s  -- stop emulation",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    // The HMP `stop` really stopped the machine.
    let mut c = vmm.client();
    let st = c.execute("query-status", Value::Null).unwrap().unwrap();
    assert_eq!(st["status"], "paused");
}
