//! BENCHMARKS.md from a comparison's results: medians per workload and server, the ratios,
//! every target of issue 4 checked against them, memory and disk, and the load generator's
//! own CPU. Nothing in it is typed by hand except `docs/benchmarks/analysis.md`, which is
//! included verbatim at the end.

use std::fmt::Write;
use std::path::Path;

use super::{Case, Results, Sample};
use crate::report::Report;

/// Medians of one workload on one server over the rounds.
pub struct Stats<'a> {
    pub ops: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu: Option<f64>,
    pub errors: u64,
    /// The round whose throughput was the median (its CDF is charted).
    pub median_run: &'a Report,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn stats<'a>(
    results: &'a Results,
    members: usize,
    server: &str,
    case: &Case,
) -> Option<Stats<'a>> {
    let runs: Vec<&Sample> = results
        .samples
        .iter()
        .filter(|s| s.members == members && s.server == server && &s.case == case)
        .collect();
    if runs.is_empty() {
        return None;
    }
    let get = |f: &dyn Fn(&Report) -> f64| median(runs.iter().map(|s| f(&s.report)).collect());
    let ops = get(&|r| r.ops_per_sec);
    let mut by_ops = runs.clone();
    by_ops.sort_by(|a, b| a.report.ops_per_sec.total_cmp(&b.report.ops_per_sec));
    Some(Stats {
        ops,
        p50: get(&|r| r.latency_ms.p50),
        p99: get(&|r| r.latency_ms.p99),
        cpu: runs[0]
            .report
            .server_cpu_us_per_op
            .map(|_| get(&|r| r.server_cpu_us_per_op.unwrap_or(f64::NAN))),
        errors: runs.iter().map(|s| s.report.errors).sum(),
        median_run: &by_ops[by_ops.len() / 2].report,
    })
}

/// A goal checked against the medians.
struct Target {
    what: String,
    measured: Option<f64>,
    goal: &'static str,
    met: Option<bool>,
}

fn pair<'a>(
    r: &'a Results,
    members: usize,
    workload: &str,
    clients: usize,
) -> Option<(Stats<'a>, Stats<'a>)> {
    let case = Case {
        workload: workload.into(),
        clients,
    };
    Some((
        stats(r, members, "etcd", &case)?,
        stats(r, members, "cairn", &case)?,
    ))
}

fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let mut add =
        |what: String, measured: Option<f64>, goal: &'static str, ok: &dyn Fn(f64) -> bool| {
            let measured = measured.filter(|x| x.is_finite());
            t.push(Target {
                what,
                met: measured.map(ok),
                measured,
                goal,
            });
        };
    for (w, c) in [
        ("put", 256),
        ("txn-put", 64),
        ("range-l", 256),
        ("range-s", 256),
        ("watch", super::WATCHERS),
    ] {
        let m = pair(r, 1, w, c).and_then(|(e, k)| Some(k.cpu? / e.cpu?));
        add(
            format!("server CPU per op, {w}, {c} clients (cairn ÷ etcd)"),
            m,
            "≤ 0.5",
            &|x| x <= 0.5,
        );
    }
    let put256 = pair(r, 1, "put", 256);
    add(
        "put, 256 clients, ops/s (cairn ÷ etcd)".into(),
        put256.as_ref().map(|(e, k)| k.ops / e.ops),
        "≥ 2.0",
        &|x| x >= 2.0,
    );
    add(
        "put, 256 clients, p99 latency (cairn ÷ etcd)".into(),
        put256.as_ref().map(|(e, k)| k.p99 / e.p99),
        "≤ 1.0",
        &|x| x <= 1.0,
    );
    let put1 = pair(r, 1, "put", 1).map(|(e, k)| k.p50 / e.p50);
    add(
        format!(
            "put, 1 client, p50 latency (cairn ÷ etcd); fdatasync p50 here {:.3} ms (etcd 3.5.1 answers a lone member's put before its fdatasync: see the analysis)",
            r.fdatasync_ms.0
        ),
        put1,
        "≤ 0.8",
        &|x| x <= 0.8,
    );
    for w in ["range-s", "range-l"] {
        let m = pair(r, 1, w, 256).map(|(e, k)| k.ops / e.ops);
        add(
            format!("{w}, 256 clients, ops/s (cairn ÷ etcd)"),
            m,
            "≥ 1.5",
            &|x| x >= 1.5,
        );
    }
    let m = pair(r, 1, "txn-put", 64).map(|(e, k)| k.ops / e.ops);
    add(
        "txn-put, 64 clients, ops/s (cairn ÷ etcd)".into(),
        m,
        "≥ 2.0",
        &|x| x >= 2.0,
    );
    let m = pair(r, 1, "watch", super::WATCHERS).map(|(e, k)| k.ops / e.ops);
    add(
        "watch, events/s delivered to 1,000 watchers (cairn ÷ etcd)".into(),
        m,
        "≥ 2.0",
        &|x| x >= 2.0,
    );
    let m = pair(r, 1, "watch-latency", 100).map(|(e, k)| k.p99 / e.p99);
    add(
        "watch-latency, p99 (cairn ÷ etcd)".into(),
        m,
        "≤ 1.0",
        &|x| x <= 1.0,
    );
    let m = pair(r, 3, "put", 256).map(|(e, k)| k.ops / e.ops);
    add(
        "3-member cluster, put, 256 clients, ops/s (cairn ÷ etcd)".into(),
        m,
        "≥ 2.0",
        &|x| x >= 2.0,
    );
    let fp = |s: &str| r.footprints.iter().find(|f| f.server == s);
    let (e, k) = (fp("etcd"), fp("cairn"));
    let m = e
        .zip(k)
        .map(|(e, k)| k.rss_bytes as f64 / e.rss_bytes as f64);
    add(
        "RSS after loading the keys (cairn ÷ etcd)".into(),
        m,
        "≤ 0.5",
        &|x| x <= 0.5,
    );
    let m = e
        .zip(k)
        .map(|(e, k)| k.disk_bytes as f64 / e.disk_bytes as f64);
    add(
        "on-disk size after loading the keys (cairn ÷ etcd)".into(),
        m,
        "≤ 1.0",
        &|x| x <= 1.0,
    );
    let cpu = |d: &str| {
        let v: Vec<f64> = r
            .client_cpu
            .iter()
            .filter(|(n, r)| n == d && r.workload.starts_with("put"))
            .map(|(_, r)| r.client_cpu_us_per_op)
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    let m = cpu("cairn-bench")
        .zip(cpu("etcd-client"))
        .map(|(a, b)| a / b);
    add(
        "load generator client CPU per put (cairn-bench ÷ etcd-client crate)".into(),
        m,
        "< 1.0",
        &|x| x < 1.0,
    );
    t
}

fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {} GiB RAM, Linux {}, run {date}",
        mem >> 20,
        kernel.trim()
    )
}

fn table(out: &mut String, r: &Results, members: usize) {
    let mut cases: Vec<&Case> = Vec::new();
    for s in r.samples.iter().filter(|s| s.members == members) {
        if !cases.contains(&&s.case) {
            cases.push(&s.case);
        }
    }
    if cases.is_empty() {
        return;
    }
    let title = if members == 1 {
        "Single member".to_string()
    } else {
        format!("{members}-member clusters")
    };
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(out, "| Workload | Clients | etcd ops/s | cairn ops/s | ratio | etcd p50 / p99 ms | cairn p50 / p99 ms | etcd CPU µs/op | cairn CPU µs/op | CPU ratio | errors (e/c) |");
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cases {
        let (Some(e), Some(k)) = (stats(r, members, "etcd", c), stats(r, members, "cairn", c))
        else {
            continue;
        };
        let clients = match c.workload.as_str() {
            "watch" | "watch-sustained" => format!("{} watchers", c.clients),
            "watch-latency" => format!("{} watchers", c.clients),
            _ => c.clients.to_string(),
        };
        let cpu = |s: &Stats| s.cpu.map(|c| format!("{c:.1}")).unwrap_or("–".into());
        let cpu_ratio = e
            .cpu
            .zip(k.cpu)
            .map(|(e, k)| fmt_ratio(k / e))
            .unwrap_or("–".into());
        let _ = writeln!(
            out,
            "| {} | {clients} | {:.0} | {:.0} | **{}** | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} | {cpu_ratio} | {} / {} |",
            c.workload, e.ops, k.ops, fmt_ratio(k.ops / e.ops), e.p50, e.p99, k.p50, k.p99, cpu(&e), cpu(&k), e.errors, k.errors
        );
    }
}

/// Every run that had errors, with what they were.
fn errors(out: &mut String, r: &Results) {
    let failed: Vec<&Sample> = r.samples.iter().filter(|s| s.report.errors > 0).collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Errors\n\n| Server | Members | Workload | Clients | Round | Errors |\n|---|---:|---|---:|---:|---|");
    for s in failed {
        let kinds: Vec<String> = s
            .report
            .error_kinds
            .iter()
            .map(|(what, n)| format!("{n} × {}", what.replace('|', "\\|")))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            s.server,
            s.members,
            s.case.workload,
            s.case.clients,
            s.round,
            if kinds.is_empty() {
                s.report.errors.to_string()
            } else {
                kinds.join("; ")
            }
        );
    }
}

