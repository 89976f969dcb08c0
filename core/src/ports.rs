//! The core's only ways to touch the world: three traits that mirror the WIT
//! interfaces `storage`, `clock` and `external`.
//!
//! The core never builds SQL: it sends typed operations (an entity, filters,
//! an order, a limit, a lock) and JSON rows, and the storage turns them into
//! whatever its backend speaks. Every value is computed in the core; storage
//! only reads and writes rows.

pub mod memory;
pub mod script;
pub mod wire;
pub mod world;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long an idempotency key is remembered after it was claimed (every
/// storage forgets it then: a new claim with any input is new).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// How long a claim may stay without an answer before it counts as
/// abandoned (its server died mid-request) and may be claimed again.
pub const ABANDONED_AFTER_MS: i64 = 15 * 60 * 1000;

pub use crate::model::{FilterOp, Isolation};

/// A row: a JSON object with the implicit columns (`id`, `version`,
/// `created_at`, `updated_at`, `deleted_at`, and `status` for entities with
/// a status machine) and the declared fields. Timestamps are RFC 3339 text.
pub type Row = Map<String, Value>;

/// A handle to an open transaction (or a savepoint inside one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxId(pub u64);

/// One comparison of a query: `field op value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The column.
    pub field: String,
    /// The comparison.
    pub op: FilterOp,
    /// The value: a JSON array for `in` and `notIn`, a boolean for
    /// `isNull`; with `eq`/`ne`, `null` equals only `null`.
    pub value: Value,
}

/// A condition of a query: a comparison, or a combination of conditions.
///
/// Every engine reads it with two values, true and false: a comparison with
/// a null column (other than `eq`/`ne`/`isNull` against null) or with a
/// value of another type is false, and `not` of it is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Predicate {
    /// One comparison.
    Is(Condition),
    /// Every member holds (`true` when there is none).
    All(Vec<Predicate>),
    /// At least one member holds (`false` when there is none).
    Any(Vec<Predicate>),
    /// The member does not hold.
    Not(Box<Predicate>),
    /// The row of `hop.entity` whose id this row's `hop.field` holds exists
    /// (soft-deleted or not) and the member holds of it; false when the
    /// field is null. Ownership through a reference is written with it.
    Via(Hop, Box<Predicate>),
}

/// One step from a row to the row one of its `ref` fields names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The `ref` field of the row.
    pub field: String,
    /// The entity it refers to.
    pub entity: String,
}

impl Condition {
    /// What its value should be when it does not have the shape its
    /// operator needs: a list for `in` and `notIn`, a boolean for `isNull`.
    pub fn misshapen(&self) -> Option<&'static str> {
        match self.op {
            FilterOp::In | FilterOp::NotIn if !self.value.is_array() => Some("a list"),
            FilterOp::IsNull if !self.value.is_boolean() => Some("true or false"),
            _ => None,
        }
    }
}

impl From<Condition> for Predicate {
    fn from(c: Condition) -> Predicate {
        Predicate::Is(c)
    }
}

