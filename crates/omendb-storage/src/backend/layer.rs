//! One `ObjectStore` wrapper, [`Layered`], that routes every request of an inner store through a
//! [`Layer`]: retry, timeout and metrics are each a `Layer`, so the request plumbing is written
//! once and each concern stays a short file.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, UploadPart,
};

/// The kind of a request, used as the `op` label of metrics and in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// A whole-object put.
    Put,
    /// Starting a multipart upload.
    PutMultipart,
    /// One part of a multipart upload.
    PutPart,
    /// Completing a multipart upload.
    Complete,
    /// Aborting a multipart upload.
    Abort,
    /// A get (whole object or a range).
    Get,
    /// A head (metadata only).
    Head,
    /// Several ranges of one object.
    GetRanges,
    /// A delete of one object.
    Delete,
    /// A listing (streamed).
    List,
    /// A listing of one level with common prefixes.
    ListWithDelimiter,
    /// A server-side copy.
    Copy,
    /// A rename.
    Rename,
}

impl Op {
    /// The label used in metrics (`put`, `get`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutMultipart => "put_multipart",
            Op::PutPart => "put_part",
            Op::Complete => "complete_multipart",
            Op::Abort => "abort_multipart",
            Op::Get => "get",
            Op::Head => "head",
            Op::GetRanges => "get_ranges",
            Op::Delete => "delete",
            Op::List => "list",
            Op::ListWithDelimiter => "list_with_delimiter",
            Op::Copy => "copy",
            Op::Rename => "rename",
        }
    }
}

/// Whether a request may be sent again after a failure whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotence {
    /// Sending it twice has the effect of sending it once (get, overwrite put, copy, delete).
    /// A create-if-absent put is also sent again: if the first attempt landed, the second
    /// reports `AlreadyExists`, which the caller must resolve (the manifest does, by token).
    Idempotent,
    /// Sending it twice may do something else (a multipart part appends, a rename's source is
    /// gone after the first).
    Once,
}

/// Opens the listing a [`Layer`] wraps; a layer may call it again to start the listing over.
pub type ListStart =
    Arc<dyn Fn() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + Sync>;

/// A concern wrapped around every request of a store.
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// A short name for `Display` (`retry`, `timeout`, `metrics`).
    fn name(&self) -> &'static str;

    /// Runs one request. `attempt` sends it; a layer may call it more than once only if the
    /// request is [`Idempotence::Idempotent`].
    fn request<T, F, Fut>(
        &self,
        op: Op,
        idempotence: Idempotence,
        attempt: F,
    ) -> impl Future<Output = object_store::Result<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send;

    /// Wraps a listing. `start` opens it, and opens it afresh if a layer starts it over.
    fn list(
        &self,
        op: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>>;
}

/// An `ObjectStore` whose every request goes through `layer` before reaching `inner`.
#[derive(Debug)]
pub struct Layered<L, S: ?Sized> {
    layer: Arc<L>,
    inner: Arc<S>,
}

impl<L: Layer, S: ObjectStore + ?Sized> Layered<L, S> {
    /// Wraps `inner` in `layer`.
    pub fn new(layer: L, inner: Arc<S>) -> Self {
        Self {
            layer: Arc::new(layer),
            inner,
        }
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<L: Layer, S: ObjectStore + ?Sized> fmt::Display for Layered<L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.layer.name(), self.inner)
    }
}

