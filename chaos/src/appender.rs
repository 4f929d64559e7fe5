//! The list-append clients (see [`crate::append`] for the check). A transaction touches one to
//! three of the list keys, reading or appending to each: first a read-only txn reads them all
//! at one revision; then, if it appends, a txn that compares every key's mod_revision with
//! what was read and puts the longer lists. A failed compare means nothing was written.

use std::time::Duration;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::rngs::SmallRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::append::{format, parse, Mop, Txn};
use crate::history::NEVER;
use crate::net::client_channel;
use crate::workload::{now, sleep_until, Shared};

/// The list keys: `list/0` …
pub const PREFIX: &str = "list/";
const KEYS: usize = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// Each key's list and mod revision (0 when absent), read in one read-only txn.
async fn read_all(
    kv: &mut KvClient<Channel>,
    keys: &[String],
) -> Result<Vec<(Vec<u64>, i64)>, tonic::Status> {
    let ranges = keys
        .iter()
        .map(|k| RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.clone().into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    let resp = kv
        .txn(TxnRequest {
            success: ranges,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp
        .responses
        .into_iter()
        .map(|r| match r.response {
            Some(Response::ResponseRange(r)) => r.kvs.first().map_or((Vec::new(), 0), |kv| {
                (parse(&String::from_utf8_lossy(&kv.value)), kv.mod_revision)
            }),
            _ => (Vec::new(), 0),
        })
        .collect())
}

/// An appending client, from `start` until `until`.
pub async fn appender(
    id: usize,
    seed: u64,
    (start, until): (Duration, Duration),
    shared: std::rc::Rc<Shared>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x4150_5045_4e44_0000 ^ id as u64);
    sleep_until(start).await;
    let mut n = 0u64;
    while now() < until {
        let member = &shared.pick(&mut rng);
        let count = rng.random_range(1..=3);
        let keys: Vec<String> = sample(&mut rng, KEYS, count)
            .into_iter()
            .map(|k| format!("{PREFIX}{k}"))
            .collect();
        // The value each key gets appended, or none for a read.
        let appends: Vec<Option<u64>> = keys
            .iter()
            .map(|_| {
                n += 1;
                rng.random_bool(0.5)
                    .then_some((id as u64 + 1) * 1_000_000 + n)
            })
            .collect();
        let mut kv = KvClient::new(client_channel(member));
        let call = shared.history.borrow_mut().tick();
        let read = tokio::time::timeout(OP_TIMEOUT, read_all(&mut kv, &keys)).await;
        let Ok(Ok(read)) = read else {
            // Nothing was written.
            continue;
        };
        let mops: Vec<Mop> = keys
            .iter()
            .zip(&appends)
            .zip(&read)
            .map(|((key, append), (list, _))| match append {
                Some(value) => Mop::Append {
                    key: key.clone(),
                    value: *value,
                },
                None => Mop::Read {
                    key: key.clone(),
                    list: list.clone(),
                },
            })
            .collect();
        let (ret, committed) = if appends.iter().all(Option::is_none) {
            (shared.history.borrow_mut().tick(), Some(true))
        } else {
            let txn = write_txn(&keys, &appends, &read, &shared);
            match tokio::time::timeout(OP_TIMEOUT, kv.txn(txn)).await {
                Ok(Ok(resp)) => (
                    shared.history.borrow_mut().tick(),
                    Some(resp.into_inner().succeeded),
                ),
                _ => (NEVER, None),
            }
        };
        shared.txns.borrow_mut().push(Txn {
            client: id,
            call,
            ret,
            committed,
            mops,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
    }
    shared.finished();
    Ok(())
}

/// The txn that appends if no key changed since it was read.
fn write_txn(
    keys: &[String],
    appends: &[Option<u64>],
    read: &[(Vec<u64>, i64)],
    shared: &Shared,
) -> TxnRequest {
    let compare = keys
        .iter()
        .zip(read)
        .map(|(key, (_, rev))| Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone().into_bytes(),
            target_union: Some(TargetUnion::ModRevision(*rev)),
            ..Default::default()
        })
        .collect();
    let success = keys
        .iter()
        .zip(appends)
        .zip(read)
        .filter_map(|((key, append), (list, _))| {
            let mut list = list.clone();
            list.push((*append)?);
            let value = format(&list);
            shared.written.borrow_mut().insert(value.clone());
            Some(RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: value.into_bytes().into(),
                    ..Default::default()
                })),
            })
        })
        .collect();
    TxnRequest {
        compare,
        success,
        failure: vec![],
    }
}
