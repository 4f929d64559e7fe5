//! One simulated run: a cluster of real cairn members (real Raft log and RocksDB in a temporary
//! directory per member) on turmoil's network and clock, register clients, the faults the seed
//! schedules, then the checks — linearizability of the history and HashKV agreement.

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::faults::{self, Fault, Target};
use crate::linearizability::{self, Report};
use crate::watch_check::{self, WatchReport};
use crate::workload::{self, Shared};

/// Simulated time per step: every host runs this long between network deliveries.
const TICK: Duration = Duration::from_millis(5);

/// What to simulate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Scenario {
    pub seed: u64,
    pub members: usize,
    pub clients: usize,
    pub keys: usize,
    pub watchers: usize,
    pub lease_clients: usize,
    pub appenders: usize,
    /// How long the clients run (faults happen meanwhile).
    pub load: Duration,
    pub faults: usize,
    /// Turns on the server's deliberate bug: linearizable reads served locally.
    pub bug_local_reads: bool,
}

impl Scenario {
    /// The short scenario CI runs per seed: 3 or 5 members, chosen by the seed.
    pub fn short(seed: u64) -> Scenario {
        Scenario {
            seed,
            members: if seed % 4 == 3 { 5 } else { 3 },
            clients: 4,
            keys: 3,
            watchers: 2,
            lease_clients: 1,
            appenders: 2,
            load: Duration::from_secs(6),
            faults: 2,
            bug_local_reads: false,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p chaos -- replay --seed {} --members {} --clients {} --keys {} --load-secs {} --faults {}",
            self.seed,
            self.members,
            self.clients,
            self.keys,
            self.load.as_secs(),
            self.faults
        );
        if self.bug_local_reads {
            cmd.push_str(" --bug-local-reads");
        }
        cmd
    }
}

/// What a run found.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub scenario: Scenario,
    pub faults: Vec<Fault>,
    pub linearizability: Report,
    /// Watch guarantees, the event history's soundness, acknowledged writes in it.
    pub watch: WatchReport,
    /// The membership changes made, and how each went.
    pub changes: Vec<String>,
    /// List-append anomalies.
    pub append: Vec<String>,
    /// List-append transactions recorded.
    pub txns: usize,
    /// Lease safety violations.
    pub lease: Vec<String>,
    /// Leases seen revoked or expired, and reads of their keys afterwards.
    pub leases_checked: (usize, usize),
    /// Each member's HashKV (hash, compact revision) at the final revision, or why there is
    /// none.
    pub hashes: Vec<(String, Result<(u32, i64), String>)>,
    /// The simulation itself failed (a member's software returned an error or panicked).
    pub error: Option<String>,
    /// A digest of everything the run recorded, in order, and of when it ended: two runs of
    /// one scenario with the same fingerprint went the same way. (Comparable only between
    /// runs of one build: the digest is std's SipHash, whose algorithm may change.)
    pub fingerprint: u64,
}

impl Outcome {
    /// The outcome of a run that could not be made or read: `error` says why.
    pub fn failed(scenario: &Scenario, error: String) -> Outcome {
        Outcome {
            scenario: scenario.clone(),
            faults: Vec::new(),
            linearizability: Report::default(),
            watch: WatchReport::default(),
            changes: Vec::new(),
            append: Vec::new(),
            txns: 0,
            lease: Vec::new(),
            leases_checked: (0, 0),
            hashes: Vec::new(),
            error: Some(error),
            fingerprint: 0,
        }
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.linearizability.violations.is_empty()
            && self.linearizability.inconclusive.is_empty()
            && self.watch.problems.is_empty()
            && self.lease.is_empty()
            && self.append.is_empty()
            && self.replicas_agree()
    }

