//! MVCC primitives over the `key` column family: the value format of a version, the lookup of
//! a key's newest version at a revision, and the forward scan of a key range at a revision.
//! Callers supply the iterator, so the same code serves snapshot reads and the writer.

use etcd_proto::mvccpb::KeyValue;
use prost::Message;
use rocksdb::DBRawIterator;

use crate::backend::CF_KEY;
use crate::keycodec::{escape, escape_into, PAST_KEY};
use crate::revision::{Revision, REVISION_LEN};
use crate::{Error, Result};

/// First byte of a `key`-family value: a live version.
pub const TAG_LIVE: u8 = 0;
/// First byte of a `key`-family value: a tombstone (the key was deleted at this revision).
pub const TAG_TOMBSTONE: u8 = 1;

/// Encodes a version for the `key` family: a tag byte, then the `KeyValue`.
pub fn encode_version(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(if tombstone { TAG_TOMBSTONE } else { TAG_LIVE });
    kv.encode(&mut out).expect("Vec grows as needed");
    out
}

/// Decodes a `key`-family value into (tombstone?, record).
pub fn decode_version(bytes: &[u8]) -> Result<(bool, KeyValue)> {
    let corrupt = |detail: String| Error::Corrupt { cf: CF_KEY, detail };
    let (&tag, rest) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    let kv = KeyValue::decode(rest).map_err(|e| corrupt(e.to_string()))?;
    match tag {
        TAG_LIVE => Ok((false, kv)),
        TAG_TOMBSTONE => Ok((true, kv)),
        other => Err(corrupt(format!("unknown tag {other}"))),
    }
}

/// The `key`-family key of one version.
pub fn version_key(user_key: &[u8], rev: Revision) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 2 + REVISION_LEN);
    escape_into(user_key, &mut k);
    k.extend_from_slice(&rev.encode_desc());
    k
}

/// Length of the escaped user key (terminator included) at the start of an encoded key.
pub fn escaped_len(encoded: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < encoded.len() {
        if encoded[i] == 0 {
            match encoded[i + 1] {
                0x00 => return Some(i + 2),
                0xFF => i += 2,
                _ => return None,
            }
        } else {
            i += 1;
        }
    }
    None
}

fn split_version_key(encoded: &[u8]) -> Result<(usize, Revision)> {
    let corrupt = || Error::Corrupt {
        cf: CF_KEY,
        detail: format!("malformed key {:?}", crate::EscapedKey(encoded)),
    };
    let n = escaped_len(encoded).ok_or_else(corrupt)?;
    let rev = Revision::decode_desc(&encoded[n..]).ok_or_else(corrupt)?;
    Ok((n, rev))
}

/// Where a range ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only the start key itself.
    Single,
    /// Every key at or after the start key (etcd's `range_end = "\0"`).
    Unbounded,
    /// Keys before this one (exclusive).
    Before(Vec<u8>),
}

