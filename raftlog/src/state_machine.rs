//! openraft's state machine over `store`: committed entries are applied in batches, each
//! proposal as one RocksDB write batch that also records how far the log has been applied
//! (DESIGN decision 2: the store is not fsynced; after a crash the log is replayed from the
//! recorded position). An entry carries a batch of proposals: all but the last record the
//! entry's index and how many of its proposals are done, the last records the entry applied,
//! so a replay neither repeats nor skips a proposal.
//! After a batch the new revision is published and an [`ApplyObserver`] is told what each
//! proposal produced, so the server can answer waiting clients, feed watchers and leases.
//!
//! Everything here is deterministic: whether a write is refused for NOSPACE depends only on
//! the alarms in the applied state, never on a member's own disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_proto::etcdserverpb::{request_op, AlarmType, RequestOp, TxnRequest};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use store::{Applied, Store, WriteRequest, Writer};
use tokio::sync::watch;

use crate::snapshot::{SnapshotBuilder, SnapshotFiles};
use crate::snapshot_file::SnapshotFile;
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// `meta` record: the log id of the last applied entry (JSON).
pub const META_RAFT_APPLIED: &[u8] = b"raft_applied";
/// `meta` record: (index, proposals applied) of an entry applied part-way (JSON); only
/// meaningful when the index is past the applied log id.
pub const META_RAFT_PARTIAL: &[u8] = b"raft_partial";
/// `meta` record: the membership as of the last applied entry (JSON).
pub const META_RAFT_MEMBERSHIP: &[u8] = b"raft_membership";

/// Why a proposal was refused when applied (the same on every member).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The NOSPACE alarm is raised and the request needs space.
    #[error("database space exceeded")]
    NoSpace,
}

/// What one proposal produced.
pub struct AppliedProposal {
    pub id: u64,
    pub req: WriteRequest,
    pub result: Result<Applied, ApplyError>,
}

/// Receives the results of each applied batch, after it is published. Called on the state
/// machine's task: it must not block.
pub trait ApplyObserver: Send + Sync + 'static {
    fn applied(&self, proposals: Vec<AppliedProposal>, revision: i64);
    /// The store was replaced by a snapshot (watchers must resynchronize from history).
    fn restored(&self, revision: i64);
}

