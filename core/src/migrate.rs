//! Schema planning: the Postgres DDL a spec needs, as plain SQL the user
//! owns. One table per entity (implicit columns, typed fields with their
//! constraints as `CHECK`s, a `CHECK` of the status machine's states),
//! indexes on refs, owner and unique fields, and the `sinew_*` tables: the
//! append-only audit log (protected by triggers), idempotency keys and rate
//! counters. Every statement is idempotent (`IF NOT EXISTS`, `OR REPLACE`),
//! so applying the plan twice is a no-op.
//!
//! ```
//! let loaded = sinew_core::spec::load(r#"{"sinew": "0.1", "name": "n", "tools": {},
//!   "entities": {"Note": {"fields": {"text": {"type": "string", "maxLength": 200}}}}}"#);
//! let sql = sinew_core::migrate::plan(&loaded.spec);
//! assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "note""#));
//! ```

use serde_json::Value;
use std::fmt::Write;

use crate::model::{Entity, Field, FieldType, Spec};

pub mod evolve;

pub use crate::model::table_name;

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The Postgres type of a field type.
pub fn sql_type(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "text",
        FieldType::Integer => "bigint",
        FieldType::Boolean => "boolean",
        FieldType::Number => "double precision",
        FieldType::Timestamp => "timestamptz",
        FieldType::Uuid | FieldType::Ref => "uuid",
        FieldType::Json => "jsonb",
    }
}

/// A JSON value as a SQL constant of a field's type.
fn constant(ty: FieldType, v: &Value) -> String {
    match (ty, v) {
        (_, Value::Null) => "NULL".to_string(),
        (FieldType::Json, v) => format!("{}::jsonb", literal(&v.to_string())),
        (_, Value::String(s)) => literal(s),
        (_, Value::Bool(b)) => b.to_string(),
        (_, Value::Number(n)) => n.to_string(),
        (_, other) => format!("{}::jsonb", literal(&other.to_string())),
    }
}

fn column(name: &str, f: &Field) -> (String, Option<Rule>) {
    let col = ident(name);
    let mut def = format!("{col} {}", sql_type(f.ty));
    if !f.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &f.default {
        let _ = write!(def, " DEFAULT {}", constant(f.ty, d));
    }
    (def, Rule::of_field(f))
}

/// What a column's `CHECK` allows: the field's `minimum`, `maximum`,
/// `maxLength` and `enum` (a status column: its states). It is written in
/// the constraint's comment (`sinew {json}`), so that a migration knows
/// what an existing `CHECK` allows and whether the spec's widens it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Smallest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<serde_json::Number>,
    /// Largest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<serde_json::Number>,
    /// Longest string, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// The values allowed.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
}

impl Rule {
    /// A field's rule; `None` when it has no constraint.
    pub fn of_field(f: &Field) -> Option<Rule> {
        let r = Rule {
            minimum: f.minimum.clone(),
            maximum: f.maximum.clone(),
            max_length: f.max_length,
            one_of: f.enum_values.clone(),
        };
        (r != Rule::default()).then_some(r)
    }

    /// A status machine's rule: its states.
    pub fn of_states(sm: &crate::model::StatusMachine) -> Rule {
        Rule {
            one_of: Some(sm.states().iter().map(|s| Value::from(*s)).collect()),
            ..Rule::default()
        }
    }

    /// The constraint's comment.
    pub fn comment(&self) -> String {
        format!("sinew {}", serde_json::to_string(self).unwrap_or_default())
    }

    /// The rule a constraint's comment names (`None`: not one sinew wrote).
    pub fn from_comment(comment: &str) -> Option<Rule> {
        serde_json::from_str(comment.strip_prefix("sinew ")?).ok()
    }

    /// The `CHECK` expression over column `col` of type `ty`.
    pub fn sql(&self, col: &str, ty: FieldType) -> String {
        self.sql_of(&ident(col), ty)
    }

