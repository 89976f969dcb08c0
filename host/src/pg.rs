//! Storage on Postgres: each typed operation of the `storage` import becomes
//! one parameterized statement (prepared once per connection), each
//! transaction holds one pooled connection until it commits or rolls back.
//!
//! The audit chain (A1–A4 of the architecture) lives in `sinew_audit`: an
//! entry is queued in the transaction of the writes it records
//! (`sinew_audit_queue`, no lock: requests of every instance commit in
//! parallel), and the sequencer ([`sequencer`]) moves queued entries into
//! the chain shortly after, one batch at a time across every instance, so
//! `seq` has no gaps and each `prev` is the hash of the entry before it.

pub mod checkpoint;
pub mod embedded;
pub mod migrate;
pub mod pool;
pub mod reviews;
pub mod schema;
pub mod sequencer;

use serde_json::Value;
use sinew_core::ports::IDEMPOTENCY_TTL_MS;
use sinew_core::ports::{
    Claim, FilterOp, Include, Isolation, Link, Predicate, Query, Row, StorageError,
};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::runtime::storage::StorageBackend;
use pool::{Conn, Pool, unavailable};
use schema::{Schema, Table, Ty};

/// SQL giving timestamp `expr` as RFC 3339 text in UTC
/// (`2026-12-06T05:35:06Z`, or with `.MS` milliseconds when `millis`), for
/// listings that print times as the rest of sinew does.
pub fn rfc3339_sql(expr: &str, millis: bool) -> String {
    let fraction = if millis { ".MS" } else { "" };
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS{fraction}\"Z\"')")
}

/// The outbox's and the audit queue's backlog.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    /// Messages not delivered (nor failed for good).
    pub outbox_pending: i64,
    /// How long the oldest due one has waited, in ms.
    pub outbox_lag_ms: i64,
    /// Entries waiting for their place in the chain.
    pub audit_queued: i64,
    /// How long the oldest has waited, in ms.
    pub audit_lag_ms: i64,
}

/// The statements of sinew's own tables (audit chain, idempotency keys,
/// rate windows), public so that the benchmark's hand-written baseline
/// issues exactly these.
pub mod sql {
    /// The advisory lock key that orders appends to the audit chain
    /// (`'sinew'` in ASCII): the sequencer holds it while it chains a batch
    /// (and servers of sinew 0.1 while they append).
    pub const AUDIT_LOCK: i64 = 0x0073_696e_6577;
    /// Takes the audit chain's lock until the transaction ends.
    pub const LOCK_CHAIN: &str = "SELECT pg_advisory_xact_lock($1::text::bigint)";
    /// Queues an audit entry (in the request's transaction; no lock):
    /// execution, kind, the canonical text, its SHA-256.
    pub const QUEUE_AUDIT: &str = "INSERT INTO sinew_audit_queue (execution, kind, entry, digest) \
             VALUES ($1, $2, $3, $4)";
    /// Appends one entry to the audit chain, after the head it reads (under
    /// the chain's lock): `$1 || prev || $2 || seq || $3` is the entry's
    /// text. How sinew 0.1 appended, on every request; the benchmark's
    /// locked baseline (C) still does.
    pub const APPEND: &str = "WITH last AS (SELECT seq, hash FROM sinew_audit ORDER BY seq DESC LIMIT 1), \
                 head AS (SELECT coalesce((SELECT seq FROM last), 0) AS seq, \
                                 coalesce((SELECT hash FROM last), $6) AS hash), \
                 t AS (SELECT seq + 1 AS seq, hash AS prev, \
                              $1 || hash || $2 || (seq + 1)::text || $3 AS entry FROM head) \
                 INSERT INTO sinew_audit (seq, execution, kind, entry, prev, hash) \
                 SELECT seq, $4, $5, entry, prev, encode(sha256(convert_to(entry, 'UTF8')), 'hex') FROM t";
    /// Claims an idempotency key: a row back means the claim is new.
    pub const CLAIM: &str = "INSERT INTO sinew_idempotency (scope, key, fingerprint, claimed_at) \
                 VALUES ($1, $2, $3, to_timestamp($4::text::bigint / 1000.0)) \
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                   claimed_at = EXCLUDED.claimed_at, status = NULL, body = NULL \
                 WHERE (sinew_idempotency.claimed_at <= EXCLUDED.claimed_at - interval '24 hours' \
                        AND ($1 NOT LIKE 'cron:%' OR sinew_idempotency.status IS NULL)) \
                    OR (sinew_idempotency.status IS NULL \
                        AND sinew_idempotency.claimed_at <= EXCLUDED.claimed_at - interval '15 minutes') \
                 RETURNING 1";
    /// The state of a key whose claim was not new.
    pub const STATE: &str = "SELECT fingerprint, status::text, body FROM sinew_idempotency \
             WHERE scope = $1 AND key = $2";
    /// Stores a finished request's answer under its key.
    pub const COMPLETE: &str = "UPDATE sinew_idempotency SET status = $3::text::integer, body = $4 \
             WHERE scope = $1 AND key = $2";
    /// Releases a claim that did not finish (a stored answer is kept).
    pub const RELEASE: &str =
        "DELETE FROM sinew_idempotency WHERE scope = $1 AND key = $2 AND status IS NULL";
    /// Records an outbox message (in the request's transaction).
    pub const ENQUEUE: &str = "INSERT INTO sinew_messages (message) VALUES ($1)";
    /// Counts one request in a subject's rate window.
    pub const RATE: &str = "INSERT INTO sinew_rate (scope, window_start, hits) \
             VALUES ($1, to_timestamp($2::text::bigint / 1000.0), 1) \
             ON CONFLICT (scope, window_start) DO UPDATE SET hits = sinew_rate.hits + 1 \
             RETURNING hits::text";
}

use sql::{CLAIM, COMPLETE, QUEUE_AUDIT, RATE, RELEASE, STATE};

/// The statements nearly every request runs, prepared on the connection
/// the server starts with (see [`PgBackend::warm_catalog`]).
const WARM_STATEMENTS: [&str; 2] = [QUEUE_AUDIT, CLAIM];

/// A root transaction: its connection, held until it ends.
struct Root {
    conn: tokio::sync::Mutex<Option<Conn>>,
    isolation: Isolation,
    /// Set while a statement runs: still set at rollback means the request
    /// was abandoned mid-statement (its deadline), and the statement must
    /// be cancelled rather than waited for.
    busy: std::sync::atomic::AtomicBool,
    /// Audit entries waiting for the commit (queued in its round trip),
    /// with the handle that appended each (a savepoint's are dropped with
    /// it).
    pending: Mutex<Vec<(u64, Params)>>,
    /// Read committed: the rows this transaction holds a row lock on (read
    /// `FOR UPDATE` or updated by it), by entity and id, as it sees them.
    /// Nothing but this transaction can change such a row until it ends,
    /// so a read of one by id is answered from here, without a round trip
    /// while the lock is held. Emptied when a savepoint rolls back (its
    /// locks and changes are gone).
    locked: Mutex<HashMap<(String, String), Row>>,
    /// Whether it recorded an outbox message (its commit wakes the
    /// deliverer).
    enqueued: std::sync::atomic::AtomicBool,
    /// Read committed: outbox messages waiting for the commit (sent in its
    /// round trip), with the handle that recorded each.
    messages: Mutex<Vec<(u64, Params)>>,
}

impl Root {
    /// Whether rows this transaction locks are remembered (see `locked`).
    fn remembers(&self) -> bool {
        self.isolation == Isolation::ReadCommitted
    }

