//! Outbound calls to external services over HTTP, as each operation of the
//! spec says: `{method} {base}{path}` with `{arg}` path segments taken out
//! of the arguments, the rest as a JSON or form body (the query string for
//! `GET` and `DELETE`), the external's auth header, the operation's
//! literal headers and the idempotency key in its header; a timeout per
//! attempt, and retries with backoff and jitter drawn here (the core stays
//! deterministic: it sees only the outcome and the attempts).
//!
//! A 2xx answer is success; another 4xx (but 408 and 429) is a refusal
//! (a declined card), not retried; 408, 429, 5xx, timeouts and connection
//! errors are retried while attempts remain, after the backoff or the
//! answer's `Retry-After` if that is longer. Each attempt carries its
//! number in `x-sinew-attempt` (1, 2, …). Secrets are read from the
//! environment once, at start, and never written anywhere.

use crate::runtime::external::ExternalBackend;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};
use serde_json::{Value, json};
use sinew_core::ports::{Attempt, CallOutcome, CallRequest, CallResult};
use sinew_core::spec::{Backoff, Encoding, ExternalAuth, Spec};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An attempt without a `timeout` in the spec gets this long.
pub(crate) const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a service (4 MiB).
const MAX_ANSWER: usize = 4 << 20;
/// What stands for an answer over [`MAX_ANSWER`], unread.
const TOO_LARGE: &str = "an answer over 4 MiB";

/// How an attempt's answer reads.
enum Answer {
    /// A 2xx: the service's answer.
    Accepted(Value),
    /// A refusal (4xx but 408 and 429): the service's answer.
    Refused(Value),
    /// A 2xx whose body is over [`MAX_ANSWER`]: the service acted, so the
    /// request is not sent again, but its answer is not read.
    AcceptedUnread,
    /// No answer, or one that may change (408, 429, 5xx): tried again.
    Failed,
}
/// The longest wait between attempts (a longer `Retry-After` included).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Calls the services of a spec.
pub struct HttpExternal {
    client: crate::tls::HttpsClient,
    services: HashMap<String, Service>,
    seed: AtomicU64,
}

/// One external, as configured at start.
struct Service {
    /// The base URL (no trailing `/`), if any is configured.
    base: Option<String>,
    /// The auth header, its secret read; `Err(variable)` when the secret's
    /// variable is not set (every call fails, without naming it).
    auth: Result<Option<(HeaderName, HeaderValue)>, String>,
    /// What an answer must not carry on into the flow, its audit entry or
    /// the outbox's listing: the secret, and the header value made of it
    /// (a service that echoes the request, a debug endpoint).
    secrets: Arc<[String]>,
    operations: HashMap<String, Endpoint>,
}

