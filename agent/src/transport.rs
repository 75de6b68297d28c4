//! Channels between the host and the agent.
//!
//! * `unix-listen`: a listening unix socket, one client at a time; the
//!   parser state belongs to the agent, not to the connection (as qemu-ga).
//! * `virtio-serial`: the guest side of a virtio-serial port. EOF means the
//!   host side is not connected: retry every 100 ms. I/O errors (port gone)
//!   close the device and reopen it every 100 ms.
//! * `isa-serial`: a serial tty, put in raw mode, otherwise as virtio-serial.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
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
pub fn serve(agent: &mut Agent, method: Method, path: &str) -> std::io::Result<()> {
    match method {
        Method::UnixListen => serve_unix(agent, path),
        Method::VirtioSerial | Method::IsaSerial => {
            serve_device(agent, path, method == Method::IsaSerial)
        }
    }
}

/// Binds the listening socket (replacing a stale socket file).
pub fn bind_unix(path: &str) -> std::io::Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path)
}

fn serve_unix(agent: &mut Agent, path: &str) -> std::io::Result<()> {
    let listener = bind_unix(path)?;
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

fn open_device(path: &str, raw_tty: bool) -> std::io::Result<File> {
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
fn path_changed(path: &str, f: &File) -> bool {
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
        let mut dev = match open_device(path, raw_tty) {
            Ok(f) => {
                log::info!("opened {path}");
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
                    if path_changed(path, &dev) {
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
