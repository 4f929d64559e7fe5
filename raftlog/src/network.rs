//! The Raft transport over gRPC: the client half ([`Network`], one per peer, made by
//! [`NetworkFactory`]) and the server half ([`RaftService`]). Each peer has one shared
//! connection for votes and heartbeats, and each replication stream one of its own for
//! entries; channels connect lazily and reconnect on their own, and openraft backs off from a
//! peer that is unreachable. A leader refuses votes from members no longer in its membership,
//! which tells them they were removed. Messages are Cairn's peer protobufs (`etcd-proto/proto/cairn_raft.proto`); entries carry the same
//! payload bytes the log stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use etcd_proto::cairnraftpb as pb;
use etcd_proto::cairnraftpb::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::LeaderId;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::proposal::{decode_payload, encode_payload};
use crate::transport::Transport;
use crate::types::{log_id, Entry, LogId, Member, NodeId, Raft, TypeConfig, Vote};

/// Largest peer message (a batch of entries or a snapshot chunk) either side accepts.
pub const PEER_MESSAGE_MAX: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Entry bytes one AppendEntries carries at most (unless a single entry is larger): openraft
/// gives an append one heartbeat interval to complete.
pub const APPEND_BYTES_BUDGET: usize = 8 << 20;

// ---- conversions ----------------------------------------------------------------------------

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<pb::Vote>) -> Vote {
    let v = v.unwrap_or_default();
    Vote {
        leader_id: LeaderId::new(v.term, v.node_id),
        committed: v.committed,
    }
}

pub fn log_id_to_pb(l: Option<LogId>) -> Option<pb::LogId> {
    l.map(|l| pb::LogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    })
}

pub fn log_id_from_pb(l: Option<pb::LogId>) -> Option<LogId> {
    l.map(|l| log_id(l.term, l.node_id, l.index))
}

fn entry_to_pb(e: &Entry) -> pb::Entry {
    let mut payload = Vec::new();
    encode_payload(&e.payload, &mut payload);
    pb::Entry {
        term: e.log_id.leader_id.term,
        node_id: e.log_id.leader_id.node_id,
        index: e.log_id.index,
        payload,
    }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, Status> {
    Ok(Entry {
        log_id: log_id(e.term, e.node_id, e.index),
        payload: decode_payload(&e.payload).map_err(|e| Status::invalid_argument(e.to_string()))?,
    })
}

fn error_json<E: serde::Serialize>(e: &E) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_default()
}

// ---- client ---------------------------------------------------------------------------------

/// The refusal a leader sends a member that is no longer in the cluster and asks for votes.
pub const REMOVED: &str = "cairn: the member has been permanently removed from the cluster";

/// Makes a [`Network`] per peer, addressed by the first of its peer URLs. `removed` is
/// notified when a leader answers that this member was removed from the cluster (as etcd's
/// members learn it), so the member can stop.
///
/// openraft asks for a new [`Network`] for every vote round and every leadership check of a
/// linearizable read, so the factory keeps one shared connection per peer for those short
/// messages; a replication stream sends its entries and snapshots over a connection of its
/// own, so a large append never queues a heartbeat behind it (etcd separates its peer
/// streams the same way).
#[derive(Clone, Default)]
pub struct NetworkFactory {
    pub removed: Arc<Notify>,
    pub transport: Transport,
    /// Held by the networks that use them: a peer's link goes when its last network does.
    shared: Arc<Mutex<HashMap<NodeId, Weak<Mutex<Link>>>>>,
}

impl NetworkFactory {
    pub fn new(removed: Arc<Notify>, transport: Transport) -> NetworkFactory {
        NetworkFactory {
            removed,
            transport,
            shared: Arc::default(),
        }
    }
}

/// Timed-out RPCs in a row after which the connection to a peer is replaced: one that stopped
/// delivering without being closed (its peer's host vanished, or segments were lost) would
/// otherwise stall every RPC until HTTP/2 keep-alive gives up on it, and keep-alive pings go
/// out only while the connection is idle of data. Each RPC that times out has waited a
/// heartbeat interval, and a shared connection carries at most a couple at once (a replication
/// stream's heartbeat and one leadership check), so this is at least about an election timeout.
const REDIAL_AFTER_TIMEOUTS: u32 = 20;