    /// The `CHECK` expression over the SQL expression `col` (a column, or
    /// a column cast to the type `ty` it is changed to).
    pub fn sql_of(&self, col: &str, ty: FieldType) -> String {
        let mut parts = Vec::new();
        if let Some(min) = &self.minimum {
            parts.push(format!("{col} >= {min}"));
        }
        if let Some(max) = &self.maximum {
            parts.push(format!("{col} <= {max}"));
        }
        if let Some(n) = self.max_length {
            parts.push(format!("char_length({col}) <= {n}"));
        }
        if let Some(values) = &self.one_of {
            let list: Vec<String> = values.iter().map(|v| constant(ty, v)).collect();
            parts.push(format!("{col} IN ({})", list.join(", ")));
        }
        parts.join(" AND ")
    }

    /// Whether every value `old` allows, this allows too (the change from
    /// `old` to `self` widens or keeps the constraint).
    pub fn allows_all(&self, old: &Rule) -> bool {
        fn num(n: &serde_json::Number) -> f64 {
            n.as_f64().unwrap_or(f64::NAN)
        }
        let min = match (&self.minimum, &old.minimum) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(new), Some(old)) => num(new) <= num(old),
        };
        let max = match (&self.maximum, &old.maximum) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(new), Some(old)) => num(new) >= num(old),
        };
        let len = match (self.max_length, old.max_length) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(new), Some(old)) => new >= old,
        };
        let same = |x: &Value, y: &Value| match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p == q,
            _ => x == y,
        };
        let values = match (&self.one_of, &old.one_of) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(new), Some(old)) => old.iter().all(|v| new.iter().any(|w| same(v, w))),
        };
        min && max && len && values
    }
}

/// The name of a column's `CHECK`: `{table}_{column}_check`, shortened
/// as [`index_name`] shortens.
pub fn check_name(table: &str, column: &str) -> String {
    fitted(table, &[column.to_owned()], "check")
}

/// The statements that give column `col` of `table` its rule: the
/// constraint and its comment.
pub(crate) fn check_ddl(
    table: &str,
    col: &str,
    ty: FieldType,
    rule: &Rule,
    not_valid: bool,
) -> [String; 2] {
    let name = ident(&check_name(table, col));
    let t = ident(table);
    [
        format!(
            "ALTER TABLE {t} ADD CONSTRAINT {name} CHECK ({}){};",
            rule.sql(col, ty),
            if not_valid { " NOT VALID" } else { "" }
        ),
        format!(
            "COMMENT ON CONSTRAINT {name} ON {t} IS {};",
            literal(&rule.comment())
        ),
    ]
}

fn entity_ddl(out: &mut String, name: &str, e: &Entity) {
    let table = table_name(name);
    let t = ident(&table);
    let _ = writeln!(out, "-- {name}");
    let mut lines = vec![
        "\"id\" uuid PRIMARY KEY".to_string(),
        "\"version\" bigint NOT NULL CHECK (\"version\" >= 1)".to_string(),
        "\"created_at\" timestamptz NOT NULL".to_string(),
        "\"updated_at\" timestamptz NOT NULL".to_string(),
        "\"deleted_at\" timestamptz".to_string(),
    ];
    let mut rules = Vec::new();
    if let Some(sm) = &e.status {
        lines.push(format!(
            "\"status\" text NOT NULL DEFAULT {}",
            literal(&sm.initial)
        ));
        rules.push(("status", FieldType::String, Rule::of_states(sm)));
    }
    for (fname, f) in &e.fields {
        let (def, rule) = column(fname, f);
        lines.push(def);
        if let Some(rule) = rule {
            rules.push((fname, f.ty, rule));
        }
    }
    for (col, ty, rule) in &rules {
        lines.push(format!(
            "CONSTRAINT {} CHECK ({})",
            ident(&check_name(&table, col)),
            rule.sql(col, *ty)
        ));
    }
    let _ = writeln!(
        out,
        "CREATE TABLE IF NOT EXISTS {t} (\n  {}\n);",
        lines.join(",\n  ")
    );
    for (col, _, rule) in &rules {
        let _ = writeln!(
            out,
            "COMMENT ON CONSTRAINT {} ON {t} IS {};",
            ident(&check_name(&table, col)),
            literal(&rule.comment())
        );
    }
    for ix in wanted_indexes(&table, e) {
        let _ = writeln!(out, "{}", ix.create(&table, false));
    }
    out.push('\n');
}

