//! How a schema evolves to a spec's: the steps from what a database has
//! (read from its catalog by the host, or written from an older spec by
//! `sinew diff`) to what a spec needs, each with its risk, the lock it
//! takes, and whether the spec can run without it.
//!
//! The plan is computed from what exists, never from a record of what was
//! done, so a migration cut short half-way is finished by the next one:
//! an index left invalid by a killed `CREATE INDEX CONCURRENTLY` is made
//! again, a `CHECK` left `NOT VALID` is validated, and nothing is applied
//! twice.
//!
//! ```
//! use sinew_core::migrate::evolve::{Schema, plan};
//! let v1 = sinew_core::spec::load(r#"{"sinew": "0.1", "name": "n", "tools": {},
//!   "entities": {"Note": {"fields": {"text": {"type": "string", "maxLength": 200}}}}}"#);
//! let v2 = sinew_core::spec::load(r#"{"sinew": "0.1", "name": "n", "tools": {},
//!   "entities": {"Note": {"fields": {"text": {"type": "string", "maxLength": 500}}}}}"#);
//! let p = plan(&Schema::of(&v1.spec), &v2.spec);
//! assert_eq!(p.steps[0].change, "widen the CHECK of `text` (maxLength 200 → 500)");
//! ```

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

use super::{
    ColumnPlan, IndexPlan, Rule, check_ddl, check_name, columns, foreign_key_name, ident, literal,
    table_name, wanted_indexes,
};
use crate::model::{Entity, Spec};

/// What a database has, as far as a migration needs to know.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// Views a rename left under a table's former name, by name (the
    /// servers of the previous spec still use them).
    pub views: BTreeMap<String, String>,
}

/// A table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its one-column `CHECK`s that sinew wrote (named
    /// `{table}_{column}_check…`, or commented `sinew …`).
    pub checks: Vec<Check>,
    /// Its indexes, but the primary key's.
    pub indexes: Vec<Index>,
    /// Field renames in progress: both columns kept in step by a trigger.
    pub renames: Vec<Rename>,
    /// Whether it holds rows (`None`: not known, as for a spec's).
    pub rows: Option<bool>,
    /// Its foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
}

/// A foreign key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// Its name.
    pub name: String,
    /// Its columns (a `ref`'s key: one).
    pub columns: Vec<String>,
    /// The table it references.
    pub target: String,
}

/// A field rename in progress (expanded): the new column is written
/// whenever the old one is and the other way round, by a trigger whose
/// comment names both (`sinew rename OLD to NEW[, copied]`), so servers of
/// the spec before the rename and of the spec after it both work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// The trigger (and its function).
    pub trigger: String,
    /// The former column.
    pub old: String,
    /// The new column.
    pub new: String,
    /// Whether the rows there before were copied (the expansion finished).
    pub copied: bool,
}

impl Rename {
    /// The trigger's comment.
    pub fn comment(&self) -> String {
        format!(
            "sinew rename {} to {}{}",
            self.old,
            self.new,
            if self.copied { ", copied" } else { "" }
        )
    }

    /// The rename a trigger's comment names.
    pub fn from_comment(trigger: &str, comment: &str) -> Option<Rename> {
        let rest = comment.strip_prefix("sinew rename ")?;
        let (rest, copied) = match rest.strip_suffix(", copied") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (old, new) = rest.split_once(" to ")?;
        Some(Rename {
            trigger: trigger.to_owned(),
            old: old.to_owned(),
            new: new.to_owned(),
            copied,
        })
    }
}

/// A column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type, as `information_schema.columns.data_type` names it.
    pub sql_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// The database fills it in when an insert leaves it out (a default,
    /// an identity, a generated column).
    pub filled: bool,
}

/// A one-column `CHECK`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its name.
    pub name: String,
    /// Its column.
    pub column: String,
    /// What it allows, from its comment (`None`: written before sinew
    /// commented its constraints).
    pub rule: Option<Rule>,
    /// Validated (`false`: added `NOT VALID` and not validated yet).
    pub valid: bool,
}

/// An index.
#[derive(Debug, Clone)]
pub struct Index {
    /// Its name.
    pub name: String,
    /// Its columns, leading one first.
    pub columns: Vec<String>,
    /// Unique among live rows (`WHERE "deleted_at" IS NULL`).
    pub unique: bool,
    /// Usable (`false`: a `CREATE INDEX CONCURRENTLY` that did not finish).
    pub valid: bool,
    /// Named as sinew names its indexes (`{table}_…_idx`, `…_key`), so
    /// dropped when the spec no longer has it; others are the owner's.
    pub sinew: bool,
}

impl Schema {
    /// The schema a database migrated to `spec` has (a rename's view
    /// included).
    pub fn of(spec: &Spec) -> Schema {
        let mut out = Schema::default();
        for (name, e) in &spec.entities {
            let table = table_name(name);
            if let Some(old) = &e.renamed_from {
                out.views.insert(table_name(old), table.clone());
            }
            let cols = columns(e);
            let mut t = Table {
                checks: cols
                    .iter()
                    .filter_map(|c| {
                        Some(Check {
                            name: check_name(&table, &c.name),
                            column: c.name.clone(),
                            rule: Some(c.rule.clone()?),
                            valid: true,
                        })
                    })
                    .collect(),
                columns: cols
                    .iter()
                    .map(|c| Column {
                        name: c.name.clone(),
                        sql_type: c.sql_type.to_owned(),
                        not_null: c.not_null,
                        filled: c.filled,
                    })
                    .collect(),
                indexes: wanted_indexes(&table, e)
                    .into_iter()
                    .map(|i| Index {
                        name: i.name,
                        columns: i.columns,
                        unique: i.unique,
                        valid: true,
                        sinew: true,
                    })
                    .collect(),
                renames: Vec::new(),
                rows: None,
                foreign_keys: refs(spec, e)
                    .map(|(field, target)| ForeignKey {
                        name: super::foreign_key_name(&table, field),
                        columns: vec![field.to_owned()],
                        target: table_name(target),
                    })
                    .collect(),
            };
            // A field renamed is expanded: its former column kept in step.
            for c in &cols {
                if let Some(old) = &c.renamed_from {
                    t.columns.push(Column {
                        name: old.clone(),
                        sql_type: c.sql_type.to_owned(),
                        not_null: false,
                        filled: false,
                    });
                    t.renames.push(Rename {
                        trigger: sync_name(&table, &c.name),
                        old: old.clone(),
                        new: c.name.clone(),
                        copied: true,
                    });
                }
            }
            out.tables.insert(table, t);
        }
        out
    }
}

/// How risky a step is, in the manner of squawk's rules for Postgres
/// migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Reads and writes go on: the lock it takes is held for an instant
    /// (a change of the catalog, no scan, no rewrite) or lets them through.
    Safe,
    /// Blocks writes (or reads) for as long as it scans or rewrites the
    /// table.
    Locking,
    /// Can lose data, or fail on rows already there, or make the previous
    /// spec's servers fail.
    Destructive,
}

impl Step {
    /// A step the spec needs that loses nothing, in the transaction.
    fn expand(table: &str, change: String, lock: &'static str, sql: Vec<String>) -> Step {
        Step {
            table: table.to_owned(),
            change,
            risk: Risk::Safe,
            lock,
            applies: Applies::Always,
            needed: true,
            alone: false,
            why: None,
            sql,
        }
    }
}

impl Risk {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Risk::Safe => "safe",
            Risk::Locking => "locking",
            Risk::Destructive => "destructive",
        }
    }
}

/// Who applies a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Applies {
    /// The spec needs it: `sinew serve` (at start) and `sinew migrate
    /// --apply` apply it.
    Always,
    /// The spec runs without it (it removes or narrows what an older
    /// spec, or a newer one, had): `sinew migrate --apply` applies it,
    /// `sinew serve` leaves it (a server of the previous spec may still
    /// need what it removes).
    Migrate,
    /// It loses data or fails on rows already there: only `sinew migrate
    /// --apply --allow-destructive` applies it. When the spec needs it,
    /// `sinew serve` does not start until it is applied.
    Forced,
}

/// One change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The table it changes.
    pub table: String,
    /// What it does, in a sentence.
    pub change: String,
    /// Its risk.
    pub risk: Risk,
    /// The lock it takes, and for how long.
    pub lock: &'static str,
    /// Who applies it.
    pub applies: Applies,
    /// Whether the spec can run without it.
    pub needed: bool,
    /// Whether it runs outside the migration's transaction, each statement
    /// by itself (`CREATE INDEX CONCURRENTLY`, `VALIDATE CONSTRAINT`), after
    /// the transaction commits.
    pub alone: bool,
    /// Why it is risky and what to do instead, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The statements.
    pub sql: Vec<String>,
}

/// The steps from a schema to a spec's, and what was noticed on the way.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// The steps, in the order they run (those run `alone` after the
    /// others).
    pub steps: Vec<Step>,
    /// What is left as it is, or was done before, one sentence each.
    pub notes: Vec<String>,
    /// What to count before a step runs: the rows a `CHECK` that step
    /// replaces `NOT VALID` would refuse, found only by its `VALIDATE`
    /// after the transaction committed (half the migration done).
    #[serde(skip)]
    pub prechecks: Vec<Precheck>,
}

/// The rows of a table that a step's new `CHECK` refuses, counted before
/// the migration runs it.
#[derive(Debug, Clone)]
pub struct Precheck {
    /// The step's table.
    pub table: String,
    /// The step's `change` (one per table).
    pub change: String,
    /// `SELECT count(*)` of the rows the step would fail on: those the new
    /// `CHECK` refuses (a `CHECK` passes on null, and so does `WHERE NOT
    /// (…)`), every row for a new `NOT NULL` column without a default.
    pub count: String,
    /// What such rows are, and what to do (after "N row(s) ").
    pub why: String,
}

impl Plan {
    /// The highest risk among the steps.
    pub fn risk(&self) -> Option<Risk> {
        self.steps.iter().map(|s| s.risk).max()
    }

    /// Whether a step needs `--allow-destructive`.
    pub fn forced(&self) -> bool {
        self.steps.iter().any(|s| s.applies == Applies::Forced)
    }