/// A connection to one peer and how many of its RPCs in a row timed out. `generation` counts
/// its dials, so an RPC sent on a connection since replaced does not count against the new one.
struct Link {
    target: NodeId,
    url: Option<String>,
    client: Result<RaftClient<Channel>, String>,
    timeouts: u32,
    generation: u64,
}

type Client = RaftClient<Channel>;

impl Link {
    fn dial(target: NodeId, url: Option<String>, transport: &Transport) -> Link {
        Link {
            target,
            client: dial(target, url.as_deref(), transport),
            url,
            timeouts: 0,
            generation: 0,
        }
    }

    /// Replaces the connection (with one to `url`).
    fn redial(&mut self, url: Option<String>, transport: &Transport) {
        let generation = self.generation + 1;
        *self = Link::dial(self.target, url, transport);
        self.generation = generation;
    }

    /// The client and the generation of the connection it uses.
    fn client<E: std::error::Error>(&self) -> Result<(Client, u64), RpcErr<E>> {
        match &self.client {
            Ok(c) => Ok((c.clone(), self.generation)),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(e.clone()),
            ))),
        }
    }

    /// Counts timed-out RPCs in a row on the current connection; replaces it after too many.
    fn observe(&mut self, generation: u64, timed_out: bool, transport: &Transport) {
        if generation != self.generation {
            return;
        }
        if !timed_out {
            self.timeouts = 0;
            return;
        }
        self.timeouts += 1;
        if self.timeouts >= REDIAL_AFTER_TIMEOUTS {
            tracing::info!(
                peer = format!("{:x}", self.target),
                timeouts = self.timeouts,
                "peer connection stopped answering; dialing again"
            );
            self.redial(self.url.clone(), transport);
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Network {
        let url = node.peer_urls.first().cloned();
        let shared = {
            let mut links = self.shared.lock().expect("peer links");
            links.retain(|_, l| l.strong_count() > 0);
            match links.get(&target).and_then(Weak::upgrade) {
                Some(link) => {
                    let mut l = link.lock().expect("peer link");
                    if l.url != url {
                        l.redial(url.clone(), &self.transport);
                    }
                    drop(l);
                    link
                }
                None => {
                    let link =
                        Arc::new(Mutex::new(Link::dial(target, url.clone(), &self.transport)));
                    links.insert(target, Arc::downgrade(&link));
                    link
                }
            }
        };
        Network {
            target,
            shared,
            own: None,
            url,
            removed: self.removed.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// A lazily connecting channel to a peer URL.
pub fn peer_channel(url: &str, transport: &Transport) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    Ok(transport.channel(
        endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
    ))
}

fn dial(
    target: NodeId,
    url: Option<&str>,
    transport: &Transport,
) -> Result<RaftClient<Channel>, String> {
    url.ok_or_else(|| format!("member {target:x} has no peer URL"))
        .and_then(|url| peer_channel(url, transport))
        .map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(PEER_MESSAGE_MAX)
                .max_encoding_message_size(PEER_MESSAGE_MAX)
        })
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

fn transport_err<E: std::error::Error>(status: Status) -> RpcErr<E> {
    let io = std::io::Error::other(status.to_string());
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&io)),
        _ => RPCError::Network(NetworkError::new(&io)),
    }
}

/// Which of a [`Network`]'s connections an RPC goes over.
#[derive(Clone, Copy)]
enum Lane {
    /// The peer's shared connection: votes and heartbeats.
    Shared,
    /// This network's own connection: entries and snapshot chunks.
    Bulk,
}

/// openraft's client for one peer: see [`NetworkFactory`].
pub struct Network {
    target: NodeId,
    shared: Arc<Mutex<Link>>,
    own: Option<Link>,
    url: Option<String>,
    removed: Arc<Notify>,
    transport: Transport,
}

impl Network {
    fn client<E: std::error::Error>(&mut self, lane: Lane) -> Result<(Client, u64), RpcErr<E>> {
        match lane {
            Lane::Shared => self.shared.lock().expect("peer link").client(),
            Lane::Bulk => {
                let (target, url, transport) = (self.target, &self.url, &self.transport);
                self.own
                    .get_or_insert_with(|| Link::dial(target, url.clone(), transport))
                    .client()
            }
        }
    }