/// How one operation is called.
struct Endpoint {
    method: Method,
    /// The path, `{arg}` segments to fill.
    path: String,
    encoding: Encoding,
    headers: Vec<(HeaderName, HeaderValue)>,
    idempotency_header: HeaderName,
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
    /// What the configuration lacks, by external (sorted): its URL (no
    /// `--external`, variable or `baseUrl`), or its auth secret.
    pub fn missing(&self) -> Vec<String> {
        let mut names: Vec<&String> = self.services.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            if s.base.is_none() {
                out.push(format!(
                    "the URL of external `{name}` (`--external {name}=URL`, {}, or `baseUrl` in the spec)",
                    url_variable(name)
                ));
            }
            if let Err(variable) = &s.auth {
                out.push(format!(
                    "{variable} (the secret of external `{name}`'s auth)"
                ));
            }
        }
        out
    }

    /// A caller of `spec`'s externals: base URLs from `NAME=URL` settings,
    /// else `SINEW_EXTERNAL_<NAME>_URL`, else the spec's `baseUrl`; auth
    /// secrets from the environment.
    pub fn configured(
        spec: &Spec,
        given: &[String],
        client: crate::tls::HttpsClient,
        secrets: &crate::secrets::Secrets,
    ) -> anyhow::Result<HttpExternal> {
        let mut bases: HashMap<String, String> = HashMap::new();
        for g in given {
            let Some((name, url)) = g.split_once('=') else {
                anyhow::bail!(
                    "--external takes NAME=URL, not `{}`",
                    sinew_core::spec::url_without_credentials(g)
                );
            };
            if !spec.externals.contains_key(name) {
                anyhow::bail!("--external: the spec has no external `{name}`");
            }
            bases.insert(name.to_owned(), url.to_owned());
        }
        let mut services = HashMap::new();
        for (name, x) in &spec.externals {
            let base = bases
                .remove(name)
                .or_else(|| std::env::var(url_variable(name)).ok())
                .or_else(|| x.base_url.clone());
            if let Some(url) = &base
                && let Some(why) = sinew_core::spec::base_url_problem(url)
            {
                anyhow::bail!(
                    "the URL of external `{name}` {why} (`{}`)",
                    sinew_core::spec::url_without_credentials(url)
                );
            }
            let mut hidden = Vec::new();
            let auth = match &x.auth {
                None => Ok(None),
                Some(a) => match secrets.get(a.secret()) {
                    None => Err(a.secret().to_owned()),
                    Some(secret) => {
                        let (k, v) = auth_header(a, &secret)
                            .map_err(|e| anyhow::anyhow!("the secret of external `{name}`: {e}"))?;
                        hidden = secret_forms(&secret, &v);
                        Ok(Some((k, v)))
                    }
                },
            };
            let mut operations = HashMap::new();
            for (op_name, op) in &x.operations {
                let method = Method::from_bytes(op.method.as_bytes())
                    .map_err(|e| anyhow::anyhow!("`{name}.{op_name}`: {e}"))?;
                let mut headers = Vec::new();
                for (k, v) in &op.headers {
                    headers.push((
                        HeaderName::from_bytes(k.as_bytes())?,
                        HeaderValue::from_str(v)?,
                    ));
                }
                let idempotency_header = HeaderName::from_bytes(
                    op.idempotency_header
                        .as_deref()
                        .unwrap_or("Idempotency-Key")
                        .as_bytes(),
                )?;
                operations.insert(
                    op_name.clone(),
                    Endpoint {
                        method,
                        path: op.path.clone().unwrap_or_else(|| format!("/{op_name}")),
                        encoding: op.encoding,
                        headers,
                        idempotency_header,
                    },
                );
            }
            services.insert(
                name.clone(),
                Service {
                    base: base.map(|b| b.trim_end_matches('/').to_owned()),
                    auth,
                    secrets: hidden.into(),
                    operations,
                },
            );
        }
        Ok(HttpExternal {
            client,
            services,
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1,
            ),
        })
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

    /// Attempt `n` of call `r`: in a span of its own (traces on), counted
    /// in the metrics (on).
    async fn attempt(
        &self,
        call: &Prepared,
        r: &CallRequest,
        n: u32,
    ) -> (Attempt, Answer, Option<Duration>) {
        use opentelemetry::KeyValue;
        let attributes = vec![
            KeyValue::new("http.request.method", call.method.as_str().to_owned()),
            KeyValue::new("sinew.external.service", r.service.clone()),
            KeyValue::new("sinew.external.operation", r.operation.clone()),
            KeyValue::new("http.request.resend_count", i64::from(n - 1)),
        ];
        let name = format!("{} {}.{}", call.method, r.service, r.operation);
        let out =
            crate::telemetry::in_span(name, crate::telemetry::Kind::Client, attributes, async {
                let out = self.attempt_once(call, r, n).await;
                if let Some(status) = out.0.status {
                    crate::telemetry::set_current(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                if matches!(out.1, Answer::Failed) {
                    crate::telemetry::fail_current(out.0.error.as_deref().unwrap_or("failed"));
                }
                out
            })
            .await;
        if let Some(m) = crate::telemetry::metrics() {
            m.attempt(&r.service, &r.operation, matches!(out.1, Answer::Failed));
        }
        out
    }

    async fn attempt_once(
        &self,
        call: &Prepared,
        r: &CallRequest,
        n: u32,
    ) -> (Attempt, Answer, Option<Duration>) {
        let started = Instant::now();
        let elapsed = || started.elapsed().as_millis() as u64;
        let secrets = &call.secrets;
        let mut req = hyper::Request::builder()
            .method(call.method.clone())
            .uri(&call.url);
        if let Some(h) = req.headers_mut() {
            h.clone_from(&call.headers);
            // The trace goes on: this attempt's span (traces on), or the
            // caller's `traceparent` as it came.
            crate::telemetry::inject(h);
            h.insert(
                "x-sinew-attempt",
                HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("1")),
            );
        }
        let req = match req.body(Full::new(call.body.clone())) {
            Ok(req) => req,
            Err(e) => {
                let a = Attempt {
                    status: None,
                    error: Some(format!("bad request: {e}")),
                    duration_ms: 0,
                };
                return (a, Answer::Failed, None);
            }
        };
        let timeout = r
            .timeout_ms
            .map_or(DEFAULT_ATTEMPT_TIMEOUT, Duration::from_millis);
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            // An answer over the limit is not read (`None`); its status
            // still says what the service did.
            let body = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
                Ok(b) => Some(b.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => None,
                Err(e) => return Err(format!("reading the answer: {e}")),
            };
            Ok::<_, String>((status, body, retry_after))
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => (
                Attempt {
                    status: None,
                    error: Some(format!("no answer within {} ms", timeout.as_millis())),
                    duration_ms: elapsed(),
                },
                Answer::Failed,
                None,
            ),
            Ok(Err(e)) => (
                Attempt {
                    status: None,
                    error: Some(e),
                    duration_ms: elapsed(),
                },
                Answer::Failed,
                None,
            ),
            Ok(Ok((status, None, wait))) => {
                let attempt = |error: String| Attempt {
                    status: Some(status),
                    error: Some(error),
                    duration_ms: elapsed(),
                };
                match status {
                    200..=299 => (
                        attempt(format!(
                            "the service accepted it ({status}) with {TOO_LARGE}, unread"
                        )),
                        Answer::AcceptedUnread,
                        None,
                    ),
                    400..=499 if status != 408 && status != 429 => (
                        attempt(format!("the service refused ({status})")),
                        Answer::Refused(json!({ "omitted": TOO_LARGE })),
                        None,
                    ),
                    _ => (
                        attempt(format!("the service answered {status}")),
                        Answer::Failed,
                        wait,
                    ),
                }
            }
            Ok(Ok((status, Some(body), wait))) => {
                let value: Value = if body.is_empty() {
                    Value::Null
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(mut v) => {
                            redact(&mut v, secrets);
                            v
                        }
                        // Not JSON: its text, redacted whole, then cut (no
                        // part of a secret stays).
                        Err(_) => {
                            let text = String::from_utf8_lossy(&body);
                            let text =
                                redacted(&text, secrets).unwrap_or_else(|| text.into_owned());
                            Value::String(text.chars().take(1000).collect())
                        }
                    }
                };
                let attempt = |error: Option<String>| Attempt {
                    status: Some(status),
                    error,
                    duration_ms: elapsed(),
                };
                match status {
                    200..=299 => (attempt(None), Answer::Accepted(value), None),
                    400..=499 if status != 408 && status != 429 => (
                        attempt(Some(format!("the service refused ({status})"))),
                        Answer::Refused(value),
                        None,
                    ),
                    // 408, 429, 5xx, and anything unexpected (1xx, 3xx):
                    // a failed attempt, retried.
                    _ => (
                        attempt(Some(format!("the service answered {status}"))),
                        Answer::Failed,
                        wait,
                    ),
                }
            }
        }
    }
}

