//! Buffers that many cached pages hold alike, kept once.
//!
//! Two buffers of a decoded page are often the same in every page of a column: the offsets of a
//! variable-width column whose values all have one width (every 16-byte value of a key-value
//! table: `0, 16, 32, …`), and the bits of a `_tombstone` page without a deletion (all zero).
//! A point read reads one entry of each at random, and with a buffer per page each is a cache
//! miss of its own (two of the five or so a `get` pays). Kept once, they stay in the CPU's
//! caches, and the pages weigh less: 4 bytes a row for the offsets, one bit for the tombstones.
//!
//! A page that shares is the same Arrow array as before (same type, same values), so nothing
//! that reads pages changes; only where its buffers live does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{BinaryType, ByteArrayType, Utf8Type};
use arrow_array::{Array, ArrayRef, BooleanArray, GenericByteArray};
use arrow_buffer::{BooleanBuffer, OffsetBuffer};
use arrow_schema::DataType;

use super::page::{Page, fixed_width};

/// Value widths with a shared offsets buffer, at most: a table has a few variable-width columns
/// of fixed width, not thousands, and this bounds the memory kept whatever the data.
const MAX_WIDTHS: usize = 64;

/// The shared buffers of one page cache.
#[derive(Debug, Default)]
pub(crate) struct SharedBuffers {
    /// By value width: `0, w, 2w, …` for the most rows a page has had.
    offsets: Mutex<HashMap<i32, OffsetBuffer<i32>>>,
    /// All-zero bits, for the most rows a page has had.
    zeros: Mutex<Option<BooleanBuffer>>,
}

impl SharedBuffers {
    /// `page` with its offsets or its bits replaced by the shared copy where they are equal to
    /// it, and the bytes of the page that are now shared (not the page's own); `page` itself
    /// where nothing is shared.
    pub(crate) fn share(&self, page: Page) -> (Page, usize) {
        let array = page.array_ref();
        let shared = match array.data_type() {
            // A Binary page's width was found when the page was made (without nulls only).
            DataType::Binary => page
                .width()
                .and_then(|width| self.share_offsets::<BinaryType>(array, width)),
            DataType::Utf8 => fixed_width(array.as_string::<i32>())
                .and_then(|width| self.share_offsets::<Utf8Type>(array, width)),
            DataType::Boolean => self.share_zeros(array.as_boolean()),
            _ => None,
        };
        match shared {
            Some((array, bytes)) => (page.holding(array), bytes),
            None => (page, 0),
        }
    }

    /// `array` (whose offsets are `0, width, 2·width, …`) with the shared offsets of `width`.
    fn share_offsets<T: ByteArrayType<Offset = i32>>(
        &self,
        array: &ArrayRef,
        width: u32,
    ) -> Option<(ArrayRef, usize)> {
        let page = array.as_bytes::<T>();
        let rows = page.len();
        let width = i32::try_from(width).ok()?;
        let bytes = std::mem::size_of_val(page.value_offsets());
        let shared = {
            let mut widths = self.offsets.lock().ok()?;
            let held = widths.get(&width).filter(|held| held.len() > rows);
            match held {
                Some(held) => held.slice(0, rows),
                None if widths.len() < MAX_WIDTHS || widths.contains_key(&width) => {
                    // This page's own offsets become the shared ones: the page stays as it is.
                    widths.insert(width, page.offsets().clone());
                    return Some((Arc::clone(array), bytes));
                }
                None => return None,
            }
        };
        let array =
            GenericByteArray::<T>::try_new(shared, page.values().clone(), page.nulls().cloned())
                .ok()?;
        Some((Arc::new(array), bytes))
    }

