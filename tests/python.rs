//! A third runtime: the component composed onto the in-memory world, run
//! by wasmtime-py (PyPI `wasmtime`, its `wasmtime.component` API) from
//! `tests/python/conformance.py`, must reproduce the native engine's
//! responses, final state and audit chain on every scenario of the corpus,
//! and its risk reports, byte for byte (as under Node, `tests/node.rs`).
//!
//! The test writes the corpus to `target/python-conformance/`, makes a
//! virtual environment in `target/python-venv` with
//! `tests/python/requirements.txt` when it has none, and runs the script
//! there.

use sinew_tests::root;
use std::process::Command;

#[test]
fn the_component_runs_under_python_with_the_same_results() {
    let out = sinew_tests::conformance::dir("python-conformance");
    let n = sinew_tests::conformance::write(&out);
    let python = sinew_tests::python();
    let output = Command::new(&python)
        .arg(root().join("tests/python/conformance.py"))
        .arg(&out)
        .output()
        .expect("the venv's python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the Python run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{n} scenarios passed")),
        "{stdout}"
    );
    assert!(stdout.contains("risk reports identical"), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
