//! Evaluation: CEL semantics for the subset the parser accepts. Total and
//! side-effect free; every failure (integer overflow, division by zero, a
//! missing key, a type mismatch) is an [`EvalError`], never a panic.

use std::borrow::Cow;

use super::value::{Value, parse_duration, parse_timestamp};
use super::{BinaryOp, Expr, ExprKind, Lit, Span, UnaryOp};

/// Names visible to an expression.
pub trait Env {
    /// The value bound to a root name.
    fn lookup(&self, name: &str) -> Option<&Value>;
}

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// Lowercase, no final period.
    pub message: String,
    /// The sub-expression that failed.
    pub span: Span,
}

fn err<T>(span: Span, message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        message: message.into(),
        span,
    })
}

/// Evaluates `e` in `env`.
pub fn eval(e: &Expr, env: &dyn Env) -> Result<Value, EvalError> {
    eval_ref(e, env).map(Cow::into_owned)
}

/// Evaluates `e`, borrowing from the environment where it can: a name or a
/// field of one (`product.price_cents`) is not copied.
fn eval_ref<'v>(e: &Expr, env: &'v dyn Env) -> Result<Cow<'v, Value>, EvalError> {
    let span = e.span;
    match &e.kind {
        ExprKind::Ident(name) => match env.lookup(name) {
            Some(v) => Ok(Cow::Borrowed(v)),
            None => match super::value::type_named(name) {
                Some(t) => Ok(Cow::Owned(t)),
                None => err(span, format!("`{name}` is not bound")),
            },
        },
        // `google.protobuf.Timestamp` and `…Duration`, where `google` is
        // not bound: the types.
        ExprKind::Member(..)
            if let Some(("google", path)) = e.as_path()
                && env.lookup("google").is_none() =>
        {
            match super::value::type_named(&format!("google.{}", path.join("."))) {
                Some(t) => Ok(Cow::Owned(t)),
                None => err(span, "`google` is not bound"),
            }
        }
        // A top-level input property the call left out reads as null,
        // declared or not (`has(input.x)` tells them apart).
        ExprKind::Member(inner, field)
            if matches!(&inner.kind, ExprKind::Ident(r) if r == "input")
                && matches!(env.lookup("input"), Some(Value::Map(m)) if !m.contains_key(field.as_str())) =>
        {
            Ok(Cow::Owned(Value::Null))
        }
        ExprKind::Member(inner, field) => match eval_ref(inner, env)? {
            Cow::Borrowed(base) => member_ref(base, field, span).map(Cow::Borrowed),
            Cow::Owned(base) => member_ref(&base, field, span).map(|v| Cow::Owned(v.clone())),
        },
        _ => eval_owned(e, env).map(Cow::Owned),
    }
}

