//! The streaming parser: QEMU's json-lexer + json-streamer + json-parser.

use std::cell::Cell;

use serde_json::{Map, Value};

/// Default limit on the total size of a message's tokens, in bytes (QEMU: 64 MiB).
pub const MAX_TOKEN_SIZE: usize = 64 << 20;
/// Largest accepted number of tokens in one message (QEMU: 2^21).
pub const MAX_TOKEN_COUNT: usize = 1 << 21;
/// Default limit on the nesting of objects and arrays (QEMU: 1024).
pub const MAX_NESTING: usize = 1024;

/// What the streamer produced for one complete input message.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A syntactically valid JSON value (object or not: the caller checks the shape).
    Value(Value),
    /// A lexical or syntax error, or a limit; the partial message has been dropped.
    Error(ParseError),
}

/// Why a message could not be parsed. `Display` (and [`ParseError::desc`]) give QEMU's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A lexical or grammar error; the text is QEMU's detail, e.g. `stray '\u{fffd}'`,
    /// `invalid keyword 'bad'`, `expecting value`.
    #[error("JSON parse error, {0}")]
    Syntax(String),
    /// The message's tokens exceeded the size limit.
    #[error("JSON token size limit exceeded")]
    TooLarge,
    /// The message exceeded [`MAX_TOKEN_COUNT`] tokens.
    #[error("JSON token count limit exceeded")]
    TooManyTokens,
    /// The message exceeded the nesting limit.
    #[error("JSON nesting depth limit exceeded")]
    TooDeep,
}

impl ParseError {
    /// The `desc` text QEMU replies with for this error.
    pub fn desc(&self) -> String {
        self.to_string()
    }

    /// True for limit violations, after which a peer is usually not worth listening to.
    pub fn is_limit(&self) -> bool {
        !matches!(self, ParseError::Syntax(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Str,
    Int,
    Float,
    Keyword,
}

/// A token: its kind and the range of its raw text in the streamer's
/// arena (strings keep their quotes and escapes; their decoded text is in `Streamer::strings`).
#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: u32,
    end: u32,
}

/// The decoding of the string token being lexed, done as its bytes arrive: a megabyte string
/// costs the wakeup that completes it no more than the others (QEMU decodes it in one go when
/// the message is complete).
#[derive(Debug, Default)]
struct StrDecode {
    out: String,
    /// Bytes of the token's body (after the opening quote) decoded so far.
    pos: usize,
    /// The first decoding error; the rest of the token is not decoded.
    err: Option<String>,
}

/// Body bytes that arrive between two partial decodes of an open string token (a few bytes under
/// the fuzzer, whose inputs are short, so that it exercises the partial decodes).
#[cfg(not(fuzzing))]
const DECODE_STEP: usize = 64 << 10;
#[cfg(fuzzing)]
const DECODE_STEP: usize = 4;
/// Bytes an escape may look at from its `\` (`\uD83D\uDE00`).
const ESCAPE_LOOKAHEAD: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Start,
    Str(u8),
    StrEsc(u8),
    Neg,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
    Keyword,
    Recovery,
}

/// Incremental JSON message splitter and parser with QEMU semantics; feed it bytes, get
/// complete messages.
#[derive(Debug)]
pub struct Streamer {
    state: Lex,
    /// Text of all tokens of the message being assembled, back to back.
    arena: Vec<u8>,
    /// Where the token being lexed starts in `arena`.
    cur_start: usize,
    /// The string token being lexed, decoded so far.
    cur_str: StrDecode,
    /// The decoded string tokens of the message being assembled, in order.
    strings: Vec<Result<String, String>>,
    /// The message outgrew the size limit; it fails when the current token ends.
    doomed: bool,
    tokens: Vec<Token>,
    braces: i64,
    brackets: i64,
    max_size: usize,
    max_depth: usize,
}

impl Default for Streamer {
    fn default() -> Self {
        Self::new()
    }
}

fn is_structural(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':')
}

/// Bytes a string token takes as they are (everything but its quote, `\` and bytes the lexer
/// rejects), i.e. what the bulk path may copy without looking further.
fn is_plain_str_byte(b: u8, quote: u8) -> bool {
    (0x20..=0xFD).contains(&b) && b != quote && b != b'\\'
}

/// How many bytes at the start of `s` are plain string bytes (see [`is_plain_str_byte`]).
fn plain_str_run(s: &[u8], quote: u8) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `x` is below `n` (n <= 0x80): exact as a yes/no answer.
    let has_less = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGH != 0;
    let (q, bs) = (ONES * quote as u64, ONES * b'\\' as u64);
    let mut i = 0;
    // Eight bytes at a time while none of them is special (base64 payloads never are).
    while let Some(w) = s.get(i..i + 8) {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if has_less(w, 0x20) || has_less(w ^ q, 1) || has_less(w ^ bs, 1) || has_less(!w, 2) {
            break;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&b| !is_plain_str_byte(b, quote))
        .unwrap_or(s.len() - i)
}

impl Streamer {
    /// A streamer with QEMU's limits ([`MAX_TOKEN_SIZE`], [`MAX_NESTING`]).
    pub fn new() -> Self {
        Self::with_limits(MAX_TOKEN_SIZE, MAX_NESTING)
    }

