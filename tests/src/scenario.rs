//! The scenario corpus runner (`tests/scenarios/README.md`): one runner,
//! every engine. An engine is a [`Target`]: the native interpreter with the
//! in-memory store here; the component and the Postgres host plug in the
//! same way.

use serde_json::{Map, Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, Response};
use sinew_core::expr::value::parse_timestamp;
use sinew_core::ports::Row;
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;
use sinew_core::ports::world::World;
use std::path::{Path, PathBuf};

use crate::root;

/// One scenario file, read.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where it came from.
    pub path: PathBuf,
    /// The spec's text.
    pub spec: String,
    /// The first request's time, ms since the epoch.
    pub clock_ms: i64,
    /// Seed rows per entity, as given (targets complete them with
    /// [`Bundle::complete_row`]).
    pub seed: Vec<(String, Vec<Row>)>,
    /// Scripted external answers.
    pub externals: Value,
    /// The requests with their times and expectations.
    pub requests: Vec<(Request, i64, Value)>,
    /// Expectations on the end state.
    pub expect: Value,
    /// The spec's entities, in spec order.
    pub entities: Vec<String>,
}

/// What a run produced: compared byte for byte across engines.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Every response.
    pub responses: Vec<Response>,
    /// Every entity's rows at the end, id order.
    pub state: Value,
    /// Every audit entry at the end, in order.
    pub audit: Vec<Value>,
}

/// An engine the corpus can run on.
pub trait Target {
    /// Starts fresh: loads the spec, seeds the rows, scripts the externals.
    fn start(&mut self, scenario: &Scenario) -> Result<(), String>;
    /// Sends one request at time `at_ms`.
    fn send(&mut self, request: &Request, at_ms: i64) -> Result<Response, String>;
    /// The committed rows of an entity (soft-deleted included), id order.
    fn rows(&mut self, entity: &str) -> Result<Vec<Row>, String>;
    /// Every audit entry, in order.
    fn audit(&mut self) -> Result<Vec<Value>, String>;
}

fn ms(text: &str) -> Result<i64, String> {
    parse_timestamp(text)
        .map(|us| us / 1000)
        .ok_or_else(|| format!("`{text}` is not an RFC 3339 time"))
}

impl Scenario {
    /// Reads a scenario file.
    pub fn read(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::from_json(path, &v)
    }

    /// Reads a scenario from its JSON.
    pub fn from_json(path: &Path, v: &Value) -> Result<Scenario, String> {
        let spec = match v.get("spec") {
            Some(Value::String(name)) => {
                std::fs::read_to_string(root().join("specs/examples").join(format!("{name}.json")))
                    .map_err(|e| format!("spec `{name}`: {e}"))?
            }
            Some(obj @ Value::Object(_)) => serde_json::to_string_pretty(obj).unwrap_or_default(),
            _ => return Err("`spec` must name an example or be a spec object".into()),
        };
        let clock_ms = ms(v
            .get("clock")
            .and_then(Value::as_str)
            .unwrap_or("2026-01-01T00:00:00Z"))?;
        let mut seed = Vec::new();
        if let Some(Value::Object(entities)) = v.get("seed") {
            for (entity, rows) in entities {
                let mut out = Vec::new();
                for row in rows.as_array().into_iter().flatten() {
                    let Value::Object(given) = row else {
                        return Err(format!("seed {entity}: a row is not an object"));
                    };
                    out.push(given.clone());
                }
                seed.push((entity.clone(), out));
            }
        }
        let mut requests = Vec::new();
        let mut at = clock_ms;
        for (i, r) in v
            .get("requests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(t) = r.get("at").and_then(Value::as_str) {
                at = ms(t)?;
            } else if i > 0 {
                at += 1000;
            }
            let auth = match r.get("auth") {
                None | Some(Value::Null) => None,
                Some(a) => Some(Auth {
                    sub: a
                        .get("sub")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    roles: a
                        .get("roles")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                    claims: a.get("claims").cloned().unwrap_or(json!({})),
                }),
            };
            let request = Request {
                tool: r
                    .get("tool")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("request {}: no tool", i + 1))?
                    .to_string(),
                input: r.get("input").cloned().unwrap_or(json!({})),
                auth,
                id: r
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("req-{}", i + 1), String::from),
                idempotency_key: r
                    .get("idempotencyKey")
                    .and_then(Value::as_str)
                    .map(String::from),
                scheduled: r.get("scheduled").and_then(Value::as_str).map(String::from),
            };
            requests.push((request, at, r.get("expect").cloned().unwrap_or(json!({}))));
        }
        Ok(Scenario {
            path: path.to_path_buf(),
            clock_ms,
            seed,
            externals: v.get("externals").cloned().unwrap_or(json!({})),
            requests,
            expect: v.get("expect").cloned().unwrap_or(json!({})),
            entities: sinew_core::spec::load(&spec)
                .spec
                .entities
                .keys()
                .cloned()
                .collect(),
            spec,
        })
    }
}

