//! `sinew migrate` against a real Postgres: the plan applies, re-applying
//! changes nothing, additions are safe, columns the spec lacks are kept
//! when inserts can leave them out, and changes that lose data are refused
//! unless allowed.

use serde_json::{Value, json};
use sinew_host::pg::migrate::{Migration, apply, plan, recorded};
use sinew_tests::pg::{Cluster, connect_url};
use sinew_tests::root;

fn shop() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("specs/examples/shop.json")).unwrap())
        .unwrap()
}

fn spec(v: &Value) -> sinew_core::spec::Spec {
    let loaded = sinew_core::spec::load(&v.to_string());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.spec
}

async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_add_safely_and_refuse_losing_data() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let base = shop();

    // A fresh database gets the whole plan, in one transaction.
    let m = plan(Some(&client), &spec(&base), false).await.unwrap();
    assert_eq!(m.changes, 0);
    assert!(m.destructive.is_empty());
    assert!(!recorded(&client, &spec(&base)).await);
    apply(&mut client, &spec(&base), &m).await.unwrap();
    // Recorded: `sinew serve` starts without planning again.
    assert!(recorded(&client, &spec(&base)).await);
    let product = columns(&client, "product").await;
    assert!(
        product
            .iter()
            .any(|c| c.0 == "sku" && c.1 == "text" && c.2 == "NO"),
        "{product:?}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN \
             ('product', 'order', 'sinew_audit', 'sinew_idempotency', 'sinew_rate')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 5);
    // The queue and the chain compress entries with lz4 (this server has
    // it): a transfer's entry stays in its row, a read's writes less log.
    let storage = client
        .query(
            "SELECT attrelid::regclass::text, attstorage::text, attcompression::text FROM pg_attribute \
             WHERE attname = 'entry' AND attrelid IN ('sinew_audit'::regclass, 'sinew_audit_queue'::regclass) \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let storage: Vec<(String, String, String)> = storage
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        storage,
        [
            ("sinew_audit".into(), "x".into(), "l".into()),
            ("sinew_audit_queue".into(), "x".into(), "l".into())
        ]
    );

    // Re-running is a no-op.
    let again = plan(Some(&client), &spec(&base), false).await.unwrap();
    assert_eq!(
        (again.changes, again.destructive.len()),
        (0, 0),
        "{}",
        again.sql
    );
    apply(&mut client, &spec(&base), &again).await.unwrap();
    assert_eq!(columns(&client, "product").await, product);

    // The CHECKs and the status machine are enforced by the database.
    let bad = client
        .batch_execute(
            "INSERT INTO \"order\" (id, version, created_at, updated_at, status, customer, product, quantity, total_cents) \
             VALUES ('00000000-0000-4000-8000-000000000001', 1, now(), now(), 'teleported', 'a', \
             '00000000-0000-4000-8000-000000000002', 1, 1)",
        )
        .await;
    let code = bad
        .expect_err("a status outside the machine was accepted")
        .code()
        .cloned();
    assert_eq!(code, Some(tokio_postgres::error::SqlState::CHECK_VIOLATION));

    // A new nullable field is added without asking.
    let mut added = base.clone();
    added["entities"]["Product"]["fields"]["origin"] =
        json!({"type": "string", "maxLength": 80, "nullable": true});
    let m = plan(Some(&client), &spec(&added), false).await.unwrap();
    assert_eq!(m.changes, 1, "{}", m.sql);
    assert!(m.destructive.is_empty());
    assert!(
        m.sql
            .contains("ALTER TABLE \"product\" ADD COLUMN \"origin\" text"),
        "{}",
        m.sql
    );
    assert!(!recorded(&client, &spec(&added)).await);
    apply(&mut client, &spec(&added), &m).await.unwrap();
    assert!(recorded(&client, &spec(&added)).await);
    assert!(
        columns(&client, "product")
            .await
            .iter()
            .any(|c| c.0 == "origin")
    );

    // Removed from the spec again, the nullable column is kept with its
    // data (rows can still be inserted without it), allowed or not.
    for allow in [false, true] {
        let m = plan(Some(&client), &spec(&base), allow).await.unwrap();
        assert!(m.destructive.is_empty(), "{:?}", m.destructive);
        assert_eq!(m.kept.len(), 1, "{:?}", m.kept);
        assert!(m.kept[0].contains("product.origin"), "{:?}", m.kept);
        assert!(!m.sql.contains("DROP COLUMN"), "{}", m.sql);
    }
    // Narrowing: a type change (the spec cannot run without it: refused)
    // and a new NOT NULL (it can: left, and said).
    let mut narrowed = added.clone();
    narrowed["entities"]["Product"]["fields"]["origin"] = json!({"type": "integer"});
    let n = plan(Some(&client), &spec(&narrowed), false).await.unwrap();
    assert_eq!(n.destructive.len(), 1, "{:?}", n.destructive);
    assert!(n.destructive[0].contains("change the type"));
    assert!(
        n.kept
            .iter()
            .any(|k| k.starts_with("left as it is") && k.contains("make `origin` NOT NULL")),
        "{:?}",
        n.kept
    );

    // NOT NULL without a default, it would make every insert fail:
    // refused, and dropped (with its data) only when allowed.
    client
        .batch_execute("ALTER TABLE product ALTER COLUMN origin SET NOT NULL")
        .await
        .unwrap();
    let m = plan(Some(&client), &spec(&base), false).await.unwrap();
    assert_eq!(m.destructive.len(), 1, "{:?}", m.destructive);
    assert!(
        m.destructive[0].contains("product.origin") && m.destructive[0].contains("NOT NULL"),
        "{:?}",
        m.destructive
    );
    assert!(!m.sql.contains("DROP COLUMN"));
    let allowed = plan(Some(&client), &spec(&base), true).await.unwrap();
    assert!(
        allowed
            .sql
            .contains("ALTER TABLE \"product\" DROP COLUMN \"origin\";"),
        "{}",
        allowed.sql
    );
    apply(&mut client, &spec(&base), &allowed).await.unwrap();
    assert_eq!(columns(&client, "product").await, product);

    // A failing migration changes nothing.
    let broken = Migration {
        sql: format!("{}\nSELECT no_such_function();", again.sql),
        ..again.clone()
    };
    assert!(apply(&mut client, &spec(&narrowed), &broken).await.is_err());
    assert!(
        !recorded(&client, &spec(&narrowed)).await,
        "recorded, not applied"
    );
    assert_eq!(columns(&client, "product").await, product);
}

