//! Aggregates: count, sum, min, max or average of a column over a key range, in one row or
//! one row per bucket of keys.
//!
//! A scan feeds the [`Fold`] two ways. Segment rows come as batches, folded over the column's
//! values in place. Memtable rows come one at a time and are read where they lie, in their
//! encoded form: decoding them into a batch only to fold it was most of an aggregate's time over
//! a memtable (a time series' recent rows live there).

use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};

use super::options::Aggregate;
use super::read::{Scan, key_array};
use crate::error::{Error, Result};
use crate::key::{Key, KeyType};
use crate::memtable::Lent;
use crate::table::{RowCodec, TableDef, key_data_type};

/// One bucket's running aggregate.
///
/// An integer column's sum is kept exactly (`exact`), and rounded to `f64` once, at the end:
/// a sum in `f64` rounded at every step once past 2^53, so its answer depended on the order the
/// rows came in, and that order on whether they sat in a memtable or a segment (a checkpoint
/// could change an aggregate). A float column's sum is `sum`; each of the two is 0 for the other
/// kind of column.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    count: u64,
    sum: f64,
    exact: i128,
    min: Option<f64>,
    max: Option<f64>,
}

impl Acc {
    /// Folds in one non-null integer value, keeping only what `function` needs.
    #[inline]
    fn add_int(&mut self, function: Aggregate, v: i128) {
        match function {
            Aggregate::Count | Aggregate::Sum | Aggregate::Avg => {
                self.count += 1;
                // Values fit 64 bits and no table holds 2^63 rows, so the sum stays within
                // i128; saturating keeps even that impossible case from wrapping.
                self.exact = self.exact.saturating_add(v);
            }
            // Rounding to f64 keeps order, so the extremes of the rounded values are the
            // rounded extremes.
            Aggregate::Min | Aggregate::Max => self.add(function, v as f64),
        }
    }

    /// Folds in integer `values` (non-null ones), choosing the function once, not per value.
    fn add_all_int(&mut self, function: Aggregate, values: impl Iterator<Item = i128>) {
        match function {
            Aggregate::Count | Aggregate::Sum | Aggregate::Avg => {
                values.for_each(|v| self.add_int(Aggregate::Sum, v));
            }
            Aggregate::Min => values.for_each(|v| self.add_int(Aggregate::Min, v)),
            Aggregate::Max => values.for_each(|v| self.add_int(Aggregate::Max, v)),
        }
    }

    /// Folds in one non-null value, keeping only what `function` needs.
    #[inline]
    fn add(&mut self, function: Aggregate, v: f64) {
        match function {
            Aggregate::Count | Aggregate::Sum | Aggregate::Avg => {
                self.count += 1;
                self.sum += v;
            }
            Aggregate::Min => self.min = Some(self.min.map_or(v, |m| m.min(v))),
            Aggregate::Max => self.max = Some(self.max.map_or(v, |m| m.max(v))),
        }
    }

    /// Folds in `values` (non-null ones), choosing the function once, not per value.
    fn add_all(&mut self, function: Aggregate, values: impl Iterator<Item = f64>) {
        // Each loop passes `add` a constant, so the match inside it folds away.
        match function {
            Aggregate::Count | Aggregate::Sum | Aggregate::Avg => {
                values.for_each(|v| self.add(Aggregate::Sum, v));
            }
            Aggregate::Min => values.for_each(|v| self.add(Aggregate::Min, v)),
            Aggregate::Max => values.for_each(|v| self.add(Aggregate::Max, v)),
        }
    }

    /// Folds in rows `rows` of `values`, a column of a numeric type (any type for a count).
    fn add_rows(
        &mut self,
        function: Aggregate,
        values: &dyn Array,
        rows: Range<usize>,
    ) -> Result<()> {
        if function == Aggregate::Count {
            let nulls = values.slice(rows.start, rows.len()).null_count();
            self.count += (rows.len() - nulls) as u64;
            return Ok(());
        }
        macro_rules! fold_as {
            ($t:ty, $add_all:ident, $to:ty) => {{
                let array = values.as_primitive::<$t>();
                let slice = &array.values()[rows.clone()];
                match array.nulls().filter(|n| n.null_count() > 0) {
                    None => self.$add_all(function, slice.iter().map(|&v| <$to>::from(v))),
                    Some(nulls) => self.$add_all(
                        function,
                        slice
                            .iter()
                            .zip(rows.clone())
                            .filter(|&(_, i)| nulls.is_valid(i))
                            .map(|(&v, _)| <$to>::from(v)),
                    ),
                }
            }};
        }
        match values.data_type() {
            DataType::Int8 => fold_as!(Int8Type, add_all_int, i128),
            DataType::Int16 => fold_as!(Int16Type, add_all_int, i128),
            DataType::Int32 => fold_as!(Int32Type, add_all_int, i128),
            DataType::Int64 => fold_as!(Int64Type, add_all_int, i128),
            DataType::UInt8 => fold_as!(UInt8Type, add_all_int, i128),
            DataType::UInt16 => fold_as!(UInt16Type, add_all_int, i128),
            DataType::UInt32 => fold_as!(UInt32Type, add_all_int, i128),
            DataType::UInt64 => fold_as!(UInt64Type, add_all_int, i128),
            DataType::Float32 => fold_as!(Float32Type, add_all, f64),
            DataType::Float64 => fold_as!(Float64Type, add_all, f64),
            other => return Err(not_aggregable(other)),
        }
        Ok(())
    }

