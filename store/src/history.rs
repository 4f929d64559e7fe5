//! Reading history as watch events: every change with revision in [from, to], in revision
//! order, for catching up a watcher that starts in the past or fell behind the live stream;
//! and the `prev_kv`s of live events, which the write path leaves out (`Store::prev_kvs`).

use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};

use crate::backend::{CF_KEY, CF_REV};
use crate::mvcc::{self, decode_version, escaped_len, version_key};
use crate::revision::Revision;
use crate::store::Store;
use crate::{Error, Result};

/// A batch of history.
#[derive(Debug, Default)]
pub struct History {
    /// Events in revision order, `prev_kv` filled when the previous version is still stored.
    pub events: Vec<Event>,
    /// The first revision not yet read (`to + 1` when the batch reached `to`).
    pub next: i64,
}

impl Store {
    /// Each event's `prev_kv`, read as etcd's watch reads it: the key's live version at the
    /// revision before the event's (so not an earlier change in the same txn). None for a put
    /// that creates the key, and none where that revision is compacted.
    pub fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>> {
        let view = self.view();
        // Loaded after the snapshot: anything at or above it is still in the snapshot.
        let compacted = self.compacted_revision();
        let mut versions = view.one_key_iter(None);
        events
            .iter()
            .map(|e| {
                let Some(kv) = &e.kv else { return Ok(None) };
                let creates =
                    e.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
                let before = kv.mod_revision - 1;
                if creates || before < compacted {
                    return Ok(None);
                }
                Ok(match mvcc::latest(&mut versions, &kv.key, before)? {
                    Some((_, false, prev)) => Some(prev),
                    _ => None,
                })
            })
            .collect()
    }

    /// Reads events with revisions in `[from, to]` whose key satisfies `wanted`, stopping at a
    /// revision boundary once `max_events` have been read. Fails with `Compacted` if `from`
    /// is below the compacted revision.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<History> {
        let view = self.view();
        let compacted = self.compacted_revision();
        if from < compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted,
            });
        }
        let mut revs = view.iter(CF_REV, Some(Revision::new(to + 1, 0).encode().to_vec()));
        let mut versions = view.one_key_iter(None);
        revs.seek(Revision::new(from, 0).encode());
        let mut out = History {
            events: Vec::new(),
            next: to + 1,
        };
        let mut last_main = from;
        while revs.valid() {
            let r = Revision::decode(revs.key().expect("valid")).ok_or_else(|| Error::Corrupt {
                cf: CF_REV,
                detail: "malformed revision".into(),
            })?;
            if out.events.len() >= max_events && r.main != last_main {
                out.next = r.main;
                return Ok(out);
            }
            last_main = r.main;
            let key = revs.value().expect("valid");
            if wanted(key) {
                out.events
                    .push(read_event(&mut versions, key, r, compacted)?);
            }
            revs.next();
        }
        revs.status()?;
        Ok(out)
    }
}

/// Reads the change at `r` with its `prev_kv`: as etcd defines it, the key's live version at
/// revision `r.main - 1` (so not an earlier change in the same txn), if not compacted away,
/// and none for a put that creates the key.
fn read_event(
    versions: &mut rocksdb::DBRawIterator<'_>,
    key: &[u8],
    r: Revision,
    compacted: i64,
) -> Result<Event> {
    let vk = version_key(key, r);
    versions.seek(&vk);
    if !versions.valid() || versions.key().expect("valid") != &vk[..] {
        versions.status()?;
        return Err(Error::Corrupt {
            cf: CF_KEY,
            detail: format!("revision {r} has no version"),
        });
    }
    let (tombstone, kv) = decode_version(versions.value().expect("valid"))?;
    // Older versions follow, newest first; skip those from the same txn.
    let n = vk.len() - crate::revision::REVISION_LEN;
    let mut prev_kv = None;
    versions.next();
    let creates = !tombstone && kv.create_revision == kv.mod_revision;
    while !creates && r.main > compacted && versions.valid() {
        let k = versions.key().expect("valid");
        if escaped_len(k) != Some(n) || k[..n] != vk[..n] {
            break;
        }
        let older = Revision::decode_desc(&k[n..]).ok_or_else(|| Error::Corrupt {
            cf: CF_KEY,
            detail: "malformed revision".into(),
        })?;
        if older.main < r.main {
            let (prev_tomb, prev) = decode_version(versions.value().expect("valid"))?;
            if !prev_tomb {
                prev_kv = Some(prev);
            }
            break;
        }
        versions.next();
    }
    let r#type = if tombstone {
        EventType::Delete
    } else {
        EventType::Put
    } as i32;
    Ok(Event {
        r#type,
        kv: Some(kv),
        prev_kv,
    })
}