/// With the tables owned by the role that migrates and the servers on
/// another (`sinew migrate --app-role`), a server does everything serving
/// needs (requests' writes, queueing audit entries, chaining them,
/// checkpoints), and cannot change the audit chain: no UPDATE, DELETE or
/// TRUNCATE, no disabling its triggers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_role_cannot_change_the_audit_chain() {
    use sinew_core::spec::Isolation;
    use sinew_host::runtime::storage::StorageBackend;
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut owner = connect_url(&url).await;
    owner
        .batch_execute("CREATE ROLE sinew_app LOGIN")
        .await
        .unwrap();
    let s = spec(&shop());
    let mut m = plan(Some(&owner), &s, false).await.unwrap();
    m.app_role = Some("sinew_app".into());
    apply(&mut owner, &s, &m).await.unwrap();

    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.user("sinew_app");
    let (app, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert!(recorded(&app, &s).await, "the app role reads the record");
    let db = sinew_host::pg::PgBackend::new(config, &s, 2, None);
    let tx = db.begin(Isolation::ReadCommitted, None).await.unwrap();
    let row = sinew_core::bundle::Bundle::load(&shop().to_string())
        .unwrap()
        .complete_row(
            "Product",
            json!({"id": "0b9f3c4e-6a1d-4f43-9c55-2f1f0d3e7a10", "sku": "TEA", "name": "Tea", "price_cents": 450, "stock": 1})
                .as_object()
                .unwrap(),
            0,
        )
        .unwrap();
    db.insert(tx, "Product", &row).await.unwrap();
    db.append_audit(Some(tx), &json!({"kind": "final", "execution": "e1"}))
        .await
        .unwrap();
    db.commit(tx).await.unwrap();
    assert_eq!(sinew_host::pg::sequencer::catch_up(&app).await.unwrap(), 1);
    let signer = sinew_host::pg::checkpoint::Signer::from_secret(&"01".repeat(32)).unwrap();
    assert!(
        sinew_host::pg::checkpoint::write(&app, &signer)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(sinew_host::pg::verify_audit(&app).await.unwrap(), Ok(1));
    // Granting itself more grants nothing (a warning, not an error).
    app.batch_execute("GRANT UPDATE, DELETE ON sinew_audit TO sinew_app")
        .await
        .unwrap();
    for sql in [
        "UPDATE sinew_audit SET kind = 'x'",
        "DELETE FROM sinew_audit",
        "TRUNCATE sinew_audit",
        "ALTER TABLE sinew_audit DISABLE TRIGGER USER",
        "DELETE FROM sinew_audit_checkpoint",
        "UPDATE sinew_audit_checkpoint SET hash = 'x'",
    ] {
        let e = app.batch_execute(sql).await.expect_err(sql);
        let text = format!("{e:?}");
        assert!(
            text.contains("permission denied") || text.contains("must be owner"),
            "{sql}: {text}"
        );
    }
}

/// A migration cut short after its transaction (here: a unique index that
/// cannot be built over duplicates, as a server killed during `CREATE
/// INDEX CONCURRENTLY` leaves it) is recorded as not finished and leaves
/// an invalid index; once the duplicates are gone, the next migration
/// drops that index and builds it again, finishing what was left, and
/// applies nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cut_short_is_finished_by_the_next() {
    use sinew_host::pg::migrate::{Mode, history, plan_for};
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let v1 = shop();
    let m = plan(Some(&client), &spec(&v1), false).await.unwrap();
    apply(&mut client, &spec(&v1), &m).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO product (id, version, created_at, updated_at, sku, name, price_cents, stock) VALUES \
             ('00000000-0000-4000-8000-000000000001', 1, now(), now(), 'A', 'Tea', 100, 1), \
             ('00000000-0000-4000-8000-000000000002', 1, now(), now(), 'B', 'Tea', 100, 1)",
        )
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2["entities"]["Product"]["fields"]["name"]["unique"] = json!(true);
    v2["entities"]["Product"]["fields"]["name"]["maxLength"] = json!(300);
    let s2 = spec(&v2);
    let m = plan_for(Some(&client), &s2, Mode::Migrate).await.unwrap();
    let e = apply(&mut client, &s2, &m)
        .await
        .expect_err("built a unique index over duplicates");
    assert!(
        format!("{e:#}").contains("create unique index `product_name_key`"),
        "{e:#}"
    );
    // The transaction's part is in (the wider CHECK, validated after it),
    // the index is left invalid, and the migration is recorded as not
    // finished.
    let h = history(&client).await.unwrap();
    assert_eq!(h.len(), 2);
    assert!(
        h[0].finished_at.is_some() && h[1].finished_at.is_none(),
        "{h:?}"
    );
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'product_name_key'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!valid);
    assert!(!recorded(&client, &s2).await);
    // What is left: the index, made again.
    client
        .batch_execute("UPDATE product SET name = 'Coffee' WHERE sku = 'B'")
        .await
        .unwrap();
    let left = plan_for(Some(&client), &s2, Mode::Migrate).await.unwrap();
    let changes: Vec<&str> = left.runs().map(|s| s.change.as_str()).collect();
    assert_eq!(
        changes,
        ["create unique index `product_name_key` (name), again: the last try did not finish"],
        "{}",
        left.plan.human()
    );
    apply(&mut client, &s2, &left).await.unwrap();
    assert!(recorded(&client, &s2).await);
    let h = history(&client).await.unwrap();
    assert_eq!(h.len(), 3);
    assert!(h[2].finished_at.is_some());
    let again = plan_for(Some(&client), &s2, Mode::Migrate).await.unwrap();
    assert_eq!(again.runs().count(), 0, "{}", again.plan.human());
    // The index holds.
    let dup = client
        .batch_execute(
            "INSERT INTO product (id, version, created_at, updated_at, sku, name, price_cents, stock) VALUES \
             ('00000000-0000-4000-8000-000000000003', 1, now(), now(), 'C', 'Tea', 100, 1)",
        )
        .await;
    assert_eq!(
        dup.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
}

