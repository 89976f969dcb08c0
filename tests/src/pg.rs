//! Real Postgres for tests: a private throwaway cluster (initdb + pg_ctl in a
//! temporary directory, unix socket only), a `sinew serve` on it (in this
//! process, on a loopback port), an HTTP client, and a fake external
//! provider on loopback that answers from a script.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use sinew_host::pg::embedded::Embedded;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The JWT secret test servers use.
pub const SECRET: &str = "sinew-test-secret";

/// A throwaway cluster, stopped and deleted on drop.
pub struct Cluster {
    pg: Option<Embedded>,
    dir: PathBuf,
    next: AtomicU32,
}

impl Cluster {
    /// Starts a fresh cluster in a new temporary directory.
    pub fn start() -> Cluster {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sinew-test-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // The data directory's parents must be reachable by the server's
        // user when the tests run as root.
        set_mode(&dir, 0o755);
        let pg = Embedded::start(&dir.join("data")).expect("starting a test Postgres");
        Cluster {
            pg: Some(pg),
            dir,
            next: AtomicU32::new(0),
        }
    }

    fn pg(&self) -> &Embedded {
        self.pg.as_ref().expect("running")
    }

    /// A new empty database; returns its `DATABASE_URL`.
    pub async fn database(&self) -> String {
        let name = format!("t{}", self.next.fetch_add(1, Ordering::Relaxed));
        let client = connect(&self.pg().config()).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        self.pg().url().replace("/postgres?", &format!("/{name}?"))
    }

    /// Restarts the server abruptly (`-m immediate`).
    pub fn restart(&self) {
        self.pg().restart().expect("restart");
    }

    /// The server's log so far (empty when unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.pg().data().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.pg.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// A client for a database URL.
pub async fn connect_url(url: &str) -> tokio_postgres::Client {
    connect(&url.parse().expect("database url")).await
}

async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A `sinew serve` running in this process.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings of a test server beyond the defaults.
#[derive(Default, Clone)]
pub struct Options {
    /// Base URLs of externals (service → URL).
    pub externals: Vec<(String, String)>,
    /// Honour the test headers (clock, request id).
    pub test_hooks: bool,
    /// Do not run cron tools on their schedules (`--no-cron`).
    pub no_cron: bool,
    /// `--secrets-dir`.
    pub secrets_dir: Option<PathBuf>,
    /// `--pubsub-audience`.
    pub pubsub_audience: Option<String>,
    /// `--pubsub-jwks` (default Google's).
    pub pubsub_jwks: Option<String>,
    /// `--pubsub-service-account`.
    pub pubsub_service_account: Option<String>,
    /// Body limit.
    pub max_body: Option<usize>,
    /// JWT issuer and audience.
    pub issuer: Option<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// A JWKS file or URL.
    pub jwks: Option<String>,
    /// Extra trusted CA certificates (PEM file).
    pub ca_file: Option<PathBuf>,
    /// Run the native interpreter instead of the component.
    pub native: bool,
    /// Serve the studio at `/studio/` (`--studio`; off by default).
    pub studio: bool,
    /// Snapshot the loaded spec, as `sinew serve` does by default. Off for
    /// most tests: each new spec would cost seconds of CPU in the
    /// background.
    pub snapshot: bool,
}

/// A directory with a made-up value for every secret `spec_path` names
/// (`--secrets-dir`), so any spec can be served by the tests.
pub fn made_up_secrets(spec_path: &Path) -> PathBuf {
    let text = std::fs::read_to_string(spec_path).unwrap_or_default();
    let spec = sinew_core::spec::load(&text).spec;
    let dir = cache_dir().join("secrets").join(format!(
        "{}-{}",
        std::process::id(),
        sinew_core::hash::sha256_hex(text.as_bytes())
    ));
    let _ = std::fs::create_dir_all(&dir);
    for name in sinew_host::secrets::names(&spec) {
        // Written aside and renamed into place: two servers starting at
        // once on the same spec never read a file half written (an empty
        // secret is a missing one).
        let path = dir.join(&name);
        if path.exists() {
            continue;
        }
        let aside = dir.join(format!(".{name}.{:?}", std::thread::current().id()));
        let _ = std::fs::write(&aside, format!("made-up-{name}"));
        let _ = std::fs::rename(&aside, &path);
    }
    dir
}

/// The directory where compiled components are cached across test servers.
pub fn cache_dir() -> PathBuf {
    crate::root().join("target/test-sinew-data")
}

impl Server {
    /// Serves `spec_path` on `database_url`.
    pub async fn start(spec_path: &Path, database_url: &str, options: &Options) -> Server {
        match Server::try_start(spec_path, database_url, options).await {
            Ok(s) => s,
            Err(e) => panic!("the server did not start: {e}"),
        }
    }