/// One call's HTTP request, made once for all its attempts.
struct Prepared {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    /// The service's [`Service::secrets`].
    secrets: Arc<[String]>,
}

impl HttpExternal {
    /// The request of call `r`, or why it cannot be made (the words go in
    /// the audit entry: they name no setting and no secret).
    fn prepare(&self, r: &CallRequest) -> Result<Prepared, String> {
        let service = self
            .services
            .get(&r.service)
            .ok_or_else(|| format!("no external `{}`", r.service))?;
        let base = service
            .base
            .as_deref()
            .ok_or_else(|| format!("external `{}` has no URL configured", r.service))?;
        let auth = service
            .auth
            .as_ref()
            .map_err(|_| format!("external `{}` has no credentials configured", r.service))?;
        let op = service
            .operations
            .get(&r.operation)
            .ok_or_else(|| format!("`{}` has no operation `{}`", r.service, r.operation))?;
        let mut args = match &r.args {
            Value::Object(m) => m.clone(),
            Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other.clone());
                m
            }
        };
        // `{arg}` segments come out of the arguments.
        let mut path = String::new();
        for seg in op.path.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let v = args
                        .remove(name)
                        .filter(|v| !v.is_null())
                        .ok_or_else(|| format!("the argument `{name}` of the path is missing"))?;
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    // Dot-segments would move the call elsewhere on the
                    // service (RFC 3986 §5.2.4), and an empty one too on
                    // many servers: refused, not sent.
                    if sinew_core::spec::unfit_path_segment(&text) {
                        return Err(format!(
                            "the argument `{name}` of the path is {}: a segment cannot be empty, `.` or `..`",
                            Value::from(text)
                        ));
                    }
                    path.extend(form_urlencoded::byte_serialize(text.as_bytes()).map(|s| {
                        // A space in a path segment is %20, not `+`.
                        if s == "+" { "%20" } else { s }
                    }));
                }
                None => path.push_str(seg),
            }
        }
        if op.path.ends_with('/') {
            path.push('/');
        }
        let mut url = format!("{base}{path}");
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/json"));
        headers.insert(
            "user-agent",
            HeaderValue::from_static(concat!("sinew/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some((k, v)) = auth {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &op.headers {
            headers.insert(k.clone(), v.clone());
        }
        if let Some(k) = &r.idempotency_key {
            let v = HeaderValue::from_str(k)
                .map_err(|_| "the idempotency key is not a valid header value".to_string())?;
            headers.insert(op.idempotency_header.clone(), v);
        }
        let args = Value::Object(args);
        let body = if op.method == Method::GET || op.method == Method::DELETE {
            let query = form_encode(&args);
            if !query.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&query);
            }
            Bytes::new()
        } else {
            match op.encoding {
                Encoding::Json => {
                    headers.insert("content-type", HeaderValue::from_static("application/json"));
                    Bytes::from(args.to_string())
                }
                Encoding::Form => {
                    headers.insert(
                        "content-type",
                        HeaderValue::from_static("application/x-www-form-urlencoded"),
                    );
                    Bytes::from(form_encode(&args))
                }
            }
        };
        Ok(Prepared {
            method: op.method.clone(),
            url,
            headers,
            body,
            secrets: service.secrets.clone(),
        })
    }
}

