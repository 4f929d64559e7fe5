//! `Recent`: the writer's memory of the keys it wrote lately — for each, whether the key is live
//! and, if so, the fields of its newest version that a write needs (create and mod revision,
//! version, lease). A put reads these for every key it writes; finding them in RocksDB means a
//! seek through the memtable and every level, which profiles put at a quarter of a put's CPU.
//!
//! Only the writer changes the keys' newest versions, and it records every key it writes here
//! once the write is done, so whatever this remembers is exact. (Physical compaction deletes
//! versions too, but never a key's newest live one: it drops only older versions and
//! tombstones, and a key whose newest version is a tombstone is remembered as not live.)
//!
//! It forgets in two generations: entries go to the young map; when that is full it becomes
//! the old one and the previous old one is dropped.
//! A key written within the last generation or two is found without reading the store; any
//! other key is read from RocksDB as before. The bound keeps memory flat however many keys the
//! store holds (etcd keeps every key in memory in its `treeIndex`).

use std::collections::HashMap;

use etcd_proto::mvccpb::KeyValue;

/// The fields of a live key's newest version that a write needs: everything but the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Meta {
    pub fn of(kv: &KeyValue) -> Self {
        Meta {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    /// The version as a `KeyValue` without its value (enough for every compare but VALUE's).
    pub fn without_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec().into(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: Default::default(),
        }
    }
}

/// What the writer remembers of recently written keys; see the module comment.
pub(crate) struct Recent {
    /// Entries per generation; 0 remembers nothing.
    generation: usize,
    /// `None`: the key is not live (deleted, or never written).
    young: HashMap<Box<[u8]>, Option<Meta>>,
    old: HashMap<Box<[u8]>, Option<Meta>>,
}

impl Recent {
    pub fn new(generation: usize) -> Self {
        Recent {
            generation,
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    /// `Some(state)` if the key was written lately (`state` is `None` if it is not live);
    /// `None` if it is not remembered.
    pub fn get(&self, key: &[u8]) -> Option<Option<Meta>> {
        self.young.get(key).or_else(|| self.old.get(key)).copied()
    }

    /// Records the key's state after a write that is done. The young entry hides any older
    /// one of the same key until that one is dropped with its generation.
    pub fn record(&mut self, key: Vec<u8>, state: Option<Meta>) {
        if self.generation == 0 {
            return;
        }
        if self.young.len() >= self.generation && !self.young.contains_key(&key[..]) {
            let fresh = HashMap::with_capacity(self.generation);
            self.old = std::mem::replace(&mut self.young, fresh);
        }
        self.young.insert(key.into_boxed_slice(), state);
    }

    /// Forgets everything (the store's contents were replaced).
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rev: i64) -> Option<Meta> {
        Some(Meta {
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 0,
        })
    }

    #[test]
    fn the_newest_record_of_a_key_wins_and_old_generations_are_dropped() {
        let mut r = Recent::new(2);
        r.record(b"a".to_vec(), meta(2));
        r.record(b"b".to_vec(), meta(3));
        // The young map is full: "c" starts a new generation; "a" and "b" are now old.
        r.record(b"c".to_vec(), meta(4));
        assert_eq!(r.get(b"a"), Some(meta(2)));
        // A newer record of an old key hides the old one.
        r.record(b"a".to_vec(), None);
        assert_eq!(r.get(b"a"), Some(None));
        assert_eq!(r.get(b"b"), Some(meta(3)));
        // Full again: the generation holding "b" (and the hidden "a") is dropped.
        r.record(b"d".to_vec(), meta(5));
        assert_eq!(r.get(b"b"), None);
        assert_eq!(r.get(b"a"), Some(None));
        assert_eq!(r.get(b"d"), Some(meta(5)));
        // Rewriting a key already in the young map never starts a generation.
        r.record(b"d".to_vec(), meta(6));
        assert_eq!(r.get(b"a"), Some(None));
        r.clear();
        assert_eq!(r.get(b"d"), None);
    }

    #[test]
    fn a_zero_generation_remembers_nothing() {
        let mut r = Recent::new(0);
        r.record(b"a".to_vec(), meta(2));
        assert_eq!(r.get(b"a"), None);
    }
}
