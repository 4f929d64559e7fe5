//! What a simulation must control for a member to behave as a function of its inputs alone.
//!
//! The chaos simulation replays a run exactly from its seed only if nothing in a member draws
//! on the real machine. Three things in a member do:
//! - random draws: openraft's election timeouts, lease IDs;
//! - work handed to blocking threads (reads, compaction, snapshots), which finishes whenever
//!   the OS schedules the thread, so its result reaches the member at a varying point;
//! - the wall clock, which etcd's request IDs and run-time member IDs are made from.
//!
//! A thread that runs simulated members calls [`enter`] first. From then on, on that thread,
//! random draws come from the simulation's seed, blocking work runs inline and the wall clock
//! is the simulation's. Every other thread — the real server's — is unaffected.
//!
//! Two more switches key off [`simulated`]: the server stamps responses' `date` header from
//! this clock (`server::date`), and turns RocksDB's background compactions off, since they
//! change the files a snapshot ships at times the OS decides. The rest of a simulated member
//! is deterministic already — turmoil's network and paused clock, and tokio runtimes whose
//! `select!` order turmoil seeds. A client channel built in a simulation forgets a stream it
//! reset at once (`Transport::channel`); h2 would remember it for a second of real time. Two
//! real-clock readings remain inside the HTTP/2 libraries on the server side, where hyper's
//! server offers no setting: a stream the server reset is remembered for a real second, and
//! tonic's own deadline-exceeded responses carry hyper's `date` header. Neither has changed a
//! run in a soak so far.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rand08 as rand;

struct Simulation {
    rng: StdRng,
    /// Simulated time since the simulation started.
    clock: fn() -> Duration,
}

thread_local! {
    static SIMULATION: RefCell<Option<Simulation>> = const { RefCell::new(None) };
}

/// The wall clock a simulation shows its members: a fixed date plus simulated time.
const SIMULATED_EPOCH: Duration = Duration::from_secs(1_700_000_000);

/// Makes this thread a simulation's: random draws from `seed`, blocking work inline, and
/// `clock` (simulated time since the start) as the wall clock — until the returned guard is
/// dropped (also when a panic unwinds past it).
#[must_use = "the simulation ends when the guard is dropped"]
pub fn enter(seed: u64, clock: fn() -> Duration) -> Entered {
    SIMULATION.with(|s| {
        *s.borrow_mut() = Some(Simulation {
            rng: StdRng::seed_from_u64(seed),
            clock,
        })
    });
    Entered(std::marker::PhantomData)
}

/// Ends, when dropped, what [`enter`] began on this thread (it cannot leave the thread).
pub struct Entered(std::marker::PhantomData<*const ()>);

impl Drop for Entered {
    fn drop(&mut self) {
        SIMULATION.with(|s| *s.borrow_mut() = None);
    }
}

/// Whether this thread runs a simulation.
pub fn simulated() -> bool {
    SIMULATION.with(|s| s.borrow().is_some())
}

/// The time of day: the system's, or the simulation's.
pub fn wall_clock() -> SystemTime {
    match SIMULATION.with(|s| s.borrow().as_ref().map(|s| (s.clock)())) {
        Some(elapsed) => UNIX_EPOCH + SIMULATED_EPOCH + elapsed,
        None => SystemTime::now(),
    }
}

/// A random number: from the OS-seeded generator, or the simulation's.
pub fn random_u64() -> u64 {
    Runtime::thread_rng().next_u64()
}

/// Blocking work that did not finish: it panicked, or the runtime shut down under it.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct BlockingError(String);

/// Runs blocking work `f` on tokio's blocking threads, or inline in a simulation; either way a
/// panic in `f` is returned as an error, not propagated.
pub async fn blocking<F, R>(f: F) -> Result<R, BlockingError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if simulated() {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            BlockingError(format!("panicked: {message}"))
        });
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

/// Random numbers for openraft: the thread's OS-seeded generator, or the simulation's.
pub enum Rng {
    Os(rand::rngs::ThreadRng),
    Simulated,
}

impl Rng {
    fn with<T>(&mut self, draw: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        match self {
            Rng::Os(rng) => draw(rng),
            Rng::Simulated => SIMULATION.with(|s| {
                let mut s = s.borrow_mut();
                // `thread_rng` chose this variant because the thread was simulating; a
                // generator kept past `leave` draws from the OS instead.
                match s.as_mut() {
                    Some(sim) => draw(&mut sim.rng),
                    None => draw(&mut rand::thread_rng()),
                }
            }),
        }
    }
}

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.with(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        self.with(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.with(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.with(|r| r.try_fill_bytes(dest))
    }
}

/// openraft's runtime for Cairn: tokio, with [`Rng`] for its random draws.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Runtime;

type Tokio = TokioRuntime;

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = Rng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        if simulated() {
            Rng::Simulated
        } else {
            Rng::Os(rand::thread_rng())
        }
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five_seconds() -> Duration {
        Duration::from_secs(5)
    }

    fn draws() -> Vec<u64> {
        let mut rng = Runtime::thread_rng();
        (0..4).map(|_| rng.next_u64()).collect()
    }

    #[test]
    fn a_simulation_draws_from_its_seed_and_shows_its_clock() {
        let sim = enter(7, five_seconds);
        let first = draws();
        assert_eq!(
            wall_clock(),
            UNIX_EPOCH + SIMULATED_EPOCH + Duration::from_secs(5)
        );
        drop(sim);
        let sim = enter(7, five_seconds);
        assert_eq!(draws(), first, "the same seed draws the same numbers");
        drop(sim);
        let sim = enter(8, five_seconds);
        assert_ne!(draws(), first, "another seed draws others");
        drop(sim);
        assert!(!simulated());
        let skew = SystemTime::now().duration_since(wall_clock());
        assert!(
            skew.unwrap_or_default() < Duration::from_secs(1),
            "the system's clock again"
        );
    }

    fn out_of_space() -> u8 {
        panic!("no space")
    }

    #[test]
    fn blocking_work_runs_inline_only_in_a_simulation() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let on_pool = rt.block_on(blocking(move || std::thread::current().id() != here));
        assert!(on_pool.unwrap(), "outside a simulation: a blocking thread");
        let sim = enter(1, five_seconds);
        let inline = rt.block_on(blocking(move || std::thread::current().id() == here));
        let panicked = rt.block_on(blocking(out_of_space));
        drop(sim);
        assert!(inline.unwrap(), "in a simulation: this thread");
        let e = panicked.expect_err("a panic is an error");
        assert!(e.to_string().contains("no space"), "{e}");
        let threaded = rt.block_on(blocking(out_of_space));
        assert!(threaded.is_err(), "outside a simulation too");
    }
}
