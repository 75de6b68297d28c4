//! A streaming JSON message splitter with QEMU's `json-streamer` semantics.
//!
//! Input is a byte stream with no delimiters: a message ends when the bracket depth returns to zero.
//! Several messages per chunk and messages split across chunks both work. Single-quoted strings are
//! accepted (QEMU extension) and rewritten to standard JSON before decoding. Lexical errors (0xFF,
//! 0xFE, ASCII control characters other than tab/CR/LF) reset the parser and produce an error, as
//! do the size and depth limits, so memory stays bounded whatever the peer sends.

use serde_json::Value;

/// Default limit on the size of one message (QEMU: 64 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;
/// Default limit on nesting depth (QEMU: 1024).
pub const DEFAULT_MAX_DEPTH: u32 = 1024;

/// What the parser produced for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A complete JSON value (object or not; the caller checks the shape).
    Value(Value),
    /// A lexical or syntax error; the parser has been reset.
    Error(ParseError),
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A byte that can never appear in JSON text (0xFF, 0xFE, a control character).
    StrayByte(u8),
    /// The text is not valid JSON; the string describes where.
    Syntax(String),
    /// The message exceeded the size limit.
    TooLarge,
    /// The message exceeded the nesting limit.
    TooDeep,
}

impl ParseError {
    /// True for limit violations, after which a peer is usually not worth listening to.
    pub fn is_limit(&self) -> bool {
        matches!(self, ParseError::TooLarge | ParseError::TooDeep)
    }

    /// The `desc` text QEMU uses for this kind of error.
    pub fn desc(&self) -> String {
        match self {
            ParseError::StrayByte(b) if *b >= 0x80 => {
                "JSON parse error, stray '\u{fffd}'".to_string()
            }
            ParseError::StrayByte(b) => format!("JSON parse error, stray '\\u{:04x}'", b),
            ParseError::Syntax(s) => format!("JSON parse error, {s}"),
            ParseError::TooLarge => "JSON token size limit exceeded".to_string(),
            ParseError::TooDeep => "JSON nesting depth limit exceeded".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Normal,
    /// Inside a string opened by `quote`.
    Str { quote: u8, escape: bool },
    /// Inside a bare top-level scalar (number, keyword).
    Scalar,
}

/// Incremental splitter; feed it bytes, get complete messages.
#[derive(Debug)]
pub struct JsonStreamer {
    buf: Vec<u8>,
    depth: u32,
    lex: Lex,
    max_size: usize,
    max_depth: u32,
}

impl Default for JsonStreamer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE, DEFAULT_MAX_DEPTH)
    }
}

impl JsonStreamer {
    /// A parser with the given limits on message size (bytes) and nesting depth.
    pub fn new(max_size: usize, max_depth: u32) -> Self {
        JsonStreamer {
            buf: Vec::new(),
            depth: 0,
            lex: Lex::Normal,
            max_size,
            max_depth,
        }
    }

    /// Drops any partial message.
    pub fn reset(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        self.depth = 0;
        self.lex = Lex::Normal;
    }

    /// True when no partial message is held.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.depth == 0 && self.lex == Lex::Normal
    }

    /// Bytes of the partial message held now.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`; calls `out` for each completed message or error. Returns the number of bytes
    /// consumed, which is all of `data` unless `out` returns `false` (stop after this message).
    pub fn feed(&mut self, data: &[u8], mut out: impl FnMut(Parsed) -> bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            // Fast path: the plain bytes of a string (base64 payloads are megabytes of them)
            // are copied in one go; only bytes that change the state go through `step`.
            if let Lex::Str {
                quote,
                escape: false,
            } = self.lex
            {
                let run = data[i..]
                    .iter()
                    .position(|&b| {
                        b == quote
                            || b == b'\\'
                            || !(0x20..0xFE).contains(&b)
                            || (b == b'"' && quote == b'\'')
                    })
                    .unwrap_or(data.len() - i);
                if run > 0 {
                    let room = self.max_size.saturating_sub(self.buf.len());
                    if run > room {
                        self.buf.extend_from_slice(&data[i..i + room]);
                        i += room;
                        // The next byte overflows the limit and reports it through `step`.
                    } else {
                        self.buf.extend_from_slice(&data[i..i + run]);
                        i += run;
                        continue;
                    }
                }
            }
            let b = data[i];
            i += 1;
            if let Some(p) = self.step(b) {
                if !out(p) {
                    return i;
                }
            }
        }
        i
    }

    fn fail(&mut self, e: ParseError) -> Option<Parsed> {
        self.reset();
        Some(Parsed::Error(e))
    }

    fn push(&mut self, b: u8) -> Option<Parsed> {
        if self.buf.len() >= self.max_size {
            return self.fail(ParseError::TooLarge);
        }
        self.buf.push(b);
        None
    }

    fn finish(&mut self) -> Option<Parsed> {
        let res = serde_json::from_slice::<Value>(&self.buf);
        self.reset();
        Some(match res {
            Ok(v) => Parsed::Value(v),
            Err(e) => Parsed::Error(ParseError::Syntax(syntax_desc(&e))),
        })
    }

    fn step(&mut self, b: u8) -> Option<Parsed> {
        if b == 0xFF || b == 0xFE || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) {
            return self.fail(ParseError::StrayByte(b));
        }
        match self.lex {
            Lex::Str { quote, escape } => {
                if matches!(b, b'\n' | b'\r' | b'\t') {
                    // Raw control characters are not allowed inside JSON strings.
                    return self.fail(ParseError::StrayByte(b));
                }
                if escape {
                    self.lex = Lex::Str {
                        quote,
                        escape: false,
                    };
                    if b == b'\'' {
                        // `\'` is accepted by QEMU; standard JSON wants a plain quote.
                        let _ = self.buf.pop();
                        return self.push(b'\'');
                    }
                    return self.push(b);
                }
                if b == b'\\' {
                    self.lex = Lex::Str {
                        quote,
                        escape: true,
                    };
                    return self.push(b);
                }
                if b == quote {
                    self.lex = Lex::Normal;
                    let r = self.push(b'"');
                    if r.is_some() {
                        return r;
                    }
                    if self.depth == 0 {
                        return self.finish();
                    }
                    return None;
                }
                if b == b'"' && quote == b'\'' {
                    let r = self.push(b'\\');
                    if r.is_some() {
                        return r;
                    }
                }
                self.push(b)
            }
            Lex::Scalar => {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                    return self.push(b);
                }
                // The scalar ended; this byte starts the next token.
                self.lex = Lex::Normal;
                let done = self.finish();
                let next = self.step(b);
                // A scalar and the start of the next message can't both be reported from one
                // byte; the next token only completes on its own closing byte, so `next` is None
                // except for errors, which we report in preference (they reset the state).
                next.or(done)
            }
            Lex::Normal => match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    if self.depth > 0 {
                        return self.push(b);
                    }
                    None
                }
                b'{' | b'[' => {
                    if self.depth >= self.max_depth {
                        return self.fail(ParseError::TooDeep);
                    }
                    self.depth += 1;
                    self.push(b)
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return self.fail(ParseError::Syntax("expecting value".into()));
                    }
                    self.depth -= 1;
                    let r = self.push(b);
                    if r.is_some() {
                        return r;
                    }
                    if self.depth == 0 {
                        return self.finish();
                    }
                    None
                }
                b'"' | b'\'' => {
                    self.lex = Lex::Str {
                        quote: b,
                        escape: false,
                    };
                    self.push(b'"')
                }
                _ => {
                    if self.depth == 0 {
                        self.lex = Lex::Scalar;
                    }
                    self.push(b)
                }
            },
        }
    }
}

