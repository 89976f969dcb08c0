//! CEL's own conformance suite (`tests/cel-spec/`, from google/cel-spec) on
//! sinew's expression language.
//!
//! Every test of the vendored files is parsed and evaluated with the
//! interpreter's `expr::parse` and `expr::eval` (variables from the test's
//! `bindings`), and its result compared with the expected value, error or
//! `true`. Two lists keep the count honest:
//! - `excluded.txt`: tests that need what the spec format has no type for
//!   (protobuf messages, wrappers, enums, declarations for the type
//!   checker), one `file/section[/test]` per line, a tab, the reason;
//! - `failing.txt`: the tests sinew does not pass yet.
//!
//! The test fails when a test outside both lists fails (a regression), and
//! when a test in `failing.txt` passes (take it out of the list: the count
//! only goes up). `SINEW_CEL_WRITE=1` rewrites `failing.txt` from the run.
//! It prints the counts per file, which the README quotes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sinew_core::expr::{self, Env, Value};
use sinew_tests::root;
use sinew_tests::textproto::{self, Text};

/// The files run, in the order the README lists them.
const FILES: &[&str] = &[
    "basic",
    "comparisons",
    "conversions",
    "integer_math",
    "fp_math",
    "lists",
    "logic",
    "macros",
    "macros2",
    "string",
    "string_ext",
    "math_ext",
    "timestamps",
    "parse",
];

/// What a test expects.
#[derive(Debug)]
enum Expect {
    Value(Value),
    Error,
    /// A value sinew has no type for (a type, a message, an enum).
    Unrepresentable(String),
}

/// One test, ready to run.
struct Case {
    name: String,
    expr: String,
    bindings: Vec<(String, Result<Value, String>)>,
    expect: Expect,
}

struct Bindings<'a>(&'a [(String, Value)]);

impl Env for Bindings<'_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The value a `google.api.expr.Value` message stands for.
fn value(t: &Text) -> Result<Value, String> {
    let Text::Msg(fields) = t else {
        return Err("not a message".into());
    };
    let Some((kind, v)) = fields.first() else {
        return Err("an empty value".into());
    };
    let word = |v: &Text| match v {
        Text::Word(w) => Ok(w.clone()),
        Text::Str(s) => Ok(String::from_utf8_lossy(s).into_owned()),
        Text::Msg(_) => Err("a message where a scalar was expected".to_string()),
    };
    Ok(match kind.as_str() {
        "null_value" => Value::Null,
        "bool_value" => Value::Bool(word(v)? == "true"),
        "int64_value" => Value::Int(word(v)?.parse().map_err(|e| format!("{e}"))?),
        "double_value" => {
            let w = word(v)?;
            Value::Double(match w.as_str() {
                "inf" | "infinity" | "Infinity" => f64::INFINITY,
                "-inf" | "-infinity" | "-Infinity" => f64::NEG_INFINITY,
                "nan" | "NaN" => f64::NAN,
                _ => w.parse().map_err(|e| format!("{w}: {e}"))?,
            })
        }
        "string_value" => match v {
            Text::Str(b) => {
                Value::String(String::from_utf8(b.clone()).map_err(|_| "invalid UTF-8")?)
            }
            other => Value::String(word(other)?),
        },
        "list_value" => Value::List(v.all("values").map(value).collect::<Result<_, _>>()?),
        "map_value" => {
            let mut m = expr::value::Map::default();
            for e in v.all("entries") {
                let k = e.get("key").ok_or("an entry without key")?;
                let Value::String(k) = value(k)? else {
                    return Err("a map with keys that are not strings".into());
                };
                m.insert(k, value(e.get("value").ok_or("an entry without value")?)?);
            }
            Value::Map(m)
        }
        "object_value" => {
            let Text::Msg(any) = v else {
                return Err("an object that is not a message".into());
            };
            let Some((ty, body)) = any.first() else {
                return Err("an empty object".into());
            };
            let num = |f: &str| {
                body.str(f)
                    .map(|s| s.parse::<i64>().unwrap_or(0))
                    .unwrap_or(0)
            };
            match ty.as_str() {
                "[type.googleapis.com/google.protobuf.Duration]" => {
                    Value::Duration(num("seconds") * 1_000_000 + num("nanos") / 1000)
                }
                "[type.googleapis.com/google.protobuf.Timestamp]" => {
                    Value::Timestamp(num("seconds") * 1_000_000 + num("nanos") / 1000)
                }
                other => return Err(format!("a message {other}")),
            }
        }
        "uint64_value" => Value::Uint(word(v)?.parse().map_err(|e| format!("{e}"))?),
        "bytes_value" => match v {
            Text::Str(b) => Value::Bytes(b.clone()),
            other => Value::Bytes(word(other)?.into_bytes()),
        },
        "type_value" => {
            let name = word(v)?;
            expr::value::type_named(&name).ok_or(format!("the type {name}"))?
        }
        "enum_value" => return Err("an enum".into()),
        other => return Err(format!("a value of kind {other}")),
    })
}

