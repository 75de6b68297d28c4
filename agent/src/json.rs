//! Streaming JSON input and qemu-ga style JSON output.
//!
//! The [`Streamer`] behaves like QEMU's json-lexer + json-streamer: bytes are
//! tokenized one at a time, `{`/`[` depth is counted and a message is complete
//! when the depth returns to zero, so no delimiter is needed. Lexical errors
//! (0xFF, control characters, malformed numbers) produce an error, drop the
//! partial message and make the lexer skip to the next structural character.
//! Single-quoted strings are accepted. Total token size, token count and
//! nesting depth are bounded.

use serde_json::{Map, Number, Value};

/// Largest accepted message, in bytes of token text (QEMU: 64 MiB).
pub const MAX_TOKEN_SIZE: usize = 64 << 20;
/// Largest accepted number of tokens in one message (QEMU: 2^21).
pub const MAX_TOKEN_COUNT: usize = 1 << 21;
/// Deepest accepted nesting of objects and arrays (QEMU: 1024).
pub const MAX_NESTING: usize = 1024;

/// What the streamer produced for one complete input message.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A syntactically valid JSON value.
    Value(Value),
    /// A lexical or syntax error; the text is the qemu-ga error description.
    Error(String),
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
/// arena (strings keep their quotes and escapes).
#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: u32,
    end: u32,
}

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

/// Incremental JSON message splitter and parser with QEMU semantics.
#[derive(Debug)]
pub struct Streamer {
    state: Lex,
    /// Text of all tokens of the message being assembled, back to back.
    arena: Vec<u8>,
    /// Where the token being lexed starts in `arena`.
    cur_start: usize,
    tokens: Vec<Token>,
    braces: i64,
    brackets: i64,
}

impl Default for Streamer {
    fn default() -> Self {
        Self::new()
    }
}

fn is_structural(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':')
}

impl Streamer {
    /// A streamer in its initial state.
    pub fn new() -> Self {
        Streamer {
            state: Lex::Start,
            arena: Vec::new(),
            cur_start: 0,
            tokens: Vec::new(),
            braces: 0,
            brackets: 0,
        }
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.tokens.is_empty() && self.arena.is_empty() && matches!(self.state, Lex::Start)
    }

    fn reset_stream(&mut self) {
        self.tokens.clear();
        self.arena.clear();
        self.cur_start = 0;
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

    /// Feeds bytes; every complete message or error is passed to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(Parsed)) {
        for &b in data {
            self.feed_byte(b, out);
        }
    }

    fn lex_error(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        self.arena.push(b);
        let text = String::from_utf8_lossy(&self.arena[self.cur_start..]).into_owned();
        self.reset_stream();
        self.state = Lex::Recovery;
        out(Parsed::Error(format!("JSON parse error, stray '{text}'")));
    }

    fn finish(&mut self, kind: Kind, out: &mut dyn FnMut(Parsed)) {
        let tok = Token {
            kind,
            start: self.cur_start as u32,
            end: self.arena.len() as u32,
        };
        self.cur_start = self.arena.len();
        self.state = Lex::Start;
        self.push_token(tok, out);
    }

