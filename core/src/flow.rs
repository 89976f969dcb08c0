//! Flow graphs: a tool's nodes, transaction bodies included, as one
//! directed graph (petgraph), with the analyses the loader and the risk
//! engine need: reachability, dominators (which nodes have certainly run
//! before another) and cycles (with the edge that closes each).
//!
//! Every spec node `N` becomes two vertices: `N.in` (execution reached it)
//! and `N.out` (it succeeded and its result is bound). `onError` edges leave
//! from `N.in`, so a node reached through them does not see the node that
//! failed. A transaction `T` also gets `T.err`, where failures of its body
//! (and of its commit) gather before going to `T`'s `onError` — or, without
//! one, on to the enclosing transaction's `err`.

use petgraph::algo::dominators;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{DfsEvent, EdgeRef, depth_first_search};
use std::collections::HashMap;

use crate::spec::{EdgeKind, Flow, Node, NodeKind, Tool};

/// Whether an edge is taken on success or on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Normal control flow.
    Ok,
    /// A failure going to an `onError` (or bubbling out of a body).
    Error,
}

/// An edge of the graph, with the spec edge it comes from, if any.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    /// Success or failure path.
    pub path: Path,
    /// The spec node and edge key it was written as.
    pub spec: Option<(usize, EdgeKind)>,
}

/// One node of the tool, wherever it is nested.
#[derive(Debug, Clone)]
pub struct NodeInfo<'s> {
    /// Its id.
    pub id: &'s str,
    /// The node.
    pub node: &'s Node,
    /// The index of the innermost enclosing transaction node.
    pub tx: Option<usize>,
    /// Index of the flow (0 is the top level; each body gets the next).
    pub flow: usize,
}

/// A tool's flow graph.
#[derive(Debug)]
pub struct ToolGraph<'s> {
    /// The graph itself.
    pub graph: DiGraph<(), Edge>,
    /// Where execution starts.
    pub start: NodeIndex,
    /// Every node, in document order (outer before inner).
    pub nodes: Vec<NodeInfo<'s>>,
    /// Node index by id.
    pub by_id: HashMap<&'s str, usize>,
    /// The flows: top level first, then bodies.
    pub flows: Vec<&'s Flow>,
    vin: Vec<NodeIndex>,
    vout: Vec<NodeIndex>,
    verr: HashMap<usize, NodeIndex>,
    /// Problems with edges found while building.
    pub bad_edges: Vec<BadEdge>,
}

/// An edge that does not lead to a node of its own flow.
#[derive(Debug, Clone)]
pub struct BadEdge {
    /// The node it leaves (`None` for a flow's `entry`).
    pub from: Option<usize>,
    /// The flow it is in.
    pub flow: usize,
    /// The edge key.
    pub kind: Option<EdgeKind>,
    /// The missing target.
    pub target: String,
}

/// Whether a node can fail and so take `onError`.
pub fn can_fail(kind: &NodeKind) -> bool {
    !matches!(
        kind,
        NodeKind::Let { .. }
            | NodeKind::If { .. }
            | NodeKind::Switch { .. }
            | NodeKind::Return { .. }
            | NodeKind::Fail { .. }
    )
}

