//! Cairn's Raft layer: openraft over a write-ahead log of our own, a state machine over
//! `store`, and a gRPC transport between members.
//!
//! - [`wal`]: segmented, append-only log of (index, payload) records, CRC-framed, with group
//!   commit (`append` many, `sync` once), truncation of a conflicting suffix, purge of a
//!   prefix, and recovery that truncates a torn tail but refuses to start on corruption.
//! - [`meta`]: small files replaced atomically (write temp, fsync, rename, fsync dir), for the
//!   vote, the committed and the purged log ids.
//! - [`types`]: openraft's type configuration (node = etcd member, entry data = proposal).
//! - [`proposal`]: the writes an entry carries (a batch of proposals) and entry encodings.
//! - [`log_store`]: openraft's log storage over the WAL (one fdatasync per append).
//! - [`state_machine`]: openraft's state machine over `store`, applied index in the same batch.
//! - [`snapshot`]: snapshots as checkpoint archives: build, send, install (crash-safe).
//! - [`snapshot_file`]: the file a snapshot travels in (inline I/O in a simulation).
//! - [`network`]: the peer transport over gRPC, client and server halves.
//! - [`transport`]: the network underneath: host TCP, or one the embedder supplies (simulation).
//! - [`determinism`]: what a simulation controls so a member replays exactly (random draws,
//!   blocking work, the wall clock).

pub mod determinism;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod proposal;
pub mod snapshot;
pub mod snapshot_file;
pub mod state_machine;
pub mod transport;
pub mod types;
pub mod wal;

pub use log_store::LogStore;
pub use proposal::{Proposal, ProposalBatch};
pub use state_machine::{AppliedProposal, ApplyError, ApplyObserver, StateMachine};
pub use types::{Member, NodeId, Raft, TypeConfig};
pub use wal::{Wal, WalError, WalOptions};
