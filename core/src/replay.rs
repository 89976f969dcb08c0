//! Replay: an execution run again on the answers its final audit entry
//! recorded (its tape, see [`crate::tape`]), and compared with the entry.
//!
//! [`Replay::of`] reads an entry into the request it recorded and a
//! [`Replayer`]: storage, clock and external calls answered from the tape,
//! in order. The execution runs on it (the component in a host, or the core
//! natively with [`replay_native`]), and [`Replay::verdict`] compares the
//! entry it wrote with the recorded one: identical byte for byte, or the
//! first difference.
//!
//! With the spec that recorded it, a replay must be identical: anything
//! else is a bug of the executor (or an entry changed since). With another
//! spec it is a shadow test: the verdict says whether the execution would
//! answer, write and call the same, and where it would first differ.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::bundle::Bundle;
use crate::model::Isolation;
use crate::ports::{
    CallOutcome, CallRequest, CallResult, Claim, Clock, External, Include, Measure, Predicate,
    Query, Row, Storage, StorageError, TxId,
};
use crate::request::{Auth, Request, Response};
use crate::tape::{
    TapeHash, digest, end_digest, enqueue_digest, expand, insert_digest, response_digest,
    soft_delete_digest, update_digest,
};

/// The members a storage adds to an entry (the chain's, and the component
/// that ran it), which a replay does not write.
const CHAIN_MEMBERS: [&str; 4] = ["seq", "prev", "hash", "component"];

/// The members that say what an execution did (answered, wrote, called):
/// what a shadow test compares, in the order differences are reported.
const EFFECTS: [&str; 9] = [
    "outcome", "status", "code", "detail", "response", "rows", "messages", "calls", "policies",
];

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Verdict {
    /// The execution ran the same: byte for byte with the recording spec;
    /// the same answer, writes and calls with another.
    Identical {
        /// Recorded by their hash: not checked (sensitive inputs).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        unverified: Vec<String>,
    },
    /// It ran differently.
    Different {
        /// The first difference.
        difference: String,
    },
    /// It ran differently, and an input it depends on was recorded by its
    /// hash only: the difference may come from the value replay could not
    /// reproduce.
    Unreproducible {
        /// The inputs recorded by their hash.
        unverified: Vec<String>,
        /// The first difference.
        difference: String,
    },
    /// The entry cannot be replayed.
    NotReplayable {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// The word the CLI prints.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Identical { .. } => "identical",
            Verdict::Different { .. } => "different",
            Verdict::Unreproducible { .. } => "unreproducible",
            Verdict::NotReplayable { .. } => "not-replayable",
        }
    }
}

/// An entry ready to be replayed.
pub struct Replay {
    /// The request as the executor saw it.
    pub request: Request,
    /// The recorded entry, without its chain members.
    recorded: Map<String, Value>,
    /// The answers.
    pub replayer: Replayer,
    /// Inputs recorded by their hash.
    unverified: Vec<String>,
}

