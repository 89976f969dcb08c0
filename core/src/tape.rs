//! The tape: what an execution's final audit entry records so that it can
//! be replayed (`docs/contract.md`, "Replay").
//!
//! The contract runs every request on ports wrapped by the recorders here:
//! each call of an import (storage, clock, external) is written down in
//! order, with the operation, a short digest of its arguments and the
//! answer. A replay (the `replay` module, which builds on this one) runs
//! the same request on a `Replayer` that answers from the tape, and
//! compares.
//!
//! Recording happens in the core, so every engine (native, the component in
//! wasmtime, Node, the browser) writes the same tape for the same answers.
//!
//! A step of `tape.steps` is one of:
//!
//! - a number: a reading of the clock, as the milliseconds since the
//!   reading before (the first reading is the entry's `time`, so it is 0);
//! - `[op, digest]`: a storage call that succeeded without an answer
//!   (`begin`, `commit`, `enqueue`, …);
//! - `[op, digest, answer]`: a call and its answer;
//! - `[op, digest, null, error]`: a storage call that failed, with the
//!   error (`{"kind": "conflict", "message": …}`).
//!
//! `digest` is the first 8 hex digits of the XXH3-64 (`"v": 2`; SHA-256
//! on a tape without `v`, see [`TapeHash`]) of the call's canonical
//! arguments (transactions numbered 1, 2, … in the order this execution
//! began them). Rows in answers are written compactly: `"="` is the row
//! the call sent (an insert answered with what it inserted), `{"#": [s,
//! i], "col": v, …}` is row `i` of step `s`'s answer with the columns
//! listed replaced (an update answered with the row read before, a row read
//! twice), anything else is the row itself. A list of two or more rows
//! written in full with the same columns is `{"cols": [names], "vals":
//! [[values], …]}`.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::expr::Value as V;
use crate::model::Isolation;
use crate::ports::{
    CallRequest, CallResult, Claim, Clock, External, Measure, Predicate, Query, Row, Shape,
    Storage, StorageError, TxId,
};
use crate::request::Request;

/// How a tape's digests are made, which its `v` says. A digest only tells
/// a replay whether a call had the recorded arguments (eight hex digits:
/// not a commitment, the entry's chain hash is), so it needs a fast hash,
/// not a cryptographic one; the component has no SHA instructions, and
/// SHA-256 of every call's arguments was 5% of its work on a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TapeHash {
    /// A tape without `v` (recorded before 2026-12-06): SHA-256.
    Sha256,
    /// `"v": 2`: XXH3-64 (seed 0), its eight bytes big-endian.
    #[default]
    Xxh3,
}

impl TapeHash {
    /// What this version records.
    pub const CURRENT: TapeHash = TapeHash::Xxh3;

    /// The hash of a recorded tape (its `v`).
    ///
    /// # Errors
    /// A `v` this version does not know (a newer version recorded it).
    pub fn of(tape: &Map<String, Value>) -> Result<TapeHash, String> {
        let v = tape.get("v");
        [TapeHash::Sha256, TapeHash::Xxh3]
            .into_iter()
            .find(|h| v.map(Value::as_u64) == h.version().map(Some))
            .ok_or_else(|| {
                format!(
                    "its tape has `v` {}, which this version of sinew cannot replay",
                    v.map(Value::to_string).unwrap_or_default()
                )
            })
    }

    /// The `v` a tape of this hash carries (none: the first version).
    pub(crate) fn version(self) -> Option<u64> {
        match self {
            TapeHash::Sha256 => None,
            TapeHash::Xxh3 => Some(2),
        }
    }

    /// Marks `tape` (an object) as made with this hash: its `v`.
    pub(crate) fn mark(self, tape: &mut Map<String, Value>) {
        match self.version() {
            Some(v) => tape.insert("v".into(), json!(v)),
            None => tape.remove("v"),
        };
    }

    /// The first 8 hex digits of this hash of `text`.
    pub(crate) fn short(self, text: &str) -> String {
        match self {
            TapeHash::Sha256 => {
                let d = Sha256::digest(text.as_bytes());
                crate::hash::hex(d.get(..4).unwrap_or_default())
            }
            TapeHash::Xxh3 => {
                let d = xxhash_rust::xxh3::xxh3_64(text.as_bytes()).to_be_bytes();
                crate::hash::hex(d.get(..4).unwrap_or_default())
            }
        }
    }
}

/// The largest tape an entry keeps (counted without its `v`, so that a
/// recording of the first version replays at the same limit); a larger
/// one is recorded by its size only (`{"v": 2, "omitted": "N bytes",
/// "response": …}`), and the execution cannot be replayed.
pub const MAX_TAPE: usize = 64 << 10;

