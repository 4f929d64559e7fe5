//! Cairn's deterministic MVCC state machine on RocksDB.
//!
//! Applying the same sequence of [`WriteRequest`]s produces the same bytes on every member:
//! nothing here reads a clock, draws a random number or knows of Raft or gRPC (this crate
//! depends on `etcd-proto` for message types only). Durability is the caller's choice: the
//! [`Writer`] writes without fsync and offers [`Writer::sync`] as the durability point.
//!
//! - [`revision`]: etcd's (main, sub) revision and its order-preserving encodings.
//! - [`keycodec`]: the escaping that keeps user keys ordered inside composite RocksDB keys.
//! - [`backend`]: the column families, their formats, and RocksDB options.
//! - [`mvcc`]: versions, the newest-version lookup and the range scan at a revision.
//! - [`store`]: [`Store`], the read handle: ranges at the durable revision, leases, alarms.
//! - [`range`]: etcd's Range semantics (filters, sort, limit, count) over any source.
//! - [`compare`]: txn compares.
//! - [`request`]: the write requests and their results.
//! - [`writer`]: [`Writer`], the single write path: one batch per request, sync, publish.
//! - `recent`: the writer's memory of recently written keys' newest versions.
//! - `change`: one request's changes — puts, deletes, txns (with their overlay), events.
//! - [`compact`]: physical compaction beside the writer.
//! - [`history`]: history as watch events, for watchers catching up.
//! - [`hash`]: HashKV and Hash, for comparing replicas.
//! - `restore`: replacing the store's contents with a checkpoint's (Raft snapshot install).
//! - [`snapshot`]: snapshot archives (pack a checkpoint, verify and unpack it).
//! - [`error`]: the crate's error type.

pub mod backend;
mod change;
pub mod compact;
pub mod compare;
pub mod error;
pub mod hash;
pub mod history;
pub mod keycodec;
pub mod mvcc;
pub mod range;
pub mod read_txn;
mod recent;
pub mod request;
mod restore;
pub mod revision;
pub mod snapshot;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod writer;

pub use backend::BackendOptions;
pub use error::{Error, Result};
pub use history::History;
pub use request::{Applied, WriteRequest, WriteResponse};
pub use revision::Revision;
pub use store::Store;
pub use writer::Writer;

/// Formats a key for logs: printable ASCII as is, other bytes escaped, long keys truncated.
pub struct EscapedKey<'a>(pub &'a [u8]);

impl std::fmt::Debug for EscapedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN_MAX: usize = 64;
        let shown = &self.0[..self.0.len().min(SHOWN_MAX)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > SHOWN_MAX {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
