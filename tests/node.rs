//! Another runtime: the component composed onto the in-memory world
//! (`sinew_host::COMPOSED`), transpiled with jco and run under Node, as the
//! browser preview runs it, must reproduce the native engine's responses,
//! final state and audit chain on every scenario of the corpus, byte for
//! byte, and its risk reports.
//!
//! This test writes the composed component and the native traces to
//! `target/node-conformance/`, installs `tests/node`'s npm packages (from
//! its lockfile) when they are missing, and runs
//! `node tests/node/conformance.mjs target/node-conformance`. JSON the
//! component reads or writes crosses as text: the script compares texts,
//! and parses none.

use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_tests::scenario::{Native, Scenario, corpus, trace};
use sinew_tests::{root, specs_in};
use std::process::Command;

#[test]
fn the_component_runs_under_node_with_the_same_results() {
    let out = root().join("target/node-conformance");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("traces")).unwrap();
    std::fs::create_dir_all(out.join("risk")).unwrap();
    std::fs::write(out.join("sinew.composed.wasm"), sinew_host::COMPOSED).unwrap();
    let scenarios = corpus();
    for path in &scenarios {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let sc = Scenario::read(path).unwrap();
        let bundle = Bundle::load(&sc.spec).unwrap();
        let mut native = Native::default();
        let t = trace(&sc, &mut native).unwrap();
        // The world before the spec's declarations and the seed rows: the
        // script. (The script declares them from the spec, as the page does:
        // the final state, which lists them, checks that it declared what
        // the native engine did.)
        let state = json!({"externals": sc.externals});
        // Seed rows as the native engine completed them, one by one.
        let mut seed = Vec::new();
        for (entity, rows) in &sc.seed {
            for r in rows {
                let row = Value::Object(bundle.complete_row(entity, r, sc.clock_ms).unwrap());
                seed.push(json!({"entity": entity, "row": row.to_string()}));
            }
        }
        let requests: Vec<Value> = sc
            .requests
            .iter()
            .map(|(r, at, _)| {
                let auth = r.auth.as_ref().map(|a| {
                    // As host/src/runtime/bindings.rs: null claims are `{}`.
                    let claims = if a.claims.is_null() {
                        "{}".to_owned()
                    } else {
                        a.claims.to_string()
                    };
                    json!({"sub": a.sub, "roles": a.roles, "claims": claims})
                });
                json!({
                    "tool": r.tool,
                    "input": r.input.to_string(),
                    "auth": auth,
                    "id": r.id,
                    "idempotencyKey": r.idempotency_key,
                    "scheduled": r.scheduled,
                    "at": at,
                })
            })
            .collect();
        let responses: Vec<Value> = t
            .responses
            .iter()
            .map(|r| {
                json!({"status": r.status, "body": r.body.to_string(), "audit": r.audit.to_string()})
            })
            .collect();
        let doc = json!({
            "name": name,
            "spec": sc.spec,
            "clock": sc.clock_ms,
            "state": state.to_string(),
            "seed": seed,
            "requests": requests,
            "expected": {"responses": responses, "state": native.state().to_string()},
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
        stdout.contains(&format!("{} scenarios passed", scenarios.len())),
        "{stdout}"
    );
}
