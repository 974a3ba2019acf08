//! A decoded page as point reads see it: its Arrow array, and, for a `Binary` page whose values
//! all have one width, where those values lie.
//!
//! A variable-width value is found through its page's array and offsets: the array's buffers,
//! the row's start and end, then its bytes, three dependent memory reads. When every value of a
//! page has the same width `w`, the values start at the beginning of the page's bytes and none
//! is null (every value of a key-value table with 16-byte values), row `i`'s value is the bytes
//! `i·w .. (i+1)·w` of the values buffer, which the page keeps beside its array: a point read,
//! and the prefetch of a batched one, go from the page straight to the bytes. The width is found
//! once, when the page is made, from the offsets themselves, so it is a fact about the page,
//! never a guess.

use arrow_array::cast::AsArray;
use arrow_array::types::ByteArrayType;
use arrow_array::{Array, ArrayRef, GenericByteArray};
use arrow_buffer::Buffer;

/// A decoded page of one column, and its values' place if they all have one width.
#[derive(Clone, Debug)]
pub struct Page {
    array: ArrayRef,
    fixed: Option<Fixed>,
}

/// The values of a `Binary` page whose offsets are `0, w, 2w, …` and which has no null.
#[derive(Clone, Debug)]
struct Fixed {
    /// The page's values buffer (shared with its array).
    values: Buffer,
    width: u32,
    rows: u32,
}

impl Page {
    /// `array` as a page; a `Binary` page's offsets are read once to find whether its values
    /// have one width.
    pub fn new(array: ArrayRef) -> Self {
        let fixed = array
            .as_binary_opt::<i32>()
            .filter(|page| page.null_count() == 0)
            .and_then(|page| {
                Some(Fixed {
                    width: fixed_width(page)?,
                    rows: u32::try_from(page.len()).ok()?,
                    values: page.values().clone(),
                })
            });
        Self { array, fixed }
    }

    /// The page's array.
    pub fn array(&self) -> &dyn Array {
        self.array.as_ref()
    }

    /// The page's array, shared.
    pub fn array_ref(&self) -> &ArrayRef {
        &self.array
    }

    /// The width of every value of a `Binary` page without nulls whose values all have one,
    /// starting at the beginning of its bytes; `None` otherwise.
    pub fn width(&self) -> Option<u32> {
        self.fixed.as_ref().map(|fixed| fixed.width)
    }

    /// The page with its array replaced by `array`, which must hold the same values (the page
    /// with buffers the cache shares): what was found about the values stays true.
    pub(crate) fn holding(self, array: ArrayRef) -> Self {
        debug_assert_eq!(array.to_data(), self.array.to_data());
        Self {
            array,
            fixed: self.fixed,
        }
    }

    /// Row `row`'s bytes in a `Binary` page: what `as_binary::<i32>().value(row)` returns,
    /// read without the array or its offsets when the page has one width. `None` for another
    /// type or a row past the end. Like `value`, a null row gives the bytes its offsets span.
    pub fn binary(&self, row: usize) -> Option<&[u8]> {
        if let Some(cells) = self.cells() {
            return cells.row(row);
        }
        let page = self.array.as_binary_opt::<i32>()?;
        (row < page.len()).then(|| page.value(row))
    }

    /// The values of a page of one width (`None` for another page).
    pub fn cells(&self) -> Option<Cells<'_>> {
        let fixed = self.fixed.as_ref()?;
        let (width, rows) = (fixed.width as usize, fixed.rows as usize);
        // The offsets `0, w, …, rows·w` are within the values buffer (Arrow checks them).
        Cells::new(fixed.values.get(..width.checked_mul(rows)?)?, width, rows)
    }
}

/// The values of a page of one width: row `i`'s value is bytes `i·w .. (i+1)·w`. A point read
/// finds them through the page ([`Page::cells`]) or straight from the word its page-table slot
/// keeps of their place, without loading the page.
#[derive(Clone, Copy, Debug)]
pub struct Cells<'a> {
    bytes: &'a [u8],
    width: usize,
    rows: usize,
}

impl<'a> Cells<'a> {
    /// `rows` values of `width` bytes each, which `bytes` holds exactly.
    pub(crate) fn new(bytes: &'a [u8], width: usize, rows: usize) -> Option<Self> {
        (width.checked_mul(rows)? == bytes.len()).then_some(Self { bytes, width, rows })
    }

    /// Row `row`'s value; `None` past the last row.
    pub fn row(&self, row: usize) -> Option<&'a [u8]> {
        if row >= self.rows {
            return None;
        }
        let start = row * self.width;
        self.bytes.get(start..start + self.width)
    }

    /// Every value's width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values' bytes, row after row.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Where row `row`'s bytes begin (past the end for a row past the end): the address a
    /// prefetch asks for.
    pub(crate) fn at(&self, row: usize) -> *const u8 {
        self.bytes
            .as_ptr()
            .wrapping_add(row.wrapping_mul(self.width))
    }
}

