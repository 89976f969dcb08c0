//! Golden risk reports and fixed specs for every spec under `specs/`, and
//! the guarantees of the signal table: each signal fires on its unsafe spec
//! and on no example; each mechanical fix removes its signal.
//!
//! `BLESS=1 cargo test -p sinew-tests --test golden` rewrites the golden
//! files.

use sinew_core::patch;
use sinew_core::risk::{self, Level, SIGNALS};
use sinew_tests::{golden, root, specs_in};
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn golden_reports_and_fixed_specs() {
    let mut failures = Vec::new();
    for dir in ["specs/unsafe", "specs/examples"] {
        for spec in specs_in(dir) {
            let text = read(&spec);
            let report = risk::check(&text);
            let expected = root().join(dir).join("expected");
            let name = stem(&spec);
            if let Err(e) = golden(
                &expected.join(format!("{name}.report.json")),
                &(report.to_json() + "\n"),
            ) {
                failures.push(e);
            }
            let fixed = risk::fix(&text);
            if let Err(e) = golden(&expected.join(format!("{name}.fixed.json")), &fixed.text) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Postgres schema planned for each example (`sinew_core::migrate`).
#[test]
fn golden_schemas_of_the_examples() {
    let mut failures = Vec::new();
    for spec in specs_in("specs/examples") {
        let loaded = sinew_core::spec::load(&read(&spec));
        assert!(loaded.errors.is_empty());
        let sql = sinew_core::migrate::plan(&loaded.spec);
        let path = root()
            .join("specs/examples/expected")
            .join(format!("{}.sql", stem(&spec)));
        if let Err(e) = golden(&path, &sql) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `sinew diff` from each spec of the clinic's evolutions
/// (`sinew_tests::evolve`) to the next, and the migration `sinew migrate
/// --plan` (human and `--format json`) plans for a database migrated to the
/// previous one.
#[test]
fn golden_diffs_and_plans_of_the_evolutions() {
    use sinew_core::migrate::evolve::Schema;
    use sinew_host::pg::migrate::{Mode, migration};
    let specs = sinew_tests::evolve::clinic();
    let mut failures = Vec::new();
    let dir = root().join("specs/evolve/expected");
    for pair in specs.windows(2) {
        let [(_, old), (name, new)] = pair else {
            unreachable!()
        };
        let (a, b) = (old.to_string(), new.to_string());
        let loaded = sinew_core::spec::load(&b);
        assert!(loaded.errors.is_empty(), "{name}: {:?}", loaded.errors);
        let d = sinew_core::diff::diff(&a, &b).unwrap();
        let json = serde_json::to_string_pretty(&serde_json::to_value(&d).unwrap()).unwrap();
        let m = migration(
            &Schema::of(&sinew_core::spec::load(&a).spec),
            &loaded.spec,
            Mode::Migrate,
        );
        for (file, text) in [
            (format!("{name}.diff.txt"), d.human()),
            (format!("{name}.diff.json"), json + "\n"),
            (format!("{name}.plan.txt"), m.plan.human()),
            (format!("{name}.plan.json"), m.json(true) + "\n"),
        ] {
            if let Err(e) = golden(&dir.join(file), &text) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_signal_fires_on_its_own_spec_and_only_there() {
    for s in SIGNALS {
        let path = root().join("specs/unsafe").join(format!("{}.json", s.code));
        assert!(
            path.exists(),
            "no unsafe spec for signal `{}` at {}",
            s.code,
            path.display()
        );
        let report = risk::check(&read(&path));
        assert!(
            report.errors.is_empty(),
            "{}: spec errors {:?}",
            s.code,
            report.errors
        );
        let codes: Vec<&str> = report.findings().map(|f| f.code.as_str()).collect();
        assert!(
            !codes.is_empty(),
            "{} does not fire on its own spec",
            s.code
        );
        assert!(
            codes.iter().all(|c| *c == s.code),
            "{}: other signals fire too: {codes:?}",
            s.code
        );
        assert_eq!(report.level, s.level, "{}", s.code);
        assert_eq!(
            report.exit_code(),
            if s.level == Level::Red { 2 } else { 1 }
        );
    }
}

#[test]
fn examples_are_green() {
    for spec in specs_in("specs/examples") {
        let report = risk::check(&read(&spec));
        let name = stem(&spec);
        assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
        assert!(report.warnings.is_empty(), "{name}: {:?}", report.warnings);
        assert_eq!(report.level, Level::Green, "{name}");
        assert_eq!(report.exit_code(), 0);
        let open: Vec<_> = report.findings().filter(|f| !f.acknowledged).collect();
        assert!(open.is_empty(), "{name}: {open:?}");
        assert!(report.tools.len() >= 3, "{name} has fewer than three tools");
    }
    let booking = risk::check(&read(&root().join("specs/examples/booking.json")));
    assert!(
        booking
            .findings()
            .any(|f| f.acknowledged && f.level == Level::Yellow)
    );
}

/// Every mechanical fix, applied alone to its spec, removes its finding and
/// leaves a valid spec.
#[test]
fn every_mechanical_fix_removes_its_signal() {
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs_in("specs/unsafe") {
        let text = read(&spec);
        let report = risk::check(&text);
        for f in report.findings() {
            let Some(ops) = &f.fix.patch else { continue };
            seen.insert(f.code.clone());
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            patch::apply(&mut v, ops)
                .unwrap_or_else(|e| panic!("{}: {} does not apply: {e}", stem(&spec), f.code));
            let after = risk::check(&serde_json::to_string(&v).unwrap());
            assert!(
                after.errors.is_empty(),
                "{}: fix for {} breaks the spec: {:?}",
                stem(&spec),
                f.code,
                after.errors
            );
            assert!(
                !after
                    .findings()
                    .any(|g| g.code == f.code && g.path == f.path),
                "{}: fix for {} at {} did not remove it",
                stem(&spec),
                f.code,
                f.path
            );
            // The text-preserving application agrees with the structural one.
            let t = patch::apply_text(&text, ops).expect("applies in place");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&t).unwrap(), v);
        }
    }
    for code in [
        "unbounded-update",
        "write-outside-transaction",
        "hard-delete",
        "missing-retry",
        "missing-timeout",
        "high-row-impact",
        "unbounded-read",
        "missing-idempotency-key",
        "public-write",
    ] {
        assert!(
            seen.contains(code),
            "no mechanical fix exercised for {code}"
        );
    }
}

/// `fix` removes every mechanical finding and keeps what it does not touch.
#[test]
fn fix_all_leaves_no_mechanical_finding() {
    for spec in specs_in("specs/unsafe") {
        let text = read(&spec);
        let out = risk::fix(&text);
        assert!(
            !out.reformatted,
            "{}: a fix could not be applied in place",
            stem(&spec)
        );
        assert!(
            out.report.errors.is_empty(),
            "{}: {:?}",
            stem(&spec),
            out.report.errors
        );
        let left: Vec<_> = out
            .report
            .findings()
            .filter(|f| !f.acknowledged && f.fix.patch.is_some())
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", stem(&spec));
        if out.applied.is_empty() {
            assert_eq!(
                out.text,
                text,
                "{}: nothing applied but text changed",
                stem(&spec)
            );
        }
    }
}

#[test]
fn reports_are_deterministic() {
    for spec in specs_in("specs/unsafe")
        .into_iter()
        .chain(specs_in("specs/examples"))
    {
        let text = read(&spec);
        assert_eq!(risk::check(&text).to_json(), risk::check(&text).to_json());
    }
}

/// The value with the keys of every object in reverse order.
fn reversed(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .rev()
                .map(|(k, x)| (k.clone(), reversed(x)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

/// The same spec with the keys of its objects in another order gets the
/// same findings (nodes, messages, patches, up to the order of the keys of
/// the values they copy) and the same fixed spec: the
/// signals follow the flow, not the order of `nodes`.
#[test]
fn reports_do_not_depend_on_the_order_of_keys() {
    for spec in specs_in("specs/unsafe")
        .into_iter()
        .chain(specs_in("specs/examples"))
    {
        let text = read(&spec);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let other = serde_json::to_string_pretty(&reversed(&value)).unwrap();
        let (a, b) = (risk::check(&text), risk::check(&other));
        assert_eq!(a.level, b.level, "{}", stem(&spec));
        // Compared as values: a patch that copies a node of the spec keeps
        // the order of its keys.
        assert_eq!(
            serde_json::to_value(&a.tools).unwrap(),
            serde_json::to_value(&b.tools).unwrap(),
            "{}",
            stem(&spec)
        );
        let fixed =
            |t: &str| -> serde_json::Value { serde_json::from_str(&risk::fix(t).text).unwrap() };
        assert_eq!(fixed(&text), fixed(&other), "{}", stem(&spec));
    }
}

/// Fixing a fixed spec changes nothing: no fix makes way for itself again.
#[test]
fn fixing_twice_equals_fixing_once() {
    for spec in specs_in("specs/unsafe")
        .into_iter()
        .chain(specs_in("specs/examples"))
    {
        let once = risk::fix(&read(&spec));
        let twice = risk::fix(&once.text);
        assert!(
            twice.applied.is_empty(),
            "{}: {:?}",
            stem(&spec),
            twice.applied
        );
        assert_eq!(once.text, twice.text, "{}", stem(&spec));
    }
}
