//! The operator's commands beside `serve`: `sinew migrate`, `sinew audit
//! verify`, `sinew outbox`, `sinew keys` and `sinew token`.

use anyhow::{Context, Result};
use std::path::PathBuf;

use crate::serve::Database;

/// Print, plan or apply the migration of a database to a spec.
///
/// Without a database (no DATABASE_URL, no embedded database in
/// --data-dir), prints the schema for an empty database as plain SQL you
/// own. With one, compares it with the spec and prints the SQL of the
/// migration; --plan prints its steps instead, each safe, locking or
/// destructive with the lock it takes; --apply runs it. Steps that lose
/// data, fail on rows already there or break the previous spec's servers
/// (a changed type, a new NOT NULL, a narrowed CHECK) are refused (exit 1)
/// unless --allow-destructive. `sinew serve` applies, at start, only what
/// the spec needs (see the README: "Evolving a spec").
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The spec.
    pub spec: PathBuf,
    /// Run the migration: one transaction, then the statements that must
    /// run alone (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT).
    #[arg(long, conflicts_with_all = ["plan", "status"])]
    pub apply: bool,
    /// Print the steps with their risk and lock instead of the SQL.
    #[arg(long, conflicts_with = "status")]
    pub plan: bool,
    /// Print the migrations the database recorded (`sinew_migrations`) and
    /// what is left to migrate it to the spec.
    #[arg(long)]
    pub status: bool,
    /// Output format of --plan and --status.
    #[arg(long, value_enum, default_value_t = MigrateFormat::Human)]
    pub format: MigrateFormat,
    /// Allow the steps that lose data, fail on rows already there, or
    /// break the previous spec's servers (changed types, new NOT NULLs,
    /// narrowed CHECKs, dropping a NOT NULL column without a default that
    /// the spec lacks).
    #[arg(long)]
    pub allow_destructive: bool,
    /// The database (absent: the embedded one in --data-dir when it exists,
    /// else only print the plan for an empty database).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded Postgres lives.
    #[arg(long, env = "SINEW_DATA_DIR", default_value = ".sinew")]
    pub data_dir: PathBuf,
    /// A directory of secrets, one file per variable, as for `sinew
    /// serve`: read for DATABASE_URL when the flag and the environment
    /// lack it.
    #[arg(long, env = "SINEW_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// The role the servers connect as, when it is not the one migrating
    /// (which owns the tables): grant it what serving needs, and no
    /// UPDATE, DELETE or TRUNCATE on the audit chain and its checkpoints.
    #[arg(long, value_name = "ROLE")]
    pub app_role: Option<String>,
}

/// How `sinew migrate --plan` and `--status` print.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateFormat {
    /// For people.
    Human,
    /// One JSON document, for CI.
    Json,
}

