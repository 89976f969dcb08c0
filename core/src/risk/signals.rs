//! Detection of each risk signal on one tool's flow graph.

use petgraph::graph::NodeIndex;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};

use super::{Finding, Fix, Level, signal};
use crate::diag::child;
use crate::expr::ExprKind;
use crate::flow::{NodeInfo, Path, ToolGraph};
use crate::model::{Expression, FilterOp, Limit, NodeKind, Spec, Target, Tool, Where};
use crate::patch::Op;

/// `(external, operation)` pairs that undo something: declared with
/// `compensates`, or named as a `compensate` target anywhere in the spec.
pub(super) fn compensating_operations<'g, 's: 'g>(
    spec: &Spec,
    graphs: impl Iterator<Item = &'g ToolGraph<'s>>,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (xname, x) in &spec.externals {
        for (oname, op) in &x.operations {
            if op.compensates.is_some() {
                out.insert((xname.clone(), oname.clone()));
            }
        }
    }
    for g in graphs {
        for info in &g.nodes {
            if let NodeKind::Call {
                compensate: Some(t),
                ..
            } = &info.node.kind
                && let Some(NodeKind::Call {
                    external,
                    operation,
                    ..
                }) = g
                    .by_id
                    .get(t.as_str())
                    .and_then(|&i| g.nodes.get(i))
                    .map(|n| &n.node.kind)
            {
                out.insert((external.clone(), operation.clone()));
            }
        }
    }
    out
}

fn finding(
    code: &str,
    tool: &str,
    node: Option<&str>,
    path: &str,
    message: String,
    patch: Option<Vec<Op>>,
    summary: Option<String>,
) -> Finding {
    let s = signal(code);
    Finding {
        code: code.to_string(),
        level: s.map_or(Level::Red, |s| s.level),
        tool: tool.to_string(),
        node: node.map(str::to_string),
        path: path.to_string(),
        message,
        acknowledged: false,
        fix: Fix {
            summary: summary.unwrap_or_else(|| s.map_or("", |s| s.fix).to_string()),
            patch,
        },
    }
}

/// Whether an equality on `id` or a unique field pins the filters to one
/// row. A `nullable` unique field does not: any number of rows may hold
/// null, and `eq` null matches them all.
fn pinned(spec: &Spec, entity: &str, filters: &[Where]) -> bool {
    let Some(e) = spec.entities.get(entity) else {
        return false;
    };
    filters.iter().filter_map(Where::required).any(|f| {
        f.op == FilterOp::Eq
            && e.is_unique(&f.field)
            && !e.fields.get(&f.field).is_some_and(|x| x.nullable)
    })
}

pub(super) fn tool_findings(
    spec: &Spec,
    source: &Value,
    name: &str,
    tool: &Tool,
    g: &ToolGraph,
    comp_ops: &BTreeSet<(String, String)>,
) -> Vec<Finding> {
    // Vertices from which a transition can still happen.
    let transitions: Vec<NodeIndex> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.node.kind, NodeKind::Transition { .. }))
        .map(|(i, _)| g.vin_of(i))
        .collect();
    let mut t = ToolSignals {
        spec,
        name,
        tool,
        g,
        comp_ops,
        max_rows: spec.limits.max_rows_per_write,
        before_transition: g.reaching_across_turns(&transitions),
        comp_targets: g
            .nodes
            .iter()
            .filter_map(|n| match &n.node.kind {
                NodeKind::Call {
                    compensate: Some(t),
                    ..
                } => Some(t.as_str()),
                _ => None,
            })
            .collect(),
        recovery: HashMap::new(),
        out: Vec::new(),
    };
    let chains = write_chains(g);
    let (mut writes, mut effects) = (false, false);
    for (i, info) in g.nodes.iter().enumerate() {
        if info.node.kind.is_write() {
            writes = true;
            if info.tx.is_none() {
                // A write in a loop's body is fixed by wrapping the loop.
                let top = top_level(g, i);
                t.write_outside_transaction(info, chains.get(&top).map(|c| (source, c)));
            }
            t.loop_impact(i, info);
        }
        match &info.node.kind {
            NodeKind::Sql { .. } => t.raw_write(info),
            NodeKind::Delete { entity, .. } => t.hard_delete(info, entity),
            NodeKind::Update {
                entity,
                filters,
                limit,
                one: false,
                ..
            } => t.update_impact(
                info,
                entity,
                filters.as_deref().unwrap_or_default(),
                limit.as_ref(),
                false,
            ),
            NodeKind::Transition {
                entity,
                target: Target::Where { filters, limit, .. },
                ..
            }
            | NodeKind::SoftDelete {
                entity,
                target: Target::Where { filters, limit, .. },
            } => t.update_impact(info, entity, filters, limit.as_ref(), true),
            NodeKind::Create {
                entity,
                each: Some((items, _)),
                ..
            } => t.create_impact(info, entity, items),
            NodeKind::Read {
                entity,
                filters,
                limit: None,
                one: false,
                ..
            } if !pinned(spec, entity, filters) => t.unbounded_read(info, entity),
            // Groups are as many as the values they are made of.
            NodeKind::Aggregate {
                entity,
                group_by,
                limit: None,
                ..
            } if !group_by.is_empty() => t.unbounded_read(info, entity),
            NodeKind::Call { .. } => effects |= t.call(i, info, source),
            NodeKind::Emit { .. } => effects = true,
            _ => {}
        }
        if let NodeKind::Read { include, .. } = &info.node.kind {
            t.unbounded_includes(info, include);
        }
    }
    t.cycles();
    t.lock_order(source);
    t.tool_level(writes, effects);
    t.out
}