    /// Remembers rows this transaction now holds locked.
    fn remember<'r>(&self, entity: &str, rows: impl IntoIterator<Item = &'r Row>) {
        if !self.remembers() {
            return;
        }
        let Ok(mut locked) = self.locked.lock() else {
            return;
        };
        for row in rows {
            if let Some(Value::String(id)) = row.get("id") {
                locked.insert((entity.to_owned(), id.clone()), row.clone());
            }
        }
    }

    /// Forgets what was remembered of `rows` (changed since).
    fn forget(&self, entity: &str, rows: &[Row]) {
        let Ok(mut locked) = self.locked.lock() else {
            return;
        };
        if locked.is_empty() {
            return;
        }
        for row in rows {
            if let Some(Value::String(id)) = row.get("id") {
                locked.remove(&(entity.to_owned(), id.clone()));
            }
        }
    }

    /// The answer to `q` from the rows this transaction holds locked, when
    /// it can be given exactly: one live row named by id, every filter an
    /// equality of strings on a text or uuid column that the row meets.
    /// `None` sends the query to the database.
    fn recall(&self, entity: &str, table: &Table, q: &Query) -> Option<Vec<Row>> {
        if !self.remembers() || q.after.is_some() || q.limit == Some(0) || !q.include.is_empty() {
            return None;
        }
        // Only plain comparisons (no `and`/`or`/`not`) are answered here.
        let conditions = q
            .filters
            .iter()
            .map(|p| match p {
                Predicate::Is(c) => Some(c),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let id = conditions.iter().find_map(|c| match (&c.op, &c.value) {
            (FilterOp::Eq, Value::String(id)) if c.field == "id" => Some(id),
            _ => None,
        })?;
        let locked = self.locked.lock().ok()?;
        let row = locked.get(&(entity.to_owned(), id.clone()))?;
        if !row.get("deleted_at").is_none_or(Value::is_null) {
            return None;
        }
        let exact = conditions.iter().all(|c| {
            c.op == FilterOp::Eq
                && table
                    .column(&c.field)
                    .is_some_and(|col| matches!(col.ty, Ty::Text | Ty::Uuid))
                && matches!((row.get(&c.field), &c.value),
                    (Some(Value::String(have)), Value::String(want)) if have == want)
        });
        exact.then(|| vec![row.clone()])
    }
}

/// A transaction handle: a root, or a savepoint inside one.
struct Handle {
    root: Arc<Root>,
    savepoint: Option<String>,
}

/// The Postgres backend.
pub struct PgBackend {
    pool: Pool,
    schema: Schema,
    txs: Mutex<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
    /// A connection outside the pool, for releasing idempotency keys while
    /// the pool may be full.
    aux: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// The component hash, added to every audit entry.
    component: Option<String>,
    /// Reads answered from a transaction's locked rows.
    recalled: AtomicU64,
    /// Told when a transaction that recorded outbox messages commits.
    pub outbox_ready: Arc<tokio::sync::Notify>,
    /// Told when audit entries were queued (the sequencer chains them).
    pub audit_ready: Arc<tokio::sync::Notify>,
}

/// A statement's parameters, as text (each cast in its SQL).
pub type Params = Vec<Option<String>>;

/// `p` as a statement's parameters.
pub fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The columns of a unique violation's key, from its detail (`Key (a,
/// b)=(1, 2) already exists.`), joined by `,`.
fn key_columns(detail: &str) -> Option<String> {
    let rest = detail.strip_prefix("Key (")?;
    let (columns, _) = rest.split_once(")=(")?;
    Some(columns.split(", ").collect::<Vec<_>>().join(","))
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::Invalid {
        message: message.into(),
    }
}

impl PgBackend {
    /// A backend for `spec`'s tables on the database `config` names, with at
    /// most `pool_size` connections.
    pub fn new(
        config: tokio_postgres::Config,
        spec: &sinew_core::spec::Spec,
        pool_size: usize,
        component: Option<String>,
    ) -> PgBackend {
        let mut config = config;
        if config.get_application_name().is_none() {
            config.application_name("sinew");
        }
        // A transaction whose request is gone must not hold its locks for
        // long: the server ends sessions idle in a transaction for 60 s.
        let options = config.get_options().unwrap_or("").to_owned();
        config.options(format!("{options} -c idle_in_transaction_session_timeout=60000").trim());
        PgBackend {
            pool: Pool::new(config, pool_size),
            schema: Schema::of(spec),
            txs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            aux: tokio::sync::Mutex::new(None),
            component,
            recalled: AtomicU64::new(0),
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
            audit_ready: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A connection of its own, outside the pool.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, StorageError> {
        self.pool.connect().await
    }

    /// How many reads were answered from rows their transaction holds
    /// locked, without a round trip.
    pub fn recalled(&self) -> u64 {
        self.recalled.load(Ordering::Relaxed)
    }

    /// Opens connections ahead of the first requests, one at a time,
    /// until `n` are idle (see [`Pool::fill`]).
    pub async fn warm(&self, n: usize) {
        let _ = self.pool.fill(n).await;
    }

    /// A connection of the pool, for work outside a request (the
    /// migration at start): give it back with [`PgBackend::give_back`], and
    /// it serves the first request without a new connection.
    pub async fn connection(&self) -> Result<Conn, StorageError> {
        self.pool.get().await
    }

    /// Has the server behind `client` load its catalog for every table the
    /// spec's requests touch (each `SELECT … LIMIT 0` is planned, not run)
    /// and prepares the statements nearly every request runs, all in one
    /// round trip: a new backend otherwise pays for that during its first
    /// request. Give the statements to the connection with
    /// [`Conn::remember`]. Only an optimization: the caller may ignore an
    /// error (a database not migrated yet has none of the tables).
    pub async fn warm_catalog(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<(&'static str, tokio_postgres::Statement)>, tokio_postgres::Error> {
        let mut sql = String::new();
        for table in self.schema.tables() {
            sql.push_str(&format!(
                "SELECT {} FROM {} LIMIT 0;",
                table.select, table.sql
            ));
        }
        sql.push_str(
            "SELECT id, digest FROM sinew_audit_queue LIMIT 0;\
             SELECT status, body FROM sinew_idempotency LIMIT 0;\
             SELECT hits FROM sinew_rate LIMIT 0;",
        );
        // Sent together: the client pipelines them on the connection.
        let (catalog, prepared) = tokio::join!(
            client.batch_execute(&sql),
            futures_util::future::join_all(WARM_STATEMENTS.map(|q| client.prepare(q)))
        );
        catalog?;
        WARM_STATEMENTS
            .into_iter()
            .zip(prepared)
            .map(|(q, s)| s.map(|s| (q, s)))
            .collect()
    }

    /// Returns a connection taken with [`PgBackend::connection`].
    pub fn give_back(&self, conn: Conn) {
        self.pool.put(conn);
    }

    /// How the connection pool is used.
    pub fn pool_stats(&self) -> pool::Stats {
        self.pool.stats()
    }

    /// The outbox's and the audit queue's backlog (for the gauges).
    pub async fn backlog(&self) -> Result<Backlog, StorageError> {
        let mut conn = self.pool.get().await?;
        let r = conn
            .client
            .query_one(
                "SELECT \
                   (SELECT count(*) FROM sinew_messages WHERE failed_at IS NULL), \
                   (SELECT coalesce((extract(epoch FROM now() - min(next_attempt_at)) * 1000)::bigint, 0) \
                      FROM sinew_messages WHERE failed_at IS NULL AND next_attempt_at <= now()), \
                   (SELECT count(*) FROM sinew_audit_queue), \
                   (SELECT coalesce((extract(epoch FROM clock_timestamp() - min(queued_at)) * 1000)::bigint, 0) \
                      FROM sinew_audit_queue)",
                &[],
            )
            .await;
        let r = self.check(&mut conn, r);
        self.pool.put(conn);
        let row = r?;
        Ok(Backlog {
            outbox_pending: row.get(0),
            outbox_lag_ms: row.get::<_, i64>(1).max(0),
            audit_queued: row.get(2),
            audit_lag_ms: row.get::<_, i64>(3).max(0),
        })
    }

    /// The API key whose SHA-256 is `hash` ([`crate::keys`]).
    pub async fn api_key(&self, hash: &str) -> Result<Option<crate::keys::Row>, StorageError> {
        let mut conn = self.pool.get().await?;
        let r = conn
            .client
            .query_opt(
                "SELECT id, roles, claims, \
                   (extract(epoch FROM expires_at) * 1000)::bigint, revoked_at IS NOT NULL \
                 FROM sinew_keys WHERE hash = $1",
                &[&hash],
            )
            .await;
        let r = self.check(&mut conn, r);
        self.pool.put(conn);
        Ok(r?.map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.pool.get().await?;
        let r = conn.client.simple_query("SELECT 1").await;
        let r = self.check(&mut conn, r.map(|_| ()));
        self.pool.put(conn);
        r
    }

    /// Deletes idempotency keys and rate windows that can no longer matter.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, StorageError> {
        let mut conn = self.pool.get().await?;
        // A cron tool's latest claimed time is kept: catch-up after
        // downtime must know whether it ran.
        let keys = format!(
            "DELETE FROM sinew_idempotency i WHERE claimed_at < to_timestamp({}::bigint / 1000.0) \
             AND (scope NOT LIKE '{}%' \
                  OR key < (SELECT max(key) FROM sinew_idempotency j WHERE j.scope = i.scope))",
            now_ms - IDEMPOTENCY_TTL_MS,
            sinew_core::cron::CLAIM_SCOPE_PREFIX
        );
        let rates = format!(
            "DELETE FROM sinew_rate WHERE window_start < to_timestamp({}::bigint / 1000.0)",
            now_ms - 3_600_000
        );
        let a = conn.client.execute(&keys, &[]).await;
        let a = self.check(&mut conn, a)?;
        let b = conn.client.execute(&rates, &[]).await;
        let b = self.check(&mut conn, b)?;
        self.pool.put(conn);
        Ok(a + b)
    }

    /// Records a cron tool's schedule and answers when it was first seen
    /// (ms): now for a tool or schedule (or time zone) not recorded before,
    /// else the first instance's time. Catch-up covers only times after.
    pub async fn record_schedule(
        &self,
        tool: &str,
        schedule: &str,
        timezone: &str,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        let mut conn = self.pool.get().await?;
        let r = conn
            .client
            .query_one(
                "WITH new AS ( \
                   INSERT INTO sinew_schedule (tool, schedule, timezone, first_seen) \
                   VALUES ($1, $2, $3, to_timestamp($4::text::bigint / 1000.0)) \
                   ON CONFLICT (tool) DO UPDATE SET schedule = EXCLUDED.schedule, \
                     timezone = EXCLUDED.timezone, first_seen = EXCLUDED.first_seen \
                   WHERE (sinew_schedule.schedule, sinew_schedule.timezone) \
                     IS DISTINCT FROM (EXCLUDED.schedule, EXCLUDED.timezone) \
                   RETURNING first_seen) \
                 SELECT floor(extract(epoch FROM coalesce( \
                   (SELECT first_seen FROM new), \
                   (SELECT first_seen FROM sinew_schedule WHERE tool = $1))) * 1000)::bigint::text",
                &[&tool, &schedule, &timezone, &now_ms.to_string()],
            )
            .await;
        let r = self.check(&mut conn, r)?;
        self.pool.put(conn);
        let ms: Option<String> = r.get(0);
        ms.and_then(|m| m.parse().ok())
            .ok_or_else(|| invalid(format!("the schedule of `{tool}` was not recorded")))
    }

    fn table(&self, entity: &str) -> Result<&Table, StorageError> {
        self.schema
            .table(entity)
            .ok_or_else(|| invalid(format!("no entity `{entity}`")))
    }

    /// Maps a database error, marking the connection broken when it is.
    fn check<T>(
        &self,
        conn: &mut Conn,
        r: Result<T, tokio_postgres::Error>,
    ) -> Result<T, StorageError> {
        r.map_err(|e| {
            let err = self.error(&e);
            if matches!(err, StorageError::Unavailable { .. }) || conn.client.is_closed() {
                conn.broken = true;
            }
            err
        })
    }

    fn error(&self, e: &tokio_postgres::Error) -> StorageError {
        let Some(db) = e.as_db_error() else {
            return unavailable(&format!("the database connection failed: {e}"));
        };
        let code = db.code();
        if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            StorageError::Conflict {
                message: db.message().to_owned(),
            }
        } else if *code == SqlState::UNIQUE_VIOLATION {
            match db.constraint().and_then(|c| self.schema.unique.get(c)) {
                Some((entity, field)) => StorageError::Unique {
                    entity: entity.clone(),
                    field: field.clone(),
                },
                None => match db.table().and_then(|t| self.schema.entity_of(t)) {
                    None => invalid(db.message()),
                    Some(entity) => {
                        let columns = db.detail().and_then(key_columns);
                        let primary = match &columns {
                            Some(c) => c == "id",
                            None => db.constraint().is_some_and(|c| c.ends_with("_pkey")),
                        };
                        if primary {
                            // The primary key: an id already taken is a
                            // conflict, as in the in-memory store (another
                            // request's row won).
                            StorageError::Conflict {
                                message: db.message().to_owned(),
                            }
                        } else {
                            // A unique index the spec does not have (a
                            // previous spec's, which `sinew serve` leaves
                            // until `sinew migrate --apply` drops it): the
                            // value is taken for it, and a retry would be
                            // refused again.
                            StorageError::Unique {
                                entity: entity.to_owned(),
                                field: columns.unwrap_or_default(),
                            }
                        }
                    }
                },
            }
        } else if code.code().starts_with("08")
            || code.code().starts_with("57")
            || code.code().starts_with("53")
        {
            unavailable(db.message())
        } else {
            invalid(format!("{} ({})", db.message(), code.code()))
        }
    }

    fn handle(&self, tx: u64) -> Result<Arc<Handle>, StorageError> {
        self.txs
            .lock()
            .ok()
            .and_then(|m| m.get(&tx).cloned())
            .ok_or_else(|| invalid(format!("transaction {tx} is unknown or finished")))
    }

    fn register(&self, h: Handle) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.txs.lock() {
            m.insert(id, Arc::new(h));
        }
        id
    }

    fn forget(&self, tx: u64) {
        if let Ok(mut m) = self.txs.lock() {
            m.remove(&tx);
        }
    }

    /// Runs `f` on the connection of `tx` (or a pooled one for `None`).
    async fn on<T>(
        &self,
        tx: Option<u64>,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StorageError> {
        match tx {
            None => {
                let mut conn = self.pool.get().await?;
                let r = f(&mut conn).await;
                let r = self.check(&mut conn, r);
                self.pool.put(conn);
                r
            }
            Some(tx) => {
                let h = self.handle(tx)?;
                let mut guard = h.root.conn.lock().await;
                let Some(conn) = guard.as_mut() else {
                    return Err(unavailable("the transaction's connection was lost"));
                };
                h.root.busy.store(true, Ordering::SeqCst);
                let r = f(conn).await;
                h.root.busy.store(false, Ordering::SeqCst);
                self.check(conn, r)
            }
        }
    }

    /// A write in transaction `tx`. One that fails leaves the transaction
    /// aborted (Postgres refuses its statements until it, or the savepoint
    /// around the write, is rolled back): the core goes on after a failed
    /// operation only through a savepoint it opened for the purpose
    /// (`docs/embedding.md`, "Statement atomicity"), so none is taken
    /// here. (A savepoint around every write cost Postgres ~130 µs of CPU
    /// per transaction of three writes.)
    async fn write(
        &self,
        tx: u64,
        sql: &str,
        params: &Params,
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        self.write_refs(tx, sql, &refs(params)).await
    }

    /// [`Self::write`] with parameters of any type (arrays).
    async fn write_refs(
        &self,
        tx: u64,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        self.on(Some(tx), async |c| {
            let stmt = c.prepare(sql).await?;
            c.client.query(&stmt, p).await
        })
        .await
    }

    /// [`Self::write_refs`] in a savepoint (pipelined: one round trip): a
    /// failed write leaves the transaction usable. Only for a write whose
    /// failure this backend examines in the transaction afterwards (which
    /// of an update-many's rows missed).
    async fn write_in_savepoint(
        &self,
        tx: u64,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        self.on(Some(tx), async |c| {
            let stmt = c.prepare(sql).await?;
            let client = &c.client;
            let (sp, rows, rel) = tokio::join!(
                client.batch_execute("SAVEPOINT sinew_op"),
                client.query(&stmt, p),
                client.batch_execute("RELEASE SAVEPOINT sinew_op"),
            );
            let r = sp.and(rows.and_then(|r| rel.map(|()| r)));
            if r.is_err()
                && client
                    .batch_execute("ROLLBACK TO SAVEPOINT sinew_op; RELEASE SAVEPOINT sinew_op")
                    .await
                    .is_err()
            {
                c.broken = true;
            }
            r
        })
        .await
    }

    /// The `SELECT … WHERE … ORDER BY … LIMIT … FOR UPDATE` of a query.
    fn query_sql(
        &self,
        table: &Table,
        q: &Query,
        params: &mut Params,
    ) -> Result<String, StorageError> {
        self.query_sql_of(table, &table.select, q, params)
    }

    /// [`Self::query_sql`] selecting `select` (and the includes).
    fn query_sql_of(
        &self,
        table: &Table,
        select: &str,
        q: &Query,
        params: &mut Params,
    ) -> Result<String, StorageError> {
        let filters = where_sql(&self.schema, table, &q.filters, params)?;
        let mut select = select.to_owned();
        for inc in &q.include {
            let embed = include_sql(&self.schema, table, "s0", inc, 1, params)?;
            let _ = write!(select, ", ({embed})::text");
        }
        let mut sql = format!("SELECT {select} FROM {} AS s0 WHERE {filters}", table.sql);
        let column = |name: &str| {
            table
                .column(name)
                .ok_or_else(|| invalid(format!("no column `{name}`")))
        };
        if let Some(after) = &q.after {
            let mut ors = Vec::new();
            for (i, (key, v)) in q.order.iter().zip(after).enumerate() {
                // Every placeholder pushed is used: Postgres cannot type a
                // parameter the statement does not mention.
                let col = column(&key.field)?;
                let prior = q
                    .order
                    .iter()
                    .zip(after)
                    .take(i)
                    .map(|(k, pv)| column(&k.field).map(|c| c.ty.encode(pv).ok().map(|t| (c, t))))
                    .collect::<Result<Option<Vec<_>>, _>>()?;
                let Some(prior) = prior else { continue };
                // Ascending puts nulls last, descending first.
                let strict = match (col.ty.encode(v), key.desc) {
                    (Ok(None), false) | (Err(_), _) => continue,
                    (Ok(None), true) => format!("{} IS NOT NULL", col.sql),
                    (Ok(Some(t)), desc) => {
                        let p = placeholder(params, t, col.ty);
                        let cmp = if desc { "<" } else { ">" };
                        if desc {
                            format!("{} {cmp} {p}", collated(col))
                        } else {
                            format!("({} {cmp} {p} OR {} IS NULL)", collated(col), col.sql)
                        }
                    }
                };
                let mut ands = Vec::new();
                for (col, t) in prior {
                    ands.push(match t {
                        None => format!("{} IS NULL", col.sql),
                        Some(t) => {
                            format!("{} = {}", collated(col), placeholder(params, t, col.ty))
                        }
                    });
                }
                ands.push(strict);
                ors.push(format!("({})", ands.join(" AND ")));
            }
            let _ = write!(
                sql,
                " AND ({})",
                if ors.is_empty() {
                    "FALSE".to_owned()
                } else {
                    ors.join(" OR ")
                }
            );
        }
        let _ = write!(sql, " ORDER BY {}", order_sql(table, &q.order, Some("s0"))?);
        if let Some(n) = q.limit {
            let _ = write!(sql, " LIMIT {n}");
        }
        if q.lock {
            sql.push_str(" FOR UPDATE");
        }
        Ok(sql)
    }

    /// A row of a query's result and its includes (the columns after the
    /// table's).
    fn row_with(&self, table: &Table, r: &tokio_postgres::Row, include: &[Include]) -> Row {
        let mut row = table.row(r);
        if !include.is_empty() {
            let width = table.width();
            let texts = (0..include.len())
                .map(|i| r.try_get::<_, Option<String>>(width + i).ok().flatten())
                .collect();
            embed_rows(&self.schema, &mut row, include, texts);
        }
        row
    }

    /// Why an update or delete by id and version changed nothing.
    async fn missed(&self, tx: u64, table: &Table, entity: &str, id: &str) -> StorageError {
        let sql = format!(
            "SELECT \"version\" FROM {} WHERE \"id\" = $1::text::uuid AND \"deleted_at\" IS NULL",
            table.sql
        );
        let params: Params = vec![Some(id.to_owned())];
        match self
            .on(Some(tx), async |c| {
                let s = c.prepare(&sql).await?;
                c.client.query_opt(&s, &refs(&params)).await
            })
            .await
        {
            Ok(Some(_)) => StorageError::Conflict {
                message: format!("`{entity}` row `{id}` was changed by another transaction"),
            },
            Ok(None) => StorageError::NotFound {
                entity: entity.to_owned(),
                id: id.to_owned(),
            },
            Err(e) => e,
        }
    }

    /// Why an update of several rows by id and version changed nothing: the
    /// first row that is gone (404) or has another version (409).
    async fn missed_many(
        &self,
        tx: u64,
        table: &Table,
        entity: &str,
        keys: &[(String, i64)],
    ) -> StorageError {
        let sql = format!(
            "SELECT \"id\"::text, \"version\" FROM {} \
             WHERE \"id\" = ANY($1::text[]::uuid[]) AND \"deleted_at\" IS NULL",
            table.sql
        );
        let ids: Vec<Option<String>> = keys.iter().map(|(id, _)| Some(id.clone())).collect();
        let found = match self
            .on(Some(tx), async |c| {
                let s = c.prepare(&sql).await?;
                c.client.query(&s, &[&ids]).await
            })
            .await
        {
            Ok(rows) => rows,
            Err(e) => return e,
        };
        let versions: HashMap<String, i64> = found
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        for (id, expected) in keys {
            match versions.get(&id.to_ascii_lowercase()) {
                None => {
                    return StorageError::NotFound {
                        entity: entity.to_owned(),
                        id: id.clone(),
                    };
                }
                Some(v) if v != expected => {
                    return StorageError::Conflict {
                        message: format!(
                            "`{entity}` row `{id}` was changed by another transaction"
                        ),
                    };
                }
                Some(_) => {}
            }
        }
        StorageError::Conflict {
            message: format!("a `{entity}` row was changed by another transaction"),
        }
    }

    /// The parameters of the `QUEUE_AUDIT` of an entry, with the
    /// component's hash: made when the entry comes; the transaction keeps
    /// these, not the entry, until its commit. (The outbox's deliverer
    /// queues its entries itself, with its rows' changes.)
    pub fn queue_params(&self, entry: &Value) -> Result<Params, StorageError> {
        let text = |k: &str, default: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let queued = queued_text(entry, self.component.as_deref()).map_err(invalid)?;
        let digest = sinew_core::hash::sha256_hex(queued.as_bytes());
        Ok(vec![
            Some(text("execution", "")),
            Some(text("kind", "final")),
            Some(queued),
            Some(digest),
        ])
    }

    /// Queues audit entries, records outbox messages and ends the
    /// transaction in one round trip: the `INSERT`s and the `COMMIT` are
    /// pipelined (after `BEGIN` too with `begin`). No lock is taken: the
    /// sequencer chains the entries after the commit.
    async fn queue_and_commit(
        &self,
        conn: &mut Conn,
        entries: &[Params],
        messages: &[Params],
        begin: bool,
    ) -> Result<(), StorageError> {
        let queue = if entries.is_empty() {
            None
        } else {
            let s = conn.prepare(QUEUE_AUDIT).await;
            Some(self.check(conn, s)?)
        };
        let enqueue = if messages.is_empty() {
            None
        } else {
            let s = conn.prepare(sql::ENQUEUE).await;
            Some(self.check(conn, s)?)
        };
        let mps: Vec<_> = messages.iter().map(refs).collect();
        let eps: Vec<_> = entries.iter().map(refs).collect();
        let client = &conn.client;
        let start = async {
            if begin {
                client
                    .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await
            } else {
                Ok(())
            }
        };
        let enqueues = futures_util::future::join_all(
            enqueue
                .iter()
                .flat_map(|s| mps.iter().map(move |p| client.execute(s, p))),
        );
        let queued = futures_util::future::join_all(
            queue
                .iter()
                .flat_map(|s| eps.iter().map(move |p| client.execute(s, p))),
        );
        let (b, e, q, c) = tokio::join!(start, enqueues, queued, client.batch_execute("COMMIT"));
        // After a failed statement the COMMIT only rolled back: report the
        // first failure.
        let first = b
            .err()
            .or_else(|| e.into_iter().find_map(Result::err))
            .or_else(|| q.into_iter().find_map(Result::err))
            .map_or(c, Err);
        self.check(conn, first)?;
        if !entries.is_empty() {
            self.audit_ready.notify_one();
        }
        Ok(())
    }
}

/// The text an entry is queued with: its canonical JSON without `seq`,
/// `prev` and `hash` (the sequencer adds the first two and computes the
/// third, [`sinew_core::chain::seal_entry`]), with `component` as its
/// `component` when it has none.
pub fn queued_text(entry: &Value, component: Option<&str>) -> Result<String, String> {
    let Value::Object(m) = entry else {
        return Err("an audit entry must be a JSON object".into());
    };
    // Written from the entry's members, without copying the entry (its
    // tape may hold every row the request read).
    let (key, stamp) = ("component".to_owned(), component.map(Value::from));
    let stamped = stamp
        .as_ref()
        .filter(|_| !m.contains_key("component"))
        .map(|v| (&key, v));
    Ok(sinew_core::hash::canonical_members(
        m.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "seq" | "prev" | "hash"))
            .chain(stamped),
    ))
}

/// The canonical text of an audit entry (as `seal_entry` makes it) cut
/// where the previous hash and the sequence number go: `a + prev + b +
/// seq + c` is the text that is hashed. `component` is the entry's
/// `component` when it has none.
pub fn splice_parts(entry: &Value, component: Option<&str>) -> Result<[String; 3], String> {
    let Value::Object(m) = entry else {
        return Err("an audit entry must be a JSON object".into());
    };
    let mut items: Vec<(&str, Option<String>)> = m
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "hash" | "seq" | "prev"))
        .map(|(k, v)| (k.as_str(), Some(sinew_core::hash::canonical(v))))
        .collect();
    if let Some(c) = component
        && !m.contains_key("component")
    {
        items.push((
            "component",
            Some(sinew_core::hash::canonical(&Value::from(c))),
        ));
    }
    items.push(("prev", None));
    items.push(("seq", None));
    items.sort_unstable_by(|x, y| x.0.cmp(y.0));
    let mut parts = vec![String::from("{")];
    for (i, (k, v)) in items.into_iter().enumerate() {
        let Some(cur) = parts.last_mut() else {
            return Err("unreachable".into());
        };
        if i > 0 {
            cur.push(',');
        }
        cur.push_str(&Value::from(k).to_string());
        cur.push(':');
        match (k, v) {
            (_, Some(v)) => cur.push_str(&v),
            ("prev", None) => {
                cur.push('"');
                parts.push(String::from("\""));
            }
            _ => parts.push(String::new()),
        }
    }
    if let Some(last) = parts.last_mut() {
        last.push('}');
    }
    <[String; 3]>::try_from(parts).map_err(|_| "could not cut the entry".to_owned())
}