fn eval_owned(e: &Expr, env: &dyn Env) -> Result<Value, EvalError> {
    let span = e.span;
    match &e.kind {
        ExprKind::Lit(l) => Ok(match l {
            Lit::Null => Value::Null,
            Lit::Bool(b) => Value::Bool(*b),
            Lit::Int(i) => Value::Int(*i),
            Lit::Uint(u) => Value::Uint(*u),
            Lit::Double(d) => Value::Double(*d),
            Lit::String(s) => Value::String(s.clone()),
            Lit::Bytes(b) => Value::Bytes(b.clone()),
        }),
        ExprKind::Ident(_) | ExprKind::Member(..) => eval_ref(e, env).map(Cow::into_owned),
        ExprKind::Index(a, i) => {
            let base = eval_ref(a, env)?;
            let idx = eval_ref(i, env)?;
            match (base.as_ref(), idx.as_ref()) {
                (Value::List(l), n @ (Value::Int(_) | Value::Uint(_) | Value::Double(_))) => {
                    // A double or a uint index counts when it is a whole
                    // number (CEL's heterogeneous indexing).
                    let n = match n {
                        Value::Int(i) => *i,
                        Value::Uint(u) => i64::try_from(*u).unwrap_or(i64::MAX),
                        Value::Double(d) if d.fract() == 0.0 && d.is_finite() => *d as i64,
                        other => {
                            return err(
                                span,
                                format!("cannot index a list with {}", other.a_type()),
                            );
                        }
                    };
                    match usize::try_from(n).ok().and_then(|n| l.get(n)) {
                        Some(v) => Ok(v.clone()),
                        None => err(
                            span,
                            format!("index {n} is out of range for a list of {}", l.len()),
                        ),
                    }
                }
                (Value::Map(_), Value::String(k)) => member_ref(&base, k, span).cloned(),
                (b, i) => err(
                    span,
                    format!("cannot index {} with {}", b.a_type(), i.a_type()),
                ),
            }
        }
        ExprKind::Call { target, func, args } => call(target.as_deref(), func, args, env, span),
        ExprKind::Unary(op, a) => {
            let v = eval_owned(a, env)?;
            match (op, v) {
                (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                (UnaryOp::Neg, Value::Int(i)) => match i.checked_neg() {
                    Some(n) => Ok(Value::Int(n)),
                    None => err(span, "integer overflow"),
                },
                (UnaryOp::Neg, Value::Double(d)) => Ok(Value::Double(-d)),
                (UnaryOp::Neg, Value::Duration(d)) => Ok(Value::Duration(d.saturating_neg())),
                (UnaryOp::Not, v) => err(span, format!("`!` needs a bool, found {}", v.a_type())),
                (UnaryOp::Neg, v) => err(span, format!("`-` needs a number, found {}", v.a_type())),
            }
        }
        ExprKind::Binary(op, a, b) => binary(*op, a, b, env, span),
        ExprKind::Cond(c, a, b) => match eval_ref(c, env)?.as_ref() {
            Value::Bool(true) => eval_owned(a, env),
            Value::Bool(false) => eval_owned(b, env),
            v => err(
                c.span,
                format!("a condition must be a bool, found {}", v.a_type()),
            ),
        },
        ExprKind::List(items) => Ok(Value::List(
            items
                .iter()
                .map(|i| eval_owned(i, env))
                .collect::<Result<_, _>>()?,
        )),
        ExprKind::Map(entries) => {
            let mut m = super::value::Map::default();
            for (k, v) in entries {
                let key = match eval_owned(k, env)? {
                    Value::String(s) => s,
                    other => {
                        return err(
                            k.span,
                            format!("map keys are strings, found {}", other.a_type()),
                        );
                    }
                };
                // (CEL refuses a map literal with a key twice.)
                if m.contains_key(&key) {
                    return err(
                        k.span,
                        format!("the map has the key `{}` twice", short_text(&key)),
                    );
                }
                m.insert(key, eval_owned(v, env)?);
            }
            Ok(Value::Map(m))
        }
    }
}

fn member_ref<'b>(base: &'b Value, field: &str, span: Span) -> Result<&'b Value, EvalError> {
    match base {
        Value::Map(m) => match m.get(field) {
            Some(v) => Ok(v),
            None => err(
                span,
                format!(
                    "no key `{}`; use `has()` to test for optional keys",
                    short_text(field)
                ),
            ),
        },
        Value::Null => err(span, format!("cannot read `{field}` of null")),
        other => err(span, format!("cannot read `{field}` of {}", other.a_type())),
    }
}

