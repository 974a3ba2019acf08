//! A simulated disk for the WAL: an implementation of `omendb_wal::FileIo` that keeps files in
//! memory and models what a real disk promises and what it does not.
//!
//! - Appended bytes are durable only after `sync_data`; a created, renamed or deleted name only
//!   after `sync_dir` of its directory. [`SimDisk::crash`] keeps exactly the durable state, plus,
//!   at random, a prefix of the unsynced bytes torn at a sector boundary (a disk writes sectors
//!   in order but may stop anywhere).
//! - Seeded faults ([`DiskFaults`]): a failing write (part of it may land), a short write, a
//!   failing `fdatasync`, a full disk, a bit flip on read (the stored bytes stay intact), a
//!   failing `create`, `rename`, `delete`, `truncate` or directory sync, a failing `open` or
//!   `list`. A failed `fdatasync` does what Linux does: it marks the dirty pages clean without
//!   writing them, so a retried sync "succeeds" without persisting them and a crash loses them
//!   unless they were written again. A failed directory sync does the same to the names it
//!   should have persisted: they stay as they were on disk until changed again.
//! - A crash ends the "process": every handle opened before it fails from then on, as the files
//!   of a dead process would, and the next [`SimDisk::mount`] sees the state after the crash.
//!   [`SimDisk::crash_after`] crashes it at a chosen operation, to crash in the middle of an
//!   open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use omendb_wal::{FileIo, IoFile};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A disk sector: a crash tears unsynced data only at multiples of it.
pub const SECTOR: usize = 512;

/// Probabilities (0.0 to 1.0) of each fault, per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiskFaults {
    /// A write fails with an I/O error; a random prefix of it may have landed.
    pub write_error: f64,
    /// A write stores only a prefix and reports the shorter length.
    pub short_write: f64,
    /// An `fdatasync` fails; nothing it should have synced becomes durable, then or later.
    pub sync_error: f64,
    /// A write fails with "no space left on device" and stores nothing.
    pub disk_full: f64,
    /// A read returns its bytes with one bit flipped (the stored bytes stay intact).
    pub read_bit_flip: f64,
    /// A `create`, `rename`, `delete`, `truncate` or `sync_dir` fails and changes nothing; the
    /// name changes a failed `sync_dir` should have persisted stay non-durable, then or later,
    /// until the name is changed again.
    pub meta_error: f64,
    /// An `open` or a `list` fails (rarer than the others on a real disk: it writes nothing).
    pub open_error: f64,
}

impl DiskFaults {
    /// No faults.
    pub const NONE: DiskFaults = DiskFaults {
        write_error: 0.0,
        short_write: 0.0,
        sync_error: 0.0,
        disk_full: 0.0,
        read_bit_flip: 0.0,
        meta_error: 0.0,
        open_error: 0.0,
    };
}

/// The kind of an injected disk fault, for counting them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DiskFault {
    /// [`DiskFaults::write_error`].
    WriteError,
    /// [`DiskFaults::short_write`].
    ShortWrite,
    /// [`DiskFaults::sync_error`].
    SyncError,
    /// [`DiskFaults::disk_full`].
    DiskFull,
    /// [`DiskFaults::read_bit_flip`].
    ReadBitFlip,
    /// [`DiskFaults::meta_error`] in a `create`.
    CreateError,
    /// [`DiskFaults::meta_error`] in a `rename`.
    RenameError,
    /// [`DiskFaults::meta_error`] in a `delete`.
    DeleteError,
    /// [`DiskFaults::meta_error`] in a `truncate`.
    TruncateError,
    /// [`DiskFaults::meta_error`] in a `sync_dir`.
    SyncDirError,
    /// [`DiskFaults::open_error`] in an `open`.
    OpenError,
    /// [`DiskFaults::open_error`] in a `list`.
    ListError,
}

