//! guest-file-open/close/read/write/seek/flush.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;

use base64::Engine;
use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

/// Default `count` of guest-file-read.
pub const READ_COUNT_DEFAULT: i64 = 4096;
/// Largest `count` of guest-file-read (48 MiB, as qemu-ga).
pub const READ_COUNT_MAX: i64 = 48 << 20;

/// Maps an fopen(3) mode to open(2) flags.
pub fn mode_flags(mode: &str) -> Option<libc::c_int> {
    use libc::{O_APPEND, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
    Some(match mode {
        "r" | "rb" => O_RDONLY,
        "w" | "wb" => O_WRONLY | O_CREAT | O_TRUNC,
        "a" | "ab" => O_WRONLY | O_CREAT | O_APPEND,
        "r+" | "rb+" | "r+b" => O_RDWR,
        "w+" | "wb+" | "w+b" => O_RDWR | O_CREAT | O_TRUNC,
        "a+" | "ab+" | "a+b" => O_RDWR | O_CREAT | O_APPEND,
        _ => return None,
    })
}

/// Decodes standard base64 with qemu-ga's error text.
pub fn decode_b64(s: &str) -> QgaResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|_| QgaError::generic("Base64 data contains invalid characters"))
}

/// guest-file-open.
pub fn open(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let path = a.str("path")?;
    let mode = a.opt_str("mode")?;
    a.finish()?;
    let mode = mode.unwrap_or_else(|| "r".into());
    let flags = mode_flags(&mode)
        .ok_or_else(|| QgaError::generic(format!("invalid file open mode '{mode}'")))?;
    let cpath = CString::new(std::ffi::OsStr::new(&path).as_bytes()).map_err(|_| {
        QgaError::generic(format!(
            "failed to open file '{path}' (mode: '{mode}'): Invalid argument"
        ))
    })?;
    // Opening a FIFO without a peer blocks: let a timeout interrupt it.
    ctx.cleanups.interrupt_me_on_timeout();
    // SAFETY: cpath is a valid NUL-terminated string; the mode argument is
    // only read with O_CREAT.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOCTTY,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(QgaError::io(
            format_args!("failed to open file '{path}' (mode: '{mode}')"),
            &e,
        ));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    // Like qemu-ga: non-blocking, so reads of an empty pipe do not hang.
    let _ = evloop::set_nonblocking(fd);
    let h = ctx
        .shared
        .files
        .lock()
        .map_err(|_| QgaError::generic("internal error"))?
        .insert(file)?;
    log::info!("guest-file-open, handle: {h}");
    Ok(json!(h))
}

fn lookup(ctx: &Ctx, handle: i64) -> QgaResult<std::sync::Arc<File>> {
    ctx.shared
        .files
        .lock()
        .map_err(|_| QgaError::generic("internal error"))?
        .get(handle)
}

/// guest-file-close.
pub fn close(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let handle = a.int("handle")?;
    a.finish()?;
    let f = ctx
        .shared
        .files
        .lock()
        .map_err(|_| QgaError::generic("internal error"))?
        .remove(handle)?;
    drop(f);
    log::info!("guest-file-close called, handle: {handle}");
    Ok(json!({}))
}

/// guest-file-read.
pub fn read(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let handle = a.int("handle")?;
    let count = a.opt_int("count")?;
    a.finish()?;
    let file = lookup(ctx, handle)?;
    let count = count.unwrap_or(READ_COUNT_DEFAULT);
    if !(0..=READ_COUNT_MAX).contains(&count) {
        return Err(QgaError::generic(format!(
            "value '{count}' is invalid for argument count"
        )));
    }
    ctx.cleanups.interrupt_me_on_timeout();
    let count = count as usize;
    // Capacity only: pages are not touched (nor zeroed) beyond what is read.
    let mut buf = Vec::with_capacity(count);
    let eof = match (&*file).take(count as u64).read_to_end(&mut buf) {
        Ok(_) => buf.len() < count,
        // Non-blocking file with no more data for now: return what we have.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !buf.is_empty() => false,
        Err(e) => return Err(QgaError::io("failed to read file", &e)),
    };
    let got = buf.len();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&buf);
    Ok(json!({"count": got, "buf-b64": b64, "eof": eof}))
}

/// guest-file-write.
pub fn write(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let handle = a.int("handle")?;
    let b64 = a.str("buf-b64")?;
    let count = a.opt_int("count")?;
    a.finish()?;
    let file = lookup(ctx, handle)?;
    let data = decode_b64(&b64)?;
    let count = match count {
        None => data.len(),
        Some(c) if c >= 0 && (c as u64) <= data.len() as u64 => c as usize,
        Some(c) => {
            return Err(QgaError::generic(format!(
                "value '{c}' is invalid for argument count"
            )))
        }
    };
    ctx.cleanups.interrupt_me_on_timeout();
    let mut done = 0;
    while done < count {
        match (&*file).write(&data[done..count]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && done > 0 => break,
            Err(e) => return Err(QgaError::io("failed to write to file", &e)),
        }
    }
    Ok(json!({"count": done, "eof": false}))
}

/// guest-file-seek.
pub fn seek(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let handle = a.int("handle")?;
    let offset = a.int("offset")?;
    let whence_name = a.name_of("whence");
    let whence = a.raw("whence")?;
    let whence = match whence {
        Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or(-1)),
        Value::String(s) => match s.as_str() {
            "set" => Ok(0),
            "cur" => Ok(1),
            "end" => Ok(2),
            _ => {
                return Err(QgaError::generic(format!(
                    "Parameter '{whence_name}' does not accept value '{s}'"
                )));
            }
        },
        _ => {
            return Err(QgaError::generic(format!(
                "Invalid parameter type for '{whence_name}', expected: GuestFileWhence"
            )))
        }
    };
    a.finish()?;
    let file = lookup(ctx, handle)?;
    let pos = match whence? {
        0 => {
            if offset < 0 {
                return Err(QgaError::generic("failed to seek file: Invalid argument"));
            }
            SeekFrom::Start(offset as u64)
        }
        1 => SeekFrom::Current(offset),
        2 => SeekFrom::End(offset),
        w => return Err(QgaError::generic(format!("invalid whence code {w}"))),
    };
    let p = (&*file)
        .seek(pos)
        .map_err(|e| QgaError::io("failed to seek file", &e))?;
    Ok(json!({"position": p, "eof": false}))
}

/// guest-file-flush.
pub fn flush(ctx: &Ctx, mut a: Args) -> QgaResult<Value> {
    let handle = a.int("handle")?;
    a.finish()?;
    let file = lookup(ctx, handle)?;
    (&*file)
        .flush()
        .map_err(|e| QgaError::io("failed to flush file", &e))?;
    Ok(json!({}))
}
