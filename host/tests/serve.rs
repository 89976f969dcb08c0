//! `sinew serve` as a process: graceful SIGTERM and the embedded default.
//! Each test starts its own throwaway Postgres cluster.

use http_body_util::Full;
use serde_json::{Value, json};
use sinew_tests::pg::{Cluster, Http, cache_dir, call, connect_url, token};
use sinew_tests::process::Proc;
use sinew_tests::root;
use std::time::{Duration, Instant};

const SINEW: &str = env!("CARGO_BIN_EXE_sinew");

/// SIGTERM: the server stops accepting, finishes the request in flight and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight() {
    let pg = Cluster::start();
    let url = pg.url("postgres");
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
    let mut server = Proc::start(SINEW, &spec, &env, data.path());
    let http = Http::default();
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
    server.signal_term();
    // It stops accepting at once, while the request in flight goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request should still be running"
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit();
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
    let db = connect_url(&url).await;
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
    let http = Http::default();
    let mut first = Proc::start(SINEW, &spec, &[], data.path());
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products", first.base),
        &staff,
        &json!({"sku": "KEEP", "name": "Kept", "price_cents": 100}),
    )
    .await;
    assert!(s < 300, "{s} {body}");
    // The studio (it shows the whole spec) is off unless asked for.
    for path in ["/studio", "/studio/"] {
        let (s, body) = call(
            &http,
            "GET",
            &format!("{}{path}", first.base),
            "",
            &json!({}),
        )
        .await;
        assert_eq!(s, 404, "{path}: {body}");
    }
    let code = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    assert!(code.success());
    assert!(data.path().join("pg/PG_VERSION").is_file());
    // A clean stop leaves nothing in the temp dir: the socket's directory
    // (`sinew-pg-<hash of the data dir>`) and its `.owner` file are gone.
    let tag = &sinew_core::hash::sha256_hex(
        data.path()
            .join("pg")
            .canonicalize()
            .unwrap()
            .to_string_lossy()
            .as_bytes(),
    )[..16];
    let socket = std::env::temp_dir().join(format!("sinew-pg-{tag}"));
    let owner = socket.with_extension("owner");
    let left = || [&socket, &owner].into_iter().filter(|p| p.exists()).count();
    assert_eq!(
        left(),
        0,
        "{} or {} left behind",
        socket.display(),
        owner.display()
    );
    let second = Proc::start(SINEW, &spec, &[("SINEW_STUDIO", "1")], data.path());
    let (s, _) = call(
        &http,
        "GET",
        &format!("{}/studio", second.base),
        "",
        &json!({}),
    )
    .await;
    assert_eq!(s, 308, "SINEW_STUDIO=1 serves the studio");
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
    let mut third = Proc::start(SINEW, &spec, &[], data.path());
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
    assert_eq!(
        left(),
        0,
        "{} or {} left behind",
        socket.display(),
        owner.display()
    );
}