/// A database migrated by sinew before it commented its CHECKs and kept
/// `sinew_migrations` (the shop's schema as it was planned then, in
/// `tests/fixtures/`) is upgraded: each CHECK is rewritten once (named,
/// commented, validated), nothing else changes, and the next plan is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_before_is_upgraded() {
    use sinew_host::pg::migrate::{Mode, plan_for};
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let before =
        std::fs::read_to_string(root().join("tests/fixtures/shop-before-migrations-0.2.sql"))
            .unwrap();
    client.batch_execute(&before).await.unwrap();
    let s = spec(&shop());
    let m = plan_for(Some(&client), &s, Mode::Serve).await.unwrap();
    assert!(m.destructive.is_empty(), "{:?}", m.destructive);
    let changes: Vec<&str> = m
        .runs()
        .filter(|s| !s.alone)
        .map(|s| s.change.as_str())
        .collect();
    assert!(!changes.is_empty());
    for c in &changes {
        assert!(c.starts_with("rewrite the CHECK of"), "{}", m.plan.human());
    }
    apply(&mut client, &s, &m).await.unwrap();
    let again = plan_for(Some(&client), &s, Mode::Migrate).await.unwrap();
    assert_eq!(again.plan.steps.len(), 0, "{}", again.plan.human());
    let unnamed: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND conname ~ '_check[0-9]+$'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unnamed, 0, "two CHECKs on a column left");
}

