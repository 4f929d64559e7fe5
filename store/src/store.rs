//! `Store`: the shared, read-side handle over the MVCC state. Reads run at the published
//! revision — the newest revision whose writes are durable — on a RocksDB snapshot, so they
//! never see a write before it is acknowledged. Only the single [`Writer`] changes state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use etcd_proto::mvccpb::KeyValue;
use rocksdb::{ReadOptions, DB};

use crate::backend::{self, BackendOptions, CF_KEY, CF_LEASE, CF_META};
use crate::mvcc::{self, RangeEnd, Scan};
use crate::writer::Writer;
use crate::{Error, Result};

pub(crate) struct Inner {
    pub(crate) db: DB,
    pub(crate) path: PathBuf,
    /// Newest revision whose writes are durable and visible to readers.
    pub(crate) published: AtomicI64,
    /// Revision below which history is (logically) gone; [`NEVER_COMPACTED`] at first.
    pub(crate) compacted: AtomicI64,
    /// Held for writing while the contents are replaced by a snapshot (`Writer::restore_from`),
    /// for reading by every read view and by physical compaction, so neither sees a half-
    /// rewritten store.
    pub(crate) restoring: RwLock<()>,
}

/// The compacted revision of a store that was never compacted (etcd reports -1 too).
pub const NEVER_COMPACTED: i64 = -1;

/// A cloneable read handle. See the module comment for the visibility rule.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// A consistent read view: a RocksDB snapshot plus the revision it is read at.
pub(crate) struct View<'a> {
    pub(crate) db: &'a DB,
    /// `None`: each iterator sees the store as it is when the iterator is created (its own
    /// implicit snapshot), which is enough for a view that creates one iterator.
    snapshot: Option<rocksdb::Snapshot<'a>>,
    _not_restoring: RwLockReadGuard<'a, ()>,
}

impl<'a> View<'a> {
    pub(crate) fn opts(&self, upper_bound: Option<Vec<u8>>) -> ReadOptions {
        let mut o = backend::read_options();
        if let Some(snapshot) = &self.snapshot {
            o.set_snapshot(snapshot);
        }
        if let Some(b) = upper_bound {
            o.set_iterate_upper_bound(b);
        }
        o
    }

    pub(crate) fn iter(
        &self,
        cf: &str,
        upper_bound: Option<Vec<u8>>,
    ) -> rocksdb::DBRawIterator<'a> {
        let handle = self.db.cf_handle(cf).expect("column family exists");
        self.db.raw_iterator_cf_opt(handle, self.opts(upper_bound))
    }

    /// An iterator over the `key` family for lookups of single keys' versions, each seek to a
    /// version key (see `backend::one_key_read_options`). Given the one key it will read, it
    /// also stops at that key's end: without that bound a read on a store whose files all
    /// hold versions of the key took 11 µs instead of 4 (`cargo bench -p store --
    /// store_aged`).
    pub(crate) fn one_key_iter(&self, only: Option<&[u8]>) -> rocksdb::DBRawIterator<'a> {
        let mut o = backend::one_key_read_options();
        if let Some(key) = only {
            o.set_iterate_upper_bound(RangeEnd::Single.upper_bound(key).expect("bounded"));
        }
        if let Some(snapshot) = &self.snapshot {
            o.set_snapshot(snapshot);
        }
        let handle = self.db.cf_handle(CF_KEY).expect("column family exists");
        self.db.raw_iterator_cf_opt(handle, o)
    }
}