/// The first start of a spec snapshots the component with the spec loaded
/// (in the background); the next start maps that snapshot instead of loading
/// the spec and serves from it; another spec is not served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_starts_serve_from_a_snapshot_of_the_loaded_spec() {
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    // A cache of its own, with the compiled component of the shared one
    // (this test is about the snapshot, not about compiling the component).
    let cache = data.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    for e in std::fs::read_dir(cache_dir().join("cache")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("sinew-") && !name.ends_with(".lock") {
            std::fs::copy(&p, cache.join(&name)).unwrap();
        }
    }
    let spec = root().join("specs/examples/shop.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_NO_SNAPSHOT", "false"),
        ("SINEW_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let ready_line = |p: &Proc| p.line("ready in").unwrap_or_default();
    let http = Http::default();
    let staff = token("sam", &["staff"]);

    let mut first = Proc::start(SINEW, &spec, &env, data.path());
    assert!(
        !ready_line(&first).contains("snapshot"),
        "{}",
        ready_line(&first)
    );
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products", first.base),
        &staff,
        &json!({"sku": "S1", "name": "Snap", "price_cents": 100}),
    )
    .await;
    assert!(s < 300, "{s} {body}");
    let product = body["product"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(180);
    while first.line("start from a snapshot").is_none() {
        assert!(
            Instant::now() < deadline,
            "no snapshot was built:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    assert!(code.success());
    let snapshots = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_str().unwrap();
            n.starts_with("snapshot-") && n.ends_with(".cwasm")
        })
        .count();
    assert_eq!(snapshots, 1);

    // The next start serves from the snapshot: reads what the first wrote,
    // writes, and its audit chain goes on.
    let second = Proc::start(SINEW, &spec, &env, data.path());
    assert!(
        ready_line(&second).contains("instances from a snapshot"),
        "{}\n{:?}",
        second.log(),
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products/{product}/restock", second.base),
        &staff,
        &json!({"quantity": 7}),
    )
    .await;
    assert!(s < 300, "{s} {body}");
    let (s, body) = call(
        &http,
        "GET",
        &format!("{}/products", second.base),
        &staff,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["products"][0]["sku"], "S1", "{body}");
    assert_eq!(body["products"][0]["stock"], 7, "{body}");
    let (s, body) = call(
        &http,
        "POST",
        &format!("{}/products", second.base),
        &staff,
        &json!({"sku": "S1", "name": "Again", "price_cents": 100}),
    )
    .await;
    assert_eq!(s, 409, "a unique sku again: {body}");
    drop(second);
    let db = connect_url(&url).await;
    // One chain across both processes: every link verifies, and the four
    // requests left their entries.
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let n = sinew_host::pg::verify_audit(&db)
        .await
        .unwrap()
        .expect("the audit chain verifies");
    assert!(n >= 4, "{n} audit entries");

    // Another spec (here: the same with one more space) is not the snapshot's.
    let other = data.path().join("shop2.json");
    std::fs::write(
        &other,
        format!("{} ", std::fs::read_to_string(&spec).unwrap()),
    )
    .unwrap();
    let third = Proc::start(SINEW, &other, &env, data.path());
    assert!(
        !ready_line(&third).contains("snapshot"),
        "{}",
        ready_line(&third)
    );
    let (s, body) = call(
        &http,
        "GET",
        &format!("{}/products", third.base),
        &staff,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// A server whose log reader went away (a dead log collector, a closed
/// pipe) keeps answering: a log line it cannot write is lost, the request
/// is not (`println!` panicked mid-request on the broken pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_loses_log_lines_not_requests() {
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("specs/examples/shop.json");
    let server = Proc::start(SINEW, &spec, &[("DATABASE_URL", url.as_str())], data.path());
    let http = Http::default();
    server.close_stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.hung_up() {
        assert!(Instant::now() < deadline, "stdout was not closed");
        // A 404 is logged (health checks are not).
        let _ = http
            .send("GET", &format!("{}/not-yet", server.base), &[], "")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let staff = token("sam", &["staff"]);
    for i in 0..3 {
        let (s, body) = call(
            &http,
            "POST",
            &format!("{}/products", server.base),
            &staff,
            &json!({"sku": format!("T{i}"), "name": "Tea", "price_cents": 300}),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    // A refusal and an unknown path log too.
    let (s, _) = call(
        &http,
        "POST",
        &format!("{}/products", server.base),
        "bad",
        &json!({}),
    )
    .await;
    assert_eq!(s, 401);
    let r = http
        .send("GET", &format!("{}/nowhere", server.base), &[], "")
        .await;
    assert_eq!(r.status, 404);
}

/// Hex HMAC-SHA256 of `parts` with `secret`.
fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const STRIPE_SECRET: &str = "whsec_test_0123456789";
const GITHUB_SECRET: &str = "gh-hook-secret";

/// Webhooks authenticate by their signature alone and run as
/// `webhook:<tool>` with the tool's roles: a Stripe event marks a
/// customer's order (an owned row, seen through the exempt role); the
/// same event again is answered from the first; a tampered, expired,
/// missing or bearer-only delivery is 401 and changes nothing; a webhook
/// whose secret is not set refuses everything without naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_verified_by_their_scheme_and_run_with_their_roles() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("tests/fixtures/webhooks.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_TEST_STRIPE_SECRET", STRIPE_SECRET),
        ("SINEW_TEST_GITHUB_SECRET", GITHUB_SECRET),
    ];
    let mut server = Proc::start(SINEW, &spec, &env, data.path());
    let db = connect_url(&url).await;
    let http = Http::default();
    let base = &server.base;
    let ann = token("ann", &["customer"]);
    let placed = http
        .json(
            "POST",
            &format!("{base}/orders"),
            Some(&ann),
            &json!({"total": 1200}),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let order = placed.body["id"].as_str().unwrap().to_owned();
    let event = |id: &str| {
        json!({"id": id, "type": "payment_intent.succeeded",
               "data": {"object": {"metadata": {"order": order}}}})
        .to_string()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let stripe_header = |t: i64, body: &str| {
        let v1 = hmac_hex(
            STRIPE_SECRET,
            &[format!("{t}.").as_bytes(), body.as_bytes()],
        );
        format!("t={t},v1={v1}")
    };
    let deliver = |path: &'static str, headers: Vec<(&'static str, String)>, body: String| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let mut h = vec![("content-type", "application/json".to_string())];
            h.extend(headers);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http.send("POST", &url, &h, body).await
        }
    };
    let paid_by = || async {
        db.query_one("SELECT paid_by FROM \"order\"", &[])
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };

    // Tampered: a valid signature of another body.
    let body = event("evt_1");
    let tampered = event("evt_forged");
    let r = deliver(
        "/hooks/stripe",
        vec![("stripe-signature", stripe_header(now(), &body))],
        tampered,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("does not match"), "{}", r.text);
    // Expired: signed 400 s ago (the tolerance is 300 s).
    let r = deliver(
        "/hooks/stripe",
        vec![("stripe-signature", stripe_header(now() - 400, &body))],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("tolerance"), "{}", r.text);
    // A bearer token is not a signature.
    let payments = token("ops", &["payments"]);
    let r = deliver(
        "/hooks/stripe",
        vec![("authorization", format!("Bearer {payments}"))],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(paid_by().await, None, "nothing changed");

    // Valid: the order is marked, by the webhook's caller.
    let signed = stripe_header(now(), &body);
    let first = deliver(
        "/hooks/stripe",
        vec![("stripe-signature", signed.clone())],
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body, json!({"order": order, "paid_by": "evt_1"}));
    assert_eq!(paid_by().await.as_deref(), Some("evt_1"));
    // Stripe delivers it again (same event, a new signature): the first
    // answer, nothing run twice. By name too.
    let again = deliver(
        "/tools/stripe_event",
        vec![("stripe-signature", stripe_header(now(), &body))],
        body.clone(),
    )
    .await;
    assert_eq!(
        (again.status, &again.body),
        (200, &first.body),
        "{}",
        again.text
    );
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let entries: Vec<Value> = db
        .query(
            "SELECT entry FROM sinew_audit WHERE entry::jsonb->>'tool' = 'stripe_event' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .filter(|e: &Value| e["kind"] == "final")
        .collect();
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["rejected", "rejected", "rejected", "ok", "replayed"]
    );
    assert_eq!(entries[3]["subject"], "webhook:stripe_event");
    assert_eq!(entries[3]["roles"], json!(["payments"]));
    assert!(
        !entries
            .iter()
            .any(|e| e.to_string().contains(STRIPE_SECRET)),
        "no secret in the audit log"
    );

    // GitHub: `sha256=` and the HMAC of the body.
    let push = json!({"ref": "refs/heads/main"}).to_string();
    let sig = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[push.as_bytes()]));
    let r = deliver(
        "/hooks/github",
        vec![("x-hub-signature-256", sig)],
        push.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"ref": "refs/heads/main", "by": "webhook:github_push"})
    );
    let bare = hmac_hex(GITHUB_SECRET, &[push.as_bytes()]);
    let r = deliver("/hooks/github", vec![("x-hub-signature-256", bare)], push).await;
    assert_eq!(r.status, 401, "{}", r.text);

    // The OpenAPI document names no setting.
    let doc = http
        .send("GET", &format!("{base}/openapi.json"), &[], "")
        .await;
    assert!(
        !doc.text.contains("SINEW_TEST_"),
        "settings in the OpenAPI document"
    );
    assert!(server.terminate().success());
}

