//! Errors at the edge: RFC 9457 `application/problem+json` bodies.

use serde_json::{Map, Value, json};

/// Declares [`Code`]: each problem sinew itself answers with, its status
/// and its stable code, in one place (the table in `docs/contract.md`
/// lists the same, and a test holds them together).
macro_rules! codes {
    ($($(#[doc = $doc:literal])* $name:ident = $status:literal $code:literal,)*) => {
        /// A problem the executor or the server answers with (a spec's
        /// `fail` and `assert` nodes name their own: [`Problem::custom`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[doc = $doc])* $name,)*
        }

        impl Code {
            /// Every code, in the order of the documentation's table.
            pub const ALL: &[Code] = &[$(Code::$name,)*];

            /// The HTTP status it is answered with.
            pub const fn status(self) -> u16 {
                match self {
                    $(Code::$name => $status,)*
                }
            }

            /// The stable machine-readable code (`not_found`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $code,)*
                }
            }
        }
    };
}

codes! {
    /// The input does not match the tool's schema.
    InvalidInput = 400 "invalid_input",
    /// A paging cursor that no page of this read gave (tampered with, cut,
    /// or from another read or spec).
    InvalidCursor = 400 "invalid_cursor",
    /// The body is not JSON, or nests too deeply.
    InvalidJson = 400 "invalid_json",
    /// The body could not be read.
    InvalidBody = 400 "invalid_body",
    /// The tool's key is the `Idempotency-Key` header, and it is missing.
    IdempotencyKeyRequired = 400 "idempotency_key_required",
    /// The idempotency key is malformed.
    InvalidIdempotencyKey = 400 "invalid_idempotency_key",
    /// A scheduled run of a cron tool names a time that is not one of its
    /// schedule's, is in the future, or the tool is not a cron tool.
    InvalidScheduleTime = 400 "invalid_schedule_time",
    /// No token where one is needed, or a bad one.
    Unauthenticated = 401 "unauthenticated",
    /// The caller lacks the tool's roles, or `denyWhen` holds.
    Forbidden = 403 "forbidden",
    /// A blocking policy fired.
    PolicyDenied = 403 "policy_denied",
    /// No tool has that name.
    UnknownTool = 404 "unknown_tool",
    /// No such row (or not the caller's), or no such path.
    NotFound = 404 "not_found",
    /// A known path with another method.
    MethodNotAllowed = 405 "method_not_allowed",
    /// The row's status is not one of the action's `from` states.
    TransitionNotAllowed = 409 "transition_not_allowed",
    /// A `unique` field already has that value.
    AlreadyExists = 409 "already_exists",
    /// A soft delete of a row live rows still refer to (`onDelete: restrict`).
    StillReferenced = 409 "still_referenced",
    /// A soft delete would cascade to more rows than `maxRowsPerWrite`.
    CascadeTooLarge = 409 "cascade_too_large",
    /// A read or update with `one` matched more than one row.
    NotUnique = 409 "not_unique",
    /// A concurrent transaction changed or locked the same rows.
    Conflict = 409 "conflict",
    /// A call with the same idempotency key is still running.
    IdempotencyInFlight = 409 "idempotency_in_flight",
    /// The body is too large.
    TooLarge = 413 "too_large",
    /// A body that is not JSON by its `Content-Type`.
    UnsupportedMediaType = 415 "unsupported_media_type",
    /// A written row breaks an entity invariant.
    InvariantViolated = 422 "invariant_violated",
    /// A written value breaks its field's constraints.
    ConstraintViolated = 422 "constraint_violated",
    /// A `ref` field set to no live row of its entity the caller can see.
    UnknownReference = 422 "unknown_reference",
    /// The idempotency key was used before with another input.
    IdempotencyKeyReused = 422 "idempotency_key_reused",
    /// The call exceeded one of its tool's limits.
    LimitExceeded = 422 "limit_exceeded",
    /// A `foreach` (or a `create` with `each`) was given a list longer than
    /// its `maxItems`.
    TooManyItems = 422 "too_many_items",
    /// An `assert` without its own code did not hold (its node may set
    /// another status).
    AssertionFailed = 422 "assertion_failed",
    /// A blocking `rateLimit` policy.
    RateLimited = 429 "rate_limited",
    /// A mistake of the spec found while running.
    SpecError = 500 "spec_error",
    /// The result does not match the output schema.
    InvalidOutput = 500 "invalid_output",
    /// A bug, a storage failure, a trap of the component.
    Internal = 500 "internal",
    /// An external service refused the call.
    ExternalDeclined = 502 "external_declined",
    /// An external call failed after all its attempts.
    ExternalFailed = 502 "external_failed",
    /// The database is unreachable.
    Unavailable = 503 "unavailable",
    /// The call ran past its deadline.
    DeadlineExceeded = 504 "deadline_exceeded",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose a problem's code is.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// sinew's own: its status comes with it.
    Builtin(Code),
    /// A spec's (`fail`, `assert`), or one read back from an audit entry; a
    /// spec may reuse a built-in code's text, it is still the spec's.
    Custom {
        /// HTTP status.
        status: u16,
        /// The code.
        code: String,
    },
}

/// A typed error of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    kind: Kind,
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
    /// A built-in problem: its status comes with its code.
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem::of(Kind::Builtin(code), detail.into())
    }

    /// A problem a spec names (`fail`, `assert`), or one read back from an
    /// audit entry: any status and code.
    pub fn custom(status: u16, code: &str, detail: impl Into<String>) -> Problem {
        let code = code.to_string();
        Problem::of(Kind::Custom { status, code }, detail.into())
    }

    fn of(kind: Kind, detail: String) -> Problem {
        Problem {
            kind,
            detail,
            errors: Vec::new(),
            fatal: false,
            internal: None,
            extra: Map::new(),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match &self.kind {
            Kind::Builtin(c) => c.status(),
            Kind::Custom { status, .. } => *status,
        }
    }

    /// Stable machine-readable code (`not_found`, or a spec's `fail` code).
    pub fn code(&self) -> &str {
        match &self.kind {
            Kind::Builtin(c) => c.as_str(),
            Kind::Custom { code, .. } => code,
        }
    }

    /// Whether it is this built-in problem.
    pub fn is(&self, code: Code) -> bool {
        self.kind == Kind::Builtin(code)
    }

    /// A mistake of the spec found while running (an expression that
    /// failed or gave the wrong type): `500 spec_error`, never blamed on
    /// the caller, never caught by `onError`, and its body says nothing of
    /// the spec or the data; `internal` (the expression, where it stands,
    /// what went wrong) goes to the audit entry and the server's log.
    pub fn spec_error(internal: impl Into<String>) -> Problem {
        Problem::new(
            Code::SpecError,
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
                self.code().replace('_', "-")
            )),
        );
        m.insert("title".into(), json!(title(self.status())));
        m.insert("status".into(), json!(self.status()));
        m.insert("code".into(), json!(self.code()));
        let detail = if self.status() >= 500 && self.code() == Code::Internal.as_str() {
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
