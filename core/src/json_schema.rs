//! JSON Schema as the checker and `sinew diff` read it: a schema with its
//! local `$ref`s followed and its `allOf`s merged ([`resolved`]), so that
//! what a property allows is found in one place, however it was written.

use serde_json::Value;

/// Keywords that say nothing about what a schema accepts.
pub const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "definitions",
    "$comment",
    "title",
    "description",
    "examples",
    "example",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// How many `$ref`s deep a schema is followed.
const REF_DEPTH: usize = 16;

/// A schema as it is compared: local `$ref`s replaced by what they name
/// and `allOf` merged into the schema around it (both at any depth), so
/// that a field narrowed in a shared definition or an `allOf` branch is
/// seen like one narrowed in place.
///
/// A `$ref` to a definition already being followed (a recursive schema)
/// stays as it is, so the work is linear in the schema's size.
pub fn resolved(root: &Value) -> Value {
    normalize(root, root, &mut Vec::new())
}

/// `s` resolved; `following` holds the `$ref`s being followed.
fn normalize(root: &Value, s: &Value, following: &mut Vec<String>) -> Value {
    let Value::Object(m) = s else {
        return s.clone();
    };
    let mut own = serde_json::Map::new();
    for (k, v) in m {
        let v = match k.as_str() {
            "$ref" | "allOf" => continue,
            "properties" | "patternProperties" => match v {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(n, p)| (n.clone(), normalize(root, p, following)))
                        .collect(),
                ),
                _ => v.clone(),
            },
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else" => normalize(root, v, following),
            "anyOf" | "oneOf" | "prefixItems" => match v {
                Value::Array(a) => {
                    Value::Array(a.iter().map(|x| normalize(root, x, following)).collect())
                }
                _ => v.clone(),
            },
            _ => v.clone(),
        };
        own.insert(k.clone(), v);
    }
    let mut out = Value::Object(own);
    if let Some(target) = m.get("$ref").and_then(Value::as_str) {
        let found = target
            .strip_prefix('#')
            .and_then(|p| root.pointer(&pointer_decoded(p)));
        match found {
            Some(t) if following.len() < REF_DEPTH && !following.iter().any(|f| f == target) => {
                following.push(target.to_owned());
                let t = normalize(root, t, following);
                following.pop();
                out = merge(t, out);
            }
            // A `$ref` that cannot be followed stays, and is compared as is.
            _ => {
                if let Value::Object(o) = &mut out {
                    o.insert("$ref".into(), Value::from(target));
                }
            }
        }
    }
    if let Some(Value::Array(all)) = m.get("allOf") {
        for part in all {
            out = merge(out, normalize(root, part, following));
        }
    }
    out
}

/// A `$ref` fragment as a JSON Pointer (`%25` and the like decoded).
fn pointer_decoded(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(h)) => {
                out.push(h);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Two schemas that both apply (an `allOf`), as one: members merged,
/// `required` joined, types and `enum`s intersected, the tighter of each
/// bound; any other keyword both give differently is kept as an `allOf`
/// of what is left (compared as is).
fn merge(a: Value, b: Value) -> Value {
    // `true` adds nothing; `false` accepts nothing.
    let (mut a, b) = match (a, b) {
        (Value::Object(a), Value::Object(b)) => (a, b),
        (Value::Bool(true), x) | (x, Value::Bool(true)) => return x,
        _ => return Value::Bool(false),
    };
    let mut rest = Vec::new();
    for (k, v) in b {
        let Some(mine) = a.remove(&k) else {
            a.insert(k, v);
            continue;
        };
        let merged = match k.as_str() {
            _ if mine == v => Some(v),
            "properties" => match (mine, v) {
                (Value::Object(mut x), Value::Object(y)) => {
                    for (n, p) in y {
                        let p = match x.remove(&n) {
                            Some(q) => merge(q, p),
                            None => p,
                        };
                        x.insert(n, p);
                    }
                    Some(Value::Object(x))
                }
                (x, _) => Some(x),
            },
            "required" => {
                let mut all: Vec<Value> = mine.as_array().cloned().unwrap_or_default();
                for r in v.as_array().into_iter().flatten() {
                    if !all.contains(r) {
                        all.push(r.clone());
                    }
                }
                Some(Value::Array(all))
            }
            "type" => {
                let list = |t: &Value| -> Vec<Value> {
                    match t {
                        Value::Array(a) => a.clone(),
                        t => vec![t.clone()],
                    }
                };
                // What both allow (an `integer` is a `number` too).
                let (x, y) = (list(&mine), list(&v));
                let allows = |l: &[Value], t: &Value| {
                    l.contains(t) || (t == "integer" && l.iter().any(|u| u == "number"))
                };
                let mut both: Vec<Value> = Vec::new();
                for t in x
                    .iter()
                    .filter(|t| allows(&y, t))
                    .chain(y.iter().filter(|t| allows(&x, t)))
                {
                    if !both.contains(t) {
                        both.push(t.clone());
                    }
                }
                Some(Value::Array(both))
            }
            "enum" => {
                let y = v.as_array().cloned().unwrap_or_default();
                Some(Value::Array(
                    mine.as_array()
                        .into_iter()
                        .flatten()
                        .filter(|x| y.contains(x))
                        .cloned()
                        .collect(),
                ))
            }
            "maxLength" | "maximum" | "exclusiveMaximum" | "maxItems" | "maxProperties" => {
                match (mine.as_f64(), v.as_f64()) {
                    (Some(x), Some(y)) => Some(if y < x { v } else { mine }),
                    _ => None,
                }
            }
            "minLength" | "minimum" | "exclusiveMinimum" | "minItems" | "minProperties" => {
                match (mine.as_f64(), v.as_f64()) {
                    (Some(x), Some(y)) => Some(if y > x { v } else { mine }),
                    _ => None,
                }
            }
            "additionalProperties" if mine == Value::Bool(false) || v == Value::Bool(false) => {
                Some(Value::Bool(false))
            }
            "items" => Some(merge(mine, v)),
            _ if ANNOTATIONS.contains(&k.as_str()) => Some(mine),
            _ => {
                rest.push(serde_json::json!({ k.clone(): v }));
                Some(mine)
            }
        };
        if let Some(m) = merged {
            a.insert(k, m);
        }
    }
    if !rest.is_empty() {
        a.insert("allOf".into(), Value::Array(rest));
    }
    Value::Object(a)
}
