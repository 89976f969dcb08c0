//! A bundle: a spec made ready to run. Loaded once, used for every request:
//! the spec is parsed and checked, its risk report computed, every tool's
//! input and output schemas compiled, so per-request work does not grow
//! with the spec's size.

use crate::hash::{canonical, sha256_hex};
use indexmap::IndexMap;
use serde_json::Value;

use crate::diag::Diagnostic;
use crate::input::{Side, compile_schema};
use crate::risk::{self, Level, Report};
use crate::spec::{self, Concurrency, NodeKind, PolicyAction, PolicyKind, Spec, Tool};

/// Why a spec cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    /// The spec has errors.
    #[error("the spec has {} error(s); the first: {}", .0.len(), .0.first().map(|d| format!("{} at `{}`", d.message, d.path)).unwrap_or_default())]
    Invalid(Vec<Diagnostic>),
    /// A tool is Red, or Yellow with signals not acknowledged.
    #[error("tool `{tool}` is {} ({}); only Green tools, and Yellow tools whose signals are all acknowledged, can run", .level.word(), .signals.join(", "))]
    Blocked {
        /// The tool.
        tool: String,
        /// Its level.
        level: Level,
        /// The unacknowledged signals.
        signals: Vec<String>,
    },
    /// A tool's input or output schema does not compile.
    #[error("the {which} schema of `{tool}` is not a valid JSON Schema: {message}")]
    Schema {
        /// The tool.
        tool: String,
        /// `input` or `output`.
        which: &'static str,
        /// What the compiler said.
        message: String,
    },
}

/// A tool ready to run.
pub struct Compiled {
    /// Validator of the input.
    pub input: jsonschema::Validator,
    /// Validator of the output.
    pub output: jsonschema::Validator,
    /// The concurrency strategy in force (declared, or the default).
    pub concurrency: Concurrency,
    /// Indexes (into `spec.policies`) of the policies that apply to the
    /// tool, in spec order.
    pub policies: Vec<usize>,
    /// The `rowLimit` policy that applies, if any: name, limit, action.
    pub row_limit: Option<(String, u64, PolicyAction)>,
    /// The audit entry's `risk`: the tool's level and its acknowledgments.
    pub risk: Value,
    /// The idempotency key comes from the `Idempotency-Key` header, which
    /// is then required.
    pub key_header: bool,
}

