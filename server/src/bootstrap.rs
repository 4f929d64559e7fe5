//! Starting this member's Raft node: the log, the state machine over the store, openraft with
//! etcd's timing flags, the peer listener (Raft RPCs and the peer service), and — for a new
//! cluster — the initial membership from `--initial-cluster`. Also the task that follows
//! leadership: a member that becomes leader refreshes every lease's TTL, as etcd's does.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_proto::cairnraftpb::peer_client::PeerClient;
use etcd_proto::cairnraftpb::{
    member_change_request::Kind, MemberAttrs, MemberChangeRequest, MembersRequest,
};
use openraft::SnapshotPolicy;
use raftlog::network::{NetworkFactory, RaftService};
use raftlog::state_machine::snapshot_dir;
use raftlog::{ApplyObserver, LogStore, Member, Raft, StateMachine};
use store::{Store, Writer};
use tokio::sync::watch;

use crate::config::Config;
use crate::lessor::Lessor;
use crate::member::member_id;
use crate::peer::PeerService;
use crate::server::ServerError;

fn raft_err(context: &str) -> impl FnOnce(String) -> ServerError + '_ {
    move |e| ServerError::Io {
        context: context.to_string(),
        source: std::io::Error::other(e),
    }
}

/// The initial cluster's members by ID, as this member records them before anyone has
/// published attributes (names and peer URLs only; identical on every member).
pub fn initial_members(config: &Config) -> BTreeMap<u64, Member> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            (
                member_id(urls, &config.initial_cluster_token),
                Member {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                    client_urls: Vec::new(),
                },
            )
        })
        .collect()
}

/// This member's identity, fixed when its data directory was created.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

const IDENTITY_FILE: &str = "identity";
/// Rounds of asking the other members before a joining member gives up.
const JOIN_ATTEMPTS: usize = 20;

/// The member and cluster IDs: read from the data directory, or — on first start — derived
/// from the flags as etcd derives them (a new cluster), or learned from the cluster's members
/// (`--initial-cluster-state existing`: the member was added by MemberAdd and finds itself by
/// its peer URLs), and recorded. As with etcd, the clustering flags only matter the first
/// time; a restarted member keeps its IDs whatever its flags say now.
pub async fn identity(config: &Config) -> Result<Identity, ServerError> {
    let dir = config.data_dir.join("member");
    std::fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let err = |e: String| raft_err("member identity")(e);
    if let Some(bytes) = raftlog::meta::read(&dir, IDENTITY_FILE).map_err(|e| err(e.to_string()))? {
        return serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()));
    }
    let id = if config.initial_cluster_new {
        let ids: Vec<u64> = initial_members(config).into_keys().collect();
        Identity {
            member_id: member_id(&config.advertise_peer_urls, &config.initial_cluster_token),
            cluster_id: crate::member::cluster_id(&ids),
        }
    } else {
        identity_from_cluster(config).await.map_err(err)?
    };
    let json = serde_json::to_vec(&id).expect("identity serializes");
    raftlog::meta::write_atomically(&dir, IDENTITY_FILE, &json).map_err(|e| err(e.to_string()))?;
    Ok(id)
}

/// Asks the other members of `--initial-cluster` who this member is.
async fn identity_from_cluster(config: &Config) -> Result<Identity, String> {
    let mut mine = config.advertise_peer_urls.clone();
    mine.sort();
    let others: Vec<&String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != config.name)
        .flat_map(|(_, urls)| urls.iter())
        .collect();
    let mut last_error = String::from("--initial-cluster names no other member");
    for _attempt in 0..JOIN_ATTEMPTS {
        for url in &others {
            let asked = async {
                let channel = raftlog::network::peer_channel(url, &config.transport)?;
                let resp = PeerClient::new(channel)
                    .members(MembersRequest {})
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                let me = resp.members.iter().find(|m| {
                    let mut urls = m.peer_urls.clone();
                    urls.sort();
                    urls == mine
                });
                match me {
                    Some(m) => Ok(Identity {
                        member_id: m.id,
                        cluster_id: resp.cluster_id,
                    }),
                    None => Err(format!(
                        "no member with peer URLs {} (add it with `etcdctl member add` first)",
                        mine.join(",")
                    )),
                }
            };
            match asked.await {
                Ok(id) => return Ok(id),
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(format!(
        "cannot fetch cluster info from peer urls: {last_error}"
    ))
}

/// Opens the log and state machine and starts openraft.
pub async fn start_raft(
    config: &Config,
    id: u64,
    writer: Writer,
    observer: Arc<dyn ApplyObserver>,
    removed: Arc<tokio::sync::Notify>,
) -> Result<Raft, ServerError> {
    let member_dir = config.data_dir.join("member");
    // How far the store is durable: the log is purged no further (see LogStore::purge).
    let (durable, durable_rx) = tokio::sync::watch::channel(0);
    let sm = StateMachine::open(writer, &snapshot_dir(&member_dir), observer, durable)
        .map_err(raft_err("opening the state machine"))?;
    let log = LogStore::open(&member_dir.join("wal"), durable_rx)
        .map_err(raft_err("opening the raft log"))?;
    let election = config.election_timeout.as_millis() as u64;
    let rc = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: election.max(1000) * 10,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        // Entries kept after a snapshot so a briefly lagging follower catches up from the log.
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        // An entry is a batch of proposals already; see also network::APPEND_BYTES_BUDGET.
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| raft_err("raft configuration")(e.to_string()))?;
    let raft = Raft::new(
        id,
        Arc::new(rc),
        NetworkFactory::new(removed, config.transport.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| raft_err("starting raft")(e.to_string()))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| raft_err("starting raft")(e.to_string()))?;
    if !initialized && config.initial_cluster_new {
        let members = initial_members(config);
        tracing::info!(members = members.len(), "bootstrapping a new cluster");
        let sole = members.len() == 1;
        if let Err(e) = raft.initialize(members).await {
            return Err(raft_err("bootstrapping the cluster")(e.to_string()));
        }
        if sole {
            // Alone in the cluster: no one to wait for, campaign now.
            let _ = raft.trigger().elect().await;
        }
    } else if initialized
        && raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            == 1
    {
        let _ = raft.trigger().elect().await;
    }
    Ok(raft)
}

/// Serves the Raft and peer services on every `--listen-peer-urls` address until `stop`.
pub async fn serve_peers(
    config: &Config,
    applier: crate::applier::Applier,
    identity: Identity,
    lessor: Arc<Lessor>,
    store: store::Store,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let mut incoming = Vec::new();
    for addr in &config.listen_peer {
        let (bound, conns) = config
            .transport
            .listen(*addr, raftlog::transport::never_busy)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("listening for peers on {addr}"),
                source,
            })?;
        tracing::info!(address = %bound, "serving peer traffic");
        incoming.push(conns);
    }
    let incoming = futures::stream::select_all(incoming);
    let raft = applier.raft().clone();
    let peer = etcd_proto::cairnraftpb::peer_server::PeerServer::new(PeerService::new(
        applier,
        identity.member_id,
        identity.cluster_id,
        lessor,
    ))
    .max_decoding_message_size(raftlog::network::PEER_MESSAGE_MAX);
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(crate::date::simulated))
        .add_service(RaftService::new(raft, store).into_server())
        .add_service(peer)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "peer server failed");
        }
    }))
}

