//! (C) The hand-written alternative: the bank's `transfer` and
//! `account_history` as a careful team would write them with hyper and
//! tokio-postgres, issuing the statements `sinew serve` issues for the same
//! requests (captured with `log_statement = all`), in the same round trips:
//! the idempotency claim and its completion, the rate-limit hit, the
//! locking reads, the version-checked updates, the insert,
//! and the hash-chained audit entry appended under the chain lock with the
//! commit, as sinew 0.1 did. So the comparison prices the executor, not the
//! SQL.
//!
//! With `--audit plain` it is (C′), what a team writing this by hand ships:
//! the same work, but the audit entry (the same canonical text sinew
//! queues) is one plain `INSERT` into a table of its own
//! ([`PLAIN_AUDIT_TABLE`], created by the harness), pipelined with the
//! `COMMIT`: no chain, no lock.
//!
//! It uses sinew's schema (from `sinew migrate`) so that `sinew audit
//! verify` can check its audit chain, and `splice_parts` to lay out the
//! audit entry's canonical text. JSON Schema validation is replaced by
//! typed deserialization and hand-written checks, as such code would do.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use sinew_core::expr::value::format_timestamp;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls, Statement};

const ACCOUNT_COLUMNS: &str = r#""id"::text, "version"::text, floor(extract(epoch from "created_at") * 1000000)::bigint::text, floor(extract(epoch from "updated_at") * 1000000)::bigint::text, floor(extract(epoch from "deleted_at") * 1000000)::bigint::text, "holder"::text, "name"::text, "currency"::text, "balance"::text"#;
const TRANSFER_COLUMNS: &str = r#""id"::text, "version"::text, floor(extract(epoch from "created_at") * 1000000)::bigint::text, floor(extract(epoch from "updated_at") * 1000000)::bigint::text, floor(extract(epoch from "deleted_at") * 1000000)::bigint::text, "kind"::text, "from_account"::text, "to_account"::text, "amount_cents"::text, "currency"::text, "reference"::text, "initiated_by"::text"#;

// sinew's own statements, exactly as the server issues them.
use sinew_core::chain::GENESIS_HASH as GENESIS;
use sinew_host::pg::sql::{
    APPEND as AUDIT, AUDIT_LOCK, CLAIM, COMPLETE, LOCK_CHAIN, RATE, STATE as STORED,
};

/// How the server records its audit entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Audit {
    /// (C): appended to sinew's hash chain (`sinew_audit`) under the
    /// chain's advisory lock, as sinew 0.1 did on every request.
    Chain,
    /// (C′): one plain `INSERT` into [`PLAIN_AUDIT_TABLE`], no lock.
    Plain,
}

/// (C′)'s audit table, as a team would write it: a key, the entry's
/// execution and kind, its text, when it was recorded.
pub const PLAIN_AUDIT_TABLE: &str = "CREATE TABLE IF NOT EXISTS bench_audit (\
       id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
       execution text NOT NULL, kind text NOT NULL, entry text NOT NULL, \
       recorded_at timestamptz NOT NULL DEFAULT now())";

/// (C′)'s audit insert.
const PLAIN_AUDIT: &str = "INSERT INTO bench_audit (execution, kind, entry) VALUES ($1, $2, $3)";

/// Which backend the server is: the bank's tools or the clinic's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `transfer` and `account_history`.
    Bank,
    /// `list_appointments` and `therapist_stats`.
    Clinic,
    /// The sweep's `close_open` and `reopen_closed`: 500 rows each.
    Sweep,
}

/// The prepared statements of one connection.
struct Stmts {
    claim: Statement,
    stored: Statement,
    complete: Statement,
    rate: Statement,
    /// The chain's lock (`Audit::Chain` only).
    lock_chain: Option<Statement>,
    /// `APPEND` to the chain, or the plain insert.
    audit: Statement,
    bank: Option<BankStmts>,
    clinic: Option<ClinicStmts>,
    sweep: Option<Statement>,
}

/// The clinic's reads, written as a team would write them: one statement
/// for a page with its count, its therapists (a lateral join) and up to 5
/// invoices per appointment (a lateral `json_agg`); ownership through the
/// patient as a join; the statistics as two `GROUP BY` statements.
struct ClinicStmts {
    list: Statement,
    by_therapist: Statement,
    overall: Statement,
}

