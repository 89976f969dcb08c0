//! `sinew-bench`: sinew side by side with the code users would otherwise
//! write, on the same machine, in the same run.
//!
//!   cargo run --release -p sinew-bench              # everything (~20 min)
//!   cargo run --release -p sinew-bench -- --quick   # one short round
//!
//! It starts a private Postgres, gives each server a database of its own
//! (the bank spec's schema from `sinew migrate`, 1 000 seeded accounts), and
//! starts, as separate processes of this binary:
//!
//! - (A) `sinew serve` with the component engine (the code of the `sinew`
//!   binary, linked in: `sinew-bench serve …` is `sinew serve …`),
//! - (B) the same with the native core (`--native`), pricing the wasm
//!   boundary,
//! - (C) a hand-written hyper + tokio-postgres server (`baseline.rs`) that
//!   issues the same statements for the same requests, appending its audit
//!   entry to the hash chain under the chain's lock as sinew 0.1 did,
//! - and, for the bank, (C′): the same server with a plain audit insert (no
//!   chain, no lock), what a team writing this by hand ships.
//!
//! Then, interleaved round by round, it drives each with a closed-loop load
//! generator (one keep-alive connection per client) at concurrency 1, 16 and
//! 64, for the bank's `transfer` (write path) and `account_history` (a
//! bounded read), excluding warm-up, and prints medians over rounds of
//! throughput, p50 and p99, with the ratios A/C′, B/C′ and A/C (A/C and
//! B/C for the rest, which have no C′); then the clinic's
//! screen reads (`list`, `stats`) and a bulk write (`bench/specs/sweep.json`:
//! one `transition` of 500 rows per request at one client, against one
//! hand-written `UPDATE … RETURNING`; alone: `sinew-bench bulk`). It also measures
//! cold start and the servers' memory, and, without network or database
//! (`micro.rs`, alone: `sinew-bench micro`), instantiation, the boundary,
//! native vs component, 1/50/500 tools and the risk engine.
//!
//! `sinew-bench scale` (`scale.rs`) measures scale-out instead: (A), (B)
//! and (C′) with one and with two server processes on one database.

mod baseline;
mod cpu;
mod load;
mod micro;
mod outbox;
mod scale;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use load::{Stats, Workload};
use sinew_tests::pg::{Cluster, mint};
use sinew_tests::root;

/// The allocator the `sinew` binary ships with, so (A) and (B), which run
/// as `sinew-bench serve`, and the micro figures measure what users run.
/// The baseline (C) gets it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sinew-bench",
    about = "sinew vs hand-written code, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    opts: Flags,
}

#[derive(clap::Args, Clone, Debug)]
struct Flags {
    /// Rounds (each runs every engine, interleaved); medians are over
    /// rounds [default: 3; 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured seconds per run [default: 5; 2 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Warm-up seconds per run, not measured [default: 2; 1 with --quick].
    #[arg(long)]
    warmup: Option<f64>,
    /// Client counts [default: 1,16,64; `scale`: 16,64,128].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Cold starts to time, with the precompiled component [default: 20;
    /// 5 with --quick].
    #[arg(long)]
    cold_runs: Option<usize>,
    /// One short round, and fewer requests for the micro figures; the
    /// flags above still win.
    #[arg(long)]
    quick: bool,
}

/// What one run measures: the flags, with their defaults.
#[derive(Clone, Debug)]
struct Opts {
    rounds: usize,
    seconds: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    cold_runs: usize,
    quick: bool,
}

impl Flags {
    /// The figures of a run, with `concurrency` the client counts unless
    /// the flag names others.
    fn opts(self, concurrency: &[usize]) -> Opts {
        let q = self.quick;
        Opts {
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }),
            seconds: self.seconds.unwrap_or(if q { 2.0 } else { 5.0 }),
            warmup: self.warmup.unwrap_or(if q { 1.0 } else { 2.0 }),
            concurrency: self.concurrency.unwrap_or_else(|| concurrency.to_vec()),
            cold_runs: self.cold_runs.unwrap_or(if q { 5 } else { 20 }),
            quick: q,
        }
    }

    /// These flags, each given one winning over `other`'s (a
    /// subcommand's flags over those before it).
    fn or(self, other: Flags) -> Flags {
        Flags {
            rounds: self.rounds.or(other.rounds),
            seconds: self.seconds.or(other.seconds),
            warmup: self.warmup.or(other.warmup),
            concurrency: self.concurrency.or(other.concurrency),
            cold_runs: self.cold_runs.or(other.cold_runs),
            quick: self.quick || other.quick,
        }
    }
}

/// The client counts of the main run and of `scale`.
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const SCALE_CONCURRENCY: [usize; 3] = [16, 64, 128];