/// The operations that answer with rows, and where their rows are: one row
/// (`insert`, `update`, `softDelete`), a list, or a counted read's
/// `rows`.
fn rows_of<'a>(op: &str, answer: &'a Value) -> Vec<&'a Value> {
    match (op, answer) {
        ("insert" | "update" | "softDelete", v @ Value::Object(_)) => vec![v],
        ("read" | "aggregate" | "insertMany" | "updateMany" | "updateWhere", Value::Array(l)) => {
            l.iter().collect()
        }
        ("read", Value::Object(m)) => match m.get("rows") {
            Some(Value::Array(l)) => l.iter().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The short digest of a call's arguments: of their canonical JSON, so that
/// the order of a row's columns (the order of the spec's fields, which two
/// texts of one spec may write differently) does not count.
pub(crate) fn digest(h: TapeHash, args: &impl Serialize) -> String {
    let text = serde_json::to_value(args)
        .map(|v| crate::hash::canonical(&v))
        .unwrap_or_default();
    h.short(&text)
}

/// One argument of a call as [`digest_args`] writes it.
enum Arg<'a> {
    /// A number (a transaction, a version).
    N(i64),
    /// A string (an entity, an id).
    S(&'a str),
    /// A JSON value (a message).
    J(&'a Value),
    /// A row (columns and values).
    R(&'a Row),
}

/// [`digest`] of a tuple of these arguments, the same text written straight
/// from them: `digest` first copies its arguments into a `Value` (a row
/// cloned, string by string), which cost the component more than hashing
/// them for the calls every write makes.
fn digest_args(h: TapeHash, args: &[Arg<'_>]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(256);
    text.push('[');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match a {
            Arg::N(n) => {
                let _ = write!(text, "{n}");
            }
            Arg::S(s) => crate::hash::write_str(s, &mut text),
            Arg::J(v) => crate::hash::write_canonical(v, &mut text),
            Arg::R(r) => crate::hash::write_canonical_object(r, &mut text),
        }
    }
    text.push(']');
    h.short(&text)
}

/// A transaction's local number as an [`Arg`].
fn n(local: u64) -> Arg<'static> {
    Arg::N(i64::try_from(local).unwrap_or(i64::MAX))
}

/// The digest of an `insert` in local transaction `tx` (recorded and
/// replayed alike).
pub(crate) fn insert_digest(h: TapeHash, tx: u64, entity: &str, row: &Row) -> String {
    digest_args(h, &[n(tx), Arg::S(entity), Arg::R(row)])
}

/// The digest of an `update`.
pub(crate) fn update_digest(
    h: TapeHash,
    tx: u64,
    entity: &str,
    id: &str,
    expected_version: i64,
    changes: &Row,
) -> String {
    digest_args(
        h,
        &[
            n(tx),
            Arg::S(entity),
            Arg::S(id),
            Arg::N(expected_version),
            Arg::R(changes),
        ],
    )
}

/// The digest of a `softDelete`.
pub(crate) fn soft_delete_digest(
    h: TapeHash,
    tx: u64,
    entity: &str,
    id: &str,
    expected_version: i64,
    deleted_at: &str,
) -> String {
    digest_args(
        h,
        &[
            n(tx),
            Arg::S(entity),
            Arg::S(id),
            Arg::N(expected_version),
            Arg::S(deleted_at),
        ],
    )
}

/// The digest of an `enqueue`.
pub(crate) fn enqueue_digest(h: TapeHash, tx: u64, message: &Value) -> String {
    digest_args(h, &[n(tx), Arg::J(message)])
}

/// The digest of a `commit` or a `rollback` of local transaction `tx`.
pub(crate) fn end_digest(h: TapeHash, tx: u64) -> String {
    h.short(&tx.to_string())
}

/// The digest of a response `body`: of its canonical text as a JSON
/// string, as `digest` of that text would be, without copying the text
/// into a value.
pub(crate) fn response_digest(h: TapeHash, body: &Value) -> String {
    h.short(&crate::hash::quoted(&crate::hash::canonical(body)))
}

/// One recorded call.
#[derive(Debug, Clone)]
enum Step {
    Now(i64),
    Op {
        op: &'static str,
        digest: String,
        /// Whether row `i` of the answer is row `i` the call sent (an
        /// insert answered with what it inserted: `"="`).
        echo: Vec<bool>,
        answer: Result<Option<Value>, StorageError>,
    },
}

/// Why a part of the request is `{"omitted": …}` in the tape.
pub(crate) const NUL: &str = "a NUL character";

/// An execution's tape, while it is recorded.
#[derive(Debug, Default)]
pub(crate) struct Tape {
    steps: Vec<Step>,
    /// The transactions begun, in order: the local number of `txs[i]` is
    /// `i + 1`.
    txs: Vec<TxId>,
    /// The local number of each one's parent (0: none), as `txs`.
    parents: Vec<u64>,
    /// The local numbers of the transactions (savepoints) where an
    /// operation failed and that were not rolled back since.
    failed: Vec<u64>,
    /// What the entry does not hold of the request: the token's claims,
    /// the `Idempotency-Key` header, the scheduled time as sent.
    request: Map<String, Value>,
}

impl Tape {
    pub(crate) fn new(request: &Request) -> Tape {
        // (Postgres refuses a NUL character in `jsonb`: a key or claims
        // holding one, refused anyway, are left out, saying why.)
        let nul = || json!({"omitted": NUL});
        let mut r = Map::new();
        if let Some(a) = &request.auth
            && !a.claims.is_null()
        {
            let claims = if crate::input::has_nul(&a.claims) {
                nul()
            } else {
                a.claims.clone()
            };
            r.insert("claims".into(), claims);
        }
        if let Some(k) = &request.idempotency_key {
            let key = if k.contains('\0') { nul() } else { json!(k) };
            r.insert("idempotencyKey".into(), key);
        }
        if let Some(s) = &request.scheduled {
            r.insert("scheduled".into(), json!(s));
        }
        Tape {
            steps: Vec::new(),
            txs: Vec::new(),
            parents: Vec::new(),
            failed: Vec::new(),
            request: r,
        }
    }

    /// The local number of a transaction (0 for one not begun here): the
    /// latest begun with that handle, should a storage reuse handles.
    fn local(&self, tx: TxId) -> u64 {
        self.txs
            .iter()
            .rposition(|t| *t == tx)
            .map_or(0, |i| i as u64 + 1)
    }

    fn local_opt(&self, tx: Option<TxId>) -> u64 {
        tx.map_or(0, |t| self.local(t))
    }

    /// The local numbers from `n` out to its top-level transaction.
    fn ancestry(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        std::iter::successors(Some(n).filter(|n| *n > 0), |n| {
            let up = usize::try_from(*n - 1)
                .ok()
                .and_then(|i| self.parents.get(i))
                .copied()
                .unwrap_or(0);
            // Parents are begun first: the walk ends.
            (up > 0 && up < *n).then_some(up)
        })
    }

    /// Refuses an operation on `tx` while an operation of its transaction
    /// failed and was not rolled back: a store may abort a transaction at
    /// a failed operation (Postgres does), so the core goes on after one
    /// only by rolling back the savepoint it opened around the operation
    /// (see `exec`'s `undone_on_error`). Keeping this here, where every
    /// engine's calls pass, holds the core to it on stores that would
    /// not notice (the in-memory store).
    fn usable(&self, tx: Option<TxId>) -> Result<(), StorageError> {
        let Some(t) = tx else { return Ok(()) };
        if self.failed.is_empty() {
            return Ok(());
        }
        let top = |n: u64| self.ancestry(n).last();
        let mine = top(self.local(t));
        if mine.is_some() && self.failed.iter().any(|f| top(*f) == mine) {
            return Err(StorageError::Invalid {
                message:
                    "the transaction is aborted: an operation in it failed and was not rolled back"
                        .into(),
            });
        }
        Ok(())
    }

    fn push(
        &mut self,
        op: &'static str,
        digest: String,
        answer: Result<Option<Value>, StorageError>,
    ) {
        self.steps.push(Step::Op {
            op,
            digest,
            echo: Vec::new(),
            answer,
        });
    }

    /// Notes which rows of the last call's answer are the rows it sent
    /// (for `"="`).
    fn sent(&mut self, rows: &[Row]) {
        if let Some(Step::Op {
            echo,
            answer: Ok(Some(a)),
            op,
            ..
        }) = self.steps.last_mut()
        {
            *echo = rows_of(op, a)
                .iter()
                .zip(rows)
                .map(|(got, sent)| got.as_object().is_some_and(|g| same_in_order(g, sent)))
                .collect();
        }
    }

    /// The tape as the entry's `tape`, with the digest of the response
    /// `body`: rows written compactly; too large a tape by its size.
    pub(crate) fn to_json(&self, body: &Value) -> Value {
        let response = response_digest(TapeHash::CURRENT, body);
        let mut steps = Vec::with_capacity(self.steps.len());
        // The latest row seen with each id: (step, index in its rows).
        let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
        // Clock readings as the time since the one before (the first is the
        // entry's `time`).
        let mut last = self.steps.iter().find_map(|s| match s {
            Step::Now(ms) => Some(*ms),
            Step::Op { .. } => None,
        });
        for (s, step) in self.steps.iter().enumerate() {
            match step {
                Step::Now(ms) => {
                    steps.push(json!(ms.saturating_sub(last.unwrap_or(*ms))));
                    last = Some(*ms);
                }
                Step::Op {
                    op,
                    digest,
                    echo,
                    answer,
                } => match answer {
                    Ok(None) => steps.push(json!([op, digest])),
                    Ok(Some(a)) => {
                        let written = compact(op, a, echo, &self.steps, &seen);
                        for (i, row) in rows_of(op, a).into_iter().enumerate() {
                            if let Some(id) = row.get("id").and_then(Value::as_str) {
                                seen.insert(id, (s, i));
                            }
                        }
                        steps.push(json!([op, digest, written]));
                    }
                    Err(e) => steps.push(json!([op, digest, null, e])),
                },
            }
        }
        let mut tape = self.request.clone();
        tape.insert("steps".into(), Value::Array(steps));
        tape.insert("response".into(), json!(response));
        let mut tape = Value::Object(tape);
        let size = json_size(&tape);
        if size > MAX_TAPE {
            let mut omitted = Map::new();
            omitted.insert("omitted".into(), json!(format!("{size} bytes")));
            omitted.insert("response".into(), json!(response));
            tape = Value::Object(omitted);
        }
        if let Value::Object(m) = &mut tape {
            TapeHash::CURRENT.mark(m);
        }
        tape
    }
}

/// The length of a value's JSON text, counted without writing it (strings'
/// escapes aside, which only make it longer).
fn json_size(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(b) => 4 + usize::from(!b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let digits = i
                    .unsigned_abs()
                    .checked_ilog10()
                    .map_or(1, |d| d as usize + 1);
                digits + usize::from(i < 0)
            } else {
                24
            }
        }
        Value::String(s) => s.len() + 2,
        Value::Array(l) => 2 + l.len() + l.iter().map(json_size).sum::<usize>(),
        Value::Object(m) => {
            2 + m.len() * 2
                + m.iter()
                    .map(|(k, v)| k.len() + 2 + json_size(v))
                    .sum::<usize>()
        }
    }
}

/// An answer with its rows written compactly.
fn compact(
    op: &str,
    answer: &Value,
    echo: &[bool],
    steps: &[Step],
    seen: &HashMap<&str, (usize, usize)>,
) -> Value {
    let one = |i: usize, row: &Value| -> Value {
        let Value::Object(r) = row else {
            return row.clone();
        };
        if echo.get(i) == Some(&true) {
            return json!("=");
        }
        let base = r
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| seen.get(id))
            .and_then(|&(s, j)| match steps.get(s) {
                Some(Step::Op {
                    op,
                    answer: Ok(Some(a)),
                    ..
                }) => rows_of(op, a).get(j).map(|b| (s, j, *b)),
                _ => None,
            });
        if let Some((s, j, Value::Object(b))) = base
            && b.len() == r.len()
            && b.keys().zip(r.keys()).all(|(x, y)| x == y)
        {
            let mut out = Map::new();
            out.insert("#".into(), json!([s, j]));
            for (k, v) in r {
                if b.get(k) != Some(v) {
                    out.insert(k.clone(), v.clone());
                }
            }
            return Value::Object(out);
        }
        row.clone()
    };
    match (op, answer) {
        ("insert" | "update" | "softDelete", v @ Value::Object(_)) => one(0, v),
        ("read" | "aggregate" | "insertMany" | "updateMany" | "updateWhere", Value::Array(l)) => {
            columnar(l.iter().enumerate().map(|(i, r)| one(i, r)).collect())
        }
        ("read", Value::Object(m)) => {
            let mut m = m.clone();
            if let Some(Value::Array(l)) = m.get("rows") {
                let rows = l.iter().enumerate().map(|(i, r)| one(i, r)).collect();
                m.insert("rows".into(), columnar(rows));
            }
            Value::Object(m)
        }
        _ => answer.clone(),
    }
}

