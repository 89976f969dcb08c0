//! Opaque paging cursors: the `next` of a `read` with `page`, given back as
//! its `after`.
//!
//! A cursor holds the sort keys (`orderBy` plus `id`) of the last row of a
//! page, so the next page starts strictly after it (keyset paging: stable
//! while rows are inserted, and independent of whether that row still
//! exists), and names the read it belongs to: its node, entity and order. It
//! carries a checksum, so a cursor cut or changed by accident is refused
//! instead of read. It is not a secret and not a capability: whatever
//! position a forged cursor names, the read still applies its `where` and
//! the owner rules.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value as Json;

use crate::hash::{json_text, sha256_hex};
use crate::ports::SortKey;

/// The name of a read in its cursors: its node's pointer, entity and order.
pub(crate) fn read_id(node_path: &str, entity: &str, order: &[SortKey]) -> String {
    let mut s = format!("{node_path}\n{entity}");
    for k in order {
        s.push('\n');
        s.push_str(&k.field);
        s.push_str(if k.desc { " desc" } else { " asc" });
    }
    sha256_hex(s.as_bytes())[..16].to_owned()
}

/// The cursor after a row whose sort keys are `keys`.
pub(crate) fn encode(read: &str, keys: Vec<Json>) -> String {
    let payload = json_text(&Json::Array(vec![
        Json::String(read.to_owned()),
        Json::Array(keys),
    ]));
    let sum = &sha256_hex(payload.as_bytes())[..12];
    format!("{}.{sum}", URL_SAFE_NO_PAD.encode(payload.as_bytes()))
}

/// The sort keys a cursor of `read` holds (`keys` of them).
///
/// # Errors
/// Why the cursor is not one of this read's, in words for the caller.
pub(crate) fn decode(read: &str, cursor: &str, keys: usize) -> Result<Vec<Json>, &'static str> {
    const BROKEN: &str = "the paging cursor is not one this read gave (cut or changed)";
    let (body, sum) = cursor.rsplit_once('.').ok_or(BROKEN)?;
    let payload = URL_SAFE_NO_PAD.decode(body).map_err(|_| BROKEN)?;
    if sha256_hex(&payload).get(..12) != Some(sum) {
        return Err(BROKEN);
    }
    let Ok(Json::Array(parts)) = serde_json::from_slice::<Json>(&payload) else {
        return Err(BROKEN);
    };
    match parts.as_slice() {
        [Json::String(r), Json::Array(values)] if r == read && values.len() == keys => {
            Ok(values.clone())
        }
        [Json::String(_), Json::Array(_)] => {
            Err("the paging cursor belongs to another read (another node, entity or order)")
        }
        _ => Err(BROKEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Vec<SortKey> {
        vec![
            SortKey {
                field: "start_at".into(),
                desc: true,
            },
            SortKey {
                field: "id".into(),
                desc: false,
            },
        ]
    }

    #[test]
    fn a_cursor_gives_back_its_keys_to_its_read_only() {
        let read = read_id("/tools/list/flow/nodes/find", "Appointment", &order());
        let keys = vec![json!("2026-01-01T10:00:00Z"), json!("a-b")];
        let c = encode(&read, keys.clone());
        assert!(
            c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
            "{c}"
        );
        assert_eq!(decode(&read, &c, 2).unwrap(), keys);
        // Another node, entity or order: refused as another read's.
        for other in [
            read_id("/tools/list/flow/nodes/other", "Appointment", &order()),
            read_id("/tools/list/flow/nodes/find", "Invoice", &order()),
            read_id("/tools/list/flow/nodes/find", "Appointment", &order()[1..]),
        ] {
            assert!(decode(&other, &c, 2).unwrap_err().contains("another read"));
        }
        // Cut, changed, garbage, or the wrong number of keys: broken.
        let mut changed = c.clone().into_bytes();
        changed[3] = if changed[3] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        for bad in [&c[..c.len() - 1], &changed, "", ".", "abc", "x.y"] {
            assert!(
                decode(&read, bad, 2)
                    .unwrap_err()
                    .contains("cut or changed"),
                "{bad}"
            );
        }
        assert!(decode(&read, &c, 3).is_err());
    }
}
