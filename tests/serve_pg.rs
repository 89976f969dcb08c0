//! `sinew serve` on a real Postgres, turned against: bad bodies, bad
//! tokens, other people's rows, a failing payment provider, killed
//! connections and a restarted database. Each answer must be typed, nothing
//! partial may be committed, every routed request must leave one audit
//! entry, and service must come back without a restart.

use base64::Engine as _;
use serde_json::{Value, json};
use sinew_tests::pg::{Cluster, Fake, Http, Options, Reply, SECRET, Server, connect_url, token};
use sinew_tests::root;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sinew-tests";

fn claims(sub: &str, roles: &[&str]) -> serde_json::Map<String, Value> {
    let now = sinew_host::jwt::now_secs();
    let mut m = serde_json::Map::new();
    m.insert("sub".into(), json!(sub));
    m.insert("roles".into(), json!(roles));
    m.insert("iss".into(), json!(ISSUER));
    m.insert("aud".into(), json!(AUDIENCE));
    m.insert("iat".into(), json!(now));
    m.insert("exp".into(), json!(now + 600));
    m
}

fn hs256(c: &serde_json::Map<String, Value>, key: &[u8], kid: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        &Value::Object(c.clone()),
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

fn rs256(c: &serde_json::Map<String, Value>) -> String {
    let pem = std::fs::read(root().join("tests/fixtures/jwt/rsa-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa-1".into());
    jsonwebtoken::encode(
        &header,
        &Value::Object(c.clone()),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn unsigned(c: &serde_json::Map<String, Value>) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&Value::Object(c.clone()))
    )
}

/// Chains what the servers queued (their sequencers do shortly after each
/// commit; a test reads the chain at once).
async fn chained(db: &tokio_postgres::Client) {
    sinew_host::pg::sequencer::catch_up(db).await.unwrap();
}

async fn audit_finals(url: &str) -> i64 {
    let db = connect_url(url).await;
    chained(&db).await;
    db.query_one("SELECT count(*) FROM sinew_audit WHERE kind = 'final'", &[])
        .await
        .unwrap()
        .get(0)
}

/// The newest final audit entry.
async fn last_final_entry(db: &tokio_postgres::Client) -> Value {
    chained(db).await;
    let entry: String = db
        .query_one(
            "SELECT entry FROM sinew_audit WHERE kind = 'final' ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_str(&entry).unwrap()
}

async fn verify(url: &str) -> Result<u64, String> {
    let client = connect_url(url).await;
    chained(&client).await;
    sinew_host::pg::verify_audit(&client).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_answers_and_change_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let fake = Fake::start(HashMap::new(), true).await;
    let jwks = root().join("tests/fixtures/jwt/jwks.json");
    let options = Options {
        externals: vec![("payments".into(), fake.url("payments"))],
        max_body: Some(4096),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        jwks: Some(jwks.to_string_lossy().into_owned()),
        studio: true,
        ..Options::default()
    };
    let server = Server::start(&root().join("specs/examples/shop.json"), &url, &options).await;
    let http = Http::default();
    let base = &server.base;
    let staff = hs256(&claims("sam", &["staff"]), SECRET.as_bytes(), None);
    let alice = hs256(&claims("alice", &["customer"]), SECRET.as_bytes(), None);
    let bob = hs256(&claims("bob", &["customer"]), SECRET.as_bytes(), None);
    let mut routed = 0i64;

    // Setup: a product with 10 in stock, one order of alice's.
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&staff),
            &json!({"sku": "TEA", "name": "Tea", "price_cents": 450}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let product = r.body["product"].as_str().unwrap().to_owned();
    let r = http
        .json(
            "POST",
            &format!("{base}/products/{product}/restock"),
            Some(&staff),
            &json!({"quantity": 10}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let r = http
        .json(
            "POST",
            &format!("{base}/orders"),
            Some(&alice),
            &json!({"product": product, "quantity": 2}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let order = r.body["order"].as_str().unwrap().to_owned();
    routed += 3;

    let orders = format!("{base}/orders");
    let body = json!({"product": product, "quantity": 1}).to_string();
    let auth = format!("Bearer {alice}");
    type Case<'a> = (&'a str, u16, &'a str, Vec<(&'a str, String)>, String);
    let cases: Vec<Case> = vec![
        (
            "invalid JSON",
            400,
            "invalid_json",
            vec![("content-type", "application/json".into())],
            "{\"product\": ".into(),
        ),
        (
            "wrong content type",
            415,
            "unsupported_media_type",
            vec![("content-type", "text/plain".into())],
            body.clone(),
        ),
        (
            "oversize body",
            413,
            "too_large",
            vec![("content-type", "application/json".into())],
            format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)),
        ),
        (
            "deep body",
            400,
            "invalid_json",
            vec![("content-type", "application/json".into())],
            format!("{}{}", "[".repeat(300), "]".repeat(300)),
        ),
        (
            "unknown field",
            400,
            "invalid_input",
            vec![("content-type", "application/json".into())],
            json!({"product": product, "quantity": 1, "discount": 100}).to_string(),
        ),
        (
            "no token",
            401,
            "unauthenticated",
            vec![("content-type", "application/json".into())],
            body.clone(),
        ),
    ];
    for (what, status, code, mut headers, body) in cases {
        if what != "no token" {
            headers.push(("authorization", auth.clone()));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http.send("POST", &orders, &h, body).await;
        routed += 1;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        assert_eq!(r.body["code"], code, "{what}: {}", r.text);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{what}"
        );
    }

    // Tokens.
    let now = sinew_host::jwt::now_secs();
    let with = |k: &str, v: Value| {
        let mut c = claims("alice", &["customer"]);
        c.insert(k.into(), v);
        c
    };
    let without = |k: &str| {
        let mut c = claims("alice", &["customer"]);
        c.remove(k);
        c
    };
    let public_pem = std::fs::read(root().join("tests/fixtures/jwt/rsa-public.pem")).unwrap();
    let bad_tokens: Vec<(&str, String)> = vec![
        ("alg none", unsigned(&claims("alice", &["customer"]))),
        (
            "HS256 signed with the RSA public key",
            hs256(
                &claims("alice", &["customer"]),
                &public_pem,
                Some("test-rsa-1"),
            ),
        ),
        (
            "HS256 with another secret",
            hs256(&claims("alice", &["customer"]), b"not-the-secret", None),
        ),
        (
            "expired",
            hs256(&with("exp", json!(now - 120)), SECRET.as_bytes(), None),
        ),
        (
            "not yet valid",
            hs256(&with("nbf", json!(now + 120)), SECRET.as_bytes(), None),
        ),
        (
            "wrong audience",
            hs256(&with("aud", json!("someone-else")), SECRET.as_bytes(), None),
        ),
        (
            "no audience",
            hs256(&without("aud"), SECRET.as_bytes(), None),
        ),
        (
            "wrong issuer",
            hs256(
                &with("iss", json!("https://evil.test")),
                SECRET.as_bytes(),
                None,
            ),
        ),
        ("no issuer", hs256(&without("iss"), SECRET.as_bytes(), None)),
        ("no expiry", hs256(&without("exp"), SECRET.as_bytes(), None)),
        (
            "roles not a list",
            hs256(&with("roles", json!("customer")), SECRET.as_bytes(), None),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (what, t) in &bad_tokens {
        let r = http
            .json(
                "POST",
                &orders,
                Some(t),
                &json!({"product": product, "quantity": 1}),
            )
            .await;
        routed += 1;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.body["code"], "unauthenticated", "{what}");
        assert_eq!(
            r.headers.get("www-authenticate").map(String::as_str),
            Some("Bearer"),
            "{what}"
        );
    }
    // Leeway: 20 s past expiry is still accepted.
    let r = http
        .json(
            "GET",
            &format!("{base}/orders/{order}"),
            Some(&hs256(
                &with("exp", json!(now - 20)),
                SECRET.as_bytes(),
                None,
            )),
            &json!({}),
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 200, "leeway: {}", r.text);
    // An RS256 token from the JWKS is accepted.
    let r = http
        .json(
            "GET",
            &format!("{base}/orders/{order}"),
            Some(&rs256(&claims("alice", &["customer"]))),
            &json!({}),
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 200, "RS256: {}", r.text);

    // Roles and ownership.
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&alice),
            &json!({"sku": "X", "name": "X", "price_cents": 1}),
        )
        .await;
    routed += 1;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("forbidden")),
        "{}",
        r.text
    );
    let r = http
        .json(
            "GET",
            &format!("{base}/orders/{order}"),
            Some(&bob),
            &json!({}),
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 404, "bob reads alice's order: {}", r.text);
    // A trailing `/` is no segment, by name as on the spec's routes.
    let r = http
        .json(
            "POST",
            &format!("{base}/tools/get_order/"),
            Some(&alice),
            &json!({"id": order}),
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 200, "alice reads her order by name: {}", r.text);
    let r = http
        .json(
            "POST",
            &format!("{base}/orders/{order}/cancel"),
            Some(&bob),
            &json!({}),
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 404, "bob cancels alice's order: {}", r.text);

    // Not routed: no audit entry.
    let r = http.json("DELETE", &orders, Some(&alice), &json!({})).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
    let r = http
        .json("GET", &format!("{base}/nowhere"), Some(&alice), &json!({}))
        .await;
    assert_eq!(r.status, 404);
    // The server's own paths: a known path with the wrong method is 405
    // with `Allow` (they were 404).
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let r = http.send(method, &format!("{base}{path}"), &[], "").await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
            assert_eq!(r.headers["allow"], "GET, HEAD", "{method} {path}");
            assert_eq!(r.body["code"], "method_not_allowed", "{}", r.text);
        }
        let r = http.send("HEAD", &format!("{base}{path}"), &[], "").await;
        assert_eq!(r.status, 200, "HEAD {path}");
    }
    let r = http
        .send("GET", &format!("{base}/openapi.json"), &[], "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(
        r.body["paths"]["/orders/{id}"]["get"].is_object(),
        "{}",
        r.text
    );
    assert!(r.body["paths"]["/tools/place_order"]["post"].is_object());
    let doc = r.body;

    // Answered before any tool runs (no audit entry), still with a request
    // id: the problem's `instance` names the `X-Request-Id`.
    let mut ids = std::collections::HashSet::new();
    for (method, url, status) in [
        ("DELETE", orders.clone(), 405),
        ("GET", format!("{base}/nowhere"), 404),
        ("GET", format!("{base}/studio/nothing.js"), 404),
        ("GET", format!("{base}/healthz"), 200),
        ("GET", format!("{base}/openapi.json"), 200),
    ] {
        let r = http.send(method, &url, &[], "").await;
        assert_eq!(r.status, status, "{method} {url}: {}", r.text);
        let id = r
            .headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{method} {url}: no X-Request-Id"));
        assert!(ids.insert(id.clone()), "{method} {url}: {id} again");
        if status >= 400 {
            assert_eq!(
                r.body["instance"],
                format!("urn:sinew:execution:{id}"),
                "{method} {url}"
            );
        }
    }

    // The Idempotency-Key is what the document's pattern says: 1 to 255
    // visible ASCII characters. Anything else is refused before the tool
    // runs (audited).
    let key = &doc["paths"]["/orders"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap()["schema"];
    assert_eq!(key["pattern"], "^[\\x21-\\x7E]{1,255}$", "{key}");
    let long = "k".repeat(256);
    for bad in ["a b", "", long.as_str()] {
        let r = http
            .send(
                "POST",
                &orders,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                    ("idempotency-key", bad),
                ],
                body.clone(),
            )
            .await;
        routed += 1;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("invalid_idempotency_key")),
            "{bad:?}: {}",
            r.text
        );
    }

    // A body the document does not require may be left out (it is read as
    // `{}`): cancel_order's `id` is the path's. A body it requires is
    // refused when empty.
    let cancel = &doc["paths"]["/orders/{id}/cancel"]["post"]["requestBody"];
    assert_eq!(cancel["required"], false, "{cancel}");
    let bob_auth = format!("Bearer {bob}");
    let r = http
        .send(
            "POST",
            &format!("{base}/orders/{order}/cancel"),
            &[("authorization", &bob_auth), ("idempotency-key", "bob-1")],
            "",
        )
        .await;
    routed += 1;
    assert_eq!(r.status, 404, "bob cancels alice's order: {}", r.text);
    assert_eq!(
        doc["paths"]["/orders"]["post"]["requestBody"]["required"],
        true
    );
    let r = http
        .send(
            "POST",
            &orders,
            &[("authorization", &auth), ("idempotency-key", "empty-1")],
            "",
        )
        .await;
    routed += 1;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_input")),
        "{}",
        r.text
    );

    // The browser preview of the served spec (with `--studio`), not a
    // tool: no audit entry.
    let r = http.send("GET", &format!("{base}/studio"), &[], "").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "/studio/");
    let r = http.send("GET", &format!("{base}/studio/"), &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/html"));
    assert!(r.text.contains("data-core-module"), "{}", r.text);
    let r = http
        .send("GET", &format!("{base}/studio/manifest.json"), &[], "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["startup"]["text"].as_str(),
        Some(
            std::fs::read_to_string(root().join("specs/examples/shop.json"))
                .unwrap()
                .as_str()
        )
    );
    let r = http
        .send(
            "GET",
            &format!("{base}/studio/sinew-core/component/sinew.core.wasm"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.headers["content-type"], "application/wasm");
    let r = http
        .send("GET", &format!("{base}/studio/nothing.js"), &[], "")
        .await;
    assert_eq!(r.status, 404);
    let r = http.send("POST", &format!("{base}/studio/"), &[], "").await;
    assert_eq!(r.status, 405, "the studio only answers GET");
    assert_eq!(r.headers["allow"], "GET, HEAD");

    // Nothing partial: one order of 2, stock 8.
    let db = connect_url(&url).await;
    let stock: i64 = db
        .query_one("SELECT stock FROM product", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stock, 8);
    let n: i64 = db
        .query_one("SELECT count(*) FROM \"order\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        audit_finals(&url).await,
        routed,
        "one final audit entry per routed request"
    );
    assert_eq!(verify(&url).await, Ok(routed as u64));

    // The audit log refuses changes, even from the table's owner; its
    // queue refuses changes too (a row leaves it only by being chained).
    db.batch_execute(
        "INSERT INTO sinew_audit_queue (execution, kind, entry, digest) VALUES ('x', 'final', '{}', 'd')",
    )
    .await
    .unwrap();
    for sql in [
        "UPDATE sinew_audit SET kind = 'x' WHERE seq = 1",
        "DELETE FROM sinew_audit WHERE seq = 1",
        "TRUNCATE sinew_audit",
        // With a row of its own in the same statement batch (one implicit
        // transaction): the sequencer may already have chained the row
        // inserted above, and an UPDATE of no row fires no row trigger.
        "INSERT INTO sinew_audit_queue (execution, kind, entry, digest) VALUES ('y', 'final', '{}', 'd'); \
         UPDATE sinew_audit_queue SET entry = '{\"a\":1}'",
        "TRUNCATE sinew_audit_queue",
    ] {
        let e = db.batch_execute(sql).await.expect_err(sql);
        assert!(
            e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
            "{sql}: {e:?}"
        );
    }
    // A superuser who disables the triggers is caught by the chain.
    db.batch_execute(
        "ALTER TABLE sinew_audit DISABLE TRIGGER USER; \
         UPDATE sinew_audit SET entry = replace(entry, '\"outcome\":\"ok\"', '\"outcome\":\"rejected\"') WHERE seq = 2; \
         ALTER TABLE sinew_audit ENABLE TRIGGER USER;",
    )
    .await
    .unwrap();
    let broken = verify(&url).await.unwrap_err();
    assert!(broken.starts_with("audit entry 2:"), "{broken}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_failures_decline_retry_compensate_and_time_out() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let script = HashMap::from([(
        "payments.charge".to_owned(),
        vec![
            // 1: declined.
            Reply::Declined(json!({"reason": "card_declined"})),
            // 2: fails twice, then succeeds (3 attempts).
            Reply::Failed("busy".into()),
            Reply::Failed("busy".into()),
            Reply::Ok(json!({"id": "ch_2", "status": "succeeded"})),
            // 3: succeeds, but the order cannot be written: refunded.
            Reply::Ok(json!({"id": "ch_3", "status": "succeeded"})),
            // 4: hangs: every attempt times out, past the tool's deadline.
            Reply::Hang,
            Reply::Hang,
            Reply::Hang,
        ],
    )]);
    let fake = Fake::start(script, true).await;
    let options = Options {
        externals: vec![("payments".into(), fake.url("payments"))],
        ..Options::default()
    };
    let server = Server::start(&root().join("specs/examples/shop.json"), &url, &options).await;
    let http = Http::default();
    let base = &server.base;
    let staff = token("sam", &["staff"]);
    let alice = token("alice", &["customer"]);
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&staff),
            &json!({"sku": "TEA", "name": "Tea", "price_cents": 450}),
        )
        .await;
    let product = r.body["product"].as_str().unwrap().to_owned();
    http.json(
        "POST",
        &format!("{base}/products/{product}/restock"),
        Some(&staff),
        &json!({"quantity": 3}),
    )
    .await;
    let order = |q: i64| json!({"product": product, "quantity": q});

    let r = http
        .json("POST", &format!("{base}/orders"), Some(&alice), &order(1))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (402, Some("payment_declined")),
        "{}",
        r.text
    );

    let r = http
        .json("POST", &format!("{base}/orders"), Some(&alice), &order(1))
        .await;
    assert!(r.status < 300, "after two failures: {}", r.text);
    let db = connect_url(&url).await;
    let entry = last_final_entry(&db).await;
    assert_eq!(entry["calls"][0]["attempts"], 3, "{entry}");
    let seen = fake.seen();
    let keys: Vec<_> = seen[1..4].iter().map(|s| s.2.clone()).collect();
    assert!(
        keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
        "one idempotency key for every attempt: {keys:?}"
    );
    assert_eq!(
        seen[1..4].iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // 5 ordered with 2 left: the charge is refunded, nothing is written.
    let r = http
        .json("POST", &format!("{base}/orders"), Some(&alice), &order(5))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(
        fake.seen().iter().any(|s| s.0 == "payments.refund"),
        "no refund: {:?}",
        fake.seen()
    );

    // A provider that never answers: the tool's 5 s deadline, rolled back.
    let started = Instant::now();
    let r = http
        .json("POST", &format!("{base}/orders"), Some(&alice), &order(1))
        .await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(8));
    let stock: i64 = db
        .query_one("SELECT stock FROM product", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stock, 2, "only the second order took stock");
    let n: i64 = db
        .query_one("SELECT count(*) FROM \"order\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(audit_finals(&url).await, 6);
    assert_eq!(verify(&url).await, Ok(6));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_survives_killed_connections_and_a_database_restart() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let server = Server::start(
        &root().join("specs/examples/shop.json"),
        &url,
        &Options::default(),
    )
    .await;
    let http = Http::default();
    let base = server.base.clone();
    let staff = token("sam", &["staff"]);
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&staff),
            &json!({"sku": "TEA", "name": "Tea", "price_cents": 450}),
        )
        .await;
    let product = r.body["product"].as_str().unwrap().to_owned();
    let restock = format!("{base}/products/{product}/restock");

    // Restocks from 8 clients while connections are killed under them.
    let stop = Instant::now() + Duration::from_secs(4);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, restock, staff) = (http.clone(), restock.clone(), staff.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < stop {
                let r = http
                    .json("POST", &restock, Some(&staff), &json!({"quantity": 1}))
                    .await;
                statuses.push((r.status, r.body["code"].as_str().map(str::to_owned)));
            }
            statuses
        }));
    }
    let admin = connect_url(&cluster.url("postgres")).await;
    let mut killed = 0;
    while Instant::now() < stop {
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'sinew' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        killed += rows.len();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    assert!(killed > 0, "no connection was killed");
    for (status, code) in &all {
        let fine = (200..300).contains(status)
            || (*status == 503 && code.as_deref() == Some("unavailable"))
            || *status == 409;
        assert!(
            fine,
            "answer {status} {code:?} while connections were killed"
        );
    }
    assert!(
        all.iter().any(|(s, _)| *s < 300),
        "nothing succeeded: {all:?}"
    );
    // After the storm, service is back at once.
    let r = http
        .json("POST", &restock, Some(&staff), &json!({"quantity": 1}))
        .await;
    assert!(r.status < 300, "{}", r.text);

    // Postgres restarts (immediate: like a crash) while serving.
    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        let r = http
            .json("POST", &restock, Some(&staff), &json!({"quantity": 1}))
            .await;
        if r.status < 300 {
            last = (r.status, r.text);
            break;
        }
        assert!(
            r.status == 503,
            "during the restart: {} {}",
            r.status,
            r.text
        );
        last = (r.status, r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.0 < 300, "service did not recover: {last:?}");

    // Stock equals the restocks the audit log says committed: nothing was
    // half-written, nothing committed without its entry.
    let db = connect_url(&url).await;
    chained(&db).await;
    let stock: i64 = db
        .query_one("SELECT stock FROM product", &[])
        .await
        .unwrap()
        .get(0);
    let committed: i64 = db
        .query_one(
            "SELECT count(*) FROM sinew_audit WHERE kind = 'final' \
             AND entry::jsonb->>'tool' = 'restock' AND entry::jsonb->>'outcome' = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stock, committed,
        "stock {stock} but {committed} audited restocks"
    );
    assert!(verify(&url).await.is_ok());
    server.stop().await;
}

