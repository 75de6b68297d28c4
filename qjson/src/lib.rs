//! QEMU-compatible JSON on the wire, shared by the guest agent and the QMP monitor/proxy.
//!
//! QEMU's QMP monitor and qemu-ga read their input with the same json-lexer, json-streamer and
//! json-parser; [`Streamer`] reproduces them: bytes are tokenized one at a time, a message is
//! complete when the `{`/`[` depth returns to zero (no delimiter needed), lexical errors (0xFF,
//! control characters, malformed numbers) report QEMU's error text, drop the partial message and
//! make the lexer skip to the next structural character, single-quoted strings are accepted, and
//! total token size, token count and nesting depth are bounded.
//!
//! [`write_value`] writes JSON the way QEMU's `qobject_to_json` does (`", "` and `": "`
//! separators, every non-ASCII character as an upper-case `\uXXXX` escape, doubles as `%.17g`).
//!
//! Numbers too large for a double (`1e400`) are infinite in QEMU, which echoes them as `inf`.
//! `serde_json` has no infinite numbers, so [`double`] gives them as a stand-in string: a
//! noncharacter (U+FDD0, which the parser never lets through from input) and a random key drawn
//! once per process, so no text a peer controls (a guest's file name, a ringbuf's bytes) can
//! become one. The writer writes the stand-in back as QEMU writes the number; [`as_double`]
//! reads numbers of either kind, and [`is_non_finite`] tells the stand-in from a string.

mod parse;
mod write;

pub use parse::{ParseError, Parsed, Streamer, MAX_NESTING, MAX_TOKEN_COUNT, MAX_TOKEN_SIZE};
pub use write::write_value;

use serde_json::{Number, Value};

/// The prefix of the stand-ins for infinite doubles: U+FDD0 and this process's random key.
fn marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        format!("\u{FDD0}{:016x}:", h.finish())
    })
}

/// A double as a JSON value: a number when finite, else the stand-in for `inf`/`-inf`/`nan`.
pub fn double(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String(format!("{}nan", marker())),
        None if f < 0.0 => Value::String(format!("{}-inf", marker())),
        None => Value::String(format!("{}inf", marker())),
    }
}

/// The double a value stands for: a JSON number, or an infinite double made by [`double`].
pub fn as_double(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => non_finite_of(s),
        _ => None,
    }
}

/// True for the stand-in of an infinite double (which is a number, not a string).
pub fn is_non_finite(v: &Value) -> bool {
    matches!(v, Value::String(s) if non_finite_of(s).is_some())
}

fn non_finite_of(s: &str) -> Option<f64> {
    // Almost every string fails the first byte.
    if !s.starts_with('\u{FDD0}') {
        return None;
    }
    match s.strip_prefix(marker())? {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parser_makes_infinite_doubles() {
        let inf = double(f64::INFINITY);
        assert!(is_non_finite(&inf));
        assert_eq!(as_double(&inf), Some(f64::INFINITY));
        let mut out = Vec::new();
        write_value(&mut out, &inf);
        assert_eq!(out, b"inf");
        // Text a peer controls that looks like the stand-in's old fixed form stays a string.
        for forged in ["\u{FDD0}inf", "\u{FDD0}0000000000000000:inf"] {
            let v = Value::String(forged.into());
            assert!(!is_non_finite(&v));
            let mut out = Vec::new();
            write_value(&mut out, &v);
            assert!(
                out.starts_with(b"\"\\uFDD0"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