    /// A streamer with other limits on the total token size of one message (bytes) and on
    /// nesting depth (at most [`MAX_NESTING`], which bounds the parser's recursion); the token
    /// count limit is always [`MAX_TOKEN_COUNT`].
    pub fn with_limits(max_size: usize, max_depth: usize) -> Self {
        // Token offsets are u32.
        let max_size = max_size.min(u32::MAX as usize - 1);
        let max_depth = max_depth.min(MAX_NESTING);
        Streamer {
            state: Lex::Start,
            arena: Vec::new(),
            cur_start: 0,
            cur_str: StrDecode::default(),
            strings: Vec::new(),
            doomed: false,
            tokens: Vec::new(),
            braces: 0,
            brackets: 0,
            max_size,
            max_depth,
        }
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.tokens.is_empty() && self.arena.is_empty() && matches!(self.state, Lex::Start)
    }

    /// Bytes of token text of the partial message held now.
    pub fn pending_len(&self) -> usize {
        self.arena.len()
    }

    /// Drops any partial message and returns to the initial state (also out of error recovery).
    pub fn reset(&mut self) {
        self.reset_stream();
        self.state = Lex::Start;
    }

    fn reset_stream(&mut self) {
        self.tokens.clear();
        self.arena.clear();
        self.cur_start = 0;
        self.cur_str = StrDecode::default();
        self.strings.clear();
        self.doomed = false;
        // Give back memory after a huge message.
        if self.arena.capacity() > 1 << 20 {
            self.arena.shrink_to(4096);
        }
        if self.tokens.capacity() > 1 << 16 {
            self.tokens.shrink_to(64);
        }
        self.braces = 0;
        self.brackets = 0;
    }

    /// Feeds `data`; calls `out` for each completed message or error, in order. Returns the
    /// number of bytes consumed: all of `data`, unless `out` returns `false`, which stops after
    /// the byte that completed that message (the rest is not looked at; a second message that
    /// same byte completes is still passed to `out`).
    pub fn feed(&mut self, data: &[u8], mut out: impl FnMut(Parsed) -> bool) -> usize {
        let go_on = Cell::new(true);
        let mut sink = |p: Parsed| {
            if !out(p) {
                go_on.set(false);
            }
        };
        let mut i = 0;
        while i < data.len() {
            // Fast path: the plain bytes of a string (base64 payloads are megabytes of them)
            // are copied in one go; only bytes that change the state go through `feed_byte`.
            if let Lex::Str(q) = self.state {
                let rest = &data[i..];
                let run = plain_str_run(rest, q);
                if run > 0 {
                    let token_len = self.arena.len() - self.cur_start;
                    let n = run.min(self.max_size.saturating_sub(token_len));
                    self.arena.extend_from_slice(&rest[..n]);
                    i += n;
                    self.check_size(&mut sink);
                    if n == run {
                        continue;
                    }
                    // The next byte makes the token too long; `feed_byte` reports it.
                }
            }
            self.feed_byte(data[i], &mut sink);
            i += 1;
            if !go_on.get() {
                break;
            }
        }
        self.decode_progress();
        i
    }

    /// Decodes what has arrived of an open string token, once enough has (see [`StrDecode`]).
    fn decode_progress(&mut self) {
        if !matches!(self.state, Lex::Str(_) | Lex::StrEsc(_)) {
            return;
        }
        let raw = &self.arena[self.cur_start..];
        let body_len = raw.len() - 1;
        let st = &mut self.cur_str;
        if st.err.is_none() && body_len >= st.pos + DECODE_STEP {
            decode_str(raw, body_len, st, false);
        }
    }

    fn lex_error(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        self.arena.push(b);
        let text = String::from_utf8_lossy(&self.arena[self.cur_start..]).into_owned();
        self.reset_stream();
        self.state = Lex::Recovery;
        out(Parsed::Error(ParseError::Syntax(format!("stray '{text}'"))));
    }

    fn finish(&mut self, kind: Kind, out: &mut dyn FnMut(Parsed)) {
        if kind == Kind::Str {
            let raw = &self.arena[self.cur_start..];
            let mut st = std::mem::take(&mut self.cur_str);
            decode_str(raw, raw.len().saturating_sub(2), &mut st, true);
            self.strings.push(match st.err {
                Some(e) => Err(e),
                None => Ok(st.out),
            });
        }
        let tok = Token {
            kind,
            start: self.cur_start as u32,
            end: self.arena.len() as u32,
        };
        self.cur_start = self.arena.len();
        self.state = Lex::Start;
        self.push_token(tok, out);
    }