/// A TLS server on loopback with a certificate of a private CA: serves the
/// JWKS fixture at `/jwks.json` and a payment provider under `/payments/`.
async fn tls_provider() -> (String, tempfile::TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let jwks = std::fs::read_to_string(root().join("tests/fixtures/jwt/jwks.json")).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = if req.uri().path() == "/jwks.json" {
                            jwks.clone()
                        } else {
                            json!({"id": "ch_tls", "status": "succeeded"}).to_string()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_and_externals_over_https() {
    let (base_tls, ca_dir) = tls_provider().await;
    let ca = ca_dir.path().join("ca.pem");
    // Untrusted without the CA.
    let plain = sinew_host::tls::client(None).unwrap();
    let err = sinew_host::tls::get(&plain, &format!("{base_tls}/jwks.json"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );

    let cluster = Cluster::start();
    let url = cluster.database().await;
    let options = Options {
        externals: vec![("payments".into(), format!("{base_tls}/payments"))],
        jwks: Some(format!("{base_tls}/jwks.json")),
        ca_file: Some(ca),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..Options::default()
    };
    let server = Server::start(&root().join("specs/examples/shop.json"), &url, &options).await;
    let http = Http::default();
    let base = &server.base;
    let staff = rs256(&claims("sam", &["staff"]));
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&staff),
            &json!({"sku": "TLS", "name": "Tea", "price_cents": 450}),
        )
        .await;
    assert!(
        r.status < 300,
        "RS256 token with a JWKS fetched over https: {}",
        r.text
    );
    let product = r.body["product"].as_str().unwrap().to_owned();
    http.json(
        "POST",
        &format!("{base}/products/{product}/restock"),
        Some(&staff),
        &json!({"quantity": 1}),
    )
    .await;
    let alice = rs256(&claims("alice", &["customer"]));
    let r = http
        .json(
            "POST",
            &format!("{base}/orders"),
            Some(&alice),
            &json!({"product": product, "quantity": 1}),
        )
        .await;
    assert!(r.status < 300, "charge over https: {}", r.text);
    let payment: String = connect_url(&url)
        .await
        .query_one("SELECT payment_id FROM \"order\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payment, "ch_tls");
    server.stop().await;
}

/// `--native` (for benchmarks) answers as the component does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_core_answers_like_the_component() {
    let cluster = Cluster::start();
    let mut answers = Vec::new();
    for native in [false, true] {
        let url = cluster.database().await;
        let options = Options {
            native,
            test_hooks: true,
            ..Options::default()
        };
        let server = Server::start(&root().join("specs/examples/bank.json"), &url, &options).await;
        let http = Http::default();
        let base = &server.base;
        let mut seen = Vec::new();
        let mut send = async |path: &str, who: (&str, &str), id: &str, body: Value| {
            let t = token(who.0, &[who.1]);
            let auth = format!("Bearer {t}");
            let r = http
                .send(
                    "POST",
                    &format!("{base}{path}"),
                    &[
                        ("content-type", "application/json"),
                        ("authorization", &auth),
                        ("x-sinew-test-request-id", id),
                        ("x-sinew-test-now", "2026-03-01T10:00:00Z"),
                        ("idempotency-key", id),
                    ],
                    body.to_string(),
                )
                .await;
            seen.push((r.status, r.body.clone()));
            r.body
        };
        let a = send(
            "/accounts",
            ("ann", "customer"),
            "r1",
            json!({"name": "a", "currency": "EUR"}),
        )
        .await;
        let b = send(
            "/accounts",
            ("ben", "customer"),
            "r2",
            json!({"name": "b", "currency": "EUR"}),
        )
        .await;
        let (a, b) = (
            a["account"].as_str().unwrap().to_owned(),
            b["account"].as_str().unwrap().to_owned(),
        );
        send(
            &format!("/accounts/{a}/deposits"),
            ("tess", "teller"),
            "r3",
            json!({"amount_cents": 500, "reference": "x"}),
        )
        .await;
        send(
            "/transfers",
            ("tess", "teller"),
            "r4",
            json!({"from_account": a, "to_account": b, "amount_cents": 200}),
        )
        .await;
        send(
            "/transfers",
            ("tess", "teller"),
            "r5",
            json!({"from_account": a, "to_account": b, "amount_cents": 900}),
        )
        .await;
        send(
            "/transfers",
            ("ben", "customer"),
            "r6",
            json!({"from_account": a, "to_account": b, "amount_cents": 1}),
        )
        .await;
        assert_eq!(verify(&url).await, Ok(6));
        answers.push(seen);
        server.stop().await;
    }
    assert_eq!(answers[0], answers[1]);
    let statuses: Vec<u16> = answers[0].iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        vec![201, 201, 201, 201, 422, 404],
        "{:?}",
        answers[0]
    );
}

