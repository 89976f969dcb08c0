//! Flow graphs: a tool's nodes, transaction and loop bodies included, as one
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

use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::hash::IdHasher;

use crate::model::{EdgeKind, Flow, Node, NodeKind, Tool};

/// A map keyed by node ids.
pub type IdMap<'s, V> = HashMap<&'s str, V, BuildHasherDefault<IdHasher>>;

/// Adjacency in compressed rows: the edges of vertex `v` are
/// `targets[offsets[v]..offsets[v + 1]]`, in the order they were added.
#[derive(Debug, Default)]
struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
    edges: Vec<Edge>,
}

impl Csr {
    fn new(n: usize, list: impl Iterator<Item = (usize, usize, Edge)> + Clone) -> Csr {
        let mut offsets = vec![0u32; n + 1];
        for (from, _, _) in list.clone() {
            if let Some(o) = offsets.get_mut(from + 1) {
                *o += 1;
            }
        }
        for i in 0..n {
            let prev = offsets.get(i).copied().unwrap_or(0);
            if let Some(o) = offsets.get_mut(i + 1) {
                *o += prev;
            }
        }
        let m = offsets.last().copied().unwrap_or(0) as usize;
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; m];
        let mut edges = vec![
            Edge {
                path: Path::Ok,
                spec: None
            };
            m
        ];
        for (from, to, e) in list {
            let Some(slot) = fill.get_mut(from) else {
                continue;
            };
            let at = *slot as usize;
            *slot += 1;
            if let (Some(t), Some(w)) = (targets.get_mut(at), edges.get_mut(at)) {
                *t = u32::try_from(to).unwrap_or(u32::MAX);
                *w = e;
            }
        }
        Csr {
            offsets,
            targets,
            edges,
        }
    }

    fn of(&self, v: usize) -> (&[u32], &[Edge]) {
        let a = self.offsets.get(v).copied().unwrap_or(0) as usize;
        let b = self.offsets.get(v + 1).copied().unwrap_or(0) as usize;
        (
            self.targets.get(a..b).unwrap_or_default(),
            self.edges.get(a..b).unwrap_or_default(),
        )
    }
}

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
    /// The index of the innermost enclosing node with a body (a
    /// transaction or a `foreach`).
    pub parent: Option<usize>,
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
    pub by_id: IdMap<'s, usize>,
    /// The flows: top level first, then bodies.
    pub flows: Vec<&'s Flow>,
    vin: Vec<NodeIndex>,
    vout: Vec<NodeIndex>,
    verr: HashMap<usize, NodeIndex>,
    vend: HashMap<usize, NodeIndex>,
    /// Problems with edges found while building.
    pub bad_edges: Vec<BadEdge>,
    succ: Csr,
    pred: Csr,
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

/// A success edge the spec does not name (an entry, through a node, out of
/// a body).
const OK: Edge = Edge {
    path: Path::Ok,
    spec: None,
};

/// A failure edge the spec does not name (to a transaction's `err`).
const FAIL: Edge = Edge {
    path: Path::Error,
    spec: None,
};

/// How many nodes a tool has (bodies included), and how many of them are
/// transactions: what the graph's storage is sized for.
fn sizes(tool: &Tool) -> (usize, usize) {
    let (mut count, mut txs) = (0usize, 0usize);
    let mut pending = vec![&tool.flow];
    while let Some(f) = pending.pop() {
        count += f.nodes.len();
        for n in f.nodes.values() {
            if let Some(body) = n.kind.body() {
                txs += 2;
                pending.push(body);
            }
        }
    }
    (count, txs)
}

