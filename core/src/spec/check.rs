//! Semantic checks of a decoded spec: every name refers to something that
//! exists, every edge stays in its flow, every top-level path ends in
//! `return` or `fail`, and every expression names only what is in scope.

use petgraph::graph::NodeIndex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

use super::decode::{Cx, path_params};
use super::*;
use crate::diag::{Diagnostic, a, a_json, child, suggest};
use crate::expr::{self, ExprKind};
use crate::flow::{Dominance, ToolGraph};

/// What a name in an expression is bound to, as far as the loader knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// One row of an entity, with the rows it embeds.
    Row(String, super::types::Embeds),
    /// A list of rows of an entity, with the rows each embeds.
    Rows(String, super::types::Embeds),
    /// An object with these keys.
    Object(Vec<String>),
    /// A value of a known type (a loop's element of an input array, its
    /// index).
    Typed(super::types::Ty),
    /// Anything (an external's answer, …).
    Any,
}

/// The names an expression may use.
#[derive(Clone)]
pub struct Scope<'a> {
    spec: &'a Spec,
    /// `input`, `auth` and `request` are in scope.
    roots: bool,
    tool: Option<&'a Tool>,
    /// `row` is bound to a row of this entity.
    row: Option<&'a str>,
    graph: Option<(&'a ToolGraph<'a>, &'a Dominance)>,
    /// A node is in scope when its "succeeded" vertex dominates all of these.
    at: Vec<NodeIndex>,
    /// The `foreach` nodes whose bodies enclose this place (innermost
    /// first), and the names their elements are bound to.
    loops: Vec<Loop<'a>>,
    /// Paths known not to be null here (`input.from` under a filter's
    /// `when: has(input.from)`).
    pub(crate) guards: Vec<String>,
}

/// A `foreach` around the place an expression stands.
#[derive(Clone)]
pub struct Loop<'a> {
    /// The `foreach` node's index in the graph.
    node: usize,
    /// Its `as`.
    name: &'a str,
    /// `<as>_index`.
    index: String,
    /// What an element is.
    element: Binding,
    /// Whether an element may be null (a member of its list may be).
    null: bool,
}

impl<'a> Scope<'a> {
    /// `input`, `auth` and `request` only (tool-level expressions, policies).
    pub fn base(spec: &'a Spec, tool: Option<&'a Tool>) -> Scope<'a> {
        Scope {
            spec,
            roots: true,
            tool,
            row: None,
            graph: None,
            at: Vec::new(),
            loops: Vec::new(),
            guards: Vec::new(),
        }
    }

    /// `row` of `entity` only (invariants).
    pub fn row_only(spec: &'a Spec, entity: &'a str) -> Scope<'a> {
        Scope {
            spec,
            roots: false,
            tool: None,
            row: Some(entity),
            graph: None,
            at: Vec::new(),
            loops: Vec::new(),
            guards: Vec::new(),
        }
    }

    /// The node `root` names in this tool's graph: its index and its kind.
    fn bound_node(&self, root: &str) -> Option<(usize, &'a NodeKind)> {
        let (g, _) = self.graph?;
        let i = *g.by_id.get(root)?;
        Some((i, &g.nodes.get(i)?.node.kind))
    }

    /// The scope just before node `i` (or, with `end`, after its body), as
    /// it sees the places around it: the loops that enclose it (and
    /// `inner`, innermost), the guards that hold there, no `row`.
    fn around(&self, i: usize, end: bool, inner: Option<Loop<'a>>) -> Option<Scope<'a>> {
        let (g, dom) = self.graph?;
        let tool = self.tool?;
        let mut loops = enclosing_loops(self.spec, tool, g, dom, i);
        if let Some(l) = inner {
            loops.insert(0, l);
        }
        Some(Scope {
            at: vec![if end { g.end_of(i) } else { g.vin_of(i) }],
            loops,
            guards: flow_guards(g, dom, &guard_sources(g), i),
            row: None,
            ..self.clone()
        })
    }

    /// The expression a `let` node `root` holds in `field`, and the scope
    /// it is evaluated in (just before the `let`).
    pub(crate) fn let_expr(
        &self,
        root: &str,
        field: &str,
    ) -> Option<(&'a crate::expr::Expr, Scope<'a>)> {
        let (i, NodeKind::Let { values }) = self.bound_node(root)? else {
            return None;
        };
        let Some(Template::Expr(x)) = values.get(field) else {
            return None;
        };
        Some((x.ast.as_ref()?, self.around(i, false, None)?))
    }

    /// Whether a member of the list node `root` binds (a `foreach`'s
    /// elements or its `collect` values), or of the list its `let` holds
    /// in `field`, may be null, as that node saw it.
    pub(crate) fn list_members_nullable(&self, root: &str, field: Option<&str>) -> bool {
        use super::types::{may_be_null, members_may_be_null};
        let (Some((g, dom)), Some(tool), Some((i, kind))) =
            (self.graph, self.tool, self.bound_node(root))
        else {
            return false;
        };
        let this = || loop_of(self.spec, tool, g, dom, i);
        match (kind, field) {
            (NodeKind::Let { values }, Some(field)) => {
                let Some(before) = self.around(i, false, None) else {
                    return false;
                };
                match values.get(field) {
                    Some(Template::Array(items)) => items.iter().any(|t| match t {
                        Template::Literal(v) => v.is_null(),
                        Template::Expr(x) => {
                            x.ast.as_ref().is_some_and(|a| may_be_null(a, &before))
                        }
                        _ => false,
                    }),
                    Some(Template::Expr(x)) => x
                        .ast
                        .as_ref()
                        .is_some_and(|a| members_may_be_null(a, &before)),
                    _ => false,
                }
            }
            (NodeKind::Foreach { collect: None, .. }, None) => this().null,
            (
                NodeKind::Foreach {
                    collect: Some(t @ (Template::Expr(_) | Template::Literal(_))),
                    ..
                },
                None,
            ) => self
                .around(i, true, Some(this()))
                .is_some_and(|after| template_type(t, &after, "a `collect` value").1),
            _ => false,
        }
    }

    /// Whether `name` is the element of a loop around this place that may
    /// be null.
    pub(crate) fn loop_element_nullable(&self, name: &str) -> bool {
        self.loops
            .iter()
            .find(|l| l.name == name || l.index == name)
            .is_some_and(|l| l.name == name && l.null)
    }

    /// Resolves a root name.
    pub fn lookup(&self, name: &str) -> Result<Binding, String> {
        match name {
            "input" if self.roots => return Ok(Binding::Any),
            "auth" if self.roots => {
                return Ok(Binding::Object(vec![
                    "sub".into(),
                    "roles".into(),
                    "claims".into(),
                ]));
            }
            "request" if self.roots => {
                return Ok(Binding::Object(vec![
                    "id".into(),
                    "time".into(),
                    "idempotencyKey".into(),
                ]));
            }
            "row" => {
                return match self.row {
                    Some(e) => Ok(Binding::Row(e.to_string(), Vec::new())),
                    None => Err(
                        "`row` is only in scope in an update's `set` and in invariants".to_string(),
                    ),
                };
            }
            _ => {}
        }
        for l in &self.loops {
            if l.name == name {
                return Ok(l.element.clone());
            }
            if l.index == name {
                return Ok(Binding::Typed(super::types::Ty::Int));
            }
        }
        let Some((g, dom)) = self.graph else {
            return Err(format!("unknown name `{name}`"));
        };
        let Some(&idx) = g.by_id.get(name) else {
            return Err(format!("unknown name `{name}`"));
        };
        // A node in a loop's body is bound only inside it.
        let mut up = g.nodes.get(idx).and_then(|n| n.parent);
        while let Some(p) = up {
            let Some(info) = g.nodes.get(p) else { break };
            if matches!(info.node.kind, NodeKind::Foreach { .. })
                && !self.loops.iter().any(|l| l.node == p)
            {
                return Err(format!(
                    "`{name}` is bound inside the body of the `foreach` `{}`, and only there",
                    info.id
                ));
            }
            up = info.parent;
        }
        let vout = g.vout_of(idx);
        if !self.at.iter().all(|&v| dom.dominates(vout, v)) {
            return Err(format!(
                "`{name}` is not certainly bound here: it may not have run (or may have failed) on some path to this node"
            ));
        }
        let Some(info) = g.nodes.get(idx) else {
            return Ok(Binding::Any);
        };
        Ok(match &info.node.kind {
            // (`page` with `one` is an error of its own: read as `one`.)
            NodeKind::Read {
                page: true,
                one: false,
                count,
                ..
            } => {
                let mut keys = vec!["rows".to_owned(), "next".to_owned()];
                if *count {
                    keys.push("total".to_owned());
                }
                Binding::Object(keys)
            }
            NodeKind::Aggregate {
                group_by, measures, ..
            } if group_by.is_empty() => Binding::Object(measures.keys().cloned().collect()),
            NodeKind::Aggregate {
                entity,
                group_by,
                measures,
                ..
            } => Binding::Typed(super::types::Ty::Items(Box::new(group_type(
                self.spec, name, entity, group_by, measures,
            )))),
            NodeKind::Read {
                entity,
                one,
                include,
                ..
            } => {
                let embeds = embeds(self.spec, entity, include);
                if *one {
                    Binding::Row(entity.clone(), embeds)
                } else {
                    Binding::Rows(entity.clone(), embeds)
                }
            }
            NodeKind::Update { entity, one, .. } => {
                if *one {
                    Binding::Row(entity.clone(), Vec::new())
                } else {
                    Binding::Rows(entity.clone(), Vec::new())
                }
            }
            NodeKind::Create {
                entity,
                each: Some(_),
                ..
            }
            | NodeKind::Transition {
                entity,
                target: Target::Where { .. },
                ..
            }
            | NodeKind::SoftDelete {
                entity,
                target: Target::Where { .. },
            } => Binding::Rows(entity.clone(), Vec::new()),
            NodeKind::Create { entity, .. }
            | NodeKind::Transition { entity, .. }
            | NodeKind::SoftDelete { entity, .. }
            | NodeKind::Delete { entity, .. } => Binding::Row(entity.clone(), Vec::new()),
            NodeKind::Let { values } => Binding::Object(values.keys().cloned().collect()),
            NodeKind::Foreach { collect, .. } => self.foreach_binding(idx, collect.as_ref()),
            _ => Binding::Any,
        })
    }

    /// What a `foreach` binds: its elements (rows of the rows it went
    /// over, or the type of its list's elements), or the list of its
    /// `collect` values, typed as `collect` sees them after the body.
    fn foreach_binding(&self, i: usize, collect: Option<&Template>) -> Binding {
        use super::types::Ty;
        let (Some((g, dom)), Some(tool)) = (self.graph, self.tool) else {
            return Binding::Any;
        };
        let this = loop_of(self.spec, tool, g, dom, i);
        let Some(collect) = collect else {
            return match this.element {
                Binding::Row(e, inc) => Binding::Rows(e, inc),
                Binding::Typed(t) => Binding::Typed(Ty::Items(Box::new(t))),
                _ => Binding::Any,
            };
        };
        let mut loops = enclosing_loops(self.spec, tool, g, dom, i);
        loops.insert(0, this);
        let after = Scope {
            spec: self.spec,
            roots: true,
            tool: Some(tool),
            row: None,
            graph: Some((g, dom)),
            at: vec![g.end_of(i)],
            loops,
            guards: Vec::new(),
        };
        let typed = |t: &Template| template_type(t, &after, "a `collect` value");
        let element = match collect {
            Template::Object(m) => Ty::Record(
                m.iter()
                    .map(|(k, t)| {
                        let (ty, null) = typed(t);
                        (k.clone(), ty, null)
                    })
                    .collect(),
                format!(
                    "a `collect` value of `{}`",
                    g.nodes.get(i).map_or("", |n| n.id)
                ),
            ),
            other => match typed(other) {
                (t, false) => t,
                _ => Ty::Dyn,
            },
        };
        match element {
            Ty::Dyn => Binding::Any,
            Ty::Row(e, inc) => Binding::Rows(e, inc),
            t => Binding::Typed(Ty::Items(Box::new(t))),
        }
    }

    fn candidates(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if self.roots {
            out.extend(["input", "auth", "request"]);
        }
        if self.row.is_some() {
            out.push("row");
        }
        for l in &self.loops {
            out.push(l.name);
            out.push(&l.index);
        }
        if let Some((g, dom)) = self.graph {
            for (i, n) in g.nodes.iter().enumerate() {
                let vout = g.vout_of(i);
                if self.at.iter().all(|&v| dom.dominates(vout, v)) {
                    out.push(n.id);
                }
            }
        }
        out
    }

    /// The schema of input property `name`, when the input schema
    /// declares it.
    pub(crate) fn input_property(&self, name: &str) -> Option<&'a Value> {
        self.tool?.input_shape.get("properties")?.get(name)
    }

    /// Whether the input schema requires property `name`.
    pub(crate) fn input_required(&self, name: &str) -> bool {
        self.tool
            .and_then(|t| t.input_shape.get("required"))
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(name)))
    }

    /// The measure `field` of the aggregate node `root` without `groupBy`
    /// (one object of measures): what it computes, and the type of the
    /// column it reads.
    pub(crate) fn measure(
        &self,
        root: &str,
        field: &str,
    ) -> Option<(crate::model::MeasureKind, Option<FieldType>)> {
        let (g, _) = self.graph?;
        let info = g.nodes.get(*g.by_id.get(root)?)?;
        let NodeKind::Aggregate {
            entity,
            group_by,
            measures,
            ..
        } = &info.node.kind
        else {
            return None;
        };
        if !group_by.is_empty() {
            return None;
        }
        let m = measures.get(field)?;
        let column = m.field.as_deref().and_then(|f| self.column_type(entity, f));
        Some((m.kind, column))
    }

    /// The type of the object node `root` binds, where its keys' types are
    /// known: a paged read (`rows`, `next` — null on the last page —,
    /// `total`), a `let` (each value's type, and whether it may be null).
    pub(crate) fn object_type(&self, root: &str) -> Option<super::types::Ty> {
        use super::types::Ty;
        let (g, _) = self.graph?;
        let info = g.nodes.get(*g.by_id.get(root)?)?;
        let keys = match &info.node.kind {
            NodeKind::Read {
                page: true,
                one: false,
                count,
                entity,
                include,
                ..
            } => {
                let mut keys = vec![
                    (
                        "rows".to_owned(),
                        Ty::Rows(entity.clone(), embeds(self.spec, entity, include)),
                        false,
                    ),
                    ("next".to_owned(), Ty::String, true),
                ];
                if *count {
                    keys.push(("total".to_owned(), Ty::Int, false));
                }
                keys
            }
            NodeKind::Let { values } => {
                // Its values as the `let` itself sees them (before it: a
                // value reading the `let`'s own name is unbound there).
                let i = *g.by_id.get(root)?;
                let (g, dom) = self.graph?;
                let tool = self.tool?;
                let before = Scope {
                    at: vec![g.vin_of(i)],
                    loops: enclosing_loops(self.spec, tool, g, dom, i),
                    guards: Vec::new(),
                    ..self.clone()
                };
                values
                    .iter()
                    .map(|(k, t)| {
                        let (ty, null) = template_type(t, &before, &format!("`{root}.{k}`"));
                        (k.clone(), ty, null)
                    })
                    .collect()
            }
            _ => return None,
        };
        Some(Ty::Record(keys, format!("`{root}`")))
    }

    /// Whether the row node `root` binds certainly holds a value in
    /// `field`: a `create` (not `each`) or an `update` with `one` that
    /// writes it from something that cannot be null, as the node sees it.
    pub(crate) fn written_non_null(&self, root: &str, field: &str) -> bool {
        let (Some((g, dom)), Some(tool), Some((i, kind))) =
            (self.graph, self.tool, self.bound_node(root))
        else {
            return false;
        };
        let (written, row) = match kind {
            NodeKind::Create {
                values, each: None, ..
            } => (values.get(field), None),
            NodeKind::Update {
                set,
                one: true,
                entity,
                ..
            } => (set.get(field), Some(entity.as_str())),
            _ => return false,
        };
        let before = Scope {
            at: vec![g.vin_of(i)],
            loops: enclosing_loops(self.spec, tool, g, dom, i),
            guards: Vec::new(),
            row,
            ..self.clone()
        };
        match written {
            Some(Template::Expr(x)) => x
                .ast
                .as_ref()
                .is_some_and(|a| !super::types::may_be_null(a, &before)),
            Some(Template::Literal(v)) => !v.is_null(),
            Some(_) => true,
            None => false,
        }
    }

    /// Whether `request.idempotencyKey` may be null here: in a tool whose
    /// `idempotencyKey` does not read it (one that does requires the
    /// header). A cron run and a queue push always have a key, but a cron
    /// or queue tool is also callable by name (`POST /tools/{name}`, `sinew
    /// run`), where the header is optional.
    pub(crate) fn idempotency_key_optional(&self) -> bool {
        self.tool.is_some_and(|t| !t.key_from_header())
    }

    /// Whether the caller may be anonymous here (`auth.sub` null): in a
    /// `public` tool.
    pub(crate) fn anonymous(&self) -> bool {
        self.tool.is_some_and(|t| t.auth.public)
    }

    /// Whether column `field` of `entity` may hold null.
    pub(crate) fn column_nullable(&self, entity: &str, field: &str) -> bool {
        field == "deleted_at"
            || self
                .spec
                .entities
                .get(entity)
                .and_then(|e| e.fields.get(field))
                .is_some_and(|f| f.nullable)
    }

    /// The columns of entity `entity`, if it is one.
    pub(crate) fn columns(&self, entity: &str) -> Option<Vec<&'a str>> {
        self.spec.entities.get(entity).map(Entity::columns)
    }

    /// The type of column `field` of entity `entity`.
    pub(crate) fn column_type(&self, entity: &str, field: &str) -> Option<FieldType> {
        self.spec.entities.get(entity)?.column_type(field)
    }

    /// The closed set of input properties, when the input schema is closed.
    fn input_fields(&self) -> Option<Vec<&'a str>> {
        let schema = self.tool.map(|t| &t.input_shape)?;
        if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
            return None;
        }
        let props = schema.get("properties").and_then(Value::as_object);
        Some(
            props
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default(),
        )
    }
}

