//! Bad input: malformed requests get etcd's own error (code and message, compared with real
//! etcd 3.5.1), undecodable or oversized frames get the same gRPC code as etcd gives, and none
//! of it changes stored data or stops the server.

use bytes::{Buf, BufMut};
use etcd_proto::etcdserverpb::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::grpc::{status_text, Client};
use crate::harness::{Kind, Server};

fn bad_requests() -> Vec<(&'static str, Op)> {
    let put = |key: &str| PutRequest {
        key: key.to_owned().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    let many_puts = |n: usize| TxnRequest {
        compare: vec![],
        success: (0..n)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("m{i}")))),
            })
            .collect(),
        failure: vec![],
    };
    vec![
        ("put with empty key", Op::Put(put(""))),
        ("range with empty key", Op::Range(RangeRequest::default())),
        (
            "delete with empty key",
            Op::Delete(DeleteRangeRequest::default()),
        ),
        (
            "ignore_value with a value",
            Op::Put(PutRequest {
                ignore_value: true,
                ..put("k")
            }),
        ),
        (
            "ignore_lease with a lease",
            Op::Put(PutRequest {
                ignore_lease: true,
                lease: 5,
                ..put("k")
            }),
        ),
        (
            "ignore_value on a missing key",
            Op::Put(PutRequest {
                key: b"missing".to_vec().into(),
                ignore_value: true,
                ..Default::default()
            }),
        ),
        (
            "put with a missing lease",
            Op::Put(PutRequest {
                lease: 0x77,
                ..put("k")
            }),
        ),
        (
            "invalid sort order",
            Op::Range(RangeRequest {
                key: b"k".to_vec(),
                sort_order: 9,
                ..Default::default()
            }),
        ),
        (
            "range at a future revision",
            Op::Range(RangeRequest {
                key: b"k".to_vec(),
                revision: 1_000_000,
                ..Default::default()
            }),
        ),
        ("too many ops", Op::Txn(many_puts(129))),
        ("as many ops as allowed", Op::Txn(many_puts(128))),
        (
            "duplicate key in txn",
            Op::Txn(TxnRequest {
                compare: vec![],
                success: vec![
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(put("d"))),
                    },
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(put("d"))),
                    },
                ],
                failure: vec![],
            }),
        ),
        (
            "empty op in txn",
            Op::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp { request: None }],
                failure: vec![],
            }),
        ),
        (
            "compare with empty key",
            Op::Txn(TxnRequest {
                compare: vec![Compare::default()],
                success: vec![],
                failure: vec![],
            }),
        ),
        ("compact a future revision", Op::Compact(1_000_000)),
        ("compact revision 0", Op::Compact(0)),
        (
            "request too large",
            Op::Put(PutRequest {
                key: b"big".to_vec().into(),
                value: vec![b'x'; 1_600_000].into(),
                ..Default::default()
            }),
        ),
        (
            "lease TTL too large",
            Op::Grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            }),
        ),
        ("revoke a missing lease", Op::Revoke(0x99)),
        ("time-to-live of a missing lease", Op::TimeToLive(0x99)),
        (
            "grant an existing lease",
            Op::Grant(LeaseGrantRequest { ttl: 60, id: 0x42 }),
        ),
    ]
}

#[derive(Clone)]
enum Op {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    Grant(LeaseGrantRequest),
    Revoke(i64),
    TimeToLive(i64),
}

async fn outcome(c: &mut Client, op: Op) -> String {
    let r = match op {
        Op::Put(r) => c.kv.put(r).await.map(|_| "ok".to_string()),
        Op::Range(r) => c.kv.range(r).await.map(|_| "ok".to_string()),
        Op::Delete(r) => c.kv.delete_range(r).await.map(|_| "ok".to_string()),
        Op::Txn(r) => {
            c.kv.txn(r)
                .await
                .map(|x| format!("ok succeeded={}", x.into_inner().succeeded))
        }
        Op::Compact(rev) => {
            c.kv.compact(CompactionRequest {
                revision: rev,
                physical: false,
            })
            .await
            .map(|_| "ok".to_string())
        }
        Op::Grant(r) => c
            .lease
            .lease_grant(r)
            .await
            .map(|x| format!("ok ttl={}", x.into_inner().ttl)),
        Op::Revoke(id) => c
            .lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .map(|_| "ok".to_string()),
        Op::TimeToLive(id) => c
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .map(|x| format!("ok ttl={}", x.into_inner().ttl)),
    };
    r.unwrap_or_else(|s| status_text(&s))
}