    /// The plan for people: one line per step, its risk and lock, then its
    /// SQL indented, then the notes.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if self.steps.is_empty() {
            out.push_str("no change: the schema matches the spec\n");
        }
        for s in &self.steps {
            let who = match s.applies {
                Applies::Always => "",
                Applies::Migrate => ", by `sinew migrate --apply` only",
                Applies::Forced => ", only with --allow-destructive",
            };
            let _ = writeln!(
                out,
                "{:<11} {}: {}{}",
                s.risk.name(),
                s.table,
                s.change,
                if s.needed {
                    ""
                } else {
                    " (the spec runs without it)"
                },
            );
            let _ = writeln!(
                out,
                "            lock: {}{}{who}",
                s.lock,
                if s.alone {
                    "; runs alone, after the transaction"
                } else {
                    ""
                }
            );
            if let Some(why) = &s.why {
                let _ = writeln!(out, "            why: {why}");
            }
            for q in &s.sql {
                for line in q.lines() {
                    let _ = writeln!(out, "              {line}");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

const INSTANT: &str = "ACCESS EXCLUSIVE, for an instant (catalog only: no scan, no rewrite)";
const SCAN_NOT_BLOCKING: &str =
    "SHARE UPDATE EXCLUSIVE while it scans the table (reads and writes go on)";
const REWRITE: &str = "ACCESS EXCLUSIVE while it rewrites the table (reads and writes wait)";
const SCAN_BLOCKING: &str = "ACCESS EXCLUSIVE while it scans the table (reads and writes wait)";

/// The steps from `from` to the schema `spec` needs.
pub fn plan(from: &Schema, spec: &Spec) -> Plan {
    let mut views: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, e) in &spec.entities {
        if let Some(old) = &e.renamed_from {
            views
                .entry(table_name(name))
                .or_default()
                .push(table_name(old));
        }
    }
    let mut p = Planner {
        plan: Plan::default(),
        late: Vec::new(),
        fresh: from.tables.is_empty(),
        views,
    };
    // A view a rename left is dropped once no spec names it any more:
    // first, since it reads every column of its table, one of which this
    // plan may drop.
    for (view, target) in &from.views {
        let named = spec.entities.values().any(|e| {
            e.renamed_from
                .as_ref()
                .is_some_and(|o| table_name(o) == *view)
        });
        if !named && !spec.entities.keys().any(|n| table_name(n) == *view) {
            p.plan.steps.push(Step {
                table: view.clone(),
                change: format!(
                    "drop the view `{view}` a rename left for the previous spec's servers"
                ),
                risk: Risk::Safe,
                lock: "ACCESS EXCLUSIVE on the view, for an instant",
                applies: Applies::Migrate,
                needed: false,
                alone: false,
                why: Some(format!(
                    "servers still running a spec with the table's old name read `{target}` \
                     through it: apply once none runs"
                )),
                sql: vec![format!("DROP VIEW IF EXISTS {};", ident(view))],
            });
        }
    }
    for (name, e) in &spec.entities {
        let table = table_name(name);
        // A spec from before a table's rename (a rollback, a server of the
        // previous revision while a deploy rolls out): its rows are in the
        // renamed table, read and written through the view the rename
        // left. Nothing is made or changed for it: the newer spec owns
        // the table.
        if let Some(target) = from.views.get(&table)
            && !from.tables.contains_key(&table)
            && from.tables.contains_key(target)
        {
            p.plan.notes.push(format!(
                "`{name}` is in `{target}` (renamed from `{table}` by a newer spec): this \
                 spec reads and writes it through the view `{table}`; nothing is changed"
            ));
            continue;
        }
        if let Some(have) = from.tables.get(&table) {
            if let Some(old) = &e.renamed_from {
                let old_table = table_name(old);
                if from.tables.contains_key(&old_table) {
                    p.refuse_both_tables(name, &table, old, &old_table);
                } else {
                    p.plan.notes.push(format!(
                        "`{name}` is renamed from `{old}`: done before (`{table}` exists); \
                         `renamedFrom` is harmless, remove it when you like"
                    ));
                }
            }
            p.table(&table, e, have, None);
            continue;
        }
        let old = e.renamed_from.as_ref().map(|o| (o, table_name(o)));
        match old {
            Some((old, old_table)) if from.tables.contains_key(&old_table) => {
                p.rename_table(name, &table, e, old, &old_table);
                if let Some(have) = from.tables.get(&old_table) {
                    p.table(&table, e, have, Some(&old_table));
                }
            }
            Some((old, old_table)) if !p.fresh => {
                p.plan.steps.push(Step {
                    table: table.clone(),
                    change: format!("create table `{table}` (`{name}`, empty)"),
                    risk: Risk::Destructive,
                    lock: "none on existing tables",
                    applies: Applies::Forced,
                    needed: true,
                    alone: false,
                    why: Some(format!(
                        "`{name}` is renamed from `{old}`, but there is no table `{old_table}` \
                         to rename: check the name (its rows would stay behind in their \
                         table); to create `{name}` empty, remove `renamedFrom`"
                    )),
                    sql: vec![create_table(name, e)],
                });
            }
            _ => p.plan.steps.push(Step {
                table: table.clone(),
                change: format!("create table `{table}` (`{name}`)"),
                risk: Risk::Safe,
                lock: "none on existing tables",
                applies: Applies::Always,
                needed: true,
                alone: false,
                why: None,
                sql: vec![create_table(name, e)],
            }),
        }
    }
    // Foreign keys, once every table exists.
    for (name, e) in &spec.entities {
        let table = table_name(name);
        if from.views.contains_key(&table) && !from.tables.contains_key(&table) {
            continue;
        }
        // The table as the database has it: under its name, or under the
        // one it is renamed from (a table keeps its keys, and their names,
        // through a rename; the rename step gives them the new name).
        let renamed = e
            .renamed_from
            .as_ref()
            .map(|o| table_name(o))
            .filter(|o| !from.tables.contains_key(&table) && from.tables.contains_key(o));
        let have = from
            .tables
            .get(&table)
            .or_else(|| renamed.as_ref().and_then(|o| from.tables.get(o)));
        for (field, target) in refs(spec, e) {
            let key = super::foreign_key_name(&table, field);
            let target_table = table_name(target);
            // The table the target's rows are in now: its own, or the one
            // it is renamed from (by this plan, or before it: a key
            // follows its table through a rename).
            let former_target = spec
                .entities
                .get(target)
                .and_then(|t| t.renamed_from.as_ref())
                .map(|o| table_name(o));
            let now = if from.tables.contains_key(&target_table) {
                Some(target_table.clone())
            } else {
                former_target
                    .clone()
                    .filter(|o| from.tables.contains_key(o))
            };
            let there = have.and_then(|t| t.foreign_keys.iter().find(|k| k.columns == [field]));
            match there {
                Some(k)
                    if k.target == target_table
                        || former_target.as_ref().is_some_and(|o| *o == k.target) => {}
                Some(k) => p.retarget_foreign_key(&table, renamed.as_deref(), field, target, k, now),
                None => p.plan.steps.push(Step {
                    table: table.clone(),
                    change: format!(
                        "add the foreign key `{key}` (`{field}` → `{target_table}`, NOT VALID)"
                    ),
                    risk: Risk::Safe,
                    lock: "SHARE ROW EXCLUSIVE on both tables, for an instant (NOT VALID: the rows already there are not checked)",
                    applies: Applies::Always,
                    needed: true,
                    alone: false,
                    why: None,
                    sql: vec![super::foreign_key_ddl(&table, field, target)],
                }),
            }
        }
    }
    let mut plan = p.plan;
    plan.steps.append(&mut p.late);
    plan
}

/// The `ref` fields of `e` whose entity the spec has, with that entity:
/// the foreign keys its table has.
fn refs<'s>(spec: &'s Spec, e: &'s Entity) -> impl Iterator<Item = (&'s str, &'s str)> {
    e.fields
        .iter()
        .filter_map(|(name, f)| match (f.ty, &f.entity) {
            (crate::model::FieldType::Ref, Some(target)) if spec.entities.contains_key(target) => {
                Some((name.as_str(), target.as_str()))
            }
            _ => None,
        })
}

/// The statements creating an entity's table (its `CHECK`s commented and
/// its indexes), for an empty table: nothing to wait for.
fn create_table(name: &str, e: &Entity) -> String {
    let mut out = String::new();
    super::entity_ddl(&mut out, name, e);
    out.trim_end().to_owned()
}

struct Planner {
    plan: Plan,
    /// Steps that run alone, after the transaction.
    late: Vec<Step>,
    /// The database has no table yet: a rename has nothing to start from,
    /// and nothing is missing.
    fresh: bool,
    /// The views a rename leaves (`SELECT *` of the renamed table) that
    /// stay after this plan, by the table they read: a column of that table
    /// can only be dropped with the view dropped and made again.
    views: BTreeMap<String, Vec<String>>,
}

/// A rename that is not made (both names exist, a type changed): a forced
/// destructive step with no SQL, `why` saying what to do.
fn unmade_rename(table: &str, change: String, why: String) -> Step {
    Step {
        table: table.to_owned(),
        change,
        risk: Risk::Destructive,
        lock: "none",
        applies: Applies::Forced,
        needed: false,
        alone: false,
        why: Some(why),
        sql: Vec::new(),
    }
}

impl Planner {
    /// A `ref` field pointed at another entity: the key to the former
    /// target dropped and one to the new target added (`NOT VALID`), the
    /// rows referencing an id the new target lacks counted before anything
    /// runs (`now`: the table holding the target's rows before this plan;
    /// `None`: this plan creates it, so every reference is one).
    /// `renamed`: the name the table has before this plan renames it.
    fn retarget_foreign_key(
        &mut self,
        table: &str,
        renamed: Option<&str>,
        field: &str,
        target: &str,
        k: &ForeignKey,
        now: Option<String>,
    ) {
        let target_table = table_name(target);
        let t = ident(table);
        // A key the rename step renames goes by its new name.
        let name = match renamed {
            Some(o) if k.name == foreign_key_name(o, field) => foreign_key_name(table, field),
            _ => k.name.clone(),
        };
        let change = format!(
            "point the foreign key of `{field}` at `{target_table}` (it references `{}`)",
            k.target
        );
        let col = ident(field);
        let rows = ident(renamed.unwrap_or(table));
        let count = match &now {
            Some(n) => format!(
                "SELECT count(*) FROM {rows} r WHERE r.{col} IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM {} x WHERE x.\"id\" = r.{col})",
                ident(n)
            ),
            None => format!("SELECT count(*) FROM {rows} WHERE {col} IS NOT NULL"),
        };
        self.plan.prechecks.push(Precheck {
            table: table.to_owned(),
            change: change.clone(),
            count,
            why: format!(
                "reference an id `{target_table}` does not have: point them at rows of \
                 `{target_table}` (or clear them) first"
            ),
        });
        self.plan.steps.push(Step {
            table: table.to_owned(),
            change,
            risk: Risk::Destructive,
            lock: "SHARE ROW EXCLUSIVE on the tables, for an instant (NOT VALID: the rows already there are counted before, not scanned)",
            applies: Applies::Forced,
            needed: true,
            alone: false,
            why: Some(format!(
                "the previous spec's servers write ids of `{}` into `{field}`, which the new key \
                 refuses, and rows referencing an id `{target_table}` lacks refuse the migration: \
                 migrate once none runs",
                k.target
            )),
            sql: vec![
                format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {};", ident(&name)),
                super::foreign_key_ddl(table, field, target),
            ],
        });
    }

    fn refuse_both_tables(&mut self, name: &str, table: &str, old: &str, old_table: &str) {
        self.plan.steps.push(unmade_rename(
            table,
            format!("rename `{old_table}` to `{table}`: both exist"),
            format!(
                "`{name}` is renamed from `{old}`, but the database has both tables: \
                 nothing is renamed; move the rows of `{old_table}` yourself, \
                 or remove `renamedFrom`"
            ),
        ));
    }

    fn rename_table(&mut self, name: &str, table: &str, e: &Entity, old: &str, old_table: &str) {
        let (t, o) = (ident(table), ident(old_table));
        let mut sql = vec![
            format!("ALTER TABLE {o} RENAME TO {t};"),
            format!("CREATE VIEW {o} AS SELECT * FROM {t};"),
            format!(
                "COMMENT ON VIEW {o} IS {};",
                literal(&format!("sinew renamed to {table}"))
            ),
        ];
        // Its foreign keys take the new name (the planner finds them by it).
        for (fname, f) in &e.fields {
            if f.entity.is_some() {
                sql.push(rename_constraint(
                    table,
                    &foreign_key_name(old_table, fname),
                    &foreign_key_name(table, fname),
                ));
            }
        }
        let change = format!(
            "rename table `{old_table}` to `{table}` (`{old}` → `{name}`), leaving the view `{old_table}` for the previous spec's servers"
        );
        self.plan
            .steps
            .push(Step::expand(table, change, INSTANT, sql));
    }

    /// The steps that take the existing `have` (called `old_table` before
    /// a rename) to entity `e`'s table.
    fn table(&mut self, table: &str, e: &Entity, have: &Table, old_table: Option<&str>) {
        let t = ident(table);
        let wanted = columns(e);
        // Field renames are expanded: the new column is added and kept in
        // step with the former one by a trigger, so servers of the spec
        // before the rename go on writing the former one.
        let mut expanding: Vec<(&ColumnPlan, &str, bool)> = Vec::new();
        for c in &wanted {
            let Some(old) = &c.renamed_from else { continue };
            let has = |n: &str| have.columns.iter().any(|h| h.name == n);
            let syncing = have
                .renames
                .iter()
                .find(|r| r.old == *old && r.new == c.name);
            match (has(&c.name), has(old), syncing) {
                (true, true, Some(r)) => {
                    if !r.copied {
                        expanding.push((c, old, true)); // cut short: finish it
                    }
                }
                (true, false, _) => self.plan.notes.push(format!(
                    "`{table}.{}` is renamed from `{old}`: done before; `renamedFrom` is harmless, \
                     remove it when you like",
                    c.name
                )),
                (true, true, None) => self.plan.steps.push(unmade_rename(
                    table,
                    format!("rename column `{old}` to `{}`: both exist", c.name),
                    format!(
                        "the table has both columns: nothing is renamed; copy `{old}` into `{}` \
                         yourself, or remove `renamedFrom`",
                        c.name
                    ),
                )),
                (false, true, _) => {
                    let same = have
                        .columns
                        .iter()
                        .any(|h| h.name == *old && h.sql_type == c.sql_type);
                    if same {
                        expanding.push((c, old, false));
                    } else {
                        // The spec says the values go on under the new
                        // name; added as a new column, every row already
                        // there would read null there.
                        let change =
                            format!("rename column `{old}` to `{}` with another type", c.name);
                        let why = format!(
                            "a rename keeps the type: `{new}` would be added as a new, empty column \
                             and the values of `{old}` would not carry over (rename with the same \
                             type, then change the type in a later migration; or remove \
                             `renamedFrom` to start `{new}` empty)",
                            new = c.name
                        );
                        self.plan.steps.push(unmade_rename(table, change, why));
                    }
                }
                (false, false, _) => {
                    // Added below; said here, since the name was meant to
                    // find data.
                    self.plan.notes.push(format!(
                        "`{table}.{}` is renamed from `{old}`, but `{table}` has no column `{old}`: \
                         `{}` is added as a new column (check the name if it was to keep data)",
                        c.name, c.name
                    ));
                }
            }
        }
        // Former columns kept in step: neither compared nor dropped while
        // their rename is in progress; contracted once the spec no longer
        // names them (`renamedFrom` removed).
        let mut sources: Vec<String> = expanding.iter().map(|(_, o, _)| (*o).to_owned()).collect();
        for r in &have.renames {
            let kept = wanted
                .iter()
                .any(|c| c.name == r.new && c.renamed_from.as_deref() == Some(r.old.as_str()));
            sources.push(r.old.clone());
            if kept {
                continue;
            }
            // A copy cut short: the former column still holds values the
            // new one lacks. Copy them first; the contraction (which drops
            // the former column) comes with the next migration.
            if !r.copied
                && let Some(c) = wanted.iter().find(|c| c.name == r.new)
            {
                expanding.push((c, r.old.as_str(), true));
                self.plan.notes.push(format!(
                    "`{table}`: the copy of `{}` into `{}` did not finish: it runs again now, and \
                     the former column is dropped by the next migration, once it has",
                    r.old, r.new
                ));
                continue;
            }
            // A spec from before the rename (a rollback, or the previous
            // spec's servers during a rolling deploy): the rename stays in
            // progress, its trigger filling the new column for the newer
            // spec's servers.
            let names = |n: &str| wanted.iter().any(|c| c.name == n);
            if names(&r.old) && !names(&r.new) {
                self.plan.notes.push(format!(
                    "`{table}`: the rename of `{}` to `{}` a newer spec started stays in progress \
                     (its trigger keeps both columns in step)",
                    r.old, r.new
                ));
                continue;
            }
            self.contract_rename(table, r, names(&r.old));
        }
        let find = |name: &str| have.columns.iter().find(|h| h.name == name);
        for c in &wanted {
            if let Some((_, old, again)) = expanding.iter().find(|(x, _, _)| x.name == c.name) {
                let check = have.checks.iter().find(|k| k.column == *old);
                self.expand_rename(table, c, old, find(old), check, *again);
                continue;
            }
            match find(&c.name) {
                None => self.add_column(table, c, have.rows),
                Some(h) => self.change_column(table, c, h, have),
            }
        }
        for h in &have.columns {
            let name = h.name.clone();
            if wanted.iter().any(|c| c.name == name) || sources.contains(&name) {
                continue;
            }
            // The new column of a rename a newer spec started: its trigger
            // fills it from the former one, which this spec writes.
            if let Some(r) = have.renames.iter().find(|r| r.new == name) {
                self.plan.notes.push(format!(
                    "`{table}.{name}` is the new name of `{}` in a newer spec: kept, filled \
                     from `{}` by the rename's trigger",
                    r.old, r.old
                ));
                continue;
            }
            match crate::migrate::unknown_column(table, &name, h.not_null, h.filled) {
                Ok(note) => self.plan.notes.push(note),
                Err(refusal) => self.plan.steps.push(Step {
                    table: table.to_owned(),
                    change: format!("drop column `{name}` with its data"),
                    risk: Risk::Destructive,
                    lock: INSTANT,
                    applies: Applies::Forced,
                    needed: true,
                    alone: false,
                    why: Some(refusal),
                    sql: self.dropping_column(
                        table,
                        format!("ALTER TABLE {t} DROP COLUMN {};", ident(&name)),
                    ),
                }),
            }
        }
        self.checks(table, &wanted, have);
        self.indexes(table, e, have, old_table, &sources);
    }

    /// The expansion of a field rename: the new column (nullable until the
    /// rows are copied), its `CHECK`, and the trigger that keeps both
    /// columns in step, in the transaction; then the rows copied in
    /// batches, the `CHECK` validated and `NOT NULL` set without a long
    /// lock. `again`: the columns and trigger exist, a copy was cut short.
    fn expand_rename(
        &mut self,
        table: &str,
        c: &ColumnPlan,
        old: &str,
        former: Option<&Column>,
        former_check: Option<&Check>,
        again: bool,
    ) {
        let t = ident(table);
        let (o, n) = (ident(old), ident(&c.name));
        let sync = sync_name(table, &c.name);
        let rename = |copied| Rename {
            trigger: sync.clone(),
            old: old.to_owned(),
            new: c.name.clone(),
            copied,
        };
        // A rule narrower than the former column's (or one where it had
        // none): rows may hold values it refuses, and the previous spec's
        // servers may still write some (the trigger copies them into the
        // new column). The rename then adds the column without a `CHECK`
        // (it stays safe) and the `CHECK` is a narrowing of its own:
        // counted first, left by `sinew serve`, applied by `sinew migrate
        // --apply --allow-destructive`, as a narrowing of a column kept.
        let narrows = c.rule.as_ref().is_some_and(|new| {
            former_check
                .and_then(|k| k.rule.as_ref())
                .is_none_or(|old| !new.allows_all(old))
        });
        if !again {
            let mut sql = vec![format!(
                "ALTER TABLE {t} ADD COLUMN {n} {};",
                c.sql_type_ddl()
            )];
            if let Some(rule) = &c.rule
                && !narrows
            {
                sql.extend(check_ddl(table, &c.name, c.ty, rule, true));
            }
            // A nullable field renamed from a `NOT NULL` one (or one with a
            // default): the trigger copies a null written under the new
            // name into the former column, which must take it, and a
            // server of this spec inserting leaves the former column out,
            // whose default would be copied into the new one instead of
            // its null. The former column loses both: the previous spec's
            // servers write every field (sinew fills defaults itself), so
            // they need neither.
            let relaxed = !c.not_null && former.is_some_and(|h| h.not_null || h.filled);
            if relaxed {
                sql.push(format!(
                    "ALTER TABLE {t} ALTER COLUMN {o} DROP NOT NULL, ALTER COLUMN {o} DROP DEFAULT;"
                ));
            }
            // The former column's `CHECK`, when the field's rule changes
            // with the rename: the trigger copies every value written under
            // the new name into the former column, where a narrower `CHECK`
            // would refuse what the new one allows. The new column's
            // `CHECK` judges the values of both (the trigger copies the
            // previous spec's writes into it too), and the previous spec's
            // servers check their own values before they write.
            let unchecked = former_check.filter(|k| k.rule.as_ref() != c.rule.as_ref());
            if let Some(k) = unchecked {
                sql.push(format!(
                    "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {};",
                    ident(&k.name)
                ));
            }
            sql.push(format!(
                "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  IF TG_OP = 'INSERT' THEN\n    IF NEW.{n} IS NULL THEN NEW.{n} := NEW.{o}; ELSE NEW.{o} := NEW.{n}; END IF;\n  ELSIF NEW.{n} IS DISTINCT FROM OLD.{n} THEN\n    NEW.{o} := NEW.{n};\n  ELSIF NEW.{o} IS DISTINCT FROM OLD.{o} THEN\n    NEW.{n} := NEW.{o};\n  END IF;\n  RETURN NEW;\nEND\n$$;",
                f = ident(&sync)
            ));
            sql.push(format!(
                "CREATE OR REPLACE TRIGGER {f} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}();",
                f = ident(&sync)
            ));
            sql.push(format!(
                "COMMENT ON TRIGGER {} ON {t} IS {};",
                ident(&sync),
                literal(&rename(false).comment())
            ));
            let mut also = Vec::new();
            if relaxed {
                also.push(format!(
                    "`{old}` made nullable without a default, as `{}` is",
                    c.name
                ));
            }
            if unchecked.is_some() {
                also.push(format!(
                    "`{old}`'s CHECK dropped: `{}`'s judges both",
                    c.name
                ));
            }
            let change = format!(
                "rename column `{old}` to `{}`: add `{}`, kept in step with `{old}` by a trigger{}",
                c.name,
                c.name,
                if also.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", also.join("; "))
                }
            );
            self.plan
                .steps
                .push(Step::expand(table, change, INSTANT, sql));
            if let Some(rule) = c.rule.as_ref().filter(|_| narrows) {
                self.narrowed_rename(table, c, old, rule);
            }
        }
        let mut sql = vec![in_batches(
            table,
            &format!("{n} = {o}"),
            &format!("{n} IS NULL AND {o} IS NOT NULL"),
        )];
        // Cut short (`again`): the `CHECK` there is validated by `checks`.
        if c.rule.is_some() && !again && !narrows {
            sql.push(format!(
                "ALTER TABLE {t} VALIDATE CONSTRAINT {};",
                ident(&check_name(table, &c.name))
            ));
        }
        if c.not_null {
            sql.extend(set_not_null(table, &c.name));
        }
        if let Some(d) = &c.default_sql {
            sql.push(format!("ALTER TABLE {t} ALTER COLUMN {n} SET DEFAULT {d};"));
        }
        sql.push(format!(
            "COMMENT ON TRIGGER {} ON {t} IS {};",
            ident(&sync),
            literal(&rename(true).comment())
        ));
        self.late.push(Step {
            table: table.to_owned(),
            change: format!(
                "copy `{old}` into `{}` in batches{}",
                c.name,
                if again { ", again: the last copy did not finish" } else { "" }
            ),
            risk: Risk::Safe,
            lock: "row locks while it copies (1000 rows a transaction); SHARE UPDATE EXCLUSIVE while it validates; ACCESS EXCLUSIVE for an instant to set NOT NULL",
            applies: Applies::Always,
            needed: true,
            alone: true,
            why: None,
            sql,
        });
    }

    /// The `CHECK` of a renamed field whose rule is narrower than the
    /// former column's: added to the new column `NOT VALID` and validated
    /// after the copy, once no row of the former column is outside it
    /// (counted first) and no server of the previous spec runs.
    fn narrowed_rename(&mut self, table: &str, c: &ColumnPlan, old: &str, rule: &Rule) {
        let change = format!(
            "add a CHECK to `{}` (renamed from `{old}`, with a narrower rule)",
            c.name
        );
        self.plan.prechecks.push(Precheck {
            table: table.to_owned(),
            change: change.clone(),
            count: format!(
                "SELECT count(*) FROM {} WHERE NOT ({})",
                ident(table),
                rule.sql(old, c.ty)
            ),
            why: format!("of `{old}` hold values the new CHECK refuses: change them first"),
        });
        let sql = check_ddl(table, &c.name, c.ty, rule, true).to_vec();
        self.narrowing(table, c, change, sql, &format!(" under `{old}`"));
    }

    /// A `CHECK` narrowed (or added to a column with rows): its step (the
    /// `sql` that drops the former one and adds it `NOT VALID`) and its
    /// validation after the transaction, both left unless forced, since
    /// the previous spec's servers may still write values outside it
    /// (`under`: where, said after "write them").
    fn narrowing(
        &mut self,
        table: &str,
        c: &ColumnPlan,
        change: String,
        sql: Vec<String>,
        under: &str,
    ) {
        self.plan.steps.push(Step {
            table: table.to_owned(),
            change,
            risk: Risk::Destructive,
            lock: INSTANT,
            applies: Applies::Forced,
            needed: false,
            alone: false,
            why: Some(format!(
                "rows outside the new CHECK fail the migration (when it is validated), and the \
                 previous spec's servers may still write them{under}: narrow it once none runs \
                 and no row of `{table}` is outside it"
            )),
            sql,
        });
        let mut v = validate(table, &check_name(table, &c.name), c);
        v.applies = Applies::Forced;
        v.risk = Risk::Destructive;
        self.late.push(v);
    }

    /// The contraction of a field rename the spec no longer names: the
    /// trigger and the former column go (its values are in the new one).
    /// `wanted`: the spec has a field of the former name again (then the
    /// column stays).
    /// `drop` (a column of `table`), with the views a rename left on
    /// `table` dropped before and made again after: a `SELECT *` view
    /// depends on every column it read.
    fn dropping_column(&self, table: &str, drop: String) -> Vec<String> {
        let views = self.views.get(table).map(Vec::as_slice).unwrap_or_default();
        let mut sql: Vec<String> = views
            .iter()
            .map(|v| format!("DROP VIEW IF EXISTS {};", ident(v)))
            .collect();
        sql.push(drop);
        for v in views {
            sql.push(format!(
                "CREATE VIEW {} AS SELECT * FROM {};",
                ident(v),
                ident(table)
            ));
            sql.push(format!(
                "COMMENT ON VIEW {} IS {};",
                ident(v),
                literal(&format!("sinew renamed to {table}"))
            ));
        }
        sql
    }

    fn contract_rename(&mut self, table: &str, r: &Rename, wanted: bool) {
        let t = ident(table);
        let f = ident(&r.trigger);
        let mut sql = vec![
            format!("DROP TRIGGER IF EXISTS {f} ON {t};"),
            format!("DROP FUNCTION IF EXISTS {f}();"),
        ];
        if !wanted {
            sql.extend(self.dropping_column(
                table,
                format!("ALTER TABLE {t} DROP COLUMN IF EXISTS {};", ident(&r.old)),
            ));
        }
        self.plan.steps.push(Step {
            table: table.to_owned(),
            change: format!(
                "finish renaming `{}` to `{}`: drop the trigger{}",
                r.old,
                r.new,
                if wanted { "" } else { " and the former column" }
            ),
            risk: Risk::Safe,
            lock: INSTANT,
            applies: Applies::Migrate,
            needed: false,
            alone: false,
            why: Some(format!(
                "servers of a spec before the rename write `{}`: apply once none runs",
                r.old
            )),
            sql,
        });
    }

    fn add_column(&mut self, table: &str, c: &ColumnPlan, rows: Option<bool>) {
        let t = ident(table);
        let mut sql = vec![format!("ALTER TABLE {t} ADD COLUMN {};", c.definition)];
        if let Some(rule) = &c.rule {
            // A new column's values are its default or null: a CHECK
            // added with it is written valid, no scan beyond the add.
            sql.extend(check_ddl(table, &c.name, c.ty, rule, false));
        }
        let what = if !c.not_null {
            "nullable"
        } else if c.filled {
            "with its default"
        } else {
            "NOT NULL, no default"
        };
        if c.not_null && !c.filled {
            self.plan.prechecks.push(Precheck {
                table: table.to_owned(),
                change: format!("add column `{}` ({what})", c.name),
                count: format!("SELECT count(*) FROM {t}"),
                why: format!(
                    "would have no value for `{}`: give the field a `default` (or make it \
                     `nullable`), or remove the rows first",
                    c.name
                ),
            });
            let rows = match rows {
                Some(false) => "the table is empty now, but ",
                _ => "the rows already there have no value for it, and ",
            };
            self.plan.steps.push(Step {
                table: table.to_owned(),
                change: format!("add column `{}` ({what})", c.name),
                risk: Risk::Destructive,
                lock: INSTANT,
                applies: Applies::Forced,
                needed: true,
                alone: false,
                why: Some(format!(
                    "{rows}the previous spec's servers insert rows without it: give the field a \
                     `default` (or make it `nullable`) in this deploy"
                )),
                sql,
            });
            return;
        }
        self.plan.steps.push(Step::expand(
            table,
            format!("add column `{}` ({what})", c.name),
            INSTANT,
            sql,
        ));
    }

    fn change_column(&mut self, table: &str, c: &ColumnPlan, h: &Column, have: &Table) {
        let t = ident(table);
        let col = ident(&c.name);
        if h.sql_type != c.sql_type {
            // Its CHECKs are written for the former type (`char_length` of
            // a string, bounds of a number): dropped before the type
            // changes, the new one added after (see `checks`).
            let mut sql: Vec<String> = have
                .checks
                .iter()
                .filter(|k| k.column == c.name)
                .map(|k| format!("ALTER TABLE {t} DROP CONSTRAINT {};", ident(&k.name)))
                .collect();
            let ty = c.sql_type_ddl();
            sql.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {col} TYPE {ty} USING {};",
                converted(&col, &h.sql_type, ty)
            ));
            let change = format!(
                "change the type of `{}` from {} to {}",
                c.name, h.sql_type, c.sql_type
            );
            if let Some((lost, why)) = lossy(&col, &h.sql_type, ty) {
                self.plan.prechecks.push(Precheck {
                    table: table.to_owned(),
                    change: change.clone(),
                    count: format!("SELECT count(*) FROM {t} WHERE {lost}"),
                    why: why.to_owned(),
                });
            }
            self.plan.steps.push(Step {
                table: table.to_owned(),
                change,
                risk: Risk::Destructive,
                lock: REWRITE,
                applies: Applies::Forced,
                needed: true,
                alone: false,
                why: Some(format!(
                    "values that do not convert fail the migration, the table is rewritten under \
                     an exclusive lock, and the previous spec's servers write the old type: add a \
                     new field of the new type, copy, then remove `{}` (two deploys)",
                    c.name
                )),
                sql,
            });
        }
        if c.not_null && !h.not_null {
            match &c.default_sql {
                Some(default) => self.late.push(required_with_default(table, c, default)),
                None => self.plan.steps.push(Step {
                    table: table.to_owned(),
                    change: format!("make `{}` NOT NULL", c.name),
                    risk: Risk::Destructive,
                    lock: SCAN_BLOCKING,
                    applies: Applies::Forced,
                    needed: false,
                    alone: false,
                    why: Some(
                        "rows holding null fail the migration, and the previous spec's servers \
                         may still write null: give the field a `default` (the migration then \
                         fills the nulls in batches and sets NOT NULL without a long lock), or \
                         fill them yourself once no server of the previous spec runs"
                            .to_owned(),
                    ),
                    sql: vec![format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL;")],
                }),
            }
        } else if !c.not_null && h.not_null {
            self.plan.steps.push(Step::expand(
                table,
                format!("make `{}` nullable", c.name),
                INSTANT,
                vec![format!("ALTER TABLE {t} ALTER COLUMN {col} DROP NOT NULL;")],
            ));
        }
    }

    /// Each wanted column's `CHECK`: kept when one allows exactly its rule
    /// (validated if it was left `NOT VALID`), else the ones there are
    /// replaced, `NOT VALID` in the transaction and validated after it.
    fn checks(&mut self, table: &str, wanted: &[ColumnPlan], have: &Table) {
        let t = ident(table);
        for c in wanted {
            let Some(h) = have.columns.iter().find(|h| h.name == c.name) else {
                continue; // added with its CHECK
            };
            // A column whose type changes has no CHECK left by then (the
            // type change drops them): its rule is added anew, over the
            // converted values, which the precheck counts by the cast the
            // type change makes.
            let retyped = h.sql_type != c.sql_type;
            let there: Vec<&Check> = if retyped {
                Vec::new()
            } else {
                have.checks.iter().filter(|k| k.column == c.name).collect()
            };
            let current = |k: &&Check| k.rule.is_some() && k.rule == c.rule;
            if let [k] = there.as_slice()
                && current(k)
            {
                if !k.valid {
                    self.late.push(validate(table, &k.name, c));
                }
                continue;
            }
            if there.is_empty() && c.rule.is_none() {
                continue;
            }
            let olds: Vec<Option<&Rule>> = there.iter().map(|k| k.rule.as_ref()).collect();
            let known: Vec<&Rule> = olds.iter().flatten().copied().collect();
            let widens = match &c.rule {
                None => true,
                Some(new) => {
                    !there.is_empty()
                        && known.len() == olds.len()
                        && known.iter().all(|old| new.allows_all(old))
                }
            };
            let legacy = !there.is_empty() && known.is_empty();
            let mut sql: Vec<String> = there
                .iter()
                .map(|k| format!("ALTER TABLE {t} DROP CONSTRAINT {};", ident(&k.name)))
                .collect();
            if let Some(rule) = &c.rule {
                sql.extend(check_ddl(table, &c.name, c.ty, rule, true));
            }
            let change = match (&c.rule, known.first()) {
                (None, _) => format!("drop the CHECK of `{}`", c.name),
                (Some(_), None) if legacy => format!(
                    "rewrite the CHECK of `{}` (written before sinew commented its CHECKs)",
                    c.name
                ),
                (Some(_), None) if retyped => {
                    format!("add a CHECK to `{}` (for its new type)", c.name)
                }
                (Some(_), None) => format!("add a CHECK to `{}`", c.name),
                (Some(new), Some(old)) => format!(
                    "{} the CHECK of `{}` ({})",
                    if widens { "widen" } else { "narrow" },
                    c.name,
                    describe(old, new)
                ),
            };
            // Rows within the old CHECK are within a wider one: only a
            // narrowed (or unknown) one can refuse some.
            if let Some(rule) = &c.rule
                && !widens
            {
                self.plan.prechecks.push(Precheck {
                    table: table.to_owned(),
                    change: change.clone(),
                    count: format!(
                        "SELECT count(*) FROM {t} WHERE NOT ({})",
                        if retyped {
                            let col = ident(&c.name);
                            rule.sql_of(&format!("({col}::{})", c.sql_type_ddl()), c.ty)
                        } else {
                            rule.sql(&c.name, c.ty)
                        }
                    ),
                    why: "hold values the new CHECK refuses: change them first".to_owned(),
                });
            }
            if !(widens || legacy) {
                self.narrowing(table, c, change, sql, "");
                continue;
            }
            self.plan.steps.push(Step {
                table: table.to_owned(),
                change,
                risk: Risk::Safe,
                lock: INSTANT,
                applies: Applies::Always,
                needed: true,
                alone: false,
                why: None,
                sql,
            });
            if c.rule.is_some() {
                self.late
                    .push(validate(table, &check_name(table, &c.name), c));
            }
        }
    }

    fn indexes(
        &mut self,
        table: &str,
        e: &Entity,
        have: &Table,
        old_table: Option<&str>,
        sources: &[String],
    ) {
        let wanted = wanted_indexes(table, e);
        let same = |h: &Index, w: &IndexPlan| {
            h.unique == w.unique
                && h.columns.len() == w.columns.len()
                && h.columns.iter().zip(&w.columns).all(|(a, b)| a == b)
        };
        let mut used = std::collections::BTreeSet::new();
        for w in &wanted {
            // The one by that name first, then any alike (a rename left it
            // under another name).
            let found = have
                .indexes
                .iter()
                .enumerate()
                .filter(|(i, h)| !used.contains(i) && same(h, w))
                .min_by_key(|(_, h)| (h.name != w.name, !h.valid));
            match found {
                Some((i, h)) if h.valid => {
                    used.insert(i);
                    if h.name != w.name && !have.indexes.iter().any(|o| o.name == w.name) {
                        self.plan.steps.push(Step {
                            table: table.to_owned(),
                            change: format!("rename index `{}` to `{}`", h.name, w.name),
                            risk: Risk::Safe,
                            lock: "SHARE UPDATE EXCLUSIVE, for an instant",
                            applies: Applies::Always,
                            needed: false,
                            alone: false,
                            why: None,
                            sql: vec![format!(
                                "ALTER INDEX {} RENAME TO {};",
                                ident(&h.name),
                                ident(&w.name)
                            )],
                        });
                    }
                }
                _ => {
                    let mut sql = Vec::new();
                    let mut change = format!(
                        "create {}index `{}` ({})",
                        if w.unique { "unique " } else { "" },
                        w.name,
                        w.columns.join(", ")
                    );
                    if let Some((i, h)) = found {
                        used.insert(i);
                        change.push_str(", again: the last try did not finish");
                        sql.push(format!(
                            "DROP INDEX CONCURRENTLY IF EXISTS {};",
                            ident(&h.name)
                        ));
                    } else if let Some(i) = have.indexes.iter().position(|h| h.name == w.name) {
                        // Same name, another definition: replaced.
                        used.insert(i);
                        sql.push(format!(
                            "DROP INDEX CONCURRENTLY IF EXISTS {};",
                            ident(&w.name)
                        ));
                    }
                    sql.push(w.create(table, true));
                    self.late.push(Step {
                        table: table.to_owned(),
                        change,
                        risk: Risk::Safe,
                        lock: SCAN_NOT_BLOCKING,
                        applies: Applies::Always,
                        needed: w.unique,
                        alone: true,
                        why: w.unique.then(|| {
                            format!(
                                "two live rows sharing values of ({}) fail it, changing nothing \
                                 but the index it leaves invalid (the next migration drops it)",
                                w.columns.join(", ")
                            )
                        }),
                        sql,
                    });
                }
            }
        }
        let ours = |h: &Index| {
            h.sinew
                || old_table.is_some_and(|o| {
                    h.name.starts_with(&format!("{o}_"))
                        && (h.name.ends_with("_idx") || h.name.ends_with("_key"))
                })
        };
        for (i, h) in have.indexes.iter().enumerate() {
            // A former column's indexes serve the previous spec's servers
            // until the rename is contracted.
            let on_source = h.columns.iter().any(|c| sources.contains(c));
            if used.contains(&i) || !ours(h) || on_source {
                continue;
            }
            self.late.push(Step {
                table: table.to_owned(),
                change: if h.valid {
                    format!("drop index `{}` (not in the spec)", h.name)
                } else {
                    format!("drop index `{}` (left invalid, not in the spec)", h.name)
                },
                risk: Risk::Safe,
                lock: "SHARE UPDATE EXCLUSIVE (reads and writes go on)",
                applies: if h.valid {
                    Applies::Migrate
                } else {
                    Applies::Always
                },
                needed: false,
                alone: true,
                why: None,
                sql: vec![format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {};",
                    ident(&h.name)
                )],
            });
        }
    }
}

