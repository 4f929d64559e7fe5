//! The machinery every workload shares: connections spread over the endpoints, the run plan
//! (how many operations or for how long, at what rate), and the closed loop that runs
//! `clients` concurrent clients, each issuing one operation at a time and recording its
//! latency, with a progress bar on longer runs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

use crate::cpu;
use crate::report::{Recorder, Report, RunFacts};

/// An operation that takes longer than this counts as an error (a stuck request must not
/// hang the run).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A progress bar appears only on runs that last longer than this.
const PROGRESS_AFTER: Duration = Duration::from_secs(3);

/// Where to send load and how much of it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// Operations to issue in all (ignored when `duration` is set).
    pub total: u64,
    /// Run for this long instead of a fixed total.
    pub duration: Option<Duration>,
    /// Operations per second over all clients (0: as fast as they go).
    pub rate: f64,
    /// Server processes whose CPU time is charged to the run.
    pub target_pids: Vec<u32>,
    /// Draw a progress bar (on a terminal only).
    pub progress: bool,
}

impl Plan {
    /// Opens `conns` HTTP/2 connections, spread over the endpoints in turn.
    pub async fn connect(&self) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(self.conns);
        for i in 0..self.conns.max(1) {
            channels.push(connect(&self.endpoints[i % self.endpoints.len()]).await?);
        }
        Ok(channels)
    }
}

/// Operations under way in this process (every closed-loop client's current one).
static IN_FLIGHT: netio::Gauge = netio::Gauge::new();

/// One connection to `endpoint` (`host:port` or a URL). Its writes are coalesced (`netio`)
/// while more than one operation is under way, so concurrent clients' requests share a send,
/// and the generator spends its CPU on requests rather than on system calls.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    anyhow::ensure!(
        !url.starts_with("https://"),
        "{endpoint}: the load generator speaks plain-text gRPC only"
    );
    let dial = tower::service_fn(|uri: http::Uri| async move {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "endpoint has no host");
        // An IPv6 literal comes in brackets.
        let host = uri.host().ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let busy = || IN_FLIGHT.get() > 1;
        Ok::<_, std::io::Error>(TokioIo::new(netio::CoalescingTcp::new(stream, busy)))
    });
    let ch = Endpoint::from_shared(url)?
        .connect_with_connector(dial)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {endpoint}: {e}"))?;
    Ok(ch)
}

/// Hands out operation numbers to clients, paced to the plan's rate, until the total is
/// reached or the time is up.
pub struct Ticket {
    next: AtomicU64,
    total: u64,
    deadline: Option<Instant>,
    start: Instant,
    interval: Option<Duration>,
    stop: AtomicBool,
    pub done: AtomicU64,
}

impl Ticket {
    pub fn new(plan: &Plan) -> Arc<Ticket> {
        let start = Instant::now();
        Arc::new(Ticket {
            next: AtomicU64::new(0),
            total: if plan.duration.is_some() {
                u64::MAX
            } else {
                plan.total
            },
            deadline: plan.duration.map(|d| start + d),
            start,
            interval: (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate)),
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
        })
    }

    /// The next operation's number, after waiting for its slot under the rate limit; `None`
    /// when the run is over.
    pub async fn take(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return None;
        }
        if let Some(interval) = self.interval {
            let slot = self.start + interval.mul_f64(i as f64);
            if self.deadline.is_some_and(|d| slot >= d) {
                self.stop.store(true, Ordering::Relaxed);
                return None;
            }
            tokio::time::sleep_until(slot.into()).await;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stop.store(true, Ordering::Relaxed);
            return None;
        }
        Some(i)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn expected(&self) -> Option<u64> {
        (self.total != u64::MAX).then_some(self.total)
    }
}

