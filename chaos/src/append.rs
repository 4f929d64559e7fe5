//! The list-append workload and its Elle-style checker. Each key holds a list of numbers;
//! a transaction reads some lists and appends a unique number to others. A client runs one as
//! etcd clients do optimistic transactions: a read-only txn reads every key it touches, then a
//! txn that commits only if none of them changed since (compare mod_revision) puts the
//! appended lists. A committed transaction therefore read and wrote atomically.
//!
//! The check infers each key's version order from the event history (every put of a list key
//! is a whole version), then the dependencies between committed transactions — write-write
//! (consecutive appends), write-read (the last element a read saw), read-write (the element
//! appended after what a read saw) and real time (one finished before the other began) — and
//! reports any cycle, as Elle does. It also reports versions that are not one append longer
//! than the previous, reads of lists that never existed, aborted appends that became visible,
//! and transactions only partly visible.

use std::collections::HashMap;

use crate::history::{Time, NEVER};
use crate::watch_check::Ev;

/// A micro-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    Read { key: String, list: Vec<u64> },
    Append { key: String, value: u64 },
}

/// One transaction as a client ran it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub client: usize,
    pub call: Time,
    /// [`NEVER`] when the outcome is unknown.
    pub ret: Time,
    /// `Some(false)` when the compare failed (nothing was written); `None` when unknown.
    pub committed: Option<bool>,
    pub mops: Vec<Mop>,
}

