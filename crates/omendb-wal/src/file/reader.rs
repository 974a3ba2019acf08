//! Reading records back from the segment files of the local log.

use std::collections::VecDeque;
use std::sync::Arc;

use super::segment::Segment;
use crate::Record;
use crate::error::{Error, Result};
use crate::io::{self, FileIo};
use crate::replay::{Window, replay};

/// The records of a local log from one LSN up to a fixed last LSN, in order; an iterator.
///
/// It reads one segment at a time into memory. Reads are plain blocking file reads. A segment
/// deleted by [`crate::FileWal::truncate_before`] while the reader still needs it gives an error.
#[derive(Debug)]
pub struct FileReader {
    io: Arc<dyn FileIo>,
    segments: std::vec::IntoIter<Segment>,
    window: Window,
    ready: VecDeque<Record>,
    done: bool,
}

impl FileReader {
    /// Reads `segments` (in LSN order) for the records in `window`.
    pub(crate) fn new(io: Arc<dyn FileIo>, segments: Vec<Segment>, window: Window) -> Self {
        // Segments entirely below `from` are not read: the next one starts at or before it.
        let mut segments = segments;
        let first = segments
            .windows(2)
            .take_while(|pair| pair[1].base <= window.from)
            .count();
        FileReader {
            io,
            segments: segments.split_off(first).into_iter(),
            window,
            ready: VecDeque::new(),
            done: window.from > window.upto,
        }
    }

    /// Reads one segment's records into `ready`.
    fn load(&mut self, seg: &Segment) -> Result<()> {
        let file = self
            .io
            .open(&seg.path)
            .map_err(|e| Error::io("open", &seg.path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &seg.path, e))?;
        let buf = io::read_all(file.as_ref(), len).map_err(|e| Error::io("read", &seg.path, e))?;
        let location = seg.path.display().to_string();
        self.done = replay(&buf, seg.base, &location, self.window, &mut self.ready)?;
        Ok(())
    }
}

impl Iterator for FileReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Some(Ok(record));
            }
            if self.done {
                return None;
            }
            let Some(seg) = self.segments.next() else {
                self.done = true;
                return None;
            };
            if let Err(e) = self.load(&seg) {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
