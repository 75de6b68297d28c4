//! virtagent inside a real Linux guest under QEMU (TCG), as the guest agent
//! on a real virtio-serial port: the host-unsafe commands (set-time,
//! set-vcpus, memory blocks of a hot-added DIMM, fsfreeze of all
//! filesystems, ssh keys, suspend, shutdown) run there, with Debian's
//! qemu-ga on a second port of the same guest as the oracle where its
//! replies are compared. Needs `qemu-system-x86_64`, `busybox` (static), `cpio`, and
//! `VIRTAGENT_GUEST_KERNEL` (a bzImage) plus `VIRTAGENT_GUEST_MODULES` (a
//! directory holding virtio_ring, virtio, virtio_pci_legacy_dev,
//! virtio_pci_modern_dev, virtio_pci and virtio_console `.ko` files, searched
//! recursively; may be empty when they are built in). Prints
//! "skipped: <reason>" otherwise. qemu-ga is /usr/sbin/qemu-ga with its
//! libraries (missing: fails, or is skipped with `VIRTAGENT_SKIP_QEMU_GA=1`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{class, ret, temp_dir, Client};
use serde_json::{json, Value};

const MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_console",
];

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

/// Copies `bin` and the shared libraries it needs (per ldd) into `root`.
fn install_binary(bin: &Path, root: &Path, dest: &str) {
    std::fs::copy(bin, root.join(dest)).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = line.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(lib) = lib {
            let d = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(d.parent().unwrap()).unwrap();
            std::fs::copy(lib, &d).unwrap();
        }
    }
}

/// Name of the second virtio-serial port, served by Debian's qemu-ga (the oracle).
const ORACLE_PORT: &str = "org.qemu.guest_agent.1";

/// Builds the initramfs; with `oracle`, qemu-ga (and its libraries) goes in
/// too and serves [`ORACLE_PORT`].
fn build_initramfs(
    dir: &Path,
    modules: &Path,
    busybox: &Path,
    oracle: Option<&Path>,
) -> Result<PathBuf, String> {
    let root = dir.join("root");
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root", "lib/mods",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for a in ["sh", "mount", "insmod", "sleep", "cat", "echo", "ls", "["] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    // (Debian's busybox has no chpasswd applet: set-user-password is not run here.)
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/hwclock")).unwrap();
    let mut load = String::new();
    for m in MODULES {
        if let Some(p) = find_file(modules, &format!("{m}.ko")) {
            std::fs::copy(p, root.join(format!("lib/mods/{m}.ko"))).unwrap();
            load += &format!("insmod /lib/mods/{m}.ko\n");
        }
    }
    install_binary(Path::new(&common::virtagent_bin()), &root, "bin/virtagent");
    // qemu-ga has no udev here: it gets the port's /dev node found by name in sysfs.
    let mut start_oracle = String::new();
    if let Some(qga) = oracle {
        install_binary(qga, &root, "bin/qemu-ga");
        start_oracle = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do\n\
             for p in /sys/class/virtio-ports/*; do\n\
             [ \"$(cat $p/name)\" = {ORACLE_PORT} ] && dev=/dev/${{p##*/}}\n\
             done\n\
             [ -n \"$dev\" ] && break; sleep 1\n\
             done\n\
             /bin/qemu-ga -m virtio-serial -p $dev -t /tmp -f /tmp/qemu-ga.pid &\n"
        );
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"virtagent guest\"\nID=vaguest\n",
    )
    .unwrap();
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n{load}\
         echo init: ready\n/bin/virtagent &\n{start_oracle}while true; do sleep 1000; done\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.join("initrd.cpio");
    let list = Command::new("find")
        .arg(".")
        .current_dir(&root)
        .output()
        .map_err(|e| e.to_string())?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&img).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cpio: {e}"))?;
    cpio.stdin.take().unwrap().write_all(&list.stdout).unwrap();
    if !cpio.wait().unwrap().success() {
        return Err("cpio failed".into());
    }
    Ok(img)
}

