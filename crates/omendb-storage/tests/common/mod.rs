//! Shared test harness: a real S3 server (`moto_server`) on a free loopback port, and the list of
//! backends every conformance test runs against.

#![allow(dead_code, unreachable_pub)]

mod moto;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use moto::Moto;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{ObjectMeta, ObjectStore};
use omendb_storage::backend::{
    self, Idempotence, Layer, Layered, ListStart, Metered, Op, Retry, RetryPolicy, Timeout,
};
use omendb_storage::{Backend, BackendOptions, Scheme};
use tempfile::TempDir;

/// A store under test with whatever keeps it alive (a temporary directory).
pub struct Subject {
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
    _dir: Option<TempDir>,
}

/// The stores of one backend kind: a fresh, empty store per call.
pub enum Kind {
    Memory,
    File,
    OpenDalFs,
    S3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Memory, Kind::File, Kind::OpenDalFs, Kind::S3];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::File => "file",
            Kind::OpenDalFs => "opendal+fs",
            Kind::S3 => "s3",
        }
    }

    /// A fresh, empty raw store of this kind (S3 needs `moto`).
    pub fn raw(&self, moto: Option<&Moto>) -> (Arc<dyn ObjectStore>, Scheme, Option<TempDir>) {
        let options = BackendOptions::default();
        match self {
            Kind::Memory => (
                backend::open_raw("memory://", &options).unwrap().1,
                Scheme::Memory,
                None,
            ),
            Kind::File | Kind::OpenDalFs => {
                let dir = tempfile::tempdir().unwrap();
                let scheme = if matches!(self, Kind::File) {
                    "file"
                } else {
                    "opendal+fs"
                };
                // OpenDAL stages writes in a directory beside its root: a root inside the
                // temporary directory keeps that one inside it too, removed with it.
                let url = format!("{scheme}://{}", dir.path().join("store").display());
                let (scheme, store) = backend::open_raw(&url, &options).unwrap();
                (store, scheme, Some(dir))
            }
            Kind::S3 => {
                let moto = moto.expect("the S3 backend needs moto");
                (moto.open_raw("conformance"), Scheme::S3, None)
            }
        }
    }

    /// Every subject of this kind: the raw store, the full wrapper stack of `Backend`, and (for
    /// memory, where it is cheap) each wrapper on its own.
    pub fn subjects(&self, moto: Option<&Moto>) -> Vec<Subject> {
        let mut subjects = Vec::new();
        let (store, _, dir) = self.raw(moto);
        subjects.push(Subject {
            name: format!("{} raw", self.name()),
            store,
            _dir: dir,
        });
        let (store, scheme, dir) = self.raw(moto);
        let wrapped = Backend::from_store(scheme, store, &BackendOptions::default());
        subjects.push(Subject {
            name: format!("{} metrics(retry(timeout))", self.name()),
            store: Arc::clone(wrapped.store()),
            _dir: dir,
        });
        if matches!(self, Kind::Memory) {
            let fresh = || self.raw(moto).0;
            subjects.push(Subject {
                name: "memory retry".to_owned(),
                store: Arc::new(Layered::new(Retry::new(RetryPolicy::default()), fresh())),
                _dir: None,
            });
            subjects.push(Subject {
                name: "memory timeout".to_owned(),
                store: Arc::new(Layered::new(Timeout::new(Duration::from_secs(5)), fresh())),
                _dir: None,
            });
            subjects.push(Subject {
                name: "memory metrics".to_owned(),
                store: Arc::new(Layered::new(Metered::new("memory"), fresh())),
                _dir: None,
            });
        }
        subjects
    }
}

impl Kind {
    /// A fresh store of this kind behind the full wrapper stack, as the engine uses it.
    pub fn wrapped(&self, moto: Option<&Moto>) -> (Arc<dyn ObjectStore>, Option<TempDir>) {
        let (store, scheme, dir) = self.raw(moto);
        (
            Arc::clone(Backend::from_store(scheme, store, &BackendOptions::default()).store()),
            dir,
        )
    }
}

