//! A cairn cluster of real processes on 127.0.0.1 for tests: members started with etcd's
//! clustering flags on ports chosen at run time, killed, restarted, added and removed. Every
//! process is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{HashKvRequest, StatusRequest};

use crate::grpc::Client;
use crate::harness::{becomes_healthy, cairn_bin, free_port};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    initial_cluster: String,
    state: &'static str,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process has exited on its own.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_some(),
            None => true,
        }
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    extra: Vec<String>,
    tmp: tempfile::TempDir,
}

const TOKEN: &str = "cairn-test-cluster";

impl Cluster {
    /// Starts `n` members with `extra` flags and waits until every one is healthy.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(n, extra);
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    /// A cluster of `n` members with `extra` flags, none of them started yet (`spawn`).
    pub fn prepare(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("infra{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: tmp.path().join(format!("infra{i}")),
                initial_cluster: String::new(),
                state: "new",
                child: None,
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        for m in &mut members {
            m.initial_cluster = initial.join(",");
        }
        Cluster {
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tmp,
        }
    }

    /// Starts member `i`'s process.
    pub fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client_url = format!("http://{}", m.endpoint());
        let mut cmd = Command::new(cairn_bin());
        cmd.args([
            "--name",
            &m.name,
            "--data-dir",
            m.data_dir.to_str().unwrap(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &m.peer_url(),
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--initial-cluster-token",
            TOKEN,
            "--initial-cluster",
            &m.initial_cluster,
            "--initial-cluster-state",
            m.state,
            // Faster elections than etcd's defaults keep the tests short.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]);
        cmd.args(&self.extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.data_dir.with_extension("log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.members[i].child = Some(cmd.spawn().expect("cairn starts"));
    }

    /// Waits until member `i` answers a linearizable read (it has a leader and is caught up).
    pub fn wait_healthy(&self, i: usize) {
        let m = &self.members[i];
        if !becomes_healthy(&m.endpoint()) {
            panic!("{} did not become healthy; log: {}", m.name, m.log());
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends member `i` a signal by name (`STOP` pauses it: it stops answering while it still
    /// believes what it believed, leadership included; `CONT` resumes it).
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Starts member `i` again on its ports and data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Adds a member to the list (not to the cluster: `etcdctl member add` does that) and
    /// starts it with `--initial-cluster-state existing` on peer URL `peer_url`.
    pub fn start_joining_at(&mut self, name: &str, peer_url: &str) -> usize {
        let mut initial: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.running())
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let peer_port = peer_url.rsplit(':').next().unwrap().parse().unwrap();
        let member = Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port,
            data_dir: self.tmp.path().join(name),
            initial_cluster: String::new(),
            state: "existing",
            child: None,
        };
        initial.push(format!("{}={}", member.name, member.peer_url()));
        let i = self.members.len();
        self.members.push(Member {
            initial_cluster: initial.join(","),
            ..member
        });
        self.spawn(i);
        i
    }

    /// Waits until member `i` serves serializable reads (a learner serves nothing else).
    pub async fn wait_for_serializable(&self, i: usize) {
        let m = &self.members[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = tokio::time::timeout(Duration::from_secs(1), async {
                let ch = tonic::transport::Channel::from_shared(format!("http://{}", m.endpoint()))
                    .unwrap()
                    .connect()
                    .await;
                ch.is_ok()
            })
            .await
            .unwrap_or_default();
            if ok
                && Client::connect(&m.endpoint())
                    .await
                    .serializable_revision()
                    .await
                    > 1
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never served; log: {}",
                m.name,
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Endpoints of the running members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.running())
            .map(Member::endpoint)
            .collect()
    }

    /// The index of the member every running member names as leader (waits for agreement).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = Vec::new();
            for m in self.members.iter().filter(|m| m.running()) {
                let mut c = Client::connect(&m.endpoint()).await;
                if let Ok(s) = c.maintenance.status(StatusRequest {}).await {
                    let s = s.into_inner();
                    seen.push((s.leader, s.header.unwrap().member_id));
                }
            }
            let leader = seen.first().map(|&(l, _)| l).filter(|&l| l != 0);
            if let Some(l) = leader {
                if seen.iter().all(|&(x, _)| x == l) {
                    if let Some(i) = self.index_of(l).await {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "members never agreed on a leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the running member with etcd member ID `id`.
    pub async fn index_of(&self, id: u64) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.running()) {
            let mut c = Client::connect(&m.endpoint()).await;
            if let Ok(s) = c.maintenance.status(StatusRequest {}).await {
                if s.into_inner().header.unwrap().member_id == id {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until every running member has applied revision `rev`, then returns each one's
    /// HashKV at `rev`.
    pub async fn hashes_at(&self, rev: i64) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for m in self.members.iter().filter(|m| m.running()) {
            let mut c = Client::connect(&m.endpoint()).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let current = c.serializable_revision().await;
                if current >= rev {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} stuck at revision {current} < {rev}; log: {}",
                    m.name,
                    m.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let h = c
                .maintenance
                .hash_kv(HashKvRequest { revision: rev })
                .await
                .unwrap()
                .into_inner();
            out.push((m.name.clone(), h.hash));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
