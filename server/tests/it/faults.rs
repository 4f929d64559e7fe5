//! Faults of real processes beyond killing the leader (in `cluster.rs`): a follower killed
//! (SIGKILL) under load and restarted, a member paused (SIGSTOP) while it leads and then
//! resumed, a paused follower, a torn last record in the Raft log, and a full disk. Each ends
//! with every acknowledged write readable and, for clusters, the members agreeing.

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{PutRequest, StatusRequest};

use crate::cluster::{check_acked, finish_load, write_load};
use crate::cluster_harness::Cluster;
use crate::grpc::Client;
use crate::harness::{Kind, Server};

/// The leader that the members at `endpoints` agree on (each asked with a timeout, so a
/// paused member elsewhere cannot stall the question), as an etcd member ID.
async fn agreed_leader(endpoints: &[String], not: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for ep in endpoints {
            let ask = async {
                let mut c = Client::connect(ep).await;
                c.maintenance
                    .status(StatusRequest {})
                    .await
                    .ok()
                    .map(|s| s.into_inner().leader)
            };
            seen.push(
                tokio::time::timeout(Duration::from_secs(1), ask)
                    .await
                    .ok()
                    .flatten(),
            );
        }
        if let Some(Some(l)) = seen.first() {
            if *l != 0 && *l != not && seen.iter().all(|s| *s == Some(*l)) {
                return *l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader other than {not:x}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn member_id(endpoint: &str) -> u64 {
    let mut c = Client::connect(endpoint).await;
    c.maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_leader_and_then_a_follower_under_load_loses_no_acknowledged_write() {
    let cluster = Cluster::start(3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = write_load(cluster.endpoints(), 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = cluster.leader().await;
    let leader_id = member_id(&cluster.members[leader].endpoint()).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let other_eps: Vec<String> = others
        .iter()
        .map(|&i| cluster.members[i].endpoint())
        .collect();
    let other_ids = [
        member_id(&other_eps[0]).await,
        member_id(&other_eps[1]).await,
    ];

    // The paused leader still believes it leads; the other two elect a new one and go on.
    cluster.signal(leader, "STOP");
    let before = acked.lock().unwrap().len();
    let new_leader = agreed_leader(&other_eps, leader_id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = acked.lock().unwrap().len();
    assert!(
        during > before + 20,
        "writes went on without the paused leader: {before} -> {during}"
    );
    cluster.signal(leader, "CONT");
    // The old leader learns the new term and follows; everyone names the same leader.
    let all: Vec<String> = cluster.endpoints();
    assert_eq!(agreed_leader(&all, leader_id).await, new_leader);

    // Now a follower is paused and resumed: the cluster keeps going and it catches up.
    let follower = if other_ids[0] == new_leader {
        others[1]
    } else {
        others[0]
    };
    cluster.signal(follower, "STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.signal(follower, "CONT");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    finish_load(&cluster, &stop, tasks, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_under_load_and_restarting_it_loses_nothing() {
    let mut cluster = Cluster::start(3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // Writers on every member, the follower's included: theirs fail while it is down.
    let (acked, tasks) = write_load(cluster.endpoints(), 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let before = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = acked.lock().unwrap().len();
    assert!(
        during > before + 20,
        "writes went on with a follower down: {before} -> {during}"
    );
    cluster.restart(follower);
    cluster.wait_healthy(follower);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // All three running again: all three must agree.
    finish_load(&cluster, &stop, tasks, &acked).await;
}

/// Puts `n` keys one at a time; returns (key, value, revision) of each acknowledged one.
async fn put_keys(endpoint: &str, prefix: &str, n: usize) -> Vec<(String, String, i64)> {
    let mut c = Client::connect(endpoint).await;
    let mut acked = Vec::new();
    for i in 0..n {
        let (key, value) = (format!("{prefix}/{i:04}"), format!("v{i}"));
        let req = PutRequest {
            key: key.clone().into_bytes().into(),
            value: value.clone().into_bytes().into(),
            ..Default::default()
        };
        let rev =
            c.kv.put(req)
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
        acked.push((key, value, rev));
    }
    acked
}

fn newest_wal_segment(data_dir: &std::path::Path) -> std::path::PathBuf {
    let dir = data_dir.join("member").join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a WAL segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_wal_record_is_dropped_and_nothing_acknowledged_is_lost() {
    let mut s = Server::start(Kind::Cairn);
    let acked = put_keys(&s.endpoint(), "torn", 200).await;
    s.kill();
    // A crash in the middle of writing the next record: a header that promises 4,000 bytes
    // (length, CRC, index) followed by only a part of them.
    let segment = newest_wal_segment(&s.data_dir);
    let mut torn = Vec::new();
    torn.extend_from_slice(&4000u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&u64::MAX.to_le_bytes());
    torn.extend_from_slice(&[0x5a; 700]);
    // Written where the records end: the rest of the segment is preallocated zeros.
    let end = std::fs::read(&segment)
        .unwrap()
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &torn, end).unwrap();
    drop(f);
    s.restart();
    assert!(
        s.log().contains("torn write"),
        "the truncation is logged: {}",
        s.log()
    );
    let bytes = std::fs::read(&segment).unwrap();
    assert!(
        !bytes.windows(700).any(|w| w == [0x5a; 700]),
        "the torn tail is cut off"
    );
    check_acked(&s.endpoint(), &acked).await;
    // The log goes on after the cut.
    let more = put_keys(&s.endpoint(), "after", 20).await;
    assert!(more[0].2 > acked.last().unwrap().2);
    s.restart();
    check_acked(&s.endpoint(), &acked).await;
    check_acked(&s.endpoint(), &more).await;
}

/// A tmpfs of `mib` MiB mounted at `dir` (the test needs root, as the setup scripts do),
/// unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a small tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    fn grow(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_with_a_clear_error_and_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let disk = SmallDisk::mount(&data, 24);
    let mut s = Server::start_on(Kind::Cairn, data.clone());
    let mut c = Client::connect(&s.endpoint()).await;
    let value = vec![b'x'; 64 * 1024];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let key = format!("full/{i:05}");
        let req = PutRequest {
            key: key.clone().into_bytes().into(),
            value: value.clone().into(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(10), c.kv.put(req)).await {
            Ok(Ok(r)) => acked.push((
                key,
                String::from_utf8(value.clone()).unwrap(),
                r.into_inner().header.unwrap().revision,
            )),
            Ok(Err(status)) => {
                refused = Some(status);
                break;
            }
            Err(_) => panic!(
                "a put on a full disk hung instead of failing; log: {}",
                s.log()
            ),
        }
    }
    let status = refused.expect("24 MiB cannot hold 2000 values of 64 KiB");
    assert!(
        acked.len() > 10,
        "writes were accepted before the disk filled: {}",
        acked.len()
    );
    // The member stops: the client sees an error and the log names the cause.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.exited() {
        assert!(
            Instant::now() < deadline,
            "the member went on after a failed log write: {}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.log().contains("No space left on device"),
        "the log names the full disk ({status:?}): {}",
        s.log()
    );
    // Space returns; the member starts again with every acknowledged write and takes more.
    disk.grow(256);
    s.restart();
    check_acked(&s.endpoint(), &acked).await;
    let more = put_keys(&s.endpoint(), "after-full", 10).await;
    check_acked(&s.endpoint(), &more).await;
    s.kill();
    drop(disk);
}