/// One column's values as the text of a `text[]` parameter.
type TextArray = Vec<Option<String>>;

/// Rows of the same columns (but `skip`) as the columns of `table` and one
/// text array per column, for `unnest($1::text[], …)`; `what` names the
/// operation in errors.
fn columnar<'t>(
    table: &'t Table,
    entity: &str,
    rows: &[Row],
    skip: &[&str],
    what: &str,
) -> Result<(Vec<&'t schema::Column>, Vec<TextArray>), StorageError> {
    let Some(first) = rows.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let names: Vec<&String> = first
        .keys()
        .filter(|k| !skip.contains(&k.as_str()))
        .collect();
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let col = table
            .column(name)
            .ok_or_else(|| invalid(format!("`{entity}` has no column `{name}`")))?;
        columns.push(col);
    }
    let same = || invalid(format!("every row of {what} has the same columns"));
    let mut arrays: Vec<TextArray> = vec![Vec::with_capacity(rows.len()); names.len()];
    for row in rows {
        if row.keys().filter(|k| !skip.contains(&k.as_str())).count() != names.len() {
            return Err(same());
        }
        for ((name, col), array) in names.iter().zip(&columns).zip(arrays.iter_mut()) {
            let v = row.get(*name).ok_or_else(same)?;
            array.push(
                col.ty
                    .encode(v)
                    .map_err(|e| invalid(format!("`{entity}.{name}`: {e}")))?,
            );
        }
    }
    Ok((columns, arrays))
}