    #[inline]
    fn feed_byte(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        // A loop because a byte that terminates a number or keyword is then
        // processed again from the start state.
        loop {
            match self.state {
                Lex::Recovery => {
                    // QEMU's IN_RECOVERY: skip to a structural character, a control
                    // character other than tab (line ends included), 0xFE or 0xFF.
                    if is_structural(b) || (b < 0x20 && b != b'\t') || b >= 0xFE {
                        self.state = Lex::Start;
                        continue;
                    }
                    return;
                }
                Lex::Start => {
                    let kind = match b {
                        b' ' | b'\t' | b'\r' | b'\n' => return,
                        b'{' => Kind::LCurly,
                        b'}' => Kind::RCurly,
                        b'[' => Kind::LSquare,
                        b']' => Kind::RSquare,
                        b':' => Kind::Colon,
                        b',' => Kind::Comma,
                        b'"' | b'\'' => {
                            self.state = Lex::Str(b);
                            self.cur_str = StrDecode::default();
                            self.arena.push(b);
                            return;
                        }
                        b'-' => {
                            self.state = Lex::Neg;
                            self.arena.push(b);
                            return;
                        }
                        b'0' => {
                            self.state = Lex::Zero;
                            self.arena.push(b);
                            return;
                        }
                        b'1'..=b'9' => {
                            self.state = Lex::Int;
                            self.arena.push(b);
                            return;
                        }
                        b'a'..=b'z' => {
                            self.state = Lex::Keyword;
                            self.arena.push(b);
                            return;
                        }
                        _ => return self.lex_error(b, out),
                    };
                    self.arena.push(b);
                    return self.finish(kind, out);
                }
                Lex::Str(q) => {
                    if b == q {
                        self.arena.push(b);
                        return self.finish(Kind::Str, out);
                    }
                    match b {
                        b'\\' => self.state = Lex::StrEsc(q),
                        0x20..=0xFD => {}
                        _ => return self.lex_error(b, out),
                    }
                    return self.push_cur(b, out);
                }
                Lex::StrEsc(q) => {
                    if !(0x20..=0xFD).contains(&b) {
                        return self.lex_error(b, out);
                    }
                    self.state = Lex::Str(q);
                    return self.push_cur(b, out);
                }
                Lex::Neg => match b {
                    b'0' => {
                        self.state = Lex::Zero;
                        return self.push_cur(b, out);
                    }
                    b'1'..=b'9' => {
                        self.state = Lex::Int;
                        return self.push_cur(b, out);
                    }
                    _ => return self.lex_error(b, out),
                },
                // After a leading 0 no digit may follow (QEMU: `01` is two errors).
                Lex::Zero | Lex::Int => match b {
                    b'0'..=b'9' if self.state == Lex::Zero => return self.lex_error(b, out),
                    b'0'..=b'9' => return self.push_cur(b, out),
                    b'.' => {
                        self.state = Lex::Dot;
                        return self.push_cur(b, out);
                    }
                    b'e' | b'E' => {
                        self.state = Lex::Exp;
                        return self.push_cur(b, out);
                    }
                    _ => {
                        self.finish(Kind::Int, out);
                        continue;
                    }
                },
                Lex::Dot => match b {
                    b'0'..=b'9' => {
                        self.state = Lex::Frac;
                        return self.push_cur(b, out);
                    }
                    _ => return self.lex_error(b, out),
                },
                Lex::Frac => match b {
                    b'0'..=b'9' => return self.push_cur(b, out),
                    b'e' | b'E' => {
                        self.state = Lex::Exp;
                        return self.push_cur(b, out);
                    }
                    _ => {
                        self.finish(Kind::Float, out);
                        continue;
                    }
                },
                Lex::Exp => match b {
                    b'+' | b'-' => {
                        self.state = Lex::ExpSign;
                        return self.push_cur(b, out);
                    }
                    b'0'..=b'9' => {
                        self.state = Lex::ExpDigits;
                        return self.push_cur(b, out);
                    }
                    _ => return self.lex_error(b, out),
                },
                Lex::ExpSign => match b {
                    b'0'..=b'9' => {
                        self.state = Lex::ExpDigits;
                        return self.push_cur(b, out);
                    }
                    _ => return self.lex_error(b, out),
                },
                Lex::ExpDigits => match b {
                    b'0'..=b'9' => return self.push_cur(b, out),
                    _ => {
                        self.finish(Kind::Float, out);
                        continue;
                    }
                },
                Lex::Keyword => match b {
                    b'a'..=b'z' => return self.push_cur(b, out),
                    _ => {
                        self.finish(Kind::Keyword, out);
                        continue;
                    }
                },
            }
        }
    }

    /// Appends a byte to the token being lexed, enforcing the size limit.
    #[inline]
    fn push_cur(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        self.arena.push(b);
        self.check_size(out);
    }

    /// The size limits while a token grows, as QEMU: a token alone longer than the limit is
    /// cut off with an error and lexing starts afresh after it; a message whose tokens
    /// together outgrow it fails when the current token ends (see [`Self::push_token`]).
    #[inline]
    fn check_size(&mut self, out: &mut dyn FnMut(Parsed)) {
        // Both cases below need the total over the limit: one comparison on the hot path.
        if self.arena.len() <= self.max_size {
            return;
        }
        if self.arena.len() - self.cur_start > self.max_size {
            self.reset_stream();
            self.state = Lex::Start;
            out(Parsed::Error(ParseError::TooLarge));
        } else if !self.doomed {
            // The message is lost whatever follows: keep only the token being lexed (a
            // lexical error would quote it), so memory stays within the limit.
            self.arena.drain(..self.cur_start);
            self.cur_start = 0;
            self.tokens.clear();
            self.strings.clear();
            // Nothing of it will be parsed: stop decoding the current string.
            self.cur_str = StrDecode {
                err: Some(String::new()),
                ..StrDecode::default()
            };
            self.doomed = true;
        }
    }

    fn push_token(&mut self, tok: Token, out: &mut dyn FnMut(Parsed)) {
        match tok.kind {
            Kind::LCurly => self.braces += 1,
            Kind::RCurly => self.braces -= 1,
            Kind::LSquare => self.brackets += 1,
            Kind::RSquare => self.brackets -= 1,
            _ => {}
        }
        // As QEMU's json-streamer: the limits are checked before the token joins the
        // message, even when it is the one that would complete it.
        let err = if self.doomed || self.arena.len() + 1 > self.max_size {
            Some(ParseError::TooLarge)
        } else if self.tokens.len() + 1 > MAX_TOKEN_COUNT {
            Some(ParseError::TooManyTokens)
        } else if self.braces + self.brackets > self.max_depth as i64 {
            Some(ParseError::TooDeep)
        } else {
            None
        };
        if let Some(e) = err {
            self.reset_stream();
            out(Parsed::Error(e));
            return;
        }
        self.tokens.push(tok);
        if self.braces < 0 || self.brackets < 0 || (self.braces == 0 && self.brackets == 0) {
            let strings = std::mem::take(&mut self.strings);
            let parsed = parse_tokens(&self.tokens, &self.arena, strings);
            self.reset_stream();
            out(parsed);
        }
    }
}

