//! `sinew migrate`: the DDL a database needs for a spec. Creating what is
//! missing is always safe and idempotent; a change to an existing table that
//! could lose data (a changed type, a new `NOT NULL`, dropping a column the
//! spec lacks that would make inserts fail) is refused unless the user
//! allows it. A column the spec lacks that inserts can leave out is kept
//! (see [`unknown_column`]).

use anyhow::{Context, Result};
use sinew_core::migrate::evolve::{
    self, Applies, Check, Column, ForeignKey, Index, Plan, Schema, Step,
};
use sinew_core::migrate::{Rule, columns, table_name};
use sinew_core::spec::Spec;
use std::fmt::Write;

pub use sinew_core::migrate::unknown_column;

/// The refusals of [`unknown_column`] in the database behind `client`, in
/// one catalog query (no prepared statement): what a start whose schema is
/// [`recorded`] as migrated checks, so that a column added by hand since
/// is refused by `sinew serve` as by `sinew migrate`. The new column of a
/// rename in progress is filled by the rename's trigger: not refused.
pub async fn refused_columns(client: &tokio_postgres::Client, spec: &Spec) -> Result<Vec<String>> {
    let messages = client
        .simple_query(
            "SELECT c.relname::text, a.attname::text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace \
                                     WHERE nspname = current_schema()) \
               AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' \
               AND a.attgenerated = '' \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid \
                 AND obj_description(t.oid, 'pg_trigger') ~ \
                     ('^sinew rename [A-Za-z0-9_]+ to ' || a.attname || '(, copied)?$')) \
             ORDER BY c.relname, a.attnum",
        )
        .await
        .context("reading the database's NOT NULL columns")?;
    let mut refused = Vec::new();
    for m in &messages {
        let tokio_postgres::SimpleQueryMessage::Row(r) = m else {
            continue;
        };
        let (Some(table), Some(column)) = (r.get(0), r.get(1)) else {
            continue;
        };
        let Some(entity) = spec
            .entities
            .iter()
            .find_map(|(name, e)| (table_name(name) == table).then_some(e))
        else {
            continue;
        };
        if columns(entity).iter().any(|c| c.name == column) {
            continue;
        }
        if let Err(refusal) = unknown_column(table, column, true, false) {
            refused.push(refusal);
        }
    }
    Ok(refused)
}

/// Who runs a migration, which decides the steps it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `sinew serve` at start: what the spec needs and nothing else; it
    /// does not start while a step it needs is refused.
    Serve,
    /// `sinew migrate --apply`: every step but the forced ones.
    #[default]
    Migrate,
    /// `sinew migrate --apply --allow-destructive`: every step.
    Forced,
}

impl Mode {
    /// Whether this mode applies `s`.
    pub fn applies(self, s: &Step) -> bool {
        matches!(
            (self, s.applies),
            (Mode::Forced, _) | (_, Applies::Always) | (Mode::Migrate, Applies::Migrate)
        )
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Migrate => "migrate",
            Mode::Forced => "migrate --allow-destructive",
        }
    }
}

/// What migrating a database to a spec takes.
#[derive(Debug, Clone, Default)]
pub struct Migration {
    /// Every step from the database to the spec, applied or not.
    pub plan: Plan,
    /// Who migrates.
    pub mode: Mode,
    /// The SQL that runs: the transaction, then the statements that run
    /// alone.
    pub sql: String,
    /// Steps this mode refuses, one sentence each (what and why): the
    /// forced steps the spec needs (without them the database cannot serve
    /// it). `sinew serve` and `sinew migrate` refuse the same ones; the
    /// forced steps the spec runs without are left, with a note.
    pub destructive: Vec<String>,
    /// Steps that run on tables that exist (not creating one).
    pub changes: usize,
    /// Whether the database can serve the spec once it runs (no step the
    /// spec needs is refused).
    pub complete: bool,
    /// What is left as it is, one sentence each (columns the spec lacks,
    /// renames done before, steps `serve` leaves to `sinew migrate`).
    pub kept: Vec<String>,
    /// The role the servers connect as, granted what serving needs in
    /// the migration's transaction (`sinew migrate --app-role`).
    pub app_role: Option<String>,
    /// The spec's bundle hash, recorded with the migration.
    pub bundle: Option<String>,
}

