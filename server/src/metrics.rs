//! Prometheus metrics under etcd's names where the meaning is the same, so dashboards and
//! alerts written for etcd read Cairn unchanged. Served as text at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub proposals_committed: IntCounter,
    pub proposals_failed: IntCounter,
    pub fsync_seconds: Histogram,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub db_total_size: IntGauge,
    pub db_in_use_size: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub leases: IntGauge,
    pub grpc_handled: IntCounterVec,
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(fsync_seconds.clone()))
            .expect("unique metric");
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(grpc_handled.clone()))
            .expect("unique metric");
        let version_gauge = IntGauge::with_opts(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            )
            .const_label("server_version", version),
        )
        .expect("valid metric");
        version_gauge.set(1);
        registry
            .register(Box::new(version_gauge))
            .expect("unique metric");
        Metrics {
            proposals_committed: counter(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_in_use_size: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            current_revision: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            watchers: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            watch_streams: gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            leases: gauge(
                "etcd_debugging_lease_total",
                "The number of leases granted.",
            ),
            fsync_seconds,
            grpc_handled,
            registry,
        }
    }

    /// Renders every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}
