//! The risk engine: judges every tool of a loaded spec Green, Yellow or Red
//! before anything runs, and says how to fix what it finds.
//!
//! ```
//! let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/examples/shop.json")).unwrap();
//! let report = sinew_core::risk::check(&text);
//! assert_eq!(report.level, sinew_core::risk::Level::Green);
//! ```

mod fix;
mod signals;

use serde::Serialize;
use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::flow::ToolGraph;
use crate::patch::Op;
use crate::spec::{self, Loaded};

pub use fix::{Applied, FixOutcome, apply_patch, fix};

/// Risk levels, from best to worst; `Invalid` is a spec with errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Safe by construction.
    Green,
    /// Deployable once acknowledged.
    Yellow,
    /// Blocked.
    Red,
    /// Not a valid spec.
    Invalid,
}

impl Level {
    /// The level as a word (`Green`).
    pub fn word(self) -> &'static str {
        match self {
            Level::Green => "Green",
            Level::Yellow => "Yellow",
            Level::Red => "Red",
            Level::Invalid => "Invalid",
        }
    }
}

/// A risk signal: its code, level and the fix it suggests.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    /// Stable code.
    pub code: &'static str,
    /// Its level.
    pub level: Level,
    /// What it means, in a few words.
    pub title: &'static str,
    /// The suggested fix, in words.
    pub fix: &'static str,
}

/// Every signal the engine knows.
pub const SIGNALS: &[Signal] = &[
    Signal {
        code: "raw-write",
        level: Level::Red,
        title: "a `sql` node (raw SQL instead of an entity action)",
        fix: "replace with create / update / transition / soft_delete on an entity",
    },
    Signal {
        code: "unbounded-update",
        level: Level::Red,
        title: "an `update` with neither `where` nor `limit`",
        fix: "add a `where` condition or a row `limit`",
    },
    Signal {
        code: "payment-without-compensation",
        level: Level::Red,
        title: "a payment call that nothing undoes if a later step fails",
        fix: "add `compensate` naming the compensating call; add an `onError` edge to a recovery flow",
    },
    Signal {
        code: "write-outside-transaction",
        level: Level::Red,
        title: "a write node not inside a `transaction` body",
        fix: "wrap the write nodes in a `transaction` node",
    },
    Signal {
        code: "hard-delete",
        level: Level::Red,
        title: "a `delete` node",
        fix: "convert to `soft_delete` (sets `deleted_at`)",
    },
    Signal {
        code: "external-in-transaction",
        level: Level::Red,
        title: "a call with side effects inside a transaction",
        fix: "move the call before or after the transaction",
    },
    Signal {
        code: "cycle",
        level: Level::Red,
        title: "the flow graph is not a DAG",
        fix: "break the cycle by removing or redirecting the edge that closes it",
    },
    Signal {
        code: "external-in-transition",
        level: Level::Yellow,
        title: "a call with side effects before a status transition commits",
        fix: "move the effect after the commit, or acknowledge",
    },
    Signal {
        code: "missing-retry",
        level: Level::Yellow,
        title: "a `call` without `retry`",
        fix: "add retry (max 3 attempts, exponential backoff)",
    },
    Signal {
        code: "missing-timeout",
        level: Level::Yellow,
        title: "a `call` without `timeoutMs`",
        fix: "add timeoutMs",
    },
    Signal {
        code: "high-row-impact",
        level: Level::Yellow,
        title: "a write that can touch more than `maxRowsPerWrite` rows",
        fix: "lower the limit, or acknowledge",
    },
    Signal {
        code: "unbounded-read",
        level: Level::Yellow,
        title: "a `read` without `limit`",
        fix: "add limit (and `after` for paging)",
    },
    Signal {
        code: "missing-idempotency-key",
        level: Level::Yellow,
        title: "a tool that writes or has effects, with no `idempotencyKey`",
        fix: "add \"idempotencyKey\": \"request.idempotencyKey\"",
    },
    Signal {
        code: "public-write",
        level: Level::Yellow,
        title: "a public tool (no token required) that writes",
        fix: "remove `public`, so only signed-in callers may write",
    },
];

/// Looks a signal up by code.
pub fn signal(code: &str) -> Option<&'static Signal> {
    SIGNALS.iter().find(|s| s.code == code)
}

/// A suggested fix: words, and a JSON Patch when it is mechanical.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fix {
    /// The suggestion in words.
    pub summary: String,
    /// RFC 6902 operations that apply it, when mechanical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Vec<Op>>,
}

/// One risk finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The signal's code.
    pub code: String,
    /// The signal's level.
    pub level: Level,
    /// The tool.
    pub tool: String,
    /// The node, where one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// JSON Pointer into the spec.
    pub path: String,
    /// One plain sentence.
    pub message: String,
    /// Whether an acknowledgment covers it.
    pub acknowledged: bool,
    /// How to fix it.
    pub fix: Fix,
}

