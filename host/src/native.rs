//! The native core behind `sinew serve --native`: the same interpreter
//! compiled into this binary instead of the WebAssembly component, on the
//! same backends. For benchmarks (component vs native on the same server);
//! it has no guest deadline (a tool's `timeoutMs` is not enforced) and no
//! memory isolation, so production runs the component.

use serde_json::Value;
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Request, Response};
use sinew_core::ports::{
    CallRequest, CallResult, Claim, Clock, External, Isolation, Query, Row, Storage, StorageError,
    TxId,
};
use sinew_core::problem::{Code, Problem};
use std::sync::Arc;
use tokio::runtime::Handle;

use crate::runtime::Backends;

/// A loaded bundle run natively.
pub struct Native {
    bundle: Arc<Bundle>,
    backends: Backends,
}

/// The async backends seen through the core's synchronous ports, from a
/// blocking thread.
#[derive(Clone)]
struct Blocking<'a> {
    backends: &'a Backends,
    handle: Handle,
}

impl Storage for Blocking<'_> {
    fn begin(&mut self, isolation: Isolation, parent: Option<TxId>) -> Result<TxId, StorageError> {
        self.handle
            .block_on(self.backends.storage.begin(isolation, parent.map(|t| t.0)))
            .map(TxId)
    }
    fn read(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        self.handle
            .block_on(self.backends.storage.read(tx.map(|t| t.0), entity, q))
    }
    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        self.handle.block_on(
            self.backends
                .storage
                .read_counted(tx.map(|t| t.0), entity, q),
        )
    }
    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        filters: &[sinew_core::ports::Predicate],
        group_by: &[String],
        measures: &[sinew_core::ports::Measure],
    ) -> Result<Vec<Row>, StorageError> {
        self.handle.block_on(self.backends.storage.aggregate(
            tx.map(|t| t.0),
            entity,
            filters,
            group_by,
            measures,
        ))
    }
    fn insert(&mut self, tx: TxId, entity: &str, row: &Row) -> Result<Row, StorageError> {
        self.handle
            .block_on(self.backends.storage.insert(tx.0, entity, row))
    }
    fn update(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        self.handle.block_on(self.backends.storage.update(
            tx.0,
            entity,
            id,
            expected_version,
            changes,
        ))
    }
    fn update_many(
        &mut self,
        tx: TxId,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        self.handle.block_on(
            self.backends
                .storage
                .update_many(tx.0, entity, keys, changes),
        )
    }
    fn insert_many(
        &mut self,
        tx: TxId,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        self.handle
            .block_on(self.backends.storage.insert_many(tx.0, entity, rows))
    }
    fn update_where(
        &mut self,
        tx: TxId,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        self.handle
            .block_on(self.backends.storage.update_where(tx.0, entity, q, changes))
    }
    fn soft_delete(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        deleted_at: &str,
    ) -> Result<Row, StorageError> {
        self.handle.block_on(self.backends.storage.soft_delete(
            tx.0,
            entity,
            id,
            expected_version,
            deleted_at,
        ))
    }
    fn commit(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.handle.block_on(self.backends.storage.commit(tx.0))
    }
    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.handle.block_on(self.backends.storage.rollback(tx.0))
    }
    fn enqueue(&mut self, tx: TxId, message: &Value) -> Result<(), StorageError> {
        self.handle
            .block_on(self.backends.storage.enqueue(tx.0, message))
    }
    fn append_audit(&mut self, tx: Option<TxId>, entry: &Value) -> Result<(), StorageError> {
        self.handle
            .block_on(self.backends.storage.append_audit(tx.map(|t| t.0), entry))
    }
    fn claim_key(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        self.handle.block_on(
            self.backends
                .storage
                .claim_key(scope, key, fingerprint, now_ms),
        )
    }
    fn complete_key(
        &mut self,
        tx: Option<TxId>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError> {
        self.handle.block_on(self.backends.storage.complete_key(
            tx.map(|t| t.0),
            scope,
            key,
            status,
            body,
        ))
    }
    fn release_key(&mut self, scope: &str, key: &str) -> Result<(), StorageError> {
        self.handle
            .block_on(self.backends.storage.release_key(scope, key))
    }
    fn rate_hit(&mut self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        self.handle
            .block_on(self.backends.storage.rate_hit(scope, window_ms))
    }
}

impl Clock for Blocking<'_> {
    fn now_ms(&mut self) -> i64 {
        self.backends.clock.now_ms()
    }
}

impl External for Blocking<'_> {
    fn call(&mut self, request: &CallRequest) -> CallResult {
        self.handle.block_on(self.backends.external.call(request))
    }
}

impl Native {
    /// Loads a spec.
    pub fn new(spec: &str, backends: Backends) -> Result<Native, String> {
        let bundle = Bundle::load(spec).map_err(|e| format!("{e:?}"))?;
        Ok(Native {
            bundle: Arc::new(bundle),
            backends,
        })
    }

    /// The bundle's hash.
    pub fn bundle_hash(&self) -> &str {
        &self.bundle.hash
    }

    /// Runs a request on a blocking thread.
    pub async fn execute(&self, request: &Request) -> Response {
        let (bundle, backends, owned) =
            (self.bundle.clone(), self.backends.clone(), request.clone());
        let handle = Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            // The contract borrows each port mutably: three handles on the
            // same backends.
            let mut storage = Blocking {
                backends: &backends,
                handle,
            };
            let (mut clock, mut calls) = (storage.clone(), storage.clone());
            sinew_core::contract::execute(&bundle, &owned, &mut storage, &mut clock, &mut calls)
        })
        .await;
        match done {
            Ok(r) => r,
            Err(e) => {
                self.reject_with(
                    request,
                    Problem::new(Code::Internal, "internal error")
                        .internal(format!("the native executor failed: {e}")),
                )
                .await
            }
        }
    }

    /// Turns a request away before it runs (see `Executor::reject`).
    pub async fn reject(&self, request: &Request, problem: Problem) -> Response {
        let sensitive = self.sensitive(&request.tool);
        self.backends
            .refuse((&self.bundle.hash, sensitive), request, &problem)
            .await
    }

    async fn reject_with(&self, request: &Request, problem: Problem) -> Response {
        let sensitive = self.sensitive(&request.tool);
        self.backends
            .turn_away((&self.bundle.hash, sensitive), request, &problem, None)
            .await
    }

    /// Tool `tool`'s `sensitive` input properties.
    fn sensitive(&self, tool: &str) -> &[String] {
        self.bundle
            .spec
            .tools
            .get(tool)
            .map_or(&[], |t| t.sensitive.as_slice())
    }
}
