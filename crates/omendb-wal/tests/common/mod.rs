//! Helpers shared by the integration tests: backends to run the same behaviour against, raw
//! access to the stored bytes to damage them, and a fault-injecting [`FileIo`].
#![allow(dead_code, unreachable_pub)]
// Helpers of tests: a failed call here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use omendb_wal::{
    FileIo, FileWal, IoFile, Lsn, ObjectWal, Record, RecoveryMode, StdIo, Wal, WalOptions,
};
use tempfile::TempDir;

/// Bytes of a segment or object header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a record's framing.
pub const FRAME_HEADER_LEN: usize = 16;

/// Every recovery mode.
pub const MODES: [RecoveryMode; 4] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::AbsoluteConsistency,
    RecoveryMode::PointInTime,
    RecoveryMode::SkipCorrupt,
];

/// Where a log lives.
pub enum Backend {
    /// Local segment files.
    File(TempDir),
    /// `object_store::memory::InMemory`.
    Memory(Arc<InMemory>),
    /// `object_store::local::LocalFileSystem` on a temporary directory.
    Local(TempDir, Arc<LocalFileSystem>),
}

/// A fresh backend of each kind.
pub fn backends() -> Vec<Backend> {
    vec![Backend::file(), Backend::memory(), Backend::local()]
}

const PREFIX: &str = "wal";

impl Backend {
    pub fn file() -> Self {
        Backend::File(tempfile::tempdir().unwrap())
    }

    pub fn memory() -> Self {
        Backend::Memory(Arc::new(InMemory::new()))
    }

    pub fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // fsync on: without it the object-store log on local files would not be durable.
        let store = LocalFileSystem::new_with_prefix(dir.path())
            .unwrap()
            .with_fsync(true);
        Backend::Local(dir, Arc::new(store))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::File(_) => "file",
            Backend::Memory(_) => "memory",
            Backend::Local(..) => "local-object-store",
        }
    }

    fn store(&self) -> Option<Arc<dyn ObjectStore>> {
        match self {
            Backend::File(_) => None,
            Backend::Memory(store) => Some(store.clone()),
            Backend::Local(_, store) => Some(store.clone()),
        }
    }

    /// Opens the log.
    pub async fn open(&self, options: WalOptions) -> omendb_wal::Result<Box<dyn Wal>> {
        match self {
            Backend::File(dir) => Ok(Box::new(FileWal::open(dir.path(), options)?)),
            _ => {
                let store = self.store().unwrap();
                Ok(Box::new(ObjectWal::open(store, PREFIX, options).await?))
            }
        }
    }

    /// The units of storage (segment files or objects), in LSN order.
    pub async fn units(&self) -> Vec<String> {
        match self {
            Backend::File(dir) => segment_paths(dir.path())
                .into_iter()
                .map(|p| p.display().to_string())
                .collect(),
            _ => {
                let store = self.store().unwrap();
                let prefix = ObjectPath::from(PREFIX);
                let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
                let mut names: Vec<String> = metas
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .filter(|n| n.ends_with(".wal"))
                    .collect();
                names.sort();
                names
            }
        }
    }

    pub async fn read_unit(&self, unit: &str) -> Vec<u8> {
        match self {
            Backend::File(_) => std::fs::read(unit).unwrap(),
            _ => {
                let store = self.store().unwrap();
                let got = store.get(&ObjectPath::from(unit)).await.unwrap();
                got.bytes().await.unwrap().to_vec()
            }
        }
    }

    pub async fn write_unit(&self, unit: &str, bytes: &[u8]) {
        match self {
            Backend::File(_) => std::fs::write(unit, bytes).unwrap(),
            _ => {
                let store = self.store().unwrap();
                let payload = PutPayload::from(bytes.to_vec());
                store.put(&ObjectPath::from(unit), payload).await.unwrap();
            }
        }
    }

    pub async fn delete_unit(&self, unit: &str) {
        match self {
            Backend::File(_) => std::fs::remove_file(unit).unwrap(),
            _ => {
                let store = self.store().unwrap();
                store.delete(&ObjectPath::from(unit)).await.unwrap();
            }
        }
    }

    /// Every unit and its bytes, to restore a pristine copy between damage experiments.
    pub async fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for unit in self.units().await {
            let bytes = self.read_unit(&unit).await;
            out.push((unit, bytes));
        }
        out
    }

    /// Puts the log back exactly as in `snapshot`.
    pub async fn restore(&self, snapshot: &[(String, Vec<u8>)]) {
        for unit in self.units().await {
            self.delete_unit(&unit).await;
        }
        if let Backend::File(dir) = self {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
        for (unit, bytes) in snapshot {
            self.write_unit(unit, bytes).await;
        }
    }

    /// Where the frame of `lsn` is: its unit, its offset and its length.
    pub async fn locate(&self, lsn: Lsn) -> (String, usize, usize) {
        let mut seen = 0;
        for unit in self.units().await {
            let bytes = self.read_unit(&unit).await;
            for (offset, len) in frames(&bytes) {
                seen += 1;
                if seen == lsn {
                    return (unit, offset, len);
                }
            }
        }
        panic!("LSN {lsn} not found");
    }
}

