//! Detection of each risk signal on one tool's flow graph.

use petgraph::graph::NodeIndex;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};

use super::{Finding, Fix, Level, signal};
use crate::diag::child;
use crate::flow::{NodeInfo, Path, ToolGraph};
use crate::model::{Filter, FilterOp, Limit, NodeKind, Spec, Tool};
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

/// Whether an equality on `id` or a unique field pins the filters to one row.
fn pinned(spec: &Spec, entity: &str, filters: &[Filter]) -> bool {
    let Some(e) = spec.entities.get(entity) else {
        return false;
    };
    filters
        .iter()
        .any(|f| f.op == FilterOp::Eq && e.is_unique(&f.field))
}

pub(super) fn tool_findings(
    spec: &Spec,
    source: &Value,
    name: &str,
    tool: &Tool,
    g: &ToolGraph,
    comp_ops: &BTreeSet<(String, String)>,
) -> Vec<Finding> {
    let max_rows = spec.limits.max_rows_per_write;
    let mut out = Vec::new();

    let side_effects = |ext: &str, op: &str| {
        spec.externals
            .get(ext)
            .and_then(|x| x.operations.get(op))
            .is_none_or(|o| o.side_effects)
    };
    let is_payment = |ext: &str| spec.externals.get(ext).is_some_and(|x| x.kind == "payment");

    // Vertices from which a transition can still happen.
    let transitions: Vec<NodeIndex> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.node.kind, NodeKind::Transition { .. }))
        .map(|(i, _)| g.vin_of(i))
        .collect();
    let before_transition = g.reaching(&transitions);
    let comp_targets: BTreeSet<&str> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.node.kind {
            NodeKind::Call {
                compensate: Some(t),
                ..
            } => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let mut recovery_cache: HashMap<(String, String), Vec<bool>> = HashMap::new();

    let chains = write_chains(g);
    let mut writes = false;
    let mut effects = false;

    for (i, info) in g.nodes.iter().enumerate() {
        let node = info.node;
        let path = node.path.as_str();
        let id = Some(info.id);
        if node.kind.is_write() {
            writes = true;
            if info.tx.is_none() {
                let entity = node
                    .kind
                    .entity()
                    .map(|e| format!(" to `{e}`"))
                    .unwrap_or_default();
                let (patch, summary) = match chains.get(&i) {
                    Some(chain) => wrap_patch(g, source, chain),
                    None => (None, None),
                };
                out.push(finding(
                    "write-outside-transaction",
                    name,
                    id,
                    path,
                    format!(
                        "{name} is Red because node `{}` writes{entity} outside a transaction",
                        info.id
                    ),
                    patch,
                    summary,
                ));
            }
        }
        match &node.kind {
            NodeKind::Sql { .. } => out.push(finding(
                "raw-write",
                name,
                id,
                path,
                format!(
                    "{name} is Red because node `{}` runs raw SQL instead of an entity action",
                    info.id
                ),
                None,
                None,
            )),
            NodeKind::Delete { entity, .. } => out.push(finding(
                "hard-delete",
                name,
                id,
                path,
                format!(
                    "{name} is Red because node `{}` permanently deletes {} row",
                    info.id,
                    crate::diag::a_code(entity)
                ),
                Some(vec![Op::Replace {
                    path: child(path, "type"),
                    value: json!("soft_delete"),
                }]),
                Some("convert to `soft_delete` (sets `deleted_at`)".to_string()),
            )),
            NodeKind::Update {
                entity,
                filters,
                limit,
                one,
                ..
            } => {
                let no_where = filters.as_ref().is_none_or(Vec::is_empty);
                if no_where && limit.is_none() && !one {
                    out.push(finding(
                        "unbounded-update",
                        name,
                        id,
                        path,
                        format!("{name} is Red because node `{}` updates `{entity}` rows with neither `where` nor `limit`, so it can change every row", info.id),
                        Some(vec![Op::Add {
                            path: child(path, "limit"),
                            value: json!(max_rows),
                        }]),
                        Some(format!("add a row limit (`\"limit\": {max_rows}`), or a `where` condition")),
                    ));
                } else if !one {
                    let too_many = match limit {
                        Some(Limit::Fixed(n)) => *n > max_rows,
                        Some(Limit::Expr(_)) => true,
                        None => !pinned(spec, entity, filters.as_deref().unwrap_or_default()),
                    };
                    if too_many {
                        let op = if limit.is_some() {
                            Op::Replace {
                                path: child(path, "limit"),
                                value: json!(max_rows),
                            }
                        } else {
                            Op::Add {
                                path: child(path, "limit"),
                                value: json!(max_rows),
                            }
                        };
                        out.push(finding(
                            "high-row-impact",
                            name,
                            id,
                            path,
                            format!("{name} is Yellow because node `{}` can change more than {max_rows} `{entity}` rows at once", info.id),
                            Some(vec![op]),
                            Some(format!("limit the update to {max_rows} rows (`\"limit\": {max_rows}`), or acknowledge")),
                        ));
                    }
                }
            }
            NodeKind::Read {
                entity,
                filters,
                limit,
                one,
                ..
            } if limit.is_none() && !one && !pinned(spec, entity, filters) => {
                out.push(finding(
                    "unbounded-read",
                    name,
                    id,
                    path,
                    format!(
                        "{name} is Yellow because node `{}` reads `{entity}` rows without a limit",
                        info.id
                    ),
                    Some(vec![Op::Add {
                        path: child(path, "limit"),
                        value: json!(100),
                    }]),
                    Some("add `\"limit\": 100` (and `after` for paging)".to_string()),
                ));
            }
            NodeKind::Call {
                external,
                operation,
                timeout_ms,
                retry,
                compensate,
                ..
            } => {
                let what = format!("{external}.{operation}");
                let effects_here = side_effects(external, operation);
                effects |= effects_here;
                if retry.is_none() {
                    out.push(finding(
                        "missing-retry",
                        name,
                        id,
                        path,
                        format!("{name} is Yellow because it calls {what} without a retry"),
                        Some(vec![Op::Add {
                            path: child(path, "retry"),
                            value: json!({"max": 3, "backoff": "exponential"}),
                        }]),
                        Some("add retry (max 3 attempts, exponential backoff)".to_string()),
                    ));
                }
                if timeout_ms.is_none() {
                    let ms = tool.limits.timeout_ms.map_or(3000, |t| t.min(3000));
                    out.push(finding(
                        "missing-timeout",
                        name,
                        id,
                        path,
                        format!("{name} is Yellow because it calls {what} without a timeout"),
                        Some(vec![Op::Add {
                            path: child(path, "timeoutMs"),
                            value: json!(ms),
                        }]),
                        Some(format!("add `\"timeoutMs\": {ms}`")),
                    ));
                }
                if effects_here && info.tx.is_some() {
                    out.push(finding(
                        "external-in-transaction",
                        name,
                        id,
                        path,
                        format!("{name} is Red because it calls {what} inside a database transaction, where a rollback cannot undo it"),
                        None,
                        None,
                    ));
                }
                if effects_here
                    && before_transition
                        .get(g.vout_of(i).index())
                        .copied()
                        .unwrap_or(false)
                {
                    out.push(finding(
                        "external-in-transition",
                        name,
                        id,
                        path,
                        format!("{name} is Yellow because it calls {what} before a status transition commits"),
                        None,
                        None,
                    ));
                }
                let is_comp = comp_targets.contains(info.id)
                    || comp_ops.contains(&(external.clone(), operation.clone()));
                if effects_here && is_payment(external) && compensate.is_none() && !is_comp {
                    let key = (external.clone(), operation.clone());
                    let recovers = recovery_cache
                        .entry(key)
                        .or_insert_with(|| recovery_set(g, external, operation));
                    if !recovers.get(g.vout_of(i).index()).copied().unwrap_or(false) {
                        out.push(finding(
                            "payment-without-compensation",
                            name,
                            id,
                            path,
                            format!("{name} is Red because it calls {what} and nothing undoes that payment if a later step fails"),
                            None,
                            None,
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    for (i, kind) in g.cycle_edges() {
        let Some(info) = g.nodes.get(i) else { continue };
        let target = info
            .node
            .edges()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        out.push(finding(
            "cycle",
            name,
            Some(info.id),
            &info.node.path,
            format!("{name} is Red because its flow loops: the `{}` edge from `{}` back to `{target}` closes a cycle", kind.key(), info.id),
            None,
            Some(format!("break the cycle: remove or redirect `{}` of `{}`", kind.key(), info.id)),
        ));
    }

    if (writes || effects) && tool.idempotency_key.is_none() {
        let what = if writes {
            "writes"
        } else {
            "calls an external with side effects"
        };
        out.push(finding(
            "missing-idempotency-key",
            name,
            None,
            &tool.path,
            format!("{name} is Yellow because it {what} without an idempotency key, so a retried request could run twice"),
            Some(vec![Op::Add {
                path: child(&tool.path, "idempotencyKey"),
                value: json!("request.idempotencyKey"),
            }]),
            Some("add `\"idempotencyKey\": \"request.idempotencyKey\"`".to_string()),
        ));
    }
    if writes && tool.auth.public {
        out.push(finding(
            "public-write",
            name,
            None,
            &tool.path,
            format!(
                "{name} is Yellow because anyone can call it without signing in, and it writes data"
            ),
            Some(vec![Op::Remove {
                path: child(&child(&tool.path, "auth"), "public"),
            }]),
            Some("remove `\"public\": true`, so only signed-in callers may write".to_string()),
        ));
    }
    out
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

/// Top-level writes grouped into straight `next` chains, each write mapped
/// to the chain it belongs to.
fn write_chains(g: &ToolGraph) -> HashMap<usize, Vec<usize>> {
    let top_write = |i: usize| {
        g.nodes
            .get(i)
            .is_some_and(|n| n.tx.is_none() && n.node.kind.is_write())
    };
    let mut preds: HashMap<usize, usize> = HashMap::new();
    for n in g.nodes.iter().filter(|n| n.tx.is_none()) {
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
fn wrap_patch(g: &ToolGraph, source: &Value, chain: &[usize]) -> (Option<Vec<Op>>, Option<String>) {
    let infos: Vec<&NodeInfo> = chain.iter().filter_map(|&i| g.nodes.get(i)).collect();
    let (Some(first), Some(last), Some(flow)) = (infos.first(), infos.last(), g.flows.first())
    else {
        return (None, None);
    };
    let mut tx_id = format!("tx_{}", first.id);
    let mut n = 2;
    while g.by_id.contains_key(tx_id.as_str()) {
        tx_id = format!("tx_{}_{n}", first.id);
        n += 1;
    }
    let mut ops = Vec::new();
    for other in g.nodes.iter().filter(|n| n.tx.is_none()) {
        for (k, t) in other.node.edges() {
            if t == first.id && !infos.iter().any(|c| c.id == other.id) {
                ops.push(Op::Replace {
                    path: format!("{}{}", other.node.path, k.pointer_suffix()),
                    value: json!(tx_id),
                });
            }
        }
    }
    if flow.entry == first.id {
        ops.push(Op::Replace {
            path: child(&flow.path, "entry"),
            value: json!(tx_id),
        });
    }
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
