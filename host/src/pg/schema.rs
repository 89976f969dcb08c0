//! What the Postgres backend knows of a spec: each entity's table and its
//! typed columns, and how JSON values cross into SQL and back.
//!
//! Every value travels as text and is cast in SQL (`$1::text::bigint`), and
//! every column comes back as text (timestamps as microseconds since the
//! epoch), so one code path handles every type, and rows come back in the
//! same shape and key order as the in-memory store gives them.

use serde_json::Value;
use sinew_core::expr::value::{format_timestamp, parse_timestamp};
use sinew_core::migrate::{ident, table_name};
use sinew_core::spec::{FieldType, Spec};
use std::collections::HashMap;

/// A column's type, as the backend converts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `text`.
    Text,
    /// `uuid`.
    Uuid,
    /// `bigint`.
    Integer,
    /// `double precision`.
    Number,
    /// `boolean`.
    Boolean,
    /// `timestamptz`.
    Timestamp,
    /// `jsonb`.
    Json,
}

impl Ty {
    fn of(t: FieldType) -> Ty {
        match t {
            FieldType::String => Ty::Text,
            FieldType::Integer => Ty::Integer,
            FieldType::Boolean => Ty::Boolean,
            FieldType::Number => Ty::Number,
            FieldType::Timestamp => Ty::Timestamp,
            FieldType::Uuid | FieldType::Ref => Ty::Uuid,
            FieldType::Json => Ty::Json,
        }
    }

    /// The SQL type a `$n::text` parameter is cast to.
    pub fn sql(self) -> &'static str {
        match self {
            Ty::Text => "text",
            Ty::Uuid => "uuid",
            Ty::Integer => "bigint",
            Ty::Number => "double precision",
            Ty::Boolean => "boolean",
            Ty::Timestamp => "timestamptz",
            Ty::Json => "jsonb",
        }
    }

    /// A JSON value as the text of a parameter of this type; `Err` when the
    /// value cannot be one (a string for an integer column).
    pub fn encode(self, v: &Value) -> Result<Option<String>, String> {
        let bad = || format!("{v} is not a valid {}", self.sql());
        Ok(Some(match (self, v) {
            (_, Value::Null) => return Ok(None),
            (Ty::Json, v) => v.to_string(),
            (Ty::Text, Value::String(s)) => s.clone(),
            (Ty::Uuid, Value::String(s)) if sinew_core::hash::is_uuid(s) => s.clone(),
            (Ty::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) => i.to_string(),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (f as i64).to_string(),
                    _ => return Err(bad()),
                },
            },
            (Ty::Number, Value::Number(n)) => n.to_string(),
            (Ty::Boolean, Value::Bool(b)) => b.to_string(),
            (Ty::Timestamp, Value::String(s)) => match parse_timestamp(s) {
                Some(t) => format_timestamp(t),
                None => return Err(bad()),
            },
            _ => return Err(bad()),
        }))
    }

    /// The select-list expression of a column of this type.
    pub(crate) fn select(self, col: &str) -> String {
        match self {
            Ty::Timestamp => format!("floor(extract(epoch from {col}) * 1000000)::bigint::text"),
            _ => format!("{col}::text"),
        }
    }

    /// A column's text back to JSON.
    pub fn decode(self, text: Option<&str>) -> Value {
        let Some(t) = text else {
            return Value::Null;
        };
        match self {
            Ty::Text | Ty::Uuid => Value::String(t.to_owned()),
            Ty::Integer => t.parse::<i64>().map_or(Value::Null, Value::from),
            Ty::Number => match t.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => t
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number),
            },
            Ty::Boolean => Value::Bool(t == "true"),
            Ty::Timestamp => t
                .parse::<i64>()
                .map_or(Value::Null, |us| Value::String(format_timestamp(us))),
            Ty::Json => serde_json::from_str(t).unwrap_or(Value::Null),
        }
    }
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Its name in rows.
    pub name: String,
    /// Its quoted SQL identifier.
    pub sql: String,
    /// Its type.
    pub ty: Ty,
}

