//! [`Batch`]: writes across tables, validated as they are added, committed atomically.

use std::ops::RangeBounds;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;

use super::{Inner, Table};
use crate::batch::WriteBatch;
use crate::error::{Error, Result};
use crate::key::{Key, KeyType, key_bounds};
use crate::table::{KEY_COLUMN, TableDef, Value, key_data_type};

/// Writes to commit together, to tables of the database that made the batch. Every call
/// validates its input and either adds all of it or nothing (returning the error).
#[derive(Debug)]
pub struct Batch {
    db: Arc<Inner>,
    writes: WriteBatch,
    /// Each table written, once: the commit refuses the batch if one was dropped since.
    tables: Vec<(u32, String)>,
    /// A transaction's batch: the encoded bytes of every write added, counted against the
    /// limit instead of the batch's own. A range deletion drops the writes it covers from the
    /// batch, but the transaction's overlay keeps them for its reads: counted by the batch
    /// alone, a put and a range deletion over it, repeated, grew the overlay without bound.
    kept: Option<usize>,
}

impl Batch {
    pub(crate) fn new(db: Arc<Inner>) -> Self {
        Self {
            db,
            writes: WriteBatch::new(),
            tables: Vec::new(),
            kept: None,
        }
    }

    /// A transaction's batch (see [`Batch::kept`]).
    pub(crate) fn keeping_every_write(db: Arc<Inner>) -> Self {
        let writes = WriteBatch::new();
        Self {
            kept: Some(writes.encoded_len()),
            db,
            writes,
            tables: Vec::new(),
        }
    }

    /// Whether this batch was made by the database `db`.
    pub(crate) fn belongs_to(&self, db: &Arc<Inner>) -> bool {
        Arc::ptr_eq(&self.db, db)
    }

    /// The writes, and the tables they write (id and name).
    pub(crate) fn into_parts(self) -> (WriteBatch, Vec<(u32, String)>) {
        (self.writes, self.tables)
    }