impl DiskFault {
    /// Every kind.
    pub const ALL: [DiskFault; KINDS] = [
        DiskFault::WriteError,
        DiskFault::ShortWrite,
        DiskFault::SyncError,
        DiskFault::DiskFull,
        DiskFault::ReadBitFlip,
        DiskFault::CreateError,
        DiskFault::RenameError,
        DiskFault::DeleteError,
        DiskFault::TruncateError,
        DiskFault::SyncDirError,
        DiskFault::OpenError,
        DiskFault::ListError,
    ];

    /// The faults of a write: an error, a prefix stored, the disk full.
    pub const WRITE: [DiskFault; 3] = [
        DiskFault::WriteError,
        DiskFault::ShortWrite,
        DiskFault::DiskFull,
    ];

    /// The faults of [`DiskFaults::meta_error`].
    pub const META: [DiskFault; 5] = [
        DiskFault::CreateError,
        DiskFault::RenameError,
        DiskFault::DeleteError,
        DiskFault::TruncateError,
        DiskFault::SyncDirError,
    ];

    fn index(self) -> usize {
        match self {
            DiskFault::WriteError => 0,
            DiskFault::ShortWrite => 1,
            DiskFault::SyncError => 2,
            DiskFault::DiskFull => 3,
            DiskFault::ReadBitFlip => 4,
            DiskFault::CreateError => 5,
            DiskFault::RenameError => 6,
            DiskFault::DeleteError => 7,
            DiskFault::TruncateError => 8,
            DiskFault::SyncDirError => 9,
            DiskFault::OpenError => 10,
            DiskFault::ListError => 11,
        }
    }
}

impl fmt::Display for DiskFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFault::WriteError => "write error",
            DiskFault::ShortWrite => "short write",
            DiskFault::SyncError => "fdatasync error",
            DiskFault::DiskFull => "disk full",
            DiskFault::ReadBitFlip => "bit flip on read",
            DiskFault::CreateError => "create error",
            DiskFault::RenameError => "rename error",
            DiskFault::DeleteError => "delete error",
            DiskFault::TruncateError => "truncate error",
            DiskFault::SyncDirError => "directory sync error",
            DiskFault::OpenError => "open error",
            DiskFault::ListError => "list error",
        })
    }
}

/// How many kinds of [`DiskFault`] there are.
const KINDS: usize = 12;

/// Injected faults by [`DiskFault::index`].
type Counters = [AtomicU64; KINDS];

/// One file's bytes as the process sees them and as they would survive a crash.
#[derive(Debug, Default)]
struct FileData {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// The lowest offset written since the last sync, successful or not: bytes below it that
    /// differ from `durable` were dropped by a failed sync and can no longer be persisted.
    dirty_from: usize,
}

impl FileData {
    /// Writes `bytes` at `offset` (a hole before it reads as zeros); unsynced from there on.
    fn store(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.dirty_from = self.dirty_from.min(offset);
    }

    /// `durable` with the process's bytes from `dirty_from` up to `upto` written over it; a
    /// gap a failed sync left below `dirty_from` reads as zeros (the blocks were never
    /// written).
    fn persisted(&self, upto: usize) -> Vec<u8> {
        let from = self.dirty_from.min(self.data.len());
        let upto = upto.clamp(from, self.data.len());
        let mut out = self.durable.clone();
        if upto > from {
            if out.len() < upto {
                out.resize(upto, 0);
            }
            out[from..upto].copy_from_slice(&self.data[from..upto]);
        }
        out
    }
}

#[derive(Debug)]
struct DiskState {
    rng: StdRng,
    faults: DiskFaults,
    /// Files by inode number.
    /// Ordered, so that a crash draws from the RNG in the same order on every run.
    files: BTreeMap<u64, FileData>,
    next_inode: u64,
    /// The names the process sees, and the names a crash keeps.
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories that exist (created directories are taken as durable at once: the WAL
    /// creates its directory before anything in it matters).
    dirs: Vec<PathBuf>,
    /// Which process life the disk is in; handles of an earlier life fail.
    life: u64,
    /// Who holds the directory lock, by life.
    locked: HashMap<PathBuf, u64>,
    /// Names whose change (creation, rename or deletion) a failed `sync_dir` dropped: no later
    /// `sync_dir` persists it until the name changes again.
    dropped_names: BTreeSet<PathBuf>,
    /// Operations of live handles so far, and the one at which [`SimDisk::crash_after`] crashes
    /// the disk, with what to do then.
    operations: u64,
    crash_at: Option<(u64, OnCrash)>,
    /// Whether that crash happened since it was armed.
    crash_fired: bool,
}

/// What to do when a [`SimDisk::crash_after`] crash happens (kill the rest of the "process").
struct OnCrash(Box<dyn FnOnce() + Send>);

impl fmt::Debug for OnCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnCrash")
    }
}

