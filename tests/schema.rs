//! The JSON Schema of the format and the loader agree: every spec under
//! `specs/` validates against `specs/schema/spec.schema.json` and loads
//! without errors; format violations are rejected by both.

use serde_json::{Value, json};
use sinew_core::spec;
use sinew_tests::{root, specs_in};

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("specs/schema/spec.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::new(&schema).expect("the format's schema compiles")
}

#[test]
fn every_spec_validates_and_loads() {
    let v = validator();
    let specs: Vec<_> = specs_in("specs/examples")
        .into_iter()
        .chain(specs_in("specs/unsafe"))
        .collect();
    assert!(specs.len() >= 17);
    for path in specs {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = v
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not validate: {errors:?}",
            path.display()
        );
        let loaded = spec::load(&text);
        assert!(
            loaded.errors.is_empty(),
            "{} does not load: {:?}",
            path.display(),
            loaded.errors
        );
    }
}

/// The scenario corpus's inline specs (where format 0.2's constructs are
/// exercised) validate against the schema too.
#[test]
fn inline_specs_of_the_scenarios_validate() {
    let v = validator();
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("tests/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let scenario: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let Some(spec) = scenario.get("spec").filter(|s| s.is_object()) else {
            continue;
        };
        let errors: Vec<String> = v
            .iter_errors(spec)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        n += 1;
    }
    assert!(n >= 10, "only {n} inline specs");
}

fn shop() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("specs/examples/shop.json")).unwrap())
        .unwrap()
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    target
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .shift_remove(key);
}

const NODES: &str = "/tools/place_order/flow/nodes";

#[test]
fn format_violations_are_rejected_by_both() {
    let v = validator();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "unknown top-level key",
            Box::new(|s| set(s, "/entitys", json!({}))),
        ),
        (
            "unsupported version",
            Box::new(|s| set(s, "/sinew", json!("0.3"))),
        ),
        ("missing tools", Box::new(|s| remove(s, "/tools"))),
        (
            "missing flow",
            Box::new(|s| remove(s, "/tools/place_order/flow")),
        ),
        (
            "unknown node type",
            Box::new(|s| set(s, &format!("{NODES}/product/type"), json!("select"))),
        ),
        (
            "read with set",
            Box::new(|s| set(s, &format!("{NODES}/product/set"), json!({"stock": "1"}))),
        ),
        (
            "misspelled compensate",
            Box::new(|s| set(s, &format!("{NODES}/charge/compensat"), json!("refund"))),
        ),
        (
            "bad isolation",
            Box::new(|s| set(s, &format!("{NODES}/write/isolation"), json!("snapshot"))),
        ),
        (
            "bad method",
            Box::new(|s| set(s, "/tools/place_order/trigger/http/method", json!("FETCH"))),
        ),
        (
            "retry max 20",
            Box::new(|s| set(s, &format!("{NODES}/charge/retry/max"), json!(20))),
        ),
        (
            "fail status 200",
            Box::new(|s| set(s, &format!("{NODES}/declined/status"), json!(200))),
        ),
        (
            "node id with a dash",
            Box::new(|s| set(s, &format!("{NODES}/bad-id"), json!({"type": "return"}))),
        ),
        (
            "field type unknown",
            Box::new(|s| set(s, "/entities/Product/fields/sku/type", json!("varchar"))),
        ),
        (
            "limit zero",
            Box::new(|s| set(s, &format!("{NODES}/product/limit"), json!(0))),
        ),
        (
            "wrong type for one",
            Box::new(|s| set(s, &format!("{NODES}/product/one"), json!("yes"))),
        ),
        (
            "unknown policy type",
            Box::new(|s| set(s, "/policies/order_rate/type", json!("quota"))),
        ),
        (
            "unknown policy action",
            Box::new(|s| set(s, "/policies/order_rate/action", json!("deny"))),
        ),
        (
            "ack without reason",
            Box::new(|s| {
                set(
                    s,
                    "/acknowledgments",
                    json!([{"tool": "place_order", "signal": "missing-retry", "by": "x"}]),
                )
            }),
        ),
        (
            "reserved field",
            Box::new(|s| set(s, "/entities/Product/fields/id", json!({"type": "uuid"}))),
        ),
        (
            "trigger with two kinds",
            Box::new(|s| {
                set(
                    s,
                    "/tools/place_order/trigger/cron",
                    json!({"schedule": "* * * * *"}),
                )
            }),
        ),
        (
            "combinator as a field name",
            Box::new(|s| set(s, "/entities/Product/fields/or", json!({"type": "string"}))),
        ),
        (
            "unknown where operator",
            Box::new(|s| {
                set(
                    s,
                    &format!("{NODES}/product/where"),
                    json!({"sku": {"like": "'A%'"}}),
                )
            }),
        ),
        (
            "or that is not a list",
            Box::new(|s| {
                set(
                    s,
                    &format!("{NODES}/product/where"),
                    json!({"or": {"sku": "'A'"}}),
                )
            }),
        ),
        (
            "expression not a string",
            Box::new(|s| set(s, "/tools/place_order/idempotencyKey", json!(5))),
        ),
    ];
    for (name, mutate) in cases {
        let mut s = shop();
        mutate(&mut s);
        assert!(!v.is_valid(&s), "the schema accepts: {name}");
        let loaded = spec::load_value(s);
        assert!(!loaded.errors.is_empty(), "the loader accepts: {name}");
    }
}

