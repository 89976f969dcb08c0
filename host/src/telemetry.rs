//! Traces and metrics, with OpenTelemetry.
//!
//! **Traces** (on when an OTLP endpoint is configured with the standard
//! variables, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and `OTEL_TRACES_EXPORTER` is not
//! `none`): a span per request (a child of the caller's W3C
//! `traceparent`), for its authentication, the guest's execution, every
//! storage operation (named by its SQL statement and table, never its
//! values) and every external call attempt (which carries `traceparent`
//! on). Exported with OTLP over HTTP (protobuf) in batches, through the
//! same HTTPS client as externals. Off, no tracer exists and nothing is
//! recorded; an incoming `traceparent` is still passed on to externals.
//!
//! **Metrics** (on with `--metrics-listen` / `--metrics-path`, or an OTLP
//! endpoint for metrics): requests and their latency per tool and status,
//! the connection pool, the component's instances, external call attempts
//! and failures, the outbox's and the audit sequencer's backlog. Served in
//! Prometheus' text format, and pushed with OTLP every 60 s
//! (`OTEL_METRIC_EXPORT_INTERVAL`) when configured.
//!
//! Telemetry is one per process (as OpenTelemetry's own globals are):
//! [`init`] sets it up once, and the rest of the host reads it through
//! [`get`].

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::KeyValue;
use opentelemetry::context::{Context, FutureExt as _};
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use opentelemetry::trace::SpanKind as Kind;

mod traced;
pub use traced::Traced;

/// The process's telemetry.
static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Traces and metrics, as configured.
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    tracer_provider: Option<SdkTracerProvider>,
    metrics: Option<Metrics>,
    meter_provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    /// Where the Prometheus exporter gathers (with metrics served).
    registry: Option<prometheus::Registry>,
}

/// The instruments.
pub struct Metrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    attempts: Counter<u64>,
    failures: Counter<u64>,
    /// What the gauges read.
    pub gauges: Arc<Gauges>,
}

/// What the gauges report, read at each collection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings {
    /// Database connections in use.
    pub pool_in_use: i64,
    /// Idle database connections.
    pub pool_idle: i64,
    /// Requests waiting for a connection.
    pub pool_waiting: i64,
    /// The pool's size.
    pub pool_max: i64,
    /// Component instances running a request.
    pub instances_in_use: i64,
    /// Component instances ready in the pool.
    pub instances_idle: i64,
    /// Outbox messages not delivered yet (not failed for good).
    pub outbox_pending: i64,
    /// How long the oldest due one has waited, in milliseconds.
    pub outbox_lag_ms: i64,
    /// Audit entries queued for their place in the chain.
    pub audit_queued: i64,
    /// How long the oldest has waited, in milliseconds.
    pub audit_lag_ms: i64,
}

/// Where the gauges read: set by the server once it runs (until then,
/// zeros).
#[derive(Default)]
pub struct Gauges(RwLock<Option<Source>>);

type Source = Box<dyn Fn() -> Readings + Send + Sync>;

impl Gauges {
    /// Reads from `source` from now on.
    pub fn read_from(&self, source: impl Fn() -> Readings + Send + Sync + 'static) {
        if let Ok(mut s) = self.0.write() {
            *s = Some(Box::new(source));
        }
    }

    fn read(&self) -> Readings {
        self.0
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|f| f()))
            .unwrap_or_default()
    }
}

/// The gauges: name, description, unit, and which reading.
#[allow(clippy::type_complexity)]
const GAUGES: [(&str, &str, &str, fn(&Readings) -> i64); 10] = [
    (
        "sinew.db.pool.in_use",
        "Database connections in use",
        "",
        |r| r.pool_in_use,
    ),
    ("sinew.db.pool.idle", "Idle database connections", "", |r| {
        r.pool_idle
    }),
    (
        "sinew.db.pool.waiting",
        "Requests waiting for a database connection",
        "",
        |r| r.pool_waiting,
    ),
    (
        "sinew.db.pool.max",
        "The database connection pool's size",
        "",
        |r| r.pool_max,
    ),
    (
        "sinew.instances.in_use",
        "Component instances running a request",
        "",
        |r| r.instances_in_use,
    ),
    (
        "sinew.instances.idle",
        "Component instances ready for a request",
        "",
        |r| r.instances_idle,
    ),
    (
        "sinew.outbox.pending",
        "Outbox messages not delivered yet",
        "",
        |r| r.outbox_pending,
    ),
    (
        "sinew.outbox.lag",
        "How long the oldest due outbox message has waited",
        "ms",
        |r| r.outbox_lag_ms,
    ),
    (
        "sinew.audit.queued",
        "Audit entries waiting for their place in the chain",
        "",
        |r| r.audit_queued,
    ),
    (
        "sinew.audit.lag",
        "How long the oldest queued audit entry has waited",
        "ms",
        |r| r.audit_lag_ms,
    ),
];

