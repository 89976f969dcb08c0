//! The OpenAPI 3.1 document of a spec: one operation per HTTP-triggered
//! tool, and every tool by name at `POST /tools/{name}`, with its input and
//! output schemas (JSON Schema 2020-12, which OpenAPI 3.1 uses as is), its
//! success statuses, the headers the server reads (`Idempotency-Key`, a
//! webhook's signature), the problem+json errors the server can answer for
//! it (from its auth, its policies and the nodes of its flow, the statuses
//! of its `fail` and `assert` nodes included), and the bearer-token
//! security scheme.

mod shapes;

use serde_json::{Map, Value, json};
use sinew_core::spec::{
    Flow, NodeKind, PolicyAction, PolicyKind, Spec, Tool, Trigger, WebhookScheme,
};
use std::collections::{BTreeMap, BTreeSet};

/// The longest `Idempotency-Key` the server accepts.
pub const MAX_KEY: usize = 255;

/// What the server accepts as an `Idempotency-Key`: 1 to [`MAX_KEY`]
/// visible ASCII characters (0x21–0x7E: no spaces, no control characters).
pub const KEY_PATTERN: &str = "^[\\x21-\\x7E]{1,255}$";

/// Whether `key` is an `Idempotency-Key` the server accepts
/// ([`KEY_PATTERN`]).
pub fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The path parameters of a route (`/orders/{id}` → `id`).
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Every node of a flow, transaction bodies included.
fn nodes(flow: &Flow) -> Vec<&NodeKind> {
    nodes_with_ids(flow).into_iter().map(|(_, n)| n).collect()
}

/// [`nodes`], each with its id.
fn nodes_with_ids(flow: &Flow) -> Vec<(&str, &NodeKind)> {
    let mut out = Vec::new();
    let mut stack = vec![flow];
    while let Some(f) = stack.pop() {
        for (id, n) in &f.nodes {
            out.push((id.as_str(), &n.kind));
            if let Some(body) = n.kind.body() {
                stack.push(body);
            }
        }
    }
    out
}

