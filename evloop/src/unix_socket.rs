//! Listening on a unix socket path without taking over another process's socket, and removing
//! only the socket file this process made.
//!
//! A unix socket path outlives the process that bound it. QEMU and qemu-ga unlink whatever
//! socket is at the path before binding, which silently steals a path another live process is
//! serving (and that process's exit then deletes the newcomer's socket). Here a socket file is
//! replaced only when nobody listens on it (a connect to it is refused), and [`BoundPath::remove`]
//! deletes the file only while it is still the one this process bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The socket file a listener made; remove it with [`BoundPath::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// The file's birth time where the filesystem records it (inode numbers are reused once a
    /// file is deleted; a birth time is not changed by chmod or chown, as the change time is).
    born: Option<std::time::SystemTime>,
}

impl BoundPath {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this process bound (not one a later
    /// process put there). Returns true when it removed it.
    pub fn remove(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino(), m.created().ok()) == (self.dev, self.ino, self.born) => {
                std::fs::remove_file(&self.path).is_ok()
            }
            _ => false,
        }
    }
}

/// Binds a listening unix socket at `path`. A socket file there that nobody listens on is
/// replaced; a socket another process listens on is refused (`AddrInUse`), as is any other kind
/// of file (`AlreadyExists`), each with a message that says what is there.
pub fn bind(path: &Path) -> io::Result<(UnixListener, BoundPath)> {
    clear_stale(path)?;
    let l = UnixListener::bind(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            // Someone bound it between our look and our bind.
            in_use(path)
        } else {
            e
        }
    })?;
    let m = std::fs::symlink_metadata(path)?;
    Ok((
        l,
        BoundPath {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
        },
    ))
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{} is in use: another process is listening on it",
            path.display()
        ),
    )
}

/// Removes a socket file at `path` that nobody listens on; errors for a live socket or a file
/// of another kind. Nothing there is fine.
pub fn clear_stale(path: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let t = m.file_type();
    if !t.is_socket() {
        let what = if t.is_file() {
            "a regular file"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_fifo() {
            "a fifo"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else {
            "a file"
        };
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is {what}, not a socket", path.display()),
        ));
    }
    match probe(path) {
        Probe::Listening => Err(in_use(path)),
        Probe::Stale => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Probe::Error(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: cannot tell whether it is in use: {e}", path.display()),
        )),
    }
}

enum Probe {
    Listening,
    Stale,
    Error(io::Error),
}

/// Connects to `path` without blocking: refused means nobody listens; accepted or a full
/// backlog (`EAGAIN`) means a live listener.
fn probe(path: &Path) -> Probe {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Probe::Error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a unix socket",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() takes no pointers and returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Probe::Error(io::Error::last_os_error());
    }
    // SAFETY: `addr` is a valid sockaddr_un whose size is passed; `fd` is our socket.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was created above and is closed once.
    unsafe { libc::close(fd) };
    if r == 0 {
        return Probe::Listening;
    }
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Probe::Stale,
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Probe::Listening,
        _ => Probe::Error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sockets_are_refused_stale_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let (l1, b1) = bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(
            e.to_string().contains("another process is listening"),
            "{e}"
        );
        drop(l1);
        // Nobody listens now: the file is stale and replaced.
        let (_l2, b2) = bind(&p).unwrap();
        assert!(
            !b1.remove(),
            "the first owner must not delete its successor's socket"
        );
        assert!(p.exists());
        // A chmod (as a launcher may do to share the socket) does not make it someone else's.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(b2.remove());
        assert!(!p.exists());
    }

    #[test]
    fn other_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let e = bind(&f).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("exists and is a regular file, not a socket"),
            "{e}"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        let e = bind(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