/// What telemetry the server was asked for.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Metrics are served in Prometheus' format (a port or a path).
    pub prometheus: bool,
}

/// Whether an OTLP endpoint is configured for `signal` (`TRACES`,
/// `METRICS`) and its exporter is not turned off.
fn otlp_for(signal: &str) -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    let exporter = std::env::var(format!("OTEL_{signal}_EXPORTER")).unwrap_or_default();
    if exporter.split(',').any(|e| e.trim() == "none") {
        return false;
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

/// The service name spans and metrics carry: `OTEL_SERVICE_NAME`, else
/// Cloud Run's `K_SERVICE`, else `sinew`.
fn resource() -> opentelemetry_sdk::Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .or_else(|_| std::env::var("K_SERVICE"))
        .unwrap_or_else(|_| "sinew".to_owned());
    opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sets the process's telemetry up (the first call wins); the OTLP
/// exporters send through `client` on the current tokio runtime.
pub fn init(settings: &Settings, client: crate::tls::HttpsClient) -> Result<&'static Telemetry> {
    if let Some(t) = TELEMETRY.get() {
        return Ok(t);
    }
    let exporter_client = OtlpClient {
        client,
        runtime: tokio::runtime::Handle::current(),
    };
    let (tracer, tracer_provider) = if otlp_for("TRACES") {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(exporter_client.clone())
            .build()
            .context("the OTLP trace exporter")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        (Some(provider.tracer("sinew")), Some(provider))
    } else {
        (None, None)
    };
    let otlp_metrics = otlp_for("METRICS");
    let (metrics, meter_provider, registry) = if settings.prometheus || otlp_metrics {
        let mut builder =
            opentelemetry_sdk::metrics::SdkMeterProvider::builder().with_resource(resource());
        let registry = if settings.prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_target_info()
                .build()
                .context("the Prometheus exporter")?;
            builder = builder.with_reader(exporter);
            Some(registry)
        } else {
            None
        };
        if otlp_metrics {
            use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(exporter_client)
                .build()
                .context("the OTLP metric exporter")?;
            builder = builder.with_periodic_exporter(exporter);
        }
        let provider = builder.build();
        let metrics = Metrics::new(&provider.meter("sinew"));
        (Some(metrics), Some(provider), registry)
    } else {
        (None, None, None)
    };
    let t = Telemetry {
        tracer,
        tracer_provider,
        metrics,
        meter_provider,
        registry,
    };
    Ok(TELEMETRY.get_or_init(|| t))
}

/// The process's telemetry, once [`init`] ran.
pub fn get() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

/// The tracer, when traces are on.
pub fn tracer() -> Option<&'static SdkTracer> {
    get().and_then(|t| t.tracer.as_ref())
}

/// The instruments, when metrics are on.
pub fn metrics() -> Option<&'static Metrics> {
    get().and_then(|t| t.metrics.as_ref())
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.tracer.is_some()
    }

    /// The metrics in Prometheus' text format (`None`: not served).
    pub fn prometheus_text(&self) -> Option<String> {
        let registry = self.registry.as_ref()?;
        let families = registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .ok()
    }

    /// Exports what is left (spans in the batch, a last push of metrics),
    /// at shutdown.
    pub fn flush(&self) {
        if let Some(p) = &self.tracer_provider {
            let _ = p.force_flush();
        }
        if let Some(p) = &self.meter_provider {
            let _ = p.force_flush();
        }
    }
}

impl Metrics {
    fn new(meter: &Meter) -> Metrics {
        let gauges = Arc::new(Gauges::default());
        for (name, description, unit, read) in GAUGES {
            let g = gauges.clone();
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_unit(unit)
                .with_callback(move |o| o.observe(read(&g.read()), &[]))
                .build();
        }
        Metrics {
            requests: meter
                .u64_counter("sinew.requests")
                .with_description("Requests answered, by tool and status")
                .build(),
            duration: meter
                .f64_histogram("sinew.request.duration")
                .with_description("How long requests took to answer, by tool and status")
                .with_unit("s")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .build(),
            attempts: meter
                .u64_counter("sinew.external.attempts")
                .with_description("External call attempts, by service and operation")
                .build(),
            failures: meter
                .u64_counter("sinew.external.failures")
                .with_description(
                    "External call attempts that failed (no answer, or 5xx / 429), by service and operation",
                )
                .build(),
            gauges,
        }
    }

