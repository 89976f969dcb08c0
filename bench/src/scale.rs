//! `sinew-bench scale`: the bank's `transfer` on (A) `sinew serve`, (B)
//! `sinew serve --native` and (C′) the hand-written server with a plain
//! audit insert, each with one and with two server processes against one
//! database of one Postgres cluster, at 16, 64 and 128 clients.
//!
//! Each cell starts its processes (the second on another port, after the
//! first is ready), drives them with the closed-loop load generator, its
//! clients spread over the processes round-robin, and stops them; one
//! engine's processes run at a time (at most 2 × 32 pooled connections).
//! The cells are interleaved and rotated round by round ([`measure_cells`]).
//! For (A) and (B) it waits, after the load, until the sequencers have
//! chained every queued audit entry and prints the lag of that run's
//! entries (queued → chained, p99 and max); during (A) with two processes
//! at 64 clients or more it samples `pg_locks` every ~10 ms for sessions
//! waiting on an advisory lock. At the end every database must have its
//! money conserved, (A)'s and (B)'s audit chains must verify, (C′) must
//! hold an entry per transfer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sinew_tests::pg::Cluster;

use super::load::{Stats, Workload};
use super::{
    ACCOUNTS, Opts, PLAIN, Server, baseline, baseline_args, check_chained, check_plain, connect,
    drive, free_port, measure_cells, median, prepare_db, prepare_plain_db, serve_args,
    snapshots_at_least, spawn, wait_ready,
};

/// The engines: (A), (B), (C′).
const ENGINES: [&str; 3] = ["A component", "B native", PLAIN];
/// Their letters in the tables.
const LETTERS: [&str; 3] = ["A", "B", "C′"];

/// What is measured, in [`measure_cells`]' order: (engine, processes) and
/// the name of its runs.
const GROUPS: [(usize, usize, &str); 6] = [
    (0, 1, "A ×1 process"),
    (0, 2, "A ×2 processes"),
    (1, 1, "B ×1 process"),
    (1, 2, "B ×2 processes"),
    (2, 1, "C′ ×1 process"),
    (2, 2, "C′ ×2 processes"),
];

/// Entries of a run not yet chained this long after its load ended are
/// counted with the age they have then.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What a cell measured besides throughput and latency.
#[derive(Default, Clone)]
struct Extra {
    /// Per run: the p99 and the max of the sequencer's lag, seconds.
    lag_p99: Vec<f64>,
    lag_max: Vec<f64>,
    /// Per run: how long after the load the queue was empty, seconds.
    drained: Vec<f64>,
    /// The most sessions waiting on an advisory lock in one sample, and
    /// holding one; how many samples.
    waiting_max: i64,
    held_max: i64,
    samples: u64,
}

/// Runs the scale-out measurement on a private Postgres and prints it.
pub fn run(opts: &Opts) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    println!("starting a private Postgres…");
    let pg = Cluster::start();
    crate::cpu::watch_wal(pg.url("postgres"));
    let result = rt.block_on(scale(&pg, dir.path(), opts));
    drop(pg);
    result
}

