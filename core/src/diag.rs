//! Diagnostics: spec errors and warnings, each with a stable code, a JSON
//! Pointer into the spec, a plain message and a help line.

use serde::Serialize;

/// A spec error or warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Stable, kebab-case code (`unknown-entity`).
    pub code: String,
    /// JSON Pointer to the offending value (`""` for the whole document).
    pub path: String,
    /// One plain sentence: lowercase, no final period, values in backticks.
    pub message: String,
    /// What to do about it.
    pub help: String,
    /// The tool it belongs to, when it is inside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// For errors inside an expression string: the byte range within that
    /// string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<[u32; 2]>,
    /// Line and column (1-based) where the document itself says so: JSON
    /// syntax errors. Other diagnostics are located through `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<Position>,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl Diagnostic {
    /// A diagnostic with an empty help line.
    pub fn new(code: &str, path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code: code.to_string(),
            path: path.into(),
            message: message.into(),
            help: String::new(),
            tool: None,
            span: None,
            at: None,
        }
    }

    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = help.into();
        self
    }

    /// Sets the span inside an expression string.
    pub fn span(mut self, start: u32, end: u32) -> Diagnostic {
        self.span = Some([start, end]);
        self
    }

    /// The deterministic order of diagnostics: by path, then code, then
    /// message.
    pub fn sort(list: &mut [Diagnostic]) {
        list.sort_by(|a, b| {
            (a.path.as_str(), a.code.as_str(), a.message.as_str()).cmp(&(
                b.path.as_str(),
                b.code.as_str(),
                b.message.as_str(),
            ))
        });
    }
}

/// A "did you mean" for `name` among `candidates`: the closest one, if it is
/// close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let score = strsim::jaro_winkler(&name.to_ascii_lowercase(), &c.to_ascii_lowercase());
        let close =
            score >= 0.8 || strsim::damerau_levenshtein(name, c) <= name.len().min(c.len()) / 3;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A help line: "did you mean `x`?" when there is a close candidate, else a
/// list of what is allowed (shortened when long), else `fallback`.
pub fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
    fallback: &str,
) -> String {
    if let Some(c) = did_you_mean(name, candidates.clone()) {
        return format!("did you mean `{c}`?");
    }
    let all: Vec<&str> = candidates.into_iter().collect();
    match all.len() {
        0 => fallback.to_string(),
        1..=8 => format!(
            "expected one of {}",
            all.iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        n => format!(
            "expected one of {}, … ({n} in all)",
            all.iter()
                .take(6)
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `word` with its indefinite article, as English reads it: `an integer`,
/// `a string`, and for a name in backticks `` an `Appointment` ``.
pub fn a(word: &str) -> String {
    let first = word.trim_start_matches('`').chars().next();
    let vowel = first.is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {word}", if vowel { "an" } else { "a" })
}

/// A name in backticks with its article: `` a(`Order`) `` → `` a `Order` ``.
pub fn a_code(name: &str) -> String {
    a(&format!("`{name}`"))
}

/// What kind of JSON value `v` is, with its article (`a string`, `null`).
pub fn a_json(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Escapes one JSON Pointer reference token (`~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    if token.contains(['~', '/']) {
        token.replace('~', "~0").replace('/', "~1")
    } else {
        token.to_string()
    }
}

/// `base` + `/` + escaped `token`.
pub fn child(base: &str, token: &str) -> String {
    let mut s = String::with_capacity(base.len() + token.len() + 1);
    s.push_str(base);
    s.push('/');
    s.push_str(&escape_token(token));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("Prodcut", ["Order", "Product"]),
            Some("Product")
        );
        assert_eq!(
            did_you_mean("compensat", ["compensate", "next"]),
            Some("compensate")
        );
        assert_eq!(did_you_mean("zzz", ["Order", "Product"]), None);
        assert_eq!(
            suggest("zzz", ["a", "b"], "none"),
            "expected one of `a`, `b`"
        );
        assert_eq!(child("/tools", "a/b~"), "/tools/a~1b~0");
    }
}