/// Secrets shorter than this are not looked for in answers: replacing
/// every `abc` of an answer would garble it, and a secret that short is
/// guessed faster than it is echoed.
const SHORTEST_REDACTED: usize = 8;

/// The texts made of a `secret` that an answer must not carry: the
/// secret, and the auth header's value when it differs (a basic auth's
/// base64, which holds the user too).
fn secret_forms(secret: &str, header: &HeaderValue) -> Vec<String> {
    let mut forms = Vec::new();
    if secret.len() >= SHORTEST_REDACTED {
        forms.push(secret.to_owned());
    }
    if let Ok(h) = header.to_str()
        && let Some(encoded) = h.strip_prefix("Basic ")
        && encoded.len() >= SHORTEST_REDACTED
    {
        forms.push(encoded.to_owned());
    }
    forms
}

/// `s` with every occurrence of `secrets` replaced by `[redacted]`, or
/// `None` when it holds none.
fn redacted(s: &str, secrets: &[String]) -> Option<String> {
    secrets.iter().any(|x| s.contains(x.as_str())).then(|| {
        secrets
            .iter()
            .fold(s.to_owned(), |t, x| t.replace(x.as_str(), "[redacted]"))
    })
}

/// [`redacted`] on every string of `v`, keys included.
fn redact(v: &mut Value, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    match v {
        Value::String(s) => {
            if let Some(c) = redacted(s, secrets) {
                *s = c;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secrets)),
        Value::Object(m) => {
            if m.keys().any(|k| redacted(k, secrets).is_some()) {
                for (k, mut x) in std::mem::take(m) {
                    redact(&mut x, secrets);
                    m.insert(redacted(&k, secrets).unwrap_or(k), x);
                }
            } else {
                m.values_mut().for_each(|x| redact(x, secrets));
            }
        }
        _ => {}
    }
}

