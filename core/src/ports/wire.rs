//! The compact encoding in which rows and values cross the component's
//! boundary (the WIT types `row`, `rows` and `value`), written by one side
//! and decoded once by the other, instead of JSON text printed on one side
//! and parsed on the other.
//!
//! A value is a tag byte and its payload (LEB128 for lengths and counts):
//!
//! | tag | value | payload |
//! |---:|---|---|
//! | 0 | `null` | |
//! | 1 | `false` | |
//! | 2 | `true` | |
//! | 3 | an integer that fits in 64 signed bits | zigzag LEB128 |
//! | 4 | an integer above `i64::MAX` | LEB128 |
//! | 5 | any other number (finite) | 8 bytes, IEEE 754 double, little-endian |
//! | 6 | a string | byte length, UTF-8 |
//! | 7 | an array | count, then its values |
//! | 8 | an object | count, then per member its key and its value |
//!
//! A key is a LEB128 `k`: `0` is a new key, its byte length and UTF-8
//! following, which becomes the next entry of the buffer's key table; `k`
//! ≥ 1 is the table's `k`-th entry. The table spans one buffer, so the
//! column names of a page of rows cross once. A `value` buffer is one
//! value, a `row` one object, `rows` a count and that many objects.
//! Decoding is strict: a wrong tag, a cut buffer, trailing bytes, invalid
//! UTF-8, a duplicate key, a non-finite double or nesting deeper than
//! [`MAX_DEPTH`] is an error, and nothing is allocated for a count the
//! remaining bytes cannot hold.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde_json::{Map, Number, Value};

use super::{Row, Shape};
use crate::expr::Value as ExprValue;
use crate::expr::value::Map as ExprMap;
use crate::hash::IdHasher;

/// How deeply arrays and objects may nest in one value.
pub const MAX_DEPTH: usize = 64;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const DOUBLE: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// Writes values into one buffer, sharing its key table.
#[derive(Default)]
pub struct Encoder<'a> {
    out: Vec<u8>,
    keys: HashMap<&'a str, u64, BuildHasherDefault<IdHasher>>,
}