/// Follows leadership and membership: when this member becomes leader it gives every lease a
/// full TTL; when it has been removed from the cluster it asks the server to stop (`removed`),
/// as an etcd member does. When Raft stops on a fatal error it asks the same and returns the
/// reason, which the server exits with.
pub async fn follow_leadership(
    raft: Raft,
    store: store::Store,
    member_id: u64,
    lessor: Arc<Lessor>,
    removed: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    // openraft publishes its full metrics on every turn of its core loop, several times per
    // write; this follows only what changes with leadership and membership, and the applied
    // index only while an appended membership change waits to be applied.
    let mut server = raft.server_metrics();
    let mut data = raft.data_metrics();
    let mut leading = false;
    let mut was_member = false;
    loop {
        let (now_leading, effective) = {
            let m = server.borrow_and_update();
            (
                m.current_leader == Some(member_id),
                *m.membership_config.log_id(),
            )
        };
        // The applied membership: an appended removal could still be truncated.
        let applied = raftlog::state_machine::applied_membership(&store);
        let is_member = applied.membership().get_node(&member_id).is_some();
        if was_member && !is_member {
            tracing::warn!(
                member_id = format!("{member_id:x}"),
                "the member has been permanently removed from the cluster; stopping"
            );
            removed.notify_one();
            return None;
        }
        was_member |= is_member;
        if now_leading && !leading {
            tracing::info!(
                member_id = format!("{member_id:x}"),
                "became leader; refreshing lease TTLs"
            );
            lessor.refresh_all(tokio::time::Instant::now());
        }
        leading = now_leading;
        let change_pending = effective > *applied.log_id();
        data.borrow_and_update();
        tokio::select! {
            changed = server.changed() => if changed.is_err() {
                return raft_stopped(&raft, &stop, &removed);
            },
            changed = data.changed(), if change_pending => if changed.is_err() {
                return raft_stopped(&raft, &stop, &removed);
            },
            _ = stop.changed() => return None,
        }
    }
}

/// Raft is gone. Unless the server is stopping, that is fatal: its last word if it left one
/// (openraft reports it before its core ends), else its core ended without one (a panic).
fn raft_stopped(
    raft: &Raft,
    stop: &watch::Receiver<bool>,
    removed: &tokio::sync::Notify,
) -> Option<String> {
    if *stop.borrow() {
        return None;
    }
    let reason = match &raft.metrics().borrow().running_state {
        Err(fatal) => fatal.to_string(),
        Ok(()) => "the raft core exited unexpectedly".to_string(),
    };
    tracing::error!(error = %reason, "raft stopped; stopping the member");
    removed.notify_one();
    Some(reason)
}

/// Publishes this member's name and client URLs into the membership (etcd's `publish`), once
/// a leader is there to take it; retries until it is applied, then fires `ready`, or until
/// `stop` fires. A member that restarts with its attributes already recorded is ready at once
/// (etcd proposes them again and waits for a quorum).
pub async fn publish(
    applier: crate::applier::Applier,
    store: Store,
    me: crate::member::Member,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    loop {
        // Applied, so committed: an appended entry could still be truncated.
        let recorded = crate::membership::applied_members(&store)
            .into_iter()
            .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls);
        if recorded {
            tracing::info!(name = %me.name, "published local member to cluster");
            let _ = ready.send(());
            return;
        }
        if applier.leader().is_some() {
            let req = MemberChangeRequest {
                kind: Kind::Publish as i32,
                member: Some(MemberAttrs {
                    id: me.id,
                    name: me.name.clone(),
                    peer_urls: me.peer_urls.clone(),
                    client_urls: me.client_urls.clone(),
                    is_learner: false,
                }),
                is_learner: false,
            };
            if let Err(e) = applier.change_member(req).await {
                tracing::debug!(error = %e, "publishing member attributes failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}
