//! The Postgres backend's reads of rows a transaction holds locked: they are
//! answered without a round trip, and always as the database would answer
//! them (after the transaction's own updates, after a savepoint rolled
//! back, with filters the row fails, for a deleted row, under other
//! isolation levels).

use serde_json::{Value, json};
use sinew_core::ports::{Condition, FilterOp, Predicate, Query, Row, SortKey, Storage, Tally};
use sinew_core::spec::Isolation;
use sinew_host::pg::PgBackend;
use sinew_host::runtime::storage::StorageBackend;
use sinew_tests::pg::{Cluster, connect_url};
use sinew_tests::root;

const ID: &str = "0b9f3c4e-6a1d-4f43-9c55-2f1f0d3e7a10";

fn by_id(id: &str, lock: bool, more: &[(&str, Value)]) -> Query {
    let mut filters: Vec<Predicate> = vec![
        Condition {
            field: "id".into(),
            op: FilterOp::Eq,
            value: Value::from(id),
        }
        .into(),
    ];
    for (f, v) in more {
        filters.push(
            Condition {
                field: (*f).into(),
                op: FilterOp::Eq,
                value: v.clone(),
            }
            .into(),
        );
    }
    Query {
        limit: Some(1),
        lock,
        ..in_id_order(filters)
    }
}

/// Every live row `filters` match, in id order.
fn in_id_order(filters: Vec<Predicate>) -> Query {
    Query {
        filters,
        order: vec![SortKey {
            field: "id".into(),
            desc: false,
        }],
        limit: None,
        after: None,
        lock: false,
        include: Vec::new(),
    }
}

fn balance(rows: &[Row]) -> Option<i64> {
    rows.first()
        .and_then(|r| r.get("balance"))
        .and_then(Value::as_i64)
}

fn changes(v: Value) -> Row {
    v.as_object().unwrap().clone()
}

#[test]
fn reads_of_locked_rows_are_answered_as_the_database_would() {
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = std::fs::read_to_string(root().join("specs/examples/bank.json")).unwrap();
        let (spec, url, _) = migrated(&cluster, &text).await;
        let db = PgBackend::new(url.parse().unwrap(), &spec, 4, None);
        // The start's catalog warm-up names every table and column the
        // migration made: it plans without an error here, and fails where
        // the tables are missing. It also prepares the statements nearly
        // every request runs, for the connection to keep.
        let mut conn = db.connection().await.unwrap();
        let prepared = db.warm_catalog(&conn.client).await.unwrap();
        // Prepared by the server: the audit queue's insert (4 parameters)
        // and the key claim (4).
        let params: Vec<usize> = prepared.iter().map(|(_, s)| s.params().len()).collect();
        assert_eq!(params, [4, 4], "audit queue insert, key claim");
        assert!(prepared[0].0.starts_with("INSERT INTO sinew_audit_queue"));
        conn.remember(prepared);
        db.give_back(conn);
        let bare = PgBackend::new(cluster.database().await.parse().unwrap(), &spec, 1, None);
        let conn = bare.connection().await.unwrap();
        assert!(bare.warm_catalog(&conn.client).await.is_err());
        let bundle = sinew_core::bundle::Bundle::load(&text).unwrap();
        let seed = bundle
            .complete_row(
                "Account",
                &changes(json!({"id": ID, "holder": "ann", "name": "a", "currency": "EUR", "balance": 100})),
                1_700_000_000_000,
            )
            .unwrap();
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        db.insert(tx, "Account", &seed).await.unwrap();
        db.commit(tx).await.unwrap();

        // Locked, then updated: later reads by id see the update, without a
        // round trip, and the row really is locked meanwhile.
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let rows = db.read(Some(tx), "Account", &by_id(ID, true, &[])).await.unwrap();
        assert_eq!(balance(&rows), Some(100));
        let version = rows[0]["version"].as_i64().unwrap();
        let before = db.recalled();
        assert_eq!(
            balance(&db.read(Some(tx), "Account", &by_id(ID, false, &[])).await.unwrap()),
            Some(100)
        );
        assert_eq!(db.recalled(), before + 1, "a read of a locked row by id is recalled");
        db.update(tx, "Account", ID, version, &changes(json!({"balance": 70})))
            .await
            .unwrap();
        let rows = db.read(Some(tx), "Account", &by_id(ID, true, &[])).await.unwrap();
        assert_eq!(balance(&rows), Some(70));
        assert_eq!(rows[0]["version"].as_i64(), Some(version + 1));
        assert_eq!(db.recalled(), before + 2);
        let other = connect_url(&url).await;
        let err = other
            .batch_execute(&format!(
                "SELECT 1 FROM account WHERE id = '{ID}' FOR UPDATE NOWAIT"
            ))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{err:?}"
        );

        // A filter the row fails (another holder) goes to the database
        // and finds nothing; one it meets is recalled.
        let before = db.recalled();
        let rows = db
            .read(Some(tx), "Account", &by_id(ID, false, &[("holder", json!("bob"))]))
            .await
            .unwrap();
        assert!(rows.is_empty());
        let rows = db
            .read(Some(tx), "Account", &by_id(ID, false, &[("holder", json!("ann"))]))
            .await
            .unwrap();
        assert_eq!(balance(&rows), Some(70));
        assert_eq!(db.recalled(), before + 1);
        // An id spelled differently is the same row to Postgres.
        let rows = db
            .read(Some(tx), "Account", &by_id(&ID.to_uppercase(), false, &[]))
            .await
            .unwrap();
        assert_eq!(balance(&rows), Some(70));

        // A savepoint's update rolled back: the read sees the row as it was
        // before the savepoint.
        let sp = db.begin(Isolation::ReadCommitted, Some(tx)).await.unwrap();
        db.update(sp, "Account", ID, version + 1, &changes(json!({"balance": 5})))
            .await
            .unwrap();
        assert_eq!(
            balance(&db.read(Some(sp), "Account", &by_id(ID, false, &[])).await.unwrap()),
            Some(5)
        );
        db.rollback(sp).await.unwrap();
        assert_eq!(
            balance(&db.read(Some(tx), "Account", &by_id(ID, true, &[])).await.unwrap()),
            Some(70)
        );

        // Deleted in this transaction: gone for its reads.
        let row = db
            .soft_delete(tx, "Account", ID, version + 1, "2026-01-01T00:00:00Z")
            .await
            .unwrap();
        assert!(row["deleted_at"].is_string());
        assert!(db.read(Some(tx), "Account", &by_id(ID, false, &[])).await.unwrap().is_empty());
        db.rollback(tx).await.unwrap();

        // Nothing is remembered across transactions, nor under repeatable
        // read (its snapshot rules are the database's to apply).
        let other_tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let before = db.recalled();
        assert_eq!(
            balance(&db.read(Some(other_tx), "Account", &by_id(ID, false, &[])).await.unwrap()),
            Some(100)
        );
        db.rollback(other_tx).await.unwrap();
        let rr = db.begin(Isolation::RepeatableRead, None).await.unwrap();
        db.read(Some(rr), "Account", &by_id(ID, true, &[])).await.unwrap();
        db.read(Some(rr), "Account", &by_id(ID, false, &[])).await.unwrap();
        db.rollback(rr).await.unwrap();
        assert_eq!(db.recalled(), before);
    });
}

