//! qemu-ga error replies.

use serde_json::{json, Value};

/// The error classes qemu-ga puts in `{"error": {"class": ...}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything except unknown or disabled commands.
    GenericError,
    /// Unknown, blocked or (while frozen) disabled commands.
    CommandNotFound,
}

impl ErrorClass {
    /// The wire name of the class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// An error reply: class plus human readable description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QgaError {
    /// Error class.
    pub class: ErrorClass,
    /// Description text.
    pub desc: String,
}

impl QgaError {
    /// A `GenericError` with the given text.
    pub fn generic(desc: impl Into<String>) -> Self {
        QgaError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error with the given text.
    pub fn not_found(desc: impl Into<String>) -> Self {
        QgaError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// `"<what>: <strerror>"` from an I/O error, as qemu-ga's error_setg_errno.
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        QgaError::generic(format!("{what}: {}", strerror(e)))
    }

    /// The `{"class","desc"}` object.
    pub fn to_json(&self) -> Value {
        json!({"class": self.class.as_str(), "desc": self.desc})
    }
}

/// The C library's message for an I/O error, without Rust's "(os error N)".
pub fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = e.to_string();
            match s.rfind(" (os error") {
                Some(i) => s[..i].to_string(),
                None => format!("errno {n}"),
            }
        }
        None => e.to_string(),
    }
}

/// Result type of command handlers.
pub type QgaResult<T> = Result<T, QgaError>;
