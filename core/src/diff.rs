//! `sinew diff`: what a change of spec does, for reviewers and CI. The API
//! changes of each tool (breaking ones: a removed tool or route, a new
//! required input field, a narrowed input schema, a removed output field,
//! fewer roles allowed, a success status or idempotency key changed, an
//! owner added; and compatible ones), the risk level of each tool
//! before and after, the migration from the old spec's schema to the new
//! one's, and the policies and acknowledgments changed.
//!
//! ```
//! let old = r#"{"sinew": "0.1", "name": "n", "entities": {}, "tools": {"ping": {
//!   "trigger": {"http": {"method": "POST", "path": "/ping"}}, "auth": {"public": true},
//!   "input": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false},
//!   "output": {"type": "object"}, "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": {}}}}}}}"#;
//! let new = old.replace(r#""additionalProperties": false"#, r#""required": ["a"], "additionalProperties": false"#);
//! let d = sinew_core::diff::diff(old, &new).unwrap();
//! assert!(d.breaking);
//! assert_eq!(d.api[0].change, "`a` is a new required input field");
//! ```

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::json_schema::{ANNOTATIONS, resolved};
use crate::migrate::evolve::{self, Plan, Schema};
use crate::model::{Spec, Tool};
use crate::signal::Level;

/// What a change of spec does.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Some API change is breaking.
    pub breaking: bool,
    /// Some migration step can lose data or break the previous spec's
    /// servers (it needs `--allow-destructive`, or breaks them as it runs).
    pub destructive: bool,
    /// API changes, tool by tool.
    pub api: Vec<ApiChange>,
    /// Tools whose risk level changed (a tool added or removed: `null` on
    /// its missing side).
    pub risk: Vec<RiskChange>,
    /// The migration from the old spec's schema to the new one's.
    pub migration: Plan,
    /// Policies added, removed or changed.
    pub policies: Vec<Change>,
    /// Acknowledgments added, removed or changed.
    pub acknowledgments: Vec<Change>,
}

/// A change of a tool's API.
#[derive(Debug, Clone, Serialize)]
pub struct ApiChange {
    /// The tool.
    pub tool: String,
    /// What changed, in a sentence.
    pub change: String,
    /// Whether a caller written for the old spec can fail on it.
    pub breaking: bool,
}

/// A tool's risk level, before and after.
#[derive(Debug, Clone, Serialize)]
pub struct RiskChange {
    /// The tool.
    pub tool: String,
    /// Its level in the old spec.
    pub from: Option<Level>,
    /// Its level in the new one.
    pub to: Option<Level>,
}

/// A named thing added, removed or changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What it is called (a policy's name; an acknowledgment's
    /// `tool/signal[/node]`).
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
}

/// Why a diff cannot be made: a spec that does not load.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// Which side (`old` or `new`).
    pub side: &'static str,
    /// Its first error.
    pub error: String,
}

/// The diff from the spec `old` to the spec `new` (their texts).
pub fn diff(old: &str, new: &str) -> Result<Diff, Invalid> {
    let load = |text: &str, side: &'static str| {
        let loaded = crate::spec::load(text);
        match loaded.errors.first() {
            Some(e) => Err(Invalid {
                side,
                error: format!("{} at {}", e.message, e.path),
            }),
            None => Ok(loaded),
        }
    };
    let (a, b) = (load(old, "old")?, load(new, "new")?);
    let mut api = Vec::new();
    for (name, t) in &a.spec.tools {
        match b.spec.tools.get(name) {
            None => api.push(ApiChange {
                tool: name.clone(),
                change: "the tool is removed".into(),
                breaking: true,
            }),
            Some(u) => tool_changes(name, t, u, &mut api),
        }
    }
    owner_changes(&a.spec, &b.spec, &mut api);
    emitted_changes(&a.spec, &b.spec, &mut api);
    for name in b.spec.tools.keys() {
        if !a.spec.tools.contains_key(name) {
            api.push(ApiChange {
                tool: name.clone(),
                change: "a new tool".into(),
                breaking: false,
            });
        }
    }
    let (ra, rb) = (crate::risk::analyze(&a), crate::risk::analyze(&b));
    let mut risk = Vec::new();
    let tools: std::collections::BTreeSet<&String> =
        ra.tools.keys().chain(rb.tools.keys()).collect();
    for tool in tools {
        let from = ra.tools.get(tool).map(|r| r.level);
        let to = rb.tools.get(tool).map(|r| r.level);
        if from != to {
            risk.push(RiskChange {
                tool: tool.clone(),
                from,
                to,
            });
        }
    }
    added_values(&a.spec, &b.spec, &mut api);
    let migration = evolve::plan(&Schema::of(&a.spec), &b.spec);
    let policies = named_changes(
        a.source.get("policies").and_then(Value::as_object),
        b.source.get("policies").and_then(Value::as_object),
    );
    let acks = |s: &Spec| -> serde_json::Map<String, Value> {
        s.acknowledgments
            .iter()
            .map(|k| {
                let mut name = format!("{}/{}", k.tool, k.signal);
                if let Some(n) = &k.node {
                    let _ = write!(name, "/{n}");
                }
                (name, Value::from(format!("{}\u{0}{}", k.reason, k.by)))
            })
            .collect()
    };
    let acknowledgments = named_changes(Some(&acks(&a.spec)), Some(&acks(&b.spec)));
    Ok(Diff {
        breaking: api.iter().any(|c| c.breaking),
        destructive: migration
            .steps
            .iter()
            .any(|s| s.risk == evolve::Risk::Destructive),
        api,
        risk,
        migration,
        policies,
        acknowledgments,
    })
}

