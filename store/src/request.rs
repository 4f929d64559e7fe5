//! The write requests the store applies and what applying one yields. The server (and later
//! the Raft log) carries these; every non-deterministic input — lease IDs, expiry decisions —
//! is decided before a request is built, so applying it is deterministic.

use bytes::Bytes;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    AlarmMember, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest,
    TxnResponse,
};
use etcd_proto::mvccpb::Event;

/// A request that changes the store.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRequest {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Drops history below `revision` (logically now; physically via `Store::compact_physical`).
    Compact {
        revision: i64,
    },
    /// Creates lease `id` (chosen by the proposer, never 0) with a TTL in seconds.
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    /// Deletes lease `id` and, in one revision, every key attached to it.
    LeaseRevoke {
        id: i64,
    },
    /// Raises (`activate = true`) or clears an alarm for a member.
    Alarm {
        activate: bool,
        member_id: u64,
        alarm: i32,
    },
}

impl WriteRequest {
    /// The request with every put's key and value in buffers of their own. A put decoded
    /// from a gRPC request shares that request's whole receive buffer (several KiB); a
    /// proposal lives on in Raft's log cache, where the shared buffers would hold far more
    /// memory than the writes themselves.
    pub fn unshared(mut self) -> Self {
        match &mut self {
            WriteRequest::Put(p) => unshare_put(p),
            WriteRequest::Txn(t) => unshare_txn(t),
            _ => {}
        }
        self
    }
}

fn unshare_put(p: &mut PutRequest) {
    p.key = Bytes::copy_from_slice(&p.key);
    p.value = Bytes::copy_from_slice(&p.value);
}

fn unshare_txn(t: &mut TxnRequest) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(Request::RequestPut(p)) => unshare_put(p),
            Some(Request::RequestTxn(t)) => unshare_txn(t),
            _ => {}
        }
    }
}

/// The typed result of a write; response headers are left for the caller to fill.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    LeaseRevoke,
    /// The alarms the request changed.
    Alarm(Vec<AlarmMember>),
}

/// What applying one request produced.
#[derive(Debug, Clone)]
pub struct Applied {
    pub response: WriteResponse,
    /// The store revision after the request (etcd's response header revision).
    pub revision: i64,
    /// Events in revision order, without `prev_kv`: the write path does not read previous
    /// values; a watcher that wants them reads them with `Store::prev_kvs`.
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use etcd_proto::etcdserverpb::request_op::Request;
    use etcd_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
    use prost::Message;

    use super::WriteRequest;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.to_owned().into(),
                value: vec![b'v'; 64].into(),
                ..Default::default()
            })),
        }
    }

    /// Every put's key and value in `t`, nested txns included.
    fn put_fields(t: &TxnRequest) -> Vec<Bytes> {
        let mut out = Vec::new();
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Request::RequestPut(p)) => out.extend([p.key.clone(), p.value.clone()]),
                Some(Request::RequestTxn(t)) => out.extend(put_fields(t)),
                _ => {}
            }
        }
        out
    }

    fn within(field: &Bytes, buf: &Bytes) -> bool {
        let range = buf.as_ptr_range();
        range.contains(&field.as_ptr())
    }

    #[test]
    fn unshared_puts_no_longer_point_into_the_decoded_buffer() {
        let txn = TxnRequest {
            success: vec![
                put("a"),
                RequestOp {
                    request: Some(Request::RequestTxn(TxnRequest {
                        failure: vec![put("b")],
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![put("c")],
            ..Default::default()
        };
        // Decoding from `Bytes`, as tonic does from its receive buffer, shares that buffer.
        let buf = Bytes::from(txn.encode_to_vec());
        let decoded = TxnRequest::decode(buf.clone()).unwrap();
        let fields = put_fields(&decoded);
        assert_eq!(fields.len(), 6);
        assert!(fields.iter().all(|f| within(f, &buf)));

        let WriteRequest::Txn(unshared) = WriteRequest::Txn(decoded).unshared() else {
            unreachable!()
        };
        assert_eq!(unshared, txn);
        assert!(put_fields(&unshared).iter().all(|f| !within(f, &buf)));

        let one = Bytes::from(
            PutRequest {
                key: "k".to_owned().into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let p = PutRequest::decode(one.clone()).unwrap();
        assert!(within(&p.key, &one));
        let WriteRequest::Put(p) = WriteRequest::Put(p).unshared() else {
            unreachable!()
        };
        assert!(!within(&p.key, &one));
        assert_eq!(&p.key[..], b"k");
    }
}
