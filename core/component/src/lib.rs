//! The WebAssembly component glue of `sinew-core`: it adapts the WIT
//! interfaces of `wit/` to the core's ports and exports, and nothing clever
//! lives here. Compiled only for `wasm32`; natively this crate is empty.
//!
//! Build: `cargo build -p sinew-host` builds it (see `host/build.rs`), or
//! `cargo build -p sinew-component --target wasm32-unknown-unknown --release`
//! followed by componentization.
#![cfg(target_arch = "wasm32")]

mod alloc;
mod ports;

/// The guest's allocator: free lists of small blocks (`alloc.rs`) in front
/// of talc, which was faster than Rust's default dlmalloc for the many
/// small, short-lived allocations of a request (the component is
/// single-threaded; memory grows through `memory.grow` as before).
#[global_allocator]
static ALLOCATOR: alloc::Classes<talc::wasm::WasmDynamicTalc> =
    alloc::Classes::new(talc::wasm::new_wasm_dynamic_allocator());

use std::cell::RefCell;

use serde_json::Value;
use sinew_core::bundle::{Bundle, BundleError};
use sinew_core::contract::{self, Auth, Request};

wit_bindgen::generate!({
    path: "../../wit",
    world: "core",
});

use exports::sinew::executor::executor::{
    BundleInfo, Error, Guest as ExecutorGuest, Request as WitRequest, Response, ToolInfo,
};
use exports::sinew::executor::risk::{Applied, Fixed, Guest as RiskGuest, Place};

/// The largest spec `load` accepts.
const MAX_SPEC_BYTES: usize = sinew_core::spec::source::MAX_SPEC_BYTES;
/// The largest request input `execute` accepts.
const MAX_INPUT_BYTES: usize = 16 << 20;

thread_local! {
    /// The loaded bundle: set by `load`, read by every `execute`. The core
    /// keeps no per-request state besides it.
    static BUNDLE: RefCell<Option<Bundle>> = const { RefCell::new(None) };
}

struct Component;

export!(Component);

fn error(code: &str, message: impl Into<String>, pointer: &str) -> Error {
    Error {
        code: code.to_string(),
        message: message.into(),
        pointer: pointer.to_string(),
    }
}

impl ExecutorGuest for Component {
    fn load(spec: String) -> Result<BundleInfo, Error> {
        if spec.len() > MAX_SPEC_BYTES {
            return Err(error(
                "too-large",
                format!(
                    "the spec is {} bytes, more than the {} MiB limit",
                    spec.len(),
                    MAX_SPEC_BYTES >> 20
                ),
                "",
            ));
        }
        let bundle = Bundle::load(&spec).map_err(|e| match &e {
            BundleError::Invalid(list) => {
                let first = list.first();
                let code = if first.is_some_and(|d| {
                    matches!(
                        d.code.as_str(),
                        "json-syntax" | "empty" | "too-deep" | "duplicate-key"
                    )
                }) {
                    "invalid-json"
                } else {
                    "spec-errors"
                };
                error(code, e.to_string(), first.map_or("", |d| d.path.as_str()))
            }
            BundleError::Blocked { tool, .. } => {
                error("blocked", e.to_string(), &format!("/tools/{tool}"))
            }
            BundleError::Schema { tool, which, .. } => {
                error("schema", e.to_string(), &format!("/tools/{tool}/{which}"))
            }
        })?;
        let info = BundleInfo {
            name: bundle.spec.name.clone(),
            hash: bundle.hash.clone(),
            tools: bundle
                .spec
                .tools
                .iter()
                .map(|(name, t)| ToolInfo {
                    name: name.clone(),
                    timeout_ms: t.limits.timeout_ms,
                })
                .collect(),
        };
        BUNDLE.with(|b| *b.borrow_mut() = Some(bundle));
        Ok(info)
    }

    fn complete_row(entity: String, row: String, now_ms: i64) -> Result<String, Error> {
        let given: sinew_core::ports::Row = match serde_json::from_str(&row) {
            Ok(Value::Object(m)) => m,
            _ => return Err(error("seed", "a seed row must be a JSON object", "")),
        };
        Self::with_bundle(|bundle| {
            bundle
                .complete_row(&entity, &given, now_ms)
                .map(|r| sinew_core::hash::object_text(&r))
                .map_err(|m| error("seed", m, &format!("/entities/{entity}")))
        })
    }

