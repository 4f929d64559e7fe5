//! Key-value workloads, as etcd's benchmark tool names them: `put`, `range`, `txn-put`
//! (optimistic update: compare the key's mod_revision, then put — how Kubernetes writes) and
//! `txn-mixed` (read and write transactions mixed by ratio). `put` and `range` can also run
//! through the `etcd-client` crate, to compare what a stock client costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::{Rng, SeedableRng};

use crate::driver::{closed_loop, Meter, Plan};
use crate::report::{Recorder, Report};

/// Shape of the keys and values a workload writes.
#[derive(Clone, Debug)]
pub struct Keys {
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub sequential: bool,
}

impl Keys {
    /// Key number `n`: zero-padded decimal digits, `key_size` long (longer if needed to keep
    /// keys distinct).
    pub fn key(&self, n: u64) -> Vec<u8> {
        format!("{n:0width$}", width = self.key_size).into_bytes()
    }

    /// The key number for operation `i` of a client.
    fn pick(&self, i: u64, rng: &mut impl Rng) -> u64 {
        if self.sequential {
            i % self.key_space.max(1)
        } else {
            rng.random_range(0..self.key_space.max(1))
        }
    }

    /// A value of `val_size` random printable bytes.
    pub fn value(&self, rng: &mut impl Rng) -> Bytes {
        (0..self.val_size)
            .map(|_| rng.random_range(b'a'..=b'z'))
            .collect::<Vec<u8>>()
            .into()
    }
}

fn client_rng(c: usize) -> rand::rngs::SmallRng {
    rand::rngs::SmallRng::seed_from_u64(0x5eed_0000 + c as u64)
}

/// `put`: `total` puts of `val_size`-byte values over the key space.
pub async fn put(plan: &Plan, keys: &Keys) -> anyhow::Result<Report> {
    let channels = plan.connect().await?;
    Ok(closed_loop("put", plan, |c| {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let keys = keys.clone();
        let mut rng = client_rng(c);
        let value = keys.value(&mut rng);
        move |i| {
            let req = PutRequest {
                key: keys.key(keys.pick(i, &mut rng)).into(),
                value: value.clone(),
                ..Default::default()
            };
            let mut kv = kv.clone();
            async move { kv.put(req).await.map(|_| None) }
        }
    })
    .await)
}

/// What `range` reads.
#[derive(Clone, Debug)]
pub struct RangeSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub serializable: bool,
    pub limit: i64,
}

/// The end of the range holding every key with this prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `range`: `total` reads of the same key or range.
pub async fn range(plan: &Plan, spec: &RangeSpec) -> anyhow::Result<Report> {
    let channels = plan.connect().await?;
    let name = if spec.serializable {
        "range-s"
    } else {
        "range-l"
    };
    Ok(closed_loop(name, plan, |c| {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let req = RangeRequest {
            key: spec.key.clone(),
            range_end: spec.range_end.clone(),
            limit: spec.limit,
            serializable: spec.serializable,
            ..Default::default()
        };
        move |_| {
            let (mut kv, req) = (kv.clone(), req.clone());
            async move { kv.range(req).await.map(|_| None) }
        }
    })
    .await)
}