pub fn render(r: &Results, chart: &Path, analysis: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks: cairn and etcd 3.5.1, side by side\n");
    let _ = writeln!(
        out,
        "Generated by `./scripts/bench.sh` (`cairn-bench {}`); do not edit by hand.\n",
        r.args
    );
    let _ = writeln!(out, "- Machine: {}.", r.machine);
    let _ = writeln!(out, "- This disk's 4 KiB write + fdatasync: p50 {:.3} ms, p99 {:.3} ms (the floor of a durable write).", r.fdatasync_ms.0, r.fdatasync_ms.1);
    let _ = writeln!(out, "- Both servers are release builds with their default durability (fsync on every commit), data on the same filesystem, clients on 127.0.0.1. The load generator (`cairn-bench`) shares the machine's cores with the server.");
    let rounds = r.samples.iter().map(|s| s.round + 1).max().unwrap_or(0);
    let _ = writeln!(out, "- Each workload ran against etcd, then cairn, alternating, {rounds} rounds each; figures are medians over the rounds. Ratios are cairn ÷ etcd. Server CPU per op is the server processes' own CPU time (all members) over the run divided by operations completed.");
    let _ = writeln!(out, "- Every run's full result (latency CDF, per-operation figures of mixed workloads) is in `docs/benchmarks/results.json`.\n");
    let _ = writeln!(out, "![throughput and latency]({})\n", chart.display());
    let _ = writeln!(
        out,
        "## Targets\n\n| Target | Measured | Goal | Met |\n|---|---:|---|---|"
    );
    for t in targets(r) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let m = t.measured.map(fmt_ratio).unwrap_or("–".into());
        let _ = writeln!(out, "| {} | {m} | {} | {met} |", t.what, t.goal);
    }
    let mut sizes: Vec<usize> = r.samples.iter().map(|s| s.members).collect();
    sizes.sort();
    sizes.dedup();
    for m in sizes {
        table(&mut out, r, m);
    }
    let _ = writeln!(out, "\nWorkloads: `put` random keys over 100,000, 256-byte values; `range-l`/`range-s` one key, linearizable/serializable; `txn-put` compare mod_revision then put (each client its own keys); `txn-mixed` one-op txns, half reads (linearizable) and half puts; `lease-keepalive` one lease per client, renewals round trips; `k8s` the kube-apiserver-shaped mix (`bench/src/workload/k8s.rs`); `watch` 1,000 puts from 16 clients to one key watched by 1,000 watchers (10 streams × 100), ops are events delivered per second from the first put to the last event; `watch-sustained` the same with 15,000 puts (15 million events: streams fall behind the writes and catch up from history); `watch-latency` 500 puts/s to one key watched by 100 watchers with prev_kv, latency from put to event. Connections: one per 16 clients; on clusters the leader's endpoint comes first (all load of 1 and 16 clients goes to the leader). Between cases both servers compact their history. CPU a server spends after a run until it is idle again (flushes, compactions) is charged to that run. Unlike etcd's own tool, `txn-put` is one compare-and-put per txn (Kubernetes' update), `txn-mixed` reads one key, and `lease-keepalive` reuses one stream per client.");
    errors(&mut out, r);
    if !r.footprints.is_empty() {
        let _ = writeln!(out, "\n## Memory and disk\n\nA fresh single member of each, loaded with 256-byte values under sequential 16-byte keys by 256 clients, measured 5 s after the load.\n\n| Server | Keys | RSS MiB | On-disk MiB | Load ops/s |\n|---|---:|---:|---:|---:|");
        for f in &r.footprints {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} |",
                f.server,
                f.keys,
                f.rss_bytes as f64 / 1048576.0,
                f.disk_bytes as f64 / 1048576.0,
                f.load_ops_per_sec
            );
        }
    }
    if !r.client_cpu.is_empty() {
        let _ = writeln!(out, "\n## The load generator's own CPU\n\nThe same workload (16 clients, one connection, against one cairn member) driven by `cairn-bench` and by the `etcd-client` crate, alternating; medians of client CPU per operation.\n\n| Operation | cairn-bench µs/op | etcd-client µs/op |\n|---|---:|---:|");
        for op in ["put", "range"] {
            let med = |d: &str| {
                median(
                    r.client_cpu
                        .iter()
                        .filter(|(n, rep)| n == d && rep.workload.starts_with(op))
                        .map(|(_, rep)| rep.client_cpu_us_per_op)
                        .collect(),
                )
            };
            let _ = writeln!(
                out,
                "| {op} | {:.1} | {:.1} |",
                med("cairn-bench"),
                med("etcd-client")
            );
        }
    }
    if let Some(a) = analysis {
        let _ = writeln!(out, "\n{}", a.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn runs_with_errors_are_listed_with_what_went_wrong() {
        let mut failed = Report::empty();
        failed.errors = 3;
        failed.error_kinds.insert("Unavailable: a | b".into(), 3);
        let sample = |server: &str, report: Report| Sample {
            members: 3,
            server: server.into(),
            case: Case {
                workload: "k8s".into(),
                clients: 16,
            },
            round: 0,
            report,
        };
        let mut r = Results {
            samples: vec![sample("etcd", Report::empty())],
            footprints: vec![],
            client_cpu: vec![],
            fdatasync_ms: (0.1, 0.2),
            machine: String::new(),
            args: String::new(),
        };
        let mut out = String::new();
        errors(&mut out, &r);
        assert!(out.is_empty(), "no errors, no section: {out}");
        r.samples.push(sample("cairn", failed));
        errors(&mut out, &r);
        assert!(
            out.contains("| cairn | 3 | k8s | 16 | 0 | 3 × Unavailable: a \\| b |"),
            "{out}"
        );
    }
}
