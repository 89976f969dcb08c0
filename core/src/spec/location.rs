//! Where a JSON Pointer lands in the spec's text: byte spans, lines and
//! columns, and the members of objects and arrays with their spans (used to
//! patch a spec's text without reformatting it).
//!
//! Everything here walks the text iteratively; no depth of nesting can
//! overflow the stack.

use crate::diag::Position;
use crate::spec::source::position_of;

/// A value's place in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte of the value.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// One member of an object (or element of an array: `key` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key, decoded, for object members.
    pub key: Option<String>,
    /// Where the member starts: the key's opening quote, or the element.
    pub start: usize,
    /// The value's span.
    pub value: Span,
}

/// Where `pointer` lands: line and column of the value's first character.
pub fn locate(text: &str, pointer: &str) -> Option<Position> {
    find(text, pointer).map(|s| position_of(text, s.start))
}

/// Like [`locate`], but falls back to the longest prefix of `pointer` that
/// exists (a missing key is best shown at its object).
pub fn locate_nearest(text: &str, pointer: &str) -> Position {
    let mut p = pointer;
    loop {
        if let Some(pos) = locate(text, p) {
            return pos;
        }
        match p.rfind('/') {
            Some(i) => p = p.get(..i).unwrap_or_default(),
            None => return Position { line: 1, column: 1 },
        }
    }
}

/// The span of the value at `pointer`.
pub fn find(text: &str, pointer: &str) -> Option<Span> {
    let mut pos = skip_ws(text, 0);
    if !pointer.is_empty() {
        let rest = pointer.strip_prefix('/')?;
        for token in rest.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            let members = members(text, pos)?;
            let is_array = text.as_bytes().get(pos) == Some(&b'[');
            let found = if is_array {
                let idx: usize = token.parse().ok()?;
                members.get(idx)
            } else {
                members
                    .iter()
                    .find(|m| m.key.as_deref() == Some(token.as_str()))
            };
            pos = found?.value.start;
        }
    }
    let end = skip_value(text, pos)?;
    Some(Span { start: pos, end })
}

/// Where a JSON Pointer is shown in an editor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The member's key (quotes included) when the pointer names an object
    /// member, else the value's first line.
    pub mark: Span,
    /// The value.
    pub value: Span,
    /// Whether the pointer itself is in the text; `false` when the place is
    /// its nearest existing ancestor's (a member a fix would add).
    pub exact: bool,
}

/// The places of many pointers in one walk over the text (an editor asks
/// for every finding on every keystroke). Pointers are not unescaped: each
/// member's pointer is built with `~0`/`~1` escaping and compared as text.
/// A pointer not in the text gets its nearest existing ancestor's place;
/// text that is not JSON gives the document's first byte for all.
pub fn places(text: &str, pointers: &[&str]) -> Vec<Place> {
    use std::collections::{HashMap, HashSet};
    // Every prefix of a wanted pointer is wanted too (for the fallback).
    let mut wanted: HashSet<&str> = HashSet::new();
    for p in pointers {
        let mut q = *p;
        while wanted.insert(q) {
            match q.rfind('/') {
                Some(i) => q = q.get(..i).unwrap_or_default(),
                None => break,
            }
        }
    }
    let mut found: HashMap<String, Place> = HashMap::new();
    let root = skip_ws(text, 0);
    let first_line = |s: Span| Span {
        start: s.start,
        end: text
            .get(s.start..s.end)
            .and_then(|v| v.find('\n'))
            .map_or(s.end, |n| s.start + n),
    };
    if let Some(end) = skip_value(text, root) {
        let value = Span { start: root, end };
        let whole = Place {
            mark: first_line(value),
            value,
            exact: true,
        };
        found.insert(String::new(), whole);
        // Depth-first, iteratively, into the containers someone asked about.
        let mut stack = vec![(String::new(), root)];
        while let Some((pointer, at)) = stack.pop() {
            let Some(list) = members(text, at) else {
                continue;
            };
            for (i, m) in list.into_iter().enumerate() {
                let child = match &m.key {
                    Some(k) => format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")),
                    None => format!("{pointer}/{i}"),
                };
                if !wanted.contains(child.as_str()) {
                    continue;
                }
                let mark = match m.key {
                    Some(_) => Span {
                        start: m.start,
                        end: skip_string(text, m.start).unwrap_or(m.start),
                    },
                    None => first_line(m.value),
                };
                found.insert(
                    child.clone(),
                    Place {
                        mark,
                        value: m.value,
                        exact: true,
                    },
                );
                stack.push((child, m.value.start));
            }
        }
    }
    let start = Span {
        start: root.min(text.len()),
        end: root.min(text.len()),
    };
    pointers
        .iter()
        .map(|p| {
            let mut q = *p;
            loop {
                if let Some(place) = found.get(q) {
                    return Place {
                        exact: q.len() == p.len(),
                        ..*place
                    };
                }
                match q.rfind('/') {
                    Some(i) => q = q.get(..i).unwrap_or_default(),
                    None => {
                        return Place {
                            mark: start,
                            value: start,
                            exact: false,
                        };
                    }
                }
            }
        })
        .collect()
}