/// A list of two or more rows written in full with the same columns in
/// the same order, as `{"cols": [names], "vals": [[values], …]}` (the
/// names once, not per row); any other list as it is.
fn columnar(rows: Vec<Value>) -> Value {
    let first = match rows.first() {
        Some(Value::Object(f)) if rows.len() > 1 && !f.contains_key("#") => f,
        _ => return Value::Array(rows),
    };
    let alike = rows.iter().all(|r| {
        r.as_object().is_some_and(|m| {
            m.len() == first.len() && m.keys().zip(first.keys()).all(|(a, b)| a == b)
        })
    });
    if !alike {
        return Value::Array(rows);
    }
    let cols: Vec<Value> = first.keys().map(|k| json!(k)).collect();
    let vals = rows
        .into_iter()
        .map(|r| match r {
            Value::Object(m) => Value::Array(m.into_iter().map(|(_, v)| v).collect()),
            other => other,
        })
        .collect();
    json!({"cols": cols, "vals": Value::Array(vals)})
}

/// The rows of a list written by [`columnar`] (or as it is).
fn rows_back(list: &Value) -> Result<Vec<Value>, String> {
    match list {
        Value::Array(l) => Ok(l.clone()),
        Value::Object(m) => {
            let (Some(Value::Array(cols)), Some(Value::Array(vals))) =
                (m.get("cols"), m.get("vals"))
            else {
                return Err("a list of rows must be an array or {\"cols\", \"vals\"}".into());
            };
            vals.iter()
                .map(|v| {
                    let Value::Array(v) = v else {
                        return Err("`vals` must hold arrays".to_string());
                    };
                    if v.len() != cols.len() {
                        return Err("a row of `vals` does not have a value per column".into());
                    }
                    let mut row = Map::with_capacity(cols.len());
                    for (c, x) in cols.iter().zip(v) {
                        row.insert(c.as_str().unwrap_or_default().to_owned(), x.clone());
                    }
                    Ok(Value::Object(row))
                })
                .collect()
        }
        _ => Err("a list of rows must be an array or {\"cols\", \"vals\"}".into()),
    }
}