    /// Folds in what `other` folded.
    fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.exact = self.exact.saturating_add(other.exact);
        for (mine, theirs, pick) in [
            (&mut self.min, other.min, f64::min as fn(f64, f64) -> f64),
            (&mut self.max, other.max, f64::max),
        ] {
            if let Some(v) = theirs {
                *mine = Some(mine.map_or(v, |m| pick(m, v)));
            }
        }
    }

    /// The sum: one of `sum` and `exact` is 0.
    fn total(&self) -> f64 {
        self.sum + self.exact as f64
    }

    fn result(&self, function: Aggregate) -> Option<f64> {
        match function {
            Aggregate::Count => Some(self.count as f64),
            Aggregate::Sum => Some(self.total()),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Avg => (self.count > 0).then(|| self.total() / self.count as f64),
        }
    }
}

/// Whether a column of `data_type` can be summed, averaged, or have a minimum and maximum.
fn is_numeric(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
    )
}

fn not_aggregable(data_type: &DataType) -> Error {
    Error::BadInput(format!("cannot aggregate a column of type {data_type}"))
}

/// The most buckets an aggregate returns: each costs memory while it is folded and a row in
/// the answer, and a bucket width of one key over a large table would make one per row.
pub const MAX_BUCKETS: usize = 1 << 20;

/// An aggregate being folded: a running [`Acc`] per bucket that holds a value (a bucket whose
/// rows hold only nulls gets no row).
pub(crate) struct Fold {
    function: Aggregate,
    /// The column, by its position in the table's value schema.
    column: usize,
    codec: RowCodec,
    /// Whether the column holds integers (summed exactly, see [`Acc`]).
    integer: bool,
    key_type: KeyType,
    /// The bucket width in key units; `None` for one row over the whole range.
    width: Option<i128>,
    /// Bucket start (`0` without buckets) → its aggregate.
    buckets: BTreeMap<i128, Acc>,
    /// The bucket memtable rows last folded into, kept out of `buckets` while its rows come (a
    /// memtable's rows come in key order).
    open: Option<Open>,
}

/// A bucket memtable rows are folding into.
struct Open {
    /// Its first and last stored keys (stored keys sort as keys do), so that a row's key is
    /// placed by two comparisons of the key as it comes.
    stored: RangeInclusive<u64>,
    start: i128,
    acc: Acc,
}

impl Fold {
    /// The aggregate `function` of `column` of table `def`, per bucket of `bucket` keys if
    /// given. A missing or (for all but a count) non-numeric column or an empty bucket width
    /// is [`Error::BadInput`].
    pub(crate) fn new(
        def: &TableDef,
        column: &str,
        function: Aggregate,
        bucket: Option<u64>,
    ) -> Result<Self> {
        if bucket == Some(0) {
            return Err(Error::BadInput(
                "a bucket width must be positive".to_owned(),
            ));
        }
        let (at, field) = def.schema().column_with_name(column).ok_or_else(|| {
            Error::BadInput(format!("table {:?} has no column {column:?}", def.name))
        })?;
        if function != Aggregate::Count && !is_numeric(field.data_type()) {
            return Err(not_aggregable(field.data_type()));
        }
        Ok(Self {
            function,
            column: at,
            codec: def.codec.clone(),
            integer: field.data_type().is_integer(),
            key_type: def.key_type,
            width: bucket.map(i128::from),
            buckets: BTreeMap::new(),
            open: None,
        })
    }

    /// Whether the batches folded carry the keys (first): only buckets need them.
    pub(crate) fn needs_keys(&self) -> bool {
        self.width.is_some()
    }