/// A rolling deploy from the version that kept its outbox in
/// `sinew_outbox`: what that version left there moves to `sinew_messages`
/// with its delivery state (pending and failed messages; delivered ones
/// are dropped, their deliveries are in the audit log), and what its
/// servers record afterwards is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_earlier_outbox_is_moved_and_then_forwarded() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let s = spec(&shop());
    let m = plan(Some(&client), &s, false).await.unwrap();
    apply(&mut client, &s, &m).await.unwrap();
    // The database as that version left it: its own tables' DDL recorded
    // under another hash (so this version's runs once), `sinew_outbox`
    // without this version's trigger, and rows in it.
    client
        .batch_execute(
            "UPDATE sinew_migrations SET tables = 'the earlier version'; \
             DROP TRIGGER sinew_outbox_forward ON sinew_outbox; \
             INSERT INTO sinew_outbox (id, execution, tool, node, service, operation, message, \
                                       attempts, next_attempt_at, delivered_at, failed_at, last_error) VALUES \
             ('00000000-0000-4000-8000-000000000001', 'e1', 't', 'n', 's', 'o', '{\"n\":1}', 1, now(), now(), NULL, NULL), \
             ('00000000-0000-4000-8000-000000000002', 'e2', 't', 'n', 's', 'o', '{\"n\":2}', 3, '2030-01-01T00:00:00Z', NULL, NULL, 'HTTP 503'), \
             ('00000000-0000-4000-8000-000000000003', 'e3', 't', 'n', 's', 'o', '{\"n\":3}', 1, now(), NULL, now(), 'HTTP 422')",
        )
        .await
        .unwrap();
    let m = plan(Some(&client), &s, false).await.unwrap();
    apply(&mut client, &s, &m).await.unwrap();
    assert_eq!(
        messages(&client).await,
        [
            (
                "{\"n\":2}".to_string(),
                3,
                true,
                false,
                Some("HTTP 503".to_string())
            ),
            (
                "{\"n\":3}".to_string(),
                1,
                false,
                true,
                Some("HTTP 422".to_string())
            ),
        ]
    );
    let outbox = "SELECT count(*) FROM sinew_outbox";
    let left: i64 = client.query_one(outbox, &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
    // Recorded by a server of that version from now on: forwarded.
    client
        .batch_execute(
            "INSERT INTO sinew_outbox (id, execution, tool, node, service, operation, message) VALUES \
             ('00000000-0000-4000-8000-000000000004', 'e4', 't', 'n', 's', 'o', '{\"n\":4}')",
        )
        .await
        .unwrap();
    let left: i64 = client.query_one(outbox, &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
    let now = messages(&client).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert_eq!(now[2], ("{\"n\":4}".to_string(), 0, false, false, None));
}

/// `sinew_messages`, by message: the message, its attempts, whether it is
/// due at 2030-01-01, whether it failed, its last error.
async fn messages(
    client: &tokio_postgres::Client,
) -> Vec<(String, i32, bool, bool, Option<String>)> {
    client
        .query(
            "SELECT message, attempts, next_attempt_at = '2030-01-01T00:00:00Z', \
                    failed_at IS NOT NULL, last_error \
             FROM sinew_messages ORDER BY message",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// A rename leaves a view (`SELECT *`) under the table's old name, which
/// depends on every column: finishing a field's rename on the renamed table
/// drops the view first when no spec names it any more, and dropping a
/// removed field while the view stays makes the view again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_of_a_renamed_table_can_be_dropped_under_its_view() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision =
        |entity: Value| json!({"sinew": "0.2", "name": "crm", "entities": entity, "tools": {}});
    let apply_spec = async |client: &mut tokio_postgres::Client, v: &Value, forced: bool| {
        let m = plan(Some(&*client), &spec(v), forced).await.unwrap();
        assert!(m.destructive.is_empty(), "{:?}", m.destructive);
        apply(client, &spec(v), &m).await.unwrap();
    };
    let v1 = revision(json!({"Customer": {"fields": {
        "name": {"type": "string"}, "code": {"type": "string"}}}}));
    let v2 = revision(json!({"Client": {"renamedFrom": "Customer", "fields": {
        "full_name": {"type": "string", "renamedFrom": "name"},
        "code": {"type": "string"}}}}));
    // The code (no null: inserts cannot leave it out) removed while the
    // view stays (allowed to lose it).
    let v3 = revision(json!({"Client": {"renamedFrom": "Customer", "fields": {
        "full_name": {"type": "string", "renamedFrom": "name"}}}}));
    // Both renames finished.
    let v4 = revision(json!({"Client": {"fields": {"full_name": {"type": "string"}}}}));
    apply_spec(&mut client, &v1, false).await;
    client
        .execute(
            "INSERT INTO customer (id, version, created_at, updated_at, name, code) \
             VALUES (gen_random_uuid(), 1, now(), now(), 'Ada', 'x')",
            &[],
        )
        .await
        .unwrap();
    apply_spec(&mut client, &v2, false).await;
    // The previous spec (a rollback, a server of v1 while v2 rolls out)
    // finds its table renamed: it runs through the view, and its plan
    // makes nothing over it.
    let back = plan(Some(&client), &spec(&v1), false).await.unwrap();
    assert!(back.destructive.is_empty(), "{:?}", back.destructive);
    assert!(
        !back
            .plan
            .steps
            .iter()
            .any(|s| s.sql.iter().any(|q| q.contains("CREATE TABLE"))),
        "{:?}",
        back.plan.steps
    );
    apply(&mut client, &spec(&v1), &back).await.unwrap();
    client
        .execute(
            "INSERT INTO customer (id, version, created_at, updated_at, name, code) \
             VALUES (gen_random_uuid(), 1, now(), now(), 'Grace', 'y')",
            &[],
        )
        .await
        .unwrap();
    client
        .execute("DELETE FROM client WHERE code = 'y'", &[])
        .await
        .unwrap();
    apply_spec(&mut client, &v3, true).await;
    let through_view: Vec<String> = client
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = 'customer' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !through_view.contains(&"note".to_string())
            && through_view.contains(&"full_name".to_string()),
        "the view is made again without the dropped column: {through_view:?}"
    );
    apply_spec(&mut client, &v4, false).await;
    let views: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.views WHERE table_name = 'customer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 0, "the view no spec names is dropped");
    let client_columns: Vec<String> = columns(&client, "client")
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert!(
        !client_columns.contains(&"name".to_string()),
        "{client_columns:?}"
    );
    let name: String = client
        .query_one("SELECT full_name FROM client", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Ada");
}

/// A forced narrowing of an `enum` whose rows hold the value it removes
/// is refused before anything changes (its `VALIDATE` runs after the
/// transaction: it used to fail there, the narrowed CHECK left in place).
#[tokio::test]
async fn a_narrowing_that_rows_refuse_changes_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |colors: Value| {
        json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": {
            "color": {"type": "string", "enum": colors}}}}, "tools": {}})
    };
    let v1 = revision(json!(["red", "blue"]));
    let v2 = revision(json!(["red"]));
    let m = plan(Some(&client), &spec(&v1), false).await.unwrap();
    apply(&mut client, &spec(&v1), &m).await.unwrap();
    let insert = "INSERT INTO item (id, version, created_at, updated_at, color) \
                  VALUES (gen_random_uuid(), 1, now(), now(), 'blue')";
    client.execute(insert, &[]).await.unwrap();
    let before: i64 = client
        .query_one("SELECT count(*) FROM sinew_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    let e = apply(&mut client, &spec(&v2), &m).await.err().unwrap();
    let message = format!("{e:#}");
    assert!(
        message.contains("nothing was changed") && message.contains("1 row(s)"),
        "{message}"
    );
    // Nothing changed: `blue` is still allowed, and no migration recorded.
    client.execute(insert, &[]).await.unwrap();
    let after: i64 = client
        .query_one("SELECT count(*) FROM sinew_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    // Once the rows are changed, it applies.
    client
        .execute("UPDATE item SET color = 'red'", &[])
        .await
        .unwrap();
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    apply(&mut client, &spec(&v2), &m).await.unwrap();
    assert!(client.execute(insert, &[]).await.is_err());
}

/// A new required field without a default on a table that has rows:
/// even with `--allow-destructive`, the rows are counted first and the
/// migration refused, saying what to do; nothing changes. On an empty
/// table it applies.
#[tokio::test]
async fn a_new_required_field_on_rows_is_refused_before_anything_runs() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |fields: Value| {
        json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": fields}},
               "tools": {}})
    };
    let v1 = revision(json!({"name": {"type": "string"}}));
    let v2 = revision(json!({"name": {"type": "string"}, "color": {"type": "string"}}));
    let m = plan(Some(&client), &spec(&v1), false).await.unwrap();
    apply(&mut client, &spec(&v1), &m).await.unwrap();
    let insert = "INSERT INTO item (id, version, created_at, updated_at, name) \
                  VALUES (gen_random_uuid(), 1, now(), now(), 'a')";
    client.execute(insert, &[]).await.unwrap();
    client.execute(insert, &[]).await.unwrap();
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    let e = apply(&mut client, &spec(&v2), &m).await.err().unwrap();
    let message = format!("{e:#}");
    assert!(
        message.contains("nothing was changed")
            && message.contains("2 row(s) would have no value for `color`")
            && message.contains("give the field a `default`"),
        "{message}"
    );
    assert!(
        columns(&client, "item")
            .await
            .iter()
            .all(|(c, _, _)| c != "color")
    );
    client.execute("DELETE FROM item", &[]).await.unwrap();
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    apply(&mut client, &spec(&v2), &m).await.unwrap();
    assert!(
        columns(&client, "item")
            .await
            .iter()
            .any(|(c, _, _)| c == "color")
    );
}

