//! The bank workload on two `sinew serve` processes sharing one Postgres.
//! A test binary of its own, so that nothing else runs beside it.

use serde_json::{Value, json};
use sinew_tests::pg::{Cluster, Http, call, connect_url, token};
use sinew_tests::process::{Proc, verify_audit};
use sinew_tests::{Rng, root};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SINEW: &str = env!("CARGO_BIN_EXE_sinew");

/// The bank workload: 8 accounts, two servers on one database, 50
/// concurrent clients (40 transferring, 10 reading every balance).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_conserves_money_across_two_servers() {
    let seconds: u64 = std::env::var("SINEW_BANK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("specs/examples/bank.json");
    let env = [("DATABASE_URL", url.as_str())];
    let a = Proc::start(SINEW, &spec, &env, data.path());
    let b = Proc::start(SINEW, &spec, &env, data.path());
    let servers = [a.base.clone(), b.base.clone()];
    let http = Http::default();
    let teller = token("tina", &["teller"]);
    let requests = Arc::new(AtomicU64::new(0));
    // Transfers answered a typed 504: the spec's deadline (see below).
    let deadlines = Arc::new(AtomicU64::new(0));

    // Eight accounts with 10 000 each.
    let mut accounts = Vec::new();
    for i in 0..8 {
        let owner = token(&format!("holder{i}"), &["customer"]);
        let (s, body) = call(
            &http,
            "POST",
            &format!("{}/accounts", servers[i % 2]),
            &owner,
            &json!({"name": format!("acct {i}"), "currency": "EUR"}),
        )
        .await;
        if s >= 300 {
            let db = connect_url(&url).await;
            let last: String = db
                .query_one(
                    "SELECT entry FROM sinew_audit WHERE entry LIKE '%\"status\":500%' LIMIT 1",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or_default();
            let pglog = pg.log();
            panic!("open_account {i}: {s} {body}\naudit: {last}\npg: {pglog}");
        }
        let id = body["account"].as_str().unwrap().to_owned();
        let (s, body) = call(
            &http,
            "POST",
            &format!("{}/accounts/{id}/deposits", servers[i % 2]),
            &teller,
            &json!({"amount_cents": 10_000, "reference": "opening"}),
        )
        .await;
        assert!(s < 300, "deposit: {s} {body}");
        accounts.push(id);
        requests.fetch_add(2, Ordering::SeqCst);
    }
    let total: i64 = 80_000;
    let accounts = Arc::new(accounts);
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..50u64 {
        let http = http.clone();
        let servers = servers.clone();
        let accounts = accounts.clone();
        // One teller per client: the spec limits transfers per subject.
        let teller = token(&format!("teller{c}"), &["teller"]);
        let requests = requests.clone();
        let deadlines = deadlines.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c + 1) * 0x1234_5678));
            let mut seen: Vec<u16> = Vec::new();
            let mut problems = Vec::new();
            let mut latencies: Vec<(u64, u16, u64)> = Vec::new();
            let mut auditor: Option<tokio_postgres::Client> = None;
            while Instant::now() < stop {
                let server = &servers[rng.next(2) as usize];
                if c < 40 {
                    let from = rng.next(8) as usize;
                    let to = (from + 1 + rng.next(7) as usize) % 8;
                    let amount = 1 + rng.next(3000);
                    let t0 = Instant::now();
                    let answer = http
                        .json(
                            "POST",
                            &format!("{server}/transfers"),
                            Some(&teller),
                            &json!({"from_account": accounts[from], "to_account": accounts[to], "amount_cents": amount}),
                        )
                        .await;
                    let retry: Option<u64> =
                        answer.headers.get("retry-after").and_then(|v| v.parse().ok());
                    let (s, body) = (answer.status, answer.body);
                    requests.fetch_add(1, Ordering::SeqCst);
                    // The spec gives a transfer 3 s. Under this contention
                    // (40 clients on 8 rows, a lock convoy) on a small
                    // machine the slowest few can run out of it: a typed
                    // 504 whose transaction rolled back is the deadline
                    // working, counted apart from server errors.
                    // On a loaded machine the rollback and the audit entry
                    // after the deadline can take the server past its
                    // answer budget (deadline + 1 s): it then answers a
                    // typed 503 with `Retry-After` (outcome not known yet)
                    // while the request finishes in its task. That is the
                    // same deadline at work, and counted with it.
                    let code = body.get("code").and_then(Value::as_str);
                    let late = s == 503 && code == Some("unavailable") && retry.is_some();
                    let deadline = (s == 504 && code == Some("deadline_exceeded")) || late;
                    if deadline {
                        deadlines.fetch_add(1, Ordering::SeqCst);
                    } else {
                        seen.push(s);
                    }
                    if s != 429 {
                        latencies.push((t0.elapsed().as_millis() as u64, s, (stop - Instant::now()).as_millis() as u64));
                    }
                    if s == 429 {
                        // A polite client waits as long as `Retry-After`
                        // says (the spec allows 20 transfers a minute).
                        let Some(secs) = retry else {
                            problems.push("429 without Retry-After".to_owned());
                            break;
                        };
                        let until = (Instant::now() + Duration::from_secs(secs)).min(stop);
                        tokio::time::sleep_until(until.into()).await;
                    }
                    let typed = body.get("code").and_then(Value::as_str).is_some();
                    let fine = (200..300).contains(&s) || ((400..500).contains(&s) && typed) || deadline;
                    if !fine {
                        problems.push(format!("transfer answered {s}: {body}"));
                    }
                } else if c < 45 {
                    // A holder reads their balance over HTTP.
                    let holder = token(&format!("holder{}", c % 8), &["customer"]);
                    let (s, body) =
                        call(&http, "GET", &format!("{server}/accounts"), &holder, &json!({})).await;
                    requests.fetch_add(1, Ordering::SeqCst);
                    seen.push(s);
                    let list = body["accounts"].as_array().cloned().unwrap_or_default();
                    if s != 200 || list.len() != 1 {
                        problems.push(format!("balances answered {s}: {body}"));
                    } else if list[0]["balance"].as_i64().unwrap_or(-1) < 0 {
                        problems.push(format!("a negative balance: {body}"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    // An auditor reads every balance in one snapshot.
                    if auditor.is_none() {
                        auditor = Some(connect_url(&url).await);
                    }
                    let Some(db) = &auditor else { continue };
                    let row = db
                        .query_one("SELECT sum(balance)::bigint, min(balance)::bigint, count(*) FROM account", &[])
                        .await
                        .unwrap();
                    let (sum, min, n): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                    if sum != total || min < 0 || n != 8 {
                        problems.push(format!("a snapshot saw {n} accounts totalling {sum}, min {min}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (seen, problems, latencies)
        }));
    }
    // While the load runs, no request waits on an advisory lock (the audit
    // chain's lock is the sequencer's alone, and it only tries it).
    let sampler = tokio::spawn({
        let url = url.clone();
        async move {
            let db = connect_url(&url).await;
            let (mut samples, mut waiting) = (0u64, 0i64);
            while Instant::now() < stop {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                waiting = waiting.max(n);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (samples, waiting)
        }
    });
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    let mut problems = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (seen, p, l) = t.await.unwrap();
        latencies.extend(l);
        for s in seen {
            *statuses.entry(s).or_default() += 1;
        }
        problems.extend(p);
    }
    let (samples, waiting) = sampler.await.unwrap();
    eprintln!("pg_locks sampled {samples} times: at most {waiting} advisory locks waited for");
    assert!(samples > 100, "pg_locks sampled only {samples} times");
    assert_eq!(waiting, 0, "a session waited on an advisory lock");
    let n = requests.load(Ordering::SeqCst);
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0, |l| l.0)
    };
    eprintln!(
        "transfer latency (ms, rate-limited excluded): p50 {} p90 {} p99 {} max {}; slowest: {:?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        &latencies[latencies.len().saturating_sub(5)..]
    );
    let deadlines = deadlines.load(Ordering::SeqCst);
    if statuses.keys().any(|s| *s >= 500) {
        let db = connect_url(&url).await;
        let rows = db
            .query(
                "SELECT DISTINCT entry::jsonb->>'internal' FROM sinew_audit WHERE (entry::jsonb->>'status')::int >= 500",
                &[],
            )
            .await
            .unwrap();
        let internal: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
        let pglog = pg.log();
        let deadlocks = pglog.matches("deadlock detected").count();
        let serialization = pglog.matches("could not serialize").count();
        panic!(
            "server errors {statuses:?}: {internal:?} (deadlocks {deadlocks}, serialization failures {serialization})"
        );
    }
    eprintln!(
        "bank workload: {n} requests in {seconds} s, statuses {statuses:?}, deadlines {deadlines}"
    );
    // A few at the far tail, not a pattern: a lock held too long or a
    // stuck connection would time out many.
    let transfers: u64 =
        statuses.get(&201).copied().unwrap_or(0) + statuses.get(&422).copied().unwrap_or(0);
    assert!(
        deadlines * 50 <= transfers,
        "{deadlines} transfers ran out of their 3 s (of {transfers})"
    );
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) + statuses.get(&201).copied().unwrap_or(0) > 100,
        "too few successes: {statuses:?}"
    );

    let db = connect_url(&url).await;
    let row = db
        .query_one(
            "SELECT sum(balance)::bigint, min(balance)::bigint, count(*) FROM account",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), total, "money was created or lost");
    assert!(row.get::<_, i64>(1) >= 0, "a balance went negative");
    assert_eq!(row.get::<_, i64>(2), 8);
    // The ledger agrees with the balances.
    let ledger: i64 = db
        .query_one("SELECT coalesce(sum(amount_cents) FILTER (WHERE kind = 'deposit'), 0)::bigint FROM transfer", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, total);
    // The servers' sequencers chain every queued entry shortly after its
    // commit (requests take no lock for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (queued, oldest) = sinew_host::pg::sequencer::queued(&db).await.unwrap();
        if queued == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} entries still queued (the oldest for {oldest:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lag = db
        .query_one(
            "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM recorded_at - queued_at))::float8, \
                    max(extract(epoch FROM recorded_at - queued_at))::float8 FROM sinew_audit",
            &[],
        )
        .await
        .unwrap();
    let (p99, max): (f64, f64) = (lag.get(0), lag.get(1));
    eprintln!(
        "audit sequencer lag: p99 {:.0} ms, max {:.0} ms",
        p99 * 1e3,
        max * 1e3
    );
    assert!(p99 < 1.0, "sequencer lag p99 {p99} s");
    // A request answered late finishes in its task: its entry may come a
    // moment after the load.
    let until = Instant::now() + Duration::from_secs(10);
    let finals = loop {
        let (queued, _) = sinew_host::pg::sequencer::queued(&db).await.unwrap();
        let finals: i64 = db
            .query_one("SELECT count(*) FROM sinew_audit WHERE kind = 'final'", &[])
            .await
            .unwrap()
            .get(0);
        if (finals as u64 == n && queued == 0) || Instant::now() > until {
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finals as u64, n, "audit entries != requests");
    let size = db
        .query_one(
            "SELECT avg(length(entry))::float8, max(length(entry)) FROM sinew_audit \
             WHERE entry::jsonb->>'tool' = 'transfer' AND (entry::jsonb->>'status')::int = 201",
            &[],
        )
        .await
        .unwrap();
    eprintln!(
        "a committed transfer's audit entry: {:.0} bytes on average, {} at most",
        size.get::<_, f64>(0),
        size.get::<_, i32>(1)
    );
    // The spec's 20 transfers a minute per subject held across the two
    // servers (counted in Postgres): no teller got more through in any
    // minute, and the limit was reached (the 429s are real).
    let per_minute = db
        .query(
            "SELECT entry::jsonb->>'subject', \
                    date_trunc('minute', (entry::jsonb->>'time')::timestamptz), count(*) \
             FROM sinew_audit WHERE entry::jsonb->>'tool' = 'transfer' \
               AND (entry::jsonb->>'status')::int <> 429 \
             GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let most = per_minute
        .iter()
        .map(|r| r.get::<_, i64>(2))
        .max()
        .unwrap_or(0);
    assert_eq!(
        most, 20,
        "the most transfers one teller got through in a minute"
    );
    let (ok, out) = verify_audit(SINEW, &url);
    assert!(ok, "{out}");
    replay_reproduces_every_execution(&db, &url, finals, data.path()).await;
    drop(a);
    drop(b);
    // With no server left, an entry queued a while ago is reported (exit
    // 1) until `sinew audit sequence` chains it.
    db.batch_execute(
        "INSERT INTO sinew_audit_queue (execution, kind, entry, digest, queued_at) \
         VALUES ('late', 'final', '{\"execution\":\"late\",\"kind\":\"final\"}', \
                 encode(sha256('{\"execution\":\"late\",\"kind\":\"final\"}'), 'hex'), \
                 now() - interval '2 minutes')",
    )
    .await
    .unwrap();
    let (ok, out) = verify_audit(SINEW, &url);
    assert!(!ok, "{out}");
    assert!(out.contains("1 entries queued, not chained yet"), "{out}");
    assert!(out.contains("sinew audit sequence"), "{out}");
    let sequenced = std::process::Command::new(SINEW)
        .args(["audit", "sequence"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(sequenced.status.success());
    assert_eq!(
        String::from_utf8_lossy(&sequenced.stdout),
        "chained 1 queued entries\n"
    );
    let (ok, out) = verify_audit(SINEW, &url);
    assert!(ok, "{out}");
    assert_eq!(out, format!("audit chain intact: {} entries\n", finals + 1));
    checkpoints_catch_a_cut_or_rewritten_chain(&db, &url).await;
}

/// `sinew audit replay` runs every execution of the workload again in the
/// component, on the answers its entry recorded: each is identical byte for
/// byte. On a changed spec (a fee on every transfer), exactly the transfers
/// that moved money answer differently, at the debit's write.
async fn replay_reproduces_every_execution(
    db: &tokio_postgres::Client,
    url: &str,
    finals: i64,
    data: &std::path::Path,
) {
    let replay = |args: &[&str]| {
        let started = Instant::now();
        let out = std::process::Command::new(SINEW)
            .args(["audit", "replay", "--limit", "10000000"])
            .args(args)
            .env("DATABASE_URL", url)
            .env("SINEW_DATA_DIR", data)
            .env(
                "SINEW_CACHE_DIR",
                sinew_tests::pg::cache_dir().join("cache"),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), text, err, started.elapsed())
    };
    let (code, text, err, took) = replay(&[]);
    assert_eq!(code, Some(0), "{text}{err}");
    // Entries the host wrote itself (a transfer stopped at its deadline)
    // have no tape: reported, not replayed.
    let untaped: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit WHERE kind = 'final' AND entry::jsonb->'tape' IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (mut identical, mut not_replayable) = (0, 0);
    for l in text.lines().filter(|l| !l.starts_with("  ")) {
        let (_, rest) = l.split_once(": ").unwrap();
        let n: Vec<i64> = rest
            .split(", ")
            .map(|part| part.split(' ').next().unwrap().parse().unwrap())
            .collect();
        let [all, same, different, unreproducible, not] = n[..] else {
            panic!("{l}")
        };
        assert_eq!((different, unreproducible), (0, 0), "{l}");
        assert_eq!(all, same + not, "{l}");
        identical += same;
        not_replayable += not;
    }
    assert_eq!(not_replayable, untaped, "{text}");
    assert_eq!(identical + not_replayable, finals, "{text}");
    eprintln!(
        "replay: {identical} executions identical, {untaped} without a tape, in {:.1} s (the command's whole run)",
        took.as_secs_f64(),
    );
    // One execution by its id; none after a time to come.
    let one: String = db
        .query_one(
            "SELECT execution FROM sinew_audit WHERE kind = 'final' AND entry::jsonb->>'tool' = 'transfer' \
             AND entry::jsonb ? 'tape' ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, text, err, _) = replay(&[&one]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        text,
        "transfer: 1 replayed, 1 identical, 0 different, 0 unreproducible, 0 not replayable\n"
    );
    // Ids that match nothing are each named, and the exit is 2 (once: the
    // report said nothing of them and exited 0), also with --json.
    let (code, text, err, _) = replay(&[
        &one,
        "no-such-id",
        "3b77172e-0000-4000-8000-000000000000",
        "no-such-id",
    ]);
    assert_eq!(code, Some(2), "{text}{err}");
    assert_eq!(
        text,
        "transfer: 1 replayed, 1 identical, 0 different, 0 unreproducible, 0 not replayable\n  \
         not-found no-such-id: no recorded execution has this id\n  \
         not-found 3b77172e-0000-4000-8000-000000000000: no recorded execution has this id\n"
    );
    assert!(
        err.contains("`no-such-id`, `3b77172e-0000-4000-8000-000000000000`"),
        "{err}"
    );
    let (code, text, _, _) = replay(&["--json", "no-such-id"]);
    assert_eq!(code, Some(2), "{text}");
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        line,
        json!({"result": "not-found", "execution": "no-such-id"})
    );
    let (code, text, _, _) = replay(&["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(
        (code, text.as_str()),
        (Some(0), "no recorded execution matches\n")
    );
    // A fee of 1 on every transfer: a shadow test of that change.
    let mut spec: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("specs/examples/bank.json")).unwrap(),
    )
    .unwrap();
    let debit = &mut spec["tools"]["transfer"]["flow"]["nodes"]["write"]["body"]["nodes"]["debit"]
        ["set"]["balance"];
    assert_eq!(debit, "row.balance - input.amount_cents");
    *debit = json!("row.balance - input.amount_cents - 1");
    let changed = data.join("bank-with-fee.json");
    std::fs::write(&changed, spec.to_string()).unwrap();
    let moved: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit WHERE kind = 'final' AND entry::jsonb->>'tool' = 'transfer' \
             AND entry::jsonb->>'outcome' = 'ok' AND (entry::jsonb->>'status')::int = 201",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let transfers: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit WHERE kind = 'final' AND entry::jsonb->>'tool' = 'transfer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let untaped: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit WHERE kind = 'final' AND entry::jsonb->>'tool' = 'transfer' \
             AND entry::jsonb->'tape' IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, text, err, _) = replay(&["--spec", changed.to_str().unwrap(), "--tool", "transfer"]);
    assert_eq!(code, Some(1), "{text}{err}");
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "transfer: {transfers} replayed, {} identical, {moved} different, 0 unreproducible, {untaped} not replayable",
            transfers - moved - untaped
        ),
        "{text}"
    );
    assert!(
        text.contains("`update` with other arguments than recorded"),
        "{text}"
    );
    // On a spec without `transfer` (renamed), its executions are not run,
    // and counted as such (they once read as a difference at the clock).
    let mut renamed = spec.clone();
    let tools = renamed["tools"].as_object_mut().unwrap();
    let transfer = tools.remove("transfer").unwrap();
    tools.insert("transfer_v2".into(), transfer);
    for policy in renamed["policies"].as_object_mut().unwrap().values_mut() {
        for t in policy["tools"].as_array_mut().unwrap() {
            if t == "transfer" {
                *t = json!("transfer_v2");
            }
        }
    }
    let without = data.join("bank-without-transfer.json");
    std::fs::write(&without, renamed.to_string()).unwrap();
    let (code, text, err, _) = replay(&["--spec", without.to_str().unwrap(), "--tool", "transfer"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert_eq!(
        text,
        format!(
            "transfer: {transfers} replayed, 0 identical, 0 different, 0 unreproducible, 0 not replayable, \
             {transfers} not run: the spec replayed on has no tool `transfer`\n"
        )
    );
}

/// `sinew audit checkpoint` signs the head; `verify --checkpoint` holds on
/// the intact chain, and fails on a chain rewritten and hashed again (which
/// the chain alone cannot tell) and on a chain cut short.
async fn checkpoints_catch_a_cut_or_rewritten_chain(db: &tokio_postgres::Client, url: &str) {
    let key = "5e".repeat(32);
    let sinew = |args: &[&str]| {
        std::process::Command::new(SINEW)
            .args(args)
            .env("DATABASE_URL", url)
            .env("SINEW_AUDIT_SIGNING_KEY", &key)
            .output()
            .unwrap()
    };
    let out = sinew(&["audit", "checkpoint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoint: Value = serde_json::from_slice(&out.stdout).unwrap();
    let head: i64 = db
        .query_one("SELECT max(seq) FROM sinew_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checkpoint["seq"], head);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let file = file.to_str().unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--checkpoint", file];
        args.extend_from_slice(extra);
        let out = sinew(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = verify(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("holds (entry {head} is the one it signed)")),
        "{out}"
    );
    // Another key is not trusted.
    let (ok, out) = verify(&["--public-key", &"ab".repeat(32)]);
    assert!(!ok && out.contains("not the trusted"), "{out}");

    // Rewritten: the last three entries changed and chained again, each
    // hash recomputed; the chain verifies, the checkpoint does not hold.
    db.batch_execute("ALTER TABLE sinew_audit DISABLE TRIGGER USER")
        .await
        .unwrap();
    let rows = db
        .query(
            "SELECT seq, entry, prev FROM sinew_audit WHERE seq > $1::bigint - 3 ORDER BY seq",
            &[&head],
        )
        .await
        .unwrap();
    let mut prev: String = rows[0].get(2);
    for row in &rows {
        let seq: i64 = row.get(0);
        let mut entry: Value = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
        entry["outcome"] = json!("rewritten");
        let (text, hash) = sinew_core::chain::seal_entry(entry, seq as u64, &prev).unwrap();
        db.execute(
            "UPDATE sinew_audit SET entry = $2, prev = $3, hash = $4 WHERE seq = $1",
            &[&seq, &text, &prev, &hash],
        )
        .await
        .unwrap();
        prev = hash;
    }
    db.batch_execute("ALTER TABLE sinew_audit ENABLE TRIGGER USER")
        .await
        .unwrap();
    let (ok, out) = verify(&[]);
    assert!(!ok, "{out}");
    assert!(out.starts_with("audit chain intact"), "{out}");
    assert!(out.contains("the history up to it was rewritten"), "{out}");

    // Cut short: the tail deleted.
    db.batch_execute(&format!(
        "ALTER TABLE sinew_audit DISABLE TRIGGER USER; \
         DELETE FROM sinew_audit WHERE seq > {head} - 5; \
         ALTER TABLE sinew_audit ENABLE TRIGGER USER"
    ))
    .await
    .unwrap();
    let (ok, out) = verify(&[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "the checkpoint names entry {head}, the chain ends at {}",
            head - 5
        )),
        "{out}"
    );
}
