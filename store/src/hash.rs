//! Hashes of the stored data, for comparing replicas (etcd's Hash and HashKV RPCs).
//!
//! `hash_kv(rev)` is a CRC-32 over every version reachable at some revision in
//! (compacted, rev]: the `key`-family key and value of each version with revision <= rev,
//! skipping versions that compaction made unreachable — whether or not physical compaction
//! has removed them yet — so equal histories hash equal on every member at any moment.

use crate::backend::{self, CF_KEY};
use crate::mvcc::{escaped_len, TAG_TOMBSTONE};
use crate::revision::Revision;
use crate::store::Store;
use crate::{Error, Result};

impl Store {
    /// Returns (hash, compacted revision, hashed revision) for history up to `rev` (0 = current).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let current = self.current_revision();
        let view = self.view();
        let rev = self.check_read_revision(rev)?.min(current);
        let compacted = self.compacted_revision();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(CF_KEY.as_bytes());
        let mut iter = view.iter(CF_KEY, None);
        iter.seek_to_first();
        // The key whose versions are being walked, and whether its newest version at or
        // below the compacted revision has been seen (older ones are unreachable).
        let mut current_key: Vec<u8> = Vec::new();
        let mut kept_at_compaction = false;
        while iter.valid() {
            let k = iter.key().expect("valid");
            let n = escaped_len(k).ok_or_else(|| Error::Corrupt {
                cf: CF_KEY,
                detail: "malformed key".into(),
            })?;
            let version = Revision::decode_desc(&k[n..]).ok_or_else(|| Error::Corrupt {
                cf: CF_KEY,
                detail: "malformed revision".into(),
            })?;
            if k[..n] != current_key[..] {
                current_key.clear();
                current_key.extend_from_slice(&k[..n]);
                kept_at_compaction = false;
            }
            let v = iter.value().expect("valid");
            let reachable = if version.main > compacted {
                true
            } else if !kept_at_compaction {
                kept_at_compaction = true;
                v.first() != Some(&TAG_TOMBSTONE)
            } else {
                false
            };
            if reachable && version.main <= rev {
                hasher.update(k);
                hasher.update(v);
            }
            iter.next();
        }
        iter.status()?;
        Ok((hasher.finalize(), compacted, rev))
    }

    /// A CRC-32 over every record of every column family (etcd's Hash: the whole backend).
    pub fn hash_all(&self) -> Result<u32> {
        let view = self.view();
        let mut hasher = crc32fast::Hasher::new();
        for cf in backend::FAMILIES {
            hasher.update(cf.as_bytes());
            let mut iter = view.iter(cf, None);
            iter.seek_to_first();
            while iter.valid() {
                hasher.update(iter.key().expect("valid"));
                hasher.update(iter.value().expect("valid"));
                iter.next();
            }
            iter.status()?;
        }
        Ok(hasher.finalize())
    }
}
