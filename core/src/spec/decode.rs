//! Decoding a JSON value into the spec model, collecting every format error
//! with its JSON Pointer instead of stopping at the first.

use serde_json::{Map, Value};
use std::collections::HashMap;

use super::*;
use crate::diag::{Diagnostic, child, suggest};
use crate::expr;
use crate::input::{Side, schema_error};

/// The decoding context: diagnostics found so far and the tool being
/// decoded (errors inside a tool are tagged with it).
#[derive(Default)]
pub(crate) struct Cx {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    pub tool: Option<String>,
}

impl Cx {
    pub fn error(&mut self, mut d: Diagnostic) {
        if d.tool.is_none() {
            d.tool.clone_from(&self.tool);
        }
        self.errors.push(d);
    }

    pub fn warn(&mut self, mut d: Diagnostic) {
        if d.tool.is_none() {
            d.tool.clone_from(&self.tool);
        }
        self.warnings.push(d);
    }
}

fn wrong_type(cx: &mut Cx, path: &str, want: &str, v: &Value) {
    cx.error(
        Diagnostic::new(
            "wrong-type",
            path,
            format!("expected {want}, found {}", crate::diag::a_json(v)),
        )
        .help(format!("write {want} here")),
    );
}

/// A JSON object being decoded: remembers which keys were asked for, so the
/// rest can be reported as unknown.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    asked: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(cx: &mut Cx, v: &'a Value, path: &str, what: &str) -> Option<Obj<'a>> {
        match v {
            Value::Object(map) => Some(Obj {
                map,
                path: path.to_string(),
                asked: Vec::new(),
            }),
            other => {
                wrong_type(cx, path, what, other);
                None
            }
        }
    }

    fn at(&self, key: &str) -> String {
        child(&self.path, key)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.asked.push(key);
        self.map.get(key)
    }

    fn req(&mut self, cx: &mut Cx, key: &'static str) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            cx.error(
                Diagnostic::new(
                    "missing-key",
                    self.path.clone(),
                    format!("missing required key `{key}`"),
                )
                .help(format!("add `\"{key}\": …` here")),
            );
        }
        v
    }

    fn string(&mut self, cx: &mut Cx, key: &'static str, required: bool) -> Option<String> {
        let v = if required {
            self.req(cx, key)?
        } else {
            self.get(key)?
        };
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::String(_) => {
                cx.error(
                    Diagnostic::new("invalid-value", self.at(key), format!("`{key}` is empty"))
                        .help("write a non-empty string"),
                );
                None
            }
            other => {
                wrong_type(cx, &self.at(key), "a string", other);
                None
            }
        }
    }

    fn name(&mut self, cx: &mut Cx, key: &'static str, required: bool) -> Option<String> {
        let s = self.string(cx, key, required)?;
        check_name(cx, &self.at(key), &s, "a name").then_some(s)
    }

    fn bool(&mut self, cx: &mut Cx, key: &'static str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                wrong_type(cx, &self.at(key), "true or false", other);
                false
            }
        }
    }

    fn uint(&mut self, cx: &mut Cx, key: &'static str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        // A whole decimal (`3000.0`) is an integer, as JSON Schema says.
        let whole = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9_007_199_254_740_992.0)
                .map(|f| f as u64)
        });
        match whole {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        self.at(key),
                        format!("`{key}` is {n}, outside {min}..={max}"),
                    )
                    .help(format!("use a whole number from {min} to {max}")),
                );
                None
            }
            None => {
                wrong_type(cx, &self.at(key), "a whole number", v);
                None
            }
        }
    }

    fn status(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        range: (u16, u16),
        default: Option<u16>,
    ) -> Option<u16> {
        let present = self.map.contains_key(key);
        if !present {
            if default.is_none() {
                self.req(cx, key);
            }
            self.asked.push(key);
            return default;
        }
        self.uint(cx, key, u64::from(range.0), u64::from(range.1))
            .and_then(|n| u16::try_from(n).ok())
    }

    fn names(&mut self, cx: &mut Cx, key: &'static str) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let path = self.at(key);
        string_list(cx, v, &path, true)
    }

    fn expr(&mut self, cx: &mut Cx, key: &'static str, required: bool) -> Option<Expression> {
        let v = if required {
            self.req(cx, key)?
        } else {
            self.get(key)?
        };
        expression(cx, v, &self.at(key))
    }

    /// `where`, when given.
    fn filters(&mut self, cx: &mut Cx) -> Option<Vec<Where>> {
        let at = self.at("where");
        self.get("where").map(|v| filters(cx, v, &at))
    }

    /// `orderBy`, when given.
    fn order_by(&mut self, cx: &mut Cx) -> Option<Vec<Order>> {
        let at = self.at("orderBy");
        self.get("orderBy").map(|v| order_by(cx, v, &at))
    }

    /// Reports keys nobody asked for (documentation and `x-` keys aside).
    fn finish(self, cx: &mut Cx) {
        for (key, value) in self.map {
            if self.asked.contains(&key.as_str()) {
                continue;
            }
            if is_extra_key(key) {
                if !key.starts_with("x-") && !value.is_string() {
                    wrong_type(cx, &self.at(key), "a string", value);
                }
                continue;
            }
            let help = suggest(key, self.asked.iter().copied(), "remove it");
            cx.error(
                Diagnostic::new("unknown-key", self.at(key), format!("unknown key `{key}`")).help(
                    if help.starts_with("did you mean") {
                        help
                    } else {
                        format!(
                            "remove it, or prefix it with `x-` to keep it as an extension; {help}"
                        )
                    },
                ),
            );
        }
    }
}

fn is_extra_key(key: &str) -> bool {
    matches!(key, "description" | "title" | "$comment") || key.starts_with("x-")
}

fn string_list(cx: &mut Cx, v: &Value, path: &str, names: bool) -> Vec<String> {
    let Value::Array(items) = v else {
        wrong_type(cx, path, "an array of strings", v);
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = child(path, &i.to_string());
        match item {
            Value::String(s) if names && !check_name(cx, &p, s, "a name") => {}
            Value::String(s) if s.is_empty() => cx.error(
                Diagnostic::new("invalid-value", p, "an empty string")
                    .help("write a non-empty one"),
            ),
            Value::String(s) if out.contains(s) => cx.error(
                Diagnostic::new("duplicate-name", p, format!("`{s}` is listed twice"))
                    .help("list it once"),
            ),
            Value::String(s) => out.push(s.clone()),
            other => wrong_type(cx, &p, "a string", other),
        }
    }
    out
}

/// Whether `s` is a valid name (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`); reports
/// an error when not.
pub(crate) fn check_name(cx: &mut Cx, path: &str, s: &str, what: &str) -> bool {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63;
    if !ok {
        cx.error(
            Diagnostic::new(
                "invalid-name",
                path,
                format!("`{s}` is not valid as {what}"),
            )
            .help(
                "use letters, digits and `_`, starting with a letter or `_`, at most 63 characters",
            ),
        );
    }
    ok
}

/// Decodes an expression string.
pub(crate) fn expression(cx: &mut Cx, v: &Value, path: &str) -> Option<Expression> {
    let Value::String(src) = v else {
        wrong_type(cx, path, "an expression (a string)", v);
        return None;
    };
    let ast = match expr::parse(src) {
        Ok(e) => Some(e),
        Err(e) => {
            let help = if src.contains(' ') && !src.contains('\'') && !src.contains('"') {
                "this is an expression: to write text, quote it as a string literal, e.g. `'payment declined'`"
            } else {
                "expressions use a CEL subset: see docs/format.md#expressions"
            };
            cx.error(
                Diagnostic::new(
                    "expr-syntax",
                    path,
                    format!("the expression `{src}` does not parse: {e}"),
                )
                .help(help)
                .span(e.span.start, e.span.end),
            );
            None
        }
    };
    Some(Expression {
        src: src.clone(),
        ast,
        path: path.to_string(),
    })
}

fn template(cx: &mut Cx, v: &Value, path: &str) -> Template {
    match v {
        Value::String(_) => match expression(cx, v, path) {
            Some(e) => Template::Expr(e),
            None => Template::Literal(Value::Null),
        },
        Value::Object(m) => Template::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), template(cx, v, &child(path, k))))
                .collect(),
        ),
        Value::Array(a) => Template::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| template(cx, v, &child(path, &i.to_string())))
                .collect(),
        ),
        other => Template::Literal(other.clone()),
    }
}

fn template_map(cx: &mut Cx, v: Option<&Value>, path: &str, names: bool) -> NameMap<Template> {
    let Some(v) = v else {
        return NameMap::default();
    };
    let Value::Object(m) = v else {
        wrong_type(cx, path, "an object", v);
        return NameMap::default();
    };
    let mut out = NameMap::default();
    for (k, v) in m {
        let p = child(path, k);
        if names && !check_name(cx, &p, k, "a field name") {
            continue;
        }
        out.insert(k.clone(), template(cx, v, &p));
    }
    out
}

fn object_map<'a>(
    cx: &mut Cx,
    v: Option<&'a Value>,
    path: &str,
) -> Vec<(&'a String, &'a Value, String)> {
    match v {
        None => Vec::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k, v, child(path, k))).collect(),
        Some(other) => {
            wrong_type(cx, path, "an object", other);
            Vec::new()
        }
    }
}

