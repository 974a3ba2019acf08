//! Table definitions in JSON: key types and value columns, and their Arrow types.

use arrow_schema::{DataType, Field, Schema, TimeUnit as ArrowUnit};
use omendb_core::key::{KeyType, TimeUnit};
use omendb_core::table::TableDef;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// The type of a table's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum KeyTypeName {
    /// Unsigned 64-bit integers.
    #[serde(rename = "u64")]
    U64,
    /// Signed 64-bit integers.
    #[serde(rename = "i64")]
    I64,
    /// Seconds since the Unix epoch (signed).
    #[serde(rename = "timestamp[s]")]
    TimestampS,
    /// Milliseconds since the Unix epoch (signed).
    #[serde(rename = "timestamp[ms]")]
    TimestampMs,
    /// Microseconds since the Unix epoch (signed).
    #[serde(rename = "timestamp[us]")]
    TimestampUs,
    /// Nanoseconds since the Unix epoch (signed).
    #[serde(rename = "timestamp[ns]")]
    TimestampNs,
}

impl From<KeyTypeName> for KeyType {
    fn from(name: KeyTypeName) -> Self {
        match name {
            KeyTypeName::U64 => KeyType::U64,
            KeyTypeName::I64 => KeyType::I64,
            KeyTypeName::TimestampS => KeyType::Timestamp(TimeUnit::Second),
            KeyTypeName::TimestampMs => KeyType::Timestamp(TimeUnit::Millisecond),
            KeyTypeName::TimestampUs => KeyType::Timestamp(TimeUnit::Microsecond),
            KeyTypeName::TimestampNs => KeyType::Timestamp(TimeUnit::Nanosecond),
        }
    }
}

impl KeyTypeName {
    /// The name of an engine key type (`None` for one this API does not know yet).
    pub fn of(key_type: KeyType) -> Option<Self> {
        Some(match key_type {
            KeyType::U64 => KeyTypeName::U64,
            KeyType::I64 => KeyTypeName::I64,
            KeyType::Timestamp(TimeUnit::Second) => KeyTypeName::TimestampS,
            KeyType::Timestamp(TimeUnit::Millisecond) => KeyTypeName::TimestampMs,
            KeyType::Timestamp(TimeUnit::Microsecond) => KeyTypeName::TimestampUs,
            KeyType::Timestamp(TimeUnit::Nanosecond) => KeyTypeName::TimestampNs,
            _ => return None,
        })
    }
}

/// The type of a value column (Arrow's type of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// `true` or `false`.
    Bool,
    /// 8-bit signed integer.
    Int8,
    /// 16-bit signed integer.
    Int16,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 8-bit unsigned integer.
    Uint8,
    /// 16-bit unsigned integer.
    Uint16,
    /// 32-bit unsigned integer.
    Uint32,
    /// 64-bit unsigned integer.
    Uint64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// UTF-8 text.
    Utf8,
    /// Bytes (base64 in JSON).
    Binary,
    /// Days since the Unix epoch.
    Date32,
    /// Seconds since the Unix epoch.
    #[serde(rename = "timestamp[s]")]
    TimestampS,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "timestamp[ms]")]
    TimestampMs,
    /// Microseconds since the Unix epoch.
    #[serde(rename = "timestamp[us]")]
    TimestampUs,
    /// Nanoseconds since the Unix epoch.
    #[serde(rename = "timestamp[ns]")]
    TimestampNs,
}

/// A column type and how to make its Arrow type.
type ColumnTypeEntry = (ColumnType, fn() -> DataType);

/// Every column type with its Arrow type: the one table both directions read.
const COLUMN_TYPES: &[ColumnTypeEntry] = &[
    (ColumnType::Bool, || DataType::Boolean),
    (ColumnType::Int8, || DataType::Int8),
    (ColumnType::Int16, || DataType::Int16),
    (ColumnType::Int32, || DataType::Int32),
    (ColumnType::Int64, || DataType::Int64),
    (ColumnType::Uint8, || DataType::UInt8),
    (ColumnType::Uint16, || DataType::UInt16),
    (ColumnType::Uint32, || DataType::UInt32),
    (ColumnType::Uint64, || DataType::UInt64),
    (ColumnType::Float32, || DataType::Float32),
    (ColumnType::Float64, || DataType::Float64),
    (ColumnType::Utf8, || DataType::Utf8),
    (ColumnType::Binary, || DataType::Binary),
    (ColumnType::Date32, || DataType::Date32),
    (ColumnType::TimestampS, || {
        DataType::Timestamp(ArrowUnit::Second, None)
    }),
    (ColumnType::TimestampMs, || {
        DataType::Timestamp(ArrowUnit::Millisecond, None)
    }),
    (ColumnType::TimestampUs, || {
        DataType::Timestamp(ArrowUnit::Microsecond, None)
    }),
    (ColumnType::TimestampNs, || {
        DataType::Timestamp(ArrowUnit::Nanosecond, None)
    }),
];

impl ColumnType {
    /// The Arrow type.
    pub fn data_type(self) -> DataType {
        COLUMN_TYPES
            .iter()
            .find(|(t, _)| *t == self)
            .map_or(DataType::Null, |(_, data_type)| data_type())
    }

    /// The column type of an Arrow type, if the API names it.
    pub fn of(data_type: &DataType) -> Option<Self> {
        COLUMN_TYPES
            .iter()
            .find(|(_, t)| &t() == data_type)
            .map(|(column, _)| *column)
    }
}

/// A value column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column's name: not `key`, not empty, not starting with `_`.
    #[schema(min_length = 1, pattern = "^[^_]")]
    pub name: String,
    /// The column's type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether the column may hold nulls (default true).
    #[serde(default = "nullable_default")]
    pub nullable: bool,
}

fn nullable_default() -> bool {
    true
}

/// A table to create.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    /// 1 to 255 characters of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,255}$")]
    pub name: String,
    /// The key type.
    pub key_type: KeyTypeName,
    /// The value columns; absent or empty for a key-value table (one `value: binary` column).
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
}

impl CreateTable {
    /// The Arrow schema of the value columns (`None` for a key-value table).
    pub fn schema(&self) -> Option<Schema> {
        if self.columns.is_empty() {
            return None;
        }
        Some(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.column_type.data_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

/// A table's definition as the API describes it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TableInfo {
    /// The name.
    pub name: String,
    /// The key type.
    pub key_type: KeyTypeName,
    /// The value columns, in order.
    pub columns: Vec<ColumnSpec>,
    /// Whether this is a key-value table.
    pub key_value: bool,
}

impl TryFrom<&TableDef> for TableInfo {
    type Error = ApiError;

    fn try_from(def: &TableDef) -> Result<Self, ApiError> {
        let key_type = KeyTypeName::of(def.key_type).ok_or_else(|| {
            ApiError::internal(format!(
                "table {:?} has a key type the API cannot name",
                def.name
            ))
        })?;
        let columns = def
            .schema()
            .fields()
            .iter()
            .map(|f| {
                ColumnType::of(f.data_type())
                    .map(|column_type| ColumnSpec {
                        name: f.name().clone(),
                        column_type,
                        nullable: f.is_nullable(),
                    })
                    .ok_or_else(|| {
                        ApiError::internal(format!(
                            "column {:?} has a type the API cannot name",
                            f.name()
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: def.name.clone(),
            key_type,
            columns,
            key_value: def.is_key_value(),
        })
    }
}

/// The names of the tables.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TableList {
    /// The names, sorted.
    pub tables: Vec<String>,
}
