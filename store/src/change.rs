//! `Change`: the changes of one write request at one revision, built in a RocksDB write batch
//! before anything is written: puts, deletes, lease attachments and watch events, and txns with
//! their compares, checks and nested branches. Reads inside a txn see its own earlier writes
//! through an overlay, as etcd's write txns do. A write reads only the fields of a key's
//! newest version that it needs (`recent` usually has them), and its watch events carry no
//! `prev_kv`: watchers that ask for it read it with `Store::prev_kvs`, as etcd's do.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use etcd_proto::etcdserverpb::compare::CompareTarget;
use etcd_proto::etcdserverpb::{
    request_op, response_op, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use rocksdb::{DBRawIterator, WriteBatch, DB};

use crate::backend::{self, CF_KEY, CF_LEASE, CF_REV};
use crate::mvcc::{self, RangeEnd};
use crate::range::{self, RangeSource};
use crate::recent::{Meta, Recent};
use crate::revision::Revision;
use crate::store::Store;
use crate::writer::{cf, lease_exists};
use crate::{compare, Error, Result};

/// The changes of one request, at one revision, built up before they are written.
pub(crate) struct Change<'a> {
    db: &'a DB,
    /// Revision before this request.
    base: i64,
    /// Revision this request writes at.
    pub(crate) rev: i64,
    /// Compacted revision when the request began.
    compacted: i64,
    /// Next sub-revision; also the number of key changes so far.
    pub(crate) sub: i64,
    pub(crate) batch: WriteBatch,
    /// Keys this request changed: `None` = deleted. Reads inside a txn consult it first.
    overlay: BTreeMap<Bytes, Option<KeyValue>>,
    /// Keys written lately, as of `base`: consulted before the store.
    recent: &'a Recent,
    /// What this request read from the store about keys `recent` did not know, as of `base`:
    /// read once per request, and remembered after it.
    learned: RefCell<HashMap<Vec<u8>, Option<Meta>>>,
    pub(crate) events: Vec<Event>,
    /// One iterator over the `key` family serves every read of the request: creating one
    /// costs more than a seek. (It reads the store as of its creation, which is the state
    /// before this request: nothing is written until the request is done.)
    key_iter: RefCell<Option<DBRawIterator<'a>>>,
}

impl<'a> Change<'a> {
    pub(crate) fn new(db: &'a DB, base: i64, compacted: i64, recent: &'a Recent) -> Self {
        Change {
            db,
            recent,
            learned: RefCell::new(HashMap::new()),
            base,
            rev: base + 1,
            compacted,
            sub: 0,
            batch: WriteBatch::default(),
            overlay: BTreeMap::new(),
            events: Vec::new(),
            key_iter: RefCell::new(None),
        }
    }

