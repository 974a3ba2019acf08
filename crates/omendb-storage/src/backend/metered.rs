//! Counters and latency histograms per request, recorded through the `metrics` facade: the
//! server installs a Prometheus recorder; an embedding program may install any other, and with
//! none installed recording costs next to nothing.
//!
//! Metrics (labels `backend`, `op`, and `outcome` = `ok` | `error` on the counter):
//! - `omendb_store_requests_total` — requests finished;
//! - `omendb_store_request_duration_seconds` — histogram of their latency;
//! - `omendb_store_retries_total` (from the retry layer, label `op`) — attempts sent again.

use std::future::Future;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectMeta;

use super::layer::{Idempotence, Layer, ListStart, Op};

/// The metrics [`Layer`].
#[derive(Clone, Debug)]
pub struct Metered {
    backend: &'static str,
}

impl Metered {
    /// Records every request under the label `backend` (`file`, `s3`, `memory`, `opendal`).
    pub fn new(backend: &'static str) -> Self {
        Self { backend }
    }

    fn record(&self, op: Op, ok: bool, started: Instant) {
        let outcome = if ok { "ok" } else { "error" };
        metrics::counter!(
            "omendb_store_requests_total",
            "backend" => self.backend, "op" => op.name(), "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!(
            "omendb_store_request_duration_seconds",
            "backend" => self.backend, "op" => op.name()
        )
        .record(started.elapsed().as_secs_f64());
    }
}

impl Layer for Metered {
    fn name(&self) -> &'static str {
        "metrics"
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
        let started = Instant::now();
        let request = attempt();
        let this = self.clone();
        async move {
            let outcome = request.await;
            this.record(op, outcome.is_ok(), started);
            outcome
        }
    }

    fn list(
        &self,
        op: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // A listing counts as one request, recorded when it ends or fails.
        let this = self.clone();
        let started = Instant::now();
        futures::stream::unfold(Some(start()), move |stream| {
            let this = this.clone();
            async move {
                let mut stream = stream?;
                match stream.next().await {
                    Some(Ok(meta)) => Some((Ok(meta), Some(stream))),
                    Some(Err(err)) => {
                        this.record(op, false, started);
                        Some((Err(err), None))
                    }
                    None => {
                        this.record(op, true, started);
                        None
                    }
                }
            }
        })
        .boxed()
    }
}