/// The connections open to `url`'s database under `name`.
async fn open_as(admin: &tokio_postgres::Client, name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn backend(conn: &sinew_host::pg::pool::Conn) -> i32 {
    conn.client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[test]
fn the_pool_warms_up_within_its_size_and_hands_out_what_it_opened() {
    use sinew_host::pg::pool::Pool;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = cluster.database().await;
        let admin = connect_url(&url).await;
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        config.application_name("pool-under-test");
        let pool = Pool::new(config, 3);

        // Asked for more than it may hold, it opens its size and stops.
        pool.fill(5).await.unwrap();
        assert_eq!(open_as(&admin, "pool-under-test").await, 3);
        pool.fill(2).await.unwrap();
        assert_eq!(
            open_as(&admin, "pool-under-test").await,
            3,
            "enough are idle"
        );

        // What it opened serves without new connections, and works.
        let mut a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        assert_eq!(open_as(&admin, "pool-under-test").await, 3);
        let one: i32 = a.client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        a.prepare("SELECT 2").await.unwrap();

        // With every connection busy there is no room to warm up.
        pool.fill(3).await.unwrap();
        assert_eq!(open_as(&admin, "pool-under-test").await, 3);

        // Connections dropped instead of given back free their places:
        // warming opens new ones, and those work.
        drop(b);
        drop(c);
        let served = backend(&a).await;
        pool.put(a);
        let started = std::time::Instant::now();
        while open_as(&admin, "pool-under-test").await != 1 {
            assert!(
                started.elapsed().as_secs() < 10,
                "dropped connections stay open"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pool.fill(3).await.unwrap();
        assert_eq!(open_as(&admin, "pool-under-test").await, 3);
        // The connection that has served goes out first (its statements
        // prepared, its catalog loaded), before the two just opened.
        let first = pool.get().await.unwrap();
        assert_eq!(backend(&first).await, served);
        pool.put(first);
        let mut all = Vec::new();
        for _ in 0..3 {
            let conn = pool.get().await.unwrap();
            let two: i32 = conn.client.query_one("SELECT 2", &[]).await.unwrap().get(0);
            assert_eq!(two, 2);
            all.push(conn);
        }
        assert_eq!(open_as(&admin, "pool-under-test").await, 3);
    });
}

/// A fresh database migrated for the spec `text` (which must load without
/// errors): the spec, the database's URL and a connection to it.
async fn migrated(
    cluster: &Cluster,
    text: &str,
) -> (sinew_core::spec::Spec, String, tokio_postgres::Client) {
    let loaded = sinew_core::spec::load(text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let spec = loaded.spec;
    let url = cluster.database().await;
    let mut admin = connect_url(&url).await;
    let plan = sinew_host::pg::migrate::plan(None, &spec, false)
        .await
        .unwrap();
    sinew_host::pg::migrate::apply(&mut admin, &spec, &plan)
        .await
        .unwrap();
    (spec, url, admin)
}

/// The Postgres backend on a fresh database migrated for the spec `text`,
/// an in-memory store declared for it, and its bundle (to complete rows).
/// A savepoint in `tx` on Postgres and in `mt` in memory: what the core
/// opens around a write whose failure a node's `onError` catches (a
/// failed statement aborts a Postgres transaction until its savepoint is
/// rolled back).
async fn savepoints(
    db: &PgBackend,
    memory: &mut sinew_core::ports::memory::MemoryStorage,
    tx: u64,
    mt: sinew_core::ports::TxId,
) -> (u64, sinew_core::ports::TxId) {
    (
        db.begin(Isolation::ReadCommitted, Some(tx)).await.unwrap(),
        memory.begin(Isolation::ReadCommitted, Some(mt)).unwrap(),
    )
}

/// Rolls back the savepoints of [`savepoints`].
async fn roll_back(
    db: &PgBackend,
    memory: &mut sinew_core::ports::memory::MemoryStorage,
    sp: u64,
    msp: sinew_core::ports::TxId,
) {
    db.rollback(sp).await.unwrap();
    memory.rollback(msp).unwrap();
}

async fn side_by_side(
    cluster: &Cluster,
    text: &str,
) -> (
    PgBackend,
    sinew_core::ports::memory::MemoryStorage,
    sinew_core::bundle::Bundle,
) {
    let (spec, url, _) = migrated(cluster, text).await;
    let db = PgBackend::new(url.parse().unwrap(), &spec, 2, None);
    let mut memory = sinew_core::ports::memory::MemoryStorage::new();
    memory.declare(&spec);
    let bundle = sinew_core::bundle::Bundle::load(text).unwrap();
    (db, memory, bundle)
}

/// A small deterministic generator (no dependency, same cases every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const TEXTS: &[&str] = &[
    "Alpha",
    "alpha",
    "ALPHA beta",
    "bet",
    "",
    "Äpfel",
    "äpfel",
    "x%_y",
    "a\\b",
    // What an array literal quotes (`in` lists are one array parameter).
    "say \"hi\", {NULL}",
];
const NEEDLES: &[&str] = &[
    "a", "A", "alp", "ALP", "", "ä", "Ä", "%", "_", "\\", "et", "zz",
];

fn value_for(rng: &mut Lcg, field: &str) -> Value {
    match field {
        "title" => json!(*rng.pick(TEXTS)),
        "note" => {
            if rng.below(4) == 0 {
                Value::Null
            } else {
                json!(*rng.pick(TEXTS))
            }
        }
        "n" => {
            if rng.below(4) == 0 {
                Value::Null
            } else {
                json!(rng.below(5) as i64 - 2)
            }
        }
        // A `number` column: fractions and values whose text sorts
        // otherwise than they do (9 > 10 as text, -2 > -10).
        "w" => {
            if rng.below(5) == 0 {
                Value::Null
            } else {
                // Whole numbers as integers, as a row holds them.
                let w: f64 = *rng.pick(&[-10.0, -2.0, 0.5, 2.5, 3.0, 9.0, 10.0, 20.0, 100.0]);
                if w.fract() == 0.0 {
                    json!(w as i64)
                } else {
                    json!(w)
                }
            }
        }
        _ => json!(format!("00000000-0000-4000-8000-{:012}", rng.below(12))),
    }
}

fn random_predicate(rng: &mut Lcg, depth: u32) -> Predicate {
    if depth >= 2 || rng.below(10) < 6 {
        let field = *rng.pick(&["title", "note", "n", "w", "id"]);
        let text = matches!(field, "title" | "note");
        let ops: &[FilterOp] = if text {
            &[
                FilterOp::Eq,
                FilterOp::Ne,
                FilterOp::Lt,
                FilterOp::Gte,
                FilterOp::In,
                FilterOp::NotIn,
                FilterOp::IsNull,
                FilterOp::StartsWith,
                FilterOp::Contains,
                FilterOp::IContains,
            ]
        } else {
            &[
                FilterOp::Eq,
                FilterOp::Ne,
                FilterOp::Lt,
                FilterOp::Lte,
                FilterOp::Gt,
                FilterOp::In,
                FilterOp::NotIn,
                FilterOp::IsNull,
            ]
        };
        let op = *rng.pick(ops);
        let value = match op {
            FilterOp::In | FilterOp::NotIn => {
                Value::Array((0..rng.below(4)).map(|_| value_for(rng, field)).collect())
            }
            FilterOp::IsNull => json!(rng.below(2) == 0),
            op if op.on_text() => json!(*rng.pick(NEEDLES)),
            // An integer column against a fraction: compared as numbers.
            FilterOp::Lt | FilterOp::Lte | FilterOp::Gt if field == "n" && rng.below(3) == 0 => {
                json!(rng.below(5) as f64 - 2.5)
            }
            _ => value_for(rng, field),
        };
        return Condition {
            field: field.into(),
            op,
            value,
        }
        .into();
    }
    match rng.below(3) {
        0 => Predicate::Not(Box::new(random_predicate(rng, depth + 1))),
        k => {
            let members = (0..rng.below(3))
                .map(|_| random_predicate(rng, depth + 1))
                .collect();
            if k == 1 {
                Predicate::All(members)
            } else {
                Predicate::Any(members)
            }
        }
    }
}

/// `where` on Postgres finds exactly the rows the in-memory store finds
/// (and counts them alike: `read_counted`),
/// for random predicates over text, nullable text, nullable integers and
/// ids: every operator (`%`, `_` and `\\` in a needle are plain
/// characters, `icontains` folds ASCII letters only), `and`/`or`/`not`
/// over null columns, empty lists and empty combinators.
#[test]
fn where_finds_the_rows_the_in_memory_store_finds() {
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "w", "entities": {"Item": {"fields": {
            "title": {"type": "string"}, "note": {"type": "string", "nullable": true},
            "n": {"type": "integer", "nullable": true},
            "w": {"type": "number", "nullable": true}}}}, "tools": {}}"#;
        let (db, mut memory, bundle) = side_by_side(&cluster, text).await;
        let mut rng = Lcg(17);
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        for i in 0..12 {
            let row = bundle
                .complete_row(
                    "Item",
                    &changes(json!({
                        "id": format!("00000000-0000-4000-8000-{i:012}"),
                        "title": value_for(&mut rng, "title"),
                        "note": value_for(&mut rng, "note"),
                        "n": value_for(&mut rng, "n"),
                        "w": value_for(&mut rng, "w"),
                    })),
                    // Rows made at different instants (`early` below).
                    1_700_000_000_000 + i64::from(i) * 1_500 + (rng.below(3) as i64) * 250,
                )
                .unwrap();
            db.insert(tx, "Item", &row).await.unwrap();
            memory.seed("Item", row).unwrap();
        }
        db.commit(tx).await.unwrap();
        let ids = |rows: Vec<Row>| -> Vec<String> {
            rows.iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut nonempty = 0;
        for case in 0..400 {
            let filters: Vec<Predicate> = (0..1 + rng.below(2))
                .map(|_| random_predicate(&mut rng, 0))
                .collect();
            let q = in_id_order(filters);
            let want = ids(memory.read(None, "Item", &q).unwrap());
            let got = ids(db.read(None, "Item", &q).await.unwrap());
            assert_eq!(got, want, "case {case}: {:?}", q.filters);
            nonempty += usize::from(!want.is_empty() && want.len() < 12);
            // Counted, after a cursor and under a limit: the same page and
            // the same total (which ignores both), from one statement.
            let q = Query {
                limit: Some(rng.below(4)),
                after: Some(vec![json!(format!(
                    "00000000-0000-4000-8000-{:012}",
                    rng.below(12)
                ))]),
                ..q
            };
            let (rows, total) = memory.read_counted(None, "Item", &q).unwrap();
            let (got_rows, got_total) = db.read_counted(None, "Item", &q).await.unwrap();
            assert_eq!(
                (ids(got_rows), got_total),
                (ids(rows), total),
                "counted case {case}: {:?}",
                q
            );
            assert_eq!(
                total as usize,
                want.len(),
                "the total ignores cursor and limit"
            );
        }
        // An `in` list longer than the 65 535 parameters a statement takes.
        for (op, field) in [(FilterOp::In, "title"), (FilterOp::NotIn, "id")] {
            let mut list: Vec<Value> = (0..70_000).map(|i| json!(format!("t{i}"))).collect();
            list.extend(TEXTS.iter().take(3).map(|t| json!(t)));
            if field == "id" {
                // Ids of no row, and one row's.
                list = (100..70_000)
                    .map(|i| json!(format!("00000000-0000-4000-8000-{i:012}")))
                    .collect();
                list.push(json!("00000000-0000-4000-8000-000000000003"));
            }
            let q = in_id_order(vec![
                Condition {
                    field: field.into(),
                    op,
                    value: Value::Array(list),
                }
                .into(),
            ]);
            let want = ids(memory.read(None, "Item", &q).unwrap());
            let got = ids(db.read(None, "Item", &q).await.unwrap());
            assert_eq!(got, want, "{} of 70 000", op.name());
            // Both lists decide something: some rows in, some out.
            assert!(
                !want.is_empty() && want.len() < 12,
                "{}: {want:?}",
                op.name()
            );
        }
        // Sorted by random keys (a `number` column sorts as numbers, not
        // as its text) and paged with cursors: the same pages.
        for case in 0..120 {
            let mut order: Vec<SortKey> = (0..1 + rng.below(2))
                .map(|_| SortKey {
                    field: (*rng.pick(&["w", "n", "title", "note"])).into(),
                    desc: rng.below(2) == 0,
                })
                .collect();
            order.push(SortKey {
                field: "id".into(),
                desc: false,
            });
            let filters: Vec<Predicate> = (0..rng.below(2))
                .map(|_| random_predicate(&mut rng, 0))
                .collect();
            let mut q = Query {
                order: order.clone(),
                limit: Some(1 + rng.below(4)),
                ..in_id_order(filters)
            };
            let whole = ids(memory
                .read(
                    None,
                    "Item",
                    &Query {
                        limit: None,
                        ..q.clone()
                    },
                )
                .unwrap());
            let mut paged = Vec::new();
            loop {
                let want = memory.read(None, "Item", &q).unwrap();
                let got = db.read(None, "Item", &q).await.unwrap();
                assert_eq!(ids(got), ids(want.clone()), "order case {case}: {q:?}");
                let Some(last) = want.last() else { break };
                paged.extend(ids(want.clone()));
                q.after = Some(order.iter().map(|k| last[&k.field].clone()).collect());
            }
            assert_eq!(paged, whole, "order case {case}: the pages make the whole");
        }
        // Aggregates: the same groups and measures (in no particular order:
        // sorted here), with and without groups, over random filters.
        let measures: Vec<sinew_core::ports::Measure> = [
            ("rows", Tally::Rows, None),
            ("notes", Tally::Count, Some("note")),
            ("ns", Tally::Count, Some("n")),
            ("sum", Tally::Sum, Some("n")),
            ("least", Tally::Min, Some("n")),
            ("most", Tally::Max, Some("n")),
            ("first", Tally::Min, Some("title")),
            ("last", Tally::Max, Some("note")),
            ("early", Tally::Min, Some("created_at")),
            ("late", Tally::Max, Some("created_at")),
        ]
        .into_iter()
        .map(|(name, tally, field)| sinew_core::ports::Measure {
            name: name.into(),
            tally,
            field: field.map(Into::into),
        })
        .collect();
        let sorted = |mut rows: Vec<Row>| {
            rows.sort_by_key(|r| serde_json::to_string(r).unwrap());
            rows
        };
        for case in 0..150 {
            let filters: Vec<Predicate> = (0..rng.below(2))
                .map(|_| random_predicate(&mut rng, 0))
                .collect();
            let group_by: Vec<String> = match rng.below(4) {
                0 => vec![],
                1 => vec!["note".into()],
                2 => vec!["n".into()],
                _ => vec!["note".into(), "n".into()],
            };
            let want = memory
                .aggregate(None, "Item", &filters, &group_by, &measures)
                .unwrap();
            let got = db
                .aggregate(None, "Item", &filters, &group_by, &measures)
                .await
                .unwrap();
            assert_eq!(
                sorted(got),
                sorted(want),
                "aggregate case {case}: {filters:?} by {group_by:?}"
            );
        }
        // A locking page with its count: Postgres takes FOR UPDATE inside
        // the lateral page of the one statement.
        let q = Query {
            filters: vec![],
            order: vec![SortKey {
                field: "id".into(),
                desc: true,
            }],
            limit: Some(2),
            after: None,
            lock: true,
            include: Vec::new(),
        };
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let (rows, total) = db.read_counted(Some(tx), "Item", &q).await.unwrap();
        assert_eq!((rows.len(), total), (2, 12));
        db.rollback(tx).await.unwrap();
        // The cases are not all trivially empty or full.
        assert!(nonempty > 100, "only {nonempty} discriminating cases");
    });
}

