//! Static types of expressions, as far as the spec tells them: literals,
//! the input schema's property types, entity columns, what nodes bind, and
//! what operators and functions give. `sinew check` uses them to refuse
//! what would fail on every call that reaches it: an operator with no
//! meaning for its operand types (a duration divided by a duration), a
//! value of the wrong type written into a field, a condition that is not a
//! bool. Where a type is only known at run time it is [`Ty::Dyn`] and the
//! value is checked then.

use serde_json::Value as Json;

use super::check::{Binding, Scope};
use crate::expr::{BinaryOp, Expr, ExprKind, Lit, UnaryOp};
use crate::model::{FieldType, MeasureKind};

/// The rows a row embeds (a read's `include`), by name: a `ref` include
/// is a row (or null), a `from` include a list of rows.
pub(crate) type Embeds = Vec<(String, Ty)>;

/// A static type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    /// Known only at run time.
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    /// An integer or a double (a JSON `number`: whole values read as
    /// integers).
    Number,
    String,
    Bytes,
    Timestamp,
    Duration,
    List,
    Map,
    /// A row of an entity, with the rows it embeds.
    Row(String, Embeds),
    /// A list of rows of an entity (what a `read` without `one` binds),
    /// each with the rows it embeds.
    Rows(String, Embeds),
    /// A list whose elements' type the input schema gives (`items`).
    Items(Box<Ty>),
    /// An object the input schema describes (its `properties`).
    Object(Box<Json>),
    /// An object of these keys, each of its type, `true` for a key whose
    /// value may be null (a group of an aggregate); the text names it in
    /// messages (`a group of \`g\``).
    Record(Vec<(String, Ty, bool)>, String),
}

impl Ty {
    /// The type's name with an article, for messages.
    pub(crate) fn a(&self) -> String {
        match self {
            Ty::Dyn => "a value".into(),
            Ty::Null => "null".into(),
            Ty::Bool => "a bool".into(),
            Ty::Int => "an int".into(),
            Ty::Uint => "a uint".into(),
            Ty::Double => "a double".into(),
            Ty::Number => "a number".into(),
            Ty::String => "a string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Timestamp => "a timestamp".into(),
            Ty::Duration => "a duration".into(),
            Ty::List => "a list".into(),
            Ty::Map => "a map".into(),
            Ty::Row(e, _) => format!("a whole `{e}` row"),
            Ty::Rows(e, _) => format!("a list of `{e}` rows"),
            Ty::Items(t) => match **t {
                Ty::Dyn => "a list".into(),
                ref t => format!("a list of {}", plural(t)),
            },
            Ty::Object(_) | Ty::Record(..) => "an object".into(),
        }
    }

    fn list(&self) -> bool {
        matches!(self, Ty::List | Ty::Rows(..) | Ty::Items(_))
    }

    /// A map at run time (an object, a row).
    fn map(&self) -> bool {
        matches!(self, Ty::Map | Ty::Row(..) | Ty::Object(_) | Ty::Record(..))
    }

    /// The type of a list's elements, where it is known.
    pub(crate) fn element(&self) -> Ty {
        match self {
            Ty::Rows(ent, embeds) => Ty::Row(ent.clone(), embeds.clone()),
            Ty::Items(t) => (**t).clone(),
            _ => Ty::Dyn,
        }
    }

    /// The type of a map's values, where every value has the same one (an
    /// object whose keys are all known: a map literal, a group of an
    /// aggregate), and whether one of them may be null.
    fn map_value(&self) -> (Ty, bool) {
        match self {
            Ty::Record(keys, _) => {
                let mut types = keys.iter().map(|(_, t, _)| t);
                let ty = match types.next() {
                    Some(first) if types.all(|t| t == first) => first.clone(),
                    _ => Ty::Dyn,
                };
                (ty, keys.iter().any(|(_, _, null)| *null))
            }
            _ => (Ty::Dyn, false),
        }
    }

    /// A number (an int, a uint, a double or a `number`).
    pub(crate) fn is_numeric(&self) -> bool {
        self.numeric()
    }

    /// A list at run time.
    pub(crate) fn is_list(&self) -> bool {
        self.list()
    }

    /// Known well enough to be judged (not `dyn`, not null).
    pub(crate) fn is_known(&self) -> bool {
        self.known()
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double | Ty::Number)
    }

    /// Known well enough to judge an operator by.
    fn known(&self) -> bool {
        !matches!(self, Ty::Dyn | Ty::Null)
    }
}

/// The type a column of `field_type` reads as.
pub(crate) fn of_field(t: FieldType) -> Ty {
    match t {
        FieldType::String | FieldType::Uuid | FieldType::Ref => Ty::String,
        FieldType::Integer => Ty::Int,
        FieldType::Boolean => Ty::Bool,
        FieldType::Number => Ty::Number,
        FieldType::Timestamp => Ty::Timestamp,
        FieldType::Json => Ty::Dyn,
    }
}

/// Inside an input object a property the schema does not require may be
/// left out, and reading an absent key fails: `has()` must prove it first
/// (as a guard of `e`'s path; reads that are not a plain path are judged
/// at run time).
fn optional_read(
    e: &Expr,
    schema: &Json,
    field: &str,
    guards: &[String],
    errors: &mut Vec<TypeError>,
) {
    let required = schema
        .get("required")
        .and_then(Json::as_array)
        .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(field)));
    // (A path with whole-number indexes too: `input.lines[0].note`.)
    let Some((_, path)) = path_text(e) else {
        return;
    };
    if !required && !guards.contains(&path) {
        errors.push(TypeError {
            span: e.span,
            message: format!(
                "`{path}` is optional in the input schema: reading it fails on the calls that leave it out"
            ),
            help: format!(
                "test it first: `has({path}) ? {path} : …` (or `has({path}) && …`), or list `{field}` in the schema's `required`"
            ),
        });
    }
}

/// A type's name in the plural, for "a list of …".
fn plural(t: &Ty) -> String {
    match t {
        Ty::Int => "ints".into(),
        Ty::Uint => "uints".into(),
        Ty::Double => "doubles".into(),
        Ty::Number => "numbers".into(),
        Ty::String => "strings".into(),
        Ty::Bool => "bools".into(),
        Ty::Object(_) => "objects".into(),
        other => format!("values ({})", other.a()),
    }
}

/// The type of a JSON Schema property, as the input reads it (text stays
/// text, whatever its `format`): an array's elements by its `items`, an
/// object's properties by its `properties`. A tuple (`prefixItems`) has
/// elements of one type only when every position and `items` agree:
/// `items` types the elements after the prefix only.
fn of_schema(s: &Json) -> Ty {
    match s.get("type").and_then(Json::as_str) {
        Some("string") => Ty::String,
        Some("integer") => Ty::Int,
        Some("number") => Ty::Number,
        Some("boolean") => Ty::Bool,
        Some("array") => {
            let mut positions: Vec<Ty> = match s.get("prefixItems") {
                Some(Json::Array(prefix)) => prefix.iter().map(of_schema).collect(),
                _ => Vec::new(),
            };
            match s.get("items") {
                // `false`: nothing past the prefix.
                Some(Json::Bool(false)) => {}
                Some(items) => positions.push(of_schema(items)),
                // Anything may follow (the prefix, if any).
                None => return Ty::List,
            }
            match positions.split_first() {
                Some((first, rest)) if rest.iter().all(|t| t == first) => {
                    Ty::Items(Box::new(first.clone()))
                }
                _ => Ty::List,
            }
        }
        Some("object") if s.get("properties").is_some_and(Json::is_object) => {
            Ty::Object(Box::new(s.clone()))
        }
        Some("object") => Ty::Map,
        _ => Ty::Dyn,
    }
}

/// A type error found while inferring: the sub-expression's span, the
/// message and the help.
pub(crate) struct TypeError {
    pub span: crate::expr::Span,
    pub message: String,
    pub help: String,
}

/// Infers the type of `e`, collecting the operators that cannot apply.
pub(crate) fn infer(e: &Expr, scope: &Scope, errors: &mut Vec<TypeError>) -> Ty {
    infer_at(e, scope, errors, &local_names(e), &scope.guards, &[])
}

