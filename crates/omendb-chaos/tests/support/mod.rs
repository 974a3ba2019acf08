//! What more than one test binary of this crate needs.

use std::future::Future;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Runs `work` on a runtime with one worker thread, in a thread of its own, and fails if it has
/// not finished within `limit`: a hang (the only worker blocked on what needs that runtime's
/// timers) fails the test with `hang` instead of stalling the suite.
pub(crate) fn on_one_worker_within<F>(
    limit: Duration,
    hang: &str,
    work: impl FnOnce() -> F + Send + 'static,
) where
    F: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(work());
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => panic!("{hang}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the work failed (its panic is above)"),
    }
}
