//! `sinew serve` as a process: two servers on one Postgres under a
//! concurrent bank workload, graceful SIGTERM, and the embedded default.
//! Each test starts its own throwaway Postgres cluster.

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sinew_host::pg::embedded::Embedded;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "serve-test-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A throwaway cluster in a temporary directory.
struct Pg {
    pg: Option<Embedded>,
    _dir: tempfile::TempDir,
}

impl Pg {
    fn start() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = Embedded::start(&dir.path().join("data")).unwrap();
        Pg {
            pg: Some(pg),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.pg.as_ref().unwrap().url()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        drop(self.pg.take());
    }
}

/// A `sinew serve` process.
struct Proc {
    child: Child,
    base: String,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    fn start(spec: &Path, envs: &[(&str, &str)], data_dir: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sinew"));
        cmd.arg("serve")
            .arg(spec)
            .args(["--port", "0", "--listen", "127.0.0.1"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("SINEW_JWT_SECRET", SECRET)
            .env(
                "SINEW_CACHE_DIR",
                root().join("target/test-sinew-data/cache"),
            )
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.find("on http://") {
                    let rest = &line[i + "on http://".len()..];
                    let addr: String = rest.chars().take_while(|c| *c != '"').collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the server did not start:\n{}\n{}",
                    lines.lock().unwrap().join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        Proc {
            child,
            base: format!("http://{addr}"),
            lines,
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Http = Client<HttpConnector, Full<bytes::Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn token(sub: &str, roles: &[&str]) -> String {
    let jwt = sinew_host::jwt::JwtConfig {
        secret: Some(SECRET.into()),
        roles_claim: "roles".into(),
        ..Default::default()
    };
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    jwt.mint(sub, &roles, 3600, sinew_host::jwt::now_secs())
        .unwrap()
}

async fn call(http: &Http, method: &str, url: &str, token: &str, body: &Value) -> (u16, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let resp = http.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn verify_audit(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The bank workload: 8 accounts, two servers on one database, 50
/// concurrent clients (40 transferring, 10 reading every balance).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_conserves_money_across_two_servers() {
    let seconds: u64 = std::env::var("SINEW_BANK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let pg = Pg::start();
    let url = pg.url();
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("specs/examples/bank.json");
    let env = [("DATABASE_URL", url.as_str())];
    let a = Proc::start(&spec, &env, data.path());
    let b = Proc::start(&spec, &env, data.path());
    let servers = [a.base.clone(), b.base.clone()];
    let http = client();
    let teller = token("tina", &["teller"]);
    let requests = Arc::new(AtomicU64::new(0));

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
            let db = sql(&url).await;
            let last: String = db
                .query_one(
                    "SELECT entry FROM sinew_audit WHERE entry LIKE '%\"status\":500%' LIMIT 1",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or_default();
            let pglog =
                std::fs::read_to_string(pg._dir.path().join("data/server.log")).unwrap_or_default();
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
                    let (s, body) = call(
                        &http,
                        "POST",
                        &format!("{server}/transfers"),
                        &teller,
                        &json!({"from_account": accounts[from], "to_account": accounts[to], "amount_cents": amount}),
                    )
                    .await;
                    requests.fetch_add(1, Ordering::SeqCst);
                    seen.push(s);
                    if s != 429 {
                        latencies.push((t0.elapsed().as_millis() as u64, s, (stop - Instant::now()).as_millis() as u64));
                    }
                    if s == 429 {
                        // A polite client backs off when rate-limited.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let typed = body.get("code").and_then(Value::as_str).is_some();
                    let fine = (200..300).contains(&s) || ((400..500).contains(&s) && typed);
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
                        auditor = Some(sql(&url).await);
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
    if statuses.keys().any(|s| *s >= 500) {
        let db = sql(&url).await;
        let rows = db
            .query(
                "SELECT DISTINCT entry::jsonb->>'internal' FROM sinew_audit WHERE (entry::jsonb->>'status')::int >= 500",
                &[],
            )
            .await
            .unwrap();
        let internal: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
        let pglog =
            std::fs::read_to_string(pg._dir.path().join("data/server.log")).unwrap_or_default();
        let deadlocks = pglog.matches("deadlock detected").count();
        let serialization = pglog.matches("could not serialize").count();
        panic!(
            "server errors {statuses:?}: {internal:?} (deadlocks {deadlocks}, serialization failures {serialization})"
        );
    }
    eprintln!("bank workload: {n} requests in {seconds} s, statuses {statuses:?}");
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

    let db = sql(&url).await;
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
    let finals: i64 = db
        .query_one("SELECT count(*) FROM sinew_audit WHERE kind = 'final'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(finals as u64, n, "audit entries != requests");
    let (ok, out) = verify_audit(&url);
    assert!(ok, "{out}");
    drop(a);
    drop(b);
}

/// SIGTERM: the server stops accepting, finishes the request in flight and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight() {
    let pg = Pg::start();
    let url = pg.url();
    let data = tempfile::tempdir().unwrap();
    // A provider that answers after 1.5 s.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from(r#"{"id": "ch_slow", "status": "succeeded"}"#),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let spec = root().join("specs/examples/shop.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_EXTERNAL_PAYMENTS_URL", provider.as_str()),
    ];
    let mut server = Proc::start(&spec, &env, data.path());
    let http = client();
    let staff = token("sam", &["staff"]);
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products", server.base),
        &staff,
        &json!({"sku": "T1", "name": "Tea", "price_cents": 300}),
    )
    .await;
    assert!(s < 300, "{s} {body}");
    let product = body["product"].as_str().unwrap().to_owned();
    let (s, _) = call(
        &http,
        "POST",
        &format!("{}/products/{product}/restock", server.base),
        &staff,
        &json!({"quantity": 5}),
    )
    .await;
    assert!(s < 300);
    let customer = token("alice", &["customer"]);
    let url_order = format!("{}/orders", server.base);
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move {
            call(
                &http,
                "POST",
                &url_order,
                &customer,
                &json!({"product": product, "quantity": 1}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate();
        (s, server.lines.lock().unwrap().clone())
    })
    .await
    .unwrap();
    let (s, body) = in_flight.await.unwrap();
    assert!(
        (200..300).contains(&s),
        "the request in flight got {s} {body}"
    );
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        status.1.iter().any(|l| l.contains("stopping")),
        "{:?}",
        status.1
    );
    // Every line is JSON with a severity.
    for line in &status.1 {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v.get("severity").is_some(), "{line}");
    }
    let db = sql(&url).await;
    let orders: i64 = db
        .query_one("SELECT count(*) FROM \"order\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 1);
}

/// No DATABASE_URL: a private Postgres in the data dir, its data kept
/// across restarts, stopped on exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_postgres_keeps_data_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = root().join("specs/examples/shop.json");
    let staff = token("sam", &["staff"]);
    let http = client();
    let mut first = Proc::start(&spec, &[], data.path());
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products", first.base),
        &staff,
        &json!({"sku": "KEEP", "name": "Kept", "price_cents": 100}),
    )
    .await;
    assert!(s < 300, "{s} {body}");
    let code = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    assert!(code.success());
    assert!(data.path().join("pg/PG_VERSION").is_file());
    let second = Proc::start(&spec, &[], data.path());
    let (s, body) = call(
        &http,
        "GET",
        &format!("{}/products", second.base),
        &staff,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["products"][0]["sku"], "KEEP", "{body}");
    drop(second);
    // The killed server's Postgres is adopted and stopped by the next one.
    let mut third = Proc::start(&spec, &[], data.path());
    assert!(
        tokio::task::spawn_blocking(move || third.terminate())
            .await
            .unwrap()
            .success()
    );
    assert!(
        !data.path().join("pg/postmaster.pid").exists(),
        "the embedded Postgres is still running"
    );
}
