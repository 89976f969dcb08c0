//! SARIF 2.1.0 output, for code-scanning tools.

use serde_json::{Value, json};
use sinew_core::risk::{Level, SIGNALS};
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Checked;
use super::human::position;

fn level(l: Level) -> &'static str {
    match l {
        Level::Red | Level::Invalid => "error",
        Level::Yellow => "warning",
        Level::Green => "note",
    }
}

/// A file's path as an RFC 3986 URI reference, as SARIF's
/// `artifactLocation.uri` wants: a relative path stays a relative reference
/// (`dir with space/ok.json` → `dir%20with%20space/ok.json`), an absolute
/// one becomes a `file://` URI. Every byte but the unreserved characters
/// and `/` is percent-encoded (a `:` too, so that no first segment reads as
/// a scheme; file names that are not UTF-8 keep their bytes).
fn uri(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if path.is_absolute() {
        format!("file://{out}")
    } else {
        out
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
        let file = uri(&c.path);
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
            // Columns count characters (see `human::position`), as
            // editors do: said here, so no consumer reads UTF-16 units.
            "columnKind": "unicodeCodePoints",
            "results": results
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::uri;
    use std::path::Path;

    #[test]
    fn uris_are_percent_encoded_references() {
        let cases = [
            ("ok.json", "ok.json"),
            ("dir with space/ok.json", "dir%20with%20space/ok.json"),
            ("specs/café #1.json", "specs/caf%C3%A9%20%231.json"),
            ("a:b/c%d.json", "a%3Ab/c%25d.json"),
            ("back\\slash.json", "back%5Cslash.json"),
            ("/tmp/a b.json", "file:///tmp/a%20b.json"),
        ];
        for (path, expected) in cases {
            assert_eq!(uri(Path::new(path)), expected, "{path}");
        }
    }
}
