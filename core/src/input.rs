//! What the contract does to a request's input before the flow sees it:
//! whole numbers written as decimals become integers, text with a NUL
//! character is refused, and schema violations are reported in bounded,
//! readable form.

use serde_json::{Value, json};

/// The most violations one `400 invalid_input` lists; `errorCount` gives
/// the total when there are more.
pub const MAX_VIOLATIONS: usize = 10;

/// The longest excerpt of a value quoted in a message, in characters.
const MAX_QUOTE: usize = 40;

/// The longest message of one violation, in characters.
const MAX_MESSAGE: usize = 200;

/// How deep an input may nest, counting its arrays and objects (`[]` and
/// `{"a": []}` are one and two levels; a string or a number none). Every
/// engine refuses a deeper one before anything runs (`400 invalid_json`),
/// and this is the depth the whole way of an input can carry: the
/// request crossing into the component and the audit entry (which nests
/// the input a few levels deeper) are JSON read back with serde_json's
/// limit of 128 levels, the state file of `sinew run` nests that entry
/// further, and a stored `json` field travels inside its row, itself
/// perhaps inside the rows that include it, in the wire format's 64
/// levels (the wire module's `MAX_DEPTH`).
pub const MAX_DEPTH: usize = 32;

/// Whether `v` nests deeper than [`MAX_DEPTH`] (iterative: safe on any
/// value).
pub fn too_deep(v: &Value) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(m) => m.values().collect(),
            _ => continue,
        };
        if depth > MAX_DEPTH {
            return true;
        }
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    false
}

/// The refusal of an input [`too_deep`]: `what` is what the caller sent
/// ("the input", "the body").
pub fn too_deep_detail(what: &str) -> String {
    format!("{what} nests deeper than {MAX_DEPTH} levels of arrays and objects")
}

/// Which side of a tool a JSON Schema checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The input: `format` is asserted.
    Input,
    /// The output: `format` stays an annotation.
    Output,
}

impl Side {
    /// `input` or `output`, the tool's key.
    pub fn key(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// Why a schema does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where in the schema, as a JSON Pointer relative to the schema (empty
    /// for the whole schema).
    pub pointer: String,
    /// What the compiler said.
    pub message: String,
}

/// Compiles a tool's input or output schema (JSON Schema 2020-12) exactly
/// as every engine runs it. An input's `format` is asserted (`date-time`,
/// `date`, `uuid`, `email`, `uri`, …): callers and the OpenAPI document
/// expect it, and a value the flow cannot use is a 400, not a failure
/// inside the flow. The output's stays an annotation. The loader compiles
/// with it to report a schema that does not compile (`invalid-schema`), and
/// the bundle to run, so the two cannot disagree.
pub fn compile_schema(schema: &Value, side: Side) -> Result<jsonschema::Validator, SchemaError> {
    let bounded;
    let schema = if side == Side::Input {
        bounded = with_int64_bounds(schema);
        &bounded
    } else {
        schema
    };
    jsonschema::draft202012::options()
        .should_validate_formats(side == Side::Input)
        .with_format("date-time", date_time)
        .with_keyword(INT64_FLOOR, |_, _, _| Ok(Box::new(Int64Floor)))
        .build(schema)
        .map_err(|e| SchemaError {
            pointer: e.instance_path().to_string(),
            message: e.to_string().trim_end_matches('.').to_string(),
        })
}

/// A `date-time` as JSON Schema reads it (RFC 3339) that is also an
/// instant expressions can hold: years 1 to 9999 in UTC. `0000-01-01T00:00:00Z`
/// and `9999-12-31T23:59:59-01:00` are RFC 3339 but past that range: a
/// caller's value the flow would fail on (`timestamp(input.at)`), refused
/// with the input.
fn date_time(s: &str) -> bool {
    static RFC3339: std::sync::LazyLock<Option<jsonschema::Validator>> =
        std::sync::LazyLock::new(|| {
            jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&serde_json::json!({"type": "string", "format": "date-time"}))
                .ok()
        });
    RFC3339
        .as_ref()
        .is_some_and(|v| v.is_valid(&Value::String(s.to_owned())))
        && crate::expr::value::parse_timestamp(s)
            .is_some_and(|t| crate::expr::TIMESTAMP_RANGE.contains(&t))
}