use crate::model::fitted;
pub use crate::model::{IndexPlan, index_name, wanted_indexes};

impl IndexPlan {
    /// `CREATE [UNIQUE] INDEX [CONCURRENTLY] IF NOT EXISTS …`.
    pub fn create(&self, table: &str, concurrently: bool) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
        format!(
            "CREATE {}INDEX {}IF NOT EXISTS {} ON {} ({}){};",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            ident(&self.name),
            ident(table),
            cols.join(", "),
            if self.unique {
                " WHERE \"deleted_at\" IS NULL"
            } else {
                ""
            }
        )
    }
}

/// A column an entity's table has.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    /// The column's name.
    pub name: String,
    /// Its Postgres type, as `information_schema.columns.data_type` names it.
    pub sql_type: &'static str,
    /// Whether it is `NOT NULL`.
    pub not_null: bool,
    /// Its definition for `ALTER TABLE … ADD COLUMN` (its `CHECK` apart).
    pub definition: String,
    /// Whether the database fills it in when an insert leaves it out (it
    /// has a default).
    pub filled: bool,
    /// What its `CHECK` allows.
    pub rule: Option<Rule>,
    /// The field type its `CHECK` is written for.
    pub ty: FieldType,
    /// The name it had before (`renamedFrom`).
    pub renamed_from: Option<String>,
    /// Its default, as SQL.
    pub default_sql: Option<String>,
}

impl ColumnPlan {
    /// Its type for DDL (`timestamptz` where the catalog says `timestamp
    /// with time zone`).
    pub fn sql_type_ddl(&self) -> &'static str {
        sql_type(self.ty)
    }
}

/// Every column of an entity's table, in table order.
pub fn columns(e: &Entity) -> Vec<ColumnPlan> {
    let fixed = |name: &str, ty: &'static str, not_null: bool| ColumnPlan {
        name: name.to_owned(),
        sql_type: ty,
        not_null,
        definition: format!(
            "{} {ty}{}",
            ident(name),
            if not_null { " NOT NULL" } else { "" }
        ),
        filled: false,
        rule: None,
        ty: FieldType::Json,
        renamed_from: None,
        default_sql: None,
    };
    let mut out = vec![
        fixed("id", "uuid", true),
        fixed("version", "bigint", true),
        fixed("created_at", "timestamp with time zone", true),
        fixed("updated_at", "timestamp with time zone", true),
        fixed("deleted_at", "timestamp with time zone", false),
    ];
    if let Some(sm) = &e.status {
        out.push(ColumnPlan {
            name: "status".into(),
            sql_type: "text",
            not_null: true,
            definition: format!("\"status\" text NOT NULL DEFAULT {}", literal(&sm.initial)),
            filled: true,
            rule: Some(Rule::of_states(sm)),
            ty: FieldType::String,
            renamed_from: None,
            default_sql: Some(literal(&sm.initial)),
        });
    }
    for (name, f) in &e.fields {
        let (def, rule) = column(name, f);
        out.push(ColumnPlan {
            name: name.clone(),
            sql_type: match f.ty {
                FieldType::Timestamp => "timestamp with time zone",
                t => sql_type(t),
            },
            not_null: !f.nullable,
            definition: def,
            filled: f.default.is_some(),
            rule,
            ty: f.ty,
            renamed_from: f.renamed_from.clone(),
            default_sql: f.default.as_ref().map(|d| constant(f.ty, d)),
        });
    }
    out
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

