//! `sinew run`: a dry run in memory against a JSON state file.

use serde_json::{Value, json};
use sinew_tests::root;
use std::process::{Command, Output};

fn example(name: &str) -> String {
    root()
        .join("specs/examples")
        .join(name)
        .display()
        .to_string()
}

fn sinew(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(args)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const NOW: &str = "2026-01-01T00:00:00Z";
const ALICE: &str = r#"{"sub": "alice", "roles": ["customer"]}"#;

/// `sinew run` of the bank's `open_account` as Alice at [`NOW`], with the
/// state file `state`.
fn open_account(spec: &str, state: &str, input: &str, id: &str) -> Output {
    sinew(&[
        "run",
        spec,
        "--tool",
        "open_account",
        "--input",
        input,
        "--auth",
        ALICE,
        "--state",
        state,
        "--now",
        NOW,
        "--request-id",
        id,
    ])
}

#[test]
fn bank_runs_and_the_state_carries_over() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bank.json");
    let s = state.to_str().unwrap();
    let spec = example("bank.json");
    let open = |name: &str, id: &str| {
        let input = json!({"name": name, "currency": "EUR"}).to_string();
        open_account(&spec, s, &input, id)
    };
    let a = open("main", "r1");
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    let a = json_out(&a);
    assert_eq!(a["status"], 201);
    assert_eq!(a["audit"]["outcome"], "ok");
    let b = json_out(&open("savings", "r2"));
    let (ida, idb) = (
        a["body"]["account"].as_str().unwrap().to_string(),
        b["body"]["account"].as_str().unwrap().to_string(),
    );
    let teller = r#"{"sub": "tom", "roles": ["teller"]}"#;
    let dep = json!({"id": ida, "amount_cents": 5000, "reference": "cash"}).to_string();
    let d = sinew(&[
        "run",
        &spec,
        "--tool",
        "deposit",
        "--input",
        &dep,
        "--auth",
        teller,
        "--state",
        s,
        "--now",
        NOW,
        "--request-id",
        "r3",
    ]);
    assert_eq!(
        d.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&d.stdout)
    );
    let t = json!({"from_account": ida, "to_account": idb, "amount_cents": 1200}).to_string();
    let args = [
        "run",
        &spec,
        "--tool",
        "transfer",
        "--input",
        &t,
        "--auth",
        ALICE,
        "--state",
        s,
        "--now",
        NOW,
        "--request-id",
        "r4",
        "--idempotency-key",
        "t-1",
    ];
    let first = json_out(&sinew(&args));
    assert_eq!(first["status"], 201, "{first}");
    // The same key and input: the stored response, not a second transfer.
    let again = json_out(&sinew(&args));
    assert_eq!(again["body"], first["body"]);
    assert_eq!(again["audit"]["outcome"], "replayed");
    let balances = json_out(&sinew(&[
        "run",
        &spec,
        "--tool",
        "balances",
        "--auth",
        ALICE,
        "--state",
        s,
        "--now",
        NOW,
        "--request-id",
        "r5",
    ]));
    let total: i64 = balances["body"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["balance"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 5000);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(
        saved["audit"].as_array().unwrap().len(),
        6,
        "one final entry per run"
    );
}

