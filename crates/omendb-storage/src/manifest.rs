//! The manifest: which tables and live segments a database has, its flushed LSN, and the epoch
//! of its writer (format: `docs/file-formats.md`).
//!
//! Each version is an immutable object `<prefix>/manifest/<sequence, 20 digits>.json`, written
//! create-if-absent. A writer publishes version `n + 1` only if nobody has written it, so the
//! versions form one chain and at most one writer can extend it: opening a writer publishes a
//! version with a higher epoch, after which every older writer's next publish finds its version
//! taken and fails with [`Error::Fenced`]. Readers take the newest version that is valid.
//!
//! Every version carries a token unique to the publish that wrote it. When a publish's answer
//! is lost (a timeout after the object landed), the retry or the next publish finds the
//! version taken, reads it, and recognises its own token instead of reporting a fence.
//!
//! Old versions and unreferenced segments are deleted only by the current writer, and only
//! once they have been out of use for a grace period, so that readers still on an older
//! version and a fenced writer finishing an upload are not pulled out from under.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::segment::SegmentSeal;

/// The manifest format version this build writes and the newest it reads.
pub const MANIFEST_VERSION: u32 = 1;

/// How many times opening a writer retries after another writer took the version it tried.
const OPEN_ATTEMPTS: usize = 16;

/// A live segment of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// The segment object's path in the store.
    pub path: String,
    /// Rows in the segment.
    pub rows: u64,
    /// The smallest key (`None` for an empty segment).
    pub key_min: Option<u64>,
    /// The largest key.
    pub key_max: Option<u64>,
    /// The smallest LSN.
    pub lsn_min: Option<u64>,
    /// The largest LSN.
    pub lsn_max: Option<u64>,
    /// Size and footer checksum, to open the segment checked end to end.
    pub seal: SegmentSeal,
    /// The sorted run the segment belongs to when one merge wrote several ([`new_run`]); absent
    /// for a segment written alone. A merge's output cut into segments whose LSN ranges do not
    /// meet (keys written in order) is still one run: taken for several, it was merged again,
    /// into the same segments, without end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

/// A run id for the segments of one merge: random, so that no two merges share one.
pub fn new_run() -> u64 {
    rand::rng().random()
}

/// A table: its name, key type, value schema and live segments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The engine's id for the table, unique over the database's life (WAL records name tables
    /// by id, so a dropped table's records are never replayed into a new table of its name).
    pub id: u32,
    /// The key type as the engine names it (`u64`, `i64`, `timestamp`); opaque here.
    pub key_type: String,
    /// The table's value columns.
    pub schema: Schema,
    /// Live segments, in the order the engine keeps them.
    pub segments: Vec<SegmentEntry>,
}

/// What a manifest version says about the database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestData {
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
    /// Every write with an LSN up to this one is in the segments (WAL replay starts after it).
    pub flushed_lsn: u64,
    /// The id the next created table gets (ids are never reused).
    pub next_table_id: u32,
}

/// One published manifest version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format version ([`MANIFEST_VERSION`]).
    pub format_version: u32,
    /// The version number: one more than the version it replaced.
    pub sequence: u64,
    /// The epoch of the writer that published it.
    pub epoch: u64,
    /// Unique to the publish that wrote this version.
    pub token: String,
    /// The contents.
    pub data: ManifestData,
}

/// When garbage becomes deletable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestOptions {
    /// How long a replaced manifest version, and a segment no retained version references, is
    /// kept before it may be deleted. It must exceed the longest a reader keeps using an old
    /// version, and the longest a segment upload takes before its manifest is published.
    pub grace: Duration,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a garbage collection deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifest versions deleted.
    pub manifests: Vec<u64>,
    /// Segment objects deleted.
    pub segments: Vec<String>,
}

/// The manifests of one database (under `prefix`) in a store.
#[derive(Clone, Debug)]
pub struct Manifests {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    options: ManifestOptions,
}

