//! The Rust `etcd-client` crate as a second real client, exercising what kube-apiserver relies
//! on: paginated ranges that still report the total count, its create/update/delete txn shapes,
//! watches with prev_kv and progress requests, and leases.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, PutOptions, Txn,
    TxnOp, WatchOptions,
};

use crate::harness::{Kind, Server};

async fn connect(s: &Server) -> Client {
    Client::connect([s.endpoint()], None)
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_patterns() {
    let s = Server::start(Kind::Cairn);
    let mut c = connect(&s).await;
    for i in 0..10 {
        c.put(
            format!("/registry/pods/default/p{i}"),
            format!("pod{i}"),
            None,
        )
        .await
        .unwrap();
    }
    // A paginated list: the limit bounds the page, `count` still reports every key.
    let page = c
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_limit(3)),
        )
        .await
        .unwrap();
    assert_eq!((page.kvs().len(), page.count(), page.more()), (3, 10, true));
    let rev = page.header().unwrap().revision();
    let next_key = format!("{}\0", page.kvs()[2].key_str().unwrap());
    let next = c
        .get(
            next_key,
            Some(
                GetOptions::new()
                    .with_range("/registry/pods0")
                    .with_limit(3)
                    .with_revision(rev),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        next.kvs()[0].key_str().unwrap(),
        "/registry/pods/default/p3"
    );

    // Create: succeeds only if the key does not exist.
    let key = "/registry/configmaps/default/cm";
    let create = |v: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, v, None)])
            .or_else([TxnOp::get(key, None)])
    };
    assert!(c.txn(create("v1")).await.unwrap().succeeded());
    let again = c.txn(create("v1")).await.unwrap();
    assert!(!again.succeeded());
    let current = c.get(key, None).await.unwrap().kvs()[0].mod_revision();
    // Update: succeeds only at the expected mod revision.
    let update = |rv: i64, v: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rv)])
            .and_then([TxnOp::put(key, v, None)])
            .or_else([TxnOp::get(key, None)])
    };
    assert!(!c
        .txn(update(current - 1, "stale"))
        .await
        .unwrap()
        .succeeded());
    let updated = c.txn(update(current, "v2")).await.unwrap();
    assert!(updated.succeeded());
    let new_rv = updated.header().unwrap().revision();
    // Delete at the expected revision.
    let delete = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, new_rv)])
        .and_then([TxnOp::delete(key, None)])
        .or_else([TxnOp::get(key, None)]);
    assert!(c.txn(delete).await.unwrap().succeeded());
    assert_eq!(c.get(key, None).await.unwrap().count(), 0);

    // A watch with prev_kv on a resource prefix, and a progress request.
    let mut stream = c
        .watch(
            "/registry/pods/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_progress_notify(),
            ),
        )
        .await
        .unwrap();
    c.put("/registry/pods/default/p1", "pod1-v2", None)
        .await
        .unwrap();
    let (watch_id, resp) = loop {
        let m = stream.message().await.unwrap().unwrap();
        if !m.events().is_empty() {
            break (m.watch_id(), m);
        }
    };
    let ev = &resp.events()[0];
    assert_eq!(ev.event_type(), EventType::Put);
    assert_eq!(ev.prev_kv().unwrap().value_str().unwrap(), "pod1");
    stream.request_progress().await.unwrap();
    let progress = stream.message().await.unwrap().unwrap();
    assert!(progress.events().is_empty() && !progress.created());
    assert_eq!(progress.watch_id(), -1, "a stream-wide progress response");
    assert_eq!(
        progress.header().unwrap().revision(),
        c.get("x", None).await.unwrap().header().unwrap().revision()
    );
    stream.cancel(watch_id).await.unwrap();
    assert!(stream.message().await.unwrap().unwrap().canceled());

    // A health check is a linearizable read.
    c.get("health", None).await.unwrap();
    let status = c.status().await.unwrap();
    assert_eq!(status.version(), "3.5.17");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_alive_and_expire() {
    let s = Server::start(Kind::Cairn);
    let mut c = connect(&s).await;
    let lease = c.lease_grant(2, None).await.unwrap();
    assert_eq!(lease.ttl(), 2);
    c.put(
        "/registry/events/e1",
        "event",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    let (mut keeper, mut responses): (_, LeaseKeepAliveStream) =
        c.lease_keep_alive(lease.id()).await.unwrap();
    for _ in 0..3 {
        keeper.keep_alive().await.unwrap();
        assert_eq!(responses.message().await.unwrap().unwrap().ttl(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
    assert_eq!(
        c.get("/registry/events/e1", None).await.unwrap().count(),
        1,
        "kept alive for 3s"
    );
    // Without keep-alives the lease expires and takes its key with it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if c.get("/registry/events/e1", None).await.unwrap().count() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    let err = c
        .put("x", "y", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_with_a_full_ttl() {
    let mut s = Server::start(Kind::Cairn);
    let mut c = connect(&s).await;
    let lease = c.lease_grant(30, None).await.unwrap();
    c.put(
        "leased",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    s.restart();
    let mut c = connect(&s).await;
    let ttl = c
        .lease_time_to_live(
            lease.id(),
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(
        ttl.ttl() >= 28,
        "a restarted lease gets a full TTL, got {}",
        ttl.ttl()
    );
    assert_eq!(ttl.keys().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_returns_only_once_the_watcher_exists() {
    // etcd answers a watch stream's headers with its first response, so a client that writes
    // right after `watch()` returns always sees its own write; so must cairn.
    let s = Server::start(Kind::Cairn);
    let mut c = connect(&s).await;
    for i in 0..40 {
        let key = format!("race/{i}");
        let mut stream = c.watch(key.clone(), None).await.unwrap();
        c.put(key.clone(), "v", None).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let m = stream.message().await.unwrap().unwrap();
                if !m.events().is_empty() {
                    return m.events()[0].kv().unwrap().key_str().unwrap().to_string();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the put right after watch() was missed (round {i})"));
        assert_eq!(got, key);
    }
}
