//! Cluster membership as etcd presents it, over openraft's membership config: listing members
//! and the changes etcd's Cluster service makes (add as voter or learner, remove, update peer
//! URLs, promote a caught-up learner), plus a member publishing its name and client URLs once
//! it has started (etcd's `publish`). Changes run on the leader; the checks and error strings
//! are etcd's.

use std::collections::{BTreeMap, BTreeSet};

use etcd_proto::cairnraftpb::{member_change_request::Kind, MemberAttrs, MemberChangeRequest};
use etcd_proto::etcdserverpb::Member as EtcdMember;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use raftlog::{Member, Raft};
use tonic::Status;

use crate::errors::EtcdError;

/// etcd allows one learner at a time.
const LEARNERS_MAX: usize = 1;
/// A learner may be promoted once it has this share of the leader's log (etcd's readyPercent).
const LEARNER_READY_SHARE: f64 = 0.9;

/// Every member of the effective membership config (the newest, perhaps not yet committed),
/// voters and learners, in ID order: what the leader checks changes against.
pub fn members(raft: &Raft) -> Vec<MemberAttrs> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    members_of(m.membership_config.membership())
}

/// Every member of the membership this member has applied, as MemberList reports it.
pub fn applied_members(store: &store::Store) -> Vec<MemberAttrs> {
    members_of(raftlog::state_machine::applied_membership(store).membership())
}

fn members_of(membership: &raftlog::types::Membership) -> Vec<MemberAttrs> {
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    membership
        .nodes()
        .map(|(&id, node)| MemberAttrs {
            id,
            name: node.name.clone(),
            peer_urls: node.peer_urls.clone(),
            client_urls: node.client_urls.clone(),
            is_learner: learners.contains(&id),
        })
        .collect()
}