fn one_of<T: Copy>(
    cx: &mut Cx,
    path: &str,
    s: &str,
    what: &str,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = options.iter().find(|(n, _)| *n == s) {
        return Some(*t);
    }
    cx.error(
        Diagnostic::new(
            "invalid-value",
            path,
            format!("`{s}` is not a valid {what}"),
        )
        .help(suggest(s, options.iter().map(|(n, _)| *n), "")),
    );
    None
}

// ---------------------------------------------------------------------------

pub(crate) fn spec(cx: &mut Cx, v: &Value) -> Spec {
    let mut spec = Spec::default();
    let Some(mut o) = Obj::new(cx, v, "", "a JSON object (a spec)") else {
        return spec;
    };
    o.asked.push("$schema");
    match o.req(cx, "sinew") {
        // 0.2 adds constructs and changes none of 0.1's meaning: a spec
        // may use what this sinew implements under either version.
        Some(Value::String(s)) if s == "0.1" || s == "0.2" => {}
        Some(other) => cx.error(
            Diagnostic::new(
                "unsupported-version",
                "/sinew",
                format!("unsupported format version {other}"),
            )
            .help("this sinew reads formats `\"0.1\"` and `\"0.2\"`"),
        ),
        None => {}
    }
    spec.name = o.string(cx, "name", true).unwrap_or_default();
    if let Some(v) = o.get("roles") {
        spec.roles = Some(string_list(cx, v, "/roles", true));
    }
    spec.entities = entities(cx, o.get("entities"));
    for (name, v, path) in object_map(cx, o.get("externals"), "/externals") {
        if check_name(cx, &path, name, "an external's name") {
            spec.externals.insert(name.clone(), external(cx, v, &path));
        }
    }
    let raw_tools = o.req(cx, "tools");
    {
        {
            for (name, v, path) in object_map(cx, raw_tools, "/tools") {
                cx.tool = Some(name.clone());
                if check_name(cx, &path, name, "a tool name") {
                    match tool(cx, v, &path) {
                        Some(t) => {
                            spec.tools.insert(name.clone(), t);
                        }
                        None => spec.broken_tools.push(name.clone()),
                    }
                }
                cx.tool = None;
            }
        }
    }
    for (name, v, path) in object_map(cx, o.get("policies"), "/policies") {
        if check_name(cx, &path, name, "a policy name")
            && let Some(p) = policy(cx, v, &path)
        {
            spec.policies.insert(name.clone(), p);
        }
    }
    if let Some(v) = o.get("acknowledgments") {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("/acknowledgments/{i}");
                    if let Some(a) = acknowledgment(cx, item, &path) {
                        spec.acknowledgments.push(a);
                    }
                }
            }
            other => wrong_type(cx, "/acknowledgments", "an array", other),
        }
    }
    if let Some(v) = o.get("cors") {
        spec.cors = cors(cx, v);
    }
    if let Some(v) = o.get("reviews")
        && let Some(mut r) = Obj::new(cx, v, "/reviews", "an object (`{\"roles\": [...]}`)")
    {
        let roles = r
            .req(cx, "roles")
            .map(|v| string_list(cx, v, "/reviews/roles", true));
        r.finish(cx);
        if roles.as_ref().is_some_and(Vec::is_empty) {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    "/reviews/roles",
                    "no role may see the reviews",
                )
                .help("name the roles that review escalations: `[\"ops\"]`"),
            );
        }
        let roles = roles.unwrap_or_default();
        spec.reviews = Some(Reviews { roles });
    }
    if let Some(v) = o.get("limits")
        && let Some(mut l) = Obj::new(cx, v, "/limits", "an object")
    {
        if let Some(n) = l.uint(cx, "maxRowsPerWrite", 1, u64::from(u32::MAX)) {
            spec.limits.max_rows_per_write = n;
        }
        l.finish(cx);
    }
    o.finish(cx);
    spec
}

/// `cors`: `{"origins": [...], "tools": [...]}`. An origin is `*` or
/// `http(s)://host[:port]`, as a browser sends it in `Origin` (no path, no
/// trailing slash).
fn cors(cx: &mut Cx, v: &Value) -> Option<Cors> {
    let mut o = Obj::new(cx, v, "/cors", "an object (`{\"origins\": [...]}`)")?;
    let origins = o
        .req(cx, "origins")
        .map(|v| string_list(cx, v, "/cors/origins", false));
    let tools = o
        .get("tools")
        .map(|v| string_list(cx, v, "/cors/tools", true));
    o.finish(cx);
    let origins = origins?;
    if origins.is_empty() {
        cx.error(
            Diagnostic::new("invalid-value", "/cors/origins", "`cors` allows no origin").help(
                "list the browser apps' origins: `[\"https://app.example.com\"]`, or remove `cors`",
            ),
        );
    }
    for (i, origin) in origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    format!("/cors/origins/{i}"),
                    format!("`{origin}` is not an origin"),
                )
                .help("an origin is `https://host` or `http://host:port`, without a path or a trailing slash (or `*` for any)"),
            );
        }
    }
    Some(Cors {
        origins,
        tools,
        path: "/cors".into(),
    })
}

/// Whether `s` is a serialized origin: `http(s)://host[:port]`.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
}

/// A spec's `entities` (decoded alone by the in-memory world, which needs
/// no more of a spec to declare its store).
pub(crate) fn entities(cx: &mut Cx, v: Option<&Value>) -> NameMap<Entity> {
    let mut out = NameMap::default();
    for (name, v, path) in object_map(cx, v, "/entities") {
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            cx.error(
                Diagnostic::new("invalid-name", path, format!("`{name}` is not valid as an entity name"))
                    .help("an entity name starts with a letter, then letters, digits and `_`, at most 63 characters"),
            );
            continue;
        }
        if !check_name(cx, &path, name, "an entity name") {
            continue;
        }
        out.insert(name.clone(), entity(cx, v, &path));
    }
    out
}

fn entity(cx: &mut Cx, v: &Value, path: &str) -> Entity {
    let mut e = Entity {
        path: path.to_string(),
        ..Entity::default()
    };
    let Some(mut o) = Obj::new(cx, v, path, "an object (an entity)") else {
        return e;
    };
    let fields_path = o.at("fields");
    let raw = o.req(cx, "fields");
    for (name, v, p) in object_map(cx, raw, &fields_path) {
        if check_name(cx, &p, name, "a field name")
            && let Some(f) = field(cx, v, &p)
        {
            e.fields.insert(name.clone(), f);
        }
    }
    if let Some(v) = o.get("owner") {
        let p = o.at("owner");
        if let Some(mut ow) = Obj::new(cx, v, &p, "an object (`{\"field\": …}`)") {
            let by_ref = ow.get("ref").is_some();
            let field = if by_ref {
                if ow.get("field").is_some() {
                    cx.error(
                        Diagnostic::new(
                            "invalid-value",
                            p.clone(),
                            "an owner is either a `field` holding the subject or a `ref` to an owned row",
                        )
                        .help("keep `field` or `ref`, not both"),
                    );
                }
                ow.name(cx, "ref", true)
            } else {
                ow.name(cx, "field", true)
            };
            let claim = match ow.get("claim") {
                Some(Value::String(c)) if !c.is_empty() => Some(c.clone()),
                Some(_) => {
                    cx.error(
                        Diagnostic::new(
                            "invalid-value",
                            ow.at("claim"),
                            "`claim` names a claim of the caller's token",
                        )
                        .help("write its name, e.g. `\"claim\": \"org_id\"`"),
                    );
                    None
                }
                None => None,
            };
            if by_ref && claim.is_some() {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        ow.at("claim"),
                        "an owner through a `ref` takes the claim of the entity it ends at",
                    )
                    .help("put `claim` on the owner of the entity the chain ends at"),
                );
            }
            let exempt = ow.names(cx, "exempt");
            ow.finish(cx);
            if let Some(field) = field {
                e.owner = Some(Owner {
                    field,
                    by_ref,
                    claim: claim.filter(|_| !by_ref),
                    exempt,
                });
            }
        }
    }
    if let Some(v) = o.get("indexes") {
        e.indexes = indexes(cx, v, &o.at("indexes"));
    }
    e.renamed_from = o.name(cx, "renamedFrom", false);
    if let Some(v) = o.get("status") {
        let p = o.at("status");
        e.status = status_machine(cx, v, &p);
    }
    let inv_path = o.at("invariants");
    for (name, v, p) in object_map(cx, o.get("invariants"), &inv_path) {
        if check_name(cx, &p, name, "an invariant name")
            && let Some(x) = expression(cx, v, &p)
        {
            e.invariants.insert(name.clone(), x);
        }
    }
    o.finish(cx);
    e
}

