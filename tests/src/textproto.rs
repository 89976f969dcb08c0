//! A reader of the protobuf text format, enough for cel-spec's conformance
//! files: fields `name: scalar`, messages `name { … }` or `name: { … }`,
//! lists `name: [a, b]`, `Any` expansions `[type.googleapis.com/T] { … }`,
//! strings in single or double quotes with C escapes (adjacent strings
//! concatenated), numbers, identifiers (enums, `true`), and `#` comments.
//! No schema: every message is a list of (field, value) pairs in order.

use std::fmt;

/// A value of the text format.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// A string literal, as bytes (escapes may make invalid UTF-8).
    Str(Vec<u8>),
    /// A number, an identifier or a bool, as written.
    Word(String),
    /// A message: its fields in order (a repeated field appears repeatedly).
    Msg(Vec<(String, Text)>),
}

impl Text {
    /// The first field `name` of a message.
    pub fn get(&self, name: &str) -> Option<&Text> {
        match self {
            Text::Msg(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Every field `name` of a message.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Text> + 'a {
        let fields: &[(String, Text)] = match self {
            Text::Msg(f) => f,
            _ => &[],
        };
        fields
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A string field as UTF-8 text (lossy).
    pub fn str(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Text::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Text::Word(w) => Some(w.clone()),
            Text::Msg(_) => None,
        }
    }
}

/// Where the text stopped making sense.
#[derive(Debug)]
pub struct Error {
    /// Byte offset.
    pub at: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.at, self.message)
    }
}

/// Parses a whole file as the fields of one message.
pub fn parse(src: &str) -> Result<Text, Error> {
    let mut p = Parser {
        s: src.as_bytes(),
        i: 0,
    };
    let fields = p.fields(None)?;
    Ok(Text::Msg(fields))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, Error> {
        Err(Error {
            at: self.i,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c == b'#' {
                while let Some(c) = self.peek() {
                    self.i += 1;
                    if c == b'\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn fields(&mut self, close: Option<u8>) -> Result<Vec<(String, Text)>, Error> {
        let mut out = Vec::new();
        loop {
            self.skip();
            match self.peek() {
                None if close.is_none() => return Ok(out),
                None => return self.err("unexpected end"),
                Some(c) if Some(c) == close => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b',') | Some(b';') => {
                    self.i += 1;
                }
                Some(b'[') => {
                    // `[type.googleapis.com/T] { … }`: an Any's expansion.
                    self.i += 1;
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != b']') {
                        self.i += 1;
                    }
                    let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    let v = self.value()?;
                    out.push((format!("[{name}]"), v));
                }
                Some(_) => {
                    let name = self.word()?;
                    self.skip();
                    if self.peek() == Some(b':') {
                        self.i += 1;
                        self.skip();
                    }
                    if self.peek() == Some(b'[') {
                        self.i += 1;
                        loop {
                            self.skip();
                            match self.peek() {
                                Some(b']') => {
                                    self.i += 1;
                                    break;
                                }
                                Some(b',') => self.i += 1,
                                _ => {
                                    let v = self.value()?;
                                    out.push((name.clone(), v));
                                }
                            }
                        }
                    } else {
                        let v = self.value()?;
                        out.push((name, v));
                    }
                }
            }
        }
    }

    fn value(&mut self) -> Result<Text, Error> {
        self.skip();
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                Ok(Text::Msg(self.fields(Some(b'}'))?))
            }
            Some(b'<') => {
                self.i += 1;
                Ok(Text::Msg(self.fields(Some(b'>'))?))
            }
            Some(b'"') | Some(b'\'') => {
                let mut bytes = Vec::new();
                while let Some(q @ (b'"' | b'\'')) = self.peek() {
                    self.i += 1;
                    self.string(q, &mut bytes)?;
                    self.skip();
                }
                Ok(Text::Str(bytes))
            }
            Some(_) => Ok(Text::Word(self.word()?)),
            None => self.err("a value was expected"),
        }
    }

    fn word(&mut self) -> Result<String, Error> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+'))
        {
            self.i += 1;
        }
        if start == self.i {
            return self.err("a name or a number was expected");
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn string(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        loop {
            let Some(c) = self.peek() else {
                return self.err("unterminated string");
            };
            self.i += 1;
            if c == quote {
                return Ok(());
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return self.err("unterminated escape");
            };
            self.i += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'?' => out.push(b'?'),
                b'x' | b'X' => {
                    let mut n = 0u32;
                    let mut k = 0;
                    while k < 2
                        && let Some(d) = self.peek().and_then(|c| (c as char).to_digit(16))
                    {
                        n = n * 16 + d;
                        self.i += 1;
                        k += 1;
                    }
                    out.push(n as u8);
                }
                b'u' | b'U' => {
                    let len = if e == b'u' { 4 } else { 8 };
                    let mut n = 0u32;
                    for _ in 0..len {
                        let Some(d) = self.peek().and_then(|c| (c as char).to_digit(16)) else {
                            return self.err("bad unicode escape");
                        };
                        n = n * 16 + d;
                        self.i += 1;
                    }
                    let ch = char::from_u32(n).unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                b'0'..=b'7' => {
                    let mut n = u32::from(e - b'0');
                    let mut k = 1;
                    while k < 3
                        && let Some(d @ b'0'..=b'7') = self.peek()
                    {
                        n = n * 8 + u32::from(d - b'0');
                        self.i += 1;
                        k += 1;
                    }
                    out.push(n as u8);
                }
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_the_conformance_files_use() {
        let t = parse(
            r#"
            # a comment
            name: "basic"
            section {
              test { name: "a" expr: "1 + 1" value: { int64_value: 2 } }
              test: {
                name: 'b\'q' expr: "'\x41\101' " " + 'c'"
                bindings { key: "x" value { value { list_value { values: [{int64_value: 1}, {int64_value: 2}] } } } }
                value { object_value { [type.googleapis.com/google.protobuf.Duration] { seconds: 3 } } }
              }
            }
            "#,
        )
        .unwrap();
        assert_eq!(t.str("name").as_deref(), Some("basic"));
        let s = t.get("section").unwrap();
        let tests: Vec<_> = s.all("test").collect();
        assert_eq!(tests.len(), 2);
        assert_eq!(tests[1].str("name").as_deref(), Some("b'q"));
        assert_eq!(tests[1].str("expr").as_deref(), Some("'AA'  + 'c'"));
        let list = tests[1]
            .get("bindings")
            .and_then(|b| b.get("value"))
            .and_then(|v| v.get("value"))
            .and_then(|v| v.get("list_value"))
            .unwrap();
        assert_eq!(list.all("values").count(), 2);
        let any = tests[1]
            .get("value")
            .and_then(|v| v.get("object_value"))
            .and_then(|o| o.get("[type.googleapis.com/google.protobuf.Duration]"))
            .unwrap();
        assert_eq!(any.str("seconds").as_deref(), Some("3"));
        assert!(parse("a { b: ").is_err());
    }
}
