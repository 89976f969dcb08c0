//! Rows: typed views for expressions, field checks before writes, the
//! normal form of values as stored.

use serde_json::Value as Json;

use crate::expr::Value;
use crate::expr::value::{format_timestamp, parse_timestamp};
use crate::model::{Entity, FieldType};
use crate::ports::Row;
use crate::problem::{Code, Problem};

/// Whether `field` of `e` holds timestamps (the implicit ones included).
pub(crate) fn is_timestamp_column(e: &Entity, field: &str) -> bool {
    matches!(field, "created_at" | "updated_at" | "deleted_at")
        || e.fields
            .get(field)
            .is_some_and(|f| f.ty == FieldType::Timestamp)
}

/// A row of an entity, read without includes, as the interpreter sees it:
/// its timestamp columns hold timestamps.
impl crate::ports::Shape for Entity {
    fn timestamp(&self, column: &str) -> bool {
        is_timestamp_column(self, column)
    }

    fn include(&self, _: &str) -> Option<Option<&dyn crate::ports::Shape>> {
        None
    }

    fn default_of(&self, column: &str) -> Option<&Json> {
        required_default(self, column)
    }
}

/// The default of `column` when the spec declares it required (not
/// `nullable`) with one: what a stored null of it reads as.
pub(crate) fn required_default<'e>(e: &'e Entity, column: &str) -> Option<&'e Json> {
    e.fields
        .get(column)
        .filter(|f| !f.nullable)
        .and_then(|f| f.default.as_ref())
}

/// A row as an expression value: timestamp columns become timestamps.
pub(crate) fn row_to_value(e: &Entity, row: &Row) -> Value {
    crate::ports::shaped(e, row.clone())
}

/// A filter value in the form rows store: timestamps in canonical RFC 3339,
/// uuids in lower case. Text no column of this field can hold becomes
/// `false`, a value of another type, which equals and orders against
/// nothing on every engine (Postgres could not even bind it): text with a
/// NUL character (no engine stores one), text that is no uuid against a
/// uuid column.
pub(crate) fn normalize(e: &Entity, field: &str, v: Json) -> Json {
    let ty = e.column_type(field);
    let mut v = v;
    if ty == Some(FieldType::Json) {
        // A list (`in`) or the value: its numbers as stored.
        jsonb_form(&mut v);
    }
    let timestamp = is_timestamp_column(e, field);
    let one = |v: Json| match v {
        Json::String(s) if s.contains('\0') => Json::Bool(false),
        Json::String(s) if matches!(ty, Some(FieldType::Uuid | FieldType::Ref)) => {
            let lower = s.to_ascii_lowercase();
            if crate::hash::is_uuid(&lower) {
                Json::String(lower)
            } else {
                Json::Bool(false)
            }
        }
        Json::String(s) if timestamp => match parse_timestamp(&s) {
            Some(t) => Json::String(format_timestamp(t)),
            None => Json::String(s),
        },
        other => other,
    };
    match v {
        Json::Array(a) => Json::Array(a.into_iter().map(one).collect()),
        other => one(other),
    }
}

