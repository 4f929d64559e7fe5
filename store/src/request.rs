//! The write requests the store applies and what applying one yields. The server (and later
//! the Raft log) carries these; every non-deterministic input — lease IDs, expiry decisions —
//! is decided before a request is built, so applying it is deterministic.

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