impl Replay {
    /// Reads a final audit entry: the request it recorded and its tape.
    /// `bundle` is the spec it will run on (which inputs are sensitive),
    /// `shapes` its columns ([`Shapes::of`]).
    ///
    /// # Errors
    /// Why the entry cannot be replayed (no tape: written by the host, or
    /// by a version before replay; its input or tape too large to record).
    pub fn of(bundle: &Bundle, shapes: &Arc<Shapes>, entry: &Value) -> Result<Replay, String> {
        let Value::Object(e) = entry else {
            return Err("the entry is not a JSON object".into());
        };
        if e.get("kind").and_then(Value::as_str) != Some("final") {
            return Err("not a final entry".into());
        }
        let Some(Value::Object(tape)) = e.get("tape") else {
            return Err(
                "the entry has no tape (the host wrote it: the request was refused before the executor ran, or the executor failed; or an older version recorded it)"
                    .into(),
            );
        };
        if let Some(size) = tape.get("omitted") {
            return Err(format!("its tape was too large to record ({size})"));
        }
        let input = e.get("input").cloned().unwrap_or(Value::Null);
        // An input too large to copy is `{"omitted": "N bytes"}`, which is
        // not what its `inputHash` is the hash of.
        if let (Some(size), Some(hash)) = (
            input
                .get("omitted")
                .filter(|_| input.as_object().is_some_and(|m| m.len() == 1)),
            e.get("inputHash").and_then(Value::as_str),
        ) && hash
            != format!(
                "sha256:{}",
                crate::hash::sha256_hex(crate::hash::canonical(&input).as_bytes())
            )
        {
            let size = size.as_str().unwrap_or_default();
            return Err(if size == "a NUL character" {
                "its input held a NUL character, which the log cannot hold (the request was refused 400)".into()
            } else if size.starts_with("nested deeper") {
                format!(
                    "its input was {size}, which the log cannot hold (the request was refused 400)"
                )
            } else {
                format!("its input was too large to record ({size})")
            });
        }
        // The request refused for a NUL character in its key or token,
        // which the tape left out.
        for (k, what) in [
            ("idempotencyKey", "Idempotency-Key"),
            ("claims", "token's claims"),
        ] {
            if tape
                .get(k)
                .and_then(|v| v.get("omitted"))
                .and_then(Value::as_str)
                == Some(crate::tape::NUL)
            {
                return Err(format!(
                    "its {what} held a NUL character, which the log cannot hold (the request was refused)"
                ));
            }
        }
        let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
        let tool = text("tool").ok_or("the entry names no tool")?;
        let auth = text("subject").map(|sub| Auth {
            sub,
            roles: e
                .get("roles")
                .and_then(|r| serde_json::from_value(r.clone()).ok())
                .unwrap_or_default(),
            claims: tape.get("claims").cloned().unwrap_or(Value::Null),
        });
        let mut unverified = Vec::new();
        if let (Some((_, t, _)), Value::Object(m)) = (bundle.tool(&tool), &input) {
            for key in &t.sensitive {
                if m.contains_key(key) {
                    unverified.push(format!("input.{key}"));
                }
            }
        }
        let request = Request {
            tool,
            input,
            auth,
            id: text("execution").ok_or("the entry names no execution")?,
            idempotency_key: tape
                .get("idempotencyKey")
                .and_then(Value::as_str)
                .map(str::to_owned),
            scheduled: tape
                .get("scheduled")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let hash = TapeHash::of(tape)?;
        let steps = match tape.get("steps") {
            Some(Value::Array(s)) => s.clone(),
            _ => return Err("its tape has no steps".into()),
        };
        let started = text("time")
            .and_then(|t| crate::expr::value::parse_timestamp(&t))
            .ok_or("the entry has no time")?
            .div_euclid(1000);
        let mut recorded = e.clone();
        for k in CHAIN_MEMBERS {
            recorded.remove(k);
        }
        // Another spec: its reads answer rows with its columns.
        let shapes =
            (text("bundle").as_deref() != Some(bundle.hash.as_str())).then(|| Arc::clone(shapes));
        Ok(Replay {
            request,
            recorded,
            replayer: Replayer {
                hash,
                shapes,
                ..Replayer::new(steps, started)
            },
            unverified,
        })
    }

    /// Compares what the replay wrote with the recording. `same_spec`: the
    /// spec that recorded it (every byte must match), else a shadow test
    /// (what it answered, wrote and called must match).
    pub fn verdict(&self, replayed: &Response, replayer: &Replayer, same_spec: bool) -> Verdict {
        let none = Map::new();
        let got = replayed.audit.as_object().unwrap_or(&none);
        let translated =
            (replayer.hash != TapeHash::CURRENT).then(|| replayer.as_recorded(got, &replayed.body));
        let got = translated.as_ref().unwrap_or(got);
        // The first call that did not match comes first: it is where the
        // runs parted (and after it, answers are no longer the recorded
        // ones).
        let difference = replayer
            .first
            .clone()
            .or_else(|| self.first_difference(got, same_spec));
        match difference {
            None => Verdict::Identical {
                unverified: self.unverified.clone(),
            },
            Some(difference) if self.unverified.is_empty() => Verdict::Different { difference },
            Some(difference) => Verdict::Unreproducible {
                unverified: self.unverified.clone(),
                difference,
            },
        }
    }

    /// The first difference between the recorded entry and a replayed one:
    /// the effects first (the response by its digest on the tape), then
    /// (with the same spec) every other member. Members equal as values
    /// have equal canonical text, which is what the chain hashes: that is
    /// byte for byte. Inputs recorded by their hash are not compared.
    fn first_difference(&self, got: &Map<String, Value>, same_spec: bool) -> Option<String> {
        let want = &self.recorded;
        fn member<'m>(m: &'m Map<String, Value>, k: &str) -> Option<&'m Value> {
            match k {
                "response" => m.get("tape").and_then(|t| t.get("response")),
                _ => m.get(k),
            }
        }
        for k in EFFECTS {
            if let Some(d) = diff(k, member(want, k), member(got, k)) {
                return Some(d);
            }
        }
        if !same_spec {
            return None;
        }
        let hashed = |k: &str| !self.unverified.is_empty() && matches!(k, "input" | "inputHash");
        let keys = want
            .keys()
            .chain(got.keys().filter(|k| !want.contains_key(*k)))
            .filter(|k| !hashed(k));
        for k in keys {
            if let Some(d) = diff(k, want.get(k), got.get(k)) {
                return Some(d);
            }
        }
        None
    }
}

