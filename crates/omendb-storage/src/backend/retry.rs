//! Retry with exponential backoff and jitter for transient errors ([`crate::error`] decides
//! which errors are transient).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectMeta;
use object_store::path::Path;
use rand::RngExt;

use super::layer::{Idempotence, Layer, ListStart, Op};
use crate::error::is_transient;

/// How often and how patiently a failed request is sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The backoff before the first retry; it doubles for each further retry.
    pub initial_backoff: Duration,
    /// The longest backoff between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): exponential, capped, with jitter in
    /// [½, 1] of it so that clients failing together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exponential.min(self.max_backoff);
        // In seconds, so that the jitter cannot overflow a `Duration` near its maximum.
        let jittered = capped.as_secs_f64() * rand::rng().random_range(0.5..=1.0);
        Duration::try_from_secs_f64(jittered).unwrap_or(capped)
    }
}

/// The retry [`Layer`].
#[derive(Clone, Debug)]
pub struct Retry {
    policy: RetryPolicy,
}

impl Retry {
    /// A retry layer following `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

impl Layer for Retry {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn request<T, F, Fut>(
        &self,
        op: Op,
        idempotence: Idempotence,
        mut attempt: F,
    ) -> impl Future<Output = object_store::Result<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send,
    {
        let policy = self.policy.clone();
        async move {
            let mut retries = 0;
            loop {
                match attempt().await {
                    Err(err)
                        if idempotence == Idempotence::Idempotent
                            && is_transient(&err)
                            && retries < policy.max_retries =>
                    {
                        retries += 1;
                        metrics::counter!("omendb_store_retries_total", "op" => op.name())
                            .increment(1);
                        tokio::time::sleep(policy.backoff(retries)).await;
                    }
                    outcome => return outcome,
                }
            }
        }
    }

    fn list(
        &self,
        op: Op,
        start: ListStart,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // A listing that fails midway starts over and skips what it already returned: stores
        // list in no promised order (local files, OpenDAL), so resuming "after the last name"
        // could skip objects. A caller sees every object once.
        struct State {
            stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
            returned: HashSet<Path>,
            retries: u32,
            done: bool,
        }
        let policy = self.policy.clone();
        let first = State {
            stream: start(),
            returned: HashSet::new(),
            retries: 0,
            done: false,
        };
        futures::stream::unfold(first, move |mut state| {
            let start = Arc::clone(&start);
            let policy = policy.clone();
            async move {
                if state.done {
                    return None;
                }
                loop {
                    match state.stream.next().await {
                        Some(Ok(meta)) => {
                            if state.returned.insert(meta.location.clone()) {
                                state.retries = 0;
                                return Some((Ok(meta), state));
                            }
                        }
                        Some(Err(err))
                            if is_transient(&err) && state.retries < policy.max_retries =>
                        {
                            state.retries += 1;
                            metrics::counter!("omendb_store_retries_total", "op" => op.name())
                                .increment(1);
                            tokio::time::sleep(policy.backoff(state.retries)).await;
                            state.stream = start();
                        }
                        Some(Err(err)) => {
                            state.done = true;
                            return Some((Err(err), state));
                        }
                        None => return None,
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        for (retry, full) in [(1, 100), (2, 200), (3, 400), (4, 700), (30, 700)] {
            let pause = policy.backoff(retry);
            let full = Duration::from_millis(full);
            assert!(
                pause >= full / 2 && pause <= full,
                "retry {retry}: {pause:?}"
            );
        }
    }
}