#[derive(Subcommand)]
enum Cmd {
    /// `sinew serve`, exactly (the host library's code), for (A) and (B).
    Serve(Box<ServeCmd>),
    /// (C) and (C′): the hand-written server.
    Baseline {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 32)]
        pool_size: usize,
        /// Which spec's tools it serves.
        #[arg(long, value_enum, default_value = "bank")]
        kind: baseline::Kind,
        /// How it records audit entries: `chain` (C, the chain under its
        /// lock) or `plain` (C′, an INSERT into `bench_audit`).
        #[arg(long, value_enum, default_value = "chain")]
        audit: baseline::Audit,
    },
    /// Only the figures without network or database: instantiation, the
    /// boundary, native vs component, 1/50/500 tools, the risk engine.
    Micro {
        /// Fewer requests.
        #[arg(long)]
        quick: bool,
    },
    /// Only the bulk write (500 rows per request, one client): a private
    /// Postgres, (A), (B) and (C) on the sweep spec.
    Bulk,
    /// The outbox: a transfer with and without an `emit`, and the delivery
    /// rate to a loopback service.
    Outbox,
    /// The cost of telemetry: `transfer` with it off, with traces
    /// exported with OTLP, and with traces and Prometheus metrics
    /// [clients: 1,16].
    Telemetry,
    /// Scale-out on the bank's `transfer`: (A), (B) and (C′) each with one
    /// and with two server processes on one database [clients: 16,64,128],
    /// with the sequencer's lag and waits on advisory locks.
    Scale {
        #[command(flatten)]
        opts: Flags,
    },
    /// Runs `n` in-memory requests of one tool on one engine, for
    /// instruction counts: `valgrind --tool=callgrind --collect-atstart=no
    /// --toggle-collect='*measured*' sinew-bench count component transfer
    /// 200`, and again with another `n` (the difference is per request).
    Count {
        /// The engine.
        #[arg(value_enum)]
        engine: micro::Which,
        /// `transfer`, `history` (a read of 50 rows), `list` (the
        /// clinic's page of 50 rows, each with its therapist and invoices),
        /// `bulk` (500 rows changed by one node), or the outbox bench's
        /// `plain` and `notified` (the same transfer with an `emit`).
        tool: String,
        /// How many requests are counted.
        n: usize,
    },
}

#[derive(clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    args: sinew_host::serve::Args,
}

