//! The spec's loader (the model itself is [`crate::model`], re-exported
//! here).
//!
//! [`load`] turns a spec's text into a [`Spec`] plus every error and warning
//! found, each with a JSON Pointer. Loading never stops at the first error:
//! it decodes what it can (a broken node becomes [`NodeKind::Invalid`]) so
//! that one mistake does not hide the next, and so that tools without errors
//! can still be judged.

mod check;
pub(crate) mod decode;
pub mod location;
pub mod source;
mod types;

use serde_json::Value;

use crate::diag::Diagnostic;

pub use crate::model::*;
pub use decode::{base_url_problem, unfit_path_segment, url_without_credentials};

/// A loaded spec together with what the loader found wrong.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The spec as parsed JSON (`Null` when it did not parse).
    pub source: Value,
    /// The model: complete when `errors` is empty, partial otherwise.
    pub spec: Spec,
    /// Spec errors; the spec does not run while there are any.
    pub errors: Vec<Diagnostic>,
    /// Warnings: worth fixing, but the spec runs.
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether `tool` has errors of its own (or the spec has global ones).
    pub fn tool_is_valid(&self, tool: &str) -> bool {
        !self
            .errors
            .iter()
            .any(|e| e.tool.as_deref().is_none_or(|t| t == tool))
    }
}

/// Loads a spec from its text: parse, decode, check.
pub fn load(text: &str) -> Loaded {
    match source::parse(text) {
        Ok(value) => load_value(value),
        Err(e) => Loaded {
            source: Value::Null,
            spec: Spec::default(),
            errors: vec![e],
            warnings: Vec::new(),
        },
    }
}

/// Loads a spec from bytes (checks size and encoding first).
pub fn load_bytes(bytes: &[u8]) -> Loaded {
    match source::decode(bytes) {
        Ok(text) => load(text),
        Err(e) => Loaded {
            source: Value::Null,
            spec: Spec::default(),
            errors: vec![e],
            warnings: Vec::new(),
        },
    }
}

/// Loads a spec from an already parsed JSON value.
pub fn load_value(value: Value) -> Loaded {
    let mut cx = decode::Cx::default();
    let spec = decode::spec(&mut cx, &value);
    check::check(&mut cx, &spec);
    let decode::Cx {
        mut errors,
        mut warnings,
        ..
    } = cx;
    Diagnostic::sort(&mut errors);
    errors.dedup();
    Diagnostic::sort(&mut warnings);
    warnings.dedup();
    Loaded {
        source: value,
        spec,
        errors,
        warnings,
    }
}