/// A random include of `Tag` rows (by `item`) or of the `Group` an item
/// names, with random filters, order and limit, and at depth 1 an include
/// of its own.
fn random_include(rng: &mut Lcg, depth: u32) -> sinew_core::ports::Include {
    use sinew_core::ports::{Include, Link};
    let filters: Vec<Predicate> = (0..rng.below(2))
        .map(|_| random_predicate(rng, 1))
        .collect();
    if depth == 0 && rng.below(2) == 0 {
        // A tag list, whose tags may embed their item back.
        let order = vec![
            SortKey {
                field: (*rng.pick(&["n", "title", "note", "created_at"])).into(),
                desc: rng.below(2) == 0,
            },
            SortKey {
                field: "id".into(),
                desc: false,
            },
        ];
        let include = if rng.below(2) == 0 {
            vec![Include {
                name: "item_row".into(),
                entity: "Item".into(),
                link: Link::One("item".into()),
                filters: Vec::new(),
                order: Vec::new(),
                limit: None,
                include: Vec::new(),
            }]
        } else {
            Vec::new()
        };
        return Include {
            name: "tags".into(),
            entity: "Tag".into(),
            link: Link::Many("item".into()),
            filters,
            order,
            limit: (rng.below(3) > 0).then(|| rng.below(4)),
            include,
        };
    }
    Include {
        name: "group_row".into(),
        entity: "Group".into(),
        link: Link::One("group".into()),
        filters,
        order: Vec::new(),
        limit: None,
        include: Vec::new(),
    }
}