/// The DDL of `sinew_keys`, in [`SINEW_TABLES`] and [`KEYS_TABLE`].
macro_rules! keys_table {
    () => {
        r#"-- sinew: API keys for machine callers (`sinew keys`): the SHA-256 of the
-- key (never the key), the roles and claims a call with it has, an
-- optional expiry; revoked keys are kept (the audit log names their ids).
CREATE TABLE IF NOT EXISTS "sinew_keys" (
  "id" text PRIMARY KEY,
  "hash" text NOT NULL UNIQUE,
  "name" text NOT NULL,
  "roles" text[] NOT NULL,
  "claims" text NOT NULL DEFAULT '{}',
  "created_at" timestamptz NOT NULL DEFAULT now(),
  "expires_at" timestamptz,
  "revoked_at" timestamptz
);
"#
    };
}

/// The table of API keys alone: `sinew keys` creates it when no
/// migration has yet.
pub const KEYS_TABLE: &str = keys_table!();

/// The tables every sinew database has.
pub const SINEW_TABLES: &str = concat!(
    r#"-- sinew: the audit log, append-only (A3): the database refuses updates,
-- deletes and truncation; each entry carries the hash of the previous one (A4).
-- `entry` is the exact canonical JSON text that `hash` is the SHA-256 of
-- (query it as `entry::jsonb`). Entries are placed here by the sequencer
-- (`queued_at`: when the request's transaction queued it).
CREATE TABLE IF NOT EXISTS "sinew_audit" (
  "seq" bigint PRIMARY KEY,
  "execution" text NOT NULL,
  "kind" text NOT NULL,
  "entry" text NOT NULL,
  "prev" text NOT NULL,
  "hash" text NOT NULL,
  "recorded_at" timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE "sinew_audit" ADD COLUMN IF NOT EXISTS "queued_at" timestamptz;
CREATE INDEX IF NOT EXISTS "sinew_audit_execution_idx" ON "sinew_audit" ("execution");
-- No index on `hash` (earlier versions had a unique one): nothing looks an
-- entry up by it, and a random 64-character key made every append write
-- to a random page of a large index.
ALTER TABLE "sinew_audit" DROP CONSTRAINT IF EXISTS "sinew_audit_hash_key";
CREATE OR REPLACE FUNCTION "sinew_audit_append_only"() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE OR REPLACE TRIGGER "sinew_audit_no_update_delete"
  BEFORE UPDATE OR DELETE ON "sinew_audit"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: audit entries not yet in the chain. A request's transaction
-- queues its entries here (with the SHA-256 of `entry`, `digest`), without
-- a lock; the sequencer (one at a time across instances) moves them into
-- `sinew_audit` in `id` order, in batches, shortly after they commit. The
-- database refuses updates and truncation; a row leaves only by the
-- sequencer's move, which deletes it in the transaction that chains it.
CREATE TABLE IF NOT EXISTS "sinew_audit_queue" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "execution" text NOT NULL,
  "kind" text NOT NULL,
  "entry" text NOT NULL,
  "digest" text NOT NULL,
  "queued_at" timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Entries are compressed with lz4 where the server has it, in the chain
-- and in the queue: a `transfer`'s entry then stays in its row (no TOAST
-- row to write and delete) and a read's, which holds the rows it read,
-- writes a fraction of the log. Without lz4 the queue stores entries as
-- written (pglz would cost more CPU than the bytes save).
ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET STORAGE EXTERNAL;
DO $$ BEGIN
  ALTER TABLE "sinew_audit" ALTER COLUMN "entry" SET COMPRESSION lz4;
  ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET COMPRESSION lz4;
  ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET STORAGE EXTENDED;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL;
END $$;
CREATE OR REPLACE TRIGGER "sinew_audit_queue_no_update"
  BEFORE UPDATE ON "sinew_audit_queue"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_queue_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit_queue"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: signed checkpoints of the audit chain's head (Ed25519), append-only:
-- `sinew audit verify --checkpoint FILE` checks the chain still holds one.
CREATE TABLE IF NOT EXISTS "sinew_audit_checkpoint" (
  "seq" bigint NOT NULL,
  "hash" text NOT NULL,
  "key" text NOT NULL,
  "signed_at" timestamptz NOT NULL,
  "checkpoint" text NOT NULL,
  PRIMARY KEY ("seq", "key")
);
CREATE OR REPLACE TRIGGER "sinew_audit_checkpoint_no_update_delete"
  BEFORE UPDATE OR DELETE ON "sinew_audit_checkpoint"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_checkpoint_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit_checkpoint"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: idempotency keys (kept 24 hours).
CREATE TABLE IF NOT EXISTS "sinew_idempotency" (
  "scope" text NOT NULL,
  "key" text NOT NULL,
  "fingerprint" text NOT NULL,
  "claimed_at" timestamptz NOT NULL,
  "status" integer,
  "body" text,
  PRIMARY KEY ("scope", "key")
);

-- sinew: each cron tool's schedule and when it was first seen (a missed
-- time is caught up only if it is later).
CREATE TABLE IF NOT EXISTS "sinew_schedule" (
  "tool" text PRIMARY KEY,
  "schedule" text NOT NULL,
  "timezone" text NOT NULL,
  "first_seen" timestamptz NOT NULL
);

-- sinew: the outbox: messages `emit` recorded with a transaction's
-- writes, delivered by `sinew serve` after the commit. The deliverer
-- locks a message's row while it sends it; a delivered message's row is
-- deleted (its delivery is audited). No key: the row is the message, the
-- one index finds what is due.
CREATE TABLE IF NOT EXISTS "sinew_messages" (
  "message" text NOT NULL,
  "attempts" integer NOT NULL DEFAULT 0,
  "next_attempt_at" timestamptz NOT NULL DEFAULT now(),
  "failed_at" timestamptz,
  "last_error" text
);
CREATE INDEX IF NOT EXISTS "sinew_messages_due_idx" ON "sinew_messages" ("next_attempt_at")
  WHERE "failed_at" IS NULL;

-- sinew: the outbox of sinew before `sinew_messages` (a wider row, a key,
-- a claim and a delivery written to it). Kept for servers of that version
-- during a rolling deploy: what they record is forwarded to
-- `sinew_messages` (and delivered by this version), and what they left is
-- moved there.
CREATE TABLE IF NOT EXISTS "sinew_outbox" (
  "seq" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "id" uuid NOT NULL,
  "execution" text NOT NULL,
  "tool" text NOT NULL,
  "node" text NOT NULL,
  "service" text NOT NULL,
  "operation" text NOT NULL,
  "message" text NOT NULL,
  "created_at" timestamptz NOT NULL DEFAULT now(),
  "attempts" integer NOT NULL DEFAULT 0,
  "next_attempt_at" timestamptz NOT NULL DEFAULT now(),
  "claimed_until" timestamptz,
  "delivered_at" timestamptz,
  "failed_at" timestamptz,
  "last_error" text
);
CREATE OR REPLACE FUNCTION "sinew_outbox_forward"() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "sinew_messages" ("message") VALUES (NEW."message");
  RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER "sinew_outbox_forward" BEFORE INSERT ON "sinew_outbox"
  FOR EACH ROW EXECUTE FUNCTION "sinew_outbox_forward"();
WITH "left" AS (DELETE FROM "sinew_outbox" RETURNING *)
INSERT INTO "sinew_messages" ("message", "attempts", "next_attempt_at", "failed_at", "last_error")
  SELECT "message", "attempts", "next_attempt_at", "failed_at", "last_error" FROM "left"
  WHERE "delivered_at" IS NULL ORDER BY "seq";

-- sinew: every spec served, by the hash its audit entries name (`bundle`):
-- the spec's text as served, what `sinew audit replay` runs them on.
CREATE TABLE IF NOT EXISTS "sinew_bundle" (
  "hash" text PRIMARY KEY,
  "spec" text NOT NULL,
  "served_at" timestamptz NOT NULL DEFAULT now()
);

-- sinew: the schemas migrated to (the hash of each plan applied).
CREATE TABLE IF NOT EXISTS "sinew_schema" (
  "plan" text PRIMARY KEY,
  "applied_at" timestamptz NOT NULL DEFAULT now()
);

-- sinew: every migration run (`sinew migrate --status`): the spec (its
-- name and bundle hash), the schema's hash (`plan`, as in `sinew_schema`),
-- the steps and SQL it ran, the hash of sinew's own tables' DDL (`tables`:
-- a migration runs that DDL only when it changed), when it started and
-- finished (null: cut short after its transaction; the next migration
-- finishes what is left).
CREATE TABLE IF NOT EXISTS "sinew_migrations" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "spec" text NOT NULL,
  "bundle" text,
  "plan" text NOT NULL,
  "steps" text NOT NULL,
  "sql" text NOT NULL,
  "by" text NOT NULL,
  "tables" text,
  "started_at" timestamptz NOT NULL DEFAULT now(),
  "finished_at" timestamptz
);

