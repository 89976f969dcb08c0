//! Writes sinew's conformance kit for embedders:
//!
//!     cargo run -p sinew-tests --bin conformance-kit -- DIR
//!
//! DIR (new, empty, or an earlier kit, whose files it replaces; files of
//! your own there stay) gets the core component (plain and composed), every scenario of the
//! corpus as the native engine ran it (`traces/`), every example spec's
//! risk report (`risk/`), a README saying how a host passes, and a
//! complete Python embedding with its runner (`python/run.py DIR --store
//! memory|sqlite|MODULE:CLASS`). See `tests/conformance-kit/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = &args[..] else {
        eprintln!("usage: conformance-kit DIR   (a new or empty directory, or an earlier kit)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    // The kit writes its README, components, traces/, risk/ and python/:
    // only into an empty directory or an earlier kit.
    let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    let earlier = std::fs::read_to_string(dir.join("README.md"))
        .is_ok_and(|t| t.starts_with("# sinew's conformance kit"));
    if !empty && !earlier {
        eprintln!(
            "error: `{}` is not empty and holds no earlier kit: give a new directory",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let n = sinew_tests::conformance::kit(&dir);
    let risks = std::fs::read_dir(dir.join("risk")).map_or(0, Iterator::count);
    println!(
        "wrote the conformance kit into {}: {n} scenarios, {risks} risk reports \
         (read {}/README.md; from Python: python {}/python/run.py {} --store memory)",
        dir.display(),
        dir.display(),
        dir.display(),
        dir.display()
    );
    ExitCode::SUCCESS
}
