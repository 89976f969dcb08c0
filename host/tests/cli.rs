//! Integration tests of the `sinew` binary: exit codes, output formats, bad
//! input and `--fix`.

use serde_json::{Value, json};
use sinew_tests::{root, specs_in};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spec(rel: &str) -> PathBuf {
    root().join(rel)
}

/// The example specs, sorted.
fn examples() -> Vec<PathBuf> {
    let out = specs_in("specs/examples");
    assert!(!out.is_empty(), "no example specs");
    out
}

/// Runs `sinew` with `args`; checks it did not panic.
fn sinew<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run sinew");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "sinew panicked:\n{stderr}");
    out
}

/// `sinew check` on `files` with extra `flags` first.
fn check(flags: &[&str], files: &[&Path]) -> Output {
    let mut args: Vec<std::ffi::OsString> = vec!["check".into()];
    args.extend(flags.iter().map(Into::into));
    args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
    sinew(args)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("sinew exited normally")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout(out))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(out)))
}

/// A spec with one error: `Nte` (line 9) is not an entity.
const BROKEN: &str = r#"{
  "sinew": "0.1",
  "name": "broken",
  "entities": {"Note": {"fields": {"text": {"type": "string"}}}},
  "tools": {
    "find_note": {
      "trigger": {"http": {"method": "GET", "path": "/notes"}},
      "flow": {"entry": "note", "nodes": {
        "note": {"type": "read", "entity": "Nte", "one": true, "next": "done"},
        "done": {"type": "return", "value": {"text": "note.text"}}
      }}
    }
  }
}
"#;

/// Writes `text` to `name` in `dir`.
fn write(dir: &tempfile::TempDir, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------
// Verdicts and exit codes.

#[test]
fn examples_are_green() {
    let files = examples();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = check(&[], &paths);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    for f in &files {
        let verdict = format!("{}: Green", f.display());
        assert!(
            text.lines().any(|l| l == verdict),
            "no `{verdict}` in:\n{text}"
        );
    }
    let n = files.len();
    assert!(
        text.contains(&format!("{n} files: {n} Green (worst: Green)")),
        "{text}"
    );
    assert!(
        !text.contains("Invalid") && !text.contains("error["),
        "{text}"
    );
    // Each one alone, too.
    for f in &files {
        let out = check(&[], &[f]);
        assert_eq!(code(&out), 0, "{}: {}", f.display(), stdout(&out));
        assert!(stdout(&out).contains(": Green"), "{}", stdout(&out));
    }
}

#[test]
fn yellow_exits_1() {
    let out = check(&[], &[&spec("specs/unsafe/missing-retry.json")]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("missing-retry"), "{text}");
    assert!(text.contains("Yellow"), "{text}");
}

#[test]
fn red_exits_2() {
    let out = check(&[], &[&spec("specs/unsafe/raw-write.json")]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("raw-write"), "{text}");
    assert!(text.contains("Red"), "{text}");
}

#[test]
fn spec_errors_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(&dir, "broken.json", BROKEN);
    let out = check(&[], &[&broken]);
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("error[unknown-entity]"), "{text}");
    assert!(text.contains("did you mean `Note`?"), "{text}");
    // file:line:column of the offending value.
    let line = BROKEN.lines().position(|l| l.contains("\"Nte\"")).unwrap() + 1;
    assert!(
        text.contains(&format!("broken.json:{line}:")),
        "expected line {line}:\n{text}"
    );
    assert!(text.contains("Invalid"), "{text}");
}

#[test]
fn the_worst_exit_code_wins() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(&dir, "broken.json", BROKEN);
    let shop = spec("specs/examples/shop.json");
    let yellow = spec("specs/unsafe/missing-retry.json");
    let red = spec("specs/unsafe/raw-write.json");
    let cases: [(&[&Path], i32); 6] = [
        (&[&shop, &shop], 0),
        (&[&shop, &yellow], 1),
        (&[&yellow, &shop], 1),
        (&[&red, &yellow, &shop], 2),
        (&[&shop, &yellow, &red], 2),
        (&[&broken, &red, &yellow, &shop], 3),
    ];
    for (files, want) in cases {
        let out = check(&[], files);
        assert_eq!(code(&out), want, "{files:?}:\n{}", stdout(&out));
    }
    let out = check(&[], &[&red, &yellow, &shop, &broken]);
    assert_eq!(code(&out), 3);
    let text = stdout(&out);
    assert!(text.contains("4 files"), "{text}");
    assert!(text.contains("worst: Invalid"), "{text}");
    // A file that cannot be read counts as 3 as well.
    let out = check(&[], &[&shop, &dir.path().join("nope.json")]);
    assert_eq!(code(&out), 3);
}

// ---------------------------------------------------------------------------
// Formats.