/// Orders two numbers of any of the numeric types (CEL's rule: int and
/// uint exactly, either against a double as a double); `None` for NaN or
/// a value that is not a number.
fn numeric(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Uint(x), Value::Uint(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Uint(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Value::Uint(x), Value::Int(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        _ => as_double(a)?.partial_cmp(&as_double(b)?),
    }
}

fn as_double(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Uint(u) => Some(*u as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

/// The range of a timestamp: 0001-01-01T00:00:00Z to the last microsecond
/// of 9999-12-31.
pub const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> =
    -62_135_596_800_000_000..=253_402_300_799_999_999;

/// The range of a duration: what 64 bits of nanoseconds hold (±292
/// years), as in CEL's implementations.
const DURATION_RANGE: std::ops::RangeInclusive<i64> =
    -9_223_372_036_854_775..=9_223_372_036_854_775;

fn timestamp_in_range(t: i64, span: Span) -> Result<Value, EvalError> {
    if TIMESTAMP_RANGE.contains(&t) {
        Ok(Value::Timestamp(t))
    } else {
        err(span, "the timestamp is out of range (years 1 to 9999)")
    }
}

fn duration_in_range(d: i64, span: Span) -> Result<Value, EvalError> {
    if DURATION_RANGE.contains(&d) {
        Ok(Value::Duration(d))
    } else {
        err(span, "the duration is out of range (±292 years)")
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Uint(_) | Value::Double(_))
}

/// Whether two values are equal (CEL: numbers compare by value across int,
/// uint and double; values of different types are not equal).
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (x, y) if is_number(x) && is_number(y) => numeric(x, y) == Some(std::cmp::Ordering::Equal),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Orders two values of comparable types.
pub fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (x, y) if is_number(x) && is_number(y) => numeric(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) | (Value::Duration(x), Value::Duration(y)) => {
            Some(x.cmp(y))
        }
        (Value::Timestamp(x), Value::String(s)) => parse_timestamp(s).map(|y| x.cmp(&y)),
        (Value::String(s), Value::Timestamp(y)) => parse_timestamp(s).map(|x| x.cmp(y)),
        _ => None,
    }
}

fn binary(op: BinaryOp, a: &Expr, b: &Expr, env: &dyn Env, span: Span) -> Result<Value, EvalError> {
    // `&&` and `||` short-circuit and absorb errors on the other side when
    // the result is decided (CEL's commutative semantics).
    if matches!(op, BinaryOp::And | BinaryOp::Or) {
        let decisive = op == BinaryOp::Or;
        let l = eval_ref(a, env);
        if matches!(l.as_deref(), Ok(Value::Bool(v)) if *v == decisive) {
            return Ok(Value::Bool(decisive));
        }
        let r = eval_ref(b, env);
        if matches!(r.as_deref(), Ok(Value::Bool(v)) if *v == decisive) {
            return Ok(Value::Bool(decisive));
        }
        return match (l?.as_ref(), r?.as_ref()) {
            (Value::Bool(_), Value::Bool(_)) => Ok(Value::Bool(!decisive)),
            (x, y) => err(
                span,
                format!(
                    "`{}` needs bools, found {} and {}",
                    op.symbol(),
                    x.a_type(),
                    y.a_type()
                ),
            ),
        };
    }
    let l = eval_ref(a, env)?;
    let r = eval_ref(b, env)?;
    let (l, r) = (l.as_ref(), r.as_ref());
    let mismatch = || {
        err(
            span,
            format!(
                "`{}` does not apply to {} and {}",
                op.symbol(),
                l.a_type(),
                r.a_type()
            ),
        )
    };
    let overflow = || err(span, format!("integer overflow in `{}`", op.symbol()));
    use std::cmp::Ordering::*;
    match op {
        BinaryOp::Eq => Ok(Value::Bool(equal(l, r))),
        BinaryOp::Ne => Ok(Value::Bool(!equal(l, r))),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => match compare(l, r) {
            Some(o) => Ok(Value::Bool(match op {
                BinaryOp::Lt => o == Less,
                BinaryOp::Le => o != Greater,
                BinaryOp::Gt => o == Greater,
                _ => o != Less,
            })),
            // NaN orders against no number: every comparison is false, as
            // in cel-go (not an error).
            None if is_number(l) && is_number(r) => Ok(Value::Bool(false)),
            None => mismatch(),
        },
        BinaryOp::In => match r {
            Value::List(items) => Ok(Value::Bool(items.iter().any(|i| equal(i, l)))),
            Value::Map(m) => match l {
                Value::String(k) => Ok(Value::Bool(m.contains_key(k))),
                _ => Ok(Value::Bool(false)),
            },
            _ => mismatch(),
        },
        BinaryOp::Add => match (l, r) {
            (Value::Int(x), Value::Int(y)) => {
                x.checked_add(*y).map(Value::Int).map_or_else(overflow, Ok)
            }
            (Value::Uint(x), Value::Uint(y)) => {
                x.checked_add(*y).map(Value::Uint).map_or_else(overflow, Ok)
            }
            (Value::Bytes(x), Value::Bytes(y)) => {
                Ok(Value::Bytes(x.iter().chain(y).copied().collect()))
            }
            (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
            (Value::List(x), Value::List(y)) => {
                Ok(Value::List(x.iter().chain(y).cloned().collect()))
            }
            (Value::Timestamp(t), Value::Duration(d))
            | (Value::Duration(d), Value::Timestamp(t)) => t
                .checked_add(*d)
                .map_or_else(overflow, |t| timestamp_in_range(t, span)),
            (Value::Duration(x), Value::Duration(y)) => x
                .checked_add(*y)
                .map_or_else(overflow, |d| duration_in_range(d, span)),
            (Value::String(_), _) | (_, Value::String(_)) => err(
                span,
                format!(
                    "`+` joins two strings, found {} and {}; convert with `string()`",
                    l.a_type(),
                    r.a_type()
                ),
            ),
            _ => float(op, l, r).map_or_else(mismatch, Ok),
        },
        BinaryOp::Sub => match (l, r) {
            (Value::Int(x), Value::Int(y)) => {
                x.checked_sub(*y).map(Value::Int).map_or_else(overflow, Ok)
            }
            (Value::Uint(x), Value::Uint(y)) => {
                x.checked_sub(*y).map(Value::Uint).map_or_else(overflow, Ok)
            }
            (Value::Timestamp(t), Value::Duration(d)) => t
                .checked_sub(*d)
                .map_or_else(overflow, |t| timestamp_in_range(t, span)),
            (Value::Timestamp(x), Value::Timestamp(y)) => x
                .checked_sub(*y)
                .map_or_else(overflow, |d| duration_in_range(d, span)),
            (Value::Duration(x), Value::Duration(y)) => x
                .checked_sub(*y)
                .map_or_else(overflow, |d| duration_in_range(d, span)),
            _ => float(op, l, r).map_or_else(mismatch, Ok),
        },
        BinaryOp::Mul => match (l, r) {
            (Value::Int(x), Value::Int(y)) => {
                x.checked_mul(*y).map(Value::Int).map_or_else(overflow, Ok)
            }
            (Value::Uint(x), Value::Uint(y)) => {
                x.checked_mul(*y).map(Value::Uint).map_or_else(overflow, Ok)
            }
            _ => float(op, l, r).map_or_else(mismatch, Ok),
        },
        BinaryOp::Div | BinaryOp::Rem => match (l, r) {
            (Value::Int(_), Value::Int(0)) | (Value::Uint(_), Value::Uint(0)) => {
                err(span, "division by zero")
            }
            (Value::Uint(x), Value::Uint(y)) => {
                Ok(Value::Uint(if op == BinaryOp::Div { x / y } else { x % y }))
            }
            (Value::Int(x), Value::Int(y)) => {
                let v = if op == BinaryOp::Div {
                    x.checked_div(*y)
                } else {
                    x.checked_rem(*y)
                };
                v.map(Value::Int).map_or_else(overflow, Ok)
            }
            _ if op == BinaryOp::Rem => mismatch(),
            _ => float(op, l, r).map_or_else(mismatch, Ok),
        },
        BinaryOp::And | BinaryOp::Or => mismatch(),
    }
}

/// Arithmetic on doubles (an int mixed with a double becomes a double).
fn float(op: BinaryOp, l: &Value, r: &Value) -> Option<Value> {
    let x = match l {
        Value::Int(i) => *i as f64,
        Value::Double(d) => *d,
        _ => return None,
    };
    let y = match r {
        Value::Int(i) => *i as f64,
        Value::Double(d) => *d,
        _ => return None,
    };
    Some(Value::Double(match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        _ => return None,
    }))
}

fn call(
    target: Option<&Expr>,
    func: &str,
    args: &[Expr],
    env: &dyn Env,
    span: Span,
) -> Result<Value, EvalError> {
    if let Some(t) = target
        && super::MACROS.contains(&func)
    {
        return comprehension(t, func, args, env, span);
    }
    if func == "has" {
        let Some(Expr {
            kind: ExprKind::Member(inner, field),
            ..
        }) = args.first()
        else {
            return err(span, "`has` takes a field selection");
        };
        return Ok(Value::Bool(match eval_ref(inner, env)?.as_ref() {
            Value::Map(m) => m.get(field).is_some_and(|v| *v != Value::Null),
            _ => false,
        }));
    }
    // `size` of a name is read where it is, not copied (a list of 500 rows).
    if func == "size"
        && let (Some(a), []) | (None, [a]) = (target, args)
    {
        let len = match eval_ref(a, env)?.as_ref() {
            Value::String(s) => Some(s.chars().count()),
            Value::List(l) => Some(l.len()),
            Value::Map(m) => Some(m.len()),
            Value::Bytes(b) => Some(b.len()),
            _ => None,
        };
        if let Some(n) = len {
            return Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)));
        }
    }
    let recv = match target {
        Some(t) => Some(eval(t, env)?),
        None => None,
    };
    let mut vals = Vec::with_capacity(args.len() + 1);
    if let Some(r) = recv {
        vals.push(r);
    }
    for a in args {
        vals.push(eval(a, env)?);
    }
    let wrong = |vals: &[Value]| {
        let types: Vec<&str> = vals.iter().map(Value::type_name).collect();
        err(
            span,
            format!("`{func}` does not apply to ({})", types.join(", ")),
        )
    };
    match (func, vals.as_slice()) {
        ("int", [Value::Uint(u)]) => i64::try_from(*u)
            .map(Value::Int)
            .or_else(|_| err(span, format!("`{u}u` does not fit an int"))),
        ("uint", [Value::Uint(u)]) => Ok(Value::Uint(*u)),
        ("uint", [Value::Int(i)]) => u64::try_from(*i)
            .map(Value::Uint)
            .or_else(|_| err(span, format!("`{i}` does not fit a uint"))),
        // As cel-go: a negative double is out of range, even one that
        // truncates to 0 (`uint(-0.5)`); `-0.0` is 0.
        ("uint", [Value::Double(d)]) => {
            if d.is_finite() && *d >= 0.0 && *d < 18_446_744_073_709_551_616.0 {
                Ok(Value::Uint(d.trunc() as u64))
            } else {
                err(span, format!("`{d}` does not fit a uint"))
            }
        }
        ("uint", [Value::String(s)]) => match s.parse::<u64>() {
            Ok(u) => Ok(Value::Uint(u)),
            Err(_) => err(
                span,
                format!("`{}` is not an unsigned integer", short_text(s)),
            ),
        },
        ("double", [Value::Uint(u)]) => Ok(Value::Double(*u as f64)),
        ("string", [Value::Uint(u)]) => Ok(Value::String(u.to_string())),
        ("string", [Value::Bytes(b)]) => match String::from_utf8(b.clone()) {
            Ok(s) => Ok(Value::String(s)),
            Err(_) => err(span, "the bytes are not valid UTF-8"),
        },
        ("bytes", [Value::String(s)]) => Ok(Value::Bytes(s.as_bytes().to_vec())),
        ("bytes", [Value::Bytes(b)]) => Ok(Value::Bytes(b.clone())),
        ("startsWith", [Value::String(s), Value::String(p)]) => {
            Ok(Value::Bool(s.starts_with(p.as_str())))
        }
        ("endsWith", [Value::String(s), Value::String(p)]) => {
            Ok(Value::Bool(s.ends_with(p.as_str())))
        }
        ("contains", [Value::String(s), Value::String(p)]) => {
            Ok(Value::Bool(s.contains(p.as_str())))
        }
        ("lowerAscii", [Value::String(s)]) => Ok(Value::String(s.to_ascii_lowercase())),
        ("upperAscii", [Value::String(s)]) => Ok(Value::String(s.to_ascii_uppercase())),
        ("int", [Value::Int(i)]) => Ok(Value::Int(*i)),
        ("int", [Value::Double(d)]) => {
            if d.is_finite() && *d > -9.223_372_036_854_776e18 && *d < 9.223_372_036_854_776e18 {
                Ok(Value::Int(d.trunc() as i64))
            } else {
                err(span, format!("`{d}` does not fit an int"))
            }
        }
        // As CEL's own implementations: the whole text is the number, no
        // spaces around it (`uint` and `double` alike).
        ("int", [Value::String(s)]) => match s.parse::<i64>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => err(span, format!("`{}` is not an integer", short_text(s))),
        },
        ("int", [Value::Timestamp(t)]) => Ok(Value::Int(t.div_euclid(1_000_000))),
        ("double", [Value::Int(i)]) => Ok(Value::Double(*i as f64)),
        ("double", [Value::Double(d)]) => Ok(Value::Double(*d)),
        ("double", [Value::String(s)]) => match s.as_str() {
            "NaN" => Ok(Value::Double(f64::NAN)),
            "Infinity" | "+Infinity" => Ok(Value::Double(f64::INFINITY)),
            "-Infinity" => Ok(Value::Double(f64::NEG_INFINITY)),
            t => match t.parse::<f64>() {
                Ok(d) if d.is_finite() => Ok(Value::Double(d)),
                _ => err(span, format!("`{}` is not a number", short_text(s))),
            },
        },
        (
            "string",
            [
                v @ (Value::Int(_)
                | Value::Double(_)
                | Value::Bool(_)
                | Value::String(_)
                | Value::Timestamp(_)
                | Value::Duration(_)),
            ],
        ) => Ok(Value::String(v.to_string())),
        ("string", [Value::Null]) => Ok(Value::String("null".into())),
        ("string", [Value::Type(name)]) => Ok(Value::String((*name).to_owned())),
        ("timestamp", [Value::Int(secs)]) => secs.checked_mul(1_000_000).map_or_else(
            || err(span, "the timestamp is out of range"),
            |t| timestamp_in_range(t, span),
        ),
        ("timestamp", [Value::String(s)]) => match parse_timestamp(s) {
            Some(t) => timestamp_in_range(t, span),
            None => err(
                span,
                format!("`{}` is not an RFC 3339 timestamp", short_text(s)),
            ),
        },
        ("timestamp", [Value::Timestamp(t)]) => Ok(Value::Timestamp(*t)),
        ("duration", [Value::String(s)]) => match parse_duration(s) {
            Some(d) => duration_in_range(d, span),
            None => err(
                span,
                format!(
                    "`{}` is not a duration (like `15m`, `1h30m`, `1.5s`)",
                    short_text(s)
                ),
            ),
        },
        ("duration", [Value::Duration(d)]) => Ok(Value::Duration(*d)),
        ("bool", [Value::Bool(b)]) => Ok(Value::Bool(*b)),
        ("bool", [Value::String(s)]) => match s.as_str() {
            // As cel-go (Go's `strconv.ParseBool`).
            "true" | "True" | "TRUE" | "t" | "T" | "1" => Ok(Value::Bool(true)),
            "false" | "False" | "FALSE" | "f" | "F" | "0" => Ok(Value::Bool(false)),
            _ => err(span, format!("`{}` is not a bool", short_text(s))),
        },
        ("dyn", [v]) => Ok(v.clone()),
        ("type", [v]) => Ok(Value::Type(v.cel_type())),
        _ => match super::ext::call(func, &vals) {
            Some(Ok(v)) => Ok(v),
            Some(Err(message)) => err(span, message),
            None if super::function(func).is_none() => {
                err(span, format!("unknown function `{func}`"))
            }
            None => wrong(&vals),
        },
    }
}