/// Shows progress on stderr once a run has gone on for a few seconds.
pub async fn progress(ticket: Arc<Ticket>, enabled: bool) {
    if !enabled {
        return;
    }
    while ticket.start.elapsed() < PROGRESS_AFTER {
        if ticket.stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bar = match (ticket.expected(), ticket.deadline) {
        (_, Some(deadline)) => {
            let secs = deadline.saturating_duration_since(ticket.start).as_secs();
            let bar = ProgressBar::with_draw_target(Some(secs), ProgressDrawTarget::stderr());
            bar.set_style(style("{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}"));
            bar
        }
        (Some(total), None) => {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(style("{elapsed_precise} [{bar:40}] {pos}/{len} ops  {msg}"));
            bar
        }
        (None, None) => return,
    };
    loop {
        let done = ticket.done.load(Ordering::Relaxed);
        let elapsed = ticket.start.elapsed();
        match ticket.deadline {
            Some(_) => bar.set_position(elapsed.as_secs()),
            None => bar.set_position(done),
        }
        bar.set_message(format!("{:.0} ops/s", done as f64 / elapsed.as_secs_f64()));
        if ticket.stop.load(Ordering::Relaxed) || ticket.expected().is_some_and(|t| done >= t) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

/// Measures CPU and wall time around a run.
pub struct Meter {
    started: Instant,
    client_cpu: f64,
    server_cpu: f64,
    pids: Vec<u32>,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Meter {
        Meter {
            started: Instant::now(),
            client_cpu: cpu::own_cpu_secs(),
            server_cpu: cpu::total_cpu_secs(pids),
            pids: pids.to_vec(),
        }
    }

    pub fn finish(self, workload: &str, plan: &Plan, rec: &Recorder) -> Report {
        self.finish_at(Instant::now(), workload, plan, rec)
    }

    /// Like `finish`, with the run's wall time ending at `end` (CPU is counted up to now).
    pub fn finish_at(self, end: Instant, workload: &str, plan: &Plan, rec: &Recorder) -> Report {
        let elapsed = end.saturating_duration_since(self.started);
        let server_cpu_s =
            (!self.pids.is_empty()).then(|| cpu::total_cpu_secs(&self.pids) - self.server_cpu);
        let facts = RunFacts {
            workload: workload.to_string(),
            endpoints: plan.endpoints.clone(),
            clients: plan.clients,
            conns: plan.conns,
            elapsed,
            client_cpu_s: cpu::own_cpu_secs() - self.client_cpu,
            server_pids: self.pids,
            server_cpu_s,
        };
        Report::new(facts, rec)
    }
}

/// What an operation that outlived `OP_TIMEOUT` counts as.
pub const TIMED_OUT: &str = "no answer within the operation timeout (10 s)";

/// An error as the error distribution shows it: its gRPC code and message.
pub fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs `plan.clients` clients in a closed loop. `make(c)` builds client `c`'s operation; the
/// operation gets the operation number and returns `Ok(Some(kind))` to record its latency
/// under a named kind, `Ok(None)` to record it overall only, or an error (counted, not
/// recorded).
pub async fn closed_loop<M, F, Fut>(workload: &str, plan: &Plan, mut make: M) -> Report
where
    M: FnMut(usize) -> F,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<&'static str>, tonic::Status>> + Send,
{
    let ticket = Ticket::new(plan);
    let meter = Meter::start(&plan.target_pids);
    let bar = tokio::spawn(progress(ticket.clone(), plan.progress));
    let mut tasks = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let mut op = make(c);
        let ticket = ticket.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            while let Some(i) = ticket.take().await {
                let t = Instant::now();
                let _under_way = IN_FLIGHT.enter();
                match tokio::time::timeout(OP_TIMEOUT, op(i)).await {
                    Ok(Ok(None)) => rec.record(t.elapsed()),
                    Ok(Ok(Some(kind))) => rec.record_op(kind, t.elapsed()),
                    Ok(Err(status)) => rec.error(&describe(&status)),
                    Err(_) => rec.error(TIMED_OUT),
                }
                ticket.done.fetch_add(1, Ordering::Relaxed);
            }
            rec
        }));
    }
    let mut rec = Recorder::default();
    for t in tasks {
        rec.merge(&t.await.expect("client task"));
    }
    ticket.stop();
    let report = meter.finish(workload, plan, &rec);
    let _ = bar.await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(total: u64, rate: f64, duration: Option<Duration>) -> Plan {
        Plan {
            endpoints: vec!["127.0.0.1:1".into()],
            conns: 1,
            clients: 3,
            total,
            duration,
            rate,
            target_pids: vec![],
            progress: false,
        }
    }

    #[tokio::test]
    async fn closed_loop_issues_exactly_total_operations_and_counts_errors() {
        let report = closed_loop("t", &plan(1000, 0.0, None), |_| {
            |i: u64| async move {
                if i.is_multiple_of(10) {
                    Err(tonic::Status::unavailable("x"))
                } else {
                    Ok(if i.is_multiple_of(2) {
                        Some("even")
                    } else {
                        None
                    })
                }
            }
        })
        .await;
        assert_eq!(report.ops + report.errors, 1000);
        assert_eq!(report.errors, 100);
        assert_eq!(report.by_op["even"].ops, 400);
    }

    #[tokio::test]
    async fn rate_paces_operations_and_duration_ends_the_run() {
        let t = Instant::now();
        let report = closed_loop("t", &plan(50, 500.0, None), |_| {
            |_| async { Ok::<_, tonic::Status>(None) }
        })
        .await;
        assert_eq!(report.ops, 50);
        // 50 operations at 500/s: the last one cannot start before 98 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(98),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let timed = plan(0, 1000.0, Some(Duration::from_millis(300)));
        let report = closed_loop("t", &timed, |_| |_| async { Ok::<_, tonic::Status>(None) }).await;
        // Never more than the rate allows in the time; the run lasts until the last slot
        // before the deadline (the 300th, at 299 ms).
        assert!((1..=300).contains(&report.ops), "{}", report.ops);
        assert!(
            t.elapsed() >= Duration::from_millis(290),
            "{:?}",
            t.elapsed()
        );
    }
}
