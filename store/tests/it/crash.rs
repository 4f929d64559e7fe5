//! A crash (the process aborting, nothing closed) leaves the store as of a flush: whatever
//! was written after it is gone, whatever `sync` made durable is there, and the data and the
//! `meta` family agree — the families are flushed together, never one without the others.
//!
//! The crashing writer is this same test binary, run again as a child process.

use std::path::Path;
use std::process::Command;

use etcd_proto::etcdserverpb::PutRequest;
use store::{BackendOptions, Store, WriteRequest};

/// Set in the child: the store directory it writes to and then crashes in.
const CHILD_DIR: &str = "CAIRN_STORE_CRASH_CHILD_DIR";
/// A meta record each write batch carries: the revision that batch creates.
const MARK: &[u8] = b"test_mark";
const VALUE_LEN: usize = 64 << 10;
/// Enough 64 KiB values to fill the 64 MiB of memtables at least once, so RocksDB flushes
/// on its own while the writer runs.
const PUTS: i64 = 1500;
/// The put after which the child calls `sync`.
const SYNCED_AT: i64 = 300;

fn put(i: i64) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: format!("key{i:05}").into_bytes().into(),
        value: vec![(i % 251) as u8; VALUE_LEN].into(),
        ..Default::default()
    })
}

/// The child's part: writes, syncs part-way, writes on, and aborts.
fn write_then_abort(dir: &Path) -> ! {
    let (_, mut writer) = Store::open(dir, &BackendOptions::default()).unwrap();
    for i in 0..PUTS {
        let rev = (writer.revision() + 1).to_be_bytes();
        writer.apply_with(&put(i), &[(MARK, &rev)]).unwrap();
        if i + 1 == SYNCED_AT {
            writer.sync().unwrap();
        }
    }
    // Time for the flush RocksDB started on its own to finish.
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::process::abort();
}

#[test]
fn a_crash_leaves_the_store_as_of_a_flush_with_its_families_in_agreement() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        write_then_abort(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::a_crash_leaves_the_store_as_of_a_flush_with_its_families_in_agreement",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");

    // Every family as RocksDB left it, before the store reads anything.
    let revisions = {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["key", "rev", "lease", "meta"],
        )
        .unwrap();
        let rev = db.cf_handle("rev").unwrap();
        db.iterator_cf(rev, rocksdb::IteratorMode::Start).count() as i64
    };

    let (store, writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    let current = writer.revision();
    eprintln!("after the crash: revision {current} of {}", PUTS + 1);
    // Synced writes are there (the ones after, written to memtables only, are there as far
    // as RocksDB had flushed them).
    assert!(current > SYNCED_AT, "revision {current} lost synced writes");
    // The families agree: one history record per put, the mark of the last batch kept.
    assert_eq!(revisions, current - 1);
    let mark = store.meta(MARK).unwrap().expect("the mark was written");
    assert_eq!(i64::from_be_bytes(mark.try_into().unwrap()), current);
    // Every put up to the current revision is readable, and none after it.
    for i in [0, SYNCED_AT - 1, current - 2] {
        let key = format!("key{i:05}");
        let kv = store
            .get_at(key.as_bytes(), current)
            .unwrap()
            .expect("a kept put");
        assert_eq!(kv.mod_revision, i + 2);
    }
    assert!(store
        .get_at(format!("key{:05}", current - 1).as_bytes(), i64::MAX)
        .unwrap()
        .is_none());
}
