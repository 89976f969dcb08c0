//! Figures without a network or a database: the component's costs
//! (compiling, loading the cached `.cwasm`, instantiating, a call across
//! the boundary, a `transfer` natively vs inside the component), the
//! per-request cost as a spec grows from 1 to 50 to 500 tools, and the risk
//! engine on flows of 1 000, 10 000 and 100 000 nodes.
//!
//! Requests run against the in-memory store, so what is measured is the
//! interpreter and the boundary, not Postgres. Every figure is a median.

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, execute};
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;
use sinew_host::runtime::clock::ManualClock;
use sinew_host::runtime::external::Scripted;
use sinew_host::runtime::storage::MemoryBackend;
use sinew_host::runtime::{Backends, Engine, Executor, Reply};
use sinew_tests::generate::{large_spec, many_tools};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOW_MS: i64 = 1_767_225_600_000;
const A: &str = "00000000-0000-4000-8000-0000000000a1";
const B: &str = "00000000-0000-4000-8000-0000000000b2";
const ITEM: &str = "00000000-0000-4000-8000-0000000000c3";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How many requests per batch and how many batches.
#[derive(Clone, Copy)]
struct Size {
    batch: usize,
    batches: usize,
}

/// A spec and its seeded in-memory store, run natively and through the
/// component.
struct World {
    spec: String,
    bundle: Bundle,
    seed: Vec<(&'static str, Value)>,
}

impl World {
    fn new(spec: String, seed: Vec<(&'static str, Value)>) -> Result<World> {
        let bundle = Bundle::load(&spec).map_err(|e| anyhow!("{e:?}"))?;
        Ok(World { spec, bundle, seed })
    }

    fn store(&self) -> Result<MemoryStorage> {
        let mut s = MemoryStorage::default();
        for (entity, row) in &self.seed {
            let row = self
                .bundle
                .complete_row(entity, row.as_object().context("a row")?, 0)
                .map_err(|e| anyhow!(e))?;
            s.seed(entity, row).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(s)
    }

    fn backends(&self) -> Result<Backends> {
        Ok(Backends {
            storage: Arc::new(MemoryBackend(Arc::new(Mutex::new(self.store()?)))),
            clock: Arc::new(ManualClock(NOW_MS.into())),
            external: Arc::new(Scripted(Mutex::new(ScriptedExternal::default()))),
        })
    }

    /// Median µs per request natively, over batches after one batch of
    /// warm-up; every response must have status `expect`.
    fn native(&self, size: Size, expect: u16, make: &dyn Fn(usize) -> Request) -> Result<f64> {
        let mut s = self.store()?;
        let mut clock = FixedClock::new(NOW_MS);
        let mut ext = ScriptedExternal::default();
        // What `sinew serve --native` does with a response (as `count`).
        batches(size, expect, make, &mut |r| {
            Reply::from(execute(&self.bundle, r, &mut s, &mut clock, &mut ext)).status
        })
    }

    /// The same through the component (a pooled, loaded instance).
    fn component(
        &self,
        rt: &tokio::runtime::Runtime,
        engine: &Arc<Engine>,
        size: Size,
        expect: u16,
        make: &dyn Fn(usize) -> Request,
    ) -> Result<f64> {
        let ex = rt
            .block_on(Executor::new(
                engine.clone(),
                self.spec.clone(),
                self.backends()?,
            ))
            .map_err(|e| anyhow!("{}", e.message))?;
        // What `sinew serve` does: the guest's reply text as it is.
        batches(size, expect, make, &mut |r| rt.block_on(ex.reply(r)).status)
    }
}

fn batches(
    size: Size,
    expect: u16,
    make: &dyn Fn(usize) -> Request,
    call: &mut dyn FnMut(&Request) -> u16,
) -> Result<f64> {
    let mut n = 0;
    for _ in 0..size.batch {
        let status = call(&make(n));
        ensure!(status == expect, "warm-up request {n} answered {status}");
        n += 1;
    }
    let mut per = Vec::new();
    for _ in 0..size.batches {
        let requests: Vec<Request> = (0..size.batch).map(|i| make(n + i)).collect();
        n += size.batch;
        let t = Instant::now();
        let mut wrong = 0;
        for r in &requests {
            wrong += usize::from(call(r) != expect);
        }
        per.push(t.elapsed() / size.batch as u32);
        ensure!(wrong == 0, "{wrong} requests did not answer {expect}");
    }
    Ok(us(median(per)))
}

/// A teller's transfer of one cent from A to B (a teller per request: the
/// spec allows 20 transfers a minute per caller).
fn transfer(i: usize) -> Request {
    Request {
        idempotency_key: Some(format!("k-{i}")),
        ..request(
            "transfer",
            json!({"from_account": A, "to_account": B, "amount_cents": 1}),
            &format!("teller{i}"),
            "teller",
            format!("tr-{i}"),
        )
    }
}

/// A call of `tool` by `sub` with one role, without an idempotency key.
fn request(tool: &str, input: Value, sub: &str, role: &str, id: String) -> Request {
    Request {
        tool: tool.into(),
        input,
        auth: Some(Auth {
            sub: sub.into(),
            roles: vec![role.into()],
            claims: json!({}),
        }),
        id,
        idempotency_key: None,
        scheduled: None,
    }
}

fn bank() -> Result<World> {
    let spec = std::fs::read_to_string(crate::root().join("specs/examples/bank.json"))?;
    World::new(
        spec,
        vec![
            (
                "Account",
                json!({"id": A, "holder": "alice", "name": "main", "currency": "EUR", "balance": 1_000_000_000_000i64}),
            ),
            (
                "Account",
                json!({"id": B, "holder": "alice", "name": "savings", "currency": "EUR", "balance": 0}),
            ),
        ],
    )
}

/// Prints every figure; `quick` measures fewer requests.
pub fn run(quick: bool) -> Result<()> {
    let size = if quick {
        Size {
            batch: 300,
            batches: 5,
        }
    } else {
        Size {
            batch: 2_000,
            batches: 9,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cache = tempfile::tempdir()?;

    println!("\n== the component (in-memory store: interpreter and boundary only)");
    println!(
        "component: {:.2} MB",
        sinew_host::COMPONENT.len() as f64 / 1e6
    );
    let t = Instant::now();
    let cold = Engine::new(Some(cache.path()))?;
    let compile = t.elapsed();
    ensure!(!cold.from_cache(), "the cache directory was not empty");
    drop(cold);
    let mut loads = Vec::new();
    let mut engine = None;
    for _ in 0..5 {
        let t = Instant::now();
        let e = Engine::new(Some(cache.path()))?;
        loads.push(t.elapsed());
        ensure!(e.from_cache(), "the .cwasm was not reused");
        engine = Some(e);
    }
    let engine = engine.context("an engine")?;

    let world = bank()?;
    let backends = world.backends()?;
    let n = if quick { 300 } else { 2_000 };
    let mut inst = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let pair = rt.block_on(engine.instantiate(&backends))?;
        inst.push(t.elapsed());
        drop(pair);
    }
    // One call across the boundary and back that does nothing: an empty
    // `risk.locate`.
    let (mut store, core) = rt.block_on(engine.instantiate(&backends))?;
    let mut calls = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let places = rt.block_on(core.sinew_executor_risk().call_locate(&mut store, "", &[]))?;
        calls.push(t.elapsed());
        ensure!(places.is_empty(), "an empty locate found places");
    }
    drop((store, core));
    let mut bundle_loads = Vec::new();
    for _ in 0..if quick { 5 } else { 20 } {
        let t = Instant::now();
        let ex = rt
            .block_on(Executor::new(
                engine.clone(),
                world.spec.clone(),
                world.backends()?,
            ))
            .map_err(|e| anyhow!("{}", e.message))?;
        bundle_loads.push(t.elapsed());
        drop(ex);
    }
    // The bank spec loaded and snapshotted (what `sinew serve` builds in the
    // background on a spec's first start), then found in the cache.
    let t = Instant::now();
    let built = rt.block_on(engine.snapshot(&world.spec, &backends, Some(cache.path())))?;
    let snapshot_build = t.elapsed();
    ensure!(!built.from_cache, "the snapshot was already cached");
    drop(built);
    let mut snapshot_loads = Vec::new();
    let mut snapshot = None;
    for _ in 0..5 {
        let t = Instant::now();
        let s = engine
            .cached_snapshot(&world.spec, cache.path())?
            .context("the snapshot was not cached")?;
        snapshot_loads.push(t.elapsed());
        snapshot = Some(s);
    }
    let snapshot = snapshot.context("a snapshot")?;
    let mut snapshot_inst = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let pair = rt.block_on(engine.instantiate_snapshot(&snapshot, &backends))?;
        snapshot_inst.push(t.elapsed());
        drop(pair);
    }
    let native = world.native(size, 201, &transfer)?;
    let component = world.component(&rt, &engine, size, 201, &transfer)?;

    println!("{:<56} {:>12} {:>10}", "measure", "median", "target");
    let line = |what: &str, value: String, target: &str| {
        println!("{what:<56} {value:>12} {target:>10}");
    };
    line(
        "compile the component (cold .cwasm cache)",
        format!("{:.0} ms", ms(compile)),
        "",
    );
    line(
        "load the cached .cwasm",
        format!("{:.2} ms", ms(median(loads))),
        "",
    );
    line(
        "instantiate (pooling allocator, InstancePre)",
        format!("{:.1} µs", us(median(inst))),
        "≤ 10 µs",
    );
    line(
        "host → guest → host call (empty `risk.locate`)",
        format!("{:.2} µs", us(median(calls))),
        "",
    );
    line(
        "instantiate + load the bank bundle",
        format!("{:.2} ms", ms(median(bundle_loads))),
        "",
    );
    line(
        "snapshot the loaded bank spec (instrument, load, 2 compiles)",
        format!("{:.0} ms", ms(snapshot_build)),
        "",
    );
    line(
        "load the cached snapshot",
        format!("{:.2} ms", ms(median(snapshot_loads))),
        "",
    );
    line(
        "instantiate the snapshot (bank bundle loaded)",
        format!("{:.1} µs", us(median(snapshot_inst))),
        "",
    );
    line("transfer, native core", format!("{native:.1} µs"), "");
    line(
        "transfer, component (pooled, loaded instance)",
        format!("{component:.1} µs"),
        "",
    );
    println!(
        "component / native on transfer: ×{:.2} ({:.1} µs of boundary per transfer)",
        component / native,
        component - native
    );

    println!("\n== per-request cost as the spec grows (tool_0, in-memory store)");
    println!(
        "{:<10} {:>10} {:>12} {:>14}",
        "tools", "spec KB", "native µs", "component µs"
    );
    let clerk = Some(Auth {
        sub: "clerk".into(),
        roles: vec!["clerk".into()],
        claims: json!({}),
    });
    let mut flat = Vec::new();
    for tools in [1usize, 50, 500] {
        let spec = serde_json::to_string(&many_tools(tools))?;
        let kb = spec.len() / 1024;
        let w = World::new(
            spec,
            vec![(
                "Item",
                json!({"id": ITEM, "sku": "X", "stock": i64::MAX / 2}),
            )],
        )?;
        let make = |i: usize| Request {
            tool: "tool_0".into(),
            input: json!({"id": ITEM}),
            auth: clerk.clone(),
            id: format!("t-{i}"),
            idempotency_key: Some(format!("k-{i}")),
            scheduled: None,
        };
        let n = w.native(size, 200, &make)?;
        let c = w.component(&rt, &engine, size, 200, &make)?;
        println!("{tools:<10} {kb:>10} {n:>12.2} {c:>14.2}");
        flat.push((n, c));
    }
    if let (Some(first), Some(last)) = (flat.first(), flat.last()) {
        println!(
            "500 tools / 1 tool: native ×{:.2}, component ×{:.2} (target: flat)",
            last.0 / first.0,
            last.1 / first.1
        );
    }

    expressions(&rt, &engine, size)?;

    println!("\n== the risk engine on one flow of n nodes (parse, load, analyze)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "nodes", "KB", "parse ms", "load ms", "analyze ms", "µs / node"
    );
    let mut prev: Option<(usize, f64)> = None;
    let mut growth = Vec::new();
    for nodes in [1_000usize, 10_000, 100_000] {
        let text = serde_json::to_string(&large_spec(nodes))?;
        let runs = match (quick, nodes >= 100_000) {
            (true, _) => 3,
            (false, true) => 5,
            (false, false) => 21,
        };
        let (mut parse, mut load, mut analyze) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let value = sinew_core::spec::source::parse(&text).map_err(|e| anyhow!("{e:?}"))?;
            parse.push(t.elapsed());
            let t = Instant::now();
            let loaded = sinew_core::spec::load_value(value);
            load.push(t.elapsed());
            let t = Instant::now();
            let report = sinew_core::risk::analyze(&loaded);
            analyze.push(t.elapsed());
            ensure!(
                report.level == sinew_core::risk::Level::Green,
                "the generated spec is {:?}",
                report.level
            );
        }
        let a = ms(median(analyze));
        println!(
            "{nodes:>8} {:>10} {:>10.2} {:>10.2} {a:>12.2} {:>12.3}",
            text.len() / 1024,
            ms(median(parse)),
            ms(median(load)),
            a * 1e3 / nodes as f64
        );
        if let Some((pn, pa)) = prev {
            growth.push(format!(
                "{pn} → {nodes} nodes: ×{:.1} analyze time for ×{} nodes",
                a / pa,
                nodes / pn
            ));
        }
        prev = Some((nodes, a));
    }
    for g in growth {
        println!("{g} (target: linear; 10 000 nodes in ≤ 10 ms)");
    }
    Ok(())
}

/// A customer's view of account B (50 incoming transfers, once at least
/// 50 transfers have run): the bank's bounded read.
fn history(i: usize) -> Request {
    request(
        "account_history",
        json!({"id": B}),
        "alice",
        "customer",
        format!("h-{i}"),
    )
}

/// What `count` runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// The interpreter compiled in.
    Native,
    /// The component in wasmtime, on the same in-memory store.
    Component,
}