/// What `word` is when it is a state of a status machine or a text value
/// of an `enum` field: a word meant as text, written without quotes.
fn literal_word(spec: &Spec, word: &str) -> Option<String> {
    for (name, e) in &spec.entities {
        if let Some(sm) = &e.status {
            let is_state = sm.initial == word
                || sm
                    .transitions
                    .values()
                    .any(|t| t.to == word || t.from.iter().any(|f| f == word));
            if is_state {
                return Some(format!("a state of `{name}`"));
            }
        }
        for (fname, f) in &e.fields {
            if f.enum_values
                .as_ref()
                .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some(word)))
            {
                return Some(format!("a value of `{name}.{fname}`"));
            }
        }
    }
    None
}

/// Checks every expression of `e` against `scope`.
pub(crate) fn check_expr(cx: &mut Cx, e: &Expression, scope: &Scope) {
    let Some(ast) = &e.ast else { return };
    let errors_before = cx.errors.len();
    check_names(cx, e, ast, scope);
    // Types only where the names resolved (one error per mistake).
    if cx.errors.len() == errors_before {
        let mut found = Vec::new();
        super::types::infer(ast, scope, &mut found);
        // (A type error is also a failure on every call: once is enough.)
        if found.is_empty() {
            super::types::constant_failures(ast, &mut found);
        }
        for t in found {
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    e.path.clone(),
                    format!("in `{}`: {}", e.src, t.message),
                )
                .help(t.help)
                .span(t.span.start, t.span.end),
            );
        }
    }
}

/// The static type of an expression (`Dyn` when it has no syntax tree).
pub(crate) fn type_of(e: &Expression, scope: &Scope) -> super::types::Ty {
    match &e.ast {
        Some(ast) => super::types::infer(ast, scope, &mut Vec::new()),
        None => super::types::Ty::Dyn,
    }
}

/// A value written into a column must fit its type: `values` of a create,
/// `set` of an update.
fn check_writes(
    cx: &mut Cx,
    e: Option<&Entity>,
    entity: &str,
    (values, base): (&NameMap<Template>, &str),
    scope: &Scope,
) {
    let Some(e) = e else { return };
    for (field, t) in values {
        let Some(ft) = e.column_type(field) else {
            continue;
        };
        // A literal the field refuses: 422 on every call that writes it.
        if let (Some(v), Some(f)) = (literal_of(t), e.fields.get(field)) {
            let why = if v.is_null() {
                if f.nullable {
                    Vec::new()
                } else {
                    vec!["does not take null".to_owned()]
                }
            } else {
                f.violations(&v)
            };
            if !why.is_empty() {
                let at = match t {
                    Template::Expr(x) => x.path.clone(),
                    _ => child(base, field),
                };
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        at,
                        format!(
                            "`{entity}.{field}` {}, and this writes {v} into it: every call that gets here would answer 422",
                            why.join("; ")
                        ),
                    )
                    .help("write a value the field takes, or change the field"),
                );
                continue;
            }
        }
        let Template::Expr(x) = t else { continue };
        // A date (`format: date`) is no timestamp: every call that gets
        // here would be refused.
        if ft == FieldType::Timestamp
            && let Some(ExprKind::Member(root, prop)) = x.ast.as_ref().map(|a| &a.kind)
            && matches!(&root.kind, ExprKind::Ident(r) if r == "input")
            && scope
                .input_property(prop)
                .and_then(|p| p.get("format"))
                .and_then(Value::as_str)
                == Some("date")
        {
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    x.path.clone(),
                    format!(
                        "in `{}`: `{entity}.{field}` is a timestamp field, and the input schema's `format: date` lets only dates (`2026-05-01`) through, which are not timestamps: every call would answer 422",
                        x.src
                    ),
                )
                .help("declare the input `format: date-time`, or write the time too (`input.day + 'T00:00:00Z'`)"),
            );
            continue;
        }
        // Null into a column that does not take it (a 422 on the calls
        // that leave the input out).
        if let (Some(ast), Some(f)) = (&x.ast, e.fields.get(field))
            && !f.nullable
            && let Some(p) = super::types::unguarded_null(ast, scope)
        {
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    x.path.clone(),
                    format!(
                        "in `{}`: `{p}` may be null (an optional input property, a nullable field, or `avg`, `min`, `max` over no row), and `{entity}.{field}` does not take null",
                        x.src
                    ),
                )
                .help(format!(
                    "require it in the input schema, give a default (`{p} != null ? {p} : …`), or mark `{field}` `nullable`"
                )),
            );
            continue;
        }
        // (Each branch of a `?:` by its own type.)
        let Some(ast) = &x.ast else { continue };
        let Some(ty) = super::types::branch_types(ast, scope)
            .into_iter()
            .find(|t| !super::types::fits(ft, t))
        else {
            continue;
        };
        {
            let want = a(type_name(ft));
            let help = match (ft, &ty) {
                (FieldType::Integer, super::types::Ty::String) => {
                    format!("convert it: `int({})`", x.src)
                }
                (FieldType::Integer, _) => format!(
                    "convert it: `int({})`, or declare the input `integer`",
                    x.src
                ),
                (FieldType::String | FieldType::Uuid | FieldType::Ref, _) => {
                    format!("convert it: `string({})`", x.src)
                }
                (FieldType::Number, _) => format!("convert it: `double({})`", x.src),
                _ => format!(
                    "write {} into `{field}`",
                    super::types::Ty::a(&super::types::of_field(ft))
                ),
            };
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    x.path.clone(),
                    format!(
                        "in `{}`: `{entity}.{field}` is {want} field, but this is {}",
                        x.src,
                        ty.a()
                    ),
                )
                .help(help),
            );
        }
    }
}

fn check_names(cx: &mut Cx, e: &Expression, ast: &expr::Expr, scope: &Scope) {
    let report = |cx: &mut Cx, code: &str, span: expr::Span, message: String, help: String| {
        cx.error(
            Diagnostic::new(code, e.path.clone(), format!("in `{}`: {message}", e.src))
                .help(help)
                .span(span.start, span.end),
        );
    };
    let locals = ast.macro_scopes();
    let local = |name: &str, at: expr::Span| {
        locals
            .iter()
            .any(|(v, s)| *v == name && s.start <= at.start && at.end <= s.end)
    };
    // The roots of `google.protobuf.Timestamp` and `…Duration`.
    let mut type_roots = Vec::new();
    ast.walk(|node| {
        if let (ExprKind::Member(..), Some(("google", path))) = (&node.kind, node.as_path())
            && expr::value::type_named(&format!("google.{}", path.join("."))).is_some()
        {
            type_roots.push(node.span.start);
        }
    });
    ast.walk(|node| match &node.kind {
        ExprKind::Ident(name) if local(name, node.span) => {}
        // A type's name (`int`, `google.protobuf.Timestamp`) where nothing
        // else has it.
        ExprKind::Ident(name)
            if scope.lookup(name).is_err()
                && (expr::value::type_named(name).is_some()
                    || (name == "google" && type_roots.contains(&node.span.start))) => {}
        ExprKind::Member(inner, _)
            if matches!(&inner.kind, ExprKind::Ident(r) if local(r, inner.span)) => {}
        ExprKind::Ident(name) => {
            if let Err(msg) = scope.lookup(name) {
                let help = match literal_word(scope.spec, name) {
                    // `"status": "requested"`: a state or enum value written
                    // without quotes is text, not a name.
                    Some(what) => format!("`{name}` is {what}: as text it is quoted, `'{name}'`"),
                    None => suggest(name, scope.candidates(), "no names are in scope here"),
                };
                report(cx, "expr-scope", node.span, msg, help);
            }
        }
        ExprKind::Member(inner, field) => {
            let binding = match &inner.kind {
                ExprKind::Ident(root) => match scope.lookup(root) {
                    Ok(b) if root == "input" => match scope.input_fields() {
                        Some(fields) => Binding::Object(fields.iter().map(|s| s.to_string()).collect()),
                        None => b,
                    },
                    Ok(b) => b,
                    Err(_) => return,
                },
                ExprKind::Index(list, _) => match &list.kind {
                    ExprKind::Ident(root) => match scope.lookup(root) {
                        Ok(Binding::Rows(e, names)) => Binding::Row(e, names),
                        _ => return,
                    },
                    _ => return,
                },
                _ => return,
            };
            let root = inner.as_path().map(|(r, _)| r.to_string()).unwrap_or_default();
            match binding {
                Binding::Row(ent, embedded) => {
                    if let Some(entity) = scope.spec.entities.get(&ent)
                        && !entity.has_column(field)
                        && !embedded.iter().any(|(n, _)| n == field) {
                            report(
                                cx,
                                "unknown-field",
                                node.span,
                                format!("`{ent}` has no field `{field}`"),
                                suggest(field, entity.columns(), ""),
                            );
                        }
                }
                Binding::Rows(ent, _) => report(
                    cx,
                    "expr-type",
                    node.span,
                    format!("`{root}` is a list of `{ent}` rows, not one row"),
                    format!("use `{root}[0].{field}`, `size({root})`, or set `\"one\": true` on `{root}`"),
                ),
                Binding::Object(keys) => {
                    if !keys.iter().any(|k| k == field) {
                        let what = if root == "input" {
                            "the input schema does not declare"
                        } else {
                            "there is no"
                        };
                        report(
                            cx,
                            "unknown-field",
                            node.span,
                            format!("{what} `{root}.{field}`"),
                            suggest(field, keys.iter().map(String::as_str), ""),
                        );
                    }
                }
                Binding::Any | Binding::Typed(_) => {}
            }
        }
        ExprKind::Call { target, func, args } => {
            let Some(f) = expr::function(func) else {
                report(
                    cx,
                    "unknown-function",
                    node.span,
                    format!("unknown function `{func}`"),
                    suggest(func, expr::FUNCTIONS.iter().map(|f| f.name), ""),
                );
                return;
            };
            let (arity, form) = if target.is_some() {
                (f.method_arity, "as a method (`x.f(…)`)")
            } else {
                (f.global_arity, "as a function (`f(x)`)")
            };
            match arity {
                None => report(
                    cx,
                    "expr-type",
                    node.span,
                    format!("`{func}` cannot be called {form}"),
                    if target.is_some() {
                        format!("write `{func}(x)`")
                    } else {
                        format!("write `x.{func}(…)`")
                    },
                ),
                Some((min, max)) if args.len() < min || args.len() > max => {
                    let n = if min == max {
                        format!("{min} argument{}", if min == 1 { "" } else { "s" })
                    } else if max == usize::MAX {
                        format!("at least {min} argument{}", if min == 1 { "" } else { "s" })
                    } else {
                        format!("{min} to {max} arguments")
                    };
                    report(
                        cx,
                        "expr-type",
                        node.span,
                        format!("`{func}` takes {n}, found {}", args.len()),
                        format!("call it with {n}"),
                    );
                }
                Some(_) => {}
            }
            if expr::MACROS.contains(&func.as_str())
                && target.is_some()
                && !matches!(args.first().map(|a| &a.kind), Some(ExprKind::Ident(_)))
            {
                report(
                    cx,
                    "expr-type",
                    node.span,
                    format!("the first argument of `{func}` names the element"),
                    format!("write `list.{func}(x, …)`, with a name for `x`"),
                );
            }
            if func == "has" && !matches!(args.first().map(|a| &a.kind), Some(ExprKind::Member(..))) {
                report(
                    cx,
                    "expr-type",
                    node.span,
                    "`has` takes a field selection".to_string(),
                    "write `has(input.note)`".to_string(),
                );
            }
        }
        _ => {}
    });
}

/// The least a node certainly adds to one of a tool's budgets when it
/// succeeds: `(rows read, rows written, external calls)`.
fn certain_cost(node: &Node) -> [u64; 3] {
    // The length of a literal list (`['a', 'b']`): known before the call.
    let literal_len = |x: &Expression| match x.ast.as_ref().map(|a| &a.kind) {
        Some(ExprKind::List(items)) => u64::try_from(items.len()).ok(),
        _ => None,
    };
    match &node.kind {
        NodeKind::Create {
            each: Some((list, _)),
            ..
        } if literal_len(list).is_some() => [0, literal_len(list).unwrap_or(0), 0],
        NodeKind::Foreach { items, body, .. } if literal_len(items).is_some() => {
            let n = literal_len(items).unwrap_or(0);
            let mut best = [0; 3];
            for (m, b) in best.iter_mut().enumerate() {
                *b = most_certain(body, m, &mut HashMap::new())
                    .0
                    .saturating_mul(n);
            }
            best
        }
        // Many-row writes may match no row, or be given an empty list.
        NodeKind::Create { each: Some(_), .. }
        | NodeKind::Transition {
            target: Target::Where { .. },
            ..
        }
        | NodeKind::SoftDelete {
            target: Target::Where { .. },
            ..
        } => [0, 0, 0],
        NodeKind::Read { one: true, .. } => [1, 0, 0],
        NodeKind::Update { one: true, .. }
        | NodeKind::Create { .. }
        | NodeKind::Transition { .. }
        | NodeKind::SoftDelete { .. }
        | NodeKind::Delete { .. } => [0, 1, 0],
        NodeKind::Call { .. } => [0, 0, 1],
        NodeKind::Transaction { body, .. } => {
            let mut best = [0; 3];
            for (m, b) in best.iter_mut().enumerate() {
                *b = most_certain(body, m, &mut HashMap::new()).0;
            }
            best
        }
        _ => [0, 0, 0],
    }
}

/// The largest certain cost in budget `m` (0 rows read, 1 rows written,
/// 2 calls, 3 rows read and written) over the paths from `flow`'s entry,
/// and one such path. Cycles count once (they are reported elsewhere).
fn most_certain(
    flow: &Flow,
    m: usize,
    memo: &mut HashMap<String, (u64, Vec<String>)>,
) -> (u64, Vec<String>) {
    fn visit(
        flow: &Flow,
        id: &str,
        m: usize,
        memo: &mut HashMap<String, (u64, Vec<String>)>,
        on_stack: &mut Vec<String>,
    ) -> (u64, Vec<String>) {
        if let Some(done) = memo.get(id) {
            return done.clone();
        }
        let Some(node) = flow.nodes.get(id) else {
            return (0, Vec::new());
        };
        if on_stack.iter().any(|s| s == id) {
            return (0, Vec::new());
        }
        on_stack.push(id.to_string());
        let cost = certain_cost(node);
        let own = match m {
            3 => cost[0] + cost[1],
            i => cost.get(i).copied().unwrap_or(0),
        };
        let mut best = (own, vec![id.to_string()]);
        for (kind, target) in node.edges() {
            let (after, path) = visit(flow, target, m, memo, on_stack);
            // Along `onError` the node failed: it added nothing certain.
            let here = if kind == EdgeKind::OnError { 0 } else { own };
            if here + after > best.0 {
                let mut p = vec![id.to_string()];
                p.extend(path);
                best = (here + after, p);
            }
        }
        on_stack.pop();
        memo.insert(id.to_string(), best.clone());
        best
    }
    visit(flow, &flow.entry, m, memo, &mut Vec::new())
}

