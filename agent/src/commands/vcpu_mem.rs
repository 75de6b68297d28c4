//! guest-get/set-vcpus and guest-*-memory-block*.

use std::path::Path;

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

const CPU_DIR: &str = "/sys/devices/system/cpu";
const MEM_DIR: &str = "/sys/devices/system/memory";

fn numbered(dir: &str, prefix: &str) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// guest-get-vcpus.
pub fn get_vcpus(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let v: Vec<Value> = numbered(CPU_DIR, "cpu")
        .into_iter()
        .map(|n| {
            let online = Path::new(CPU_DIR).join(format!("cpu{n}/online"));
            let (online, can_offline) = match read_trim(&online) {
                Some(s) => (s == "1", true),
                None => (true, false),
            };
            json!({"logical-id": n, "online": online, "can-offline": can_offline})
        })
        .collect();
    if v.is_empty() {
        return Err(QgaError::generic("guest reported zero VCPUs"));
    }
    Ok(json!(v))
}

/// Parses guest-set-vcpus `vcpus` into (logical-id, online) pairs.
pub fn parse_vcpus(mut a: Args) -> QgaResult<Vec<(i64, bool)>> {
    let list = a.struct_list("vcpus")?;
    a.finish()?;
    let mut out = Vec::with_capacity(list.len());
    for mut e in list {
        let id = e.int("logical-id")?;
        let online = e.bool("online")?;
        let _ = e.opt_bool("can-offline")?;
        e.finish()?;
        out.push((id, online));
    }
    Ok(out)
}

fn set_one_vcpu(id: i64, online: bool) -> QgaResult<()> {
    let dir = Path::new(CPU_DIR).join(format!("cpu{id}"));
    if id < 0 || !dir.is_dir() {
        return Err(QgaError::generic(format!(
            "open(\"{}\"): No such file or directory",
            dir.display()
        )));
    }
    let f = dir.join("online");
    match read_trim(&f) {
        None if online => Ok(()),
        None => Err(QgaError::generic(format!(
            "logical processor #{id} can't be offlined"
        ))),
        Some(cur) if (cur == "1") == online => Ok(()),
        Some(_) => std::fs::write(&f, if online { "1" } else { "0" })
            .map_err(|e| QgaError::io(format_args!("failed to write \"{}\"", f.display()), &e)),
    }
}

/// guest-set-vcpus: returns how many entries were processed before the first failure.
pub fn set_vcpus(_: &Ctx, a: Args) -> QgaResult<Value> {
    let list = parse_vcpus(a)?;
    let mut done = 0i64;
    for (id, online) in list {
        if let Err(e) = set_one_vcpu(id, online) {
            if done == 0 {
                return Err(e);
            }
            break;
        }
        done += 1;
    }
    Ok(json!(done))
}

/// guest-get-memory-blocks. Like qemu-ga: no memory directory at all is
/// an empty list, a directory without blocks an error.
pub fn get_memory_blocks(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    if let Err(e) = std::fs::read_dir(MEM_DIR) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(json!([]));
        }
        return Err(QgaError::io(
            format_args!("Can't open directory\"{MEM_DIR}/\""),
            &e,
        ));
    }
    let v: Vec<Value> = numbered(MEM_DIR, "memory")
        .into_iter()
        .map(|n| {
            let d = Path::new(MEM_DIR).join(format!("memory{n}"));
            // No `state` file (old kernels): online and not removable.
            let (online, can_offline) = match read_trim(&d.join("state")) {
                None => (true, false),
                Some(s) => (
                    s.starts_with("online"),
                    // No `removable` file: cannot go offline.
                    read_trim(&d.join("removable")).is_some_and(|r| !r.starts_with('0')),
                ),
            };
            json!({"phys-index": n, "online": online, "can-offline": can_offline})
        })
        .collect();
    if v.is_empty() {
        return Err(QgaError::generic("guest reported zero memory blocks!"));
    }
    Ok(json!(v))
}

