//! Runtime values of the expression language, and their JSON form.

use indexmap::IndexMap;
use serde_json::Number;
use std::hash::BuildHasherDefault;

/// The maps of the expression language: string keys in insertion order,
/// hashed with a small fast deterministic hasher.
pub type Map = IndexMap<String, Value, BuildHasherDefault<crate::hash::IdHasher>>;
use std::fmt;

/// A value computed by an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit unsigned integer.
    Uint(u64),
    /// A double.
    Double(f64),
    /// Text.
    String(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A map with string keys, in insertion order.
    Map(Map),
    /// An instant: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A span of time in microseconds.
    Duration(i64),
    /// A type, as `type(x)` gives it and the type names denote (`int`,
    /// `google.protobuf.Timestamp`): CEL's name of the type.
    Type(&'static str),
}

/// The names that denote types where nothing else is bound to them, each
/// with CEL's name of the type.
pub const TYPE_NAMES: &[(&str, &str)] = &[
    ("null_type", "null_type"),
    ("bool", "bool"),
    ("int", "int"),
    ("uint", "uint"),
    ("double", "double"),
    ("string", "string"),
    ("bytes", "bytes"),
    ("list", "list"),
    ("map", "map"),
    ("type", "type"),
    ("google.protobuf.Timestamp", "google.protobuf.Timestamp"),
    ("google.protobuf.Duration", "google.protobuf.Duration"),
];

/// The type a name denotes (`int`, `google.protobuf.Timestamp`), if any.
pub fn type_named(name: &str) -> Option<Value> {
    TYPE_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| Value::Type(t))
}

