//! The sinew host: the `sinew` command's library. It checks specs, runs
//! them in memory, and runs the core's WebAssembly component in wasmtime.

pub mod admin;
pub mod check;
pub mod http_external;
pub mod jwt;
pub mod native;
pub mod openapi;
pub mod pg;
pub mod serve;
pub mod studio;
pub mod tls;

pub mod run;
pub mod runtime;

/// The core's WebAssembly component, built from the current sources by
/// `build.rs`.
pub static COMPONENT: &[u8] = include_bytes!(env!("SINEW_COMPONENT_PATH"));
