//! Turning bytes into a JSON value: size and encoding checks, a strict parse
//! (duplicate keys are errors), positions for syntax errors.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

use crate::diag::{Diagnostic, Position};

/// The largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 32 << 20;

/// Checks size and encoding of a spec file's bytes.
#[expect(
    clippy::result_large_err,
    reason = "errors are the cold path; a spec error is one diagnostic"
)]
pub fn decode(bytes: &[u8]) -> Result<&str, Diagnostic> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(Diagnostic::new(
            "too-large",
            "",
            format!(
                "the spec is {} bytes, more than the {} MiB limit ({MAX_SPEC_BYTES} bytes)",
                bytes.len(),
                MAX_SPEC_BYTES >> 20
            ),
        )
        .help("split the backend into several specs, or move bulk data out of the spec"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let pos = position_of(std::str::from_utf8(valid).unwrap_or_default(), valid.len());
        let mut d = Diagnostic::new(
            "not-utf8",
            "",
            format!("the spec is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
        .help("save the file as UTF-8");
        d.at = Some(pos);
        d
    })?;
    Ok(text)
}

/// Parses JSON text strictly: one value, no duplicate keys, at most 127
/// levels of nesting (serde_json's recursion limit).
#[expect(
    clippy::result_large_err,
    reason = "errors are the cold path; a spec error is one diagnostic"
)]
pub fn parse(text: &str) -> Result<Value, Diagnostic> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Diagnostic::new("empty", "", "the spec is empty")
            .help("a spec is a JSON object; start from `specs/examples/shop.json`"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Strict::deserialize(&mut de).and_then(|Strict(v)| de.end().map(|()| v));
    result.map_err(|e| syntax_error(&e, text))
}

/// Parses a JSON document (a request body) strictly: one value, and no
/// object with a key twice (which one a proxy or a firewall before the
/// server read is not known).
///
/// # Errors
/// serde_json's error: bad syntax, a duplicate key, nesting past 127.
pub fn strict_from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(v) = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fn syntax_error(e: &serde_json::Error, text: &str) -> Diagnostic {
    let full = e.to_string();
    // serde_json counts columns in bytes; positions here count characters.
    let column = char_column(text, e.line(), e.column());
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    let (code, help) = if what.contains("recursion limit") {
        ("too-deep", "a spec nests at most 127 levels deep")
    } else if what.starts_with("duplicate key") {
        ("duplicate-key", "each key may appear once in an object")
    } else {
        ("json-syntax", "fix the JSON syntax at that position")
    };
    let mut d = Diagnostic::new(
        code,
        "",
        format!("invalid JSON at line {}, column {column}: {what}", e.line()),
    )
    .help(help);
    d.at = Some(Position {
        line: u32::try_from(e.line()).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    });
    d
}

/// The 1-based column, in characters, of the 1-based `byte_column` of
/// `line` (0 stays 0: serde_json's column before a line's first byte).
fn char_column(text: &str, line: usize, byte_column: usize) -> usize {
    let Some(l) = text.split('\n').nth(line.saturating_sub(1)) else {
        return byte_column;
    };
    if byte_column == 0 {
        return 0;
    }
    let mut end = (byte_column - 1).min(l.len());
    while !l.is_char_boundary(end) {
        end -= 1;
    }
    l.get(..end).map_or(0, |p| p.chars().count()) + 1
}

/// The 1-based line and column of byte `offset` in `text`.
pub fn position_of(text: &str, offset: usize) -> Position {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Position {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

/// A JSON value that refuses duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parse() {
        assert!(parse(r#"{"a": 1}"#).is_ok());
        let d = parse("{\"a\": 1,\n \"a\": 2}").unwrap_err();
        assert_eq!(d.code, "duplicate-key");
        let d = parse("{\"a\": 1,\n  \"b\" 2}").unwrap_err();
        assert_eq!(d.code, "json-syntax");
        assert_eq!(d.at.unwrap().line, 2);
        assert_eq!(parse("").unwrap_err().code, "empty");
        assert_eq!(parse(" \n ").unwrap_err().code, "empty");
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(parse(&deep).unwrap_err().code, "too-deep");
        assert_eq!(parse("{} x").unwrap_err().code, "json-syntax");
        assert_eq!(decode(b"\xff\xfe").unwrap_err().code, "not-utf8");
        // Bodies: the same, without the diagnostics.
        assert!(strict_from_slice(br#"{"a": [1, {"b": 2}]}"#).is_ok());
        let e = strict_from_slice(br#"{"t": 1, "t": 2}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key `t`"), "{e}");
        assert!(strict_from_slice(br#"[{"a": 1, "b": {"c": 1, "c": 1}}]"#).is_err());
        assert!(strict_from_slice(b"{} {}").is_err());
    }

    #[test]
    fn positions() {
        let p = position_of("ab\ncdé\nx", 7);
        assert_eq!((p.line, p.column), (2, 4));
        // A syntax error's column counts characters too (serde_json's
        // counts bytes): the quote opening `"x"` is the 10th character, the
        // 14th byte.
        let d = parse("{\"é😀\": 1 \"x\": 2}").unwrap_err();
        let at = d.at.unwrap();
        assert_eq!((at.line, at.column), (1, 10), "{}", d.message);
        assert!(d.message.contains("line 1, column 10"), "{}", d.message);
        assert_eq!(char_column("é\nab", 9, 3), 3, "no such line");
        assert_eq!(char_column("ab", 1, 0), 0);
    }
}