/// The auth header of `auth` with its secret, or why the secret cannot be
/// a header value.
fn auth_header(auth: &ExternalAuth, secret: &str) -> Result<(HeaderName, HeaderValue), String> {
    use base64::Engine as _;
    let (name, value) = match auth {
        ExternalAuth::Bearer { .. } => (hyper::header::AUTHORIZATION, format!("Bearer {secret}")),
        // RFC 7617: the service splits at the first `:` (the checker
        // refuses such a user already).
        ExternalAuth::Basic { user, .. } if user.contains(':') => {
            return Err("its basic-auth user contains `:`, where the password begins".into());
        }
        ExternalAuth::Basic { user, .. } => (
            hyper::header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
            ),
        ),
        ExternalAuth::Header { name, .. } => (
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
            secret.to_owned(),
        ),
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "it is not a valid header value (a line break?)".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// A JSON object as `application/x-www-form-urlencoded`, as Stripe reads
/// it: nested keys `a[b]`, arrays `a[0]`, booleans `true`/`false`, numbers
/// in plain decimal, nulls omitted.
pub fn form_encode(v: &Value) -> String {
    fn flatten(prefix: &str, v: &Value, out: &mut form_urlencoded::Serializer<'_, String>) {
        match v {
            Value::Null => {}
            Value::Bool(b) => {
                out.append_pair(prefix, if *b { "true" } else { "false" });
            }
            Value::Number(n) => {
                out.append_pair(prefix, &plain(n));
            }
            Value::String(s) => {
                out.append_pair(prefix, s);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), item, out);
                }
            }
            Value::Object(m) => {
                for (k, item) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    flatten(&key, item, out);
                }
            }
        }
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    flatten("", v, &mut out);
    out.finish()
}