    /// Serves `spec_path` on `database_url`, or says why the start failed.
    pub async fn try_start(
        spec_path: &Path,
        database_url: &str,
        options: &Options,
    ) -> Result<Server, String> {
        // The secrets the spec names, made up, unless the test gives its own.
        let secrets_dir = match &options.secrets_dir {
            Some(d) => d.clone(),
            None => made_up_secrets(spec_path),
        };
        let args = sinew_host::serve::Args {
            spec: spec_path.to_path_buf(),
            port: 0,
            listen: "127.0.0.1".parse().expect("ip"),
            database_url: Some(database_url.to_owned()),
            data_dir: cache_dir(),
            cache_dir: Some(cache_dir().join("cache")),
            jwt_secret: Some(SECRET.to_owned()),
            jwt_jwks: options.jwks.clone(),
            ca_file: options.ca_file.clone(),
            native: options.native,
            jwt_issuer: options.issuer.clone(),
            jwt_audience: options.audience.clone(),
            jwt_roles_claim: "roles".into(),
            log: "error".into(),
            max_body: options.max_body.unwrap_or(1 << 20),
            pool_size: 8,
            no_migrate: false,
            no_cron: options.no_cron,
            no_outbox: false,
            secrets_dir: Some(secrets_dir),
            pubsub_audience: options.pubsub_audience.clone(),
            pubsub_jwks: options
                .pubsub_jwks
                .clone()
                .unwrap_or_else(|| sinew_host::queue::GOOGLE_JWKS.to_owned()),
            pubsub_issuer: sinew_host::queue::GOOGLE_ISSUER.to_owned(),
            pubsub_service_account: options.pubsub_service_account.clone(),
            test_hooks: options.test_hooks,
            external: options
                .externals
                .iter()
                .map(|(s, u)| format!("{s}={u}"))
                .collect(),
            studio: options.studio,
            no_studio: false,
            no_snapshot: !options.snapshot,
            metrics_listen: None,
            metrics_path: None,
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sinew_host::serve::serve(
                &args,
                move |addr| {
                    let _ = ready_tx.send(addr);
                },
                async move {
                    let _ = stop_rx.await;
                },
            )
            .await
        });
        let addr: SocketAddr = match ready_rx.await {
            Ok(a) => a,
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    other => format!("{other:?}"),
                });
            }
        };
        Ok(Server {
            base: format!("http://{addr}"),
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Stops it and waits.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// Body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// Body text.
    pub text: String,
}

/// A plain HTTP/1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }
}

