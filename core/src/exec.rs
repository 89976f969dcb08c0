//! The flow interpreter: walks a tool's flow graph node by node, binding
//! each node's result to its id, running transaction bodies inside storage
//! transactions, and recording what it wrote and called for the audit.
//!
//! Every value is computed here; storage only reads and writes rows.

use indexmap::IndexMap;
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeSet, HashMap};

use crate::bundle::{Bundle, Compiled};
use crate::expr::{self, Env, Value};
use crate::model::{
    Concurrency, Entity, Expression, FilterOp, Flow, Limit, Node, NodeKind, Target, Template, Tool,
};
use crate::ports::{
    CallOutcome, CallRequest, Clock, Condition, External, Predicate, Query, Row, SortKey, Storage,
    StorageError, TxId,
};
use crate::problem::{Code, Problem};
use crate::request::Request;

use crate::hash::uuid_from;
use crate::row::{self as rows, row_to_value};

/// How a flow (or a transaction body) ended.
pub(crate) enum End {
    /// A body ran out of nodes: go on after the transaction node.
    Body,
    /// A `return`: the output and its status.
    Return(Json, u16),
    /// A `fail`.
    Fail(Problem),
}

enum Step {
    Next(Option<String>),
    End(End),
}

/// One row written, for the audit entry.
#[derive(Debug, Clone)]
pub(crate) struct RowRecord {
    pub entity: String,
    pub id: String,
    pub op: &'static str,
    pub before: Option<i64>,
    pub after: i64,
}

/// One call made, for the audit entry.
#[derive(Debug, Clone)]
pub(crate) struct CallRecord {
    pub node: String,
    pub service: String,
    pub operation: String,
    pub outcome: &'static str,
    pub attempts: usize,
    pub compensation: bool,
    pub result: Json,
}

/// An open transaction and what it has written.
pub(crate) struct Tx {
    pub id: TxId,
    /// The latest state of every row written, for invariants.
    pub touched: IndexMap<(String, String), Row>,
    pub rows: Vec<RowRecord>,
    /// Rows a `read` with `lock` gave the caller in this transaction, with
    /// their owner field's value: live and the caller's while they stay
    /// locked, so a `ref` to one needs no read to be checked.
    pub locked: HashMap<(String, String), Json>,
    /// Messages `emit` recorded in this transaction (the outbox), for the
    /// audit entry.
    pub messages: Vec<Json>,
}

impl Tx {
    fn new(id: TxId) -> Tx {
        Tx {
            id,
            touched: IndexMap::new(),
            rows: Vec::new(),
            locked: HashMap::new(),
            messages: Vec::new(),
        }
    }
}

/// The state of one execution.
pub(crate) struct Run<'a> {
    pub bundle: &'a Bundle,
    pub tool_name: &'a str,
    pub tool: &'a Tool,
    pub compiled: &'a Compiled,
    pub storage: &'a mut dyn Storage,
    pub clock: &'a mut dyn Clock,
    pub external: &'a mut dyn External,
    pub request: &'a Request,
    /// `input`, `auth`, `request`.
    pub roots: [Value; 3],
    /// Results of nodes, by id.
    pub bound: HashMap<String, Value>,
    /// Open transactions, outermost first.
    pub open: Vec<Tx>,
    /// The version at which the flow was first given each row (by a read,
    /// an include, or a write of its own): a later write to the row
    /// checks that it is still that version (a row changed since is a
    /// conflict), whatever the flow computes its new values from.
    pub seen: HashMap<(String, String), i64>,
    /// A top-level transaction whose body finished and whose commit waits
    /// for the end of the flow (so the final audit entry and the stored
    /// idempotent response commit with it).
    pub pending: Option<Tx>,
    /// Rows written by committed transactions.
    pub rows: Vec<RowRecord>,
    /// Messages recorded by committed transactions.
    pub messages: Vec<Json>,
    pub calls: Vec<CallRecord>,
    /// Succeeded calls with a `compensate`, oldest first: (call, compensating node).
    pub compensable: Vec<(String, String)>,
    /// Compensations that failed without a call to show it (a compensating
    /// `transaction`), for the audit entry's `compensationsFailed`.
    pub failed_compensations: Vec<Json>,
    /// Nodes that ran.
    pub ran: BTreeSet<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub policies: Vec<(String, &'static str)>,
    pub deadline_ms: Option<i64>,
    /// Audit entries of intermediate commits (`kind: "commit"`).
    pub step_entries: u32,
    ids: HashMap<String, u32>,
}

/// The variables of an expression: the roots, the bound nodes and `row`.
struct Scope<'s, 'r> {
    run: &'s Run<'r>,
    row: Option<&'s Value>,
}

impl Env for Scope<'_, '_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        match name {
            "input" => self.run.roots.first(),
            "auth" => self.run.roots.get(1),
            "request" => self.run.roots.get(2),
            "row" => self.row,
            other => self.run.bound.get(other),
        }
    }
}

/// The problem a storage error becomes.
pub(crate) fn storage_problem(e: StorageError) -> Problem {
    match e {
        StorageError::Conflict { message } => Problem::new(
            Code::Conflict,
            "the data changed while this request ran; retry it",
        )
        .fatal()
        .internal(message),
        StorageError::Unique { entity, field } => Problem::new(
            Code::AlreadyExists,
            if field.is_empty() {
                // A key the store cannot name (a unique index the spec
                // does not have, on a store that does not say its columns).
                format!(
                    "{} with these values already exists",
                    crate::diag::a_code(&entity)
                )
            } else if field.contains(',') {
                format!(
                    "{} with these `{}` already exists",
                    crate::diag::a_code(&entity),
                    field.replace(',', "`, `")
                )
            } else {
                format!(
                    "{} with this `{field}` already exists",
                    crate::diag::a_code(&entity)
                )
            },
        ),
        StorageError::NotFound { entity, .. } => {
            Problem::new(Code::NotFound, format!("no such `{entity}`"))
        }
        StorageError::Unavailable { message } => Problem::new(
            Code::Unavailable,
            "the database is unavailable; retry later",
        )
        .fatal()
        .internal(message),
        StorageError::Invalid { message } => Problem::new(Code::Internal, "internal error")
            .fatal()
            .internal(message),
    }
}

/// A write the field checks refused is 422 `constraint_violated` when a
/// refused value may be the caller's. When every refused value is of the
/// wrong type and its expression reads nothing the caller sent (an
/// external's answer, a `json` field, what the checker could not type),
/// the mistake is the spec's: 500 `spec_error`, the details for operators.
fn blame_write(
    p: Problem,
    e: &Entity,
    row: &Row,
    templates: &crate::model::NameMap<Template>,
    flow: &Flow,
) -> Problem {
    if p.code() != Code::ConstraintViolated.as_str() || p.errors.is_empty() {
        return p;
    }
    let callers = caller_names(flow);
    let from_caller = |t: &Template| t.expressions().iter().any(|x| reads_caller(x, &callers));
    let spec_made = p.errors.iter().all(|err| {
        let Some(name) = err.get("field").and_then(Json::as_str) else {
            return false;
        };
        let (Some(f), Some(v), Some(t)) = (e.fields.get(name), row.get(name), templates.get(name))
        else {
            return false;
        };
        let why = f.violations(v);
        let wrong_type = why.len() == 1
            && why
                .first()
                .is_some_and(|w| *w == format!("must be {}", crate::diag::a(f.ty.name())));
        wrong_type && !from_caller(t)
    });
    if spec_made {
        Problem::spec_error(format!("a written value has the wrong type: {}", p.detail))
    } else {
        p
    }
}

/// An external's answer holding text with a NUL character, or nesting
/// deeper than [`crate::input::MAX_DEPTH`] levels, is a failed call, on
/// every engine: Postgres cannot store the first (in the audit entry, its
/// tape, a row), and the second would not fit the entry, the tape or a
/// `json` field read back inside its row. Applied where the answer is
/// recorded and where it is used, so a recording never holds one.
pub(crate) fn usable_answer(mut result: crate::ports::CallResult) -> crate::ports::CallResult {
    if let CallOutcome::Ok { value } | CallOutcome::Declined { value } = &result.outcome {
        let why = if crate::input::too_deep(value) {
            Some(format!(
                "the answer nests deeper than {} levels of arrays and objects",
                crate::input::MAX_DEPTH
            ))
        } else if crate::input::has_nul(value) {
            Some("the answer contains a NUL character (U+0000)".to_owned())
        } else {
            None
        };
        if let Some(message) = why {
            result.outcome = CallOutcome::Failed { message };
        }
    }
    result
}

/// The 400 for an input property `name` the schema does not declare, that
/// the caller left out or sent as `null`, where the tool needs it.
fn left_out(name: &str) -> Problem {
    crate::input::invalid(
        "the input is not valid",
        vec![json!({
            "pointer": crate::diag::child("", name),
            "message": "is needed by this tool (its input schema does not declare it)",
        })],
        1,
    )
}

/// Whether `x` reads `input`, `auth`, `request` or one of `callers` (or
/// did not parse).
fn reads_caller(x: &Expression, callers: &BTreeSet<&str>) -> bool {
    x.ast.as_ref().is_none_or(|a| {
        let mut reads = false;
        a.walk(|n| {
            reads |= matches!(&n.kind, crate::expr::ExprKind::Ident(r)
                if matches!(r.as_str(), "input" | "auth" | "request") || callers.contains(r.as_str()))
        });
        reads
    })
}

/// The names of `flow` (bodies included) whose values may carry what the
/// caller sent, followed through what binds them: a `let` node, a
/// `foreach`'s element and its result, a `create`'s `each` element, when
/// an expression that defines it reads the caller's roots or such a name.
/// (Rows read, created or changed are the store's, already checked.)
fn caller_names(flow: &Flow) -> BTreeSet<&str> {
    let mut defs: Vec<(&str, Vec<&Expression>)> = Vec::new();
    let mut flows = vec![flow];
    while let Some(f) = flows.pop() {
        for (name, node) in &f.nodes {
            match &node.kind {
                NodeKind::Let { values } => defs.push((
                    name,
                    values.values().flat_map(Template::expressions).collect(),
                )),
                NodeKind::Foreach {
                    items,
                    as_name,
                    collect,
                    body,
                    ..
                } => {
                    defs.push((as_name, vec![items]));
                    let mut all = vec![items];
                    all.extend(collect.iter().flat_map(Template::expressions));
                    defs.push((name, all));
                    flows.push(body);
                }
                NodeKind::Create {
                    each: Some((list, as_name)),
                    ..
                } => defs.push((as_name, vec![list])),
                NodeKind::Transaction { body, .. } => flows.push(body),
                _ => {}
            }
        }
    }
    let mut callers = BTreeSet::new();
    loop {
        let before = callers.len();
        for (name, exprs) in &defs {
            if !callers.contains(name) && exprs.iter().any(|x| reads_caller(x, &callers)) {
                callers.insert(*name);
            }
        }
        if callers.len() == before {
            return callers;
        }
    }
}

