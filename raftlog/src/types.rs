//! openraft's type configuration for Cairn: node IDs are etcd member IDs, a node's record is
//! its etcd member attributes, an entry's data is a [`ProposalBatch`], and snapshots travel as files.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::proposal::ProposalBatch;

// `declare_raft_types!` names `Cursor` for its default snapshot type even when it is overridden.
#[allow(unused_imports)]
use Cursor as _;

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = ProposalBatch,
        R = (),
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_file::SnapshotFile,
        AsyncRuntime = crate::determinism::Runtime,
);

/// A member as the membership config records it (etcd's `Member` minus the ID, which is the
/// node ID). `name` and `client_urls` are empty until the member has started and published them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// Builds a log id from the term and member of the leader that created the entry, and its index.
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, node_id), index)
}
