//! The row codec: one row of a table's value columns as the bytes the WAL and the memtable hold
//! (format: `docs/file-formats.md`, "Row"). It is ours rather than Arrow's row format because
//! WAL records must stay readable by every later build, and `arrow-row` promises no stable
//! encoding across versions.
//!
//! Per column, in schema order: a tag byte (`0` null, `1` present), then for a present value its
//! little-endian bytes at the column's width (`bool` one byte), or for text and binary a `u32`
//! length and the bytes. Timestamps and `Date64` are stored as `i64`, `Date32` as `i32`.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder,
    Int32Builder, Int64Builder, LargeBinaryBuilder, LargeStringBuilder, StringBuilder,
    UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, make_array};
use arrow_schema::{DataType, Field, SchemaRef};
use bytes::Bytes;

use super::Value;
use crate::error::{Error, Result};

/// How a column is stored in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Str,
    LargeStr,
    Bin,
    LargeBin,
}

impl Kind {
    /// The storage kind of a column type, or `None` if rows cannot hold it. Timestamps and dates
    /// are stored as the integers Arrow keeps them as.
    fn of(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Boolean => Kind::Bool,
            DataType::Int8 => Kind::I8,
            DataType::Int16 => Kind::I16,
            DataType::Int32 | DataType::Date32 => Kind::I32,
            DataType::Int64 | DataType::Date64 | DataType::Timestamp(_, _) => Kind::I64,
            DataType::UInt8 => Kind::U8,
            DataType::UInt16 => Kind::U16,
            DataType::UInt32 => Kind::U32,
            DataType::UInt64 => Kind::U64,
            DataType::Float32 => Kind::F32,
            DataType::Float64 => Kind::F64,
            DataType::Utf8 => Kind::Str,
            DataType::LargeUtf8 => Kind::LargeStr,
            DataType::Binary => Kind::Bin,
            DataType::LargeBinary => Kind::LargeBin,
            _ => return None,
        })
    }

    /// The Arrow type the kind's arrays are built as (the column's own type if it is the same
    /// layout under another name, such as a timestamp).
    fn storage_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::I8 => DataType::Int8,
            Kind::I16 => DataType::Int16,
            Kind::I32 => DataType::Int32,
            Kind::I64 => DataType::Int64,
            Kind::U8 => DataType::UInt8,
            Kind::U16 => DataType::UInt16,
            Kind::U32 => DataType::UInt32,
            Kind::U64 => DataType::UInt64,
            Kind::F32 => DataType::Float32,
            Kind::F64 => DataType::Float64,
            Kind::Str => DataType::Utf8,
            Kind::LargeStr => DataType::LargeUtf8,
            Kind::Bin => DataType::Binary,
            Kind::LargeBin => DataType::LargeBinary,
        }
    }

    /// Bytes of a fixed-width value, `None` for text and binary.
    fn width(self) -> Option<usize> {
        Some(match self {
            Kind::Bool | Kind::I8 | Kind::U8 => 1,
            Kind::I16 | Kind::U16 => 2,
            Kind::I32 | Kind::U32 | Kind::F32 => 4,
            Kind::I64 | Kind::U64 | Kind::F64 => 8,
            Kind::Str | Kind::LargeStr | Kind::Bin | Kind::LargeBin => return None,
        })
    }
}

/// Whether rows can hold a column of this type.
pub(crate) fn supported(data_type: &DataType) -> bool {
    Kind::of(data_type).is_some()
}

/// Encodes and decodes the rows of one value schema.
#[derive(Clone, Debug)]
pub struct RowCodec {
    schema: SchemaRef,
    kinds: Vec<Kind>,
}

const NULL: u8 = 0;
const PRESENT: u8 = 1;