/// `unnest($1::text[], …) AS v(…)`: one `text[]` parameter per name, the
/// `lead` names first, then `c0`, `c1`, … for `columns` columns.
fn unnest_sql(lead: &[&str], columns: usize) -> String {
    let names: Vec<String> = lead
        .iter()
        .map(|n| (*n).to_owned())
        .chain((0..columns).map(|i| format!("c{i}")))
        .collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}::text[]")).collect();
    format!("unnest({}) AS v({})", params.join(", "), names.join(", "))
}

/// Text arrays as the parameters of [`unnest_sql`].
fn text_params(arrays: &[TextArray]) -> Vec<&(dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// The rows a statement wrote, in the order of `ids` (`None` unless each
/// id names exactly one of them).
fn in_order<'i>(
    table: &Table,
    written: &[tokio_postgres::Row],
    ids: impl ExactSizeIterator<Item = &'i str>,
) -> Option<Vec<Row>> {
    let mut by_id: HashMap<String, Row> = written
        .iter()
        .map(|r| table.row(r))
        .filter_map(|r| {
            let id = r.get("id")?.as_str()?.to_ascii_lowercase();
            Some((id, r))
        })
        .collect();
    let n = ids.len();
    let rows: Vec<Row> = ids
        .filter_map(|id| by_id.remove(&id.to_ascii_lowercase()))
        .collect();
    (rows.len() == n && by_id.is_empty()).then_some(rows)
}

/// Binds `v` as the next parameter for column `k` of `table`: the column
/// and its placeholder (`$n::text::type`).
fn bind<'t>(
    table: &'t Table,
    entity: &str,
    k: &str,
    v: &Value,
    params: &mut Params,
) -> Result<(&'t schema::Column, String), StorageError> {
    let col = table
        .column(k)
        .ok_or_else(|| invalid(format!("`{entity}` has no column `{k}`")))?;
    let text = col
        .ty
        .encode(v)
        .map_err(|e| invalid(format!("`{entity}.{k}`: {e}")))?;
    params.push(text);
    Ok((col, format!("${}::text::{}", params.len(), col.ty.sql())))
}

/// Binds the text `v` as the next parameter, of type `ty`: its
/// placeholder (`$n::text::type`).
fn placeholder(params: &mut Params, v: String, ty: Ty) -> String {
    params.push(Some(v));
    format!("${}::text::{}", params.len(), ty.sql())
}

/// The conditions of a query's rows: live, and its filters.
fn where_sql(
    schema: &Schema,
    table: &Table,
    filters: &[Predicate],
    params: &mut Params,
) -> Result<String, StorageError> {
    let mut sql = "\"deleted_at\" IS NULL".to_owned();
    for p in filters {
        let cond = predicate_sql(schema, table, p, false, params)?;
        let _ = write!(sql, " AND {cond}");
    }
    Ok(sql)
}

/// The select-list expression of an include, embedding in each row of the
/// table aliased `parent` its related rows as JSON: a row is an array of
/// its columns' text (as [`Table::row`] reads them) followed by its own
/// includes; a `many` include is an array of such rows (empty for none), a
/// `one` include such a row or null. `depth` names the aliases.
fn include_sql(
    schema: &Schema,
    parent_table: &Table,
    parent: &str,
    inc: &Include,
    depth: usize,
    params: &mut Params,
) -> Result<String, StorageError> {
    let table = schema
        .table(&inc.entity)
        .ok_or_else(|| invalid(format!("no entity `{}`", inc.entity)))?;
    let alias = format!("s{depth}");
    let mut parts: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.ty.select(&format!("{alias}.{}", c.sql)))
        .collect();
    for nested in &inc.include {
        parts.push(include_sql(
            schema,
            table,
            &alias,
            nested,
            depth + 1,
            params,
        )?);
    }
    // A function takes at most 100 arguments: a wide row is built in
    // pieces, joined as jsonb arrays (which keep their order).
    let tuple = if parts.len() <= 100 {
        format!("json_build_array({})", parts.join(", "))
    } else {
        let pieces: Vec<String> = parts
            .chunks(100)
            .map(|c| format!("json_build_array({})::jsonb", c.join(", ")))
            .collect();
        format!("({})", pieces.join(" || "))
    };
    let live = where_sql(schema, table, &inc.filters, params)?;
    Ok(match &inc.link {
        Link::One(field) => {
            let col = parent_table
                .column(field)
                .ok_or_else(|| invalid(format!("no column `{field}`")))?;
            format!(
                "(SELECT {tuple} FROM {} AS {alias} WHERE \"id\" = {parent}.{} AND {live})",
                table.sql, col.sql
            )
        }
        Link::Many(by) => {
            let col = table
                .column(by)
                .ok_or_else(|| invalid(format!("no column `{by}`")))?;
            let order = order_sql(table, &inc.order, None)?;
            let limit = inc.limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
            format!(
                "(SELECT coalesce(json_agg({tuple} ORDER BY {order}), '[]'::json) FROM \
                 (SELECT * FROM {} WHERE {} = {parent}.\"id\" AND {live} ORDER BY {order}{limit}) AS {alias})",
                table.sql, col.sql
            )
        }
    })
}

