//! Channels between the host and the agent.
//!
//! * `unix-listen`: a listening unix socket, one client at a time; the
//!   parser state belongs to the agent, not to the connection (as qemu-ga).
//! * `virtio-serial`: the guest side of a virtio-serial port. EOF means the
//!   host side is not connected: retry every 100 ms. I/O errors (port gone)
//!   close the device and reopen it every 100 ms.
//! * `isa-serial`: a serial tty, put in raw mode, otherwise as virtio-serial.

use evloop::unix_socket::BoundPath;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dispatch::Agent;

/// How often a lost or disconnected channel is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
const READ_BUF: usize = 64 * 1024;
/// unix-listen: a client that does not read its replies for this long is dropped.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Transport methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// virtio-serial port device.
    VirtioSerial,
    /// Serial tty.
    IsaSerial,
    /// Listening unix socket.
    UnixListen,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtio-serial" => Ok(Method::VirtioSerial),
            "isa-serial" => Ok(Method::IsaSerial),
            "unix-listen" => Ok(Method::UnixListen),
            _ => Err(format!("invalid method '{s}'")),
        }
    }
}

/// Serves `agent` over the channel forever (returns only on a fatal error).
/// Serves `method` on `path`; for `unix-listen`, `listener` is the socket bound with
/// [`bind_unix`].
pub fn serve(
    agent: &mut Agent,
    method: Method,
    path: &str,
    listener: Option<UnixListener>,
) -> std::io::Result<()> {
    match (method, listener) {
        (Method::UnixListen, Some(l)) => serve_unix(agent, l, path),
        (Method::UnixListen, None) => serve_unix(agent, bind_unix(path)?.0, path),
        (Method::VirtioSerial | Method::IsaSerial, _) => {
            serve_device(agent, path, method == Method::IsaSerial)
        }
    }
}

/// Binds the listening socket. A socket file nobody listens on is replaced; a socket another
/// process (another agent) is listening on, or a file of another kind, is an error that says
/// what is there. Remove the file at exit with the returned [`BoundPath`], which leaves alone a
/// socket some later process put there.
pub fn bind_unix(path: &str) -> std::io::Result<(UnixListener, BoundPath)> {
    evloop::unix_socket::bind(Path::new(path))
}

fn serve_unix(agent: &mut Agent, listener: UnixListener, path: &str) -> std::io::Result<()> {
    log::info!("listening on {path}");
    let mut buf = vec![0u8; READ_BUF];
    let mut out = Vec::with_capacity(READ_BUF);
    loop {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept failed: {e}");
                std::thread::sleep(RETRY_INTERVAL);
                continue;
            }
        };
        log::debug!("client connected");
        // A client that stops reading replies must not wedge the agent.
        let _ = conn.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            out.clear();
            agent.feed(&buf[..n], &mut out);
            if !out.is_empty() && conn.write_all(&out).is_err() {
                break;
            }
            if out.capacity() > 4 * READ_BUF {
                out = Vec::with_capacity(READ_BUF);
            }
        }
        log::debug!("client disconnected");
    }
}

/// Finds the device node of the virtio-serial port called `name` through
/// sysfs (`<sysfs>/class/virtio-ports/vportNpM/name`), for guests without
/// udev, where `/dev/virtio-ports/<name>` symlinks do not exist.
pub fn find_virtio_port(sysfs: &Path, name: &str) -> Option<PathBuf> {
    let dir = sysfs.join("class/virtio-ports");
    let mut ports: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .collect();
    ports.sort_by_key(|e| e.file_name());
    ports.into_iter().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// The path to open: `path` itself, or for a missing
/// `/dev/virtio-ports/<name>` the port's `/dev/vportNpM` node.
fn resolve_device(path: &str) -> PathBuf {
    let p = Path::new(path);
    if !p.exists() {
        if let Some(name) = path.strip_prefix("/dev/virtio-ports/") {
            if let Some(found) = find_virtio_port(Path::new("/sys"), name) {
                return found;
            }
        }
    }
    p.to_path_buf()
}

fn open_device(path: &Path, raw_tty: bool) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    if raw_tty {
        // SAFETY: termios is plain data, filled by tcgetattr on our fd.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(f.as_raw_fd(), &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                t.c_cc[libc::VMIN] = 1;
                t.c_cc[libc::VTIME] = 0;
                libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
    }
    Ok(f)
}

/// True when `path` no longer refers to the device `f` has open.
fn path_changed(path: &Path, f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), f.metadata()) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() != b.ino() || a.rdev() != b.rdev(),
        _ => true,
    }
}

fn serve_device(agent: &mut Agent, path: &str, raw_tty: bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut out = Vec::with_capacity(READ_BUF);
    let mut warned = false;
    loop {
        let real = resolve_device(path);
        let mut dev = match open_device(&real, raw_tty) {
            Ok(f) => {
                log::info!("opened {}", real.display());
                warned = false;
                f
            }
            Err(e) => {
                if !warned {
                    log::warn!("cannot open {path}: {e}; retrying every {RETRY_INTERVAL:?}");
                    warned = true;
                }
                std::thread::sleep(RETRY_INTERVAL);
                continue;
            }
        };
        loop {
            let n = match dev.read(&mut buf) {
                // Host side not connected: qemu-ga polls every 100 ms.
                Ok(0) => {
                    std::thread::sleep(RETRY_INTERVAL);
                    // A hung-up tty or a replaced device node also reads as
                    // EOF: reopen when the path no longer names our device.
                    if path_changed(&real, &dev) {
                        log::info!("{path} went away; reopening");
                        break;
                    }
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    log::warn!("read from {path} failed: {e}; reopening");
                    break;
                }
            };
            out.clear();
            agent.feed(&buf[..n], &mut out);
            if !out.is_empty() {
                if let Err(e) = dev.write_all(&out) {
                    // EPIPE: host went away; the reply is lost, as with qemu-ga.
                    log::warn!("write to {path} failed: {e}");
                    if e.raw_os_error() != Some(libc::EPIPE) {
                        break;
                    }
                }
            }
            if out.capacity() > 4 * READ_BUF {
                out = Vec::with_capacity(READ_BUF);
            }
        }
        drop(dev);
        std::thread::sleep(RETRY_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_virtio_port_by_name() {
        let root = std::env::temp_dir().join(format!("virtagent-sysfs-{}", std::process::id()));
        for (port, name) in [
            ("vport0p1", "org.example.other"),
            ("vport1p2", "org.qemu.guest_agent.0"),
        ] {
            let d = root.join("class/virtio-ports").join(port);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_virtio_port(&root, "org.qemu.guest_agent.0"),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find_virtio_port(&root, "nope"), None);
        let _ = std::fs::remove_dir_all(root);
    }
}
