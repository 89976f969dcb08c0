//! The outbox's cost (`sinew-bench outbox`): a transfer between two
//! accounts, alone (`transfer`) and with an emitted notification
//! (`transfer_notified`), on one server (the component) and one private
//! Postgres, in alternating rounds at the same concurrency: throughput and
//! median latency of each, and their ratios (the goal: an `emit` costs less
//! than 5%). Then the delivery rate: every message sent to a loopback sink
//! that answers at once, timed from the first emit to the last delivery.

use anyhow::{Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Opts, SECRET, connect, free_port, serve_spec_args, spawn, wait_ready};
use sinew_tests::pg::{Cluster, Http, mint};

const ACCOUNTS: usize = 200;

/// A loopback service that answers every request `200 {}` and counts them.
pub(super) async fn sink() -> Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    seen.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((base, count))
}

/// One round: `clients` closed-loop clients calling `path` for `length`;
/// (requests per second, median latency in ms, errors).
pub(super) async fn round(
    base: &str,
    path: &str,
    accounts: &Arc<Vec<String>>,
    clients: usize,
    length: Duration,
) -> (f64, f64, u64) {
    let token = mint(SECRET, "teller", &["teller"], &serde_json::Map::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, path, token, accounts) = (
            base.to_owned(),
            path.to_owned(),
            token.clone(),
            accounts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = Http::default();
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = c * 7919;
            while started.elapsed() < length {
                i += 1;
                let from = &accounts[i % accounts.len()];
                let to = &accounts[(i * 31 + 17) % accounts.len()];
                if from == to {
                    continue;
                }
                let body = serde_json::json!({"from": from, "to": to, "amount": 1});
                let t = Instant::now();
                let r = http
                    .json("POST", &format!("{base}{path}"), Some(&token), &body)
                    .await;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                if r.status != 200 {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let median = all.get(all.len() / 2).copied().unwrap_or(0.0);
    (all.len() as f64 / secs, median, errors)
}

/// [`round`], with what each answer cost: CPU of the server process `pid`,
/// of Postgres and of this process, and bytes of write-ahead log.
async fn measured_round(
    base: &str,
    path: &str,
    accounts: &Arc<Vec<String>>,
    clients: usize,
    length: Duration,
    pid: u32,
) -> (f64, f64, u64, crate::cpu::Cpu) {
    // SINEW_BENCH_PERF=DIR: a CPU profile of the server for each measured
    // round (`perf record`, DIR/<n>-<path>.data; `perf report -i` reads it).
    let perf = std::env::var("SINEW_BENCH_PERF").ok().map(|dir| {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "4000",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(format!("{dir}/{n}{}.data", path.replace('/', "-")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    });
    let before = crate::cpu::sample(&[pid]).await;
    let (rps, p50, errors) = round(base, path, accounts, clients, length).await;
    let spent = before.until(crate::cpu::sample(&[pid]).await);
    let answers = (rps * length.as_secs_f64()).round() as u64;
    if let Some(Some(mut p)) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
        println!("   perf: {answers} answers");
    }
    (rps, p50, errors, spent.per(answers))
}

/// `n` accounts of the outbox spec, each with 1 000 000: their ids.
pub(super) async fn seed_accounts(
    db: &tokio_postgres::Client,
    n: usize,
) -> Result<Arc<Vec<String>>> {
    db.batch_execute(&format!(
        "INSERT INTO account (id, version, created_at, updated_at, balance) \
         SELECT gen_random_uuid(), 1, now(), now(), 1000000 FROM generate_series(1, {n})"
    ))
    .await?;
    Ok(Arc::new(
        db.query("SELECT id::text FROM account ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    ))
}

/// Runs the comparison and prints it.
pub async fn run(opts: &Opts) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("starting a private Postgres…");
    let pg = Cluster::start();
    crate::cpu::watch_wal(pg.url("postgres"));
    let (sink_url, delivered) = sink().await?;
    let url = pg.url("postgres");
    let cache = dir.path().join("cache");
    let args = |deliver: bool| -> Result<Vec<String>> {
        let mut a = serve_spec_args("outbox", free_port()?, &url, &cache, dir.path(), false);
        a.push("--external".into());
        a.push(format!("notify={sink_url}"));
        if !deliver {
            a.push("--no-outbox".into());
        }
        Ok(a)
    };
    // First a server that delivers nothing: the request path alone.
    let quiet = spawn("A component, not delivering", &args(false)?)?;
    wait_ready(&quiet.base, Duration::from_secs(300)).await?;
    let db = connect(&url).await?;
    let accounts = seed_accounts(&db, ACCOUNTS).await?;
    let (rounds, length, clients) = (opts.rounds, Duration::from_secs_f64(opts.seconds), 8);
    let warmup = Duration::from_secs_f64(opts.warmup);
    println!(
        "{clients} clients, {rounds} rounds of {length:?} per tool, one Postgres, the component"
    );
    println!("-- the request path alone (no instance delivers):");
    let alone = compare(
        &quiet.base,
        quiet.child.id(),
        &accounts,
        clients,
        (rounds, length, warmup),
    )
    .await?;
    println!("-- the added latency, one client (the request path alone):");
    let unloaded = compare(
        &quiet.base,
        quiet.child.id(),
        &accounts,
        1,
        (rounds, length, warmup.min(Duration::from_secs(2))),
    )
    .await?;
    drop(quiet);
    // Then a server that delivers: the backlog drains, with no load.
    let backlog = pending(&db).await?;
    let server = spawn("A component", &args(true)?)?;
    let started = Instant::now();
    wait_ready(&server.base, Duration::from_secs(300)).await?;
    drained(&db).await?;
    let drain = started.elapsed().as_secs_f64();
    println!(
        "-- the backlog of {backlog} messages delivered in {drain:.2} s (start included): {:.0} deliveries/s",
        backlog as f64 / drain
    );
    println!("-- while this instance also delivers:");
    let with = compare(
        &server.base,
        server.child.id(),
        &accounts,
        clients,
        (rounds, length, warmup),
    )
    .await?;
    let after = Instant::now();
    drained(&db).await?;
    println!(
        "   the last message delivered {:.2} s after the load",
        after.elapsed().as_secs_f64()
    );
    println!();
    println!("medians of the rounds' ratios (goal: an emit adds less than 5%):");
    println!(
        "emit/plain p50 latency: {:.3} with one client, {:.3} with {clients} alone, {:.3} with {clients} while delivering",
        unloaded.1, alone.1, with.1
    );
    println!(
        "emit/plain throughput: {:.3} with {clients} alone, {:.3} while delivering on the same cores",
        alone.0, with.0
    );
    // A delivered message's row is gone: count the messages that
    // committed, and the deliveries, in the audit log.
    sinew_host::pg::sequencer::catch_up(&db).await?;
    let row = db
        .query_one(
            "SELECT coalesce(sum(jsonb_array_length(coalesce(entry::jsonb->'messages', '[]'))), 0)::bigint, \
                    coalesce(sum((SELECT count(*) FROM jsonb_array_elements(coalesce(entry::jsonb->'deliveries', '[]')) d \
                                  WHERE d->>'outcome' = 'delivered')), 0)::bigint \
             FROM sinew_audit",
            &[],
        )
        .await?;
    let (emitted, audited): (i64, i64) = (row.get(0), row.get(1));
    let sent = delivered.load(Ordering::Relaxed);
    println!("{emitted} messages, {audited} deliveries audited, {sent} requests to the sink");
    if (sent as i64) < emitted || audited != emitted {
        bail!(
            "{emitted} messages: the sink saw {sent} requests, the audit log {audited} deliveries"
        );
    }
    match sinew_host::pg::verify_audit(&db).await? {
        Ok(n) => println!("audit chain verified ({n} entries)"),
        Err(e) => bail!("audit chain broken: {e}"),
    }
    drop(server);
    drop(pg);
    Ok(())
}

/// The messages not delivered yet.
async fn pending(db: &tokio_postgres::Client) -> Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM sinew_messages", &[])
        .await?
        .get(0))
}

/// Waits until every message is delivered (at most 5 minutes).
async fn drained(db: &tokio_postgres::Client) -> Result<()> {
    let started = Instant::now();
    loop {
        let pending = pending(db).await?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{pending} messages still pending after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alternating rounds of `transfer` and `transfer_notified` on `base`:
/// the ratios emit/plain of throughput and of median latency (the median
/// of the rounds' pairs).
async fn compare(
    base: &str,
    pid: u32,
    accounts: &Arc<Vec<String>>,
    clients: usize,
    (rounds, length, warmup): (usize, Duration, Duration),
) -> Result<(f64, f64)> {
    // Warm-up: both tools, pool and instances.
    round(base, "/transfer", accounts, clients, warmup).await;
    round(base, "/transfer-notified", accounts, clients, warmup).await;
    // Per tool: each round's throughput and median latency.
    let (mut plain, mut emitting) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let (mut plain_cost, mut emitting_cost) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for r in 0..rounds {
        // Alternating, so drift on a shared machine hits both alike.
        let order = if r % 2 == 0 {
            ["/transfer", "/transfer-notified"]
        } else {
            ["/transfer-notified", "/transfer"]
        };
        for path in order {
            let (rps, p50, e, cost) =
                measured_round(base, path, accounts, clients, length, pid).await;
            errors += e;
            println!(
                "   round {} {path:<19} {rps:>8.1} req/s  p50 {p50:>6.2} ms  cpu µs/answer: server {:.0} + postgres {:.0} + load {:.0}; WAL {:.0} B/answer",
                r + 1,
                cost.server,
                cost.postgres,
                cost.load,
                cost.wal
            );
            let (tool, costs) = if path == "/transfer" {
                (&mut plain, &mut plain_cost)
            } else {
                (&mut emitting, &mut emitting_cost)
            };
            tool.0.push(rps);
            tool.1.push(p50);
            costs.push(cost);
        }
    }
    if errors > 0 {
        bail!("{errors} transfers were not answered 200");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (p_rps, p_p50) = (mean(&plain.0), mean(&plain.1));
    let (e_rps, e_p50) = (mean(&emitting.0), mean(&emitting.1));
    println!("   transfer           {p_rps:>8.1} req/s  p50 {p_p50:>6.2} ms");
    println!("   transfer + emit    {e_rps:>8.1} req/s  p50 {e_p50:>6.2} ms");
    let cost = |v: &[crate::cpu::Cpu], f: fn(&crate::cpu::Cpu) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    };
    let (p_cpu, e_cpu) = (
        cost(&plain_cost, |c| c.total()),
        cost(&emitting_cost, |c| c.total()),
    );
    let (p_wal, e_wal) = (
        cost(&plain_cost, |c| c.wal),
        cost(&emitting_cost, |c| c.wal),
    );
    println!(
        "   per answer: CPU {p_cpu:.0} → {e_cpu:.0} µs ({:+.1}%), write-ahead log {p_wal:.0} → {e_wal:.0} B ({:+.1}%)",
        (e_cpu / p_cpu - 1.0) * 100.0,
        (e_wal / p_wal - 1.0) * 100.0
    );
    // Each round's pair (the two tools back to back) as a ratio, and the
    // median of those: a slow minute of a shared machine moves one pair,
    // not the figure.
    let ratios =
        |e: &[f64], p: &[f64]| -> Vec<f64> { e.iter().zip(p).map(|(e, p)| e / p).collect() };
    let show = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (rps, p50) = (ratios(&emitting.0, &plain.0), ratios(&emitting.1, &plain.1));
    println!(
        "   emit/plain per round: throughput {} (means {:.3}), p50 {} (means {:.3})",
        show(&rps),
        e_rps / p_rps,
        show(&p50),
        e_p50 / p_p50
    );
    Ok((super::median(rps), super::median(p50)))
}