impl Migration {
    /// The plan as `sinew migrate --plan --format json` prints it: every
    /// step (with who applies it), the notes, the refusals, the highest
    /// risk; `database`: whether it was planned against one.
    pub fn json(&self, database: bool) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "database": database,
            "risk": self.plan.risk().map(|r| r.name()),
            "steps": self.plan.steps,
            "notes": self.kept,
            "refused": self.destructive,
        }))
        .unwrap_or_default()
    }

    /// The steps that run, in order.
    pub fn runs(&self) -> impl Iterator<Item = &Step> {
        self.plan.steps.iter().filter(|s| self.mode.applies(s))
    }
}

/// What a database has: its tables' columns, sinew's one-column `CHECK`s,
/// indexes, foreign keys, and the views renames left.
pub async fn read_schema(client: &tokio_postgres::Client) -> Result<Schema> {
    let mut schema = Schema::default();
    let rows = client
        .query(
            "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable::text, \
             c.column_default IS NOT NULL OR c.is_identity = 'YES' OR c.is_generated = 'ALWAYS' \
             FROM information_schema.columns c JOIN information_schema.tables t \
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
             ORDER BY c.table_name, c.ordinal_position",
            &[],
        )
        .await
        .context("reading the database's tables")?;
    for r in &rows {
        let table: String = r.get(0);
        let nullable: String = r.get(3);
        schema
            .tables
            .entry(table)
            .or_default()
            .columns
            .push(Column {
                name: r.get(1),
                sql_type: r.get(2),
                not_null: nullable == "NO",
                filled: r.get(4),
            });
    }
    let rows = client
        .query(
            "SELECT c.relname::text, k.conname::text, a.attname::text, \
             coalesce(obj_description(k.oid, 'pg_constraint'), ''), k.convalidated \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
             WHERE k.contype = 'c' AND cardinality(k.conkey) = 1 \
               AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("reading the database's CHECKs")?;
    for r in &rows {
        let (table, name, column, comment): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let rule = Rule::from_comment(&comment);
        // sinew's: commented by it, or named as Postgres named the CHECKs
        // sinew wrote before it commented them.
        let ours = rule.is_some() || name.starts_with(&format!("{table}_{column}_check"));
        if !ours || sinew_core::model::IMPLICIT_FIELDS.contains(&column.as_str()) {
            continue;
        }
        if let Some(t) = schema.tables.get_mut(&table) {
            t.checks.push(Check {
                name,
                column,
                rule,
                valid: r.get(4),
            });
        }
    }
    let rows = client
        .query(
            "SELECT c.relname::text, k.conname::text, \
             ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o) \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n \
                   ORDER BY u.o), \
             r.relname::text \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
             JOIN pg_catalog.pg_class r ON r.oid = k.confrelid \
             WHERE k.contype = 'f' \
               AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("reading the database's foreign keys")?;
    for r in &rows {
        let table: String = r.get(0);
        if let Some(t) = schema.tables.get_mut(&table) {
            t.foreign_keys.push(ForeignKey {
                name: r.get(1),
                columns: r.get(2),
                target: r.get(3),
            });
        }
    }
    let rows = client
        .query(
            "SELECT t.relname::text, i.relname::text, x.indisunique AND x.indpred IS NOT NULL, \
             x.indisvalid, 0 = ANY (x.indkey::int2[]), \
             ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY u(n, o) \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.n ORDER BY u.o), \
             EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.oid) \
             FROM pg_catalog.pg_index x \
             JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid \
             JOIN pg_catalog.pg_class t ON t.oid = x.indrelid \
             WHERE NOT x.indisprimary \
               AND t.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("reading the database's indexes")?;
    for r in &rows {
        let (table, name): (String, String) = (r.get(0), r.get(1));
        let expression: bool = r.get(4);
        let constraint: bool = r.get(6);
        if expression || constraint {
            continue; // the owner's, or a constraint's: never sinew's
        }
        let sinew = name.starts_with(&format!("{table}_"))
            && (name.ends_with("_idx") || name.ends_with("_key"));
        if let Some(t) = schema.tables.get_mut(&table) {
            t.indexes.push(Index {
                name,
                columns: r.get(5),
                unique: r.get(2),
                valid: r.get(3),
                sinew,
            });
        }
    }
    let rows = client
        .query(
            "SELECT c.relname::text, t.tgname::text, obj_description(t.oid, 'pg_trigger') \
             FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             WHERE NOT t.tgisinternal \
               AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) \
               AND obj_description(t.oid, 'pg_trigger') LIKE 'sinew rename %' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("reading the database's triggers")?;
    for r in &rows {
        let (table, trigger, comment): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if let (Some(t), Some(rename)) = (
            schema.tables.get_mut(&table),
            evolve::Rename::from_comment(&trigger, &comment),
        ) {
            t.renames.push(rename);
        }
    }
    let rows = client
        .query(
            "SELECT c.relname::text, obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c \
             WHERE c.relkind = 'v' \
               AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) \
               AND obj_description(c.oid, 'pg_class') LIKE 'sinew renamed to %'",
            &[],
        )
        .await
        .context("reading the database's views")?;
    for r in &rows {
        let comment: String = r.get(1);
        let target = comment.trim_start_matches("sinew renamed to ").to_owned();
        schema.views.insert(r.get(0), target);
    }
    Ok(schema)
}

/// The tables of a spec that are sinew's own bookkeeping, not entities.
fn entity_tables(schema: &Schema, spec: &Spec) -> Schema {
    // Only entity tables (and tables the spec renames) take part: sinew's
    // own are created by `SINEW_TABLES`, others are the owner's.
    let mut out = schema.clone();
    out.tables
        .retain(|name, _| !name.starts_with("sinew_") || is_entity(spec, name));
    out
}

fn is_entity(spec: &Spec, table: &str) -> bool {
    spec.entities.keys().any(|n| table_name(n) == table)
}

/// The migration of the database behind `client` to `spec` for `mode`.
/// Without a client, the plan for an empty database.
pub async fn plan_for(
    client: Option<&tokio_postgres::Client>,
    spec: &Spec,
    mode: Mode,
) -> Result<Migration> {
    let Some(client) = client else {
        let plan = evolve::plan(&Schema::default(), spec);
        return Ok(Migration {
            plan,
            mode,
            sql: sinew_core::migrate::plan(spec),
            complete: true,
            ..Migration::default()
        });
    };
    let schema = entity_tables(&read_schema(client).await?, spec);
    Ok(migration(&schema, spec, mode))
}

/// The migration from `schema` to `spec` for `mode`.
pub fn migration(schema: &Schema, spec: &Spec, mode: Mode) -> Migration {
    let plan = evolve::plan(schema, spec);
    let mut m = Migration {
        mode,
        kept: plan.notes.clone(),
        ..Migration::default()
    };
    // Tables this plan creates: their foreign keys are part of that.
    let created: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| s.change.starts_with("create table"))
        .map(|s| s.table.as_str())
        .collect();
    for s in &plan.steps {
        let sentence = || match &s.why {
            Some(why) => format!("`{}`: {}: {why}", s.table, s.change),
            None => format!("`{}`: {}", s.table, s.change),
        };
        if mode.applies(s) {
            let creating = s.change.starts_with("create table")
                || (s.change.starts_with("add the foreign key")
                    && created.contains(&s.table.as_str()));
            if !creating {
                m.changes += 1;
            }
        } else if !s.needed {
            if s.change.starts_with("validate the CHECK") && s.applies == Applies::Forced {
                continue; // said with the narrowing it validates
            }
            m.kept.push(format!(
                "left as it is (the spec runs without it; `sinew migrate --apply{}` applies it): {}",
                if s.applies == Applies::Forced {
                    " --allow-destructive"
                } else {
                    ""
                },
                sentence()
            ));
        } else {
            // Refusals name what `unknown_column` says in its words.
            m.destructive.push(match &s.why {
                Some(why) if s.change.starts_with("drop column") => why.clone(),
                _ => sentence(),
            });
        }
    }
    m.complete = m.destructive.is_empty();
    m.plan = plan;
    m.sql = sql_text(spec, &m);
    m
}

/// The SQL a migration runs, for people to read or run by hand.
pub fn sql_text(spec: &Spec, m: &Migration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- sinew migration to spec {}",
        sinew_core::migrate::literal(&spec.name)
    );
    let _ = writeln!(out, "BEGIN;\nSET LOCAL lock_timeout = '2s';");
    out.push_str(sinew_core::migrate::SINEW_TABLES);
    for s in m.runs().filter(|s| !s.alone) {
        let _ = writeln!(out, "-- {} ({}): {}", s.table, s.risk.name(), s.change);
        for q in &s.sql {
            let _ = writeln!(out, "{q}");
        }
    }
    out.push_str(&sinew_core::migrate::foreign_keys_sql(spec));
    if let Some(role) = &m.app_role {
        out.push_str(&sinew_core::migrate::grants(spec, role));
    }
    let _ = writeln!(out, "COMMIT;");
    let mut alone = m.runs().filter(|s| s.alone).peekable();
    if alone.peek().is_some() {
        let _ = writeln!(out, "\n-- after the transaction, each statement by itself:");
    }
    for s in alone {
        let _ = writeln!(out, "-- {} ({}): {}", s.table, s.risk.name(), s.change);
        for q in &s.sql {
            let _ = writeln!(out, "{q}");
        }
    }
    out
}

/// The migration of the database behind `client` to `spec`, as `sinew
/// migrate` plans it (`allow_destructive`: forced steps too). Without a
/// client, the plan for an empty database.
pub async fn plan(
    client: Option<&tokio_postgres::Client>,
    spec: &Spec,
    allow_destructive: bool,
) -> Result<Migration> {
    let mode = if allow_destructive {
        Mode::Forced
    } else {
        Mode::Migrate
    };
    plan_for(client, spec, mode).await
}

/// The key under which a migrated schema is recorded: the SHA-256 of the
/// spec's schema DDL (`sinew_core::migrate::plan`, so a change of the spec
/// or of sinew's own tables is a new entry).
pub fn plan_key(spec: &Spec) -> String {
    sinew_core::hash::sha256_hex(sinew_core::migrate::plan(spec).as_bytes())
}

/// Whether the database was migrated to `spec`'s schema before (by `sinew
/// migrate --apply` or an earlier `sinew serve`): one indexed read, where
/// planning reads the catalog. A change made to the tables by hand since is
/// not seen; `sinew migrate` always compares.
pub async fn recorded(client: &tokio_postgres::Client, spec: &Spec) -> bool {
    // The key is hex: nothing to quote. A missing table is an error: false.
    let query = format!(
        "SELECT 1 FROM sinew_schema WHERE plan = '{}'",
        plan_key(spec)
    );
    client.simple_query(&query).await.is_ok_and(|rows| {
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    })
}

/// Records that the database serves `spec` (see [`recorded`]).
pub async fn record(client: &tokio_postgres::Client, spec: &Spec) -> Result<()> {
    record_key(client, &plan_key(spec)).await
}

/// [`record`] by the schema's key.
async fn record_key(client: &tokio_postgres::Client, key: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO sinew_schema (plan) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&key],
        )
        .await
        .context("recording the migration")?;
    Ok(())
}