/// Clients that hang up while their transfer waits for a lock: the
/// transfers still finish (committed and audited), and the pool is not
/// leaked — a pool of 8 serves the next request after 10 such hang-ups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_finish_when_their_clients_hang_up() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let server = Server::start(
        &root().join("specs/examples/bank.json"),
        &url,
        &Options::default(),
    )
    .await;
    let http = Http::default();
    let base = &server.base;
    let teller = token("tess", &["teller"]);
    let mut accounts = Vec::new();
    for who in ["ann", "ben"] {
        let r = http
            .json(
                "POST",
                &format!("{base}/accounts"),
                Some(&token(who, &["customer"])),
                &json!({"name": who, "currency": "EUR"}),
            )
            .await;
        accounts.push(r.body["account"].as_str().unwrap().to_owned());
    }
    let (a, b) = (accounts[0].clone(), accounts[1].clone());
    let r = http
        .json(
            "POST",
            &format!("{base}/accounts/{a}/deposits"),
            Some(&teller),
            &json!({"amount_cents": 1000, "reference": "x"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);

    // Hold account A's row so every transfer waits inside its transaction.
    let mut holder = connect_url(&url).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM account WHERE id = $1::text::uuid FOR UPDATE",
        &[&a],
    )
    .await
    .unwrap();
    let transfers = format!("{base}/transfers");
    let body = json!({"from_account": a, "to_account": b, "amount_cents": 10});
    for _ in 0..10 {
        let call = http.json("POST", &transfers, Some(&teller), &body);
        // The client gives up after 200 ms and closes its connection.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call)
                .await
                .is_err()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();

    // All ten finish on their own.
    let db = connect_url(&url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM sinew_audit WHERE entry::jsonb->>'tool' = 'transfer'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 10 transfers finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let balance: i64 = db
        .query_one(
            "SELECT balance FROM account WHERE id = $1::text::uuid",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 1000 - 10 * 10);
    // And the pool (8 connections) serves at once.
    let started = Instant::now();
    let r = http
        .json(
            "GET",
            &format!(
                "{base}/transfers/{}",
                "00000000-0000-4000-8000-000000000000"
            ),
            Some(&teller),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(verify(&url).await.is_ok());
    server.stop().await;
}

/// An idempotency key whose request never finished (its server died) is
/// in flight (409) for a while, then abandoned and usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_idempotency_claims_expire() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let server = Server::start(
        &root().join("specs/examples/bank.json"),
        &url,
        &Options::default(),
    )
    .await;
    let http = Http::default();
    let base = &server.base;
    let ann = token("ann", &["customer"]);
    let auth = format!("Bearer {ann}");
    let open = |key: &'static str| {
        let (http, url, auth) = (http.clone(), format!("{base}/accounts"), auth.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                    ("idempotency-key", key),
                ],
                json!({"name": "a", "currency": "EUR"}).to_string(),
            )
            .await
        }
    };
    let first = open("k1").await;
    assert_eq!(first.status, 201, "{}", first.text);
    // A claim left by a crashed server: in flight.
    let db = connect_url(&url).await;
    let scope: String = db
        .query_one("SELECT scope FROM sinew_idempotency WHERE key = 'k1'", &[])
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO sinew_idempotency (scope, key, fingerprint, claimed_at) \
         SELECT $1, 'k2', fingerprint, now() FROM sinew_idempotency WHERE key = 'k1'",
        &[&scope],
    )
    .await
    .unwrap();
    let r = open("k2").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("idempotency_in_flight")),
        "{}",
        r.text
    );
    // 16 minutes later it is abandoned: the request runs.
    db.execute(
        "UPDATE sinew_idempotency SET claimed_at = now() - interval '16 minutes' WHERE key = 'k2'",
        &[],
    )
    .await
    .unwrap();
    let r = open("k2").await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A replay of a finished key still answers the stored response.
    let again = open("k1").await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    server.stop().await;
}