/// The parts of `e` that fail whenever they are evaluated: an expression
/// of literals alone (no name) that the interpreter cannot evaluate
/// (`duration('1d')`, `timestamp('2026-01-01')`, `['x'][2]`, `1 / 0`), a
/// literal pattern `matches` refuses, a literal time zone `getHours` and its
/// kin do not know. Each is evaluated as the interpreter would, once.
pub(crate) fn constant_failures(e: &Expr, errors: &mut Vec<TypeError>) {
    // A whole expression of literals whose value JSON cannot hold (NaN, an
    // infinity): writing or answering it fails on every call.
    if let Some(v) = constant_value(e)
        && let Err(why) = v.to_json()
    {
        errors.push(TypeError {
            span: e.span,
            message: format!("this fails on every call: {why}"),
            help: "give a value JSON can hold (NaN and the infinities are not numbers to it)"
                .into(),
        });
        return;
    }
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        let closed = {
            let mut names = false;
            e.walk(|x| names |= matches!(x.kind, ExprKind::Ident(_)));
            !names
        };
        if closed && !matches!(e.kind, ExprKind::Lit(_)) {
            if let Err(err) = crate::expr::eval(e, &NoNames) {
                errors.push(TypeError {
                    span: err.span,
                    message: format!("this fails on every call: {}", err.message),
                    help: "fix the literal (a duration is `'36h'`, a timestamp \
                           `'2026-01-01T00:00:00Z'`)"
                        .into(),
                });
            }
            continue;
        }
        if let ExprKind::Call { target, func, args } = &e.kind {
            let text = |a: Option<&Expr>| match a.map(|a| &a.kind) {
                Some(ExprKind::Lit(Lit::String(t))) => Some(t.clone()),
                _ => None,
            };
            // The methods that take a time zone: a form (timestamp, string).
            let zoned = signatures(func)
                .is_some_and(|forms| forms.iter().any(|f| matches!(f, [Arg::T, Arg::S])));
            let problem = match (func.as_str(), target.is_some()) {
                ("matches", true) => {
                    text(args.first()).and_then(|p| crate::expr::pattern_problem(&p))
                }
                ("matches", false) => {
                    text(args.get(1)).and_then(|p| crate::expr::pattern_problem(&p))
                }
                (_, true) if zoned => {
                    text(args.first()).and_then(|z| crate::expr::zone_problem(&z))
                }
                _ => None,
            };
            if let Some(message) = problem {
                errors.push(TypeError {
                    span: e.span,
                    message: format!("this fails on every call: {message}"),
                    help: if func == "matches" {
                        "write the pattern in RE2 syntax (`^[a-z]+$`)".into()
                    } else {
                        "name a time zone of the IANA database (`Europe/Paris`), `UTC`, or an offset (`+05:30`)".into()
                    },
                });
            }
        }
        match &e.kind {
            ExprKind::Lit(_) | ExprKind::Ident(_) => {}
            ExprKind::Member(a, _) | ExprKind::Unary(_, a) => stack.push(a),
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => stack.extend([&**a, &**b]),
            ExprKind::Call { target, args, .. } => {
                stack.extend(target.as_deref());
                stack.extend(args);
            }
            ExprKind::Cond(a, b, c) => stack.extend([&**a, &**b, &**c]),
            ExprKind::List(items) => stack.extend(items),
            ExprKind::Map(entries) => stack.extend(entries.iter().flat_map(|(k, v)| [k, v])),
        }
    }
}

/// No name is bound: the environment of an expression of literals alone.
struct NoNames;

impl crate::expr::Env for NoNames {
    fn lookup(&self, _: &str) -> Option<&crate::expr::Value> {
        None
    }
}

/// The value of an expression made of literals alone (no name), as the
/// interpreter computes it; `None` when it reads a name or fails.
pub(crate) fn constant_value(e: &Expr) -> Option<crate::expr::Value> {
    let mut names = false;
    e.walk(|x| names |= matches!(x.kind, ExprKind::Ident(_)));
    if names {
        return None;
    }
    crate::expr::eval(e, &NoNames).ok()
}

/// A variable a macro binds (`x` in `list.map(x, …)`): its type where
/// the macro's range tells it, and whether it may be null (a member of
/// the range may be).
#[derive(Clone)]
pub(crate) struct Var<'a> {
    name: &'a str,
    ty: Ty,
    null: bool,
}

/// Whether a member of the list `range` may be null, under the scope's
/// guards (what a `foreach` or a `create`'s `each` goes over).
pub(crate) fn members_may_be_null(range: &Expr, scope: &Scope) -> bool {
    members_nullable(range, scope, &local_names(range), &scope.guards, &[])
}