impl Http {
    /// Sends a request.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let resp = self.client.request(req).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// A JSON request with an optional bearer token, and (for any method
    /// but GET) a fresh `Idempotency-Key`, as a well-behaved client sends:
    /// tools whose key is that header require it. Tests of the key itself
    /// use [`Http::send`].
    pub async fn json(&self, method: &str, url: &str, token: Option<&str>, body: &Value) -> Answer {
        static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let auth = token.map(|t| format!("Bearer {t}"));
        let key = format!(
            "json-{}-{}",
            std::process::id(),
            KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        if method != "GET" {
            headers.push(("idempotency-key", key.as_str()));
        }
        self.send(method, url, &headers, body.to_string()).await
    }
}

/// [`Http::json`] with a bearer token: the status and the JSON body.
pub async fn call(http: &Http, method: &str, url: &str, token: &str, body: &Value) -> (u16, Value) {
    let answer = http.json(method, url, Some(token), body).await;
    (answer.status, answer.body)
}

/// A token signed with [`SECRET`], valid for an hour.
pub fn token(sub: &str, roles: &[&str]) -> String {
    mint(SECRET, sub, roles, &Map::new())
}

/// An HS256 token signed with `secret` for `sub` with `roles` and `extra`
/// claims, valid for an hour, as `sinew token` mints it.
pub fn mint(secret: &str, sub: &str, roles: &[&str], extra: &Map<String, Value>) -> String {
    let jwt = sinew_host::jwt::JwtConfig::hs256(secret);
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    jwt.mint_with(sub, &roles, extra, 3600, sinew_host::jwt::now_secs())
        .expect("mint")
}

/// One scripted answer of the fake provider.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body.
    Ok(Value),
    /// 402 with this body (a refusal).
    Declined(Value),
    /// 503.
    Failed(String),
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct FakeState {
    script: HashMap<String, VecDeque<Reply>>,
    counters: HashMap<String, u64>,
    /// The reply chosen at a call's first attempt (kept for its retries in
    /// call mode).
    current: HashMap<String, Reply>,
    /// Every request: (service.operation, attempt, idempotency key, body).
    seen: Vec<(String, u32, Option<String>, Value)>,
    /// Operations with a `path` of their own: (service, operation, the
    /// path's segments, `{…}` matching any).
    routes: Vec<(String, String, Vec<String>)>,
}

/// A fake external provider on loopback: `POST /{service}/{operation}`.
/// In call mode (scenarios) one scripted answer serves every attempt of a
/// call (attempt 1 takes it, retries reuse it), as the scenario format
/// says; in attempt mode each HTTP request takes the next answer.
#[derive(Clone)]
pub struct Fake {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    /// Starts it.
    pub async fn start(script: HashMap<String, Vec<Reply>>, per_attempt: bool) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(FakeState {
            script: script.into_iter().map(|(k, v)| (k, v.into())).collect(),
            ..Default::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let state = state.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    fake_answer(&state, req, per_attempt).await,
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fake {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// Recognises the operations of `spec` that have a `path` of their own
    /// (they are not `POST /{service}/{operation}`).
    pub fn learn(&self, spec: &sinew_core::spec::Spec) {
        let Ok(mut s) = self.state.lock() else { return };
        for (service, x) in &spec.externals {
            for (op, o) in &x.operations {
                if let Some(path) = &o.path {
                    let segments = path
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                    s.routes.push((service.clone(), op.clone(), segments));
                }
            }
        }
    }

    /// The base URL of a service.
    pub fn url(&self, service: &str) -> String {
        format!("{}/{service}", self.base)
    }

    /// Requests received: (service.operation, attempt, idempotency key, body).
    pub fn seen(&self) -> Vec<(String, u32, Option<String>, Value)> {
        self.state
            .lock()
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }
}

async fn fake_answer(
    state: &Mutex<FakeState>,
    req: hyper::Request<Incoming>,
    per_attempt: bool,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().trim_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    let routed = state.lock().ok().and_then(|s| {
        s.routes.iter().find_map(|(service, op, segments)| {
            let ok = parts.first() == Some(&service.as_str())
                && parts.len() == segments.len() + 1
                && segments
                    .iter()
                    .zip(&parts[1..])
                    .all(|(t, p)| t.starts_with('{') || t == p);
            ok.then(|| format!("{service}.{op}"))
        })
    });
    let op = routed.unwrap_or_else(|| path.replacen('/', ".", 1));
    let attempt: u32 = req
        .headers()
        .get("x-sinew-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = req
        .into_body()
        .collect()
        .await
        .map(|b| serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let reply = {
        let Ok(mut s) = state.lock() else {
            return respond(500, &json!({}));
        };
        s.seen.push((op.clone(), attempt, key, body));
        if attempt > 1 && !per_attempt {
            s.current.get(&op).cloned()
        } else {
            let next = s.script.get_mut(&op).and_then(VecDeque::pop_front);
            let reply = match next {
                Some(r) => {
                    let n = s.counters.entry(op.clone()).or_insert(0);
                    *n += 1;
                    r
                }
                None => {
                    let n = s.counters.entry(op.clone()).or_insert(0);
                    *n += 1;
                    let (service, operation) = op.split_once('.').unwrap_or((&op, ""));
                    Reply::Ok(
                        json!({"id": format!("{service}_{operation}_{n}"), "status": "succeeded"}),
                    )
                }
            };
            s.current.insert(op.clone(), reply.clone());
            Some(reply)
        }
    };
    match reply {
        Some(Reply::Ok(v)) => respond(200, &v),
        Some(Reply::Declined(v)) => respond(402, &v),
        Some(Reply::Failed(m)) => respond(503, &json!({"error": m})),
        None => respond(503, &json!({"error": "no answer scripted"})),
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            respond(504, &json!({}))
        }
    }
}

fn respond(status: u16, body: &Value) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// One request a [`Recorder`] received, exactly as it came.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST`, `GET`, …
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// The body's text.
    pub body: String,
    /// The body's bytes (an OTLP export's protobuf).
    pub bytes: Vec<u8>,
    /// When it came.
    pub at: std::time::Instant,
}

/// A canned answer of a [`Recorder`].
#[derive(Debug, Clone)]
pub struct Canned {
    /// Status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Canned {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }
}

/// A third party's API on loopback (a payment provider, a mail service):
/// it records every request exactly (method, target, headers, body) and
/// answers `METHOD /path` (without the query) from its script, in order,
/// then `200 {}`.
#[derive(Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<Mutex<RecorderState>>,
}

/// A [`Recorder`]'s answers still to give, and what it received.
type RecorderState = (HashMap<String, VecDeque<Canned>>, Vec<Recorded>);

impl Recorder {
    /// Starts it with `script`: (`"POST /v1/refunds"`, answers).
    pub async fn start(script: Vec<(&str, Vec<Canned>)>) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script: HashMap<String, VecDeque<Canned>> = script
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let state = Arc::new(Mutex::new((script, Vec::new())));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let state = state.clone();
                            async move {
                                let method = req.method().to_string();
                                let target = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect();
                                let key = format!("{method} {}", req.uri().path());
                                let bytes = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let body = String::from_utf8_lossy(&bytes).into_owned();
                                let canned = {
                                    let mut s = state.lock().unwrap();
                                    s.1.push(Recorded {
                                        method,
                                        target,
                                        headers,
                                        body,
                                        bytes,
                                        at: std::time::Instant::now(),
                                    });
                                    s.0.get_mut(&key).and_then(VecDeque::pop_front)
                                }
                                .unwrap_or_else(|| Canned::json(200, json!({})));
                                tokio::time::sleep(canned.delay).await;
                                let mut r = respond(canned.status, &canned.body);
                                for (k, v) in &canned.headers {
                                    r.headers_mut().insert(
                                        hyper::header::HeaderName::from_bytes(k.as_bytes())
                                            .unwrap(),
                                        hyper::header::HeaderValue::from_str(v).unwrap(),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }
}