/// A row's includes from the text of their columns (see [`include_sql`]).
fn embed_rows(schema: &Schema, row: &mut Row, include: &[Include], texts: Vec<Option<String>>) {
    for (inc, text) in include.iter().zip(texts) {
        let v = text
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null);
        row.insert(inc.name.clone(), embedded(schema, inc, v));
    }
}

/// One include's JSON (an array of column texts and includes, or a list
/// of them) as rows.
fn embedded(schema: &Schema, inc: &Include, v: Value) -> Value {
    let Some(table) = schema.table(&inc.entity) else {
        return Value::Null;
    };
    let one = |v: Value| -> Value {
        let Value::Array(items) = v else {
            return Value::Null;
        };
        let mut items = items.into_iter();
        let mut row = Row::with_capacity(table.columns.len() + inc.include.len());
        for c in &table.columns {
            let text = match items.next() {
                Some(Value::String(t)) => Some(t),
                _ => None,
            };
            row.insert(c.name.clone(), c.ty.decode(text.as_deref()));
        }
        for nested in &inc.include {
            let v = items.next().unwrap_or(Value::Null);
            row.insert(nested.name.clone(), embedded(schema, nested, v));
        }
        Value::Object(row)
    };
    match (&inc.link, v) {
        (Link::One(_), v) => one(v),
        (Link::Many(_), Value::Array(list)) => Value::Array(list.into_iter().map(one).collect()),
        (Link::Many(_), _) => Value::Array(Vec::new()),
    }
}

/// The SQL of a predicate, read with two values as every engine reads it:
/// under `not` (`negated`), a comparison that SQL would find unknown
/// (a null column) counts as false before it is negated, so `not` of it
/// is true. Outside `not`, unknown and false both leave a row out.
fn predicate_sql(
    schema: &Schema,
    table: &Table,
    p: &Predicate,
    negated: bool,
    params: &mut Params,
) -> Result<String, StorageError> {
    Ok(match p {
        Predicate::Via(hop, inner) => {
            let col = table
                .column(&hop.field)
                .ok_or_else(|| invalid(format!("no column `{}`", hop.field)))?;
            let target = schema
                .table(&hop.entity)
                .ok_or_else(|| invalid(format!("no entity `{}`", hop.entity)))?;
            let inner = predicate_sql(schema, target, inner, false, params)?;
            // The referenced row, soft-deleted or not; a null column is in
            // no set.
            let sql = format!(
                "{} IN (SELECT \"id\" FROM {} WHERE {inner})",
                col.sql, target.sql
            );
            if negated {
                format!("({sql}) IS NOT TRUE")
            } else {
                sql
            }
        }
        Predicate::Is(c) => {
            let sql = condition_sql(table, c, params)?;
            if negated {
                format!("({sql}) IS NOT TRUE")
            } else {
                sql
            }
        }
        Predicate::All(list) | Predicate::Any(list) => {
            // De Morgan: `not all` is `any not`, `not any` is `all not`.
            let all = matches!(p, Predicate::All(_)) != negated;
            if list.is_empty() {
                return Ok(if all { "TRUE" } else { "FALSE" }.to_owned());
            }
            let parts = list
                .iter()
                .map(|p| predicate_sql(schema, table, p, negated, params))
                .collect::<Result<Vec<_>, _>>()?;
            format!("({})", parts.join(if all { " AND " } else { " OR " }))
        }
        Predicate::Not(p) => predicate_sql(schema, table, p, !negated, params)?,
    })
}

/// The most members of an `in`/`notIn` list given a parameter each; a
/// longer list is one array parameter.
const IN_PARAMS: usize = 32;

/// A whole double that fits 64 bits as that integer; `None` for anything
/// else (and for a list with no such member).
fn whole_i64(n: &serde_json::Number) -> Option<i64> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let f = n.as_f64().filter(|_| n.is_f64())?;
    (f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f)).then_some(f as i64)
}

/// `v` with its whole doubles that fit 64 bits as integers (a value, or a
/// list's members); `None` when it has none.
fn whole_integers(v: &Value) -> Option<Value> {
    match v {
        Value::Number(n) => whole_i64(n).map(Value::from),
        Value::Array(items) if items.iter().any(|i| whole_integers(i).is_some()) => {
            Some(Value::Array(
                items
                    .iter()
                    .map(|i| whole_integers(i).unwrap_or_else(|| i.clone()))
                    .collect(),
            ))
        }
        _ => None,
    }
}

/// A number's exact decimal text, for a `numeric` parameter: a whole
/// double written out in full (its shortest text, `9.223372036854776e18`
/// for 2⁶³, is another number); a fraction by its shortest text, which
/// lies between the same two integers as the double itself.
fn exact_decimal(n: &serde_json::Number) -> String {
    match n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
        Some(f) => format!("{f:.0}"),
        None => n.to_string(),
    }
}

/// One comparison, as SQL that is true or false, or unknown only where
/// false would do (a null column).
fn condition_sql(
    table: &Table,
    c: &sinew_core::ports::Condition,
    params: &mut Params,
) -> Result<String, StorageError> {
    let col = table
        .column(&c.field)
        .ok_or_else(|| invalid(format!("no column `{}`", c.field)))?;
    // An integer column against a whole double in 64 bits compares with
    // that integer (the double −2⁶³ is the integer −2⁶³), in a list too.
    let as_integers;
    let c = match (col.ty, whole_integers(&c.value)) {
        (Ty::Integer, Some(value)) => {
            as_integers = sinew_core::ports::Condition {
                field: c.field.clone(),
                op: c.op,
                value,
            };
            &as_integers
        }
        _ => c,
    };
    let lhs = collated(col);
    // A short list is a parameter per member (`IN ($1, $2)`): a generic
    // plan then knows how many members there are, and probes the index
    // for them. A longer one is one parameter, an array (a statement takes
    // at most 65 535 parameters, and a list may be longer), cast once per
    // execution by an InitPlan rather than once per row a scan reads. Only
    // the members the column could hold count.
    let in_list = |params: &mut Params, list: &[Value]| {
        let members: Vec<String> = list
            .iter()
            .filter_map(|v| col.ty.encode(v).ok().flatten())
            .collect();
        if members.is_empty() {
            return None;
        }
        if members.len() <= IN_PARAMS {
            let items: Vec<String> = members
                .into_iter()
                .map(|m| placeholder(params, m, col.ty))
                .collect();
            return Some(format!("{} IN ({})", col.sql, items.join(", ")));
        }
        let mut array = String::from("{");
        for (i, text) in members.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push('"');
            for ch in text.chars() {
                if matches!(ch, '"' | '\\') {
                    array.push('\\');
                }
                array.push(ch);
            }
            array.push('"');
        }
        array.push('}');
        params.push(Some(array));
        let ty = col.ty.sql();
        Some(format!(
            "{} = ANY(CAST((SELECT ${}::text::{ty}[]) AS {ty}[]))",
            col.sql,
            params.len()
        ))
    };
    Ok(match (&c.op, &c.value) {
        (FilterOp::Eq, Value::Null) => format!("{} IS NULL", col.sql),
        (FilterOp::Ne, Value::Null) => format!("{} IS NOT NULL", col.sql),
        (FilterOp::IsNull, Value::Bool(true)) => format!("{} IS NULL", col.sql),
        (FilterOp::IsNull, Value::Bool(false)) => format!("{} IS NOT NULL", col.sql),
        (FilterOp::In, Value::Array(list)) => match in_list(params, list) {
            None => "FALSE".to_owned(),
            Some(member) => member,
        },
        (FilterOp::NotIn, Value::Array(list)) => match in_list(params, list) {
            // A null column is in no list, so it is in none of them either.
            None => "TRUE".to_owned(),
            Some(member) => format!("({member}) IS NOT TRUE"),
        },
        (FilterOp::In | FilterOp::NotIn | FilterOp::IsNull, v) => {
            return Err(invalid(format!(
                "`{}` on `{}` cannot take {}",
                c.op.name(),
                c.field,
                sinew_core::diag::a_json(v)
            )));
        }
        (FilterOp::StartsWith | FilterOp::Contains | FilterOp::IContains, v) => {
            let (Value::String(needle), Ty::Text) = (v, col.ty) else {
                // Not text on both sides: contains nothing (as in memory).
                return Ok("FALSE".to_owned());
            };
            if needle.contains('\0') {
                // No stored text holds a NUL (and Postgres cannot bind one).
                return Ok("FALSE".to_owned());
            }
            match c.op {
                FilterOp::StartsWith => {
                    let p = placeholder(params, needle.clone(), Ty::Text);
                    format!("starts_with({}, {p})", col.sql)
                }
                FilterOp::Contains => {
                    let p = placeholder(params, needle.clone(), Ty::Text);
                    format!("strpos({}, {p}) > 0", col.sql)
                }
                _ => {
                    // ASCII letters only, on both sides, so that every
                    // engine agrees whatever the database's locale.
                    let p = placeholder(params, needle.to_ascii_lowercase(), Ty::Text);
                    format!(
                        "strpos(translate({}, '{ASCII_UPPER}', '{ASCII_LOWER}'), {p}) > 0",
                        col.sql
                    )
                }
            }
        }
        // An integer column against a fraction (or a number past 64 bits):
        // numbers compare numerically, so as `numeric`, written exactly
        // (the shortest text of the double 2⁶³, `9.223372036854776e18`, is
        // another number).
        (op @ (FilterOp::Lt | FilterOp::Lte | FilterOp::Gt | FilterOp::Gte), Value::Number(n))
            if col.ty == Ty::Integer && n.as_i64().is_none() =>
        {
            params.push(Some(exact_decimal(n)));
            let p = format!("${}::text::numeric", params.len());
            let cmp = match op {
                FilterOp::Lt => "<",
                FilterOp::Lte => "<=",
                FilterOp::Gt => ">",
                _ => ">=",
            };
            format!("{lhs} {cmp} {p}")
        }
        (op, v) => match col.ty.encode(v) {
            // A value of another type equals nothing and orders against
            // nothing (as in the in-memory store).
            Ok(None) | Err(_) => if *op == FilterOp::Ne { "TRUE" } else { "FALSE" }.to_owned(),
            Ok(Some(text)) => {
                let p = placeholder(params, text, col.ty);
                let p = if col.ty == Ty::Text {
                    format!("{p} COLLATE \"C\"")
                } else {
                    p
                };
                match op {
                    FilterOp::Ne => format!("{lhs} IS DISTINCT FROM {p}"),
                    FilterOp::Lt => format!("{lhs} < {p}"),
                    FilterOp::Lte => format!("{lhs} <= {p}"),
                    FilterOp::Gt => format!("{lhs} > {p}"),
                    FilterOp::Gte => format!("{lhs} >= {p}"),
                    _ => format!("{lhs} = {p}"),
                }
            }
        },
    })
}