const SECRET: &str = "bench-secret";
/// The three servers of every comparison, in `trio`'s order.
const SERVERS: [&str; 3] = ["A component", "B native", "C hand-written"];
/// The bank's fourth: (C′), the hand-written server with a plain audit
/// insert (no chain, no lock).
const PLAIN: &str = "C′ hand-written, plain audit";
const ACCOUNTS: usize = 1000;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve(s)) => {
            let code = sinew_host::serve::run(&s.args)?;
            std::process::exit(i32::from(code));
        }
        Some(Cmd::Baseline {
            port,
            database_url,
            secret,
            pool_size,
            kind,
            audit,
        }) => baseline::run(port, &database_url, &secret, pool_size, kind, audit),
        Some(Cmd::Micro { quick }) => micro::run(quick),
        Some(Cmd::Bulk) => {
            let opts = cli.opts.opts(&CONCURRENCY);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let dir = tempfile::tempdir()?;
            println!("starting a private Postgres…");
            let pg = Cluster::start();
            cpu::watch_wal(pg.url("postgres"));
            let cache = dir.path().join("cache");
            rt.block_on(bulk(&pg, &cache, dir.path(), &opts))
        }
        Some(Cmd::Outbox) => {
            let opts = cli.opts.opts(&CONCURRENCY);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(outbox::run(&opts))
        }
        Some(Cmd::Telemetry) => {
            let opts = cli.opts.opts(&[1, 16]);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(telemetry::run(&opts))
        }
        Some(Cmd::Scale { opts }) => scale::run(&opts.or(cli.opts).opts(&SCALE_CONCURRENCY)),
        Some(Cmd::Count { engine, tool, n }) => micro::count(engine, &tool, n),
        None => {
            let opts = cli.opts.opts(&CONCURRENCY);
            bench(&opts)
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A server process, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The arguments of `sinew serve` for the bank on `url`.
fn serve_args(port: u16, url: &str, cache: &Path, data: &Path, native: bool) -> Vec<String> {
    serve_spec_args("bank", port, url, cache, data, native)
}

/// The arguments of `sinew serve` for the example `spec` on `url`.
fn serve_spec_args(
    spec: &str,
    port: u16,
    url: &str,
    cache: &Path,
    data: &Path,
    native: bool,
) -> Vec<String> {
    let mut a = vec![
        "serve".to_string(),
        spec_path(spec).to_string_lossy().into_owned(),
        "--port".into(),
        port.to_string(),
        "--listen".into(),
        "127.0.0.1".into(),
        "--database-url".into(),
        url.into(),
        "--jwt-secret".into(),
        SECRET.into(),
        "--log".into(),
        "error".into(),
        "--cache-dir".into(),
        cache.to_string_lossy().into_owned(),
        "--data-dir".into(),
        data.to_string_lossy().into_owned(),
        "--secrets-dir".into(),
        sinew_tests::pg::made_up_secrets(&spec_path(spec))
            .to_string_lossy()
            .into_owned(),
    ];
    if native {
        a.push("--native".into());
    }
    a
}

/// Where spec `name` is: the bench's own (`bench/specs/`) or an example.
fn spec_path(name: &str) -> PathBuf {
    let own = root().join(format!("bench/specs/{name}.json"));
    if own.is_file() {
        own
    } else {
        root().join(format!("specs/examples/{name}.json"))
    }
}

/// (A), (B) and (C) for the example `spec`, each on its database.
fn trio(spec: &str, urls: &[String; 3], cache: &Path, data: &Path) -> Result<[Server; 3]> {
    Ok([
        spawn(
            SERVERS[0],
            &serve_spec_args(spec, free_port()?, &urls[0], cache, data, false),
        )?,
        spawn(
            SERVERS[1],
            &serve_spec_args(spec, free_port()?, &urls[1], cache, data, true),
        )?,
        spawn(
            SERVERS[2],
            &baseline_args(spec, free_port()?, &urls[2], baseline::Audit::Chain),
        )?,
    ])
}

/// The arguments of the hand-written server for `spec` on `url`.
fn baseline_args(spec: &str, port: u16, url: &str, audit: baseline::Audit) -> Vec<String> {
    let audit = match audit {
        baseline::Audit::Chain => "chain",
        baseline::Audit::Plain => "plain",
    };
    [
        "baseline",
        "--port",
        &port.to_string(),
        "--database-url",
        url,
        "--secret",
        SECRET,
        "--kind",
        spec,
        "--audit",
        audit,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn spawn(name: &'static str, args: &[String]) -> Result<Server> {
    spawn_with(name, args, |_| {})
}

/// [`spawn`], with its command changed by `env` first (variables set or
/// removed).
fn spawn_with(
    name: &'static str,
    args: &[String],
    env: impl FnOnce(&mut Command),
) -> Result<Server> {
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .context("a port")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    env(&mut cmd);
    Ok(Server {
        name,
        child: cmd.spawn()?,
        base: format!("http://127.0.0.1:{port}"),
    })
}

async fn wait_ready(base: &str, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if load::get_status(base, "/healthz", None).await == Some(200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{base} did not become ready within {limit:?}")
}

/// A connection to `url`, its driver spawned.
async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn sql(url: &str, text: &str) -> Result<()> {
    let client = connect(url).await?;
    client.batch_execute(text).await?;
    Ok(())
}

/// A new database `db` with the schema of the example `spec` (from
/// `sinew migrate`): its URL and a connection to it.
async fn fresh_db(pg: &Cluster, db: &str, spec: &str) -> Result<(String, tokio_postgres::Client)> {
    let admin = pg.url("postgres");
    // Two statements: CREATE DATABASE cannot run in a transaction block.
    sql(&admin, &format!("DROP DATABASE IF EXISTS {db}")).await?;
    sql(&admin, &format!("CREATE DATABASE {db}")).await?;
    let url = pg.url(db);
    let text = std::fs::read_to_string(spec_path(spec))?;
    let spec = sinew_core::spec::load(&text).spec;
    let mut client = connect(&url).await?;
    let m = sinew_host::pg::migrate::plan(Some(&client), &spec, false).await?;
    sinew_host::pg::migrate::apply(&mut client, &spec, &m).await?;
    Ok((url, client))
}

/// A database with the bank's schema and `ACCOUNTS` accounts.
async fn prepare_db(pg: &Cluster, db: &str) -> Result<String> {
    let (url, client) = fresh_db(pg, db, "bank").await?;
    client
        .batch_execute(&format!(
            "INSERT INTO account (id, version, created_at, updated_at, deleted_at, holder, name, currency, balance) \
             SELECT format('00000000-0000-4000-8000-%s', lpad(i::text, 12, '0'))::uuid, 1, now(), now(), NULL, \
                    'holder' || i, 'Account ' || i, 'EUR', 1000000000000 \
             FROM generate_series(1, {ACCOUNTS}) AS i"
        ))
        .await?;
    Ok(url)
}

/// A bank database for (C′): [`prepare_db`]'s, and its plain audit table.
async fn prepare_plain_db(pg: &Cluster, db: &str) -> Result<String> {
    let url = prepare_db(pg, db).await?;
    sql(&url, baseline::PLAIN_AUDIT_TABLE).await?;
    Ok(url)
}

/// A bank database whose server chains its audit log: its money is
/// conserved, and its chain (once the sequencers caught up) verifies.
async fn check_chained(name: &str, url: &str) -> Result<()> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT (SELECT sum(balance)::text FROM account), (SELECT count(*) FROM transfer)",
            &[],
        )
        .await?;
    let (total, moved): (String, i64) = (row.get(0), row.get(1));
    sinew_host::pg::sequencer::catch_up(&client).await?;
    let chain = sinew_host::pg::verify_audit(&client).await?;
    let expected = (ACCOUNTS as u128 * 1_000_000_000_000).to_string();
    println!(
        "{name}: {moved} transfers, balances sum {total} ({}), audit chain {}",
        if total == expected {
            "conserved"
        } else {
            "NOT CONSERVED"
        },
        match &chain {
            Ok(n) => format!("verified ({n} entries)"),
            Err(e) => format!("BROKEN: {e}"),
        }
    );
    ensure!(
        total == expected && chain.is_ok(),
        "{name} lost money or broke its audit chain"
    );
    Ok(())
}

/// The balances of the bank database `url` of (C′): money is conserved,
/// and it holds an audit entry for every transfer (reads add their own).
async fn check_plain(name: &str, url: &str) -> Result<()> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT (SELECT sum(balance)::text FROM account), (SELECT count(*) FROM transfer), \
                    (SELECT count(*) FROM bench_audit)",
            &[],
        )
        .await?;
    let (total, moved, entries): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let expected = (ACCOUNTS as u128 * 1_000_000_000_000).to_string();
    let conserved = total == expected;
    println!(
        "{name}: {moved} transfers, balances sum {total} ({}), {entries} plain audit entries (no chain)",
        if conserved {
            "conserved"
        } else {
            "NOT CONSERVED"
        },
    );
    ensure!(
        conserved && entries >= moved,
        "{name} lost money or audit entries"
    );
    Ok(())
}

