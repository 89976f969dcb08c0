//! The sinew host: the `sinew` command's library. It checks specs, runs
//! them in memory, and runs the core's WebAssembly component in wasmtime.

pub mod admin;
pub mod check;
pub mod diff;
pub mod http_external;
pub mod jwt;
pub mod keys;
pub mod native;
pub mod npm;
pub mod openapi;
pub mod outbox;
pub mod pg;
pub mod queue;
pub mod replay;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod studio;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub mod run;
pub mod runtime;

/// Writes a command's output to stdout. A reader that went away (`sinew run
/// … | head`) is not an error: the rest of the output is dropped and the
/// command ends as it would have, quietly. Other write errors are returned.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// The core's WebAssembly component, built from the current sources by
/// `build.rs`.
pub static COMPONENT: &[u8] = include_bytes!(env!("SINEW_COMPONENT_PATH"));

/// Lowercase hex SHA-256 of [`COMPONENT`], computed by `build.rs`.
pub const COMPONENT_SHA256: &str = env!("SINEW_COMPONENT_SHA256");

/// [`COMPONENT`] composed onto the in-memory world (`core/world`) by
/// `build.rs`: one component that imports only `sinew:executor/clock` and
/// exports `executor`, `risk` and `memory` (world `core-in-memory` of
/// `wit/memory.wit`). The browser preview and the Node test run it.
pub static COMPOSED: &[u8] = include_bytes!(env!("SINEW_COMPOSED_PATH"));

/// Lowercase hex SHA-256 of [`COMPOSED`], computed by `build.rs`.
pub const COMPOSED_SHA256: &str = env!("SINEW_COMPOSED_SHA256");

/// Lowercase hex SHA-256 of a component: [`COMPONENT_SHA256`] for the
/// embedded one (no hashing at start), computed for any other.
pub fn component_sha256(component: &[u8]) -> String {
    if std::ptr::eq(component, COMPONENT) {
        COMPONENT_SHA256.to_owned()
    } else {
        sinew_core::hash::sha256_hex(component)
    }
}

/// A component's identity in audit entries and snapshot keys: `sha256:` and
/// the hex of [`component_sha256`].
pub fn component_hash(component: &[u8]) -> String {
    format!("sha256:{}", component_sha256(component))
}
