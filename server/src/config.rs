//! The server's configuration: etcd's flag names, defaults and `ETCD_*` environment variables,
//! parsed by clap, and `validate()` turning them into typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// etcd's default backend quota when `--quota-backend-bytes` is 0: 2 GiB.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;
/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;
/// The etcd version Cairn reports; kube-apiserver enables progress-notify-based features only
/// for 3.5.13 and newer.
pub const REPORTED_ETCD_VERSION_DEFAULT: &str = "3.5.17";
/// The cluster version etcd 3.5 reports (major.minor.0).
pub const CLUSTER_VERSION: &str = "3.5.0";

/// Flags, named and defaulted as etcd names and defaults them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cairn",
    version,
    about = "An etcd v3-compatible key-value store"
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: <name>.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (default: <name>=<advertise peer URLs>).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = TXN_OPS_MAX_DEFAULT)]
    pub max_txn_ops: usize,
    /// Interpret 'auto-compaction-retention' as one of: 'periodic', 'revision'.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention ('0' disables; periodic: hours or a duration like 5m; revision: a count).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Number of entries kept for a slow follower to catch up from after a snapshot.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub experimental_snapshot_catchup_entries: u64,
    /// Duration of periodic watch progress notifications.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// Currently only supports 'debug', 'info', 'warn', 'error', 'panic', or 'fatal'.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log output format: 'json' (etcd's default) or 'text'.
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// The etcd server version Cairn reports to clients (Status, /version).
    #[arg(long, env = "CAIRN_REPORTED_ETCD_VERSION", default_value = REPORTED_ETCD_VERSION_DEFAULT)]
    pub reported_etcd_version: String,
    /// RocksDB block cache size in bytes (bounds read memory whatever the number of keys).
    #[arg(long, env = "CAIRN_BLOCK_CACHE_BYTES", default_value_t = 64 << 20)]
    pub block_cache_bytes: usize,
}

/// How history is compacted automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep roughly this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    pub listen_peer: Vec<SocketAddr>,
    /// The members of `--initial-cluster`: name and peer URLs, in flag order.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-state new` (bootstrap a cluster) rather than `existing` (join one).
    pub initial_cluster_new: bool,
    pub initial_cluster_token: String,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub txn_ops_max: usize,
    pub auto_compaction: AutoCompaction,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub progress_notify_interval: Duration,
    pub reported_etcd_version: String,
    pub block_cache_bytes: usize,
    /// The network: the host's TCP unless an embedder (the chaos simulation) supplies one.
    pub transport: raftlog::transport::Transport,
    /// A deliberate bug, for proving the chaos checkers catch one: linearizable reads are served
    /// from this member's state without the read barrier. No flag sets it; only the chaos
    /// suite's known-bug test does.
    pub fault_local_linearizable_reads: bool,
}