impl<'s> ToolGraph<'s> {
    /// Builds the graph of a tool.
    pub fn build(tool: &'s Tool) -> ToolGraph<'s> {
        let mut g = ToolGraph {
            graph: DiGraph::new(),
            start: NodeIndex::new(0),
            nodes: Vec::new(),
            by_id: HashMap::new(),
            flows: Vec::new(),
            vin: Vec::new(),
            vout: Vec::new(),
            verr: HashMap::new(),
            bad_edges: Vec::new(),
        };
        g.start = g.graph.add_node(());
        // Collect nodes (outer flows first), iteratively.
        let mut queue: Vec<(&'s Flow, Option<usize>)> = vec![(&tool.flow, None)];
        let mut flow_tx: Vec<Option<usize>> = Vec::new();
        let mut qi = 0;
        while let Some(&(flow, tx)) = queue.get(qi) {
            qi += 1;
            let fi = g.flows.len();
            g.flows.push(flow);
            flow_tx.push(tx);
            for (id, node) in &flow.nodes {
                let idx = g.nodes.len();
                g.by_id.insert(id.as_str(), idx);
                g.nodes.push(NodeInfo {
                    id,
                    node,
                    tx,
                    flow: fi,
                });
                let vin = g.graph.add_node(());
                let vout = g.graph.add_node(());
                g.vin.push(vin);
                g.vout.push(vout);
                if let NodeKind::Transaction { body, .. } = &node.kind {
                    let err = g.graph.add_node(());
                    g.verr.insert(idx, err);
                    queue.push((body, Some(idx)));
                }
            }
        }
        let ok = Edge {
            path: Path::Ok,
            spec: None,
        };
        let fail = Edge {
            path: Path::Error,
            spec: None,
        };
        // Entries.
        for (fi, flow) in g.flows.clone().into_iter().enumerate() {
            let from = match flow_tx.get(fi).copied().flatten() {
                None => g.start,
                Some(t) => g.vin_of(t),
            };
            match g.local(fi, &flow.entry) {
                Some(e) => {
                    let to = g.vin_of(e);
                    g.graph.add_edge(from, to, ok);
                }
                None if flow.entry.is_empty() => {}
                None => g.bad_edges.push(BadEdge {
                    from: None,
                    flow: fi,
                    kind: None,
                    target: flow.entry.clone(),
                }),
            }
        }
        // Node edges.
        for i in 0..g.nodes.len() {
            let Some(info) = g.nodes.get(i).cloned() else {
                continue;
            };
            let (vin, vout) = (g.vin_of(i), g.vout_of(i));
            let kind = &info.node.kind;
            // A transaction's own `out` is reached through its body.
            if !kind.is_terminal() && !matches!(kind, NodeKind::Transaction { .. }) {
                g.graph.add_edge(vin, vout, ok);
            }
            let mut has_success_edge = false;
            for (ek, target) in info.node.edges() {
                let Some(t) = g.local(info.flow, target) else {
                    g.bad_edges.push(BadEdge {
                        from: Some(i),
                        flow: info.flow,
                        kind: Some(ek),
                        target: target.to_string(),
                    });
                    continue;
                };
                let tin = g.vin_of(t);
                if ek == EdgeKind::OnError {
                    g.graph.add_edge(
                        vin,
                        tin,
                        Edge {
                            path: Path::Error,
                            spec: Some((i, ek)),
                        },
                    );
                } else {
                    has_success_edge = true;
                    g.graph.add_edge(
                        vout,
                        tin,
                        Edge {
                            path: Path::Ok,
                            spec: Some((i, ek)),
                        },
                    );
                }
            }
            // Inside a body: a node with no way on ends the body; failures
            // go to the transaction's `err`.
            if let Some(t) = info.tx {
                let terr = g.err_of(t);
                let branches = matches!(kind, NodeKind::If { .. } | NodeKind::Switch { .. });
                if !has_success_edge && !kind.is_terminal() && !branches {
                    let tout = g.vout_of(t);
                    g.graph.add_edge(vout, tout, ok);
                    g.graph.add_edge(vout, terr, fail);
                }
                if can_fail(kind) && info.node.on_error.is_none() {
                    g.graph.add_edge(vin, terr, fail);
                }
            }
            // A transaction's `err` leads to its `onError`, else outwards.
            if let NodeKind::Transaction { .. } = kind {
                let terr = g.err_of(i);
                match info
                    .node
                    .on_error
                    .as_deref()
                    .and_then(|e| g.local(info.flow, e))
                {
                    Some(e) => {
                        let ein = g.vin_of(e);
                        g.graph.add_edge(
                            terr,
                            ein,
                            Edge {
                                path: Path::Error,
                                spec: Some((i, EdgeKind::OnError)),
                            },
                        );
                    }
                    None => {
                        if let Some(outer) = info.tx {
                            let oerr = g.err_of(outer);
                            g.graph.add_edge(terr, oerr, fail);
                        }
                    }
                }
            }
        }
        g
    }

    fn local(&self, flow: usize, id: &str) -> Option<usize> {
        let idx = *self.by_id.get(id)?;
        (self.nodes.get(idx)?.flow == flow).then_some(idx)
    }

    /// The "entered" vertex of node `i`.
    pub fn vin_of(&self, i: usize) -> NodeIndex {
        self.vin.get(i).copied().unwrap_or(self.start)
    }

    /// The "succeeded" vertex of node `i`.
    pub fn vout_of(&self, i: usize) -> NodeIndex {
        self.vout.get(i).copied().unwrap_or(self.start)
    }

    fn err_of(&self, i: usize) -> NodeIndex {
        self.verr.get(&i).copied().unwrap_or(self.start)
    }

    /// Node index of an "entered" or "succeeded" vertex.
    pub fn node_of(&self, v: NodeIndex) -> Option<usize> {
        // Vertices are allocated per node as (in, out[, err]); search the
        // compact vectors by binary search since both are increasing.
        let pos = self.vin.partition_point(|x| x.index() <= v.index());
        let i = pos.checked_sub(1)?;
        let vin = self.vin.get(i)?;
        let vout = self.vout.get(i)?;
        (v == *vin || v == *vout || self.verr.get(&i) == Some(&v)).then_some(i)
    }

    /// Vertices reachable from `roots`, following edges that `follow` allows.
    pub fn reachable(&self, roots: &[NodeIndex], follow: impl Fn(&Edge) -> bool) -> Vec<bool> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        while let Some(v) = stack.pop() {
            let Some(slot) = seen.get_mut(v.index()) else {
                continue;
            };
            if *slot {
                continue;
            }
            *slot = true;
            for e in self.graph.edges(v) {
                if follow(e.weight()) {
                    stack.push(e.target());
                }
            }
        }
        seen
    }

    /// Vertices from which some vertex of `targets` can be reached.
    pub fn reaching(&self, targets: &[NodeIndex]) -> Vec<bool> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = targets.to_vec();
        while let Some(v) = stack.pop() {
            let Some(slot) = seen.get_mut(v.index()) else {
                continue;
            };
            if *slot {
                continue;
            }
            *slot = true;
            for e in self.graph.edges_directed(v, petgraph::Direction::Incoming) {
                stack.push(e.source());
            }
        }
        seen
    }