impl Manifests {
    /// The manifests under `<prefix>/manifest/`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path, options: ManifestOptions) -> Self {
        Self {
            store,
            dir: prefix.clone().join("manifest"),
            options,
        }
    }

    fn path_of(&self, sequence: u64) -> Path {
        self.dir
            .clone()
            .join(format!("{sequence:020}.json").as_str())
    }

    /// Every version object, by sequence number (objects with other names are ignored).
    async fn list(&self) -> Result<BTreeMap<u64, ObjectMeta>> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|err| Error::from_store("list", &self.dir, err))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                // Exactly the paths `path_of` writes: 20 digits and `.json`, directly in the
                // directory (a stray `manifest/x/<digits>.json`, matched by its name alone, was
                // taken for a newer version: every collection then reported `Fenced`).
                let digits = meta.location.filename()?.strip_suffix(".json")?;
                let valid = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
                let sequence = digits.parse().ok().filter(|_| valid)?;
                (meta.location == self.path_of(sequence)).then_some((sequence, meta))
            })
            .collect())
    }

    /// Reads version `sequence`: `Ok(None)` if it does not exist, [`Error::Corrupt`] if it is
    /// not a valid manifest.
    pub async fn read(&self, sequence: u64) -> Result<Option<Manifest>> {
        let path = self.path_of(sequence);
        let bytes = match self.store.get(&path).await {
            Ok(got) => {
                let size = got.meta.size;
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|err| Error::from_store("get", &path, err))?;
                // A short body is a request that failed (retry it), not a damaged version.
                if bytes.len() as u64 != size {
                    let source = object_store::Error::Generic {
                        store: "omendb-storage",
                        source: format!("short read: {} of {size} bytes", bytes.len()).into(),
                    };
                    return Err(Error::from_store("get", &path, source));
                }
                bytes
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(Error::from_store("get", &path, err)),
        };
        let manifest = decode(&path, &bytes)?;
        if manifest.sequence != sequence {
            return Err(Error::Corrupt {
                object: path.to_string(),
                reason: format!("holds sequence {}", manifest.sequence),
            });
        }
        Ok(Some(manifest))
    }

    /// The newest valid version, skipping damaged ones; `None` for a new database.
    pub async fn latest(&self) -> Result<Option<Manifest>> {
        self.newest(&self.list().await?, Damaged::Skip).await
    }

    /// The newest version that reads. A version deleted since the listing is passed over; a
    /// damaged one too if `damaged` says so; a version of a newer format never is (a build
    /// rolled back must not read around what a newer build published).
    async fn newest(
        &self,
        versions: &BTreeMap<u64, ObjectMeta>,
        damaged: Damaged,
    ) -> Result<Option<Manifest>> {
        for &sequence in versions.keys().rev() {
            match self.read(sequence).await {
                Ok(Some(manifest)) => return Ok(Some(manifest)),
                Ok(None) => {}
                Err(Error::Corrupt { .. }) if damaged == Damaged::Skip => {}
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// Opens the database for writing: publishes the next version with an epoch above every
    /// earlier writer's, which fences them. A new database starts from `initial`.
    pub async fn open_writer(&self, initial: ManifestData) -> Result<ManifestWriter> {
        let id = random_token();
        let mut last_error = None;
        for _ in 0..OPEN_ATTEMPTS {
            let versions = self.list().await?;
            let next = next_sequence(versions.keys().next_back().copied())?;
            // A writer builds on the newest version, so it must read: publishing above a
            // damaged one would drop whatever it held. The operator restores it (or deletes it
            // to accept the loss).
            let newest = self.newest(&versions, Damaged::Refuse).await?;
            let (epoch, data) = match newest {
                Some(manifest) => (manifest.epoch + 1, manifest.data),
                None => (1, initial.clone()),
            };
            let mut writer = ManifestWriter {
                manifests: self.clone(),
                id: id.clone(),
                epoch,
                current: None,
                pending: None,
            };
            match writer.publish(next, data).await {
                Ok(()) => return Ok(writer),
                // Another writer took the version first: look again and go above it.
                Err(err @ Error::Fenced { .. }) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        // Writers kept opening faster than this one could: give up with the last fence.
        Err(last_error.unwrap_or(Error::Fenced {
            epoch: 0,
            newer_epoch: 0,
        }))
    }
}

/// The one writer of a database's manifest (until another opens and fences it).
#[derive(Debug)]
pub struct ManifestWriter {
    manifests: Manifests,
    id: String,
    epoch: u64,
    current: Option<Manifest>,
    /// A publish whose outcome is unknown (its answer was an error, or its caller stopped
    /// waiting for it): the version and token to look for before publishing again.
    pending: Option<(u64, String)>,
}

impl ManifestWriter {
    /// This writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The newest version this writer published.
    pub fn current(&self) -> Option<&Manifest> {
        self.current.as_ref()
    }

    /// Whether a publish of unknown outcome (its commit failed with an error other than
    /// [`Error::Fenced`]) is not settled yet: the next [`ManifestWriter::commit`] or
    /// [`ManifestWriter::collect_garbage`] settles it, and if it landed it becomes the
    /// current version. A caller that keeps a view of the data (the engine) publishes its
    /// view again rather than let a collection settle it under that view.
    pub fn is_unsettled(&self) -> bool {
        self.pending.is_some()
    }

    /// Publishes `data` as the next version. Fails with [`Error::Fenced`] if another writer
    /// has published since (this writer may not publish again). If it fails with another
    /// error, the version may or may not have landed; the next call finds out.
    pub async fn commit(&mut self, data: ManifestData) -> Result<&Manifest> {
        self.resolve_pending().await?;
        let next = next_sequence(self.current.as_ref().map(|m| m.sequence))?;
        self.publish(next, data).await?;
        self.current
            .as_ref()
            .ok_or_else(|| Error::BadInput("no manifest published".to_owned()))
    }

    /// Fails with [`Error::Fenced`] if a version newer than this writer's current one exists
    /// (another writer opened since). A check at one moment: a writer opening later is found by
    /// this writer's next publish.
    pub async fn ensure_newest(&self) -> Result<()> {
        let versions = self.manifests.list().await?;
        let own = self.current.as_ref().map(|m| m.sequence);
        if let Some((&newest, _)) = versions.iter().next_back()
            && Some(newest) > own
        {
            return Err(self.fenced_by(newest).await);
        }
        Ok(())
    }

    /// Settles a publish whose answer was lost: if it landed, it becomes the current version.
    async fn resolve_pending(&mut self) -> Result<()> {
        // Cleared only once settled: a caller that stops waiting leaves it pending.
        let Some((sequence, token)) = self.pending.clone() else {
            return Ok(());
        };
        let found = self.manifests.read(sequence).await?;
        self.pending = None;
        match found {
            Some(manifest) if manifest.token == token => self.current = Some(manifest),
            Some(other) => return Err(self.fenced(other.epoch)),
            None => {}
        }
        Ok(())
    }

    /// The fence a newer version `sequence` puts up: its epoch (this writer's if it does not read).
    async fn fenced_by(&self, sequence: u64) -> Error {
        let newer = self.manifests.read(sequence).await.ok().flatten();
        self.fenced(newer.map_or(self.epoch, |m| m.epoch))
    }

    fn fenced(&self, newer_epoch: u64) -> Error {
        Error::Fenced {
            epoch: self.epoch,
            newer_epoch,
        }
    }

    async fn publish(&mut self, sequence: u64, data: ManifestData) -> Result<()> {
        match self.publish_at(sequence, data).await? {
            None => Ok(()),
            // This writer's own earlier publish of the version, settled as "did not land" from
            // a slot that read empty, landed after it: it is the current version, and `data`
            // goes above it. Only one publish is ever unsettled, so this happens once. Taken
            // for another writer's, it fenced this writer with no other writer there.
            Some(data) => match self.publish_at(sequence + 1, data).await? {
                None => Ok(()),
                Some(_) => Err(self.fenced(self.epoch)),
            },
        }
    }

    /// [`Self::publish`] at `sequence`, or `data` back if the slot holds an earlier publish of
    /// this writer (now current).
    async fn publish_at(
        &mut self,
        sequence: u64,
        data: ManifestData,
    ) -> Result<Option<ManifestData>> {
        let manifest = Manifest {
            format_version: MANIFEST_VERSION,
            sequence,
            epoch: self.epoch,
            token: format!("{}-{}", self.id, random_token()),
            data,
        };
        let path = self.manifests.path_of(sequence);
        let bytes = encode(&manifest)?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        // Recorded before the request and cleared once its outcome is known: a caller that
        // stops waiting (a cancelled future) leaves a publish of unknown outcome, settled by
        // the next call like a lost answer instead of taken for another writer's.
        self.pending = Some((sequence, manifest.token.clone()));
        match self
            .manifests
            .store
            .put_opts(&path, bytes.into(), create)
            .await
        {
            Ok(_) => self.confirm(manifest).await.map(|()| None),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Taken: by this very publish if an earlier attempt's answer was lost (a retry
                // layer resends it), by an earlier publish of this writer that landed late,
                // else by another writer.
                match self.manifests.read(sequence).await {
                    Ok(Some(found)) if found.token == manifest.token => {
                        self.confirm(found).await.map(|()| None)
                    }
                    Ok(Some(found))
                        if found.epoch == self.epoch
                            && found
                                .token
                                .strip_prefix(self.id.as_str())
                                .is_some_and(|rest| rest.starts_with('-')) =>
                    {
                        self.confirm(found).await?;
                        Ok(Some(manifest.data))
                    }
                    Ok(Some(found)) => {
                        self.pending = None;
                        Err(self.fenced(found.epoch))
                    }
                    // No other writer's version is there: S3 answers 409 to a conditional write
                    // while another to the key is in progress (perhaps this publish's own first
                    // attempt, given up by a timeout). Unsettled, as a lost answer, and settled
                    // by the next call once the slot says what landed.
                    Ok(None) => Err(Error::from_store(
                        "put",
                        &path,
                        object_store::Error::Generic {
                            store: "manifest",
                            source: "the version's slot answered that it is taken but reads \
                                     empty; the publish is settled by the next call"
                                .into(),
                        },
                    )),
                    Err(Error::Corrupt { .. } | Error::UnsupportedVersion { .. }) => {
                        self.pending = None;
                        Err(self.fenced(self.epoch))
                    }
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(Error::from_store("put", &path, err)),
        }
    }

    /// Makes a version this writer created current, unless a higher version exists. That
    /// happens only if this writer stalled past the grace period and garbage collection freed
    /// the slot it created (collection never deletes the newest version): then it is fenced,
    /// and its version, below the newest, is never read.
    async fn confirm(&mut self, manifest: Manifest) -> Result<()> {
        // A failed listing leaves the publish pending: the version landed but is not
        // confirmed, and is settled like a lost answer (taking the next slot instead would find
        // this very version there and report `Fenced` with no other writer).
        let versions = self.manifests.list().await?;
        self.pending = None;
        if let Some((&newest, _)) = versions.iter().next_back()
            && newest > manifest.sequence
        {
            return Err(self.fenced_by(newest).await);
        }
        self.current = Some(manifest);
        Ok(())
    }

    /// Deletes manifest versions replaced more than the grace period before `now`, and
    /// objects under `segments` that no retained version references and that are older than
    /// the grace period. Objects named in `in_use` (segments the writer's own readers still
    /// hold, whatever their age) are kept too. Only the current writer may do this
    /// ([`Error::Fenced`] otherwise).
    pub async fn collect_garbage(
        &mut self,
        segments: &Path,
        in_use: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Result<GcReport> {
        self.resolve_pending().await?;
        let manifests = &self.manifests;
        let grace = chrono::Duration::from_std(manifests.options.grace)
            .map_err(|_| Error::BadInput("grace period too long".to_owned()))?;
        let versions = manifests.list().await?;
        let current = self.current.as_ref().map_or(0, |m| m.sequence);
        if let Some((&newest, _)) = versions.iter().next_back()
            && newest != current
        {
            return Err(self.fenced_by(newest).await);
        }
        // A version is retained while it is current or was replaced within the grace period
        // (its successor's age tells when it was replaced). A store that keeps no times (they
        // read as the epoch) makes everything young: nothing is deleted on a guess.
        let past_grace = |at: DateTime<Utc>| at != DateTime::<Utc>::default() && now - at > grace;
        let sequences: Vec<u64> = versions.keys().copied().collect();
        let mut report = GcReport::default();
        let mut retained = Vec::new();
        for (i, &sequence) in sequences.iter().enumerate() {
            let replaced_at = sequences
                .get(i + 1)
                .and_then(|next| versions.get(next))
                .map(|m| m.last_modified);
            match replaced_at {
                Some(at) if past_grace(at) => report.manifests.push(sequence),
                _ => retained.push(sequence),
            }
        }
        let mut referenced = BTreeSet::new();
        for &sequence in &retained {
            // A damaged retained version fails the collection (`?`): what it references is
            // unknown. One deleted since the listing references nothing any more.
            let Some(manifest) = manifests.read(sequence).await? else {
                continue;
            };
            for table in manifest.data.tables.values() {
                referenced.extend(table.segments.iter().map(|s| s.path.clone()));
            }
        }
        let objects: Vec<ObjectMeta> = manifests
            .store
            .list(Some(segments))
            .try_collect()
            .await
            .map_err(|err| Error::from_store("list", segments, err))?;
        for object in objects {
            let path = object.location.to_string();
            if !referenced.contains(&path)
                && !in_use.contains(&path)
                && past_grace(object.last_modified)
            {
                delete(&manifests.store, &object.location).await?;
                report.segments.push(path);
            }
        }
        for &sequence in &report.manifests {
            delete(&manifests.store, &manifests.path_of(sequence)).await?;
        }
        Ok(report)
    }
}

async fn delete(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(err) => Err(Error::from_store("delete", path, err)),
    }
}

/// Whether [`Manifests::newest`] passes over a damaged version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damaged {
    Skip,
    Refuse,
}

/// The version after `last` (1 for an empty chain).
fn next_sequence(last: Option<u64>) -> Result<u64> {
    match last {
        None => Ok(1),
        Some(last) => last.checked_add(1).ok_or_else(|| Error::Corrupt {
            object: format!("manifest {last}"),
            reason: "no sequence number after it".to_owned(),
        }),
    }
}

/// 128 random bits as hex.
fn random_token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The object: the manifest as JSON, a newline, the CRC32C of the JSON as 8 hex digits, a
/// newline (readable with `cat`, checkable with any CRC32C tool).
fn encode(manifest: &Manifest) -> Result<Bytes> {
    let mut bytes = serde_json::to_vec_pretty(manifest)
        .map_err(|err| Error::BadInput(format!("manifest does not serialize: {err}")))?;
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(format!("\n{crc:08x}\n").as_bytes());
    Ok(Bytes::from(bytes))
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let corrupt = |reason: String| Error::Corrupt {
        object: path.to_string(),
        reason,
    };
    let split = bytes
        .len()
        .checked_sub(10)
        .filter(|&at| bytes[at] == b'\n' && bytes[bytes.len() - 1] == b'\n');
    let at = split.ok_or_else(|| corrupt("no checksum line".to_owned()))?;
    let (json, trailer) = bytes.split_at(at);
    let stored = std::str::from_utf8(&trailer[1..9])
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok());
    if stored != Some(crc32c::crc32c(json)) {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(json).map_err(|err| corrupt(err.to_string()))?;
    if version.format_version > MANIFEST_VERSION {
        return Err(Error::UnsupportedVersion {
            object: path.to_string(),
            found: version.format_version,
            supported: MANIFEST_VERSION,
        });
    }
    serde_json::from_slice(json).map_err(|err| corrupt(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            sequence: 7,
            epoch: 3,
            token: "t".to_owned(),
            data: ManifestData {
                tables: BTreeMap::new(),
                flushed_lsn: 42,
                next_table_id: 1,
            },
        }
    }

    #[test]
    fn encoding_round_trips_and_every_flip_or_truncation_is_rejected() {
        let path = Path::from("m");
        let bytes = encode(&manifest()).unwrap();
        assert_eq!(decode(&path, &bytes).unwrap(), manifest());
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x01;
            assert!(decode(&path, &damaged).is_err(), "flip at {at}");
            assert!(decode(&path, &bytes[..at]).is_err(), "truncated to {at}");
        }
    }

    #[test]
    fn a_newer_format_version_is_reported_as_such() {
        let mut newer = manifest();
        newer.format_version = MANIFEST_VERSION + 1;
        let err = decode(&Path::from("m"), &encode(&newer).unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found, .. } if found == MANIFEST_VERSION + 1)
        );
    }
}