/// Includes and hops (ownership through a reference) on Postgres give
/// exactly what the in-memory store gives: the same rows, the same
/// embedded rows in the same order with the same values, soft-deleted
/// rows left out, nulls where a reference names nothing; a hop follows
/// the reference to a row whether or not it is soft-deleted.
#[test]
fn includes_and_hops_give_what_the_in_memory_store_gives() {
    use sinew_core::ports::Hop;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "inc", "entities": {
            "Group": {"fields": {"title": {"type": "string"}, "note": {"type": "string", "nullable": true},
                "n": {"type": "integer", "nullable": true}, "w": {"type": "number", "nullable": true}}},
            "Item": {"fields": {"title": {"type": "string"}, "note": {"type": "string", "nullable": true},
                "n": {"type": "integer", "nullable": true}, "w": {"type": "number", "nullable": true},
                "group": {"type": "ref", "entity": "Group", "nullable": true}}},
            "Tag": {"fields": {"title": {"type": "string"}, "note": {"type": "string", "nullable": true},
                "n": {"type": "integer", "nullable": true}, "w": {"type": "number", "nullable": true},
                "item": {"type": "ref", "entity": "Item"}}}}, "tools": {}}"#;
        let (db, mut memory, bundle) = side_by_side(&cluster, text).await;
        let mut rng = Lcg(29);
        let id = |n: u64| format!("00000000-0000-4000-8000-{n:012}");
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let seed = |entity: &str, n: u64, extra: Value, rng: &mut Lcg| {
            let mut values = json!({
                "id": id(n),
                "title": value_for(rng, "title"),
                "note": value_for(rng, "note"),
                "n": value_for(rng, "n"),
                "w": value_for(rng, "w"),
            });
            if let (Value::Object(v), Value::Object(e)) = (&mut values, extra) {
                v.extend(e);
            }
            let mut row = bundle
                .complete_row(
                    entity,
                    &changes(values),
                    1_700_000_000_000 + (n as i64) * 1_000 + (rng.below(3) as i64) * 250,
                )
                .unwrap();
            if rng.below(5) == 0 {
                row.insert("deleted_at".into(), json!("2024-01-01T00:00:00Z"));
            }
            row
        };
        let mut rows = Vec::new();
        for g in 100..106 {
            rows.push(("Group", seed("Group", g, json!({}), &mut rng)));
        }
        for i in 0..12 {
            let group = if rng.below(5) == 0 {
                Value::Null
            } else {
                json!(id(100 + rng.below(6)))
            };
            rows.push(("Item", seed("Item", i, json!({ "group": group }), &mut rng)));
        }
        for t in 200..230 {
            let item = json!(id(rng.below(12)));
            rows.push(("Tag", seed("Tag", t, json!({ "item": item }), &mut rng)));
        }
        for (entity, row) in rows {
            db.insert(tx, entity, &row).await.unwrap();
            memory.seed(entity, row).unwrap();
        }
        db.commit(tx).await.unwrap();
        let mut embedded = 0;
        for case in 0..200 {
            let mut filters: Vec<Predicate> = (0..rng.below(2))
                .map(|_| random_predicate(&mut rng, 1))
                .collect();
            if rng.below(2) == 0 {
                // A hop, as ownership through a reference is written.
                let inner = random_predicate(&mut rng, 1);
                let hop = Predicate::Via(
                    Hop {
                        field: "group".into(),
                        entity: "Group".into(),
                    },
                    Box::new(inner),
                );
                filters.push(if rng.below(4) == 0 {
                    Predicate::Not(Box::new(hop))
                } else {
                    hop
                });
            }
            let include = (0..1 + rng.below(2))
                .map(|_| random_include(&mut rng, 0))
                .collect::<Vec<_>>();
            // (Two includes of one name would be one key: keep the first.)
            let mut seen = std::collections::BTreeSet::new();
            let include: Vec<_> = include
                .into_iter()
                .filter(|i| seen.insert(i.name.clone()))
                .collect();
            let q = Query {
                filters,
                order: vec![
                    SortKey {
                        field: "n".into(),
                        desc: rng.below(2) == 0,
                    },
                    SortKey {
                        field: "id".into(),
                        desc: false,
                    },
                ],
                limit: Some(1 + rng.below(12)),
                after: None,
                lock: false,
                include,
            };
            let want = memory.read(None, "Item", &q).unwrap();
            let got = db.read(None, "Item", &q).await.unwrap();
            assert_eq!(
                serde_json::to_string(&got).unwrap(),
                serde_json::to_string(&want).unwrap(),
                "case {case}: {q:?}"
            );
            embedded += want
                .iter()
                .filter(|r| {
                    r.get("tags").and_then(Value::as_array).is_some_and(|l| !l.is_empty())
                        || r.get("group_row").is_some_and(Value::is_object)
                })
                .count();
            let (rows, total) = memory.read_counted(None, "Item", &q).unwrap();
            let (got_rows, got_total) = db.read_counted(None, "Item", &q).await.unwrap();
            assert_eq!(
                (serde_json::to_string(&got_rows).unwrap(), got_total),
                (serde_json::to_string(&rows).unwrap(), total),
                "counted case {case}"
            );
        }
        assert!(embedded > 100, "only {embedded} rows embedded anything");
    });
}

