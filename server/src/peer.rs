//! What a member asks of the leader on behalf of its clients, over the peer port: forwarded
//! proposals, read index, lease keep-alive and time-to-live, membership changes. [`PeerClients`] is the asking
//! side (one lazily connected channel per member, addressed by its first peer URL, taken from
//! the current membership); [`PeerService`] the answering side, which refuses with
//! [`NOT_LEADER`] when this member is not the leader so the asker can look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_proto::cairnraftpb as pb;
use etcd_proto::cairnraftpb::peer_client::PeerClient;
use etcd_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use raftlog::network::{peer_channel, PEER_MESSAGE_MAX};
use raftlog::transport::Transport;
use raftlog::{ProposalBatch, Raft};

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::applier::Applier;
use crate::errors::EtcdError;
use crate::lessor::Lessor;

/// The message of a peer's refusal because it is not the leader.
pub const NOT_LEADER: &str = "cairn: not the leader";

pub fn is_not_leader(s: &Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && s.message() == NOT_LEADER
}

fn not_leader() -> Status {
    Status::failed_precondition(NOT_LEADER)
}

/// Channels to the other members.
#[derive(Clone)]
pub struct PeerClients {
    raft: Raft,
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    transport: Transport,
    /// Every request to a peer ends by then (its outcome is unknown if it timed out).
    timeout: Duration,
}

fn timed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}

impl PeerClients {
    pub fn new(raft: Raft, timeout: Duration, transport: Transport) -> PeerClients {
        PeerClients {
            raft,
            channels: Arc::default(),
            timeout,
            transport,
        }
    }

    fn client(&self, member: u64) -> Result<PeerClient<Channel>, Status> {
        let url = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&member)
                .and_then(|n| n.peer_urls.first().cloned())
        };
        let mut channels = self.channels.lock().expect("peer channels lock");
        // A leader that was just removed may lead a little longer than it is listed: its
        // last known URL still reaches it.
        let channel = match (url, channels.get(&member)) {
            (Some(url), Some((known, c))) if *known == url => c.clone(),
            (None, Some((_, c))) => c.clone(),
            (Some(url), _) => {
                let c = peer_channel(&url, &self.transport).map_err(Status::internal)?;
                channels.insert(member, (url, c.clone()));
                c
            }
            (None, None) => return Err(EtcdError::NoLeader.into()),
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_MAX)
            .max_encoding_message_size(PEER_MESSAGE_MAX))
    }

    /// Asks the leader to append a batch of proposals.
    pub async fn propose(&self, leader: u64, req: pb::InternalBatch) -> Result<(), Status> {
        self.client(leader)?
            .propose(timed(req, self.timeout))
            .await
            .map(|_| ())
    }

    /// Asks the leader for the index a linearizable read must wait for.
    pub async fn read_index(&self, leader: u64) -> Result<u64, Status> {
        Ok(self
            .client(leader)?
            .read_index(timed(pb::ReadIndexRequest {}, self.timeout))
            .await?
            .into_inner()
            .index)
    }

    pub async fn lease_keep_alive(&self, leader: u64, id: i64) -> Result<i64, Status> {
        Ok(self
            .client(leader)?
            .lease_keep_alive(timed(LeaseKeepAliveRequest { id }, self.timeout))
            .await?
            .into_inner()
            .ttl)
    }

    /// Asks the leader to make a membership change; returns the member added, if any.
    pub async fn change_member(
        &self,
        leader: u64,
        req: pb::MemberChangeRequest,
    ) -> Result<Option<pb::MemberAttrs>, Status> {
        Ok(self
            .client(leader)?
            .change_member(timed(req, self.timeout))
            .await?
            .into_inner()
            .member)
    }

    /// Tells `member` to campaign now (leadership transfer).
    pub async fn timeout_now(&self, member: u64) -> Result<(), Status> {
        self.client(member)?
            .timeout_now(timed(pb::TimeoutNowRequest {}, self.timeout))
            .await?;
        Ok(())
    }

    /// The leader's view of a lease: (remaining TTL, granted TTL); `None` if unknown.
    pub async fn lease_time_to_live(
        &self,
        leader: u64,
        id: i64,
    ) -> Result<Option<(i64, i64)>, Status> {
        let r = self
            .client(leader)?
            .lease_time_to_live(timed(
                LeaseTimeToLiveRequest { id, keys: false },
                self.timeout,
            ))
            .await?
            .into_inner();
        Ok((r.ttl != -1).then_some((r.ttl, r.granted_ttl)))
    }
}

/// The answering side, served on the peer port.
pub struct PeerService {
    raft: Raft,
    applier: Applier,
    member_id: u64,
    cluster_id: u64,
    lessor: Arc<Lessor>,
}

impl PeerService {
    pub fn new(
        applier: Applier,
        member_id: u64,
        cluster_id: u64,
        lessor: Arc<Lessor>,
    ) -> PeerService {
        PeerService {
            raft: applier.raft().clone(),
            applier,
            member_id,
            cluster_id,
            lessor,
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.member_id)
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn propose(
        &self,
        req: Request<pb::InternalBatch>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let batch = ProposalBatch::from_internal(req.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Appended here, never forwarded again: a follower's batch is already a batch, and
        // forwarding on could chase a moving leader in circles.
        crate::applier::append_on_leader(&self.raft, batch).await?;
        Ok(Response::new(pb::ProposeResponse { index: 0 }))
    }

    async fn read_index(
        &self,
        _req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        // Through this leader's own read rounds, so the reads of every member share one
        // quorum confirmation. Afterwards this leader has applied at least the read index, so
        // its applied index is one the asker may wait for.
        self.applier.read_index().await?;
        let applied = self.raft.metrics().borrow().last_applied;
        Ok(Response::new(pb::ReadIndexResponse {
            index: applied.map_or(0, |l| l.index),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let id = req.into_inner().id;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl: self.lessor.keep_alive(id).unwrap_or(0),
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let id = req.into_inner().id;
        let (ttl, granted_ttl) = self.lessor.remaining(id, Instant::now()).unwrap_or((-1, 0));
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: None,
            id,
            ttl,
            granted_ttl,
            keys: Vec::new(),
        }))
    }

    async fn change_member(
        &self,
        req: Request<pb::MemberChangeRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let member = crate::membership::change(&self.raft, req.into_inner()).await?;
        Ok(Response::new(pb::MemberChangeResponse {
            member,
            members: crate::membership::members(&self.raft),
        }))
    }

    async fn timeout_now(
        &self,
        _req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        tracing::info!("asked to take over leadership; campaigning");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn members(
        &self,
        _req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(pb::MembersResponse {
            cluster_id: self.cluster_id,
            members: crate::membership::members(&self.raft),
        }))
    }
}
