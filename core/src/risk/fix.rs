//! `sinew check --fix`: apply the mechanical fixes, one at a time, each
//! from a fresh analysis, so that no patch is ever applied to a spec it was
//! not computed for.

use std::collections::BTreeSet;

use super::{Report, check};
use crate::patch::{apply, apply_text};

/// A fix that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The signal it removed.
    pub code: String,
    /// The tool.
    pub tool: String,
    /// Where.
    pub path: String,
    /// What it did.
    pub summary: String,
}

/// The result of [`fix`].
#[derive(Debug, Clone)]
pub struct FixOutcome {
    /// The fixed spec's text.
    pub text: String,
    /// What was applied, in order.
    pub applied: Vec<Applied>,
    /// The report on the fixed spec.
    pub report: Report,
    /// Whether some patch could not be applied in place and the spec was
    /// re-serialized (formatting not kept).
    pub reformatted: bool,
}

/// Applies one JSON Patch to a spec's text: in place, keeping the rest of
/// the formatting, when it can; else by re-serializing the patched value
/// (`true` in the answer says so). Fails when the text is not JSON or the
/// patch does not apply to it.
pub fn apply_patch(text: &str, patch: &[crate::patch::Op]) -> Result<(String, bool), String> {
    let crlf = uses_crlf(text);
    if let Some(t) = apply_text(text, patch) {
        return Ok((line_endings(t, crlf), false));
    }
    let mut v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the spec is not JSON: {e}"))?;
    apply(&mut v, patch).map_err(|e| e.to_string())?;
    let mut s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok((line_endings(s, crlf), true))
}

/// Whether most line breaks of `text` are CRLF (a file saved on Windows).
fn uses_crlf(text: &str) -> bool {
    let crlf = text.matches("\r\n").count();
    crlf > 0 && crlf >= text.matches('\n').count() - crlf
}

/// `text` with every line break that is a bare LF written as CRLF, when
/// `crlf`: the lines a patch inserts keep the file's style. (A JSON
/// string holds no raw line break, so only whitespace changes.)
fn line_endings(text: String, crlf: bool) -> String {
    if !crlf {
        return text;
    }
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut prev = '\0';
    for c in text.chars() {
        if c == '\n' && prev != '\r' {
            out.push('\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// The most fixes applied to one spec: a bound, not an expected number.
const MAX_FIXES: usize = 1000;

/// Applies every mechanical fix of unacknowledged findings to `text`.
pub fn fix(text: &str) -> FixOutcome {
    let mut cur = text.to_string();
    let mut applied = Vec::new();
    let mut tried: BTreeSet<(String, String)> = BTreeSet::new();
    let mut reformatted = false;
    let mut report = check(&cur);
    while applied.len() < MAX_FIXES {
        let next = report.findings().find(|f| {
            !f.acknowledged
                && f.fix.patch.is_some()
                && !tried.contains(&(f.code.clone(), f.path.clone()))
        });
        let Some(f) = next.cloned() else { break };
        tried.insert((f.code.clone(), f.path.clone()));
        let Some(patch) = &f.fix.patch else { break };
        let Ok((new, re)) = apply_patch(&cur, patch) else {
            continue;
        };
        // A patch after which the spec no longer loads (a name grown past
        // its limit, a key the loader refuses there) is not applied: the
        // finding stays, for a person to fix.
        let fixed = check(&new);
        if fixed.level == super::Level::Invalid && report.level != super::Level::Invalid {
            continue;
        }
        reformatted |= re;
        cur = new;
        applied.push(super::Applied {
            code: f.code.clone(),
            tool: f.tool.clone(),
            path: f.path.clone(),
            summary: f.fix.summary.clone(),
        });
        report = fixed;
    }
    FixOutcome {
        text: cur,
        applied,
        report,
        reformatted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::Op;
    use serde_json::json;

    /// A patch applied to a CRLF file writes CRLF lines: in place and
    /// re-serialized alike.
    #[test]
    fn crlf_files_keep_their_line_endings() {
        let text = "{\r\n  \"a\": {\r\n    \"b\": 1\r\n  }\r\n}\r\n";
        let patch = [Op::Add {
            path: "/a/c".into(),
            value: json!({"x": 1, "y": [1, 2, 3], "z": {"deep": {"er": "value"}}}),
        }];
        let (out, _) = apply_patch(text, &patch).unwrap();
        assert!(out.contains("\"c\""), "{out}");
        assert_eq!(
            out.matches('\n').count(),
            out.matches("\r\n").count(),
            "{out:?}"
        );
        // An LF file stays LF.
        let (out, _) = apply_patch(&text.replace("\r\n", "\n"), &patch).unwrap();
        assert!(!out.contains('\r'), "{out:?}");
        assert_eq!(line_endings("a\r\nb\nc".into(), true), "a\r\nb\r\nc");
    }
}