/// A nullable column made `NOT NULL`, its nulls filled with the field's
/// default ([`in_batches`]), then [`set_not_null`].
fn required_with_default(table: &str, c: &ColumnPlan, default: &str) -> Step {
    let t = ident(table);
    let col = ident(&c.name);
    let mut sql = vec![
        format!("ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {default};"),
        in_batches(
            table,
            &format!("{col} = {default}, \"version\" = \"version\" + 1"),
            &format!("{col} IS NULL"),
        ),
    ];
    sql.extend(set_not_null(table, &c.name));
    Step {
        table: table.to_owned(),
        change: format!(
            "make `{}` NOT NULL, filling its nulls with the default {default} in batches",
            c.name
        ),
        risk: Risk::Safe,
        lock: "row locks while it fills (1000 rows a transaction); SHARE UPDATE EXCLUSIVE while it validates; ACCESS EXCLUSIVE for an instant to set NOT NULL",
        applies: Applies::Migrate,
        needed: false,
        alone: true,
        why: Some(
            "the previous spec's servers may still write null: apply once none runs".to_owned(),
        ),
        sql,
    }
}

/// `UPDATE table SET set WHERE …` on the rows matching `rows`, 1000 at a
/// time, each batch committed (a `DO` block run outside a transaction):
/// row locks only, and run again after an interruption it goes on.
fn in_batches(table: &str, set: &str, rows: &str) -> String {
    let t = ident(table);
    let body = format!(
        "\nDECLARE n bigint;\nBEGIN\n  LOOP\n    UPDATE {t} SET {set}\n      WHERE \"id\" IN (SELECT \"id\" FROM {t} WHERE {rows} LIMIT 1000);\n    GET DIAGNOSTICS n = ROW_COUNT;\n    EXIT WHEN n = 0;\n    COMMIT;\n  END LOOP;\nEND "
    );
    let tag = dollar_tag(&body);
    format!("DO {tag}{body}{tag};")
}