/// Whether `actual` matches `expected` (README "Matching"); `Err` says
/// where not.
pub fn matches(expected: &Value, actual: Option<&Value>, at: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "$any" => Ok(()),
        (Value::String(s), a) if s == "$absent" => match a {
            None | Some(Value::Null) => Ok(()),
            Some(v) => Err(format!("{at}: expected nothing, found {v}")),
        },
        (Value::String(s), Some(Value::String(a))) if s == "$uuid" => {
            if a.len() == 36 && a.chars().filter(|c| *c == '-').count() == 4 {
                Ok(())
            } else {
                Err(format!("{at}: expected a UUID, found {a}"))
            }
        }
        (Value::Object(e), Some(Value::Object(a))) => {
            for (k, v) in e {
                matches(v, a.get(k), &format!("{at}/{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Some(Value::Array(a))) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{at}: expected {} items, found {}: {}",
                    e.len(),
                    a.len(),
                    Value::Array(a.clone())
                ));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                matches(x, Some(y), &format!("{at}/{i}"))?;
            }
            Ok(())
        }
        (Value::Number(x), Some(Value::Number(y))) if x.as_f64() == y.as_f64() => Ok(()),
        (e, Some(a)) if e == a => Ok(()),
        (e, a) => Err(format!(
            "{at}: expected {e}, found {}",
            a.map_or("nothing".to_string(), ToString::to_string)
        )),
    }
}

/// Each expected row matches a distinct actual row, and the counts agree.
fn matches_rows(expected: &[Value], actual: &[Row], entity: &str) -> Result<(), String> {
    if expected.len() != actual.len() {
        let rows: Vec<Value> = actual.iter().map(|r| Value::Object(r.clone())).collect();
        return Err(format!(
            "{entity}: expected {} rows, found {}: {}",
            expected.len(),
            actual.len(),
            Value::Array(rows)
        ));
    }
    // Small inputs: backtracking assignment.
    fn assign(e: &[Value], a: &[Row], used: &mut Vec<bool>, i: usize) -> bool {
        let Some(want) = e.get(i) else { return true };
        for j in 0..a.len() {
            if used[j] {
                continue;
            }
            let row = Value::Object(a[j].clone());
            if matches(want, Some(&row), "").is_ok() {
                used[j] = true;
                if assign(e, a, used, i + 1) {
                    return true;
                }
                used[j] = false;
            }
        }
        false
    }
    let mut used = vec![false; actual.len()];
    if assign(expected, actual, &mut used, 0) {
        return Ok(());
    }
    // Say which expected row found no partner.
    for want in expected {
        if !actual
            .iter()
            .any(|r| matches(want, Some(&Value::Object(r.clone())), "").is_ok())
        {
            let near: Vec<String> = actual
                .iter()
                .filter_map(|r| matches(want, Some(&Value::Object(r.clone())), "").err())
                .take(3)
                .collect();
            return Err(format!(
                "{entity}: no row matches {want} ({})",
                near.join("; ")
            ));
        }
    }
    Err(format!(
        "{entity}: the rows match only with some row used twice"
    ))
}

/// Runs a scenario on a target and checks every expectation.
pub fn run(scenario: &Scenario, target: &mut dyn Target) -> Result<Trace, String> {
    let (trace, problems) = run_inner(scenario, target)?;
    if problems.is_empty() {
        Ok(trace)
    } else {
        Err(problems.join("\n"))
    }
}

/// Runs a scenario without checking its expectations (for comparing
/// engines and runs).
pub fn trace(scenario: &Scenario, target: &mut dyn Target) -> Result<Trace, String> {
    run_inner(scenario, target).map(|(t, _)| t)
}

