//! The `external` import.

use super::HostState;
use super::bindings::sinew::executor::external::{self as wit, Host};
use sinew_core::ports::{self, CallOutcome, CallRequest, CallResult};

/// Where outbound calls go.
#[async_trait::async_trait]
pub trait ExternalBackend: Send + Sync + 'static {
    /// Makes a call with its attempts.
    async fn call(&self, request: &CallRequest) -> CallResult;

    /// Makes one attempt, the `attempt`-th of a delivery that spans
    /// attempts made at other times (the outbox): the service is told
    /// which (`X-Sinew-Attempt`), and its `Retry-After`, if any, comes
    /// back. No attempt in the result: the request could not be made. A
    /// success is one whatever its answer: one too large to read comes
    /// back as `{"omitted": …}` (the service acted; the message is
    /// delivered).
    async fn attempt(
        &self,
        request: &CallRequest,
        _attempt: u32,
    ) -> (CallResult, Option<std::time::Duration>) {
        (self.call(request).await, None)
    }
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

sinew_core::wit_external_conversions!();

impl Host for HostState {
    async fn call(&mut self, r: wit::CallRequest) -> wasmtime::Result<wit::CallResult> {
        let request = call_request(r);
        self.call
            .called
            .push((request.service.clone(), request.operation.clone()));
        Ok(call_result(self.backends.external.call(&request).await))
    }
}
