//! What happens on this member after the state machine applies a batch: proposers waiting
//! here get their results, watchers get the batch's events, the lessor learns of grants and
//! revocations, physical compaction starts, and the NOSPACE flag follows the applied alarms.
//! Runs on the state machine's task, so it only hands things on; nothing here blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_proto::etcdserverpb::AlarmType;
use raftlog::{AppliedProposal, ApplyObserver};
use store::{Store, WriteRequest};
use tokio::sync::mpsc;

use crate::applier::Waiters;
use crate::lessor::Lessor;
use crate::metrics::Metrics;
use crate::watch_hub::{EventBatch, WatchHub};

pub struct Observer {
    pub store: Store,
    pub hub: WatchHub,
    pub lessor: Arc<Lessor>,
    pub compactor: mpsc::UnboundedSender<i64>,
    pub metrics: Arc<Metrics>,
    pub waiters: Arc<Waiters>,
    pub nospace: Arc<AtomicBool>,
}

impl Observer {
    /// Sets the NOSPACE flag from the applied alarms.
    fn follow_nospace(&self) {
        let raised = self
            .store
            .alarms()
            .map(|a| a.iter().any(|&(_, t)| t == AlarmType::Nospace as i32))
            .unwrap_or(false);
        self.nospace.store(raised, Ordering::Release);
    }
}

impl ApplyObserver for Observer {
    fn applied(&self, proposals: Vec<AppliedProposal>, revision: i64) {
        let now = tokio::time::Instant::now();
        let mut events = Vec::new();
        for p in proposals {
            match &p.result {
                Ok(applied) => {
                    events.extend(applied.events.iter().cloned());
                    match &p.req {
                        WriteRequest::Compact { revision } => {
                            // Physical compaction starts once readers can see the compaction.
                            let _ = self.compactor.send(*revision);
                        }
                        WriteRequest::LeaseGrant { id, ttl_secs } => {
                            self.lessor.track(*id, *ttl_secs, now)
                        }
                        WriteRequest::LeaseRevoke { id } => self.lessor.forget(*id),
                        WriteRequest::Alarm { .. } => self.follow_nospace(),
                        _ => {}
                    }
                    self.metrics.proposals_committed.inc();
                }
                Err(_) => self.metrics.proposals_failed.inc(),
            }
            self.waiters.resolve(p.id, p.result);
        }
        if !events.is_empty() {
            self.hub.publish(EventBatch::new(revision, events, false));
        }
    }

    fn restored(&self, revision: i64) {
        let now = tokio::time::Instant::now();
        self.lessor.clear();
        for (id, ttl) in self.store.leases().unwrap_or_default() {
            self.lessor.track(id, ttl, now);
        }
        self.follow_nospace();
        // Watchers catch up from the restored history.
        self.hub
            .publish(EventBatch::new(revision, Vec::new(), true));
    }
}
