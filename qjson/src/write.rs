//! Output in QEMU's `qobject_to_json` style (what qemu-ga and the QMP monitor write).

use serde_json::Value;

/// Serializes `v` the way qemu-ga does: compact with a space after `:` and
/// `,`, every non-ASCII character escaped as `\uXXXX` (UTF-16 units).
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => write_double(out, f),
            None => out.extend_from_slice(n.to_string().as_bytes()),
        },
        Value::String(s) => match crate::non_finite_of(s) {
            Some(f) => write_double(out, f),
            None => write_str(out, s),
        },
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

/// Writes a double as QEMU does (`"%.17g"`): 17 significant digits, trailing zeros dropped,
/// exponent form below 1e-4 and from 1e17 on, `inf`/`-inf`/`nan` for the non-finite.
fn write_double(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(if f.is_sign_negative() {
            b"-nan"
        } else {
            b"nan"
        });
        return;
    }
    if f.is_infinite() {
        out.extend_from_slice(if f < 0.0 { b"-inf" } else { b"inf" });
        return;
    }
    if f.is_sign_negative() {
        out.push(b'-');
    }
    if f == 0.0 {
        out.push(b'0');
        return;
    }
    // The 17 significant digits, correctly rounded, and the decimal exponent of the first.
    let e = format!("{:.16e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    let trim = |d: &[u8]| -> usize { d.iter().rposition(|&c| c != b'0').map_or(0, |p| p + 1) };
    if !(-4..17).contains(&exp) {
        out.push(digits[0]);
        let frac = &digits[1..];
        let n = trim(frac);
        if n > 0 {
            out.push(b'.');
            out.extend_from_slice(&frac[..n]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(a.to_string().as_bytes());
    } else if exp >= 0 {
        let int = exp as usize + 1;
        out.extend_from_slice(&digits[..int]);
        let frac = &digits[int..];
        let n = trim(frac);
        if n > 0 {
            out.push(b'.');
            out.extend_from_slice(&frac[..n]);
        }
    } else {
        out.extend_from_slice(b"0.");
        for _ in 0..(-exp - 1) {
            out.push(b'0');
        }
        out.extend_from_slice(&digits[..trim(&digits)]);
    }
}

/// Writes a JSON string literal with qemu-ga escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
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
    fn doubles_are_written_as_qemu_does() {
        // What QEMU 7.2 and 10.0 echo for these ids (`"%.17g"`).
        let cases: &[(&str, &str)] = &[
            ("1e400", "inf"),
            ("-1e400", "-inf"),
            ("0.1", "0.10000000000000001"),
            ("18446744073709551616", "1.8446744073709552e+19"),
            ("1.5e300", "1.5000000000000001e+300"),
            ("1e-7", "9.9999999999999995e-08"),
            ("123456789012345678", "123456789012345678"),
            ("-0.0", "-0"),
            ("100000000000000000000.0", "1e+20"),
            ("1.5", "1.5"),
            ("100.0", "100"),
            ("0.0001", "0.0001"),
            ("12345678901234567.0", "12345678901234568"),
            ("123456789012345678.0", "1.2345678901234568e+17"),
            ("-2.5e-5", "-2.5000000000000001e-05"),
        ];
        for (input, want) in cases {
            let mut p = crate::Streamer::new();
            let mut got = Vec::new();
            p.feed(format!("[{input}]").as_bytes(), |m| {
                match m {
                    crate::Parsed::Value(v) => write_value(&mut got, &v),
                    crate::Parsed::Error(e) => panic!("{input}: {e}"),
                }
                true
            });
            assert_eq!(
                String::from_utf8(got).unwrap(),
                format!("[{want}]"),
                "{input}"
            );
        }
    }

    #[test]
    fn output_escaping() {
        let mut o = Vec::new();
        write_value(&mut o, &json!({"a": "\u{201c}x\u{1F600}\"\n\u{1}"}));
        assert_eq!(o, br#"{"a": "\u201Cx\uD83D\uDE00\"\n\u0001"}"#);
    }
}