/// Values an entity's column may newly hold (states, `enum` values) that
/// a tool of the old spec answers from a closed `enum` under that column's
/// name: while both specs serve (a rolling deploy), the old spec's servers
/// answer 500 `invalid_output` for a row holding one. Said as a breaking
/// change of that tool.
fn added_values(old: &Spec, new: &Spec, out: &mut Vec<ApiChange>) {
    let values = |e: &crate::model::Entity, column: &str| e.values_of(column);
    for (name, e) in &new.entities {
        let Some(before) = old.entities.get(name) else {
            continue;
        };
        let mut columns: Vec<&str> = e.fields.keys().map(String::as_str).collect();
        columns.push("status");
        for column in columns {
            let (Some(was), Some(is)) = (values(before, column), values(e, column)) else {
                continue;
            };
            let added: Vec<&Value> = is.iter().filter(|v| !was.contains(v)).collect();
            if added.is_empty() {
                continue;
            }
            for (tool, t) in &old.tools {
                let mut closed = Vec::new();
                enums_named(&t.output, column, &mut closed);
                if closed
                    .iter()
                    .any(|list| added.iter().any(|v| !list.contains(v)))
                {
                    let shown: Vec<String> = added.iter().map(ToString::to_string).collect();
                    out.push(ApiChange {
                        tool: tool.clone(),
                        change: format!(
                            "`{name}.{column}` takes {} too, which its output `{column}` (an enum) \
                             does not: while the previous spec serves, it answers 500 for such a \
                             row (add the values to that output schema in an earlier deploy)",
                            shown.join(", ")
                        ),
                        breaking: true,
                    });
                }
            }
        }
    }
}

/// Every `enum` list of a property named `name` anywhere in a schema.
fn enums_named<'v>(schema: &'v Value, name: &str, out: &mut Vec<&'v Vec<Value>>) {
    match schema {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties")
                && let Some(list) = props
                    .get(name)
                    .and_then(|p| p.get("enum"))
                    .and_then(Value::as_array)
            {
                out.push(list);
            }
            for v in m.values() {
                enums_named(v, name, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| enums_named(v, name, out)),
        _ => {}
    }
}

fn named_changes(
    old: Option<&serde_json::Map<String, Value>>,
    new: Option<&serde_json::Map<String, Value>>,
) -> Vec<Change> {
    let empty = serde_json::Map::new();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut out = Vec::new();
    for (name, v) in old {
        match new.get(name) {
            None => out.push(Change {
                name: name.clone(),
                change: "removed",
            }),
            Some(w) if w != v => out.push(Change {
                name: name.clone(),
                change: "changed",
            }),
            Some(_) => {}
        }
    }
    for name in new.keys() {
        if !old.contains_key(name) {
            out.push(Change {
                name: name.clone(),
                change: "added",
            });
        }
    }
    out
}

