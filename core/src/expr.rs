//! The value language: a CEL-compatible subset, parsed once at load time.
//!
//! Every expression string of a spec (`where`, `values`, `set`, `args`, `if`,
//! `when`, `message`, `value`, invariants, …) is parsed here into an [`Expr`]
//! that keeps the byte span of every sub-expression, so errors can point at
//! the exact place. Parsing is iterative where input can be long and depth
//! limited where it recurses: no expression can overflow the stack.
//!
//! ```
//! use sinew_core::expr::{parse, ExprKind};
//! let e = parse("product.price_cents * input.quantity").unwrap();
//! assert!(matches!(e.kind, ExprKind::Binary(..)));
//! assert!(parse("1 +").is_err());
//! ```

mod eval;
mod ext;
mod lex;
mod parse;
pub mod value;

pub use eval::{Env, EvalError, TIMESTAMP_RANGE, compare, equal, eval};
pub use ext::{pattern_problem, zone_problem};
pub use parse::{MAX_DEPTH, parse};
pub use value::Value;

use std::fmt;

/// A byte range inside the expression's source string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span from `start` to `end`.
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// A parsed expression: its kind and where it stands in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it stands.
    pub span: Span,
}

/// The shapes an expression can take.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal value.
    Lit(Lit),
    /// A bare name (`input`, `product`).
    Ident(String),
    /// Field selection `a.b`.
    Member(Box<Expr>, String),
    /// Indexing `a[b]`.
    Index(Box<Expr>, Box<Expr>),
    /// A function call `f(x)` or a method call `x.f(y)` (`target` is `x`).
    Call {
        /// The receiver of a method call.
        target: Option<Box<Expr>>,
        /// The function's name.
        func: String,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// `!x` or `-x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `[a, b]`.
    List(Vec<Expr>),
    /// `{k: v}`.
    Map(Vec<(Expr, Expr)>),
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`.
    Null,
    /// `true`, `false`.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit unsigned integer (`1u`).
    Uint(u64),
    /// A double.
    Double(f64),
    /// A string.
    String(String),
    /// Bytes (`b'…'`).
    Bytes(Vec<u8>),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `!`
    Not,
    /// `-`
    Neg,
}

/// Binary operators, loosest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in`
    In,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::In => "in",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
        }
    }
}

/// A function the language knows: its name, and how many arguments it
/// takes as a function (`f(x, …)`) and as a method (`x.f(…)`, not counting
/// the receiver), as inclusive ranges (`None`: not callable that way).
#[derive(Debug, Clone, Copy)]
pub struct Function {
    /// Its name (`math.greatest` for a function of a namespace).
    pub name: &'static str,
    /// Callable as `f(x, …)`: the least and most arguments.
    pub global_arity: Option<(usize, usize)>,
    /// Callable as `x.f(…)`: the least and most arguments besides `x`.
    pub method_arity: Option<(usize, usize)>,
}

/// The namespaces of functions: `math.abs(x)` calls `math.abs`.
pub const NAMESPACES: &[&str] = &["math", "strings"];

/// The macros: `x.all(v, p)`, … bind `v` to each element of `x` (each key
/// of a map) inside their other arguments.
pub const MACROS: &[&str] = &[
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "map",
    "filter",
    "transformList",
    "transformMap",
];

/// How many names macro `func` called with `args` arguments binds: two
/// (index or key, and value) for `transformList`, `transformMap` and the
/// three-argument `all`, `exists`, `exists_one`/`existsOne`; else one.
pub fn macro_names(func: &str, args: usize) -> usize {
    match func {
        "transformList" | "transformMap" => 2,
        "all" | "exists" | "exists_one" | "existsOne" if args == 3 => 2,
        _ => 1,
    }
}

const fn global(name: &'static str, min: usize, max: usize) -> Function {
    Function {
        name,
        global_arity: Some((min, max)),
        method_arity: None,
    }
}

