//! The shapes of what a flow returns, as far as its nodes fix them: a row
//! of an entity (with the rows its read includes), a list of rows, a page
//! (`rows`, `next`, `total`), an aggregate's groups. The OpenAPI document
//! describes a tool's response with them wherever its `return` hands out
//! such a binding under a key of the output: the output schema as written
//! still holds (the server validates every response against it), and the
//! shape says what the rows are.

use serde_json::{Map, Value, json};
use sinew_core::spec::{
    Entity, FieldType, Include, IncludeLink, MeasureKind, NodeKind, Spec, Template, Tool,
};

/// The name of an entity's row schema under `components/schemas`.
pub fn row_name(entity: &str) -> String {
    format!("{entity}Row")
}

/// The schema of a column of a type (`nullable`: or null).
fn column(ty: FieldType, nullable: bool) -> Value {
    let mut s = match ty {
        FieldType::String => json!({"type": "string"}),
        FieldType::Integer => json!({"type": "integer"}),
        FieldType::Number => json!({"type": "number"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Timestamp => json!({"type": "string", "format": "date-time"}),
        FieldType::Uuid | FieldType::Ref => json!({"type": "string", "format": "uuid"}),
        FieldType::Json => return json!({}),
    };
    if nullable && let Some(t) = s.get("type").cloned() {
        s["type"] = json!([t, "null"]);
    }
    s
}

/// The schema of a stored row of `e`: every column, in row order.
pub fn row_schema(e: &Entity) -> Value {
    let mut props = Map::new();
    props.insert("id".into(), column(FieldType::Uuid, false));
    props.insert("version".into(), column(FieldType::Integer, false));
    for c in ["created_at", "updated_at"] {
        props.insert(c.into(), column(FieldType::Timestamp, false));
    }
    props.insert("deleted_at".into(), column(FieldType::Timestamp, true));
    if let Some(sm) = &e.status {
        props.insert("status".into(), json!({"enum": sm.states()}));
    }
    for (name, f) in &e.fields {
        let mut s = column(f.ty, f.nullable);
        if let Some(values) = &f.enum_values {
            s = json!({"enum": values});
        }
        props.insert(name.clone(), s);
    }
    let required: Vec<&String> = props.keys().collect();
    json!({"type": "object", "required": required, "properties": props})
}

/// A row of `entity` with what `include` embeds in it.
fn row(spec: &Spec, entity: &str, include: &[Include]) -> Value {
    let base = json!({"$ref": format!("#/components/schemas/{}", row_name(entity))});
    if include.is_empty() {
        return base;
    }
    let Some(e) = spec.entities.get(entity) else {
        return base;
    };
    let mut props = Map::new();
    for inc in include {
        let s = match (&inc.link, inc.target(e)) {
            (_, None) => json!({}),
            (IncludeLink::Ref(_), Some(t)) => {
                json!({"anyOf": [row(spec, t, &inc.include), {"type": "null"}]})
            }
            (IncludeLink::From { .. }, Some(t)) => {
                json!({"type": "array", "items": row(spec, t, &inc.include)})
            }
        };
        props.insert(inc.name.clone(), s);
    }
    let required: Vec<&String> = props.keys().collect();
    json!({"allOf": [base], "required": required, "properties": props})
}

/// The shape of a binding path (`find`, `find.rows`, `find.next`,
/// `find.total`) of a read or aggregate node, when the node fixes it.
fn binding(spec: &Spec, kind: &NodeKind, member: Option<&str>) -> Option<Value> {
    match (kind, member) {
        (
            NodeKind::Read {
                entity,
                one,
                page,
                count,
                include,
                ..
            },
            m,
        ) => {
            let r = row(spec, entity, include);
            match (*one, *page, m) {
                (true, _, None) => Some(r),
                (false, false, None) => Some(json!({"type": "array", "items": r})),
                (false, true, None) => {
                    let mut props = Map::new();
                    props.insert("rows".into(), json!({"type": "array", "items": r}));
                    props.insert("next".into(), json!({"type": ["string", "null"]}));
                    if *count {
                        props.insert("total".into(), json!({"type": "integer"}));
                    }
                    let required: Vec<&String> = props.keys().collect();
                    Some(json!({"type": "object", "required": required, "properties": props}))
                }
                (false, true, Some("rows")) => Some(json!({"type": "array", "items": r})),
                (false, true, Some("next")) => Some(json!({"type": ["string", "null"]})),
                (false, true, Some("total")) if *count => Some(json!({"type": "integer"})),
                _ => None,
            }
        }
        (
            NodeKind::Aggregate {
                entity,
                group_by,
                measures,
                ..
            },
            None,
        ) => {
            let e = spec.entities.get(entity)?;
            let mut props = Map::new();
            for g in group_by {
                let nullable = e.fields.get(g).is_some_and(|f| f.nullable);
                props.insert(g.clone(), column(e.column_type(g)?, nullable));
            }
            for (name, m) in measures {
                let s = match m.kind {
                    MeasureKind::Count | MeasureKind::Sum => json!({"type": "integer"}),
                    MeasureKind::Avg => json!({"type": ["number", "null"]}),
                    MeasureKind::Min | MeasureKind::Max => match &m.field {
                        Some(f) => column(e.column_type(f)?, true),
                        None => json!({}),
                    },
                };
                props.insert(name.clone(), s);
            }
            let required: Vec<&String> = props.keys().collect();
            let group = json!({"type": "object", "required": required, "properties": props});
            Some(if group_by.is_empty() {
                group
            } else {
                json!({"type": "array", "items": group})
            })
        }
        _ => None,
    }
}

/// Whether a schema as written says no more than "an object" or "a list"
/// (of objects): the shape can stand for it.
fn loose(s: &Value) -> bool {
    let Value::Object(m) = s else { return false };
    m.keys()
        .all(|k| matches!(k.as_str(), "type" | "description" | "title" | "items"))
        && m.get("items").is_none_or(loose)
}

/// The output schema of `tool` as the OpenAPI document shows it: the
/// whole value, or each property, that every `return` fills with the same
/// read or aggregate binding described by its shape (with the schema as
/// written, unless that said no more). An output schema that names no
/// properties (the default `{"type": "object"}`, or `true`) gets those the
/// `return`s fill so.
pub fn output(spec: &Spec, tool: &Tool) -> Value {
    let mut out = tool.output.clone();
    let nodes = super::nodes_with_ids(&tool.flow);
    let values: Vec<Option<&Template>> = nodes
        .iter()
        .filter_map(|(_, kind)| match kind {
            NodeKind::Return { value, .. } => Some(value.as_ref()),
            _ => None,
        })
        .collect();
    // The same binding in every `return`: `{"value": "order"}`.
    let whole: Vec<Option<&str>> = values
        .iter()
        .map(|v| match v {
            Some(Template::Expr(x)) => Some(x.src.trim()),
            _ => None,
        })
        .collect();
    if let Some(Some(src)) = whole.first().copied()
        && whole.iter().all(|s| *s == Some(src))
        && let Some(shape) = shape_of(spec, &nodes, src)
    {
        return described(&out, shape);
    }
    let objects: Vec<&sinew_core::model::NameMap<Template>> = values
        .iter()
        .filter_map(|v| match v {
            Some(Template::Object(m)) => Some(m),
            _ => None,
        })
        .collect();
    if objects.is_empty() || objects.len() != values.len() {
        return out;
    }
    let added = out.get("properties").is_none() && (out == Value::Bool(true) || loose(&out));
    if added {
        // What every `return` fills: keys of the first, in order.
        let mut shaped = Map::new();
        shaped.insert("type".into(), json!("object"));
        if let Some(d) = out.get("description") {
            shaped.insert("description".into(), d.clone());
        }
        let keys: Map<String, Value> = objects[0].keys().map(|k| (k.clone(), json!({}))).collect();
        shaped.insert("properties".into(), Value::Object(keys));
        out = Value::Object(shaped);
    }
    let Some(Value::Object(props)) = out.get_mut("properties") else {
        return out;
    };
    let mut unknown = Vec::new();
    for (key, written) in props.iter_mut() {
        let sources: Vec<Option<&str>> = objects
            .iter()
            .map(|m| match m.get(key) {
                Some(Template::Expr(x)) => Some(x.src.trim()),
                _ => None,
            })
            .collect();
        let shape = match sources.first().copied() {
            Some(Some(src)) if sources.iter().all(|s| *s == Some(src)) => {
                shape_of(spec, &nodes, src)
            }
            _ => None,
        };
        match shape {
            Some(shape) => *written = described(written, shape),
            // (A property added above that no binding fills says nothing.)
            None if added => unknown.push(key.clone()),
            None => {}
        }
    }
    for key in unknown {
        props.shift_remove(&key);
    }
    out
}

/// The shape of binding path `src` (`find`, `find.rows`), when a read or
/// aggregate node among `nodes` fixes it.
fn shape_of(spec: &Spec, nodes: &[(&str, &NodeKind)], src: &str) -> Option<Value> {
    let (root, member) = match src.split_once('.') {
        Some((r, m)) => (r, Some(m)),
        None => (src, None),
    };
    let (_, kind) = nodes.iter().find(|(id, _)| *id == root)?;
    binding(spec, kind, member)
}

/// A schema as written, described by `shape` too: the shape alone when the
/// schema said no more than "an object" or "a list" (or anything: `true`),
/// keeping its description; else both.
fn described(written: &Value, shape: Value) -> Value {
    if written == &Value::Bool(true) || loose(written) {
        let mut shape = shape;
        if let (Some(d), Value::Object(m)) = (written.get("description").cloned(), &mut shape) {
            m.insert("description".into(), d);
        }
        shape
    } else {
        json!({"allOf": [written.clone(), shape]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_schemas_are_the_ones_that_say_nothing_of_rows() {
        assert!(loose(&json!({"type": "object"})));
        assert!(loose(
            &json!({"type": "array", "items": {"type": "object"}})
        ));
        assert!(loose(
            &json!({"type": ["object", "null"], "description": "x"})
        ));
        assert!(!loose(&json!({"type": "object", "required": ["id"]})));
        assert!(!loose(
            &json!({"type": "array", "items": {"type": "object", "properties": {}}})
        ));
    }
}