/// A migration refused: steps it needs that its mode does not apply, one
/// sentence each. Nothing was changed.
#[derive(Debug, Clone)]
pub struct Refused(pub Vec<String>);

/// The rows each step of `steps` would fail on (outside its new `CHECK`,
/// without a value for its new `NOT NULL` column: [`Plan::prechecks`]):
/// one sentence per step some row fails.
async fn rows_outside_checks(
    client: &tokio_postgres::Client,
    plan: &Plan,
    steps: &[&Step],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in &plan.prechecks {
        if !steps
            .iter()
            .any(|s| s.table == p.table && s.change == p.change)
        {
            continue;
        }
        let n: i64 = match client.query_one(&p.count, &[]).await {
            Ok(row) => row.get(0),
            // A table this very migration renames (its rows are under the
            // former name until then): not counted.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                continue;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("`{}`: {}", p.table, p.change)));
            }
        };
        if n > 0 {
            out.push(format!(
                "`{}`: {} — {n} row(s) {}",
                p.table, p.change, p.why
            ));
        }
    }
    Ok(out)
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the database does not match the spec, and migrating would lose data:\n  {}",
            self.0.join("\n  ")
        )
    }
}

impl std::error::Error for Refused {}

/// The advisory lock one migration at a time holds, across servers.
const LOCK: i64 = 7_596_835_991;

