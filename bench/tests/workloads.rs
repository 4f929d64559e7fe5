//! Every `cairn-bench` workload, run from its command line against a cairn member and a real
//! etcd 3.5.1, must complete exactly what it was asked to with no errors, and print a JSON
//! line that says so; the comparison harness must produce its report and chart. (Figures are
//! not judged here: speed is measured by the harness, not by tests.)

use std::path::PathBuf;
use std::process::Command;

use bench::compare::servers::{Cluster, Kind};
use bench::report::Report;

/// The cairn binary `cargo test --workspace` built beside this test.
fn cairn_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("cairn");
    assert!(
        bin.exists(),
        "{} missing: run the workspace's tests (./test.sh)",
        bin.display()
    );
    bin
}

fn etcd_bin() -> PathBuf {
    let dir = std::env::var("CAIRN_ETCD_BIN_DIR")
        .expect("CAIRN_ETCD_BIN_DIR must name real etcd's directory (./test.sh sets it)");
    PathBuf::from(dir).join("etcd")
}

fn bench(cluster: &Cluster, args: &[&str]) -> Report {
    let pids: Vec<String> = cluster.pids().iter().map(|p| p.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .arg("--endpoints")
        .arg(cluster.endpoints.join(","))
        .arg("--target-pid")
        .arg(pids.join(","))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a JSON line");
    let report: Report = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(report.errors, 0, "{args:?} on {:?}: {line}", cluster.kind);
    assert!(report.server_cpu_s.is_some(), "{line}");
    report
}

async fn every_workload(kind: Kind, bin: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(kind, &bin, 1, dir.path()).await.unwrap();
    let c = &cluster;
    let put = bench(
        c,
        &[
            "--clients",
            "8",
            "--conns",
            "2",
            "put",
            "--total",
            "500",
            "--val-size",
            "64",
            "--key-space-size",
            "100",
            "--sequential-keys",
        ],
    );
    assert_eq!(put.ops, 500);
    // The puts wrote keys 00000000..00000099: a prefix range with a limit returns them.
    let r = bench(
        c,
        &[
            "--clients",
            "4",
            "range",
            "000000",
            "--prefix",
            "--limit",
            "10",
            "--consistency",
            "s",
            "--total",
            "200",
        ],
    );
    assert_eq!(r.ops, 200);
    let r = bench(c, &["range", "00000001", "--total", "100", "--json"]);
    assert_eq!((r.workload.as_str(), r.ops), ("range-l", 100));
    let t = bench(
        c,
        &[
            "--clients",
            "4",
            "txn-put",
            "--total",
            "300",
            "--key-space-size",
            "40",
        ],
    );
    assert_eq!(t.ops, 300);
    let t = bench(
        c,
        &[
            "--clients",
            "4",
            "txn-mixed",
            "--total",
            "300",
            "--key-space-size",
            "40",
            "--rw-ratio",
            "3",
        ],
    );
    assert_eq!(t.ops, 300);
    assert_eq!(t.by_op["read"].ops + t.by_op["write"].ops, 300);
    let w = bench(
        c,
        &[
            "--clients",
            "4",
            "watch",
            "--streams",
            "3",
            "--watch-per-stream",
            "5",
            "--watched-key-total",
            "4",
            "--put-total",
            "100",
        ],
    );
    // 15 watchers over 4 keys (4, 4, 4, 3 watchers), 25 puts to each key.
    assert_eq!(w.extra["events_expected"], 375.0);
    assert_eq!(w.ops, 375);
    let w = bench(
        c,
        &[
            "watch-latency",
            "--streams",
            "2",
            "--watchers-per-stream",
            "3",
            "--watched-key-total",
            "1",
            "--put-total",
            "50",
            "--put-rate",
            "200",
            "--prev-kv",
        ],
    );
    assert_eq!(w.ops, 300);
    let l = bench(c, &["--clients", "3", "lease-keepalive", "--total", "150"]);
    assert_eq!(l.ops, 150);
    let k = bench(
        c,
        &[
            "--clients",
            "4",
            "k8s",
            "--total",
            "400",
            "--objects",
            "120",
            "--list-limit",
            "7",
            "--compact-interval",
            "0.2",
        ],
    );
    assert_eq!(k.ops, 400);
    assert!(
        k.by_op.contains_key("update") && k.by_op.contains_key("event"),
        "{:?}",
        k.by_op
    );
    if k.by_op.contains_key("list") {
        // At least 30 objects per resource at 7 per page: every list takes 5 pages or more.
        assert!(
            k.extra["list_pages"] >= 5.0 * k.by_op["list"].ops as f64,
            "{:?}",
            k.extra
        );
    }
    let s = bench(
        c,
        &["--clients", "2", "put", "--stock-client", "--total", "100"],
    );
    assert_eq!((s.workload.as_str(), s.ops), ("put (etcd-client)", 100));
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_completes_against_cairn() {
    every_workload(Kind::Cairn, cairn_bin()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_completes_against_real_etcd() {
    every_workload(Kind::Etcd, etcd_bin()).await;
}

#[test]
fn compare_writes_the_report_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let (out, assets) = (dir.path().join("B.md"), dir.path().join("assets"));
    let status = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args([
            "compare",
            "--rounds",
            "1",
            "--run-secs",
            "0.3",
            "--client-counts",
            "1,4",
        ])
        .args([
            "--members",
            "1",
            "--memory-keys",
            "300",
            "--only",
            "put,range-s",
        ])
        .arg("--etcd-bin")
        .arg(etcd_bin())
        .arg("--cairn-bin")
        .arg(cairn_bin())
        .arg("--out")
        .arg(&out)
        .arg("--assets")
        .arg(&assets)
        .arg("--data-root")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(&out).unwrap();
    for row in [
        "| put | 1 |",
        "| put | 4 |",
        "| range-s | 4 |",
        "| etcd | 300 |",
        "| cairn | 300 |",
    ] {
        assert!(md.contains(row), "{row} missing from\n{md}");
    }
    assert!(md.contains("| put, 1 client, p50 latency"), "{md}");
    let svg = std::fs::read_to_string(assets.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("cairn put"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(assets.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["samples"].as_array().unwrap().len(), 2 * 2 * 2);
}
