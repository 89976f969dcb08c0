//! The npm package `sinew-core` as a user gets it: `sinew component --npm`
//! writes it (`sinew_host::npm`), `npm pack` makes the tarball, `npm
//! install --offline` puts it in a fresh directory, and Node's built-in
//! test runner runs `packages/sinew-core/test/package.test.mjs` there,
//! importing it by name: the API on the whole scenario corpus and every
//! risk report, against the native engine's. Its TypeScript types are
//! checked (`tsc --strict`, the TypeScript of `tests/node`) on
//! `packages/sinew-core/test/types.ts`.
//!
//! Everything lives in `target/npm-package/`. Prints the tarball's size
//! and the instantiation times the test measured.

use sinew_tests::root;
use std::path::Path;
use std::process::{Command, Output};

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    out
}

#[test]
fn the_npm_package_installs_offline_and_passes_its_tests() {
    let work = sinew_tests::conformance::dir("npm-package");
    let _ = std::fs::remove_dir_all(&work);
    let corpus = work.join("conformance");
    let scenarios = sinew_tests::conformance::write(&corpus);

    // The package, and its tarball.
    let package = work.join("sinew-core");
    let pkg = sinew_host::npm::Package::new().unwrap();
    pkg.write(&package).unwrap();
    let packed = run(
        Command::new("npm")
            .args(["pack", "--json", "--pack-destination"])
            .arg(&work)
            .current_dir(&package),
        "npm pack",
    );
    let info: serde_json::Value = serde_json::from_slice(&packed.stdout).unwrap();
    let tarball = work.join(info[0]["filename"].as_str().unwrap());
    let size = info[0]["size"].as_u64().unwrap();
    let unpacked = info[0]["unpackedSize"].as_u64().unwrap();
    // The tarball holds exactly the package's files (its `files` list
    // leaves nothing out and lets nothing else in, such as its tests).
    let mut listed: Vec<&str> = info[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let written: Vec<&str> = pkg.files.keys().map(String::as_str).collect();
    assert_eq!(listed, written, "the tarball's files");

    // A fresh project installs it offline, from the tarball alone (it has
    // no dependencies), with a cache of its own.
    let app = work.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name": "app", "version": "0.0.0", "private": true, "type": "module"}"#,
    )
    .unwrap();
    run(
        Command::new("npm")
            .args(["install", "--offline", "--no-audit", "--no-fund", "--cache"])
            .arg(work.join("npm-cache"))
            .arg(&tarball)
            .current_dir(&app),
        "npm install --offline of the tarball",
    );
    let tests = root().join("packages/sinew-core/test");
    for f in ["package.test.mjs", "types.ts"] {
        std::fs::copy(tests.join(f), app.join(f)).unwrap();
    }

    // Its tests, by Node's test runner.
    let out = run(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "package.test.mjs"])
            .env("SINEW_CONFORMANCE", &corpus)
            .current_dir(&app),
        "node --test (packages/sinew-core/test/package.test.mjs)",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    let tests = std::fs::read_to_string(tests.join("package.test.mjs"))
        .unwrap()
        .matches("\ntest(")
        .count();
    assert!(report.contains(&format!("pass {tests}")), "{report}");
    assert!(report.contains("fail 0"), "{report}");
    let timings = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("timings: "))
        .unwrap_or_else(|| panic!("the tests printed no timings:\n{report}"));

    // Its types, as a TypeScript user's code meets them.
    types_check(&app);

    println!(
        "sinew-core: tarball {:.2} MB ({:.2} MB unpacked, {} files); {scenarios} scenarios; {}",
        size as f64 / 1e6,
        unpacked as f64 / 1e6,
        listed.len(),
        timings,
    );
}

/// `tsc --strict --noEmit` on `types.ts` in `app`, with the TypeScript
/// `tests/node` installs.
fn types_check(app: &Path) {
    let tsc = sinew_tests::node_modules().join(".bin/tsc");
    let out = Command::new(&tsc)
        .args([
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--lib",
            "es2022,dom",
            "--types",
            "",
            "types.ts",
        ])
        .current_dir(app)
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", tsc.display()));
    assert!(
        out.status.success(),
        "tsc found errors in the package's types:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
