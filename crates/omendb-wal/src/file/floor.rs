//! The truncation floor of the local log: the file `TRUNCATED`, which says below which LSN the
//! log's segments are garbage, written durably before a truncation deletes any of them.
//!
//! A deletion is durable only once its directory is synced, and a directory sync that fails
//! need not persist the deletions before it even when a later one succeeds (as a failed
//! `fdatasync` drops the pages it should have written). A truncation whose sync failed, and a
//! later one whose sync succeeded, then left after a crash the first truncation's segments back
//! in place ahead of a gap: a log the next open refused as damaged (found by the simulation,
//! seed 27 of 28, Disk). Recovery drops the segments below the floor instead, whatever the
//! directory still holds. The format is in `docs/file-formats.md`.

use std::path::Path;

use crate::Lsn;
use crate::error::{Error, Result};
use crate::io::{self, FileIo};

/// The file's name in the log's directory.
const NAME: &str = "TRUNCATED";
/// The name it is written under before it is renamed into place.
const TMP_NAME: &str = "TRUNCATED.tmp";
/// Its first bytes.
const MAGIC: &[u8; 8] = b"OMENTRNC";
/// Its length: the magic, the LSN and a CRC32C of both.
const LEN: usize = 20;

/// The floor the log's directory records (0 if none, or if the file is not one this log wrote:
/// recovery then checks every segment as before, and refuses a gap).
pub(crate) fn read(io: &dyn FileIo, dir: &Path) -> Result<Lsn> {
    let path = dir.join(NAME);
    let file = match io.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    if len != LEN as u64 {
        return Ok(0);
    }
    let bytes = io::read_all(file.as_ref(), len).map_err(|e| Error::io("read", &path, e))?;
    Ok(decode(&bytes).unwrap_or(0))
}

/// Records `floor` durably: written under a temporary name, synced, renamed over the old file,
/// and the directory synced. On an error nothing may be deleted on the strength of it.
pub(crate) fn write(io: &dyn FileIo, dir: &Path, floor: Lsn) -> Result<()> {
    let tmp = dir.join(TMP_NAME);
    let mut file = match io.create(&tmp) {
        // Left by a truncation that failed or crashed before its rename.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            io.delete(&tmp).map_err(|e| Error::io("delete", &tmp, e))?;
            io.create(&tmp)
        }
        created => created,
    }
    .map_err(|e| Error::io("create", &tmp, e))?;
    let bytes = encode(floor);
    let written = file
        .write_at(0, &bytes)
        .map_err(|e| Error::io("write", &tmp, e))?;
    if written != bytes.len() {
        return Err(Error::ShortWrite {
            path: tmp,
            written,
            expected: bytes.len(),
        });
    }
    file.sync_data().map_err(|e| Error::io("sync", &tmp, e))?;
    let path = dir.join(NAME);
    io.rename(&tmp, &path)
        .map_err(|e| Error::io("rename", &tmp, e))?;
    io.sync_dir(dir).map_err(|e| Error::io("sync_dir", dir, e))
}

fn encode(floor: Lsn) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..16].copy_from_slice(&floor.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<Lsn> {
    let (body, crc) = bytes.split_at_checked(16)?;
    if body.get(..8)? != MAGIC || crc32c::crc32c(body).to_le_bytes() != *crc {
        return None;
    }
    Some(u64::from_le_bytes(body.get(8..16)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;

    #[test]
    fn a_floor_round_trips_and_damage_reads_as_none() {
        let bytes = encode(1234);
        assert_eq!(decode(&bytes), Some(1234));
        for i in 0..LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert_eq!(decode(&damaged), None, "byte {i}");
        }
        assert_eq!(decode(&bytes[..LEN - 1]), None);
    }
}