/// Migrates; returns the exit code (0 done, 1 refused).
pub fn migrate(args: &MigrateArgs) -> Result<u8> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("cannot read the spec `{}`", args.spec.display()))?;
    let loaded = sinew_core::spec::load(&text);
    if let Some(d) = loaded.errors.first() {
        anyhow::bail!(
            "`{}` is not a valid spec: {} at {} (run `sinew check`)",
            args.spec.display(),
            d.message,
            d.path
        );
    }
    let spec = &loaded.spec;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let embedded_exists = args.data_dir.join("pg").join("PG_VERSION").is_file();
        let url = database_url(
            args.database_url.as_deref(),
            &crate::secrets::Secrets {
                dir: args.secrets_dir.clone(),
            },
        );
        let db = if url.is_some() || embedded_exists || args.apply || args.status {
            Some(Database::open(url.as_deref(), &args.data_dir)?)
        } else {
            None
        };
        let mut client = match &db {
            Some(db) => Some(db.connect().await?),
            None => None,
        };
        if args.status {
            let client = client.as_ref().context("no database")?;
            return migrate_status(client, spec, args.format).await;
        }
        let mut m = crate::pg::migrate::plan(client.as_ref(), spec, args.allow_destructive).await?;
        m.app_role.clone_from(&args.app_role);
        m.bundle = crate::replay::bundle_hash(&text).ok();
        if args.app_role.is_some() {
            if client.is_some() {
                m.sql = crate::pg::migrate::sql_text(spec, &m);
            } else {
                m.sql.push('\n');
                m.sql.push_str(&sinew_core::migrate::grants(
                    spec,
                    args.app_role.as_deref().unwrap_or_default(),
                ));
            }
        }
        if args.plan {
            let out = match args.format {
                MigrateFormat::Human => m.plan.human(),
                MigrateFormat::Json => m.json(client.is_some()) + "\n",
            };
            crate::write_stdout(&out).context("cannot write the plan to stdout")?;
            return Ok(u8::from(!m.destructive.is_empty()));
        }
        for note in &m.kept {
            eprintln!("note: {note}");
        }
        if !m.destructive.is_empty() {
            eprintln!("refused: migrating would lose data:");
            for d in &m.destructive {
                eprintln!("  - {d}");
            }
            eprintln!("review (`sinew migrate --plan`), then run again with --allow-destructive");
            return Ok(1);
        }
        if args.apply {
            let Some(client) = client.as_mut() else {
                anyhow::bail!("no database to apply to");
            };
            let applied = crate::pg::migrate::apply(client, spec, &m).await?;
            let n = applied.migration.runs().count();
            eprintln!(
                "applied: {n} step(s) ({} on existing tables){}",
                applied.migration.changes,
                applied
                    .id
                    .map(|id| format!(", recorded as migration {id} in sinew_migrations"))
                    .unwrap_or_default()
            );
        } else {
            crate::write_stdout(&m.sql).context("cannot write the plan to stdout")?;
        }
        Ok(0)
    })
}

/// `sinew migrate --status`: the recorded migrations, and what is left.
async fn migrate_status(
    client: &tokio_postgres::Client,
    spec: &sinew_core::spec::Spec,
    format: MigrateFormat,
) -> Result<u8> {
    let history = crate::pg::migrate::history(client).await?;
    let m = crate::pg::migrate::plan(Some(client), spec, false).await?;
    let pending = &m.plan.steps;
    let current = crate::pg::migrate::recorded(client, spec).await;
    let key = crate::pg::migrate::plan_key(spec);
    let position = crate::pg::migrate::position(&history, &key);
    let last = history.last();
    let out = match format {
        MigrateFormat::Json => {
            serde_json::json!({
                "migrations": history,
                "recorded": current,
                "position": position,
                "pending": pending,
                "refused": m.destructive,
            })
            .to_string()
                + "\n"
        }
        MigrateFormat::Human => {
            let mut out = String::new();
            if history.is_empty() {
                out.push_str("no migration recorded (sinew_migrations is empty or missing)\n");
            }
            for h in &history {
                out.push_str(&format!(
                    "{:>4}  {}  {:<28} {} step(s), by {}, {}\n",
                    h.id,
                    h.started_at,
                    format!("{} ({})", h.spec, &h.plan[..12.min(h.plan.len())]),
                    h.steps,
                    h.by,
                    match &h.finished_at {
                        Some(t) => format!("finished {t}"),
                        None => "NOT FINISHED (the next migration finishes it)".to_owned(),
                    }
                ));
            }
            if let (Some(h), "unfinished") = (last, position) {
                out.push_str(&format!(
                    "the last migration ({}), to spec `{}`, did not finish: the next one \
                     (`sinew migrate --apply`) finishes what is left\n",
                    h.id, spec.name
                ));
            }
            if let (Some(h), "ahead") = (last, position) {
                out.push_str(&format!(
                    "the database is ahead of spec `{}`: it was migrated to it before, and since to \
                     spec `{}` ({}) at {}; `sinew serve` of this spec leaves what the later one \
                     added\n",
                    spec.name,
                    h.spec,
                    &h.plan[..12.min(h.plan.len())],
                    h.started_at
                ));
            }
            if pending.is_empty() {
                out.push_str(&format!(
                    "the database matches spec `{}`{}\n",
                    spec.name,
                    if current { "" } else { " (not recorded yet)" }
                ));
            } else {
                out.push_str(&format!(
                    "left to migrate to spec `{}`: {} step(s)\n",
                    spec.name,
                    pending.len()
                ));
                out.push_str(&m.plan.human());
            }
            out
        }
    };
    crate::write_stdout(&out)?;
    Ok(u8::from(!pending.is_empty()))
}