/// Whether a member of the list `range` may be null: a literal list with
/// `null` or a member that may be null, an input array whose `items` let
/// null through.
fn members_nullable(
    range: &Expr,
    scope: &Scope,
    locals: &[String],
    guards: &[String],
    vars: &[Var<'_>],
) -> bool {
    match &range.kind {
        ExprKind::List(items) => items.iter().any(|i| {
            matches!(i.kind, ExprKind::Lit(Lit::Null))
                || nullable(i, scope, locals, guards, vars).is_some_and(|p| !guards.contains(&p))
        }),
        ExprKind::Member(inner, field)
            if matches!(&inner.kind, ExprKind::Ident(r) if r == "input")
                && !locals.iter().any(|l| l == "input") =>
        {
            scope
                .input_property(field)
                .and_then(|p| p.get("items"))
                .is_some_and(allows_null)
        }
        // The list a node bound (a `foreach`'s), or a `let` holds.
        ExprKind::Ident(root) if !locals.contains(root) => scope.list_members_nullable(root, None),
        ExprKind::Member(inner, field)
            if let ExprKind::Ident(root) = &inner.kind
                && !locals.contains(root) =>
        {
            scope.list_members_nullable(root, Some(field))
        }
        // `a + b`: the members of both.
        ExprKind::Binary(BinaryOp::Add, a, b) => {
            members_nullable(a, scope, locals, guards, vars)
                || members_nullable(b, scope, locals, guards, vars)
        }
        // `list.map(x, t)`: a list of what `t` gives, null when it may be.
        ExprKind::Call {
            target: Some(list),
            func,
            args,
        } if (func == "map" || func == "transformList") && args.len() == 2 => {
            let (Some(ExprKind::Ident(name)), Some(transform)) =
                (args.first().map(|a| &a.kind), args.get(1))
            else {
                return false;
            };
            if matches!(transform.kind, ExprKind::Lit(Lit::Null)) {
                return true;
            }
            let on = infer_at(list, scope, &mut Vec::new(), locals, guards, vars);
            let mut inner = vars.to_vec();
            inner.push(Var {
                name,
                ty: on.element(),
                null: members_nullable(list, scope, locals, guards, vars),
            });
            nullable(transform, scope, locals, guards, &inner).is_some_and(|p| !guards.contains(&p))
        }
        _ => false,
    }
}

/// The path (`input.nick`, `order.note`) of `e` when it may be null: an
/// input property the schema does not require, a nullable column of a row.
fn nullable(
    e: &Expr,
    scope: &Scope,
    locals: &[String],
    guards: &[String],
    vars: &[Var<'_>],
) -> Option<String> {
    match &e.kind {
        // A loop's element, where a member of its list may be null.
        ExprKind::Ident(name) if !locals.contains(name) && scope.loop_element_nullable(name) => {
            return Some(name.clone());
        }
        // A macro's variable over a range with a member that may be null.
        ExprKind::Ident(name) if locals.contains(name) => {
            return vars
                .iter()
                .rev()
                .find(|v| v.name == name)
                .filter(|v| v.null)
                .map(|_| name.clone());
        }
        // `dyn(x)` is `x`.
        ExprKind::Call {
            target: None,
            func,
            args,
        } if func == "dyn" && args.len() == 1 => {
            return args
                .first()
                .and_then(|a| nullable(a, scope, locals, guards, vars));
        }
        // A `?:` whose branch may be null (under its condition's guards),
        // or that is `null`.
        ExprKind::Cond(c, a, b) => {
            let branch = |x: &Expr, holds: bool| {
                if matches!(x.kind, ExprKind::Lit(Lit::Null)) {
                    return true;
                }
                let mut inner = guards.to_vec();
                inner.extend(guards_of(c, holds));
                nullable(x, scope, locals, &inner, vars)
                    .is_some_and(|p| !inner.contains(&p) && !scope.guards.contains(&p))
            };
            return (branch(a, true) || branch(b, false)).then(|| "… ? … : …".to_owned());
        }
        // A literal list's member by a literal index, a map literal's
        // value by a literal key.
        ExprKind::Index(inner, i) => match (&inner.kind, &i.kind) {
            (ExprKind::List(items), ExprKind::Lit(Lit::Int(n))) => {
                if let Some(x) = usize::try_from(*n).ok().and_then(|n| items.get(n)) {
                    return nullable(x, scope, locals, guards, vars);
                }
            }
            (ExprKind::Map(entries), ExprKind::Lit(Lit::String(key))) => {
                return entries.iter().find_map(|(k, v)| match &k.kind {
                    ExprKind::Lit(Lit::String(k)) if k == key => {
                        nullable(v, scope, locals, guards, vars)
                    }
                    _ => None,
                });
            }
            _ => {}
        },
        // A key of a map literal: its value.
        ExprKind::Member(inner, field) if let ExprKind::Map(entries) = &inner.kind => {
            return entries.iter().find_map(|(k, v)| match &k.kind {
                ExprKind::Lit(Lit::String(key)) if key == field => {
                    nullable(v, scope, locals, guards, vars)
                }
                _ => None,
            });
        }
        _ => {}
    }
    let ExprKind::Member(inner, field) = &e.kind else {
        return None;
    };
    let (root, _) = path_text(e)?;
    // A macro's variable: only where the macro's range tells its type.
    if locals.contains(&root) && !vars.iter().any(|v| v.name == root) {
        return None;
    }
    let path = || path_text(e).map(|(_, text)| text);
    match &inner.kind {
        // Left out (not required), or sent as null (the schema lets null
        // through).
        ExprKind::Ident(r) if r == "input" => scope
            .input_property(field)
            .is_some_and(|p| !scope.input_required(field) || allows_null(p))
            .then(path)
            .flatten(),
        // An anonymous caller of a public tool has no subject.
        // A call without an `Idempotency-Key` header has none, where the
        // tool does not require one.
        ExprKind::Ident(r)
            if r == "request" && field == "idempotencyKey" && !locals.contains(r) =>
        {
            scope.idempotency_key_optional().then(path).flatten()
        }
        ExprKind::Ident(r) if r == "auth" && field == "sub" && !locals.contains(r) => {
            scope.anonymous().then(path).flatten()
        }
        // `avg`, `min` and `max` over no value are null.
        ExprKind::Ident(r) if let Some((kind, _)) = scope.measure(r, field) => {
            matches!(kind, MeasureKind::Avg | MeasureKind::Min | MeasureKind::Max)
                .then(path)
                .flatten()
        }
        _ => match infer_at(inner, scope, &mut Vec::new(), locals, &[], vars) {
            Ty::Row(ent, _)
                if scope.column_nullable(&ent, field)
                    && !matches!(&inner.kind, ExprKind::Ident(root)
                        if !locals.contains(root) && scope.written_non_null(root, field)) =>
            {
                path()
            }
            // A `ref` include: null when the field is, or the row is gone
            // or not the caller's.
            Ty::Row(_, embeds)
                if embeds
                    .iter()
                    .any(|(n, t)| n == field && matches!(t, Ty::Row(..))) =>
            {
                path()
            }
            // A group's nullable key, or its `avg`, `min`, `max` of a
            // nullable field.
            Ty::Record(keys, _) if keys.iter().any(|(k, _, null)| k == field && *null) => path(),
            // A property of an input object that may be sent as null.
            Ty::Object(schema)
                if schema
                    .get("properties")
                    .and_then(|p| p.get(field.as_str()))
                    .is_some_and(allows_null) =>
            {
                path()
            }
            _ => None,
        },
    }
}

/// Whether a property's schema lets `null` through: `null` among its
/// types (or `nullable`), in its `enum` or as its `const`, a branch of its
/// `anyOf`/`oneOf` that does, or no type at all.
pub(crate) fn allows_null(s: &Json) -> bool {
    let Json::Object(m) = s else {
        return *s == Json::Bool(true);
    };
    if m.get("nullable") == Some(&Json::Bool(true)) || m.get("const") == Some(&Json::Null) {
        return true;
    }
    if let Some(list) = m.get("enum").and_then(Json::as_array) {
        return list.contains(&Json::Null);
    }
    if m.contains_key("const") {
        return false;
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(branches) = m.get(k).and_then(Json::as_array) {
            return branches.iter().any(allows_null);
        }
    }
    match m.get("type") {
        Some(Json::String(t)) => t == "null",
        Some(Json::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => !m.contains_key("$ref"),
    }
}

/// A path's root name and its text: a name, then fields and whole-number
/// indexes (`rows[0].therapist_row`); `None` for anything else.
fn path_text(e: &Expr) -> Option<(String, String)> {
    match &e.kind {
        ExprKind::Ident(name) => Some((name.clone(), name.clone())),
        ExprKind::Member(inner, field) => {
            path_text(inner).map(|(root, text)| (root, format!("{text}.{field}")))
        }
        ExprKind::Index(inner, i) => match &i.kind {
            ExprKind::Lit(Lit::Int(n)) => {
                path_text(inner).map(|(root, text)| (root, format!("{text}[{n}]")))
            }
            // By a name (`r[i]`): guarded as written.
            ExprKind::Ident(name) => {
                path_text(inner).map(|(root, text)| (root, format!("{text}[{name}]")))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The paths a condition proves non-null when it is `holds`: `has(p)` and
/// `p != null` when true, `p == null` when false, through `&&`, `||` and
/// `!`.
pub(crate) fn guards_of(c: &Expr, holds: bool) -> Vec<String> {
    let path = |x: &Expr| path_text(x).map(|(_, text)| text);
    match (&c.kind, holds) {
        (
            ExprKind::Call {
                target: None,
                func,
                args,
            },
            true,
        ) if func == "has" => args.first().and_then(path).into_iter().collect(),
        (ExprKind::Binary(op @ (BinaryOp::Ne | BinaryOp::Eq), a, b), _)
            if (*op == BinaryOp::Ne) == holds =>
        {
            match (&a.kind, &b.kind) {
                (_, ExprKind::Lit(Lit::Null)) => path(a).into_iter().collect(),
                (ExprKind::Lit(Lit::Null), _) => path(b).into_iter().collect(),
                _ => Vec::new(),
            }
        }
        (ExprKind::Binary(BinaryOp::And, a, b), true)
        | (ExprKind::Binary(BinaryOp::Or, a, b), false) => {
            let mut g = guards_of(a, holds);
            g.extend(guards_of(b, holds));
            g
        }
        (ExprKind::Unary(UnaryOp::Not, x), _) => guards_of(x, !holds),
        _ => Vec::new(),
    }
}

/// The path of `e` when it may be null here and nothing guards it (for a
/// value written into a column that does not take null).
pub(crate) fn unguarded_null(e: &Expr, scope: &Scope) -> Option<String> {
    nullable(e, scope, &local_names(e), &scope.guards, &[]).filter(|p| !scope.guards.contains(p))
}

/// Whether `e` may give null here: a value that may be null and that
/// nothing guards, the literal `null`, or a `?:` with such a branch.
pub(crate) fn may_be_null(e: &Expr, scope: &Scope) -> bool {
    match &e.kind {
        ExprKind::Lit(Lit::Null) => true,
        ExprKind::Cond(c, a, b) => {
            let branch = |x: &Expr, holds: bool| {
                let mut guarded = scope.clone();
                guarded.guards.extend(guards_of(c, holds));
                may_be_null(x, &guarded)
            };
            branch(a, true) || branch(b, false)
        }
        _ => unguarded_null(e, scope).is_some(),
    }
}

/// The type of a JSON literal.
pub(crate) fn of_json(v: &Json) -> Ty {
    match v {
        Json::Null => Ty::Null,
        Json::Bool(_) => Ty::Bool,
        Json::Number(n) if n.is_f64() => Ty::Double,
        Json::Number(_) => Ty::Int,
        Json::String(_) => Ty::String,
        Json::Array(_) => Ty::List,
        Json::Object(_) => Ty::Map,
    }
}

/// Reports `x` used where null fails, when it may be null and nothing
/// guards it.
fn not_null(
    x: &Expr,
    what: &dyn Fn() -> String,
    scope: &Scope,
    errors: &mut Vec<TypeError>,
    locals: &[String],
    guards: &[String],
    vars: &[Var<'_>],
) {
    if let Some(p) = nullable(x, scope, locals, guards, vars)
        && !guards.contains(&p)
    {
        errors.push(TypeError {
            span: x.span,
            message: format!("`{p}` may be null here (an optional input property, a nullable field, a `ref` include, or `avg`, `min`, `max` over no row), and {} fails on null", what()),
            help: format!("guard it: `has({p}) && …`, or give a default: `{p} != null ? {p} : …`"),
        });
    }
}

/// Names that macros bind somewhere in `e` (their type is not known).
fn local_names(e: &Expr) -> Vec<String> {
    e.macro_scopes()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect()
}

fn infer_at(
    e: &Expr,
    scope: &Scope,
    errors: &mut Vec<TypeError>,
    locals: &[String],
    guards: &[String],
    vars: &[Var<'_>],
) -> Ty {
    let sub =
        |x: &Expr, errors: &mut Vec<TypeError>| infer_at(x, scope, errors, locals, guards, vars);
    let guarded = |x: &Expr, extra: Vec<String>, errors: &mut Vec<TypeError>| {
        let mut g = guards.to_vec();
        g.extend(extra);
        infer_at(x, scope, errors, locals, &g, vars)
    };
    // (`what` is written only when there is something to report.)
    let check = |x: &Expr, what: &dyn Fn() -> String, errors: &mut Vec<TypeError>| {
        not_null(x, what, scope, errors, locals, guards, vars);
    };
    match &e.kind {
        ExprKind::Lit(l) => match l {
            Lit::Null => Ty::Null,
            Lit::Bool(_) => Ty::Bool,
            Lit::Int(_) => Ty::Int,
            Lit::Uint(_) => Ty::Uint,
            Lit::Double(_) => Ty::Double,
            Lit::String(_) => Ty::String,
            Lit::Bytes(_) => Ty::Bytes,
        },
        // A macro's variable: its type where the macro's range tells it.
        ExprKind::Ident(name) if locals.iter().any(|l| l == name) => vars
            .iter()
            .rev()
            .find(|v| v.name == name)
            .map_or(Ty::Dyn, |v| v.ty.clone()),
        ExprKind::Ident(name) => match name.as_str() {
            "input" | "auth" | "request" => Ty::Map,
            _ => match scope.lookup(name) {
                Ok(Binding::Row(ent, embeds)) => Ty::Row(ent, embeds),
                Ok(Binding::Rows(ent, embeds)) => Ty::Rows(ent, embeds),
                Ok(Binding::Object(_)) => scope.object_type(name).unwrap_or(Ty::Map),
                Ok(Binding::Typed(t)) => t,
                _ => Ty::Dyn,
            },
        },
        ExprKind::Member(inner, field) => {
            if let ExprKind::Ident(root) = &inner.kind
                && !locals.iter().any(|l| l == root)
            {
                match root.as_str() {
                    "input" => {
                        return scope
                            .input_property(field)
                            .map(of_schema)
                            .unwrap_or(Ty::Dyn);
                    }
                    "request" => {
                        return match field.as_str() {
                            "time" => Ty::Timestamp,
                            "id" => Ty::String,
                            _ => Ty::Dyn,
                        };
                    }
                    "auth" => {
                        return match field.as_str() {
                            "sub" => Ty::String,
                            "roles" => Ty::List,
                            "claims" => Ty::Map,
                            _ => Ty::Dyn,
                        };
                    }
                    r => {
                        if let Some((kind, column)) = scope.measure(r, field) {
                            return match kind {
                                MeasureKind::Count | MeasureKind::Sum => Ty::Int,
                                MeasureKind::Avg => Ty::Double,
                                MeasureKind::Min | MeasureKind::Max => {
                                    column.map_or(Ty::Dyn, of_field)
                                }
                            };
                        }
                    }
                }
            }
            check(inner, &|| "reading a field".into(), errors);
            match sub(inner, errors) {
                Ty::Row(ent, embeds) => match scope.column_type(&ent, field) {
                    Some(t) => of_field(t),
                    None => match embeds.iter().find(|(n, _)| n == field) {
                        Some((_, t)) => t.clone(),
                        None => {
                            if let Some(mut names) = scope.columns(&ent) {
                                names.extend(embeds.iter().map(|(n, _)| n.as_str()));
                                errors.push(TypeError {
                                    span: e.span,
                                    message: format!("`{ent}` has no field `{field}`"),
                                    help: crate::diag::suggest(field, names, ""),
                                });
                            }
                            Ty::Dyn
                        }
                    },
                },
                Ty::Record(keys, what) => match keys.iter().find(|(k, ..)| k == field) {
                    Some((_, t, _)) => t.clone(),
                    None => {
                        errors.push(TypeError {
                            span: e.span,
                            message: format!("{what} has no `{field}`"),
                            help: crate::diag::suggest(
                                field,
                                keys.iter().map(|(k, ..)| k.as_str()),
                                "",
                            ),
                        });
                        Ty::Dyn
                    }
                },
                Ty::Object(schema) => {
                    match schema.get("properties").and_then(|p| p.get(field.as_str())) {
                        Some(p) => {
                            optional_read(e, &schema, field, guards, errors);
                            of_schema(p)
                        }
                        // Closed and not declared: never there.
                        None if schema.get("additionalProperties") == Some(&Json::Bool(false)) => {
                            errors.push(TypeError {
                            span: e.span,
                            message: format!("the input schema declares no property `{field}` here"),
                            help: format!(
                                "declare `{field}` in the schema's `properties`, or use one it declares"
                            ),
                        });
                            Ty::Dyn
                        }
                        // Open and not declared: there on some calls only.
                        None => {
                            optional_read(e, &schema, field, guards, errors);
                            Ty::Dyn
                        }
                    }
                }
                t if t.known() && !t.map() => {
                    errors.push(TypeError {
                        span: e.span,
                        message: format!(
                            "`.{field}` reads a field of a row or an object, not of {}",
                            t.a()
                        ),
                        help: if t.list() {
                            format!("a list has no fields: take one element (`[0].{field}`) or map the list (`.map(x, x.{field})`)")
                        } else {
                            "read fields of a row, an include that is a row, or an object".into()
                        },
                    });
                    Ty::Dyn
                }
                _ => Ty::Dyn,
            }
        }
        ExprKind::Index(a, i) => {
            check(a, &|| "indexing".into(), errors);
            let on = sub(a, errors);
            let at = sub(i, errors);
            let refused = if on.list() {
                (at.known() && !at.numeric()).then(|| "a list's index is a number".to_string())
            } else if on.map() {
                (at.known() && at != Ty::String).then(|| "a map's keys are strings".to_string())
            } else {
                on.known()
                    .then(|| "`[]` applies to a list or a map".to_string())
            };
            if let Some(help) = refused {
                errors.push(TypeError {
                    span: e.span,
                    message: format!("{} cannot be indexed with {}", on.a(), at.a()),
                    help,
                });
                return Ty::Dyn;
            }
            if on.list() && negative_literal(i) {
                errors.push(TypeError {
                    span: e.span,
                    message: "a list's index is never negative: this is out of range on every call"
                        .into(),
                    help: "count from the start (`l[size(l) - 1]` for the last element)".into(),
                });
                return Ty::Dyn;
            }
            // A list's element (out of range is the run's error).
            on.element()
        }
        ExprKind::Unary(op, a) => {
            check(
                a,
                &|| format!("`{}`", if *op == UnaryOp::Not { "!" } else { "-" }),
                errors,
            );
            let t = sub(a, errors);
            match op {
                UnaryOp::Not => Ty::Bool,
                UnaryOp::Neg
                    if t.known() && (!t.numeric() || t == Ty::Uint) && t != Ty::Duration =>
                {
                    errors.push(TypeError {
                        span: e.span,
                        message: format!("`-` does not apply to {}", t.a()),
                        help: "negate an int, a double or a duration (a uint has no negative: `-int(x)`)".into(),
                    });
                    Ty::Dyn
                }
                UnaryOp::Neg => t,
            }
        }
        ExprKind::Cond(c, a, b) => {
            check(c, &|| "`? :`'s condition".into(), errors);
            sub(c, errors);
            let (x, y) = (
                guarded(a, guards_of(c, true), errors),
                guarded(b, guards_of(c, false), errors),
            );
            if x == y {
                x
            } else if x == Ty::Null {
                y
            } else if y == Ty::Null {
                x
            } else {
                Ty::Dyn
            }
        }
        // A list of members all of one known type is a list of that type.
        ExprKind::List(items) => {
            let types: Vec<Ty> = items.iter().map(|i| sub(i, errors)).collect();
            match types.split_first() {
                Some((t, rest)) if t.known() && rest.iter().all(|u| u == t) => {
                    Ty::Items(Box::new(t.clone()))
                }
                _ => Ty::List,
            }
        }
        ExprKind::Map(entries) => {
            for (k, v) in entries {
                let key = sub(k, errors);
                // A map's keys are strings (CEL also has int, uint and
                // bool keys; the format does not).
                if key.known() && key != Ty::String {
                    errors.push(TypeError {
                        span: k.span,
                        message: format!("a map's key is a string, not {}", key.a()),
                        help: "convert the key (`string(x)`)".into(),
                    });
                }
                sub(v, errors);
            }
            // Keys all literal: an object of those keys, each of its
            // value's type, null where the value may be.
            let keys: Option<Vec<(String, Ty, bool)>> = entries
                .iter()
                .map(|(k, v)| match &k.kind {
                    ExprKind::Lit(Lit::String(key)) => Some((
                        key.clone(),
                        infer_at(v, scope, &mut Vec::new(), locals, guards, vars),
                        matches!(v.kind, ExprKind::Lit(Lit::Null))
                            || nullable(v, scope, locals, guards, vars)
                                .is_some_and(|p| !guards.contains(&p)),
                    )),
                    _ => None,
                })
                .collect();
            match keys {
                Some(keys) => Ty::Record(keys, "a map literal".into()),
                None => Ty::Map,
            }
        }
        ExprKind::Call { target, func, args } => {
            if let Some(t) = target {
                check(t, &|| format!("`.{func}()`"), errors);
            } else if !matches!(func.as_str(), "has" | "string" | "dyn" | "type")
                && let Some(first) = args.first()
            {
                check(first, &|| format!("`{func}()`"), errors);
            }
            if let Some(t) = target
                && crate::expr::MACROS.contains(&func.as_str())
            {
                let on = sub(t, errors);
                if on.known() && !on.list() && !on.map() {
                    errors.push(TypeError {
                        span: t.span,
                        message: format!("`{func}` applies to a list or a map, not {}", on.a()),
                        help: "apply it to a list (an input array, a read's rows) or a map".into(),
                    });
                }
                // The names it binds, typed by the range: a list's index
                // and element, a map's key and value (one name: a list's
                // element, a map's key).
                let names = crate::expr::macro_names(func, args.len());
                let element = on.element();
                let (value, value_null) = on.map_value();
                let types = match (on.map(), names) {
                    (true, 1) => vec![Ty::String],
                    (true, _) => vec![Ty::String, value],
                    (false, 1) => vec![element],
                    (false, _) => vec![Ty::Int, element],
                };
                // The element may be null when a member of the range may; a
                // map's value when one of its values may.
                let null = if on.map() {
                    names == 2 && value_null
                } else {
                    members_nullable(t, scope, locals, guards, vars)
                };
                let mut inner: Vec<Var> = vars.to_vec();
                for (k, (a, ty)) in args.iter().take(names).zip(types).enumerate() {
                    if let ExprKind::Ident(n) = &a.kind {
                        inner.push(Var {
                            name: n,
                            ty,
                            null: null && k + 1 == names,
                        });
                    }
                }
                let rest: Vec<&Expr> = args.iter().skip(names).collect();
                // The predicate: the whole rest of `all`, `exists`,
                // `exists_one`, `filter`; the middle one of `map` and the
                // `transform…` macros when they have one.
                let predicate = match func.as_str() {
                    "map" | "transformList" | "transformMap" => (rest.len() == 2).then_some(0),
                    _ => Some(0),
                };
                // What guards proved of a name the macro binds again is
                // not proved of its variable.
                let bound: Vec<&str> = args
                    .iter()
                    .take(names)
                    .filter_map(|a| match &a.kind {
                        ExprKind::Ident(n) => Some(n.as_str()),
                        _ => None,
                    })
                    .collect();
                let guards: Vec<String> = guards
                    .iter()
                    .filter(|g| {
                        !bound.iter().any(|n| {
                            g.strip_prefix(n)
                                .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
                        })
                    })
                    .cloned()
                    .collect();
                let mut last = Ty::Dyn;
                for (k, a) in rest.iter().enumerate() {
                    let t = infer_at(a, scope, errors, locals, &guards, &inner);
                    if predicate == Some(k) && t.known() && t != Ty::Bool {
                        errors.push(TypeError {
                            span: a.span,
                            message: format!("`{func}`'s condition gives {}, not a bool", t.a()),
                            help: "write a condition (`x > 0`, `x.status == 'open'`)".into(),
                        });
                    }
                    last = t;
                }
                return match (func.as_str(), on) {
                    // A filter keeps the list's type.
                    ("filter", t @ (Ty::Rows(..) | Ty::Items(_))) => t,
                    // A map's list is of what its transform gives.
                    ("map" | "transformList", _) if last.known() => Ty::Items(Box::new(last)),
                    _ => call_type(func),
                };
            }
            // `has(x.f)` tests a field of `x`; `x` itself is read, and
            // fails when it is absent or null (`has(a.b.c)` with `b`
            // optional).
            if func == "has" && target.is_none() {
                if let Some(ExprKind::Member(inner, _)) = args.first().map(|a| &a.kind) {
                    check(inner, &|| "`has()` of one of its fields".into(), errors);
                    sub(inner, errors);
                }
                return Ty::Bool;
            }
            let mut given = Vec::with_capacity(args.len() + 1);
            for a in target.iter().map(|t| &**t).chain(args) {
                given.push(sub(a, errors));
            }
            // `timestamp(input.day)` of a `format: date` property, or
            // `duration(input.every)` of a `format: duration` one (ISO 8601,
            // `P1D`): every value the schema lets through fails.
            if target.is_none()
                && let [arg] = args.as_slice()
                && let ExprKind::Member(root, prop) = &arg.kind
                && matches!(&root.kind, ExprKind::Ident(r) if r == "input")
                && let Some(format) = scope
                    .input_property(prop)
                    .and_then(|p| p.get("format"))
                    .and_then(Json::as_str)
                && let Some(why) = match (func.as_str(), format) {
                    ("timestamp", "date") => {
                        Some("only dates (`2026-05-01`), which are not timestamps")
                    }
                    ("timestamp", "time") => {
                        Some("only times of day (`10:00:00Z`), which are not timestamps")
                    }
                    ("duration", "duration") => Some(
                        "only ISO 8601 durations (`P1D`, `PT90M`), and `duration()` reads seconds, minutes and hours (`90m`, `24h`)",
                    ),
                    _ => None,
                }
            {
                errors.push(TypeError {
                    span: e.span,
                    message: format!(
                        "the input schema's `format: {format}` of `input.{prop}` lets {why}: every call would fail"
                    ),
                    help: match func.as_str() {
                        "timestamp" => "declare the input `format: date-time`, or write the time too (`timestamp(input.day + 'T00:00:00Z')`)".into(),
                        _ => "drop the `format` and describe the text (`\"pattern\": \"^[0-9]+(h|m|s)$\"`), or take a number of seconds".into(),
                    },
                });
            }
            if func == "format"
                && let (Some(f), Some(list)) = (target, args.first())
                && let Some((message, help)) = format_problem(f, list, scope, locals, vars)
            {
                errors.push(TypeError {
                    span: e.span,
                    message,
                    help,
                });
            } else if func == "join"
                && let Some(t) = target
                && let ExprKind::List(items) = &t.kind
            {
                if let Some(bad) = items.iter().find_map(|i| {
                    let ty = infer_at(i, scope, &mut Vec::new(), locals, guards, vars);
                    (ty.known() && ty != Ty::String).then_some(ty)
                }) {
                    errors.push(TypeError {
                        span: e.span,
                        message: format!(
                            "`.join()` joins strings, and a member of this list is {}",
                            bad.a()
                        ),
                        help: "convert each member first (`string(x)`)".into(),
                    });
                } else if let Some(p) = items.iter().find_map(|i| {
                    nullable(i, scope, locals, guards, vars).filter(|p| !guards.contains(p))
                }) {
                    errors.push(TypeError {
                        span: e.span,
                        message: format!("`{p}` may be null, and `.join()` fails on a null member"),
                        help: format!("give a default: `{p} != null ? {p} : ''`"),
                    });
                }
            }
            // `math.greatest`/`least` compare numbers: a member of a literal
            // list, or an argument after the first (the first is checked as
            // any function's), that may be null fails.
            if matches!(func.as_str(), "math.greatest" | "math.least") {
                let members: Vec<&Expr> = match args.as_slice() {
                    [one] => match &one.kind {
                        ExprKind::List(items) => items.iter().collect(),
                        _ => Vec::new(),
                    },
                    many => many.iter().skip(1).collect(),
                };
                if let Some(p) = members.iter().find_map(|m| {
                    nullable(m, scope, locals, guards, vars).filter(|p| !guards.contains(p))
                }) {
                    errors.push(TypeError {
                        span: e.span,
                        message: format!("`{p}` may be null, and `{func}()` fails on null"),
                        help: format!("give a default: `{p} != null ? {p} : 0`"),
                    });
                }
            }
            if let Some(message) = refused(func, target.is_some(), &given) {
                errors.push(TypeError {
                    span: e.span,
                    message,
                    help: format!("see the signatures of `{func}` in the functions table"),
                });
            } else if let Some((message, help)) = refused_elements(func, &given) {
                errors.push(TypeError {
                    span: e.span,
                    message,
                    help,
                });
            }
            call_type(func)
        }
        ExprKind::Binary(op, a, b) => {
            if !matches!(
                op,
                BinaryOp::And | BinaryOp::Or | BinaryOp::Eq | BinaryOp::Ne | BinaryOp::In
            ) {
                check(a, &|| format!("`{}`", op.symbol()), errors);
                check(b, &|| format!("`{}`", op.symbol()), errors);
            }
            // `x in null` fails (a null `x` is fine: it is in no list).
            if *op == BinaryOp::In {
                check(b, &|| "`in`'s list".into(), errors);
            }
            // `&&` and `||` take bools: a null operand is an error on the
            // calls that leave it out (unless the other side decides).
            if matches!(op, BinaryOp::And | BinaryOp::Or) {
                check(a, &|| format!("`{}`", op.symbol()), errors);
                let mut g = guards.to_vec();
                g.extend(guards_of(a, *op == BinaryOp::And));
                not_null(
                    b,
                    &|| format!("`{}`", op.symbol()),
                    scope,
                    errors,
                    locals,
                    &g,
                    vars,
                );
            }
            let x = sub(a, errors);
            let y = match op {
                BinaryOp::And => guarded(b, guards_of(a, true), errors),
                BinaryOp::Or => guarded(b, guards_of(a, false), errors),
                _ => sub(b, errors),
            };
            if *op == BinaryOp::In && y.known() && !y.list() && !y.map() {
                errors.push(TypeError {
                    span: e.span,
                    message: format!("`in` looks in a list or a map, not in {}", y.a()),
                    help: if y == Ty::String {
                        "to find text in a string, use `s.contains(t)`".into()
                    } else {
                        "put the values in a list: `x in [a, b]`".into()
                    },
                });
                return Ty::Bool;
            }
            // An operand whose `?:` branches give different types (so not
            // one known type): each branch against the other side.
            if (!x.known() || !y.known())
                && !matches!(
                    op,
                    BinaryOp::And | BinaryOp::Or | BinaryOp::Eq | BinaryOp::Ne | BinaryOp::In
                )
                && (matches!(a.kind, ExprKind::Cond(..)) || matches!(b.kind, ExprKind::Cond(..)))
            {
                let (xs, ys) = (branch_types(a, scope), branch_types(b, scope));
                for tx in xs.iter().filter(|t| t.known()) {
                    for ty in ys.iter().filter(|t| t.known()) {
                        if binary(*op, tx, ty).is_none() {
                            errors.push(TypeError {
                                span: e.span,
                                message: format!(
                                    "`{}` does not apply to {} and {}, which a branch of `?:` gives: the calls that take it fail",
                                    op.symbol(),
                                    tx.a(),
                                    ty.a()
                                ),
                                help: "give both branches the same type (`c ? 1 : 0`, `c ? 'a' : 'b'`)"
                                    .into(),
                            });
                            return Ty::Dyn;
                        }
                    }
                }
            }
            if let Some((message, help)) = literal_operand_problem(*op, a, b, &x, &y) {
                errors.push(TypeError {
                    span: e.span,
                    message,
                    help,
                });
                return binary(*op, &x, &y).unwrap_or(Ty::Dyn);
            }
            binary(*op, &x, &y).unwrap_or_else(|| {
                errors.push(TypeError {
                    span: e.span,
                    message: format!(
                        "`{}` does not apply to {} and {}",
                        op.symbol(),
                        x.a(),
                        y.a()
                    ),
                    help: binary_help(*op, &x, &y),
                });
                Ty::Dyn
            })
        }
    }
}

/// An argument type in a function's signature.
#[derive(Clone, Copy)]
enum Arg {
    S,
    I,
    U,
    D,
    B,
    Bytes,
    L,
    M,
    T,
    Dur,
}

/// The argument types a function accepts (a method's receiver first), one
/// list per form, exactly as the interpreter dispatches them; `None` for
/// the functions not judged here (those that take anything, the macros).
fn signatures(func: &str) -> Option<&'static [&'static [Arg]]> {
    use Arg::*;
    Some(match func {
        "size" => &[&[S], &[Bytes], &[L], &[M]],
        "startsWith" | "endsWith" | "contains" | "matches" => &[&[S, S]],
        "charAt" => &[&[S, I]],
        "indexOf" | "lastIndexOf" => &[&[S, S], &[S, S, I]],
        "lowerAscii" | "upperAscii" | "trim" | "reverse" | "strings.quote" => &[&[S]],
        "replace" => &[&[S, S, S], &[S, S, S, I]],
        "split" => &[&[S, S], &[S, S, I]],
        "substring" => &[&[S, I], &[S, I, I]],
        "join" => &[&[L], &[L, S]],
        "format" => &[&[S, L]],
        "int" => &[&[I], &[U], &[D], &[S], &[T]],
        "uint" | "double" => &[&[I], &[U], &[D], &[S]],
        "bool" => &[&[B], &[S]],
        "string" => &[&[S], &[I], &[U], &[D], &[B], &[Bytes], &[T], &[Dur]],
        "math.bitAnd" | "math.bitOr" | "math.bitXor" => &[&[I, I], &[U, U]],
        "math.bitNot" => &[&[I], &[U]],
        "math.bitShiftLeft" | "math.bitShiftRight" => &[&[I, I], &[U, I]],
        "bytes" => &[&[S], &[Bytes]],
        "timestamp" => &[&[S], &[I], &[T]],
        "duration" => &[&[S], &[Dur]],
        "math.ceil" | "math.floor" | "math.round" | "math.trunc" | "math.isInf" | "math.isNaN" => {
            &[&[D]]
        }
        "math.isFinite" | "math.abs" | "math.sign" | "math.sqrt" => &[&[I], &[U], &[D]],
        "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
        | "getDayOfWeek" => &[&[T], &[T, S]],
        "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds" => &[&[T], &[T, S], &[Dur]],
        _ => return None,
    })
}

fn accepts(a: Arg, t: &Ty) -> bool {
    matches!(
        (a, t),
        (Arg::S, Ty::String)
            | (Arg::I, Ty::Int)
            | (Arg::U, Ty::Uint)
            | (Arg::D, Ty::Double)
            | (Arg::B, Ty::Bool)
            | (Arg::Bytes, Ty::Bytes)
            | (Arg::L, Ty::List | Ty::Rows(..) | Ty::Items(_))
            | (
                Arg::M,
                Ty::Map | Ty::Row(..) | Ty::Object(_) | Ty::Record(..)
            )
            | (Arg::T, Ty::Timestamp)
            | (Arg::Dur, Ty::Duration)
    )
}

/// Why a call of `func` with arguments of types `given` (the receiver
/// first for a `method`) fails on every call, when it does: no form of the
/// function takes them. A `number` (an integer or a double, by the value
/// sent) must fit both ways. Unknown types (`dyn`, null) are judged at run
/// time.
fn refused(func: &str, method: bool, given: &[Ty]) -> Option<String> {
    let forms = signatures(func)?;
    if given.iter().any(|t| !t.known()) {
        return None;
    }
    let fits = |tys: &[Ty]| {
        forms
            .iter()
            .any(|f| f.len() == tys.len() && f.iter().zip(tys).all(|(a, t)| accepts(*a, t)))
    };
    // Every reading of the `number`s: as integers and as doubles.
    let numbers: Vec<usize> = (0..given.len())
        .filter(|&i| given.get(i) == Some(&Ty::Number))
        .collect();
    let ok = (0..1u32 << numbers.len().min(8)).all(|mask| {
        let mut tys = given.to_vec();
        for (bit, &i) in numbers.iter().enumerate() {
            if let Some(t) = tys.get_mut(i) {
                *t = if mask & (1 << bit) == 0 {
                    Ty::Int
                } else {
                    Ty::Double
                };
            }
        }
        fits(&tys)
    });
    if ok {
        return None;
    }
    let list = |tys: &[Ty]| tys.iter().map(Ty::a).collect::<Vec<_>>().join(", ");
    Some(match (method, given.split_first()) {
        (true, Some((on, []))) => format!("`.{func}()` does not apply to {}", on.a()),
        (true, Some((on, rest))) => format!(
            "`.{func}()` does not apply to {} with {}",
            on.a(),
            list(rest)
        ),
        _ if given.contains(&Ty::Number) => format!(
            "`{func}()` does not take {} (a `number` input is an integer when the value sent is whole)",
            list(given)
        ),
        _ => format!("`{func}()` does not take {}", list(given)),
    })
}

/// Why a call fails on every call for the values it is given, where its
/// signature cannot say: `join` of a list whose elements are not strings,
/// `math.greatest` and `math.least` of values that are not numbers.
fn refused_elements(func: &str, given: &[Ty]) -> Option<(String, String)> {
    match func {
        "join" => {
            let on = given.first()?;
            let element = match on {
                Ty::Rows(ent, embeds) => Ty::Row(ent.clone(), embeds.clone()),
                Ty::Items(t) => (**t).clone(),
                _ => return None,
            };
            (element.known() && element != Ty::String).then(|| {
                (
                    format!("`.join()` joins strings, not the elements of {}", on.a()),
                    "convert each element first: `.map(x, string(x)).join(', ')`".into(),
                )
            })
        }
        "math.greatest" | "math.least" => {
            let values: Vec<Ty> = match given {
                [one] if one.list() => vec![one.element()],
                many => many.to_vec(),
            };
            let bad = values.iter().find(|t| t.known() && !t.numeric())?;
            Some((
                format!("`{func}()` compares numbers, not {}", bad.a()),
                "give it numbers (ints, uints or doubles), or a list of numbers".into(),
            ))
        }
        _ => None,
    }
}

/// What a function gives, where it does not depend on its arguments.
fn call_type(func: &str) -> Ty {
    match func {
        "size" | "int" | "indexOf" | "lastIndexOf" | "getFullYear" | "getMonth"
        | "getDayOfYear" | "getDayOfMonth" | "getDate" | "getDayOfWeek" | "getHours"
        | "getMinutes" | "getSeconds" | "getMilliseconds" => Ty::Int,
        "uint" => Ty::Uint,
        "double" | "math.sqrt" | "math.ceil" | "math.floor" | "math.round" | "math.trunc" => {
            Ty::Double
        }
        "string" | "charAt" | "lowerAscii" | "upperAscii" | "replace" | "substring" | "trim"
        | "reverse" | "join" | "format" | "strings.quote" => Ty::String,
        "bytes" => Ty::Bytes,
        "timestamp" => Ty::Timestamp,
        "duration" => Ty::Duration,
        "has" | "startsWith" | "endsWith" | "contains" | "matches" | "all" | "exists"
        | "exists_one" | "existsOne" | "bool" | "math.isInf" | "math.isNaN" | "math.isFinite" => {
            Ty::Bool
        }
        "split" | "map" | "filter" | "transformList" => Ty::List,
        "transformMap" => Ty::Map,
        _ => Ty::Dyn,
    }
}

/// The type of `x op y`, or `None` when the operator cannot apply to
/// these (known) types.
fn binary(op: BinaryOp, x: &Ty, y: &Ty) -> Option<Ty> {
    use BinaryOp::*;
    let num = |a: &Ty, b: &Ty| -> Option<Ty> {
        match (a, b) {
            (Ty::Int, Ty::Int) => Some(Ty::Int),
            (Ty::Uint, Ty::Uint) => Some(Ty::Uint),
            // A uint mixes with neither (the interpreter refuses it).
            (Ty::Uint, _) | (_, Ty::Uint) => None,
            (Ty::Double, _) | (_, Ty::Double) => Some(Ty::Double),
            _ => Some(Ty::Number),
        }
    };
    match op {
        Or | And | Eq | Ne | In => Some(Ty::Bool),
        // Some value at run time may fit; the interpreter checks it.
        Lt | Le | Gt | Ge if !x.known() || !y.known() => Some(Ty::Bool),
        _ if !x.known() || !y.known() => Some(Ty::Dyn),
        Lt | Le | Gt | Ge => {
            let ok = (x.numeric() && y.numeric())
                || x == y
                    && matches!(
                        x,
                        Ty::String | Ty::Bytes | Ty::Bool | Ty::Timestamp | Ty::Duration
                    )
                || matches!(
                    (x, y),
                    (Ty::Timestamp, Ty::String) | (Ty::String, Ty::Timestamp)
                );
            ok.then_some(Ty::Bool)
        }
        Add => match (x, y) {
            (a, b) if a.numeric() && b.numeric() => num(a, b),
            (Ty::String, Ty::String) => Some(Ty::String),
            (Ty::Bytes, Ty::Bytes) => Some(Ty::Bytes),
            (a, b) if a.list() && b.list() => Some(Ty::List),
            (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Some(Ty::Timestamp),
            (Ty::Duration, Ty::Duration) => Some(Ty::Duration),
            _ => None,
        },
        Sub => match (x, y) {
            (a, b) if a.numeric() && b.numeric() => num(a, b),
            (Ty::Timestamp, Ty::Duration) => Some(Ty::Timestamp),
            (Ty::Timestamp, Ty::Timestamp) | (Ty::Duration, Ty::Duration) => Some(Ty::Duration),
            _ => None,
        },
        Mul | Div => (x.numeric() && y.numeric()).then(|| num(x, y)).flatten(),
        // (A `number` may be 2.5, which `%` refuses: declare it `integer`.)
        Rem => match (x, y) {
            (Ty::Int, Ty::Int) => Some(Ty::Int),
            (Ty::Uint, Ty::Uint) => Some(Ty::Uint),
            _ => None,
        },
    }
}

fn binary_help(op: BinaryOp, x: &Ty, y: &Ty) -> String {
    match (op, x, y) {
        (BinaryOp::Div, Ty::Duration, _) | (BinaryOp::Mul, Ty::Duration, _) => {
            "durations add and subtract; to divide, convert: `d.getSeconds() / 60`, `int(d.getSeconds()) * 2`".into()
        }
        (BinaryOp::Add, Ty::String, _) | (BinaryOp::Add, _, Ty::String) => {
            "`+` joins two strings: convert the other side with `string()`".into()
        }
        (BinaryOp::Add, Ty::Timestamp, Ty::Timestamp) => {
            "add a duration to a timestamp (`t + duration('1h')`), or subtract two timestamps".into()
        }
        (BinaryOp::Rem, Ty::Number, _) | (BinaryOp::Rem, _, Ty::Number) => {
            "`%` takes integers, and a `number` may have a fraction: declare the input or field `integer`, or convert with `int()`".into()
        }
        (_, Ty::Uint, _) | (_, _, Ty::Uint) => {
            "a uint mixes with no other number: convert with `int()` or `uint()`".into()
        }
        _ => "convert one side (`int()`, `double()`, `string()`, `timestamp()`, `duration()`)"
            .into(),
    }
}

/// Whether a value of type `t` can be written into a column of `field`
/// type (text into a timestamp column is parsed; `null` is the column's
/// own check).
pub(crate) fn fits(field: FieldType, t: &Ty) -> bool {
    match t {
        Ty::Dyn | Ty::Null => true,
        t => match field {
            FieldType::Json => true,
            FieldType::String | FieldType::Uuid | FieldType::Ref => *t == Ty::String,
            // (A `number` may be 2.5: declare the input `integer`.)
            FieldType::Integer => matches!(t, Ty::Int | Ty::Uint),
            FieldType::Number => t.numeric(),
            FieldType::Boolean => *t == Ty::Bool,
            FieldType::Timestamp => matches!(t, Ty::Timestamp | Ty::String),
        },
    }
}

/// Whether a column of `field` type can be compared with a value of type
/// `t` (numbers across int and double, text with timestamps).
pub(crate) fn comparable(field: FieldType, t: &Ty) -> bool {
    match t {
        Ty::Dyn | Ty::Null => true,
        t => match field {
            FieldType::Json => true,
            FieldType::Integer | FieldType::Number => t.numeric(),
            _ => fits(field, t),
        },
    }
}

/// Whether `e` is a negative integer literal (`-1`).
fn negative_literal(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Lit(Lit::Int(n)) => *n < 0,
        ExprKind::Unary(UnaryOp::Neg, x) => {
            matches!(&x.kind, ExprKind::Lit(Lit::Int(n)) if *n > 0)
        }
        _ => false,
    }
}

/// What fails on every call for a literal operand, whatever the other:
/// an integer divided by a literal zero (`%` too), a timestamp compared
/// with text that is not an RFC 3339 timestamp.
fn literal_operand_problem(
    op: BinaryOp,
    a: &Expr,
    b: &Expr,
    x: &Ty,
    y: &Ty,
) -> Option<(String, String)> {
    // (Literals on both sides are evaluated as a constant, where a
    // short-circuit that never reaches them is seen.)
    let zero = matches!(&b.kind, ExprKind::Lit(Lit::Int(0) | Lit::Uint(0)));
    if matches!(op, BinaryOp::Div | BinaryOp::Rem)
        && zero
        && !matches!(&a.kind, ExprKind::Lit(_))
        // (A `number` is an int or a double: by an int zero, an error or
        // an infinity JSON cannot hold.)
        && matches!(x, Ty::Int | Ty::Uint | Ty::Number)
    {
        return Some((
            format!("`{}` by zero fails on every call", op.symbol()),
            "divide by something that is not zero".into(),
        ));
    }
    if op == BinaryOp::Div
        && matches!(&b.kind, ExprKind::Lit(Lit::Double(d)) if *d == 0.0)
        && !matches!(&a.kind, ExprKind::Lit(_))
        && x.numeric()
    {
        return Some((
            "a division by `0.0` gives an infinity or NaN, which JSON cannot hold".into(),
            "divide by something that is not zero".into(),
        ));
    }
    if matches!(
        op,
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
    ) {
        for (lit, other) in [(a, y), (b, x)] {
            if *other == Ty::Timestamp
                && let ExprKind::Lit(Lit::String(text)) = &lit.kind
                && crate::expr::value::parse_timestamp(text).is_none()
            {
                return Some((
                    format!(
                        "`'{text}'` is compared with a timestamp, and it is not an RFC 3339 timestamp"
                    ),
                    "write the full timestamp (`'2026-01-01T00:00:00Z'`)".into(),
                ));
            }
        }
    }
    None
}

/// Why `f.format(list)` fails on every call, where the format is a
/// literal and the arguments a literal list: fewer arguments than clauses,
/// or a clause that does not format its argument's type (as the
/// interpreter's `format` decides).
fn format_problem(
    f: &Expr,
    list: &Expr,
    scope: &Scope,
    locals: &[String],
    vars: &[Var<'_>],
) -> Option<(String, String)> {
    let (ExprKind::Lit(Lit::String(text)), ExprKind::List(items)) = (&f.kind, &list.kind) else {
        return None;
    };
    let mut verbs = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek() == Some(&'.') {
            chars.next();
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        }
        match chars.next() {
            Some('%') => {}
            Some(v) => verbs.push(v),
            // (A `%` at the end: the constant check evaluates it.)
            None => return None,
        }
    }
    if verbs.len() > items.len() {
        return Some((
            format!(
                "the format has {} clauses and the list {} arguments",
                verbs.len(),
                items.len()
            ),
            "give one argument per clause (`%%` writes a `%`)".into(),
        ));
    }
    for (verb, item) in verbs.iter().zip(items) {
        let t = infer_at(item, scope, &mut Vec::new(), locals, &[], vars);
        if !t.known() {
            continue;
        }
        let ok = match verb {
            's' => true,
            // (A `number` may have a fraction, which `%d` refuses.)
            'd' => matches!(t, Ty::Int | Ty::Uint),
            'f' | 'e' => t.numeric(),
            'x' | 'X' => matches!(t, Ty::Int | Ty::Uint | Ty::String | Ty::Bytes),
            'o' => matches!(t, Ty::Int | Ty::Uint),
            'b' => matches!(t, Ty::Int | Ty::Uint | Ty::Bool),
            _ => false,
        };
        if !ok {
            return Some((
                format!("`%{verb}` does not format {}", t.a()),
                "use `%s`, or convert the argument".into(),
            ));
        }
    }
    None
}

/// The types an expression may give: each branch of a `?:` (at any
/// depth), else its own.
pub(crate) fn branch_types(e: &Expr, scope: &Scope) -> Vec<Ty> {
    match &e.kind {
        ExprKind::Cond(_, a, b) => {
            let mut out = branch_types(a, scope);
            out.extend(branch_types(b, scope));
            out
        }
        // A `let` value: the branches of the expression it holds.
        ExprKind::Member(inner, field)
            if let ExprKind::Ident(root) = &inner.kind
                && let Some((x, at)) = scope.let_expr(root, field) =>
        {
            branch_types(x, &at)
        }
        _ => vec![infer(e, scope, &mut Vec::new())],
    }
}