    /// The batch to write, the events, and each key's state after the request (for
    /// `Recent`): those it read first, then those it changed, which supersede them.
    pub(crate) fn into_parts(self) -> (WriteBatch, Vec<Event>, Vec<(Vec<u8>, Option<Meta>)>) {
        let mut states: Vec<_> = self.learned.into_inner().into_iter().collect();
        states.extend(
            self.overlay
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.as_ref().map(Meta::of))),
        );
        (self.batch, self.events, states)
    }

    /// The revision reads inside this request see: etcd's `beginRev`, plus one once written.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.rev
        } else {
            self.base
        }
    }

    /// Runs `read` with the request's iterator over the `key` family.
    fn with_iter<R>(&self, read: impl FnOnce(&mut DBRawIterator<'a>) -> R) -> R {
        let mut slot = self.key_iter.borrow_mut();
        let iter = slot.get_or_insert_with(|| {
            self.db
                .raw_iterator_cf_opt(cf(self.db, CF_KEY), backend::read_options())
        });
        read(iter)
    }

    /// The live version of `key` as this request sees it.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.get_before(key)
    }

    /// The live version of `key` before this request.
    fn get_before(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(
            match self.with_iter(|iter| mvcc::latest(iter, key, self.base))? {
                Some((_, false, kv)) => Some(kv),
                _ => None,
            },
        )
    }

    /// The newest version of `key` as this request sees it, without its value: from the
    /// request's own writes, else from what the writer remembers, else from the store.
    fn meta(&self, key: &[u8]) -> Result<Option<Meta>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.as_ref().map(Meta::of));
        }
        if let Some(known) = self.recent.get(key) {
            return Ok(known);
        }
        if let Some(known) = self.learned.borrow().get(key) {
            return Ok(*known);
        }
        let read = self.get_before(key)?.as_ref().map(Meta::of);
        self.learned.borrow_mut().insert(key.to_vec(), read);
        Ok(read)
    }

    /// Live versions in `[key, range_end)` as this request sees them, in key order.
    fn live_in_range(&self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let end = RangeEnd::from_request(range_end);
        let base = self
            .with_iter(|iter| mvcc::scan(iter, key, &end, self.base, 0, false))?
            .kvs;
        Ok(merge_overlay(base, &self.overlay, key, &end))
    }

    pub(crate) fn put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        // The previous value is read only when the request needs it.
        let prev = if p.ignore_value || p.prev_kv {
            self.get(&p.key)?
        } else {
            None
        };
        let meta = match &prev {
            Some(kv) => Some(Meta::of(kv)),
            None if p.ignore_value || p.prev_kv => None,
            None => self.meta(&p.key)?,
        };
        if (p.ignore_value || p.ignore_lease) && meta.is_none() {
            return Err(Error::KeyNotFound);
        }
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&meta, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: meta.map_or(self.rev, |m| m.create_revision),
            mod_revision: self.rev,
            version: meta.map_or(1, |m| m.version + 1),
            value,
            lease,
        };
        let prev_lease = meta.map_or(0, |m| m.lease);
        if prev_lease != 0 && prev_lease != lease {
            self.batch.delete_cf(
                cf(self.db, CF_LEASE),
                backend::lease_attachment(prev_lease, &p.key),
            );
        }
        if lease != 0 {
            self.batch.put_cf(
                cf(self.db, CF_LEASE),
                backend::lease_attachment(lease, &p.key),
                [],
            );
        }
        self.write_version(&kv, false);
        // Events leave `prev_kv` to the watchers that ask for it (`Store::prev_kvs`).
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: None,
        });
        self.overlay.insert(p.key.clone(), Some(kv));
        Ok(PutResponse {
            header: Some(header(self.rev)),
            prev_kv: prev.filter(|_| p.prev_kv),
        })
    }

    pub(crate) fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let mut prev_kvs = Vec::new();
        let deleted = if d.range_end.is_empty() && !d.prev_kv {
            // One key, and its previous value is not wanted.
            match self.meta(&d.key)? {
                Some(m) => {
                    self.delete_live(&d.key, m.lease);
                    1
                }
                None => 0,
            }
        } else {
            let victims = self.live_in_range(&d.key, &d.range_end)?;
            for kv in &victims {
                self.delete_live(&kv.key, kv.lease);
            }
            let deleted = victims.len() as i64;
            if d.prev_kv {
                prev_kvs = victims;
            }
            deleted
        };
        let revision = if self.sub > 0 { self.rev } else { self.base };
        Ok(DeleteRangeResponse {
            header: Some(header(revision)),
            deleted,
            prev_kvs,
        })
    }

    /// Deletes `key` if it is live (used by lease revocation).
    pub(crate) fn delete_key(&mut self, key: &[u8]) -> Result<()> {
        if let Some(m) = self.meta(key)? {
            self.delete_live(key, m.lease);
        }
        Ok(())
    }

    /// Deletes `key`, live with `lease`.
    fn delete_live(&mut self, key: &[u8], lease: i64) {
        if lease != 0 {
            self.batch
                .delete_cf(cf(self.db, CF_LEASE), backend::lease_attachment(lease, key));
        }
        let key = Bytes::copy_from_slice(key);
        let tomb = KeyValue {
            key: key.clone(),
            mod_revision: self.rev,
            ..Default::default()
        };
        self.write_version(&tomb, true);
        self.overlay.insert(key, None);
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(tomb),
            prev_kv: None,
        });
    }

    fn write_version(&mut self, kv: &KeyValue, tombstone: bool) {
        let rev = Revision::new(self.rev, self.sub);
        self.sub += 1;
        self.batch.put_cf(
            cf(self.db, CF_KEY),
            mvcc::version_key(&kv.key, rev),
            mvcc::encode_version(kv, tombstone),
        );
        self.batch
            .put_cf(cf(self.db, CF_REV), rev.encode(), &kv.key);
    }

    pub(crate) fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse> {
        // As etcd: choose every branch and check the chosen puts and ranges against the
        // state before the txn, then execute; a failed check changes nothing.
        let path = self.txn_path(t)?;
        self.check_txn(t, &path, &mut 0, Check::Puts)?;
        self.check_txn(t, &path, &mut 0, Check::Ranges)?;
        let resp = self.exec_txn(t, &path, &mut 0)?;
        Ok(resp)
    }

    fn txn_path(&self, t: &TxnRequest) -> Result<Vec<bool>> {
        let mut ok = true;
        for c in &t.compare {
            let kvs = if c.range_end.is_empty() && c.target != CompareTarget::Value as i32 {
                // One key, compared on something other than its value.
                let meta = self.meta(&c.key)?;
                meta.map(|m| m.without_value(&c.key)).into_iter().collect()
            } else {
                self.live_in_range(&c.key, &c.range_end)?
            };
            if !compare::holds(c, &kvs) {
                ok = false;
                break;
            }
        }
        let mut path = vec![ok];
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                path.extend(self.txn_path(inner)?);
            }
        }
        Ok(path)
    }

    /// One of etcd's two checking passes over the chosen branches (all puts, then all ranges).
    fn check_txn(&self, t: &TxnRequest, path: &[bool], at: &mut usize, pass: Check) -> Result<()> {
        let ops = if path[*at] { &t.success } else { &t.failure };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestTxn(inner)) => {
                    *at += 1;
                    self.check_txn(inner, path, at, pass)?;
                }
                Some(request_op::Request::RequestPut(p)) if pass == Check::Puts => {
                    if (p.ignore_value || p.ignore_lease) && self.meta(&p.key)?.is_none() {
                        return Err(Error::KeyNotFound);
                    }
                    if p.lease != 0 && !lease_exists(self.db, p.lease)? {
                        return Err(Error::LeaseNotFound(p.lease));
                    }
                }
                Some(request_op::Request::RequestRange(r)) if pass == Check::Ranges => {
                    if r.revision > self.base {
                        return Err(Error::FutureRev {
                            requested: r.revision,
                            current: self.base,
                        });
                    }
                    if r.revision > 0 && r.revision < self.compacted {
                        return Err(Error::Compacted {
                            requested: r.revision,
                            compacted: self.compacted,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn exec_txn(&mut self, t: &TxnRequest, path: &[bool], at: &mut usize) -> Result<TxnResponse> {
        let succeeded = path[*at];
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.exec_op(op, path, at)?);
        }
        // Only the outermost txn's header carries a revision (the caller fills it), as etcd.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    fn exec_op(&mut self, op: &RequestOp, path: &[bool], at: &mut usize) -> Result<ResponseOp> {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(self.txn_range(r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(self.put(p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(self.delete_range(d)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                *at += 1;
                response_op::Response::ResponseTxn(self.exec_txn(inner, path, at)?)
            }
            None => return Ok(ResponseOp { response: None }),
        };
        Ok(ResponseOp {
            response: Some(response),
        })
    }

    fn txn_range(&self, r: &RangeRequest) -> Result<etcd_proto::etcdserverpb::RangeResponse> {
        range::execute(&TxnSource { change: self }, r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// Reads inside a txn: the store as of the txn's start, overlaid with the txn's own writes.
struct TxnSource<'c, 'a> {
    change: &'c Change<'a>,
}

impl RangeSource for TxnSource<'_, '_> {
    fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(mvcc::Scan, i64)> {
        let c = self.change;
        let read_rev = c.read_rev();
        let rev = if rev <= 0 { read_rev } else { rev };
        let end = RangeEnd::from_request(range_end);
        let touches_overlay = rev == read_rev && c.overlay.keys().any(|k| end.contains(key, k));
        if !touches_overlay {
            return Ok((
                c.with_iter(|iter| {
                    mvcc::scan(iter, key, &end, rev.min(c.base), limit, count_only)
                })?,
                read_rev,
            ));
        }
        let base = c
            .with_iter(|iter| mvcc::scan(iter, key, &end, c.base, 0, false))?
            .kvs;
        let mut kvs = merge_overlay(base, &c.overlay, key, &end);
        let count = kvs.len() as i64;
        if count_only {
            kvs.clear();
        } else if limit > 0 {
            kvs.truncate(limit);
        }
        Ok((mvcc::Scan { kvs, count }, read_rev))
    }
}

fn merge_overlay(
    base: Vec<KeyValue>,
    overlay: &BTreeMap<Bytes, Option<KeyValue>>,
    start: &[u8],
    end: &RangeEnd,
) -> Vec<KeyValue> {
    if overlay.is_empty() {
        return base;
    }
    let mut merged: BTreeMap<Bytes, KeyValue> =
        base.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for (k, v) in overlay.iter().filter(|(k, _)| end.contains(start, k)) {
        match v {
            Some(kv) => merged.insert(k.clone(), kv.clone()),
            None => merged.remove(k),
        };
    }
    merged.into_values().collect()
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

impl Store {
    /// Keys attached to lease `id` including writes not yet published (writer only).
    pub(crate) fn lease_keys_latest(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let db = &self.inner.db;
        crate::store::collect_lease_keys(&mut db.raw_iterator_cf(cf(db, CF_LEASE)), id)
    }
}