/// The expression a `where` pins `id` to with an equality, if any.
fn by_id(filters: &[Where]) -> Option<&Expression> {
    filters
        .iter()
        .filter_map(Where::required)
        .find_map(|f| match (&f.op, &f.value) {
            (FilterOp::Eq, crate::model::Template::Expr(e)) if f.field == "id" => Some(e),
            _ => None,
        })
}

/// The row a node locks by itself, chosen by an expression: a `transition`
/// or `soft_delete` by `id`, an `update` with `one` whose `where` pins
/// `id`, a locking `read` with `one` that pins `id`. Its entity and the id
/// expression.
fn single_lock(kind: &NodeKind) -> Option<(&str, &Expression)> {
    let (entity, id) = match kind {
        NodeKind::Transition {
            entity,
            target: Target::Id(e),
            ..
        }
        | NodeKind::SoftDelete {
            entity,
            target: Target::Id(e),
        } => (entity, e),
        NodeKind::Update {
            entity,
            one: true,
            filters: Some(filters),
            ..
        } => (entity, by_id(filters)?),
        NodeKind::Read {
            entity,
            one: true,
            lock: true,
            filters,
            ..
        } => (entity, by_id(filters)?),
        _ => return None,
    };
    // A literal id names the same row on every call: no order to choose.
    match id.ast.as_ref().map(|a| &a.kind) {
        Some(ExprKind::Lit(_)) | None => None,
        _ => Some((entity.as_str(), id)),
    }
}

/// What identifies the row an id expression names: `n.id` of a node that
/// picked one row by an id is that id's key, of another single-row node
/// the node itself; else the expression, printed in one canonical form.
fn row_key(g: &ToolGraph, e: &crate::expr::Expr, depth: usize) -> String {
    if let ExprKind::Member(inner, field) = &e.kind
        && field == "id"
        && let ExprKind::Ident(n) = &inner.kind
        && let Some(node) = g.by_id.get(n.as_str()).and_then(|&i| g.nodes.get(i))
    {
        let picked_by = match &node.node.kind {
            NodeKind::Read {
                one: true, filters, ..
            } => by_id(filters),
            kind => single_lock(kind).map(|(_, id)| id),
        };
        if let Some(ast) = picked_by.and_then(|id| id.ast.as_ref())
            && depth < 8
        {
            return row_key(g, ast, depth + 1);
        }
        return format!("node:{n}");
    }
    e.to_string()
}