impl RowCodec {
    /// The codec of `schema`'s columns; an unsupported column type is an error.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let kinds = schema
            .fields()
            .iter()
            .map(|field| {
                Kind::of(field.data_type()).ok_or_else(|| {
                    Error::InvalidTable(format!(
                        "column {:?} has type {}, which tables do not store",
                        field.name(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { schema, kinds })
    }

    /// The value schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Encodes one row given as values in column order, checking count, types, ranges and
    /// nullability; appends to `out` only if the whole row is valid.
    pub fn encode_values(&self, values: &[Value], out: &mut Vec<u8>) -> Result<()> {
        if values.len() != self.kinds.len() {
            return Err(Error::SchemaMismatch(format!(
                "{} values for {} columns",
                values.len(),
                self.kinds.len()
            )));
        }
        let start = out.len();
        for ((field, &kind), value) in self.schema.fields().iter().zip(&self.kinds).zip(values) {
            if let Err(err) = put_value(field, kind, value, out) {
                out.truncate(start);
                return Err(err);
            }
        }
        Ok(())
    }

    /// The columns of a batch in storage form, checked against the schema by name, type and
    /// nullability. `columns[i]` must be the array for the schema's column `i`.
    pub fn storage_columns(&self, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        self.schema
            .fields()
            .iter()
            .zip(&self.kinds)
            .zip(columns)
            .map(|((field, &kind), array)| {
                if array.data_type() != field.data_type() {
                    return Err(Error::SchemaMismatch(format!(
                        "column {:?} is {}, not {}",
                        field.name(),
                        array.data_type(),
                        field.data_type()
                    )));
                }
                if !field.is_nullable() && array.null_count() > 0 {
                    return Err(Error::NullInNonNullable {
                        column: field.name().clone(),
                    });
                }
                retype(array, &kind.storage_type())
            })
            .collect()
    }

    /// Encodes row `row` of columns returned by [`RowCodec::storage_columns`].
    pub fn encode_row(&self, columns: &[ArrayRef], row: usize, out: &mut Vec<u8>) {
        for (&kind, array) in self.kinds.iter().zip(columns) {
            if array.is_null(row) {
                out.push(NULL);
                continue;
            }
            out.push(PRESENT);
            put_array(kind, array.as_ref(), row, out);
        }
    }

    /// Decodes rows into arrays of the schema's columns. A row that does not parse is
    /// [`Error::Corrupt`] (rows are only decoded from the log or memtable, which checked them).
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let mut decoder = self.decoder();
        for row in rows {
            decoder.push(row)?;
        }
        decoder.finish()
    }

    /// A decoder that takes rows one at a time, for rows that are only lent (a memtable's, while
    /// it is walked): each is decoded into the columns as it comes, not copied first.
    pub fn decoder(&self) -> RowDecoder<'_> {
        RowDecoder {
            builders: self.kinds.iter().map(|&k| Builder::new(k)).collect(),
            codec: self,
        }
    }

    /// Decodes one row into values.
    pub fn decode_values(&self, row: &[u8]) -> Result<Vec<Value>> {
        let columns = self.decode([row])?;
        Ok(columns
            .iter()
            .map(|array| value_at(array.as_ref(), 0))
            .collect())
    }

    /// The bytes of column `column`'s value in `row` (`None` for a null), read in place: what
    /// an aggregate folding memtable rows reads instead of decoding them. The whole row's
    /// layout is checked as [`RowDecoder::push`] checks it, except that text columns beside
    /// the one read are not checked for UTF-8; a column past the schema is an error. Inlined
    /// into an aggregate's loop over a memtable stretch, where the call was a third of a row's
    /// instructions.
    #[inline(always)]
    pub fn cell<'a>(&self, row: &'a [u8], column: usize) -> Result<Option<&'a [u8]>> {
        if column >= self.kinds.len() {
            return Err(corrupt("no such column"));
        }
        let (mut rest, mut cell) = (row, None);
        for (i, &kind) in self.kinds.iter().enumerate() {
            let (value, after) = split_value(kind, rest)?;
            if i == column {
                cell = value;
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(corrupt("bytes after the last column"));
        }
        Ok(cell)
    }

    /// A numeric column's value, from its bytes in a row (see [`RowCodec::cell`]), as an
    /// aggregate of a float column sums it: `None` if the column is not numeric.
    #[inline]
    pub fn number(&self, column: usize, cell: &[u8]) -> Option<f64> {
        match self.kinds.get(column)? {
            Kind::F32 => Some(f64::from(f32::from_le_bytes(cell.try_into().ok()?))),
            Kind::F64 => Some(f64::from_le_bytes(cell.try_into().ok()?)),
            _ => self.integer(column, cell).map(|v| v as f64),
        }
    }

    /// The value of an integer column's cell, exactly; `None` for a column of another type (or a
    /// cell of the wrong width).
    #[inline]
    pub fn integer(&self, column: usize, cell: &[u8]) -> Option<i128> {
        macro_rules! le {
            ($t:ty) => {{
                let raw: [u8; std::mem::size_of::<$t>()] = cell.try_into().ok()?;
                i128::from(<$t>::from_le_bytes(raw))
            }};
        }
        Some(match self.kinds.get(column)? {
            Kind::I8 => le!(i8),
            Kind::I16 => le!(i16),
            Kind::I32 => le!(i32),
            Kind::I64 => le!(i64),
            Kind::U8 => le!(u8),
            Kind::U16 => le!(u16),
            Kind::U32 => le!(u32),
            Kind::U64 => le!(u64),
            _ => return None,
        })
    }

    /// The single binary value of a key-value table's row, without copying it.
    pub fn kv_value(row: &Bytes) -> Result<Bytes> {
        let len = Self::kv_value_of(row)?.len();
        // The value is the row's last `len` bytes.
        Ok(row.slice(row.len() - len..))
    }

    /// The single binary value of a key-value table's row, borrowed.
    pub fn kv_value_of(row: &[u8]) -> Result<&[u8]> {
        match row.split_first() {
            Some((&PRESENT, rest)) => {
                let (len, value) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| corrupt("key-value row length"))?;
                if value.len() != u32::from_le_bytes(*len) as usize {
                    return Err(corrupt("key-value row length"));
                }
                Ok(value)
            }
            _ => Err(corrupt("key-value row without a value")),
        }
    }
}

/// Rows decoded into one builder per column (see [`RowCodec::decoder`]). After an error the
/// columns hold part of a row: the decoder is to be dropped.
pub struct RowDecoder<'a> {
    codec: &'a RowCodec,
    builders: Vec<Builder>,
}

