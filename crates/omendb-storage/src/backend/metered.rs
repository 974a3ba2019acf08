//! Counters and latency histograms per request, recorded through the `metrics` facade: the
//! server installs a Prometheus recorder; an embedding program may install any other, and with
//! none installed recording costs next to nothing.
//!
//! Metrics (labels `backend`, `op`, and `outcome` = `ok` | `error` | `cancelled` on the
//! counter):
//! - `omendb_store_requests_total` — requests finished, or dropped unfinished (`cancelled`: its
//!   caller stopped waiting, as a readiness check that gives up on a store that hangs);
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

    fn record(&self, op: Op, outcome: &'static str, started: Instant) {
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
        let pending = Pending::new(self.clone(), op);
        let request = attempt();
        async move {
            // The whole guard moves into the future (a field alone would be captured), so it
            // is dropped with it.
            let mut pending = pending;
            let outcome = request.await;
            pending.outcome = Some(if outcome.is_ok() { "ok" } else { "error" });
            outcome
        }
    }

    fn list(
        &self,
        op: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // A listing counts as one request, recorded when it ends, fails or is dropped.
        let pending = Pending::new(self.clone(), op);
        futures::stream::unfold(Some((start(), pending)), move |state| async move {
            let (mut stream, mut pending) = state?;
            match stream.next().await {
                Some(Ok(meta)) => Some((Ok(meta), Some((stream, pending)))),
                Some(Err(err)) => {
                    pending.outcome = Some("error");
                    Some((Err(err), None))
                }
                None => {
                    pending.outcome = Some("ok");
                    None
                }
            }
        })
        .boxed()
    }
}

/// A request being measured, recorded when it is dropped: with its outcome, or as `cancelled`
/// if it never finished. Recorded only on finishing, a request its caller gave up on (a
/// readiness check cutting off a store that hangs) was never counted or timed.
struct Pending {
    metered: Metered,
    op: Op,
    started: Instant,
    outcome: Option<&'static str>,
}

impl Pending {
    fn new(metered: Metered, op: Op) -> Self {
        Self {
            metered,
            op,
            started: Instant::now(),
            outcome: None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metered
            .record(self.op, self.outcome.unwrap_or("cancelled"), self.started);
    }
}
