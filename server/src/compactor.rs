//! Physical compaction and auto-compaction. Compactions are applied logically by the pipeline;
//! this task then removes the unreachable history on the blocking pool (inline in a
//! simulation), never in the write path. Auto-compaction proposes compactions as etcd's `--auto-compaction-*` flags describe.

use std::collections::VecDeque;

use store::{Store, WriteRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

use crate::applier::Applier;
use crate::config::AutoCompaction;

/// A handle to wait for physical compaction.
#[derive(Clone)]
pub struct Compactor {
    finished: watch::Receiver<i64>,
}

impl Compactor {
    /// Starts the physical compaction task; it runs until `requests` closes. Finishes any
    /// compaction that a crash interrupted.
    pub fn start(store: Store, mut requests: mpsc::UnboundedReceiver<i64>) -> Compactor {
        let done = store.finished_compaction().unwrap_or(0);
        let (tx, finished) = watch::channel(done);
        let scheduled = store.compacted_revision();
        tokio::spawn(async move {
            let mut next = (scheduled > done).then_some(scheduled);
            loop {
                let rev = match next.take() {
                    Some(r) => r,
                    None => match requests.recv().await {
                        Some(r) => r,
                        None => break,
                    },
                };
                let s = store.clone();
                match raftlog::determinism::blocking(move || s.compact_physical(rev)).await {
                    Ok(Ok(_)) => {
                        let _ = tx.send(rev);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, revision = rev, "physical compaction failed")
                    }
                    Err(e) => tracing::error!(error = %e, "physical compaction task panicked"),
                }
            }
        });
        Compactor { finished }
    }

    /// Waits until physical compaction has finished at `rev` or later.
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.finished.clone();
        let _ = rx.wait_for(|&done| done >= rev).await;
    }
}

/// Proposes compactions per the auto-compaction mode; runs until `shutdown` fires.
pub async fn run_auto(
    mode: AutoCompaction,
    store: Store,
    applier: Applier,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tick, retention) = match &mode {
        AutoCompaction::Off => return,
        // As etcd: sample revisions every tenth of the retention (at most hourly) and compact
        // to the revision seen one retention ago.
        AutoCompaction::Periodic(d) => (
            (*d / 10)
                .min(Duration::from_secs(3600))
                .max(Duration::from_secs(1)),
            *d,
        ),
        // As etcd: every five minutes, keep the newest N revisions.
        AutoCompaction::Revision(_) => (Duration::from_secs(300), Duration::ZERO),
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        let current = store.current_revision();
        let target = match &mode {
            AutoCompaction::Revision(keep) => current - keep,
            AutoCompaction::Periodic(_) => {
                samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) >= retention {
                        target = rev;
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                target
            }
            AutoCompaction::Off => return,
        };
        // As etcd: only the leader compacts (the proposal reaches every member through Raft).
        if target > store.compacted_revision() && applier.is_leader() {
            match applier
                .propose(WriteRequest::Compact { revision: target })
                .await
            {
                Ok(_) => tracing::info!(revision = target, "auto-compaction proposed"),
                Err(e) => tracing::warn!(error = %e, revision = target, "auto-compaction failed"),
            }
        }
    }
}
