//! The transactional outbox: `emit` records a message with a transaction's
//! writes (`sinew_messages`); after the commit, `sinew serve` delivers it.
//!
//! Every instance runs a deliverer. A message is held by one instance at
//! a time: the deliverer locks the due messages (`FOR UPDATE SKIP LOCKED`)
//! in a transaction that stays open while it sends them and records how
//! each attempt ended, then commits. Locks, not a written claim: a claim
//! costs nothing but the lock, and a crashed instance's messages are free
//! again as soon as Postgres sees its connection end (or, should the
//! instance hang, once its session has been idle in the transaction for
//! longer than the batch's longest attempt and 5 s). Each delivery is one
//! HTTP attempt with the message's stable idempotency key, so a service
//! sees the same key however many times a message is sent (at least once
//! to the service, once per key). A 2xx delivers it: the row is deleted,
//! in the transaction that queues the audit entry recording the delivery.
//! A refusal (4xx but 408 and 429) fails it for good; anything else is
//! tried again after 1, 2, 4 … s (at most 10 minutes apart), 50 recorded
//! attempts in all (about 7 hours; an attempt cut short by its instance's
//! crash is not recorded). Deliveries and final failures are audited
//! (`"kind": "delivery"`, one entry per batch). `sinew outbox` lists what
//! is pending and what failed.
//!
//! The table, `sinew_messages`, is a message and its delivery state: no
//! key (a row is found by the due time's index, and changed by its `ctid`
//! while this transaction holds it locked, so it cannot move), no columns
//! copied out of the message. Recording a message costs Postgres about half
//! of what the earlier `sinew_outbox` row did (a key, a sequence, seven
//! columns), and a delivery deletes the row instead of writing two new
//! versions of it (the claim and the mark).

