//! The OpenAPI 3.1 document of a spec: one operation per HTTP-triggered
//! tool, with its input and output schemas (JSON Schema 2020-12, which
//! OpenAPI 3.1 uses as is), its success statuses, the problem+json errors
//! the contract can answer, and the bearer-token security scheme.

use serde_json::{Map, Value, json};
use sinew_core::spec::{NodeKind, Spec, Tool};
use std::collections::BTreeSet;

/// The path parameters of a route (`/orders/{id}` → `id`).
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// The statuses a tool's `return` nodes answer with (200 when none says).
fn success_statuses(tool: &Tool) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for id in tool.flow.ids() {
        if let Some(NodeKind::Return { status, .. }) = tool.flow.find(id).map(|n| &n.kind) {
            out.insert(*status);
        }
    }
    if out.is_empty() {
        out.insert(200);
    }
    out
}

fn problem_ref(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The document; `version` is the bundle's hash.
pub fn document(spec: &Spec, version: &str) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (name, tool) in &spec.tools {
        let Some((method, path)) = tool.trigger.route() else {
            continue;
        };
        let method = method.to_ascii_lowercase();
        let mut op = Map::new();
        op.insert("operationId".into(), json!(name));
        if let Some(d) = tool.input.get("description").and_then(Value::as_str) {
            op.insert("description".into(), json!(d));
        }
        let props = tool.input.get("properties");
        let params: Vec<Value> = path_params(path)
            .into_iter()
            .map(|p| {
                let schema = props
                    .and_then(|m| m.get(p))
                    .cloned()
                    .unwrap_or(json!({"type": "string"}));
                json!({"name": p, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if method == "get" || method == "delete" {
            if let Some(Value::Object(props)) = props {
                let mut query = Vec::new();
                for (p, schema) in props {
                    if path_params(path).contains(&p.as_str()) {
                        continue;
                    }
                    let required = tool
                        .input
                        .get("required")
                        .and_then(Value::as_array)
                        .is_some_and(|r| r.iter().any(|x| x == p));
                    query.push(
                        json!({"name": p, "in": "query", "required": required, "schema": schema}),
                    );
                }
                if !query.is_empty() {
                    let all = op.entry("parameters").or_insert_with(|| json!([]));
                    if let Value::Array(a) = all {
                        a.extend(query);
                    }
                }
            }
        } else {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": tool.input}}}),
            );
        }
        let mut responses = Map::new();
        for status in success_statuses(tool) {
            responses.insert(
                status.to_string(),
                json!({"description": "success", "content": {"application/json": {"schema": tool.output}}}),
            );
        }
        for (status, what) in [
            (
                "400",
                "invalid JSON or input (with the violations and their pointers)",
            ),
            ("401", "missing or invalid token"),
            ("403", "role or policy denied"),
            ("404", "a row was not found or is not the caller's"),
            (
                "409",
                "transition not allowed, concurrent update, or idempotency key in flight",
            ),
            ("413", "body too large"),
            ("415", "the body is not JSON"),
            (
                "422",
                "invariant violated, or idempotency key reused with other input",
            ),
            ("429", "rate limit"),
            ("502", "an external service failed (after compensation)"),
            ("504", "deadline exceeded; nothing was changed"),
        ] {
            responses.insert(status.into(), problem_ref(what));
        }
        op.insert("responses".into(), Value::Object(responses));
        if tool.auth.public {
            op.insert("security".into(), json!([]));
        }
        if tool.idempotency_key.is_some() {
            let header = json!({"name": "Idempotency-Key", "in": "header", "required": false,
                "schema": {"type": "string", "maxLength": 255}});
            let all = op.entry("parameters").or_insert_with(|| json!([]));
            if let Value::Array(a) = all {
                a.push(header);
            }
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(method, Value::Object(op));
        }
    }
    // Every tool by name, for agents and schedulers.
    for (name, tool) in &spec.tools {
        let mut responses = Map::new();
        for status in success_statuses(tool) {
            responses.insert(
                status.to_string(),
                json!({"description": "success", "content": {"application/json": {"schema": tool.output}}}),
            );
        }
        responses.insert(
            "default".into(),
            problem_ref("an error (RFC 9457 problem details)"),
        );
        let mut op = json!({
            "operationId": format!("call_{name}"),
            "summary": format!("Call `{name}` by name"),
            "requestBody": {"required": true, "content": {"application/json": {"schema": tool.input}}},
            "responses": responses,
        });
        if tool.auth.public
            && let Value::Object(m) = &mut op
        {
            m.insert("security".into(), json!([]));
        }
        paths
            .entry(format!("/tools/{name}"))
            .or_insert_with(|| json!({"post": op}));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": spec.name, "version": version},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "instance": {"type": "string"},
                        "errors": {"type": "array"}
                    },
                    "required": ["status", "title"]
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
        "security": [{"bearer": []}]
    })
}