/// An included entity wider than a SQL function's 100 arguments embeds
/// whole, as in memory.
#[test]
fn a_wide_included_row_embeds_whole() {
    use sinew_core::ports::{Include, Link};
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fields: Vec<String> = (0..130)
            .map(|i| format!(r#""f{i}": {{"type": "integer"}}"#))
            .collect();
        let text = format!(
            r#"{{"sinew": "0.2", "name": "wide", "entities": {{
                "Wide": {{"fields": {{{}}}}},
                "Item": {{"fields": {{"wide": {{"type": "ref", "entity": "Wide"}}}}}}}}, "tools": {{}}}}"#,
            fields.join(", ")
        );
        let (db, mut memory, bundle) = side_by_side(&cluster, &text).await;
        let mut values = serde_json::Map::new();
        values.insert("id".into(), json!(ID));
        for i in 0..130 {
            values.insert(format!("f{i}"), json!(i * 7));
        }
        let wide = bundle
            .complete_row("Wide", &values, 1_700_000_000_000)
            .unwrap();
        let item = bundle
            .complete_row(
                "Item",
                &changes(json!({"id": "00000000-0000-4000-8000-000000000001", "wide": ID})),
                1_700_000_000_000,
            )
            .unwrap();
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        db.insert(tx, "Wide", &wide).await.unwrap();
        db.insert(tx, "Item", &item).await.unwrap();
        db.commit(tx).await.unwrap();
        memory.seed("Wide", wide).unwrap();
        memory.seed("Item", item).unwrap();
        let q = Query {
            include: vec![Include {
                name: "wide_row".into(),
                entity: "Wide".into(),
                link: Link::One("wide".into()),
                filters: Vec::new(),
                order: Vec::new(),
                limit: None,
                include: Vec::new(),
            }],
            ..by_id("00000000-0000-4000-8000-000000000001", false, &[])
        };
        let want = memory.read(None, "Item", &q).unwrap();
        let got = db.read(None, "Item", &q).await.unwrap();
        assert_eq!(want[0]["wide_row"]["f129"], json!(903));
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
    });
}

/// `insert-many` is all or nothing on Postgres as in the in-memory store:
/// a unique value taken by the last row leaves none of the call's rows
/// (in a savepoint, as the core runs an operation it goes on after: a
/// failed statement aborts a Postgres transaction until that is rolled
/// back); on success the rows come back as stored,
/// in the order given, the same on both.
#[test]
fn many_row_inserts_are_all_or_nothing_on_every_store() {
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "tags", "entities": {
            "Tag": {"fields": {"code": {"type": "string", "unique": true},
                               "weight": {"type": "number", "nullable": true},
                               "meta": {"type": "json", "nullable": true}}}}, "tools": {}}"#;
        let (db, mut memory, bundle) = side_by_side(&cluster, text).await;
        let tag = |i: u32, code: &str| {
            bundle
                .complete_row(
                    "Tag",
                    &changes(json!({"id": format!("00000000-0000-4000-8000-00000000000{i}"),
                                    "code": code, "weight": 1.5, "meta": {"i": i}})),
                    1_700_000_000_000,
                )
                .unwrap()
        };
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let mt = memory.begin(Isolation::ReadCommitted, None).unwrap();
        db.insert(tx, "Tag", &tag(1, "a")).await.unwrap();
        memory.insert(mt, "Tag", &tag(1, "a")).unwrap();
        let (sp, msp) = savepoints(&db, &mut memory, tx, mt).await;
        // The third row's code is taken: no row of the three is there.
        let clash = [tag(2, "b"), tag(3, "c"), tag(4, "a")];
        let pg = db.insert_many(sp, "Tag", &clash).await;
        let mem = memory.insert_many(msp, "Tag", &clash);
        for r in [&pg, &mem] {
            assert!(
                matches!(r, Err(sinew_core::ports::StorageError::Unique { field, .. }) if field == "code"),
                "{r:?}"
            );
        }
        roll_back(&db, &mut memory, sp, msp).await;
        let all = in_id_order(Vec::new());
        for rows in [
            db.read(Some(tx), "Tag", &all).await.unwrap(),
            memory.read(Some(mt), "Tag", &all).unwrap(),
        ] {
            assert_eq!(rows.len(), 1, "only the first row: {rows:?}");
        }
        // Out of id order: every row, in the order given, the same on both.
        let fresh = [tag(5, "e"), tag(2, "b"), tag(3, "c")];
        let pg = db.insert_many(tx, "Tag", &fresh).await.unwrap();
        let mem = memory.insert_many(mt, "Tag", &fresh).unwrap();
        assert_eq!(
            serde_json::to_string(&pg).unwrap(),
            serde_json::to_string(&mem).unwrap()
        );
        let codes: Vec<&str> = pg.iter().map(|r| r["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["e", "b", "c"]);
        assert_eq!(db.read(Some(tx), "Tag", &all).await.unwrap().len(), 4);
        db.rollback(tx).await.unwrap();
    });
}