impl<'a> Run<'a> {
    #[expect(clippy::too_many_arguments, reason = "the ports and the request, once")]
    pub fn new(
        bundle: &'a Bundle,
        tool_name: &'a str,
        tool: &'a Tool,
        compiled: &'a Compiled,
        storage: &'a mut dyn Storage,
        clock: &'a mut dyn Clock,
        external: &'a mut dyn External,
        request: &'a Request,
        roots: [Value; 3],
        started_ms: i64,
    ) -> Run<'a> {
        Run {
            bundle,
            tool_name,
            tool,
            compiled,
            storage,
            clock,
            external,
            request,
            roots,
            bound: HashMap::new(),
            open: Vec::new(),
            seen: HashMap::new(),
            pending: None,
            rows: Vec::new(),
            messages: Vec::new(),
            calls: Vec::new(),
            compensable: Vec::new(),
            failed_compensations: Vec::new(),
            ran: BTreeSet::new(),
            rows_read: 0,
            rows_written: 0,
            policies: Vec::new(),
            deadline_ms: tool
                .limits
                .timeout_ms
                .and_then(|t| started_ms.checked_add(i64::try_from(t).ok()?)),
            step_entries: 0,
            ids: HashMap::new(),
        }
    }

    // -- expressions -------------------------------------------------------

    /// Evaluates a tool-level expression (`denyWhen`, the idempotency
    /// key, policies): no `row`, no node results yet.
    pub fn eval_tool_level(&self, e: &Expression) -> Result<Value, Problem> {
        self.eval(e, None)
    }

    fn eval(&self, e: &Expression, row: Option<&Value>) -> Result<Value, Problem> {
        let Some(ast) = &e.ast else {
            return Err(Problem::spec_error(format!(
                "`{}` at {} did not parse",
                e.src, e.path
            )));
        };
        let scope = Scope { run: self, row };
        expr::eval(ast, &scope).map_err(|err| {
            if let Some(name) = self.left_out_undeclared(ast) {
                return left_out(&name);
            }
            Problem::spec_error(format!(
                "evaluating `{}` at {} failed: {}",
                e.src, e.path, err.message
            ))
        })
    }

    /// A top-level input property that `ast` reads, that the input schema
    /// does not declare (an open schema lets a caller send it or not, so
    /// the checker cannot know), and that the caller left out or sent as
    /// `null`: an expression failing on it failed on the caller's input
    /// (400), not on the spec (500).
    fn left_out_undeclared(&self, ast: &expr::Expr) -> Option<String> {
        let declared = self.tool.input_shape.get("properties");
        let mut found = None;
        ast.walk(|n| {
            if found.is_some() {
                return;
            }
            if let expr::ExprKind::Member(base, name) = &n.kind
                && matches!(&base.kind, expr::ExprKind::Ident(r) if r == "input")
                && declared.and_then(|d| d.get(name)).is_none()
                && self.request.input.get(name).is_none_or(Json::is_null)
            {
                found = Some(name.clone());
            }
        });
        found
    }

    /// The 400 for a value of `t` that fails because the caller left out
    /// (or sent as `null`) an input property the schema does not declare.
    fn left_out_in(&self, t: &Template) -> Option<Problem> {
        t.expressions()
            .into_iter()
            .find_map(|x| self.left_out_of(x))
    }

    /// [`Run::left_out_in`] for one expression.
    pub(crate) fn left_out_of(&self, e: &Expression) -> Option<Problem> {
        e.ast
            .as_ref()
            .and_then(|a| self.left_out_undeclared(a))
            .map(|name| left_out(&name))
    }

    fn template(&self, t: &Template, row: Option<&Value>) -> Result<Value, Problem> {
        Ok(match t {
            Template::Expr(e) => self.eval(e, row)?,
            Template::Literal(v) => Value::from_json(v),
            Template::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, t)| self.template(t, row).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Array(a) => Value::List(
                a.iter()
                    .map(|t| self.template(t, row))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn json(&self, v: &Value) -> Result<Json, Problem> {
        v.to_json()
            .map_err(|m| Problem::spec_error(format!("a value cannot be written as JSON: {m}")))
    }

    // -- budgets -----------------------------------------------------------

    fn check_deadline(&mut self) -> Result<(), Problem> {
        if let Some(d) = self.deadline_ms
            && self.clock.now_ms() > d
        {
            return Err(Problem::new(
                Code::DeadlineExceeded,
                format!(
                    "`{}` ran longer than its {} ms",
                    self.tool_name,
                    self.tool.limits.timeout_ms.unwrap_or(0)
                ),
            )
            .fatal());
        }
        Ok(())
    }

    fn count_rows(&mut self, read: u64, written: u64) -> Result<(), Problem> {
        self.rows_read += read;
        self.rows_written += written;
        let l = &self.tool.limits;
        let total = self.rows_read + self.rows_written;
        let over = |limit: Option<u64>, n: u64| limit.is_some_and(|m| n > m);
        if over(l.max_rows, total)
            || over(l.max_rows_read, self.rows_read)
            || over(l.max_rows_written, self.rows_written)
        {
            return Err(Problem::new(
                Code::LimitExceeded,
                format!(
                    "`{}` touched more rows than its limits allow",
                    self.tool_name
                ),
            )
            .fatal());
        }
        if let Some((name, max, action)) = &self.compiled.row_limit
            && total > *max
        {
            match action {
                crate::model::PolicyAction::Block => {
                    return Err(Problem::new(
                        Code::PolicyDenied,
                        format!("policy `{name}`: more than {max} rows"),
                    )
                    .fatal());
                }
                crate::model::PolicyAction::Warn | crate::model::PolicyAction::Escalate => {
                    let a = if *action == crate::model::PolicyAction::Warn {
                        "warn"
                    } else {
                        "escalate"
                    };
                    if !self.policies.iter().any(|(n, _)| n == name) {
                        self.policies.push((name.clone(), a));
                    }
                }
            }
        }
        Ok(())
    }

    // -- transactions ------------------------------------------------------

    fn current_tx(&self) -> Option<TxId> {
        self.open
            .last()
            .map(|t| t.id)
            .or(self.pending.as_ref().map(|t| t.id))
    }

    fn write_tx(&mut self) -> Result<&mut Tx, Problem> {
        match self.open.last_mut() {
            Some(t) => Ok(t),
            None => Err(Problem::new(Code::Internal, "a write outside a transaction").fatal()),
        }
    }

    /// Commits the pending top-level transaction with an intermediate audit
    /// entry (A1: no committed write without an audit entry in its
    /// transaction).
    pub fn flush_pending(&mut self) -> Result<(), Problem> {
        let Some(tx) = self.pending.take() else {
            return Ok(());
        };
        self.step_entries += 1;
        let mut entry = json!({
            "kind": "commit",
            "execution": self.request.id,
            "tool": self.tool_name,
            "step": self.step_entries,
            "rows": rows_json(&tx.rows),
        });
        if !tx.messages.is_empty()
            && let Some(m) = entry.as_object_mut()
        {
            m.insert("messages".into(), Json::Array(tx.messages.clone()));
        }
        if let Err(e) = self.storage.append_audit(Some(tx.id), &entry) {
            let _ = self.storage.rollback(tx.id);
            return Err(storage_problem(e));
        }
        if let Err(e) = self.storage.commit(tx.id) {
            let _ = self.storage.rollback(tx.id);
            return Err(storage_problem(e));
        }
        self.rows.extend(tx.rows);
        self.messages.extend(tx.messages);
        Ok(())
    }

    /// Checks the invariants of every row a top-level transaction wrote.
    fn check_invariants(&self, tx: &Tx) -> Result<(), Problem> {
        let mut broken = Vec::new();
        for ((entity, id), row) in &tx.touched {
            let Some(e) = self.bundle.spec.entities.get(entity) else {
                continue;
            };
            if e.invariants.is_empty() || !row.get("deleted_at").is_none_or(Json::is_null) {
                continue;
            }
            let value = row_to_value(e, row);
            for (name, inv) in &e.invariants {
                match self.eval(inv, Some(&value))? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => {
                        broken.push(json!({"invariant": name, "entity": entity, "id": id}));
                    }
                    other => return Err(not_bool(inv, &other)),
                }
            }
        }
        if broken.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = broken
            .iter()
            .filter_map(|b| {
                b.get("invariant")
                    .and_then(Json::as_str)
                    .map(|s| format!("`{s}`"))
            })
            .collect();
        Err(Problem::new(
            Code::InvariantViolated,
            format!("the change would break {}", names.join(", ")),
        )
        .with_errors(broken))
    }

    fn run_transaction(
        &mut self,
        node_id: &str,
        body: &Flow,
        isolation: crate::model::Isolation,
    ) -> Result<Step, Problem> {
        let nested = !self.open.is_empty();
        if !nested {
            self.flush_pending()?;
        }
        let parent = self.open.last().map(|t| t.id);
        let id = self
            .storage
            .begin(isolation, parent)
            .map_err(storage_problem)?;
        self.open.push(Tx::new(id));
        let result = self.run_flow(body);
        let Some(tx) = self.open.pop() else {
            return Err(Problem::new(Code::Internal, "transaction stack").fatal());
        };
        let _ = node_id;
        match result {
            Ok(End::Body) | Ok(End::Return(..)) => {
                if nested {
                    self.release_savepoint(tx)?;
                } else {
                    if let Err(p) = self.check_invariants(&tx) {
                        let _ = self.storage.rollback(tx.id);
                        return Err(p);
                    }
                    self.pending = Some(tx);
                }
                match result {
                    Ok(End::Return(v, s)) => Ok(Step::End(End::Return(v, s))),
                    _ => Ok(Step::Next(None)),
                }
            }
            Ok(End::Fail(p)) => {
                let _ = self.storage.rollback(tx.id);
                self.unsee(&tx);
                Ok(Step::End(End::Fail(p)))
            }
            Err(p) => {
                let _ = self.storage.rollback(tx.id);
                self.unsee(&tx);
                Err(p)
            }
        }
    }

    /// The rows a rolled-back transaction wrote are back at the version
    /// they had before it (a created one is gone).
    fn unsee(&mut self, tx: &Tx) {
        for r in tx.rows.iter().rev() {
            let key = (r.entity.clone(), r.id.clone());
            match r.before {
                Some(v) => {
                    self.seen.insert(key, v);
                }
                None => {
                    self.seen.remove(&key);
                }
            }
        }
    }

    /// Remembers the version at which the flow is given each of `rows`
    /// of `entity` and the rows they include, unless it was given the row
    /// before (see [`Run::seen`]).
    fn saw(&mut self, entity: &str, rows: &[Value], include: &[crate::model::Include]) {
        let bundle = self.bundle;
        let e = bundle.spec.entities.get(entity);
        for r in rows {
            if let (Some(Value::String(id)), Some(Value::Int(v))) =
                (field_of(r, "id"), field_of(r, "version"))
            {
                self.seen
                    .entry((entity.to_string(), id.clone()))
                    .or_insert(*v);
            }
            for inc in include {
                let Some(target) = e.and_then(|e| inc.target(e)) else {
                    continue;
                };
                match field_of(r, &inc.name) {
                    Some(one @ Value::Map(_)) => {
                        self.saw(target, std::slice::from_ref(one), &inc.include);
                    }
                    Some(Value::List(list)) => self.saw(target, list, &inc.include),
                    _ => {}
                }
            }
        }
    }

    // -- the walk ----------------------------------------------------------

    /// Runs a flow from its entry.
    pub fn run_flow(&mut self, flow: &Flow) -> Result<End, Problem> {
        let mut cur = flow.entry.clone();
        loop {
            let Some(node) = flow.nodes.get(&cur) else {
                return Err(Problem::new(Code::Internal, format!("no node `{cur}`")).fatal());
            };
            self.check_deadline()?;
            // A finished top-level transaction commits as late as it can:
            // before an external call (which must not run while its rows
            // are uncommitted) or the next transaction (which flushes it
            // itself), else with the final audit entry. A failure before
            // then rolls it back, so an error answer never stands beside
            // writes it did not mention.
            if self.pending.is_some()
                && self.open.is_empty()
                && matches!(node.kind, NodeKind::Call { .. })
            {
                self.flush_pending()?;
            }
            self.ran.insert(cur.clone());
            let ran = if node.on_error.is_some() && !self.open.is_empty() && caught_in_storage(node)
            {
                self.undone_on_error(|run| run.run_node(&cur, node))
            } else {
                self.run_node(&cur, node)
            };
            match ran {
                Ok(Step::Next(next)) => {
                    let next = match (&node.kind, next) {
                        (_, Some(n)) => Some(n),
                        (_, None) => node.next.clone(),
                    };
                    match next {
                        Some(n) => cur = n,
                        None => return Ok(End::Body),
                    }
                }
                Ok(Step::End(end)) => return Ok(end),
                Err(p) if !p.fatal && node.on_error.is_some() => {
                    self.bound.remove(&cur);
                    if let Some(e) = &node.on_error {
                        cur = e.clone();
                    }
                }
                Err(p) => return Err(p),
            }
        }
    }

    /// Runs `step` (a node with `onError` that writes, inside a
    /// transaction) in a savepoint: if it fails, none of its writes stay,
    /// and the flow goes on at its `onError` in a transaction as it was.
    /// This is the only way the core goes on in a transaction after a
    /// failed storage operation: a store may leave a transaction unusable
    /// after one until it (or its savepoint) is rolled back, as Postgres
    /// does, so a store needs no savepoint of its own around each write.
    fn undone_on_error(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Step, Problem>,
    ) -> Result<Step, Problem> {
        let parent = self.open.last().map(|t| t.id);
        let id = self
            .storage
            .begin(crate::model::Isolation::ReadCommitted, parent)
            .map_err(storage_problem)?;
        self.open.push(Tx::new(id));
        let result = step(self);
        let Some(tx) = self.open.pop() else {
            return Err(Problem::new(Code::Internal, "transaction stack").fatal());
        };
        if result.is_err() {
            let _ = self.storage.rollback(tx.id);
            return result;
        }
        self.release_savepoint(tx)?;
        result
    }

    /// Commits a nested transaction (a savepoint) into the one around it:
    /// its rows, for the audit and the invariants, and the rows it locked
    /// (the locks stay with the transaction around it).
    fn release_savepoint(&mut self, tx: Tx) -> Result<(), Problem> {
        if let Err(e) = self.storage.commit(tx.id) {
            let _ = self.storage.rollback(tx.id);
            return Err(storage_problem(e));
        }
        if let Some(parent) = self.open.last_mut() {
            parent.touched.extend(tx.touched);
            parent.rows.extend(tx.rows);
            parent.locked.extend(tx.locked);
            parent.messages.extend(tx.messages);
        }
        Ok(())
    }

    fn run_node(&mut self, id: &str, node: &Node) -> Result<Step, Problem> {
        let bound = match &node.kind {
            NodeKind::Read { .. } => self.read(node)?,
            NodeKind::Aggregate { .. } => self.aggregate(node)?,
            NodeKind::Create {
                entity,
                values,
                each: None,
            } => self.create(id, entity, values)?,
            NodeKind::Create {
                entity,
                values,
                each: Some((items, as_name)),
            } => self.create_each(id, entity, values, items, as_name)?,
            NodeKind::Update {
                entity,
                filters,
                limit,
                one,
                set,
                order_by,
                reads_row,
            } => {
                let filters = filters.as_deref().unwrap_or_default();
                let pick = Pick {
                    filters,
                    order_by,
                    limit: limit.as_ref(),
                };
                self.update(entity, &pick, *one, set, *reads_row)?
            }
            NodeKind::Transition {
                entity,
                target,
                action,
            } => match target {
                Target::Id(row_id) => self.transition(entity, row_id, action)?,
                Target::Where {
                    filters,
                    order_by,
                    limit,
                } => {
                    let pick = Pick {
                        filters,
                        order_by,
                        limit: limit.as_ref(),
                    };
                    self.transition_where(entity, &pick, action)?
                }
            },
            NodeKind::SoftDelete { entity, target } => match target {
                Target::Id(row_id) => self.soft_delete(entity, row_id)?,
                Target::Where {
                    filters,
                    order_by,
                    limit,
                } => {
                    let pick = Pick {
                        filters,
                        order_by,
                        limit: limit.as_ref(),
                    };
                    self.soft_delete_where(entity, &pick)?
                }
            },
            NodeKind::Let { values } => self.let_values(values)?,
            NodeKind::Delete { .. } | NodeKind::Sql { .. } | NodeKind::Invalid => {
                return Err(
                    Problem::new(Code::Internal, format!("node `{id}` cannot run")).fatal(),
                );
            }
            NodeKind::Assert {
                that,
                status,
                code,
                message,
            } => return self.assert(that, *status, code, message.as_ref()),
            NodeKind::If {
                cond,
                then,
                otherwise,
            } => return self.branch(cond, then, otherwise),
            NodeKind::Switch { cases, default } => return self.switch(cases, default.as_deref()),
            NodeKind::Call { .. } => {
                return self.run_call(id, node, false).map(|()| Step::Next(None));
            }
            NodeKind::Emit {
                external,
                operation,
                args,
                timeout_ms,
                idempotency_key,
            } => {
                let message = Message {
                    external,
                    operation,
                    args,
                    timeout_ms: *timeout_ms,
                    key: idempotency_key.as_ref(),
                };
                self.emit(id, &message)?
            }
            NodeKind::Transaction { body, isolation } => {
                return self.run_transaction(id, body, *isolation);
            }
            NodeKind::Foreach {
                items,
                as_name,
                max_items,
                body,
                collect,
            } => {
                let each = Each {
                    items,
                    as_name,
                    max_items: *max_items,
                };
                match self.foreach(&each, body, collect.as_ref())? {
                    Ok(list) => list,
                    Err(end) => return Ok(Step::End(end)),
                }
            }
            NodeKind::Return { value, status } => return self.ret(value.as_ref(), *status),
            NodeKind::Fail {
                status,
                code,
                message,
            } => return self.fail(*status, code, message.as_ref()),
        };
        self.bound.insert(id.to_string(), bound);
        Ok(Step::Next(None))
    }

    // -- one method per kind of node ---------------------------------------

    /// `read`: the rows (or with `one`, the row; with `page`, a page of
    /// them) the caller may see.
    fn read(&mut self, node: &Node) -> Result<Value, Problem> {
        let NodeKind::Read {
            entity,
            filters,
            order_by,
            limit,
            after,
            one,
            lock,
            page,
            count,
            include,
        } = &node.kind
        else {
            return Err(Problem::spec_error("not a read node"));
        };
        let (one, page) = (*one, *page);
        let e = self.entity(entity)?;
        let mut conditions = self.conditions(e, entity, filters)?;
        self.owner_filter(e, &mut conditions)?;
        let order = sort_keys(order_by);
        let limit = self.limit(limit.as_ref())?;
        let query_limit = if one {
            Some(limit.unwrap_or(2).min(2))
        } else if page {
            // One more than the page: whether there is a next one.
            limit.map(|n| n.saturating_add(1))
        } else {
            limit
        };
        let read_id = page.then(|| crate::cursor::read_id(&node.path, entity, &order));
        let after = match (after, &read_id) {
            (Some(x), Some(id)) => self.page_cursor(x, id, e, &order)?,
            (Some(x), None) => self.cursor(e, entity, x, &order)?,
            (None, _) => None,
        };
        let lock = *lock && !self.open.is_empty();
        let embeds = self.includes(e, include)?;
        let query = Query {
            filters: conditions,
            order,
            limit: query_limit,
            after,
            lock,
            include: embeds,
        };
        let tx = self.current_tx();
        let shape = RowShape::new(self.bundle, e, include);
        let (mut rows, total) = self
            .storage
            .read_values(tx, entity, &query, *count, &shape)
            .map_err(storage_problem)?;
        self.count_rows(rows.len() as u64 + included_rows(&rows, include), 0)?;
        self.saw(entity, &rows, include);
        if lock {
            let owner = e.owner.as_ref().map(|o| o.field.as_str());
            if let Some(t) = self.open.last_mut() {
                for r in &rows {
                    if let Some(Value::String(id)) = field_of(r, "id") {
                        let o = owner
                            .and_then(|f| field_of(r, f))
                            .and_then(|v| v.to_json().ok())
                            .unwrap_or(Json::Null);
                        t.locked.insert((entity.clone(), id.clone()), o);
                    }
                }
            }
        }
        if let Some(read_id) = read_id {
            let next = match limit {
                Some(n) if rows.len() as u64 > n => {
                    rows.truncate(usize::try_from(n).unwrap_or(usize::MAX));
                    rows.last().map(|last| {
                        let keys = query
                            .order
                            .iter()
                            .map(|k| {
                                field_of(last, &k.field)
                                    .and_then(|v| v.to_json().ok())
                                    .unwrap_or(Json::Null)
                            })
                            .collect();
                        Value::String(crate::cursor::encode(&read_id, keys))
                    })
                }
                _ => None,
            };
            let mut m = crate::expr::value::Map::default();
            m.insert("rows".into(), Value::List(rows));
            m.insert("next".into(), next.unwrap_or(Value::Null));
            if let Some(total) = total {
                m.insert(
                    "total".into(),
                    Value::Int(i64::try_from(total).unwrap_or(i64::MAX)),
                );
            }
            return Ok(Value::Map(m));
        }
        let value = if one {
            if rows.len() > 1 && limit != Some(1) {
                return Err(Problem::new(
                    Code::NotUnique,
                    format!("more than one `{entity}` matches where one was expected"),
                ));
            }
            match rows.into_iter().next() {
                Some(row) => row,
                None => {
                    return Err(Problem::new(Code::NotFound, format!("no such `{entity}`")));
                }
            }
        } else {
            Value::List(rows)
        };
        Ok(value)
    }

    /// `aggregate`: the measures of each group of the rows the caller may
    /// see (or of every row, with `scope: "all"`), ordered, at most `limit`
    /// groups; without `groupBy`, one object.
    fn aggregate(&mut self, node: &Node) -> Result<Value, Problem> {
        use crate::model::MeasureKind;
        use crate::ports::{Measure, Tally};
        let NodeKind::Aggregate {
            entity,
            filters,
            group_by,
            measures,
            order_by,
            limit,
            all,
        } = &node.kind
        else {
            return Err(Problem::spec_error("not an aggregate node"));
        };
        let e = self.entity(entity)?;
        let mut conditions = self.conditions(e, entity, filters)?;
        if !*all {
            self.owner_filter(e, &mut conditions)?;
        }
        // An average is a sum over a count, divided here: every engine
        // divides the same two integers the same way.
        let mut tallies = Vec::new();
        for (name, m) in measures {
            let field = m.field.clone();
            let mut push = |name: String, tally: Tally| {
                tallies.push(Measure {
                    name,
                    tally,
                    field: field.clone(),
                });
            };
            match (m.kind, &m.field) {
                (MeasureKind::Count, None) => push(name.clone(), Tally::Rows),
                (MeasureKind::Count, Some(_)) => push(name.clone(), Tally::Count),
                (MeasureKind::Sum, _) => push(name.clone(), Tally::Sum),
                (MeasureKind::Min, _) => push(name.clone(), Tally::Min),
                (MeasureKind::Max, _) => push(name.clone(), Tally::Max),
                (MeasureKind::Avg, _) => {
                    push(format!("sum {name}"), Tally::Sum);
                    push(format!("count {name}"), Tally::Count);
                }
            }
        }
        let limit = self.limit(limit.as_ref())?;
        let tx = self.current_tx();
        let found = self
            .storage
            .aggregate(tx, entity, &conditions, group_by, &tallies)
            .map_err(storage_problem)?;
        // A sum past 64 bits comes as its digits: an error for `sum`, still
        // a mean for `avg`.
        let wide = |v: Option<&Json>| match v {
            Some(Json::String(digits)) => digits.parse::<i128>().ok(),
            Some(v) => v.as_i64().map(i128::from),
            None => None,
        };
        let mut groups = Vec::with_capacity(found.len());
        for mut g in found {
            let mut out = Row::new();
            for f in group_by {
                out.insert(f.clone(), g.remove(f).unwrap_or(Json::Null));
            }
            for (name, m) in measures {
                let v = match m.kind {
                    MeasureKind::Avg => {
                        let sum = wide(g.get(&format!("sum {name}")));
                        let n = wide(g.get(&format!("count {name}")));
                        match (sum, n) {
                            #[expect(
                                clippy::cast_precision_loss,
                                reason = "an average is a number, a double"
                            )]
                            (Some(sum), Some(n)) if n > 0 => {
                                serde_json::Number::from_f64(sum as f64 / n as f64)
                                    .map_or(Json::Null, Json::Number)
                            }
                            _ => Json::Null,
                        }
                    }
                    MeasureKind::Sum if g.get(name).is_some_and(Json::is_string) => {
                        return Err(Problem::new(Code::Internal, "internal error")
                            .fatal()
                            .internal(format!("the sum `{name}` does not fit 64 bits")));
                    }
                    _ => g.remove(name).unwrap_or(Json::Null),
                };
                out.insert(name.clone(), v);
            }
            groups.push(out);
        }
        let ts = |f: &str| {
            e.column_type(f) == Some(crate::model::FieldType::Timestamp)
                || measures.get(f).is_some_and(|m| {
                    matches!(m.kind, MeasureKind::Min | MeasureKind::Max)
                        && m.field.as_deref().and_then(|x| e.column_type(x))
                            == Some(crate::model::FieldType::Timestamp)
                })
        };
        groups.sort_by(|a, b| {
            let keys = order_by
                .iter()
                .map(|o| (o.field.as_str(), o.desc))
                .chain(group_by.iter().map(|f| (f.as_str(), false)));
            for (f, desc) in keys {
                let (x, y) = (
                    a.get(f).unwrap_or(&Json::Null),
                    b.get(f).unwrap_or(&Json::Null),
                );
                let o = crate::ports::memory::sort_cmp(x, y, ts(f));
                let o = if desc { o.reverse() } else { o };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
        if let Some(n) = limit {
            groups.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        self.count_rows(groups.len() as u64, 0)?;
        let to_value = |g: &Row| {
            Value::Map(
                g.iter()
                    .map(|(k, v)| {
                        let value = match v {
                            Json::String(s) if ts(k) => crate::expr::value::parse_timestamp(s)
                                .map_or_else(|| Value::String(s.clone()), Value::Timestamp),
                            other => Value::from_json(other),
                        };
                        (k.clone(), value)
                    })
                    .collect(),
            )
        };
        Ok(if group_by.is_empty() {
            groups.first().map_or(Value::Null, to_value)
        } else {
            Value::List(groups.iter().map(to_value).collect())
        })
    }

    /// The sort keys a paged read's `after` names: none for the first page
    /// (`null`, absent, `""`), else those of a `next` this read gave.
    /// A key of another type than its column's (a cursor made by hand,
    /// with a valid checksum) is refused: engines would order it apart.
    fn page_cursor(
        &self,
        x: &Expression,
        read_id: &str,
        e: &Entity,
        order: &[SortKey],
    ) -> Result<Option<Vec<Json>>, Problem> {
        match self.eval(x, None)? {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => {
                let keys = crate::cursor::decode(read_id, &s, order.len())
                    .map_err(|why| Problem::new(Code::InvalidCursor, why))?;
                if order
                    .iter()
                    .zip(&keys)
                    .any(|(k, v)| !rows::fits_column(e, &k.field, v))
                {
                    return Err(Problem::new(
                        Code::InvalidCursor,
                        "the paging cursor is not one this read gave (its keys do not fit the columns)",
                    ));
                }
                Ok(Some(keys))
            }
            other => Err(Problem::new(
                Code::InvalidCursor,
                format!(
                    "a paging cursor is the `next` of a page, a string; found {}",
                    other.a_type()
                ),
            )),
        }
    }

    /// `create`: one new row, owned by the caller where the entity is owned.
    fn create(
        &mut self,
        id: &str,
        entity: &str,
        values: &crate::model::NameMap<Template>,
    ) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let row = self.new_row(id, e, entity, values)?;
        let tx = self.write_tx()?.id;
        let stored = self
            .storage
            .insert(tx, entity, &row)
            .map_err(storage_problem)?;
        self.record(entity, &stored, "create", None)?;
        Ok(crate::ports::shaped(e, stored))
    }

    /// The row a `create` (node `id`) inserts, checked: its values, the
    /// owner, the fields and the references.
    fn new_row(
        &mut self,
        id: &str,
        e: &Entity,
        entity: &str,
        values: &crate::model::NameMap<Template>,
    ) -> Result<Row, Problem> {
        let mut row = Row::new();
        let new_id = self.new_id(id);
        let now = self.now_text();
        row.insert("id".into(), Json::String(new_id));
        row.insert("version".into(), json!(1));
        row.insert("created_at".into(), Json::String(now.clone()));
        row.insert("updated_at".into(), Json::String(now));
        row.insert("deleted_at".into(), Json::Null);
        if let Some(sm) = &e.status {
            row.insert("status".into(), Json::String(sm.initial.clone()));
        }
        for (f, field) in &e.fields {
            let v = match values.get(f) {
                Some(t) => {
                    let v = self.template(t, None)?;
                    self.json(&v)?
                }
                None => field.default.clone().unwrap_or(Json::Null),
            };
            row.insert(f.clone(), v);
        }
        // The caller owns what they create. An exempt role widens
        // what a caller sees; it changes what a create records only
        // where the spec sets the owner field itself (staff opening
        // an account for a customer).
        if let Some(owner) = &e.owner
            && !owner.by_ref
            && !(self.exempt(e) && values.contains_key(&owner.field))
        {
            if self.request.auth.is_none() {
                return Err(Problem::new(
                    Code::Unauthenticated,
                    "sign in to create this",
                ));
            }
            let Some(value) = self.owner_value(owner) else {
                return Err(Problem::new(
                    Code::Forbidden,
                    format!(
                        "your token carries no `{}` claim, which `{entity}` rows belong to",
                        owner.claim.as_deref().unwrap_or("sub")
                    ),
                ));
            };
            row.insert(owner.field.clone(), Json::String(value));
        }
        rows::normalize_row(e, &mut row);
        rows::check_fields(entity, e, &row, e.fields.keys())
            .map_err(|p| blame_write(p, e, &row, values, &self.tool.flow))?;
        self.check_refs(entity, e, &row, e.fields.keys(), None)?;
        Ok(row)
    }

    /// `create` with `each`: one row per element of the list, in its
    /// order, with `<as>` and `<as>_index` bound in `values`; the list of
    /// created rows.
    fn create_each(
        &mut self,
        id: &str,
        entity: &str,
        values: &crate::model::NameMap<Template>,
        items: &Expression,
        as_name: &str,
    ) -> Result<Value, Problem> {
        let each = Each {
            items,
            as_name,
            max_items: u64::MAX,
        };
        // Every element's row is made and checked, then all are inserted
        // by one storage operation (one statement on Postgres).
        let e = self.entity(entity)?;
        let mut made = Vec::new();
        // (The step never ends the flow, so its list of nulls is all the
        // walk gives back.)
        let _nulls = self.per_element(&each, |run| {
            made.push(run.new_row(id, e, entity, values)?);
            Ok(Ok(Value::Null))
        })?;
        if made.is_empty() {
            return Ok(Value::List(Vec::new()));
        }
        let tx = self.write_tx()?.id;
        let stored = self
            .storage
            .insert_many(tx, entity, &made)
            .map_err(storage_problem)?;
        let mut out = Vec::with_capacity(stored.len());
        for row in stored {
            self.record(entity, &row, "create", None)?;
            out.push(crate::ports::shaped(e, row));
        }
        Ok(Value::List(out))
    }

    /// The query of the rows a many-row write acts on: those `pick`
    /// matches that the caller may see (and `extra` keeps), in its order
    /// (default `id`), up to its `limit` (with `one`: 2, to tell one from
    /// many), locked under pessimistic concurrency.
    fn pick_query(
        &mut self,
        e: &Entity,
        entity: &str,
        pick: &Pick,
        one: bool,
        extra: Option<Predicate>,
    ) -> Result<Query, Problem> {
        let mut conditions = self.conditions(e, entity, pick.filters)?;
        self.owner_filter(e, &mut conditions)?;
        conditions.extend(extra);
        let limit = self.limit(pick.limit)?;
        Ok(Query {
            filters: conditions,
            order: sort_keys(pick.order_by),
            limit: if one { Some(2) } else { limit },
            after: None,
            // A write on many rows locks them whatever the concurrency: it
            // is then one statement that cannot half-fail on a row changed
            // since it was read.
            lock: !one || self.compiled.concurrency == Concurrency::Pessimistic,
            include: Vec::new(),
        })
    }

    /// The rows [`Run::pick_query`] picks, read in the write transaction.
    fn pick_rows(&mut self, entity: &str, query: &Query) -> Result<Vec<Row>, Problem> {
        let tx = self.write_tx()?.id;
        self.storage
            .read(Some(tx), entity, query)
            .map_err(storage_problem)
    }

    /// Writes the same `changes` into every row `query` picks, in one
    /// storage operation (one statement on Postgres), and records each
    /// row as `op`; the rows as written, in the query's order.
    fn write_where(
        &mut self,
        e: &Entity,
        entity: &str,
        query: &Query,
        changes: &Row,
        op: &'static str,
    ) -> Result<Vec<Value>, Problem> {
        let tx = self.write_tx()?.id;
        let rows = self
            .storage
            .update_where_values(tx, entity, query, changes, e)
            .map_err(storage_problem)?;
        for stored in &rows {
            let before = stored.version().map(|v| v - 1);
            self.record(entity, stored, op, before)?;
        }
        Ok(rows)
    }

    /// The changes of an `update` whose `set` does not read `row` (the
    /// same for every row), when they evaluate and pass the field and
    /// reference checks; `None` sends the update down the row-by-row path
    /// (which reports a failure only if some row is there to fail on).
    fn same_changes(
        &mut self,
        e: &Entity,
        entity: &str,
        set: &crate::model::NameMap<Template>,
    ) -> Option<Row> {
        let mut changes = Row::new();
        for (f, t) in set {
            let v = self.template(t, None).ok()?;
            changes.insert(f.clone(), self.json(&v).ok()?);
        }
        changes.insert("updated_at".into(), Json::String(self.now_text()));
        rows::normalize_row(e, &mut changes);
        self.keeps_owner(e, entity, &changes).ok()?;
        rows::check_fields(entity, e, &changes, set.keys()).ok()?;
        self.check_refs(entity, e, &changes, set.keys(), None)
            .ok()?;
        Some(changes)
    }

    /// `update`: the matching rows, each changed by `set` (with `row`).
    /// Without `one` and with a `set` that does not read `row`, one
    /// storage operation writes them all.
    fn update(
        &mut self,
        entity: &str,
        pick: &Pick,
        one: bool,
        set: &crate::model::NameMap<Template>,
        reads_row: bool,
    ) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let query = self.pick_query(e, entity, pick, one, None)?;
        if !one
            && !reads_row
            && let Some(changes) = self.same_changes(e, entity, set)
        {
            return self
                .write_where(e, entity, &query, &changes, "update")
                .map(Value::List);
        }
        let rows = self.pick_rows(entity, &query)?;
        if one {
            match rows.len() {
                0 => {
                    return Err(Problem::new(Code::NotFound, format!("no such `{entity}`")));
                }
                1 => {}
                _ => {
                    return Err(Problem::new(
                        Code::NotUnique,
                        format!("more than one `{entity}` matches where one was expected"),
                    ));
                }
            }
        }
        // Each row's changes, computed and checked before any is written;
        // then one storage operation writes them all (one statement on
        // Postgres). Rows an update changes count as written (in
        // `record`), not read.
        let mut all = Vec::with_capacity(rows.len());
        for row in &rows {
            let before = row_to_value(e, row);
            let mut changes = Row::new();
            for (f, t) in set {
                let v = self.template(t, Some(&before))?;
                changes.insert(f.clone(), self.json(&v)?);
            }
            changes.insert("updated_at".into(), Json::String(self.now_text()));
            rows::normalize_row(e, &mut changes);
            self.keeps_owner(e, entity, &changes)?;
            let mut merged = row.clone();
            for (k, v) in &changes {
                merged.insert(k.clone(), v.clone());
            }
            rows::check_fields(entity, e, &merged, set.keys())
                .map_err(|p| blame_write(p, e, &merged, set, &self.tool.flow))?;
            self.check_refs(entity, e, &merged, set.keys(), Some(row))?;
            all.push(changes);
        }
        let stored = self.update_rows(entity, &keys_of(&rows), &all)?;
        let out: Vec<Value> = stored
            .into_iter()
            .map(|row| crate::ports::shaped(e, row))
            .collect();
        let value = if one {
            out.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::List(out)
        };
        Ok(value)
    }

    /// `transition` with `where`: every matching row whose status allows
    /// the action (up to `limit` of them), each along its status machine,
    /// in one storage operation.
    fn transition_where(
        &mut self,
        entity: &str,
        pick: &Pick,
        action: &str,
    ) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let Some(t) = e.status.as_ref().and_then(|sm| sm.transitions.get(action)) else {
            return Err(Problem::new(Code::Internal, "no such transition").fatal());
        };
        let allowed = Predicate::Is(Condition {
            field: "status".into(),
            op: FilterOp::In,
            value: Json::Array(t.from.iter().cloned().map(Json::String).collect()),
        });
        let query = self.pick_query(e, entity, pick, false, Some(allowed))?;
        let changes = self.moved(&t.to);
        self.write_where(e, entity, &query, &changes, "transition")
            .map(Value::List)
    }

    /// `soft_delete` with `where`: every matching row (up to `limit`). When
    /// no entity refers to this one, one storage operation deletes them
    /// all; else each row in turn, after what its deletion does to the
    /// rows that refer to it, with one `maxRowsPerWrite` budget for the
    /// cascades of them all.
    fn soft_delete_where(&mut self, entity: &str, pick: &Pick) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let query = self.pick_query(e, entity, pick, false, None)?;
        if referring(&self.bundle.spec, entity).next().is_none() {
            let mut changes = Row::new();
            changes.insert("deleted_at".into(), Json::String(self.now_text()));
            return self
                .write_where(e, entity, &query, &changes, "soft_delete")
                .map(Value::List);
        }
        let rows = self.pick_rows(entity, &query)?;
        let mut budget = self.bundle.spec.limits.max_rows_per_write;
        let stored = self.delete_rows(entity, &rows, &mut budget, 0)?;
        Ok(Value::List(
            stored
                .into_iter()
                .map(|r| crate::ports::shaped(e, r))
                .collect(),
        ))
    }

    /// Soft-deletes `rows` (locked, as read) after what their deletion
    /// does to the rows that refer to them (`depth` levels down a
    /// cascade, counted against `budget`); the rows as stored, in order.
    /// A storage operation for all the rows (one statement on Postgres),
    /// and per referring field one read and at most one write.
    fn delete_rows(
        &mut self,
        entity: &str,
        rows: &[Row],
        budget: &mut u64,
        depth: usize,
    ) -> Result<Vec<Row>, Problem> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys_of(rows);
        self.release(entity, &keys, budget, depth)?;
        let now = self.now_text();
        let tx = self.write_tx()?.id;
        let stored = match keys.as_slice() {
            [(id, version)] => vec![
                self.storage
                    .soft_delete(tx, entity, id, *version, &now)
                    .map_err(storage_problem)?,
            ],
            _ => {
                let mut changes = Row::new();
                changes.insert("deleted_at".into(), Json::String(now));
                let all = vec![changes; keys.len()];
                self.storage
                    .update_many(tx, entity, &keys, &all)
                    .map_err(storage_problem)?
            }
        };
        for (row, (_, version)) in stored.iter().zip(&keys) {
            self.record(entity, row, "soft_delete", Some(*version))?;
        }
        Ok(stored)
    }

    /// The changes that move a row to status `to`.
    fn moved(&self, to: &str) -> Row {
        let mut changes = Row::new();
        changes.insert("status".into(), Json::String(to.to_string()));
        changes.insert("updated_at".into(), Json::String(self.now_text()));
        changes
    }

    /// Moves `row` to status `to`; the row as written.
    fn move_row(
        &mut self,
        e: &Entity,
        entity: &str,
        row: &Row,
        to: &str,
    ) -> Result<Value, Problem> {
        let changes = self.moved(to);
        let stored = self.update_row(entity, row, &changes)?;
        self.record(entity, &stored, "transition", version(row))?;
        Ok(crate::ports::shaped(e, stored))
    }

    /// `transition`: one row along its status machine.
    fn transition(
        &mut self,
        entity: &str,
        row_id: &Expression,
        action: &str,
    ) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let row = self.row_by_id(e, entity, row_id)?;
        let Some(sm) = &e.status else {
            return Err(Problem::new(Code::Internal, "no status machine").fatal());
        };
        let Some(t) = sm.transitions.get(action) else {
            return Err(Problem::new(Code::Internal, "no such transition").fatal());
        };
        let current = row
            .get("status")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        if !t.from.contains(&current) {
            return Err(Problem::new(
                Code::TransitionNotAllowed,
                format!(
                    "cannot `{action}` {} that is `{current}` (allowed from {})",
                    crate::diag::a_code(entity),
                    t.from
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        self.move_row(e, entity, &row, &t.to)
    }

    /// `soft_delete`: sets one row's `deleted_at`.
    fn soft_delete(&mut self, entity: &str, row_id: &Expression) -> Result<Value, Problem> {
        let e = self.entity(entity)?;
        let row = self.row_by_id(e, entity, row_id)?;
        let mut budget = self.bundle.spec.limits.max_rows_per_write;
        let stored = self.delete_rows(entity, std::slice::from_ref(&row), &mut budget, 0)?;
        match stored.into_iter().next() {
            Some(stored) => Ok(crate::ports::shaped(e, stored)),
            None => Err(Problem::new(Code::Internal, "the deletion returned no row")),
        }
    }

    /// What soft-deleting the rows `keys` (id, version) of `entity` does
    /// to the live rows whose `ref` fields name them, every referring field
    /// in spec order, their rows in id order, whoever owns them:
    /// `restrict` refuses (409 `still_referenced`), `setNull` clears the
    /// field, `cascade` soft-deletes them in turn (counting them against
    /// `budget`, the spec's `maxRowsPerWrite`: 409 `cascade_too_large`
    /// past it). One locking read per referring field, and one write for
    /// all the rows it found.
    fn release(
        &mut self,
        entity: &str,
        keys: &[(String, i64)],
        budget: &mut u64,
        depth: usize,
    ) -> Result<(), Problem> {
        use crate::model::OnDelete;
        let referring: Vec<(String, String, OnDelete)> = referring(&self.bundle.spec, entity)
            .map(|(name, f, on_delete)| (name.clone(), f.clone(), on_delete))
            .collect();
        for (other, field, on_delete) in referring {
            let limit = match on_delete {
                OnDelete::Restrict => 1,
                _ => budget.saturating_add(1),
            };
            let (op, value) = match keys {
                [(id, _)] => (FilterOp::Eq, Json::String(id.clone())),
                _ => (
                    FilterOp::In,
                    Json::Array(
                        keys.iter()
                            .map(|(id, _)| Json::String(id.clone()))
                            .collect(),
                    ),
                ),
            };
            let query = Query {
                filters: vec![Predicate::Is(Condition {
                    field: field.clone(),
                    op,
                    value,
                })],
                order: vec![SortKey {
                    field: "id".into(),
                    desc: false,
                }],
                limit: Some(limit),
                after: None,
                lock: true,
                include: Vec::new(),
            };
            let tx = self.write_tx()?.id;
            let rows = self
                .storage
                .read(Some(tx), &other, &query)
                .map_err(storage_problem)?;
            if rows.is_empty() {
                continue;
            }
            match on_delete {
                OnDelete::Restrict => {
                    return Err(Problem::new(
                        Code::StillReferenced,
                        format!(
                            "{} still refers to this `{entity}` (`{other}.{field}`)",
                            crate::diag::a_code(&other)
                        ),
                    ));
                }
                _ if rows.len() as u64 > *budget || depth >= 8 => {
                    return Err(self.cascade_too_large(entity));
                }
                OnDelete::SetNull => {
                    *budget -= rows.len() as u64;
                    let mut changes = Row::new();
                    changes.insert(field.clone(), Json::Null);
                    changes.insert("updated_at".into(), Json::String(self.now_text()));
                    self.update_rows(&other, &keys_of(&rows), &vec![changes; rows.len()])?;
                }
                OnDelete::Cascade => {
                    *budget -= rows.len() as u64;
                    self.delete_rows(&other, &rows, budget, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn cascade_too_large(&self, entity: &str) -> Problem {
        Problem::new(
            Code::CascadeTooLarge,
            format!(
                "deleting this `{entity}` would change more than {} rows (`maxRowsPerWrite`)",
                self.bundle.spec.limits.max_rows_per_write
            ),
        )
    }

    /// `let`: an object of computed values.
    fn let_values(&mut self, values: &crate::model::NameMap<Template>) -> Result<Value, Problem> {
        let mut m = crate::expr::value::Map::default();
        for (k, t) in values {
            m.insert(k.clone(), self.template(t, None)?);
        }
        Ok(Value::Map(m))
    }

    /// The elements of a `foreach`'s `items` (or a `create`'s `each`): a
    /// list of at most `max_items`, else 422 `too_many_items`.
    fn elements(&self, each: &Each) -> Result<Vec<Value>, Problem> {
        let list = match self.eval(each.items, None)? {
            Value::List(l) => l,
            other => {
                return Err(Problem::spec_error(format!(
                    "`{}` at {} gave {}, not a list",
                    each.items.src,
                    each.items.path,
                    other.a_type()
                )));
            }
        };
        if list.len() as u64 > each.max_items {
            return Err(Problem::new(
                Code::TooManyItems,
                format!(
                    "`{}` has {} items; at most {} are accepted",
                    each.items.src,
                    list.len(),
                    each.max_items
                ),
            ));
        }
        Ok(list)
    }

    /// `foreach`: the body once per element, in order, with `<as>` and
    /// `<as>_index` bound; the list of `collect` values (default: the
    /// elements), or how the flow ended when the body returned or failed.
    /// What the body binds is gone after each element.
    fn foreach(
        &mut self,
        each: &Each,
        body: &Flow,
        collect: Option<&Template>,
    ) -> Result<Result<Value, End>, Problem> {
        let body_ids = body.ids();
        self.per_element(each, |run| {
            let result = run.run_flow(body).and_then(|end| match end {
                End::Body => match collect {
                    Some(t) => run.template(t, None).map(Ok),
                    None => Ok(Ok(run
                        .bound
                        .get(each.as_name)
                        .cloned()
                        .unwrap_or(Value::Null))),
                },
                other => Ok(Err(other)),
            });
            for id in &body_ids {
                run.bound.remove(*id);
            }
            result
        })
    }

    /// Runs `step` once per element of `each`'s list, in order, with
    /// `<as>` and `<as>_index` bound (and unbound afterwards, whatever
    /// happened): the list of what the steps gave, or how the flow ended
    /// when a step ended it.
    fn per_element(
        &mut self,
        each: &Each,
        mut step: impl FnMut(&mut Self) -> Result<Result<Value, End>, Problem>,
    ) -> Result<Result<Value, End>, Problem> {
        let list = self.elements(each)?;
        let index_name = format!("{}_index", each.as_name);
        let mut out = Vec::with_capacity(list.len());
        let mut result = Ok(Ok(()));
        for (i, item) in list.into_iter().enumerate() {
            self.bound.insert(each.as_name.to_string(), item);
            self.bound.insert(
                index_name.clone(),
                Value::Int(i64::try_from(i).unwrap_or(i64::MAX)),
            );
            match step(self) {
                Ok(Ok(v)) => out.push(v),
                other => {
                    result = other.map(|r| r.map(|_| ()));
                    break;
                }
            }
        }
        self.bound.remove(each.as_name);
        self.bound.remove(&index_name);
        result.map(|r| r.map(|()| Value::List(out)))
    }

    /// `assert`: on, or a typed error.
    fn assert(
        &mut self,
        that: &Expression,
        status: u16,
        code: &str,
        message: Option<&Expression>,
    ) -> Result<Step, Problem> {
        match self.eval(that, None)? {
            Value::Bool(true) => Ok(Step::Next(None)),
            Value::Bool(false) => {
                let detail = match message {
                    Some(m) => self.eval(m, None)?.to_string(),
                    None => format!("`{}` does not hold", that.src),
                };
                Err(Problem::custom(status, code, detail))
            }
            other => Err(not_bool(that, &other)),
        }
    }

    /// `if`: `then` or `else`.
    fn branch(&mut self, cond: &Expression, then: &str, otherwise: &str) -> Result<Step, Problem> {
        match self.eval(cond, None)? {
            Value::Bool(b) => Ok(Step::Next(Some(
                if b { then } else { otherwise }.to_string(),
            ))),
            other => Err(not_bool(cond, &other)),
        }
    }

    /// `switch`: the first case that holds, else `default`; without one
    /// (only inside a body), the body ends.
    fn switch(
        &mut self,
        cases: &[crate::model::Case],
        default: Option<&str>,
    ) -> Result<Step, Problem> {
        for c in cases {
            match self.eval(&c.when, None)? {
                Value::Bool(true) => return Ok(Step::Next(Some(c.next.clone()))),
                Value::Bool(false) => {}
                other => return Err(not_bool(&c.when, &other)),
            }
        }
        match default {
            Some(d) => Ok(Step::Next(Some(d.to_string()))),
            None => Ok(Step::Next(None)),
        }
    }

    /// `return`: the output and its status.
    fn ret(&mut self, value: Option<&Template>, status: u16) -> Result<Step, Problem> {
        let v = match value {
            Some(t) => {
                let v = self.template(t, None)?;
                self.json(&v)?
            }
            None => Json::Null,
        };
        Ok(Step::End(End::Return(v, status)))
    }

    /// `fail`: a typed error.
    fn fail(
        &mut self,
        status: u16,
        code: &str,
        message: Option<&Expression>,
    ) -> Result<Step, Problem> {
        let detail = match message {
            Some(m) => self.eval(m, None)?.to_string(),
            None => code.replace('_', " "),
        };
        Ok(Step::End(End::Fail(Problem::custom(status, code, detail))))
    }

    /// Whether a call of this execution may have changed something at its
    /// service: an attempt was made, not as a compensation, of an operation
    /// with side effects.
    pub fn has_effects(&self, call: &CallRecord) -> bool {
        !call.compensation
            && call.attempts > 0
            && self
                .bundle
                .spec
                .has_side_effects(&call.service, &call.operation)
    }

    /// The idempotency key a `call` or `emit` sends: its `idempotencyKey`'s
    /// value as text, or `derived` (the node's own key) when it has none or
    /// it is null or empty, as for a tool's key. Sent as written, `null`
    /// would be one key shared by every such call, and the service would
    /// answer them all with the first one's result.
    fn key_or(&mut self, key: Option<&Expression>, derived: String) -> Result<String, Problem> {
        Ok(match key.map(|k| self.eval(k, None)).transpose()? {
            None | Some(Value::Null) => derived,
            Some(Value::String(s)) if s.is_empty() => derived,
            Some(v) => v.to_string(),
        })
    }

    /// Runs a call node (as a step of the flow, or as a compensation).
    pub fn run_call(&mut self, id: &str, node: &Node, compensation: bool) -> Result<(), Problem> {
        let NodeKind::Call {
            external,
            operation,
            args,
            timeout_ms,
            retry,
            compensate,
            idempotency_key,
        } = &node.kind
        else {
            return Err(Problem::new(Code::Internal, "not a call").fatal());
        };
        // A compensation always runs (it undoes an effect that happened):
        // it is audited, but not held to `maxCalls`.
        if let Some(max) = self.tool.limits.max_calls
            && !compensation
            && self.calls.iter().filter(|c| !c.compensation).count() as u64 >= max
        {
            return Err(Problem::new(
                Code::LimitExceeded,
                format!(
                    "`{}` made more external calls than its limit of {max}",
                    self.tool_name
                ),
            )
            .fatal());
        }
        let mut a = Map::new();
        for (k, t) in args {
            let v = self.template(t, None)?;
            a.insert(k.clone(), self.json(&v)?);
        }
        let derived = format!("{}:{id}", self.request.id);
        let key = Some(self.key_or(idempotency_key.as_ref(), derived)?);
        let request = CallRequest {
            service: external.clone(),
            operation: operation.clone(),
            args: Json::Object(a),
            timeout_ms: *timeout_ms,
            max_attempts: retry.map_or(1, |r| r.max),
            backoff: retry.map_or(crate::model::Backoff::None, |r| r.backoff),
            initial_backoff_ms: retry.and_then(|r| r.initial_ms).unwrap_or(100),
            idempotency_key: key,
        };
        let result = usable_answer(self.external.call(&request));
        let (outcome, value) = match &result.outcome {
            CallOutcome::Ok { value } => ("ok", value.clone()),
            CallOutcome::Declined { value } => ("declined", value.clone()),
            CallOutcome::Failed { message } => ("failed", json!({"error": message})),
        };
        self.calls.push(CallRecord {
            node: id.to_string(),
            service: external.clone(),
            operation: operation.clone(),
            outcome,
            attempts: result.attempts.len(),
            compensation,
            result: value.clone(),
        });
        match result.outcome {
            CallOutcome::Ok { value } => {
                self.bound.insert(id.to_string(), Value::from_json(&value));
                if let (Some(c), false) = (compensate, compensation) {
                    self.compensable.push((id.to_string(), c.clone()));
                }
                Ok(())
            }
            CallOutcome::Declined { .. } => Err(Problem::new(
                Code::ExternalDeclined,
                format!("{external}.{operation} was declined"),
            )),
            CallOutcome::Failed { message } => Err(Problem::new(
                Code::ExternalFailed,
                format!("{external}.{operation} failed"),
            )
            .internal(message)),
        }
    }

    /// Runs the compensations of every succeeded call, newest first, each
    /// at most once, skipping those the path already ran.
    pub fn compensate(&mut self) {
        let pending: Vec<(String, String)> = self.compensable.drain(..).rev().collect();
        let mut done: BTreeSet<String> = BTreeSet::new();
        for (_, target) in pending {
            if self.ran.contains(&target) || !done.insert(target.clone()) {
                continue;
            }
            let Some(node) = self.tool.flow.find(&target) else {
                continue;
            };
            self.ran.insert(target.clone());
            match &node.kind {
                NodeKind::Call {
                    external,
                    operation,
                    ..
                } => {
                    let made = self.calls.len();
                    if let Err(p) = self.run_call(&target, node, true)
                        && self.calls.len() == made
                    {
                        // Failed before anything was sent (its arguments
                        // or its key): still a compensation that failed,
                        // recorded for a person to resolve.
                        self.calls.push(CallRecord {
                            node: target.clone(),
                            service: external.clone(),
                            operation: operation.clone(),
                            outcome: "failed",
                            attempts: 0,
                            compensation: true,
                            result: json!({"error": p.internal.as_deref().unwrap_or(&p.detail)}),
                        });
                    }
                }
                NodeKind::Transaction { body, isolation } => {
                    let done = self
                        .run_transaction(&target, body, *isolation)
                        .and_then(|_| self.flush_pending());
                    if let Err(p) = done {
                        let mut failed = Map::new();
                        failed.insert("node".into(), json!(target));
                        failed.insert("code".into(), json!(p.code()));
                        failed.insert("detail".into(), json!(p.detail));
                        if let Some(i) = &p.internal {
                            failed.insert("internal".into(), json!(i));
                        }
                        self.failed_compensations.push(Json::Object(failed));
                    }
                }
                _ => {}
            }
        }
    }

    // -- rows --------------------------------------------------------------

    fn entity(&self, name: &str) -> Result<&'a Entity, Problem> {
        self.bundle
            .spec
            .entities
            .get(name)
            .ok_or_else(|| Problem::new(Code::Internal, format!("no entity `{name}`")).fatal())
    }

    /// What the owner field of a row the caller owns holds: the caller's
    /// subject, or the claim the owner names (a tenant) as text (a string
    /// claim, or an integer's decimal digits); `None` for an anonymous
    /// caller or a token without that claim.
    fn owner_value(&self, owner: &crate::model::Owner) -> Option<String> {
        let auth = self.request.auth.as_ref()?;
        let Some(claim) = &owner.claim else {
            return Some(auth.sub.clone());
        };
        claim_text(&auth.claims, claim)
    }

    /// An update by a caller without an exempt role may set the owner
    /// field of `e` (one holding a subject or a claim) only to the
    /// caller's own value: a row is never given to another owner, or
    /// moved to another tenant, by a caller the owner rule binds.
    fn keeps_owner(&self, e: &Entity, entity: &str, changes: &Row) -> Result<(), Problem> {
        let Some(owner) = e.owner.as_ref().filter(|o| !o.by_ref) else {
            return Ok(());
        };
        let Some(new) = changes.get(&owner.field) else {
            return Ok(());
        };
        if self.exempt(e)
            || self
                .owner_value(owner)
                .is_some_and(|mine| new.as_str() == Some(&mine))
        {
            return Ok(());
        }
        Err(Problem::new(
            Code::Forbidden,
            format!(
                "`{}` says which {} a `{entity}` belongs to: only a role exempt from its owner rule \
                 can give it to another",
                owner.field,
                if owner.claim.is_some() {
                    "tenant"
                } else {
                    "user"
                }
            ),
        ))
    }

    fn exempt(&self, e: &Entity) -> bool {
        let Some(owner) = &e.owner else { return true };
        self.request
            .auth
            .as_ref()
            .is_some_and(|a| a.roles.iter().any(|r| owner.exempt.contains(r)))
    }

    fn owner_filter(&self, e: &Entity, conditions: &mut Vec<Predicate>) -> Result<(), Problem> {
        if e.owner.is_some() && !self.exempt(e) {
            conditions.push(self.owned(e, 0)?);
        }
        Ok(())
    }

    /// "The caller owns this row of `e`": its owner field holds the
    /// caller's subject, or (owner through a reference) the row its `ref`
    /// names is owned by the caller, at most three hops away.
    fn owned(&self, e: &Entity, hops: usize) -> Result<Predicate, Problem> {
        let Some(owner) = &e.owner else {
            return Err(Problem::spec_error(
                "an owner reference leads to an entity without owner",
            ));
        };
        if !owner.by_ref {
            return Ok(Condition {
                field: owner.field.clone(),
                op: FilterOp::Eq,
                value: self.owner_value(owner).map_or(Json::Null, Json::String),
            }
            .into());
        }
        let target = e
            .fields
            .get(&owner.field)
            .and_then(|f| f.entity.clone())
            .ok_or_else(|| Problem::spec_error("an owner `ref` that is not a `ref` field"))?;
        if hops >= crate::model::MAX_OWNER_HOPS {
            return Err(Problem::spec_error(
                "an owner reference chain longer than three hops",
            ));
        }
        let next = self.owned(self.entity(&target)?, hops + 1)?;
        Ok(Predicate::Via(
            crate::ports::Hop {
                field: owner.field.clone(),
                entity: target,
            },
            Box::new(next),
        ))
    }

    /// A read's includes as the storage takes them: each one's `where`
    /// evaluated, its entity's owner rule added, its limit computed.
    fn includes(
        &self,
        e: &Entity,
        list: &[crate::model::Include],
    ) -> Result<Vec<crate::ports::Include>, Problem> {
        use crate::model::IncludeLink;
        use crate::ports::Link;
        let mut out = Vec::with_capacity(list.len());
        for inc in list {
            let target = inc.target(e).ok_or_else(|| {
                Problem::spec_error(format!(
                    "the include at {} follows no `ref` field",
                    inc.path
                ))
            })?;
            let link = match &inc.link {
                IncludeLink::Ref(field) => Link::One(field.clone()),
                IncludeLink::From { by, .. } => Link::Many(by.clone()),
            };
            let te = self.entity(target)?;
            let mut filters = self.conditions(te, target, &inc.filters)?;
            self.owner_filter(te, &mut filters)?;
            let order = sort_keys(&inc.order_by);
            let limit = self.limit(inc.limit.as_ref())?;
            let include = self.includes(te, &inc.include)?;
            out.push(crate::ports::Include {
                name: inc.name.clone(),
                entity: target.to_owned(),
                link,
                filters,
                order,
                limit,
                include,
            });
        }
        Ok(out)
    }

    /// A `where`'s members as the storage's predicates: each value
    /// evaluated, each member whose `when` is false left out (a combinator
    /// left without members is left out too).
    fn conditions(
        &self,
        e: &Entity,
        entity: &str,
        filters: &[crate::model::Where],
    ) -> Result<Vec<Predicate>, Problem> {
        let mut out = Vec::with_capacity(filters.len());
        for w in filters {
            if let Some(p) = self.predicate(e, entity, w)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn predicate(
        &self,
        e: &Entity,
        entity: &str,
        w: &crate::model::Where,
    ) -> Result<Option<Predicate>, Problem> {
        use crate::model::Where;
        Ok(match w {
            Where::Field(f) => self.comparison(e, entity, f)?.map(Predicate::Is),
            Where::All(list) | Where::Any(list) => {
                let members = self.conditions(e, entity, list)?;
                match (members.len(), w) {
                    (0, _) => None,
                    (1, _) => members.into_iter().next(),
                    (_, Where::All(_)) => Some(Predicate::All(members)),
                    _ => Some(Predicate::Any(members)),
                }
            }
            Where::Not(inner) => self
                .predicate(e, entity, inner)?
                .map(|p| Predicate::Not(Box::new(p))),
        })
    }

    /// One field's comparison, or `None` when its `when` is false.
    fn comparison(
        &self,
        e: &Entity,
        entity: &str,
        f: &crate::model::Filter,
    ) -> Result<Option<Condition>, Problem> {
        if let Some(when) = &f.when {
            match self.eval(when, None)? {
                Value::Bool(true) => {}
                Value::Bool(false) => return Ok(None),
                other => return Err(not_bool(when, &other)),
            }
        }
        let v = self.template(&f.value, None)?;
        let mut json = self.json(&v)?;
        if !f.op.on_text() && f.op != FilterOp::IsNull {
            json = rows::normalize(e, &f.field, json);
        }
        let c = Condition {
            field: f.field.clone(),
            op: f.op,
            value: json,
        };
        if let Some(need) = c.misshapen() {
            if v == Value::Null
                && let Some(p) = self.left_out_in(&f.value)
            {
                return Err(p);
            }
            return Err(Problem::spec_error(format!(
                "`{}` on `{entity}.{}` needs {need}, found {}",
                f.op.name(),
                f.field,
                v.a_type()
            )));
        }
        if f.op.on_text() && e.column_type(&f.field) != Some(crate::model::FieldType::String) {
            return Err(Problem::spec_error(format!(
                "`{}` compares text, and `{entity}.{}` is not a string field",
                f.op.name(),
                f.field
            )));
        }
        Ok(Some(c))
    }

    /// A node's `limit`: its number, or its expression's (at least 1).
    fn limit(&self, limit: Option<&Limit>) -> Result<Option<u64>, Problem> {
        Ok(match limit {
            Some(Limit::Fixed(n)) => Some(*n),
            // No engine reads more rows than a literal limit allows; a
            // larger page size (`i64::MAX`) would overflow the one more
            // row a page reads to know whether another follows.
            Some(Limit::Expr(x)) => Some(self.positive(x)?.min(u64::from(u32::MAX))),
            None => None,
        })
    }

    fn positive(&self, x: &Expression) -> Result<u64, Problem> {
        match self.eval(x, None)? {
            Value::Int(n) if n >= 1 => Ok(u64::try_from(n).unwrap_or(1)),
            Value::Uint(n) if n >= 1 => Ok(n),
            // A number the caller chose (the spec's schema let it through).
            Value::Int(n) => Err(Problem::new(
                Code::InvalidInput,
                format!("a page size must be at least 1, found {n}"),
            )),
            other => Err(Problem::spec_error(format!(
                "`{}` at {} must give a positive integer, gave {}",
                x.src,
                x.path,
                other.a_type()
            ))),
        }
    }

    /// The keyset position after which a page starts: the `after`
    /// expression gives the id of the last row seen (or `null` for the
    /// first page); its sort-key values are read from storage.
    fn cursor(
        &mut self,
        e: &Entity,
        entity: &str,
        x: &Expression,
        order: &[SortKey],
    ) -> Result<Option<Vec<Json>>, Problem> {
        let id = match self.eval(x, None)? {
            Value::Null => return Ok(None),
            Value::String(s) if s.is_empty() => return Ok(None),
            Value::String(s) => s,
            other => {
                return Err(Problem::new(
                    Code::InvalidInput,
                    format!(
                        "a paging cursor is the id of the last row seen, found {}",
                        other.a_type()
                    ),
                ));
            }
        };
        let tx = self.current_tx();
        let rows = self.read_by_id(e, entity, id, tx, false)?;
        let Some(row) = rows.first() else {
            return Err(Problem::new(
                Code::InvalidInput,
                "the paging cursor names no row",
            ));
        };
        Ok(Some(
            order
                .iter()
                .map(|k| row.get(&k.field).cloned().unwrap_or(Json::Null))
                .collect(),
        ))
    }

    /// Reads one row by id for a change: with the owner filter, locked when
    /// the tool is pessimistic; 404 when it is missing or not the caller's.
    fn row_by_id(&mut self, e: &Entity, entity: &str, id: &Expression) -> Result<Row, Problem> {
        let id = match self.eval(id, None)? {
            Value::String(s) => s,
            // An optional input left out: no such row.
            Value::Null => {
                return Err(Problem::new(Code::NotFound, format!("no such `{entity}`")));
            }
            other => {
                return Err(Problem::spec_error(format!(
                    "the id `{}` at {} gave {}, not a string",
                    id.src,
                    id.path,
                    other.a_type()
                )));
            }
        };
        let tx = self.write_tx()?.id;
        let lock = self.compiled.concurrency == Concurrency::Pessimistic;
        let rows = self.read_by_id(e, entity, id, Some(tx), lock)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Problem::new(Code::NotFound, format!("no such `{entity}`")))
    }

    /// The `ref` fields among `keys` name live rows of their entities that
    /// the caller may see (422 `unknown_reference` otherwise, naming every
    /// field that does not); a value an update leaves as it was (`before`)
    /// is not checked again.
    fn check_refs<'k>(
        &mut self,
        entity: &str,
        e: &Entity,
        row: &Row,
        keys: impl Iterator<Item = &'k String>,
        before: Option<&Row>,
    ) -> Result<(), Problem> {
        let mut errors = Vec::new();
        for key in keys {
            let Some(f) = e.fields.get(key) else { continue };
            let (Some(target), Some(Json::String(id))) = (&f.entity, row.get(key)) else {
                continue;
            };
            if before.is_some_and(|b| b.get(key) == row.get(key)) {
                continue;
            }
            let known = (target.clone(), id.clone());
            if self.open.iter().any(|t| t.locked.contains_key(&known)) {
                continue;
            }
            let te = self.entity(target)?;
            let tx = self.current_tx();
            if self
                .read_by_id(te, target, id.clone(), tx, false)?
                .is_empty()
            {
                errors.push((key.clone(), target.clone()));
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let detail = errors
            .iter()
            .map(|(k, t)| format!("`{entity}.{k}` names no `{t}` the caller can see"))
            .collect::<Vec<_>>()
            .join("; ");
        let list = errors
            .into_iter()
            .map(|(k, t)| json!({"pointer": format!("/{k}"), "field": k, "message": format!("names no `{t}` the caller can see")}))
            .collect();
        Err(Problem::new(Code::UnknownReference, detail).with_errors(list))
    }

    /// Reads the row `id` of `entity` that the caller may see (owner
    /// filter applied).
    fn read_by_id(
        &mut self,
        e: &Entity,
        entity: &str,
        id: String,
        tx: Option<TxId>,
        lock: bool,
    ) -> Result<Vec<Row>, Problem> {
        let mut conditions = vec![Predicate::Is(Condition {
            field: "id".into(),
            op: FilterOp::Eq,
            value: Json::String(id),
        })];
        self.owner_filter(e, &mut conditions)?;
        let query = Query {
            filters: conditions,
            order: vec![SortKey {
                field: "id".into(),
                desc: false,
            }],
            limit: Some(1),
            after: None,
            lock,
            include: Vec::new(),
        };
        self.storage
            .read(tx, entity, &query)
            .map_err(storage_problem)
    }

    /// Each row (`keys`: id and version as read) its own changes, in one
    /// storage operation: the plain update for one row, `update_many` for
    /// more (one statement on Postgres); each row recorded as updated.
    fn update_rows(
        &mut self,
        entity: &str,
        keys: &[(String, i64)],
        changes: &[Row],
    ) -> Result<Vec<Row>, Problem> {
        let tx = self.write_tx()?.id;
        let stored = match (keys, changes) {
            ([(id, v)], [changes]) => vec![
                self.storage
                    .update(tx, entity, id, *v, changes)
                    .map_err(storage_problem)?,
            ],
            _ => self
                .storage
                .update_many(tx, entity, keys, changes)
                .map_err(storage_problem)?,
        };
        for (row, (_, before)) in stored.iter().zip(keys) {
            self.record(entity, row, "update", Some(*before))?;
        }
        Ok(stored)
    }

    fn update_row(&mut self, entity: &str, row: &Row, changes: &Row) -> Result<Row, Problem> {
        let tx = self.write_tx()?.id;
        let id = row.get("id").and_then(Json::as_str).unwrap_or_default();
        self.storage
            .update(tx, entity, id, version(row).unwrap_or(0), changes)
            .map_err(storage_problem)
    }

    fn record(
        &mut self,
        entity: &str,
        stored: &impl Written,
        op: &'static str,
        before: Option<i64>,
    ) -> Result<(), Problem> {
        self.count_rows(0, 1)?;
        let id = stored.id().to_string();
        let after = stored.version().unwrap_or(0);
        // A row the flow was given at another version than the one this
        // write replaced changed in between: what the flow computed from
        // it is stale (a lost update, were it written).
        let seen = (entity.to_string(), id.clone());
        if let (Some(&was), Some(b)) = (self.seen.get(&seen), before)
            && was != b
        {
            return Err(storage_problem(StorageError::Conflict {
                message: format!("`{entity}` {id} was read at version {was}, written at {b}"),
            }));
        }
        self.seen.insert(seen, after);
        // A locked row the flow deletes, or whose owner it changes, is no
        // longer known to be live and the caller's.
        let key = (entity.to_string(), id.clone());
        if self.open.iter().any(|t| t.locked.contains_key(&key)) {
            let owner = self
                .bundle
                .spec
                .entities
                .get(entity)
                .and_then(|e| e.owner.as_ref())
                .map(|o| stored.field(&o.field));
            let deleted = matches!(op, "soft_delete" | "delete");
            for t in &mut self.open {
                let kept = t
                    .locked
                    .get(&key)
                    .is_some_and(|was| !deleted && owner.as_ref().is_none_or(|now| now == was));
                if !kept {
                    t.locked.remove(&key);
                }
            }
        }
        // Rows are kept for the invariants' check at commit, where there
        // are invariants to check.
        let checked = self
            .bundle
            .spec
            .entities
            .get(entity)
            .is_some_and(|e| !e.invariants.is_empty());
        let tx = self.write_tx()?;
        if checked {
            tx.touched
                .insert((entity.to_string(), id.clone()), stored.row());
        }
        tx.rows.push(RowRecord {
            entity: entity.to_string(),
            id,
            op,
            before,
            after,
        });
        Ok(())
    }

    fn now_text(&self) -> String {
        match self.roots.get(2) {
            Some(Value::Map(m)) => m.get("time").map(|t| t.to_string()).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// `emit`: the message, recorded with the transaction's writes (the
    /// outbox); binds `{"id": <message id>}`. Its id derives from the
    /// request, the node and the node's run, like a row's; so does its
    /// idempotency key unless the node gives one.
    fn emit(&mut self, id: &str, m: &Message) -> Result<Value, Problem> {
        let mut args = Map::new();
        for (k, t) in m.args {
            let v = self.template(t, None)?;
            args.insert(k.clone(), self.json(&v)?);
        }
        let message_id = self.new_id(id);
        let key = self.key_or(m.key, message_id.clone())?;
        let mut message = json!({
            "id": message_id,
            "execution": self.request.id,
            "tool": self.tool_name,
            "node": id,
            "service": m.external,
            "operation": m.operation,
            "args": Json::Object(args),
            "idempotencyKey": key,
            "createdAt": self.now_text(),
        });
        if let (Some(t), Some(o)) = (m.timeout_ms, message.as_object_mut()) {
            o.insert("timeoutMs".into(), json!(t));
        }
        let tx = self.write_tx()?.id;
        self.storage
            .enqueue(tx, &message)
            .map_err(storage_problem)?;
        self.write_tx()?.messages.push(message);
        let mut bound = crate::expr::value::Map::default();
        bound.insert("id".to_string(), Value::String(message_id));
        Ok(Value::Map(bound))
    }

    /// A new row id: a UUID derived from the request id, the node and a
    /// counter, so replaying a request yields the same ids.
    fn new_id(&mut self, node: &str) -> String {
        let n = self.ids.entry(node.to_string()).or_insert(0);
        *n += 1;
        uuid_from(&format!("{}\u{0}{node}\u{0}{n}", self.request.id))
    }
}

/// What an `emit` node sends.
struct Message<'n> {
    external: &'n str,
    operation: &'n str,
    args: &'n crate::model::NameMap<Template>,
    timeout_ms: Option<u64>,
    key: Option<&'n crate::model::Expression>,
}

/// A condition that gave something other than a bool: a spec error.
/// The rows a many-row write picks: `where`, `orderBy`, `limit`.
/// The `ref` fields of every entity that name `entity`, in spec order:
/// the entity, the field and what deleting a row they name does.
fn referring<'s>(
    spec: &'s crate::model::Spec,
    entity: &'s str,
) -> impl Iterator<Item = (&'s String, &'s String, crate::model::OnDelete)> {
    spec.entities.iter().flat_map(move |(name, e)| {
        e.fields
            .iter()
            .filter(move |(_, field)| field.entity.as_deref() == Some(entity))
            .map(move |(f, field)| (name, f, field.on_delete))
    })
}

struct Pick<'n> {
    filters: &'n [crate::model::Where],
    order_by: &'n [crate::model::Order],
    limit: Option<&'n Limit>,
}

/// What a `foreach` iterates over, or a `create` with `each`.
struct Each<'n> {
    items: &'n Expression,
    as_name: &'n str,
    max_items: u64,
}

/// Whether a node with `onError` inside a transaction runs in a savepoint
/// of its own: one that writes (`NodeKind::is_write`, `emit` included:
/// it writes the outbox), or a `foreach` (its body may). Only writes fail
/// in storage with errors `onError` catches (a unique value taken, a row
/// gone); reads and aggregates fail only with errors nothing catches,
/// after which the transaction is rolled back anyway. A `transaction`
/// node is a savepoint already.
fn caught_in_storage(node: &Node) -> bool {
    node.kind.is_write() || matches!(node.kind, NodeKind::Foreach { .. })
}

fn not_bool(e: &Expression, v: &Value) -> Problem {
    Problem::spec_error(format!(
        "`{}` at {} gave {}, not a bool",
        e.src,
        e.path,
        v.a_type()
    ))
}

fn version(row: &Row) -> Option<i64> {
    row.get("version").and_then(Json::as_i64)
}

/// The (id, version) of each row, as read.
fn keys_of(rows: &[Row]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|r| (r.id().to_owned(), r.version().unwrap_or(0)))
        .collect()
}

/// A row as a write gave it back: JSON, or already the interpreter's value.
trait Written {
    fn id(&self) -> &str;
    fn version(&self) -> Option<i64>;
    /// A column's value (null when absent).
    fn field(&self, name: &str) -> Json;
    /// The row as stored.
    fn row(&self) -> Row;
}

impl Written for Row {
    fn id(&self) -> &str {
        self.get("id").and_then(Json::as_str).unwrap_or_default()
    }
    fn version(&self) -> Option<i64> {
        version(self)
    }
    fn field(&self, name: &str) -> Json {
        self.get(name).cloned().unwrap_or(Json::Null)
    }
    fn row(&self) -> Row {
        self.clone()
    }
}

impl Written for Value {
    fn id(&self) -> &str {
        match column(self, "id") {
            Some(Value::String(s)) => s,
            _ => "",
        }
    }
    fn version(&self) -> Option<i64> {
        match column(self, "version") {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }
    fn field(&self, name: &str) -> Json {
        column(self, name)
            .and_then(|v| v.to_json().ok())
            .unwrap_or(Json::Null)
    }
    fn row(&self) -> Row {
        match self.to_json() {
            Ok(Json::Object(row)) => row,
            _ => Row::new(),
        }
    }
}

/// A column of a row value.
fn column<'v>(row: &'v Value, name: &str) -> Option<&'v Value> {
    match row {
        Value::Map(m) => m.get(name),
        _ => None,
    }
}

pub(crate) fn rows_json<'r>(rows: impl IntoIterator<Item = &'r RowRecord>) -> Json {
    Json::Array(
        rows.into_iter()
            .map(|r| json!({"entity": r.entity, "id": r.id, "op": r.op, "before": r.before, "after": r.after}))
            .collect(),
    )
}

pub(crate) fn calls_json(calls: &[CallRecord]) -> Json {
    Json::Array(
        calls
            .iter()
            .map(|c| {
                json!({"node": c.node, "service": c.service, "operation": c.operation, "outcome": c.outcome,
                       "attempts": c.attempts, "compensation": c.compensation, "result": c.result})
            })
            .collect(),
    )
}

/// An `orderBy` as the storage's sort keys, ending with `id` (so that the
/// order is total).
fn sort_keys(order_by: &[crate::model::Order]) -> Vec<SortKey> {
    let mut order: Vec<SortKey> = order_by
        .iter()
        .map(|o| SortKey {
            field: o.field.clone(),
            desc: o.desc,
        })
        .collect();
    if !order.iter().any(|k| k.field == "id") {
        order.push(SortKey {
            field: "id".into(),
            desc: false,
        });
    }
    order
}

/// How many rows the includes of `rows` embed, at every depth.
fn included_rows(rows: &[Value], include: &[crate::model::Include]) -> u64 {
    rows.iter().map(|r| embedded_in(r, include)).sum()
}

/// How many rows the includes of one row embed, at every depth.
fn embedded_in(row: &Value, include: &[crate::model::Include]) -> u64 {
    let mut n = 0;
    for inc in include {
        let nested = |r: &Value| match r {
            Value::Map(_) => 1 + embedded_in(r, &inc.include),
            _ => 0,
        };
        n += match field_of(row, &inc.name) {
            Some(one @ Value::Map(_)) => nested(one),
            Some(Value::List(list)) => list.iter().map(nested).sum(),
            _ => 0,
        };
    }
    n
}

/// Claim `claim` of a caller's `claims` as an owner field holds it: a
/// string, or an integer's decimal digits; `None` when absent or of
/// another type.
pub(crate) fn claim_text(claims: &Json, claim: &str) -> Option<String> {
    match claims.get(claim)? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// A column of a row read (a map value).
fn field_of<'v>(row: &'v Value, field: &str) -> Option<&'v Value> {
    match row {
        Value::Map(m) => m.get(field),
        _ => None,
    }
}

/// The shape of a read's rows ([`crate::ports::Shape`]): its entity's
/// timestamp columns, and its includes, each in the shape of its entity.
struct RowShape<'a> {
    entity: &'a Entity,
    includes: Vec<(&'a str, Option<RowShape<'a>>)>,
}

impl<'a> RowShape<'a> {
    fn new(bundle: &'a Bundle, e: &'a Entity, include: &'a [crate::model::Include]) -> Self {
        RowShape {
            entity: e,
            includes: include
                .iter()
                .map(|inc| {
                    let target = inc.target(e).and_then(|t| bundle.spec.entities.get(t));
                    (
                        inc.name.as_str(),
                        target.map(|te| RowShape::new(bundle, te, &inc.include)),
                    )
                })
                .collect(),
        }
    }
}

impl crate::ports::Shape for RowShape<'_> {
    fn timestamp(&self, column: &str) -> bool {
        rows::is_timestamp_column(self.entity, column)
    }

    fn include(&self, key: &str) -> Option<Option<&dyn crate::ports::Shape>> {
        self.includes
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, s)| s.as_ref().map(|s| s as &dyn crate::ports::Shape))
    }

    fn default_of(&self, column: &str) -> Option<&Json> {
        rows::required_default(self.entity, column)
    }
}