/// A budget of `limits` that some path of the flow certainly exceeds: every
/// call taking that path would fail with `limit_exceeded`, so the spec is
/// refused before it is deployed.
fn check_limits(cx: &mut Cx, tool: &Tool) {
    let l = &tool.limits;
    let budgets = [
        (l.max_rows_read, 0, "maxRowsRead", "rows read"),
        (l.max_rows_written, 1, "maxRowsWritten", "rows written"),
        (l.max_calls, 2, "maxCalls", "external calls"),
        (l.max_rows, 3, "maxRows", "rows read and written"),
    ];
    for (limit, m, key, what) in budgets {
        let Some(limit) = limit else { continue };
        let (n, path) = most_certain(&tool.flow, m, &mut HashMap::new());
        if n > limit {
            cx.error(
                Diagnostic::new(
                    "limit-exceeded",
                    format!("{}/limits/{key}", tool.path),
                    format!(
                        "`limits.{key}` is {limit}, but the path through {} certainly makes {n} {what}: every call taking it would fail",
                        path.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                    ),
                )
                .help(format!("raise `{key}` to at least {n}, or take fewer steps on that path")),
            );
        }
    }
}

/// What the format needs an expression to give at one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A row id: `transition`, `soft_delete`, `delete`.
    Id,
    /// A row count: `limit`.
    Count,
    /// A condition: `if`, `assert`, `switch`, `denyWhen`, `when`, an
    /// invariant.
    Bool,
}

/// Reports an expression that certainly gives the wrong kind of value
/// where `want` is needed (a literal of another type, a whole row where an
/// id is needed, a comparison where a count is): what would otherwise be a
/// `spec_error` on every call is found before deployment.
pub(crate) fn check_shape(cx: &mut Cx, e: &Expression, scope: &Scope, want: Want) {
    use crate::expr::{BinaryOp, Lit};
    let Some(ast) = &e.ast else { return };
    let needed = match want {
        Want::Id => "a row id (a string)",
        Want::Count => "a positive integer",
        Want::Bool => "a bool",
    };
    let found: Option<(String, String)> = match &ast.kind {
        ExprKind::Lit(l) => {
            let fits = match (want, l) {
                (Want::Id, Lit::String(_) | Lit::Null) | (Want::Bool, Lit::Bool(_)) => true,
                (Want::Count, Lit::Int(n)) => *n >= 1,
                _ => false,
            };
            (!fits).then(|| {
                (
                    format!("`{}` is a literal that is not one", e.src.trim()),
                    match want {
                        Want::Count => "write a whole number of at least 1 (`10`), or an expression over the input".to_string(),
                        Want::Id => "write the id's expression (`input.id`, `order.id`)".to_string(),
                        Want::Bool => "write a condition (`input.amount > 0`)".to_string(),
                    },
                )
            })
        }
        ExprKind::Ident(name) => match scope.lookup(name) {
            Ok(Binding::Row(ent, _)) => Some((
                format!("`{name}` is a whole `{ent}` row"),
                if want == Want::Id {
                    format!("use `{name}.id`")
                } else {
                    format!("use one of its fields (`{name}.…`)")
                },
            )),
            Ok(Binding::Rows(ent, _)) => Some((
                format!("`{name}` is a list of `{ent}` rows"),
                if want == Want::Count {
                    format!("use `size({name})`")
                } else {
                    format!("use `{name}[0].…`, or set `\"one\": true` on `{name}`")
                },
            )),
            Ok(Binding::Object(_)) => Some((
                format!("`{name}` is an object"),
                format!("use one of its fields (`{name}.…`)"),
            )),
            _ => None,
        },
        ExprKind::List(_) => Some((
            "this is a list".to_string(),
            format!("write an expression that gives {needed}"),
        )),
        ExprKind::Map(_) => Some((
            "this is a map".to_string(),
            format!("write an expression that gives {needed}"),
        )),
        ExprKind::Binary(
            BinaryOp::Or
            | BinaryOp::And
            | BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::In,
            ..,
        ) if want != Want::Bool => Some((
            "this is a condition, which gives a bool".to_string(),
            format!("write an expression that gives {needed}"),
        )),
        _ => None,
    };
    // A condition or a count that may be null (an optional input property,
    // a nullable field): a `spec_error` on the calls that leave it out.
    let found = found.or_else(|| {
        let p = super::types::unguarded_null(ast, scope)?;
        (want != Want::Id).then(|| {
            (
                format!("`{p}` may be null (an optional input property, a nullable field, a `ref` include, or `avg`, `min`, `max` over no row)"),
                format!("require it in the input schema, or give a default: `{p} != null ? {p} : …`"),
            )
        })
    });
    // Else by its static type, where the spec tells it.
    let found = found.or_else(|| {
        use super::types::Ty;
        // Each branch of a `?:` by its own type (`c ? 'a' : false`).
        let wrong_type = |t: &Ty| match want {
            Want::Bool => !matches!(t, Ty::Bool | Ty::Dyn | Ty::Null),
            // (A `number` may be 2.5: declare the input `integer`.)
            Want::Count => !matches!(t, Ty::Int | Ty::Uint | Ty::Dyn | Ty::Null),
            Want::Id => !matches!(t, Ty::String | Ty::Dyn | Ty::Null),
        };
        let t = super::types::branch_types(ast, scope)
            .into_iter()
            .find(|t| wrong_type(t))?;
        Some(t).map(|t| {
            (
                format!("this is {}", t.a()),
                match want {
                    Want::Count => format!(
                        "convert it (`int({})`), declare the input `integer`, or write a whole number",
                        e.src.trim()
                    ),
                    Want::Id => "write the id's expression (`input.id`, `order.id`)".to_string(),
                    Want::Bool => format!(
                        "compare it (`{} > 0`, `{} != ''`)",
                        e.src.trim(),
                        e.src.trim()
                    ),
                },
            )
        })
    });
    if let Some((found, help)) = found {
        cx.error(
            Diagnostic::new(
                "expr-type",
                e.path.clone(),
                format!("in `{}`: {needed} is needed here, but {found}", e.src),
            )
            .help(help),
        );
    }
}

fn check_template(cx: &mut Cx, t: &Template, scope: &Scope) {
    for e in t.expressions() {
        check_expr(cx, e, scope);
    }
}

fn check_role(cx: &mut Cx, spec: &Spec, path: &str, role: &str) {
    if let Some(roles) = &spec.roles
        && !roles.iter().any(|r| r == role)
    {
        cx.error(
            Diagnostic::new(
                "unknown-role",
                path,
                format!("role `{role}` is not declared"),
            )
            .help(suggest(
                role,
                roles.iter().map(String::as_str),
                "declare it in the top-level `roles`",
            )),
        );
    }
}

fn entity_ref<'s>(cx: &mut Cx, spec: &'s Spec, path: &str, name: &str) -> Option<&'s Entity> {
    let e = spec.entities.get(name);
    if e.is_none() {
        cx.error(
            Diagnostic::new("unknown-entity", path, format!("no entity `{name}`")).help(suggest(
                name,
                spec.entities.keys().map(String::as_str),
                "declare it under `entities`",
            )),
        );
    }
    e
}

/// The type of what a template gives in `scope`, and whether it may be
/// null: an object template is an object of its members' types (`name`
/// names it in messages).
fn template_type(t: &Template, scope: &Scope, name: &str) -> (super::types::Ty, bool) {
    use super::types::{Ty, infer, may_be_null};
    match t {
        Template::Expr(x) => match &x.ast {
            Some(ast) => (infer(ast, scope, &mut Vec::new()), may_be_null(ast, scope)),
            None => (Ty::Dyn, false),
        },
        Template::Literal(v) => (super::types::of_json(v), v.is_null()),
        Template::Object(m) => (
            Ty::Record(
                m.iter()
                    .map(|(k, t)| {
                        let (ty, null) = template_type(t, scope, &format!("{name}.{k}"));
                        (k.clone(), ty, null)
                    })
                    .collect(),
                name.to_owned(),
            ),
            false,
        ),
        Template::Array(_) => (Ty::List, false),
    }
}

/// The path of `x` when it may be null here and nothing guards it.
fn null_path(x: &Expression, scope: &Scope) -> Option<String> {
    super::types::unguarded_null(x.ast.as_ref()?, scope)
}

/// A `budgetCheck`'s `amount` must be a number: compared with the maximum,
/// anything else fails on every call.
fn check_amount(cx: &mut Cx, amount: &Expression, scope: &Scope) {
    let ty = type_of(amount, scope);
    if let Some(p) = null_path(amount, scope) {
        cx.error(
            Diagnostic::new(
                "expr-type",
                amount.path.clone(),
                format!(
                    "in `{}`: `{p}` may be null (an optional input property, a nullable field), and a budget compares numbers: the policy would fail on the calls that leave it out",
                    amount.src
                ),
            )
            .help(format!(
                "require it in the input schema, or give a default: `{p} != null ? {p} : 0`"
            )),
        );
    } else if ty.is_known() && !ty.is_numeric() {
        cx.error(
            Diagnostic::new(
                "expr-type",
                amount.path.clone(),
                format!(
                    "in `{}`: this is {}, not a number, and a budget compares numbers",
                    amount.src,
                    ty.a()
                ),
            )
            .help(format!(
                "declare the input `integer` or `number`, or convert: `int({})`",
                amount.src
            )),
        );
    }
}

/// A tool's route on a path `sinew serve` answers itself: the server's
/// answer would shadow the tool, or the tool the server's (the by-name
/// calls, Pub/Sub's pushes), while the OpenAPI document listed both.
fn check_reserved_route(
    cx: &mut Cx,
    spec: &Spec,
    tool: &crate::model::Tool,
    method: &str,
    path: &str,
) {
    let Some(reserved) = crate::model::reserved_path(path, spec.reviews.is_some()) else {
        return;
    };
    let message = if reserved == crate::model::REVIEWS_PATH {
        format!("`{path}` is where `sinew serve` answers reviews (the spec declares `reviews`)")
    } else {
        format!("`{method} {path}` is on `{reserved}`, which `sinew serve` answers itself")
    };
    let mut all: Vec<&str> = crate::model::RESERVED_PATHS.to_vec();
    if spec.reviews.is_some() {
        all.push("/reviews and below");
    }
    cx.error(
        Diagnostic::new("reserved-route", child(&tool.path, "trigger"), message).help(format!(
            "give the tool another path; the server's are {}",
            all.join(", ")
        )),
    );
}

/// The names the database gives a spec's entities: two entities on one
/// table, a table of sinew's own (`sinew_…`), or two indexes of one name
/// (tables and indexes share Postgres' namespace) would make the migration
/// skip one of them silently (`CREATE … IF NOT EXISTS`).
fn check_storage_names(cx: &mut Cx, spec: &Spec) {
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut tables = Vec::new();
    for name in spec.entities.keys() {
        let table = crate::model::table_name(name);
        let path = format!("/entities/{name}");
        if table == "sinew" || table.starts_with("sinew_") {
            cx.error(
                Diagnostic::new(
                    "invalid-name",
                    path,
                    format!(
                        "`{name}` would be table `{table}`, and `sinew_` tables are sinew's own"
                    ),
                )
                .help("rename the entity"),
            );
            continue;
        }
        if let Some(other) = taken.get(&table) {
            cx.error(
                Diagnostic::new(
                    "duplicate-name",
                    path,
                    format!("`{name}` would be table `{table}`, as {other} is"),
                )
                .help("rename one of the entities"),
            );
            continue;
        }
        taken.insert(table.clone(), format!("entity `{name}`"));
        tables.push((name, table));
    }
    for (name, table) in tables {
        let Some(e) = spec.entities.get(name) else {
            continue;
        };
        for ix in crate::model::wanted_indexes(&table, e) {
            let what = format!("the index of `{name}` on {}", ix.columns.join(", "));
            if let Some(other) = taken.get(&ix.name) {
                cx.error(
                    Diagnostic::new(
                        "duplicate-name",
                        format!("/entities/{name}"),
                        format!("{what} would be named `{}`, as {other} is", ix.name),
                    )
                    .help("rename a field or an entity (index names derive from them)"),
                );
            } else {
                taken.insert(ix.name, what);
            }
        }
    }
}

pub(crate) fn check(cx: &mut Cx, spec: &Spec) {
    for (xname, x) in &spec.externals {
        for (oname, op) in &x.operations {
            if let Some(target) = &op.compensates
                && (target == oname || !x.operations.contains_key(target))
            {
                cx.error(
                        Diagnostic::new("unknown-operation", format!("/externals/{xname}/operations/{oname}/compensates"), format!("`{xname}` has no other operation `{target}` for `{oname}` to compensate"))
                            .help(suggest(target, x.operations.keys().map(String::as_str), "")),
                    );
            }
        }
    }
    for (name, entity) in &spec.entities {
        check_entity(cx, spec, name, entity);
    }
    check_renames(cx, spec);
    check_storage_names(cx, spec);
    if let Some(cors) = &spec.cors {
        for (i, t) in cors.tools.iter().flatten().enumerate() {
            let path = format!("/cors/tools/{i}");
            match spec.tools.get(t) {
                None if !spec.broken_tools.contains(t) => {
                    cx.error(
                        Diagnostic::new("unknown-tool", path, format!("no tool `{t}`"))
                            .help(suggest(t, spec.tools.keys().map(String::as_str), "")),
                    )
                }
                Some(tool) if tool.trigger.route().is_none() => cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        path,
                        format!("`{t}` has no HTTP route for a browser to call"),
                    )
                    .help("list tools with an `http` or `webhook` trigger"),
                ),
                _ => {}
            }
        }
    }
    if let Some(reviews) = &spec.reviews {
        for (i, r) in reviews.roles.iter().enumerate() {
            check_role(cx, spec, &format!("/reviews/roles/{i}"), r);
        }
    }
    let mut routes: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut queues: BTreeMap<&str, String> = BTreeMap::new();
    for (name, tool) in &spec.tools {
        cx.tool = Some(name.clone());
        if let Some((method, path)) = tool.trigger.route() {
            check_reserved_route(cx, spec, tool, method, path);
            let shape: Vec<&str> = path
                .split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect();
            let key = (method.to_string(), shape.join("/"));
            if let Some(other) = routes.get(&key) {
                cx.error(
                    Diagnostic::new(
                        "duplicate-route",
                        child(&tool.path, "trigger"),
                        format!("`{method} {path}` is also the route of `{other}`"),
                    )
                    .help("give each tool its own method and path"),
                );
            } else {
                routes.insert(key, name.clone());
            }
        }
        if let crate::model::Trigger::Queue { name: queue } = &tool.trigger {
            if let Some(other) = queues.get(queue.as_str()) {
                cx.error(
                    Diagnostic::new(
                        "duplicate-name",
                        format!("{}/trigger/queue/name", tool.path),
                        format!("`{other}` already consumes queue `{queue}`"),
                    )
                    .help("one tool per queue: a push goes to one tool"),
                );
            } else {
                queues.insert(queue.as_str(), name.clone());
            }
        }
        check_tool(cx, spec, tool);
        cx.tool = None;
    }
    for policy in spec.policies.values() {
        if let Some(tools) = &policy.tools {
            for (i, t) in tools.iter().enumerate() {
                if !spec.tools.contains_key(t) && !spec.broken_tools.contains(t) {
                    cx.error(
                        Diagnostic::new(
                            "unknown-tool",
                            format!("{}/tools/{i}", policy.path),
                            format!("no tool `{t}`"),
                        )
                        .help(suggest(
                            t,
                            spec.tools.keys().map(String::as_str),
                            "",
                        )),
                    );
                }
            }
        }
        // A policy's expressions run in each tool it applies to: checked
        // against each one's input (a mistake is reported once).
        let tools: Vec<Option<&Tool>> = match &policy.tools {
            Some(names) => names
                .iter()
                .filter_map(|t| spec.tools.get(t))
                .map(Some)
                .collect(),
            None => spec.tools.values().map(Some).collect(),
        };
        let first = cx.errors.len();
        for tool in if tools.is_empty() { vec![None] } else { tools } {
            let scope = Scope::base(spec, tool);
            let before = cx.errors.len();
            match &policy.kind {
                PolicyKind::BudgetCheck { amount, max_amount } => {
                    check_expr(cx, amount, &scope);
                    if let Limit::Expr(e) = max_amount {
                        check_expr(cx, e, &scope);
                    }
                    if cx.errors.len() == before {
                        check_amount(cx, amount, &scope);
                        if let Limit::Expr(e) = max_amount {
                            check_amount(cx, e, &scope);
                        }
                    }
                }
                PolicyKind::Custom { when } => {
                    check_expr(cx, when, &scope);
                    check_shape(cx, when, &scope, Want::Bool);
                }
                _ => {}
            }
            // Only what no earlier tool reported.
            for d in cx.errors.split_off(before) {
                let seen = cx
                    .errors
                    .get(first..)
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e.code == d.code && e.path == d.path && e.message == d.message);
                if !seen {
                    cx.errors.push(d);
                }
            }
        }
    }
    for ack in &spec.acknowledgments {
        let Some(tool) = spec.tools.get(&ack.tool) else {
            if spec.broken_tools.contains(&ack.tool) {
                continue;
            }
            cx.error(
                Diagnostic::new(
                    "unknown-tool",
                    child(&ack.path, "tool"),
                    format!("no tool `{}`", ack.tool),
                )
                .help(suggest(
                    &ack.tool,
                    spec.tools.keys().map(String::as_str),
                    "",
                )),
            );
            continue;
        };
        if !crate::signal::SIGNALS.iter().any(|s| s.code == ack.signal) {
            cx.error(
                Diagnostic::new(
                    "unknown-signal",
                    child(&ack.path, "signal"),
                    format!("no risk signal `{}`", ack.signal),
                )
                .help(suggest(
                    &ack.signal,
                    crate::signal::SIGNALS.iter().map(|s| s.code),
                    "",
                )),
            );
        }
        if let Some(node) = &ack.node
            && tool.flow.find(node).is_none()
        {
            cx.error(
                Diagnostic::new(
                    "unknown-node",
                    child(&ack.path, "node"),
                    format!("`{}` has no node `{node}`", ack.tool),
                )
                .help(suggest(node, tool.flow.ids(), "")),
            );
        }
    }
}

