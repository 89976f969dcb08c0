//! Spec errors and warnings: one test per diagnostic code.
//!
//! Every test starts from a small valid spec ([`base`]), breaks one thing,
//! loads it, and checks the exact code and JSON Pointer of what the loader
//! reports, that the message follows the house style (lowercase first, no
//! final period), that there is a help line, and where it applies the "did
//! you mean" in that help. Loading (and judging) must never panic.

use serde_json::{Value, json};
use sinew_core::diag::Diagnostic;
use sinew_core::risk::{self, Level};
use sinew_core::spec::{self, Loaded};

const GET: &str = "/tools/get_product/flow/nodes";
const PLACE: &str = "/tools/place_order/flow/nodes";
const BODY: &str = "/tools/place_order/flow/nodes/save/body/nodes";

/// A small valid spec: two entities (one with a status machine), an
/// external, and two tools (a read with `onError`, and a write in a
/// transaction followed by a call). It is Green.
fn base() -> Value {
    json!({
      "sinew": "0.1",
      "name": "base",
      "roles": ["customer", "staff"],
      "entities": {
        "Product": {
          "fields": {
            "sku": {"type": "string", "unique": true},
            "name": {"type": "string"},
            "price": {"type": "integer"},
            "stock": {"type": "integer"}
          },
          "invariants": {"stock_ok": "row.stock >= 0"}
        },
        "Order": {
          "fields": {
            "product": {"type": "ref", "entity": "Product"},
            "quantity": {"type": "integer"}
          },
          "status": {
            "initial": "pending",
            "transitions": {"pay": {"from": ["pending"], "to": "paid"}}
          }
        }
      },
      "externals": {
        "mailer": {"kind": "email", "operations": {"send": {}}}
      },
      "tools": {
        "get_product": {
          "trigger": {"http": {"method": "GET", "path": "/products/{id}"}},
          "auth": {"roles": ["customer"]},
          "input": {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": false
          },
          "flow": {
            "entry": "product",
            "nodes": {
              "product": {
                "type": "read", "entity": "Product", "where": {"id": "input.id"},
                "one": true, "next": "done", "onError": "missing"
              },
              "missing": {"type": "fail", "status": 404, "code": "not_found"},
              "done": {"type": "return", "value": {"price": "product.price"}}
            }
          }
        },
        "place_order": {
          "trigger": {"http": {"method": "POST", "path": "/orders"}},
          "auth": {"roles": ["customer"]},
          "idempotencyKey": "request.idempotencyKey",
          "flow": {
            "entry": "product",
            "nodes": {
              "product": {
                "type": "read", "entity": "Product", "where": {"sku": "input.sku"},
                "one": true, "next": "save", "onError": "missing"
              },
              "save": {
                "type": "transaction",
                "body": {
                  "entry": "order",
                  "nodes": {
                    "order": {
                      "type": "create", "entity": "Order",
                      "values": {"product": "product.id", "quantity": "input.quantity"},
                      "next": "take"
                    },
                    "take": {
                      "type": "update", "entity": "Product", "where": {"id": "product.id"},
                      "one": true, "set": {"stock": "row.stock - input.quantity"}
                    }
                  }
                },
                "next": "notify"
              },
              "notify": {
                "type": "call", "external": "mailer", "operation": "send",
                "args": {"order": "order.id"}, "timeoutMs": 2000, "retry": {"max": 3},
                "next": "done"
              },
              "missing": {
                "type": "fail", "status": 404, "code": "not_found",
                "message": "'no such product'"
              },
              "done": {
                "type": "return", "status": 201,
                "value": {"order": "order.id", "total": "product.price * input.quantity"}
              }
            }
          }
        }
      }
    })
}

/// The value at `pointer`, which the test expects to exist.
#[track_caller]
fn at<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("the base spec has nothing at {pointer}"))
}

/// Removes `key` from the object at `pointer`, keeping the order of the rest.
#[track_caller]
fn remove(v: &mut Value, pointer: &str, key: &str) {
    let removed = at(v, pointer)
        .as_object_mut()
        .and_then(|m| m.shift_remove(key));
    assert!(removed.is_some(), "no key {key} at {pointer}");
}

/// Loads `text`, and judges it too, checking that neither panics.
#[track_caller]
fn load_text(text: &str) -> Loaded {
    let owned = text.to_string();
    let result = std::panic::catch_unwind(move || {
        let loaded = spec::load(&owned);
        let _ = risk::check(&owned);
        loaded
    });
    match result {
        Ok(loaded) => loaded,
        Err(_) => panic!("loading panicked"),
    }
}

/// The base spec, changed by `f`, serialized and loaded.
#[track_caller]
fn load_with(f: impl FnOnce(&mut Value)) -> Loaded {
    let mut v = base();
    f(&mut v);
    load_text(&serde_json::to_string_pretty(&v).unwrap())
}

fn list(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| format!("  {} {} | {} | {}", d.code, d.path, d.message, d.help))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The house style of diagnostics.
#[track_caller]
fn assert_style(d: &Diagnostic) {
    let first = d.message.chars().next();
    assert!(
        first.is_some_and(|c| !c.is_uppercase()),
        "message should start lowercase: {:?}",
        d.message
    );
    assert!(
        !d.message.ends_with('.'),
        "message should not end with a period: {:?}",
        d.message
    );
    assert_eq!(d.message, d.message.trim(), "message has stray whitespace");
    assert!(
        !d.help.trim().is_empty(),
        "empty help for {} at {}",
        d.code,
        d.path
    );
}

#[track_caller]
fn find<'a>(ds: &'a [Diagnostic], what: &str, code: &str, path: &str) -> &'a Diagnostic {
    let d = ds
        .iter()
        .find(|d| d.code == code && d.path == path)
        .unwrap_or_else(|| panic!("expected {what} `{code}` at `{path}`, got:\n{}", list(ds)));
    assert_style(d);
    d
}

/// The error `code` at `path` (others may be reported too).
#[track_caller]
fn error<'a>(l: &'a Loaded, code: &str, path: &str) -> &'a Diagnostic {
    find(&l.errors, "error", code, path)
}

/// The only error, which must be `code` at `path`.
#[track_caller]
fn only_error<'a>(l: &'a Loaded, code: &str, path: &str) -> &'a Diagnostic {
    let d = error(l, code, path);
    assert_eq!(
        l.errors.len(),
        1,
        "expected one error, got:\n{}",
        list(&l.errors)
    );
    d
}

/// The warning `code` at `path`, on a spec without errors.
#[track_caller]
fn warning<'a>(l: &'a Loaded, code: &str, path: &str) -> &'a Diagnostic {
    assert!(
        l.errors.is_empty(),
        "unexpected errors:\n{}",
        list(&l.errors)
    );
    find(&l.warnings, "warning", code, path)
}