fn cases(file: &str) -> Vec<Case> {
    let path = root().join(format!("tests/cel-spec/{file}.textproto"));
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = textproto::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut out = Vec::new();
    for section in doc.all("section") {
        let sname = section.str("name").unwrap_or_default();
        for test in section.all("test") {
            let tname = test.str("name").unwrap_or_default();
            let bindings = test
                .all("bindings")
                .map(|b| {
                    let k = b.str("key").unwrap_or_default();
                    let v = b
                        .get("value")
                        .and_then(|v| v.get("value"))
                        .ok_or_else(|| "a binding that is not a value".to_string())
                        .and_then(value);
                    (k, v)
                })
                .collect();
            let expect = if let Some(v) = test.get("value") {
                match value(v) {
                    Ok(v) => Expect::Value(v),
                    Err(why) => Expect::Unrepresentable(why),
                }
            } else if test.get("eval_error").is_some() || test.get("any_eval_errors").is_some() {
                Expect::Error
            } else if test.get("typed_result").is_some() {
                match test
                    .get("typed_result")
                    .and_then(|r| r.get("result"))
                    .map(value)
                {
                    Some(Ok(v)) => Expect::Value(v),
                    Some(Err(why)) => Expect::Unrepresentable(why),
                    None => Expect::Unrepresentable("a type check only".into()),
                }
            } else if test.get("unknown").is_some() || test.get("any_unknowns").is_some() {
                Expect::Unrepresentable("unknown values".into())
            } else {
                Expect::Value(Value::Bool(true))
            };
            out.push(Case {
                name: format!("{file}/{sname}/{tname}"),
                expr: test.str("expr").unwrap_or_default(),
                bindings,
                expect,
            });
        }
    }
    out
}

/// CEL's equality of results: same type and value (NaN equals NaN here,
/// so that an expected NaN can be checked).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Runs one case: `Ok` when it passes, else why not.
fn run(case: &Case) -> Result<(), String> {
    let mut env = Vec::new();
    for (k, v) in &case.bindings {
        match v {
            Ok(v) => env.push((k.clone(), v.clone())),
            Err(why) => return Err(format!("binding `{k}` is {why}")),
        }
    }
    if let Expect::Unrepresentable(why) = &case.expect {
        return Err(format!("expects {why}"));
    }
    let parsed = expr::parse(&case.expr).map_err(|e| format!("does not parse: {e}"));
    let got = parsed
        .and_then(|e| expr::eval(&e, &Bindings(&env)).map_err(|e| format!("error: {}", e.message)));
    match (&case.expect, got) {
        (Expect::Value(want), Ok(got)) if same(want, &got) => Ok(()),
        (Expect::Value(want), Ok(got)) => Err(format!("gave {got:?}, not {want:?}")),
        (Expect::Value(want), Err(e)) => Err(format!("{e}, not {want:?}")),
        (Expect::Error, Err(_)) => Ok(()),
        (Expect::Error, Ok(got)) => Err(format!("gave {got:?}, not an error")),
        (Expect::Unrepresentable(_), _) => unreachable!(),
    }
}

/// `file/section[/test]` → reason.
fn excluded() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("tests/cel-spec/excluded.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, why) = l.split_once('\t').unwrap_or((l, ""));
            (name.to_string(), why.trim().to_string())
        })
        .collect()
}

fn is_excluded<'a>(name: &str, list: &'a [(String, String)]) -> Option<&'a str> {
    list.iter()
        .find(|(p, _)| name == p || name.starts_with(&format!("{p}/")))
        .map(|(_, why)| why.as_str())
}