/// A field's type changed where it has a CHECK, both ways (a string with
/// `maxLength` to an integer, an integer with bounds to a string): the
/// CHECK of the former type is dropped before the type changes and the
/// new one added after, the rows it would refuse counted first on the
/// converted values.
#[tokio::test]
async fn a_type_change_with_a_check_applies() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |code: Value| {
        json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": {
            "code": code}}}, "tools": {}})
    };
    let text = revision(json!({"type": "string", "maxLength": 20, "nullable": true}));
    let number = revision(json!({"type": "integer", "nullable": true}));
    let bounded = revision(json!({"type": "integer", "minimum": 0, "maximum": 99}));
    let short = revision(json!({"type": "string", "maxLength": 1}));
    for v in [&text, &number, &text, &bounded] {
        let m = plan(Some(&client), &spec(v), true).await.unwrap();
        apply(&mut client, &spec(v), &m)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", m.sql));
    }
    let insert = |code: &str| {
        format!(
            "INSERT INTO item (id, version, created_at, updated_at, code) \
             VALUES (gen_random_uuid(), 1, now(), now(), {code})"
        )
    };
    assert!(client.execute(&insert("100"), &[]).await.is_err());
    client.execute(&insert("42"), &[]).await.unwrap();
    // `42` is two characters: counted before anything runs.
    let m = plan(Some(&client), &spec(&short), true).await.unwrap();
    let e = apply(&mut client, &spec(&short), &m).await.err().unwrap();
    let message = format!("{e:#}");
    assert!(
        message.contains("nothing was changed") && message.contains("1 row(s)"),
        "{message}"
    );
    client.execute("DELETE FROM item", &[]).await.unwrap();
    let m = plan(Some(&client), &spec(&short), true).await.unwrap();
    apply(&mut client, &spec(&short), &m).await.unwrap();
    assert!(client.execute(&insert("'ab'"), &[]).await.is_err());
    client.execute(&insert("'a'"), &[]).await.unwrap();
    let again = plan(Some(&client), &spec(&short), true).await.unwrap();
    assert!(again.plan.steps.is_empty(), "{}", again.plan.human());
}