fn syntax_desc(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "premature end of input".into(),
        _ => {
            let s = e.to_string();
            // Drop serde's " at line L column C" suffix; positions are meaningless in a stream.
            match s.find(" at line ") {
                Some(p) => s[..p].to_string(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(p: &mut JsonStreamer, data: &[u8]) -> Vec<Parsed> {
        let mut v = Vec::new();
        p.feed(data, |m| {
            v.push(m);
            true
        });
        v
    }

    #[test]
    fn splits_back_to_back_and_partial_messages() {
        let mut p = JsonStreamer::default();
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
        let mut p = JsonStreamer::default();
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
        let mut p = JsonStreamer::default();
        let r = all(&mut p, br#"{'execute':'it"s','x':'a\'b'}"#);
        assert_eq!(r, vec![Parsed::Value(json!({"execute":"it\"s","x":"a'b"}))]);
    }

    #[test]
    fn stray_bytes_reset() {
        let mut p = JsonStreamer::default();
        let r = all(&mut p, b"{\"a\":\xff{\"b\":1}");
        assert_eq!(r.len(), 2);
        assert!(matches!(r[0], Parsed::Error(ParseError::StrayByte(0xff))));
        assert_eq!(r[1], Parsed::Value(json!({"b":1})));
        let r = all(&mut p, b"\x01");
        assert!(matches!(r[0], Parsed::Error(ParseError::StrayByte(1))));
    }

    #[test]
    fn scalars_and_garbage() {
        let mut p = JsonStreamer::default();
        let r = all(&mut p, b"42 bad {\"a\":1}");
        assert_eq!(r[0], Parsed::Value(json!(42)));
        assert!(matches!(r[1], Parsed::Error(ParseError::Syntax(_))));
        assert_eq!(r[2], Parsed::Value(json!({"a":1})));
        let r = all(&mut p, b"}");
        assert!(matches!(r[0], Parsed::Error(ParseError::Syntax(_))));
        let r = all(&mut p, b"{\"a\" 1}");
        assert!(matches!(r[0], Parsed::Error(ParseError::Syntax(_))));
    }

    #[test]
    fn limits_bound_memory() {
        let mut p = JsonStreamer::new(1000, 8);
        let r = all(&mut p, &[b'['; 9]);
        assert_eq!(r, vec![Parsed::Error(ParseError::TooDeep)]);
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 5000));
        let r = all(&mut p, &big);
        assert!(r.contains(&Parsed::Error(ParseError::TooLarge)));
        assert!(p.pending_len() <= 1000);
    }

    #[test]
    fn bulk_and_byte_at_a_time_agree() {
        let input: &[u8] =
            br#"{"a":"plain text then \"esc\" and 'single'",'b':'it"s \' x',"c":["\u00e9"]}"#;
        let mut whole = JsonStreamer::default();
        let a = all(&mut whole, input);
        let mut bytes = JsonStreamer::default();
        let mut b = Vec::new();
        for x in input {
            b.extend(all(&mut bytes, &[*x]));
        }
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        // The size limit holds inside long strings too.
        let mut p = JsonStreamer::new(64, 8);
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 500));
        let r = all(&mut p, &big);
        assert!(r.contains(&Parsed::Error(ParseError::TooLarge)), "{r:?}");
        assert!(p.pending_len() <= 64);
    }

    #[test]
    fn invalid_utf8_in_strings_is_an_error_not_a_panic() {
        let mut p = JsonStreamer::default();
        let r = all(&mut p, b"{\"a\":\"\xc3\x28\"}");
        assert!(matches!(r[0], Parsed::Error(ParseError::Syntax(_))));
    }
}
