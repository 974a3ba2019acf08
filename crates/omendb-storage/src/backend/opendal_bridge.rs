//! OpenDAL services as an `ObjectStore`, through the `object_store_opendal` bridge.
//!
//! The bridge's recursive listing also returns directories as zero-byte objects (on the `fs`
//! service, the listed prefix itself and every sub-directory), which breaks the `ObjectStore`
//! contract that a listing returns objects only. [`OpenDalStore`] forwards every request to the
//! bridge except listings, which it runs on the OpenDAL operator and filters to files.
//!
//! On the `fs` service ([`OpenDalStore::on_local_dir`]) OpenDAL syncs a written file but not
//! the directory it renames it into, so [`OpenDalStore`] syncs the directory of every object it
//! puts, copies, renames or deletes (as `file://` does), and stages writes in a hidden
//! directory inside the root ([`STAGING`], left out of listings): beside the root, it was on
//! another file system when the root was a mount point, and every rename failed.
//!
//! OpenDAL's create-if-absent is a check followed by a write, so two racing creates can both
//! succeed (the conformance suite caught this on `fs`). [`OpenDalStore`] serializes creates
//! across every OpenDAL store of the process (one lock, so two handles on the same root are
//! covered too); across processes OpenDAL gives no such guarantee, so a database whose writers
//! may race from several processes must use `file://` or `s3://` (see
//! `docs/failure-modes.md`).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use object_store_opendal::OpendalStore;
use opendal::Operator;
use opendal::raw::percent_decode_path;

/// Held across every create-if-absent put of every OpenDAL store in the process.
static CREATES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The directory inside an `fs` root where writes are staged before they are renamed into
/// place; never listed.
pub(super) const STAGING: &str = ".opendal-staging";

/// An OpenDAL operator as an `ObjectStore` whose listings hold files only.
#[derive(Debug, Clone)]
pub struct OpenDalStore {
    bridge: OpendalStore,
    operator: Operator,
    /// The root directory of an `fs` service, whose directories are synced after each change.
    local_root: Option<PathBuf>,
}

impl OpenDalStore {
    /// Wraps `operator`.
    pub fn new(operator: Operator) -> Self {
        Self {
            bridge: OpendalStore::new(operator.clone()),
            operator,
            local_root: None,
        }
    }

    /// Wraps the operator of an `fs` service rooted at `root`, staging its writes in
    /// [`STAGING`] inside it (see the module's documentation).
    pub fn on_local_dir(root: PathBuf) -> opendal::Result<Self> {
        let utf8 = |path: &std::path::Path| {
            path.to_str().map(str::to_owned).ok_or_else(|| {
                opendal::Error::new(opendal::ErrorKind::ConfigInvalid, "the path is not UTF-8")
            })
        };
        let operator = Operator::new(
            opendal::services::Fs::default()
                .root(&utf8(&root)?)
                .atomic_write_dir(&utf8(&root.join(STAGING))?),
        )?;
        Ok(Self {
            local_root: Some(root),
            ..Self::new(operator)
        })
    }

    /// Syncs the directory that holds `location`, on an `fs` service, so that a change of its
    /// entries (a file renamed into it, or removed) outlives a power loss.
    async fn sync_dir_of(&self, location: &Path) -> object_store::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let mut dir = root.clone();
        let parts: Vec<_> = location.parts().collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            dir.push(percent_decode_path(part.as_ref()));
        }
        let synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&dir).and_then(|d| d.sync_all())
        })
        .await
        .map_err(|err| object_store::Error::JoinError { source: err })?;
        match synced {
            // A delete of an object whose directory never existed: nothing to sync.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(|err| object_store::Error::Generic {
                store: "opendal",
                source: Box::new(err),
            }),
        }
    }

    /// Lists the files under `prefix` whose location sorts after `offset`.
    fn files(
        &self,
        prefix: Option<&Path>,
        offset: Option<Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let dir = dir_of(prefix);
        let operator = self.operator.clone();
        let listing = async move {
            let lister = operator
                .lister_with(&dir)
                .recursive(true)
                .await
                .map_err(|err| generic(err, &dir))?;
            let files = lister
                .map_err(move |err| generic(err, "list"))
                .try_filter(|entry| {
                    let staged = entry.path().starts_with(STAGING);
                    futures::future::ready(entry.metadata().is_file() && !staged)
                })
                .and_then(move |entry| object_meta(operator.clone(), entry))
                .try_filter(move |meta| {
                    futures::future::ready(
                        offset.as_ref().is_none_or(|offset| &meta.location > offset),
                    )
                });
            Ok::<_, object_store::Error>(files)
        };
        futures::stream::once(listing).try_flatten().boxed()
    }
}