fn check_entity(cx: &mut Cx, spec: &Spec, name: &str, e: &Entity) {
    check_indexes(cx, name, e);
    for (fname, f) in &e.fields {
        let fpath = child(&child(&e.path, "fields"), fname);
        if IMPLICIT_FIELDS.contains(&fname.as_str()) || (fname == "status" && e.status.is_some()) {
            cx.error(
                Diagnostic::new("reserved-field", fpath.clone(), format!("`{fname}` is a column every entity gets"))
                    .help("remove it: `id`, `version`, `created_at`, `updated_at`, `deleted_at` (and `status` with a status machine) are implicit"),
            );
        }
        if super::decode::COMBINATORS.contains(&fname.as_str()) {
            cx.error(
                Diagnostic::new(
                    "reserved-field",
                    fpath.clone(),
                    format!("`{fname}` is a combinator of `where` and cannot name a field"),
                )
                .help("rename the field: `and`, `or` and `not` are reserved"),
            );
        }
        if let Some(target) = &f.entity {
            entity_ref(cx, spec, &child(&fpath, "entity"), target);
        }
        // A default the field's own rules refuse: every create that leaves
        // the field out would answer 422, and a migration that fills the
        // column's nulls with it would fail half-way.
        if let Some(d) = &f.default {
            let why = if d.is_null() {
                (!f.nullable).then(|| vec!["cannot be null".to_owned()])
            } else {
                Some(f.violations(d)).filter(|w| !w.is_empty())
            };
            if let Some(why) = why {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(&fpath, "default"),
                        format!(
                            "the default {} of `{name}.{fname}` {}: every create that leaves the field out would answer 422",
                            crate::input::quote(d),
                            why.join(", ")
                        ),
                    )
                    .help("give a default the field's own rules allow, or change the rules"),
                );
            }
        }
    }
    if let Some(owner) = &e.owner {
        let opath = child(&e.path, "owner");
        if owner.by_ref {
            check_owner_ref(cx, spec, name, e, &opath);
        } else {
            match e.fields.get(&owner.field) {
                None => cx.error(
                    Diagnostic::new(
                        "unknown-field",
                        child(&opath, "field"),
                        format!("`{name}` has no field `{}`", owner.field),
                    )
                    .help(suggest(
                        &owner.field,
                        e.fields.keys().map(String::as_str),
                        "declare it as a string field",
                    )),
                ),
                Some(f) if !matches!(f.ty, FieldType::String | FieldType::Uuid) => cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(&opath, "field"),
                        format!(
                            "the owner field `{}` must be a `string` (it holds `{}`)",
                            owner.field,
                            owner
                                .claim
                                .as_ref()
                                .map_or("auth.sub".to_owned(), |c| format!("auth.claims.{c}"))
                        ),
                    )
                    .help("make it `\"type\": \"string\"`"),
                ),
                Some(_) => {}
            }
        }
        for (i, r) in owner.exempt.iter().enumerate() {
            check_role(cx, spec, &format!("{opath}/exempt/{i}"), r);
        }
    }
    if let Some(sm) = &e.status
        && sm.transitions.is_empty()
    {
        cx.warn(
            Diagnostic::new(
                "no-transitions",
                child(&e.path, "status"),
                format!("`{name}` has a status machine with no transitions"),
            )
            .help("add transitions, or remove the status machine"),
        );
    }
    let scope = Scope::row_only(spec, name);
    for inv in e.invariants.values() {
        check_expr(cx, inv, &scope);
        check_shape(cx, inv, &scope, Want::Bool);
    }
}

fn check_tool(cx: &mut Cx, spec: &Spec, tool: &Tool) {
    let base = Scope::base(spec, Some(tool));
    check_tool_header(cx, spec, tool, &base);
    check_limits(cx, tool);

    let g = ToolGraph::build(tool);
    report_bad_edges(cx, &g);
    let dom = Dominance::new(&g);
    let compensates = compensations(cx, &g);
    let comp_roots: Vec<NodeIndex> = compensates.keys().map(|&t| g.vin_of(t)).collect();
    let sources = guard_sources(&g);
    let from_comp = g.reachable(&comp_roots, |_| true);

    // A node that did not load (an `if` without `else`, …) or an edge to
    // nowhere leaves the graph incomplete: what follows it would look
    // unreachable and its names unbound. The cause is reported once; no
    // cascade of warnings and scope errors follows from it.
    let incomplete = !g.bad_edges.is_empty()
        || g.nodes
            .iter()
            .any(|n| matches!(n.node.kind, NodeKind::Invalid));
    for (i, info) in g.nodes.iter().enumerate() {
        let node = info.node;
        let vin = g.vin_of(i);
        let reachable = dom.is_reachable(vin);
        check_reached(cx, &g, &dom, &from_comp, incomplete, i);
        // Scope for this node's expressions.
        let mut at = Vec::new();
        if reachable && !incomplete {
            at.push(vin);
        }
        if let Some(calls) = compensates.get(&i).filter(|_| !incomplete) {
            at.extend(calls.iter().map(|&c| g.vout_of(c)));
        }
        let mut loops = enclosing_loops(spec, tool, &g, &dom, i);
        let guards = if reachable && !incomplete {
            flow_guards(&g, &dom, &sources, i)
        } else {
            Vec::new()
        };
        let scope = |row: Option<&'_ str>, at: &[NodeIndex], loops| Scope {
            spec,
            roots: true,
            tool: Some(tool),
            row: row.map(|r| {
                // Lifetimes: the entity name lives in the spec.
                spec.entities
                    .get_key_value(r)
                    .map_or("", |(k, _)| k.as_str())
            }),
            graph: Some((&g, &dom)),
            at: at.to_vec(),
            loops,
            guards: guards.clone(),
        };
        if let NodeKind::Create {
            each: Some((items, as_name)),
            ..
        } = &node.kind
        {
            // `each` is outside the create's own loop; `values` inside it.
            check_expr(cx, items, &scope(None, &at, loops.clone()));
            check_list_not_null(
                cx,
                items,
                &scope(None, &at, loops.clone()),
                "a `create` with `each`",
            );
            check_loop_names(cx, &g, &loops, info.id, node, as_name);
            loops.insert(0, loop_of(spec, tool, &g, &dom, i));
        }
        check_node(
            cx,
            spec,
            &scope(None, &at, loops.clone()),
            &scope(node.kind.entity(), &at, loops.clone()),
            node,
        );
        if let NodeKind::Foreach {
            as_name, collect, ..
        } = &node.kind
        {
            check_loop_names(cx, &g, &loops, info.id, node, as_name);
            if let Some(t) = collect {
                // `collect` sees the element and what the body bound.
                let mut inner = loops.clone();
                inner.insert(0, loop_of(spec, tool, &g, &dom, i));
                let end = if reachable && !incomplete {
                    vec![g.end_of(i)]
                } else {
                    Vec::new()
                };
                check_template(cx, t, &scope(None, &end, inner));
            }
        }
        if let NodeKind::Call {
            compensate: Some(_),
            ..
        } = &node.kind
            && !loops.is_empty()
        {
            cx.error(
                Diagnostic::new(
                    "compensate-in-loop",
                    child(&node.path, "compensate"),
                    format!(
                        "node `{}` is inside the body of a `foreach`: a compensation would run once for all its calls",
                        info.id
                    ),
                )
                .help("compensate inside the body (an `onError` there), or move the call out of the loop"),
            );
        }
    }
}

/// Where the flow proves paths non-null: after an `assert` (its "succeeded"
/// vertex), at the target of an `if` branch or a `switch` case that
/// nothing else leads to. Each with the paths its condition proves; only
/// conditions that prove some (`has(x)`, `x != null`, …) are kept, so a
/// flow without such guards costs nothing more.
fn guard_sources(g: &ToolGraph) -> Vec<(NodeIndex, Vec<String>)> {
    let mut out = Vec::new();
    let mut branch = |target: &str, paths: Vec<String>| {
        if paths.is_empty() {
            return;
        }
        if let Some(&t) = g.by_id.get(target) {
            let tin = g.vin_of(t);
            if g.in_degree(tin) == 1 {
                out.push((tin, paths));
            }
        }
    };
    let mut asserts = Vec::new();
    for (j, info) in g.nodes.iter().enumerate() {
        let proves = |e: &Expression, holds: bool| {
            e.ast
                .as_ref()
                .map(|a| super::types::guards_of(a, holds))
                .unwrap_or_default()
        };
        match &info.node.kind {
            NodeKind::Assert { that, .. } => {
                let paths = proves(that, true);
                if !paths.is_empty() {
                    asserts.push((g.vout_of(j), paths));
                }
            }
            NodeKind::If {
                cond,
                then,
                otherwise,
            } => {
                branch(then, proves(cond, true));
                branch(otherwise, proves(cond, false));
            }
            // The first case whose `when` holds wins: a case is taken
            // only when the ones before it did not hold, the default only
            // when none did.
            NodeKind::Switch { cases, default } => {
                let mut before: Vec<String> = Vec::new();
                for c in cases {
                    let mut paths = before.clone();
                    paths.extend(proves(&c.when, true));
                    branch(&c.next, paths);
                    before.extend(proves(&c.when, false));
                }
                if let Some(d) = default {
                    branch(d, before);
                }
            }
            _ => {}
        }
    }
    out.extend(asserts);
    out
}

/// The paths the flow has proven non-null before node `i` runs: those of
/// every guard source that dominates it.
fn flow_guards(
    g: &ToolGraph,
    dom: &Dominance,
    sources: &[(NodeIndex, Vec<String>)],
    i: usize,
) -> Vec<String> {
    let vin = g.vin_of(i);
    sources
        .iter()
        .filter(|(root, _)| dom.dominates(*root, vin))
        .flat_map(|(_, paths)| paths.iter().cloned())
        .collect()
}

/// The `foreach` loops whose bodies enclose node `i`, innermost first.
fn enclosing_loops<'s>(
    spec: &'s Spec,
    tool: &'s Tool,
    g: &'s ToolGraph<'s>,
    dom: &Dominance,
    i: usize,
) -> Vec<Loop<'s>> {
    let mut out = Vec::new();
    let mut up = g.nodes.get(i).and_then(|n| n.parent);
    while let Some(p) = up {
        let Some(info) = g.nodes.get(p) else { break };
        if matches!(info.node.kind, NodeKind::Foreach { .. }) {
            out.push(loop_of(spec, tool, g, dom, p));
        }
        up = info.parent;
    }
    out
}

/// The loop of `foreach` node `i`: its names, and what an element is (a
/// row when it iterates over rows a node bound, else anything).
fn loop_of<'s>(
    spec: &'s Spec,
    tool: &'s Tool,
    g: &'s ToolGraph<'s>,
    dom: &Dominance,
    i: usize,
) -> Loop<'s> {
    let info = g.nodes.get(i);
    let (name, items) = match info.map(|n| &n.node.kind) {
        Some(NodeKind::Foreach { as_name, items, .. })
        | Some(NodeKind::Create {
            each: Some((items, as_name)),
            ..
        }) => (as_name.as_str(), Some(items)),
        _ => ("", None),
    };
    // What an element is, as the scope just before the loop sees `items`:
    // a row of the rows a node bound, else the type an input array's
    // `items` gives.
    let element = match items {
        Some(x) => {
            let outer = Scope {
                spec,
                roots: true,
                tool: Some(tool),
                row: None,
                graph: Some((g, dom)),
                at: vec![g.vin_of(i)],
                loops: enclosing_loops(spec, tool, g, dom, i),
                guards: Vec::new(),
            };
            match x.ast.as_ref().map(|a| &a.kind) {
                Some(ExprKind::Ident(root)) => match outer.lookup(root) {
                    Ok(Binding::Rows(e, inc)) => Binding::Row(e, inc),
                    _ => Binding::Any,
                },
                Some(_) => match type_of(x, &outer).element() {
                    super::types::Ty::Dyn => Binding::Any,
                    e => Binding::Typed(e),
                },
                None => Binding::Any,
            }
        }
        None => Binding::Any,
    };
    // An element may be null where a member of the list may be (a literal
    // list with one that may, an input array whose `items` let null
    // through), as the guards just before the loop leave it.
    let null = items.and_then(|x| x.ast.as_ref()).is_some_and(|ast| {
        let outer = Scope {
            spec,
            roots: true,
            tool: Some(tool),
            row: None,
            graph: Some((g, dom)),
            at: vec![g.vin_of(i)],
            loops: enclosing_loops(spec, tool, g, dom, i),
            guards: flow_guards(g, dom, &guard_sources(g), i),
        };
        super::types::members_may_be_null(ast, &outer)
    });
    Loop {
        node: i,
        name,
        index: format!("{name}_index"),
        element,
        null,
    }
}

/// A loop's `as` (and `<as>_index`) must not hide another name.
fn check_loop_names(
    cx: &mut Cx,
    g: &ToolGraph,
    loops: &[Loop],
    id: &str,
    node: &Node,
    as_name: &str,
) {
    let index = format!("{as_name}_index");
    for n in [as_name, index.as_str()] {
        let taken = if matches!(n, "input" | "auth" | "request" | "row") {
            Some("a name every expression has".to_string())
        } else if g.by_id.contains_key(n) {
            Some(format!("the id of node `{n}`"))
        } else {
            loops
                .iter()
                .find(|l| l.name == n || l.index == n)
                .and_then(|l| g.nodes.get(l.node))
                .map(|outer| format!("a name of the enclosing `foreach` `{}`", outer.id))
        };
        if let Some(what) = taken {
            cx.error(
                Diagnostic::new(
                    "duplicate-name",
                    child(&node.path, "as"),
                    format!(
                        "the `foreach` `{id}` names its elements `{as_name}`, but `{n}` is {what}"
                    ),
                )
                .help("choose another `as`"),
            );
        }
    }
}

/// What a tool declares around its flow: roles, the idempotency key,
/// `denyWhen`, and path parameters the input must have.
fn check_tool_header(cx: &mut Cx, spec: &Spec, tool: &Tool, base: &Scope) {
    for (i, r) in tool.auth.roles.iter().enumerate() {
        check_role(cx, spec, &format!("{}/auth/roles/{i}", tool.path), r);
    }
    if let Some(e) = &tool.idempotency_key {
        check_expr(cx, e, base);
        check_key_varies(cx, e);
    }
    // Stripe and GitHub send no `Idempotency-Key` header: a key read from
    // it would turn every delivery away (400), and the provider would
    // deliver again and again.
    if let crate::model::Trigger::Webhook { scheme, .. } = &tool.trigger
        && let Some(provider) = match scheme {
            crate::model::WebhookScheme::Stripe => Some("Stripe"),
            crate::model::WebhookScheme::Github => Some("GitHub"),
            _ => None,
        }
        && tool.key_from_header()
    {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                child(&tool.path, "idempotencyKey"),
                format!(
                    "a webhook from {provider} sends no `Idempotency-Key` header: every delivery would be refused (400 idempotency_key_required)"
                ),
            )
            .help("key the tool on a value of the event, which a repeated delivery carries again (`input.id` for a Stripe event)"),
        );
    }
    if let Some(e) = &tool.auth.deny_when {
        check_expr(cx, e, base);
        check_shape(cx, e, base, Want::Bool);
    }
    // The scheduler runs a cron tool with the input `{}`.
    if let crate::model::Trigger::Cron { .. } = tool.trigger
        && let Some(required) = tool.input_shape.get("required").and_then(|r| r.as_array())
        && let Some(first) = required.iter().find_map(|r| r.as_str())
    {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                format!("{}/input/required", tool.path),
                format!("a cron tool runs with the input `{{}}`: it cannot require `{first}`"),
            )
            .help("make the property optional (a scheduled run gets none), or read what the run needs from the database"),
        );
    }
    if let Some((_, path)) = tool.trigger.route()
        && let Some(fields) = base.input_fields()
    {
        for p in path_params(path).unwrap_or_default() {
            if !fields.contains(&p) {
                cx.error(
                        Diagnostic::new("path-param-not-in-input", child(&tool.path, "input"), format!("the path parameter `{p}` is not a property of the input schema"))
                            .help(format!("path parameters are merged into the input: declare `{p}` under `properties`")),
                    );
            }
        }
    }
}