impl Predicate {
    /// Every comparison inside, at any depth.
    pub fn conditions(&self) -> Vec<&Condition> {
        fn walk<'a>(p: &'a Predicate, out: &mut Vec<&'a Condition>) {
            match p {
                Predicate::Is(c) => out.push(c),
                Predicate::All(list) | Predicate::Any(list) => {
                    for p in list {
                        walk(p, out);
                    }
                }
                Predicate::Not(p) | Predicate::Via(_, p) => walk(p, out),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// A [`Predicate`] written flat, in prefix order, as it crosses the WIT
/// boundary (WIT types cannot nest themselves): `All(n)` and `Any(n)` are
/// followed by their `n` members, `Not` by its one.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A comparison.
    Is(Condition),
    /// `all` of the next `n` predicates.
    All(u32),
    /// `any` of the next `n` predicates.
    Any(u32),
    /// `not` the next predicate.
    Not,
    /// The next predicate, of the row the hop leads to.
    Via(Hop),
}

/// The tokens of a list of predicates (each written whole, one after the
/// other).
pub fn to_tokens(filters: &[Predicate]) -> Vec<Token> {
    fn put(p: &Predicate, out: &mut Vec<Token>) {
        match p {
            Predicate::Is(c) => out.push(Token::Is(c.clone())),
            Predicate::All(list) | Predicate::Any(list) => {
                let n = u32::try_from(list.len()).unwrap_or(u32::MAX);
                out.push(if matches!(p, Predicate::All(_)) {
                    Token::All(n)
                } else {
                    Token::Any(n)
                });
                for p in list {
                    put(p, out);
                }
            }
            Predicate::Not(p) => {
                out.push(Token::Not);
                put(p, out);
            }
            Predicate::Via(hop, p) => {
                out.push(Token::Via(hop.clone()));
                put(p, out);
            }
        }
    }
    let mut out = Vec::with_capacity(filters.len());
    for p in filters {
        put(p, &mut out);
    }
    out
}

/// The predicates written by [`to_tokens`].
///
/// # Errors
/// [`StorageError::Invalid`] for tokens that do not spell whole predicates.
pub fn from_tokens(tokens: Vec<Token>) -> Result<Vec<Predicate>, StorageError> {
    fn take(it: &mut std::vec::IntoIter<Token>, depth: usize) -> Result<Predicate, StorageError> {
        let bad = |m: &str| StorageError::Invalid {
            message: format!("filters: {m}"),
        };
        if depth > 64 {
            return Err(bad("nested too deep"));
        }
        match it.next() {
            None => Err(bad("a combinator lacks members")),
            Some(Token::Is(c)) => Ok(Predicate::Is(c)),
            Some(Token::Not) => Ok(Predicate::Not(Box::new(take(it, depth + 1)?))),
            Some(Token::Via(hop)) => Ok(Predicate::Via(hop, Box::new(take(it, depth + 1)?))),
            Some(t @ (Token::All(n) | Token::Any(n))) => {
                if n as usize > it.len() {
                    return Err(bad("a combinator lacks members"));
                }
                let members = (0..n)
                    .map(|_| take(it, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if matches!(t, Token::All(_)) {
                    Predicate::All(members)
                } else {
                    Predicate::Any(members)
                })
            }
        }
    }
    let mut it = tokens.into_iter();
    let mut out = Vec::new();
    while it.len() > 0 {
        out.push(take(&mut it, 0)?);
    }
    Ok(out)
}

/// Includes written flat, as they cross the WIT boundary: each with the
/// index of the include it is nested in (none at the top), parents before
/// their children, and its own `include` left empty.
pub fn flatten_includes(list: &[Include]) -> Vec<(Option<u32>, Include)> {
    fn put(list: &[Include], parent: Option<u32>, out: &mut Vec<(Option<u32>, Include)>) {
        for inc in list {
            let at = u32::try_from(out.len()).unwrap_or(u32::MAX);
            out.push((
                parent,
                Include {
                    include: Vec::new(),
                    ..inc.clone()
                },
            ));
            put(&inc.include, Some(at), out);
        }
    }
    let mut out = Vec::new();
    put(list, None, &mut out);
    out
}

/// The includes written by [`flatten_includes`].
///
/// # Errors
/// [`StorageError::Invalid`] when a parent index does not name an earlier
/// include.
pub fn nest_includes(flat: Vec<(Option<u32>, Include)>) -> Result<Vec<Include>, StorageError> {
    // From the last up: every include's children are complete before it.
    let mut children: std::collections::BTreeMap<usize, Vec<Include>> = Default::default();
    let mut top = Vec::new();
    for (i, (parent, mut inc)) in flat.into_iter().enumerate().rev() {
        let mut mine = children.remove(&i).unwrap_or_default();
        mine.reverse();
        inc.include = mine;
        match parent.map(|p| p as usize) {
            None => top.push(inc),
            Some(p) if p < i => children.entry(p).or_default().push(inc),
            Some(p) => {
                return Err(StorageError::Invalid {
                    message: format!(
                        "embed {i} names embed {p} as its parent, which does not come before it"
                    ),
                });
            }
        }
    }
    top.reverse();
    Ok(top)
}

#[cfg(test)]
mod include_tests {
    use super::*;

    fn inc(name: &str, include: Vec<Include>) -> Include {
        Include {
            name: name.into(),
            entity: "E".into(),
            link: Link::Many("e".into()),
            filters: Vec::new(),
            order: Vec::new(),
            limit: None,
            include,
        }
    }

    #[test]
    fn includes_cross_flat_and_come_back_nested() {
        let tree = vec![
            inc(
                "a",
                vec![inc("a1", vec![inc("a11", vec![])]), inc("a2", vec![])],
            ),
            inc("b", vec![]),
            inc("c", vec![inc("c1", vec![])]),
        ];
        let flat = flatten_includes(&tree);
        let parents: Vec<Option<u32>> = flat.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            parents,
            [None, Some(0), Some(1), Some(0), None, None, Some(5)]
        );
        assert_eq!(nest_includes(flat).unwrap(), tree);
        let bad = vec![(Some(0), inc("x", vec![]))];
        assert!(nest_includes(bad).is_err());
    }
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    /// The column.
    pub field: String,
    /// Descending?
    pub desc: bool,
}

/// A typed query. Rows are returned in `order` (which always ends with
/// `id`, so the order is total), soft-deleted rows excluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// All must hold.
    pub filters: Vec<Predicate>,
    /// Sort keys.
    pub order: Vec<SortKey>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Keyset cursor: the values of the `order` keys of the last row seen;
    /// only rows strictly after it are returned.
    pub after: Option<Vec<Value>>,
    /// Lock the rows read until the transaction ends (`FOR UPDATE`).
    pub lock: bool,
    /// Related rows to embed in every row read (not locked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<Include>,
}

/// How an included entity's rows relate to the row they are embedded in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// The row a `ref` field of the embedding row names (or null).
    One(String),
    /// The rows whose `ref` field `by` names the embedding row (a list).
    Many(String),
}

