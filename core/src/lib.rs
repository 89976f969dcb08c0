//! # sinew-core
//!
//! The core of sinew: the spec model and its loader, the expression
//! language, flow graphs and the risk engine. Pure Rust with no I/O: it
//! runs natively, inside the WebAssembly component, and in the browser.
//!
//! ```
//! use sinew_core::risk::{self, Level};
//!
//! let spec = r#"{
//!   "sinew": "0.1", "name": "notes",
//!   "entities": {"Note": {"fields": {"text": {"type": "string"}}}},
//!   "tools": {"add_note": {
//!     "trigger": {"http": {"method": "POST", "path": "/notes"}},
//!     "flow": {"entry": "save", "nodes": {
//!       "save": {"type": "create", "entity": "Note", "values": {"text": "input.text"}, "next": "done"},
//!       "done": {"type": "return", "value": {"id": "save.id"}}
//!     }}
//!   }}
//! }"#;
//! let report = risk::check(spec);
//! assert_eq!(report.level, Level::Red); // the create is outside a transaction
//! let fixed = risk::fix(spec);
//! assert_eq!(fixed.report.level, Level::Green);
//! ```
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod bundle;
pub mod chain;
pub mod contract;
pub mod cron;
pub(crate) mod cursor;
pub mod diag;
pub mod diff;
pub mod exec;
pub mod expr;
pub mod flow;
pub mod hash;
pub mod input;
pub mod json_schema;
pub mod migrate;
pub mod model;
pub mod patch;
pub mod ports;
pub mod problem;
pub mod replay;
pub mod request;
pub mod risk;
pub mod row;
pub mod signal;
pub mod spec;
pub mod tape;
