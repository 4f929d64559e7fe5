//! `chaos`: runs simulated cairn clusters under faults and checks every history.
//!
//! - `soak --seeds N [--first S] [--jobs J]`: N seeds' short scenarios, each in a process of
//!   its own; prints one line per seed (the full report and the replay command for a failure)
//!   and `N passed, M failed`.
//! - `replay --seed S [--repeat N] [...]`: one scenario, with the server's logs
//!   (`--log-level`) and the run's fingerprint; `--repeat` runs it N times and checks that
//!   every run went exactly the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use chaos::{run_in_child, Scenario};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Simulated cairn clusters under faults, every history checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs many seeds.
    Soak {
        /// How many seeds.
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Simulations run at once (each on its own thread).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        #[command(flatten)]
        shape: Shape,
    },
    /// Runs one seed again, with the server's logs.
    Replay {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        shape: Shape,
        /// Log level of the simulated members (error, warn, info, debug).
        #[arg(long, default_value = "warn")]
        log_level: String,
        /// Runs it this many times and checks that every run went exactly as the first (the
        /// same fingerprint), stopping at the first failure.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Runs one scenario (JSON) in this process and prints its outcome as JSON (what `soak`
    /// and `replay` start a process for).
    #[command(hide = true)]
    Child {
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value = "off")]
        log_level: String,
    },
}

/// Overrides of the short scenario's shape; unset ones follow the seed.
#[derive(Args, Clone)]
struct Shape {
    #[arg(long)]
    members: Option<usize>,
    #[arg(long)]
    clients: Option<usize>,
    #[arg(long)]
    keys: Option<usize>,
    #[arg(long)]
    load_secs: Option<u64>,
    #[arg(long)]
    faults: Option<usize>,
    /// Turns on the server's deliberate bug (linearizable reads served locally).
    #[arg(long)]
    bug_local_reads: bool,
}

impl Shape {
    fn scenario(&self, seed: u64) -> Scenario {
        let mut s = Scenario::short(seed);
        s.members = self.members.unwrap_or(s.members);
        s.clients = self.clients.unwrap_or(s.clients);
        s.keys = self.keys.unwrap_or(s.keys);
        s.load = self.load_secs.map_or(s.load, Duration::from_secs);
        s.faults = self.faults.unwrap_or(s.faults);
        s.bug_local_reads = self.bug_local_reads;
        s
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !chaos::SEEDED_RUNTIMES && !matches!(cli.command, Command::Child { .. }) {
        eprintln!(
            "warning: built without --cfg tokio_unstable (is RUSTFLAGS set? it replaces \
             .cargo/config.toml's flags): runs will not replay exactly"
        );
    }
    match cli.command {
        Command::Soak {
            seeds,
            first,
            jobs,
            shape,
        } => {
            let exe = std::env::current_exe()?;
            let started = Instant::now();
            let next = AtomicU64::new(first);
            let tally = Mutex::new(Tally::default());
            std::thread::scope(|scope| {
                for _ in 0..jobs.max(1) {
                    scope.spawn(|| loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= first + seeds {
                            return;
                        }
                        let outcome = run_in_child(&exe, &shape.scenario(seed), "off");
                        print!("{outcome}");
                        tally.lock().expect("tally").add(&outcome);
                    });
                }
            });
            let mut t = tally.into_inner().expect("tally");
            t.failing.sort();
            println!(
                "{} passed, {} failed ({:.0?}); {} faults injected, {} register operations, {} \
                 transactions, {} watch events and {} ended leases checked{}",
                t.passed,
                t.failing.len(),
                started.elapsed(),
                t.faults,
                t.ops,
                t.txns,
                t.events,
                t.leases,
                if t.failing.is_empty() {
                    String::new()
                } else {
                    format!("; failing seeds: {:?}", t.failing)
                }
            );
            let failed = t.failing.len();
            if failed > 0 {
                std::process::exit(1);
            }
        }
        Command::Replay {
            seed,
            shape,
            log_level,
            repeat,
        } => {
            let exe = std::env::current_exe()?;
            let mut first = None;
            for attempt in 1..=repeat.max(1) {
                let outcome = run_in_child(&exe, &shape.scenario(seed), &log_level);
                if repeat > 1 {
                    print!("attempt {attempt}: ");
                }
                print!("{outcome}");
                if !outcome.passed() {
                    std::process::exit(1);
                }
                for fault in &outcome.faults {
                    println!("  fault: {fault}");
                }
                let first = *first.get_or_insert(outcome.fingerprint);
                if outcome.fingerprint != first {
                    println!(
                        "  this run went differently from the first ({first:016x}): the \
                         simulation is not deterministic"
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Child {
            scenario,
            log_level,
        } => {
            logging(&log_level);
            chaos::process::child(&scenario)?;
        }
    }
    Ok(())
}

/// What a soak found, summed over its seeds.
#[derive(Default)]
struct Tally {
    passed: u64,
    failing: Vec<u64>,
    faults: usize,
    ops: usize,
    txns: usize,
    events: usize,
    leases: usize,
}

impl Tally {
    fn add(&mut self, o: &chaos::Outcome) {
        if o.passed() {
            self.passed += 1;
        } else {
            self.failing.push(o.scenario.seed);
        }
        self.faults += o.faults.len();
        self.ops += o.linearizability.ops;
        self.txns += o.txns;
        self.events += o.watch.events;
        self.leases += o.leases_checked.0;
    }
}

fn logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match level {
            "off" | "error" => level.to_string(),
            _ => format!("{level},h2=warn,hyper=warn,tower=warn,openraft=error,turmoil=warn"),
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SimulatedTime)
        .with_writer(std::io::stderr)
        .init();
}

/// Stamps log lines with simulated time (the only time that means anything in a run, and the
/// same in every replay).
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>10.6}s", t.as_secs_f64()),
            None => write!(w, "{:>11}", "-"),
        }
    }
}
