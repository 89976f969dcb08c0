//! The `storage` import: typed operations on a backend (in memory here, on
//! Postgres in the server).

use serde_json::Value;
use sinew_core::ports::memory::MemoryStorage;
use sinew_core::ports::{self, Claim, Query, Row, StorageError, TxId};
use sinew_core::spec::Isolation;
use std::sync::{Arc, Mutex};
use wasmtime::component::Resource;

use super::bindings::sinew::executor::storage::{Host, HostTransaction};
use super::bindings::sinew::executor::types::{self as wit, Host as TypesHost};
use super::{Ends, HostState};

/// A transaction resource: the backend's id for it.
pub struct Tx {
    id: u64,
}

/// What the storage import runs on. Shared by every instance.
#[async_trait::async_trait]
pub trait StorageBackend: Send + Sync + 'static {
    /// Starts a transaction (or a savepoint of `parent`).
    async fn begin(&self, isolation: Isolation, parent: Option<u64>) -> Result<u64, StorageError>;
    /// Reads rows.
    async fn read(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError>;
    /// Reads rows and counts the rows the filters match (one statement).
    async fn read_counted(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError>;
    /// The groups of an aggregate.
    async fn aggregate(
        &self,
        tx: Option<u64>,
        entity: &str,
        filters: &[ports::Predicate],
        group_by: &[String],
        measures: &[ports::Measure],
    ) -> Result<Vec<Row>, StorageError>;
    /// Inserts a row.
    async fn insert(&self, tx: u64, entity: &str, row: &Row) -> Result<Row, StorageError>;
    /// Updates a row by id and version.
    async fn update(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError>;
    /// Several updates by id and version, all or nothing (one statement on
    /// Postgres); the rows in that order.
    async fn update_many(
        &self,
        tx: u64,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError>;
    /// Inserts complete rows, all or nothing (one statement on Postgres);
    /// the rows as stored, in that order.
    async fn insert_many(
        &self,
        tx: u64,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError>;
    /// Writes the same changes into every row a query picks (one
    /// statement on Postgres); the rows in the query's order.
    async fn update_where(
        &self,
        tx: u64,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError>;
    /// Soft-deletes a row by id and version.
    async fn soft_delete(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        at: &str,
    ) -> Result<Row, StorageError>;
    /// Commits.
    async fn commit(&self, tx: u64) -> Result<(), StorageError>;
    /// Rolls back.
    async fn rollback(&self, tx: u64) -> Result<(), StorageError>;
    /// Records an outbox message in a transaction.
    async fn enqueue(&self, tx: u64, message: &Value) -> Result<(), StorageError>;
    /// Appends an audit entry.
    async fn append_audit(&self, tx: Option<u64>, entry: &Value) -> Result<(), StorageError>;
    /// Claims an idempotency key.
    async fn claim_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError>;
    /// Stores a key's response.
    async fn complete_key(
        &self,
        tx: Option<u64>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError>;
    /// Releases a key.
    async fn release_key(&self, scope: &str, key: &str) -> Result<(), StorageError>;
    /// Counts a rate-limit hit.
    async fn rate_hit(&self, scope: &str, window_ms: i64) -> Result<u64, StorageError>;
}

/// The in-memory store (or any storage of the core: a replay's answers),
/// shared behind a mutex.
pub struct MemoryBackend<S = MemoryStorage>(pub Arc<Mutex<S>>);

impl<S> Clone for MemoryBackend<S> {
    fn clone(&self) -> Self {
        MemoryBackend(self.0.clone())
    }
}

impl<S: Default> Default for MemoryBackend<S> {
    fn default() -> Self {
        MemoryBackend(Arc::default())
    }
}

impl<S: ports::Storage> MemoryBackend<S> {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut S) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        match self.0.lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => Err(StorageError::Unavailable {
                message: "the in-memory store is poisoned".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl<S: ports::Storage + Send + 'static> StorageBackend for MemoryBackend<S> {
    async fn begin(&self, isolation: Isolation, parent: Option<u64>) -> Result<u64, StorageError> {
        self.with(|s| ports::Storage::begin(s, isolation, parent.map(TxId)).map(|t| t.0))
    }
    async fn read(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        self.with(|s| ports::Storage::read(s, tx.map(TxId), entity, q))
    }
    async fn read_counted(
        &self,
        tx: Option<u64>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        self.with(|s| ports::Storage::read_counted(s, tx.map(TxId), entity, q))
    }
    async fn aggregate(
        &self,
        tx: Option<u64>,
        entity: &str,
        filters: &[ports::Predicate],
        group_by: &[String],
        measures: &[ports::Measure],
    ) -> Result<Vec<Row>, StorageError> {
        self.with(|s| {
            ports::Storage::aggregate(s, tx.map(TxId), entity, filters, group_by, measures)
        })
    }
    async fn insert(&self, tx: u64, entity: &str, row: &Row) -> Result<Row, StorageError> {
        self.with(|s| ports::Storage::insert(s, TxId(tx), entity, row))
    }
    async fn update(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        self.with(|s| ports::Storage::update(s, TxId(tx), entity, id, version, changes))
    }
    async fn update_many(
        &self,
        tx: u64,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        self.with(|s| ports::Storage::update_many(s, TxId(tx), entity, keys, changes))
    }
    async fn insert_many(
        &self,
        tx: u64,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        self.with(|s| ports::Storage::insert_many(s, TxId(tx), entity, rows))
    }
    async fn update_where(
        &self,
        tx: u64,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        self.with(|s| ports::Storage::update_where(s, TxId(tx), entity, q, changes))
    }
    async fn soft_delete(
        &self,
        tx: u64,
        entity: &str,
        id: &str,
        version: i64,
        at: &str,
    ) -> Result<Row, StorageError> {
        self.with(|s| ports::Storage::soft_delete(s, TxId(tx), entity, id, version, at))
    }
    async fn commit(&self, tx: u64) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::commit(s, TxId(tx)))
    }
    async fn rollback(&self, tx: u64) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::rollback(s, TxId(tx)))
    }
    async fn enqueue(&self, tx: u64, message: &Value) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::enqueue(s, TxId(tx), message))
    }
    async fn append_audit(&self, tx: Option<u64>, entry: &Value) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::append_audit(s, tx.map(TxId), entry))
    }
    async fn claim_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        self.with(|s| ports::Storage::claim_key(s, scope, key, fingerprint, now_ms))
    }
    async fn complete_key(
        &self,
        tx: Option<u64>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::complete_key(s, tx.map(TxId), scope, key, status, body))
    }
    async fn release_key(&self, scope: &str, key: &str) -> Result<(), StorageError> {
        self.with(|s| ports::Storage::release_key(s, scope, key))
    }
    async fn rate_hit(&self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        self.with(|s| ports::Storage::rate_hit(s, scope, window_ms))
    }
}

