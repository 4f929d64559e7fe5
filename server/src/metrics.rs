//! placeholder
pub struct Metrics { pub proposals_failed: prometheus::IntCounter, pub proposals_committed: prometheus::IntCounter, pub fsync_seconds: prometheus::Histogram }