/// Patients (each its own account) of the clinic's database.
const PATIENTS: usize = 100;

/// A database with the clinic's schema: 10 therapists, `PATIENTS`
/// patients with 80 appointments each (one in four completed, the rest
/// confirmed), each appointment with 2 invoices.
async fn prepare_clinic_db(pg: &Cluster, db: &str) -> Result<String> {
    let (url, client) = fresh_db(pg, db, "clinic").await?;
    client
        .batch_execute(&format!(
            "INSERT INTO therapist (id, version, created_at, updated_at, name, specialty, rate_cents)
               SELECT md5('t' || i)::uuid, 1, now(), now(), 'Therapist ' || i, 'physio', 6000
               FROM generate_series(1, 10) i;
             INSERT INTO patient (id, version, created_at, updated_at, account, name, email)
               SELECT md5('p' || k)::uuid, 1, now(), now(), 'acct-' || k, 'Patient ' || k,
                      'p' || k || '@example.com'
               FROM generate_series(1, {PATIENTS}) k;
             INSERT INTO appointment (id, version, created_at, updated_at, status, patient, therapist,
                                      start_at, minutes, note)
               SELECT md5('a' || k || '-' || i)::uuid, 1, now(), now(),
                      CASE WHEN i % 4 = 0 THEN 'completed' ELSE 'confirmed' END,
                      md5('p' || k)::uuid, md5('t' || ((k + i) % 10 + 1))::uuid,
                      timestamptz '2026-01-05 08:00Z' + (i * 37 + k) * interval '1 hour',
                      30 + (i % 4) * 15, 'visit ' || i
               FROM generate_series(1, {PATIENTS}) k, generate_series(1, 80) i;
             INSERT INTO invoice (id, version, created_at, updated_at, appointment, amount_cents, paid)
               SELECT md5('i' || a.id || '-' || n)::uuid, 1, now(), now(), a.id, 6000, n = 1
               FROM appointment a, generate_series(1, 2) n;
             ANALYZE;"
        ))
        .await?;
    Ok(url)
}

/// Tasks in the sweep's database: one bulk request moves all of them.
const TASKS: usize = 500;

/// A database with the sweep's schema and `TASKS` open tasks.
async fn prepare_sweep_db(pg: &Cluster, db: &str) -> Result<String> {
    let (url, client) = fresh_db(pg, db, "sweep").await?;
    client
        .batch_execute(&format!(
            "INSERT INTO task (id, version, created_at, updated_at, status, title)
               SELECT md5('task' || i)::uuid, 1, now(), now(), 'open', 'Task ' || i
               FROM generate_series(1, {TASKS}) i;
             ANALYZE;"
        ))
        .await?;
    Ok(url)
}

/// The snapshots of loaded specs in `cache`.
fn snapshots(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("snapshot-") && name.ends_with(".cwasm.json")
            })
            .count()
    })
}

