//! JSON Patch (RFC 6902): applied to a JSON value, or to a spec's text so
//! that everything the patch does not touch keeps its formatting.

mod text;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use text::apply_text;

/// One JSON Patch operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Add a member or element (replaces an existing member).
    Add {
        /// Where.
        path: String,
        /// What.
        value: Value,
    },
    /// Remove a member or element.
    Remove {
        /// Where.
        path: String,
    },
    /// Replace an existing value.
    Replace {
        /// Where.
        path: String,
        /// With what.
        value: Value,
    },
    /// Move a value.
    Move {
        /// From where.
        from: String,
        /// To where.
        path: String,
    },
    /// Copy a value.
    Copy {
        /// From where.
        from: String,
        /// To where.
        path: String,
    },
    /// Check a value.
    Test {
        /// Where.
        path: String,
        /// The expected value.
        value: Value,
    },
}

/// Why a patch did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The pointer leads nowhere.
    #[error("no value at `{path}`")]
    NotFound {
        /// The pointer.
        path: String,
    },
    /// The pointer is malformed.
    #[error("`{path}` is not a valid JSON Pointer")]
    BadPointer {
        /// The pointer.
        path: String,
    },
    /// A `test` operation failed.
    #[error("the value at `{path}` is not the expected one")]
    TestFailed {
        /// The pointer.
        path: String,
    },
}

/// Splits a JSON Pointer into unescaped tokens.
pub fn tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| PatchError::BadPointer {
            path: pointer.to_string(),
        })?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// Applies `ops` to `doc`, all or nothing.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<(), PatchError> {
    let mut work = doc.clone();
    for op in ops {
        apply_one(&mut work, op)?;
    }
    *doc = work;
    Ok(())
}

fn not_found(path: &str) -> PatchError {
    PatchError::NotFound {
        path: path.to_string(),
    }
}

fn parent_mut<'v>(doc: &'v mut Value, path: &str) -> Result<(&'v mut Value, String), PatchError> {
    let mut toks = tokens(path)?;
    let last = toks.pop().ok_or_else(|| not_found(path))?;
    let mut cur = doc;
    for t in &toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| not_found(path))?;
    }
    Ok((cur, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|&i| i <= a.len())
                    .ok_or_else(|| not_found(path))?
            };
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(not_found(path)),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = parent_mut(doc, path)?;
    match parent {
        Value::Object(m) => m.shift_remove(&last).ok_or_else(|| not_found(path)),
        Value::Array(a) => {
            let idx = last
                .parse::<usize>()
                .ok()
                .filter(|&i| i < a.len())
                .ok_or_else(|| not_found(path))?;
            Ok(a.remove(idx))
        }
        _ => Err(not_found(path)),
    }
}

fn get<'v>(doc: &'v Value, path: &str) -> Result<&'v Value, PatchError> {
    tokens(path)?;
    doc.pointer(path).ok_or_else(|| not_found(path))
}

fn apply_one(doc: &mut Value, op: &Op) -> Result<(), PatchError> {
    match op {
        Op::Add { path, value } => add(doc, path, value.clone()),
        Op::Remove { path } => remove(doc, path).map(|_| ()),
        Op::Replace { path, value } => {
            if path.is_empty() {
                *doc = value.clone();
                return Ok(());
            }
            let slot = doc.pointer_mut(path).ok_or_else(|| not_found(path))?;
            *slot = value.clone();
            Ok(())
        }
        Op::Move { from, path } => {
            if path.starts_with(&format!("{from}/")) {
                return Err(PatchError::BadPointer { path: path.clone() });
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        Op::Copy { from, path } => {
            let v = get(doc, from)?.clone();
            add(doc, path, v)
        }
        Op::Test { path, value } => {
            if get(doc, path)? == value {
                Ok(())
            } else {
                Err(PatchError::TestFailed { path: path.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc6902_basics() {
        let mut d = json!({"a": {"b": 1}, "l": [1, 2]});
        apply(
            &mut d,
            &[
                Op::Add {
                    path: "/a/c".into(),
                    value: json!(2),
                },
                Op::Add {
                    path: "/l/-".into(),
                    value: json!(3),
                },
                Op::Add {
                    path: "/l/0".into(),
                    value: json!(0),
                },
                Op::Remove {
                    path: "/a/b".into(),
                },
                Op::Replace {
                    path: "/a/c".into(),
                    value: json!(5),
                },
                Op::Copy {
                    from: "/a".into(),
                    path: "/z".into(),
                },
                Op::Test {
                    path: "/z/c".into(),
                    value: json!(5),
                },
            ],
        )
        .unwrap();
        assert_eq!(d, json!({"a": {"c": 5}, "l": [0, 1, 2, 3], "z": {"c": 5}}));
        let before = d.clone();
        let err = apply(
            &mut d,
            &[
                Op::Remove {
                    path: "/a/c".into(),
                },
                Op::Remove {
                    path: "/nope".into(),
                },
            ],
        );
        assert!(err.is_err());
        assert_eq!(d, before, "a failed patch changes nothing");
    }
}
