//! The one place that turns errors into etcd's gRPC statuses. Clients match on these codes and
//! message strings (etcd's `rpctypes`), so they are copied exactly and checked by a table test.

use tonic::{Code, Status};

/// A client-visible failure, named after etcd's `rpctypes.ErrGRPC*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
}

impl EtcdError {
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist | MemberNotLearner | BadLeaderTransferee | AuthNotEnabled | NotLeader => {
                Code::FailedPrecondition
            }
            Stopped
            | Timeout
            | NoLeader
            | LeaderChanged
            | LeaderTransferTimeout
            | NotSupportedForLearner => Code::Unavailable,
            Corrupt => Code::DataLoss,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// Maps a store error to the status etcd returns for it. Storage faults are not the client's
/// doing: they are logged and reported as etcd reports an internal failure.
pub fn from_store(e: store::Error) -> Status {
    match e {
        store::Error::Compacted { .. } => EtcdError::Compacted.into(),
        store::Error::FutureRev { .. } => EtcdError::FutureRev.into(),
        store::Error::LeaseNotFound(_) => EtcdError::LeaseNotFound.into(),
        store::Error::LeaseExists(_) => EtcdError::LeaseExist.into(),
        store::Error::KeyNotFound => EtcdError::KeyNotFound.into(),
        e @ (store::Error::Storage(_) | store::Error::Corrupt { .. }) => {
            tracing::error!(error = %e, "storage failure");
            Status::internal(format!("etcdserver: {e}"))
        }
    }
}

/// Maps a refusal of the state machine (the same on every member) to etcd's status.
pub fn from_apply(e: raftlog::ApplyError) -> Status {
    match e {
        raftlog::ApplyError::Store(e) => from_store(e),
        raftlog::ApplyError::NoSpace => EtcdError::NoSpace.into(),
    }
}

/// The status for an RPC Cairn does not serve yet (etcd's own "unimplemented" code).
pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("cairn: {what} is not implemented yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let table = [
            (
                EtcdError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                EtcdError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                EtcdError::LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (
                EtcdError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                EtcdError::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                EtcdError::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                EtcdError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                EtcdError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                EtcdError::InvalidSortOption,
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                EtcdError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                EtcdError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                EtcdError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                EtcdError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                EtcdError::LeaseExist,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                EtcdError::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                EtcdError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                EtcdError::MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                EtcdError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                EtcdError::Stopped,
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                EtcdError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                EtcdError::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                EtcdError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
        ];
        for (err, code, msg) in table {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), code, "{err:?}");
            assert_eq!(status.message(), msg, "{err:?}");
        }
    }

    #[test]
    fn store_errors_map_to_etcd_statuses() {
        let s = from_store(store::Error::Compacted {
            requested: 1,
            compacted: 5,
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let s = from_store(store::Error::LeaseNotFound(7));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    }
}