/// The verdict on one tool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolReport {
    /// Worst unacknowledged level (`invalid` when the tool has errors).
    pub level: Level,
    /// Findings, sorted.
    pub findings: Vec<Finding>,
}

/// The verdict on a spec: the shape of `sinew check --format json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The bundle's level.
    pub level: Level,
    /// Spec errors.
    pub errors: Vec<Diagnostic>,
    /// Warnings (the spec still runs).
    pub warnings: Vec<Diagnostic>,
    /// Tools by name.
    pub tools: BTreeMap<String, ToolReport>,
}

impl Report {
    /// The exit code of `sinew check`: 0 Green (or Yellow fully
    /// acknowledged), 1 Yellow unacknowledged, 2 Red, 3 spec errors.
    pub fn exit_code(&self) -> i32 {
        match self.level {
            Level::Green => 0,
            Level::Yellow => 1,
            Level::Red => 2,
            Level::Invalid => 3,
        }
    }

    /// The report as pretty JSON (stable, byte-identical on every engine).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every finding, in report order.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.tools.values().flat_map(|t| t.findings.iter())
    }
}

/// Loads and judges a spec's text.
pub fn check(text: &str) -> Report {
    analyze(&spec::load(text))
}

/// Judges a loaded spec.
pub fn analyze(loaded: &Loaded) -> Report {
    let spec = &loaded.spec;
    let mut warnings = loaded.warnings.clone();
    let mut tools = BTreeMap::new();
    let global_errors = loaded.errors.iter().any(|e| e.tool.is_none());
    let graphs: Vec<(&String, &crate::spec::Tool, ToolGraph)> = spec
        .tools
        .iter()
        .map(|(name, tool)| (name, tool, ToolGraph::build(tool)))
        .collect();
    let comp_ops = signals::compensating_operations(spec, graphs.iter().map(|(_, _, g)| g));
    for (name, tool, graph) in &graphs {
        let name: &String = name;
        if global_errors || !loaded.tool_is_valid(name) {
            tools.insert(
                name.clone(),
                ToolReport {
                    level: Level::Invalid,
                    findings: Vec::new(),
                },
            );
            continue;
        }
        let mut findings =
            signals::tool_findings(spec, &loaded.source, name, tool, graph, &comp_ops);
        for f in &mut findings {
            f.acknowledged = f.level == Level::Yellow
                && spec.acknowledgments.iter().any(|a| {
                    a.tool == f.tool
                        && a.signal == f.code
                        && a.node.as_ref().is_none_or(|n| Some(n) == f.node.as_ref())
                });
        }
        findings.sort_by(|a, b| {
            (
                std::cmp::Reverse(a.level),
                a.path.as_str(),
                a.code.as_str(),
                a.message.as_str(),
            )
                .cmp(&(
                    std::cmp::Reverse(b.level),
                    b.path.as_str(),
                    b.code.as_str(),
                    b.message.as_str(),
                ))
        });
        let level = findings
            .iter()
            .filter(|f| !f.acknowledged)
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Green);
        tools.insert(name.clone(), ToolReport { level, findings });
    }
    if loaded.errors.is_empty() {
        for ack in &spec.acknowledgments {
            let matching: Vec<&Finding> = tools
                .get(&ack.tool)
                .map(|t| {
                    t.findings
                        .iter()
                        .filter(|f| {
                            f.code == ack.signal
                                && ack.node.as_ref().is_none_or(|n| Some(n) == f.node.as_ref())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let message = if matching.iter().any(|f| f.level == Level::Red) {
                Some(format!(
                    "`{}` is a Red signal: Red signals cannot be acknowledged",
                    ack.signal
                ))
            } else if matching.is_empty() {
                let at = ack
                    .node
                    .as_ref()
                    .map(|n| format!(" at `{n}`"))
                    .unwrap_or_default();
                Some(format!(
                    "`{}` does not fire in `{}`{at}, so this acknowledgment covers nothing",
                    ack.signal, ack.tool
                ))
            } else {
                None
            };
            if let Some(message) = message {
                let mut d = Diagnostic::new("ack-not-applicable", ack.path.clone(), message)
                    .help("remove the acknowledgment; fix Red signals instead");
                d.tool = Some(ack.tool.clone());
                warnings.push(d);
            }
        }
    }
    for name in &spec.broken_tools {
        tools.insert(
            name.clone(),
            ToolReport {
                level: Level::Invalid,
                findings: Vec::new(),
            },
        );
    }
    Diagnostic::sort(&mut warnings);
    let level = if loaded.errors.is_empty() {
        tools
            .values()
            .map(|t| t.level)
            .max()
            .unwrap_or(Level::Green)
    } else {
        Level::Invalid
    };
    Report {
        level,
        errors: loaded.errors.clone(),
        warnings,
        tools,
    }
}