/// Externals speak real APIs: each operation's method, path (an `{arg}`
/// taken out of the arguments), encoding (Stripe's form encoding, nested
/// keys included), auth (bearer, a header, basic), literal headers and
/// idempotency header reach a loopback fake exactly; 5xx and 429 are
/// retried, honouring `Retry-After`; no secret is written anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externals_send_exactly_what_their_operations_say() {
    use sinew_tests::pg::{Canned, Recorder};
    let stripe = Recorder::start(vec![
        (
            "POST /v1/payment_intents",
            vec![
                Canned::json(500, json!({"error": "try again"})),
                Canned::json(200, json!({"id": "pi_1", "status": "requires_capture"})),
            ],
        ),
        (
            "GET /v1/payment_intents/pi_1",
            vec![Canned::json(
                200,
                json!({"id": "pi_1", "status": "succeeded"}),
            )],
        ),
    ])
    .await;
    let mailer = Recorder::start(vec![(
        "POST /v3/mail/send",
        vec![Canned::json(202, json!({"id": "m_1"}))],
    )])
    .await;
    let ledger = Recorder::start(vec![(
        "GET /accounts/acct%201%2Fx/balance",
        vec![
            Canned {
                status: 429,
                headers: vec![("retry-after".into(), "1".into())],
                body: json!({}),
                delay: Duration::ZERO,
            },
            Canned::json(200, json!({"amount": 42})),
        ],
    )])
    .await;
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("tests/fixtures/externals.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_EXTERNAL_STRIPE_URL", stripe.base.as_str()),
        ("SINEW_EXTERNAL_MAILER_URL", mailer.base.as_str()),
        ("SINEW_EXTERNAL_LEDGER_URL", ledger.base.as_str()),
        ("SINEW_TEST_STRIPE_KEY", "sk_test_123"),
        ("SINEW_TEST_MAIL_KEY", "mk_456"),
        ("SINEW_TEST_LEDGER_PASSWORD", "pw:789"),
    ];
    let mut server = Proc::start(SINEW, &spec, &env, data.path());
    let http = Http::default();
    let ann = format!("Bearer {}", token("ann", &["customer"]));
    let paid = http
        .send(
            "POST",
            &format!("{}/pay", server.base),
            &[
                ("content-type", "application/json"),
                ("authorization", &ann),
                ("idempotency-key", "pay-1"),
            ],
            json!({"amount": 1200, "email": "ann@example.com"}).to_string(),
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(paid.body, json!({"payment": "pi_1", "status": "succeeded"}));

    let seen = stripe.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for (n, charge) in seen[..2].iter().enumerate() {
        assert_eq!(
            (charge.method.as_str(), charge.target.as_str()),
            ("POST", "/v1/payment_intents")
        );
        let h = &charge.headers;
        assert_eq!(h["authorization"], "Bearer sk_test_123");
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(
            h["idempotency-key"], "pay-1",
            "the same key on every attempt"
        );
        assert_eq!(h["stripe-version"], "2024-06-20");
        assert_eq!(h["x-sinew-attempt"], (n + 1).to_string());
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(charge.body.as_bytes())
            .into_owned()
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            [
                ("amount", "1200"),
                ("capture", "true"),
                ("currency", "eur"),
                ("metadata[customer]", "ann"),
                ("metadata[note]", "tea & cake"),
                ("payment_method_types[0]", "card"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
            "nested keys as Stripe reads them, the null left out: {}",
            charge.body
        );
    }
    let look = &seen[2];
    assert_eq!(look.method, "GET");
    assert_eq!(
        look.target,
        "/v1/payment_intents/pi_1?expand%5B0%5D=latest_charge"
    );
    assert_eq!(look.body, "");
    assert!(!look.headers.contains_key("content-type"));
    assert_eq!(look.headers["authorization"], "Bearer sk_test_123");

    let mails = mailer.requests();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(
        (mail.method.as_str(), mail.target.as_str()),
        ("POST", "/v3/mail/send")
    );
    assert_eq!(mail.headers["x-api-key"], "mk_456");
    assert_eq!(mail.headers["x-message-key"], "pay-1:receipt");
    assert!(!mail.headers.contains_key("authorization"));
    assert!(!mail.headers.contains_key("idempotency-key"));
    assert_eq!(mail.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&mail.body).unwrap(),
        json!({"to": "ann@example.com", "subject": "Your receipt", "amount": 1200})
    );

    // 429 with `Retry-After: 1`: the next attempt waits a second, not the
    // spec's 10 ms.
    let (s, body) = call(
        &http,
        "GET",
        &format!("{}/balance", server.base),
        &token("ann", &["customer"]),
        &json!({}),
    )
    .await;
    assert_eq!((s, &body), (200, &json!({"amount": 42})), "{body}");
    let asked = ledger.requests();
    assert_eq!(asked.len(), 2);
    assert!(
        asked[1].at.duration_since(asked[0].at) >= Duration::from_millis(950),
        "waited {:?}",
        asked[1].at.duration_since(asked[0].at)
    );
    use base64::Engine as _;
    assert_eq!(
        asked[0].headers["authorization"],
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("acct_1:pw:789")
        )
    );

    // No secret anywhere: audit entries, the log, the OpenAPI document.
    let db = connect_url(&url).await;
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let audit: Vec<String> = db
        .query("SELECT entry FROM sinew_audit", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let doc = http
        .send("GET", &format!("{}/openapi.json", server.base), &[], "")
        .await;
    let log = server.log();
    for secret in ["sk_test_123", "mk_456", "pw:789"] {
        assert!(
            !audit.iter().any(|e| e.contains(secret)),
            "{secret} in the audit log"
        );
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(
            !doc.text.contains(secret),
            "{secret} in the OpenAPI document"
        );
    }
    assert!(server.terminate().success());
}