fn tool_changes(name: &str, old: &Tool, new: &Tool, out: &mut Vec<ApiChange>) {
    let mut push = |change: String, breaking: bool| {
        out.push(ApiChange {
            tool: name.to_owned(),
            change,
            breaking,
        });
    };
    if old.trigger.route() != new.trigger.route() {
        let show = |t: &Tool| match t.trigger.route() {
            Some((m, p)) => format!("{m} {p}"),
            None => "no route".to_owned(),
        };
        push(
            format!("its route changes from {} to {}", show(old), show(new)),
            old.trigger.route().is_some(),
        );
    }
    match (old.auth.public, new.auth.public) {
        (true, false) => push("it needs a signed-in caller (it was public)".into(), true),
        (false, true) => push("it is public (it needed a signed-in caller)".into(), false),
        _ => {}
    }
    if !new.auth.public && !old.auth.public {
        let (o, n) = (&old.auth.roles, &new.auth.roles);
        let lost: Vec<&str> = o
            .iter()
            .filter(|r| !n.contains(r))
            .map(String::as_str)
            .collect();
        let gained: Vec<&str> = n
            .iter()
            .filter(|r| !o.contains(r))
            .map(String::as_str)
            .collect();
        if n.is_empty() {
            if !o.is_empty() {
                push("any signed-in caller may call it".into(), false);
            }
        } else if o.is_empty() {
            push(
                format!(
                    "only roles {} may call it (any signed-in caller could)",
                    n.join(", ")
                ),
                true,
            );
        } else {
            if !lost.is_empty() {
                push(
                    format!("roles {} may no longer call it", lost.join(", ")),
                    true,
                );
            }
            if !gained.is_empty() {
                push(
                    format!("roles {} may call it too", gained.join(", ")),
                    false,
                );
            }
        }
    }
    if old.auth.deny_when.as_ref().map(|e| &e.src) != new.auth.deny_when.as_ref().map(|e| &e.src) {
        push(
            "its `denyWhen` changes (callers it let through may be refused)".into(),
            new.auth.deny_when.is_some(),
        );
    }
    let key = |t: &Tool| t.idempotency_key.as_ref().map(|k| k.src.clone());
    match (old.key_from_header(), new.key_from_header()) {
        (false, true) => push(
            "its idempotency key comes from the `Idempotency-Key` header: a call without \
             the header is refused (400 `idempotency_key_required`)"
                .into(),
            true,
        ),
        (true, false) => push(
            "its idempotency key no longer comes from the `Idempotency-Key` header: a retry \
             that relies on the header runs again"
                .into(),
            true,
        ),
        _ => match (key(old), key(new)) {
            (Some(o), None) => push(
                format!("it has no idempotency key (was `{o}`): a retry runs again"),
                true,
            ),
            (None, Some(n)) => push(format!("it gains the idempotency key `{n}`"), false),
            (Some(o), Some(n)) if o != n => push(
                format!(
                    "its idempotency key changes from `{o}` to `{n}` (a retry across the \
                     deploy runs again)"
                ),
                false,
            ),
            _ => {}
        },
    }
    let (was, is) = (success_statuses(old), success_statuses(new));
    let lost: Vec<String> = was
        .iter()
        .filter(|s| !is.contains(s))
        .map(ToString::to_string)
        .collect();
    let gained: Vec<String> = is
        .iter()
        .filter(|s| !was.contains(s))
        .map(ToString::to_string)
        .collect();
    if !lost.is_empty() || !gained.is_empty() {
        let show = |v: &std::collections::BTreeSet<u16>| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        push(
            format!(
                "its success status changes from {} to {}",
                show(&was),
                show(&is)
            ),
            !lost.is_empty(),
        );
    }
    let mut changes = Vec::new();
    let (oi, ni) = (resolved(&old.input), resolved(&new.input));
    let (oo, no) = (resolved(&old.output), resolved(&new.output));
    schema_changes("", &oi, &ni, Side::Input, &mut changes);
    schema_changes("", &oo, &no, Side::Output, &mut changes);
    for (change, breaking) in changes {
        push(change, breaking);
    }
}