/// A field renamed and made nullable at once, from a `NOT NULL` field
/// with a default: while the rename is in progress (expanded, as `sinew
/// serve` of the new spec leaves it), a row the new spec's servers insert
/// without the field keeps it null (the former column's default is not
/// copied into it), and setting it to null is taken (the trigger copies
/// the null into the former column). The previous spec's servers, which
/// write every field, still fill both.
#[tokio::test]
async fn a_rename_to_a_nullable_field_takes_nulls_while_in_progress() {
    let cluster = Cluster::start();
    let (client, _) = mid_rename(
        &cluster,
        json!({"s1": {"type": "string", "default": "it's"}}),
        json!({"s2": {"type": "string", "nullable": true, "renamedFrom": "s1"}}),
    )
    .await;
    // As the new spec's servers insert: every field of theirs, s2 null.
    let new = "00000000-0000-4000-8000-000000000001";
    insert(&client, new, "s2", "NULL").await.unwrap();
    assert_eq!(read(&client, new).await, (None, None));
    // As the previous spec's servers insert: s1 (its default filled in).
    let old = "00000000-0000-4000-8000-000000000002";
    insert(&client, old, "s1", "'it''s'").await.unwrap();
    let both = Some("it's".to_owned());
    assert_eq!(read(&client, old).await, (both.clone(), both));
    // The new spec sets it to null.
    client
        .execute(
            &format!("UPDATE item SET s2 = NULL WHERE id = '{old}'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(read(&client, old).await, (None, None));
}

/// A field renamed and widened at once (`maxLength` 5 to 20): while the
/// rename is in progress, a value only the new rule allows, written under
/// the new name, is taken (the trigger copies it into the former column,
/// whose narrower `CHECK` once refused it); the previous spec's servers
/// still write theirs; and the new `CHECK` still refuses what it must.
#[tokio::test]
async fn a_rename_that_widens_the_check_takes_wider_values_while_in_progress() {
    let cluster = Cluster::start();
    let (client, m) = mid_rename(
        &cluster,
        json!({"s1": {"type": "string", "maxLength": 5}}),
        json!({"s2": {"type": "string", "maxLength": 20, "renamedFrom": "s1"}}),
    )
    .await;
    let plan = m.plan.human();
    assert!(
        plan.contains("`s1`'s CHECK dropped: `s2`'s judges both"),
        "{plan}"
    );
    // As the new spec's servers write: a value of 12 characters.
    let new = "00000000-0000-4000-8000-000000000001";
    insert(&client, new, "s2", "'twelve chars'").await.unwrap();
    let wide = Some("twelve chars".to_owned());
    assert_eq!(read(&client, new).await, (wide.clone(), wide));
    // As the previous spec's servers write.
    let old = "00000000-0000-4000-8000-000000000002";
    insert(&client, old, "s1", "'short'").await.unwrap();
    let short = Some("short".to_owned());
    assert_eq!(read(&client, old).await, (short.clone(), short));
    // Past the new rule, under either name: refused.
    let long = format!("'{}'", "x".repeat(21));
    for (id, column) in [
        ("00000000-0000-4000-8000-000000000003", "s2"),
        ("00000000-0000-4000-8000-000000000004", "s1"),
    ] {
        let e = insert(&client, id, column, &long).await.unwrap_err();
        assert!(format!("{e:?}").contains("check"), "{column}: {e:?}");
    }
}

/// A database of spec `paint` (one entity `Item`) migrated with the
/// fields `from`, then expanded to the fields `to` (a rename among them)
/// as `sinew serve` of that spec leaves it: the rename in progress.
/// Returns a connection and the expansion applied.
async fn mid_rename(
    cluster: &Cluster,
    from: Value,
    to: Value,
) -> (tokio_postgres::Client, Migration) {
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |fields: Value| {
        spec(
            &json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": fields}},
               "tools": {}}),
        )
    };
    let (v1, v2) = (revision(from), revision(to));
    let m = plan(Some(&client), &v1, false).await.unwrap();
    apply(&mut client, &v1, &m).await.unwrap();
    let m =
        sinew_host::pg::migrate::plan_for(Some(&client), &v2, sinew_host::pg::migrate::Mode::Serve)
            .await
            .unwrap();
    assert!(m.complete, "{:?}", m.destructive);
    apply(&mut client, &v2, &m).await.unwrap();
    (client, m)
}

/// Inserts item `id` with `column` set to the SQL literal `value`, as a
/// server that writes only that field would.
async fn insert(
    client: &tokio_postgres::Client,
    id: &str,
    column: &str,
    value: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO item (id, version, created_at, updated_at, {column}) \
                 VALUES ('{id}', 1, now(), now(), {value})"
            ),
            &[],
        )
        .await
}

