//! A local log directory has one owner: a second handle is refused until the first is dropped.

use omendb_wal::{AppendOptions, Error, ErrorKind, FileWal, WalOptions};

#[test]
fn a_second_handle_on_the_same_directory_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    first.append(b"mine", AppendOptions::DURABLE).unwrap();
    let err = FileWal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    // The refused open changed nothing: the owner goes on.
    assert_eq!(
        first.append(b"still mine", AppendOptions::DURABLE).unwrap(),
        2
    );
    drop(first);
    let second = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        second.append(b"now yours", AppendOptions::DURABLE).unwrap(),
        3
    );
}