/// The environment inside a macro: its variables (borrowed from the list
/// or map it runs over when that is a name, not copied), then the outer
/// names.
struct Local<'a> {
    vars: [(&'a str, Cow<'a, Value>); 2],
    outer: &'a dyn Env,
}

impl Env for Local<'_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        match self.vars.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => Some(v),
            None => self.outer.lookup(name),
        }
    }
}

/// A macro's (index or key, value) pairs of a list or a map, borrowed
/// from it when it is borrowed; `Err` gives back anything else.
type Pairs<'v> = Vec<(Cow<'v, Value>, Cow<'v, Value>)>;

fn pairs(range: Cow<'_, Value>) -> Result<Pairs<'_>, Value> {
    let index = |i: usize| Cow::Owned(Value::Int(i64::try_from(i).unwrap_or(i64::MAX)));
    Ok(match range {
        Cow::Borrowed(Value::List(l)) => l
            .iter()
            .enumerate()
            .map(|(i, v)| (index(i), Cow::Borrowed(v)))
            .collect(),
        Cow::Borrowed(Value::Map(m)) => m
            .iter()
            .map(|(k, v)| (Cow::Owned(Value::String(k.clone())), Cow::Borrowed(v)))
            .collect(),
        Cow::Owned(Value::List(l)) => l
            .into_iter()
            .enumerate()
            .map(|(i, v)| (index(i), Cow::Owned(v)))
            .collect(),
        Cow::Owned(Value::Map(m)) => m
            .into_iter()
            .map(|(k, v)| (Cow::Owned(Value::String(k)), Cow::Owned(v)))
            .collect(),
        other => return Err(other.into_owned()),
    })
}

/// The macros over a list's elements or a map's keys: `all`, `exists`,
/// `exists_one` (`existsOne`), `filter`, `map`, and with two names (index
/// or key, then value) `all`, `exists`, `existsOne`, `transformList`,
/// `transformMap`. `all` and `exists` absorb an error when another element
/// decides the result, as `&&` and `||` do.
fn comprehension<'e>(
    target: &Expr,
    func: &str,
    args: &'e [Expr],
    env: &'e dyn Env,
    span: Span,
) -> Result<Value, EvalError> {
    let names = super::macro_names(func, args.len());
    let name_at = |i: usize| match args.get(i).map(|a| &a.kind) {
        Some(ExprKind::Ident(n)) => Some(n.as_str()),
        _ => None,
    };
    let (Some(first), second) = (name_at(0), name_at(1)) else {
        return err(
            span,
            format!("the first argument of `{func}` names the element"),
        );
    };
    if names == 2 && second.is_none() {
        return err(
            span,
            format!("the second argument of `{func}` names the value"),
        );
    }
    let rest = args.get(names..).unwrap_or_default();
    // (index or key, value) pairs.
    let range = eval_ref(target, env)?;
    // With one name, `x` is a list's element but a map's key.
    let is_map_target = matches!(range.as_ref(), Value::Map(_));
    let items = match pairs(range) {
        Ok(items) => items,
        Err(other) => {
            return err(
                target.span,
                format!(
                    "`{func}` applies to a list or a map, found {}",
                    other.a_type()
                ),
            );
        }
    };
    type Item<'v> = (Cow<'v, Value>, Cow<'v, Value>);
    let local = |(k, v): Item<'e>| -> Local<'e> {
        match second {
            Some(second) if names == 2 => Local {
                vars: [(first, k), (second, v)],
                outer: env,
            },
            // One name: a list's element, or a map's key.
            _ => Local {
                vars: [
                    (first, if is_map_target { k } else { v }),
                    ("", Cow::Owned(Value::Null)),
                ],
                outer: env,
            },
        }
    };
    let test = |item: Item<'e>, e: &Expr| -> Result<bool, EvalError> {
        match eval(e, &local(item))? {
            Value::Bool(b) => Ok(b),
            other => err(
                e.span,
                format!("`{func}` needs a bool here, found {}", other.a_type()),
            ),
        }
    };
    let Some(step) = rest.first() else {
        return err(span, format!("`{func}` needs an expression"));
    };
    match func {
        "all" | "exists" => {
            let decisive = func == "exists";
            let mut error = None;
            for item in items {
                match test(item, step) {
                    Ok(b) if b == decisive => return Ok(Value::Bool(decisive)),
                    Ok(_) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            match error {
                Some(e) => Err(e),
                None => Ok(Value::Bool(!decisive)),
            }
        }
        "exists_one" | "existsOne" => {
            let mut n = 0usize;
            for item in items {
                if test(item, step)? {
                    n += 1;
                }
            }
            Ok(Value::Bool(n == 1))
        }
        "filter" => {
            let mut out = Vec::new();
            for item in items {
                let keep = if is_map_target {
                    item.0.clone().into_owned()
                } else {
                    item.1.clone().into_owned()
                };
                if test(item, step)? {
                    out.push(keep);
                }
            }
            Ok(Value::List(out))
        }
        _ => {
            // `map(x, f)`, `map(x, p, f)`, `transformList(i, v, [p,] f)`,
            // `transformMap(k, v, [p,] f)`.
            let (keep, f) = match rest.get(1) {
                Some(f) => (Some(step), f),
                None => (None, step),
            };
            let mut list = Vec::with_capacity(items.len());
            let mut map = super::value::Map::default();
            for item in items {
                if let Some(p) = keep
                    && !test(item.clone(), p)?
                {
                    continue;
                }
                let key = item.0.clone().into_owned();
                let v = eval(f, &local(item))?;
                if func == "transformMap" {
                    let Value::String(k) = key else {
                        return err(span, "`transformMap` applies to a map");
                    };
                    map.insert(k, v);
                } else {
                    list.push(v);
                }
            }
            Ok(if func == "transformMap" {
                Value::Map(map)
            } else {
                Value::List(list)
            })
        }
    }
}

/// A string as a message quotes it (a value may be a row's, and a message
/// reaches the log and the audit entry): whole up to 40 characters, else
/// its first 40 and its length.
pub(crate) fn short_text(s: &str) -> String {
    let n = s.chars().count();
    if n <= 40 {
        return s.to_owned();
    }
    let head: String = s.chars().take(40).collect();
    format!("{head}… ({n} characters)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse;
    use std::collections::BTreeMap;

    struct Vars(BTreeMap<&'static str, Value>);
    impl Env for Vars {
        fn lookup(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
    }

    fn run(src: &str) -> Result<Value, EvalError> {
        let input = Value::from_json(
            &serde_json::json!({"q": 3, "name": "Tea", "tags": ["a", "b"], "price": 2.5, "note": null}),
        );
        let mut vars = BTreeMap::new();
        vars.insert("input", input);
        vars.insert(
            "now",
            Value::Timestamp(parse_timestamp("2026-01-01T00:00:00Z").unwrap()),
        );
        eval(&parse(src).unwrap(), &Vars(vars))
    }

    #[test]
    fn arithmetic_and_comparison() {
        assert_eq!(run("input.q * 150 + 1"), Ok(Value::Int(451)));
        assert_eq!(run("input.q / 2"), Ok(Value::Int(1)));
        assert_eq!(run("-7 % 3"), Ok(Value::Int(-1)));
        assert_eq!(run("input.price * 2"), Ok(Value::Double(5.0)));
        assert_eq!(run("input.q == 3.0"), Ok(Value::Bool(true)));
        assert_eq!(run("'a' < 'b' && 2 >= 2"), Ok(Value::Bool(true)));
        assert_eq!(
            run("'not enough stock for ' + input.name"),
            Ok(Value::String("not enough stock for Tea".into()))
        );
        assert!(
            run("9223372036854775807 + 1")
                .unwrap_err()
                .message
                .contains("overflow")
        );
        assert!(
            run("-9223372036854775808 * -1")
                .unwrap_err()
                .message
                .contains("overflow")
        );
        assert!(run("1 / 0").unwrap_err().message.contains("zero"));
        assert!(run("'a' + 1").unwrap_err().message.contains("string()"));
        assert!(run("1 < 'a'").is_err());
        // A type as text is its name.
        assert_eq!(
            run("string(type(input.q)) + string(type(input.note))"),
            Ok(Value::String("intnull_type".into()))
        );
    }

    /// A message quotes at most 40 characters of a value (a row's value
    /// may be anything, and messages reach the log and the audit entry).
    #[test]
    fn errors_quote_values_short() {
        let long = "S".repeat(100);
        for src in [
            format!("int('{long}')"),
            format!("uint('{long}')"),
            format!("double('{long}')"),
            format!("timestamp('{long}')"),
            format!("duration('{long}')"),
            format!("bool('{long}')"),
            format!("{{'a': 1}}['{long}']"),
            format!("'x'.matches('{long}S(')"),
            format!("timestamp('2026-01-01T00:00:00Z').getHours('{long}')"),
        ] {
            let m = run(&src).unwrap_err().message;
            assert!(
                !m.contains(&long) && m.contains(" characters)"),
                "{src}: {m}"
            );
        }
    }

    #[test]
    fn logic_short_circuits_and_absorbs_errors() {
        assert_eq!(run("false && (1 / 0 == 1)"), Ok(Value::Bool(false)));
        assert_eq!(run("(1 / 0 == 1) && false"), Ok(Value::Bool(false)));
        assert_eq!(run("(1 / 0 == 1) || true"), Ok(Value::Bool(true)));
        assert!(run("(1 / 0 == 1) || false").is_err());
        assert_eq!(
            run("'a' in input.tags && !('c' in input.tags)"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            run("input.q > 2 ? 'big' : 'small'"),
            Ok(Value::String("big".into()))
        );
    }

    #[test]
    fn functions_and_fields() {
        assert_eq!(
            run("size(input.tags) + input.name.size()"),
            Ok(Value::Int(5))
        );
        assert_eq!(
            run("has(input.q) && !has(input.note) && !has(input.zzz)"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            run("input.name.startsWith('T') && input.name.lowerAscii() == 'tea'"),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("int('42') + int(2.9)"), Ok(Value::Int(44)));
        assert_eq!(run("bool('T') && !bool('F')"), Ok(Value::Bool(true)));
        for nan in [
            "double('NaN') < 1.0",
            "1.0 >= double('NaN')",
            "double('NaN') > double('NaN')",
        ] {
            assert_eq!(run(nan), Ok(Value::Bool(false)), "{nan}");
        }
        assert_eq!(run("uint(1.9)"), Ok(Value::Uint(1)));
        assert_eq!(run("uint(-0.0)"), Ok(Value::Uint(0)));
        assert!(run("uint(-0.5)").is_err());
        for spaced in ["int(' 12 ')", "uint('12 ')", "double(' 1.5')", "int('+ 1')"] {
            assert!(run(spaced).is_err(), "{spaced}");
        }
        assert_eq!(run("string(input.q) + 'x'"), Ok(Value::String("3x".into())));
        // A top-level input property left out reads as null; deeper, an
        // absent key fails.
        assert_eq!(run("input.missing"), Ok(Value::Null));
        assert!(
            run("{'a': 1}.missing")
                .unwrap_err()
                .message
                .contains("has()")
        );
        assert!(run("input.note.x").is_err());
        assert!(run("input.tags[5]").is_err());
        assert_eq!(run("input.tags[1]"), Ok(Value::String("b".into())));
        assert_eq!(run("{'k': input.q}.k"), Ok(Value::Int(3)));
        // A precision past 100 digits is an error, never a panic.
        assert_eq!(
            run("'%.2f %.1e'.format([1.5, 1500.0])"),
            Ok(Value::String("1.50 1.5e+03".into()))
        );
        for f in ["'%.65536f'", "'%.70000e'", "'%.101f'"] {
            let e = run(&format!("{f}.format([1.5])")).unwrap_err();
            assert!(e.message.contains("more than 100"), "{f}: {}", e.message);
        }
        // A map literal with a key twice is an error, as in CEL.
        let e = run("{'a': 1, 'a': 2}").unwrap_err();
        assert!(e.message.contains("the key `a` twice"), "{}", e.message);
        // Offsets: hours up to 23, minutes up to 59, digits only.
        assert!(run("now.getHours('+05:30') >= 0").is_ok());
        for z in ["'+25:00'", "'+05:60'", "'+-5:00'", "'+5: 0'"] {
            let e = run(&format!("now.getHours({z})")).unwrap_err();
            assert!(e.message.contains("is not an offset"), "{z}: {}", e.message);
        }
    }

    #[test]
    fn time() {
        let later = run("now + duration('15m')").unwrap();
        assert_eq!(
            later.to_json().unwrap(),
            serde_json::json!("2026-01-01T00:15:00Z")
        );
        assert_eq!(run("now < now + duration('1s')"), Ok(Value::Bool(true)));
        assert_eq!(run("now < '2026-01-02T00:00:00Z'"), Ok(Value::Bool(true)));
        assert_eq!(
            run("timestamp('2026-01-01T01:00:00Z') - now"),
            Ok(Value::Duration(3_600_000_000))
        );
        assert!(run("timestamp('yesterday')").is_err());
    }
}