/// `v` loads without errors or warnings, and every tool is Green.
#[track_caller]
fn assert_clean_and_green(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap();
    let l = load_text(&text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    assert!(l.warnings.is_empty(), "{}", list(&l.warnings));
    assert_eq!(risk::check(&text).level, Level::Green);
}

#[track_caller]
fn assert_help(d: &Diagnostic, needle: &str) {
    assert!(
        d.help.contains(needle),
        "help of `{}` should contain {needle:?}: {:?}",
        d.code,
        d.help
    );
}

#[track_caller]
fn assert_message(d: &Diagnostic, needle: &str) {
    assert!(
        d.message.contains(needle),
        "message of `{}` should contain {needle:?}: {:?}",
        d.code,
        d.message
    );
}

// ---------------------------------------------------------------------------
// The base itself.

#[test]
fn base_spec_is_valid_and_green() {
    let text = serde_json::to_string_pretty(&base()).unwrap();
    let loaded = spec::load(&text);
    assert!(loaded.errors.is_empty(), "{}", list(&loaded.errors));
    assert!(loaded.warnings.is_empty(), "{}", list(&loaded.warnings));
    let report = risk::check(&text);
    assert_eq!(report.level, Level::Green, "{}", report.to_json());
    assert_eq!(report.tools.len(), 2);
}

// ---------------------------------------------------------------------------
// Text-level errors.

#[test]
fn json_syntax() {
    let text = "{\n  \"sinew\": \"0.1\",\n  \"name\": \"x\"\n  \"tools\": {}\n}\n";
    let l = load_text(text);
    let d = only_error(&l, "json-syntax", "");
    let at = d.at.expect("a syntax error has a position");
    assert_eq!((at.line, at.column), (4, 3), "{d:?}");
    assert_message(d, "line 4");
    assert!(l.source.is_null());
    assert!(l.spec.tools.is_empty());

    // Trailing garbage after the document.
    let l = load_text("{} x");
    let d = only_error(&l, "json-syntax", "");
    let at = d.at.unwrap();
    assert_eq!((at.line, at.column), (1, 4), "{d:?}");
}

#[test]
fn duplicate_key() {
    let text =
        "{\n  \"sinew\": \"0.1\",\n  \"name\": \"a\",\n  \"name\": \"b\",\n  \"tools\": {}\n}";
    let l = load_text(text);
    let d = only_error(&l, "duplicate-key", "");
    assert_message(d, "`name`");
    assert_eq!(d.at.unwrap().line, 4, "{d:?}");

    // Deep inside the spec, too.
    let pretty = serde_json::to_string_pretty(&base()).unwrap();
    let text = pretty.replacen("\"one\": true,", "\"one\": true, \"one\": false,", 1);
    assert_ne!(text, pretty);
    only_error(&load_text(&text), "duplicate-key", "");
}

#[test]
fn too_deep() {
    for text in [
        "[".repeat(100_000) + &"]".repeat(100_000),
        "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000),
        // Unbalanced: the depth limit is hit before the end is.
        "[".repeat(100_000),
    ] {
        let l = load_text(&text);
        let d = only_error(&l, "too-deep", "");
        assert!(d.at.is_some());
        assert_help(d, "127");
    }
    // Deep inside an otherwise valid spec (an extension key).
    let l = load_with(|v| {
        let mut deep = json!(1);
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        v["x-deep"] = deep;
    });
    only_error(&l, "too-deep", "");
}

#[test]
fn nesting_below_the_limit_loads() {
    // The base object plus 126 arrays: 127 levels.
    let l = load_with(|v| {
        let mut deep = json!(1);
        for _ in 0..126 {
            deep = json!([deep]);
        }
        v["x-deep"] = deep;
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn nesting_at_the_limit_loads() {
    // The base object plus 126 arrays: 127 levels, the documented limit.
    let l = load_with(|v| {
        let mut deep = json!(1);
        for _ in 0..126 {
            deep = json!([deep]);
        }
        v["x-deep"] = deep;
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // 128 levels are too many.
    let l = load_with(|v| {
        let mut deep = json!(1);
        for _ in 0..127 {
            deep = json!([deep]);
        }
        v["x-deep"] = deep;
    });
    assert_eq!(
        l.errors.first().map(|e| e.code.as_str()),
        Some("too-deep"),
        "{}",
        list(&l.errors)
    );
}

#[test]
fn empty() {
    for text in ["", "   ", " \n\t\r\n ", "\u{feff}", "\u{feff}  \n"] {
        let l = load_text(text);
        let d = only_error(&l, "empty", "");
        assert_help(d, "JSON object");
    }
    only_error(&spec::load_bytes(b""), "empty", "");
}

#[test]
fn not_utf8() {
    let l = spec::load_bytes(b"{\"sinew\": \"0.1\xff\"}");
    let d = only_error(&l, "not-utf8", "");
    assert_message(d, "byte 14");
    assert_help(d, "UTF-8");
    let at = d.at.unwrap();
    assert_eq!((at.line, at.column), (1, 15), "{d:?}");

    let l = spec::load_bytes(b"{\n  \"name\": \"caf\xe9\"\n}");
    let d = only_error(&l, "not-utf8", "");
    assert_eq!(d.at.unwrap().line, 2, "{d:?}");

    // UTF-16 with a byte order mark is not UTF-8 either.
    only_error(&spec::load_bytes(b"\xff\xfe{\x00}\x00"), "not-utf8", "");

    // Valid UTF-8 with a BOM loads.
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend(serde_json::to_vec(&base()).unwrap());
    let l = spec::load_bytes(&bytes);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn too_large() {
    let limit = spec::source::MAX_SPEC_BYTES;
    assert_eq!(limit, 32 << 20);
    let mut bytes = serde_json::to_vec(&base()).unwrap();
    bytes.resize(limit + 1, b' ');
    let l = spec::load_bytes(&bytes);
    let d = only_error(&l, "too-large", "");
    assert_message(d, "32 MiB");
    // Exactly at the limit is still read (and is valid: trailing spaces).
    bytes.truncate(limit);
    let l = spec::load_bytes(&bytes);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // Not even UTF-8 is checked past the limit.
    let l = spec::load_bytes(&vec![0xff; 40 << 20]);
    let d = only_error(&l, "too-large", "");
    assert_message(d, "41943040 bytes");
}

#[test]
fn too_large_message_does_not_contradict_itself() {
    let bytes = vec![b' '; spec::source::MAX_SPEC_BYTES + 1];
    let l = spec::load_bytes(&bytes);
    let d = only_error(&l, "too-large", "");
    assert!(
        !d.message.contains("is 32 MiB, more than the 32 MiB"),
        "{}",
        d.message
    );
}

// ---------------------------------------------------------------------------
// Shape errors.

#[test]
fn wrong_type() {
    let l = load_with(|v| v["name"] = json!(5));
    let d = only_error(&l, "wrong-type", "/name");
    assert_message(d, "a number");
    assert_help(d, "string");

    let l = load_with(|v| at(v, GET)["done"]["status"] = json!("200"));
    only_error(&l, "wrong-type", &format!("{GET}/done/status"));

    let l = load_with(|v| at(v, GET)["product"]["lock"] = json!("yes"));
    only_error(&l, "wrong-type", &format!("{GET}/product/lock"));

    let l = load_with(|v| at(v, "/tools/get_product/flow")["nodes"] = json!([]));
    error(&l, "wrong-type", "/tools/get_product/flow/nodes");

    let l = load_text("[1, 2]");
    only_error(&l, "wrong-type", "");
}

#[test]
fn missing_key() {
    let l = load_with(|v| remove(v, "", "name"));
    let d = only_error(&l, "missing-key", "");
    assert_message(d, "`name`");
    assert_help(d, "\"name\"");

    let l = load_with(|v| remove(v, &format!("{GET}/missing"), "status"));
    let d = only_error(&l, "missing-key", &format!("{GET}/missing"));
    assert_message(d, "`status`");

    let l = load_with(|v| remove(v, "/tools/get_product", "flow"));
    let d = error(&l, "missing-key", "/tools/get_product");
    assert_message(d, "`flow`");

    let l = load_with(|v| remove(v, "/entities/Order/fields/product", "entity"));
    let d = only_error(&l, "missing-key", "/entities/Order/fields/product");
    assert_message(d, "`entity`");
}

#[test]
fn unknown_key() {
    let l = load_with(|v| at(v, PLACE)["notify"]["compensat"] = json!("missing"));
    let d = only_error(&l, "unknown-key", &format!("{PLACE}/notify/compensat"));
    assert_message(d, "`compensat`");
    assert_help(d, "did you mean `compensate`?");
    assert_eq!(d.tool.as_deref(), Some("place_order"));

    let l = load_with(|v| v["tool"] = json!({}));
    let d = only_error(&l, "unknown-key", "/tool");
    assert_help(d, "`tools`");

    // Far from anything known: told how to keep it as an extension.
    let l = load_with(|v| at(v, "/tools/get_product")["zzzz"] = json!(1));
    let d = only_error(&l, "unknown-key", "/tools/get_product/zzzz");
    assert_help(d, "x-");

    // Documentation and extension keys are fine.
    let l = load_with(|v| {
        at(v, GET)["done"]["description"] = json!("the answer");
        at(v, GET)["done"]["x-owner"] = json!({"team": "shop"});
        v["$comment"] = json!("c");
        v["$schema"] = json!("../schema/spec.schema.json");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn invalid_value() {
    let l = load_with(|v| at(v, "/tools/get_product/trigger/http")["method"] = json!("GETT"));
    let d = only_error(
        &l,
        "invalid-value",
        "/tools/get_product/trigger/http/method",
    );
    assert_message(d, "`GETT`");
    assert_help(d, "did you mean `GET`?");

    let l = load_with(|v| at(v, PLACE)["save"]["isolation"] = json!("serialisable"));
    let d = only_error(&l, "invalid-value", &format!("{PLACE}/save/isolation"));
    assert_help(d, "did you mean `serializable`?");

    let l = load_with(|v| at(v, PLACE)["notify"]["retry"]["max"] = json!(20));
    let d = only_error(&l, "invalid-value", &format!("{PLACE}/notify/retry/max"));
    assert_message(d, "20");
    assert_help(d, "10");

    let l = load_with(|v| at(v, GET)["missing"]["status"] = json!(200));
    only_error(&l, "invalid-value", &format!("{GET}/missing/status"));

    let l = load_with(|v| at(v, GET)["product"]["orderBy"] = json!([]));
    let d = only_error(&l, "invalid-value", &format!("{GET}/product/orderBy"));
    assert_help(d, "at least one field");

    let l = load_with(|v| at(v, GET)["product"]["type"] = json!("reed"));
    let d = only_error(&l, "invalid-value", &format!("{GET}/product/type"));
    assert_help(d, "did you mean `read`?");

    let l = load_with(|v| at(v, "/tools/get_product/trigger/http")["path"] = json!("products"));
    only_error(&l, "invalid-value", "/tools/get_product/trigger/http/path");
}

#[test]
fn invalid_name() {
    let l = load_with(|v| {
        let nodes = at(v, GET).as_object_mut().unwrap();
        let n = nodes.shift_remove("missing").unwrap();
        nodes.insert("not-found".into(), n);
    });
    let d = error(&l, "invalid-name", &format!("{GET}/not-found"));
    assert_message(d, "`not-found`");
    assert_help(d, "letters, digits and `_`");

    let l = load_with(|v| {
        let nodes = at(v, GET).as_object_mut().unwrap();
        let n = nodes.shift_remove("missing").unwrap();
        nodes.insert("input".into(), n);
        nodes["product"]["onError"] = json!("input");
    });
    let d = error(&l, "invalid-name", &format!("{GET}/input"));
    assert_message(d, "`input`");
    assert_help(d, "input_node");

    for keyword in ["true", "in", "row", "auth"] {
        let l = load_with(|v| {
            at(v, GET)[keyword] = json!({"type": "return"});
        });
        error(&l, "invalid-name", &format!("{GET}/{keyword}"));
    }

    let l = load_with(|v| {
        at(v, "/entities/Product/fields")["unit price"] = json!({"type": "integer"});
    });
    only_error(&l, "invalid-name", "/entities/Product/fields/unit price");
}

#[test]
fn invalid_entity_name_names_the_entity() {
    let l =
        load_with(|v| at(v, "/entities")["_Thing"] = json!({"fields": {"a": {"type": "string"}}}));
    let d = only_error(&l, "invalid-name", "/entities/_Thing");
    assert_message(d, "`_Thing`");
}

#[test]
fn duplicate_name() {
    let l = load_with(|v| v["roles"] = json!(["customer", "staff", "customer"]));
    let d = only_error(&l, "duplicate-name", "/roles/2");
    assert_message(d, "`customer`");

    let l = load_with(|v| at(v, "/tools/get_product/auth")["roles"] = json!(["staff", "staff"]));
    only_error(&l, "duplicate-name", "/tools/get_product/auth/roles/1");
}

#[test]
fn unsupported_version() {
    let l = load_with(|v| v["sinew"] = json!("0.3"));
    let d = only_error(&l, "unsupported-version", "/sinew");
    assert_message(d, "\"0.3\"");
    assert_help(d, "\"0.2\"");
    // 0.2 is read, with 0.1's meaning unchanged.
    let l = load_with(|v| v["sinew"] = json!("0.2"));
    assert!(l.errors.is_empty(), "{}", list(&l.errors));

    let l = load_with(|v| v["sinew"] = json!(0.1));
    only_error(&l, "unsupported-version", "/sinew");
}

// ---------------------------------------------------------------------------
// Expressions.

#[test]
fn expr_syntax() {
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("product.price * )"));
    let d = only_error(&l, "expr-syntax", &path);
    assert_eq!(d.span, Some([16, 17]), "{d:?}");
    assert_message(d, "`product.price * )`");

    // Unquoted text: the help says how to quote it.
    let l = load_with(|v| at(v, GET)["missing"]["message"] = json!("no such product"));
    let d = only_error(&l, "expr-syntax", &format!("{GET}/missing/message"));
    assert!(d.span.is_some());
    assert_help(d, "'payment declined'");

    // Too deeply nested expressions are errors, not stack overflows.
    let deep = "(".repeat(100_000) + "1" + &")".repeat(100_000);
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!(deep));
    only_error(&l, "expr-syntax", &path);
    let long = vec!["1"; 100_000].join(" + ");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!(long));
    only_error(&l, "expr-syntax", &path);
    let nots = "!".repeat(100_000) + "true";
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!(nots));
    only_error(&l, "expr-syntax", &path);
}

#[test]
fn expr_scope() {
    // An unknown name, with a suggestion.
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("prodcut.price"));
    let d = only_error(&l, "expr-scope", &path);
    assert_eq!(d.span, Some([0, 7]));
    assert_help(d, "did you mean `product`?");

    // A node that runs on only one branch of an `if`.
    let l = load_with(|v| {
        let n = at(v, GET);
        n["product"]["next"] = json!("branch");
        n["branch"] =
            json!({"type": "if", "if": "product.stock > 0", "then": "extra", "else": "done"});
        n["extra"] = json!({"type": "let", "values": {"a": "1"}, "next": "done"});
        n["done"]["value"]["a"] = json!("extra.a");
    });
    let d = only_error(&l, "expr-scope", &format!("{GET}/done/value/a"));
    assert_message(d, "`extra`");
    assert_message(d, "not certainly bound");
    assert_eq!(d.span, Some([0, 5]));

    // The node reached through `onError` cannot see the node that failed.
    let l = load_with(|v| at(v, GET)["missing"]["message"] = json!("'no ' + product.sku"));
    let d = only_error(&l, "expr-scope", &format!("{GET}/missing/message"));
    assert_message(d, "`product`");
    assert_eq!(d.span, Some([8, 15]));

    // `row` only exists in `set` and invariants.
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("row.price"));
    only_error(&l, "expr-scope", &path);

    // Policies see only input, auth and request.
    let l = load_with(|v| {
        v["policies"] =
            json!({"big": {"type": "custom", "action": "block", "when": "product.price > 10"}});
    });
    only_error(&l, "expr-scope", "/policies/big/when");
}

#[test]
fn expr_type() {
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("has(input)"));
    let d = only_error(&l, "expr-type", &path);
    assert_message(d, "`has`");
    assert_eq!(d.span, Some([0, 10]));

    // A read without `one` is a list of rows.
    let l = load_with(|v| {
        let n = &mut at(v, GET)["product"];
        n["one"] = json!(false);
        n["limit"] = json!(10);
    });
    let d = only_error(&l, "expr-type", &path);
    assert_message(d, "list of `Product` rows");
    assert_help(d, "product[0].price");

    // A function called the wrong way.
    let l =
        load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("startsWith(input.id, 'a')"));
    let d = only_error(&l, "expr-type", &path);
    assert_message(d, "`startsWith` cannot be called as a function");
    assert_help(d, "x.startsWith(");
}

#[test]
fn expr_type_of_an_invariant() {
    // An invariant is a condition: one that certainly gives no bool would
    // be a `spec_error` on every write of the entity.
    let path = "/entities/Product/invariants/stock_ok";
    for (inv, found) in [("'yes'", "literal"), ("row", "whole `Product` row")] {
        let l = load_with(|v| at(v, "/entities/Product/invariants")["stock_ok"] = json!(inv));
        let d = only_error(&l, "expr-type", path);
        assert_message(d, "a bool is needed here");
        assert_message(d, found);
    }
    let l = load_with(|v| {
        at(v, "/entities/Product/invariants")["stock_ok"] = json!("true");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn expr_type_wrong_arity_has_help() {
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("size(input.id, 1)"));
    let d = only_error(&l, "expr-type", &path);
    assert_message(d, "takes 1 argument, found 2");
    assert_style(d);
}

#[test]
fn unknown_function() {
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("lower(input.id)"));
    let d = only_error(&l, "unknown-function", &path);
    assert_message(d, "`lower`");
    assert_help(d, "did you mean `lowerAscii`?");
    assert_eq!(d.span, Some([0, 15]));
}

#[test]
fn unknown_field() {
    // In `where`.
    let l = load_with(|v| at(v, GET)["product"]["where"] = json!({"idd": "input.id"}));
    let d = only_error(&l, "unknown-field", &format!("{GET}/product/where/idd"));
    assert_help(d, "did you mean `id`?");

    // In `values`.
    let l = load_with(|v| {
        let values = at(v, BODY)["order"]["values"].as_object_mut().unwrap();
        let q = values.shift_remove("quantity").unwrap();
        values.insert("quantit".into(), q);
    });
    let d = error(&l, "unknown-field", &format!("{BODY}/order/values/quantit"));
    assert_message(d, "`Order` has no field `quantit`");
    assert_help(d, "did you mean `quantity`?");

    // In `set`.
    let l = load_with(|v| at(v, BODY)["take"]["set"]["stok"] = json!("row.stock"));
    let d = only_error(&l, "unknown-field", &format!("{BODY}/take/set/stok"));
    assert_help(d, "did you mean `stock`?");

    // In `orderBy`, in each of its forms.
    let l = load_with(|v| at(v, GET)["product"]["orderBy"] = json!("prise desc"));
    let d = only_error(&l, "unknown-field", &format!("{GET}/product/orderBy/0"));
    assert_help(d, "did you mean `price`?");
    let l = load_with(|v| {
        at(v, GET)["product"]["orderBy"] = json!(["sku", {"field": "prise", "direction": "desc"}]);
    });
    only_error(&l, "unknown-field", &format!("{GET}/product/orderBy/1"));

    // `row.nope` in an invariant.
    let l = load_with(|v| at(v, "/entities/Product/invariants")["x"] = json!("row.nope > 0"));
    let d = only_error(&l, "unknown-field", "/entities/Product/invariants/x");
    assert_message(d, "`Product` has no field `nope`");
    assert_eq!(d.span, Some([0, 8]));
    assert_eq!(d.tool, None);

    // `product.nope` where `product` is a one-row read.
    let path = format!("{GET}/done/value/price");
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("product.nope"));
    let d = only_error(&l, "unknown-field", &path);
    assert_message(d, "`Product` has no field `nope`");

    // An input property the closed input schema does not declare.
    let l = load_with(|v| at(v, GET)["done"]["value"]["price"] = json!("input.idd"));
    let d = only_error(&l, "unknown-field", &path);
    assert_help(d, "did you mean `id`?");

    // The owner field must exist.
    let l = load_with(|v| at(v, "/entities/Product")["owner"] = json!({"field": "sellr"}));
    only_error(&l, "unknown-field", "/entities/Product/owner/field");
}

#[test]
fn unknown_entity() {
    let l = load_with(|v| at(v, GET)["product"]["entity"] = json!("Prodcut"));
    let d = only_error(&l, "unknown-entity", &format!("{GET}/product/entity"));
    assert_message(d, "`Prodcut`");
    assert_help(d, "did you mean `Product`?");

    let l = load_with(|v| at(v, "/entities/Order/fields/product")["entity"] = json!("Produkt"));
    let d = only_error(
        &l,
        "unknown-entity",
        "/entities/Order/fields/product/entity",
    );
    assert_help(d, "did you mean `Product`?");
}

#[test]
fn unknown_role() {
    let l = load_with(|v| at(v, "/tools/get_product/auth")["roles"] = json!(["staff", "custmer"]));
    let d = only_error(&l, "unknown-role", "/tools/get_product/auth/roles/1");
    assert_help(d, "did you mean `customer`?");

    let l = load_with(|v| {
        at(v, "/entities/Product")["owner"] = json!({"field": "name", "exempt": ["stuff"]});
    });
    let d = only_error(&l, "unknown-role", "/entities/Product/owner/exempt/0");
    assert_help(d, "did you mean `staff`?");

    let l = load_with(|v| v["reviews"] = json!({"roles": ["staf"]}));
    let d = only_error(&l, "unknown-role", "/reviews/roles/0");
    assert_help(d, "did you mean `staff`?");
}

/// `reviews`: some roles, and the paths under `/reviews` left to it.
#[test]
fn reviews_need_roles_and_their_paths() {
    let l = load_with(|v| v["reviews"] = json!({"roles": []}));
    only_error(&l, "invalid-value", "/reviews/roles");
    let l = load_with(|v| v["reviews"] = json!({}));
    only_error(&l, "missing-key", "/reviews");
    let l = load_with(|v| v["reviews"] = json!({"roles": ["staff"], "who": 1}));
    only_error(&l, "unknown-key", "/reviews/who");
    let l = load_with(|v| {
        v["reviews"] = json!({"roles": ["staff"]});
        at(v, "/tools/get_product/trigger")["http"]["path"] = json!("/reviews/{id}");
    });
    let d = only_error(&l, "reserved-route", "/tools/get_product/trigger");
    assert_message(d, "where `sinew serve` answers reviews");
    assert_help(d, "/reviews and below");
    // Without `reviews`, the path is the tools'.
    let mut v = base();
    at(&mut v, "/tools/get_product/trigger")["http"]["path"] = json!("/reviews/{id}");
    assert_clean_and_green(&v);
}

/// Tenants: `claim` is a claim's name, on an owner `field`.
#[test]
fn owner_claims() {
    let l = load_with(|v| {
        at(v, "/entities/Product")["owner"] = json!({"field": "name", "claim": ""});
    });
    only_error(&l, "invalid-value", "/entities/Product/owner/claim");
    let l = load_with(|v| {
        at(v, "/entities/Product")["owner"] = json!({"field": "name", "claim": 7});
    });
    only_error(&l, "invalid-value", "/entities/Product/owner/claim");
    let l = load_with(|v| {
        at(v, "/entities/Product")["owner"] = json!({"field": "name", "claim": "org_id"});
        at(v, "/entities/Order")["owner"] = json!({"ref": "product", "claim": "org_id"});
    });
    only_error(&l, "invalid-value", "/entities/Order/owner/claim");
    let l = load_with(|v| {
        at(v, "/entities/Product")["owner"] = json!({"field": "price", "claim": "org_id"});
    });
    let d = only_error(&l, "invalid-value", "/entities/Product/owner/field");
    assert_message(d, "auth.claims.org_id");
}

#[test]
fn unknown_tool() {
    let l = load_with(|v| {
        v["policies"] = json!({"p": {
            "type": "rateLimit", "action": "block",
            "tools": ["place_order", "get_prodcut"], "maxRequestsPerMinute": 5
        }});
    });
    let d = only_error(&l, "unknown-tool", "/policies/p/tools/1");
    assert_help(d, "did you mean `get_product`?");

    let l = load_with(|v| {
        v["acknowledgments"] = json!([{
            "tool": "place_ordr", "signal": "missing-retry", "reason": "r", "by": "me"
        }]);
    });
    let d = only_error(&l, "unknown-tool", "/acknowledgments/0/tool");
    assert_help(d, "did you mean `place_order`?");
}

#[test]
fn unknown_signal() {
    let l = load_with(|v| {
        v["acknowledgments"] = json!([{
            "tool": "place_order", "signal": "missing-retyr", "reason": "r", "by": "me"
        }]);
    });
    let d = only_error(&l, "unknown-signal", "/acknowledgments/0/signal");
    assert_help(d, "did you mean `missing-retry`?");
}

#[test]
fn unknown_node() {
    let l = load_with(|v| at(v, PLACE)["notify"]["compensate"] = json!("refnd"));
    let d = only_error(&l, "unknown-node", &format!("{PLACE}/notify/compensate"));
    assert_message(d, "`refnd`");

    let l = load_with(|v| {
        v["acknowledgments"] = json!([{
            "tool": "place_order", "signal": "missing-retry", "node": "notfy",
            "reason": "r", "by": "me"
        }]);
    });
    let d = only_error(&l, "unknown-node", "/acknowledgments/0/node");
    assert_help(d, "did you mean `notify`?");
}

#[test]
fn unknown_node_help_is_deterministic() {
    let text = {
        let mut v = base();
        at(&mut v, PLACE)["notify"]["compensate"] = json!("zzzzzz");
        serde_json::to_string_pretty(&v).unwrap()
    };
    let helps: Vec<String> = (0..20)
        .map(|_| {
            let l = spec::load(&text);
            only_error(&l, "unknown-node", &format!("{PLACE}/notify/compensate"))
                .help
                .clone()
        })
        .collect();
    assert!(helps.iter().all(|h| *h == helps[0]), "{helps:#?}");
}

#[test]
fn unknown_external() {
    let l = load_with(|v| at(v, PLACE)["notify"]["external"] = json!("mailr"));
    let d = only_error(&l, "unknown-external", &format!("{PLACE}/notify/external"));
    assert_help(d, "did you mean `mailer`?");
}

#[test]
fn unknown_operation() {
    let l = load_with(|v| at(v, PLACE)["notify"]["operation"] = json!("sned"));
    let d = only_error(
        &l,
        "unknown-operation",
        &format!("{PLACE}/notify/operation"),
    );
    assert_message(d, "`mailer` has no operation `sned`");
    assert_help(d, "did you mean `send`?");

    // `compensates` must name another operation of the same external.
    let l = load_with(|v| {
        at(v, "/externals/mailer/operations")["unsend"] = json!({"compensates": "sendd"})
    });
    only_error(
        &l,
        "unknown-operation",
        "/externals/mailer/operations/unsend/compensates",
    );
}

#[test]
fn unknown_action() {
    let paid = json!({"type": "transition", "entity": "Order", "id": "order.id", "action": "pya"});
    let l = load_with(|v| {
        let body = at(v, BODY);
        body["take"]["next"] = json!("paid");
        body["paid"] = paid.clone();
    });
    let d = only_error(&l, "unknown-action", &format!("{BODY}/paid/action"));
    assert_help(d, "did you mean `pay`?");

    // On an entity without a status machine.
    let l = load_with(|v| {
        let body = at(v, BODY);
        body["take"]["next"] = json!("paid");
        body["paid"] = paid.clone();
        body["paid"]["entity"] = json!("Product");
        body["paid"]["action"] = json!("pay");
    });
    let d = only_error(&l, "unknown-action", &format!("{BODY}/paid/action"));
    assert_message(d, "no status machine");
    assert_help(d, "`status`");
}

#[test]
fn dangling_edge() {
    let l = load_with(|v| at(v, GET)["product"]["next"] = json!("dne"));
    let d = only_error(&l, "dangling-edge", &format!("{GET}/product/next"));
    assert_message(d, "`dne`");
    assert_help(d, "did you mean `done`?");

    // From a transaction body to the top level.
    let l = load_with(|v| at(v, BODY)["take"]["next"] = json!("done"));
    let d = only_error(&l, "dangling-edge", &format!("{BODY}/take/next"));
    assert_message(d, "another flow");

    // From the top level into a body.
    let l = load_with(|v| at(v, PLACE)["product"]["next"] = json!("order"));
    let d = error(&l, "dangling-edge", &format!("{PLACE}/product/next"));
    assert_message(d, "another flow");

    // A flow's entry.
    let l = load_with(|v| at(v, "/tools/get_product/flow")["entry"] = json!("prodct"));
    let d = error(&l, "dangling-edge", "/tools/get_product/flow/entry");
    assert_help(d, "did you mean `product`?");
}

#[test]
fn duplicate_node() {
    // `product` is a top-level node; the body uses the id again.
    let l = load_with(|v| at(v, BODY)["product"] = json!({"type": "let", "values": {"a": "1"}}));
    let d = only_error(&l, "duplicate-node", &format!("{BODY}/product"));
    assert_message(d, &format!("`{PLACE}/product`"));
}

#[test]
fn duplicate_route() {
    let l = load_with(|v| {
        at(v, "/tools/place_order/trigger")["http"] =
            json!({"method": "GET", "path": "/products/{sku}"});
    });
    let d = only_error(&l, "duplicate-route", "/tools/place_order/trigger");
    assert_message(d, "`get_product`");
    assert_eq!(d.tool.as_deref(), Some("place_order"));
}

/// A route on a path the server answers itself (health, readiness, the
/// OpenAPI document, the by-name calls, Pub/Sub's pushes) would be shadowed
/// by it or shadow it: refused, whatever the method, a webhook's too.
#[test]
fn reserved_route() {
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("POST", "/tools/{id}"),
        ("POST", "/tools/place_order"),
        ("GET", "/tools/{id}"),
        ("POST", "/queues/{id}"),
        ("POST", "/queues/jobs"),
    ] {
        let l = load_with(|v| {
            at(v, "/tools/get_product/trigger")["http"] = json!({"method": method, "path": path});
        });
        let d = only_error(&l, "reserved-route", "/tools/get_product/trigger");
        assert_message(d, "which `sinew serve` answers itself");
        assert_help(
            d,
            "/healthz, /readyz, /openapi.json, /tools/{name}, /queues/{queue}",
        );
        assert_eq!(d.tool.as_deref(), Some("get_product"), "{method} {path}");
    }
    let l = load_with(|v| {
        at(v, "/tools/get_product")["trigger"] = json!({"webhook": {"path": "/queues/jobs"}});
    });
    let d = only_error(&l, "reserved-route", "/tools/get_product/trigger");
    assert_message(d, "`POST /queues/jobs` is on `/queues/{queue}`");
    // A parameter where the server has a literal, or one more segment,
    // leaves the tool its route (the server's literal paths win).
    for path in ["/{id}", "/tools/{id}/stock", "/tools", "/healthz/{id}"] {
        let mut v = base();
        at(&mut v, "/tools/get_product/trigger")["http"]["path"] = json!(path);
        assert_clean_and_green(&v);
    }
}

#[test]
fn open_path() {
    let l = load_with(|v| remove(v, &format!("{GET}/product"), "next"));
    let d = error(&l, "open-path", &format!("{GET}/product"));
    assert_message(d, "`product`");
    assert!(
        l.errors.iter().all(|e| e.code == "open-path"),
        "{}",
        list(&l.errors)
    );

    let l = load_with(|v| {
        let n = at(v, GET);
        n["product"]["next"] = json!("pick");
        n["pick"] =
            json!({"type": "switch", "cases": [{"when": "product.price > 10", "next": "done"}]});
    });
    let d = only_error(&l, "open-path", &format!("{GET}/pick"));
    assert_message(d, "`default`");

    // Inside a transaction body, a node without `next` just ends the body
    // (`take` in the base spec); a top-level `if` needs no `next` either.
    let l = load_with(|v| {
        let n = at(v, GET);
        n["product"]["next"] = json!("pick");
        n["pick"] =
            json!({"type": "if", "if": "product.stock > 0", "then": "done", "else": "missing"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn a_switch_without_default_in_a_body_may_end_it() {
    // Inside a transaction body, a `switch` needs no `default`: when no
    // case holds, the body ends there, as after a node without `next`.
    let route = |v: &mut Value| {
        at(v, BODY)["route"] =
            json!({"type": "switch", "cases": [{"when": "input.quantity > 1", "next": "order"}]});
        at(v, "/tools/place_order/flow/nodes/save/body")["entry"] = json!("route");
    };
    // So `order` is not certainly bound after the transaction: reading it
    // there would fail at run time whenever no case held.
    let l = load_with(route);
    let d = error(&l, "expr-scope", &format!("{PLACE}/done/value/order"));
    assert_message(d, "`order`");
    assert_message(d, "not certainly bound");
    error(&l, "expr-scope", &format!("{PLACE}/notify/args/order"));
    assert_eq!(l.errors.len(), 2, "{}", list(&l.errors));
    // Read only inside the body, it is valid, and runs (the scenario
    // `router-switch-without-default-ends-the-body`).
    let l = load_with(|v| {
        route(v);
        at(v, PLACE)["done"]["value"] = json!({"total": "product.price * input.quantity"});
        at(v, PLACE)["notify"]["args"] = json!({"product": "product.id"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn invalid_schema() {
    // A schema that does not compile is refused by `sinew check`, where it
    // is wrong, as the bundle would refuse it when loading it to run.
    let l = load_with(|v| at(v, "/tools/get_product/input")["type"] = json!("objectx"));
    let d = only_error(&l, "invalid-schema", "/tools/get_product/input/type");
    assert_message(d, "the input schema is not a valid JSON Schema");
    assert_message(d, "objectx");
    assert_eq!(d.tool.as_deref(), Some("get_product"));

    let l = load_with(|v| {
        at(v, "/tools/get_product")["output"] =
            json!({"type": "object", "properties": {"price": {"minimum": "zero"}}});
    });
    let d = only_error(
        &l,
        "invalid-schema",
        "/tools/get_product/output/properties/price/minimum",
    );
    assert_message(d, "the output schema");

    // A `pattern` that is not a regular expression: the compiler refuses it.
    let l = load_with(|v| {
        at(v, "/tools/get_product/input/properties")["id"] =
            json!({"type": "string", "pattern": "(unclosed"});
    });
    let d = only_error(
        &l,
        "invalid-schema",
        "/tools/get_product/input/properties/id/pattern",
    );
    assert_message(d, "regex");
    // A `$ref` to nothing, here or elsewhere (nothing is fetched): the
    // whole schema.
    for target in ["#/$defs/missing", "https://example.com/schema.json"] {
        let l = load_with(|v| at(v, "/tools/get_product")["input"] = json!({"$ref": target}));
        let d = only_error(&l, "invalid-schema", "/tools/get_product/input");
        assert_message(d, target.trim_start_matches('#'));
    }

    // Whatever the loader accepts, the bundle compiles, and the other way
    // round: the loader's verdict is the bundle's.
    for (schema, valid) in [
        (json!({"type": "objectx"}), false),
        (json!({"type": "string", "format": "uuid"}), true),
        (json!({"type": "string", "format": "no-such-format"}), true),
        (json!({"$ref": "#/$defs/missing"}), false),
        (json!({"required": "id"}), false),
        (json!({"$ref": "https://example.com/schema.json"}), false),
        (json!(true), true),
        (json!(false), true),
    ] {
        let mut v = base();
        at(&mut v, "/tools/get_product")["input"] = schema.clone();
        let text = serde_json::to_string(&v).unwrap();
        let loaded = spec::load(&text);
        let refused = loaded.errors.iter().any(|e| e.code == "invalid-schema");
        assert_eq!(!refused, valid, "{schema}: {}", list(&loaded.errors));
        match sinew_core::bundle::Bundle::load(&text) {
            Ok(_) => assert!(valid, "{schema} runs"),
            Err(e) => assert!(
                !valid && matches!(e, sinew_core::bundle::BundleError::Invalid(_)),
                "{schema}: {e}"
            ),
        }
    }
}

#[test]
fn reserved_field() {
    let l = load_with(|v| {
        at(v, "/entities/Product/fields")["created_at"] = json!({"type": "timestamp"})
    });
    let d = only_error(&l, "reserved-field", "/entities/Product/fields/created_at");
    assert_message(d, "`created_at`");

    // `status` is reserved once there is a status machine.
    let l = load_with(|v| at(v, "/entities/Order/fields")["status"] = json!({"type": "string"}));
    error(&l, "reserved-field", "/entities/Order/fields/status");
    // Without one it is an ordinary field.
    let l = load_with(|v| {
        at(v, "/entities/Product/fields")["status"] = json!({"type": "string", "nullable": true});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn status_outside_transition() {
    let l = load_with(|v| {
        let body = at(v, BODY);
        body["take"]["next"] = json!("mark");
        body["mark"] = json!({
            "type": "update", "entity": "Order", "where": {"id": "order.id"}, "one": true,
            "set": {"status": "'paid'"}
        });
    });
    let d = only_error(
        &l,
        "status-outside-transition",
        &format!("{BODY}/mark/set/status"),
    );
    assert_help(d, "`transition`");
}

#[test]
fn wrong_node_kind() {
    let l = load_with(|v| at(v, PLACE)["notify"]["compensate"] = json!("missing"));
    let d = only_error(&l, "wrong-node-kind", &format!("{PLACE}/notify/compensate"));
    assert_message(d, "`missing`");
}

#[test]
fn path_param_not_in_input() {
    let l =
        load_with(|v| at(v, "/tools/get_product/trigger/http")["path"] = json!("/products/{code}"));
    let d = only_error(&l, "path-param-not-in-input", "/tools/get_product/input");
    assert_message(d, "`code`");
    assert_help(d, "`code`");

    // With an open input schema, path parameters need no declaration.
    let l = load_with(|v| {
        at(v, "/tools/place_order/trigger/http")["path"] = json!("/orders/{code}");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

// ---------------------------------------------------------------------------
// Warnings.

#[test]
fn unreachable_node() {
    let l = load_with(|v| at(v, GET)["orphan"] = json!({"type": "return", "value": {}}));
    let d = warning(&l, "unreachable-node", &format!("{GET}/orphan"));
    assert_message(d, "`orphan`");
    assert_eq!(d.tool.as_deref(), Some("get_product"));
    assert_eq!(l.warnings.len(), 1);
}

#[test]
fn unknown_external_kind() {
    let l = load_with(|v| at(v, "/externals/mailer")["kind"] = json!("emial"));
    let d = warning(&l, "unknown-external-kind", "/externals/mailer/kind");
    assert_help(d, "did you mean `email`?");
    assert_eq!(l.warnings.len(), 1);
    // A warning, not an error: the tools are still judged.
    let text = {
        let mut v = base();
        at(&mut v, "/externals/mailer")["kind"] = json!("emial");
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(risk::check(&text).level, Level::Green);
}

#[test]
fn ack_not_applicable() {
    let mut v = base();
    v["acknowledgments"] = json!([{
        "tool": "place_order", "signal": "missing-retry", "reason": "we retry by hand", "by": "ops"
    }]);
    let text = serde_json::to_string_pretty(&v).unwrap();
    // The loader does not judge signals; the risk engine does.
    let loaded = load_text(&text);
    assert!(loaded.errors.is_empty() && loaded.warnings.is_empty());
    let report = risk::check(&text);
    let d = find(
        &report.warnings,
        "warning",
        "ack-not-applicable",
        "/acknowledgments/0",
    );
    assert_message(d, "`missing-retry`");
    assert_eq!(d.tool.as_deref(), Some("place_order"));
    assert_eq!(report.level, Level::Green);

    // Acknowledging a Red signal is not applicable either.
    let mut v = base();
    at(&mut v, BODY)["take"]["next"] = json!("raw");
    at(&mut v, BODY)["raw"] = json!({"type": "sql", "statement": "SELECT 1"});
    v["acknowledgments"] = json!([{
        "tool": "place_order", "signal": "raw-write", "reason": "r", "by": "me"
    }]);
    let report = risk::check(&serde_json::to_string(&v).unwrap());
    let d = find(
        &report.warnings,
        "warning",
        "ack-not-applicable",
        "/acknowledgments/0",
    );
    assert_message(d, "Red");
    assert_eq!(report.level, Level::Red);
}

#[test]
fn missing_value() {
    let l = load_with(|v| remove(v, &format!("{BODY}/order/values"), "quantity"));
    let d = warning(&l, "missing-value", &format!("{BODY}/order/values"));
    assert_message(d, "`quantity`");
    assert_help(d, "nullable");

    // Nullable fields and fields with a default need no value.
    let l = load_with(|v| {
        remove(v, &format!("{BODY}/order/values"), "quantity");
        at(v, "/entities/Order/fields/quantity")["default"] = json!(1);
    });
    assert!(l.warnings.is_empty(), "{}", list(&l.warnings));
}

#[test]
fn no_transitions() {
    let l = load_with(|v| at(v, "/entities/Order/status")["transitions"] = json!({}));
    let d = warning(&l, "no-transitions", "/entities/Order/status");
    assert_message(d, "`Order`");
}

// ---------------------------------------------------------------------------
// Across codes.

fn several_errors() -> Loaded {
    load_with(|v| {
        v["name"] = json!(5);
        at(v, GET)["product"]["entity"] = json!("Prodcut");
        at(v, PLACE)["notify"]["compensat"] = json!(true);
        at(v, PLACE)["notify"]["retry"]["max"] = json!(20);
        at(v, "/entities/Product/invariants")["x"] = json!("row.nope > 0");
        at(v, "/externals/mailer")["kind"] = json!("emial");
    })
}

#[test]
fn several_independent_errors_are_all_reported() {
    let l = several_errors();
    let got: Vec<(&str, &str)> = l
        .errors
        .iter()
        .map(|d| (d.code.as_str(), d.path.as_str()))
        .collect();
    let want = [
        ("wrong-type", "/name".to_string()),
        ("unknown-entity", format!("{GET}/product/entity")),
        ("unknown-key", format!("{PLACE}/notify/compensat")),
        ("invalid-value", format!("{PLACE}/notify/retry/max")),
        (
            "unknown-field",
            "/entities/Product/invariants/x".to_string(),
        ),
    ];
    for (code, path) in &want {
        assert!(
            got.contains(&(*code, path.as_str())),
            "missing {code} at {path}:\n{}",
            list(&l.errors)
        );
    }
    assert_eq!(l.errors.len(), want.len(), "{}", list(&l.errors));
    for d in &l.errors {
        assert_style(d);
    }
    find(
        &l.warnings,
        "warning",
        "unknown-external-kind",
        "/externals/mailer/kind",
    );
}

#[test]
fn errors_are_sorted_by_path() {
    let l = several_errors();
    assert!(l.errors.len() > 2);
    let paths: Vec<&str> = l.errors.iter().map(|d| d.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);

    let l = load_with(|v| {
        at(v, GET)["z_orphan"] = json!({"type": "return"});
        at(v, GET)["a_orphan"] = json!({"type": "return"});
        at(v, "/entities/Order/status")["transitions"] = json!({});
    });
    let paths: Vec<&str> = l.warnings.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths.len(), 3, "{}", list(&l.warnings));
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    // The risk report keeps the order.
    let mut v = base();
    v["name"] = json!(5);
    at(&mut v, GET)["product"]["entity"] = json!("Prodcut");
    let report = risk::check(&serde_json::to_string(&v).unwrap());
    let paths: Vec<&str> = report.errors.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/name", &format!("{GET}/product/entity")]);
}

#[test]
fn a_tool_with_an_error_is_invalid_and_the_others_are_still_judged() {
    let mut v = base();
    at(&mut v, GET)["product"]["entity"] = json!("Prodcut");
    // Make the other tool Yellow, to see that it really is judged.
    remove(&mut v, &format!("{PLACE}/notify"), "retry");
    let text = serde_json::to_string_pretty(&v).unwrap();
    let loaded = spec::load(&text);
    assert!(!loaded.tool_is_valid("get_product"));
    assert!(loaded.tool_is_valid("place_order"));
    let report = risk::check(&text);
    assert_eq!(report.level, Level::Invalid);
    assert_eq!(report.exit_code(), 3);
    let get = &report.tools["get_product"];
    assert_eq!(get.level, Level::Invalid);
    assert!(get.findings.is_empty());
    let place = &report.tools["place_order"];
    assert_eq!(place.level, Level::Yellow, "{}", report.to_json());
    assert!(place.findings.iter().any(|f| f.code == "missing-retry"));
    // The error names its tool.
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].tool.as_deref(), Some("get_product"));
}

#[test]
fn an_error_outside_every_tool_makes_every_tool_invalid() {
    let mut v = base();
    at(&mut v, "/entities/Product/invariants")["x"] = json!("row.nope > 0");
    let report = risk::check(&serde_json::to_string(&v).unwrap());
    assert_eq!(report.level, Level::Invalid);
    assert_eq!(report.tools.len(), 2);
    assert!(report.tools.values().all(|t| t.level == Level::Invalid));
}

#[test]
fn a_tool_whose_trigger_does_not_decode_is_still_reported_invalid() {
    let mut v = base();
    at(&mut v, "/tools/get_product/trigger/http")["method"] = json!("GETT");
    v["policies"] = json!({"p": {
        "type": "rateLimit", "action": "block", "tools": ["get_product"], "maxRequestsPerMinute": 5
    }});
    let text = serde_json::to_string_pretty(&v).unwrap();
    let report = risk::check(&text);
    assert_eq!(
        report.tools.get("get_product").map(|t| t.level),
        Some(Level::Invalid),
        "{}",
        report.to_json()
    );
    assert_eq!(report.tools["place_order"].level, Level::Green);
    // The policy names a tool that exists: the only error is the method.
    let loaded = spec::load(&text);
    only_error(
        &loaded,
        "invalid-value",
        "/tools/get_product/trigger/http/method",
    );
}

#[test]
fn loading_never_panics_on_odd_documents() {
    let texts = [
        "null".to_string(),
        "true".to_string(),
        "0".to_string(),
        "\"sinew\"".to_string(),
        "[]".to_string(),
        "{}".to_string(),
        "{\"sinew\": \"0.1\"}".to_string(),
        "{\"sinew\": \"0.1\", \"name\": \"x\", \"tools\": null}".to_string(),
        "{\"sinew\": \"0.1\", \"name\": \"x\", \"tools\": {\"t\": {}}}".to_string(),
        "{\"sinew\": \"0.1\", \"name\": \"x\", \"tools\": {\"t\": {\"trigger\": {}, \"flow\": {\"entry\": \"a\", \"nodes\": {}}}}}".to_string(),
        "{\"sinew\": \"0.1\", \"name\": \"x\", \"tools\": {\"t\": {\"trigger\": {\"cron\": {\"schedule\": \"* * * * *\"}}, \"flow\": {\"entry\": \"a\", \"nodes\": {\"a\": {\"type\": \"transaction\", \"body\": {\"entry\": \"a\", \"nodes\": {\"a\": {\"type\": \"return\"}}}}}}}}}".to_string(),
        "{\"a\": 1e999}".to_string(),
        "{\"a\": \"\\ud800\"}".to_string(),
        "\u{feff}{}".to_string(),
    ];
    for text in &texts {
        let l = load_text(text);
        assert!(!l.errors.is_empty(), "{text} should not load cleanly");
        for d in &l.errors {
            assert_style(d);
        }
    }
    for bytes in [&b"\xc3"[..], b"{\"\xed\xa0\x80\": 1}", b"\x00\x00\x00{"] {
        let bytes = bytes.to_vec();
        let l = std::panic::catch_unwind(move || spec::load_bytes(&bytes)).expect("no panic");
        assert!(!l.errors.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Issue 14: what the checker could know, and messages that name the cause.

#[test]
fn expr_type_where_an_id_is_needed() {
    // A whole row where a row id is needed: at run time it was a 404 that
    // quoted the whole row.
    let l = load_with(|v| {
        *at(v, &format!("{BODY}/take")) =
            json!({"type": "soft_delete", "entity": "Product", "id": "product"});
    });
    let d = only_error(&l, "expr-type", &format!("{BODY}/take/id"));
    assert_help(d, "product.id");
    assert_message(d, "whole `Product` row");
}

#[test]
fn expr_type_where_a_count_or_a_bool_is_needed() {
    let l = load_with(|v| at(v, &format!("{GET}/product"))["limit"] = json!("'ten'"));
    only_error(&l, "expr-type", &format!("{GET}/product/limit"));
    let l = load_with(|v| at(v, &format!("{GET}/product"))["limit"] = json!("input.id == 'x'"));
    only_error(&l, "expr-type", &format!("{GET}/product/limit"));
    let l = load_with(|v| {
        at(v, "/tools/get_product/auth")["denyWhen"] = json!("'yes'");
    });
    only_error(&l, "expr-type", "/tools/get_product/auth/denyWhen");
    // What only running can tell is not guessed at.
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["limit"] = json!("has(input.id) ? size(input.id) : 1")
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

#[test]
fn limit_a_path_certainly_exceeds() {
    // place_order: `product` reads one row, `save` creates one and updates
    // one: 3 rows on every path through `save`.
    let l = load_with(|v| at(v, "/tools/place_order")["limits"] = json!({"maxRows": 2}));
    let d = only_error(&l, "limit-exceeded", "/tools/place_order/limits/maxRows");
    assert_message(d, "`product`, `save`");
    assert_help(d, "at least 3");
    let l = load_with(|v| at(v, "/tools/place_order")["limits"] = json!({"maxRowsWritten": 1}));
    only_error(
        &l,
        "limit-exceeded",
        "/tools/place_order/limits/maxRowsWritten",
    );
    // Enough for the longest path: fine.
    let l = load_with(|v| {
        at(v, "/tools/place_order")["limits"] =
            json!({"maxRows": 3, "maxRowsWritten": 2, "maxCalls": 1})
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // A `create` with `each` and a `foreach` over a literal list: its
    // length is known (here 3 rows, and 3 × 1 row read).
    let over_a_literal = |node: Value, limits: Value| {
        load_with(move |v| {
            at(v, &format!("{GET}/product"))["limit"] = json!(1);
            with_product_node(v, node.clone());
            at(v, &format!("{GET}/done"))["value"] = json!({"ok": true});
            at(v, "/tools/get_product")["limits"] = limits.clone();
            at(v, "/tools/get_product")["idempotencyKey"] = json!("request.idempotencyKey");
        })
    };
    let create_each = json!({"type": "transaction", "body": {"entry": "c", "nodes": {
        "c": {"type": "create", "entity": "Product", "each": "['a', 'b', 'c']", "as": "s",
              "values": {"sku": "s", "name": "s", "price": 1, "stock": 0}}}}, "next": "done"});
    let l = over_a_literal(create_each.clone(), json!({"maxRowsWritten": 2}));
    let d = only_error(
        &l,
        "limit-exceeded",
        "/tools/get_product/limits/maxRowsWritten",
    );
    assert_message(d, "certainly makes 3 rows written");
    let l = over_a_literal(create_each, json!({"maxRowsWritten": 3}));
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let foreach = json!({"type": "transaction", "body": {"entry": "l", "nodes": {
        "l": {"type": "foreach", "items": "['a', 'b', 'c']", "as": "s", "maxItems": 5,
              "body": {"entry": "c", "nodes": {"c": {"type": "create", "entity": "Product",
                  "values": {"sku": "s", "name": "s", "price": 1, "stock": 0}}}}}}},
        "next": "done"});
    let l = over_a_literal(foreach, json!({"maxRowsWritten": 2}));
    let d = only_error(
        &l,
        "limit-exceeded",
        "/tools/get_product/limits/maxRowsWritten",
    );
    assert_message(d, "certainly makes 3 rows written");
}

#[test]
fn a_missing_else_is_reported_once() {
    // The node that did not load leaves its successors unreachable and
    // their names unbound in the graph: nothing of that cascade is said.
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["next"] = json!("check");
        at(v, GET)["check"] = json!({"type": "if", "if": "product.price > 0", "then": "done"});
    });
    let d = only_error(&l, "missing-key", &format!("{GET}/check"));
    assert_message(d, "else");
    assert!(
        l.warnings.is_empty(),
        "no cascading warnings:\n{}",
        list(&l.warnings)
    );
}

#[test]
fn an_unquoted_state_is_said_to_need_quotes() {
    let l = load_with(|v| {
        at(v, &format!("{PLACE}/done"))["value"]["paid"] = json!("order.status == paid");
    });
    let d = only_error(&l, "expr-scope", &format!("{PLACE}/done/value/paid"));
    assert_help(d, "'paid'");
    assert_help(d, "state of `Order`");
}

#[test]
fn messages_use_the_right_article() {
    assert_eq!(sinew_core::diag::a("integer"), "an integer");
    assert_eq!(sinew_core::diag::a("string"), "a string");
    assert_eq!(sinew_core::diag::a_code("Appointment"), "an `Appointment`");
    assert_eq!(sinew_core::diag::a_code("Order"), "an `Order`");
    assert_eq!(sinew_core::diag::a_code("Product"), "a `Product`");
}

/// Format 0.2's `where`: each mistake is found where it is, once, however
/// deep it sits in `and`/`or`/`not`.
#[test]
fn where_operands_are_checked_at_their_pointers() {
    let w = format!("{GET}/product/where");
    let set = |w0: Value| {
        load_with(move |v| {
            at(v, &format!("{GET}/product"))["where"] = w0;
        })
    };
    // An unknown field inside `or`, with the did-you-mean.
    let l = set(json!({"or": [{"id": "input.id"}, {"skuu": {"startsWith": "'A'"}}]}));
    let d = only_error(&l, "unknown-field", &format!("{w}/or/1/skuu"));
    assert_help(d, "sku");
    // A text comparison on an integer field.
    let l = set(json!({"id": "input.id", "price": {"contains": "'1'"}}));
    let d = only_error(&l, "expr-type", &format!("{w}/price/contains"));
    assert_message(d, "not a string field");
    // A literal that is not a list for notIn, under `not`.
    let l = set(json!({"id": "input.id", "not": {"stock": {"notIn": 3}}}));
    let d = only_error(&l, "expr-type", &format!("{w}/not/stock/notIn"));
    assert_message(d, "a list");
    // isNull takes true or false.
    let l = set(json!({"id": "input.id", "name": {"isNull": 1}}));
    only_error(&l, "expr-type", &format!("{w}/name/isNull"));
    // `when` must be a condition.
    let l = set(json!({"id": "input.id", "stock": {"gt": 0, "when": "5"}}));
    only_error(&l, "expr-type", &format!("{w}/stock/when"));
    // An unknown operator, with the list of the known ones.
    let l = set(json!({"id": "input.id", "name": {"like": "'A%'"}}));
    let d = error(&l, "invalid-value", &format!("{w}/name/like"));
    assert_help(d, "startsWith");
    // `or` takes a list, and not an empty one.
    let l = set(json!({"id": "input.id", "or": {"sku": "'A'"}}));
    only_error(&l, "wrong-type", &format!("{w}/or"));
    let l = set(json!({"id": "input.id", "or": []}));
    only_error(&l, "invalid-value", &format!("{w}/or"));
    // All of it together, written right, loads and stays Green.
    let l = set(json!({
        "id": "input.id",
        "or": [{"name": {"icontains": "'tea'"}}, {"sku": {"startsWith": "'T'"}}],
        "not": {"stock": {"lt": 1, "when": "has(input.id)"}},
        "sku": {"notIn": ["'X'"], "when": "true"},
        "and": [{"name": {"isNull": false}}]
    }));
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    assert_eq!(risk::analyze(&l).level, Level::Green);
}

#[test]
fn a_combinator_cannot_name_a_field() {
    let l = load_with(|v| {
        at(v, "/entities/Product/fields")["not"] = json!({"type": "string"});
    });
    only_error(&l, "reserved-field", "/entities/Product/fields/not");
}

/// An update whose every condition may be left out by its `when` can
/// change every row: Red, as with no `where` at all.
#[test]
fn an_update_whose_where_may_vanish_is_unbounded() {
    let l = load_with(|v| {
        at(v, &format!("{BODY}/take"))["where"] =
            json!({"id": {"eq": "product.id", "when": "has(input.sku)"}});
        at(v, &format!("{BODY}/take"))["one"] = json!(false);
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    let codes: Vec<&str> = report
        .findings()
        .filter(|f| f.tool == "place_order")
        .map(|f| f.code.as_str())
        .collect();
    assert!(codes.contains(&"unbounded-update"), "{codes:?}");
    assert_eq!(report.level, Level::Red);
}

#[test]
fn count_needs_a_page_and_a_page_is_not_one_row() {
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["count"] = json!(true);
    });
    let d = only_error(&l, "invalid-value", &format!("{GET}/product/count"));
    assert_help(d, "\"page\": true");
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["page"] = json!(true);
    });
    only_error(&l, "invalid-value", &format!("{GET}/product/page"));
    // A paged read binds `rows`, `next` (and `total` with `count`).
    let l = load_with(|v| {
        let read = at(v, &format!("{GET}/product"));
        read["one"] = json!(false);
        read["page"] = json!(true);
        read["limit"] = json!(10);
        at(v, &format!("{GET}/done"))["value"] = json!({"price": "product.total"});
    });
    let d = only_error(&l, "unknown-field", &format!("{GET}/done/value/price"));
    assert_help(d, "rows");
}

#[test]
fn index_columns_are_checked() {
    let l = load_with(|v| {
        at(v, "/entities/Product")["indexes"] = json!([{"fields": ["nmae"]}, {"fields": []}, {"fields": ["price", "price"], "unique": true}]);
    });
    let d = error(&l, "unknown-field", "/entities/Product/indexes/0/fields/0");
    assert_help(d, "name");
    error(&l, "invalid-value", "/entities/Product/indexes/1/fields");
    error(&l, "duplicate-name", "/entities/Product/indexes/2/fields/1");
    assert_eq!(l.errors.len(), 3, "{}", list(&l.errors));
    let l = load_with(|v| {
        at(v, "/entities/Product")["indexes"] = json!([{"fields": ["name"], "uniqe": true}]);
    });
    only_error(&l, "unknown-key", "/entities/Product/indexes/0/uniqe");
}

/// A read that filters or orders only on columns no index leads with is
/// warned about; an index leading with one of them (declared, or implied
/// by `id`, `unique`, `ref` and the owner) silences it.
#[test]
fn a_read_no_index_serves_is_unindexed() {
    let l = load_with(|v| {
        let read = at(v, &format!("{GET}/product"));
        read["where"] = json!({"name": "input.id", "price": {"gt": 0}, "or": [{"stock": 1}]});
        read["orderBy"] = json!("stock");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let w: Vec<&Diagnostic> = l
        .warnings
        .iter()
        .filter(|d| d.code == "unindexed-read")
        .collect();
    assert_eq!(w.len(), 1, "{}", list(&l.warnings));
    assert_eq!(w[0].path, format!("{GET}/product"));
    assert_message(w[0], "`name`, `price`, `stock`");
    assert_help(w[0], "\"indexes\": [{\"fields\": [\"name\"]}]");
    // Declared, leading with one of them: no warning (a later column does
    // not lead, so an index on [sku, price] would not do).
    for (fields, warned) in [
        (json!(["price", "name"]), false),
        (json!(["sku", "price"]), true),
    ] {
        let l = load_with(|v| {
            let read = at(v, &format!("{GET}/product"));
            read["where"] = json!({"name": "input.id", "price": {"gt": 0}});
            at(v, "/entities/Product")["indexes"] = json!([{"fields": fields}]);
        });
        let n = l
            .warnings
            .iter()
            .filter(|d| d.code == "unindexed-read")
            .count();
        assert_eq!(n, usize::from(warned), "{}", list(&l.warnings));
    }
    // The base spec reads by `id` and by the unique `sku`: no warning.
    assert!(load_with(|_| {}).warnings.is_empty());
}

/// `aggregate`: measures on fields of the types they take, groups on
/// fields that make groups, an order over groups or measures.
#[test]
fn aggregate_mistakes_are_found_where_they_are() {
    let node = |v: &mut Value, agg: Value| {
        let mut agg = agg;
        agg["type"] = json!("aggregate");
        agg["entity"] = json!("Product");
        agg["next"] = json!("done");
        with_product_node(v, agg);
        at(v, &format!("{GET}/done"))["value"] = json!({"ok": "true"});
    };
    let p = format!("{GET}/product");
    let l = load_with(|v| {
        node(
            v,
            json!({"measures": {"n": {"count": "*"}, "s": {"sum": "name"}}}),
        )
    });
    let d = only_error(&l, "expr-type", &format!("{p}/measures/s/sum"));
    assert_help(d, "integer");
    let l = load_with(|v| node(v, json!({"measures": {"n": {"avg": "*"}}})));
    only_error(&l, "invalid-value", &format!("{p}/measures/n/avg"));
    let l = load_with(|v| {
        node(
            v,
            json!({"measures": {"n": {"count": "*"}, "m": {"max": "stok"}}}),
        )
    });
    let d = only_error(&l, "unknown-field", &format!("{p}/measures/m/max"));
    assert_help(d, "stock");
    let l = load_with(|v| {
        node(
            v,
            json!({"groupBy": ["sku"], "measures": {"n": {"count": "*"}}, "orderBy": "total desc", "limit": 5}),
        )
    });
    only_error(&l, "unknown-field", &format!("{p}/orderBy/0"));
    let l = load_with(|v| {
        node(
            v,
            json!({"measures": {"n": {"count": "*", "sum": "price"}}}),
        )
    });
    only_error(&l, "invalid-value", &format!("{p}/measures/n"));
    let l = load_with(|v| {
        node(
            v,
            json!({"measures": {"n": {"count": "*"}}, "scope": "everyone"}),
        )
    });
    only_error(&l, "invalid-value", &format!("{p}/scope"));
    // Without groupBy the node binds one object of its measures.
    let l = load_with(|v| {
        node(v, json!({"measures": {"total": {"count": "*"}}}));
        at(v, &format!("{GET}/done"))["value"] = json!({"price": "product.n"});
    });
    let d = only_error(&l, "unknown-field", &format!("{GET}/done/value/price"));
    assert_help(d, "total");
    // Groups without a limit: unbounded-read (Yellow); with one, Green.
    let l = load_with(|v| {
        node(
            v,
            json!({"groupBy": ["sku"], "measures": {"n": {"count": "*"}}}),
        );
        at(v, &format!("{GET}/done"))["value"] = json!({"groups": "product"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    assert!(
        report
            .findings()
            .any(|f| f.code == "unbounded-read" && f.path == p)
    );
    let l = load_with(|v| {
        node(
            v,
            json!({"groupBy": ["sku"], "measures": {"n": {"count": "*"}, "most": {"max": "price"}},
                       "orderBy": "most desc", "limit": 10}),
        );
        at(v, &format!("{GET}/done"))["value"] = json!({"groups": "product"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    assert!(!risk::analyze(&l).findings().any(|f| f.path == p));
}

#[test]
fn on_delete_is_for_ref_fields_and_set_null_for_nullable_ones() {
    let l = load_with(|v| {
        at(v, "/entities/Product/fields/name")["onDelete"] = json!("cascade");
    });
    only_error(
        &l,
        "invalid-value",
        "/entities/Product/fields/name/onDelete",
    );
    let l = load_with(|v| {
        at(v, "/entities/Order/fields/product")["onDelete"] = json!("setNull");
    });
    let d = only_error(
        &l,
        "invalid-value",
        "/entities/Order/fields/product/onDelete",
    );
    assert_help(d, "nullable");
    let l = load_with(|v| {
        at(v, "/entities/Order/fields/product")["onDelete"] = json!("cascde");
    });
    let d = only_error(
        &l,
        "invalid-value",
        "/entities/Order/fields/product/onDelete",
    );
    assert_help(d, "cascade");
    let l = load_with(|v| {
        let f = at(v, "/entities/Order/fields/product");
        f["onDelete"] = json!("setNull");
        f["nullable"] = json!(true);
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// `include`: a `ref` on a field that is not a `ref` (or not there), a
/// `from` whose `by` is not a `ref` to the read entity, a name that is a
/// field, nesting past three levels, `where` on a `ref` include: spec
/// errors at their pointers, with "did you mean". Names of includes are
/// fields of the bound rows.
#[test]
fn includes_are_checked() {
    let read = "/tools/get_product/flow/nodes/product";
    let with = |include: Value| {
        load_with(move |v| {
            at(v, "/tools/get_product/flow/nodes/product")["include"] = include;
        })
    };
    // From Order's side, a read of orders embedding their product is fine
    // (the product may be gone: a guard proves it is there).
    let l = load_with(|v| {
        let n = at(v, "/tools/get_product/flow/nodes/product");
        n["entity"] = json!("Order");
        n["include"] = json!({"product_row": {"ref": "product"}});
        at(v, "/tools/get_product/flow/nodes/done")["value"] =
            json!({"price": "has(product.product_row) ? product.product_row.price : 0"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let l = load_with(|v| {
        let n = at(v, "/tools/get_product/flow/nodes/product");
        n["entity"] = json!("Order");
        n["include"] = json!({"product_row": {"ref": "prodct"}});
        at(v, "/tools/get_product/flow/nodes/done")["value"] = json!({"n": "product.quantity"});
    });
    let d = only_error(
        &l,
        "unknown-field",
        &format!("{read}/include/product_row/ref"),
    );
    assert_help(d, "product");
    let l = load_with(|v| {
        let n = at(v, "/tools/get_product/flow/nodes/product");
        n["entity"] = json!("Order");
        n["include"] = json!({"q": {"ref": "quantity"}});
        at(v, "/tools/get_product/flow/nodes/done")["value"] = json!({"n": "product.quantity"});
    });
    let d = only_error(&l, "invalid-value", &format!("{read}/include/q/ref"));
    assert_message(d, "not a `ref` field");
    // Orders of a product: fine with a limit; `by` must be a ref to Product.
    let l = with(
        json!({"orders": {"from": "Order", "by": "product", "limit": 5,
                                    "where": {"quantity": {"gt": "0"}}, "orderBy": "created_at desc"}}),
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let l = with(json!({"orders": {"from": "Order", "by": "quantity", "limit": 5}}));
    let d = only_error(&l, "invalid-value", &format!("{read}/include/orders/by"));
    assert_help(d, "product");
    let l = with(json!({"orders": {"from": "Ordr", "by": "product", "limit": 5}}));
    let d = only_error(&l, "unknown-entity", &format!("{read}/include/orders/from"));
    assert_help(d, "Order");
    let l = with(
        json!({"orders": {"from": "Order", "by": "product", "limit": 5,
                                    "where": {"quantty": "1"}}}),
    );
    only_error(
        &l,
        "unknown-field",
        &format!("{read}/include/orders/where/quantty"),
    );
    let l = with(
        json!({"orders": {"from": "Order", "by": "product", "limit": 5,
                                    "orderBy": "quantty"}}),
    );
    only_error(
        &l,
        "unknown-field",
        &format!("{read}/include/orders/orderBy/0"),
    );
    // The name of a field of the read entity.
    let l = with(json!({"stock": {"from": "Order", "by": "product", "limit": 5}}));
    only_error(&l, "duplicate-name", &format!("{read}/include/stock"));
    // Neither `ref` nor `from`; `where` on a `ref` include.
    let l = with(json!({"orders": {"by": "product"}}));
    only_error(&l, "missing-key", &format!("{read}/include/orders"));
    let l = load_with(|v| {
        let n = at(v, "/tools/get_product/flow/nodes/product");
        n["entity"] = json!("Order");
        n["include"] = json!({"p": {"ref": "product", "where": {"price": "1"}}});
        at(v, "/tools/get_product/flow/nodes/done")["value"] = json!({"n": "product.quantity"});
    });
    only_error(&l, "unknown-key", &format!("{read}/include/p/where"));
    // Four levels.
    let deep = json!({"orders": {"from": "Order", "by": "product", "limit": 2, "include": {
        "p": {"ref": "product", "include": {
            "o": {"from": "Order", "by": "product", "limit": 2, "include": {
                "p2": {"ref": "product"}}}}}}}});
    let l = with(deep);
    only_error(
        &l,
        "invalid-value",
        &format!("{read}/include/orders/include/p/include/o/include"),
    );
    // An include name that is not one, in an expression.
    let l = load_with(|v| {
        let n = at(v, "/tools/get_product/flow/nodes/product");
        n["entity"] = json!("Order");
        n["include"] = json!({"product_row": {"ref": "product"}});
        at(v, "/tools/get_product/flow/nodes/done")["value"] =
            json!({"price": "product.product_rw"});
    });
    only_error(
        &l,
        "unknown-field",
        "/tools/get_product/flow/nodes/done/value/price",
    );
}

/// An include of a list without `limit` is Yellow `unbounded-read`, and
/// its fix adds one at the include.
#[test]
fn an_include_without_limit_is_an_unbounded_read() {
    let l = load_with(|v| {
        at(v, "/tools/get_product/flow/nodes/product")["include"] =
            json!({"orders": {"from": "Order", "by": "product"}});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = sinew_core::risk::analyze(&l);
    let f = report
        .findings()
        .find(|f| f.code == "unbounded-read")
        .expect("unbounded-read");
    assert_eq!(f.tool, "get_product");
    assert!(f.message.contains("as `orders`"), "{}", f.message);
    let patch = serde_json::to_string(&f.fix).unwrap();
    assert!(
        patch.contains("/tools/get_product/flow/nodes/product/include/orders/limit"),
        "{patch}"
    );
}

/// `owner: {"ref": …}`: a `ref` field, to an entity with an owner, at
/// most three hops, no circle; not both `field` and `ref`.
#[test]
fn owner_through_a_reference_is_checked() {
    let owned = |v: &mut Value| {
        at(v, "/entities/Product")["fields"]["maker"] = json!({"type": "string"});
        at(v, "/entities/Product")["owner"] = json!({"field": "maker"});
    };
    let l = load_with(|v| {
        owned(v);
        at(v, "/entities/Order")["owner"] = json!({"ref": "product", "exempt": ["staff"]});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let l = load_with(|v| {
        owned(v);
        at(v, "/entities/Order")["owner"] = json!({"ref": "quantity"});
    });
    let d = only_error(&l, "invalid-value", "/entities/Order/owner/ref");
    assert_help(d, "product");
    let l = load_with(|v| {
        owned(v);
        at(v, "/entities/Order")["owner"] = json!({"ref": "prodct"});
    });
    only_error(&l, "unknown-field", "/entities/Order/owner/ref");
    // The referenced entity has no owner.
    let l = load_with(|v| {
        at(v, "/entities/Order")["owner"] = json!({"ref": "product"});
    });
    let d = only_error(&l, "invalid-value", "/entities/Order/owner/ref");
    assert_message(d, "has no owner");
    // Both keys.
    let l = load_with(|v| {
        owned(v);
        at(v, "/entities/Order")["owner"] = json!({"ref": "product", "field": "quantity"});
    });
    error(&l, "invalid-value", "/entities/Order/owner");
    // A circle: Product owned through Order, Order through Product.
    let l = load_with(|v| {
        at(v, "/entities/Product")["fields"]["last"] =
            json!({"type": "ref", "entity": "Order", "nullable": true});
        at(v, "/entities/Product")["owner"] = json!({"ref": "last"});
        at(v, "/entities/Order")["owner"] = json!({"ref": "product"});
    });
    let d = error(&l, "invalid-value", "/entities/Order/owner/ref");
    assert_message(d, "circle");
    // Four hops: D → C → B → A → Product (owned by a field).
    let l = load_with(|v| {
        owned(v);
        let e = at(v, "/entities");
        for (name, to) in [("A", "Product"), ("B", "A"), ("C", "B"), ("D", "C")] {
            e[name] = json!({"fields": {"up": {"type": "ref", "entity": to}},
                             "owner": {"ref": "up"}});
        }
    });
    let d = only_error(&l, "invalid-value", "/entities/D/owner/ref");
    assert_message(d, "more than 3 hops");
}

// ---------------------------------------------------------------------------
// `foreach` (format 0.2): its names, its scope, its row impact.

/// The base's order creation as a loop over `input.lines` inside the
/// transaction: one order per line, collecting each order's id.
fn with_loop(v: &mut Value) {
    let body = at(v, BODY);
    body["order"] = json!({
        "type": "foreach", "items": "input.lines", "as": "line", "maxItems": 20,
        "body": {"entry": "one", "nodes": {
            "one": {"type": "create", "entity": "Order",
                    "values": {"product": "product.id", "quantity": "line.quantity"}}
        }},
        "collect": "{'order': one.id, 'at': line_index}",
        "next": "take"
    });
    at(v, &format!("{PLACE}/notify"))["args"] = json!({"orders": "order"});
    at(v, &format!("{PLACE}/done"))["value"] = json!({"orders": "order"});
}

#[test]
fn a_loop_is_green_and_its_names_are_in_scope_inside() {
    let mut v = base();
    with_loop(&mut v);
    assert_clean_and_green(&v);
}

#[test]
fn what_a_loop_body_binds_is_gone_after_it() {
    let l = load_with(|v| {
        with_loop(v);
        at(v, &format!("{PLACE}/done"))["value"] = json!({"orders": "one.id"});
    });
    let d = only_error(&l, "expr-scope", &format!("{PLACE}/done/value/orders"));
    assert_message(d, "inside the body of the `foreach` `order`");
}

#[test]
fn a_loop_element_is_not_in_scope_after_the_loop() {
    let l = load_with(|v| {
        with_loop(v);
        at(v, &format!("{PLACE}/done"))["value"] = json!({"n": "line_index"});
    });
    only_error(&l, "expr-scope", &format!("{PLACE}/done/value/n"));
}

#[test]
fn a_loop_name_must_not_hide_another() {
    for (name, what) in [
        ("product", "node `product`"),
        ("input", "every expression has"),
    ] {
        let l = load_with(|v| {
            with_loop(v);
            at(v, &format!("{BODY}/order"))["as"] = json!(name);
            at(v, &format!("{BODY}/order"))["collect"] = json!("one.id");
            at(v, &format!("{BODY}/order/body/nodes/one/values"))["quantity"] = json!("1");
        });
        let d = error(&l, "duplicate-name", &format!("{BODY}/order/as"));
        assert_message(d, what);
    }
    // `<as>_index` counts too.
    let l = load_with(|v| {
        with_loop(v);
        at(v, &format!("{BODY}/order"))["as"] = json!("take");
        at(v, &format!("{BODY}/order"))["collect"] = json!("one.id");
        at(v, &format!("{BODY}/order/body/nodes/one/values"))["quantity"] = json!("1");
    });
    error(&l, "duplicate-name", &format!("{BODY}/order/as"));
}

#[test]
fn a_loop_needs_max_items() {
    let l = load_with(|v| {
        with_loop(v);
        remove(v, &format!("{BODY}/order"), "maxItems");
    });
    let d = error(&l, "missing-key", &format!("{BODY}/order"));
    assert_message(d, "`maxItems`");
    let l = load_with(|v| {
        with_loop(v);
        at(v, &format!("{BODY}/order"))["maxItems"] = json!(0);
    });
    error(&l, "invalid-value", &format!("{BODY}/order/maxItems"));
}

#[test]
fn a_call_in_a_loop_cannot_name_a_compensation() {
    let l = load_with(|v| {
        let nodes = at(v, PLACE);
        nodes["notify"] = json!({
            "type": "foreach", "items": "input.emails", "as": "email", "maxItems": 5,
            "body": {"entry": "send", "nodes": {
                "send": {"type": "call", "external": "mailer", "operation": "send",
                         "args": {"to": "email"}, "timeoutMs": 2000, "retry": {"max": 3},
                         "compensate": "undo"},
                "undo": {"type": "call", "external": "mailer", "operation": "send",
                         "args": {"to": "email"}, "timeoutMs": 2000, "retry": {"max": 3}}
            }},
            "next": "done"
        });
    });
    let d = error(
        &l,
        "compensate-in-loop",
        &format!("{PLACE}/notify/body/nodes/send/compensate"),
    );
    assert_help(d, "onError");
}

/// A loop at the top level that writes is Red like any write outside a
/// transaction, and the fix wraps the loop itself.
#[test]
fn a_loop_that_writes_outside_a_transaction_is_red_and_the_fix_wraps_it() {
    let mut v = base();
    with_loop(&mut v);
    // Take the loop out of the transaction, to the top level.
    let lp = at(&mut v, BODY)
        .as_object_mut()
        .unwrap()
        .shift_remove("order")
        .unwrap();
    at(&mut v, &format!("{BODY}/take"))["where"] = json!({"id": "product.id"});
    at(&mut v, PLACE)["loop"] = lp;
    at(&mut v, &format!("{PLACE}/loop"))["next"] = json!("save");
    at(&mut v, &format!("{PLACE}/product"))["next"] = json!("loop");
    at(&mut v, "/tools/place_order/flow/nodes/save/body")["entry"] = json!("take");
    at(&mut v, &format!("{PLACE}/notify"))["args"] = json!({"orders": "loop"});
    at(&mut v, &format!("{PLACE}/done"))["value"] = json!({"orders": "loop"});
    let text = serde_json::to_string_pretty(&v).unwrap();
    let l = load_text(&text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    let f = report
        .findings()
        .find(|f| f.code == "write-outside-transaction")
        .unwrap_or_else(|| panic!("{}", report.to_json()));
    assert_eq!(f.node.as_deref(), Some("one"));
    assert_eq!(report.level, Level::Red);
    let patch = f.fix.patch.clone().expect("a mechanical fix");
    let mut fixed = v.clone();
    sinew_core::patch::apply(&mut fixed, &patch).unwrap();
    let fixed_text = serde_json::to_string_pretty(&fixed).unwrap();
    let l = load_text(&fixed_text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    assert_eq!(risk::check(&fixed_text).level, Level::Green);
}

/// A write in a loop may change `maxItems` rows (times an update's
/// `limit`): above `maxRowsPerWrite` it is `high-row-impact`.
#[test]
fn writes_in_a_loop_multiply_by_max_items() {
    let mut v = base();
    with_loop(&mut v);
    at(&mut v, &format!("{BODY}/order"))["maxItems"] = json!(101);
    let text = serde_json::to_string_pretty(&v).unwrap();
    let l = load_text(&text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    let f = report
        .findings()
        .find(|f| f.code == "high-row-impact")
        .unwrap_or_else(|| panic!("{}", report.to_json()));
    assert_eq!(f.node.as_deref(), Some("one"));
    assert!(f.message.contains("101"), "{}", f.message);
    assert_eq!(report.level, Level::Yellow);
    // 100 elements of one row each stay within the default 100.
    at(&mut v, &format!("{BODY}/order"))["maxItems"] = json!(100);
    assert_eq!(
        risk::check(&serde_json::to_string(&v).unwrap()).level,
        Level::Green
    );
    // An update of up to 10 rows in a loop of 20: 200.
    at(&mut v, &format!("{BODY}/order"))["maxItems"] = json!(20);
    at(&mut v, &format!("{BODY}/order/body/nodes"))["bump"] = json!({
        "type": "update", "entity": "Product", "where": {"price": {"gt": 0}}, "limit": 10,
        "set": {"stock": "row.stock + 1"}
    });
    at(&mut v, &format!("{BODY}/order/body/nodes/one"))["next"] = json!("bump");
    let report = risk::check(&serde_json::to_string(&v).unwrap());
    let j = report.to_json();
    assert!(j.contains("up to 200 `Product` rows"), "{j}");
    assert_eq!(report.level, Level::Yellow);
}

// ---------------------------------------------------------------------------
// Writes on many rows (format 0.2): `where` on transition and soft_delete,
// `orderBy` on update, `create` with `each`.

/// The base's order creation as one create per element of `input.lines`,
/// whose input schema bounds it with `maxItems`.
fn with_create_each(v: &mut Value, max_items: Option<u64>) {
    let mut lines = json!({"type": "array", "items": {
        "type": "object", "required": ["quantity"], "properties": {"quantity": {"type": "integer"}}
    }});
    if let Some(n) = max_items {
        lines["maxItems"] = json!(n);
    }
    at(v, "/tools/place_order")["input"] = json!({
        "type": "object",
        "required": ["sku", "quantity", "lines"],
        "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}, "lines": lines}
    });
    let order = at(v, &format!("{BODY}/order"));
    order["each"] = json!("input.lines");
    order["as"] = json!("line");
    order["values"] = json!({"product": "product.id", "quantity": "line.quantity"});
    at(v, &format!("{PLACE}/notify"))["args"] = json!({"n": "size(order)"});
    at(v, &format!("{PLACE}/done"))["value"] = json!({"orders": "order"});
}

#[test]
fn a_create_over_a_bounded_list_is_green() {
    let mut v = base();
    with_create_each(&mut v, Some(20));
    assert_clean_and_green(&v);
    // A `filter` or `map` of the list is no longer than it.
    for each in [
        "input.lines.filter(l, l.quantity > 0)",
        "input.lines.map(l, l).filter(l, l.quantity > 0)",
    ] {
        at(&mut v, &format!("{BODY}/order"))["each"] = json!(each);
        assert_clean_and_green(&v);
    }
}

#[test]
fn a_create_over_a_list_nothing_bounds_is_red_and_the_fix_bounds_the_input() {
    let mut v = base();
    with_create_each(&mut v, None);
    at(&mut v, &format!("{BODY}/order"))["each"] = json!("input.lines.filter(l, l.quantity > 0)");
    let text = serde_json::to_string_pretty(&v).unwrap();
    let report = risk::check(&text);
    assert_eq!(report.level, Level::Red, "{}", report.to_json());
    let f = report
        .findings()
        .find(|f| f.code == "unbounded-update")
        .unwrap_or_else(|| panic!("{}", report.to_json()));
    assert_eq!(f.node.as_deref(), Some("order"));
    let patch = f.fix.patch.clone().expect("a mechanical fix");
    let mut fixed = v.clone();
    sinew_core::patch::apply(&mut fixed, &patch).unwrap();
    assert_eq!(
        fixed.pointer("/tools/place_order/input/properties/lines/maxItems"),
        Some(&json!(100))
    );
    assert_eq!(
        risk::check(&serde_json::to_string(&fixed).unwrap()).level,
        Level::Green
    );
    // A bound above maxRowsPerWrite is Yellow.
    let mut v = base();
    with_create_each(&mut v, Some(500));
    let report = risk::check(&serde_json::to_string(&v).unwrap());
    assert_eq!(report.level, Level::Yellow, "{}", report.to_json());
    assert!(report.to_json().contains("up to 500 `Order` rows"));
}

#[test]
fn a_create_over_a_list_names_its_element() {
    // `as` without `each`, and the other way round.
    let l = load_with(|v| at(v, &format!("{BODY}/order"))["as"] = json!("line"));
    let d = only_error(&l, "missing-key", &format!("{BODY}/order"));
    assert_message(d, "`as` needs `each`");
    // The element is not in scope after the create.
    let l = load_with(|v| {
        with_create_each(v, Some(20));
        at(v, &format!("{PLACE}/done"))["value"] = json!({"q": "line.quantity"});
    });
    only_error(&l, "expr-scope", &format!("{PLACE}/done/value/q"));
    // It must not hide a node.
    let l = load_with(|v| {
        with_create_each(v, Some(20));
        at(v, &format!("{BODY}/order"))["as"] = json!("product");
        at(v, &format!("{BODY}/order"))["values"] = json!({"quantity": "1"});
    });
    error(&l, "duplicate-name", &format!("{BODY}/order/as"));
    // A list of rows is not a row: `order` binds the created rows.
    let l = load_with(|v| {
        with_create_each(v, Some(20));
        at(v, &format!("{PLACE}/done"))["value"] = json!({"id": "order.id"});
    });
    let d = only_error(&l, "expr-type", &format!("{PLACE}/done/value/id"));
    assert_help(d, "order[0]");
}

/// A transition (or soft delete) of the rows a `where` matches: the same
/// row-impact rules as an update, and `id` or `where`, not both.
#[test]
fn a_transition_of_many_rows_is_bounded_like_an_update() {
    let sweep = |v: &mut Value, target: Value| {
        at(v, BODY)["pay"] = target;
        at(v, &format!("{BODY}/take"))["next"] = json!("pay");
    };
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "transition", "entity": "Order", "action": "pay",
                   "where": {"quantity": {"gt": 0}}, "orderBy": "quantity desc", "limit": 10}),
        )
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    assert_eq!(risk::analyze(&l).level, Level::Green);
    // No limit: Red, and the fix adds one.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "transition", "entity": "Order", "action": "pay",
                   "where": {"quantity": {"gt": 0}}}),
        )
    });
    let report = risk::analyze(&l);
    assert!(
        report.findings().any(|f| f.code == "unbounded-update"),
        "{}",
        report.to_json()
    );
    // A unique field pins one row; a nullable one does not (any number of
    // rows may hold null, and `eq` null matches them all).
    for (nullable, pinned) in [(false, true), (true, false)] {
        let l = load_with(|v| {
            at(v, "/entities/Product/fields/sku")["nullable"] = json!(nullable);
            sweep(
                v,
                json!({"type": "soft_delete", "entity": "Product", "where": {"sku": "input.sku"}}),
            )
        });
        assert!(l.errors.is_empty(), "{}", list(&l.errors));
        let report = risk::analyze(&l);
        assert_eq!(
            report.findings().any(|f| f.code == "unbounded-update"),
            !pinned,
            "nullable {nullable}: {}",
            report.to_json()
        );
    }
    // A limit above maxRowsPerWrite: Yellow.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "soft_delete", "entity": "Order",
                   "where": {"quantity": {"gt": 0}}, "limit": 1000}),
        )
    });
    let report = risk::analyze(&l);
    assert!(report.findings().any(|f| f.code == "high-row-impact"));
    assert_eq!(report.level, Level::Yellow);
    // `id` and `where` together.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "transition", "entity": "Order", "action": "pay",
                   "id": "order.id", "where": {"quantity": 1}}),
        )
    });
    only_error(&l, "invalid-value", &format!("{BODY}/pay/id"));
    // `limit` without `where`.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "soft_delete", "entity": "Order", "id": "order.id", "limit": 3}),
        )
    });
    only_error(&l, "invalid-value", &format!("{BODY}/pay/limit"));
    // Unknown fields in `where` and `orderBy` are found.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "transition", "entity": "Order", "action": "pay",
                   "where": {"qty": 1}, "orderBy": "amount", "limit": 5}),
        )
    });
    error(&l, "unknown-field", &format!("{BODY}/pay/orderBy/0"));
    // The node binds a list.
    let l = load_with(|v| {
        sweep(
            v,
            json!({"type": "transition", "entity": "Order", "action": "pay",
                   "where": {"quantity": 1}, "limit": 5}),
        );
        at(v, &format!("{PLACE}/done"))["value"] = json!({"s": "pay.status"});
    });
    only_error(&l, "expr-type", &format!("{PLACE}/done/value/s"));
}

/// `lock-order`: two single-row locks of one entity chosen by the call, in
/// one transaction; not when they name the same row, nor after a locking
/// read of the entity in id order.
#[test]
fn rows_locked_one_by_one_in_the_callers_order() {
    let second = |v: &mut Value| {
        at(v, BODY)["take2"] = json!({
            "type": "update", "entity": "Product", "where": {"id": "input.other"},
            "one": true, "set": {"stock": "row.stock + input.quantity"}
        });
        at(v, &format!("{BODY}/take"))["next"] = json!("take2");
    };
    let l = load_with(second);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    let f = report
        .findings()
        .find(|f| f.code == "lock-order")
        .unwrap_or_else(|| panic!("{}", report.to_json()));
    assert_eq!(f.node.as_deref(), Some("take2"));
    assert!(f.message.contains("`take` and `take2`"), "{}", f.message);
    assert_eq!(report.level, Level::Yellow);
    // `product.id` names the row read by `input.sku`; `product.id` again
    // names the same row: no order to choose.
    let l = load_with(|v| {
        second(v);
        at(v, &format!("{BODY}/take2"))["where"] = json!({"id": "product.id"});
    });
    assert!(!risk::analyze(&l).findings().any(|f| f.code == "lock-order"));
    // Both rows locked first, in id order: fine.
    let l = load_with(|v| {
        second(v);
        at(v, BODY)["both"] = json!({
            "type": "read", "entity": "Product", "lock": true, "orderBy": "id", "limit": 2,
            "where": {"id": {"in": "[product.id, input.other]"}}, "next": "order"
        });
        at(v, "/tools/place_order/flow/nodes/save/body")["entry"] = json!("both");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    let report = risk::analyze(&l);
    assert!(
        !report.findings().any(|f| f.code == "lock-order"),
        "{}",
        report.to_json()
    );
}

/// A spec with one tool `a` whose flow is `flow`: an `Item` entity with a
/// status, an email external, inputs `a`, `b` (ids) and `ids` (at most 5).
fn items_spec(flow: Value) -> String {
    serde_json::to_string_pretty(&json!({
      "sinew": "0.2",
      "name": "items",
      "roles": ["user"],
      "entities": {
        "Item": {
          "fields": {"qty": {"type": "integer"}},
          "status": {"initial": "open", "transitions": {"close": {"from": ["open"], "to": "closed"}}}
        }
      },
      "externals": {"mail": {"kind": "email", "operations": {"send": {"sideEffects": true}}}},
      "tools": {
        "a": {
          "trigger": {"http": {"method": "POST", "path": "/x"}},
          "auth": {"roles": ["user"]},
          "idempotencyKey": "request.idempotencyKey",
          "input": {
            "type": "object",
            "required": ["a", "b", "ids"],
            "properties": {
              "a": {"type": "string", "format": "uuid"},
              "b": {"type": "string", "format": "uuid"},
              "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 5}
            }
          },
          "flow": flow
        }
      }
    }))
    .unwrap()
}

/// A flow that runs `body` (entry `entry`) in a transaction, then returns.
fn in_transaction(entry: &str, body: Value) -> Value {
    json!({
      "entry": "w",
      "nodes": {
        "w": {"type": "transaction", "body": {"entry": entry, "nodes": body}, "next": "done"},
        "done": {"type": "return", "value": {}}
      }
    })
}

/// An `update` of the `Item` row `id` with `one`, then `next` (if any).
fn bump(id: &str, next: Option<&str>) -> Value {
    let mut v = json!({"type": "update", "entity": "Item", "where": {"id": id}, "one": true,
                       "set": {"qty": "row.qty + 1"}});
    if let Some(n) = next {
        v["next"] = json!(n);
    }
    v
}

/// The `lock-order` findings of a spec's text.
fn lock_order_findings(text: &str) -> Vec<risk::Finding> {
    let l = load_text(text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    risk::analyze(&l)
        .findings()
        .filter(|f| f.code == "lock-order")
        .cloned()
        .collect()
}

/// `lock-order` follows execution order, not the order of the keys of
/// `nodes`: the second lock taken is blamed, the read goes before the
/// first, and the fixed spec is Green (so fixing again does nothing).
#[test]
fn lock_order_follows_the_flow_not_the_keys() {
    let mut nodes = serde_json::Map::new();
    nodes.insert("second".into(), bump("input.b", None));
    nodes.insert("first".into(), bump("input.a", Some("second")));
    let text = items_spec(in_transaction("first", Value::Object(nodes)));
    let found = lock_order_findings(&text);
    let [f] = found.as_slice() else {
        panic!("{found:?}")
    };
    assert_eq!(f.node.as_deref(), Some("second"));
    assert!(f.message.contains("`first` and `second`"), "{}", f.message);
    assert!(
        f.fix.summary.contains("before `first`"),
        "{}",
        f.fix.summary
    );
    let fixed = risk::fix(&text);
    assert_eq!(
        fixed.report.level,
        Level::Green,
        "{}",
        fixed.report.to_json()
    );
    let v: Value = serde_json::from_str(&fixed.text).unwrap();
    let body = &v["tools"]["a"]["flow"]["nodes"]["w"]["body"];
    assert_eq!(body["entry"], json!("lock_item"));
    assert_eq!(body["nodes"]["lock_item"]["next"], json!("first"));
    assert!(risk::fix(&fixed.text).applied.is_empty());
}

/// Locks on the branches of a `switch`: the read goes before the branch,
/// where it runs before every lock; one fix is enough.
#[test]
fn lock_order_fix_before_branches_is_applied_once() {
    let text = items_spec(in_transaction(
        "s",
        json!({
          "s": {"type": "switch", "cases": [{"when": "input.a < input.b", "next": "x"}], "default": "y"},
          "x": bump("input.a", Some("y2")),
          "y2": bump("input.b", None),
          "y": bump("input.b", Some("x2")),
          "x2": bump("input.a", None)
        }),
    ));
    let found = lock_order_findings(&text);
    let [f] = found.as_slice() else {
        panic!("{found:?}")
    };
    assert_eq!(f.node.as_deref(), Some("y2"));
    assert!(
        f.fix.summary.contains("[input.a, input.b]"),
        "{}",
        f.fix.summary
    );
    let fixed = risk::fix(&text);
    assert_eq!(fixed.applied.len(), 1, "{:?}", fixed.applied);
    assert_eq!(
        fixed.report.level,
        Level::Green,
        "{}",
        fixed.report.to_json()
    );
    let again = risk::fix(&fixed.text);
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert_eq!(again.text, fixed.text);
}

/// Only a locking read in `id` order of every row the locks take (its
/// `where` only `id` `in` a list naming each, no smaller `limit`)
/// silences `lock-order`.
#[test]
fn lock_order_needs_a_read_that_locks_those_rows() {
    let with_read = |read: Value| {
        let mut read = read;
        read["type"] = json!("read");
        read["entity"] = json!("Item");
        read["orderBy"] = json!("id");
        read["lock"] = json!(true);
        read["next"] = json!("x");
        items_spec(in_transaction(
            "r",
            json!({"r": read, "x": bump("input.a", Some("y")), "y": bump("input.b", None)}),
        ))
    };
    // Rows that have nothing to do with the locks.
    let unrelated = with_read(json!({"where": {"qty": 5}, "limit": 3}));
    assert_eq!(lock_order_findings(&unrelated).len(), 1);
    // One of the two rows only.
    let one = with_read(json!({"where": {"id": {"in": "[input.a]"}}, "limit": 2}));
    assert_eq!(lock_order_findings(&one).len(), 1);
    // Both, but a limit that may leave one out.
    let short = with_read(json!({"where": {"id": {"in": "[input.a, input.b]"}}, "limit": 1}));
    assert_eq!(lock_order_findings(&short).len(), 1);
    // Both, and another condition that may leave one out.
    let narrowed =
        with_read(json!({"where": {"id": {"in": "[input.a, input.b]"}, "qty": 5}, "limit": 2}));
    assert_eq!(lock_order_findings(&narrowed).len(), 1);
    // Both rows, in id order: fine.
    let both = with_read(json!({"where": {"id": {"in": "[input.b, input.a]"}}, "limit": 2}));
    assert!(lock_order_findings(&both).is_empty());
}

/// A write pinned by `id` in a `foreach` changes one row per element, as
/// with `one`: above `maxRowsPerWrite` it is `high-row-impact`.
#[test]
fn pinned_writes_in_loops_count_one_row_per_element() {
    for one in [false, true] {
        for max in [100_000u64, 50] {
            let mut write = json!({"type": "update", "entity": "Item", "where": {"id": "it"},
                                   "set": {"qty": "2"}});
            if one {
                write["one"] = json!(true);
            }
            let text = items_spec(in_transaction(
                "f",
                json!({"f": {"type": "foreach", "items": "input.ids", "as": "it", "maxItems": max,
                             "body": {"entry": "c", "nodes": {"c": write}}}}),
            ));
            let l = load_text(&text);
            assert!(l.errors.is_empty(), "{}", list(&l.errors));
            let report = risk::analyze(&l);
            let impact = report
                .findings()
                .any(|f| f.code == "high-row-impact" && f.node.as_deref() == Some("c"));
            assert_eq!(
                impact,
                max > 100,
                "one {one}, maxItems {max}: {}",
                report.to_json()
            );
        }
    }
}

/// `external-in-transition`: a transition reached through the call's
/// `onError`, or on the next turn of the loop around it.
#[test]
fn effects_before_a_transition_on_error_and_on_the_next_turn() {
    let send = json!({"type": "call", "external": "mail", "operation": "send",
                      "timeoutMs": 100, "retry": {"max": 2}});
    let close = json!({"type": "transaction", "body": {"entry": "t", "nodes": {
        "t": {"type": "transition", "entity": "Item", "id": "input.a", "action": "close"}}}});
    let fires = |flow: Value| {
        let l = load_text(&items_spec(flow));
        assert!(l.errors.is_empty(), "{}", list(&l.errors));
        let report = risk::analyze(&l);
        report
            .findings()
            .any(|f| f.code == "external-in-transition" && f.node.as_deref() == Some("c"))
    };
    let mut on_error = send.clone();
    on_error["next"] = json!("done");
    on_error["onError"] = json!("w");
    let mut w = close.clone();
    w["next"] = json!("done");
    assert!(fires(json!({"entry": "c", "nodes": {
        "c": on_error, "w": w, "done": {"type": "return", "value": {}}}})));
    // The same call with no way to the transition: nothing.
    let mut alone = send.clone();
    alone["next"] = json!("done");
    assert!(!fires(json!({"entry": "c", "nodes": {
        "c": alone, "done": {"type": "return", "value": {}}}})));
    // In a loop: the transition before the call runs again on the next
    // element.
    let mut w = close.clone();
    w["next"] = json!("c");
    assert!(fires(json!({"entry": "f", "nodes": {
        "f": {"type": "foreach", "items": "input.ids", "as": "it", "maxItems": 5,
              "body": {"entry": "w", "nodes": {"w": w, "c": send}}, "next": "done"},
        "done": {"type": "return", "value": {}}}})));
}

/// What `sinew check` once called Green and then failed at run time: each
/// is now a type error with a pointer and a help.
#[test]
fn type_errors_are_found_before_deployment() {
    // A duration divided by a duration (a 500 on every call).
    let l = load_with(|v| {
        at(v, &format!("{PLACE}/done"))["value"] = json!({"order": "order.id", "hours": "(request.time - order.created_at) / duration('1h')"});
    });
    let d = only_error(&l, "expr-type", &format!("{PLACE}/done/value/hours"));
    assert_message(d, "`/` does not apply to a duration and a duration");
    assert_help(d, "getSeconds()");
    // A list of rows passed as a row id (a 404 that blamed the caller).
    let l = load_with(|v| {
        at(v, BODY)["pay"] =
            json!({"type": "transition", "entity": "Order", "id": "orders", "action": "pay"});
        at(v, BODY)["orders"] =
            json!({"type": "read", "entity": "Order", "limit": 5, "next": "pay"});
        at(v, &format!("{BODY}/take"))["next"] = json!("orders");
    });
    let d = error(&l, "expr-type", &format!("{BODY}/pay/id"));
    assert_help(d, "orders[0]");
    // A limit that is text (a 400 that blamed the caller).
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["one"] = json!(false);
        at(v, &format!("{GET}/product"))["limit"] = json!("'ten'");
        at(v, &format!("{GET}/done"))["value"] = json!({"n": "size(product)"});
    });
    error(&l, "expr-type", &format!("{GET}/product/limit"));
    // Text written into an integer field (a 422 that blamed the caller).
    let l = load_with(|v| {
        at(v, &format!("{BODY}/order/values"))["quantity"] = json!("input.sku");
        at(v, "/tools/place_order")["input"] = json!({
            "type": "object",
            "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}}
        });
    });
    let d = only_error(&l, "expr-type", &format!("{BODY}/order/values/quantity"));
    assert_message(
        d,
        "`Order.quantity` is an integer field, but this is a string",
    );
    assert_help(d, "int(input.sku)");
    // And conditions that are not bools, by their type.
    let l = load_with(|v| {
        at(v, &format!("{PLACE}/product"))["next"] = json!("check");
        at(v, PLACE)["check"] = json!({"type": "assert", "that": "product.price", "next": "save"});
    });
    let d = error(&l, "expr-type", &format!("{PLACE}/check/that"));
    assert_message(d, "an int");
}

/// A `where` comparing a column with a value of another type matches no
/// row, silently: refused before deployment.
#[test]
fn a_where_operand_of_another_type_than_its_column() {
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["where"] = json!({"price": "input.id"});
    });
    let d = only_error(&l, "expr-type", &format!("{GET}/product/where/price/eq"));
    assert_message(
        d,
        "`Product.price` is an integer field, and this is a string",
    );
    assert_help(d, "int(input.id)");
    // Numbers compare across int and double; timestamps with text.
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["where"] =
            json!({"id": "input.id", "price": {"lt": "2.5 * 100.0"}});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // `in` and `notIn`: a member of another type than the column, in a
    // JSON list, a literal list or an input array.
    let with_names = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["names"] = json!({"type": "array", "items": {"type": "string"}});
        input["required"] = json!(["id", "names"]);
    };
    for (operand, shown) in [
        (json!({"in": ["'a'", "'b'"]}), "'a'"),
        (json!({"in": "['a', 'b']"}), "['a', 'b']"),
        (json!({"notIn": "input.names"}), "input.names"),
        (json!({"in": [1, true]}), "true"),
    ] {
        let op = operand.as_object().unwrap().keys().next().unwrap().clone();
        let l = load_with(|v| {
            with_names(v);
            at(v, &format!("{GET}/product"))["where"] = json!({"price": operand});
        });
        let d = only_error(&l, "expr-type", &format!("{GET}/product/where/price/{op}"));
        assert_message(
            d,
            &format!("in `{shown}`: `Product.price` is an integer field"),
        );
    }
    let l = load_with(|v| {
        with_names(v);
        at(v, &format!("{GET}/product"))["where"] = json!({
            "price": {"in": [1, 2.5, "size('abc')"]}, "name": {"in": "input.names"},
            "sku": {"notIn": "['a', input.id]"}
        });
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// An optional input property (or a nullable field) used where null fails
/// is a type error unless something proves it is there: `has()` or
/// `!= null` in a `&&`, `||` or `?:`, a filter's `when`, an `if` branch,
/// an `assert` that ran.
#[test]
fn nullable_values_need_a_guard() {
    let with_input = |v: &mut Value| {
        at(v, "/tools/place_order")["input"] = json!({
            "type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"},
                           "note": {"type": "string"}}
        });
    };
    let l = load_with(|v| {
        with_input(v);
        at(v, &format!("{PLACE}/done"))["value"] = json!({"n": "input.note.size()"});
    });
    let d = only_error(&l, "expr-type", &format!("{PLACE}/done/value/n"));
    assert_message(d, "`input.note` may be null");
    assert_help(d, "has(input.note)");
    // Guarded in the expression.
    for guarded in [
        "has(input.note) ? input.note.size() : 0",
        "input.note != null ? input.note.size() : 0",
        "input.note == null ? 0 : input.note.size()",
        "!has(input.note) ? 0 : input.note.size()",
    ] {
        let l = load_with(|v| {
            with_input(v);
            at(v, &format!("{PLACE}/done"))["value"] = json!({"n": guarded});
        });
        assert!(l.errors.is_empty(), "{guarded}: {}", list(&l.errors));
    }
    let l = load_with(|v| {
        with_input(v);
        at(v, &format!("{PLACE}/done"))["value"] =
            json!({"n": "has(input.note) && input.note.size() > 3"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // Guarded by the flow: an `if` branch only reached when it holds.
    let l = load_with(|v| {
        with_input(v);
        at(v, &format!("{PLACE}/notify"))["next"] = json!("noted");
        at(v, PLACE)["noted"] =
            json!({"type": "if", "if": "has(input.note)", "then": "long", "else": "done"});
        at(v, PLACE)["long"] = json!({"type": "return", "value": {"n": "input.note.size()"}});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // The other branch is not guarded.
    let l = load_with(|v| {
        with_input(v);
        at(v, &format!("{PLACE}/notify"))["next"] = json!("noted");
        at(v, PLACE)["noted"] =
            json!({"type": "if", "if": "has(input.note)", "then": "done", "else": "long"});
        at(v, PLACE)["long"] = json!({"type": "return", "value": {"n": "input.note.size()"}});
    });
    error(&l, "expr-type", &format!("{PLACE}/long/value/n"));
    // A required property needs no guard.
    let l = load_with(|v| {
        with_input(v);
        at(v, &format!("{PLACE}/done"))["value"] = json!({"n": "input.sku.size()"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // A condition that may be null (an `if`, `&&`, `||`, `?:`'s condition)
    // fails on the calls that leave it out; guarded, it passes.
    let with_flag = |v: &mut Value| {
        at(v, "/tools/place_order")["input"] = json!({
            "type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"},
                           "rush": {"type": "boolean"}, "size": {"type": "integer"}}
        });
    };
    let branching = |cond: &str| {
        load_with(|v| {
            with_flag(v);
            at(v, &format!("{PLACE}/notify"))["next"] = json!("rushed");
            at(v, PLACE)["rushed"] =
                json!({"type": "if", "if": cond, "then": "done", "else": "done"});
        })
    };
    for (cond, message) in [
        (
            "input.rush",
            "a bool is needed here, but `input.rush` may be null",
        ),
        (
            "input.rush && input.quantity > 1",
            "`input.rush` may be null here",
        ),
        (
            "input.quantity > 1 || input.rush",
            "`input.rush` may be null here",
        ),
        ("(input.rush ? 1 : 2) > 1", "`input.rush` may be null here"),
    ] {
        let l = branching(cond);
        let d = only_error(&l, "expr-type", &format!("{PLACE}/rushed/if"));
        assert_message(d, message);
    }
    for cond in [
        "has(input.rush) && input.rush",
        "input.rush != null && input.rush",
        "!has(input.rush) || input.rush",
        "input.rush == true",
    ] {
        let l = branching(cond);
        assert!(l.errors.is_empty(), "{cond}: {}", list(&l.errors));
    }
}

/// Null written into a column that does not take it would fail every call
/// that leaves the input out: refused, unless the field is `nullable`.
#[test]
fn an_optional_input_written_into_a_column_that_takes_no_null() {
    let l = load_with(|v| {
        at(v, "/tools/place_order")["input"] = json!({
            "type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}}
        });
        at(v, &format!("{BODY}/take/set"))["stock"] = json!("row.stock - 1");
        at(v, &format!("{PLACE}/done"))["value"] = json!({"order": "order.id"});
    });
    let d = only_error(&l, "expr-type", &format!("{BODY}/order/values/quantity"));
    assert_message(d, "`Order.quantity` does not take null");
    assert_help(d, "nullable");
    let l = load_with(|v| {
        at(v, "/tools/place_order")["input"] = json!({
            "type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}}
        });
        at(v, &format!("{BODY}/take/set"))["stock"] = json!("row.stock - 1");
        at(v, &format!("{PLACE}/done"))["value"] = json!({"order": "order.id"});
        at(v, "/entities/Order/fields/quantity")["nullable"] = json!(true);
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// `type(x)` and the type names check clean and run: a type compares with
/// a type name, and is written as its name.
#[test]
fn type_values_check_clean_and_run() {
    let spec = r#"{"sinew": "0.2", "name": "types", "tools": {"kind": {
        "trigger": {"http": {"method": "POST", "path": "/kind"}},
        "auth": {"public": true},
        "input": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": {
            "is_int": "type(input.n) == int",
            "name": "type(input.n)",
            "time": "type(request.time) == google.protobuf.Timestamp",
            "meta": "type(int) == type"}}}}}}}"#;
    assert_clean_and_green(&serde_json::from_str(spec).unwrap());
    let bundle = sinew_core::bundle::Bundle::load(spec).unwrap();
    let mut store = sinew_core::ports::memory::MemoryStorage::new();
    let mut clock = sinew_core::ports::memory::FixedClock::new(1_767_225_600_000);
    let mut ext = sinew_core::ports::script::ScriptedExternal::new();
    let r = sinew_core::contract::execute(
        &bundle,
        &sinew_core::contract::Request {
            tool: "kind".into(),
            input: serde_json::json!({"n": 3}),
            auth: None,
            id: "t-1".into(),
            idempotency_key: None,
            scheduled: None,
        },
        &mut store,
        &mut clock,
        &mut ext,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        serde_json::json!({"is_int": true, "name": "int", "time": true, "meta": true})
    );
}

/// A `foreach` over `items` (elements named `name`, at most `max`) that
/// reads the product of each sku, then goes on to `done`.
fn foreach_reading_products(items: &str, name: &str, max: u64) -> Value {
    json!({"type": "foreach", "items": items, "as": name, "maxItems": max,
           "body": {"entry": "r", "nodes": {"r": {"type": "read", "entity": "Product",
             "where": {"sku": name}, "limit": 1}}},
           "next": "done"})
}

/// `get_product`'s input with `counts` (an array of integers) and `factor`
/// (a `number`), both required.
fn counts_and_factor(v: &mut Value) {
    let input = &mut at(v, "/tools/get_product")["input"];
    input["properties"]["counts"] = json!({"type": "array", "items": {"type": "integer"}});
    input["properties"]["factor"] = json!({"type": "number"});
    input["required"] = json!(["counts", "factor"]);
}

/// `get_product` answering `{"x": expr}` (its `done` node), after `setup`:
/// each `refused` expression must be exactly one `expr-type` error there
/// whose message contains its text, each `clean` one no error at all. The
/// refused ones' diagnostics, in order, for more assertions.
fn judge(setup: impl Fn(&mut Value), refused: &[(&str, &str)], clean: &[&str]) -> Vec<Diagnostic> {
    let answering = |expr: &str| {
        load_with(|v| {
            setup(v);
            at(v, &format!("{GET}/done"))["value"] = json!({"x": expr});
        })
    };
    let mut found = Vec::new();
    for (expr, message) in refused {
        let l = answering(expr);
        let d = only_error(&l, "expr-type", &format!("{GET}/done/value/x"));
        assert_message(d, message);
        found.push(d.clone());
    }
    for expr in clean {
        let l = answering(expr);
        assert!(l.errors.is_empty(), "{expr}: {}", list(&l.errors));
    }
    found
}

/// `get_product`'s first node (`product`) replaced by `node`, which leads
/// to `done` (and its `onError` target gone).
fn with_product_node(v: &mut Value, node: Value) {
    at(v, GET)["product"] = node;
    at(v, GET).as_object_mut().unwrap().remove("missing");
}

/// The base spec after `setup`, with `get_product`'s first node replaced
/// by `node` (which goes on to `done`, answering `{}`), loaded.
fn with_first_node(setup: impl FnOnce(&mut Value), node: Value) -> Loaded {
    load_with(|v| {
        setup(v);
        with_product_node(v, node);
        at(v, &format!("{GET}/done"))["value"] = json!({});
    })
}

/// A function called with arguments none of its forms takes fails on every
/// call that reaches it: refused before deployment, with the types, while
/// the forms it has pass.
#[test]
fn function_arguments_are_typed_before_deployment() {
    judge(
        |_| {},
        &[
            (
                "product.price.startsWith('1')",
                "`.startsWith()` does not apply to an int with a string",
            ),
            ("size(product.price)", "`size()` does not take an int"),
            (
                "product.name.charAt('0')",
                "`.charAt()` does not apply to a string with a string",
            ),
            (
                "request.time.getHours(2)",
                "`.getHours()` does not apply to a timestamp with an int",
            ),
            (
                "math.ceil(product.price)",
                "`math.ceil()` does not take an int",
            ),
            (
                "duration(product.price)",
                "`duration()` does not take an int",
            ),
            (
                "product.price.all(p, p > 0)",
                "`all` applies to a list or a map, not an int",
            ),
        ],
        &[],
    );
    // A required `number` input property `factor`: an integer when the
    // value sent is whole, so a function that takes only doubles is
    // refused, with the reason; what the forms take is clean.
    let with_factor = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["factor"] = json!({"type": "number"});
        input["required"] = json!(["factor"]);
    };
    judge(
        with_factor,
        &[(
            "math.round(input.factor)",
            "a `number` input is an integer when the value sent is whole",
        )],
        &[
            "product.name.startsWith('T') && size(product.name) > 2",
            "product.name.substring(0, 2).upperAscii()",
            "math.ceil(double(product.price) / 3.0)",
            "math.abs(input.factor)",
            "request.time.getHours('Europe/Paris') + duration('90m').getMinutes()",
            "timestamp(product.price)",
            "[1, 2].all(p, p > 0)",
            "dyn(product.price).startsWith('1')",
        ],
    );
}

/// A macro's variable over a read's rows is a row of that entity: its
/// columns have their types (a list's index is an int), so a mistake
/// inside `map`, `filter` or `all` is found before deployment.
#[test]
fn macro_variables_over_rows_are_typed() {
    judge(
        |v| {
            at(v, &format!("{GET}/product"))["one"] = json!(false);
            at(v, &format!("{GET}/product"))["limit"] = json!(5);
        },
        &[
            (
                "product.map(p, p.price + 'x')",
                "`+` does not apply to an int and a string",
            ),
            (
                "product.filter(p, p.name > 3)",
                "`>` does not apply to a string and an int",
            ),
            (
                "product.all(i, p, i.startsWith('a'))",
                "`.startsWith()` does not apply to an int",
            ),
            (
                "product.exists(p, p.price.contains('1'))",
                "`.contains()` does not apply to an int",
            ),
            (
                "product.filter(p, p.price > 0).map(p, p.name - 1)",
                "`-` does not apply to a string and an int",
            ),
        ],
        &[
            "product.filter(p, p.price > 0).map(p, p.name.upperAscii())",
            "product.all(i, p, p.price >= 0 && i >= 0)",
            "product.exists(p, p.name.startsWith('T'))",
            "product.map(p, p.price * 2).filter(n, n > 10)",
            "{'a': 1}.all(k, k.startsWith('a'))",
        ],
    );
}

/// An input array's elements have the type its `items` gives, and an
/// input object's properties theirs: mistakes inside macros over them, or
/// on an indexed element, are type errors before deployment.
#[test]
fn input_array_elements_are_typed() {
    fn with_lines(v: &mut Value) {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["lines"] = json!({
            "type": "array", "maxItems": 10,
            "items": {"type": "object", "required": ["sku", "qty"],
                      "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}
        });
        input["properties"]["tags"] = json!({"type": "array", "items": {"type": "string"}});
        input["required"] = json!(["lines", "tags"]);
    }
    // Closed elements: a property they do not declare is never there.
    judge(
        |v| {
            with_lines(v);
            at(v, "/tools/get_product")["input"]["properties"]["lines"]["items"]["additionalProperties"] =
                json!(false);
        },
        &[
            (
                "input.lines.map(l, l.qty + l.sku)",
                "`+` does not apply to an int and a string",
            ),
            (
                "input.tags.exists(t, t > 3)",
                "`>` does not apply to a string and an int",
            ),
            (
                "input.lines[0].sku * 2",
                "`*` does not apply to a string and an int",
            ),
            (
                "input.lines.filter(l, l.qty > 0).map(l, l.sku.getHours())",
                "`.getHours()` does not apply to a string",
            ),
            (
                "math.ceil(input.lines[0].qty)",
                "`math.ceil()` does not take an int",
            ),
            (
                "input.lines.map(l, l.skuu)",
                "the input schema declares no property `skuu` here",
            ),
        ],
        &[],
    );
    judge(
        with_lines,
        // (Not declared, and the schema lets other properties through:
        // there on some calls only.)
        &[(
            "input.lines.map(l, l.extra)",
            "`l.extra` is optional in the input schema",
        )],
        &[
            "input.lines.map(l, l.qty * 2).filter(n, n > 1)",
            "input.tags.all(t, t.startsWith('vip-'))",
            "input.lines.exists(l, l.sku == 'A' && l.qty > 0)",
            "size(input.lines[0].sku) + input.lines[0].qty",
            "input.lines.exists(l, has(l.extra))",
            "input.lines.map(l, has(l.extra) ? l.extra : null)",
        ],
    );
}

/// A `create` with `each` (and a `foreach`) over an input array binds its
/// element with the type the array's `items` gives, and `<as>_index` as an
/// int.
#[test]
fn loop_elements_over_input_arrays_are_typed() {
    for (value, message) in [
        (
            "line.quantity * 'a'",
            "`*` does not apply to an int and a string",
        ),
        (
            "string(line_index)",
            "`Order.quantity` is an integer field, but this is a string",
        ),
        ("size(line.quantity)", "`size()` does not take an int"),
    ] {
        let l = load_with(|v| {
            with_create_each(v, Some(20));
            at(v, &format!("{BODY}/order/values"))["quantity"] = json!(value);
        });
        let d = only_error(&l, "expr-type", &format!("{BODY}/order/values/quantity"));
        assert_message(d, message);
    }
    for value in ["line.quantity + line_index", "line_index"] {
        let mut v = base();
        with_create_each(&mut v, Some(20));
        at(&mut v, &format!("{BODY}/order/values"))["quantity"] = json!(value);
        assert_clean_and_green(&v);
    }
}

/// A property an input object (or an array's element) does not require
/// may be left out, and reading an absent key fails: refused unless
/// `has()` proves it first.
#[test]
fn optional_properties_inside_input_objects_need_has() {
    let found = judge(
        |v| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["address"] = json!({
                "type": "object", "required": ["city"],
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}
            });
            input["properties"]["notes"] = json!({
                "type": "array", "maxItems": 5,
                "items": {"type": "object", "properties": {"text": {"type": "string"}}}
            });
            input["required"] = json!(["address", "notes"]);
        },
        &[
            (
                "input.address.zip",
                "`input.address.zip` is optional in the input schema",
            ),
            (
                "input.notes.map(n, n.text)",
                "`n.text` is optional in the input schema",
            ),
        ],
        &[
            "input.address.city",
            "has(input.address.zip) ? input.address.zip : ''",
            "input.notes.map(n, has(n.text) ? n.text : '')",
            "input.notes.filter(n, has(n.text) && n.text != '')",
        ],
    );
    for (d, path) in found.iter().zip(["input.address.zip", "n.text"]) {
        assert_help(d, &format!("has({path})"));
    }
}

/// The measures of an aggregate without `groupBy` have types (`count` and
/// `sum` ints, `avg` a number, `min`/`max` their field's type), and
/// `avg`, `min` and `max` are null over no row: using one where null
/// fails needs a guard.
#[test]
fn aggregate_measures_are_typed_and_may_be_null() {
    judge(
        |v| {
            with_product_node(
                v,
                json!({
                    "type": "aggregate", "entity": "Product", "next": "done",
                    "measures": {"n": {"count": "*"}, "total": {"sum": "price"},
                                 "mean": {"avg": "price"}, "top": {"max": "price"},
                                 "first": {"min": "name"}}
                }),
            );
        },
        &[
            ("product.mean * 2", "`product.mean` may be null here"),
            ("product.top + 1", "`product.top` may be null here"),
            (
                "product.first.upperAscii()",
                "`product.first` may be null here",
            ),
            (
                "product.n + 'x'",
                "`+` does not apply to an int and a string",
            ),
            (
                "product.first != null && product.first + 1 > 0",
                "`+` does not apply to a string and an int",
            ),
        ],
        &[
            "product.n + product.total",
            "product.mean != null ? product.mean * 2.0 : 0.0",
            "has(product.top) && product.top > 10",
            "product.first == null ? '' : product.first.upperAscii()",
        ],
    );
}

/// The rows a read embeds have their entity's types, down every level and
/// inside macros: a field no row has is refused wherever it is read
/// (`r[0].t.nope`, `rows.map(o, o.nope)`), and a `ref` include, null when
/// its row is gone or not the caller's, needs a guard before a field of it
/// is read.
#[test]
fn embedded_rows_and_macro_rows_are_typed() {
    let found = judge(
        |v| {
            with_product_node(
                v,
                json!({
                    "type": "read", "entity": "Order", "limit": 5, "next": "done",
                    "include": {"item": {"ref": "product"}}
                }),
            );
        },
        &[
            ("product.map(o, o.nope)", "`Order` has no field `nope`"),
            (
                "has(product[0].item) ? product[0].item.nope : 0",
                "`Product` has no field `nope`",
            ),
            (
                "product.map(o, has(o.item) ? o.item.nope : 0)",
                "`Product` has no field `nope`",
            ),
            (
                "product.map(o, o.quantity + 'x')",
                "`+` does not apply to an int and a string",
            ),
            ("product.map(o, o.item.price)", "`o.item` may be null here"),
            (
                "product[0].item.price",
                "`product[0].item` may be null here",
            ),
        ],
        &[
            "product.map(o, o.quantity * 2)",
            "has(product[0].item) ? product[0].item.price : 0",
            "product.map(o, has(o.item) ? o.item.price : 0)",
        ],
    );
    assert_help(&found[0], "quantity");
    let found = judge(
        |v| {
            at(v, &format!("{GET}/product"))["entity"] = json!("Order");
            at(v, &format!("{GET}/product"))["include"] = json!({"item": {"ref": "product"}});
        },
        &[("product.item.price + 1", "`product.item` may be null here")],
        &[
            "has(product.item) ? product.item.price : 0",
            "product.item != null ? product.item.name : ''",
        ],
    );
    assert_help(&found[0], "has(product.item)");
}

/// The groups of an aggregate with `groupBy` have types: each its
/// `groupBy` fields and its measures, nothing else, inside macros too.
#[test]
fn grouped_aggregates_are_typed() {
    let found = judge(
        |v| {
            with_product_node(
                v,
                json!({
                    "type": "aggregate", "entity": "Order", "groupBy": ["product"], "limit": 10,
                    "measures": {"n": {"count": "*"}, "units": {"sum": "quantity"},
                                 "most": {"max": "quantity"}},
                    "next": "done"
                }),
            );
        },
        &[
            ("product[0].unit", "a group of `product` has no `unit`"),
            (
                "product.map(g, g.n + 'x')",
                "`+` does not apply to an int and a string",
            ),
            (
                "product.map(g, g.product * 2)",
                "`*` does not apply to a string and an int",
            ),
        ],
        &[
            "product.map(g, g.units + g.most)",
            "product.filter(g, g.n > 1).map(g, g.product)",
            "size(product) > 0 ? product[0].units : 0",
        ],
    );
    assert_help(&found[0], "did you mean `units`?");
}

/// An external's HTTP shape is checked before deployment: its base URL,
/// its auth (one kind, a variable's name for the secret), each operation's
/// method, encoding and headers (none the host sets), and every `{arg}` of
/// a path given by each call.
#[test]
fn externals_that_speak_http_are_checked() {
    let with = |f: &dyn Fn(&mut Value)| load_with(|v| f(at(v, "/externals/mailer")));
    for (change, path, says) in [
        (
            json!({"baseUrl": "api.stripe.com"}),
            "/externals/mailer/baseUrl",
            "`api.stripe.com` is not a base URL",
        ),
        (
            json!({"baseUrl": "http://127.0.0.1:99999"}),
            "/externals/mailer/baseUrl",
            "`http://127.0.0.1:99999` is not a base URL",
        ),
        (
            json!({"baseUrl": "http://[::1"}),
            "/externals/mailer/baseUrl",
            "`http://[::1` is not a base URL",
        ),
        (
            json!({"baseUrl": "https://api.example.com:x/v1"}),
            "/externals/mailer/baseUrl",
            "is not a base URL",
        ),
        // Credentials in the URL: refused, saying where they go, and not
        // echoed.
        (
            json!({"baseUrl": "http://u:SECRETPASS@127.0.0.1:8080/v1"}),
            "/externals/mailer/baseUrl",
            "`http://…@127.0.0.1:8080/v1` is not a base URL: it has credentials in it (`user:password@`): credentials go in the external's `auth`",
        ),
        (
            json!({"auth": {"basic": {"user": "acct:1", "secret": "B"}}}),
            "/externals/mailer/auth/basic/user",
            "the basic-auth user `acct:1` contains `:`",
        ),
        (
            json!({"auth": {"bearer": {"secret": "sk_live_123 abc"}}}),
            "/externals/mailer/auth/bearer/secret",
            "is not an environment variable's name",
        ),
        (
            json!({"auth": {"bearer": {"secret": "A"}, "basic": {"user": "u", "secret": "B"}}}),
            "/externals/mailer/auth",
            "exactly one of `bearer`, `basic`, `header`",
        ),
        (
            json!({"auth": {"header": {"name": "Authorization", "secret": "A"}}}),
            "/externals/mailer/auth/header/name",
            "`Authorization` is set by the host",
        ),
    ] {
        let l = with(&|x: &mut Value| {
            for (k, v) in change.as_object().unwrap() {
                x[k] = v.clone();
            }
        });
        let d = only_error(&l, "invalid-value", path);
        assert_message(d, says);
        assert!(!d.message.contains("SECRETPASS"), "{}", d.message);
    }
    for (op, path, says) in [
        (
            json!({"method": "TRACE"}),
            "/externals/mailer/operations/send/method",
            "TRACE",
        ),
        (
            json!({"encoding": "xml"}),
            "/externals/mailer/operations/send/encoding",
            "`xml` is not an encoding",
        ),
        (
            json!({"headers": {"Content-Type": "text/plain"}}),
            "/externals/mailer/operations/send/headers/Content-Type",
            "is set by the host",
        ),
        (
            json!({"headers": {"X-A": 1}}),
            "/externals/mailer/operations/send/headers/X-A",
            "a string",
        ),
        (
            json!({"idempotencyHeader": "Idem Key"}),
            "/externals/mailer/operations/send/idempotencyHeader",
            "is not a header name",
        ),
        (
            json!({"path": "v1/charges"}),
            "/externals/mailer/operations/send/path",
            "is not a valid route path",
        ),
    ] {
        let l = with(&|x: &mut Value| x["operations"]["send"] = op.clone());
        let found: Vec<&Diagnostic> = l.errors.iter().filter(|d| d.path == path).collect();
        assert!(
            found.iter().any(|d| d.message.contains(says)),
            "{op}: {}",
            list(&l.errors)
        );
    }
    // A path argument the call does not give.
    let l = with(&|x: &mut Value| {
        x["operations"]["send"] = json!({"path": "/v1/customers/{customer}/charges"});
    });
    let d = only_error(
        &l,
        "missing-arg",
        "/tools/place_order/flow/nodes/notify/args",
    );
    assert_message(d, "puts `customer` in its path");
    // One given, but that may be null or is no path segment.
    for (arg, says) in [
        (json!("input.customer"), "it may be null"),
        (json!("'..'"), "it is \"..\""),
        (json!(null), "it is null"),
    ] {
        let l = load_with(|v| {
            at(v, "/tools/place_order")["input"] = json!({"type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"},
                               "customer": {"type": "string"}},
                "required": ["sku", "quantity"]});
            at(v, "/externals/mailer")["operations"]["send"] =
                json!({"path": "/v1/customers/{customer}/charges"});
            at(v, "/tools/place_order/flow/nodes/notify")["args"]["customer"] = arg.clone();
        });
        let d = only_error(
            &l,
            "expr-type",
            "/tools/place_order/flow/nodes/notify/args/customer",
        );
        assert_message(d, says);
    }
    // The whole shape, right.
    let l = with(&|x: &mut Value| {
        x["baseUrl"] = json!("https://api.stripe.com");
        x["auth"] = json!({"basic": {"user": "acct", "secret": "STRIPE_KEY"}});
        x["operations"]["send"] = json!({"method": "POST", "path": "/v1/payment_intents",
            "encoding": "form", "headers": {"Stripe-Version": "2024-06-20"},
            "idempotencyHeader": "Idempotency-Key"});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // The header that carries the credentials, and a literal header, are
    // not the key's: either would be overwritten on every call.
    for (op, path, says) in [
        (
            json!({"headers": {"x-api-key": "v"}}),
            "/externals/mailer/operations/send/headers",
            "`x-api-key` carries the external's credentials",
        ),
        (
            json!({"idempotencyHeader": "X-Api-Key"}),
            "/externals/mailer/operations/send/idempotencyHeader",
            "`X-Api-Key` carries the external's credentials",
        ),
        (
            json!({"idempotencyHeader": "X-Key", "headers": {"x-key": "1"}}),
            "/externals/mailer/operations/send/idempotencyHeader",
            "`X-Key` carries each call's idempotency key, and it is also one of the operation's literal `headers`",
        ),
        // Without `idempotencyHeader`, the key goes in `Idempotency-Key`.
        (
            json!({"headers": {"idempotency-key": "fixed"}}),
            "/externals/mailer/operations/send/headers",
            "`Idempotency-Key` carries each call's idempotency key",
        ),
        (
            json!({"headers": {"X-Sinew-Attempt": "9"}}),
            "/externals/mailer/operations/send/headers/X-Sinew-Attempt",
            "`X-Sinew-Attempt` is set by the host",
        ),
    ] {
        let l = with(&|x: &mut Value| {
            x["auth"] = json!({"header": {"name": "X-Api-Key", "secret": "MAILER_KEY"}});
            x["operations"]["send"] = op.clone();
        });
        let d = only_error(&l, "invalid-value", path);
        assert_message(d, says);
    }
    // A `header` auth named like the key's header would never be sent.
    let l = with(&|x: &mut Value| {
        x["auth"] = json!({"header": {"name": "Idempotency-Key", "secret": "MAILER_KEY"}});
        x["operations"]["send"] = json!({});
    });
    let d = only_error(&l, "invalid-value", "/externals/mailer/auth");
    assert_message(d, "`Idempotency-Key` carries the external's credentials");
}

/// A field's `enum` lists each value once, as JSON Schema says (the
/// schema of the format refused `[null, null]`; the loader took it).
#[test]
fn an_enum_lists_each_value_once() {
    for (values, at) in [
        (json!([null, null]), "1"),
        (json!(["low", "high", "low"]), "2"),
        (json!([1, 2, 1.0]), "2"),
    ] {
        let l = load_with(|v| {
            at_mut(v)["enum"] = values.clone();
        });
        let d = only_error(
            &l,
            "invalid-value",
            &format!("/entities/Product/fields/sku/enum/{at}"),
        );
        assert_message(d, "is in `enum` twice");
    }
    let l = load_with(|v| at_mut(v)["enum"] = json!(["a", "b", null]));
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

fn at_mut(v: &mut Value) -> &mut Value {
    at(v, "/entities/Product/fields/sku")
}

/// One tool per queue.
#[test]
fn a_queue_has_one_consumer() {
    let l = load_with(|v| {
        for t in ["/tools/get_product", "/tools/place_order"] {
            at(v, t)["trigger"] = json!({"queue": {"name": "orders"}});
        }
    });
    let d = l
        .errors
        .iter()
        .find(|d| d.code == "duplicate-name" && d.path.ends_with("/trigger/queue/name"))
        .unwrap_or_else(|| panic!("{}", list(&l.errors)));
    assert_message(d, "already consumes queue `orders`");
}

/// A webhook's scheme is one of three, and only `stripe` takes a
/// tolerance.
#[test]
fn webhook_schemes_are_checked() {
    let with = |trigger: Value| {
        load_with(|v| {
            at(v, "/tools/get_product")["trigger"] = json!({ "webhook": trigger });
        })
    };
    let l = with(json!({"path": "/hooks/x", "scheme": "paypal"}));
    let d = only_error(
        &l,
        "invalid-value",
        "/tools/get_product/trigger/webhook/scheme",
    );
    assert_message(d, "`paypal` is not a webhook scheme");
    let l = with(json!({"path": "/hooks/x", "scheme": "github", "toleranceSeconds": 60}));
    let d = only_error(
        &l,
        "invalid-value",
        "/tools/get_product/trigger/webhook/toleranceSeconds",
    );
    assert_message(d, "applies to the `stripe` scheme only");
    // Stripe and GitHub send no Idempotency-Key header: a key read from it
    // would refuse every delivery.
    for scheme in ["stripe", "github"] {
        let l = load_with(|v| {
            at(v, "/tools/get_product")["trigger"] =
                json!({"webhook": {"path": "/hooks/x", "scheme": scheme}});
            at(v, "/tools/get_product")["idempotencyKey"] = json!("request.idempotencyKey");
        });
        let d = only_error(&l, "invalid-value", "/tools/get_product/idempotencyKey");
        assert_message(d, "sends no `Idempotency-Key` header");
    }
    let l = load_with(|v| {
        at(v, "/tools/get_product")["trigger"] = json!({"webhook": {"path": "/hooks/x"}});
        at(v, "/tools/get_product")["idempotencyKey"] = json!("request.idempotencyKey");
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    for ok in [
        json!({"path": "/hooks/x", "scheme": "stripe", "toleranceSeconds": 60}),
        json!({"path": "/hooks/x", "scheme": "github"}),
        json!({"path": "/hooks/x"}),
    ] {
        let l = with(ok.clone());
        assert!(
            !l.errors.iter().any(|d| d.path.contains("/trigger")),
            "{ok}: {}",
            list(&l.errors)
        );
    }
}

/// A cron schedule is read field by field before deployment: a value out
/// of its field's range, a reversed range, a zero step or a missing field
/// is refused at the schedule's pointer, saying which field; names and
/// Sunday as 7 are fine.
#[test]
fn cron_schedules_are_checked_field_by_field() {
    let with = |schedule: &str| {
        load_with(|v| {
            at(v, "/tools/get_product")["trigger"] = json!({"cron": {"schedule": schedule}});
            at(v, "/tools/get_product")
                .as_object_mut()
                .unwrap()
                .remove("input");
        })
    };
    for (schedule, says) in [
        ("0 24 * * *", "`24` is not an hour (0–23)"),
        ("0 3 31 feb-dex *", "`dex` is not a month"),
        ("*/0 * * * *", "a step is a whole number from 1"),
        ("10-5 * * * *", "a range runs from low to high"),
        ("0 3 * *", "five fields"),
    ] {
        let l = with(schedule);
        let d = only_error(
            &l,
            "invalid-value",
            "/tools/get_product/trigger/cron/schedule",
        );
        assert_message(d, says);
    }
    // A time zone the zone database does not have.
    let l = load_with(|v| {
        at(v, "/tools/get_product")["trigger"] =
            json!({"cron": {"schedule": "0 3 * * *", "timezone": "Europe/Pariss"}});
    });
    let d = only_error(
        &l,
        "invalid-value",
        "/tools/get_product/trigger/cron/timezone",
    );
    assert_message(d, "`Europe/Pariss` is not a time zone");
    // The scheduler runs a cron tool with `{}`: it cannot require input.
    let l = load_with(|v| {
        at(v, "/tools/get_product")["trigger"] = json!({"cron": {"schedule": "0 3 * * *"}});
        at(v, "/tools/get_product")["input"] =
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
    });
    let d = only_error(&l, "invalid-value", "/tools/get_product/input/required");
    assert_message(
        d,
        "a cron tool runs with the input `{}`: it cannot require `id`",
    );
    // A cron or queue tool is also callable by name, without a key: its
    // `request.idempotencyKey` may be null.
    for trigger in [
        json!({"cron": {"schedule": "0 3 * * *"}}),
        json!({"queue": {"name": "jobs"}}),
    ] {
        let l = load_with(|v| {
            let tool = at(v, "/tools/get_product");
            tool["trigger"] = trigger.clone();
            tool["input"] = json!({"type": "object", "properties": {"id": {"type": "string"}}});
            tool["flow"] = json!({"entry": "done", "nodes": {"done": {"type": "return",
                "value": {"price": "request.idempotencyKey.size()"}}}});
        });
        let d = only_error(
            &l,
            "expr-type",
            "/tools/get_product/flow/nodes/done/value/price",
        );
        assert_message(d, "`request.idempotencyKey` may be null here");
    }
    for schedule in [
        "0 3 * * *",
        "*/15 9-17 * JAN,jul mon-fri",
        "0 0 1 * 7",
        "5/10 * * * *",
    ] {
        let l = with(schedule);
        assert!(
            !l.errors.iter().any(|d| d.path.contains("/trigger")),
            "{schedule}: {}",
            list(&l.errors)
        );
    }
}

/// Lists the format says are non-empty are refused empty, as the schema
/// refuses them: a policy's `tools`, a switch's `cases`, and the strings of
/// a transition's `from` and of a tool's `sensitive` (found by the
/// mutated-examples property test).
#[test]
fn non_empty_lists_and_strings() {
    let l = load_with(|v| {
        v["policies"] =
            json!({"cap": {"type": "rowLimit", "action": "block", "tools": [], "maxRows": 5}});
    });
    assert_message(
        only_error(&l, "invalid-value", "/policies/cap/tools"),
        "`tools` is empty",
    );

    let l = load_with(|v| {
        at(v, "/tools/get_product/flow/nodes")["pick"] =
            json!({"type": "switch", "cases": [], "default": "done"});
        at(v, "/tools/get_product/flow")["entry"] = json!("pick");
    });
    let d = error(
        &l,
        "invalid-value",
        "/tools/get_product/flow/nodes/pick/cases",
    );
    assert_message(d, "`cases` is empty");

    let l = load_with(|v| {
        at(v, "/entities/Order/status/transitions/pay")["from"] = json!(["pending", ""]);
    });
    only_error(
        &l,
        "invalid-value",
        "/entities/Order/status/transitions/pay/from/1",
    );

    let l = load_with(|v| at(v, "/tools/get_product")["sensitive"] = json!([""]));
    only_error(&l, "invalid-value", "/tools/get_product/sensitive/0");
}

/// A `return` whose value certainly breaks the output schema would answer
/// 500 `invalid_output` on every call that ends there: refused with where
/// and why; what the checker cannot know (a double, a map) passes.
#[test]
fn a_return_that_breaks_the_output_schema() {
    let returning = |output: Value, value: Option<Value>| {
        load_with(|v| {
            at(v, "/tools/get_product")["output"] = output.clone();
            let done = at(v, &format!("{GET}/done"));
            match &value {
                Some(x) => done["value"] = x.clone(),
                None => {
                    done.as_object_mut().unwrap().remove("value");
                }
            }
        })
    };
    let closed = json!({"type": "object", "required": ["name"], "additionalProperties": false,
                        "properties": {"name": {"type": "string"}, "price": {"type": "integer"},
                                       "tags": {"type": "array", "items": {"type": "string"}}}});
    for (value, message) in [
        (
            Some(json!({"name": "product.name", "price": "'12'"})),
            "`price`: this is a string",
        ),
        (
            Some(json!({"price": "product.price"})),
            "`name`: required by the schema",
        ),
        (
            Some(json!({"name": "product.name", "extra": true})),
            "`extra`: not a property",
        ),
        (
            Some(json!({"name": "product.name", "tags": ["1"]})),
            "`tags[0]`: this is an integer",
        ),
        (
            Some(json!("product.price")),
            "this is an integer, and the schema's type is \"object\"",
        ),
        (None, "a `return` without `value` returns null"),
        // A double is an integer to the schema only when whole.
        (
            Some(json!({"name": "product.name", "price": "product.price * 1.0"})),
            "`product.price * 1.0` is a double",
        ),
    ] {
        let l = returning(closed.clone(), value.clone());
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, message);
    }
    for value in [
        json!({"name": "product.name", "price": "product.price", "tags": ["'a'"]}),
        json!({"name": "dyn(product.price)"}),
    ] {
        let l = returning(closed.clone(), Some(value.clone()));
        assert!(l.errors.is_empty(), "{value}: {}", list(&l.errors));
    }
    // A schema that allows null takes a `return` without value.
    let l = returning(json!({"type": ["object", "null"]}), None);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// Mistakes that fail on every call whatever the values sent: indexing
/// what cannot be indexed, `in` on a string, a field of a list, `join` of
/// numbers, `math.least` of strings, `%` of a `number` (it may be 2.5),
/// literals the functions refuse (a duration in days, a date without its
/// time, a bad pattern, an unknown time zone, an index past a literal
/// list). What works passes.
#[test]
fn what_fails_on_every_call_is_refused() {
    judge(
        counts_and_factor,
        &[
            ("product.name[0]", "a string cannot be indexed with an int"),
            ("{'a': 1}[0]", "cannot be indexed with an int"),
            (
                "[1, 2]['a']",
                "reads a field of a row or an object, not of a list of ints",
            ),
            (
                "'T' in product.name",
                "`in` looks in a list or a map, not in a string",
            ),
            (
                "product.price.name",
                "`.name` reads a field of a row or an object, not of an int",
            ),
            (
                "input.counts.join(',')",
                "`.join()` joins strings, not the elements of a list of ints",
            ),
            (
                "math.least('a', 'b')",
                "`math.least()` compares numbers, not a string",
            ),
            (
                "product.price % input.factor",
                "`%` does not apply to an int and a number",
            ),
            (
                "request.time + duration('1d')",
                "this fails on every call: ",
            ),
            (
                "request.time > timestamp('2026-01-01')",
                "this fails on every call: ",
            ),
            (
                "product.name.matches('[a-z')",
                "this fails on every call: `[a-z` is not a valid regular expression",
            ),
            (
                "request.time.getHours('Mars/Olympus')",
                "this fails on every call: unknown time zone `Mars/Olympus`",
            ),
            (
                "['x'][2] + product.name",
                "this fails on every call: index 2",
            ),
            ("product.price + 1 / (2 - 2)", "this fails on every call: "),
        ],
        &[
            "product.name.matches('^T[a-z]+$')",
            "request.time.getHours('+05:30') + request.time.getHours('Europe/Paris')",
            "request.time + duration('36h')",
            "request.time > timestamp('2026-01-01T00:00:00Z')",
            "{'a': 1}['a'] + [1, 2][1]",
            "'T' in ['T', 'U'] && product.name.contains('T')",
            "product.price % 2",
            "math.least(1, 2.5) + math.greatest([product.price, 3])",
            "input.counts.map(c, string(c)).join(',')",
            "false && 1 / 0 > 0",
        ],
    );
}

/// A `from` include is a list: a field of it, read as if it were a row
/// (inside `map` too), is refused.
#[test]
fn a_list_include_is_not_read_as_a_row() {
    judge(
        |v| {
            at(v, &format!("{GET}/product"))["include"] =
                json!({"orders": {"from": "Order", "by": "product", "limit": 5}});
        },
        &[(
            "product.orders.quantity",
            "`.quantity` reads a field of a row or an object, not of a list of `Order` rows",
        )],
        &[
            "product.orders.map(o, o.quantity)",
            "size(product.orders) > 0 ? product.orders[0].quantity : 0",
        ],
    );
    judge(
        |v| {
            let read = &mut at(v, &format!("{GET}/product"));
            read["one"] = json!(false);
            read["limit"] = json!(5);
            read["include"] = json!({"orders": {"from": "Order", "by": "product", "limit": 5}});
        },
        &[(
            "product.map(p, p.orders.quantity)",
            "`.quantity` reads a field of a row or an object, not of a list of `Order` rows",
        )],
        &["product.map(p, p.orders.map(o, o.quantity))"],
    );
}

/// A group's `min` or `max` of a nullable field is null when all of the
/// group's values are: a guard is needed where null fails. Of a field that
/// is not nullable, it is not.
#[test]
fn a_groups_measure_of_a_nullable_field_may_be_null() {
    judge(
        |v| {
            at(v, "/entities/Product/fields")["discount"] =
                json!({"type": "integer", "nullable": true});
            with_product_node(
                v,
                json!({
                    "type": "aggregate", "entity": "Product", "next": "done",
                    "groupBy": ["sku"], "limit": 10,
                    "measures": {"low": {"min": "discount"}, "top": {"max": "price"}}
                }),
            );
        },
        &[("product.map(g, g.low + 1)", "`g.low` may be null here")],
        &[
            "product.map(g, g.top + 1)",
            "product.map(g, g.low != null ? g.low + 1 : 0)",
        ],
    );
}

/// Names the database would give twice (two entities on one table, two
/// indexes of one name, tables and indexes alike) or that are sinew's own
/// tables are refused: the migration would skip the second silently.
#[test]
fn database_names_are_given_once() {
    let l = load_with(|v| {
        at(v, "/entities")["Order_Item"] = json!({"fields": {"n": {"type": "integer"}}});
        at(v, "/entities")["OrderItem"] = json!({"fields": {"n": {"type": "integer"}}});
    });
    let d = error(&l, "duplicate-name", "/entities/OrderItem");
    assert_message(d, "would be table `order_item`, as entity `Order_Item` is");
    let l = load_with(|v| {
        at(v, "/entities")["SinewAudit"] = json!({"fields": {"n": {"type": "integer"}}});
    });
    let d = only_error(&l, "invalid-name", "/entities/SinewAudit");
    assert_message(d, "`sinew_` tables are sinew's own");
    // A unique field `a_b` and a unique index on (a, b): both `t_a_b_key`.
    let l = load_with(|v| {
        at(v, "/entities")["T"] = json!({
            "fields": {"a_b": {"type": "string", "unique": true},
                       "a": {"type": "string"}, "b": {"type": "string"}},
            "indexes": [{"fields": ["a", "b"], "unique": true}]
        });
    });
    let d = only_error(&l, "duplicate-name", "/entities/T");
    assert_message(d, "the index of `T` on a, b would be named `t_a_b_key`");
    // Across tables: `A`'s unique `b_c` and `A_b`'s unique `c`.
    let l = load_with(|v| {
        at(v, "/entities")["A"] = json!({"fields": {"b_c": {"type": "string", "unique": true}}});
        at(v, "/entities")["A_b"] = json!({"fields": {"c": {"type": "string", "unique": true}}});
    });
    let d = only_error(&l, "duplicate-name", "/entities/A_b");
    assert_message(d, "would be named `a_b_c_key`");
}

/// What a `let` binds keeps each value's type and whether it may be null
/// (an optional input, a literal `null`, a `?:` with a null branch); a
/// paged read's `next` is null on the last page; `auth.sub` is null for an
/// anonymous caller of a `public` tool.
#[test]
fn let_values_paged_reads_and_anonymous_subjects_are_typed() {
    judge(
        |v| {
            at(v, "/tools/get_product/input/properties")["note"] = json!({"type": "string"});
            at(v, &format!("{GET}/product"))["next"] = json!("l");
            at(v, GET)["l"] = json!({"type": "let", "next": "done", "values": {
                "note": "input.note",
                "name": "product.name",
                "maybe": "product.price > 3 ? product.name : null",
                "safe": "has(input.note) ? input.note : ''",
                "n": 3
            }});
        },
        &[
            ("l.note.size()", "`l.note` may be null here"),
            ("l.maybe.size()", "`l.maybe` may be null here"),
            ("l.name + 1", "`+` does not apply to a string and an int"),
            ("l.n + 'x'", "`+` does not apply to an int and a string"),
        ],
        &[
            "l.name.size() + l.safe.size() + l.n",
            "has(l.note) ? l.note.size() : 0",
            "l.maybe != null ? l.maybe.size() : 0",
        ],
    );
    judge(
        |v| {
            let read = at(v, &format!("{GET}/product"));
            read["one"] = json!(false);
            read["page"] = json!(true);
            read["limit"] = json!(10);
            read["count"] = json!(true);
        },
        &[
            ("product.next.size()", "`product.next` may be null here"),
            (
                "product.total + 'x'",
                "`+` does not apply to an int and a string",
            ),
            (
                "product.rows.price",
                "`.price` reads a field of a row or an object, not of a list of `Product` rows",
            ),
        ],
        &[
            "product.next != null ? product.next : ''",
            "product.rows.map(p, p.price).size() + product.total",
        ],
    );
    judge(
        |v| {
            at(v, "/tools/get_product/auth")["public"] = json!(true);
        },
        &[(
            "auth.sub.endsWith('@corp.example')",
            "`auth.sub` may be null here",
        )],
        &["has(auth.sub) && auth.sub.endsWith('@corp.example')"],
    );
    judge(|_| {}, &[], &["auth.sub.endsWith('@corp.example')"]);
}

/// A policy's expressions are checked against the input of each tool it
/// applies to: an optional property used where null fails, a property a
/// closed input does not declare, a `when` that is not a bool, an amount
/// that is not a number. One error each, however many tools.
#[test]
fn policy_expressions_are_typed_per_tool() {
    let with = |policy: Value| {
        load_with(|v| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["coupon"] = json!({"type": "string"});
            input["properties"]["amount"] = json!({"type": "string"});
            input["properties"]["qty"] = json!({"type": "integer"});
            v["policies"] = json!({ "p": policy });
        })
    };
    for (policy, path, says) in [
        (
            json!({"type": "custom", "action": "block", "tools": ["get_product"],
                   "when": "input.coupon.size() > 10"}),
            "/policies/p/when",
            "`input.coupon` may be null here",
        ),
        (
            json!({"type": "custom", "action": "block", "tools": ["get_product"],
                   "when": "input.amout == '1'"}),
            "/policies/p/when",
            "does not declare `input.amout`",
        ),
        (
            json!({"type": "custom", "action": "block", "tools": ["get_product"],
                   "when": "size(request.id)"}),
            "/policies/p/when",
            "",
        ),
        (
            json!({"type": "budgetCheck", "action": "block", "tools": ["get_product"],
                   "amount": "has(input.amount) ? input.amount : '0'", "maxAmount": 100}),
            "/policies/p/amount",
            "this is a string, not a number, and a budget compares numbers",
        ),
        (
            json!({"type": "budgetCheck", "action": "block", "tools": ["get_product"],
                   "amount": "input.qty", "maxAmount": 100}),
            "/policies/p/amount",
            "`input.qty` may be null (an optional input property, a nullable field), and a budget compares numbers",
        ),
    ] {
        let l = with(policy.clone());
        let found: Vec<&Diagnostic> = l.errors.iter().filter(|d| d.path == path).collect();
        assert_eq!(found.len(), 1, "{policy}: {}", list(&l.errors));
        assert_message(found[0], says);
    }
    // Applied to every tool (no `tools`), a mistake is reported once.
    let l = with(json!({"type": "custom", "action": "block", "when": "request.time + 1 > 0"}));
    assert_eq!(l.errors.len(), 1, "{}", list(&l.errors));
    let l = with(
        json!({"type": "custom", "action": "block", "tools": ["get_product"],
                        "when": "has(input.coupon) && input.coupon.size() > 10"}),
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// `--fix` never writes a spec that no longer loads: a fix that would
/// (the header key on a Stripe webhook, which sends no such header) is
/// left out, and its finding stays for a person.
#[test]
fn a_fix_that_would_break_the_spec_is_not_applied() {
    let mut v = base();
    at(&mut v, "/tools/place_order")["trigger"] =
        json!({"webhook": {"path": "/hooks/orders", "scheme": "stripe", "secret": "HOOK"}});
    at(&mut v, "/tools/place_order")
        .as_object_mut()
        .unwrap()
        .remove("idempotencyKey");
    let text = serde_json::to_string_pretty(&v).unwrap();
    let before = risk::analyze(&load_text(&text));
    assert!(
        before
            .findings()
            .any(|f| f.code == "missing-idempotency-key" && f.fix.patch.is_some()),
        "{}",
        before.to_json()
    );
    let out = risk::fix(&text);
    assert!(out.report.errors.is_empty(), "{:?}", out.report.errors);
    assert!(
        !out.applied
            .iter()
            .any(|a| a.code == "missing-idempotency-key"),
        "{:?}",
        out.applied
    );
    assert!(
        out.report
            .findings()
            .any(|f| f.code == "missing-idempotency-key")
    );
}

/// More that fails on every call, found by reading specs written from the
/// docs alone: `string()` of a list, bit operations mixing int and uint, a
/// map key that is not a string, `join` of a literal list with a
/// number, a macro condition that is not a bool, a `map` result's element
/// type, `format` clauses against their literal arguments, a literal zero
/// divisor or negative index, a timestamp compared with text that is not
/// one. What works passes.
#[test]
fn more_that_fails_on_every_call_is_refused() {
    judge(
        counts_and_factor,
        &[
            (
                "string(input.counts)",
                "`string()` does not take a list of ints",
            ),
            (
                "math.bitAnd(product.price, 1u)",
                "`math.bitAnd()` does not take an int, a uint",
            ),
            ("{input.factor: 1}", "a map's key is a string, not a number"),
            ("{product.price: 1}", "a map's key is a string, not an int"),
            ("-(1u)", "`-` does not apply to a uint"),
            ("['a', 1].join(',')", "a member of this list is an int"),
            (
                "input.counts.all(c, c + 1)",
                "`all`'s condition gives an int, not a bool",
            ),
            (
                "input.counts.filter(c, 'yes')",
                "`filter`'s condition gives a string, not a bool",
            ),
            (
                "input.counts.map(c, c * 2).join(',')",
                "`.join()` joins strings, not the elements of a list of ints",
            ),
            (
                "'%d items'.format([product.name])",
                "`%d` does not format a string",
            ),
            (
                "'%s and %s'.format([product.name])",
                "the format has 2 clauses and the list 1 arguments",
            ),
            ("product.price / 0", "`/` by zero fails on every call"),
            ("product.price % 0", "`%` by zero fails on every call"),
            ("input.factor / 0", "`/` by zero fails on every call"),
            ("input.counts[-1]", "a list's index is never negative"),
            (
                "request.time < '2026-01-01'",
                "is not an RFC 3339 timestamp",
            ),
        ],
        &[
            "string(product.price) + string(input.factor)",
            "math.bitAnd(product.price, 3) + int(math.bitAnd(1u, 2u))",
            "{product.name: 1, string(input.factor): 2}",
            "-product.price",
            "['a', 'b'].join(',')",
            "input.counts.all(c, c > 0) && input.counts.exists(c, c == 2)",
            "input.counts.map(c, string(c)).join(',')",
            "'%d items at %.2f: %s'.format([product.price, input.factor, input.counts])",
            "product.price / 2 + input.counts[0]",
            "request.time < '2026-01-01T00:00:00Z'",
        ],
    );
}

/// A `foreach` over what is not a list, a `limit` from a `number` input
/// (2.5 fails), an `in` whose expression is a string, an idempotency key
/// that is the same on every call: refused.
#[test]
fn nodes_that_fail_on_every_call_are_refused() {
    let with_input = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["n"] = json!({"type": "number", "minimum": 1, "maximum": 10});
        input["properties"]["skus"] = json!({"type": "string"});
        input["required"] = json!(["n", "skus"]);
    };
    let l = with_first_node(with_input, foreach_reading_products("input.skus", "s", 5));
    let d = only_error(&l, "expr-type", &format!("{GET}/product/items"));
    assert_message(d, "a `foreach` goes over a list, and this is a string");
    let l = with_first_node(
        with_input,
        json!({"type": "read", "entity": "Product", "where": {"stock": {"gt": 0}},
                   "orderBy": ["id"], "limit": "input.n", "next": "done"}),
    );
    let d = only_error(&l, "expr-type", &format!("{GET}/product/limit"));
    assert_message(d, "a positive integer is needed here, but this is a number");
    let l = with_first_node(
        with_input,
        json!({"type": "read", "entity": "Product", "where": {"sku": {"in": "input.skus"}},
                   "limit": 10, "next": "done"}),
    );
    let d = only_error(&l, "expr-type", &format!("{GET}/product/where/sku/in"));
    assert_message(d, "`in` needs a list, and this is `input.skus`, a string");
    // A list that may be null (an optional input property): the read
    // fails on the calls that leave it out, unless a `when` applies the
    // condition only when it is there.
    let optional_list = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["skus"] = json!({"type": "array", "items": {"type": "string"}});
        input["required"] = json!([]);
    };
    let l = with_first_node(
        optional_list,
        json!({"type": "read", "entity": "Product", "where": {"sku": {"notIn": "input.skus"}},
                   "limit": 10, "next": "done"}),
    );
    let d = only_error(&l, "expr-type", &format!("{GET}/product/where/sku/notIn"));
    assert_message(d, "`notIn` needs a list, and `input.skus` may be null");
    let l = with_first_node(
        optional_list,
        json!({"type": "read", "entity": "Product",
                   "where": {"sku": {"in": "input.skus", "when": "has(input.skus)"}},
                   "limit": 10, "next": "done"}),
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    for key in ["null", "'same'"] {
        let l = load_with(|v| at(v, "/tools/place_order")["idempotencyKey"] = json!(key));
        let d = only_error(&l, "invalid-value", "/tools/place_order/idempotencyKey");
        assert_message(d, "is the same on every call");
    }
}

/// A literal the field refuses (outside its `enum`, too long, out of
/// range) is 422 on every call that writes it; a `where` literal no row can
/// hold (a state the machine lacks, a value outside the `enum`) matches
/// nothing: both refused, naming what the field takes.
#[test]
fn literals_the_fields_refuse_are_refused() {
    let enums = |v: &mut Value| {
        at(v, "/entities/Product/fields")["kind"] =
            json!({"type": "string", "enum": ["book", "toy"]});
        at(v, "/entities/Product/fields")["sku"]["maxLength"] = json!(4);
        at(v, "/entities/Product/fields")["stock"]["maximum"] = json!(100);
    };
    for (field, value, says) in [
        (
            "kind",
            json!("'boook'"),
            "`Product.kind` is not one of the allowed values",
        ),
        (
            "sku",
            json!("'ABCDEF'"),
            "`Product.sku` must be at most 4 characters",
        ),
        ("stock", json!(1000), "`Product.stock` must be at most 100"),
    ] {
        let l = load_with(|v| {
            enums(v);
            at(v, &format!("{BODY}/take"))["set"] = json!({field: value});
        });
        let errors: Vec<_> = l
            .errors
            .iter()
            .filter(|d| d.code == "invalid-value")
            .collect();
        assert_eq!(errors.len(), 1, "{field}: {}", list(&l.errors));
        assert_message(errors[0], says);
    }
    let l = load_with(|v| {
        enums(v);
        at(v, &format!("{BODY}/take"))["set"] = json!({"kind": "'toy'", "stock": 5});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    for (entity, filter, says) in [
        (
            "Order",
            json!({"status": "'payed'"}),
            "no `Order` row has `status` \"payed\": it takes \"pending\", \"paid\"",
        ),
        (
            "Order",
            json!({"status": {"in": ["'pending'", "'shipped'"]}}),
            "no `Order` row has `status` \"shipped\"",
        ),
        (
            "Product",
            json!({"kind": {"ne": "'game'"}}),
            "no `Product` row has `kind` \"game\"",
        ),
    ] {
        let l = load_with(|v| {
            enums(v);
            with_product_node(
                v,
                json!({"type": "read", "entity": entity, "where": filter, "limit": 5, "next": "done"}),
            );
            at(v, &format!("{GET}/done"))["value"] = json!({});
        });
        let errors: Vec<_> = l
            .errors
            .iter()
            .filter(|d| d.code == "invalid-value")
            .collect();
        assert_eq!(errors.len(), 1, "{filter}: {}", list(&l.errors));
        assert_message(errors[0], says);
    }
}

/// An input schema written with `allOf` and `$ref` is read as one: a
/// property required in an `allOf` branch needs no guard, an array's
/// `maxItems` in a shared definition bounds a `create` `each`. An
/// undeclared property of an open nested object needs `has()` (reading an
/// absent key fails); an undeclared top-level property left out reads as
/// null, as a declared one does.
#[test]
fn input_schemas_with_all_of_and_refs_are_read_as_one() {
    let spec = json!({"sinew": "0.2", "name": "shapes",
      "entities": {"Line": {"fields": {"sku": {"type": "string"}}}},
      "tools": {"add": {
        "trigger": {"http": {"method": "POST", "path": "/lines"}}, "auth": {"roles": ["staff"]},
        "idempotencyKey": "input.ref",
        "input": {"type": "object",
          "$defs": {"lines": {"type": "array", "maxItems": 20, "items": {"type": "string"}}},
          "allOf": [
            {"properties": {"ref": {"type": "string"}, "lines": {"$ref": "#/$defs/lines"}}, "required": ["ref", "lines"]},
            {"properties": {"note": {"type": "object", "properties": {"text": {"type": "string"}}}}}
          ]},
        "output": true,
        "flow": {"entry": "t", "nodes": {
          "t": {"type": "transaction", "body": {"entry": "c", "nodes": {
            "c": {"type": "create", "entity": "Line", "each": "input.lines", "as": "l", "values": {"sku": "l"}}}},
            "next": "r"},
          "r": {"type": "return", "value": {"ref": "input.ref.trim()", "extra": "input.extra",
                 "text": "has(input.note) && has(input.note.text) ? input.note.text : ''"}}}}}}});
    let text = spec.to_string();
    let l = load_text(&text);
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // The `maxItems` of the shared definition bounds the `create`.
    let report = risk::check(&text);
    assert_eq!(report.level, Level::Green, "{}", report.to_json());
    // Undeclared in an open nested object, unguarded: refused.
    let mut bad = spec.clone();
    at(&mut bad, "/tools/add/flow/nodes/r/value")["mood"] =
        json!("has(input.note) ? input.note.mood : ''");
    let l = load_text(&bad.to_string());
    let d = only_error(&l, "expr-type", "/tools/add/flow/nodes/r/value/mood");
    assert_message(d, "`input.note.mood` is optional in the input schema");
    // Run: the left-out `extra` (declared nowhere) reads as null.
    let bundle = sinew_core::bundle::Bundle::load(&text).unwrap();
    let mut store = sinew_core::ports::memory::MemoryStorage::new();
    let mut clock = sinew_core::ports::memory::FixedClock::new(1_767_225_600_000);
    let mut ext = sinew_core::ports::script::ScriptedExternal::new();
    let r = sinew_core::contract::execute(
        &bundle,
        &sinew_core::contract::Request {
            tool: "add".into(),
            input: json!({"ref": " r1 ", "lines": ["a", "b"]}),
            auth: Some(sinew_core::request::Auth {
                sub: "s".into(),
                roles: vec!["staff".into()],
                claims: json!({}),
            }),
            id: "t-1".into(),
            idempotency_key: None,
            scheduled: None,
        },
        &mut store,
        &mut clock,
        &mut ext,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({"ref": "r1", "extra": null, "text": ""}));
}

/// A `let` value reading the `let`'s own name is unbound there (it was a
/// stack overflow of the checker when a later node read the `let`); a
/// `format` precision past 100 digits is an error, not a panic.
#[test]
fn self_references_and_huge_precisions_are_errors_not_crashes() {
    let spec = json!({"sinew": "0.2", "name": "t", "tools": {"t": {
        "trigger": {"http": {"method": "POST", "path": "/t"}}, "auth": {"public": true},
        "output": true,
        "flow": {"entry": "x", "nodes": {
            "x": {"type": "let", "values": {"a": "1", "b": "x.a"}, "next": "r"},
            "r": {"type": "return", "value": "x.a"}}}}}});
    let l = load_text(&spec.to_string());
    let d = only_error(&l, "expr-scope", "/tools/t/flow/nodes/x/values/b");
    assert_message(d, "`x` is not certainly bound here");
    let mut huge = spec.clone();
    at(&mut huge, "/tools/t/flow/nodes/x/values")["b"] = json!("'%.65536f'.format([1.5])");
    let l = load_text(&huge.to_string());
    let d = only_error(&l, "expr-type", "/tools/t/flow/nodes/x/values/b");
    assert_message(d, "a precision of 65536 digits is more than 100");
}

/// Null where null fails, through the ways it slipped by: a required
/// property whose schema lets null through, `in` a list that may be null,
/// a `?:` with a null branch, `dyn()`, a map literal's key, a member of a
/// list `join`ed, an optional property of an element reached by index.
#[test]
fn null_is_followed_through_more_expressions() {
    let with_input = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["note"] = json!({"type": ["string", "null"]});
        input["properties"]["kind"] = json!({"enum": ["a", null]});
        input["properties"]["nick"] = json!({"type": "string"});
        input["properties"]["count"] = json!({"type": "integer"});
        input["properties"]["tags"] = json!({"type": "array", "items": {"type": "string"}});
        input["properties"]["lines"] = json!({"type": "array", "items": {"type": "object",
            "properties": {"sku": {"type": "string"}, "memo": {"type": "string"}}, "required": ["sku"]}});
        input["properties"]["day"] = json!({"type": "string", "format": "date"});
        input["properties"]["every"] = json!({"type": "string", "format": "duration"});
        input["properties"]["customer"] = json!({"type": "object", "properties": {
            "address": {"type": "object", "properties": {"zip": {"type": "string"}}}}});
        input["required"] = json!(["note", "kind", "lines", "customer"]);
    };
    judge(
        with_input,
        &[
            ("input.note.size()", "`input.note` may be null here"),
            ("input.kind.size()", "`input.kind` may be null here"),
            ("'vip' in input.tags", "`input.tags` may be null here"),
            (
                "(has(input.nick) ? input.nick : null).size()",
                "may be null here",
            ),
            ("dyn(input.nick).size()", "`input.nick` may be null here"),
            (
                "request.idempotencyKey.lowerAscii()",
                "`request.idempotencyKey` may be null here",
            ),
            (
                "{'k': input.nick}.k.size()",
                "`input.nick` may be null here",
            ),
            (
                "math.greatest([input.count, 1])",
                "`input.count` may be null, and `math.greatest()` fails",
            ),
            (
                "math.least(1, input.count)",
                "`input.count` may be null, and `math.least()` fails",
            ),
            (
                "[input.nick, 'x'].join(',')",
                "`input.nick` may be null, and `.join()` fails",
            ),
            (
                "input.lines[0].memo.size()",
                "`input.lines[0].memo` is optional in the input schema",
            ),
            (
                "has(input.customer.address.zip)",
                "`input.customer.address` is optional in the input schema",
            ),
            (
                "has(input.day) ? string(timestamp(input.day)) : ''",
                "`format: date` of `input.day` lets only dates",
            ),
            (
                "has(input.every) ? string(duration(input.every)) : ''",
                "`format: duration` of `input.every` lets only ISO 8601 durations",
            ),
        ],
        &[
            "input.note != null ? input.note.size() : 0",
            "has(input.customer.address) && has(input.customer.address.zip)",
            "has(input.day) ? string(timestamp(input.day + 'T00:00:00Z')) : ''",
            "type(input.note) == null_type",
            "string(type(input.note)).size()",
            "has(input.tags) && 'vip' in input.tags",
            "(has(input.nick) ? input.nick : '').size()",
            "has(input.nick) && dyn(input.nick).size() > 0",
            "input.lines[0].sku.size()",
            "has(input.lines[0].memo) ? input.lines[0].memo : ''",
            "input.nick == null",
            "has(request.idempotencyKey) ? request.idempotencyKey.size() : 0",
        ],
    );
    // A tool whose `idempotencyKey` reads the header requires it.
    judge(
        |v: &mut Value| {
            at(v, "/tools/get_product")["idempotencyKey"] = json!("request.idempotencyKey");
        },
        &[],
        &["request.idempotencyKey.lowerAscii()"],
    );
    // A `foreach` over an optional array.
    let l = with_first_node(with_input, foreach_reading_products("input.tags", "t", 5));
    let d = only_error(&l, "expr-type", &format!("{GET}/product/items"));
    assert_message(d, "a `foreach` goes over a list, and this may be null");
}

/// A macro's variable over a literal list with a member that may be null,
/// or over an input array whose items may be null, may be null itself.
#[test]
fn a_macro_variable_may_be_null_when_its_range_holds_null() {
    judge(
        |v: &mut Value| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["count"] = json!({"type": "integer"});
            input["properties"]["n"] = json!({"type": ["integer", "null"]});
            input["properties"]["scores"] =
                json!({"type": "array", "items": {"type": ["integer", "null"]}});
            input["properties"]["sizes"] = json!({"type": "array", "items": {"type": "integer"}});
            input["required"] = json!(["n", "scores", "sizes"]);
        },
        &[
            ("[input.count].map(x, x + 1).size()", "`x` may be null here"),
            ("[input.n, 2].exists(x, x > 1)", "`x` may be null here"),
            ("[null, 1].all(i, v, v > 0)", "`v` may be null here"),
            ("input.scores.map(s, s * 2).size()", "`s` may be null here"),
            (
                "input.scores.filter(s, s.size() > 0).size()",
                "`s` may be null here",
            ),
            // A guard of a name is not a guard of a variable that binds it
            // again.
            (
                "[input.count].exists(x, x != null && [input.count].all(x, x > 0))",
                "`x` may be null here",
            ),
            // Followed through a literal's index and a `map`.
            ("[input.count][0] + 1", "`input.count` may be null here"),
            (
                "{'k': input.count}['k'] + 1",
                "`input.count` may be null here",
            ),
            (
                "[input.count].map(x, x).map(y, y + 1).size()",
                "`y` may be null here",
            ),
            (
                "input.sizes.map(s, s > 2 ? s : null).map(t, t + 1).size()",
                "`t` may be null here",
            ),
            // A map's value variable, over a literal with a value that may
            // be null, and typed when every value has one type.
            (
                "{'a': input.count, 'b': 1}.transformMap(k, v, v + 1).size()",
                "`v` may be null here",
            ),
            (
                "{'a': 1, 'b': 2}.transformMap(k, v, v.size()).size()",
                "`.size()` does not apply to an int",
            ),
        ],
        &[
            "[input.count].map(x, x == null ? 0 : x + 1).size()",
            "[input.n, 2].exists(x, x != null && x > 1)",
            "[null, 1].all(i, v, i >= 0)",
            "input.sizes.map(s, s * 2).size()",
            "input.scores.filter(s, s != null).size()",
            "has(input.count) ? [input.count].map(x, x + 1).size() : 0",
            "input.sizes.map(s, s * 2).map(t, t + 1).size()",
            "[input.count].map(x, x == null ? 0 : x).map(y, y + 1).size()",
            "[input.count, 1][1] + 1",
            "{'a': input.count, 'b': 1}.transformMap(k, v, v == null ? 0 : v + 1).size()",
            "{'a': 1, 'b': 2}.transformMap(k, v, v + 1).size()",
            "{'a': 1, 'b': 'x'}.transformMap(k, v, string(v)).size()",
            "{'a': 1}.all(k, k.size() > 0)",
        ],
    );
}

/// `x['k']` is checked as `x.k`: names, types and nulls.
#[test]
fn a_quoted_key_is_checked_as_a_field() {
    let answering = |expr: &str| {
        load_with(|v| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["nick"] = json!({"type": "string"});
            at(v, &format!("{GET}/done"))["value"] = json!({"x": expr});
        })
    };
    for (expr, says) in [
        ("product['nope']", "`Product` has no field `nope`"),
        ("input['nick'].size()", "`input.nick` may be null here"),
        ("input['zz']", "`input.zz`"),
    ] {
        let l = answering(expr);
        assert_eq!(l.errors.len(), 1, "{expr}: {}", list(&l.errors));
        assert_message(&l.errors[0], says);
    }
    for expr in [
        "product['name'].size()",
        "has(input.nick) ? input['nick'].size() : 0",
    ] {
        let l = answering(expr);
        assert!(l.errors.is_empty(), "{expr}: {}", list(&l.errors));
    }
}

/// A `let` object's members are typed as the `let` sees them, nested ones
/// too: one that may be null is guarded before use.
#[test]
fn a_let_objects_nested_members_may_be_null() {
    let with_let = |v: &mut Value| {
        let input = &mut at(v, "/tools/get_product")["input"];
        input["properties"]["count"] = json!({"type": "integer"});
        with_product_node(
            v,
            json!({"type": "let", "values": {"g": {"k": "input.count", "n": 1}}, "next": "done"}),
        );
    };
    judge(
        with_let,
        &[
            ("product.g.k + 1", "`product.g.k` may be null here"),
            ("{'y': input.count}.y + 1", "`input.count` may be null here"),
            ("{'y': input.count, 'z': 1}.nope", "nope"),
        ],
        &["product.g.n + 1", "has(product.g.k) ? product.g.k + 1 : 0"],
    );
}

/// What a `foreach` binds is typed: its elements without `collect` (rows
/// of the rows it went over), else the list of its `collect` values as
/// `collect` sees them after the body.
#[test]
fn a_foreach_result_is_typed() {
    let looping = |collect: Option<Value>| {
        move |v: &mut Value| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["skus"] =
                json!({"type": "array", "items": {"type": "string"}, "maxItems": 5});
            input["required"] = json!(["id", "skus"]);
            let mut node = foreach_reading_products("input.skus", "s", 5);
            if let Some(c) = &collect {
                node["collect"] = c.clone();
            }
            with_product_node(v, node);
        }
    };
    judge(
        looping(None),
        &[(
            "product[0] + 1",
            "`+` does not apply to a string and an int",
        )],
        &["product[0] + 'x'", "product.map(s, s.size())"],
    );
    judge(
        looping(Some(json!("r"))),
        &[("product[0].nope", "not of a list of `Product` rows")],
        &["product[0].size()", "product.map(p, p.size() + 1)"],
    );
    judge(
        looping(Some(json!({"sku": "s", "n": "size(r)"}))),
        &[
            (
                "product[0].n + 'x'",
                "`+` does not apply to an int and a string",
            ),
            ("product[0].nope", "nope"),
        ],
        &["product[0].n + 1", "product.map(c, c.sku + '!')"],
    );
}

/// A value that may be null returned where the output schema refuses
/// null, a whole row's nullable column against a property that refuses
/// null, a list of rows against `items`: `output-mismatch`. A row's
/// nullable field the node that bound it wrote from a value that cannot
/// be null is not null.
#[test]
fn outputs_that_may_be_null_or_rows_against_items_are_refused() {
    let with = |value: Value, output: Value| {
        load_with(move |v| {
            at(v, "/entities/Product/fields")["note"] = json!({"type": "string", "nullable": true});
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["nick"] = json!({"type": "string"});
            input["required"] = json!(["id"]);
            at(v, "/tools/get_product")["output"] = output.clone();
            at(v, &format!("{GET}/done"))["value"] = value.clone();
        })
    };
    let string = json!({"type": "object", "properties": {"x": {"type": "string"}}});
    for (value, says) in [
        (json!({"x": "product.note"}), "`product.note` may be null"),
        (json!({"x": "input.nick"}), "`input.nick` may be null"),
    ] {
        let l = with(value.clone(), string.clone());
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, says);
        assert_message(d, "a call where it is would answer 500 `invalid_output`");
    }
    for value in [
        json!({"x": "product.note != null ? product.note : ''"}),
        json!({"x": "product.name"}),
    ] {
        let l = with(value.clone(), string.clone());
        assert!(l.errors.is_empty(), "{value}: {}", list(&l.errors));
    }
    let l = with(
        json!({"x": "product"}),
        json!({"type": "object", "properties": {"x": {"type": "object",
            "properties": {"note": {"type": "string"}}}}}),
    );
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "`Product.note` may be null");
    // A list of rows against `items`.
    let l = load_with(|v| {
        at(v, &format!("{GET}/product"))["one"] = json!(false);
        at(v, &format!("{GET}/product"))["limit"] = json!(5);
        at(v, "/tools/get_product")["output"] = json!({"type": "object", "properties": {
            "x": {"type": "array", "items": {"type": "string"}}}});
        at(v, &format!("{GET}/done"))["value"] = json!({"x": "product"});
    });
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "this list's elements are `Product` rows (objects)");
    // A list with a member that may be null, or of doubles, against
    // integer `items`.
    let ints = json!({"type": "object", "properties": {
        "x": {"type": "array", "items": {"type": "integer"}}}});
    let with_list = |value: &str| {
        let ints = ints.clone();
        let value = value.to_owned();
        load_with(move |v| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["o"] = json!({"type": "integer"});
            input["properties"]["l"] =
                json!({"type": "array", "maxItems": 5, "items": {"type": "integer"}});
            input["required"] = json!(["id", "l"]);
            at(v, "/tools/get_product")["output"] = ints;
            at(v, &format!("{GET}/done"))["value"] = json!({"x": value});
        })
    };
    for (value, says) in [
        ("[input.o]", "may hold null"),
        ("input.l + [input.o]", "may hold null"),
        ("input.l.map(x, input.o)", "may hold null"),
        ("input.l.map(x, x / 2.0)", "is a list of doubles"),
    ] {
        let l = with_list(value);
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, says);
    }
    for value in [
        "input.l",
        "input.l + [1]",
        "input.l.map(x, x * 2)",
        "has(input.o) ? [input.o] : []",
        "input.l.map(x, int(x / 2.0))",
    ] {
        let l = with_list(value);
        assert!(l.errors.is_empty(), "{value}: {}", list(&l.errors));
    }
    // Written by the node from a value that cannot be null.
    let l = load_with(|v| {
        at(v, "/entities/Product/fields")["note"] = json!({"type": "string", "nullable": true});
        let tool = at(v, "/tools/get_product");
        tool["idempotencyKey"] = json!("request.idempotencyKey");
        tool["output"] = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        tool["flow"] = json!({"entry": "tx", "nodes": {
            "tx": {"type": "transaction", "body": {"entry": "p", "nodes": {
                "p": {"type": "update", "entity": "Product", "where": {"id": "input.id"},
                      "one": true, "set": {"note": "'seen'"}}}}, "next": "done"},
            "done": {"type": "return", "value": {"x": "p.note"}}}});
    });
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// A `json` field's values have no order every engine shares: `orderBy`
/// on one, or `lt`, `lte`, `gt`, `gte` against one, is `expr-type`; `eq`
/// and `isNull` are fine.
#[test]
fn json_fields_are_not_ordered() {
    let with = |node: Value| {
        load_with(move |v| {
            at(v, "/entities/Product/fields")["meta"] = json!({"type": "json", "nullable": true});
            let read = at(v, &format!("{GET}/product"));
            for (k, x) in node.as_object().unwrap() {
                read[k] = x.clone();
            }
        })
    };
    let l = with(json!({"orderBy": "meta desc"}));
    let d = only_error(&l, "expr-type", &format!("{GET}/product/orderBy/0"));
    assert_message(
        d,
        "`Product.meta` is a json field: its values have no order",
    );
    let l = with(json!({"where": {"id": "input.id", "meta": {"gt": "1"}}}));
    let d = only_error(&l, "expr-type", &format!("{GET}/product/where/meta/gt"));
    assert_message(d, "`gt` orders, and `Product.meta` is a json field");
    for ok in [
        json!({"where": {"id": "input.id", "meta": {"eq": "1"}}}),
        json!({"where": {"id": "input.id", "meta": {"isNull": false}}}),
    ] {
        let l = with(ok.clone());
        assert!(l.errors.is_empty(), "{ok}: {}", list(&l.errors));
    }
}

/// What a whole row embeds is checked against the schema too: a `ref`
/// include may be null (a deleted or invisible row), a `from` include is a
/// list whose rows' nullable columns are checked as the top row's; the
/// groups of an aggregate are checked key by key.
#[test]
fn includes_and_groups_are_checked_against_the_output_schema() {
    let with = |node: Value, value: Value, output: Value| {
        load_with(move |v| {
            v["sinew"] = json!("0.2");
            at(v, "/entities/Product/fields")["note"] = json!({"type": "string", "nullable": true});
            with_product_node(v, node.clone());
            at(v, "/tools/get_product")["output"] = output.clone();
            at(v, &format!("{GET}/done"))["value"] = value.clone();
        })
    };
    let orders = json!({"type": "read", "entity": "Order", "orderBy": "quantity", "limit": 5,
        "include": {"item": {"ref": "product"}}, "next": "done"});
    let array = |items: Value| json!({"type": "object", "properties": {"x": {"type": "array", "items": items}}});
    let l = with(
        orders.clone(),
        json!({"x": "product"}),
        array(json!({"type": "object", "properties": {"item": {"type": "object"}}})),
    );
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "the `ref` include `item` may be null");
    let l = with(
        orders,
        json!({"x": "product"}),
        array(
            json!({"type": "object", "properties": {"item": {"type": ["object", "null"],
            "properties": {"note": {"type": "string"}}}}}),
        ),
    );
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "`x[].item.note`: `Product.note` may be null");
    let products = json!({"type": "read", "entity": "Product", "orderBy": "sku", "limit": 5,
        "include": {"orders": {"from": "Order", "by": "product", "limit": 3}}, "next": "done"});
    let l = with(
        products.clone(),
        json!({"x": "product"}),
        array(json!({"type": "object", "properties": {"orders": {"type": "object"}}})),
    );
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "the `from` include `orders` is a list of `Order` rows");
    let l = with(
        products,
        json!({"x": "product"}),
        array(json!({"type": "object", "properties": {"orders": {"type": "array"}}})),
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // Groups.
    let groups = json!({"type": "aggregate", "entity": "Product", "groupBy": ["note"],
        "measures": {"n": {"count": "*"}}, "limit": 10, "next": "done"});
    for (items, says) in [
        (
            json!({"type": "object", "properties": {"note": {"type": ["string", "null"]}},
                "additionalProperties": false}),
            "a group of `product` has `n`, which this closed object does not declare",
        ),
        (
            json!({"type": "object", "properties": {"note": {"type": "string"}, "n": {"type": "integer"}}}),
            "`note` of a group of `product` may be null",
        ),
        (
            json!({"type": "object", "properties": {"n": {"type": "string"}}}),
            "`n` of a group of `product` is an int",
        ),
    ] {
        let l = with(groups.clone(), json!({"x": "product"}), array(items));
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, says);
    }
}

/// A double returned where the output schema's type is integer (a mean, a
/// quotient of doubles): a call where it is not whole answers 500, so it
/// is `output-mismatch`; `int(…)` of it, or a number schema, is fine.
#[test]
fn doubles_into_integer_outputs_are_refused() {
    let with = |value: &'static str, ty: Value| {
        load_with(move |v| {
            at(v, "/tools/get_product")["output"] =
                json!({"type": "object", "properties": {"x": {"type": ty.clone()}}});
            at(v, &format!("{GET}/product"))["next"] = json!("mean");
            at(v, GET)["mean"] = json!({"type": "aggregate", "entity": "Product",
                "measures": {"avg": {"avg": "price"}, "top": {"max": "price"}}, "next": "done"});
            at(v, &format!("{GET}/done"))["value"] = json!({"x": value});
        })
    };
    // Bytes are written as base64 text.
    let l = with("bytes(product.name)", json!("integer"));
    let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
    assert_message(d, "this is a string");
    for value in [
        "mean.avg != null ? mean.avg : 0.0",
        "product.price / 2.0",
        "double(product.price)",
    ] {
        let l = with(value, json!("integer"));
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, &format!("`{value}` is a double"));
        assert_message(d, "convert it with `int(…)`");
    }
    for (value, ty) in [
        ("mean.avg", json!(["number", "null"])),
        ("int(product.price / 2.0)", json!("integer")),
        ("mean.top", json!(["integer", "null"])),
        ("product.price / 2", json!("integer")),
    ] {
        let l = with(value, ty);
        assert!(l.errors.is_empty(), "{value}: {}", list(&l.errors));
    }
}

/// More that the checker can know, found by writing specs from the docs:
/// literals folded at check time (`50 * 3`, `null`) against a field, a
/// `?:` whose branch has the wrong type, a literal `after`, a `foreach`
/// over a literal list longer than its `maxItems`, NaN and division by
/// `0.0`, a `where` date that is no timestamp, and `return`s that break
/// the output schema: a literal outside its `enum`, a whole row into a
/// closed object, a list of ints as strings, a map as a string.
#[test]
fn more_that_the_checker_can_know() {
    let set = |value: Value| {
        load_with(move |v| {
            at(v, "/entities/Product/fields")["stock"]["maximum"] = json!(100);
            at(v, &format!("{BODY}/take"))["set"] = json!({"stock": value});
        })
    };
    for (value, code, says) in [
        (
            json!("50 * 3"),
            "invalid-value",
            "`Product.stock` must be at most 100, and this writes 150",
        ),
        (
            json!(null),
            "invalid-value",
            "`Product.stock` does not take null",
        ),
        (
            json!("null"),
            "invalid-value",
            "`Product.stock` does not take null",
        ),
        (
            json!("input.quantity > 0 ? 1.5 : 0"),
            "expr-type",
            "`Product.stock` is an integer field, but this is a double",
        ),
    ] {
        let l = set(value.clone());
        let errors: Vec<_> = l.errors.iter().filter(|d| d.code == code).collect();
        assert_eq!(errors.len(), 1, "{value}: {}", list(&l.errors));
        assert_message(errors[0], says);
        // At the value written, a JSON literal as an expression.
        assert_eq!(errors[0].path, format!("{BODY}/take/set/stock"), "{value}");
    }
    let read = |node: Value| with_first_node(|_| {}, node);
    let l = read(
        json!({"type": "read", "entity": "Product", "where": {"stock": {"gt": 0}},
        "orderBy": ["id"], "page": true, "limit": 5, "after": "'first'", "next": "done"}),
    );
    assert_message(
        only_error(&l, "invalid-value", &format!("{GET}/product/after")),
        "`after` is the literal `'first'`",
    );
    let l = read(json!({"type": "read", "entity": "Product",
        "where": {"stock": {"gt": 0, "when": "input.id != '' ? 'yes' : false"}}, "limit": 5, "next": "done"}));
    assert_message(
        only_error(&l, "expr-type", &format!("{GET}/product/where/stock/when")),
        "a bool is needed here, but this is a string",
    );
    let l = read(
        json!({"type": "read", "entity": "Product", "where": {"created_at": {"gte": "'2026-01-01'"}}, "limit": 5, "next": "done"}),
    );
    assert_message(
        only_error(
            &l,
            "invalid-value",
            &format!("{GET}/product/where/created_at/gte"),
        ),
        "`'2026-01-01'` is not an RFC 3339 timestamp",
    );
    let l = read(
        json!({"type": "foreach", "items": "['a', 'b', 'c']", "as": "s", "maxItems": 2,
        "body": {"entry": "r", "nodes": {"r": {"type": "read", "entity": "Product", "where": {"sku": "s"}, "limit": 1}}},
        "next": "done"}),
    );
    assert_message(
        only_error(&l, "invalid-value", &format!("{GET}/product/maxItems")),
        "a literal list of 3 items and accepts at most 2",
    );
    judge(
        |v| {
            let input = &mut at(v, "/tools/get_product")["input"];
            input["properties"]["factor"] = json!({"type": "number"});
            input["required"] = json!(["factor"]);
        },
        &[
            ("math.sqrt(-1.0)", "`NaN` cannot be written as JSON"),
            ("input.factor / 0.0", "a division by `0.0`"),
        ],
        &["math.isNaN(math.sqrt(-1.0))", "input.factor / 2.0"],
    );
    let returning = |output: Value, value: Value| {
        load_with(move |v| {
            at(v, "/tools/get_product")["output"] = output;
            at(v, &format!("{GET}/done"))["value"] = value;
        })
    };
    for (output, value, says) in [
        (
            json!({"type": "object", "properties": {"state": {"enum": ["open", "closed"]}}}),
            json!({"state": "'opened'"}),
            "\"opened\" is not one of",
        ),
        (
            json!({"type": "object", "properties": {"p": {"type": "object",
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}}, "additionalProperties": false}}}),
            json!({"p": "product"}),
            "a whole `Product` row has `sku`, which this closed object does not declare",
        ),
        (
            json!({"type": "object", "properties": {"l": {"type": "array", "items": {"type": "string"}}}}),
            json!({"l": "[1, 2].map(x, x * 2)"}),
            "this list's elements are integers",
        ),
        (
            json!({"type": "object", "properties": {"m": {"type": "string"}}}),
            json!({"m": "{'a': 1}"}),
            "this is an object",
        ),
        (
            json!({"type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}}),
            json!({"n": "'three'"}),
            "this is a string, and the schema's type is \"integer\"",
        ),
    ] {
        let l = returning(output.clone(), value);
        let d = only_error(&l, "output-mismatch", &format!("{GET}/done/value"));
        assert_message(d, says);
    }
}

/// A many-row `transition` whose `where` keeps only states its action does
/// not move from moves no row, ever: refused. One that keeps a state it
/// moves from passes.
#[test]
fn a_transition_that_can_move_no_row_is_refused() {
    let transition = |status: Value| {
        load_with(move |v| {
            at(v, BODY)["take"] = json!({"type": "transition", "entity": "Order", "action": "pay",
                "where": {"status": status, "product": "product.id"}, "limit": 10});
        })
    };
    let l = transition(json!("'paid'"));
    let d = only_error(&l, "invalid-value", &format!("{BODY}/take/where/status/eq"));
    assert_message(d, "`pay` moves `Order` rows only from pending");
    let l = transition(json!({"in": ["'paid'"]}));
    assert_eq!(
        l.errors
            .iter()
            .filter(|d| d.code == "invalid-value")
            .count(),
        1,
        "{}",
        list(&l.errors)
    );
    let l = transition(json!("'pending'"));
    assert!(
        !l.errors.iter().any(|d| d.code == "invalid-value"),
        "{}",
        list(&l.errors)
    );
    // Inside an `and` too; not under a `when` (it may not apply) nor an
    // `or`.
    let written = |filter: Value| {
        load_with(move |v| {
            at(v, BODY)["take"] = json!({"type": "transition", "entity": "Order", "action": "pay",
                "where": filter, "limit": 10});
        })
    };
    let l = written(json!({"and": [{"product": "product.id"}, {"and": [{"status": "'paid'"}]}]}));
    assert_eq!(
        l.errors
            .iter()
            .filter(|d| d.code == "invalid-value")
            .count(),
        1,
        "{}",
        list(&l.errors)
    );
    for clean in [
        json!({"product": "product.id", "status": {"eq": "'paid'", "when": "input.quantity > 5"}}),
        json!({"or": [{"status": "'paid'"}, {"product": "product.id"}]}),
    ] {
        let l = written(clean.clone());
        assert!(
            !l.errors.iter().any(|d| d.code == "invalid-value"),
            "{clean}: {}",
            list(&l.errors)
        );
    }
}

/// A tuple (`prefixItems`) is not typed by its `items`, which types only
/// the elements after the prefix: a string in first position is a string
/// (it was refused as an integer); a tuple whose positions all agree is a
/// list of that type.
#[test]
fn a_tuples_elements_are_not_typed_by_items_alone() {
    let tuple = |prefix: Value, rest: Value, expr: &str| {
        let expr = expr.to_owned();
        load_with(move |v| {
            at(v, "/tools/get_product/input/properties")["pair"] =
                json!({"type": "array", "prefixItems": prefix, "items": rest});
            at(v, GET)["done"]["value"]["price"] = json!(expr);
        })
    };
    let l = tuple(
        json!([{"type": "string"}]),
        json!({"type": "integer"}),
        "has(input.pair) ? input.pair[0].size() : 0",
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // Every position an integer: a list of integers, checked as such.
    let l = tuple(
        json!([{"type": "integer"}]),
        json!({"type": "integer"}),
        "has(input.pair) ? input.pair[0].size() : 0",
    );
    only_error(&l, "expr-type", &format!("{GET}/done/value/price"));
}

/// A loop's element may be null where a member of its list may be: a
/// `foreach` or a `create`'s `each` over an input array whose `items` let
/// null through, or over a literal list with a member that may be null.
/// Guarded, or under a guard before the loop, it is clean.
#[test]
fn a_loop_element_may_be_null_when_its_list_holds_null() {
    let tool = |items: &str, body_value: &str, create: bool, guard: Option<&str>| {
        let inner = if create {
            json!({"type": "transaction", "body": {"entry": "c", "nodes": {
                "c": {"type": "create", "entity": "N", "each": items, "as": "x",
                      "values": {"k": body_value}}}}, "next": "r"})
        } else {
            json!({"type": "foreach", "items": items, "as": "x", "maxItems": 5,
                   "body": {"entry": "v", "nodes": {"v": {"type": "let", "values": {"v": body_value}}}},
                   "next": "r"})
        };
        let mut nodes = json!({"L": inner, "r": {"type": "return", "value": {"ok": "true"}},
                               "f": {"type": "fail", "status": 400, "code": "missing"}});
        let entry = match guard {
            Some(cond) => {
                nodes["g"] = json!({"type": "if", "if": cond, "then": "L", "else": "f"});
                "g"
            }
            None => "L",
        };
        let spec = json!({"sinew": "0.2", "name": "loops",
            "entities": {"N": {"fields": {"k": {"type": "integer"}}}},
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]}, "idempotencyKey": "request.idempotencyKey",
                "input": {"type": "object", "required": ["a", "xs", "ys"], "additionalProperties": false,
                    "properties": {"a": {"type": "string"}, "o": {"type": "string"},
                        "xs": {"type": "array", "maxItems": 5, "items": {"type": ["string", "null"]}},
                        "ys": {"type": "array", "maxItems": 5, "items": {"type": "string"}}}},
                "flow": {"entry": entry, "nodes": nodes}}}});
        load_text(&spec.to_string())
    };
    for create in [false, true] {
        for (items, guard) in [
            ("input.xs", None),
            ("[input.a, input.o]", None),
            ("[input.a, null]", None),
        ] {
            let l = tool(items, "x.size()", create, guard);
            assert_eq!(l.errors.len(), 1, "{items}: {}", list(&l.errors));
            assert_message(&l.errors[0], "`x` may be null here");
        }
        for (items, value, guard) in [
            ("input.ys", "x.size()", None),
            ("input.xs", "x != null ? x.size() : 0", None),
            ("[input.a, input.o]", "x.size()", Some("has(input.o)")),
        ] {
            let l = tool(items, value, create, guard);
            assert!(l.errors.is_empty(), "{items} {value}: {}", list(&l.errors));
        }
    }
}

fn cases_reach_g(spec: &Value) -> bool {
    spec.pointer("/tools/t/flow/nodes/s/cases")
        .and_then(Value::as_array)
        .is_some_and(|cases| cases.iter().any(|c| c["next"] == "g"))
}

/// A `switch` takes its first case whose `when` holds: a later case, and
/// the default, are reached only when the earlier `when`s did not hold,
/// and are guarded by that.
#[test]
fn a_switch_default_is_guarded_by_the_cases_before_it() {
    let with = |cases: Value, default_reads: &str| -> Loaded {
        let spec = json!({"sinew": "0.2", "name": "sw",
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]},
                "input": {"type": "object", "additionalProperties": false,
                    "properties": {"o": {"type": "string"}, "p": {"type": "string"}}},
                "flow": {"entry": "s", "nodes": {
                    "s": {"type": "switch", "cases": cases, "default": "r"},
                    "f": {"type": "fail", "status": 400, "code": "missing"},
                    "g": {"type": "return", "value": {"v": "input.o.size()"}},
                    "r": {"type": "return", "value": {"v": default_reads}}}}}}});
        let mut spec = spec;
        // Unreached unless a case goes to it.
        if !cases_reach_g(&spec)
            && let Some(nodes) = spec
                .pointer_mut("/tools/t/flow/nodes")
                .and_then(Value::as_object_mut)
        {
            nodes.remove("g");
        }
        load_text(&spec.to_string())
    };
    let l = with(
        json!([{"when": "!has(input.o)", "next": "f"}]),
        "input.o.size()",
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // The second case is reached only when the first did not hold.
    let l = with(
        json!([{"when": "!has(input.o)", "next": "f"}, {"when": "true", "next": "g"}]),
        "0",
    );
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
    // A guard of another name proves nothing of `input.o`.
    let l = with(
        json!([{"when": "!has(input.p)", "next": "f"}]),
        "input.o.size()",
    );
    assert_eq!(l.errors.len(), 1, "{}", list(&l.errors));
    assert_message(&l.errors[0], "`input.o` may be null here");
}

/// A `create` with `each` over a list a `let` holds is bounded by that
/// list: a literal array's length, or the bound of the expression it
/// holds; a `let` of an unbounded list stays Red.
#[test]
fn a_create_each_over_a_let_list_is_bounded_by_it() {
    let with = |values: Value| {
        let spec = json!({"sinew": "0.2", "name": "lets",
            "entities": {"N": {"fields": {"k": {"type": "string"}}}},
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]}, "idempotencyKey": "request.idempotencyKey",
                "input": {"type": "object", "required": ["a", "b", "bounded", "open"],
                    "additionalProperties": false, "properties": {
                        "a": {"type": "string"}, "b": {"type": "string"},
                        "bounded": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
                        "open": {"type": "array", "items": {"type": "string"}}}},
                "flow": {"entry": "L", "nodes": {
                    "L": {"type": "let", "values": values, "next": "tx"},
                    "tx": {"type": "transaction", "body": {"entry": "c", "nodes": {
                        "c": {"type": "create", "entity": "N", "each": "L.xs", "as": "x",
                              "values": {"k": "x"}}}}, "next": "r"},
                    "r": {"type": "return", "value": {"n": "c.size()"}}}}}}});
        let l = load_text(&spec.to_string());
        assert!(l.errors.is_empty(), "{}", list(&l.errors));
        risk::analyze(&l)
            .findings()
            .any(|f| f.code == "unbounded-update")
    };
    assert!(!with(json!({"xs": ["input.a", "input.b"]})));
    assert!(!with(json!({"xs": "[input.a, input.b]"})));
    assert!(!with(json!({"xs": "input.bounded.map(s, s + '!')"})));
    assert!(with(json!({"xs": "input.open"})));
}

