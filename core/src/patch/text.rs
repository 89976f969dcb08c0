//! Applying JSON Patch operations to JSON text while keeping the rest of
//! the text as it was: only the spans an operation touches are rewritten,
//! new values follow the surrounding indentation.

use serde_json::Value;

use super::{Op, apply, tokens};
use crate::spec::location::{Member, Span, find, members};

/// Applies `ops` to `text`. Returns `None` when an operation cannot be done
/// in place (then the caller re-serializes the patched value instead); the
/// result is checked to parse to exactly the structurally patched value.
pub fn apply_text(text: &str, ops: &[Op]) -> Option<String> {
    let mut expected: Value = serde_json::from_str(text).ok()?;
    apply(&mut expected, ops).ok()?;
    let mut out = text.to_string();
    for op in ops {
        out = one(&out, op)?;
    }
    let got: Value = serde_json::from_str(&out).ok()?;
    (got == expected).then_some(out)
}

fn split_parent(path: &str) -> Option<(String, String)> {
    let i = path.rfind('/')?;
    let last = tokens(path.get(i..)?).ok()?.pop()?;
    Some((path.get(..i)?.to_string(), last))
}

fn line_indent(text: &str, at: usize) -> &str {
    let start = text
        .get(..at)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text.get(start..).unwrap_or_default();
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    line.get(..n).unwrap_or_default()
}

fn column(text: &str, at: usize) -> usize {
    let start = text
        .get(..at)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    at.saturating_sub(start)
}

fn splice(text: &str, span: Span, with: &str) -> Option<String> {
    Some(format!(
        "{}{with}{}",
        text.get(..span.start)?,
        text.get(span.end..)?
    ))
}

/// The layout of a container: is it spread over lines, and how are its
/// members indented.
struct Layout {
    multiline: bool,
    indent: String,
    unit: String,
}

fn layout(text: &str, parent: Span, ms: &[Member]) -> Layout {
    let base = line_indent(text, parent.start).to_string();
    let multiline = match ms.first() {
        Some(m) => text
            .get(parent.start..m.start)
            .is_some_and(|s| s.contains('\n')),
        None => false,
    };
    let indent = match ms.last() {
        Some(m) if multiline => line_indent(text, m.start).to_string(),
        _ => format!("{base}  "),
    };
    let unit = indent
        .strip_prefix(base.as_str())
        .filter(|u| !u.is_empty())
        .unwrap_or("  ")
        .to_string();
    Layout {
        multiline,
        indent,
        unit,
    }
}

fn one(text: &str, op: &Op) -> Option<String> {
    match op {
        Op::Replace { path, value } => {
            let span = find(text, path)?;
            let indent = line_indent(text, span.start).to_string();
            let col = column(text, span.start);
            splice(text, span, &render(value, &indent, "  ", col))
        }
        Op::Add { path, value } => {
            let (parent_path, key) = split_parent(path)?;
            let parent = find(text, &parent_path)?;
            let ms = members(text, parent.start)?;
            let is_obj = text.as_bytes().get(parent.start) == Some(&b'{');
            if is_obj && let Some(m) = ms.iter().find(|m| m.key.as_deref() == Some(key.as_str())) {
                let indent = line_indent(text, m.start).to_string();
                let col = column(text, m.value.start);
                return splice(text, m.value, &render(value, &indent, "  ", col));
            }
            let lay = layout(text, parent, &ms);
            let head = if is_obj {
                format!("{}: ", serde_json::to_string(&key).ok()?)
            } else {
                String::new()
            };
            let idx = if is_obj || key == "-" {
                ms.len()
            } else {
                key.parse().ok()?
            };
            if ms.is_empty() {
                let inner = Span {
                    start: parent.start + 1,
                    end: parent.end - 1,
                };
                let v = render(
                    value,
                    &lay.indent,
                    &lay.unit,
                    column(text, parent.start) + 1 + head.len(),
                );
                return splice(text, inner, &format!("{head}{v}"));
            }
            if idx >= ms.len() {
                let last = ms.last()?;
                let at = Span {
                    start: last.value.end,
                    end: last.value.end,
                };
                let item = if lay.multiline {
                    let v = render(value, &lay.indent, &lay.unit, lay.indent.len() + head.len());
                    format!(",\n{}{head}{v}", lay.indent)
                } else {
                    let v = render(
                        value,
                        &lay.indent,
                        &lay.unit,
                        column(text, last.value.end) + 2 + head.len(),
                    );
                    format!(", {head}{v}")
                };
                splice(text, at, &item)
            } else {
                let before = ms.get(idx)?;
                let at = Span {
                    start: before.start,
                    end: before.start,
                };
                let v = render(
                    value,
                    &lay.indent,
                    &lay.unit,
                    column(text, before.start) + head.len(),
                );
                let sep = if lay.multiline {
                    format!(",\n{}", lay.indent)
                } else {
                    ", ".to_string()
                };
                splice(text, at, &format!("{head}{v}{sep}"))
            }
        }
        Op::Remove { path } => {
            let (parent_path, key) = split_parent(path)?;
            let parent = find(text, &parent_path)?;
            let ms = members(text, parent.start)?;
            let is_obj = text.as_bytes().get(parent.start) == Some(&b'{');
            let j = if is_obj {
                ms.iter()
                    .position(|m| m.key.as_deref() == Some(key.as_str()))?
            } else {
                key.parse().ok()?
            };
            let m = ms.get(j)?;
            let span = if ms.len() == 1 {
                Span {
                    start: parent.start + 1,
                    end: parent.end - 1,
                }
            } else if let Some(next) = ms.get(j + 1) {
                Span {
                    start: m.start,
                    end: next.start,
                }
            } else {
                let prev = ms.get(j.checked_sub(1)?)?;
                Span {
                    start: prev.value.end,
                    end: m.value.end,
                }
            };
            splice(text, span, "")
        }
        Op::Test { .. } => Some(text.to_string()),
        Op::Move { .. } | Op::Copy { .. } => None,
    }
}

