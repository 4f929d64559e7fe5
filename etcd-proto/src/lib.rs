//! The etcd v3 API as Rust types and tonic services, generated from hand-written `.proto` files
//! that follow etcd 3.5's wire format field for field.
//!
//! - [`etcdserverpb`]: the client API services (KV, Watch, Lease, Cluster, Maintenance, Auth)
//!   and their messages; package and service names match etcd's so real clients connect.
//! - [`mvccpb`]: `KeyValue` and `Event`, the stored record and the watch event.
//! - [`authpb`]: users, roles and permissions.
//! - [`cairnraftpb`]: Cairn's own peer protocol (Raft RPCs, forwarded proposals, read index).
//!
//! This crate holds no logic.

#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, missing_docs)]
pub mod cairnraftpb {
    tonic::include_proto!("cairnraftpb");
}
