//! A Pratt parser for the value language.

use super::lex::{Tok, lex};
use super::{BinaryOp, Expr, ExprKind, Lit, ParseError, Span, UnaryOp};

/// How deeply expressions may nest (parentheses, operators, calls). Keeps
/// every recursive walk of an expression far from the stack's limit.
pub const MAX_DEPTH: usize = 64;

/// Parses one expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    if matches!(toks.first(), Some((Tok::Eof, _))) {
        return Err(ParseError {
            message: "empty expression".to_string(),
            span: Span::new(0, src.len()),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let (e, _) = p.expr()?;
    let (tok, span) = p.peek();
    if *tok != Tok::Eof {
        let msg = format!("unexpected {} after a complete expression", tok.describe());
        return Err(ParseError { message: msg, span });
    }
    Ok(e)
}

struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    /// Current recursion depth.
    depth: usize,
}

/// A parsed expression and the depth of its tree.
type Parsed = (Expr, usize);

fn binop(t: &Tok) -> Option<(BinaryOp, u8)> {
    Some(match t {
        Tok::OrOr => (BinaryOp::Or, 1),
        Tok::AndAnd => (BinaryOp::And, 2),
        Tok::EqEq => (BinaryOp::Eq, 3),
        Tok::NotEq => (BinaryOp::Ne, 3),
        Tok::Lt => (BinaryOp::Lt, 3),
        Tok::Le => (BinaryOp::Le, 3),
        Tok::Gt => (BinaryOp::Gt, 3),
        Tok::Ge => (BinaryOp::Ge, 3),
        Tok::In => (BinaryOp::In, 3),
        Tok::Plus => (BinaryOp::Add, 4),
        Tok::Minus => (BinaryOp::Sub, 4),
        Tok::Star => (BinaryOp::Mul, 5),
        Tok::Slash => (BinaryOp::Div, 5),
        Tok::Percent => (BinaryOp::Rem, 5),
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> (&Tok, Span) {
        match self.toks.get(self.pos).or_else(|| self.toks.last()) {
            Some((t, s)) => (t, *s),
            None => (&Tok::Eof, Span::new(0, 0)),
        }
    }

    fn bump(&mut self) -> (Tok, Span) {
        let (t, s) = self.peek();
        let out = (t.clone(), s);
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        out
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<Span, ParseError> {
        let (tok, span) = self.peek();
        if *tok == want {
            self.bump();
            Ok(span)
        } else {
            Err(ParseError {
                message: format!("expected {what}, found {}", tok.describe()),
                span,
            })
        }
    }

    fn enter(&mut self, span: Span) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(too_deep(span));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// expr := or ('?' expr ':' expr)?
    fn expr(&mut self) -> Result<Parsed, ParseError> {
        let (_, span) = self.peek();
        self.enter(span)?;
        let (cond, d) = self.binary(1)?;
        let out = if *self.peek().0 == Tok::Question {
            self.bump();
            let (a, da) = self.expr()?;
            self.expect(Tok::Colon, "`:` of a `?:` conditional")?;
            let (b, db) = self.expr()?;
            let span = cond.span.to(b.span);
            let depth = 1 + d.max(da).max(db);
            check_depth(depth, span)?;
            let kind = ExprKind::Cond(Box::new(cond), Box::new(a), Box::new(b));
            (Expr { kind, span }, depth)
        } else {
            (cond, d)
        };
        self.leave();
        Ok(out)
    }

    /// Left-associative binary operators at or above `min` precedence.
    fn binary(&mut self, min: u8) -> Result<Parsed, ParseError> {
        let (mut lhs, mut depth) = self.unary()?;
        while let Some((op, prec)) = binop(self.peek().0) {
            if prec < min {
                break;
            }
            self.bump();
            let (rhs, rd) = self.binary(prec + 1)?;
            let span = lhs.span.to(rhs.span);
            depth = 1 + depth.max(rd);
            check_depth(depth, span)?;
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        Ok((lhs, depth))
    }

    fn unary(&mut self) -> Result<Parsed, ParseError> {
        let (tok, span) = self.peek();
        let op = match tok {
            Tok::Bang => UnaryOp::Not,
            Tok::Minus => UnaryOp::Neg,
            _ => return self.postfix(),
        };
        self.bump();
        self.enter(span)?;
        // `-9223372036854775808` is a literal, not a negated overflow.
        // Member access binds tighter than `-`: `-5.f()` is `-(5.f())`.
        let postfix_follows = matches!(
            self.toks.get(self.pos + 1),
            Some((Tok::Dot | Tok::LBracket, _))
        );
        if op == UnaryOp::Neg
            && !postfix_follows
            && let (Tok::Int(n), nspan) = self.peek()
        {
            let n = *n;
            if let Some(v) = 0i64.checked_sub_unsigned(n) {
                self.bump();
                self.leave();
                let e = Expr {
                    kind: ExprKind::Lit(Lit::Int(v)),
                    span: span.to(nspan),
                };
                return self.postfix_on(e, 1);
            }
        }
        let (inner, d) = self.unary()?;
        self.leave();
        let span = span.to(inner.span);
        check_depth(d + 1, span)?;
        Ok((
            Expr {
                kind: ExprKind::Unary(op, Box::new(inner)),
                span,
            },
            d + 1,
        ))
    }

    fn postfix(&mut self) -> Result<Parsed, ParseError> {
        let (e, d) = self.primary()?;
        self.postfix_on(e, d)
    }

    fn postfix_on(&mut self, mut e: Expr, mut depth: usize) -> Result<Parsed, ParseError> {
        loop {
            match self.peek().0 {
                Tok::Dot => {
                    self.bump();
                    let (tok, nspan) = self.bump();
                    let Tok::Ident(name) = tok else {
                        return Err(ParseError {
                            message: format!(
                                "expected a field name after `.`, found {}",
                                tok.describe()
                            ),
                            span: nspan,
                        });
                    };
                    if *self.peek().0 == Tok::LParen {
                        let (args, ad, end) = self.args()?;
                        let span = e.span.to(end);
                        depth = 1 + depth.max(ad);
                        check_depth(depth, span)?;
                        // `math.greatest(…)`: a function of a namespace,
                        // not a method of a variable `math`.
                        let qualified = match &e.kind {
                            ExprKind::Ident(ns) if super::NAMESPACES.contains(&ns.as_str()) => {
                                Some(format!("{ns}.{name}"))
                            }
                            _ => None,
                        };
                        e = match qualified {
                            Some(func) => Expr {
                                kind: ExprKind::Call {
                                    target: None,
                                    func,
                                    args,
                                },
                                span,
                            },
                            None => Expr {
                                kind: ExprKind::Call {
                                    target: Some(Box::new(e)),
                                    func: name,
                                    args,
                                },
                                span,
                            },
                        };
                    } else {
                        let span = e.span.to(nspan);
                        depth += 1;
                        check_depth(depth, span)?;
                        e = Expr {
                            kind: ExprKind::Member(Box::new(e), name),
                            span,
                        };
                    }
                }
                Tok::LBracket => {
                    self.bump();
                    let (idx, id) = self.expr()?;
                    let end = self.expect(Tok::RBracket, "`]`")?;
                    let span = e.span.to(end);
                    depth = 1 + depth.max(id);
                    check_depth(depth, span)?;
                    // `x['k']` is `x.k` (on a map they are one lookup): so
                    // the checker sees the field by its name, as it sees
                    // `x.k` (names, types, nulls), and a left-out input
                    // property reads as null either way.
                    // (Only a key that reads as a field name, so that the
                    // expression prints as it parses: `x['a b']` stays.)
                    let kind = match &idx.kind {
                        ExprKind::Lit(Lit::String(k)) if is_field_name(k) => {
                            ExprKind::Member(Box::new(e), k.clone())
                        }
                        _ => ExprKind::Index(Box::new(e), Box::new(idx)),
                    };
                    e = Expr { kind, span };
                }
                _ => return Ok((e, depth)),
            }
        }
    }

    /// `( expr, … )` after a function name; returns the args, their depth
    /// and the span of the closing parenthesis.
    fn args(&mut self) -> Result<(Vec<Expr>, usize, Span), ParseError> {
        self.expect(Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        let mut depth = 0;
        if let (Tok::RParen, s) = self.peek() {
            self.bump();
            return Ok((args, depth, s));
        }
        loop {
            let (a, d) = self.expr()?;
            depth = depth.max(d);
            args.push(a);
            let (tok, span) = self.bump();
            match tok {
                Tok::Comma => {}
                Tok::RParen => return Ok((args, depth, span)),
                t => {
                    return Err(ParseError {
                        message: format!("expected `,` or `)`, found {}", t.describe()),
                        span,
                    });
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Parsed, ParseError> {
        let (tok, span) = self.bump();
        let lit = |l: Lit| {
            Ok((
                Expr {
                    kind: ExprKind::Lit(l),
                    span,
                },
                1,
            ))
        };
        match tok {
            Tok::Int(n) => match i64::try_from(n) {
                Ok(v) => lit(Lit::Int(v)),
                Err(_) => Err(ParseError {
                    message: "integer literal out of range".to_string(),
                    span,
                }),
            },
            Tok::Uint(u) => lit(Lit::Uint(u)),
            Tok::Bytes(b) => lit(Lit::Bytes(b)),
            Tok::Double(d) => lit(Lit::Double(d)),
            Tok::Str(s) => lit(Lit::String(s)),
            Tok::True => lit(Lit::Bool(true)),
            Tok::False => lit(Lit::Bool(false)),
            Tok::Null => lit(Lit::Null),
            Tok::Ident(name) => {
                if *self.peek().0 == Tok::LParen {
                    let (args, d, end) = self.args()?;
                    let span = span.to(end);
                    check_depth(d + 1, span)?;
                    let e = Expr {
                        kind: ExprKind::Call {
                            target: None,
                            func: name,
                            args,
                        },
                        span,
                    };
                    Ok((e, d + 1))
                } else {
                    Ok((
                        Expr {
                            kind: ExprKind::Ident(name),
                            span,
                        },
                        1,
                    ))
                }
            }
            Tok::LParen => {
                let (e, d) = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok((e, d))
            }
            Tok::LBracket => {
                let mut items = Vec::new();
                let mut depth = 0;
                loop {
                    if let (Tok::RBracket, end) = self.peek() {
                        self.bump();
                        let span = span.to(end);
                        return Ok((
                            Expr {
                                kind: ExprKind::List(items),
                                span,
                            },
                            depth + 1,
                        ));
                    }
                    let (e, d) = self.expr()?;
                    depth = depth.max(d);
                    items.push(e);
                    match self.peek().0 {
                        Tok::Comma => {
                            self.bump();
                        }
                        Tok::RBracket => {}
                        t => {
                            return Err(ParseError {
                                message: format!("expected `,` or `]`, found {}", t.describe()),
                                span: self.peek().1,
                            });
                        }
                    }
                }
            }
            Tok::LBrace => {
                let mut entries = Vec::new();
                let mut depth = 0;
                loop {
                    if let (Tok::RBrace, end) = self.peek() {
                        self.bump();
                        let span = span.to(end);
                        return Ok((
                            Expr {
                                kind: ExprKind::Map(entries),
                                span,
                            },
                            depth + 1,
                        ));
                    }
                    let (k, dk) = self.expr()?;
                    self.expect(Tok::Colon, "`:` between a key and its value")?;
                    let (v, dv) = self.expr()?;
                    depth = depth.max(dk).max(dv);
                    entries.push((k, v));
                    match self.peek().0 {
                        Tok::Comma => {
                            self.bump();
                        }
                        Tok::RBrace => {}
                        t => {
                            return Err(ParseError {
                                message: format!("expected `,` or `}}`, found {}", t.describe()),
                                span: self.peek().1,
                            });
                        }
                    }
                }
            }
            Tok::Eof => Err(ParseError {
                message: "the expression ends too early".to_string(),
                span,
            }),
            t => Err(ParseError {
                message: format!("expected a value, found {}", t.describe()),
                span,
            }),
        }
    }
}

fn check_depth(depth: usize, span: Span) -> Result<(), ParseError> {
    if depth > MAX_DEPTH {
        Err(too_deep(span))
    } else {
        Ok(())
    }
}

fn too_deep(span: Span) -> ParseError {
    ParseError {
        message: format!("the expression nests more than {MAX_DEPTH} levels deep"),
        span,
    }
}

/// Whether `k` reads as a field name after `.`: an identifier that is not
/// a keyword.
fn is_field_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(k, "true" | "false" | "null" | "in")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(src: &str) -> String {
        parse(src)
            .map(|e| e.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(show("a + b * c"), "(a + (b * c))");
        assert_eq!(show("a - b - c"), "((a - b) - c)");
        assert_eq!(show("a || b && c"), "(a || (b && c))");
        assert_eq!(show("!a && b"), "((!a) && b)");
        assert_eq!(show("x > 1 ? 'a' : 'b'"), "((x > 1) ? \"a\" : \"b\")");
        assert_eq!(show("'staff' in auth.roles"), "(\"staff\" in auth.roles)");
        assert_eq!(show("a ? b : c ? d : e"), "(a ? b : (c ? d : e))");
    }

    #[test]
    fn calls_members_and_literals() {
        assert_eq!(show("size(x.items)"), "size(x.items)");
        assert_eq!(show("s.startsWith('a')"), "s.startsWith(\"a\")");
        assert_eq!(show("a[0].b"), "a[0].b");
        assert_eq!(show("[1, 2.5, null, true]"), "[1, 2.5, null, true]");
        assert_eq!(show("{'k': 1}"), "{\"k\": 1}");
        assert_eq!(show("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(show("0x10"), "16");
        assert_eq!(show("-(0).a"), "(-(0.a))");
        assert_eq!(show("-5.f()"), "(-(5.f()))");
        assert_eq!(show("-(0)"), "(-(0))");
        assert_eq!(show("1e3"), "1000.0");
        assert_eq!(show(r#""a\n\u00e9""#), "\"a\\né\"");
        assert_eq!(show(r"r'a\n'"), "\"a\\\\n\"");
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("1 +").unwrap_err();
        assert_eq!(e.span.start, 3);
        let e = parse("a = b").unwrap_err();
        assert!(e.message.contains("=="), "{e}");
        let e = parse("not enough stock").unwrap_err();
        assert_eq!((e.span.start, e.span.end), (4, 10));
        assert!(parse("9223372036854775808").is_err());
        assert!(parse("'open").is_err());
        assert!(parse("").is_err());
        assert!(parse("   ").is_err());
        assert!(parse("a.").is_err());
        assert!(parse("f(1,").is_err());
        assert!(parse("12abc").is_err());
    }

    #[test]
    fn depth_is_limited_without_overflowing() {
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse(&deep).unwrap_err().message.contains("nests"));
        let bangs = format!("{}x", "!".repeat(100_000));
        assert!(parse(&bangs).is_err());
        let chain = vec!["a"; 100_000].join(" + ");
        assert!(parse(&chain).is_err());
        let ok = vec!["a"; 40].join(" + ");
        assert!(parse(&ok).is_ok());
        let list = format!("[{}]", vec!["1"; 100_000].join(","));
        assert!(parse(&list).is_ok());
    }

    #[test]
    fn parse_print_roundtrip() {
        for src in [
            "a + b * c - d / e % f",
            "x.y[z].w(1, 'q') ? -a : !b",
            "{'a': [1, 2], 'b': {}}",
            "has(input.note) && size(input.note) <= 10",
        ] {
            let once = parse(src).unwrap();
            let twice = parse(&once.to_string()).unwrap();
            assert_eq!(once.to_string(), twice.to_string());
        }
    }
}
