//! Flags and their `ETCD_*` environment variables, auto-compaction, and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{cairn_bin, etcdctl, etcdctl35, free_port, Kind, Server};

#[test]
fn etcd_environment_variables_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Killed(
        Command::new(cairn_bin())
            .env("ETCD_NAME", "envnode")
            .env("ETCD_DATA_DIR", dir.path().join("d"))
            .env("ETCD_LISTEN_CLIENT_URLS", &url)
            .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
            .env("ETCD_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ep = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = etcdctl(&etcdctl35(), &ep, &["member", "list"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "server did not start from ETCD_* variables"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed.contains(", envnode, "), "{listed}");
    assert!(listed.contains(&url), "{listed}");
    assert!(
        dir.path().join("d").join("member").exists(),
        "data in ETCD_DATA_DIR"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    assert!(
        child.0.wait().unwrap().success(),
        "SIGTERM is a clean shutdown"
    );
}

/// A child process killed when the test ends, whether it passes or panics.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bad_flags_are_refused_with_a_clear_error() {
    let out = Command::new(cairn_bin())
        .args(["--initial-cluster-state", "sideways"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("initial-cluster-state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(cairn_bin())
        .args(["--auto-compaction-mode", "weekly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn periodic_auto_compaction_compacts_old_history() {
    let s = Server::start_with(
        Kind::Cairn,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        assert!(s.ctl(&["put", "ac", &i.to_string()]).status.success());
        i += 1;
        let out = s.ctl(&["endpoint", "hashkv", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let compacted = v[0]["HashKV"]["compact_revision"].as_i64().unwrap_or(-1);
        if compacted > 1 {
            // History older than the retention is gone.
            let old = s.ctl(&["get", "ac", "--rev=1"]);
            assert!(String::from_utf8_lossy(&old.stderr)
                .contains("required revision has been compacted"));
            return;
        }
        assert!(Instant::now() < deadline, "no auto-compaction within 30s");
        std::thread::sleep(Duration::from_millis(200));
    }
}