#[test]
fn json_format() {
    let out = check(&["--format", "json"], &[&spec("specs/examples/shop.json")]);
    assert_eq!(code(&out), 0);
    let v = json(&out);
    for key in ["level", "errors", "warnings", "tools"] {
        assert!(v.get(key).is_some(), "no `{key}` in {v}");
    }
    assert_eq!(v["level"], "green");
    assert!(v["errors"].as_array().unwrap().is_empty());
    assert!(v["tools"].as_object().unwrap().contains_key("place_order"));

    let out = check(
        &["--format", "json"],
        &[&spec("specs/unsafe/raw-write.json")],
    );
    assert_eq!(code(&out), 2);
    let v = json(&out);
    assert_eq!(v["level"], "red");
    assert_eq!(
        v["tools"]["recount_bin"]["findings"][0]["code"],
        "raw-write"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = write(&dir, "broken.json", BROKEN);
    let out = check(&["--format", "json"], &[&broken]);
    assert_eq!(code(&out), 3);
    let v = json(&out);
    assert_eq!(v["level"], "invalid");
    let e = &v["errors"][0];
    assert_eq!(e["code"], "unknown-entity");
    assert_eq!(e["path"], "/tools/find_note/flow/nodes/note/entity");
    assert_eq!(v["tools"]["find_note"]["level"], "invalid");
}

#[test]
fn json_format_with_several_files_is_an_array() {
    let files = [
        spec("specs/examples/shop.json"),
        spec("specs/unsafe/missing-retry.json"),
        spec("specs/unsafe/raw-write.json"),
    ];
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = check(&["--format", "json"], &paths);
    assert_eq!(code(&out), 2);
    let v = json(&out);
    let items = v.as_array().expect("an array");
    assert_eq!(items.len(), 3);
    let levels = ["green", "yellow", "red"];
    for ((item, file), level) in items.iter().zip(&files).zip(levels) {
        assert_eq!(item["file"], file.display().to_string());
        let report = &item["report"];
        for key in ["level", "errors", "warnings", "tools"] {
            assert!(report.get(key).is_some(), "no `{key}` in {report}");
        }
        assert_eq!(report["level"], level);
    }
}

#[test]
fn sarif_format() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(&dir, "broken.json", BROKEN);
    let red = spec("specs/unsafe/raw-write.json");
    let out = check(&["--format", "sarif"], &[&red, &broken]);
    assert_eq!(code(&out), 3);
    let v = json(&out);
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "sinew");
    let results = run["results"].as_array().expect("results");
    assert!(results.len() >= 2, "{results:#?}");
    for r in results {
        assert!(r["ruleId"].is_string(), "{r}");
        let region = &r["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64().is_some_and(|l| l >= 1), "{r}");
    }
    let rule = |id: &str| {
        results
            .iter()
            .find(|r| r["ruleId"] == id)
            .unwrap_or_else(|| panic!("no {id} result in {results:#?}"))
    };
    // The spec error points at the line of `"Nte"`.
    let e = rule("unknown-entity");
    let line = BROKEN.lines().position(|l| l.contains("\"Nte\"")).unwrap() + 1;
    let col = BROKEN
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("\"Nte\"")
        .unwrap()
        + 1;
    let region = &e["locations"][0]["physicalLocation"]["region"];
    assert_eq!(region["startLine"], line as u64, "{e}");
    assert_eq!(region["startColumn"], col as u64, "{e}");
    assert_eq!(e["level"], "error");
    // The risk finding points at the `sql` node.
    let f = rule("raw-write");
    let text = std::fs::read_to_string(&red).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"recompute\":"))
        .unwrap()
        + 1;
    assert_eq!(
        f["locations"][0]["physicalLocation"]["region"]["startLine"], line as u64,
        "{f}"
    );
    // Every rule referenced is declared.
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for r in results {
        assert!(rules.contains(&r["ruleId"].as_str().unwrap()), "{r}");
    }
}

// ---------------------------------------------------------------------------
// Bad input: exit 3, one clear line, no panic.

/// Checks `file` and expects exit 3 and an `error[…]` line on stdout that
/// mentions `needle`.
fn bad_input(file: &Path, needle: &str) {
    let out = check(&[], &[file]);
    let text = stdout(&out);
    assert_eq!(code(&out), 3, "{text}\n{}", stderr(&out));
    let line = text
        .lines()
        .find(|l| l.starts_with("error["))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    assert!(line.contains(needle), "{line:?} should mention {needle:?}");
    assert!(line.len() < 300, "not a short line: {line:?}");
    assert!(text.contains("Invalid"), "{text}");
    // JSON output says the same.
    let out = check(&["--format", "json"], &[file]);
    assert_eq!(code(&out), 3);
    let v = json(&out);
    assert_eq!(v["level"], "invalid");
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains(needle),
        "{v}"
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    bad_input(&dir.path().join("nope.json"), "does not exist");
}

#[test]
fn a_directory() {
    let dir = tempfile::tempdir().unwrap();
    bad_input(dir.path(), "is a directory");
}

#[test]
fn a_non_utf8_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "latin1.json",
        b"{\"sinew\": \"0.1\", \"name\": \"caf\xe9\"}",
    );
    bad_input(&f, "not valid UTF-8");
}

#[test]
fn a_50_mb_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "huge.json", vec![b' '; 50 << 20]);
    bad_input(&f, "50 MiB");
    let out = check(&[], &[&f]);
    assert!(stdout(&out).contains("32 MiB limit"), "{}", stdout(&out));
}

