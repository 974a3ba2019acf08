//! Rows and keys in JSON: a row is an object with `key` and one property per value column;
//! binary values travel as base64 (standard alphabet, padded), timestamps and dates as integers
//! in their unit, floats that JSON cannot hold (NaN, infinities) as `null`.

use arrow_array::RecordBatch;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use omendb_core::key::{Key, KeyType};
use omendb_core::table::{KEY_COLUMN, TableDef, Value, value_at};
use serde_json::{Map, Number, Value as Json};

use crate::error::ApiError;

/// The schema of a key in the OpenAPI document: an integer from `i64::MIN` to `u64::MAX` (which
/// part of it is valid depends on the table's key type).
pub struct JsonKey;

impl utoipa::PartialSchema for JsonKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(i64::MIN as f64))
            .maximum(Some(u64::MAX as f64))
            .description(Some(
                "A key: an integer of the table's key type (u64, i64, or a timestamp in its unit)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for JsonKey {}

/// A row as JSON: an object whose properties keep the table's column order (`key` first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonRow(pub Vec<(String, Json)>);

impl serde::Serialize for JsonRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for JsonRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Json>::deserialize(deserializer)?;
        Ok(JsonRow(map.into_iter().collect()))
    }
}

/// The key `json` gives for a table keyed by `key_type`.
pub fn key_from_json(key_type: KeyType, json: &Json) -> Result<Key, ApiError> {
    let key = match key_type {
        KeyType::U64 => integer(json, json.as_u64()).map(Key::U64),
        _ => integer(json, json.as_i64()).map(Key::I64),
    };
    key.ok_or_else(|| {
        ApiError::bad_input(format!(
            "key {json}: expected an integer of type {}",
            key_type.name()
        ))
    })
}

/// The key a path segment gives for a table keyed by `key_type`: a JSON integer's digits
/// (`-0` is 0, as in a body; no `+`, no leading zeros). Rust's own parsing took `+5` and `007`
/// and refused `-0` for `u64` keys, which a body's key takes.
pub fn key_from_text(key_type: KeyType, text: &str) -> Result<Key, ApiError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let json_integer = digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || (!digits.is_empty() && !digits.starts_with('0')));
    let key = match key_type {
        _ if !json_integer => None,
        KeyType::U64 if text == "-0" => Some(Key::U64(0)),
        KeyType::U64 => text.parse().ok().map(Key::U64),
        _ => text.parse().ok().map(Key::I64),
    };
    key.ok_or_else(|| {
        ApiError::bad_input(format!(
            "key {text:?}: expected an integer of type {}",
            key_type.name()
        ))
    })
}

/// The JSON form of a key.
pub fn key_to_json(key: Key) -> Json {
    match key {
        Key::U64(k) => Json::from(k),
        Key::I64(k) => Json::from(k),
    }
}

/// The key and the values (in column order) of a JSON row; a missing column is null.
pub fn row_from_json(def: &TableDef, row: &Json) -> Result<(Key, Vec<Value>), ApiError> {
    let Json::Object(row) = row else {
        return Err(ApiError::bad_input(format!(
            "a row must be an object with {KEY_COLUMN:?} and the value columns, not {}",
            kind_of(row)
        )));
    };
    let key = row
        .get(KEY_COLUMN)
        .ok_or_else(|| ApiError::bad_input(format!("a row without {KEY_COLUMN:?}")))?;
    let key = key_from_json(def.key_type, key)?;
    let fields = def.schema().fields();
    if let Some(unknown) = row
        .keys()
        .find(|name| *name != KEY_COLUMN && fields.find(name).is_none())
    {
        return Err(ApiError::bad_input(format!(
            "table {:?} has no column {unknown:?}",
            def.name
        )));
    }
    let values = fields
        .iter()
        .map(|field| {
            let json = row.get(field.name()).unwrap_or(&Json::Null);
            value_from_json(field.name(), field.data_type(), json)
        })
        .collect::<Result<_, _>>()?;
    Ok((key, values))
}