/// Renders `v` inline when it fits on the line, else spread over lines
/// indented from `indent` by `unit`.
pub(crate) fn render(v: &Value, indent: &str, unit: &str, column: usize) -> String {
    let inline = inline(v);
    if column + inline.len() <= 100 || !matches!(v, Value::Object(_) | Value::Array(_)) {
        return inline;
    }
    let inner = format!("{indent}{unit}");
    match v {
        Value::Object(m) if !m.is_empty() => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    let key = serde_json::to_string(k).unwrap_or_default();
                    let col = inner.len() + key.len() + 2;
                    format!("{inner}{key}: {}", render(v, &inner, unit, col))
                })
                .collect();
            format!("{{\n{}\n{indent}}}", items.join(",\n"))
        }
        Value::Array(a) if !a.is_empty() => {
            let items: Vec<String> = a
                .iter()
                .map(|v| format!("{inner}{}", render(v, &inner, unit, inner.len())))
                .collect();
            format!("[\n{}\n{indent}]", items.join(",\n"))
        }
        _ => inline,
    }
}

fn inline(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::to_string(k).unwrap_or_default(),
                        inline(v)
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str =
        "{\n  \"a\": {\n    \"b\": 1,\n    \"c\": [1, 2]\n  },\n  \"d\": {\"x\": 1}\n}\n";

    #[test]
    fn add_keeps_layout() {
        let out = apply_text(
            DOC,
            &[Op::Add {
                path: "/a/z".into(),
                value: json!({"max": 3}),
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\n    \"b\": 1,\n    \"c\": [1, 2],\n    \"z\": {\"max\": 3}\n  },\n  \"d\": {\"x\": 1}\n}\n"
        );
        let out = apply_text(
            DOC,
            &[Op::Add {
                path: "/d/y".into(),
                value: json!(2),
            }],
        )
        .unwrap();
        assert!(out.contains("\"d\": {\"x\": 1, \"y\": 2}"), "{out}");
        let out = apply_text(
            DOC,
            &[Op::Add {
                path: "/a/c/1".into(),
                value: json!(9),
            }],
        )
        .unwrap();
        assert!(out.contains("[1, 9, 2]"), "{out}");
    }

    #[test]
    fn remove_and_replace() {
        let out = apply_text(
            DOC,
            &[Op::Remove {
                path: "/a/b".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\n    \"c\": [1, 2]\n  },\n  \"d\": {\"x\": 1}\n}\n"
        );
        let out = apply_text(
            DOC,
            &[Op::Remove {
                path: "/a/c".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\n    \"b\": 1\n  },\n  \"d\": {\"x\": 1}\n}\n"
        );
        let out = apply_text(
            DOC,
            &[Op::Remove {
                path: "/d/x".into(),
            }],
        )
        .unwrap();
        assert!(out.contains("\"d\": {}"), "{out}");
        let out = apply_text(
            DOC,
            &[Op::Replace {
                path: "/a/b".into(),
                value: json!("q"),
            }],
        )
        .unwrap();
        assert!(out.contains("\"b\": \"q\","), "{out}");
    }

    #[test]
    fn big_values_spread_over_lines() {
        let big = json!({"type": "transaction", "body": {"entry": "a", "nodes": {"a": {"type": "create", "entity": "Order", "values": {"x": "input.x"}}}}});
        let out = apply_text(
            DOC,
            &[Op::Add {
                path: "/a/tx".into(),
                value: big,
            }],
        )
        .unwrap();
        assert!(
            out.contains("    \"tx\": {\n      \"type\": \"transaction\","),
            "{out}"
        );
    }
}