/// The state machine; see the module comment.
pub struct StateMachine {
    writer: Writer,
    observer: Arc<dyn ApplyObserver>,
    applied: Option<LogId>,
    membership: StoredMembership,
    nospace: bool,
    /// An entry a crash interrupted part-way: (index, proposals already applied).
    partial: Option<(u64, usize)>,
    snapshots: SnapshotFiles,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn read_meta<T: serde::de::DeserializeOwned>(
    store: &Store,
    name: &[u8],
) -> Result<Option<T>, String> {
    match store.meta(name).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

impl StateMachine {
    /// Opens over `writer`; `snap_dir` holds snapshot archives. An interrupted snapshot install
    /// is finished first.
    /// `durable` is advanced to each log index the store holds durably (see `LogStore::purge`).
    pub fn open(
        mut writer: Writer,
        snap_dir: &Path,
        observer: Arc<dyn ApplyObserver>,
        durable: watch::Sender<u64>,
    ) -> Result<StateMachine, String> {
        let snapshots = SnapshotFiles::open(snap_dir, durable)?;
        if snapshots.finish_interrupted_install(&mut writer)? {
            // Whatever the embedder loaded from the store before (leases, alarms) is stale.
            observer.restored(writer.revision());
        }
        // What the store holds now is made durable, so the log may be purged up to it.
        writer.sync().map_err(|e| e.to_string())?;
        let store = writer.store().clone();
        let applied = read_meta(&store, META_RAFT_APPLIED)?;
        let membership = read_meta(&store, META_RAFT_MEMBERSHIP)?.unwrap_or_default();
        let nospace = nospace_raised(&store).map_err(|e| e.to_string())?;
        snapshots.advance_durable(applied.map_or(0, |l: LogId| l.index));
        let partial = partial_progress(&store, applied)?;
        Ok(StateMachine {
            partial,
            writer,
            observer,
            applied,
            membership,
            nospace,
            snapshots,
        })
    }

    pub fn store(&self) -> &Store {
        self.writer.store()
    }
}

/// The entry a store holds part-way, if its progress record is past the applied log id.
fn partial_progress(store: &Store, applied: Option<LogId>) -> Result<Option<(u64, usize)>, String> {
    Ok(read_meta::<(u64, usize)>(store, META_RAFT_PARTIAL)?
        .filter(|&(index, _)| applied.is_none_or(|a| index > a.index)))
}

fn nospace_raised(store: &Store) -> store::Result<bool> {
    Ok(store
        .alarms()?
        .iter()
        .any(|&(_, alarm)| alarm == AlarmType::Nospace as i32))
}

/// Whether a request needs backend space (etcd refuses these while NOSPACE is raised).
pub fn needs_space(req: &WriteRequest) -> bool {
    match req {
        WriteRequest::Put(_) | WriteRequest::LeaseGrant { .. } => true,
        WriteRequest::Txn(t) => txn_has_put(t),
        _ => false,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    let any = |ops: &[RequestOp]| {
        ops.iter().any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
    };
    any(&t.success) || any(&t.failure)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut proposals = Vec::new();
        for entry in entries {
            let log_id = serde_json::to_vec(&entry.log_id).expect("log ids serialize");
            // Whether the store records this entry as applied yet.
            let mut recorded = false;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    let n = batch.0.len();
                    // Proposals a crash interrupted this entry after were applied already.
                    let done = match self.partial.take() {
                        Some((index, done)) if index == entry.log_id.index => done,
                        _ => 0,
                    };
                    for (k, p) in batch.0.into_iter().enumerate().skip(done) {
                        let last = k + 1 == n;
                        let partial = serde_json::to_vec(&(entry.log_id.index, k + 1))
                            .expect("progress serializes");
                        // Each proposal's batch records how far the entry got; the last one
                        // records the entry as applied.
                        let progress: &[(&[u8], &[u8])] = if last {
                            &[(META_RAFT_APPLIED, &log_id)]
                        } else {
                            &[(META_RAFT_PARTIAL, &partial)]
                        };
                        let result = if self.nospace && needs_space(&p.req) {
                            Err(ApplyError::NoSpace)
                        } else {
                            self.writer
                                .apply_with(&p.req, progress)
                                .map_err(ApplyError::from)
                        };
                        match &result {
                            Ok(_) => recorded = last,
                            // Refusals are deterministic and write nothing; a storage failure
                            // is not a refusal: the member must stop rather than diverge.
                            Err(ApplyError::Store(e)) if e.is_storage_failure() => {
                                return Err(sm_write_err(e))
                            }
                            Err(_) => {}
                        }
                        if let WriteRequest::Alarm { .. } = p.req {
                            self.nospace =
                                nospace_raised(self.writer.store()).map_err(sm_read_err)?;
                        }
                        proposals.push(AppliedProposal {
                            id: p.id,
                            req: p.req,
                            result,
                        });
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    let json = serde_json::to_vec(&self.membership).expect("membership serializes");
                    self.writer
                        .write_meta(&[(META_RAFT_MEMBERSHIP, &json), (META_RAFT_APPLIED, &log_id)])
                        .map_err(sm_write_err)?;
                    recorded = true;
                }
            }
            if !recorded {
                // Before the next entry records progress of its own.
                self.writer
                    .write_meta(&[(META_RAFT_APPLIED, &log_id)])
                    .map_err(sm_write_err)?;
            }
            self.applied = Some(entry.log_id);
            results.push(());
        }
        self.writer.publish();
        self.observer.applied(proposals, self.writer.revision());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A quiescent point between batches: the checkpoint holds exactly `applied`.
        SnapshotBuilder::new(
            self.snapshots.clone(),
            self.writer.store().clone(),
            self.applied,
            self.membership.clone(),
        )
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        self.snapshots.begin_receiving().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        self.snapshots
            .install(meta, snapshot, &mut self.writer)
            .await?;
        let store = self.writer.store().clone();
        self.applied = read_meta(&store, META_RAFT_APPLIED).map_err(sm_read_err)?;
        self.membership = read_meta(&store, META_RAFT_MEMBERSHIP)
            .map_err(sm_read_err)?
            .unwrap_or_default();
        self.nospace = nospace_raised(&store).map_err(sm_read_err)?;
        // A snapshot taken part-way through an entry carries that entry's progress record.
        self.partial = partial_progress(&store, self.applied).map_err(sm_read_err)?;
        self.observer.restored(self.writer.revision());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.snapshots.current().await
    }
}

/// The membership as of the last applied entry (committed, unlike openraft's effective
/// membership, which changes when a membership entry is appended).
pub fn applied_membership(store: &Store) -> StoredMembership {
    read_meta(store, META_RAFT_MEMBERSHIP)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Where the state machine keeps its snapshot archives.
pub fn snapshot_dir(member_dir: &Path) -> PathBuf {
    member_dir.join("snap")
}
