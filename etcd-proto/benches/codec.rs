//! Encode and decode cost of the messages on the hot paths: a put request, a range response
//! of 100 keys, a Kubernetes-style optimistic-update txn, and a watch response of 100 events.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
    WatchResponse,
};
use etcd_proto::mvccpb::{Event, KeyValue};
use prost::Message;

fn kv(i: usize, value: usize) -> KeyValue {
    KeyValue {
        key: format!("/registry/pods/default/pod-{i:06}")
            .into_bytes()
            .into(),
        create_revision: 1000 + i as i64,
        mod_revision: 2000 + i as i64,
        version: 3,
        value: vec![b'v'; value].into(),
        lease: 0,
    }
}

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 123_456,
        raft_term: 5,
    })
}

fn messages() -> Vec<(&'static str, Vec<u8>, fn(&[u8]) -> usize)> {
    let put = PutRequest {
        key: b"00001234".to_vec().into(),
        value: vec![b'x'; 256].into(),
        ..Default::default()
    };
    let range = RangeResponse {
        header: header(),
        kvs: (0..100).map(|i| kv(i, 256)).collect(),
        more: false,
        count: 100,
    };
    let key = b"/registry/pods/default/pod-000001".to_vec();
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::ModRevision(99)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.clone().into(),
                value: vec![b'p'; 2048].into(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    };
    let watch = WatchResponse {
        header: header(),
        watch_id: 7,
        events: (0..100)
            .map(|i| Event {
                r#type: 0,
                kv: Some(kv(i, 256)),
                prev_kv: Some(kv(i, 256)),
            })
            .collect(),
        ..Default::default()
    };
    vec![
        ("put_request", put.encode_to_vec(), |b| {
            PutRequest::decode(b).unwrap().value.len()
        }),
        ("range_response_100", range.encode_to_vec(), |b| {
            RangeResponse::decode(b).unwrap().kvs.len()
        }),
        ("txn_update", txn.encode_to_vec(), |b| {
            TxnRequest::decode(b).unwrap().success.len()
        }),
        ("watch_response_100", watch.encode_to_vec(), |b| {
            WatchResponse::decode(b).unwrap().events.len()
        }),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, bytes, decode) in messages() {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| b.iter(|| decode(std::hint::black_box(&bytes))));
    }
    g.finish();
    let mut g = c.benchmark_group("encode");
    let range = RangeResponse {
        header: header(),
        kvs: (0..100).map(|i| kv(i, 256)).collect(),
        more: false,
        count: 100,
    };
    g.throughput(Throughput::Bytes(range.encoded_len() as u64));
    g.bench_function("range_response_100", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(range.encoded_len()),
            |buf| range.encode(buf).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let put = PutRequest {
        key: b"00001234".to_vec().into(),
        value: vec![b'x'; 256].into(),
        ..Default::default()
    };
    g.throughput(Throughput::Bytes(put.encoded_len() as u64));
    g.bench_function("put_request", |b| {
        b.iter(|| std::hint::black_box(&put).encode_to_vec())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