fn run_inner(scenario: &Scenario, target: &mut dyn Target) -> Result<(Trace, Vec<String>), String> {
    target.start(scenario)?;
    let mut responses = Vec::new();
    let mut problems = Vec::new();
    for (i, (request, at, expect)) in scenario.requests.iter().enumerate() {
        let response = target.send(request, *at)?;
        let here = format!("request {} ({})", i + 1, request.tool);
        if let Some(s) = expect.get("status")
            && *s != json!(response.status)
        {
            problems.push(format!(
                "{here}: status {} instead of {s}: {}",
                response.status, response.body
            ));
        }
        if let Some(code) = expect.get("code")
            && response.body.get("code") != Some(code)
        {
            problems.push(format!(
                "{here}: code {} instead of {code}: {}",
                response.body.get("code").unwrap_or(&Value::Null),
                response.body
            ));
        }
        if let Some(body) = expect.get("body")
            && let Err(e) = matches(body, Some(&response.body), "body")
        {
            problems.push(format!("{here}: {e}"));
        }
        if let Some(audit) = expect.get("audit")
            && let Err(e) = matches(audit, Some(&response.audit), "audit")
        {
            problems.push(format!("{here}: {e}"));
        }
        // Postgres cannot hold a NUL character in `jsonb`: no entry may
        // carry one (the log must stay queryable as JSON).
        if response.audit.to_string().contains("\\u0000") {
            problems.push(format!("{here}: the audit entry holds a NUL character"));
        }
        responses.push(response);
    }
    let mut state = Map::new();
    for entity in &scenario.entities {
        let rows = target.rows(entity)?;
        if let Some(Value::Array(expected)) =
            scenario.expect.get("state").and_then(|s| s.get(entity))
            && let Err(e) = matches_rows(expected, &rows, entity)
        {
            problems.push(format!("state: {e}"));
        }
        state.insert(
            entity.clone(),
            Value::Array(rows.into_iter().map(Value::Object).collect()),
        );
    }
    if let Some(Value::Object(s)) = scenario.expect.get("state") {
        for entity in s.keys() {
            if !state.contains_key(entity) {
                problems.push(format!("state: the spec has no entity `{entity}`"));
            }
        }
    }
    let audit = target.audit()?;
    let finals: Vec<&Value> = audit
        .iter()
        .filter(|e| e.get("kind") == Some(&json!("final")))
        .collect();
    if finals.len() != scenario.requests.len() {
        problems.push(format!(
            "audit: {} final entries for {} requests",
            finals.len(),
            scenario.requests.len()
        ));
    }
    if let Some(a) = scenario.expect.get("audit") {
        if let Some(n) = a.get("count")
            && *n != json!(finals.len())
        {
            problems.push(format!(
                "audit: {} final entries, expected {n}",
                finals.len()
            ));
        }
        if let Some(Value::Array(entries)) = a.get("entries") {
            let actual: Vec<Value> = finals.iter().map(|v| (*v).clone()).collect();
            if let Err(e) = matches(
                &Value::Array(entries.clone()),
                Some(&Value::Array(actual)),
                "audit",
            ) {
                problems.push(e);
            }
        }
    }
    Ok((
        Trace {
            responses,
            state: Value::Object(state),
            audit,
        },
        problems,
    ))
}

/// Every scenario file, by name.
pub fn corpus() -> Vec<PathBuf> {
    crate::specs_in("tests/scenarios")
}

/// A fresh in-memory store for a scenario: unique and timestamp fields
/// declared, seed rows completed and inserted.
pub fn seeded_store(bundle: &Bundle, scenario: &Scenario) -> Result<MemoryStorage, String> {
    let mut storage = MemoryStorage::default();
    storage.declare(&bundle.spec);
    for (entity, rows) in &scenario.seed {
        for row in rows {
            let row = bundle
                .complete_row(entity, row, scenario.clock_ms)
                .map_err(|e| format!("seed: {e}"))?;
            storage
                .seed(entity, row)
                .map_err(|e| format!("seed: {e}"))?;
        }
    }
    Ok(storage)
}

/// The native engine: the interpreter in this process, the in-memory store,
/// a fixed clock, scripted externals.
#[derive(Default)]
pub struct Native {
    bundle: Option<Bundle>,
    storage: MemoryStorage,
    clock: FixedClock,
    external: ScriptedExternal,
}

impl Native {
    /// The store, for inspection.
    pub fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    /// The whole world as JSON, in the form of `sinew run --state` (see
    /// [`World::to_json`]): the committed storage and the externals' script
    /// and counters.
    pub fn state(&self) -> Value {
        World {
            storage: self.storage.clone(),
            external: self.external.clone(),
        }
        .to_json()
    }
}

impl Target for Native {
    fn start(&mut self, scenario: &Scenario) -> Result<(), String> {
        let bundle =
            Bundle::load(&scenario.spec).map_err(|e| format!("the spec does not load: {e}"))?;
        let storage = seeded_store(&bundle, scenario)?;
        self.storage = storage;
        self.clock = FixedClock::new(scenario.clock_ms);
        self.external = ScriptedExternal::from_json(&scenario.externals)?;
        self.bundle = Some(bundle);
        Ok(())
    }

    fn send(&mut self, request: &Request, at_ms: i64) -> Result<Response, String> {
        let bundle = self.bundle.as_ref().ok_or("not started")?;
        self.clock.set(at_ms);
        Ok(sinew_core::contract::execute(
            bundle,
            request,
            &mut self.storage,
            &mut self.clock,
            &mut self.external,
        ))
    }

