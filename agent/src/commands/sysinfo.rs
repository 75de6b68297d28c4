//! Host name, users, time zone, OS info, CPU statistics, load.

use std::ffi::CStr;

use serde_json::{json, Map, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

fn uname() -> QgaResult<libc::utsname> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(QgaError::io(
            "uname failed",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(u)
}

fn field(f: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = f
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// guest-get-host-name.
pub fn get_host_name(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(QgaError::io(
            "failed to get host name",
            &std::io::Error::last_os_error(),
        ));
    }
    let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(json!({"host-name": String::from_utf8_lossy(&buf[..n])}))
}

/// Size of a glibc x86_64/aarch64 `struct utmp` record.
const UTMP_SIZE: usize = 384;
const USER_PROCESS: i16 = 7;

/// Parses utmp records: logged-in users with their earliest login time.
pub fn parse_utmp(data: &[u8]) -> Vec<(String, f64)> {
    let mut users: Vec<(String, f64)> = Vec::new();
    for rec in data.chunks_exact(UTMP_SIZE) {
        let ty = i16::from_ne_bytes([rec[0], rec[1]]);
        if ty != USER_PROCESS {
            continue;
        }
        let name = &rec[44..76];
        let n = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let user = String::from_utf8_lossy(&name[..n]).into_owned();
        let sec = i32::from_ne_bytes([rec[340], rec[341], rec[342], rec[343]]) as f64;
        let usec = i32::from_ne_bytes([rec[344], rec[345], rec[346], rec[347]]) as f64;
        let t = sec + usec / 1e6;
        match users.iter_mut().find(|(u, _)| *u == user) {
            Some(e) => e.1 = e.1.min(t),
            None => users.push((user, t)),
        }
    }
    users
}

/// guest-get-users.
pub fn get_users(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let data = std::fs::read("/var/run/utmp")
        .or_else(|_| std::fs::read("/run/utmp"))
        .unwrap_or_default();
    let v: Vec<Value> = parse_utmp(&data)
        .into_iter()
        .map(|(u, t)| json!({"user": u, "login-time": t}))
        .collect();
    Ok(json!(v))
}

extern "C" {
    fn tzset();
}

/// guest-get-timezone.
pub fn get_timezone(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    // SAFETY: time(NULL) has no preconditions; localtime_r writes into tm.
    let (tm, ok) = unsafe {
        tzset();
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&t, &mut tm).is_null();
        (tm, ok)
    };
    if !ok {
        return Err(QgaError::generic("failed to get the local time"));
    }
    let mut m = Map::new();
    if !tm.tm_zone.is_null() {
        // SAFETY: tm_zone points to a NUL-terminated static string.
        let z = unsafe { CStr::from_ptr(tm.tm_zone) };
        m.insert("zone".into(), json!(z.to_string_lossy()));
    }
    m.insert("offset".into(), json!(tm.tm_gmtoff));
    Ok(Value::Object(m))
}

/// Parses os-release text into guest-get-osinfo members.
pub fn parse_os_release(text: &str, m: &mut Map<String, Value>) {
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let key = match k.trim() {
            "ID" => "id",
            "NAME" => "name",
            "PRETTY_NAME" => "pretty-name",
            "VERSION" => "version",
            "VERSION_ID" => "version-id",
            "VARIANT" => "variant",
            "VARIANT_ID" => "variant-id",
            _ => continue,
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        let v = v
            .replace("\\\"", "\"")
            .replace("\\$", "$")
            .replace("\\`", "`")
            .replace("\\\\", "\\");
        m.insert(key.into(), json!(v));
    }
}

/// guest-get-osinfo.
pub fn get_osinfo(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let mut m = Map::new();
    if let Ok(u) = uname() {
        m.insert("kernel-release".into(), json!(field(&u.release)));
        m.insert("kernel-version".into(), json!(field(&u.version)));
        m.insert("machine".into(), json!(field(&u.machine)));
    }
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text, &mut m);
    Ok(Value::Object(m))
}

/// Parses /proc/stat cpuN lines into guest-get-cpustats entries.
pub fn parse_cpustats(text: &str, ms_per_tick: u64) -> Vec<Value> {
    const NAMES: [&str; 10] = [
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guestnice",
    ];
    let mut v = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(label) = it.next() else { continue };
        let Some(idx) = label
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let mut m = Map::new();
        m.insert("type".into(), json!("linux"));
        m.insert("cpu".into(), json!(idx));
        for (name, val) in NAMES.iter().zip(it) {
            if let Ok(n) = val.parse::<u64>() {
                m.insert((*name).into(), json!(n.saturating_mul(ms_per_tick)));
            }
        }
        v.push(Value::Object(m));
    }
    v
}

/// guest-get-cpustats (times in milliseconds).
pub fn get_cpustats(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let text = std::fs::read_to_string("/proc/stat")
        .map_err(|e| QgaError::io("failed to open /proc/stat", &e))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(json!(parse_cpustats(&text, (1000 / hz).max(1))))
}

/// guest-get-load (QEMU 10.0+).
pub fn get_load(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let text = std::fs::read_to_string("/proc/loadavg")
        .map_err(|e| QgaError::io("failed to read /proc/loadavg", &e))?;
    let f: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 3 {
        return Err(QgaError::generic("failed to parse /proc/loadavg"));
    }
    Ok(json!({"load1m": f[0], "load5m": f[1], "load15m": f[2]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_cpustats() {
        let mut m = Map::new();
        parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
            &mut m,
        );
        assert_eq!(m["name"], "Debian GNU/Linux");
        assert_eq!(m["id"], "debian");
        let v = parse_cpustats("cpu  1 2 3 4\ncpu0 10 0 3 4 5 6 7 8 9 10\nintr 5\n", 10);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["user"], 100);
        assert_eq!(v[0]["guestnice"], 100);
    }

    #[test]
    fn utmp_records() {
        let mut rec = vec![0u8; UTMP_SIZE * 2];
        rec[0..2].copy_from_slice(&USER_PROCESS.to_ne_bytes());
        rec[44..48].copy_from_slice(b"root");
        rec[340..344].copy_from_slice(&100i32.to_ne_bytes());
        rec[UTMP_SIZE..UTMP_SIZE + 2].copy_from_slice(&USER_PROCESS.to_ne_bytes());
        rec[UTMP_SIZE + 44..UTMP_SIZE + 48].copy_from_slice(b"root");
        rec[UTMP_SIZE + 340..UTMP_SIZE + 344].copy_from_slice(&50i32.to_ne_bytes());
        assert_eq!(parse_utmp(&rec), vec![("root".to_string(), 50.0)]);
    }
}
