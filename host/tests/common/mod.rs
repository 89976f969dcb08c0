//! Helpers of the process tests: a throwaway cluster, `sinew serve`
//! processes, an HTTP client and tokens.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sinew_host::pg::embedded::Embedded;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use std::time::{Duration, Instant};

pub const SECRET: &str = "serve-test-secret";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A throwaway cluster in a temporary directory.
pub struct Pg {
    pg: Option<Embedded>,
    pub _dir: tempfile::TempDir,
}

impl Pg {
    pub fn start() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = Embedded::start(&dir.path().join("data")).unwrap();
        Pg {
            pg: Some(pg),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.pg.as_ref().unwrap().url()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        drop(self.pg.take());
    }
}

/// A `sinew serve` process.
pub struct Proc {
    child: Child,
    pub base: String,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(spec: &Path, envs: &[(&str, &str)], data_dir: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sinew"));
        cmd.arg("serve")
            .arg(spec)
            .args(["--port", "0", "--listen", "127.0.0.1"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("SINEW_JWT_SECRET", SECRET)
            .env(
                "SINEW_CACHE_DIR",
                root().join("target/test-sinew-data/cache"),
            )
            .env_remove("DATABASE_URL")
            // Snapshots cost seconds of CPU per new spec in the background;
            // the tests that want one say SINEW_NO_SNAPSHOT=false.
            .env("SINEW_NO_SNAPSHOT", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = line.find("on http://").map(|i| {
                    let rest = &line[i + "on http://".len()..];
                    rest.chars().take_while(|c| *c != '"').collect::<String>()
                });
                // Kept before the address is announced: a caller that reads
                // the ready line right after `start` finds it.
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the server did not start:\n{}\n{}",
                    lines.lock().unwrap().join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        Proc {
            child,
            base: format!("http://{addr}"),
            lines,
        }
    }

    /// The first log line so far that contains `needle`.
    pub fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most 20 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Http = Client<HttpConnector, Full<bytes::Bytes>>;

pub fn client() -> Http {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn token(sub: &str, roles: &[&str]) -> String {
    let jwt = sinew_host::jwt::JwtConfig::hs256(SECRET);
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    jwt.mint(sub, &roles, 3600, sinew_host::jwt::now_secs())
        .unwrap()
}

pub async fn call(http: &Http, method: &str, url: &str, token: &str, body: &Value) -> (u16, Value) {
    let (status, body, _) = call_with_headers(http, method, url, token, body).await;
    (status, body)
}

/// [`call`], also returning the `Retry-After` header.
pub async fn call_with_headers(
    http: &Http,
    method: &str,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value, Option<u64>) {
    // A fresh Idempotency-Key on every write, as a well-behaved client
    // sends (tools whose key is that header require it).
    static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if method != "GET" {
        let n = KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        req = req.header(
            "idempotency-key",
            format!("call-{}-{n}", std::process::id()),
        );
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let resp = http.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub fn verify_audit(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
