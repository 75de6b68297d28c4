//! guest-get-fsinfo, guest-get-disks, guest-get-diskstats (sysfs based).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};
use crate::mounts::mounts;

fn canon(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

fn parse_pci(comp: &str) -> Option<(u32, u32, u32, u32)> {
    // "0000:00:02.0"
    let (dom, rest) = comp.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    if dom.len() != 4 || bus.len() != 2 || slot.len() != 2 {
        return None;
    }
    Some((
        u32::from_str_radix(dom, 16).ok()?,
        u32::from_str_radix(bus, 16).ok()?,
        u32::from_str_radix(slot, 16).ok()?,
        u32::from_str_radix(func, 16).ok()?,
    ))
}

/// A GuestDiskAddress for a whole disk whose sysfs directory is `sys`.
pub fn disk_address(name: &str, sys: &Path) -> Value {
    let path = sys.to_string_lossy().into_owned();
    let mut pci = (0, 0, 0, 0);
    let (mut bus, mut target, mut unit) = (0i64, 0i64, 0i64);
    for comp in path.split('/') {
        if let Some(p) = parse_pci(comp) {
            pci = p;
        }
        let hctl: Vec<&str> = comp.split(':').collect();
        if hctl.len() == 4
            && hctl
                .iter()
                .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        {
            bus = hctl[1].parse().unwrap_or(0);
            target = hctl[2].parse().unwrap_or(0);
            unit = hctl[3].parse().unwrap_or(0);
        }
    }
    let bus_type = if path.contains("/virtio") && name.starts_with("vd") {
        "virtio"
    } else if name.starts_with("nvme") {
        "nvme"
    } else if path.contains("/ata") {
        "sata"
    } else if path.contains("/host") {
        "scsi"
    } else if path.contains("/usb") {
        "usb"
    } else {
        "unknown"
    };
    let mut m = Map::new();
    m.insert(
        "pci-controller".into(),
        json!({"domain": pci.0, "bus": pci.1, "slot": pci.2, "function": pci.3}),
    );
    m.insert("bus-type".into(), json!(bus_type));
    m.insert("bus".into(), json!(bus));
    m.insert("target".into(), json!(target));
    m.insert("unit".into(), json!(unit));
    m.insert("dev".into(), json!(format!("/dev/{name}")));
    if let Ok(s) = std::fs::read_to_string(sys.join("serial")) {
        let s = s.trim();
        if !s.is_empty() {
            m.insert("serial".into(), json!(s));
        }
    }
    Value::Object(m)
}

/// Addresses of the physical disks under the block device at `sys`.
fn addresses(sys: &Path, depth: u32, out: &mut Vec<Value>) {
    if depth > 8 {
        return;
    }
    let sys = if sys.join("partition").exists() {
        sys.parent().map(Path::to_path_buf)
    } else {
        Some(sys.into())
    };
    let Some(sys) = sys else { return };
    let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| canon(&e.path()))
                .collect()
        })
        .unwrap_or_default();
    if !slaves.is_empty() {
        for s in slaves {
            addresses(&s, depth + 1, out);
        }
        return;
    }
    if sys.join("device").exists() {
        let name = sys
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(disk_address(&name, &sys));
    }
}

fn statvfs(dir: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(dir).ok()?;
    // SAFETY: zeroed statvfs is valid; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let used_blocks = s.f_blocks.saturating_sub(s.f_bfree);
    let used = used_blocks.saturating_mul(s.f_frsize);
    let total = used_blocks
        .saturating_add(s.f_bavail)
        .saturating_mul(s.f_frsize);
    Some((used, total))
}

/// guest-get-fsinfo.
pub fn get_fsinfo(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let mut v = Vec::new();
    for m in mounts().iter().rev() {
        let sys = canon(Path::new(&format!(
            "/sys/dev/block/{}:{}",
            m.major, m.minor
        )));
        let name = sys
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.source.trim_start_matches("/dev/").to_string());
        let mut disks = Vec::new();
        if let Some(s) = &sys {
            addresses(s, 0, &mut disks);
        }
        let mut o = Map::new();
        o.insert("name".into(), json!(name));
        o.insert("mountpoint".into(), json!(m.dir));
        o.insert("type".into(), json!(m.fstype));
        if let Some((used, total)) = statvfs(&m.dir) {
            o.insert("used-bytes".into(), json!(used));
            o.insert("total-bytes".into(), json!(total));
        }
        o.insert("disk".into(), json!(disks));
        v.push(Value::Object(o));
    }
    Ok(json!(v))
}

/// guest-get-disks.
pub fn get_disks(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map_err(|e| QgaError::io("failed to open /sys/block", &e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut v = Vec::new();
    for name in names {
        let Some(sys) = canon(&Path::new("/sys/block").join(&name)) else {
            continue;
        };
        let is_dm = sys.join("dm").exists();
        if !sys.join("device").exists() && !is_dm {
            continue;
        }
        let deps: Vec<String> = std::fs::read_dir(sys.join("slaves"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let mut o = Map::new();
        o.insert("name".into(), json!(format!("/dev/{name}")));
        o.insert("partition".into(), json!(false));
        o.insert("dependencies".into(), json!(deps));
        if is_dm {
            if let Ok(alias) = std::fs::read_to_string(sys.join("dm/name")) {
                o.insert("alias".into(), json!(alias.trim()));
            }
        } else {
            o.insert("address".into(), disk_address(&name, &sys));
        }
        v.push(Value::Object(o));
        let mut parts: Vec<String> = std::fs::read_dir(&sys)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        for p in parts {
            v.push(json!({"name": format!("/dev/{p}"), "partition": true, "dependencies": [format!("/dev/{name}")]}));
        }
    }
    Ok(json!(v))
}

/// Parses /proc/diskstats into guest-get-diskstats entries.
pub fn parse_diskstats(text: &str) -> Vec<Value> {
    const NAMES: [&str; 17] = [
        "read-ios",
        "read-merges",
        "read-sectors",
        "read-ticks",
        "write-ios",
        "write-merges",
        "write-sectors",
        "write-ticks",
        "ios-pgr",
        "total-ticks",
        "weight-ticks",
        "discard-ios",
        "discard-merges",
        "discard-sectors",
        "discard-ticks",
        "flush-ios",
        "flush-ticks",
    ];
    let mut v = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(major), Ok(minor)) = (f[0].parse::<u64>(), f[1].parse::<u64>()) else {
            continue;
        };
        let mut stats = Map::new();
        for (name, val) in NAMES.iter().zip(&f[3..]) {
            if let Ok(n) = val.parse::<u64>() {
                stats.insert((*name).into(), json!(n));
            }
        }
        v.push(json!({"name": f[2], "major": major, "minor": minor, "stats": stats}));
    }
    v
}

/// guest-get-diskstats.
pub fn get_diskstats(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let text = std::fs::read_to_string("/proc/diskstats")
        .map_err(|e| QgaError::io("failed to open /proc/diskstats", &e))?;
    Ok(json!(parse_diskstats(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_and_pci() {
        let v = parse_diskstats(" 254 0 vda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n");
        assert_eq!(v[0]["name"], "vda");
        assert_eq!(v[0]["stats"]["flush-ticks"], 17);
        assert_eq!(parse_pci("0000:00:02.0"), Some((0, 0, 2, 0)));
        let a = disk_address(
            "vda",
            Path::new("/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"),
        );
        assert_eq!(a["bus-type"], "virtio");
        assert_eq!(a["pci-controller"]["slot"], 2);
    }
}
