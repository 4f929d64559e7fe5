//! WAL append benchmark: batches of 1, 16, 256 and 1024 records of 256 bytes, each batch
//! appended and then made durable with one fdatasync (group commit), on the filesystem of the
//! system temporary directory. Throughput is reported per record (entries/s) and per byte
//! (MB/s). Run with `cargo bench -p raftlog`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftlog::{Wal, WalOptions};

const RECORD_BYTES: usize = 256;

fn bench(c: &mut Criterion) {
    let payload = vec![0xABu8; RECORD_BYTES];
    for (unit, per_record) in [("entries", false), ("bytes", true)] {
        let mut g = c.benchmark_group(format!("wal_append_fsync_{unit}"));
        g.sample_size(20);
        for batch in [1u64, 16, 256, 1024] {
            let dir = tempfile::tempdir().unwrap();
            let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
            let mut next = 1u64;
            g.throughput(if per_record {
                Throughput::Bytes(batch * RECORD_BYTES as u64)
            } else {
                Throughput::Elements(batch)
            });
            g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
                b.iter(|| {
                    let first = next;
                    next += batch;
                    wal.append((first..next).map(|i| (i, payload.as_slice())))
                        .unwrap();
                    wal.sync().unwrap();
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