impl<'s> ToolGraph<'s> {
    /// Builds the graph of a tool.
    pub fn build(tool: &'s Tool) -> ToolGraph<'s> {
        let mut g = ToolGraph {
            graph: DiGraph::new(),
            start: NodeIndex::new(0),
            nodes: Vec::new(),
            by_id: IdMap::default(),
            flows: Vec::new(),
            vin: Vec::new(),
            vout: Vec::new(),
            verr: HashMap::new(),
            vend: HashMap::new(),
            bad_edges: Vec::new(),
            succ: Csr::default(),
            pred: Csr::default(),
        };
        let (count, txs) = sizes(tool);
        g.graph = DiGraph::with_capacity(2 * count + txs + 1, 4 * count + 2 * txs);
        g.nodes.reserve(count);
        g.vin.reserve(count);
        g.vout.reserve(count);
        g.by_id.reserve(count);
        g.start = g.graph.add_node(());
        let flow_parent = g.collect(tool);
        g.add_entries(&flow_parent);
        for i in 0..g.nodes.len() {
            g.add_node_edges(i);
        }
        g.index();
        g
    }

    /// Collects the nodes of every flow (outer flows first) with their
    /// vertices; returns each flow's parent node (`None`: the top level).
    fn collect(&mut self, tool: &'s Tool) -> Vec<Option<usize>> {
        type Queued<'s> = (&'s Flow, Option<usize>, Option<usize>);
        let mut queue: Vec<Queued<'s>> = vec![(&tool.flow, None, None)];
        let mut flow_parent: Vec<Option<usize>> = Vec::new();
        let mut qi = 0;
        while let Some(&(flow, parent, tx)) = queue.get(qi) {
            qi += 1;
            let fi = self.flows.len();
            self.flows.push(flow);
            flow_parent.push(parent);
            for (id, node) in &flow.nodes {
                let idx = self.nodes.len();
                self.by_id.insert(id.as_str(), idx);
                self.nodes.push(NodeInfo {
                    id,
                    node,
                    tx,
                    parent,
                    flow: fi,
                });
                let vin = self.graph.add_node(());
                let vout = self.graph.add_node(());
                self.vin.push(vin);
                self.vout.push(vout);
                if let Some(body) = node.kind.body() {
                    let err = self.graph.add_node(());
                    self.verr.insert(idx, err);
                    let inner_tx = match &node.kind {
                        NodeKind::Foreach { .. } => {
                            let end = self.graph.add_node(());
                            self.vend.insert(idx, end);
                            tx
                        }
                        _ => Some(idx),
                    };
                    queue.push((body, Some(idx), inner_tx));
                }
            }
        }
        flow_parent
    }

    /// The edge into each flow's entry (from the start, or from its
    /// parent's "entered" vertex); an entry naming no node of its flow is a
    /// bad edge.
    fn add_entries(&mut self, flow_parent: &[Option<usize>]) {
        for fi in 0..self.flows.len() {
            let Some(flow) = self.flows.get(fi).copied() else {
                continue;
            };
            let from = match flow_parent.get(fi).copied().flatten() {
                None => self.start,
                Some(t) => self.vin_of(t),
            };
            match self.local(fi, &flow.entry) {
                Some(e) => {
                    let to = self.vin_of(e);
                    self.graph.add_edge(from, to, OK);
                }
                None if flow.entry.is_empty() => {}
                None => self.bad_edges.push(BadEdge {
                    from: None,
                    flow: fi,
                    kind: None,
                    target: flow.entry.clone(),
                }),
            }
        }
    }

