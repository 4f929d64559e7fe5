//! `cairn-bench`: a load generator for any etcd v3 endpoint (cairn's or etcd's), modeled on
//! etcd's `tools/benchmark` — the same workload names and flags — plus `compare`, the
//! side-by-side run against real etcd that writes BENCHMARKS.md. Each run prints a human
//! summary and one JSON line (see `report.rs`).

use std::time::Duration;

use bench::compare;
use bench::driver::Plan;
use bench::workload::{k8s, kv, lease, watch};
use clap::{Args, Parser, Subcommand};

/// The same allocator as the server: less of the generator's CPU goes to allocation.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cairn-bench",
    version,
    about = "Load generator for etcd v3 endpoints"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Global {
    /// gRPC endpoints (host:port), comma-separated; connections are spread over them.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Run for this many seconds instead of a fixed total.
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Server process IDs whose CPU time is charged to the run (comma-separated).
    #[arg(long, global = true, value_delimiter = ',')]
    target_pid: Vec<u32>,
    /// Print only the JSON line.
    #[arg(long, global = true)]
    json: bool,
    /// Worker threads of the load generator's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
}

#[derive(Args, Clone)]
struct KeyFlags {
    /// Key size of each request.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of each request.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Use sequential keys instead of random ones.
    #[arg(long)]
    sequential_keys: bool,
}