fn mod_rev_equals(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// The mod_revision of every existing key of the key space, read page by page (keys only).
async fn known_revisions(
    kv: &mut KvClient<tonic::transport::Channel>,
    keys: &Keys,
) -> anyhow::Result<HashMap<u64, i64>> {
    const PAGE: i64 = 10_000;
    let end = keys.key(keys.key_space);
    let mut from = keys.key(0);
    let mut out = HashMap::new();
    loop {
        let req = RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit: PAGE,
            keys_only: true,
            ..Default::default()
        };
        let resp = kv.range(req).await?.into_inner();
        for item in &resp.kvs {
            if let Some(n) = std::str::from_utf8(&item.key)
                .ok()
                .and_then(|k| k.parse().ok())
            {
                out.insert(n, item.mod_revision);
            }
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// `txn-put`: each operation is an optimistic update, `if mod_revision(key) == last seen
/// then put else get`; a conflict refreshes the revision and retries within the operation.
/// Clients write disjoint keys and start from the revisions the store holds (read before the
/// clock starts), so a conflict means a server answered a compare wrongly or a key changed
/// underneath; they are counted.
pub async fn txn_put(plan: &Plan, keys: &Keys) -> anyhow::Result<Report> {
    let channels = plan.connect().await?;
    let known = known_revisions(&mut KvClient::new(channels[0].clone()), keys).await?;
    let conflicts = Arc::new(AtomicU64::new(0));
    let clients = plan.clients as u64;
    let mut report = closed_loop("txn-put", plan, |c| {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let keys = keys.clone();
        let mut rng = client_rng(c);
        let value = keys.value(&mut rng);
        let own: HashMap<u64, i64> = known
            .iter()
            .filter(|(n, _)| **n % clients == c as u64)
            .map(|(n, r)| (*n, *r))
            .collect();
        let seen = Arc::new(tokio::sync::Mutex::new(own));
        let conflicts = conflicts.clone();
        move |i| {
            // This client's keys are those congruent to it modulo the client count.
            let own = (keys.key_space / clients).max(1);
            let n = keys.pick(i, &mut rng) % own * clients + c as u64;
            let (mut kv, keys, value, seen) =
                (kv.clone(), keys.clone(), value.clone(), seen.clone());
            let conflicts = conflicts.clone();
            async move {
                let key = keys.key(n);
                let mut seen = seen.lock().await;
                let mut known = seen.get(&n).copied().unwrap_or(0);
                loop {
                    let resp = kv
                        .txn(update_txn(&key, known, value.clone()))
                        .await?
                        .into_inner();
                    if resp.succeeded {
                        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
                        seen.insert(n, rev);
                        return Ok(None);
                    }
                    conflicts.fetch_add(1, Ordering::Relaxed);
                    known = current_mod_revision(&resp.responses);
                }
            }
        }
    })
    .await;
    report
        .extra
        .insert("conflicts".into(), conflicts.load(Ordering::Relaxed) as f64);
    Ok(report)
}

/// `if mod_revision(key) == rev then put(key, value) else get(key)`.
pub fn update_txn(key: &[u8], rev: i64, value: Bytes) -> TxnRequest {
    TxnRequest {
        compare: vec![mod_rev_equals(key.to_vec(), rev)],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.to_vec().into(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    }
}

/// The mod_revision a failed update's `get` found (0: the key does not exist).
pub fn current_mod_revision(responses: &[etcd_proto::etcdserverpb::ResponseOp]) -> i64 {
    match responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
        _ => 0,
    }
}

/// `txn-mixed`: transactions that each read or write one key; `rw_ratio` reads per write.
pub async fn txn_mixed(
    plan: &Plan,
    keys: &Keys,
    rw_ratio: f64,
    serializable: bool,
) -> anyhow::Result<Report> {
    let channels = plan.connect().await?;
    let read_share = rw_ratio / (rw_ratio + 1.0);
    Ok(closed_loop("txn-mixed", plan, |c| {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let keys = keys.clone();
        let mut rng = client_rng(c);
        let value = keys.value(&mut rng);
        move |i| {
            let key = keys.key(keys.pick(i, &mut rng));
            let read = rng.random_bool(read_share);
            let op = if read {
                Request::RequestRange(RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
            } else {
                Request::RequestPut(PutRequest {
                    key: key.into(),
                    value: value.clone(),
                    ..Default::default()
                })
            };
            let req = TxnRequest {
                success: vec![RequestOp { request: Some(op) }],
                ..Default::default()
            };
            let mut kv = kv.clone();
            let kind = if read { "read" } else { "write" };
            async move { kv.txn(req).await.map(|_| Some(kind)) }
        }
    })
    .await)
}

/// `put` or `range` through the `etcd-client` crate (one client per connection), to compare
/// the client CPU a stock etcd client spends per operation with this generator's.
pub async fn stock_client(
    plan: &Plan,
    keys: &Keys,
    op: &str,
    range_key: Option<Vec<u8>>,
) -> anyhow::Result<Report> {
    let mut clients = Vec::new();
    for i in 0..plan.conns.max(1) {
        let ep = plan.endpoints[i % plan.endpoints.len()].clone();
        let ep = if ep.contains("://") {
            ep
        } else {
            format!("http://{ep}")
        };
        clients.push(etcd_client::Client::connect([ep], None).await?);
    }
    let ticket = crate::driver::Ticket::new(plan);
    let meter = Meter::start(&plan.target_pids);
    let mut tasks = Vec::new();
    for c in 0..plan.clients {
        let mut kv = clients[c % clients.len()].kv_client();
        let (ticket, keys, op) = (ticket.clone(), keys.clone(), op.to_string());
        let range_key = range_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = client_rng(c);
            let value = keys.value(&mut rng);
            let mut rec = Recorder::default();
            while let Some(i) = ticket.take().await {
                let key = match &range_key {
                    Some(k) => k.clone(),
                    None => keys.key(keys.pick(i, &mut rng)),
                };
                let t = std::time::Instant::now();
                // The same per-operation timeout as `closed_loop`, so both drivers pay for it.
                let call = async {
                    if op == "put" {
                        kv.put(key, value.to_vec(), None).await.map(drop)
                    } else {
                        kv.get(key, None).await.map(drop)
                    }
                };
                match tokio::time::timeout(crate::driver::OP_TIMEOUT, call).await {
                    Ok(Ok(())) => rec.record(t.elapsed()),
                    Ok(Err(e)) => rec.error(&e.to_string()),
                    Err(_) => rec.error(crate::driver::TIMED_OUT),
                }
            }
            rec
        }));
    }
    let mut rec = Recorder::default();
    for t in tasks {
        rec.merge(&t.await?);
    }
    Ok(meter.finish(&format!("{op} (etcd-client)"), plan, &rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_and_prefix_end_follows_etcd() {
        let k = Keys {
            key_size: 8,
            val_size: 4,
            key_space: 10,
            sequential: true,
        };
        assert_eq!(k.key(42), b"00000042");
        let mut rng = client_rng(0);
        assert_eq!(k.pick(13, &mut rng), 3);
        assert_eq!(k.value(&mut rng).len(), 4);
        assert_eq!(prefix_end(b"/a"), b"/b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
