//! The lessor: lease deadlines in memory, beside the lease table in the store. Deadlines are
//! wall-clock decisions, so they live here, never in `store`; expiring a lease means proposing
//! its revocation, which the store applies like any write. Grants and revocations reach the
//! lessor from the apply thread, in apply order. After a restart every lease gets a full TTL
//! again, as etcd refreshes leases when a leader takes over.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// etcd's largest lease TTL (`MaxLeaseTTL`, about 285 years).
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Deadline {
    ttl_secs: i64,
    expires: Instant,
}

pub struct Lessor {
    /// A std mutex: every critical section is a map operation with no await inside.
    leases: Mutex<HashMap<i64, Deadline>>,
    /// Leases shorter than this are granted this TTL (etcd: 1.5 election timeouts, rounded up).
    min_ttl_secs: i64,
}

impl Lessor {
    pub fn new(min_ttl_secs: i64) -> Self {
        Lessor {
            leases: Mutex::new(HashMap::new()),
            min_ttl_secs,
        }
    }

    /// etcd's minimum TTL for a heartbeat and election timeout: ceil(1.5 × election timeout).
    pub fn min_ttl_for(election_timeout: Duration) -> i64 {
        (election_timeout.as_millis() as u64 * 3).div_ceil(2 * 1000) as i64
    }

    /// The TTL a grant of `requested` seconds receives.
    pub fn effective_ttl(&self, requested: i64) -> i64 {
        requested.max(self.min_ttl_secs)
    }

    /// Starts (or restarts) a lease's clock with a full TTL.
    pub fn track(&self, id: i64, ttl_secs: i64, now: Instant) {
        let expires = now + Duration::from_secs(ttl_secs.max(0) as u64);
        self.leases
            .lock()
            .expect("lessor lock")
            .insert(id, Deadline { ttl_secs, expires });
    }

    pub fn forget(&self, id: i64) {
        self.leases.lock().expect("lessor lock").remove(&id);
    }

    /// Renews a lease; returns its TTL, or `None` if it is unknown or already expired. The
    /// clock is read under the lock, so a lease the expiry driver has listed as expired can
    /// never be renewed afterwards.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut leases = self.leases.lock().expect("lessor lock");
        let now = Instant::now();
        let d = leases.get_mut(&id)?;
        if d.expires <= now {
            return None;
        }
        d.expires = now + Duration::from_secs(d.ttl_secs as u64);
        Some(d.ttl_secs)
    }

    /// Whole seconds left before `id` expires (truncated, as etcd reports: the lease expires in
    /// under TTL+1 seconds), with its granted TTL.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let leases = self.leases.lock().expect("lessor lock");
        let d = leases.get(&id)?;
        let secs = d.expires.saturating_duration_since(now).as_secs() as i64;
        Some((secs, d.ttl_secs))
    }

    /// Gives every lease a full TTL from `now`: a new leader does this, as etcd's does, since
    /// it cannot know how long ago the old leader last renewed each lease.
    pub fn refresh_all(&self, now: Instant) {
        let mut leases = self.leases.lock().expect("lessor lock");
        for d in leases.values_mut() {
            d.expires = now + Duration::from_secs(d.ttl_secs as u64);
        }
    }

    /// Forgets every lease (the store was replaced by a snapshot; the caller re-tracks).
    pub fn clear(&self) {
        self.leases.lock().expect("lessor lock").clear();
    }

    /// Leases whose deadline has passed, oldest first; at most `max` of them.
    pub fn expired(&self, max: usize) -> Vec<i64> {
        let leases = self.leases.lock().expect("lessor lock");
        let now = Instant::now();
        let mut out: Vec<(Instant, i64)> = leases
            .iter()
            .filter(|(_, d)| d.expires <= now)
            .map(|(&id, d)| (d.expires, id))
            .collect();
        out.sort_unstable();
        out.truncate(max);
        out.into_iter().map(|(_, id)| id).collect()
    }

    /// Every tracked lease, in ID order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .leases
            .lock()
            .expect("lessor lock")
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn count(&self) -> usize {
        self.leases.lock().expect("lessor lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_matches_etcd_defaults() {
        assert_eq!(Lessor::min_ttl_for(Duration::from_millis(1000)), 2);
        assert_eq!(Lessor::min_ttl_for(Duration::from_millis(3000)), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_unless_kept_alive() {
        let lessor = Lessor::new(2);
        let t0 = Instant::now();
        lessor.track(1, 5, t0);
        lessor.track(2, 10, t0);
        assert_eq!(lessor.remaining(1, t0), Some((5, 5)));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(lessor.remaining(1, Instant::now()), Some((4, 5)));
        tokio::time::advance(Duration::from_millis(3990)).await;
        assert_eq!(lessor.keep_alive(1), Some(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(lessor.expired(10).is_empty());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(lessor.expired(10), vec![1, 2]);
        assert_eq!(lessor.keep_alive(2), None);
        assert_eq!(lessor.remaining(9, Instant::now()), None);
    }
}