    /// The key as a number buckets divide (stored keys of signed types are offset).
    fn key_of(&self, stored: u64) -> i128 {
        match self.key_type.decode(stored) {
            Key::U64(k) => i128::from(k),
            Key::I64(k) => i128::from(k),
        }
    }

    /// The bucket of key `key` for buckets of `width`: its start and the first key after it.
    fn bucket_of(width: Option<i128>, key: i128) -> (i128, i128) {
        match width {
            None => (0, i128::MAX),
            Some(width) => {
                let start = key.div_euclid(width) * width;
                (start, start + width)
            }
        }
    }

    /// Folds in the memtable rows a walk lent (encoded, see [`RowCodec`]; deletions have no
    /// row); returns how many rows there were. The function is chosen once per stretch and the
    /// row's step is inlined into the loop: a call per row and a bucket found by decoding each
    /// key were most of the fold's instructions.
    pub(crate) fn add_lent(&mut self, lent: Lent<'_>) -> Result<usize> {
        let float = |codec: &RowCodec, column, cell: &[u8]| codec.number(column, cell);
        let int = |codec: &RowCodec, column, cell: &[u8]| codec.integer(column, cell);
        let rows = match (self.function, self.integer) {
            (Aggregate::Count, _) => self.add_lent_with(
                lent,
                |_: &RowCodec, _, _: &[u8]| Some(()),
                |acc, ()| {
                    acc.count += 1;
                },
            ),
            (Aggregate::Sum | Aggregate::Avg, false) => {
                self.add_lent_with(lent, float, |acc, v| acc.add(Aggregate::Sum, v))
            }
            (Aggregate::Min, false) => {
                self.add_lent_with(lent, float, |acc, v| acc.add(Aggregate::Min, v))
            }
            (Aggregate::Max, false) => {
                self.add_lent_with(lent, float, |acc, v| acc.add(Aggregate::Max, v))
            }
            (Aggregate::Sum | Aggregate::Avg, true) => {
                self.add_lent_with(lent, int, |acc, v| acc.add_int(Aggregate::Sum, v))
            }
            (Aggregate::Min, true) => {
                self.add_lent_with(lent, int, |acc, v| acc.add_int(Aggregate::Min, v))
            }
            (Aggregate::Max, true) => {
                self.add_lent_with(lent, int, |acc, v| acc.add_int(Aggregate::Max, v))
            }
        }?;
        self.check_buckets()?;
        Ok(rows)
    }

    /// Refuses an aggregate past [`MAX_BUCKETS`] (checked after each batch or lent stretch, so
    /// the map holds at most one batch's or memtable's rows more).
    fn check_buckets(&self) -> Result<()> {
        // The open bucket counts too unless the map holds it already.
        let open = self
            .open
            .as_ref()
            .is_some_and(|open| !self.buckets.contains_key(&open.start));
        if self.buckets.len() + usize::from(open) > MAX_BUCKETS {
            return Err(Error::BadInput(format!(
                "the aggregate has more than {MAX_BUCKETS} buckets: use a wider bucket or a \
                 narrower range"
            )));
        }
        Ok(())
    }