    /// A request answered: `tool` is `-` for a path no tool answers.
    pub fn request(&self, tool: &str, status: u16, seconds: f64) {
        let attrs = [
            KeyValue::new("tool", tool.to_owned()),
            KeyValue::new("status", i64::from(status)),
        ];
        self.requests.add(1, &attrs);
        self.duration.record(seconds, &attrs);
    }

    /// An external call attempt, and whether it failed.
    pub fn attempt(&self, service: &str, operation: &str, failed: bool) {
        let attrs = [
            KeyValue::new("service", service.to_owned()),
            KeyValue::new("operation", operation.to_owned()),
        ];
        self.attempts.add(1, &attrs);
        if failed {
            self.failures.add(1, &attrs);
        }
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a hyper::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(hyper::header::HeaderName::as_str)
            .collect()
    }
}

/// Writes W3C trace context into request headers.
struct HeaderInjector<'a>(&'a mut hyper::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(key.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The caller's trace context (`traceparent`, `tracestate`), if it sent
/// one: the parent of the request's span, and what externals get when
/// traces are off.
pub fn extract(headers: &hyper::HeaderMap) -> Option<Context> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Puts the current trace context (`traceparent`) into outgoing headers.
pub fn inject(headers: &mut hyper::HeaderMap) {
    let cx = Context::current();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// A request's span: started by [`request_span`], ended with its answer.
pub struct RequestSpan {
    cx: Context,
}

/// Starts the span of a request (a child of the caller's trace context,
/// if any), when traces are on.
pub fn request_span(method: &str, path: &str, parent: Option<&Context>) -> Option<RequestSpan> {
    let tracer = tracer()?;
    let parent = parent.cloned().unwrap_or_default();
    let span = tracer
        .span_builder(format!("{method} {path}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("url.path", path.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    Some(RequestSpan {
        cx: parent.with_span(span),
    })
}

impl RequestSpan {
    /// The context its work runs in.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The trace and span ids (hex), for the log line.
    pub fn ids(&self) -> (String, String, bool) {
        let sc = self.cx.span().span_context().clone();
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    }

    /// Ends it with the answer.
    pub fn end(self, status: u16, tool: Option<&str>, execution: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(t) = tool {
            span.update_name(Cow::Owned(t.to_owned()));
            span.set_attribute(KeyValue::new("sinew.tool", t.to_owned()));
        }
        if let Some(e) = execution {
            span.set_attribute(KeyValue::new("sinew.execution", e.to_owned()));
        }
        if status >= 500 {
            span.set_status(Status::error(format!("answered {status}")));
        }
        span.end();
    }
}

/// Runs `f` in a child span of the current context named `name` (with
/// `attributes`), when traces are on; otherwise just runs it.
pub async fn in_span<T>(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    f: impl Future<Output = T>,
) -> T {
    let Some(tracer) = tracer() else {
        return f.await;
    };
    let parent = Context::current();
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let out = f.with_context(cx.clone()).await;
    cx.span().end();
    out
}

/// Spawns `f` in the current trace context (a task does not inherit it),
/// when there is one: a request's span, or a caller's `traceparent`.
pub fn spawn_in_context<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let cx = Context::current();
    if cx.has_active_span() {
        tokio::spawn(f.with_context(cx))
    } else {
        tokio::spawn(f)
    }
}

/// Marks the current span failed (an external attempt that failed).
pub fn fail_current(message: &str) {
    if tracer().is_some() {
        Context::current()
            .span()
            .set_status(Status::error(message.to_owned()));
    }
}

/// Sets an attribute of the current span.
pub fn set_current(kv: KeyValue) {
    if tracer().is_some() {
        Context::current().span().set_attribute(kv);
    }
}

/// OTLP's HTTP client: our hyper client, run on the server's runtime (the
/// SDK's batch exporters call it from threads of their own).
#[derive(Clone)]
struct OtlpClient {
    client: crate::tls::HttpsClient,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: hyper::http::Request<Bytes>,
    ) -> Result<hyper::http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let request = hyper::Request::from_parts(parts, Full::new(body));
        let sent = self.runtime.spawn(async move {
            let response =
                tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, 4 << 20)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>(hyper::http::Response::from_parts(parts, body))
        });
        match sent.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        }
    }
}
