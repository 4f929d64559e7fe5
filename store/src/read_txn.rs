//! Read-only transactions — every operation of both branches a Range, as etcd's
//! `isTxnReadonly` defines them (a nested txn counts as a write) — evaluated on the read path
//! rather than the write path, as etcd does: the compares, and then the ranges of the chosen
//! branch, all read the store at one revision (the current one when the txn starts), so the
//! answer is the one the write path would have given at that revision, without a Raft entry,
//! an fsync or the apply queue.

use etcd_proto::etcdserverpb::{
    request_op, response_op, RangeRequest, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use crate::mvcc::Scan;
use crate::range::{self, RangeSource};
use crate::store::Store;
use crate::{compare, Error, Result};

/// Whether `t` only reads: every operation in both branches is a Range.
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// Whether every range of a read-only txn asks for a serializable read (etcd's
/// `isTxnSerializable`): then it needs no read barrier.
pub fn is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            _ => false,
        })
}

/// Ranges inside the txn: `revision` 0 reads at the txn's revision.
struct AtRevision<'a> {
    store: &'a Store,
    rev: i64,
}

impl RangeSource for AtRevision<'_> {
    fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(Scan, i64)> {
        let at = if rev <= 0 { self.rev } else { rev };
        let (scan, _) = self.store.scan(key, range_end, at, limit, count_only)?;
        Ok((scan, self.rev))
    }
}

/// Evaluates a read-only txn (see [`is_read_only`]) at the store's current revision.
pub fn execute(store: &Store, t: &TxnRequest) -> Result<TxnResponse> {
    loop {
        let rev = store.current_revision();
        match execute_at(store, t, rev) {
            // A compaction published after `rev` was loaded overtook it: readers see the
            // compacted revision only together with the revisions it covers, so the txn
            // starts again at the newer current revision.
            Err(Error::Compacted { requested, .. }) if requested == rev => continue,
            Ok(mut resp) => {
                resp.header = Some(ResponseHeader {
                    revision: rev,
                    ..Default::default()
                });
                return Ok(resp);
            }
            Err(e) => return Err(e),
        }
    }
}

fn execute_at(store: &Store, t: &TxnRequest, rev: i64) -> Result<TxnResponse> {
    let mut succeeded = true;
    for c in &t.compare {
        let (scan, _) = store.scan(&c.key, &c.range_end, rev, 0, false)?;
        if !compare::holds(c, &scan.kvs) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &t.success } else { &t.failure };
    let ranges: Vec<&RangeRequest> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => Some(r),
            _ => None,
        })
        .collect();
    // As on the write path: every range's revision is checked before any runs.
    let compacted = store.compacted_revision();
    for r in &ranges {
        if r.revision > rev {
            return Err(Error::FutureRev {
                requested: r.revision,
                current: rev,
            });
        }
        if r.revision > 0 && r.revision < compacted {
            return Err(Error::Compacted {
                requested: r.revision,
                compacted,
            });
        }
    }
    let source = AtRevision { store, rev };
    let mut responses = Vec::with_capacity(ranges.len());
    for r in ranges {
        let resp = range::execute(&source, r)?;
        responses.push(ResponseOp {
            response: Some(response_op::Response::ResponseRange(resp)),
        });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use etcd_proto::etcdserverpb::RequestOp;

    use super::*;
    use crate::test_util::put;
    use crate::{BackendOptions, WriteRequest};

    fn get(key: &str, revision: i64) -> RequestOp {
        let r = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        RequestOp {
            request: Some(request_op::Request::RequestRange(r)),
        }
    }

    #[test]
    fn a_compaction_applied_but_not_published_is_invisible_to_read_txns() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
        writer.apply(&put("a")).unwrap();
        writer.apply(&put("b")).unwrap();
        writer.publish();
        let published = store.current_revision();
        // One apply batch writes a key and compacts up to it; it is not yet published.
        writer.apply(&put("c")).unwrap();
        writer
            .apply(&WriteRequest::Compact {
                revision: writer.revision(),
            })
            .unwrap();
        let t = TxnRequest {
            success: vec![get("a", 0)],
            ..Default::default()
        };
        assert!(is_read_only(&t) && !is_serializable(&t));
        let resp = execute(&store, &t).unwrap();
        assert_eq!(resp.header.unwrap().revision, published);
        assert!(resp.succeeded);
        writer.publish();
        let resp = execute(&store, &t).unwrap();
        assert_eq!(resp.header.unwrap().revision, published + 1);
        // A range at a revision below the compaction is refused, as on the write path.
        let old = TxnRequest {
            success: vec![get("a", published)],
            ..Default::default()
        };
        assert!(matches!(
            execute(&store, &old),
            Err(Error::Compacted { .. })
        ));
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(t)),
            }],
            ..Default::default()
        };
        assert!(
            !is_read_only(&nested),
            "etcd counts a nested txn as a write"
        );
    }
}
