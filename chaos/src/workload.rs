//! The simulated clients, each a turmoil client host speaking etcd's gRPC API through tonic:
//! register clients (linearizable get, put and compare-and-set by txn on a few keys, recorded in
//! the history), a monitor that follows who leads, and the final checker that waits for the
//! members to converge and compares their HashKV at one revision.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, HashKvRequest, PutRequest, RangeRequest, RequestOp, StatusRequest,
    TxnRequest,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::history::{History, Input, Op, Output, NEVER};
use crate::net::client_channel;

/// How long a client waits for an answer before it counts the operation as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after healing the members have to converge before the run fails.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

/// What the simulated hosts share with the driver (all on one thread).
#[derive(Default)]
pub struct Shared {
    pub history: RefCell<History>,
    /// The leader's host name, as the members last reported it.
    pub leader: RefCell<Option<String>>,
    /// Each member's HashKV (hash, compact revision) at the final revision, or why there is
    /// none.
    pub hashes: RefCell<Vec<(String, Result<(u32, i64), String>)>>,
    pub final_revision: Cell<i64>,
    /// Workload clients still running: the final check starts when none is, so that no
    /// acknowledged write comes after the final revision.
    pub active: Cell<usize>,
    /// Set when the final check is over: the monitor stops.
    pub done: Cell<bool>,
    /// Every value any client sent in a write (only looked up during a run: a hash set's order
    /// would differ between replays).
    pub written: RefCell<HashSet<String>>,
    /// The cluster's members now (membership changes update it).
    pub members: RefCell<Vec<String>>,
    /// Membership changes the driver asked for, not yet made; and what became of each.
    pub changes: RefCell<VecDeque<crate::admin::Change>>,
    pub change_log: RefCell<Vec<String>>,
    /// The list-append transactions.
    pub txns: RefCell<Vec<crate::append::Txn>>,
    /// What the lease clients saw.
    pub leases: RefCell<crate::lease::LeaseLog>,
    /// Every revision the compactor asked to compact to.
    pub compactions: RefCell<Vec<i64>>,
    /// The recorder's events, and the revision after its last one.
    pub recorded: RefCell<Vec<crate::watch_check::Ev>>,
    pub recorded_next: Cell<i64>,
    /// Why the recorder stopped early, if it did.
    pub recorder_failed: RefCell<Option<String>>,
    /// What the watchers received.
    pub watch_logs: RefCell<Vec<crate::watch_check::WatchLog>>,
    /// Every event up to the final revision, read at the end (or why it could not be).
    pub events: RefCell<Option<Result<Vec<crate::watch_check::Ev>, String>>>,
}

impl Shared {
    /// A member to send the next request to: any current one.
    pub fn pick(&self, rng: &mut SmallRng) -> String {
        let members = self.members.borrow();
        members[rng.random_range(0..members.len())].clone()
    }

    /// A workload client is done.
    pub fn finished(&self) {
        self.active.set(self.active.get() - 1);
    }
}

/// Simulated time since the run began.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