/// The keyword [`with_int64_bounds`] adds beside the `minimum` of an
/// `integer` (a name no spec uses).
const INT64_FLOOR: &str = "x-sinew-int64-floor";

/// −2⁶³, as a double.
#[expect(clippy::cast_precision_loss, reason = "-2^63 is a double exactly")]
const FLOOR: f64 = i64::MIN as f64;

/// What `minimum: -9223372036854775808` cannot see: a number read as a
/// double that equals −2⁶³. JSON numbers past the 64-bit range are read as
/// doubles, and every whole number from −2⁶³ − 1024 down to −2⁶³ rounds to
/// exactly −2⁶³, which `minimum` compares as equal to the bound, so it
/// would pass. Such a number is refused (the double cannot tell
/// −9223372036854775808.0 from the numbers past it; the integer
/// −9223372036854775808 is read as one and passes).
struct Int64Floor;

impl<'i> jsonschema::Keyword<'i> for Int64Floor {
    fn validate(&self, instance: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        if self.is_valid(instance) {
            Ok(())
        } else {
            Err(jsonschema::ValidationError::custom(format!(
                "{} is less than the minimum of {}",
                quote(instance),
                i64::MIN
            )))
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        match instance {
            Value::Number(n) if !n.is_i64() && !n.is_u64() => n.as_f64().is_none_or(|f| f > FLOOR),
            _ => true,
        }
    }
}

/// `schema` with every `integer` it declares bounded to the 64-bit signed
/// range, as an input is validated: expressions read an `integer` input
/// as an int, and a whole number past that range (JSON allows it) would
/// be a decimal there, failing the flow on the caller's value. So it is
/// refused with the input (`400 invalid_input`, "is greater than the
/// maximum of 9223372036854775807"). A bound the schema gives that is
/// tighter stays; literal values (`const`, `enum`, `default`, `examples`)
/// are not schemas and are left as they are.
pub fn with_int64_bounds(schema: &Value) -> Value {
    let mut out = schema.clone();
    bound_integers(&mut out);
    out
}

fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let integer = match m.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => {
                    ts.iter().any(|t| t == "integer") && !ts.iter().any(|t| t == "number")
                }
                _ => false,
            };
            if integer {
                for (key, bound, tighter) in [
                    ("minimum", i64::MIN, std::cmp::Ordering::Greater),
                    ("maximum", i64::MAX, std::cmp::Ordering::Less),
                ] {
                    // A bound that is an i64 is within the range; a larger
                    // whole number or a decimal is compared as one.
                    let keep = m.get(key).is_some_and(|b| {
                        b.as_i64().is_some()
                            || b.as_f64().is_some_and(|b| {
                                #[expect(clippy::cast_precision_loss, reason = "compared only")]
                                let limit = bound as f64;
                                b.partial_cmp(&limit) == Some(tighter)
                            })
                    });
                    if !keep {
                        m.insert(key.to_owned(), Value::from(bound));
                    }
                }
                m.insert(INT64_FLOOR.to_owned(), Value::Bool(true));
            }
            // A closed object with no `properties`: the same with an empty
            // one, so that a property sent is refused by its name ("`x`
            // was unexpected"), not as "False schema does not allow 1".
            if m.get("additionalProperties") == Some(&Value::Bool(false))
                && !m.contains_key("properties")
                && !m.contains_key("patternProperties")
            {
                m.insert(
                    "properties".to_owned(),
                    Value::Object(serde_json::Map::new()),
                );
            }
            for (k, child) in m.iter_mut() {
                if !matches!(k.as_str(), "const" | "enum" | "default" | "examples") {
                    bound_integers(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// Whether a schema compiles, as [`compile_schema`] would say, remembered
/// by its canonical text: the loader asks on every analysis (the browser
/// preview analyses the spec at each edit), and compiling a schema costs
/// about a millisecond where looking it up costs microseconds. At most
/// 1024 schemas are remembered (the memory is dropped past that).
pub fn schema_error(schema: &Value, side: Side) -> Option<SchemaError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Seen = HashMap<(bool, String), Option<SchemaError>>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let key = (side == Side::Input, crate::hash::canonical(schema));
    let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(map) = seen.lock()
        && let Some(known) = map.get(&key)
    {
        return known.clone();
    }
    let error = compile_schema(schema, side).err();
    if let Ok(mut map) = seen.lock() {
        if map.len() >= 1024 {
            map.clear();
        }
        map.insert(key, error.clone());
    }
    error
}

/// Rewrites every number with no fractional part that fits in an `i64`
/// (`5.0`, `1e2`) as that integer, as JSON Schema counts them: the input
/// schema's `integer` and the entity's `integer` field then agree. Returns
/// whether anything changed.
pub fn normalize_numbers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let Some(f) = n.as_f64() else { return false };
            // -2^63 < f < 2^63 and whole: exactly an i64. (A double of
            // exactly -2^63 is also what every number down to -2^63 - 1024
            // reads as: it stays a double, past the range.)
            if whole_in_range(f) {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "whole and within the range of i64, checked above"
                )]
                let i = f as i64;
                *v = Value::from(i);
                true
            } else {
                false
            }
        }
        Value::Array(a) => a.iter_mut().fold(false, |c, x| normalize_numbers(x) | c),
        Value::Object(m) => m.values_mut().fold(false, |c, x| normalize_numbers(x) | c),
        _ => false,
    }
}

