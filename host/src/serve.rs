//! `sinew serve`: the tools of a spec as an HTTP API on Postgres.
//!
//! Each request is routed by the tools' `http` triggers, its token verified,
//! its body read (size and depth limited) and run through the core's
//! component; every request routed to a tool leaves exactly one final audit
//! entry, the ones turned away here included. One JSON log line per request
//! on stdout, in the shape Cloud Logging reads.

use crate::runtime::Reply;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use sinew_core::contract::{Auth, Request};
use sinew_core::problem::{Code, Problem};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

use crate::jwt::JwtConfig;
use crate::pg::PgBackend;
use crate::pg::embedded::Embedded;
use crate::runtime::{Backends, Engine, Executor, Snapshot};

mod reviews;

/// The system clock, in milliseconds since the epoch.
pub(crate) fn system_now_ms() -> i64 {
    crate::runtime::clock::ClockBackend::now_ms(&crate::runtime::clock::SystemClock)
}

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);
/// Instances made ready in the background at start.
const WARM_INSTANCES: usize = 16;

/// Serve a spec's tools over HTTP, on Postgres.
///
/// Without DATABASE_URL, a private Postgres is started in `<data-dir>/pg`
/// (data kept across restarts) and stopped on exit. Migrations that lose no
/// data are applied at start; others are refused (see `sinew migrate`).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The spec (a JSON file).
    #[arg(env = "SINEW_SPEC")]
    pub spec: PathBuf,
    /// The port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, env = "SINEW_LISTEN", default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// Postgres: a URL (`postgres://user:pass@host/db`) or key=value
    /// settings (`host=/cloudsql/project:region:instance dbname=app`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded Postgres and the compiled-component cache live.
    #[arg(long, env = "SINEW_DATA_DIR", default_value = ".sinew")]
    pub data_dir: PathBuf,
    /// Where the compiled component is cached (default `<data-dir>/cache`).
    #[arg(long, env = "SINEW_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// HS256 secret for bearer tokens.
    #[arg(long, env = "SINEW_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A JWKS: a file, or an https:// URL (fetched at start and every 10
    /// minutes). RS256/ES256 keys by `kid`.
    #[arg(long, env = "SINEW_JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// Extra trusted certificates (PEM) for https to externals and JWKS.
    #[arg(long, env = "SINEW_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Required `iss` of tokens.
    #[arg(long, env = "SINEW_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "SINEW_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim holding the caller's roles (an array of strings).
    #[arg(long, env = "SINEW_JWT_ROLES_CLAIM", default_value = "roles")]
    pub jwt_roles_claim: String,
    /// Log level: error, warn, info or debug (any other value is refused).
    #[arg(
        long,
        env = "SINEW_LOG",
        default_value = "info",
        ignore_case = true,
        value_parser = ["error", "warn", "warning", "info", "debug", "trace"]
    )]
    pub log: String,
    /// The largest request body, in bytes.
    #[arg(long, env = "SINEW_MAX_BODY", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Database connections per process.
    #[arg(long, env = "SINEW_POOL_SIZE", default_value_t = 32)]
    pub pool_size: usize,
    /// Do not apply migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// Do not run cron tools on their schedules here (a scheduler such as
    /// Cloud Scheduler calls them; its runs take the same claims).
    #[arg(long, env = "SINEW_NO_CRON", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cron: bool,
    /// Do not deliver outbox messages from this instance (others do; an
    /// instance that serves requests only).
    #[arg(long, env = "SINEW_NO_OUTBOX", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_outbox: bool,
    /// A directory of secrets, one file per secret named after its
    /// variable (as Cloud Run and Kubernetes mount them): read when the
    /// environment does not have the variable. The secrets: DATABASE_URL,
    /// SINEW_JWT_SECRET, SINEW_AUDIT_SIGNING_KEY and the variables the
    /// spec names (webhook and external secrets).
    #[arg(long, env = "SINEW_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// The audience of the OIDC tokens Pub/Sub pushes carry (the push
    /// subscription's audience; by default Pub/Sub uses the push URL).
    /// Required when the spec has `queue` tools.
    #[arg(long, env = "SINEW_PUBSUB_AUDIENCE")]
    pub pubsub_audience: Option<String>,
    /// The keys those tokens are signed with: a JWKS file or URL.
    #[arg(long, env = "SINEW_PUBSUB_JWKS", default_value = crate::queue::GOOGLE_JWKS)]
    pub pubsub_jwks: String,
    /// The issuer of those tokens.
    #[arg(long, env = "SINEW_PUBSUB_ISSUER", default_value = crate::queue::GOOGLE_ISSUER)]
    pub pubsub_issuer: String,
    /// The service account pushes must come from (the token's `email`);
    /// any, when absent.
    #[arg(long, env = "SINEW_PUBSUB_SERVICE_ACCOUNT")]
    pub pubsub_service_account: Option<String>,
    /// Tests only (refused unless listening on loopback): honour
    /// `x-sinew-test-now` (the request's clock, RFC 3339),
    /// `x-sinew-test-request-id` and `x-sinew-test-scheduled` (a cron run's
    /// time), so scenario files replay exactly.
    #[arg(long, hide = true)]
    pub test_hooks: bool,
    /// Benchmarks only: run the interpreter compiled into this binary
    /// instead of the WebAssembly component (no deadline enforcement, no
    /// isolation).
    #[arg(long, hide = true)]
    pub native: bool,
    /// The base URL of an external service, `NAME=URL` (repeatable; wins
    /// over SINEW_EXTERNAL_<NAME>_URL).
    #[arg(long = "external", value_name = "NAME=URL")]
    pub external: Vec<String>,
    /// Serve the browser risk preview at `/studio/`. Off unless asked for:
    /// it shows the whole served spec (entities, tools, policies) to anyone
    /// who can reach the server.
    #[arg(long, env = "SINEW_STUDIO", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub studio: bool,
    /// Deprecated: the studio is off unless `--studio`. Still accepted (and
    /// wins over `--studio`) so that existing command lines keep working.
    #[arg(long, hide = true)]
    pub no_studio: bool,
    /// Do not snapshot the component with the spec loaded. By default the
    /// first start of a spec builds, in the background, a pre-initialized
    /// copy of the component (cached beside the compiled one): later starts
    /// and new instances then skip parsing the spec.
    #[arg(long, env = "SINEW_NO_SNAPSHOT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_snapshot: bool,
    /// Serve metrics in Prometheus' text format at `http://ADDR/metrics`,
    /// on a listener of their own (e.g. `127.0.0.1:9464`; port 0: any free
    /// port, named in the log). Off unless set.
    #[arg(long, env = "SINEW_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also (or instead) serve them at this path of the main port (e.g.
    /// `/internal/metrics`), for platforms that expose one port. Off
    /// unless set: anyone who reaches the server can read them.
    #[arg(long, env = "SINEW_METRICS_PATH", value_name = "PATH")]
    pub metrics_path: Option<String>,
}

impl Args {
    /// Where the spec's secrets come from.
    pub fn secrets(&self) -> crate::secrets::Secrets {
        crate::secrets::Secrets {
            dir: self.secrets_dir.clone(),
        }
    }

    /// How Pub/Sub pushes are verified, for a spec with queue tools (the
    /// JWKS fetched when it is a URL); `None` without queue tools or
    /// without an audience (then the server does not start: see
    /// [`missing_settings`]).
    pub async fn push_auth(
        &self,
        spec: &sinew_core::spec::Spec,
        client: &crate::tls::HttpsClient,
    ) -> Result<Option<crate::queue::PushAuth>> {
        let queues = spec
            .tools
            .values()
            .any(|t| matches!(t.trigger, sinew_core::spec::Trigger::Queue { .. }));
        let Some(audience) = self.pubsub_audience.clone().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        if !queues {
            return Ok(None);
        }
        let mut jwt = JwtConfig {
            secret: None,
            keys: Vec::new(),
            issuer: Some(self.pubsub_issuer.clone()),
            audience: Some(audience),
            roles_claim: "roles".into(),
        };
        add_jwks(&mut jwt, client, &self.pubsub_jwks, "SINEW_PUBSUB_JWKS").await?;
        Ok(Some(crate::queue::PushAuth {
            jwt,
            service_account: self
                .pubsub_service_account
                .clone()
                .filter(|a| !a.is_empty()),
        }))
    }

    /// The JWT settings (fetching the JWKS when it is a URL).
    pub async fn jwt(&self, client: &crate::tls::HttpsClient) -> Result<JwtConfig> {
        let mut jwt = JwtConfig {
            secret: self
                .jwt_secret
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| self.secrets().get("SINEW_JWT_SECRET")),
            keys: Vec::new(),
            issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            roles_claim: self.jwt_roles_claim.clone(),
        };
        if let Some(jwks) = self.jwt_jwks.as_deref().filter(|s| !s.is_empty()) {
            add_jwks(&mut jwt, client, jwks, "SINEW_JWT_JWKS").await?;
        }
        Ok(jwt)
    }
}

/// Adds the keys of the JWKS `jwks` (an `https://` URL, fetched, or a
/// file) to `jwt`; `setting` names it in errors.
async fn add_jwks(
    jwt: &mut JwtConfig,
    client: &crate::tls::HttpsClient,
    jwks: &str,
    setting: &str,
) -> Result<()> {
    let text = if jwks.starts_with("https://") || jwks.starts_with("http://") {
        let body = crate::tls::get(client, jwks)
            .await
            .with_context(|| format!("cannot fetch the JWKS `{jwks}` ({setting})"))?;
        String::from_utf8_lossy(&body).into_owned()
    } else {
        std::fs::read_to_string(jwks)
            .with_context(|| format!("cannot read the JWKS `{jwks}` ({setting})"))?
    };
    jwt.add_jwks(&text)
        .with_context(|| format!("{setting} `{jwks}`"))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// JSON log lines on stdout.
#[derive(Clone)]
pub struct Log {
    level: Level,
    project: Option<String>,
}

impl Log {
    fn new(level: &str) -> Log {
        Log {
            level: match level.to_ascii_lowercase().as_str() {
                "debug" | "trace" => Level::Debug,
                "warn" | "warning" => Level::Warn,
                "error" => Level::Error,
                _ => Level::Info,
            },
            project: std::env::var("GOOGLE_CLOUD_PROJECT").ok(),
        }
    }

    fn line(&self, level: Level, mut fields: Map<String, Value>) {
        if level < self.level {
            return;
        }
        let severity = match level {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARNING",
            Level::Error => "ERROR",
        };
        fields.insert("severity".into(), json!(severity));
        fields.insert(
            "time".into(),
            json!(sinew_core::expr::value::format_timestamp(
                system_now_ms() * 1000
            )),
        );
        crate::runtime::log_line(&Value::Object(fields).to_string());
    }

    fn message(&self, level: Level, message: &str) {
        let mut m = Map::new();
        m.insert("message".into(), json!(message));
        self.line(level, m);
    }

    /// A message.
    pub fn info(&self, message: &str) {
        self.message(Level::Info, message);
    }

    fn warn(&self, message: &str) {
        self.message(Level::Warn, message);
    }

    /// A signed checkpoint of the audit chain (info level), as a field of
    /// its own: `{"message": "audit checkpoint", "checkpoint": {…}}`.
    fn checkpoint(&self, checkpoint: Value) {
        let mut m = Map::new();
        m.insert("message".into(), json!("audit checkpoint"));
        m.insert("checkpoint".into(), checkpoint);
        self.line(Level::Info, m);
    }

    /// A start-up phase and the time since `started` (debug level).
    fn phase(&self, started: Instant, what: &str) {
        self.message(
            Level::Debug,
            &format!(
                "start: {what} at {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
    }

    pub(crate) fn error(&self, message: &str) {
        self.message(Level::Error, message);
    }

    /// The trace field of trace `id` (hex): `projects/P/traces/ID` with
    /// `GOOGLE_CLOUD_PROJECT`, as Cloud Logging links it to Cloud Trace.
    fn trace_field(&self, id: &str) -> String {
        match &self.project {
            Some(p) => format!("projects/{p}/traces/{id}"),
            None => id.to_owned(),
        }
    }

    /// The trace field from `X-Cloud-Trace-Context` or `traceparent`.
    fn trace(&self, headers: &hyper::HeaderMap) -> Option<String> {
        let id = headers
            .get("x-cloud-trace-context")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('/').next())
            .or_else(|| {
                headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split('-').nth(1))
            })
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))?;
        Some(self.trace_field(id))
    }
}