/// The `ObjectMeta` of a listed file.
async fn object_meta(
    operator: Operator,
    entry: opendal::Entry,
) -> object_store::Result<ObjectMeta> {
    let (path, metadata) = entry.into_parts();
    // A listing may omit the modification time; a stat has it.
    let metadata = match metadata.last_modified() {
        Some(_) => metadata,
        None => operator
            .stat(&path)
            .await
            .map_err(|err| generic(err, &path))?,
    };
    let last_modified = metadata.last_modified().and_then(|ts| {
        let ts = ts.into_inner();
        chrono::DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().unsigned_abs())
    });
    Ok(ObjectMeta {
        location: Path::from(path.as_str()),
        last_modified: last_modified.unwrap_or_default(),
        size: metadata.content_length(),
        e_tag: metadata.etag().map(str::to_owned),
        version: metadata.version().map(str::to_owned),
    })
}

/// The `dir/` OpenDAL lists for an `object_store` prefix (`""` for the root).
fn dir_of(prefix: Option<&Path>) -> String {
    prefix.map_or_else(String::new, |prefix| {
        format!("{}/", percent_decode_path(prefix.as_ref()))
    })
}

fn generic(err: opendal::Error, path: &str) -> object_store::Error {
    if err.kind() == opendal::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.to_owned(),
            source: Box::new(err),
        }
    } else {
        object_store::Error::Generic {
            store: "opendal",
            source: Box::new(err),
        }
    }
}

impl fmt::Display for OpenDalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bridge)
    }
}

#[async_trait]
impl ObjectStore for OpenDalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let put = if opts.mode == PutMode::Create {
            let _serialized = CREATES.lock().await;
            self.bridge.put_opts(location, payload, opts).await?
        } else {
            self.bridge.put_opts(location, payload, opts).await?
        };
        self.sync_dir_of(location).await?;
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.bridge.put_multipart_opts(location, opts).await?;
        Ok(match &self.local_root {
            Some(_) => Box::new(SyncedUpload {
                upload,
                store: self.clone(),
                location: location.clone(),
            }),
            None => upload,
        })
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let range = options.range.clone();
        let result = self.bridge.get_opts(location, options).await?;
        // The bridge answers a range that starts past the end with no bytes; every other store
        // (and any reader that trusts the length it asked for) expects an error.
        let start = match range {
            Some(GetRange::Bounded(range)) => Some(range.start),
            Some(GetRange::Offset(offset)) => Some(offset),
            Some(GetRange::Suffix(_)) | None => None,
        };
        if let Some(start) = start.filter(|&start| start >= result.meta.size && start > 0) {
            return Err(object_store::Error::Generic {
                store: "opendal",
                source: format!(
                    "range starting at {start} is past the end of {location} ({} bytes)",
                    result.meta.size
                )
                .into(),
            });
        }
        // The bridge answers a get of a directory with an empty object; a directory is not an
        // object. Only empty results can be directories, so only they pay for the stat.
        if result.meta.size == 0 {
            let path = percent_decode_path(location.as_ref());
            let is_dir = self
                .operator
                .stat(&format!("{path}/"))
                .await
                .is_ok_and(|meta| meta.is_dir());
            if is_dir {
                return Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "a directory, not an object".into(),
                });
            }
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.bridge.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let store = self.clone();
        self.bridge
            .delete_stream(locations)
            .and_then(move |deleted| {
                let store = store.clone();
                async move {
                    store.sync_dir_of(&deleted).await?;
                    Ok(deleted)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.files(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.files(prefix, Some(offset.clone()))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        // The bridge's version reports the listed directory itself as a common prefix.
        let dir = dir_of(prefix);
        let entries = self
            .operator
            .list(&dir)
            .await
            .map_err(|err| generic(err, &dir))?;
        let mut listed = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        for entry in entries {
            // The listed directory comes back as `dir/` (the root as `/`).
            if entry.path().trim_end_matches('/') == dir.trim_end_matches('/') {
                continue;
            }
            if entry.path().starts_with(STAGING) {
                continue;
            }
            if entry.metadata().is_dir() {
                listed.common_prefixes.push(Path::from(entry.path()));
            } else {
                listed
                    .objects
                    .push(object_meta(self.operator.clone(), entry).await?);
            }
        }
        // Other stores answer in lexicographic order, and callers (object_store's suite) rely on it.
        listed.common_prefixes.sort();
        listed.objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.bridge.copy_opts(from, to, options).await?;
        self.sync_dir_of(to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.bridge.rename_opts(from, to, options).await?;
        self.sync_dir_of(to).await?;
        self.sync_dir_of(from).await
    }
}

/// A multipart upload of an `fs` service whose completion syncs the directory it lands in.
#[derive(Debug)]
struct SyncedUpload {
    upload: Box<dyn MultipartUpload>,
    store: OpenDalStore,
    location: Path,
}

#[async_trait]
impl MultipartUpload for SyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let done = self.upload.complete().await?;
        self.store.sync_dir_of(&self.location).await?;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}
