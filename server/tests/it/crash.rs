//! Crash safety: cairn is killed with SIGKILL in the middle of a concurrent write load; after a
//! restart every acknowledged write must be readable at its acknowledged revision, and HashKV
//! must be stable across a further clean restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_proto::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};

use crate::grpc::Client;
use crate::harness::{Kind, Server};

/// Writers running at once.
const WRITERS: usize = 8;

async fn acknowledged_writes_survive_kill() {
    let mut server = Server::start(Kind::Cairn);
    let ep = server.endpoint();
    // (key, value, revision) of every write the server acknowledged.
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (ep, acked) = (ep.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&ep).await;
            for i in 0.. {
                let (key, value) = (format!("crash/{w}/{}", i % 50), format!("{w}-{i}"));
                let req = PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: value.clone().into_bytes().into(),
                    ..Default::default()
                };
                match c.kv.put(req).await {
                    Ok(resp) => acked.lock().unwrap().push((
                        key,
                        value,
                        resp.into_inner().header.unwrap().revision,
                    )),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the load run, then kill the server mid-write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load made progress before the kill ({} writes)",
        acked.len()
    );

    server.restart();
    let mut c = Client::connect(&server.endpoint()).await;
    // The newest acknowledged value of each key must be there (or a newer unacknowledged one).
    let mut newest: std::collections::HashMap<&str, (&str, i64)> = Default::default();
    for (k, v, rev) in &acked {
        let e = newest.entry(k.as_str()).or_insert((v.as_str(), *rev));
        if *rev > e.1 {
            *e = (v.as_str(), *rev);
        }
    }
    for (key, (value, rev)) in &newest {
        let resp =
            c.kv.range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let kv = resp
            .kvs
            .first()
            .unwrap_or_else(|| panic!("acknowledged key {key} is missing after the crash"));
        assert!(
            kv.mod_revision >= *rev,
            "key {key}: acknowledged revision {rev}, found {}",
            kv.mod_revision
        );
        if kv.mod_revision == *rev {
            assert_eq!(kv.value, value.as_bytes(), "key {key} at revision {rev}");
        }
    }
    // Every acknowledged write is also readable at its own revision.
    for (key, value, rev) in acked.iter().step_by(7) {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            revision: *rev,
            ..Default::default()
        };
        let kv =
            c.kv.range(req)
                .await
                .unwrap()
                .into_inner()
                .kvs
                .pop()
                .expect("history kept");
        assert_eq!((kv.mod_revision, &kv.value[..]), (*rev, value.as_bytes()));
    }
    let max_acked = acked.iter().map(|a| a.2).max().unwrap();
    let hash = |mut c: Client| async move {
        c.maintenance
            .hash_kv(HashKvRequest {
                revision: max_acked,
            })
            .await
            .unwrap()
            .into_inner()
            .hash
    };
    let before = hash(c.clone()).await;
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "SIGTERM shuts down cleanly"
    );
    server.restart();
    let c = Client::connect(&server.endpoint()).await;
    assert_eq!(before, hash(c).await, "HashKV is stable across restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_write_load_loses_no_acknowledged_write() {
    for _ in 0..3 {
        acknowledged_writes_survive_kill().await;
    }
}