    fn execute(request: WitRequest) -> Result<Response, Error> {
        if request.input.len() > MAX_INPUT_BYTES {
            return Err(error(
                "too-large",
                format!(
                    "the input is {} bytes, more than {} MiB",
                    request.input.len(),
                    MAX_INPUT_BYTES >> 20
                ),
                "",
            ));
        }
        // As `sinew serve` reads a body: a key twice is refused (which
        // one a proxy in front read is not known).
        let input: Value = sinew_core::spec::source::strict_from_slice(request.input.as_bytes())
            .map_err(|e| error("invalid-json", format!("the input is not JSON: {e}"), ""))?;
        let auth = match request.auth {
            None => None,
            Some(c) => Some(Auth {
                sub: c.sub,
                roles: c.roles,
                claims: serde_json::from_str(&c.claims).unwrap_or(Value::Null),
            }),
        };
        let req = Request {
            tool: request.tool,
            input,
            auth,
            id: request.id,
            idempotency_key: request.idempotency_key,
            scheduled: request.scheduled,
        };
        Self::with_bundle(|bundle| {
            let mut storage = ports::WitStorage::default();
            let r = contract::execute(
                bundle,
                &req,
                &mut storage,
                &mut ports::WitClock,
                &mut ports::WitExternal,
            );
            // The entry the contract answers with is the final entry it
            // appended last: its text is reused, not written again.
            let audit = match storage.final_entry.take() {
                Some(text) => text,
                None => ports::json(&r.audit),
            };
            Ok(Response {
                status: r.status,
                body: ports::json(&r.body),
                audit,
            })
        })
    }
}

impl Component {
    fn with_bundle<T>(f: impl FnOnce(&Bundle) -> Result<T, Error>) -> Result<T, Error> {
        BUNDLE.with(|b| match b.borrow().as_ref() {
            Some(bundle) => f(bundle),
            None => Err(error(
                "not-loaded",
                "no bundle is loaded: call `load` first",
                "",
            )),
        })
    }
}

impl RiskGuest for Component {
    fn analyze(spec: String) -> String {
        sinew_core::risk::check(&spec).to_json()
    }

    fn fix(spec: String) -> Fixed {
        let out = sinew_core::risk::fix(&spec);
        Fixed {
            spec: out.text,
            applied: out
                .applied
                .into_iter()
                .map(|a| Applied {
                    code: a.code,
                    tool: a.tool,
                    path: a.path,
                    summary: a.summary,
                })
                .collect(),
            report: out.report.to_json(),
        }
    }

    fn apply(spec: String, patch: String) -> Result<String, String> {
        let ops: Vec<sinew_core::patch::Op> = serde_json::from_str(&patch)
            .map_err(|e| format!("the patch is not a JSON Patch: {e}"))?;
        sinew_core::risk::apply_patch(&spec, &ops).map(|(text, _)| text)
    }

    fn locate(spec: String, pointers: Vec<String>) -> Vec<Place> {
        let list: Vec<&str> = pointers.iter().map(String::as_str).collect();
        // Offsets fit: a spec is at most MAX_SPEC_BYTES.
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        sinew_core::spec::location::places(&spec, &list)
            .into_iter()
            .map(|p| Place {
                mark_start: n(p.mark.start),
                mark_end: n(p.mark.end),
                value_start: n(p.value.start),
                value_end: n(p.value.end),
                exact: p.exact,
            })
            .collect()
    }
}

/// getrandom's custom backend: the component has no source of randomness,
/// by design. Only `ahash` (inside jsonschema) asks, to seed hash maps; a
/// constant seed keeps every run identical.
///
/// # Safety
/// getrandom calls it with a valid, writable buffer of `len` bytes.
#[unsafe(no_mangle)]
unsafe extern "Rust" fn __getrandom_v03_custom(
    dest: *mut u8,
    len: usize,
) -> Result<(), getrandom::Error> {
    // SAFETY: getrandom guarantees `dest` is valid for `len` writable bytes.
    unsafe { std::ptr::write_bytes(dest, 0x5a, len) };
    Ok(())
}