/// A column of an entity's table that the spec does not have (a field
/// removed from the spec, or a column added by hand): `serve` and `migrate`
/// apply one rule. Rows can still be inserted without it (it is nullable,
/// or has a default): both keep it, with its data. It is NOT NULL without
/// a default (every insert would fail): both refuse, with the same words,
/// whether or not the schema was recorded as migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_migrate_agree_on_columns_the_spec_lacks() {
    use sinew_host::pg::migrate::{apply, plan};
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let path = root().join("specs/examples/shop.json");
    let loaded = sinew_core::spec::load(&std::fs::read_to_string(&path).unwrap());
    assert!(loaded.errors.is_empty());
    let shop = loaded.spec;
    let http = Http::default();
    let staff = token("sam", &["staff"]);
    let create = |server: &Server, sku: &str| {
        let (http, url) = (http.clone(), format!("{}/products", server.base));
        let auth = format!("Bearer {staff}");
        let body = json!({"sku": sku, "name": "Tea", "price_cents": 450}).to_string();
        let key = format!("create-{sku}");
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("authorization", auth.as_str()),
                ("idempotency-key", key.as_str()),
            ];
            http.send("POST", &url, &headers, body).await
        }
    };
    Server::start(&path, &url, &Options::default())
        .await
        .stop()
        .await;
    let mut db = connect_url(&url).await;
    db.batch_execute(
        "ALTER TABLE product ADD COLUMN legacy text; \
         ALTER TABLE product ADD COLUMN region text NOT NULL DEFAULT 'eu'; \
         ALTER TABLE product ADD COLUMN serial bigint GENERATED ALWAYS AS IDENTITY",
    )
    .await
    .unwrap();
    // Kept: migrate has nothing to refuse, and drops nothing even when
    // allowed to.
    for allow in [false, true] {
        let m = plan(Some(&db), &shop, allow).await.unwrap();
        assert!(m.destructive.is_empty(), "{:?}", m.destructive);
        assert!(!m.sql.contains("DROP COLUMN"), "{}", m.sql);
    }
    // Serve starts, recorded as migrated or not, and inserts rows.
    for (sku, forget) in [("A1", false), ("A2", true)] {
        if forget {
            db.batch_execute("DELETE FROM sinew_schema").await.unwrap();
        }
        let server = Server::start(&path, &url, &Options::default()).await;
        let r = create(&server, sku).await;
        assert!(r.status < 300, "{} {}", r.status, r.text);
        server.stop().await;
    }
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM product WHERE legacy IS NULL AND region = 'eu' AND serial > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 2);

    // NOT NULL without a default: refused by both, in the same words.
    db.batch_execute(
        "ALTER TABLE product ADD COLUMN code text NOT NULL DEFAULT 'x'; \
         ALTER TABLE product ALTER COLUMN code DROP DEFAULT",
    )
    .await
    .unwrap();
    let m = plan(Some(&db), &shop, false).await.unwrap();
    assert_eq!(m.destructive.len(), 1, "{:?}", m.destructive);
    let refusal = &m.destructive[0];
    assert!(refusal.contains("product.code"), "{refusal}");
    // Not recorded: the start plans, and refuses.
    let e = Server::try_start(&path, &url, &Options::default())
        .await
        .err()
        .expect("served a table whose inserts fail");
    assert!(e.contains(refusal.as_str()), "{e}");
    // Recorded (the column added after the last migration): the same.
    sinew_host::pg::migrate::record(&db, &shop).await.unwrap();
    assert!(sinew_host::pg::migrate::recorded(&db, &shop).await);
    let e = Server::try_start(&path, &url, &Options::default())
        .await
        .err()
        .expect("served a table whose inserts fail");
    assert!(e.contains(refusal.as_str()), "{e}");
    // Allowed, migrate drops that column, and only that one.
    let allowed = plan(Some(&db), &shop, true).await.unwrap();
    assert!(
        allowed
            .sql
            .contains("ALTER TABLE \"product\" DROP COLUMN \"code\";"),
        "{}",
        allowed.sql
    );
    assert_eq!(
        allowed.sql.matches("DROP COLUMN").count(),
        1,
        "{}",
        allowed.sql
    );
    apply(&mut db, &shop, &allowed).await.unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let r = create(&server, "A3").await;
    assert!(r.status < 300, "{} {}", r.status, r.text);
    server.stop().await;
}

