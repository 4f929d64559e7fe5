//! The watch hub: after each applied batch, its events are published once to a bounded
//! broadcast channel that every watch stream reads. Publishing never blocks the writer; a
//! stream that falls more than `HUB_BATCHES_MAX` batches behind is told it lagged and catches
//! up from the store's history instead (etcd's unsynced watchers).

use std::sync::Arc;

use etcd_proto::mvccpb::Event;
use tokio::sync::broadcast;

/// Batches kept for slow readers before they must catch up from storage.
pub const HUB_BATCHES_MAX: usize = 1024;

/// The events of one applied batch: every revision in `(from_rev - 1, to_rev]`.
#[derive(Debug)]
pub struct EventBatch {
    /// The newest revision the batch covers (events may end earlier if revisions had none).
    pub to_rev: i64,
    /// Events in revision order, with `prev_kv` filled where the key existed.
    pub events: Vec<Event>,
    /// Set when the store jumped (a snapshot was installed): watchers catch up from history.
    pub resync: bool,
}

#[derive(Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<EventBatch>>,
}

impl WatchHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(HUB_BATCHES_MAX);
        WatchHub { tx }
    }

    /// Publishes a batch; never blocks. With no subscribers the batch is dropped.
    pub fn publish(&self, batch: EventBatch) {
        let _ = self.tx.send(Arc::new(batch));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.tx.subscribe()
    }
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}
