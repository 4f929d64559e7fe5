//! The linearizability checker: Wing and Gong's search for a linearization, with Lowe's
//! memoization of (operations linearized, model state) — the algorithm Porcupine uses — over a
//! register model, one key at a time (a history is linearizable exactly when each key's
//! sub-history is, so the search never mixes keys).
//!
//! An operation whose outcome is unknown (it timed out) may take effect at any point after its
//! invocation, or never: it is a candidate from its call on, and the search succeeds once every
//! operation with a known outcome is placed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::history::{Input, Op, Output, NEVER};

/// States explored per key before giving up (the verdict is then inconclusive, not a pass).
const SEARCH_BUDGET: usize = 2_000_000;

/// No linearization exists for one key's operations.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub key: String,
    /// The most operations any partial linearization placed, and the value after them.
    pub placed: usize,
    pub value: Option<String>,
    /// The operation no extension of that partial linearization could place, the operations
    /// concurrent with it and the last ones completed before it, by call time.
    pub window: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable: at most {} of its operations can be linearized \
             (value then {:?}); the history around the first one that cannot:",
            self.key, self.placed, self.value
        )?;
        for op in &self.window {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// The checker's answer for a whole history.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of budget: neither proven nor refuted.
    pub inconclusive: Vec<String>,
}

/// Checks every key's operations.
pub fn check(ops: &[Op]) -> Report {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut report = Report {
        keys: by_key.len(),
        ops: ops.len(),
        ..Report::default()
    };
    for (key, ops) in by_key {
        match check_key(ops) {
            Verdict::Linearizable => {}
            Verdict::Violation(v) => report.violations.push(v),
            Verdict::Inconclusive => report.inconclusive.push(key.to_string()),
        }
    }
    report
}

/// The answer for one key.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    Violation(Violation),
    Inconclusive,
}