/// One entity's table.
#[derive(Debug, Clone)]
pub struct Table {
    /// The quoted table name.
    pub sql: String,
    /// Columns in row order: the implicit ones, `status`, then the fields.
    pub columns: Vec<Column>,
    index: HashMap<String, usize>,
    /// The select list of every column, in order.
    pub select: String,
}

impl Table {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.index.get(name).and_then(|&i| self.columns.get(i))
    }

    /// How many columns [`Table::row`] reads (the first ones of a result).
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// A row from a result row whose columns are the select list.
    pub fn row(&self, r: &tokio_postgres::Row) -> sinew_core::ports::Row {
        let mut row = sinew_core::ports::Row::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            let text: Option<&str> = r.try_get(i).ok().flatten();
            row.insert(c.name.clone(), c.ty.decode(text));
        }
        row
    }
}

/// Every entity's table, and the unique indexes by name.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    tables: HashMap<String, Table>,
    /// Unique index name → (entity, field).
    pub unique: HashMap<String, (String, String)>,
}

impl Schema {
    /// The schema of a spec (as `sinew_core::migrate::plan` creates it).
    pub fn of(spec: &Spec) -> Schema {
        let mut schema = Schema::default();
        for (name, e) in &spec.entities {
            let table = table_name(name);
            let mut columns = vec![
                ("id", Ty::Uuid),
                ("version", Ty::Integer),
                ("created_at", Ty::Timestamp),
                ("updated_at", Ty::Timestamp),
                ("deleted_at", Ty::Timestamp),
            ]
            .into_iter()
            .map(|(n, ty)| Column {
                name: n.to_owned(),
                sql: ident(n),
                ty,
            })
            .collect::<Vec<_>>();
            if e.status.is_some() {
                columns.push(Column {
                    name: "status".into(),
                    sql: ident("status"),
                    ty: Ty::Text,
                });
            }
            for (f, field) in &e.fields {
                columns.push(Column {
                    name: f.clone(),
                    sql: ident(f),
                    ty: Ty::of(field.ty),
                });
                if field.unique {
                    // Postgres cuts identifiers to 63 bytes.
                    let mut index = format!("{table}_{f}_key");
                    let mut cut = index.len().min(63);
                    while !index.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    index.truncate(cut);
                    schema.unique.insert(index, (name.clone(), f.clone()));
                }
            }
            for ix in e.indexes.iter().filter(|ix| ix.unique) {
                let index = sinew_core::migrate::index_name(&table, &ix.fields, true);
                schema
                    .unique
                    .insert(index, (name.clone(), ix.fields.join(",")));
            }
            let select = columns
                .iter()
                .map(|c| c.ty.select(&c.sql))
                .collect::<Vec<_>>()
                .join(", ");
            let index = columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
            schema.tables.insert(
                name.clone(),
                Table {
                    sql: ident(&table),
                    columns,
                    index,
                    select,
                },
            );
        }
        schema
    }

    /// An entity's table.
    pub fn table(&self, entity: &str) -> Option<&Table> {
        self.tables.get(entity)
    }

    /// Every table.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tables.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_cross_as_text() {
        assert_eq!(Ty::Integer.encode(&json!(5)).unwrap().unwrap(), "5");
        assert_eq!(Ty::Integer.encode(&json!(5.0)).unwrap().unwrap(), "5");
        assert!(Ty::Integer.encode(&json!(5.5)).is_err());
        assert!(Ty::Integer.encode(&json!("5")).is_err());
        assert!(Ty::Uuid.encode(&json!("nope")).is_err());
        assert_eq!(
            Ty::Json.encode(&json!({"a": [1]})).unwrap().unwrap(),
            r#"{"a":[1]}"#
        );
        assert_eq!(Ty::Boolean.encode(&Value::Null).unwrap(), None);
        assert_eq!(Ty::Number.decode(Some("5")), json!(5));
        assert_eq!(Ty::Number.decode(Some("2.5")), json!(2.5));
        assert_eq!(Ty::Boolean.decode(Some("false")), json!(false));
        assert_eq!(Ty::Timestamp.decode(Some("0")), json!(format_timestamp(0)));
        assert_eq!(Ty::Text.decode(None), Value::Null);
    }
}
