//! The `cairn` binary: parses etcd-style flags, sets up logging, and runs the server until
//! SIGINT or SIGTERM. `cairn snapshot restore` unpacks a snapshot into a new data directory.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use server::Flags;

/// jemalloc serves every allocation in the process, RocksDB's C++ included (the crate's
/// unprefixed `malloc` replaces glibc's): under load glibc's allocator spent about a fifth of
/// the server's CPU in fragmentation handling, and jemalloc keeps the resident set tighter.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "An etcd v3-compatible key-value store",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot utilities.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Restores a snapshot saved by `etcdctl snapshot save` from cairn into a new data directory.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Path to the data directory to create (default: <name>.etcd).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Snapshot {
            action:
                SnapshotAction::Restore {
                    file,
                    data_dir,
                    name,
                },
        }) => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
            if data_dir.exists() {
                bail!("data-dir {:?} exists", data_dir.display().to_string());
            }
            let kv = server::server::kv_dir(&data_dir);
            store::snapshot::unpack(&file, &kv)
                .with_context(|| format!("restoring {}", file.display()))?;
            // The restored member starts a new cluster (as etcd's restore does): the old
            // cluster's Raft position and membership do not carry over.
            let (_, mut writer) = store::Store::open(&kv, &store::BackendOptions::default())
                .with_context(|| format!("opening {}", kv.display()))?;
            writer
                .delete_meta(&[
                    raftlog::state_machine::META_RAFT_APPLIED,
                    raftlog::state_machine::META_RAFT_MEMBERSHIP,
                    raftlog::state_machine::META_RAFT_PARTIAL,
                ])
                .and_then(|()| writer.sync())
                .context("resetting the Raft position of the restored store")?;
            println!(
                "restored snapshot {} into {}",
                file.display(),
                data_dir.display()
            );
            Ok(())
        }
        None => serve(cli.flags),
    }
}

fn serve(flags: Flags) -> anyhow::Result<()> {
    let config = flags.validate()?;
    init_logging(&flags.log_level, &flags.log_format)?;
    // At least two workers: the Raft log's fdatasync blocks the worker it runs on, and the
    // other one keeps serving meanwhile (on a one-CPU machine too).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(server::run(config, shutdown_signal()))?;
    Ok(())
}

fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let level = match level {
        "debug" | "info" | "warn" | "error" => level,
        "panic" | "fatal" => "error",
        other => bail!("unknown --log-level {other:?}"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,openraft=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" | "console" => builder.init(),
        other => bail!("unknown --log-format {other:?}"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
