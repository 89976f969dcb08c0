//! `sinew migrate`: the DDL a database needs for a spec. Creating what is
//! missing is always safe and idempotent; a change to an existing table that
//! could lose data (a changed type, a new `NOT NULL`, dropping a column the
//! spec lacks that would make inserts fail) is refused unless the user
//! allows it. A column the spec lacks that inserts can leave out is kept
//! (see [`unknown_column`]).

use anyhow::{Context, Result};
use sinew_core::migrate::{columns, ident, table_name};
use sinew_core::spec::Spec;
use std::collections::HashMap;
use std::fmt::Write;

/// What migrating a database to a spec takes.
#[derive(Debug, Clone, Default)]
pub struct Migration {
    /// The SQL to run, in one transaction.
    pub sql: String,
    /// Changes that could lose data, one sentence each (their SQL is in
    /// `sql` only when they were allowed).
    pub destructive: Vec<String>,
    /// Whether the database already has everything (nothing to alter).
    pub changes: usize,
    /// Whether `sql` leaves the database matching the spec (no change that
    /// could lose data was left out).
    pub complete: bool,
    /// Columns the spec lacks that are kept as they are, one sentence each
    /// (see [`unknown_column`]).
    pub kept: Vec<String>,
}

struct Existing {
    ty: String,
    not_null: bool,
    /// Whether the database fills it in when an insert leaves it out (a
    /// default, an identity, a generated column).
    filled: bool,
}

/// The one rule for a column of an entity's table that the spec does not
/// have (a field removed from the spec, or a column added by hand), which
/// `sinew migrate` and `sinew serve` both apply, in the same words.
///
/// sinew never reads or writes such a column, and its inserts name their
/// columns, so rows can still be inserted when it is nullable or filled in
/// by the database (a default, an identity, a generated column): then it is
/// kept, with its data (`Ok`, a note). Dropping it is the owner's call:
/// another program may use it, and during a rolling deploy that removes a
/// field the servers of the previous spec still write it. A `NOT NULL`
/// column without a default would make every insert fail: that is refused
/// (`Err`), and only `--allow-destructive` drops it.
pub fn unknown_column(
    table: &str,
    column: &str,
    not_null: bool,
    filled: bool,
) -> Result<String, String> {
    if !not_null || filled {
        Ok(format!(
            "`{table}.{column}` is not in the spec: kept, with its data \
             (sinew neither reads nor writes it; new rows get its default or null)"
        ))
    } else {
        Err(format!(
            "`{table}.{column}` is not in the spec and is NOT NULL without a default: \
             every insert would fail (give it a default, drop its NOT NULL, \
             or drop the column with its data)"
        ))
    }
}

/// The refusals of [`unknown_column`] in the database behind `client`, in
/// one catalog query (no prepared statement): what a start whose schema is
/// [`recorded`] as migrated checks, so that a column added by hand since
/// is refused by `sinew serve` as by `sinew migrate`.
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

/// The migration of the database behind `client` to `spec`. Without a
/// client, the plan for an empty database.
pub async fn plan(
    client: Option<&tokio_postgres::Client>,
    spec: &Spec,
    allow_destructive: bool,
) -> Result<Migration> {
    let mut m = Migration {
        sql: sinew_core::migrate::plan(spec),
        ..Migration::default()
    };
    let Some(client) = client else {
        return Ok(m);
    };
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
             column_default IS NOT NULL OR is_identity = 'YES' OR is_generated = 'ALWAYS' \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .context("reading the database's tables")?;
    let mut tables: HashMap<String, Vec<(String, Existing)>> = HashMap::new();
    for r in &rows {
        let table: String = r.get(0);
        let nullable: String = r.get(3);
        tables.entry(table).or_default().push((
            r.get(1),
            Existing {
                ty: r.get(2),
                not_null: nullable == "NO",
                filled: r.get(4),
            },
        ));
    }
    let mut alters = String::new();
    for (name, e) in &spec.entities {
        let table = table_name(name);
        let Some(existing) = tables.get(&table) else {
            continue;
        };
        let t = ident(&table);
        let wanted = columns(e);
        for c in &wanted {
            let col = ident(&c.name);
            match existing.iter().find(|(n, _)| *n == c.name) {
                None => {
                    m.changes += 1;
                    let _ = writeln!(alters, "ALTER TABLE {t} ADD COLUMN {};", c.definition);
                }
                Some((_, have)) => {
                    if have.ty != c.sql_type {
                        m.changes += 1;
                        m.destructive.push(format!(
                            "`{table}.{}` would change type from {} to {}",
                            c.name, have.ty, c.sql_type
                        ));
                        if allow_destructive {
                            let _ = writeln!(
                                alters,
                                "ALTER TABLE {t} ALTER COLUMN {col} TYPE {ty} USING {col}::{ty};",
                                ty = c.sql_type
                            );
                        }
                    }
                    if c.not_null && !have.not_null {
                        m.changes += 1;
                        m.destructive.push(format!(
                            "`{table}.{}` would become NOT NULL (rows holding null would be refused)",
                            c.name
                        ));
                        if allow_destructive {
                            let _ = writeln!(
                                alters,
                                "ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL;"
                            );
                        }
                    } else if !c.not_null && have.not_null {
                        m.changes += 1;
                        let _ =
                            writeln!(alters, "ALTER TABLE {t} ALTER COLUMN {col} DROP NOT NULL;");
                    }
                }
            }
        }
        for (n, have) in existing {
            if wanted.iter().any(|c| c.name == *n) {
                continue;
            }
            match unknown_column(&table, n, have.not_null, have.filled) {
                Ok(note) => m.kept.push(note),
                Err(refusal) => {
                    m.changes += 1;
                    m.destructive.push(refusal);
                    if allow_destructive {
                        let _ = writeln!(alters, "ALTER TABLE {t} DROP COLUMN {};", ident(n));
                    }
                }
            }
        }
    }
    if !alters.is_empty() {
        let _ = write!(m.sql, "\n-- changes to existing tables\n{alters}");
    }
    m.complete = m.destructive.is_empty() || allow_destructive;
    Ok(m)
}

/// The table where applied migrations are recorded: the SHA-256 of the
/// spec's schema DDL (`sinew_core::migrate::plan`, so a change of the spec
/// or of sinew's own tables is a new entry).
fn plan_key(spec: &Spec) -> String {
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

/// Runs a migration's SQL in one transaction and, when it makes the
/// database match the spec, records that (see [`recorded`]).
pub async fn apply(client: &mut tokio_postgres::Client, spec: &Spec, m: &Migration) -> Result<()> {
    let tx = client.transaction().await?;
    // Two servers starting at once must not race on `CREATE … IF NOT EXISTS`.
    tx.batch_execute("SELECT pg_advisory_xact_lock(7596835991)")
        .await?;
    tx.batch_execute(&m.sql)
        .await
        .context("the migration failed; nothing was changed")?;
    if m.complete {
        tx.batch_execute(&format!(
            "INSERT INTO sinew_schema (plan) VALUES ('{}') ON CONFLICT DO NOTHING",
            plan_key(spec)
        ))
        .await
        .context("recording the migration")?;
    }
    tx.commit().await?;
    Ok(())
}