/// The same members in the same order.
fn same_in_order(a: &Row, b: &Row) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// An answer written back from the compact form. `sent` are the rows the
/// call sends now; `earlier[s]` is the answer of step `s` (with its
/// operation), for the steps answered so far.
pub(crate) fn expand(
    op: &str,
    written: &Value,
    sent: &[Row],
    earlier: &[Option<(String, Value)>],
) -> Result<Value, String> {
    let one = |i: usize, row: &Value| -> Result<Value, String> {
        match row {
            Value::String(s) if s == "=" => sent
                .get(i)
                .map(|r| Value::Object(r.clone()))
                .ok_or_else(|| format!("`=` names row {i} sent, which this call did not send")),
            Value::Object(m) if m.contains_key("#") => {
                let (s, j) = match m.get("#").and_then(Value::as_array).map(Vec::as_slice) {
                    Some([s, j]) => (
                        usize::try_from(s.as_u64().unwrap_or(u64::MAX)).unwrap_or(usize::MAX),
                        usize::try_from(j.as_u64().unwrap_or(u64::MAX)).unwrap_or(usize::MAX),
                    ),
                    _ => return Err("`#` must be [step, row]".into()),
                };
                let base = earlier
                    .get(s)
                    .and_then(Option::as_ref)
                    .and_then(|(op, a)| rows_of(op, a).get(j).map(|r| (*r).clone()));
                let Some(Value::Object(mut b)) = base else {
                    return Err(format!("`#` names row {j} of step {s}, which has none"));
                };
                for (k, v) in m {
                    if k != "#" {
                        b.insert(k.clone(), v.clone());
                    }
                }
                Ok(Value::Object(b))
            }
            other => Ok(other.clone()),
        }
    };
    let list = |l: &Value| -> Result<Value, String> {
        Ok(Value::Array(
            rows_back(l)?
                .iter()
                .enumerate()
                .map(|(i, r)| one(i, r))
                .collect::<Result<_, _>>()?,
        ))
    };
    Ok(match (op, written) {
        ("insert" | "update" | "softDelete", v) => one(0, v)?,
        ("read", Value::Object(m)) if m.contains_key("total") => {
            let mut m = m.clone();
            if let Some(l) = m.get("rows") {
                let rows = list(l)?;
                m.insert("rows".into(), rows);
            }
            Value::Object(m)
        }
        ("read" | "aggregate" | "insertMany" | "updateMany" | "updateWhere", l) => list(l)?,
        _ => written.clone(),
    })
}

