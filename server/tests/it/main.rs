//! Integration tests of the `cairn` binary with real clients: etcdctl 3.5 (and 3.4), the Rust
//! `etcd-client` crate, real etcd 3.5.1 as the oracle for differential tests, crash tests,
//! and fault tests (paused members, a torn log record, a full disk).

mod badinput;
mod client;
mod cluster;
mod cluster_harness;
mod crash;
mod differential;
mod etcdctl;
mod faults;
mod flags;
mod grpc;
mod harness;
mod quota;
mod watch;
