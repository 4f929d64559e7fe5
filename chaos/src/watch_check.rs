//! Watch guarantees as etcd's API guarantees document them, checked against the cluster's
//! event history (every event from revision 1: what the recorder watcher received, which the
//! compactor never compacts past, and the rest read at the end by one more watch):
//!
//! - the history itself is sound: revisions only go up, and each event's create revision,
//!   version and `prev_kv` follow from the key's previous event; every value in it is one a
//!   client wrote, and every acknowledged write is in it;
//! - each watch stream delivers exactly the history's events from its start revision, in
//!   order, with no gap and no duplicate — so a watch resumed from the last revision + 1
//!   continues exactly; a stream is canceled for compaction only if it asked for a compacted
//!   revision, and `prev_kv` may be missing only where that version was compacted (and a
//!   stream that starts at the compacted revision misses that revision's deletions);
//! - all events of one revision (one txn) come in one response;
//! - a progress notification at revision R comes only after every event up to R was sent.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::history::{Input, Op, Output};

/// One event, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub delete: bool,
    pub key: String,
    pub value: String,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
    /// `prev_kv`'s value and mod revision.
    pub prev: Option<(String, i64)>,
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.delete { "DELETE" } else { "PUT" };
        write!(
            f,
            "{kind} {}={:?} at {} (created {}, version {}, lease {:x}, prev {:?})",
            self.key,
            self.value,
            self.mod_rev,
            self.create_rev,
            self.version,
            self.lease,
            self.prev
        )
    }
}

/// One response with events, or a progress notification (no events).
#[derive(Debug, Clone)]
pub struct Resp {
    pub revision: i64,
    pub events: Vec<Ev>,
    /// The highest revision compaction had been asked for when it arrived: versions older
    /// than that may have been compacted, so their `prev_kv` may be missing.
    pub compacted: i64,
}

/// One watch stream.
#[derive(Debug, Clone)]
pub struct Segment {
    pub member: String,
    pub start: i64,
    pub responses: Vec<Resp>,
    /// Why it ended.
    pub end: String,
    /// The compact revision it was canceled with, if it asked for compacted revisions.
    pub compacted: i64,
}

/// One watcher's streams, in order.
#[derive(Debug, Clone)]
pub struct WatchLog {
    pub watcher: usize,
    pub segments: Vec<Segment>,
}

/// What the watch checks found.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WatchReport {
    pub streams: usize,
    pub events: usize,
    pub progress_notifications: usize,
    pub problems: Vec<String>,
}

/// At most this many problems of one kind are listed.
const LIST: usize = 5;

fn note(problems: &mut Vec<String>, p: String) {
    if problems.len() < LIST {
        problems.push(p);
    }
}

/// Checks the history: order, per-key bookkeeping, values written by clients.
pub fn check_history(history: &[Ev], written: &HashSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last_rev = 0;
    let mut in_rev: HashSet<&str> = HashSet::new();
    let mut live: HashMap<&str, &Ev> = HashMap::new();
    for e in history {
        // Revisions count up from 2 (the first write) without gaps: every revision is a
        // change, and every change has events.
        let first = last_rev == 0 && e.mod_rev != 2;
        if first || (last_rev != 0 && e.mod_rev != last_rev && e.mod_rev != last_rev + 1) {
            note(
                &mut problems,
                format!("revision {} follows {last_rev}: {e}", e.mod_rev),
            );
        }
        if e.mod_rev != last_rev {
            in_rev.clear();
        }
        if !in_rev.insert(&e.key) {
            note(
                &mut problems,
                format!("two events for one key in one revision: {e}"),
            );
        }
        last_rev = e.mod_rev;
        let prev = live.get(e.key.as_str()).copied();
        let want_prev = prev.map(|p| (p.value.clone(), p.mod_rev));
        if e.prev != want_prev {
            note(
                &mut problems,
                format!("prev_kv {:?} should be {want_prev:?}: {e}", e.prev),
            );
        }
        if e.delete {
            if prev.is_none() {
                note(&mut problems, format!("delete of an absent key: {e}"));
            }
            live.remove(e.key.as_str());
            continue;
        }
        let (create, version) = prev.map_or((e.mod_rev, 1), |p| (p.create_rev, p.version + 1));
        if (e.create_rev, e.version) != (create, version) {
            note(
                &mut problems,
                format!("create revision and version should be {create} and {version}: {e}"),
            );
        }
        if !written.contains(&e.value) {
            note(&mut problems, format!("a value no client wrote: {e}"));
        }
        live.insert(&e.key, e);
    }
    problems
}