/// Issue 14: what enters over HTTP (body, path, query) meets the contract's
/// input rules on Postgres: NUL characters and malformed formats are typed
/// 400s (never a 500 from Postgres or `timestamp()`), whole decimals are
/// integers, errors are bounded, an anonymous caller learns nothing of the
/// schema, and a missing required Idempotency-Key writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_edges_are_typed_and_change_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let server = Server::start(
        &root().join("specs/examples/shop.json"),
        &url,
        &Options::default(),
    )
    .await;
    let http = Http::default();
    let base = &server.base;
    let staff = format!("Bearer {}", token("sam", &["staff"]));
    let alice = format!("Bearer {}", token("alice", &["customer"]));
    let send = |method: &'static str,
                path: String,
                auth: Option<String>,
                key: Option<&'static str>,
                body: String| {
        let http = http.clone();
        async move {
            let mut h = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                h.push(("authorization", a.as_str()));
            }
            if let Some(k) = key {
                h.push(("idempotency-key", k));
            }
            http.send(method, &format!("{base}{path}"), &h, body).await
        }
    };
    let problem = |r: &sinew_tests::pg::Answer, status: u16, code: &str, pointer: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.body["code"], code, "{}", r.text);
        if let Some(p) = pointer {
            assert!(
                r.body["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["pointer"] == p)),
                "no error at {p}: {}",
                r.text
            );
        }
    };

    // NUL in the query, the body and a path parameter.
    let r = send(
        "GET",
        "/products?after=%00".into(),
        None,
        None,
        String::new(),
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/after"));
    let body = json!({"sku": "N\u{0}", "name": "Tea", "price_cents": 450}).to_string();
    let r = send(
        "POST",
        "/products".into(),
        Some(staff.clone()),
        Some("nul-1"),
        body,
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/sku"));
    // A key twice: which one a proxy in front read is not known.
    let r = send(
        "POST",
        "/products".into(),
        Some(staff.clone()),
        Some("dup-1"),
        r#"{"sku": "A-1", "sku": "B-2", "name": "Tea", "price_cents": 450}"#.into(),
    )
    .await;
    problem(&r, 400, "invalid_json", None);
    assert!(r.text.contains("duplicate key `sku`"), "{}", r.text);
    // A long key, a long query key and a long unknown path are quoted by
    // their first 40 characters, never whole.
    let long = "K".repeat(5000);
    let r = send(
        "POST",
        "/products".into(),
        Some(staff.clone()),
        Some("dup-2"),
        format!(r#"{{"{long}": 1, "{long}": 2}}"#),
    )
    .await;
    problem(&r, 400, "invalid_json", None);
    assert!(
        r.text.contains("(5000 characters)") && r.text.len() < 1000,
        "{}",
        r.text
    );
    for path in [format!("/products?{long}=1&{long}=2"), format!("/{long}")] {
        let r = send("GET", path, None, None, String::new()).await;
        assert!(r.status == 400 || r.status == 404, "{}", r.text);
        assert!(
            r.text.contains("characters)") && r.text.len() < 1000,
            "{}",
            r.text
        );
    }
    // Two Authorization headers (which caller a proxy checked is not
    // known) and two Content-Type headers are refused, and write nothing.
    let two = |name: &'static str, first: String, second: String| {
        let http = http.clone();
        let staff = staff.clone();
        async move {
            let mut h = vec![(name, first.as_str()), (name, second.as_str())];
            if name != "authorization" {
                h.push(("authorization", staff.as_str()));
            } else {
                h.push(("content-type", "application/json"));
            }
            h.push(("idempotency-key", "two-headers"));
            let body = r#"{"sku": "TWO-1", "name": "Tea", "price_cents": 450}"#;
            http.send("POST", &format!("{base}/products"), &h, body.to_owned())
                .await
        }
    };
    let r = two("authorization", staff.clone(), alice.clone()).await;
    problem(&r, 401, "unauthenticated", None);
    assert!(r.text.contains("one Authorization header"), "{}", r.text);
    let r = two(
        "content-type",
        "application/json".into(),
        "text/plain".into(),
    )
    .await;
    problem(&r, 415, "unsupported_media_type", None);
    let r = send("GET", "/products".into(), None, None, String::new()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains("TWO-1"), "nothing written: {}", r.text);
    // On a method with a body, the body alone is the input: a query string
    // does not fill a property it lacks.
    let r = send(
        "POST",
        "/products?sku=Q1".into(),
        Some(staff.clone()),
        Some("query-1"),
        json!({"name": "Tea", "price_cents": 450}).to_string(),
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/sku"));
    let r = send(
        "POST",
        "/products/a%00b/restock".into(),
        Some(staff.clone()),
        Some("nul-2"),
        r#"{"quantity": 1}"#.into(),
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/id"));
    // A date-time that is not one: 400 at its pointer, not a 500 from
    // `timestamp()` with the expression in the body.
    let r = send(
        "GET",
        "/orders?before=garbage".into(),
        Some(alice.clone()),
        None,
        String::new(),
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/before"));
    assert!(!r.text.contains("timestamp("), "{}", r.text);
    // Parameters as they are sent: bytes that are not UTF-8 (they once
    // became U+FFFD), a query parameter twice (which one a proxy read is
    // not known), a query parameter that disagrees with the path (once
    // said to be "in the body"). Each audited.
    let order = "00000000-0000-4000-8000-000000000001";
    for (path, says) in [
        ("/products?after=%FF".to_owned(), "the query is not UTF-8"),
        ("/orders/%FF%FE".to_owned(), "`id` is not UTF-8"),
        (
            "/products?after=a&after=b".to_owned(),
            "`after` is given twice in the query",
        ),
        (
            format!("/orders/{order}?id=00000000-0000-4000-8000-000000000002"),
            "in the path but \"00000000-0000-4000-8000-000000000002\" in the query",
        ),
    ] {
        let r = send(
            "GET",
            path.clone(),
            Some(alice.clone()),
            None,
            String::new(),
        )
        .await;
        problem(&r, 400, "invalid_input", None);
        assert!(
            r.body["detail"].as_str().unwrap().contains(says),
            "{path}: {}",
            r.text
        );
    }
    // A huge value is quoted by a short prefix only.
    let body = json!({"sku": "BIG", "name": "n".repeat(900_000), "price_cents": 1}).to_string();
    let r = send(
        "POST",
        "/products".into(),
        Some(staff.clone()),
        Some("big-1"),
        body,
    )
    .await;
    problem(&r, 400, "invalid_input", Some("/name"));
    assert!(r.text.len() < 2048, "a {}-byte error body", r.text.len());
    // Anonymous: 401 before the schema is looked at.
    let r = send(
        "POST",
        "/products".into(),
        None,
        Some("anon-1"),
        r#"{"sku": 5}"#.into(),
    )
    .await;
    problem(&r, 401, "unauthenticated", None);
    assert!(r.body.get("errors").is_none(), "{}", r.text);
    // The key is the header: without it, 400 and nothing written.
    let body = json!({"sku": "TEA", "name": "Tea", "price_cents": 450}).to_string();
    for _ in 0..2 {
        let r = send(
            "POST",
            "/products".into(),
            Some(staff.clone()),
            None,
            body.clone(),
        )
        .await;
        problem(&r, 400, "idempotency_key_required", None);
    }
    // Whole decimals are integers, in the body and in the query.
    let body = json!({"sku": "TEA", "name": "Tea", "price_cents": 450.0, "stock": 1e1}).to_string();
    let r = send(
        "POST",
        "/products".into(),
        Some(staff.clone()),
        Some("tea-1"),
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let db = connect_url(&url).await;
    let rows = db
        .query("SELECT sku, price_cents, stock FROM product", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only the valid create wrote");
    assert_eq!(rows[0].get::<_, i64>(1), 450);
    assert_eq!(rows[0].get::<_, i64>(2), 10);
    // One final audit entry for each of the 20 requests to a tool (the
    // unknown path is none's), chained.
    assert_eq!(verify(&url).await, Ok(20));
}

/// Issue 14: every request is answered within its tool's deadline plus a
/// second, even when the database stops answering: here an operator's
/// session holds the audit log locked, so every write waits on it. The
/// caller gets a 503 saying the outcome is not known yet; the request goes
/// on in the server, and once the lock is gone it ends and leaves its audit
/// entry; a retry with the same key then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_within_its_deadline_plus_a_second() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let server = Server::start(
        &root().join("specs/examples/shop.json"),
        &url,
        &Options::default(),
    )
    .await;
    let http = Http::default();
    let base = &server.base;
    let staff = token("sam", &["staff"]);
    let r = http
        .json(
            "POST",
            &format!("{base}/products"),
            Some(&staff),
            &json!({"sku": "TEA", "name": "Tea", "price_cents": 450}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let restock = format!(
        "{base}/products/{}/restock",
        r.body["product"].as_str().unwrap()
    );

    let admin = connect_url(&url).await;
    admin
        .batch_execute("BEGIN; LOCK TABLE sinew_audit_queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let auth = format!("Bearer {staff}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("idempotency-key", "late-1"),
    ];
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(12),
        http.send("POST", &restock, &headers, r#"{"quantity": 1}"#),
    )
    .await
    .expect("no answer within 12 s while the database did not answer");
    let took = t0.elapsed();
    // `restock` has `timeoutMs: 2000`: answered by 3 s (a little slack for
    // a busy machine), not before its deadline.
    assert!(
        took >= Duration::from_millis(2_000) && took < Duration::from_millis(4_500),
        "answered after {took:?}"
    );
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["code"], "unavailable", "{}", r.text);
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    let execution = r
        .headers
        .get("x-request-id")
        .cloned()
        .expect("a request id");
    assert!(r.text.contains(&execution), "{}", r.text);

    // The lock goes: the request ends in the server and is audited.
    admin.batch_execute("ROLLBACK").await.unwrap();
    let db = connect_url(&url).await;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM sinew_audit WHERE execution = $1 AND kind = 'final'",
                &[&execution],
            )
            .await
            .unwrap()
            .get(0);
        assert!(n <= 1, "the late request left {n} final audit entries");
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the late request left no audit entry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly one outcome is recorded: the deadline stopped the guest while
    // its COMMIT (with the final entry) waited on the lock, and the server
    // waited for that COMMIT before deciding whether to record a failure
    // (it once recorded a 504 beside a committed success). Either the key
    // was completed with it or released: the retry answers 200.
    let r = http
        .send("POST", &restock, &headers, r#"{"quantity": 1}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(verify(&url).await.is_ok());
}

/// The schema of the spec at `path` in database `url` (a server start
/// migrates), then every statement of every new connection to it logged
/// (`log_statement = all`, in the cluster's log); a connection to it.
async fn logged_schema(path: &std::path::Path, url: &str) -> tokio_postgres::Client {
    Server::start(path, url, &Options::default())
        .await
        .stop()
        .await;
    let db = connect_url(url).await;
    let name: String = db
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    db.batch_execute(&format!("ALTER DATABASE {name} SET log_statement = 'all'"))
        .await
        .unwrap();
    db
}

/// On Postgres a read node is one SQL statement, whatever its includes and
/// the number of rows: a page of 50 appointments, each with its therapist
/// and its invoices, owned through a reference, and counted, is read by
/// exactly one statement (counted in the server's statement log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_includes_is_one_statement() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let path = root().join("specs/examples/clinic.json");
    let db = logged_schema(&path, &url).await;
    db.batch_execute(
        "INSERT INTO therapist (id, version, created_at, updated_at, name, specialty, rate_cents)
           SELECT md5('t' || i)::uuid, 1, now(), now(), 'T' || i, 'physio', 6000
           FROM generate_series(1, 3) i;
         INSERT INTO patient (id, version, created_at, updated_at, account, name, email)
           VALUES (md5('p')::uuid, 1, now(), now(), 'ann', 'Ann', 'ann@example.com'),
                  (md5('q')::uuid, 1, now(), now(), 'bob', 'Bob', 'bob@example.com');
         INSERT INTO appointment (id, version, created_at, updated_at, status, patient, therapist,
                                  start_at, minutes, note)
           SELECT md5('a' || i)::uuid, 1, now(), now(), 'confirmed',
                  md5(CASE WHEN i % 5 = 0 THEN 'q' ELSE 'p' END)::uuid, md5('t' || (i % 3 + 1))::uuid,
                  timestamptz '2026-03-01 09:00Z' + i * interval '1 hour', 60, ''
           FROM generate_series(1, 80) i;
         INSERT INTO invoice (id, version, created_at, updated_at, appointment, amount_cents, paid)
           SELECT md5('i' || i || '-' || k)::uuid, 1, now(), now(), md5('a' || i)::uuid, 6000, k = 1
           FROM generate_series(1, 80) i, generate_series(1, 2) k;",
    )
    .await
    .unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let http = Http::default();
    let ann = token("ann", &["patient"]);
    let before = cluster.log().len();
    let (status, body) = sinew_tests::pg::call(
        &http,
        "GET",
        &format!("{}/appointments?size=50", server.base),
        &ann,
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rows = body["appointments"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(body["total"], 64, "ann's 64 of the 80");
    assert!(body["next"].is_string());
    for r in rows {
        assert_eq!(r["patient"], body["appointments"][0]["patient"]);
        assert!(r["therapist_row"]["name"].is_string(), "{r}");
        assert_eq!(r["invoices"].as_array().unwrap().len(), 2, "{r}");
    }
    server.stop().await;
    let log = cluster.log();
    let statements: Vec<&str> = log[before..]
        .lines()
        .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
        .collect();
    let reads: Vec<&&str> = statements
        .iter()
        .filter(|l| {
            l.contains("\"appointment\"")
                || l.contains("\"invoice\"")
                || l.contains("\"therapist\"")
        })
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    // That one statement reads the page, its count, both includes and the
    // owner hop.
    for part in [
        "\"appointment\"",
        "\"therapist\"",
        "\"invoice\"",
        "\"patient\"",
        "count(*)",
    ] {
        assert!(reads[0].contains(part), "no {part} in {}", reads[0]);
    }
}

/// A `transition`, an `update` whose `set` does not read `row` and a
/// `soft_delete`, each with `where` and a `limit`, are one statement each
/// on Postgres however many rows they change; an `update` whose `set`
/// reads `row` is two (the locking read, one write for all its rows); a
/// `create` with `each` is one `INSERT` for all its rows; every row has
/// its version bump and its place in the audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_row_writes_are_one_statement_each() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let scenario: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/scenarios/sweeps-many-row-writes.json"))
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweeps.json");
    std::fs::write(&path, scenario["spec"].to_string()).unwrap();
    let db = logged_schema(&path, &url).await;
    // 300 passed, requested appointments; 40 confirmed ones.
    db.batch_execute(
        "INSERT INTO appointment (id, version, created_at, updated_at, status, label, starts_at)
           SELECT md5('a' || i)::uuid, 1, now(), now(),
                  CASE WHEN i <= 300 THEN 'requested' ELSE 'confirmed' END, 'a' || i,
                  timestamptz '2026-01-01 09:00Z' + i * interval '1 minute'
           FROM generate_series(1, 340) i;",
    )
    .await
    .unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let http = Http::default();
    let staff = token("night", &["staff"]);
    let statements = |from: usize| -> Vec<String> {
        cluster.log()[from..]
            .lines()
            .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
            .filter(|l| l.contains("\"appointment\""))
            .map(str::to_owned)
            .collect()
    };
    let cases = [
        ("/sweeps/expire", json!({}), 2, "transition", 1),
        ("/sweeps/reslot", json!({"slot": 3}), 40, "update", 1),
        ("/sweeps/relabel", json!({}), 40, "update", 2),
        ("/sweeps/purge", json!({}), 2, "soft_delete", 1),
        (
            "/appointments/batch",
            json!({"slots": [
                {"label": "x", "starts_at": "2027-01-01T09:00:00Z"},
                {"label": "y", "starts_at": "2027-01-01T10:00:00Z"},
                {"label": "z", "starts_at": "2027-01-01T11:00:00Z"}
            ]}),
            3,
            "create",
            1,
        ),
    ];
    for (route, input, rows, op, count) in cases {
        let before = cluster.log().len();
        let (status, body) = sinew_tests::pg::call(
            &http,
            "POST",
            &format!("{}{route}", server.base),
            &staff,
            &input,
        )
        .await;
        assert_eq!(status / 100, 2, "{route}: {body}");
        let written = statements(before);
        assert_eq!(written.len(), count, "{route}: {written:#?}");
        let last = written.last().unwrap();
        let verb = if op == "create" { "INSERT" } else { "UPDATE" };
        assert!(last.contains(verb), "{last}");
        let entry = last_final_entry(&db).await;
        let audited = entry["rows"].as_array().unwrap();
        assert_eq!(audited.len(), rows, "{route}: {entry}");
        for r in audited {
            assert_eq!(r["op"], op, "{r}");
            let before = r["before"].as_i64().unwrap_or(0);
            assert_eq!(r["after"].as_i64().unwrap(), before + 1, "{r}");
        }
    }
    // Every confirmed row got the slot, then its own label and the slot
    // after it, one version more each time.
    let (slotted, versions, labelled): (i64, i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE slot = 4), count(*) FILTER (WHERE version = 3),
                        count(*) FILTER (WHERE label ~ '^a[0-9]+!$')
                 FROM appointment WHERE status = 'confirmed'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((slotted, versions, labelled), (40, 40, 40));
    server.stop().await;
}

/// A `soft_delete` with `where` on rows others refer to costs a fixed
/// number of statements however many rows it reaches: the locking read of
/// its rows, per referring field one locking read and one write for all
/// the rows found (a `cascade` recursing the same way, a `setNull`
/// clearing them all), and one write for its own rows. Here 3 shelves,
/// their 12 books (cascade) and the books' 24 loans (set null): 6
/// statements, 39 rows in the audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascading_soft_delete_is_a_few_statements_whatever_its_rows() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let spec = json!({
        "sinew": "0.2", "name": "shelves", "roles": ["staff"],
        "entities": {
            "Shelf": {"fields": {"label": {"type": "string", "maxLength": 20}}},
            "Book": {"fields": {"title": {"type": "string", "maxLength": 20},
                                "shelf": {"type": "ref", "entity": "Shelf", "onDelete": "cascade"}}},
            "Loan": {"fields": {"reader": {"type": "string", "maxLength": 20},
                                "book": {"type": "ref", "entity": "Book", "onDelete": "setNull", "nullable": true}}}
        },
        "tools": {"purge": {
            "description": "Removes the old shelves, their books, and the books from their loans.",
            "trigger": {"http": {"method": "POST", "path": "/shelves/purge"}},
            "auth": {"roles": ["staff"]},
            "idempotencyKey": "request.idempotencyKey",
            "flow": {"entry": "tx", "nodes": {
                "tx": {"type": "transaction", "body": {"entry": "gone", "nodes": {
                    "gone": {"type": "soft_delete", "entity": "Shelf",
                             "where": {"label": "'old'"}, "limit": 10}}}, "next": "done"},
                "done": {"type": "return", "value": {"shelves": "size(gone)"}}}}
        }}
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shelves.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let db = logged_schema(&path, &url).await;
    db.batch_execute(
        "INSERT INTO shelf (id, version, created_at, updated_at, label)
           SELECT md5('s' || i)::uuid, 1, now(), now(), CASE WHEN i <= 3 THEN 'old' ELSE 'new' END
           FROM generate_series(1, 4) i;
         INSERT INTO book (id, version, created_at, updated_at, title, shelf)
           SELECT md5('b' || i)::uuid, 1, now(), now(), 'b' || i, md5('s' || (1 + i % 4))::uuid
           FROM generate_series(1, 16) i;
         INSERT INTO loan (id, version, created_at, updated_at, reader, book)
           SELECT md5('l' || i)::uuid, 1, now(), now(), 'r' || i, md5('b' || (1 + i % 16))::uuid
           FROM generate_series(1, 32) i;",
    )
    .await
    .unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let before = cluster.log().len();
    let (status, body) = sinew_tests::pg::call(
        &Http::default(),
        "POST",
        &format!("{}/shelves/purge", server.base),
        &token("night", &["staff"]),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shelves"], 3, "{body}");
    let statements: Vec<String> = cluster.log()[before..]
        .lines()
        .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
        .filter(|l| {
            ["\"shelf\"", "\"book\"", "\"loan\""]
                .iter()
                .any(|t| l.contains(t))
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(statements.len(), 6, "{statements:#?}");
    let entry = last_final_entry(&db).await;
    let ops: Vec<(String, String)> = entry["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entity"].as_str().unwrap().into(),
                r["op"].as_str().unwrap().into(),
            )
        })
        .collect();
    let count = |e: &str, op: &str| ops.iter().filter(|(a, b)| a == e && b == op).count();
    assert_eq!(
        (
            count("Shelf", "soft_delete"),
            count("Book", "soft_delete"),
            count("Loan", "update")
        ),
        (3, 12, 24),
        "{entry}"
    );
    let left: (i64, i64, i64) = {
        let r = db
            .query_one(
                "SELECT (SELECT count(*) FROM shelf WHERE deleted_at IS NULL),
                        (SELECT count(*) FROM book WHERE deleted_at IS NULL),
                        (SELECT count(*) FROM loan WHERE book IS NULL)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(left, (1, 4, 24));
    server.stop().await;
}

/// CORS: the spec's `cors` lets a browser app on one origin call some
/// tools. A preflight is answered without running a tool (no audit entry):
/// 204 with the method and headers allowed for that origin and tool, 403
/// `forbidden` (no `Access-Control-Allow-Origin`) for another origin, a tool
/// `cors` does not list, or a spec without `cors`. A tool's answer (an
/// error's too) carries `Access-Control-Allow-Origin` for an allowed
/// origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_what_the_spec_declares() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("specs/examples/shop.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    spec["cors"] = json!({"origins": ["https://app.example.com", "http://localhost:5173"],
                          "tools": ["list_products", "place_order"]});
    let path = dir.path().join("shop-cors.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let http = Http::default();
    let base = &server.base;
    let db = connect_url(&url).await;
    let before = audit_finals(&url).await;
    let preflight = |origin: &'static str, method: &'static str, path: &'static str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            http.send(
                "OPTIONS",
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    (
                        "access-control-request-headers",
                        "authorization, content-type, idempotency-key",
                    ),
                ],
                "",
            )
            .await
        }
    };
    let ok = preflight("https://app.example.com", "POST", "/orders").await;
    assert_eq!(ok.status, 204, "{}", ok.text);
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(ok.headers["access-control-allow-methods"], "POST");
    assert_eq!(
        ok.headers["access-control-allow-headers"],
        "authorization, content-type, idempotency-key"
    );
    assert!(ok.headers["vary"].contains("Origin"));
    assert_eq!(ok.text, "");
    for (origin, method, path, why) in [
        (
            "https://evil.example.com",
            "POST",
            "/orders",
            "does not let https://evil.example.com call `place_order`",
        ),
        (
            "https://app.example.com",
            "POST",
            "/products",
            "does not let https://app.example.com call `create_product`",
        ),
        (
            "https://app.example.com",
            "DELETE",
            "/orders",
            "no tool answers that method at /orders",
        ),
    ] {
        let r = preflight(origin, method, path).await;
        assert_eq!(r.status, 403, "{origin} {method} {path}: {}", r.text);
        assert_eq!(r.body["code"], "forbidden");
        assert!(
            r.body["detail"].as_str().unwrap().contains(why),
            "{}",
            r.text
        );
        assert!(!r.headers.contains_key("access-control-allow-origin"));
    }
    // Answers: readable by the allowed origin only, errors included.
    let get = |origin: Option<&'static str>, path: &'static str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
            http.send("GET", &url, &headers, "").await
        }
    };
    let r = get(Some("http://localhost:5173"), "/products").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://localhost:5173"
    );
    assert!(r.headers["access-control-expose-headers"].contains("x-request-id"));
    for r in [
        get(Some("https://evil.example.com"), "/products").await,
        get(None, "/products").await,
        get(Some("https://app.example.com"), "/orders").await, // not listed
    ] {
        assert!(
            !r.headers.contains_key("access-control-allow-origin"),
            "{:?}",
            r.headers
        );
    }
    let anonymous = http
        .json("POST", &format!("{base}/orders"), None, &json!({}))
        .await;
    assert_eq!(anonymous.status, 401);
    let r = http
        .send(
            "POST",
            &format!("{base}/orders"),
            &[
                ("origin", "https://app.example.com"),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // No preflight ran a tool: the entries are the GETs' and the POSTs'.
    chained(&db).await;
    assert_eq!(audit_finals(&url).await - before, 6);
    server.stop().await;

    // Without `cors`: no cross-origin access at all.
    let server = Server::start(&plain, &url, &Options::default()).await;
    let r = http
        .send(
            "OPTIONS",
            &format!("{}/products", server.base),
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("no `cors`"), "{}", r.text);
    let r = http
        .send(
            "GET",
            &format!("{}/products", server.base),
            &[("origin", "https://app.example.com")],
            "",
        )
        .await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    server.stop().await;

    // Spec errors.
    let mut bad = spec.clone();
    bad["cors"] = json!({"origins": ["https://app.example.com/", "ftp://x"], "tools": ["nope"]});
    let errors = sinew_core::spec::load(&bad.to_string()).errors;
    let at: Vec<&str> = errors.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        at,
        ["/cors/origins/0", "/cors/origins/1", "/cors/tools/0"],
        "{errors:?}"
    );
}