// -- WIT <-> core -----------------------------------------------------------

sinew_core::wit_storage_conversions!();

/// A row in the row encoding.
fn encoded_row(r: Row) -> Vec<u8> {
    sinew_core::ports::wire::row(&r)
}

/// Rows in the row encoding.
fn encoded(list: Vec<Row>) -> Vec<u8> {
    sinew_core::ports::wire::rows(&list)
}

type Res<T> = wasmtime::Result<Result<T, wit::StorageError>>;

impl TypesHost for HostState {}

impl HostState {
    fn tx_id(&self, t: &Resource<Tx>) -> wasmtime::Result<u64> {
        Ok(self.table.get(t)?.id)
    }

    async fn open(&mut self, r: Result<u64, StorageError>) -> Res<Resource<Tx>> {
        match r {
            Ok(id) => {
                self.call.open.push(id);
                Ok(Ok(self.table.push(Tx { id })?))
            }
            Err(e) => Ok(Err(error(e))),
        }
    }
}

/// The value a guest's argument decodes to, or (returned from the
/// import) the typed error saying why it does not.
macro_rules! accepted {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(error(e))),
        }
    };
}

/// The reads, in a transaction (`Some`) or outside one.
impl HostState {
    async fn read_in(&mut self, tx: Option<u64>, entity: String, q: wit::Query) -> Res<Vec<u8>> {
        let q = accepted!(query(q));
        Ok(self
            .backends
            .storage
            .read(tx, &entity, &q)
            .await
            .map(encoded)
            .map_err(error))
    }

    async fn read_counted_in(
        &mut self,
        tx: Option<u64>,
        entity: String,
        q: wit::Query,
    ) -> Res<wit::Counted> {
        let q = accepted!(query(q));
        Ok(self
            .backends
            .storage
            .read_counted(tx, &entity, &q)
            .await
            .map(counted)
            .map_err(error))
    }