/// An edge (or a flow's entry) that leads to no node of its flow.
fn report_bad_edges(cx: &mut Cx, g: &ToolGraph) {
    for bad in &g.bad_edges {
        let flow = g.flows.get(bad.flow).copied();
        let (path, key) = match (bad.from, bad.kind) {
            (Some(i), Some(k)) => (
                g.nodes
                    .get(i)
                    .map(|n| format!("{}{}", n.node.path, k.pointer_suffix()))
                    .unwrap_or_default(),
                k.key(),
            ),
            _ => (
                flow.map(|f| child(&f.path, "entry")).unwrap_or_default(),
                "entry",
            ),
        };
        let elsewhere = g.by_id.contains_key(bad.target.as_str());
        let local: Vec<&str> = flow
            .map(|f| f.nodes.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let (message, help) = if elsewhere {
            (
                format!("`{key}` leads to `{}`, which is in another flow", bad.target),
                "edges stay within one flow: the top level, or one transaction body; a body ends where a node has no `next`".to_string(),
            )
        } else {
            (
                format!("`{key}` leads to `{}`, which is not a node", bad.target),
                suggest(&bad.target, local, "add the node"),
            )
        };
        cx.error(Diagnostic::new("dangling-edge", path, message).help(help));
    }
}

/// Checks each `compensate` and returns, per compensating node, the calls
/// it compensates.
fn compensations(cx: &mut Cx, g: &ToolGraph) -> HashMap<usize, Vec<usize>> {
    let mut compensates: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, info) in g.nodes.iter().enumerate() {
        if let NodeKind::Call {
            compensate: Some(target),
            ..
        } = &info.node.kind
        {
            let path = child(&info.node.path, "compensate");
            match g.by_id.get(target.as_str()) {
                None => cx.error(
                    Diagnostic::new(
                        "unknown-node",
                        path,
                        format!("`compensate` names `{target}`, which is not a node"),
                    )
                    .help(suggest(target, g.nodes.iter().map(|n| n.id), "")),
                ),
                Some(&t) if t == i => cx.error(
                    Diagnostic::new("invalid-value", path, "a call cannot compensate itself")
                        .help("name the call that undoes this one"),
                ),
                Some(&t) => {
                    let ok = g.nodes.get(t).is_some_and(|n| {
                        matches!(
                            n.node.kind,
                            NodeKind::Call { .. }
                                | NodeKind::Transaction { .. }
                                | NodeKind::Invalid
                        )
                    });
                    if ok {
                        compensates.entry(t).or_default().push(i);
                    } else {
                        cx.error(
                            Diagnostic::new("wrong-node-kind", path, format!("`compensate` names `{target}`, which is not a `call` or `transaction` node"))
                                .help("compensation undoes an effect: name a call (a refund) or a transaction"),
                        );
                    }
                }
            }
        }
    }
    compensates
}

/// Node `i` can run (`unreachable-node` unless it is a compensation or in
/// a dead transaction), and at the top level its paths end (`open-path`).
fn check_reached(
    cx: &mut Cx,
    g: &ToolGraph,
    dom: &Dominance,
    from_comp: &[bool],
    incomplete: bool,
    i: usize,
) {
    let Some(info) = g.nodes.get(i) else {
        return;
    };
    let node = info.node;
    let vin = g.vin_of(i);
    let reachable = dom.is_reachable(vin);
    // Reachability and open paths.
    if !reachable {
        let in_dead_tx = info.parent.is_some_and(|t| {
            !dom.is_reachable(g.vin_of(t))
                && !from_comp.get(g.vin_of(t).index()).copied().unwrap_or(false)
        });
        let as_comp = from_comp.get(vin.index()).copied().unwrap_or(false);
        if !as_comp && !in_dead_tx && !incomplete {
            cx.warn(
                Diagnostic::new(
                    "unreachable-node",
                    node.path.clone(),
                    format!("node `{}` can never run", info.id),
                )
                .help("connect it with `next`/`onError`, or remove it"),
            );
        }
    } else if info.parent.is_none() {
        let open = match &node.kind {
            NodeKind::Return { .. }
            | NodeKind::Fail { .. }
            | NodeKind::Invalid
            | NodeKind::If { .. } => false,
            NodeKind::Switch { default, .. } => default.is_none(),
            _ => node.next.is_none(),
        };
        if open {
            let what = if matches!(node.kind, NodeKind::Switch { .. }) {
                "has no `default`: when no case matches,"
            } else {
                "has no `next`: after it"
            };
            cx.error(
                Diagnostic::new(
                    "open-path",
                    node.path.clone(),
                    format!(
                        "node `{}` {what} the flow ends without `return` or `fail`",
                        info.id
                    ),
                )
                .help("every path at the top level ends in a `return` or `fail` node"),
            );
        }
    }
}

fn check_fields(
    cx: &mut Cx,
    entity: Option<&Entity>,
    ename: &str,
    path: &str,
    names: impl Iterator<Item = String>,
    writable: bool,
) {
    let Some(e) = entity else { return };
    for name in names {
        let p = child(path, &name);
        if writable {
            if IMPLICIT_FIELDS.contains(&name.as_str()) {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        p,
                        format!("`{name}` is maintained by sinew and cannot be set"),
                    )
                    .help("remove it"),
                );
                continue;
            }
            if name == "status" && e.status.is_some() {
                cx.error(
                    Diagnostic::new(
                        "status-outside-transition",
                        p,
                        "`status` changes only through a `transition` node",
                    )
                    .help("add a transition to the status machine and use a `transition` node"),
                );
                continue;
            }
            if !e.fields.contains_key(&name) {
                cx.error(
                    Diagnostic::new(
                        "unknown-field",
                        p,
                        format!("`{ename}` has no field `{name}`"),
                    )
                    .help(suggest(
                        &name,
                        e.fields.keys().map(String::as_str),
                        "",
                    )),
                );
            }
        } else if !e.has_column(&name) {
            cx.error(
                Diagnostic::new(
                    "unknown-field",
                    p,
                    format!("`{ename}` has no field `{name}`"),
                )
                .help(suggest(&name, e.columns(), "")),
            );
        }
    }
}

/// `unindexed-read`: a read that filters or orders its entity on columns
/// none of which leads an index (`id`, the owner field, `ref` and `unique`
/// fields, and the first column of each declared index do), so Postgres
/// reads the whole table to answer it.
fn check_indexed(
    cx: &mut Cx,
    entity: &str,
    e: &Entity,
    path: &str,
    filters: &[Where],
    order_by: &[crate::model::Order],
    implied: &[&str],
) {
    let leads = |f: &str| {
        f == "id"
            || e.owner.as_ref().is_some_and(|o| o.field == f)
            || e.fields
                .get(f)
                .is_some_and(|d| d.unique || d.ty == FieldType::Ref)
            || e.indexes
                .iter()
                .any(|ix| ix.fields.first().is_some_and(|l| l == f))
    };
    let mut used: Vec<&str> = Where::all_fields(filters)
        .iter()
        .map(|f| f.field.as_str())
        .collect();
    used.extend(order_by.iter().map(|o| o.field.as_str()));
    used.extend(implied.iter().copied());
    used.retain(|f| e.has_column(f));
    if used.is_empty() || used.iter().any(|f| leads(f)) {
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    used.retain(|f| {
        let new = !seen.contains(f);
        seen.push(f);
        new
    });
    let Some(&first) = used.first() else { return };
    let names: Vec<String> = used.iter().map(|f| format!("`{f}`")).collect();
    cx.warn(
        Diagnostic::new(
            "unindexed-read",
            path,
            format!(
                "this read of `{entity}` filters or orders on {} and no index leads with any of them: on Postgres it reads the whole table",
                names.join(", ")
            ),
        )
        .help(format!(
            "declare an index on `{entity}`: `\"indexes\": [{{\"fields\": [\"{first}\"]}}]`"
        )),
    );
}

/// `renamedFrom` on entities and fields: a former name is not a name in
/// use (an entity's table, a field or implicit column of the same entity),
/// and no two renames start from one name. Whether the former name exists
/// is the database's question (`sinew migrate` answers it).
fn check_renames(cx: &mut Cx, spec: &Spec) {
    use crate::model::table_name;
    let mut from: BTreeMap<String, &str> = BTreeMap::new();
    for (name, e) in &spec.entities {
        let Some(old) = &e.renamed_from else { continue };
        let p = child(&e.path, "renamedFrom");
        let old_table = table_name(old);
        if let Some(other) = spec.entities.keys().find(|n| table_name(n) == old_table) {
            cx.error(
                Diagnostic::new(
                    "invalid-rename",
                    p,
                    format!("`{name}` is renamed from `{old}`, but `{other}` has that table (`{old_table}`)"),
                )
                .help("a rename cannot start from a name still in use: remove `renamedFrom`, or rename the other entity first"),
            );
        } else if let Some(first) = from.insert(old_table.clone(), name) {
            cx.error(
                Diagnostic::new(
                    "invalid-rename",
                    p,
                    format!("`{first}` and `{name}` are both renamed from `{old}`"),
                )
                .help("one table can become one entity: keep `renamedFrom` on one of them"),
            );
        }
    }
    for (ename, e) in &spec.entities {
        let mut from: BTreeMap<&str, &str> = BTreeMap::new();
        for (fname, f) in &e.fields {
            let Some(old) = &f.renamed_from else { continue };
            let p = child(&child(&child(&e.path, "fields"), fname), "renamedFrom");
            if e.has_column(old) {
                cx.error(
                    Diagnostic::new(
                        "invalid-rename",
                        p,
                        format!("`{ename}.{fname}` is renamed from `{old}`, but `{old}` is a column of `{ename}`"),
                    )
                    .help("a rename cannot start from a name still in use: remove `renamedFrom`, or rename the other field first"),
                );
            } else if let Some(first) = from.insert(old, fname) {
                cx.error(
                    Diagnostic::new(
                        "invalid-rename",
                        p,
                        format!(
                            "`{ename}.{first}` and `{ename}.{fname}` are both renamed from `{old}`"
                        ),
                    )
                    .help("one column can become one field: keep `renamedFrom` on one of them"),
                );
            }
        }
    }
}

/// An entity's `indexes`: at least one column each, every one a column of
/// the entity.
fn check_indexes(cx: &mut Cx, name: &str, e: &Entity) {
    for ix in &e.indexes {
        let fpath = child(&ix.path, "fields");
        if ix.fields.is_empty() {
            cx.error(
                Diagnostic::new("invalid-value", fpath.clone(), "an index of no column")
                    .help("name its columns, leading one first: `[\"therapist\", \"start_at\"]`"),
            );
        }
        for (i, f) in ix.fields.iter().enumerate() {
            let p = child(&fpath, &i.to_string());
            // (A column named twice is `duplicate-name`, from the decoder.)
            if !e.has_column(f) {
                cx.error(
                    Diagnostic::new("unknown-field", p, format!("`{name}` has no field `{f}`"))
                        .help(suggest(f, e.columns(), "")),
                );
            }
        }
    }
}

fn check_filters(
    cx: &mut Cx,
    spec: &Spec,
    entity: Option<&Entity>,
    ename: &str,
    filters: &[Where],
    scope: &Scope,
) {
    let _ = spec;
    for f in Where::all_fields(filters) {
        let parent = f.path.rsplit_once('/').map_or("", |(p, _)| p);
        check_fields(
            cx,
            entity,
            ename,
            parent,
            std::iter::once(f.field.clone()),
            false,
        );
        // A filter's operands are evaluated only when its `when` holds.
        let mut guarded = scope.clone();
        if let Some(ast) = f.when.as_ref().and_then(|w| w.ast.as_ref()) {
            guarded.guards.extend(super::types::guards_of(ast, true));
        }
        check_template(cx, &f.value, &guarded);
        if let Some(w) = &f.when {
            check_expr(cx, w, scope);
            check_shape(cx, w, scope, Want::Bool);
        }
        check_operand(cx, entity, ename, f, &guarded);
    }
}

/// An operand that certainly does not fit its comparison: a literal that
/// is not a list for `in`/`notIn`, not a bool for `isNull`, a text
/// comparison on a field that is not a string or with a literal that is
/// not one.
fn check_operand(cx: &mut Cx, entity: Option<&Entity>, ename: &str, f: &Filter, scope: &Scope) {
    let at = child(&f.path, f.op.name());
    let literal = match &f.value {
        Template::Literal(v) => Some(a_json(v).to_owned()),
        Template::Object(_) => Some("an object".to_owned()),
        Template::Array(_) => Some("a list".to_owned()),
        Template::Expr(_) => None,
    };
    let wrong = |cx: &mut Cx, need: &str, found: &str, help: &str| {
        cx.error(
            Diagnostic::new(
                "expr-type",
                at.clone(),
                format!("`{}` needs {need}, and this is {found}", f.op.name()),
            )
            .help(help),
        );
    };
    // A literal no row can hold (a state the machine lacks, a value not
    // in the field's `enum`): a typo that matches nothing, or everything.
    if matches!(
        f.op,
        FilterOp::Eq | FilterOp::Ne | FilterOp::In | FilterOp::NotIn
    ) && let Some(e) = entity
        && let Some(allowed) = e.values_of(&f.field)
    {
        let members = literal_members(&f.value);
        if let Some(v) = members
            .iter()
            .find(|v| !v.is_null() && !allowed.contains(v))
        {
            let shown: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    at.clone(),
                    format!(
                        "no `{ename}` row has `{}` {v}: it takes {}",
                        f.field,
                        shown.join(", ")
                    ),
                )
                .help(suggest(
                    v.as_str().unwrap_or_default(),
                    allowed.iter().filter_map(Value::as_str),
                    "",
                )),
            );
        }
    }
    match f.op {
        FilterOp::In | FilterOp::NotIn => {
            if let Some(found) = literal.filter(|_| !matches!(f.value, Template::Array(_))) {
                wrong(
                    cx,
                    "a list",
                    &found,
                    "write a list (`[\"'a'\", \"'b'\"]`) or an expression that gives one (`input.statuses`)",
                );
            } else if let Template::Expr(x) = &f.value {
                let ty = type_of(x, scope);
                if let Some(p) = null_path(x, scope) {
                    cx.error(
                        Diagnostic::new(
                            "expr-type",
                            at.clone(),
                            format!(
                                "`{}` needs a list, and `{p}` may be null (an optional input property, a nullable field): the read would fail on the calls that leave it out",
                                f.op.name()
                            ),
                        )
                        .help(format!(
                            "apply the condition only when it is there (`\"when\": \"has({p})\"`), require it in the input schema, or give a default: `{p} != null ? {p} : []`"
                        )),
                    );
                } else if ty.is_known() && !ty.is_list() {
                    wrong(
                        cx,
                        "a list",
                        &format!("`{}`, {}", x.src, ty.a()),
                        "write a list (`[\"'a'\", \"'b'\"]`) or an expression that gives one (`input.statuses`)",
                    );
                }
            }
            check_members(cx, entity, ename, f, scope);
        }
        FilterOp::IsNull => match &f.value {
            Template::Literal(Value::Bool(_)) => {}
            Template::Expr(x) => check_shape(cx, x, scope, Want::Bool),
            _ => wrong(
                cx,
                "true or false",
                literal.as_deref().unwrap_or("something else"),
                "write `{\"isNull\": true}` (the field is null) or `{\"isNull\": false}`",
            ),
        },
        FilterOp::StartsWith | FilterOp::Contains | FilterOp::IContains => {
            if let Some(found) = literal {
                wrong(
                    cx,
                    "a string",
                    &found,
                    "write a string expression (`input.q`, `'abc'`)",
                );
            }
            if let Some(ty) = entity.and_then(|e| e.column_type(&f.field))
                && ty != FieldType::String
            {
                cx.error(
                    Diagnostic::new(
                        "expr-type",
                        at.clone(),
                        format!(
                            "`{}` compares text, and `{ename}.{}` is not a string field",
                            f.op.name(),
                            f.field
                        ),
                    )
                    .help("use it on a `string` field, or compare this one with eq, in, lt…"),
                );
            }
        }
        FilterOp::Lt | FilterOp::Lte | FilterOp::Gt | FilterOp::Gte
            if entity.and_then(|e| e.column_type(&f.field)) == Some(FieldType::Json) =>
        {
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    at.clone(),
                    format!(
                        "`{}` orders, and `{ename}.{}` is a json field: its values have no order",
                        f.op.name(),
                        f.field
                    ),
                )
                .help("compare a json field with eq, ne, in or isNull"),
            );
        }
        _ => {
            // A timestamp column compared with literal text that is not a
            // timestamp (`'2026-01-01'`): it matches no row, or all.
            if entity.and_then(|e| e.column_type(&f.field)) == Some(FieldType::Timestamp)
                && let Some(Value::String(text)) = literal_of(&f.value)
                && crate::expr::value::parse_timestamp(&text).is_none()
            {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        at.clone(),
                        format!(
                            "`{ename}.{}` is a timestamp field, and `'{text}'` is not an RFC 3339 timestamp: the comparison would never hold as meant",
                            f.field
                        ),
                    )
                    .help("write the full timestamp (`'2026-01-01T00:00:00Z'`)"),
                );
                return;
            }
            // eq, ne, lt, le, gt, ge: a value of another type than the
            // column's matches no row (and is no client's fault).
            let (Template::Expr(x), Some(ct)) =
                (&f.value, entity.and_then(|e| e.column_type(&f.field)))
            else {
                return;
            };
            let ty = type_of(x, scope);
            if !super::types::comparable(ct, &ty) {
                let column = a(type_name(ct));
                cx.error(
                    Diagnostic::new(
                        "expr-type",
                        at.clone(),
                        format!(
                            "in `{}`: `{ename}.{}` is {column} field, and this is {}: no row would ever match",
                            x.src,
                            f.field,
                            ty.a()
                        ),
                    )
                    .help(match ct {
                        FieldType::Integer | FieldType::Number => format!("convert it: `int({})`", x.src),
                        FieldType::String | FieldType::Uuid | FieldType::Ref => {
                            format!("convert it: `string({})`", x.src)
                        }
                        _ => "compare it with a value of the field's type".to_string(),
                    }),
                );
            }
        }
    }
}