impl RowDecoder<'_> {
    /// Decodes one more row. A row that does not parse is [`Error::Corrupt`].
    pub fn push(&mut self, row: &[u8]) -> Result<()> {
        let mut rest = row;
        for builder in &mut self.builders {
            rest = builder.take(rest)?;
        }
        if !rest.is_empty() {
            return Err(corrupt("bytes after the last column"));
        }
        Ok(())
    }

    /// The decoded rows as arrays of the schema's columns.
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        self.builders
            .into_iter()
            .zip(self.codec.schema.fields())
            .map(|(builder, field)| retype(&builder.finish(), field.data_type()))
            .collect()
    }
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("row: {what}"))
}

/// `array` as `data_type` when both have the same layout (a timestamp as `i64` and back).
fn retype(array: &ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    if array.data_type() == data_type {
        return Ok(Arc::clone(array));
    }
    let data = array
        .to_data()
        .into_builder()
        .data_type(data_type.clone())
        .build()?;
    Ok(make_array(data))
}

fn put_array(kind: Kind, array: &dyn Array, row: usize, out: &mut Vec<u8>) {
    macro_rules! fixed {
        ($t:ty) => {
            out.extend_from_slice(&array.as_primitive::<$t>().value(row).to_le_bytes())
        };
    }
    match kind {
        Kind::Bool => out.push(u8::from(array.as_boolean().value(row))),
        Kind::I8 => fixed!(Int8Type),
        Kind::I16 => fixed!(Int16Type),
        Kind::I32 => fixed!(Int32Type),
        Kind::I64 => fixed!(Int64Type),
        Kind::U8 => fixed!(UInt8Type),
        Kind::U16 => fixed!(UInt16Type),
        Kind::U32 => fixed!(UInt32Type),
        Kind::U64 => fixed!(UInt64Type),
        Kind::F32 => fixed!(Float32Type),
        Kind::F64 => fixed!(Float64Type),
        Kind::Str => put_bytes(array.as_string::<i32>().value(row).as_bytes(), out),
        Kind::LargeStr => put_bytes(array.as_string::<i64>().value(row).as_bytes(), out),
        Kind::Bin => put_bytes(array.as_binary::<i32>().value(row), out),
        Kind::LargeBin => put_bytes(array.as_binary::<i64>().value(row), out),
    }
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    // Callers check row sizes against a limit far below 4 GiB before encoding.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_value(field: &Field, kind: Kind, value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let mismatch = || {
        Error::SchemaMismatch(format!(
            "column {:?} is {}; a {} value does not fit it",
            field.name(),
            field.data_type(),
            value.type_name()
        ))
    };
    if let Value::Null = value {
        if !field.is_nullable() {
            return Err(Error::NullInNonNullable {
                column: field.name().clone(),
            });
        }
        out.push(NULL);
        return Ok(());
    }
    out.push(PRESENT);
    macro_rules! int {
        ($t:ty) => {{
            let v: $t = match *value {
                Value::Int(v) => <$t>::try_from(v).map_err(|_| mismatch())?,
                Value::UInt(v) => <$t>::try_from(v).map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            out.extend_from_slice(&v.to_le_bytes());
        }};
    }
    match kind {
        Kind::Bool => match *value {
            Value::Bool(v) => out.push(u8::from(v)),
            _ => return Err(mismatch()),
        },
        Kind::I8 => int!(i8),
        Kind::I16 => int!(i16),
        Kind::I32 => int!(i32),
        Kind::I64 => int!(i64),
        Kind::U8 => int!(u8),
        Kind::U16 => int!(u16),
        Kind::U32 => int!(u32),
        Kind::U64 => int!(u64),
        Kind::F32 => match *value {
            // Narrowing to f32 is what a Float32 column means; a finite value beyond its range
            // would become an infinity, which is a value out of the column's range.
            Value::Float(v) if v.is_finite() && !(v as f32).is_finite() => {
                return Err(mismatch());
            }
            Value::Float(v) => out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => return Err(mismatch()),
        },
        Kind::F64 => match *value {
            Value::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(mismatch()),
        },
        Kind::Str | Kind::LargeStr => match value {
            Value::Str(v) => put_bytes(v.as_bytes(), out),
            _ => return Err(mismatch()),
        },
        Kind::Bin | Kind::LargeBin => match value {
            Value::Bytes(v) => put_bytes(v, out),
            Value::Str(v) => put_bytes(v.as_bytes(), out),
            _ => return Err(mismatch()),
        },
    }
    Ok(())
}

