//! The RocksDB layout: column families, their key and value formats, and open options.
//!
//! On-disk format (all integers big-endian):
//! - `key`:   escaped(user key) ++ desc(revision) → prost `mvccpb.KeyValue`. Every version of
//!   every key, newest first within a key, so a range at any revision is one forward scan.
//!   A tombstone is a `KeyValue` with `create_revision == 0` (live keys always have > 0).
//! - `rev`:   asc(revision) → user key. History in revision order, for watch catch-up and
//!   compaction.
//! - `lease`: `l` ++ id → granted TTL (i64); `k` ++ id ++ user key → empty (attached keys).
//! - `meta`:  named records: current revision, compaction marks, alarms, applied index.
//!
//! Writes skip RocksDB's own write-ahead log: Raft's log is the durability point, and the
//! store is durable only as of its last flush. Flushes are atomic across the column families
//! (`atomic_flush`), so after a crash the data and the applied index in `meta` always agree and
//! Raft re-applies what came after. See [`write_options`] and `Writer::sync`.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, ReadOptions, SliceTransform, DB,
};

use crate::error::Result;
use crate::mvcc::escaped_len;
use crate::revision::REVISION_LEN;

pub const CF_KEY: &str = "key";
pub const CF_REV: &str = "rev";
pub const CF_LEASE: &str = "lease";
pub const CF_META: &str = "meta";
/// Every column family of the store.
pub const FAMILIES: [&str; 4] = [CF_KEY, CF_REV, CF_LEASE, CF_META];

pub const META_CURRENT_REV: &[u8] = b"current_rev";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
pub const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";
pub const META_ALARMS: &[u8] = b"alarms";
pub const META_APPLIED_INDEX: &[u8] = b"applied_index";

/// Tuning for the RocksDB instance.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Capacity of the shared block cache; bounds read-side memory whatever the key count.
    pub block_cache_bytes: usize,
    /// Whether RocksDB compacts on its own threads when it sees fit. Off, files are merged
    /// only when asked (`compact_range`), so which files a checkpoint holds, and their sizes,
    /// do not depend on thread timing; a simulation needs that for a snapshot to travel the
    /// same way in every replay. (Flushes still run on RocksDB's threads, but a full memtable
    /// is the only thing that starts one unasked.)
    pub background_compactions: bool,
    /// Whether closing the store flushes its memtables. A real server's does, so a graceful
    /// restart has nothing to re-apply. A simulated member's does not: its crash drops the
    /// store, and that must lose what a `kill -9` loses, everything not yet flushed, so that
    /// every crash in a simulation exercises Raft re-applying it.
    pub flush_on_close: bool,
    /// Keys per generation of the writer's memory of recently written keys (`recent`); about
    /// 100 bytes each, two generations at most. 0 reads every key's newest version from RocksDB.
    pub recent_keys: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            block_cache_bytes: 64 << 20,
            background_compactions: true,
            flush_on_close: true,
            recent_keys: 100_000,
        }
    }
}

