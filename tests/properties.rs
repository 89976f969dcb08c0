//! Laws: the loader and risk engine never panic, on arbitrary JSON or on
//! arbitrary mutations of the examples; whatever the schema rejects, the
//! loader rejects too; reports are deterministic; expressions print and
//! parse back to themselves.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sinew_core::{expr, risk, spec};
use sinew_tests::{root, specs_in};
use std::sync::OnceLock;

/// Keys and words of the format, so that random documents reach deep into
/// the decoder instead of failing at the first key.
const WORDS: &[&str] = &[
    "sinew",
    "name",
    "roles",
    "entities",
    "externals",
    "tools",
    "policies",
    "acknowledgments",
    "fields",
    "type",
    "owner",
    "status",
    "invariants",
    "trigger",
    "http",
    "method",
    "path",
    "flow",
    "entry",
    "nodes",
    "next",
    "onError",
    "read",
    "create",
    "update",
    "call",
    "transaction",
    "body",
    "return",
    "fail",
    "if",
    "then",
    "else",
    "where",
    "values",
    "set",
    "limit",
    "one",
    "entity",
    "external",
    "operation",
    "compensate",
    "retry",
    "max",
    "value",
    "switch",
    "cases",
    "when",
    "default",
    "0.1",
    "POST",
    "/x",
    "a",
    "b",
    "input.x",
    "a.b + 1",
    "kind",
    "payment",
    "operations",
    "auth",
    "idempotencyKey",
    "let",
    "assert",
    "that",
    "delete",
    "sql",
    "statement",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => "[a-z_./{}() +'-]{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn examples() -> &'static Vec<Value> {
    static E: OnceLock<Vec<Value>> = OnceLock::new();
    E.get_or_init(|| {
        specs_in("specs/examples")
            .into_iter()
            .chain(specs_in("specs/unsafe"))
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    })
}

fn schema() -> &'static jsonschema::Validator {
    static S: OnceLock<jsonschema::Validator> = OnceLock::new();
    S.get_or_init(|| {
        let text = std::fs::read_to_string(root().join("specs/schema/spec.schema.json")).unwrap();
        jsonschema::draft202012::new(&serde_json::from_str(&text).unwrap()).unwrap()
    })
}

/// All JSON Pointers of a value.
fn pointers(v: &Value, base: String, out: &mut Vec<String>) {
    out.push(base.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    format!("{base}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{base}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    AddKey(String, Value),
    RenameKey(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Remove),
        json_value().prop_map(Mutation::Replace),
        (word(), json_value()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
        word().prop_map(Mutation::RenameKey),
    ]
}

fn mutate(doc: &mut Value, pick: prop::sample::Index, m: &Mutation) {
    let mut ps = Vec::new();
    pointers(doc, String::new(), &mut ps);
    let p = pick.get(&ps).clone();
    let (parent, key) = match p.rsplit_once('/') {
        Some((a, b)) => (a.to_string(), b.replace("~1", "/").replace("~0", "~")),
        None => (String::new(), String::new()),
    };
    match m {
        Mutation::Replace(v) => {
            if let Some(slot) = doc.pointer_mut(&p) {
                *slot = v.clone();
            }
        }
        Mutation::AddKey(k, v) => {
            if let Some(Value::Object(o)) = doc.pointer_mut(&p) {
                o.insert(k.clone(), v.clone());
            }
        }
        Mutation::Remove | Mutation::RenameKey(_) => match doc.pointer_mut(&parent) {
            Some(Value::Object(o)) => {
                if let Some(v) = o.shift_remove(&key)
                    && let Mutation::RenameKey(new) = m
                {
                    o.insert(new.clone(), v);
                }
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = key.parse::<usize>()
                    && i < a.len()
                {
                    a.remove(i);
                }
            }
            _ => {}
        },
    }
}

/// 256 cases (or `PROPTEST_CASES`). Random seeds find new cases on
/// every local run (a failure is kept in `properties.proptest-regressions`);
/// under CI (`CI` set) the seed is fixed, so a run CI passed passes again
/// (or `PROPTEST_RNG_SEED` chooses one).
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let rng_seed = match default.rng_seed {
        prop::test_runner::RngSeed::Random if std::env::var_os("CI").is_some() => {
            prop::test_runner::RngSeed::Fixed(0x5113_e5ed)
        }
        seed => seed,
    };
    ProptestConfig {
        cases,
        rng_seed,
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let text = serde_json::to_string(&v).unwrap();
        let report = risk::check(&text);
        // `invalid` exactly when there are spec errors.
        prop_assert_eq!(report.level == risk::Level::Invalid, !report.errors.is_empty());
        let _ = risk::fix(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = risk::check(&s);
        let _ = spec::load_bytes(s.as_bytes());
    }

    #[test]
    fn mutated_examples_never_panic_and_agree_with_the_schema(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..4),
    ) {
        let mut doc = which.get(examples()).clone();
        for (pick, m) in &mutations {
            mutate(&mut doc, *pick, m);
        }
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let report = risk::check(&text);
        let fixed = risk::fix(&text);
        prop_assert!(fixed.report.level <= report.level.max(risk::Level::Green) || report.level == risk::Level::Invalid);
        // Whatever the schema rejects, the loader rejects.
        if !schema().is_valid(&doc) {
            let errors: Vec<String> = schema().iter_errors(&doc).map(|e| format!("{e} at {}", e.instance_path())).take(3).collect();
            prop_assert!(!report.errors.is_empty(), "the loader accepts what the schema rejects: {:?}", errors);
        }
        // Deterministic.
        prop_assert_eq!(report.to_json(), risk::check(&text).to_json());
    }
}

/// Random expressions: print, parse, print again gives the same text.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        "[a-z][a-z0-9_]{0,6}".prop_filter("keyword", |s| !matches!(
            s.as_str(),
            "in" | "true" | "false" | "null"
        )),
        any::<i32>().prop_map(|i| i.to_string()),
        "[a-z ]{0,5}".prop_map(|s| format!("'{s}'")),
        Just("true".to_string()),
        Just("null".to_string()),
    ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(
                    &[
                        "+", "-", "*", "/", "%", "==", "!=", "<", ">=", "&&", "||", "in"
                    ][..]
                ),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("!({a})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            (inner.clone(), "[a-z]{1,5}").prop_map(|(a, f)| format!("({a}).{f}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| format!("size([{}])", v.join(", "))),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn expressions_print_and_parse_back(src in expression()) {
        if let Ok(e) = expr::parse(&src) {
            let printed = e.to_string();
            let again = expr::parse(&printed).unwrap_or_else(|err| panic!("`{printed}` does not parse: {err}"));
            prop_assert_eq!(printed, again.to_string());
        }
    }
}