fn check_node(cx: &mut Cx, spec: &Spec, scope: &Scope, row_scope: &Scope, node: &Node) {
    let path = node.path.as_str();
    let ent = |cx: &mut Cx, name: &str| entity_ref(cx, spec, &child(path, "entity"), name);
    match &node.kind {
        NodeKind::Read { .. } => check_read(cx, spec, scope, node),
        NodeKind::Aggregate { .. } => check_aggregate(cx, spec, scope, node),
        NodeKind::Create { .. } => check_create(cx, spec, scope, node),
        NodeKind::Update {
            entity,
            filters,
            limit,
            set,
            order_by,
            ..
        } => {
            let e = ent(cx, entity);
            check_filters(
                cx,
                spec,
                e,
                entity,
                filters.as_deref().unwrap_or_default(),
                scope,
            );
            if let Some(e) = e {
                check_order(cx, entity, e, path, order_by);
            }
            check_fields(
                cx,
                e,
                entity,
                &child(path, "set"),
                set.keys().cloned(),
                true,
            );
            for t in set.values() {
                check_template(cx, t, row_scope);
            }
            check_writes(cx, e, entity, (set, &child(path, "set")), row_scope);
            if let Some(Limit::Expr(x)) = limit {
                check_expr(cx, x, scope);
                check_shape(cx, x, scope, Want::Count);
            }
        }
        NodeKind::Transition { .. } => check_transition(cx, spec, scope, node),
        NodeKind::SoftDelete { entity, .. } => {
            let e = ent(cx, entity);
            check_target(cx, spec, scope, e, node);
        }
        NodeKind::Delete { entity, id } => {
            check_expr(cx, id, scope);
            check_shape(cx, id, scope, Want::Id);
            ent(cx, entity);
        }
        NodeKind::Let { values } => {
            for t in values.values() {
                check_template(cx, t, scope);
            }
        }
        NodeKind::Assert { that, message, .. } => {
            check_expr(cx, that, scope);
            check_shape(cx, that, scope, Want::Bool);
            if let Some(m) = message {
                check_expr(cx, m, scope);
            }
        }
        NodeKind::If { cond, .. } => {
            check_expr(cx, cond, scope);
            check_shape(cx, cond, scope, Want::Bool);
        }
        NodeKind::Switch { cases, .. } => {
            for c in cases {
                check_expr(cx, &c.when, scope);
                check_shape(cx, &c.when, scope, Want::Bool);
            }
        }
        NodeKind::Call { .. } | NodeKind::Emit { .. } => check_call(cx, spec, scope, node),
        NodeKind::Return { value, .. } => {
            if let Some(v) = value {
                check_template(cx, v, scope);
            }
            if let Some(tool) = scope.tool {
                let mut found = Vec::new();
                match value {
                    Some(v) => output_mismatches(
                        v,
                        &crate::json_schema::resolved(&tool.output),
                        scope,
                        "",
                        &mut found,
                    ),
                    None => {
                        if refuses(&tool.output, "null") {
                            found.push((
                                String::new(),
                                "a `return` without `value` returns null, which the output schema refuses".to_string(),
                            ));
                        }
                    }
                }
                for (at, why) in found {
                    let at = if at.is_empty() {
                        "the result".to_string()
                    } else {
                        format!("`{at}`")
                    };
                    cx.error(
                        Diagnostic::new(
                            "output-mismatch",
                            child(path, "value"),
                            if why.contains("would answer 500") {
                                format!("{at}: {why}")
                            } else {
                                format!("{at}: {why}; every call that ends here would answer 500 `invalid_output`")
                            },
                        )
                        .help("return what the tool's `output` schema describes, or change the schema"),
                    );
                }
            }
        }
        NodeKind::Fail { message, .. } => {
            if let Some(m) = message {
                check_expr(cx, m, scope);
            }
        }
        NodeKind::Foreach {
            items, max_items, ..
        } => {
            check_expr(cx, items, scope);
            check_list_not_null(cx, items, scope, "a `foreach`");
            if let Some(ExprKind::List(list)) = items.ast.as_ref().map(|a| &a.kind)
                && list.len() as u64 > *max_items
            {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        child(path, "maxItems"),
                        format!(
                            "the `foreach` goes over a literal list of {} items and accepts at most {max_items}: every call would answer 422 `too_many_items`",
                            list.len()
                        ),
                    )
                    .help(format!("raise `maxItems` to at least {}", list.len())),
                );
            }
            let ty = type_of(items, scope);
            if ty.is_known() && !ty.is_list() {
                cx.error(
                    Diagnostic::new(
                        "expr-type",
                        items.path.clone(),
                        format!(
                            "in `{}`: a `foreach` goes over a list, and this is {}",
                            items.src,
                            ty.a()
                        ),
                    )
                    .help("give it a list (an input array, a read's rows, `x.map(…)`)"),
                );
            }
        }
        NodeKind::Sql { .. } | NodeKind::Transaction { .. } | NodeKind::Invalid => {}
    }
}

/// `read`: entity, filters, orderBy, limit and cursor.
fn check_read(cx: &mut Cx, spec: &Spec, scope: &Scope, node: &Node) {
    let NodeKind::Read {
        entity,
        filters,
        order_by,
        limit,
        after,
        include,
        ..
    } = &node.kind
    else {
        return;
    };
    let path = node.path.as_str();
    let ent = |cx: &mut Cx, name: &str| entity_ref(cx, spec, &child(path, "entity"), name);
    let e = ent(cx, entity);
    check_filters(cx, spec, e, entity, filters, scope);
    if let Some(e) = e {
        check_indexed(cx, entity, e, path, filters, order_by, &[]);
        check_order(cx, entity, e, path, order_by);
        check_includes(cx, spec, scope, entity, e, include);
    }
    if let Some(Limit::Expr(x)) = limit {
        check_expr(cx, x, scope);
        check_shape(cx, x, scope, Want::Count);
    }
    if let Some(x) = after {
        check_expr(cx, x, scope);
        check_shape(cx, x, scope, Want::Id);
        // A cursor comes from a previous page's `next` (or a row's id):
        // text the spec writes itself is refused on every call.
        if let Some(Value::String(text)) = x.ast.as_ref().and_then(literal_expr)
            && !text.is_empty()
        {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    x.path.clone(),
                    format!("`after` is the literal `'{text}'`: no page starts after it, and every call would be refused as a bad cursor"),
                )
                .help("give the `next` of the previous page from the input (`input.after`), or `null` for the first page"),
            );
        }
    }
}

/// `owner: {"ref": field}`: a `ref` field, to an entity with an owner,
/// whose chain of owner references ends at an owner field within three
/// hops.
fn check_owner_ref(cx: &mut Cx, spec: &Spec, name: &str, e: &Entity, opath: &str) {
    let Some(owner) = &e.owner else { return };
    let p = child(opath, "ref");
    let Some(f) = e
        .fields
        .get(&owner.field)
        .filter(|f| f.ty == FieldType::Ref)
    else {
        cx.error(
            Diagnostic::new(
                if e.fields.contains_key(&owner.field) {
                    "invalid-value"
                } else {
                    "unknown-field"
                },
                p,
                format!("`{name}.{}` is not a `ref` field", owner.field),
            )
            .help(suggest_ref_fields(e, &owner.field)),
        );
        return;
    };
    let mut chain = vec![name.to_owned()];
    let mut at = f.entity.clone();
    while let Some(target) = at {
        let Some(te) = spec.entities.get(&target) else {
            return;
        };
        if chain.contains(&target) {
            chain.push(target);
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    p,
                    format!("ownership goes round in a circle: {}", chain.join(" → ")),
                )
                .help("end the chain at an entity whose owner is a `field`"),
            );
            return;
        }
        chain.push(target.clone());
        match &te.owner {
            None => {
                cx.error(
                    Diagnostic::new(
                        "invalid-value",
                        p,
                        format!("`{target}` has no owner, so it cannot give `{name}` one"),
                    )
                    .help(format!(
                        "give `{target}` an `owner`, or point `ref` at a field to an owned entity"
                    )),
                );
                return;
            }
            Some(o) if o.by_ref => {
                at = te.fields.get(&o.field).and_then(|f| f.entity.clone());
            }
            Some(_) => at = None,
        }
        if chain.len() > crate::model::MAX_OWNER_HOPS + 1 {
            cx.error(
                Diagnostic::new(
                    "invalid-value",
                    p,
                    format!(
                        "ownership takes more than {} hops: {}",
                        crate::model::MAX_OWNER_HOPS,
                        chain.join(" → ")
                    ),
                )
                .help("point `ref` at an entity nearer to the owner field"),
            );
            return;
        }
    }
}

/// An `orderBy`'s fields are columns of the entity, and not `json` ones
/// (their values have no order every engine shares).
fn check_order(cx: &mut Cx, entity: &str, e: &Entity, path: &str, order_by: &[Order]) {
    for (i, o) in order_by.iter().enumerate() {
        if !e.has_column(&o.field) {
            cx.error(
                Diagnostic::new(
                    "unknown-field",
                    format!("{path}/orderBy/{i}"),
                    format!("`{entity}` has no field `{}`", o.field),
                )
                .help(suggest(&o.field, e.columns(), "")),
            );
        } else if e.column_type(&o.field) == Some(FieldType::Json) {
            cx.error(
                Diagnostic::new(
                    "expr-type",
                    format!("{path}/orderBy/{i}"),
                    format!(
                        "`{entity}.{}` is a json field: its values have no order",
                        o.field
                    ),
                )
                .help("order by a field of another type"),
            );
        }
    }
}

/// A read's includes: names that are not columns, `ref` on a `ref` field,
/// `from` an entity whose `by` is a `ref` to this one, their filters,
/// order and limit, and their own includes.
fn check_includes(
    cx: &mut Cx,
    spec: &Spec,
    scope: &Scope,
    entity: &str,
    e: &Entity,
    include: &[crate::model::Include],
) {
    use crate::model::IncludeLink;
    for inc in include {
        let p = inc.path.as_str();
        if e.has_column(&inc.name) {
            cx.error(
                Diagnostic::new(
                    "duplicate-name",
                    p,
                    format!(
                        "the include `{}` has the name of a field of `{entity}`",
                        inc.name
                    ),
                )
                .help(format!("name it otherwise: `{}_row`", inc.name)),
            );
        }
        let target = match &inc.link {
            IncludeLink::Ref(field) => match e.fields.get(field) {
                Some(f) if f.ty == FieldType::Ref => f.entity.as_deref(),
                Some(_) => {
                    cx.error(
                        Diagnostic::new(
                            "invalid-value",
                            child(p, "ref"),
                            format!("`{entity}.{field}` is not a `ref` field"),
                        )
                        .help(suggest_ref_fields(e, field)),
                    );
                    None
                }
                None => {
                    cx.error(
                        Diagnostic::new(
                            "unknown-field",
                            child(p, "ref"),
                            format!("`{entity}` has no field `{field}`"),
                        )
                        .help(suggest_ref_fields(e, field)),
                    );
                    None
                }
            },
            IncludeLink::From { entity: from, by } => {
                let te = entity_ref(cx, spec, &child(p, "from"), from);
                if let Some(te) = te {
                    match te.fields.get(by) {
                        Some(f)
                            if f.ty == FieldType::Ref && f.entity.as_deref() == Some(entity) => {}
                        Some(_) => cx.error(
                            Diagnostic::new(
                                "invalid-value",
                                child(p, "by"),
                                format!("`{from}.{by}` is not a `ref` to `{entity}`"),
                            )
                            .help(suggest_refs_to(te, entity, by)),
                        ),
                        None => cx.error(
                            Diagnostic::new(
                                "unknown-field",
                                child(p, "by"),
                                format!("`{from}` has no field `{by}`"),
                            )
                            .help(suggest_refs_to(te, entity, by)),
                        ),
                    }
                }
                te.map(|_| from.as_str())
            }
        };
        let Some(tname) = target else { continue };
        let te = spec.entities.get(tname);
        check_filters(cx, spec, te, tname, &inc.filters, scope);
        if let Some(Limit::Expr(x)) = &inc.limit {
            check_expr(cx, x, scope);
            check_shape(cx, x, scope, Want::Count);
        }
        if let Some(te) = te {
            check_order(cx, tname, te, p, &inc.order_by);
            check_includes(cx, spec, scope, tname, te, &inc.include);
        }
    }
}

/// "Did you mean" among an entity's `ref` fields.
fn suggest_ref_fields(e: &Entity, field: &str) -> String {
    let refs: Vec<&str> = e
        .fields
        .iter()
        .filter(|(_, f)| f.ty == FieldType::Ref)
        .map(|(n, _)| n.as_str())
        .collect();
    suggest(
        field,
        refs,
        "an include follows a `ref` field, and this entity has none",
    )
}

/// "Did you mean" among the fields of `e` that are `ref`s to `to`.
fn suggest_refs_to(e: &Entity, to: &str, field: &str) -> String {
    let refs: Vec<&str> = e
        .fields
        .iter()
        .filter(|(_, f)| f.ty == FieldType::Ref && f.entity.as_deref() == Some(to))
        .map(|(n, _)| n.as_str())
        .collect();
    suggest(
        field,
        refs,
        &format!("`by` names a `ref` field to `{to}`, and there is none: add one"),
    )
}

/// `aggregate`: entity, filters, groups, measures on fields of the types
/// they take, an order over groups or measures, limit.
fn check_aggregate(cx: &mut Cx, spec: &Spec, scope: &Scope, node: &Node) {
    use crate::model::MeasureKind;
    let NodeKind::Aggregate {
        entity,
        filters,
        group_by,
        measures,
        order_by,
        limit,
        ..
    } = &node.kind
    else {
        return;
    };
    let path = node.path.as_str();
    let e = entity_ref(cx, spec, &child(path, "entity"), entity);
    check_filters(cx, spec, e, entity, filters, scope);
    if let Some(e) = e {
        let grouped: Vec<crate::model::Order> = group_by
            .iter()
            .map(|f| crate::model::Order {
                field: f.clone(),
                desc: false,
            })
            .collect();
        check_indexed(cx, entity, e, path, filters, &grouped, &[]);
        for (i, f) in group_by.iter().enumerate() {
            let p = child(&child(path, "groupBy"), &i.to_string());
            match e.column_type(f) {
                None => cx.error(
                    Diagnostic::new("unknown-field", p, format!("`{entity}` has no field `{f}`"))
                        .help(suggest(f, e.columns(), "")),
                ),
                Some(FieldType::Json) => cx.error(
                    Diagnostic::new(
                        "expr-type",
                        p,
                        format!("`{entity}.{f}` is a json field: its values make no groups"),
                    )
                    .help("group by a field of another type"),
                ),
                Some(_) => {}
            }
        }
        for (name, m) in measures {
            if group_by.contains(name) {
                cx.error(
                    Diagnostic::new(
                        "duplicate-name",
                        m.path.clone(),
                        format!("`{name}` is a `groupBy` field and a measure"),
                    )
                    .help("name the measure otherwise"),
                );
            }
            let Some(f) = &m.field else { continue };
            let p = child(&m.path, m.kind.name());
            let Some(ty) = e.column_type(f) else {
                cx.error(
                    Diagnostic::new("unknown-field", p, format!("`{entity}` has no field `{f}`"))
                        .help(suggest(f, e.columns(), "")),
                );
                continue;
            };
            let fits = match m.kind {
                MeasureKind::Count => true,
                MeasureKind::Sum | MeasureKind::Avg => ty == FieldType::Integer,
                MeasureKind::Min | MeasureKind::Max => matches!(
                    ty,
                    FieldType::Integer
                        | FieldType::Number
                        | FieldType::String
                        | FieldType::Timestamp
                ),
            };
            if !fits {
                let help = match m.kind {
                    MeasureKind::Sum | MeasureKind::Avg => {
                        "sum and avg take integer fields (money is integer minor units)"
                    }
                    _ => "min and max take integer, number, string and timestamp fields",
                };
                cx.error(
                    Diagnostic::new(
                        "expr-type",
                        p,
                        format!(
                            "`{}` of `{entity}.{f}`, a {} field",
                            m.kind.name(),
                            type_name(ty)
                        ),
                    )
                    .help(help),
                );
            }
        }
    }
    for (i, o) in order_by.iter().enumerate() {
        if !group_by.contains(&o.field) && !measures.contains_key(&o.field) {
            let names = group_by
                .iter()
                .map(String::as_str)
                .chain(measures.keys().map(String::as_str));
            cx.error(
                Diagnostic::new(
                    "unknown-field",
                    format!("{path}/orderBy/{i}"),
                    format!("`{}` is neither a `groupBy` field nor a measure", o.field),
                )
                .help(suggest(
                    &o.field,
                    names,
                    "order groups by their fields or measures",
                )),
            );
        }
    }
    if let Some(Limit::Expr(x)) = limit {
        check_expr(cx, x, scope);
        check_shape(cx, x, scope, Want::Count);
    }
}