/// Parses guest-set-memory-blocks `mem-blks` into (phys-index, online).
pub fn parse_mem_blocks(mut a: Args) -> QgaResult<Vec<(u64, bool)>> {
    let list = a.struct_list("mem-blks")?;
    a.finish()?;
    let mut out = Vec::with_capacity(list.len());
    for mut e in list {
        let id = e.uint("phys-index")?;
        let online = e.bool("online")?;
        let _ = e.opt_bool("can-offline")?;
        e.finish()?;
        out.push((id, online));
    }
    Ok(out)
}

/// The outcome of one guest-set-memory-blocks entry: (response, error-code).
/// Follows qemu-ga: the block directory must open (`not-found` for ENOENT,
/// else `operation-failed`); a block already in the wanted state is a
/// success; otherwise `online`/`offline` is written to its `state` file and
/// a failed write is `operation-failed`. Every failure carries the errno.
fn set_one_mem_block(n: u64, online: bool) -> (&'static str, Option<i32>) {
    use std::io::{ErrorKind, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let d = Path::new(MEM_DIR).join(format!("memory{n}"));
    let errno = |e: &std::io::Error| Some(e.raw_os_error().unwrap_or(libc::EIO));
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(&d)
    {
        return match e.kind() {
            ErrorKind::NotFound => ("not-found", errno(&e)),
            _ => ("operation-failed", errno(&e)),
        };
    }
    let state = d.join("state");
    let cur = match std::fs::read_to_string(&state) {
        Ok(s) => s,
        // Old kernels without `state`: only "online" is possible.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let r = if online {
                "success"
            } else {
                "operation-not-supported"
            };
            return (r, errno(&e));
        }
        Err(e) => return ("operation-failed", errno(&e)),
    };
    if cur.starts_with("online") == online {
        return ("success", None);
    }
    let word: &[u8] = if online { b"online" } else { b"offline" };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .and_then(|mut f| f.write_all(word));
    match written {
        Ok(()) => ("success", None),
        Err(e) => ("operation-failed", errno(&e)),
    }
}

/// guest-set-memory-blocks: one response per entry, in order.
pub fn set_memory_blocks(_: &Ctx, a: Args) -> QgaResult<Value> {
    let list = parse_mem_blocks(a)?;
    let have_dir = Path::new(MEM_DIR).is_dir();
    let v: Vec<Value> = list
        .into_iter()
        .map(|(n, online)| {
            let (resp, code) = if have_dir {
                set_one_mem_block(n, online)
            } else {
                ("operation-not-supported", Some(libc::ENOENT))
            };
            let mut m = json!({"phys-index": n, "response": resp});
            if let Some(c) = code {
                m["error-code"] = json!(c);
            }
            m
        })
        .collect();
    Ok(json!(v))
}

/// guest-get-memory-block-info.
pub fn get_memory_block_info(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let s = read_trim(&Path::new(MEM_DIR).join("block_size_bytes"))
        .ok_or_else(|| QgaError::generic("failed to read memory block size"))?;
    let size = u64::from_str_radix(&s, 16)
        .map_err(|_| QgaError::generic("failed to parse memory block size"))?;
    Ok(json!({"size": size}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Args {
        Args::new(v.as_object().cloned())
    }

    #[test]
    fn set_vcpus_arguments() {
        let l = parse_vcpus(args(
            json!({"vcpus": [{"logical-id": 1, "online": false, "can-offline": true}]}),
        ))
        .unwrap();
        assert_eq!(l, vec![(1, false)]);
        let e = parse_vcpus(args(json!({"vcpus": [{"online": true}]}))).unwrap_err();
        assert_eq!(e.desc, "Parameter 'vcpus[0].logical-id' is missing");
        let e = parse_vcpus(args(
            json!({"vcpus": [{"logical-id": 0, "online": true, "x": 1}]}),
        ))
        .unwrap_err();
        assert_eq!(e.desc, "Parameter 'vcpus[0].x' is unexpected");
        assert!(parse_vcpus(args(json!({"vcpus": {}})))
            .unwrap_err()
            .desc
            .contains("expected: array"));
        let m = parse_mem_blocks(args(
            json!({"mem-blks": [{"phys-index": 3, "online": true}]}),
        ))
        .unwrap();
        assert_eq!(m, vec![(3, true)]);
    }
}
