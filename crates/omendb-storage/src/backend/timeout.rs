//! A per-request timeout. A request that gives no answer in time fails with a transient error,
//! so the retry layer (which sits outside this one) sends it again.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectMeta;

use super::layer::{Idempotence, Layer, ListStart, Op};

/// The timeout [`Layer`]. It bounds each request whole (a get's body is read inside it, see
/// [`Layered`](super::Layered)), and each item of a listing.
#[derive(Clone, Debug)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// Fails any request that takes longer than `after`.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

/// The source of the error a timed-out request returns.
#[derive(Debug, thiserror::Error)]
#[error("{op} gave no answer within {after:?}")]
pub struct TimedOut {
    /// The request that timed out.
    pub op: &'static str,
    /// The configured timeout.
    pub after: Duration,
}

fn timed_out(op: Op, after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "timeout",
        source: Box::new(TimedOut {
            op: op.name(),
            after,
        }),
    }
}

impl Layer for Timeout {
    fn name(&self) -> &'static str {
        "timeout"
    }

    fn request<T, F, Fut>(
        &self,
        op: Op,
        _idempotence: Idempotence,
        mut attempt: F,
    ) -> impl Future<Output = object_store::Result<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send,
    {
        let after = self.after;
        let request = attempt();
        async move {
            tokio::time::timeout(after, request)
                .await
                .unwrap_or_else(|_| Err(timed_out(op, after)))
        }
    }

    fn list(
        &self,
        op: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let after = self.after;
        futures::stream::unfold(Some(start()), move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(after, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                // The listing is abandoned after a timeout: its stream may be stuck mid-request.
                Err(_) => Some((Err(timed_out(op, after)), None)),
            }
        })
        .boxed()
    }
}
