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

/// The table of an entity: its name in snake case (`OrderItem` →
/// `order_item`).
pub fn table_name(entity: &str) -> String {
    let mut out = String::with_capacity(entity.len() + 4);
    let mut prev_lower = false;
    for c in entity.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

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
fn constant(f: &Field, v: &Value) -> String {
    match (f.ty, v) {
        (_, Value::Null) => "NULL".to_string(),
        (FieldType::Json, v) => format!("{}::jsonb", literal(&v.to_string())),
        (_, Value::String(s)) => literal(s),
        (_, Value::Bool(b)) => b.to_string(),
        (_, Value::Number(n)) => n.to_string(),
        (_, other) => format!("{}::jsonb", literal(&other.to_string())),
    }
}

fn column(name: &str, f: &Field) -> (String, Vec<String>) {
    let col = ident(name);
    let mut def = format!("{col} {}", sql_type(f.ty));
    if !f.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &f.default {
        let _ = write!(def, " DEFAULT {}", constant(f, d));
    }
    let mut checks = Vec::new();
    if let Some(min) = &f.minimum {
        checks.push(format!("{col} >= {min}"));
    }
    if let Some(max) = &f.maximum {
        checks.push(format!("{col} <= {max}"));
    }
    if let Some(n) = f.max_length {
        checks.push(format!("char_length({col}) <= {n}"));
    }
    if let Some(values) = &f.enum_values {
        let list: Vec<String> = values.iter().map(|v| constant(f, v)).collect();
        checks.push(format!("{col} IN ({})", list.join(", ")));
    }
    (def, checks)
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
    if let Some(sm) = &e.status {
        let states: Vec<String> = sm.states().iter().map(|s| literal(s)).collect();
        lines.push(format!(
            "\"status\" text NOT NULL DEFAULT {} CHECK (\"status\" IN ({}))",
            literal(&sm.initial),
            states.join(", ")
        ));
    }
    let mut checks = Vec::new();
    for (fname, f) in &e.fields {
        let (def, c) = column(fname, f);
        lines.push(def);
        checks.extend(c);
    }
    for c in checks {
        lines.push(format!("CHECK ({c})"));
    }
    let _ = writeln!(
        out,
        "CREATE TABLE IF NOT EXISTS {t} (\n  {}\n);",
        lines.join(",\n  ")
    );
    for (fname, f) in &e.fields {
        let col = ident(fname);
        if f.unique {
            let idx = ident(&format!("{table}_{fname}_key"));
            let _ = writeln!(
                out,
                "CREATE UNIQUE INDEX IF NOT EXISTS {idx} ON {t} ({col}) WHERE \"deleted_at\" IS NULL;"
            );
        } else if f.ty == FieldType::Ref || e.owner.as_ref().is_some_and(|o| o.field == *fname) {
            let idx = ident(&format!("{table}_{fname}_idx"));
            let _ = writeln!(out, "CREATE INDEX IF NOT EXISTS {idx} ON {t} ({col});");
        }
    }
    for ix in &e.indexes {
        let idx = ident(&index_name(&table, &ix.fields, ix.unique));
        let cols: Vec<String> = ix.fields.iter().map(|f| ident(f)).collect();
        let cols = cols.join(", ");
        if ix.unique {
            let _ = writeln!(
                out,
                "CREATE UNIQUE INDEX IF NOT EXISTS {idx} ON {t} ({cols}) WHERE \"deleted_at\" IS NULL;"
            );
        } else {
            let _ = writeln!(out, "CREATE INDEX IF NOT EXISTS {idx} ON {t} ({cols});");
        }
    }
    out.push('\n');
}

/// The name of a declared index: `{table}_{fields}_key` (unique) or
/// `_idx`, shortened with a hash of the whole name where Postgres would cut
/// it (63 bytes), so two indexes never share a name.
pub fn index_name(table: &str, fields: &[String], unique: bool) -> String {
    fitted(table, fields, if unique { "key" } else { "idx" })
}

/// `{table}_{fields}_{suffix}`, shortened with a hash of the whole name
/// where Postgres would cut it.
fn fitted(table: &str, fields: &[String], suffix: &str) -> String {
    let name = format!("{table}_{}_{suffix}", fields.join("_"));
    if name.len() <= 63 {
        return name;
    }
    let hash = &crate::hash::sha256_hex(name.as_bytes())[..8];
    let mut cut = 50;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}_{suffix}", &name[..cut])
}