/// A route: a tool's method and path.
struct Route {
    method: Method,
    segments: Vec<Segment>,
    tool: String,
}

/// Why a routed request is turned away before its tool runs; the tool's
/// final audit entry records it ([`App::reject`]).
struct Refusal {
    code: Code,
    detail: String,
    /// What went wrong inside (a storage error): for the log line and the
    /// audit entry, never the body.
    internal: Option<String>,
    /// The input the audit entry records, when the refusal knows it.
    input: Option<Value>,
}

impl Refusal {
    fn new(code: Code, detail: impl Into<String>) -> Refusal {
        Refusal {
            code,
            detail: detail.into(),
            internal: None,
            input: None,
        }
    }

    /// The same refusal, with what went wrong inside.
    fn internal(self, internal: impl Into<String>) -> Refusal {
        Refusal {
            internal: Some(internal.into()),
            ..self
        }
    }

    /// The problem the caller is answered with.
    fn problem(&self) -> Problem {
        let p = Problem::new(self.code, &self.detail);
        match &self.internal {
            Some(i) => p.internal(i.clone()),
            None => p,
        }
    }

    /// The answer to a refusal outside a tool (no audit entry).
    fn response(&self, id: &str) -> hyper::Response<Body> {
        let mut r = problem(self.code, &self.detail, id);
        if let Some(i) = &self.internal {
            r.extensions_mut().insert(Internal(i.clone()));
        }
        r
    }

    /// The same refusal, recording `input` in the audit entry.
    fn with_input(self, input: Value) -> Refusal {
        Refusal {
            input: Some(input),
            ..self
        }
    }
}

enum Segment {
    Literal(String),
    Param(String),
}

enum Found {
    Tool(String, Vec<(String, String)>),
    /// A Pub/Sub push to a `queue` tool.
    Queue(String),
    WrongMethod(Vec<String>),
    Nothing,
}

struct Router {
    routes: Vec<Route>,
    /// Queue name → the tool consuming it.
    queues: std::collections::HashMap<String, String>,
}

impl Router {
    fn new(spec: &sinew_core::spec::Spec) -> Router {
        let mut routes = Vec::new();
        for (name, tool) in &spec.tools {
            if spec.broken_tools.contains(name) {
                continue;
            }
            let Some((method, path)) = tool.trigger.route() else {
                continue;
            };
            let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            let segments = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(p) => Segment::Param(p.to_owned()),
                        None => Segment::Literal(s.to_owned()),
                    },
                )
                .collect();
            routes.push(Route {
                method,
                segments,
                tool: name.clone(),
            });
        }
        let queues = spec
            .tools
            .iter()
            .filter(|(name, _)| !spec.broken_tools.contains(*name))
            .filter_map(|(name, t)| match &t.trigger {
                sinew_core::spec::Trigger::Queue { name: q } => Some((q.clone(), name.clone())),
                _ => None,
            })
            .collect();
        // Literal segments win over parameters (`/orders/mine` before
        // `/orders/{id}`).
        routes.sort_by_key(|r| {
            r.segments
                .iter()
                .map(|s| matches!(s, Segment::Param(_)))
                .collect::<Vec<_>>()
        });
        Router { routes, queues }
    }

    /// The tools whose routes match `path`, whatever their methods.
    fn tools_at(&self, path: &str) -> Vec<String> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.routes
            .iter()
            .filter(|r| {
                r.segments.len() == parts.len()
                    && r.segments.iter().zip(&parts).all(|(s, p)| match s {
                        Segment::Literal(l) => l == p,
                        Segment::Param(_) => true,
                    })
            })
            .map(|r| r.tool.clone())
            .collect()
    }

    /// The tool a request goes to: any tool by name at `POST
    /// /tools/{name}` (agents, schedulers), a queue's tool at `POST
    /// /queues/{queue}` (Pub/Sub), else a route of the spec. The server's
    /// paths come first as a route's literal segments win over parameters:
    /// the checker refuses a route on them (`reserved-route`), so only a
    /// parameter (`POST /{a}/{b}`) could have matched them.
    fn find(&self, method: &Method, path: &str) -> Found {
        // (A trailing `/` is no segment, as for the spec's routes.)
        if let Some(name) = path
            .strip_prefix("/tools/")
            .map(|t| t.strip_suffix('/').unwrap_or(t))
            .filter(|t| !t.is_empty() && !t.contains('/'))
        {
            return if method == Method::POST {
                Found::Tool(percent_decode(name).unwrap_or_default(), Vec::new())
            } else {
                Found::WrongMethod(vec!["POST".into()])
            };
        }
        if let Some(queue) = path
            .strip_prefix("/queues/")
            .map(|q| q.strip_suffix('/').unwrap_or(q))
            && let Some(tool) = percent_decode(queue).and_then(|q| self.queues.get(&q))
        {
            return if method == Method::POST {
                Found::Queue(tool.clone())
            } else {
                Found::WrongMethod(vec!["POST".into()])
            };
        }
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut allow = Vec::new();
        for r in &self.routes {
            if r.segments.len() != parts.len() {
                continue;
            }
            let mut params = Vec::new();
            let ok = r.segments.iter().zip(&parts).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param(name) => {
                    // (Decoded as the request is admitted: a segment that
                    // is not UTF-8 is refused with its audit entry.)
                    params.push((name.clone(), (*p).to_owned()));
                    true
                }
            });
            if !ok {
                continue;
            }
            if r.method == method || (method == Method::HEAD && r.method == Method::GET) {
                return Found::Tool(r.tool.clone(), params);
            }
            allow.push(r.method.to_string());
            // A GET tool answers HEAD too.
            if r.method == Method::GET {
                allow.push("HEAD".to_owned());
            }
        }
        if allow.is_empty() {
            Found::Nothing
        } else {
            allow.sort();
            allow.dedup();
            Found::WrongMethod(allow)
        }
    }
}

/// `%XX` decoding of a path segment: `None` when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    decode(s, false)
}

/// `%XX` (and `+` as a space) decoding of a query component: `None` when
/// the bytes are not UTF-8.
fn query_decode(s: &str) -> Option<String> {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(h)) if h.iter().all(u8::is_ascii_hexdigit) => {
                let hex = std::str::from_utf8(h).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
            }
            (b'+', _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A path or query parameter as the input schema's property wants it.
fn typed(schema: Option<&Value>, raw: &str) -> Value {
    let ty = schema.and_then(|s| s.get("type"));
    let is = |t: &str| match ty {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(a)) => a.iter().any(|x| x == t),
        _ => false,
    };
    if is("integer")
        && let Ok(i) = raw.parse::<i64>()
    {
        return json!(i);
    }
    // `5.0`, `1e2`: whole numbers written as decimals are integers, as in
    // a body (the contract normalises them).
    if is("integer")
        && let Ok(f) = raw.parse::<f64>()
        && f.is_finite()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    if is("number")
        && let Ok(f) = raw.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    if is("boolean") && (raw == "true" || raw == "false") {
        return json!(raw == "true");
    }
    json!(raw)
}

/// Request ids: UUIDv8s of a seed and a counter.
struct Ids {
    seed: String,
    next: AtomicU64,
}