/// Where two values first differ, as `path: recorded …, replayed …`.
fn diff(path: &str, want: Option<&Value>, got: Option<&Value>) -> Option<String> {
    fn short(v: Option<&Value>) -> String {
        let Some(v) = v else { return "nothing".into() };
        let t = crate::hash::json_text(v);
        if t.chars().count() > 80 {
            format!("{}…", t.chars().take(80).collect::<String>())
        } else {
            t
        }
    }
    match (want, got) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for (k, v) in a {
                if let Some(d) = diff(&format!("{path}.{k}"), Some(v), b.get(k)) {
                    return Some(d);
                }
            }
            for (k, v) in b {
                if !a.contains_key(k) {
                    return diff(&format!("{path}.{k}"), None, Some(v));
                }
            }
            None
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                if let Some(d) = diff(&format!("{path}[{i}]"), a.get(i), b.get(i)) {
                    return Some(d);
                }
            }
            None
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!(
            "{path}: recorded {}, replayed {}",
            short(a),
            short(b)
        )),
    }
}

/// The storage, clock and external services of a replay: every call is
/// answered from the tape, in order.
///
/// A call whose arguments differ from the recording's is answered as
/// recorded (an insert with the row it sends) and noted; a call of another
/// kind than the recording's next ends the replay's answers (every later
/// call fails as unavailable). After the tape's last step, only what ends
/// an execution (appending its entry, completing or releasing its key,
/// committing, rolling back) succeeds.
#[derive(Debug, Default)]
pub struct Replayer {
    steps: Vec<Value>,
    at: usize,
    /// Each step's answer once given (with its operation): what later
    /// steps' rows refer to.
    answered: Vec<Option<(String, Value)>>,
    /// Transactions begun (numbered from 1, as the tape numbers them).
    began: u64,
    /// The last clock reading.
    now: i64,
    /// The first call that did not match the recording.
    pub first: Option<String>,
    /// A call of another kind than recorded came: no more answers.
    diverged: bool,
    /// The last call answered had the recorded arguments.
    matched: bool,
    /// How the recording's digests were made (its tape's `v`).
    hash: TapeHash,
    /// For a recording of another tape version: what this version records
    /// as a call's digest, to the recording's digest of the same call.
    translated: HashMap<String, String>,
    /// For a recording of another spec (a shadow test): the columns of
    /// the spec replayed, which the rows reads answer are given.
    shapes: Option<Arc<Shapes>>,
}

/// The columns of each entity of a spec: a recorded row read under
/// another spec is given them ([`Shapes::reshape`]), as the migration to
/// this spec would leave the row. Made once per spec replayed on.
#[derive(Debug, Default)]
pub struct Shapes(HashMap<String, Columns>);

/// The columns of one entity.
#[derive(Debug, Default)]
struct Columns {
    /// Each declared field: its name, its former name (`renamedFrom`), and
    /// what a row without it reads (its default when it is required, else
    /// null).
    fields: Vec<(String, Option<String>, Value)>,
    /// Every column a row of it holds, the implicit ones too.
    known: HashSet<String>,
}

impl Shapes {
    /// The columns of `bundle`'s entities.
    pub fn of(bundle: &Bundle) -> Shapes {
        let mut shapes = HashMap::new();
        for (name, e) in &bundle.spec.entities {
            let fields = e
                .fields
                .iter()
                .map(|(f, field)| {
                    let fill = crate::row::required_default(e, f)
                        .cloned()
                        .unwrap_or(Value::Null);
                    (f.clone(), field.renamed_from.clone(), fill)
                })
                .collect();
            let known = e.columns().into_iter().map(str::to_owned).collect();
            shapes.insert(name.clone(), Columns { fields, known });
        }
        Shapes(shapes)
    }