/// Audit log commands.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Walk the hash chain of `sinew_audit` and report the first broken
    /// link (exit 1) or the number of entries (exit 0); also how many
    /// entries wait in the queue for their place in the chain, exit 1 when
    /// one has waited over a minute (no sequencer runs).
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
        /// A checkpoint (`sinew audit checkpoint`, or a server's log line)
        /// kept away from the database: its signature must hold and the
        /// chain must still hold the entry it signed (else the chain was
        /// cut short or rewritten: exit 1). Repeatable.
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
        /// The public key (hex) checkpoints must be signed with (absent:
        /// the one SINEW_AUDIT_SIGNING_KEY gives, else the key each names).
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
    /// Sign the chain's head now with SINEW_AUDIT_SIGNING_KEY, record the
    /// checkpoint in `sinew_audit_checkpoint` and print it (JSON): keep it
    /// away from the database (the servers also sign every minute and log
    /// it).
    Checkpoint {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Chain every queued entry now (what the servers' sequencers do
    /// shortly after each commit): for when no `sinew serve` runs.
    Sequence {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Run recorded executions again, in the component, on the answers
    /// their audit entries recorded (nothing is written, nothing called),
    /// and report per tool how many replayed identically; then the first
    /// difference of each that did not. Without --spec each runs on the
    /// spec that recorded it (from `sinew_bundle`) and must be identical
    /// byte for byte; with --spec they run on that spec: a shadow test of a
    /// change, comparing what each would answer, write and call. Exit 1
    /// when one is different (one whose sensitive input was recorded by
    /// its hash is `unreproducible`; an entry the host wrote itself, for a
    /// request refused before the executor ran or stopped at its deadline,
    /// is `not replayable`: both are reported, neither fails). Exit 2 when
    /// an execution named is not recorded (each is named: `not-found`).
    Replay {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The executions (request ids); none: the latest --limit.
        ids: Vec<String>,
        /// Run them on this spec instead of the one that recorded them.
        #[arg(long, value_name = "SPEC")]
        spec: Option<PathBuf>,
        /// Only executions recorded at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only executions of this tool.
        #[arg(long, value_name = "TOOL")]
        tool: Option<String>,
        /// At most this many executions (the latest).
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// How many executions that did not replay identically to print:
        /// the differences first.
        #[arg(long, default_value_t = 20)]
        show: usize,
        /// One JSON object per execution instead of the report.
        #[arg(long)]
        json: bool,
        /// Where the compiled component is cached (default
        /// `<data-dir>/cache`, as for `sinew serve`).
        #[arg(long, env = "SINEW_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
}

/// The database's URL: `given` (the flag or DATABASE_URL) when not empty,
/// else the secrets directory's DATABASE_URL; none: the embedded database.
fn database_url(given: Option<&str>, secrets: &crate::secrets::Secrets) -> Option<String> {
    given
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .or_else(|| secrets.get("DATABASE_URL"))
}

/// Where the database is.
#[derive(clap::Args, Debug)]
struct DatabaseArgs {
    /// The database (absent: the embedded one in --data-dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the embedded Postgres lives.
    #[arg(long, env = "SINEW_DATA_DIR", default_value = ".sinew")]
    data_dir: PathBuf,
    /// A directory of secrets, one file per variable, as for `sinew
    /// serve`: read for DATABASE_URL and SINEW_AUDIT_SIGNING_KEY when the
    /// flag and the environment lack them.
    #[arg(long, env = "SINEW_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
}

impl DatabaseArgs {
    /// Where the secrets come from.
    fn secrets(&self) -> crate::secrets::Secrets {
        crate::secrets::Secrets {
            dir: self.secrets_dir.clone(),
        }
    }

    /// The database's URL: the flag or DATABASE_URL, else the secrets
    /// directory's (none: the embedded database).
    fn url(&self) -> Option<String> {
        database_url(self.database_url.as_deref(), &self.secrets())
    }

    /// The database they name (the embedded one started if need be).
    fn open(&self) -> Result<Database> {
        Database::open(self.url().as_deref(), &self.data_dir)
    }

    /// [`DatabaseArgs::run`] for a command that only reads what a server
    /// wrote: without `--database-url`, the embedded database must exist
    /// already (one is not created empty just to be read).
    fn run_existing<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        let url = self.url();
        let pg = self.data_dir.join("pg");
        if url.is_none() && !pg.join("PG_VERSION").is_file() {
            anyhow::bail!(
                "no database in `{}`: `sinew serve` creates it there, or pass --database-url (DATABASE_URL)",
                pg.display()
            );
        }
        self.run(f)
    }

    /// Runs `f` on a connection to that database, on a runtime of its own
    /// (the embedded database, if started, stays up until `f` ends).
    fn run<T>(&self, f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>) -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let database = self.open()?;
            let client = database.connect().await?;
            f(&client).await
        })
    }
}

