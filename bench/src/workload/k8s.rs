//! `k8s`: traffic shaped like kube-apiserver's use of etcd. Objects live under
//! `/registry/<resource>/<namespace>/<name>`; the mix is optimistic updates (a txn comparing
//! mod_revision, whose failure branch reads the current object), creates (compare
//! create_revision = 0), deletes (compare mod_revision), quorum gets, paginated lists of a
//! resource (limit plus continuation key, pinned to the first page's revision), and Events
//! written with a shared lease that is re-granted every `EVENTS_PER_LEASE` events. One watch
//! with prev_kv per resource prefix runs throughout (the apiserver's watch cache), and the
//! store is compacted periodically to the revision seen one period earlier.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::kv::{current_mod_revision, prefix_end, update_txn};
use crate::driver::{closed_loop, Plan};
use crate::report::Report;

const RESOURCES: [&str; 4] = ["pods", "configmaps", "services", "deployments"];
const NAMESPACES: u64 = 10;
const EVENTS_PER_LEASE: u64 = 1000;
const EVENT_TTL_SECS: i64 = 3600;

/// Operation mix, in parts per 100.
const MIX: [(&str, u32); 6] = [
    ("update", 45),
    ("get", 15),
    ("event", 27),
    ("create", 5),
    ("delete", 5),
    ("list", 3),
];

#[derive(Clone, Debug)]
pub struct K8sSpec {
    /// Long-lived objects (spread over the resources) that updates and gets pick from.
    pub objects: u64,
    pub val_size: usize,
    pub list_limit: i64,
    pub compact_interval: Duration,
}

fn object_key(n: u64) -> Vec<u8> {
    let resource = RESOURCES[(n % RESOURCES.len() as u64) as usize];
    format!("/registry/{resource}/ns-{}/obj-{n:07}", n / 4 % NAMESPACES).into_bytes()
}

fn txn(compare: Compare, success: Request, failure: Option<Request>) -> TxnRequest {
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(success),
        }],
        failure: failure
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
    }
}

fn create_txn(key: Vec<u8>, value: Bytes) -> TxnRequest {
    let cmp = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let get = Request::RequestRange(RangeRequest {
        key: key.clone(),
        ..Default::default()
    });
    txn(
        cmp,
        Request::RequestPut(PutRequest {
            key: key.into(),
            value,
            ..Default::default()
        }),
        Some(get),
    )
}

fn delete_txn(key: Vec<u8>, rev: i64) -> TxnRequest {
    let cmp = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    };
    let del = DeleteRangeRequest {
        key,
        ..Default::default()
    };
    txn(cmp, Request::RequestDeleteRange(del), None)
}

/// Shared state of the run: objects' last known mod_revisions (as the watch cache would
/// know them) and the current Event lease.
struct World {
    revs: Vec<AtomicI64>,
    lease: Mutex<(i64, u64)>,
    conflicts: AtomicU64,
    pages: AtomicU64,
}

/// Creates the long-lived objects (or learns their revisions if an earlier run made them).
async fn populate(kv: &mut KvClient<Channel>, spec: &K8sSpec, world: &World) -> anyhow::Result<()> {
    let value = Bytes::from(vec![b'o'; spec.val_size]);
    for n in 0..spec.objects {
        let resp = kv
            .txn(create_txn(object_key(n), value.clone()))
            .await?
            .into_inner();
        let rev = if resp.succeeded {
            resp.header.map(|h| h.revision).unwrap_or(0)
        } else {
            current_mod_revision(&resp.responses)
        };
        world.revs[n as usize].store(rev, Ordering::Relaxed);
    }
    Ok(())
}