/// A number as plain decimal digits: JSON writes a small or large one with
/// an exponent (`1e-7`), which Stripe, and form readers generally, refuse.
/// (Rust writes an `f64` without one, and as the shortest text that reads
/// back as the same number.)
fn plain(n: &serde_json::Number) -> String {
    let text = n.to_string();
    match n.as_f64() {
        Some(f) if text.contains(['e', 'E']) => f.to_string(),
        _ => text,
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[async_trait::async_trait]
impl ExternalBackend for HttpExternal {
    async fn call(&self, r: &CallRequest) -> CallResult {
        let prepared = match self.prepare(r) {
            Ok(p) => p,
            Err(message) => {
                return CallResult {
                    outcome: CallOutcome::Failed { message },
                    attempts: Vec::new(),
                };
            }
        };
        let mut attempts = Vec::new();
        let max = r.max_attempts.max(1);
        for n in 1..=max {
            let (attempt, answer, wait) = self.attempt(&prepared, r, n).await;
            attempts.push(attempt);
            match answer {
                Answer::Accepted(value) => {
                    return CallResult {
                        outcome: CallOutcome::Ok { value },
                        attempts,
                    };
                }
                Answer::Refused(value) => {
                    return CallResult {
                        outcome: CallOutcome::Declined { value },
                        attempts,
                    };
                }
                // The service acted: another attempt would act again.
                // The flow cannot read the answer, so the call failed.
                Answer::AcceptedUnread => {
                    return CallResult {
                        outcome: CallOutcome::Failed {
                            message: format!(
                                "the service accepted the call with {TOO_LARGE}, which is not read (not tried again: the service acted)"
                            ),
                        },
                        attempts,
                    };
                }
                Answer::Failed if n < max => {
                    let wait = self.backoff(r, n).max(wait.unwrap_or_default());
                    tokio::time::sleep(wait.min(MAX_BACKOFF)).await
                }
                Answer::Failed => {}
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

    async fn attempt(&self, r: &CallRequest, n: u32) -> (CallResult, Option<Duration>) {
        let prepared = match self.prepare(r) {
            Ok(p) => p,
            Err(message) => {
                let outcome = CallOutcome::Failed { message };
                let attempts = Vec::new();
                return (CallResult { outcome, attempts }, None);
            }
        };
        let (attempt, answer, wait) = HttpExternal::attempt(self, &prepared, r, n.max(1)).await;
        let outcome = match answer {
            Answer::Accepted(value) => CallOutcome::Ok { value },
            Answer::Refused(value) => CallOutcome::Declined { value },
            // A delivery: the service accepted it, whatever its answer.
            Answer::AcceptedUnread => CallOutcome::Ok {
                value: json!({ "omitted": TOO_LARGE }),
            },
            Answer::Failed => CallOutcome::Failed {
                message: attempt
                    .error
                    .clone()
                    .unwrap_or_else(|| "the call failed".into()),
            },
        };
        let attempts = vec![attempt];
        (CallResult { outcome, attempts }, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The externals of `spec`, with no overrides and no secrets.
    fn plain(spec: &sinew_core::spec::Spec) -> HttpExternal {
        HttpExternal::configured(
            spec,
            &[],
            crate::tls::client(None).unwrap(),
            &crate::secrets::Secrets::default(),
        )
        .unwrap()
    }

    /// A service that echoes what it was sent (a debug endpoint, a
    /// misconfigured proxy): the credential it echoes reaches neither the
    /// flow nor, through it, the audit entry.
    #[tokio::test]
    async fn an_answer_never_carries_the_credential() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("")
                    .to_owned();
                let (ctype, body) = if head.starts_with("POST /json") {
                    let key = auth.rsplit(' ').next().unwrap_or("");
                    (
                        "application/json",
                        json!({"echo": auth, "nested": [{"key": key}], key: 1}).to_string(),
                    )
                } else if head.starts_with("POST /long") {
                    // The key's first character at the 1 000th and last
                    // one kept.
                    ("text/plain", format!("{}{auth}", "x".repeat(983)))
                } else {
                    ("text/plain", format!("you sent {auth}"))
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ECHO_KEY"), "sk_live_0123456789\n").unwrap();
        std::fs::write(dir.path().join("ECHO_PASSWORD"), "hunter2hunter2").unwrap();
        let spec = sinew_core::spec::load(
            &json!({"sinew": "0.2", "name": "x", "externals": {
                "bearer": {"kind": "http", "baseUrl": format!("http://127.0.0.1:{port}"),
                           "auth": {"bearer": {"secret": "ECHO_KEY"}},
                           "operations": {"json": {}, "text": {}, "long": {}}},
                "basic": {"kind": "http", "baseUrl": format!("http://127.0.0.1:{port}"),
                          "auth": {"basic": {"user": "me", "secret": "ECHO_PASSWORD"}},
                          "operations": {"json": {}}}}})
            .to_string(),
        )
        .spec;
        let secrets = crate::secrets::Secrets {
            dir: Some(dir.path().to_owned()),
        };
        let x = HttpExternal::configured(&spec, &[], crate::tls::client(None).unwrap(), &secrets)
            .unwrap();
        let call = |service: &str, operation: &str| CallRequest {
            service: service.into(),
            operation: operation.into(),
            args: json!({}),
            timeout_ms: None,
            max_attempts: 1,
            backoff: Backoff::None,
            initial_backoff_ms: 0,
            idempotency_key: None,
        };
        let answer = |r: CallResult| match r.outcome {
            CallOutcome::Ok { value } => value,
            other => panic!("{other:?}"),
        };
        let v = answer(x.call(&call("bearer", "json")).await);
        assert_eq!(
            v,
            json!({"echo": "Bearer [redacted]", "nested": [{"key": "[redacted]"}], "[redacted]": 1})
        );
        let v = answer(x.call(&call("bearer", "text")).await);
        assert_eq!(v, json!("you sent Bearer [redacted]"));
        // Text is redacted whole before it is cut to 1 000 characters: the
        // cut leaves no part of the key.
        let v = answer(x.call(&call("bearer", "long")).await);
        let text = v.as_str().unwrap();
        assert!(
            text.chars().count() == 1000 && text.ends_with("Bearer [redacted]"),
            "{text}"
        );
        let v = answer(x.call(&call("basic", "json")).await);
        assert_eq!(v["echo"], "Basic [redacted]");
        assert_eq!(v["nested"][0]["key"], "[redacted]");
    }

    /// An answer over 4 MiB is not read. After a 2xx the service acted: a
    /// call fails without another attempt (which would act again), a
    /// delivery is delivered; a refusal stays a refusal.
    #[tokio::test]
    async fn an_answer_too_large_is_not_read_and_a_success_not_sent_again() {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicUsize::new(0));
        let seen = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    seen.fetch_add(1, Ordering::SeqCst);
                    let status = if buf[..n].starts_with(b"POST /refuse") {
                        "400 Bad Request"
                    } else {
                        "200 OK"
                    };
                    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_ANSWER));
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        let spec = sinew_core::spec::load(
            &json!({"sinew": "0.2", "name": "x", "externals": {
                "big": {"kind": "http", "baseUrl": format!("http://127.0.0.1:{port}"),
                        "operations": {"accept": {}, "refuse": {}}}}})
            .to_string(),
        )
        .spec;
        let x = plain(&spec);
        let call = |operation: &str| CallRequest {
            service: "big".into(),
            operation: operation.into(),
            args: json!({}),
            timeout_ms: None,
            max_attempts: 3,
            backoff: Backoff::None,
            initial_backoff_ms: 0,
            idempotency_key: Some("k-1".into()),
        };
        let r = x.call(&call("accept")).await;
        match &r.outcome {
            CallOutcome::Failed { message } => {
                assert!(message.contains("over 4 MiB") && message.contains("not tried again"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(sent.load(Ordering::SeqCst), 1, "sent once");
        let (r, _) = ExternalBackend::attempt(&x, &call("accept"), 1).await;
        match r.outcome {
            CallOutcome::Ok { value } => assert_eq!(value, json!({"omitted": TOO_LARGE})),
            other => panic!("{other:?}"),
        }
        let r = x.call(&call("refuse")).await;
        match r.outcome {
            CallOutcome::Declined { value } => assert_eq!(value, json!({"omitted": TOO_LARGE})),
            other => panic!("{other:?}"),
        }
        assert_eq!(sent.load(Ordering::SeqCst), 3);
    }

    /// A URL with credentials, from `--external` or a variable, is refused
    /// (they go in `auth`), and the refusal does not show them.
    #[test]
    fn urls_with_credentials_are_refused_unshown() {
        let spec = sinew_core::spec::load(
            &json!({"sinew": "0.2", "name": "x", "externals": {
                "fs": {"kind": "http", "operations": {"go": {}}}}})
            .to_string(),
        )
        .spec;
        for given in [
            "fs=http://user:SECRETPASS@127.0.0.1:9000",
            "fs=https://user:SECRET/PASS@x.example.com/v1",
            "http://user:SECRETPASS@127.0.0.1",
        ] {
            let e = HttpExternal::configured(
                &spec,
                &[given.to_owned()],
                crate::tls::client(None).unwrap(),
                &crate::secrets::Secrets::default(),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(!e.contains("SECRET") && !e.contains("user:S"), "{e}");
            if given.starts_with("fs=") {
                assert!(e.contains("credentials go in the external's `auth`"), "{e}");
            }
        }
    }

    #[test]
    fn base_urls_are_checked_whole() {
        let problem = sinew_core::spec::base_url_problem;
        for ok in [
            "http://127.0.0.1:8080",
            "https://api.example.com/v2/",
            "http://[::1]:9000/x",
            "https://[::1]",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("http://127.0.0.1:99999", "port"),
            ("http://[::1", "valid URL"),
            ("http://127.0.0.1:1/p?key=abc", "query"),
            ("https://x.example.com/#a", "fragment"),
            ("http://", "no host"),
            ("ftp://x.example.com", "https://"),
            ("http://u:p@127.0.0.1", "credentials"),
            ("https://u@x.example.com/v1", "credentials"),
        ] {
            let got = problem(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got}");
        }
    }

    /// Stripe's form encoding: nested keys, arrays (of objects too),
    /// booleans as words, numbers as written, nulls left out, everything
    /// percent-encoded.
    #[test]
    fn form_encoding_as_stripe_reads_it() {
        let v = json!({
            "amount": 1200, "ratio": 0.5, "capture": false, "note": null,
            "metadata": {"order": "o 1", "tags": ["a&b", "c"]},
            "items": [{"price": "p_1", "quantity": 2}],
            "empty": {}
        });
        let text = form_encode(&v);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect();
        let mut sorted = pairs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                ("amount", "1200"),
                ("capture", "false"),
                ("items[0][price]", "p_1"),
                ("items[0][quantity]", "2"),
                ("metadata[order]", "o 1"),
                ("metadata[tags][0]", "a&b"),
                ("metadata[tags][1]", "c"),
                ("ratio", "0.5"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(text.contains("metadata%5Btags%5D%5B0%5D=a%26b"), "{text}");
        assert_eq!(form_encode(&json!({})), "");
        // Plain decimals: never an exponent, which Stripe refuses.
        assert_eq!(
            form_encode(&json!({"a": 0.000_000_1, "b": 1e21, "c": -2.5e-3, "d": 7})),
            "a=0.0000001&b=1000000000000000000000&c=-0.0025&d=7"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert_eq!(retry_after(&past), Some(Duration::ZERO));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let wait = retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(retry_after("soon"), None);
    }

    /// A path argument is taken out of the arguments and percent-encoded as
    /// a segment; a missing one, a missing URL or missing credentials fail
    /// the call without naming a setting.
    #[test]
    fn requests_are_made_as_the_operation_says() {
        let spec = sinew_core::spec::load(
            &json!({"sinew": "0.2", "name": "x", "externals": {
                "api": {"kind": "http", "baseUrl": "https://api.example.com/v2/",
                        "operations": {
                          "get": {"method": "GET", "path": "/things/{id}/", "sideEffects": false},
                          "put": {"method": "PUT", "path": "/things/{id}", "encoding": "form",
                                  "idempotencyHeader": "X-Key"}}},
                "locked": {"kind": "http", "baseUrl": "https://l.example.com",
                           "auth": {"bearer": {"secret": "SINEW_UNIT_TEST_NEVER_SET"}},
                           "operations": {"go": {}}},
                "nowhere": {"kind": "http", "operations": {"go": {}}}}})
            .to_string(),
        )
        .spec;
        let x = plain(&spec);
        let call = |service: &str, operation: &str, args: Value| CallRequest {
            service: service.into(),
            operation: operation.into(),
            args,
            timeout_ms: None,
            max_attempts: 1,
            backoff: Backoff::None,
            initial_backoff_ms: 0,
            idempotency_key: Some("k-1".into()),
        };
        let p = x
            .prepare(&call("api", "get", json!({"id": "a b/c", "q": 1})))
            .unwrap();
        assert_eq!(p.url, "https://api.example.com/v2/things/a%20b%2Fc/?q=1");
        assert!(p.body.is_empty() && !p.headers.contains_key("content-type"));
        let p = x
            .prepare(&call("api", "put", json!({"id": 7, "name": "n"})))
            .unwrap();
        assert_eq!(p.url, "https://api.example.com/v2/things/7");
        assert_eq!(&p.body[..], b"name=n");
        assert_eq!(p.headers["x-key"], "k-1");
        assert!(!p.headers.contains_key("idempotency-key"));
        let e = x
            .prepare(&call("api", "put", json!({"name": "n"})))
            .err()
            .unwrap();
        assert!(e.contains("`id`"), "{e}");
        // A segment that would move the call elsewhere is not sent.
        for id in ["..", ".", ""] {
            let e = x
                .prepare(&call("api", "put", json!({"id": id})))
                .err()
                .unwrap();
            assert!(e.contains("cannot be empty, `.` or `..`"), "{e}");
        }
        let p = x
            .prepare(&call("api", "put", json!({"id": "..."})))
            .unwrap();
        assert_eq!(p.url, "https://api.example.com/v2/things/...");
        let e = x.prepare(&call("locked", "go", json!({}))).err().unwrap();
        assert!(
            e.contains("no credentials") && !e.contains("SINEW_UNIT"),
            "{e}"
        );
        let e = x.prepare(&call("nowhere", "go", json!({}))).err().unwrap();
        assert!(e.contains("no URL") && !e.contains("SINEW_EXTERNAL"), "{e}");
        let missing = x.missing();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("SINEW_UNIT_TEST_NEVER_SET"));
        assert!(missing[1].contains("SINEW_EXTERNAL_NOWHERE_URL"));
    }
}