/// Whether `v` is a value column `field` stores, in the form it stores it
/// (a timestamp in canonical RFC 3339, a uuid in lower case): what a
/// paging cursor's key must be, since only a row's own keys make one. Null
/// fits every column (a read's rows may hold it where a default stands for
/// it).
pub(crate) fn fits_column(e: &Entity, field: &str, v: &Json) -> bool {
    if v.is_null() {
        return true;
    }
    match (e.column_type(field), v) {
        (Some(FieldType::String), Json::String(s)) => !s.contains('\0'),
        (Some(FieldType::Integer), v) => v.is_i64(),
        (Some(FieldType::Number), v) => v.is_number(),
        (Some(FieldType::Boolean), v) => v.is_boolean(),
        (Some(FieldType::Timestamp), Json::String(s)) => {
            parse_timestamp(s).is_some_and(|t| format_timestamp(t) == *s)
        }
        (Some(FieldType::Uuid | FieldType::Ref), Json::String(s)) => {
            crate::hash::is_uuid(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
        }
        _ => false,
    }
}

/// Checks (and normalizes) the fields `keys` of a row about to be written
/// against their declarations: type, null, range, length, enum.
pub(crate) fn check_fields<'k>(
    entity: &str,
    e: &Entity,
    row: &Row,
    keys: impl Iterator<Item = &'k String>,
) -> Result<(), Problem> {
    let mut errors = Vec::new();
    for key in keys {
        let Some(f) = e.fields.get(key) else { continue };
        let v = row.get(key).unwrap_or(&Json::Null);
        let mut fail = |why: String| errors.push((key.clone(), why));
        if v.is_null() {
            if !f.nullable {
                fail("cannot be null".into());
            }
            continue;
        }
        for why in f.violations(v) {
            fail(why);
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let detail = errors
        .iter()
        .map(|(k, why)| format!("`{entity}.{k}` {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    let list = errors
        .into_iter()
        .map(|(k, why)| serde_json::json!({"field": k, "message": why}))
        .collect();
    Err(Problem::new(Code::ConstraintViolated, detail).with_errors(list))
}

/// A row's values in the form every store keeps and answers them:
/// timestamps in canonical RFC 3339, `number` fields spelled as a double
/// column gives them back, uuids in lower case, `json` values in `jsonb`'s
/// form.
pub(crate) fn normalize_row(e: &Entity, row: &mut Row) {
    for (k, v) in row.iter_mut() {
        if is_timestamp_column(e, k)
            && let Some(t) = v.as_str().and_then(parse_timestamp)
        {
            *v = Json::String(format_timestamp(t));
        } else if e.fields.get(k).is_some_and(|f| f.ty == FieldType::Number)
            && let Json::Number(n) = v
            && let Some(x) = canonical_number(n)
        {
            *v = x;
        } else if matches!(e.column_type(k), Some(FieldType::Uuid | FieldType::Ref))
            && let Json::String(s) = v
            && s.bytes().any(|b| b.is_ascii_uppercase())
        {
            // A uuid column gives its value back in lower case.
            s.make_ascii_lowercase();
        } else if e.fields.get(k).is_some_and(|f| f.ty == FieldType::Json) {
            jsonb_form(v);
        }
    }
}

/// A `json` value's objects with their keys in the order a `jsonb` column
/// gives them back (shorter keys first, then by bytes), at every depth, and
/// its numbers spelled one way ([`json_number`]), so every engine answers
/// the same text and finds the same rows equal.
fn jsonb_form(v: &mut Json) {
    match v {
        Json::Object(m) => {
            let mut entries: Vec<(String, Json)> = std::mem::take(m).into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            for (k, mut x) in entries {
                jsonb_form(&mut x);
                m.insert(k, x);
            }
        }
        Json::Array(xs) => xs.iter_mut().for_each(jsonb_form),
        Json::Number(n) => {
            if let Some(x) = json_number(n) {
                *v = x;
            }
        }
        _ => {}
    }
}

/// A number in a `json` value as every engine stores and compares it: a
/// whole value that fits 64 bits is an integer (`1.0` and `1e2` are `1`
/// and `100`, as `jsonb` compares them equal to those and gives `1e2`
/// back as `100`), anything else as it is. `None` when it is so already.
fn json_number(n: &serde_json::Number) -> Option<Json> {
    if n.is_i64() || n.is_u64() {
        return None;
    }
    let x = n.as_f64()?;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        reason = "whole and within the 64-bit range, checked first"
    )]
    let whole = (x.fract() == 0.0 && x >= i64::MIN as f64 && x < i64::MAX as f64)
        .then(|| Json::from(x as i64));
    whole
}

/// A `number` field's value as a double column holds it and gives it
/// back, the spelling every engine stores: a whole value under 10¹⁵ is an
/// integer (`3.0` is `3`, `-0.0` is `0`), anything else a double (`1e15`,
/// `2.5`). So `3` and `3.0` are one value: one group of an aggregate, the
/// same answer from every store. `None` when `n` is spelled so already.
fn canonical_number(n: &serde_json::Number) -> Option<Json> {
    const WHOLE: f64 = 1e15;
    let x = n.as_f64()?;
    let whole = x.fract() == 0.0 && x.abs() < WHOLE;
    match (n.as_i64(), whole) {
        (Some(_), true) => None,
        #[expect(clippy::cast_possible_truncation, reason = "whole and under 10^15")]
        (_, true) => Some(Json::from(x as i64)),
        (None, false) if !n.is_u64() => None,
        _ => serde_json::Number::from_f64(x).map(Json::Number),
    }
}

#[cfg(test)]
mod tests {
    use crate::hash::{is_uuid, uuid_from};

    #[test]
    fn numbers_are_spelled_as_a_double_column_gives_them_back() {
        use serde_json::json;
        let n = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => super::canonical_number(&n),
            _ => unreachable!(),
        };
        assert_eq!(n(json!(3.0)), Some(json!(3)));
        assert_eq!(n(json!(-0.0)), Some(json!(0)));
        assert_eq!(n(json!(3)), None);
        assert_eq!(n(json!(2.5)), None);
        assert_eq!(n(json!(1e20)), None);
        assert_eq!(
            n(json!(999_999_999_999_999.0)),
            Some(json!(999_999_999_999_999_i64))
        );
        assert_eq!(n(json!(1_000_000_000_000_000_i64)), Some(json!(1e15)));
        assert_eq!(
            n(json!(18_446_744_073_709_551_615_u64)),
            Some(json!(1.8446744073709552e19))
        );
    }

    #[test]
    fn uuids() {
        let a = uuid_from("req-1\u{0}order\u{0}1");
        assert!(is_uuid(&a), "{a}");
        assert_eq!(a, uuid_from("req-1\u{0}order\u{0}1"));
        assert_ne!(a, uuid_from("req-2\u{0}order\u{0}1"));
        assert_eq!(a.as_bytes()[14], b'8');
        assert!(!is_uuid("not-a-uuid"));
    }
}