/// Rows of another entity embedded, under `name`, in every row a query
/// reads: live rows that meet `filters`; for [`Link::Many`], sorted by
/// `order` (which ends with `id`) and at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Include {
    /// The key the rows are embedded under (after the row's columns, in
    /// the order of the query's includes).
    pub name: String,
    /// The included entity.
    pub entity: String,
    /// How its rows relate to the embedding row.
    pub link: Link,
    /// All must hold of an included row.
    pub filters: Vec<Predicate>,
    /// Sort keys of a list.
    pub order: Vec<SortKey>,
    /// At most this many rows in a list.
    pub limit: Option<u64>,
    /// Rows embedded in each included row in turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<Include>,
}

/// What one measure of an aggregate computes, as the storage does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tally {
    /// Rows in the group.
    Rows,
    /// Non-null values of the field.
    Count,
    /// The sum of an integer field's non-null values (0 for none); a sum
    /// that does not fit 64 bits is its decimal digits as a string (the
    /// core answers 500 for a `sum` measure, and divides it for `avg`).
    Sum,
    /// The least non-null value (null for none).
    Min,
    /// The greatest non-null value (null for none).
    Max,
}

/// One measure of an aggregate: its name in the result, what it computes,
/// on which field (none for [`Tally::Rows`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    /// The key of the result.
    pub name: String,
    /// What it computes.
    pub tally: Tally,
    /// The field.
    pub field: Option<String>,
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StorageError {
    /// A concurrent transaction got there first: serialization failure,
    /// deadlock, a row version that changed, a row locked by another
    /// transaction. Retrying may succeed.
    #[error("concurrent update: {message}")]
    Conflict {
        /// What happened.
        message: String,
    },
    /// A `unique` field already has this value.
    #[error("`{entity}.{field}` must be unique")]
    Unique {
        /// The entity.
        entity: String,
        /// The field.
        field: String,
    },
    /// The row does not exist (or is soft-deleted).
    #[error("no `{entity}` row `{id}`")]
    NotFound {
        /// The entity.
        entity: String,
        /// The id.
        id: String,
    },
    /// The backend is unreachable or failed; nothing was done.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
    /// The operation was malformed (a bug in the caller).
    #[error("invalid storage operation: {message}")]
    Invalid {
        /// What was wrong.
        message: String,
    },
}