    /// `row` of `entity` with this spec's columns: a field it lacks from
    /// its former name, else as a row without it reads; a column the spec
    /// no longer has dropped; the rows embedded by `include` likewise.
    fn reshape(&self, entity: &str, row: &mut Row, include: &[Include]) {
        let Some(columns) = self.0.get(entity) else {
            return;
        };
        for (name, was, fill) in &columns.fields {
            if row.contains_key(name) {
                continue;
            }
            let value = was
                .as_ref()
                .and_then(|w| row.get(w).cloned())
                .unwrap_or_else(|| fill.clone());
            row.insert(name.clone(), value);
        }
        row.retain(|k, _| columns.known.contains(k) || include.iter().any(|i| i.name == *k));
        for inc in include {
            match row.get_mut(&inc.name) {
                Some(Value::Object(one)) => self.reshape(&inc.entity, one, &inc.include),
                Some(Value::Array(many)) => {
                    for r in many {
                        if let Value::Object(one) = r {
                            self.reshape(&inc.entity, one, &inc.include);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// What a step answered: nothing, a value, or an error.
type Answer = Result<Option<Value>, StorageError>;

impl Replayer {
    /// A replayer of these steps, of an execution that started (read the
    /// clock first) at `started_ms`.
    pub fn new(steps: Vec<Value>, started_ms: i64) -> Replayer {
        Replayer {
            answered: vec![None; steps.len()],
            steps,
            now: started_ms,
            ..Replayer::default()
        }
    }

    /// The digest of a call's arguments as the recording made them
    /// (`make` with the recording's hash); for a recording of an older
    /// tape version, also what this version records for the same call.
    fn digested(&mut self, make: impl Fn(TapeHash) -> String) -> String {
        let d = make(self.hash);
        if self.hash != TapeHash::CURRENT {
            self.translated.insert(make(TapeHash::CURRENT), d.clone());
        }
        d
    }

    /// The entry a replay wrote (`got`, answering `body`) with its tape as
    /// the recording's version writes it: digests of calls made as
    /// recorded, the response's digest by the recording's hash, its `v`.
    /// A call this replay did not make (refused before the storage saw
    /// it) keeps this version's digest, and so differs.
    fn as_recorded(&self, got: &Map<String, Value>, body: &Value) -> Map<String, Value> {
        let mut got = got.clone();
        if let Some(Value::Object(tape)) = got.get_mut("tape") {
            self.hash.mark(tape);
            if tape.contains_key("response") {
                tape.insert(
                    "response".into(),
                    Value::String(response_digest(self.hash, body)),
                );
            }
            if let Some(Value::Array(steps)) = tape.get_mut("steps") {
                for step in steps {
                    if let Some(d) = step.get_mut(1)
                        && let Some(was) = d.as_str().and_then(|t| self.translated.get(t))
                    {
                        *d = Value::String(was.clone());
                    }
                }
            }
        }
        got
    }

    /// Recorded rows read of `entity`, with the columns of the spec
    /// replayed when another spec recorded them.
    fn reshape(&self, entity: &str, rows: &mut [Row], include: &[Include]) {
        if let Some(shapes) = &self.shapes {
            for row in rows {
                shapes.reshape(entity, row, include);
            }
        }
    }

    fn note(&mut self, what: String) {
        if self.first.is_none() {
            self.first = Some(what);
        }
    }

    fn unavailable(&self) -> StorageError {
        StorageError::Unavailable {
            message: "replay: the recording has no answer for this call".into(),
        }
    }

    /// The next step's answer for a call `op` with arguments digested as
    /// `digest`; `sent` are the rows it sends (for `"="`).
    fn answer(&mut self, op: &'static str, digest: &str, sent: &[Row]) -> Answer {
        if self.diverged {
            return Err(self.unavailable());
        }
        let n = self.at + 1;
        let Some(step) = self.steps.get_mut(self.at).map(std::mem::take) else {
            if matches!(
                op,
                "appendAudit" | "completeKey" | "releaseKey" | "commit" | "rollback"
            ) {
                return Ok(None);
            }
            self.note(format!(
                "call {n}: `{op}`, after the last call recorded ({})",
                self.steps.len()
            ));
            self.diverged = true;
            return Err(self.unavailable());
        };
        let Some(list) = step.as_array() else {
            self.note(format!(
                "call {n}: `{op}`, where the recording read the clock"
            ));
            self.diverged = true;
            return Err(self.unavailable());
        };
        let recorded = list.first().and_then(Value::as_str).unwrap_or_default();
        if recorded != op {
            self.note(format!(
                "call {n}: `{op}`, where the recording has `{recorded}`"
            ));
            self.diverged = true;
            return Err(self.unavailable());
        }
        self.matched = list.get(1).and_then(Value::as_str) == Some(digest);
        if !self.matched {
            self.note(format!(
                "call {n}: `{op}` with other arguments than recorded"
            ));
        }
        let at = self.at;
        self.at += 1;
        if let Some(e) = list.get(3) {
            return Err(serde_json::from_value(e.clone()).unwrap_or_else(|_| {
                StorageError::Unavailable {
                    message: format!("replay: step {n} holds an error that cannot be read"),
                }
            }));
        }
        let Some(written) = list.get(2) else {
            return Ok(None);
        };
        match expand(op, written, sent, &self.answered) {
            Ok(v) => {
                if let Some(slot) = self.answered.get_mut(at) {
                    *slot = Some((op.to_string(), v.clone()));
                }
                Ok(Some(v))
            }
            Err(why) => Err(StorageError::Invalid {
                message: format!("replay: step {n}: {why}"),
            }),
        }
    }

    fn rows(
        &mut self,
        op: &'static str,
        digest: &str,
        sent: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let v = self.answer(op, digest, sent)?;
        decode(v.unwrap_or(Value::Array(Vec::new())))
    }

    fn row(&mut self, op: &'static str, digest: &str, sent: &[Row]) -> Result<Row, StorageError> {
        match self.answer(op, digest, sent)? {
            Some(Value::Object(r)) => Ok(r),
            _ => Err(StorageError::Invalid {
                message: format!("replay: `{op}` was recorded without its row"),
            }),
        }
    }

    fn unit(&mut self, op: &'static str, digest: &str) -> Result<(), StorageError> {
        self.answer(op, digest, &[]).map(|_| ())
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, StorageError> {
    serde_json::from_value(v).map_err(|e| StorageError::Invalid {
        message: format!("replay: a recorded answer cannot be read: {e}"),
    })
}

fn local(tx: Option<TxId>) -> u64 {
    tx.map_or(0, |t| t.0)
}

impl Storage for Replayer {
    fn begin(&mut self, isolation: Isolation, parent: Option<TxId>) -> Result<TxId, StorageError> {
        let d = self.digested(|h| digest(h, &(isolation, local(parent))));
        self.unit("begin", &d)?;
        self.began += 1;
        Ok(TxId(self.began))
    }

    fn read(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<Vec<Row>, StorageError> {
        let d = self.digested(|h| digest(h, &(local(tx), entity, query, false)));
        let mut rows = self.rows("read", &d, &[])?;
        self.reshape(entity, &mut rows, &query.include);
        Ok(rows)
    }

    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        query: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        let d = self.digested(|h| digest(h, &(local(tx), entity, query, true)));
        let mut v = self.answer("read", &d, &[])?.unwrap_or(Value::Null);
        let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
        let rows = v.get_mut("rows").map(Value::take).unwrap_or_default();
        let mut rows: Vec<Row> = decode(rows)?;
        self.reshape(entity, &mut rows, &query.include);
        Ok((rows, total))
    }

    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        entity: &str,
        filters: &[Predicate],
        group_by: &[String],
        measures: &[Measure],
    ) -> Result<Vec<Row>, StorageError> {
        let d = self.digested(|h| digest(h, &(local(tx), entity, filters, group_by, measures)));
        self.rows("aggregate", &d, &[])
    }

    fn insert(&mut self, tx: TxId, entity: &str, row: &Row) -> Result<Row, StorageError> {
        let d = self.digested(|h| insert_digest(h, tx.0, entity, row));
        self.row("insert", &d, std::slice::from_ref(row))
    }

    fn update(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        changes: &Row,
    ) -> Result<Row, StorageError> {
        let d = self.digested(|h| update_digest(h, tx.0, entity, id, expected_version, changes));
        let mut row = self.row("update", &d, &[])?;
        // Other changes than recorded (another spec): the row as they
        // leave it.
        if !self.matched {
            for (k, v) in changes {
                row.insert(k.clone(), v.clone());
            }
        }
        Ok(row)
    }

    fn update_where(
        &mut self,
        tx: TxId,
        entity: &str,
        query: &Query,
        changes: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        let d = self.digested(|h| digest(h, &(tx.0, entity, query, changes)));
        let mut rows = self.rows("updateWhere", &d, &[])?;
        for row in rows.iter_mut().filter(|_| !self.matched) {
            for (k, v) in changes {
                row.insert(k.clone(), v.clone());
            }
        }
        Ok(rows)
    }

    fn insert_many(
        &mut self,
        tx: TxId,
        entity: &str,
        rows: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let d = self.digested(|h| digest(h, &(tx.0, entity, rows)));
        self.rows("insertMany", &d, rows)
    }

    fn update_many(
        &mut self,
        tx: TxId,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        let d = self.digested(|h| digest(h, &(tx.0, entity, keys, changes)));
        let mut rows = self.rows("updateMany", &d, &[])?;
        for (row, c) in rows.iter_mut().zip(changes).filter(|_| !self.matched) {
            for (k, v) in c {
                row.insert(k.clone(), v.clone());
            }
        }
        Ok(rows)
    }

    fn soft_delete(
        &mut self,
        tx: TxId,
        entity: &str,
        id: &str,
        expected_version: i64,
        deleted_at: &str,
    ) -> Result<Row, StorageError> {
        let d = self
            .digested(|h| soft_delete_digest(h, tx.0, entity, id, expected_version, deleted_at));
        self.row("softDelete", &d, &[])
    }

    fn enqueue(&mut self, tx: TxId, message: &Value) -> Result<(), StorageError> {
        let d = self.digested(|h| enqueue_digest(h, tx.0, message));
        self.unit("enqueue", &d)
    }

    fn commit(&mut self, tx: TxId) -> Result<(), StorageError> {
        let d = self.digested(|h| end_digest(h, tx.0));
        self.unit("commit", &d)
    }

    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError> {
        let d = self.digested(|h| end_digest(h, tx.0));
        self.unit("rollback", &d)
    }

    fn append_audit(&mut self, tx: Option<TxId>, _entry: &Value) -> Result<(), StorageError> {
        let d = self.digested(|h| digest(h, &local(tx)));
        self.unit("appendAudit", &d)
    }

    fn claim_key(
        &mut self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Claim, StorageError> {
        let d = self.digested(|h| digest(h, &(scope, key, fingerprint, now_ms)));
        decode(self.answer("claimKey", &d, &[])?.unwrap_or(Value::Null))
    }

    fn complete_key(
        &mut self,
        tx: Option<TxId>,
        scope: &str,
        key: &str,
        status: u16,
        _body: &Value,
    ) -> Result<(), StorageError> {
        let d = self.digested(|h| digest(h, &(local(tx), scope, key, status)));
        self.unit("completeKey", &d)
    }

    fn release_key(&mut self, scope: &str, key: &str) -> Result<(), StorageError> {
        let d = self.digested(|h| digest(h, &(scope, key)));
        self.unit("releaseKey", &d)
    }

    fn rate_hit(&mut self, scope: &str, window_ms: i64) -> Result<u64, StorageError> {
        let d = self.digested(|h| digest(h, &(scope, window_ms)));
        decode(self.answer("rateHit", &d, &[])?.unwrap_or(Value::Null))
    }
}

impl Clock for Replayer {
    fn now_ms(&mut self) -> i64 {
        if self.diverged {
            return self.now;
        }
        match self.steps.get(self.at).and_then(Value::as_i64) {
            Some(since) => {
                self.at += 1;
                self.now = self.now.saturating_add(since);
            }
            None => {
                let n = self.at + 1;
                match self
                    .steps
                    .get(self.at)
                    .and_then(|s| s.get(0))
                    .and_then(Value::as_str)
                {
                    Some(op) => self.note(format!(
                        "call {n}: the clock, where the recording has `{op}`"
                    )),
                    None => self.note(format!(
                        "call {n}: the clock, after the last call recorded ({})",
                        self.steps.len()
                    )),
                }
                self.diverged = true;
            }
        }
        self.now
    }
}

impl External for Replayer {
    fn call(&mut self, request: &CallRequest) -> CallResult {
        let failed = |message: String| CallResult {
            outcome: CallOutcome::Failed { message },
            attempts: Vec::new(),
        };
        let d = self.digested(|h| digest(h, request));
        match self.answer("call", &d, &[]) {
            Ok(Some(v)) => decode(v).unwrap_or_else(|e| failed(e.to_string())),
            Ok(None) => failed("replay: the call was recorded without its result".into()),
            Err(e) => failed(e.to_string()),
        }
    }
}

/// One [`Replayer`] as the three ports [`crate::contract::execute`] takes.
struct Shared<'a>(&'a RefCell<Replayer>);

impl Storage for Shared<'_> {
    fn begin(&mut self, i: Isolation, p: Option<TxId>) -> Result<TxId, StorageError> {
        self.0.borrow_mut().begin(i, p)
    }
    fn read(&mut self, tx: Option<TxId>, e: &str, q: &Query) -> Result<Vec<Row>, StorageError> {
        self.0.borrow_mut().read(tx, e, q)
    }
    fn read_counted(
        &mut self,
        tx: Option<TxId>,
        e: &str,
        q: &Query,
    ) -> Result<(Vec<Row>, u64), StorageError> {
        self.0.borrow_mut().read_counted(tx, e, q)
    }
    fn aggregate(
        &mut self,
        tx: Option<TxId>,
        e: &str,
        f: &[Predicate],
        g: &[String],
        m: &[Measure],
    ) -> Result<Vec<Row>, StorageError> {
        self.0.borrow_mut().aggregate(tx, e, f, g, m)
    }
    fn insert(&mut self, tx: TxId, e: &str, r: &Row) -> Result<Row, StorageError> {
        self.0.borrow_mut().insert(tx, e, r)
    }
    fn update(
        &mut self,
        tx: TxId,
        e: &str,
        id: &str,
        v: i64,
        c: &Row,
    ) -> Result<Row, StorageError> {
        self.0.borrow_mut().update(tx, e, id, v, c)
    }
    fn update_where(
        &mut self,
        tx: TxId,
        e: &str,
        q: &Query,
        c: &Row,
    ) -> Result<Vec<Row>, StorageError> {
        self.0.borrow_mut().update_where(tx, e, q, c)
    }
    fn insert_many(&mut self, tx: TxId, e: &str, r: &[Row]) -> Result<Vec<Row>, StorageError> {
        self.0.borrow_mut().insert_many(tx, e, r)
    }
    fn update_many(
        &mut self,
        tx: TxId,
        e: &str,
        k: &[(String, i64)],
        c: &[Row],
    ) -> Result<Vec<Row>, StorageError> {
        self.0.borrow_mut().update_many(tx, e, k, c)
    }
    fn soft_delete(
        &mut self,
        tx: TxId,
        e: &str,
        id: &str,
        v: i64,
        at: &str,
    ) -> Result<Row, StorageError> {
        self.0.borrow_mut().soft_delete(tx, e, id, v, at)
    }
    fn enqueue(&mut self, tx: TxId, m: &Value) -> Result<(), StorageError> {
        self.0.borrow_mut().enqueue(tx, m)
    }
    fn commit(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.0.borrow_mut().commit(tx)
    }
    fn rollback(&mut self, tx: TxId) -> Result<(), StorageError> {
        self.0.borrow_mut().rollback(tx)
    }
    fn append_audit(&mut self, tx: Option<TxId>, e: &Value) -> Result<(), StorageError> {
        self.0.borrow_mut().append_audit(tx, e)
    }
    fn claim_key(&mut self, s: &str, k: &str, f: &str, now: i64) -> Result<Claim, StorageError> {
        self.0.borrow_mut().claim_key(s, k, f, now)
    }
    fn complete_key(
        &mut self,
        tx: Option<TxId>,
        s: &str,
        k: &str,
        status: u16,
        b: &Value,
    ) -> Result<(), StorageError> {
        self.0.borrow_mut().complete_key(tx, s, k, status, b)
    }
    fn release_key(&mut self, s: &str, k: &str) -> Result<(), StorageError> {
        self.0.borrow_mut().release_key(s, k)
    }
    fn rate_hit(&mut self, s: &str, w: i64) -> Result<u64, StorageError> {
        self.0.borrow_mut().rate_hit(s, w)
    }
}

impl Clock for Shared<'_> {
    fn now_ms(&mut self) -> i64 {
        self.0.borrow_mut().now_ms()
    }
}

impl External for Shared<'_> {
    fn call(&mut self, r: &CallRequest) -> CallResult {
        self.0.borrow_mut().call(r)
    }
}

/// Replays an entry with the core itself (not the component): what tests
/// and the in-memory engines use. `same_spec`: `bundle` recorded it.
pub fn replay_native(bundle: &Bundle, entry: &Value, same_spec: bool) -> Verdict {
    let mut replay = match Replay::of(bundle, &Arc::new(Shapes::of(bundle)), entry) {
        Ok(r) => r,
        Err(reason) => return Verdict::NotReplayable { reason },
    };
    let cell = RefCell::new(std::mem::take(&mut replay.replayer));
    let response = crate::contract::execute(
        bundle,
        &replay.request,
        &mut Shared(&cell),
        &mut Shared(&cell),
        &mut Shared(&cell),
    );
    replay.verdict(&response, &cell.borrow(), same_spec)
}

#[cfg(test)]
mod tests {
    use super::Replay;
    use crate::bundle::Bundle;
    use crate::contract::execute;
    use crate::request::Request;
    use serde_json::{Value, json};

    /// An Idempotency-Key or token claims holding a NUL character (a
    /// Pub/Sub push's `messageId`, a token's claim) are refused, and left
    /// out of the entry's tape, saying why: Postgres cannot hold them in
    /// `jsonb`. A replay says why it cannot run such an entry.
    #[test]
    fn a_key_or_claims_with_a_nul_character_are_left_out_of_the_tape() {
        let spec = json!({"sinew": "0.2", "name": "k", "roles": ["r"], "tools": {"t": {
            "trigger": {"queue": {"name": "jobs"}}, "auth": {"roles": ["r"]}, "output": true,
            "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": "{}"}}}}}});
        let text = spec.to_string();
        let bundle = Bundle::load(&text).unwrap();
        let auth = |claims: Value| crate::request::Auth {
            sub: "queue:jobs".into(),
            roles: vec!["r".into()],
            claims,
        };
        for (key, claims, part) in [
            (Some("é\u{0}"), json!({}), "idempotencyKey"),
            (Some("m-1"), json!({"email": "a\u{0}"}), "claims"),
        ] {
            let request = Request {
                tool: "t".into(),
                id: "req-1".into(),
                auth: Some(auth(claims)),
                idempotency_key: key.map(str::to_owned),
                ..Request::default()
            };
            let r = execute(
                &bundle,
                &request,
                &mut crate::ports::memory::MemoryStorage::new(),
                &mut crate::ports::memory::FixedClock::new(1_767_225_600_000),
                &mut crate::ports::script::ScriptedExternal::new(),
            );
            assert!(matches!(r.status, 400 | 401), "{}", r.status);
            assert!(!r.audit.to_string().contains("\\u0000"), "{}", r.audit);
            assert_eq!(r.audit["tape"][part], json!({"omitted": "a NUL character"}));
            let e = Replay::of(&bundle, &Default::default(), &r.audit).err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("held a NUL character")),
                "{e:?}"
            );
        }
    }

