//! Membership changes during faults: the admin client adds a member (whose host the driver
//! starts with `--initial-cluster-state existing`) and removes another, through etcd's Cluster
//! API, retrying through any member for a while as an operator would.

use std::time::Duration;

use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::{MemberAddRequest, MemberListRequest, MemberRemoveRequest};

use crate::net::client_channel;
use crate::workload::{now, Shared};

/// A membership change to make.
#[derive(Debug, Clone)]
pub enum Change {
    Add(String),
    Remove(String),
}

/// How long a change is retried before it is given up.
const RETRY_FOR: Duration = Duration::from_secs(10);
const OP_TIMEOUT: Duration = Duration::from_secs(1);

fn peer_url(name: &str) -> String {
    format!("http://{name}:2380")
}

/// Makes the changes the driver queues, in order, until the run is done.
pub async fn admin(shared: std::rc::Rc<Shared>) -> turmoil::Result {
    while !shared.done.get() {
        // Left queued while it is being made: the final check waits for an empty queue.
        let next = shared.changes.borrow().front().cloned();
        match next {
            Some(change) => {
                let outcome = make(&change, &shared).await;
                shared.changes.borrow_mut().pop_front();
                shared
                    .change_log
                    .borrow_mut()
                    .push(format!("{change:?}: {outcome}"));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(())
}

async fn make(change: &Change, shared: &Shared) -> String {
    let give_up = now() + RETRY_FOR;
    let mut last = String::new();
    while now() < give_up {
        let members = shared.members.borrow().clone();
        for m in &members {
            let mut cluster = ClusterClient::new(client_channel(m));
            let done = match change {
                Change::Add(name) => {
                    let add = cluster.member_add(MemberAddRequest {
                        peer_ur_ls: vec![peer_url(name)],
                        is_learner: false,
                    });
                    let added = match tokio::time::timeout(OP_TIMEOUT, add).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(s)) => Err(s.message().to_string()),
                        Err(_) => Err("timed out".to_string()),
                    };
                    // An earlier attempt that timed out may have taken effect.
                    let added = match added {
                        Err(_) if listed(&mut cluster, name).await == Some(true) => Ok(()),
                        other => other,
                    };
                    if added.is_ok() {
                        shared.members.borrow_mut().push(name.clone());
                    }
                    added
                }
                Change::Remove(name) => remove(&mut cluster, name, shared).await,
            };
            match done {
                Ok(()) => return "done".into(),
                Err(e) => last = format!("{m}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    format!("given up ({last})")
}

/// Whether a member with `name`'s peer URL is in the membership (`None`: could not tell).
async fn listed(
    cluster: &mut ClusterClient<tonic::transport::Channel>,
    name: &str,
) -> Option<bool> {
    let list = cluster.member_list(MemberListRequest { linearizable: true });
    match tokio::time::timeout(OP_TIMEOUT, list).await {
        Ok(Ok(l)) => Some(
            l.into_inner()
                .members
                .iter()
                .any(|m| m.peer_ur_ls.contains(&peer_url(name))),
        ),
        _ => None,
    }
}

async fn remove(
    cluster: &mut ClusterClient<tonic::transport::Channel>,
    name: &str,
    shared: &Shared,
) -> Result<(), String> {
    let list = cluster.member_list(MemberListRequest { linearizable: true });
    let list = match tokio::time::timeout(OP_TIMEOUT, list).await {
        Ok(Ok(l)) => l.into_inner(),
        Ok(Err(s)) => return Err(s.message().to_string()),
        Err(_) => return Err("listing timed out".into()),
    };
    let Some(id) = list
        .members
        .iter()
        .find(|m| m.peer_ur_ls.contains(&peer_url(name)))
        .map(|m| m.id)
    else {
        // Already gone (an earlier attempt took effect).
        shared.members.borrow_mut().retain(|m| m != name);
        return Ok(());
    };
    let removed = cluster.member_remove(MemberRemoveRequest { id });
    match tokio::time::timeout(OP_TIMEOUT, removed).await {
        Ok(Ok(_)) => {
            shared.members.borrow_mut().retain(|m| m != name);
            Ok(())
        }
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("timed out".into()),
    }
}
