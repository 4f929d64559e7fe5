//! Starting this member's Raft node: the log, the state machine over the store, openraft with
//! etcd's timing flags, the peer listener (Raft RPCs and the peer service), and — for a new
//! cluster — the initial membership from `--initial-cluster`. Also the task that follows
//! leadership: a member that becomes leader refreshes every lease's TTL, as etcd's does.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use openraft::SnapshotPolicy;
use raftlog::network::{NetworkFactory, RaftService};
use raftlog::state_machine::snapshot_dir;
use raftlog::{ApplyObserver, LogStore, Member, Raft, StateMachine};
use store::Writer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::lessor::Lessor;
use crate::member::member_id;
use crate::peer::PeerService;
use crate::server::ServerError;

/// Log entries kept after a snapshot so a briefly lagging follower catches up from the log
/// (etcd's snapshotCatchUpEntries).
const CATCH_UP_ENTRIES: u64 = 5000;

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

/// The member and cluster IDs: read from the data directory, or — on first start — derived
/// from the flags as etcd derives them and recorded. As with etcd, the clustering flags only
/// matter the first time; a restarted member keeps its IDs whatever its flags say now.
pub fn identity(config: &Config) -> Result<Identity, ServerError> {
    let dir = config.data_dir.join("member");
    std::fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let err = |e: String| raft_err("member identity")(e);
    if let Some(bytes) = raftlog::meta::read(&dir, IDENTITY_FILE).map_err(|e| err(e.to_string()))? {
        return serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()));
    }
    let member_id = member_id(&config.advertise_peer_urls, &config.initial_cluster_token);
    let ids: Vec<u64> = initial_members(config).into_keys().collect();
    let id = Identity {
        member_id,
        cluster_id: crate::member::cluster_id(&ids),
    };
    let json = serde_json::to_vec(&id).expect("identity serializes");
    raftlog::meta::write_atomically(&dir, IDENTITY_FILE, &json).map_err(|e| err(e.to_string()))?;
    Ok(id)
}

/// Opens the log and state machine and starts openraft.
pub async fn start_raft(
    config: &Config,
    id: u64,
    writer: Writer,
    observer: Arc<dyn ApplyObserver>,
) -> Result<Raft, ServerError> {
    let member_dir = config.data_dir.join("member");
    let log = LogStore::open(&member_dir.join("wal")).map_err(raft_err("opening the raft log"))?;
    let sm = StateMachine::open(writer, &snapshot_dir(&member_dir), observer)
        .map_err(raft_err("opening the state machine"))?;
    let election = config.election_timeout.as_millis() as u64;
    let rc = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: election.max(1000) * 10,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: CATCH_UP_ENTRIES,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| raft_err("raft configuration")(e.to_string()))?;
    let raft = Raft::new(id, Arc::new(rc), NetworkFactory, log, sm)
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
    } else if initialized && raft.metrics().borrow().membership_config.membership().voter_ids().count() == 1 {
        let _ = raft.trigger().elect().await;
    }
    Ok(raft)
}

/// Serves the Raft and peer services on every `--listen-peer-urls` address until `stop`.
pub async fn serve_peers(
    config: &Config,
    raft: Raft,
    member_id: u64,
    lessor: Arc<Lessor>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let mut incoming = Vec::new();
    for addr in &config.listen_peer {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Io {
            context: format!("listening for peers on {addr}"),
            source,
        })?;
        tracing::info!(address = %addr, "serving peer traffic");
        incoming.push(TcpListenerStream::new(listener));
    }
    let incoming = futures::stream::select_all(incoming).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let peer = etcd_proto::cairnraftpb::peer_server::PeerServer::new(PeerService::new(
        raft.clone(),
        member_id,
        lessor,
    ))
    .max_decoding_message_size(raftlog::network::PEER_MESSAGE_MAX);
    let server = tonic::transport::Server::builder()
        .add_service(RaftService::new(raft).into_server())
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

/// Follows leadership: when this member becomes leader it gives every lease a full TTL.
pub async fn follow_leadership(
    raft: Raft,
    member_id: u64,
    lessor: Arc<Lessor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut leading = false;
    loop {
        let now_leading = metrics.borrow_and_update().current_leader == Some(member_id);
        if now_leading && !leading {
            tracing::info!(member_id = format!("{member_id:x}"), "became leader; refreshing lease TTLs");
            lessor.refresh_all(tokio::time::Instant::now());
        }
        leading = now_leading;
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
