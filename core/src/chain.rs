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

/// [`seal_entry`] of an entry given as its canonical text without `seq`,
/// `prev` and `hash` (what a Postgres request queues): the same text and
/// hash, made by inserting `"prev"` and `"seq"` at their sorted places among
/// the top-level members instead of parsing the entry and writing it again
/// (an entry may hold every row its request read). `None` when the text is
/// not such a text (not a compact object with its top-level keys sorted,
/// a key with an escape, or one of the three keys present): the caller
/// parses it then.
pub fn seal_text(queued: &str, seq: u64, prev: &str) -> Option<(String, String)> {
    let members = members(queued)?;
    if members
        .iter()
        .any(|(k, _)| matches!(*k, "seq" | "prev" | "hash"))
        || members
            .iter()
            .zip(members.iter().skip(1))
            .any(|((a, _), (b, _))| a >= b)
    {
        return None;
    }
    let prev_member = format!("\"prev\":{}", crate::hash::canonical(&Value::from(prev)));
    let seq_member = format!("\"seq\":{seq}");
    let mut added = [("prev", prev_member.as_str()), ("seq", seq_member.as_str())]
        .into_iter()
        .peekable();
    let mut out = String::with_capacity(queued.len() + prev_member.len() + seq_member.len() + 2);
    out.push('{');
    let push = |out: &mut String, text: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(text);
    };
    for (key, text) in members {
        while let Some((_, t)) = added.next_if(|(k, _)| *k < key) {
            push(&mut out, t);
        }
        push(&mut out, text);
    }
    for (_, t) in added {
        push(&mut out, t);
    }
    out.push('}');
    let hash = sha256_hex(out.as_bytes());
    Some((out, hash))
}

/// The entry a queued text that is not a JSON object is chained as (an
/// `unreadable` entry holding the text as it was found), so that a row
/// written to the queue by hand cannot stop the chain.
pub fn unreadable_entry(text: &str) -> Value {
    serde_json::json!({"kind": UNREADABLE, "text": text})
}

/// The `kind` of [`unreadable_entry`].
pub const UNREADABLE: &str = "unreadable";

/// The `execution` and `kind` columns of a chained entry: its own
/// `execution` (else empty) and `kind` (else `final`), as a request queues
/// them; `sinew audit verify` checks the columns say so.
pub fn entry_columns(entry: &Map<String, Value>) -> (String, String) {
    let text = |k: &str| entry.get(k).and_then(Value::as_str);
    (
        text("execution").unwrap_or_default().to_owned(),
        text("kind").unwrap_or("final").to_owned(),
    )
}

/// [`entry_columns`] of a sealed entry's compact text, reading only its
/// top-level `execution` and `kind` (an entry may hold every row its
/// request read); parsed whole when the text is not compact.
pub fn text_columns(sealed: &str) -> (String, String) {
    let Some(members) = members(sealed) else {
        return entry_columns(&serde_json::from_str(sealed).unwrap_or_default());
    };
    let text = |key: &str| {
        let (_, member) = members.iter().find(|(k, _)| *k == key)?;
        // `"key":` before the value.
        match serde_json::from_str::<Value>(member.get(key.len() + 3..)?).ok()? {
            Value::String(s) => Some(s),
            _ => None,
        }
    };
    (
        text("execution").unwrap_or_default(),
        text("kind").unwrap_or_else(|| "final".to_owned()),
    )
}

/// The top-level members of a compact JSON object's text: each key and
/// the member's text (`"key":value`). `None` when the text is not such an
/// object, or a key has an escape.
fn members(text: &str) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') || b.last() != Some(&b'}') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = 1;
    if b.len() > 2 {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = i + 1 + b.get(i + 1..)?.iter().position(|&c| c == b'"')?;
            let key = text.get(i + 1..end)?;
            if key.contains('\\') || b.get(end + 1) != Some(&b':') {
                return None;
            }
            let after = skip_value(b, end + 2).filter(|&a| a > end + 2)?;
            members.push((key, text.get(i..after)?));
            match b.get(after) {
                Some(b',') => i = after + 1,
                Some(b'}') if after == b.len() - 1 => break,
                _ => return None,
            }
        }
    }
    Some(members)
}

/// The index just after the compact JSON value that starts at `i` (none
/// if it holds a space outside its strings).
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    match *b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            b',' | b'}' | b']' if depth == 0 => return Some(i),
            // Compact text only.
            b' ' | b'\n' | b'\r' | b'\t' => return None,
            _ => i += 1,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::canonical_members;
    use serde_json::json;

    /// What a Postgres request queues: the canonical text without the
    /// three keys.
    fn queued(entry: &Value) -> String {
        let m = entry.as_object().expect("an object");
        canonical_members(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "seq" | "prev" | "hash")),
        )
    }

    fn same(entry: Value, seq: u64) {
        let prev = crate::hash::sha256_hex(format!("{seq}").as_bytes());
        let text = queued(&entry);
        let want = seal_entry(entry, seq, &prev).expect("an object");
        assert_eq!(seal_text(&text, seq, &prev), Some(want), "{text}");
    }

    #[test]
    fn sealing_the_text_is_sealing_the_entry() {
        same(json!({}), 1);
        same(json!({"a": 1}), 7);
        same(
            json!({"zz": [1, {"b": "}", "a": "\"{"}], "kind": "final"}),
            12,
        );
        // Keys around and between the two new ones, prefixes included.
        for key in [
            "p", "pre", "prev0", "prevx", "q", "s", "se", "seq0", "seqq", "t", "Z", "é",
        ] {
            same(
                json!({ key: {"nested": [true, null, -1.5e-7]}, "outcome": "ok", "tape": "x" }),
                3,
            );
            same(json!({ key: "only" }), 99);
        }
        same(
            json!({
                "bundle": "sha256:ab", "calls": [], "component": "c", "durationMs": 3,
                "execution": "e", "input": {"note": "a \\ b \" c", "n": 18446744073709551615u64},
                "kind": "final", "outcome": "ok", "policies": [{"action": "allow", "name": "p"}],
                "rows": [{"after": 2, "before": 1, "entity": "Account", "id": "x", "op": "update"}],
                "status": 201, "subject": "teller-1", "tape": {"v": 1, "steps": [[0, "a", ["="]]]},
                "time": "2026-12-06T10:00:00Z", "tool": "transfer", "ünïcode": "∑"
            }),
            123_456,
        );
        // Generated entries: every shape of value at every key.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let keys = [
            "a", "calls", "hash0", "outcome", "p", "prev_", "rows", "s", "seq_", "status", "tool",
            "z",
        ];
        for n in 0..300u64 {
            let mut m = serde_json::Map::new();
            for _ in 0..(next() % 8) {
                let key = keys[usize::try_from(next() % 12).unwrap_or(0)];
                let v = match next() % 6 {
                    0 => json!(null),
                    1 => json!(next() % 1000),
                    2 => json!(format!("s{{\"[{}", next() % 10)),
                    3 => json!([next() % 3, "]", {"k": "}"}]),
                    4 => json!({"b": {"c": [false]}, "a": -0.25}),
                    _ => json!(true),
                };
                m.insert(key.to_owned(), v);
            }
            same(Value::Object(m), n + 1);
        }
    }

    #[test]
    fn a_text_that_is_not_a_queued_entry_is_left_to_the_parser() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"seq":1}"#,
            r#"{"prev":"x"}"#,
            r#"{"hash":"x"}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a\"b":1}"#,
            r#"{"a": 1}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} "#,
        ] {
            assert_eq!(seal_text(text, 1, GENESIS_HASH), None, "{text}");
        }
    }
}