/// Runs `n` requests of `tool` (`transfer` or `history`) on one engine
/// after a warm-up of 60 transfers (so that a history reads 50 rows), the
/// measured part alone in [`measured`]: for instruction counts, run it
/// twice under callgrind with different `n` and take the difference
/// (`valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='*micro*measured*' sinew-bench count ...`).
pub fn count(engine: Which, tool: &str, n: usize) -> Result<()> {
    let sent = std::cell::Cell::new(0usize);
    let bulk = |_: usize| {
        sent.set(sent.get() + 1);
        bulk(sent.get())
    };
    let make: &dyn Fn(usize) -> Request = match tool {
        "transfer" => &transfer,
        "history" => &history,
        "list" => &list,
        "bulk" => &bulk,
        "plain" => &|i| moved("transfer", i),
        "notified" => &|i| moved("transfer_notified", i),
        other => anyhow::bail!(
            "no tool `{other}` to count (transfer, history, list, bulk, plain, notified)"
        ),
    };
    let expect = if tool == "transfer" { 201 } else { 200 };
    // The clinic's and the sweep's stores are seeded whole; the bank's
    // history needs 60 transfers first.
    let (world, warm) = match tool {
        "list" => (clinic()?, 0),
        "bulk" => (sweep()?, 0),
        "plain" | "notified" => (outbox()?, 0),
        _ => (bank()?, 60),
    };
    match engine {
        Which::Native => {
            let mut s = world.store()?;
            let mut clock = FixedClock::new(NOW_MS);
            let mut ext = ScriptedExternal::default();
            // What `sinew serve --native` does with a response: the body
            // as text, the audit entry's log fields.
            counted(n, warm, make, expect, &mut |r| {
                Reply::from(execute(&world.bundle, r, &mut s, &mut clock, &mut ext)).status
            })
        }
        Which::Component => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // The compiled component is kept between runs: compiling it
            // under valgrind takes minutes.
            let engine = Engine::new(Some(&sinew_tests::component_cache()))?;
            let ex = rt
                .block_on(Executor::new(engine, world.spec.clone(), world.backends()?))
                .map_err(|e| anyhow!("{}", e.message))?;
            // What `sinew serve` does: the guest's body text as it is.
            counted(n, warm, make, expect, &mut |r| {
                rt.block_on(ex.reply(r)).status
            })
        }
    }
}