fn field(cx: &mut Cx, v: &Value, path: &str) -> Option<Field> {
    let mut o = Obj::new(cx, v, path, "an object (a field)")?;
    let ty = o
        .string(cx, "type", true)
        .and_then(|t| one_of(cx, &o.at("type"), &t, "field type", FieldType::ALL));
    let entity = o.name(cx, "entity", false);
    let on_delete = o
        .string(cx, "onDelete", false)
        .and_then(|s| one_of(cx, &o.at("onDelete"), &s, "onDelete", OnDelete::ALL));
    let number = |cx: &mut Cx, o: &mut Obj, key: &'static str| match o.get(key) {
        None => None,
        Some(Value::Number(n)) => Some(n.clone()),
        Some(other) => {
            wrong_type(cx, &o.at(key), "a number", other);
            None
        }
    };
    let minimum = number(cx, &mut o, "minimum");
    let maximum = number(cx, &mut o, "maximum");
    let max_length = o.uint(cx, "maxLength", 0, u64::from(u32::MAX));
    let enum_values = match o.get("enum") {
        None => None,
        Some(Value::Array(a)) if !a.is_empty() => {
            // JSON Schema's `enum` lists each value once (numbers equal
            // when their values are).
            let same = |x: &Value, y: &Value| match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            };
            let repeated = a
                .iter()
                .enumerate()
                .find(|(i, v)| a.iter().take(*i).any(|w| same(v, w)));
            match repeated {
                Some((i, v)) => {
                    cx.error(
                        Diagnostic::new(
                            "invalid-value",
                            child(&o.at("enum"), &i.to_string()),
                            format!("`{v}` is in `enum` twice"),
                        )
                        .help("list each value once"),
                    );
                    None
                }
                None => Some(a.clone()),
            }
        }
        Some(other) => {
            wrong_type(cx, &o.at("enum"), "a non-empty array", other);
            None
        }
    };
    let nullable = o.bool(cx, "nullable");
    let unique = o.bool(cx, "unique");
    let sensitive = o.bool(cx, "sensitive");
    let default = o.get("default").cloned();
    let renamed_from = o.name(cx, "renamedFrom", false);
    let ty = ty?;
    if ty == FieldType::Ref && entity.is_none() && !o.map.contains_key("entity") {
        cx.error(
            Diagnostic::new("missing-key", path, "a `ref` field needs `entity`")
                .help("name the entity it refers to: `\"entity\": \"Product\"`"),
        );
    }
    if ty != FieldType::Ref && o.map.contains_key("entity") {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                o.at("entity"),
                "`entity` only applies to `ref` fields",
            )
            .help("remove it, or make the field `\"type\": \"ref\"`"),
        );
    }
    if ty != FieldType::Ref && o.map.contains_key("onDelete") {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                o.at("onDelete"),
                "`onDelete` only applies to `ref` fields",
            )
            .help("remove it"),
        );
    }
    if on_delete == Some(OnDelete::SetNull) && !nullable {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                o.at("onDelete"),
                "`setNull` needs a `nullable` field",
            )
            .help("add `\"nullable\": true`, or choose `restrict` or `cascade`"),
        );
    }
    if max_length.is_some() && ty != FieldType::String {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                o.at("maxLength"),
                "`maxLength` only applies to `string` fields",
            )
            .help("remove it"),
        );
    }
    if (minimum.is_some() || maximum.is_some())
        && !matches!(ty, FieldType::Integer | FieldType::Number)
    {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                path,
                "`minimum` and `maximum` only apply to `integer` and `number` fields",
            )
            .help("remove them"),
        );
    }
    o.finish(cx);
    Some(Field {
        ty,
        entity,
        on_delete: on_delete.unwrap_or_default(),
        minimum,
        maximum,
        max_length,
        enum_values,
        nullable,
        unique,
        sensitive,
        default,
        renamed_from,
    })
}

fn status_machine(cx: &mut Cx, v: &Value, path: &str) -> Option<StatusMachine> {
    let mut o = Obj::new(cx, v, path, "an object (a status machine)")?;
    let initial = o.string(cx, "initial", true);
    let mut transitions = NameMap::default();
    let tpath = o.at("transitions");
    let raw = o.req(cx, "transitions");
    for (action, v, p) in object_map(cx, raw, &tpath) {
        if !check_name(cx, &p, action, "a transition action") {
            continue;
        }
        let Some(mut t) = Obj::new(cx, v, &p, "an object (`{\"from\": […], \"to\": …}`)")
        else {
            continue;
        };
        let from = match t.req(cx, "from") {
            Some(v) => {
                let fp = t.at("from");
                let list = string_list(cx, v, &fp, false);
                if list.is_empty() && matches!(v, Value::Array(_)) {
                    cx.error(
                        Diagnostic::new("invalid-value", fp, "`from` is empty")
                            .help("list the states this transition may start from"),
                    );
                }
                list
            }
            None => Vec::new(),
        };
        let to = t.string(cx, "to", true);
        t.finish(cx);
        if let Some(to) = to {
            transitions.insert(action.clone(), Transition { from, to });
        }
    }
    o.finish(cx);
    Some(StatusMachine {
        initial: initial?,
        transitions,
    })
}

fn external(cx: &mut Cx, v: &Value, path: &str) -> External {
    let mut ext = External::default();
    let Some(mut o) = Obj::new(cx, v, path, "an object (an external)") else {
        return ext;
    };
    ext.kind = o.string(cx, "kind", true).unwrap_or_default();
    if !ext.kind.is_empty() && !EXTERNAL_KINDS.contains(&ext.kind.as_str()) {
        cx.warn(
            Diagnostic::new(
                "unknown-external-kind",
                o.at("kind"),
                format!(
                    "`{}` is not a kind the risk engine knows; it is judged as a generic service",
                    ext.kind
                ),
            )
            .help(suggest(&ext.kind, EXTERNAL_KINDS.iter().copied(), "")),
        );
    }
    ext.base_url = o.string(cx, "baseUrl", false).and_then(|u| {
        let problem = base_url_problem(&u);
        if let Some(why) = problem {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    o.at("baseUrl"),
                    format!(
                        "`{}` is not a base URL: it {why}",
                        url_without_credentials(&u)
                    ),
                )
                .help("write `https://host[:port][/prefix]`, without a query or fragment"),
            );
        }
        problem
            .is_none()
            .then(|| u.trim_end_matches('/').to_string())
    });
    if let Some(a) = o.get("auth") {
        let p = o.at("auth");
        ext.auth = external_auth(cx, a, &p);
    }
    let opath = o.at("operations");
    let raw = o.req(cx, "operations");
    for (name, v, p) in object_map(cx, raw, &opath) {
        if !check_name(cx, &p, name, "an operation name") {
            continue;
        }
        let Some(mut op) = Obj::new(cx, v, &p, "an object (`{\"sideEffects\": true}`)") else {
            continue;
        };
        let side_effects = match op.get("sideEffects") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                wrong_type(cx, &op.at("sideEffects"), "true or false", other);
                true
            }
        };
        let compensates = op.name(cx, "compensates", false);
        let (method, path) = if op.map.contains_key("path") {
            route(cx, &mut op, Some("POST")).unzip()
        } else {
            let m = op
                .string(cx, "method", false)
                .unwrap_or_else(|| "POST".into());
            let ok = one_of(cx, &op.at("method"), &m, "HTTP method", METHODS).is_some();
            (ok.then_some(m), None)
        };
        let encoding = match op.string(cx, "encoding", false).as_deref() {
            None | Some("json") => Encoding::Json,
            Some("form") => Encoding::Form,
            Some(other) => {
                cx.error(
                    Diagnostic::new("invalid-value", op.at("encoding"), format!("`{other}` is not an encoding"))
                        .help("write `json` (the default) or `form` (`application/x-www-form-urlencoded`, as Stripe reads it)"),
                );
                Encoding::Json
            }
        };
        let headers = literal_headers(cx, &mut op);
        let idempotency_header = op
            .string(cx, "idempotencyHeader", false)
            .filter(|h| header_name(cx, &op.at("idempotencyHeader"), h));
        // Every attempt carries its key in this header (the default one
        // when the operation names none).
        let key_header = idempotency_header
            .clone()
            .unwrap_or_else(|| "Idempotency-Key".to_owned());
        // The header that carries the credentials is the host's to write.
        if let Some(ExternalAuth::Header { name: auth, .. }) = &ext.auth {
            let clashes = headers
                .iter()
                .map(|(h, _)| (h, op.at("headers")))
                .chain(std::iter::once((
                    &key_header,
                    if idempotency_header.is_some() {
                        op.at("idempotencyHeader")
                    } else {
                        o.at("auth")
                    },
                )))
                .filter(|(h, _)| h.eq_ignore_ascii_case(auth));
            for (h, at) in clashes {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        &at,
                        format!("`{h}` carries the external's credentials (its `auth`): the host sets it"),
                    )
                    .help("name another header"),
                );
            }
        }
        if headers
            .iter()
            .any(|(x, _)| x.eq_ignore_ascii_case(&key_header))
        {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    if idempotency_header.is_some() {
                        op.at("idempotencyHeader")
                    } else {
                        op.at("headers")
                    },
                    format!("`{key_header}` carries each call's idempotency key, and it is also one of the operation's literal `headers`: the key would replace it"),
                )
                .help("name another header for the key (`idempotencyHeader`), or drop the literal one"),
            );
        }
        op.finish(cx);
        ext.operations.insert(
            name.clone(),
            Operation {
                side_effects,
                compensates,
                method: method.unwrap_or_else(|| "POST".into()),
                path,
                encoding,
                headers,
                idempotency_header,
            },
        );
    }
    o.finish(cx);
    ext
}

/// Headers a host sets itself: a spec may not write them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "x-sinew-attempt",
];

/// Whether `h` is an HTTP header name (a token) a spec may set; an error
/// at `path` otherwise.
fn header_name(cx: &mut Cx, path: &str, h: &str) -> bool {
    let token = !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !token {
        cx.error(
            Diagnostic::new("invalid-value", path, format!("`{h}` is not a header name"))
                .help("a header name is letters, digits and `-` (`Idempotency-Key`)"),
        );
        return false;
    }
    if RESERVED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
        cx.error(
            Diagnostic::new("invalid-value", path, format!("`{h}` is set by the host")).help(
                "authenticate with the external's `auth`; the body's type comes from `encoding`",
            ),
        );
        return false;
    }
    true
}