    async fn aggregate_in(
        &mut self,
        tx: Option<u64>,
        entity: String,
        list: Vec<wit::Filter>,
        group_by: Vec<String>,
        tallies: Vec<wit::Measure>,
    ) -> Res<Vec<u8>> {
        let f = accepted!(filters(list));
        Ok(self
            .backends
            .storage
            .aggregate(tx, &entity, &f, &group_by, &measures(tallies))
            .await
            .map(encoded)
            .map_err(error))
    }
}

fn counted((rows, total): (Vec<Row>, u64)) -> wit::Counted {
    wit::Counted {
        rows: encoded(rows),
        total,
    }
}

impl HostTransaction for HostState {
    async fn read(&mut self, t: Resource<Tx>, entity: String, q: wit::Query) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        self.read_in(Some(id), entity, q).await
    }

    async fn read_counted(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        q: wit::Query,
    ) -> Res<wit::Counted> {
        let id = self.tx_id(&t)?;
        self.read_counted_in(Some(id), entity, q).await
    }

    async fn aggregate(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        list: Vec<wit::Filter>,
        group_by: Vec<String>,
        tallies: Vec<wit::Measure>,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        self.aggregate_in(Some(id), entity, list, group_by, tallies)
            .await
    }

    async fn insert(&mut self, t: Resource<Tx>, entity: String, row: Vec<u8>) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        let row = accepted!(object(&row));
        Ok(self
            .backends
            .storage
            .insert(id, &entity, &row)
            .await
            .map(encoded_row)
            .map_err(error))
    }

    async fn update(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        row_id: String,
        version: i64,
        changes: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        let changes = accepted!(object(&changes));
        Ok(self
            .backends
            .storage
            .update(id, &entity, &row_id, version, &changes)
            .await
            .map(encoded_row)
            .map_err(error))
    }

    async fn insert_many(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        rows: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        let rows = accepted!(decoded_rows(&rows));
        Ok(self
            .backends
            .storage
            .insert_many(id, &entity, &rows)
            .await
            .map(encoded)
            .map_err(error))
    }

    async fn update_many(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        ids: Vec<String>,
        versions: Vec<i64>,
        changes: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        let changes = accepted!(decoded_rows(&changes));
        let keys: Vec<(String, i64)> = ids.into_iter().zip(versions).collect();
        Ok(self
            .backends
            .storage
            .update_many(id, &entity, &keys, &changes)
            .await
            .map(encoded)
            .map_err(error))
    }

    async fn update_where(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        q: wit::Query,
        changes: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        let (q, changes) = accepted!(query(q).and_then(|q| object(&changes).map(|c| (q, c))));
        Ok(self
            .backends
            .storage
            .update_where(id, &entity, &q, &changes)
            .await
            .map(encoded)
            .map_err(error))
    }

    async fn soft_delete(
        &mut self,
        t: Resource<Tx>,
        entity: String,
        row_id: String,
        version: i64,
        at: String,
    ) -> Res<Vec<u8>> {
        let id = self.tx_id(&t)?;
        Ok(self
            .backends
            .storage
            .soft_delete(id, &entity, &row_id, version, &at)
            .await
            .map(encoded_row)
            .map_err(error))
    }

    async fn enqueue(&mut self, t: Resource<Tx>, message: String) -> Res<()> {
        let id = self.tx_id(&t)?;
        let message = accepted!(json(&message));
        Ok(self
            .backends
            .storage
            .enqueue(id, &message)
            .await
            .map_err(error))
    }

    async fn append_audit(&mut self, t: Resource<Tx>, entry: String) -> Res<()> {
        let id = self.tx_id(&t)?;
        let entry = accepted!(json(&entry));
        let r = self.backends.storage.append_audit(Some(id), &entry).await;
        if r.is_ok() {
            self.call.appended(Some(id), entry);
        }
        Ok(r.map_err(error))
    }

    async fn complete_key(
        &mut self,
        t: Resource<Tx>,
        scope: String,
        key: String,
        status: u16,
        body: String,
    ) -> Res<()> {
        let id = self.tx_id(&t)?;
        let body = accepted!(json(&body));
        Ok(self
            .backends
            .storage
            .complete_key(Some(id), &scope, &key, status, &body)
            .await
            .map_err(error))
    }

    async fn savepoint(&mut self, t: Resource<Tx>, level: wit::Isolation) -> Res<Resource<Tx>> {
        let id = self.tx_id(&t)?;
        let r = self
            .backends
            .storage
            .begin(isolation(level), Some(id))
            .await;
        self.open(r).await
    }

    async fn commit(&mut self, t: Resource<Tx>) -> Res<()> {
        let id = self.tx_id(&t)?;
        self.call.open.retain(|x| *x != id);
        let storage = self.backends.storage.clone();
        let r = self
            .call
            .end_with(Ends::Commit(id), async move { storage.commit(id).await })
            .await;
        Ok(r.map_err(error))
    }

    async fn rollback(&mut self, t: Resource<Tx>) -> Res<()> {
        let id = self.tx_id(&t)?;
        self.call.open.retain(|x| *x != id);
        self.call.ended(id, false);
        Ok(self.backends.storage.rollback(id).await.map_err(error))
    }

    async fn drop(&mut self, t: Resource<Tx>) -> wasmtime::Result<()> {
        let tx = self.table.delete(t)?;
        // Dropped without commit: roll back.
        if self.call.open.contains(&tx.id) {
            self.call.open.retain(|x| *x != tx.id);
            self.call.ended(tx.id, false);
            let _ = self.backends.storage.rollback(tx.id).await;
        }
        Ok(())
    }
}