impl Ids {
    /// Ids from `seed` and this process (no two processes share a seed).
    fn new(seed: String) -> Ids {
        Ids {
            seed: format!("{}:{}:{seed}", std::process::id(), system_now_ms()),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let h = sinew_core::hash::sha256_hex(format!("{}:{n}", self.seed).as_bytes());
        format!(
            "{}-{}-8{}-{}{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            ["8", "9", "a", "b"][usize::from(h.as_bytes()[16] % 4)],
            &h[17..20],
            &h[20..32]
        )
    }
}

/// What runs the requests.
enum Core {
    /// The component in wasmtime (always, but for benchmarks).
    Component(Arc<Executor>),
    /// The native interpreter (`--native`).
    Native(crate::native::Native),
}

/// The server's shared state.
pub struct App {
    core: Core,
    router: Router,
    jwt: std::sync::RwLock<Arc<JwtConfig>>,
    openapi: Bytes,
    max_body: usize,
    db: Arc<PgBackend>,
    log: Log,
    /// Each tool's input schema with its local `$ref`s followed and its
    /// `allOf`s merged: path and query parameters are typed from it,
    /// however a property's type is written.
    inputs: std::collections::HashMap<String, Value>,
    /// Each tool's deadline (`limits.timeoutMs`).
    deadlines: std::collections::HashMap<String, Duration>,
    ids: Ids,
    /// Told at every response; the pool's warm-up in [`serve`] waits for
    /// the first (a notification with nobody waiting is one atomic store).
    first_answer: Arc<tokio::sync::Notify>,
    webhooks: std::collections::HashMap<String, crate::webhook::Webhook>,
    /// The cron tools: a call of one carrying Cloud Scheduler's
    /// `X-CloudScheduler-ScheduleTime` with one of its times is a run for
    /// that time (another time, as a forced run sends, is an ordinary
    /// call).
    cron_tools: std::collections::HashMap<String, crate::schedule::Job>,
    /// How Pub/Sub pushes are verified (`None`: the spec has no queue).
    push_auth: Option<crate::queue::PushAuth>,
    /// Each queue tool's caller: `queue:<name>` and the tool's roles.
    queue_callers: std::collections::HashMap<String, (String, Vec<String>)>,
    /// With `--test-hooks`: the clock requests set.
    test_clock: Option<Arc<crate::runtime::clock::ManualClock>>,
    /// The browser preview at `/studio/`, opening the served spec; built
    /// (the component transpiled) when first asked for. `None` unless
    /// `--studio`.
    studio: Option<(
        crate::studio::Startup,
        tokio::sync::OnceCell<Arc<crate::studio::Studio>>,
    )>,
    /// The spec's `cors` (`None`: no cross-origin access).
    cors: Option<sinew_core::spec::Cors>,
    /// The spec's `reviews` (`None`: no `/reviews` routes).
    reviews: Option<sinew_core::spec::Reviews>,
    /// API keys looked up lately.
    keys: crate::keys::Keys,
    /// `--metrics-path`: metrics served on the main port too.
    metrics_path: Option<String>,
}

type Body = Full<Bytes>;

fn respond(status: u16, content_type: &str, body: Bytes) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// How long past its tool's deadline a request is answered at the latest.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A 5xx's detail for the log (never in the body), riding on the response.
#[derive(Clone)]
struct Internal(String);

/// The `escalate` policies a request triggered, for the alert line.
#[derive(Clone)]
struct Escalated(Vec<String>, Option<String>);

/// The answer to a request still running past its deadline and grace.
fn late(id: &str) -> hyper::Response<Body> {
    let mut r = problem(
        Code::Unavailable,
        "the request did not finish in time (the database is not answering); its outcome is not known yet: retry with the same Idempotency-Key to learn it",
        id,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A problem answered by the server itself (no tool ran): its `instance`
/// and its `X-Request-Id` are the request's id.
fn problem(code: Code, detail: &str, id: &str) -> hyper::Response<Body> {
    let body = Problem::new(code, detail).body(id);
    let mut r = respond(
        code.status(),
        "application/problem+json",
        Bytes::from(body.to_string()),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-request-id", v);
    }
    if code == Code::Unauthenticated {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

impl App {
    /// The time requests run at: the test clock's with `--test-hooks`.
    fn now_ms(&self) -> i64 {
        match &self.test_clock {
            Some(c) => crate::runtime::clock::ClockBackend::now_ms(c.as_ref()),
            None => system_now_ms(),
        }
    }

    /// Runs cron tool `tool` for its scheduled time `at`, as the caller
    /// `cron:<tool>` with the tool's roles, and logs the outcome.
    async fn scheduled_run(
        &self,
        tool: &str,
        roles: &[String],
        at: jiff::Timestamp,
    ) -> crate::schedule::Ran {
        let id = self.request_id();
        let sub = format!("cron:{tool}");
        let request = Request {
            tool: tool.to_owned(),
            input: json!({}),
            auth: Some(Auth {
                sub: sub.clone(),
                roles: roles.to_vec(),
                claims: json!({"sub": sub}),
            }),
            id: id.clone(),
            scheduled: Some(at.to_string()),
            ..Request::default()
        };
        let reply = self.execute(&request).await;
        let code = problem_of(&reply)
            .and_then(|b| b.get("code").and_then(Value::as_str).map(str::to_owned));
        let later = matches!(
            code.as_deref(),
            Some("idempotency_in_flight" | "unavailable")
        );
        let mut m = Map::new();
        m.insert(
            "message".into(),
            json!(format!(
                "cron {tool} for {at}: {}{}",
                reply.status,
                code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
            )),
        );
        m.insert("tool".into(), json!(tool));
        m.insert("scheduled".into(), json!(at.to_string()));
        m.insert("execution".into(), json!(id));
        if let Some(i) = &reply.internal {
            m.insert("internal".into(), json!(i));
        }
        let level = match reply.status {
            500.. => Level::Error,
            400.. if !later => Level::Warn,
            _ => Level::Info,
        };
        self.log.line(level, m);
        if later {
            crate::schedule::Ran::Later
        } else {
            crate::schedule::Ran::Done
        }
    }

    async fn execute(&self, request: &Request) -> Reply {
        match &self.core {
            Core::Component(e) => e.reply(request).await,
            Core::Native(n) => n.execute(request).await.into(),
        }
    }

    async fn reject(&self, request: &Request, problem: Problem) -> Reply {
        match &self.core {
            Core::Component(e) => e.reject(request, problem).await,
            Core::Native(n) => n.reject(request, problem).await,
        }
        .into()
    }

    /// `/studio` and below, or `None` when the studio is off (then the
    /// path is an ordinary route).
    async fn studio(&self, method: &Method, path: &str, id: &str) -> Option<hyper::Response<Body>> {
        let (startup, cell) = self.studio.as_ref()?;
        let Some(rest) = path.strip_prefix("/studio/") else {
            // Relative URLs in the page need the trailing slash.
            let mut r = respond(308, "text/plain", Bytes::from_static(b"/studio/\n"));
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/studio/"));
            return Some(r);
        };
        let studio = cell
            .get_or_try_init(|| async {
                let startup = startup.clone();
                tokio::task::spawn_blocking(move || crate::studio::Studio::new(&startup))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .map(Arc::new)
            })
            .await;
        Some(match studio {
            Ok(s) => s.response(method, rest).unwrap_or_else(|| {
                problem(Code::NotFound, &format!("the studio has no `{rest}`"), id)
            }),
            Err(e) => problem(
                Code::Internal,
                &format!("the studio failed to start: {e:#}"),
                id,
            ),
        })
    }

    /// The deadline of what a request was routed to: its tool's
    /// `timeoutMs` (30 s by default), and 30 s for everything else.
    fn deadline(&self, found: &Found) -> Duration {
        match found {
            Found::Tool(tool, _) | Found::Queue(tool) => self.deadlines.get(tool).copied(),
            _ => None,
        }
        .unwrap_or(crate::runtime::DEFAULT_TIMEOUT)
    }

    fn bundle_hash(&self) -> &str {
        match &self.core {
            Core::Component(e) => &e.bundle_hash,
            Core::Native(n) => n.bundle_hash(),
        }
    }

    fn request_id(&self) -> String {
        self.ids.next()
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> hyper::Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        // The request's span (traces on), a child of the caller's
        // `traceparent`; off, that context still goes on to externals.
        let parent = crate::telemetry::extract(req.headers());
        let span = crate::telemetry::request_span(method.as_str(), uri.path(), parent.as_ref());
        let (trace, span_id) = match &span {
            Some(s) => {
                let (trace, span, sampled) = s.ids();
                (Some(self.log.trace_field(&trace)), Some((span, sampled)))
            }
            None => (self.log.trace(req.headers()), None),
        };
        let cx = span.as_ref().map(|s| s.context().clone()).or(parent);
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Every response carries a request id (a tool's execution id, or
        // this one).
        let id = self.request_id();
        // The request runs in a task of its own: a client that hangs up
        // must not cancel it halfway through a transaction.
        let app = self.clone();
        let task_id = id.clone();
        // Every request is answered within its tool's deadline plus a
        // second, even when the database stops answering (killed backends,
        // a lock, a failover): past that, the caller gets a 503 saying the
        // outcome is not known yet, while the request goes on in its task,
        // commits or rolls back, and writes its audit entry.
        // The route is found once: it gives the deadline and the tool.
        let found = self.router.find(req.method(), uri.path());
        let budget = self.deadline(&found) + ANSWER_GRACE;
        let routed = async move { app.route(req, task_id, found).await };
        let mut task = match cx {
            Some(cx) => {
                use opentelemetry::context::FutureExt as _;
                tokio::spawn(routed.with_context(cx))
            }
            None => tokio::spawn(routed),
        };
        let routed = match tokio::time::timeout(budget, &mut task).await {
            Ok(joined) => joined,
            Err(_) => Ok((late(&id), None, Some(id.clone()))),
        };
        let (mut response, tool, execution) = match routed {
            Ok(r) => r,
            Err(e) => (
                problem(
                    Code::Internal,
                    &format!("the request task failed: {e}"),
                    &id,
                ),
                None,
                None,
            ),
        };
        if !response.headers().contains_key("x-request-id")
            && let Ok(v) = HeaderValue::from_str(&id)
        {
            response.headers_mut().insert("x-request-id", v);
        }
        if method != Method::OPTIONS
            && let (Some(origin), Some(t)) = (&origin, &tool)
        {
            self.allow_origin(&mut response, origin, t);
        }
        let status = response.status().as_u16();
        let mut m = Map::new();
        m.insert(
            "message".into(),
            json!(format!("{method} {} {status}", uri.path())),
        );
        m.insert(
            "httpRequest".into(),
            json!({
                "requestMethod": method.as_str(),
                "requestUrl": uri.to_string(),
                "status": status,
                "latency": format!("{:.6}s", started.elapsed().as_secs_f64()),
                "remoteIp": remote.ip().to_string(),
                "userAgent": user_agent,
            }),
        );
        if let Some(t) = trace {
            m.insert("logging.googleapis.com/trace".into(), json!(t));
        }
        if let Some((id, sampled)) = span_id {
            m.insert("logging.googleapis.com/spanId".into(), json!(id));
            m.insert(
                "logging.googleapis.com/trace_sampled".into(),
                json!(sampled),
            );
        }
        if let Some(metrics) = crate::telemetry::metrics() {
            // A name no tool has (`POST /tools/<anything>`) is `-`: the
            // label's values stay the spec's tools.
            metrics.request(
                tool.as_deref()
                    .filter(|t| self.inputs.contains_key(*t))
                    .unwrap_or("-"),
                status,
                started.elapsed().as_secs_f64(),
            );
        }
        if let Some(span) = span {
            span.end(status, tool.as_deref(), execution.as_deref());
        }
        if let Some(t) = &tool {
            m.insert("tool".into(), json!(t));
        }
        if let Some(e) = &execution {
            m.insert("execution".into(), json!(e));
        }
        // What the body of a 5xx must not say (the failed expression, the
        // storage error) is for the operators: here, and in the audit entry.
        if let Some(Internal(detail)) = response.extensions_mut().remove::<Internal>() {
            m.insert("internal".into(), json!(detail));
        }
        if let Some(Escalated(policies, caller)) = response.extensions_mut().remove::<Escalated>() {
            let mut alert = m.clone();
            alert.insert(
                "message".into(),
                json!(format!(
                    "escalated: policy {} on {} (execution {}) by {}",
                    policies.join(", "),
                    tool.as_deref().unwrap_or("?"),
                    execution.as_deref().unwrap_or("?"),
                    caller.as_deref().unwrap_or("an anonymous caller")
                )),
            );
            alert.insert(
                "alert".into(),
                json!({"escalated": policies, "caller": caller}),
            );
            self.log.line(Level::Warn, alert);
        }
        let level = match status {
            500.. => Level::Error,
            400.. => Level::Warn,
            _ => Level::Info,
        };
        // Health probes are debug noise.
        let level = if uri.path() == "/healthz" || uri.path() == "/readyz" {
            Level::Debug
        } else {
            level
        };
        self.log.line(level, m);
        self.first_answer.notify_one();
        response
    }

    /// Answers a request; `id` is its request id (a tool's execution id),
    /// which every problem answered here carries too; `found` is where the
    /// router sends it.
    async fn route(
        &self,
        req: hyper::Request<Incoming>,
        mut id: String,
        found: Found,
    ) -> (hyper::Response<Body>, Option<String>, Option<String>) {
        if let Some(clock) = &self.test_clock {
            apply_test_hooks(clock, req.headers(), &mut id);
        }
        let path = req.uri().path().to_owned();
        if req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ORIGIN)
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let (response, tool) = self.preflight(&req, &path, &id);
            return (response, tool, None);
        }
        if self.reviews.is_some() && reviews::is_review_path(&path) {
            return (self.review(req, &path, &id).await, None, None);
        }
        if let Some(r) = self.built_in(req.method(), &path, &found, &id).await {
            return (r, None, None);
        }
        let (tool, params) = match found {
            Found::Tool(t, p) => (t, p),
            Found::Queue(t) => {
                let reply = self.push(req, &t, &id).await;
                return (queue_response(reply, &id), Some(t), Some(id));
            }
            Found::WrongMethod(allow) => {
                return (method_not_allowed(&path, &allow, &id), None, None);
            }
            Found::Nothing => {
                let detail = format!("no tool answers {} {}", req.method(), short_path(&path));
                return (problem(Code::NotFound, &detail, &id), None, None);
            }
        };
        let reply = self.call(req, &tool, params, &id).await;
        (tool_response(reply, &id), Some(tool), Some(id))
    }

    /// A CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), answered without running a tool:
    /// 204 with the methods and headers allowed when the spec's `cors`
    /// lets the origin call the tool at that method and path, else 403
    /// `forbidden` (no `Access-Control-Allow-Origin`: the browser refuses).
    fn preflight(
        &self,
        req: &hyper::Request<Incoming>,
        path: &str,
        id: &str,
    ) -> (hyper::Response<Body>, Option<String>) {
        let headers = req.headers();
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let tool = match asked.as_ref().map(|m| self.router.find(m, path)) {
            Some(Found::Tool(t, _)) => Some(t),
            _ => None,
        };
        let allowed = tool.as_ref().and_then(|t| {
            self.cors
                .as_ref()
                .and_then(|c| c.allow(origin, t))
                .map(|a| (t, a))
        });
        let Some((_, allow)) = allowed else {
            let detail = match (&self.cors, &tool) {
                (None, _) => {
                    "this server grants no cross-origin access (the spec has no `cors`)".to_owned()
                }
                (Some(_), None) => {
                    format!("no tool answers that method at {}", short_path(path))
                }
                (Some(_), Some(t)) => format!("`cors` does not let {origin} call `{t}`"),
            };
            return (problem(Code::Forbidden, &detail, id), tool);
        };
        let mut r = hyper::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        let set = |h: &mut hyper::HeaderMap, name: header::HeaderName, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        set(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, &allow);
        if let Some(m) = &asked {
            set(h, header::ACCESS_CONTROL_ALLOW_METHODS, m.as_str());
        }
        // The headers the page asked to send: sinew reads the ones it
        // knows (Authorization, Content-Type, Idempotency-Key, traceparent)
        // and ignores the rest.
        if let Some(v) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        set(h, header::ACCESS_CONTROL_MAX_AGE, "600");
        set(
            h,
            header::VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        (r, tool)
    }

    /// A tool's answer to a cross-origin request: readable by the page
    /// when the spec's `cors` lets `origin` call `tool`.
    fn allow_origin(&self, response: &mut hyper::Response<Body>, origin: &str, tool: &str) {
        let Some(allow) = self.cors.as_ref().and_then(|c| c.allow(origin, tool)) else {
            return;
        };
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&allow) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }

    /// The server's own paths (health, readiness, the studio, the OpenAPI
    /// document), or `None` when the request is for the tools.
    async fn built_in(
        &self,
        method: &Method,
        path: &str,
        found: &Found,
        id: &str,
    ) -> Option<hyper::Response<Body>> {
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/healthz") => Some(respond(
                200,
                "application/json",
                Bytes::from_static(br#"{"status":"ok"}"#),
            )),
            (&Method::GET | &Method::HEAD, "/readyz") => Some(self.readiness(id).await),
            // A tool of the spec's own under /studio wins.
            (&Method::GET | &Method::HEAD, p)
                if (p == "/studio" || p.starts_with("/studio/"))
                    && matches!(found, Found::Nothing) =>
            {
                self.studio(method, p, id).await
            }
            (m, p) if self.metrics_path.as_deref() == Some(p) => {
                Some(metrics_response(m, p, p, id))
            }
            (&Method::GET | &Method::HEAD, "/openapi.json") => {
                Some(respond(200, "application/json", self.openapi.clone()))
            }
            // The server's own paths answer no other method, whatever route
            // a tool has with a parameter there.
            (_, "/healthz" | "/readyz" | "/openapi.json") => {
                Some(method_not_allowed(path, &get_and_head(), id))
            }
            (_, p)
                if (p == "/studio" || p.starts_with("/studio/"))
                    && matches!(found, Found::Nothing)
                    && self.studio.is_some() =>
            {
                Some(method_not_allowed(path, &get_and_head(), id))
            }
            _ => None,
        }
    }

    /// `/readyz`: ready when the database answers within 3 s.
    async fn readiness(&self, id: &str) -> hyper::Response<Body> {
        match tokio::time::timeout(Duration::from_secs(3), self.db.ping()).await {
            Ok(Ok(())) => respond(
                200,
                "application/json",
                Bytes::from(json!({"status": "ready", "bundle": self.bundle_hash()}).to_string()),
            ),
            Ok(Err(e)) => {
                // (What the driver says stays in the log.)
                self.log
                    .warn(&format!("readiness: the database is not reachable: {e}"));
                problem(Code::Unavailable, "the database is not reachable", id)
            }
            Err(_) => problem(
                Code::Unavailable,
                "the database did not answer within 3 s",
                id,
            ),
        }
    }

    /// Runs a routed request; everything turned away here is audited too.
    async fn call(
        &self,
        req: hyper::Request<Incoming>,
        tool: &str,
        params: Vec<(String, String)>,
        id: &str,
    ) -> Reply {
        let (parts, body) = req.into_parts();
        let mut request = Request {
            tool: tool.to_owned(),
            id: id.to_owned(),
            ..Request::default()
        };
        match self.admit(&mut request, &parts, body, params).await {
            Ok(()) => self.execute(&request).await,
            Err(mut refused) => {
                if let Some(input) = refused.input.take() {
                    request.input = input;
                }
                self.reject(&request, refused.problem()).await
            }
        }
    }

    /// A Pub/Sub push to queue tool `tool`: its token, its envelope, then
    /// the tool with the message's data as input and its id as the
    /// idempotency key. Everything turned away is audited.
    async fn push(&self, req: hyper::Request<Incoming>, tool: &str, id: &str) -> Reply {
        let (parts, body) = req.into_parts();
        let mut request = Request {
            tool: tool.to_owned(),
            id: id.to_owned(),
            ..Request::default()
        };
        let admitted = async {
            let authorization = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let claims = match &self.push_auth {
                Some(p) => p
                    .verify(authorization)
                    .map_err(|e| Refusal::new(Code::Unauthenticated, e))?,
                None => {
                    return Err(Refusal::new(
                        Code::Unauthenticated,
                        "this server cannot verify Pub/Sub pushes",
                    ));
                }
            };
            let (sub, roles) = self.queue_callers.get(tool).cloned().unwrap_or_default();
            let mut who = serde_json::Map::new();
            who.insert("sub".into(), json!(sub));
            if let Some(e) = claims.get("email") {
                who.insert("email".into(), e.clone());
            }
            request.auth = Some(Auth {
                sub,
                roles,
                claims: Value::Object(who),
            });
            let bytes = self.read_body(&parts.headers, body).await?;
            let pushed =
                crate::queue::envelope(&bytes).map_err(|e| Refusal::new(Code::InvalidBody, e))?;
            request.idempotency_key = Some(pushed.message_id);
            if sinew_core::input::too_deep(&pushed.input) {
                let detail = sinew_core::input::too_deep_detail("the message's data");
                return Err(Refusal::new(Code::InvalidJson, detail));
            }
            request.input = pushed.input;
            Ok(())
        }
        .await;
        match admitted {
            Ok(()) => self.execute(&request).await,
            Err(refused) => self.reject(&request, refused.problem()).await,
        }
    }

    /// Fills in `request` from the HTTP request, checking in this order:
    /// the caller's token (a bad one is a 401 before anything about the
    /// body; a webhook takes none), the Idempotency-Key, the body's size, a
    /// webhook's signature (which makes its caller), the body's JSON, then
    /// the path and query parameters joining it. A refusal is audited with
    /// what `request` holds by then.
    async fn admit(
        &self,
        request: &mut Request,
        parts: &Parts,
        body: Incoming,
        params: Vec<(String, String)>,
    ) -> Result<(), Refusal> {
        // A webhook authenticates by its signature alone.
        let hook = self.webhooks.get(&request.tool);
        if hook.is_none() {
            request.auth = crate::telemetry::in_span(
                "authenticate",
                crate::telemetry::Kind::Internal,
                Vec::new(),
                self.authenticate(&parts.headers),
            )
            .await?;
        }
        request.idempotency_key = idempotency_key(&parts.headers)?;
        let bytes = self.read_body(&parts.headers, body).await?;
        if let Some(hook) = hook {
            let signature = parts
                .headers
                .get(hook.header())
                .and_then(|v| v.to_str().ok());
            hook.verify(signature, &bytes, self.now_ms().div_euclid(1000))
                .map_err(|r| Refusal::new(Code::Unauthenticated, r.to_string()))?;
            request.auth = Some(hook.caller());
        }
        if let Some(job) = self.cron_tools.get(&request.tool)
            && let Some(at) = parts.headers.get("x-cloudscheduler-scheduletime")
            && let Ok(at) = at.to_str()
            && job.fires_at(at)
        {
            request.scheduled = Some(at.to_owned());
        }
        // Tests (scenario files) name any time, to see the core refuse it.
        if self.test_clock.is_some()
            && let Some(at) = parts.headers.get("x-sinew-test-scheduled")
        {
            request.scheduled = Some(at.to_str().unwrap_or_default().to_owned());
        }
        let input = parse_body(&parts.headers, &bytes)?;
        // Query parameters join the input of a `GET` or `DELETE` (which
        // have no body); on a method with a body, the body is the input.
        let query = match parts.method {
            Method::GET | Method::DELETE | Method::HEAD => parts.uri.query(),
            _ => None,
        };
        request.input = self.with_url_params(&request.tool, query, params, input)?;
        Ok(())
    }

    /// Who is calling: the caller a bearer token names, or nobody when
    /// there is no Authorization header.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Auth>, Refusal> {
        let Some(h) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        // Two: which caller a proxy in front checked is not known.
        if repeated(headers, header::AUTHORIZATION) {
            return Err(Refusal::new(
                Code::Unauthenticated,
                "send one Authorization header, not several",
            ));
        }
        let token = h
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if let Some(key) = token.filter(|t| crate::keys::is_key(t)) {
            return match self.keys.caller(&self.db, key, self.now_ms()).await {
                Ok(auth) => Ok(Some(auth)),
                Err(crate::keys::Refused::Invalid(why)) => {
                    Err(Refusal::new(Code::Unauthenticated, why))
                }
                Err(crate::keys::Refused::Unavailable(e)) => Err(Refusal::new(
                    Code::Unavailable,
                    "the API key could not be checked: the database is unavailable; retry later",
                )
                .internal(format!("the API key could not be checked: {e}"))),
            };
        }
        let jwt = self.jwt.read().map(|j| j.clone()).unwrap_or_default();
        match token.map(|t| jwt.verify(t)) {
            Some(Ok(auth)) => Ok(Some(auth)),
            Some(Err(e)) => Err(Refusal::new(Code::Unauthenticated, e.0)),
            None => Err(Refusal::new(
                Code::Unauthenticated,
                "the Authorization header must be `Bearer <token>`",
            )),
        }
    }

    /// The body, at most `--max-body` bytes: refused by its declared length
    /// before it is read, else once reading it passes the limit.
    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Refusal> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(self.too_large());
        }
        match Limited::new(body, self.max_body).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(self.too_large())
            }
            Err(_) => Err(Refusal::new(
                Code::InvalidBody,
                "the body could not be read: the connection ended or broke before all of it came",
            )),
        }
    }

    fn too_large(&self) -> Refusal {
        Refusal::new(
            Code::TooLarge,
            format!("the body is larger than {} bytes", self.max_body),
        )
    }

    /// `input` with the path and query parameters joined, typed as the
    /// tool's input schema says: a path parameter must agree with the body
    /// and with the query, and the body's value wins over a query
    /// parameter's. A parameter that is not UTF-8 once `%`-decoded, or a
    /// query parameter given twice, is refused.
    fn with_url_params(
        &self,
        tool: &str,
        query: Option<&str>,
        params: Vec<(String, String)>,
        mut input: Value,
    ) -> Result<Value, Refusal> {
        let schema = self.inputs.get(tool);
        let props = schema.and_then(|s| s.get("properties"));
        let refuse = |detail: String, input: Value| {
            Err(Refusal::new(Code::InvalidInput, detail).with_input(input))
        };
        let mut path = Vec::with_capacity(params.len());
        for (k, raw) in params {
            match percent_decode(&raw) {
                Some(v) => path.push((k, v)),
                None => {
                    let detail = format!("the path parameter `{k}` is not UTF-8 once %-decoded");
                    return refuse(detail, input);
                }
            }
        }
        let mut query_params: Vec<(String, String)> = Vec::new();
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let (Some(k), Some(v)) = (query_decode(k), query_decode(v)) else {
                let detail = "the query is not UTF-8 once %-decoded".to_owned();
                return refuse(detail, input);
            };
            // Which one a proxy in front read is not known.
            if query_params.iter().any(|(seen, _)| *seen == k) {
                let k = short_path(&k);
                return refuse(format!("`{k}` is given twice in the query"), input);
            }
            query_params.push((k, v));
        }
        if query_params.is_empty() && path.is_empty() {
            return Ok(input);
        }
        let Value::Object(map) = &mut input else {
            let detail = "the body must be a JSON object when the path or query has parameters";
            return refuse(detail.to_owned(), input);
        };
        let quote = |v: &str| sinew_core::input::quote(&Value::String(v.to_owned()));
        for (k, v) in &path {
            let value = typed(props.and_then(|p| p.get(k)), v);
            if let Some(existing) = map.get(k).filter(|e| **e != value) {
                let detail = format!(
                    "`{k}` is {} in the path but {} in the body",
                    quote(v),
                    sinew_core::input::quote(existing)
                );
                return refuse(detail, input);
            }
            map.insert(k.clone(), value);
        }
        for (k, v) in query_params {
            let value = typed(props.and_then(|p| p.get(&k)), &v);
            if let Some((_, in_path)) = path.iter().find(|(p, _)| *p == k) {
                if map.get(&k) != Some(&value) {
                    let detail = format!(
                        "`{k}` is {} in the path but {} in the query",
                        quote(in_path),
                        quote(&v)
                    );
                    return refuse(detail, input);
                }
                continue;
            }
            map.entry(k).or_insert(value);
        }
        Ok(input)
    }
}

