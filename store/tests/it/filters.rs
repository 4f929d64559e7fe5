//! Reads over many table files agree with a model whatever the keys look like. The `key`
//! family's filters answer for one user key (a version key without its revision), and reads
//! of one key consult them: this checks that no read is ever answered by a filter for the
//! wrong key. The keys share prefixes, hold 0x00 and 0xFF bytes and run longer than a
//! revision; a range start whose last 16 escaped bytes, taken as a revision, leave another
//! key's prefix is among them.

use std::collections::BTreeMap;

use etcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use store::{BackendOptions, Store, WriteRequest};

/// key → [(revision, value, or None once deleted)]
type Model = BTreeMap<Vec<u8>, Vec<(i64, Option<Vec<u8>>)>>;

/// Keys written (some of them deleted again).
const KEYS: [&[u8]; 11] = [
    b"a",
    b"a\0",
    b"a\0\0",
    b"a\x01",
    b"a\xff",
    b"ab",
    b"abcdefghij",
    b"abcdefghijklmnopqrstuvwxyz",
    b"abcdefghijklmnopqrstuvwxyz0",
    b"\0",
    b"\xff\xff",
];

/// Keys never written, read and used as range ends. `abcdefghijkm` ends a range from the
/// 26-byte key just past the 12 bytes a revision-sized cut would leave of it.
const ABSENT: [&[u8]; 6] = [
    b"aa",
    b"a\0\x01",
    b"abcdefghijkm",
    b"abcdefghijklmnopqrstuvwxy",
    b"b",
    b"\0\0",
];

fn live_at(
    model: &Model,
    rev: i64,
    start: &[u8],
    end: Option<&[u8]>,
) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
    model
        .iter()
        .filter(|(k, _)| match end {
            None => k.as_slice() == start,
            // etcd's "\0" ends no range: every key from the start on.
            Some([0]) => k.as_slice() >= start,
            Some(end) => k.as_slice() >= start && k.as_slice() < end,
        })
        .filter_map(|(k, versions)| {
            let (r, value) = versions.iter().rev().find(|(r, _)| *r <= rev)?;
            Some((k.clone(), *r, value.clone()?))
        })
        .collect()
}

#[test]
fn reads_across_many_table_files_agree_with_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    let mut model = Model::new();
    for round in 0..6usize {
        for (i, key) in KEYS.iter().enumerate() {
            // Each key in some rounds only, so its versions spread over some files, not all.
            if (i + round) % 3 == 0 {
                continue;
            }
            let req = if (i + round) % 5 == 4 {
                WriteRequest::DeleteRange(DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })
            } else {
                WriteRequest::Put(PutRequest {
                    key: key.to_vec().into(),
                    value: format!("{round}:{i}").into_bytes().into(),
                    ..Default::default()
                })
            };
            let before = writer.revision();
            writer.apply(&req).unwrap();
            if writer.revision() == before {
                continue; // a delete of a key that was not there
            }
            let value = match &req {
                WriteRequest::Put(p) => Some(p.value.to_vec()),
                _ => None,
            };
            model
                .entry(key.to_vec())
                .or_default()
                .push((writer.revision(), value));
        }
        // A table file per round.
        writer.sync().unwrap();
    }
    writer.publish();
    let current = writer.revision();

    let mut probes: Vec<Vec<u8>> = KEYS.iter().chain(&ABSENT).map(|k| k.to_vec()).collect();
    probes.sort();
    for rev in 1..=current {
        for key in &probes {
            let want = live_at(&model, rev, key, None);
            let (scan, _) = store.scan(key, b"", rev, 0, false).unwrap();
            let got: Vec<_> = scan
                .kvs
                .iter()
                .map(|kv| (kv.key.to_vec(), kv.mod_revision, kv.value.to_vec()))
                .collect();
            assert_eq!(
                (got, scan.count),
                (want.clone(), want.len() as i64),
                "{key:?} at {rev}"
            );
            let one = store.get_at(key, rev).unwrap().map(|kv| kv.value.to_vec());
            assert_eq!(
                one,
                want.first().map(|w| w.2.clone()),
                "get_at {key:?} at {rev}"
            );
            for end in &probes {
                let want = live_at(&model, rev, key, Some(end));
                let (scan, _) = store.scan(key, end, rev, 0, false).unwrap();
                let got: Vec<_> = scan
                    .kvs
                    .iter()
                    .map(|kv| (kv.key.to_vec(), kv.mod_revision, kv.value.to_vec()))
                    .collect();
                assert_eq!(got, want, "[{key:?}, {end:?}) at {rev}");
            }
        }
    }

    // Watch history: every change, each with the key's version before it.
    let history = store.history(1, current, usize::MAX, |_| true).unwrap();
    let mut changes: Vec<_> = model
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |(r, v)| (*r, k, v)))
        .collect();
    changes.sort();
    assert_eq!(history.events.len(), changes.len());
    for (event, (rev, key, value)) in history.events.iter().zip(changes) {
        let kv = event.kv.as_ref().unwrap();
        assert_eq!((kv.mod_revision, &kv.key.to_vec()), (rev, key));
        if let Some(v) = value {
            assert_eq!(&kv.value.to_vec(), v);
        }
        let prev = live_at(&model, rev - 1, key, None);
        let got = event.prev_kv.as_ref().map(|p| p.value.to_vec());
        assert_eq!(
            got,
            prev.first().map(|p| p.2.clone()),
            "prev_kv of {key:?} at {rev}"
        );
    }
}