impl RangeEnd {
    /// Interprets etcd's `range_end` field.
    pub fn from_request(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    /// Whether `key` lies in `[start, self)`.
    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end.as_slice(),
        }
    }

    /// An exclusive upper bound on encoded `key`-family keys for this range.
    pub fn upper_bound(&self, start: &[u8]) -> Option<Vec<u8>> {
        match self {
            RangeEnd::Single => {
                let mut b = escape(start);
                b.truncate(b.len() - 2);
                b.extend_from_slice(&PAST_KEY);
                Some(b)
            }
            RangeEnd::Unbounded => None,
            RangeEnd::Before(end) => Some(escape(end)),
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Live versions at the revision, in key order; at most `limit` of them (0 = all).
    pub kvs: Vec<KeyValue>,
    /// Number of live keys in the range at the revision, ignoring the limit.
    pub count: i64,
}

/// Scans `[start, end)` at revision `rev`, returning up to `limit` live versions (0 = no
/// limit) and the count of all live keys. With `count_only` no values are decoded.
///
/// The iterator must be total-order (`backend::read_options`), except for a single key, which
/// a one-key iterator (`backend::one_key_read_options`) also reads. One created with
/// `end.upper_bound(start)` as its upper bound reads less, with the same result.
pub fn scan(
    iter: &mut DBRawIterator<'_>,
    start: &[u8],
    end: &RangeEnd,
    rev: i64,
    limit: usize,
    count_only: bool,
) -> Result<Scan> {
    let mut out = Scan::default();
    match end {
        RangeEnd::Before(e) if e.as_slice() <= start => return Ok(out),
        RangeEnd::Single => {
            // One seek, to the key's newest version at `rev`: a version key, so an iterator
            // for one key (`backend::one_key_read_options`) skips the files without it.
            if let Some((_, false, kv)) = latest(iter, start, rev)? {
                out.count = 1;
                if !count_only {
                    out.kvs.push(kv);
                }
            }
            return Ok(out);
        }
        _ => {}
    }
    let at_rev = Revision::new(rev, i64::MAX).encode_desc();
    let start_esc = escape(start);
    // Escaped keys sort as raw keys do, so the end check needs no unescaping.
    let end_esc = match end {
        RangeEnd::Before(e) => Some(escape(e)),
        _ => None,
    };
    iter.seek(&start_esc);
    let mut seek_to = Vec::new();
    let mut prefix: Vec<u8> = Vec::new();
    loop {
        if !iter.valid() {
            iter.status()?;
            break;
        }
        let (n, version) = split_version_key(iter.key().expect("valid iterator has a key"))?;
        prefix.clear();
        prefix.extend_from_slice(&iter.key().expect("valid")[..n]);
        if end_esc.as_ref().is_some_and(|e| prefix >= *e) {
            break;
        }
        if version.main > rev {
            // Newer than the read revision: step, or jump, to this key's newest version at
            // `rev`.
            if !step_to_rev(iter, &prefix, rev)? {
                seek_to.clear();
                seek_to.extend_from_slice(&prefix);
                seek_to.extend_from_slice(&at_rev);
                iter.seek(&seek_to);
            }
            if !iter.valid() {
                iter.status()?;
                break;
            }
            if !iter.key().expect("valid").starts_with(&prefix) {
                continue; // no version of this key at `rev`; now at the next key
            }
        }
        let value = iter.value().expect("valid iterator has a value");
        if value.first() == Some(&TAG_LIVE) {
            out.count += 1;
            if !count_only && (limit == 0 || out.kvs.len() < limit) {
                out.kvs.push(decode_version(value)?.1);
            }
        }
        // Move past this key's older versions.
        if !step_past_key(iter, &prefix) {
            seek_to.clear();
            seek_to.extend_from_slice(&prefix[..prefix.len() - 2]);
            seek_to.extend_from_slice(&PAST_KEY);
            iter.seek(&seek_to);
        }
    }
    Ok(out)
}

/// How many entries a scan steps over with `next` before it seeks instead. A seek searches
/// every level of the LSM tree (memtables, each level-0 file, each level's index and block),
/// a step mostly moves within a block, and between compactions a key has few versions: a
/// list of a Kubernetes resource under updates spent most of its CPU in seeks past them.
const STEPS_BEFORE_SEEK: usize = 4;

/// From a version of the key `prefix` newer than `rev`, steps to the key's newest version at
/// or below `rev`, or past the key if it has none there. `false`: not within
/// `STEPS_BEFORE_SEEK` steps (the iterator is somewhere in the key's versions; seek).
fn step_to_rev(iter: &mut DBRawIterator<'_>, prefix: &[u8], rev: i64) -> Result<bool> {
    for _ in 0..STEPS_BEFORE_SEEK {
        iter.next();
        let Some(key) = iter.key() else {
            return Ok(true); // the end (or an error, which the caller checks)
        };
        if !key.starts_with(prefix) {
            return Ok(true);
        }
        if split_version_key(key)?.1.main <= rev {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Steps past the remaining (older) versions of the key `prefix`. `false`: more than
/// `STEPS_BEFORE_SEEK` of them (seek past the key instead).
fn step_past_key(iter: &mut DBRawIterator<'_>, prefix: &[u8]) -> bool {
    for _ in 0..STEPS_BEFORE_SEEK {
        iter.next();
        match iter.key() {
            Some(key) if key.starts_with(prefix) => {}
            _ => return true,
        }
    }
    false
}

/// Returns the newest version of `key` at or below `rev` (tombstones included), with its
/// revision, or `None` if the key has no version there.
pub fn latest(
    iter: &mut DBRawIterator<'_>,
    key: &[u8],
    rev: i64,
) -> Result<Option<(Revision, bool, KeyValue)>> {
    let seek_to = version_key(key, Revision::new(rev, i64::MAX));
    iter.seek(&seek_to);
    if !iter.valid() {
        iter.status()?;
        return Ok(None);
    }
    let k = iter.key().expect("valid");
    let n = seek_to.len() - REVISION_LEN;
    if k.len() != seek_to.len() || k[..n] != seek_to[..n] {
        return Ok(None);
    }
    let (_, version) = split_version_key(k)?;
    let (tombstone, kv) = decode_version(iter.value().expect("valid"))?;
    Ok(Some((version, tombstone, kv)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use etcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    use crate::{range, BackendOptions, Store, WriteRequest};

    /// Keys with one to twelve versions (more and fewer than a scan steps over before it
    /// seeks), read at every revision as ranges, single keys and limited pages, against what
    /// was written.
    #[test]
    fn reads_at_every_revision_step_or_seek_past_versions_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
        // key → [(revision, value or deleted)]
        type Written = Vec<(i64, Option<Vec<u8>>)>;
        let mut history: BTreeMap<&str, Written> = BTreeMap::new();
        let plan: [(&str, usize, bool); 5] = [
            ("a", 12, false),
            ("b", 1, false),
            ("c", 3, true),
            ("d", 6, false),
            ("e", 5, true),
        ];
        for round in 0..12 {
            if round == 6 {
                // Older versions in a table file, newer ones in the memtable.
                writer.sync().unwrap();
            }
            for &(key, versions, deleted) in &plan {
                if round < versions {
                    let value = format!("{key}{round}").into_bytes();
                    writer
                        .apply(&WriteRequest::Put(PutRequest {
                            key: key.into(),
                            value: value.clone().into(),
                            ..Default::default()
                        }))
                        .unwrap();
                    history
                        .entry(key)
                        .or_default()
                        .push((writer.revision(), Some(value)));
                } else if round == versions && deleted {
                    writer
                        .apply(&WriteRequest::DeleteRange(DeleteRangeRequest {
                            key: key.into(),
                            ..Default::default()
                        }))
                        .unwrap();
                    history
                        .entry(key)
                        .or_default()
                        .push((writer.revision(), None));
                }
            }
        }
        writer.publish();
        let live_at = |rev: i64| -> Vec<(Vec<u8>, i64, Vec<u8>)> {
            history
                .iter()
                .filter_map(|(key, versions)| {
                    let (mod_rev, value) = versions.iter().rev().find(|(r, _)| *r <= rev)?;
                    Some((key.as_bytes().to_vec(), *mod_rev, value.clone()?))
                })
                .collect()
        };
        let read = |key: &str, end: &[u8], rev: i64, limit: i64| {
            let resp = range::execute(
                &store,
                &RangeRequest {
                    key: key.into(),
                    range_end: end.to_vec(),
                    revision: rev,
                    limit,
                    ..Default::default()
                },
            )
            .unwrap();
            let kvs: Vec<_> = resp
                .kvs
                .into_iter()
                .map(|kv| (kv.key.to_vec(), kv.mod_revision, kv.value.to_vec()))
                .collect();
            (kvs, resp.count)
        };
        for rev in 1..=writer.revision() {
            let want = live_at(rev);
            assert_eq!(
                read("a", b"z", rev, 0),
                (want.clone(), want.len() as i64),
                "rev {rev}"
            );
            let page: Vec<_> = want.iter().take(2).cloned().collect();
            assert_eq!(
                read("a", b"z", rev, 2),
                (page, want.len() as i64),
                "rev {rev}"
            );
            for (key, _, _) in &plan {
                let one: Vec<_> = want
                    .iter()
                    .filter(|kv| kv.0 == key.as_bytes())
                    .cloned()
                    .collect();
                let n = one.len() as i64;
                assert_eq!(read(key, b"", rev, 0), (one, n), "{key} at {rev}");
            }
        }
    }
}