/// Every write a client was told succeeded is in the history.
pub fn check_acknowledged(history: &[Ev], ops: &[Op]) -> Vec<String> {
    let puts: HashSet<(&str, &str)> = history
        .iter()
        .filter(|e| !e.delete)
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let mut problems = Vec::new();
    for op in ops {
        let value = match (&op.input, &op.output) {
            (Input::Put(v), Output::Put) | (Input::Cas { to: v, .. }, Output::Cas(true)) => v,
            _ => continue,
        };
        if !puts.contains(&(op.key.as_str(), value.as_str())) {
            note(
                &mut problems,
                format!("an acknowledged write is not in the history: {op}"),
            );
        }
    }
    problems
}

/// Checks every watcher's streams against the history.
/// Checks every watcher's streams against the history.
/// `compactions` are the revisions compaction was asked for, in order.
pub fn check_watchers(history: &[Ev], logs: &[WatchLog], compactions: &[i64]) -> WatchReport {
    let mut report = WatchReport::default();
    let mut per_rev: HashMap<i64, usize> = HashMap::new();
    for e in history {
        *per_rev.entry(e.mod_rev).or_default() += 1;
    }
    let last = history.last().map_or(0, |e| e.mod_rev);
    for log in logs {
        for seg in &log.segments {
            report.streams += 1;
            let who = format!(
                "watcher {} via {} from revision {}",
                log.watcher, seg.member, seg.start
            );
            check_segment(
                history,
                (&per_rev, last),
                seg,
                compactions,
                &who,
                &mut report,
            );
        }
    }
    report
}

/// Whether `got` is the history's `want`, allowing a missing `prev_kv` where the previous
/// version may have been compacted (older than `compacted`), as etcd omits it then.
pub fn same(got: &Ev, want: &Ev, compacted: i64) -> bool {
    if got.prev.is_none() && want.prev.is_some() && got.mod_rev - 1 < compacted {
        let without = Ev {
            prev: None,
            ..want.clone()
        };
        return *got == without;
    }
    got == want
}