/// Whether a header is sent more than once: which one a proxy in front of
/// the server read is not known, so such a request is refused.
fn repeated(headers: &HeaderMap, name: impl header::AsHeaderName) -> bool {
    headers.get_all(name).iter().nth(1).is_some()
}

/// The Idempotency-Key header, if there is one: it must be 1 to
/// [`crate::openapi::MAX_KEY`] visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(k) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Two keys: which one the client meant is not known (a proxy may have
    // added one); answering for either could replay the wrong request.
    if repeated(headers, "idempotency-key") {
        return Err(Refusal::new(
            Code::InvalidIdempotencyKey,
            "send one Idempotency-Key header, not several",
        ));
    }
    match k.to_str() {
        Ok(k) if crate::openapi::valid_key(k.as_bytes()) => Ok(Some(k.to_owned())),
        _ => Err(Refusal::new(
            Code::InvalidIdempotencyKey,
            format!(
                "the Idempotency-Key must be 1 to {} visible ASCII characters (no spaces)",
                crate::openapi::MAX_KEY
            ),
        )),
    }
}

/// The input a body holds: `{}` when it is empty (or blank), else its JSON,
/// which its Content-Type must say it is.
fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    // Two: which type a proxy in front read the body as is not known.
    if repeated(headers, header::CONTENT_TYPE) {
        return Err(Refusal::new(
            Code::UnsupportedMediaType,
            "send one Content-Type header, not several",
        ));
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let is_json = json_type.as_deref().is_some_and(|t| {
        t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
    });
    if !is_json {
        return Err(Refusal::new(
            Code::UnsupportedMediaType,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    // A key twice in an object is refused: which one a proxy or a firewall
    // in front of the server read is not known.
    // The audit entry keeps a body it cannot hold as JSON, as text.
    let as_text = || match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::Null,
    };
    let too_deep = || sinew_core::input::too_deep_detail("the body");
    let input = sinew_core::spec::source::strict_from_slice(bytes).map_err(|e| {
        let detail = if e.to_string().contains("recursion limit") {
            too_deep()
        } else {
            format!(
                "the body is not valid JSON: {}",
                short_json_error(&e.to_string())
            )
        };
        Refusal::new(Code::InvalidJson, detail).with_input(as_text())
    })?;
    // Refused here, before the request crosses into the component, which
    // could not read it back whole (the core refuses it as well).
    if sinew_core::input::too_deep(&input) {
        return Err(Refusal::new(Code::InvalidJson, too_deep()).with_input(as_text()));
    }
    Ok(input)
}

/// A JSON parser's message with the key it names quoted short (a
/// duplicate key may be any length; a message quotes at most the first 40
/// characters of a value).
fn short_json_error(message: &str) -> String {
    let Some(rest) = message.strip_prefix("duplicate key `") else {
        return message.to_owned();
    };
    match rest.rfind("` at line ") {
        Some(end) => format!(
            "duplicate key `{}`{}",
            short_path(&rest[..end]),
            &rest[end + 1..]
        ),
        None => message.to_owned(),
    }
}

/// A path (or a key) as a message quotes it: whole up to 40 characters,
/// else its first 40 and its length.
fn short_path(path: &str) -> String {
    let n = path.chars().count();
    if n <= 40 {
        return path.to_owned();
    }
    let head: String = path.chars().take(40).collect();
    format!("{head}… ({n} characters)")
}

/// With `--test-hooks`: the request's id and the clock, as the
/// `x-sinew-test-request-id` and `x-sinew-test-now` headers set them.
fn apply_test_hooks(
    clock: &crate::runtime::clock::ManualClock,
    headers: &HeaderMap,
    id: &mut String,
) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(given) = header("x-sinew-test-request-id") {
        *id = given;
    }
    let now = header("x-sinew-test-now")
        .and_then(|t| sinew_core::expr::value::parse_timestamp(&t))
        .map(|us| us / 1000)
        .unwrap_or_else(system_now_ms);
    clock.0.store(now, Ordering::SeqCst);
}

/// The answer to a Pub/Sub push: the tool's own when it acknowledges the
/// message (success), 200 with `{"acknowledged": true, "problem": …}` for
/// a failure delivering again cannot mend (so Pub/Sub stops: among them a
/// failure stored for the message's key, which another delivery would only
/// be answered again), and the problem as it is otherwise (non-2xx:
/// Pub/Sub delivers again).
fn queue_response(reply: Reply, id: &str) -> hyper::Response<Body> {
    // A success goes out as it is, its body unread.
    let Some(problem) = problem_of(&reply) else {
        return tool_response(reply, id);
    };
    let code = problem.get("code").and_then(Value::as_str);
    if !reply.replayed && !crate::queue::acknowledges(reply.status, code) {
        return tool_response(reply, id);
    }
    let body = json!({"acknowledged": true, "problem": problem});
    let mut r = respond(200, "application/json", Bytes::from(body.to_string()));
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// The problem+json body of a reply that is an error (a success's body is
/// not read).
fn problem_of(reply: &Reply) -> Option<Value> {
    (reply.status >= 400)
        .then(|| serde_json::from_str(&reply.body).ok())
        .flatten()
}

/// What a path that answers GET allows (HEAD too, as for a GET tool).
fn get_and_head() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// A 405 naming the methods `path` answers, in its `Allow` header too.
fn method_not_allowed(path: &str, allow: &[String], id: &str) -> hyper::Response<Body> {
    let mut r = problem(
        Code::MethodNotAllowed,
        &format!("`{}` answers {}", short_path(path), allow.join(", ")),
        id,
    );
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// The HTTP response of a tool's reply; `id` is the request's id.
fn tool_response(reply: Reply, id: &str) -> hyper::Response<Body> {
    // Only a 429's body is read again (the rate limit's says when to
    // retry); every other body goes out as the executor wrote it.
    let rate_limited = reply.status == 429
        && serde_json::from_str::<Value>(&reply.body)
            .is_ok_and(|b| b.get("code") == Some(&json!("rate_limited")));
    let status = reply.status;
    let mut r = respond(
        status,
        if status >= 400 {
            "application/problem+json"
        } else {
            "application/json"
        },
        Bytes::from(reply.body),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-request-id", v);
    }
    if rate_limited {
        // Rate windows are calendar minutes: the next one starts in…
        let now = system_now_ms();
        let wait = 60 - now.div_euclid(1000).rem_euclid(60);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
    }
    if status == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(detail) = reply.internal {
        r.extensions_mut().insert(Internal(detail));
    }
    if !reply.escalated.is_empty() {
        r.extensions_mut()
            .insert(Escalated(reply.escalated, reply.caller));
    }
    r
}

/// Builds the snapshot of the served spec on a thread of its own (two
/// compilations of the component: seconds of CPU, once per spec and
/// component, then cached) and installs it when done.
fn build_snapshot(executor: Arc<Executor>, cache: std::path::PathBuf, log: Log) {
    let thread_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("sinew-snapshot".into())
        .spawn(move || {
            let log = thread_log;
            let started = Instant::now();
            let built = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(executor.snapshot(Some(&cache))));
            match built {
                Ok(_) => log.info(&format!(
                    "new instances now start from a snapshot of the loaded spec (built in {:.1} s; \
                     later starts load it from {})",
                    started.elapsed().as_secs_f64(),
                    cache.display()
                )),
                Err(e) => log.warn(&format!(
                    "the spec could not be snapshotted, instances keep loading it: {e:#}"
                )),
            }
        });
    if let Err(e) = spawned {
        log.warn(&format!("the snapshot thread could not start: {e}"));
    }
}

/// A database reached by `sinew serve`, `migrate` and `audit verify`:
/// the configured one, or the embedded cluster.
pub struct Database {
    /// Connection settings.
    pub config: tokio_postgres::Config,
    /// The embedded cluster, when there is one (stopped on drop).
    pub embedded: Option<Embedded>,
}

impl Database {
    /// `url`, or the embedded cluster in `<data_dir>/pg`, for a command
    /// other than `serve`: a cluster found running is left running.
    pub fn open(url: Option<&str>, data_dir: &std::path::Path) -> Result<Database> {
        Self::open_with(url, data_dir, Embedded::start_for_command)
    }

    /// [`Database::open`] for `sinew serve`: a cluster left running by a
    /// killed sinew is adopted (stopped when this server stops).
    pub fn open_serving(url: Option<&str>, data_dir: &std::path::Path) -> Result<Database> {
        Self::open_with(url, data_dir, Embedded::start)
    }

    /// `url`, or the embedded cluster started by `start`.
    fn open_with(
        url: Option<&str>,
        data_dir: &std::path::Path,
        start: fn(&std::path::Path) -> Result<Embedded>,
    ) -> Result<Database> {
        match url.filter(|u| !u.is_empty()) {
            Some(url) => {
                let config: tokio_postgres::Config = url
                    .parse()
                    .context("DATABASE_URL is neither a postgres:// URL nor key=value settings")?;
                Ok(Database {
                    config,
                    embedded: None,
                })
            }
            None => {
                let pg = start(&data_dir.join("pg"))?;
                Ok(Database {
                    config: pg.config(),
                    embedded: Some(pg),
                })
            }
        }
    }

    /// A connection outside any pool.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        Ok(crate::pg::pool::connect(&self.config).await?)
    }
}

/// Runs the server until SIGTERM or SIGINT; returns the exit code.
pub fn run(args: &Args) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        serve(args, |_| {}, stop).await.map(|()| 0)
    })
}

