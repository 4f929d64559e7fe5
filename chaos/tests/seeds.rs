//! The chaos suite in CI: the short seed set (every seed's history checked for linearizability
//! and the replicas' HashKV compared), and the proof that the checker catches a real bug.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chaos::{run_in_child, Outcome, Scenario};

/// Runs `scenario(seed)` for `seeds` seeds, each in a process of its own (so each replays
/// exactly), two at a time; returns the outcomes by seed.
fn run_seeds(seeds: u64, scenario: impl Fn(u64) -> Scenario + Sync) -> Vec<Outcome> {
    let next = AtomicU64::new(0);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds {
                    return;
                }
                let exe = std::path::Path::new(env!("CARGO_BIN_EXE_chaos"));
                let outcome = run_in_child(exe, &scenario(seed), "off");
                outcomes.lock().expect("outcomes").push(outcome);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by_key(|o| o.scenario.seed);
    outcomes
}

#[test]
fn short_seed_set_is_linearizable_and_replicas_agree() {
    let seeds = std::env::var("CAIRN_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let outcomes = run_seeds(seeds, Scenario::short);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    let faults: usize = outcomes.iter().map(|o| o.faults.len()).sum();
    let ops: usize = outcomes.iter().map(|o| o.linearizability.ops).sum();
    let summary = format!(
        "{} passed, {} failed; {faults} faults injected, {ops} operations checked",
        outcomes.len() - failed.len(),
        failed.len()
    );
    println!("{summary}");
    let reports: String = failed.iter().map(|o| o.to_string()).collect();
    assert!(failed.is_empty(), "{summary}\n{reports}");
    // The runs did something: faults were injected, and every checker had something to check.
    assert_eq!(
        faults as u64,
        2 * seeds,
        "every seed injects both its faults"
    );
    assert!(ops as u64 > 50 * seeds, "too few operations: {summary}");
    let events: usize = outcomes.iter().map(|o| o.watch.events).sum();
    let txns: usize = outcomes.iter().map(|o| o.txns).sum();
    let leases: usize = outcomes.iter().map(|o| o.leases_checked.0).sum();
    let watched = outcomes.iter().filter(|o| o.watch.events > 0).count();
    assert!(
        events as u64 > 50 * seeds && txns as u64 > 10 * seeds && leases as u64 >= seeds,
        "too little checked: {events} watch events, {txns} transactions, {leases} leases"
    );
    assert!(
        watched * 10 >= outcomes.len() * 9,
        "watchers received events in only {watched} of {} seeds",
        outcomes.len()
    );
}

#[test]
fn checker_catches_linearizable_reads_served_locally() {
    // The server's deliberate bug: linearizable reads answered from the member's own state.
    // Reads through followers (and through a cut-off leader) then return stale values.
    let outcomes = run_seeds(4, |seed| Scenario {
        bug_local_reads: true,
        ..Scenario::short(seed)
    });
    let caught: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.linearizability.violations.is_empty())
        .collect();
    assert!(
        !caught.is_empty(),
        "no seed's history was found non-linearizable with local reads: {outcomes:#?}"
    );
    for o in &caught {
        assert!(o.error.is_none(), "{o}");
        for v in &o.linearizability.violations {
            assert!(
                v.window
                    .iter()
                    .any(|op| op.input == chaos::history::Input::Get),
                "a violation's window shows the stale read: {v}"
            );
        }
    }
}

#[test]
// The first assertion is constant within a build, on purpose: it names a build without the flag.
#[allow(clippy::assertions_on_constants)]
fn seeds_that_once_failed_pass_and_replay_exactly() {
    // Each found a problem, since fixed: 60902 a peer connection that stopped delivering left
    // a follower unheard for good (the server now dials again); 39 compared HashKV across
    // members that had not all applied the last compaction; 30254 a fault with every other
    // member out; 1244 writes acknowledged after the final revision was taken; 15 a search
    // blown up by timed-out writes; 90275 more held connection attempts than turmoil's
    // default listener queue. Each runs twice, at the same time on two threads, and both runs
    // must go exactly the same way.
    assert!(
        chaos::SEEDED_RUNTIMES,
        "built without --cfg tokio_unstable (a RUSTFLAGS variable replaces .cargo/config.toml's)"
    );
    let seeds = [60902, 39, 30254, 1244, 15, 90275];
    let outcomes = run_seeds(seeds.len() as u64 * 2, |i| {
        Scenario::short(seeds[i as usize / 2])
    });
    let failed: String = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.to_string())
        .collect();
    assert!(failed.is_empty(), "{failed}");
    let mut fingerprints = Vec::new();
    for pair in outcomes.chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.scenario.seed, b.scenario.seed);
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "seed {} went differently in two runs:\n{a}{b}faults {:?} vs {:?}",
            a.scenario.seed, a.faults, b.faults
        );
        fingerprints.push(a.fingerprint);
    }
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(
        fingerprints.len(),
        seeds.len(),
        "different seeds, different runs"
    );
}