/// The outbox bench's spec with accounts A and B.
fn outbox() -> Result<World> {
    let spec = std::fs::read_to_string(crate::root().join("bench/specs/outbox.json"))?;
    let seed = [A, B]
        .into_iter()
        .map(|id| ("Account", json!({"id": id, "balance": 1_000_000_000i64})))
        .collect();
    World::new(spec, seed)
}

/// A teller's move of one unit from A to B with the outbox bench's `tool`
/// (`transfer`, or `transfer_notified` with its `emit`).
fn moved(tool: &str, i: usize) -> Request {
    request(
        tool,
        json!({"from": A, "to": B, "amount": 1}),
        "teller",
        "teller",
        format!("m-{i}"),
    )
}

/// The bench's sweep with 500 open tasks.
fn sweep() -> Result<World> {
    let spec = std::fs::read_to_string(crate::root().join("bench/specs/sweep.json"))?;
    let seed = (0..500u64)
        .map(|t| {
            let id = format!("00000000-0000-4000-8000-{t:012}");
            (
                "Task",
                json!({"id": id, "title": format!("Task {t}"), "status": "open"}),
            )
        })
        .collect();
    World::new(spec, seed)
}

/// The `k`-th bulk request (from 1): odd ones close the 500 tasks, even
/// ones reopen them.
fn bulk(k: usize) -> Request {
    let tool = if k % 2 == 1 {
        "close_open"
    } else {
        "reopen_closed"
    };
    Request {
        idempotency_key: Some(format!("b-{k}")),
        ..request(tool, json!({}), "night", "staff", format!("b-{k}"))
    }
}