#[test]
fn shop_and_booking_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("shop.json");
    let product = "00000000-0000-4000-8000-000000000001";
    std::fs::write(
        &state,
        json!({"rows": {"Product": [{"id": product, "sku": "TEA", "name": "Tea", "price_cents": 450, "stock": 3}]}}).to_string(),
    )
    .unwrap();
    let input = json!({"product": product, "quantity": 2}).to_string();
    let out = sinew(&[
        "run",
        &example("shop.json"),
        "--tool",
        "place_order",
        "--input",
        &input,
        "--auth",
        ALICE,
        "--state",
        state.to_str().unwrap(),
        "--now",
        NOW,
    ]);
    let v = json_out(&out);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"]["status"], "pending");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["rows"]["Product"][0]["stock"], 1);
    // booking: a public read without a state file.
    let out = sinew(&[
        "run",
        &example("booking.json"),
        "--tool",
        "list_rooms",
        "--now",
        NOW,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(json_out(&out)["status"], 200);
}

#[test]
fn an_error_response_exits_1_and_is_printed() {
    let out = sinew(&[
        "run",
        &example("bank.json"),
        "--tool",
        "balances",
        "--now",
        NOW,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_out(&out);
    assert_eq!(v["status"], 401);
    assert_eq!(v["body"]["code"], "unauthenticated");
    assert_eq!(v["audit"]["outcome"], "rejected");
}

#[test]
fn runs_are_deterministic_for_a_given_time_and_request_id() {
    let input = json!({"name": "main", "currency": "EUR"}).to_string();
    let args = [
        "run",
        &example("bank.json"),
        "--tool",
        "open_account",
        "--input",
        &input,
        "--auth",
        ALICE,
        "--now",
        NOW,
        "--request-id",
        "same",
    ];
    let (a, b) = (sinew(&args), sinew(&args));
    assert_eq!(a.stdout, b.stdout);
}

/// An input nests at most 32 levels: one level more is 400 `invalid_json`
/// (its audit entry records it by its hash), and the state file stays one
/// every later run reads (it once held an entry nesting the input past
/// what JSON readers take).
#[test]
fn an_input_nested_past_the_limit_is_refused_and_the_state_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bank.json");
    let spec = example("bank.json");
    let run = |input: &str, id: &str| open_account(&spec, state.to_str().unwrap(), input, id);
    // `{"name": [[…]]}`: the object is the first level.
    let nested = |levels: usize| {
        format!(
            r#"{{"name": {}"x"{}, "currency": "EUR"}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    // 32 levels pass the limit: the schema (a string name) refuses it.
    let out = run(&nested(32), "r1");
    let v = json_out(&out);
    assert_eq!(v["body"]["code"], "invalid_input", "{v}");
    for (levels, id) in [(33, "r2"), (126, "r3")] {
        let out = run(&nested(levels), id);
        assert_eq!(out.status.code(), Some(1), "{levels}");
        let v = json_out(&out);
        assert_eq!(v["status"], 400, "{levels}: {v}");
        assert_eq!(v["body"]["code"], "invalid_json", "{levels}: {v}");
        assert!(
            v["body"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("deeper than 32 levels")),
            "{v}"
        );
        assert_eq!(v["audit"]["outcome"], "rejected");
        assert_eq!(
            v["audit"]["input"],
            json!({"omitted": "nested deeper than 32 levels"})
        );
    }
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let audit = saved["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 3);
    assert!(audit.iter().all(Value::is_object), "{saved}");
    let out = run(r#"{"name": "main", "currency": "EUR"}"#, "r4");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bad input: a clear error on stderr, exit 2, and the state file untouched.
#[test]
fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let original = r#"{"rows": {}}"#;
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--tool".into(), "opne_account".into()],
            "no tool `opne_account`",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--input".into(),
                "{name:".into(),
            ],
            "--input is not valid JSON",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--input".into(),
                r#"{"name": "a", "name": "b", "currency": "EUR"}"#.into(),
            ],
            "holds a key twice",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--auth".into(),
                r#"{"roles": []}"#.into(),
            ],
            "`sub`",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--auth".into(),
                r#"{"sub": "a", "role": ["customer"]}"#.into(),
            ],
            "unknown key `role`",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--request-id".into(),
                " ".into(),
            ],
            "--request-id is empty",
            original,
        ),
        (
            vec![
                "--tool".into(),
                "open_account".into(),
                "--now".into(),
                "yesterday".into(),
            ],
            "RFC 3339",
            original,
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "not valid JSON",
            "{not json",
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "must hold a JSON object",
            "[1, 2]",
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "`rows.Account` must be an array",
            r#"{"rows": {"Account": {}}}"#,
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "has no `id`",
            r#"{"rows": {"Account": [{"name": "x"}]}}"#,
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "no entity `Acount`",
            r#"{"rows": {"Acount": [{"id": "00000000-0000-4000-8000-000000000001"}]}}"#,
        ),
        (
            vec!["--tool".into(), "open_account".into()],
            "no column `nmae`",
            r#"{"rows": {"Account": [{"id": "00000000-0000-4000-8000-000000000001", "nmae": "x"}]}}"#,
        ),
    ];
    for (extra, needle, content) in cases {
        std::fs::write(&state, content).unwrap();
        let spec = example("bank.json");
        let mut args: Vec<&str> = vec!["run", &spec, "--state", state.to_str().unwrap()];
        args.extend(extra.iter().map(String::as_str));
        if !extra.iter().any(|a| a == "--input") {
            args.extend(["--input", r#"{"name": "a", "currency": "EUR"}"#]);
        }
        if !extra.iter().any(|a| a == "--auth") {
            args.extend(["--auth", ALICE]);
        }
        let out = sinew(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: expected {needle:?} in {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{extra:?}: printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            content,
            "{extra:?}: the state file changed"
        );
    }
}

#[test]
fn a_spec_that_cannot_run_exits_3() {
    let red = root().join("specs/unsafe/raw-write.json");
    let out = sinew(&["run", red.to_str().unwrap(), "--tool", "recount_bin"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Red"));
    let yellow = root().join("specs/unsafe/missing-retry.json");
    let out = sinew(&[
        "run",
        yellow.to_str().unwrap(),
        "--tool",
        "invite_candidate",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let missing = sinew(&["run", "/nonexistent/spec.json", "--tool", "x"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
