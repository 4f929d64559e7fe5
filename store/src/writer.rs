//! `Writer`: the single owner of the store's write path. Each request becomes one RocksDB
//! write batch (its changes, the new current revision, lease attachments) written to the
//! memtables only; [`Writer::sync`] (a flush) is the durability point and [`Writer::publish`]
//! makes the written revisions visible to readers. Raft calls `sync` only where it must: its
//! log is durable, and re-applies whatever a crash took from the memtables.

use std::sync::atomic::Ordering;

use etcd_proto::etcdserverpb::{AlarmMember, AlarmResponse};
use prost::Message;
use rocksdb::DB;

use crate::backend::{self, CF_LEASE, CF_META};
use crate::change::Change;
use crate::recent::Recent;
use crate::request::{Applied, WriteRequest, WriteResponse};
use crate::store::Store;
use crate::{Error, Result};

/// The store's only writer; see the module comment.
pub struct Writer {
    pub(crate) store: Store,
    /// Revision of the last written (not necessarily published) request.
    pub(crate) rev: i64,
    /// The compacted revision as the write path sees it; readers see it (through the store)
    /// only from `publish` on, together with the revisions it may have compacted past, so a
    /// reader never finds the store compacted beyond its published revision.
    pub(crate) compacted: i64,
    /// The keys written lately, with their newest versions' fields (see `recent`).
    pub(crate) recent: Recent,
}

impl Writer {
    pub(crate) fn new(store: Store, rev: i64, recent_keys: usize) -> Self {
        let compacted = store.compacted_revision();
        Writer {
            store,
            rev,
            compacted,
            recent: Recent::new(recent_keys),
        }
    }

    /// The revision of the last applied request, published or not.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// A read handle on the same store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies one request: one atomic batch, written but not yet fsynced or visible.
    /// On error nothing was written.
    pub fn apply(&mut self, req: &WriteRequest) -> Result<Applied> {
        self.apply_with(req, &[])
    }

    /// Like [`Writer::apply`], with `meta` records (name, value) written to the `meta` family
    /// in the same atomic batch — the Raft layer records the entry's log id this way, so after
    /// a crash the store and its applied index always agree.
    pub fn apply_with(&mut self, req: &WriteRequest, meta: &[(&[u8], &[u8])]) -> Result<Applied> {
        let db = &self.store.inner.db;
        let mut w = Change::new(db, self.rev, self.compacted, &self.recent);
        let response = match req {
            WriteRequest::Put(p) => {
                if p.lease != 0 && !lease_exists(db, p.lease)? {
                    return Err(Error::LeaseNotFound(p.lease));
                }
                WriteResponse::Put(w.put(p)?)
            }
            WriteRequest::DeleteRange(d) => WriteResponse::DeleteRange(w.delete_range(d)?),
            WriteRequest::Txn(t) => WriteResponse::Txn(w.txn(t)?),
            WriteRequest::Compact { revision } => {
                self.check_compact(*revision)?;
                w.batch.put_cf(
                    cf(db, CF_META),
                    backend::META_SCHEDULED_COMPACT,
                    backend::encode_i64(*revision),
                );
                WriteResponse::Compact
            }
            WriteRequest::LeaseGrant { id, ttl_secs } => {
                if lease_exists(db, *id)? {
                    return Err(Error::LeaseExists(*id));
                }
                w.batch.put_cf(
                    cf(db, CF_LEASE),
                    backend::lease_key(*id),
                    backend::encode_i64(*ttl_secs),
                );
                WriteResponse::LeaseGrant {
                    id: *id,
                    ttl_secs: *ttl_secs,
                }
            }
            WriteRequest::LeaseRevoke { id } => {
                if !lease_exists(db, *id)? {
                    return Err(Error::LeaseNotFound(*id));
                }
                for key in self.store.lease_keys_latest(*id)? {
                    w.delete_key(&key)?;
                    w.batch
                        .delete_cf(cf(db, CF_LEASE), backend::lease_attachment(*id, &key));
                }
                w.batch.delete_cf(cf(db, CF_LEASE), backend::lease_key(*id));
                WriteResponse::LeaseRevoke
            }
            WriteRequest::Alarm {
                activate,
                member_id,
                alarm,
            } => {
                let raw = db.get_cf(cf(db, CF_META), backend::META_ALARMS)?;
                let mut alarms = decode_alarms(raw.as_deref());
                let entry = (*member_id, *alarm);
                let present = alarms.contains(&entry);
                let changed = match (*activate, present) {
                    (true, false) => {
                        alarms.push(entry);
                        alarms.sort_unstable();
                        true
                    }
                    (false, true) => {
                        alarms.retain(|a| *a != entry);
                        true
                    }
                    _ => false,
                };
                w.batch.put_cf(
                    cf(db, CF_META),
                    backend::META_ALARMS,
                    encode_alarms(&alarms),
                );
                // As etcd: activation reports the alarm; deactivation only one that was raised.
                let reported = *activate || changed;
                let (member_id, alarm) = entry;
                WriteResponse::Alarm(if reported {
                    vec![AlarmMember { member_id, alarm }]
                } else {
                    vec![]
                })
            }
        };
        let changed = w.sub > 0;
        let new_rev = if changed { w.rev } else { self.rev };
        if changed {
            w.batch.put_cf(
                cf(db, CF_META),
                backend::META_CURRENT_REV,
                backend::encode_i64(new_rev),
            );
        }
        for (name, value) in meta {
            w.batch.put_cf(cf(db, CF_META), name, value);
        }
        let (batch, events, states) = w.into_parts();
        db.write_opt(batch, &backend::write_options())?;
        for (key, state) in states {
            self.recent.record(key, state);
        }
        self.rev = new_rev;
        if let WriteRequest::Compact { revision } = req {
            self.compacted = *revision;
        }
        Ok(Applied {
            response,
            revision: new_rev,
            events,
        })
    }