impl Value {
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Timestamp(_) => "timestamp",
            Value::Duration(_) => "duration",
            Value::Type(_) => "type",
        }
    }

    /// CEL's name of this value's type, what `type(x)` gives.
    pub fn cel_type(&self) -> &'static str {
        match self {
            Value::Null => "null_type",
            Value::Timestamp(_) => "google.protobuf.Timestamp",
            Value::Duration(_) => "google.protobuf.Duration",
            other => other.type_name(),
        }
    }

    /// The type's name with its article (`an int`, `a string`), for
    /// messages.
    pub fn a_type(&self) -> &'static str {
        match self {
            Value::Null => "a null",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Uint(_) => "a uint",
            Value::Double(_) => "a double",
            Value::String(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
            Value::Type(_) => "a type",
            Value::Timestamp(_) => "a timestamp",
            Value::Duration(_) => "a duration",
        }
    }

    /// Converts JSON to a value: integral numbers that fit become `Int`,
    /// other numbers `Double`; strings stay strings.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// [`Value::from_json`] of JSON no longer needed: strings and keys move
    /// instead of being copied.
    pub fn from_json_owned(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => {
                Value::List(a.into_iter().map(Value::from_json_owned).collect())
            }
            serde_json::Value::Object(m) => {
                let mut out = Map::with_capacity_and_hasher(m.len(), Default::default());
                for (k, v) in m {
                    out.insert(k, Value::from_json_owned(v));
                }
                Value::Map(out)
            }
            other => Value::from_json(&other),
        }
    }

    /// Converts to JSON: timestamps as RFC 3339 text, durations as seconds
    /// (`"90s"`). Fails on NaN and infinities, which JSON cannot hold.
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        Ok(match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::Number((*i).into()),
            Value::Uint(u) => serde_json::Value::Number((*u).into()),
            // CEL's JSON form of bytes: base64.
            Value::Bytes(b) => serde_json::Value::String({
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(b)
            }),
            Value::Double(d) => match Number::from_f64(*d) {
                Some(n) => serde_json::Value::Number(n),
                None => return Err(format!("`{d}` cannot be written as JSON")),
            },
            Value::String(s) => serde_json::Value::String(s.clone()),
            // (Sized up front: collecting through `Result` gives no size
            // hint, and maps of rows grew and rehashed key by key.)
            Value::List(l) => {
                let mut out = Vec::with_capacity(l.len());
                for v in l {
                    out.push(v.to_json()?);
                }
                serde_json::Value::Array(out)
            }
            Value::Map(m) => {
                let mut out = serde_json::Map::with_capacity(m.len());
                for (k, v) in m {
                    out.insert(k.clone(), v.to_json()?);
                }
                serde_json::Value::Object(out)
            }
            Value::Timestamp(t) => serde_json::Value::String(format_timestamp(*t)),
            Value::Duration(d) => serde_json::Value::String(format_duration(*d)),
            // A type is written as its name.
            Value::Type(name) => serde_json::Value::String((*name).to_owned()),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Uint(u) => write!(f, "{u}"),
            Value::Bytes(b) => write!(f, "{}", String::from_utf8_lossy(b)),
            Value::Double(d) => write!(f, "{d}"),
            Value::String(s) => write!(f, "{s}"),
            Value::Timestamp(t) => write!(f, "{}", format_timestamp(*t)),
            Value::Duration(d) => write!(f, "{}", format_duration(*d)),
            Value::Type(name) => write!(f, "{name}"),
            other => match other.to_json() {
                Ok(j) => write!(f, "{j}"),
                Err(_) => write!(f, "?"),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Calendar arithmetic (Howard Hinnant's days_from_civil / civil_from_days).

pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Formats microseconds since the epoch as RFC 3339 UTC
/// (`2026-01-01T00:00:00Z`, with a fraction only when there is one).
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rem = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    let frac = rem % 1_000_000;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let digit = |n: i64| b'0' + (n % 10) as u8;
    let mut out = String::with_capacity(28);
    if (0..=9999).contains(&y) {
        // Digits by hand: rows carry several timestamps each, and `write!`
        // (then a `char` push per digit) was a tenth of a paged read's
        // interpreter time.
        let d2 = |n: i64| [digit(n / 10), digit(n)];
        let (mo, da, ho, mi, se) = (d2(m), d2(d), d2(hh), d2(mm), d2(ss));
        let head = [
            digit(y / 1000),
            digit(y / 100),
            digit(y / 10),
            digit(y),
            b'-',
            mo[0],
            mo[1],
            b'-',
            da[0],
            da[1],
            b'T',
            ho[0],
            ho[1],
            b':',
            mi[0],
            mi[1],
            b':',
            se[0],
            se[1],
        ];
        // Only ASCII digits and separators were written.
        out.push_str(std::str::from_utf8(&head).unwrap_or_default());
    } else {
        use std::fmt::Write;
        let _ = write!(out, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
    }
    if frac != 0 {
        // The fraction's digits, trailing zeros dropped.
        let (mut f, mut width) = (frac, 6);
        while f % 10 == 0 {
            f /= 10;
            width -= 1;
        }
        let mut digits = [b'0'; 6];
        for slot in digits.iter_mut().take(width).rev() {
            *slot = digit(f);
            f /= 10;
        }
        out.push('.');
        out.push_str(
            std::str::from_utf8(digits.get(..width).unwrap_or_default()).unwrap_or_default(),
        );
    }
    out.push('Z');
    out
}

/// A cheap shape test before a column lookup: `YYYY-MM-DDT…`.
pub fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b.get(4) == Some(&b'-') && b.get(7) == Some(&b'-')
}

/// Parses RFC 3339 (`2026-01-01T10:00:00Z`, `…T10:00:00.5+02:00`; a space
/// instead of `T` and lowercase `t`/`z` are accepted) into microseconds;
/// `None` also for an instant outside years 1 to 9999 in UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // Digits only, read by hand: `str::parse` and a `String` for the
    // fraction made this a tenth of a `transfer`'s interpreter time (rows
    // carry three timestamps each).
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r).filter(|t| !t.is_empty())?;
        t.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = b.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        // Microseconds: the first six digits, padded with zeros.
        for k in 0..6 {
            frac = frac * 10 + digits.get(k).map_or(0, |c| i64::from(c - b'0'));
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        b'+' | b'-' if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let sign = if b.get(i) == Some(&b'-') { -1 } else { 1 };
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se.min(59) - offset;
    // An offset may carry the instant out of years 1 to 9999 in UTC
    // (`0001-01-01T00:00:00+01:00`): no engine holds it.
    secs.checked_mul(1_000_000)?
        .checked_add(frac)
        .filter(|t| super::eval::TIMESTAMP_RANGE.contains(t))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Formats a duration as seconds (`"90s"`, `"1.5s"`), CEL's form.
pub fn format_duration(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let (s, frac) = (abs / 1_000_000, abs % 1_000_000);
    if frac == 0 {
        format!("{sign}{s}s")
    } else {
        format!("{sign}{s}.{}s", format!("{frac:06}").trim_end_matches('0'))
    }
}

/// Parses a duration like `15m`, `1h30m`, `1.5s`, `100ms`, `-2h` into
/// microseconds. Units: `h`, `m`, `s`, `ms`, `us`, `ns`.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = rest.get(..n)?;
        rest = rest.get(n..)?;
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest.get(..u)?;
        rest = rest.get(u..)?;
        // Microseconds per unit, as a fraction num/den.
        let (num, den): (i64, i64) = match unit {
            "h" => (3_600_000_000, 1),
            "m" => (60_000_000, 1),
            "s" => (1_000_000, 1),
            "ms" => (1_000, 1),
            "us" | "µs" => (1, 1),
            "ns" => (1, 1_000),
            _ => return None,
        };
        if number.is_empty() {
            return None;
        }
        let part = if number.contains('.') {
            let f: f64 = number.parse().ok()?;
            let v = (f * num as f64 / den as f64).round();
            if !v.is_finite() || v.abs() > 9.0e18 {
                return None;
            }
            v as i64
        } else {
            let i: i64 = number.parse().ok()?;
            i.checked_mul(num)? / den
        };
        total = total.checked_add(part)?;
    }
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written digits agree with `write!`'s formatting, fractions
    /// and every field's carries included, and round-trip through
    /// `parse_timestamp`.
    #[test]
    fn timestamps_format_as_write_did() {
        fn reference(micros: i64) -> String {
            use std::fmt::Write;
            let days = micros.div_euclid(MICROS_PER_DAY);
            let rem = micros.rem_euclid(MICROS_PER_DAY);
            let (y, m, d) = civil_from_days(days);
            let (secs, frac) = (rem / 1_000_000, rem % 1_000_000);
            let mut out = String::new();
            let _ = write!(
                out,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            if frac != 0 {
                let digits = format!("{frac:06}");
                let _ = write!(out, ".{}", digits.trim_end_matches('0'));
            }
            out.push('Z');
            out
        }
        let mut x: i64 = 0x2545_F491;
        let mut cases = vec![0, 1, 10, 999_999, 1_000_000, -1, 253_402_300_799_999_999];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x.rem_euclid(253_402_300_800_000_000));
        }
        for micros in cases {
            let text = format_timestamp(micros);
            assert_eq!(text, reference(micros), "{micros}");
            assert_eq!(parse_timestamp(&text), Some(micros), "{text}");
        }
    }

    /// The hand-read digits agree with the former `str::parse` version on
    /// valid timestamps and on every one-byte corruption of them.
    #[test]
    fn parse_timestamp_agrees_with_its_former_self() {
        fn reference(s: &str) -> Option<i64> {
            let b = s.as_bytes();
            let num = |r: std::ops::Range<usize>| -> Option<i64> {
                let t = s.get(r)?;
                if t.bytes().all(|c| c.is_ascii_digit()) {
                    t.parse().ok()
                } else {
                    None
                }
            };
            if b.len() < 20
                || b.get(4) != Some(&b'-')
                || b.get(7) != Some(&b'-')
                || !matches!(b.get(10), Some(b'T' | b't' | b' '))
                || b.get(13) != Some(&b':')
                || b.get(16) != Some(&b':')
            {
                return None;
            }
            let (y, mo, d, h, mi, se) = (
                num(0..4)?,
                num(5..7)?,
                num(8..10)?,
                num(11..13)?,
                num(14..16)?,
                num(17..19)?,
            );
            if !(1..=12).contains(&mo)
                || d < 1
                || d > days_in_month(y, mo)
                || h > 23
                || mi > 59
                || se > 60
            {
                return None;
            }
            let mut i = 19;
            let mut frac = 0i64;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let start = i;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let digits = s.get(start..i)?;
                if digits.is_empty() {
                    return None;
                }
                let six: String = digits
                    .chars()
                    .chain(std::iter::repeat('0'))
                    .take(6)
                    .collect();
                frac = six.parse().ok()?;
            }
            let offset = match b.get(i)? {
                b'Z' | b'z' if i + 1 == b.len() => 0,
                b'+' | b'-' if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
                    let sign = if b.get(i) == Some(&b'-') { -1 } else { 1 };
                    let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                    if oh > 23 || om > 59 {
                        return None;
                    }
                    sign * (oh * 3600 + om * 60)
                }
                _ => return None,
            };
            let secs =
                days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se.min(59) - offset;
            secs.checked_mul(1_000_000)?
                .checked_add(frac)
                .filter(|t| crate::expr::TIMESTAMP_RANGE.contains(t))
        }
        let valid = [
            "2026-01-01T00:00:00Z",
            "2024-02-29T23:59:60.123456789+05:30",
            "1970-01-01t00:00:00.5z",
            "2026-12-04 21:36:39.000001-01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
        ];
        // An offset that carries the instant out of years 1 to 9999.
        assert_eq!(parse_timestamp("0001-01-01T00:00:00+01:00"), None);
        assert_eq!(parse_timestamp("9999-12-31T23:59:59-01:00"), None);
        assert!(parse_timestamp("0001-01-01T00:00:00-01:00").is_some());
        let bytes: &[u8] = b"0123456789+-.:TtZz x\xc3";
        let mut n = 0;
        for v in valid {
            assert_eq!(parse_timestamp(v), reference(v), "{v}");
            assert!(parse_timestamp(v).is_some(), "{v}");
            for at in 0..v.len() {
                for &c in bytes {
                    let mut m = v.as_bytes().to_vec();
                    m[at] = c;
                    if let Ok(m) = String::from_utf8(m) {
                        assert_eq!(parse_timestamp(&m), reference(&m), "{m}");
                        n += 1;
                    }
                }
                let cut = &v[..at];
                assert_eq!(parse_timestamp(cut), reference(cut), "{cut}");
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn timestamps_roundtrip() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-11-21T05:59:50.123456Z",
            "2000-02-29T23:59:59.5Z",
            "1969-12-31T23:59:59Z",
        ] {
            let t = parse_timestamp(s).unwrap();
            assert_eq!(format_timestamp(t), s);
        }
        assert_eq!(
            parse_timestamp("2026-01-01T02:00:00+02:00"),
            parse_timestamp("2026-01-01T00:00:00Z")
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z"), Some(1_000_000));
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(900_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000));
        assert_eq!(parse_duration("-2ms"), Some(-2_000));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("2500ns"), Some(2));
        assert_eq!(parse_duration("1h1ms"), Some(3_600_001_000));
        assert_eq!(parse_duration(""), None);
        assert_eq!(format_duration(1_500_000), "1.5s");
        assert_eq!(format_duration(-60_000_000), "-60s");
    }
}