/// A dollar-quote tag that does not occur in `body` (a `default` written
/// into it may hold `$$`, which would end a `$$` body early).
fn dollar_tag(body: &str) -> String {
    let mut tag = "$$".to_owned();
    let mut n = 0u32;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$sinew{n}$");
    }
    tag
}

/// `SET NOT NULL` without a long lock: a `CHECK (… IS NOT NULL)` added
/// `NOT VALID` and validated (reads and writes go on) lets it skip its
/// scan; the `CHECK` goes after. Each statement can run again.
fn set_not_null(table: &str, column: &str) -> [String; 5] {
    let (t, col) = (ident(table), ident(column));
    let check = ident(&super::fitted(
        table,
        std::slice::from_ref(&column.to_owned()),
        "not_null",
    ));
    [
        format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check};"),
        format!("ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({col} IS NOT NULL) NOT VALID;"),
        format!("ALTER TABLE {t} VALIDATE CONSTRAINT {check};"),
        format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL;"),
        format!("ALTER TABLE {t} DROP CONSTRAINT {check};"),
    ]
}

/// The step validating `CHECK` `check` of `c`'s column after the
/// transaction.
fn validate(table: &str, check: &str, c: &ColumnPlan) -> Step {
    Step {
        table: table.to_owned(),
        change: format!("validate the CHECK of `{}`", c.name),
        risk: Risk::Safe,
        lock: SCAN_NOT_BLOCKING,
        applies: Applies::Always,
        needed: false,
        alone: true,
        why: None,
        sql: vec![format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {};",
            ident(table),
            ident(check)
        )],
    }
}