/// `update-many` and `update-where` are all or nothing on Postgres as in
/// the in-memory store: a row whose version moved (409) or that is gone
/// (404) leaves every row of the call unchanged (each in a savepoint
/// rolled back after, as the core does); on success the rows come back in the order asked.
#[test]
fn many_row_updates_are_all_or_nothing_on_every_store() {
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = std::fs::read_to_string(root().join("specs/examples/bank.json")).unwrap();
        let (db, mut memory, bundle) = side_by_side(&cluster, &text).await;
        let ids: Vec<String> = (1..=3)
            .map(|i| format!("00000000-0000-4000-8000-00000000000{i}"))
            .collect();
        let seed: Vec<Row> = ids
            .iter()
            .map(|id| {
                bundle
                    .complete_row(
                        "Account",
                        &changes(json!({"id": id, "holder": "ann", "name": "a", "currency": "EUR", "balance": 100})),
                        1_700_000_000_000,
                    )
                    .unwrap()
            })
            .collect();
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let mt = memory.begin(Isolation::ReadCommitted, None).unwrap();
        for row in &seed {
            db.insert(tx, "Account", row).await.unwrap();
            memory.insert(mt, "Account", row).unwrap();
        }
        let balances = |n: i64| changes(json!({"balance": n}));
        // The second row's version is stale: nothing changes, on both.
        let stale = [(ids[0].clone(), 1), (ids[1].clone(), 7), (ids[2].clone(), 1)];
        let all = [balances(1), balances(2), balances(3)];
        let (sp, msp) = savepoints(&db, &mut memory, tx, mt).await;
        let pg = db.update_many(sp, "Account", &stale, &all).await;
        let mem = memory.update_many(msp, "Account", &stale, &all);
        for r in [&pg, &mem] {
            assert!(
                matches!(r, Err(sinew_core::ports::StorageError::Conflict { .. })),
                "{r:?}"
            );
        }
        roll_back(&db, &mut memory, sp, msp).await;
        // A row that is not there: 404, nothing changed.
        let gone = [
            (ids[0].clone(), 1),
            ("00000000-0000-4000-8000-000000000009".to_owned(), 1),
        ];
        let two = [balances(1), balances(2)];
        let (sp, msp) = savepoints(&db, &mut memory, tx, mt).await;
        let pg = db.update_many(sp, "Account", &gone, &two).await;
        let mem = memory.update_many(msp, "Account", &gone, &two);
        for r in [&pg, &mem] {
            assert!(
                matches!(r, Err(sinew_core::ports::StorageError::NotFound { .. })),
                "{r:?}"
            );
        }
        roll_back(&db, &mut memory, sp, msp).await;
        let all_rows = in_id_order(Vec::new());
        for rows in [
            db.read(Some(tx), "Account", &all_rows).await.unwrap(),
            memory.read(Some(mt), "Account", &all_rows).unwrap(),
        ] {
            let seen: Vec<(i64, i64)> = rows
                .iter()
                .map(|r| (r["balance"].as_i64().unwrap(), r["version"].as_i64().unwrap()))
                .collect();
            assert_eq!(seen, [(100, 1), (100, 1), (100, 1)], "nothing changed");
        }
        // In another order, with current versions: every row, in that order.
        let keys = [(ids[2].clone(), 1), (ids[0].clone(), 1), (ids[1].clone(), 1)];
        let pg = db.update_many(tx, "Account", &keys, &all).await.unwrap();
        let mem = memory.update_many(mt, "Account", &keys, &all).unwrap();
        for rows in [&pg, &mem] {
            let seen: Vec<(&str, i64, i64)> = rows
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap(),
                        r["balance"].as_i64().unwrap(),
                        r["version"].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                seen,
                [(ids[2].as_str(), 1, 2), (ids[0].as_str(), 2, 2), (ids[1].as_str(), 3, 2)]
            );
        }
        // update-where: the rows a query picks, in its order (balance
        // descending), each with the same changes.
        let q = Query {
            order: vec![SortKey {
                field: "balance".into(),
                desc: true,
            }],
            limit: Some(2),
            ..all_rows.clone()
        };
        let pg = db
            .update_where(tx, "Account", &q, &changes(json!({"name": "swept"})))
            .await
            .unwrap();
        let mem = memory
            .update_where(mt, "Account", &q, &changes(json!({"name": "swept"})))
            .unwrap();
        assert_eq!(pg, mem);
        let picked: Vec<i64> = pg.iter().map(|r| r["balance"].as_i64().unwrap()).collect();
        assert_eq!(picked, [3, 2]);
        db.rollback(tx).await.unwrap();
        memory.rollback(mt).unwrap();
    });
}

/// The audit chain is built off the request path: transactions of many
/// tasks queue entries concurrently (no lock), two sequencers (two
/// instances) chain them while a third session holds the chain's lock and
/// dies, and in the end every committed entry is in the chain exactly
/// once, in a chain that verifies, and none of a rolled-back savepoint or
/// transaction is. A queued entry changed by hand is chained and reported.
#[test]
fn the_sequencer_chains_every_committed_entry_once() {
    use sinew_host::pg::sequencer::{self, Batch, Wait};
    use std::sync::Arc;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let text = std::fs::read_to_string(root().join("specs/examples/bank.json")).unwrap();
        let (spec, url, admin) = migrated(&cluster, &text).await;
        let db = Arc::new(PgBackend::new(url.parse().unwrap(), &spec, 8, None));

        // A dead instance's sequencer: holds the lock, then its session goes.
        let holder = connect_url(&url).await;
        holder
            .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(495690081655)")
            .await
            .unwrap();
        assert_eq!(495690081655, sinew_host::pg::sql::AUDIT_LOCK);
        let holder_pid: i32 = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let probe = connect_url(&url).await;
        assert_eq!(sequencer::batch(&probe, Wait::No).await.unwrap(), Batch::Busy);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signer = sinew_host::pg::checkpoint::Signer::from_secret(&"07".repeat(32)).unwrap();
        let signed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sequencers = Vec::new();
        for _ in 0..2 {
            let (url, ready, stop) = (url.clone(), db.audit_ready.clone(), stopped.clone());
            let (signer, signed) = (signer.clone(), signed.clone());
            sequencers.push(tokio::spawn(async move {
                let connect = || async { Ok(connect_url(&url).await) };
                sequencer::run(connect, ready, stop, Some(signer), |e| match e {
                    sequencer::Event::Checkpoint(v) => signed.lock().unwrap().push(v),
                    sequencer::Event::Problem(m) => panic!("{m}"),
                })
                .await;
            }));
        }
        let mut writers = Vec::new();
        for t in 0..6 {
            let db = db.clone();
            writers.push(tokio::spawn(async move {
                let mut kept = Vec::new();
                for i in 0..60 {
                    let id = format!("t{t}-{i}");
                    let entry = |suffix: &str| json!({"kind": "final", "execution": format!("{id}{suffix}"), "n": i});
                    match i % 4 {
                        // Its own transaction (a rejection's entry).
                        0 => db.append_audit(None, &entry("")).await.unwrap(),
                        // With writes, committed; one more in a savepoint
                        // that rolls back.
                        1 => {
                            let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
                            db.append_audit(Some(tx), &entry("")).await.unwrap();
                            let sp = db.begin(Isolation::ReadCommitted, Some(tx)).await.unwrap();
                            db.append_audit(Some(sp), &entry("-gone")).await.unwrap();
                            db.rollback(sp).await.unwrap();
                            db.commit(tx).await.unwrap();
                        }
                        // Rolled back: leaves nothing.
                        2 => {
                            let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
                            db.append_audit(Some(tx), &entry("-gone")).await.unwrap();
                            db.rollback(tx).await.unwrap();
                            continue;
                        }
                        _ => {
                            let tx = db.begin(Isolation::Serializable, None).await.unwrap();
                            db.append_audit(Some(tx), &entry("")).await.unwrap();
                            db.commit(tx).await.unwrap();
                        }
                    }
                    kept.push(id);
                }
                kept
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&holder_pid])
            .await
            .unwrap();
        let mut expected = Vec::new();
        for w in writers {
            expected.extend(w.await.unwrap());
        }
        // Chained shortly after, by the live sequencers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sequencer::queued(&admin).await.unwrap().0 > 0 {
            assert!(std::time::Instant::now() < deadline, "still queued");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        for s in sequencers {
            s.await.unwrap();
        }
        let mut chained: Vec<String> = admin
            .query("SELECT execution FROM sinew_audit ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(chained.len(), expected.len());
        chained.sort();
        expected.sort();
        assert_eq!(chained, expected, "each committed entry once, no other");
        assert_eq!(
            sinew_host::pg::verify_audit(&admin).await.unwrap(),
            Ok(expected.len() as u64)
        );
        // Stopping, the sequencers signed the head once (the second found
        // it signed), recorded and told.
        let signed = signed.lock().unwrap().clone();
        assert_eq!(signed.len(), 1, "{signed:?}");
        assert_eq!(signed[0]["seq"], expected.len());
        let stored: String = admin
            .query_one("SELECT checkpoint FROM sinew_audit_checkpoint", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), signed[0]);
        assert_eq!(
            sinew_host::pg::checkpoint::holds(&admin, &signed[0], Some(&signer.public_hex()))
                .await
                .unwrap(),
            Ok(expected.len() as u64)
        );

        // A queued entry changed by hand (triggers off) is chained as it
        // is found, and reported.
        db.append_audit(None, &json!({"kind": "final", "execution": "late"}))
            .await
            .unwrap();
        admin
            .batch_execute(
                "ALTER TABLE sinew_audit_queue DISABLE TRIGGER USER; \
                 UPDATE sinew_audit_queue SET entry = replace(entry, 'late', 'forged'); \
                 ALTER TABLE sinew_audit_queue ENABLE TRIGGER USER;",
            )
            .await
            .unwrap();
        let Batch::Chained { n: 1, altered, .. } = sequencer::batch(&admin, Wait::Yes).await.unwrap()
        else {
            panic!("one entry chained");
        };
        assert_eq!(altered.len(), 1);
        assert_eq!(sequencer::catch_up(&admin).await.unwrap(), 0);

        // An escalated entry raises one review item, in the batch that
        // chains it; a replayed one raises none.
        let escalated = |execution: &str, outcome: &str| {
            json!({"kind": "final", "execution": execution, "tool": "pay", "subject": "carl",
                   "time": "2026-12-06T00:00:00Z", "outcome": outcome,
                   "policies": [{"name": "large", "action": "escalate"},
                                {"name": "noted", "action": "warn"}]})
        };
        db.append_audit(None, &escalated("big", "ok")).await.unwrap();
        db.append_audit(None, &escalated("big-again", "replayed"))
            .await
            .unwrap();
        let Batch::Chained { n: 2, unraised: None, .. } =
            sequencer::batch(&admin, Wait::Yes).await.unwrap()
        else {
            panic!("two entries chained, their review recorded");
        };
        let items = admin
            .query("SELECT execution, policy, subject FROM sinew_reviews", &[])
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].get::<_, &str>(0), "big");
        assert_eq!(items[0].get::<_, &str>(1), "large");
        // Without the reviews table (a database sinew's tables were not
        // migrated on), the entries are chained all the same, and told.
        admin
            .batch_execute("DROP TABLE sinew_reviews")
            .await
            .unwrap();
        db.append_audit(None, &escalated("bigger", "ok")).await.unwrap();
        let Batch::Chained {
            n: 1,
            unraised: Some(why),
            ..
        } = sequencer::batch(&admin, Wait::Yes).await.unwrap()
        else {
            panic!("chained despite the missing table");
        };
        assert!(why.contains("sinew_reviews"), "{why}");
        assert_eq!(sequencer::catch_up(&admin).await.unwrap(), 0);
    });
}

