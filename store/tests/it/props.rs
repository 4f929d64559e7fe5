//! Random sequences of put / delete / txn / compact / range at revisions, applied to the store
//! and to the model; every result must be equal.

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;
use store::{range, BackendOptions, Store, WriteRequest, WriteResponse};

use crate::model::{Model, ModelError};

#[derive(Debug, Clone)]
enum Op {
    /// key, value, prev_kv
    Put(Vec<u8>, Vec<u8>, bool),
    /// key, range end, prev_kv
    Delete(Vec<u8>, Vec<u8>, bool),
    /// if version(key) == v then put(a) else delete(b)
    Txn {
        key: Vec<u8>,
        version: i64,
        put: (Vec<u8>, Vec<u8>),
        del: Vec<u8>,
    },
    /// A txn changing one key twice: each change a put (`Some(value)`) or a delete.
    Twice(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    Compact(i64),
    Range {
        key: Vec<u8>,
        end: Vec<u8>,
        back: i64,
        limit: i64,
    },
    PhysicalCompact,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"a".to_vec()),
        Just(b"a\0".to_vec()),
        Just(b"ab".to_vec()),
        Just(b"b".to_vec()),
        Just(b"c".to_vec()),
        Just(vec![0u8]),
        Just(vec![0xFFu8]),
    ]
}

fn end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0u8]),
        Just(b"b".to_vec()),
        Just(b"c".to_vec()),
        Just(b"a\x01".to_vec())
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..4), any::<bool>()).prop_map(|(k, v, p)| Op::Put(k, v, p)),
        1 => (key(), end(), any::<bool>()).prop_map(|(k, e, p)| Op::Delete(k, e, p)),
        2 => (key(), 0i64..3, key(), key()).prop_map(|(k, v, p, d)| Op::Txn { key: k, version: v, put: (p, b"t".to_vec()), del: d }),
        1 => (key(), prop::option::of(Just(b"1".to_vec())), prop::option::of(Just(b"2".to_vec())))
            .prop_map(|(k, a, b)| Op::Twice(k, a, b)),
        1 => (0i64..6).prop_map(Op::Compact),
        4 => (key(), end(), 0i64..8, 0i64..3).prop_map(|(key, end, back, limit)| Op::Range { key, end, back, limit }),
        1 => Just(Op::PhysicalCompact),
    ]
}

fn to_model_err(e: store::Error) -> ModelError {
    match e {
        store::Error::Compacted { .. } => ModelError::Compacted,
        store::Error::FutureRev { .. } => ModelError::FutureRev,
        other => panic!("unexpected store error {other}"),
    }
}