    /// `table`'s definition, once it is known to be a table of this batch's database: another
    /// database's table has ids and encodings of its own, and its writes, appended to this log,
    /// would land in whatever table here has that id, or stop the log's replay.
    fn of<'t>(&self, table: &'t Table) -> Result<&'t TableDef> {
        self.db.own(table)?;
        Ok(table.def())
    }

    /// Notes that a write to `def`'s table was added.
    fn wrote(&mut self, def: &TableDef) -> &mut Self {
        if !self.tables.iter().any(|(id, _)| *id == def.id) {
            self.tables.push((def.id, def.name.clone()));
        }
        self
    }

    /// The write added last.
    pub(crate) fn last(&self) -> Option<&crate::batch::Write> {
        self.writes.writes().last()
    }

    /// Writes made so far.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// `values` (one per value column, in order) become `key`'s row in `table`.
    pub fn put(
        &mut self,
        table: &Table,
        key: impl Into<Key>,
        values: &[Value],
    ) -> Result<&mut Self> {
        let def = self.of(table)?;
        let stored = def.key_type.encode(key.into())?;
        let mut row = Vec::new();
        def.codec.encode_values(values, &mut row)?;
        self.check_row(row.len())?;
        let bytes = crate::batch::PUT_OVERHEAD + row.len();
        self.check_batch(bytes)?;
        self.writes.put(def.id, stored, Bytes::from(row));
        self.keep(bytes);
        Ok(self.wrote(def))
    }

    /// `value` becomes `key`'s value in a key-value table.
    pub fn put_value(
        &mut self,
        table: &Table,
        key: impl Into<Key>,
        value: impl Into<Bytes>,
    ) -> Result<&mut Self> {
        // A typed table of one binary column would take the value, and its `get_value` refuse
        // to read it back.
        let def = self.of(table)?;
        if !def.is_key_value() {
            return Err(Error::BadInput(format!(
                "table {:?} is not a key-value table; use put",
                def.name
            )));
        }
        self.put(table, key, &[Value::Bytes(value.into())])
    }

    /// Every row of `rows` — a [`KEY_COLUMN`] column of the table's key type and the table's
    /// value columns by name, in any order — is put.
    pub fn put_batch(&mut self, table: &Table, rows: &RecordBatch) -> Result<&mut Self> {
        let def = self.of(table)?;
        let (keys, columns) = split_batch(def, rows)?;
        let storage = def.codec.storage_columns(&columns)?;
        // All rows in one buffer, each a slice of it: one allocation per batch, not per row.
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(rows.num_rows());
        // Refused as soon as the batch would pass its limit, not after a copy of all of it.
        for i in 0..keys.len() {
            let start = buffer.len();
            def.codec.encode_row(&storage, i, &mut buffer);
            self.check_row(buffer.len() - start)?;
            ends.push(buffer.len());
            self.check_batch(buffer.len() + crate::batch::PUT_OVERHEAD * (i + 1))?;
        }
        self.keep(buffer.len() + crate::batch::PUT_OVERHEAD * keys.len());
        let buffer = Bytes::from(buffer);
        let mut start = 0;
        for (&key, &end) in keys.iter().zip(&ends) {
            self.writes.put(def.id, key, buffer.slice(start..end));
            start = end;
        }
        Ok(self.wrote(def))
    }

    /// `key` is deleted from `table`.
    pub fn delete(&mut self, table: &Table, key: impl Into<Key>) -> Result<&mut Self> {
        let def = self.of(table)?;
        let stored = def.key_type.encode(key.into())?;
        self.check_batch(crate::batch::DELETE_LEN)?;
        self.writes.delete(def.id, stored);
        self.keep(crate::batch::DELETE_LEN);
        Ok(self.wrote(def))
    }

    /// Every key of `range` is deleted from `table`.
    pub fn delete_range<K: Into<Key> + Copy>(
        &mut self,
        table: &Table,
        range: impl RangeBounds<K>,
    ) -> Result<&mut Self> {
        let def = self.of(table)?;
        if let Some(range) = def.key_type.stored_range(key_bounds(&range))? {
            // Checked before the writes it covers are dropped: the limit holds at every step.
            self.check_batch(crate::batch::DELETE_RANGE_LEN)?;
            self.writes.delete_range(def.id, range);
            self.keep(crate::batch::DELETE_RANGE_LEN);
        }
        // Noted even when the range is empty: a write to a dropped table is refused.
        Ok(self.wrote(def))
    }

    /// Refuses a write that would take the batch past its limit as soon as it is added (the
    /// commit would refuse the batch anyway): a batch, or a transaction's writes, cannot grow
    /// in memory without bound before the commit.
    fn check_batch(&self, adding: usize) -> Result<()> {
        let limit = self.db.settings.max_batch_bytes;
        let held = self.kept.unwrap_or_else(|| self.writes.encoded_len());
        let bytes = held.saturating_add(adding);
        if bytes > limit {
            return Err(Error::TooLarge {
                what: "write batch",
                bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Counts a write of `bytes` added to a transaction's batch.
    fn keep(&mut self, bytes: usize) {
        if let Some(kept) = &mut self.kept {
            *kept += bytes;
        }
    }

    fn check_row(&self, bytes: usize) -> Result<()> {
        let limit = self.db.settings.max_row_bytes;
        if bytes > limit {
            return Err(Error::TooLarge {
                what: "row",
                bytes,
                limit,
            });
        }
        Ok(())
    }
}

/// The stored keys of a batch and its value columns in the table's order.
fn split_batch(def: &TableDef, rows: &RecordBatch) -> Result<(Vec<u64>, Vec<ArrayRef>)> {
    let schema = rows.schema();
    let expected = def.schema().fields().len() + 1;
    if schema.fields().len() != expected {
        return Err(Error::SchemaMismatch(format!(
            "{} columns given; table {:?} has {KEY_COLUMN:?} and {} value columns",
            schema.fields().len(),
            def.name,
            expected - 1
        )));
    }
    let column = |name: &str| {
        schema
            .index_of(name)
            .map(|i| Arc::clone(rows.column(i)))
            .map_err(|_| Error::SchemaMismatch(format!("no column {name:?} in the batch")))
    };
    let keys = stored_keys(def.key_type, &column(KEY_COLUMN)?)?;
    let columns = def
        .schema()
        .fields()
        .iter()
        .map(|f| column(f.name()))
        .collect::<Result<Vec<_>>>()?;
    Ok((keys, columns))
}

/// The stored form of a key column.
pub(crate) fn stored_keys(key_type: KeyType, keys: &ArrayRef) -> Result<Vec<u64>> {
    let expected = key_data_type(key_type);
    if keys.data_type() != &expected {
        return Err(Error::SchemaMismatch(format!(
            "{KEY_COLUMN:?} is {}, the table's keys are {expected}",
            keys.data_type()
        )));
    }
    if keys.null_count() > 0 {
        return Err(Error::NullInNonNullable {
            column: KEY_COLUMN.to_owned(),
        });
    }
    match keys.data_type() {
        DataType::UInt64 => Ok(keys.as_primitive::<UInt64Type>().values().to_vec()),
        _ => {
            let data = keys
                .to_data()
                .into_builder()
                .data_type(DataType::Int64)
                .build()?;
            let signed = arrow_array::make_array(data);
            signed
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&k| Ok(key_type.encode(Key::I64(k))?))
                .collect()
        }
    }
}