impl Host for HostState {
    async fn begin(&mut self, level: wit::Isolation) -> Res<Resource<Tx>> {
        let r = self.backends.storage.begin(isolation(level), None).await;
        self.open(r).await
    }

    async fn read(&mut self, entity: String, q: wit::Query) -> Res<Vec<u8>> {
        self.read_in(None, entity, q).await
    }

    async fn read_counted(&mut self, entity: String, q: wit::Query) -> Res<wit::Counted> {
        self.read_counted_in(None, entity, q).await
    }

    async fn aggregate(
        &mut self,
        entity: String,
        list: Vec<wit::Filter>,
        group_by: Vec<String>,
        tallies: Vec<wit::Measure>,
    ) -> Res<Vec<u8>> {
        self.aggregate_in(None, entity, list, group_by, tallies)
            .await
    }

    async fn append_audit(&mut self, entry: String) -> Res<()> {
        let entry = accepted!(json(&entry));
        let storage = self.backends.storage.clone();
        let step = {
            let entry = entry.clone();
            async move { storage.append_audit(None, &entry).await }
        };
        let r = self.call.end_with(Ends::Entry(entry), step).await;
        Ok(r.map_err(error))
    }

    async fn claim_key(
        &mut self,
        scope: String,
        key: String,
        fingerprint: String,
        now_ms: i64,
    ) -> Res<wit::Claim> {
        let claim = self
            .backends
            .storage
            .claim_key(&scope, &key, &fingerprint, now_ms)
            .await;
        if let Ok(Claim::New) = claim {
            // Kept until the call ends: a trap releases it (completing it
            // first makes that a no-op).
            self.call.claimed.push((scope, key));
        }
        Ok(claim
            .map(|c| match c {
                Claim::New => wit::Claim::New,
                Claim::Replay { status, body } => wit::Claim::Replay(wit::StoredResponse {
                    status,
                    body: sinew_core::hash::json_text(&body),
                }),
                Claim::Mismatch => wit::Claim::Mismatch,
                Claim::InFlight => wit::Claim::InFlight,
            })
            .map_err(error))
    }

    async fn complete_key(
        &mut self,
        scope: String,
        key: String,
        status: u16,
        body: String,
    ) -> Res<()> {
        let body = accepted!(json(&body));
        Ok(self
            .backends
            .storage
            .complete_key(None, &scope, &key, status, &body)
            .await
            .map_err(error))
    }

    async fn release_key(&mut self, scope: String, key: String) -> Res<()> {
        self.call.claimed.retain(|(s, k)| *s != scope || *k != key);
        Ok(self
            .backends
            .storage
            .release_key(&scope, &key)
            .await
            .map_err(error))
    }

    async fn rate_hit(&mut self, scope: String, window_ms: i64) -> Res<u64> {
        Ok(self
            .backends
            .storage
            .rate_hit(&scope, window_ms)
            .await
            .map_err(error))
    }
}