/// Runs `ops`, the writer remembering `recent_keys` keys per generation.
fn run(ops: Vec<Op>, recent_keys: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let opts = BackendOptions {
        recent_keys,
        ..BackendOptions::default()
    };
    let (store, mut writer) = Store::open(dir.path(), &opts).unwrap();
    let mut model = Model::new();
    let apply = |writer: &mut store::Writer, req: WriteRequest| {
        let r = writer.apply(&req);
        writer.publish();
        r
    };
    for op in ops {
        match op {
            Op::Put(k, v, prev_kv) => {
                let prev = model.live_at(&k, model.rev);
                let applied = apply(
                    &mut writer,
                    WriteRequest::Put(PutRequest {
                        key: k.clone().into(),
                        value: v.clone().into(),
                        prev_kv,
                        ..Default::default()
                    }),
                )
                .unwrap();
                prop_assert_eq!(applied.revision, model.write(&[(k, Some(v), None)]));
                match applied.response {
                    WriteResponse::Put(p) => {
                        prop_assert_eq!(p.prev_kv, if prev_kv { prev } else { None })
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            Op::Delete(k, e, prev_kv) => {
                let victims = model.range(&k, &e, 0).unwrap();
                let applied = apply(
                    &mut writer,
                    WriteRequest::DeleteRange(DeleteRangeRequest {
                        key: k.clone(),
                        range_end: e.clone(),
                        prev_kv,
                    }),
                )
                .unwrap();
                prop_assert_eq!(applied.revision, model.write(&[(k, None, Some(e))]));
                match applied.response {
                    WriteResponse::DeleteRange(d) => {
                        prop_assert_eq!(d.deleted, victims.len() as i64);
                        prop_assert_eq!(d.prev_kvs, if prev_kv { victims } else { vec![] });
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            Op::Txn {
                key,
                version,
                put,
                del,
            } => {
                let holds = model.live_at(&key, model.rev).map_or(0, |kv| kv.version) == version;
                let compare = Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::Version(version)),
                    range_end: vec![],
                };
                let success = vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: put.0.clone().into(),
                        value: put.1.clone().into(),
                        ..Default::default()
                    })),
                }];
                let failure = vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: del.clone(),
                            ..Default::default()
                        },
                    )),
                }];
                let applied = apply(
                    &mut writer,
                    WriteRequest::Txn(TxnRequest {
                        compare: vec![compare],
                        success,
                        failure,
                    }),
                )
                .unwrap();
                let expected = if holds {
                    model.write(&[(put.0, Some(put.1), None)])
                } else {
                    model.write(&[(del, None, None)])
                };
                prop_assert_eq!(applied.revision, expected);
                match applied.response {
                    WriteResponse::Txn(t) => prop_assert_eq!(t.succeeded, holds),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            Op::Twice(key, first, second) => {
                let change = |value: &Option<Vec<u8>>| RequestOp {
                    request: Some(match value {
                        Some(v) => request_op::Request::RequestPut(PutRequest {
                            key: key.clone().into(),
                            value: v.clone().into(),
                            ..Default::default()
                        }),
                        None => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        }),
                    }),
                };
                let applied = apply(
                    &mut writer,
                    WriteRequest::Txn(TxnRequest {
                        compare: vec![],
                        success: vec![change(&first), change(&second)],
                        failure: vec![],
                    }),
                )
                .unwrap();
                let expected =
                    model.write(&[(key.clone(), first, None), (key.clone(), second, None)]);
                prop_assert_eq!(applied.revision, expected);
            }
            Op::Compact(back) => {
                let target = model.rev - back;
                let got = apply(&mut writer, WriteRequest::Compact { revision: target })
                    .map(|_| ())
                    .map_err(to_model_err);
                prop_assert_eq!(got, model.compact(target));
            }
            Op::PhysicalCompact => {
                // Exactly what the compaction made unreachable is gone, however many
                // compactions came before (each one reads only what was written since).
                let at = store.compacted_revision();
                store.compact_physical(at).unwrap();
                prop_assert_eq!(
                    store.versions_held().unwrap(),
                    model.held_after_compaction(at)
                );
            }
            Op::Range {
                key,
                end,
                back,
                limit,
            } => {
                let rev = if back == 0 { 0 } else { model.rev - back + 1 };
                let req = RangeRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    revision: rev,
                    limit,
                    ..Default::default()
                };
                let got = range::execute(&store, &req).map_err(to_model_err);
                let want = model.range(&key, &end, rev);
                match (got, want) {
                    (Ok(resp), Ok(all)) => {
                        prop_assert_eq!(resp.count, all.len() as i64);
                        let shown = if limit > 0 {
                            all.len().min(limit as usize)
                        } else {
                            all.len()
                        };
                        prop_assert_eq!(&resp.kvs[..], &all[..shown]);
                        prop_assert_eq!(resp.more, shown < all.len());
                        prop_assert_eq!(resp.header.unwrap().revision, model.rev);
                    }
                    (Err(g), Err(w)) => prop_assert_eq!(g, w),
                    (g, w) => prop_assert!(false, "store {:?} vs model {:?}", g, w),
                }
            }
        }
    }
    // History read back as events agrees with the model's versions above the compaction.
    let from = model.compacted.max(1) + 1;
    let hist = store
        .history(from, model.rev, usize::MAX, |_| true)
        .unwrap();
    let mut want = Vec::new();
    for (k, versions) in &model.history {
        for (r, kv) in versions {
            if *r >= from {
                want.push((*r, k.clone(), kv.clone()));
            }
        }
    }
    want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut got: Vec<_> = hist
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap();
            let live = if e.r#type == 0 {
                Some(kv.clone())
            } else {
                None
            };
            (kv.mod_revision, kv.key.to_vec(), live)
        })
        .collect();
    got.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    prop_assert_eq!(got, want);
    // Each event's prev_kv, as history reads it and as the watch path reads it apart from the
    // events (`prev_kvs`): the model's live version at the revision before, unless compacted
    // or the event creates the key.
    let want_prevs: Vec<_> = hist
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            let creates = e.r#type == 0 && kv.create_revision == kv.mod_revision;
            let before = kv.mod_revision - 1;
            if creates || before < model.compacted {
                None
            } else {
                model.live_at(&kv.key, before)
            }
        })
        .collect();
    let from_history: Vec<_> = hist.events.iter().map(|e| e.prev_kv.clone()).collect();
    prop_assert_eq!(&from_history, &want_prevs);
    let bare: Vec<_> = hist
        .events
        .iter()
        .map(|e| etcd_proto::mvccpb::Event {
            prev_kv: None,
            ..e.clone()
        })
        .collect();
    prop_assert_eq!(store.prev_kvs(&bare).unwrap(), want_prevs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(
        ops in prop::collection::vec(op(), 1..60),
        recent_keys in prop_oneof![Just(0usize), Just(2), Just(100_000)],
    ) {
        run(ops, recent_keys)?;
    }
}

#[test]
fn hash_kv_ignores_physical_compaction_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    for i in 0..20 {
        let key = format!("k{}", i % 5).into_bytes();
        writer
            .apply(&WriteRequest::Put(PutRequest {
                key: key.into(),
                value: vec![i as u8].into(),
                ..Default::default()
            }))
            .unwrap();
    }
    writer
        .apply(&WriteRequest::DeleteRange(DeleteRangeRequest {
            key: b"k1".to_vec(),
            ..Default::default()
        }))
        .unwrap();
    writer.publish();
    let before = store.hash_kv(0).unwrap();
    writer
        .apply(&WriteRequest::Compact { revision: 15 })
        .unwrap();
    writer.publish();
    let logical = store.hash_kv(0).unwrap();
    assert_ne!(
        before.0, logical.0,
        "compaction drops history from the hash"
    );
    let removed = store.compact_physical(15).unwrap();
    assert!(removed > 0);
    let physical = store.hash_kv(0).unwrap();
    assert_eq!(logical, physical);
}