const fn method(name: &'static str, min: usize, max: usize) -> Function {
    Function {
        name,
        global_arity: None,
        method_arity: Some((min, max)),
    }
}

const fn both(name: &'static str, args: usize) -> Function {
    Function {
        name,
        global_arity: Some((args + 1, args + 1)),
        method_arity: Some((args, args)),
    }
}

/// Every function of the language.
pub const FUNCTIONS: &[Function] = &[
    both("size", 0),
    global("has", 1, 1),
    // Macros.
    method("all", 2, 3),
    method("exists", 2, 3),
    method("exists_one", 2, 3),
    method("existsOne", 2, 3),
    method("map", 2, 3),
    method("filter", 2, 2),
    method("transformList", 3, 4),
    method("transformMap", 3, 4),
    // Strings.
    method("startsWith", 1, 1),
    method("endsWith", 1, 1),
    method("contains", 1, 1),
    both("matches", 1),
    method("lowerAscii", 0, 0),
    method("upperAscii", 0, 0),
    method("charAt", 1, 1),
    method("indexOf", 1, 2),
    method("lastIndexOf", 1, 2),
    method("replace", 2, 3),
    method("split", 1, 2),
    method("substring", 1, 2),
    method("trim", 0, 0),
    method("join", 0, 1),
    method("reverse", 0, 0),
    method("format", 1, 1),
    global("strings.quote", 1, 1),
    // Conversions.
    global("int", 1, 1),
    global("uint", 1, 1),
    global("double", 1, 1),
    global("bytes", 1, 1),
    global("string", 1, 1),
    global("bool", 1, 1),
    global("dyn", 1, 1),
    global("type", 1, 1),
    global("timestamp", 1, 1),
    global("duration", 1, 1),
    // Math.
    global("math.greatest", 1, usize::MAX),
    global("math.least", 1, usize::MAX),
    global("math.abs", 1, 1),
    global("math.ceil", 1, 1),
    global("math.floor", 1, 1),
    global("math.round", 1, 1),
    global("math.trunc", 1, 1),
    global("math.sign", 1, 1),
    global("math.sqrt", 1, 1),
    global("math.isInf", 1, 1),
    global("math.isNaN", 1, 1),
    global("math.isFinite", 1, 1),
    global("math.bitAnd", 2, 2),
    global("math.bitOr", 2, 2),
    global("math.bitXor", 2, 2),
    global("math.bitNot", 1, 1),
    global("math.bitShiftLeft", 2, 2),
    global("math.bitShiftRight", 2, 2),
    // Timestamps and durations (an optional time zone).
    method("getFullYear", 0, 1),
    method("getMonth", 0, 1),
    method("getDayOfYear", 0, 1),
    method("getDayOfMonth", 0, 1),
    method("getDate", 0, 1),
    method("getDayOfWeek", 0, 1),
    method("getHours", 0, 1),
    method("getMinutes", 0, 1),
    method("getSeconds", 0, 1),
    method("getMilliseconds", 0, 1),
];

/// Looks a function up by name.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// A parse error: what went wrong and where in the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// Lowercase, no final period.
    pub message: String,
    /// Where in the source.
    pub span: Span,
}

impl Expr {
    /// The names macros bind (`o` in `orders.all(o, o.total > 0)`), each
    /// with the span where it is bound: from the name to the macro's last
    /// argument.
    pub fn macro_scopes(&self) -> Vec<(&str, Span)> {
        let mut out = Vec::new();
        self.walk(|e| {
            if let ExprKind::Call {
                target: Some(_),
                func,
                args,
            } = &e.kind
                && MACROS.contains(&func.as_str())
                && let (Some(first), Some(last)) = (args.first(), args.last())
            {
                for a in args.iter().take(macro_names(func, args.len())) {
                    if let ExprKind::Ident(v) = &a.kind {
                        out.push((v.as_str(), first.span.to(last.span)));
                    }
                }
            }
        });
        out
    }

