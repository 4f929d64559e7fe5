//! Leadership transfer (etcd's MoveLeader). openraft 0.9 has no transfer of its own, so the
//! leader does what Raft's TimeoutNow does with the tools it has: it waits until the target
//! has its whole log, stops sending heartbeats so that the followers' leader lease runs out,
//! then tells the target to campaign. The target's election comes a full election timeout
//! before any other follower's would (openraft waits lease + election timeout), and its log
//! is as long as anyone's, so it wins unless the cluster is busy or a member is down — then,
//! as with etcd, the call ends with "leader transfer took too long".

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::errors::EtcdError;
use crate::node::Node;

/// Moves leadership from this member (which must lead) to `target`.
pub async fn move_leader(node: &Node, target: u64) -> Result<(), Status> {
    let raft = node.applier.raft();
    let me = node.member.id;
    if node.applier.leader() != Some(me) {
        return Err(EtcdError::NotLeader.into());
    }
    let voter = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == target);
    if !voter {
        return Err(EtcdError::BadLeaderTransferee.into());
    }
    if target == me {
        return Ok(());
    }
    let election = node.config.election_timeout;
    // openraft's leader lease is the maximum election timeout (twice the flag).
    let lease = election * 2;
    let deadline = Instant::now() + Duration::from_secs(5) + 2 * lease;
    tracing::info!(
        target = format!("{target:x}"),
        "leadership transfer starting"
    );
    // 1. The target must hold the leader's whole log to be electable at once.
    loop {
        let caught_up = {
            let m = raft.metrics().borrow().clone();
            let last = m.last_log_index;
            m.replication
                .as_ref()
                .and_then(|r| r.get(&target).copied())
                .is_some_and(|matched| matched.map(|l| l.index) >= last)
        };
        if caught_up {
            break;
        }
        if Instant::now() >= deadline {
            return Err(EtcdError::LeaderTransferTimeout.into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 2. Let the followers' lease on this leader expire, then 3. hand over.
    raft.runtime_config().heartbeat(false);
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    let asked = node.applier.peers().timeout_now(target).await;
    let result = match asked {
        Err(e) => {
            tracing::warn!(error = %e, "leadership transfer: the target could not be reached");
            Err(EtcdError::LeaderTransferTimeout.into())
        }
        Ok(()) => loop {
            if node.applier.leader() == Some(target) {
                tracing::info!(
                    target = format!("{target:x}"),
                    "leadership transfer finished"
                );
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(EtcdError::LeaderTransferTimeout.into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        },
    };
    raft.runtime_config().heartbeat(true);
    result
}
