//! Deterministic simulation of whole cairn clusters. The real server — Raft log, state machine,
//! RocksDB, gRPC services — runs in turmoil hosts; only the network (turmoil's simulated TCP,
//! through `raftlog::transport`) and the clock (tokio's paused clock, which turmoil drives) are
//! swapped. A run is a function of its seed (see `raftlog::determinism` and [`process`]); every
//! history is checked.
//!
//! - [`net`]: turmoil's TCP as a cairn transport, and client channels over it.
//! - [`cluster`]: a simulated member's configuration (the binary's own flags).
//! - [`history`]: recorded operations on one logical clock.
//! - [`workload`]: the simulated clients (register workload, leader monitor, final check).
//! - [`faults`]: which faults a seed schedules, and doing and undoing them.
//! - [`run`]: one run of a scenario, and its outcome.
//! - [`process`]: a run in a process of its own (what makes it replay exactly).
//! - [`watcher`]: simulated watchers (resuming across members), and the final event history.
//! - [`linearizability`]: the Wing–Gong/Porcupine checker over a register model, per key.
//! - [`watch_check`]: etcd's watch guarantees, checked against the event history.
//! - [`appender`], [`append`]: list-append transactions, and the Elle-style check of their
//!   dependency graph.
//! - [`admin`]: membership changes (add a member, remove another) during faults.
//! - [`lease`]: lease clients (grant, attach, revoke or expire, read back) and lease safety.

pub mod admin;
pub mod append;
pub mod appender;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod lease;
pub mod linearizability;
pub mod net;
pub mod process;
pub mod run;
pub mod watch_check;
pub mod watcher;
pub mod workload;

pub use process::run_in_child;

/// Whether this build has `--cfg tokio_unstable` (set by the repository's `.cargo/config.toml`;
/// a `RUSTFLAGS` variable replaces it). turmoil needs it to seed each host's runtime: without
/// it, `select!` polls in a random order and runs do not replay exactly.
pub const SEEDED_RUNTIMES: bool = cfg!(tokio_unstable);
pub use run::{run, Outcome, Scenario};