impl Store {
    /// Opens the store under `dir`, returning the read handle and the one writer.
    pub fn open(dir: &Path, opts: &BackendOptions) -> Result<(Store, Writer)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Corrupt {
            cf: "dir",
            detail: e.to_string(),
        })?;
        let db = backend::open(dir, opts)?;
        let meta = |key: &[u8]| -> Result<i64> {
            match db.get_cf(db.cf_handle(CF_META).expect("cf"), key)? {
                Some(v) => backend::decode_i64(CF_META, &v),
                None => Ok(0),
            }
        };
        // Revision 1 is etcd's empty store; the first write makes revision 2.
        let current = meta(backend::META_CURRENT_REV)?.max(1);
        // As etcd: -1 until the first compaction, so compacting at revision 0 is allowed once.
        let compacted = match db.get_cf(
            db.cf_handle(CF_META).expect("cf"),
            backend::META_SCHEDULED_COMPACT,
        )? {
            Some(v) => backend::decode_i64(CF_META, &v)?,
            None => NEVER_COMPACTED,
        };
        let inner = Arc::new(Inner {
            db,
            path: dir.to_path_buf(),
            published: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            restoring: RwLock::new(()),
        });
        let store = Store { inner };
        let writer = Writer::new(store.clone(), current, opts.recent_keys);
        Ok((store, writer))
    }

    /// The newest durable revision.
    pub fn current_revision(&self) -> i64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// The revision of the last compaction ([`NEVER_COMPACTED`] if none).
    pub fn compacted_revision(&self) -> i64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    /// The compaction whose physical cleanup had finished when the store last recorded it.
    pub fn finished_compaction(&self) -> Result<i64> {
        self.meta_i64(backend::META_FINISHED_COMPACT)
    }

    /// The applied index recorded with the last write (for the Raft layer; 0 if none).
    pub fn applied_index(&self) -> Result<i64> {
        self.meta_i64(backend::META_APPLIED_INDEX)
    }

    /// A record of the `meta` family as last written (published or not), for the Raft layer's
    /// own records (applied log id, membership).
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = &self.inner.db;
        Ok(db.get_cf(db.cf_handle(CF_META).expect("cf"), name)?)
    }

    fn meta_i64(&self, key: &[u8]) -> Result<i64> {
        let db = &self.inner.db;
        match db.get_cf(db.cf_handle(CF_META).expect("cf"), key)? {
            Some(v) => backend::decode_i64(CF_META, &v),
            None => Ok(0),
        }
    }

    pub(crate) fn view(&self) -> View<'_> {
        let mut view = self.view_for_one_iterator();
        view.snapshot = Some(self.inner.db.snapshot());
        view
    }

    /// A view without a snapshot of its own, for a read through one iterator: the iterator
    /// pins the store as it is when created, as a snapshot would, and a read saves taking
    /// and releasing one (each takes RocksDB's DB mutex).
    fn view_for_one_iterator(&self) -> View<'_> {
        let guard = self
            .inner
            .restoring
            .read()
            .unwrap_or_else(|e| e.into_inner());
        View {
            db: &self.inner.db,
            snapshot: None,
            _not_restoring: guard,
        }
    }

    /// Checks that `rev` (0 = current) can be read, returning the revision to read at.
    pub fn check_read_revision(&self, rev: i64) -> Result<i64> {
        self.check_read_revision_at(rev, self.current_revision())
    }

    /// Checks that `rev` (<= 0: `current`) is readable when the store is at `current`.
    /// A current-revision read is checked against compaction too: a compaction can overtake
    /// it between loading `current` and taking the snapshot.
    fn check_read_revision_at(&self, rev: i64, current: i64) -> Result<i64> {
        let wanted = if rev <= 0 { current } else { rev };
        if wanted > current {
            return Err(Error::FutureRev {
                requested: wanted,
                current,
            });
        }
        let compacted = self.compacted_revision();
        if wanted < compacted {
            return Err(Error::Compacted {
                requested: wanted,
                compacted,
            });
        }
        Ok(wanted)
    }

    /// Scans `[key, range_end)` at `rev` (0 = current). Returns the scan and the revision the
    /// store was at when the read began (etcd's response header revision).
    pub fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(Scan, i64)> {
        // The iterator (the read's snapshot) is created after `current` is loaded, so it holds
        // every write up to it; the compaction check runs after the iterator is created, so a
        // compaction that could have removed history at the read revision is either seen here
        // or began after it. A read of "the current revision" that a compaction overtook
        // between the two loads starts again at the newer current revision.
        let end = RangeEnd::from_request(range_end);
        let view = self.view_for_one_iterator();
        let (current, mut iter, read_rev) = loop {
            let current = self.current_revision();
            let iter = match end {
                RangeEnd::Single => view.one_key_iter(Some(key)),
                _ => view.iter(CF_KEY, end.upper_bound(key)),
            };
            match self.check_read_revision_at(rev, current) {
                Err(Error::Compacted { .. }) if rev <= 0 => continue,
                other => break (current, iter, other?),
            }
        };
        let scan = mvcc::scan(&mut iter, key, &end, read_rev, limit, count_only)?;
        Ok((scan, current))
    }

    /// Returns the version of `key` at `rev` if it was live there.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        let view = self.view();
        let mut iter = view.one_key_iter(Some(key));
        Ok(match mvcc::latest(&mut iter, key, rev)? {
            Some((_, false, kv)) => Some(kv),
            _ => None,
        })
    }

    /// All leases with their granted TTLs, in ID order.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let view = self.view();
        let mut iter = view.iter(CF_LEASE, Some(b"m".to_vec()));
        iter.seek(b"l");
        let mut out = Vec::new();
        while iter.valid() {
            let k = iter.key().expect("valid");
            let id = backend::decode_i64(CF_LEASE, &k[1..])?;
            out.push((
                id,
                backend::decode_i64(CF_LEASE, iter.value().expect("valid"))?,
            ));
            iter.next();
        }
        iter.status()?;
        Ok(out)
    }

    /// The granted TTL of lease `id`, or `None` if it does not exist.
    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>> {
        let db = &self.inner.db;
        match db.get_cf(db.cf_handle(CF_LEASE).expect("cf"), backend::lease_key(id))? {
            Some(v) => Ok(Some(backend::decode_i64(CF_LEASE, &v)?)),
            None => Ok(None),
        }
    }

    /// Keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let view = self.view();
        collect_lease_keys(&mut view.iter(CF_LEASE, None), id)
    }

    /// Active alarms as (member ID, alarm type) pairs.
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>> {
        let db = &self.inner.db;
        let raw = db.get_cf(db.cf_handle(CF_META).expect("cf"), backend::META_ALARMS)?;
        Ok(crate::writer::decode_alarms(raw.as_deref()))
    }

    /// Bytes the database holds (etcd's dbSize, the size of its database file): the files in
    /// its directory, except RocksDB's informational LOG files, plus what the memtables hold
    /// and have not flushed yet — written data that the next flush will put on disk.
    pub fn size_on_disk(&self) -> u64 {
        let files: u64 = self
            .files()
            .filter(|(name, _)| !name.starts_with("LOG"))
            .map(|(_, len)| len)
            .sum();
        files + self.sum_property("rocksdb.cur-size-all-mem-tables")
    }

    /// Bytes of live data (etcd's dbSizeInUse): SST files still referenced plus the memtables.
    pub fn size_in_use(&self) -> u64 {
        let live = self.sum_property("rocksdb.live-sst-files-size")
            + self.sum_property("rocksdb.cur-size-all-mem-tables");
        live.min(self.size_on_disk())
    }

    /// Versions the store physically holds: every key's every version and tombstone, what
    /// physical compaction has left (for tests and debugging; reads the whole key family).
    pub fn versions_held(&self) -> Result<u64> {
        let db = &self.inner.db;
        let mut iter =
            db.raw_iterator_cf_opt(db.cf_handle(CF_KEY).expect("cf"), backend::read_options());
        iter.seek_to_first();
        let mut held = 0;
        while iter.valid() {
            held += 1;
            iter.next();
        }
        iter.status()?;
        Ok(held)
    }

    /// An integer property of RocksDB's, summed over the column families.
    fn sum_property(&self, name: &str) -> u64 {
        let db = &self.inner.db;
        backend::FAMILIES
            .iter()
            .map(|cf| {
                db.property_int_value_cf(db.cf_handle(cf).expect("cf"), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }

    fn files(&self) -> impl Iterator<Item = (String, u64)> {
        std::fs::read_dir(&self.inner.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
    }

    /// Rewrites every column family to drop deleted data (etcd's defragment).
    pub fn defragment(&self) -> Result<()> {
        let db = &self.inner.db;
        backend::flush_all(db)?;
        for cf in backend::FAMILIES {
            db.compact_range_cf(db.cf_handle(cf).expect("cf"), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Store {
    /// Writes a consistent copy of the store into `dir` (which must not exist): hard links to
    /// immutable files plus copies of the rest, as RocksDB checkpoints do.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.inner.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }
}

/// Lists the keys attached to lease `id` with an iterator over the `lease` family.
pub(crate) fn collect_lease_keys(
    iter: &mut rocksdb::DBRawIterator<'_>,
    id: i64,
) -> Result<Vec<Vec<u8>>> {
    let prefix = backend::lease_keys_prefix(id);
    iter.seek(prefix);
    let mut out = Vec::new();
    while iter.valid() && iter.key().expect("valid").starts_with(&prefix) {
        out.push(iter.key().expect("valid")[prefix.len()..].to_vec());
        iter.next();
    }
    iter.status()?;
    Ok(out)
}
