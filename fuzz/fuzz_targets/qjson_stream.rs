//! qjson's streaming parser: whatever the bytes, feeding them in one call or in any chunking
//! gives the same messages (split invariance), nothing panics, and every value parsed is
//! written back by the writer in a form that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qjson::{Parsed, Streamer};

fn parse_all(p: &mut Streamer, data: &[u8], out: &mut Vec<Parsed>) {
    let n = p.feed(data, |m| {
        out.push(m);
        true
    });
    assert_eq!(n, data.len());
}

/// Whether `v` holds a stand-in for an infinite double (written as QEMU writes it, `inf`,
/// which is not JSON and does not parse back).
fn has_non_finite(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(_) => qjson::is_non_finite(v),
        serde_json::Value::Array(a) => a.iter().any(has_non_finite),
        serde_json::Value::Object(m) => m.values().any(has_non_finite),
        _ => false,
    }
}

/// Equal, numbers compared as doubles: QEMU writes the double 100.0 as `100`, which parses
/// back as an integer.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunking and the limits (small limits reach the limit paths).
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let (max_size, depth) = if mode & 0x80 != 0 {
        (512, 8)
    } else {
        (qjson::MAX_TOKEN_SIZE, qjson::MAX_NESTING)
    };
    let mut whole = Vec::new();
    parse_all(
        &mut Streamer::with_limits(max_size, depth),
        input,
        &mut whole,
    );

    let mut chunked = Vec::new();
    let mut p = Streamer::with_limits(max_size, depth);
    let step = usize::from(mode & 0x7f) + 1;
    for part in input.chunks(step) {
        parse_all(&mut p, part, &mut chunked);
    }
    assert_eq!(whole, chunked, "chunks of {step} bytes");

    for m in &whole {
        if let Parsed::Value(v) = m {
            if has_non_finite(v) {
                continue;
            }
            let mut text = Vec::new();
            qjson::write_value(&mut text, v);
            let mut back = Vec::new();
            parse_all(&mut Streamer::new(), &text, &mut back);
            // Scalars are only complete once something ends them.
            parse_all(&mut Streamer::new(), &[&text[..], b" "].concat(), &mut back);
            assert!(
                back.iter()
                    .any(|b| matches!(b, Parsed::Value(w) if same(v, w))),
                "{} does not parse back to itself: {back:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
});