/// Serves until `stop` completes, then drains requests in flight (at most
/// 10 s) and stops the embedded database if it started one. `ready` is
/// told the address once the server accepts connections.
pub async fn serve(
    args: &Args,
    ready: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let start = Start {
        args,
        log: Log::new(&args.log),
        started: Instant::now(),
    };
    let log = &start.log;
    let (text, spec) = read_spec(&args.spec)?;
    start.phase("spec loaded");
    if let Some(path) = &args.metrics_path {
        metrics_path_free(&spec, path)?;
    }
    if args.test_hooks && !args.listen.is_loopback() {
        bail!("--test-hooks is for tests: it is refused unless listening on a loopback address");
    }
    // Listening first: a client that connects while the server starts
    // waits in the socket's backlog and is answered once it is ready,
    // instead of being refused and trying again.
    let addr = SocketAddr::new(args.listen, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let https = crate::tls::client(args.ca_file.as_deref())?;
    let telemetry = crate::telemetry::init(
        &crate::telemetry::Settings {
            prometheus: args.metrics_listen.is_some() || args.metrics_path.is_some(),
        },
        https.clone(),
    )?;
    let jwt = args.jwt(&https).await?;
    let push_auth = args.push_auth(&spec, &https).await?;
    start.phase("TLS roots and JWT keys ready");
    // The spec's secrets and URLs, read once: checked here, used after.
    let secrets = args.secrets();
    let external = Arc::new(crate::http_external::HttpExternal::configured(
        &spec,
        &args.external,
        https.clone(),
        &secrets,
    )?);
    let webhooks = crate::webhook::webhooks(&spec, &secrets);
    // The audit chain's checkpoints are signed with this key, when set.
    let audit_signer = secrets
        .get(crate::pg::checkpoint::KEY_VAR)
        .map(|k| crate::pg::checkpoint::Signer::from_secret(&k))
        .transpose()
        .with_context(|| format!("{} is not a signing key", crate::pg::checkpoint::KEY_VAR))?;
    let missing = missing_settings(&spec, &jwt, push_auth.as_ref(), &external, &webhooks);
    if !missing.is_empty() {
        bail!(
            "the spec needs settings that are not set; sinew serve does not start without them:\n{}\n(set each in the environment: Cloud Run maps Secret Manager secrets to variables)",
            missing
                .iter()
                .map(|m| format!("  - {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if !jwt.enabled() {
        log.warn(
            "no SINEW_JWT_SECRET or SINEW_JWT_JWKS: only public tools, webhooks and schedules run",
        );
    }
    let db = start.open_database()?;
    // The component loads (CPU) while the database is migrated (I/O).
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("cache"));
    let engine = start.load_engine(&cache, &text);
    let storage = Arc::new(PgBackend::new(
        db.config.clone(),
        &spec,
        args.pool_size,
        Some(crate::component_hash(crate::COMPONENT)),
    ));
    if !args.no_migrate {
        start.migrate(&spec, &text, &storage).await?;
    }
    // The spec served, under the hash its audit entries name: what
    // `sinew audit replay` runs them on (in the background: not on the
    // start's path).
    tokio::spawn({
        let (storage, text, log) = (storage.clone(), text.clone(), log.clone());
        async move {
            let recorded = async {
                let client = storage.connect().await?;
                crate::replay::record_bundle(&client, &text).await
            };
            if let Err(e) = recorded.await {
                log.warn(&format!(
                    "the spec could not be recorded in sinew_bundle (replay needs --spec): {e:#}"
                ));
            }
        }
    });
    let (engine, snapshot) = engine.await.context("loading the component")??;
    let snapshot = snapshot.unwrap_or_else(|e| {
        log.warn(&format!(
            "the cached snapshot of this spec cannot be used, it is built again: {e:#}"
        ));
        None
    });
    start.phase("component ready (compiled or loaded from the cache)");
    let test_clock = args.test_hooks.then(|| {
        Arc::new(crate::runtime::clock::ManualClock(
            std::sync::atomic::AtomicI64::new(system_now_ms()),
        ))
    });
    if test_clock.is_some() {
        log.warn("test hooks are on: requests may set the clock and their ids");
    }
    let backends = Start::backends(&storage, test_clock.as_ref(), external);
    let outbox_external = backends.external.clone();
    let core = if args.native {
        start.native(&text, backends)?
    } else {
        let executor = start
            .component(engine, snapshot, &text, backends, &cache)
            .await?;
        Core::Component(executor)
    };
    let app = Arc::new(start.app(
        &spec,
        text,
        core,
        Verifiers {
            jwt,
            push_auth,
            webhooks,
        },
        &storage,
        test_clock,
    ));
    let local = listener.local_addr()?;
    let metrics_server = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, log.clone()).await?),
        None => None,
    };
    let backlog = crate::telemetry::metrics().map(|m| watch_gauges(m, &app, &storage));
    start.ready_line(&spec, &app, local);
    warm_pool(storage.clone(), args.pool_size, app.first_answer.clone());
    // A JWKS by URL is fetched again every 10 minutes (keys rotate).
    if args
        .jwt_jwks
        .as_deref()
        .is_some_and(|j| j.starts_with("http"))
    {
        refresh_jwks(app.clone(), args.clone(), log.clone(), https.clone());
    }
    let janitor = janitor(storage.clone(), log.clone());
    // Audit entries are chained shortly after their commit.
    let (stop_sequencer, stopped) = tokio::sync::watch::channel(false);
    let sequencer = tokio::spawn({
        let (storage, stop, log) = (storage.clone(), stopped, log.clone());
        let signer = audit_signer.clone();
        async move {
            let connect = || async { Ok(storage.connect().await?) };
            crate::pg::sequencer::run(connect, storage.audit_ready.clone(), stop, signer, |e| {
                match e {
                    crate::pg::sequencer::Event::Problem(m) => log.error(&m),
                    crate::pg::sequencer::Event::Checkpoint(v) => log.checkpoint(v),
                }
            })
            .await;
        }
    });
    // Messages `emit` recorded are delivered after their commit (by the
    // instances of a spec that emits).
    let deliverer = (crate::outbox::emits(&spec) && !args.no_outbox).then(|| {
        tokio::spawn(crate::outbox::deliver_forever(
            storage.clone(),
            outbox_external,
            log.clone(),
        ))
    });
    let cron = if args.no_cron {
        Vec::new()
    } else {
        schedules(&app, &storage)
    };

    ready(local);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let conns = accept(&listener, &app, &stop_rx, stop, log).await;
    log.info("stopping: finishing requests in flight");
    drop(listener);
    let _ = stop_tx.send(true);
    drain(conns, log).await;
    janitor.abort();
    if let Some(d) = deliverer {
        d.abort();
    }
    for task in cron {
        task.abort();
    }
    // What this instance's requests queued is chained before it goes.
    let _ = stop_sequencer.send(true);
    if tokio::time::timeout(Duration::from_secs(10), sequencer)
        .await
        .is_err()
    {
        log.warn("stopping: the audit sequencer did not finish in 10 s; another instance (or `sinew audit sequence`) chains what is queued");
    }
    if let Some(t) = backlog {
        t.abort();
    }
    if let Some(t) = metrics_server {
        t.abort();
    }
    // Spans still in the batch, and the last metrics, go out now.
    let flushed = tokio::task::spawn_blocking(|| telemetry.flush());
    let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
    drop(app);
    drop(db);
    log.info("stopped");
    Ok(())
}

