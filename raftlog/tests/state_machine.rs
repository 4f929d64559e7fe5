//! The state machine's recovery rules: an entry carries a batch of proposals, and a crash
//! part-way through applying it must neither repeat nor skip a proposal when the entry is
//! applied again; an entry whose last proposal is refused is still recorded as applied.

use std::sync::{Arc, Mutex};

use etcd_proto::etcdserverpb::{PutRequest, RangeRequest};
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use raftlog::state_machine::{StateMachine, META_RAFT_PARTIAL};
use raftlog::types::{log_id, Entry};
use raftlog::{AppliedProposal, ApplyObserver, Proposal, ProposalBatch};
use store::{BackendOptions, Store, WriteRequest};

/// What the state machine told its observer: applied proposals (id, ok?), and the revisions
/// of restores.
#[derive(Default)]
struct Seen(Mutex<Vec<(u64, bool)>>, Mutex<Vec<i64>>);

impl ApplyObserver for Seen {
    fn applied(&self, proposals: Vec<AppliedProposal>, _revision: i64) {
        let mut seen = self.0.lock().unwrap();
        seen.extend(proposals.iter().map(|p| (p.id, p.result.is_ok())));
    }
    fn restored(&self, revision: i64) {
        self.1.lock().unwrap().push(revision);
    }
}

fn put(key: &str, lease: i64) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        lease,
        ..Default::default()
    })
}

fn entry(index: u64, reqs: Vec<(u64, WriteRequest)>) -> Entry {
    Entry {
        log_id: log_id(1, 7, index),
        payload: EntryPayload::Normal(ProposalBatch(
            reqs.into_iter()
                .map(|(id, req)| Proposal { id, req })
                .collect(),
        )),
    }
}

fn open(dir: &std::path::Path, seen: Arc<Seen>) -> StateMachine {
    let (_, writer) = Store::open(&dir.join("kv"), &BackendOptions::default()).unwrap();
    StateMachine::open(
        writer,
        &dir.join("snap"),
        seen,
        tokio::sync::watch::channel(0).0,
    )
    .unwrap()
}

fn versions(sm: &StateMachine, key: &str) -> (i64, i64) {
    let r = store::range::execute(
        sm.store(),
        &RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    let kv = &r.kvs[0];
    (kv.create_revision, kv.version)
}

#[tokio::test]
async fn an_entry_interrupted_part_way_is_finished_without_repeating_a_proposal() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let mut sm = open(tmp.path(), seen.clone());
    sm.apply(vec![entry(1, vec![(1, put("a", 0)), (2, put("b", 0))])])
        .await
        .unwrap();
    assert_eq!(sm.store().current_revision(), 3);
    drop(sm);

    // What a crash leaves after the first proposal of entry 2: its write, and the progress
    // record naming entry 2 with one proposal done; the applied log id still says entry 1.
    {
        let (_, mut writer) =
            Store::open(&tmp.path().join("kv"), &BackendOptions::default()).unwrap();
        let progress = serde_json::to_vec(&(2u64, 1usize)).unwrap();
        writer
            .apply_with(&put("c", 0), &[(META_RAFT_PARTIAL, &progress)])
            .unwrap();
    }
    let mut sm = open(tmp.path(), seen.clone());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied.unwrap().index,
        1,
        "entry 2 is not recorded as applied"
    );
    // openraft hands entry 2 over again.
    sm.apply(vec![entry(2, vec![(3, put("c", 0)), (4, put("d", 0))])])
        .await
        .unwrap();
    assert_eq!(versions(&sm, "c"), (4, 1), "c written once, at revision 4");
    assert_eq!(versions(&sm, "d"), (5, 1));
    assert_eq!(sm.store().current_revision(), 5);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 2);

    // An entry whose last proposal is refused (no such lease) is recorded as applied all the
    // same, so a restart does not apply its first proposal twice.
    sm.apply(vec![entry(3, vec![(5, put("e", 0)), (6, put("f", 999))])])
        .await
        .unwrap();
    drop(sm);
    let mut sm = open(tmp.path(), seen.clone());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3);
    assert_eq!(sm.store().current_revision(), 6);
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec![(1, true), (2, true), (4, true), (5, true), (6, false)],
        "the proposal applied before the crash is not reported again"
    );
}