/// The members of an `in`/`notIn` list whose type the column never equals
/// (`{"price": {"in": "['a', 'b']"}}` on an integer field): such a member
/// matches no row.
fn check_members(cx: &mut Cx, entity: Option<&Entity>, ename: &str, f: &Filter, scope: &Scope) {
    use super::types::Ty;
    let Some(ct) = entity.and_then(|e| e.column_type(&f.field)) else {
        return;
    };
    let mut members: Vec<(String, Ty)> = Vec::new();
    match &f.value {
        Template::Array(items) => {
            for t in items {
                match t {
                    Template::Expr(x) => members.push((x.src.clone(), type_of(x, scope))),
                    Template::Literal(v) => members.push((v.to_string(), super::types::of_json(v))),
                    _ => {}
                }
            }
        }
        Template::Expr(x) => match x.ast.as_ref().map(|a| (a, type_of(x, scope))) {
            // A literal list: each member's own type.
            Some((ast, _)) if let ExprKind::List(items) = &ast.kind => {
                for i in items {
                    let ty = super::types::infer(i, scope, &mut Vec::new());
                    members.push((x.src.clone(), ty));
                }
            }
            Some((_, Ty::Items(t))) => members.push((x.src.clone(), *t)),
            Some((_, Ty::Rows(e, _))) => members.push((x.src.clone(), Ty::Row(e, Vec::new()))),
            _ => {}
        },
        _ => {}
    }
    if let Some((src, ty)) = members
        .into_iter()
        .find(|(_, ty)| !super::types::comparable(ct, ty))
    {
        cx.error(
            Diagnostic::new(
                "expr-type",
                child(&f.path, f.op.name()),
                format!(
                    "in `{src}`: `{ename}.{}` is {} field, and a member of this list is {}: it would never match",
                    f.field,
                    a(type_name(ct)),
                    ty.a()
                ),
            )
            .help("list values of the field's type (convert with `int()`, `string()`)"),
        );
    }
}

fn type_name(t: FieldType) -> &'static str {
    FieldType::ALL
        .iter()
        .find(|(_, x)| *x == t)
        .map_or("json", |(n, _)| n)
}

/// `create`: entity, values, and the fields it leaves unset.
/// The rows a `transition` or `soft_delete` acts on: an id, or a `where`
/// with its `orderBy` and `limit`.
fn check_target(cx: &mut Cx, spec: &Spec, scope: &Scope, e: Option<&Entity>, node: &Node) {
    let (entity, target, implied): (&str, &Target, &[&str]) = match &node.kind {
        // A transition of many rows filters on `status` too (its `from`).
        NodeKind::Transition { entity, target, .. } => (entity, target, &["status"]),
        NodeKind::SoftDelete { entity, target } => (entity, target, &[]),
        _ => return,
    };
    let path = node.path.as_str();
    match target {
        Target::Id(id) => {
            check_expr(cx, id, scope);
            check_shape(cx, id, scope, Want::Id);
        }
        Target::Where {
            filters,
            order_by,
            limit,
        } => {
            check_filters(cx, spec, e, entity, filters, scope);
            // A `where` that keeps only states the action cannot move from
            // moves no row, ever.
            if let NodeKind::Transition { action, .. } = &node.kind
                && let Some(t) = e
                    .and_then(|e| e.status.as_ref())
                    .and_then(|sm| sm.transitions.get(action))
            {
                // The conditions that all must hold: the `where`'s, and
                // those of an `and` in it (at any depth).
                let mut all: Vec<&Where> = filters.iter().collect();
                let mut conjuncts = Vec::new();
                while let Some(w) = all.pop() {
                    match w {
                        Where::Field(f) => conjuncts.push(f),
                        Where::All(list) => all.extend(list),
                        _ => {}
                    }
                }
                conjuncts.reverse();
                for f in conjuncts {
                    // (One with a `when` may not apply.)
                    if f.field != "status"
                        || !matches!(f.op, FilterOp::Eq | FilterOp::In)
                        || f.when.is_some()
                    {
                        continue;
                    }
                    let states = literal_members(&f.value);
                    if !states.is_empty()
                        && states
                            .iter()
                            .all(|v| !v.as_str().is_some_and(|s| t.from.iter().any(|x| x == s)))
                    {
                        cx.error(
                            Diagnostic::new(
                                "invalid-value",
                                child(&f.path, f.op.name()),
                                format!(
                                    "`{action}` moves `{entity}` rows only from {}, and this `where` keeps only rows in other states: it would never move a row",
                                    t.from.join(", ")
                                ),
                            )
                            .help("filter on a state the action moves from, or leave `status` out (the action's `from` applies anyway)"),
                        );
                    }
                }
            }
            if let Some(e) = e {
                check_indexed(cx, entity, e, path, filters, order_by, implied);
                check_order(cx, entity, e, path, order_by);
            }
            if let Some(Limit::Expr(x)) = limit {
                check_expr(cx, x, scope);
                check_shape(cx, x, scope, Want::Count);
            }
        }
    }
}

/// `create`: its values (with `each`, the element's names are in `scope`
/// already; `each` itself is checked outside the loop's scope).
fn check_create(cx: &mut Cx, spec: &Spec, scope: &Scope, node: &Node) {
    let NodeKind::Create { entity, values, .. } = &node.kind else {
        return;
    };
    let path = node.path.as_str();
    let ent = |cx: &mut Cx, name: &str| entity_ref(cx, spec, &child(path, "entity"), name);
    let e = ent(cx, entity);
    check_fields(
        cx,
        e,
        entity,
        &child(path, "values"),
        values.keys().cloned(),
        true,
    );
    for t in values.values() {
        check_template(cx, t, scope);
    }
    check_writes(cx, e, entity, (values, &child(path, "values")), scope);
    if let Some(e) = e {
        let owner = e
            .owner
            .as_ref()
            .filter(|o| !o.by_ref)
            .map(|o| o.field.as_str());
        for (fname, f) in &e.fields {
            if !f.nullable
                && f.default.is_none()
                && !values.contains_key(fname)
                && Some(fname.as_str()) != owner
            {
                cx.warn(
                    Diagnostic::new("missing-value", child(path, "values"), format!("`{fname}` is not nullable and has no default, but this create does not set it"))
                        .help(format!("set `{fname}`, or mark the field `nullable` or give it a `default`")),
                );
            }
        }
    }
}

/// `transition`: the row id and the action of the entity's status machine.
fn check_transition(cx: &mut Cx, spec: &Spec, scope: &Scope, node: &Node) {
    let NodeKind::Transition {
        entity,
        target: _,
        action,
    } = &node.kind
    else {
        return;
    };
    let path = node.path.as_str();
    let ent = |cx: &mut Cx, name: &str| entity_ref(cx, spec, &child(path, "entity"), name);
    let e = ent(cx, entity);
    check_target(cx, spec, scope, e, node);
    if let Some(e) = e {
        match &e.status {
            None => cx.error(
                Diagnostic::new(
                    "unknown-action",
                    child(path, "action"),
                    format!("`{entity}` has no status machine, so it has no action `{action}`"),
                )
                .help(format!("add `status` with transitions to `{entity}`")),
            ),
            Some(sm) if !sm.transitions.contains_key(action) => cx.error(
                Diagnostic::new(
                    "unknown-action",
                    child(path, "action"),
                    format!("`{entity}` has no transition `{action}`"),
                )
                .help(suggest(
                    action,
                    sm.transitions.keys().map(String::as_str),
                    "",
                )),
            ),
            Some(_) => {}
        }
    }
}

/// `call`: the external, its operation, arguments and key.
fn check_call(cx: &mut Cx, spec: &Spec, scope: &Scope, node: &Node) {
    let (external, operation, args, idempotency_key) = match &node.kind {
        NodeKind::Call {
            external,
            operation,
            args,
            idempotency_key,
            ..
        }
        | NodeKind::Emit {
            external,
            operation,
            args,
            idempotency_key,
            ..
        } => (external, operation, args, idempotency_key),
        _ => return,
    };
    let path = node.path.as_str();
    match spec.externals.get(external) {
        None => cx.error(
            Diagnostic::new(
                "unknown-external",
                child(path, "external"),
                format!("no external `{external}`"),
            )
            .help(suggest(
                external,
                spec.externals.keys().map(String::as_str),
                "declare it under `externals`",
            )),
        ),
        Some(x) if !x.operations.contains_key(operation) => cx.error(
            Diagnostic::new(
                "unknown-operation",
                child(path, "operation"),
                format!("`{external}` has no operation `{operation}`"),
            )
            .help(suggest(
                operation,
                x.operations.keys().map(String::as_str),
                "declare it under the external's `operations`",
            )),
        ),
        Some(x) => {
            // A `{arg}` of the operation's path comes out of the arguments:
            // one the call does not give would make a URL with a hole.
            let op = x.operations.get(operation.as_str());
            for a in op.map(|o| o.path_args()).unwrap_or_default() {
                // One that may be null (an optional input left out), or a
                // literal that is no path segment, fails the call (502).
                if let Some(t) = args.get(a) {
                    let literal = literal_of(t);
                    let bad = match (&literal, t) {
                        (Some(Value::Null), _) => Some("is null".to_owned()),
                        (Some(Value::String(v)), _) if super::unfit_path_segment(v) => {
                            Some(format!("is {}", Value::String(v.clone())))
                        }
                        (None, Template::Expr(x)) => x
                            .ast
                            .as_ref()
                            .filter(|ast| super::types::may_be_null(ast, scope))
                            .map(|_| "may be null (an optional input property left out, a nullable field)".to_owned()),
                        _ => None,
                    };
                    if let Some(why) = bad {
                        cx.error(
                            Diagnostic::new(
                                "expr-type",
                                child(&child(path, "args"), a),
                                format!("`{a}` fills `{{{a}}}` in the path of `{external}.{operation}`, and it {why}: that call would fail (502 `external_failed`)"),
                            )
                            .help("require it in the input schema, or give a default"),
                        );
                    }
                }
                if !args.contains_key(a) {
                    cx.error(
                        Diagnostic::new(
                            "missing-arg",
                            child(path, "args"),
                            format!("`{external}.{operation}` puts `{a}` in its path (`{}`), and this call does not give it", op.and_then(|o| o.path.as_deref()).unwrap_or_default()),
                        )
                        .help(format!("add `\"{a}\": …` to `args`")),
                    );
                }
            }
        }
    }
    for t in args.values() {
        check_template(cx, t, scope);
    }
    if let Some(k) = idempotency_key {
        check_expr(cx, k, scope);
        check_key_varies(cx, k);
    }
}

/// An idempotency key that reads nothing (`null`, `'k'`) is the same on
/// every call: null protects nothing, and any other value makes every call
/// after the first get the first one's answer.
fn check_key_varies(cx: &mut Cx, e: &Expression) {
    let Some(ast) = &e.ast else { return };
    let mut reads = false;
    ast.walk(|x| reads |= matches!(x.kind, ExprKind::Ident(_)));
    if !reads {
        cx.error(
            Diagnostic::new(
                "invalid-value",
                e.path.clone(),
                format!(
                    "the idempotency key `{}` is the same on every call: {}",
                    e.src.trim(),
                    if e.src.trim() == "null" {
                        "no call would be protected"
                    } else {
                        "every call after the first would get the first one's answer"
                    }
                ),
            )
            .help("key it on what identifies one operation (`input.order_id`, `request.idempotencyKey`)"),
        );
    }
}

/// What rows read with `include` embed, as types: a `ref` include is a
/// row of the entity its field names, a `from` include a list of rows of
/// its entity, each with what it includes in turn.
fn embeds(spec: &Spec, entity: &str, include: &[crate::model::Include]) -> super::types::Embeds {
    use super::types::Ty;
    include
        .iter()
        .map(|i| {
            let ty = match &i.link {
                crate::model::IncludeLink::Ref(f) => match spec
                    .entities
                    .get(entity)
                    .and_then(|e| e.fields.get(f))
                    .and_then(|f| f.entity.as_deref())
                {
                    Some(target) => Ty::Row(target.to_owned(), embeds(spec, target, &i.include)),
                    None => Ty::Dyn,
                },
                crate::model::IncludeLink::From { entity: from, .. } => {
                    Ty::Rows(from.clone(), embeds(spec, from, &i.include))
                }
            };
            (i.name.clone(), ty)
        })
        .collect()
}

/// The type of one group of an aggregate with `groupBy` (node `node`): its
/// `groupBy` fields by their types, its measures (`count` and `sum` ints,
/// `avg` a number, `min` and `max` their field's type); a nullable field,
/// and `avg`, `min`, `max` of one (all of a group's values may be null),
/// may be null.
fn group_type(
    spec: &Spec,
    node: &str,
    entity: &str,
    group_by: &[String],
    measures: &crate::model::NameMap<crate::model::Measure>,
) -> super::types::Ty {
    use super::types::{Ty, of_field};
    use crate::model::MeasureKind;
    let e = spec.entities.get(entity);
    let nullable = |f: &str| match e.and_then(|e| e.fields.get(f)) {
        Some(x) => x.nullable,
        None => !matches!(f, "id" | "version" | "created_at" | "updated_at" | "status"),
    };
    let column = |f: &str| match e.and_then(|e| e.column_type(f)) {
        Some(t) => of_field(t),
        None => Ty::Dyn,
    };
    let mut keys: Vec<(String, Ty, bool)> = group_by
        .iter()
        .map(|f| (f.clone(), column(f), nullable(f)))
        .collect();
    for (name, m) in measures {
        let field = m.field.as_deref();
        let (ty, null) = match m.kind {
            MeasureKind::Count | MeasureKind::Sum => (Ty::Int, false),
            MeasureKind::Avg => (Ty::Double, field.is_none_or(nullable)),
            MeasureKind::Min | MeasureKind::Max => {
                (field.map_or(Ty::Dyn, column), field.is_none_or(nullable))
            }
        };
        keys.push((name.clone(), ty, null));
    }
    Ty::Record(keys, format!("a group of `{node}`"))
}

/// Whether a JSON Schema with a `type` certainly refuses a value of JSON
/// type `kind` (`null`, `boolean`, `integer`, `number`, `string`, `array`,
/// `object`); `false` when it does not say.
fn refuses(schema: &Value, kind: &str) -> bool {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    !types
        .iter()
        .any(|t| *t == kind || (*t == "number" && kind == "integer"))
}