struct Vm {
    qemu: Child,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("guest console (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn qmp(dir: &Path, cmd: &str) -> Value {
    qmp_args(dir, cmd, Value::Null)
}

/// Runs one QMP command on QEMU's own monitor and returns its reply.
fn qmp_args(dir: &Path, cmd: &str, args: Value) -> Value {
    let mut s = UnixStream::connect(dir.join("qmp.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut read_obj = |s: &mut UnixStream| loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = buf.drain(..=i).collect();
            return serde_json::from_slice::<Value>(&l).unwrap();
        }
        let mut t = [0u8; 4096];
        let n = s.read(&mut t).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&t[..n]);
    };
    read_obj(&mut s);
    s.write_all(br#"{"execute":"qmp_capabilities"}"#).unwrap();
    read_obj(&mut s);
    let req = if args.is_null() {
        json!({"execute": cmd})
    } else {
        json!({"execute": cmd, "arguments": args})
    };
    s.write_all(req.to_string().as_bytes()).unwrap();
    loop {
        let v = read_obj(&mut s);
        if v.get("return").is_some() || v.get("error").is_some() {
            return v;
        }
    }
}

/// Waits for a reply, resyncing (0xFF + guest-sync-delimited) as a host does.
fn resync(c: &mut Client, timeout: Duration) {
    c.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < timeout,
            "the agent in the guest never answered"
        );
        c.send(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":31337}}");
        let mut got = Vec::new();
        let mut t = [0u8; 4096];
        while let Ok(n) = c.s.read(&mut t) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&t[..n]);
            let want: &[u8] = b"\xff{\"return\": 31337}";
            if got.windows(want.len()).any(|w| w == want) {
                c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return;
            }
        }
    }
}

/// guest-get-memory-blocks, sorted by phys-index (qemu-ga lists them in
/// directory order).
fn mem_blocks(c: &mut Client) -> Vec<Value> {
    let r = c.cmd("guest-get-memory-blocks", Value::Null);
    let mut v = ret(&r).as_array().unwrap_or_else(|| panic!("{r}")).clone();
    v.sort_by_key(|b| b["phys-index"].as_u64());
    v
}

/// guest-set-memory-blocks for `blocks` (phys-index, online); the replies.
fn set_blocks(c: &mut Client, blocks: &[(u64, bool)]) -> Value {
    let l: Vec<Value> = blocks
        .iter()
        .map(|(i, on)| json!({"phys-index": i, "online": on}))
        .collect();
    ret(&c.cmd("guest-set-memory-blocks", json!({"mem-blks": l}))).clone()
}

/// Per-block `success` replies (no error-code) for `idx`.
fn successes(idx: &[u64]) -> Value {
    json!(idx
        .iter()
        .map(|i| json!({"phys-index": i, "response": "success"}))
        .collect::<Vec<_>>())
}

/// Whether each of `idx` is online, per guest-get-memory-blocks.
fn online(c: &mut Client, idx: &[u64]) -> Vec<bool> {
    let all = mem_blocks(c);
    idx.iter()
        .map(|i| {
            let b = all
                .iter()
                .find(|b| b["phys-index"] == json!(i))
                .unwrap_or_else(|| panic!("block {i} is gone: {all:?}"));
            b["online"].as_bool().unwrap()
        })
        .collect()
}

/// A guest file's contents, read through the agent.
fn read_guest_file(c: &mut Client, path: &str) -> String {
    use base64::Engine;
    let h = c.cmd("guest-file-open", json!({"path": path, "mode": "r"}));
    let h = ret(&h).as_i64().unwrap_or_else(|| panic!("{h}"));
    let r = c.cmd("guest-file-read", json!({"handle": h, "count": 4096}));
    let b = base64::engine::general_purpose::STANDARD
        .decode(ret(&r)["buf-b64"].as_str().unwrap())
        .unwrap();
    ret(&c.cmd("guest-file-close", json!({"handle": h})));
    String::from_utf8(b).unwrap()
}