/// Columns `s1` and `s2` of item `id`.
async fn read(client: &tokio_postgres::Client, id: &str) -> (Option<String>, Option<String>) {
    let r = client
        .query_one(&format!("SELECT s1, s2 FROM item WHERE id = '{id}'"), &[])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// A `ref` pointed at another entity moves its foreign key: the plan
/// sees it (it used to say the schema matched, leaving the key to the
/// former target, which refused every write), `sinew serve` does not
/// start until it is applied, rows referencing an id the new target lacks
/// refuse it before anything runs, and once applied the key is the new
/// target's.
#[tokio::test]
async fn a_ref_pointed_at_another_entity_moves_its_foreign_key() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |target: &str| {
        json!({"sinew": "0.2", "name": "tags", "entities": {
            "Item": {"fields": {"name": {"type": "string"}}},
            "Box": {"fields": {"name": {"type": "string"}}},
            "Tag": {"fields": {"item": {"type": "ref", "entity": target}}}}, "tools": {}})
    };
    let (v1, v2) = (revision("Item"), revision("Box"));
    let m = plan(Some(&client), &spec(&v1), false).await.unwrap();
    apply(&mut client, &spec(&v1), &m).await.unwrap();
    let row = |table: &str, id: &str| {
        format!(
            "INSERT INTO {table} (id, version, created_at, updated_at, name) \
             VALUES ('{id}', 1, now(), now(), 'x')"
        )
    };
    let tag = |item: &str| {
        format!(
            "INSERT INTO tag (id, version, created_at, updated_at, item) \
             VALUES (gen_random_uuid(), 1, now(), now(), '{item}')"
        )
    };
    let (item, boxed) = (
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
    );
    client.execute(&row("item", item), &[]).await.unwrap();
    client.execute(&row("box", boxed), &[]).await.unwrap();
    client.execute(&tag(item), &[]).await.unwrap();
    let serve = sinew_host::pg::migrate::plan_for(
        Some(&client),
        &spec(&v2),
        sinew_host::pg::migrate::Mode::Serve,
    )
    .await
    .unwrap();
    assert!(
        !serve.complete
            && serve.destructive[0]
                .contains("point the foreign key of `item` at `box` (it references `item`)"),
        "{:?}",
        serve.destructive
    );
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    let e = apply(&mut client, &spec(&v2), &m).await.err().unwrap();
    let message = format!("{e:#}");
    assert!(
        message.contains("nothing was changed")
            && message.contains("1 row(s) reference an id `box` does not have"),
        "{message}"
    );
    client.execute("DELETE FROM tag", &[]).await.unwrap();
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    apply(&mut client, &spec(&v2), &m).await.unwrap();
    client.execute(&tag(boxed), &[]).await.unwrap();
    assert!(client.execute(&tag(item), &[]).await.is_err());
    let again = plan(Some(&client), &spec(&v2), true).await.unwrap();
    assert!(again.plan.steps.is_empty(), "{}", again.plan.human());
}

/// A field made required with a `default` holding `$$`: its nulls are
/// filled with it (the batches' `DO` block is quoted with a tag the
/// default does not hold; with `$$` the default ended the block early and
/// the migration failed on a syntax error, left unfinished).
#[tokio::test]
async fn a_default_with_dollar_quotes_fills_the_nulls() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |note: Value| {
        json!({"sinew": "0.2", "name": "notes", "entities": {"Item": {"fields": {
            "note": note}}}, "tools": {}})
    };
    let v1 = revision(json!({"type": "string", "nullable": true}));
    let v2 = revision(json!({"type": "string", "default": "it's \"q\" $$ x"}));
    let m = plan(Some(&client), &spec(&v1), false).await.unwrap();
    apply(&mut client, &spec(&v1), &m).await.unwrap();
    client
        .execute(
            "INSERT INTO item (id, version, created_at, updated_at, note) \
             VALUES (gen_random_uuid(), 1, now(), now(), NULL)",
            &[],
        )
        .await
        .unwrap();
    let m = plan(Some(&client), &spec(&v2), true).await.unwrap();
    apply(&mut client, &spec(&v2), &m).await.unwrap();
    let note: String = client
        .query_one("SELECT note FROM item", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "it's \"q\" $$ x");
    let again = plan(Some(&client), &spec(&v2), true).await.unwrap();
    assert!(again.plan.steps.is_empty(), "{}", again.plan.human());
}

/// A field renamed and narrowed at once (`maxLength` 20 to 5) over a row
/// the new rule refuses: `sinew serve` of the new spec expands the rename
/// without the narrower `CHECK` (the previous spec's servers go on
/// writing their values, the copy finishes), and leaves the narrowing;
/// `sinew migrate --apply --allow-destructive` counts the row first and
/// refuses, changing nothing; once the row is changed, it applies.
#[tokio::test]
async fn a_rename_that_narrows_the_check_is_a_narrowing_counted_first() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |fields: Value| {
        spec(
            &json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": fields}},
               "tools": {}}),
        )
    };
    let v1 = revision(json!({"s1": {"type": "string", "maxLength": 20}}));
    let v2 = revision(json!({"s2": {"type": "string", "maxLength": 5, "renamedFrom": "s1"}}));
    let m = plan(Some(&client), &v1, false).await.unwrap();
    apply(&mut client, &v1, &m).await.unwrap();
    let long = "00000000-0000-4000-8000-000000000001";
    insert(&client, long, "s1", "'twelve chars'").await.unwrap();
    // As `sinew serve` of the new spec: the rename, not the narrowing.
    let m =
        sinew_host::pg::migrate::plan_for(Some(&client), &v2, sinew_host::pg::migrate::Mode::Serve)
            .await
            .unwrap();
    assert!(m.complete, "{:?}", m.destructive);
    apply(&mut client, &v2, &m).await.unwrap();
    let twelve = Some("twelve chars".to_owned());
    assert_eq!(read(&client, long).await, (twelve.clone(), twelve));
    // The previous spec's servers still write what their rule allows.
    let old = "00000000-0000-4000-8000-000000000002";
    insert(&client, old, "s1", "'eleven char'").await.unwrap();
    // With `--allow-destructive`: the two rows are counted, nothing runs.
    let m = plan(Some(&client), &v2, true).await.unwrap();
    let human = m.plan.human();
    assert!(
        human.contains("add a CHECK to `s2`"),
        "the narrowing is planned: {human}"
    );
    let e = apply(&mut client, &v2, &m).await.err().unwrap();
    let message = format!("{e:#}");
    assert!(
        message.contains("nothing was changed") && message.contains("2 row(s)"),
        "{message}"
    );
    insert(
        &client,
        "00000000-0000-4000-8000-000000000003",
        "s2",
        "'still long'",
    )
    .await
    .unwrap();
    client
        .execute("UPDATE item SET s2 = left(s2, 5)", &[])
        .await
        .unwrap();
    let m = plan(Some(&client), &v2, true).await.unwrap();
    apply(&mut client, &v2, &m)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", m.sql));
    let e = insert(
        &client,
        "00000000-0000-4000-8000-000000000004",
        "s2",
        "'sixsix'",
    )
    .await
    .unwrap_err();
    assert!(format!("{e:?}").contains("check"), "{e:?}");
    let again = plan(Some(&client), &v2, true).await.unwrap();
    assert!(again.plan.steps.is_empty(), "{}", again.plan.human());
}

