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
//! separators, every non-ASCII character as an upper-case `\uXXXX` escape).

mod parse;
mod write;

pub use parse::{ParseError, Parsed, Streamer, MAX_NESTING, MAX_TOKEN_COUNT, MAX_TOKEN_SIZE};
pub use write::write_value;
