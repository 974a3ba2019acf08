//! The examples run as part of the test suite, and their answers are checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[path = "../examples/embedded.rs"]
mod embedded;
#[path = "../examples/timeseries.rs"]
mod timeseries;

#[tokio::test]
async fn the_embedded_example_reads_back_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let read = embedded::run(dir.path()).await.unwrap();
    assert_eq!(read, ["ada", "edsger", "barbara", "donald", "donald"]);
}

#[tokio::test]
async fn the_timeseries_example_averages_each_hour() {
    let dir = tempfile::tempdir().unwrap();
    let hours = timeseries::run(dir.path()).await.unwrap();
    assert_eq!(hours.len(), 24);
    for (hour, (start, mean)) in hours.iter().enumerate() {
        assert_eq!(*start, 1_767_225_600 + hour as i64 * 3600);
        // Minutes 0..60 add m/100 to the hour: a mean of 0.295 above it.
        assert!(
            (mean - (hour as f64 + 0.295)).abs() < 1e-9,
            "hour {hour}: {mean}"
        );
    }
}