    fn rows(&mut self, entity: &str) -> Result<Vec<Row>, String> {
        Ok(self.storage.rows(entity))
    }

    fn audit(&mut self) -> Result<Vec<Value>, String> {
        Ok(self.storage.audit())
    }
}

/// The component engine: the core's WebAssembly component in wasmtime
/// (through the host's runtime), on the same in-memory store, clock and
/// scripted externals as [`Native`].
pub struct Wasm {
    engine: std::sync::Arc<sinew_host::runtime::Engine>,
    rt: tokio::runtime::Runtime,
    executor: Option<sinew_host::runtime::Executor>,
    storage: sinew_host::runtime::storage::MemoryBackend,
    clock: std::sync::Arc<sinew_host::runtime::clock::ManualClock>,
}

impl Wasm {
    /// A target on a compiled component (share one engine across targets:
    /// compiling takes a while).
    pub fn new(engine: std::sync::Arc<sinew_host::runtime::Engine>) -> Wasm {
        Wasm {
            engine,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            executor: None,
            storage: Default::default(),
            clock: Default::default(),
        }
    }

    /// The engine compiled once per test process (cached in
    /// `target/component-cache`).
    pub fn engine() -> std::sync::Arc<sinew_host::runtime::Engine> {
        static ENGINE: std::sync::OnceLock<std::sync::Arc<sinew_host::runtime::Engine>> =
            std::sync::OnceLock::new();
        ENGINE
            .get_or_init(|| {
                sinew_host::runtime::Engine::new(Some(&crate::component_cache()))
                    .expect("the component compiles")
            })
            .clone()
    }

    /// The risk report of a spec, computed inside the component.
    pub fn analyze(&mut self, spec: &str) -> Result<String, String> {
        let ex = self.executor.as_ref().ok_or("not started")?;
        self.rt
            .block_on(ex.analyze(spec))
            .map_err(|e| e.to_string())
    }

    /// Loads a spec into a fresh executor (for analyze-only use).
    pub fn load(&mut self, spec: &str) -> Result<(), String> {
        let backends = sinew_host::runtime::Backends {
            storage: std::sync::Arc::new(self.storage.clone()),
            clock: self.clock.clone(),
            external: std::sync::Arc::new(sinew_host::runtime::external::Scripted(
                std::sync::Mutex::new(ScriptedExternal::default()),
            )),
        };
        let ex = self
            .rt
            .block_on(sinew_host::runtime::Executor::new(
                self.engine.clone(),
                spec.to_string(),
                backends,
            ))
            .map_err(|e| format!("{}: {}", e.code, e.message))?;
        self.executor = Some(ex);
        Ok(())
    }
}

impl Target for Wasm {
    fn start(&mut self, scenario: &Scenario) -> Result<(), String> {
        let bundle =
            Bundle::load(&scenario.spec).map_err(|e| format!("the spec does not load: {e}"))?;
        let storage = seeded_store(&bundle, scenario)?;
        self.storage = sinew_host::runtime::storage::MemoryBackend(std::sync::Arc::new(
            std::sync::Mutex::new(storage),
        ));
        self.clock = Default::default();
        self.clock
            .0
            .store(scenario.clock_ms, std::sync::atomic::Ordering::SeqCst);
        let external = ScriptedExternal::from_json(&scenario.externals)?;
        let backends = sinew_host::runtime::Backends {
            storage: std::sync::Arc::new(self.storage.clone()),
            clock: self.clock.clone(),
            external: std::sync::Arc::new(sinew_host::runtime::external::Scripted(
                std::sync::Mutex::new(external),
            )),
        };
        let ex = self
            .rt
            .block_on(sinew_host::runtime::Executor::new(
                self.engine.clone(),
                scenario.spec.clone(),
                backends,
            ))
            .map_err(|e| format!("{}: {}", e.code, e.message))?;
        self.executor = Some(ex);
        Ok(())
    }

    fn send(&mut self, request: &Request, at_ms: i64) -> Result<Response, String> {
        self.clock
            .0
            .store(at_ms, std::sync::atomic::Ordering::SeqCst);
        let ex = self.executor.as_ref().ok_or("not started")?;
        Ok(self.rt.block_on(ex.execute(request)))
    }

    fn rows(&mut self, entity: &str) -> Result<Vec<Row>, String> {
        Ok(self.storage.0.lock().map_err(|_| "poisoned")?.rows(entity))
    }

    fn audit(&mut self) -> Result<Vec<Value>, String> {
        Ok(self.storage.0.lock().map_err(|_| "poisoned")?.audit())
    }
}
