//! What one run measured: latency histograms (hdrhistogram, microseconds), counts, elapsed
//! time and CPU, turned into the human summary and the one JSON line per run that the
//! comparison harness reads back.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies up to a minute are recorded with three significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Quantiles written out as the latency CDF (the chart draws them).
const CDF_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// Distinct error texts kept per run; further ones count under `OTHER_ERRORS`.
const ERROR_KINDS_MAX: usize = 16;
const OTHER_ERRORS: &str = "(other errors)";

/// Latencies and outcome counts of one client (or of all clients, once merged).
#[derive(Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    pub errors: u64,
    /// How many errors of each kind (gRPC code and message), as etcd's tool's "Error
    /// distribution".
    error_kinds: BTreeMap<String, u64>,
    /// Latencies of each named operation kind, for mixed workloads.
    by_op: BTreeMap<&'static str, Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            hist: new_hist(),
            errors: 0,
            error_kinds: BTreeMap::new(),
            by_op: BTreeMap::new(),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Recorder {
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.hist.record(us).expect("value within bounds");
    }

    /// Records a latency both overall and under `op`.
    pub fn record_op(&mut self, op: &'static str, latency: Duration) {
        self.record(latency);
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.by_op
            .entry(op)
            .or_insert_with(new_hist)
            .record(us)
            .expect("within bounds");
    }

    /// Counts a failed operation, under what went wrong.
    pub fn error(&mut self, what: &str) {
        self.errors += 1;
        self.add_errors(what, 1);
    }

    fn add_errors(&mut self, what: &str, n: u64) {
        let kind =
            if self.error_kinds.contains_key(what) || self.error_kinds.len() < ERROR_KINDS_MAX {
                what
            } else {
                OTHER_ERRORS
            };
        *self.error_kinds.entry(kind.to_string()).or_default() += n;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist.add(&other.hist).expect("same bounds");
        self.errors += other.errors;
        for (what, n) in &other.error_kinds {
            self.add_errors(what, *n);
        }
        for (op, h) in &other.by_op {
            self.by_op
                .entry(op)
                .or_insert_with(new_hist)
                .add(h)
                .expect("same bounds");
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Per-operation figures of a mixed workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSummary {
    pub ops: u64,
    pub latency_ms: Latency,
}

/// One run's result: the JSON line the harness parses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// Completed operations (for watch workloads: events delivered).
    pub ops: u64,
    pub errors: u64,
    /// Errors by kind (gRPC code and message).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    /// `[quantile, milliseconds]` points of the latency distribution.
    pub cdf: Vec<(f64, f64)>,
    pub client_cpu_s: f64,
    pub client_cpu_us_per_op: f64,
    pub server_pids: Vec<u32>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_op: BTreeMap<String, OpSummary>,
    /// Workload-specific counts (watch events expected, txn conflicts, list pages…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// Everything measured around a run besides the recorder.
pub struct RunFacts {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub elapsed: Duration,
    pub client_cpu_s: f64,
    pub server_pids: Vec<u32>,
    pub server_cpu_s: Option<f64>,
}

impl Report {
    /// A report of nothing (to collect figures that belong to no run).
    pub fn empty() -> Report {
        let facts = RunFacts {
            workload: String::new(),
            endpoints: vec![],
            clients: 0,
            conns: 0,
            elapsed: Duration::ZERO,
            client_cpu_s: 0.0,
            server_pids: vec![],
            server_cpu_s: None,
        };
        Report::new(facts, &Recorder::default())
    }

    pub fn new(facts: RunFacts, rec: &Recorder) -> Report {
        let ops = rec.count();
        let per_op = |cpu: f64| {
            if ops == 0 {
                0.0
            } else {
                cpu * 1e6 / ops as f64
            }
        };
        let elapsed_s = facts.elapsed.as_secs_f64();
        let cdf = if rec.hist.is_empty() {
            Vec::new()
        } else {
            CDF_QUANTILES
                .iter()
                .map(|q| (*q, rec.hist.value_at_quantile(*q) as f64 / 1000.0))
                .collect()
        };
        Report {
            workload: facts.workload,
            endpoints: facts.endpoints,
            clients: facts.clients,
            conns: facts.conns,
            ops,
            errors: rec.errors,
            error_kinds: rec.error_kinds.clone(),
            elapsed_s,
            ops_per_sec: if elapsed_s > 0.0 {
                ops as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms: Latency::of(&rec.hist),
            cdf,
            client_cpu_s: facts.client_cpu_s,
            client_cpu_us_per_op: per_op(facts.client_cpu_s),
            server_cpu_us_per_op: facts.server_cpu_s.map(per_op),
            server_cpu_s: facts.server_cpu_s,
            server_pids: facts.server_pids,
            by_op: rec
                .by_op
                .iter()
                .map(|(op, h)| {
                    let s = OpSummary {
                        ops: h.len(),
                        latency_ms: Latency::of(h),
                    };
                    (op.to_string(), s)
                })
                .collect(),
            extra: BTreeMap::new(),
        }
    }

    /// The human summary, in the manner of etcd's benchmark tool.
    pub fn human(&self) -> String {
        let l = &self.latency_ms;
        let mut s = format!(
            "Summary ({}, {} clients, {} conns):\n  Total:\t{:.4} secs.\n  Ops:\t{} ({} errors)\n  \
             Requests/sec:\t{:.1}\n  Latency (ms):\tmean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  \
             p99.9 {:.3}  max {:.3}\n  Client CPU:\t{:.1} µs/op\n",
            self.workload,
            self.clients,
            self.conns,
            self.elapsed_s,
            self.ops,
            self.errors,
            self.ops_per_sec,
            l.mean,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.client_cpu_us_per_op,
        );
        if let Some(cpu) = self.server_cpu_us_per_op {
            s += &format!(
                "  Server CPU:\t{cpu:.1} µs/op (pids {:?})\n",
                self.server_pids
            );
        }
        for (op, o) in &self.by_op {
            s += &format!(
                "  {op:>8}:\t{} ops  p50 {:.3} ms  p99 {:.3} ms\n",
                o.ops, o.latency_ms.p50, o.latency_ms.p99
            );
        }
        for (k, v) in &self.extra {
            s += &format!("  {k}:\t{v}\n");
        }
        if !self.error_kinds.is_empty() {
            s += "  Error distribution:\n";
            for (what, n) in &self.error_kinds {
                s += &format!("    [{n}]\t{what}\n");
            }
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cdf_and_json_round_trip() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=900u64 {
            a.record(Duration::from_micros(i));
        }
        for i in 901..=1000u64 {
            b.record_op("slow", Duration::from_micros(i * 10));
        }
        b.error("Unavailable: etcdserver: leader changed");
        b.error("Unavailable: etcdserver: leader changed");
        a.error("timed out");
        a.merge(&b);
        let facts = RunFacts {
            workload: "put".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: 2,
            conns: 1,
            elapsed: Duration::from_secs(2),
            client_cpu_s: 0.5,
            server_pids: vec![7],
            server_cpu_s: Some(1.0),
        };
        let r = Report::new(facts, &a);
        assert_eq!(r.ops, 1000);
        assert_eq!(r.errors, 3);
        assert_eq!(r.error_kinds["Unavailable: etcdserver: leader changed"], 2);
        assert_eq!(r.error_kinds["timed out"], 1);
        assert!(r
            .human()
            .contains("[2]\tUnavailable: etcdserver: leader changed"));
        assert_eq!(r.ops_per_sec, 500.0);
        assert!((r.latency_ms.p50 - 0.5).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 10.0).abs() < 0.02, "{:?}", r.latency_ms);
        assert_eq!(r.client_cpu_us_per_op, 500.0);
        assert_eq!(r.server_cpu_us_per_op, Some(1000.0));
        assert_eq!(r.by_op["slow"].ops, 100);
        assert!(r.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
        let back: Report = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(back.latency_ms, r.latency_ms);
        assert!(r.human().contains("Requests/sec:\t500.0"));
    }
}
