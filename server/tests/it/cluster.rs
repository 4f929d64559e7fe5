//! A 3-member cairn cluster of real processes: etcdctl reads and writes through every member;
//! a new member serves clients only once it has published its attributes;
//! the leader is killed under a write load and no acknowledged write is lost; a member that
//! missed many writes catches up by snapshot; a member is added as a learner, promoted and
//! another removed, under load; leadership moves on request. Replicas are compared with HashKV at one revision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{PutRequest, RangeRequest};

use crate::cluster_harness::Cluster;
use crate::grpc::Client;
use crate::harness::{etcdctl, etcdctl35};

fn ctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = etcdctl(&etcdctl35(), endpoint, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn assert_equal_hashes(hashes: &[(String, u32)]) {
    assert!(hashes.len() >= 2, "compared {hashes:?}");
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "replicas differ: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_and_writes_through_every_member() {
    let cluster = Cluster::start(3, &[]);
    let eps = cluster.endpoints();
    for (i, ep) in eps.iter().enumerate() {
        let (ok, out) = ctl(ep, &["put", &format!("k{i}"), &format!("v{i}")]);
        assert!(ok && out.trim() == "OK", "put through {ep}: {out}");
    }
    for ep in &eps {
        for consistency in ["l", "s"] {
            // A serializable read may trail by a heartbeat; a linearizable one may not.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (ok, out) = ctl(
                    ep,
                    &[
                        "get",
                        "k",
                        "--prefix",
                        &format!("--consistency={consistency}"),
                    ],
                );
                if out == "k0\nv0\nk1\nv1\nk2\nv2\n" {
                    break;
                }
                assert!(
                    consistency == "s" && Instant::now() < deadline,
                    "get through {ep} ({consistency}, ok={ok}): {out}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Every member has published its name and client URLs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = ctl(&eps[1], &["member", "list"]);
        let started = out
            .lines()
            .filter(|l| l.contains(", started, infra"))
            .count();
        let with_clients = eps
            .iter()
            .filter(|ep| out.contains(&format!("http://{ep}")))
            .count();
        if started == 3 && with_clients == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "member list: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Leases granted through one member are kept alive and read through others.
    let (ok, out) = ctl(&eps[2], &["lease", "grant", "60"]);
    assert!(ok, "{out}");
    let lease = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, out) = ctl(&eps[0], &["put", "leased", "x", "--lease", &lease]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&eps[1], &["lease", "keep-alive", "--once", &lease]);
    assert!(ok && out.contains("keepalived with TTL(60)"), "{out}");
    let (ok, out) = ctl(&eps[1], &["lease", "timetolive", &lease, "--keys"]);
    assert!(
        ok && out.contains("granted with TTL(60s)") && out.contains("attached keys([leased])"),
        "{out}"
    );
    let (ok, out) = ctl(&eps[0], &["lease", "revoke", &lease]);
    assert!(ok, "{out}");
    let (_, out) = ctl(&eps[2], &["get", "leased"]);
    assert_eq!(out, "", "a revoked lease's key is gone everywhere");
    // A watch on one member sees a write made through another.
    let mut watcher = std::process::Command::new(etcdctl35())
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={}", eps[2]), "watch", "w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, _) = ctl(&eps[0], &["put", "w", "seen"]);
    assert!(ok);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = watcher.kill();
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PUT\nw\nseen\n");
    let rev = Client::connect(&eps[0]).await.current_revision().await;
    assert_equal_hashes(&cluster.hashes_at(rev).await);
    // MoveLeader hands leadership to the member named.
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = status_id(&eps[target]).await;
    let (ok, out) = ctl(&eps.join(","), &["move-leader", &format!("{target_id:x}")]);
    assert!(
        ok && out.contains("Leadership transferred from"),
        "move-leader: {out}"
    );
    assert_eq!(cluster.leader().await, target);
    let (ok, out) = ctl(&eps[target], &["put", "after-move", "x"]);
    assert!(ok, "{out}");
}

/// (key, value, revision) of every acknowledged write.
pub type Acked = Arc<Mutex<Vec<(String, String, i64)>>>;

/// Runs `writers` put loops, spread over `endpoints`, until `stop` is set. A failed put is not
/// acknowledged and is simply retried with the next value.
pub fn write_load(
    endpoints: Vec<String>,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let tasks = (0..writers)
        .map(|w| {
            let ep = endpoints[w % endpoints.len()].clone();
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(&ep).await;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (key, value) = (format!("load/{w}/{}", i % 20), format!("{w}-{i}"));
                    let req = PutRequest {
                        key: key.clone().into_bytes().into(),
                        value: value.clone().into_bytes().into(),
                        ..Default::default()
                    };
                    match tokio::time::timeout(Duration::from_secs(10), c.kv.put(req)).await {
                        Ok(Ok(resp)) => {
                            let rev = resp.into_inner().header.unwrap().revision;
                            acked.lock().unwrap().push((key, value, rev));
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

/// Stops the load and waits for its writers; then checks that the running members agree at the
/// highest acknowledged revision and that every acknowledged write is readable through each.
/// Returns the acknowledged writes and that revision.
pub async fn finish_load(
    cluster: &Cluster,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acked: &Acked,
) -> (Vec<(String, String, i64)>, i64) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let top = acked.iter().map(|a| a.2).max().unwrap();
    let hashes = cluster.hashes_at(top).await;
    assert_eq!(
        hashes.len(),
        cluster.members.iter().filter(|m| m.running()).count()
    );
    assert_equal_hashes(&hashes);
    for m in cluster.members.iter().filter(|m| m.running()) {
        check_acked(&m.endpoint(), &acked).await;
    }
    (acked, top)
}

/// Checks that every acknowledged write is readable through `endpoint` at its revision.
pub async fn check_acked(endpoint: &str, acked: &[(String, String, i64)]) {
    let mut c = Client::connect(endpoint).await;
    for (key, value, rev) in acked {
        let req = RangeRequest {
            key: key.clone().into_bytes(),
            revision: *rev,
            serializable: true,
            ..Default::default()
        };
        let resp = c.kv.range(req).await.unwrap().into_inner();
        let kv = resp
            .kvs
            .first()
            .unwrap_or_else(|| panic!("{endpoint}: {key}@{rev} missing"));
        assert_eq!(
            (&kv.value[..], kv.mod_revision),
            (value.as_bytes(), *rev),
            "{endpoint}: {key}@{rev}"
        );
    }
}

/// As etcd's, a new member serves clients only once its name and client URLs are in the
/// membership, which takes a quorum: until then a client cannot even connect, so nobody sees
/// it listed without its client URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_serves_clients_only_once_it_has_published() {
    let mut cluster = Cluster::prepare(3, &[]);
    cluster.spawn(0);
    let ep = cluster.members[0].endpoint();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&ep).is_err() {
        assert!(Instant::now() < deadline, "member 0 never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let timeouts = ["--dial-timeout=1s", "--command-timeout=1s"];
    // A serializable read needs no leader: only the wait for publishing keeps it unanswered.
    let get = [&["get", "k", "--consistency=s"][..], &timeouts].concat();
    let (ok, out) = ctl(&ep, &get);
    assert!(!ok, "a member without a quorum served a client: {out}");
    cluster.spawn(1);
    cluster.spawn(2);
    for i in 0..3 {
        cluster.wait_healthy(i);
    }
    let (ok, out) = ctl(&ep, &[&["member", "list"][..], &timeouts].concat());
    assert!(ok, "{out}");
    for m in &cluster.members {
        let line = format!(
            ", {}, {}, http://{}, false",
            m.name,
            m.peer_url(),
            m.endpoint()
        );
        assert!(out.contains(&line), "{line} missing from {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = write_load(cluster.endpoints(), 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.leader().await;
    let before_kill = acked.lock().unwrap().len();
    cluster.kill(leader);
    // The survivors elect a new leader and the load goes on through them.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (acked, top) = finish_load(&cluster, &stop, tasks, &acked).await;
    assert!(before_kill > 50, "load before the kill: {before_kill}");
    assert!(
        acked.len() > before_kill + 20,
        "the load went on after the kill ({} then {})",
        before_kill,
        acked.len()
    );
    // The old leader comes back, catches up, and agrees.
    cluster.restart(leader);
    cluster.wait_healthy(leader);
    let hashes = cluster.hashes_at(top).await;
    assert_eq!(hashes.len(), 3);
    assert_equal_hashes(&hashes);
    check_acked(&cluster.members[leader].endpoint(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_by_snapshot() {
    let entries: usize = std::env::var("CAIRN_SNAPSHOT_TEST_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3125);
    let mut cluster = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "500",
            "--experimental-snapshot-catchup-entries",
            "100",
        ],
    );
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    cluster.kill(down);
    let mut c = Client::connect(&cluster.members[leader].endpoint()).await;
    // 3125 txns of 64 puts: 200,000 writes, in entries enough to compact the log (snapshot
    // every 500) far past what the member has, and few enough to keep the test short.
    let mut written = 0;
    let mut i = 0;
    while written < entries {
        let ops = (0..64)
            .map(|j| etcd_proto::etcdserverpb::RequestOp {
                request: Some(etcd_proto::etcdserverpb::request_op::Request::RequestPut(
                    PutRequest {
                        key: format!("snap/{}", (i * 64 + j) % 5000).into_bytes().into(),
                        value: vec![b'v'; 100].into(),
                        ..Default::default()
                    },
                )),
            })
            .collect();
        let txn = etcd_proto::etcdserverpb::TxnRequest {
            success: ops,
            ..Default::default()
        };
        c.kv.txn(txn).await.unwrap();
        i += 1;
        written += 1;
    }
    let rev = c.current_revision().await;
    cluster.restart(down);
    cluster.wait_healthy(down);
    let hashes = cluster.hashes_at(rev).await;
    assert_eq!(hashes.len(), 3);
    assert_equal_hashes(&hashes);
    let log = cluster.members[down].log();
    assert!(
        log.contains("installed snapshot"),
        "the member caught up by snapshot; log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_promoted_and_a_member_removed_under_load() {
    let mut cluster = Cluster::start(3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = write_load(cluster.endpoints(), 3, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let eps = cluster.endpoints();
    let peer = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let (ok, out) = ctl(
        &eps[1],
        &[
            "member",
            "add",
            "infra3",
            &format!("--peer-urls={peer}"),
            "--learner",
        ],
    );
    assert!(ok, "member add: {out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    // The harness picks its own peer port; start the new member on the one added.
    let new = cluster.start_joining_at("infra3", &peer);
    cluster.wait_for_serializable(new).await;
    // The learner is listed once it has published its name (it starts unnamed, "unstarted").
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = ctl(&eps[0], &["member", "list"]);
        let line = out
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_default()
            .to_string();
        if ok && line.starts_with(&format!("{id}, started, infra3")) {
            assert!(line.ends_with(", true"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Promote once it has caught up (etcd refuses before that, with its own error).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = ctl(&eps[2], &["member", "promote", &id]);
        if ok {
            assert!(out.contains(&format!("{id} promoted in cluster")), "{out}");
            break;
        }
        assert!(
            out.contains("can only promote a learner member which is in sync with leader")
                && Instant::now() < deadline,
            "promote: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // MemberUpdate changes a member's peer URLs (here: adds a second name for the same port,
    // so the member stays reachable).
    let alias = peer.replace("127.0.0.1", "localhost");
    let (ok, out) = ctl(
        &eps[1],
        &[
            "member",
            "update",
            &id,
            &format!("--peer-urls={peer},{alias}"),
        ],
    );
    assert!(
        ok && out.contains(&format!("{id} updated in cluster")),
        "member update: {out}"
    );
    let (ok, out) = ctl(&eps[1], &["member", "list"]);
    assert!(ok && out.contains(&format!("{peer},{alias}")), "{out}");
    // Remove an original member that is not the leader; it stops by itself.
    let leader = cluster.leader().await;
    let gone = (0..3).find(|&i| i != leader).unwrap();
    let gone_id = status_id(&cluster.members[gone].endpoint()).await;
    let other = (0..3).find(|&i| i != gone && i != leader).unwrap();
    let (ok, out) = ctl(
        &cluster.members[other].endpoint(),
        &["member", "remove", &format!("{gone_id:x}")],
    );
    assert!(ok, "member remove: {out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.members[gone].exited() {
        assert!(Instant::now() < deadline, "the removed member kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill(gone);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, out) = ctl(&cluster.members[new].endpoint(), &["member", "list"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains(&format!("{id}, started, infra3")) && !out.contains("true"),
        "{out}"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "load: {}", acked.len());
    let top = acked.iter().map(|a| a.2).max().unwrap();
    assert_equal_hashes(&cluster.hashes_at(top).await);
    check_acked(&cluster.members[new].endpoint(), &acked).await;
}

async fn status_id(endpoint: &str) -> u64 {
    let mut c = Client::connect(endpoint).await;
    c.maintenance
        .status(etcd_proto::etcdserverpb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id
}
