//! Tokens of the value language.

use super::{ParseError, Span};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An integer literal, unsigned as written (the parser applies `-`).
    Int(u64),
    /// An unsigned integer literal (`1u`).
    Uint(u64),
    Double(f64),
    Str(String),
    /// A bytes literal (`b'abc'`).
    Bytes(Vec<u8>),
    Ident(String),
    True,
    False,
    Null,
    In,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Dot,
    Comma,
    Colon,
    Question,
    Bang,
    Minus,
    Plus,
    Star,
    Slash,
    Percent,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Eof,
}

impl Tok {
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("`{i}`"),
            Tok::Uint(i) => format!("`{i}u`"),
            Tok::Bytes(_) => "a bytes literal".to_string(),
            Tok::Double(d) => format!("`{d}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Ident(n) => format!("`{n}`"),
            Tok::Eof => "the end of the expression".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::True => "true",
            Tok::False => "false",
            Tok::Null => "null",
            Tok::In => "in",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::Dot => ".",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Question => "?",
            Tok::Bang => "!",
            Tok::Minus => "-",
            Tok::Plus => "+",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            _ => "?",
        }
    }
}

/// Splits `src` into tokens with their spans; the last token is `Eof`.
pub(crate) fn lex(src: &str) -> Result<Vec<(Tok, Span)>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let Some(&b) = bytes.get(i) else { break };
        let tok = match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => one(&mut i, Tok::LParen),
            b')' => one(&mut i, Tok::RParen),
            b'[' => one(&mut i, Tok::LBracket),
            b']' => one(&mut i, Tok::RBracket),
            b'{' => one(&mut i, Tok::LBrace),
            b'}' => one(&mut i, Tok::RBrace),
            b',' => one(&mut i, Tok::Comma),
            b':' => one(&mut i, Tok::Colon),
            b'?' => one(&mut i, Tok::Question),
            b'+' => one(&mut i, Tok::Plus),
            b'-' => one(&mut i, Tok::Minus),
            b'*' => one(&mut i, Tok::Star),
            b'/' => one(&mut i, Tok::Slash),
            b'%' => one(&mut i, Tok::Percent),
            b'!' => two(bytes, &mut i, b'=', Tok::NotEq, Tok::Bang),
            b'<' => two(bytes, &mut i, b'=', Tok::Le, Tok::Lt),
            b'>' => two(bytes, &mut i, b'=', Tok::Ge, Tok::Gt),
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::EqEq
            }
            b'&' if bytes.get(i + 1) == Some(&b'&') => {
                i += 2;
                Tok::AndAnd
            }
            b'|' if bytes.get(i + 1) == Some(&b'|') => {
                i += 2;
                Tok::OrOr
            }
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => number(src, &mut i)?,
            b'.' => one(&mut i, Tok::Dot),
            b'0'..=b'9' => number(src, &mut i)?,
            b'\'' | b'"' => string(src, &mut i, start, false, false)?,
            // Prefixes: `r` raw, `b` bytes, both in either order.
            b'r' | b'R' | b'b' | b'B'
                if matches!(bytes.get(i + 1), Some(b'\'' | b'"'))
                    || (matches!(bytes.get(i + 1), Some(b'r' | b'R' | b'b' | b'B'))
                        && !bytes.get(i + 1).is_some_and(|c| c.eq_ignore_ascii_case(&b))
                        && matches!(bytes.get(i + 2), Some(b'\'' | b'"'))) =>
            {
                let mut raw = false;
                let mut is_bytes = false;
                while let Some(c @ (b'r' | b'R' | b'b' | b'B')) = bytes.get(i).copied() {
                    raw |= c.eq_ignore_ascii_case(&b'r');
                    is_bytes |= c.eq_ignore_ascii_case(&b'b');
                    i += 1;
                }
                string(src, &mut i, start, raw, is_bytes)?
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    i += 1;
                }
                let word = src.get(start..i).unwrap_or_default();
                match word {
                    "true" => Tok::True,
                    "false" => Tok::False,
                    "null" => Tok::Null,
                    "in" => Tok::In,
                    w => Tok::Ident(w.to_string()),
                }
            }
            b'=' => {
                return Err(ParseError {
                    message: "`=` is not an operator".to_string() + "; use `==` to compare",
                    span: Span::new(start, start + 1),
                });
            }
            _ => {
                let ch = src
                    .get(start..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('?');
                return Err(ParseError {
                    message: format!("unexpected character `{ch}`"),
                    span: Span::new(start, start + ch.len_utf8()),
                });
            }
        };
        out.push((tok, Span::new(start, i)));
    }
    out.push((Tok::Eof, Span::new(src.len(), src.len())));
    Ok(out)
}

fn one(i: &mut usize, t: Tok) -> Tok {
    *i += 1;
    t
}

fn two(bytes: &[u8], i: &mut usize, second: u8, long: Tok, short: Tok) -> Tok {
    if bytes.get(*i + 1) == Some(&second) {
        *i += 2;
        long
    } else {
        *i += 1;
        short
    }
}

