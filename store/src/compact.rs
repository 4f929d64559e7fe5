//! Physical compaction: removes versions that a compaction at revision C made unreachable —
//! every version superseded at or below C, and tombstones that are a key's newest version at
//! or below C — while keeping each key's newest live version at or below C.
//!
//! It runs beside the writer, in bounded batches, without blocking writes: the writer only
//! adds versions above C, which never change what is reachable at C. Readers are protected
//! by the logical compacted revision, which is raised before this starts.

use rocksdb::WriteBatch;

use crate::backend::{self, CF_KEY, CF_META, CF_REV};
use crate::mvcc::{self, version_key};
use crate::revision::Revision;
use crate::store::Store;
use crate::{Error, Result};

/// Deletes per write batch, so one compaction never holds a large batch in memory.
const BATCH_DELETES_MAX: usize = 4096;

impl Store {
    /// Physically removes history made unreachable by a compaction at `rev`. Safe to rerun;
    /// records the finished revision when done. Returns the number of versions removed.
    pub fn compact_physical(&self, rev: i64) -> Result<u64> {
        if rev < 0 {
            // Never compacted: nothing is unreachable (and negative revisions do not encode).
            return Ok(0);
        }
        let _not_restoring = self
            .inner
            .restoring
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let db = &self.inner.db;
        let cf_key = db.cf_handle(CF_KEY).expect("cf");
        let cf_rev = db.cf_handle(CF_REV).expect("cf");
        let mut revs = db.raw_iterator_cf(cf_rev);
        let mut versions = db.raw_iterator_cf(cf_key);
        let bound = Revision::new(rev, i64::MAX).encode();
        let mut batch = WriteBatch::default();
        let mut pending = 0usize;
        let mut removed = 0u64;
        let opts = backend::write_options();
        revs.seek_to_first();
        while revs.valid() && revs.key().expect("valid") <= &bound[..] {
            let r = Revision::decode(revs.key().expect("valid")).ok_or_else(|| Error::Corrupt {
                cf: CF_REV,
                detail: "malformed revision".into(),
            })?;
            let key = revs.value().expect("valid").to_vec();
            let drop = match mvcc::latest(&mut versions, &key, rev)? {
                Some((newest, tombstone, _)) => r < newest || (r == newest && tombstone),
                // Already removed by an earlier run.
                None => true,
            };
            if drop {
                batch.delete_cf(cf_key, version_key(&key, r));
                batch.delete_cf(cf_rev, r.encode());
                pending += 1;
                removed += 1;
                if pending >= BATCH_DELETES_MAX {
                    db.write_opt(std::mem::take(&mut batch), &opts)?;
                    pending = 0;
                }
            }
            revs.next();
        }
        revs.status()?;
        batch.put_cf(
            db.cf_handle(CF_META).expect("cf"),
            backend::META_FINISHED_COMPACT,
            backend::encode_i64(rev),
        );
        db.write_opt(batch, &opts)?;
        tracing::info!(revision = rev, removed, "finished physical compaction");
        Ok(removed)
    }
}