fn check_segment(
    history: &[Ev],
    (per_rev, last): (&HashMap<i64, usize>, i64),
    seg: &Segment,
    compactions: &[i64],
    who: &str,
    report: &mut WatchReport,
) {
    let problems = &mut report.problems;
    let received: Vec<(&Ev, i64)> = seg
        .responses
        .iter()
        .flat_map(|r| r.events.iter().map(move |e| (e, r.compacted)))
        .collect();
    // etcd cancels a watch for compaction only while its next revision is compacted.
    let position = received.last().map_or(seg.start, |(e, _)| e.mod_rev + 1);
    if seg.compacted > 0 && seg.compacted <= position.max(seg.start) {
        note(
            problems,
            format!(
                "{who}: canceled as compacted at revision {} though it was at revision {position}",
                seg.compacted
            ),
        );
    }
    report.events += received.len();
    let claimed = seg
        .responses
        .iter()
        .filter(|r| r.events.is_empty())
        .map(|r| r.revision)
        .max();
    report.progress_notifications += seg.responses.iter().filter(|r| r.events.is_empty()).count();
    let upto = received
        .last()
        .map_or(0, |(e, _)| e.mod_rev)
        .max(claimed.unwrap_or(0));
    if upto > last {
        note(
            problems,
            format!("{who}: reached revision {upto}, past the history's last {last}"),
        );
        return;
    }
    // Compaction removes the tombstones at the compacted revision itself, and a watch may
    // start at the compacted revision: as from etcd, it then misses that revision's
    // deletions (but not its puts) if that compaction was asked for before its first events.
    let start_compacted = compactions.contains(&seg.start)
        && seg
            .responses
            .iter()
            .find(|r| !r.events.is_empty())
            .is_some_and(|r| r.compacted >= seg.start);
    let expected: Vec<&Ev> = history
        .iter()
        .filter(|e| e.mod_rev >= seg.start && e.mod_rev <= upto)
        .filter(|e| {
            let compacted_away = start_compacted && e.delete && e.mod_rev == seg.start;
            !compacted_away || received.iter().any(|(got, c)| same(got, e, *c))
        })
        .collect();
    if let Some(i) = (0..received.len().max(expected.len())).find(|&i| {
        match (received.get(i), expected.get(i)) {
            (Some((got, compacted)), Some(want)) => !same(got, want, *compacted),
            (got, want) => got.is_some() || want.is_some(),
        }
    }) {
        let show = |e: Option<&Ev>| e.map_or("nothing".to_string(), |e| e.to_string());
        note(
            problems,
            format!(
                "{who}: event #{i} is {}, the history has {} (a gap, duplicate, reordering or \
                 wrong content)",
                show(received.get(i).map(|(e, _)| *e)),
                show(expected.get(i).copied())
            ),
        );
    }
    let mut sent = 0;
    let mut sent_upto = 0;
    for r in &seg.responses {
        if r.events.is_empty() && r.revision < sent_upto {
            note(
                problems,
                format!(
                    "{who}: progress notification at revision {} after events up to {sent_upto}",
                    r.revision
                ),
            );
        }
        if let Some(e) = r.events.last() {
            sent_upto = e.mod_rev;
        }
        if r.events.is_empty() {
            let due = expected
                .iter()
                .take_while(|e| e.mod_rev <= r.revision)
                .count();
            if sent < due {
                note(
                    problems,
                    format!(
                        "{who}: progress notification at revision {} after {sent} of the {due} \
                         events up to it",
                        r.revision
                    ),
                );
            }
            continue;
        }
        sent += r.events.len();
        let mut revs: Vec<i64> = r.events.iter().map(|e| e.mod_rev).collect();
        revs.dedup();
        for rev in revs {
            let here = r.events.iter().filter(|e| e.mod_rev == rev).count();
            let all = per_rev.get(&rev).copied().unwrap_or(0);
            if here != all {
                note(
                    problems,
                    format!(
                        "{who}: revision {rev} split across responses ({here} of {all} events)"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        key: &str,
        value: &str,
        rev: i64,
        created: i64,
        version: i64,
        prev: Option<(&str, i64)>,
    ) -> Ev {
        Ev {
            delete: false,
            key: key.into(),
            value: value.into(),
            mod_rev: rev,
            create_rev: created,
            version,
            lease: 0,
            prev: prev.map(|(v, r)| (v.into(), r)),
        }
    }

    fn history() -> Vec<Ev> {
        vec![
            put("a", "1", 2, 2, 1, None),
            put("b", "2", 3, 3, 1, None),
            put("c", "3", 3, 3, 1, None),
            put("a", "4", 4, 2, 2, Some(("1", 2))),
        ]
    }

    fn written() -> HashSet<String> {
        ["1", "2", "3", "4"].iter().map(|s| s.to_string()).collect()
    }

    fn seg(start: i64, responses: Vec<Resp>) -> WatchLog {
        WatchLog {
            watcher: 0,
            segments: vec![Segment {
                member: "m1".into(),
                start,
                responses,
                end: String::new(),
                compacted: 0,
            }],
        }
    }

    fn resp(events: &[Ev], revision: i64) -> Resp {
        Resp {
            revision,
            events: events.to_vec(),
            compacted: 0,
        }
    }

    #[test]
    fn a_sound_history_and_exact_streams_pass() {
        let h = history();
        assert!(check_history(&h, &written()).is_empty());
        let whole = seg(1, vec![resp(&h[..1], 2), resp(&h[1..3], 3), resp(&[], 3)]);
        let resumed = seg(3, vec![resp(&h[1..3], 3), resp(&h[3..], 4), resp(&[], 4)]);
        let report = check_watchers(&h, &[whole, resumed], &[]);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            (report.streams, report.events, report.progress_notifications),
            (2, 6, 2)
        );
    }

    #[test]
    fn unsound_histories_are_reported() {
        let mut h = history();
        h[3].version = 1;
        h[1].prev = Some(("x".into(), 1));
        h[2].value = "?".into();
        let problems = check_history(&h, &written());
        assert_eq!(problems.len(), 3, "{problems:?}");
        // A revision missing: the history starts at 3.
        let gap: Vec<Ev> = history()[1..3].to_vec();
        let problems = check_history(&gap, &written());
        assert!(
            problems.iter().any(|p| p.contains("follows 0")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_watch_from_the_compacted_revision_may_miss_only_its_deletions() {
        let mut h = history();
        let mut delete_b = put("b", "", 5, 0, 0, Some(("2", 3)));
        delete_b.delete = true;
        h.push(delete_b);
        h.push(put("c", "6", 6, 3, 2, Some(("3", 3))));
        h.push(put("c", "7", 7, 3, 3, Some(("6", 6))));
        let from = |start: i64, events: &[Ev], compacted: i64| {
            let mut r = resp(events, 7);
            r.compacted = compacted;
            seg(start, vec![r])
        };
        // Compaction at 5 removed the tombstone at 5: a stream from 5 may begin at 6.
        let report = check_watchers(&h, &[from(5, &h[5..], 5)], &[5]);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let report = check_watchers(&h, &[from(5, &h[4..], 5)], &[5]);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Without a compaction at 5, or one asked for only after the events came, the
        // deletion is missing.
        let report = check_watchers(&h, &[from(5, &h[5..], 6)], &[6]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let report = check_watchers(&h, &[from(5, &h[5..], 4)], &[4, 5]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        // A put at the compacted revision is kept: missing it is a gap.
        let report = check_watchers(&h, &[from(6, &h[6..], 6)], &[6]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    }

    #[test]
    fn prev_kv_may_be_missing_only_where_compacted() {
        let h = history();
        let mut got = h[3].clone();
        got.prev = None;
        // Its previous version is at 2: missing prev_kv is fine once 3 was compacted.
        assert!(!same(&got, &h[3], 3));
        assert!(same(&got, &h[3], 4));
        let mut early = seg(4, vec![resp(&[got], 4)]);
        assert!(!check_watchers(&h, &[early.clone()], &[])
            .problems
            .is_empty());
        early.segments[0].responses[0].compacted = 4;
        assert!(check_watchers(&h, &[early], &[]).problems.is_empty());
    }

    #[test]
    fn a_compaction_cancel_only_below_the_compact_revision() {
        let h = history();
        let mut fine = seg(1, vec![resp(&h[..1], 2)]);
        fine.segments[0].compacted = 4;
        assert!(check_watchers(&h, &[fine], &[]).problems.is_empty());
        let mut spurious = seg(1, vec![resp(&h[..3], 3)]);
        spurious.segments[0].compacted = 3;
        assert!(!check_watchers(&h, &[spurious], &[]).problems.is_empty());
    }

    #[test]
    fn gaps_duplicates_split_txns_and_early_progress_are_reported() {
        let h = history();
        let gap = seg(1, vec![resp(&h[..1], 2), resp(&h[3..], 4)]);
        let dup = seg(1, vec![resp(&h[..1], 2), resp(&h[..1], 2)]);
        let split = seg(3, vec![resp(&h[1..2], 3), resp(&h[2..3], 3)]);
        let early = seg(1, vec![resp(&h[..1], 2), resp(&[], 3), resp(&h[1..3], 3)]);
        for (name, log) in [
            ("gap", gap),
            ("dup", dup),
            ("split", split),
            ("early", early),
        ] {
            let report = check_watchers(&h, &[log], &[]);
            assert!(!report.problems.is_empty(), "{name} passed");
        }
    }
}
