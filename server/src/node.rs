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

    /// The Raft term this member is in.
    pub fn raft_term(&self) -> u64 {
        self.applier.raft().metrics().borrow().current_term
    }

    /// A header at the current durable revision.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.store.current_revision())
    }
}
