//! Store benchmarks: the MVCC layer alone, no gRPC and no fsync (the durability point is the
//! caller's; these measure apply and read cost). Sizes: 10,000 keys of 16 bytes with 256-byte
//! values preloaded; puts overwrite random existing keys; ranges read one key, or a 100-key
//! prefix page at the current revision; txns are kube-apiserver's update shape (compare
//! mod_revision, then put); a compaction removes the versions 1,000 overwrites superseded.
//! `store_aged`: one-key reads after every key has 100 versions; `store_spread`: after 200,000
//! puts of random keys among 100,000. Run with `cargo bench -p store`.

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use store::{range, BackendOptions, Store, WriteRequest, Writer};

const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 256;

fn key(i: usize) -> Vec<u8> {
    format!("/registry/k{i:08}").into_bytes()
}

fn loaded() -> (tempfile::TempDir, Store, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    for i in 0..KEYS {
        let put = PutRequest {
            key: key(i).into(),
            value: vec![b'v'; VALUE_BYTES].into(),
            ..Default::default()
        };
        writer.apply(&WriteRequest::Put(put)).unwrap();
    }
    writer.publish();
    (dir, store, writer)
}

fn bench(c: &mut Criterion) {
    let (_dir, store, mut writer) = loaded();
    let mut next = 0usize;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("put_overwrite", |b| {
        b.iter_batched(
            || {
                next = (next * 7919 + 13) % KEYS;
                WriteRequest::Put(PutRequest {
                    key: key(next).into(),
                    value: vec![b'w'; VALUE_BYTES].into(),
                    ..Default::default()
                })
            },
            |req| writer.apply(&req).unwrap(),
            BatchSize::SmallInput,
        )
    });
    writer.publish();
    one_key_reads(&mut g, "range_one_key", &store, 0);
    g.bench_function("range_page_100_of_prefix", |b| {
        let req = RangeRequest {
            key: b"/registry/".to_vec(),
            range_end: b"/registry0".to_vec(),
            limit: 100,
            ..Default::default()
        };
        b.iter(|| range::execute(&store, &req).unwrap())
    });
    g.bench_function("txn_update_by_mod_revision", |b| {
        b.iter_batched(
            || {
                next = (next * 7919 + 13) % KEYS;
                let k = key(next);
                let rev = store
                    .get_at(&k, store.current_revision())
                    .unwrap()
                    .map_or(0, |kv| kv.mod_revision);
                WriteRequest::Txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::ModRevision(rev)),
                        range_end: vec![],
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.into(),
                            value: vec![b'u'; VALUE_BYTES].into(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })
            },
            |req| {
                writer.apply(&req).unwrap();
                writer.publish();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    bench_compact(c, &store, &mut writer);
}

/// Overwrites before each compaction, each superseding a version the compaction removes.
const COMPACTED: usize = 1_000;

/// A compaction as the apiserver's periodic one makes it: the logical compaction (a write)
/// at the current revision, then the physical removal of the versions it made unreachable,
/// after `COMPACTED` overwrites of random keys since the previous compaction.
fn bench_compact(c: &mut Criterion, store: &Store, writer: &mut Writer) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(COMPACTED as u64));
    let mut next = 0usize;
    g.bench_function("compact_after_1000_overwrites", |b| {
        // The overwrites are untimed: each iteration times one compaction.
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..COMPACTED {
                    next = (next * 7919 + 13) % KEYS;
                    let put = PutRequest {
                        key: key(next).into(),
                        value: vec![b'c'; VALUE_BYTES].into(),
                        ..Default::default()
                    };
                    writer.apply(&WriteRequest::Put(put)).unwrap();
                }
                writer.publish();
                let revision = writer.revision();
                let start = Instant::now();
                writer.apply(&WriteRequest::Compact { revision }).unwrap();
                writer.publish();
                std::hint::black_box(store.compact_physical(revision).unwrap());
                timed += start.elapsed();
            }
            timed
        })
    });
    g.finish();
}

/// Versions of each key in the aged store.
const AGED_VERSIONS: usize = 100;

/// Reads on an aged store: every key overwritten until it has `AGED_VERSIONS` versions, never
/// compacted (a million versions, about 300 MB before compression, most of it in large
/// level-1 files). A one-key read then goes through those files' indexes: when they were
/// single index blocks larger than a block-cache shard, every read decompressed one again.
fn bench_aged(c: &mut Criterion) {
    let (_dir, store, mut writer) = loaded();
    for version in 1..AGED_VERSIONS {
        for i in 0..KEYS {
            let put = PutRequest {
                key: key(i).into(),
                value: vec![version as u8; VALUE_BYTES].into(),
                ..Default::default()
            };
            writer.apply(&WriteRequest::Put(put)).unwrap();
        }
        writer.publish();
    }
    let mut g = c.benchmark_group("store_aged");
    g.throughput(Throughput::Elements(1));
    one_key_reads(&mut g, "range_one_key", &store, 0);
    let old = store.current_revision() - (KEYS * AGED_VERSIONS / 2) as i64;
    one_key_reads(&mut g, "range_one_key_at_an_old_revision", &store, old);
    g.finish();
}

/// Keys in the store that `bench_spread` writes.
const SPREAD_KEYS: usize = 100_000;

/// Reads on a store shaped like the comparison's after its put workload: 200,000 puts of
/// random keys among 100,000, so each key has one or two versions in a few of the many table
/// files the flushes wrote, and a one-key read finds most files without the key.
fn bench_spread(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    let mut x = 1u64;
    for _ in 0..2 * SPREAD_KEYS {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let put = PutRequest {
            key: key((x >> 33) as usize % SPREAD_KEYS).into(),
            value: vec![b's'; VALUE_BYTES].into(),
            ..Default::default()
        };
        writer.apply(&WriteRequest::Put(put)).unwrap();
    }
    writer.publish();
    let mut g = c.benchmark_group("store_spread");
    g.throughput(Throughput::Elements(1));
    one_key_reads(&mut g, "range_one_key", &store, 0);
    g.finish();
}

/// One-key reads of keys in a fixed pseudo-random order, at `revision` (0: the current one).
fn one_key_reads(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, store: &Store, revision: i64) {
    let mut next = 0usize;
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                next = (next * 7919 + 13) % KEYS;
                RangeRequest {
                    key: key(next),
                    revision,
                    ..Default::default()
                }
            },
            |req| range::execute(store, &req).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench, bench_aged, bench_spread);
criterion_main!(benches);
