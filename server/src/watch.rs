//! The Watch service. One task per stream owns that stream's watchers. Each watcher knows the
//! next revision it must deliver (`next_rev`); events reach it from the hub's live batches, or,
//! when it starts in the past or its stream lagged behind the hub, from the store's history in
//! bounded chunks. Because every delivery moves `next_rev` forward and skips older events, a
//! watcher sees each revision exactly once and in order, whichever path carried it.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use etcd_proto::mvccpb::{event::EventType, Event};
use futures::StreamExt;
use prost::Message;
use store::mvcc::RangeEnd;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::stream::HeadersWithFirst;
use crate::watch_hub::EventBatch;
use crate::watch_wire::{encode_header, watch_id_len, BatchEncodings, EncodedEvents, WatchOut};

/// Responses queued per stream before the stream task waits for the client.
pub const WATCH_RESPONSES_QUEUED_MAX: usize = 128;
/// Events read from history per chunk when a watcher catches up.
pub const CATCH_UP_EVENTS_MAX: usize = 1000;
/// etcd's watch ID for responses that belong to no watcher (progress for the whole stream).
pub const INVALID_WATCH_ID: i64 = -1;

pub struct WatchService {
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
}

impl WatchService {
    pub fn new(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> Self {
        WatchService { node, shutdown }
    }

    /// Opens a watch stream: its own task serves it (see the module comment).
    pub async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<HeadersWithFirst<WatchOut>>, Status> {
        self.node.reject_learner()?;
        let input = request.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_RESPONSES_QUEUED_MAX);
        // Subscribe before anything is read, so no batch published from now on is missed.
        let hub = self.node.hub.subscribe();
        let stream = WatchStream {
            node: self.node.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(input, hub, self.shutdown.clone()));
        Ok(Response::new(crate::stream::headers_with_first(rx).await))
    }
}

struct Watcher {
    key: Vec<u8>,
    end: RangeEnd,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The oldest revision not yet delivered.
    next_rev: i64,
    /// Whether events were sent since the last periodic progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let kv = e.kv.as_ref().expect("events carry a kv");
        if kv.mod_revision < self.next_rev || !self.end.contains(&self.key, &kv.key) {
            return false;
        }
        match EventType::try_from(e.r#type) {
            Ok(EventType::Put) => !self.no_put,
            Ok(EventType::Delete) => !self.no_delete,
            Err(_) => false,
        }
    }

    /// The event as this watcher receives it (copying `prev_kv` only if it asked for it).
    fn shape(&self, e: &Event) -> Event {
        Event {
            r#type: e.r#type,
            kv: e.kv.clone(),
            prev_kv: if self.prev_kv {
                e.prev_kv.clone()
            } else {
                None
            },
        }
    }
}

/// A response to watcher `watch_id` (or the stream) with `header`.
fn with_header(watch_id: i64, header: ResponseHeader) -> WatchResponse {
    WatchResponse {
        header: Some(header),
        watch_id,
        ..Default::default()
    }
}

/// The client went away; the stream task ends.
struct Closed;