/// The segment files of a local log, in LSN order.
pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// (offset, length) of each frame of an undamaged segment or object.
pub fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, FRAME_HEADER_LEN + len));
        at += FRAME_HEADER_LEN + len;
    }
    out
}

/// A distinct payload for record `i`, of a length that varies with `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let len = 20 + (i as usize * 7) % 40;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Every record of the log from `from`.
pub async fn read_all(wal: &dyn Wal, from: Lsn) -> Vec<Record> {
    wal.read_from(from).try_collect().await.unwrap()
}

/// The payloads of the records from `from` on.
pub async fn payloads(wal: &dyn Wal, from: Lsn) -> Vec<Vec<u8>> {
    read_all(wal, from)
        .await
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect()
}

/// The LSNs of `records`.
pub fn lsns(records: &[Record]) -> Vec<Lsn> {
    records.iter().map(|r| r.lsn).collect()
}

/// A runtime for tests that need one but are not `#[tokio::test]`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Faults to inject into [`FaultyIo`]; each is armed once and fires at the next matching call.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next append fails without writing.
    pub fail_append: AtomicBool,
    /// The next append stores only half its bytes and reports that.
    pub short_append: AtomicBool,
    /// The next sync fails.
    pub fail_sync: AtomicBool,
    /// The next sync panics (a bug in an I/O implementation).
    pub panic_sync: AtomicBool,
    /// Syncs attempted so far.
    pub syncs: AtomicU64,
    /// Appends attempted so far.
    pub appends: AtomicU64,
    /// The next read that covers this file offset comes back with bit 0 of that byte flipped
    /// (as from a flaky cable or controller: the bytes on the disk are intact).
    pub flip_read: Mutex<Option<u64>>,
    /// Deletes attempted so far.
    pub deletes: AtomicU64,
    /// The delete with this number (counting from 1 in `deletes`) fails without deleting.
    pub fail_delete: Mutex<Option<u64>>,
    /// Every directory synced, in order.
    pub synced_dirs: Mutex<Vec<PathBuf>>,
}

/// A [`FileIo`] that wraps [`StdIo`] and fails on purpose.
#[derive(Debug, Clone)]
pub struct FaultyIo {
    pub faults: Arc<Faults>,
}

impl FaultyIo {
    pub fn new() -> Self {
        FaultyIo {
            faults: Arc::new(Faults::default()),
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn IoFile>,
    faults: Arc<Faults>,
}

impl IoFile for FaultyFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        self.faults.appends.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_append.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected append failure"));
        }
        if self.faults.short_append.swap(false, Ordering::SeqCst) {
            let half = buf.len() / 2;
            return self.inner.write_at(offset, &buf[..half]);
        }
        self.inner.write_at(offset, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        if self.faults.panic_sync.swap(false, Ordering::SeqCst) {
            panic!("injected panic in sync");
        }
        self.inner.sync_data()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        let mut flip = self.faults.flip_read.lock().unwrap();
        if let Some(at) = *flip
            && (offset..offset + n as u64).contains(&at)
        {
            buf[(at - offset) as usize] ^= 1;
            *flip = None;
        }
        Ok(n)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
}

impl FileIo for FaultyIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdIo.create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(Box::new(FaultyFile {
            inner: StdIo.create(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(Box::new(FaultyFile {
            inner: StdIo.open(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdIo.list(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdIo.rename(from, to)
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        let number = self.faults.deletes.fetch_add(1, Ordering::SeqCst) + 1;
        if *self.faults.fail_delete.lock().unwrap() == Some(number) {
            return Err(io::Error::other("injected delete failure"));
        }
        StdIo.delete(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.synced_dirs.lock().unwrap().push(dir.to_owned());
        StdIo.sync_dir(dir)
    }
}
