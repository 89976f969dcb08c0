//! Another runtime: the component transpiled with jco and run under Node,
//! with a JavaScript in-memory storage, clock and external, must reproduce
//! the native engine's responses, state and audit entries on a subset of
//! the scenarios, and its risk reports.
//!
//! This test writes the component and the native traces to
//! `target/node-conformance/`, installs `tests/node`'s npm packages (from
//! its lockfile) when they are missing, and runs
//! `node tests/node/conformance.mjs target/node-conformance`.

use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_tests::scenario::{Native, Scenario, trace};
use sinew_tests::{root, specs_in};
use std::process::Command;

/// One scenario per example at least, a rollback, a compensation, a replay,
/// an inline spec.
const SUBSET: &[&str] = &[
    "shop-place-order-ok",
    "shop-place-order-out-of-stock-refund",
    "shop-place-order-idempotent-replay",
    "shop-get-order-ownership",
    "bank-transfer-ok",
    "bank-transfer-insufficient-funds",
    "bank-account-history",
    "booking-hold-room-ok",
    "booking-confirm-hold-ok",
    "booking-confirm-hold-expired",
    "ledger-invariant-rollback",
    "tickets-compensation",
];

#[test]
fn the_component_runs_under_node_with_the_same_results() {
    let out = root().join("target/node-conformance");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("traces")).unwrap();
    std::fs::create_dir_all(out.join("risk")).unwrap();
    std::fs::write(out.join("sinew.component.wasm"), sinew_host::COMPONENT).unwrap();
    for name in SUBSET {
        let path = root().join("tests/scenarios").join(format!("{name}.json"));
        let sc = Scenario::read(&path).unwrap();
        let bundle = Bundle::load(&sc.spec).unwrap();
        let native = trace(&sc, &mut Native::default()).unwrap();
        let mut seed = serde_json::Map::new();
        for (entity, rows) in &sc.seed {
            let rows: Vec<Value> = rows
                .iter()
                .map(|r| Value::Object(bundle.complete_row(entity, r, sc.clock_ms).unwrap()))
                .collect();
            seed.insert(entity.clone(), Value::Array(rows));
        }
        let mut unique = serde_json::Map::new();
        for (e, entity) in &bundle.spec.entities {
            let fields: Vec<&String> = entity
                .fields
                .iter()
                .filter(|(_, f)| f.unique)
                .map(|(n, _)| n)
                .collect();
            if !fields.is_empty() {
                unique.insert(e.clone(), json!(fields));
            }
        }
        let requests: Vec<Value> = sc
            .requests
            .iter()
            .map(|(r, at, _)| json!({"request": {"tool": r.tool, "input": r.input, "auth": r.auth, "id": r.id, "idempotencyKey": r.idempotency_key}, "at": at}))
            .collect();
        let responses: Vec<Value> = native
            .responses
            .iter()
            .map(|r| json!({"status": r.status, "body": r.body, "audit": r.audit}))
            .collect();
        let doc = json!({
            "name": name,
            "spec": sc.spec,
            "clock": sc.clock_ms,
            "seed": seed,
            "unique": unique,
            "externals": sc.externals,
            "requests": requests,
            "expected": {"responses": responses, "state": native.state, "audit": native.audit},
        });
        std::fs::write(
            out.join("traces").join(format!("{name}.json")),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
    }
    for path in specs_in("specs/examples")
        .into_iter()
        .chain(specs_in("specs/unsafe"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let doc = json!({"spec": text, "report": sinew_core::risk::check(&text).to_json()});
        std::fs::write(
            out.join("risk").join(format!("{name}.json")),
            doc.to_string(),
        )
        .unwrap();
    }

    let node_dir = root().join("tests/node");
    if !node_dir.join("node_modules/@bytecodealliance/jco").exists() {
        // `npm ci` installs exactly the lockfile; some registry mirrors lack
        // optional platform packages the lockfile lists, and then `npm
        // install` (of the same pinned jco) is the fallback.
        let npm = |args: &[&str]| {
            Command::new("npm")
                .args(args)
                .current_dir(&node_dir)
                .status()
                .expect("npm runs (install Node.js and npm)")
        };
        if !npm(&["ci", "--no-audit", "--no-fund"]).success() {
            assert!(
                npm(&["install", "--no-audit", "--no-fund"]).success(),
                "`npm install` in tests/node failed"
            );
        }
    }
    let output = Command::new("node")
        .arg(node_dir.join("conformance.mjs"))
        .arg(&out)
        .output()
        .expect("node runs (install Node.js)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the Node run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{} scenarios passed", SUBSET.len())),
        "{stdout}"
    );
}
