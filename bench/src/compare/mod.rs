//! `cairn-bench compare`: real etcd and cairn side by side on this machine. Both run with
//! fsync on, data on the same filesystem, on 127.0.0.1; every workload runs against one then
//! the other, alternating A B A B for `--rounds` rounds, first on single members and then on
//! 3-member clusters. Then memory and disk after loading 1M keys, and the load generator's
//! own CPU against a stock etcd client. Medians go into BENCHMARKS.md (with the targets of
//! issue 4 checked), every run's JSON into a `.jsonl` file, and a chart into an SVG.

mod chart;
mod markdown;
pub mod servers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::driver::Plan;
use crate::report::Report;
use crate::workload::{k8s, kv, lease, watch};
use servers::{Cluster, Kind};

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Real etcd's binary.
    #[arg(long)]
    pub etcd_bin: PathBuf,
    /// cairn's binary (a release build).
    #[arg(long)]
    pub cairn_bin: PathBuf,
    /// Where the report goes; results (.jsonl) and the chart (.svg) go beside it in
    /// `docs/benchmarks/`.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Directory for the results and the chart.
    #[arg(long, default_value = "docs/benchmarks")]
    pub assets: PathBuf,
    /// Rounds per workload and server (alternating).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds each timed run lasts.
    #[arg(long, default_value_t = 3.0)]
    pub run_secs: f64,
    /// Client counts every workload runs at.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub client_counts: Vec<usize>,
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub members: Vec<usize>,
    /// Keys loaded before measuring memory and disk (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_keys: u64,
    /// Only these workloads (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where the servers keep their data: must be a real disk, not tmpfs.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
}

/// One workload at one concurrency.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Case {
    pub workload: String,
    pub clients: usize,
}

/// One run's result and where it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub members: usize,
    pub server: String,
    pub case: Case,
    pub round: usize,
    pub report: Report,
}

/// Memory and disk after the bulk load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Footprint {
    pub server: String,
    pub keys: u64,
    pub rss_bytes: u64,
    pub disk_bytes: u64,
    pub load_ops_per_sec: f64,
}

/// Everything a comparison produced.
#[derive(Default, Serialize, Deserialize)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub footprints: Vec<Footprint>,
    /// Load generator CPU: (driver name, sample).
    pub client_cpu: Vec<(String, Report)>,
    pub fdatasync_ms: (f64, f64),
    pub machine: String,
    pub args: String,
}

const WORKLOADS: [&str; 7] = [
    "put",
    "range-l",
    "range-s",
    "txn-put",
    "txn-mixed",
    "lease-keepalive",
    "k8s",
];
/// Keys the key-value workloads spread over.
const KEY_SPACE: u64 = 100_000;
const VAL_SIZE: usize = 256;
/// Watchers in the `watch` case (10 streams of 100).
const WATCHERS: usize = 1000;

fn cases(args: &CompareArgs) -> Vec<Case> {
    let mut out = Vec::new();
    let wanted = |w: &str| args.only.is_empty() || args.only.iter().any(|o| o == w);
    for w in WORKLOADS.iter().filter(|w| wanted(w)) {
        for &c in &args.client_counts {
            out.push(Case {
                workload: w.to_string(),
                clients: c,
            });
        }
        if *w == "txn-put" && !args.client_counts.contains(&64) {
            out.push(Case {
                workload: w.to_string(),
                clients: 64,
            });
        }
    }
    if wanted("watch") {
        out.push(Case {
            workload: "watch".into(),
            clients: WATCHERS,
        });
    }
    if wanted("watch-sustained") {
        out.push(Case {
            workload: "watch-sustained".into(),
            clients: WATCHERS,
        });
    }
    if wanted("watch-latency") {
        out.push(Case {
            workload: "watch-latency".into(),
            clients: 100,
        });
    }
    out
}

fn keys() -> kv::Keys {
    kv::Keys {
        key_size: 8,
        val_size: VAL_SIZE,
        key_space: KEY_SPACE,
        sequential: false,
    }
}

/// Connections for a client count: one per 16 clients, as etcd's docs pair them.
fn conns_for(clients: usize) -> usize {
    (clients / 16).clamp(1, 16)
}