    fn feed_byte(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        // A loop because a byte that terminates a number or keyword is then
        // processed again from the start state.
        loop {
            match self.state {
                Lex::Recovery => {
                    if is_structural(b)
                        || b == 0xFF
                        || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
                    {
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
                Lex::Zero => match b {
                    b'0'..=b'9' => return self.lex_error(b, out),
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
                Lex::Int => match b {
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
    fn push_cur(&mut self, b: u8, out: &mut dyn FnMut(Parsed)) {
        self.arena.push(b);
        if self.arena.len() > MAX_TOKEN_SIZE {
            self.reset_stream();
            self.state = Lex::Recovery;
            out(Parsed::Error("JSON token size limit exceeded".into()));
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
        self.tokens.push(tok);
        if self.braces < 0 || self.brackets < 0 || (self.braces == 0 && self.brackets == 0) {
            let parsed = parse_tokens(&self.tokens, &self.arena);
            self.reset_stream();
            out(parsed);
            return;
        }
        let err = if self.arena.len() > MAX_TOKEN_SIZE {
            Some("JSON token size limit exceeded")
        } else if self.tokens.len() > MAX_TOKEN_COUNT {
            Some("JSON token count limit exceeded")
        } else if (self.braces + self.brackets) as usize > MAX_NESTING {
            Some("JSON nesting depth limit exceeded")
        } else {
            None
        };
        if let Some(e) = err {
            self.reset_stream();
            out(Parsed::Error(e.into()));
        }
    }
}

fn parse_tokens(tokens: &[Token], arena: &[u8]) -> Parsed {
    let mut p = TokenParser {
        toks: tokens,
        arena,
        pos: 0,
    };
    match p.value() {
        Ok(v) => {
            if p.pos != tokens.len() {
                Parsed::Error("JSON parse error, expecting value".into())
            } else {
                Parsed::Value(v)
            }
        }
        Err(e) => Parsed::Error(format!("JSON parse error, {e}")),
    }
}

struct TokenParser<'a> {
    toks: &'a [Token],
    arena: &'a [u8],
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
            return Err("expecting value".into());
        };
        match t.kind {
            Kind::LCurly => self.object(),
            Kind::LSquare => self.array(),
            Kind::Str => Ok(Value::String(unescape(self.text(t))?)),
            Kind::Int => Ok(parse_int(self.text(t))),
            Kind::Float => {
                let s = std::str::from_utf8(self.text(t)).map_err(|_| "expecting value")?;
                let f: f64 = s.parse().map_err(|_| "expecting value")?;
                Ok(Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null))
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
            let key = match self.next() {
                Some(t) if t.kind == Kind::Str => unescape(self.text(t))?,
                Some(_) => return Err("key is not a string in object".into()),
                None => return Err("premature EOI".into()),
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
            if self.peek_kind() == Some(Kind::RCurly) {
                return Err("expecting value".into());
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
    let f: f64 = s.parse().unwrap_or(0.0);
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn hex4(s: &[u8]) -> Option<u32> {
    if s.len() < 4 {
        return None;
    }
    let mut v = 0u32;
    for &c in &s[..4] {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Decodes a string token (quotes included) into a Rust string.
fn unescape(raw: &[u8]) -> Result<String, String> {
    let body = &raw[1..raw.len().saturating_sub(1).max(1)];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
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
                let hi = hex4(&body[i..]).ok_or("invalid hex escape sequence in string")?;
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    let lo = if body.get(i) == Some(&b'\\') && body.get(i + 1) == Some(&b'u') {
                        hex4(&body[i + 2..])
                    } else {
                        None
                    };
                    match lo {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            i += 6;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => return Err(format!("\\u{hi:04x} is not a valid Unicode character")),
                    }
                } else {
                    hi
                };
                char::from_u32(cp)
                    .ok_or_else(|| format!("\\u{hi:04x} is not a valid Unicode character"))?
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 sequence in string".into())
}

/// Serializes `v` the way qemu-ga does: compact with a space after `:` and
/// `,`, every non-ASCII character escaped as `\uXXXX` (UTF-16 units).
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_value(out, x);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_str(out, k);
                out.extend_from_slice(b": ");
                write_value(out, x);
            }
            out.push(b'}');
        }
    }
}

/// Writes a JSON string literal with qemu-ga escaping.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let (mut i, mut start) = (0, 0);
    while i < bytes.len() {
        // Skip 8 plain bytes at a time (base64 payloads are all plain).
        while let Some(w) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if word_needs_escape(w) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        if (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\' {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        let mut len = 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            _ => {
                // `i` is always at a character boundary here: only whole
                // characters are ever skipped.
                let ch = s
                    .get(i..)
                    .and_then(|t| t.chars().next())
                    .unwrap_or('\u{FFFD}');
                len = ch.len_utf8();
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[((*u >> shift) & 0xF) as usize]);
                    }
                }
            }
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start.min(bytes.len())..]);
    out.push(b'"');
}

/// Whether any of the 8 bytes of `w` is a control character, `"`, `\\`,
/// DEL or non-ASCII (the bytes `write_str` escapes).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    w & HIGH != 0
        || w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0
        || has_zero(w ^ (ONES * b'"' as u64))
        || has_zero(w ^ (ONES * b'\\' as u64))
        || has_zero(w ^ (ONES * 0x7F))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(input: &[u8]) -> Vec<Parsed> {
        let mut s = Streamer::new();
        let mut v = Vec::new();
        s.feed(input, &mut |p| v.push(p));
        v
    }

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
            s.feed(&[*b], &mut |p| got.push(p));
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
        assert!(matches!(&v[0], Parsed::Error(e) if e.contains("stray")));
        assert!(matches!(&v[1], Parsed::Error(e) if e.contains("expecting value")));
        assert!(matches!(&v[2], Parsed::Error(e) if e.contains("stray")));
        assert_eq!(v[3], Parsed::Value(json!({"a":1})));
        assert!(
            matches!(&run(b"bad ")[0], Parsed::Error(e) if e.contains("invalid keyword 'bad'"))
        );
        assert!(
            matches!(&run(b"{\"a\":1,\"a\":2}")[0], Parsed::Error(e) if e.contains("duplicate"))
        );
        assert!(matches!(&run(b"{\"a\":\"\\ud83d\"}")[0], Parsed::Error(_)));
        assert!(matches!(&run(b"{\"a\":\"\xc3\"}")[0], Parsed::Error(_)));
        assert!(run(b"42").is_empty(), "a number needs a terminator");
        assert_eq!(run(b"42 ")[0], Parsed::Value(json!(42)));
    }