/// Refuses a `--metrics-path` that is not a path, or that the server
/// answers already: a tool's route (whatever its method: the metrics would
/// take the tool's place), `/tools/…`, `/queues/…`, the health and
/// readiness probes, the OpenAPI document, the studio, the reviews.
fn metrics_path_free(spec: &sinew_core::spec::Spec, path: &str) -> Result<()> {
    if !path.starts_with('/') || path.contains(['?', '#']) {
        bail!("--metrics-path `{path}` must be a path, such as `/internal/metrics`");
    }
    let mut tools = Router::new(spec).tools_at(path);
    tools.sort();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let taken = if !tools.is_empty() {
        let names: Vec<String> = tools.iter().map(|t| format!("`{t}`")).collect();
        format!("the route of {}", names.join(", "))
    } else if under("/tools") {
        "`POST /tools/{name}`, which calls any tool by name".to_owned()
    } else if under("/queues") {
        "the Pub/Sub pushes (`/queues/…`)".to_owned()
    } else if matches!(path, "/healthz" | "/readyz") {
        "a health probe".to_owned()
    } else if path == "/openapi.json" {
        "the OpenAPI document".to_owned()
    } else if under("/studio") {
        "the studio (`/studio/`)".to_owned()
    } else if spec.reviews.is_some() && reviews::is_review_path(path) {
        "the reviews (`/reviews`)".to_owned()
    } else {
        return Ok(());
    };
    bail!(
        "--metrics-path `{path}` is a path the server answers already ({taken}): choose another, such as `/internal/metrics`"
    )
}

