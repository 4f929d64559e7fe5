//! The database's size (etcd's dbSize and dbSizeInUse, which the backend quota reads) counts
//! what was written as soon as it is written: memtables not yet flushed included, at about
//! the size of the data, not in the memtables' allocation steps.

use etcd_proto::etcdserverpb::PutRequest;
use store::{BackendOptions, Store, WriteRequest};

#[test]
fn size_follows_writes_before_any_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut writer) = Store::open(dir.path(), &BackendOptions::default()).unwrap();
    let empty = [store.size_on_disk(), store.size_in_use()];
    assert!(
        empty[0] < 1 << 20,
        "an empty store reports {} bytes",
        empty[0]
    );
    for i in 0..20 {
        let put = PutRequest {
            key: format!("k{i}").into_bytes().into(),
            value: vec![b'x'; 100_000].into(),
            ..Default::default()
        };
        writer.apply(&WriteRequest::Put(put)).unwrap();
    }
    writer.publish();
    // Two megabytes written, still in the memtables (they flush at 64 MiB).
    let written = 2_000_000;
    for (what, size, empty) in [
        ("size", store.size_on_disk(), empty[0]),
        ("size in use", store.size_in_use(), empty[1]),
    ] {
        let grown = size - empty.min(size);
        assert!(
            grown >= written * 9 / 10 && grown < 2 * written,
            "{what} grew by {grown} bytes for {written} written"
        );
    }
}