/// Runs an audit command; returns the exit code.
pub fn audit(args: &AuditArgs) -> Result<u8> {
    let (AuditCommand::Verify { db, .. }
    | AuditCommand::Sequence { db }
    | AuditCommand::Replay { db, .. }
    | AuditCommand::Checkpoint { db }) = &args.command;
    db.run_existing(async |client| {
        use crate::pg::{checkpoint, sequencer};
        match &args.command {
            AuditCommand::Replay {
                ids,
                spec,
                since,
                tool,
                limit,
                show,
                json,
                cache_dir,
                ..
            } => {
                let selection = crate::replay::Selection {
                    ids: ids.clone(),
                    since: since.clone(),
                    tool: tool.clone(),
                    // (Every id named is read, whatever --limit says.)
                    limit: (*limit)
                        .max(0)
                        .max(i64::try_from(ids.len()).unwrap_or(i64::MAX)),
                };
                let spec = match spec {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("cannot read the spec `{}`", p.display()))?,
                    ),
                    None => None,
                };
                let cache = cache_dir.clone().unwrap_or_else(|| db.data_dir.join("cache"));
                replay(client, &cache, &selection, spec.as_deref(), *show, *json).await
            }
            AuditCommand::Sequence { .. } => {
                let n = sequencer::catch_up(client).await?;
                crate::write_stdout(&format!("chained {n} queued entries\n"))?;
                Ok(0)
            }
            AuditCommand::Checkpoint { .. } => {
                let Some(key) = db.secrets().get(checkpoint::KEY_VAR) else {
                    anyhow::bail!(
                        "{} is not set: it holds the key checkpoints are signed with (32 bytes, hex: `openssl rand -hex 32`)",
                        checkpoint::KEY_VAR
                    );
                };
                let signer = checkpoint::Signer::from_secret(&key)?;
                // The head is signed as it stands: chain what is queued first.
                sequencer::catch_up(client).await?;
                let latest = match checkpoint::write(client, &signer).await? {
                    Some(v) => v,
                    None => {
                        let row = client
                            .query_opt(
                                "SELECT checkpoint FROM sinew_audit_checkpoint WHERE key = $1 \
                                 ORDER BY seq DESC LIMIT 1",
                                &[&signer.public_hex()],
                            )
                            .await?;
                        match row {
                            Some(r) => serde_json::from_str(r.get::<_, &str>(0))?,
                            None => anyhow::bail!("the audit chain is empty: nothing to sign"),
                        }
                    }
                };
                crate::write_stdout(&format!("{latest}\n"))?;
                Ok(0)
            }
            AuditCommand::Verify {
                checkpoint: files,
                public_key,
                ..
            } => {
                let trusted = match public_key {
                    Some(k) => Some(k.clone()),
                    None => db
                        .secrets()
                        .get(checkpoint::KEY_VAR)
                        .map(|k| checkpoint::Signer::from_secret(&k).map(|s| s.public_hex()))
                        .transpose()?,
                };
                let mut checked = Vec::new();
                for file in files {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    // A file may be the checkpoint, or a server's log line
                    // carrying it.
                    let v: serde_json::Value = serde_json::from_str(text.trim())
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    let v = match v.get("checkpoint") {
                        Some(inner) if inner.is_object() => inner.clone(),
                        _ => v,
                    };
                    checked.push((
                        file.display().to_string(),
                        checkpoint::holds(client, &v, trusted.as_deref()).await?,
                    ));
                }
                let verified = crate::pg::verify_audit(client).await?;
                let (queued, oldest) = sequencer::queued(client).await?;
                let late = oldest.is_some_and(|age| age > sequencer::LATE);
                let mut out = match &verified {
                    Ok(n) => format!("audit chain intact: {n} entries\n"),
                    Err(broken) => format!("audit chain broken: {broken}\n"),
                };
                for seq in crate::pg::unreadable_entries(client).await? {
                    out.push_str(&format!(
                        "audit entry {seq}: queued as a text that is not a JSON object (written to \
                         the queue by hand), chained as found, as an `unreadable` entry\n"
                    ));
                }
                let mut cut = false;
                for (file, held) in &checked {
                    match held {
                        Ok(seq) => out.push_str(&format!(
                            "checkpoint {file}: holds (entry {seq} is the one it signed)\n"
                        )),
                        Err(e) => {
                            cut = true;
                            out.push_str(&format!("checkpoint {file}: does not hold: {e}\n"));
                        }
                    }
                }
                if let (true, Some(age)) = (queued > 0, oldest) {
                    out.push_str(&format!(
                        "{queued} entries queued, not chained yet (the oldest for {:.1} s){}\n",
                        age.as_secs_f64(),
                        if late {
                            ": no sequencer is running (start `sinew serve`, or run `sinew audit sequence`)"
                        } else {
                            ""
                        }
                    ));
                }
                crate::write_stdout(&out)?;
                Ok(u8::from(verified.is_err() || late || cut))
            }
        }
    })
}

