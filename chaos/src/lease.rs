//! Lease safety. A lease client grants a short lease, attaches a key to it, sometimes keeps it
//! alive once, then either revokes it or lets it expire (and waits until LeaseTimeToLive says
//! it is gone); then it reads the key back. The check: no key attached to a revoked or expired
//! lease is readable after the revocation — neither by a linearizable read invoked after the
//! client learned the lease was gone, nor in the event history at the revoke's revision.

use std::collections::HashMap;
use std::time::Duration;

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::history::Time;
use crate::net::client_channel;
use crate::watch_check::Ev;
use crate::workload::{now, sleep_until, Shared};

const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// A lease the client saw end.
#[derive(Debug, Clone)]
pub struct Gone {
    pub lease: i64,
    pub key: String,
    /// "revoked" or "expired".
    pub how: &'static str,
    /// When the client learned it (history clock), and the revision of that answer.
    pub at: Time,
    pub revision: i64,
}

/// A linearizable read of a leased key.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: String,
    pub member: String,
    pub call: Time,
    /// The lease of the key read, if it exists.
    pub lease: Option<i64>,
}

/// What the lease clients recorded.
#[derive(Debug, Default)]
pub struct LeaseLog {
    pub gone: Vec<Gone>,
    pub reads: Vec<Read>,
}

/// A lease client, from `start` until `until`.
pub async fn client(
    id: usize,
    seed: u64,
    (start, until): (Duration, Duration),
    shared: std::rc::Rc<Shared>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x4c45_4153_4500_0000 ^ id as u64);
    sleep_until(start).await;
    let mut n = 0;
    while now() < until {
        n += 1;
        let mut pick = || shared.pick(&mut rng);
        let (m1, m2, m3) = (pick(), pick(), pick());
        let ttl = rng.random_range(1..=3);
        let Some(lease) = grant(&m1, ttl).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = format!("lease/{id}.{n}");
        let value = format!("l{id}.{n}");
        shared.written.borrow_mut().insert(value.clone());
        let put = PutRequest {
            key: key.clone().into_bytes().into(),
            value: value.into_bytes().into(),
            lease,
            ..Default::default()
        };
        let mut kv = KvClient::new(client_channel(&m2));
        let _ = tokio::time::timeout(OP_TIMEOUT, kv.put(put)).await;
        if rng.random_bool(0.3) {
            keep_alive(&m2, lease).await;
        }
        let gone = if rng.random_bool(0.5) {
            revoke(&m3, lease, &shared).await
        } else {
            expired(&m3, lease, ttl, until, &shared).await
        };
        let Some((how, at, revision)) = gone else {
            continue;
        };
        shared.leases.borrow_mut().gone.push(Gone {
            lease,
            key: key.clone(),
            how,
            at,
            revision,
        });
        let reader = shared.pick(&mut rng);
        let call = shared.history.borrow_mut().tick();
        let mut kv = KvClient::new(client_channel(&reader));
        let read = kv.range(RangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        });
        if let Ok(Ok(resp)) = tokio::time::timeout(OP_TIMEOUT, read).await {
            let resp = resp.into_inner();
            shared.leases.borrow_mut().reads.push(Read {
                key: format!("lease/{id}.{n}"),
                member: reader,
                call,
                lease: resp.kvs.first().map(|kv| kv.lease),
            });
        }
    }
    shared.finished();
    Ok(())
}

async fn grant(member: &str, ttl: i64) -> Option<i64> {
    let mut lease = LeaseClient::new(client_channel(member));
    let granted = lease.lease_grant(LeaseGrantRequest { ttl, id: 0 });
    match tokio::time::timeout(OP_TIMEOUT, granted).await {
        Ok(Ok(r)) if r.get_ref().error.is_empty() => Some(r.into_inner().id),
        _ => None,
    }
}

/// One keep-alive round trip.
async fn keep_alive(member: &str, id: i64) {
    let mut lease = LeaseClient::new(client_channel(member));
    let requests = futures::stream::iter([LeaseKeepAliveRequest { id }]);
    let round = async {
        let mut answers = lease.lease_keep_alive(requests).await?.into_inner();
        answers.message().await
    };
    let _ = tokio::time::timeout(OP_TIMEOUT, round).await;
}

/// Revokes `id`: when acknowledged, the time and revision.
async fn revoke(member: &str, id: i64, shared: &Shared) -> Option<(&'static str, Time, i64)> {
    let mut lease = LeaseClient::new(client_channel(member));
    let revoked = lease.lease_revoke(LeaseRevokeRequest { id });
    let resp = tokio::time::timeout(OP_TIMEOUT, revoked).await.ok()?.ok()?;
    let at = shared.history.borrow_mut().tick();
    Some(("revoked", at, resp.into_inner().header?.revision))
}

/// Waits out `id`'s TTL, then asks LeaseTimeToLive until it says the lease is gone.
async fn expired(
    member: &str,
    id: i64,
    ttl: i64,
    until: Duration,
    shared: &Shared,
) -> Option<(&'static str, Time, i64)> {
    tokio::time::sleep(Duration::from_secs(ttl as u64)).await;
    let give_up = until + Duration::from_secs(5);
    while now() < give_up {
        let mut lease = LeaseClient::new(client_channel(member));
        let asked = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false });
        if let Ok(Ok(resp)) = tokio::time::timeout(OP_TIMEOUT, asked).await {
            let at = shared.history.borrow_mut().tick();
            let resp = resp.into_inner();
            if resp.ttl == -1 {
                return Some(("expired", at, resp.header?.revision));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// The lease safety violations in `log`, given the event history.
pub fn check(log: &LeaseLog, history: &[Ev]) -> Vec<String> {
    let mut problems = Vec::new();
    for g in &log.gone {
        // Reads invoked after the client learned the lease was gone.
        for r in log.reads.iter().filter(|r| r.key == g.key && r.call > g.at) {
            if r.lease == Some(g.lease) {
                problems.push(format!(
                    "{} is readable through {} with lease {:x} after the lease was {}",
                    r.key, r.member, g.lease, g.how
                ));
            }
        }
        // The key's state in the history at the revoke's revision. (LeaseTimeToLive's header
        // is the answering member's, which may not have applied the revoke yet, so expiries
        // are checked by the reads only.)
        if g.how != "revoked" {
            continue;
        }
        let mut attached: HashMap<&str, i64> = HashMap::new();
        for e in history.iter().take_while(|e| e.mod_rev <= g.revision) {
            if e.delete {
                attached.remove(e.key.as_str());
            } else {
                attached.insert(&e.key, e.lease);
            }
        }
        if attached.get(g.key.as_str()) == Some(&g.lease) {
            let events: Vec<String> = history
                .iter()
                .filter(|e| e.key == g.key)
                .map(|e| e.to_string())
                .collect();
            problems.push(format!(
                "{} is still attached to lease {:x} at revision {}, when the lease was {}; its \
                 events: {}",
                g.key,
                g.lease,
                g.revision,
                g.how,
                events.join("; ")
            ));
        }
    }
    problems
}
