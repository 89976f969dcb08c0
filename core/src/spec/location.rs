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

fn skip_string(text: &str, i: usize) -> Option<usize> {
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
}
