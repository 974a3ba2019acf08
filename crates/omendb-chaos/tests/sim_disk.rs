//! The simulated disk keeps exactly what a real one promises: synced bytes and synced names
//! survive a crash, unsynced ones are lost or torn at a sector boundary, and each fault does
//! what it says. The WAL on it keeps every durable append and refuses to go on after a failed
//! sync.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::path::Path;

use omendb_chaos::disk::{DiskFaults, SECTOR, SimDisk};
use omendb_wal::{AppendOptions, FileWal, Wal, WalOptions};

fn dir() -> &'static Path {
    Path::new("/d")
}

#[test]
fn synced_bytes_survive_a_crash_and_unsynced_ones_are_lost_or_torn_at_a_sector() {
    for seed in 0..40 {
        let disk = SimDisk::new(seed);
        let io = disk.mount();
        io.create_dir_all(dir()).unwrap();
        let path = dir().join("f");
        let mut file = io.create(&path).unwrap();
        io.sync_dir(dir()).unwrap();
        let synced = vec![1u8; 700];
        file.write_at(file.len().unwrap(), &synced).unwrap();
        file.sync_data().unwrap();
        let unsynced = vec![2u8; 3 * SECTOR];
        file.write_at(file.len().unwrap(), &unsynced).unwrap();
        disk.crash();

        let after = disk.read(&path).unwrap();
        assert!(
            after.len() >= synced.len(),
            "seed {seed}: synced bytes lost"
        );
        assert_eq!(&after[..synced.len()], &synced[..]);
        assert!(after.len() <= synced.len() + unsynced.len());
        assert!(
            after.len() == synced.len() || after.len().is_multiple_of(SECTOR),
            "seed {seed}: torn at {} bytes, not at a sector boundary",
            after.len()
        );
        assert!(after[synced.len()..].iter().all(|b| *b == 2));
        // The dead process's handles are gone.
        assert!(file.write_at(0, b"x").is_err());
        assert!(file.len().is_err());
        assert!(io.list(dir()).is_err());
    }
}

#[test]
fn a_name_is_durable_only_after_its_directory_is_synced() {
    let disk = SimDisk::new(1);
    let io = disk.mount();
    io.create_dir_all(dir()).unwrap();
    let mut kept = io.create(&dir().join("kept")).unwrap();
    kept.sync_data().unwrap();
    io.sync_dir(dir()).unwrap();
    let mut lost = io.create(&dir().join("lost")).unwrap();
    lost.write_at(lost.len().unwrap(), b"data").unwrap();
    lost.sync_data().unwrap();
    io.rename(&dir().join("kept"), &dir().join("renamed"))
        .unwrap();
    disk.crash();

    let io = disk.mount();
    let mut names = io.list(dir()).unwrap();
    names.sort();
    assert_eq!(names, vec!["kept".to_owned()], "the rename was not synced");
}

#[test]
fn each_fault_does_what_it_says() {
    let disk = SimDisk::new(7);
    let io = disk.mount();
    io.create_dir_all(dir()).unwrap();
    let mut file = io.create(&dir().join("f")).unwrap();

    disk.set_faults(DiskFaults {
        disk_full: 1.0,
        ..DiskFaults::NONE
    });
    let full = file.write_at(file.len().unwrap(), b"abc").unwrap_err();
    assert_eq!(full.kind(), std::io::ErrorKind::StorageFull);
    assert_eq!(file.len().unwrap(), 0, "a full disk stores nothing");

    disk.set_faults(DiskFaults {
        short_write: 1.0,
        ..DiskFaults::NONE
    });
    let stored = file.write_at(file.len().unwrap(), &[9u8; 100]).unwrap();
    assert!(stored < 100, "a short write stores a prefix");
    assert_eq!(file.len().unwrap(), stored as u64);

    disk.set_faults(DiskFaults {
        write_error: 1.0,
        ..DiskFaults::NONE
    });
    let before = file.len().unwrap();
    assert!(file.write_at(file.len().unwrap(), &[8u8; 100]).is_err());
    assert!(file.len().unwrap() <= before + 100);

    disk.set_faults(DiskFaults {
        sync_error: 1.0,
        ..DiskFaults::NONE
    });
    assert!(file.sync_data().is_err());
    disk.set_faults(DiskFaults::NONE);
    io.sync_dir(dir()).unwrap();
    let len = file.len().unwrap();

    disk.set_faults(DiskFaults {
        read_bit_flip: 1.0,
        ..DiskFaults::NONE
    });
    let mut flipped = vec![0u8; len as usize];
    file.read_at(0, &mut flipped).unwrap();
    disk.set_faults(DiskFaults::NONE);
    let mut clean = vec![0u8; len as usize];
    file.read_at(0, &mut clean).unwrap();
    let differing: u32 = flipped
        .iter()
        .zip(&clean)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(differing, 1, "one bit flipped in the read, none stored");
    assert!(disk.injected() >= 5);

    // The failed sync made nothing durable: a crash keeps at most a torn prefix of it.
    disk.crash();
    assert!(disk.read(&dir().join("f")).unwrap().len() as u64 <= len);
}

#[test]
fn the_wal_keeps_durable_appends_and_stops_after_a_failed_sync() {
    let disk = SimDisk::new(3);
    let options = WalOptions::default()
        .segment_bytes(64 * 1024)
        .max_record_bytes(1024);
    let wal = FileWal::open_with_io(disk.mount(), "/wal", options.clone()).unwrap();
    let mut durable = Vec::new();
    for i in 0..50u64 {
        durable.push(
            wal.append_blocking(&i.to_le_bytes(), AppendOptions::DURABLE)
                .unwrap(),
        );
    }
    disk.set_faults(DiskFaults {
        sync_error: 1.0,
        ..DiskFaults::NONE
    });
    assert!(
        wal.append_blocking(b"lost", AppendOptions::DURABLE)
            .is_err()
    );
    disk.set_faults(DiskFaults::NONE);
    assert!(
        wal.append_blocking(b"refused", AppendOptions::DURABLE)
            .is_err(),
        "a log whose sync failed must refuse appends until reopened"
    );
    disk.crash();
    drop(wal);

    let wal = FileWal::open_with_io(disk.mount(), "/wal", options).unwrap();
    let last = wal.last_lsn().unwrap();
    assert!(last >= *durable.last().unwrap());
    assert!(last <= durable.last().unwrap() + 1, "nothing invented");
}
