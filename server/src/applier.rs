//! The write pipeline: one OS thread owns the store's `Writer`, takes proposals from a bounded
//! queue, applies as many as are waiting (up to `APPLY_BATCH_MAX`), makes them durable with one
//! fsync, publishes the new revision, hands the events to the watch hub, and only then answers
//! each proposer. Throughput comes from the batch; no timer ever delays a write.
//!
//! Durability point: a proposal is answered only after `Writer::sync` returned.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etcd_proto::etcdserverpb::{request_op, AlarmType, RequestOp, TxnRequest};
use store::{Applied, Store, WriteRequest, Writer};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::errors::{self, EtcdError};
use crate::lessor::Lessor;
use crate::metrics::Metrics;
use crate::watch_hub::{EventBatch, WatchHub};

/// Proposals waiting to be applied; a full queue makes proposers wait (backpressure).
pub const PROPOSALS_QUEUED_MAX: usize = 8192;
/// Proposals applied between two fsyncs at most.
pub const APPLY_BATCH_MAX: usize = 1024;

enum Command {
    Propose {
        req: WriteRequest,
        reply: oneshot::Sender<Result<Applied, Status>>,
    },
    /// Creates a RocksDB checkpoint of the published state in `dir`.
    Checkpoint {
        dir: PathBuf,
        reply: oneshot::Sender<Result<i64, Status>>,
    },
}

/// A cloneable handle for proposing writes.
#[derive(Clone)]
pub struct Applier {
    tx: mpsc::Sender<Command>,
    nospace: Arc<AtomicBool>,
}

/// Settings the pipeline needs.
pub struct ApplierConfig {
    pub member_id: u64,
    pub quota_backend_bytes: u64,
}

impl Applier {
    /// Starts the apply thread. It runs until every `Applier` handle is dropped.
    pub fn start(
        writer: Writer,
        hub: WatchHub,
        metrics: Arc<Metrics>,
        cfg: ApplierConfig,
        compactor: mpsc::UnboundedSender<i64>,
        lessor: Arc<Lessor>,
    ) -> std::io::Result<(Applier, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let store = writer.store().clone();
        let raised = store
            .alarms()
            .map(|a| a.iter().any(|&(_, t)| t == AlarmType::Nospace as i32))
            .unwrap_or(false);
        let nospace = Arc::new(AtomicBool::new(raised));
        let mut pipeline = Pipeline {
            writer,
            hub,
            metrics,
            cfg,
            compactor,
            lessor,
            nospace: nospace.clone(),
            quota_checked: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("cairn-apply".into())
            .spawn(move || pipeline.run(rx))?;
        Ok((Applier { tx, nospace }, handle))
    }

    /// Proposes a write and waits until it is durable and visible.
    pub async fn propose(&self, req: WriteRequest) -> Result<Applied, Status> {
        if self.nospace.load(Ordering::Acquire) && needs_space(&req) {
            return Err(EtcdError::NoSpace.into());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Propose { req, reply })
            .await
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        rx.await.map_err(|_| Status::from(EtcdError::Stopped))?
    }

    /// Checkpoints the published state into `dir` (which must not exist) at a quiescent point
    /// between batches; returns the revision it holds.
    pub async fn checkpoint(&self, dir: PathBuf) -> Result<i64, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Checkpoint { dir, reply })
            .await
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        rx.await.map_err(|_| Status::from(EtcdError::Stopped))?
    }

    /// Whether the NOSPACE alarm is raised.
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }
}