/// The state of an idempotency key when a request claims it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Claim {
    /// First use: the caller now holds the key until it completes or
    /// releases it.
    New,
    /// Used before with the same input: the stored response.
    Replay {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: Value,
    },
    /// Used before with another input.
    Mismatch,
    /// Another request holding the key has not finished.
    InFlight,
}

/// How a read's rows become the interpreter's values: which columns hold
/// timestamps (their RFC 3339 text becomes a timestamp) and which keys hold
/// included rows, in a shape of their own.
pub trait Shape {
    /// Whether `column` holds timestamps.
    fn timestamp(&self, column: &str) -> bool;
    /// `None` when `key` is a column; `Some(shape)` when it holds included
    /// rows (one object, or a list of them), `Some(None)` when those rows'
    /// entity is unknown (they become `null`).
    fn include(&self, key: &str) -> Option<Option<&dyn Shape>>;
    /// The value a stored null of `column` reads as: the default of a
    /// field the spec declares required with a `default`. Rows written
    /// while the field was nullable keep their nulls until `sinew migrate
    /// --apply` fills them (the previous spec's servers may still write
    /// null meanwhile); the spec reads them as its default, as it reads
    /// every other row.
    fn default_of(&self, _column: &str) -> Option<&Value> {
        None
    }
}

