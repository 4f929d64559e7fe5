//! Runs a scenario in a child process of the `chaos` binary and reads its outcome back.
//!
//! A run replays exactly from its seed only as its process's one simulation. tokio numbers
//! tasks process-wide, and when a host crashes, its runtime drops its tasks in an order those
//! numbers decide; each drop closes connections, which sends segments over turmoil's network
//! (drawing from the seed's generator) in that order. A second simulation in the same process,
//! or one beside it on another thread, numbers its tasks differently. So every seed a soak or
//! CI runs gets a process of its own, and a failing seed's `replay` repeats it exactly.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::{Outcome, Scenario};

/// Runs `scenario` in a new process of the `chaos` binary at `exe` (its hidden `child`
/// subcommand), with the members' logs at `log_level` on this process's stderr. A child that
/// has not finished after [`time_limit`] is killed and the run reported failed.
pub fn run_in_child(exe: &Path, scenario: &Scenario, log_level: &str) -> Outcome {
    let spec = serde_json::to_string(scenario).expect("a scenario serializes");
    let child = Command::new(exe)
        .args(["child", "--scenario", &spec, "--log-level", log_level])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::failed(scenario, format!("starting {}: {e}", exe.display())),
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + time_limit(scenario);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "the child process ran past {:?} and was killed",
                    time_limit(scenario)
                ));
            }
            Err(e) => break Err(format!("waiting for the child process: {e}")),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    let status = match status {
        Ok(s) => s,
        Err(why) => return Outcome::failed(scenario, why),
    };
    match stdout.lines().last().map(serde_json::from_str::<Outcome>) {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => Outcome::failed(scenario, format!("reading the child's outcome: {e}")),
        None => Outcome::failed(
            scenario,
            format!("the child process ended ({status}) without an outcome; its stderr is above"),
        ),
    }
}

/// How long a run may take in real time: far more than any run has taken (a short scenario
/// takes a few seconds), so only a hung simulation reaches it.
pub fn time_limit(scenario: &Scenario) -> Duration {
    Duration::from_secs(300) + scenario.load * 30
}

/// The `child` subcommand's work: runs the scenario `spec` (JSON) here and prints the outcome
/// as one JSON line.
pub fn child(spec: &str) -> anyhow::Result<()> {
    let scenario: Scenario = serde_json::from_str(spec)?;
    let outcome = crate::run::run(&scenario);
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