pub(crate) async fn sleep_until(at: Duration) {
    let now = now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// A register client: random operations on `keys` keys through random members, from `start`
/// until `until`, each recorded with its outcome.
pub async fn register_client(
    id: usize,
    seed: u64,
    keys: usize,
    (start, until): (Duration, Duration),
    shared: std::rc::Rc<Shared>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    // The last value this client saw per key: what its compare-and-sets expect.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    sleep_until(start).await;
    let mut n = 0;
    while now() < until {
        n += 1;
        let member = shared.pick(&mut rng);
        let key = format!("k{}", rng.random_range(0..keys));
        let value = format!("c{id}.{n}");
        let input = match rng.random_range(0..10) {
            0..=3 => Input::Get,
            4..=7 => Input::Put(value),
            _ => Input::Cas {
                from: seen.get(&key).cloned().unwrap_or_default(),
                to: value,
            },
        };
        if let Input::Put(v) | Input::Cas { to: v, .. } = &input {
            shared.written.borrow_mut().insert(v.clone());
        }
        let channel = channels
            .entry(member.clone())
            .or_insert_with(|| client_channel(&member))
            .clone();
        let call = shared.history.borrow_mut().tick();
        let answer = tokio::time::timeout(OP_TIMEOUT, execute(channel, &key, &input)).await;
        let ret = shared.history.borrow_mut().tick();
        let (ret, output) = match answer {
            Ok(Ok(output)) => (ret, output),
            failed => {
                if !matches!(failed, Ok(Err(ref s)) if s.code() != tonic::Code::Unavailable) {
                    // A timeout or a broken connection: dial again next time.
                    channels.remove(&member);
                }
                if input == Input::Get {
                    // A failed read changed nothing.
                    continue;
                }
                (NEVER, Output::Unknown)
            }
        };
        match (&input, &output) {
            (_, Output::Get(Some(v))) => {
                seen.insert(key.clone(), v.clone());
            }
            (Input::Put(v), Output::Put) | (Input::Cas { to: v, .. }, Output::Cas(true)) => {
                seen.insert(key.clone(), v.clone());
            }
            _ => {}
        }
        shared.history.borrow_mut().ops.push(Op {
            client: id,
            member,
            key,
            call,
            ret,
            input,
            output,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
    }
    shared.finished();
    Ok(())
}

async fn execute(channel: Channel, key: &str, input: &Input) -> Result<Output, tonic::Status> {
    let mut kv = KvClient::new(channel);
    let key = key.as_bytes().to_vec();
    match input {
        Input::Get => {
            let resp = kv
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let value = resp
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            Ok(Output::Get(value))
        }
        Input::Put(v) => {
            kv.put(PutRequest {
                key: key.into(),
                value: v.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .await?;
            Ok(Output::Put)
        }
        Input::Cas { from, to } => {
            let resp = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key.clone(),
                        target_union: Some(TargetUnion::Value(from.as_bytes().to_vec())),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key.into(),
                            value: to.as_bytes().to_vec().into(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })
                .await?
                .into_inner();
            Ok(Output::Cas(resp.succeeded))
        }
    }
}

/// Compacts the keyspace now and then, as kube-apiserver does, to a revision 30 behind what
/// the recorder has received; watchers that ask for compacted revisions are canceled.
pub async fn compactor(
    seed: u64,
    (start, until): (Duration, Duration),
    shared: std::rc::Rc<Shared>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x434f_4d50_4143_5400);
    sleep_until(start).await;
    let mut last = 0;
    while now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let target = shared.recorded_next.get() - 30;
        if target <= last + 10 {
            continue;
        }
        shared.compactions.borrow_mut().push(target);
        let mut kv = KvClient::new(client_channel(&shared.pick(&mut rng)));
        let compact = kv.compact(CompactionRequest {
            revision: target,
            physical: false,
        });
        if let Ok(Ok(_)) = tokio::time::timeout(OP_TIMEOUT, compact).await {
            last = target;
        }
    }
    shared.finished();
    Ok(())
}

/// Follows leadership: asks every member's Status (a local answer) every 100 ms and records
/// the leader a member names, until the run is done.
pub async fn monitor(shared: std::rc::Rc<Shared>) -> turmoil::Result {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    while !shared.done.get() {
        let members = shared.members.borrow().clone();
        for m in &members {
            let ch = channels
                .entry(m.clone())
                .or_insert_with(|| client_channel(m))
                .clone();
            let status = tokio::time::timeout(
                Duration::from_millis(200),
                MaintenanceClient::new(ch).status(StatusRequest {}),
            )
            .await;
            let Ok(Ok(status)) = status else {
                channels.remove(m);
                continue;
            };
            let status = status.into_inner();
            if let Some(h) = &status.header {
                names.insert(h.member_id, m.clone());
            }
            if let Some(leader) = names.get(&status.leader) {
                *shared.leader.borrow_mut() = Some(leader.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// After `healed`: writes a sentinel through any member, waits until every member has applied
/// it, and records every member's HashKV at its revision.
pub async fn final_check(healed: Duration, shared: std::rc::Rc<Shared>) -> turmoil::Result {
    sleep_until(healed).await;
    while shared.active.get() > 0 || !shared.changes.borrow().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let members = shared.members.borrow().clone();
    shared.written.borrow_mut().insert("end".into());
    let deadline = healed + CONVERGE_WITHIN;
    let mut revision = None;
    'write: while now() < deadline {
        for m in &members {
            let mut kv = KvClient::new(client_channel(m));
            let put = kv.put(PutRequest {
                key: b"sentinel".to_vec().into(),
                value: b"end".to_vec().into(),
                ..Default::default()
            });
            if let Ok(Ok(resp)) = tokio::time::timeout(OP_TIMEOUT, put).await {
                revision = resp.into_inner().header.map(|h| h.revision);
                break 'write;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut hashes = Vec::new();
    match revision {
        None => hashes.push((
            "cluster".to_string(),
            Err(format!(
                "no member accepted a write within {CONVERGE_WITHIN:?} of healing"
            )),
        )),
        Some(rev) => {
            shared.final_revision.set(rev);
            // HashKV covers (compacted, rev] as each member has compacted so far; a compaction
            // still being applied somewhere changes that range, so — as etcd's corruption
            // check does — hashes are compared only once every member reports the same
            // compact revision.
            loop {
                hashes.clear();
                for m in &members {
                    // Each member gets time of its own: one that is stuck must not leave the
                    // others unasked.
                    let own = deadline.max(now() + Duration::from_secs(10));
                    hashes.push((m.clone(), hash_at(m, rev, own).await));
                }
                let mut compacted = hashes.iter().map(|(_, h)| h.as_ref().map(|h| h.1));
                let first = compacted.next();
                if now() >= deadline || compacted.all(|c| Some(c) == first) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let agreed = hashes
                .iter()
                .find(|(_, h)| h.is_ok())
                .map(|(m, _)| m.clone());
            let events = match agreed {
                Some(m) => crate::watcher::full_history(&m, rev, &shared).await,
                None => Err("no member answered HashKV".to_string()),
            };
            *shared.events.borrow_mut() = Some(events);
        }
    }
    *shared.hashes.borrow_mut() = hashes;
    shared.done.set(true);
    Ok(())
}

/// `member`'s HashKV at `rev`, once it has applied `rev`.
async fn hash_at(member: &str, rev: i64, deadline: Duration) -> Result<(u32, i64), String> {
    let mut last = String::from("never answered");
    while now() < deadline {
        let ch = client_channel(member);
        let mut kv = KvClient::new(ch.clone());
        let applied = kv.range(RangeRequest {
            key: b"sentinel".to_vec(),
            serializable: true,
            ..Default::default()
        });
        match tokio::time::timeout(OP_TIMEOUT, applied).await {
            Ok(Ok(r))
                if r.get_ref()
                    .header
                    .as_ref()
                    .is_some_and(|h| h.revision >= rev) =>
            {
                let mut maintenance = MaintenanceClient::new(ch);
                let hash = maintenance.hash_kv(HashKvRequest { revision: rev });
                match tokio::time::timeout(OP_TIMEOUT, hash).await {
                    Ok(Ok(h)) => {
                        let h = h.into_inner();
                        return Ok((h.hash, h.compact_revision));
                    }
                    Ok(Err(s)) => last = s.message().to_string(),
                    Err(_) => last = "HashKV timed out".into(),
                }
            }
            Ok(Ok(r)) => {
                last = format!(
                    "at revision {} of {rev}",
                    r.get_ref().header.as_ref().map_or(0, |h| h.revision)
                )
            }
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = "read timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What its Raft says, to tell a member cut off from one whose Raft is stuck.
    let mut maintenance = MaintenanceClient::new(client_channel(member));
    let status = match tokio::time::timeout(OP_TIMEOUT, maintenance.status(StatusRequest {})).await
    {
        Ok(Ok(s)) => {
            let s = s.into_inner();
            format!(
                "leader {:x}, term {}, raft index {}, applied {}",
                s.leader, s.raft_term, s.raft_index, s.raft_applied_index
            )
        }
        _ => "no status".to_string(),
    };
    Err(format!("did not reach revision {rev}: {last}; {status}"))
}