const ASCII_UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ASCII_LOWER: &str = "abcdefghijklmnopqrstuvwxyz";

/// The `ORDER BY` list of sort keys, ending with `id` (a total order),
/// each column qualified with `of` when given: a bare name in `ORDER BY`
/// means an output column first, and a select list that reads a column as
/// text (`"price"::text AS "price"`) would sort by that text.
fn order_sql(
    table: &Table,
    order: &[sinew_core::ports::SortKey],
    of: Option<&str>,
) -> Result<String, StorageError> {
    let qualified = |sql: &str| of.map_or_else(|| sql.to_owned(), |t| format!("{t}.{sql}"));
    let mut out = Vec::with_capacity(order.len() + 1);
    for k in order {
        let col = table
            .column(&k.field)
            .ok_or_else(|| invalid(format!("no column `{}`", k.field)))?;
        out.push(format!(
            "{} {}",
            collated_as(col, qualified(&col.sql)),
            if k.desc { "DESC" } else { "ASC" }
        ));
    }
    if !order.iter().any(|k| k.field == "id") {
        out.push(format!("{} ASC", qualified("\"id\"")));
    }
    Ok(out.join(", "))
}

/// A column for comparisons and sorting: text compares by bytes, as
/// everywhere else in sinew.
fn collated(c: &schema::Column) -> String {
    collated_as(c, c.sql.clone())
}

/// [`collated`] for column `c` written as `name` (qualified).
fn collated_as(c: &schema::Column, name: String) -> String {
    if c.ty == Ty::Text {
        format!("{name} COLLATE \"C\"")
    } else {
        name
    }
}

fn isolation_sql(i: Isolation) -> &'static str {
    match i {
        Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
        Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
    }
}

#[async_trait::async_trait]
impl StorageBackend for PgBackend {
    async fn begin(&self, isolation: Isolation, parent: Option<u64>) -> Result<u64, StorageError> {
        match parent {
            None => {
                let mut conn = self.pool.get().await?;
                let r = conn.client.batch_execute(isolation_sql(isolation)).await;
                if let Err(e) = self.check(&mut conn, r) {
                    self.pool.put(conn);
                    return Err(e);
                }
                Ok(self.register(Handle {
                    root: Arc::new(Root {
                        conn: tokio::sync::Mutex::new(Some(conn)),
                        isolation,
                        busy: Default::default(),
                        pending: Mutex::new(Vec::new()),
                        messages: Mutex::new(Vec::new()),
                        locked: Mutex::new(HashMap::new()),
                        enqueued: std::sync::atomic::AtomicBool::new(false),
                    }),
                    savepoint: None,
                }))
            }
            Some(parent) => {
                let p = self.handle(parent)?;
                let name = format!("sinew_sp_{}", self.next.fetch_add(1, Ordering::Relaxed));
                let sql = format!("SAVEPOINT {name}");
                self.on(Some(parent), async |c| c.client.batch_execute(&sql).await)
                    .await?;
                Ok(self.register(Handle {
                    root: p.root.clone(),
                    savepoint: Some(name),
                }))
            }
        }
    }

    async fn read(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        let table = self.table(entity)?;
        let mut params = Params::new();
        let sql = self.query_sql(table, q, &mut params)?;
        let root = match tx {
            Some(tx) => Some(self.handle(tx)?.root.clone()),
            None if q.lock => return Err(invalid("a locking read needs a transaction")),
            None => None,
        };
        if let Some(rows) = root.as_ref().and_then(|r| r.recall(entity, table, q)) {
            self.recalled.fetch_add(1, Ordering::Relaxed);
            return Ok(rows);
        }
        let rows = self
            .on(tx, async |c| {
                let s = c.prepare(&sql).await?;
                c.client.query(&s, &refs(&params)).await
            })
            .await?;
        let rows: Vec<Row> = rows
            .iter()
            .map(|r| self.row_with(table, r, &q.include))
            .collect();
        // (Rows with includes are not remembered: a later read by id
        // would get their embedded rows.)
        if let (Some(root), true, true) = (&root, q.lock, q.include.is_empty()) {
            root.remember(entity, &rows);
        }
        Ok(rows)
    }