async fn state(c: &mut Client) -> (i64, Vec<etcd_proto::mvccpb::KeyValue>) {
    let r =
        c.kv.range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.header.unwrap().revision, r.kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_etcds_errors_and_change_nothing() {
    let etcd = Server::start(Kind::Etcd);
    let cairn = Server::start(Kind::Cairn);
    let mut a = Client::connect(&etcd.endpoint()).await;
    let mut b = Client::connect(&cairn.endpoint()).await;
    for c in [&mut a, &mut b] {
        c.kv.put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0x42 })
            .await
            .unwrap();
    }
    for (name, op) in bad_requests() {
        let before = (state(&mut a).await, state(&mut b).await);
        let (ra, rb) = (outcome(&mut a, op.clone()).await, outcome(&mut b, op).await);
        assert_eq!(
            ra, rb,
            "{name}: etcd (left) and cairn (right) answer differently"
        );
        if !ra.starts_with("ok") {
            assert_eq!(
                before,
                (state(&mut a).await, state(&mut b).await),
                "{name}: a rejected request changed data"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sort_target_is_refused() {
    // etcd 3.5.1 has no sorter for it (later etcd answers "invalid sort option", as cairn does).
    let cairn = Server::start(Kind::Cairn);
    let mut b = Client::connect(&cairn.endpoint()).await;
    let op = Op::Range(RangeRequest {
        key: b"k".to_vec(),
        sort_target: 9,
        ..Default::default()
    });
    assert_eq!(
        outcome(&mut b, op).await,
        "InvalidArgument: etcdserver: invalid sort option"
    );
}

/// Sends raw bytes as a gRPC message, so a test can send what no well-formed client would.
#[derive(Default, Clone)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let out = src.chunk().to_vec();
        src.advance(out.len());
        Ok(Some(out))
    }
}

async fn raw_put(endpoint: &str, body: Vec<u8>) -> tonic::Code {
    match raw_call(endpoint, "/etcdserverpb.KV/Put", body).await {
        Ok(()) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// Sends `body` as the request message of the method at `path`.
async fn raw_call(endpoint: &str, path: &'static str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_refused_like_etcd() {
    let etcd = Server::start(Kind::Etcd);
    let cairn = Server::start(Kind::Cairn);
    for path in [
        "/etcdserverpb.Nope/Range",
        "/etcdserverpb.KV/Range/x",
        "/nothing",
        "/etcdserverpb.KV/Nope",
        "/etcdserverpb.Watch/Range",
        "/etcdserverpb.Maintenance/",
    ] {
        let a = raw_call(&etcd.endpoint(), path, vec![]).await.unwrap_err();
        let b = raw_call(&cairn.endpoint(), path, vec![]).await.unwrap_err();
        assert_ne!(a.code(), tonic::Code::Ok, "{path}: etcd {a:?}");
        assert_eq!(a.code(), b.code(), "{path}: etcd {a:?}, cairn {b:?}");
        assert_eq!(a.message(), b.message(), "{path}");
    }
    // Still serving.
    let mut c = Client::connect(&cairn.endpoint()).await;
    c.current_revision().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_refused_like_etcd() {
    let etcd = Server::start(Kind::Etcd);
    let cairn = Server::start(Kind::Cairn);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated varint", vec![0x0A, 0xFF]),
        ("length past the end", vec![0x0A, 0x7F, b'a']),
        ("invalid wire type", vec![0x0F, 0x00]),
        ("3 MiB frame", {
            let mut v = vec![0x12];
            let len = 3 * 1024 * 1024;
            let mut n = len;
            while n >= 0x80 {
                v.push((n as u8) | 0x80);
                n >>= 7;
            }
            v.push(n as u8);
            v.extend(std::iter::repeat_n(b'x', len));
            v
        }),
    ];
    let mut b = Client::connect(&cairn.endpoint()).await;
    let before = state(&mut b).await;
    for (name, body) in bodies {
        let (ca, cb) = (
            raw_put(&etcd.endpoint(), body.clone()).await,
            raw_put(&cairn.endpoint(), body).await,
        );
        assert_eq!(ca, cb, "{name}: etcd answered {ca:?}, cairn {cb:?}");
        assert_ne!(cb, tonic::Code::Ok, "{name} must be refused");
    }
    assert_eq!(
        before,
        state(&mut b).await,
        "refused frames changed nothing"
    );
    // Still serving.
    b.kv.put(PutRequest {
        key: b"after".to_vec().into(),
        value: b"ok".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
}
