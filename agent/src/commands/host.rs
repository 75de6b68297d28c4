//! guest-get-time, guest-set-time, guest-set-user-password.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

/// Seconds of 2070-01-01T00:00:00Z: qemu-ga refuses times past 2069.
const YEAR_2070: i64 = 3_155_760_000;

/// guest-get-time: nanoseconds since the epoch.
pub fn get_time(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| QgaError::generic("Failed to get time"))?;
    Ok(json!(d.as_nanos() as i64))
}

/// Validates a guest-set-time value: (seconds, nanoseconds).
pub fn validate_time(ns: i64) -> QgaResult<(i64, i64)> {
    let secs = ns.div_euclid(1_000_000_000);
    let nsec = ns.rem_euclid(1_000_000_000);
    if !(0..YEAR_2070).contains(&secs) {
        return Err(QgaError::generic("Invalid time"));
    }
    Ok((secs, nsec))
}

fn find_tool(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|s| s.to_string())
}

/// guest-set-time: sets the clock (and the RTC from it), or, without
/// `time`, sets the clock from the RTC with hwclock.
pub fn set_time(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let time = a.opt_int("time")?;
    a.finish()?;
    if let Some(ns) = time {
        let (secs, nsec) = validate_time(ns)?;
        let ts = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        };
        // SAFETY: ts is a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(QgaError::io(
                "Failed to set time to guest",
                &std::io::Error::last_os_error(),
            ));
        }
    }
    let hwclock = find_tool(&["/sbin/hwclock", "/usr/sbin/hwclock", "/bin/hwclock"]);
    match hwclock {
        Some(h) => {
            let st = Command::new(h)
                .arg(if time.is_some() { "-w" } else { "-s" })
                .stdin(Stdio::null())
                .status()
                .map_err(|e| QgaError::io("failed to run hwclock", &e))?;
            if !st.success() {
                return Err(QgaError::generic(
                    "hwclock failed to set hardware clock to system time",
                ));
            }
        }
        None if time.is_none() => {
            return Err(QgaError::generic(
                "hwclock not found: cannot set the time from the hardware clock",
            ));
        }
        None => log::warn!("hwclock not found; the RTC was not updated"),
    }
    Ok(json!({}))
}

/// Checks guest-set-user-password arguments; returns chpasswd's input line.
pub fn password_line(username: &str, password_b64: &str) -> QgaResult<Vec<u8>> {
    let raw = super::file::decode_b64(password_b64)?;
    if raw.contains(&b'\n') || raw.contains(&0) {
        return Err(QgaError::generic("forbidden characters in raw password"));
    }
    if username.contains('\n') || username.contains(':') || username.is_empty() {
        return Err(QgaError::generic("forbidden characters in username"));
    }
    let mut line = Vec::with_capacity(username.len() + raw.len() + 2);
    line.extend_from_slice(username.as_bytes());
    line.push(b':');
    line.extend_from_slice(&raw);
    line.push(b'\n');
    Ok(line)
}

/// guest-set-user-password: runs `chpasswd [-e]`.
pub fn set_user_password(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let username = a.str("username")?;
    let password = a.str("password")?;
    let crypted = a.bool("crypted")?;
    a.finish()?;
    let line = password_line(&username, &password)?;
    let tool = find_tool(&[
        "/usr/sbin/chpasswd",
        "/sbin/chpasswd",
        "/bin/chpasswd",
        "/usr/bin/chpasswd",
    ])
    .ok_or_else(|| QgaError::generic("chpasswd not found"))?;
    let mut cmd = Command::new(tool);
    if crypted {
        cmd.arg("-e");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| QgaError::io("failed to run chpasswd", &e))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(&line);
    }
    let st = child
        .wait()
        .map_err(|e| QgaError::io("failed to wait for chpasswd", &e))?;
    if !st.success() {
        return Err(QgaError::generic(
            "child process has failed to set user password",
        ));
    }
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_validation() {
        assert_eq!(
            validate_time(1_500_000_000_123_456_789).unwrap(),
            (1_500_000_000, 123_456_789)
        );
        assert!(validate_time(-5).is_err());
        assert!(validate_time(i64::MAX).is_err());
    }

    #[test]
    fn password_validation() {
        assert_eq!(password_line("bob", "c2VjcmV0").unwrap(), b"bob:secret\n");
        assert!(password_line("bob", "!!!")
            .unwrap_err()
            .desc
            .contains("Base64"));
        assert!(password_line("bob", "YQpi")
            .unwrap_err()
            .desc
            .contains("raw password"));
        assert!(password_line("b:ob", "c2VjcmV0")
            .unwrap_err()
            .desc
            .contains("username"));
    }
}