pub fn to_etcd(m: &MemberAttrs) -> EtcdMember {
    EtcdMember {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

fn node_of(m: &MemberAttrs) -> Member {
    Member {
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
    }
}

/// etcd's ID for a member added at run time: SHA-1 over its sorted peer URLs and the time.
fn new_member_id(peer_urls: &[String]) -> u64 {
    let secs = raftlog::determinism::wall_clock()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut urls = peer_urls.to_vec();
    urls.push(secs.to_string());
    crate::member::member_id(&urls, "")
}

fn valid_url(u: &str) -> bool {
    u.strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .and_then(|hp| hp.trim_end_matches('/').rsplit_once(':'))
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A change of the voters, for etcd's strict reconfiguration check.
enum Reconfig {
    Add,
    Remove(u64),
    Promote,
}

/// etcd's strict reconfiguration check (on by default): after the change, the voters that
/// have started (published their name) must still be a quorum of the voters.
fn ready(current: &[MemberAttrs], change: Reconfig) -> bool {
    let voters = current.iter().filter(|m| !m.is_learner);
    let (mut members, mut started) = match change {
        Reconfig::Add => (1, 0),
        Reconfig::Promote => (1, 1),
        Reconfig::Remove(_) => (0, 0),
    };
    for m in voters {
        if matches!(change, Reconfig::Remove(id) if id == m.id) {
            continue;
        }
        members += 1;
        if !m.name.is_empty() {
            started += 1;
        }
    }
    started > members / 2
}

fn not_enough_started() -> Status {
    Status::failed_precondition(
        "etcdserver: re-configuration failed due to not enough started members",
    )
}

/// etcd's checks of a member's new peer URLs: well-formed, and not already another member's.
fn check_peer_urls(
    current: &[MemberAttrs],
    member: Option<u64>,
    urls: &[String],
) -> Result<(), Status> {
    if urls.is_empty() || !urls.iter().all(|u| valid_url(u)) {
        return Err(status(
            tonic::Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ));
    }
    let taken = current
        .iter()
        .filter(|m| Some(m.id) != member)
        .flat_map(|m| m.peer_urls.iter())
        .any(|u| urls.contains(u));
    if taken {
        return Err(status(
            tonic::Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ));
    }
    Ok(())
}

fn change_err(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::failed_precondition(crate::peer::NOT_LEADER)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => Status::failed_precondition(
            "etcdserver: another membership change is in progress; retry",
        ),
        RaftError::APIError(e) => Status::failed_precondition(format!("etcdserver: {e}")),
        RaftError::Fatal(_) => EtcdError::Stopped.into(),
    }
}

fn status(code: tonic::Code, msg: &str) -> Status {
    Status::new(code, msg)
}

/// Makes a membership change; call on the leader. Returns the added member (for ADD).
pub async fn change(raft: &Raft, req: MemberChangeRequest) -> Result<Option<MemberAttrs>, Status> {
    use tonic::Code::FailedPrecondition;
    // A leader whose own removal is under way keeps openraft's leader state until it stops,
    // though it is no longer a voter; a change there trips openraft's assertions. It answers
    // as a non-leader, and the caller retries on the next leader.
    let leads = {
        let m = raft.metrics();
        let m = m.borrow();
        m.state == openraft::ServerState::Leader
            && m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id)
    };
    if !leads {
        return Err(Status::failed_precondition(crate::peer::NOT_LEADER));
    }
    let current = members(raft);
    let target = req.member.unwrap_or_default();
    let find = |id: u64| current.iter().find(|m| m.id == id).cloned();
    let kind = Kind::try_from(req.kind).map_err(|_| Status::invalid_argument("unknown change"))?;
    let changes: ChangeMembers<u64, Member> = match kind {
        Kind::Add => {
            check_peer_urls(&current, None, &target.peer_urls)?;
            if req.is_learner && current.iter().filter(|m| m.is_learner).count() >= LEARNERS_MAX {
                return Err(status(
                    FailedPrecondition,
                    "etcdserver: too many learner members in cluster",
                ));
            }
            if !req.is_learner && !ready(&current, Reconfig::Add) {
                return Err(not_enough_started());
            }
            let id = new_member_id(&target.peer_urls);
            if find(id).is_some() {
                return Err(status(
                    FailedPrecondition,
                    "etcdserver: member ID already exist",
                ));
            }
            let added = MemberAttrs {
                id,
                name: String::new(),
                peer_urls: target.peer_urls.clone(),
                client_urls: Vec::new(),
                is_learner: req.is_learner,
            };
            let node = node_of(&added);
            if req.is_learner {
                raft.add_learner(id, node, false)
                    .await
                    .map_err(change_err)?;
            } else {
                let voters = BTreeMap::from([(id, node)]);
                raft.change_membership(ChangeMembers::AddVoters(voters), false)
                    .await
                    .map_err(change_err)?;
            }
            return Ok(Some(added));
        }
        Kind::Remove => {
            let m = find(target.id).ok_or_else(|| Status::from(EtcdError::MemberNotFound))?;
            if !m.is_learner && !ready(&current, Reconfig::Remove(m.id)) {
                return Err(not_enough_started());
            }
            let ids = BTreeSet::from([m.id]);
            if m.is_learner {
                ChangeMembers::RemoveNodes(ids)
            } else {
                ChangeMembers::RemoveVoters(ids)
            }
        }
        Kind::Update => {
            let mut m = find(target.id).ok_or_else(|| Status::from(EtcdError::MemberNotFound))?;
            check_peer_urls(&current, Some(m.id), &target.peer_urls)?;
            m.peer_urls = target.peer_urls.clone();
            ChangeMembers::SetNodes(BTreeMap::from([(m.id, node_of(&m))]))
        }
        Kind::Promote => {
            let m = find(target.id).ok_or_else(|| Status::from(EtcdError::MemberNotFound))?;
            if !m.is_learner {
                return Err(EtcdError::MemberNotLearner.into());
            }
            if !ready(&current, Reconfig::Promote) {
                return Err(not_enough_started());
            }
            check_learner_ready(raft, m.id)?;
            ChangeMembers::AddVoterIds(BTreeSet::from([m.id]))
        }
        Kind::Publish => {
            let mut m = find(target.id).ok_or_else(|| Status::from(EtcdError::MemberNotFound))?;
            if m.name == target.name && m.client_urls == target.client_urls {
                return Ok(None);
            }
            m.name = target.name.clone();
            m.client_urls = target.client_urls.clone();
            ChangeMembers::SetNodes(BTreeMap::from([(m.id, node_of(&m))]))
        }
    };
    // Removed voters leave the node list too (`retain = false`).
    raft.change_membership(changes, false)
        .await
        .map_err(change_err)?;
    Ok(None)
}

/// etcd's `isLearnerReady`: the learner's matched index is at least 90% of the leader's.
fn check_learner_ready(raft: &Raft, id: u64) -> Result<(), Status> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let Some(replication) = &m.replication else {
        return Err(Status::failed_precondition(crate::peer::NOT_LEADER));
    };
    let leader_match = m.last_log_index.unwrap_or(0);
    let learner_match = replication
        .get(&id)
        .and_then(|l| l.map(|l| l.index))
        .unwrap_or(0);
    if (learner_match as f64) < leader_match as f64 * LEARNER_READY_SHARE {
        return Err(Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        ));
    }
    Ok(())
}