fn number(src: &str, i: &mut usize) -> Result<Tok, ParseError> {
    let bytes = src.as_bytes();
    let start = *i;
    let err = |msg: &str, end: usize| ParseError {
        message: msg.to_string(),
        span: Span::new(start, end),
    };
    if bytes.get(*i) == Some(&b'0') && matches!(bytes.get(*i + 1), Some(b'x' | b'X')) {
        *i += 2;
        let digits = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_hexdigit) {
            *i += 1;
        }
        let text = src.get(digits..*i).unwrap_or_default();
        let unsigned = matches!(bytes.get(*i), Some(b'u' | b'U'));
        if unsigned {
            *i += 1;
        }
        return u64::from_str_radix(text, 16)
            .map(if unsigned { Tok::Uint } else { Tok::Int })
            .map_err(|_| err("invalid hexadecimal integer", *i));
    }
    let mut is_double = false;
    while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
        *i += 1;
    }
    if bytes.get(*i) == Some(&b'.') && bytes.get(*i + 1).is_some_and(u8::is_ascii_digit) {
        is_double = true;
        *i += 1;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
    }
    if matches!(bytes.get(*i), Some(b'e' | b'E')) {
        let save = *i;
        *i += 1;
        if matches!(bytes.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        if bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            is_double = true;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
        } else {
            *i = save;
        }
    }
    let text = src.get(start..*i).unwrap_or_default();
    if !is_double && matches!(bytes.get(*i), Some(b'u' | b'U')) {
        *i += 1;
        if bytes
            .get(*i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return Err(err("a number cannot run into a name", *i + 1));
        }
        return text
            .parse::<u64>()
            .map(Tok::Uint)
            .map_err(|_| err("integer literal out of range", *i));
    }
    if bytes
        .get(*i)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return Err(err("a number cannot run into a name", *i + 1));
    }
    if is_double {
        text.parse::<f64>()
            .map(Tok::Double)
            .map_err(|_| err("invalid number", *i))
    } else {
        text.parse::<u64>()
            .map(Tok::Int)
            .map_err(|_| err("integer literal out of range", *i))
    }
}

/// A string or bytes literal whose opening quote is at `*i` (`start` is
/// where its prefix began): single or triple quotes, CEL's escapes
/// (`\a \b \f \n \r \t \v \\ \' \" \` \?`, `\xHH`, `\uHHHH`,
/// `\UHHHHHHHH`, octal `\ooo`), none in a raw literal. In a string `\x`
/// and octal escapes are code points; in bytes, byte values.
fn string(
    src: &str,
    i: &mut usize,
    start: usize,
    raw: bool,
    is_bytes: bool,
) -> Result<Tok, ParseError> {
    let b = src.as_bytes();
    let Some(&quote) = b.get(*i) else {
        return Err(ParseError {
            message: "unterminated string".to_string(),
            span: Span::new(start, src.len()),
        });
    };
    let triple = b.get(*i + 1) == Some(&quote) && b.get(*i + 2) == Some(&quote);
    *i += if triple { 3 } else { 1 };
    let unterminated = || ParseError {
        message: "unterminated string".to_string(),
        span: Span::new(start, src.len()),
    };
    let mut out: Vec<u8> = Vec::new();
    loop {
        let Some(&c) = b.get(*i) else {
            return Err(unterminated());
        };
        if c == quote
            && (!triple || (b.get(*i + 1) == Some(&quote) && b.get(*i + 2) == Some(&quote)))
        {
            *i += if triple { 3 } else { 1 };
            break;
        }
        if !triple && (c == b'\n' || c == b'\r') {
            return Err(unterminated());
        }
        if c != b'\\' || raw {
            out.push(c);
            *i += 1;
            continue;
        }
        let at = *i;
        let Some(&e) = b.get(*i + 1) else {
            return Err(unterminated());
        };
        *i += 2;
        let bad = |end: usize| ParseError {
            message: "invalid escape sequence".to_string(),
            span: Span::new(at, end),
        };
        let push_char = |out: &mut Vec<u8>, code: u32, end: usize| match char::from_u32(code) {
            Some(ch) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                Ok(())
            }
            None => Err(bad(end)),
        };
        match e {
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'\\' | b'\'' | b'"' | b'`' | b'?' => out.push(e),
            b'x' | b'X' | b'u' | b'U' => {
                let n = match e {
                    b'u' => 4,
                    b'U' => 8,
                    _ => 2,
                };
                let digits = b.get(*i..*i + n).ok_or_else(|| bad(src.len()))?;
                let mut code = 0u32;
                for d in digits {
                    code = code * 16 + (*d as char).to_digit(16).ok_or_else(|| bad(*i + n))?;
                }
                *i += n;
                if is_bytes && matches!(e, b'x' | b'X') {
                    out.push(u8::try_from(code).map_err(|_| bad(*i))?);
                } else {
                    push_char(&mut out, code, *i)?;
                }
            }
            b'0'..=b'3' => {
                let digits = b.get(*i..*i + 2).ok_or_else(|| bad(src.len()))?;
                let mut code = u32::from(e - b'0');
                for d in digits {
                    if !(b'0'..=b'7').contains(d) {
                        return Err(bad(*i + 2));
                    }
                    code = code * 8 + u32::from(d - b'0');
                }
                *i += 2;
                if is_bytes {
                    out.push(u8::try_from(code).map_err(|_| bad(*i))?);
                } else {
                    push_char(&mut out, code, *i)?;
                }
            }
            _ => return Err(bad(*i)),
        }
    }
    if is_bytes {
        return Ok(Tok::Bytes(out));
    }
    String::from_utf8(out)
        .map(Tok::Str)
        .map_err(|_| ParseError {
            message: "invalid UTF-8 in a string".to_string(),
            span: Span::new(start, *i),
        })
}