/// Serves `GET /metrics` (Prometheus' text format) on `addr`, a listener
/// of its own: nothing else is answered there.
async fn serve_metrics(addr: SocketAddr, log: Log) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    log.info(&format!("metrics served at http://{local}/metrics"));
    // Ids of their own: every answer carries one, as on the main port.
    let ids = Arc::new(Ids::new(format!("metrics:{local}")));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ids = ids.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<Incoming>| {
                    let id = ids.next();
                    async move {
                        let mut r =
                            metrics_response(req.method(), req.uri().path(), "/metrics", &id);
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            r.headers_mut().insert("x-request-id", v);
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

/// The answer to a request for metrics at `path` (served at `at`); `id`
/// is the request's id, which a problem carries.
fn metrics_response(method: &Method, path: &str, at: &str, id: &str) -> hyper::Response<Body> {
    let text = crate::telemetry::get().and_then(crate::telemetry::Telemetry::prometheus_text);
    match (method, path == at, text) {
        (&Method::GET | &Method::HEAD, true, Some(text)) => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(text),
        ),
        (_, true, Some(_)) => method_not_allowed(path, &get_and_head(), id),
        _ => problem(Code::NotFound, &format!("no metrics at {path}"), id),
    }
}

/// Points the gauges at the server: the pool and the instances are read
/// when the metrics are, the outbox's and the audit queue's backlog every
/// 5 s (one query; the task returned).
fn watch_gauges(
    metrics: &'static crate::telemetry::Metrics,
    app: &Arc<App>,
    storage: &Arc<PgBackend>,
) -> tokio::task::JoinHandle<()> {
    let backlog = Arc::new(std::sync::Mutex::new(crate::pg::Backlog::default()));
    let (weak_app, weak_db, last) = (
        Arc::downgrade(app),
        Arc::downgrade(storage),
        backlog.clone(),
    );
    metrics.gauges.read_from(move || {
        let p = weak_db
            .upgrade()
            .map(|db| db.pool_stats())
            .unwrap_or_default();
        let (instances_in_use, instances_idle) = match weak_app.upgrade().as_deref() {
            Some(App {
                core: Core::Component(e),
                ..
            }) => e.instance_stats(),
            _ => (0, 0),
        };
        let b = last.lock().map(|b| *b).unwrap_or_default();
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        crate::telemetry::Readings {
            pool_in_use: n(p.in_use),
            pool_idle: n(p.idle),
            pool_waiting: n(p.waiting),
            pool_max: n(p.max),
            instances_in_use: n(instances_in_use),
            instances_idle: n(instances_idle),
            outbox_pending: b.outbox_pending,
            outbox_lag_ms: b.outbox_lag_ms,
            audit_queued: b.audit_queued,
            audit_lag_ms: b.audit_lag_ms,
        }
    });
    let db = storage.clone();
    tokio::spawn(async move {
        loop {
            if let (Ok(b), Ok(mut last)) = (db.backlog().await, backlog.lock()) {
                *last = b;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// What verifies the callers: bearer tokens, Pub/Sub's push tokens,
/// webhooks' signatures.
struct Verifiers {
    jwt: JwtConfig,
    push_auth: Option<crate::queue::PushAuth>,
    webhooks: std::collections::HashMap<String, crate::webhook::Webhook>,
}

/// Every setting the spec needs that is not set: each webhook's secret,
/// each external's URL and auth secret, and JWT verification when a tool
/// called over HTTP needs a signed-in caller. `sinew serve` refuses to
/// start while any is missing (a caller is never the one told).
fn missing_settings(
    spec: &sinew_core::spec::Spec,
    jwt: &JwtConfig,
    push_auth: Option<&crate::queue::PushAuth>,
    external: &crate::http_external::HttpExternal,
    webhooks: &std::collections::HashMap<String, crate::webhook::Webhook>,
) -> Vec<String> {
    use sinew_core::spec::Trigger;
    let mut missing = external.missing();
    let mut hooks: Vec<_> = webhooks.iter().collect();
    hooks.sort_by(|a, b| a.0.cmp(b.0));
    for (name, hook) in hooks {
        if !hook.configured() {
            missing.push(match &hook.variable {
                Some(v) => format!("{v} (the signing secret of webhook `{name}`)"),
                None => format!(
                    "a `secret` for webhook `{name}`: its trigger names no environment variable"
                ),
            });
        }
    }
    let signed_in: Vec<&str> = spec
        .tools
        .iter()
        .filter(|(name, t)| {
            !spec.broken_tools.contains(*name)
                && !t.auth.public
                && matches!(t.trigger, Trigger::Http { .. })
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let queues: Vec<String> = spec
        .tools
        .iter()
        .filter(|(_, t)| matches!(t.trigger, Trigger::Queue { .. }))
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if !queues.is_empty() && push_auth.is_none() {
        missing.push(format!(
            "SINEW_PUBSUB_AUDIENCE (the audience of Pub/Sub's push tokens, for the queue tools {})",
            queues.join(", ")
        ));
    }
    if !jwt.enabled() && !signed_in.is_empty() {
        let shown: Vec<String> = signed_in.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = signed_in.len().saturating_sub(5);
        missing.push(format!(
            "SINEW_JWT_SECRET or SINEW_JWT_JWKS (to verify callers: {}{} {} a signed-in caller)",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            if signed_in.len() == 1 {
                "needs"
            } else {
                "need"
            }
        ));
    }
    missing
}

/// The spec's text and model; a spec with errors is refused with its
/// first.
fn read_spec(path: &std::path::Path) -> Result<(String, sinew_core::spec::Spec)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec `{}`", path.display()))?;
    let loaded = sinew_core::spec::load(&text);
    if let Some(d) = loaded.errors.first() {
        bail!(
            "`{}` is not a valid spec: {} at {} (run `sinew check` for all findings)",
            path.display(),
            d.message,
            d.path
        );
    }
    Ok((text, loaded.spec))
}

/// The component loaded, and the cached snapshot of the spec if there is
/// one (an error says why the one there cannot be used).
type Loaded = (Arc<Engine>, Result<Option<Snapshot>>);

/// What the steps of [`serve`]'s start share: the options, the log, and
/// when the start began (the debug log times each phase from it).
struct Start<'a> {
    args: &'a Args,
    log: Log,
    started: Instant,
}

impl Start<'_> {
    /// Logs that a phase of the start is done, and when (debug level).
    fn phase(&self, what: &str) {
        self.log.phase(self.started, what);
    }

    /// The database of DATABASE_URL, or the embedded one it starts.
    fn open_database(&self) -> Result<Database> {
        // (The URL holds the database's password: a secret, read from
        // `--secrets-dir` too.)
        let url = self
            .args
            .database_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| self.args.secrets().get("DATABASE_URL"));
        let db = Database::open_serving(url.as_deref(), &self.args.data_dir)?;
        if let Some(pg) = &db.embedded {
            self.log.info(&format!(
                "embedded Postgres running on {} (data in {})",
                pg.url(),
                pg.data().display()
            ));
        }
        self.phase("database opened");
        Ok(db)
    }

    /// Loads, on a blocking thread, the component (compiled or from
    /// `cache`) and the cached snapshot of the spec `text`, if any.
    fn load_engine(
        &self,
        cache: &std::path::Path,
        text: &str,
    ) -> tokio::task::JoinHandle<Result<Loaded>> {
        let (cache, text, snapshots) = (cache.to_owned(), text.to_owned(), !self.args.no_snapshot);
        let log = self.log.clone();
        let started = self.started;
        tokio::task::spawn_blocking(move || -> Result<_> {
            let engine = Engine::deferred(Some(&cache))?;
            let snapshot = match snapshots {
                true => engine.cached_snapshot(&text, &cache),
                false => Ok(None),
            };
            // Without a snapshot, instances come from the component itself.
            if !matches!(snapshot, Ok(Some(_))) {
                engine.load()?;
            }
            log.phase(started, "snapshot or component loaded (another thread)");
            Ok((engine, snapshot))
        })
    }

    /// Migrates the database to the spec (refusing a migration that
    /// loses data) and warms up the catalog, on a connection of the pool:
    /// the first request finds it open.
    async fn migrate(
        &self,
        spec: &sinew_core::spec::Spec,
        text: &str,
        storage: &PgBackend,
    ) -> Result<()> {
        let log = &self.log;
        let mut conn = storage
            .connection()
            .await
            .context("connecting to the database")?;
        self.phase("connected to the database");
        // Whether the schema is current and the catalog warm-up, together:
        // on a migrated database (every start but the first) the warm-up
        // is what the start needs, one round trip sooner.
        // A recorded schema is not compared again, but a column the spec
        // lacks that makes inserts fail (added by hand since) is refused as
        // `sinew migrate` refuses it (`migrate::unknown_column`).
        let (migrated, warm, refused) = tokio::join!(
            crate::pg::migrate::recorded(&conn.client, spec),
            storage.warm_catalog(&conn.client),
            crate::pg::migrate::refused_columns(&conn.client, spec)
        );
        let refuse = |refusals: &[String]| {
            anyhow::anyhow!(
                "the database does not match the spec, and migrating would lose data:\n  {}\n\
                 Review `sinew migrate {}` and run it with --apply --allow-destructive",
                refusals.join("\n  "),
                self.args.spec.display()
            )
        };
        let warm = if migrated {
            let refused = refused?;
            if !refused.is_empty() {
                return Err(refuse(&refused));
            }
            self.phase("schema already migrated to this spec");
            warm
        } else {
            let client = &mut conn.client;
            let mode = crate::pg::migrate::Mode::Serve;
            let mut m = crate::pg::migrate::plan_for(Some(client), spec, mode).await?;
            if !m.destructive.is_empty() {
                return Err(refuse(&m.destructive));
            }
            self.phase("migration planned");
            m.bundle = crate::replay::bundle_hash(text).ok();
            let applied = crate::pg::migrate::apply(client, spec, &m)
                .await
                .map_err(|e| match e.downcast_ref::<crate::pg::migrate::Refused>() {
                    Some(r) => refuse(&r.0),
                    None => e,
                })?;
            for note in &applied.migration.kept {
                log.info(note);
            }
            self.phase("migration applied");
            storage.warm_catalog(&conn.client).await
        };
        match warm {
            Ok(prepared) => {
                conn.remember(prepared);
                self.phase("database catalog warmed up");
            }
            Err(e) => log.warn(&format!("warming up the database catalog failed: {e}")),
        }
        storage.give_back(conn);
        Ok(())
    }

    /// What the core runs on: the database, the clock (the test hooks'
    /// when on) and the external services over `https`.
    fn backends(
        storage: &Arc<PgBackend>,
        test_clock: Option<&Arc<crate::runtime::clock::ManualClock>>,
        external: Arc<crate::http_external::HttpExternal>,
    ) -> Backends {
        let clock: Arc<dyn crate::runtime::clock::ClockBackend> = match test_clock {
            Some(c) => c.clone(),
            None => Arc::new(crate::runtime::clock::SystemClock),
        };
        // Traces on: every storage operation in a span of its own.
        let storage: Arc<dyn crate::runtime::storage::StorageBackend> =
            if crate::telemetry::tracer().is_some() {
                Arc::new(crate::telemetry::Traced(storage.clone()))
            } else {
                storage.clone()
            };
        Backends {
            storage,
            clock,
            external,
        }
    }

    /// The interpreter compiled into this binary (`--native`).
    fn native(&self, text: &str, backends: Backends) -> Result<Core> {
        self.log.warn("--native: the interpreter runs in-process, without deadlines or isolation (benchmarks only)");
        Ok(Core::Native(
            crate::native::Native::new(text, backends)
                .map_err(|e| anyhow::anyhow!("the spec cannot be served: {e}"))?,
        ))
    }

    /// The component's executor: from `snapshot`, else with the spec
    /// loaded into a first instance (and a snapshot then built in the
    /// background, unless `--no-snapshot`); instances for the first burst
    /// are made once the server is up.
    async fn component(
        &self,
        engine: Arc<Engine>,
        snapshot: Option<Snapshot>,
        text: &str,
        backends: Backends,
        cache: &std::path::Path,
    ) -> Result<Arc<Executor>> {
        let executor = match snapshot {
            Some(s) => {
                let e = Executor::from_snapshot(engine, text.to_owned(), backends, s);
                self.phase("snapshot of the loaded spec ready");
                e
            }
            None => {
                let e = Executor::new(engine, text.to_owned(), backends)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "the spec cannot be served: {} (at {})",
                            e.message,
                            e.pointer
                        )
                    })?;
                self.phase("bundle loaded into the first instance");
                e
            }
        };
        let executor = Arc::new(executor);
        if !self.args.no_snapshot && !executor.snapshotted() {
            build_snapshot(executor.clone(), cache.to_owned(), self.log.clone());
        }
        // Ready instances for the first burst, made after the server is up.
        tokio::spawn({
            let executor = executor.clone();
            async move { executor.warm(WARM_INSTANCES).await }
        });
        Ok(executor)
    }

    /// The server's state: the routes, each tool's input schema, deadline
    /// and webhook, the OpenAPI document, and the studio when it is on.
    fn app(
        &self,
        spec: &sinew_core::spec::Spec,
        text: String,
        core: Core,
        Verifiers {
            jwt,
            push_auth,
            webhooks,
        }: Verifiers,
        storage: &Arc<PgBackend>,
        test_clock: Option<Arc<crate::runtime::clock::ManualClock>>,
    ) -> App {
        let args = self.args;
        let bundle_hash = match &core {
            Core::Component(e) => e.bundle_hash.clone(),
            Core::Native(n) => n.bundle_hash().to_owned(),
        };
        let openapi = crate::openapi::document(spec, &bundle_hash);
        if args.no_studio {
            self.log
                .warn("--no-studio is deprecated: the studio is off unless --studio");
        } else if args.studio {
            self.log.info(
                "the studio is on at /studio/: it shows the spec to whoever can reach the server",
            );
        }
        let studio = (args.studio && !args.no_studio).then(|| {
            (
                crate::studio::Startup::named(&args.spec, text),
                tokio::sync::OnceCell::new(),
            )
        });
        App {
            router: Router::new(spec),
            inputs: spec
                .tools
                .iter()
                .map(|(n, t)| (n.clone(), t.input_shape.clone()))
                .collect(),
            deadlines: spec
                .tools
                .iter()
                .filter_map(|(n, t)| Some((n.clone(), Duration::from_millis(t.limits.timeout_ms?))))
                .collect(),
            core,
            jwt: std::sync::RwLock::new(Arc::new(jwt)),
            openapi: Bytes::from(openapi.to_string()),
            max_body: args.max_body,
            db: storage.clone(),
            log: self.log.clone(),
            ids: Ids::new(args.port.to_string()),
            webhooks,
            push_auth,
            queue_callers: spec
                .tools
                .iter()
                .filter_map(|(n, t)| match &t.trigger {
                    sinew_core::spec::Trigger::Queue { name } => {
                        Some((n.clone(), (format!("queue:{name}"), t.auth.roles.clone())))
                    }
                    _ => None,
                })
                .collect(),
            cron_tools: crate::schedule::jobs(spec)
                .into_iter()
                .map(|j| (j.tool.clone(), j))
                .collect(),
            test_clock,
            studio,
            cors: spec.cors.clone(),
            reviews: spec.reviews.clone(),
            keys: crate::keys::Keys::default(),
            metrics_path: self.args.metrics_path.clone(),
            first_answer: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The start-up line: what is served, how fast it started, where.
    fn ready_line(&self, spec: &sinew_core::spec::Spec, app: &App, local: SocketAddr) {
        let from = match &app.core {
            Core::Component(e) if e.snapshotted() => ", instances from a snapshot",
            _ => "",
        };
        self.log.info(&format!(
            "sinew serving `{}` ({} tool{}, {} route{}), ready in {:.0} ms{from}, on http://{local}",
            spec.name,
            spec.tools.len(),
            if spec.tools.len() == 1 { "" } else { "s" },
            app.router.routes.len(),
            if app.router.routes.len() == 1 {
                ""
            } else {
                "s"
            },
            self.started.elapsed().as_secs_f64() * 1000.0
        ));
    }
}

/// Runs each cron tool on its schedule, one task per tool (see
/// [`crate::schedule::run_job`]); a schedule not yet recorded in the
/// database is recorded first (tried again every 10 s while it fails).
fn schedules(app: &Arc<App>, storage: &Arc<PgBackend>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for job in app.cron_tools.values().cloned() {
        let (app, storage) = (app.clone(), storage.clone());
        tasks.push(tokio::spawn(async move {
            let first_seen = loop {
                let recorded = storage
                    .record_schedule(&job.tool, &job.schedule, &job.timezone, app.now_ms())
                    .await;
                match recorded {
                    Ok(t) => break t,
                    Err(e) => {
                        app.log.error(&format!(
                            "recording the schedule of `{}` failed (tried again in 10 s): {e}",
                            job.tool
                        ));
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            };
            app.log.info(&format!(
                "cron `{}` runs at `{}` in {}",
                job.tool, job.schedule, job.timezone
            ));
            // A test clock moves without anyone sleeping: look at it often.
            let poll = app.test_clock.is_some().then(|| Duration::from_millis(50));
            let (tool, roles) = (job.tool.clone(), job.roles.clone());
            crate::schedule::run_job(
                job,
                first_seen,
                || app.now_ms(),
                poll,
                |at| {
                    let app = app.clone();
                    let (tool, roles) = (tool.clone(), roles.clone());
                    async move { app.scheduled_run(&tool, &roles, at).await }
                },
            )
            .await
        }));
    }
    tasks
}

/// Opens database connections for the first burst too, once the first
/// response is out (`first` is told) or after a quiet second: each is a
/// backend process the database forks, and the first request should not
/// wait for the CPU behind a dozen of them. Requests before then connect
/// as needed.
fn warm_pool(storage: Arc<PgBackend>, pool_size: usize, first: Arc<tokio::sync::Notify>) {
    let n = pool_size.min(WARM_INSTANCES);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), first.notified()).await;
        storage.warm(n).await
    });
}

/// Fetches the JWKS (a URL) again every 10 minutes, as keys rotate; a
/// failed fetch keeps the keys in hand.
fn refresh_jwks(app: Arc<App>, args: Args, log: Log, https: crate::tls::HttpsClient) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            match args.jwt(&https).await {
                Ok(j) => {
                    if let Ok(mut slot) = app.jwt.write() {
                        *slot = Arc::new(j);
                    }
                }
                Err(e) => log.error(&format!("refreshing the JWKS failed: {e:#}")),
            }
        }
    });
}