/// Waits until `cache` holds `n` snapshots: a server builds the snapshot
/// of its spec in the background after its first start, and that compile
/// must not run during a measurement.
async fn snapshots_at_least(cache: &Path, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while snapshots(cache) < n {
        ensure!(Instant::now() < deadline, "no snapshot within 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default, Clone)]
struct Cell {
    throughput: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU per answer, µs, by part, one per round.
    cpu: Vec<cpu::Cpu>,
    errors: u64,
    total: u64,
}

fn bench(opts: &Opts) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    println!("starting a private Postgres…");
    let pg = Cluster::start();
    cpu::watch_wal(pg.url("postgres"));
    let cache = dir.path().join("cache");
    let result = rt.block_on(async {
        let urls = [
            prepare_db(&pg, "bench_a").await?,
            prepare_db(&pg, "bench_b").await?,
            prepare_db(&pg, "bench_c").await?,
        ];
        let plain_url = prepare_plain_db(&pg, "bench_cp").await?;

        // Compile the component into the cache once (what a deployment does).
        let pre = spawn(
            "precompile",
            &serve_args(free_port()?, &urls[0], &cache, dir.path(), false),
        )?;
        wait_ready(&pre.base, Duration::from_secs(300)).await?;
        // And the snapshot of the loaded spec, which the first start builds
        // in the background.
        snapshots_at_least(&cache, 1).await?;
        drop(pre);

        let [a, b, c] = trio("bank", &urls, &cache, dir.path())?;
        let plain = spawn(
            PLAIN,
            &baseline_args("bank", free_port()?, &plain_url, baseline::Audit::Plain),
        )?;
        let servers = [a, b, c, plain];
        for s in &servers {
            wait_ready(&s.base, Duration::from_secs(120)).await?;
        }
        // The component server warms instances in the background.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss: Vec<Option<u64>> = servers.iter().map(Server::rss_kib).collect();

        let workloads = [Workload::Transfer, Workload::History];
        let mut peak_rss = vec![0u64; servers.len()];
        let cells = measure(&servers, &workloads, opts, ACCOUNTS, &mut peak_rss).await?;
        drop(servers);
        print_table(&BANK, &workloads, &cells, opts);
        println!();
        for (ci, c) in opts.concurrency.iter().enumerate() {
            let t = |si: usize| median(cells[0][ci][si].throughput.clone());
            let r = t(0) / t(3);
            println!(
                "goal A/C′ ≥ 0.85 on transfer at {c} client(s): {r:.2} ({})",
                if r >= 0.85 { "met" } else { "not met" }
            );
        }
        let errors: u64 = cells.iter().flatten().flatten().map(|c| c.errors).sum();
        let total: u64 = cells.iter().flatten().flatten().map(|c| c.total).sum();
        println!("answers that were not 2xx: {errors} of {total}");
        println!();
        let names = SERVERS;
        for (i, n) in names.iter().chain([&PLAIN]).enumerate() {
            println!(
                "RSS {n}: idle {} MiB, peak under load {:.1} MiB",
                idle_rss[i].map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                peak_rss[i] as f64 / 1024.0,
            );
        }

        // Every engine did the work it answered for: money is conserved and
        // every audit chain verifies.
        for (name, url) in SERVERS.iter().zip(&urls) {
            check_chained(name, url).await?;
        }
        check_plain(PLAIN, &plain_url).await?;

        // The clinic: the reads that build screens, a page of 50 rows with a
        // to-one and a to-many include and its count, owned through a
        // reference (`list`), and two aggregates (`stats`).
        let clinic_urls = [
            prepare_clinic_db(&pg, "clinic_a").await?,
            prepare_clinic_db(&pg, "clinic_b").await?,
            prepare_clinic_db(&pg, "clinic_c").await?,
        ];
        let known = snapshots(&cache);
        let clinic = trio("clinic", &clinic_urls, &cache, dir.path())?;
        for s in &clinic {
            wait_ready(&s.base, Duration::from_secs(300)).await?;
        }
        snapshots_at_least(&cache, known + 1).await?;
        same_clinic_answers(&clinic).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let clinic_workloads = [Workload::List, Workload::Stats];
        let mut clinic_rss = vec![0u64; clinic.len()];
        let clinic_cells =
            measure(&clinic, &clinic_workloads, opts, PATIENTS, &mut clinic_rss).await?;
        drop(clinic);
        println!();
        print_table(&TRIO, &clinic_workloads, &clinic_cells, opts);
        let clinic_errors: u64 = clinic_cells
            .iter()
            .flatten()
            .flatten()
            .map(|c| c.errors)
            .sum();
        let clinic_total: u64 = clinic_cells
            .iter()
            .flatten()
            .flatten()
            .map(|c| c.total)
            .sum();
        println!("clinic answers that were not 2xx: {clinic_errors} of {clinic_total}");
        for (name, url) in names.iter().zip(&clinic_urls) {
            let client = connect(url).await?;
            sinew_host::pg::sequencer::catch_up(&client).await?;
            match sinew_host::pg::verify_audit(&client).await? {
                Ok(n) => println!("{name} (clinic): audit chain verified ({n} entries)"),
                Err(e) => bail!("{name} (clinic): audit chain broken: {e}"),
            }
        }
        if clinic_errors * 100 > clinic_total.max(1) {
            bail!("more than 1% of the clinic's answers were errors");
        }

        bulk(&pg, &cache, dir.path(), opts).await?;
        println!();
        println!("== the outbox: a transfer with and without an emit");
        outbox::run(opts).await?;

        // The load left Postgres writing back and vacuuming: a cold start
        // is timed against a database at rest, as a deployment finds it.
        for url in &urls {
            sql(url, "VACUUM ANALYZE").await?;
        }
        sql(&urls[0], "CHECKPOINT").await?;
        cold_start(opts, &urls[0], &cache, dir.path()).await?;
        if errors * 100 > total.max(1) {
            bail!("more than 1% of the answers were errors");
        }
        Ok::<(), anyhow::Error>(())
    });
    drop(pg);
    result?;
    micro::run(opts.quick)
}

/// The bulk write: one transition of 500 rows per request, at one client
/// (every request moves every task), (A) and (B) against (C)'s one
/// hand-written `UPDATE … RETURNING`; every task ends in one state and
/// every audit chain verifies.
async fn bulk(pg: &Cluster, cache: &Path, data: &Path, opts: &Opts) -> Result<()> {
    let sweep_urls = [
        prepare_sweep_db(pg, "sweep_a").await?,
        prepare_sweep_db(pg, "sweep_b").await?,
        prepare_sweep_db(pg, "sweep_c").await?,
    ];
    let known = snapshots(cache);
    let sweep = trio("sweep", &sweep_urls, cache, data)?;
    for s in &sweep {
        wait_ready(&s.base, Duration::from_secs(300)).await?;
    }
    snapshots_at_least(cache, known + 1).await?;
    let one_client = Opts {
        concurrency: vec![1],
        ..opts.clone()
    };
    let mut sweep_rss = vec![0u64; sweep.len()];
    let sweep_cells = measure(
        &sweep,
        &[Workload::Bulk],
        &one_client,
        TASKS,
        &mut sweep_rss,
    )
    .await?;
    drop(sweep);
    println!();
    print_table(&TRIO, &[Workload::Bulk], &sweep_cells, &one_client);
    let sweep_errors: u64 = sweep_cells
        .iter()
        .flatten()
        .flatten()
        .map(|c| c.errors)
        .sum();
    for (name, url) in SERVERS.iter().zip(&sweep_urls) {
        let client = connect(url).await?;
        let states: i64 = client
            .query_one("SELECT count(DISTINCT status) FROM task", &[])
            .await?
            .get(0);
        sinew_host::pg::sequencer::catch_up(&client).await?;
        match sinew_host::pg::verify_audit(&client).await? {
            Ok(n) if states == 1 => {
                println!(
                    "{name} (sweep): every task in one state, audit chain verified ({n} entries)"
                )
            }
            Ok(_) => bail!("{name} (sweep): tasks left in two states"),
            Err(e) => bail!("{name} (sweep): audit chain broken: {e}"),
        }
    }
    if sweep_errors > 0 {
        bail!("{sweep_errors} bulk answers did not move 500 rows");
    }

    Ok(())
}

/// The three clinic servers give the same answers (the baseline does the
/// same work): the same page of appointments with the same therapists and
/// invoices and the same total, the same statistics.
async fn same_clinic_answers(servers: &[Server]) -> Result<()> {
    let patient = mint(SECRET, "acct-7", &["patient"], &serde_json::Map::new());
    let staff = mint(SECRET, "staff-0", &["staff"], &serde_json::Map::new());
    let mut seen: Vec<(String, serde_json::Value)> = Vec::new();
    for s in servers {
        let (st, list) =
            load::get_json(&s.base, "/appointments?size=50&status=confirmed", &patient).await?;
        ensure!(st == 200, "{}: list answered {st}: {list}", s.name);
        let (st, stats) = load::get_json(
            &s.base,
            "/stats/therapists?from=2026-01-01T00:00:00Z",
            &staff,
        )
        .await?;
        ensure!(st == 200, "{}: stats answered {st}: {stats}", s.name);
        let rows = list["appointments"].as_array().cloned().unwrap_or_default();
        let digest = serde_json::json!({
            "total": list["total"],
            "ids": rows.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
            "therapists": rows.iter().map(|r| r["therapist_row"]["name"].clone()).collect::<Vec<_>>(),
            "invoices": rows.iter().map(|r| r["invoices"].as_array().map_or(0, Vec::len)).collect::<Vec<_>>(),
            "more": list["next"].is_string(),
            "stats": stats["therapists"].as_array().map(|g| g.iter().map(|t| (t["therapist"].clone(), t["n"].clone(), t["minutes"].clone())).collect::<Vec<_>>()),
            "overall": stats["overall"],
        });
        ensure!(rows.len() == 50, "{}: {} rows, not 50", s.name, rows.len());
        if let Some((first, want)) = seen.first() {
            ensure!(
                &digest == want,
                "{} and {first} disagree:\n{digest}\n{want}",
                s.name
            );
        }
        seen.push((s.name.to_owned(), digest));
    }
    Ok(())
}

/// Runs every workload on every server at every concurrency, interleaved
/// round by round; the cells by workload, concurrency and server.
async fn measure(
    servers: &[Server],
    workloads: &[Workload],
    opts: &Opts,
    accounts: usize,
    peak_rss: &mut [u64],
) -> Result<Vec<Vec<Vec<Cell>>>> {
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    measure_cells(&names, workloads, opts, async |si, workload, c| {
        let s = &servers[si];
        let pid = s.child.id();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    if let Some(r) = rss_kib(pid) {
                        peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let stats = drive(&[s.base.as_str()], &[pid], workload, c, opts, accounts).await;
        sampler.abort();
        peak_rss[si] = peak_rss[si]
            .max(peak.load(std::sync::atomic::Ordering::Relaxed))
            .max(s.rss_kib().unwrap_or(0));
        stats
    })
    .await
}

/// One run of the load generator with `opts`' warm-up and length, its
/// clients spread over `bases` round-robin.
async fn drive(
    bases: &[&str],
    pids: &[u32],
    workload: Workload,
    clients: usize,
    opts: &Opts,
    accounts: usize,
) -> Result<Stats> {
    load::run(
        bases,
        workload,
        clients,
        Duration::from_secs_f64(opts.warmup),
        Duration::from_secs_f64(opts.seconds),
        SECRET,
        accounts,
        pids,
    )
    .await
}

/// The loop of [`measure`]: every workload, every concurrency, every one
/// of the `names` (rotated each round and each concurrency, so that none
/// always goes first), `one(server, workload, clients)` measuring one
/// cell; prints each run and returns the cells by workload, concurrency
/// and server.
async fn measure_cells(
    names: &[&str],
    workloads: &[Workload],
    opts: &Opts,
    mut one: impl AsyncFnMut(usize, Workload, usize) -> Result<Stats>,
) -> Result<Vec<Vec<Vec<Cell>>>> {
    let mut cells: Vec<Vec<Vec<Cell>>> =
        vec![vec![vec![Cell::default(); names.len()]; opts.concurrency.len()]; workloads.len()];
    for round in 0..opts.rounds {
        for (w, workload) in workloads.iter().enumerate() {
            for (ci, &c) in opts.concurrency.iter().enumerate() {
                for k in 0..names.len() {
                    let si = (k + round + ci) % names.len();
                    let stats = one(si, *workload, c).await?;
                    let cpu = stats.cpu.per(stats.completed);
                    println!(
                        "round {} {:<16} {:<8} c={:<3} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}  cpu µs/answer: server {:.0} + postgres {:.0} + load {:.0}; WAL {:.0} B/answer",
                        round + 1,
                        names[si],
                        workload.name(),
                        c,
                        stats.throughput,
                        stats.p50_ms,
                        stats.p99_ms,
                        stats.errors,
                        cpu.server,
                        cpu.postgres,
                        cpu.load,
                        cpu.wal
                    );
                    let cell = &mut cells[w][ci][si];
                    cell.throughput.push(stats.throughput);
                    cell.p50.push(stats.p50_ms);
                    cell.p99.push(stats.p99_ms);
                    cell.cpu.push(cpu);
                    cell.errors += stats.errors;
                    cell.total += stats.completed;
                }
            }
        }
    }
    Ok(cells)
}

/// The columns of a table: the servers' letters, in [`measure`]'s order,
/// and the throughput ratios it shows (numerator, denominator); the first
/// ratio's pair also gives the p99 ratio.
struct Layout {
    letters: &'static [&'static str],
    ratios: &'static [(usize, usize)],
}

/// (A), (B), (C): `trio`'s servers.
const TRIO: Layout = Layout {
    letters: &["A", "B", "C"],
    ratios: &[(0, 2), (1, 2)],
};

/// The bank: `trio`'s and (C′), compared with (C′) first.
const BANK: Layout = Layout {
    letters: &["A", "B", "C", "C′"],
    ratios: &[(0, 3), (1, 3), (0, 2)],
};

/// The table of medians and ratios of [`measure`]'s cells.
fn print_table(layout: &Layout, workloads: &[Workload], cells: &[Vec<Vec<Cell>>], opts: &Opts) {
    println!();
    println!(
        "medians of {} round(s), {:.0} s measured after {:.0} s warm-up; the load generator, the servers and Postgres share this machine",
        opts.rounds, opts.seconds, opts.warmup
    );
    let l = layout.letters;
    let ratio = |&(a, b): &(usize, usize)| format!("{}/{}", l[a], l[b]);
    let (p99a, p99b) = layout.ratios[0];
    let mut header = String::from("| tool | clients |");
    for x in l {
        header += &format!(" {x} req/s |");
    }
    for r in layout.ratios {
        header += &format!(" {} |", ratio(r));
    }
    header += &format!(
        " p50 {all} (ms) | p99 {all} (ms) | p99 {} |",
        ratio(&(p99a, p99b)),
        all = l.join(" / ")
    );
    println!("{header}");
    println!(
        "|---|---:|{}",
        "---:|".repeat(l.len() + layout.ratios.len() + 3)
    );
    for (w, workload) in workloads.iter().enumerate() {
        for (ci, c) in opts.concurrency.iter().enumerate() {
            let m = |si: usize, f: fn(&Cell) -> &Vec<f64>| median(f(&cells[w][ci][si]).clone());
            let t = |si| m(si, |c| &c.throughput);
            let p50 = |si| m(si, |c| &c.p50);
            let p99 = |si| m(si, |c| &c.p99);
            let all = |f: &dyn Fn(usize) -> f64| {
                (0..l.len())
                    .map(|si| format!("{:.2}", f(si)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let mut row = format!("| {} | {} |", workload.name(), c);
            for si in 0..l.len() {
                row += &format!(" {:.0} |", t(si));
            }
            for &(a, b) in layout.ratios {
                row += &format!(" {:.2} |", t(a) / t(b));
            }
            row += &format!(
                " {} | {} | {:.2} |",
                all(&p50),
                all(&p99),
                p99(p99a) / p99(p99b)
            );
            println!("{row}");
        }
    }
    println!();
    println!(
        "CPU per answer, µs (median over rounds; server process + all of Postgres + the load generator = total, from /proc), and bytes of write-ahead log per answer (WAL):"
    );
    println!(
        "| tool | clients |{}",
        l.iter().map(|x| format!(" {x} |")).collect::<String>()
    );
    println!("|---|---:|{}", "---:|".repeat(l.len()));
    for (w, workload) in workloads.iter().enumerate() {
        for (ci, c) in opts.concurrency.iter().enumerate() {
            let mut row = format!("| {} | {} |", workload.name(), c);
            for cell in cells[w][ci].iter().take(l.len()) {
                let cpus = &cell.cpu;
                let m = |f: fn(&cpu::Cpu) -> f64| median(cpus.iter().map(f).collect());
                row += &format!(
                    " {:.0} + {:.0} + {:.0} = {:.0}; WAL {:.0} B |",
                    m(|c| c.server),
                    m(|c| c.postgres),
                    m(|c| c.load),
                    m(|c| c.total()),
                    m(|c| c.wal)
                );
            }
            println!("{row}");
        }
    }
}

/// From `exec` of `sinew serve` to the first 200 of a tool, with the
/// component compiled ahead of time (the cache a deployment bakes in), and
/// with a cold cache.
async fn cold_start(opts: &Opts, url: &str, cache: &Path, data: &Path) -> Result<()> {
    let token = mint(SECRET, "bench-cold", &["teller"], &serde_json::Map::new());
    let path = "/accounts/00000000-0000-4000-8000-000000000001/transfers";
    let time = |cache: PathBuf| {
        let token = token.clone();
        async move {
            let port = free_port()?;
            let started = Instant::now();
            let s = spawn("cold", &serve_args(port, url, &cache, data, false))?;
            loop {
                if load::get_status(&s.base, path, Some(&token)).await == Some(200) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(300) {
                    bail!("no answer within 300 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t = started.elapsed().as_secs_f64() * 1000.0;
            drop(s);
            Ok::<f64, anyhow::Error>(t)
        }
    };
    let mut warm = Vec::new();
    for _ in 0..opts.cold_runs {
        warm.push(time(cache.to_path_buf()).await?);
    }
    let mut cold = Vec::new();
    for i in 0..3.min(opts.cold_runs) {
        let empty = data.join(format!("cold-cache-{i}"));
        cold.push(time(empty).await?);
    }
    println!();
    println!(
        "cold start, exec → first 200 of a tool: {:.1} ms median of {} (precompiled component and snapshot; min {:.1}, max {:.1}); {:.0} ms with a cold .cwasm cache (median of {})",
        median(warm.clone()),
        warm.len(),
        warm.iter().copied().fold(f64::INFINITY, f64::min),
        warm.iter().copied().fold(0.0, f64::max),
        median(cold.clone()),
        cold.len()
    );
    Ok(())
}