/// The clinic with one patient's 60 confirmed appointments, each with 2
/// invoices, across 3 therapists.
fn clinic() -> Result<World> {
    let spec = std::fs::read_to_string(crate::root().join("specs/examples/clinic.json"))?;
    let id = |kind: u64, n: u64| format!("00000000-0000-4000-8000-{:04}{n:08}", kind);
    let mut seed = Vec::new();
    for t in 0..3 {
        seed.push((
            "Therapist",
            json!({"id": id(1, t), "name": format!("T{t}"), "specialty": "physio", "rate_cents": 6000}),
        ));
    }
    seed.push((
        "Patient",
        json!({"id": id(2, 0), "account": "ann", "name": "Ann", "email": "ann@example.com"}),
    ));
    for a in 0..60u64 {
        seed.push((
            "Appointment",
            json!({"id": id(3, a), "patient": id(2, 0), "therapist": id(1, a % 3),
                   "start_at": format!("2026-03-{:02}T{:02}:00:00Z", 1 + a / 10, 8 + a % 10),
                   "minutes": 60, "note": "", "status": "confirmed"}),
        ));
        for k in 0..2 {
            seed.push((
                "Invoice",
                json!({"id": id(4, a * 2 + k), "appointment": id(3, a), "amount_cents": 6000, "paid": k == 0}),
            ));
        }
    }
    World::new(spec, seed)
}