    fn share_zeros(&self, page: &BooleanArray) -> Option<(ArrayRef, usize)> {
        let bits = page.values();
        if bits.count_set_bits() != 0 {
            return None;
        }
        let rows = page.len();
        let shared = {
            let mut zeros = self.zeros.lock().ok()?;
            match zeros.as_ref().filter(|held| held.len() >= rows) {
                Some(held) => held.slice(0, rows),
                None => {
                    let whole = BooleanBuffer::new_unset(rows);
                    *zeros = Some(whole.clone());
                    whole
                }
            }
        };
        let array = BooleanArray::new(shared, page.nulls().cloned());
        Some((Arc::new(array), bits.inner().len()))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{BinaryArray, Int64Array, StringArray};

    use super::*;

    fn fixed(rows: usize, width: usize, seed: u8) -> ArrayRef {
        let values: Vec<Vec<u8>> = (0..rows)
            .map(|i| (0..width).map(|j| seed ^ (i + j) as u8).collect())
            .collect();
        Arc::new(BinaryArray::from_iter_values(values))
    }

    /// [`SharedBuffers::share`] of `array` made a page, as an array.
    fn share(shared: &SharedBuffers, array: ArrayRef) -> (ArrayRef, usize) {
        let (page, bytes) = shared.share(Page::new(array));
        (Arc::clone(page.array_ref()), bytes)
    }

    fn offsets_ptr(page: &ArrayRef) -> *const i32 {
        page.as_bytes::<BinaryType>().value_offsets().as_ptr()
    }

    #[test]
    fn pages_of_one_width_share_their_offsets_and_keep_their_values() {
        let shared = SharedBuffers::default();
        let (a, a_shared) = share(&shared, fixed(100, 16, 1));
        let (b, _) = share(&shared, fixed(100, 16, 2));
        let (short, _) = share(&shared, fixed(7, 16, 3));
        assert_eq!(a_shared, 101 * 4);
        assert_eq!(offsets_ptr(&a), offsets_ptr(&b));
        assert_eq!(offsets_ptr(&a), offsets_ptr(&short));
        assert_eq!(a.to_data(), fixed(100, 16, 1).to_data());
        assert_eq!(b.to_data(), fixed(100, 16, 2).to_data());
        assert_eq!(short.to_data(), fixed(7, 16, 3).to_data());
        // A longer page replaces the shared buffer; the pages that hold the old one keep it.
        let (long, _) = share(&shared, fixed(300, 16, 4));
        assert_eq!(long.to_data(), fixed(300, 16, 4).to_data());
        assert_eq!(a.to_data(), fixed(100, 16, 1).to_data());
        let (c, _) = share(&shared, fixed(100, 16, 5));
        assert_eq!(offsets_ptr(&c), offsets_ptr(&long));
        // A page that shares keeps what was found about its values.
        let (page, _) = shared.share(Page::new(fixed(100, 16, 6)));
        assert_eq!(page.width(), Some(16));
        assert_eq!(
            page.binary(99),
            fixed(100, 16, 6).as_binary::<i32>().value(99).into()
        );
    }

    #[test]
    fn pages_that_differ_are_left_as_they_are() {
        let shared = SharedBuffers::default();
        let mixed: ArrayRef = Arc::new(BinaryArray::from_iter_values([
            b"ab".as_slice(),
            b"abc",
            b"ab",
        ]));
        let nulls: ArrayRef = Arc::new(BinaryArray::from_opt_vec(vec![
            Some(b"ab".as_slice()),
            None,
            Some(b"cd"),
        ]));
        let sliced = fixed(10, 4, 0).slice(2, 5);
        let deleted: ArrayRef = Arc::new(BooleanArray::from(vec![false, true, false]));
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        for page in [mixed, nulls, sliced, deleted, numbers] {
            let (out, bytes) = share(&shared, Arc::clone(&page));
            assert!(Arc::ptr_eq(&out, &page), "{page:?}");
            assert_eq!(bytes, 0);
        }
    }

    #[test]
    fn strings_share_offsets_and_empty_tombstone_pages_share_their_bits() {
        let shared = SharedBuffers::default();
        let strings = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; 50])) };
        let (a, _) = share(&shared, strings("abcd"));
        let (b, _) = share(&shared, strings("wxyz"));
        assert_eq!(
            a.as_string::<i32>().value_offsets().as_ptr(),
            b.as_string::<i32>().value_offsets().as_ptr()
        );
        assert_eq!(b.to_data(), strings("wxyz").to_data());
        let live = |rows| -> ArrayRef { Arc::new(BooleanArray::from(vec![false; rows])) };
        let (x, bytes) = share(&shared, live(4096));
        let (y, _) = share(&shared, live(100));
        assert_eq!(bytes, 512);
        assert_eq!(
            x.as_boolean().values().inner().as_ptr(),
            y.as_boolean().values().inner().as_ptr()
        );
        assert_eq!(y.to_data(), live(100).to_data());
        assert_eq!(x.as_boolean().true_count(), 0);
    }

    #[test]
    fn widths_beyond_the_bound_are_not_shared() {
        let shared = SharedBuffers::default();
        for width in 1..=MAX_WIDTHS {
            assert_ne!(share(&shared, fixed(4, width, 0)).1, 0);
        }
        let page = fixed(4, MAX_WIDTHS + 1, 0);
        let (out, bytes) = share(&shared, Arc::clone(&page));
        assert!(Arc::ptr_eq(&out, &page));
        assert_eq!(bytes, 0);
        // A width already held is still shared.
        assert_ne!(share(&shared, fixed(4, 3, 9)).1, 0);
    }
}
