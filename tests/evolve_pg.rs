//! Two revisions at once, as on Cloud Run during a deploy: through the
//! clinic's evolutions (`sinew_tests::evolve`: states, enum values, fields
//! with defaults, nullable and unique fields, wider bounds, indexes, an
//! entity and a field renamed), the server of each spec starts (migrating the database
//! as it starts) while the server of the previous spec keeps serving
//! traffic, then both serve side by side. No request is answered 5xx, no
//! acknowledged write is lost, each spec's migration runs once and
//! finishes, and the audit chain holds an entry for every request. Once the
//! last previous revision is gone, `sinew migrate --apply` contracts: the
//! index the spec dropped, the entity rename's view and the field rename's
//! former column go, and the field made required again is filled in.

use serde_json::{Value, json};
use sinew_core::spec::Spec;
use sinew_host::pg::migrate::{Mode, apply, plan_for};
use sinew_tests::pg::{Cluster, Http, Options, Server, connect_url, token};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the traffic saw.
#[derive(Default)]
struct Ledger {
    /// Requests sent.
    sent: u64,
    /// Answers by status class (2xx, 4xx).
    ok: u64,
    refused: u64,
    /// Refusals by request and code.
    codes: std::collections::BTreeMap<String, u64>,
    /// Answers 5xx (or not HTTP at all), with what was asked.
    failures: Vec<String>,
    /// Rows acknowledged (table, id).
    written: Vec<(&'static str, String)>,
}

/// A URL's path with its ids left out.
fn path_shape(url: &str) -> String {
    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
    path.split('/')
        .map(|s| if s.len() == 36 { "{id}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

static SLOT: AtomicU64 = AtomicU64::new(0);

/// One client's loop on one server until `stop`: a therapist, a patient,
/// an appointment booked, confirmed and completed (an invoice), and the
/// lists, as staff and patient.
async fn traffic(base: String, who: String, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let http = Http::default();
    let staff = token(&format!("staff-{who}"), &["staff"]);
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let account = format!("acct-{who}-{k}");
        let patient_token = token(&account, &["patient"]);
        let send = |method: &'static str, path: String, tok: String, body: Value| {
            let (http, url, ledger) = (http.clone(), format!("{base}{path}"), ledger.clone());
            async move {
                let a = if method == "GET" {
                    let auth = format!("Bearer {tok}");
                    http.send("GET", &url, &[("authorization", auth.as_str())], "")
                        .await
                } else {
                    http.json(method, &url, Some(&tok), &body).await
                };
                let mut l = ledger.lock().unwrap();
                l.sent += 1;
                match a.status {
                    200..=299 => l.ok += 1,
                    400..=499 => {
                        l.refused += 1;
                        let shape: String = path_shape(&url);
                        *l.codes
                            .entry(format!("{method} {shape} {} {}", a.status, a.body["code"]))
                            .or_default() += 1;
                    }
                    s => l
                        .failures
                        .push(format!("{method} {url} {body}: {s} {}", a.text)),
                }
                (a.status, a.body)
            }
        };
        let id = |table: &'static str, (status, body): (u16, Value), key: &str| {
            let id = body[key].as_str().map(str::to_owned);
            if let (200..=299, Some(id)) = (status, &id) {
                ledger.lock().unwrap().written.push((table, id.clone()));
            }
            id
        };
        let t = send(
            "POST",
            "/therapists".into(),
            staff.clone(),
            json!({"name": format!("T {who} {k}"), "specialty": "physio", "rate_cents": 6000}),
        )
        .await;
        let therapist = id("therapist", t, "id");
        let p = send(
            "POST",
            "/patients".into(),
            patient_token.clone(),
            json!({"name": format!("P {who} {k}"), "email": format!("{account}@example.com")}),
        )
        .await;
        let patient = id("patient", p, "id");
        if let (Some(therapist), Some(patient)) = (therapist, patient) {
            let slot = SLOT.fetch_add(1, Ordering::Relaxed);
            let start = jiff::Timestamp::from_second(1_900_000_000 + slot as i64 * 3600).unwrap();
            let b = send(
                "POST",
                "/appointments".into(),
                patient_token.clone(),
                json!({"patient": patient, "therapist": therapist, "start_at": start.to_string(), "minutes": 60}),
            )
            .await;
            if let Some(appointment) = id("appointment", b, "id") {
                send(
                    "POST",
                    format!("/appointments/{appointment}/confirm"),
                    staff.clone(),
                    json!({}),
                )
                .await;
                let c = send(
                    "POST",
                    format!("/appointments/{appointment}/complete"),
                    staff.clone(),
                    json!({}),
                )
                .await;
                id("invoice", c, "invoice");
            }
        }
        send("GET", "/appointments".into(), staff.clone(), Value::Null).await;
        send(
            "GET",
            "/invoices".into(),
            patient_token.clone(),
            Value::Null,
        )
        .await;
    }
}

fn spec(v: &Value) -> Spec {
    let loaded = sinew_core::spec::load(&v.to_string());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_revisions_serve_one_database_through_every_evolution() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let specs = sinew_tests::evolve::clinic();
    let paths: Vec<_> = specs
        .iter()
        .map(|(name, v)| {
            let p = dir.path().join(format!("{name}.json"));
            std::fs::write(&p, v.to_string()).unwrap();
            p
        })
        .collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let options = Options::default();
    let mut old = Server::start(&paths[0], &url, &options).await;
    for (i, path) in paths.iter().enumerate().skip(1) {
        let stop = Arc::new(AtomicBool::new(false));
        let before = tokio::spawn(traffic(
            old.base.clone(),
            format!("{i}-old"),
            stop.clone(),
            ledger.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The new revision migrates as it starts, under traffic; for the
        // unique field, two of its servers start at once (one migrates, the
        // other waits for it and finds nothing left to do).
        let (new, twin) = if specs[i].0 == "4-unique" {
            let (a, b) = tokio::join!(
                Server::start(path, &url, &options),
                Server::start(path, &url, &options)
            );
            (a, Some(b))
        } else {
            (Server::start(path, &url, &options).await, None)
        };
        let after = tokio::spawn(traffic(
            new.base.clone(),
            format!("{i}-new"),
            stop.clone(),
            ledger.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        before.await.unwrap();
        after.await.unwrap();
        old.stop().await;
        if let Some(twin) = twin {
            twin.stop().await;
        }
        old = new;
        let failures = ledger.lock().unwrap().failures.clone();
        assert!(failures.is_empty(), "{}: {failures:#?}", specs[i].0);
    }
    old.stop().await;

    let mut db = connect_url(&url).await;
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(l.failures.is_empty(), "{:#?}", l.failures);
    eprintln!(
        "{} requests through {} evolutions: {} ok, {} refused {:?}",
        l.sent,
        specs.len() - 1,
        l.ok,
        l.refused,
        l.codes
    );
    // Traffic flowed: most requests succeeded, on every revision.
    assert!(
        l.ok > 200 && l.ok > 4 * l.refused,
        "{} ok, {} refused: {:#?}",
        l.ok,
        l.refused,
        l.codes
    );
    // Every acknowledged write is there (the invoices under their new name).
    for (table, id) in &l.written {
        let table = if *table == "invoice" { "bill" } else { table };
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM \"{table}\" WHERE id = $1::text::uuid"),
                &[id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table} {id} was acknowledged and is not there");
    }
    for table in ["therapist", "patient", "appointment", "invoice"] {
        assert!(
            l.written.iter().any(|(t, _)| *t == table),
            "no {table} written"
        );
    }
    // Therapists written by servers of spec 4 (`specialty`) and of spec 5
    // (`discipline`) while both ran have both, in step.
    let apart: i64 = db
        .query_one(
            "SELECT count(*) FROM therapist WHERE discipline IS DISTINCT FROM specialty",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(apart, 0);
    // Each spec's migration ran once, at a server's start, and finished.
    let runs = db
        .query(
            "SELECT spec, plan, \"by\", finished_at IS NOT NULL FROM sinew_migrations ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), specs.len(), "{runs:?}");
    let mut plans: Vec<String> = runs.iter().map(|r| r.get(1)).collect();
    plans.dedup();
    assert_eq!(plans.len(), specs.len());
    for r in &runs {
        assert_eq!(
            (r.get::<_, String>(2), r.get::<_, bool>(3)),
            ("serve".into(), true)
        );
    }
    // The audit chain holds one entry per request, unbroken.
    let entries = sinew_host::pg::verify_audit(&db).await.unwrap();
    assert_eq!(entries, Ok(l.sent));

    // Serve left the contractions; with no previous revision running,
    // `sinew migrate --apply` makes them: the dropped index, the view, the
    // note required again (rows written meanwhile without one filled in).
    let nulls_set = db
        .execute(
            "UPDATE appointment SET note = NULL WHERE id IN (SELECT id FROM appointment LIMIT 1500)",
            &[],
        )
        .await
        .unwrap();
    assert!(nulls_set > 100, "{nulls_set}");
    let last = spec(&specs.last().unwrap().1);
    let m = plan_for(Some(&db), &last, Mode::Migrate).await.unwrap();
    let changes: Vec<&str> = m.runs().map(|s| s.change.as_str()).collect();
    assert_eq!(
        changes,
        [
            // Views first: one reads every column of its table.
            "drop the view `invoice` a rename left for the previous spec's servers",
            "finish renaming `specialty` to `discipline`: drop the trigger and the former column",
            "drop index `therapist_discipline_idx` (not in the spec)",
            "make `note` NOT NULL, filling its nulls with the default '' in batches",
        ]
    );
    apply(&mut db, &last, &m).await.unwrap();
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('invoice', 'therapist_discipline_idx') \
             OR EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'therapist'::regclass AND attname = 'specialty' AND NOT attisdropped) \
             OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'therapist_discipline_sync')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // The renamed table kept its foreign key (under its former name): no
    // second one was added under the new name.
    let keys: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'bill'::regclass AND contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1);
    let (nulls, empty, not_null): (i64, i64, bool) = {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE note IS NULL), count(*) FILTER (WHERE note = ''), \
                 (SELECT attnotnull FROM pg_attribute WHERE attrelid = 'appointment'::regclass AND attname = 'note') \
                 FROM appointment",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((nulls, not_null), (0, true));
    assert!(empty >= i64::try_from(nulls_set).unwrap());
    let again = plan_for(Some(&db), &last, Mode::Migrate).await.unwrap();
    assert_eq!(again.runs().count(), 0, "{}", again.plan.human());
}
