//! The cost of telemetry (`sinew-bench telemetry`): the bank-like
//! `transfer` of `bench/specs/outbox.json` on three servers of the
//! component on one private Postgres, in alternating rounds at the same
//! concurrency: telemetry off (no OTLP endpoint, no metrics), traces on
//! (every span exported with OTLP to a loopback collector that answers at
//! once), and traces and metrics on (also Prometheus on a port of its own,
//! scraped once a second), and "off" once more, started last (what the
//! order of start alone makes). Prints throughput and median latency of
//! each, and the ratios to the first "off".

use anyhow::{Result, bail};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::outbox::{round, seed_accounts, sink};
use super::{Opts, Server, connect, free_port, serve_spec_args, spawn_with, wait_ready};
use sinew_tests::pg::Cluster;

const ACCOUNTS: usize = 200;

/// The variables of OpenTelemetry a server must not inherit from this
/// process (so that "off" is off).
const OTEL_VARS: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "SINEW_METRICS_LISTEN",
];

/// A server of this binary with `env` set and no other telemetry
/// variable of this process.
fn start(name: &'static str, args: &[String], env: &[(&str, String)]) -> Result<Server> {
    spawn_with(name, args, |cmd| {
        for v in OTEL_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    })
}

/// The CPU time process `pid` has used (user + system), in clock ticks
/// (1/100 s): what a server spends, whatever else the machine runs.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the command's `(name)`: fields 14 and 15 of the line.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Runs the comparison and prints it.
pub async fn run(opts: &Opts) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("starting a private Postgres…");
    let pg = Cluster::start();
    crate::cpu::watch_wal(pg.url("postgres"));
    let (collector, exports) = sink().await?;
    let url = pg.url("postgres");
    let cache = dir.path().join("cache");
    let args = || -> Result<Vec<String>> {
        let mut a = serve_spec_args("outbox", free_port()?, &url, &cache, dir.path(), false);
        a.push("--no-outbox".into());
        // No snapshot built in the background by the first server, which
        // would take seconds of its CPU during the first rounds.
        a.push("--no-snapshot".into());
        // `transfer` emits nothing; the spec's other tool needs the URL.
        a.push("--external".into());
        a.push(format!("notify={collector}"));
        Ok(a)
    };
    let off = start("telemetry off", &args()?, &[])?;
    wait_ready(&off.base, Duration::from_secs(300)).await?;
    let traced = start(
        "traces on",
        &args()?,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
            ("OTEL_METRICS_EXPORTER", "none".into()),
        ],
    )?;
    let metrics_port = free_port()?;
    let both = start(
        "traces and metrics on",
        &args()?,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
            ("OTEL_METRICS_EXPORTER", "none".into()),
            ("SINEW_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
        ],
    )?;
    // "Off" again, started last: how much of a difference the order of
    // start makes by itself (each server has its own pool and instances).
    let off_again = start("telemetry off (again)", &args()?, &[])?;
    wait_ready(&traced.base, Duration::from_secs(300)).await?;
    wait_ready(&both.base, Duration::from_secs(300)).await?;
    wait_ready(&off_again.base, Duration::from_secs(300)).await?;
    // Prometheus scrapes the third once a second, as it would.
    let scraper = tokio::spawn(async move {
        let http = sinew_tests::pg::Http::default();
        loop {
            let r = http
                .send(
                    "GET",
                    &format!("http://127.0.0.1:{metrics_port}/metrics"),
                    &[],
                    "",
                )
                .await;
            assert_eq!(r.status, 200, "the metrics endpoint answers");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let db = connect(&url).await?;
    let accounts = seed_accounts(&db, ACCOUNTS).await?;
    let (rounds, length) = (opts.rounds.max(2), Duration::from_secs_f64(opts.seconds));
    let warmup = Duration::from_secs_f64(opts.warmup);
    let servers = [&off, &traced, &both, &off_again];
    for clients in opts.concurrency.iter().copied().filter(|c| *c <= 16) {
        println!("-- transfer, {clients} clients, {rounds} rounds of {length:?}:");
        for s in servers {
            round(&s.base, "/transfer", &accounts, clients, warmup).await;
        }
        let mut figures = vec![Vec::new(); servers.len()];
        for r in 0..rounds {
            // Rotated, so drift on a shared machine hits each alike.
            for k in 0..servers.len() {
                let i = (k + r) % servers.len();
                let pid = servers[i].child.id();
                let before = cpu_ticks(pid);
                let (rps, p50, errors) =
                    round(&servers[i].base, "/transfer", &accounts, clients, length).await;
                let ticks = cpu_ticks(pid) - before;
                if errors > 0 {
                    bail!(
                        "{errors} transfers on {} were not answered 200",
                        servers[i].name
                    );
                }
                figures[i].push((rps, p50, ticks, rps * length.as_secs_f64()));
            }
        }
        // Means over rounds; the server's CPU per request over them all
        // (ms: ticks are 10 ms).
        let mean = |v: &[(f64, f64, u64, f64)]| {
            let n = v.len().max(1) as f64;
            let ticks: u64 = v.iter().map(|x| x.2).sum();
            let requests: f64 = v.iter().map(|x| x.3).sum();
            (
                v.iter().map(|x| x.0).sum::<f64>() / n,
                v.iter().map(|x| x.1).sum::<f64>() / n,
                ticks as f64 * 10.0 / requests.max(1.0),
            )
        };
        let base = mean(&figures[0]);
        for (s, f) in servers.iter().zip(&figures) {
            let (rps, p50, cpu) = mean(f);
            println!(
                "   {:<24} {rps:>8.1} req/s  p50 {p50:>6.2} ms  server CPU {cpu:.3} ms/request   throughput {:.3} × off, p50 {:.3} × off, CPU {:.3} × off",
                s.name,
                rps / base.0,
                p50 / base.1,
                cpu / base.2
            );
        }
    }
    scraper.abort();
    let started = Instant::now();
    while exports.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = exports.load(Ordering::Relaxed);
    if n == 0 {
        bail!("the collector received no export: the traces were not on");
    }
    println!("the collector received {n} OTLP exports");
    drop((off, traced, both, off_again));
    drop(pg);
    Ok(())
}
