//! Segment files of the local log: naming, listing and creation. The bytes are described in
//! `docs/file-formats.md`.

use std::path::{Path, PathBuf};

use crate::Lsn;
use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN};
use crate::io::{FileIo, IoFile};

/// Extension of a segment file.
const EXT: &str = ".wal";
/// Extension of a segment being created; renamed to [`EXT`] once its header is durable.
const TMP_EXT: &str = ".wal.tmp";
/// Extension given to a segment whose header is damaged, by [`crate::RecoveryMode::SkipCorrupt`].
pub(crate) const CORRUPT_EXT: &str = ".corrupt";

/// A segment file and the LSN of its first record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// LSN of the first record the segment holds (or will hold).
    pub(crate) base: Lsn,
    /// Its path.
    pub(crate) path: PathBuf,
}

/// The file name of the segment whose first LSN is `base`: zero-padded so names sort by LSN.
pub(crate) fn file_name(base: Lsn) -> String {
    format!("{base:020}{EXT}")
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, in LSN order, after deleting half-created ones; and the highest LSN
/// a segment set aside as corrupt starts at (0 if none), below which the log never starts again.
pub(crate) fn list(io: &dyn FileIo, dir: &Path) -> Result<(Vec<Segment>, Lsn)> {
    let names = io.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut segments = Vec::new();
    let mut set_aside = 0;
    let mut removed = false;
    for name in names {
        if let Some(base) = name.strip_suffix(CORRUPT_EXT).and_then(parse_name) {
            set_aside = set_aside.max(base);
            continue;
        }
        if name.ends_with(TMP_EXT) {
            // A crash during rotation: the segment never got its final name, so it holds nothing.
            let path = dir.join(&name);
            io.delete(&path).map_err(|e| Error::io("delete", path, e))?;
            removed = true;
        } else if let Some(base) = parse_name(&name) {
            segments.push(Segment {
                base,
                path: dir.join(name),
            });
        }
    }
    if removed {
        io.sync_dir(dir)
            .map_err(|e| Error::io("sync_dir", dir, e))?;
    }
    segments.sort_by_key(|s| s.base);
    Ok((segments, set_aside))
}

/// Creates the segment whose first LSN is `base`: written under a temporary name with its header,
/// preallocated, synced, renamed, and the directory synced, so a segment with its final name
/// always has a complete header.
pub(crate) fn create(
    io: &dyn FileIo,
    dir: &Path,
    base: Lsn,
    preallocate: Option<u64>,
) -> Result<(Segment, Box<dyn IoFile>)> {
    let path = dir.join(file_name(base));
    let tmp = dir.join(format!("{base:020}{TMP_EXT}"));
    let mut file = io.create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let header = format::encode_header(base, 0);
    let written = file
        .write_at(0, &header)
        .map_err(|e| Error::io("write", &tmp, e))?;
    if written != HEADER_LEN {
        return Err(Error::ShortWrite {
            path: tmp,
            written,
            expected: HEADER_LEN,
        });
    }
    if let Some(len) = preallocate {
        file.preallocate(len)
            .map_err(|e| Error::io("preallocate", &tmp, e))?;
    }
    file.sync_data().map_err(|e| Error::io("sync", &tmp, e))?;
    io.rename(&tmp, &path)
        .map_err(|e| Error::io("rename", &tmp, e))?;
    io.sync_dir(dir)
        .map_err(|e| Error::io("sync_dir", dir, e))?;
    Ok((Segment { base, path }, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_name("42.wal"), None);
        assert_eq!(parse_name("00000000000000000042.wal.tmp"), None);
        assert!(file_name(9) < file_name(10));
    }
}
