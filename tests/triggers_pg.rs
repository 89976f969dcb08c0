//! The triggers that do not come from a client's request, on a real
//! Postgres: cron tools run by `sinew serve` itself (two instances on one
//! database, a test clock moved by the test), and the same runs started by
//! Cloud Scheduler.

use serde_json::{Value, json};
use sinew_tests::pg::{Cluster, Http, Options, Server, connect_url, token};
use sinew_tests::root;
use std::time::{Duration, Instant};

/// Sets a test server's clock (every request with test hooks does).
async fn set_clock(http: &Http, server: &Server, at: &str) {
    let r = http
        .send(
            "GET",
            &format!("{}/healthz", server.base),
            &[("x-sinew-test-now", at)],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
}

/// The keys of the `Tick` rows of `tool`, in order.
async fn ticks(db: &tokio_postgres::Client, tool: &str) -> Vec<String> {
    db.query(
        "SELECT coalesce(key, '') FROM \"tick\" WHERE tool = $1 ORDER BY key",
        &[&tool],
    )
    .await
    .expect("ticks")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits (at most 10 s) until `tool` has a row with `key`.
async fn wait_for(db: &tokio_postgres::Client, tool: &str, key: &str) {
    let started = Instant::now();
    while !ticks(db, tool).await.iter().any(|k| k == key) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no run of {tool} for {key}: {:?}",
            ticks(db, tool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances on one database run every scheduled time of a cron tool
/// exactly once, through ten minutes of fire times; Cloud Scheduler's call
/// of a time already run is answered from that run, and a time it runs
/// first is not run again by the instances; after a jump of days, only the
/// latest missed time runs, and never one from before the schedule was
/// first recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_each_time_once_across_instances() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let spec = root().join("tests/fixtures/cron.json");
    let options = Options {
        test_hooks: true,
        ..Options::default()
    };
    let a = Server::start(&spec, &url, &options).await;
    let b = Server::start(&spec, &url, &options).await;
    let db = connect_url(&url).await;
    let http = Http::default();
    // Both record the schedules at their real start time: nothing before
    // it runs.
    let started = Instant::now();
    while db
        .query_one("SELECT count(*) FROM sinew_schedule", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "schedules not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first whole minute of 2027, Paris time: well after the start.
    let t0: jiff::Timestamp = "2027-01-04T09:00:00Z".parse().unwrap();
    let minute = |m: i64| t0 + jiff::SignedDuration::from_mins(m);
    for m in 0..10 {
        let at = minute(m);
        // A few seconds into the minute, each instance at its own moment.
        let (ta, tb) = (
            (at + jiff::SignedDuration::from_secs(1)).to_string(),
            (at + jiff::SignedDuration::from_secs(2)).to_string(),
        );
        tokio::join!(set_clock(&http, &a, &ta), set_clock(&http, &b, &tb));
        wait_for(&db, "every_minute", &format!("cron:every_minute:{at}")).await;
    }
    // Give the slower instance time to try the last minute too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = ticks(&db, "every_minute").await;
    let expected: Vec<String> = (0..10)
        .map(|m| format!("cron:every_minute:{}", minute(m)))
        .collect();
    assert_eq!(keys, expected, "each minute once");

    // Cloud Scheduler calls a time already run: the first run's answer.
    let ops = token("scheduler", &["ops"]);
    let call = |at: String| {
        let (http, url, auth) = (
            http.clone(),
            format!("{}/tools/every_minute", a.base),
            format!("Bearer {ops}"),
        );
        async move {
            http.send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                    ("x-cloudscheduler-scheduletime", &at),
                    ("x-sinew-test-now", &at),
                ],
                "{}",
            )
            .await
        }
    };
    let again = call(minute(3).to_string()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        again.body,
        json!({"key": format!("cron:every_minute:{}", minute(3))})
    );
    // It runs the next minute first (its clock a little ahead): the
    // instances, reaching it, answer from that run.
    let first = call(minute(10).to_string()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let ta = (minute(10) + jiff::SignedDuration::from_secs(5)).to_string();
    tokio::join!(set_clock(&http, &a, &ta), set_clock(&http, &b, &ta));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = ticks(&db, "every_minute").await;
    assert_eq!(keys.len(), 11, "{keys:?}");
    // A forced run (a time not on the schedule) is an ordinary call.
    let forced = call((minute(10) + jiff::SignedDuration::from_secs(7)).to_string()).await;
    assert_eq!(forced.status, 200, "{}", forced.text);
    assert_eq!(forced.body, json!({"key": null}));

    // The daily tool ran once when the clock first jumped (for 4 January,
    // none of the days since the start); days later it runs once more,
    // for the latest of its times (not 5–8 January).
    wait_for(&db, "daily", "cron:daily:2027-01-04T02:00:00Z").await;
    let later = "2027-01-09T12:00:00Z";
    tokio::join!(set_clock(&http, &a, later), set_clock(&http, &b, later));
    wait_for(&db, "daily", "cron:daily:2027-01-09T02:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ticks(&db, "daily").await,
        [
            "cron:daily:2027-01-04T02:00:00Z",
            "cron:daily:2027-01-09T02:00:00Z"
        ],
        "only the latest missed time, and none from before the schedule was recorded"
    );
    // Every run is audited as the documented system caller.
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let runs: Vec<Value> = db
        .query(
            "SELECT entry FROM sinew_audit WHERE entry::jsonb->>'tool' = 'daily'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .filter(|e: &Value| e["kind"] == "final" && e["outcome"] == "ok")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["subject"], "cron:daily");
    assert_eq!(runs[1]["roles"], json!(["system"]));
    assert_eq!(runs[1]["scheduled"], "2027-01-09T02:00:00Z");
    a.stop().await;
    b.stop().await;

    // Pruning a month later forgets every key but each cron tool's latest
    // claimed time.
    let loaded = sinew_core::spec::load(&std::fs::read_to_string(&spec).unwrap()).spec;
    let storage = sinew_host::pg::PgBackend::new(url.parse().unwrap(), &loaded, 1, None);
    let month_later = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    storage.prune(month_later.as_millisecond()).await.unwrap();
    let kept: Vec<String> = db
        .query("SELECT key FROM sinew_idempotency ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kept,
        [
            "cron:daily:2027-01-09T02:00:00Z",
            // (It ran when the clock jumped to 9 January too.)
            "cron:every_minute:2027-01-09T12:00:00Z"
        ]
    );

    // After downtime (a restart days later): one catch-up run; a time that
    // ran is still known to have run.
    let c = Server::start(&spec, &url, &options).await;
    let later = "2027-01-20T12:00:00Z";
    set_clock(&http, &c, later).await;
    wait_for(&db, "daily", "cron:daily:2027-01-20T02:00:00Z").await;
    assert_eq!(ticks(&db, "daily").await.len(), 3);
    let replay = http
        .send(
            "POST",
            &format!("{}/tools/daily", c.base),
            &[
                ("content-type", "application/json"),
                (
                    "authorization",
                    &format!("Bearer {}", token("s", &["system"])),
                ),
                ("x-cloudscheduler-scheduletime", "2027-01-09T02:00:00Z"),
                ("x-sinew-test-now", later),
            ],
            "{}",
        )
        .await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(
        ticks(&db, "daily").await.len(),
        3,
        "answered from the first run"
    );
    // The audit chain of it all verifies.
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let verified = sinew_host::pg::verify_audit(&db).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    c.stop().await;
}

/// An RS256 token signed with the tests' key (`kid` test-rsa-1), as Google
/// signs Pub/Sub's push tokens.
fn google_token(email: &str, audience: &str, issued: i64) -> String {
    let pem = std::fs::read(root().join("tests/fixtures/jwt/rsa-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa-1".into());
    let claims = json!({
        "iss": "https://accounts.google.com", "aud": audience, "sub": "1234567890",
        "email": email, "email_verified": true, "iat": issued, "exp": issued + 3600,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// Pub/Sub pushes to a queue tool: the push's OIDC token is verified
/// against a (local) JWKS, audience and service account; the message's data
/// is the input and runs as `queue:<name>` with the tool's roles; a
/// redelivery (same `messageId`) is answered from the first run; a message
/// that can never succeed (bad data, a broken invariant, a failure stored
/// after some of its writes committed) is acknowledged
/// (2xx) and audited; a push with a bad token is refused (non-2xx: Pub/Sub
/// delivers again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_pushes_are_verified_run_once_and_acknowledged() {
    use base64::Engine as _;
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let spec = root().join("tests/fixtures/queue.json");
    let audience = "https://sinew.example.run.app/queues/shipments";
    let account = "pusher@project.iam.gserviceaccount.com";
    let options = Options {
        pubsub_audience: Some(audience.into()),
        pubsub_jwks: Some(
            root()
                .join("tests/fixtures/jwt/jwks.json")
                .to_string_lossy()
                .into_owned(),
        ),
        pubsub_service_account: Some(account.into()),
        ..Options::default()
    };
    let server = Server::start(&spec, &url, &options).await;
    let http = Http::default();
    let now = sinew_host::jwt::now_secs() as i64;
    let push = |token: String, message_id: &str, data: Value| {
        let envelope = json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
                "messageId": message_id,
                "attributes": {"origin": "test"},
                "publishTime": "2026-12-05T10:00:00Z"
            },
            "subscription": "projects/p/subscriptions/shipments-push"
        });
        let (http, url) = (http.clone(), format!("{}/queues/shipments", server.base));
        async move {
            http.send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {token}")),
                ],
                envelope.to_string(),
            )
            .await
        }
    };
    let good = || google_token(account, audience, now);
    let shipment = json!({"order": "o-1", "customer": "ann", "weight": 5});
    let first = push(good(), "m-1", shipment.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["by"], "queue:shipments");
    // Redelivered: the first answer, nothing run twice.
    let again = push(good(), "m-1", shipment.clone()).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    // Never succeeds: acknowledged (200), with the problem.
    let heavy = push(
        good(),
        "m-2",
        json!({"order": "o-2", "customer": "ann", "weight": 5000}),
    )
    .await;
    assert_eq!(heavy.status, 200, "{}", heavy.text);
    assert_eq!(heavy.body["acknowledged"], true);
    assert_eq!(heavy.body["problem"]["code"], "invariant_violated");
    // The shipment commits, then a second transaction fails (503): not
    // acknowledged, so Pub/Sub delivers again; the redelivery is answered
    // with the stored failure (the shipment is not made twice) and
    // acknowledged, as delivering it again cannot mend it.
    let closed = json!({"order": "o-5", "customer": "ann", "weight": 0});
    let first_closed = push(good(), "m-5", closed.clone()).await;
    assert_eq!(first_closed.status, 503, "{}", first_closed.text);
    assert_eq!(first_closed.body["committed"], true);
    let closed_again = push(good(), "m-5", closed).await;
    assert_eq!(closed_again.status, 200, "{}", closed_again.text);
    assert_eq!(closed_again.body["acknowledged"], true);
    assert_eq!(closed_again.body["problem"], first_closed.body);
    let bad_input = push(good(), "m-3", json!({"order": 3})).await;
    assert_eq!(
        (bad_input.status, bad_input.body["problem"]["code"].as_str()),
        (200, Some("invalid_input"))
    );
    // Tokens that are not the push's: refused, so Pub/Sub tries again.
    for token in [
        google_token("someone@else.iam.gserviceaccount.com", audience, now),
        google_token(account, "https://elsewhere.example", now),
        google_token(account, audience, now - 7200),
        sinew_tests::pg::token("ann", &["worker"]),
    ] {
        let r = push(token, "m-4", shipment.clone()).await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    // Not a push envelope: acknowledged and audited.
    let raw = http
        .send(
            "POST",
            &format!("{}/queues/shipments", server.base),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {}", good())),
            ],
            r#"{"hello": "world"}"#,
        )
        .await;
    assert_eq!(
        (raw.status, raw.body["problem"]["code"].as_str()),
        (200, Some("invalid_body"))
    );
    let unknown = http
        .send(
            "POST",
            &format!("{}/queues/elsewhere", server.base),
            &[],
            "{}",
        )
        .await;
    assert_eq!(unknown.status, 404);

    let db = connect_url(&url).await;
    let count: i64 = db
        .query_one("SELECT count(*) FROM shipment", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "one shipment per message, each run once");
    sinew_host::pg::sequencer::catch_up(&db).await.unwrap();
    let outcomes: Vec<String> = db
        .query(
            "SELECT entry::jsonb->>'outcome' FROM sinew_audit WHERE entry::jsonb->>'tool' = 'ship' AND entry::jsonb->>'kind' = 'final' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok", "replayed", "error", "error", "replayed", "rejected", "rejected", "rejected",
            "rejected", "rejected", "rejected"
        ]
    );
    server.stop().await;
}

/// The clinic end to end on Postgres with its 0.2 part 3: a confirmation
/// email emitted with the confirm reaches the mail service with its key
/// header and made-up API key; checkout opens a Stripe PaymentIntent
/// (form-encoded, bearer key, Idempotency-Key); Stripe's signed webhook
/// marks the invoice paid (as staff: it is the patient's row); a replayed
/// event is answered from the first; an old signature is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_emails_charges_and_hears_from_stripe() {
    use sinew_tests::pg::{Canned, Recorder, call, made_up_secrets};
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let spec = root().join("specs/examples/clinic.json");
    let mailer = Recorder::start(vec![]).await;
    let stripe = Recorder::start(vec![(
        "POST /v1/payment_intents",
        vec![Canned::json(
            200,
            json!({"id": "pi_9", "status": "requires_payment_method"}),
        )],
    )])
    .await;
    let options = Options {
        externals: vec![
            ("mailer".into(), mailer.base.clone()),
            ("stripe".into(), stripe.base.clone()),
        ],
        no_cron: true,
        ..Options::default()
    };
    let server = Server::start(&spec, &url, &options).await;
    let (http, base) = (Http::default(), server.base.clone());
    let staff = token("sam", &["staff"]);
    let ann = token("ann", &["patient"]);
    let (s, t) = call(
        &http,
        "POST",
        &format!("{base}/therapists"),
        &staff,
        &json!({"name": "Dr Ames", "specialty": "physio", "rate_cents": 9000}),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let (s, p) = call(
        &http,
        "POST",
        &format!("{base}/patients"),
        &ann,
        &json!({"name": "Ann", "email": "ann@example.com"}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, a) = call(&http, "POST", &format!("{base}/appointments"), &ann,
        &json!({"patient": p["id"], "therapist": t["id"], "start_at": "2030-01-02T10:00:00Z", "minutes": 60})).await;
    assert!(s < 300, "{s} {a}");
    let id = a["id"].as_str().unwrap().to_owned();
    let (s, c) = call(
        &http,
        "POST",
        &format!("{base}/appointments/{id}/confirm"),
        &staff,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    // The email, delivered after the commit.
    let started = Instant::now();
    while mailer.requests().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no email");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mail = &mailer.requests()[0];
    assert_eq!(mail.target, "/v1/messages");
    assert_eq!(mail.headers["x-api-key"], "made-up-CLINIC_MAIL_KEY");
    assert_eq!(mail.headers["x-message-key"], format!("confirmed-{id}"));
    assert_eq!(
        serde_json::from_str::<Value>(&mail.body).unwrap()["template"],
        "appointment-confirmed"
    );
    let (s, done) = call(
        &http,
        "POST",
        &format!("{base}/appointments/{id}/complete"),
        &staff,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{done}");
    let invoice = done["invoice"].as_str().unwrap().to_owned();

    // Checkout: a PaymentIntent, as Stripe's API takes it, under the
    // request's own key.
    let paid = http
        .send(
            "POST",
            &format!("{base}/invoices/{invoice}/checkout"),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ann}")),
                ("idempotency-key", "checkout-1"),
            ],
            "{}",
        )
        .await;
    assert_eq!(
        (paid.status, &paid.body["payment"]),
        (200, &json!("pi_9")),
        "{}",
        paid.text
    );
    assert_eq!(stripe.requests().len(), 1, "one attempt");
    let intent = &stripe.requests()[0];
    assert_eq!(intent.headers["authorization"], "Bearer made-up-STRIPE_KEY");
    assert_eq!(
        intent.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(intent.headers["stripe-version"], "2024-06-20");
    assert_eq!(intent.headers["idempotency-key"], "checkout-1");
    let form: std::collections::HashMap<String, String> =
        url_pairs(&intent.body).into_iter().collect();
    assert_eq!(form["amount"], "9000");
    assert_eq!(form["metadata[invoice]"], invoice);
    assert_eq!(form["automatic_payment_methods[enabled]"], "true");

    // Stripe says it succeeded.
    let secrets = made_up_secrets(&spec);
    let secret = std::fs::read_to_string(secrets.join("STRIPE_WEBHOOK_SECRET")).unwrap();
    let event = json!({"id": "evt_1", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_9", "metadata": {"invoice": invoice}}}})
    .to_string();
    let signed = |t: i64| {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{event}").as_bytes());
        let v1: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t={t},v1={v1}")
    };
    let now = sinew_host::jwt::now_secs() as i64;
    let deliver = |sig: String| {
        let (http, url, body) = (http.clone(), format!("{base}/hooks/stripe"), event.clone());
        async move {
            http.send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("stripe-signature", &sig),
                ],
                body,
            )
            .await
        }
    };
    let old = deliver(signed(now - 3600)).await;
    assert_eq!(old.status, 401, "{}", old.text);
    let first = deliver(signed(now)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body, json!({"event": "evt_1", "handled": true}));
    let again = deliver(signed(now + 1)).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    let (s, list) = call(&http, "GET", &format!("{base}/invoices"), &ann, &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(list["invoices"][0]["paid"], true, "{list}");
    server.stop().await;
}

/// `a=1&b%5Bc%5D=2` as pairs.
fn url_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