-- sinew: review items, one per `escalate` policy a call raised: recorded
-- by the sequencer in the transaction that chains the call's audit entry
-- (`seq`), open until a caller with a role of the spec's `reviews`
-- resolves it (`POST /reviews/{id}/resolve`, audited as a `review` entry).
CREATE TABLE IF NOT EXISTS "sinew_reviews" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "seq" bigint NOT NULL,
  "policy" text NOT NULL,
  "execution" text NOT NULL,
  "tool" text NOT NULL,
  "subject" text,
  "raised_at" timestamptz NOT NULL,
  "resolved_at" timestamptz,
  "resolved_by" text,
  "note" text,
  UNIQUE ("seq", "policy")
);
CREATE INDEX IF NOT EXISTS "sinew_reviews_open_idx" ON "sinew_reviews" ("id")
  WHERE "resolved_at" IS NULL;

"#,
    keys_table!(),
    r#"
-- sinew: rate-limit counters, one row per scope and minute.
CREATE TABLE IF NOT EXISTS "sinew_rate" (
  "scope" text NOT NULL,
  "window_start" timestamptz NOT NULL,
  "hits" bigint NOT NULL,
  PRIMARY KEY ("scope", "window_start")
);
"#
);

/// What the role the servers connect as (`role`) needs, when another role
/// owns the tables (`sinew migrate --app-role`): it reads and writes the
/// entities and sinew's working tables, queues audit entries and moves
/// them into the chain, and may only read and append the chain and its
/// checkpoints. Without `UPDATE`, `DELETE` and `TRUNCATE` there, and
/// without owning the tables (so unable to disable their triggers or
/// grant itself more), a server cannot change what was audited.
pub fn grants(spec: &Spec, role: &str) -> String {
    let role = ident(role);
    let mut working: Vec<String> = spec
        .entities
        .keys()
        .map(|n| ident(&table_name(n)))
        .collect();
    working.extend(
        [
            "sinew_idempotency",
            "sinew_rate",
            "sinew_schedule",
            "sinew_messages",
            "sinew_outbox",
            "sinew_reviews",
        ]
        .iter()
        .map(|t| ident(t)),
    );
    let mut out = String::new();
    let _ = writeln!(out, "-- the servers' role: {role}");
    let _ = writeln!(out, "GRANT USAGE ON SCHEMA public TO {role};");
    let _ = writeln!(
        out,
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role};",
        working.join(", ")
    );
    let _ = writeln!(
        out,
        "GRANT SELECT, INSERT, DELETE ON \"sinew_audit_queue\" TO {role};"
    );
    let _ = writeln!(
        out,
        "GRANT SELECT, INSERT ON \"sinew_audit\", \"sinew_audit_checkpoint\", \"sinew_schema\", \"sinew_bundle\" TO {role};"
    );
    let _ = writeln!(
        out,
        "GRANT SELECT ON \"sinew_migrations\", \"sinew_keys\" TO {role};"
    );
    // The views renames leave, for servers of the previous spec (when
    // there is one).
    for e in spec.entities.values() {
        if let Some(old) = &e.renamed_from {
            let view = table_name(old);
            let _ = writeln!(
                out,
                "DO $$ BEGIN\n  IF to_regclass({}) IS NOT NULL THEN\n    GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role};\n  END IF;\nEND $$;",
                literal(&ident(&view)),
                ident(&view)
            );
        }
    }
    let _ = writeln!(
        out,
        "REVOKE UPDATE, DELETE, TRUNCATE ON \"sinew_audit\", \"sinew_audit_checkpoint\" FROM {role};"
    );
    out
}