/// The entries the host writes itself (a request refused before the
/// executor ran) keep the tool's `sensitive` inputs as their hash, as the
/// executor's own entries do: a card number never reaches the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_leak_sensitive_inputs() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({
        "sinew": "0.2", "name": "cards",
        "tools": {"check_card": {
            "description": "Says whether a card number looks valid.",
            "trigger": {"http": {"method": "POST", "path": "/wallets/{id}/check"}},
            "auth": {"public": true},
            "sensitive": ["card"],
            "input": {"type": "object", "additionalProperties": false, "required": ["id", "card"],
                      "properties": {"id": {"type": "string", "maxLength": 40},
                                     "card": {"type": "string", "maxLength": 19}}},
            "output": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
            "flow": {"entry": "done", "nodes": {
                "done": {"type": "return", "value": {"ok": "size(input.card) >= 12"}}}}}}
    });
    let path = dir.path().join("cards.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let http = Http::default();
    let db = connect_url(&url).await;
    let card = "4242424242424242";
    // Run: the executor's entry.
    let ok = http
        .send(
            "POST",
            &format!("{}/wallets/w1/check", server.base),
            &[("content-type", "application/json")],
            json!({"card": card}).to_string(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    // Refused by the host (the path and the body disagree): its own entry.
    let refused = http
        .send(
            "POST",
            &format!("{}/wallets/w1/check", server.base),
            &[("content-type", "application/json")],
            json!({"id": "w2", "card": card}).to_string(),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let entry = last_final_entry(&db).await;
    assert_eq!(entry["outcome"], "rejected");
    assert_eq!(entry["input"]["id"], "w2");
    assert!(
        entry["input"]["card"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{entry}"
    );
    // Refused as it is read, the body kept as text by a tool without
    // sensitive inputs: here, none of it is kept.
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    for body in [
        format!(r#"{{"card": "{card}", "card": "{card}"}}"#),
        format!(r#"{{"card": "{card}""#),
        format!(r#"{{"card": "{card}", "x": {deep}}}"#),
    ] {
        let refused = http
            .send(
                "POST",
                &format!("{}/wallets/w1/check", server.base),
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(refused.status, 400, "{}", refused.text);
        assert_eq!(refused.body["code"], "invalid_json", "{}", refused.text);
        let entry = last_final_entry(&db).await;
        assert_eq!(
            entry["input"]["omitted"], "a body that is not JSON, of a tool with sensitive inputs",
            "{entry}"
        );
    }
    let all: Vec<String> = db
        .query("SELECT entry FROM sinew_audit", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all.len(), 5);
    for e in &all {
        assert!(
            !e.contains(card),
            "the card number is in the audit log: {e}"
        );
    }
}

/// A flow that reads a row, computes its new value from what it read and
/// updates it (no `lock`, no `row.` in the `set`): concurrent calls never
/// lose an update, under either concurrency. The write checks the version
/// the flow read (a row changed since is a conflict, the call rerun or
/// answered 409), so every 200 took its own amount off the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_then_write_loses_no_update_under_concurrent_calls() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let withdraw = |concurrency: &str, path: &str| {
        json!({
            "trigger": {"http": {"method": "POST", "path": path}},
            "auth": {"roles": ["user"]},
            "concurrency": concurrency,
            "idempotencyKey": "request.idempotencyKey",
            "input": {"type": "object", "required": ["id"], "additionalProperties": false,
                      "properties": {"id": {"type": "string", "format": "uuid"}}},
            "output": {"type": "object", "properties": {"balance": {"type": "integer"}}},
            "flow": {"entry": "tx", "nodes": {
                "tx": {"type": "transaction", "next": "done", "body": {"entry": "a", "nodes": {
                    "a": {"type": "read", "entity": "Account", "where": {"id": "input.id"},
                          "one": true, "next": "u"},
                    "u": {"type": "update", "entity": "Account", "where": {"id": "a.id"},
                          "one": true, "set": {"balance": "a.balance - 10"}}}}},
                "done": {"type": "return", "value": {"balance": "u.balance"}}}}
        })
    };
    let spec = json!({
        "sinew": "0.2", "name": "lost", "roles": ["user"],
        "entities": {"Account": {"fields": {"balance": {"type": "integer"}}}},
        "tools": {
            "open": {
                "trigger": {"http": {"method": "POST", "path": "/accounts"}},
                "auth": {"roles": ["user"]},
                "idempotencyKey": "request.idempotencyKey",
                "input": {"type": "object", "properties": {}, "additionalProperties": false},
                "output": {"type": "object", "properties": {"id": {"type": "string"}}},
                "flow": {"entry": "tx", "nodes": {
                    "tx": {"type": "transaction", "next": "done", "body": {"entry": "c",
                        "nodes": {"c": {"type": "create", "entity": "Account",
                                        "values": {"balance": 1000}}}}},
                    "done": {"type": "return", "status": 201, "value": {"id": "c.id"}}}}
            },
            "withdraw_optimistic": withdraw("optimistic", "/accounts/{id}/optimistic"),
            "withdraw_pessimistic": withdraw("pessimistic", "/accounts/{id}/pessimistic")
        }
    });
    let path = dir.path().join("lost.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let server = Server::start(&path, &url, &Options::default()).await;
    let http = Http::default();
    let auth = format!("Bearer {}", token("ann", &["user"]));
    let db = connect_url(&url).await;
    for (n, mode) in ["optimistic", "pessimistic"].into_iter().enumerate() {
        let r = http
            .send(
                "POST",
                &format!("{}/accounts", server.base),
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                    ("idempotency-key", &format!("open-{n}")),
                ],
                "{}",
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_str().unwrap().to_owned();
        let calls: Vec<_> = (0..24)
            .map(|i| {
                let (http, auth) = (http.clone(), auth.clone());
                let url = format!("{}/accounts/{id}/{mode}", server.base);
                tokio::spawn(async move {
                    http.send(
                        "POST",
                        &url,
                        &[
                            ("content-type", "application/json"),
                            ("authorization", &auth),
                            ("idempotency-key", &format!("{mode}-{i}")),
                        ],
                        "{}",
                    )
                    .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for c in calls {
            answers.push(c.await.unwrap());
        }
        let mut balances = Vec::new();
        for a in &answers {
            match a.status {
                200 => balances.push(a.body["balance"].as_i64().unwrap()),
                409 => assert_eq!(a.body["code"], "conflict", "{}", a.text),
                _ => panic!("{mode}: {}", a.text),
            }
        }
        let stored: i64 = db
            .query_one(
                "SELECT balance FROM account WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        balances.sort_unstable();
        let expected: Vec<i64> = (0..balances.len() as i64)
            .map(|k| stored + 10 * k)
            .collect();
        assert_eq!(
            (stored, &balances),
            (1000 - 10 * balances.len() as i64, &expected),
            "{mode}: every 200 took its own 10 off"
        );
    }
    server.stop().await;
}
