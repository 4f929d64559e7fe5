//! The write path and the read barrier, over Raft. `propose` hands a write to the batcher,
//! which puts every proposal waiting at that moment into one Raft entry — appended directly on
//! the leader, forwarded to the leader by a follower — while at most `BATCHES_IN_FLIGHT`
//! entries are under way (so the batch grows while the log is busy: one append, one fsync and
//! one replication round for many writes). The proposer then waits until this member has
//! applied its write, so the answer (and a following read on this member) reflects it;
//! `read_index` makes a linearizable read wait until this member has applied everything the
//! leader had committed when the read arrived. Concurrent reads share one confirmation round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use raftlog::state_machine::needs_space;
use raftlog::{ApplyError, Proposal, ProposalBatch, Raft};
use store::{Applied, WriteRequest};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use etcd_proto::cairnraftpb::{MemberAttrs, MemberChangeRequest};

use crate::errors::{self, EtcdError};
use crate::lessor::Lessor;
use crate::peer::PeerClients;

/// How long a proposal waits for a leader to appear.
const NO_LEADER_WAIT: Duration = Duration::from_millis(50);

/// Proposals waiting to be applied on this member, by proposal ID.
#[derive(Default)]
pub struct Waiters {
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Applied, ApplyError>>>>,
}

impl Waiters {
    fn register(&self, id: u64) -> oneshot::Receiver<Result<Applied, ApplyError>> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("waiters lock").insert(id, tx);
        rx
    }

    fn forget(&self, id: u64) {
        self.pending.lock().expect("waiters lock").remove(&id);
    }

    /// Hands an applied proposal's result to its proposer, if it is waiting here.
    pub fn resolve(&self, id: u64, result: Result<Applied, ApplyError>) {
        if let Some(tx) = self.pending.lock().expect("waiters lock").remove(&id) {
            let _ = tx.send(result);
        }
    }
}

/// A cloneable handle on the write path and the read barrier.
#[derive(Clone)]
pub struct Applier {
    raft: Raft,
    member_id: u64,
    waiters: Arc<Waiters>,
    next_id: Arc<AtomicU64>,
    peers: PeerClients,
    reads: mpsc::UnboundedSender<oneshot::Sender<Result<(), Status>>>,
    batcher: mpsc::UnboundedSender<Pending>,
    nospace: Arc<AtomicBool>,
    request_timeout: Duration,
    /// How long a proposer whose batch went to a replaced leader waits for it to commit
    /// anyway (one election timeout).
    leader_change_grace: Duration,
}

