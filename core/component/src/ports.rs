//! The core's ports on top of the imported WIT interfaces.

use std::collections::BTreeMap;

use serde_json::Value;
use sinew_core::ports::{
    self, CallOutcome, CallRequest, CallResult, Claim, Measure, Predicate, Query, Row,
    StorageError, Tally, Token, TxId, wire,
};
use sinew_core::spec::{Backoff, FilterOp, Isolation};

use crate::sinew::executor::{clock, external, storage, types};

/// Storage through the `storage` import. Transactions are WIT resources;
/// the core names them by `TxId`.
#[derive(Default)]
pub struct WitStorage {
    txs: BTreeMap<u64, storage::Transaction>,
    next: u64,
    /// The text of the last final audit entry appended: the contract
    /// answers with the entry it appended last, so the response carries
    /// this text instead of writing the entry a second time.
    pub final_entry: Option<String>,
}

fn isolation(i: Isolation) -> types::Isolation {
    match i {
        Isolation::ReadCommitted => types::Isolation::ReadCommitted,
        Isolation::RepeatableRead => types::Isolation::RepeatableRead,
        Isolation::Serializable => types::Isolation::Serializable,
    }
}

fn op(o: FilterOp) -> types::FilterOp {
    match o {
        FilterOp::Eq => types::FilterOp::Eq,
        FilterOp::Ne => types::FilterOp::Ne,
        FilterOp::Lt => types::FilterOp::Lt,
        FilterOp::Lte => types::FilterOp::Lte,
        FilterOp::Gt => types::FilterOp::Gt,
        FilterOp::Gte => types::FilterOp::Gte,
        FilterOp::In => types::FilterOp::In,
        FilterOp::NotIn => types::FilterOp::NotIn,
        FilterOp::IsNull => types::FilterOp::IsNull,
        FilterOp::StartsWith => types::FilterOp::StartsWith,
        FilterOp::Contains => types::FilterOp::Contains,
        FilterOp::IContains => types::FilterOp::Icontains,
    }
}

fn filters(list: &[Predicate]) -> Vec<types::Filter> {
    ports::to_tokens(list)
        .into_iter()
        .map(|t| match t {
            Token::Is(c) => types::Filter::Is(types::Condition {
                field: c.field,
                op: op(c.op),
                value: wire::value(&c.value),
            }),
            Token::All(n) => types::Filter::All(n),
            Token::Any(n) => types::Filter::Any(n),
            Token::Not => types::Filter::Not,
            Token::Via(hop) => types::Filter::Via(types::Hop {
                field: hop.field,
                entity: hop.entity,
            }),
        })
        .collect()
}

fn sort_keys(order: &[sinew_core::ports::SortKey]) -> Vec<types::SortKey> {
    order
        .iter()
        .map(|k| types::SortKey {
            field: k.field.clone(),
            desc: k.desc,
        })
        .collect()
}

fn embeds(include: &[sinew_core::ports::Include]) -> Vec<types::Embed> {
    ports::flatten_includes(include)
        .into_iter()
        .map(|(parent, inc)| types::Embed {
            parent,
            name: inc.name,
            entity: inc.entity,
            link: match inc.link {
                sinew_core::ports::Link::One(f) => types::Link::One(f),
                sinew_core::ports::Link::Many(f) => types::Link::Many(f),
            },
            filters: filters(&inc.filters),
            order: sort_keys(&inc.order),
            limit: inc.limit,
        })
        .collect()
}

fn measures(list: &[Measure]) -> Vec<types::Measure> {
    list.iter()
        .map(|m| types::Measure {
            name: m.name.clone(),
            tally: match m.tally {
                Tally::Rows => types::Tally::Rows,
                Tally::Count => types::Tally::Count,
                Tally::Sum => types::Tally::Sum,
                Tally::Min => types::Tally::Min,
                Tally::Max => types::Tally::Max,
            },
            field: m.field.clone(),
        })
        .collect()
}

fn query(q: &Query) -> types::Query {
    types::Query {
        filters: filters(&q.filters),
        order: sort_keys(&q.order),
        limit: q.limit,
        after: q
            .after
            .as_ref()
            .map(|a| a.iter().map(wire::value).collect()),
        lock: q.lock,
        embeds: embeds(&q.include),
    }
}

pub(crate) use sinew_core::hash::json_text as json;

