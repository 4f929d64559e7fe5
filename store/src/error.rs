//! The store's one error type. Variants carry typed context; the server maps each to etcd's
//! gRPC code and message (see `server/src/errors.rs`).

/// Errors from reading or applying requests to the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read or watch asked for history that compaction has dropped.
    #[error(
        "mvcc: required revision has been compacted (requested {requested}, compacted {compacted})"
    )]
    Compacted { requested: i64, compacted: i64 },
    /// A read or compaction asked for a revision the store has not reached.
    #[error(
        "mvcc: required revision is a future revision (requested {requested}, current {current})"
    )]
    FutureRev { requested: i64, current: i64 },
    /// A put attached, or a request named, a lease that does not exist.
    #[error("requested lease not found: {0:x}")]
    LeaseNotFound(i64),
    /// A grant asked for an ID that is already in use.
    #[error("lease already exists: {0:x}")]
    LeaseExists(i64),
    /// A put with ignore_value or ignore_lease named a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// RocksDB failed; the request's changes were not applied.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored bytes did not decode: the data directory is damaged.
    #[error("corrupt record in column family {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error is a failure of the storage itself (not a refusal of the request):
    /// a replica that hits one must stop rather than carry on with a different state.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Corrupt { .. })
    }
}