/// A test layer that misbehaves on purpose, each fault counted down as it is used:
/// - `fail`: attempts answered with an error before they are sent (transient unless
///   `definite`);
/// - `land_then_fail`: puts that land and then answer with a transient error (a timeout after
///   the request reached the server);
/// - `stall`: attempts that hang for an hour before they are sent;
/// - `hang_after_put`: puts that land and then hang for an hour (the caller gives up);
/// - `list_cut`: the first listing fails after that many objects;
/// - `conflict_put`: puts answered `AlreadyExists` without being sent (S3's 409 for a
///   conditional write while another to the same key is in progress).
#[derive(Debug, Default)]
pub struct Faults {
    pub fail: AtomicU32,
    pub definite: bool,
    pub land_then_fail: AtomicU32,
    pub stall: AtomicU32,
    pub hang_after_put: AtomicU32,
    pub conflict_put: AtomicU32,
    pub list_cut: Option<usize>,
    pub cut_done: std::sync::atomic::AtomicBool,
    /// Every attempt seen.
    pub attempts: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn transient(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: what.to_owned().into(),
    }
}

impl Faults {
    /// A store whose requests go through `self` to a fresh in-memory store.
    pub fn over_memory(self) -> Arc<Layered<Faults, object_store::memory::InMemory>> {
        Arc::new(Layered::new(
            self,
            Arc::new(object_store::memory::InMemory::new()),
        ))
    }
}

impl Layer for Faults {
    fn name(&self) -> &'static str {
        "faults"
    }

    fn request<T, F, Fut>(
        &self,
        op: Op,
        _: Idempotence,
        mut attempt: F,
    ) -> impl Future<Output = object_store::Result<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send,
    {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let error = take(&self.fail).then(|| {
            if self.definite {
                object_store::Error::PermissionDenied {
                    path: "x".into(),
                    source: "injected".into(),
                }
            } else {
                transient("injected")
            }
        });
        let lose_answer = op == Op::Put && take(&self.land_then_fail);
        let stall = take(&self.stall);
        let hang = op == Op::Put && take(&self.hang_after_put);
        let conflict = op == Op::Put && take(&self.conflict_put);
        let request = attempt();
        async move {
            if conflict {
                return Err(object_store::Error::AlreadyExists {
                    path: "x".into(),
                    source: "a conflicting conditional write is in progress".into(),
                });
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if let Some(error) = error {
                return Err(error);
            }
            let outcome = request.await;
            if hang && outcome.is_ok() {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if lose_answer && outcome.is_ok() {
                return Err(transient("answer lost"));
            }
            outcome
        }
    }

    fn list(
        &self,
        _: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = start();
        match self.list_cut {
            Some(cut) if !self.cut_done.swap(true, Ordering::SeqCst) => listing
                .take(cut)
                .chain(futures::stream::once(async { Err(transient("cut")) }))
                .boxed(),
            _ => listing,
        }
    }
}

/// An in-memory store with scripted misbehaviour no [`Layer`] can express, as it touches bodies
/// and the order requests land in.
#[derive(Debug, Default)]
pub struct Scripted {
    pub inner: object_store::memory::InMemory,
    /// Every get's body waits this long, then fails (a connection that dropped mid-transfer).
    pub bodies_break_after: Option<Duration>,
    /// The next create answers "already exists" without landing (it waits in `held`), and
    /// lands just before the create after it (S3's 409 while the writer's own first attempt is
    /// in flight).
    pub hold_next_create: std::sync::atomic::AtomicBool,
    pub held: std::sync::Mutex<Option<(object_store::path::Path, object_store::PutPayload)>>,
}

impl std::fmt::Display for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "scripted")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Scripted {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if matches!(opts.mode, object_store::PutMode::Create) {
            if self.hold_next_create.swap(false, Ordering::SeqCst) {
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((location.clone(), payload));
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "a conflicting conditional write is in progress".into(),
                });
            }
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((path, late)) = held {
                self.inner.put_opts(&path, late, opts.clone()).await?;
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        let Some(wait) = self.bodies_break_after else {
            return Ok(result);
        };
        let body = futures::stream::once(async move {
            tokio::time::sleep(wait).await;
            Err(object_store::Error::Generic {
                store: "scripted",
                source: "the connection dropped mid-body".into(),
            })
        });
        Ok(object_store::GetResult {
            payload: object_store::GetResultPayload::Stream(body.boxed()),
            meta: result.meta.clone(),
            range: result.range.clone(),
            attributes: result.attributes.clone(),
            extensions: result.extensions.clone(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