/// Whether a request needs backend space (etcd rejects these while NOSPACE is raised).
fn needs_space(req: &WriteRequest) -> bool {
    match req {
        WriteRequest::Put(_) | WriteRequest::LeaseGrant { .. } => true,
        WriteRequest::Txn(t) => txn_has_put(t),
        _ => false,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    let any = |ops: &[RequestOp]| {
        ops.iter().any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
    };
    any(&t.success) || any(&t.failure)
}

struct Pipeline {
    writer: Writer,
    hub: WatchHub,
    metrics: Arc<Metrics>,
    cfg: ApplierConfig,
    compactor: mpsc::UnboundedSender<i64>,
    /// Lease deadlines, updated here so grants and revocations reach it in apply order.
    lessor: Arc<Lessor>,
    nospace: Arc<AtomicBool>,
    /// When the backend size was last compared with the quota.
    quota_checked: Instant,
}

/// How often the backend size is compared with the quota (a directory listing).
const QUOTA_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Pipeline {
    /// Runs until every sender is dropped.
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(APPLY_BATCH_MAX);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < APPLY_BATCH_MAX {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
        tracing::info!("apply pipeline stopped");
    }

    fn apply_batch(&mut self, batch: &mut Vec<Command>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut checkpoints = Vec::new();
        // Side effects that must wait until the batch is durable and visible.
        let mut compactions = Vec::new();
        let mut lease_changes: Vec<(i64, Option<i64>)> = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Propose { req, reply } => {
                    let result = if self.nospace.load(Ordering::Acquire) && needs_space(&req) {
                        Err(EtcdError::NoSpace.into())
                    } else {
                        self.writer.apply(&req).map_err(errors::from_store)
                    };
                    match &result {
                        Ok(applied) => {
                            events.extend(applied.events.iter().cloned());
                            match req {
                                WriteRequest::Compact { revision } => compactions.push(revision),
                                WriteRequest::LeaseGrant { id, ttl_secs } => {
                                    lease_changes.push((id, Some(ttl_secs)))
                                }
                                WriteRequest::LeaseRevoke { id } => lease_changes.push((id, None)),
                                WriteRequest::Alarm {
                                    activate, alarm, ..
                                } if alarm == AlarmType::Nospace as i32 => {
                                    self.nospace.store(activate, Ordering::Release);
                                }
                                _ => {}
                            }
                        }
                        Err(_) => self.metrics.proposals_failed.inc(),
                    }
                    replies.push((reply, result));
                }
                Command::Checkpoint { dir, reply } => checkpoints.push((dir, reply)),
            }
        }
        if !replies.is_empty() {
            let started = Instant::now();
            if let Err(e) = self.writer.sync() {
                // The durability point failed and the batch's writes sit unsynced in RocksDB,
                // where a later sync would make them durable after their clients were told
                // they failed. As etcd does on a WAL fsync failure, the node stops; on restart
                // RocksDB's recovery decides what survived, and nothing was acknowledged.
                tracing::error!(error = %e, "fsync failed; stopping the node");
                let status = errors::from_store(e);
                for (reply, _) in replies {
                    let _ = reply.send(Err(Status::new(status.code(), status.message())));
                }
                std::process::exit(1);
            }
            self.metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            self.writer.publish();
            let now = tokio::time::Instant::now();
            for (id, grant) in lease_changes {
                match grant {
                    Some(ttl_secs) => self.lessor.track(id, ttl_secs, now),
                    None => self.lessor.forget(id),
                }
            }
            // Physical compaction starts only once readers can see the compacted revision.
            for revision in compactions {
                let _ = self.compactor.send(revision);
            }
            self.metrics
                .proposals_committed
                .inc_by(replies.len() as u64);
            if !events.is_empty() {
                self.hub.publish(EventBatch {
                    to_rev: self.writer.revision(),
                    events,
                });
            }
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            self.check_quota();
        }
        for (dir, reply) in checkpoints {
            let _ = reply.send(self.checkpoint(&dir));
        }
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<i64, Status> {
        let store: &Store = self.writer.store();
        store.checkpoint(dir).map_err(errors::from_store)?;
        Ok(self.writer.revision())
    }

    /// Raises NOSPACE once the backend outgrows its quota, as etcd does.
    fn check_quota(&mut self) {
        if self.nospace.load(Ordering::Acquire)
            || self.quota_checked.elapsed() < QUOTA_CHECK_INTERVAL
        {
            return;
        }
        self.quota_checked = Instant::now();
        let size = self.writer.store().size_on_disk();
        if size <= self.cfg.quota_backend_bytes {
            return;
        }
        tracing::warn!(
            size,
            quota = self.cfg.quota_backend_bytes,
            "backend quota exceeded; raising NOSPACE alarm"
        );
        let req = WriteRequest::Alarm {
            activate: true,
            member_id: self.cfg.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        match self.writer.apply(&req).and_then(|_| self.writer.sync()) {
            Ok(()) => {
                self.writer.publish();
                self.nospace.store(true, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "could not raise NOSPACE alarm"),
        }
    }
}
