//! A minimal embedding of sinew's core in Rust, with wasmtime: the core
//! composed onto the in-memory world (`sinew component --composed`), whose
//! only import is the clock. It judges a spec, loads it, seeds one row and
//! runs one call. Run it from sinew's repository:
//!
//!     sinew component --composed --out sinew.composed.wasm
//!     cargo run -p sinew-tests --example embed -- sinew.composed.wasm specs/examples/shop.json
//!
//! Cargo.toml: `wasmtime = { version = "48", features = ["component-model"] }`
//! and `anyhow`.

// The generated bindings are documented in the WIT.
#![allow(missing_docs)]

use anyhow::{Result, anyhow};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

wasmtime::component::bindgen!({
    path: "../wit", // sinew's `wit/` directory (relative to Cargo.toml)
    world: "core-in-memory",
});

use exports::sinew::executor::executor::{Caller, Request};

/// What the imports read: here only the clock.
struct Host {
    now_ms: i64,
}

impl sinew::executor::clock::Host for Host {
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

/// The type-only `types` interface: nothing to implement.
impl sinew::executor::types::Host for Host {}

/// Runs the example; returns the lines it prints.
pub fn run(component: &str, spec: &str) -> Result<Vec<String>> {
    let engine = Engine::default();
    let component = Component::from_file(&engine, component)?;
    let mut linker = Linker::new(&engine);
    CoreInMemory::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)?;
    // 2026-01-01T00:00:00Z: the clock every call of this example reads.
    let mut store = Store::new(
        &engine,
        Host {
            now_ms: 1_767_225_600_000,
        },
    );
    let core = CoreInMemory::instantiate(&mut store, &component, &linker)?;
    let (risk, executor, memory) = (
        core.sinew_executor_risk(),
        core.sinew_executor_executor(),
        core.sinew_executor_memory(),
    );
    let mut out = Vec::new();
    // `json` parameters (JSON text) are `&String` in the bindings.
    let spec = spec.to_string();

    // Judge the spec: the JSON of `sinew check --format json`.
    let report = risk.call_analyze(&mut store, &spec)?;
    out.push(format!("report {} bytes", report.len()));

    // Load it, and tell the in-memory store its unique and timestamp fields.
    let info = executor
        .call_load(&mut store, &spec)?
        .map_err(|e| anyhow!("{}: {}", e.code, e.message))?;
    memory
        .call_declare(&mut store, &spec)?
        .map_err(|e| anyhow!(e))?;
    out.push(format!(
        "loaded {} {} ({} tools)",
        info.name,
        info.hash,
        info.tools.len()
    ));

    // One seed row, completed as the spec defines it, inserted as committed.
    let row = r#"{"id": "00000000-0000-4000-8000-000000000001", "sku": "pen", "name": "Pen", "price_cents": 150, "stock": 4}"#.to_string();
    let now = store.data().now_ms;
    let row = executor
        .call_complete_row(&mut store, "Product", &row, now)?
        .map_err(|e| anyhow!("{}: {}", e.code, e.message))?;
    memory
        .call_seed(&mut store, "Product", &row)?
        .map_err(|e| anyhow!(e))?;

    // One call, through the nine steps of the contract.
    let request = Request {
        tool: "list_products".into(),
        input: "{}".into(),
        auth: Some(Caller {
            sub: "ann".into(),
            roles: vec!["customer".into()],
            claims: r#"{"sub": "ann"}"#.into(),
        }),
        id: "req-1".into(),
        idempotency_key: None,
        scheduled: None,
    };
    let response = executor
        .call_execute(&mut store, &request)?
        .map_err(|e| anyhow!("{}: {}", e.code, e.message))?;
    out.push(format!("{} {}", response.status, response.body));
    // The audit chain as the store keeps it (with `seq`, `prev`, `hash`).
    out.push(format!("audit {}", memory.call_audit(&mut store, 0)?));
    Ok(out)
}

#[allow(dead_code)] // the tests call `run`
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, component, spec] = &args[..] else {
        return Err(anyhow!("usage: embed COMPONENT SPEC"));
    };
    for line in run(component, &std::fs::read_to_string(spec)?)? {
        println!("{line}");
    }
    Ok(())
}