/// An operation's `headers`: literal values by name.
fn literal_headers(cx: &mut Cx, op: &mut Obj) -> Vec<(String, String)> {
    let path = op.at("headers");
    let Some(v) = op.get("headers") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, v, p) in object_map(cx, Some(v), &path) {
        if !header_name(cx, &p, name) {
            continue;
        }
        match v {
            Value::String(s) if !s.chars().any(char::is_control) => {
                out.push((name.clone(), s.clone()))
            }
            Value::String(_) => cx.error(
                Diagnostic::new(
                    "invalid-value",
                    &p,
                    "a header value has no control characters",
                )
                .help("write the value on one line"),
            ),
            other => wrong_type(cx, &p, "a string (the header's literal value)", other),
        }
    }
    out
}

/// An external's `auth`: one of `bearer`, `basic`, `header`.
fn external_auth(cx: &mut Cx, v: &Value, path: &str) -> Option<ExternalAuth> {
    let mut o = Obj::new(
        cx,
        v,
        path,
        "an object (`{\"bearer\": {\"secret\": \"VAR\"}}`)",
    )?;
    let kinds = ["bearer", "basic", "header"];
    let present: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| o.map.contains_key(*k))
        .collect();
    let out = match present.as_slice() {
        [kind] => {
            let kp = o.at(kind);
            let inner = o.get(match *kind {
                "bearer" => "bearer",
                "basic" => "basic",
                _ => "header",
            })?;
            let mut a = Obj::new(cx, inner, &kp, "an object")?;
            let secret = a.string(cx, "secret", true).filter(|s| {
                let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    cx.error(
                        Diagnostic::new("invalid-value", a.at("secret"), format!("`{s}` is not an environment variable's name"))
                            .help("`secret` names the variable holding the secret (`STRIPE_KEY`), never the secret itself"),
                    );
                }
                ok
            });
            let out = match *kind {
                "bearer" => secret.map(|secret| ExternalAuth::Bearer { secret }),
                "basic" => {
                    // RFC 7617: the service reads the user up to the first
                    // `:`, the rest as the password.
                    let user = a.string(cx, "user", true).filter(|u| {
                        let ok = !u.contains(':');
                        if !ok {
                            cx.error(
                                Diagnostic::new("invalid-value", a.at("user"), format!("the basic-auth user `{u}` contains `:`: the service would read the user up to it and the rest as the password"))
                                    .help("a basic-auth user cannot hold `:` (RFC 7617); the password (the secret) can"),
                            );
                        }
                        ok
                    });
                    user.zip(secret)
                        .map(|(user, secret)| ExternalAuth::Basic { user, secret })
                }
                _ => {
                    let name = a
                        .string(cx, "name", true)
                        .filter(|h| header_name(cx, &a.at("name"), h));
                    name.zip(secret)
                        .map(|(name, secret)| ExternalAuth::Header { name, secret })
                }
            };
            a.finish(cx);
            out
        }
        _ => {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    path,
                    "`auth` is exactly one of `bearer`, `basic`, `header`",
                )
                .help("write `{\"bearer\": {\"secret\": \"STRIPE_KEY\"}}`"),
            );
            None
        }
    };
    for k in kinds {
        o.asked.push(k);
    }
    o.finish(cx);
    out
}

const METHODS: &[(&str, ()); 5] = &[
    ("GET", ()),
    ("POST", ()),
    ("PUT", ()),
    ("PATCH", ()),
    ("DELETE", ()),
];

fn route(cx: &mut Cx, o: &mut Obj, default_method: Option<&str>) -> Option<(String, String)> {
    let method = match default_method {
        Some(d) if !o.map.contains_key("method") => {
            o.asked.push("method");
            Some(d.to_string())
        }
        _ => o.string(cx, "method", true),
    };
    let method = method.and_then(|m| {
        let p = o.at("method");
        one_of(cx, &p, &m, "HTTP method", METHODS).map(|()| m)
    });
    let path = o.string(cx, "path", true).and_then(|p| {
        let ok = p.starts_with('/') && !p.contains(['?', '#', ' ']) && path_params(&p).is_some();
        if !ok {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    o.at("path"),
                    format!("`{p}` is not a valid route path"),
                )
                .help("a path starts with `/`; parameters are whole segments like `/orders/{id}`"),
            );
        }
        ok.then_some(p)
    });
    Some((method?, path?))
}

/// The parameter names of a route path (`/a/{id}` → `["id"]`), or `None`
/// when a brace is malformed.
pub fn path_params(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for seg in path.split('/') {
        if let Some(inner) = seg.strip_prefix('{') {
            let name = inner.strip_suffix('}')?;
            let mut chars = name.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok || out.contains(&name) {
                return None;
            }
            out.push(name);
        } else if seg.contains(['{', '}']) {
            return None;
        }
    }
    Some(out)
}

fn trigger(cx: &mut Cx, v: &Value, path: &str) -> Option<Trigger> {
    let mut o = Obj::new(cx, v, path, "an object (a trigger)")?;
    let kinds = ["http", "webhook", "cron", "queue"];
    let present: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| o.map.contains_key(*k))
        .collect();
    let out = match present.as_slice() {
        [] => {
            cx.error(
                Diagnostic::new(
                    "missing-key",
                    path,
                    "a trigger needs one of `http`, `webhook`, `cron`, `queue`",
                )
                .help("most tools use `{\"http\": {\"method\": \"POST\", \"path\": \"/things\"}}`"),
            );
            None
        }
        [_, _, ..] => {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    path,
                    format!(
                        "a trigger has exactly one kind, found {}",
                        present.join(", ")
                    ),
                )
                .help("make one tool per trigger"),
            );
            None
        }
        [kind] => {
            let kind = *kind;
            let tp = o.at(kind);
            let inner = o.get(match kind {
                "http" => "http",
                "webhook" => "webhook",
                "cron" => "cron",
                _ => "queue",
            })?;
            let mut t = Obj::new(cx, inner, &tp, "an object")?;
            let out = match kind {
                "http" => route(cx, &mut t, None).map(|(method, path)| Trigger::Http { method, path }),
                "webhook" => {
                    let r = route(cx, &mut t, Some("POST"));
                    let secret = t.string(cx, "secret", false);
                    let scheme = match t.string(cx, "scheme", false).as_deref() {
                        None | Some("hmac-sha256") => Some(WebhookScheme::HmacSha256),
                        Some("stripe") => Some(WebhookScheme::Stripe),
                        Some("github") => Some(WebhookScheme::Github),
                        Some(other) => {
                            cx.error(
                                Diagnostic::new("invalid-value", t.at("scheme"), format!("`{other}` is not a webhook scheme"))
                                    .help("write `hmac-sha256` (hex HMAC of the body), `stripe` (`Stripe-Signature`) or `github` (`X-Hub-Signature-256`)"),
                            );
                            None
                        }
                    };
                    let tolerance = t.uint(cx, "toleranceSeconds", 1, 24 * 3600);
                    if tolerance.is_some() && scheme != Some(WebhookScheme::Stripe) {
                        cx.error(
                            Diagnostic::new("invalid-value", t.at("toleranceSeconds"), "`toleranceSeconds` applies to the `stripe` scheme only")
                                .help("remove it, or set `\"scheme\": \"stripe\"`: the other schemes sign no timestamp"),
                        );
                    }
                    let scheme = scheme?;
                    let header = t.string(cx, "header", false).unwrap_or_else(|| scheme.default_header().to_string());
                    r.map(|(method, path)| Trigger::Webhook {
                        method,
                        path,
                        secret,
                        header,
                        scheme,
                        tolerance_seconds: tolerance.unwrap_or(300),
                    })
                }
                "cron" => t.string(cx, "schedule", true).and_then(|s| {
                    let timezone = t.string(cx, "timezone", false).unwrap_or_else(|| "UTC".to_string());
                    let Ok(zone) = jiff::tz::TimeZone::get(&timezone) else {
                        cx.error(
                            Diagnostic::new("invalid-value", t.at("timezone"), format!("`{timezone}` is not a time zone"))
                                .help("name an IANA time zone: `Europe/Paris`, `America/New_York`, `UTC`"),
                        );
                        return None;
                    };
                    match crate::cron::Schedule::parse(&s) {
                        Ok(times) => Some(Trigger::Cron { schedule: s, times, timezone, zone }),
                        Err(why) => {
                            cx.error(
                                Diagnostic::new("invalid-value", t.at("schedule"), format!("`{s}` is not a cron schedule: {why}"))
                                    .help("write minute hour day-of-month month day-of-week, each `*`, a value, a range `a-b` or a list, with an optional step `/n`: `*/15 3 * * mon-fri`"),
                            );
                            None
                        }
                    }
                }),
                _ => t.name(cx, "name", true).map(|name| Trigger::Queue { name }),
            };
            t.finish(cx);
            out
        }
    };
    for k in kinds {
        o.asked.push(k);
    }
    o.finish(cx);
    out
}