/// A SQL type as DDL writes it (the catalog writes `timestamptz` long).
fn short_type(t: &str) -> &str {
    match t {
        "timestamp with time zone" => "timestamptz",
        t => t,
    }
}

/// Column `col` of SQL type `from` as a value of SQL type `to`, in the
/// form sinew reads and writes: a timestamp as text is RFC 3339 in UTC
/// (as sinew formats one, a fraction only when there is one), a JSON
/// string as text is the string itself (any other JSON value, its text),
/// a text as JSON is a JSON string.
fn converted(col: &str, from: &str, to: &str) -> String {
    match (short_type(from), short_type(to)) {
        ("timestamptz", "text") => format!(
            "to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || \
             coalesce('.' || nullif(rtrim(to_char({col} AT TIME ZONE 'UTC', 'US'), '0'), ''), '') || 'Z'"
        ),
        ("jsonb", "text") => format!(
            "CASE WHEN jsonb_typeof({col}) = 'string' THEN {col} #>> '{{}}' ELSE {col}::text END"
        ),
        ("text", "jsonb") => format!("to_jsonb({col})"),
        _ => format!("{col}::{to}"),
    }
}

/// The rows of column `col` whose value the change from SQL type `from`
/// to `to` would change rather than convert (a fraction rounded away, an
/// integer a double cannot hold, a text Postgres reads as a time but sinew
/// does not), as a `WHERE` condition, and what they are (after "N row(s)
/// "). A value with no conversion at all fails the migration, changing
/// nothing, and needs no count.
fn lossy(col: &str, from: &str, to: &str) -> Option<(String, &'static str)> {
    Some(match (short_type(from), short_type(to)) {
        ("double precision", "bigint") => (
            format!(
                "{col} <> trunc({col}) OR {col} >= 9223372036854775807 OR {col} < -9223372036854775808"
            ),
            "hold numbers with a fraction (or beyond 64 bits), which an integer would round: \
             change them first",
        ),
        ("bigint", "double precision") => (
            format!(
                "({col} > 9007199254740992 OR {col} < -9007199254740992) AND ({col} > \
                 9223372036854774784 OR {col} < -9223372036854774784 OR {col}::double precision::bigint <> {col})"
            ),
            "hold integers a number (a 64-bit double) cannot hold exactly: change them first",
        ),
        ("text", "timestamptz") => (
            format!(
                "{col} !~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[Tt ][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\\.[0-9]+)?([Zz]|[+-][0-9]{{2}}:[0-9]{{2}})$'"
            ),
            "hold text that is not an RFC 3339 timestamp with its offset: change them first",
        ),
        _ => return None,
    })
}