/// Splits one value of `kind` from the front of `bytes`: its bytes (`None` for a null) and
/// the rest. Inlined: it is the decoder's per-value step, and a call returning a pair of
/// slices through memory cost the memtable scan 8% more instructions.
#[inline(always)]
fn split_value(kind: Kind, bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8])> {
    let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("truncated"))?;
    if tag == NULL {
        return Ok((None, rest));
    }
    if tag != PRESENT {
        return Err(corrupt("unknown tag"));
    }
    let (value, rest) = match kind.width() {
        Some(width) => {
            if rest.len() < width {
                return Err(corrupt("truncated"));
            }
            rest.split_at(width)
        }
        None => {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("truncated"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if rest.len() < len {
                return Err(corrupt("truncated"));
            }
            rest.split_at(len)
        }
    };
    Ok((Some(value), rest))
}

/// A column being decoded.
enum Builder {
    Bool(BooleanBuilder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    LargeStr(LargeStringBuilder),
    Bin(BinaryBuilder),
    LargeBin(LargeBinaryBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
            Kind::I8 => Builder::I8(Int8Builder::new()),
            Kind::I16 => Builder::I16(Int16Builder::new()),
            Kind::I32 => Builder::I32(Int32Builder::new()),
            Kind::I64 => Builder::I64(Int64Builder::new()),
            Kind::U8 => Builder::U8(UInt8Builder::new()),
            Kind::U16 => Builder::U16(UInt16Builder::new()),
            Kind::U32 => Builder::U32(UInt32Builder::new()),
            Kind::U64 => Builder::U64(UInt64Builder::new()),
            Kind::F32 => Builder::F32(Float32Builder::new()),
            Kind::F64 => Builder::F64(Float64Builder::new()),
            Kind::Str => Builder::Str(StringBuilder::new()),
            Kind::LargeStr => Builder::LargeStr(LargeStringBuilder::new()),
            Kind::Bin => Builder::Bin(BinaryBuilder::new()),
            Kind::LargeBin => Builder::LargeBin(LargeBinaryBuilder::new()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Builder::Bool(_) => Kind::Bool,
            Builder::I8(_) => Kind::I8,
            Builder::I16(_) => Kind::I16,
            Builder::I32(_) => Kind::I32,
            Builder::I64(_) => Kind::I64,
            Builder::U8(_) => Kind::U8,
            Builder::U16(_) => Kind::U16,
            Builder::U32(_) => Kind::U32,
            Builder::U64(_) => Kind::U64,
            Builder::F32(_) => Kind::F32,
            Builder::F64(_) => Kind::F64,
            Builder::Str(_) => Kind::Str,
            Builder::LargeStr(_) => Kind::LargeStr,
            Builder::Bin(_) => Kind::Bin,
            Builder::LargeBin(_) => Kind::LargeBin,
        }
    }

    /// Decodes one value from the front of `bytes` and returns the rest.
    fn take<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8]> {
        let (value, rest) = split_value(self.kind(), bytes)?;
        let Some(value) = value else {
            self.append_null();
            return Ok(rest);
        };
        macro_rules! le {
            ($b:expr, $t:ty) => {{
                // `value` has exactly the width of `$t` (split above).
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(value);
                $b.append_value(<$t>::from_le_bytes(raw))
            }};
        }
        match self {
            Builder::Bool(b) => b.append_value(value[0] != 0),
            Builder::I8(b) => le!(b, i8),
            Builder::I16(b) => le!(b, i16),
            Builder::I32(b) => le!(b, i32),
            Builder::I64(b) => le!(b, i64),
            Builder::U8(b) => le!(b, u8),
            Builder::U16(b) => le!(b, u16),
            Builder::U32(b) => le!(b, u32),
            Builder::U64(b) => le!(b, u64),
            Builder::F32(b) => le!(b, f32),
            Builder::F64(b) => le!(b, f64),
            Builder::Str(b) => {
                b.append_value(std::str::from_utf8(value).map_err(|_| corrupt("invalid UTF-8"))?)
            }
            Builder::LargeStr(b) => {
                b.append_value(std::str::from_utf8(value).map_err(|_| corrupt("invalid UTF-8"))?)
            }
            Builder::Bin(b) => b.append_value(value),
            Builder::LargeBin(b) => b.append_value(value),
        }
        Ok(rest)
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::I8(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::U8(b) => b.append_null(),
            Builder::U16(b) => b.append_null(),
            Builder::U32(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::LargeStr(b) => b.append_null(),
            Builder::Bin(b) => b.append_null(),
            Builder::LargeBin(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::I8(mut b) => Arc::new(b.finish()),
            Builder::I16(mut b) => Arc::new(b.finish()),
            Builder::I32(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::U8(mut b) => Arc::new(b.finish()),
            Builder::U16(mut b) => Arc::new(b.finish()),
            Builder::U32(mut b) => Arc::new(b.finish()),
            Builder::U64(mut b) => Arc::new(b.finish()),
            Builder::F32(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::LargeStr(mut b) => Arc::new(b.finish()),
            Builder::Bin(mut b) => Arc::new(b.finish()),
            Builder::LargeBin(mut b) => Arc::new(b.finish()),
        }
    }
}

/// The value at `row` of an array of a supported type.
pub fn value_at(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let Some(kind) = Kind::of(array.data_type()) else {
        return Value::Null;
    };
    let Ok(array) = retype(&make_array(array.to_data()), &kind.storage_type()) else {
        return Value::Null;
    };
    let array = array.as_ref();
    // Defined here so that `array` is the storage-typed one.
    macro_rules! int {
        ($t:ty) => {
            Value::Int(i64::from(array.as_primitive::<$t>().value(row)))
        };
    }
    macro_rules! uint {
        ($t:ty) => {
            Value::UInt(u64::from(array.as_primitive::<$t>().value(row)))
        };
    }
    match kind {
        Kind::Bool => Value::Bool(array.as_boolean().value(row)),
        Kind::I8 => int!(Int8Type),
        Kind::I16 => int!(Int16Type),
        Kind::I32 => int!(Int32Type),
        Kind::I64 => int!(Int64Type),
        Kind::U8 => uint!(UInt8Type),
        Kind::U16 => uint!(UInt16Type),
        Kind::U32 => uint!(UInt32Type),
        Kind::U64 => uint!(UInt64Type),
        Kind::F32 => Value::Float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        Kind::F64 => Value::Float(array.as_primitive::<Float64Type>().value(row)),
        Kind::Str => Value::Str(array.as_string::<i32>().value(row).to_owned()),
        Kind::LargeStr => Value::Str(array.as_string::<i64>().value(row).to_owned()),
        Kind::Bin => Value::Bytes(Bytes::copy_from_slice(array.as_binary::<i32>().value(row))),
        Kind::LargeBin => Value::Bytes(Bytes::copy_from_slice(array.as_binary::<i64>().value(row))),
    }
}

#[cfg(test)]
mod tests {
    use arrow_schema::{Schema, TimeUnit};
    use proptest::prelude::*;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("b", DataType::Boolean, true),
            Field::new("i8", DataType::Int8, true),
            Field::new("u32", DataType::UInt32, true),
            Field::new("i64", DataType::Int64, false),
            Field::new("f32", DataType::Float32, true),
            Field::new("f64", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("bin", DataType::LargeBinary, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
        ]))
    }

    fn values() -> impl Strategy<Value = Vec<Value>> {
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<i8>()),
            proptest::option::of(any::<u32>()),
            any::<i64>(),
            proptest::option::of(-1e6f32..1e6),
            proptest::option::of(any::<f64>().prop_filter("not NaN", |f| !f.is_nan())),
            proptest::option::of(".{0,20}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i32>()),
        )
            .prop_map(|(b, i8v, u, i, f32v, f, s, bin, ts, d)| {
                vec![
                    b.into(),
                    i8v.map(i64::from).into(),
                    u.map(u64::from).into(),
                    i.into(),
                    f32v.map(f64::from).into(),
                    f.into(),
                    s.into(),
                    bin.into(),
                    ts.into(),
                    d.map(i64::from).into(),
                ]
            })
    }

    proptest! {
        #[test]
        fn values_round_trip_through_rows_and_arrays(rows in proptest::collection::vec(values(), 1..20)) {
            let codec = RowCodec::new(schema()).unwrap();
            let mut encoded = Vec::new();
            for row in &rows {
                let mut out = Vec::new();
                codec.encode_values(row, &mut out).unwrap();
                prop_assert_eq!(&codec.decode_values(&out).unwrap(), row);
                encoded.push(out);
            }
            let columns = codec.decode(encoded.iter().map(Vec::as_slice)).unwrap();
            let expected = schema();
            prop_assert_eq!(columns[8].data_type(), expected.field(8).data_type());
            let storage = codec.storage_columns(&columns).unwrap();
            for (i, row) in encoded.iter().enumerate() {
                let mut again = Vec::new();
                codec.encode_row(&storage, i, &mut again);
                prop_assert_eq!(&again, row);
            }
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let codec = RowCodec::new(schema()).unwrap();
            let decoded = codec.decode([bytes.as_slice()]);
            // A cell is read in place under the decoder's checks (UTF-8 aside): bytes that
            // decode give every cell, and a cell read from bytes that do not is a text error.
            for column in 0..10 {
                match codec.cell(&bytes, column) {
                    Ok(_) => prop_assert!(decoded.is_ok() || matches!(
                        &decoded, Err(Error::Corrupt(m)) if m.contains("UTF-8")
                    )),
                    Err(_) => prop_assert!(decoded.is_err()),
                }
            }
        }

        #[test]
        fn a_cell_read_in_place_is_the_decoded_value(row in values()) {
            let codec = RowCodec::new(schema()).unwrap();
            let mut out = Vec::new();
            codec.encode_values(&row, &mut out).unwrap();
            for (column, value) in row.iter().enumerate() {
                let cell = codec.cell(&out, column).unwrap();
                prop_assert_eq!(cell.is_none(), matches!(value, Value::Null));
                let number = cell.and_then(|c| codec.number(column, c));
                let expected = match *value {
                    // Numbers; the timestamp and date columns are stored as integers, which
                    // an aggregate refuses before it reads a cell.
                    Value::Int(v) if column < 8 => Some(v as f64),
                    Value::UInt(v) => Some(v as f64),
                    Value::Float(v) if column == 4 => Some(f64::from(v as f32)),
                    Value::Float(v) => Some(v),
                    _ => None,
                };
                if column < 8 {
                    prop_assert_eq!(number, expected, "column {}", column);
                }
            }
            prop_assert!(codec.cell(&out, 10).is_err());
            prop_assert!(codec.cell(&out[..out.len() - 1], 3).is_err());
        }
    }

    #[test]
    fn bad_values_are_refused_and_leave_the_output_alone() {
        let codec = RowCodec::new(schema()).unwrap();
        let mut row: Vec<Value> = vec![Value::Null; 10];
        row[3] = Value::Int(1);
        let mut out = vec![9];
        codec.encode_values(&row, &mut out).unwrap();
        let mut out = vec![9];
        row[3] = Value::Null;
        assert!(matches!(
            codec.encode_values(&row, &mut out),
            Err(Error::NullInNonNullable { column }) if column == "i64"
        ));
        assert_eq!(out, [9]);
        row[3] = Value::Int(1);
        row[1] = Value::Int(300);
        assert!(matches!(
            codec.encode_values(&row, &mut out),
            Err(Error::SchemaMismatch(_))
        ));
        row[1] = Value::Str("x".into());
        assert!(codec.encode_values(&row, &mut out).is_err());
        assert!(codec.encode_values(&row[..3], &mut out).is_err());
        // A finite f64 beyond f32's range is out of a Float32 column's range (it became an
        // infinity); the infinities and NaN themselves are values of the column.
        row[1] = Value::Null;
        row[4] = Value::Float(1e300);
        assert!(matches!(
            codec.encode_values(&row, &mut out),
            Err(Error::SchemaMismatch(_))
        ));
        assert_eq!(out, [9]);
        for kept in [f64::INFINITY, f64::NEG_INFINITY, f64::from(f32::MAX), 1.5] {
            row[4] = Value::Float(kept);
            assert!(codec.encode_values(&row, &mut out).is_ok(), "{kept}");
        }
    }

    #[test]
    fn key_value_rows_give_their_value_without_copying() {
        let kv = Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::Binary,
            false,
        )]));
        let codec = RowCodec::new(kv).unwrap();
        let mut out = Vec::new();
        codec
            .encode_values(&[Value::Bytes(Bytes::from_static(b"hello"))], &mut out)
            .unwrap();
        let row = Bytes::from(out);
        assert_eq!(RowCodec::kv_value(&row).unwrap(), "hello");
        assert_eq!(RowCodec::kv_value_of(&row).unwrap(), b"hello");
        let mut empty = Vec::new();
        codec
            .encode_values(&[Value::Bytes(Bytes::new())], &mut empty)
            .unwrap();
        assert_eq!(RowCodec::kv_value_of(&empty).unwrap(), b"");
        // Truncated anywhere, one byte too many, a null or no row at all: damage, not a value.
        for bad in [
            &row[..4],
            &row[..1],
            &row[..row.len() - 1],
            &[][..],
            &[NULL][..],
        ] {
            assert!(
                matches!(RowCodec::kv_value_of(bad), Err(Error::Corrupt(_))),
                "{bad:?}"
            );
        }
        let mut longer = row.to_vec();
        longer.push(0);
        assert!(RowCodec::kv_value_of(&longer).is_err());
        assert!(RowCodec::kv_value(&row.slice(..4)).is_err());
    }
}