fn tool(cx: &mut Cx, v: &Value, path: &str) -> Option<Tool> {
    let mut o = Obj::new(cx, v, path, "an object (a tool)")?;
    // Read without marking it asked: `finish` checks it is text, as for
    // every `description`.
    let description = o
        .map
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let trigger = o.req(cx, "trigger").and_then(|v| {
        let p = child(path, "trigger");
        trigger(cx, v, &p)
    });
    let mut auth = Auth::default();
    if let Some(v) = o.get("auth") {
        let p = o.at("auth");
        if let Some(mut a) = Obj::new(cx, v, &p, "an object (`{\"roles\": […]}`)") {
            auth.roles = a.names(cx, "roles");
            auth.public = a.bool(cx, "public");
            auth.deny_when = a.expr(cx, "denyWhen", false);
            a.finish(cx);
        }
    }
    let idempotency_key = o.expr(cx, "idempotencyKey", false);
    let concurrency = o.string(cx, "concurrency", false).and_then(|c| {
        let p = o.at("concurrency");
        one_of(
            cx,
            &p,
            &c,
            "concurrency",
            &[
                ("none", Concurrency::None),
                ("optimistic", Concurrency::Optimistic),
                ("pessimistic", Concurrency::Pessimistic),
            ],
        )
    });
    let schema = |cx: &mut Cx, o: &mut Obj, key: &'static str| match o.get(key) {
        None => serde_json::json!({"type": "object"}),
        Some(v @ (Value::Object(_) | Value::Bool(_))) => v.clone(),
        Some(other) => {
            wrong_type(cx, &o.at(key), "a JSON Schema (an object)", other);
            Value::Bool(true)
        }
    };
    let input = schema(cx, &mut o, "input");
    let output = schema(cx, &mut o, "output");
    // A schema that does not compile would be refused when the spec is
    // loaded to run: compile it here, as the bundle does.
    for (side, s) in [(Side::Input, &input), (Side::Output, &output)] {
        if o.get(side.key()).is_none() {
            continue;
        }
        if let Some(e) = schema_error(s, side) {
            cx.error(
                Diagnostic::new(
                    "invalid-schema",
                    format!("{}{}", o.at(side.key()), e.pointer),
                    format!(
                        "the {} schema is not a valid JSON Schema (2020-12): {}",
                        side.key(),
                        e.message
                    ),
                )
                .help("fix the schema here; https://json-schema.org/draft/2020-12 has the keywords and what each takes"),
            );
        }
    }
    let sensitive = match o.get("sensitive") {
        Some(v) => {
            let p = o.at("sensitive");
            string_list(cx, v, &p, false)
        }
        None => Vec::new(),
    };
    let mut limits = ToolLimits::default();
    if let Some(v) = o.get("limits") {
        let p = o.at("limits");
        if let Some(mut l) = Obj::new(cx, v, &p, "an object") {
            let max = u64::from(u32::MAX);
            limits = ToolLimits {
                max_rows: l.uint(cx, "maxRows", 1, max),
                max_rows_read: l.uint(cx, "maxRowsRead", 1, max),
                max_rows_written: l.uint(cx, "maxRowsWritten", 1, max),
                max_calls: l.uint(cx, "maxCalls", 1, max),
                timeout_ms: l.uint(cx, "timeoutMs", 1, max),
            };
            l.finish(cx);
        }
    }
    let mut ids = HashMap::new();
    let flow = o.req(cx, "flow").and_then(|v| {
        let p = child(path, "flow");
        flow(cx, v, &p, &mut ids)
    });
    o.finish(cx);
    Some(Tool {
        description,
        trigger: trigger?,
        auth,
        idempotency_key,
        concurrency,
        input_shape: crate::json_schema::resolved(&input),
        input,
        output,
        sensitive,
        limits,
        flow: flow?,
        path: path.to_string(),
    })
}

const ROOT_NAMES: &[&str] = &["input", "auth", "request", "row"];
const KEYWORDS: &[&str] = &["true", "false", "null", "in"];

fn flow(cx: &mut Cx, v: &Value, path: &str, ids: &mut HashMap<String, String>) -> Option<Flow> {
    let mut o = Obj::new(cx, v, path, "an object (`{\"entry\": …, \"nodes\": {…}}`)")?;
    let entry = o.string(cx, "entry", true);
    let npath = o.at("nodes");
    let mut nodes = NameMap::default();
    let raw = o.req(cx, "nodes");
    if let Some(Value::Object(m)) = raw
        && m.is_empty()
    {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                npath.clone(),
                "a flow needs at least one node",
            )
            .help("add nodes"),
        );
    }
    for (id, v, p) in object_map(cx, raw, &npath) {
        if !check_name(cx, &p, id, "a node id") {
            continue;
        }
        if ROOT_NAMES.contains(&id.as_str()) || KEYWORDS.contains(&id.as_str()) {
            cx.error(
                Diagnostic::new(
                    "invalid-name",
                    p.clone(),
                    format!("`{id}` cannot be a node id: expressions use that name"),
                )
                .help(format!("rename it, e.g. `{id}_node`")),
            );
            continue;
        }
        if let Some(first) = ids.get(id.as_str()) {
            cx.error(
                Diagnostic::new(
                    "duplicate-node",
                    p.clone(),
                    format!("node id `{id}` is already used at `{first}`"),
                )
                .help("node ids are unique within a tool, transaction bodies included"),
            );
            continue;
        }
        ids.insert(id.clone(), p.clone());
        nodes.insert(id.clone(), node(cx, v, &p, ids));
    }
    o.finish(cx);
    Some(Flow {
        entry: entry?,
        nodes,
        path: path.to_string(),
    })
}

/// The largest `maxItems` of a `foreach`.
pub const MAX_ITEMS: u64 = 100_000;

const NODE_TYPES: &[(&str, ()); 18] = &[
    ("read", ()),
    ("aggregate", ()),
    ("create", ()),
    ("update", ()),
    ("transition", ()),
    ("soft_delete", ()),
    ("delete", ()),
    ("sql", ()),
    ("let", ()),
    ("assert", ()),
    ("if", ()),
    ("switch", ()),
    ("call", ()),
    ("emit", ()),
    ("transaction", ()),
    ("foreach", ()),
    ("return", ()),
    ("fail", ()),
];

fn node(cx: &mut Cx, v: &Value, path: &str, ids: &mut HashMap<String, String>) -> Node {
    let mut node = Node {
        kind: NodeKind::Invalid,
        next: None,
        on_error: None,
        path: path.to_string(),
    };
    let Some(mut o) = Obj::new(cx, v, path, "an object (a node)") else {
        return node;
    };
    let ty = o.string(cx, "type", true);
    let Some(ty) = ty.filter(|t| {
        let p = child(path, "type");
        one_of(cx, &p, t, "node type", NODE_TYPES).is_some()
    }) else {
        // Keep the edges so that one bad node does not make its neighbours'
        // edges dangle; skip the unknown-key report (we don't know the type).
        for (key, slot) in [("next", &mut node.next), ("onError", &mut node.on_error)] {
            if let Some(Value::String(s)) = o.map.get(key) {
                *slot = Some(s.clone());
            }
        }
        return node;
    };
    let errors_before = cx.errors.len();
    let has_edges = !matches!(ty.as_str(), "if" | "switch" | "return" | "fail");
    let can_fail = !matches!(
        ty.as_str(),
        "let" | "assert" | "if" | "switch" | "return" | "fail"
    );
    if has_edges {
        node.next = o.name(cx, "next", false);
    }
    if can_fail {
        node.on_error = o.name(cx, "onError", false);
    }
    let kind = node_kind(cx, &mut o, &ty, path, ids);
    o.finish(cx);
    node.kind = match kind {
        Some(k) if cx.errors.len() == errors_before || k.body().is_some() => k,
        Some(k) if !matches!(k, NodeKind::Invalid) => k,
        _ => NodeKind::Invalid,
    };
    node
}

/// The rows a `transition` or `soft_delete` acts on: `id`, or `where` with
/// `orderBy` and `limit` (not both).
fn target(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<Target> {
    let many = o.map.contains_key("where");
    if many && o.map.contains_key("id") {
        for key in ["id", "where", "orderBy", "limit"] {
            o.get(key);
        }
        cx.error(
            Diagnostic::new(
                "invalid-value",
                child(path, "id"),
                "`id` and `where` are both given",
            )
            .help(
                "act on one row by `id`, or on the rows `where` matches (with `limit`), not both",
            ),
        );
        return None;
    }
    if !many {
        for key in ["orderBy", "limit"] {
            if o.map.contains_key(key) {
                o.get(key);
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(path, key),
                        format!("`{key}` applies to the rows of a `where`, and this node has none"),
                    )
                    .help("add a `where`, or remove this key"),
                );
            }
        }
        return o.expr(cx, "id", true).map(Target::Id);
    }
    let filters = o.filters(cx).unwrap_or_default();
    let order_by = o.order_by(cx).unwrap_or_default();
    let limit = limit(cx, o);
    Some(Target::Where {
        filters,
        order_by,
        limit,
    })
}

fn entity_id_node(cx: &mut Cx, o: &mut Obj) -> Option<(String, Expression)> {
    let entity = o.name(cx, "entity", true);
    let id = o.expr(cx, "id", true);
    Some((entity?, id?))
}

/// An `if` node's condition: `if`, or its alias `condition` (not both).
fn if_condition(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<Expression> {
    match (o.map.contains_key("if"), o.map.contains_key("condition")) {
        (true, true) => {
            o.asked.push("if");
            o.asked.push("condition");
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    path,
                    "an `if` node has both `if` and `condition`",
                )
                .help("keep one: `condition` is an alias of `if`"),
            );
            None
        }
        (false, true) => o.expr(cx, "condition", true),
        _ => o.expr(cx, "if", true),
    }
}