/// Postgres and the in-memory store refuse alike: an id already taken is a
/// `conflict`, and a unique index is checked at the update that changes
/// one of its fields (`unique`, where a node's `onError` catches it), not
/// only at the commit; once the savepoint around the failed operation is
/// rolled back (the core opens one where `onError` goes on), the
/// transaction goes on.
#[test]
fn taken_ids_and_unique_indexes_are_refused_alike_on_every_store() {
    use sinew_core::ports::StorageError;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "slots", "entities": {
            "Visit": {"fields": {"therapist": {"type": "string"}, "slot": {"type": "integer"},
                                 "note": {"type": "string", "nullable": true}},
                      "indexes": [{"fields": ["therapist", "slot"], "unique": true}]}},
            "tools": {}}"#;
        let (db, mut memory, bundle) = side_by_side(&cluster, text).await;
        let visit = |i: u32, slot: i64| {
            bundle
                .complete_row(
                    "Visit",
                    &changes(
                        json!({"id": format!("00000000-0000-4000-8000-00000000000{i}"),
                                    "therapist": "t", "slot": slot}),
                    ),
                    1_700_000_000_000,
                )
                .unwrap()
        };
        let id = |i: u32| format!("00000000-0000-4000-8000-00000000000{i}");
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        let mt = memory.begin(Isolation::ReadCommitted, None).unwrap();
        for i in [1, 2] {
            db.insert(tx, "Visit", &visit(i, i64::from(i)))
                .await
                .unwrap();
            memory.insert(mt, "Visit", &visit(i, i64::from(i))).unwrap();
        }
        // The same id again.
        let (sp, msp) = savepoints(&db, &mut memory, tx, mt).await;
        let pg = db.insert(sp, "Visit", &visit(1, 7)).await;
        let mem = memory.insert(msp, "Visit", &visit(1, 7));
        for r in [&pg, &mem] {
            assert!(matches!(r, Err(StorageError::Conflict { .. })), "{r:?}");
        }
        roll_back(&db, &mut memory, sp, msp).await;
        // Visit 2 moved onto visit 1's slot: refused at the update.
        let onto = changes(json!({"slot": 1}));
        let (sp, msp) = savepoints(&db, &mut memory, tx, mt).await;
        let pg = db.update(sp, "Visit", &id(2), 1, &onto).await;
        let mem = memory.update(msp, "Visit", &id(2), 1, &onto);
        for r in [&pg, &mem] {
            assert!(
                matches!(r, Err(StorageError::Unique { field, .. }) if field == "therapist,slot"),
                "{r:?}"
            );
        }
        roll_back(&db, &mut memory, sp, msp).await;
        // Still usable: another slot, and a change of no key field.
        let pg = db
            .update(tx, "Visit", &id(2), 1, &changes(json!({"slot": 3})))
            .await
            .unwrap();
        let mem = memory
            .update(mt, "Visit", &id(2), 1, &changes(json!({"slot": 3})))
            .unwrap();
        assert_eq!(
            serde_json::to_string(&pg).unwrap(),
            serde_json::to_string(&mem).unwrap()
        );
        db.update(tx, "Visit", &id(1), 1, &changes(json!({"note": "x"})))
            .await
            .unwrap();
        memory
            .update(mt, "Visit", &id(1), 1, &changes(json!({"note": "x"})))
            .unwrap();
        db.commit(tx).await.unwrap();
        memory.commit(mt).unwrap();
    });
}