/// A spec ready to run.
pub struct Bundle {
    /// The spec.
    pub spec: Spec,
    /// Its risk report (every tool Green or acknowledged Yellow).
    pub report: Report,
    /// `sha256:` + hex of the spec's canonical JSON.
    pub hash: String,
    tools: IndexMap<String, Compiled>,
    /// The claims the owner rules read (tenants), in name order: part of
    /// every idempotency key's scope.
    pub tenant_claims: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("name", &self.spec.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// The concurrency strategy a tool runs with: the declared one, else
/// pessimistic when the flow writes several entities, calls a payment
/// service or can touch more than `maxRowsPerWrite` rows, else optimistic.
pub fn effective_concurrency(spec: &Spec, tool: &Tool) -> Concurrency {
    if let Some(c) = tool.concurrency {
        return c;
    }
    let mut written = std::collections::BTreeSet::new();
    let mut payment = false;
    let mut many = false;
    let mut stack = vec![&tool.flow];
    while let Some(flow) = stack.pop() {
        for node in flow.nodes.values() {
            match &node.kind {
                NodeKind::Transaction { body, .. } => stack.push(body),
                NodeKind::Foreach {
                    body, max_items, ..
                } => {
                    // A loop that writes may touch `maxItems` rows and more.
                    many |= *max_items > spec.limits.max_rows_per_write
                        && body.nodes.values().any(|n| n.kind.is_write());
                    stack.push(body)
                }
                NodeKind::Call { external, .. } => {
                    payment |= spec
                        .externals
                        .get(external)
                        .is_some_and(|x| x.kind == "payment");
                }
                NodeKind::Update { limit, one, .. } => {
                    many |= !one
                        && limit
                            .as_ref()
                            .and_then(spec::Limit::fixed)
                            .is_none_or(|n| n > spec.limits.max_rows_per_write);
                }
                NodeKind::Transition {
                    target: spec::Target::Where { limit, .. },
                    ..
                }
                | NodeKind::SoftDelete {
                    target: spec::Target::Where { limit, .. },
                    ..
                } => {
                    many |= limit
                        .as_ref()
                        .and_then(spec::Limit::fixed)
                        .is_none_or(|n| n > spec.limits.max_rows_per_write);
                }
                _ => {}
            }
            if node.kind.is_write()
                && let Some(e) = node.kind.entity()
            {
                written.insert(e.to_string());
            }
        }
    }
    if written.len() > 1 || payment || many {
        Concurrency::Pessimistic
    } else {
        Concurrency::Optimistic
    }
}

impl Bundle {
    /// Loads a spec's text for execution.
    pub fn load(text: &str) -> Result<Bundle, BundleError> {
        Bundle::from_loaded(spec::load(text))
    }

    /// Makes a bundle of a loaded spec.
    pub fn from_loaded(loaded: spec::Loaded) -> Result<Bundle, BundleError> {
        if !loaded.errors.is_empty() {
            return Err(BundleError::Invalid(loaded.errors));
        }
        let report = risk::analyze(&loaded);
        for (name, t) in &report.tools {
            if t.level > Level::Green {
                return Err(BundleError::Blocked {
                    tool: name.clone(),
                    level: t.level,
                    signals: t
                        .findings
                        .iter()
                        .filter(|f| !f.acknowledged)
                        .map(|f| f.code.clone())
                        .collect(),
                });
            }
        }
        let hash = format!(
            "sha256:{}",
            sha256_hex(canonical(&loaded.source).as_bytes())
        );
        let spec = loaded.spec;
        let mut tools = IndexMap::new();
        for (name, tool) in &spec.tools {
            // The loader has compiled them already (`invalid-schema`), with
            // the same helper.
            let compile = |side: Side, schema: &Value| {
                compile_schema(schema, side).map_err(|e| BundleError::Schema {
                    tool: name.clone(),
                    which: side.key(),
                    message: e.message,
                })
            };
            tools.insert(
                name.clone(),
                Compiled {
                    input: compile(Side::Input, &tool.input)?,
                    output: compile(Side::Output, &tool.output)?,
                    concurrency: effective_concurrency(&spec, tool),
                    policies: spec
                        .policies
                        .values()
                        .enumerate()
                        .filter(|(_, p)| p.tools.as_ref().is_none_or(|t| t.iter().any(|t| t == name)))
                        .map(|(i, _)| i)
                        .collect(),
                    row_limit: spec.policies.iter().find_map(|(pname, p)| match p.kind {
                        PolicyKind::RowLimit { max_rows } if p.tools.as_ref().is_none_or(|t| t.iter().any(|t| t == name)) => {
                            Some((pname.clone(), max_rows, p.action))
                        }
                        _ => None,
                    }),
                    risk: serde_json::json!({
                        "level": report.tools.get(name).map(|t| t.level),
                        "acknowledgments": spec
                            .acknowledgments
                            .iter()
                            .filter(|a| a.tool == *name)
                            .map(|a| serde_json::json!({"tool": a.tool, "signal": a.signal, "node": a.node, "reason": a.reason, "by": a.by}))
                            .collect::<Vec<_>>(),
                    }),
                    key_header: tool.key_from_header(),
                },
            );
        }
        let tenant_claims: std::collections::BTreeSet<String> = spec
            .entities
            .values()
            .filter_map(|e| e.owner.as_ref()?.claim.clone())
            .collect();
        Ok(Bundle {
            spec,
            report,
            hash,
            tools,
            tenant_claims: tenant_claims.into_iter().collect(),
        })
    }

    /// A tool and its compiled form.
    pub fn tool(&self, name: &str) -> Option<(&str, &Tool, &Compiled)> {
        let (k, tool) = self.spec.tools.get_key_value(name)?;
        let compiled = self.tools.get(name)?;
        Some((k.as_str(), tool, compiled))
    }
}

impl Bundle {
    /// Completes a seed row: missing implicit columns get their defaults
    /// (`version` 1, timestamps `now`, `deleted_at` null, `status` the
    /// initial state) and missing fields their `default` or null. Fails on a
    /// row without a UUID `id` or an unknown entity.
    pub fn complete_row(
        &self,
        entity: &str,
        given: &crate::ports::Row,
        now_ms: i64,
    ) -> Result<crate::ports::Row, String> {
        let e = self
            .spec
            .entities
            .get(entity)
            .ok_or_else(|| format!("no entity `{entity}`"))?;
        let id = given
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{} row has no `id`", crate::diag::a_code(entity)))?;
        if !crate::hash::is_uuid(id) {
            return Err(format!(
                "`{id}` is not a UUID ({} row's id)",
                crate::diag::a_code(entity)
            ));
        }
        let now = Value::String(crate::expr::value::format_timestamp(
            now_ms.saturating_mul(1000),
        ));
        let mut row = crate::ports::Row::new();
        row.insert("id".into(), Value::String(id.to_string()));
        row.insert("version".into(), Value::from(1));
        row.insert("created_at".into(), now.clone());
        row.insert("updated_at".into(), now);
        row.insert("deleted_at".into(), Value::Null);
        if let Some(sm) = &e.status {
            row.insert("status".into(), Value::String(sm.initial.clone()));
        }
        for (f, field) in &e.fields {
            row.insert(f.clone(), field.default.clone().unwrap_or(Value::Null));
        }
        for (k, v) in given {
            if !e.has_column(k) {
                return Err(format!("`{entity}` has no column `{k}`"));
            }
            row.insert(k.clone(), v.clone());
        }
        crate::row::normalize_row(e, &mut row);
        Ok(row)
    }
}
