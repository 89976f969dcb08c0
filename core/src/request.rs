//! One call of a tool and its answer: what a host hands the executor and
//! gets back. A leaf: it imports no other module.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who is calling, as the host verified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Auth {
    /// The subject (`sub` claim).
    pub sub: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Every claim of the token (JSON object).
    #[serde(default)]
    pub claims: Value,
}

/// One call of a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Request {
    /// The tool's name.
    pub tool: String,
    /// The input (path parameters already merged in).
    pub input: Value,
    /// The verified caller; `None` for anonymous calls.
    pub auth: Option<Auth>,
    /// The request's id: unique per request; new row ids derive from it.
    pub id: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// A run of a cron tool for one of its scheduled times (RFC 3339): set
    /// by the host (its scheduler, or a call carrying Cloud Scheduler's
    /// `X-CloudScheduler-ScheduleTime`), never from a caller's input. The
    /// run claims `cron:<tool>:<the time, UTC>`, whoever calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<String>,
}

/// The typed response: an HTTP status and a JSON body (RFC 9457
/// problem+json for errors), and the final audit entry written for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body: the tool's output, or a problem.
    pub body: Value,
    /// The final audit entry (as appended to storage, before chaining).
    pub audit: Value,
}
