//! The audit chain: every entry carries its place (`seq`), the previous
//! entry's hash (`prev`) and its own (`hash`, the SHA-256 of its canonical
//! JSON), so any change to a stored entry breaks the chain. Shared by every
//! storage (in memory, Postgres), so their chains agree byte for byte.

use serde_json::{Map, Value};

use crate::hash::{canonical as canonical_json, sha256_hex};

/// The `prev` of the first audit entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chained form of an entry: the canonical JSON of the entry with `seq`
/// and `prev` (and without `hash`), and its SHA-256 — what the `hash` is.
/// Every storage stores exactly this text, so chains agree across backends.
pub fn seal_entry(entry: Value, seq: u64, prev: &str) -> Result<(String, String), String> {
    let Value::Object(mut map) = entry else {
        return Err(format!(
            "an audit entry must be a JSON object, not {}",
            crate::diag::a_json(&entry)
        ));
    };
    map.shift_remove("hash");
    map.insert("seq".into(), Value::from(seq));
    map.insert("prev".into(), Value::from(prev));
    let text = canonical_json(&Value::Object(map));
    let hash = sha256_hex(text.as_bytes());
    Ok((text, hash))
}

/// The `escalate` policies an audit entry raises for review: those of a
/// final entry whose flow ran (outcome `ok` or `error`). A replayed entry
/// (an idempotent retry answered from the first call) and a rejected one
/// (turned away before the flow ran, say by a rate limit after the policy
/// fired) raise none: the first call raised them, or nothing happened.
pub fn escalations(entry: &Value) -> Vec<&str> {
    let text = |k: &str| entry.get(k).and_then(Value::as_str);
    if text("kind").is_some_and(|k| k != "final")
        || !matches!(text("outcome"), Some("ok" | "error"))
    {
        return Vec::new();
    }
    entry
        .get("policies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("action").and_then(Value::as_str) == Some("escalate"))
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .collect()
}

/// Walks an audit chain: every entry is an object with `seq` = its position
/// (from 1), `prev` = the previous entry's `hash` ([`GENESIS_HASH`] for the
/// first) and a `hash` matching its content. Returns the number of entries,
/// or a message naming the first broken link.
pub fn verify_audit_chain(entries: &[Value]) -> Result<usize, String> {
    let mut walk = ChainWalk::default();
    for entry in entries {
        let Value::Object(map) = entry else {
            return Err(format!("audit entry {}: not a JSON object", walk.len() + 1));
        };
        let mut content = map.clone();
        let hash = match content.shift_remove("hash") {
            Some(Value::String(h)) => h,
            _ => return Err(format!("audit entry {}: no `hash`", walk.len() + 1)),
        };
        walk.next(&content, &hash)?;
    }
    Ok(walk.len())
}

/// An audit chain walked one entry at a time (storages stream theirs).
#[derive(Debug, Clone)]
pub struct ChainWalk {
    prev: String,
    n: u64,
}

impl Default for ChainWalk {
    fn default() -> Self {
        ChainWalk {
            prev: GENESIS_HASH.to_owned(),
            n: 0,
        }
    }
}

impl ChainWalk {
    /// Entries accepted so far.
    pub fn len(&self) -> usize {
        usize::try_from(self.n).unwrap_or(usize::MAX)
    }

    /// Whether no entry was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Checks the next entry: `content` is the entry without `hash` (with
    /// its `seq` and `prev`), `hash` the one stored beside it.
    pub fn next(&mut self, content: &Map<String, Value>, hash: &str) -> Result<(), String> {
        let n = self.n + 1;
        match content.get("seq").and_then(Value::as_u64) {
            Some(seq) if seq == n => {}
            _ => {
                return Err(format!(
                    "audit entry {n}: `seq` is {}, expected {n} (an entry is missing)",
                    content
                        .get("seq")
                        .map_or_else(|| "missing".to_owned(), Value::to_string)
                ));
            }
        }
        if content.get("prev").and_then(Value::as_str) != Some(self.prev.as_str()) {
            return Err(format!(
                "audit entry {n}: `prev` does not match the hash of the previous entry"
            ));
        }
        let expected = sha256_hex(canonical_json(&Value::Object(content.clone())).as_bytes());
        if expected != hash {
            return Err(format!(
                "audit entry {n}: `hash` does not match its content (the entry was altered)"
            ));
        }
        self.prev = hash.to_owned();
        self.n = n;
        Ok(())
    }
}
