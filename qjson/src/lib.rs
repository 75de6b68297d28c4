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
//! `serde_json` has no infinite numbers, so [`double`] gives them as a string that holds a
//! noncharacter (U+FDD0) the parser never lets through from input, and the writer writes that
//! string back as QEMU writes the number; [`as_double`] reads numbers of either kind.

mod parse;
mod write;

pub use parse::{ParseError, Parsed, Streamer, MAX_NESTING, MAX_TOKEN_COUNT, MAX_TOKEN_SIZE};
pub use write::write_value;

use serde_json::{Number, Value};

/// Prefix of the strings that stand for infinite doubles (see the crate docs).
const NON_FINITE: char = '\u{FDD0}';

/// A double as a JSON value: a number when finite, else the stand-in string for `inf`/`-inf`.
pub fn double(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String(format!("{NON_FINITE}nan")),
        None if f < 0.0 => Value::String(format!("{NON_FINITE}-inf")),
        None => Value::String(format!("{NON_FINITE}inf")),
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

fn non_finite_of(s: &str) -> Option<f64> {
    match s.strip_prefix(NON_FINITE)? {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => None,
    }
}