/// A column an entity's table has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// The column's name.
    pub name: String,
    /// Its Postgres type, as `information_schema.columns.data_type` names it.
    pub sql_type: &'static str,
    /// Whether it is `NOT NULL`.
    pub not_null: bool,
    /// Its definition for `ALTER TABLE … ADD COLUMN`, constraints inline.
    pub definition: String,
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
    };
    let mut out = vec![
        fixed("id", "uuid", true),
        fixed("version", "bigint", true),
        fixed("created_at", "timestamp with time zone", true),
        fixed("updated_at", "timestamp with time zone", true),
        fixed("deleted_at", "timestamp with time zone", false),
    ];
    if let Some(sm) = &e.status {
        let states: Vec<String> = sm.states().iter().map(|s| literal(s)).collect();
        out.push(ColumnPlan {
            name: "status".into(),
            sql_type: "text",
            not_null: true,
            definition: format!(
                "\"status\" text NOT NULL DEFAULT {} CHECK (\"status\" IN ({}))",
                literal(&sm.initial),
                states.join(", ")
            ),
        });
    }
    for (name, f) in &e.fields {
        let (mut def, checks) = column(name, f);
        for c in checks {
            let _ = write!(def, " CHECK ({c})");
        }
        out.push(ColumnPlan {
            name: name.clone(),
            sql_type: match f.ty {
                FieldType::Timestamp => "timestamp with time zone",
                t => sql_type(t),
            },
            not_null: !f.nullable,
            definition: def,
        });
    }
    out
}

/// The tables every sinew database has.
pub const SINEW_TABLES: &str = r#"-- sinew: the audit log, append-only (A3): the database refuses updates,
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
  "hash" text NOT NULL UNIQUE,
  "recorded_at" timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE "sinew_audit" ADD COLUMN IF NOT EXISTS "queued_at" timestamptz;
CREATE INDEX IF NOT EXISTS "sinew_audit_execution_idx" ON "sinew_audit" ("execution");
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
-- An entry lives in the queue for milliseconds: stored as written, not
-- compressed (pglz would cost more CPU than the bytes save); the chain
-- compresses its entries with lz4 where the server has it.
ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET STORAGE EXTERNAL;
DO $$ BEGIN
  ALTER TABLE "sinew_audit" ALTER COLUMN "entry" SET COMPRESSION lz4;
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
-- writes, delivered by `sinew serve` after the commit (one instance at a
-- time holds a message's claim until `claimed_until`).
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
CREATE INDEX IF NOT EXISTS "sinew_outbox_due_idx" ON "sinew_outbox" ("next_attempt_at")
  WHERE "delivered_at" IS NULL AND "failed_at" IS NULL;

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

-- sinew: rate-limit counters, one row per scope and minute.
CREATE TABLE IF NOT EXISTS "sinew_rate" (
  "scope" text NOT NULL,
  "window_start" timestamptz NOT NULL,
  "hits" bigint NOT NULL,
  PRIMARY KEY ("scope", "window_start")
);
"#;

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
            "sinew_outbox",
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
            let key = foreign_key_name(&table, fname);
            let _ = writeln!(
                out,
                "DO $$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {} AND conrelid = {}::regclass) THEN\n    ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (\"id\") NOT VALID;\n  END IF;\nEND $$;",
                literal(&key),
                literal(&ident(&table)),
                ident(&table),
                ident(&key),
                ident(fname),
                ident(&table_name(target)),
            );
        }
    }
    if any {
        out.push('\n');
    }
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