/// The outbox: a message `emit` recorded is delivered after the commit
/// with its stable key (a 500 is tried again a second later); a rolled-back
/// transaction sends nothing; a refusal fails the message for good, and
/// `sinew outbox` lists it; an instance killed while delivering leaves the
/// message to another, which delivers it once it may (the service sees the
/// same key twice: at least once to it, once per key). Deliveries and
/// final failures are audited; the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_after_the_commit_once_per_key() {
    use sinew_tests::pg::{Canned, Recorder};
    let slow = Canned {
        delay: Duration::from_secs(4),
        ..Canned::json(200, json!({"late": true}))
    };
    let mailer = Recorder::start(vec![
        (
            "POST /send",
            vec![
                Canned {
                    headers: vec![("retry-after".into(), "2".into())],
                    ..Canned::json(503, json!({"error": "busy"}))
                },
                Canned::json(202, json!({"id": "m1"})),
            ],
        ),
        (
            "POST /slow",
            vec![slow, Canned::json(200, json!({"id": "m2"}))],
        ),
        (
            "POST /picky",
            vec![Canned::json(422, json!({"error": "no such address"}))],
        ),
        ("POST /legacy", vec![Canned::json(200, json!({"id": "m3"}))]),
    ])
    .await;
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("tests/fixtures/outbox.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_EXTERNAL_MAILER_URL", mailer.base.as_str()),
    ];
    let a = Proc::start(SINEW, &spec, &env, data.path());
    let http = Http::default();
    let clerk = token("cleo", &["clerk"]);
    let place = |base: String, body: Value| {
        let (http, clerk) = (http.clone(), clerk.clone());
        async move { call(&http, "POST", &format!("{base}/orders"), &clerk, &body).await }
    };
    let db = connect_url(&url).await;
    let wait_for = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // Rolled back: nothing recorded, nothing sent.
    let (s, body) = place(
        a.base.clone(),
        json!({"ref": "r0", "operation": "send", "fail": true}),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM sinew_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0, "a rolled-back message was recorded");
    // Committed: delivered after one retry, with one key.
    let (s, body) = place(a.base.clone(), json!({"ref": "r1", "operation": "send"})).await;
    assert_eq!(s, 200, "{body}");
    let m = mailer.clone();
    wait_for(
        "two attempts of /send",
        Box::new(move || m.requests().iter().filter(|r| r.target == "/send").count() >= 2),
    )
    .await;
    let sent: Vec<_> = mailer
        .requests()
        .into_iter()
        .filter(|r| r.target == "/send")
        .collect();
    assert_eq!(sent.len(), 2);
    // Later than the backoff's second: when the service asked to.
    assert!(
        sent[1].at.duration_since(sent[0].at) >= Duration::from_millis(1900),
        "two seconds apart (`Retry-After: 2`)"
    );
    assert_eq!(sent[0].headers["x-sinew-attempt"], "1");
    assert_eq!(sent[1].headers["x-sinew-attempt"], "2");
    let key = sent[0].headers["x-message-key"].clone();
    assert_eq!(sent[1].headers["x-message-key"], key);
    assert_eq!(
        serde_json::from_str::<Value>(&sent[0].body).unwrap()["ref"],
        "r1"
    );
    assert!(
        !mailer.requests().iter().any(|r| r.body.contains("r0")),
        "a rolled-back message was sent"
    );

    // Refused: failed for good, listed, audited.
    let (s, _) = place(a.base.clone(), json!({"ref": "r2", "operation": "picky"})).await;
    assert_eq!(s, 200);
    let started = Instant::now();
    loop {
        let failed: i64 = db
            .query_one(
                "SELECT count(*) FROM sinew_messages WHERE failed_at IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if failed == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the refused message did not fail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = std::process::Command::new(SINEW)
        .args(["outbox", "--database-url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert!(
        text.contains("failed") && text.contains("mailer.picky") && text.contains("refused"),
        "{text}"
    );
    assert!(text.contains("outbox: 0 pending, 1 failed"), "{text}");

    // Killed mid-delivery: another instance delivers it (A's locks ended
    // with its connection), with the same key; A's attempt, cut short, is
    // not counted.
    let (s, _) = place(a.base.clone(), json!({"ref": "r3", "operation": "slow"})).await;
    assert_eq!(s, 200);
    let m = mailer.clone();
    wait_for(
        "the slow delivery to start",
        Box::new(move || m.requests().iter().any(|r| r.target == "/slow")),
    )
    .await;
    drop(a); // SIGKILL, mid-request
    let killed = Instant::now();
    let b = Proc::start(SINEW, &spec, &env, data.path());
    let started = Instant::now();
    loop {
        // A delivered message's row is deleted.
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM sinew_messages WHERE message::jsonb->>'operation' = 'slow'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not taken over: {}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow: Vec<_> = mailer
        .requests()
        .into_iter()
        .filter(|r| r.target == "/slow")
        .collect();
    assert_eq!(slow.len(), 2, "sent by A (killed), then by B");
    assert_eq!(
        slow[0].headers["x-message-key"],
        slow[1].headers["x-message-key"]
    );
    assert!(slow[1].at > killed, "sent again only after A was killed");

    // Audited: two deliveries and one final failure; the chain holds.
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let entries: Vec<Value> = db
        .query("SELECT entry FROM sinew_audit ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .filter(|e: &Value| e["kind"] == "delivery")
        .flat_map(|e| e["deliveries"].as_array().cloned().unwrap_or_default())
        .collect();
    let outcomes: Vec<(&str, &str, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("send", "delivered", 2),
            ("picky", "failed", 1),
            ("slow", "delivered", 1)
        ]
    );
    assert_eq!(entries[0]["idempotencyKey"], key.as_str());
    let verified = sinew_host::pg::verify_audit(&db).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    // A server of the version before `sinew_messages` records its messages
    // in `sinew_outbox` (a rolling deploy): they are forwarded, and
    // delivered by this one.
    db.execute(
        "INSERT INTO sinew_outbox (id, execution, tool, node, service, operation, message) \
         VALUES ('00000000-0000-4000-8000-00000000001e', 'e-legacy', 'place', 'mail', 'mailer', 'legacy', $1)",
        &[&json!({"id": "00000000-0000-4000-8000-00000000001e", "execution": "e-legacy",
                  "tool": "place", "node": "mail", "service": "mailer", "operation": "legacy",
                  "args": {"ref": "old"}, "idempotencyKey": "legacy-key",
                  "createdAt": "2026-12-06T00:00:00Z"})
            .to_string()],
    )
    .await
    .unwrap();
    let m = mailer.clone();
    wait_for(
        "the forwarded message to be sent",
        Box::new(move || m.requests().iter().any(|r| r.target == "/legacy")),
    )
    .await;
    let legacy: Vec<_> = mailer
        .requests()
        .into_iter()
        .filter(|r| r.target == "/legacy")
        .collect();
    assert_eq!(legacy[0].headers["x-message-key"], "legacy-key");
    let kept: i64 = db
        .query_one("SELECT count(*) FROM sinew_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 0, "a forwarded message stayed in sinew_outbox");

    // Delivered messages' rows are deleted (the forwarded one's too, once
    // its delivery is recorded); the failed one stays.
    let started = Instant::now();
    loop {
        let left: Vec<String> = db
            .query(
                "SELECT message::jsonb->>'operation' FROM sinew_messages",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left == ["picky"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "left in the outbox: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let forwarded: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit, jsonb_array_elements(entry::jsonb->'deliveries') d \
             WHERE kind = 'delivery' AND d->>'operation' = 'legacy' AND d->>'outcome' = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        forwarded, 1,
        "the forwarded message's delivery is audited once"
    );
    drop(b);
}

/// `escalate`: one WARNING alert line naming the policy, tool, caller and
/// execution (none for an idempotent replay, none for a call the policy
/// let through quietly), and one review item, recorded with the call's
/// audit entry; callers with a `reviews` role list and resolve items, and
/// a resolution is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_alert_once_and_wait_for_a_review() {
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = json!({
        "sinew": "0.2", "name": "payouts", "roles": ["clerk", "ops"],
        "reviews": {"roles": ["ops"]},
        "entities": {"Payout": {"fields": {"amount": {"type": "integer"}}}},
        "tools": {"pay": {
            "description": "Records a payout; a large one is escalated.",
            "trigger": {"http": {"method": "POST", "path": "/payouts"}},
            "auth": {"roles": ["clerk"]},
            "idempotencyKey": "request.idempotencyKey",
            "input": {"type": "object", "additionalProperties": false, "required": ["amount"],
                      "properties": {"amount": {"type": "integer", "minimum": 1, "maximum": 1000000}}},
            "flow": {"entry": "w", "nodes": {
                "w": {"type": "transaction", "body": {"entry": "p", "nodes": {
                    "p": {"type": "create", "entity": "Payout", "values": {"amount": "input.amount"}}}},
                      "next": "done"},
                "done": {"type": "return", "status": 201, "value": {"id": "p.id"}}}}}},
        "policies": {"large_payout": {"type": "budgetCheck", "action": "escalate",
                                       "tools": ["pay"], "amount": "input.amount", "maxAmount": 1000}}
    });
    let path = data.path().join("payouts.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let server = Proc::start(SINEW, &path, &[("DATABASE_URL", url.as_str())], data.path());
    let base = &server.base;
    let http = Http::default();
    let clerk = format!("Bearer {}", token("carl", &["clerk"]));
    let ops = format!("Bearer {}", token("olga", &["ops"]));
    let pay = |amount: i64, key: &'static str| {
        let (http, clerk, url) = (http.clone(), clerk.clone(), format!("{base}/payouts"));
        async move {
            let headers = [
                ("authorization", clerk.as_str()),
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ];
            http.send(
                "POST",
                &url,
                &headers,
                json!({"amount": amount}).to_string(),
            )
            .await
        }
    };
    let small = pay(50, "k-small").await;
    assert_eq!(small.status, 201, "{}", small.text);
    let big = pay(5000, "k-big").await;
    assert_eq!(big.status, 201, "{}", big.text);
    let execution = big.headers["x-request-id"].clone();
    let again = pay(5000, "k-big").await;
    assert_eq!(again.status, 201);
    assert_eq!(
        again.text, big.text,
        "the replay answers the first response"
    );

    // One alert line, for the first call only. A request's alert is
    // written before its own request line: once the replay's request line
    // is there, so would be an alert of it.
    let replay = again.headers["x-request-id"].clone();
    assert_ne!(replay, execution, "the replay is an execution of its own");
    let started = Instant::now();
    while server
        .line(&format!("\"execution\":\"{replay}\""))
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no line for {replay}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alerts: Vec<Value> = server
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("alert").is_some())
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["severity"], "WARNING", "{alert}");
    assert_eq!(alert["tool"], "pay");
    assert_eq!(alert["execution"], execution.as_str());
    assert_eq!(
        alert["alert"],
        json!({"escalated": ["large_payout"], "caller": "carl"})
    );
    let message = alert["message"].as_str().unwrap();
    for part in ["large_payout", "pay", "carl", execution.as_str()] {
        assert!(message.contains(part), "{message}");
    }

    // The review item: open, for the ops role only.
    let get = |auth: Option<&str>, query: &str| {
        let (http, url) = (http.clone(), format!("{base}/reviews{query}"));
        let auth = auth.map(str::to_owned);
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            http.send("GET", &url, &headers, "").await
        }
    };
    // Items are recorded as their entries are chained: chain what is
    // queued now.
    let db = connect_url(&url).await;
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let listed = get(Some(&ops), "").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let items = listed.body["reviews"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.text);
    let item = &items[0];
    assert_eq!(item["policy"], "large_payout");
    assert_eq!(item["tool"], "pay");
    assert_eq!(item["subject"], "carl");
    assert_eq!(item["execution"], execution.as_str());
    assert_eq!(item["status"], "open");
    assert!(item["seq"].as_i64().unwrap() >= 1);
    assert_eq!(listed.body["next"], Value::Null);
    let id = item["id"].as_i64().unwrap();
    let anonymous = get(None, "").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    assert_eq!(get(Some(&clerk), "").await.status, 403);
    assert_eq!(get(Some(&ops), "?status=maybe").await.status, 400);
    assert_eq!(get(Some(&ops), "?limit=0").await.status, 400);
    assert_eq!(get(Some(&ops), "?sort=id").await.status, 400);
    // A parameter given twice is refused, as by the tools' routes (which
    // one a proxy read is not known).
    let twice = get(Some(&ops), "?status=all&status=open").await;
    assert_eq!(twice.status, 400, "{}", twice.text);
    assert_eq!(twice.body["code"], "invalid_input", "{}", twice.text);
    assert!(
        twice.text.contains("`status` is given twice in the query"),
        "{}",
        twice.text
    );
    // A known path with the wrong method: 405 with `Allow`.
    let put = http
        .send(
            "PUT",
            &format!("{base}/reviews"),
            &[("authorization", ops.as_str())],
            "",
        )
        .await;
    assert_eq!(put.status, 405, "{}", put.text);
    assert_eq!(put.headers["allow"], "GET, HEAD");
    let none = get(Some(&ops), "?status=resolved").await;
    assert_eq!(none.body["reviews"], json!([]), "{}", none.text);

    // Resolving: by ops, once; audited.
    let resolve = |auth: &str, id: i64, body: &str| {
        let (http, url) = (http.clone(), format!("{base}/reviews/{id}/resolve"));
        let (auth, body) = (auth.to_owned(), body.to_owned());
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            http.send("POST", &url, &headers, body).await
        }
    };
    assert_eq!(resolve(&clerk, id, "{}").await.status, 403);
    assert_eq!(resolve(&ops, id + 1000, "{}").await.status, 404);
    let bad = resolve(&ops, id, r#"{"note": 3}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = resolve(&ops, id, r#"{"verdict": "ok"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    // The body is read as a tool's is: a NUL is 400 (it was once a 500
    // from the database), a key twice 400, a body that is not JSON by
    // its Content-Type 415.
    let bad = resolve(&ops, id, r#"{"note": "a\u0000b"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.body["code"], "invalid_input", "{}", bad.text);
    let bad = resolve(&ops, id, r#"{"note": "a", "note": "b"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.body["code"], "invalid_json", "{}", bad.text);
    let plain = http
        .send(
            "POST",
            &format!("{base}/reviews/{id}/resolve"),
            &[
                ("authorization", ops.as_str()),
                ("content-type", "text/plain"),
            ],
            r#"{"note": "x"}"#,
        )
        .await;
    assert_eq!(plain.status, 415, "{}", plain.text);
    let get_resolve = http
        .send(
            "GET",
            &format!("{base}/reviews/{id}/resolve"),
            &[("authorization", ops.as_str())],
            "",
        )
        .await;
    assert_eq!(get_resolve.status, 405);
    let done = resolve(&ops, id, r#"{"note": "called the client: legitimate"}"#).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["status"], "resolved");
    assert_eq!(done.body["resolvedBy"], "olga");
    assert_eq!(done.body["note"], "called the client: legitimate");
    let twice = resolve(&ops, id, "").await;
    assert_eq!(twice.status, 409, "{}", twice.text);
    assert!(twice.body["detail"].as_str().unwrap().contains("olga"));
    let open = get(Some(&ops), "").await;
    assert_eq!(open.body["reviews"], json!([]));
    let resolved = get(Some(&ops), "?status=resolved").await;
    assert_eq!(resolved.body["reviews"][0]["id"], id);
    let resolution = done.headers["x-request-id"].clone();
    let entry = chained_entry(&db, "review", &resolution).await;
    assert_eq!(entry["subject"], "olga");
    assert_eq!(entry["review"]["id"], id);
    assert_eq!(entry["review"]["note"], "called the client: legitimate");
    // One item for the escalated call, none for the replay or the small one.
    let n: i64 = db
        .query_one("SELECT count(*) FROM sinew_reviews", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// API keys: made by `sinew keys create` (shown once, stored hashed), a
/// call with one runs as `key:<id>` with the key's roles and claims (a
/// tenant here) and is audited so; unknown, expired and revoked keys are
/// 401, a revocation within the cache's 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_call_as_their_id_until_revoked() {
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let scenario: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("tests/scenarios/tenants-claim-scopes-every-read-and-write.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let path = data.path().join("tenants.json");
    std::fs::write(&path, scenario["spec"].to_string()).unwrap();
    let server = Proc::start(SINEW, &path, &[("DATABASE_URL", url.as_str())], data.path());
    let base = &server.base;
    let keys = |args: &[&str]| {
        let out = std::process::Command::new(SINEW)
            .arg("keys")
            .args(args)
            .args(["--database-url", url.as_str()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = keys(&[
        "create",
        "--name",
        "billing sync",
        "--roles",
        "member",
        "--claim",
        "org_id=acme",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let made: Value = serde_json::from_str(out.trim()).unwrap();
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    assert!(key.starts_with(&format!("sinew_{id}_")));
    let (code, _, err) = keys(&[
        "create",
        "--name",
        "x",
        "--roles",
        "member",
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 2, "an error");
    assert!(err.contains("in the past"), "{err}");
    let db = connect_url(&url).await;
    let stored: String = db
        .query_one("SELECT hash FROM sinew_keys WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(
        !stored.contains(key) && stored.len() == 64,
        "only a hash is stored"
    );

    let http = Http::default();
    let bearer = format!("Bearer {key}");
    let create = |auth: String, name: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/projects"));
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("idempotency-key", name),
            ];
            http.send("POST", &url, &headers, json!({"name": name}).to_string())
                .await
        }
    };
    let made = create(bearer.clone(), "Synced").await;
    assert_eq!(made.status, 201, "{}", made.text);
    assert_eq!(made.body["org"], "acme", "the key's claim is its tenant");
    let execution = made.headers["x-request-id"].clone();
    let entry = chained_entry(&db, "final", &execution).await;
    assert_eq!(entry["subject"], format!("key:{id}"));
    assert_eq!(entry["roles"], json!(["member"]));
    // Another tenant's user does not see the key's project.
    let mut extra = serde_json::Map::new();
    extra.insert("org_id".into(), json!("globex"));
    let bob = sinew_tests::pg::mint(sinew_tests::pg::SECRET, "bob", &["member"], &extra);
    let (s, listed) = call(&http, "GET", &format!("{base}/projects"), &bob, &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(listed["projects"], json!([]));
    let (s, listed) = call(&http, "GET", &format!("{base}/projects"), key, &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(listed["projects"][0]["name"], "Synced");

    // Unknown, tampered and expired keys.
    let tampered = format!("Bearer {}x", key);
    assert_eq!(create(tampered, "t").await.status, 401);
    let unknown = create(format!("Bearer sinew_{id}_nope"), "u").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.body["detail"], "the API key is not valid");
    let (code, out, err) = keys(&[
        "create",
        "--name",
        "short",
        "--roles",
        "member",
        "--expires",
        "1h",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let short: Value = serde_json::from_str(out.trim()).unwrap();
    db.execute(
        "UPDATE sinew_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
        &[&short["id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    let expired = create(format!("Bearer {}", short["key"].as_str().unwrap()), "e").await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["detail"], "the API key has expired");

    // Revoked: refused within the cache's time.
    let (code, out, _) = keys(&["revoke", id]);
    assert_eq!(code, 0);
    assert!(out.contains("revoked"));
    assert_eq!(keys(&["revoke", id]).0, 1, "revoking twice");
    let started = Instant::now();
    loop {
        let r = create(bearer.clone(), "after").await;
        if r.status == 401 {
            assert_eq!(r.body["detail"], "the API key was revoked");
            break;
        }
        assert_eq!(r.status, 201);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still accepted 8 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, out, _) = keys(&["list", "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let revoked = lines.iter().find(|l| l["id"] == id).unwrap();
    assert_eq!(revoked["name"], "billing sync");
    assert_eq!(revoked["claims"], json!({"org_id": "acme"}));
    assert!(revoked["revoked"].is_string());
    assert!(!out.contains(key), "list never shows a key");

    // A key that cannot be checked (its table is gone for a moment) is a
    // 503 whose body names no storage error; the audit entry has it.
    db.batch_execute("ALTER TABLE sinew_keys RENAME TO sinew_keys_away")
        .await
        .unwrap();
    let unchecked = create(format!("Bearer sinew_{id}_unseen"), "n").await;
    db.batch_execute("ALTER TABLE sinew_keys_away RENAME TO sinew_keys")
        .await
        .unwrap();
    assert_eq!(unchecked.status, 503, "{}", unchecked.text);
    assert_eq!(unchecked.body["code"], "unavailable");
    assert_eq!(
        unchecked.body["detail"],
        "the API key could not be checked: the database is unavailable; retry later"
    );
    for internal in ["sinew_keys", "db error", "relation", "storage"] {
        assert!(!unchecked.text.contains(internal), "{}", unchecked.text);
    }
    let execution = unchecked.headers["x-request-id"].clone();
    let entry = chained_entry(&db, "final", &execution).await;
    assert!(
        entry["internal"]
            .as_str()
            .is_some_and(|i| i.contains("sinew_keys")),
        "{entry}"
    );
}

/// Traces and metrics: with OTLP configured by the standard variables,
/// every request's spans (a child of the caller's `traceparent`:
/// authentication, the guest's execution, each storage statement, each
/// external attempt, which carries the trace on) reach an OTLP receiver
/// on loopback, decoded here; the log line names the trace; metrics are
/// served in Prometheus' text format (read by a parser of its own) and
/// pushed with OTLP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_their_receivers() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use sinew_tests::pg::Recorder;
    let collector = Recorder::start(Vec::new()).await;
    let provider = Recorder::start(vec![(
        "POST /charge",
        vec![sinew_tests::pg::Canned::json(
            200,
            json!({"id": "ch_1", "status": "succeeded"}),
        )],
    )])
    .await;
    let pg = Cluster::start();
    let url = pg.url("postgres");
    let data = tempfile::tempdir().unwrap();
    let spec = root().join("specs/examples/shop.json");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SINEW_EXTERNAL_PAYMENTS_URL", provider.base.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_SERVICE_NAME", "shop-test"),
        ("SINEW_METRICS_LISTEN", "127.0.0.1:0"),
        ("SINEW_METRICS_PATH", "/internal/metrics"),
        ("GOOGLE_CLOUD_PROJECT", "demo"),
    ];
    let server = Proc::start(SINEW, &spec, &env, data.path());
    let base = &server.base;
    let metrics_url = {
        let line = server
            .line("metrics served at http://")
            .expect("the metrics line");
        let at = line.find("http://").unwrap();
        line[at..].split('"').next().unwrap().to_owned()
    };
    let http = Http::default();
    let staff = token("sam", &["staff"]);
    let (s, product) = call(
        &http,
        "POST",
        &format!("{base}/products"),
        &staff,
        &json!({"sku": "TEA", "name": "Green tea", "price_cents": 450, "stock": 10}),
    )
    .await;
    assert_eq!(s, 201, "{product}");
    let product_id = product["product"].as_str().unwrap().to_owned();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let alice = format!("Bearer {}", token("alice", &["customer"]));
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let placed = http
        .send(
            "POST",
            &format!("{base}/orders"),
            &[
                ("authorization", alice.as_str()),
                ("content-type", "application/json"),
                ("idempotency-key", "order-1"),
                ("traceparent", traceparent.as_str()),
            ],
            json!({"product": product_id, "quantity": 2}).to_string(),
        )
        .await;
    assert_eq!(placed.status, 200, "{}", placed.text);
    let execution = placed.headers["x-request-id"].clone();

    // The spans, as the receiver decodes them.
    let started = Instant::now();
    let spans = loop {
        let spans: Vec<_> = collector
            .requests()
            .iter()
            .filter(|r| r.target == "/v1/traces")
            .flat_map(|r| {
                assert_eq!(r.headers["content-type"], "application/x-protobuf");
                ExportTraceServiceRequest::decode(r.bytes.as_slice())
                    .expect("an OTLP trace export")
                    .resource_spans
            })
            .flat_map(|rs| {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|a| a.key == "service.name")
                    .map(|a| format!("{:?}", a.value));
                assert!(service.unwrap_or_default().contains("shop-test"));
                rs.scope_spans.into_iter().flat_map(|ss| ss.spans)
            })
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        if spans
            .iter()
            .any(|s| s.name.starts_with("POST payments.charge"))
            && spans.iter().any(|s| s.name == "place_order")
        {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "spans of the trace so far: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_name = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name}: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| format!("{:?}", a.value))
            .unwrap_or_default()
    };
    let request = by_name("place_order");
    assert_eq!(
        hex(&request.parent_span_id),
        parent,
        "a child of the caller's span"
    );
    assert!(attr(request, "http.response.status_code").contains("200"));
    assert!(attr(request, "sinew.execution").contains(&execution));
    let auth = by_name("authenticate");
    assert_eq!(auth.parent_span_id, request.span_id);
    let execute = by_name("execute place_order");
    assert_eq!(execute.parent_span_id, request.span_id);
    for name in [
        "SELECT product",
        "INSERT order",
        "COMMIT",
        "INSERT sinew_idempotency",
    ] {
        let s = by_name(name);
        assert_eq!(
            s.parent_span_id, execute.span_id,
            "{name} under the execution"
        );
        assert!(attr(s, "db.system.name").contains("postgresql"));
    }
    let attempt = spans
        .iter()
        .find(|s| s.name == "POST payments.charge")
        .unwrap();
    assert_eq!(attempt.parent_span_id, execute.span_id);
    // No value of the request is in any span.
    for s in &spans {
        for a in &s.attributes {
            let v = format!("{:?}", a.value);
            assert!(!v.contains(&product_id), "{} carries {v}", s.name);
        }
    }
    // The external got the trace, as a child of the attempt's span.
    let charge = provider
        .requests()
        .into_iter()
        .find(|r| r.target == "/charge")
        .unwrap();
    assert_eq!(
        charge.headers["traceparent"],
        format!("00-{trace_id}-{}-01", hex(&attempt.span_id))
    );
    // The log line links to the trace (written as the answer goes out:
    // read once it is there).
    let started = Instant::now();
    let line = loop {
        if let Some(l) = server.line(&format!("\"execution\":\"{execution}\"")) {
            break l;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line for {execution}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        line["logging.googleapis.com/trace"],
        format!("projects/demo/traces/{trace_id}")
    );
    assert_eq!(line["logging.googleapis.com/spanId"], hex(&request.span_id));

    // A name no tool has is counted under `-`: the label's values stay
    // the spec's tools, whatever callers send.
    let unknown = http
        .send(
            "POST",
            &format!("{}/tools/no_such_tool_xyz", server.base),
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    // Prometheus: the text, read by a parser.
    let text = http.send("GET", &metrics_url, &[], "").await;
    assert!(!text.text.contains("no_such_tool_xyz"), "{}", text.text);
    assert_eq!(text.status, 200);
    assert!(text.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let lines = text.text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    };
    match value(
        "sinew_requests_total",
        &[("tool", "place_order"), ("status", "200")],
    ) {
        Some(prometheus_parse::Value::Counter(n)) => assert_eq!(n, 1.0),
        other => panic!("sinew_requests_total: {other:?}\n{}", text.text),
    }
    match value("sinew_requests_total", &[("tool", "-"), ("status", "404")]) {
        Some(prometheus_parse::Value::Counter(n)) => assert!(n >= 1.0),
        other => panic!("sinew_requests_total for `-`: {other:?}\n{}", text.text),
    }
    match value(
        "sinew_request_duration_seconds",
        &[("tool", "create_product"), ("status", "201")],
    ) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            assert_eq!(buckets.last().unwrap().count, 1.0, "{}", text.text)
        }
        other => panic!("sinew_request_duration_seconds: {other:?}\n{}", text.text),
    }
    match value(
        "sinew_external_attempts_total",
        &[("service", "payments"), ("operation", "charge")],
    ) {
        Some(prometheus_parse::Value::Counter(n)) => assert_eq!(n, 1.0),
        other => panic!("sinew_external_attempts_total: {other:?}\n{}", text.text),
    }
    match value("sinew_db_pool_max", &[]) {
        Some(prometheus_parse::Value::Gauge(n)) => assert_eq!(n, 32.0),
        other => panic!("sinew_db_pool_max: {other:?}\n{}", text.text),
    }
    for gauge in [
        "sinew_db_pool_in_use",
        "sinew_db_pool_waiting",
        "sinew_instances_idle",
        "sinew_outbox_pending",
        "sinew_audit_queued",
        "sinew_audit_lag_milliseconds",
    ] {
        assert!(value(gauge, &[]).is_some(), "{gauge}:\n{}", text.text);
    }
    // The main port serves them at `--metrics-path` only.
    let public = http.send("GET", &format!("{base}/metrics"), &[], "").await;
    assert_eq!(public.status, 404);
    let at_path = http
        .send("GET", &format!("{base}/internal/metrics"), &[], "")
        .await;
    assert_eq!(at_path.status, 200, "{}", at_path.text);
    assert!(at_path.text.contains("sinew_requests_total"));
    // Every answer carries a request id of its own, the metrics
    // listener's too (they were once `-`).
    let mut ids = std::collections::HashSet::new();
    for (method, url, status) in [
        ("POST", format!("{base}/internal/metrics"), 405),
        ("POST", metrics_url.clone(), 405),
        ("GET", metrics_url.replace("/metrics", "/other"), 404),
    ] {
        let r = http.send(method, &url, &[], "").await;
        assert_eq!(r.status, status, "{method} {url}: {}", r.text);
        if status == 405 {
            assert_eq!(r.headers["allow"], "GET, HEAD", "{method} {url}");
        }
        let id = r.headers["x-request-id"].clone();
        assert_eq!(id.len(), 36, "{method} {url}: {id}");
        assert_eq!(
            r.body["instance"],
            format!("urn:sinew:execution:{id}"),
            "{method} {url}"
        );
        assert!(ids.insert(id), "{method} {url}: an id seen before");
    }

    // OTLP metrics: pushed too.
    let started = Instant::now();
    loop {
        let names: Vec<String> = collector
            .requests()
            .iter()
            .filter(|r| r.target == "/v1/metrics")
            .flat_map(|r| {
                ExportMetricsServiceRequest::decode(r.bytes.as_slice())
                    .expect("an OTLP metrics export")
                    .resource_metrics
            })
            .flat_map(|rm| rm.scope_metrics)
            .flat_map(|sm| sm.metrics)
            .map(|m| m.name)
            .collect();
        if names.iter().any(|n| n == "sinew.requests") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit entry of `kind` of execution `execution`, once what is
/// queued is chained.
async fn chained_entry(db: &tokio_postgres::Client, kind: &str, execution: &str) -> Value {
    sinew_host::pg::sequencer::catch_up(db).await.unwrap();
    let row = db
        .query_one(
            "SELECT entry FROM sinew_audit WHERE kind = $1 AND execution = $2",
            &[&kind, &execution],
        )
        .await
        .unwrap_or_else(|e| panic!("no {kind} entry of {execution}: {e}"));
    serde_json::from_str(row.get::<_, &str>(0)).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