async fn scale(pg: &Cluster, data: &std::path::Path, opts: &Opts) -> Result<()> {
    let cache = data.join("cache");
    let urls = [
        prepare_db(pg, "scale_a").await?,
        prepare_db(pg, "scale_b").await?,
        prepare_plain_db(pg, "scale_cp").await?,
    ];
    // The component compiled and the spec's snapshot built once, as a
    // deployment has them.
    let pre = spawn(
        "precompile",
        &serve_args(free_port()?, &urls[0], &cache, data, false),
    )?;
    wait_ready(&pre.base, Duration::from_secs(300)).await?;
    snapshots_at_least(&cache, 1).await?;
    drop(pre);

    let args = |engine: usize| -> Result<Vec<String>> {
        let port = free_port()?;
        Ok(match engine {
            0 => serve_args(port, &urls[0], &cache, data, false),
            1 => serve_args(port, &urls[1], &cache, data, true),
            _ => baseline_args("bank", port, &urls[2], baseline::Audit::Plain),
        })
    };
    println!(
        "scale-out on transfer: {} round(s) of {:.0} s after {:.0} s warm-up per cell; clients {:?}; each process pools at most 32 connections",
        opts.rounds, opts.seconds, opts.warmup, opts.concurrency
    );
    let names: Vec<&str> = GROUPS.iter().map(|g| g.2).collect();
    let mut extra = vec![vec![Extra::default(); opts.concurrency.len()]; GROUPS.len()];
    let cells = measure_cells(&names, &[Workload::Transfer], opts, async |gi, workload, c| {
        let (engine, processes, name) = GROUPS[gi];
        let ci = opts.concurrency.iter().position(|&k| k == c).unwrap_or(0);
        let mut servers: Vec<Server> = Vec::new();
        for _ in 0..processes {
            let s = spawn(ENGINES[engine], &args(engine)?)?;
            wait_ready(&s.base, Duration::from_secs(120)).await?;
            servers.push(s);
        }
        // The component server warms instances in the background.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let db = connect(&urls[engine]).await?;
        let since: String = db
            .query_one("SELECT clock_timestamp()::text", &[])
            .await?
            .get(0);
        let sampler = (engine == 0 && processes == 2 && c >= 64).then(|| locks(&urls[engine]));
        let bases: Vec<&str> = servers.iter().map(|s| s.base.as_str()).collect();
        let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
        let stats: Stats = drive(&bases, &pids, workload, c, opts, ACCOUNTS).await?;
        let x = &mut extra[gi][ci];
        if let Some((stop, task)) = sampler {
            stop.store(true, Ordering::Relaxed);
            let (waiting, held, n) = task.await??;
            x.waiting_max = x.waiting_max.max(waiting);
            x.held_max = x.held_max.max(held);
            x.samples += n;
            println!(
                "        {name} c={c}: sessions waiting on an advisory lock: max {waiting} ({n} samples of pg_locks; holding one: max {held})"
            );
        }
        if engine < 2 {
            let ended = Instant::now();
            while queued(&db).await? > 0 && ended.elapsed() < DRAIN_LIMIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drained = ended.elapsed().as_secs_f64();
            let (p99, max, n) = lag(&db, &since).await?;
            x.lag_p99.push(p99);
            x.lag_max.push(max);
            x.drained.push(drained);
            println!(
                "        {name} c={c}: sequencer lag of {n} entries p99 {:.1} ms, max {:.1} ms; queue empty {:.0} ms after the load",
                p99 * 1000.0,
                max * 1000.0,
                drained * 1000.0
            );
        }
        drop(servers);
        Ok(stats)
    })
    .await?;

    let cells = &cells[0];
    let t = |gi: usize, ci: usize| median(cells[ci][gi].throughput.clone());
    let p99 = |gi: usize, ci: usize| median(cells[ci][gi].p99.clone());
    let cs = &opts.concurrency;
    let cols = cs
        .iter()
        .map(|c| format!(" {c} clients |"))
        .collect::<String>();
    let rule = "---:|".repeat(cs.len());
    println!();
    println!(
        "== scale-out, transfer: req/s, medians of {} round(s) ({:.0} s measured after {:.0} s warm-up; load generator, servers and Postgres share this machine)",
        opts.rounds, opts.seconds, opts.warmup
    );
    println!("| engine | processes |{cols}");
    println!("|---|---:|{rule}");
    for (gi, &(engine, processes, _)) in GROUPS.iter().enumerate() {
        let row: String = (0..cs.len())
            .map(|ci| format!(" {:.0} |", t(gi, ci)))
            .collect();
        println!("| {} | {processes} |{row}", ENGINES[engine]);
    }
    // Ratios: group indices of (A, B, C′) with one and two processes.
    let g = |engine: usize, processes: usize| 2 * engine + processes - 1;
    let ratio = |label: String, a: usize, b: usize| {
        let row: String = (0..cs.len())
            .map(|ci| format!(" {:.2} |", t(a, ci) / t(b, ci)))
            .collect();
        println!("| {label} |{row}");
    };
    for p in [1, 2] {
        ratio(format!("A/C′ | {p}"), g(0, p), g(2, p));
        ratio(format!("B/C′ | {p}"), g(1, p), g(2, p));
    }
    for (e, letter) in LETTERS.iter().enumerate() {
        ratio(
            format!("{letter} 2 processes / {letter} 1 process | "),
            g(e, 2),
            g(e, 1),
        );
    }
    println!();
    println!("p99 latency (ms), medians of the rounds:");
    println!("| engine | processes |{cols}");
    println!("|---|---:|{rule}");
    for (gi, &(engine, processes, _)) in GROUPS.iter().enumerate() {
        let row: String = (0..cs.len())
            .map(|ci| format!(" {:.1} |", p99(gi, ci)))
            .collect();
        println!("| {} | {processes} |{row}", ENGINES[engine]);
    }
    println!();
    println!("sequencer lag, queued → chained (ms): worst p99 / worst max over the rounds:");
    println!("| engine | processes |{cols}");
    println!("|---|---:|{rule}");
    let worst = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max);
    for (gi, &(engine, processes, _)) in GROUPS.iter().enumerate().take(4) {
        let row: String = (0..cs.len())
            .map(|ci| {
                let x = &extra[gi][ci];
                format!(
                    " {:.1} / {:.1} |",
                    worst(&x.lag_p99) * 1000.0,
                    worst(&x.lag_max) * 1000.0
                )
            })
            .collect();
        println!("| {} | {processes} |{row}", ENGINES[engine]);
    }
    for (ci, c) in cs.iter().enumerate() {
        let x = &extra[g(0, 2)][ci];
        if x.samples > 0 {
            println!(
                "A with 2 processes at {c} clients: sessions waiting on an advisory lock, max {} over {} samples of pg_locks (holding one: max {})",
                x.waiting_max, x.samples, x.held_max
            );
        }
    }

    // The goals, measured as they are.
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!("goals:");
    let mut cells_ok = 0;
    let mut text = Vec::new();
    for p in [1, 2] {
        for (ci, c) in cs.iter().enumerate() {
            let r = t(g(0, p), ci) / t(g(2, p), ci);
            cells_ok += usize::from(r >= 0.85);
            text.push(format!("{p}p/{c}c {r:.2}"));
        }
    }
    println!(
        "- A/C′ ≥ 0.85 on transfer: {} ({}: {cells_ok} of {} cells)",
        text.join(", "),
        verdict(cells_ok == 2 * cs.len()),
        2 * cs.len()
    );
    let high: Vec<usize> = (0..cs.len()).filter(|&ci| cs[ci] >= 64).collect();
    if high.is_empty() {
        println!("- A with 2 processes ≥ A with 1 at 64+ clients: no such client count measured");
    } else {
        let ok = high.iter().all(|&ci| t(g(0, 2), ci) >= t(g(0, 1), ci));
        let text: Vec<String> = high
            .iter()
            .map(|&ci| {
                format!(
                    "{} clients {:.0} vs {:.0} (×{:.2})",
                    cs[ci],
                    t(g(0, 2), ci),
                    t(g(0, 1), ci),
                    t(g(0, 2), ci) / t(g(0, 1), ci)
                )
            })
            .collect();
        println!(
            "- A with 2 processes ≥ A with 1 at 64+ clients: {} ({})",
            text.join(", "),
            verdict(ok)
        );
    }
    let a_p99 = [g(0, 1), g(0, 2)]
        .iter()
        .flat_map(|&gi| extra[gi].iter().flat_map(|x| x.lag_p99.iter().copied()))
        .fold(0.0f64, f64::max);
    println!(
        "- sequencer lag p99 ≤ 1 s (every A run): worst p99 {:.1} ms ({})",
        a_p99 * 1000.0,
        verdict(a_p99 <= 1.0)
    );

    // Every database did the work it answered for.
    for engine in 0..2 {
        check_chained(&format!("{} (scale)", ENGINES[engine]), &urls[engine]).await?;
    }
    check_plain(PLAIN, &urls[2]).await?;
    let errors: u64 = cells.iter().flatten().map(|c| c.errors).sum();
    let total: u64 = cells.iter().flatten().map(|c| c.total).sum();
    println!("scale answers that were not 2xx: {errors} of {total}");
    if errors * 100 > total.max(1) {
        bail!("more than 1% of the answers were errors");
    }
    Ok(())
}

