#!/usr/bin/env python3
"""Boot-time and memory benchmark of the vmm KVM machine, with QEMU as the peer.

For each run it starts the VMM with a QMP socket (wait=on, so no event is missed), connects,
and measures from process start to
  * port-open:  VSERPORT_CHANGE open=true (the guest opened org.qemu.guest_agent.0), and
  * agent-up:   (vmm with a Linux guest only) the first guest-ping answered, i.e. the QMP proxy
                synced with the agent and sent GUEST_AGENT_UP,
and reads the VMM's VmRSS / VmHWM (/proc/PID/status) right after port-open.

Guests:
  --tiny            the tiny test guest (tests/tinyguest; built by its build.sh). Runs on any KVM,
                    including emulating hosts. QEMU cannot boot it (it needs a PVH or multiboot
                    image), so there is no peer row.
  --linux DIR       DIR/vmlinuz + DIR/initramfs.cpio.gz (tests/guest-image/build.sh). Needs KVM with
                    hardware virtualization. The peer is qemu-system-x86_64 -accel kvm -M microvm,acpi=on
                    (virtio-mmio described in ACPI, as for vmm) with the same kernel, initrd, memory
                    and command line.

usage: vmm/benches/kvm_boot.py [--tiny | --linux DIR] [--runs N] [--vmm PATH] [--no-qemu]
Prints one row per run and the median per VMM, plus the vmm/QEMU ratios.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT = "org.qemu.guest_agent.0"


class Qmp:
    def __init__(self, path, deadline):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.f = self.s.makefile("rwb")
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, args=None):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.f.write((json.dumps(req) + "\n").encode())
        self.f.flush()
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
            else:
                return m

    def wait_event(self, pred, deadline):
        while True:
            for i, e in enumerate(self.events):
                if pred(e):
                    return self.events.pop(i)
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            self.events.append(self.read())


def mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def run_once(kind, argv, qmp_path, want_agent, timeout):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout
    row = {"vmm": kind}
    try:
        q = Qmp(qmp_path, deadline)
        q.wait_event(lambda e: e["event"] == "VSERPORT_CHANGE" and e["data"]["open"], deadline)
        row["port_open_s"] = time.monotonic() - t0
        row.update(mem_kib(p.pid))
        if want_agent:
            while time.monotonic() < deadline:
                r = q.cmd("guest-ping")
                if "return" in r:
                    row["agent_up_s"] = time.monotonic() - t0
                    break
                time.sleep(0.005)
        q.cmd("quit")
    finally:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tiny", action="store_true", help="boot the tiny test guest (default)")
    g.add_argument("--linux", metavar="DIR", help="boot DIR/vmlinuz + DIR/initramfs.cpio.gz")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/release/vmm"))
    ap.add_argument("--no-qemu", action="store_true", help="skip the QEMU peer")
    ap.add_argument("--mem", default="512M")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()

    if not os.access(a.vmm, os.X_OK):
        sys.exit(f"{a.vmm} not found: cargo build --release -p vmm (or --vmm PATH)")
    work = tempfile.mkdtemp()
    try:
        if a.linux:
            kernel = os.path.join(a.linux, "vmlinuz")
            initrd = os.path.join(a.linux, "initramfs.cpio.gz")
            for f in (kernel, initrd):
                if not os.path.isfile(f):
                    sys.exit(f"{f} missing: run tests/guest-image/build.sh")
            append = "console=ttyS0 quiet panic=-1 agent=qemu-ga"
            boot = ["-kernel", kernel, "-initrd", initrd, "-append", append]
        else:
            out = subprocess.run([os.path.join(ROOT, "tests/tinyguest/build.sh"), work],
                                 check=True, capture_output=True, text=True).stdout.strip()
            append = "console=ttyS0"
            boot = ["-kernel", out, "-append", append]
        rows = []
        for i in range(a.runs):
            qs = os.path.join(work, f"vmm{i}.sock")
            argv = [a.vmm] + boot + ["-m", a.mem, "-smp", "1", "-serial", "none",
                                     "-qmp", f"unix:{qs},server=on,wait=on",
                                     "-chardev", "qmp_proxy,id=qga0", "-device", "virtio-serial",
                                     "-device", f"virtserialport,chardev=qga0,name={PORT},id=agentport"]
            rows.append(run_once("vmm", argv, qs, bool(a.linux), a.timeout))
            qemu = shutil.which("qemu-system-x86_64")
            if a.linux and qemu and not a.no_qemu:
                qs = os.path.join(work, f"qemu{i}.sock")
                argv = [qemu, "-accel", "kvm", "-cpu", "host", "-M", "microvm,acpi=on", "-m", a.mem, "-smp", "1",
                        "-nodefaults", "-no-user-config", "-nographic", "-serial", "none"] + boot + [
                        "-qmp", f"unix:{qs},server=on,wait=on",
                        "-chardev", f"socket,path={work}/qga{i}.sock,server=on,wait=off,id=qga0",
                        "-device", "virtio-serial-device",
                        "-device", f"virtserialport,chardev=qga0,name={PORT},id=agentport"]
                rows.append(run_once("qemu", argv, qs, False, a.timeout))
        for r in rows:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        med = {}
        for kind in ("vmm", "qemu"):
            rs = [r for r in rows if r["vmm"] == kind]
            if not rs:
                continue
            med[kind] = {k: statistics.median(r[k] for r in rs if k in r)
                         for k in ("port_open_s", "agent_up_s", "VmRSS", "VmHWM") if any(k in r for r in rs)}
            print(f"median {kind}: " + ", ".join(f"{k}={v:.4g}" for k, v in med[kind].items()))
        if "vmm" in med and "qemu" in med:
            for k in ("port_open_s", "VmRSS", "VmHWM"):
                print(f"ratio vmm/qemu {k}: {med['vmm'][k] / med['qemu'][k]:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