/// Parses a list value ("1,2,3"; empty for an absent key).
pub fn parse(v: &str) -> Vec<u64> {
    v.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Formats a list value.
pub fn format(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    WriteWrite,
    WriteRead,
    ReadWrite,
    RealTime,
}

/// The anomalies found in the transactions, given the event history.
pub fn check(txns: &[Txn], history: &[Ev], prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Each key's versions, in order, from the history.
    let mut orders: HashMap<&str, Vec<u64>> = HashMap::new();
    // Every element that was ever in some version.
    let mut visible: HashMap<u64, &str> = HashMap::new();
    for e in history.iter().filter(|e| e.key.starts_with(prefix)) {
        let list = if e.delete {
            Vec::new()
        } else {
            parse(&e.value)
        };
        visible.extend(list.iter().map(|v| (*v, e.key.as_str())));
        let before = orders.entry(&e.key).or_default();
        let grew = list.len() == before.len() + 1 && list.starts_with(before);
        if !grew {
            problems.push(format!(
                "{} went from [{}] to [{}] at revision {}: not one append",
                e.key,
                format(before),
                format(&list),
                e.mod_rev
            ));
        }
        *before = list;
    }
    // Who appended what; which transactions took effect.
    let mut writer: HashMap<u64, usize> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for m in &t.mops {
            if let Mop::Append { value, .. } = m {
                writer.insert(*value, i);
            }
        }
    }
    let mut effective = vec![false; txns.len()];
    for (i, t) in txns.iter().enumerate() {
        let appended: Vec<u64> = t
            .mops
            .iter()
            .filter_map(|m| match m {
                Mop::Append { value, .. } => Some(*value),
                _ => None,
            })
            .collect();
        let seen = appended.iter().filter(|v| visible.contains_key(v)).count();
        match t.committed {
            Some(false) if seen > 0 => problems.push(format!(
                "an aborted transaction's append is visible: client {} at {}",
                t.client, t.call
            )),
            Some(true) if seen < appended.len() => problems.push(format!(
                "a committed transaction's appends are missing: client {} at {} ({seen} of {})",
                t.client,
                t.call,
                appended.len()
            )),
            None if seen > 0 && seen < appended.len() => problems.push(format!(
                "a transaction is only partly visible: client {} at {}",
                t.client, t.call
            )),
            _ => {}
        }
        effective[i] = t.committed == Some(true) || (t.committed.is_none() && seen > 0);
    }
    for v in visible.keys() {
        if !writer.contains_key(v) {
            problems.push(format!("{v} is in a list but no client appended it"));
        }
    }
    // The dependency graph between effective transactions.
    let mut edges: Vec<Vec<(usize, Dep)>> = vec![Vec::new(); txns.len()];
    for order in orders.values() {
        for pair in order.windows(2) {
            if let (Some(&a), Some(&b)) = (writer.get(&pair[0]), writer.get(&pair[1])) {
                edges[a].push((b, Dep::WriteWrite));
            }
        }
    }
    for (i, t) in txns.iter().enumerate().filter(|(i, _)| effective[*i]) {
        for m in &t.mops {
            let Mop::Read { key, list } = m else { continue };
            let order = orders.get(key.as_str()).map_or(&[][..], |o| &o[..]);
            if !order.starts_with(list) {
                problems.push(format!(
                    "client {} at {} read {key} = [{}], which never existed (versions end [{}])",
                    t.client,
                    t.call,
                    format(list),
                    format(order)
                ));
                continue;
            }
            if let Some(&w) = list.last().and_then(|v| writer.get(v)) {
                edges[w].push((i, Dep::WriteRead));
            }
            if let Some(&w) = order.get(list.len()).and_then(|v| writer.get(v)) {
                edges[i].push((w, Dep::ReadWrite));
            }
        }
    }
    for (a, ta) in txns
        .iter()
        .enumerate()
        .filter(|(i, t)| effective[*i] && t.ret != NEVER)
    {
        for (b, tb) in txns.iter().enumerate().filter(|(i, _)| effective[*i]) {
            if ta.ret < tb.call {
                edges[a].push((b, Dep::RealTime));
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .iter()
            .map(|&(i, dep)| format!("client {} at {} -{dep:?}->", txns[i].client, txns[i].call))
            .collect();
        problems.push(format!(
            "dependency cycle: {} back to the first",
            steps.join(" ")
        ));
    }
    problems
}

/// A cycle in the graph, as (node, the edge leaving it) steps, if there is one.
fn find_cycle(edges: &[Vec<(usize, Dep)>]) -> Option<Vec<(usize, Dep)>> {
    // Iterative depth-first search with colours; the grey path is the stack.
    let n = edges.len();
    let mut colour = vec![0u8; n];
    for root in 0..n {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if *next == edges[node].len() {
                colour[node] = 2;
                stack.pop();
                continue;
            }
            let (to, _) = edges[node][*next];
            *next += 1;
            match colour[to] {
                0 => {
                    colour[to] = 1;
                    stack.push((to, 0));
                }
                1 => {
                    let start = stack
                        .iter()
                        .position(|&(v, _)| v == to)
                        .expect("on the path");
                    return Some(
                        stack[start..]
                            .iter()
                            .map(|&(v, next)| (v, edges[v][next - 1].1))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, list: &[u64], rev: i64) -> Ev {
        Ev {
            delete: false,
            key: key.into(),
            value: format(list),
            mod_rev: rev,
            create_rev: 0,
            version: 0,
            lease: 0,
            prev: None,
        }
    }
    fn txn(client: usize, call: Time, ret: Time, mops: Vec<Mop>) -> Txn {
        Txn {
            client,
            call,
            ret,
            committed: Some(true),
            mops,
        }
    }
    fn read(key: &str, list: &[u64]) -> Mop {
        Mop::Read {
            key: key.into(),
            list: list.to_vec(),
        }
    }
    fn append(key: &str, value: u64) -> Mop {
        Mop::Append {
            key: key.into(),
            value,
        }
    }

    #[test]
    fn serial_transactions_pass() {
        let history = vec![ev("x", &[1], 2), ev("y", &[2], 3), ev("x", &[1, 3], 4)];
        let txns = vec![
            txn(0, 1, 2, vec![append("x", 1)]),
            txn(1, 3, 4, vec![read("x", &[1]), append("y", 2)]),
            txn(0, 5, 6, vec![read("y", &[2]), append("x", 3)]),
            txn(1, 7, 8, vec![read("x", &[1, 3]), read("y", &[2])]),
        ];
        assert_eq!(check(&txns, &history, ""), Vec::<String>::new());
    }

    #[test]
    fn write_skew_is_a_cycle() {
        // Each read the other's key empty and appended to its own: G2, impossible serially.
        let history = vec![ev("x", &[1], 2), ev("y", &[2], 3)];
        let txns = vec![
            txn(0, 1, 5, vec![read("y", &[]), append("x", 1)]),
            txn(1, 2, 6, vec![read("x", &[]), append("y", 2)]),
        ];
        let problems = check(&txns, &history, "");
        assert!(problems.iter().any(|p| p.contains("cycle")), "{problems:?}");
    }

    #[test]
    fn stale_read_after_a_finished_append_is_a_cycle() {
        let history = vec![ev("x", &[1], 2)];
        let txns = vec![
            txn(0, 1, 2, vec![append("x", 1)]),
            txn(1, 3, 4, vec![read("x", &[])]),
        ];
        let problems = check(&txns, &history, "");
        assert!(
            problems.iter().any(|p| p.contains("RealTime")),
            "{problems:?}"
        );
    }

    #[test]
    fn lost_and_aborted_and_phantom_appends_are_reported() {
        let history = vec![ev("x", &[1], 2), ev("x", &[1, 9], 3), ev("x", &[7], 4)];
        let mut aborted = txn(0, 1, 2, vec![append("x", 9)]);
        aborted.committed = Some(false);
        let txns = vec![txn(1, 3, 4, vec![append("x", 1)]), aborted];
        let problems = check(&txns, &history, "");
        assert!(
            problems.iter().any(|p| p.contains("not one append")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("aborted")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("no client appended")),
            "{problems:?}"
        );
    }
}