/// A list a `let` holds, or a `foreach` bound (its elements, or its
/// `collect` values), keeps what may be null in it: a macro over it, or a
/// loop over it, guards its variable.
#[test]
fn a_let_or_foreach_list_keeps_its_members_that_may_be_null() {
    let with = |nodes: Value, entry: &str| {
        let spec = json!({"sinew": "0.2", "name": "lists",
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]},
                "input": {"type": "object", "required": ["a", "xs"], "additionalProperties": false,
                    "properties": {"a": {"type": "string"}, "o": {"type": "string"},
                        "xs": {"type": "array", "maxItems": 5, "items": {"type": ["string", "null"]}}}},
                "flow": {"entry": entry, "nodes": nodes}}}});
        load_text(&spec.to_string())
    };
    let ret = |value: &str| json!({"type": "return", "value": {"n": value}});
    let let_then = |xs: Value, value: &str| json!({"L": {"type": "let", "values": {"xs": xs}, "next": "r"}, "r": ret(value)});
    let foreach_then = |items: &str, collect: Option<&str>, value: &str| {
        let mut f = json!({"type": "foreach", "items": items, "as": "i", "maxItems": 5,
            "body": {"entry": "v", "nodes": {"v": {"type": "let", "values": {"v": "1"}}}},
            "next": "r"});
        if let Some(c) = collect {
            f["collect"] = json!(c);
        }
        json!({"F": f, "r": ret(value)})
    };
    for (nodes, entry) in [
        (
            let_then(json!("[input.a, input.o]"), "L.xs.map(z, z.size())"),
            "L",
        ),
        (
            let_then(json!(["input.a", "input.o"]), "L.xs.map(z, z.size())"),
            "L",
        ),
        (let_then(json!("input.xs"), "L.xs.map(z, z.size())"), "L"),
        (foreach_then("input.xs", None, "F.map(z, z.size())"), "F"),
        (
            foreach_then(
                "[1, 2]",
                Some("i == 1 ? input.a : input.o"),
                "F.map(z, z.size())",
            ),
            "F",
        ),
    ] {
        let l = with(nodes.clone(), entry);
        assert_eq!(l.errors.len(), 1, "{nodes}: {}", list(&l.errors));
        assert_message(&l.errors[0], "`z` may be null here");
    }
    for (nodes, entry) in [
        (
            let_then(json!("[input.a, 'b']"), "L.xs.map(z, z.size())"),
            "L",
        ),
        (
            let_then(json!("input.xs"), "L.xs.map(z, z == null ? 0 : z.size())"),
            "L",
        ),
        (foreach_then("[input.a]", None, "F.map(z, z.size())"), "F"),
        (
            foreach_then("[1, 2]", Some("input.a"), "F.map(z, z.size())"),
            "F",
        ),
    ] {
        let l = with(nodes.clone(), entry);
        assert!(l.errors.is_empty(), "{nodes}: {}", list(&l.errors));
    }
}

