//! Software prefetch: asks the CPU to start loading a cache line that a read will need soon, so
//! that the memory misses of many reads overlap instead of following one another. Batched point
//! reads ([`crate::segment::SegmentReader::read_cached_many`]) prefetch the cells of rows a few
//! ahead; `omendb-core`'s index and filters use [`line()`] the same way.
//!
//! The only `unsafe` here is the prefetch instruction itself, which cannot fault.
#![allow(unsafe_code)]

use arrow_array::cast::AsArray;
use arrow_array::types::{BinaryType, ByteArrayType, LargeBinaryType, LargeUtf8Type, Utf8Type};
use arrow_array::{GenericByteArray, downcast_primitive_array};
use arrow_schema::DataType;

use crate::segment::{Cells, Page};

/// Starts loading the cache line that holds `ptr` into all cache levels. Never faults.
#[inline(always)]
pub fn line<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint that never dereferences architecturally: it cannot fault,
    // even for an address outside any allocation, and it does not change memory.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Bytes per cache line on the CPUs we run on.
const LINE_BYTES: usize = 64;

/// Lines [`cells`] asks for at most: a point read's window of candidate rows is a few dozen rows.
const MAX_CELL_LINES: usize = 8;

/// Starts loading the bytes of rows `rows` of a page of one width (at most [`MAX_CELL_LINES`]
/// lines, from the middle of the range, where a model's prediction lies).
#[inline]
pub fn cells(cells: Cells<'_>, rows: std::ops::Range<usize>) {
    let rows = rows.start..rows.end.min(cells.rows());
    let bytes = rows.len().saturating_mul(cells.width());
    if bytes == 0 {
        return;
    }
    let lines = (bytes - 1) / LINE_BYTES + 1;
    let skip = lines.saturating_sub(MAX_CELL_LINES) / 2;
    let start = (cells.at(rows.start) as usize & !(LINE_BYTES - 1)) + skip * LINE_BYTES;
    for at in 0..lines.min(MAX_CELL_LINES) {
        line((start + at * LINE_BYTES) as *const u8);
    }
}

/// Lines [`run`] asks for at most: the hardware prefetcher follows a longer run read in order.
const MAX_RUN_LINES: usize = 32;

/// Starts loading the bytes of rows `rows` of a page of one width, rows a scan reads next in
/// order: at most [`MAX_RUN_LINES`] lines from the first row, or from the last if `reverse`.
#[inline]
pub fn run(cells: Cells<'_>, rows: std::ops::Range<usize>, reverse: bool) {
    let rows = rows.start..rows.end.min(cells.rows());
    let bytes = rows.len().saturating_mul(cells.width());
    if bytes == 0 {
        return;
    }
    let first = cells.at(rows.start) as usize & !(LINE_BYTES - 1);
    let end = cells.at(rows.start) as usize + bytes;
    let lines = (end - first).div_ceil(LINE_BYTES).min(MAX_RUN_LINES);
    let start = if reverse {
        // The line of the last byte and the `lines - 1` before it.
        ((end - 1) & !(LINE_BYTES - 1)) - (lines - 1) * LINE_BYTES
    } else {
        first
    };
    for at in 0..lines {
        line((start + at * LINE_BYTES) as *const u8);
    }
}

/// Starts loading `page`'s array (its buffers' addresses and lengths), which [`cell`] reads;
/// nothing for a page of one width, whose reads do not go through its array.
#[inline]
pub fn array(page: &Page) {
    if page.width().is_none() {
        line(std::sync::Arc::as_ptr(page.array_ref()).cast::<u8>());
    }
}

