//! The Lease service and the expiry driver. Grants choose the ID (when the client leaves it 0)
//! and the effective TTL before proposing, so applying a grant is deterministic; expiry is
//! decided here, by the clock, and carried out by proposing a revocation.

use std::sync::Arc;

use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::StreamExt;
use store::WriteRequest;
use tokio::sync::{mpsc, watch};
use tokio::time::Duration;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::{self, EtcdError};
use crate::lessor::LEASE_TTL_MAX_SECS;
use crate::node::Node;

/// How often the expiry driver looks for expired leases.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Leases revoked per expiry check at most (etcd rate-limits revocations likewise).
pub const REVOKES_PER_CHECK_MAX: usize = 500;

pub struct LeaseService {
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> Self {
        LeaseService { node, shutdown }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        if r.ttl > LEASE_TTL_MAX_SECS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let ttl_secs = self.node.lessor.effective_ttl(r.ttl);
        let mut attempts = 0;
        let (id, applied) = loop {
            let id = if r.id != 0 { r.id } else { random_lease_id() };
            match self
                .node
                .applier
                .propose(WriteRequest::LeaseGrant { id, ttl_secs })
                .await
            {
                Ok(applied) => break (id, applied),
                // A generated ID that happens to be taken: draw another.
                Err(e)
                    if r.id == 0
                        && e.message() == EtcdError::LeaseExist.to_string()
                        && attempts < 8 =>
                {
                    attempts += 1
                }
                Err(e) => return Err(e),
            }
        };
        self.node
            .metrics
            .leases
            .set(self.node.lessor.count() as i64);
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.node.header(applied.revision)),
            id,
            ttl: ttl_secs,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.node.reject_learner()?;
        let id = request.into_inner().id;
        let applied = self
            .node
            .applier
            .propose(WriteRequest::LeaseRevoke { id })
            .await?;
        self.node
            .metrics
            .leases
            .set(self.node.lessor.count() as i64);
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.node.header(applied.revision)),
        }))
    }

    type LeaseKeepAliveStream = crate::stream::HeadersWithFirst<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.node.reject_learner()?;
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    msg = input.next() => match msg {
                        Some(Ok(req)) => req,
                        _ => break,
                    },
                    _ = shutdown.changed() => break,
                };
                // As etcd: an unknown or expired lease answers TTL 0, not an error. A follower
                // asks the leader, where lease deadlines count.
                let ttl = match node.applier.lease_keep_alive(&node.lessor, req.id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header: Some(node.current_header()),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(crate::stream::headers_with_first(rx).await))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        let header = Some(self.node.current_header());
        let remaining = self
            .node
            .applier
            .lease_time_to_live(&self.node.lessor, r.id)
            .await?;
        let Some((ttl, granted_ttl)) = remaining else {
            // As etcd: a missing lease reports TTL -1.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if r.keys {
            self.node
                .store
                .lease_keys(r.id)
                .map_err(errors::from_store)?
        } else {
            vec![]
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.reject_learner()?;
        // From the lessor, which learns of grants only once they are durable and visible.
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.current_header()),
            leases: self
                .node
                .lessor
                .ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }))
    }
}

/// A random positive lease ID. Lease IDs are the proposer's choice, carried in the entry.
fn random_lease_id() -> i64 {
    loop {
        let id = raftlog::determinism::random_u64() as i64 & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

/// Revokes expired leases; runs until `shutdown` fires.
pub async fn run_expiry(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Only the leader expires leases (its deadlines are the ones clients renew).
        if !node.applier.is_leader() {
            continue;
        }
        for id in node.lessor.expired(REVOKES_PER_CHECK_MAX) {
            match node.applier.propose(WriteRequest::LeaseRevoke { id }).await {
                Ok(_) => {
                    tracing::debug!(lease = format!("{id:x}"), "lease expired and was revoked")
                }
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = format!("{id:x}"), "revoking an expired lease failed");
                    continue;
                }
            }
            node.lessor.forget(id);
        }
        node.metrics.leases.set(node.lessor.count() as i64);
    }
}