/// `w` if `page`'s offsets are `0, w, 2w, …`: every value `w` bytes, the first at the start of
/// its bytes. An empty page has none.
pub(crate) fn fixed_width<T: ByteArrayType<Offset = i32>>(
    page: &GenericByteArray<T>,
) -> Option<u32> {
    let offsets = page.value_offsets();
    // `width` is the second offset itself, so the first step equals it only if the first
    // offset is 0 (a sliced page's is not).
    let width = *offsets.get(1)?;
    let fixed = offsets.windows(2).all(|w| w[1].wrapping_sub(w[0]) == width);
    fixed.then(|| u32::try_from(width).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{BinaryArray, Int64Array, StringArray};
    use proptest::prelude::*;

    use super::*;

    fn binary(values: &[Option<&[u8]>]) -> ArrayRef {
        Arc::new(BinaryArray::from_opt_vec(values.to_vec()))
    }

    #[test]
    fn a_page_of_one_width_knows_it_and_others_do_not() {
        let fixed = Page::new(binary(&[Some(b"ab"), Some(b"cd"), Some(b"ef")]));
        assert_eq!(fixed.width(), Some(2));
        let mixed = Page::new(binary(&[Some(b"ab"), Some(b"c")]));
        assert_eq!(mixed.width(), None);
        // A slice starts past the beginning of its bytes: its offsets do not start at 0.
        let sliced = Page::new(fixed.array_ref().slice(1, 2));
        assert_eq!(sliced.width(), None);
        assert_eq!(sliced.binary(0), Some(&b"cd"[..]));
        let strings = Page::new(Arc::new(StringArray::from(vec!["xy", "zw"])));
        assert_eq!(strings.width(), None, "only Binary pages are read this way");
        assert_eq!(strings.binary(0), None, "not a Binary page");
        let numbers = Page::new(Arc::new(Int64Array::from(vec![1, 2])));
        assert_eq!(numbers.width(), None);
        let empty = Page::new(binary(&[]));
        assert_eq!(empty.width(), None);
        assert_eq!(empty.binary(0), None);
        assert_eq!(fixed.binary(3), None, "past the end");
        assert_eq!(fixed.binary(usize::MAX), None);
    }

    #[test]
    fn a_page_with_nulls_is_read_through_its_offsets() {
        use arrow_buffer::{NullBuffer, OffsetBuffer};
        // One width, but a null: read as the array reads it.
        let offsets = OffsetBuffer::new(vec![0, 2, 4, 6].into());
        let nulls = NullBuffer::from(vec![true, false, true]);
        let array: ArrayRef = Arc::new(
            BinaryArray::try_new(offsets, Buffer::from(b"abcdef".to_vec()), Some(nulls))
                .expect("valid"),
        );
        let page = Page::new(Arc::clone(&array));
        assert_eq!(page.width(), None);
        for row in 0..3 {
            assert_eq!(page.binary(row), Some(array.as_binary::<i32>().value(row)));
        }
        // Bytes past the last value do not make a row.
        let offsets = OffsetBuffer::new(vec![0, 2, 4].into());
        let longer: ArrayRef = Arc::new(
            BinaryArray::try_new(offsets, Buffer::from(b"abcdef".to_vec()), None).expect("valid"),
        );
        let page = Page::new(longer);
        assert_eq!(page.width(), Some(2));
        assert_eq!(page.binary(1), Some(&b"cd"[..]));
        assert_eq!(page.binary(2), None);
    }

    proptest! {
        /// `binary` answers what the array's own `value` does, at every row, whether the page
        /// has one width or not, with or without nulls, sliced or not.
        #[test]
        fn binary_reads_what_the_array_holds(
            widths in prop::collection::vec(0usize..3, 1..40),
            one_width in any::<bool>(),
            nulls in prop::collection::vec(any::<bool>(), 40),
            slice_from in 0usize..5,
        ) {
            let values: Vec<Option<Vec<u8>>> = widths
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let w = if one_width { widths[0] } else { w };
                    // A null with one width keeps its bytes, as a decoded page's nulls may.
                    (!nulls[i] || one_width).then(|| vec![i as u8; w])
                })
                .collect();
            let array: ArrayRef = Arc::new(BinaryArray::from_opt_vec(
                values.iter().map(Option::as_deref).collect(),
            ));
            let from = slice_from.min(array.len());
            for array in [Arc::clone(&array), array.slice(from, array.len() - from)] {
                let page = Page::new(Arc::clone(&array));
                let own = array.as_binary::<i32>();
                for row in 0..array.len() {
                    prop_assert_eq!(page.binary(row), Some(own.value(row)));
                }
                prop_assert_eq!(page.binary(array.len()), None);
            }
        }
    }
}