/// Starts loading what locates row `offset` of `page`: its validity bit, and its value for a
/// fixed-width type, or for a variable-width one its start and end (whose bytes [`cell_bytes`]
/// asks for once those are in cache), or its bytes directly where the page's values have one
/// width. Other types are left alone.
#[inline]
pub fn cell(page: &Page, offset: usize) {
    // A page of one width has no nulls and its bytes' place at hand: its array is not read.
    if let Some(cells) = page.cells() {
        line(cells.at(offset));
        return;
    }
    let page = page.array();
    if offset >= page.len() {
        return;
    }
    if let Some(nulls) = page.nulls() {
        line(bit(nulls.validity(), nulls.offset() + offset));
    }
    match page.data_type() {
        DataType::Boolean => {
            let values = page.as_boolean().values();
            line(bit(values.values(), values.offset() + offset));
        }
        DataType::Binary => line(start_of(page.as_bytes::<BinaryType>(), offset)),
        DataType::LargeBinary => line(start_of(page.as_bytes::<LargeBinaryType>(), offset)),
        DataType::Utf8 => line(start_of(page.as_bytes::<Utf8Type>(), offset)),
        DataType::LargeUtf8 => line(start_of(page.as_bytes::<LargeUtf8Type>(), offset)),
        _ => downcast_primitive_array!(
            page => line(page.values().as_ptr().wrapping_add(offset)),
            _ => {}
        ),
    }
}

/// Starts loading the first bytes of row `offset`'s value in a variable-width `page`: call it
/// after [`cell`] had the row's start loaded, or it waits for that line itself. Nothing for a
/// page of one width, whose bytes [`cell`] asked for.
#[inline]
pub fn cell_bytes(page: &Page, offset: usize) {
    if page.width().is_some() {
        return;
    }
    let page = page.array();
    if offset >= page.len() {
        return;
    }
    match page.data_type() {
        DataType::Binary => bytes_of(page.as_bytes::<BinaryType>(), offset),
        DataType::LargeBinary => bytes_of(page.as_bytes::<LargeBinaryType>(), offset),
        DataType::Utf8 => bytes_of(page.as_bytes::<Utf8Type>(), offset),
        DataType::LargeUtf8 => bytes_of(page.as_bytes::<LargeUtf8Type>(), offset),
        _ => {}
    }
}

/// The byte of `bits` that holds bit `index`.
fn bit(bits: &[u8], index: usize) -> *const u8 {
    bits.as_ptr().wrapping_add(index / 8)
}

/// Where row `offset`'s start is recorded.
fn start_of<T: ByteArrayType>(page: &GenericByteArray<T>, offset: usize) -> *const T::Offset {
    page.value_offsets().as_ptr().wrapping_add(offset)
}

/// Asks for the first line of row `offset`'s bytes (below `page.len()`).
fn bytes_of<T: ByteArrayType>(page: &GenericByteArray<T>, offset: usize) {
    let value: &[u8] = page.value(offset).as_ref();
    line(value.as_ptr());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, BinaryArray, BooleanArray, Float64Array, Int32Array, LargeStringArray,
        StringArray,
    };

    use super::*;

    #[test]
    fn every_type_and_offset_is_accepted_and_nothing_changes() {
        let pages: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])),
            Arc::new(Float64Array::from(vec![1.5, 2.5, 3.5])),
            Arc::new(BinaryArray::from_opt_vec(vec![
                Some(b"ab"),
                None,
                Some(b""),
            ])),
            Arc::new(BinaryArray::from_iter_values([b"ab", b"cd", b"ef"])),
            Arc::new(StringArray::from(vec!["x", "yz", ""])),
            Arc::new(LargeStringArray::from(vec!["x", "yz", ""])),
            Arc::new(arrow_array::NullArray::new(3)),
        ];
        for page in &pages {
            let before = page.to_data();
            let whole = Page::new(Arc::clone(page));
            let sliced = Page::new(page.slice(1, 2));
            array(&whole);
            array(&sliced);
            for rows in [0..0, 0..1, 1..3, 2..usize::MAX, usize::MAX..usize::MAX] {
                for page in [&whole, &sliced] {
                    if let Some(page) = page.cells() {
                        cells(page, rows.clone());
                    }
                }
            }
            for offset in [0, 1, 2, 3, usize::MAX] {
                cell(&whole, offset);
                cell_bytes(&whole, offset);
                cell(&sliced, offset);
                cell_bytes(&sliced, offset);
            }
            assert_eq!(page.to_data(), before);
        }
    }
}
