//! A small in-memory model of etcd's MVCC semantics: every version of every key, kept in
//! plain maps, against which the RocksDB store is checked.

use std::collections::BTreeMap;

use etcd_proto::mvccpb::KeyValue;

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub rev: i64,
    pub compacted: i64,
    /// key → versions in revision order; `None` is a deletion.
    pub history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ModelError {
    Compacted,
    FutureRev,
}

impl Model {
    pub fn new() -> Self {
        // etcd's empty store: revision 1, never compacted (-1).
        Model {
            rev: 1,
            compacted: -1,
            ..Default::default()
        }
    }

    /// Versions a store holds once compacted physically at `rev`: every version above it,
    /// and each key's newest version at or below it if that one is live.
    pub fn held_after_compaction(&self, rev: i64) -> u64 {
        self.history
            .values()
            .map(|versions| {
                let above = versions.iter().filter(|(r, _)| *r > rev).count();
                let kept = versions
                    .iter()
                    .rev()
                    .find(|(r, _)| *r <= rev)
                    .is_some_and(|(_, kv)| kv.is_some());
                (above + usize::from(kept)) as u64
            })
            .sum()
    }

    pub fn live_at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.clone())
    }

    fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        match end {
            [] => key == start,
            [0] => key >= start,
            e => key >= start && key < e,
        }
    }

    pub fn range(&self, start: &[u8], end: &[u8], rev: i64) -> Result<Vec<KeyValue>, ModelError> {
        let rev = if rev <= 0 { self.rev } else { rev };
        if rev > self.rev {
            return Err(ModelError::FutureRev);
        }
        if rev < self.compacted {
            return Err(ModelError::Compacted);
        }
        Ok(self
            .history
            .keys()
            .filter(|k| Self::in_range(k, start, end))
            .filter_map(|k| self.live_at(k, rev))
            .collect())
    }

    /// Applies puts and deletes as one revision (one request); returns the new revision.
    pub fn write(&mut self, ops: &[(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)]) -> i64 {
        let next = self.rev + 1;
        let mut changed = false;
        for (key, value, del_end) in ops {
            match value {
                Some(v) => {
                    let prev = self.live_at(key, next);
                    let kv = KeyValue {
                        key: key.clone().into(),
                        create_revision: prev.as_ref().map_or(next, |p| p.create_revision),
                        mod_revision: next,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: v.clone().into(),
                        lease: 0,
                    };
                    self.history
                        .entry(key.clone())
                        .or_default()
                        .push((next, Some(kv)));
                    changed = true;
                }
                None => {
                    let end = del_end.clone().unwrap_or_default();
                    let victims: Vec<Vec<u8>> = self
                        .history
                        .keys()
                        .filter(|k| Self::in_range(k, key, &end))
                        .filter(|k| self.live_at(k, next).is_some())
                        .cloned()
                        .collect();
                    for k in victims {
                        self.history.get_mut(&k).expect("exists").push((next, None));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.rev = next;
        }
        self.rev
    }

    pub fn compact(&mut self, rev: i64) -> Result<(), ModelError> {
        if rev <= self.compacted {
            return Err(ModelError::Compacted);
        }
        if rev > self.rev {
            return Err(ModelError::FutureRev);
        }
        self.compacted = rev;
        Ok(())
    }
}
