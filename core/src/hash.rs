//! The leaf every other module may use: canonical JSON and the hashes and
//! ids derived from it (SHA-256 in hex, UUIDs derived from a seed), and the
//! small deterministic hasher of the interpreter's maps. No other module of
//! the crate is imported here.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::hash::Hasher;

/// A small, fast, deterministic hasher for node ids (FxHash's mixing).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(chunk) {
                *w = *b;
            }
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The compact JSON text of a value, byte for byte what `serde_json`
/// writes, written straight into one buffer. `Value::to_string` goes through
/// `Display` and the formatter, a call per token; `serde_json`'s own writer
/// looks at every byte of every string on its own, the largest cost of
/// printing a page of rows in the component (where there is no SIMD). Here
/// strings are scanned eight bytes at a time and copied in runs.
pub fn json_text(v: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_json(v, &mut out, false);
    out
}

/// [`json_text`] of an object (a row).
pub fn object_text(m: &serde_json::Map<String, Value>) -> String {
    let mut out = String::with_capacity(128);
    write_object(m.iter(), &mut out, false);
    out
}

/// Canonical JSON: object keys sorted at every level, no spaces. Written
/// directly (no sorted copy of the value is built).
pub fn canonical(v: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_json(v, &mut out, true);
    out
}

/// [`canonical`] of an object of these members (without building it: an
/// entry's members picked and added without copying the entry).
pub fn canonical_members<'v>(members: impl Iterator<Item = (&'v String, &'v Value)>) -> String {
    let mut out = String::with_capacity(256);
    write_sorted(members, &mut out);
    out
}

/// Appends [`canonical`] of `v` to `out`.
pub(crate) fn write_canonical(v: &Value, out: &mut String) {
    write_json(v, out, true);
}

/// Appends [`canonical`] of the object `m` to `out` (without building a
/// `Value` of it).
pub(crate) fn write_canonical_object(m: &serde_json::Map<String, Value>, out: &mut String) {
    write_sorted(m.iter(), out);
}

/// Appends the canonical object of these members: sorted by key, each
/// value canonical.
fn write_sorted<'v>(members: impl Iterator<Item = (&'v String, &'v Value)>, out: &mut String) {
    let mut members: Vec<(&String, &Value)> = members.collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    write_object(members.into_iter(), out, true);
}

/// Compact JSON text, object keys as they come or (`sorted`) sorted at
/// every level.
fn write_json(v: &Value, out: &mut String, sorted: bool) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_str(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out, sorted);
            }
            out.push(']');
        }
        Value::Object(m) if sorted => write_sorted(m.iter(), out),
        Value::Object(m) => write_object(m.iter(), out, false),
    }
}

fn write_object<'v>(
    members: impl Iterator<Item = (&'v String, &'v Value)>,
    out: &mut String,
    sorted: bool,
) {
    out.push('{');
    for (i, (k, x)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(k, out);
        out.push(':');
        write_json(x, out, sorted);
    }
    out.push('}');
}

/// A number as `serde_json` writes it (through a buffer on the stack: a
/// number is at most 24 bytes of text).
fn write_number(n: &serde_json::Number, out: &mut String) {
    let mut buf = std::io::Cursor::new([0u8; 40]);
    let _ = serde_json::to_writer(&mut buf, n);
    let len = usize::try_from(buf.position()).unwrap_or(0);
    let text = buf.get_ref().get(..len).unwrap_or_default();
    out.push_str(std::str::from_utf8(text).unwrap_or("0"));
}

/// The JSON text of string `s` (quoted, escaped as [`write_str`] does):
/// [`canonical`] of `Value::String(s)`, without copying `s` into a value.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(s, &mut out);
    out
}

