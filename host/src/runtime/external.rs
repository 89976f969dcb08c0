//! The `external` import.

use super::HostState;
use super::bindings::sinew::executor::external::{self as wit, Host};
use serde_json::Value;
use sinew_core::ports::{self, CallOutcome, CallRequest, CallResult};
use sinew_core::spec::Backoff;

/// Where outbound calls go.
#[async_trait::async_trait]
pub trait ExternalBackend: Send + Sync + 'static {
    /// Makes a call with its attempts.
    async fn call(&self, request: &CallRequest) -> CallResult;
}

/// A scripted fake, shared across requests (tests, conformance, dry runs).
pub struct Scripted(pub std::sync::Mutex<sinew_core::ports::script::ScriptedExternal>);

#[async_trait::async_trait]
impl ExternalBackend for Scripted {
    async fn call(&self, request: &CallRequest) -> CallResult {
        match self.0.lock() {
            Ok(mut s) => ports::External::call(&mut *s, request),
            Err(_) => CallResult {
                outcome: CallOutcome::Failed {
                    message: "the script is unavailable".into(),
                },
                attempts: Vec::new(),
            },
        }
    }
}

impl Host for HostState {
    async fn call(&mut self, r: wit::CallRequest) -> wasmtime::Result<wit::CallResult> {
        let request = CallRequest {
            service: r.service,
            operation: r.operation,
            args: serde_json::from_str(&r.args).unwrap_or(Value::Null),
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts,
            backoff: match r.backoff {
                wit::Backoff::Exponential => Backoff::Exponential,
                wit::Backoff::Fixed => Backoff::Fixed,
                wit::Backoff::None => Backoff::None,
            },
            initial_backoff_ms: r.initial_backoff_ms,
            idempotency_key: r.idempotency_key,
        };
        let result = self.backends.external.call(&request).await;
        Ok(wit::CallResult {
            outcome: match result.outcome {
                CallOutcome::Ok { value } => wit::CallOutcome::Ok(value.to_string()),
                CallOutcome::Declined { value } => wit::CallOutcome::Declined(value.to_string()),
                CallOutcome::Failed { message } => wit::CallOutcome::Failed(message),
            },
            attempts: result
                .attempts
                .into_iter()
                .map(|a| wit::Attempt {
                    status: a.status,
                    error: a.error,
                    duration_ms: a.duration_ms,
                })
                .collect(),
        })
    }
}