/// Runs one case against a running server.
pub async fn run_case(case: &Case, cluster: &Cluster, run_secs: f64) -> anyhow::Result<Report> {
    let mut plan = Plan {
        endpoints: cluster.endpoints.clone(),
        conns: conns_for(case.clients),
        clients: case.clients,
        total: u64::MAX,
        duration: Some(Duration::from_secs_f64(run_secs)),
        rate: 0.0,
        target_pids: cluster.pids(),
        progress: false,
    };
    let range = |serializable| kv::RangeSpec {
        key: keys().key(1),
        range_end: Vec::new(),
        serializable,
        limit: 0,
    };
    match case.workload.as_str() {
        "put" => kv::put(&plan, &keys()).await,
        "range-l" => kv::range(&plan, &range(false)).await,
        "range-s" => kv::range(&plan, &range(true)).await,
        "txn-put" => kv::txn_put(&plan, &keys()).await,
        "txn-mixed" => kv::txn_mixed(&plan, &keys(), 1.0, false).await,
        "lease-keepalive" => lease::keepalive(&plan).await,
        "k8s" => {
            let spec = k8s::K8sSpec {
                objects: 2000,
                val_size: 1024,
                list_limit: 500,
                compact_interval: Duration::from_secs(1),
            };
            k8s::run(&plan, &spec).await
        }
        "watch" | "watch-sustained" => {
            // 1,000 puts to one key watched by 1,000 watchers: a million events, so delivery,
            // not the puts, sets the pace. Sustained, 15,000 puts: the puts outrun delivery,
            // so streams fall behind and catch up from history while writes go on.
            plan.clients = 16;
            plan.conns = 1;
            plan.duration = None;
            plan.total = if case.workload == "watch" {
                1000
            } else {
                15_000
            };
            let spec = watch::WatchSpec {
                streams: 10,
                watchers_per_stream: 100,
                keys: 1,
                val_size: VAL_SIZE,
                prev_kv: false,
            };
            watch::watch(&plan, &spec).await
        }
        "watch-latency" => {
            plan.clients = 4;
            plan.conns = 1;
            plan.rate = 500.0;
            let spec = watch::WatchSpec {
                streams: 10,
                watchers_per_stream: 10,
                keys: 1,
                val_size: VAL_SIZE,
                prev_kv: true,
            };
            watch::watch_latency(&plan, &spec).await
        }
        other => anyhow::bail!("unknown workload {other}"),
    }
}

/// Writes the keys the range workloads read.
async fn preload(cluster: &Cluster) -> anyhow::Result<()> {
    let plan = Plan {
        endpoints: cluster.endpoints.clone(),
        conns: 1,
        clients: 16,
        total: 1000,
        duration: None,
        rate: 0.0,
        target_pids: vec![],
        progress: false,
    };
    let mut k = keys();
    k.sequential = true;
    k.key_space = 1000;
    let r = kv::put(&plan, &k).await?;
    anyhow::ensure!(r.errors == 0, "preload failed on {}", cluster.kind.name());
    Ok(())
}

/// Waits until the server is idle again (at most a few seconds) and charges the CPU it spent
/// meanwhile — flushes, compactions and snapshots the run caused — to the run.
async fn settle(report: &mut Report, pids: &[u32]) {
    let start = crate::cpu::total_cpu_secs(pids);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = start;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = crate::cpu::total_cpu_secs(pids);
        let busy = now - last > 0.015;
        last = now;
        if !busy || std::time::Instant::now() > deadline {
            break;
        }
    }
    let tail = last - start;
    report.extra.insert("server_cpu_tail_s".into(), tail);
    if let Some(cpu) = report.server_cpu_s.as_mut() {
        *cpu += tail;
        if report.ops > 0 {
            report.server_cpu_us_per_op = Some(*cpu * 1e6 / report.ops as f64);
        }
    }
}