/// A JSON string as `serde_json` writes it: `"` and `\` escaped, the
/// control characters as `\b \t \n \f \r` or `\u00xx`, everything
/// else (non-ASCII included) as it is.
pub(crate) fn write_str(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push('"');
    // Most strings (keys, ids, times) need no escape: checked in words of
    // eight bytes and the few left one by one, then copied at once. (The
    // loop below goes byte by byte through every tail, and through all of
    // a key shorter than eight bytes, which cost the component ~400
    // instructions per string.)
    if !needs_escape(b) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        // Skip eight bytes at a time while none needs escaping: no byte
        // below 0x20, no `"` (0x22), no `\` (0x5c).
        while let Some(Ok(word)) = b.get(i..i + 8).map(<[u8; 8]>::try_from) {
            if special_in(word) {
                break;
            }
            i += 8;
        }
        let Some(&c) = b.get(i) else { break };
        let escape = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte, `start` just after one: both are
        // character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.push_str("\\u00");
            for nibble in [c >> 4, c & 0xf] {
                let h = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
                out.push(char::from(h));
            }
        } else {
            out.push_str(escape);
        }
        i += 1;
        start = i;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// Whether a byte of `b` needs escaping: below 0x20, `"` or `\\`.
fn needs_escape(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    words
        .by_ref()
        .any(|w| <[u8; 8]>::try_from(w).map_or(true, special_in))
        || words.remainder().iter().any(|&c| special(c))
}

/// [`special`] of any byte of an eight-byte word, at once (the
/// zero-byte tests of "Bit Twiddling Hacks"; exact for bytes ≥ 0x80).
fn special_in(word: [u8; 8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let w = u64::from_le_bytes(word);
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | zero(w ^ (ONES * 0x22)) | zero(w ^ (ONES * 0x5c)) != 0
}

/// Whether JSON text must escape byte `c`.
fn special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` is a UUID in its canonical text form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A UUID (version 8, RFC 9562) derived from `seed` by SHA-256.
pub fn uuid_from(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    for (o, i) in b.iter_mut().zip(d.iter()) {
        *o = *i;
    }
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or_default(),
        hex.get(8..12).unwrap_or_default(),
        hex.get(12..16).unwrap_or_default(),
        hex.get(16..20).unwrap_or_default(),
        hex.get(20..32).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `json_text` and `canonical` write what `serde_json` writes, on
    /// strings holding every ASCII byte at every offset of the eight-byte
    /// scan, non-ASCII text, and numbers of each kind.
    #[test]
    fn json_text_is_serde_json_byte_for_byte() {
        let mut strings: Vec<String> = (0u8..128)
            .flat_map(|c| {
                (0..17).map(move |at| {
                    let mut s = "abcdefghijklmnopq".to_string();
                    s.replace_range(at..at, &char::from(c).to_string());
                    s
                })
            })
            .collect();
        // Shorter than one word, a special byte at each place.
        for len in 0..9 {
            for c in [0u8, 0x1f, b'"', b'\\', b' ', 0x7f] {
                for at in 0..=len {
                    let mut s = "abcdefgh"[..len].to_string();
                    s.insert(at, char::from(c));
                    strings.push(s);
                }
            }
        }
        strings.extend(
            [
                "",
                "Ä",
                "日本語 \u{1F600}",
                "\"\"\"",
                "\\\\",
                "x\u{7f}y",
                "é\"",
                "\u{80}\n",
                "aé\\bcdefgh",
                "日本\u{1}語",
                "\u{2028}",
            ]
            .map(String::from),
        );
        for s in &strings {
            let v = Value::String(s.clone());
            assert_eq!(json_text(&v), serde_json::to_string(&v).unwrap(), "{s:?}");
        }
        let v = json!({
            "s": strings,
            "n": [0, -1, i64::MIN, u64::MAX, 1.0, -0.0, 1.5e300, 2.2250738585072014e-308, 0.1],
            "b": [true, false, null],
            "o": {"z": {}, "a": [], "\u{1}": "\n"},
        });
        assert_eq!(json_text(&v), serde_json::to_string(&v).unwrap());
        // Canonical: what `serde_json` writes of a copy whose keys were
        // inserted sorted, at every level.
        fn sorted(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut members: Vec<(&String, &Value)> = m.iter().collect();
                    members.sort_by(|a, b| a.0.cmp(b.0));
                    Value::Object(
                        members
                            .into_iter()
                            .map(|(k, x)| (k.clone(), sorted(x)))
                            .collect(),
                    )
                }
                Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
                other => other.clone(),
            }
        }
        assert_eq!(canonical(&v), serde_json::to_string(&sorted(&v)).unwrap());
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(object_text(m), serde_json::to_string(&v).unwrap());
    }
}