fn error(e: types::StorageError) -> StorageError {
    match e {
        types::StorageError::Conflict(message) => StorageError::Conflict { message },
        types::StorageError::Unique(u) => StorageError::Unique {
            entity: u.entity,
            field: u.field,
        },
        types::StorageError::NotFound(r) => StorageError::NotFound {
            entity: r.entity,
            id: r.id,
        },
        types::StorageError::Unavailable(message) => StorageError::Unavailable { message },
        types::StorageError::Invalid(message) => StorageError::Invalid { message },
    }
}

fn decoded<T>(r: Result<T, wire::WireError>) -> Result<T, StorageError> {
    r.map_err(|e| StorageError::Invalid {
        message: format!("the host returned rows that cannot be decoded: {e}"),
    })
}

fn row(bytes: &[u8]) -> Result<Row, StorageError> {
    decoded(wire::to_row(bytes))
}

fn rows(bytes: &[u8]) -> Result<Vec<Row>, StorageError> {
    decoded(wire::to_rows(bytes))
}

impl WitStorage {
    fn unknown(tx: TxId) -> StorageError {
        StorageError::Invalid {
            message: format!("transaction {} is unknown or finished", tx.0),
        }
    }

    fn tx(&self, tx: TxId) -> Result<&storage::Transaction, StorageError> {
        self.txs.get(&tx.0).ok_or_else(|| Self::unknown(tx))
    }

    /// Takes a transaction out of the table, to commit or roll it back.
    fn finish(&mut self, tx: TxId) -> Result<storage::Transaction, StorageError> {
        self.txs.remove(&tx.0).ok_or_else(|| Self::unknown(tx))
    }

    /// The `read` import, in a transaction or outside one.
    fn read_rows(
        &self,
        tx: Option<TxId>,
        entity: &str,
        q: &types::Query,
    ) -> Result<Vec<u8>, StorageError> {
        match tx {
            Some(t) => self.tx(t)?.read(entity, q),
            None => storage::read(entity, q),
        }
        .map_err(error)
    }

    /// The `read-counted` import, in a transaction or outside one.
    fn read_counted_rows(
        &self,
        tx: Option<TxId>,
        entity: &str,
        q: &types::Query,
    ) -> Result<types::Counted, StorageError> {
        match tx {
            Some(t) => self.tx(t)?.read_counted(entity, q),
            None => storage::read_counted(entity, q),
        }
        .map_err(error)
    }

    fn keep(&mut self, t: storage::Transaction) -> TxId {
        self.next += 1;
        self.txs.insert(self.next, t);
        TxId(self.next)
    }
}

impl ports::Storage for WitStorage {
    fn begin(&mut self, level: Isolation, parent: Option<TxId>) -> Result<TxId, StorageError> {
        let t = match parent {
            None => storage::begin(isolation(level)).map_err(error)?,
            Some(p) => self.tx(p)?.savepoint(isolation(level)).map_err(error)?,
        };
        Ok(self.keep(t))
    }