/// The whole schema of a spec for an empty database, as plain SQL.
pub fn plan(spec: &Spec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "-- sinew schema for spec {}", literal(&spec.name));
    let _ = writeln!(
        out,
        "-- Every statement is idempotent: applying this twice changes nothing.\n"
    );
    for (name, e) in &spec.entities {
        entity_ddl(&mut out, name, e);
    }
    foreign_keys(&mut out, spec);
    out.push_str(SINEW_TABLES);
    out
}

/// The `FOREIGN KEY`s of a spec's `ref` fields, each added when missing
/// (see [`plan`]): what a migration runs once every table exists.
pub fn foreign_keys_sql(spec: &Spec) -> String {
    let mut out = String::new();
    foreign_keys(&mut out, spec);
    out
}

/// A `FOREIGN KEY` for each `ref` field, once every table exists. Rows
/// are soft-deleted, never removed, so a key is never in the way of
/// sinew's own writes; it guards the table against other writers. It is
/// added `NOT VALID`: rows written before it are not checked (a 0.1
/// database may hold dangling references), every row written after is.
fn foreign_keys(out: &mut String, spec: &Spec) {
    let mut any = false;
    for (name, e) in &spec.entities {
        let table = table_name(name);
        for (fname, f) in &e.fields {
            let (FieldType::Ref, Some(target)) = (f.ty, &f.entity) else {
                continue;
            };
            if !spec.entities.contains_key(target) {
                continue;
            }
            if !any {
                let _ = writeln!(out, "-- references");
                any = true;
            }
            let _ = writeln!(out, "{}", foreign_key_ddl(&table, fname, target));
        }
    }
    if any {
        out.push('\n');
    }
}

/// The statement adding the foreign key of `ref` field `field` of `table`
/// to entity `target`'s table, when the column has none (under any name:
/// a renamed table keeps its key under the former name; `NOT VALID`: rows
/// already there are not checked).
pub fn foreign_key_ddl(table: &str, field: &str, target: &str) -> String {
    let key = foreign_key_name(table, field);
    let t = literal(&ident(table));
    format!(
        "DO $$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {t}::regclass AND contype = 'f' AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = {t}::regclass AND attname = {})]::int2[]) THEN\n    ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (\"id\") NOT VALID;\n  END IF;\nEND $$;",
        literal(field),
        ident(table),
        ident(&key),
        ident(field),
        ident(&table_name(target)),
    )
}

/// The name of a `ref` field's foreign key: `{table}_{field}_fkey`,
/// shortened as [`index_name`] shortens.
pub fn foreign_key_name(table: &str, field: &str) -> String {
    fitted(table, &[field.to_owned()], "fkey")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals() {
        assert_eq!(table_name("Product"), "product");
        assert_eq!(table_name("OrderItem"), "order_item");
        assert_eq!(table_name("HTTPLog2Entry"), "httplog2_entry");
        assert_eq!(table_name("already_snake"), "already_snake");
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
