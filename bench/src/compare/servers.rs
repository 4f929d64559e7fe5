//! Starting and stopping the servers the comparison measures: real etcd or cairn, as one
//! member or a cluster on 127.0.0.1, with ports chosen at run time and data directories
//! side by side on the same filesystem. Both run with their default durability (fsync on
//! every commit).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::StatusRequest;

use crate::driver::connect;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Etcd,
    Cairn,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Cairn => "cairn",
        }
    }
}

/// A running server: one process per member.
pub struct Cluster {
    pub kind: Kind,
    pub endpoints: Vec<String>,
    pub data_dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

/// Ports for every member at once (listeners are held until all are chosen, so no two
/// members get the same one).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl Cluster {
    /// Starts `members` members of `kind` from `bin`, data under `root/<kind>-<n>`, and waits
    /// until every member reports a leader.
    pub async fn start(
        kind: Kind,
        bin: &Path,
        members: usize,
        root: &Path,
    ) -> anyhow::Result<Cluster> {
        let all = free_ports(2 * members)?;
        let ports: Vec<(u16, u16)> = all.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut cluster = Cluster {
            kind,
            endpoints: Vec::new(),
            data_dirs: Vec::new(),
            children: Vec::new(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = root.join(format!("{}-{i}", kind.name()));
            let _ = std::fs::remove_dir_all(&dir);
            let log = std::fs::File::create(root.join(format!("{}-{i}.log", kind.name())))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(&dir)
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-token")
                .arg("bench")
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--log-level")
                .arg("warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            cluster.children.push(
                cmd.spawn()
                    .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?,
            );
            cluster.endpoints.push(format!("127.0.0.1:{client}"));
            cluster.data_dirs.push(dir);
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until every member knows a leader, then puts the leader's endpoint first, so
    /// load sent to one endpoint goes to the leader on either server.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ids = Vec::new();
        let mut leader = 0;
        for ep in self.endpoints.clone() {
            loop {
                if let Ok(ch) = connect(&ep).await {
                    if let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
                        let s = s.into_inner();
                        if s.leader != 0 {
                            ids.push(s.header.map(|h| h.member_id).unwrap_or(0));
                            leader = s.leader;
                            break;
                        }
                    }
                }
                for c in &mut self.children {
                    if let Some(status) = c.try_wait()? {
                        anyhow::bail!("{} exited while starting: {status}", self.kind.name());
                    }
                }
                if Instant::now() > deadline {
                    anyhow::bail!("{} member {ep} did not become ready", self.kind.name());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(i) = ids.iter().position(|id| *id == leader) {
            self.endpoints.swap(0, i);
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Summed resident memory of the members, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|p| crate::cpu::rss_bytes(*p))
            .sum()
    }

    /// Bytes the members' data directories occupy on disk (allocated blocks, as `du` counts).
    pub fn disk_bytes(&self) -> u64 {
        self.data_dirs.iter().map(|d| dir_bytes(d)).sum()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Allocated bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// This disk's write + fdatasync latency: 4 KiB written and synced `n` times in `dir`;
/// returns (p50, p99) in milliseconds.
pub fn fdatasync_latency(dir: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    use std::io::{Seek, Write};
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        f.seek(std::io::SeekFrom::Start(((i % 64) * 4096) as u64))?;
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat[n / 2], lat[(n * 99 / 100).min(n - 1)]))
}
