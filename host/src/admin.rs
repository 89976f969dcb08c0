//! The operator's commands beside `serve`: `sinew migrate`, `sinew audit
//! verify`, `sinew outbox` and `sinew token`.

use anyhow::{Context, Result};
use std::path::PathBuf;

use crate::serve::Database;

/// Print (or apply) the Postgres schema a spec needs.
///
/// Prints plain SQL you own: tables, CHECKs, indexes and the sinew_* tables
/// with their triggers. With DATABASE_URL (or an embedded database in
/// --data-dir) it also compares with what exists: new columns are added;
/// a change that narrows a column is refused unless --allow-destructive.
/// A column the spec lacks is kept when inserts can leave it out (nullable,
/// or with a default), else refused (NOT NULL without a default: inserts
/// would fail) and dropped only with --allow-destructive; `sinew serve`
/// applies the same rule. Every statement is idempotent, so re-running is a
/// no-op.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The spec.
    pub spec: PathBuf,
    /// Run the SQL, in one transaction.
    #[arg(long)]
    pub apply: bool,
    /// Allow changes that lose data (changed types, new NOT NULLs, dropping
    /// a NOT NULL column without a default that the spec lacks).
    #[arg(long)]
    pub allow_destructive: bool,
    /// The database (absent: the embedded one in --data-dir when it exists,
    /// else only print the plan for an empty database).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded Postgres lives.
    #[arg(long, env = "SINEW_DATA_DIR", default_value = ".sinew")]
    pub data_dir: PathBuf,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let embedded_exists = args.data_dir.join("pg").join("PG_VERSION").is_file();
        let db = if args.database_url.is_some() || embedded_exists || args.apply {
            Some(Database::open(args.database_url.as_deref(), &args.data_dir)?)
        } else {
            None
        };
        let mut client = match &db {
            Some(db) => Some(db.connect().await?),
            None => None,
        };
        let m = crate::pg::migrate::plan(client.as_ref(), &loaded.spec, args.allow_destructive)
            .await?;
        for note in &m.kept {
            eprintln!("note: {note}");
        }
        if !m.destructive.is_empty() && !args.allow_destructive {
            eprintln!("refused: migrating would lose data:");
            for d in &m.destructive {
                eprintln!("  - {d}");
            }
            eprintln!("review, then run again with --allow-destructive");
            return Ok(1);
        }
        if args.apply {
            let Some(client) = client.as_mut() else {
                anyhow::bail!("no database to apply to");
            };
            crate::pg::migrate::apply(client, &loaded.spec, &m).await?;
            eprintln!(
                "applied: {} change(s) to existing tables; everything else already existed or was created",
                m.changes
            );
        } else {
            crate::write_stdout(&m.sql).context("cannot write the plan to stdout")?;
        }
        Ok(0)
    })
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
    },
    /// Chain every queued entry now (what the servers' sequencers do
    /// shortly after each commit): for when no `sinew serve` runs.
    Sequence {
        #[command(flatten)]
        db: DatabaseArgs,
    },
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
}

/// Runs an audit command; returns the exit code.
pub fn audit(args: &AuditArgs) -> Result<u8> {
    let (AuditCommand::Verify { db } | AuditCommand::Sequence { db }) = &args.command;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let database = Database::open(db.database_url.as_deref(), &db.data_dir)?;
        let client = database.connect().await?;
        use crate::pg::sequencer;
        match &args.command {
            AuditCommand::Sequence { .. } => {
                let n = sequencer::catch_up(&client).await?;
                crate::write_stdout(&format!("chained {n} queued entries\n"))?;
                Ok(0)
            }
            AuditCommand::Verify { .. } => {
                let verified = crate::pg::verify_audit(&client).await?;
                let (queued, oldest) = sequencer::queued(&client).await?;
                let late = oldest.is_some_and(|age| age > sequencer::LATE);
                let mut out = match &verified {
                    Ok(n) => format!("audit chain intact: {n} entries\n"),
                    Err(broken) => format!("audit chain broken: {broken}\n"),
                };
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
                Ok(u8::from(verified.is_err() || late))
            }
        }
    })
}

/// List the outbox messages not delivered: pending ones (oldest first: when
/// the next attempt is, how many were made, the last error), then those
/// that failed for good.
#[derive(clap::Args, Debug)]
pub struct OutboxArgs {
    /// The database (absent: the embedded one in --data-dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the embedded Postgres lives.
    #[arg(long, env = "SINEW_DATA_DIR", default_value = ".sinew")]
    data_dir: PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Lists the outbox; returns the exit code (0).
pub fn outbox(args: &OutboxArgs) -> Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let db = Database::open(args.database_url.as_deref(), &args.data_dir)?;
        let client = db.connect().await?;
        let listed = crate::outbox::list(&client).await?;
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
    /// The subject (`sub`).
    #[arg(long)]
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
}

/// Prints a token.
pub fn token(args: &TokenArgs) -> Result<u8> {
    let jwt = crate::jwt::JwtConfig {
        secret: args.secret.clone().filter(|s| !s.is_empty()),
        keys: Vec::new(),
        issuer: args.issuer.clone().filter(|s| !s.is_empty()),
        audience: args.audience.clone().filter(|s| !s.is_empty()),
        roles_claim: args.roles_claim.clone(),
    };
    let token = jwt.mint(&args.sub, &args.roles, args.ttl, crate::jwt::now_secs())?;
    crate::write_stdout(&format!("{token}\n"))?;
    Ok(0)
}