    fn read(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        q: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        rows(&self.read_rows(tx, entity, &query(q))?)
    }

    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        let counted = self.read_counted_rows(tx, entity, &query(q))?;
        Ok((rows(&counted.rows)?, counted.total))
    }

    /// The rows decoded straight into the interpreter's values: no JSON
    /// rows are built on this side of the boundary.
    fn read_values(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        q: &Query,
        count: bool,
        shape: &dyn ports::Shape,
    ) -> Result<(Vec<sinew_core::expr::Value>, Option<u64>), StorageError> {
        let q = query(q);
        let (bytes, total) = if count {
            let counted = self.read_counted_rows(tx, entity, &q)?;
            (counted.rows, Some(counted.total))
        } else {
            (self.read_rows(tx, entity, &q)?, None)
        };
        Ok((decoded(wire::to_shaped_rows(&bytes, shape))?, total))
    }

    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        list: &[Predicate],
        group_by: &[String],
        tallies: &[Measure],
    ) -> Result<Vec<Row>, StorageError> {
        let (f, m) = (filters(list), measures(tallies));
        let found = match tx {
            Some(t) => self.tx(t)?.aggregate(entity, &f, group_by, &m),
            None => storage::aggregate(entity, &f, group_by, &m),
        };
        rows(&found.map_err(error)?)
    }

    fn insert(&mut self, tx: TxId, entity: &str, r: &Row) -> Result<Row, StorageError> {
        let bytes = wire::row(r);
        row(&self.tx(tx)?.insert(entity, &bytes).map_err(error)?)
    }

    fn update(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        let bytes = wire::row(changes);
        row(&self
            .tx(tx)?
            .update(entity, id, expected_version, &bytes)
            .map_err(error)?)
    }

    fn update_many(
        &mut self,
        tx: TxId,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let (ids, versions): (Vec<String>, Vec<i64>) = keys.iter().cloned().unzip();
        let bytes = wire::rows(changes);
        rows(
            &self
                .tx(tx)?
                .update_many(entity, &ids, &versions, &bytes)
                .map_err(error)?,
        )
    }

    fn insert_many(
        &mut self,
        tx: TxId,
        entity: &str,
        list: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let bytes = wire::rows(list);
        rows(&self.tx(tx)?.insert_many(entity, &bytes).map_err(error)?)
    }

    fn update_where(
        &mut self,
        tx: TxId,
        entity: &str,
        q: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        let bytes = wire::row(changes);
        rows(
            &self
                .tx(tx)?
                .update_where(entity, &query(q), &bytes)
                .map_err(error)?,
        )
    }

    /// The rows decoded straight into the interpreter's values.
    fn update_where_values(
        &mut self,
        tx: TxId,
        entity: &str,
        q: &Query,
        changes: &Row,
        shape: &dyn ports::Shape,
    ) -> Result<Vec<sinew_core::expr::Value>, StorageError> {
        let bytes = wire::row(changes);
        let rows = self
            .tx(tx)?
            .update_where(entity, &query(q), &bytes)
            .map_err(error)?;
        decoded(wire::to_shaped_rows(&rows, shape))
    }

    fn soft_delete(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        deleted_at: &str,
    ) -> Result<Row, StorageError> {
        row(&self
            .tx(tx)?
            .soft_delete(entity, id, expected_version, deleted_at)
            .map_err(error)?)
    }

    fn commit(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.finish(tx)?.commit().map_err(error)
    }

    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.finish(tx)?.rollback().map_err(error)
    }

    fn enqueue(&mut self, tx: TxId, message: &Value) -> Result<(), StorageError> {
        self.tx(tx)?.enqueue(&json(message)).map_err(error)
    }

    fn append_audit(&mut self, tx: Option<TxId>, entry: &Value) -> Result<(), StorageError> {
        let text = json(entry);
        let r = match tx {
            Some(t) => self.tx(t)?.append_audit(&text),
            None => storage::append_audit(&text),
        }
        .map_err(error);
        if entry.get("kind").and_then(Value::as_str) == Some("final") {
            self.final_entry = Some(text);
        }
        r
    }

    fn claim_key(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        Ok(
            match storage::claim_key(scope, key, fingerprint, now_ms).map_err(error)? {
                types::Claim::New => Claim::New,
                types::Claim::Replay(r) => Claim::Replay {
                    status: r.status,
                    body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
                },
                types::Claim::Mismatch => Claim::Mismatch,
                types::Claim::InFlight => Claim::InFlight,
            },
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
        let text = json(body);
        match tx {
            Some(t) => self.tx(t)?.complete_key(scope, key, status, &text),
            None => storage::complete_key(scope, key, status, &text),
        }
        .map_err(error)
    }

    fn release_key(&mut self, scope: &str, key: &str) -> Result<(), StorageError> {
        storage::release_key(scope, key).map_err(error)
    }

    fn rate_hit(&mut self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        storage::rate_hit(scope, window_ms).map_err(error)
    }
}

/// The clock through the `clock` import.
pub struct WitClock;

impl ports::Clock for WitClock {
    fn now_ms(&mut self) -> i64 {
        clock::now_ms()
    }
}

/// External calls through the `external` import.
pub struct WitExternal;

impl ports::External for WitExternal {
    fn call(&mut self, r: &CallRequest) -> CallResult {
        let request = external::CallRequest {
            service: r.service.clone(),
            operation: r.operation.clone(),
            args: json(&r.args),
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts,
            backoff: match r.backoff {
                Backoff::Exponential => external::Backoff::Exponential,
                Backoff::Fixed => external::Backoff::Fixed,
                Backoff::None => external::Backoff::None,
            },
            initial_backoff_ms: r.initial_backoff_ms,
            idempotency_key: r.idempotency_key.clone(),
        };
        let result = external::call(&request);
        let parse = |t: &str| serde_json::from_str(t).unwrap_or(Value::Null);
        CallResult {
            outcome: match &result.outcome {
                external::CallOutcome::Ok(v) => CallOutcome::Ok { value: parse(v) },
                external::CallOutcome::Declined(v) => CallOutcome::Declined { value: parse(v) },
                external::CallOutcome::Failed(m) => CallOutcome::Failed { message: m.clone() },
            },
            attempts: result
                .attempts
                .iter()
                .map(|a| sinew_core::ports::Attempt {
                    status: a.status,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}