    fn observe<T>(&mut self, (lane, generation): (Lane, u64), result: &Result<T, Status>) {
        let timed_out = matches!(
            result,
            Err(s) if matches!(s.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
        );
        match lane {
            Lane::Shared => self.shared.lock().expect("peer link").observe(
                generation,
                timed_out,
                &self.transport,
            ),
            Lane::Bulk => {
                if let Some(own) = &mut self.own {
                    own.observe(generation, timed_out, &self.transport)
                }
            }
        }
    }

    fn remote<E>(&self, error: &[u8]) -> Option<RpcErr<E>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        if error.is_empty() {
            return None;
        }
        let e: RaftError<NodeId, E> = serde_json::from_slice(error).ok()?;
        Some(RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn with_timeout<T>(msg: T, option: &RPCOption) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(option.hard_ttl());
    req
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let entries: Vec<pb::Entry> = rpc.entries.iter().map(entry_to_pb).collect();
        // An entry can hold a large batch: past the budget, ask openraft to send fewer.
        let mut bytes = 0;
        let fit = entries
            .iter()
            .take_while(|e| {
                bytes += e.payload.len();
                bytes <= APPEND_BYTES_BUDGET
            })
            .count();
        if fit < entries.len() && entries.len() > 1 {
            let hint = fit.max(1) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let msg = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: log_id_to_pb(rpc.prev_log_id),
            entries,
            leader_commit: log_id_to_pb(rpc.leader_commit),
        };
        let lane = if msg.entries.is_empty() {
            Lane::Shared
        } else {
            Lane::Bulk
        };
        let (mut client, generation) = self.client(lane)?;
        let result = client.append_entries(with_timeout(msg, &option)).await;
        self.observe((lane, generation), &result);
        let resp = result.map_err(transport_err)?.into_inner();
        if let Some(e) = self.remote(&resp.error) {
            return Err(e);
        }
        use pb::append_entries_response::Result as R;
        Ok(match R::try_from(resp.result).unwrap_or(R::Success) {
            R::Success => AppendEntriesResponse::Success,
            R::PartialSuccess => {
                AppendEntriesResponse::PartialSuccess(log_id_from_pb(resp.matched))
            }
            R::Conflict => AppendEntriesResponse::Conflict,
            R::HigherVote => AppendEntriesResponse::HigherVote(vote_from_pb(resp.vote)),
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let msg = pb::InstallSnapshotRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            meta: serde_json::to_vec(&rpc.meta).expect("snapshot metadata serializes"),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let (mut client, generation) = self.client(Lane::Bulk)?;
        let result = client.install_snapshot(with_timeout(msg, &option)).await;
        self.observe((Lane::Bulk, generation), &result);
        let resp = result.map_err(transport_err)?.into_inner();
        if let Some(e) = self.remote(&resp.error) {
            return Err(e);
        }
        Ok(InstallSnapshotResponse {
            vote: vote_from_pb(resp.vote),
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let msg = pb::VoteRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: log_id_to_pb(rpc.last_log_id),
        };
        let (mut client, generation) = self.client(Lane::Shared)?;
        let result = client.vote(with_timeout(msg, &option)).await;
        self.observe((Lane::Shared, generation), &result);
        let resp = match result {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if s.code() == tonic::Code::FailedPrecondition && s.message() == REMOVED {
                    tracing::warn!(leader = format!("{:x}", self.target), "{REMOVED}");
                    self.removed.notify_one();
                }
                return Err(transport_err(s));
            }
        };
        if let Some(e) = self.remote(&resp.error) {
            return Err(e);
        }
        Ok(VoteResponse {
            vote: vote_from_pb(resp.vote),
            vote_granted: resp.vote_granted,
            last_log_id: log_id_from_pb(resp.last_log_id),
        })
    }
}

// ---- server ---------------------------------------------------------------------------------

/// The Raft RPCs of one member, served on its peer port.
pub struct RaftService {
    raft: Raft,
    store: store::Store,
}

impl RaftService {
    /// `store` is the member's store: a removal counts once applied, not when appended.
    pub fn new(raft: Raft, store: store::Store) -> RaftService {
        RaftService { raft, store }
    }

    /// The tonic service, with the peer message size limits.
    pub fn into_server(self) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_MAX)
            .max_encoding_message_size(PEER_MESSAGE_MAX)
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let r = req.into_inner();
        let rpc = AppendEntriesRequest {
            vote: vote_from_pb(r.vote),
            prev_log_id: log_id_from_pb(r.prev_log_id),
            entries: r
                .entries
                .into_iter()
                .map(entry_from_pb)
                .collect::<Result<_, _>>()?,
            leader_commit: log_id_from_pb(r.leader_commit),
        };
        use pb::append_entries_response::Result as R;
        let mut out = pb::AppendEntriesResponse::default();
        match self.raft.append_entries(rpc).await {
            Ok(AppendEntriesResponse::Success) => out.result = R::Success as i32,
            Ok(AppendEntriesResponse::PartialSuccess(m)) => {
                out.result = R::PartialSuccess as i32;
                out.matched = log_id_to_pb(m);
            }
            Ok(AppendEntriesResponse::Conflict) => out.result = R::Conflict as i32,
            Ok(AppendEntriesResponse::HigherVote(v)) => {
                out.result = R::HigherVote as i32;
                out.vote = Some(vote_to_pb(&v));
            }
            Err(e) => out.error = error_json(&e),
        }
        Ok(Response::new(out))
    }

    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let r = req.into_inner();
        let rpc = VoteRequest {
            vote: vote_from_pb(r.vote),
            last_log_id: log_id_from_pb(r.last_log_id),
        };
        let leading = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.current_leader == Some(m.id)
        };
        let removed = leading && {
            let applied = crate::state_machine::applied_membership(&self.store);
            let known = applied.membership().nodes().next().is_some();
            known
                && applied
                    .membership()
                    .get_node(&rpc.vote.leader_id.node_id)
                    .is_none()
        };
        if removed {
            return Err(Status::failed_precondition(REMOVED));
        }
        let out = match self.raft.vote(rpc).await {
            Ok(v) => pb::VoteResponse {
                vote: Some(vote_to_pb(&v.vote)),
                vote_granted: v.vote_granted,
                last_log_id: log_id_to_pb(v.last_log_id),
                error: Vec::new(),
            },
            Err(e) => pb::VoteResponse {
                error: error_json(&e),
                ..Default::default()
            },
        };
        Ok(Response::new(out))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let r = req.into_inner();
        let meta = serde_json::from_slice(&r.meta)
            .map_err(|e| Status::invalid_argument(format!("snapshot metadata: {e}")))?;
        let rpc = InstallSnapshotRequest {
            vote: vote_from_pb(r.vote),
            meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        let out = match self.raft.install_snapshot(rpc).await {
            Ok(v) => pb::InstallSnapshotResponse {
                vote: Some(vote_to_pb(&v.vote)),
                error: Vec::new(),
            },
            Err(e) => pb::InstallSnapshotResponse {
                vote: None,
                error: error_json(&e),
            },
        };
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_redials_after_timeouts_on_its_current_connection_only() {
        let url = Some("http://127.0.0.1:9".to_string());
        let mut link = Link::dial(1, url, &Transport::Tcp);
        let (_, first) = link.client::<openraft::error::Infallible>().unwrap();
        for _ in 1..REDIAL_AFTER_TIMEOUTS {
            link.observe(first, true, &Transport::Tcp);
        }
        link.observe(first, false, &Transport::Tcp);
        for _ in 0..REDIAL_AFTER_TIMEOUTS {
            link.observe(first, true, &Transport::Tcp);
        }
        let (_, second) = link.client::<openraft::error::Infallible>().unwrap();
        assert_eq!((second, link.timeouts), (first + 1, 0), "redialed once");
        // Late answers from the replaced connection count for nothing.
        for _ in 0..REDIAL_AFTER_TIMEOUTS {
            link.observe(first, true, &Transport::Tcp);
        }
        assert_eq!((link.generation, link.timeouts), (second, 0));
    }
}
