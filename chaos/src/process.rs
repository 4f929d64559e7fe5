//! Runs a scenario in a child process of the `chaos` binary and reads its outcome back.
//!
//! A run replays exactly from its seed only as its process's one simulation. tokio numbers
//! tasks process-wide, and when a host crashes, its runtime drops its tasks in an order those
//! numbers decide; each drop closes connections, which sends segments over turmoil's network
//! (drawing from the seed's generator) in that order. A second simulation in the same process,
//! or one beside it on another thread, numbers its tasks differently. So every seed a soak or
//! CI runs gets a process of its own, and a failing seed's `replay` repeats it exactly.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::run::{Outcome, Scenario};

/// Runs `scenario` in a new process of the `chaos` binary at `exe` (its hidden `child`
/// subcommand), with the members' logs at `log_level` on this process's stderr.
pub fn run_in_child(exe: &Path, scenario: &Scenario, log_level: &str) -> Outcome {
    let spec = serde_json::to_string(scenario).expect("a scenario serializes");
    let output = Command::new(exe)
        .args(["child", "--scenario", &spec, "--log-level", log_level])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return Outcome::failed(scenario, format!("starting {}: {e}", exe.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last().map(serde_json::from_str::<Outcome>) {
        Some(Ok(outcome)) if output.status.success() => outcome,
        Some(Err(e)) => Outcome::failed(scenario, format!("reading the child's outcome: {e}")),
        _ => Outcome::failed(
            scenario,
            format!(
                "the child process ended with {} (its stderr is above)",
                output.status
            ),
        ),
    }
}

/// The `child` subcommand's work: runs the scenario `spec` (JSON) here and prints the outcome
/// as one JSON line.
pub fn child(spec: &str) -> anyhow::Result<()> {
    let scenario: Scenario = serde_json::from_str(spec)?;
    let outcome = crate::run::run(&scenario);
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
