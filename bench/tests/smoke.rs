//! The benchmark harness end to end, briefly: it starts Postgres and the
//! four bank servers (A, B, C and C′, the hand-written one with a plain
//! audit insert), drives both tools at two clients (and the clinic's list
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
        "| tool | clients | A req/s | B req/s | C req/s | C′ req/s | A/C′ |",
        "goal A/C′ ≥ 0.85 on transfer at 2 client(s):",
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
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("C′ hand-written, plain audit:")
                && l.contains("(conserved)")
                && l.contains("plain audit entries (no chain)")),
        "and C′'s, with its plain audit table:\n{stdout}"
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

/// `sinew-bench scale`, briefly: every engine with one and two processes
/// at two clients, the sequencer's lag, the goals, and the checks of every
/// database.
#[test]
fn the_scale_out_measurement_runs_and_checks_its_servers() {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew-bench"))
        .args(["scale", "--quick", "--concurrency", "2"])
        .args(["--seconds", "0.5", "--warmup", "0.2"])
        .output()
        .expect("run sinew-bench scale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sinew-bench scale failed:\n{stdout}\n{stderr}"
    );
    for needle in [
        "| engine | processes | 2 clients |",
        "| A component | 2 |",
        "| C′ hand-written, plain audit | 2 |",
        "| A/C′ | 1 |",
        "| A 2 processes / A 1 process |",
        "sequencer lag, queued → chained",
        "- A/C′ ≥ 0.85 on transfer:",
        "- sequencer lag p99 ≤ 1 s (every A run):",
        "A component (scale):",
        "scale answers that were not 2xx: 0 of",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in:\n{stdout}");
    }
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("(scale): ") && l.contains("(conserved), audit chain verified"))
            .count(),
        2,
        "A's and B's databases are checked:\n{stdout}"
    );
}