#[test]
fn json_nested_100_000_deep() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "deep.json",
        "[".repeat(100_000) + &"]".repeat(100_000),
    );
    bad_input(&f, "recursion limit");
    let out = check(&[], &[&f]);
    assert!(stdout(&out).contains("error[too-deep]"), "{}", stdout(&out));
    let f = write(&dir, "deep2.json", "{\"a\":".repeat(100_000));
    bad_input(&f, "recursion limit");
}

#[test]
fn an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "empty.json", "");
    bad_input(&f, "the spec is empty");
    let f = write(&dir, "blank.json", "\n  \n");
    bad_input(&f, "the spec is empty");
}

#[test]
fn json_syntax_error_has_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "syntax.json",
        "{\n  \"sinew\": \"0.1\"\n  \"name\": \"x\"\n}\n",
    );
    let out = check(&[], &[&f]);
    assert_eq!(code(&out), 3);
    let text = stdout(&out);
    assert!(text.contains("error[json-syntax]"), "{text}");
    assert!(text.contains("syntax.json:3:3"), "{text}");
}

// ---------------------------------------------------------------------------
// --fix.

#[test]
fn fix_rewrites_the_file_and_the_result_is_green() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(spec("specs/unsafe/write-outside-transaction.json")).unwrap();
    let f = write(&dir, "crm.json", &original);

    let before = check(&[], &[&f]);
    assert_eq!(code(&before), 2, "{}", stdout(&before));

    let out = check(&["--fix"], &[&f]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("applied 1 fix"), "{text}");
    assert!(text.contains("write-outside-transaction"), "{text}");
    assert!(text.contains("Green"), "{text}");

    let fixed = std::fs::read_to_string(&f).unwrap();
    assert_ne!(fixed, original);
    assert!(fixed.contains("\"tx_activity\""), "{fixed}");
    serde_json::from_str::<Value>(&fixed).expect("the fixed file is JSON");

    // Checking again: Green.
    let again = check(&[], &[&f]);
    assert_eq!(code(&again), 0, "{}", stdout(&again));
    assert!(stdout(&again).contains("Green"));

    // What the fix does not touch stays as written.
    let old: Vec<&str> = original.lines().collect();
    let new: Vec<&str> = fixed.lines().collect();
    let contact = old
        .iter()
        .position(|l| l.contains("\"contact\": {\"type\": \"read\""))
        .unwrap();
    assert!(contact > 10);
    assert_eq!(
        old[..=contact],
        new[..=contact],
        "the lines before the fix changed"
    );
    for needle in [
        "\"no_contact\": {\"type\": \"fail\"",
        "\"done\": {\"type\": \"return\", \"status\": 201,",
        "\"description\": \"Demonstrates write-outside-transaction",
        "\"Contact\": {",
    ] {
        let line = old.iter().find(|l| l.contains(needle)).unwrap();
        assert!(new.contains(line), "line changed: {line}");
    }
    assert_eq!(old.last(), new.last());

    // Fixing a fixed file changes nothing.
    let out = check(&["--fix"], &[&f]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("no mechanical fixes"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), fixed);
}

#[test]
fn fix_dry_run_prints_a_diff_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(spec("specs/unsafe/write-outside-transaction.json")).unwrap();
    let f = write(&dir, "crm.json", &original);
    let out = check(&["--fix", "--dry-run"], &[&f]);
    let text = stdout(&out);
    assert_eq!(code(&out), 2, "the file is still Red:\n{text}");
    assert!(text.contains("would apply 1 fix"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("--- ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("+++ ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("@@ ")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with('+') && l.contains("tx_activity")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with('-') && l.contains("\"next\": \"activity\"")),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&f).unwrap(),
        original,
        "dry run wrote the file"
    );
}

#[test]
fn fix_without_a_mechanical_fix_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(spec("specs/unsafe/raw-write.json")).unwrap();
    let f = write(&dir, "raw.json", &original);
    let out = check(&["--fix"], &[&f]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("no mechanical fixes"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(&f).unwrap(), original);

    // Nor does --fix touch a spec with errors.
    let broken = write(&dir, "broken.json", BROKEN);
    let out = check(&["--fix"], &[&broken]);
    assert_eq!(code(&out), 3);
    assert_eq!(std::fs::read_to_string(&broken).unwrap(), BROKEN);
}

// ---------------------------------------------------------------------------
// Usage.

#[test]
fn dry_run_needs_fix() {
    let out = check(&["--dry-run"], &[&spec("specs/examples/shop.json")]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("--fix"), "{}", stderr(&out));
}

#[test]
fn check_needs_a_file() {
    let out = sinew(["check"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("FILE"), "{}", stderr(&out));
}

#[test]
fn help() {
    let out = sinew(["--help"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("check"), "{}", stdout(&out));

    let out = sinew(["check", "--help"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.contains("--format"), "{text}");
    assert!(text.contains("--fix"), "{text}");
}

#[test]
fn migrate_without_a_database_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    for example in examples() {
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .arg("migrate")
            .arg(&example)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stem = example.file_stem().unwrap().to_string_lossy().into_owned();
        let golden =
            std::fs::read_to_string(root().join(format!("specs/examples/expected/{stem}.sql")))
                .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), golden, "{stem}");
    }
}

