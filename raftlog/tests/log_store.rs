//! The log storage's recovery rules: a purge recorded but not carried out before a crash is
//! finished on open; a `committed` hint past the durable end of the log is clamped; a purge
//! waits until the state machine's store is durable that far.

use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, RaftLogReader};
use raftlog::log_store::{always_durable, LogStore};
use raftlog::proposal::encode_wal_entry;
use raftlog::types::{log_id, Entry};
use raftlog::{Wal, WalOptions};

fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, 7, index),
        payload: EntryPayload::Blank,
    }
}

fn write_wal(dir: &std::path::Path, from: u64, to: u64) {
    let mut wal = Wal::open(dir, WalOptions::default()).unwrap();
    let recs: Vec<(u64, Vec<u8>)> = (from..=to)
        .map(|i| (i, encode_wal_entry(&blank(i))))
        .collect();
    wal.append(recs.iter().map(|(i, b)| (*i, b.as_slice())))
        .unwrap();
    wal.sync().unwrap();
}

fn write_json(dir: &std::path::Path, name: &str, v: &impl serde::Serialize) {
    raftlog::meta::write_atomically(dir, name, &serde_json::to_vec(v).unwrap()).unwrap();
}

#[tokio::test]
async fn a_purge_interrupted_after_it_was_recorded_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 1, 5);
    // The purge of everything up to 8 (a snapshot installed past the log) was recorded, and
    // the crash came before the segments went.
    write_json(dir.path(), "purged", &Some(log_id(1, 7, 8)));
    let mut log = LogStore::open(dir.path(), always_durable()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(8));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
    log.blocking_append([blank(9), blank(10)]).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path(), always_durable()).unwrap();
    let got: Vec<u64> = log
        .get_log_reader()
        .await
        .try_get_log_entries(0..20)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(got, vec![9, 10]);
}

#[tokio::test]
async fn a_committed_hint_past_the_log_is_clamped() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 1, 3);
    write_json(dir.path(), "committed", &Some(log_id(1, 7, 10)));
    let mut log = LogStore::open(dir.path(), always_durable()).unwrap();
    assert_eq!(
        log.read_committed().await.unwrap().map(|l| l.index),
        Some(3)
    );
}

#[tokio::test]
async fn a_purge_waits_until_the_store_is_durable_that_far() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 1, 5);
    let (durable, rx) = tokio::sync::watch::channel(0u64);
    let mut log = LogStore::open(dir.path(), rx).unwrap();
    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(1, 7, 4)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!purge.is_finished(), "the purge went ahead of the store");
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
    durable.send(4).unwrap();
    purge.await.unwrap().unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
}