/// Compacts the server's history up to its current revision.
async fn compact_all(cluster: &Cluster) -> anyhow::Result<()> {
    use etcd_proto::etcdserverpb::kv_client::KvClient;
    use etcd_proto::etcdserverpb::{CompactionRequest, RangeRequest};
    let mut kv = KvClient::new(crate::driver::connect(&cluster.endpoints[0]).await?);
    let rev = kv
        .range(RangeRequest {
            key: b"0".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .header
        .map(|h| h.revision)
        .unwrap_or(0);
    match kv
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
    {
        // Nothing was written since the last compaction.
        Err(s) if s.code() == tonic::Code::OutOfRange => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

fn data_root(args: &CompareArgs) -> anyhow::Result<tempfile::TempDir> {
    let base = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir_in(base)?)
}

fn log(msg: &str) {
    eprintln!("[compare] {msg}");
}

pub async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    for bin in [&args.etcd_bin, &args.cairn_bin] {
        anyhow::ensure!(bin.exists(), "{} does not exist", bin.display());
    }
    let root = data_root(args)?;
    let mut results = Results {
        fdatasync_ms: servers::fdatasync_latency(root.path(), 500)?,
        machine: markdown::machine(),
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        ..Default::default()
    };
    log(&format!(
        "fdatasync p50 {:.3} ms, p99 {:.3} ms",
        results.fdatasync_ms.0, results.fdatasync_ms.1
    ));
    let cases = cases(args);
    for &members in &args.members {
        let etcd = Cluster::start(Kind::Etcd, &args.etcd_bin, members, root.path()).await?;
        let cairn = Cluster::start(Kind::Cairn, &args.cairn_bin, members, root.path()).await?;
        preload(&etcd).await?;
        preload(&cairn).await?;
        for case in &cases {
            for round in 0..args.rounds {
                // A B, then B A: neither server always runs right after the other's load.
                let order = if round % 2 == 0 {
                    [&etcd, &cairn]
                } else {
                    [&cairn, &etcd]
                };
                for server in order {
                    let mut report = run_case(case, server, args.run_secs).await?;
                    settle(&mut report, &server.pids()).await;
                    log(&format!(
                        "{members} member(s) {:>15} {:>4} clients round {round} {:>5}: {:>9.0} ops/s p99 {:>7.2} ms cpu {:>6.1} µs/op errors {}",
                        case.workload, case.clients, server.kind.name(), report.ops_per_sec,
                        report.latency_ms.p99, report.server_cpu_us_per_op.unwrap_or(0.0), report.errors
                    ));
                    results.samples.push(Sample {
                        members,
                        server: server.kind.name().into(),
                        case: case.clone(),
                        round,
                        report,
                    });
                }
            }
            // Each case starts from the same history: everything older is compacted away.
            for server in [&etcd, &cairn] {
                compact_all(server).await?;
                settle(&mut Report::empty(), &server.pids()).await;
            }
        }
        etcd.stop();
        cairn.stop();
    }
    if args.memory_keys > 0 {
        for kind in [Kind::Etcd, Kind::Cairn] {
            results
                .footprints
                .push(footprint(args, kind, root.path()).await?);
        }
    }
    results.client_cpu = client_cpu(args, root.path()).await?;
    write_outputs(args, &results)
}

/// Loads `memory_keys` keys of 256 bytes into a fresh single member and measures it.
async fn footprint(args: &CompareArgs, kind: Kind, root: &Path) -> anyhow::Result<Footprint> {
    let bin = if kind == Kind::Etcd {
        &args.etcd_bin
    } else {
        &args.cairn_bin
    };
    let cluster = Cluster::start(kind, bin, 1, root).await?;
    let plan = Plan {
        endpoints: cluster.endpoints.clone(),
        conns: 16,
        clients: 256,
        total: args.memory_keys,
        duration: None,
        rate: 0.0,
        target_pids: cluster.pids(),
        progress: false,
    };
    let k = kv::Keys {
        key_size: 16,
        val_size: VAL_SIZE,
        key_space: args.memory_keys,
        sequential: true,
    };
    let report = kv::put(&plan, &k).await?;
    anyhow::ensure!(
        report.errors == 0,
        "{} refused {} puts of the load",
        kind.name(),
        report.errors
    );
    // Let background work (flushes, compactions, snapshots) settle before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let f = Footprint {
        server: kind.name().into(),
        keys: args.memory_keys,
        rss_bytes: cluster.rss_bytes(),
        disk_bytes: cluster.disk_bytes(),
        load_ops_per_sec: report.ops_per_sec,
    };
    log(&format!(
        "{}: {} keys, RSS {} MiB, disk {} MiB",
        f.server,
        f.keys,
        f.rss_bytes >> 20,
        f.disk_bytes >> 20
    ));
    cluster.stop();
    Ok(f)
}

/// This generator against the etcd-client crate, same workload, same server (cairn, one
/// member), alternating; the client's own CPU per operation is what is compared.
async fn client_cpu(args: &CompareArgs, root: &Path) -> anyhow::Result<Vec<(String, Report)>> {
    let cluster = Cluster::start(Kind::Cairn, &args.cairn_bin, 1, root).await?;
    preload(&cluster).await?;
    let mut out = Vec::new();
    for _ in 0..args.rounds {
        for op in ["put", "range"] {
            let plan = Plan {
                endpoints: cluster.endpoints.clone(),
                conns: 1,
                clients: 16,
                total: u64::MAX,
                duration: Some(Duration::from_secs_f64(args.run_secs)),
                rate: 0.0,
                target_pids: cluster.pids(),
                progress: false,
            };
            let mut k = keys();
            k.key_space = 1000;
            let ours = if op == "put" {
                kv::put(&plan, &k).await?
            } else {
                kv::range(
                    &plan,
                    &kv::RangeSpec {
                        key: k.key(1),
                        range_end: vec![],
                        serializable: false,
                        limit: 0,
                    },
                )
                .await?
            };
            let stock =
                kv::stock_client(&plan, &k, op, Some(k.key(1)).filter(|_| op == "range")).await?;
            log(&format!(
                "client CPU {op}: cairn-bench {:.1} µs/op, etcd-client {:.1} µs/op",
                ours.client_cpu_us_per_op, stock.client_cpu_us_per_op
            ));
            out.push(("cairn-bench".to_string(), ours));
            out.push(("etcd-client".to_string(), stock));
        }
    }
    cluster.stop();
    Ok(out)
}

fn write_outputs(args: &CompareArgs, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.assets)?;
    let jsonl = args.assets.join("results.json");
    std::fs::write(&jsonl, serde_json::to_string_pretty(results)?)?;
    let svg = args.assets.join("chart.svg");
    chart::draw(results, &svg)?;
    let analysis = std::fs::read_to_string(args.assets.join("analysis.md")).ok();
    let md = markdown::render(results, &svg, analysis.as_deref());
    std::fs::write(&args.out, md)?;
    log(&format!(
        "wrote {}, {} and {}",
        args.out.display(),
        jsonl.display(),
        svg.display()
    ));
    Ok(())
}