/// Where a value's type is checked (a limit, a condition, an id), each
/// branch of a `?:` is judged by its own type, through a `let` too.
#[test]
fn a_let_value_is_judged_branch_by_branch_where_its_type_is_checked() {
    let with = |x: &str| {
        let spec = json!({"sinew": "0.2", "name": "lets",
            "entities": {"N": {"fields": {"k": {"type": "integer"}}}},
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]},
                "input": {"type": "object", "required": ["b"], "additionalProperties": false,
                    "properties": {"b": {"type": "boolean"}}},
                "flow": {"entry": "L", "nodes": {
                    "L": {"type": "let", "values": {"x": x}, "next": "R"},
                    "R": {"type": "read", "entity": "N", "limit": "L.x", "next": "r"},
                    "r": {"type": "return", "value": {"n": "R.size()"}}}}}}});
        load_text(&spec.to_string())
    };
    let l = with("input.b ? 5 : 2.5");
    assert_eq!(l.errors.len(), 1, "{}", list(&l.errors));
    assert_message(
        &l.errors[0],
        "a positive integer is needed here, but this is a double",
    );
    let l = with("input.b ? 5 : 10");
    assert!(l.errors.is_empty(), "{}", list(&l.errors));
}

/// An operand whose `?:` branches give different types is judged branch
/// by branch: the calls that take the wrong one would fail.
#[test]
fn an_operand_of_mixed_branches_is_judged_by_each() {
    let with = |value: &str| {
        let spec = json!({"sinew": "0.2", "name": "mixed",
            "tools": {"t": {"description": "d", "trigger": {"http": {"method": "POST", "path": "/t"}},
                "auth": {"roles": ["staff"]},
                "input": {"type": "object", "required": ["b"], "additionalProperties": false,
                    "properties": {"b": {"type": "boolean"}}},
                "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": {"v": value}}}}}}});
        load_text(&spec.to_string())
    };
    let l = with("(input.b ? 1 : 'a') + 1");
    assert_eq!(l.errors.len(), 1, "{}", list(&l.errors));
    assert_message(&l.errors[0], "which a branch of `?:` gives");
    for clean in [
        "(input.b ? 1 : 2) + 1",
        "(input.b ? 'a' : 'b') + 'c'",
        "input.b ? 1 : 'a'",
    ] {
        let l = with(clean);
        assert!(l.errors.is_empty(), "{clean}: {}", list(&l.errors));
    }
}

