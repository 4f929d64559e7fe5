//! Faults: which ones a seed schedules and when, and how each is done to and undone on the
//! simulated cluster. Faults take turns (each healed before the next starts), except an outage,
//! which lasts until the end of the fault window; so every run ends with a healthy cluster whose
//! members must agree.

use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A minority of members cut off from the majority (clients still reach everyone).
    PartitionMinority,
    /// The leader cut off from the other members.
    IsolateLeader,
    /// Two halves that reach each other only through one bridge member.
    Bridge,
    /// Links fail at random and recover (segments in flight are lost).
    Loss,
    /// Messages take up to 150 ms, so they arrive out of order across connections.
    Delay,
    /// A member (the leader half of the time) is killed, and restarted at the end.
    Crash,
    /// The leader stops answering anyone while it still believes it leads; then it resumes
    /// and everything it was sent arrives at once.
    PauseLeader,
    /// A new member is added (and started), then another one removed, while messages are
    /// delayed.
    ReplaceMember,
    /// A follower is killed and stays down while the faults after it come and go, until the
    /// end: it comes back far behind (past the leader's log, so by snapshot).
    Outage,
}

const KINDS: [Kind; 9] = [
    Kind::PartitionMinority,
    Kind::IsolateLeader,
    Kind::Bridge,
    Kind::Loss,
    Kind::Delay,
    Kind::Crash,
    Kind::PauseLeader,
    Kind::ReplaceMember,
    Kind::Outage,
];

/// One scheduled fault.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    pub kind: Kind,
    pub start: Duration,
    pub end: Duration,
    /// Members it was done to, once it started.
    pub targets: Vec<String>,
    /// The links a partition cut, healed exactly at its end.
    pub severed: Vec<(String, String)>,
    /// Whether a partition drops what is sent across it (the connections then stall, as TCP
    /// connections whose segments were lost, until keep-alive gives up on them) rather than
    /// holding it for delivery when it heals (as TCP's retransmission would deliver it).
    pub drops: bool,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.kind {
            Kind::PartitionMinority | Kind::IsolateLeader | Kind::Bridge if self.drops => {
                " (dropping)"
            }
            Kind::PartitionMinority | Kind::IsolateLeader | Kind::Bridge => " (holding)",
            _ => "",
        };
        write!(
            f,
            "{:?}{how} {:?} from {:.1}s to {:.1}s",
            self.kind,
            self.targets,
            self.start.as_secs_f64(),
            self.end.as_secs_f64()
        )
    }
}

/// `count` faults, one after another in `[from, to)`, each lasting 30–90 % of its slot (an
/// outage lasts until `to`, overlapping the faults after it).
pub fn plan(rng: &mut SmallRng, count: usize, from: Duration, to: Duration) -> Vec<Fault> {
    if count == 0 {
        return Vec::new();
    }
    let slot = (to - from) / count as u32;
    (0..count)
        .map(|i| {
            let begin = from + slot * i as u32;
            let start = begin + slot.mul_f64(rng.random_range(0.0..0.1));
            let end = start + slot.mul_f64(rng.random_range(0.3..0.9));
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            Fault {
                kind,
                start,
                end: if kind == Kind::Outage { to } else { end },
                targets: Vec::new(),
                severed: Vec::new(),
                drops: rng.random_bool(0.5),
            }
        })
        .collect()
}

/// The cluster the faults act on: the simulation and every host's name.
pub struct Target<'s, 'a> {
    pub sim: &'s mut turmoil::Sim<'a>,
    pub members: &'s [String],
    /// Every host, members and clients.
    pub hosts: &'s [String],
    /// Where membership changes are queued for the admin client.
    pub changes: &'s std::cell::RefCell<std::collections::VecDeque<crate::admin::Change>>,
    /// The name the next new member gets.
    pub spare: String,
}