/// A unique index the spec no longer has (a previous spec's `unique`,
/// which `sinew serve` leaves until `sinew migrate --apply` drops it):
/// a value taken for it is refused as `unique`, naming its columns (a
/// retry would be refused again), not as a `conflict` to retry.
#[test]
fn a_unique_index_the_spec_dropped_refuses_as_unique() {
    use sinew_core::ports::StorageError;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let revision = |unique: bool| {
            format!(
                r#"{{"sinew": "0.2", "name": "tags", "entities": {{
                    "Tag": {{"fields": {{"code": {{"type": "string", "unique": {unique}}}}}}}}},
                    "tools": {{}}}}"#
            )
        };
        let load = |text: &str| {
            let loaded = sinew_core::spec::load(text);
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            loaded.spec
        };
        let (before, after) = (load(&revision(true)), load(&revision(false)));
        let url = cluster.database().await;
        let mut admin = connect_url(&url).await;
        for spec in [&before, &after] {
            let m = sinew_host::pg::migrate::plan_for(
                Some(&admin),
                spec,
                sinew_host::pg::migrate::Mode::Serve,
            )
            .await
            .unwrap();
            sinew_host::pg::migrate::apply(&mut admin, spec, &m)
                .await
                .unwrap();
        }
        let db = PgBackend::new(url.parse().unwrap(), &after, 2, None);
        let bundle = sinew_core::bundle::Bundle::load(&revision(false)).unwrap();
        let tag = |i: u32| {
            bundle
                .complete_row(
                    "Tag",
                    &changes(json!({"id": format!("00000000-0000-4000-8000-00000000000{i}"),
                                    "code": "a"})),
                    1_700_000_000_000,
                )
                .unwrap()
        };
        let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
        db.insert(tx, "Tag", &tag(1)).await.unwrap();
        let r = db.insert(tx, "Tag", &tag(2)).await;
        assert!(
            matches!(&r, Err(StorageError::Unique { entity, field }) if entity == "Tag" && field == "code"),
            "{r:?}"
        );
        db.rollback(tx).await.unwrap();
    });
}

/// What the queue holds is chained whatever it is: a row written to it by
/// hand that is not a JSON object is chained as found (an `unreadable`
/// entry, which `sinew audit verify` names) instead of stopping the chain;
/// the chain's `execution` and `kind` columns are the entry's own, not
/// what the queued row's columns claim; and `verify` checks them, so a
/// column changed in the chain breaks it.
#[test]
fn the_chain_takes_unreadable_entries_and_its_columns_are_verified() {
    use sinew_host::pg::sequencer;
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "log", "entities": {}, "tools": {}}"#;
        let (spec, url, admin) = migrated(&cluster, text).await;
        let db = PgBackend::new(url.parse().unwrap(), &spec, 2, None);
        db.append_audit(None, &json!({"kind": "final", "execution": "one"}))
            .await
            .unwrap();
        admin
            .batch_execute(
                "INSERT INTO sinew_audit_queue (execution, kind, entry, digest) \
                 VALUES ('two', 'final', 'not json', 'x'), \
                        ('liar', 'review', '{\"execution\":\"three\",\"kind\":\"final\"}', 'y'), \
                        ('nul', 'final', '{\"kind\":\"final\",\"execution\":\"nul\",\"x\":\"a\\u0000b\"}', 'z')",
            )
            .await
            .unwrap();
        db.append_audit(None, &json!({"kind": "final", "execution": "four"}))
            .await
            .unwrap();
        assert_eq!(sequencer::catch_up(&admin).await.unwrap(), 5);
        assert_eq!(sinew_host::pg::verify_audit(&admin).await.unwrap(), Ok(5));
        assert_eq!(
            sinew_host::pg::unreadable_entries(&admin).await.unwrap(),
            [2, 4]
        );
        // A NUL character (`\u0000`) would make every `entry::jsonb` fail.
        let finals: i64 = admin
            .query_one(
                "SELECT count(*) FROM sinew_audit WHERE entry::jsonb->>'kind' = 'final'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(finals, 3);
        let rows: Vec<(String, String)> = admin
            .query("SELECT execution, kind FROM sinew_audit ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want: Vec<(String, String)> = [
            ("one", "final"),
            ("", "unreadable"),
            ("three", "final"),
            ("", "unreadable"),
            ("four", "final"),
        ]
        .iter()
        .map(|(e, k)| ((*e).to_owned(), (*k).to_owned()))
        .collect();
        assert_eq!(rows, want);
        let found: String = admin
            .query_one("SELECT entry FROM sinew_audit WHERE seq = 2", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            serde_json::from_str::<Value>(&found).unwrap()["text"],
            "not json"
        );
        // A chained entry's `execution` column changed (triggers off).
        admin
            .batch_execute(
                "ALTER TABLE sinew_audit DISABLE TRIGGER USER; \
                 UPDATE sinew_audit SET execution = 'other' WHERE seq = 3; \
                 ALTER TABLE sinew_audit ENABLE TRIGGER USER;",
            )
            .await
            .unwrap();
        let broken = sinew_host::pg::verify_audit(&admin).await.unwrap();
        assert_eq!(
            broken,
            Err(
                "audit entry 3: its `execution` or `kind` column disagrees with its content"
                    .to_owned()
            )
        );
    });
}

/// A short `in` list is read through the table's index even in a generic
/// plan (the plan a pooled connection keeps after a few executions): the
/// planner must know how many members the list has. One array parameter
/// for two ids made small tables (a thousand rows) a sequential scan that
/// parsed the array again for every row, the bank's `transfer`'s main
/// cost in Postgres.
#[test]
fn a_short_in_list_is_read_through_the_index_in_a_generic_plan() {
    let cluster = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let text = r#"{"sinew": "0.2", "name": "plans", "entities": {"Item": {"fields": {
            "title": {"type": "string"}}}}, "tools": {}}"#;
        let (spec, url, admin) = migrated(&cluster, text).await;
        // Every connection opened from now on keeps a generic plan.
        let name: String = admin
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET plan_cache_mode = force_generic_plan"
            ))
            .await
            .unwrap();
        admin
            .batch_execute(
                "INSERT INTO item (id, version, created_at, updated_at, title) \
                 SELECT gen_random_uuid(), 1, now(), now(), 't' || g FROM generate_series(1, 1000) g",
            )
            .await
            .unwrap();
        let ids: Vec<String> = admin
            .query("SELECT id::text FROM item ORDER BY title LIMIT 2", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // The scans so far (this session's, reported at once).
        admin
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        let scans = async || -> (i64, i64) {
            let row = admin
                .query_one(
                    "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
                     WHERE relname = 'item'",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        let before = scans().await;
        let db = PgBackend::new(url.parse().unwrap(), &spec, 1, None);
        let q = in_id_order(vec![
            Condition {
                field: "id".into(),
                op: FilterOp::In,
                value: json!(ids),
            }
            .into(),
        ]);
        for _ in 0..8 {
            let rows = db.read(None, "Item", &q).await.unwrap();
            assert_eq!(rows.len(), 2);
        }
        // The pool's backend reports its counts when idle, within seconds.
        let started = std::time::Instant::now();
        let (seq, idx) = loop {
            let now = scans().await;
            let (seq, idx) = (now.0 - before.0, now.1 - before.1);
            if idx + seq >= 8 || started.elapsed().as_secs() > 30 {
                break (seq, idx);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert_eq!(seq, 0, "sequential scans of `item` ({idx} index scans)");
        assert!(idx >= 8, "{idx} index scans");
    });
}