#[test]
fn cel_conformance_suite() {
    let excluded = excluded();
    let failing_path = root().join("tests/cel-spec/failing.txt");
    let known: Vec<String> = std::fs::read_to_string(&failing_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect();
    let mut counts: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    let mut now_failing = Vec::new();
    let mut regressions = Vec::new();
    let mut fixed = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (fi, file) in FILES.iter().enumerate() {
        for mut case in cases(file) {
            // The suite names a few tests twice: the second is `name#2`.
            let mut k = 2;
            let base = case.name.clone();
            while !seen.insert(case.name.clone()) {
                case.name = format!("{base}#{k}");
                k += 1;
            }
            let c = counts.entry(fi).or_default();
            if is_excluded(&case.name, &excluded).is_some() {
                c.2 += 1;
                continue;
            }
            let listed = known.contains(&case.name);
            match run(&case) {
                Ok(()) => {
                    c.0 += 1;
                    if listed {
                        fixed.push(case.name.clone());
                    }
                }
                Err(why) => {
                    c.1 += 1;
                    now_failing.push(format!("{}\t{}", case.name, why.replace('\n', " ")));
                    if !listed {
                        regressions.push(format!("{}: `{}` {why}", case.name, case.expr));
                    }
                }
            }
        }
    }
    for pattern in excluded.iter().map(|(p, _)| p) {
        assert!(
            seen.iter()
                .any(|n| n == pattern || n.starts_with(&format!("{pattern}/"))),
            "excluded.txt names `{pattern}`, which is no test"
        );
    }
    let mut table = String::from(
        "| file | pass | fail | excluded | pass % of the rest |\n|---|---:|---:|---:|---:|\n",
    );
    let (mut tp, mut tf, mut tx) = (0, 0, 0);
    for (fi, (p, f, x)) in &counts {
        let pct = 100.0 * *p as f64 / ((*p + *f).max(1)) as f64;
        let _ = writeln!(table, "| `{}` | {p} | {f} | {x} | {pct:.0}% |", FILES[*fi]);
        (tp, tf, tx) = (tp + p, tf + f, tx + x);
    }
    let pct = 100.0 * tp as f64 / ((tp + tf).max(1)) as f64;
    let _ = writeln!(table, "| all | {tp} | {tf} | {tx} | {pct:.0}% |");
    println!("{table}");
    if std::env::var_os("SINEW_CEL_WRITE").is_some() {
        let mut text = String::from(
            "# CEL conformance tests sinew does not pass yet, with what happened\n# (rewritten by SINEW_CEL_WRITE=1 cargo test -p sinew-tests --test cel_conformance)\n",
        );
        for l in &now_failing {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&failing_path, text).unwrap();
        return;
    }
    assert!(
        regressions.is_empty(),
        "{} conformance tests fail that passed before (not in failing.txt):\n{}",
        regressions.len(),
        regressions.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{} tests in failing.txt pass now: take them out of the list (SINEW_CEL_WRITE=1):\n{}",
        fixed.len(),
        fixed.join("\n")
    );
}

/// The same expressions in the component: every test without bindings
/// becomes a tool returning `{"v": <expr>}` of one spec, run by the native
/// engine and by the component in wasmtime; their responses (values, or
/// the same `spec_error`) must be byte-identical. With the native run
/// checked against the suite above, the component passes the same tests.
#[test]
fn the_component_evaluates_the_suite_as_the_native_core_does() {
    use sinew_tests::scenario::{Native, Scenario, Wasm, trace};
    let excluded = excluded();
    let mut exprs = Vec::new();
    for file in FILES {
        for case in cases(file) {
            if case.bindings.is_empty() && is_excluded(&case.name, &excluded).is_none() {
                exprs.push(case.expr);
            }
        }
    }
    let tool = |i: usize, e: &str| {
        serde_json::json!({
            "trigger": {"http": {"method": "POST", "path": format!("/t{i}")}},
            "auth": {"public": true},
            "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": {"v": e}}}}
        })
    };
    // Keep the expressions the loader accepts (some are parse or scope
    // errors by design: those are checked natively above).
    let mut tools = serde_json::Map::new();
    for (i, e) in exprs.iter().enumerate() {
        tools.insert(format!("t{i}"), tool(i, e));
    }
    let spec_of = |tools: &serde_json::Map<String, serde_json::Value>| serde_json::json!({"sinew": "0.2", "name": "cel", "tools": tools});
    loop {
        let text = serde_json::to_string(&spec_of(&tools)).unwrap();
        let loaded = sinew_core::spec::load(&text);
        if loaded.errors.is_empty() {
            break;
        }
        let before = tools.len();
        for d in &loaded.errors {
            tools.remove(d.path.split('/').nth(2).unwrap_or_default());
        }
        assert!(
            tools.len() < before,
            "errors outside the tools: {:?}",
            loaded.errors
        );
    }
    assert!(
        tools.len() > 1000,
        "only {} expressions load as a spec",
        tools.len()
    );
    let requests: Vec<serde_json::Value> = tools
        .keys()
        .map(|t| serde_json::json!({"tool": t, "expect": {}}))
        .collect();
    let sc = Scenario::from_json(
        std::path::Path::new("cel"),
        &serde_json::json!({"spec": spec_of(&tools), "requests": requests}),
    )
    .unwrap();
    let native = trace(&sc, &mut Native::default()).unwrap();
    let component = trace(&sc, &mut Wasm::new(Wasm::engine())).unwrap();
    assert_eq!(native.responses.len(), tools.len());
    let mut differ = Vec::new();
    for ((name, a), b) in tools
        .keys()
        .zip(&native.responses)
        .zip(&component.responses)
    {
        if (a.status, &a.body) != (b.status, &b.body) {
            differ.push(format!(
                "{name}: native {} {}, component {} {}",
                a.status, a.body, b.status, b.body
            ));
        }
    }
    println!(
        "{} expressions evaluated alike natively and in the component",
        tools.len()
    );
    assert!(
        differ.is_empty(),
        "{} expressions differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
