//! A closed-loop load generator: `clients` tasks, each with one keep-alive
//! HTTP/1 connection, sending a request as soon as the previous answer is
//! read. Requests that start after the warm-up and end before the deadline
//! are measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::Map;
use sinew_tests::pg::mint;

/// What the clients ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The bank's `transfer` (write path): 1 cent between two random
    /// accounts of the 1 000, each request with its own idempotency key and
    /// its own teller (the spec limits each subject to 20 transfers a
    /// minute).
    Transfer,
    /// The bank's `account_history` of a random account (3 bounded reads and
    /// the audit entry).
    History,
    /// The clinic's `list_appointments` of a random patient's account: a
    /// page of 50 confirmed appointments, newest first, each with its
    /// therapist and up to 5 invoices, and the total (one statement).
    List,
    /// The clinic's `therapist_stats` for staff: completed appointments
    /// per therapist and overall (two aggregates).
    Stats,
    /// The sweep's bulk transition: 500 tasks closed, then the same 500
    /// reopened, alternately (one client: every request moves all of them;
    /// an answer that moved fewer counts as an error).
    Bulk,
}

impl Workload {
    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Transfer => "transfer",
            Workload::History => "history",
            Workload::List => "list",
            Workload::Stats => "stats",
            Workload::Bulk => "bulk 500",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Measured answers per second.
    pub throughput: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Measured answers that were not 2xx.
    pub errors: u64,
    /// Measured answers.
    pub completed: u64,
    /// The CPU the servers, Postgres and the load generator spent in the
    /// measured window.
    pub cpu: crate::cpu::Cpu,
}

fn authority(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// The status of one GET on a fresh connection, or `None` if it failed.
pub async fn get_status(base: &str, path: &str, token: Option<&str>) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(authority(base)).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", authority(base));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).ok()?)
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// The status and JSON body of one GET on a fresh connection.
pub async fn get_json(base: &str, path: &str, token: &str) -> Result<(u16, serde_json::Value)> {
    let stream = tokio::net::TcpStream::connect(authority(base)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", authority(base))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

fn account(i: u64) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// xorshift64*: cheap, per client, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Distinguishes the keys and subjects of every run against one database.
static RUN: AtomicU64 = AtomicU64::new(0);

/// The bulk requests sent to each server so far: their parity says whether
/// its tasks are open (close next) or closed (reopen next).
static BULK_SENT: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// The route of the next bulk request to `base`, counted as sent.
fn next_bulk(base: &str) -> &'static str {
    let mut sent = BULK_SENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = match sent.iter_mut().find(|(b, _)| b == base) {
        Some((_, n)) => n,
        None => {
            sent.push((base.to_owned(), 0));
            &mut sent.last_mut().expect("just pushed").1
        }
    };
    *n += 1;
    if *n % 2 == 1 {
        "/tasks/close"
    } else {
        "/tasks/reopen"
    }
}

/// Runs `workload` with `clients` connections, spread over the server
/// processes at `bases` round-robin (client `i` talks to `bases[i % n]`,
/// as a connection-level load balancer would place them); `servers` are
/// the processes whose CPU the run's [`crate::cpu::Cpu`] counts.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bases: &[&str],
    workload: Workload,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    secret: &str,
    accounts: usize,
    servers: &[u32],
) -> Result<Stats> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let start = Instant::now();
    let measured_from = start + warmup;
    let end = measured_from + measure;
    let mut tasks = Vec::new();
    anyhow::ensure!(!bases.is_empty(), "no server to drive");
    let cpu = tokio::spawn({
        let servers = servers.to_vec();
        async move {
            tokio::time::sleep_until(measured_from.into()).await;
            let before = crate::cpu::sample(&servers).await;
            tokio::time::sleep_until(end.into()).await;
            before.until(crate::cpu::sample(&servers).await)
        }
    });
    for client in 0..clients {
        let base = bases[client % bases.len()].to_owned();
        let secret = secret.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(authority(&base))
                .await
                .context("connecting")?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((client as u64 + 1) * 0x1000_0000_01B3));
            let reader = mint(
                &secret,
                &format!("reader-{client}"),
                &["teller"],
                &Map::new(),
            );
            // The clinic's callers: each patient's account, and staff.
            let patients: Vec<String> = match workload {
                Workload::List => (1..=accounts)
                    .map(|k| mint(&secret, &format!("acct-{k}"), &["patient"], &Map::new()))
                    .collect(),
                _ => Vec::new(),
            };
            let staff = mint(&secret, &format!("staff-{client}"), &["staff"], &Map::new());
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            let n_accounts = accounts as u64;
            while Instant::now() < end {
                n += 1;
                let req = match workload {
                    Workload::Transfer => {
                        let a = rng.next() % n_accounts + 1;
                        let mut b = rng.next() % n_accounts + 1;
                        if b == a {
                            b = a % n_accounts + 1;
                        }
                        let sub = format!("teller-{nonce}-{run}-{client}-{n}");
                        let body = format!(
                            r#"{{"from_account":"{}","to_account":"{}","amount_cents":1}}"#,
                            account(a),
                            account(b)
                        );
                        hyper::Request::post("/transfers")
                            .header("host", authority(&base))
                            .header(
                                "authorization",
                                format!("Bearer {}", mint(&secret, &sub, &["teller"], &Map::new())),
                            )
                            .header("content-type", "application/json")
                            .header("idempotency-key", format!("{nonce}-{run}-{client}-{n}"))
                            .body(Full::new(Bytes::from(body)))?
                    }
                    Workload::History => {
                        let a = rng.next() % n_accounts + 1;
                        hyper::Request::get(format!("/accounts/{}/transfers", account(a)))
                            .header("host", authority(&base))
                            .header("authorization", format!("Bearer {reader}"))
                            .body(Full::new(Bytes::new()))?
                    }
                    Workload::List => {
                        let k = rng.next() % n_accounts + 1;
                        let patient = &patients[usize::try_from(k - 1).unwrap_or(0)];
                        hyper::Request::get("/appointments?size=50&status=confirmed")
                            .header("host", authority(&base))
                            .header("authorization", format!("Bearer {patient}"))
                            .body(Full::new(Bytes::new()))?
                    }
                    Workload::Stats => {
                        hyper::Request::get("/stats/therapists?from=2026-01-01T00:00:00Z")
                            .header("host", authority(&base))
                            .header("authorization", format!("Bearer {staff}"))
                            .body(Full::new(Bytes::new()))?
                    }
                    Workload::Bulk => hyper::Request::post(next_bulk(&base))
                        .header("host", authority(&base))
                        .header("authorization", format!("Bearer {staff}"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("{nonce}-{run}-{client}-{n}"))
                        .body(Full::new(Bytes::from_static(b"{}")))?,
                };
                let t0 = Instant::now();
                send.ready().await?;
                let resp = send.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                let t1 = Instant::now();
                let wrong = workload == Workload::Bulk
                    && serde_json::from_slice::<serde_json::Value>(&body)
                        .map_or(true, |v| v["moved"] != 500);
                if t0 >= measured_from && t1 <= end {
                    latencies.push((t1 - t0).as_secs_f64() * 1000.0);
                    if !status.is_success() || wrong {
                        errors += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if all.is_empty() {
            f64::NAN
        } else {
            all[((all.len() as f64 - 1.0) * q).round() as usize]
        }
    };
    Ok(Stats {
        throughput: all.len() as f64 / measure.as_secs_f64(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        errors,
        completed: all.len() as u64,
        cpu: cpu.await?,
    })
}