fn parse_tokens(tokens: &[Token], arena: &[u8], strings: Vec<Result<String, String>>) -> Parsed {
    let mut p = TokenParser {
        toks: tokens,
        arena,
        strings: strings.into_iter(),
        pos: 0,
    };
    match p.value() {
        Ok(v) => {
            if p.pos != tokens.len() {
                Parsed::Error(ParseError::Syntax("expecting value".into()))
            } else {
                Parsed::Value(v)
            }
        }
        Err(e) => Parsed::Error(ParseError::Syntax(e)),
    }
}

struct TokenParser<'a> {
    toks: &'a [Token],
    arena: &'a [u8],
    /// The decoded string tokens, taken in token order.
    strings: std::vec::IntoIter<Result<String, String>>,
    pos: usize,
}

impl<'a> TokenParser<'a> {
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).copied();
        self.pos += 1;
        t
    }

    fn text(&self, t: Token) -> &'a [u8] {
        &self.arena[t.start as usize..t.end as usize]
    }

    fn peek_kind(&self) -> Option<Kind> {
        self.toks.get(self.pos).map(|t| t.kind)
    }

    fn value(&mut self) -> Result<Value, String> {
        let Some(t) = self.next() else {
            return Err("premature EOI".into());
        };
        match t.kind {
            Kind::LCurly => self.object(),
            Kind::LSquare => self.array(),
            Kind::Str => Ok(Value::String(
                self.strings
                    .next()
                    .unwrap_or(Err("expecting value".into()))?,
            )),
            Kind::Int => Ok(parse_int(self.text(t))),
            Kind::Float => {
                let s = std::str::from_utf8(self.text(t)).map_err(|_| "expecting value")?;
                let f: f64 = s.parse().map_err(|_| "expecting value")?;
                Ok(crate::double(f))
            }
            Kind::Keyword => match self.text(t) {
                b"true" => Ok(Value::Bool(true)),
                b"false" => Ok(Value::Bool(false)),
                b"null" => Ok(Value::Null),
                other => Err(format!(
                    "invalid keyword '{}'",
                    String::from_utf8_lossy(other)
                )),
            },
            _ => Err("expecting value".into()),
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        let mut map = Map::new();
        if self.peek_kind() == Some(Kind::RCurly) {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            // As QEMU's parse_pair: the key is parsed as any value, then must be a string.
            let key = match self.value()? {
                Value::String(k) => k,
                _ => return Err("key is not a string in object".into()),
            };
            match self.next() {
                Some(t) if t.kind == Kind::Colon => {}
                Some(_) => return Err("missing : in object pair".into()),
                None => return Err("premature EOI".into()),
            }
            let v = self.value()?;
            if map.insert(key, v).is_some() {
                return Err("duplicate key".into());
            }
            match self.next() {
                Some(t) if t.kind == Kind::Comma => {}
                Some(t) if t.kind == Kind::RCurly => return Ok(Value::Object(map)),
                Some(_) => return Err("expected separator in dict".into()),
                None => return Err("premature EOI".into()),
            }
        }
    }

    fn array(&mut self) -> Result<Value, String> {
        let mut v = Vec::new();
        if self.peek_kind() == Some(Kind::RSquare) {
            self.pos += 1;
            return Ok(Value::Array(v));
        }
        loop {
            v.push(self.value()?);
            match self.next() {
                Some(t) if t.kind == Kind::Comma => {}
                Some(t) if t.kind == Kind::RSquare => return Ok(Value::Array(v)),
                Some(_) => return Err("expected separator in list".into()),
                None => return Err("premature EOI".into()),
            }
        }
    }
}

fn parse_int(text: &[u8]) -> Value {
    let s = std::str::from_utf8(text).unwrap_or("0");
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::from(u);
    }
    crate::double(s.parse().unwrap_or(0.0))
}

const BAD_UTF8: &str = "invalid UTF-8 sequence in string";