    #[test]
    fn token_size_limit_resets() {
        let mut s = Streamer::new();
        let mut v = Vec::new();
        s.feed(b"{\"execute\":\"", &mut |p| v.push(p));
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..(MAX_TOKEN_SIZE >> 20) + 1 {
            s.feed(&chunk, &mut |p| v.push(p));
        }
        assert!(
            matches!(&v[..], [Parsed::Error(e)] if e.contains("size limit")),
            "{v:?}"
        );
        assert!(s.arena.capacity() < 1 << 20, "memory given back");
        // Recovery skips to the next structural character.
        v.clear();
        s.feed(b"aaa\"}{\"a\":1}", &mut |p| v.push(p));
        assert_eq!(v.last(), Some(&Parsed::Value(json!({"a": 1}))));
    }

    #[test]
    fn nesting_limit() {
        let deep = vec![b'['; MAX_NESTING + 10];
        let v = run(&deep);
        assert!(matches!(&v[0], Parsed::Error(e) if e.contains("nesting")));
    }

    #[test]
    fn escaping_matches_a_byte_wise_reference() {
        // Every ASCII byte at every position of a 20-byte string.
        for b in 0u8..0x80 {
            for pos in 0..20 {
                let mut t = vec![b'a'; 20];
                t[pos] = b;
                let t = String::from_utf8(t).unwrap();
                let mut fast = Vec::new();
                write_str(&mut fast, &t);
                let back: String = serde_json::from_slice(&fast).unwrap();
                assert_eq!(back, t);
                let plain = (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\';
                assert_eq!(fast.len() == 22, plain, "byte {b:#x} at {pos}");
            }
        }
        let mut o = Vec::new();
        write_str(&mut o, "abcdefgh\u{e9}abcdefgh\u{7f}");
        assert_eq!(o, br#""abcdefgh\u00E9abcdefgh\u007F""#);
    }

    #[test]
    fn output_escaping() {
        let mut o = Vec::new();
        write_value(&mut o, &json!({"a": "\u{201c}x\u{1F600}\"\n\u{1}"}));
        assert_eq!(o, br#"{"a": "\u201Cx\uD83D\uDE00\"\n\u0001"}"#);
    }
}