/// What [`apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The migration as planned under the lock (another server may have
    /// migrated since the caller planned).
    pub migration: Migration,
    /// Its id in `sinew_migrations` (`None`: nothing to do, not recorded).
    pub id: Option<i64>,
}

/// Applies the migration of the database to `spec` for `m.mode`: takes the
/// migration lock (waiting, without holding a transaction, while another
/// server migrates), plans again under it, runs the steps that belong in a
/// transaction together with sinew's own tables (retrying when a table is
/// busy past the lock timeout: nothing waits behind a migration for more
/// than 5 s), records the migration in `sinew_migrations`, then runs the
/// statements that must run alone (`CREATE INDEX CONCURRENTLY`, `VALIDATE
/// CONSTRAINT`) and marks it finished. Cut short after the transaction,
/// the next migration finishes what is left (it plans from the catalog).
/// Refuses (changing nothing) when a step the mode does not apply is one
/// the spec needs.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    spec: &Spec,
    m: &Migration,
) -> Result<Applied> {
    loop {
        let got = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK])
            .await?
            .get::<_, bool>(0);
        if got {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let result = apply_locked(client, spec, m).await;
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_locked(
    client: &mut tokio_postgres::Client,
    spec: &Spec,
    planned: &Migration,
) -> Result<Applied> {
    let mode = planned.mode;
    let mut m = plan_for(Some(client), spec, mode).await?;
    m.app_role.clone_from(&planned.app_role);
    m.bundle.clone_from(&planned.bundle);
    m.sql = sql_text(spec, &m);
    if !m.complete {
        return Err(Refused(m.destructive).into());
    }
    let key = plan_key(spec);
    let steps: Vec<&Step> = m.runs().collect();
    let steps_json = serde_json::to_string(&steps)?;
    // sinew's own tables are made or changed only when their DDL changed
    // since the last migration: it locks the audit log's tables, which
    // every request writes.
    let tables = sinew_core::hash::sha256_hex(sinew_core::migrate::SINEW_TABLES.as_bytes());
    let tables_current = client
        .query_one(
            "SELECT to_regclass('sinew_migrations') IS NOT NULL \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                           WHERE attrelid = to_regclass('sinew_migrations') AND attname = 'tables')",
            &[],
        )
        .await?
        .get::<_, bool>(0)
        && client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sinew_migrations WHERE \"tables\" = $1)",
                &[&tables],
            )
            .await?
            .get::<_, bool>(0);
    // Nothing to do (another server migrated first): nothing recorded but
    // the schema.
    if steps.is_empty() && tables_current && m.app_role.is_none() {
        record_key(client, &key).await?;
        return Ok(Applied {
            migration: m,
            id: None,
        });
    }
    // A CHECK added `NOT VALID` and validated after the transaction fails
    // there on rows it refuses, once the transaction has committed (the
    // narrowed CHECK in place, half the migration done): such rows are
    // looked for first, and the migration refused with nothing changed.
    let outside = rows_outside_checks(client, &m.plan, &steps).await?;
    if !outside.is_empty() {
        anyhow::bail!(
            "the migration failed; nothing was changed: {}",
            outside.join("; ")
        );
    }
    let mut attempt: u32 = 0;
    let id: i64 = loop {
        attempt += 1;
        let tx = client.transaction().await?;
        let ran = async {
            // A step waits at most 2 s for its lock (requests queue behind
            // a waiting ALTER): then the whole transaction is tried again.
            tx.batch_execute("SET LOCAL lock_timeout = '2s'").await?;
            if !tables_current {
                tx.batch_execute(sinew_core::migrate::SINEW_TABLES).await?;
            }
            for s in steps.iter().filter(|s| !s.alone) {
                for q in &s.sql {
                    tx.batch_execute(q)
                        .await
                        .with_context(|| format!("`{}`: {}", s.table, s.change))?;
                }
            }
            tx.batch_execute(&sinew_core::migrate::foreign_keys_sql(spec))
                .await?;
            if let Some(role) = &m.app_role {
                tx.batch_execute(&sinew_core::migrate::grants(spec, role))
                    .await
                    .context("granting the servers' role what serving needs")?;
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO sinew_migrations (spec, bundle, plan, steps, sql, \"by\", \"tables\") \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &spec.name,
                        &m.bundle,
                        &key,
                        &steps_json,
                        &m.sql,
                        &mode.name(),
                        &tables,
                    ],
                )
                .await?
                .get(0);
            anyhow::Ok(id)
        }
        .await;
        match ran {
            Ok(id) => {
                tx.commit().await?;
                break id;
            }
            Err(e) => {
                drop(tx);
                let code = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
                    .and_then(|e| e.code())
                    .cloned();
                let busy = code == Some(tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    || code == Some(tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED);
                if busy && attempt < 10 {
                    let pause = 100 * u64::from(attempt);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    continue;
                }
                return Err(e.context("the migration failed; nothing was changed"));
            }
        }
    };
    for s in steps.iter().filter(|s| s.alone) {
        for q in &s.sql {
            client.batch_execute(q).await.with_context(|| {
                format!(
                    "`{}`: {} failed (the migration is recorded as not finished; \
                     `sinew migrate --status` shows what is left)",
                    s.table, s.change
                )
            })?;
        }
    }
    client
        .execute(
            "UPDATE sinew_migrations SET finished_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    record_key(client, &key).await?;
    Ok(Applied {
        migration: m,
        id: Some(id),
    })
}

/// A migration `sinew_migrations` recorded.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// Its id, in the order run.
    pub id: i64,
    /// The spec's name.
    pub spec: String,
    /// The spec's bundle hash, when known.
    pub bundle: Option<String>,
    /// The schema's hash (as `sinew_schema` records it).
    pub plan: String,
    /// How many steps it ran.
    pub steps: usize,
    /// Who ran it (`serve`, `migrate`, `migrate --allow-destructive`).
    pub by: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished (`None`: cut short after its transaction).
    pub finished_at: Option<String>,
}

/// Where a database stands against the spec whose schema's key is `key`,
/// by its migrations (`history`, oldest first), as `sinew migrate --status`
/// says: `new` (none recorded), `at` (the last one was to this spec and
/// finished), `unfinished` (the last one was to this spec and was cut
/// short after its transaction), `ahead` (the last one went to another
/// spec, after one to this finished), `other`.
pub fn position(history: &[Recorded], key: &str) -> &'static str {
    match history.last() {
        None => "new",
        Some(h) if h.plan == key && h.finished_at.is_none() => "unfinished",
        Some(h) if h.plan == key => "at",
        Some(_)
            if history
                .iter()
                .any(|h| h.plan == key && h.finished_at.is_some()) =>
        {
            "ahead"
        }
        Some(_) => "other",
    }
}