impl<'a> Encoder<'a> {
    /// An encoder whose buffer starts with `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Encoder {
            out: Vec::with_capacity(capacity),
            keys: HashMap::default(),
        }
    }

    /// Appends a count (of `rows`).
    pub fn count(&mut self, n: usize) {
        leb(&mut self.out, n as u64);
    }

    /// Appends one value.
    pub fn value(&mut self, v: &'a Value) {
        match v {
            Value::Null => self.out.push(NULL),
            Value::Bool(false) => self.out.push(FALSE),
            Value::Bool(true) => self.out.push(TRUE),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.out.push(INT);
                    leb(&mut self.out, ((i << 1) ^ (i >> 63)) as u64);
                } else if let Some(u) = n.as_u64() {
                    self.out.push(UINT);
                    leb(&mut self.out, u);
                } else {
                    self.out.push(DOUBLE);
                    let d = n.as_f64().unwrap_or(0.0);
                    self.out.extend_from_slice(&d.to_le_bytes());
                }
            }
            Value::String(s) => {
                self.out.push(STRING);
                self.text(s);
            }
            Value::Array(a) => {
                self.out.push(ARRAY);
                leb(&mut self.out, a.len() as u64);
                for v in a {
                    self.value(v);
                }
            }
            Value::Object(m) => self.object(m),
        }
    }

    /// Appends one object.
    pub fn object(&mut self, m: &'a Map<String, Value>) {
        self.out.push(OBJECT);
        leb(&mut self.out, m.len() as u64);
        for (k, v) in m {
            let next = self.keys.len() as u64 + 1;
            match self.keys.entry(k.as_str()) {
                std::collections::hash_map::Entry::Occupied(e) => leb(&mut self.out, *e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(next);
                    self.out.push(0);
                    self.text(k);
                }
            }
            self.value(v);
        }
    }

    fn text(&mut self, s: &str) {
        leb(&mut self.out, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// The buffer.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

fn leb(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One value's buffer.
pub fn value(v: &Value) -> Vec<u8> {
    let mut e = Encoder::with_capacity(16);
    e.value(v);
    e.finish()
}

/// One row's buffer.
pub fn row(r: &Row) -> Vec<u8> {
    let mut e = Encoder::with_capacity(64 * r.len());
    e.object(r);
    e.finish()
}

/// A list of rows' buffer.
pub fn rows(list: &[Row]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(64 * list.first().map_or(0, |r| r.len()) * list.len() + 1);
    e.count(list.len());
    for r in list {
        e.object(r);
    }
    e.finish()
}

/// Why a buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Reads values from one buffer.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
    keys: Vec<&'a str>,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Decoder {
            bytes,
            at: 0,
            keys: Vec::new(),
        }
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(WireError("the buffer is cut short"))?;
        self.at += 1;
        Ok(b)
    }

    fn leb(&mut self) -> Result<u64, WireError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(n);
            }
        }
        Err(WireError("a number is longer than 64 bits"))
    }

    /// A count of things that each take at least one byte, so never more
    /// than the bytes left.
    pub fn count(&mut self) -> Result<usize, WireError> {
        let n = self.leb()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(WireError("a count exceeds the buffer"));
        }
        Ok(n as usize)
    }

    fn text(&mut self) -> Result<&'a str, WireError> {
        let n = self.count()?;
        let bytes = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or(WireError("the buffer is cut short"))?;
        self.at += n;
        std::str::from_utf8(bytes).map_err(|_| WireError("a string is not UTF-8"))
    }

    /// A zigzag integer's payload.
    fn int(&mut self) -> Result<i64, WireError> {
        let z = self.leb()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    /// A double's eight bytes.
    fn double(&mut self) -> Result<f64, WireError> {
        let end = self.at + 8;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or(WireError("the buffer is cut short"))?;
        self.at = end;
        Ok(f64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    /// One value.
    pub fn value(&mut self) -> Result<Value, WireError> {
        self.nested(0)
    }

    fn nested(&mut self, depth: usize) -> Result<Value, WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError("values nest too deeply"));
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Number(self.int()?.into()),
            UINT => Value::Number(self.leb()?.into()),
            DOUBLE => Value::Number(
                Number::from_f64(self.double()?).ok_or(WireError("a number is not finite"))?,
            ),
            STRING => Value::String(self.text()?.to_owned()),
            ARRAY => {
                let n = self.count()?;
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.nested(depth + 1)?);
                }
                Value::Array(a)
            }
            OBJECT => Value::Object(self.members(depth)?),
            _ => return Err(WireError("an unknown tag")),
        })
    }

    fn members(&mut self, depth: usize) -> Result<Map<String, Value>, WireError> {
        let n = self.count()?;
        let mut m = Map::with_capacity(n);
        for _ in 0..n {
            let key = self.key()?;
            let v = self.nested(depth + 1)?;
            if m.insert(key.to_owned(), v).is_some() {
                return Err(WireError("an object has a key twice"));
            }
        }
        Ok(m)
    }

    /// One object.
    pub fn object(&mut self) -> Result<Row, WireError> {
        match self.byte()? {
            OBJECT => self.members(0),
            _ => Err(WireError("a row is not an object")),
        }
    }

    fn key(&mut self) -> Result<&'a str, WireError> {
        match self.leb()? {
            0 => {
                let k = self.text()?;
                self.keys.push(k);
                Ok(k)
            }
            k => self
                .keys
                .get(k as usize - 1)
                .copied()
                .ok_or(WireError("a key is not in the key table")),
        }
    }

    fn peek(&self) -> Result<u8, WireError> {
        self.bytes
            .get(self.at)
            .copied()
            .ok_or(WireError("the buffer is cut short"))
    }

    /// One row decoded straight into the interpreter's value, in `shape`:
    /// the value [`super::shaped`] gives of the row [`Decoder::object`]
    /// would decode, without building that row.
    pub fn shaped(&mut self, shape: &dyn Shape) -> Result<ExprValue, WireError> {
        match self.byte()? {
            OBJECT => self.shaped_members(shape, 0),
            _ => Err(WireError("a row is not an object")),
        }
    }

    fn shaped_members(&mut self, shape: &dyn Shape, depth: usize) -> Result<ExprValue, WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError("values nest too deeply"));
        }
        let n = self.count()?;
        let mut m = ExprMap::with_capacity_and_hasher(n, Default::default());
        for _ in 0..n {
            let key = self.key()?;
            let v = match shape.include(key) {
                None => self.column(shape, key, depth + 1)?,
                Some(inner) => self.embedded(inner, depth + 1)?,
            };
            if m.insert(key.to_owned(), v).is_some() {
                return Err(WireError("an object has a key twice"));
            }
        }
        Ok(ExprValue::Map(m))
    }

    /// Included rows: an object is a row, an array its objects (anything
    /// else in it left out), anything else null.
    fn embedded(
        &mut self,
        inner: Option<&dyn Shape>,
        depth: usize,
    ) -> Result<ExprValue, WireError> {
        let Some(inner) = inner else {
            self.nested(depth)?;
            return Ok(ExprValue::Null);
        };
        match self.peek()? {
            OBJECT => {
                self.at += 1;
                self.shaped_members(inner, depth)
            }
            ARRAY => {
                self.at += 1;
                let n = self.count()?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    if self.peek()? == OBJECT {
                        self.at += 1;
                        list.push(self.shaped_members(inner, depth + 1)?);
                    } else {
                        self.nested(depth + 1)?;
                    }
                }
                Ok(ExprValue::List(list))
            }
            _ => {
                self.nested(depth)?;
                Ok(ExprValue::Null)
            }
        }
    }

    /// A column: as [`super::shaped`] converts it, a timestamp column's
    /// text as a timestamp (read without building a JSON string first).
    fn column(
        &mut self,
        shape: &dyn Shape,
        key: &str,
        depth: usize,
    ) -> Result<ExprValue, WireError> {
        if self.peek()? == NULL
            && let Some(d) = shape.default_of(key)
        {
            self.at += 1;
            return Ok(super::column(shape, key, d.clone()));
        }
        if self.peek()? != STRING {
            return Ok(ExprValue::from_json_owned(self.nested(depth)?));
        }
        self.at += 1;
        let s = self.text()?;
        Ok(match super::timestamp_in(shape, key, s) {
            Some(t) => ExprValue::Timestamp(t),
            None => ExprValue::String(s.to_owned()),
        })
    }

    /// Fails unless the whole buffer has been read.
    pub fn end(&self) -> Result<(), WireError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(WireError("bytes follow the end"))
        }
    }
}

