//! Tables: a name, a key type and value columns (an Arrow schema), and how their rows are
//! encoded.
//!
//! Every table has a key column named [`KEY_COLUMN`] (of its key type) besides its value columns;
//! batches given to and returned by the engine carry it first. A table created without value
//! columns is a key-value table: one non-nullable `value: Binary` column.

mod row;
mod value;

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

pub use row::{RowCodec, RowDecoder, value_at};
pub use value::Value;

use crate::error::{Error, Result};
use crate::key::{KeyType, TimeUnit};

/// The name of every table's key column in batches.
pub const KEY_COLUMN: &str = "key";

/// The value column of a key-value table.
pub const KV_VALUE_COLUMN: &str = "value";

/// Longest table name accepted.
const MAX_NAME_BYTES: usize = 255;

/// A table's definition.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// The engine's id, carried by write batches (never reused).
    pub id: u32,
    /// The name.
    pub name: String,
    /// The key type.
    pub key_type: KeyType,
    /// The row codec of the value columns.
    pub codec: RowCodec,
    /// The value columns with every column nullable: what segments store (a deletion is a row
    /// of nulls).
    pub stored: SchemaRef,
    /// The key column followed by the value columns: the schema of batches read from the table.
    pub output: SchemaRef,
    /// Whether this is a key-value table: asked on every key-value read, so decided once.
    key_value: bool,
}

impl TableDef {
    /// A checked definition. `schema` `None` makes a key-value table.
    pub fn new(id: u32, name: &str, key_type: KeyType, schema: Option<Schema>) -> Result<Self> {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid_name {
            return Err(Error::InvalidTable(format!(
                "table name {name:?}: 1 to {MAX_NAME_BYTES} characters of [A-Za-z0-9_.-]"
            )));
        }
        let schema = schema.unwrap_or_else(|| {
            Schema::new(vec![Field::new(KV_VALUE_COLUMN, DataType::Binary, false)])
        });
        if schema.fields().is_empty() {
            return Err(Error::InvalidTable(
                "a table needs a value column".to_owned(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for field in schema.fields() {
            let column = field.name();
            if column == KEY_COLUMN || column.starts_with('_') || column.is_empty() {
                return Err(Error::InvalidTable(format!(
                    "column name {column:?}: {KEY_COLUMN:?}, empty names and names starting \
                     with '_' are reserved"
                )));
            }
            if !seen.insert(column.clone()) {
                return Err(Error::InvalidTable(format!(
                    "column {column:?} appears twice"
                )));
            }
            if !row::supported(field.data_type()) {
                return Err(Error::InvalidTable(format!(
                    "column {column:?} has type {}, which tables do not store",
                    field.data_type()
                )));
            }
        }
        let schema = Arc::new(Schema::new(schema.fields().clone()));
        let stored = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let mut output = vec![Field::new(KEY_COLUMN, key_data_type(key_type), false)];
        output.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
        let fields = schema.fields();
        // Non-nullable too: a key-value read answers bytes, and a null has none (a table whose
        // one `value` column may hold nulls is read as the typed table it is).
        let key_value = fields.len() == 1
            && fields[0].name() == KV_VALUE_COLUMN
            && fields[0].data_type() == &DataType::Binary
            && !fields[0].is_nullable();
        Ok(Self {
            id,
            name: name.to_owned(),
            key_type,
            codec: RowCodec::new(schema)?,
            stored,
            output: Arc::new(Schema::new(output)),
            key_value,
        })
    }

    /// The value columns as declared.
    pub fn schema(&self) -> &SchemaRef {
        self.codec.schema()
    }

    /// Whether this is a key-value table.
    pub fn is_key_value(&self) -> bool {
        self.key_value
    }
}

/// The Arrow type of a key column.
pub fn key_data_type(key_type: KeyType) -> DataType {
    match key_type {
        KeyType::U64 => DataType::UInt64,
        KeyType::I64 => DataType::Int64,
        KeyType::Timestamp(unit) => DataType::Timestamp(
            match unit {
                TimeUnit::Second => arrow_schema::TimeUnit::Second,
                TimeUnit::Millisecond => arrow_schema::TimeUnit::Millisecond,
                TimeUnit::Microsecond => arrow_schema::TimeUnit::Microsecond,
                TimeUnit::Nanosecond => arrow_schema::TimeUnit::Nanosecond,
            },
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_refuse_bad_names_and_columns() {
        let kv = TableDef::new(1, "kv", KeyType::U64, None).unwrap();
        assert!(kv.is_key_value());
        let value = |nullable| {
            let schema = Schema::new(vec![Field::new(
                KV_VALUE_COLUMN,
                DataType::Binary,
                nullable,
            )]);
            TableDef::new(1, "kv", KeyType::U64, Some(schema)).unwrap()
        };
        assert!(value(false).is_key_value());
        assert!(
            !value(true).is_key_value(),
            "a nullable value is read as a typed table"
        );
        assert_eq!(kv.output.field(0).name(), KEY_COLUMN);
        for name in ["", "a b", "x/y", &"n".repeat(256)] {
            assert!(
                TableDef::new(1, name, KeyType::U64, None).is_err(),
                "{name:?}"
            );
        }
        let one = |name: &str, data_type: DataType| {
            TableDef::new(
                1,
                "t",
                KeyType::I64,
                Some(Schema::new(vec![Field::new(name, data_type, true)])),
            )
        };
        assert!(one("v", DataType::Float64).is_ok());
        assert!(one("key", DataType::Float64).is_err());
        assert!(one("_lsn", DataType::Float64).is_err());
        assert!(one("v", DataType::Null).is_err());
        assert!(TableDef::new(1, "t", KeyType::U64, Some(Schema::empty())).is_err());
        let twice = Schema::new(vec![
            Field::new("v", DataType::Int8, true),
            Field::new("v", DataType::Int16, true),
        ]);
        assert!(TableDef::new(1, "t", KeyType::U64, Some(twice)).is_err());
    }
}
