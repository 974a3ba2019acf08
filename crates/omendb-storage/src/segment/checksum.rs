//! CRC32C checksums of fixed-size chunks of a segment's data region: computed while the writer
//! streams bytes out, checked by the reader on every byte range it decodes.

use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The checksums of consecutive `chunk`-byte pieces of a byte stream (the last may be short).
#[derive(Debug)]
pub(crate) struct ChunkCrcs {
    chunk: usize,
    crcs: Vec<u32>,
    current: u32,
    filled: usize,
}

impl ChunkCrcs {
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            chunk,
            crcs: Vec::new(),
            current: 0,
            filled: 0,
        }
    }

    /// Adds the next bytes of the stream.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.chunk - self.filled).min(bytes.len());
            self.current = crc32c::crc32c_append(self.current, &bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.chunk {
                self.crcs.push(self.current);
                self.current = 0;
                self.filled = 0;
            }
        }
    }

    /// Bytes seen so far.
    pub(crate) fn len(&self) -> u64 {
        (self.crcs.len() * self.chunk + self.filled) as u64
    }

    /// The checksums of every chunk seen so far, the partial last one included.
    pub(crate) fn checksums(&self) -> Vec<u32> {
        let mut crcs = self.crcs.clone();
        if self.filled > 0 {
            crcs.push(self.current);
        }
        crcs
    }
}

/// The checksums as stored in the footer: base64 of little-endian `u32`s.
pub(crate) fn encode(crcs: &[u32]) -> String {
    let bytes: Vec<u8> = crcs.iter().flat_map(|crc| crc.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

/// Parses [`encode`]'s text; `None` if it is not valid.
pub(crate) fn decode(text: &str) -> Option<Vec<u32>> {
    let bytes = STANDARD.decode(text).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The checked layout of a data region: which bytes each checksum covers.
#[derive(Clone, Debug)]
pub(crate) struct Checksums {
    chunk: u64,
    data_end: u64,
    crcs: Vec<u32>,
}

impl Checksums {
    /// `None` if the checksums do not cover exactly `data_end` bytes in `chunk`-byte pieces.
    pub(crate) fn new(chunk: u64, data_end: u64, crcs: Vec<u32>) -> Option<Self> {
        (chunk > 0 && crcs.len() as u64 == data_end.div_ceil(chunk)).then_some(Self {
            chunk,
            data_end,
            crcs,
        })
    }

    /// The range to read so that `range` (within the data region) can be verified: widened to
    /// chunk boundaries. `None` if `range` reaches past the data region.
    pub(crate) fn widen(&self, range: &Range<u64>) -> Option<Range<u64>> {
        if range.end > self.data_end || range.start > range.end {
            return None;
        }
        let start = range.start / self.chunk * self.chunk;
        let end = (range.end.div_ceil(self.chunk) * self.chunk).min(self.data_end);
        Some(start..end)
    }

    /// Checks `bytes`, read from the widened range starting at `start`; on a mismatch returns
    /// the byte offset of the damaged chunk.
    pub(crate) fn verify(&self, start: u64, bytes: &[u8]) -> Result<(), u64> {
        let first = start / self.chunk;
        for (i, piece) in bytes.chunks(self.chunk as usize).enumerate() {
            let index = first + i as u64;
            let expected = usize::try_from(index).ok().and_then(|i| self.crcs.get(i));
            if expected != Some(&crc32c::crc32c(piece)) {
                return Err(index * self.chunk);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_checksums_do_not_depend_on_how_the_stream_is_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut whole = ChunkCrcs::new(1024);
        whole.update(&data);
        let mut pieces = ChunkCrcs::new(1024);
        for piece in data.chunks(333) {
            pieces.update(piece);
        }
        assert_eq!(whole.checksums(), pieces.checksums());
        assert_eq!(whole.len(), 10_000);
        assert_eq!(decode(&encode(&whole.checksums())), Some(whole.checksums()));
        let expected: Vec<u32> = data.chunks(1024).map(crc32c::crc32c).collect();
        assert_eq!(whole.checksums(), expected);
    }

    #[test]
    fn verify_finds_the_damaged_chunk() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut crcs = ChunkCrcs::new(1000);
        crcs.update(&data);
        let checks = Checksums::new(1000, 5000, crcs.checksums()).unwrap();
        let range = checks.widen(&(1500..2100)).unwrap();
        assert_eq!(range, 1000..3000);
        let mut read = data[1000..3000].to_vec();
        assert_eq!(checks.verify(1000, &read), Ok(()));
        read[1500] ^= 1;
        assert_eq!(checks.verify(1000, &read), Err(2000));
        assert_eq!(checks.widen(&(4900..5001)), None);
        assert_eq!(checks.widen(&(4900..5000)), Some(4000..5000));
        assert!(Checksums::new(1000, 5000, vec![0; 4]).is_none());
    }
}