/// The statuses a tool's `return` nodes answer with (200 when none says).
fn success_statuses(tool: &Tool) -> BTreeSet<u16> {
    let mut out: BTreeSet<u16> = nodes(&tool.flow)
        .into_iter()
        .filter_map(|n| match n {
            NodeKind::Return { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        out.insert(200);
    }
    out
}

/// Why the server may answer each error status, the reasons of a status in
/// the order they were found (its description joins them).
#[derive(Default)]
struct Reasons(BTreeMap<u16, Vec<String>>);

impl Reasons {
    /// Adds `why` to the reasons for `status`, unless it is there already.
    fn add(&mut self, status: u16, why: impl Into<String>) {
        let why = why.into();
        let reasons = self.0.entry(status).or_default();
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    }
}

/// The error statuses the server can answer for a tool, each with why.
fn error_statuses(spec: &Spec, name: &str, tool: &Tool) -> BTreeMap<u16, Vec<String>> {
    let mut out = Reasons::default();
    let nodes = nodes(&tool.flow);
    request_errors(tool, &mut out);
    policy_errors(spec, name, &mut out);
    data_errors(spec, tool, &nodes, &mut out);
    limit_errors(tool, &mut out);
    flow_errors(&nodes, &mut out);
    server_errors(&mut out);
    out.0
}

/// The input, the `Idempotency-Key` header, the token, a webhook's
/// signature and the tool's `auth`.
fn request_errors(tool: &Tool, out: &mut Reasons) {
    out.add(
        400,
        "invalid JSON, or input that does not match the schema (the violations with their pointers)",
    );
    if tool.key_from_header() {
        out.add(
            400,
            format!(
                "no `Idempotency-Key` header (`idempotency_key_required`), or one that is not 1 to {MAX_KEY} visible ASCII characters (`invalid_idempotency_key`)"
            ),
        );
    }
    if let Trigger::Webhook { header, .. } = &tool.trigger {
        out.add(
            401,
            format!("the `{header}` signature is missing, does not match the body, or is too old"),
        );
    } else if tool.auth.public {
        out.add(401, "a token was sent and is not valid");
    } else {
        out.add(401, "no token, or one that is not valid");
    }
    if !tool.auth.roles.is_empty() {
        out.add(403, "the caller has none of the tool's roles");
    }
    if tool.auth.deny_when.is_some() {
        out.add(403, "`denyWhen` denies the caller");
    }
}

/// The blocking policies that apply to the tool `name`.
fn policy_errors(spec: &Spec, name: &str, out: &mut Reasons) {
    let applies =
        |tools: &Option<Vec<String>>| tools.as_ref().is_none_or(|t| t.iter().any(|t| t == name));
    for (policy, p) in &spec.policies {
        if p.action != PolicyAction::Block || !applies(&p.tools) {
            continue;
        }
        match &p.kind {
            PolicyKind::RateLimit {
                max_requests_per_minute,
            } => out.add(
                429,
                format!(
                    "policy `{policy}`: more than {max_requests_per_minute} requests a minute (`Retry-After` says when the next minute starts)"
                ),
            ),
            _ => out.add(403, format!("policy `{policy}` blocks the request")),
        }
    }
}

/// What the flow's reads, writes and transactions can run into.
fn data_errors(spec: &Spec, tool: &Tool, nodes: &[&NodeKind], out: &mut Reasons) {
    let (mut writes, mut finds, mut conflicts) = (false, false, false);
    for n in nodes {
        match n {
            NodeKind::Read { one: true, .. } => {
                finds = true;
                out.add(409, "more than one row matches where one was expected");
            }
            NodeKind::Create { entity, .. } => {
                writes = true;
                if tool.auth.public && spec.entities.get(entity).is_some_and(|e| e.owner.is_some())
                {
                    out.add(
                        401,
                        format!("a `{entity}` is owned: creating one needs a token"),
                    );
                }
            }
            NodeKind::Read { page: true, .. } => {
                out.add(
                    400,
                    "`after` is not a cursor this read gave (`invalid_cursor`)",
                );
            }
            NodeKind::Update { one, .. } => {
                (writes, finds) = (true, true);
                if *one {
                    out.add(409, "more than one row matches where one was expected");
                }
            }
            NodeKind::Transition {
                target: sinew_core::spec::Target::Id(_),
                ..
            } => {
                (writes, finds) = (true, true);
                out.add(409, "the row's status does not allow the transition");
            }
            // A transition of the rows a `where` matches skips the others.
            NodeKind::Transition { .. } => writes = true,
            NodeKind::Foreach { .. } => out.add(
                422,
                "a list is longer than a loop's `maxItems` (`too_many_items`)",
            ),
            NodeKind::SoftDelete {
                target: sinew_core::spec::Target::Where { .. },
                ..
            } => writes = true,
            NodeKind::SoftDelete { .. } | NodeKind::Delete { .. } => {
                (writes, finds) = (true, true);
            }
            _ => {}
        }
        // A row other rows name through a `restrict` reference stays.
        if let NodeKind::SoftDelete { entity, .. } | NodeKind::Delete { entity, .. } = n
            && spec.entities.values().any(|e| {
                e.fields.values().any(|f| {
                    f.entity.as_deref() == Some(entity.as_str())
                        && f.on_delete == sinew_core::spec::OnDelete::Restrict
                })
            })
        {
            out.add(
                409,
                "the row is still named by a `restrict` reference (`still_referenced`)",
            );
        }
        match n {
            NodeKind::Transaction { .. } => conflicts = true,
            NodeKind::Call { .. } => out.add(
                502,
                "an external service refused or failed (after compensation)",
            ),
            _ => {}
        }
    }
    if finds {
        out.add(404, "a row was not found or is not the caller's");
    }
    let sets_ref = nodes.iter().any(|n| match n {
        NodeKind::Create { entity, .. } | NodeKind::Update { entity, .. } => spec
            .entities
            .get(entity)
            .is_some_and(|e| e.fields.values().any(|f| f.entity.is_some())),
        _ => false,
    });
    if sets_ref {
        out.add(
            422,
            "a `ref` field names no row the caller can see (`unknown_reference`)",
        );
    }
    if writes {
        out.add(409, "a unique field's value is taken");
        out.add(422, "a written row breaks a field's rules or an invariant");
    }
    if writes || conflicts {
        out.add(409, "the data changed while the request ran (retry it)");
    }
}

/// The tool's `limits` and its idempotency key.
fn limit_errors(tool: &Tool, out: &mut Reasons) {
    let l = &tool.limits;
    if l.max_rows.is_some() || l.max_rows_read.is_some() || l.max_rows_written.is_some() {
        out.add(422, "more rows than the tool's limits allow");
    }
    if l.max_calls.is_some() {
        out.add(422, "more external calls than the tool's limit");
    }
    if tool.idempotency_key.is_some() {
        out.add(
            409,
            "a request with the same idempotency key is still running",
        );
        out.add(422, "the idempotency key was used with another input");
    }
}

/// The flow's own errors: the statuses and codes of its `fail` and
/// `assert` nodes.
fn flow_errors(nodes: &[&NodeKind], out: &mut Reasons) {
    let mut own: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    for n in nodes {
        if let NodeKind::Fail { status, code, .. } | NodeKind::Assert { status, code, .. } = n {
            own.entry(*status).or_default().insert(code);
        }
    }
    for (status, codes) in own {
        let codes: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        out.add(status, format!("the flow's own: {}", codes.join(", ")));
    }
}

/// What any request can meet: the server's limits and failures.
fn server_errors(out: &mut Reasons) {
    out.add(413, "the body is larger than the server's limit");
    out.add(415, "the body is not JSON");
    out.add(
        500,
        "a mistake in the spec or an internal error (no internals in the body)",
    );
    out.add(503, "the database is unavailable (retry later)");
    out.add(
        504,
        "the tool's deadline (`limits.timeoutMs`) passed; nothing was changed",
    );
}

/// The problem+json responses of a tool.
fn error_responses(spec: &Spec, name: &str, tool: &Tool, responses: &mut Map<String, Value>) {
    for (status, reasons) in error_statuses(spec, name, tool) {
        let mut r = json!({
            "description": reasons.join("; "),
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        });
        if status == 429 {
            r["headers"] = json!({"Retry-After": {
                "description": "seconds until the next rate window",
                "schema": {"type": "integer", "minimum": 1}
            }});
        }
        responses.insert(status.to_string(), r);
    }
}

/// The headers the server reads for a tool: `Idempotency-Key` (required
/// when the tool's key is the header, not offered otherwise) and a
/// webhook's signature.
fn header_params(tool: &Tool) -> Vec<Value> {
    let mut out = Vec::new();
    if tool.key_from_header() {
        out.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": true,
            "description": "The same key with the same input answers the stored response without running again (kept 24 hours); with another input 422, while the first runs 409.",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": KEY_PATTERN}
        }));
    }
    if let Trigger::Webhook { header, scheme, .. } = &tool.trigger {
        let (description, schema) = match scheme {
            WebhookScheme::HmacSha256 => (
                "HMAC-SHA256 of the body with the webhook's secret, in hex, optionally prefixed `sha256=`.".to_owned(),
                json!({"type": "string", "pattern": "^(sha256=)?[0-9A-Fa-f]{64}$"}),
            ),
            WebhookScheme::Github => (
                "`sha256=` and the HMAC-SHA256 of the body with the webhook's secret, in hex (GitHub's `X-Hub-Signature-256`).".to_owned(),
                json!({"type": "string", "pattern": "^sha256=[0-9A-Fa-f]{64}$"}),
            ),
            WebhookScheme::Stripe => (
                "`t=<Unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" with the webhook's secret>` (Stripe's `Stripe-Signature`); `t` must be within the trigger's tolerance of the server's clock.".to_owned(),
                json!({"type": "string"}),
            ),
        };
        out.push(json!({
            "name": header,
            "in": "header",
            "required": true,
            "description": description,
            "schema": schema
        }));
    }
    out
}