/// What in a `return`'s value certainly does not match the output schema:
/// a literal or an expression of a known type another than the schema's, a
/// required property left out, a property a closed object does not have.
/// (`at`: the property's path in the result.)
fn output_mismatches(
    t: &Template,
    schema: &Value,
    scope: &Scope,
    at: &str,
    found: &mut Vec<(String, String)>,
) {
    use super::types::Ty;
    // A value that may be null (an optional input property, a nullable
    // field, a `ref` include…) where the schema refuses null.
    if let Template::Expr(x) = t
        && let Some(ast) = &x.ast
        && !matches!(ast.kind, crate::expr::ExprKind::Lit(_))
        && super::types::may_be_null(ast, scope)
        && refuses(schema, "null")
    {
        found.push((
            at.to_string(),
            format!(
                "`{}` may be null (an optional input property, a nullable field, a `ref` include, or `avg`, `min`, `max` over no row), and the schema's type is {}; a call where it is would answer 500 `invalid_output`",
                x.src,
                schema.get("type").map(Value::to_string).unwrap_or_default()
            ),
        ));
        return;
    }
    let kinds: &[&str] = match t {
        Template::Object(_) => &["object"],
        Template::Array(_) => &["array"],
        Template::Literal(Value::Null) => &["null"],
        Template::Literal(Value::Bool(_)) => &["boolean"],
        Template::Literal(Value::Number(n)) if n.is_i64() || n.is_u64() => &["integer"],
        Template::Literal(Value::Number(_)) => &["number"],
        Template::Literal(Value::String(_)) => &["string"],
        Template::Literal(_) => &[],
        Template::Expr(x) => match type_of(x, scope) {
            Ty::Bool => &["boolean"],
            Ty::Int | Ty::Uint => &["integer"],
            // (A duration is written as text: `"3600s"`, bytes as base64.)
            Ty::String | Ty::Timestamp | Ty::Duration | Ty::Bytes => &["string"],
            Ty::List | Ty::Rows(..) | Ty::Items(_) => &["array"],
            Ty::Row(..) | Ty::Record(..) | Ty::Object(_) | Ty::Map => &["object"],
            // A double may be whole (an integer to the schema); a map's
            // type is not known here; the rest is not certain.
            _ => &[],
        },
    };
    // A double is an integer to the schema only when it is whole: a mean,
    // a quotient of doubles, a `math.floor` answer 500 on the first call
    // where it is not.
    if let Template::Expr(x) = t
        && type_of(x, scope) == Ty::Double
        && refuses(schema, "number")
        && !refuses(schema, "integer")
    {
        found.push((
            at.to_string(),
            format!(
                "`{}` is a double, and the schema's type is integer, which refuses a double that is not whole (convert it with `int(…)`, or make the schema's type number)",
                x.src
            ),
        ));
        return;
    }
    if let [kind] = kinds
        && refuses(schema, kind)
    {
        let said = schema.get("type").map(Value::to_string).unwrap_or_default();
        let what = match *kind {
            "null" => "null".to_string(),
            "integer" => "an integer".to_string(),
            "array" => "an array".to_string(),
            "object" => "an object".to_string(),
            k => format!("a {k}"),
        };
        found.push((
            at.to_string(),
            format!("this is {what}, and the schema's type is {said}"),
        ));
        return;
    }
    // A value of literals alone, against the whole of its schema (`enum`,
    // `const`, bounds, `pattern`), as the response is validated.
    if let Some(v) =
        literal_of(t).filter(|_| !matches!(t, Template::Object(_) | Template::Array(_)))
        && let Ok(validator) = jsonschema::draft202012::new(schema)
        && let Some(e) = validator.iter_errors(&v).next()
    {
        found.push((at.to_string(), format!("this is {v}, and {e}")));
        return;
    }
    // A list with a member that may be null (`[input.o]`, `l.map(x,
    // input.o)`), where `items` refuses null.
    if let Template::Expr(x) = t
        && let Some(ast) = &x.ast
        && let Some(items) = schema.get("items")
        && type_of(x, scope).is_list()
        && refuses(items, "null")
        && super::types::members_may_be_null(ast, scope)
    {
        found.push((
            format!("{at}[]"),
            format!(
                "`{}` may hold null (an optional input property, a nullable field, a `ref` include, or `avg`, `min`, `max` over no row), and the schema's `items` type is {}; a call where it does would answer 500 `invalid_output`",
                x.src,
                items.get("type").map(Value::to_string).unwrap_or_default()
            ),
        ));
        return;
    }
    // A list of doubles where `items` wants integers: a double that is not
    // whole is refused.
    if let Template::Expr(x) = t
        && let Ty::Items(element) = type_of(x, scope)
        && *element == Ty::Double
        && let Some(items) = schema.get("items")
        && refuses(items, "number")
        && !refuses(items, "integer")
    {
        found.push((
            format!("{at}[]"),
            format!(
                "`{}` is a list of doubles, and the schema's `items` type is integer, which refuses a double that is not whole (convert each with `int(…)`, or make the type number)",
                x.src
            ),
        ));
        return;
    }
    // A list whose elements' type is known, against `items`.
    if let Template::Expr(x) = t
        && let Ty::Items(element) = type_of(x, scope)
        && let Some(items) = schema.get("items")
    {
        let kind = match *element {
            Ty::Bool => Some("boolean"),
            Ty::Int | Ty::Uint => Some("integer"),
            Ty::String | Ty::Timestamp | Ty::Duration => Some("string"),
            Ty::List | Ty::Rows(..) | Ty::Items(_) => Some("array"),
            Ty::Row(..) | Ty::Record(..) | Ty::Object(_) | Ty::Map => Some("object"),
            _ => None,
        };
        if let Some(kind) = kind
            && refuses(items, kind)
        {
            found.push((
                format!("{at}[]"),
                format!(
                    "this list's elements are {}, and the schema's `items` type is {}",
                    plural_kind(kind),
                    items.get("type").map(Value::to_string).unwrap_or_default()
                ),
            ));
            return;
        }
    }
    // A record (an aggregate's object, or its list of groups), key by key.
    if let Template::Expr(x) = t {
        match type_of(x, scope) {
            Ty::Record(keys, what) if !refuses(schema, "object") => {
                record_mismatches(&keys, &what, schema, at, found);
            }
            Ty::Items(element) => {
                if let (Ty::Record(keys, what), Some(items)) = (*element, schema.get("items"))
                    && !refuses(items, "object")
                {
                    record_mismatches(&keys, &what, items, &format!("{at}[]"), found);
                }
            }
            _ => {}
        }
    }
    // A list of rows, each against `items`.
    if let Template::Expr(x) = t
        && let Ty::Rows(ent, embeds) = type_of(x, scope)
        && let Some(items) = schema.get("items")
        && let Some(e) = scope.spec.entities.get(&ent)
    {
        if refuses(items, "object") {
            found.push((
                format!("{at}[]"),
                format!(
                    "this list's elements are `{ent}` rows (objects), and the schema's `items` type is {}; a call that returns a row would answer 500 `invalid_output`",
                    items.get("type").map(Value::to_string).unwrap_or_default()
                ),
            ));
        } else {
            row_mismatches(
                scope.spec,
                e,
                &ent,
                &embeds,
                items,
                &format!("{at}[]"),
                found,
            );
        }
        return;
    }
    // A whole row, against an object schema: its columns by their types.
    if let Template::Expr(x) = t
        && let Ty::Row(ent, embeds) = type_of(x, scope)
        && let Some(e) = scope.spec.entities.get(&ent)
    {
        row_mismatches(scope.spec, e, &ent, &embeds, schema, at, found);
        return;
    }
    match t {
        Template::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let name = |k: &str| member_at(at, k);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for k in required.iter().filter_map(Value::as_str) {
                    if !m.contains_key(k) {
                        found.push((name(k), "required by the schema, and not returned".into()));
                    }
                }
            }
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            for (k, v) in m {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => output_mismatches(v, s, scope, &name(k), found),
                    None if closed => found.push((
                        name(k),
                        "not a property of the schema, which allows no other".into(),
                    )),
                    None => {}
                }
            }
        }
        Template::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, v) in items.iter().enumerate() {
                    output_mismatches(v, s, scope, &format!("{at}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// The first of an object's `keys` that a closed object schema does not
/// declare, else the first property the schema requires that `keys` lack,
/// found as a mismatch (`what` has the keys: as said of a key too many,
/// and of one missing); whether there was one.
fn key_mismatch(
    schema: &Value,
    keys: &[&str],
    (what, missing): (&str, &str),
    at: &str,
    found: &mut Vec<(String, String)>,
) -> bool {
    let props = schema.get("properties").and_then(Value::as_object);
    if schema.get("additionalProperties") == Some(&Value::Bool(false))
        && let Some(k) = keys
            .iter()
            .find(|k| !props.is_some_and(|p| p.contains_key(**k)))
    {
        found.push((
            at.to_string(),
            format!("{what} has `{k}`, which this closed object does not declare"),
        ));
        return true;
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array)
        && let Some(k) = required
            .iter()
            .filter_map(Value::as_str)
            .find(|k| !keys.contains(k))
    {
        found.push((
            member_at(at, k),
            format!("required by the schema, and {missing} has no `{k}`"),
        ));
        return true;
    }
    false
}

/// What in an object of known keys (an aggregate's measures, a group)
/// certainly, or on some calls, does not match an object schema: a key a
/// closed object does not declare, a required property it has not, a
/// key's type, a key that may be null where the schema refuses null.
fn record_mismatches(
    keys: &[(String, super::types::Ty, bool)],
    what: &str,
    schema: &Value,
    at: &str,
    found: &mut Vec<(String, String)>,
) {
    use super::types::Ty;
    let name = |k: &str| member_at(at, k);
    let props = schema.get("properties").and_then(Value::as_object);
    let names: Vec<&str> = keys.iter().map(|(k, ..)| k.as_str()).collect();
    if key_mismatch(schema, &names, (what, what), at, found) {
        return;
    }
    for (k, ty, null) in keys {
        let Some(s) = props.and_then(|p| p.get(k)) else {
            continue;
        };
        let kind = match ty {
            Ty::Bool => Some("boolean"),
            Ty::Int | Ty::Uint => Some("integer"),
            Ty::Double | Ty::Number => Some("number"),
            Ty::String | Ty::Timestamp | Ty::Duration | Ty::Bytes => Some("string"),
            _ => None,
        };
        let said = s.get("type").map(Value::to_string).unwrap_or_default();
        if let Some(kind) = kind
            && refuses(s, kind)
        {
            found.push((
                name(k),
                format!(
                    "`{k}` of {what} is {}, and the schema's type is {said}",
                    ty.a()
                ),
            ));
        } else if *null && refuses(s, "null") {
            found.push((
                name(k),
                format!(
                    "`{k}` of {what} may be null, and the schema's type is {said}; a call where it is would answer 500 `invalid_output`"
                ),
            ));
        }
    }
}

/// The path of member `k` of the value at `at` in a result (`at` empty:
/// the result itself).
fn member_at(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

/// A JSON type's name in the plural.
fn plural_kind(kind: &str) -> &'static str {
    match kind {
        "boolean" => "booleans",
        "integer" => "integers",
        "string" => "strings",
        "array" => "arrays",
        "object" => "objects",
        _ => "values",
    }
}

/// What in a whole row certainly does not match an object schema: a
/// column a closed schema does not declare (`version`, `created_at`…), a
/// required property the row has not, a column whose type the property's
/// schema refuses.
fn row_mismatches(
    spec: &Spec,
    e: &Entity,
    ent: &str,
    embeds: &super::types::Embeds,
    schema: &Value,
    at: &str,
    found: &mut Vec<(String, String)>,
) {
    let name = |k: &str| member_at(at, k);
    let sensitive = |c: &str| e.fields.get(c).is_some_and(|f| f.sensitive);
    let columns: Vec<&str> = e
        .columns()
        .into_iter()
        .filter(|c| !sensitive(c))
        .chain(embeds.iter().map(|(n, _)| n.as_str()))
        .collect();
    let props = schema.get("properties").and_then(Value::as_object);
    let (whole, one) = (format!("a whole `{ent}` row"), format!("a `{ent}` row"));
    if key_mismatch(schema, &columns, (&whole, &one), at, found) {
        return;
    }
    for (k, s) in props.into_iter().flatten() {
        let Some(ty) = e.column_type(k) else { continue };
        let kind = match ty {
            FieldType::String | FieldType::Uuid | FieldType::Ref | FieldType::Timestamp => {
                Some("string")
            }
            FieldType::Integer => Some("integer"),
            FieldType::Boolean => Some("boolean"),
            FieldType::Number => Some("number"),
            FieldType::Json => None,
        };
        if let Some(kind) = kind
            && refuses(s, kind)
        {
            found.push((
                name(k),
                format!(
                    "`{ent}.{k}` is {} field, and the schema's type is {}",
                    a(type_name(ty)),
                    s.get("type").map(Value::to_string).unwrap_or_default()
                ),
            ));
        } else if (k == "deleted_at" || e.fields.get(k.as_str()).is_some_and(|f| f.nullable))
            && refuses(s, "null")
        {
            found.push((
                name(k),
                format!(
                    "`{ent}.{k}` may be null, and the schema's type is {}; a call where it is would answer 500 `invalid_output`",
                    s.get("type").map(Value::to_string).unwrap_or_default()
                ),
            ));
        }
    }
    // What the row embeds: a `ref` include is a row or null (the field may
    // be null, the row deleted or not the caller's), a `from` include a
    // list of rows; each row against its schema in turn.
    use super::types::Ty;
    for (k, ty) in embeds {
        let Some(s) = props.and_then(|p| p.get(k)) else {
            continue;
        };
        let said = || s.get("type").map(Value::to_string).unwrap_or_default();
        match ty {
            Ty::Row(target, inner) => {
                if refuses(s, "object") {
                    found.push((
                        name(k),
                        format!("the `ref` include `{k}` is a `{target}` row (an object), and the schema's type is {}", said()),
                    ));
                } else if refuses(s, "null") {
                    found.push((
                        name(k),
                        format!(
                            "the `ref` include `{k}` may be null (its field may be null, its row deleted or not the caller's), and the schema's type is {}; a call where it is would answer 500 `invalid_output`",
                            said()
                        ),
                    ));
                } else if let Some(te) = spec.entities.get(target) {
                    row_mismatches(spec, te, target, inner, s, &name(k), found);
                }
            }
            Ty::Rows(target, inner) => {
                if refuses(s, "array") {
                    found.push((
                        name(k),
                        format!("the `from` include `{k}` is a list of `{target}` rows, and the schema's type is {}", said()),
                    ));
                } else if let Some(items) = s.get("items")
                    && let Some(te) = spec.entities.get(target)
                {
                    if refuses(items, "object") {
                        found.push((
                            format!("{}[]", name(k)),
                            format!("the `from` include `{k}` holds `{target}` rows (objects), and the schema's `items` type is {}", items.get("type").map(Value::to_string).unwrap_or_default()),
                        ));
                    } else {
                        row_mismatches(
                            spec,
                            te,
                            target,
                            inner,
                            items,
                            &format!("{}[]", name(k)),
                            found,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// The JSON value of a template that is a literal (`5`, `true`, or an
/// expression that is one: `'open'`, `-2`).
fn literal_of(t: &Template) -> Option<Value> {
    match t {
        Template::Literal(v) => Some(v.clone()),
        Template::Expr(x) => {
            let ast = x.ast.as_ref()?;
            // Literals alone (`0 - 1`, `'c' + 'x'`): their value.
            literal_expr(ast).or_else(|| super::types::constant_value(ast)?.to_json().ok())
        }
        _ => None,
    }
}

/// The literal values a filter's operand names: each literal member of a
/// list (written as JSON or as an expression), or the one literal.
fn literal_members(t: &Template) -> Vec<Value> {
    match t {
        Template::Array(items) => items.iter().filter_map(literal_of).collect(),
        Template::Expr(x) => match x.ast.as_ref().map(|a| &a.kind) {
            Some(ExprKind::List(items)) => items.iter().filter_map(literal_expr).collect(),
            _ => literal_of(t).into_iter().collect(),
        },
        other => literal_of(other).into_iter().collect(),
    }
}

/// The JSON value of an expression that is a literal.
fn literal_expr(e: &expr::Expr) -> Option<Value> {
    use crate::expr::Lit;
    Some(match &e.kind {
        ExprKind::Lit(Lit::String(s)) => Value::from(s.clone()),
        ExprKind::Lit(Lit::Int(n)) => Value::from(*n),
        ExprKind::Lit(Lit::Uint(n)) => Value::from(*n),
        ExprKind::Lit(Lit::Double(d)) => serde_json::Number::from_f64(*d).map(Value::Number)?,
        ExprKind::Lit(Lit::Bool(b)) => Value::from(*b),
        ExprKind::Lit(Lit::Null) => Value::Null,
        ExprKind::Unary(crate::expr::UnaryOp::Neg, x) => match literal_expr(x)? {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::from(i.checked_neg()?)
                } else {
                    serde_json::Number::from_f64(-n.as_f64()?).map(Value::Number)?
                }
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// The list a `foreach` or a `create`'s `each` goes over may not be null
/// (an optional input array left out): that call would fail.
fn check_list_not_null(cx: &mut Cx, items: &Expression, scope: &Scope, what: &str) {
    let Some(ast) = &items.ast else { return };
    if super::types::may_be_null(ast, scope) {
        cx.error(
            Diagnostic::new(
                "expr-type",
                items.path.clone(),
                format!(
                    "in `{}`: {what} goes over a list, and this may be null (an optional input property left out, a nullable field): that call would fail",
                    items.src
                ),
            )
            .help(format!(
                "require it in the input schema, or give a default: `{0} != null ? {0} : []`",
                items.src.trim()
            )),
        );
    }
}
