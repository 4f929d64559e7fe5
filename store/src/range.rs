//! Range requests: etcd's rules on top of a scan — mod/create revision filters, sorting,
//! limit with `more`, `count` of every key in the range, keys_only and count_only. The same
//! code serves a plain Range and a range inside a txn (whose source overlays the txn's writes).

use std::cmp::Ordering;

use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use etcd_proto::mvccpb::KeyValue;

use crate::mvcc::Scan;
use crate::store::Store;
use crate::Result;

/// Where a range reads from.
pub trait RangeSource {
    /// Scans `[key, range_end)` at `rev` (<= 0: the source's current revision). Returns the
    /// scan and the revision to report in the response header.
    fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(Scan, i64)>;
}

impl RangeSource for Store {
    fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(Scan, i64)> {
        Store::scan(self, key, range_end, rev, limit, count_only)
    }
}

/// Executes `r` against `src` with etcd's semantics.
pub fn execute(src: &impl RangeSource, r: &RangeRequest) -> Result<RangeResponse> {
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting or filtering needs every key before the limit applies.
    let scan_limit = if sort_order != SortOrder::None || filtered || r.limit <= 0 {
        0
    } else {
        r.limit as usize + 1
    };
    let (scan, header_rev) =
        src.scan(&r.key, &r.range_end, r.revision, scan_limit, r.count_only)?;
    let mut kvs = scan.kvs;
    if filtered {
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
    }
    // As etcd: a non-key target with no order sorts ascending; results are already in key order.
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: header_rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: scan.count,
    })
}