    /// The edges of node `i`: through it, along its spec's edges, out of a
    /// body, and from a transaction's or a loop's `err`. A `foreach` `F`
    /// has `F.end`, where its body's ends meet (what `collect` sees),
    /// leading to `F.out`, and an edge `F.in -> F.out` for an empty list:
    /// nothing its body binds is certainly bound after it.
    fn add_node_edges(&mut self, i: usize) {
        let Some(info) = self.nodes.get(i).cloned() else {
            return;
        };
        let (vin, vout) = (self.vin_of(i), self.vout_of(i));
        let kind = &info.node.kind;
        // A transaction's own `out` is reached through its body, a loop's
        // through its body's end or at once (no elements).
        if !kind.is_terminal() && !matches!(kind, NodeKind::Transaction { .. }) {
            self.graph.add_edge(vin, vout, OK);
        }
        if let Some(&end) = self.vend.get(&i) {
            self.graph.add_edge(end, vout, OK);
        }
        let mut has_success_edge = false;
        for (ek, target) in info.node.edges() {
            let Some(t) = self.local(info.flow, target) else {
                self.bad_edges.push(BadEdge {
                    from: Some(i),
                    flow: info.flow,
                    kind: Some(ek),
                    target: target.to_string(),
                });
                continue;
            };
            let tin = self.vin_of(t);
            if ek == EdgeKind::OnError {
                self.graph.add_edge(
                    vin,
                    tin,
                    Edge {
                        path: Path::Error,
                        spec: Some((i, ek)),
                    },
                );
            } else {
                has_success_edge = true;
                self.graph.add_edge(
                    vout,
                    tin,
                    Edge {
                        path: Path::Ok,
                        spec: Some((i, ek)),
                    },
                );
            }
        }
        // Inside a body: a node with no way on ends the body, and so
        // does a `switch` without `default` when no case holds; failures
        // go to the parent's `err`.
        if let Some(t) = info.parent {
            let terr = self.err_of(t);
            let branches = matches!(kind, NodeKind::If { .. } | NodeKind::Switch { .. });
            let no_default = matches!(kind, NodeKind::Switch { default: None, .. });
            if (!has_success_edge && !kind.is_terminal() && !branches) || no_default {
                let tout = self.end_of(t);
                self.graph.add_edge(vout, tout, OK);
                self.graph.add_edge(vout, terr, FAIL);
            }
            if can_fail(kind) && info.node.on_error.is_none() {
                self.graph.add_edge(vin, terr, FAIL);
            }
        }
        // A body's `err` leads to its node's `onError`, else outwards.
        if kind.body().is_some() {
            let terr = self.err_of(i);
            match info
                .node
                .on_error
                .as_deref()
                .and_then(|e| self.local(info.flow, e))
            {
                Some(e) => {
                    let ein = self.vin_of(e);
                    self.graph.add_edge(
                        terr,
                        ein,
                        Edge {
                            path: Path::Error,
                            spec: Some((i, EdgeKind::OnError)),
                        },
                    );
                }
                None => {
                    if let Some(outer) = info.parent {
                        let oerr = self.err_of(outer);
                        self.graph.add_edge(terr, oerr, FAIL);
                    }
                }
            }
        }
    }

    /// The successor and predecessor lists the analyses walk.
    fn index(&mut self) {
        let n = self.graph.node_count();
        let raw = self.graph.raw_edges();
        let list = raw
            .iter()
            .map(|e| (e.source().index(), e.target().index(), e.weight));
        self.succ = Csr::new(n, list.clone());
        self.pred = Csr::new(n, list.map(|(a, b, w)| (b, a, w)));
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

    /// Where the body of node `i` ends: a loop's "end" vertex (where
    /// `collect` is evaluated), a transaction's "succeeded" vertex.
    pub fn end_of(&self, i: usize) -> NodeIndex {
        self.vend
            .get(&i)
            .copied()
            .unwrap_or_else(|| self.vout_of(i))
    }

    /// How many edges enter vertex `v`.
    pub fn in_degree(&self, v: NodeIndex) -> usize {
        self.pred.of(v.index()).0.len()
    }

    /// Vertices reachable from `roots`, following edges that `follow` allows.
    pub fn reachable(&self, roots: &[NodeIndex], follow: impl Fn(&Edge) -> bool) -> Vec<bool> {
        self.search(&self.succ, roots, follow)
    }

    /// Vertices from which some vertex of `targets` can be reached.
    pub fn reaching(&self, targets: &[NodeIndex]) -> Vec<bool> {
        self.search(&self.pred, targets, |_| true)
    }

    /// Vertices from which some vertex of `targets` can be reached, on this
    /// turn of the loops around them or on a later one: the end of a
    /// `foreach` body leads back to the body's entry (the next element).
    pub fn reaching_across_turns(&self, targets: &[NodeIndex]) -> Vec<bool> {
        // A loop body's entry vertex -> the vertex where the body ends.
        let mut back: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, info) in self.nodes.iter().enumerate() {
            let (NodeKind::Foreach { .. }, Some(body), Some(&end)) =
                (&info.node.kind, info.node.kind.body(), self.vend.get(&i))
            else {
                continue;
            };
            if let Some(&e) = self.by_id.get(body.entry.as_str())
                && self.nodes.get(e).is_some_and(|n| n.parent == Some(i))
            {
                back.entry(self.vin_of(e).index())
                    .or_default()
                    .push(end.index());
            }
        }
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack: Vec<usize> = targets.iter().map(|r| r.index()).collect();
        while let Some(v) = stack.pop() {
            let Some(slot) = seen.get_mut(v) else {
                continue;
            };
            if *slot {
                continue;
            }
            *slot = true;
            stack.extend(self.pred.of(v).0.iter().map(|&t| t as usize));
            if let Some(ends) = back.get(&v) {
                stack.extend(ends.iter().copied());
            }
        }
        seen
    }

