//! SARIF 2.1.0 output, for code-scanning tools.

use serde_json::{Value, json};
use sinew_core::risk::{Level, SIGNALS};

use super::Checked;
use super::human::position;

fn level(l: Level) -> &'static str {
    match l {
        Level::Red | Level::Invalid => "error",
        Level::Yellow => "warning",
        Level::Green => "note",
    }
}

fn location(file: &str, text: &str, pointer: &str, line: u32, column: u32) -> Value {
    let _ = text;
    json!({
        "physicalLocation": {
            "artifactLocation": {"uri": file},
            "region": {"startLine": line, "startColumn": column}
        },
        "logicalLocations": [{"fullyQualifiedName": pointer, "kind": "member"}]
    })
}

/// The SARIF log for a set of checked files.
pub fn log(checked: &[Checked]) -> Value {
    let mut rules: Vec<Value> = SIGNALS
        .iter()
        .map(|s| {
            json!({
                "id": s.code,
                "shortDescription": {"text": s.title},
                "help": {"text": s.fix},
                "defaultConfiguration": {"level": level(s.level)},
                "properties": {"sinewLevel": s.level}
            })
        })
        .collect();
    let mut seen: Vec<String> = SIGNALS.iter().map(|s| s.code.to_string()).collect();
    let mut results = Vec::new();
    for c in checked {
        let file = c.path.display().to_string().replace('\\', "/");
        let all = c
            .report
            .errors
            .iter()
            .map(|d| (d, "error"))
            .chain(c.report.warnings.iter().map(|d| (d, "warning")));
        for (d, lvl) in all {
            if !seen.contains(&d.code) {
                seen.push(d.code.clone());
                rules.push(json!({"id": d.code, "shortDescription": {"text": format!("spec {lvl}: {}", d.code)}, "defaultConfiguration": {"level": lvl}}));
            }
            let pos = position(&c.text, &d.path, d.at, d.span);
            let mut text = d.message.clone();
            if !d.help.is_empty() {
                text = format!("{text} (help: {})", d.help);
            }
            results.push(json!({
                "ruleId": d.code,
                "level": lvl,
                "message": {"text": text},
                "locations": [location(&file, &c.text, &d.path, pos.line, pos.column)]
            }));
        }
        for f in c.report.findings() {
            let pos = position(&c.text, &f.path, None, None);
            let mut r = json!({
                "ruleId": f.code,
                "level": level(f.level),
                "message": {"text": format!("{} (fix: {})", f.message, f.fix.summary)},
                "locations": [location(&file, &c.text, &f.path, pos.line, pos.column)],
                "properties": {"tool": f.tool, "node": f.node, "sinewLevel": f.level}
            });
            if f.acknowledged {
                r["suppressions"] = json!([{"kind": "inSource", "justification": "acknowledged in the spec's `acknowledgments`"}]);
            }
            if let Some(patch) = &f.fix.patch {
                r["properties"]["jsonPatch"] = json!(patch);
            }
            results.push(r);
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "sinew",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/sinew-dev/sinew",
                "rules": rules
            }},
            "results": results
        }]
    })
}
