//! Physical compaction: removes versions that a compaction at revision C made unreachable —
//! every version superseded at or below C, and tombstones that are a key's newest version at
//! or below C — while keeping each key's newest live version at or below C.
//!
//! It runs beside the writer, in bounded batches, without blocking writes: the writer only
//! adds versions above C, which never change what is reachable at C. Readers are protected
//! by the logical compacted revision, which is raised before this starts. A batch holds
//! whole revisions' deletions (a revision's version together with the older version it
//! supersedes), so neither a reader between two batches nor a rerun after a crash between
//! them ever finds a key's deleting tombstone gone and the version it deleted still there.
//!
//! It reads only the history written since the last finished compaction P. After P, a key
//! keeps at most one version at or below P (its newest, live); that version becomes
//! unreachable at C only if the key has a version in (P, C]. So the revisions in (P, C] say
//! which keys to look at, and a compaction costs what was written since the last one, not
//! the whole key space (Kubernetes' apiserver compacts every five minutes).
//!
//! The deletions are plain `Delete`s, not `SingleDelete`s, although a version is written by
//! one revision and deleted once here: installing a snapshot (`restore`) writes again the
//! versions a member already had, and a `SingleDelete` meeting the newer write in a
//! compaction would remove both and bring back the older one still in a lower level.

use std::collections::HashSet;

use rocksdb::WriteBatch;

use crate::backend::{self, CF_KEY, CF_META, CF_REV};
use crate::mvcc::{self, version_key};
use crate::revision::Revision;
use crate::store::Store;
use crate::{Error, Result};

/// Deletes per write batch, so one compaction never holds a large batch in memory.
const BATCH_DELETES_MAX: usize = 4096;
/// Keys one compaction remembers having looked at (see `compact_physical`).
const KEYS_REMEMBERED_MAX: usize = 100_000;

impl Store {
    /// Physically removes history made unreachable by a compaction at `rev`. Safe to rerun;
    /// records the finished revision when done. Returns the number of versions removed.
    pub fn compact_physical(&self, rev: i64) -> Result<u64> {
        self.compact_in_batches(rev, BATCH_DELETES_MAX, || {})
    }

    /// `compact_physical`, writing the deletions out once at least `batch_max` are pending
    /// (after the revision that reached it) and calling `after_write` after each write but
    /// the last.
    fn compact_in_batches(
        &self,
        rev: i64,
        batch_max: usize,
        mut after_write: impl FnMut(),
    ) -> Result<u64> {
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
        let mut versions = db.raw_iterator_cf_opt(cf_key, backend::read_options());
        // Everything at or below the last finished compaction that is not a key's newest live
        // version there is gone already (see the module comment).
        let previous = self.finished_compaction()?.min(rev);
        let bound = Revision::new(rev, i64::MAX).encode();
        let mut batch = WriteBatch::default();
        let mut removed = 0u64;
        let opts = backend::write_options();
        let mut drop_version = |batch: &mut WriteBatch, key: &[u8], r: Revision| {
            batch.delete_cf(cf_key, version_key(key, r));
            batch.delete_cf(cf_rev, r.encode());
            removed += 1;
        };
        let mut looked_at: HashSet<Vec<u8>> = HashSet::new();
        revs.seek(Revision::new(previous + 1, 0).encode());
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
                drop_version(&mut batch, &key, r);
            }
            // The key's version kept by the last compaction, now superseded at or below C.
            if previous > 0 && !looked_at.contains(&key) {
                if let Some((old, _, _)) = mvcc::latest(&mut versions, &key, previous)? {
                    drop_version(&mut batch, &key, old);
                }
                if looked_at.len() >= KEYS_REMEMBERED_MAX {
                    // Bounded memory: a key seen again is looked at again, and its version at
                    // P may be deleted (and counted) twice, since `versions` reads the store
                    // as it was when this run began. Deleting twice is harmless.
                    looked_at.clear();
                }
                looked_at.insert(key);
            }
            // Two operations per version (its `key` and `rev` entries).
            if batch.len() >= 2 * batch_max {
                db.write_opt(std::mem::take(&mut batch), &opts)?;
                after_write();
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

#[cfg(test)]
mod tests {
    use etcd_proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};

    use crate::test_util::put;
    use crate::{range, BackendOptions, Store, WriteRequest};

    /// Keys live at `rev`, in order.
    fn live_at(store: &Store, rev: i64) -> Vec<Vec<u8>> {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        let resp = range::execute(store, &all).unwrap();
        resp.kvs.into_iter().map(|kv| kv.key.to_vec()).collect()
    }

    #[test]
    fn readers_between_batches_never_see_a_deleted_key_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
        // Each key keeps one version at the first compaction, then is deleted (or, for "c",
        // written again) after it.
        for key in ["a", "b", "c", "d"] {
            writer.apply(&put(key)).unwrap();
        }
        let first = writer.revision();
        writer
            .apply(&WriteRequest::Compact { revision: first })
            .unwrap();
        writer.publish();
        store.compact_physical(first).unwrap();
        for key in ["a", "b", "d"] {
            let delete = DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            };
            writer.apply(&WriteRequest::DeleteRange(delete)).unwrap();
        }
        writer.apply(&put("c")).unwrap();
        let second = writer.revision();
        writer
            .apply(&WriteRequest::Compact { revision: second })
            .unwrap();
        writer.publish();
        assert_eq!(live_at(&store, second), vec![b"c".to_vec()]);
        // One version per batch: a reader at the compacted revision looks after each write.
        let mut writes = 0;
        store
            .compact_in_batches(second, 1, || {
                writes += 1;
                assert_eq!(live_at(&store, second), vec![b"c".to_vec()]);
            })
            .unwrap();
        assert!(writes >= 4, "{writes} intermediate writes");
        assert_eq!(live_at(&store, second), vec![b"c".to_vec()]);
        assert_eq!(store.versions_held().unwrap(), 1);
    }
}