/// The members of the object or array starting at byte `at`.
pub fn members(text: &str, at: usize) -> Option<Vec<Member>> {
    let bytes = text.as_bytes();
    let open = *bytes.get(at)?;
    let (is_obj, close) = match open {
        b'{' => (true, b'}'),
        b'[' => (false, b']'),
        _ => return None,
    };
    let mut out = Vec::new();
    let mut i = skip_ws(text, at + 1);
    if bytes.get(i) == Some(&close) {
        return Some(out);
    }
    loop {
        let start = i;
        let key = if is_obj {
            let end = skip_string(text, i)?;
            let raw = text.get(i..end)?;
            let key: String = serde_json::from_str(raw).ok()?;
            i = skip_ws(text, end);
            if bytes.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(text, i + 1);
            Some(key)
        } else {
            None
        };
        let vend = skip_value(text, i)?;
        out.push(Member {
            key,
            start,
            value: Span {
                start: i,
                end: vend,
            },
        });
        i = skip_ws(text, vend);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(&c) if c == close => return Some(out),
            _ => return None,
        }
    }
}

/// The first non-whitespace byte at or after `i`.
pub fn skip_ws(text: &str, mut i: usize) -> usize {
    let bytes = text.as_bytes();
    while bytes
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

pub(crate) fn skip_string(text: &str, i: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match bytes.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// One past the end of the value starting at `i`.
pub fn skip_value(text: &str, i: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    match bytes.get(i)? {
        b'"' => skip_string(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match bytes.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while bytes
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "{\n  \"a\": {\"b~/\": [1, {\"c\": \"x\\\"}\"}]},\n  \"d\": true\n}";

    #[test]
    fn finds_values() {
        let s = find(DOC, "/a/b~0~1/1/c").unwrap();
        assert_eq!(&DOC[s.start..s.end], "\"x\\\"}\"");
        let p = locate(DOC, "/d").unwrap();
        assert_eq!((p.line, p.column), (3, 8));
        assert_eq!(find(DOC, "/zz"), None);
        assert_eq!(find(DOC, "/a/b~0~1/7"), None);
        let p = locate_nearest(DOC, "/a/nope/x");
        assert_eq!((p.line, p.column), (2, 8));
        let whole = find(DOC, "").unwrap();
        assert_eq!((whole.start, whole.end), (0, DOC.len()));
    }

    #[test]
    fn lists_members() {
        let m = members(DOC, 0).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].key.as_deref(), Some("d"));
        assert_eq!(members("[]", 0).unwrap().len(), 0);
        assert_eq!(members("{ }", 0).unwrap().len(), 0);
    }

    #[test]
    fn places_pointers_for_editors() {
        let got = places(
            DOC,
            &["/a/b~0~1/1/c", "/d", "/a/b~0~1/1", "/a/nope/x", "", "/zz"],
        );
        let text = |s: Span| &DOC[s.start..s.end];
        assert_eq!(text(got[0].mark), "\"c\"");
        assert_eq!(text(got[0].value), "\"x\\\"}\"");
        assert!(got[0].exact);
        assert_eq!(text(got[1].mark), "\"d\"");
        assert_eq!(text(got[1].value), "true");
        // An array element is marked by its value's first line.
        assert_eq!(text(got[2].mark), "{\"c\": \"x\\\"}\"}");
        // Missing: the nearest ancestor, not exact.
        assert_eq!(text(got[3].mark), "\"a\"");
        assert!(!got[3].exact);
        assert_eq!(text(got[4].mark), "{");
        assert_eq!(got[4].value.end, DOC.len());
        assert_eq!(text(got[5].mark), "{");
        assert!(!got[5].exact);
        // Not JSON: everything at the start, nothing found.
        let bad = places("  {\"a\": ", &["/a"]);
        assert_eq!((bad[0].mark.start, bad[0].exact), (2, false));
        // Agrees with `find` on every value of a real spec.
        let spec = include_str!("../../../specs/examples/shop.json");
        let ptrs = [
            "/tools/place_order/flow/nodes",
            "/entities",
            "/tools/place_order/input",
        ];
        for (p, place) in ptrs.iter().zip(places(spec, &ptrs)) {
            assert_eq!(Some(place.value), find(spec, p), "{p}");
        }
    }
}
