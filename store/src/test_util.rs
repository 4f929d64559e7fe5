//! Helpers shared by the crate's unit tests.

use etcd_proto::etcdserverpb::PutRequest;

use crate::WriteRequest;

/// A put of `key` with the value `v`.
pub fn put(key: &str) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: key.to_owned().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    })
}