/// Whether double `f` is a whole number [`normalize_numbers`] reads as
/// an integer: strictly between −2⁶³ and 2⁶³.
fn whole_in_range(f: f64) -> bool {
    f.fract() == 0.0 && f > FLOOR && f < -FLOOR
}

/// Whether [`normalize_numbers`] would change anything.
pub fn has_whole_decimal(v: &Value) -> bool {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => n.as_f64().is_some_and(whole_in_range),
        Value::Array(a) => a.iter().any(has_whole_decimal),
        Value::Object(m) => m.values().any(has_whole_decimal),
        _ => false,
    }
}

/// The JSON Pointers of every string (and object key) holding a NUL
/// character, at most [`MAX_VIOLATIONS`] of them, and how many there are.
/// Postgres cannot store U+0000 in text, so no engine accepts it.
pub fn nul_characters(v: &Value) -> (Vec<Value>, usize) {
    fn hit(at: &str, out: &mut Vec<Value>, n: &mut usize) {
        *n += 1;
        if out.len() < MAX_VIOLATIONS {
            out.push(json!({
                "pointer": at,
                "message": "text may not contain the NUL character (U+0000)"
            }));
        }
    }
    fn walk(v: &Value, at: &mut String, out: &mut Vec<Value>, n: &mut usize) {
        match v {
            Value::String(s) if s.contains('\0') => hit(at, out, n),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&i.to_string());
                    walk(x, at, out, n);
                    at.truncate(len);
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    if k.contains('\0') {
                        hit(at, out, n);
                    }
                    walk(x, at, out, n);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut n = 0;
    walk(v, &mut String::new(), &mut out, &mut n);
    (out, n)
}

/// Whether any string (or key) of `v` holds a NUL character.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
        _ => false,
    }
}

/// A short quotation of a value for a message: its JSON text, cut to
/// [`MAX_QUOTE`] characters with the full size said.
pub fn quote(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > MAX_QUOTE => {
            let head: String = s.chars().take(MAX_QUOTE).collect();
            format!(
                "{}… ({} characters)",
                Value::String(head),
                s.chars().count()
            )
        }
        Value::Array(a) if a.len() > 3 => format!("an array of {} items", a.len()),
        Value::Object(m) if m.len() > 3 => format!("an object of {} properties", m.len()),
        other => {
            let text = other.to_string();
            if text.chars().count() > MAX_QUOTE {
                let head: String = text.chars().take(MAX_QUOTE).collect();
                format!("{head}…")
            } else {
                text
            }
        }
    }
}

fn cut(s: String) -> String {
    if s.chars().count() > MAX_MESSAGE {
        let mut head: String = s.chars().take(MAX_MESSAGE).collect();
        head.push('…');
        head
    } else {
        s
    }
}

/// One schema violation: a JSON Pointer to the offending value (for a
/// missing property, where it should be) and a message that quotes at
/// most a short excerpt of the value.
pub fn violation(e: &jsonschema::ValidationError) -> Value {
    let mut pointer = e.instance_path().to_string();
    if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
        && let Some(p) = property.as_str()
    {
        pointer = crate::diag::child(&pointer, p);
    }
    let message = cut(e.masked_with(quote(e.instance())).to_string());
    json!({"pointer": pointer, "message": message})
}