    /// A shadow test of a spec that changes an entity's columns: the rows
    /// a read recorded are given the new spec's columns (a new field's
    /// default, a renamed field's value under its new name, a removed one
    /// gone), so an answer made of them differs as the real one would. A
    /// change elsewhere still replays identically.
    #[test]
    fn a_shadow_test_reads_rows_with_the_new_specs_columns() {
        let spec = |fields: Value, description: &str| {
            json!({"sinew": "0.2", "name": "s", "roles": ["r"],
                "entities": {"Item": {"fields": fields}},
                "tools": {"list": {"description": description,
                    "trigger": {"http": {"method": "GET", "path": "/items"}},
                    "auth": {"roles": ["r"]}, "output": {"type": "object"},
                    "flow": {"entry": "find", "nodes": {
                        "find": {"type": "read", "entity": "Item", "limit": 10, "orderBy": "id",
                            "next": "done"},
                        "done": {"type": "return", "value": {"items": "find"}}}}}}})
            .to_string()
        };
        let fields =
            json!({"title": {"type": "string"}, "note": {"type": "string", "nullable": true}});
        let text = spec(fields.clone(), "Items.");
        let bundle = Bundle::load(&text).unwrap();
        let mut memory = crate::ports::memory::MemoryStorage::new();
        memory.declare(&bundle.spec);
        for (i, title) in ["a", "b"].iter().enumerate() {
            let given = json!({"id": format!("00000000-0000-4000-8000-00000000000{i}"),
                "title": title, "note": "n"});
            let row = bundle
                .complete_row("Item", given.as_object().unwrap(), 1_767_225_600_000)
                .unwrap();
            memory.seed("Item", row).unwrap();
        }
        let request = Request {
            tool: "list".into(),
            input: json!({}),
            id: "req-1".into(),
            auth: Some(crate::request::Auth {
                sub: "ann".into(),
                roles: vec!["r".into()],
                claims: json!({}),
            }),
            ..Request::default()
        };
        let r = execute(
            &bundle,
            &request,
            &mut memory,
            &mut crate::ports::memory::FixedClock::new(1_767_225_600_000),
            &mut crate::ports::script::ScriptedExternal::new(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let entry = r.audit;
        let replay = |text: &str| {
            let changed = Bundle::load(text).unwrap();
            super::replay_native(&changed, &entry, false)
        };
        assert!(matches!(
            super::replay_native(&bundle, &entry, true),
            super::Verdict::Identical { .. }
        ));
        assert!(matches!(
            replay(&spec(fields.clone(), "Every item.")),
            super::Verdict::Identical { .. }
        ));
        let mut added = fields.clone();
        added["color"] = json!({"type": "string", "default": "red"});
        let mut removed = fields.clone();
        removed.as_object_mut().unwrap().remove("note");
        let renamed = json!({"name": {"type": "string", "renamedFrom": "title"},
            "note": {"type": "string", "nullable": true}});
        // (The entry records its response by its digest.)
        for (fields, what) in [(added, "added"), (removed, "removed"), (renamed, "renamed")] {
            let super::Verdict::Different { difference } = replay(&spec(fields, "Items.")) else {
                panic!("a field {what}: identical")
            };
            assert!(difference.starts_with("response: "), "{what}: {difference}");
        }
    }
}
