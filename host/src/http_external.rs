//! Outbound calls to external services over HTTP: `POST {base}/{operation}`
//! with the arguments as JSON, the idempotency key as a header, a timeout
//! per attempt, and retries with backoff and jitter drawn here (the core
//! stays deterministic: it sees only the outcome and the attempts).
//!
//! A 2xx answer is success; another 4xx (but 408 and 429) is a refusal
//! (a declined card), not retried; 408, 429, 5xx, timeouts and connection
//! errors are retried while attempts remain. Each attempt carries its number
//! in `x-sinew-attempt` (1, 2, …).

use crate::runtime::external::ExternalBackend;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use sinew_core::ports::{Attempt, CallOutcome, CallRequest, CallResult};
use sinew_core::spec::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An attempt without a `timeout` in the spec gets this long.
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a service.
const MAX_ANSWER: usize = 4 << 20;
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Calls services at configured base URLs.
pub struct HttpExternal {
    client: crate::tls::HttpsClient,
    bases: HashMap<String, String>,
    seed: AtomicU64,
}

/// The environment variable holding a service's base URL:
/// `SINEW_EXTERNAL_<NAME>_URL`, the name upper-cased, other characters `_`.
pub fn url_variable(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SINEW_EXTERNAL_{name}_URL")
}

impl HttpExternal {
    /// A caller with the base URL of each service.
    pub fn new(bases: HashMap<String, String>, client: crate::tls::HttpsClient) -> HttpExternal {
        HttpExternal {
            client,
            bases,
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1,
            ),
        }
    }

    /// The base URLs of the spec's externals: `NAME=URL` settings, then
    /// `SINEW_EXTERNAL_<NAME>_URL` from the environment.
    pub fn configured(
        spec: &sinew_core::spec::Spec,
        given: &[String],
        client: crate::tls::HttpsClient,
    ) -> anyhow::Result<HttpExternal> {
        let mut bases: HashMap<String, String> = spec
            .externals
            .keys()
            .filter_map(|name| {
                let url = std::env::var(url_variable(name)).ok()?;
                Some((name.clone(), url))
            })
            .collect();
        for g in given {
            let Some((name, url)) = g.split_once('=') else {
                anyhow::bail!("--external takes NAME=URL, not `{g}`");
            };
            if !spec.externals.contains_key(name) {
                anyhow::bail!("--external: the spec has no external `{name}`");
            }
            bases.insert(name.to_owned(), url.to_owned());
        }
        for (name, url) in &mut bases {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                anyhow::bail!(
                    "the URL of external `{name}` must start with https:// or http:// (`{url}`)"
                );
            }
            *url = url.trim_end_matches('/').to_owned();
        }
        Ok(HttpExternal::new(bases, client))
    }

    /// A number in [0, 1): jitter (xorshift, not for secrets).
    fn random(&self) -> f64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn backoff(&self, r: &CallRequest, failed: u32) -> Duration {
        let base = Duration::from_millis(r.initial_backoff_ms);
        let wait = match r.backoff {
            Backoff::None => return Duration::ZERO,
            Backoff::Fixed => base,
            Backoff::Exponential => base.saturating_mul(1u32 << failed.saturating_sub(1).min(16)),
        }
        .min(MAX_BACKOFF);
        // Equal jitter: half fixed, half random.
        wait / 2 + wait.mul_f64(self.random() / 2.0)
    }

    async fn attempt(
        &self,
        url: &str,
        r: &CallRequest,
        n: u32,
    ) -> (Attempt, Option<Result<Value, Value>>) {
        let started = Instant::now();
        let elapsed = || started.elapsed().as_millis() as u64;
        let mut req = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-sinew-attempt", n.to_string())
            .header("user-agent", concat!("sinew/", env!("CARGO_PKG_VERSION")));
        if let Some(k) = &r.idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let req = match req.body(Full::new(Bytes::from(r.args.to_string()))) {
            Ok(req) => req,
            Err(e) => {
                let a = Attempt {
                    status: None,
                    error: Some(format!("bad request: {e}")),
                    duration_ms: 0,
                };
                return (a, None);
            }
        };
        let timeout = r
            .timeout_ms
            .map_or(DEFAULT_ATTEMPT_TIMEOUT, Duration::from_millis);
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => (
                Attempt {
                    status: None,
                    error: Some(format!("no answer within {} ms", timeout.as_millis())),
                    duration_ms: elapsed(),
                },
                None,
            ),
            Ok(Err(e)) => (
                Attempt {
                    status: None,
                    error: Some(e),
                    duration_ms: elapsed(),
                },
                None,
            ),
            Ok(Ok((status, body))) => {
                let value: Value = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).chars().take(1000).collect())
                    })
                };
                let attempt = |error: Option<String>| Attempt {
                    status: Some(status),
                    error,
                    duration_ms: elapsed(),
                };
                match status {
                    200..=299 => (attempt(None), Some(Ok(value))),
                    400..=499 if status != 408 && status != 429 => (
                        attempt(Some(format!("the service refused ({status})"))),
                        Some(Err(value)),
                    ),
                    // 408, 429, 5xx, and anything unexpected (1xx, 3xx):
                    // a failed attempt, retried.
                    _ => (
                        attempt(Some(format!("the service answered {status}"))),
                        None,
                    ),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ExternalBackend for HttpExternal {
    async fn call(&self, r: &CallRequest) -> CallResult {
        let Some(base) = self.bases.get(&r.service) else {
            return CallResult {
                outcome: CallOutcome::Failed {
                    message: format!(
                        "no URL is configured for external `{}` (set {})",
                        r.service,
                        url_variable(&r.service)
                    ),
                },
                attempts: Vec::new(),
            };
        };
        let url = format!("{base}/{}", r.operation);
        let mut attempts = Vec::new();
        let max = r.max_attempts.max(1);
        for n in 1..=max {
            let (attempt, answer) = self.attempt(&url, r, n).await;
            attempts.push(attempt);
            match answer {
                Some(Ok(value)) => {
                    return CallResult {
                        outcome: CallOutcome::Ok { value },
                        attempts,
                    };
                }
                Some(Err(value)) => {
                    return CallResult {
                        outcome: CallOutcome::Declined { value },
                        attempts,
                    };
                }
                None if n < max => tokio::time::sleep(self.backoff(r, n)).await,
                None => {}
            }
        }
        let message = attempts
            .last()
            .and_then(|a| a.error.clone())
            .unwrap_or_else(|| "the call failed".into());
        CallResult {
            outcome: CallOutcome::Failed {
                message: format!("{message} (after {} attempt(s))", attempts.len()),
            },
            attempts,
        }
    }
}
