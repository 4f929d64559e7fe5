//! `Node`: what every service handler shares — the store, the write path (Raft), the watch hub,
//! the lessor, this member's identity and the configuration — and the response header.

use std::sync::Arc;

use etcd_proto::etcdserverpb::ResponseHeader;
use store::Store;

use crate::applier::Applier;
use crate::config::Config;
use crate::lessor::Lessor;
use crate::member::Member;
use crate::metrics::Metrics;
use crate::watch_hub::WatchHub;

pub struct Node {
    pub config: Config,
    pub store: Store,
    pub applier: Applier,
    pub hub: WatchHub,
    pub lessor: Arc<Lessor>,
    pub member: Member,
    pub cluster_id: u64,
    pub metrics: Arc<Metrics>,
}

impl Node {
    /// A response header as etcd fills it, at revision `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: self.raft_term(),
        }
    }

    /// Whether this member is a learner (it serves serializable reads and status only).
    pub fn is_learner(&self) -> bool {
        let metrics = self.applier.raft().metrics();
        let m = metrics.borrow();
        let is_learner = m
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == self.member.id);
        is_learner
    }

    /// etcd's refusal of most RPCs on a learner.
    pub fn reject_learner(&self) -> Result<(), tonic::Status> {
        if self.is_learner() {
            return Err(crate::errors::EtcdError::NotSupportedForLearner.into());
        }
        Ok(())
    }

    /// The Raft term this member is in.
    pub fn raft_term(&self) -> u64 {
        self.applier.raft().metrics().borrow().current_term
    }

    /// A header at the current durable revision.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.store.current_revision())
    }
}
