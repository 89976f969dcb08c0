//! The benchmark harness end to end, briefly: it starts Postgres and the
//! three servers, drives both tools at two clients (and the clinic's list
//! and statistics on three more, and the bulk write of 500 rows at one
//! client on three more), checks that each bank
//! database conserved its money and that its audit chain verifies (the
//! harness fails otherwise), times a cold start, and prints every section.
//! The figures of a debug build under test mean nothing; that the harness
//! still runs and still checks is what this guards.

use std::process::Command;

#[test]
fn the_harness_runs_every_section_and_checks_its_servers() {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew-bench"))
        .args(["--quick", "--concurrency", "2"])
        .args(["--seconds", "0.5", "--warmup", "0.2", "--cold-runs", "1"])
        .output()
        .expect("run sinew-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sinew-bench failed:\n{stdout}\n{stderr}"
    );
    for needle in [
        "| transfer | 2 |",
        "| history | 2 |",
        "| list | 2 |",
        "| stats | 2 |",
        "| bulk 500 | 1 |",
        "emit/plain throughput:",
        "requests to the sink",
        "clinic answers that were not 2xx: 0 of",
        "answers that were not 2xx:",
        "cold start, exec → first 200 of a tool",
        "== the component",
        "transfer, component (pooled, loaded instance)",
        "== per-request cost as the spec grows",
        "== the risk engine",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("(conserved), audit chain verified").count(),
        3,
        "each of the three databases is checked:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("(clinic): audit chain verified").count(),
        3,
        "each of the three clinic databases is checked:\n{stdout}"
    );
    assert_eq!(
        stdout
            .matches("(sweep): every task in one state, audit chain verified")
            .count(),
        3,
        "each of the three sweep databases is checked:\n{stdout}"
    );
}
