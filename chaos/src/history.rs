//! The recorded history of a run: every client operation with its invocation and completion
//! on one logical clock. The simulation runs on one thread, so the clock's order is the real
//! order in which clients sent requests and saw answers.

use std::fmt;

/// A point on the history's clock.
pub type Time = u64;
/// The completion time of an operation whose outcome is unknown (it timed out or failed in a
/// way that does not say whether it took effect): it may take effect at any time after its
/// invocation, or never.
pub const NEVER: Time = Time::MAX;

/// What a client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// A linearizable get.
    Get,
    /// A put of a value no other operation writes.
    Put(String),
    /// A txn: if the value is `from`, put `to`.
    Cas { from: String, to: String },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Output {
    Get(Option<String>),
    Put,
    /// Whether the compare held (and the put was done).
    Cas(bool),
    /// No answer (a write whose fate is unknown).
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Op {
    pub client: usize,
    /// The member asked.
    pub member: String,
    pub key: String,
    pub call: Time,
    /// [`NEVER`] when the outcome is unknown.
    pub ret: Time,
    pub input: Input,
    pub output: Output,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = if self.ret == NEVER {
            "?".to_string()
        } else {
            self.ret.to_string()
        };
        write!(
            f,
            "[{:>6} .. {:>6}] client {} via {}: {} {:?} -> {:?}",
            self.call, ret, self.client, self.member, self.key, self.input, self.output
        )
    }
}

/// The operations of a run, and the clock.
#[derive(Debug, Default)]
pub struct History {
    clock: Time,
    pub ops: Vec<Op>,
}

impl History {
    /// The next point on the clock.
    pub fn tick(&mut self) -> Time {
        self.clock += 1;
        self.clock
    }
}
