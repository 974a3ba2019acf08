//! `omendb-wal` — OmenDB's write-ahead log.
//!
//! What makes an acknowledged write survive a crash: batches of opaque bytes are framed (length,
//! CRC32C, LSN, payload), appended to segmented local files or immutable object-store objects,
//! group-committed and recovered under an explicit recovery mode. It depends on no other OmenDB
//! crate and must never learn about tables, keys or indexes, so it can be embedded on its own.