/// The shared simulated disk. Cloning gives another handle to the same disk.
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    /// Injected faults by [`DiskFault::index`].
    injected: Arc<Counters>,
}

impl SimDisk {
    /// An empty disk whose faults and crashes draw from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                rng: StdRng::seed_from_u64(seed),
                faults: DiskFaults::NONE,
                files: BTreeMap::new(),
                next_inode: 1,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs: Vec::new(),
                life: 0,
                locked: HashMap::new(),
                dropped_names: BTreeSet::new(),
                operations: 0,
                crash_at: None,
                crash_fired: false,
            })),
            injected: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // Every operation leaves the state consistent before it can fail, so a panicked holder
        // (a failed test assertion elsewhere) leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fault probabilities for every handle from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// How many faults have been injected so far, of every kind.
    pub fn injected(&self) -> u64 {
        self.injected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// How many faults of one kind have been injected so far.
    pub fn injected_of(&self, fault: DiskFault) -> u64 {
        self.injected[fault.index()].load(Ordering::Relaxed)
    }

    /// How many faults of the kinds `faults` have been injected so far.
    pub fn injected_of_all(&self, faults: &[DiskFault]) -> u64 {
        faults.iter().map(|&fault| self.injected_of(fault)).sum()
    }

    /// A `FileIo` for one process life. After [`SimDisk::crash`], it and its files fail.
    pub fn mount(&self) -> Arc<dyn FileIo> {
        let life = self.lock().life;
        Arc::new(Mount {
            disk: self.clone(),
            life,
        })
    }

    /// A simulated power loss: unsynced bytes and undirsynced names are lost, except that a
    /// file's unsynced bytes may survive up to a random sector boundary. Every handle of the
    /// current life fails from now on.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Crashes the disk at the `ops`-th operation of a live handle from now (1: the next one),
    /// which fails as the crashed process's, and then runs `then` (to kill the rest of the
    /// "process" at the same moment). Replaces a crash armed before.
    pub fn crash_after(&self, ops: u64, then: impl FnOnce() + Send + 'static) {
        let mut state = self.lock();
        let at = state.operations + ops.max(1);
        state.crash_at = Some((at, OnCrash(Box::new(then))));
    }

    /// Disarms the crash [`crash_after`](Self::crash_after) armed; returns whether it had
    /// already happened.
    pub fn disarm_crash(&self) -> bool {
        let mut state = self.lock();
        state.crash_at = None;
        std::mem::take(&mut state.crash_fired)
    }

    /// Operations of live handles so far (those of a crashed life not counted), to choose
    /// where [`crash_after`](Self::crash_after) lands.
    pub fn operations(&self) -> u64 {
        self.lock().operations
    }

    /// Bytes of the file at `path` as the process sees them.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        state.files.get(inode).map(|f| f.data.clone())
    }
}