    /// The edges that close cycles: one per cycle found by a depth-first
    /// search from the start (then from any vertex not yet visited), as
    /// (node, edge key).
    pub fn cycle_edges(&self) -> Vec<(usize, EdgeKind)> {
        let mut out = Vec::new();
        let mut starts = vec![self.start];
        starts.extend(self.vin.iter().copied());
        depth_first_search(&self.graph, starts, |event| {
            if let DfsEvent::BackEdge(u, v) = event {
                if let Some(e) = self.graph.find_edge(u, v) {
                    if let Some(w) = self.graph.edge_weight(e) {
                        if let Some(spec) = w.spec {
                            if !out.contains(&spec) {
                                out.push(spec);
                            }
                        }
                    }
                }
            }
        });
        out
    }
}

/// Constant-time "does `a` dominate `b`" over a tool graph, from the
/// dominator tree's pre/post numbering.
#[derive(Debug)]
pub struct Dominance {
    pre: Vec<u32>,
    post: Vec<u32>,
}

impl Dominance {
    /// Computes dominators from the graph's start.
    pub fn new(g: &ToolGraph) -> Dominance {
        let n = g.graph.node_count();
        let doms = dominators::simple_fast(&g.graph, g.start);
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        for v in g.graph.node_indices() {
            if let Some(d) = doms.immediate_dominator(v) {
                if let Some(c) = children.get_mut(d.index()) {
                    c.push(u32::try_from(v.index()).unwrap_or(u32::MAX));
                }
            }
        }
        let mut pre = vec![u32::MAX; n];
        let mut post = vec![0u32; n];
        let mut clock = 0u32;
        let mut stack: Vec<(u32, usize)> = vec![(u32::try_from(g.start.index()).unwrap_or(0), 0)];
        if let Some(p) = pre.get_mut(g.start.index()) {
            *p = 0;
        }
        while let Some((v, next_child)) = stack.pop() {
            let kids = children.get(v as usize).map_or(&[][..], Vec::as_slice);
            if let Some(&c) = kids.get(next_child) {
                stack.push((v, next_child + 1));
                clock += 1;
                if let Some(p) = pre.get_mut(c as usize) {
                    *p = clock;
                }
                stack.push((c, 0));
            } else {
                clock += 1;
                if let Some(p) = post.get_mut(v as usize) {
                    *p = clock;
                }
            }
        }
        Dominance { pre, post }
    }

    /// Whether `a` dominates `b` (every path from the start to `b` passes
    /// through `a`). Unreachable vertices dominate nothing and are
    /// dominated by nothing.
    pub fn dominates(&self, a: NodeIndex, b: NodeIndex) -> bool {
        let (Some(&pa), Some(&pb), Some(&qa), Some(&qb)) = (
            self.pre.get(a.index()),
            self.pre.get(b.index()),
            self.post.get(a.index()),
            self.post.get(b.index()),
        ) else {
            return false;
        };
        pa != u32::MAX && pb != u32::MAX && pa <= pb && qb <= qa
    }

    /// Whether `v` is reachable from the start.
    pub fn is_reachable(&self, v: NodeIndex) -> bool {
        self.pre.get(v.index()).is_some_and(|&p| p != u32::MAX)
    }
}