/// The bank's statements.
struct BankStmts {
    /// Both accounts, locked, in id order (tellers and staff: any holder).
    lock_both: Statement,
    /// One account (plain read).
    account: Statement,
    update_balance: Statement,
    insert_transfer: Statement,
    outgoing: Statement,
    incoming: Statement,
}

struct Conn {
    client: Client,
    stmts: Stmts,
}

/// `created_at`-like columns as sinew gives them: epoch microseconds.
fn ts(col: &str) -> String {
    format!("floor(extract(epoch from {col}) * 1000000)::bigint::text")
}

impl Conn {
    async fn open(config: &tokio_postgres::Config, kind: Kind, audit: Audit) -> Result<Conn> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute("SET application_name = 'sinew-baseline'")
            .await?;
        let p = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        let bank = if kind == Kind::Bank {
            Some(BankStmts {
            lock_both: p(format!(
                r#"SELECT {ACCOUNT_COLUMNS} FROM "account" WHERE "deleted_at" IS NULL AND "id" IN ($1::text::uuid, $2::text::uuid) ORDER BY "id" ASC LIMIT 2 FOR UPDATE"#
            ))
            .await?,
            account: p(format!(
                r#"SELECT {ACCOUNT_COLUMNS} FROM "account" WHERE "deleted_at" IS NULL AND "id" = $1::text::uuid ORDER BY "id" ASC LIMIT 1"#
            ))
            .await?,
            update_balance: p(format!(
                r#"UPDATE "account" SET "balance" = $1::text::bigint, "updated_at" = $2::text::timestamptz, "version" = "version" + 1 WHERE "id" = $3::text::uuid AND "version" = $4::text::bigint AND "deleted_at" IS NULL RETURNING {ACCOUNT_COLUMNS}"#
            ))
            .await?,
            insert_transfer: p(format!(
                r#"INSERT INTO "transfer" ("id", "version", "created_at", "updated_at", "deleted_at", "kind", "from_account", "to_account", "amount_cents", "currency", "reference", "initiated_by") VALUES ($1::text::uuid, $2::text::bigint, $3::text::timestamptz, $4::text::timestamptz, $5::text::timestamptz, $6::text::text, $7::text::uuid, $8::text::uuid, $9::text::bigint, $10::text::text, $11::text::text, $12::text::text) RETURNING {TRANSFER_COLUMNS}"#
            ))
            .await?,
            outgoing: p(format!(
                r#"SELECT {TRANSFER_COLUMNS} FROM "transfer" WHERE "deleted_at" IS NULL AND "from_account" = $1::text::uuid AND "created_at" < $2::text::timestamptz ORDER BY "created_at" DESC, "id" ASC LIMIT 50"#
            ))
            .await?,
            incoming: p(format!(
                r#"SELECT {TRANSFER_COLUMNS} FROM "transfer" WHERE "deleted_at" IS NULL AND "to_account" = $1::text::uuid AND "created_at" < $2::text::timestamptz ORDER BY "created_at" DESC, "id" ASC LIMIT 50"#
            ))
            .await?,
            })
        } else {
            None
        };
        let clinic = if kind == Kind::Clinic {
            let mine = "a.deleted_at IS NULL AND a.status = $2 AND p.account = $1";
            Some(ClinicStmts {
                list: p(format!(
                    "SELECT a.id::text, a.version::text, {}, {}, {}, a.status, a.patient::text, \
                       a.therapist::text, {}, a.minutes::text, a.note, t.row::text, inv.rows::text, c.total::text \
                     FROM (SELECT count(*) AS total FROM appointment a JOIN patient p ON p.id = a.patient WHERE {mine}) c \
                     LEFT JOIN LATERAL (SELECT a.* FROM appointment a JOIN patient p ON p.id = a.patient \
                       WHERE {mine} ORDER BY a.start_at DESC, a.id LIMIT $3::text::bigint) a ON TRUE \
                     LEFT JOIN LATERAL (SELECT json_build_object('id', t.id, 'version', t.version, \
                       'created_at', t.created_at, 'updated_at', t.updated_at, 'deleted_at', t.deleted_at, \
                       'name', t.name, 'specialty', t.specialty, 'rate_cents', t.rate_cents) AS row \
                       FROM therapist t WHERE t.id = a.therapist AND t.deleted_at IS NULL) t ON TRUE \
                     LEFT JOIN LATERAL (SELECT coalesce(json_agg(json_build_object('id', i.id, \
                       'version', i.version, 'created_at', i.created_at, 'updated_at', i.updated_at, \
                       'deleted_at', i.deleted_at, 'appointment', i.appointment, \
                       'amount_cents', i.amount_cents, 'paid', i.paid) ORDER BY i.created_at, i.id), '[]') AS rows \
                       FROM (SELECT * FROM invoice i WHERE i.appointment = a.id AND i.deleted_at IS NULL \
                             ORDER BY i.created_at, i.id LIMIT 5) i) inv ON TRUE \
                     ORDER BY a.start_at DESC, a.id",
                    ts("a.created_at"),
                    ts("a.updated_at"),
                    ts("a.deleted_at"),
                    ts("a.start_at"),
                ))
                .await?,
                by_therapist: p(format!(
                    "SELECT therapist::text, count(*)::text, sum(minutes)::text, count(minutes)::text, {} \
                     FROM appointment WHERE deleted_at IS NULL AND status = 'completed' \
                       AND start_at >= $1::text::timestamptz \
                     GROUP BY therapist ORDER BY sum(minutes) DESC, therapist LIMIT 50",
                    ts("min(start_at)")
                ))
                .await?,
                overall: p("SELECT count(*)::text, coalesce(sum(minutes), 0)::text FROM appointment \
                     WHERE deleted_at IS NULL AND status = 'completed' AND start_at >= $1::text::timestamptz"
                    .into())
                .await?,
            })
        } else {
            None
        };
        // The bulk transition as one `UPDATE … RETURNING`, the rows picked
        // and locked by a subquery in id order.
        let sweep =
            if kind == Kind::Sweep {
                Some(
                p(r#"UPDATE "task" SET "status" = $1::text, "updated_at" = $2::text::timestamptz,
                       "version" = "version" + 1
                     WHERE "id" IN (SELECT "id" FROM "task" WHERE "deleted_at" IS NULL
                       AND "status" = $3::text ORDER BY "id" LIMIT 500 FOR UPDATE)
                     RETURNING "id"::text, "version""#
                    .into())
                .await?,
            )
            } else {
                None
            };
        let stmts = Stmts {
            claim: p(CLAIM.into()).await?,
            stored: p(STORED.into()).await?,
            complete: p(COMPLETE.into()).await?,
            rate: p(RATE.into()).await?,
            lock_chain: match audit {
                Audit::Chain => Some(p(LOCK_CHAIN.into()).await?),
                Audit::Plain => None,
            },
            audit: match audit {
                Audit::Chain => p(AUDIT.into()).await?,
                Audit::Plain => p(PLAIN_AUDIT.into()).await?,
            },
            bank,
            clinic,
            sweep,
        };
        Ok(Conn { client, stmts })
    }
}

