//! `run`: opens the store, starts Raft (see `bootstrap`), the peer listener and background
//! tasks, serves gRPC and HTTP on every client URL, and shuts down in a fixed order when
//! `shutdown` resolves: stop accepting, end watch and keep-alive streams, drain requests, stop
//! background tasks and the peer listener, then stop Raft (whose log holds every acknowledged
//! write, fsynced).

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use etcd_proto::etcdserverpb::auth_server::AuthServer;
use etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use etcd_proto::etcdserverpb::lease_server::LeaseServer;
use etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use etcd_proto::etcdserverpb::AlarmType;
use futures::StreamExt;
use store::{BackendOptions, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::applier::{Applier, Waiters};
use crate::auth::AuthService;
use crate::bootstrap;
use crate::cluster::ClusterService;
use crate::compactor::{self, Compactor};
use crate::config::Config;
use crate::kv::KvService;
use crate::lease::{self, LeaseService};
use crate::lessor::Lessor;
use crate::maintenance::MaintenanceService;
use crate::member::Member;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::observer::Observer;
use crate::peer::PeerClients;
use crate::unary::KvUnary;
use crate::watch::WatchService;
use crate::watch_hub::WatchHub;
use crate::watch_wire::WatchServer;

/// etcd lets gRPC messages exceed `--max-request-bytes` by this much, so that an oversized
/// request reaches the server and gets etcd's own "request is too large" error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Raft stopped on an error it cannot go on from (a failed log write or fsync, a store
    /// that refused a committed entry): the member stops, as etcd exits on such errors.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// The directory RocksDB lives in, under the data directory.
pub fn kv_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("member").join("kv")
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let kv = kv_dir(&config.data_dir);
    std::fs::create_dir_all(&kv).map_err(io_err(format!("creating {}", kv.display())))?;
    let (store, writer) = Store::open(
        &kv,
        &BackendOptions {
            block_cache_bytes: config.block_cache_bytes,
            background_compactions: !raftlog::determinism::simulated(),
            flush_on_close: !raftlog::determinism::simulated(),
            // A simulation's few keys would all stay remembered: a small memory makes its
            // writes take both paths, remembered and read from the store.
            recent_keys: if raftlog::determinism::simulated() {
                16
            } else {
                BackendOptions::default().recent_keys
            },
        },
    )?;
    let identity = bootstrap::identity(&config).await?;
    let id = identity.member_id;
    let member = Member {
        id,
        name: config.name.clone(),
        peer_urls: config.advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    let metrics = Arc::new(Metrics::new(&config.reported_etcd_version));
    let hub = WatchHub::new();
    let (compact_tx, compact_rx) = mpsc::unbounded_channel();
    let lessor = Arc::new(Lessor::new(Lessor::min_ttl_for(config.election_timeout)));
    let now = tokio::time::Instant::now();
    for (lease_id, ttl) in store.leases()? {
        lessor.track(lease_id, ttl, now);
    }
    let raised = store
        .alarms()?
        .iter()
        .any(|&(_, t)| t == AlarmType::Nospace as i32);
    let nospace = Arc::new(AtomicBool::new(raised));
    let waiters = Arc::new(Waiters::default());
    let observer = Arc::new(Observer {
        store: store.clone(),
        hub: hub.clone(),
        lessor: lessor.clone(),
        compactor: compact_tx,
        metrics: metrics.clone(),
        waiters: waiters.clone(),
        nospace: nospace.clone(),
    });
    // Notified when this member learns it was removed from the cluster, or Raft stopped on a
    // fatal error (recorded in `fatal`): it then stops.
    let removed = Arc::new(tokio::sync::Notify::new());
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let raft = bootstrap::start_raft(&config, id, writer, observer, removed.clone()).await?;
    let applier = Applier::new(
        raft.clone(),
        id,
        waiters,
        PeerClients::new(
            raft.clone(),
            crate::applier::request_timeout(config.election_timeout),
            config.transport.clone(),
        ),
        nospace,
        config.election_timeout,
    );
    let compactor = Compactor::start(store.clone(), compact_rx);
    let node = Arc::new(Node {
        cluster_id: identity.cluster_id,
        member,
        store: store.clone(),
        applier: applier.clone(),
        hub,
        lessor: lessor.clone(),
        metrics,
        config: config.clone(),
    });
    tracing::info!(
        name = %config.name,
        member_id = format!("{id:x}"),
        cluster_id = format!("{:x}", node.cluster_id),
        data_dir = %config.data_dir.display(),
        revision = store.current_revision(),
        "starting cairn"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let peer_server = bootstrap::serve_peers(
        &config,
        applier.clone(),
        identity,
        lessor.clone(),
        store.clone(),
        stop_rx.clone(),
    )
    .await?;
    let background = [
        tokio::spawn(lease::run_expiry(node.clone(), stop_rx.clone())),
        tokio::spawn(compactor::run_auto(
            config.auto_compaction.clone(),
            store.clone(),
            applier.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn({
            let fatal = fatal.clone();
            let follow = bootstrap::follow_leadership(
                raft.clone(),
                store.clone(),
                id,
                lessor,
                removed.clone(),
                stop_rx.clone(),
            );
            async move {
                if let Some(reason) = follow.await {
                    *fatal.lock().expect("fatal lock") = Some(reason);
                }
            }
        }),
        tokio::spawn(crate::quota::run(node.clone(), stop_rx.clone())),
        tokio::spawn(bootstrap::publish(
            applier.clone(),
            store.clone(),
            node.member.clone(),
            stop_rx.clone(),
            ready_tx,
        )),
    ];

    let max_recv = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let services = crate::dispatch::Dispatch::new(crate::dispatch::Services {
        kv: KvUnary::new(KvService::new(node.clone(), compactor), max_recv),
        watch: WatchServer::new(WatchService::new(node.clone(), stop_rx.clone()), max_recv),
        lease: LeaseServer::new(LeaseService::new(node.clone(), stop_rx.clone()))
            .max_decoding_message_size(max_recv),
        cluster: ClusterServer::new(ClusterService::new(node.clone())),
        maintenance: MaintenanceServer::new(MaintenanceService::new(node.clone()))
            .max_encoding_message_size(usize::MAX),
        auth: AuthServer::new(AuthService::new(node.clone())),
        http: crate::http::router(node.clone()),
    });

    let mut incoming = Vec::new();
    for addr in &config.listen_client {
        let (bound, conns) = config
            .transport
            .listen(*addr, raftlog::transport::clients_busy)
            .await
            .map_err(io_err(format!("listening on {addr}")))?;
        tracing::info!(address = %bound, "serving client traffic (gRPC and HTTP)");
        incoming.push(conns);
    }
    let incoming = futures::stream::select_all(incoming);
    // As etcd, clients are served once this member's name and client URLs are in the
    // membership (its `ReadyNotify`): until then connections wait in the listen backlog.
    let incoming = futures::stream::once(async move {
        match ready_rx.await {
            Ok(()) => {
                tracing::info!("ready to serve client requests");
                incoming.left_stream()
            }
            // Stopped before it was ready: only the shutdown signal ends the server.
            Err(_) => futures::stream::pending().right_stream(),
        }
    })
    .flatten();
    drop(node);

    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = removed.notified() => {}
        }
        tracing::info!("shutting down: closing streams and draining requests");
        let _ = stop_tx.send(true);
    };
    // Requests are routed by `dispatch`, which also counts them in `HANDLING` while they are
    // handled: connections then hold their writes back a moment, so responses go out together
    // (`raftlog::transport::HANDLING`).
    tonic::transport::Server::builder()
        .accept_http1(true)
        .serve_with_incoming_shutdown(services, incoming, signal)
        .await?;

    for task in background {
        let _ = task.await;
    }
    let _ = peer_server.await;
    drop(applier);
    // Raft stops after the last request: every acknowledged write is in its fsynced log.
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    if let Some(reason) = fatal.lock().expect("fatal lock").take() {
        return Err(ServerError::Fatal(reason));
    }
    // A fatal error while draining (the last fsync failing) is an error exit too.
    if let Err(fatal) = &raft.metrics().borrow().running_state {
        if !matches!(fatal, openraft::error::Fatal::Stopped) {
            return Err(ServerError::Fatal(fatal.to_string()));
        }
    }
    tracing::info!("stopped");
    Ok(())
}