/// A running sampler of `pg_locks`: set the flag to stop it; it answers
/// the most sessions waiting on an advisory lock in one sample, the most
/// holding one, and how many samples.
type Sampler = (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Result<(i64, i64, u64)>>,
);

/// Samples `pg_locks` about every 10 ms until told to stop.
fn locks(url: &str) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let url = url.to_owned();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = connect(&url).await?;
            let q = client
                .prepare(
                    "SELECT count(*) FILTER (WHERE NOT granted), count(*) FILTER (WHERE granted) \
                     FROM pg_locks WHERE locktype = 'advisory'",
                )
                .await?;
            let (mut waiting, mut held, mut n) = (0i64, 0i64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let row = client.query_one(&q, &[]).await?;
                waiting = waiting.max(row.get(0));
                held = held.max(row.get(1));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok((waiting, held, n))
        }
    });
    (stop, task)
}

/// Audit entries waiting in the queue.
async fn queued(db: &tokio_postgres::Client) -> Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM sinew_audit_queue", &[])
        .await?
        .get(0))
}

/// The lag, queued → chained, of the entries queued since `since`
/// (Postgres's clock): p99 and max in seconds, and how many; an entry
/// still queued counts with its age.
async fn lag(db: &tokio_postgres::Client, since: &str) -> Result<(f64, f64, i64)> {
    let row = db
        .query_one(
            "WITH lag AS (\
               SELECT extract(epoch FROM recorded_at - queued_at)::float8 AS s FROM sinew_audit \
                 WHERE queued_at >= $1::text::timestamptz \
               UNION ALL \
               SELECT extract(epoch FROM clock_timestamp() - queued_at)::float8 FROM sinew_audit_queue \
                 WHERE queued_at >= $1::text::timestamptz) \
             SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s), count(*) FROM lag",
            &[&since],
        )
        .await?;
    let p99: Option<f64> = row.get(0);
    let max: Option<f64> = row.get(1);
    Ok((p99.unwrap_or(0.0), max.unwrap_or(0.0), row.get(2)))
}