/// `exact`, the integer `json` holds, or 0 for JSON's `-0`, which the parser reads as the float
/// -0.0 (an integer key or column refused it as a float).
fn integer<T: Default>(json: &Json, exact: Option<T>) -> Option<T> {
    exact.or_else(|| {
        json.as_f64()
            .is_some_and(|f| f == 0.0 && f.is_sign_negative())
            .then(T::default)
    })
}

/// The engine value of `json` for a column of `data_type`; ranges are checked by the engine.
fn value_from_json(
    column: &str,
    data_type: &arrow_schema::DataType,
    json: &Json,
) -> Result<Value, ApiError> {
    use arrow_schema::DataType as T;
    let value = match (data_type, json) {
        (_, Json::Null) => Some(Value::Null),
        (T::Boolean, Json::Bool(b)) => Some(Value::Bool(*b)),
        (T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64, Json::Number(n)) => {
            integer(json, n.as_u64()).map(Value::UInt)
        }
        (
            T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::Date32 | T::Date64 | T::Timestamp(_, _),
            Json::Number(n),
        ) => integer(json, n.as_i64()).map(Value::Int),
        (T::Float32 | T::Float64, Json::Number(n)) => n.as_f64().map(Value::Float),
        (T::Utf8 | T::LargeUtf8, Json::String(s)) => Some(Value::Str(s.clone())),
        (T::Binary | T::LargeBinary, Json::String(s)) => {
            let bytes = BASE64
                .decode(s)
                .map_err(|e| ApiError::bad_input(format!("column {column:?}: not base64 ({e})")))?;
            Some(Value::Bytes(bytes.into()))
        }
        _ => None,
    };
    value.ok_or_else(|| {
        ApiError::bad_input(format!(
            "column {column:?} of type {data_type}: {} is not a value of it",
            kind_of(json)
        ))
    })
}

/// The JSON form of an engine value.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(BASE64.encode(b)),
    }
}

/// The JSON row of `key` and `values` (in column order) of a table.
pub fn row_to_json(def: &TableDef, key: Key, values: &[Value]) -> JsonRow {
    let mut row = Vec::with_capacity(values.len() + 1);
    row.push((KEY_COLUMN.to_owned(), key_to_json(key)));
    for (field, value) in def.schema().fields().iter().zip(values) {
        row.push((field.name().clone(), value_to_json(value)));
    }
    JsonRow(row)
}

/// The rows of a batch as JSON objects, one property per column.
pub fn batch_to_json(batch: &RecordBatch) -> Vec<JsonRow> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|i| {
            JsonRow(
                schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(field, column)| {
                        (field.name().clone(), value_to_json(&value_at(column, i)))
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The key of row `i` of a batch read from a table (its first column is the key).
pub fn key_at(batch: &RecordBatch, i: usize) -> Option<Key> {
    match value_at(batch.column(0).as_ref(), i) {
        Value::UInt(k) => Some(Key::U64(k)),
        Value::Int(k) => Some(Key::I64(k)),
        _ => None,
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn path_keys_are_written_as_json_integers() {
        assert_eq!(key_from_text(KeyType::U64, "0").unwrap(), Key::U64(0));
        assert_eq!(key_from_text(KeyType::U64, "-0").unwrap(), Key::U64(0));
        assert_eq!(
            key_from_text(KeyType::U64, "18446744073709551615").unwrap(),
            Key::U64(u64::MAX)
        );
        assert_eq!(key_from_text(KeyType::I64, "-12").unwrap(), Key::I64(-12));
        assert_eq!(key_from_text(KeyType::I64, "-0").unwrap(), Key::I64(0));
        for bad in [
            "",
            "-",
            "+5",
            "007",
            "-01",
            "1.0",
            "1e3",
            " 1",
            "18446744073709551616",
            "-1",
            "x",
        ] {
            assert!(key_from_text(KeyType::U64, bad).is_err(), "{bad:?}");
        }
        assert!(key_from_text(KeyType::I64, "9223372036854775808").is_err());
    }
}