/// Operations the old spec `emit`s that the new one removes, or calls
/// otherwise (`method`, `path`, `encoding`): the messages still pending in
/// the outbox when the new spec's servers deliver them fail, or go out
/// another way.
fn emitted_changes(old: &Spec, new: &Spec, out: &mut Vec<ApiChange>) {
    for (tool, t) in &old.tools {
        let mut seen = Vec::new();
        for (_, n) in t.flow.all() {
            let crate::model::NodeKind::Emit {
                external,
                operation,
                ..
            } = &n.kind
            else {
                continue;
            };
            if seen.contains(&(external, operation)) {
                continue;
            }
            seen.push((external, operation));
            let was = old
                .externals
                .get(external)
                .and_then(|x| x.operations.get(operation));
            let is = new
                .externals
                .get(external)
                .and_then(|x| x.operations.get(operation));
            let change = match (was, is) {
                (_, None) => format!(
                    "it emits `{external}.{operation}`, which the new spec no longer has: \
                     messages still pending in the outbox would fail (let them be delivered \
                     first, or keep the operation)"
                ),
                (Some(w), Some(i))
                    if (&w.method, &w.path, &w.encoding) != (&i.method, &i.path, &i.encoding) =>
                {
                    format!(
                        "it emits `{external}.{operation}`, whose method, path or encoding \
                         changes: messages still pending in the outbox go out the new way"
                    )
                }
                _ => continue,
            };
            out.push(ApiChange {
                tool: tool.clone(),
                change,
                breaking: true,
            });
        }
    }
}

