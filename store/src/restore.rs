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
            for item in db.iterator_cf(live, IteratorMode::Start) {
                let (k, _) = item?;
                batch.delete_cf(live, k);
                if batch.len() >= COPY_BATCH_MAX {
                    db.write_opt(std::mem::take(&mut batch), &opts)?;
                }
            }
            for item in source.iterator_cf(cf(&source, name), IteratorMode::Start) {
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
