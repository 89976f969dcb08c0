//! The transactional outbox: `emit` records a message with a transaction's
//! writes (`sinew_outbox`); after the commit, `sinew serve` delivers it.
//!
//! Every instance runs a deliverer. A message is claimed by one instance at
//! a time: the claim is `claimed_until` (the attempt's timeout and 5 s), set
//! with `FOR UPDATE SKIP LOCKED`, so a crashed instance's claim lapses and
//! another takes the message over. Each delivery is one HTTP attempt with
//! the message's stable idempotency key, so a service sees the same key
//! however many times a message is sent (at least once to the service,
//! once per key). A 2xx delivers it; a refusal (4xx but 408 and 429) fails
//! it for good; anything else is tried again after 1, 2, 4 … s (at most 10
//! minutes apart), 50 attempts in all (about 7 hours). Deliveries and final
//! failures are audited (`"kind": "delivery"`, one entry per batch). `sinew outbox` lists what is
//! pending and what failed.

use crate::pg::PgBackend;
use crate::runtime::external::ExternalBackend;
use crate::runtime::storage::StorageBackend;
use serde_json::{Value, json};
use sinew_core::ports::{CallOutcome, CallRequest};
use std::sync::Arc;
use std::time::Duration;

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

/// Claims due messages: `(id, message, attempt number)`.
const CLAIM: &str = "UPDATE sinew_outbox o SET attempts = o.attempts + 1, \
       claimed_until = now() + make_interval(secs => coalesce((o.message::jsonb->>'timeoutMs')::float8 / 1000, 10) + 5) \
     WHERE o.seq IN (SELECT seq FROM sinew_outbox \
                    WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() \
                      AND (claimed_until IS NULL OR claimed_until < now()) \
                    ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING o.seq, o.id::text, o.message, o.attempts";

/// How one attempt ended.
enum Delivered {
    /// Accepted: the service's answer and status.
    Ok(Value),
    /// Refused for good, or out of attempts: why.
    Failed(String),
    /// Try again later: why.
    Again(String),
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
    let client = db.connection().await?;
    let claimed = client.client.query(CLAIM, &[&BATCH]).await;
    db.give_back(client);
    let claimed = claimed?;
    let n = claimed.len();
    let deliveries = claimed.into_iter().map(|row| {
        let external = external.clone();
        async move {
            let seq: i64 = row.get(0);
            let id: String = row.get(1);
            let text: String = row.get(2);
            let attempt: i32 = row.get(3);
            let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let outcome = attempt_delivery(external.as_ref(), &message, attempt).await;
            (seq, id, message, attempt, outcome)
        }
    });
    let settled = futures_util::future::join_all(deliveries).await;
    if !settled.is_empty() {
        settle(db, settled).await?;
    }
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
    let result = external.call(&request).await;
    match result.outcome {
        CallOutcome::Ok { value } => Delivered::Ok(value),
        CallOutcome::Declined { value } => Delivered::Failed(format!(
            "the service refused it: {}",
            truncated(&value.to_string())
        )),
        CallOutcome::Failed { message } if attempt >= MAX_ATTEMPTS => {
            Delivered::Failed(format!("{message} (after {attempt} attempts)"))
        }
        CallOutcome::Failed { message } => Delivered::Again(message),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(500).collect()
}

/// Records how a batch of attempts ended, in three statements at most
/// whatever the batch's size; the deliveries and final failures in one
/// audit entry.
async fn settle(
    db: &Arc<PgBackend>,
    batch: Vec<(i64, String, Value, i32, Delivered)>,
) -> anyhow::Result<()> {
    let mut delivered: Vec<i64> = Vec::new();
    let (mut ended, mut ended_why): (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
    let (mut again, mut again_why, mut again_wait) = (Vec::new(), Vec::new(), Vec::new());
    let mut audited = Vec::new();
    for (seq, id, message, attempt, outcome) in batch {
        let field = |k: &str| message.get(k).cloned().unwrap_or(Value::Null);
        let record = |outcome: &str, result: Value| {
            json!({
                "execution": field("execution"),
                "tool": field("tool"),
                "node": field("node"),
                "message": id,
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
                delivered.push(seq);
            }
            Delivered::Failed(why) => {
                audited.push(record("failed", json!({"error": why})));
                ended.push(seq);
                ended_why.push(why);
            }
            Delivered::Again(why) => {
                let wait = 2i64
                    .saturating_pow(u32::try_from(attempt - 1).unwrap_or(0).min(30))
                    .min(MAX_WAIT_S);
                again.push(seq);
                again_why.push(why);
                again_wait.push(wait.to_string());
            }
        }
    }
    let client = db.connection().await?;
    let r = async {
        if !delivered.is_empty() {
            client
                .client
                .execute(
                    "UPDATE sinew_outbox SET delivered_at = now(), claimed_until = NULL, last_error = NULL \
                     WHERE seq = ANY($1)",
                    &[&delivered],
                )
                .await?;
        }
        if !ended.is_empty() {
            client
                .client
                .execute(
                    "UPDATE sinew_outbox o SET failed_at = now(), claimed_until = NULL, last_error = u.why \
                     FROM unnest($1::bigint[], $2::text[]) AS u(seq, why) WHERE o.seq = u.seq",
                    &[&ended, &ended_why],
                )
                .await?;
        }
        if !again.is_empty() {
            client
                .client
                .execute(
                    "UPDATE sinew_outbox o SET claimed_until = NULL, last_error = u.why, \
                       next_attempt_at = now() + make_interval(secs => u.wait::float8) \
                     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(seq, why, wait) \
                     WHERE o.seq = u.seq",
                    &[&again, &again_why, &again_wait],
                )
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    db.give_back(client);
    r?;
    if !audited.is_empty() {
        let entry = json!({
            "kind": "delivery",
            "time": jiff::Timestamp::now().to_string(),
            "deliveries": audited,
        });
        db.append_audit(None, &entry)
            .await
            .map_err(|e| anyhow::anyhow!("auditing deliveries: {e}"))?;
    }
    Ok(())
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
                "SELECT id::text, failed_at IS NOT NULL, service || '.' || operation, execution, attempts, \
                   {}, {}, last_error \
                 FROM sinew_outbox WHERE delivered_at IS NULL \
                 ORDER BY failed_at IS NOT NULL, seq",
                rfc3339_sql("created_at", false),
                rfc3339_sql("coalesce(failed_at, next_attempt_at)", false)
            ),
            &[],
        )
        .await?;
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