#[test]
fn documented_extras_are_accepted_by_both() {
    let v = validator();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "x- keys and descriptions",
            Box::new(|s| {
                set(s, "/x-owner", json!("team"));
                set(
                    s,
                    "/tools/place_order/description",
                    json!("places an order"),
                );
                set(s, &format!("{NODES}/charge/x-note"), json!(1));
                set(
                    s,
                    "/entities/Product/fields/sku/description",
                    json!("stock keeping unit"),
                );
            }),
        ),
        (
            "condition alias and switch",
            Box::new(|s| {
                set(s, &format!("{NODES}/product/next"), json!("big"));
                set(
                    s,
                    &format!("{NODES}/big"),
                    json!({"type": "if", "condition": "input.quantity > 10", "then": "route", "else": "charge"}),
                );
                set(
                    s,
                    &format!("{NODES}/route"),
                    json!({"type": "switch", "cases": [{"when": "input.quantity > 50", "next": "charge"}], "default": "charge"}),
                );
            }),
        ),
        (
            "orderBy forms and where ops",
            Box::new(|s| {
                set(
                    s,
                    &format!("{NODES}/product/orderBy"),
                    json!(["sku desc", {"field": "name", "direction": "asc"}]),
                );
                set(
                    s,
                    &format!("{NODES}/product/where"),
                    json!({"id": "input.product", "stock": {"gte": "input.quantity", "lt": "1000000"}}),
                );
            }),
        ),
        (
            "bundle limits and compensates",
            Box::new(|s| {
                set(s, "/limits", json!({"maxRowsPerWrite": 50}));
                set(
                    s,
                    "/externals/payments/operations/refund/compensates",
                    json!("charge"),
                );
            }),
        ),
    ];
    for (name, mutate) in cases {
        let mut s = shop();
        mutate(&mut s);
        let errors: Vec<String> = v
            .iter_errors(&s)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "the schema rejects {name}: {errors:?}");
        let loaded = spec::load_value(s);
        assert!(
            loaded.errors.is_empty(),
            "the loader rejects {name}: {:?}",
            loaded.errors
        );
    }
}

/// What the loader accepts, the schema accepts too: `description`,
/// `title`, `$comment` and `x-` keys on a measure and an external's auth,
/// whole decimals where integers go (`3000.0`), one `orderBy` object,
/// `DESC` in capitals. Bounds past what the loader takes are refused by
/// both.
#[test]
fn what_the_loader_accepts_validates() {
    let v = validator();
    let spec = json!({"sinew": "0.2", "name": "extras",
     "cors": {"origins": ["https://a.example"], "description": "d"},
     "entities": {"Item": {"fields": {"n": {"type": "integer"}}, "indexes": [{"fields": ["n"]}]}},
     "externals": {"pay": {"kind": "http", "baseUrl": "https://api.example.com",
       "auth": {"bearer": {"secret": "PAY_KEY", "description": "d", "x-owner": "ops"}, "$comment": "x"},
       "operations": {"charge": {"method": "POST", "path": "/c"}}}},
     "tools": {"stats": {
       "trigger": {"http": {"method": "GET", "path": "/stats"}},
       "auth": {"roles": ["staff"]},
       "limits": {"timeoutMs": 3000.0},
       "flow": {"entry": "a", "nodes": {
         "a": {"type": "aggregate", "entity": "Item", "where": {"n": {"gt": 0}},
               "measures": {"c": {"count": "*", "description": "rows", "title": "Rows"}}, "next": "r"},
         "r": {"type": "read", "entity": "Item", "orderBy": {"field": "n", "direction": "desc"}, "limit": 5.0, "next": "s"},
         "s": {"type": "read", "entity": "Item", "orderBy": "n DESC", "limit": 5, "next": "d"},
         "d": {"type": "return", "value": {"c": "a.c", "rows": "size(r) + size(s)"}}}}}}});
    let errors: Vec<String> = v
        .iter_errors(&spec)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let loaded = spec::load(&spec.to_string());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    // Two auth kinds, or two measures in one: both refuse.
    for (pointer, value) in [
        (
            "/externals/pay/auth/header",
            json!({"name": "X-Key", "secret": "K"}),
        ),
        ("/tools/stats/flow/nodes/a/measures/c/sum", json!("n")),
        ("/tools/stats/limits/timeoutMs", json!(4_294_967_296u64)),
        ("/tools/stats/flow/nodes/r/limit", json!(4_294_967_296u64)),
    ] {
        let mut bad = spec.clone();
        set(&mut bad, pointer, value);
        assert!(!v.is_valid(&bad), "the schema accepts {pointer}");
        assert!(
            !spec::load(&bad.to_string()).errors.is_empty(),
            "the loader accepts {pointer}"
        );
    }
}