    async fn read_counted(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        let table = self.table(entity)?;
        let mut params = Params::new();
        let page = self.query_sql(table, q, &mut params)?;
        let matching = where_sql(&self.schema, table, &q.filters, &mut params)?;
        // One statement: the count always gives one row, and the page joins
        // it (none of its columns set when the page is empty).
        let sql = format!(
            "SELECT r.*, c.total FROM (SELECT count(*)::text AS total FROM {} WHERE {matching}) AS c \
             LEFT JOIN LATERAL ({page}) AS r ON TRUE",
            table.sql
        );
        let root = match tx {
            Some(tx) => Some(self.handle(tx)?.root.clone()),
            None if q.lock => return Err(invalid("a locking read needs a transaction")),
            None => None,
        };
        let found = self
            .on(tx, async |c| {
                let s = c.prepare(&sql).await?;
                c.client.query(&s, &refs(&params)).await
            })
            .await?;
        let width = table.width() + q.include.len();
        let total = found
            .first()
            .and_then(|r| r.try_get::<_, Option<&str>>(width).ok().flatten())
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| invalid("the count did not come back"))?;
        let rows: Vec<Row> = found
            .iter()
            .filter(|r| schema::cell(r, 0).is_some())
            .map(|r| self.row_with(table, r, &q.include))
            .collect();
        // (Rows with includes are not remembered: a later read by id
        // would get their embedded rows.)
        if let (Some(root), true, true) = (&root, q.lock, q.include.is_empty()) {
            root.remember(entity, &rows);
        }
        Ok((rows, total))
    }

    async fn aggregate(
        &self,
        tx: Option<u64>,
        entity: &str,
        filters: &[Predicate],
        group_by: &[String],
        measures: &[sinew_core::ports::Measure],
    ) -> Result<Vec<Row>, StorageError> {
        use sinew_core::ports::Tally;
        let table = self.table(entity)?;
        let column = |name: &str| {
            table
                .column(name)
                .ok_or_else(|| invalid(format!("no column `{name}`")))
        };
        let mut params = Params::new();
        let cond = where_sql(&self.schema, table, filters, &mut params)?;
        // Each output column, and the type it decodes as (`None`: a count
        // or a sum, an integer).
        let mut select: Vec<String> = Vec::new();
        let mut types: Vec<Option<Ty>> = Vec::new();
        let mut grouped = Vec::new();
        for f in group_by {
            let col = column(f)?;
            select.push(col.ty.select(&col.sql));
            types.push(Some(col.ty));
            grouped.push(col.sql.clone());
        }
        for m in measures {
            let col = match (&m.field, m.tally) {
                (_, Tally::Rows) => None,
                (Some(f), _) => Some(column(f)?),
                (None, _) => return Err(invalid(format!("measure `{}` needs a field", m.name))),
            };
            let (sql, ty) = match (m.tally, col) {
                (Tally::Rows, _) | (_, None) => ("count(*)::text".to_owned(), None),
                (Tally::Count, Some(c)) => (format!("count({})::text", c.sql), None),
                (Tally::Sum, Some(c)) => (format!("sum({})::text", c.sql), None),
                (Tally::Min | Tally::Max, Some(c)) => {
                    let f = if m.tally == Tally::Min { "min" } else { "max" };
                    // Text by bytes, as everywhere.
                    let arg = if c.ty == Ty::Text {
                        format!("{} COLLATE \"C\"", c.sql)
                    } else {
                        c.sql.clone()
                    };
                    (c.ty.select(&format!("{f}({arg})")), Some(c.ty))
                }
            };
            select.push(sql);
            types.push(ty);
        }
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {cond}",
            select.join(", "),
            table.sql
        );
        if !grouped.is_empty() {
            let _ = write!(sql, " GROUP BY {}", grouped.join(", "));
        }
        let found = self
            .on(tx, async |c| {
                let s = c.prepare(&sql).await?;
                c.client.query(&s, &refs(&params)).await
            })
            .await?;
        let names = group_by
            .iter()
            .map(String::as_str)
            .chain(measures.iter().map(|m| m.name.as_str()));
        let names: Vec<&str> = names.collect();
        let mut out = Vec::with_capacity(found.len());
        for r in &found {
            let mut row = Row::new();
            for (i, (name, ty)) in names.iter().zip(&types).enumerate() {
                let text: Option<&str> = r.try_get(i).ok().flatten();
                let v = match ty {
                    Some(ty) => ty.decode(text),
                    // A count, or a sum (0 over no value; past 64 bits its
                    // digits, as in memory).
                    None => match text {
                        None => Value::from(0),
                        Some(t) => t
                            .parse::<i64>()
                            .map_or_else(|_| Value::String(t.to_owned()), Value::from),
                    },
                };
                row.insert((*name).to_owned(), v);
            }
            out.push(row);
        }
        Ok(out)
    }

    async fn insert(&self, tx: u64, entity: &str, row: &Row) -> Result<Row, StorageError> {
        let table = self.table(entity)?;
        let mut cols = Vec::new();
        let mut vals = Vec::new();
        let mut params = Params::new();
        for (k, v) in row {
            let (col, placeholder) = bind(table, entity, k, v, &mut params)?;
            cols.push(col.sql.clone());
            vals.push(placeholder);
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
            table.sql,
            cols.join(", "),
            vals.join(", "),
            table.select
        );
        match self.write(tx, &sql, &params).await?.first() {
            Some(r) => Ok(table.row(r)),
            None => Err(invalid("the insert returned no row")),
        }
    }

    /// One statement: `INSERT … SELECT … FROM unnest(…)`, a text array
    /// per column; the rows in the order given.
    async fn insert_many(
        &self,
        tx: u64,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let [first, ..] = rows else {
            return Ok(Vec::new());
        };
        if rows.len() == 1 {
            return Ok(vec![self.insert(tx, entity, first).await?]);
        }
        let table = self.table(entity)?;
        let (columns, arrays) = columnar(table, entity, rows, &[], "an insert-many")?;
        let values: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, col)| format!("v.c{i}::{}", col.ty.sql()))
            .collect();
        let names: Vec<&str> = columns.iter().map(|col| col.sql.as_str()).collect();
        let sql = format!(
            "INSERT INTO {} ({}) SELECT {} FROM {} RETURNING {}",
            table.sql,
            names.join(", "),
            values.join(", "),
            unnest_sql(&[], columns.len()),
            table.select
        );
        let written = self.write_refs(tx, &sql, &text_params(&arrays)).await?;
        let ids = rows
            .iter()
            .map(|r| r.get("id").and_then(Value::as_str).unwrap_or_default());
        in_order(table, &written, ids).ok_or_else(|| invalid("an insert-many named a row twice"))
    }

    async fn update(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        let table = self.table(entity)?;
        let mut sets = Vec::new();
        let mut params = Params::new();
        for (k, v) in changes {
            if k == "id" || k == "version" {
                continue;
            }
            let (col, placeholder) = bind(table, entity, k, v, &mut params)?;
            sets.push(format!("{} = {placeholder}", col.sql));
        }
        sets.push("\"version\" = \"version\" + 1".into());
        params.push(Some(id.to_owned()));
        params.push(Some(version.to_string()));
        let n = params.len();
        let sql = format!(
            "UPDATE {} SET {} WHERE \"id\" = ${}::text::uuid AND \"version\" = ${}::text::bigint \
             AND \"deleted_at\" IS NULL RETURNING {}",
            table.sql,
            sets.join(", "),
            n - 1,
            n,
            table.select
        );
        if !sinew_core::hash::is_uuid(id) {
            return Err(StorageError::NotFound {
                entity: entity.to_owned(),
                id: id.to_owned(),
            });
        }
        match self.write(tx, &sql, &params).await?.first() {
            Some(r) => {
                // The update holds the row's lock until the transaction ends.
                let row = table.row(r);
                if let Ok(h) = self.handle(tx) {
                    h.root.remember(entity, [&row]);
                }
                Ok(row)
            }
            None => Err(self.missed(tx, table, entity, id).await),
        }
    }

    /// One statement: every row's changes from arrays (`unnest`), each row
    /// updated if its version is still the expected one; a guard makes the
    /// statement fail (so that nothing changed) when a row missed, and the
    /// first row that did says why. (The guard is the left side of the
    /// final join and its value is tested, so that the planner can neither
    /// skip it nor drop its unused output.)
    async fn update_many(
        &self,
        tx: u64,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        if keys.len() != changes.len() {
            return Err(invalid(format!(
                "{} rows to update and {} changes",
                keys.len(),
                changes.len()
            )));
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let table = self.table(entity)?;
        if let Some((id, _)) = keys.iter().find(|(id, _)| !sinew_core::hash::is_uuid(id)) {
            return Err(StorageError::NotFound {
                entity: entity.to_owned(),
                id: id.clone(),
            });
        }
        let (columns, changed) =
            columnar(table, entity, changes, &["id", "version"], "an update-many")?;
        let mut arrays: Vec<TextArray> = vec![
            keys.iter().map(|(id, _)| Some(id.clone())).collect(),
            keys.iter().map(|(_, v)| Some(v.to_string())).collect(),
        ];
        arrays.extend(changed);
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, col)| format!("{} = v.c{i}::{}", col.sql, col.ty.sql()))
            .chain(std::iter::once(
                "\"version\" = u.\"version\" + 1".to_owned(),
            ))
            .collect();
        let sql = format!(
            "WITH v AS (SELECT * FROM {}), \
             done AS (UPDATE {} AS u SET {} FROM v WHERE u.\"id\" = v.i::uuid \
               AND u.\"version\" = v.n::bigint AND u.\"deleted_at\" IS NULL RETURNING u.*), \
             guard AS (SELECT 1 / (CASE WHEN count(*) = {} THEN 1 ELSE 0 END) AS ok FROM done) \
             SELECT {} FROM guard LEFT JOIN done ON TRUE WHERE guard.ok = 1",
            unnest_sql(&["i", "n"], columns.len()),
            table.sql,
            sets.join(", "),
            keys.len(),
            table.select
        );
        let written = match self
            .write_in_savepoint(tx, &sql, &text_params(&arrays))
            .await
        {
            Ok(rows) => rows,
            // The guard: some row was changed or deleted since it was read.
            Err(StorageError::Invalid { message }) if message.ends_with("(22012)") => {
                return Err(self.missed_many(tx, table, entity, keys).await);
            }
            Err(e) => return Err(e),
        };
        let rows = in_order(table, &written, keys.iter().map(|(id, _)| id.as_str()))
            .ok_or_else(|| invalid("an update-many named a row twice"))?;
        if let Ok(h) = self.handle(tx) {
            h.root.forget(entity, &rows);
        }
        Ok(rows)
    }

    /// One statement: the picked rows locked in id order of the query, the
    /// changes written into each, the rows returned in the query's order.
    async fn update_where(
        &self,
        tx: u64,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        let table = self.table(entity)?;
        let mut params = Params::new();
        let picked = Query {
            lock: true,
            after: None,
            include: Vec::new(),
            ..q.clone()
        };
        let pick = self.query_sql_of(table, "\"id\"", &picked, &mut params)?;
        let mut sets = Vec::new();
        for (k, v) in changes {
            if k == "id" || k == "version" {
                continue;
            }
            let (col, placeholder) = bind(table, entity, k, v, &mut params)?;
            sets.push(format!("{} = {placeholder}", col.sql));
        }
        sets.push("\"version\" = u.\"version\" + 1".into());
        // In id order (the default) the rows are sorted here: a uuid's
        // text sorts as its bytes do in Postgres.
        let by_id = q.order.iter().all(|k| k.field == "id" && !k.desc);
        let sorted = if by_id {
            String::new()
        } else {
            format!(" ORDER BY {}", order_sql(table, &q.order, Some("done"))?)
        };
        let sql = format!(
            "WITH picked AS ({pick}), done AS (UPDATE {} AS u SET {} FROM picked \
             WHERE u.\"id\" = picked.\"id\" RETURNING u.*) SELECT {} FROM done{sorted}",
            table.sql,
            sets.join(", "),
            table.select,
        );
        let mut rows: Vec<Row> = self
            .write(tx, &sql, &params)
            .await?
            .iter()
            .map(|r| table.row(r))
            .collect();
        if by_id {
            fn id(r: &Row) -> &str {
                r.get("id").and_then(Value::as_str).unwrap_or_default()
            }
            rows.sort_unstable_by(|a, b| id(a).cmp(id(b)));
        }
        // The rows stay locked until the transaction ends, but what was
        // remembered of them is stale.
        if let Ok(h) = self.handle(tx) {
            h.root.forget(entity, &rows);
        }
        Ok(rows)
    }

    async fn soft_delete(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        at: &str,
    ) -> Result<Row, StorageError> {
        let mut changes = Row::new();
        changes.insert("deleted_at".into(), Value::from(at));
        self.update(tx, entity, id, version, &changes).await
    }

    async fn commit(&self, tx: u64) -> Result<(), StorageError> {
        let h = self.handle(tx)?;
        self.forget(tx);
        let mut guard = h.root.conn.lock().await;
        match &h.savepoint {
            Some(name) => {
                let Some(conn) = guard.as_mut() else {
                    return Err(unavailable("the transaction's connection was lost"));
                };
                let r = conn
                    .client
                    .batch_execute(&format!("RELEASE SAVEPOINT {name}"))
                    .await;
                self.check(conn, r)
            }
            None => {
                let Some(mut conn) = guard.take() else {
                    return Err(unavailable("the transaction's connection was lost"));
                };
                let pending: Vec<Params> = h
                    .root
                    .pending
                    .lock()
                    .map(|mut p| p.drain(..).map(|(_, e)| e).collect())
                    .unwrap_or_default();
                let messages: Vec<Params> = h
                    .root
                    .messages
                    .lock()
                    .map(|mut p| p.drain(..).map(|(_, m)| m).collect())
                    .unwrap_or_default();
                h.root.busy.store(true, Ordering::SeqCst);
                let r = if pending.is_empty() && messages.is_empty() {
                    let r = conn.client.batch_execute("COMMIT").await;
                    self.check(&mut conn, r)
                } else {
                    self.queue_and_commit(&mut conn, &pending, &messages, false)
                        .await
                };
                h.root.busy.store(false, Ordering::SeqCst);
                if r.is_err() {
                    // A failed COMMIT leaves no transaction open; a lost
                    // connection is dropped by `put`.
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                } else if h.root.enqueued.load(Ordering::SeqCst) {
                    self.outbox_ready.notify_one();
                }
                self.pool.put(conn);
                r
            }
        }
    }

    async fn rollback(&self, tx: u64) -> Result<(), StorageError> {
        let h = self.handle(tx)?;
        self.forget(tx);
        let mut guard = h.root.conn.lock().await;
        match &h.savepoint {
            Some(name) => {
                let Some(conn) = guard.as_mut() else {
                    return Ok(());
                };
                let r = conn
                    .client
                    .batch_execute(&format!(
                        "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
                    ))
                    .await;
                // Entries appended inside the savepoint are gone: drop the
                // ones waiting for the commit (handles at or after this
                // savepoint's).
                if let Ok(mut pending) = h.root.pending.lock() {
                    pending.retain(|(handle, _)| *handle < tx);
                }
                if let Ok(mut messages) = h.root.messages.lock() {
                    messages.retain(|(handle, _)| *handle < tx);
                }
                // Locks taken and changes made inside it are gone too.
                if let Ok(mut locked) = h.root.locked.lock() {
                    locked.clear();
                }
                self.check(conn, r)
            }
            None => {
                let Some(mut conn) = guard.take() else {
                    return Ok(());
                };
                if h.root.busy.load(Ordering::SeqCst) {
                    // Abandoned mid-statement: cancel it and drop the
                    // connection; the server rolls the transaction back.
                    let _ = conn
                        .client
                        .cancel_token()
                        .cancel_query(tokio_postgres::NoTls)
                        .await;
                    conn.broken = true;
                    self.pool.put(conn);
                    return Ok(());
                }
                let r = conn.client.batch_execute("ROLLBACK").await;
                // A rollback on a lost connection succeeded: the server
                // rolled back when it went away.
                let _ = self.check(&mut conn, r);
                self.pool.put(conn);
                Ok(())
            }
        }
    }

    async fn enqueue(&self, tx: u64, message: &Value) -> Result<(), StorageError> {
        for k in ["id", "execution", "tool", "node", "service", "operation"] {
            if !message.get(k).is_some_and(Value::is_string) {
                return Err(invalid(format!("an outbox message needs `{k}`")));
            }
        }
        let params: Params = vec![Some(message.to_string())];
        let h = self.handle(tx)?;
        h.root.enqueued.store(true, Ordering::SeqCst);
        if h.root.isolation == Isolation::ReadCommitted {
            // Sent with the COMMIT (see `queue_and_commit`).
            if let Ok(mut messages) = h.root.messages.lock() {
                messages.push((tx, params));
            }
            return Ok(());
        }
        self.on(Some(tx), async |c| {
            let s = c.prepare(sql::ENQUEUE).await?;
            c.client.execute(&s, &refs(&params)).await
        })
        .await
        .map(|_| ())
    }

    async fn append_audit(&self, tx: Option<u64>, entry: &Value) -> Result<(), StorageError> {
        let params = self.queue_params(entry)?;
        match tx {
            Some(tx) => {
                // Queued with the COMMIT (see `queue_and_commit`).
                let h = self.handle(tx)?;
                if let Ok(mut pending) = h.root.pending.lock() {
                    pending.push((tx, params));
                }
                Ok(())
            }
            None => {
                let mut conn = self.pool.get().await?;
                let r = self.queue_and_commit(&mut conn, &[params], &[], true).await;
                self.pool.put(conn);
                r
            }
        }
    }

    /// A key is forgotten after 24 hours; a claim still without a response
    /// after 15 minutes (its server died mid-request) is abandoned and may
    /// be claimed again.
    async fn claim_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        let params: Params = vec![
            Some(scope.to_owned()),
            Some(key.to_owned()),
            Some(fingerprint.to_owned()),
            Some(now_ms.to_string()),
        ];
        // The row may be released between the two statements: try again.
        for _ in 0..3 {
            let state = self
                .on(None, async |c| {
                    let s = c.prepare(CLAIM).await?;
                    if c.client.query_opt(&s, &refs(&params)).await?.is_some() {
                        return Ok(None);
                    }
                    let s = c.prepare(STATE).await?;
                    c.client
                        .query_opt(&s, &refs(&params[..2].to_vec()))
                        .await
                        .map(Some)
                })
                .await?;
            let row = match state {
                None => return Ok(Claim::New),
                Some(None) => continue,
                Some(Some(row)) => row,
            };
            let fp: String = row.get(0);
            let status: Option<String> = row.get(1);
            let body: Option<String> = row.get(2);
            if fp != fingerprint {
                return Ok(Claim::Mismatch);
            }
            return Ok(match status.and_then(|s| s.parse::<u16>().ok()) {
                None => Claim::InFlight,
                Some(status) => Claim::Replay {
                    status,
                    body: body
                        .and_then(|b| serde_json::from_str(&b).ok())
                        .unwrap_or(Value::Null),
                },
            });
        }
        Err(StorageError::Conflict {
            message: format!("idempotency key `{key}` kept changing"),
        })
    }

    async fn complete_key(
        &self,
        tx: Option<u64>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError> {
        let params: Params = vec![
            Some(scope.to_owned()),
            Some(key.to_owned()),
            Some(status.to_string()),
            Some(body.to_string()),
        ];
        self.on(tx, async |c| {
            let s = c.prepare(COMPLETE).await?;
            c.client.execute(&s, &refs(&params)).await
        })
        .await
        .map(|_| ())
    }

    async fn release_key(&self, scope: &str, key: &str) -> Result<(), StorageError> {
        let params: Params = vec![Some(scope.to_owned()), Some(key.to_owned())];
        // Released while the request may still hold its transaction's
        // connection: on a connection outside the pool, so that a full pool
        // cannot starve it.
        let mut aux = self.aux.lock().await;
        if aux.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *aux = Some(self.pool.connect().await?);
        }
        let Some(client) = aux.as_ref() else {
            return Err(unavailable("no connection to release the key"));
        };
        client
            .execute(RELEASE, &refs(&params))
            .await
            .map(|_| ())
            .map_err(|e| self.error(&e))
    }

    async fn rate_hit(&self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        let params: Params = vec![Some(scope.to_owned()), Some(window_ms.to_string())];
        let row = self
            .on(None, async |c| {
                let s = c.prepare(RATE).await?;
                c.client.query_one(&s, &refs(&params)).await
            })
            .await?;
        let hits: String = row.get(0);
        Ok(hits.parse().unwrap_or(u64::MAX))
    }
}

