//! Tables of open files, exec'd children and frozen filesystems.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{QgaError, QgaResult};

/// First handle number in a fresh state directory (as qemu-ga).
pub const FIRST_HANDLE: i64 = 1000;
/// Most files open at once through guest-file-open.
pub const MAX_OPEN_FILES: usize = 1024;

/// Open guest-file handles; the counter persists in `<statedir>/qga.state`.
#[derive(Debug)]
pub struct FileTable {
    next: i64,
    statefile: PathBuf,
    files: HashMap<i64, Arc<File>>,
}

fn read_counter(path: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_global = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_global = line == "[global]";
        } else if in_global {
            if let Some(v) = line.strip_prefix("fd_counter=") {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

impl FileTable {
    /// Loads the handle counter from `statedir` (or starts at 1000).
    pub fn load(statedir: &Path) -> Self {
        let statefile = statedir.join("qga.state");
        let next = read_counter(&statefile)
            .filter(|n| *n >= 0)
            .unwrap_or(FIRST_HANDLE);
        FileTable {
            next,
            statefile,
            files: HashMap::new(),
        }
    }

    /// Registers an open file and returns its new handle.
    pub fn insert(&mut self, f: File) -> QgaResult<i64> {
        if self.files.len() >= MAX_OPEN_FILES {
            return Err(QgaError::generic("too many open files"));
        }
        let h = self.next;
        let next = if h == i64::MAX { FIRST_HANDLE } else { h + 1 };
        let text = format!("[global]\nfd_counter={next}\n");
        if let Err(e) = std::fs::write(&self.statefile, text) {
            return Err(QgaError::io(
                "failed to commit persistent state to disk",
                &e,
            ));
        }
        self.next = next;
        self.files.insert(h, Arc::new(f));
        Ok(h)
    }

    /// The file behind `handle`.
    pub fn get(&self, handle: i64) -> QgaResult<Arc<File>> {
        self.files
            .get(&handle)
            .cloned()
            .ok_or_else(|| not_found(handle))
    }

    /// Removes `handle`, returning its file.
    pub fn remove(&mut self, handle: i64) -> QgaResult<Arc<File>> {
        self.files.remove(&handle).ok_or_else(|| not_found(handle))
    }
}

fn not_found(handle: i64) -> QgaError {
    QgaError::generic(format!("handle '{handle}' has not been found"))
}

/// Captured output of one stream of a child.
#[derive(Debug, Default)]
pub struct Captured {
    /// Bytes kept (at most the capture cap).
    pub data: Vec<u8>,
    /// True when output beyond the cap was dropped.
    pub truncated: bool,
}

/// One guest-exec child.
#[derive(Debug, Default)]
pub struct ExecInfo {
    /// Set once the child was reaped and its output fully read.
    pub exited: bool,
    /// Exit code (normal exit).
    pub exitcode: Option<i32>,
    /// Terminating signal.
    pub signal: Option<i32>,
    /// Captured stdout, when captured.
    pub out: Option<Captured>,
    /// Captured stderr, when captured.
    pub err: Option<Captured>,
    /// Parts still outstanding before `exited`: the child's exit status and
    /// each captured stream's end of file.
    pub pending: u8,
}

/// guest-exec children by pid.
#[derive(Debug, Default)]
pub struct ExecTable {
    /// Children not yet reported as exited.
    pub children: HashMap<i64, Arc<Mutex<ExecInfo>>>,
}

/// Filesystems currently frozen by the agent (mount points, in freeze order).
#[derive(Debug, Default)]
pub struct FreezeState {
    /// Mount points frozen, thawed in reverse order.
    pub frozen: Vec<PathBuf>,
}