/// The keys ([`row_key`]) of the rows a locking read certainly covers:
/// its `where` is a single `id` `in` a list (no `when`), and no `limit`
/// below the list's length. `None` for any other read.
fn covered_rows(g: &ToolGraph, filters: &[Where], limit: Option<&Limit>) -> Option<Vec<String>> {
    let [only] = filters else { return None };
    let f = only.required()?;
    if f.field != "id" || f.op != FilterOp::In {
        return None;
    }
    let elements: Vec<&crate::expr::Expr> = match &f.value {
        crate::model::Template::Expr(e) => match &e.ast.as_ref()?.kind {
            ExprKind::List(items) => items.iter().collect(),
            _ => return None,
        },
        crate::model::Template::Array(items) => items
            .iter()
            .map(|t| match t {
                crate::model::Template::Expr(e) => e.ast.as_ref(),
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    match limit {
        None => {}
        Some(l) if l.fixed().is_some_and(|n| n >= elements.len() as u64) => {}
        Some(_) => return None,
    }
    Some(elements.into_iter().map(|e| row_key(g, e, 0)).collect())
}

/// Whether `e` reads only `input`, `auth` and `request` (so it can be
/// evaluated anywhere in the flow).
fn from_roots(e: &Expression) -> bool {
    let Some(ast) = &e.ast else { return false };
    let mut ok = true;
    ast.walk(|x| {
        if let ExprKind::Ident(n) = &x.kind
            && !matches!(n.as_str(), "input" | "auth" | "request")
        {
            ok = false;
        }
    });
    ok
}

/// The signals of one tool, gathered node by node.
struct ToolSignals<'a, 's> {
    spec: &'a Spec,
    name: &'a str,
    tool: &'a Tool,
    g: &'a ToolGraph<'s>,
    comp_ops: &'a BTreeSet<(String, String)>,
    /// `limits.maxRowsPerWrite` of the spec.
    max_rows: u64,
    /// Vertices from which a transition can still happen (on a later turn
    /// of a loop too).
    before_transition: Vec<bool>,
    /// Nodes named as some call's `compensate`.
    comp_targets: BTreeSet<&'s str>,
    /// Per (external, operation): the vertices from which a recovery call
    /// can follow.
    recovery: HashMap<(String, String), Vec<bool>>,
    out: Vec<Finding>,
}

impl ToolSignals<'_, '_> {
    fn push(
        &mut self,
        code: &str,
        info: Option<&NodeInfo>,
        message: String,
        patch: Option<Vec<Op>>,
        summary: Option<String>,
    ) {
        let (node, path) = match info {
            Some(i) => (Some(i.id), i.node.path.as_str()),
            None => (None, self.tool.path.as_str()),
        };
        self.out.push(finding(
            code, self.name, node, path, message, patch, summary,
        ));
    }

    /// `write-outside-transaction`, with a patch that wraps the chain of
    /// writes in a transaction when there is one.
    fn write_outside_transaction(&mut self, info: &NodeInfo, chain: Option<(&Value, &Vec<usize>)>) {
        let entity = info
            .node
            .kind
            .entity()
            .map(|e| format!(" to `{e}`"))
            .unwrap_or_default();
        let (patch, summary) = match chain {
            Some((source, chain)) => wrap_patch(self.g, source, chain),
            None => (None, None),
        };
        let name = self.name;
        let message = format!(
            "{name} is Red because node `{}` writes{entity} outside a transaction",
            info.id
        );
        self.push(
            "write-outside-transaction",
            Some(info),
            message,
            patch,
            summary,
        );
    }

    fn raw_write(&mut self, info: &NodeInfo) {
        let message = format!(
            "{} is Red because node `{}` runs raw SQL instead of an entity action",
            self.name, info.id
        );
        self.push("raw-write", Some(info), message, None, None);
    }

    fn hard_delete(&mut self, info: &NodeInfo, entity: &str) {
        let message = format!(
            "{} is Red because node `{}` permanently deletes {} row",
            self.name,
            info.id,
            crate::diag::a_code(entity)
        );
        let patch = vec![Op::Replace {
            path: child(&info.node.path, "type"),
            value: json!("soft_delete"),
        }];
        let summary = "convert to `soft_delete` (sets `deleted_at`)".to_string();
        self.push(
            "hard-delete",
            Some(info),
            message,
            Some(patch),
            Some(summary),
        );
    }

    /// `lock-order`: two nodes of one transaction that each lock one row
    /// of the same entity, chosen by different expressions, with no
    /// locking read of those rows in `id` order before them. Two calls
    /// naming the same rows the other way round each hold one lock and
    /// wait for the other: Postgres breaks the deadlock after a second by
    /// failing one of them. The fix locks every row first, in one read
    /// ordered by `id`. Locks are taken in execution order (not in the
    /// order of the keys of `nodes`).
    fn lock_order(&mut self, source: &Value) {
        let g = self.g;
        let dom = crate::flow::Dominance::new(g);
        let rank = g.flow_rank();
        let mut order: Vec<usize> = (0..g.nodes.len()).collect();
        order.sort_by_key(|&i| rank.get(i).copied().unwrap_or(usize::MAX));
        // (outermost transaction, entity) -> the locks (node, id), in
        // execution order.
        type Locks<'e> = Vec<(usize, &'e Expression)>;
        let mut groups: indexmap::IndexMap<(usize, &str), Locks> = indexmap::IndexMap::new();
        for &i in &order {
            let Some(info) = g.nodes.get(i) else { continue };
            let Some((entity, id)) = single_lock(&info.node.kind) else {
                continue;
            };
            let Some(tx) = outer_tx(g, i) else { continue };
            groups.entry((tx, entity)).or_default().push((i, id));
        }
        for ((tx, entity), locks) in groups {
            // Which row each names: `hold.id` after a read of `hold` by
            // `input.id` is the row `input.id` names.
            let mut keys: Vec<String> = locks
                .iter()
                .filter_map(|(_, e)| e.ast.as_ref().map(|a| row_key(g, a, 0)))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            if keys.len() < 2 || self.lock_read_covers(&dom, tx, entity, &locks, &keys) {
                continue;
            }
            let (Some(&(first, _)), Some(&(second, _))) = (locks.first(), locks.get(1)) else {
                continue;
            };
            let (Some(a), Some(b)) = (g.nodes.get(first), g.nodes.get(second)) else {
                continue;
            };
            let message = format!(
                "{} is Yellow because nodes `{}` and `{}` lock `{entity}` rows chosen by the call one after the other: two calls naming the same rows in the other order wait on each other (a deadlock)",
                self.name, a.id, b.id
            );
            let mut distinct: Vec<&str> = locks.iter().map(|(_, e)| e.src.as_str()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            // The read goes right before the last node of the transaction
            // that every lock certainly comes after (the first lock, or the
            // branch that leads to them).
            let at = (0..g.nodes.len())
                .filter(|&n| outer_tx(g, n) == Some(tx))
                .filter(|&n| {
                    locks
                        .iter()
                        .all(|(i, _)| dom.dominates(g.vin_of(n), g.vin_of(*i)))
                })
                .max_by_key(|&n| rank.get(n).copied().unwrap_or(0));
            let patch = match at {
                Some(at) if locks.iter().all(|(_, e)| from_roots(e)) && distinct.len() >= 2 => {
                    lock_first_patch(g, source, at, entity, &distinct)
                }
                _ => None,
            };
            let before = at.and_then(|n| g.nodes.get(n)).map_or(a.id, |n| n.id);
            let summary = format!(
                "lock the `{entity}` rows first, in one read with `\"lock\": true` ordered by `id` (as `{}`), before `{before}`",
                format_args!("{{\"id\": {{\"in\": \"[{}]\"}}}}", distinct.join(", ")),
            );
            self.push("lock-order", Some(b), message, patch, Some(summary));
        }
    }

    /// Whether a locking read of `entity` in `id` order, in transaction
    /// `tx`, has certainly run before every lock and certainly locked
    /// every row they name (`keys`): its `where` is only `id` `in` a list
    /// holding each of them (see [`covered_rows`]).
    fn lock_read_covers(
        &self,
        dom: &crate::flow::Dominance,
        tx: usize,
        entity: &str,
        locks: &[(usize, &Expression)],
        keys: &[String],
    ) -> bool {
        let g = self.g;
        g.nodes.iter().enumerate().any(|(r, n)| {
            let NodeKind::Read {
                entity: e,
                lock: true,
                one: false,
                order_by,
                filters,
                limit,
                ..
            } = &n.node.kind
            else {
                return false;
            };
            e == entity
                && order_by.first().is_none_or(|o| o.field == "id" && !o.desc)
                && outer_tx(g, r) == Some(tx)
                && locks
                    .iter()
                    .all(|(i, _)| dom.dominates(g.vout_of(r), g.vin_of(*i)))
                && covered_rows(g, filters, limit.as_ref())
                    .is_some_and(|rows| keys.iter().all(|k| rows.contains(k)))
        })
    }

    /// `high-row-impact` for a write inside `foreach` bodies: its own bound
    /// (1 row, for one row or a `where` that pins one; or an update's fixed
    /// `limit`) times every enclosing loop's
    /// `maxItems` exceeds `maxRowsPerWrite`. (An update's own unbounded or
    /// too large `limit` is `update_impact`'s.)
    fn loop_impact(&mut self, i: usize, info: &NodeInfo) {
        let factor = loop_factor(self.g, i);
        if factor == 1 {
            return;
        }
        let own = match &info.node.kind {
            NodeKind::Update { one: true, .. } => 1,
            // A `where` that pins `id` (or a unique field) with no `limit`:
            // one row.
            NodeKind::Update {
                entity,
                filters: Some(filters),
                limit: None,
                ..
            }
            | NodeKind::Transition {
                entity,
                target:
                    Target::Where {
                        filters,
                        limit: None,
                        ..
                    },
                ..
            }
            | NodeKind::SoftDelete {
                entity,
                target:
                    Target::Where {
                        filters,
                        limit: None,
                        ..
                    },
            } if pinned(self.spec, entity, filters) => 1,
            NodeKind::Update { limit, .. }
            | NodeKind::Transition {
                target: Target::Where { limit, .. },
                ..
            }
            | NodeKind::SoftDelete {
                target: Target::Where { limit, .. },
                ..
            } => match limit.as_ref().and_then(Limit::fixed) {
                Some(n) if n <= self.max_rows => n,
                // Unbounded or too large on its own: reported as such.
                _ => return,
            },
            NodeKind::Create {
                each: Some((items, _)),
                ..
            } => match list_bound(self.tool, self.g, items) {
                Some(n) if n <= self.max_rows => n,
                _ => return,
            },
            NodeKind::Sql { .. } | NodeKind::Delete { .. } => return,
            _ => 1,
        };
        let bound = own.saturating_mul(factor);
        if bound <= self.max_rows {
            return;
        }
        let (name, max_rows) = (self.name, self.max_rows);
        let entity = info.node.kind.entity().unwrap_or_default();
        let message = format!(
            "{name} is Yellow because node `{}` runs in a `foreach` and can change up to {bound} `{entity}` rows in one call, more than {max_rows}",
            info.id
        );
        let summary = format!(
            "lower the enclosing `foreach`'s `maxItems` so that at most {max_rows} rows change, or acknowledge"
        );
        self.push("high-row-impact", Some(info), message, None, Some(summary));
    }

    /// A `create` with `each`: as many rows as the list has elements, so
    /// `unbounded-update` when nothing bounds the list's length, and
    /// `high-row-impact` above `maxRowsPerWrite`.
    fn create_impact(&mut self, info: &NodeInfo, entity: &str, items: &Expression) {
        let (name, max_rows) = (self.name, self.max_rows);
        let input_prop = input_property(items);
        let bound = list_bound(self.tool, self.g, items);
        // Mechanical only where the property is written in place (not in
        // an `allOf` branch or a shared definition the patch cannot know).
        let fix = |prop: Option<&str>| {
            prop.filter(|p| {
                self.tool
                    .input
                    .pointer(&format!("/properties/{p}"))
                    .is_some()
            })
            .map(|p| {
                vec![Op::Add {
                    path: format!("{}/input/properties/{p}/maxItems", self.tool.path),
                    value: json!(max_rows),
                }]
            })
        };
        match bound {
            None => {
                let message = format!(
                    "{name} is Red because node `{}` creates a `{entity}` row per element of `{}`, and nothing bounds how many there are",
                    info.id, items.src
                );
                let summary = match input_prop {
                    Some(p) => format!(
                        "give the input array `{p}` a `maxItems` (`\"maxItems\": {max_rows}`)"
                    ),
                    None => "iterate over a list with a known bound (an input array with `maxItems`, a read with a `limit`)".to_string(),
                };
                let patch = fix(input_prop);
                self.push(
                    "unbounded-update",
                    Some(info),
                    message,
                    patch,
                    Some(summary),
                );
            }
            Some(n) if n > max_rows => {
                let message = format!(
                    "{name} is Yellow because node `{}` can create up to {n} `{entity}` rows at once, more than {max_rows}",
                    info.id
                );
                let summary = format!(
                    "bound the list to {max_rows} elements (`\"maxItems\": {max_rows}`), or acknowledge"
                );
                let patch = input_prop.and_then(|p| {
                    let schema = self.tool.input.pointer(&format!("/properties/{p}"))?;
                    schema.get("maxItems")?;
                    Some(vec![Op::Replace {
                        path: format!("{}/input/properties/{p}/maxItems", self.tool.path),
                        value: json!(max_rows),
                    }])
                });
                self.push("high-row-impact", Some(info), message, patch, Some(summary));
            }
            Some(_) => {}
        }
    }

    /// `unbounded-update` (no `where`, no `limit`) or `high-row-impact`
    /// (more rows than `maxRowsPerWrite` may change at once). `strict` (the
    /// 0.2 many-row `transition` and `soft_delete`): no `limit` and a
    /// `where` that pins no single row is no static bound, so
    /// `unbounded-update` too.
    fn update_impact(
        &mut self,
        info: &NodeInfo,
        entity: &str,
        filters: &[Where],
        limit: Option<&Limit>,
        strict: bool,
    ) {
        let (name, max_rows, path) = (self.name, self.max_rows, info.node.path.as_str());
        let no_bound = limit.is_none()
            && (!filters.iter().any(Where::always_applies)
                || (strict && !pinned(self.spec, entity, filters)));
        if no_bound {
            let message = if strict && filters.iter().any(Where::always_applies) {
                format!(
                    "{name} is Red because node `{}` changes every `{entity}` row its `where` matches, with no `limit`",
                    info.id
                )
            } else if filters.is_empty() {
                format!(
                    "{name} is Red because node `{}` updates `{entity}` rows with neither `where` nor `limit`, so it can change every row",
                    info.id
                )
            } else {
                format!(
                    "{name} is Red because node `{}` updates `{entity}` rows with no `limit`, and every condition of its `where` has a `when` that may leave it out, so it can change every row",
                    info.id
                )
            };
            let patch = vec![Op::Add {
                path: child(path, "limit"),
                value: json!(max_rows),
            }];
            let summary =
                format!("add a row limit (`\"limit\": {max_rows}`), or a `where` condition");
            self.push(
                "unbounded-update",
                Some(info),
                message,
                Some(patch),
                Some(summary),
            );
            return;
        }
        let too_many = match limit {
            Some(Limit::Fixed(n)) => *n > max_rows,
            Some(Limit::Expr(_)) => true,
            None => !pinned(self.spec, entity, filters),
        };
        if !too_many {
            return;
        }
        let (at, value) = (child(path, "limit"), json!(max_rows));
        let op = if limit.is_some() {
            Op::Replace { path: at, value }
        } else {
            Op::Add { path: at, value }
        };
        let message = format!(
            "{name} is Yellow because node `{}` can change more than {max_rows} `{entity}` rows at once",
            info.id
        );
        let summary = format!(
            "limit the update to {max_rows} rows (`\"limit\": {max_rows}`), or acknowledge"
        );
        self.push(
            "high-row-impact",
            Some(info),
            message,
            Some(vec![op]),
            Some(summary),
        );
    }

    fn unbounded_read(&mut self, info: &NodeInfo, entity: &str) {
        let message = format!(
            "{} is Yellow because node `{}` reads `{entity}` rows without a limit",
            self.name, info.id
        );
        self.unbounded(info, &info.node.path, message);
    }

    /// `unbounded-read` for each list include (`from`) without a limit, at
    /// any depth.
    fn unbounded_includes(&mut self, info: &NodeInfo, include: &[crate::model::Include]) {
        for inc in include {
            if let crate::model::IncludeLink::From { entity, .. } = &inc.link
                && inc.limit.is_none()
            {
                let message = format!(
                    "{} is Yellow because node `{}` includes `{entity}` rows as `{}` without a limit",
                    self.name, info.id, inc.name
                );
                self.unbounded(info, &inc.path, message);
            }
            self.unbounded_includes(info, &inc.include);
        }
    }

    /// The `unbounded-read` finding, with a patch adding a limit at `path`.
    fn unbounded(&mut self, info: &NodeInfo, path: &str, message: String) {
        let patch = vec![Op::Add {
            path: child(path, "limit"),
            value: json!(100),
        }];
        let summary = "add `\"limit\": 100` (and `after` for paging)".to_string();
        self.push(
            "unbounded-read",
            Some(info),
            message,
            Some(patch),
            Some(summary),
        );
    }

    /// The signals of a `call` node; whether it has side effects.
    fn call(&mut self, i: usize, info: &NodeInfo, source: &Value) -> bool {
        let NodeKind::Call {
            external,
            operation,
            timeout_ms,
            retry,
            compensate,
            ..
        } = &info.node.kind
        else {
            return false;
        };
        let (name, path) = (self.name, info.node.path.as_str());
        let what = format!("{external}.{operation}");
        let effects = self.spec.has_side_effects(external, operation);
        if retry.is_none() {
            let patch = vec![Op::Add {
                path: child(path, "retry"),
                value: json!({"max": 3, "backoff": "exponential"}),
            }];
            let message = format!("{name} is Yellow because it calls {what} without a retry");
            let summary = "add retry (max 3 attempts, exponential backoff)".to_string();
            self.push(
                "missing-retry",
                Some(info),
                message,
                Some(patch),
                Some(summary),
            );
        }
        if timeout_ms.is_none() {
            let ms = self.tool.limits.timeout_ms.map_or(3000, |t| t.min(3000));
            let patch = vec![Op::Add {
                path: child(path, "timeoutMs"),
                value: json!(ms),
            }];
            let message = format!("{name} is Yellow because it calls {what} without a timeout");
            self.push(
                "missing-timeout",
                Some(info),
                message,
                Some(patch),
                Some(format!("add `\"timeoutMs\": {ms}`")),
            );
        }
        if !effects {
            return false;
        }
        let vout = self.g.vout_of(i).index();
        if info.tx.is_some() {
            let message = format!(
                "{name} is Red because it calls {what} inside a database transaction, where a rollback cannot undo it"
            );
            // A call whose answer nothing reads can wait for the commit:
            // as an `emit`, its message commits with the writes.
            let fix = (compensate.is_none() && !answer_read(source, &self.tool.path, info.id))
                .then(|| pointer_get(source, path).and_then(|raw| emit_patch(path, raw)))
                .flatten();
            let summary = fix.as_ref().map(|_| {
                "turn it into an `emit`: the message commits with the transaction and is delivered after it, with retries (and not at all if it rolls back)".to_string()
            });
            self.push("external-in-transaction", Some(info), message, fix, summary);
        }
        // From the call's start: a failed call (a timeout) may have had
        // its effect too, and its `onError` path may lead to a transition.
        let vin = self.g.vin_of(i).index();
        if self.before_transition.get(vin).copied().unwrap_or(false) {
            let message = format!(
                "{name} is Yellow because it calls {what} before a status transition commits"
            );
            self.push("external-in-transition", Some(info), message, None, None);
        }
        let is_payment = self
            .spec
            .externals
            .get(external)
            .is_some_and(|x| x.kind == "payment");
        let is_comp = self.comp_targets.contains(info.id)
            || self
                .comp_ops
                .contains(&(external.clone(), operation.clone()));
        if is_payment && compensate.is_none() && !is_comp {
            let g = self.g;
            let recovers = self
                .recovery
                .entry((external.clone(), operation.clone()))
                .or_insert_with(|| recovery_set(g, external, operation));
            if !recovers.get(vout).copied().unwrap_or(false) {
                let message = format!(
                    "{name} is Red because it calls {what} and nothing undoes that payment if a later step fails"
                );
                self.push(
                    "payment-without-compensation",
                    Some(info),
                    message,
                    None,
                    None,
                );
            }
        }
        true
    }

    /// `cycle`: each edge that closes a loop.
    fn cycles(&mut self) {
        let g = self.g;
        for (i, kind) in g.cycle_edges() {
            let Some(info) = g.nodes.get(i) else { continue };
            let target = info
                .node
                .edges()
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, t)| t.to_string())
                .unwrap_or_default();
            let message = format!(
                "{} is Red because its flow loops: the `{}` edge from `{}` back to `{target}` closes a cycle",
                self.name,
                kind.key(),
                info.id
            );
            let summary = format!(
                "break the cycle: remove or redirect `{}` of `{}`",
                kind.key(),
                info.id
            );
            self.push("cycle", Some(info), message, None, Some(summary));
        }
    }

    /// The tool-level signals: `missing-idempotency-key`, `public-write`.
    fn tool_level(&mut self, writes: bool, effects: bool) {
        let (name, path) = (self.name, self.tool.path.clone());
        // A scheduled run claims its time, a queue delivery its message id:
        // those triggers are never retried into a second run.
        let keyed_by_trigger = matches!(
            self.tool.trigger,
            crate::model::Trigger::Cron { .. } | crate::model::Trigger::Queue { .. }
        );
        if (writes || effects) && self.tool.idempotency_key.is_none() && !keyed_by_trigger {
            let what = if writes {
                "writes"
            } else {
                "calls an external with side effects"
            };
            let message = format!(
                "{name} is Yellow because it {what} without an idempotency key, so a retried request could run twice"
            );
            let patch = vec![Op::Add {
                path: child(&path, "idempotencyKey"),
                value: json!("request.idempotencyKey"),
            }];
            let summary = "add `\"idempotencyKey\": \"request.idempotencyKey\"`".to_string();
            self.push(
                "missing-idempotency-key",
                None,
                message,
                Some(patch),
                Some(summary),
            );
        }
        if writes && self.tool.auth.public {
            let message = format!(
                "{name} is Yellow because anyone can call it without signing in, and it writes data"
            );
            let patch = vec![Op::Remove {
                path: child(&child(&path, "auth"), "public"),
            }];
            let summary =
                "remove `\"public\": true`, so only signed-in callers may write".to_string();
            self.push("public-write", None, message, Some(patch), Some(summary));
        }
    }
}

/// Vertices from which a path taking an error edge reaches a call to
/// `external` with another operation than `operation`.
fn recovery_set(g: &ToolGraph, external: &str, operation: &str) -> Vec<bool> {
    let others: Vec<NodeIndex> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(&n.node.kind, NodeKind::Call { external: x, operation: o, .. } if x == external && o != operation))
        .map(|(i, _)| g.vin_of(i))
        .collect();
    let reach_other = g.reaching(&others);
    let mut sources = Vec::new();
    for (u, v, w) in g.edge_list() {
        if w.path == Path::Error && reach_other.get(v.index()).copied().unwrap_or(false) {
            sources.push(u);
        }
    }
    g.reaching(&sources)
}