/// The apiserver's watch cache: one watch with prev_kv per resource prefix; counts events.
async fn watch_resources(ch: Channel, events: Arc<AtomicU64>) -> anyhow::Result<()> {
    // Requests are queued first: the stream's response headers come with the first reply.
    let (tx, rx) = mpsc::channel(8);
    for r in RESOURCES.iter().chain(["events"].iter()) {
        let key = format!("/registry/{r}/").into_bytes();
        let create = WatchCreateRequest {
            range_end: prefix_end(&key),
            key,
            prev_kv: true,
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await?;
    }
    let mut inbound = WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(Ok(resp)) = inbound.next().await {
        events.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
    }
    drop(tx);
    Ok(())
}

async fn current_revision(kv: &mut KvClient<Channel>) -> Option<i64> {
    let req = RangeRequest {
        key: b"/registry/".to_vec(),
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    Some(kv.range(req).await.ok()?.into_inner().header?.revision)
}

/// Compacts every interval to the revision seen one interval earlier, as the apiserver does
/// (the first one an interval after the run starts).
async fn compactor(mut kv: KvClient<Channel>, every: Duration, done: Arc<AtomicU64>) {
    let mut previous = current_revision(&mut kv).await.unwrap_or(0);
    loop {
        tokio::time::sleep(every).await;
        let Some(now) = current_revision(&mut kv).await else {
            continue;
        };
        if previous > 0
            && kv
                .compact(CompactionRequest {
                    revision: previous,
                    physical: false,
                })
                .await
                .is_ok()
        {
            done.fetch_add(1, Ordering::Relaxed);
        }
        previous = now;
    }
}

pub async fn run(plan: &Plan, spec: &K8sSpec) -> anyhow::Result<Report> {
    anyhow::ensure!(spec.objects > 0, "k8s needs at least one object");
    anyhow::ensure!(
        spec.compact_interval >= Duration::from_millis(10),
        "compaction interval too short"
    );
    let channels = plan.connect().await?;
    // Names of objects this run creates are its own, whatever earlier runs left behind.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let world = Arc::new(World {
        revs: (0..spec.objects).map(|_| AtomicI64::new(0)).collect(),
        lease: Mutex::new((0, EVENTS_PER_LEASE)),
        conflicts: AtomicU64::new(0),
        pages: AtomicU64::new(0),
    });
    populate(&mut KvClient::new(channels[0].clone()), spec, &world).await?;
    let watch_events = Arc::new(AtomicU64::new(0));
    let compactions = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn(watch_resources(channels[0].clone(), watch_events.clone()));
    let compact = tokio::spawn(compactor(
        KvClient::new(channels[0].clone()),
        spec.compact_interval,
        compactions.clone(),
    ));
    let mut report = closed_loop("k8s", plan, |c| {
        let ch = channels[c % channels.len()].clone();
        let (world, spec) = (world.clone(), spec.clone());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6b38 + c as u64);
        let created: Arc<Mutex<VecDeque<(Vec<u8>, i64)>>> = Default::default();
        move |i| {
            let mut roll = rng.random_range(0..100u32);
            let op = MIX.iter().find(|(_, w)| {
                let hit = roll < *w;
                roll = roll.saturating_sub(*w);
                hit
            });
            let op = op.map(|(name, _)| *name).unwrap_or("update");
            let n = rng.random_range(0..spec.objects.max(1));
            let (world, spec, created, ch) =
                (world.clone(), spec.clone(), created.clone(), ch.clone());
            let name = (nonce, c, i);
            async move { one_op(op, n, name, ch, &world, &spec, &created).await }
        }
    })
    .await;
    watcher.abort();
    compact.abort();
    report.extra.insert(
        "conflicts".into(),
        world.conflicts.load(Ordering::Relaxed) as f64,
    );
    report.extra.insert(
        "list_pages".into(),
        world.pages.load(Ordering::Relaxed) as f64,
    );
    report.extra.insert(
        "watch_events".into(),
        watch_events.load(Ordering::Relaxed) as f64,
    );
    report.extra.insert(
        "compactions".into(),
        compactions.load(Ordering::Relaxed) as f64,
    );
    Ok(report)
}