/// A `default` its field's own rules refuse is `invalid-value`: every
/// create leaving the field out would answer 422 (and a migration filling
/// the column's nulls with it would fail half-way).
#[test]
fn a_default_its_field_refuses_is_an_error() {
    let with = |field: Value| {
        let spec = json!({"sinew": "0.2", "name": "d", "tools": {},
            "entities": {"Item": {"fields": {"f": field}}}});
        load_text(&spec.to_string())
    };
    for (field, says) in [
        (
            json!({"type": "integer", "minimum": 0, "default": -1}),
            "must be at least 0",
        ),
        (
            json!({"type": "string", "enum": ["a", "b"], "default": "c"}),
            "is not one of the allowed values",
        ),
        (
            json!({"type": "string", "maxLength": 2, "default": "abc"}),
            "must be at most 2 characters",
        ),
        (json!({"type": "string", "default": null}), "cannot be null"),
        (json!({"type": "timestamp", "default": "soon"}), "RFC 3339"),
    ] {
        let l = with(field.clone());
        let d = only_error(&l, "invalid-value", "/entities/Item/fields/f/default");
        assert_message(d, says);
    }
    for field in [
        json!({"type": "integer", "minimum": 0, "default": 0}),
        json!({"type": "string", "nullable": true, "default": null}),
        json!({"type": "string", "enum": ["a", "b"], "default": "a"}),
    ] {
        let l = with(field.clone());
        assert!(l.errors.is_empty(), "{field}: {}", list(&l.errors));
    }
}