/// A configuration error, worded as etcd words its flag errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Flags {
    /// Checks the flags and derives typed settings.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let listen_client = split_urls(&self.listen_client_urls)
            .iter()
            .map(|u| url_to_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        if listen_client.is_empty() {
            return Err(ConfigError(
                "--listen-client-urls must name at least one URL".into(),
            ));
        }
        let advertise_peer_urls = split_urls(&self.initial_advertise_peer_urls);
        let initial_cluster = self.initial_cluster(&advertise_peer_urls)?;
        let listen_peer = split_urls(&self.listen_peer_urls)
            .iter()
            .map(|u| url_to_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        if !matches!(self.initial_cluster_state.as_str(), "new" | "existing") {
            return Err(ConfigError(format!(
                "invalid value \"{}\" for flag -initial-cluster-state: invalid value",
                self.initial_cluster_state
            )));
        }
        let auto_compaction =
            parse_auto_compaction(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        Ok(Config {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            listen_client,
            advertise_client_urls: split_urls(&self.advertise_client_urls),
            advertise_peer_urls,
            listen_peer,
            initial_cluster,
            initial_cluster_new: self.initial_cluster_state == "new",
            initial_cluster_token: self.initial_cluster_token.clone(),
            snapshot_count: self.snapshot_count.max(1),
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                QUOTA_BACKEND_BYTES_DEFAULT
            } else {
                self.quota_backend_bytes
            },
            max_request_bytes: self.max_request_bytes,
            txn_ops_max: self.max_txn_ops,
            auto_compaction,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            progress_notify_interval: parse_duration(
                &self.experimental_watch_progress_notify_interval,
            )
            .ok_or_else(|| {
                ConfigError("invalid --experimental-watch-progress-notify-interval".into())
            })?,
            reported_etcd_version: self.reported_etcd_version.clone(),
            block_cache_bytes: self.block_cache_bytes,
            transport: Default::default(),
            fault_local_linearizable_reads: false,
        })
    }

    /// Parses `--initial-cluster` (default `<name>=<advertised peer URLs>`). This member must
    /// be in it with exactly its advertised peer URLs, as etcd requires.
    fn initial_cluster(
        &self,
        advertise_peer_urls: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let Some(ic) = &self.initial_cluster else {
            return Ok(vec![(self.name.clone(), advertise_peer_urls.to_vec())]);
        };
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for entry in ic.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry.split_once('=').ok_or_else(|| {
                ConfigError(format!("--initial-cluster: malformed entry {entry:?}"))
            })?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        let mine = members
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, urls)| urls.clone())
            .unwrap_or_default();
        let (mut a, mut b) = (mine, advertise_peer_urls.to_vec());
        a.sort();
        b.sort();
        if a != b {
            return Err(ConfigError(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} (\"{}\"(resolved from {:?}) != \"{}\"(resolved from {:?}))",
                a.join(","), b.join(","), a.join(","), a, b.join(","), b
            )));
        }
        Ok(members)
    }
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Turns `http://host:port` into a socket address; `localhost` binds the loopback address.
fn url_to_addr(url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        ConfigError(format!(
            "unsupported URL scheme in {url:?} (only http:// is supported yet)"
        ))
    })?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("URL {url:?} has no port")))?;
    let host = match host {
        "localhost" => "127.0.0.1",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| ConfigError(format!("URL {url:?} has a bad port")))?;
    let ip = host.parse().map_err(|_| {
        ConfigError(format!(
            "listen URL {url:?} must use an IP address or localhost"
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses Go-style durations ("10m", "1h30m", "500ms", "5s").
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::from_secs_f64(value * secs);
        rest = next;
    }
    Some(total)
}

fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "invalid auto-compaction-retention {retention:?} for mode {mode:?}"
        ))
    };
    match mode {
        "periodic" => {
            // A bare number means hours, as in etcd.
            let d = match retention.parse::<u64>() {
                Ok(h) => Duration::from_secs(h * 3600),
                Err(_) => parse_duration(retention).ok_or_else(bad)?,
            };
            Ok(if d.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(d)
            })
        }
        "revision" => {
            let n: i64 = retention.parse().map_err(|_| bad())?;
            Ok(if n <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(n)
            })
        }
        other => Err(ConfigError(format!(
            "unknown auto-compaction-mode {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["cairn"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).expect("parses")
    }

    #[test]
    fn defaults_follow_etcd() {
        let c = flags(&[]).validate().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.txn_ops_max, 128);
        assert_eq!(c.quota_backend_bytes, 2 << 30);
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
        let c = flags(&["--name", "infra1"]).validate().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("infra1.etcd"));
    }

    #[test]
    fn single_member_cluster_flags_are_accepted() {
        let f = flags(&[
            "--name",
            "s1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:12380",
            "--listen-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-cluster",
            "s1=http://127.0.0.1:12380",
            "--initial-cluster-token",
            "tok",
            "--initial-cluster-state",
            "new",
        ]);
        assert!(f.validate().is_ok());
        let f = flags(&[
            "--name",
            "s1",
            "--initial-cluster",
            "s2=http://127.0.0.1:2380",
        ]);
        assert!(f.validate().is_err());
    }

    #[test]
    fn auto_compaction_parses_like_etcd() {
        assert_eq!(
            parse_auto_compaction("periodic", "1").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "5m").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(300))
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000").unwrap(),
            AutoCompaction::Revision(1000)
        );
        assert!(parse_auto_compaction("revision", "5m").is_err());
        assert!(parse_auto_compaction("weekly", "1").is_err());
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    }
}