/// The violations of `input` against `schema`: at most [`MAX_VIOLATIONS`],
/// and how many there are in all. They are listed in the order of their
/// pointers (then messages), whatever the order of the keys sent: the same
/// input answers the same, byte for byte (a replay from the audit entry,
/// which keeps the input in canonical order, too).
pub fn violations(schema: &jsonschema::Validator, input: &Value) -> (Vec<Value>, usize) {
    let mut all: Vec<Value> = schema.iter_errors(input).map(|e| violation(&e)).collect();
    let n = all.len();
    let key = |v: &Value| {
        (
            v.get("pointer")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        )
    };
    all.sort_by_cached_key(key);
    all.truncate(MAX_VIOLATIONS);
    (all, n)
}

/// The `400 invalid_input` problem for `n` violations of which `listed`
/// are given.
pub fn invalid(detail: &str, listed: Vec<Value>, n: usize) -> crate::problem::Problem {
    let mut p = crate::problem::Problem::new(crate::problem::Code::InvalidInput, detail);
    if n > listed.len() {
        p.detail = format!(
            "{detail} ({n} violations, the first {} listed)",
            listed.len()
        );
        p.extra.insert("errorCount".into(), json!(n));
    }
    p.with_errors(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_are_instants_expressions_can_hold() {
        let schema = json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"}}});
        let v = compile_schema(&schema, Side::Input).unwrap();
        for (at, fails) in [
            ("2026-01-01T10:00:00+02:00", false),
            ("0001-01-01T00:00:00Z", false),
            ("0000-01-01T00:00:00Z", true),
            ("9999-12-31T23:59:59-01:00", true),
            ("2026-13-01T00:00:00Z", true),
            ("yesterday", true),
        ] {
            let (errors, _) = violations(&v, &json!({"at": at}));
            assert_eq!(!errors.is_empty(), fails, "{at}: {errors:?}");
        }
    }

    #[test]
    fn integers_past_64_bits_are_refused_in_inputs() {
        let schema = json!({"type": "object", "properties": {
            "n": {"type": "integer"},
            "small": {"type": "integer", "maximum": 10},
            "tags": {"type": "array", "items": {"type": ["integer", "null"]}},
            "x": {"type": "number"},
            "c": {"const": {"type": "integer"}},
            "m": {"$ref": "#/$defs/count"}},
            "$defs": {"count": {"type": "integer", "minimum": 0, "maximum": 1e30}}});
        let v = compile_schema(&schema, Side::Input).unwrap();
        for (input, fails) in [
            (json!({"n": 9_223_372_036_854_775_807_i64}), false),
            (json!({"n": -9_223_372_036_854_775_807_i64 - 1}), false),
            (json!({"n": 9_223_372_036_854_775_808_u64}), true),
            (json!({"n": 1e20}), true),
            (json!({"small": 11}), true),
            (
                json!({"tags": [1, null, 18_446_744_073_709_551_615_u64]}),
                true,
            ),
            (json!({"x": 1e20}), false),
            (json!({"c": {"type": "integer"}}), false),
            (json!({"m": 9_223_372_036_854_775_808_u64}), true),
            (json!({"m": 5}), false),
        ] {
            let (errors, _) = violations(&v, &input);
            assert_eq!(!errors.is_empty(), fails, "{input}: {errors:?}");
        }
        // Below -2^63, as the contract reads the text (normalized, then
        // validated): every number down to -2^63 - 1024 is the double
        // -2^63, which equals `minimum`; refused all the same.
        for (text, fails) in [
            (r#"{"n": -9223372036854775808}"#, false),
            (r#"{"n": -9223372036854775809}"#, true),
            (r#"{"n": -9223372036854776832}"#, true),
            (r#"{"n": -9223372036854775808.0}"#, true),
            (r#"{"n": -9223372036854777856}"#, true),
            (r#"{"tags": [-9223372036854775809]}"#, true),
            (r#"{"m": -9223372036854775809}"#, true),
            (r#"{"x": -9223372036854775809}"#, false),
        ] {
            let mut input: Value = serde_json::from_str(text).unwrap();
            normalize_numbers(&mut input);
            let (errors, _) = violations(&v, &input);
            assert_eq!(!errors.is_empty(), fails, "{text}: {errors:?}");
            if fails {
                let message = errors[0]["message"].as_str().unwrap();
                assert!(
                    message.contains("less than the minimum of -9223372036854775808"),
                    "{message}"
                );
            }
        }
        // The output's schema is not changed.
        let out = compile_schema(&schema, Side::Output).unwrap();
        assert!(violations(&out, &json!({"n": 1e20})).0.is_empty());
    }

    #[test]
    fn whole_decimals_become_integers() {
        let mut v = json!({"a": 5.0, "b": [1e2, 2.5], "c": 1e300, "d": -0.0, "e": 7});
        assert!(normalize_numbers(&mut v));
        assert_eq!(
            v,
            json!({"a": 5, "b": [100, 2.5], "c": 1e300, "d": 0, "e": 7})
        );
        let mut w = json!({"x": 1, "y": "5.0"});
        assert!(!normalize_numbers(&mut w));
        // -2^63 as a double is also every number a little past it: it
        // stays a double.
        let mut f = json!({"x": -9_223_372_036_854_775_808.0_f64});
        assert!(!normalize_numbers(&mut f));
        assert!(f["x"].is_f64());
    }

    #[test]
    fn nul_characters_are_found_in_values_and_keys() {
        let v = json!({"sku": "N\u{0}", "ok": "fine", "list": ["a", "\u{0}"], "k\u{0}": 1});
        let (found, n) = nul_characters(&v);
        assert_eq!(n, 3);
        let pointers: Vec<&str> = found.iter().filter_map(|f| f["pointer"].as_str()).collect();
        assert!(pointers.contains(&"/sku"));
        assert!(pointers.contains(&"/list/1"));
        assert!(has_nul(&v));
        assert!(!has_nul(&json!({"a": ["b"]})));
    }

    #[test]
    fn quotes_are_short() {
        let long = Value::String("x".repeat(900_000));
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.contains("900000 characters"));
        assert_eq!(quote(&json!(5)), "5");
    }

    /// A property sent to a closed object that declares none is refused
    /// by its name.
    #[test]
    fn an_unexpected_property_is_named() {
        let schema = compile_schema(
            &json!({"type": "object", "additionalProperties": false}),
            Side::Input,
        )
        .unwrap();
        let (listed, n) = violations(&schema, &json!({"x": 1}));
        assert_eq!(n, 1);
        let message = listed[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("'x' was unexpected"), "{message}");
    }

    #[test]
    fn violations_are_bounded() {
        let schema = jsonschema::draft202012::new(&json!({
            "type": "object",
            "properties": {"notes": {"type": "string", "maxLength": 10}},
            "additionalProperties": {"type": "integer"}
        }))
        .unwrap();
        let mut input = serde_json::Map::new();
        input.insert("notes".into(), json!("n".repeat(900_000)));
        for i in 0..50 {
            input.insert(format!("p{i}"), json!("s"));
        }
        let (listed, n) = violations(&schema, &Value::Object(input));
        assert_eq!(n, 51);
        assert_eq!(listed.len(), MAX_VIOLATIONS);
        let text = serde_json::to_string(&listed).unwrap();
        assert!(text.len() < 3000, "{} bytes", text.len());
    }

    /// The same input with its keys in another order lists the same
    /// violations in the same order.
    #[test]
    fn violations_do_not_depend_on_key_order() {
        let schema = jsonschema::draft202012::new(&json!({
            "type": "object",
            "properties": {"title": {"type": "string"}, "priority": {"enum": ["low"]}},
            "additionalProperties": {"type": "integer"}
        }))
        .unwrap();
        let a: Value =
            serde_json::from_str(r#"{"title": 5, "z": "s", "priority": "high", "a": "s"}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": "s", "priority": "high", "z": "s", "title": 5}"#)
                .unwrap();
        let (la, na) = violations(&schema, &a);
        assert_eq!((na, violations(&schema, &b)), (4, (la.clone(), 4)));
        let pointers: Vec<&str> = la.iter().filter_map(|v| v["pointer"].as_str()).collect();
        assert_eq!(pointers, ["/a", "/priority", "/title", "/z"]);
    }
}