impl KeyFlags {
    fn keys(&self) -> kv::Keys {
        kv::Keys {
            key_size: self.key_size,
            val_size: self.val_size,
            key_space: self.key_space_size,
            sequential: self.sequential_keys,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark put.
    Put {
        #[arg(long, default_value_t = 10000)]
        total: u64,
        #[command(flatten)]
        keys: KeyFlags,
        /// Maximum puts per second (0 is no limit).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Run through the etcd-client crate instead (client CPU comparison).
        #[arg(long)]
        stock_client: bool,
    },
    /// Benchmark range: `range <key> [end-range]`.
    Range {
        key: String,
        end: Option<String>,
        #[arg(long, default_value_t = 10000)]
        total: u64,
        /// Linearizable (l) or serializable (s).
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Maximum number of results per range.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Range over every key with `key` as a prefix.
        #[arg(long)]
        prefix: bool,
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Run through the etcd-client crate instead (client CPU comparison).
        #[arg(long)]
        stock_client: bool,
    },
    /// Benchmark optimistic updates: txn(compare mod_revision, put).
    TxnPut {
        #[arg(long, default_value_t = 10000)]
        total: u64,
        #[command(flatten)]
        keys: KeyFlags,
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Benchmark transactions mixing reads and writes.
    TxnMixed {
        #[arg(long, default_value_t = 10000)]
        total: u64,
        #[command(flatten)]
        keys: KeyFlags,
        /// Read/write ratio.
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        /// Read consistency: linearizable (l) or serializable (s).
        #[arg(long, default_value = "l")]
        consistency: String,
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Benchmark watch event delivery to many watchers.
    Watch {
        #[command(flatten)]
        w: WatchFlags,
        /// Watchers per stream.
        #[arg(long, default_value_t = 100)]
        watch_per_stream: usize,
        /// Puts per second (0 is no limit).
        #[arg(long, default_value_t = 0.0)]
        put_rate: f64,
    },
    /// Benchmark the latency from a put to its watch events.
    WatchLatency {
        #[command(flatten)]
        w: WatchFlags,
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        #[arg(long, default_value_t = 100.0)]
        put_rate: f64,
    },
    /// Benchmark lease keep-alive round trips.
    LeaseKeepalive {
        #[arg(long, default_value_t = 10000)]
        total: u64,
    },
    /// Run a kube-apiserver-shaped traffic mix.
    K8s {
        #[arg(long, default_value_t = 10000)]
        total: u64,
        /// Long-lived objects spread over pods, configmaps, services and deployments.
        #[arg(long, default_value_t = 2000)]
        objects: u64,
        #[arg(long, default_value_t = 1024)]
        val_size: usize,
        /// Page size of list requests.
        #[arg(long, default_value_t = 500)]
        list_limit: i64,
        /// Seconds between compactions.
        #[arg(long, default_value_t = 5.0)]
        compact_interval: f64,
    },
    /// Run cairn and real etcd side by side and write BENCHMARKS.md and its chart.
    Compare(compare::CompareArgs),
}

#[derive(Args, Clone)]
struct WatchFlags {
    /// Number of watch streams.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Number of keys the watchers watch.
    #[arg(long, default_value_t = 10)]
    watched_key_total: usize,
    /// Number of puts.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    #[arg(long, default_value_t = 32)]
    val_size: usize,
    /// Ask for the previous key-value with every event.
    #[arg(long)]
    prev_kv: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread runs every client on one core without cross-thread wake-ups (the least
    // client CPU per operation); more spread the clients over cores.
    let rt = if cli.global.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.global.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(cli))
}

/// `x` must be a finite number at least `min`.
fn check(name: &str, x: f64, min: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        x.is_finite() && x >= min,
        "--{name} must be a number >= {min}, got {x}"
    );
    Ok(())
}

fn plan(g: &Global, total: u64, rate: f64) -> Plan {
    Plan {
        endpoints: g.endpoints.clone(),
        conns: g.conns.max(1),
        clients: g.clients.max(1),
        total,
        duration: g.duration.map(Duration::from_secs_f64),
        rate,
        target_pids: g.target_pid.clone(),
        progress: !g.json,
    }
}

fn watch_spec(w: &WatchFlags, per_stream: usize) -> watch::WatchSpec {
    watch::WatchSpec {
        streams: w.streams,
        watchers_per_stream: per_stream,
        keys: w.watched_key_total,
        val_size: w.val_size,
        prev_kv: w.prev_kv,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    if let Some(d) = g.duration {
        check("duration", d, 0.001)?;
    }
    match &cli.cmd {
        Cmd::Put { rate, .. } | Cmd::Range { rate, .. } | Cmd::TxnPut { rate, .. } => {
            check("rate", *rate, 0.0)?
        }
        Cmd::TxnMixed { rw_ratio, rate, .. } => {
            check("rw-ratio", *rw_ratio, 0.0)?;
            check("rate", *rate, 0.0)?;
        }
        Cmd::Watch { put_rate, .. } | Cmd::WatchLatency { put_rate, .. } => {
            check("put-rate", *put_rate, 0.0)?
        }
        Cmd::K8s {
            compact_interval, ..
        } => check("compact-interval", *compact_interval, 0.01)?,
        _ => {}
    }
    let report = match &cli.cmd {
        Cmd::Put {
            total,
            keys,
            rate,
            stock_client,
        } => {
            let p = plan(g, *total, *rate);
            if *stock_client {
                kv::stock_client(&p, &keys.keys(), "put", None).await?
            } else {
                kv::put(&p, &keys.keys()).await?
            }
        }
        Cmd::Range {
            key,
            end,
            total,
            consistency,
            limit,
            prefix,
            rate,
            stock_client,
        } => {
            let p = plan(g, *total, *rate);
            if *stock_client {
                anyhow::ensure!(end.is_none() && !prefix, "--stock-client ranges one key");
                let keys = kv::Keys {
                    key_size: 0,
                    val_size: 0,
                    key_space: 1,
                    sequential: true,
                };
                kv::stock_client(&p, &keys, "range", Some(key.clone().into_bytes())).await?
            } else {
                let range_end = match (end, prefix) {
                    (_, true) => kv::prefix_end(key.as_bytes()),
                    (Some(e), false) => e.clone().into_bytes(),
                    (None, false) => Vec::new(),
                };
                let spec = kv::RangeSpec {
                    key: key.clone().into_bytes(),
                    range_end,
                    serializable: consistency_is_serializable(consistency)?,
                    limit: *limit,
                };
                kv::range(&p, &spec).await?
            }
        }
        Cmd::TxnPut { total, keys, rate } => {
            kv::txn_put(&plan(g, *total, *rate), &keys.keys()).await?
        }
        Cmd::TxnMixed {
            total,
            keys,
            rw_ratio,
            consistency,
            rate,
        } => {
            let s = consistency_is_serializable(consistency)?;
            kv::txn_mixed(&plan(g, *total, *rate), &keys.keys(), *rw_ratio, s).await?
        }
        Cmd::Watch {
            w,
            watch_per_stream,
            put_rate,
        } => {
            let p = plan(g, w.put_total, *put_rate);
            watch::watch(&p, &watch_spec(w, *watch_per_stream)).await?
        }
        Cmd::WatchLatency {
            w,
            watchers_per_stream,
            put_rate,
        } => {
            let p = plan(g, w.put_total, *put_rate);
            watch::watch_latency(&p, &watch_spec(w, *watchers_per_stream)).await?
        }
        Cmd::LeaseKeepalive { total } => lease::keepalive(&plan(g, *total, 0.0)).await?,
        Cmd::K8s {
            total,
            objects,
            val_size,
            list_limit,
            compact_interval,
        } => {
            let spec = k8s::K8sSpec {
                objects: *objects,
                val_size: *val_size,
                list_limit: *list_limit,
                compact_interval: Duration::from_secs_f64(*compact_interval),
            };
            k8s::run(&plan(g, *total, 0.0), &spec).await?
        }
        Cmd::Compare(args) => return compare::run(args).await,
    };
    if !g.json {
        print!("{}", report.human());
    }
    println!("{}", report.json());
    Ok(())
}

fn consistency_is_serializable(c: &str) -> anyhow::Result<bool> {
    match c {
        "l" => Ok(false),
        "s" => Ok(true),
        other => anyhow::bail!("consistency must be l or s, got {other:?}"),
    }
}
