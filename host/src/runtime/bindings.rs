//! The one place `bindgen!` runs: Rust bindings of `wit/` for the host.
//! The generated items are documented in `wit/`.
#![allow(missing_docs)]

use sinew_core::contract::Request;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "core",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "sinew:executor/storage.transaction": super::storage::Tx,
    },
});

pub use exports::sinew::executor::executor::Request as WitRequest;

/// A core request as its WIT record.
pub fn request(r: &Request) -> WitRequest {
    WitRequest {
        tool: r.tool.clone(),
        input: sinew_core::hash::json_text(&r.input),
        auth: r
            .auth
            .as_ref()
            .map(|a| exports::sinew::executor::executor::Caller {
                sub: a.sub.clone(),
                roles: a.roles.clone(),
                claims: if a.claims.is_null() {
                    "{}".into()
                } else {
                    a.claims.to_string()
                },
            }),
        id: r.id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        scheduled: r.scheduled.clone(),
    }
}