/// A small pool: at most `size` connections, each with its statements.
struct Pool {
    config: tokio_postgres::Config,
    kind: Kind,
    audit: Audit,
    idle: std::sync::Mutex<Vec<Conn>>,
    permits: Semaphore,
}

struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until drop")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(c);
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Lease<'_>> {
        let permit = self.permits.acquire().await?;
        let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match conn {
            Some(c) => c,
            None => Conn::open(&self.config, self.kind, self.audit).await?,
        };
        Ok(Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }
}

struct App {
    pool: Pool,
    key: DecodingKey,
    validation: Validation,
    ids: AtomicU64,
    seed: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferInput {
    from_account: String,
    to_account: String,
    amount_cents: i64,
    #[serde(default)]
    reference: Option<String>,
}

fn problem(status: u16, code: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = json!({"type": format!("https://sinew.dev/problems/{code}"), "title": code, "status": status, "detail": detail});
    respond(status, "application/problem+json", body.to_string())
}

fn respond(status: u16, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

fn is_uuid(s: &str) -> bool {
    sinew_core::hash::is_uuid(s)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sha256_hex(bytes: &[u8]) -> String {
    sinew_core::hash::sha256_hex(bytes)
}

/// A row of text columns as JSON: numbers for the `numeric` names,
/// timestamps (epoch µs) formatted, the rest strings.
fn row_json(row: &tokio_postgres::Row, names: &[&str], numeric: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let v: Option<String> = row.get(i);
        let value = match v {
            None => Value::Null,
            Some(s) if name.ends_with("_at") => {
                Value::from(format_timestamp(s.parse().unwrap_or(0)))
            }
            Some(s) if numeric.contains(name) => {
                s.parse::<i64>().map_or(Value::from(s), Value::from)
            }
            Some(s) => Value::from(s),
        };
        m.insert((*name).to_owned(), value);
    }
    Value::Object(m)
}

const ACCOUNT_NAMES: &[&str] = &[
    "id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "holder",
    "name",
    "currency",
    "balance",
];
const TRANSFER_NAMES: &[&str] = &[
    "id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "kind",
    "from_account",
    "to_account",
    "amount_cents",
    "currency",
    "reference",
    "initiated_by",
];

/// What a successful call's final audit entry records.
struct Final<'a> {
    execution: &'a str,
    tool: &'a str,
    input: &'a Value,
    input_hash: String,
    claims: &'a Claims,
    rows: Value,
    status: u16,
    at: &'a str,
    started: Instant,
}

/// The final audit entry, with the fields sinew's entries have.
fn final_entry(f: Final<'_>) -> Value {
    json!({
        "bundle": "baseline", "calls": [], "component": "baseline",
        "durationMs": u64::try_from(f.started.elapsed().as_millis()).unwrap_or(0),
        "execution": f.execution, "input": f.input,
        "inputHash": format!("sha256:{}", f.input_hash),
        "kind": "final", "outcome": "ok", "policies": [],
        "risk": {"acknowledgments": [], "level": "green"},
        "roles": f.claims.roles, "rows": f.rows, "status": f.status,
        "subject": f.claims.sub, "time": f.at, "tool": f.tool,
    })
}

impl App {
    fn id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let h = sha256_hex(format!("{}:{n}", self.seed).as_bytes());
        format!(
            "{}-{}-8{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    fn auth(&self, req: &Request<Incoming>) -> Result<Claims, Response<Full<Bytes>>> {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| problem(401, "unauthenticated", "a bearer token is required"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| problem(401, "unauthenticated", &format!("invalid token: {e}")))?;
        let c = data.claims;
        if !c
            .roles
            .iter()
            .any(|r| matches!(r.as_str(), "customer" | "teller" | "staff" | "patient"))
        {
            return Err(problem(
                403,
                "forbidden",
                "this role may not call this tool",
            ));
        }
        Ok(c)
    }