    fn search(&self, adj: &Csr, roots: &[NodeIndex], follow: impl Fn(&Edge) -> bool) -> Vec<bool> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack: Vec<u32> = roots
            .iter()
            .map(|r| u32::try_from(r.index()).unwrap_or(u32::MAX))
            .collect();
        while let Some(v) = stack.pop() {
            let Some(slot) = seen.get_mut(v as usize) else {
                continue;
            };
            if *slot {
                continue;
            }
            *slot = true;
            let (targets, edges) = adj.of(v as usize);
            for (t, e) in targets.iter().zip(edges) {
                if follow(e) {
                    stack.push(*t);
                }
            }
        }
        seen
    }

    /// Every node's place in execution order (`rank[i]` for node `i`): a
    /// topological order of the graph from the start (Kahn's algorithm,
    /// ties broken by a depth-first preorder that takes each vertex's
    /// edges in the order the node writes them: `next`, `onError`, the
    /// branches), so that it does not depend on the order of the keys of
    /// `nodes`. Edges that close a cycle are ignored; nodes the start does
    /// not reach come last, by JSON pointer.
    pub fn flow_rank(&self) -> Vec<usize> {
        const NONE: u32 = u32::MAX;
        let n = self.graph.node_count();
        let pre = self.preorder();
        let mut indeg = vec![0u32; n];
        for (v, &p) in pre.iter().enumerate() {
            if p == NONE {
                continue;
            }
            for &t in self.succ.of(v).0 {
                if let Some(d) = indeg.get_mut(t as usize) {
                    *d += 1;
                }
            }
        }
        let pre_of = |v: u32| pre.get(v as usize).copied().unwrap_or(NONE);
        let mut heap = std::collections::BinaryHeap::new();
        heap.push(std::cmp::Reverse((
            pre_of(self.start.index() as u32),
            self.start.index() as u32,
        )));
        let mut done = vec![false; n];
        let mut position = vec![usize::MAX; n];
        let mut next = 0usize;
        loop {
            while let Some(std::cmp::Reverse((_, v))) = heap.pop() {
                let Some(d) = done.get_mut(v as usize) else {
                    continue;
                };
                if *d {
                    continue;
                }
                *d = true;
                if let Some(p) = position.get_mut(v as usize) {
                    *p = next;
                }
                next += 1;
                for &t in self.succ.of(v as usize).0 {
                    if let Some(d) = indeg.get_mut(t as usize) {
                        *d = d.saturating_sub(1);
                        if *d == 0 {
                            heap.push(std::cmp::Reverse((pre_of(t), t)));
                        }
                    }
                }
            }
            // A cycle: go on from its first vertex in preorder.
            let stuck = (0..n)
                .filter(|&v| pre_of(v as u32) != NONE && !done.get(v).copied().unwrap_or(true))
                .min_by_key(|&v| pre_of(v as u32));
            let Some(v) = stuck else { break };
            heap.push(std::cmp::Reverse((pre_of(v as u32), v as u32)));
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                let p = position
                    .get(self.vin_of(i).index())
                    .copied()
                    .unwrap_or(usize::MAX);
                (p, self.nodes.get(i).map_or("", |x| x.node.path.as_str()))
            };
            key(a).cmp(&key(b))
        });
        let mut rank = vec![0usize; self.nodes.len()];
        for (r, i) in order.into_iter().enumerate() {
            if let Some(x) = rank.get_mut(i) {
                *x = r;
            }
        }
        rank
    }

    /// Each vertex's number in a depth-first preorder from the start that
    /// takes edges in the order they were added (`u32::MAX`: unreachable).
    fn preorder(&self) -> Vec<u32> {
        let n = self.graph.node_count();
        let mut pre = vec![u32::MAX; n];
        let mut clock = 0u32;
        let start = u32::try_from(self.start.index()).unwrap_or(0);
        let mut stack: Vec<(u32, u32)> = vec![(start, 0)];
        if let Some(p) = pre.get_mut(start as usize) {
            *p = clock;
        }
        while let Some((v, i)) = stack.pop() {
            let (targets, _) = self.succ.of(v as usize);
            if let Some(&t) = targets.get(i as usize) {
                stack.push((v, i + 1));
                if let Some(p) = pre.get_mut(t as usize)
                    && *p == u32::MAX
                {
                    clock += 1;
                    *p = clock;
                    stack.push((t, 0));
                }
            }
        }
        pre
    }

    /// Every edge as (from, to, edge), in the order added.
    pub fn edge_list(&self) -> impl Iterator<Item = (NodeIndex, NodeIndex, &Edge)> {
        self.graph
            .raw_edges()
            .iter()
            .map(|e| (e.source(), e.target(), &e.weight))
    }

    /// The edges that close cycles: one per back edge of an iterative
    /// depth-first search from the start (then from any vertex not yet
    /// visited), as (node, edge key).
    pub fn cycle_edges(&self) -> Vec<(usize, EdgeKind)> {
        const WHITE: u8 = 0;
        const GREY: u8 = 1;
        const BLACK: u8 = 2;
        let mut color = vec![WHITE; self.graph.node_count()];
        let mut out = Vec::new();
        // Vertices the start does not reach are searched from, by JSON
        // pointer (not by the order of the keys of `nodes`).
        let mut rest: Vec<usize> = (0..self.nodes.len()).collect();
        rest.sort_by_key(|&i| self.nodes.get(i).map_or("", |x| x.node.path.as_str()));
        let mut starts = vec![self.start];
        starts.extend(rest.into_iter().map(|i| self.vin_of(i)));
        for s in starts {
            if color.get(s.index()) != Some(&WHITE) {
                continue;
            }
            let mut stack: Vec<(u32, u32)> = vec![(u32::try_from(s.index()).unwrap_or(0), 0)];
            if let Some(c) = color.get_mut(s.index()) {
                *c = GREY;
            }
            while let Some((v, i)) = stack.pop() {
                let (targets, edges) = self.succ.of(v as usize);
                if let (Some(&t), Some(e)) = (targets.get(i as usize), edges.get(i as usize)) {
                    stack.push((v, i + 1));
                    match color.get(t as usize).copied() {
                        Some(WHITE) => {
                            if let Some(c) = color.get_mut(t as usize) {
                                *c = GREY;
                            }
                            stack.push((t, 0));
                        }
                        Some(GREY) => {
                            if let Some(spec) = e.spec
                                && !out.contains(&spec)
                            {
                                out.push(spec);
                            }
                        }
                        _ => {}
                    }
                } else if let Some(c) = color.get_mut(v as usize) {
                    *c = BLACK;
                }
            }
        }
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
    /// Computes dominators from the graph's start (Cooper, Harvey and
    /// Kennedy's iterative algorithm over reverse postorder).
    pub fn new(g: &ToolGraph) -> Dominance {
        const NONE: u32 = u32::MAX;
        let n = g.graph.node_count();
        let start = u32::try_from(g.start.index()).unwrap_or(0);
        // Postorder from the start, iteratively.
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut po = vec![NONE; n];
        let mut visited = vec![false; n];
        let mut stack: Vec<(u32, u32)> = vec![(start, 0)];
        if let Some(v) = visited.get_mut(start as usize) {
            *v = true;
        }
        while let Some((v, i)) = stack.pop() {
            let (targets, _) = g.succ.of(v as usize);
            if let Some(&t) = targets.get(i as usize) {
                stack.push((v, i + 1));
                if let Some(seen) = visited.get_mut(t as usize)
                    && !*seen
                {
                    *seen = true;
                    stack.push((t, 0));
                }
            } else {
                if let Some(p) = po.get_mut(v as usize) {
                    *p = u32::try_from(order.len()).unwrap_or(NONE);
                }
                order.push(v);
            }
        }
        let mut idom = vec![NONE; n];
        if let Some(d) = idom.get_mut(start as usize) {
            *d = start;
        }
        let pof = |v: u32| po.get(v as usize).copied().unwrap_or(NONE);
        let mut changed = true;
        while changed {
            changed = false;
            for &v in order.iter().rev() {
                if v == start {
                    continue;
                }
                let (preds, _) = g.pred.of(v as usize);
                let mut new = NONE;
                for &p in preds {
                    if idom.get(p as usize).copied().unwrap_or(NONE) == NONE {
                        continue;
                    }
                    new = if new == NONE {
                        p
                    } else {
                        let (mut a, mut b) = (p, new);
                        while a != b {
                            while pof(a) < pof(b) {
                                a = idom.get(a as usize).copied().unwrap_or(start);
                            }
                            while pof(b) < pof(a) {
                                b = idom.get(b as usize).copied().unwrap_or(start);
                            }
                        }
                        a
                    };
                }
                if let Some(d) = idom.get_mut(v as usize)
                    && new != NONE
                    && *d != new
                {
                    *d = new;
                    changed = true;
                }
            }
        }
        // The dominator tree, numbered in pre and post order.
        let mut child_count = vec![0u32; n + 1];
        for (v, &d) in idom.iter().enumerate() {
            if d != NONE
                && v != start as usize
                && let Some(c) = child_count.get_mut(d as usize + 1)
            {
                *c += 1;
            }
        }
        for i in 0..n {
            let prev = child_count.get(i).copied().unwrap_or(0);
            if let Some(c) = child_count.get_mut(i + 1) {
                *c += prev;
            }
        }
        let offsets = child_count;
        let mut fill = offsets.clone();
        let mut children = vec![0u32; offsets.last().copied().unwrap_or(0) as usize];
        for (v, &d) in idom.iter().enumerate() {
            if d != NONE
                && v != start as usize
                && let Some(slot) = fill.get_mut(d as usize)
            {
                if let Some(c) = children.get_mut(*slot as usize) {
                    *c = u32::try_from(v).unwrap_or(NONE);
                }
                *slot += 1;
            }
        }
        let kids = |v: u32| {
            let a = offsets.get(v as usize).copied().unwrap_or(0) as usize;
            let b = offsets.get(v as usize + 1).copied().unwrap_or(0) as usize;
            children.get(a..b).unwrap_or_default()
        };
        let mut pre = vec![NONE; n];
        let mut post = vec![0u32; n];
        let mut clock = 0u32;
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        if let Some(p) = pre.get_mut(start as usize) {
            *p = 0;
        }
        while let Some((v, next_child)) = stack.pop() {
            if let Some(&c) = kids(v).get(next_child) {
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
