//! A storage whose every operation is a span (traces on): named by its SQL
//! statement and table (`SELECT order`, `INSERT order`, `COMMIT`), with
//! `db.system.name`, `db.operation.name` and `db.collection.name`, never a
//! value. The spans are children of the guest's execution span.

use std::sync::Arc;

use opentelemetry::KeyValue;
use serde_json::Value;
use sinew_core::ports::{self, Claim, Query, Row, StorageError};
use sinew_core::spec::Isolation;

use super::{Kind, in_span};
use crate::runtime::storage::StorageBackend;

/// `S`, traced.
pub struct Traced<S>(pub Arc<S>);

/// Runs `f` in a span for statement `op` on `entity`'s table.
async fn traced<T>(
    op: &'static str,
    entity: Option<&str>,
    f: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let table = entity.map(sinew_core::migrate::table_name);
    let name = match &table {
        Some(t) => format!("{op} {t}"),
        None => op.to_owned(),
    };
    let mut attributes = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.operation.name", op),
    ];
    if let Some(t) = table {
        attributes.push(KeyValue::new("db.collection.name", t));
    }
    in_span(name, Kind::Client, attributes, async {
        let r = f.await;
        if let Err(e) = &r {
            // The error's kind, never its message (it may quote a value).
            super::fail_current(match e {
                StorageError::Conflict { .. } => "conflict",
                StorageError::Unique { .. } => "unique",
                StorageError::NotFound { .. } => "not found",
                StorageError::Unavailable { .. } => "unavailable",
                _ => "invalid",
            });
        }
        r
    })
    .await
}

#[async_trait::async_trait]
impl<S: StorageBackend> StorageBackend for Traced<S> {
    async fn begin(&self, isolation: Isolation, parent: Option<u64>) -> Result<u64, StorageError> {
        let op = if parent.is_some() {
            "SAVEPOINT"
        } else {
            "BEGIN"
        };
        traced(op, None, self.0.begin(isolation, parent)).await
    }

    async fn read(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        traced("SELECT", Some(entity), self.0.read(tx, entity, q)).await
    }

    async fn read_counted(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        traced("SELECT", Some(entity), self.0.read_counted(tx, entity, q)).await
    }

    async fn aggregate(
        &self,
        tx: Option<u64>,
        entity: &str,
        filters: &[ports::Predicate],
        group_by: &[String],
        measures: &[ports::Measure],
    ) -> Result<Vec<Row>, StorageError> {
        let f = self.0.aggregate(tx, entity, filters, group_by, measures);
        traced("SELECT", Some(entity), f).await
    }

    async fn insert(&self, tx: u64, entity: &str, row: &Row) -> Result<Row, StorageError> {
        traced("INSERT", Some(entity), self.0.insert(tx, entity, row)).await
    }

    async fn update(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        let f = self.0.update(tx, entity, id, version, changes);
        traced("UPDATE", Some(entity), f).await
    }

    async fn update_many(
        &self,
        tx: u64,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let f = self.0.update_many(tx, entity, keys, changes);
        traced("UPDATE", Some(entity), f).await
    }

    async fn insert_many(
        &self,
        tx: u64,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        traced("INSERT", Some(entity), self.0.insert_many(tx, entity, rows)).await
    }

    async fn update_where(
        &self,
        tx: u64,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        let f = self.0.update_where(tx, entity, q, changes);
        traced("UPDATE", Some(entity), f).await
    }

    async fn soft_delete(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        at: &str,
    ) -> Result<Row, StorageError> {
        let f = self.0.soft_delete(tx, entity, id, version, at);
        traced("UPDATE", Some(entity), f).await
    }

    async fn commit(&self, tx: u64) -> Result<(), StorageError> {
        traced("COMMIT", None, self.0.commit(tx)).await
    }

    async fn rollback(&self, tx: u64) -> Result<(), StorageError> {
        traced("ROLLBACK", None, self.0.rollback(tx)).await
    }

    async fn enqueue(&self, tx: u64, message: &Value) -> Result<(), StorageError> {
        traced("INSERT", Some("sinew_outbox"), self.0.enqueue(tx, message)).await
    }

    async fn append_audit(&self, tx: Option<u64>, entry: &Value) -> Result<(), StorageError> {
        let f = self.0.append_audit(tx, entry);
        traced("INSERT", Some("sinew_audit_queue"), f).await
    }

    async fn claim_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        let f = self.0.claim_key(scope, key, fingerprint, now_ms);
        traced("INSERT", Some("sinew_idempotency"), f).await
    }

    async fn complete_key(
        &self,
        tx: Option<u64>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError> {
        let f = self.0.complete_key(tx, scope, key, status, body);
        traced("UPDATE", Some("sinew_idempotency"), f).await
    }

    async fn release_key(&self, scope: &str, key: &str) -> Result<(), StorageError> {
        let f = self.0.release_key(scope, key);
        traced("DELETE", Some("sinew_idempotency"), f).await
    }

    async fn rate_hit(&self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        let f = self.0.rate_hit(scope, window_ms);
        traced("INSERT", Some("sinew_rate"), f).await
    }
}