/// `schema` without the properties named `drop` (they come from the path).
fn without(schema: &Value, drop: &[&str]) -> Value {
    let mut schema = schema.clone();
    if drop.is_empty() {
        return schema;
    }
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.retain(|k, _| !drop.contains(&k.as_str()));
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|r| !r.as_str().is_some_and(|r| drop.contains(&r)));
        if required.is_empty()
            && let Value::Object(m) = &mut schema
        {
            m.remove("required");
        }
    }
    schema
}

/// Whether a missing (or empty) body is refused: the server reads it as
/// `{}` and validates that, so the body is required exactly when `{}` does
/// not match the schema.
fn empty_body_refused(schema: &Value) -> bool {
    jsonschema::draft202012::new(schema).map_or(true, |v| !v.is_valid(&json!({})))
}

fn request_body(schema: Value) -> Value {
    json!({
        "required": empty_body_refused(&schema),
        "content": {"application/json": {"schema": schema}}
    })
}

/// The first sentence of a description, for a summary.
fn summary(description: &str) -> String {
    let first = description
        .split_inclusive(". ")
        .next()
        .unwrap_or(description)
        .trim();
    let first = first.strip_suffix('.').unwrap_or(first);
    if first.chars().count() <= 120 {
        return first.to_owned();
    }
    let cut: String = first.chars().take(119).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(a, _)| a);
    format!("{cut}…")
}

/// A tool's responses: its success statuses with its output schema, then
/// its problem+json errors.
fn responses(spec: &Spec, name: &str, tool: &Tool) -> Value {
    let mut responses = Map::new();
    let output = shapes::output(spec, tool);
    for status in success_statuses(tool) {
        responses.insert(
            status.to_string(),
            json!({"description": "success", "content": {"application/json": {"schema": output}}}),
        );
    }
    error_responses(spec, name, tool, &mut responses);
    Value::Object(responses)
}