impl Applier {
    pub fn new(
        raft: Raft,
        member_id: u64,
        waiters: Arc<Waiters>,
        peers: PeerClients,
        nospace: Arc<AtomicBool>,
        election_timeout: Duration,
    ) -> Applier {
        // etcd's request ID scheme: the member's low 16 bits, then time, then a counter, so IDs
        // from different members and from this member's previous runs do not collide.
        let millis = raftlog::determinism::wall_clock()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let first = ((member_id & 0xffff) << 48) | ((millis << 8) & 0xffff_ffff_ffff);
        let (reads, rx) = mpsc::unbounded_channel();
        let (batcher, pending) = mpsc::unbounded_channel();
        let applier = Applier {
            batcher,
            raft,
            member_id,
            waiters,
            next_id: Arc::new(AtomicU64::new(first)),
            peers,
            reads,
            nospace,
            request_timeout: request_timeout(election_timeout),
            leader_change_grace: election_timeout,
        };
        tokio::spawn(read_rounds(applier.clone(), rx));
        tokio::spawn(batch_rounds(applier.clone(), pending));
        applier
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The current leader, if one is known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.member_id)
    }

    /// Proposes a write and waits until this member has applied it.
    pub async fn propose(&self, req: WriteRequest) -> Result<Applied, Status> {
        if self.nospace() && needs_space(&req) {
            return Err(EtcdError::NoSpace.into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rx = self.waiters.register(id);
        // However this ends — answered, failed, timed out, or the caller gone (the gRPC
        // handler dropped) — the waiter does not outlive it.
        let _forget = ForgetOnDrop {
            waiters: &self.waiters,
            id,
        };
        let proposal = Proposal {
            id,
            req: req.unshared(),
        };
        let outcome = tokio::time::timeout(self.request_timeout, async {
            let mut appended = self.submit(proposal)?;
            let mut rx = rx;
            // Usually the applied result comes first: waiting on both lets the proposer wake
            // straight from the apply, not after the batch's own acknowledgement.
            tokio::select! {
                biased;
                applied = &mut rx => return applied_result(applied),
                append = &mut appended => match append {
                    Ok(Ok(())) => {}
                    // The batch went to a leader that lost its place. If a quorum had it, the
                    // new leader commits it with its first entry, within about an election
                    // timeout: the proposer waits that long for it before reporting etcd's
                    // "leader changed" (its write's fate then unknown).
                    Ok(Err(status)) if is_leader_changed(&status) => {
                        return match tokio::time::timeout(self.leader_change_grace, &mut rx).await {
                            Ok(applied) => applied_result(applied),
                            Err(_) => Err(status),
                        };
                    }
                    Ok(Err(status)) => return Err(status),
                    Err(_) => return Err(EtcdError::Stopped.into()),
                },
            }
            applied_result(rx.await)
        })
        .await;
        outcome.unwrap_or_else(|_| Err(EtcdError::Timeout.into()))
    }

    /// Hands the proposal to the batcher; the receiver says whether its batch was appended.
    fn submit(&self, proposal: Proposal) -> Result<oneshot::Receiver<Result<(), Status>>, Status> {
        let (done, rx) = oneshot::channel();
        self.batcher
            .send(Pending { proposal, done })
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(rx)
    }

    /// Gets one batch appended: locally on the leader, else by the leader; gives up after the
    /// request timeout (the outcome is then unknown, as etcd's "request timed out" says).
    async fn deliver(&self, batch: ProposalBatch) -> Result<(), Status> {
        match tokio::time::timeout(self.request_timeout, self.deliver_once(batch)).await {
            Ok(result) => result,
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// Retries only on a peer's refusal before it submitted anything (not the leader): a batch
    /// that may have been appended is never sent again, or it could be applied twice.
    async fn deliver_once(&self, batch: ProposalBatch) -> Result<(), Status> {
        loop {
            match self.leader() {
                None => tokio::time::sleep(NO_LEADER_WAIT).await,
                Some(leader) if leader == self.member_id => {
                    return append_on_leader(&self.raft, batch).await;
                }
                Some(leader) => {
                    // If leadership moves while the leader we sent to is silent (paused,
                    // partitioned), stop waiting for it: the batch's fate is unknown, which
                    // etcd reports as "leader changed", and its slot is freed for new batches.
                    let forward = self.peers.propose(leader, batch.to_internal());
                    let outcome = tokio::select! {
                        biased;
                        r = forward => r,
                        () = self.leader_moves_from(leader) => {
                            return Err(EtcdError::LeaderChanged.into());
                        }
                    };
                    match outcome {
                        Ok(()) => return Ok(()),
                        Err(e) if crate::peer::is_not_leader(&e) => {
                            tokio::time::sleep(NO_LEADER_WAIT).await
                        }
                        Err(e) => return Err(etcd_status(e)),
                    }
                }
            }
        }
    }

    /// Resolves once this member knows of a leader other than `leader`.
    async fn leader_moves_from(&self, leader: u64) {
        let mut metrics = self.raft.metrics();
        loop {
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some_and(|l| l != leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits until this member may serve a linearizable read (etcd's ReadIndex).
    pub async fn read_index(&self) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(tx)
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EtcdError::Stopped.into()),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// One confirmation round: the index the leader had committed, then this member's apply
    /// catching up to it.
    async fn read_barrier(&self) -> Result<(), Status> {
        loop {
            match self.leader() {
                None => tokio::time::sleep(NO_LEADER_WAIT).await,
                Some(leader) if leader == self.member_id => {
                    return match self.raft.ensure_linearizable().await {
                        Ok(_) => Ok(()),
                        Err(RaftError::APIError(_)) => Err(EtcdError::LeaderChanged.into()),
                        Err(_) => Err(EtcdError::Stopped.into()),
                    };
                }
                Some(leader) => {
                    let index = match self.peers.read_index(leader).await {
                        Ok(i) => i,
                        Err(e) if crate::peer::is_not_leader(&e) => {
                            tokio::time::sleep(NO_LEADER_WAIT).await;
                            continue;
                        }
                        Err(e) => return Err(etcd_status(e)),
                    };
                    return self
                        .raft
                        .wait(Some(self.request_timeout))
                        .applied_index_at_least(Some(index), "read index")
                        .await
                        .map(|_| ())
                        .map_err(|_| EtcdError::Timeout.into());
                }
            }
        }
    }

    /// Renews a lease where lease deadlines count — on the leader — and returns its TTL
    /// (0 if it is unknown or expired, as etcd answers). A lease the leader does not know may
    /// be granted in an entry it has committed but not applied yet (a new leader): it waits
    /// until it has applied what it committed, as etcd's leader does, and looks again.
    pub async fn lease_keep_alive(&self, lessor: &Lessor, id: i64) -> Result<i64, Status> {
        self.on_leader(
            || async {
                if let Some(ttl) = lessor.keep_alive(id) {
                    return Ok(ttl);
                }
                self.read_index().await?;
                Ok(lessor.keep_alive(id).unwrap_or(0))
            },
            |leader| self.peers.lease_keep_alive(leader, id),
        )
        .await
    }

    /// A lease's (remaining, granted) TTL as the leader sees it once it has applied what it
    /// committed (as etcd's leader waits); `None` if it does not exist.
    pub async fn lease_time_to_live(
        &self,
        lessor: &Lessor,
        id: i64,
    ) -> Result<Option<(i64, i64)>, Status> {
        self.on_leader(
            || async {
                self.read_index().await?;
                Ok(lessor.remaining(id, tokio::time::Instant::now()))
            },
            |leader| self.peers.lease_time_to_live(leader, id),
        )
        .await
    }

    /// Makes a membership change on the leader; returns the member added, if any.
    pub async fn change_member(
        &self,
        req: MemberChangeRequest,
    ) -> Result<Option<MemberAttrs>, Status> {
        self.on_leader(
            || crate::membership::change(&self.raft, req.clone()),
            |leader| self.peers.change_member(leader, req.clone()),
        )
        .await
    }

    /// Runs `local` if this member leads, else asks the leader with `remote`; waits for a
    /// leader and retries while leadership moves, up to the request timeout.
    pub async fn on_leader<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<T, Status>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, Status>>,
        R: Fn(u64) -> RF,
        RF: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let attempt = async {
                match self.leader() {
                    Some(leader) if leader == self.member_id => local().await,
                    Some(leader) => remote(leader).await,
                    None => Err(Status::failed_precondition(crate::peer::NOT_LEADER)),
                }
            };
            // A change that cannot commit (no quorum) ends with etcd's timeout, not a hang.
            let Ok(result) = tokio::time::timeout_at(deadline, attempt).await else {
                return Err(EtcdError::Timeout.into());
            };
            match result {
                Err(e) if crate::peer::is_not_leader(&e) => {}
                Err(e) => return Err(etcd_status(e)),
                ok => return ok,
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdError::NoLeader.into());
            }
            tokio::time::sleep(NO_LEADER_WAIT).await;
        }
    }

    pub fn peers(&self) -> &PeerClients {
        &self.peers
    }

    /// Whether the NOSPACE alarm is raised (as last applied).
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }
}

/// etcd's request timeout: 5 s plus two election timeouts.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

/// Removes a proposal's waiter when its proposer stops waiting (a no-op once resolved).
struct ForgetOnDrop<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.waiters.forget(self.id);
    }
}