impl Target<'_, '_> {
    /// Starts `fault`, choosing its targets (`leader` if known, for leader faults). Returns the
    /// name of a member to start, if the fault adds one.
    pub fn start(
        &mut self,
        fault: &mut Fault,
        rng: &mut SmallRng,
        leader: Option<String>,
    ) -> Option<String> {
        if self.members.len() < 2 {
            // Everyone else is out (outages): nothing left to do it to.
            return None;
        }
        let pick =
            |rng: &mut SmallRng| self.members[rng.random_range(0..self.members.len())].clone();
        // The monitor's word may be stale (the leader it names may be out).
        let leader = leader
            .filter(|l| self.members.contains(l))
            .unwrap_or_else(|| pick(rng));
        match fault.kind {
            Kind::PartitionMinority => {
                let mut shuffled = self.members.to_vec();
                shuffled.shuffle(rng);
                // A minority of those up (one of two, when a third is out).
                let size = rng.random_range(1..=((self.members.len() - 1) / 2).max(1));
                fault.targets = shuffled[..size].to_vec();
                fault.severed = self.cut(&fault.targets.clone(), fault.drops);
            }
            Kind::IsolateLeader => {
                fault.targets = vec![leader];
                fault.severed = self.cut(&fault.targets.clone(), fault.drops);
            }
            Kind::Bridge => {
                let mut shuffled = self.members.to_vec();
                shuffled.shuffle(rng);
                let half = shuffled.len() / 2;
                let (left, rest) = shuffled.split_at(half);
                let (bridge, right) = rest.split_first().expect("at least three members");
                for a in left {
                    for b in right {
                        self.sever(a, b, fault.drops);
                        fault.severed.push((a.clone(), b.clone()));
                    }
                }
                fault.targets = vec![bridge.clone()];
            }
            Kind::Loss => self.sim.set_fail_rate(0.002),
            Kind::Delay => self.sim.set_max_message_latency(Duration::from_millis(150)),
            Kind::Crash => {
                let victim = if rng.random_bool(0.5) {
                    leader
                } else {
                    pick(rng)
                };
                self.sim.crash(victim.as_str());
                fault.targets = vec![victim];
            }
            Kind::PauseLeader => {
                for h in self.hosts.iter().filter(|h| **h != leader) {
                    self.sim.hold(leader.as_str(), h.as_str());
                }
                fault.targets = vec![leader];
            }
            Kind::Outage => {
                let followers: Vec<&String> =
                    self.members.iter().filter(|m| **m != leader).collect();
                let victim = match followers.len() {
                    0 => leader,
                    n => followers[rng.random_range(0..n)].clone(),
                };
                self.sim.crash(victim.as_str());
                fault.targets = vec![victim];
            }
            Kind::ReplaceMember => {
                let victim = pick(rng);
                let added = self.spare.clone();
                self.sim.set_max_message_latency(Duration::from_millis(50));
                let mut changes = self.changes.borrow_mut();
                changes.push_back(crate::admin::Change::Add(added.clone()));
                changes.push_back(crate::admin::Change::Remove(victim.clone()));
                fault.targets = vec![added.clone(), victim];
                return Some(added);
            }
        }
        None
    }

    /// Undoes `fault`.
    pub fn end(&mut self, fault: &Fault) {
        let needs_target = matches!(fault.kind, Kind::Crash | Kind::Outage | Kind::PauseLeader);
        if needs_target && fault.targets.is_empty() {
            // It was not done (no member was left to do it to).
            return;
        }
        match fault.kind {
            Kind::PartitionMinority | Kind::IsolateLeader | Kind::Bridge => {
                for (a, b) in &fault.severed {
                    self.sim.repair(a.as_str(), b.as_str());
                    self.sim.release(a.as_str(), b.as_str());
                }
            }
            Kind::Loss => {
                self.sim.set_fail_rate(0.0);
                for (i, a) in self.hosts.iter().enumerate() {
                    for b in &self.hosts[i + 1..] {
                        self.sim.repair(a.as_str(), b.as_str());
                    }
                }
            }
            Kind::Delay | Kind::ReplaceMember => self.sim.set_max_message_latency(NORMAL_LATENCY),
            Kind::Crash | Kind::Outage => self.sim.bounce(fault.targets[0].as_str()),
            Kind::PauseLeader => {
                let paused = &fault.targets[0];
                for h in self.hosts.iter().filter(|h| *h != paused) {
                    self.sim.release(paused.as_str(), h.as_str());
                }
            }
        }
    }

    /// Cuts `group` off from the other members; returns the links cut.
    fn cut(&mut self, group: &[String], drops: bool) -> Vec<(String, String)> {
        let mut cut = Vec::new();
        for a in group {
            for b in self.members.iter().filter(|m| !group.contains(m)) {
                self.sever(a, b, drops);
                cut.push((a.clone(), b.clone()));
            }
        }
        cut
    }

    fn sever(&mut self, a: &str, b: &str, drops: bool) {
        if drops {
            self.sim.partition(a, b);
        } else {
            self.sim.hold(a, b);
        }
    }
}

/// The largest message latency when no fault delays messages.
pub const NORMAL_LATENCY: Duration = Duration::from_millis(2);