    /// Visits this expression and every sub-expression, parents first.
    /// Iterative: safe on any depth.
    pub fn walk<'a>(&'a self, mut f: impl FnMut(&'a Expr)) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            f(e);
            match &e.kind {
                ExprKind::Lit(_) | ExprKind::Ident(_) => {}
                ExprKind::Member(a, _) | ExprKind::Unary(_, a) => stack.push(a),
                ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                ExprKind::Call { target, args, .. } => {
                    stack.extend(args.iter().rev());
                    if let Some(t) = target {
                        stack.push(t);
                    }
                }
                ExprKind::Cond(a, b, c) => {
                    stack.push(c);
                    stack.push(b);
                    stack.push(a);
                }
                ExprKind::List(items) => stack.extend(items.iter().rev()),
                ExprKind::Map(entries) => {
                    for (k, v) in entries.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
            }
        }
    }

    /// The root name and the field path of a plain selection chain
    /// (`input.a.b` → `("input", ["a", "b"])`).
    pub fn as_path(&self) -> Option<(&str, Vec<&str>)> {
        let mut fields = Vec::new();
        let mut cur = self;
        loop {
            match &cur.kind {
                ExprKind::Member(inner, f) => {
                    fields.push(f.as_str());
                    cur = inner;
                }
                ExprKind::Ident(name) => {
                    fields.reverse();
                    return Some((name.as_str(), fields));
                }
                _ => return None,
            }
        }
    }
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Null => write!(f, "null"),
            Lit::Bool(b) => write!(f, "{b}"),
            Lit::Int(i) => write!(f, "{i}"),
            Lit::Uint(u) => write!(f, "{u}u"),
            Lit::Bytes(b) => {
                write!(f, "b\"")?;
                for byte in b {
                    write!(f, "\\x{byte:02x}")?;
                }
                write!(f, "\"")
            }
            Lit::Double(d) => {
                if d.fract() == 0.0 && d.is_finite() {
                    write!(f, "{d:.1}")
                } else {
                    write!(f, "{d}")
                }
            }
            Lit::String(s) => {
                write!(f, "\"")?;
                for c in s.chars() {
                    match c {
                        '"' => write!(f, "\\\"")?,
                        '\\' => write!(f, "\\\\")?,
                        '\n' => write!(f, "\\n")?,
                        '\r' => write!(f, "\\r")?,
                        '\t' => write!(f, "\\t")?,
                        c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                write!(f, "\"")
            }
        }
    }
}

/// The target of `.`, `[…]` or a method call: a negative literal needs
/// parentheses (`(-1).f`, not `-1.f`, which is `-(1.f)`).
struct Postfix<'a>(&'a Expr);

impl fmt::Display for Postfix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            ExprKind::Lit(Lit::Int(i)) if *i < 0 => write!(f, "({})", self.0),
            ExprKind::Lit(Lit::Double(d)) if d.is_sign_negative() => write!(f, "({})", self.0),
            _ => write!(f, "{}", self.0),
        }
    }
}

/// Prints an expression back in fully parenthesized source form, so that
/// `parse(print(e)) == e` up to spans.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Lit(l) => write!(f, "{l}"),
            ExprKind::Ident(n) => write!(f, "{n}"),
            ExprKind::Member(a, n) => write!(f, "{}.{n}", Postfix(a)),
            ExprKind::Index(a, b) => write!(f, "{}[{b}]", Postfix(a)),
            ExprKind::Call { target, func, args } => {
                if let Some(t) = target {
                    write!(f, "{}.", Postfix(t))?;
                }
                write!(f, "{func}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, ")")
            }
            ExprKind::Unary(UnaryOp::Not, a) => write!(f, "(!{a})"),
            ExprKind::Unary(UnaryOp::Neg, a) => write!(f, "(-({a}))"),
            ExprKind::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            ExprKind::Cond(c, a, b) => write!(f, "({c} ? {a} : {b})"),
            ExprKind::List(items) => {
                write!(f, "[")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, "]")
            }
            ExprKind::Map(entries) => {
                write!(f, "{{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}