fn is_leader_changed(status: &Status) -> bool {
    status.message() == Status::from(EtcdError::LeaderChanged).message()
}

/// A proposal's outcome as its waiter delivered it.
fn applied_result(
    r: Result<Result<Applied, ApplyError>, oneshot::error::RecvError>,
) -> Result<Applied, Status> {
    match r {
        Ok(result) => result.map_err(errors::from_apply),
        Err(_) => Err(EtcdError::Stopped.into()),
    }
}

/// Appends a batch on this member, which believes it leads. If openraft answers that another
/// member leads, the entry may still have been appended (and later be committed), so the
/// batch is not retried: the proposers get etcd's "leader changed".
pub async fn append_on_leader(raft: &Raft, batch: ProposalBatch) -> Result<(), Status> {
    match raft.client_write(batch).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(EtcdError::LeaderChanged.into())
        }
        Err(e) => {
            tracing::warn!(error = %e, "proposal failed");
            Err(EtcdError::Stopped.into())
        }
    }
}

/// A peer's answer as a client should see it: etcd's own statuses pass, transport failures
/// become etcd's "request timed out" (the outcome is unknown).
pub fn etcd_status(s: Status) -> Status {
    if s.message().starts_with("etcdserver: ") {
        return s;
    }
    tracing::debug!(error = %s, "peer request failed");
    EtcdError::Timeout.into()
}

