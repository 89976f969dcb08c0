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

use sinew_tests::root;
use std::process::Command;

#[test]
fn the_component_runs_under_node_with_the_same_results() {
    let out = sinew_tests::conformance::dir("node-conformance");
    let n = sinew_tests::conformance::write(&out);
    sinew_tests::node_modules();
    let node_dir = root().join("tests/node");
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
        stdout.contains(&format!("{n} scenarios passed")),
        "{stdout}"
    );
}