#[test]
fn token_mints_what_the_server_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["token", "--sub", "alice", "--roles", "customer,staff"])
        .env("SINEW_JWT_SECRET", "s3cret")
        .env_remove("SINEW_JWT_ISSUER")
        .env_remove("SINEW_JWT_AUDIENCE")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let jwt = sinew_host::jwt::JwtConfig::hs256("s3cret");
    let auth = jwt.verify(&token).unwrap();
    assert_eq!(auth.sub, "alice");
    assert_eq!(auth.roles, vec!["customer", "staff"]);
    // Without a secret: a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["token", "--sub", "alice"])
        .env_remove("SINEW_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SINEW_JWT_SECRET"));
    // The secret mounted as a file, as for `sinew serve --secrets-dir`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("SINEW_JWT_SECRET"), "m0unted\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["token", "--sub", "bob", "--secrets-dir"])
        .arg(dir.path())
        .env_remove("SINEW_JWT_SECRET")
        .env_remove("SINEW_JWT_ISSUER")
        .env_remove("SINEW_JWT_AUDIENCE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let auth = sinew_host::jwt::JwtConfig::hs256("m0unted")
        .verify(&token)
        .unwrap();
    assert_eq!(auth.sub, "bob");
}

/// `sinew serve` listens before it connects to the database: a client that
/// connects during the start waits in the backlog instead of being refused.
/// Here the "database" accepts connections and never answers, so the start
/// hangs on it until the connect timeout and then fails; the client's
/// connection is taken all along, and closed when the server gives up.
#[test]
fn serve_listens_before_the_database_answers() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let db_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .arg("serve")
        .arg(spec("specs/examples/shop.json"))
        .args(["--port", &port.to_string(), "--listen", "127.0.0.1"])
        .arg("--database-url")
        .arg(format!("postgres://sinew@127.0.0.1:{db_port}/shop"))
        .arg("--data-dir")
        .arg(data.path())
        .env("SINEW_JWT_SECRET", "a-test-secret")
        .env("SINEW_NO_SNAPSHOT", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the server exited before it listened"
                );
                assert!(Instant::now() < deadline, "never listened: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server is still starting (its database never answers)"
    );
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(answer.is_empty(), "answered without a database: {answer:?}");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connecting to the database"),
        "stderr: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// Output to a reader that went away, SARIF locations, boolean switches.

/// `sinew run … | head` and `sinew check … | head`: a stdout whose reader is
/// gone (here closed before the command writes) ends the command quietly,
/// with its usual exit status and no panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let dir = tempfile::tempdir().unwrap();
    let runs: [(Vec<std::ffi::OsString>, i32); 6] = [
        (
            vec![
                "run".into(),
                spec("specs/examples/shop.json").into(),
                "--tool".into(),
                "list_products".into(),
                "--state".into(),
                dir.path().join("state.json").into(),
            ],
            0,
        ),
        (
            vec!["check".into(), spec("specs/examples/shop.json").into()],
            0,
        ),
        (
            vec![
                "check".into(),
                "--format".into(),
                "sarif".into(),
                spec("specs/unsafe/raw-write.json").into(),
            ],
            2,
        ),
        (
            vec![
                "component".into(),
                "--out".into(),
                dir.path().join("c.wasm").into(),
            ],
            0,
        ),
        (
            vec![
                "migrate".into(),
                spec("specs/examples/shop.json").into(),
                "--data-dir".into(),
                dir.path().join("none").into(),
            ],
            0,
        ),
        (
            vec![
                "token".into(),
                "--sub".into(),
                "alice".into(),
                "--secret".into(),
                "s3cret".into(),
            ],
            0,
        ),
    ];
    for (args, expected) in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .env_remove("DATABASE_URL")
            .stdout(closed())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {err}");
    }
}