impl DiskState {
    /// Whether a fault of probability `p` happens now.
    fn roll(&mut self, p: f64, injected: &Counters, fault: DiskFault) -> bool {
        let hit = p > 0.0 && self.rng.random_bool(p.min(1.0));
        if hit {
            injected[fault.index()].fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// See [`SimDisk::crash`].
    fn crash(&mut self) {
        self.life += 1;
        self.locked.clear();
        self.names = self.durable_names.clone();
        self.dropped_names.clear();
        let live: Vec<u64> = self.names.values().copied().collect();
        self.files.retain(|inode, _| live.contains(inode));
        for file in self.files.values_mut() {
            if file.data == file.durable {
                file.dirty_from = file.data.len();
                continue;
            }
            // Only bytes written since the last sync can still reach the disk (a failed sync
            // dropped the ones before `dirty_from`), and sectors reach it in order: those from
            // `dirty_from` below `cut` hold the new bytes, the rest the old ones.
            let from = file.dirty_from.min(file.data.len());
            let cut = if self.rng.random_bool(0.5) {
                from
            } else {
                let upto = self.rng.random_range(from..=file.data.len());
                (upto / SECTOR * SECTOR).max(from)
            };
            let after = file.persisted(cut);
            file.durable = after.clone();
            file.data = after;
            file.dirty_from = file.data.len();
        }
    }

    /// Counts one operation of a live handle, and crashes the disk instead if it is the one
    /// [`SimDisk::crash_after`] chose.
    fn operate(&mut self) -> io::Result<()> {
        self.operations += 1;
        if self
            .crash_at
            .as_ref()
            .is_some_and(|(at, _)| *at <= self.operations)
            && let Some((_, then)) = self.crash_at.take()
        {
            self.crash();
            self.crash_fired = true;
            (then.0)();
            return Err(crashed());
        }
        Ok(())
    }

    /// A name changed: the next `sync_dir` may persist it again.
    fn touched(&mut self, path: &Path) {
        self.dropped_names.remove(path);
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this process's files are gone")
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// The disk as one process life sees it.
#[derive(Debug)]
struct Mount {
    disk: SimDisk,
    life: u64,
}

impl Mount {
    /// The disk's state for one operation, or an error if this life has crashed.
    fn state(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.disk.lock();
        if state.life != self.life {
            return Err(crashed());
        }
        state.operate()?;
        Ok(state)
    }

    /// The disk's state for one operation that fails with probability `p` as `fault`.
    fn state_or_fault(
        &self,
        p: impl Fn(&DiskFaults) -> f64,
        fault: DiskFault,
    ) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.state()?;
        let p = p(&state.faults);
        if state.roll(p, &self.disk.injected, fault) {
            return Err(injected(&fault.to_string()));
        }
        Ok(state)
    }
}

impl FileIo for Mount {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        if !state.dirs.iter().any(|d| d == dir) {
            state.dirs.push(dir.to_owned());
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let mut state = self.state_or_fault(|f| f.meta_error, DiskFault::CreateError)?;
        if state.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.files.insert(inode, FileData::default());
        state.names.insert(path.to_owned(), inode);
        state.touched(path);
        Ok(Box::new(SimFile {
            disk: self.disk.clone(),
            life: self.life,
            inode,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let state = self.state_or_fault(|f| f.open_error, DiskFault::OpenError)?;
        let inode = *state
            .names
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(SimFile {
            disk: self.disk.clone(),
            life: self.life,
            inode,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state_or_fault(|f| f.open_error, DiskFault::ListError)?;
        if !state.dirs.iter().any(|d| d == dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state_or_fault(|f| f.meta_error, DiskFault::RenameError)?;
        let inode = state
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.names.insert(to.to_owned(), inode);
        state.touched(from);
        state.touched(to);
        Ok(())
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state_or_fault(|f| f.meta_error, DiskFault::DeleteError)?;
        state
            .names
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.touched(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let state = &mut *state;
        let faults = state.faults;
        let failed = state.roll(
            faults.meta_error,
            &self.disk.injected,
            DiskFault::SyncDirError,
        );
        // The names of `dir` whose change is not durable yet, and may be made so now.
        let changed: BTreeSet<PathBuf> = state
            .names
            .keys()
            .chain(state.durable_names.keys())
            .filter(|p| p.parent() == Some(dir))
            .filter(|p| state.names.get(*p) != state.durable_names.get(*p))
            .filter(|p| !state.dropped_names.contains(*p))
            .cloned()
            .collect();
        if failed {
            // As a failed `fdatasync` drops its pages: a later sync of the directory finds
            // these changes already "written" and persists none of them.
            state.dropped_names.extend(changed);
            return Err(injected(&DiskFault::SyncDirError.to_string()));
        }
        for path in changed {
            match state.names.get(&path) {
                Some(inode) => state.durable_names.insert(path, *inode),
                None => state.durable_names.remove(&path),
            };
        }
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let mut state = self.state()?;
        if state.locked.get(dir).is_some_and(|life| *life == self.life) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        state.locked.insert(dir.to_owned(), self.life);
        Ok(Box::new(DirLock {
            disk: self.disk.clone(),
            dir: dir.to_owned(),
            life: self.life,
        }))
    }
}

/// Holds a directory lock until dropped.
#[derive(Debug)]
struct DirLock {
    disk: SimDisk,
    dir: PathBuf,
    life: u64,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut state = self.disk.lock();
        if state.locked.get(&self.dir) == Some(&self.life) {
            state.locked.remove(&self.dir);
        }
    }
}

/// An open file of one process life.
#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    life: u64,
    inode: u64,
}

impl SimFile {
    /// The disk's state and this file, or an error if the life crashed or the file is gone.
    fn with<T>(&self, f: impl FnOnce(&mut DiskState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.lock();
        if state.life != self.life {
            return Err(crashed());
        }
        state.operate()?;
        if !state.files.contains_key(&self.inode) {
            // Deleted and then lost at a crash of this life cannot happen (a crash ends the
            // life), so this is a file whose name was removed: it still exists while open.
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        f(&mut state, self.inode)
    }
}

/// Looks up a file the caller has checked exists.
fn file(state: &mut DiskState, inode: u64) -> io::Result<&mut FileData> {
    state
        .files
        .get_mut(&inode)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

impl IoFile for SimFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let counter = Arc::clone(&self.disk.injected);
        let offset =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.with(|state, inode| {
            let faults = state.faults;
            if state.roll(faults.disk_full, &counter, DiskFault::DiskFull) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected fault: no space left on device",
                ));
            }
            if state.roll(faults.write_error, &counter, DiskFault::WriteError) {
                let landed = state.rng.random_range(0..=buf.len());
                file(state, inode)?.store(offset, &buf[..landed]);
                return Err(injected("write failed"));
            }
            let stored = if buf.len() > 1
                && state.roll(faults.short_write, &counter, DiskFault::ShortWrite)
            {
                state.rng.random_range(0..buf.len())
            } else {
                buf.len()
            };
            file(state, inode)?.store(offset, &buf[..stored]);
            Ok(stored)
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let counter = Arc::clone(&self.disk.injected);
        self.with(|state, inode| {
            let faults = state.faults;
            let failed = state.roll(faults.sync_error, &counter, DiskFault::SyncError);
            let file = file(state, inode)?;
            if failed {
                // Linux marks the pages clean after a failed writeback: a retried sync finds
                // nothing to write, and the bytes are lost at a crash unless written again.
                file.dirty_from = file.data.len();
                return Err(injected("fdatasync failed"));
            }
            let len = file.data.len();
            file.durable = file.persisted(len);
            file.durable.truncate(len);
            file.dirty_from = len;
            Ok(())
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let counter = Arc::clone(&self.disk.injected);
        self.with(|state, inode| {
            let faults = state.faults;
            let flip = state.roll(faults.read_bit_flip, &counter, DiskFault::ReadBitFlip);
            let data = &file(state, inode)?.data;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            if flip && n > 0 {
                let bit = state.rng.random_range(0..n * 8);
                buf[bit / 8] ^= 1 << (bit % 8);
            }
            Ok(n)
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|state, inode| Ok(file(state, inode)?.data.len() as u64))
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let counter = Arc::clone(&self.disk.injected);
        self.with(|state, inode| {
            let faults = state.faults;
            if state.roll(faults.meta_error, &counter, DiskFault::TruncateError) {
                return Err(injected(&DiskFault::TruncateError.to_string()));
            }
            let file = file(state, inode)?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len < file.data.len() {
                file.data.truncate(len);
                file.dirty_from = file.dirty_from.min(len);
            } else {
                file.data.resize(len, 0);
            }
            Ok(())
        })
    }
}
