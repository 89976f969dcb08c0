//! Python, the third runtime, two ways, with wasmtime-py (PyPI `wasmtime`,
//! its `wasmtime.component` API) in a virtual environment of its own
//! (`target/python-venv`, from `tests/python/requirements.txt`):
//!
//! - the component composed onto the in-memory world, from
//!   `tests/python/conformance.py`, must reproduce the native engine's
//!   responses, final state and audit chain on every scenario of the
//!   corpus, and its risk reports, byte for byte (as under Node,
//!   `tests/node.rs`);
//! - the plain core, its `storage` import implemented in Python
//!   (`tests/python/store_memory.py`, and `store_sqlite.py` on sqlite3),
//!   run from the conformance kit for embedders as it ships
//!   (`sinew_tests::conformance::kit`, `python/run.py`), must give the same
//!   responses byte for byte and the same final state; and a store class
//!   of a third party's module plugs into the kit's runner.

use std::path::Path;
use std::process::Command;

use sinew_tests::root;

/// Runs `python args…`; returns its standard output, or fails the test.
fn python(args: &[&dyn AsRef<std::ffi::OsStr>], cwd: &Path) -> String {
    let mut cmd = Command::new(sinew_tests::python());
    for a in args {
        cmd.arg(a);
    }
    let output = cmd
        .current_dir(cwd)
        .output()
        .expect("the venv's python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the Python run failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn the_component_runs_under_python_with_the_same_results() {
    let out = sinew_tests::conformance::dir("python-conformance");
    let n = sinew_tests::conformance::write(&out);
    let stdout = python(
        &[&root().join("tests/python/conformance.py"), &out],
        &root(),
    );
    assert!(
        stdout.contains(&format!("{n} scenarios passed")),
        "{stdout}"
    );
    assert!(stdout.contains("risk reports identical"), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn stores_written_in_python_pass_the_conformance_kit() {
    let kit = sinew_tests::conformance::dir("python-kit");
    let n = sinew_tests::conformance::kit(&kit);
    let run = kit.join("python/run.py");
    for store in ["memory", "sqlite"] {
        let stdout = python(&[&run, &kit, &"--store", &store], &root());
        assert!(
            stdout.contains(&format!("\n{n} scenarios passed\n")),
            "{store}: {stdout}"
        );
        assert!(stdout.contains("risk reports identical"), "{stdout}");
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    }

    // A third party's store, by MODULE:CLASS from the working directory:
    // here the in-memory one, made to lose every audit chain's hash. The
    // kit must notice.
    let app = kit.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("theirs.py"),
        "from store_memory import MemoryStore\n\n\
         class Theirs(MemoryStore):\n    \
             def state(self):\n        \
                 s = super().state()\n        \
                 for entry in s.get('audit', []):\n            \
                     entry['hash'] = '0' * 64\n        \
                 return s\n",
    )
    .unwrap();
    let output = Command::new(sinew_tests::python())
        .arg(&run)
        .arg(&kit)
        .args([
            "--store",
            "theirs:Theirs",
            "shop-place-order-ok",
            "bank-transfer-ok",
        ])
        .current_dir(&app)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("2 of 2 scenarios failed"), "{stdout}");
    assert!(stdout.contains("hash"), "{stdout}");
}

/// The kit's command writes into a new directory or an earlier kit,
/// replacing only its own files, and refuses any other non-empty
/// directory, changing nothing there.
#[test]
fn the_kit_command_writes_only_where_it_may() {
    let kit = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_conformance-kit"))
            .arg(dir)
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kit");
    let first = kit(&out);
    assert!(first.status.success(), "{first:?}");
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(
        said.contains("scenarios") && said.contains("run.py"),
        "{said}"
    );
    for f in [
        "README.md",
        "sinew.wasm",
        "sinew.composed.wasm",
        "python/run.py",
        "python/sinew_embed.py",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_dir(out.join("traces")).unwrap().count() > 100);
    // Again, over the earlier kit: a store of the user's there stays.
    std::fs::write(out.join("mystore.py"), "# mine\n").unwrap();
    let again = kit(&out);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("mystore.py")).unwrap(),
        "# mine\n"
    );
    // Elsewhere: refused, untouched.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep").unwrap();
    let refused = kit(&other);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    let left: Vec<_> = std::fs::read_dir(&other).unwrap().collect();
    assert_eq!(left.len(), 1);
}