/// The statuses a tool's `return` nodes answer with.
fn success_statuses(t: &Tool) -> std::collections::BTreeSet<u16> {
    t.flow
        .all()
        .into_iter()
        .filter_map(|(_, n)| match &n.kind {
            crate::model::NodeKind::Return { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

/// Owners added to, changed on or removed from an entity: who sees which
/// rows changes for every tool (of both specs) that works on it.
fn owner_changes(old: &Spec, new: &Spec, out: &mut Vec<ApiChange>) {
    for (name, e) in &new.entities {
        let Some(before) = old.entities.get(name) else {
            continue;
        };
        let describe = |o: &crate::model::Owner| {
            let mut s = format!("`{}`", o.field);
            if o.by_ref {
                s.push_str(" (through the row it names)");
            }
            if let Some(c) = &o.claim {
                let _ = write!(s, " against the `{c}` claim");
            }
            s
        };
        let (change, breaking) = match (&before.owner, &e.owner) {
            (None, None) => continue,
            (None, Some(o)) => (
                format!(
                    "`{name}` rows gain an owner, {}: callers see and change only their own rows \
                     (rows already there with no owner: none but the exempt roles)",
                    describe(o)
                ),
                true,
            ),
            (Some(_), None) => (
                format!("`{name}` rows no longer have an owner: every caller sees every row"),
                false,
            ),
            (Some(a), Some(b)) => {
                let lost: Vec<&str> = a
                    .exempt
                    .iter()
                    .filter(|r| !b.exempt.contains(r))
                    .map(String::as_str)
                    .collect();
                if (&a.field, a.by_ref, &a.claim) != (&b.field, b.by_ref, &b.claim) {
                    (
                        format!(
                            "`{name}` rows are owned by {} instead of {}: callers may no longer \
                             see rows they saw",
                            describe(b),
                            describe(a)
                        ),
                        true,
                    )
                } else if !lost.is_empty() {
                    (
                        format!(
                            "roles {} no longer see and change every `{name}` row",
                            lost.join(", ")
                        ),
                        true,
                    )
                } else if a.exempt != b.exempt {
                    (
                        format!("more roles see and change every `{name}` row"),
                        false,
                    )
                } else {
                    continue;
                }
            }
        };
        for (tool, t) in &old.tools {
            let works_on = |t: &Tool, spec: &Spec| {
                t.flow.all().into_iter().any(|(_, n)| {
                    n.kind.entity() == Some(name.as_str())
                        || matches!(&n.kind, crate::model::NodeKind::Read { entity, include, .. }
                            if includes(spec, entity, include, name))
                })
            };
            let touches = works_on(t, old) || new.tools.get(tool).is_some_and(|u| works_on(u, new));
            if touches && new.tools.contains_key(tool) {
                out.push(ApiChange {
                    tool: tool.clone(),
                    change: change.clone(),
                    breaking,
                });
            }
        }
    }
}

/// Whether the includes of a read of `entity` embed rows of `target`, at
/// any depth.
fn includes(spec: &Spec, entity: &str, list: &[crate::model::Include], target: &str) -> bool {
    let Some(e) = spec.entities.get(entity) else {
        return false;
    };
    list.iter().any(|i| {
        i.target(e)
            .is_some_and(|t| t == target || includes(spec, t, &i.include, target))
    })
}

/// The keywords a schema comparison reads; any other that changes is
/// reported as a change `sinew diff` cannot judge.
const COMPARED: &[&str] = &[
    "type",
    "nullable",
    "maxLength",
    "maximum",
    "exclusiveMaximum",
    "maxItems",
    "minLength",
    "minimum",
    "exclusiveMinimum",
    "minItems",
    "pattern",
    "format",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Input,
    Output,
}

impl Side {
    fn noun(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// The types a schema allows (`None`: any).
fn types(s: &Value) -> Option<Vec<String>> {
    let mut t: Vec<String> = match s.get("type")? {
        Value::String(t) => vec![t.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => return None,
    };
    if s.get("nullable") == Some(&Value::Bool(true)) {
        t.push("null".into());
    }
    if t.iter().any(|x| x == "number") {
        t.push("integer".into());
    }
    Some(t)
}

fn required(s: &Value) -> Vec<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn closed(s: &Value) -> bool {
    s.get("additionalProperties") == Some(&Value::Bool(false))
}

/// The changes from schema `old` to `new` at `at` (a field path, `""`
/// for the whole), each with whether it breaks a caller: on the input
/// side, when the new schema refuses something the old one accepted; on
/// the output side, when a response may lack or hold something a caller
/// of the old one does not expect.
fn schema_changes(at: &str, old: &Value, new: &Value, side: Side, out: &mut Vec<(String, bool)>) {
    let what = |at: &str| {
        if at.is_empty() {
            format!("the {}", side.noun())
        } else {
            format!("{} field `{at}`", side.noun())
        }
    };
    let field = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    // Types.
    match (types(old), types(new)) {
        (Some(o), Some(n)) => {
            let lost: Vec<&String> = o.iter().filter(|t| !n.contains(t)).collect();
            let gained: Vec<&String> = n.iter().filter(|t| !o.contains(t)).collect();
            let (narrower, wider) = (!lost.is_empty(), !gained.is_empty());
            if narrower || wider {
                let breaking = match side {
                    Side::Input => narrower,
                    Side::Output => wider,
                };
                out.push((
                    format!(
                        "{} changes type from {} to {}",
                        what(at),
                        o.join("|"),
                        n.join("|")
                    ),
                    breaking,
                ));
            }
        }
        (None, Some(n)) if side == Side::Input => {
            out.push((format!("{} must be {}", what(at), n.join("|")), true));
        }
        (Some(o), None) if side == Side::Output => {
            out.push((
                format!("{} may be of any type (was {})", what(at), o.join("|")),
                true,
            ));
        }
        _ => {}
    }
    // Bounds: a tighter one breaks an input, a looser one an output.
    let bounds: [(&str, bool); 8] = [
        ("maxLength", true),
        ("maximum", true),
        ("exclusiveMaximum", true),
        ("maxItems", true),
        ("minLength", false),
        ("minimum", false),
        ("exclusiveMinimum", false),
        ("minItems", false),
    ];
    for (key, upper) in bounds {
        let (o, n) = (
            old.get(key).and_then(Value::as_f64),
            new.get(key).and_then(Value::as_f64),
        );
        let tighter = match (o, n) {
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(o), Some(n)) if upper => n < o,
            (Some(o), Some(n)) => n > o,
            _ => continue,
        };
        if o == n {
            continue;
        }
        let show = |v: Option<f64>| v.map_or("none".to_owned(), |v| v.to_string());
        out.push((
            format!("{} {key} {} → {}", what(at), show(o), show(n)),
            match side {
                Side::Input => tighter,
                Side::Output => !tighter,
            },
        ));
    }
    for key in ["pattern", "format", "const"] {
        if old.get(key) != new.get(key) {
            out.push((
                format!(
                    "{} `{key}` changes from {} to {}",
                    what(at),
                    old.get(key).map_or("none".into(), ToString::to_string),
                    new.get(key).map_or("none".into(), ToString::to_string)
                ),
                match side {
                    Side::Input => new.get(key).is_some(),
                    Side::Output => old.get(key).is_some(),
                },
            ));
        }
    }
    // Enums.
    let values = |s: &Value| s.get("enum").and_then(Value::as_array).cloned();
    match (values(old), values(new)) {
        (o, n) if o == n => {}
        (o, n) => {
            let o = o.unwrap_or_default();
            let n = n.unwrap_or_default();
            let removed: Vec<String> = o
                .iter()
                .filter(|v| !n.is_empty() && !n.contains(v))
                .map(ToString::to_string)
                .collect();
            let added: Vec<String> = n
                .iter()
                .filter(|v| !o.is_empty() && !o.contains(v))
                .map(ToString::to_string)
                .collect();
            if o.is_empty() && !n.is_empty() {
                out.push((
                    format!("{} is limited to an enum", what(at)),
                    side == Side::Input,
                ));
            } else if !o.is_empty() && n.is_empty() {
                out.push((
                    format!("{} is no longer limited to an enum", what(at)),
                    side == Side::Output,
                ));
            }
            if !removed.is_empty() {
                out.push((
                    format!("{} no longer takes {}", what(at), removed.join(", ")),
                    side == Side::Input,
                ));
            }
            if !added.is_empty() {
                out.push((
                    format!("{} takes {} too", what(at), added.join(", ")),
                    side == Side::Output,
                ));
            }
        }
    }
    // Object members.
    let props = |s: &Value| -> BTreeMap<String, Value> {
        s.get("properties")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (op, np) = (props(old), props(new));
    let (or, nr) = (required(old), required(new));
    for (name, o) in &op {
        match np.get(name) {
            Some(n) => schema_changes(&field(name), o, n, side, out),
            None => match side {
                Side::Input => out.push((
                    format!("`{}` is no longer an input field", field(name)),
                    closed(new),
                )),
                Side::Output => out.push((
                    format!("`{}` is no longer in the output", field(name)),
                    true,
                )),
            },
        }
    }
    for name in np.keys() {
        if !op.contains_key(name) {
            let required = nr.contains(&name.as_str());
            match side {
                Side::Input if required => {}
                Side::Input => out.push((
                    format!("`{}` is a new optional input field", field(name)),
                    false,
                )),
                Side::Output => {
                    out.push((format!("`{}` is a new output field", field(name)), false))
                }
            }
        }
    }
    for name in &nr {
        if !or.contains(name) {
            match side {
                Side::Input => out.push((
                    format!("`{}` is a new required input field", field(name)),
                    true,
                )),
                Side::Output => {}
            }
        }
    }
    for name in &or {
        if !nr.contains(name) && side == Side::Output && np.contains_key(*name) {
            out.push((
                format!("`{}` may be absent from the output", field(name)),
                true,
            ));
        }
    }
    if side == Side::Input && !closed(old) && closed(new) {
        out.push((
            format!("{} refuses fields it does not list", what(at)),
            true,
        ));
    }
    match (old.get("items"), new.get("items")) {
        (Some(o), Some(n)) => schema_changes(&format!("{at}[]"), o, n, side, out),
        (None, Some(n)) if n != &Value::Bool(true) && side == Side::Input => {
            out.push((format!("{} items must match a schema", what(at)), true))
        }
        (Some(o), None) if o != &Value::Bool(true) && side == Side::Output => {
            out.push((format!("{} items may be anything", what(at)), true))
        }
        _ => {}
    }
    // A schema of the members a closed list of `properties` does not name.
    let extra = |s: &Value| match s.get("additionalProperties") {
        Some(Value::Bool(_)) | None => None,
        Some(x) => Some(x.clone()),
    };
    match (extra(old), extra(new)) {
        (Some(o), Some(n)) => schema_changes(&field("*"), &o, &n, side, out),
        (None, Some(_)) if !closed(old) => out.push((
            format!("{} limits the fields it does not list", what(at)),
            side == Side::Input,
        )),
        (Some(_), None) if !closed(new) => out.push((
            format!("{} no longer limits the fields it does not list", what(at)),
            side == Side::Output,
        )),
        _ => {}
    }
    // Whatever else changed, `sinew diff` cannot judge: breaking, to be
    // read by a person.
    let keys: std::collections::BTreeSet<&String> = old
        .as_object()
        .into_iter()
        .chain(new.as_object())
        .flat_map(|m| m.keys())
        .filter(|k| !COMPARED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        .collect();
    for key in keys {
        if old.get(key) != new.get(key) {
            out.push((
                format!(
                    "{} `{key}` changes (sinew diff does not compare it: read it yourself)",
                    what(at)
                ),
                true,
            ));
        }
    }
    if (old.is_boolean() || new.is_boolean()) && old != new {
        out.push((
            format!("{} changes from {old} to {new}", what(at)),
            match side {
                Side::Input => new == &Value::Bool(false) || old == &Value::Bool(true),
                Side::Output => old == &Value::Bool(false) || new == &Value::Bool(true),
            },
        ));
    }
}

impl Diff {
    /// The diff for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "API:");
        if self.api.is_empty() {
            let _ = writeln!(out, "  no change");
        }
        for c in &self.api {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                if c.breaking {
                    "breaking  "
                } else {
                    "compatible"
                },
                c.tool,
                c.change
            );
        }
        let _ = writeln!(out, "\nrisk:");
        if self.risk.is_empty() {
            let _ = writeln!(out, "  no change");
        }
        for r in &self.risk {
            let show = |l: Option<Level>| l.map_or("-", Level::word);
            let _ = writeln!(out, "  {}: {} → {}", r.tool, show(r.from), show(r.to));
        }
        let _ = writeln!(out, "\nmigration:");
        for line in self.migration.human().lines() {
            let _ = writeln!(out, "  {line}");
        }
        for (title, list) in [
            ("policies", &self.policies),
            ("acknowledgments", &self.acknowledgments),
        ] {
            let _ = writeln!(out, "\n{title}:");
            if list.is_empty() {
                let _ = writeln!(out, "  no change");
            }
            for c in list {
                let _ = writeln!(out, "  {} {}", c.change, c.name);
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            match (self.breaking, self.destructive) {
                (false, false) => "nothing breaking or destructive",
                (true, false) => "BREAKING: callers written for the old spec can fail",
                (false, true) =>
                    "DESTRUCTIVE: the migration can lose data or break the previous spec's servers",
                (true, true) => "BREAKING and DESTRUCTIVE",
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A spec with one entity and one tool reading it.
    fn base() -> Value {
        json!({
            "sinew": "0.2", "name": "d",
            "entities": {"Note": {"fields": {
                "title": {"type": "string"}, "author": {"type": "string", "nullable": true}}}},
            "tools": {"add": {
                "trigger": {"http": {"method": "POST", "path": "/notes"}},
                "auth": {"roles": ["staff"]},
                "idempotencyKey": "input.ref",
                "input": {
                    "type": "object",
                    "$defs": {"title": {"type": "string", "maxLength": 100}},
                    "properties": {"ref": {"type": "string"}, "title": {"$ref": "#/$defs/title"}},
                    "required": ["ref", "title"],
                    "additionalProperties": false
                },
                "output": {"type": "object", "properties": {"id": {"type": "string"}}},
                "flow": {"entry": "t", "nodes": {
                    "t": {"type": "transaction", "body": {"entry": "c", "nodes": {
                        "c": {"type": "create", "entity": "Note", "values": {"title": "input.title"}}}},
                        "next": "r"},
                    "r": {"type": "return", "value": {"id": "c.id"}, "status": 201}}}
            }}
        })
    }

    fn changes(old: &Value, new: &Value) -> Vec<(String, bool)> {
        let d = diff(&old.to_string(), &new.to_string()).unwrap();
        d.api.into_iter().map(|c| (c.change, c.breaking)).collect()
    }

    fn breaking(old: &Value, new: &Value, says: &str) {
        let c = changes(old, new);
        assert!(
            c.iter().any(|(m, b)| *b && m.contains(says)),
            "no breaking change saying {says:?}: {c:?}"
        );
    }

    #[test]
    fn the_base_has_no_change() {
        assert_eq!(changes(&base(), &base()), vec![]);
    }

    #[test]
    fn a_narrowing_through_a_ref_or_all_of_is_breaking() {
        let mut v = base();
        v["tools"]["add"]["input"]["$defs"]["title"]["maxLength"] = json!(10);
        breaking(&base(), &v, "input field `title` maxLength 100 → 10");
        let mut v = base();
        v["tools"]["add"]["input"]["allOf"] = json!([{"properties": {"title": {"minLength": 3}}}]);
        breaking(&base(), &v, "input field `title` minLength none → 3");
        let mut v = base();
        v["tools"]["add"]["input"]["allOf"] =
            json!([{"required": ["extra"], "properties": {"extra": {"type": "string"}}}]);
        v["tools"]["add"]["input"]["additionalProperties"] = json!(true);
        breaking(&base(), &v, "`extra` is a new required input field");
        // The same schema written with an `allOf` instead of in place: no change.
        let mut v = base();
        let input = v["tools"]["add"]["input"].take();
        v["tools"]["add"]["input"] = json!({"$defs": input["$defs"], "allOf": [
            {"type": "object", "properties": {"ref": {"type": "string"}}, "required": ["ref"]},
            {"properties": {"title": {"$ref": "#/$defs/title"}}, "required": ["title"], "additionalProperties": false}
        ]});
        assert_eq!(changes(&base(), &v), vec![]);
        // What it cannot compare is said, as breaking.
        let mut v = base();
        v["tools"]["add"]["input"]["properties"]["ref"]["anyOf"] =
            json!([{"minLength": 2}, {"maxLength": 0}]);
        breaking(&base(), &v, "input field `ref` `anyOf` changes");
    }

    #[test]
    fn the_idempotency_key_moved_to_the_header_is_breaking() {
        let mut v = base();
        v["tools"]["add"]["idempotencyKey"] = json!("request.idempotencyKey");
        breaking(&base(), &v, "a call without the header is refused");
        breaking(&v, &base(), "a retry that relies on the header runs again");
        let mut v = base();
        v["tools"]["add"]["idempotencyKey"].take();
        v["tools"]["add"]
            .as_object_mut()
            .unwrap()
            .remove("idempotencyKey");
        breaking(&base(), &v, "it has no idempotency key");
        let c = changes(&v, &base());
        assert_eq!(
            c,
            vec![("it gains the idempotency key `input.ref`".to_owned(), false)]
        );
    }

    #[test]
    fn a_changed_success_status_is_breaking() {
        let mut v = base();
        v["tools"]["add"]["flow"]["nodes"]["r"]["status"] = json!(200);
        breaking(&base(), &v, "its success status changes from 201 to 200");
    }

    #[test]
    fn an_owner_added_or_changed_is_breaking() {
        let mut v = base();
        v["entities"]["Note"]["owner"] = json!({"field": "author"});
        breaking(&base(), &v, "`Note` rows gain an owner");
        let c = changes(&v, &base());
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(!c[0].1, "{c:?}");
        let mut w = v.clone();
        w["entities"]["Note"]["owner"]["exempt"] = json!(["staff"]);
        breaking(
            &w,
            &v,
            "roles staff no longer see and change every `Note` row",
        );
    }

    #[test]
    fn a_not_null_that_fails_on_nulls_is_destructive() {
        let mut v = base();
        v["entities"]["Note"]["fields"]["author"] = json!({"type": "string"});
        let d = diff(&base().to_string(), &v.to_string()).unwrap();
        assert!(d.destructive, "{}", d.human());
    }

    #[test]
    fn an_emitted_operation_removed_or_changed_is_breaking() {
        let mut v = base();
        v["externals"] = json!({"mail": {"kind": "email", "operations": {"send": {}}}});
        let body = &mut v["tools"]["add"]["flow"]["nodes"]["t"]["body"]["nodes"];
        body["c"]["next"] = json!("e");
        body["e"] = json!({"type": "emit", "external": "mail", "operation": "send",
            "args": {"note": "c.id"}});
        assert_eq!(changes(&v, &v), vec![]);
        let mut renamed = v.clone();
        renamed["externals"]["mail"]["operations"] = json!({"deliver": {}});
        renamed["tools"]["add"]["flow"]["nodes"]["t"]["body"]["nodes"]["e"]["operation"] =
            json!("deliver");
        breaking(
            &v,
            &renamed,
            "it emits `mail.send`, which the new spec no longer has",
        );
        let mut moved = v.clone();
        moved["externals"]["mail"]["operations"]["send"] = json!({"path": "/v2/send"});
        breaking(&v, &moved, "whose method, path or encoding changes");
    }
}
