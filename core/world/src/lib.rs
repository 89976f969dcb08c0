//! The in-memory world as a WebAssembly component: the in-memory storage
//! and the scripted externals of `sinew-core` (`ports::memory`,
//! `ports::script`, held together by `ports::world`) exported as the
//! `storage` and `external` interfaces that the core component imports,
//! plus `memory` to reset the world and read it back (`wit/memory.wit`,
//! world `in-memory`).
//!
//! `host/build.rs` builds it and composes it onto the core component: the
//! result imports only the clock and runs the browser preview's
//! simulations and the Node conformance test on the same Rust store as
//! `sinew run` and the scenario tests. Like the core's glue, it adapts WIT
//! types and nothing clever lives here. Compiled only for `wasm32`;
//! natively this crate is empty.
#![cfg(target_arch = "wasm32")]

mod storage;

/// The same allocator as the core's component (see `core/component`).
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

use std::cell::RefCell;

use serde_json::Value;
use sinew_core::ports;
use sinew_core::ports::world::World;

mod bindings {
    //! The bindings of `wit/` (world `in-memory`): generated ABI glue,
    //! documented in the WIT files.
    #![allow(unsafe_code, missing_docs)]

    wit_bindgen::generate!({
        path: "../../wit",
        world: "in-memory",
    });

    use super::Component;
    export!(Component);
}

use bindings::exports::sinew::executor::external::{self as wit, Guest as ExternalGuest};
use bindings::exports::sinew::executor::memory::{Guest as MemoryGuest, Table};

thread_local! {
    /// The world: every export reads and writes it, one call at a time.
    static WORLD: RefCell<World> = RefCell::new(World::default());
}

/// Runs `f` on the world.
fn world<T>(f: impl FnOnce(&mut World) -> T) -> T {
    WORLD.with(|w| f(&mut w.borrow_mut()))
}

struct Component;

fn object(text: &str, what: &str) -> Result<ports::Row, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what} must be a JSON object")),
        Err(e) => Err(format!("{what} is not JSON: {e}")),
    }
}

impl MemoryGuest for Component {
    fn reset(state: String) -> Result<(), String> {
        let state: Value =
            serde_json::from_str(&state).map_err(|e| format!("the state is not JSON: {e}"))?;
        let fresh = World::from_json(&state)?;
        world(|w| *w = fresh);
        Ok(())
    }

    fn declare(spec: String) -> Result<(), String> {
        let spec: Value =
            serde_json::from_str(&spec).map_err(|e| format!("the spec is not JSON: {e}"))?;
        world(|w| w.declare(&spec));
        Ok(())
    }

    fn seed(entity: String, row: String) -> Result<(), String> {
        let row = object(&row, "a seed row")?;
        world(|w| w.storage.seed(&entity, row)).map_err(|e| e.to_string())
    }

    fn state() -> String {
        world(|w| w.to_json()).to_string()
    }

    fn rows(entity: String) -> String {
        world(|w| w.storage.rows(&entity))
            .into_iter()
            .map(Value::Object)
            .collect::<Value>()
            .to_string()
    }

    fn audit_len() -> u64 {
        world(|w| u64::try_from(w.storage.audit_len()).unwrap_or(u64::MAX))
    }

    fn audit(first: u64) -> String {
        let first = usize::try_from(first).unwrap_or(usize::MAX);
        world(|w| w.storage.audit())
            .into_iter()
            .skip(first)
            .collect::<Value>()
            .to_string()
    }

    fn open_transactions() -> u32 {
        world(|w| u32::try_from(w.storage.open_transactions()).unwrap_or(u32::MAX))
    }

    fn tables(rows: String) -> Result<Vec<Table>, String> {
        let Value::Object(entities) =
            serde_json::from_str(&rows).map_err(|e| format!("the seed rows are not JSON: {e}"))?
        else {
            return Err("the seed rows must be an object of entity → array of rows".into());
        };
        entities
            .into_iter()
            .map(|(entity, list)| {
                let Value::Array(list) = list else {
                    return Err(format!("`{entity}`: expected an array of rows"));
                };
                let rows = list.iter().map(Value::to_string).collect();
                Ok(Table { entity, rows })
            })
            .collect()
    }
}

sinew_core::wit_external_conversions!();

impl ExternalGuest for Component {
    fn call(r: wit::CallRequest) -> wit::CallResult {
        let request = call_request(r);
        call_result(world(|w| ports::External::call(&mut w.external, &request)))
    }
}