#[async_trait]
impl<L: Layer, S: ObjectStore + ?Sized> ObjectStore for Layered<L, S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        // A create-mode put whose answer was lost comes back as `AlreadyExists`, which its
        // callers settle by reading the object (their token in it). A conditional update's
        // would come back as `Precondition`, telling its caller it lost a compare-and-swap it
        // won: it is sent once.
        let idempotence = match opts.mode {
            PutMode::Update(_) => Idempotence::Once,
            _ => Idempotence::Idempotent,
        };
        self.layer
            .request(Op::Put, idempotence, || {
                self.inner.put_opts(location, payload.clone(), opts.clone())
            })
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self
            .layer
            .request(Op::PutMultipart, Idempotence::Idempotent, || {
                self.inner.put_multipart_opts(location, opts.clone())
            })
            .await?;
        Ok(Box::new(LayeredUpload {
            layer: Arc::clone(&self.layer),
            inner: upload,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            return self
                .layer
                .request(Op::Head, Idempotence::Idempotent, || {
                    self.inner.get_opts(location, options.clone())
                })
                .await;
        }
        // The body is read inside the request: it is most of a get's time, and it can fail after
        // the head arrived. Read by the caller, after the layers, a body that broke off midway
        // was counted `ok` and never retried or timed out, and a get's latency (of a local
        // file, only its opening) left the transfer out. Every reader here reads whole bodies.
        self.layer
            .request(Op::Get, Idempotence::Idempotent, || async {
                let result = self.inner.get_opts(location, options.clone()).await?;
                let (meta, range) = (result.meta.clone(), result.range.clone());
                let (attributes, extensions) =
                    (result.attributes.clone(), result.extensions.clone());
                let body = result.bytes().await?;
                Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(body) }).boxed(),
                    ),
                    meta,
                    range,
                    attributes,
                    extensions,
                })
            })
            .await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.layer
            .request(Op::GetRanges, Idempotence::Idempotent, || {
                self.inner.get_ranges(location, ranges)
            })
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // Each path becomes its own request, so every delete is retried, timed and counted on
        // its own; a bulk delete would hide which path failed.
        let layer = Arc::clone(&self.layer);
        let inner = Arc::clone(&self.inner);
        locations
            .map(move |location| {
                let layer = Arc::clone(&layer);
                let inner = Arc::clone(&inner);
                async move {
                    let location = location?;
                    layer
                        .request(Op::Delete, Idempotence::Idempotent, || {
                            let one = futures::stream::iter([Ok(location.clone())]).boxed();
                            let mut deleted = inner.delete_stream(one);
                            async move { deleted.next().await.unwrap_or(Ok(Path::default())) }
                        })
                        .await?;
                    Ok(location)
                }
            })
            .buffered(DELETE_CONCURRENCY)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        self.layer
            .list(Op::List, Arc::new(move || inner.list(prefix.as_ref())))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        let offset = offset.clone();
        self.layer.list(
            Op::List,
            Arc::new(move || inner.list_with_offset(prefix.as_ref(), &offset)),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.layer
            .request(Op::ListWithDelimiter, Idempotence::Idempotent, || {
                self.inner.list_with_delimiter(prefix)
            })
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        // A create-mode copy whose answer was lost would come back as `AlreadyExists`, which
        // the caller cannot tell from a real conflict: it is sent once.
        let idempotence = match options.mode {
            CopyMode::Create => Idempotence::Once,
            _ => Idempotence::Idempotent,
        };
        self.layer
            .request(Op::Copy, idempotence, || {
                self.inner.copy_opts(from, to, options.clone())
            })
            .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.layer
            .request(Op::Rename, Idempotence::Once, || {
                self.inner.rename_opts(from, to, options.clone())
            })
            .await
    }
}

/// How many deletes of one `delete_stream` are in flight at once.
const DELETE_CONCURRENCY: usize = 8;

/// A multipart upload whose parts and completion go through the layer. Parts are never sent
/// twice: a second `put_part` would add a part, not repeat one.
#[derive(Debug)]
struct LayeredUpload<L> {
    layer: Arc<L>,
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl<L: Layer> MultipartUpload for LayeredUpload<L> {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let layer = Arc::clone(&self.layer);
        let mut part = Some(self.inner.put_part(data));
        async move {
            layer
                .request(Op::PutPart, Idempotence::Once, || {
                    first_call(part.take(), "a multipart part")
                })
                .await
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut inner = Some(&mut self.inner);
        self.layer
            .request(Op::Complete, Idempotence::Once, || {
                first_call(
                    inner.take().map(|upload| upload.complete()),
                    "a multipart completion",
                )
            })
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let mut inner = Some(&mut self.inner);
        self.layer
            .request(Op::Abort, Idempotence::Once, || {
                first_call(
                    inner.take().map(|upload| upload.abort()),
                    "a multipart abort",
                )
            })
            .await
    }
}

/// Runs `request` on the first call; a layer that called again (which [`Idempotence::Once`]
/// forbids) gets an error instead of a repeated request.
async fn first_call<T>(
    request: Option<impl Future<Output = object_store::Result<T>>>,
    what: &str,
) -> object_store::Result<T> {
    match request {
        Some(request) => request.await,
        None => Err(object_store::Error::NotImplemented {
            operation: format!("sending {what} twice"),
            implementer: "Layered".to_owned(),
        }),
    }
}
