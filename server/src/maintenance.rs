//! The Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use store::{WriteRequest, WriteResponse};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::errors;
use crate::node::Node;

/// Bytes per snapshot message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

pub struct MaintenanceService {
    node: Arc<Node>,
    snapshots: AtomicU64,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService {
            node,
            snapshots: AtomicU64::new(0),
        }
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.node.config.data_dir.join("member").join("snap-tmp")
    }
}

/// etcd's text form of an alarm, as Status reports it in `errors`.
pub fn alarm_text(member_id: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map(|a| a.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{member_id} alarm:{name} ")
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => self
                .node
                .store
                .alarms()
                .map_err(errors::from_store)?
                .into_iter()
                .filter(|&(_, t)| r.alarm == AlarmType::None as i32 || t == r.alarm)
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
            Ok(action) => {
                let req = WriteRequest::Alarm {
                    activate: action == AlarmAction::Activate,
                    member_id: r.member_id,
                    alarm: r.alarm,
                };
                match self.node.applier.propose(req).await?.response {
                    WriteResponse::Alarm(changed) => changed,
                    other => {
                        return Err(Status::internal(format!(
                            "unexpected apply result {other:?}"
                        )))
                    }
                }
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.current_header()),
            alarms,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let rev = node.store.current_revision();
        let errors = node
            .store
            .alarms()
            .map_err(errors::from_store)?
            .into_iter()
            .map(|(m, a)| alarm_text(m, a))
            .collect();
        let raft = node.applier.raft().metrics().borrow().clone();
        let is_learner = raft
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == node.member.id);
        Ok(Response::new(StatusResponse {
            header: Some(node.header(rev)),
            version: node.config.reported_etcd_version.clone(),
            db_size: node.store.size_on_disk() as i64,
            leader: raft.current_leader.unwrap_or(0),
            raft_index: raft.last_log_index.unwrap_or(0),
            raft_term: raft.current_term,
            raft_applied_index: raft.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: node.store.size_in_use() as i64,
            is_learner,
            storage_version: String::new(),
            db_size_quota: node.config.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.node.reject_learner()?;
        let store = self.node.store.clone();
        raftlog::determinism::blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_store)?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.node.current_header()),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.node.reject_learner()?;
        let store = self.node.store.clone();
        let rev = store.current_revision();
        let hash = raftlog::determinism::blocking(move || store.hash_all())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_store)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.node.reject_learner()?;
        let rev = request.into_inner().revision;
        let store = self.node.store.clone();
        let current = store.current_revision();
        let (hash, compact_revision, hash_revision) =
            raftlog::determinism::blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(errors::from_store)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.node.reject_learner()?;
        let n = self.snapshots.fetch_add(1, Ordering::Relaxed);
        let base = self.snapshot_dir();
        let checkpoint = base.join(format!("checkpoint-{}-{n}", std::process::id()));
        let archive = base.join(format!("snapshot-{}-{n}.db", std::process::id()));
        std::fs::create_dir_all(&base).map_err(|e| Status::internal(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&checkpoint);
        // A RocksDB checkpoint is consistent by itself; the revision reported is the one
        // published before it was taken (the checkpoint holds at least that).
        let rev = self.node.store.current_revision();
        let (store, cp) = (self.node.store.clone(), checkpoint.clone());
        raftlog::determinism::blocking(move || store.checkpoint(&cp))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_store)?;
        let (cp, ar) = (checkpoint.clone(), archive.clone());
        let packed = raftlog::determinism::blocking(move || {
            let r = store::snapshot::pack(&cp, &ar);
            let _ = std::fs::remove_dir_all(&cp);
            r
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let total = packed.map_err(|e| Status::internal(format!("etcdserver: snapshot: {e}")))?;
        tracing::info!(revision = rev, bytes = total, "sending snapshot");
        let header = self.node.header(rev);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let result = stream_file(&archive, total, header, &tx).await;
            let _ = tokio::fs::remove_file(&archive).await;
            if let Err(e) = result {
                let _ = tx
                    .send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node.reject_learner()?;
        // In a task of its own: a client that gives up must not cut the transfer short with
        // heartbeats still switched off.
        let (node, target) = (self.node.clone(), request.into_inner().target_id);
        tokio::spawn(async move { crate::transfer::move_leader(&node, target).await })
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.node.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(errors::unimplemented("Downgrade"))
    }
}

async fn stream_file(
    path: &std::path::Path,
    total: u64,
    header: etcd_proto::etcdserverpb::ResponseHeader,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> std::io::Result<()> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        sent += n as u64;
        let resp = SnapshotResponse {
            header: Some(header),
            remaining_bytes: total - sent,
            blob: buf,
            version: String::new(),
        };
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
    }
}
