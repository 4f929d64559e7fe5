//! State survives closing and reopening the store: revisions, compaction, leases, alarms.

use etcd_proto::etcdserverpb::PutRequest;
use store::{BackendOptions, Store, WriteRequest};

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
        writer
            .apply(&WriteRequest::LeaseGrant {
                id: 7,
                ttl_secs: 30,
            })
            .unwrap();
        for i in 0..10 {
            let put = PutRequest {
                key: format!("k{i}").into_bytes().into(),
                value: b"v".to_vec().into(),
                lease: if i == 3 { 7 } else { 0 },
                ..Default::default()
            };
            writer.apply(&WriteRequest::Put(put)).unwrap();
        }
        writer
            .apply(&WriteRequest::Compact { revision: 5 })
            .unwrap();
        writer
            .apply(&WriteRequest::Alarm {
                activate: true,
                member_id: 9,
                alarm: 1,
            })
            .unwrap();
        writer.sync().unwrap();
        writer.publish();
    }
    let (store, writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    assert_eq!(store.current_revision(), 11);
    assert_eq!(writer.revision(), 11);
    assert_eq!(store.compacted_revision(), 5);
    assert_eq!(store.leases().unwrap(), vec![(7, 30)]);
    assert_eq!(store.lease_keys(7).unwrap(), vec![b"k3".to_vec()]);
    assert_eq!(store.alarms().unwrap(), vec![(9, 1)]);
    let (scan, rev) = store.scan(b"k", b"l", 0, 0, false).unwrap();
    assert_eq!((scan.count, rev), (10, 11));
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    writer
        .apply(&WriteRequest::LeaseGrant {
            id: 1,
            ttl_secs: 10,
        })
        .unwrap();
    for k in ["x", "y", "z"] {
        let put = PutRequest {
            key: k.into(),
            value: b"v".to_vec().into(),
            lease: if k == "y" { 0 } else { 1 },
            ..Default::default()
        };
        writer.apply(&WriteRequest::Put(put)).unwrap();
    }
    let applied = writer.apply(&WriteRequest::LeaseRevoke { id: 1 }).unwrap();
    writer.publish();
    assert_eq!(applied.revision, 5);
    let deleted: Vec<_> = applied
        .events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().unwrap().key.to_vec()))
        .collect();
    assert_eq!(deleted, vec![(1, b"x".to_vec()), (1, b"z".to_vec())]);
    assert_eq!(store.scan(b"\0", b"\0", 0, 0, false).unwrap().0.count, 1);
    assert!(matches!(
        writer.apply(&WriteRequest::LeaseRevoke { id: 1 }),
        Err(store::Error::LeaseNotFound(1))
    ));
    let put = PutRequest {
        key: b"q".to_vec().into(),
        lease: 1,
        ..Default::default()
    };
    assert!(matches!(
        writer.apply(&WriteRequest::Put(put)),
        Err(store::Error::LeaseNotFound(1))
    ));
}

#[test]
fn closing_keeps_unflushed_writes_only_when_it_flushes() {
    for flush_on_close in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let opts = BackendOptions {
            flush_on_close,
            ..BackendOptions::default()
        };
        {
            let (_, mut writer) = Store::open(dir.path(), &opts).unwrap();
            for i in 0..3 {
                let put = PutRequest {
                    key: format!("k{i}").into_bytes().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                };
                writer.apply(&WriteRequest::Put(put)).unwrap();
            }
            writer.publish();
        }
        let (store, _) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
        // Without the flush, the close is a crash: only what was flushed (nothing) is there.
        let expected = if flush_on_close { 4 } else { 1 };
        assert_eq!(
            store.current_revision(),
            expected,
            "flush_on_close {flush_on_close}"
        );
    }
}