/// Forgets old idempotency keys and rate windows every 10 minutes; the
/// first time a few seconds after the start, so the connection the start
/// leaves open serves the first request instead.
fn janitor(db: Arc<PgBackend>, log: Log) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        loop {
            let now =
                crate::runtime::clock::ClockBackend::now_ms(&crate::runtime::clock::SystemClock);
            if let Err(e) = db.prune(now).await {
                log.error(&format!("pruning old idempotency keys failed: {e}"));
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    })
}

/// Accepts connections until `stop` completes, each served in a task of
/// the set returned; they shut down gracefully once `stop_rx` changes.
async fn accept(
    listener: &TcpListener,
    app: &Arc<App>,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
    log: &Log,
) -> tokio::task::JoinSet<()> {
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        log.error(&format!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(app.clone(), stream, remote, stop_rx.clone()));
                while conns.try_join_next().is_some() {}
            }
            () = &mut stop => break,
        }
    }
    conns
}

/// Serves one connection's requests until it closes, or until `stop`
/// changes: then it finishes the request in flight and closes.
async fn connection(
    app: Arc<App>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(app.handle(req, remote).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Waits for the connections to finish, at most [`DRAIN`]; those still
/// running then are abandoned.
async fn drain(mut conns: tokio::task::JoinSet<()>, log: &Log) {
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log.error("requests still running after 10 s were abandoned");
        conns.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_idempotency_key_or_none() {
        let mut h = HeaderMap::new();
        assert!(matches!(idempotency_key(&h), Ok(None)));
        h.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&h).ok().flatten().as_deref(), Some("k-1"));
        h.append("idempotency-key", "k-2".parse().unwrap());
        assert!(idempotency_key(&h).is_err(), "two keys are refused");
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "a b".parse().unwrap());
        assert!(idempotency_key(&h).is_err(), "a space is refused");
    }

    #[test]
    fn decoding_and_typing_parameters() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(query_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz%4").as_deref(), Some("%zz%4"));
        // Bytes that are not UTF-8 are not text (they once became U+FFFD).
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(query_decode("a%C3"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        let int = json!({"type": "integer"});
        assert_eq!(typed(Some(&int), "42"), json!(42));
        assert_eq!(typed(Some(&int), "4x"), json!("4x"));
        // Whole decimals reach the contract as numbers, which reads them as
        // integers; `inf` stays text.
        assert_eq!(typed(Some(&int), "5.0"), json!(5.0));
        assert_eq!(typed(Some(&int), "inf"), json!("inf"));
        assert_eq!(
            typed(Some(&json!({"type": ["boolean", "null"]})), "true"),
            json!(true)
        );
        assert_eq!(typed(None, "7"), json!("7"));
    }

    #[test]
    fn literal_routes_win_and_wrong_methods_say_allow() {
        let spec = sinew_core::spec::load(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../specs/examples/booking.json"
            ))
            .unwrap(),
        )
        .spec;
        let r = Router::new(&spec);
        match r.find(&Method::POST, "/holds/expire") {
            Found::Tool(t, p) => assert_eq!((t.as_str(), p.len()), ("expire_holds", 0)),
            _ => panic!("no route"),
        }
        match r.find(&Method::GET, "/holds/abc") {
            Found::Tool(t, p) => {
                assert_eq!(
                    (t.as_str(), p),
                    ("get_hold", vec![("id".into(), "abc".into())])
                )
            }
            _ => panic!("no route"),
        }
        match r.find(&Method::PUT, "/holds") {
            Found::WrongMethod(allow) => assert_eq!(allow, vec!["GET", "HEAD", "POST"]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(r.find(&Method::GET, "/nowhere"), Found::Nothing));
        match r.find(&Method::POST, "/tools/list%5Frooms") {
            Found::Tool(t, p) => assert_eq!((t.as_str(), p.len()), ("list_rooms", 0)),
            _ => panic!("no route by name"),
        }
        match r.find(&Method::GET, "/tools/list_rooms") {
            Found::WrongMethod(allow) => assert_eq!(allow, vec!["POST"]),
            _ => panic!("expected 405"),
        }
    }

    /// The by-name calls and Pub/Sub's pushes are the server's: a route
    /// with parameters there (`/{a}/{b}`) does not take them, in any method.
    #[test]
    fn server_paths_win_over_parameters() {
        use sinew_core::spec::Trigger;
        let mut spec = sinew_core::spec::load(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../specs/examples/booking.json"
            ))
            .unwrap(),
        )
        .spec;
        for (tool, method) in [("expire_holds", "POST"), ("get_hold", "GET")] {
            spec.tools.get_mut(tool).unwrap().trigger = Trigger::Http {
                method: method.into(),
                path: "/{a}/{b}".into(),
            };
        }
        spec.tools.get_mut("list_rooms").unwrap().trigger = Trigger::Queue {
            name: "jobs".into(),
        };
        let r = Router::new(&spec);
        match r.find(&Method::POST, "/tools/list_rooms") {
            Found::Tool(t, p) => assert_eq!((t.as_str(), p.len()), ("list_rooms", 0)),
            _ => panic!("no route by name"),
        }
        assert!(
            matches!(r.find(&Method::POST, "/queues/jobs"), Found::Queue(t) if t == "list_rooms")
        );
        for path in ["/tools/list_rooms", "/queues/jobs"] {
            match r.find(&Method::GET, path) {
                Found::WrongMethod(allow) => assert_eq!(allow, vec!["POST"]),
                _ => panic!("expected 405 at {path}"),
            }
        }
        // Any other value is the route's.
        match r.find(&Method::POST, "/queues/other") {
            Found::Tool(t, p) => assert_eq!((t.as_str(), p.len()), ("expire_holds", 2)),
            _ => panic!("no route"),
        }
    }
}