    /// Folds in the lent rows, each cell read by `read` and folded by `add`.
    fn add_lent_with<T>(
        &mut self,
        lent: Lent<'_>,
        read: impl Fn(&RowCodec, usize, &[u8]) -> Option<T>,
        add: impl Fn(&mut Acc, T),
    ) -> Result<usize> {
        let mut rows = 0;
        match lent {
            Lent::One(key, Some(row)) => {
                self.add_row(key, row, &read, &add)?;
                rows += 1;
            }
            Lent::One(_, None) => {}
            Lent::Rows(lent) => {
                for (key, row) in lent {
                    if let Some(row) = row {
                        self.add_row(key, row, &read, &add)?;
                        rows += 1;
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Folds in one memtable row at stored key `key`: its cell read by `read`, folded by `add`.
    #[inline(always)]
    fn add_row<T>(
        &mut self,
        key: u64,
        row: &[u8],
        read: &impl Fn(&RowCodec, usize, &[u8]) -> Option<T>,
        add: &impl Fn(&mut Acc, T),
    ) -> Result<()> {
        let Some(cell) = self.codec.cell(row, self.column)? else {
            return Ok(());
        };
        let value = read(&self.codec, self.column, cell).ok_or_else(|| {
            Error::Corrupt("an aggregated column's value is not a number".to_owned())
        })?;
        match &mut self.open {
            Some(open) if open.stored.contains(&key) => add(&mut open.acc, value),
            _ => add(self.open_bucket(key), value),
        }
        Ok(())
    }

    /// Opens the bucket of stored key `key` for memtable rows, putting the open one away.
    #[cold]
    fn open_bucket(&mut self, key: u64) -> &mut Acc {
        if let Some(open) = self.open.take() {
            self.buckets.entry(open.start).or_default().merge(&open.acc);
        }
        let (start, end) = Self::bucket_of(self.width, self.key_of(key));
        // The bucket's keys within the key type's range, stored.
        let stored = |k: i128| match self.key_type {
            KeyType::U64 => u64::try_from(k.max(0)).unwrap_or(u64::MAX),
            key_type => {
                let k = i64::try_from(k).unwrap_or(if k < 0 { i64::MIN } else { i64::MAX });
                key_type.encode(Key::I64(k)).unwrap_or(0)
            }
        };
        let open = self.open.insert(Open {
            stored: match self.width {
                None => 0..=u64::MAX,
                Some(_) => stored(start)..=stored(end - 1),
            },
            start,
            acc: Acc::default(),
        });
        &mut open.acc
    }

    /// Folds in a batch of the scan: the column, after the keys if [`Fold::needs_keys`].
    pub(crate) fn add_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let values_at = usize::from(self.needs_keys());
        let values = batch
            .columns()
            .get(values_at)
            .ok_or_else(|| Error::Corrupt("an aggregate's scan lost its column".to_owned()))?;
        if self.width.is_none() {
            return self.buckets.entry(0).or_default().add_rows(
                self.function,
                values.as_ref(),
                0..batch.num_rows(),
            );
        }
        // Keys come in order (ascending or descending), so a bucket's rows are adjacent.
        let stored = super::batch::stored_keys(self.key_type, batch.column(0))?;
        let mut at = 0;
        while let Some(&first) = stored.get(at) {
            let (start, end) = Self::bucket_of(self.width, self.key_of(first));
            let len = stored[at..].partition_point(|&s| {
                let key = self.key_of(s);
                start <= key && key < end
            });
            // A bucket whose rows hold only nulls has no value: it gets no row.
            if values.slice(at, len).null_count() < len {
                self.buckets.entry(start).or_default().add_rows(
                    self.function,
                    values.as_ref(),
                    at..at + len,
                )?;
            }
            at += len;
        }
        self.check_buckets()
    }

    /// The result: one row, or one per bucket that holds a value (`bucket` = its first key).
    pub(crate) fn finish(mut self) -> Result<RecordBatch> {
        self.check_buckets()?;
        if let Some(open) = self.open.take() {
            self.buckets.entry(open.start).or_default().merge(&open.acc);
        }
        let function = self.function;
        let value_field = match function {
            Aggregate::Count => Field::new(function.name(), DataType::UInt64, false),
            _ => Field::new(function.name(), DataType::Float64, true),
        };
        let value_array = |accs: Vec<Acc>| -> ArrayRef {
            match function {
                Aggregate::Count => Arc::new(UInt64Array::from(
                    accs.iter().map(|a| a.count).collect::<Vec<_>>(),
                )),
                _ => Arc::new(Float64Array::from(
                    accs.iter().map(|a| a.result(function)).collect::<Vec<_>>(),
                )),
            }
        };
        if self.width.is_none() {
            let acc = self.buckets.remove(&0).unwrap_or_default();
            let schema = Arc::new(Schema::new(vec![value_field]));
            return Ok(RecordBatch::try_new(schema, vec![value_array(vec![acc])])?);
        }
        let key_type = self.key_type;
        let starts: Vec<u64> = self
            .buckets
            .keys()
            .map(|&start| match key_type {
                // Bucket starts of u64 keys are u64; of signed keys, within i64 but for the
                // bucket holding i64::MIN when the width does not divide 2^63 (floor division
                // moves it below), labelled i64::MIN (stored form 0).
                KeyType::U64 => u64::try_from(start).unwrap_or(0),
                key_type => key_type
                    .encode(Key::I64(i64::try_from(start).unwrap_or(i64::MIN)))
                    .unwrap_or(0),
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("bucket", key_data_type(key_type), false),
            value_field,
        ]));
        let key_column = key_array(key_type, starts)?;
        let accs = self.buckets.into_values().collect();
        Ok(RecordBatch::try_new(
            schema,
            vec![key_column, value_array(accs)],
        )?)
    }
}

/// Aggregates `column` of table `def` over `scan` (see [`Fold::new`] for the arguments).
pub(crate) async fn aggregate(
    scan: Scan,
    def: &TableDef,
    column: &str,
    function: Aggregate,
    bucket: Option<u64>,
) -> Result<RecordBatch> {
    let fold = Fold::new(def, column, function, bucket)?;
    scan.fold(fold).await?.finish()
}
