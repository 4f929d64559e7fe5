//! The backend quota: past `--quota-backend-bytes` the NOSPACE alarm is raised; puts, put-txns
//! and lease grants are refused with etcd's error while reads, deletes and compaction still
//! work; after compaction, defragmentation and `alarm disarm`, writes succeed again. The same
//! script runs against real etcd, and what etcdctl prints after the alarm must be equal.

use std::process::Command;

use crate::harness::{etcdctl35, etcdctl_stdin, Kind, Server};

fn stdout_and_errors(out: &std::process::Output) -> String {
    let errors: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Error"))
        .collect();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        errors.join("\n")
    );
    let text = regex::Regex::new(r"memberID:\d+")
        .unwrap()
        .replace_all(&text, "memberID:N")
        .into_owned();
    regex::Regex::new(r"127\.0\.0\.1:\d+")
        .unwrap()
        .replace_all(&text, "EP")
        .into_owned()
}

fn health(s: &Server, query: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("{}/health{query}", s.url())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fills the backend until NOSPACE, then runs the script; returns what it printed.
fn scenario(kind: Kind) -> Vec<String> {
    let s = Server::start_with(kind, &["--quota-backend-bytes", "400000"]);
    let value = "x".repeat(60_000);
    let mut raised = false;
    for i in 0..100 {
        let out = etcdctl_stdin(
            &etcdctl35(),
            &s.endpoint(),
            &["put", &format!("fill/{i}")],
            &value,
        );
        if !out.status.success() {
            assert!(
                stdout_and_errors(&out).contains("etcdserver: mvcc: database space exceeded"),
                "{kind:?}: {}",
                stdout_and_errors(&out)
            );
            raised = true;
            break;
        }
    }
    assert!(raised, "{kind:?} never raised NOSPACE");
    let mut printed = Vec::new();
    let step = |printed: &mut Vec<String>, args: &[&str]| {
        printed.push(format!(
            "$ {}\n{}",
            args.join(" "),
            stdout_and_errors(&s.ctl(args))
        ))
    };
    step(&mut printed, &["alarm", "list"]);
    step(&mut printed, &["put", "k", "v"]);
    step(&mut printed, &["lease", "grant", "60"]);
    step(&mut printed, &["get", "fill/0", "--keys-only"]);
    // How many values fit differs with the storage engine; that they are all deleted does not.
    let deleted = s.ctl(&["del", "fill/", "--prefix"]);
    let n: usize = String::from_utf8_lossy(&deleted.stdout)
        .trim()
        .parse()
        .unwrap();
    printed.push(format!("deleted every value written: {}", n >= 1));
    printed.push(format!("health: {}", health(&s, "")));
    printed.push(format!(
        "health excluding NOSPACE: {}",
        health(&s, "?exclude=NOSPACE")
    ));
    let rev = s.ctl(&["get", "x", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_slice(&rev.stdout).unwrap();
    let rev = rev["header"]["revision"].as_i64().unwrap().to_string();
    let mut step = |args: &[&str]| {
        printed.push(format!(
            "$ {}\n{}",
            args.join(" ").replace(&rev, "REV"),
            stdout_and_errors(&s.ctl(args)).replace(&rev, "REV")
        ))
    };
    step(&["compaction", &rev, "--physical"]);
    step(&["defrag"]);
    step(&["alarm", "disarm"]);
    step(&["alarm", "list"]);
    step(&["put", "k", "v"]);
    step(&["get", "k", "--print-value-only"]);
    printed
}

#[test]
fn nospace_alarm_behaves_as_in_etcd() {
    let want = scenario(Kind::Etcd);
    let got = scenario(Kind::Cairn);
    assert_eq!(want, got);
}