/// Rows as JSON, for the tape.
fn rows_json(rows: &[Row]) -> Value {
    Value::Array(rows.iter().map(|r| Value::Object(r.clone())).collect())
}

/// Interpreter values as JSON rows, for the tape (timestamps as RFC 3339
/// text: read back through the same shape, they are the same values).
fn values_json(values: &[V]) -> Value {
    Value::Array(
        values
            .iter()
            .map(|v| v.to_json().unwrap_or(Value::Null))
            .collect(),
    )
}

/// The storage, recorded.
pub(crate) struct TapedStorage<'a> {
    pub(crate) inner: &'a mut dyn Storage,
    pub(crate) tape: &'a RefCell<Tape>,
}

impl TapedStorage<'_> {
    fn local(&self, tx: TxId) -> u64 {
        self.tape.borrow().local(tx)
    }

    fn local_opt(&self, tx: Option<TxId>) -> u64 {
        self.tape.borrow().local_opt(tx)
    }

    /// Runs `op` on the store for transaction `tx` if that is usable
    /// ([`Tape::usable`]); a failure leaves `tx` unusable until it is
    /// rolled back.
    fn checked<T>(
        &mut self,
        tx: Option<TxId>,
        op: impl FnOnce(&mut dyn Storage) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.tape.borrow().usable(tx)?;
        let r = op(&mut *self.inner);
        if r.is_err() {
            let mut tape = self.tape.borrow_mut();
            let n = tape.local_opt(tx);
            if n > 0 {
                tape.failed.push(n);
            }
        }
        r
    }

    /// Records a call whose answer is written by `answer`.
    fn record<T>(
        &self,
        op: &'static str,
        digest: String,
        result: Result<T, StorageError>,
        answer: impl FnOnce(&T) -> Option<Value>,
    ) -> Result<T, StorageError> {
        let written = match &result {
            Ok(t) => Ok(answer(t)),
            Err(e) => Err(e.clone()),
        };
        self.tape.borrow_mut().push(op, digest, written);
        result
    }
}