#[tokio::test]
async fn a_snapshot_install_interrupted_by_a_crash_is_finished_on_start() {
    use openraft::storage::RaftSnapshotBuilder;
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let mut leader = open(leader_dir.path(), seen.clone());
    leader
        .apply(vec![
            entry(1, vec![(1, put("a", 0)), (2, put("b", 0))]),
            entry(2, vec![(3, put("a", 0))]),
        ])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let name = snapshot.meta.snapshot_id.clone();
    let want = leader.store().hash_all().unwrap();
    let want_rev = leader.store().current_revision();
    drop(leader);

    // The follower has state of its own, then crashes after keeping the archive and writing the
    // marker (before or during the rewrite of its store).
    let mut follower = open(follower_dir.path(), seen.clone());
    follower
        .apply(vec![entry(1, vec![(9, put("zzz", 0))])])
        .await
        .unwrap();
    drop(follower);
    let snap_dir = follower_dir.path().join("snap");
    std::fs::copy(
        leader_dir.path().join("snap").join(format!("{name}.snap")),
        snap_dir.join(format!("{name}.snap")),
    )
    .unwrap();
    let marker = serde_json::json!({ "name": name, "meta": snapshot.meta });
    raftlog::meta::write_atomically(
        &snap_dir,
        raftlog::snapshot::INSTALL_MARKER,
        &serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();

    assert!(
        seen.1.lock().unwrap().is_empty(),
        "plain opens restore nothing"
    );
    let mut follower = open(follower_dir.path(), seen.clone());
    assert_eq!(
        follower.store().hash_all().unwrap(),
        want,
        "the follower holds the snapshot"
    );
    // The server's lessor, alarms and watchers, loaded from the store before it was replaced,
    // hear of the restore.
    assert_eq!(*seen.1.lock().unwrap(), vec![want_rev]);
    assert_eq!(follower.store().current_revision(), want_rev);
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 2);
    assert!(!snap_dir.join(raftlog::snapshot::INSTALL_MARKER).exists());
    let current = follower
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("the snapshot is kept");
    assert_eq!(current.meta, snapshot.meta, "its metadata is recorded too");
}

#[tokio::test]
async fn a_snapshot_taken_part_way_through_an_entry_does_not_repeat_its_proposals() {
    use openraft::storage::RaftSnapshotBuilder;
    use tokio::io::AsyncReadExt;
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let mut leader = open(leader_dir.path(), seen.clone());
    leader
        .apply(vec![entry(1, vec![(1, put("a", 0))])])
        .await
        .unwrap();
    drop(leader);
    // A crash after the first proposal of entry 2; the restarted member snapshots at once
    // (as openraft does when its log was purged and no snapshot is on disk).
    {
        let (_, mut writer) =
            Store::open(&leader_dir.path().join("kv"), &BackendOptions::default()).unwrap();
        let progress = serde_json::to_vec(&(2u64, 1usize)).unwrap();
        writer
            .apply_with(&put("b", 0), &[(META_RAFT_PARTIAL, &progress)])
            .unwrap();
    }
    let mut leader = open(leader_dir.path(), seen.clone());
    let mut snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id.unwrap().index, 1);

    let mut follower = open(follower_dir.path(), seen.clone());
    let mut data = Vec::new();
    snapshot.snapshot.read_to_end(&mut data).await.unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, &data)
        .await
        .unwrap();
    follower
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
    follower
        .apply(vec![entry(2, vec![(2, put("b", 0)), (3, put("c", 0))])])
        .await
        .unwrap();
    assert_eq!(versions(&follower, "b"), (3, 1), "b written once");
    assert_eq!(follower.store().current_revision(), 4);
}
