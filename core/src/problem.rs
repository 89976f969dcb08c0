//! Errors at the edge: RFC 9457 `application/problem+json` bodies.

use serde_json::{Map, Value, json};

/// A typed error of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code (`not_found`, or a spec's `fail` code).
    pub code: String,
    /// One sentence for the caller.
    pub detail: String,
    /// Details per item (input violations with pointers, broken invariants).
    pub errors: Vec<Value>,
    /// Not caught by `onError`: budgets, deadlines, conflicts, bugs.
    pub fatal: bool,
    /// What operators need and callers must not see (kept in the audit).
    pub internal: Option<String>,
    /// Extension members of the body (RFC 9457 §3.2): `errorCount`,
    /// `committed`.
    pub extra: Map<String, Value>,
}

impl Problem {
    /// A problem with a status, a code and a detail.
    pub fn new(status: u16, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code: code.to_string(),
            detail: detail.into(),
            errors: Vec::new(),
            fatal: false,
            internal: None,
            extra: Map::new(),
        }
    }

    /// A mistake of the spec found while running (an expression that
    /// failed or gave the wrong type): `500 spec_error`, never blamed on
    /// the caller, never caught by `onError`, and its body says nothing of
    /// the spec or the data; `internal` (the expression, where it stands,
    /// what went wrong) goes to the audit entry and the server's log.
    pub fn spec_error(internal: impl Into<String>) -> Problem {
        Problem::new(
            500,
            "spec_error",
            "the tool stopped on a mistake in its spec; the operators have the details",
        )
        .fatal()
        .internal(internal)
    }

    /// Marks it as not catchable by `onError`.
    pub fn fatal(mut self) -> Problem {
        self.fatal = true;
        self
    }

    /// Attaches what only operators should see.
    pub fn internal(mut self, message: impl Into<String>) -> Problem {
        self.internal = Some(message.into());
        self
    }

    /// Attaches per-item details.
    pub fn with_errors(mut self, errors: Vec<Value>) -> Problem {
        self.errors = errors;
        self
    }

    /// The problem+json body. 5xx bodies never carry internals.
    pub fn body(&self, execution: &str) -> Value {
        let mut m = Map::new();
        m.insert(
            "type".into(),
            json!(format!(
                "https://sinew.dev/problems/{}",
                self.code.replace('_', "-")
            )),
        );
        m.insert("title".into(), json!(title(self.status)));
        m.insert("status".into(), json!(self.status));
        m.insert("code".into(), json!(self.code));
        let detail = if self.status >= 500 && self.code == "internal" {
            "internal error".to_string()
        } else {
            self.detail.clone()
        };
        m.insert("detail".into(), json!(detail));
        m.insert(
            "instance".into(),
            json!(format!("urn:sinew:execution:{execution}")),
        );
        if !self.errors.is_empty() {
            m.insert("errors".into(), Value::Array(self.errors.clone()));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// The reason phrase of an HTTP status.
pub fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        423 => "Locked",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}