/// A `switch` node's `cases`: `[{when, next}]`; a broken case is reported
/// and left out.
fn cases(cx: &mut Cx, o: &mut Obj, path: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let cpath = child(path, "cases");
    match o.req(cx, "cases") {
        Some(Value::Array(items)) if items.is_empty() => cx.error(
            Diagnostic::new("invalid-value", cpath, "`cases` is empty")
                .help("add a case, or replace the switch by its `default`"),
        ),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = child(&cpath, &i.to_string());
                let Some(mut c) =
                    Obj::new(cx, item, &p, "an object (`{\"when\": …, \"next\": …}`)")
                else {
                    continue;
                };
                let when = c.expr(cx, "when", true);
                let next = c.name(cx, "next", true);
                c.finish(cx);
                if let (Some(when), Some(next)) = (when, next) {
                    cases.push(Case { when, next });
                }
            }
        }
        Some(other) => wrong_type(cx, &cpath, "an array of cases", other),
        None => {}
    }
    cases
}

/// A `call` node.
fn call_node(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<NodeKind> {
    let external = o.name(cx, "external", true);
    let operation = o.name(cx, "operation", true);
    let args = template_map(cx, o.get("args"), &child(path, "args"), false);
    let timeout_ms = o.uint(cx, "timeoutMs", 1, 24 * 3600 * 1000);
    let retry = o
        .get("retry")
        .and_then(|v| retry(cx, v, &child(path, "retry")));
    let compensate = o.name(cx, "compensate", false);
    let idempotency_key = o.expr(cx, "idempotencyKey", false);
    Some(NodeKind::Call {
        external: external?,
        operation: operation?,
        args,
        timeout_ms,
        retry,
        compensate,
        idempotency_key,
    })
}

/// A `transaction` node's `isolation`.
fn isolation(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<Isolation> {
    o.string(cx, "isolation", false).and_then(|s| {
        one_of(
            cx,
            &child(path, "isolation"),
            &s,
            "isolation level",
            &[
                ("read_committed", Isolation::ReadCommitted),
                ("repeatable_read", Isolation::RepeatableRead),
                ("serializable", Isolation::Serializable),
            ],
        )
    })
}

fn node_kind(
    cx: &mut Cx,
    o: &mut Obj,
    ty: &str,
    path: &str,
    ids: &mut HashMap<String, String>,
) -> Option<NodeKind> {
    Some(match ty {
        "read" => {
            let entity = o.name(cx, "entity", true);
            let filters = o.filters(cx);
            let order_by = o.order_by(cx);
            let limit = limit(cx, o);
            let after = o.expr(cx, "after", false);
            let one = o.bool(cx, "one");
            let lock = o.bool(cx, "lock");
            let page = o.bool(cx, "page");
            let count = o.bool(cx, "count");
            let include = o
                .get("include")
                .map(|v| includes(cx, v, &child(path, "include"), 1))
                .unwrap_or_default();
            if count && !page {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(path, "count"),
                        "`count` counts the rows of a paged read",
                    )
                    .help("add `\"page\": true` (the read then binds `rows`, `next` and `total`)"),
                );
            }
            if page && one {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(path, "page"),
                        "a read is either `one` row or a `page` of rows",
                    )
                    .help("remove `one` or `page`"),
                );
            }
            NodeKind::Read {
                entity: entity?,
                filters: filters.unwrap_or_default(),
                order_by: order_by.unwrap_or_default(),
                limit,
                after,
                one,
                lock,
                page,
                count,
                include,
            }
        }
        "aggregate" => aggregate(cx, o, path)?,
        "create" => {
            let entity = o.name(cx, "entity", true);
            let raw = o.req(cx, "values");
            let values = template_map(cx, raw, &child(path, "values"), true);
            let each = match (o.map.contains_key("each"), o.map.contains_key("as")) {
                (false, false) => None,
                (true, true) => {
                    let items = o.expr(cx, "each", true);
                    let name = o.name(cx, "as", true);
                    Some((items?, name?))
                }
                (has_each, _) => {
                    let (given, missing) = if has_each {
                        ("each", "as")
                    } else {
                        ("as", "each")
                    };
                    cx.error(
                        Diagnostic::new(
                            "missing-key",
                            path.to_string(),
                            format!("`{given}` needs `{missing}`"),
                        )
                        .help(
                            "a create over a list names the list (`each`) and its element (`as`)",
                        ),
                    );
                    o.get("each");
                    o.get("as");
                    return None;
                }
            };
            NodeKind::Create {
                entity: entity?,
                values,
                each,
            }
        }
        "update" => {
            let entity = o.name(cx, "entity", true);
            let filters = o.filters(cx);
            let limit = limit(cx, o);
            let one = o.bool(cx, "one");
            let raw = o.req(cx, "set");
            let set = template_map(cx, raw, &child(path, "set"), true);
            let order_by = o.order_by(cx).unwrap_or_default();
            let reads_row = set.values().any(|t| {
                t.expressions().iter().any(|x| {
                    x.ast.as_ref().is_some_and(|ast| {
                        let mut seen = false;
                        ast.walk(|n| {
                            seen |=
                                matches!(&n.kind, crate::expr::ExprKind::Ident(v) if v == "row");
                        });
                        seen
                    })
                })
            });
            NodeKind::Update {
                entity: entity?,
                filters,
                limit,
                one,
                set,
                order_by,
                reads_row,
            }
        }
        "transition" => {
            let entity = o.name(cx, "entity", true);
            let target = target(cx, o, path);
            let action = o.name(cx, "action", true);
            NodeKind::Transition {
                entity: entity?,
                target: target?,
                action: action?,
            }
        }
        "soft_delete" => {
            let entity = o.name(cx, "entity", true);
            let target = target(cx, o, path);
            NodeKind::SoftDelete {
                entity: entity?,
                target: target?,
            }
        }
        "delete" => {
            let (entity, id) = entity_id_node(cx, o)?;
            NodeKind::Delete { entity, id }
        }
        "sql" => NodeKind::Sql {
            statement: o.string(cx, "statement", true)?,
        },
        "let" => {
            let raw = o.req(cx, "values");
            NodeKind::Let {
                values: template_map(cx, raw, &child(path, "values"), true),
            }
        }
        "assert" => {
            let that = o.expr(cx, "that", true);
            let status = o.status(cx, "status", (400, 599), Some(422));
            let code = o
                .string(cx, "code", false)
                .unwrap_or_else(|| "assertion_failed".to_string());
            let message = o.expr(cx, "message", false);
            NodeKind::Assert {
                that: that?,
                status: status?,
                code,
                message,
            }
        }
        "if" => {
            let cond = if_condition(cx, o, path);
            let then = o.name(cx, "then", true);
            let otherwise = o.name(cx, "else", true);
            NodeKind::If {
                cond: cond?,
                then: then?,
                otherwise: otherwise?,
            }
        }
        "switch" => {
            let cases = cases(cx, o, path);
            let default = o.name(cx, "default", false);
            NodeKind::Switch { cases, default }
        }
        "call" => call_node(cx, o, path)?,
        "emit" => {
            let external = o.name(cx, "external", true);
            let operation = o.name(cx, "operation", true);
            let args = template_map(cx, o.get("args"), &child(path, "args"), false);
            let timeout_ms = o.uint(cx, "timeoutMs", 1, 24 * 3600 * 1000);
            let idempotency_key = o.expr(cx, "idempotencyKey", false);
            NodeKind::Emit {
                external: external?,
                operation: operation?,
                args,
                timeout_ms,
                idempotency_key,
            }
        }
        "transaction" => {
            let isolation = isolation(cx, o, path);
            let body = o
                .req(cx, "body")
                .and_then(|v| flow(cx, v, &child(path, "body"), ids));
            NodeKind::Transaction {
                body: body.unwrap_or_default(),
                isolation: isolation.unwrap_or_default(),
            }
        }
        "foreach" => {
            let items = o.expr(cx, "items", true);
            let as_name = o.name(cx, "as", true);
            if !o.map.contains_key("maxItems") {
                o.req(cx, "maxItems");
            }
            let max_items = o.uint(cx, "maxItems", 1, MAX_ITEMS);
            let collect = o
                .get("collect")
                .map(|v| template(cx, v, &child(path, "collect")));
            let body = o
                .req(cx, "body")
                .and_then(|v| flow(cx, v, &child(path, "body"), ids));
            match (items, as_name, max_items) {
                (Some(items), Some(as_name), Some(max_items)) => NodeKind::Foreach {
                    items,
                    as_name,
                    max_items,
                    body: body.unwrap_or_default(),
                    collect,
                },
                _ => NodeKind::Invalid,
            }
        }
        "return" => {
            let value = o
                .get("value")
                .map(|v| template(cx, v, &child(path, "value")));
            let status = o.status(cx, "status", (200, 299), Some(200));
            NodeKind::Return {
                value,
                status: status?,
            }
        }
        "fail" => {
            let status = o.status(cx, "status", (400, 599), None);
            let code = o.string(cx, "code", true);
            let message = o.expr(cx, "message", false);
            NodeKind::Fail {
                status: status?,
                code: code?,
                message,
            }
        }
        _ => return None,
    })
}

