//! The component's costs: compiling vs loading the cached `.cwasm`,
//! instantiating, loading a bundle into an instance, and one `transfer`
//! through the component (pooled instances) vs natively vs a fresh instance
//! that loads the bundle for every request. Prints medians.
//!
//! cargo bench -p sinew-tests --bench component

use serde_json::json;
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, execute};
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;
use sinew_host::runtime::clock::ManualClock;
use sinew_host::runtime::external::Scripted;
use sinew_host::runtime::storage::MemoryBackend;
use sinew_host::runtime::{Backends, Engine, Executor};
use sinew_tests::root;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const A: &str = "00000000-0000-4000-8000-0000000000a1";
const B: &str = "00000000-0000-4000-8000-0000000000b2";

fn store(bundle: &Bundle) -> MemoryStorage {
    let mut s = MemoryStorage::default();
    for (id, bal) in [(A, 1_000_000_000_000i64), (B, 0)] {
        let row =
            json!({"id": id, "holder": "alice", "name": id, "currency": "EUR", "balance": bal});
        s.seed(
            "Account",
            bundle
                .complete_row("Account", row.as_object().unwrap(), 0)
                .unwrap(),
        )
        .unwrap();
    }
    s
}

fn transfer(i: usize) -> Request {
    Request {
        tool: "transfer".into(),
        input: json!({"from_account": A, "to_account": B, "amount_cents": 1}),
        auth: Some(Auth {
            sub: format!("teller{i}"),
            roles: vec!["teller".into()],
            claims: json!({}),
        }),
        id: format!("tr-{i}"),
        idempotency_key: Some(format!("k-{i}")),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec = std::fs::read_to_string(root().join("specs/examples/bank.json")).unwrap();
    let bundle = Bundle::load(&spec).unwrap();
    let cache = tempdir();

    let t = Instant::now();
    let cold = Engine::new(Some(&cache)).unwrap();
    let compile = t.elapsed();
    assert!(!cold.from_cache);
    drop(cold);
    let mut warm_loads = Vec::new();
    let mut engine = None;
    for _ in 0..5 {
        let t = Instant::now();
        let e = Engine::new(Some(&cache)).unwrap();
        warm_loads.push(t.elapsed());
        assert!(e.from_cache);
        engine = Some(e);
    }
    let engine = engine.unwrap();

    let backends = Backends {
        storage: Arc::new(MemoryBackend(Arc::new(Mutex::new(store(&bundle))))),
        clock: Arc::new(ManualClock(1_767_225_600_000.into())),
        external: Arc::new(Scripted(Mutex::new(ScriptedExternal::default()))),
    };
    // Instantiation.
    let mut inst = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let pair = rt.block_on(engine.instantiate(&backends)).unwrap();
        inst.push(t.elapsed());
        drop(pair);
    }
    // Loading the bundle into a fresh instance.
    let mut loads = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let ex = rt
            .block_on(Executor::new(
                engine.clone(),
                spec.clone(),
                backends.clone(),
            ))
            .unwrap();
        loads.push(t.elapsed());
        drop(ex);
    }
    // Pooled executor: transfer.
    let ex = rt
        .block_on(Executor::new(
            engine.clone(),
            spec.clone(),
            backends.clone(),
        ))
        .unwrap();
    let n = 20_000;
    for i in 0..2000 {
        assert_eq!(rt.block_on(ex.execute(&transfer(i))).status, 201);
    }
    let mut per = Vec::new();
    for batch in 0..9 {
        let reqs: Vec<Request> = (0..n / 10)
            .map(|i| transfer(10_000 + batch * n + i))
            .collect();
        let t = Instant::now();
        for r in &reqs {
            rt.block_on(ex.execute(r));
        }
        per.push(t.elapsed() / (reqs.len() as u32));
    }
    let pooled = median(per);
    // Natively, same store type.
    let mut s = store(&bundle);
    let mut clock = FixedClock::new(1_767_225_600_000);
    let mut ext = ScriptedExternal::default();
    for i in 0..2000 {
        assert_eq!(
            execute(&bundle, &transfer(i), &mut s, &mut clock, &mut ext).status,
            201
        );
    }
    let mut per = Vec::new();
    for batch in 0..9 {
        let reqs: Vec<Request> = (0..n / 10)
            .map(|i| transfer(10_000 + batch * n + i))
            .collect();
        let t = Instant::now();
        for r in &reqs {
            execute(&bundle, r, &mut s, &mut clock, &mut ext);
        }
        per.push(t.elapsed() / (reqs.len() as u32));
    }
    let native = median(per);
    // A fresh instance that loads the bundle for every request.
    let mut per = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let ex = rt
            .block_on(Executor::new(
                engine.clone(),
                spec.clone(),
                backends.clone(),
            ))
            .unwrap();
        rt.block_on(ex.execute(&transfer(900_000 + i)));
        per.push(t.elapsed());
    }
    let fresh = median(per);

    println!(
        "component: {} bytes ({:.2} MB)",
        sinew_host::COMPONENT.len(),
        sinew_host::COMPONENT.len() as f64 / 1e6
    );
    println!("{:<52} {:>12}", "measure", "median");
    println!(
        "{:<52} {:>9.0} ms",
        "compile the component (cold .cwasm cache)",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "{:<52} {:>9.2} ms",
        "load the cached .cwasm (warm cache)",
        median(warm_loads).as_secs_f64() * 1e3
    );
    println!(
        "{:<52} {:>9.1} µs",
        "instantiate (pooling allocator, InstancePre)",
        median(inst).as_secs_f64() * 1e6
    );
    println!(
        "{:<52} {:>9.2} ms",
        "instantiate + load the bank bundle",
        median(loads).as_secs_f64() * 1e3
    );
    println!(
        "{:<52} {:>9.1} µs",
        "transfer, native core",
        native.as_secs_f64() * 1e6
    );
    println!(
        "{:<52} {:>9.1} µs",
        "transfer, component, pooled loaded instances",
        pooled.as_secs_f64() * 1e6
    );
    println!(
        "{:<52} {:>9.1} µs",
        "transfer, component, fresh instance + load each",
        fresh.as_secs_f64() * 1e6
    );
    println!(
        "component / native on transfer: ×{:.2}",
        pooled.as_secs_f64() / native.as_secs_f64()
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sinew-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
