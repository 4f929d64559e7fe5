//! openraft's own conformance suite for storage implementations, run against Cairn's log
//! storage (the WAL) and state machine (over `store`): membership recovery, vote, log reads,
//! purge, conflict truncation, applied state, snapshot build and transfer.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use raftlog::log_store::always_durable;
use raftlog::types::{StorageError, TypeConfig};
use raftlog::{AppliedProposal, ApplyObserver, LogStore, StateMachine};
use store::{BackendOptions, Store};

struct Ignore;

impl ApplyObserver for Ignore {
    fn applied(&self, _proposals: Vec<AppliedProposal>, _revision: i64) {}
    fn restored(&self, _revision: i64) {}
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let tmp = tempfile::tempdir().unwrap();
        // The suite purges logs its state machine never applied: no durability wait here.
        let log = LogStore::open(&tmp.path().join("wal"), always_durable()).unwrap();
        let (_, writer) = Store::open(&tmp.path().join("kv"), &BackendOptions::default()).unwrap();
        let durable = tokio::sync::watch::channel(0).0;
        let sm = StateMachine::open(writer, &tmp.path().join("snap"), Arc::new(Ignore), durable)
            .unwrap();
        Ok((tmp, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
