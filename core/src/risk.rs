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

pub use crate::signal::{Level, SIGNALS, Signal, signal};

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
