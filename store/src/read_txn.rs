//! Read-only transactions — every operation of both branches a Range, nested txns included —
//! evaluated on the read path rather than the write path, as etcd does: the compares, and
//! then the ranges of the chosen branches, all read the store at one revision (the current
//! one when the txn starts), so the answer is the one the write path would have given at
//! that revision, without a Raft entry, an fsync or the apply queue.

use etcd_proto::etcdserverpb::{
    request_op, response_op, RangeRequest, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use crate::mvcc::Scan;
use crate::range::{self, RangeSource};
use crate::store::Store;
use crate::{compare, Error, Result};

/// Whether `t` only reads (an operation with no request counts as a write, so such a txn
/// keeps the write path's handling).
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestTxn(inner)) => is_read_only(inner),
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
    // A compaction can overtake the txn's revision between two of its reads; the txn then
    // starts again at the newer current revision (a few times at most).
    let mut attempts = 0;
    loop {
        let rev = store.current_revision();
        match execute_at(store, t, rev, true) {
            Err(Error::Compacted { requested, .. }) if requested == rev && attempts < 3 => {
                attempts += 1;
            }
            Ok(mut resp) => {
                resp.header = Some(ResponseHeader { revision: rev, ..Default::default() });
                return Ok(resp);
            }
            Err(e) => return Err(e),
        }
    }
}

fn execute_at(store: &Store, t: &TxnRequest, rev: i64, outermost: bool) -> Result<TxnResponse> {
    let mut succeeded = true;
    for c in &t.compare {
        let (scan, _) = store.scan(&c.key, &c.range_end, rev, 0, false)?;
        if !compare::holds(c, &scan.kvs) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &t.success } else { &t.failure };
    if outermost {
        // As on the write path: every chosen range's revision is checked before any runs.
        check_ranges(store, t, succeeded, rev)?;
    }
    let source = AtRevision { store, rev };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range::execute(&source, r)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                response_op::Response::ResponseTxn(execute_at(store, inner, rev, false)?)
            }
            _ => unreachable!("is_read_only admitted only ranges and txns"),
        };
        responses.push(ResponseOp { response: Some(response) });
    }
    Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded, responses })
}

/// The write path's range checks over the branches the txn will take.
fn check_ranges(store: &Store, t: &TxnRequest, succeeded: bool, rev: i64) -> Result<()> {
    let compacted = store.compacted_revision();
    for op in if succeeded { &t.success } else { &t.failure } {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r, rev, compacted)?,
            Some(request_op::Request::RequestTxn(inner)) => {
                let inner_ok = inner_succeeds(store, inner, rev)?;
                check_ranges(store, inner, inner_ok, rev)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn inner_succeeds(store: &Store, t: &TxnRequest, rev: i64) -> Result<bool> {
    for c in &t.compare {
        let (scan, _) = store.scan(&c.key, &c.range_end, rev, 0, false)?;
        if !compare::holds(c, &scan.kvs) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_range(r: &RangeRequest, rev: i64, compacted: i64) -> Result<()> {
    if r.revision > rev {
        return Err(Error::FutureRev { requested: r.revision, current: rev });
    }
    if r.revision > 0 && r.revision < compacted {
        return Err(Error::Compacted { requested: r.revision, compacted });
    }
    Ok(())
}
