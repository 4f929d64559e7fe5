//! A simulated member's configuration: the `cairn` binary's own flags (etcd's names), with the
//! simulated network plugged in. Hosts are named `m1`, `m2`, …; each serves clients on 2379 and
//! peers on 2380 at its turmoil address.

use std::path::Path;

use clap::Parser;

use crate::run::Scenario;

/// Heartbeat and election timeout (ms): etcd's ratio, shortened so that simulations spend
/// their time on faults rather than waiting.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;

/// The configuration of member `name` of a cluster of `members` (itself included), its data
/// under `root`: bootstrapping a new cluster, or joining an `existing` one after MemberAdd.
pub fn member_config(
    name: &str,
    members: &[String],
    existing: bool,
    root: &Path,
    scenario: &Scenario,
) -> anyhow::Result<server::Config> {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{m}=http://{m}:2380"))
        .collect();
    let data_dir = root.join(name);
    let args = [
        "cairn".to_string(),
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        "--listen-client-urls=http://0.0.0.0:2379".into(),
        format!("--advertise-client-urls=http://{name}:2379"),
        "--listen-peer-urls=http://0.0.0.0:2380".into(),
        format!("--initial-advertise-peer-urls=http://{name}:2380"),
        format!("--initial-cluster={}", initial.join(",")),
        format!(
            "--initial-cluster-state={}",
            if existing { "existing" } else { "new" }
        ),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
        format!("--election-timeout={ELECTION_MS}"),
        // Small, so that snapshots are taken, and sent to members that fell behind.
        "--snapshot-count=64".into(),
        "--experimental-snapshot-catchup-entries=16".into(),
    ];
    let flags = server::Flags::try_parse_from(args)?;
    let mut config = flags.validate()?;
    config.transport = crate::net::transport();
    config.fault_local_linearizable_reads = scenario.bug_local_reads;
    config.block_cache_bytes = 4 << 20;
    Ok(config)
}