/// The path parameters of a route (`in_path`), each with its input
/// property's schema (text when the input has no such property), as the
/// server types them: with its `$ref`s followed and its `allOf`s merged.
fn path_parameters(tool: &Tool, in_path: &[&str]) -> Vec<Value> {
    let props = tool.input_shape.get("properties");
    in_path
        .iter()
        .map(|p| {
            let schema = props
                .and_then(|m| m.get(*p))
                .cloned()
                .unwrap_or(json!({"type": "string"}));
            json!({"name": p, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// The query parameters of a route without a body: the input's properties
/// that are not in the path (resolved, as for the path).
fn query_parameters(tool: &Tool, in_path: &[&str]) -> Vec<Value> {
    let mut params = Vec::new();
    if let Some(Value::Object(props)) = tool.input_shape.get("properties") {
        for (p, schema) in props {
            if in_path.contains(&p.as_str()) {
                continue;
            }
            let required = tool
                .input_shape
                .get("required")
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|x| x == p));
            params.push(json!({"name": p, "in": "query", "required": required, "schema": schema}));
        }
    }
    params
}

/// The operation of a tool at its own route (`method` in lowercase).
fn route_operation(
    spec: &Spec,
    name: &str,
    tool: &Tool,
    method: &str,
    path: &str,
) -> Map<String, Value> {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(name));
    let description = tool
        .description
        .as_deref()
        .or_else(|| tool.input.get("description").and_then(Value::as_str));
    if let Some(d) = description {
        op.insert("summary".into(), json!(summary(d)));
        op.insert("description".into(), json!(d));
    }
    let in_path = path_params(path);
    let mut params = path_parameters(tool, &in_path);
    if method == "get" || method == "delete" {
        params.extend(query_parameters(tool, &in_path));
    } else {
        // Path parameters join the input from the path, not the body.
        op.insert(
            "requestBody".into(),
            request_body(without(&tool.input, &in_path)),
        );
    }
    params.extend(header_params(tool));
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    op.insert("responses".into(), responses(spec, name, tool));
    if tool.auth.public || matches!(tool.trigger, Trigger::Webhook { .. }) {
        // (A webhook's signature is its authentication: a header parameter.)
        op.insert("security".into(), json!([]));
    }
    op
}

/// The operation of a tool by name, at `POST /tools/{name}`.
fn by_name_operation(spec: &Spec, name: &str, tool: &Tool) -> Map<String, Value> {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(format!("call_{name}")));
    op.insert("summary".into(), json!(format!("Call `{name}` by name")));
    if let Some(d) = &tool.description {
        op.insert("description".into(), json!(d));
    }
    let params = header_params(tool);
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    op.insert("requestBody".into(), request_body(tool.input.clone()));
    op.insert("responses".into(), responses(spec, name, tool));
    if tool.auth.public || matches!(tool.trigger, Trigger::Webhook { .. }) {
        // (A webhook's signature is its authentication: a header parameter.)
        op.insert("security".into(), json!([]));
    }
    op
}

/// Points the local `$ref`s of `schema` (`#`, `#/$defs/…`: relative to
/// the schema itself) at the same place in the copy of the schema at
/// `#/components/schemas/{name}`: in the document, `#` is the document.
/// Literal values (`const`, `enum`, `default`, `examples`) are left as
/// they are. Returns whether there was any.
fn rebase(schema: &mut Value, name: &str) -> bool {
    match schema {
        Value::Object(m) => {
            let mut any = false;
            if let Some(Value::String(target)) = m.get_mut("$ref")
                && let Some(pointer) = target
                    .strip_prefix('#')
                    .filter(|p| p.is_empty() || p.starts_with('/'))
            {
                *target = format!("#/components/schemas/{name}{pointer}");
                any = true;
            }
            for (k, v) in m.iter_mut() {
                if !matches!(k.as_str(), "const" | "enum" | "default" | "examples") {
                    any |= rebase(v, name);
                }
            }
            any
        }
        Value::Array(items) => items.iter_mut().fold(false, |any, v| rebase(v, name) | any),
        _ => false,
    }
}

/// `tool` with its input and output schemas as the document publishes
/// them: one with local `$ref`s (to its `$defs`) is also published whole
/// in `schemas`, as `{name}.input` or `{name}.output`, and its `$ref`s
/// point there, so that they resolve in the document.
fn published(name: &str, tool: &Tool, schemas: &mut Map<String, Value>) -> Tool {
    let mut tool = tool.clone();
    let input = format!("{name}.input");
    if rebase(&mut tool.input, &input) {
        // (What a resolved schema keeps of them: recursive ones.)
        rebase(&mut tool.input_shape, &input);
        schemas.insert(input, tool.input.clone());
    }
    let output = format!("{name}.output");
    if rebase(&mut tool.output, &output) {
        schemas.insert(output, tool.output.clone());
    }
    tool
}

/// The document; `version` is the bundle's hash.
pub fn document(spec: &Spec, version: &str) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut schemas = Map::new();
    let tools: Vec<(&String, Tool)> = spec
        .tools
        .iter()
        .filter(|(name, _)| !spec.broken_tools.contains(name))
        .map(|(name, tool)| (name, published(name, tool, &mut schemas)))
        .collect();
    let served = || tools.iter().map(|(name, tool)| (*name, tool));
    for (name, tool) in served() {
        let Some((method, path)) = tool.trigger.route() else {
            continue;
        };
        let method = method.to_ascii_lowercase();
        let op = route_operation(spec, name, tool, &method, path);
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(method, Value::Object(op));
        }
    }
    // Every tool by name, for agents and schedulers.
    for (name, tool) in served() {
        paths
            .entry(format!("/tools/{name}"))
            .or_insert_with(|| json!({"post": by_name_operation(spec, name, tool)}));
    }
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "instance": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": "the violations (a `pointer` and a `message` each), at most 10",
                    "items": {"type": "object"}
                },
                "errorCount": {
                    "type": "integer",
                    "description": "how many violations there are, when more than `errors` lists"
                },
                "committed": {
                    "type": "boolean",
                    "description": "true when some writes of this request committed before the failure (an error without it changed nothing)"
                }
            },
            "required": ["status", "title"]
        }),
    );
    // Each entity's stored row, which responses built of rows refer to.
    for (name, e) in &spec.entities {
        schemas.insert(shapes::row_name(name), shapes::row_schema(e));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": spec.name, "version": version},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
        "security": [{"bearer": []}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Spec {
        let text = std::fs::read_to_string(format!(
            "{}/../specs/examples/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let loaded = sinew_core::spec::load(&text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.spec
    }

    /// A webhook whose key comes from its input, with an assert in a
    /// transaction, and a route whose key is the header.
    const HOOKS: &str = r#"{
      "sinew": "0.1",
      "name": "hooks",
      "entities": {
        "Event": {"fields": {
          "ref": {"type": "string", "maxLength": 64, "unique": true},
          "kind": {"type": "string", "maxLength": 32}
        }}
      },
      "tools": {
        "receive": {
          "description": "A provider's event, recorded once. The provider's id is the key.",
          "trigger": {"webhook": {"path": "/hooks/provider", "secret": "HOOK_SECRET", "header": "X-Hook-Signature"}},
          "auth": {"public": true},
          "idempotencyKey": "input.ref",
          "input": {"type": "object", "required": ["ref", "kind"], "additionalProperties": false,
            "properties": {"ref": {"type": "string", "maxLength": 64}, "kind": {"type": "string", "maxLength": 32}}},
          "output": {"type": "object"},
          "flow": {"entry": "write", "nodes": {
            "write": {"type": "transaction", "next": "done", "body": {"entry": "known", "nodes": {
              "known": {"type": "assert", "that": "input.kind != 'gone'", "status": 410, "code": "kind_gone", "next": "save"},
              "save": {"type": "create", "entity": "Event", "values": {"ref": "input.ref", "kind": "input.kind"}}
            }}},
            "done": {"type": "return", "status": 202, "value": {"event": "save.id"}}
          }}
        },
        "rename": {
          "trigger": {"http": {"method": "POST", "path": "/events/{id}/kind"}},
          "auth": {"roles": ["staff"]},
          "idempotencyKey": "request.idempotencyKey",
          "input": {"type": "object", "required": ["id", "kind"], "additionalProperties": false,
            "properties": {"id": {"type": "string", "format": "uuid"}, "kind": {"type": "string", "maxLength": 32}}},
          "output": {"type": "object"},
          "flow": {"entry": "write", "nodes": {
            "write": {"type": "transaction", "next": "done", "body": {"entry": "change", "nodes": {
              "change": {"type": "update", "entity": "Event", "where": {"id": "input.id"}, "limit": 1, "one": true,
                "set": {"kind": "input.kind"}}
            }}},
            "done": {"type": "return", "value": {"ok": true}}
          }}
        }
      }
    }"#;

    fn hooks() -> Spec {
        let loaded = sinew_core::spec::load(HOOKS);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.spec
    }

    fn op<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "no {method} {path}");
        op
    }

    fn param<'a>(op: &'a Value, name: &str) -> Option<&'a Value> {
        op["parameters"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
    }

    fn statuses(op: &Value) -> Vec<&str> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// What OpenAPI 3.1 requires of the parts the document uses: unique
    /// operation ids; every path template's parameters declared `in: path`
    /// and required, and no other; parameters unique by name and place,
    /// each with a schema; responses keyed by a status or `default`, each
    /// with a description; every `$ref` resolving.
    fn assert_structurally_valid(doc: &Value) {
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with('/'), "{path}");
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                assert!(
                    [
                        "get", "put", "post", "delete", "options", "head", "patch", "trace"
                    ]
                    .contains(&method.as_str()),
                    "{at}"
                );
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                    "{at}"
                );
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                let mut seen = BTreeSet::new();
                for p in &params {
                    let (name, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
                    assert!(
                        ["path", "query", "header", "cookie"].contains(&place),
                        "{at}"
                    );
                    assert!(seen.insert((name, place)), "{at}: {name} twice");
                    assert!(p["schema"].is_object(), "{at}: {name}");
                    assert!(p["required"].is_boolean(), "{at}: {name}");
                    if place == "path" {
                        assert_eq!(p["required"], true, "{at}: {name}");
                        assert!(path_params(path).contains(&name), "{at}: {name}");
                    }
                    if place == "header" {
                        assert!(
                            !["accept", "content-type", "authorization"]
                                .contains(&name.to_ascii_lowercase().as_str()),
                            "{at}: {name}"
                        );
                    }
                }
                for p in path_params(path) {
                    assert!(seen.contains(&(p, "path")), "{at}: `{p}` undeclared");
                }
                if let Some(body) = op.get("requestBody") {
                    assert!(body["required"].is_boolean(), "{at}");
                    assert!(
                        body["content"]["application/json"]["schema"].is_object(),
                        "{at}"
                    );
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{at}");
                for (status, r) in responses {
                    assert!(
                        status == "default"
                            || (status.len() == 3
                                && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))),
                        "{at}: {status}"
                    );
                    assert!(
                        r["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{at}: {status}"
                    );
                }
            }
        }
        // Every `$ref`, at any depth, resolves in the document.
        let mut stack = vec![doc];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(target)) = m.get("$ref") {
                        let pointer = target.strip_prefix('#').unwrap();
                        assert!(doc.pointer(pointer).is_some(), "{target}");
                    }
                    stack.extend(m.values());
                }
                Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
    }

    #[test]
    fn every_document_is_structurally_valid() {
        for spec in [
            example("shop"),
            example("bank"),
            example("booking"),
            example("clinic"),
            hooks(),
        ] {
            assert_structurally_valid(&document(&spec, "v"));
        }
    }

    /// Schemas with local `$defs`: every `$ref` resolves in the document
    /// (to the schema published whole under `components`), and path and
    /// query parameters are typed as the server types them, through a
    /// `$ref` or an `allOf` (they once were `{"$ref": "#/$defs/num"}`,
    /// resolving against the document's root, where there is no `$defs`).
    #[test]
    fn schemas_with_local_definitions_resolve_in_the_document() {
        let loaded = sinew_core::spec::load(
            r##"{
          "sinew": "0.2",
          "name": "defs",
          "entities": {"Item": {"fields": {"price": {"type": "integer"}}}},
          "tools": {
            "quote": {
              "trigger": {"http": {"method": "GET", "path": "/quotes/{n}"}},
              "auth": {"public": true},
              "input": {"type": "object", "required": ["n", "cur"], "additionalProperties": false,
                "properties": {
                  "n": {"$ref": "#/$defs/num"},
                  "cur": {"allOf": [{"$ref": "#/$defs/code"}, {"maxLength": 3}]}},
                "$defs": {"num": {"type": "integer", "minimum": 1}, "code": {"type": "string"}}},
              "output": {"type": "object", "properties": {"money": {"$ref": "#/$defs/money"}},
                "$defs": {"money": {"type": "object", "properties": {"amount": {"type": "integer"}, "next": {"$ref": "#/$defs/money"}}}}},
              "flow": {"entry": "done", "nodes": {"done": {"type": "return", "value": {"money": {"amount": "input.n"}}}}}
            },
            "price": {
              "trigger": {"http": {"method": "POST", "path": "/items/{id}/price"}},
              "auth": {"public": true},
              "idempotencyKey": "request.idempotencyKey",
              "input": {"type": "object", "required": ["id", "price"], "additionalProperties": false,
                "properties": {"id": {"allOf": [{"type": "string", "format": "uuid"}]}, "price": {"$ref": "#/$defs/cents"}},
                "$defs": {"cents": {"type": "integer", "minimum": 0}}},
              "flow": {"entry": "w", "nodes": {
                "w": {"type": "transaction", "next": "done", "body": {"entry": "u", "nodes": {
                  "u": {"type": "update", "entity": "Item", "where": {"id": "input.id"}, "limit": 1, "one": true,
                    "set": {"price": "input.price"}}}}},
                "done": {"type": "return", "value": {"ok": true}}}}
            }
          }
        }"##,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let doc = document(&loaded.spec, "v");
        assert_structurally_valid(&doc);
        let quote = op(&doc, "/quotes/{n}", "get");
        assert_eq!(
            param(quote, "n").unwrap()["schema"],
            json!({"type": "integer", "minimum": 1})
        );
        assert_eq!(
            param(quote, "cur").unwrap()["schema"],
            json!({"type": "string", "maxLength": 3})
        );
        let money = &quote["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
            ["money"];
        assert_eq!(
            money,
            &json!({"$ref": "#/components/schemas/quote.output/$defs/money"})
        );
        let price = op(&doc, "/items/{id}/price", "post");
        assert_eq!(
            param(price, "id").unwrap()["schema"],
            json!({"type": "string", "format": "uuid"})
        );
        assert_eq!(
            price["requestBody"]["content"]["application/json"]["schema"]["properties"]["price"],
            json!({"$ref": "#/components/schemas/price.input/$defs/cents"})
        );
        let by_name = op(&doc, "/tools/price", "post");
        assert_eq!(
            by_name["requestBody"]["content"]["application/json"]["schema"]["properties"]["price"]
                ["$ref"],
            "#/components/schemas/price.input/$defs/cents"
        );
    }

    /// An output schema that names no properties (the default, or `true`)
    /// is described by the shapes the `return`s hand out too: the row a
    /// read gives as the whole value, the rows under a key (the row schema
    /// was once published but not referenced).
    #[test]
    fn an_open_output_schema_is_described_by_its_shapes() {
        let loaded = sinew_core::spec::load(
            r##"{
          "sinew": "0.2",
          "name": "open",
          "entities": {"Item": {"fields": {"label": {"type": "string"}}}},
          "tools": {
            "get_item": {
              "trigger": {"http": {"method": "GET", "path": "/items/{id}"}},
              "auth": {"public": true},
              "input": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "format": "uuid"}}},
              "flow": {"entry": "item", "nodes": {
                "item": {"type": "read", "entity": "Item", "where": {"id": "input.id"}, "one": true, "next": "done"},
                "done": {"type": "return", "value": "item"}}}
            },
            "list_items": {
              "trigger": {"http": {"method": "GET", "path": "/items"}},
              "auth": {"public": true},
              "output": true,
              "flow": {"entry": "r", "nodes": {
                "r": {"type": "read", "entity": "Item", "limit": 10, "orderBy": "label", "next": "done"},
                "done": {"type": "return", "value": {"items": "r", "count": "size(r)"}}}}
            }
          }
        }"##,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let doc = document(&loaded.spec, "v");
        assert_structurally_valid(&doc);
        let schema = |path: &str| {
            op(&doc, path, "get")["responses"]["200"]["content"]["application/json"]["schema"]
                .clone()
        };
        let row = json!({"$ref": "#/components/schemas/ItemRow"});
        assert_eq!(schema("/items/{id}"), row);
        assert_eq!(
            schema("/items"),
            json!({"type": "object", "properties": {"items": {"type": "array", "items": row}}})
        );
    }

    /// A response built of rows says what they are: the page and its
    /// embedded rows, a list of rows with a nested include, the groups of
    /// an aggregate; the output schema as written still holds.
    #[test]
    fn paged_included_and_aggregated_shapes_are_described() {
        let doc = document(&example("clinic"), "v");
        let schema = |path: &str, method: &str| {
            op(&doc, path, method)["responses"]["200"]["content"]["application/json"]["schema"]
                .clone()
        };
        let rows = |name: &str| json!({"$ref": format!("#/components/schemas/{name}Row")});
        let list = schema("/appointments", "get");
        let appts = &list["properties"]["appointments"]["allOf"];
        assert_eq!(appts[0]["items"]["required"][0], "id", "as written: {list}");
        let item = &appts[1]["items"];
        assert_eq!(item["allOf"][0], rows("Appointment"), "{list}");
        assert_eq!(
            item["properties"]["therapist_row"]["anyOf"],
            json!([rows("Therapist"), {"type": "null"}])
        );
        assert_eq!(
            item["properties"]["invoices"],
            json!({"type": "array", "items": rows("Invoice")})
        );
        assert_eq!(
            list["properties"]["next"],
            json!({"type": ["string", "null"]}),
            "written, kept"
        );
        // A loose `{"type": "array", "items": {"type": "object"}}` becomes
        // the rows, two levels deep.
        let invoices = schema("/invoices", "get");
        let item = &invoices["properties"]["invoices"]["items"];
        assert_eq!(item["allOf"][0], rows("Invoice"), "{invoices}");
        let appt = &item["properties"]["appointment_row"]["anyOf"][0];
        assert_eq!(appt["allOf"][0], rows("Appointment"));
        assert_eq!(
            appt["properties"]["therapist_row"]["anyOf"][0],
            rows("Therapist")
        );
        let stats = schema("/stats/therapists", "get");
        let group = &stats["properties"]["therapists"]["items"];
        assert_eq!(
            group["properties"]["therapist"]["format"], "uuid",
            "{stats}"
        );
        assert_eq!(
            group["properties"]["mean"]["type"],
            json!(["number", "null"])
        );
        assert_eq!(
            stats["properties"]["overall"]["properties"]["minutes"]["type"],
            "integer"
        );
        let row = &doc["components"]["schemas"]["AppointmentRow"];
        assert_eq!(
            row["properties"]["status"]["enum"],
            json!(["requested", "confirmed", "completed", "cancelled"])
        );
        assert_eq!(
            row["properties"]["deleted_at"]["type"],
            json!(["string", "null"])
        );
    }

    #[test]
    fn path_parameters_are_not_body_properties() {
        let doc = document(&example("shop"), "v");
        let restock = op(&doc, "/products/{id}/restock", "post");
        let body = &restock["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["required"], json!(["quantity"]), "{body}");
        assert!(body["properties"].get("id").is_none(), "{body}");
        assert_eq!(param(restock, "id").unwrap()["in"], "path");
        // By name, there is no path: `id` is the body's.
        let by_name = op(&doc, "/tools/restock", "post");
        let body = &by_name["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["required"], json!(["id", "quantity"]));
    }

    /// The server reads a missing body as `{}`: the body is required
    /// exactly when `{}` is refused (400), as the document says.
    #[test]
    fn a_body_is_required_when_an_empty_one_is_refused() {
        let doc = document(&example("shop"), "v");
        let required = |path: &str| op(&doc, path, "post")["requestBody"]["required"].clone();
        assert_eq!(required("/orders"), true);
        assert_eq!(required("/products/{id}/restock"), true);
        // `id` comes from the path: nothing else is required.
        assert_eq!(required("/orders/{id}/cancel"), false);
        assert_eq!(required("/tools/cancel_order"), true);
        let doc = document(&example("booking"), "v");
        assert_eq!(
            op(&doc, "/holds/expire", "post")["requestBody"]["required"],
            false
        );
    }

    #[test]
    fn every_error_the_server_answers_is_documented() {
        let doc = document(&example("shop"), "v");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let s = statuses(op);
                for status in ["400", "401", "413", "415", "500", "503", "504"] {
                    assert!(s.contains(&status), "{method} {path}: {status} in {s:?}");
                }
                for status in s.iter().filter(|s| s.starts_with(['4', '5'])) {
                    assert!(
                        op["responses"][status]["content"]["application/problem+json"].is_object(),
                        "{method} {path}: {status}"
                    );
                }
            }
        }
        // `fail` statuses: 402 and 409 of place_order's flow.
        let place = op(&doc, "/orders", "post");
        assert!(statuses(place).contains(&"402"), "{:?}", statuses(place));
        let d = place["responses"]["402"]["description"].as_str().unwrap();
        assert!(d.contains("`payment_declined`"), "{d}");
        assert!(
            place["responses"]["409"]["description"]
                .as_str()
                .unwrap()
                .contains("`out_of_stock`")
        );
        // An external call: 502. Roles: 403. Its custom policy: 403 too.
        assert!(statuses(place).contains(&"502"));
        assert!(
            place["responses"]["403"]["description"]
                .as_str()
                .unwrap()
                .contains("bulk_orders_need_staff")
        );
        // A public read of a list: no 403, 404, 409, 429 or 502; 422 only
        // for its row limit.
        let list = op(&doc, "/products", "get");
        for status in ["403", "404", "409", "429", "502"] {
            assert!(!statuses(list).contains(&status), "{status}");
        }
        assert_eq!(
            list["responses"]["422"]["description"],
            "more rows than the tool's limits allow"
        );
        // A `one` read: 404.
        assert!(statuses(op(&doc, "/orders/{id}", "get")).contains(&"404"));
        // Booking: an `assert` 410 in a transaction, a rate limit (429 with
        // Retry-After).
        let doc = document(&example("booking"), "v");
        let confirm = op(&doc, "/holds/{id}/confirm", "post");
        assert!(
            confirm["responses"]["410"]["description"]
                .as_str()
                .unwrap()
                .contains("`hold_expired`")
        );
        let hold = op(&doc, "/holds", "post");
        assert!(hold["responses"]["429"]["headers"]["Retry-After"].is_object());
        assert!(!statuses(op(&doc, "/rooms", "get")).contains(&"429"));
        // Bank: the 422s and the 404 of transfer's asserts, in a transaction.
        let doc = document(&example("bank"), "v");
        let transfer = op(&doc, "/transfers", "post");
        let d = transfer["responses"]["422"]["description"]
            .as_str()
            .unwrap();
        assert!(
            d.contains("`insufficient_funds`") && d.contains("`same_account`"),
            "{d}"
        );
        assert!(
            transfer["responses"]["404"]["description"]
                .as_str()
                .unwrap()
                .contains("`account_not_found`")
        );
        // The webhook's 410 assert, in a transaction, and its signature's 401.
        let doc = document(&hooks(), "v");
        let receive = op(&doc, "/hooks/provider", "post");
        assert!(
            receive["responses"]["410"]["description"]
                .as_str()
                .unwrap()
                .contains("`kind_gone`")
        );
        assert!(
            receive["responses"]["401"]["description"]
                .as_str()
                .unwrap()
                .contains("X-Hook-Signature")
        );
        assert!(statuses(receive).contains(&"202"));
        // An update by id: 404 and 409.
        let rename = op(&doc, "/events/{id}/kind", "post");
        assert!(statuses(rename).contains(&"404") && statuses(rename).contains(&"409"));
    }

    #[test]
    fn tool_descriptions_are_used() {
        let doc = document(&example("shop"), "v");
        let create = op(&doc, "/products", "post");
        assert_eq!(
            create["description"],
            "Staff add a product to the catalogue; the sku must be new."
        );
        assert_eq!(
            create["summary"],
            "Staff add a product to the catalogue; the sku must be new"
        );
        let by_name = op(&doc, "/tools/create_product", "post");
        assert_eq!(by_name["description"], create["description"]);
        let doc = document(&hooks(), "v");
        assert_eq!(
            op(&doc, "/hooks/provider", "post")["summary"],
            "A provider's event, recorded once"
        );
        assert!(
            op(&doc, "/events/{id}/kind", "post")
                .get("summary")
                .is_none()
        );
        let long = summary(&"word ".repeat(60));
        assert!(
            long.chars().count() <= 120 && long.ends_with("word…"),
            "{long}"
        );
    }

    #[test]
    fn a_webhook_documents_its_signature_and_no_key_from_input() {
        let doc = document(&hooks(), "v");
        for path in ["/hooks/provider", "/tools/receive"] {
            let receive = op(&doc, path, "post");
            let sig = param(receive, "X-Hook-Signature").expect("the signature header");
            assert_eq!(sig["in"], "header");
            assert_eq!(sig["required"], true);
            // The description says the scheme, never a setting's name.
            let says = sig["description"].as_str().unwrap();
            assert!(
                says.contains("HMAC-SHA256") && !says.contains("HOOK_SECRET"),
                "{says}"
            );
            // The signature is the authentication: no bearer token.
            assert_eq!(receive["security"], json!([]), "{path}");
            // Its key is the event's `ref`: no header to offer.
            assert!(param(receive, "Idempotency-Key").is_none(), "{path}");
        }
    }

    #[test]
    fn the_idempotency_key_header_is_required_and_says_what_is_accepted() {
        let doc = document(&example("shop"), "v");
        for (path, method) in [
            ("/products", "post"),
            ("/orders/{id}/cancel", "post"),
            ("/tools/place_order", "post"),
        ] {
            let key = param(op(&doc, path, method), "Idempotency-Key").expect(path);
            assert_eq!(key["in"], "header");
            assert_eq!(key["required"], true, "{path}");
            assert_eq!(key["schema"]["pattern"], KEY_PATTERN);
            assert_eq!(key["schema"]["maxLength"], 255);
        }
        // Reads have no key.
        assert!(param(op(&doc, "/orders/{id}", "get"), "Idempotency-Key").is_none());
        // The pattern and the server's check agree.
        let schema = json!({"type": "string", "pattern": KEY_PATTERN});
        let v = jsonschema::draft202012::new(&schema).unwrap();
        let long = "k".repeat(255);
        let too_long = "k".repeat(256);
        for key in [
            "a",
            "order-1",
            "~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
            long.as_str(),
        ] {
            assert!(valid_key(key.as_bytes()), "{key}");
            assert!(v.is_valid(&json!(key)), "{key}");
        }
        for key in ["", "a b", " a", "a\tb", "é", "a\u{7f}", too_long.as_str()] {
            assert!(!valid_key(key.as_bytes()), "{key:?}");
            assert!(!v.is_valid(&json!(key)), "{key:?}");
        }
    }

    /// A delete of a row other rows name through a `restrict` reference
    /// lists its 409 `still_referenced`; one no reference names does not.
    #[test]
    fn a_restricted_delete_says_still_referenced() {
        let text = r#"{"sinew": "0.2", "name": "refs",
          "entities": {
            "Ticket": {"fields": {"title": {"type": "string"}}},
            "Comment": {"fields": {"ticket": {"type": "ref", "entity": "Ticket"}}}},
          "tools": {
            "close": {"trigger": {"http": {"method": "DELETE", "path": "/tickets/{id}"}},
              "auth": {"roles": ["staff"]},
              "input": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
              "output": true,
              "flow": {"entry": "t", "nodes": {
                "t": {"type": "transaction", "body": {"entry": "d", "nodes": {
                  "d": {"type": "soft_delete", "entity": "Ticket", "id": "input.id"}}}, "next": "r"},
                "r": {"type": "return", "value": {}}}}},
            "drop": {"trigger": {"http": {"method": "DELETE", "path": "/comments/{id}"}},
              "auth": {"roles": ["staff"]},
              "input": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
              "output": true,
              "flow": {"entry": "t", "nodes": {
                "t": {"type": "transaction", "body": {"entry": "d", "nodes": {
                  "d": {"type": "soft_delete", "entity": "Comment", "id": "input.id"}}}, "next": "r"},
                "r": {"type": "return", "value": {}}}}}}}"#;
        let loaded = sinew_core::spec::load(text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let doc = document(&loaded.spec, "v");
        let said = |path: &str| {
            op(&doc, path, "delete")["responses"]["409"]["description"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            said("/tickets/{id}").contains("`still_referenced`"),
            "{}",
            said("/tickets/{id}")
        );
        assert!(
            !said("/comments/{id}").contains("`still_referenced`"),
            "{}",
            said("/comments/{id}")
        );
    }
}