/// Values interned as small numbers, so model states hash cheaply.
#[derive(Default)]
struct Values {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Values {
    fn id(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        self.names.push(v.to_string());
        let id = (self.names.len() - 1) as u32;
        self.ids.insert(v.to_string(), id);
        id
    }
}

/// An operation in the register model, values interned.
#[derive(Clone, Copy)]
enum Step {
    Get(Option<u32>),
    Put(u32),
    Cas {
        from: u32,
        to: u32,
        held: Option<bool>,
    },
}

/// The register: applies `step` to `state`, or `None` if the step's output is impossible there.
fn apply(state: Option<u32>, step: Step) -> Option<Option<u32>> {
    match step {
        Step::Get(seen) => (seen == state).then_some(state),
        Step::Put(v) => Some(Some(v)),
        Step::Cas { from, to, held } => {
            let holds = state == Some(from);
            match held {
                Some(h) if h != holds => None,
                _ if holds => Some(Some(to)),
                _ => Some(state),
            }
        }
    }
}

type Bits = Vec<u64>;

fn has(bits: &Bits, i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn with(bits: &Bits, i: usize) -> Bits {
    let mut b = bits.clone();
    b[i / 64] |= 1 << (i % 64);
    b
}

/// The state of every value nobody observed: such values are indistinguishable to every
/// operation (no read returned them, no compare names them), so they are one state.
const UNOBSERVED: u32 = u32::MAX;

/// Searches for a linearization of one key's operations.
///
/// Unknown writes of values nobody observed ("spares") can only matter by changing the value
/// just before a failed compare-and-set that would otherwise have held; they are placed only
/// then, and otherwise treated as never having taken effect. Without this, every timed-out
/// write doubles the search. Which spare: a compare-and-set from the current value if one is
/// available (it can serve only where the value is its `from`, while a put serves anywhere),
/// else a put; among equals, the one invoked last (an earlier one stays available to every
/// later point).
pub fn check_key(mut ops: Vec<Op>) -> Verdict {
    ops.sort_by_key(|o| o.call);
    let mut observed: HashSet<&str> = HashSet::new();
    for op in &ops {
        match (&op.input, &op.output) {
            (_, Output::Get(Some(v))) => {
                observed.insert(v);
            }
            (Input::Cas { from, .. }, _) => {
                observed.insert(from);
            }
            _ => {}
        }
    }
    let mut values = Values::default();
    let mut id = |v: &str| {
        if observed.contains(v) {
            values.id(v)
        } else {
            UNOBSERVED
        }
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| match (&op.input, &op.output) {
            (Input::Get, Output::Get(v)) => Step::Get(v.as_deref().map(&mut id)),
            (Input::Put(v), _) => Step::Put(id(v)),
            (Input::Cas { from, to }, out) => Step::Cas {
                from: id(from),
                to: id(to),
                held: match out {
                    Output::Cas(h) => Some(*h),
                    _ => None,
                },
            },
            (Input::Get, other) => panic!("a get recorded with output {other:?}"),
        })
        .collect();
    let spare: Vec<bool> = (0..ops.len())
        .map(|i| {
            ops[i].ret == NEVER
                && match steps[i] {
                    Step::Put(v) | Step::Cas { to: v, .. } => v == UNOBSERVED,
                    Step::Get(_) => false,
                }
        })
        .collect();
    let n = ops.len();
    let known = ops.iter().filter(|o| o.ret != NEVER).count();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Bits, Option<u32>)> = HashSet::new();
    // Depth-first: each frame is a partial linearization and the candidates left to try.
    struct Frame {
        placed: Bits,
        known_placed: usize,
        state: Option<u32>,
        candidates: Vec<usize>,
    }
    // The operations that may come next.
    let candidates = |placed: &Bits| -> Vec<usize> {
        let min_ret = (0..n)
            .filter(|&i| !has(placed, i))
            .map(|i| ops[i].ret)
            .min()
            .unwrap_or(NEVER);
        (0..n)
            .filter(|&i| !has(placed, i) && ops[i].call < min_ret)
            .collect()
    };
    let root: Bits = vec![0; words];
    let mut best = (0usize, None, root.clone());
    let mut stack = vec![Frame {
        candidates: candidates(&root),
        placed: root,
        known_placed: 0,
        state: None,
    }];
    let mut explored = 0usize;
    while let Some(top) = stack.last_mut() {
        if top.known_placed == known {
            return Verdict::Linearizable;
        }
        let Some(i) = top.candidates.pop() else {
            stack.pop();
            continue;
        };
        if spare[i] {
            continue;
        }
        let mut placed = with(&top.placed, i);
        let next = match (apply(top.state, steps[i]), steps[i]) {
            (Some(next), _) => next,
            // A failed compare-and-set where the value is `from`: a spare placed just before
            // it may have changed the value.
            (
                None,
                Step::Cas {
                    held: Some(false), ..
                },
            ) => {
                let min_ret = (0..n)
                    .filter(|&j| !has(&top.placed, j))
                    .map(|j| ops[j].ret)
                    .min()
                    .unwrap_or(NEVER);
                let changes_value = |j: usize| match steps[j] {
                    Step::Put(_) => true,
                    Step::Cas { from, .. } => top.state == Some(from),
                    Step::Get(_) => false,
                };
                let pick = (0..n)
                    .filter(|&j| {
                        spare[j]
                            && !has(&top.placed, j)
                            && ops[j].call < min_ret
                            && changes_value(j)
                    })
                    .max_by_key(|&j| (matches!(steps[j], Step::Cas { .. }), ops[j].call));
                match pick {
                    Some(j) => {
                        placed = with(&placed, j);
                        Some(UNOBSERVED)
                    }
                    None => continue,
                }
            }
            (None, _) => continue,
        };
        if !seen.insert((placed.clone(), next)) {
            continue;
        }
        explored += 1;
        if explored > SEARCH_BUDGET {
            return Verdict::Inconclusive;
        }
        let known_placed = top.known_placed + usize::from(ops[i].ret != NEVER);
        if known_placed > best.0 {
            best = (known_placed, next, placed.clone());
        }
        stack.push(Frame {
            candidates: candidates(&placed),
            placed,
            known_placed,
            state: next,
        });
    }
    let (count, state, placed) = best;
    let shown = state.map(|v| match v {
        UNOBSERVED => "(a value nobody read)".to_string(),
        v => values.names[v as usize].clone(),
    });
    Verdict::Violation(Violation {
        key: ops[0].key.clone(),
        placed: count,
        value: shown,
        window: window(&ops, &placed),
    })
}

/// The first operation with a known outcome left unplaced, everything concurrent with it, and
/// the two operations that completed last before it.
fn window(ops: &[Op], placed: &Bits) -> Vec<Op> {
    let Some(stuck) = (0..ops.len())
        .filter(|&i| !has(placed, i) && ops[i].ret != NEVER)
        .min_by_key(|&i| ops[i].ret)
    else {
        return Vec::new();
    };
    let (call, ret) = (ops[stuck].call, ops[stuck].ret);
    let mut before: Vec<usize> = (0..ops.len()).filter(|&j| ops[j].ret < call).collect();
    before.sort_by_key(|&j| ops[j].ret);
    let earlier = before.iter().rev().take(2).copied();
    let concurrent = (0..ops.len()).filter(|&j| ops[j].call < ret && ops[j].ret > call);
    let mut idx: Vec<usize> = earlier.chain(concurrent).collect();
    idx.sort_by_key(|&j| ops[j].call);
    idx.dedup();
    idx.into_iter().map(|j| ops[j].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: u64, input: Input, output: Output) -> Op {
        Op {
            client,
            member: "m1".into(),
            key: "k".into(),
            call,
            ret,
            input,
            output,
        }
    }
    fn put(c: usize, call: u64, ret: u64, v: &str) -> Op {
        op(c, call, ret, Input::Put(v.into()), Output::Put)
    }
    fn get(c: usize, call: u64, ret: u64, v: Option<&str>) -> Op {
        op(c, call, ret, Input::Get, Output::Get(v.map(String::from)))
    }
    fn cas(c: usize, call: u64, ret: u64, from: &str, to: &str, held: Option<bool>) -> Op {
        let out = held.map_or(Output::Unknown, Output::Cas);
        let input = Input::Cas {
            from: from.into(),
            to: to.into(),
        };
        op(c, call, ret, input, out)
    }
    fn linearizable(ops: Vec<Op>) -> bool {
        match check_key(ops) {
            Verdict::Linearizable => true,
            Verdict::Violation(_) => false,
            Verdict::Inconclusive => panic!("inconclusive"),
        }
    }

    #[test]
    fn sequential_register_history_is_linearizable() {
        let ops = vec![
            get(0, 1, 2, None),
            put(0, 3, 4, "a"),
            get(1, 5, 6, Some("a")),
            cas(1, 7, 8, "a", "b", Some(true)),
            cas(0, 9, 10, "a", "c", Some(false)),
            get(0, 11, 12, Some("b")),
        ];
        assert!(linearizable(ops));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let ops = vec![
            put(0, 1, 2, "a"),
            put(0, 3, 4, "b"),
            get(1, 5, 6, Some("a")),
        ];
        let Verdict::Violation(v) = check_key(ops) else {
            panic!("a stale read passed");
        };
        assert_eq!(v.placed, 2);
        // `b` was never read: the checker knows it only as a value nobody observed.
        assert_eq!(v.value.as_deref(), Some("(a value nobody read)"));
        assert!(v.window.iter().any(|o| o.call == 5), "{v}");
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write, so it may see the old or the new value.
        let old = vec![
            put(0, 1, 2, "a"),
            put(0, 3, 6, "b"),
            get(1, 4, 5, Some("a")),
        ];
        let new = vec![
            put(0, 1, 2, "a"),
            put(0, 3, 6, "b"),
            get(1, 4, 5, Some("b")),
        ];
        assert!(linearizable(old));
        assert!(linearizable(new));
    }

    #[test]
    fn reads_must_agree_on_one_order() {
        // Two overlapping writes; one reader sees b then a, another a then b: no single order.
        let ops = vec![
            put(0, 1, 10, "a"),
            put(1, 2, 11, "b"),
            get(2, 3, 4, Some("b")),
            get(2, 5, 6, Some("a")),
            get(3, 7, 8, Some("b")),
            get(3, 12, 13, Some("b")),
        ];
        assert!(!linearizable(ops));
    }

    #[test]
    fn an_unknown_write_may_apply_late_or_never() {
        let never = vec![
            put(0, 1, 2, "a"),
            put(1, 3, NEVER, "x"),
            get(0, 4, 5, Some("a")),
        ];
        let late = vec![
            put(0, 1, 2, "a"),
            put(1, 3, NEVER, "x"),
            get(0, 4, 5, Some("a")),
            get(0, 6, 7, Some("x")),
        ];
        assert!(linearizable(never));
        assert!(linearizable(late));
        // But not before its call.
        let early = vec![get(0, 1, 2, Some("x")), put(1, 3, NEVER, "x")];
        assert!(!linearizable(early));
    }

    #[test]
    fn cas_outcomes_constrain_the_order() {
        // cas(a->b) failed although nothing but `a` was ever written before it completed.
        let bad = vec![put(0, 1, 2, "a"), cas(1, 3, 4, "a", "b", Some(false))];
        assert!(!linearizable(bad));
        // An unknown write explains the failure.
        let explained = vec![
            put(0, 1, 2, "a"),
            put(2, 3, NEVER, "x"),
            cas(1, 4, 5, "a", "b", Some(false)),
        ];
        assert!(linearizable(explained));
        // An unknown cas may or may not have applied.
        let unknown = vec![
            put(0, 1, 2, "a"),
            cas(1, 3, NEVER, "a", "b", None),
            get(0, 4, 5, Some("b")),
        ];
        assert!(linearizable(unknown));
    }

    #[test]
    fn many_timed_out_writes_do_not_blow_up_the_search() {
        // 60 writes of values nobody reads, all timed out, around a history that needs one of
        // them (late enough) to explain a failed compare-and-set.
        let mut ops = vec![put(0, 1, 2, "a"), get(1, 3, 4, Some("a"))];
        for i in 0..60 {
            ops.push(put(2 + i, 5 + i as u64, NEVER, &format!("x{i}")));
        }
        ops.push(cas(1, 100, 101, "a", "b", Some(false)));
        ops.push(put(0, 102, 103, "c"));
        ops.push(get(1, 104, 105, Some("c")));
        assert!(linearizable(ops.clone()));
        // Without any timed-out write the failed compare-and-set is impossible.
        ops.retain(|o| o.ret != NEVER);
        assert!(!linearizable(ops));
    }

    #[test]
    fn a_timed_out_cas_is_spent_before_a_timed_out_put() {
        // Two failed compare-and-sets need the value changed; the timed-out cas can do it
        // only for the first (the value is then `a`), the put for either.
        let ops = vec![
            put(0, 1, 2, "a"),
            get(1, 3, 4, Some("a")),
            cas(2, 5, NEVER, "a", "y", None),
            put(3, 6, NEVER, "x"),
            cas(1, 7, 8, "a", "b", Some(false)),
            put(0, 9, 10, "c"),
            get(1, 11, 12, Some("c")),
            cas(1, 13, 14, "c", "d", Some(false)),
        ];
        assert!(linearizable(ops));
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut ops = vec![put(0, 1, 2, "a"), get(1, 3, 4, Some("a"))];
        let mut other = get(1, 5, 6, None);
        other.key = "j".into();
        ops.push(other);
        let report = check(&ops);
        assert_eq!((report.keys, report.ops), (2, 3));
        assert!(report.violations.is_empty());
    }
}