impl Storage for TapedStorage<'_> {
    fn begin(&mut self, isolation: Isolation, parent: Option<TxId>) -> Result<TxId, StorageError> {
        let up = self.local_opt(parent);
        let d = digest(TapeHash::CURRENT, &(isolation, up));
        let r = self.checked(parent, |s| s.begin(isolation, parent));
        if let Ok(t) = &r {
            let mut tape = self.tape.borrow_mut();
            tape.txs.push(*t);
            tape.parents.push(up);
        }
        self.record("begin", d, r, |_| None)
    }

    fn read(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        let d = digest(
            TapeHash::CURRENT,
            &(self.local_opt(tx), entity, query, false),
        );
        let r = self.checked(tx, |s| s.read(tx, entity, query));
        self.record("read", d, r, |rows| Some(rows_json(rows)))
    }

    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        let d = digest(
            TapeHash::CURRENT,
            &(self.local_opt(tx), entity, query, true),
        );
        let r = self.checked(tx, |s| s.read_counted(tx, entity, query));
        self.record("read", d, r, |(rows, total)| {
            Some(json!({"rows": rows_json(rows), "total": total}))
        })
    }

    fn read_values(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
        count: bool,
        shape: &dyn Shape,
    ) -> Result<(Vec<V>, Option<u64>), StorageError> {
        let d = digest(
            TapeHash::CURRENT,
            &(self.local_opt(tx), entity, query, count),
        );
        let r = self.checked(tx, |s| s.read_values(tx, entity, query, count, shape));
        self.record("read", d, r, |(rows, total)| {
            Some(match total {
                Some(n) => json!({"rows": values_json(rows), "total": n}),
                None => values_json(rows),
            })
        })
    }

    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        filters: &[Predicate],
        group_by: &[String],
        measures: &[Measure],
    ) -> Result<Vec<Row>, StorageError> {
        let d = digest(
            TapeHash::CURRENT,
            &(self.local_opt(tx), entity, filters, group_by, measures),
        );
        let r = self.checked(tx, |s| s.aggregate(tx, entity, filters, group_by, measures));
        self.record("aggregate", d, r, |rows| Some(rows_json(rows)))
    }

    fn insert(&mut self, tx: TxId, entity: &str, row: &Row) -> Result<Row, StorageError> {
        let d = insert_digest(TapeHash::CURRENT, self.local(tx), entity, row);
        let r = self.checked(Some(tx), |s| s.insert(tx, entity, row));
        let r = self.record("insert", d, r, |row| Some(Value::Object(row.clone())));
        self.tape.borrow_mut().sent(std::slice::from_ref(row));
        r
    }

    fn update(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        let d = update_digest(
            TapeHash::CURRENT,
            self.local(tx),
            entity,
            id,
            expected_version,
            changes,
        );
        let r = self.checked(Some(tx), |s| {
            s.update(tx, entity, id, expected_version, changes)
        });
        self.record("update", d, r, |row| Some(Value::Object(row.clone())))
    }

    fn update_where(
        &mut self,
        tx: TxId,
        entity: &str,
        query: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        let d = digest(TapeHash::CURRENT, &(self.local(tx), entity, query, changes));
        let r = self.checked(Some(tx), |s| s.update_where(tx, entity, query, changes));
        self.record("updateWhere", d, r, |rows| Some(rows_json(rows)))
    }

    fn update_where_values(
        &mut self,
        tx: TxId,
        entity: &str,
        query: &Query,
        changes: &Row,
        shape: &dyn Shape,
    ) -> Result<Vec<V>, StorageError> {
        let d = digest(TapeHash::CURRENT, &(self.local(tx), entity, query, changes));
        let r = self.checked(Some(tx), |s| {
            s.update_where_values(tx, entity, query, changes, shape)
        });
        self.record("updateWhere", d, r, |rows| Some(values_json(rows)))
    }

    fn insert_many(
        &mut self,
        tx: TxId,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let d = digest(TapeHash::CURRENT, &(self.local(tx), entity, rows));
        let r = self.checked(Some(tx), |s| s.insert_many(tx, entity, rows));
        let r = self.record("insertMany", d, r, |rows| Some(rows_json(rows)));
        self.tape.borrow_mut().sent(rows);
        r
    }

    fn update_many(
        &mut self,
        tx: TxId,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let d = digest(TapeHash::CURRENT, &(self.local(tx), entity, keys, changes));
        let r = self.checked(Some(tx), |s| s.update_many(tx, entity, keys, changes));
        self.record("updateMany", d, r, |rows| Some(rows_json(rows)))
    }

    fn soft_delete(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        deleted_at: &str,
    ) -> Result<Row, StorageError> {
        let d = soft_delete_digest(
            TapeHash::CURRENT,
            self.local(tx),
            entity,
            id,
            expected_version,
            deleted_at,
        );
        let r = self.checked(Some(tx), |s| {
            s.soft_delete(tx, entity, id, expected_version, deleted_at)
        });
        self.record("softDelete", d, r, |row| Some(Value::Object(row.clone())))
    }

    fn enqueue(&mut self, tx: TxId, message: &Value) -> Result<(), StorageError> {
        let d = enqueue_digest(TapeHash::CURRENT, self.local(tx), message);
        let r = self.checked(Some(tx), |s| s.enqueue(tx, message));
        self.record("enqueue", d, r, |_| None)
    }

    fn commit(&mut self, tx: TxId) -> Result<(), StorageError> {
        let d = end_digest(TapeHash::CURRENT, self.local(tx));
        let r = self.checked(Some(tx), |s| s.commit(tx));
        self.record("commit", d, r, |_| None)
    }

    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError> {
        let d = end_digest(TapeHash::CURRENT, self.local(tx));
        let r = self.inner.rollback(tx);
        {
            let mut tape = self.tape.borrow_mut();
            let n = tape.local(tx);
            let undone: Vec<u64> = tape
                .failed
                .iter()
                .copied()
                .filter(|f| tape.ancestry(*f).any(|a| a == n))
                .collect();
            tape.failed.retain(|f| !undone.contains(f));
        }
        self.record("rollback", d, r, |_| None)
    }

    /// Recorded by the transaction only: the entry itself is what a replay
    /// compares.
    fn append_audit(&mut self, tx: Option<TxId>, entry: &Value) -> Result<(), StorageError> {
        let d = digest(TapeHash::CURRENT, &self.local_opt(tx));
        let r = self.checked(tx, |s| s.append_audit(tx, entry));
        self.record("appendAudit", d, r, |_| None)
    }

    fn claim_key(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        let d = digest(TapeHash::CURRENT, &(scope, key, fingerprint, now_ms));
        let r = self.inner.claim_key(scope, key, fingerprint, now_ms);
        self.record("claimKey", d, r, |c| serde_json::to_value(c).ok())
    }

    /// Recorded without the body: the response's digest is on the tape.
    fn complete_key(
        &mut self,
        tx: Option<TxId>,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StorageError> {
        let d = digest(TapeHash::CURRENT, &(self.local_opt(tx), scope, key, status));
        let r = self.checked(tx, |s| s.complete_key(tx, scope, key, status, body));
        self.record("completeKey", d, r, |_| None)
    }

    fn release_key(&mut self, scope: &str, key: &str) -> Result<(), StorageError> {
        let d = digest(TapeHash::CURRENT, &(scope, key));
        let r = self.inner.release_key(scope, key);
        self.record("releaseKey", d, r, |_| None)
    }

    fn rate_hit(&mut self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        let d = digest(TapeHash::CURRENT, &(scope, window_ms));
        let r = self.inner.rate_hit(scope, window_ms);
        self.record("rateHit", d, r, |n| Some(json!(n)))
    }
}