use crate::pg::PgBackend;
use crate::runtime::external::ExternalBackend;
use serde_json::{Value, json};
use sinew_core::ports::{CallOutcome, CallRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// Attempts in all before a message fails for good.
pub const MAX_ATTEMPTS: i32 = 50;
/// The longest wait between two attempts, seconds.
const MAX_WAIT_S: i64 = 600;
/// Messages claimed at once (delivered concurrently).
const BATCH: i64 = 32;
/// How often the outbox is looked at when no commit says so (messages of
/// other instances, retries coming due).
const POLL: Duration = Duration::from_secs(1);
/// How long a commit's wake-up waits for more commits before claiming: one
/// claim for many messages under load, instead of one per commit.
const GATHER: Duration = Duration::from_millis(20);

/// Locks the due messages: `(ctid, message, attempt number)`.
const CLAIM: &str = "SELECT ctid::text, message, attempts + 1 FROM sinew_messages \
     WHERE failed_at IS NULL AND next_attempt_at <= now() \
     ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Removes delivered messages.
const DELIVERED: &str = "DELETE FROM sinew_messages WHERE ctid = ANY($1::text[]::tid[])";

/// Fails messages for good: `(ctid, attempts, why)`.
const FAILED: &str = "UPDATE sinew_messages m SET failed_at = now(), attempts = u.attempts, \
       last_error = u.why \
     FROM unnest($1::text[]::tid[], $2::int[], $3::text[]) AS u(at, attempts, why) \
     WHERE m.ctid = u.at";

/// Puts messages off: `(ctid, attempts, why, seconds)`.
const AGAIN: &str = "UPDATE sinew_messages m SET attempts = u.attempts, last_error = u.why, \
       next_attempt_at = now() + make_interval(secs => u.wait::float8) \
     FROM unnest($1::text[]::tid[], $2::int[], $3::text[], $4::text[]) AS u(at, attempts, why, wait) \
     WHERE m.ctid = u.at";

/// How one attempt ended.
enum Delivered {
    /// Accepted: the service's answer and status.
    Ok(Value),
    /// Refused for good, or out of attempts: why.
    Failed(String),
    /// Try again later: why, and when the service asked to (`Retry-After`).
    Again(String, Option<Duration>),
}

/// Whether a tool of `spec` has an `emit` node (its instances deliver).
pub fn emits(spec: &sinew_core::spec::Spec) -> bool {
    fn any(flow: &sinew_core::spec::Flow) -> bool {
        flow.nodes.values().any(|n| {
            matches!(n.kind, sinew_core::spec::NodeKind::Emit { .. })
                || n.kind.body().is_some_and(any)
        })
    }
    spec.tools.values().any(|t| any(&t.flow))
}

/// Delivers the outbox until the task is aborted.
pub async fn deliver_forever(
    db: Arc<PgBackend>,
    external: Arc<dyn ExternalBackend>,
    log: crate::serve::Log,
) {
    loop {
        match deliver_due(&db, &external).await {
            // A full batch: more may be due at once.
            Ok(n) if n as i64 >= BATCH => {}
            Ok(_) => {
                if tokio::time::timeout(POLL, db.outbox_ready.notified())
                    .await
                    .is_ok()
                {
                    tokio::time::sleep(GATHER).await;
                }
            }
            Err(e) => {
                log.error(&format!(
                    "delivering the outbox failed (tried again in 1 s): {e}"
                ));
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Claims the due messages and delivers them; how many were claimed.
pub async fn deliver_due(
    db: &Arc<PgBackend>,
    external: &Arc<dyn ExternalBackend>,
) -> anyhow::Result<usize> {
    let mut conn = db.connection().await?;
    let r = deliver_on(db, &mut conn, external).await;
    if r.is_err() && conn.client.batch_execute("ROLLBACK").await.is_err() {
        conn.broken = true;
    }
    db.give_back(conn);
    r
}

/// [`deliver_due`] on `conn`: one transaction holds the messages' locks
/// from the claim to the record of how their attempts ended.
async fn deliver_on(
    db: &Arc<PgBackend>,
    conn: &mut crate::pg::pool::Conn,
    external: &Arc<dyn ExternalBackend>,
) -> anyhow::Result<usize> {
    let claim = conn.prepare(CLAIM).await?;
    let (begun, claimed) = tokio::join!(
        conn.client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        conn.client.query(&claim, &[&BATCH])
    );
    begun?;
    let claimed = claimed?;
    if claimed.is_empty() {
        conn.client.batch_execute("COMMIT").await?;
        return Ok(0);
    }
    let n = claimed.len();
    let messages: Vec<(String, Value, i32)> = claimed
        .into_iter()
        .map(|row| {
            let text: &str = row.get(1);
            let message: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            (row.get(0), message, row.get(2))
        })
        .collect();
    // Should this instance hang, Postgres ends the session, and the locks
    // with it, once it has waited longer than the slowest attempt may take.
    let longest = messages
        .iter()
        .map(|(_, m, _)| m.get("timeoutMs").and_then(Value::as_u64))
        .map(|t| {
            t.map_or(
                crate::http_external::DEFAULT_ATTEMPT_TIMEOUT,
                Duration::from_millis,
            )
        })
        .max()
        .unwrap_or(crate::http_external::DEFAULT_ATTEMPT_TIMEOUT);
    let guard = format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        (longest + Duration::from_secs(5)).as_millis()
    );
    let deliveries = messages.into_iter().map(|(at, message, attempt)| {
        let external = external.clone();
        async move {
            let outcome = attempt_delivery(external.as_ref(), &message, attempt).await;
            (at, message, attempt, outcome)
        }
    });
    let (guarded, settled) = tokio::join!(
        conn.client.batch_execute(&guard),
        futures_util::future::join_all(deliveries)
    );
    guarded?;
    settle(db, conn, settled).await?;
    Ok(n)
}

/// One HTTP attempt of `message`.
async fn attempt_delivery(
    external: &dyn ExternalBackend,
    message: &Value,
    attempt: i32,
) -> Delivered {
    let text = |k: &str| {
        message
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let request = CallRequest {
        service: text("service"),
        operation: text("operation"),
        args: message.get("args").cloned().unwrap_or(json!({})),
        timeout_ms: message.get("timeoutMs").and_then(Value::as_u64),
        max_attempts: 1,
        backoff: sinew_core::spec::Backoff::None,
        initial_backoff_ms: 0,
        idempotency_key: Some(text("idempotencyKey")),
    };
    let (result, retry_after) = external
        .attempt(&request, u32::try_from(attempt).unwrap_or(1))
        .await;
    let sent = !result.attempts.is_empty();
    match result.outcome {
        CallOutcome::Ok { value } => Delivered::Ok(recordable(value)),
        CallOutcome::Declined { value } => Delivered::Failed(format!(
            "the service refused it: {}",
            truncated(&value.to_string())
        )),
        // Not made at all (an argument of the path missing or a dot
        // segment, a key that is no header value, an operation this spec
        // does not have): no later attempt would do better.
        CallOutcome::Failed { message } if !sent => {
            Delivered::Failed(format!("it cannot be sent: {message}"))
        }
        CallOutcome::Failed { message } if attempt >= MAX_ATTEMPTS => {
            Delivered::Failed(format!("{message} (after {attempt} attempts)"))
        }
        CallOutcome::Failed { message } => Delivered::Again(message, retry_after),
    }
}

/// A service's answer to a delivery as the audit entry records it:
/// Postgres refuses a NUL character in `jsonb`, and an entry nests what it
/// records a few levels deeper, so an answer holding one, or nesting
/// deeper than an input may, is left out, saying why (the message is
/// delivered all the same: the service accepted it, and a call refuses
/// such an answer only because its flow would read it).
fn recordable(answer: Value) -> Value {
    if sinew_core::input::too_deep(&answer) {
        json!({"omitted": format!("nested deeper than {} levels", sinew_core::input::MAX_DEPTH)})
    } else if sinew_core::input::has_nul(&answer) {
        json!({"omitted": "a NUL character"})
    } else {
        answer
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(500).collect()
}

/// Records how a batch of attempts ended and commits, in one round trip:
/// three statements at most whatever the batch's size, and the deliveries
/// and final failures in one audit entry.
async fn settle(
    db: &Arc<PgBackend>,
    conn: &mut crate::pg::pool::Conn,
    batch: Vec<(String, Value, i32, Delivered)>,
) -> anyhow::Result<()> {
    let mut delivered: Vec<String> = Vec::new();
    let (mut ended, mut ended_attempts, mut ended_why) = (Vec::new(), Vec::new(), Vec::new());
    let (mut again, mut again_attempts) = (Vec::new(), Vec::new());
    let (mut again_why, mut again_wait) = (Vec::new(), Vec::new());
    let mut audited = Vec::new();
    for (at, message, attempt, outcome) in batch {
        let field = |k: &str| message.get(k).cloned().unwrap_or(Value::Null);
        let record = |outcome: &str, result: Value| {
            json!({
                "execution": field("execution"),
                "tool": field("tool"),
                "node": field("node"),
                "message": field("id"),
                "service": field("service"),
                "operation": field("operation"),
                "idempotencyKey": field("idempotencyKey"),
                "outcome": outcome,
                "attempts": attempt,
                "result": result,
            })
        };
        match outcome {
            Delivered::Ok(answer) => {
                audited.push(record("delivered", answer));
                delivered.push(at);
            }
            Delivered::Failed(why) => {
                audited.push(record("failed", json!({"error": why})));
                ended.push(at);
                ended_attempts.push(attempt);
                ended_why.push(why);
            }
            Delivered::Again(why, asked) => {
                // The backoff, or later when the service asks (never past
                // the longest wait).
                let asked = asked.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                let wait = 2i64
                    .saturating_pow(u32::try_from(attempt - 1).unwrap_or(0).min(30))
                    .max(asked)
                    .min(MAX_WAIT_S);
                again.push(at);
                again_attempts.push(attempt);
                again_why.push(why);
                again_wait.push(wait.to_string());
            }
        }
    }
    let entry = (!audited.is_empty())
        .then(|| {
            db.queue_params(&json!({
                "kind": "delivery",
                "time": jiff::Timestamp::now().to_string(),
                "deliveries": audited,
            }))
        })
        .transpose()
        .map_err(|e| anyhow::anyhow!("auditing deliveries: {e}"))?;
    let queue = conn.prepare(crate::pg::sql::QUEUE_AUDIT).await?;
    let (delete, fail, put_off) = (
        conn.prepare(DELIVERED).await?,
        conn.prepare(FAILED).await?,
        conn.prepare(AGAIN).await?,
    );
    let c = &conn.client;
    let delete_params: [&(dyn ToSql + Sync); 1] = [&delivered];
    let fail_params: [&(dyn ToSql + Sync); 3] = [&ended, &ended_attempts, &ended_why];
    let again_params: [&(dyn ToSql + Sync); 4] = [&again, &again_attempts, &again_why, &again_wait];
    let entry_params = entry.as_ref().map(crate::pg::refs).unwrap_or_default();
    let (q, d, f, a, commit) = tokio::join!(
        unless(entry.is_none(), c.execute(&queue, &entry_params)),
        unless(delivered.is_empty(), c.execute(&delete, &delete_params)),
        unless(ended.is_empty(), c.execute(&fail, &fail_params)),
        unless(again.is_empty(), c.execute(&put_off, &again_params)),
        c.batch_execute("COMMIT")
    );
    // After a failed statement the COMMIT only rolled back: report the
    // first failure.
    q.map_err(|e| anyhow::anyhow!("auditing deliveries: {e}"))?;
    d?;
    f?;
    a?;
    commit?;
    if entry.is_some() {
        db.audit_ready.notify_one();
    }
    Ok(())
}

/// `statement`, unless `skip` (a future does nothing until it is polled:
/// a skipped statement is never sent).
async fn unless<E>(
    skip: bool,
    statement: impl std::future::Future<Output = Result<u64, E>>,
) -> Result<u64, E> {
    if skip { Ok(0) } else { statement.await }
}

/// One message of `sinew outbox`.
#[derive(Debug)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// `pending` or `failed`.
    pub state: &'static str,
    /// `service.operation`.
    pub target: String,
    /// The request that emitted it.
    pub execution: String,
    /// Attempts so far.
    pub attempts: i32,
    /// When it was recorded (RFC 3339).
    pub created: String,
    /// The next attempt (pending) or when it failed (RFC 3339).
    pub when: String,
    /// The last error, if any.
    pub error: Option<String>,
}

/// The messages not delivered: pending (oldest first), then failed.
pub async fn list(client: &tokio_postgres::Client) -> anyhow::Result<Vec<Listed>> {
    use crate::pg::rfc3339_sql;
    let rows = client
        .query(
            &format!(
                "SELECT coalesce(m->>'id', ''), failed_at IS NOT NULL, \
                   coalesce(m->>'service', '') || '.' || coalesce(m->>'operation', ''), \
                   coalesce(m->>'execution', ''), attempts, coalesce(m->>'createdAt', ''), {}, last_error \
                 FROM (SELECT message::jsonb AS m, * FROM sinew_messages) o \
                 ORDER BY failed_at IS NOT NULL, next_attempt_at",
                rfc3339_sql("coalesce(failed_at, next_attempt_at)", false)
            ),
            &[],
        )
        .await;
    // A database no server of format 0.2 has run on has no outbox: no
    // message either.
    let rows = match rows {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        r => r?,
    };
    Ok(rows
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            state: if r.get::<_, bool>(1) {
                "failed"
            } else {
                "pending"
            },
            target: r.get(2),
            execution: r.get(3),
            attempts: r.get(4),
            created: r.get(5),
            when: r.get(6),
            error: r.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_core::ports::{Attempt, CallResult};

    /// A service that accepts every message with `answer`.
    struct Accepts(Value);

    #[async_trait::async_trait]
    impl ExternalBackend for Accepts {
        async fn call(&self, _: &CallRequest) -> CallResult {
            CallResult {
                outcome: CallOutcome::Ok {
                    value: self.0.clone(),
                },
                attempts: vec![Attempt {
                    status: Some(200),
                    error: None,
                    duration_ms: 1,
                }],
            }
        }
    }

    /// `levels` arrays, one in the other.
    fn nested(levels: usize) -> Value {
        (1..levels).fold(json!([]), |inner, _| json!([inner]))
    }

    /// An accepted message is delivered whatever the service answered; an
    /// answer with a NUL character (which `jsonb` cannot hold) or nesting
    /// deeper than an input may is recorded as left out, so the audit log
    /// stays readable as JSON.
    #[tokio::test]
    async fn an_answer_with_a_nul_character_or_too_deep_is_delivered_and_left_out() {
        let message = json!({"id": "m-1", "service": "mailer", "operation": "send",
                             "args": {}, "idempotencyKey": "k-1"});
        for (answer, recorded) in [
            (
                json!({"a": "x\u{0}y"}),
                json!({"omitted": "a NUL character"}),
            ),
            (json!({"k\u{0}": 1}), json!({"omitted": "a NUL character"})),
            (json!({"a": "xy"}), json!({"a": "xy"})),
            (
                nested(sinew_core::input::MAX_DEPTH + 1),
                json!({"omitted": "nested deeper than 32 levels"}),
            ),
            (
                nested(sinew_core::input::MAX_DEPTH),
                nested(sinew_core::input::MAX_DEPTH),
            ),
        ] {
            match attempt_delivery(&Accepts(answer), &message, 1).await {
                Delivered::Ok(v) => assert_eq!(v, recorded),
                _ => panic!("not delivered"),
            }
        }
    }
}