    /// [`Self::auth`], for tools only staff may call.
    fn staff(&self, req: &Request<Incoming>) -> Result<Claims, Response<Full<Bytes>>> {
        let claims = self.auth(req)?;
        if !claims.roles.iter().any(|r| r == "staff") {
            return Err(problem(403, "forbidden", "staff only"));
        }
        Ok(claims)
    }

    /// Records the final audit entry and commits, in one round trip: (C)
    /// appends it to the chain under the chain's lock, (C′) inserts it.
    async fn audit(
        &self,
        conn: &Conn,
        entry: &Value,
        execution: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let kind = "final";
        let Some(lock_chain) = &conn.stmts.lock_chain else {
            let text = sinew_host::pg::queued_text(entry, None).unwrap_or_default();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&execution, &kind, &text];
            let insert = conn.client.execute(&conn.stmts.audit, &params);
            let commit = conn.client.batch_execute("COMMIT");
            let (i, c) = tokio::join!(insert, commit);
            i?;
            return c;
        };
        let [a, b, c] = sinew_host::pg::splice_parts(entry, None).unwrap_or_default();
        let chain_key = AUDIT_LOCK.to_string();
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&chain_key];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&a, &b, &c, &execution, &kind, &GENESIS];
        let lock = conn.client.execute(lock_chain, &lock_params);
        let insert = conn.client.execute(&conn.stmts.audit, &params);
        let commit = conn.client.batch_execute("COMMIT");
        let (l, i, c) = tokio::join!(lock, insert, commit);
        l?;
        i?;
        c
    }

    async fn transfer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let claims = match self.auth(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return problem(400, "bad_request", "the body could not be read");
        };
        let input: TransferInput = match serde_json::from_slice(&body) {
            Ok(i) => i,
            Err(e) => return problem(400, "invalid_input", &e.to_string()),
        };
        if !is_uuid(&input.from_account)
            || !is_uuid(&input.to_account)
            || !(1..=100_000_000).contains(&input.amount_cents)
            || input
                .reference
                .as_ref()
                .is_some_and(|r| r.chars().count() > 140)
        {
            return problem(400, "invalid_input", "the input does not match the schema");
        }
        let privileged = claims.roles.iter().any(|r| r == "teller" || r == "staff");
        if input.amount_cents > 5_000_000 && !privileged {
            return problem(
                403,
                "policy_blocked",
                "transfers over 50,000.00 are made by a teller",
            );
        }
        // (`large_transfer` escalates over 10,000.00; the benchmark moves 1.)
        let Ok(conn) = self.pool.get().await else {
            return problem(503, "unavailable", "no database connection");
        };
        let now = now_ms();
        let scope = format!("transfer:{}", claims.sub);
        if let Some(key) = &key {
            let fingerprint = sha256_hex(&body);
            match conn
                .client
                .query_opt(
                    &conn.stmts.claim,
                    &[&scope, key, &fingerprint, &now.to_string()],
                )
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return match conn
                        .client
                        .query_opt(&conn.stmts.stored, &[&scope, key])
                        .await
                    {
                        Ok(Some(row)) => {
                            let (fp, status, body): (String, Option<String>, Option<String>) =
                                (row.get(0), row.get(1), row.get(2));
                            let status = status.and_then(|s| s.parse::<i32>().ok());
                            match (fp == fingerprint, status, body) {
                                (false, _, _) => problem(
                                    422,
                                    "idempotency_key_reused",
                                    "this key was used with another input",
                                ),
                                (true, Some(s), Some(b)) => {
                                    respond(u16::try_from(s).unwrap_or(500), "application/json", b)
                                }
                                _ => problem(
                                    409,
                                    "in_progress",
                                    "a request with this key is still running",
                                ),
                            }
                        }
                        _ => problem(503, "unavailable", "the database failed"),
                    };
                }
                Err(e) => return problem(503, "unavailable", &e.to_string()),
            }
        }
        let window = now - now.rem_euclid(60_000);
        match conn
            .client
            .query_one(
                &conn.stmts.rate,
                &[
                    &format!("transfer_rate:{}", claims.sub),
                    &window.to_string(),
                ],
            )
            .await
        {
            Ok(row) if row.get::<_, String>(0).parse::<u64>().unwrap_or(0) > 20 => {
                return problem(429, "rate_limited", "more than 20 transfers in a minute");
            }
            Ok(_) => {}
            Err(e) => return problem(503, "unavailable", &e.to_string()),
        }
        if input.from_account == input.to_account {
            return problem(
                422,
                "same_account",
                "source and target are the same account",
            );
        }
        match self
            .move_money(
                &conn,
                &claims,
                &input,
                &scope,
                key.as_deref(),
                &body,
                now,
                started,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                problem(503, "unavailable", &e.to_string())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_money(
        &self,
        conn: &Conn,
        claims: &Claims,
        input: &TransferInput,
        scope: &str,
        key: Option<&str>,
        body: &[u8],
        now: i64,
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, tokio_postgres::Error> {
        let Some(s) = &conn.stmts.bank else {
            return Ok(problem(404, "not_found", "no such route"));
        };
        let c = &conn.client;
        let at = format_timestamp(now * 1000);
        c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        let locked = c
            .query(&s.lock_both, &[&input.from_account, &input.to_account])
            .await?;
        if locked.len() != 2 {
            c.batch_execute("ROLLBACK").await?;
            return Ok(problem(
                404,
                "account_not_found",
                "source or target account not found",
            ));
        }
        // The rows are locked: sinew reads them again from what the lock
        // returned (`PgBackend`'s locked rows), so does this handler.
        let named = |id: &str| {
            locked
                .iter()
                .find(|r| r.get::<_, String>(0).eq_ignore_ascii_case(id))
        };
        let (Some(source), Some(target)) = (named(&input.from_account), named(&input.to_account))
        else {
            c.batch_execute("ROLLBACK").await?;
            return Ok(problem(404, "not_found", "no such `Account`"));
        };
        let (s_cur, t_cur): (String, String) = (source.get(7), target.get(7));
        if s_cur != t_cur {
            c.batch_execute("ROLLBACK").await?;
            return Ok(problem(
                422,
                "currency_mismatch",
                &format!("cannot move {s_cur} into a {t_cur} account"),
            ));
        }
        let balance = |r: &tokio_postgres::Row| r.get::<_, String>(8).parse::<i64>().unwrap_or(0);
        let version = |r: &tokio_postgres::Row| r.get::<_, String>(1).parse::<i64>().unwrap_or(0);
        if balance(source) < input.amount_cents {
            c.batch_execute("ROLLBACK").await?;
            return Ok(problem(422, "insufficient_funds", "insufficient funds"));
        }
        // Debit, then credit: each row updated if its version is unchanged.
        let mut rows = Vec::new();
        let mut new_balance = 0;
        for (id, row, delta) in [
            (&input.from_account, source, -input.amount_cents),
            (&input.to_account, target, input.amount_cents),
        ] {
            let v = version(row);
            let amount = (balance(row) + delta).to_string();
            let expected = v.to_string();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&amount, &at, id, &expected];
            if c.query_opt(&s.update_balance, &params).await?.is_none() {
                c.batch_execute("ROLLBACK").await?;
                return Ok(problem(409, "conflict", "the row changed"));
            }
            if delta < 0 {
                new_balance = balance(row) + delta;
            }
            rows.push(
                json!({"after": v + 1, "before": v, "entity": "Account", "id": id, "op": "update"}),
            );
        }
        let transfer_id = self.id();
        let reference = input.reference.clone().unwrap_or_default();
        let (one, kind, amount, none) = (
            "1",
            "transfer",
            input.amount_cents.to_string(),
            None::<String>,
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
            &transfer_id,
            &one,
            &at,
            &at,
            &none,
            &kind,
            &input.from_account,
            &input.to_account,
            &amount,
            &s_cur,
            &reference,
            &claims.sub,
        ];
        c.query_one(&s.insert_transfer, &params).await?;
        rows.push(json!({"after": 1, "before": null, "entity": "Transfer", "id": transfer_id, "op": "create"}));
        let output = json!({"transfer": transfer_id, "balance": new_balance}).to_string();
        if let Some(key) = key {
            c.execute(&conn.stmts.complete, &[&scope, &key, &"201", &output])
                .await?;
        }
        let execution = self.id();
        let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let entry = final_entry(Final {
            execution: &execution,
            tool: "transfer",
            input: &input,
            input_hash: sha256_hex(body),
            claims,
            rows: Value::Array(rows),
            status: 201,
            at: &at,
            started,
        });
        self.audit(conn, &entry, &execution).await?;
        Ok(respond(201, "application/json", output))
    }

    /// A read's answer: its final audit entry appended and committed (in
    /// a transaction of its own, as sinew does), then 200 with `output`.
    #[allow(clippy::too_many_arguments)]
    async fn answer_read(
        &self,
        conn: &Conn,
        claims: &Claims,
        tool: &str,
        input: &Value,
        at: &str,
        started: Instant,
        output: String,
    ) -> Result<Response<Full<Bytes>>, tokio_postgres::Error> {
        let execution = self.id();
        let entry = final_entry(Final {
            execution: &execution,
            tool,
            input,
            input_hash: sha256_hex(input.to_string().as_bytes()),
            claims,
            rows: json!([]),
            status: 200,
            at,
            started,
        });
        conn.client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        self.audit(conn, &entry, &execution).await?;
        Ok(respond(200, "application/json", output))
    }

    async fn history(&self, req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let claims = match self.auth(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !is_uuid(id) {
            return problem(400, "invalid_input", "`id` must be a UUID");
        }
        let Ok(conn) = self.pool.get().await else {
            return problem(503, "unavailable", "no database connection");
        };
        let now = now_ms();
        let at = format_timestamp(now * 1000);
        let (Some(s), c) = (&conn.stmts.bank, &conn.client) else {
            return problem(404, "not_found", "no such route");
        };
        let result: Result<Response<Full<Bytes>>, tokio_postgres::Error> = async {
            let Some(account) = c.query_opt(&s.account, &[&id]).await? else {
                return Ok(problem(404, "not_found", "no such account"));
            };
            let out = c.query(&s.outgoing, &[&id, &at]).await?;
            let inc = c.query(&s.incoming, &[&id, &at]).await?;
            let account = row_json(&account, ACCOUNT_NAMES, &["version", "balance"]);
            let numeric = ["version", "amount_cents"];
            let output = json!({
                "account": account["id"],
                "balance": account["balance"],
                "outgoing": out.iter().map(|r| row_json(r, TRANSFER_NAMES, &numeric)).collect::<Vec<_>>(),
                "incoming": inc.iter().map(|r| row_json(r, TRANSFER_NAMES, &numeric)).collect::<Vec<_>>(),
            })
            .to_string();
            let input = json!({"id": id});
            self.answer_read(&conn, &claims, "account_history", &input, &at, started, output)
                .await
        }
        .await;
        result.unwrap_or_else(|e| problem(503, "unavailable", &e.to_string()))
    }

    /// `list_appointments`: the caller's appointments of one status,
    /// newest first, `size` of them (default 20, at most 50), each with
    /// its therapist and up to 5 invoices, the cursor of the next page and
    /// the total.
    async fn list(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let claims = match self.auth(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let (mut size, mut status) = (20i64, None);
        for pair in req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("size", v)) => match v.parse::<i64>() {
                    Ok(n) if (1..=50).contains(&n) => size = n,
                    _ => return problem(400, "invalid_input", "`size` is 1 to 50"),
                },
                Some(("status", v))
                    if matches!(v, "requested" | "confirmed" | "completed" | "cancelled") =>
                {
                    status = Some(v.to_owned());
                }
                _ => return problem(400, "invalid_input", "unknown or bad query parameter"),
            }
        }
        let Some(status) = status else {
            return problem(400, "invalid_input", "this baseline lists one `status`");
        };
        let Ok(conn) = self.pool.get().await else {
            return problem(503, "unavailable", "no database connection");
        };
        let (Some(s), c) = (&conn.stmts.clinic, &conn.client) else {
            return problem(404, "not_found", "no such route");
        };
        let at = format_timestamp(now_ms() * 1000);
        let result: Result<Response<Full<Bytes>>, tokio_postgres::Error> = async {
            let limit = (size + 1).to_string();
            let found = c.query(&s.list, &[&claims.sub, &status, &limit]).await?;
            let total: i64 = found
                .first()
                .and_then(|r| r.get::<_, Option<String>>(13))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let names = [
                "id",
                "version",
                "created_at",
                "updated_at",
                "deleted_at",
                "status",
                "patient",
                "therapist",
                "start_at",
                "minutes",
                "note",
            ];
            let mut rows: Vec<Value> = Vec::with_capacity(found.len());
            for r in found
                .iter()
                .filter(|r| r.get::<_, Option<String>>(0).is_some())
            {
                let mut row = row_json(r, &names, &["version", "minutes"]);
                let embed = |i: usize| {
                    r.get::<_, Option<String>>(i)
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                        .unwrap_or(Value::Null)
                };
                row["therapist_row"] = embed(11);
                row["invoices"] = embed(12);
                rows.push(row);
            }
            let next = if rows.len() as i64 > size {
                rows.truncate(usize::try_from(size).unwrap_or(0));
                rows.last().map(|last| {
                    let keys = json!([last["start_at"], last["id"]]).to_string();
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, keys)
                })
            } else {
                None
            };
            let output = json!({"appointments": rows, "next": next, "total": total}).to_string();
            let input = json!({"size": size, "status": status});
            self.answer_read(
                &conn,
                &claims,
                "list_appointments",
                &input,
                &at,
                started,
                output,
            )
            .await
        }
        .await;
        result.unwrap_or_else(|e| problem(503, "unavailable", &e.to_string()))
    }

    /// `therapist_stats`: per therapist and overall, completed appointments
    /// since `from`.
    async fn stats(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let claims = match self.staff(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let from = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("from="))
            .map(|v| v.replace("%3A", ":"));
        let Some(from) = from.filter(|f| sinew_core::expr::value::parse_timestamp(f).is_some())
        else {
            return problem(400, "invalid_input", "`from` is a date-time");
        };
        let Ok(conn) = self.pool.get().await else {
            return problem(503, "unavailable", "no database connection");
        };
        let (Some(s), c) = (&conn.stmts.clinic, &conn.client) else {
            return problem(404, "not_found", "no such route");
        };
        let at = format_timestamp(now_ms() * 1000);
        let result: Result<Response<Full<Bytes>>, tokio_postgres::Error> = async {
            let groups = c.query(&s.by_therapist, &[&from]).await?;
            let all = c.query_one(&s.overall, &[&from]).await?;
            let int = |r: &tokio_postgres::Row, i: usize| {
                r.get::<_, Option<String>>(i)
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            let therapists: Vec<Value> = groups
                .iter()
                .map(|r| {
                    let (n, minutes, counted) = (int(r, 1), int(r, 2), int(r, 3));
                    json!({
                        "therapist": r.get::<_, Option<String>>(0),
                        "n": n,
                        "minutes": minutes,
                        "mean": if counted == 0 { Value::Null } else { json!(minutes as f64 / counted as f64) },
                        "first": r.get::<_, Option<String>>(4)
                            .and_then(|t| t.parse::<i64>().ok())
                            .map(format_timestamp),
                    })
                })
                .collect();
            let output = json!({
                "therapists": therapists,
                "overall": {"n": int(&all, 0), "minutes": int(&all, 1)},
            })
            .to_string();
            let input = json!({"from": from});
            self.answer_read(&conn, &claims, "therapist_stats", &input, &at, started, output)
                .await
        }
        .await;
        result.unwrap_or_else(|e| problem(503, "unavailable", &e.to_string()))
    }

    /// `close_open` / `reopen_closed`: up to 500 tasks moved from
    /// `from` to `to` by one `UPDATE … RETURNING`, each row in the audit
    /// entry, the ids answered in id order; with the idempotency claim and
    /// its completion, as sinew does.
    async fn sweep(
        &self,
        req: Request<Incoming>,
        tool: &str,
        [from, to]: [&str; 2],
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let claims = match self.staff(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(key) = key else {
            return problem(400, "idempotency_key_required", "send an Idempotency-Key");
        };
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return problem(400, "bad_request", "the body could not be read");
        };
        if !matches!(serde_json::from_slice::<Value>(&body), Ok(Value::Object(m)) if m.is_empty()) {
            return problem(400, "invalid_input", "the input is an empty object");
        }
        let Ok(conn) = self.pool.get().await else {
            return problem(503, "unavailable", "no database connection");
        };
        let Some(s) = &conn.stmts.sweep else {
            return problem(404, "not_found", "no such route");
        };
        let c = &conn.client;
        let now = now_ms();
        let scope = format!("{tool}:{}", claims.sub);
        let fingerprint = sha256_hex(&body);
        match c
            .query_opt(
                &conn.stmts.claim,
                &[&scope, &key, &fingerprint, &now.to_string()],
            )
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return problem(409, "in_progress", "this key was used before"),
            Err(e) => return problem(503, "unavailable", &e.to_string()),
        }
        let at = format_timestamp(now * 1000);
        let result: Result<Response<Full<Bytes>>, tokio_postgres::Error> = async {
            c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await?;
            let mut moved: Vec<(String, i64)> = c
                .query(s, &[&to, &at, &from])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            moved.sort();
            let rows: Vec<Value> = moved
                .iter()
                .map(|(id, v)| {
                    json!({"after": v, "before": v - 1, "entity": "Task", "id": id, "op": "transition"})
                })
                .collect();
            let ids: Vec<&str> = moved.iter().map(|(id, _)| id.as_str()).collect();
            let output = json!({"ids": ids, "moved": moved.len()}).to_string();
            c.execute(&conn.stmts.complete, &[&scope, &key, &"200", &output])
                .await?;
            let execution = self.id();
            let entry = final_entry(Final {
                execution: &execution,
                tool,
                input: &json!({}),
                input_hash: fingerprint.clone(),
                claims: &claims,
                rows: Value::Array(rows),
                status: 200,
                at: &at,
                started,
            });
            self.audit(&conn, &entry, &execution).await?;
            Ok(respond(200, "application/json", output))
        }
        .await;
        match result {
            Ok(r) => r,
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                problem(503, "unavailable", &e.to_string())
            }
        }
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                respond(200, "application/json", r#"{"status":"ok"}"#.into())
            }
            (&Method::GET, "/appointments") => self.list(req).await,
            (&Method::GET, "/stats/therapists") => self.stats(req).await,
            (&Method::POST, "/transfers") => self.transfer(req).await,
            (&Method::POST, "/tasks/close") => {
                self.sweep(req, "close_open", ["open", "closed"]).await
            }
            (&Method::POST, "/tasks/reopen") => {
                self.sweep(req, "reopen_closed", ["closed", "open"]).await
            }
            (&Method::GET, p) => match p
                .strip_prefix("/accounts/")
                .and_then(|r| r.strip_suffix("/transfers"))
            {
                Some(id) => {
                    let id = id.to_owned();
                    self.history(req, &id).await
                }
                None => problem(404, "not_found", "no such route"),
            },
            _ => problem(404, "not_found", "no such route"),
        }
    }
}

/// Serves until killed. Prints `listening on PORT` once ready.
pub fn run(
    port: u16,
    database_url: &str,
    secret: &str,
    pool_size: usize,
    kind: Kind,
    audit: Audit,
) -> Result<()> {
    let config: tokio_postgres::Config = database_url.parse().context("DATABASE_URL")?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 30;
    let app = Arc::new(App {
        pool: Pool {
            config,
            kind,
            audit,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Semaphore::new(pool_size),
        },
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
        ids: AtomicU64::new(0),
        seed: format!("{}:{}", std::process::id(), now_ms()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", listener.local_addr()?.port());
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.route(req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