struct WatchStream {
    node: Arc<Node>,
    tx: mpsc::Sender<Result<WatchOut, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl WatchStream {
    /// Runs until the client closes its side, the client goes away, or the server shuts down.
    async fn run(
        mut self,
        mut input: Streaming<WatchRequest>,
        mut hub: broadcast::Receiver<Arc<EventBatch>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.node.metrics.watch_streams.inc();
        let mut ticker = tokio::time::interval(
            self.node
                .config
                .progress_notify_interval
                .max(std::time::Duration::from_millis(100)),
        );
        ticker.tick().await;
        loop {
            let step = tokio::select! {
                msg = input.next() => match msg {
                    Some(Ok(req)) => self.handle(req, &mut hub).await,
                    _ => Err(Closed),
                },
                batch = hub.recv() => match batch {
                    Ok(batch) => self.deliver(&batch).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "watch stream lagged; catching up from history");
                        self.catch_up_all().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Closed),
                },
                _ = ticker.tick() => self.progress_tick().await,
                _ = shutdown.changed() => Err(Closed),
            };
            if step.is_err() {
                break;
            }
        }
        self.node.metrics.watchers.sub(self.watchers.len() as i64);
        self.node.metrics.watch_streams.dec();
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.send_out(WatchOut::Message(resp)).await
    }

    async fn send_out(&self, out: WatchOut) -> Result<(), Closed> {
        self.tx.send(Ok(out)).await.map_err(|_| Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        with_header(watch_id, self.node.header(revision))
    }

    async fn handle(
        &mut self,
        req: WatchRequest,
        hub: &mut broadcast::Receiver<Arc<EventBatch>>,
    ) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.node.metrics.watchers.dec();
                    let mut resp = self.response(c.watch_id, self.node.store.current_revision());
                    resp.canceled = true;
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Deliver what the hub already holds, then report the newest revision every
                // watcher on this stream has been sent, never one it has not.
                loop {
                    match hub.try_recv() {
                        Ok(batch) => self.deliver(&batch).await?,
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            self.catch_up_all().await?
                        }
                        Err(_) => break,
                    }
                }
                let rev = self.synced_revision();
                self.send(self.response(INVALID_WATCH_ID, rev)).await
            }
            None => Ok(()),
        }
    }

    /// The newest revision all watchers have been sent (the current one with no watchers).
    fn synced_revision(&self) -> i64 {
        let current = self.node.store.current_revision();
        self.watchers
            .values()
            .map(|w| w.next_rev - 1)
            .min()
            .unwrap_or(current)
            .min(current)
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        let current = self.node.store.current_revision();
        let end = RangeEnd::from_request(&c.range_end);
        let refuse = |reason: &str| {
            let mut resp = self.response(INVALID_WATCH_ID, current);
            resp.created = true;
            resp.canceled = true;
            resp.cancel_reason = reason.to_string();
            resp
        };
        if matches!(&end, RangeEnd::Before(e) if c.key >= *e) {
            return self.send(refuse("mvcc: watcher range is empty")).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .send(refuse(
                        "mvcc: duplicate watch ID provided on the WatchStream",
                    ))
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let next_rev = if c.start_revision == 0 {
            current + 1
        } else {
            c.start_revision.max(1)
        };
        let watcher = Watcher {
            key: c.key,
            end,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev,
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        self.node.metrics.watchers.inc();
        let mut resp = self.response(id, current);
        resp.created = true;
        self.send(resp).await?;
        self.catch_up(id).await
    }

    /// Catches up every watcher of the stream (it lagged behind the hub, or the store was
    /// replaced). History is read once for all of them, in bounded chunks, and each chunk is
    /// delivered as a hub batch is: a stream of many watchers does not read it once each.
    /// If the oldest position was compacted, each watcher catches up on its own (`catch_up`
    /// cancels those whose history is gone).
    async fn catch_up_all(&mut self) -> Result<(), Closed> {
        loop {
            let current = self.node.store.current_revision();
            let behind: Vec<(Vec<u8>, RangeEnd)> = self
                .watchers
                .values()
                .filter(|w| w.next_rev <= current)
                .map(|w| (w.key.clone(), w.end.clone()))
                .collect();
            let Some(from) = self.watchers.values().map(|w| w.next_rev).min() else {
                return Ok(());
            };
            if from > current {
                return Ok(());
            }
            let history = match self.read_history(from, current, behind).await? {
                Ok(h) => h,
                Err(_compacted) => {
                    let ids: Vec<i64> = self.watchers.keys().copied().collect();
                    for id in ids {
                        self.catch_up(id).await?;
                    }
                    return Ok(());
                }
            };
            let batch = EventBatch::with_prev_kv_read(history.next - 1, history.events);
            self.deliver_events(&batch).await?;
        }
    }

    /// Reads a chunk of history in `[from, current]` for the keys in `ranges`, off the async
    /// threads: `Ok(Err(compacted))` if `from` was compacted. A failed read closes the stream.
    async fn read_history(
        &self,
        from: i64,
        current: i64,
        ranges: Vec<(Vec<u8>, RangeEnd)>,
    ) -> Result<Result<store::History, i64>, Closed> {
        let store = self.node.store.clone();
        let read = raftlog::determinism::blocking(move || {
            store.history(from, current, CATCH_UP_EVENTS_MAX, |k| {
                ranges.iter().any(|(key, end)| end.contains(key, k))
            })
        })
        .await;
        match read {
            Ok(Ok(h)) => Ok(Ok(h)),
            Ok(Err(store::Error::Compacted { compacted, .. })) => Ok(Err(compacted)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading watch history failed");
                Err(Closed)
            }
            Err(e) => {
                tracing::error!(error = %e, "watch history task failed");
                Err(Closed)
            }
        }
    }

    /// Sends a watcher everything from its `next_rev` up to the current revision, reading
    /// history in bounded chunks; cancels it if that history was compacted.
    async fn catch_up(&mut self, id: i64) -> Result<(), Closed> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let current = self.node.store.current_revision();
            if w.next_rev > current {
                return Ok(());
            }
            let (from, range) = (w.next_rev, (w.key.clone(), w.end.clone()));
            let history = match self.read_history(from, current, vec![range]).await? {
                Ok(h) => h,
                Err(compacted) => {
                    self.watchers.remove(&id);
                    self.node.metrics.watchers.dec();
                    // As etcd, whose compaction notice carries a header at revision 0.
                    let mut resp = self.response(id, 0);
                    resp.compact_revision = compacted;
                    resp.canceled = true;
                    return self.send(resp).await;
                }
            };
            let w = self.watchers.get(&id).expect("present");
            let events: Vec<Event> = history
                .events
                .iter()
                .filter(|e| w.wants(e))
                .map(|e| w.shape(e))
                .collect();
            let to_rev = history.next - 1;
            self.send_events(id, events, self.node.header(to_rev))
                .await?;
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = history.next;
            }
        }
    }

    async fn deliver(&mut self, batch: &EventBatch) -> Result<(), Closed> {
        if batch.resync {
            // The store was replaced by a snapshot: what follows each watcher's position is in
            // the store's history, not in the hub.
            return self.catch_up_all().await;
        }
        self.deliver_events(batch).await
    }

    /// Sends each watcher the batch's events it wants, and moves it past the batch.
    async fn deliver_events(&mut self, batch: &EventBatch) -> Result<(), Closed> {
        // The batch's header and each distinct selection of its events are encoded once for
        // the whole stream (`watch_wire`); a watcher's response shares those bytes.
        let header = self.node.header(batch.to_rev);
        let header_bytes = encode_header(&header);
        let mut plain = BatchEncodings::new(&batch.events);
        // Only if a watcher wants some of the batch's events with prev_kv are the events'
        // previous versions read.
        let wants_prev = self.watchers.values().any(|w| {
            w.prev_kv && batch.to_rev >= w.next_rev && batch.events.iter().any(|e| w.wants(e))
        });
        let mut with_prev = if wants_prev {
            match batch.with_prev_kv(&self.node.store).await {
                Ok(events) => Some(BatchEncodings::new(events)),
                Err(e) => {
                    tracing::error!(error = %e, "reading the events' prev_kv failed");
                    return Err(Closed);
                }
            }
        } else {
            None
        };
        let mut wanted: Vec<u32> = Vec::new();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let w = self.watchers.get(&id).expect("present");
            if batch.to_rev < w.next_rev {
                continue;
            }
            wanted.clear();
            wanted.extend(
                (0..batch.events.len() as u32).filter(|&i| w.wants(&batch.events[i as usize])),
            );
            let (fragment, prev_kv) = (w.fragment, w.prev_kv);
            if !wanted.is_empty() {
                let encodings = if prev_kv {
                    with_prev
                        .as_mut()
                        .expect("read above: this watcher wants some events")
                } else {
                    &mut plain
                };
                // Measured before anything is encoded: a response that splits is never whole.
                let splits = self.splits(fragment, wanted.len(), || {
                    header_bytes.len()
                        + watch_id_len(id)
                        + encodings.selection_len(&wanted, prev_kv)
                });
                if splits {
                    let w = self.watchers.get(&id).expect("present");
                    let all = encodings.events();
                    let events = wanted.iter().map(|&i| w.shape(&all[i as usize])).collect();
                    self.send_events(id, events, header).await?;
                } else {
                    let out = EncodedEvents {
                        header: header_bytes.clone(),
                        watch_id: id,
                        events: encodings.select(&wanted, prev_kv),
                    };
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.sent_since_tick = true;
                    }
                    self.send_out(WatchOut::Events(out)).await?;
                }
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = batch.to_rev + 1;
            }
        }
        Ok(())
    }

    /// etcd's rule for a watcher that asked for fragments: a response of more than one event
    /// whose encoding (`len`) reaches `--max-request-bytes` plus gRPC's 512 KiB allowance is
    /// split.
    fn splits(&self, fragment: bool, events: usize, len: impl FnOnce() -> usize) -> bool {
        fragment && events > 1 && len() >= self.fragment_limit()
    }

    /// The size from which a response to a watcher that asked for fragments is split: etcd's
    /// `--max-request-bytes` plus gRPC's allowance for framing.
    fn fragment_limit(&self) -> usize {
        self.node.config.max_request_bytes + crate::server::GRPC_OVERHEAD_BYTES
    }

    /// Sends events for one watcher, split into fragments if it asked for them and the
    /// response would exceed `--max-request-bytes` plus 512 KiB (etcd's threshold).
    async fn send_events(
        &mut self,
        id: i64,
        events: Vec<Event>,
        header: ResponseHeader,
    ) -> Result<(), Closed> {
        if events.is_empty() {
            return Ok(());
        }
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        w.sent_since_tick = true;
        let fragment = w.fragment;
        let mut resp = with_header(id, header);
        resp.events = events;
        if !self.splits(fragment, resp.events.len(), || resp.encoded_len()) {
            return self.send(resp).await;
        }
        let limit = self.fragment_limit();
        // etcd's rule: fill a fragment until one more event would reach the limit (a fragment
        // always holds at least one event); every fragment but the last is marked.
        let all = std::mem::take(&mut resp.events);
        let mut part = with_header(id, header);
        part.fragment = true;
        for e in all {
            part.events.push(e);
            if part.events.len() > 1 && part.encoded_len() >= limit {
                let carried = part.events.pop().expect("just pushed");
                self.send(std::mem::replace(&mut part, with_header(id, header)))
                    .await?;
                part.fragment = true;
                part.events.push(carried);
            }
        }
        part.fragment = false;
        self.send(part).await
    }

    /// Sends a progress notification to each progress-notify watcher that got no events since
    /// the last tick, as etcd does.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let current = self.node.store.current_revision();
        let mut due = Vec::new();
        for (&id, w) in self.watchers.iter_mut() {
            if w.progress_notify && !w.sent_since_tick {
                due.push((id, (w.next_rev - 1).min(current)));
            }
            w.sent_since_tick = false;
        }
        for (id, rev) in due {
            self.send(self.response(id, rev)).await?;
        }
        Ok(())
    }
}