async fn one_op(
    op: &'static str,
    n: u64,
    (nonce, client, i): (u64, usize, u64),
    ch: Channel,
    world: &World,
    spec: &K8sSpec,
    created: &Mutex<VecDeque<(Vec<u8>, i64)>>,
) -> Result<Option<&'static str>, tonic::Status> {
    let mut kv = KvClient::new(ch.clone());
    let value = Bytes::from(vec![b'u'; spec.val_size]);
    match op {
        "update" => {
            let key = object_key(n);
            let slot = &world.revs[n as usize];
            loop {
                let rev = slot.load(Ordering::Relaxed);
                let resp = kv
                    .txn(update_txn(&key, rev, value.clone()))
                    .await?
                    .into_inner();
                if resp.succeeded {
                    slot.fetch_max(
                        resp.header.map(|h| h.revision).unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    return Ok(Some("update"));
                }
                world.conflicts.fetch_add(1, Ordering::Relaxed);
                slot.fetch_max(current_mod_revision(&resp.responses), Ordering::Relaxed);
            }
        }
        "get" => {
            kv.range(RangeRequest {
                key: object_key(n),
                ..Default::default()
            })
            .await?;
            Ok(Some("get"))
        }
        "list" => {
            let prefix = format!("/registry/{}/", RESOURCES[(n % 4) as usize]).into_bytes();
            let end = prefix_end(&prefix);
            let (mut key, mut revision) = (prefix, 0);
            loop {
                let req = RangeRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    limit: spec.list_limit,
                    revision,
                    ..Default::default()
                };
                let resp = kv.range(req).await?.into_inner();
                world.pages.fetch_add(1, Ordering::Relaxed);
                if revision == 0 {
                    revision = resp.header.map(|h| h.revision).unwrap_or(0);
                }
                match resp.kvs.last() {
                    Some(last) if resp.more => {
                        key = last.key.to_vec();
                        key.push(0);
                    }
                    _ => return Ok(Some("list")),
                }
            }
        }
        "delete" => {
            let Some((key, rev)) = created.lock().await.pop_front() else {
                return create(&mut kv, n, (nonce, client, i), value, world, created).await;
            };
            kv.txn(delete_txn(key, rev)).await?;
            Ok(Some("delete"))
        }
        "create" => create(&mut kv, n, (nonce, client, i), value, world, created).await,
        _ => {
            let lease = event_lease(&mut LeaseClient::new(ch), world).await?;
            let key = format!(
                "/registry/events/ns-{}/ev-{nonce}-{client}-{i}",
                n % NAMESPACES
            )
            .into_bytes();
            kv.put(PutRequest {
                key: key.into(),
                value,
                lease,
                ..Default::default()
            })
            .await?;
            Ok(Some("event"))
        }
    }
}

async fn create(
    kv: &mut KvClient<Channel>,
    n: u64,
    (nonce, client, i): (u64, usize, u64),
    value: Bytes,
    world: &World,
    created: &Mutex<VecDeque<(Vec<u8>, i64)>>,
) -> Result<Option<&'static str>, tonic::Status> {
    let resource = RESOURCES[(n % 4) as usize];
    let ns = n % NAMESPACES;
    let key = format!("/registry/{resource}/ns-{ns}/new-{nonce}-{client}-{i}").into_bytes();
    let resp = kv.txn(create_txn(key.clone(), value)).await?.into_inner();
    if resp.succeeded {
        created
            .lock()
            .await
            .push_back((key, resp.header.map(|h| h.revision).unwrap_or(0)));
    } else {
        world.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Some("create"))
}

/// The lease Events are written with; a new one every `EVENTS_PER_LEASE` events.
async fn event_lease(
    lease: &mut LeaseClient<Channel>,
    world: &World,
) -> Result<i64, tonic::Status> {
    let mut cur = world.lease.lock().await;
    if cur.1 >= EVENTS_PER_LEASE {
        let id = lease
            .lease_grant(LeaseGrantRequest {
                ttl: EVENT_TTL_SECS,
                id: 0,
            })
            .await?
            .into_inner()
            .id;
        *cur = (id, 0);
    }
    cur.1 += 1;
    Ok(cur.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_adds_up_and_keys_look_like_the_apiservers() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), 100);
        assert_eq!(object_key(5), b"/registry/configmaps/ns-1/obj-0000005");
    }
}