/// Walks the audit chain of the database: returns the number of entries,
/// or a message naming the first broken link.
pub async fn verify_audit(client: &tokio_postgres::Client) -> anyhow::Result<Result<u64, String>> {
    use futures_util::TryStreamExt;
    let stream = client
        .query_raw(
            "SELECT seq, entry, prev, hash, execution, kind FROM sinew_audit ORDER BY seq",
            std::iter::empty::<Option<String>>(),
        )
        .await?;
    futures_util::pin_mut!(stream);
    let mut walk = sinew_core::chain::ChainWalk::default();
    while let Some(row) = stream.try_next().await? {
        let (seq, text, prev, hash): (i64, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let n = walk.len() + 1;
        let Ok(Value::Object(content)) = serde_json::from_str::<Value>(&text) else {
            return Ok(Err(format!("audit entry {n}: not a JSON object")));
        };
        // The stored text itself is what was hashed (not only its meaning).
        if sinew_core::hash::sha256_hex(text.as_bytes()) != hash {
            return Ok(Err(format!(
                "audit entry {n}: `hash` does not match its content (the entry was altered)"
            )));
        }
        if let Err(broken) = walk.next(&content, &hash) {
            return Ok(Err(broken));
        }
        if u64::try_from(seq).ok() != Some(n as u64)
            || content.get("prev") != Some(&Value::from(prev))
        {
            return Ok(Err(format!(
                "audit entry {n}: its `seq` or `prev` column disagrees with its content"
            )));
        }
        // The columns an entry is found by (`sinew audit replay`) say
        // what it says.
        let (execution, kind): (String, String) = (row.get(4), row.get(5));
        if sinew_core::chain::entry_columns(&content) != (execution, kind) {
            return Ok(Err(format!(
                "audit entry {n}: its `execution` or `kind` column disagrees with its content"
            )));
        }
    }
    Ok(Ok(walk.len() as u64))
}

/// The chain's `unreadable` entries ([`sinew_core::chain::unreadable_entry`]:
/// a queued text that was not a JSON object, chained as found), by `seq`.
pub async fn unreadable_entries(client: &tokio_postgres::Client) -> anyhow::Result<Vec<i64>> {
    let rows = client
        .query(
            "SELECT seq FROM sinew_audit WHERE kind = $1 ORDER BY seq",
            &[&sinew_core::chain::UNREADABLE],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sinew_core::chain::{GENESIS_HASH, seal_entry};

    /// The claim's SQL forgets and abandons keys when the in-memory store
    /// does (the constants every storage shares).
    #[test]
    fn claims_expire_when_every_storage_says() {
        use sinew_core::ports::ABANDONED_AFTER_MS;
        assert_eq!(IDEMPOTENCY_TTL_MS, 24 * 3_600_000);
        assert!(sql::CLAIM.contains("- interval '24 hours'"));
        assert_eq!(ABANDONED_AFTER_MS, 15 * 60_000);
        assert!(sql::CLAIM.contains("- interval '15 minutes'"));
        // A finished cron claim never expires (`cron::CLAIM_SCOPE_PREFIX`).
        let cron = format!("$1 NOT LIKE '{}%'", sinew_core::cron::CLAIM_SCOPE_PREFIX);
        assert!(sql::CLAIM.contains(&cron), "{}", sql::CLAIM);
    }

    /// What the sequencer seals from a queued text is what sealing the
    /// entry itself gives (with the component's hash where it has none).
    #[test]
    fn a_queued_entry_seals_as_the_entry() {
        for entry in [
            json!({"kind": "final", "execution": "e1", "zeta": [1, {"b": 2, "a": "x"}]}),
            json!({"prev": "old", "seq": 99, "hash": "h", "component": "mine"}),
            json!({}),
        ] {
            let queued = queued_text(&entry, Some("sha256:c")).unwrap();
            let from_queue: Value = serde_json::from_str(&queued).unwrap();
            let mut stamped = entry.clone();
            stamped
                .as_object_mut()
                .unwrap()
                .entry("component")
                .or_insert(json!("sha256:c"));
            assert_eq!(
                seal_entry(from_queue, 3, "p").unwrap(),
                seal_entry(stamped, 3, "p").unwrap()
            );
        }
        assert!(queued_text(&json!([1]), None).is_err());
    }

    #[test]
    fn spliced_text_is_the_sealed_text() {
        for entry in [
            json!({"kind": "final", "execution": "e1", "zeta": [1, {"b": 2, "a": "x"}], "a\"q": null}),
            json!({}),
            json!({"prev": "old", "seq": 99, "hash": "h", "rows": []}),
            json!({"pr": 1, "prevx": 2, "se": 3, "seqq": 4, "s": 5}),
        ] {
            let [a, b, c] = splice_parts(&entry, None).unwrap();
            for (seq, prev) in [(1u64, GENESIS_HASH), (12345, "abc")] {
                let (text, hash) = seal_entry(entry.clone(), seq, prev).unwrap();
                assert_eq!(format!("{a}{prev}{b}{seq}{c}"), text);
                assert_eq!(sinew_core::hash::sha256_hex(text.as_bytes()), hash);
            }
            // The component's hash goes in where the entry has none.
            let [a, b, c] = splice_parts(&entry, Some("sha256:c")).unwrap();
            let mut stamped = entry.clone();
            stamped
                .as_object_mut()
                .unwrap()
                .entry("component")
                .or_insert(json!("sha256:c"));
            let (text, _) = seal_entry(stamped, 7, "p").unwrap();
            assert_eq!(format!("{a}p{b}7{c}"), text);
        }
    }
}
