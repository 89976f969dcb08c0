//! The scenario corpus as another runtime's conformance run reads it
//! (`tests/node/conformance.mjs`, `tests/python/conformance.py`): the
//! composed component, every scenario as the native engine ran it, and
//! every example spec with its native risk report, JSON as text.

use crate::scenario::{Native, Scenario, corpus, trace};
use crate::{root, specs_in};
use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use std::path::Path;

/// Writes `out/sinew.wasm` (the core alone, importing `storage`, `clock`
/// and `external`), `out/sinew.composed.wasm`, `out/traces/*.json` and
/// `out/risk/*.json` (those two directories emptied first, nothing else
/// of `out` touched); returns how many scenarios it wrote.
pub fn write(out: &Path) -> usize {
    for d in ["traces", "risk"] {
        let _ = std::fs::remove_dir_all(out.join(d));
    }
    std::fs::create_dir_all(out.join("traces")).unwrap();
    std::fs::create_dir_all(out.join("risk")).unwrap();
    std::fs::write(out.join("sinew.wasm"), sinew_host::COMPONENT).unwrap();
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

    scenarios.len()
}

/// The conformance kit's own files: its README, and the Python embedding
/// with its runner (`python/run.py` is `tests/python/storage_conformance.py`).
const KIT: &[(&str, &str)] = &[
    ("README.md", include_str!("../conformance-kit/README.md")),
    (
        "python/run.py",
        include_str!("../python/storage_conformance.py"),
    ),
    (
        "python/sinew_embed.py",
        include_str!("../python/sinew_embed.py"),
    ),
    (
        "python/store_memory.py",
        include_str!("../python/store_memory.py"),
    ),
    (
        "python/store_sqlite.py",
        include_str!("../python/store_sqlite.py"),
    ),
    (
        "python/requirements.txt",
        include_str!("../python/requirements.txt"),
    ),
];

/// Writes the conformance kit for embedders into `out`: the corpus as
/// [`write`] writes it, the kit's README and the Python embedding with its
/// runner, replacing those files and nothing else (a store module kept in
/// the kit's directory stays). Returns how many scenarios it wrote.
pub fn kit(out: &Path) -> usize {
    let n = write(out);
    for (path, text) in KIT {
        let dest = out.join(path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, text).unwrap();
    }
    n
}

/// The root-relative directory a runtime's run uses.
pub fn dir(name: &str) -> std::path::PathBuf {
    root().join("target").join(name)
}