/// The name of a field rename's trigger and its function.
pub fn sync_name(table: &str, column: &str) -> String {
    super::fitted(table, &[column.to_owned()], "sync")
}

/// `ALTER TABLE … RENAME CONSTRAINT`, when the constraint exists.
fn rename_constraint(table: &str, from: &str, to: &str) -> String {
    format!(
        "DO $$ BEGIN\n  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {} AND conrelid = {}::regclass) THEN\n    ALTER TABLE {} RENAME CONSTRAINT {} TO {};\n  END IF;\nEND $$;",
        literal(from),
        literal(&ident(table)),
        ident(table),
        ident(from),
        ident(to)
    )
}

/// What changed between two rules, in words (`maxLength 80 → 120`).
fn describe(old: &Rule, new: &Rule) -> String {
    let mut parts = Vec::new();
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    let pairs = [
        (
            "minimum",
            old.minimum.as_ref().map(ToString::to_string),
            new.minimum.as_ref().map(ToString::to_string),
        ),
        (
            "maximum",
            old.maximum.as_ref().map(ToString::to_string),
            new.maximum.as_ref().map(ToString::to_string),
        ),
        (
            "maxLength",
            old.max_length.map(|n| n.to_string()),
            new.max_length.map(|n| n.to_string()),
        ),
    ];
    for (name, o, n) in pairs {
        if o != n {
            parts.push(format!("{name} {} → {}", show(&o), show(&n)));
        }
    }
    let list = |v: &Option<Vec<serde_json::Value>>| v.clone().unwrap_or_default();
    let (o, n) = (list(&old.one_of), list(&new.one_of));
    let added: Vec<String> = n
        .iter()
        .filter(|v| !o.contains(v))
        .map(ToString::to_string)
        .collect();
    let removed: Vec<String> = o
        .iter()
        .filter(|v| !n.contains(v))
        .map(ToString::to_string)
        .collect();
    if !added.is_empty() {
        parts.push(format!("adds {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("removes {}", removed.join(", ")));
    }
    if old.one_of.is_some() && new.one_of.is_none() {
        parts.push("any value".into());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A value holding `$$` (a `default`) does not end the `DO` block's
    /// body: its dollar-quote tag is one the body does not hold.
    #[test]
    fn a_batch_body_is_quoted_with_a_tag_it_does_not_hold() {
        let plain = in_batches("room", "\"note\" = 'x'", "\"note\" IS NULL");
        assert!(
            plain.starts_with("DO $$\n") && plain.ends_with("END $$;"),
            "{plain}"
        );
        let sql = in_batches("room", "\"note\" = 'it''s $$ x'", "\"note\" IS NULL");
        assert!(
            sql.starts_with("DO $sinew1$\n") && sql.ends_with("END $sinew1$;"),
            "{sql}"
        );
        assert_eq!(sql.matches("$sinew1$").count(), 2, "{sql}");
    }

    fn spec(v: &Value) -> Spec {
        let loaded = crate::spec::load(&v.to_string());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.spec
    }

    fn base() -> Value {
        json!({"sinew": "0.1", "name": "n", "tools": {}, "entities": {
            "Room": {"fields": {
                "name": {"type": "string", "maxLength": 40},
                "beds": {"type": "integer", "minimum": 1, "maximum": 4},
                "kind": {"type": "string", "enum": ["single", "double"], "default": "single"},
                "note": {"type": "string", "nullable": true}
            },
            "status": {"initial": "free", "transitions": {"take": {"from": ["free"], "to": "taken"}}}},
            "Guest": {"fields": {"room": {"type": "ref", "entity": "Room"}, "email": {"type": "string", "unique": true}}}
        }})
    }

    fn steps(from: &Value, to: &Value) -> Plan {
        plan(&Schema::of(&spec(from)), &spec(to))
    }

    fn one(p: &Plan) -> &Step {
        assert_eq!(
            p.steps.iter().filter(|s| !s.alone).count(),
            1,
            "{}",
            p.human()
        );
        p.steps.iter().find(|s| !s.alone).unwrap()
    }

    /// A new `ref` adds its foreign key, as a step the plan and the diff
    /// show, after the tables; one the schema has is not added again.
    #[test]
    fn a_new_ref_adds_its_foreign_key_as_a_step() {
        let mut v = base();
        v["entities"]["Stay"] = json!({"fields": {"guest": {"type": "ref", "entity": "Guest"}}});
        let p = steps(&base(), &v);
        let changes: Vec<&str> = p.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "create table `stay` (`Stay`)",
                "add the foreign key `stay_guest_fkey` (`guest` → `guest`, NOT VALID)"
            ],
            "{}",
            p.human()
        );
        let fk = &p.steps[1];
        assert_eq!(
            (fk.risk, fk.applies, fk.needed),
            (Risk::Safe, Applies::Always, true)
        );
        assert!(fk.sql[0].contains("FOREIGN KEY (\"guest\") REFERENCES \"guest\""));
        // A field made a `ref` of an existing table.
        let mut w = base();
        w["entities"]["Guest"]["fields"]["friend"] =
            json!({"type": "ref", "entity": "Guest", "nullable": true});
        let p = steps(&base(), &w);
        assert!(
            p.steps.iter().any(|s| s
                .change
                .starts_with("add the foreign key `guest_friend_fkey`")),
            "{}",
            p.human()
        );
    }

    /// A `ref` pointed at another entity: the key to the former target is
    /// dropped and one to the new target added, a destructive step (the
    /// previous spec's servers write the former target's ids), the rows
    /// referencing an id the new target lacks counted first.
    #[test]
    fn a_ref_pointed_elsewhere_moves_its_foreign_key() {
        let mut with_box = base();
        with_box["entities"]["Box"] = json!({"fields": {"label": {"type": "string"}}});
        let mut moved = with_box.clone();
        moved["entities"]["Guest"]["fields"]["room"]["entity"] = json!("Box");
        let p = steps(&with_box, &moved);
        let s = one(&p);
        assert_eq!(
            s.change,
            "point the foreign key of `room` at `box` (it references `room`)"
        );
        assert_eq!(
            (s.risk, s.applies, s.needed),
            (Risk::Destructive, Applies::Forced, true)
        );
        assert_eq!(
            s.sql[0],
            r#"ALTER TABLE "guest" DROP CONSTRAINT IF EXISTS "guest_room_fkey";"#
        );
        assert!(s.sql[1].contains(r#"FOREIGN KEY ("room") REFERENCES "box""#));
        assert_eq!(
            p.prechecks[0].count,
            r#"SELECT count(*) FROM "guest" r WHERE r."room" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "box" x WHERE x."id" = r."room")"#
        );
        // The new target created by the same plan: every reference counts.
        let p = steps(&base(), &moved);
        let changes: Vec<&str> = p.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "create table `box` (`Box`)",
                "point the foreign key of `room` at `box` (it references `room`)"
            ]
        );
        assert_eq!(
            p.prechecks[0].count,
            r#"SELECT count(*) FROM "guest" WHERE "room" IS NOT NULL"#
        );
        // Back again, and applied: nothing to do.
        assert!(steps(&moved, &moved).steps.is_empty());
        let back = steps(&moved, &with_box);
        assert_eq!(
            one(&back).change,
            "point the foreign key of `room` at `room` (it references `box`)"
        );
    }

    #[test]
    fn the_same_spec_is_no_change() {
        let p = steps(&base(), &base());
        assert!(p.steps.is_empty() && p.notes.is_empty(), "{}", p.human());
    }

    #[test]
    fn widened_constraints_are_safe_and_validated_after() {
        let mut v = base();
        v["entities"]["Room"]["fields"]["name"]["maxLength"] = json!(80);
        v["entities"]["Room"]["fields"]["beds"]["maximum"] = json!(6);
        v["entities"]["Room"]["fields"]["kind"]["enum"] = json!(["single", "double", "suite"]);
        v["entities"]["Room"]["status"]["transitions"]["clean"] =
            json!({"from": ["taken"], "to": "cleaning"});
        let p = steps(&base(), &v);
        let changes: Vec<&str> = p.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "widen the CHECK of `status` (adds \"cleaning\")",
                "widen the CHECK of `name` (maxLength 40 → 80)",
                "widen the CHECK of `beds` (maximum 4 → 6)",
                "widen the CHECK of `kind` (adds \"suite\")",
                "validate the CHECK of `status`",
                "validate the CHECK of `name`",
                "validate the CHECK of `beds`",
                "validate the CHECK of `kind`",
            ]
        );
        for s in &p.steps {
            assert_eq!((s.risk, s.applies), (Risk::Safe, Applies::Always), "{s:?}");
            assert_eq!(s.alone, s.change.starts_with("validate"));
        }
        // Rows within the old CHECKs are within these: nothing to count.
        assert!(p.prechecks.is_empty(), "{:?}", p.prechecks);
        let status = &p.steps[0].sql;
        assert_eq!(
            status[0],
            r#"ALTER TABLE "room" DROP CONSTRAINT "room_status_check";"#
        );
        assert!(
            status[1].ends_with("IN ('free', 'taken', 'cleaning')) NOT VALID;"),
            "{status:?}"
        );
        assert!(status[2].starts_with(
            r#"COMMENT ON CONSTRAINT "room_status_check" ON "room" IS 'sinew {"enum":"#
        ));
        assert_eq!(
            p.steps[4].sql,
            [r#"ALTER TABLE "room" VALIDATE CONSTRAINT "room_status_check";"#]
        );
    }

    #[test]
    fn narrowed_constraints_are_forced_and_not_needed() {
        for (field, key, value) in [
            ("name", "maxLength", json!(20)),
            ("beds", "minimum", json!(2)),
            ("kind", "enum", json!(["single"])),
        ] {
            let mut v = base();
            v["entities"]["Room"]["fields"][field][key] = value;
            let p = steps(&base(), &v);
            let s = one(&p);
            assert!(s.change.starts_with("narrow the CHECK"), "{}", s.change);
            assert_eq!(
                (s.risk, s.applies, s.needed),
                (Risk::Destructive, Applies::Forced, false)
            );
            // The rows it would refuse are counted first, by its change.
            let [pre] = p.prechecks.as_slice() else {
                panic!("{:?}", p.prechecks)
            };
            assert_eq!((pre.table.as_str(), &pre.change), ("room", &s.change));
            assert!(
                pre.count
                    .starts_with(r#"SELECT count(*) FROM "room" WHERE NOT ("#),
                "{}",
                pre.count
            );
            // And back again: widening.
            let back = steps(&v, &base());
            assert!(one(&back).change.starts_with("widen"), "{}", back.human());
            assert!(back.prechecks.is_empty());
        }
        // A CHECK on a column that had none narrows it.
        let mut v = base();
        v["entities"]["Room"]["fields"]["note"]["maxLength"] = json!(10);
        assert_eq!(one(&steps(&base(), &v)).change, "add a CHECK to `note`");
        assert_eq!(one(&steps(&base(), &v)).applies, Applies::Forced);
        // Dropping one widens it.
        assert_eq!(one(&steps(&v, &base())).change, "drop the CHECK of `note`");
        assert_eq!(one(&steps(&v, &base())).applies, Applies::Always);
    }

    #[test]
    fn new_fields_need_a_default_or_null() {
        let mut v = base();
        v["entities"]["Room"]["fields"]["floor"] =
            json!({"type": "integer", "default": 0, "minimum": 0});
        v["entities"]["Room"]["fields"]["wing"] = json!({"type": "string", "nullable": true});
        let p = steps(&base(), &v);
        assert_eq!(p.steps.len(), 2, "{}", p.human());
        assert_eq!(p.steps[0].change, "add column `floor` (with its default)");
        assert_eq!(
            p.steps[0].sql,
            [
                r#"ALTER TABLE "room" ADD COLUMN "floor" bigint NOT NULL DEFAULT 0;"#,
                r#"ALTER TABLE "room" ADD CONSTRAINT "room_floor_check" CHECK ("floor" >= 0);"#,
                r#"COMMENT ON CONSTRAINT "room_floor_check" ON "room" IS 'sinew {"minimum":0}';"#,
            ]
        );
        assert_eq!(p.steps[1].change, "add column `wing` (nullable)");
        assert!(
            p.steps
                .iter()
                .all(|s| s.risk == Risk::Safe && s.applies == Applies::Always)
        );
        let mut v = base();
        v["entities"]["Room"]["fields"]["floor"] = json!({"type": "integer"});
        let s = one(&steps(&base(), &v)).clone();
        assert_eq!(
            (s.risk, s.applies, s.needed),
            (Risk::Destructive, Applies::Forced, true)
        );
        assert!(s.why.unwrap().contains("give the field a `default`"));
    }

    /// A type change drops the column's CHECK before it (one written for
    /// the former type may not apply to the new one: `char_length` of a
    /// number), and adds the new one after, its rows counted first over
    /// the converted values.
    #[test]
    fn a_type_change_replaces_the_check_around_it() {
        let mut v = base();
        v["entities"]["Room"]["fields"]["name"] = json!({"type": "integer", "maximum": 9});
        let p = steps(&base(), &v);
        let sql: Vec<&str> = p
            .steps
            .iter()
            .flat_map(|s| s.sql.iter().map(String::as_str))
            .collect();
        assert_eq!(
            sql[..3],
            [
                r#"ALTER TABLE "room" DROP CONSTRAINT "room_name_check";"#,
                r#"ALTER TABLE "room" ALTER COLUMN "name" TYPE bigint USING "name"::bigint;"#,
                r#"ALTER TABLE "room" ADD CONSTRAINT "room_name_check" CHECK ("name" <= 9) NOT VALID;"#,
            ],
            "{}",
            p.human()
        );
        assert_eq!(
            p.steps[1].change,
            "add a CHECK to `name` (for its new type)"
        );
        assert_eq!(
            p.prechecks[0].count,
            r#"SELECT count(*) FROM "room" WHERE NOT (("name"::bigint) <= 9)"#
        );
        // The other way: the bounds dropped first, the length counted on
        // the converted text.
        let mut v = base();
        v["entities"]["Room"]["fields"]["beds"] = json!({"type": "string", "maxLength": 2});
        let p = steps(&base(), &v);
        assert_eq!(
            p.steps[0].sql[0],
            r#"ALTER TABLE "room" DROP CONSTRAINT "room_beds_check";"#
        );
        assert_eq!(
            p.prechecks[0].count,
            r#"SELECT count(*) FROM "room" WHERE NOT (char_length(("beds"::text)) <= 2)"#
        );
        // Without a rule in the new type: dropped, nothing added.
        let mut v = base();
        v["entities"]["Room"]["fields"]["beds"] = json!({"type": "string"});
        let p = steps(&base(), &v);
        assert_eq!(p.steps.len(), 1, "{}", p.human());
        assert!(p.prechecks.is_empty());
    }

    #[test]
    fn nullability_and_types() {
        let mut v = base();
        v["entities"]["Room"]["fields"]["name"]["nullable"] = json!(true);
        let s = one(&steps(&base(), &v)).clone();
        assert_eq!(
            (s.change.as_str(), s.risk),
            ("make `name` nullable", Risk::Safe)
        );
        let s = one(&steps(&v, &base())).clone();
        assert_eq!(s.change, "make `name` NOT NULL");
        assert_eq!(
            (s.risk, s.applies, s.needed),
            (Risk::Destructive, Applies::Forced, false)
        );
        // With a default: its nulls filled in batches, NOT NULL set without
        // a long lock, once the previous spec's servers are gone.
        let mut v = base();
        v["entities"]["Room"]["fields"]["note"]["nullable"] = json!(false);
        v["entities"]["Room"]["fields"]["note"]["default"] = json!("-");
        let p = steps(&base(), &v);
        assert_eq!(p.steps.len(), 1, "{}", p.human());
        let s = &p.steps[0];
        assert_eq!(
            s.change,
            "make `note` NOT NULL, filling its nulls with the default '-' in batches"
        );
        assert_eq!(
            (s.risk, s.applies, s.needed, s.alone),
            (Risk::Safe, Applies::Migrate, false, true)
        );
        assert!(
            s.sql[1].contains("LIMIT 1000") && s.sql[1].contains("COMMIT;"),
            "{}",
            s.sql[1]
        );
        assert_eq!(
            s.sql[5],
            r#"ALTER TABLE "room" ALTER COLUMN "note" SET NOT NULL;"#
        );
        let mut v = base();
        v["entities"]["Room"]["fields"]["note"] = json!({"type": "integer", "nullable": true});
        let s = one(&steps(&base(), &v)).clone();
        assert_eq!(s.change, "change the type of `note` from text to bigint");
        assert_eq!(
            (s.risk, s.applies, s.needed),
            (Risk::Destructive, Applies::Forced, true)
        );
    }

    #[test]
    fn indexes_are_made_and_dropped_concurrently() {
        let mut v = base();
        v["entities"]["Room"]["indexes"] =
            json!([{"fields": ["name", "beds"]}, {"fields": ["kind"], "unique": true}]);
        let p = steps(&base(), &v);
        let sql: Vec<&str> = p
            .steps
            .iter()
            .flat_map(|s| s.sql.iter().map(String::as_str))
            .collect();
        assert_eq!(
            sql,
            [
                r#"CREATE INDEX CONCURRENTLY IF NOT EXISTS "room_name_beds_idx" ON "room" ("name", "beds");"#,
                r#"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "room_kind_key" ON "room" ("kind") WHERE "deleted_at" IS NULL;"#,
            ]
        );
        assert!(p.steps.iter().all(|s| s.alone && s.risk == Risk::Safe));
        let back = steps(&v, &base());
        assert_eq!(back.steps.len(), 2);
        for s in &back.steps {
            assert!(s.change.starts_with("drop index"), "{}", s.change);
            assert_eq!(
                (s.applies, s.needed, s.alone),
                (Applies::Migrate, false, true)
            );
        }
    }

    #[test]
    fn a_cut_short_migration_is_finished() {
        let s = spec(&base());
        let mut have = Schema::of(&s);
        let room = have.tables.get_mut("room").unwrap();
        room.checks
            .iter_mut()
            .find(|k| k.column == "name")
            .unwrap()
            .valid = false;
        let guest = have.tables.get_mut("guest").unwrap();
        guest
            .indexes
            .iter_mut()
            .find(|i| i.name == "guest_email_key")
            .unwrap()
            .valid = false;
        let p = plan(&have, &s);
        let changes: Vec<&str> = p.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "validate the CHECK of `name`",
                "create unique index `guest_email_key` (email), again: the last try did not finish",
            ]
        );
        assert_eq!(
            p.steps[1].sql,
            [
                r#"DROP INDEX CONCURRENTLY IF EXISTS "guest_email_key";"#,
                r#"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "guest_email_key" ON "guest" ("email") WHERE "deleted_at" IS NULL;"#,
            ]
        );
        // A CHECK written before sinew commented them is rewritten once.
        let mut have = Schema::of(&s);
        for k in &mut have.tables.get_mut("room").unwrap().checks {
            k.rule = None;
            k.name = format!("room_{}_check", k.column);
        }
        let p = plan(&have, &s);
        assert!(
            p.steps
                .iter()
                .filter(|s| !s.alone)
                .all(|s| s.change.starts_with("rewrite the CHECK") && s.applies == Applies::Always),
            "{}",
            p.human()
        );
    }

    /// `entity`'s field `name` renamed `title` (`renamedFrom`), as `title`
    /// says or as it was.
    fn name_renamed_title(v: &mut Value, entity: &str, title: Option<Value>) {
        let fields = &mut v["entities"][entity]["fields"];
        let was = fields["name"].take();
        fields["title"] = title.unwrap_or(was);
        fields["title"]["renamedFrom"] = json!("name");
        fields.as_object_mut().unwrap().remove("name");
    }

    #[test]
    fn a_rename_that_changes_the_type_is_destructive() {
        let mut v = base();
        name_renamed_title(
            &mut v,
            "Room",
            Some(json!({"type": "json", "nullable": true})),
        );
        let p = steps(&base(), &v);
        let s = p
            .steps
            .iter()
            .find(|s| s.change == "rename column `name` to `title` with another type")
            .unwrap_or_else(|| panic!("{:?}", p.steps));
        assert_eq!((s.risk, s.applies), (Risk::Destructive, Applies::Forced));
        assert!(s.why.as_deref().unwrap().contains("would not carry over"));
    }

    #[test]
    fn renames() {
        let mut v = base();
        let room = v["entities"]["Room"].take();
        v["entities"]["Ward"] = room;
        v["entities"]["Ward"]["renamedFrom"] = json!("Room");
        v["entities"]["Guest"]["fields"]["room"]["entity"] = json!("Ward");
        name_renamed_title(&mut v, "Ward", None);
        v["entities"].as_object_mut().unwrap().remove("Room");
        let p = steps(&base(), &v);
        let changes: Vec<&str> = p.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "rename table `room` to `ward` (`Room` → `Ward`), leaving the view `room` for the previous spec's servers",
                "rename column `name` to `title`: add `title`, kept in step with `name` by a trigger",
                "copy `name` into `title` in batches",
            ]
        );
        assert_eq!(p.steps[0].risk, Risk::Safe);
        assert_eq!(
            p.steps[0].sql[..2],
            [
                r#"ALTER TABLE "room" RENAME TO "ward";"#.to_owned(),
                r#"CREATE VIEW "room" AS SELECT * FROM "ward";"#.to_owned()
            ]
        );
        for s in &p.steps {
            assert_eq!(
                (s.risk, s.applies, s.needed),
                (Risk::Safe, Applies::Always, true)
            );
        }
        assert_eq!(
            p.steps[1].sql[0],
            r#"ALTER TABLE "ward" ADD COLUMN "title" text;"#
        );
        assert!(
            p.steps[1]
                .sql
                .iter()
                .any(|q| q.contains("BEFORE INSERT OR UPDATE ON \"ward\""))
        );
        assert!(
            p.steps[1]
                .sql
                .last()
                .unwrap()
                .ends_with("IS 'sinew rename name to title';")
        );
        let copy = &p.steps[2].sql;
        assert!(copy[0].contains(r#"SET "title" = "name""#), "{copy:?}");
        assert!(
            copy.iter()
                .any(|q| q.ends_with(r#"ALTER COLUMN "title" SET NOT NULL;"#))
        );
        assert!(
            copy.last()
                .unwrap()
                .ends_with("IS 'sinew rename name to title, copied';")
        );
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        // Cut short before the copy finished: the copy again.
        let mut cut = Schema::of(&spec(&v));
        cut.tables.get_mut("ward").unwrap().renames[0].copied = false;
        let again = plan(&cut, &spec(&v));
        let changes: Vec<&str> = again.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            ["copy `name` into `title` in batches, again: the last copy did not finish"]
        );
        // The previous spec on the database mid-rename: nothing to do, no
        // refusal (the new column is the trigger's to fill).
        let mut field_only = base();
        name_renamed_title(&mut field_only, "Room", None);
        // (The model of the renamed spec's schema has `name` loose: only
        // `title` and the trigger matter here.)
        let back = plan(&Schema::of(&spec(&field_only)), &spec(&base()));
        assert!(
            back.steps
                .iter()
                .all(|s| !s.change.contains("title") && !s.change.contains("renaming")),
            "{:?}",
            back.steps.iter().map(|s| &s.change).collect::<Vec<_>>()
        );
        assert!(
            back.notes.iter().any(|n| n.contains("stays in progress")),
            "{:?}",
            back.notes
        );
        // A contraction over a copy cut short copies first, and drops
        // nothing (the next migration does).
        let mut done = v.clone();
        done["entities"]["Ward"]["fields"]["title"]
            .as_object_mut()
            .unwrap()
            .remove("renamedFrom");
        let early = plan(&cut, &spec(&done));
        let changes: Vec<&str> = early.steps.iter().map(|s| s.change.as_str()).collect();
        assert_eq!(
            changes,
            ["copy `name` into `title` in batches, again: the last copy did not finish"]
        );
        assert!(
            early
                .steps
                .iter()
                .all(|s| s.sql.iter().all(|q| !q.contains("DROP COLUMN")))
        );
        assert!(
            early.notes.iter().any(|n| n.contains("did not finish")),
            "{:?}",
            early.notes
        );
        // Contracted once the spec no longer names the former field.
        let mut done = v.clone();
        done["entities"]["Ward"]["fields"]["title"]
            .as_object_mut()
            .unwrap()
            .remove("renamedFrom");
        let p = plan(&Schema::of(&spec(&v)), &spec(&done));
        let s = p.steps.iter().find(|s| s.table == "ward").unwrap();
        assert_eq!(
            s.change,
            "finish renaming `name` to `title`: drop the trigger and the former column"
        );
        assert_eq!(
            (s.risk, s.applies, s.needed),
            (Risk::Safe, Applies::Migrate, false)
        );
        // The view the table's rename left reads every column: dropped
        // around the column's drop, and made again.
        assert_eq!(
            s.sql[2..],
            [
                r#"DROP VIEW IF EXISTS "room";"#,
                r#"ALTER TABLE "ward" DROP COLUMN IF EXISTS "name";"#,
                r#"CREATE VIEW "room" AS SELECT * FROM "ward";"#,
                r#"COMMENT ON VIEW "room" IS 'sinew renamed to ward';"#,
            ]
        );
        // Applied: harmless, and said (for the table; the field's rename
        // is in step until contracted).
        let again = plan(&Schema::of(&spec(&v)), &spec(&v));
        assert!(again.steps.is_empty(), "{}", again.human());
        assert_eq!(again.notes.len(), 1, "{:?}", again.notes);
        assert!(again.notes.iter().all(|n| n.contains("done before")));
        // A former name the database does not have: refused (the rows
        // would stay behind), but for a database with no table yet.
        let mut typo = v.clone();
        typo["entities"]["Ward"]["renamedFrom"] = json!("Rooom");
        let p = steps(&base(), &typo);
        let s = p.steps.iter().find(|s| s.table == "ward").unwrap();
        assert_eq!((s.risk, s.applies), (Risk::Destructive, Applies::Forced));
        assert!(s.why.as_ref().unwrap().contains("no table `rooom`"));
        let fresh = plan(&Schema::default(), &spec(&typo));
        assert!(fresh.steps.iter().all(|s| s.applies == Applies::Always));
    }

    #[test]
    fn bad_renames_are_spec_errors() {
        let mut v = base();
        v["entities"]["Room"]["fields"]["title"] = json!({"type": "string", "renamedFrom": "name"});
        let e = crate::spec::load(&v.to_string()).errors;
        assert!(
            e.iter().any(|d| d.code == "invalid-rename"
                && d.message.contains("`name` is a column of `Room`")),
            "{e:?}"
        );
        let mut v = base();
        v["entities"]["Room"]["fields"]["a"] = json!({"type": "string", "renamedFrom": "old"});
        v["entities"]["Room"]["fields"]["b"] = json!({"type": "string", "renamedFrom": "old"});
        let e = crate::spec::load(&v.to_string()).errors;
        assert!(
            e.iter()
                .any(|d| d.message.contains("both renamed from `old`")),
            "{e:?}"
        );
        let mut v = base();
        v["entities"]["Guest"]["renamedFrom"] = json!("Room");
        let e = crate::spec::load(&v.to_string()).errors;
        assert!(
            e.iter()
                .any(|d| d.message.contains("`Room` has that table")),
            "{e:?}"
        );
    }
}