    fn check_compact(&self, revision: i64) -> Result<()> {
        let compacted = self.compacted;
        if revision <= compacted {
            return Err(Error::Compacted {
                requested: revision,
                compacted,
            });
        }
        if revision > self.rev {
            return Err(Error::FutureRev {
                requested: revision,
                current: self.rev,
            });
        }
        Ok(())
    }

    /// Writes `meta` records (name, value) alone, atomically, not yet durably.
    pub fn write_meta(&mut self, meta: &[(&[u8], &[u8])]) -> Result<()> {
        let db = &self.store.inner.db;
        let mut batch = rocksdb::WriteBatch::default();
        for (name, value) in meta {
            batch.put_cf(cf(db, CF_META), name, value);
        }
        db.write_opt(batch, &backend::write_options())?;
        Ok(())
    }

    /// Deletes `meta` records by name, atomically, not yet durably.
    pub fn delete_meta(&mut self, names: &[&[u8]]) -> Result<()> {
        let db = &self.store.inner.db;
        let mut batch = rocksdb::WriteBatch::default();
        for name in names {
            batch.delete_cf(cf(db, CF_META), name);
        }
        db.write_opt(batch, &backend::write_options())?;
        Ok(())
    }

    /// Makes every write so far durable in the store itself: one flush of all the memtables,
    /// together. Costly (it writes SST files); Raft calls it only at start-up, and snapshots
    /// and restores flush on their own.
    pub fn sync(&self) -> Result<()> {
        backend::flush_all(&self.store.inner.db)
    }

    /// Makes every applied revision visible to readers: once the writes are durable somewhere
    /// — in Raft's log, which re-applies them after a crash, or, for a store used alone, after
    /// [`Writer::sync`].
    pub fn publish(&self) {
        self.store
            .inner
            .published
            .store(self.rev, Ordering::Release);
        self.store
            .inner
            .compacted
            .store(self.compacted, Ordering::Release);
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family exists")
}

pub(crate) fn lease_exists(db: &DB, id: i64) -> Result<bool> {
    Ok(db
        .get_pinned_cf(cf(db, CF_LEASE), backend::lease_key(id))?
        .is_some())
}

pub(crate) fn decode_alarms(raw: Option<&[u8]>) -> Vec<(u64, i32)> {
    raw.and_then(|b| AlarmResponse::decode(b).ok())
        .map(|r| {
            r.alarms
                .into_iter()
                .map(|a| (a.member_id, a.alarm))
                .collect()
        })
        .unwrap_or_default()
}

fn encode_alarms(alarms: &[(u64, i32)]) -> Vec<u8> {
    AlarmResponse {
        header: None,
        alarms: alarms
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect(),
    }
    .encode_to_vec()
}
