//! Conformance: the component (in wasmtime) and the native core give
//! byte-identical responses, state and audit entries on every scenario, and
//! byte-identical risk reports on every spec under `specs/`.

use sinew_tests::scenario::{Native, Scenario, Trace, Wasm, corpus, run, trace};
use sinew_tests::specs_in;

fn bytes(t: &Trace) -> String {
    let responses: Vec<_> = t
        .responses
        .iter()
        .map(|r| serde_json::json!([r.status, r.body, r.audit]))
        .collect();
    serde_json::to_string_pretty(
        &serde_json::json!({"responses": responses, "state": t.state, "audit": t.audit}),
    )
    .unwrap()
}

#[test]
fn scenarios_are_byte_identical_on_the_component() {
    let engine = Wasm::engine();
    let mut failures = Vec::new();
    for path in corpus() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let sc = Scenario::read(&path).unwrap();
        let native = trace(&sc, &mut Native::default()).unwrap();
        let mut wasm = Wasm::new(engine.clone());
        match run(&sc, &mut wasm) {
            Err(e) => failures.push(format!(
                "--- {name}: expectations fail on the component\n{e}"
            )),
            Ok(component) => {
                let (a, b) = (bytes(&native), bytes(&component));
                if a != b {
                    let first = a
                        .lines()
                        .zip(b.lines())
                        .enumerate()
                        .find(|(_, (x, y))| x != y);
                    failures.push(format!(
                        "--- {name}: native and component differ at {first:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn risk_reports_are_byte_identical_on_the_component() {
    let mut wasm = Wasm::new(Wasm::engine());
    let shop =
        std::fs::read_to_string(sinew_tests::root().join("specs/examples/shop.json")).unwrap();
    wasm.load(&shop).unwrap();
    let mut n = 0;
    for path in specs_in("specs/examples")
        .into_iter()
        .chain(specs_in("specs/unsafe"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let native = sinew_core::risk::check(&text).to_json();
        let component = wasm.analyze(&text).unwrap();
        assert_eq!(native, component, "{}", path.display());
        n += 1;
    }
    // Broken specs too: errors and their pointers agree.
    for text in [
        "",
        "{",
        r#"{"sinew": "0.1"}"#,
        "[1, 2]",
        r#"{"sinew": "0.1", "name": "x", "tools": {"t": {"flow": 3}}}"#,
    ] {
        assert_eq!(
            sinew_core::risk::check(text).to_json(),
            wasm.analyze(text).unwrap(),
            "{text}"
        );
    }
    assert!(n >= 20);
}

/// Replay in the component: every final entry of every scenario, recorded
/// by the component, runs again there on its tape and writes the same entry
/// byte for byte (what `sinew audit replay` does on a server's log).
#[test]
fn every_execution_replays_identically_in_the_component() {
    use sinew_core::replay::Verdict;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for path in corpus() {
        let sc = Scenario::read(&path).unwrap();
        let t = trace(&sc, &mut Wasm::new(Wasm::engine())).unwrap();
        let replaying = rt
            .block_on(sinew_host::replay::Replaying::new(Wasm::engine(), &sc.spec))
            .unwrap();
        for entry in t.audit.iter().filter(|e| e["kind"] == "final") {
            let r = rt.block_on(replaying.replay(entry));
            match r.verdict {
                Verdict::Identical { .. } => replayed += 1,
                Verdict::Unreproducible { ref unverified, .. }
                    if unverified == &["input.email"] && r.tool == "hold_room" => {}
                // An input holding a NUL character is recorded by its hash
                // alone (Postgres cannot hold it): nothing to run again.
                // (So is one nested past the limit.)
                Verdict::NotReplayable { ref reason }
                    if reason.contains("NUL character") || reason.contains("nested deeper") => {}
                v => failures.push(format!(
                    "{} {} ({}): {v:?}",
                    path.file_name().unwrap().to_string_lossy(),
                    r.execution,
                    r.tool
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} executions did not replay identically:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(replayed >= 300, "only {replayed} executions replayed");
}

/// Recordings of the first tape version (SHA-256 digests, recorded on
/// Postgres at commit b84c6d5) replay identically in the component too,
/// which records XXH3 digests (`sinew audit replay` on an older log).
#[test]
fn recordings_of_the_first_tape_version_replay_in_the_component() {
    use sinew_core::replay::Verdict;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut replaying = std::collections::HashMap::new();
    let mut identical = 0;
    for (spec, entry) in sinew_tests::first_version_recordings() {
        let r = replaying.entry(spec).or_insert_with_key(|spec| {
            rt.block_on(sinew_host::replay::Replaying::new(Wasm::engine(), spec))
                .unwrap()
        });
        assert_eq!(
            entry["bundle"],
            r.hash.as_str(),
            "the spec that recorded it"
        );
        let r = rt.block_on(r.replay(&entry));
        match r.verdict {
            Verdict::Identical { .. } => identical += 1,
            v => panic!("{} ({}): {v:?}", r.execution, r.tool),
        }
    }
    assert!(identical >= 20, "only {identical} recordings replayed");
}
