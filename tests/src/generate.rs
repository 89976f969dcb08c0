//! A generator of large, valid, Green specs: a flow of about `n` nodes made
//! of segments (a read, a branch, a transaction with a nested transaction
//! on one side, a `let` on the other, a join), for benchmarks and scaling
//! tests.

use serde_json::{Map, Value, json};

/// Nodes per segment.
pub const SEGMENT: usize = 9;

/// A spec with one tool whose flow has about `n` nodes (at least one
/// segment plus the final `return`).
pub fn large_spec(n: usize) -> Value {
    json!({
        "sinew": "0.1",
        "name": format!("generated_{n}"),
        "roles": ["clerk"],
        "entities": entities(),
        "tools": {"big": tool(n)},
    })
}

/// A spec with `tools` tools, each a small Green flow.
pub fn many_tools(tools: usize) -> Value {
    let mut map = Map::new();
    for i in 0..tools {
        let mut t = tool(SEGMENT);
        t["trigger"] = json!({"http": {"method": "POST", "path": format!("/t{i}")}});
        map.insert(format!("tool_{i}"), t);
    }
    json!({"sinew": "0.1", "name": format!("tools_{tools}"), "roles": ["clerk"], "entities": entities(), "tools": map})
}

fn entities() -> Value {
    json!({
        "Item": {
            "fields": {"sku": {"type": "string", "unique": true}, "stock": {"type": "integer"}},
            "invariants": {"stock_never_negative": "row.stock >= 0"}
        },
        "Log": {"fields": {"item": {"type": "ref", "entity": "Item"}, "n": {"type": "integer"}}}
    })
}

fn tool(n: usize) -> Value {
    let segments = (n / SEGMENT).max(1);
    let mut nodes = Map::new();
    for i in 0..segments {
        let next = if i + 1 == segments {
            "done".to_string()
        } else {
            format!("r{}", i + 1)
        };
        nodes.insert(format!("r{i}"), json!({"type": "read", "entity": "Item", "where": {"id": "input.id"}, "one": true, "next": format!("c{i}")}));
        nodes.insert(format!("c{i}"), json!({"type": "if", "if": format!("r{i}.stock > {i}"), "then": format!("t{i}"), "else": format!("l{i}")}));
        nodes.insert(format!("t{i}"), json!({
            "type": "transaction",
            "body": {"entry": format!("u{i}"), "nodes": {
                format!("u{i}"): {"type": "update", "entity": "Item", "where": {"id": format!("r{i}.id")}, "one": true,
                                  "set": {"stock": "row.stock - 1"}, "next": format!("k{i}")},
                format!("k{i}"): {"type": "create", "entity": "Log", "values": {"item": format!("r{i}.id"), "n": i}, "next": format!("n{i}")},
                format!("n{i}"): {"type": "transaction", "body": {"entry": format!("m{i}"), "nodes": {
                    format!("m{i}"): {"type": "create", "entity": "Log", "values": {"item": format!("u{i}.id"), "n": format!("k{i}.n + 1")}}
                }}}
            }},
            "next": format!("j{i}")
        }));
        nodes.insert(format!("l{i}"), json!({"type": "let", "values": {"x": format!("r{i}.stock + 1")}, "next": format!("j{i}")}));
        nodes.insert(
            format!("j{i}"),
            json!({"type": "let", "values": {"seen": format!("r{i}.sku")}, "next": next}),
        );
    }
    nodes.insert(
        "done".into(),
        json!({"type": "return", "value": {"ok": "true"}}),
    );
    json!({
        "trigger": {"http": {"method": "POST", "path": "/run"}},
        "auth": {"roles": ["clerk"]},
        "idempotencyKey": "request.idempotencyKey",
        "input": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
        "flow": {"entry": "r0", "nodes": nodes}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_specs_are_green() {
        for n in [1, 100, 1000] {
            let text = serde_json::to_string(&large_spec(n)).unwrap();
            let report = sinew_core::risk::check(&text);
            assert!(report.errors.is_empty(), "{:?}", report.errors.first());
            assert_eq!(
                report.level,
                sinew_core::risk::Level::Green,
                "{}",
                report.to_json()
            );
        }
        let report = sinew_core::risk::check(&many_tools(20).to_string());
        assert_eq!(
            report.level,
            sinew_core::risk::Level::Green,
            "{:?}",
            report.errors.first()
        );
    }
}