/// QEMU's `cvt4hex`: the value of the four hex digits at the start of `s`, if they are.
fn hex4(s: &[u8]) -> Option<u32> {
    let digits = s.get(..4)?;
    let mut v = 0u32;
    for &c in digits {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// QEMU's `is_valid_codepoint`: Unicode scalar values that are not noncharacters.
fn is_valid_codepoint(cp: u32) -> bool {
    cp <= 0x10FFFF
        && !(0xFDD0..=0xFDEF).contains(&cp)
        && cp & 0xFFFE != 0xFFFE
        && !(0xD800..=0xDFFF).contains(&cp)
}

/// Appends raw (unescaped) string bytes with QEMU's `mod_utf8_codepoint` rules: UTF-8 without
/// noncharacters, plus `C0 80` for U+0000 (modified UTF-8).
fn push_raw(out: &mut String, mut s: &[u8]) -> Result<(), String> {
    loop {
        let (good, rest) = match std::str::from_utf8(s) {
            Ok(t) => (t, &[][..]),
            Err(e) => {
                let (good, rest) = s.split_at(e.valid_up_to());
                (std::str::from_utf8(good).map_err(|_| BAD_UTF8)?, rest)
            }
        };
        if !good.is_ascii() && good.chars().any(|c| !is_valid_codepoint(c as u32)) {
            return Err(BAD_UTF8.into());
        }
        out.push_str(good);
        match rest {
            [] => return Ok(()),
            [0xC0, 0x80, tail @ ..] => {
                out.push('\0');
                s = tail;
            }
            _ => return Err(BAD_UTF8.into()),
        }
    }
}

/// Decodes a string token the way QEMU's `parse_string` does, with its error texts, the first
/// error from the left winning. `raw` is the token's text from its opening quote; `body_len`
/// bytes after the quote are its body. `done`: the token is complete (`raw` ends with the
/// closing quote, which a `\u` at the very end reads as QEMU does); otherwise decoding stops
/// before an escape whose lookahead has not all arrived and before an unfinished UTF-8
/// character, and a later call goes on from `st.pos` with the same result as one call at the end.
fn decode_str(raw: &[u8], body_len: usize, st: &mut StrDecode, done: bool) {
    if st.err.is_some() {
        return;
    }
    let body = &raw[1..1 + body_len];
    if let Err(e) = decode_body(raw, body, st, done) {
        st.err = Some(e);
    }
}

/// How much of `b` (the end of what has arrived) can be decoded now: all of it, less an
/// unfinished UTF-8 sequence at its end (a lead byte followed by fewer continuation bytes than it
/// needs). At most 3 bytes are held back, so stray continuation bytes are decoded (and refused)
/// at once instead of waiting for the end of the token.
fn complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(4) {
        let c = b[n - back];
        if c & 0xC0 != 0x80 {
            let need = match c {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if need > back { n - back } else { n };
        }
    }
    n
}

fn decode_body(raw: &[u8], body: &[u8], st: &mut StrDecode, done: bool) -> Result<(), String> {
    let out = &mut st.out;
    let mut i = st.pos;
    loop {
        // The run up to the next escape in one go.
        let run = body[i..]
            .iter()
            .position(|&c| c == b'\\')
            .unwrap_or(body.len() - i);
        let mut take = run;
        if !done && i + run == body.len() {
            // More may follow: stop before a character that may be unfinished.
            take = complete_prefix(&body[i..i + run]);
        }
        push_raw(out, &body[i..i + take])?;
        i += take;
        if take < run || i == body.len() {
            st.pos = i;
            return Ok(());
        }
        if !done && i + ESCAPE_LOOKAHEAD > body.len() {
            st.pos = i;
            return Ok(());
        }
        let esc = i;
        let e = *body.get(i + 1).ok_or("invalid escape sequence in string")?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\'' => '\'',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                // As QEMU: four hex digits (the closing quote may be read as one of them),
                // a leading surrogate pairs only with a following `\u` trailing one, and the
                // error shows the source text from the `\` over the four digits.
                let mut cp = hex4(&raw[1 + i..]);
                i += 4;
                if let Some(hi @ 0xD800..=0xDBFF) = cp {
                    if body.get(i) == Some(&b'\\') && body.get(i + 1) == Some(&b'u') {
                        cp = match hex4(&raw[1 + i + 2..]) {
                            Some(lo @ 0xDC00..=0xDFFF) => {
                                i += 6;
                                Some(0x10000 + ((hi & 0x3FF) << 10) + (lo & 0x3FF))
                            }
                            _ => None,
                        };
                    }
                }
                match cp
                    .filter(|&c| is_valid_codepoint(c))
                    .and_then(char::from_u32)
                {
                    Some(c) => c,
                    None => {
                        let text = &raw[1 + esc..(1 + i).min(raw.len())];
                        return Err(format!(
                            "{} is not a valid Unicode character",
                            String::from_utf8_lossy(text)
                        ));
                    }
                }
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        out.push(ch);
        // Past the end of the body only when `done` (a `\u` that read the closing quote).
        i = i.min(body.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every message `data` produces, fed in one call to a fresh streamer.
    fn run(input: &[u8]) -> Vec<Parsed> {
        all(&mut Streamer::new(), input)
    }

    fn all(p: &mut Streamer, data: &[u8]) -> Vec<Parsed> {
        let mut v = Vec::new();
        let n = p.feed(data, |m| {
            v.push(m);
            true
        });
        assert_eq!(n, data.len());
        v
    }

    fn is_err(p: &Parsed, text: &str) -> bool {
        matches!(p, Parsed::Error(e) if e.desc().contains(text))
    }

    // From the agent's former json.rs.

    #[test]
    fn several_objects_and_split_writes() {
        let v = run(br#"{"a":1}{"b":[1,2]} {"c":'x"y'}"#);
        assert_eq!(
            v,
            vec![
                Parsed::Value(json!({"a":1})),
                Parsed::Value(json!({"b":[1,2]})),
                Parsed::Value(json!({"c":"x\"y"}))
            ]
        );
        let mut s = Streamer::new();
        let mut got = Vec::new();
        for b in br#"{"execute": "guest-ping", "id": -12.5e1}"# {
            got.extend(all(&mut s, &[*b]));
        }
        assert_eq!(
            got,
            vec![Parsed::Value(json!({"execute":"guest-ping","id":-125.0}))]
        );
    }

    #[test]
    fn errors_reset_and_recover() {
        let v = run(b"{\"execute\":\"guest-ping\"\x01}\xff{\"a\":1}");
        assert_eq!(v.len(), 4);
        assert!(is_err(&v[0], "stray"));
        assert!(is_err(&v[1], "expecting value"));
        assert!(is_err(&v[2], "stray"));
        assert_eq!(v[3], Parsed::Value(json!({"a":1})));
        assert!(is_err(&run(b"bad ")[0], "invalid keyword 'bad'"));
        assert!(is_err(&run(b"{\"a\":1,\"a\":2}")[0], "duplicate"));
        assert!(matches!(&run(b"{\"a\":\"\\ud83d\"}")[0], Parsed::Error(_)));
        assert!(matches!(&run(b"{\"a\":\"\xc3\"}")[0], Parsed::Error(_)));
        assert!(run(b"42").is_empty(), "a number needs a terminator");
        assert_eq!(run(b"42 ")[0], Parsed::Value(json!(42)));
    }

    #[test]
    fn token_size_limit_resets() {
        let mut s = Streamer::new();
        let mut v = all(&mut s, b"{\"execute\":\"");
        let chunk = vec![b'a'; 1 << 20];
        // The string token (its quote and 64 MiB) gets one byte too long with the last byte.
        for _ in 0..MAX_TOKEN_SIZE >> 20 {
            v.extend(all(&mut s, &chunk));
        }
        assert!(
            matches!(&v[..], [Parsed::Error(e)] if e.desc().contains("size limit")),
            "{v:?}"
        );
        assert!(s.arena.capacity() < 1 << 20, "memory given back");
        // As QEMU's lexer, lexing starts afresh after the cut-off token.
        assert!(s.is_idle());
        let v = all(&mut s, b"\"x\" {\"a\":1}");
        assert_eq!(
            v,
            vec![Parsed::Value(json!("x")), Parsed::Value(json!({"a": 1}))]
        );
    }

    #[test]
    fn nesting_limit() {
        let deep = vec![b'['; MAX_NESTING + 10];
        let v = run(&deep);
        assert!(is_err(&v[0], "nesting"));
        // The deepest accepted message parses (the parser recurses once per level).
        let mut ok = vec![b'['; MAX_NESTING];
        ok.extend(vec![b']'; MAX_NESTING]);
        let v = run(&ok);
        assert!(matches!(&v[..], [Parsed::Value(_)]), "{v:?}");
        let mut ok = b"{\"a\":".repeat(MAX_NESTING - 1);
        ok.extend_from_slice(b"{}");
        ok.extend(vec![b'}'; MAX_NESTING - 1]);
        let v = run(&ok);
        assert!(matches!(&v[..], [Parsed::Value(_)]), "{v:?}");
    }

    #[test]
    fn limits_as_qemu() {
        // (Checked against QEMU 7.2 at 64 MiB and 2^21 tokens by tests/qemu_oracle.rs.)
        let m = 16;
        let fill = |n: usize| {
            let mut v = b"[\"".to_vec();
            v.resize(n + 2, b'a');
            v.extend_from_slice(b"\"]");
            v
        };
        let mut p = Streamer::with_limits(m, 8);
        // The total is checked before a token joins, even the one closing the message.
        assert_eq!(
            all(&mut p, &fill(m - 5)),
            vec![Parsed::Value(json!(["a".repeat(m - 5)]))]
        );
        assert_eq!(
            all(&mut p, &fill(m - 4)),
            vec![Parsed::Error(ParseError::TooLarge)]
        );
        assert!(p.is_idle());
        // A token alone longer than the limit is cut off; lexing starts afresh after it.
        let mut v = vec![b'"'];
        v.resize(m + 1, b'a');
        v.extend_from_slice(b"b\" ");
        assert_eq!(
            all(&mut p, &v),
            vec![
                Parsed::Error(ParseError::TooLarge),
                Parsed::Error(ParseError::Syntax("invalid keyword 'b'".into()))
            ]
        );
        p.reset();
        // A message that outgrew the limit inside a token still reports that token's
        // lexical error, with its text.
        let r = all(&mut p, b"[\"aaaaaaaaaa\", \"bcdefghijklmn\x01]");
        assert_eq!(
            r,
            vec![
                Parsed::Error(ParseError::Syntax("stray '\"bcdefghijklmn\u{1}'".into())),
                Parsed::Error(ParseError::Syntax("expecting value".into()))
            ]
        );
        assert!(p.pending_len() <= m + 1);
        // Token count: the token after the 2^21st fails, even a closing bracket.
        let mut v = b"[".to_vec();
        v.extend(b"1,".repeat((1 << 20) - 1));
        v.extend_from_slice(b"1]");
        let r = run(&v);
        assert_eq!(r, vec![Parsed::Error(ParseError::TooManyTokens)]);
        assert!(ParseError::TooManyTokens.is_limit());
        v.truncate(v.len() - 3);
        v.extend_from_slice(b"]");
        let r = run(&v);
        assert!(matches!(&r[..], [Parsed::Value(Value::Array(a))] if a.len() == (1 << 20) - 1));
    }

    // From qmp's former parser.rs.

    #[test]
    fn splits_back_to_back_and_partial_messages() {
        let mut p = Streamer::default();
        let r = all(&mut p, br#"{"a":1}{"b":[1,{"c":"}"}]}  {"d""#);
        assert_eq!(
            r,
            vec![
                Parsed::Value(json!({"a":1})),
                Parsed::Value(json!({"b":[1,{"c":"}"}]}))
            ]
        );
        assert!(!p.is_idle());
        let r = all(&mut p, b":2}\n");
        assert_eq!(r, vec![Parsed::Value(json!({"d":2}))]);
        assert!(p.is_idle());
    }

    #[test]
    fn byte_at_a_time() {
        let mut p = Streamer::default();
        let mut out = Vec::new();
        for b in br#"{"execute":"x","arguments":{"s":"a\"b\\"}}"# {
            out.extend(all(&mut p, &[*b]));
        }
        assert_eq!(
            out,
            vec![Parsed::Value(
                json!({"execute":"x","arguments":{"s":"a\"b\\"}})
            )]
        );
    }

    #[test]
    fn single_quotes_are_accepted() {
        let r = run(br#"{'execute':'it"s','x':'a\'b'}"#);
        assert_eq!(r, vec![Parsed::Value(json!({"execute":"it\"s","x":"a'b"}))]);
    }

    #[test]
    fn stray_bytes_reset() {
        let mut p = Streamer::default();
        let r = all(&mut p, b"{\"a\":\xff{\"b\":1}");
        assert_eq!(r.len(), 2);
        // QEMU's text: the offending token, invalid UTF-8 shown as U+FFFD.
        assert_eq!(
            r[0],
            Parsed::Error(ParseError::Syntax("stray '\u{fffd}'".into()))
        );
        assert_eq!(r[1], Parsed::Value(json!({"b":1})));
        let r = all(&mut p, b"\x01");
        assert_eq!(
            r,
            vec![Parsed::Error(ParseError::Syntax("stray '\u{1}'".into()))]
        );
        // Inside a string, the stray token is the string so far.
        let r = run(b"{\"a\":\"xy\x01\"}");
        assert_eq!(
            r[0],
            Parsed::Error(ParseError::Syntax("stray '\"xy\u{1}'".into()))
        );
        assert_eq!(
            ParseError::Syntax("stray '\u{fffd}'".into()).desc(),
            "JSON parse error, stray '\u{fffd}'"
        );
    }

    #[test]
    fn scalars_and_garbage() {
        let mut p = Streamer::default();
        let r = all(&mut p, b"42 bad {\"a\":1}");
        assert_eq!(r[0], Parsed::Value(json!(42)));
        assert_eq!(
            r[1],
            Parsed::Error(ParseError::Syntax("invalid keyword 'bad'".into()))
        );
        assert_eq!(r[2], Parsed::Value(json!({"a":1})));
        let r = all(&mut p, b"}");
        assert_eq!(
            r,
            vec![Parsed::Error(ParseError::Syntax("expecting value".into()))]
        );
        let r = all(&mut p, b"{\"a\" 1}");
        assert_eq!(
            r,
            vec![Parsed::Error(ParseError::Syntax(
                "missing : in object pair".into()
            ))]
        );
    }

    #[test]
    fn limits_bound_memory() {
        let mut p = Streamer::with_limits(1000, 8);
        let r = all(&mut p, &[b'['; 9]);
        assert_eq!(r, vec![Parsed::Error(ParseError::TooDeep)]);
        assert!(ParseError::TooDeep.is_limit());
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 5000));
        let r = all(&mut p, &big);
        assert!(r.contains(&Parsed::Error(ParseError::TooLarge)));
        assert!(ParseError::TooLarge.is_limit());
        assert!(p.pending_len() <= 1000);
    }

    #[test]
    fn bulk_and_byte_at_a_time_agree() {
        let input: &[u8] =
            br#"{"a":"plain text then \"esc\" and 'single'",'b':'it"s \' x',"c":["\u00e9"]}"#;
        let a = run(input);
        let mut bytes = Streamer::default();
        let mut b = Vec::new();
        for x in input {
            b.extend(all(&mut bytes, &[*x]));
        }
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        // The size limit holds inside long strings too.
        let mut p = Streamer::with_limits(64, 8);
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 500));
        let r = all(&mut p, &big);
        assert!(r.contains(&Parsed::Error(ParseError::TooLarge)), "{r:?}");
        assert!(p.pending_len() <= 64);
    }

    /// Long strings are decoded while they arrive: whatever the chunking, the messages (and
    /// errors) are those of one feed of the whole input, decoded in one go at the end.
    #[test]
    fn strings_decoded_as_they_arrive_match_one_decode_at_the_end() {
        const PIECES: &[&[u8]] = &[
            b"plain ascii text ",
            "\u{e9}\u{20ac}\u{1F600}".as_bytes(),
            br"\n\t\\\/\'",
            br"\u00e9\u20AC",
            br"\uD83D\uDE00",
            b"\xC0\x80",
        ];
        const BAD: &[&[u8]] = &[
            br"\uD83D",            // a lone leading surrogate
            br"\uDE00",            // a lone trailing one
            br"\uFFFF",            // a noncharacter
            br"\x",                // an unknown escape
            b"\x80",               // a stray continuation byte
            "\u{FDD0}".as_bytes(), // a raw noncharacter
            br"\u12",              // short: reads the closing quote when at the end
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for case in 0..24 {
            let mut body = Vec::new();
            let mut bounds = vec![0];
            while body.len() < 300 << 10 {
                body.extend_from_slice(PIECES[next(PIECES.len())]);
                bounds.push(body.len());
            }
            if case % 2 == 1 {
                // One error between two pieces: at the very end in some cases.
                let at = if case % 4 == 1 {
                    body.len()
                } else {
                    bounds[next(bounds.len())]
                };
                let bad = BAD[next(BAD.len())];
                body.splice(at..at, bad.iter().copied());
            }
            let mut input = b"{\"a\": \"".to_vec();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"\", \"b\": \"tail\"}");
            let whole = run(&input);
            assert_eq!(whole.len(), 1);
            let mut p = Streamer::new();
            let mut parts = Vec::new();
            let mut i = 0;
            while i < input.len() {
                let small = next(4) == 0;
                let n = (1 + next(if small { 16 } else { 90 << 10 })).min(input.len() - i);
                parts.extend(all(&mut p, &input[i..i + n]));
                i += n;
            }
            assert_eq!(parts, whole, "case {case}");
        }
    }

    /// The feed that completes a huge escape-heavy message costs about what the other feeds
    /// of it cost, not the whole message's decoding (which would stall the caller's event loop).
    #[test]
    fn completing_a_huge_string_costs_one_chunk_not_the_whole_message() {
        let mut input = b"{\"execute\": \"x\", \"arguments\": {\"s\": \"".to_vec();
        for _ in 0..(16 << 20) / 8 {
            input.extend_from_slice(br"\n\u00e9");
        }
        input.extend_from_slice(b"\"}}");
        let chunk = 64 << 10;
        let mut p = Streamer::new();
        let mut times = Vec::new();
        let mut got = Vec::new();
        for part in input.chunks(chunk) {
            let t = std::time::Instant::now();
            p.feed(part, |m| {
                got.push(m);
                true
            });
            times.push(t.elapsed());
        }
        let last = times.pop().unwrap();
        times.sort();
        let median = times[times.len() / 2];
        match &got[..] {
            [Parsed::Value(v)] => assert_eq!(
                v["arguments"]["s"].as_str().unwrap().len(),
                (16 << 20) / 8 * 3
            ),
            other => panic!("{:?}", other.first()),
        }
        assert!(
            last < median * 16 + std::time::Duration::from_millis(5),
            "the last feed took {last:?}, a median one {median:?}"
        );
    }

    /// Stray continuation bytes are refused as they arrive, not scanned again at every feed
    /// until the token ends.
    #[test]
    fn stray_continuation_bytes_are_refused_while_they_arrive() {
        let mut p = Streamer::new();
        let mut input = b"{\"a\": \"x".to_vec();
        input.extend(std::iter::repeat_n(0x80u8, 200 << 10));
        assert!(all(&mut p, &input).is_empty());
        assert_eq!(p.cur_str.err.as_deref(), Some(BAD_UTF8));
        let mut rest = all(&mut p, b"\"}");
        assert_eq!(rest.len(), 1);
        assert!(is_err(&rest.remove(0), BAD_UTF8));
        // An unfinished character at the end of a feed is held back, not refused.
        let mut p = Streamer::new();
        let mut input = b"{\"a\": \"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100 << 10));
        input.extend_from_slice(&[0xF0, 0x9F, 0x98]);
        assert!(all(&mut p, &input).is_empty());
        assert!(p.cur_str.err.is_none());
        assert_eq!(all(&mut p, b"\x80\"}").len(), 1);
        assert!(matches!(
            &run(&[&input[..], b"\x80\"}"].concat())[0],
            Parsed::Value(_)
        ));
    }

    #[test]
    fn invalid_utf8_in_strings_is_an_error_not_a_panic() {
        let r = run(b"{\"a\":\"\xc3\x28\"}");
        assert_eq!(
            r,
            vec![Parsed::Error(ParseError::Syntax(
                "invalid UTF-8 sequence in string".into()
            ))]
        );
    }

    // New with the merge: the bulk string path must not change anything.

    #[test]
    fn bulk_path_matches_byte_path_at_the_size_limit() {
        // Strings that end just below, at, and just above the limit, and a mix of plain
        // runs, escapes, non-ASCII and a stray byte; chunked in every size from 1 to 7.
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for len in 40..52 {
            let mut m = b"{\"a\":\"".to_vec();
            m.extend(std::iter::repeat_n(b'x', len));
            m.extend_from_slice(b"\"}{\"b\":1}");
            inputs.push(m);
        }
        inputs.push("{'s':'a\\'b\"c\u{e9}\\u00e9'}{\"t\":\"x\x02y\"}[\"z\"]".into());
        for input in &inputs {
            let mut one = Streamer::with_limits(48, 8);
            let whole = all(&mut one, input);
            for chunk in 1..8 {
                let mut p = Streamer::with_limits(48, 8);
                let mut got = Vec::new();
                for c in input.chunks(chunk) {
                    got.extend(all(&mut p, c));
                }
                assert_eq!(
                    got,
                    whole,
                    "chunk {chunk} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn plain_run_matches_a_byte_wise_reference() {
        for quote in [b'"', b'\''] {
            for b in 0..=255u8 {
                for pos in 0..20 {
                    let mut t = vec![b'a'; 20];
                    t[pos] = b;
                    let want = if is_plain_str_byte(b, quote) { 20 } else { pos };
                    assert_eq!(plain_str_run(&t, quote), want, "byte {b:#x} at {pos}");
                }
            }
        }
    }

    #[test]
    fn feed_stops_when_asked_and_reset_leaves_recovery() {
        let mut p = Streamer::new();
        let input = br#"{"a":1}{"b":2}{"c":3}"#;
        let mut got = Vec::new();
        let n = p.feed(input, |m| {
            got.push(m);
            false
        });
        assert_eq!(n, 7);
        assert_eq!(got, vec![Parsed::Value(json!({"a":1}))]);
        let r = all(&mut p, &input[n..]);
        assert_eq!(r.len(), 2);
        // After a lexical error the lexer skips to a structural character; reset() does not.
        let r = all(&mut p, b"\x01");
        assert_eq!(r.len(), 1);
        assert!(all(&mut p, b"\"x\" ").is_empty(), "skipped in recovery");
        p.reset();
        assert!(p.is_idle());
        assert_eq!(all(&mut p, b"\"x\""), vec![Parsed::Value(json!("x"))]);
    }

    #[test]
    fn big_string_in_one_feed() {
        let mut m = b"{\"return\": {\"buf-b64\": \"".to_vec();
        m.extend(std::iter::repeat_n(b'A', 3 << 20));
        m.extend_from_slice(b"\", \"count\": 1}}");
        let r = run(&m);
        assert_eq!(r.len(), 1);
        let Parsed::Value(v) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(v["return"]["buf-b64"].as_str().map(str::len), Some(3 << 20));
        assert_eq!(v["return"]["count"], json!(1));
    }
}