/// Memory blocks for real: a DIMM hot-added over QEMU's QMP shows up in
/// guest-get-memory-blocks, goes online and offline again through
/// guest-set-memory-blocks (read back each time); a block that does not
/// exist and boot memory that cannot go offline get qemu-ga's per-block
/// error replies. With `oracle`, qemu-ga in the same guest runs the same
/// requests and its replies must be identical.
fn memory_hotplug(c: &mut Client, mut oracle: Option<&mut Client>, dir: &Path) {
    let info = c.cmd("guest-get-memory-block-info", Value::Null);
    let size = ret(&info)["size"]
        .as_u64()
        .unwrap_or_else(|| panic!("{info}"));
    assert!(size.is_power_of_two() && size >= 1 << 20, "{info}");
    let boot = mem_blocks(c);
    assert!(
        !boot.is_empty() && boot.iter().all(|b| b["online"] == true),
        "{boot:?}"
    );
    if let Some(o) = oracle.as_deref_mut() {
        assert_eq!(o.cmd("guest-get-memory-block-info", Value::Null), info);
        assert_eq!(mem_blocks(o), boot, "qemu-ga sees other blocks");
    }
    // The kernel's policy for new blocks (no udev rule onlines them here).
    let auto = read_guest_file(c, "/sys/devices/system/memory/auto_online_blocks");
    // Hot-add a DIMM of two blocks.
    let add = qmp_args(
        dir,
        "object-add",
        json!({"qom-type": "memory-backend-ram", "id": "hotmem", "size": 2 * size}),
    );
    assert_eq!(add, json!({"return": {}}));
    let add = qmp_args(
        dir,
        "device_add",
        json!({"driver": "pc-dimm", "id": "hotdimm", "memdev": "hotmem"}),
    );
    assert_eq!(add, json!({"return": {}}));
    let t0 = Instant::now();
    let added: Vec<Value> = loop {
        let new: Vec<Value> = mem_blocks(c)
            .into_iter()
            .filter(|b| !boot.iter().any(|o| o["phys-index"] == b["phys-index"]))
            .collect();
        if new.len() >= 2 {
            break new;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the hot-added DIMM never showed up: {new:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let idx: Vec<u64> = added
        .iter()
        .map(|b| b["phys-index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx.len(), 2, "{added:?}");
    assert_eq!(idx[1], idx[0] + 1, "{added:?}");
    // The DIMM sits above the boot RAM (QEMU maps it at 4 GiB and up).
    assert!(idx[0] * size >= 4 << 30, "{added:?}");
    let come_online = auto.trim() != "offline";
    for b in &added {
        assert_eq!(
            b["online"],
            json!(come_online),
            "auto_online_blocks={auto}: {b}"
        );
        assert_eq!(b["can-offline"], json!(true), "{b}");
    }
    if let Some(o) = oracle.as_deref_mut() {
        assert_eq!(mem_blocks(o), mem_blocks(c), "qemu-ga sees other blocks");
    }
    // Online, read back; offline, read back; offline again (nothing to do).
    let on: Vec<(u64, bool)> = idx.iter().map(|i| (*i, true)).collect();
    let off: Vec<(u64, bool)> = idx.iter().map(|i| (*i, false)).collect();
    assert_eq!(set_blocks(c, &on), successes(&idx));
    assert_eq!(online(c, &idx), [true, true]);
    assert_eq!(set_blocks(c, &off), successes(&idx));
    assert_eq!(online(c, &idx), [false, false]);
    assert_eq!(set_blocks(c, &off), successes(&idx));
    // One request, replies in order: a hot-added block online, a block
    // that does not exist (not-found, ENOENT), boot block 0 offline (it
    // holds the kernel: the kernel refuses, operation-failed with its
    // errno), the hot-added block offline again.
    let missing = idx[1] + 1000;
    let mixed = [(idx[0], true), (missing, true), (0, false), (idx[0], false)];
    let r = set_blocks(c, &mixed);
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[0], json!({"phys-index": idx[0], "response": "success"}));
    assert_eq!(
        r[1],
        json!({"phys-index": missing, "response": "not-found", "error-code": libc::ENOENT})
    );
    assert_eq!(r[2]["response"], json!("operation-failed"), "{r:?}");
    let errno = r[2]["error-code"].as_i64().unwrap_or(0);
    assert!(
        [libc::EBUSY, libc::EINVAL].contains(&(errno as i32)),
        "{r:?}"
    );
    assert_eq!(r[3], json!({"phys-index": idx[0], "response": "success"}));
    assert_eq!(online(c, &[0, idx[0], idx[1]]), [true, false, false]);
    let ours = json!(r);
    eprintln!("guest-set-memory-blocks {mixed:?}: {ours}");
    let Some(o) = oracle else { return };
    // qemu-ga: the same requests, the same replies.
    assert_eq!(set_blocks(o, &on), successes(&idx));
    assert_eq!(online(c, &idx), [true, true]);
    assert_eq!(mem_blocks(o), mem_blocks(c), "qemu-ga sees other blocks");
    assert_eq!(set_blocks(o, &off), successes(&idx));
    assert_eq!(online(c, &idx), [false, false]);
    assert_eq!(set_blocks(o, &off), successes(&idx));
    assert_eq!(set_blocks(o, &mixed), ours, "qemu-ga replied otherwise");
    assert_eq!(online(c, &[0, idx[0], idx[1]]), [true, false, false]);
    assert_eq!(mem_blocks(o), mem_blocks(c), "qemu-ga sees other blocks");
}

#[test]
fn agent_in_a_linux_guest() {
    let kernel = std::env::var_os("VIRTAGENT_GUEST_KERNEL").map(PathBuf::from);
    let modules = std::env::var_os("VIRTAGENT_GUEST_MODULES").map(PathBuf::from);
    let (Some(kernel), Some(qemu), Some(busybox)) =
        (kernel, tool("qemu-system-x86_64"), tool("busybox"))
    else {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("skipped: needs VIRTAGENT_GUEST_KERNEL, qemu-system-x86_64 and busybox\n"),
        );
        return;
    };
    // Debian's qemu-ga runs in the guest too, on a second port, as the oracle.
    let oracle = common::have_qemu_ga().then(|| PathBuf::from(common::QEMU_GA));
    let dir = temp_dir("guest");
    let img = build_initramfs(
        &dir,
        modules.as_deref().unwrap_or(Path::new("/nonexistent")),
        &busybox,
        oracle.as_deref(),
    )
    .unwrap_or_else(|e| panic!("initramfs: {e}"));
    let qga = dir.join("qga.sock");
    let oracle_sock = dir.join("qemu-ga.sock");
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg,thread=single",
        // Room for a hot-added DIMM (memory-block tests).
        "-m",
        "512M,slots=2,maxmem=2G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ])
    .arg(&kernel)
    .arg("-initrd")
    .arg(&img)
    // movable_node: hot-added memory goes online into ZONE_MOVABLE, so
    // the kernel can take it offline again.
    .args(["-append", "console=ttyS0 panic=-1 movable_node"])
    .arg("-chardev")
    .arg(format!(
        "socket,id=qga0,path={},server=on,wait=off",
        qga.display()
    ))
    .args([
        "-device",
        "virtio-serial",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ])
    .arg("-qmp")
    .arg(format!(
        "unix:{},server=on,wait=off",
        dir.join("qmp.sock").display()
    ));
    if oracle.is_some() {
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id=qga1,path={},server=on,wait=off",
                oracle_sock.display()
            ))
            .arg("-device")
            .arg(format!("virtserialport,chardev=qga1,name={ORACLE_PORT}"));
    }
    let qemu = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("console.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("qemu.err")).unwrap())
        .spawn()
        .expect("start qemu");
    let mut vm = Vm {
        qemu,
        dir: dir.clone(),
    };
    let t0 = Instant::now();
    while !qga.exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "qemu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Some(st) = vm.qemu.try_wait().unwrap() {
        panic!(
            "qemu exited ({st}): {}",
            std::fs::read_to_string(dir.join("qemu.err")).unwrap_or_default()
        );
    }
    let mut c = Client::connect(&qga);
    resync(&mut c, Duration::from_secs(40));
    let mut o = oracle.as_ref().map(|_| {
        let mut o = Client::connect(&oracle_sock);
        resync(&mut o, Duration::from_secs(40));
        o
    });

    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    let os = c.cmd("guest-get-osinfo", Value::Null);
    assert_eq!(ret(&os)["id"], json!("vaguest"), "{os}");
    // set-time, then read it back.
    let t = 1_800_000_000_000_000_000i64;
    assert_eq!(
        ret(&c.cmd("guest-set-time", json!({"time": t}))),
        &json!({})
    );
    let now = ret(&c.cmd("guest-get-time", Value::Null)).as_i64().unwrap();
    assert!((t..t + 60_000_000_000).contains(&now), "{now}");
    // File handles: the default state directory (/var/run) is created by the agent.
    let h = c.cmd("guest-file-open", json!({"path": "/tmp/f", "mode": "w+"}));
    assert_eq!(ret(&h), &json!(1000));
    c.cmd(
        "guest-file-write",
        json!({"handle": 1000, "buf-b64": "aGVsbG8="}),
    );
    c.cmd(
        "guest-file-seek",
        json!({"handle": 1000, "offset": 0, "whence": "set"}),
    );
    let r = c.cmd("guest-file-read", json!({"handle": 1000}));
    assert_eq!(ret(&r)["buf-b64"], json!("aGVsbG8="));
    assert_eq!(
        ret(&c.cmd("guest-file-close", json!({"handle": 1000}))),
        &json!({})
    );
    // set-time without a time: from the RTC (hwclock -s).
    assert_eq!(ret(&c.cmd("guest-set-time", Value::Null)), &json!({}));
    // set-memory-blocks: an online block set online again succeeds.
    let r = c.cmd(
        "guest-set-memory-blocks",
        json!({"mem-blks": [{"phys-index": 0, "online": true}]}),
    );
    assert_eq!(ret(&r), &json!([{"phys-index": 0, "response": "success"}]));
    memory_hotplug(&mut c, o.as_mut(), &dir);
    // qemu-ga's hybrid suspend (no systemd, no pm-utils) is not supported.
    let hybrid_oracle = o
        .as_mut()
        .map(|o| o.cmd("guest-suspend-hybrid", Value::Null));
    // set-vcpus: cpu1 off and on again; cpu0 cannot go offline.
    let vcpus = c.cmd("guest-get-vcpus", Value::Null);
    assert_eq!(ret(&vcpus).as_array().unwrap().len(), 2, "{vcpus}");
    let off = json!({"vcpus": [{"logical-id": 1, "online": false}]});
    assert_eq!(ret(&c.cmd("guest-set-vcpus", off)), &json!(1));
    let v = c.cmd("guest-get-vcpus", Value::Null);
    assert!(
        ret(&v)
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["logical-id"] == 1 && x["online"] == false),
        "{v}"
    );
    let on = json!({"vcpus": [{"logical-id": 1, "online": true}]});
    assert_eq!(ret(&c.cmd("guest-set-vcpus", on)), &json!(1));
    let e = c.cmd(
        "guest-set-vcpus",
        json!({"vcpus": [{"logical-id": 0, "online": false}]}),
    );
    assert_eq!(class(&e), "GenericError");
    // fsfreeze of everything: nothing freezable in an initramfs.
    assert_eq!(ret(&c.cmd("guest-fsfreeze-freeze", Value::Null)), &json!(0));
    assert_eq!(
        ret(&c.cmd("guest-fsfreeze-status", Value::Null)),
        &json!("thawed")
    );
    // ssh keys of a real user.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIvirtagent test@host";
    assert_eq!(
        ret(&c.cmd(
            "guest-ssh-add-authorized-keys",
            json!({"username": "root", "keys": [key]})
        )),
        &json!({})
    );
    let k = c.cmd("guest-ssh-get-authorized-keys", json!({"username": "root"}));
    assert_eq!(ret(&k)["keys"], json!([key]));
    assert_eq!(
        ret(&c.cmd(
            "guest-ssh-remove-authorized-keys",
            json!({"username": "root", "keys": [key]})
        )),
        &json!({})
    );
    assert_eq!(
        ret(&c.cmd("guest-ssh-get-authorized-keys", json!({"username": "root"})))["keys"],
        json!([])
    );
    // Suspend to RAM: no reply; the guest is suspended until woken up.
    c.send(br#"{"execute":"guest-suspend-ram"}"#);
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "guest never suspended"
        );
        if qmp(&dir, "query-status")["return"]["status"] == json!("suspended") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    qmp(&dir, "system_wakeup");
    resync(&mut c, Duration::from_secs(60));
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    // Hibernation without swap fails at once: that failure is reported.
    let r = c.cmd("guest-suspend-disk", Value::Null);
    assert_eq!(class(&r), "GenericError", "{r}");
    // Hybrid (image written, then suspend to RAM) fails the same way, with
    // qemu-ga's error class; the hibernation mode is left as it was and the
    // agent keeps answering.
    let disk_mode = read_guest_file(&mut c, "/sys/power/disk");
    let r = c.cmd("guest-suspend-hybrid", Value::Null);
    assert_eq!(class(&r), "GenericError", "{r}");
    assert!(
        r["error"]["desc"]
            .as_str()
            .is_some_and(|d| d.contains("/sys/power/state")),
        "{r}"
    );
    if let Some(q) = &hybrid_oracle {
        assert_eq!(class(q), class(&r), "qemu-ga: {q}, virtagent: {r}");
        eprintln!("guest-suspend-hybrid: qemu-ga {q}, virtagent {r}");
    }
    assert_eq!(ret(&c.cmd("guest-ping", Value::Null)), &json!({}));
    assert_eq!(read_guest_file(&mut c, "/sys/power/disk"), disk_mode);
    // Shutdown: no reply, the machine powers off.
    c.send(br#"{"execute":"guest-shutdown"}"#);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = vm.qemu.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "guest did not power off"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success(), "qemu exit status {st}");
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(
        !rest.contains(&b'{'),
        "a reply was sent for guest-shutdown: {:?}",
        String::from_utf8_lossy(&rest)
    );
}