/// Opens (creating if needed) the RocksDB instance under `path` with Cairn's column families.
pub fn open(path: &Path, opts: &BackendOptions) -> Result<DB> {
    let cache = Cache::new_lru_cache(opts.block_cache_bytes);
    let cf_opts = |name: &str| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // Indexes and filters in 4 KiB partitions under a small top-level index that stays
        // pinned (as do level 0's). Whole, a large file's index and filter are blocks of
        // hundreds of KiB, as large as a block-cache shard: they did not stay cached, and
        // every read decompressed one again. A one-key read after every key had 100 versions
        // took 567 µs instead of 3.8 (`cargo bench -p store -- store_aged`).
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut o = Options::default();
        if name == CF_KEY {
            // Filters hold each version key's escaped user key, so a seek for one key's
            // versions skips every table file without that key; no reader looks up a whole
            // version key, so whole keys are left out.
            table.set_whole_key_filtering(false);
            o.set_prefix_extractor(SliceTransform::create(
                VERSION_KEY_PREFIX,
                user_key_part,
                Some(is_version_key),
            ));
        }
        o.set_block_based_table_factory(&table);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // The `key` family's memtable is smaller: a scan steps over every entry of its range
        // there, and versions that physical compaction deleted stay there, with their
        // deletions, until a flush drops the versions. Lists of a Kubernetes resource under
        // updates spent a quarter less CPU with 8 MiB than with 32. (With atomic flushes the
        // other families flush with it, in smaller files.)
        o.set_write_buffer_size(if name == CF_KEY { 8 << 20 } else { 32 << 20 });
        // Memtables grow in small blocks, so the size they report (part of the database's
        // size, see `Store::size_on_disk`) follows what was written, not 4 MiB steps.
        o.set_arena_block_size(64 << 10);
        // (RocksDB also skips its level-0 write stalls then, so writes never wait for a
        // compaction that will not come.)
        o.set_disable_auto_compactions(!opts.background_compactions);
        o
    };
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_keep_log_file_num(4);
    // Without a RocksDB log, a flush is the only thing that makes the store durable, and the
    // data and the applied index live in different families: they are flushed together.
    db_opts.set_atomic_flush(true);
    // All memtables together are flushed past 64 MiB, which bounds their memory whatever the
    // write rate (and how much of Raft's log a restart re-applies).
    db_opts.set_db_write_buffer_size(64 << 20);
    if !opts.flush_on_close {
        db_opts = db_opts.get_options_from_string("avoid_flush_during_shutdown=true")?;
    }
    let cfs = FAMILIES
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_opts(name)));
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs)?)
}

/// The name of the `key` family's prefix extractor, kept in its table files: a file written
/// under another name (or none) is read without its filters.
const VERSION_KEY_PREFIX: &str = "cairn.escaped-user-key";

/// The escaped user key (terminator included) of a version key.
fn user_key_part(version_key: &[u8]) -> &[u8] {
    &version_key[..version_key.len() - REVISION_LEN]
}

/// Whether `key` is a version key: an escaped user key followed by exactly one revision. A
/// seek target without a revision (the start of a range) is not, so it never consults the
/// filters under a prefix it does not have.
fn is_version_key(key: &[u8]) -> bool {
    key.len() >= REVISION_LEN && escaped_len(key) == Some(key.len() - REVISION_LEN)
}

/// Options for an iterator that may move from one key to the next: total order, so the
/// `key` family's filters, which answer for one user key, are never consulted.
pub fn read_options() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_total_order_seek(true);
    o
}

/// Options for an iterator that reads one key's versions after each seek, and each seek to
/// a version key (`mvcc::version_key`): the seek skips table files whose filter has no such
/// user key, and the iterator ends at the key's last version.
pub fn one_key_read_options() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_prefix_same_as_start(true);
    o
}

/// The options of every write to the store: no RocksDB log (see the module comment).
pub fn write_options() -> rocksdb::WriteOptions {
    let mut opts = rocksdb::WriteOptions::default();
    opts.disable_wal(true);
    opts
}

/// Flushes every column family's memtables together and waits: the store is durable as of
/// now.
pub fn flush_all(db: &DB) -> Result<()> {
    let cfs: Vec<_> = FAMILIES
        .into_iter()
        .map(|name| db.cf_handle(name).expect("column family exists"))
        .collect();
    db.flush_cfs_opt(
        &cfs.iter().collect::<Vec<_>>(),
        &rocksdb::FlushOptions::default(),
    )?;
    Ok(())
}

/// Encodes a lease ID for the `lease` family's keys.
pub fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&(id as u64).to_be_bytes());
    k
}

/// The prefix under which a lease's attached keys are listed.
pub fn lease_keys_prefix(id: i64) -> [u8; 9] {
    let mut k = lease_key(id);
    k[0] = b'k';
    k
}

/// The record saying `key` is attached to lease `id`.
pub fn lease_attachment(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_keys_prefix(id).to_vec();
    k.extend_from_slice(key);
    k
}

pub fn encode_i64(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_i64(cf: &'static str, bytes: &[u8]) -> Result<i64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| crate::Error::Corrupt {
        cf,
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(i64::from_be_bytes(arr))
}
