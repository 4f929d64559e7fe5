//! The `cairn` server: etcd's v3 gRPC API over the `store` crate, with etcd's flags, errors
//! and HTTP endpoints. It knows nothing of Kubernetes.
//!
//! - [`config`]: flags (etcd's names, defaults, `ETCD_*` variables) and their validation.
//! - [`server`]: [`run`]: wiring, listeners and ordered shutdown.
//! - [`node`]: what the services share, and response headers.
//! - [`member`]: member and cluster IDs, derived as etcd derives them.
//! - [`membership`]: members as etcd shows them, and membership changes (on the leader).
//! - [`bootstrap`]: starting Raft (log, state machine, peers, initial membership).
//! - [`applier`]: the write path over Raft (proposals, forwarding) and the read barrier.
//! - [`observer`]: what follows an applied batch: replies, watch events, leases, compaction.
//! - [`peer`]: the peer service (what followers ask of the leader) and its clients.
//! - [`quota`]: the backend quota check that raises NOSPACE.
//! - [`watch_hub`]: fan-out of applied events to watch streams.
//! - [`lessor`]: lease deadlines (the clock side of leases).
//! - [`compactor`]: physical compaction and auto-compaction.
//! - [`validate`]: etcd's request checks before proposing.
//! - [`errors`]: etcd's gRPC codes and messages.
//! - [`grpc_status`]: transport statuses reworded as etcd's transport words them.
//! - [`date`]: the `date` header in a simulation (from the simulated clock).
//! - [`kv`], [`watch`], [`lease`], [`cluster`], [`maintenance`], [`auth`]: one file per
//!   etcd service.
//! - [`watch_wire`]: the Watch service's gRPC binding, and events encoded once per stream.
//! - [`unary`]: the KV service's hot unary calls on the wire, without tonic's generic path.
//! - [`dispatch`]: routes client requests to their service; counts them while handled.
//! - [`http`]: `/health`, `/version`, `/metrics`.
//! - [`transfer`]: leadership transfer (MoveLeader).
//! - [`stream`]: server streams that send headers with their first message, as grpc-go does.
//! - [`metrics`]: Prometheus metrics under etcd's names.

pub mod applier;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod date;
pub mod dispatch;
pub mod errors;
pub mod grpc_status;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod observer;
pub mod peer;
pub mod quota;
pub mod server;
pub mod stream;
pub mod transfer;
pub mod unary;
pub mod validate;
pub mod watch;
pub mod watch_hub;
pub mod watch_wire;

pub use config::{Config, Flags};
pub use server::run;