/// An `aggregate` node's keys.
fn aggregate(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<NodeKind> {
    let entity = o.name(cx, "entity", true);
    let filters = o.filters(cx).unwrap_or_default();
    let group_by = o
        .get("groupBy")
        .map(|v| string_list(cx, v, &child(path, "groupBy"), true))
        .unwrap_or_default();
    let mut measures = NameMap::default();
    let mpath = child(path, "measures");
    let raw = o.req(cx, "measures");
    if let Some(Value::Object(m)) = raw
        && m.is_empty()
    {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                mpath.clone(),
                "an aggregate with no measure",
            )
            .help("add one: `\"n\": {\"count\": \"*\"}`"),
        );
    }
    for (name, v, p) in object_map(cx, raw, &mpath) {
        if check_name(cx, &p, name, "a measure name")
            && let Some(m) = measure(cx, v, &p)
        {
            measures.insert(name.clone(), m);
        }
    }
    let order_by = o.order_by(cx).unwrap_or_default();
    let limit = limit(cx, o);
    let all = match o.get("scope") {
        None => false,
        Some(Value::String(s)) if s == "all" => true,
        Some(Value::String(s)) if s == "owner" => false,
        Some(v) => {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    child(path, "scope"),
                    format!("`scope` is `\"all\"` or `\"owner\"`, not {v}"),
                )
                .help("`\"all\"` counts across owners (it never returns rows); leave it out for the caller's rows"),
            );
            false
        }
    };
    Some(NodeKind::Aggregate {
        entity: entity?,
        filters,
        group_by,
        measures,
        order_by,
        limit,
        all,
    })
}

/// One measure: `{"count": "*"}`, `{"sum": "field"}`, …
fn measure(cx: &mut Cx, v: &Value, path: &str) -> Option<Measure> {
    let Value::Object(m) = v else {
        wrong_type(cx, path, "an object (`{\"sum\": \"field\"}`)", v);
        return None;
    };
    let found: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| !is_extra_key(k)).collect();
    let [(k, field)] = found.as_slice() else {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                path,
                "a measure is one of count, sum, min, max, avg, on one field",
            )
            .help(
                "write `{\"count\": \"*\"}`, `{\"sum\": \"minutes\"}`, `{\"min\": \"start_at\"}`…",
            ),
        );
        return None;
    };
    let kp = child(path, k);
    let kind = one_of(cx, &kp, k, "measure", MeasureKind::ALL)?;
    let Value::String(field) = field else {
        wrong_type(
            cx,
            &kp,
            "a field name (a string), or `\"*\"` for count",
            field,
        );
        return None;
    };
    let field = if field == "*" {
        if kind != MeasureKind::Count {
            cx.error(
                Diagnostic::new("invalid-value", kp, format!("`{k}` needs a field, not `*`"))
                    .help("only `count` takes `\"*\"` (every row)"),
            );
            return None;
        }
        None
    } else if check_name(cx, &kp, field, "a field name") {
        Some(field.clone())
    } else {
        return None;
    };
    Some(Measure {
        kind,
        field,
        path: path.to_owned(),
    })
}

/// How deep includes nest: an include, its includes, theirs.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 3;

/// A read's `include`: name → `{"ref": field}` or `{"from": Entity, "by":
/// field, "where", "orderBy", "limit", "include"}`.
fn includes(cx: &mut Cx, v: &Value, path: &str, depth: usize) -> Vec<Include> {
    let mut out = Vec::new();
    for (name, v, p) in object_map(cx, Some(v), path) {
        if !check_name(cx, &p, name, "an include name") {
            continue;
        }
        let Some(mut o) = Obj::new(
            cx,
            v,
            &p,
            "an object (`{\"ref\": field}` or `{\"from\": Entity, \"by\": field, \"limit\": n}`)",
        ) else {
            continue;
        };
        let by_ref = o.get("ref").is_some();
        let link = if by_ref {
            o.name(cx, "ref", true).map(IncludeLink::Ref)
        } else if o.get("from").is_some() {
            let entity = o.name(cx, "from", true);
            let by = o.name(cx, "by", true);
            entity
                .zip(by)
                .map(|(entity, by)| IncludeLink::From { entity, by })
        } else {
            // (`by` and the list's keys are read below, not reported as
            // unknown: the missing `from` is the mistake.)
            let _ = o.get("by");
            cx.error(
                Diagnostic::new(
                    "missing-key",
                    p.clone(),
                    format!("the include `{name}` names no related rows"),
                )
                .help("write `{\"ref\": field}` for the row a `ref` field names, or `{\"from\": Entity, \"by\": field, \"limit\": n}` for the rows naming this one"),
            );
            None
        };
        let (filters, order_by, limit) = if by_ref {
            (Vec::new(), Vec::new(), None)
        } else {
            (
                o.filters(cx).unwrap_or_default(),
                o.order_by(cx).unwrap_or_default(),
                limit(cx, &mut o),
            )
        };
        let nested = match o.get("include") {
            Some(_) if depth >= MAX_INCLUDE_DEPTH => {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(&p, "include"),
                        format!("includes nest {MAX_INCLUDE_DEPTH} levels deep at most"),
                    )
                    .help("read the deeper rows with a read node of their own"),
                );
                Vec::new()
            }
            Some(v) => includes(cx, v, &child(&p, "include"), depth + 1),
            None => Vec::new(),
        };
        o.finish(cx);
        if let Some(link) = link {
            out.push(Include {
                name: name.clone(),
                link,
                filters,
                order_by,
                limit,
                include: nested,
                path: p,
            });
        }
    }
    out
}

fn limit(cx: &mut Cx, o: &mut Obj) -> Option<Limit> {
    match o.get("limit")? {
        Value::String(_) => o.expr(cx, "limit", false).map(Limit::Expr),
        _ => o
            .uint(cx, "limit", 1, u64::from(u32::MAX))
            .map(Limit::Fixed),
    }
}

/// An entity's `indexes`: `[{"fields": [...], "unique": bool}]`.
fn indexes(cx: &mut Cx, v: &Value, path: &str) -> Vec<Index> {
    let Value::Array(items) = v else {
        wrong_type(
            cx,
            path,
            "a list of indexes (`[{\"fields\": [\"a\", \"b\"]}]`)",
            v,
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = child(path, &i.to_string());
        let Some(mut o) = Obj::new(cx, item, &p, "an object (`{\"fields\": […]}`)") else {
            continue;
        };
        let fields = o
            .req(cx, "fields")
            .map(|f| string_list(cx, f, &child(&p, "fields"), true));
        let unique = o.bool(cx, "unique");
        o.finish(cx);
        if let Some(fields) = fields {
            out.push(Index {
                fields,
                unique,
                path: p,
            });
        }
    }
    out
}

/// The names a `where` object gives its combinators (never field names).
pub(crate) const COMBINATORS: [&str; 3] = ["and", "or", "not"];

/// A `where` object: its members, all of which must hold.
fn filters(cx: &mut Cx, v: &Value, path: &str) -> Vec<Where> {
    filters_at(cx, v, path, 0)
}

/// How deep `and`/`or`/`not` may nest (a guard against runaway specs).
const MAX_WHERE_DEPTH: usize = 8;

fn filters_at(cx: &mut Cx, v: &Value, path: &str, depth: usize) -> Vec<Where> {
    let Value::Object(m) = v else {
        wrong_type(cx, path, "an object (`{\"field\": expression}`)", v);
        return Vec::new();
    };
    if depth > MAX_WHERE_DEPTH {
        cx.error(Diagnostic::new(
            "invalid-value",
            path,
            format!("`and`, `or` and `not` nest at most {MAX_WHERE_DEPTH} deep"),
        ));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (key, v) in m {
        let p = child(path, key);
        match key.as_str() {
            "and" | "or" => {
                let Value::Array(items) = v else {
                    wrong_type(cx, &p, "a list of `where` objects", v);
                    continue;
                };
                if items.is_empty() {
                    cx.error(
                        Diagnostic::new("invalid-value", p.clone(), format!("an empty `{key}`"))
                            .help("give it at least one `where` object"),
                    );
                }
                let members = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        Where::All(filters_at(cx, item, &child(&p, &i.to_string()), depth + 1))
                    })
                    .collect();
                out.push(if key == "and" {
                    Where::All(members)
                } else {
                    Where::Any(members)
                });
            }
            "not" => out.push(Where::Not(Box::new(Where::All(filters_at(
                cx,
                v,
                &p,
                depth + 1,
            ))))),
            field => {
                if check_name(cx, &p, field, "a field name") {
                    field_filters(cx, field, v, &p, &mut out);
                }
            }
        }
    }
    out
}

