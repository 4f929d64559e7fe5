//! Cairn's Raft log storage. This first part is the write-ahead log the Raft layer will keep
//! its entries in; the openraft adapter, the state machine over `store` and the peer transport
//! build on it.
//!
//! - [`wal`]: segmented, append-only log of (index, payload) records, CRC-framed, with group
//!   commit (`append` many, `sync` once), truncation of a conflicting suffix, purge of a
//!   prefix, and recovery that truncates a torn tail but refuses to start on corruption.
//! - [`meta`]: small files replaced atomically (write temp, fsync, rename, fsync dir), for the
//!   vote and the committed log id.

pub mod meta;
pub mod wal;

pub use wal::{Wal, WalError, WalOptions};