/// `base`, or `base_2`, `base_3`, … : a node id the tool does not use.
fn fresh_id(g: &ToolGraph, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while g.by_id.contains_key(name.as_str()) {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// The patch operations that make every edge (and the entry) of flow
/// `flow` that leads to node `target` lead to `to` instead, but those
/// leaving the nodes `skip` names.
fn redirect(
    g: &ToolGraph,
    flow: usize,
    target: &str,
    to: &str,
    skip: impl Fn(&str) -> bool,
) -> Vec<Op> {
    let mut ops = Vec::new();
    // By JSON pointer: the patch does not depend on the order of the keys.
    let mut others: Vec<&NodeInfo> = g
        .nodes
        .iter()
        .filter(|o| o.flow == flow && !skip(o.id))
        .collect();
    others.sort_by_key(|o| o.node.path.as_str());
    for other in others {
        for (k, t) in other.node.edges() {
            if t == target {
                ops.push(Op::Replace {
                    path: format!("{}{}", other.node.path, k.pointer_suffix()),
                    value: json!(to),
                });
            }
        }
    }
    if let Some(f) = g.flows.get(flow)
        && f.entry == target
    {
        ops.push(Op::Replace {
            path: child(&f.path, "entry"),
            value: json!(to),
        });
    }
    ops
}

/// The outermost transaction around node `i`.
fn outer_tx(g: &ToolGraph, i: usize) -> Option<usize> {
    let mut tx = g.nodes.get(i).and_then(|n| n.tx);
    while let Some(t) = tx.and_then(|t| g.nodes.get(t)).and_then(|n| n.tx) {
        tx = Some(t);
    }
    tx
}

/// The patch that puts a locking read of every row the ids name, in `id`
/// order, right before node `at` (in its flow).
fn lock_first_patch(
    g: &ToolGraph,
    source: &Value,
    at: usize,
    entity: &str,
    ids: &[&str],
) -> Option<Vec<Op>> {
    let info = g.nodes.get(at)?;
    let flow = g.flows.get(info.flow)?;
    let name = fresh_id(g, &format!("lock_{}", entity.to_lowercase()));
    let mut ops = redirect(g, info.flow, info.id, &name, |_| false);
    pointer_get(source, &info.node.path)?;
    ops.push(Op::Add {
        path: child(&child(&flow.path, "nodes"), &name),
        value: json!({
            "type": "read",
            "description": "lock the rows in id order, so that calls wait in line instead of deadlocking",
            "entity": entity,
            "where": {"id": {"in": format!("[{}]", ids.join(", "))}},
            "orderBy": "id",
            "limit": ids.len(),
            "lock": true,
            "next": info.id,
        }),
    });
    Some(ops)
}

/// `p` when `items` is `input.p` (or a `filter` or `map` of it).
fn input_property(items: &Expression) -> Option<&str> {
    let mut ast = items.ast.as_ref()?;
    loop {
        match &ast.kind {
            ExprKind::Member(inner, field) if matches!(&inner.kind, ExprKind::Ident(r) if r == "input") =>
            {
                return Some(field.as_str());
            }
            ExprKind::Call {
                target: Some(list),
                func,
                ..
            } if matches!(func.as_str(), "filter" | "map" | "transformList") => ast = list,
            _ => return None,
        }
    }
}

/// The longest a list can be, as far as the spec says: an input array's
/// `maxItems`, a read's fixed `limit` (or page size), a `foreach`'s or a
/// loop's bound list, a list literal's length, a `let` value holding one
/// of these; a `filter` or `map` of a list is no longer than the list.
pub(crate) fn list_bound(tool: &Tool, g: &ToolGraph, items: &Expression) -> Option<u64> {
    bound_of(tool, g, items.ast.as_ref()?)
}

fn bound_of(tool: &Tool, g: &ToolGraph, ast: &crate::expr::Expr) -> Option<u64> {
    bound_at(tool, g, ast, 0)
}

/// [`bound_of`], `depth` `let` values deep (a spec with errors, which has
/// no signals, could make them refer to each other).
fn bound_at(tool: &Tool, g: &ToolGraph, ast: &crate::expr::Expr, depth: u32) -> Option<u64> {
    if depth > 16 {
        return None;
    }
    match &ast.kind {
        ExprKind::Member(inner, p) if matches!(&inner.kind, ExprKind::Ident(r) if r == "input") => {
            tool.input_shape
                .pointer(&format!("/properties/{p}/maxItems"))
                .and_then(Value::as_u64)
        }
        ExprKind::Call {
            target: Some(list),
            func,
            ..
        } if matches!(func.as_str(), "filter" | "map" | "transformList") => {
            bound_at(tool, g, list, depth)
        }
        ExprKind::List(elements) => Some(elements.len() as u64),
        // A `let` value: the list it holds.
        ExprKind::Member(inner, field) if let ExprKind::Ident(name) = &inner.kind => {
            let node = g.nodes.get(*g.by_id.get(name.as_str())?)?;
            let NodeKind::Let { values } = &node.node.kind else {
                return None;
            };
            match values.get(field)? {
                crate::model::Template::Array(items) => Some(items.len() as u64),
                crate::model::Template::Expr(x) => bound_at(tool, g, x.ast.as_ref()?, depth + 1),
                _ => None,
            }
        }
        ExprKind::Ident(name) => {
            let node = g.nodes.get(*g.by_id.get(name.as_str())?)?;
            match &node.node.kind {
                NodeKind::Read {
                    one: false,
                    page: false,
                    limit,
                    ..
                } => limit.as_ref().and_then(Limit::fixed),
                NodeKind::Foreach { max_items, .. } => Some(*max_items),
                NodeKind::Update {
                    one: false, limit, ..
                }
                | NodeKind::Transition {
                    target: Target::Where { limit, .. },
                    ..
                }
                | NodeKind::SoftDelete {
                    target: Target::Where { limit, .. },
                    ..
                } => limit.as_ref().and_then(Limit::fixed),
                NodeKind::Create {
                    each: Some((inner, _)),
                    ..
                } => list_bound(tool, g, inner),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The product of the `maxItems` of the `foreach` loops around node `i`
/// (1 outside loops).
fn loop_factor(g: &ToolGraph, i: usize) -> u64 {
    let mut factor = 1u64;
    let mut up = g.nodes.get(i).and_then(|n| n.parent);
    while let Some(p) = up {
        let Some(info) = g.nodes.get(p) else { break };
        if let NodeKind::Foreach { max_items, .. } = &info.node.kind {
            factor = factor.saturating_mul(*max_items);
        }
        up = info.parent;
    }
    factor
}

/// The top-level node that node `i` is, or is inside.
fn top_level(g: &ToolGraph, i: usize) -> usize {
    let mut at = i;
    while let Some(p) = g.nodes.get(at).and_then(|n| n.parent) {
        at = p;
    }
    at
}

/// Whether top-level node `i` writes outside a transaction: a write, or a
/// loop with such a write in its body.
fn writes_untransacted(g: &ToolGraph, i: usize) -> bool {
    let Some(n) = g.nodes.get(i) else {
        return false;
    };
    if n.parent.is_some() {
        return false;
    }
    n.node.kind.is_write()
        || (matches!(n.node.kind, NodeKind::Foreach { .. })
            && g.nodes.iter().enumerate().any(|(j, m)| {
                j != i && m.tx.is_none() && m.node.kind.is_write() && top_level(g, j) == i
            }))
}

/// Top-level writes (and loops that write) grouped into straight `next`
/// chains, each mapped to the chain it belongs to.
fn write_chains(g: &ToolGraph) -> HashMap<usize, Vec<usize>> {
    let top_write = |i: usize| writes_untransacted(g, i);
    let mut preds: HashMap<usize, usize> = HashMap::new();
    for n in g.nodes.iter().filter(|n| n.parent.is_none()) {
        for (_, t) in n.node.edges() {
            if let Some(&ti) = g.by_id.get(t) {
                *preds.entry(ti).or_default() += 1;
            }
        }
    }
    let next_in_chain = |i: usize| -> Option<usize> {
        let n = g.nodes.get(i)?;
        let t = *g.by_id.get(n.node.next.as_deref()?)?;
        let tn = g.nodes.get(t)?;
        (top_write(t) && preds.get(&t) == Some(&1) && tn.node.on_error == n.node.on_error)
            .then_some(t)
    };
    let mut continued: BTreeSet<usize> = BTreeSet::new();
    for i in 0..g.nodes.len() {
        if top_write(i)
            && let Some(t) = next_in_chain(i)
        {
            continued.insert(t);
        }
    }
    let mut out = HashMap::new();
    for i in 0..g.nodes.len() {
        if !top_write(i) || continued.contains(&i) {
            continue;
        }
        let mut chain = vec![i];
        let mut cur = i;
        while let Some(t) = next_in_chain(cur) {
            if chain.contains(&t) {
                break;
            }
            chain.push(t);
            cur = t;
        }
        for &c in &chain {
            out.insert(c, chain.clone());
        }
    }
    out
}

fn pointer_get<'v>(v: &'v Value, pointer: &str) -> Option<&'v Value> {
    v.pointer(pointer)
}

/// The patch that wraps a chain of top-level writes in a new transaction.
/// Whether any string of tool `tool_path` (but the names of nodes and
/// edges) mentions node `id` as an identifier: then the flow may read the
/// node's answer. Conservative: a literal that spells it counts too.
fn answer_read(source: &Value, tool_path: &str, id: &str) -> bool {
    const NAMES: &[&str] = &[
        "next",
        "onError",
        "entry",
        "compensate",
        "type",
        "external",
        "operation",
        "entity",
        "as",
    ];
    fn mentions(text: &str, id: &str) -> bool {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        text.match_indices(id).any(|(at, _)| {
            !text[..at].chars().next_back().is_some_and(ident)
                && !text[at + id.len()..].chars().next().is_some_and(ident)
        })
    }
    fn walk(v: &Value, id: &str) -> bool {
        match v {
            Value::String(s) => mentions(s, id),
            Value::Array(items) => items.iter().any(|x| walk(x, id)),
            Value::Object(m) => m
                .iter()
                .any(|(k, x)| !NAMES.contains(&k.as_str()) && walk(x, id)),
            _ => false,
        }
    }
    pointer_get(source, &format!("{tool_path}/flow")).is_none_or(|flow| walk(flow, id))
}

/// The patch turning `call` node `raw` at `path` into an `emit` with the
/// same external, operation, arguments, key, timeout and edges.
fn emit_patch(path: &str, raw: &Value) -> Option<Vec<Op>> {
    let Value::Object(raw) = raw else { return None };
    let mut emit = serde_json::Map::new();
    emit.insert("type".into(), json!("emit"));
    for (k, v) in raw {
        match k.as_str() {
            "type" | "retry" | "compensate" => {}
            _ => {
                emit.insert(k.clone(), v.clone());
            }
        }
    }
    Some(vec![Op::Replace {
        path: path.to_string(),
        value: Value::Object(emit),
    }])
}

fn wrap_patch(g: &ToolGraph, source: &Value, chain: &[usize]) -> (Option<Vec<Op>>, Option<String>) {
    let infos: Vec<&NodeInfo> = chain.iter().filter_map(|&i| g.nodes.get(i)).collect();
    let (Some(first), Some(last), Some(flow)) = (infos.first(), infos.last(), g.flows.first())
    else {
        return (None, None);
    };
    let tx_id = fresh_id(g, &format!("tx_{}", first.id));
    let mut ops = redirect(g, 0, first.id, &tx_id, |id| {
        infos.iter().any(|c| c.id == id)
    });
    let mut body_nodes = Map::new();
    for (k, info) in infos.iter().enumerate() {
        let Some(Value::Object(raw)) = pointer_get(source, &info.node.path) else {
            return (None, None);
        };
        let mut raw = raw.clone();
        raw.shift_remove("onError");
        if k + 1 == infos.len() {
            raw.shift_remove("next");
        }
        body_nodes.insert(info.id.to_string(), Value::Object(raw));
        ops.push(Op::Remove {
            path: info.node.path.clone(),
        });
    }
    let mut tx = Map::new();
    tx.insert("type".into(), json!("transaction"));
    tx.insert(
        "body".into(),
        json!({"entry": first.id, "nodes": body_nodes}),
    );
    if let Some(next) = &last.node.next {
        tx.insert("next".into(), json!(next));
    }
    if let Some(on_error) = &first.node.on_error {
        tx.insert("onError".into(), json!(on_error));
    }
    ops.push(Op::Add {
        path: child(&child(&flow.path, "nodes"), &tx_id),
        value: Value::Object(tx),
    });
    let names: Vec<String> = infos.iter().map(|i| format!("`{}`", i.id)).collect();
    (
        Some(ops),
        Some(format!(
            "wrap {} in a new transaction node `{tx_id}`",
            names.join(", ")
        )),
    )
}