/// `sinew audit replay`: the report on stdout, exit 1 when an execution
/// replayed differently.
async fn replay(
    client: &tokio_postgres::Client,
    cache: &std::path::Path,
    selection: &crate::replay::Selection,
    spec: Option<&str>,
    show: usize,
    json: bool,
) -> Result<u8> {
    use crate::replay::{Replaying, Summary, entries, recorded_spec};
    let entries = entries(client, selection).await?;
    let engine = crate::runtime::Engine::new(Some(cache))?;
    // One component per spec: the one given, or each recording one.
    let mut specs: std::collections::HashMap<String, Option<Replaying>> = Default::default();
    let given = match spec {
        Some(text) => Some(Replaying::new(engine.clone(), text).await?),
        None => None,
    };
    let mut summary = Summary::default();
    let mut out = String::new();
    for entry in &entries {
        let bundle = entry
            .get("bundle")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let on = match &given {
            Some(r) => Some(r),
            None => {
                if !specs.contains_key(&bundle) {
                    let loaded = match recorded_spec(client, &bundle).await? {
                        Some(text) => Some(Replaying::new(engine.clone(), &text).await?),
                        None => None,
                    };
                    specs.insert(bundle.clone(), loaded);
                }
                specs.get(&bundle).and_then(Option::as_ref)
            }
        };
        let replayed = match on {
            Some(r) => r.replay(entry).await,
            None => crate::replay::Replayed {
                execution: entry["execution"].as_str().unwrap_or_default().to_owned(),
                tool: entry["tool"].as_str().unwrap_or_default().to_owned(),
                verdict: sinew_core::replay::Verdict::NotReplayable {
                    reason: format!(
                        "the spec that recorded it ({bundle}) is not in sinew_bundle: pass it with --spec"
                    ),
                },
                tool_absent: false,
            },
        };
        if json {
            out.push_str(&crate::replay::json_line(&replayed));
        }
        summary.add(replayed);
    }
    let missing = crate::replay::not_found(&selection.ids, &entries);
    if json {
        for id in &missing {
            let line = serde_json::json!({"result": "not-found", "execution": id});
            out.push_str(&format!("{line}\n"));
        }
    } else {
        if entries.is_empty() {
            out.push_str("no recorded execution matches\n");
        }
        out.push_str(&summary.text(show));
        for id in &missing {
            out.push_str(&format!(
                "  not-found {id}: no recorded execution has this id\n"
            ));
        }
    }
    crate::write_stdout(&out)?;
    if !missing.is_empty() {
        eprintln!(
            "error: no recorded execution has the id{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(2);
    }
    Ok(u8::from(!summary.none_different()))
}

/// List the outbox messages not delivered: pending ones (oldest first: when
/// the next attempt is, how many were made, the last error), then those
/// that failed for good.
#[derive(clap::Args, Debug)]
pub struct OutboxArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Lists the outbox; returns the exit code (0).
pub fn outbox(args: &OutboxArgs) -> Result<u8> {
    args.db.run_existing(async |client| {
        let listed = crate::outbox::list(client).await?;
        let mut out = String::new();
        for m in &listed {
            if args.json {
                let line = serde_json::json!({
                    "id": m.id, "state": m.state, "operation": m.target,
                    "execution": m.execution, "attempts": m.attempts,
                    "created": m.created,
                    if m.state == "failed" { "failed" } else { "next" }: m.when,
                    "error": m.error,
                });
                out.push_str(&format!("{line}\n"));
            } else {
                let when = if m.state == "failed" {
                    "failed"
                } else {
                    "next"
                };
                out.push_str(&format!(
                    "{:<7}  {}  {}  attempts {}  {when} {}  message {}  execution {}{}\n",
                    m.state,
                    m.created,
                    m.target,
                    m.attempts,
                    m.when,
                    m.id,
                    m.execution,
                    m.error
                        .as_deref()
                        .map(|e| format!("\n         last error: {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if !args.json {
            let failed = listed.iter().filter(|m| m.state == "failed").count();
            out.push_str(&format!(
                "outbox: {} pending, {failed} failed\n",
                listed.len() - failed
            ));
        }
        crate::write_stdout(&out)?;
        Ok(0)
    })
}

/// Mint a development token (HS256, signed with SINEW_JWT_SECRET).
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The subject (`sub`; not empty: the server refuses such a token).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub sub: String,
    /// Roles, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// The secret.
    #[arg(long, env = "SINEW_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// `iss` to set.
    #[arg(long, env = "SINEW_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` to set.
    #[arg(long, env = "SINEW_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// The roles claim's name.
    #[arg(long, env = "SINEW_JWT_ROLES_CLAIM", default_value = "roles")]
    pub roles_claim: String,
    /// A directory of secrets, one file per variable, as for `sinew
    /// serve`: read for SINEW_JWT_SECRET when the flag and the environment
    /// lack it.
    #[arg(long, env = "SINEW_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
}

/// Prints a token.
pub fn token(args: &TokenArgs) -> Result<u8> {
    let secrets = crate::secrets::Secrets {
        dir: args.secrets_dir.clone(),
    };
    let jwt = crate::jwt::JwtConfig {
        secret: args
            .secret
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| secrets.get("SINEW_JWT_SECRET")),
        keys: Vec::new(),
        issuer: args.issuer.clone().filter(|s| !s.is_empty()),
        audience: args.audience.clone().filter(|s| !s.is_empty()),
        roles_claim: args.roles_claim.clone(),
    };
    let token = jwt.mint(&args.sub, &args.roles, args.ttl, crate::jwt::now_secs())?;
    crate::write_stdout(&format!("{token}\n"))?;
    Ok(0)
}

/// Manage API keys for machine callers (service-to-service calls without
/// a user): a call with `Authorization: Bearer <key>` runs as `key:<id>`
/// with the key's roles and claims, and is audited with that subject.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Make a key and print it (once: only its SHA-256 is stored).
    Create {
        #[command(flatten)]
        db: DatabaseArgs,
        /// What it is for (shown by `list`; not empty).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        name: String,
        /// Its roles, comma-separated or repeated (at least one; none
        /// empty).
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_parser = clap::builder::NonEmptyStringValueParser::new()
        )]
        roles: Vec<String>,
        /// A claim its calls carry, `NAME=VALUE` (a tenant: `org_id=acme`);
        /// repeatable.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// When it stops working: a duration from now (`90d`, `12h`) or a
        /// time (RFC 3339). Default: never.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// Print `{"id", "key"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the keys (never the keys themselves): id, name, roles, claims,
    /// when made, expiring and revoked.
    List {
        #[command(flatten)]
        db: DatabaseArgs,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id: servers refuse it within 5 seconds.
    Revoke {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The key's id (`list` shows it; the audit log names it `key:<id>`).
        id: String,
    },
}

/// `--expires`: `90d`, `12h`, `30m` from `now`, or an RFC 3339 time.
fn expiry(s: &str, now: jiff::Timestamp) -> Result<jiff::Timestamp> {
    let unit = |n: &str, secs: i64| -> Result<jiff::Timestamp> {
        let n: i64 = n
            .parse()
            .with_context(|| format!("`{s}` is not a duration"))?;
        anyhow::ensure!(n > 0, "`{s}`: the duration must be positive");
        Ok(now.checked_add(jiff::SignedDuration::from_secs(n.saturating_mul(secs)))?)
    };
    if let Some(n) = s.strip_suffix('d') {
        return unit(n, 86_400);
    }
    if let Some(n) = s.strip_suffix('h') {
        return unit(n, 3_600);
    }
    if let Some(n) = s.strip_suffix('m') {
        return unit(n, 60);
    }
    let t: jiff::Timestamp = s.parse().with_context(|| {
        format!("`{s}` is neither a duration (90d, 12h, 30m) nor an RFC 3339 time")
    })?;
    anyhow::ensure!(t > now, "`{s}` is in the past");
    Ok(t)
}

/// The claims of `sinew keys create` (`--claim NAME=VALUE`, each name
/// once, none of those sinew sets), after checking its `--roles`.
fn key_claims(
    roles: &[String],
    claims: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>> {
    crate::keys::check_roles(roles)?;
    let mut map = serde_json::Map::new();
    for c in claims {
        let Some((k, v)) = c.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            anyhow::bail!("--claim `{c}`: write NAME=VALUE");
        };
        if map
            .insert(k.to_owned(), serde_json::Value::from(v))
            .is_some()
        {
            anyhow::bail!("--claim `{k}` is given twice: a claim has one value");
        }
    }
    crate::keys::check_claims(&map)?;
    Ok(map)
}

/// Runs a keys command; returns the exit code.
pub fn keys(args: &KeysArgs) -> Result<u8> {
    let (KeysCommand::Create { db, .. }
    | KeysCommand::List { db, .. }
    | KeysCommand::Revoke { db, .. }) = &args.command;
    // (The flags are checked before the database is reached.)
    let map = match &args.command {
        KeysCommand::Create { roles, claims, .. } => key_claims(roles, claims)?,
        _ => serde_json::Map::new(),
    };
    db.run(async |client| match &args.command {
        KeysCommand::Create {
            name,
            roles,
            expires,
            json,
            ..
        } => {
            let expires = expires
                .as_deref()
                .map(|e| expiry(e, jiff::Timestamp::now()))
                .transpose()?;
            let key = crate::keys::create(client, name, roles, &map, expires).await?;
            if *json {
                let line = serde_json::json!({"id": key.id, "key": key.key});
                crate::write_stdout(&format!("{line}\n"))?;
            } else {
                crate::write_stdout(&format!("{}\n", key.key))?;
                eprintln!(
                    "key {} ({name}): roles {}{}; shown once, keep it secret \
                         (callers send `Authorization: Bearer <key>`)",
                    key.id,
                    roles.join(", "),
                    expires
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        KeysCommand::List { json, .. } => {
            let listed = crate::keys::list(client).await?;
            let mut out = String::new();
            for k in &listed {
                if *json {
                    let line = serde_json::json!({
                        "id": k.id, "name": k.name, "roles": k.roles, "claims": k.claims,
                        "created": k.created, "expires": k.expires, "revoked": k.revoked,
                    });
                    out.push_str(&format!("{line}\n"));
                } else {
                    let state = match (&k.revoked, &k.expires) {
                        (Some(r), _) => format!("revoked {r}"),
                        (None, Some(e)) => format!("expires {e}"),
                        (None, None) => "no expiry".to_owned(),
                    };
                    out.push_str(&format!(
                        "{}  {}  roles {}  claims {}  created {}  {state}\n",
                        k.id,
                        k.name,
                        k.roles.join(","),
                        k.claims,
                        k.created
                    ));
                }
            }
            if !*json {
                out.push_str(&format!("keys: {}\n", listed.len()));
            }
            crate::write_stdout(&out)?;
            Ok(0)
        }
        KeysCommand::Revoke { id, .. } => {
            if crate::keys::revoke(client, id).await? {
                crate::write_stdout(&format!(
                    "key {id} revoked: servers refuse it within {} s\n",
                    crate::keys::CACHE_TTL.as_secs()
                ))?;
                Ok(0)
            } else {
                eprintln!("no key {id} to revoke (unknown, or revoked already)");
                Ok(1)
            }
        }
    })
}
