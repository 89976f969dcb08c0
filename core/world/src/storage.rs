//! The exported `storage` interface on the world's [`MemoryStorage`], as
//! wasmtime's host does it for its in-memory backend
//! (`host/src/runtime/storage.rs`): rows cross as JSON text, storage errors
//! are the `err` of each result, and a transaction whose handle is dropped
//! without `commit` or `rollback` is rolled back.
//!
//! [`MemoryStorage`]: sinew_core::ports::memory::MemoryStorage

use std::cell::Cell;

use sinew_core::ports::{self, Row, Storage as _, StorageError, TxId};

use crate::bindings::exports::sinew::executor::storage::{
    Guest as StorageGuest, GuestTransaction, Transaction as Handle,
};
use crate::bindings::exports::sinew::executor::types as wit;
use crate::{Component, world};

/// A transaction (or savepoint) the core holds: the store's id for it, and
/// whether it has been committed or rolled back.
pub struct Tx {
    id: TxId,
    finished: Cell<bool>,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.finished.get() {
            // Ignored, as in wasmtime's host: a savepoint whose transaction
            // has already ended is gone with it.
            let _ = world(|w| w.storage.rollback(self.id));
        }
    }
}

type Res<T> = Result<T, wit::StorageError>;

fn opened(id: Result<TxId, StorageError>) -> Res<Handle> {
    let id = id.map_err(error)?;
    Ok(Handle::new(Tx {
        id,
        finished: Cell::new(false),
    }))
}

impl GuestTransaction for Tx {
    fn read(&self, entity: String, q: wit::Query) -> Res<Vec<u8>> {
        read_in(Some(self.id), &entity, q)
    }

    fn read_counted(&self, entity: String, q: wit::Query) -> Res<wit::Counted> {
        read_counted_in(Some(self.id), &entity, q)
    }

    fn aggregate(
        &self,
        entity: String,
        list: Vec<wit::Filter>,
        group_by: Vec<String>,
        tallies: Vec<wit::Measure>,
    ) -> Res<Vec<u8>> {
        aggregate_in(Some(self.id), &entity, list, &group_by, tallies)
    }

    fn insert(&self, entity: String, row: Vec<u8>) -> Res<Vec<u8>> {
        let row = object(&row)?;
        one(world(|w| w.storage.insert(self.id, &entity, &row)))
    }

    fn update(
        &self,
        entity: String,
        id: String,
        expected_version: i64,
        changes: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let changes = object(&changes)?;
        one(world(|w| {
            w.storage
                .update(self.id, &entity, &id, expected_version, &changes)
        }))
    }

    fn update_many(
        &self,
        entity: String,
        ids: Vec<String>,
        versions: Vec<i64>,
        changes: Vec<u8>,
    ) -> Res<Vec<u8>> {
        let changes = decoded_rows(&changes)?;
        let keys: Vec<(String, i64)> = ids.into_iter().zip(versions).collect();
        rows(world(|w| {
            w.storage.update_many(self.id, &entity, &keys, &changes)
        }))
    }

    fn insert_many(&self, entity: String, list: Vec<u8>) -> Res<Vec<u8>> {
        let list = decoded_rows(&list)?;
        rows(world(|w| w.storage.insert_many(self.id, &entity, &list)))
    }

    fn update_where(&self, entity: String, q: wit::Query, changes: Vec<u8>) -> Res<Vec<u8>> {
        let (q, changes) = (query(q)?, object(&changes)?);
        rows(world(|w| {
            w.storage.update_where(self.id, &entity, &q, &changes)
        }))
    }

    fn soft_delete(
        &self,
        entity: String,
        id: String,
        expected_version: i64,
        deleted_at: String,
    ) -> Res<Vec<u8>> {
        one(world(|w| {
            w.storage
                .soft_delete(self.id, &entity, &id, expected_version, &deleted_at)
        }))
    }

    fn enqueue(&self, message: String) -> Res<()> {
        let message = json(&message)?;
        world(|w| w.storage.enqueue(self.id, &message)).map_err(error)
    }

    fn append_audit(&self, entry: String) -> Res<()> {
        let entry = json(&entry)?;
        world(|w| w.storage.append_audit(Some(self.id), &entry)).map_err(error)
    }

    fn complete_key(&self, scope: String, key: String, status: u16, body: String) -> Res<()> {
        let body = json(&body)?;
        world(|w| {
            w.storage
                .complete_key(Some(self.id), &scope, &key, status, &body)
        })
        .map_err(error)
    }

