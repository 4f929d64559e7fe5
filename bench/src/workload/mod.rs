//! The workloads the load generator runs, one module per family.

pub mod k8s;
pub mod kv;
pub mod lease;
pub mod watch;
