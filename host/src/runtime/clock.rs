//! The `clock` import.

use super::HostState;
use super::bindings::sinew::executor::clock::Host;

/// Where time comes from.
pub trait ClockBackend: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl ClockBackend for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A settable clock (tests, conformance).
#[derive(Default)]
pub struct ManualClock(pub std::sync::atomic::AtomicI64);

impl ClockBackend for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Host for HostState {
    async fn now_ms(&mut self) -> wasmtime::Result<i64> {
        let now = self.backends.clock.now_ms();
        self.call.started.get_or_insert(now);
        Ok(now)
    }
}