/// A type change that would change values rather than convert them is
/// counted first and refused, changing nothing: `number` to `integer`
/// over a fraction (the cast rounds), `integer` to `number` over an
/// integer a double cannot hold, `string` to `timestamp` over text that
/// is not RFC 3339 (Postgres reads `now` and `today`). `timestamp` and
/// `json` to `string` write the forms sinew reads: RFC 3339 in UTC, a
/// JSON string's own text.
#[tokio::test]
async fn type_changes_that_would_change_values_are_refused_first() {
    let cluster = Cluster::start();
    let url = cluster.database().await;
    let mut client = connect_url(&url).await;
    let revision = |ty: &str| {
        spec(
            &json!({"sinew": "0.2", "name": "paint", "entities": {"Item": {"fields": {
            "v": {"type": ty, "nullable": true}}}}, "tools": {}}),
        )
    };
    let refused = async |client: &mut tokio_postgres::Client, to: &str, rows: i64| {
        let m = plan(Some(client), &revision(to), true).await.unwrap();
        let e = apply(client, &revision(to), &m).await.err().unwrap();
        let message = format!("{e:#}");
        assert!(
            message.contains("nothing was changed") && message.contains(&format!("{rows} row(s)")),
            "{to}: {message}"
        );
    };
    let to = async |client: &mut tokio_postgres::Client, ty: &str| {
        let m = plan(Some(client), &revision(ty), true).await.unwrap();
        apply(client, &revision(ty), &m)
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e:#}\n{}", m.sql));
    };
    let values = async |client: &tokio_postgres::Client| -> Vec<String> {
        client
            .query("SELECT v::text FROM item ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect()
    };
    to(&mut client, "number").await;
    for (i, v) in ["1.5", "2", "NULL"].iter().enumerate() {
        insert(
            &client,
            &format!("00000000-0000-4000-8000-00000000000{i}"),
            "v",
            v,
        )
        .await
        .unwrap();
    }
    refused(&mut client, "integer", 1).await;
    assert_eq!(values(&client).await, ["1.5", "2", ""]);
    client
        .execute("UPDATE item SET v = 1 WHERE v = 1.5", &[])
        .await
        .unwrap();
    to(&mut client, "integer").await;
    assert_eq!(values(&client).await, ["1", "2", ""]);
    client
        .execute("UPDATE item SET v = 9007199254740993 WHERE v = 2", &[])
        .await
        .unwrap();
    refused(&mut client, "number", 1).await;
    client
        .execute("UPDATE item SET v = 9007199254740994 WHERE v > 2", &[])
        .await
        .unwrap();
    to(&mut client, "number").await;
    to(&mut client, "string").await;
    client
        .execute("UPDATE item SET v = 'now' WHERE v = '1'", &[])
        .await
        .unwrap();
    refused(&mut client, "timestamp", 2).await;
    client
        .execute(
            "UPDATE item SET v = CASE WHEN v = 'now' THEN '2026-12-07T10:00:00.120+01:00' \
             ELSE '2026-12-07 23:59:59Z' END WHERE v IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    to(&mut client, "timestamp").await;
    to(&mut client, "string").await;
    assert_eq!(
        values(&client).await,
        ["2026-12-07T09:00:00.12Z", "2026-12-07T23:59:59Z", ""]
    );
    to(&mut client, "json").await;
    client
        .execute(
            "UPDATE item SET v = '{\"a\": [1, \"x\"]}' WHERE v = '\"2026-12-07T23:59:59Z\"'",
            &[],
        )
        .await
        .unwrap();
    to(&mut client, "string").await;
    assert_eq!(
        values(&client).await,
        ["2026-12-07T09:00:00.12Z", r#"{"a": [1, "x"]}"#, ""]
    );
}