    fn savepoint(&self, level: wit::Isolation) -> Res<Handle> {
        opened(world(|w| w.storage.begin(isolation(level), Some(self.id))))
    }

    fn commit(&self) -> Res<()> {
        self.finished.set(true);
        world(|w| w.storage.commit(self.id)).map_err(error)
    }

    fn rollback(&self) -> Res<()> {
        self.finished.set(true);
        world(|w| w.storage.rollback(self.id)).map_err(error)
    }
}

impl StorageGuest for Component {
    type Transaction = Tx;

    fn begin(level: wit::Isolation) -> Res<Handle> {
        opened(world(|w| w.storage.begin(isolation(level), None)))
    }

    fn read(entity: String, q: wit::Query) -> Res<Vec<u8>> {
        read_in(None, &entity, q)
    }

    fn read_counted(entity: String, q: wit::Query) -> Res<wit::Counted> {
        read_counted_in(None, &entity, q)
    }

    fn aggregate(
        entity: String,
        list: Vec<wit::Filter>,
        group_by: Vec<String>,
        tallies: Vec<wit::Measure>,
    ) -> Res<Vec<u8>> {
        aggregate_in(None, &entity, list, &group_by, tallies)
    }

    fn append_audit(entry: String) -> Res<()> {
        let entry = json(&entry)?;
        world(|w| w.storage.append_audit(None, &entry)).map_err(error)
    }

    fn claim_key(scope: String, key: String, fingerprint: String, now_ms: i64) -> Res<wit::Claim> {
        let claim = world(|w| w.storage.claim_key(&scope, &key, &fingerprint, now_ms));
        Ok(match claim.map_err(error)? {
            ports::Claim::New => wit::Claim::New,
            ports::Claim::Replay { status, body } => wit::Claim::Replay(wit::StoredResponse {
                status,
                body: sinew_core::hash::json_text(&body),
            }),
            ports::Claim::Mismatch => wit::Claim::Mismatch,
            ports::Claim::InFlight => wit::Claim::InFlight,
        })
    }

    fn complete_key(scope: String, key: String, status: u16, body: String) -> Res<()> {
        let body = json(&body)?;
        world(|w| w.storage.complete_key(None, &scope, &key, status, &body)).map_err(error)
    }

    fn release_key(scope: String, key: String) -> Res<()> {
        world(|w| w.storage.release_key(&scope, &key)).map_err(error)
    }

    fn rate_hit(scope: String, window_ms: i64) -> Res<u64> {
        world(|w| w.storage.rate_hit(&scope, window_ms)).map_err(error)
    }
}

// -- WIT <-> core -------------------------------------------------------------

sinew_core::wit_storage_conversions!();

/// A storage error as the WIT says it (for `?` in the exports).
impl From<StorageError> for wit::StorageError {
    fn from(e: StorageError) -> Self {
        error(e)
    }
}

fn one(r: Result<Row, StorageError>) -> Res<Vec<u8>> {
    r.map(|row| ports::wire::row(&row)).map_err(error)
}

// The reads, in a transaction (`Some`) or outside one.

fn read_in(tx: Option<TxId>, entity: &str, q: wit::Query) -> Res<Vec<u8>> {
    let q = query(q)?;
    rows(world(|w| w.storage.read(tx, entity, &q)))
}

fn read_counted_in(tx: Option<TxId>, entity: &str, q: wit::Query) -> Res<wit::Counted> {
    let q = query(q)?;
    counted(world(|w| w.storage.read_counted(tx, entity, &q)))
}

fn aggregate_in(
    tx: Option<TxId>,
    entity: &str,
    list: Vec<wit::Filter>,
    group_by: &[String],
    tallies: Vec<wit::Measure>,
) -> Res<Vec<u8>> {
    let (f, m) = (filters(list)?, measures(tallies));
    rows(world(|w| w.storage.aggregate(tx, entity, &f, group_by, &m)))
}

fn counted(r: Result<(Vec<Row>, u64), StorageError>) -> Res<wit::Counted> {
    let (list, total) = r.map_err(error)?;
    Ok(wit::Counted {
        rows: rows(Ok(list))?,
        total,
    })
}

fn rows(r: Result<Vec<Row>, StorageError>) -> Res<Vec<u8>> {
    r.map(|list| ports::wire::rows(&list)).map_err(error)
}
