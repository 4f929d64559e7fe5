//! The watch hub: after each applied batch, its events are published once to a bounded
//! broadcast channel that every watch stream reads. Publishing never blocks the writer; a
//! stream that falls more than `HUB_BATCHES_MAX` batches behind is told it lagged and catches
//! up from the store's history instead (etcd's unsynced watchers).

use std::sync::Arc;

use etcd_proto::mvccpb::Event;
use store::Store;
use tokio::sync::{broadcast, OnceCell};

/// Batches kept for slow readers before they must catch up from storage.
pub const HUB_BATCHES_MAX: usize = 1024;

/// The events of one applied batch: every revision in `(from_rev - 1, to_rev]`.
#[derive(Debug)]
pub struct EventBatch {
    /// The newest revision the batch covers (events may end earlier if revisions had none).
    pub to_rev: i64,
    /// Events in revision order, without `prev_kv` (the write path does not read it), or with
    /// it for a batch of history (watchers that did not ask for it are sent none either way).
    pub events: Vec<Event>,
    /// Set when the store jumped (a snapshot was installed): watchers catch up from history.
    pub resync: bool,
    /// The events with `prev_kv` filled, read once, when a watcher first asks for them.
    with_prev_kv: OnceCell<Vec<Event>>,
}

impl EventBatch {
    pub fn new(to_rev: i64, events: Vec<Event>, resync: bool) -> Self {
        EventBatch {
            to_rev,
            events,
            resync,
            with_prev_kv: OnceCell::new(),
        }
    }

    /// A batch of history whose events carry their `prev_kv`s already (`Store::history`).
    pub fn with_prev_kv_read(to_rev: i64, events: Vec<Event>) -> Self {
        EventBatch {
            to_rev,
            with_prev_kv: OnceCell::new_with(Some(events.clone())),
            events,
            resync: false,
        }
    }

    /// The events with their `prev_kv`s (`Store::prev_kvs`), read from `store` by the first
    /// caller and shared with the others, which wait without holding a thread. A batch of a
    /// few events is read here (a few microseconds), a larger one on the blocking pool. A
    /// failed read is not kept: the caller closes its stream, as after a failed catch-up.
    pub async fn with_prev_kv(&self, store: &Store) -> Result<&[Event], String> {
        let events = self
            .with_prev_kv
            .get_or_try_init(|| async {
                let prevs = if self.events.len() <= PREV_KV_INLINE_MAX {
                    store.prev_kvs(&self.events)
                } else {
                    let (store, events) = (store.clone(), self.events.clone());
                    raftlog::determinism::blocking(move || store.prev_kvs(&events))
                        .await
                        .map_err(|e| e.to_string())?
                }
                .map_err(|e| e.to_string())?;
                let with_prev: Vec<Event> = self
                    .events
                    .iter()
                    .zip(prevs)
                    .map(|(e, prev_kv)| Event {
                        prev_kv,
                        ..e.clone()
                    })
                    .collect();
                Ok::<_, String>(with_prev)
            })
            .await?;
        Ok(events)
    }
}

/// Events of a batch whose `prev_kv`s are read on the stream's own thread.
const PREV_KV_INLINE_MAX: usize = 8;

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
