//! Request checks done before a request is proposed, as etcd's `v3rpc/key.go` does them: empty
//! keys, conflicting flags, txn size, and the rule that one txn branch may not write a key twice.

use std::collections::HashSet;

use etcd_proto::etcdserverpb::range_request::SortTarget;
use etcd_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::errors::EtcdError;

pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    // etcd 3.5.1 accepts an unknown sort order (sorting nothing, as with NONE); an unknown sort
    // target would leave it without a sorter, so that one gets etcd's later error.
    if SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a txn: no branch longer than `txn_ops_max`, keys present, and no key written twice
/// in one branch (across nested txns too).
pub fn txn(r: &TxnRequest, txn_ops_max: usize) -> Result<(), EtcdError> {
    txn_shape(r, txn_ops_max)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

fn txn_shape(r: &TxnRequest, txn_ops_max: usize) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > txn_ops_max {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        request_op(op, txn_ops_max - ops)?;
    }
    Ok(())
}

fn request_op(op: &RequestOp, txn_ops_max: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => range(r),
        Some(request_op::Request::RequestPut(r)) => put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => delete_range(r),
        Some(request_op::Request::RequestTxn(r)) => txn_shape(r, txn_ops_max),
        // An empty op: etcd answers "key not found".
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A deleted interval `[start, end)`; `end = None` means a single key. As in etcd's check, the
/// end is compared literally: a `"\0"` end (delete --from-key) covers no key here.
#[derive(Debug, Clone)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: returns the puts and deletes of one branch, failing when a put
/// repeats a key or falls in a deleted range. Nested then/else branches may write the same
/// key, since only one of them runs.
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.clone(),
                end: if d.range_end.is_empty() {
                    None
                } else {
                    Some(d.range_end.clone())
                },
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(p.key.as_ref()) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.to_owned().into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), EtcdError> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicate_puts_and_deleted_puts_are_rejected() {
        assert_eq!(
            check(vec![put_op("a"), put_op("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![del_op("a", "c"), put_op("b")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(check(vec![del_op("a", "\0"), put_op("z")]), Ok(()));
        assert_eq!(check(vec![del_op("a", "c"), put_op("c")]), Ok(()));
        assert_eq!(check(vec![del_op("a", ""), del_op("a", "")]), Ok(()));
        assert_eq!(check(vec![put_op("a"), put_op("b")]), Ok(()));
    }

    #[test]
    fn nested_branches_may_share_keys_but_not_with_parent() {
        assert_eq!(
            check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]),
            Ok(())
        );
        assert_eq!(
            check(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![txn_op(vec![del_op("a", "")], vec![]), put_op("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![
                txn_op(vec![put_op("a")], vec![]),
                txn_op(vec![put_op("a")], vec![])
            ]),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn sizes_and_empty_ops() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(EtcdError::TooManyOps));
        assert_eq!(
            check(vec![RequestOp { request: None }]),
            Err(EtcdError::KeyNotFound)
        );
        assert_eq!(check(vec![put_op("")]), Err(EtcdError::EmptyKey));
        let p = PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(EtcdError::ValueProvided));
        let p = PutRequest {
            key: b"k".to_vec().into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(EtcdError::LeaseProvided));
    }
}