/// The clock, recorded.
pub(crate) struct TapedClock<'a> {
    pub(crate) inner: &'a mut dyn Clock,
    pub(crate) tape: &'a RefCell<Tape>,
}

impl Clock for TapedClock<'_> {
    fn now_ms(&mut self) -> i64 {
        let now = self.inner.now_ms();
        self.tape.borrow_mut().steps.push(Step::Now(now));
        now
    }
}

/// Outbound calls, recorded.
pub(crate) struct TapedExternal<'a> {
    pub(crate) inner: &'a mut dyn External,
    pub(crate) tape: &'a RefCell<Tape>,
}

impl External for TapedExternal<'_> {
    fn call(&mut self, request: &CallRequest) -> CallResult {
        let d = digest(TapeHash::CURRENT, request);
        let r = crate::exec::usable_answer(self.inner.call(request));
        self.tape
            .borrow_mut()
            .push("call", d, Ok(serde_json::to_value(&r).ok()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::MemoryStorage;

    fn row(id: &str, code: &str) -> Row {
        let mut r = Row::new();
        r.insert("id".into(), json!(id));
        r.insert("code".into(), json!(code));
        r
    }

    /// The digests written straight from a call's arguments are the
    /// digests of the same arguments copied into a value (recorded tapes
    /// replay on either).
    #[test]
    fn digests_written_from_the_arguments_are_the_digests_of_their_value() {
        let mut r = Row::new();
        r.insert(
            "z".into(),
            json!({"b": [1, -2.5, null], "a": "x\"\\\n\u{1}é"}),
        );
        r.insert("id".into(), json!("00000000-0000-4000-8000-000000000001"));
        r.insert("n".into(), json!(-9_007_199_254_740_993i64));
        r.insert("f".into(), json!(1e300));
        r.insert("t".into(), json!(true));
        let m = json!({"service": "s", "args": {"y": 1, "x": [{"q": 2, "p": 1}]}, "id": "i"});
        let (tx, entity, id) = (3u64, "Ac\"count", "id\t1");
        for h in [TapeHash::Sha256, TapeHash::Xxh3] {
            assert_eq!(
                insert_digest(h, tx, entity, &r),
                digest(h, &(tx, entity, &r))
            );
            assert_eq!(
                update_digest(h, tx, entity, id, -7, &r),
                digest(h, &(tx, entity, id, -7i64, &r))
            );
            assert_eq!(
                soft_delete_digest(h, tx, entity, id, 2, "2026-01-01T00:00:00Z"),
                digest(h, &(tx, entity, id, 2i64, "2026-01-01T00:00:00Z"))
            );
            assert_eq!(enqueue_digest(h, tx, &m), digest(h, &(tx, &m)));
            assert_eq!(end_digest(h, tx), digest(h, &tx));
            assert_ne!(
                enqueue_digest(h, tx, &m),
                digest(h, &(tx + 1, &m)),
                "the transaction counts"
            );
        }
        assert_ne!(
            insert_digest(TapeHash::Sha256, tx, entity, &r),
            insert_digest(TapeHash::Xxh3, tx, entity, &r)
        );
    }

    /// Each version's digest is the hash its documentation names: tapes
    /// recorded before `v` (SHA-256) and with `"v": 2` (XXH3-64, seed 0,
    /// big-endian) replay on this version.
    #[test]
    fn each_tape_version_digests_with_its_hash() {
        // SHA-256("1") = 6b86b273ff34fce1…; XXH3-64("1") = 65cd25028f98f158,
        // and of no bytes 2d06800538d394c2 (the reference implementation's
        // test vector).
        assert_eq!(end_digest(TapeHash::Sha256, 1), "6b86b273");
        assert_eq!(end_digest(TapeHash::Xxh3, 1), "65cd2502");
        assert_eq!(TapeHash::Xxh3.short(""), "2d068005");
        let tape = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        assert_eq!(
            TapeHash::of(&tape(json!({"steps": []}))),
            Ok(TapeHash::Sha256)
        );
        assert_eq!(TapeHash::of(&tape(json!({"v": 2}))), Ok(TapeHash::Xxh3));
        assert!(TapeHash::of(&tape(json!({"v": 3}))).is_err());
    }

    /// The response's digest is `digest` of its canonical text, as the
    /// tapes recorded before it was written without the copy.
    #[test]
    fn the_response_digest_is_the_digest_of_its_canonical_text() {
        let body = json!({"b": [1, "two \"quoted\" \n", null], "a": {"z": 1.5, "y": "é"}});
        let text = crate::hash::canonical(&body);
        for h in [TapeHash::Sha256, TapeHash::Xxh3] {
            assert_eq!(response_digest(h, &body), digest(h, &text), "{text}");
        }
    }

    /// After a failed operation a transaction is refused until the level
    /// that failed is rolled back, even on a store that would go on (the
    /// in-memory one): Postgres would have aborted it.
    #[test]
    fn a_failed_operation_leaves_its_transaction_refused_until_rolled_back() {
        let mut store = MemoryStorage::new();
        store.set_unique("Tag", "code");
        let request = Request::default();
        let tape = RefCell::new(Tape::new(&request));
        let mut s = TapedStorage {
            inner: &mut store,
            tape: &tape,
        };
        let rc = Isolation::ReadCommitted;
        let tx = s.begin(rc, None).unwrap();
        s.insert(tx, "Tag", &row("a", "x")).unwrap();
        // In a savepoint: the failure is undone by rolling it back.
        let sp = s.begin(rc, Some(tx)).unwrap();
        assert!(s.insert(sp, "Tag", &row("b", "x")).is_err());
        assert!(matches!(
            s.insert(sp, "Tag", &row("c", "y")),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            s.read(
                Some(tx),
                "Tag",
                &Query {
                    filters: Vec::new(),
                    order: Vec::new(),
                    limit: None,
                    after: None,
                    lock: false,
                    include: Vec::new(),
                }
            ),
            Err(StorageError::Invalid { .. })
        ));
        s.rollback(sp).unwrap();
        s.insert(tx, "Tag", &row("c", "y")).unwrap();
        // Without one: nothing but a rollback.
        assert!(s.insert(tx, "Tag", &row("d", "y")).is_err());
        for refused in [
            s.insert(tx, "Tag", &row("e", "z")).map(|_| ()),
            s.begin(rc, Some(tx)).map(|_| ()),
            s.commit(tx),
        ] {
            assert!(matches!(refused, Err(StorageError::Invalid { .. })));
        }
        s.rollback(tx).unwrap();
        // Another transaction is not concerned.
        let other = s.begin(rc, None).unwrap();
        s.insert(other, "Tag", &row("f", "x")).unwrap();
        s.commit(other).unwrap();
    }
}
