//! guest-ssh-get/add/remove-authorized-keys.
//!
//! Users are looked up by reading /etc/passwd directly (no NSS), so the
//! statically linked agent behaves the same as a dynamic one.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

/// A passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Finds `name` in passwd-format text.
pub fn lookup_in(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(User {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    })
}

fn lookup(name: &str) -> QgaResult<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    lookup_in(&passwd, name)
        .ok_or_else(|| QgaError::generic(format!("failed to lookup user '{name}': No such user")))
}

fn keys_path(u: &User) -> PathBuf {
    u.home.join(".ssh").join("authorized_keys")
}

/// Rejects keys that would corrupt authorized_keys.
pub fn check_keys(keys: &[String]) -> QgaResult<()> {
    for k in keys {
        if k.trim().is_empty() || k.contains('\n') || k.contains('\r') {
            return Err(QgaError::generic(format!("'{k}' is not a valid ssh key")));
        }
    }
    Ok(())
}

fn read_keys(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(String::from)
        .collect())
}

fn write_keys(u: &User, keys: &[String]) -> QgaResult<()> {
    let dir = u.home.join(".ssh");
    if !dir.exists() {
        std::fs::create_dir(&dir)
            .map_err(|e| QgaError::io(format_args!("failed to create '{}'", dir.display()), &e))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let _ = chown(&dir, Some(u.uid), Some(u.gid));
    }
    let path = keys_path(u);
    let tmp = dir.join(".authorized_keys.virtagent");
    let mut text = keys.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&tmp, text)
        .map_err(|e| QgaError::io(format_args!("failed to write '{}'", path.display()), &e))?;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    let _ = chown(&tmp, Some(u.uid), Some(u.gid));
    std::fs::rename(&tmp, &path)
        .map_err(|e| QgaError::io(format_args!("failed to write '{}'", path.display()), &e))
}

/// guest-ssh-get-authorized-keys.
pub fn get_keys(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let username = a.str("username")?;
    a.finish()?;
    let u = lookup(&username)?;
    let path = keys_path(&u);
    let keys = read_keys(&path)
        .map_err(|e| QgaError::io(format_args!("failed to read '{}'", path.display()), &e))?;
    Ok(json!({"keys": keys}))
}

/// guest-ssh-add-authorized-keys.
pub fn add_keys(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let username = a.str("username")?;
    let keys = a.str_list("keys")?;
    let reset = a.opt_bool("reset")?.unwrap_or(false);
    a.finish()?;
    let u = lookup(&username)?;
    check_keys(&keys)?;
    let mut cur = if reset {
        Vec::new()
    } else {
        read_keys(&keys_path(&u)).unwrap_or_default()
    };
    for k in keys {
        if !cur.contains(&k) {
            cur.push(k);
        }
    }
    write_keys(&u, &cur)?;
    Ok(json!({}))
}

/// guest-ssh-remove-authorized-keys.
pub fn remove_keys(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let username = a.str("username")?;
    let keys = a.str_list("keys")?;
    a.finish()?;
    let u = lookup(&username)?;
    check_keys(&keys)?;
    let path = keys_path(&u);
    let cur = match read_keys(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(json!({})),
        Err(e) => {
            return Err(QgaError::io(
                format_args!("failed to read '{}'", path.display()),
                &e,
            ))
        }
    };
    let kept: Vec<String> = cur.into_iter().filter(|k| !keys.contains(k)).collect();
    write_keys(&u, &kept)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup_and_keys() {
        let p = "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:100::/home/bob:/bin/sh\n";
        assert_eq!(
            lookup_in(p, "bob").unwrap().home,
            PathBuf::from("/home/bob")
        );
        assert!(lookup_in(p, "nosuch").is_none());
        assert!(check_keys(&["ssh-ed25519 AAAA x".into()]).is_ok());
        assert!(check_keys(&["a\nb".into()]).is_err());
    }
}
