//! Review items: one per `escalate` policy a call raised. The sequencer
//! records them as it chains the call's audit entry ([`super::sequencer`]),
//! so an item exists exactly when its entry does; callers with a role of
//! the spec's `reviews` list them (`GET /reviews`) and resolve them
//! (`POST /reviews/{id}/resolve`), each resolution audited as a `review`
//! entry in the transaction that records it.

use serde_json::{Value, json};
use sinew_core::ports::StorageError;
use tokio_postgres::Row;

use super::{PgBackend, invalid, queued_text, sql::QUEUE_AUDIT};

/// The columns of a review item, as [`item`] reads them.
static COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "id, seq, policy, execution, tool, subject, {}, {}, resolved_by, note",
        super::rfc3339_sql("raised_at", true),
        super::rfc3339_sql("resolved_at", true)
    )
});

/// Which items a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Not resolved yet (the default).
    Open,
    /// Resolved.
    Resolved,
    /// Every item.
    All,
}

impl Which {
    /// `open`, `resolved` or `all`.
    pub fn parse(s: &str) -> Option<Which> {
        match s {
            "open" => Some(Which::Open),
            "resolved" => Some(Which::Resolved),
            "all" => Some(Which::All),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Which::Open => "resolved_at IS NULL",
            Which::Resolved => "resolved_at IS NOT NULL",
            Which::All => "true",
        }
    }
}

/// What resolving an item did.
#[derive(Debug)]
pub enum Resolved {
    /// Resolved now: the item as it is.
    Done(Value),
    /// No item has that id.
    Unknown,
    /// It was resolved before: the item as it is.
    Already(Value),
}

/// A review item as JSON: `id`, `policy`, `tool`, `execution` (the call
/// that raised it), `subject` (its caller), `seq` (its audit entry),
/// `raisedAt`, `status` (`open` or `resolved`), `resolvedAt`,
/// `resolvedBy`, `note`.
fn item(r: &Row) -> Value {
    let resolved_at: Option<String> = r.get(7);
    json!({
        "id": r.get::<_, i64>(0),
        "seq": r.get::<_, i64>(1),
        "policy": r.get::<_, String>(2),
        "execution": r.get::<_, String>(3),
        "tool": r.get::<_, String>(4),
        "subject": r.get::<_, Option<String>>(5),
        "raisedAt": r.get::<_, String>(6),
        "status": if resolved_at.is_some() { "resolved" } else { "open" },
        "resolvedAt": resolved_at,
        "resolvedBy": r.get::<_, Option<String>>(8),
        "note": r.get::<_, Option<String>>(9),
    })
}

impl PgBackend {
    /// Up to `limit` items of `which`, oldest first, after item `after`;
    /// and the id to continue after when there are more.
    pub async fn reviews(
        &self,
        which: Which,
        after: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<Value>, Option<i64>), StorageError> {
        let mut conn = self.pool.get().await?;
        let r = conn
            .client
            .query(
                &format!(
                    "SELECT {} FROM sinew_reviews WHERE {} AND id > $1 ORDER BY id LIMIT $2",
                    *COLUMNS,
                    which.sql()
                ),
                &[&after.unwrap_or(0), &(limit + 1)],
            )
            .await;
        let rows = self.check(&mut conn, r);
        self.pool.put(conn);
        let mut items: Vec<Value> = rows?.iter().map(item).collect();
        let more = items.len() as i64 > limit;
        items.truncate(usize::try_from(limit).unwrap_or(0));
        let next = more
            .then(|| items.last().and_then(|i| i["id"].as_i64()))
            .flatten();
        Ok((items, next))
    }

    /// Resolves item `id` at `at_ms` as `subject` (with `roles`), with an
    /// optional note, and queues the `review` audit entry of request
    /// `execution` in the same transaction.
    pub async fn resolve_review(
        &self,
        id: i64,
        execution: &str,
        subject: &str,
        roles: &[String],
        note: Option<&str>,
        at_ms: i64,
    ) -> Result<Resolved, StorageError> {
        let at = jiff::Timestamp::from_millisecond(at_ms)
            .map_err(|e| invalid(e.to_string()))?
            .to_string();
        let mut conn = self.pool.get().await?;
        let pg = |e: tokio_postgres::Error| self.error(&e);
        let r = async {
            let c = &conn.client;
            c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await
                .map_err(pg)?;
            let done = c
                .query_opt(
                    &format!(
                        "UPDATE sinew_reviews SET resolved_at = $2::text::timestamptz, \
                           resolved_by = $3, note = $4 \
                         WHERE id = $1 AND resolved_at IS NULL RETURNING {}",
                        *COLUMNS
                    ),
                    &[&id, &at, &subject, &note],
                )
                .await
                .map_err(pg)?;
            let Some(row) = done else {
                c.batch_execute("ROLLBACK").await.map_err(pg)?;
                let was = c
                    .query_opt(
                        &format!("SELECT {} FROM sinew_reviews WHERE id = $1", *COLUMNS),
                        &[&id],
                    )
                    .await
                    .map_err(pg)?;
                return Ok(was.map_or(Resolved::Unknown, |r| Resolved::Already(item(&r))));
            };
            let review = item(&row);
            let entry = json!({
                "kind": "review",
                "execution": execution,
                "time": at,
                "subject": subject,
                "roles": roles,
                "review": review,
            });
            let text = queued_text(&entry, self.component.as_deref()).map_err(invalid)?;
            let digest = sinew_core::hash::sha256_hex(text.as_bytes());
            c.execute(QUEUE_AUDIT, &[&execution, &"review", &text, &digest])
                .await
                .map_err(pg)?;
            c.batch_execute("COMMIT").await.map_err(pg)?;
            Ok(Resolved::Done(review))
        }
        .await;
        if r.is_err() {
            if conn.client.is_closed() {
                conn.broken = true;
            } else {
                let _ = conn.client.batch_execute("ROLLBACK").await;
            }
        }
        self.pool.put(conn);
        if matches!(r, Ok(Resolved::Done(_))) {
            self.audit_ready.notify_one();
        }
        r
    }
}