/// SARIF: `artifactLocation.uri` is a percent-encoded URI reference, and
/// columns are counted in Unicode code points, as `columnKind` says.
#[test]
fn sarif_uris_are_encoded_and_columns_are_code_points() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dir with space")).unwrap();
    // `é` and `😀` are 2 and 4 bytes, one code point each, before "Nte".
    let one_line = BROKEN
        .replace('\n', " ")
        .replace("\"broken\"", "\"brøken 😀\"");
    std::fs::write(dir.path().join("dir with space/ok.json"), &one_line).unwrap();
    // A syntax error after non-ASCII text on its line.
    std::fs::write(
        dir.path().join("dir with space/syntax.json"),
        "{\"name\": \"é😀\" \"x\": 1}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .current_dir(dir.path())
        .args([
            "check",
            "--format",
            "sarif",
            "dir with space/ok.json",
            "dir with space/syntax.json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let v = json(&out);
    let run = &v["runs"][0];
    assert_eq!(run["columnKind"], "unicodeCodePoints", "{run}");
    let results = run["results"].as_array().unwrap();
    let find = |id: &str| {
        results
            .iter()
            .find(|r| r["ruleId"] == id)
            .unwrap_or_else(|| panic!("no {id} in {results:#?}"))
    };
    let e = &find("unknown-entity")["locations"][0]["physicalLocation"];
    assert_eq!(e["artifactLocation"]["uri"], "dir%20with%20space/ok.json");
    let chars: Vec<char> = one_line.chars().collect();
    let col = (0..chars.len())
        .find(|&i| chars[i..].starts_with(&['"', 'N', 't', 'e', '"']))
        .unwrap()
        + 1;
    assert_eq!(e["region"]["startLine"], 1, "{e}");
    assert_eq!(e["region"]["startColumn"], col as u64, "{e}");
    let s = &find("json-syntax")["locations"][0]["physicalLocation"];
    assert_eq!(
        s["artifactLocation"]["uri"],
        "dir%20with%20space/syntax.json"
    );
    // `"x"` is the 15th code point of the line (its 19th byte).
    assert_eq!(s["region"]["startColumn"], 15, "{s}");
    // The human report says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .current_dir(dir.path())
        .args(["check", "dir with space/syntax.json"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("dir with space/syntax.json:1:15"), "{text}");
    assert!(text.contains("line 1, column 15"), "{text}");
}

/// The boolean environment switches take what people write: 1/0, yes/no,
/// on/off, true/false (any case); anything else is refused by name.
/// (`serve` on a spec that does not exist: the switches are parsed, then
/// the start fails at once.)
#[test]
fn boolean_environment_switches_take_what_people_write() {
    let serve = |var: &str, value: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(["serve", "/nonexistent/spec.json"])
            .env(var, value)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        (code(&out), stderr(&out))
    };
    for var in [
        "SINEW_NO_SNAPSHOT",
        "SINEW_STUDIO",
        "SINEW_NO_CRON",
        "SINEW_NO_OUTBOX",
    ] {
        for value in [
            "1", "0", "yes", "no", "on", "off", "true", "false", "TRUE", "Yes",
        ] {
            let (code, err) = serve(var, value);
            assert_eq!(code, 2, "{var}={value}: {err}");
            assert!(err.contains("cannot read the spec"), "{var}={value}: {err}");
        }
        let (code, err) = serve(var, "maybe");
        assert_eq!(code, 2, "{var}=maybe: {err}");
        assert!(err.contains("invalid value 'maybe'"), "{var}=maybe: {err}");
    }
}

/// `sinew keys create` refuses, before the database is reached, what
/// could not be meant: a claim given twice (the last one was kept), a role
/// no spec can declare, a `roles` claim (the roles are `--roles`), a token
/// subject `key:…` (API keys' own).
#[test]
fn keys_create_refuses_repeated_claims_and_invalid_roles() {
    for (args, says) in [
        (
            vec![
                "--roles", "ops", "--claim", "org_id=a", "--claim", "org_id=b",
            ],
            "--claim `org_id` is given twice",
        ),
        (
            vec!["--roles", "no such role,x"],
            "`no such role` is not a role name",
        ),
        (vec!["--roles", "ops,2x"], "`2x` is not a role name"),
        (vec!["--roles", "ops,ops"], "`ops` is named twice"),
        (
            vec!["--roles", "ops", "--claim", "roles=admin"],
            "the claim `roles` is set by sinew",
        ),
        (
            vec!["--roles", "ops", "--claim", "sub=x"],
            "the claim `sub` is set by sinew",
        ),
    ] {
        let mut all = vec!["keys", "create", "--name", "ci"];
        all.extend(&args);
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(&all)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .expect("run sinew");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("connect"),
            "{args:?} reached the database: {}",
            stderr(&out)
        );
    }
    let out = sinew(["token", "--sub", "key:3f9a0c1d2e4b5a69", "--secret", "s"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may not start with `key:`"),
        "{}",
        stderr(&out)
    );
}

/// Values that cannot be meant are refused as the command line is read
/// (exit 2), not carried into a token the server refuses or a key without
/// a name or role: an empty `--sub`, `--name` or role, an unknown log level.
#[test]
fn empty_names_and_unknown_log_levels_are_refused() {
    for args in [
        vec!["token", "--sub", "", "--secret", "s"],
        vec!["keys", "create", "--name", "", "--roles", "ops"],
        vec!["keys", "create", "--name", "ci", "--roles", ""],
        vec!["keys", "create", "--name", "ci", "--roles", "ops,"],
    ] {
        let out = sinew(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("a value is required"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A serve with SINEW_LOG at `level`, of a spec that is not there.
    let serve = |level: &str| {
        Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(["serve", "/nonexistent/spec.json"])
            .env("SINEW_LOG", level)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = serve("bogus");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid value 'bogus'"),
        "{}",
        stderr(&out)
    );
    // A known level in capitals gets past the settings to the spec.
    let out = serve("DEBUG");
    assert!(
        stderr(&out).contains("cannot read the spec"),
        "{}",
        stderr(&out)
    );
}

/// `sinew schedule` lists each cron tool's next times after `--after`, in
/// UTC and in its zone, through a clock change (02:30 does not exist in
/// Paris on 29 March 2026: it fires when the clocks jump, 03:00 CEST); a
/// spec that does not load exits 3.
#[test]
fn schedule_lists_the_next_fire_times() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"sinew": "0.2", "name": "nightly", "roles": ["staff"], "tools": {
        "purge": {"trigger": {"cron": {"schedule": "30 2 * * *", "timezone": "Europe/Paris"}},
                  "auth": {"roles": ["staff"]},
                  "flow": {"entry": "done", "nodes": {"done": {"type": "return", "value": {}}}}},
        "tick": {"trigger": {"cron": {"schedule": "0 */6 * * *"}},
                 "auth": {"roles": ["staff"]},
                 "flow": {"entry": "done", "nodes": {"done": {"type": "return", "value": {}}}}}}}"#;
    let path = write(&dir, "nightly.json", text);
    let out = sinew([
        "schedule".as_ref(),
        path.as_os_str(),
        "--after".as_ref(),
        "2026-03-28T12:00:00Z".as_ref(),
        "--count".as_ref(),
        "2".as_ref(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "purge  `30 2 * * *` in Europe/Paris\n\
         \x20 2026-03-29T01:00:00Z  2026-03-29 03:00 CEST\n\
         \x20 2026-03-30T00:30:00Z  2026-03-30 02:30 CEST\n\
         tick  `0 */6 * * *` in UTC\n\
         \x20 2026-03-28T18:00:00Z  2026-03-28 18:00 UTC\n\
         \x20 2026-03-29T00:00:00Z  2026-03-29 00:00 UTC\n"
    );
    // Read by something that stops early (`| head -1`): it ends quietly,
    // as a Unix tool does (SIGPIPE's status), not with a panic.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args([
            "schedule".as_ref(),
            path.as_os_str(),
            "--count".as_ref(),
            "5000".as_ref(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("purge"), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let bad = write(
        &dir,
        "bad.json",
        text.replace("Europe/Paris", "Europe/Pariss"),
    );
    let out = sinew(["schedule".as_ref(), bad.as_os_str()]);
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is not a time zone"),
        "{}",
        stderr(&out)
    );
}

/// `sinew serve` checks every setting the spec needs before anything
/// starts (not even the database) and refuses to start with one message
/// listing all that are missing: webhook secrets, external URLs and auth
/// secrets, JWT verification.
#[test]
fn serve_refuses_to_start_without_the_settings_the_spec_needs() {
    let data = tempfile::tempdir().unwrap();
    let serve = |spec_path: &str, env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sinew"));
        cmd.args([
            "serve",
            "--port",
            "0",
            "--listen",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(data.path())
        .arg(spec(spec_path))
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
        for v in [
            "SINEW_JWT_SECRET",
            "SINEW_JWT_JWKS",
            "SINEW_TEST_STRIPE_SECRET",
            "SINEW_TEST_GITHUB_SECRET",
            "SINEW_TEST_STRIPE_KEY",
            "SINEW_TEST_MAIL_KEY",
            "SINEW_TEST_LEDGER_PASSWORD",
            "SINEW_EXTERNAL_LEDGER_URL",
        ] {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = std::time::Instant::now();
        let out = cmd.output().expect("run sinew");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        out
    };
    let out = serve("tests/fixtures/webhooks.json", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needed in [
        "SINEW_TEST_STRIPE_SECRET (the signing secret of webhook `stripe_event`)",
        "SINEW_TEST_GITHUB_SECRET (the signing secret of webhook `github_push`)",
        "SINEW_JWT_SECRET or SINEW_JWT_JWKS (to verify callers: `place` needs a signed-in caller)",
    ] {
        assert!(err.contains(needed), "{needed} not in:\n{err}");
    }
    assert_eq!(
        err.matches("  - ").count(),
        3,
        "one message, every item: {err}"
    );
    let out = serve(
        "tests/fixtures/externals.json",
        &[("SINEW_JWT_SECRET", "s"), ("SINEW_TEST_MAIL_KEY", "k")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needed in [
        "SINEW_TEST_STRIPE_KEY (the secret of external `stripe`'s auth)",
        "the URL of external `ledger`",
        "SINEW_TEST_LEDGER_PASSWORD",
    ] {
        assert!(err.contains(needed), "{needed} not in:\n{err}");
    }
    assert!(!err.contains("MAIL"), "{err}");
    assert_eq!(err.matches("  - ").count(), 3, "{err}");
}

/// A `--metrics-path` the server answers already (a tool's route, whatever
/// its method, or a path of its own) is refused at start, before the
/// database is reached: it once took the tool's place in silence.
#[test]
fn serve_refuses_a_metrics_path_the_server_answers_already() {
    let data = tempfile::tempdir().unwrap();
    let serve = |path: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args([
                "serve",
                "--port",
                "0",
                "--listen",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(data.path())
            .arg(spec("specs/examples/shop.json"))
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("SINEW_JWT_SECRET", "s")
            .env("SINEW_METRICS_PATH", path)
            .output()
            .expect("run sinew");
        assert!(!out.status.success(), "{path}");
        stderr(&out)
    };
    for (path, says) in [
        (
            "/products",
            "the route of `create_product`, `list_products`",
        ),
        ("/orders/123", "the route of"),
        ("/healthz", "a health probe"),
        ("/openapi.json", "the OpenAPI document"),
        ("/tools/place_order", "`POST /tools/{name}`"),
        ("/queues/x", "Pub/Sub"),
        ("/studio/", "the studio"),
    ] {
        let err = serve(path);
        assert!(
            err.contains(&format!(
                "--metrics-path `{path}` is a path the server answers already"
            )),
            "{path}: {err}"
        );
        assert!(err.contains(says), "{path}: {says} not in {err}");
    }
    let err = serve("metrics");
    assert!(err.contains("must be a path"), "{err}");
    // A free path passes that check (and the start fails later, at the
    // database).
    let err = serve("/internal/metrics");
    assert!(!err.contains("--metrics-path"), "{err}");
}

/// `--secrets-dir` holds the secrets of the settings too, not only the
/// spec's: SINEW_JWT_SECRET and DATABASE_URL are read from files named
/// after them when the environment lacks them (the JWT secret was once
/// missing, and the start refused).
#[test]
fn serve_reads_the_jwt_secret_and_the_database_url_from_the_secrets_dir() {
    let data = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("SINEW_JWT_SECRET"), "from-a-file\n").unwrap();
    std::fs::write(
        secrets.path().join("DATABASE_URL"),
        "postgres://nobody@127.0.0.1:1/from_a_file\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args([
            "serve",
            "--port",
            "0",
            "--listen",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(data.path())
        .arg(spec("specs/examples/shop.json"))
        .env_remove("DATABASE_URL")
        .env_remove("SINEW_JWT_SECRET")
        .env_remove("SINEW_JWT_JWKS")
        .env("SINEW_SECRETS_DIR", secrets.path())
        .env("SINEW_NO_SNAPSHOT", "1")
        .output()
        .expect("run sinew");
    assert!(!out.status.success());
    let err = stderr(&out);
    // Past the settings check: the start fails at the database the file
    // names (nothing listens there), not at an embedded one.
    assert!(!err.contains("SINEW_JWT_SECRET or SINEW_JWT_JWKS"), "{err}");
    assert!(err.contains("connecting to the database"), "{err}");
    assert!(!err.contains("embedded Postgres"), "{err}");
}

// ---------------------------------------------------------------------------
// `sinew diff`.

/// Exit 0 for a change that breaks nothing, 1 for a breaking API change or
/// a destructive migration step (human and JSON output say which), 2 for a
/// spec that does not load.
#[test]
fn diff_exit_codes_say_breaking_or_destructive() {
    let dir = tempfile::tempdir().unwrap();
    let clinic = spec("specs/examples/clinic.json");
    let base: Value = serde_json::from_str(&std::fs::read_to_string(&clinic).unwrap()).unwrap();
    let out = sinew([OsStr::new("diff"), clinic.as_os_str(), clinic.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("nothing breaking or destructive"));

    let mut wider = base.clone();
    wider["entities"]["Therapist"]["fields"]["name"]["maxLength"] = json!(300);
    wider["tools"]["add_therapist"]["input"]["properties"]["name"]["maxLength"] = json!(300);
    let wider = write(&dir, "wider.json", wider.to_string());
    let out = sinew([OsStr::new("diff"), clinic.as_os_str(), wider.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("compatible add_therapist: input field `name` maxLength 100 → 300")
    );
    assert!(
        stdout(&out)
            .contains("safe        therapist: widen the CHECK of `name` (maxLength 100 → 300)")
    );

    let mut breaking = base.clone();
    breaking["tools"]
        .as_object_mut()
        .unwrap()
        .remove("list_invoices");
    breaking["tools"]["add_therapist"]["input"]["required"] =
        json!(["name", "specialty", "rate_cents", "room"]);
    breaking["tools"]["add_therapist"]["input"]["properties"]["room"] = json!({"type": "string"});
    let breaking = write(&dir, "breaking.json", breaking.to_string());
    let out = sinew([
        OsStr::new("diff"),
        OsStr::new("--format"),
        OsStr::new("json"),
        clinic.as_os_str(),
        breaking.as_os_str(),
    ]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let d = json(&out);
    assert_eq!(
        (d["breaking"].clone(), d["destructive"].clone()),
        (json!(true), json!(false))
    );
    let api: Vec<(String, bool)> = d["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{} {}",
                    c["tool"].as_str().unwrap(),
                    c["change"].as_str().unwrap()
                ),
                c["breaking"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        api.contains(&(
            "add_therapist `room` is a new required input field".into(),
            true
        )),
        "{api:?}"
    );
    assert!(
        api.contains(&("list_invoices the tool is removed".into(), true)),
        "{api:?}"
    );

    let mut destructive = base.clone();
    destructive["entities"]["Appointment"]["fields"]["minutes"]["maximum"] = json!(120);
    let destructive = write(&dir, "destructive.json", destructive.to_string());
    let out = sinew([
        OsStr::new("diff"),
        clinic.as_os_str(),
        destructive.as_os_str(),
    ]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("destructive appointment: narrow the CHECK of `minutes` (maximum 240 → 120)")
    );
    assert!(stdout(&out).contains("DESTRUCTIVE"));

    // A state added that a tool of the old spec answers from a closed enum:
    // its servers would answer 500 for such rows while both serve.
    let mut closed = base.clone();
    closed["tools"]["list_appointments"]["output"]["properties"]["appointments"]["items"]["properties"]
        ["status"] =
        json!({"type": "string", "enum": ["requested", "confirmed", "completed", "cancelled"]});
    let mut state = closed.clone();
    state["entities"]["Appointment"]["status"]["transitions"]["no_show"] =
        json!({"from": ["confirmed"], "to": "no_show"});
    let closed = write(&dir, "closed.json", closed.to_string());
    let state = write(&dir, "state.json", state.to_string());
    let out = sinew([OsStr::new("diff"), closed.as_os_str(), state.as_os_str()]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("breaking   list_appointments: `Appointment.status` takes \"no_show\" too"),
        "{}",
        stdout(&out)
    );
    let out = sinew([OsStr::new("diff"), clinic.as_os_str(), wider.as_os_str()]);
    assert!(!stdout(&out).contains("takes"), "{}", stdout(&out));

    let broken = write(&dir, "broken.json", BROKEN);
    let out = sinew([OsStr::new("diff"), clinic.as_os_str(), broken.as_os_str()]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("is not a valid spec"),
        "{}",
        stderr(&out)
    );
}

/// `sinew migrate --plan` without a database: the steps for an empty one
/// (every table created, safe), as text and JSON.
#[test]
fn migrate_plan_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let clinic = spec("specs/examples/clinic.json");
    let data = dir.path().join("none");
    let out = sinew([
        OsStr::new("migrate"),
        clinic.as_os_str(),
        OsStr::new("--plan"),
        OsStr::new("--format"),
        OsStr::new("json"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let p = json(&out);
    assert_eq!(p["database"], json!(false));
    assert_eq!(p["risk"], json!("safe"));
    let changes: Vec<&str> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        [
            "create table `therapist` (`Therapist`)",
            "create table `patient` (`Patient`)",
            "create table `appointment` (`Appointment`)",
            "create table `invoice` (`Invoice`)",
            // Once every table exists: the `ref` fields' keys.
            "add the foreign key `appointment_patient_fkey` (`patient` → `patient`, NOT VALID)",
            "add the foreign key `appointment_therapist_fkey` (`therapist` → `therapist`, NOT VALID)",
            "add the foreign key `invoice_appointment_fkey` (`appointment` → `appointment`, NOT VALID)"
        ]
    );
    assert!(!data.exists(), "planning created a database");
}

/// `sinew component --npm DIR` writes the npm package (its API, types and
/// the transpiled component), replaces an earlier package's component, and
/// does not combine with the other outputs.
#[test]
fn component_npm_writes_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("sinew-core");
    // A file an earlier package left in its component directory goes.
    std::fs::create_dir_all(pkg.join("component")).unwrap();
    std::fs::write(pkg.join("component/stale.core9.wasm"), b"old").unwrap();
    let out = sinew(["component".as_ref(), "--npm".as_ref(), pkg.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("npm pack"), "{said}");
    // Every file of the package, byte for byte, and nothing else.
    let package = sinew_host::npm::Package::new().unwrap();
    for (f, data) in &package.files {
        assert!(std::fs::read(pkg.join(f)).unwrap() == *data, "{f}");
    }
    let mut on_disk = Vec::new();
    let mut dirs = vec![pkg.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                on_disk.push(p.strip_prefix(&pkg).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    on_disk.sort();
    assert_eq!(on_disk, package.files.keys().cloned().collect::<Vec<_>>());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pkg.join("package.json")).unwrap()).unwrap();
    assert_eq!(manifest["name"], "sinew-core");
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"));
    for other in ["--composed", "--out"] {
        let mut args: Vec<std::ffi::OsString> = vec!["component".into(), "--npm".into()];
        args.push(pkg.clone().into());
        args.push(other.into());
        if other == "--out" {
            args.push(dir.path().join("x.wasm").into());
        }
        let out = sinew(&args);
        assert_eq!(out.status.code(), Some(2), "{other}: {}", stderr(&out));
    }
}

/// A command other than `serve` stops only an embedded cluster it started:
/// one left running by a killed sinew (its `.owner` names a process that is
/// gone) may be in use by a `sinew serve --database-url`, and was once
/// adopted and stopped by `sinew audit verify`.
#[test]
fn commands_leave_running_a_cluster_they_did_not_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // (Reachable by the server's user when the tests run as root.)
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let pg = sinew_host::pg::embedded::Embedded::start(&data.join("pg")).expect("a Postgres");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(pg.owner_file(), dead.to_string()).unwrap();
    for args in [vec!["audit", "verify"], vec!["keys", "list"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(&args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("DATABASE_URL")
            .env_remove("SINEW_DATA_DIR")
            .output()
            .expect("run sinew");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert!(
            data.join("pg/postmaster.pid").is_file(),
            "{args:?} stopped the cluster: {}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(pg.owner_file()).unwrap(),
            dead.to_string(),
            "{args:?} took the cluster over"
        );
    }
    std::fs::write(pg.owner_file(), std::process::id().to_string()).unwrap();
    drop(pg);
    assert!(!data.join("pg/postmaster.pid").is_file());
}

/// The commands that read what a server wrote (`outbox`, `audit`) do not
/// create an empty embedded database where there is none: they say where
/// they looked, and leave the directory as it was.
#[test]
fn reading_commands_need_a_database_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nothing-here");
    for args in [
        vec!["outbox"],
        vec!["audit", "verify"],
        vec!["audit", "replay"],
    ] {
        let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        all.extend(["--data-dir".into(), data.clone().into_os_string()]);
        let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(&all)
            .env_remove("DATABASE_URL")
            .env_remove("SINEW_DATA_DIR")
            .output()
            .expect("run sinew");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 2, "{args:?}: {stderr}");
        assert!(stderr.contains("no database in"), "{args:?}: {stderr}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
}