/// A page of 50 of the patient's appointments with their therapists and
/// invoices.
fn list(i: usize) -> Request {
    request(
        "list_appointments",
        json!({"size": 50, "status": "confirmed"}),
        "ann",
        "patient",
        format!("l-{i}"),
    )
}

/// `warm` warm-up transfers (60 so that a history reads 50 rows) and one request
/// of the tool, then [`measured`].
fn counted(
    n: usize,
    warm: usize,
    make: &dyn Fn(usize) -> Request,
    expect: u16,
    call: &mut dyn FnMut(&Request) -> u16,
) -> Result<()> {
    for i in 0..warm {
        ensure!(call(&transfer(i)) == 201, "warm-up transfer {i} failed");
    }
    ensure!(call(&make(0)) == expect, "the first request failed");
    measured(n, make, expect, call)
}

/// The counted part of [`count`]: `n` requests, each checked.
#[inline(never)]
fn measured(
    n: usize,
    make: &dyn Fn(usize) -> Request,
    expect: u16,
    call: &mut dyn FnMut(&Request) -> u16,
) -> Result<()> {
    for i in 0..n {
        let status = call(&make(1_000 + i));
        ensure!(status == expect, "request {i} answered {status}");
    }
    Ok(())
}

/// The cost of a representative set of expressions (CEL's macros, the
/// strings and math extensions, a regular expression, a time zone, a
/// format): a tool that returns them, against one that returns `{}`, on
/// both engines. The difference is the expressions' evaluation.
fn expressions(rt: &tokio::runtime::Runtime, engine: &Arc<Engine>, size: Size) -> Result<()> {
    let exprs = json!({
        "total": "input.lines.map(l, l.quantity * l.price_cents).filter(x, x > 0).size()",
        "all_positive": "input.lines.all(l, l.quantity > 0 && l.price_cents >= 0)",
        "vip": "input.tags.exists(t, t.matches('^vip-[0-9]+$'))",
        "sku": "input.lines[0].sku.lowerAscii().replace('-', '_').substring(0, 5)",
        "parts": "input.note.split(' ').size()",
        "hour_paris": "request.time.getHours('Europe/Paris')",
        "weekday": "request.time.getDayOfWeek('America/New_York')",
        "biggest": "math.greatest(input.lines.map(l, l.quantity))",
        "label": "'%s: %d items, %.2f'.format([input.name, size(input.lines), 12.5])",
        "due": "string(request.time + duration('36h'))"
    });
    let spec = json!({
        "sinew": "0.2", "name": "exprs",
        "tools": {
            "exprs": {
                "trigger": {"http": {"method": "POST", "path": "/exprs"}},
                "auth": {"public": true},
                "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": exprs}}}
            },
            "empty": {
                "trigger": {"http": {"method": "POST", "path": "/empty"}},
                "auth": {"public": true},
                "flow": {"entry": "r", "nodes": {"r": {"type": "return", "value": {}}}}
            }
        }
    });
    let w = World::new(serde_json::to_string(&spec)?, Vec::new())?;
    let input = json!({
        "name": "Tea shop", "note": "deliver after five please", "tags": ["new", "vip-42"],
        "lines": [
            {"sku": "TEA-GREEN", "quantity": 2, "price_cents": 450},
            {"sku": "CUP-WHITE", "quantity": 6, "price_cents": 900},
            {"sku": "POT-IRON", "quantity": 1, "price_cents": 4500}
        ]
    });
    let make = |tool: &'static str| {
        let input = input.clone();
        move |i: usize| Request {
            tool: tool.into(),
            input: input.clone(),
            auth: None,
            id: format!("e-{i}"),
            idempotency_key: None,
            scheduled: None,
        }
    };
    println!(
        "\n== 10 representative expressions in one tool (macros, strings, math, regex, time zones, format)"
    );
    println!("{:<12} {:>12} {:>14}", "tool", "native µs", "component µs");
    let (exprs_tool, empty_tool) = (make("exprs"), make("empty"));
    let (ne, ce) = (
        w.native(size, 200, &exprs_tool)?,
        w.component(rt, engine, size, 200, &exprs_tool)?,
    );
    let (n0, c0) = (
        w.native(size, 200, &empty_tool)?,
        w.component(rt, engine, size, 200, &empty_tool)?,
    );
    println!("{:<12} {ne:>12.2} {ce:>14.2}", "exprs");
    println!("{:<12} {n0:>12.2} {c0:>14.2}", "empty");
    println!(
        "the 10 expressions: native {:.2} µs, component {:.2} µs (×{:.2})",
        ne - n0,
        ce - c0,
        (ce - c0) / (ne - n0).max(0.01)
    );
    Ok(())
}