    /// Every member answered HashKV at the final revision, all with the same hash.
    pub fn replicas_agree(&self) -> bool {
        let mut hashes = self.hashes.iter().map(|(_, h)| h.as_ref().ok());
        match hashes.next() {
            Some(Some(first)) => hashes.all(|h| h == Some(first)),
            _ => false,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        writeln!(
            f,
            "seed {}: {verdict} — {} members, {} faults, {} operations on {} keys, {} watch \
             events in {} streams, {} transactions, {} leases ended checked (run {:016x})",
            self.scenario.seed,
            self.scenario.members,
            self.faults.len(),
            self.linearizability.ops,
            self.linearizability.keys,
            self.watch.events,
            self.watch.streams,
            self.txns,
            self.leases_checked.0,
            self.fingerprint
        )?;
        if self.passed() {
            return Ok(());
        }
        for fault in &self.faults {
            writeln!(f, "  fault: {fault}")?;
        }
        for change in &self.changes {
            writeln!(f, "  membership change: {change}")?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  simulation error: {e}")?;
        }
        for v in &self.linearizability.violations {
            write!(f, "  {v}")?;
        }
        for k in &self.linearizability.inconclusive {
            writeln!(
                f,
                "  key {k:?}: the search ran out of budget (inconclusive)"
            )?;
        }
        for p in &self.append {
            writeln!(f, "  list-append: {p}")?;
        }
        for p in &self.lease {
            writeln!(f, "  lease: {p}")?;
        }
        for p in &self.watch.problems {
            writeln!(f, "  watch: {p}")?;
        }
        if !self.replicas_agree() {
            writeln!(f, "  replicas disagree: {:?}", self.hashes)?;
        }
        writeln!(f, "  replay: {}", self.scenario.replay_command())
    }
}

/// Runs one scenario to the end and checks it.
pub fn run(scenario: &Scenario) -> Outcome {
    // Members draw random numbers from the seed, run blocking work inline and read the
    // simulated clock as the time of day, so the run is a function of the seed.
    let _simulation =
        raftlog::determinism::enter(scenario.seed, || turmoil::sim_elapsed().unwrap_or_default());
    simulate(scenario)
}

fn simulate(scenario: &Scenario) -> Outcome {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let members: Vec<String> = (1..=scenario.members).map(|i| format!("m{i}")).collect();
    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .simulation_duration(Duration::from_secs(300))
        .tick_duration(TICK)
        .min_message_latency(Duration::ZERO)
        .max_message_latency(faults::NORMAL_LATENCY)
        .repair_rate(0.05)
        // turmoil panics when a listener's queue of unaccepted connections is full; the
        // kernel would drop the SYN instead (seed 90275 filled 64 while a member was not
        // accepting peer connections).
        .tcp_capacity(4096)
        .build();
    for name in &members {
        start_member(&mut sim, name, &members, false, dir.path(), scenario);
    }
    let shared = Rc::new(Shared::default());
    *shared.members.borrow_mut() = members.clone();
    shared
        .active
        // The workload clients, the recorder and the compactor.
        .set(
            scenario.clients + scenario.watchers + scenario.lease_clients + scenario.appenders + 2,
        );
    let warmup = Duration::from_secs(2);
    let healed = warmup + scenario.load;
    let mut hosts = members.clone();
    let (seed, span) = (scenario.seed, (warmup, healed));
    for (id, name) in client_names("c", scenario.clients, &mut hosts) {
        let keys = scenario.keys;
        sim.client(
            name,
            workload::register_client(id, seed, keys, span, shared.clone()),
        );
    }
    for (id, name) in client_names("w", scenario.watchers, &mut hosts) {
        sim.client(
            name,
            crate::watcher::watcher(id, seed, span, shared.clone()),
        );
    }
    for (id, name) in client_names("a", scenario.appenders, &mut hosts) {
        sim.client(
            name,
            crate::appender::appender(id, seed, span, shared.clone()),
        );
    }
    for (id, name) in client_names("l", scenario.lease_clients, &mut hosts) {
        sim.client(name, crate::lease::client(id, seed, span, shared.clone()));
    }
    sim.client(
        "recorder",
        crate::watcher::recorder(seed, healed, shared.clone()),
    );
    sim.client("compactor", workload::compactor(seed, span, shared.clone()));
    sim.client("monitor", workload::monitor(shared.clone()));
    sim.client("checker", workload::final_check(healed, shared.clone()));
    sim.client("admin", crate::admin::admin(shared.clone()));
    hosts.extend(["recorder", "compactor", "monitor", "checker", "admin"].map(String::from));

    let mut rng = SmallRng::seed_from_u64(scenario.seed.wrapping_add(1));
    let mut plan = faults::plan(
        &mut rng,
        scenario.faults,
        warmup,
        healed - Duration::from_millis(500),
    );
    let mut next = 0;
    let mut active: Vec<usize> = Vec::new();
    let mut added = 0;
    let error = loop {
        let now = sim.elapsed();
        // Later faults leave a member that is out (an outage) alone.
        let out: Vec<&String> = active
            .iter()
            .filter(|&&i| plan[i].kind == faults::Kind::Outage)
            .flat_map(|&i| &plan[i].targets)
            .collect();
        let current: Vec<String> = shared
            .members
            .borrow()
            .iter()
            .filter(|m| !out.contains(m))
            .cloned()
            .collect();
        let mut target = Target {
            sim: &mut sim,
            members: &current,
            hosts: &hosts,
            changes: &shared.changes,
            spare: format!("m{}", scenario.members + added + 1),
        };
        for &i in active.iter().filter(|&&i| now >= plan[i].end) {
            target.end(&plan[i]);
        }
        active.retain(|&i| now < plan[i].end);
        if next < plan.len() && now >= plan[next].start {
            let leader = shared.leader.borrow().clone();
            if let Some(new) = target.start(&mut plan[next], &mut rng, leader) {
                let mut cluster = current.clone();
                cluster.push(new.clone());
                start_member(&mut sim, &new, &cluster, true, dir.path(), scenario);
                hosts.push(new);
                added += 1;
            }
            active.push(next);
            next += 1;
        }
        match sim.step() {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    plan.truncate(next);
    let ended = sim.elapsed();
    drop(sim);
    let history = std::mem::take(&mut shared.history.borrow_mut().ops);
    let events = shared.events.take();
    let leases = shared.leases.take();
    let txns = shared.txns.take();
    let hashes = shared.hashes.take();
    let changes = shared.change_log.take();
    let fingerprint = fingerprint(&(
        ended,
        &plan,
        &history,
        &events,
        &txns,
        &leases,
        &*shared.watch_logs.borrow(),
        &hashes,
        &changes,
        &error,
    ));
    let watch = check_watch(&shared, events.as_ref(), &history, error.is_some());
    let (lease, append) = match &events {
        Some(Ok(events)) => (
            crate::lease::check(&leases, events),
            crate::append::check(&txns, events, crate::appender::PREFIX),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    Outcome {
        scenario: scenario.clone(),
        faults: plan,
        linearizability: linearizability::check(&history),
        watch,
        changes,
        lease,
        append,
        txns: txns.len(),
        leases_checked: (leases.gone.len(), leases.reads.len()),
        hashes,
        error,
        fingerprint,
    }
}

/// A digest of `record`'s debug form (SipHash with fixed keys: the same in every run).
fn fingerprint(record: &impl fmt::Debug) -> u64 {
    use std::hash::Hasher;
    struct Digest(std::hash::DefaultHasher);
    impl fmt::Write for Digest {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut digest = Digest(std::hash::DefaultHasher::new());
    fmt::write(&mut digest, format_args!("{record:?}")).expect("a digest takes any text");
    digest.0.finish()
}

/// Names `count` client hosts `<prefix>0`, `<prefix>1`, …, and adds them to `hosts`.
fn client_names(prefix: &str, count: usize, hosts: &mut Vec<String>) -> Vec<(usize, String)> {
    (0..count)
        .map(|id| {
            let name = format!("{prefix}{id}");
            hosts.push(name.clone());
            (id, name)
        })
        .collect()
}

/// Registers member `name` of `cluster` (bootstrapping, or joining an `existing` cluster).
fn start_member(
    sim: &mut turmoil::Sim<'_>,
    name: &str,
    cluster: &[String],
    existing: bool,
    root: &std::path::Path,
    scenario: &Scenario,
) {
    let config = crate::cluster::member_config(name, cluster, existing, root, scenario)
        .expect("a valid member configuration");
    sim.host(name, move || {
        let config = config.clone();
        async move {
            server::run(config, std::future::pending())
                .await
                .map_err(|e| e.into())
        }
    });
}

/// The event history's soundness, acknowledged writes in it, and every watcher against it.
fn check_watch(
    shared: &Shared,
    events: Option<&Result<Vec<watch_check::Ev>, String>>,
    ops: &[crate::history::Op],
    failed: bool,
) -> WatchReport {
    let history = match events {
        Some(Ok(h)) => h,
        // A failed simulation is reported as such; there is nothing more to check.
        _ if failed => return WatchReport::default(),
        Some(Err(e)) => {
            return WatchReport {
                problems: vec![e.clone()],
                ..WatchReport::default()
            }
        }
        None => {
            return WatchReport {
                problems: vec!["the event history was not read".into()],
                ..WatchReport::default()
            }
        }
    };
    let mut report = watch_check::check_watchers(
        history,
        &shared.watch_logs.borrow(),
        &shared.compactions.borrow(),
    );
    let mut problems = watch_check::check_history(history, &shared.written.borrow());
    problems.extend(watch_check::check_acknowledged(history, ops));
    problems.append(&mut report.problems);
    report.problems = problems;
    report
}