/// The conditions on one field: an expression (equality) or an object of
/// comparisons, with an optional `when`.
fn field_filters(cx: &mut Cx, field: &str, v: &Value, p: &str, out: &mut Vec<Where>) {
    match v {
        Value::Object(ops) => {
            let when = ops
                .get("when")
                .and_then(|w| expression(cx, w, &child(p, "when")));
            if ops.keys().all(|k| k == "when") {
                cx.error(
                    Diagnostic::new("invalid-value", p, "an empty condition").help(
                        "write `{\"gte\": expression}` or another of eq, ne, lt, lte, gt, gte, in, notIn, isNull, startsWith, contains, icontains",
                    ),
                );
            }
            for (op, v) in ops {
                if op == "when" {
                    continue;
                }
                let op_path = child(p, op);
                let Some(op) = FilterOp::ALL.iter().find(|(n, _)| n == op).map(|(_, o)| *o) else {
                    let names: Vec<&str> = FilterOp::ALL.iter().map(|(n, _)| *n).collect();
                    let mut help = suggest(op, names.iter().copied(), "");
                    if !help.starts_with("did you mean") {
                        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                        help = format!("use one of {}, and `when`", quoted.join(", "));
                    }
                    cx.error(
                        Diagnostic::new(
                            "invalid-value",
                            op_path,
                            format!("`{op}` is not a comparison"),
                        )
                        .help(help),
                    );
                    continue;
                };
                if v.is_object() {
                    wrong_type(cx, &op_path, "an expression, a literal or a list", v);
                    continue;
                }
                out.push(Where::Field(Box::new(Filter {
                    field: field.to_owned(),
                    op,
                    value: template(cx, v, &op_path),
                    path: p.to_owned(),
                    when: when.clone(),
                })));
            }
        }
        Value::Array(_) => wrong_type(cx, p, "an expression or `{\"in\": …}`", v),
        other => out.push(Where::Field(Box::new(Filter {
            field: field.to_owned(),
            op: FilterOp::Eq,
            value: template(cx, other, p),
            path: p.to_owned(),
            when: None,
        }))),
    }
}

fn order_by(cx: &mut Cx, v: &Value, path: &str) -> Vec<Order> {
    let one = |cx: &mut Cx, v: &Value, p: &str| -> Option<Order> {
        match v {
            Value::String(s) => {
                let mut parts = s.split_whitespace();
                let field = parts.next().unwrap_or_default().to_string();
                let dir = parts.next();
                let desc = match dir {
                    None | Some("asc" | "ASC") => false,
                    Some("desc" | "DESC") => true,
                    Some(d) => {
                        cx.error(
                            Diagnostic::new(
                                "invalid-value",
                                p,
                                format!("`{d}` is not a sort direction"),
                            )
                            .help("write `asc` or `desc`"),
                        );
                        return None;
                    }
                };
                if parts.next().is_some() || !check_name(cx, p, &field, "a field name") {
                    return None;
                }
                Some(Order { field, desc })
            }
            Value::Object(_) => {
                let mut o = Obj::new(cx, v, p, "an object")?;
                let field = o.name(cx, "field", true);
                let desc = match o.string(cx, "direction", false).as_deref() {
                    None | Some("asc") => false,
                    Some("desc") => true,
                    Some(d) => {
                        cx.error(
                            Diagnostic::new(
                                "invalid-value",
                                o.at("direction"),
                                format!("`{d}` is not a sort direction"),
                            )
                            .help("write `asc` or `desc`"),
                        );
                        false
                    }
                };
                o.finish(cx);
                Some(Order {
                    field: field?,
                    desc,
                })
            }
            other => {
                wrong_type(
                    cx,
                    p,
                    "a field name or `{\"field\": …, \"direction\": …}`",
                    other,
                );
                None
            }
        }
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            cx.error(
                Diagnostic::new("invalid-value", path, "an empty `orderBy` sorts by nothing")
                    .help("name at least one field, or leave `orderBy` out"),
            );
            Vec::new()
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| one(cx, item, &child(path, &i.to_string())))
            .collect(),
        other => one(cx, other, path).into_iter().collect(),
    }
}

fn retry(cx: &mut Cx, v: &Value, path: &str) -> Option<Retry> {
    let mut o = Obj::new(
        cx,
        v,
        path,
        "an object (`{\"max\": 3, \"backoff\": \"exponential\"}`)",
    )?;
    if !o.map.contains_key("max") {
        o.req(cx, "max");
    }
    let max = o.uint(cx, "max", 1, 10).and_then(|n| u32::try_from(n).ok());
    let backoff = match o.string(cx, "backoff", false) {
        None => Some(Backoff::Exponential),
        Some(b) => one_of(
            cx,
            &child(path, "backoff"),
            &b,
            "backoff",
            &[
                ("exponential", Backoff::Exponential),
                ("fixed", Backoff::Fixed),
                ("none", Backoff::None),
            ],
        ),
    };
    let initial_ms = o.uint(cx, "initialMs", 0, 3_600_000);
    o.finish(cx);
    Some(Retry {
        max: max?,
        backoff: backoff?,
        initial_ms,
    })
}

fn policy(cx: &mut Cx, v: &Value, path: &str) -> Option<Policy> {
    let mut o = Obj::new(cx, v, path, "an object (a policy)")?;
    let ty = o.string(cx, "type", true);
    let action = o.string(cx, "action", true).and_then(|a| {
        one_of(
            cx,
            &child(path, "action"),
            &a,
            "policy action",
            &[
                ("block", PolicyAction::Block),
                ("warn", PolicyAction::Warn),
                ("escalate", PolicyAction::Escalate),
            ],
        )
    });
    let tools = o.get("tools").map(|v| {
        let p = child(path, "tools");
        let list = string_list(cx, v, &p, true);
        if matches!(v, Value::Array(a) if a.is_empty()) {
            cx.error(
                Diagnostic::new("invalid-value", p, "`tools` is empty")
                    .help("name the tools the policy applies to, or leave `tools` out to apply it to every tool"),
            );
        }
        list
    });
    let message = o.string(cx, "message", false);
    let kind = match ty.as_deref() {
        Some("rowLimit") => o
            .uint(cx, "maxRows", 1, u64::from(u32::MAX))
            .or_else(|| {
                o.req(cx, "maxRows");
                None
            })
            .map(|max_rows| PolicyKind::RowLimit { max_rows }),
        Some("budgetCheck") => {
            let amount = o.expr(cx, "amount", true);
            let max_amount = match o.req(cx, "maxAmount") {
                Some(Value::String(_)) => o.expr(cx, "maxAmount", true).map(Limit::Expr),
                Some(_) => o.uint(cx, "maxAmount", 0, u64::MAX).map(Limit::Fixed),
                None => None,
            };
            match (amount, max_amount) {
                (Some(amount), Some(max_amount)) => {
                    Some(PolicyKind::BudgetCheck { amount, max_amount })
                }
                _ => None,
            }
        }
        Some("rateLimit") => o
            .uint(cx, "maxRequestsPerMinute", 1, u64::from(u32::MAX))
            .or_else(|| {
                o.req(cx, "maxRequestsPerMinute");
                None
            })
            .map(|n| PolicyKind::RateLimit {
                max_requests_per_minute: n,
            }),
        Some("custom") => o
            .expr(cx, "when", true)
            .map(|when| PolicyKind::Custom { when }),
        Some(other) => {
            let types = ["rowLimit", "budgetCheck", "rateLimit", "custom"];
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    child(path, "type"),
                    format!("`{other}` is not a policy type"),
                )
                .help(suggest(other, types, "")),
            );
            for k in [
                "maxRows",
                "amount",
                "maxAmount",
                "maxRequestsPerMinute",
                "when",
            ] {
                o.asked.push(k);
            }
            None
        }
        None => None,
    };
    o.finish(cx);
    Some(Policy {
        kind: kind?,
        action: action?,
        tools,
        message,
        path: path.to_string(),
    })
}

fn acknowledgment(cx: &mut Cx, v: &Value, path: &str) -> Option<Acknowledgment> {
    let mut o = Obj::new(
        cx,
        v,
        path,
        "an object (`{\"tool\", \"signal\", \"node\", \"reason\", \"by\"}`)",
    )?;
    let tool = o.name(cx, "tool", true);
    let signal = o.string(cx, "signal", true);
    let node = o.name(cx, "node", false);
    let reason = o.string(cx, "reason", true);
    let by = o.string(cx, "by", true);
    o.finish(cx);
    Some(Acknowledgment {
        tool: tool?,
        signal: signal?,
        node,
        reason: reason?,
        by: by?,
        path: path.to_string(),
    })
}

/// Whether `text` cannot fill a `{arg}` segment of an operation's path:
/// empty, `.` or `..` would move the call elsewhere on the service (RFC
/// 3986 dot-segments; an empty segment on many servers). The checker
/// refuses such a literal, the host such a value at run time.
pub fn unfit_path_segment(text: &str) -> bool {
    matches!(text, "" | "." | "..")
}

/// `url` as a message may show it: any credentials before its host
/// (`user:password@`) replaced by `…@`, so that a refused URL's password
/// reaches no log. Everything up to the last `@` goes: a password with an
/// unescaped `/` or `?` in it would otherwise show its end.
pub fn url_without_credentials(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}…{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

/// Why `url` cannot be an external's base URL (`https://host[:port][/prefix]`),
/// if it cannot: the spec's `baseUrl`, and a URL `sinew serve` is given at
/// start, are held to the same rule.
pub fn base_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some("does not start with https:// or http://");
    };
    if rest.contains(['?', '#', ' ']) {
        return Some("has a query, a fragment or a space (the operation's path follows it)");
    }
    const CREDENTIALS: &str = "has credentials in it (`user:password@`): credentials go in the external's `auth`, its secret in an environment variable";
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Some(CREDENTIALS);
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) if !host.is_empty() => match tail {
                "" => None,
                t => Some(t.strip_prefix(':').unwrap_or("x")),
            },
            _ => return Some("is not a valid URL (an IPv6 host needs `[…]`)"),
        },
        None if authority.is_empty() => return Some("has no host"),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    let bad_port = port.is_some_and(|p| p.parse::<u16>().is_err());
    // (`user:pa/ss@host`: a password with a `/` ends the authority early.)
    if bad_port && rest.contains('@') {
        return Some(CREDENTIALS);
    }
    bad_port.then_some("has a port that is not a number from 0 to 65535")
}
