//! Tokens of the value language.

use super::{ParseError, Span};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An integer literal, unsigned as written (the parser applies `-`).
    Int(u64),
    Double(f64),
    Str(String),
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
            b'\'' | b'"' => string(src, &mut i, false)?,
            b'r' | b'R' if matches!(bytes.get(i + 1), Some(b'\'' | b'"')) => {
                i += 1;
                string(src, &mut i, true)?
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
        return u64::from_str_radix(text, 16)
            .map(Tok::Int)
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
    if bytes
        .get(*i)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return Err(err("a number cannot run into a name", *i + 1));
    }
    let text = src.get(start..*i).unwrap_or_default();
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

fn string(src: &str, i: &mut usize, raw: bool) -> Result<Tok, ParseError> {
    let start = if raw { *i - 1 } else { *i };
    let rest = src.get(*i..).unwrap_or_default();
    let mut chars = rest.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err(ParseError {
            message: "unterminated string".to_string(),
            span: Span::new(start, src.len()),
        });
    };
    let mut out = String::new();
    let unterminated = || ParseError {
        message: "unterminated string".to_string(),
        span: Span::new(start, src.len()),
    };
    loop {
        let Some((off, c)) = chars.next() else {
            return Err(unterminated());
        };
        if c == quote {
            *i += off + c.len_utf8();
            return Ok(Tok::Str(out));
        }
        if c == '\n' {
            return Err(unterminated());
        }
        if c != '\\' || raw {
            out.push(c);
            continue;
        }
        let Some((eoff, e)) = chars.next() else {
            return Err(unterminated());
        };
        let bad = |len: usize| ParseError {
            message: "invalid escape sequence".to_string(),
            span: Span::new(*i + off, *i + eoff + len),
        };
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '0' => out.push('\0'),
            '\\' | '\'' | '"' | '`' | '?' => out.push(e),
            'u' | 'x' => {
                let n = if e == 'u' { 4 } else { 2 };
                let mut code = 0u32;
                for _ in 0..n {
                    let Some((_, h)) = chars.next() else {
                        return Err(bad(1));
                    };
                    let Some(d) = h.to_digit(16) else {
                        return Err(bad(1));
                    };
                    code = code * 16 + d;
                }
                match char::from_u32(code) {
                    Some(ch) => out.push(ch),
                    None => return Err(bad(n + 1)),
                }
            }
            _ => return Err(bad(e.len_utf8() + 1)),
        }
    }
}