/// A row read as the interpreter's value, in `shape`: every storage's rows
/// become values through this or through [`wire::Decoder::shaped`], which
/// gives the same values straight from the component's encoding.
pub fn shaped(shape: &dyn Shape, row: Row) -> crate::expr::Value {
    use crate::expr::Value as V;
    let mut m = crate::expr::value::Map::with_capacity_and_hasher(row.len(), Default::default());
    for (k, v) in row {
        let v = match shape.include(&k) {
            None => column(shape, &k, v),
            Some(None) => V::Null,
            Some(Some(inner)) => match v {
                Value::Object(r) => shaped(inner, r),
                Value::Array(list) => V::List(
                    list.into_iter()
                        .filter_map(|r| match r {
                            Value::Object(r) => Some(shaped(inner, r)),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => V::Null,
            },
        };
        m.insert(k, v);
    }
    V::Map(m)
}

fn column(shape: &dyn Shape, k: &str, v: Value) -> crate::expr::Value {
    let v = match (v, shape.default_of(k)) {
        (Value::Null, Some(d)) => d.clone(),
        (v, _) => v,
    };
    match v {
        Value::String(s) => match timestamp_in(shape, k, &s) {
            Some(t) => crate::expr::Value::Timestamp(t),
            None => crate::expr::Value::String(s),
        },
        other => crate::expr::Value::from_json_owned(other),
    }
}

/// The instant a column's text holds, when `shape` says the column holds
/// timestamps and the text is one (other text stays text).
pub(crate) fn timestamp_in(shape: &dyn Shape, column: &str, text: &str) -> Option<i64> {
    use crate::expr::value::{looks_like_timestamp, parse_timestamp};
    if looks_like_timestamp(text) && shape.timestamp(column) {
        parse_timestamp(text)
    } else {
        None
    }
}

/// Typed database operations. Writes happen inside a transaction; reads may
/// happen outside one (`tx` is `None`).
pub trait Storage {
    /// Starts a transaction, or (with `parent`) a savepoint inside one.
    fn begin(&mut self, isolation: Isolation, parent: Option<TxId>) -> Result<TxId, StorageError>;
    /// Reads rows of `entity`.
    fn read(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<Vec<Row>, StorageError>;
    /// Reads rows of `entity` as [`Storage::read`] does, and counts the
    /// live rows its filters match, ignoring its cursor and its limit, in
    /// the same snapshot (on Postgres, one statement).
    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError>;
    /// `read` (or with `count`, `read_counted`), each row as the
    /// interpreter's value in `shape`. Storages holding rows as JSON convert
    /// them with [`shaped`] (this default); the component's decodes its
    /// rows straight into values.
    fn read_values(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
        count: bool,
        shape: &dyn Shape,
    ) -> Result<(Vec<crate::expr::Value>, Option<u64>), StorageError> {
        let (rows, total) = if count {
            let (rows, total) = self.read_counted(tx, entity, query)?;
            (rows, Some(total))
        } else {
            (self.read(tx, entity, query)?, None)
        };
        Ok((rows.into_iter().map(|r| shaped(shape, r)).collect(), total))
    }
    /// The groups of the live rows of `entity` that `filters` match (by the
    /// values of `group_by`; nulls make one group; no `group_by`: one group
    /// of every row, even of none), each a row of its `group_by` values and
    /// its `measures` by name, in no particular order.
    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        filters: &[Predicate],
        group_by: &[String],
        measures: &[Measure],
    ) -> Result<Vec<Row>, StorageError>;
    /// Inserts a complete row (the core has set every column, `version` 1).
    fn insert(&mut self, tx: TxId, entity: &str, row: &Row) -> Result<Row, StorageError>;
    /// Changes columns of row `id` if its version is still
    /// `expected_version`; the storage sets `version` to one more.
    /// Returns the new row.
    fn update(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError>;
    /// Changes the columns in `changes` of every live row `query` picks (its
    /// filters, order and limit; its cursor and includes are not used),
    /// locking them; each row's version becomes one more. Returns the rows
    /// as stored, in the query's order. All or nothing: on an error no row
    /// was changed. On Postgres this is one statement; this default (the
    /// in-memory store) is a locking read and one [`Storage::update`] per
    /// row inside a savepoint.
    fn update_where(
        &mut self,
        tx: TxId,
        entity: &str,
        query: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        in_savepoint(self, tx, |s, sp| {
            let picked = Query {
                lock: true,
                after: None,
                include: Vec::new(),
                ..query.clone()
            };
            let rows = s.read(Some(sp), entity, &picked)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
                let version = row.get("version").and_then(Value::as_i64).unwrap_or(0);
                out.push(s.update(sp, entity, id, version, changes)?);
            }
            Ok(out)
        })
    }
    /// Inserts complete rows, as [`Storage::insert`] does each, in order;
    /// returns them as stored, in that order. All or nothing: on an error
    /// no row was inserted. On Postgres this is one statement; this
    /// default is one [`Storage::insert`] per row inside a savepoint.
    fn insert_many(
        &mut self,
        tx: TxId,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        in_savepoint(self, tx, |s, sp| {
            rows.iter().map(|r| s.insert(sp, entity, r)).collect()
        })
    }
    /// [`Storage::update_where`], each row as the interpreter's value in
    /// `shape` (as [`Storage::read_values`] gives them): the component's
    /// storage decodes its rows straight into values.
    fn update_where_values(
        &mut self,
        tx: TxId,
        entity: &str,
        query: &Query,
        changes: &Row,
        shape: &dyn Shape,
    ) -> Result<Vec<crate::expr::Value>, StorageError> {
        let rows = self.update_where(tx, entity, query, changes)?;
        Ok(rows.into_iter().map(|r| shaped(shape, r)).collect())
    }
    /// Several updates, as [`Storage::update`] does each, in order: row
    /// `keys[i].0` if its version is still `keys[i].1` gets the columns of
    /// `changes[i]` (every one with the same keys). Returns the rows as
    /// stored, in that order. All or nothing: on an error no row was
    /// changed. On Postgres this is one statement; this default is one
    /// [`Storage::update`] per row inside a savepoint.
    fn update_many(
        &mut self,
        tx: TxId,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        if keys.len() != changes.len() {
            return Err(StorageError::Invalid {
                message: format!(
                    "{} rows to update and {} changes",
                    keys.len(),
                    changes.len()
                ),
            });
        }
        in_savepoint(self, tx, |s, sp| {
            let mut out = Vec::with_capacity(keys.len());
            for ((id, version), c) in keys.iter().zip(changes) {
                out.push(s.update(sp, entity, id, *version, c)?);
            }
            Ok(out)
        })
    }
    /// Soft-deletes row `id` (sets `deleted_at`) if its version is still
    /// `expected_version`; returns the new row.
    fn soft_delete(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        deleted_at: &str,
    ) -> Result<Row, StorageError>;
    /// Records an outbox message (a JSON object: `id`, `execution`, `tool`,
    /// `node`, `service`, `operation`, `args`, `idempotencyKey`,
    /// `createdAt`, maybe `timeoutMs`) in `tx`: durable with its commit,
    /// gone with its rollback. The host delivers it after the commit.
    fn enqueue(&mut self, tx: TxId, message: &Value) -> Result<(), StorageError>;
    /// Commits a transaction (or releases a savepoint).
    fn commit(&mut self, tx: TxId) -> Result<(), StorageError>;
    /// Rolls a transaction (or a savepoint) back.
    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError>;
    /// Appends an audit entry, in `tx` or (with `None`) in a transaction of
    /// its own. The storage chains entries: it sets `prev` to the hash of the
    /// previous entry and `hash` to this one's.
    fn append_audit(&mut self, tx: Option<TxId>, entry: &Value) -> Result<(), StorageError>;
    /// Claims an idempotency key for `scope` (tool and subject) with the
    /// input's fingerprint. Keys older than 24 hours at `now_ms` are
    /// forgotten.
    fn claim_key(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError>;
    /// Stores the response of a claimed key (in `tx`, atomically with the
    /// writes, or on its own).
    fn complete_key(
        &mut self,
        tx: Option<TxId>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError>;
    /// Releases a claimed key without a response (the request may be
    /// retried).
    fn release_key(&mut self, scope: &str, key: &str) -> Result<(), StorageError>;
    /// Counts one hit for `scope` in the minute starting at `window_ms` and
    /// returns the count so far, this hit included.
    fn rate_hit(&mut self, scope: &str, window_ms: i64) -> Result<u64, StorageError>;
}

/// Runs `f` in a savepoint of `tx`: released when it succeeds, rolled
/// back when it fails, so that a failed operation of many writes changed
/// nothing (the storage defaults of the operations on many rows).
fn in_savepoint<S: Storage + ?Sized, T>(
    s: &mut S,
    tx: TxId,
    f: impl FnOnce(&mut S, TxId) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let sp = s.begin(Isolation::default(), Some(tx))?;
    match f(s, sp) {
        Ok(done) => {
            s.commit(sp)?;
            Ok(done)
        }
        Err(e) => {
            let _ = s.rollback(sp);
            Err(e)
        }
    }
}

/// The clock: the only source of time.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> i64;
}

/// One outbound call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The external's name in the spec.
    pub service: String,
    /// The operation.
    pub operation: String,
    /// Arguments (JSON object).
    pub args: Value,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Attempts in all (1 without retry).
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub backoff: crate::model::Backoff,
    /// First wait.
    pub initial_backoff_ms: u64,
    /// The key the service should deduplicate on.
    pub idempotency_key: Option<String>,
}

/// How a call (after all its attempts) ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CallOutcome {
    /// The service answered with success.
    Ok {
        /// Its JSON answer.
        value: Value,
    },
    /// The service answered with a refusal (a declined card): not retried.
    Declined {
        /// Its JSON answer, if any.
        value: Value,
    },
    /// Every attempt failed (timeouts, 5xx, connection errors).
    Failed {
        /// The last error.
        message: String,
    },
}

/// One attempt of a call, as the host made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// The result of a call: the outcome and every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    /// How it ended.
    #[serde(flatten)]
    pub outcome: CallOutcome,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

/// Outbound calls to external services. The implementation performs the
/// attempts, waits and timeouts.
pub trait External {
    /// Calls an operation.
    fn call(&mut self, request: &CallRequest) -> CallResult;
}

/// The conversions between the WIT `storage` types and the core's, for a
/// crate that has its generated bindings of `sinew:executor/types` in scope
/// as `wit`: `isolation`, `json` (JSON text from the guest), `value` and
/// `object` and `decoded_rows` (the row encoding, [`wire`]),
/// `query`, and `error` (to WIT). The host's imports and the in-memory
/// world's exports are generated separately from the same WIT, so they
/// share this text rather than functions.
#[macro_export]
macro_rules! wit_storage_conversions {
    () => {
        fn isolation(i: wit::Isolation) -> $crate::spec::Isolation {
            match i {
                wit::Isolation::ReadCommitted => $crate::spec::Isolation::ReadCommitted,
                wit::Isolation::RepeatableRead => $crate::spec::Isolation::RepeatableRead,
                wit::Isolation::Serializable => $crate::spec::Isolation::Serializable,
            }
        }

        fn json(text: &str) -> Result<::serde_json::Value, $crate::ports::StorageError> {
            ::serde_json::from_str(text).map_err(|e| $crate::ports::StorageError::Invalid {
                message: format!("the guest sent invalid JSON: {e}"),
            })
        }

        fn value(bytes: &[u8]) -> Result<::serde_json::Value, $crate::ports::StorageError> {
            $crate::ports::wire::to_value(bytes).map_err(|e| $crate::ports::StorageError::Invalid {
                message: format!("the guest sent a value that cannot be decoded: {e}"),
            })
        }

        fn object(bytes: &[u8]) -> Result<$crate::ports::Row, $crate::ports::StorageError> {
            $crate::ports::wire::to_row(bytes).map_err(|e| $crate::ports::StorageError::Invalid {
                message: format!("the guest sent a row that cannot be decoded: {e}"),
            })
        }

        fn decoded_rows(
            bytes: &[u8],
        ) -> Result<Vec<$crate::ports::Row>, $crate::ports::StorageError> {
            $crate::ports::wire::to_rows(bytes).map_err(|e| $crate::ports::StorageError::Invalid {
                message: format!("the guest sent rows that cannot be decoded: {e}"),
            })
        }

        fn filters(
            list: Vec<wit::Filter>,
        ) -> Result<Vec<$crate::ports::Predicate>, $crate::ports::StorageError> {
            $crate::ports::from_tokens(
                list.into_iter()
                    .map(|t| {
                        Ok(match t {
                            wit::Filter::Is(c) => {
                                $crate::ports::Token::Is($crate::ports::Condition {
                                    field: c.field,
                                    op: match c.op {
                                        wit::FilterOp::Eq => $crate::spec::FilterOp::Eq,
                                        wit::FilterOp::Ne => $crate::spec::FilterOp::Ne,
                                        wit::FilterOp::Lt => $crate::spec::FilterOp::Lt,
                                        wit::FilterOp::Lte => $crate::spec::FilterOp::Lte,
                                        wit::FilterOp::Gt => $crate::spec::FilterOp::Gt,
                                        wit::FilterOp::Gte => $crate::spec::FilterOp::Gte,
                                        wit::FilterOp::In => $crate::spec::FilterOp::In,
                                        wit::FilterOp::NotIn => $crate::spec::FilterOp::NotIn,
                                        wit::FilterOp::IsNull => $crate::spec::FilterOp::IsNull,
                                        wit::FilterOp::StartsWith => {
                                            $crate::spec::FilterOp::StartsWith
                                        }
                                        wit::FilterOp::Contains => $crate::spec::FilterOp::Contains,
                                        wit::FilterOp::Icontains => {
                                            $crate::spec::FilterOp::IContains
                                        }
                                    },
                                    value: value(&c.value)?,
                                })
                            }
                            wit::Filter::All(n) => $crate::ports::Token::All(n),
                            wit::Filter::Any(n) => $crate::ports::Token::Any(n),
                            wit::Filter::Not => $crate::ports::Token::Not,
                            wit::Filter::Via(h) => $crate::ports::Token::Via($crate::ports::Hop {
                                field: h.field,
                                entity: h.entity,
                            }),
                        })
                    })
                    .collect::<Result<_, $crate::ports::StorageError>>()?,
            )
        }

        fn measures(list: Vec<wit::Measure>) -> Vec<$crate::ports::Measure> {
            list.into_iter()
                .map(|m| $crate::ports::Measure {
                    name: m.name,
                    tally: match m.tally {
                        wit::Tally::Rows => $crate::ports::Tally::Rows,
                        wit::Tally::Count => $crate::ports::Tally::Count,
                        wit::Tally::Sum => $crate::ports::Tally::Sum,
                        wit::Tally::Min => $crate::ports::Tally::Min,
                        wit::Tally::Max => $crate::ports::Tally::Max,
                    },
                    field: m.field,
                })
                .collect()
        }

        fn sort_keys(order: Vec<wit::SortKey>) -> Vec<$crate::ports::SortKey> {
            order
                .into_iter()
                .map(|k| $crate::ports::SortKey {
                    field: k.field,
                    desc: k.desc,
                })
                .collect()
        }

        fn query(q: wit::Query) -> Result<$crate::ports::Query, $crate::ports::StorageError> {
            let mut flat = Vec::with_capacity(q.embeds.len());
            for e in q.embeds {
                flat.push((
                    e.parent,
                    $crate::ports::Include {
                        name: e.name,
                        entity: e.entity,
                        link: match e.link {
                            wit::Link::One(f) => $crate::ports::Link::One(f),
                            wit::Link::Many(f) => $crate::ports::Link::Many(f),
                        },
                        filters: filters(e.filters)?,
                        order: sort_keys(e.order),
                        limit: e.limit,
                        include: Vec::new(),
                    },
                ));
            }
            Ok($crate::ports::Query {
                filters: filters(q.filters)?,
                order: sort_keys(q.order),
                limit: q.limit,
                after: match q.after {
                    Some(list) => Some(list.iter().map(|t| value(t)).collect::<Result<_, _>>()?),
                    None => None,
                },
                lock: q.lock,
                include: $crate::ports::nest_includes(flat)?,
            })
        }

        fn error(e: $crate::ports::StorageError) -> wit::StorageError {
            match e {
                $crate::ports::StorageError::Conflict { message } => {
                    wit::StorageError::Conflict(message)
                }
                $crate::ports::StorageError::Unique { entity, field } => {
                    wit::StorageError::Unique(wit::UniqueViolation { entity, field })
                }
                $crate::ports::StorageError::NotFound { entity, id } => {
                    wit::StorageError::NotFound(wit::RowRef { entity, id })
                }
                $crate::ports::StorageError::Unavailable { message } => {
                    wit::StorageError::Unavailable(message)
                }
                $crate::ports::StorageError::Invalid { message } => {
                    wit::StorageError::Invalid(message)
                }
            }
        }
    };
}

/// The conversions between the WIT `external` types and the core's, for a
/// crate that has its generated bindings of `sinew:executor/external` in
/// scope as `wit`: `call_request` (from WIT) and `call_result` (to WIT).
/// Shared as text for the same reason as [`wit_storage_conversions!`].
#[macro_export]
macro_rules! wit_external_conversions {
    () => {
        fn call_request(r: wit::CallRequest) -> $crate::ports::CallRequest {
            $crate::ports::CallRequest {
                service: r.service,
                operation: r.operation,
                args: ::serde_json::from_str(&r.args).unwrap_or(::serde_json::Value::Null),
                timeout_ms: r.timeout_ms,
                max_attempts: r.max_attempts,
                backoff: match r.backoff {
                    wit::Backoff::Exponential => $crate::spec::Backoff::Exponential,
                    wit::Backoff::Fixed => $crate::spec::Backoff::Fixed,
                    wit::Backoff::None => $crate::spec::Backoff::None,
                },
                initial_backoff_ms: r.initial_backoff_ms,
                idempotency_key: r.idempotency_key,
            }
        }

        fn call_result(r: $crate::ports::CallResult) -> wit::CallResult {
            use $crate::ports::CallOutcome;
            wit::CallResult {
                outcome: match r.outcome {
                    CallOutcome::Ok { value } => {
                        wit::CallOutcome::Ok($crate::hash::json_text(&value))
                    }
                    CallOutcome::Declined { value } => {
                        wit::CallOutcome::Declined($crate::hash::json_text(&value))
                    }
                    CallOutcome::Failed { message } => wit::CallOutcome::Failed(message),
                },
                attempts: r
                    .attempts
                    .into_iter()
                    .map(|a| wit::Attempt {
                        status: a.status,
                        error: a.error,
                        duration_ms: a.duration_ms,
                    })
                    .collect(),
            }
        }
    };
}
