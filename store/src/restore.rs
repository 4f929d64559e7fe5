//! Replacing the whole store with another one's contents (a Raft snapshot installed on a
//! member that fell too far behind). The live database is kept open — readers hold handles to
//! it — and rewritten: every family emptied, then filled from the source checkpoint, in
//! bounded batches, while readers wait (they would see a mix). The caller makes the whole
//! operation restartable (see raftlog's snapshot install), since a crash part-way leaves one.

use std::path::Path;

use rocksdb::{IteratorMode, WriteBatch};

use crate::backend::{self, BackendOptions, CF_META};
use crate::store::NEVER_COMPACTED;
use crate::writer::{cf, Writer};
use crate::Result;

/// Records written per batch while copying.
const COPY_BATCH_MAX: usize = 4096;

impl Writer {
    /// Replaces the store's contents with those of the store in `src` (a checkpoint), makes
    /// them durable, and publishes the new state: current and compacted revision included.
    pub fn restore_from(&mut self, src: &Path) -> Result<()> {
        // Whatever the writer remembers of keys is about contents that are going away.
        self.recent.clear();
        // Read once and thrown away: nothing to gain from compacting it meanwhile.
        let source = backend::open(
            src,
            &BackendOptions {
                background_compactions: false,
                ..BackendOptions::default()
            },
        )?;
        // Readers and physical compaction wait until the store is whole again.
        let inner = self.store.inner.clone();
        let _restoring = inner.restoring.write().unwrap_or_else(|e| e.into_inner());
        let db = &self.store.inner.db;
        let opts = backend::write_options();
        for name in backend::FAMILIES {
            let live = cf(db, name);
            let mut batch = WriteBatch::default();
            for item in db.iterator_cf_opt(live, backend::read_options(), IteratorMode::Start) {
                let (k, _) = item?;
                batch.delete_cf(live, k);
                if batch.len() >= COPY_BATCH_MAX {
                    db.write_opt(std::mem::take(&mut batch), &opts)?;
                }
            }
            let copied = source.iterator_cf_opt(
                cf(&source, name),
                backend::read_options(),
                IteratorMode::Start,
            );
            for item in copied {
                let (k, v) = item?;
                batch.put_cf(live, k, v);
                if batch.len() >= COPY_BATCH_MAX {
                    db.write_opt(std::mem::take(&mut batch), &opts)?;
                }
            }
            db.write_opt(batch, &opts)?;
        }
        backend::flush_all(db)?;
        let read_i64 = |key: &[u8]| -> Result<Option<i64>> {
            match db.get_cf(cf(db, CF_META), key)? {
                Some(v) => Ok(Some(backend::decode_i64(CF_META, &v)?)),
                None => Ok(None),
            }
        };
        let current = read_i64(backend::META_CURRENT_REV)?.unwrap_or(0).max(1);
        let compacted = read_i64(backend::META_SCHEDULED_COMPACT)?.unwrap_or(NEVER_COMPACTED);
        self.rev = current;
        self.compacted = compacted;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use etcd_proto::etcdserverpb::{PutRequest, RangeRequest};

    use crate::{range, BackendOptions, Store, WriteRequest};

    fn put(key: &str, value: &str) -> WriteRequest {
        WriteRequest::Put(PutRequest {
            key: key.to_owned().into(),
            value: value.to_owned().into(),
            ..Default::default()
        })
    }

    /// A member that installed a snapshot sharing part of its history (so restore deleted
    /// and wrote again the versions it had), then compacted, still compacts down to one
    /// version per key, reads right and takes writes.
    #[test]
    fn compaction_after_a_restore_of_shared_history_merges_cleanly() {
        let (src_dir, dst_dir, cp) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (src, mut src_w) = Store::open(src_dir.path(), &BackendOptions::default()).unwrap();
        let (dst, mut dst_w) = Store::open(dst_dir.path(), &BackendOptions::default()).unwrap();
        // The lagging member has the first rounds; the source all of them.
        for round in 0..6 {
            for key in ["a", "b", "c"] {
                let req = put(key, &format!("{key}{round}"));
                src_w.apply(&req).unwrap();
                if round < 3 {
                    dst_w.apply(&req).unwrap();
                }
            }
            src_w.sync().unwrap();
        }
        dst_w.sync().unwrap();
        let snapshot = cp.path().join("cp");
        src.checkpoint(&snapshot).unwrap();
        dst_w.restore_from(&snapshot).unwrap();
        dst_w.apply(&put("a", "a-last")).unwrap();
        let rev = dst_w.revision();
        dst_w
            .apply(&WriteRequest::Compact { revision: rev })
            .unwrap();
        dst_w.publish();
        dst.compact_physical(rev).unwrap();
        dst.defragment().unwrap();
        // A failed background compaction fails the store's next writes.
        dst_w.apply(&put("d", "d")).unwrap();
        dst_w.sync().unwrap();
        dst_w.publish();
        let resp = range::execute(
            &dst,
            &RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            },
        )
        .unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = resp
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect();
        let want = [("a", "a-last"), ("b", "b5"), ("c", "c5"), ("d", "d")]
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        assert_eq!(got, want);
        assert_eq!(dst.versions_held().unwrap(), 4);
    }
}