/// Decodes a `value` buffer.
pub fn to_value(bytes: &[u8]) -> Result<Value, WireError> {
    let mut d = Decoder::new(bytes);
    let v = d.value()?;
    d.end()?;
    Ok(v)
}

/// Decodes a `row` buffer.
pub fn to_row(bytes: &[u8]) -> Result<Row, WireError> {
    let mut d = Decoder::new(bytes);
    let r = d.object()?;
    d.end()?;
    Ok(r)
}

/// Decodes a `rows` buffer.
pub fn to_rows(bytes: &[u8]) -> Result<Vec<Row>, WireError> {
    let mut d = Decoder::new(bytes);
    let n = d.count()?;
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        list.push(d.object()?);
    }
    d.end()?;
    Ok(list)
}

/// Decodes a `rows` buffer straight into the interpreter's values.
pub fn to_shaped_rows(bytes: &[u8], shape: &dyn Shape) -> Result<Vec<ExprValue>, WireError> {
    let mut d = Decoder::new(bytes);
    let n = d.count()?;
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        list.push(d.shaped(shape)?);
    }
    d.end()?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A random JSON value from a small generator (no crate needed).
    fn next(seed: &mut u64, n: u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed % n
    }

    fn random(seed: &mut u64, depth: usize) -> Value {
        match next(seed, if depth > 3 { 7 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(next(seed, 2) == 0),
            2 => json!((next(seed, u64::MAX) as i64).wrapping_sub(i64::MAX / 2)),
            3 => json!(u64::MAX - next(seed, 1000)),
            4 => json!((next(seed, 1_000_000) as f64) / 7.0 - 5000.0),
            5 => json!(["", "a", "Ä\u{1F600}", "x\"y\\z", "\u{0}"][next(seed, 5) as usize]),
            6 => json!(i64::MIN + next(seed, 3) as i64),
            7 => Value::Array(
                (0..next(seed, 4))
                    .map(|_| random(seed, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut m = Map::new();
                for _ in 0..next(seed, 5) {
                    let k = ["id", "name", "ä", "", "version", "x"][next(seed, 6) as usize];
                    m.insert(k.into(), random(seed, depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn values_round_trip_exactly() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5_000 {
            let v = random(&mut seed, 0);
            let back = to_value(&value(&v)).unwrap();
            // Equal as values and as text (key order, number kinds).
            assert_eq!(back, v);
            assert_eq!(back.to_string(), v.to_string());
        }
    }

    struct TestShape(bool);

    impl Shape for TestShape {
        fn timestamp(&self, column: &str) -> bool {
            column == "t" || column == "id"
        }
        fn include(&self, key: &str) -> Option<Option<&dyn Shape>> {
            match key {
                "inc" if self.0 => Some(Some(&TestShape(false))),
                "inc" => Some(Some(self)),
                "gone" => Some(None),
                _ => None,
            }
        }
        fn default_of(&self, column: &str) -> Option<&Value> {
            static DEFAULT: std::sync::LazyLock<Value> =
                std::sync::LazyLock::new(|| json!("2026-01-01T00:00:00Z"));
            (column == "t").then(|| &*DEFAULT)
        }
    }

    /// Decoding straight into values gives what decoding a row and then
    /// converting it gives, key order and number kinds included, on random
    /// rows with timestamp columns (valid, invalid and not timestamps),
    /// included rows and lists, and keys whose entity is unknown.
    #[test]
    fn shaped_decoding_is_decoding_then_converting() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let texts = [
            "2026-01-01T00:00:00Z",
            "2026-01-01T10:00:00.5+02:00",
            "2026-13-01T00:00:00Z",
            "2026-01-01Txx:00:00Z",
            "plain",
        ];
        for _ in 0..3_000 {
            let mut row = Map::new();
            for _ in 0..next(&mut seed, 7) {
                let k = ["id", "t", "inc", "gone", "x", "name"][next(&mut seed, 6) as usize];
                let v = match next(&mut seed, 4) {
                    0 => json!(texts[next(&mut seed, 5) as usize]),
                    1 if k == "inc" => {
                        let inner = random(&mut seed, 1);
                        json!([inner, {"t": texts[0], "inc": {"t": texts[1]}}, 3])
                    }
                    2 if k == "inc" => json!({"t": texts[1], "x": random(&mut seed, 2)}),
                    _ => random(&mut seed, 1),
                };
                row.insert(k.to_owned(), v);
            }
            let bytes = rows(std::slice::from_ref(&row));
            let direct = to_shaped_rows(&bytes, &TestShape(true)).unwrap();
            let via_rows: Vec<ExprValue> = to_rows(&bytes)
                .unwrap()
                .into_iter()
                .map(|r| super::super::shaped(&TestShape(true), r))
                .collect();
            assert_eq!(format!("{direct:?}"), format!("{via_rows:?}"));
        }
        // A stored null of a column with a default reads as the default.
        let row = match json!({"t": null, "x": null}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let read = to_shaped_rows(&rows(std::slice::from_ref(&row)), &TestShape(true)).unwrap();
        assert_eq!(
            format!("{read:?}"),
            format!("{:?}", [super::super::shaped(&TestShape(true), row)])
        );
        let ExprValue::Map(m) = &read[0] else {
            panic!("{read:?}")
        };
        assert!(matches!(m.get("t"), Some(ExprValue::Timestamp(_))), "{m:?}");
        assert_eq!(m.get("x"), Some(&ExprValue::Null));
        // Cut buffers fail, never panic.
        let row = match json!({"t": texts[0], "inc": [{"t": texts[1]}], "gone": {"a": 1}}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let bytes = rows(&[row]);
        assert!(to_shaped_rows(&bytes, &TestShape(true)).is_ok());
        for n in 0..bytes.len() {
            assert!(
                to_shaped_rows(&bytes[..n], &TestShape(true)).is_err(),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn rows_share_one_key_table() {
        let list: Vec<Row> = (0..3)
            .map(
                |i| match json!({"id": format!("r{i}"), "balance": i, "nested": {"id": i}}) {
                    Value::Object(m) => m,
                    _ => unreachable!(),
                },
            )
            .collect();
        let bytes = rows(&list);
        // Each key's text appears once.
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("balance").count(), 1);
        assert_eq!(text.matches("nested").count(), 1);
        assert_eq!(to_rows(&bytes).unwrap(), list);
        assert_eq!(to_rows(&rows(&[])).unwrap(), Vec::<Row>::new());
    }

    #[test]
    fn bad_buffers_are_refused() {
        let ok = row(&match json!({"a": "bc", "d": [1, 2.5]}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        });
        assert!(to_row(&ok).is_ok());
        // Every cut is an error, never a panic.
        for n in 0..ok.len() {
            assert!(to_row(&ok[..n]).is_err(), "cut at {n}");
        }
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(to_row(&trailing), Err(WireError("bytes follow the end")));
        assert_eq!(to_row(&[NULL]), Err(WireError("a row is not an object")));
        assert_eq!(to_value(&[9]), Err(WireError("an unknown tag")));
        // A count the buffer cannot hold allocates nothing.
        assert_eq!(
            to_value(&[ARRAY, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(WireError("a count exceeds the buffer"))
        );
        assert_eq!(
            to_value(&[STRING, 1, 0xff]),
            Err(WireError("a string is not UTF-8"))
        );
        assert_eq!(
            to_value(&[OBJECT, 2, 0, 1, b'a', NULL, 1, NULL]),
            Err(WireError("an object has a key twice"))
        );
        assert_eq!(
            to_value(&[OBJECT, 1, 2, NULL]),
            Err(WireError("a key is not in the key table"))
        );
        let mut nan = vec![DOUBLE];
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(to_value(&nan), Err(WireError("a number is not finite")));
        let deep: Vec<u8> = std::iter::repeat_n([ARRAY, 1], MAX_DEPTH + 2)
            .flatten()
            .chain([NULL])
            .collect();
        assert_eq!(to_value(&deep), Err(WireError("values nest too deeply")));
        assert_eq!(
            to_value(&[
                INT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ]),
            Err(WireError("a number is longer than 64 bits"))
        );
    }
}