/// Every migration recorded, oldest first (none when the table does not
/// exist yet).
pub async fn history(client: &tokio_postgres::Client) -> Result<Vec<Recorded>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('sinew_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "SELECT id, spec, bundle, plan, steps, \"by\", {}, {} \
                 FROM sinew_migrations ORDER BY id",
                super::rfc3339_sql("started_at", true),
                super::rfc3339_sql("finished_at", true)
            ),
            &[],
        )
        .await
        .context("reading sinew_migrations")?;
    Ok(rows
        .iter()
        .map(|r| {
            let steps: String = r.get(4);
            Recorded {
                id: r.get(0),
                spec: r.get(1),
                bundle: r.get(2),
                plan: r.get(3),
                steps: serde_json::from_str::<Vec<serde_json::Value>>(&steps)
                    .map_or(0, |v| v.len()),
                by: r.get(5),
                started_at: r.get(6),
                finished_at: r.get(7),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last migration decides, finished or not: one to this spec cut
    /// short is `unfinished`, never `ahead` of it because of an earlier
    /// finished one to another spec.
    #[test]
    fn the_position_is_the_last_migrations() {
        let m = |id, plan: &str, finished: bool| Recorded {
            id,
            spec: "s".into(),
            bundle: None,
            plan: plan.into(),
            steps: 1,
            by: "migrate".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: finished.then(|| "2026-01-01T00:00:01Z".into()),
        };
        assert_eq!(position(&[], "a"), "new");
        assert_eq!(position(&[m(1, "a", true)], "a"), "at");
        let cut = [m(1, "a", true), m(2, "b", true), m(3, "a", false)];
        assert_eq!(position(&cut, "a"), "unfinished");
        assert_eq!(position(&cut, "b"), "ahead");
        let later = [m(1, "a", true), m(2, "b", true)];
        assert_eq!(position(&later, "a"), "ahead");
        assert_eq!(position(&[m(1, "a", false)], "b"), "other");
        // A later migration to another spec cut short: ahead all the same.
        assert_eq!(position(&[m(1, "a", true), m(2, "b", false)], "a"), "ahead");
    }
}