/// A proposal waiting to be put in a batch, and who to tell once the batch is appended.
pub struct Pending {
    proposal: Proposal,
    done: oneshot::Sender<Result<(), Status>>,
}

/// Entries (batches) under way at once: one being made durable and replicated while the next
/// one fills.
const BATCHES_IN_FLIGHT: usize = 2;
/// Proposals in one entry at most.
const BATCH_PROPOSALS_MAX: usize = 1024;
/// Request bytes in one entry at most (a batch of big values stays a reasonable message).
const BATCH_BYTES_MAX: usize = 4 << 20;

fn approx_size(req: &WriteRequest) -> usize {
    use prost::Message;
    match req {
        WriteRequest::Put(p) => p.key.len() + p.value.len() + 16,
        WriteRequest::DeleteRange(d) => d.key.len() + d.range_end.len() + 16,
        WriteRequest::Txn(t) => t.encoded_len(),
        _ => 32,
    }
}

/// Takes proposals as they come and delivers them in batches (see the module comment).
async fn batch_rounds(applier: Applier, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: what arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = approx_size(&first.proposal.req);
        let mut waiting = vec![first];
        while waiting.len() < BATCH_PROPOSALS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += approx_size(&p.proposal.req);
                    waiting.push(p);
                }
                Err(_) => break,
            }
        }
        let applier = applier.clone();
        tokio::spawn(async move {
            let (proposals, dones): (Vec<Proposal>, Vec<_>) =
                waiting.into_iter().map(|p| (p.proposal, p.done)).unzip();
            let result = applier.deliver(ProposalBatch(proposals)).await;
            drop(slot);
            for done in dones {
                let _ = done.send(match &result {
                    Ok(()) => Ok(()),
                    Err(s) => Err(Status::new(s.code(), s.message())),
                });
            }
        });
    }
}

/// Serves read-index requests in rounds: every request that arrived before a round starts
/// shares its result, so a burst of reads costs one quorum confirmation.
async fn read_rounds(
    applier: Applier,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), Status>>>,
) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = applier.read_barrier().await;
        for tx in waiting.drain(..) {
            let _ = tx.send(match &result {
                Ok(()) => Ok(()),
                Err(s) => Err(Status::new(s.code(), s.message())),
            });
        }
    }
}
