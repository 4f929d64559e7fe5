//! Watch workloads. `watch`: many watchers on a few keys, puts to those keys as fast as the
//! clients go, and events per second delivered to all watchers. `watch-latency`: puts at a
//! fixed rate and the time from sending a put to each watcher receiving its event. Every put
//! value starts with the send time (microseconds since the run began), so a watcher measures
//! each event's latency without shared state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::driver::{closed_loop, connect, Meter, Plan};
use crate::report::Recorder;
use crate::report::Report;

/// How the watchers are laid out.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// gRPC watch streams, spread over the connections.
    pub streams: usize,
    /// Watchers on each stream.
    pub watchers_per_stream: usize,
    /// Distinct keys watched; watcher `w` watches key `w % keys`, put `i` writes key `i % keys`.
    pub keys: usize,
    pub val_size: usize,
    pub prev_kv: bool,
}

/// What the generator reads of a `WatchResponse`: prost skips every other field without
/// allocating, so decoding a response costs the generator less than decoding all of it (the
/// header, and each event's key and revisions, would go unread). Field numbers are etcd's.
#[derive(Clone, PartialEq, prost::Message)]
struct WatchSeen {
    #[prost(bool, tag = "3")]
    created: bool,
    #[prost(message, repeated, tag = "11")]
    events: Vec<EventSeen>,
}

/// An `Event`'s `kv`.
#[derive(Clone, PartialEq, prost::Message)]
struct EventSeen {
    #[prost(message, optional, tag = "2")]
    kv: Option<ValueSeen>,
}

/// A `KeyValue`'s `value`.
#[derive(Clone, PartialEq, prost::Message)]
struct ValueSeen {
    #[prost(bytes = "bytes", tag = "5")]
    value: bytes::Bytes,
}

/// Opens a watch stream whose responses decode as [`WatchSeen`].
async fn open_stream(
    channel: tonic::transport::Channel,
    requests: ReceiverStream<WatchRequest>,
) -> anyhow::Result<tonic::Streaming<WatchSeen>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, WatchSeen>::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let resp = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await?;
    Ok(resp.into_inner())
}

fn watched_key(n: usize) -> Vec<u8> {
    format!("/bench/watch/{n:06}").into_bytes()
}

/// Events a watch stream counts before it publishes them to the run's shared counters.
const PUBLISH_EVERY: u64 = 1024;

/// Receives what the watchers on one stream were sent: the event count and latencies.
struct StreamResult {
    events: u64,
    rec: Recorder,
}

/// Opens the watch streams and waits until every watcher is created, so no event is missed.
async fn start_watchers(
    plan: &Plan,
    spec: &WatchSpec,
    origin: Instant,
    received: Arc<AtomicU64>,
    last_event_us: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<StreamResult>>> {
    let mut handles = Vec::new();
    let mut channels = Vec::new();
    for ep in plan.endpoints.iter().cycle().take(plan.conns.max(1)) {
        channels.push(connect(ep).await?);
    }
    for s in 0..spec.streams {
        // Queue the create requests before opening the stream: the server sends its response
        // headers only with its first message, which the tonic call waits for.
        let (tx, rx) = mpsc::channel(spec.watchers_per_stream + 1);
        for w in 0..spec.watchers_per_stream {
            let n = (s * spec.watchers_per_stream + w) % spec.keys.max(1);
            let create = WatchCreateRequest {
                key: watched_key(n),
                prev_kv: spec.prev_kv,
                ..Default::default()
            };
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await?;
        }
        let mut inbound = open_stream(
            channels[s % channels.len()].clone(),
            ReceiverStream::new(rx),
        )
        .await?;
        let mut created = 0;
        while created < spec.watchers_per_stream {
            let resp = inbound
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("watch stream closed"))??;
            if resp.created {
                created += 1;
            }
        }
        let (received, last_event_us, mut stop) =
            (received.clone(), last_event_us.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut out = StreamResult {
                events: 0,
                rec: Recorder::default(),
            };
            // The counters every stream shares are updated once per burst of responses, not
            // per response (ten streams bumping one cache line), and at least every
            // `PUBLISH_EVERY` events, so a stream that never runs dry still shows progress. It
            // yields as often, so a busy stream does not hold its thread.
            let (mut unpublished, mut newest_us) = (0u64, 0u64);
            loop {
                if unpublished >= PUBLISH_EVERY {
                    last_event_us.fetch_max(newest_us, Ordering::Relaxed);
                    received.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                    tokio::task::yield_now().await;
                }
                let ready = match stop.has_changed() {
                    Ok(false) => inbound.next().now_or_never(),
                    _ => break,
                };
                let next = match ready {
                    Some(msg) => msg,
                    None => {
                        if unpublished > 0 {
                            last_event_us.fetch_max(newest_us, Ordering::Relaxed);
                            received.fetch_add(unpublished, Ordering::Relaxed);
                            unpublished = 0;
                        }
                        tokio::select! {
                            msg = inbound.next() => msg,
                            _ = stop.changed() => break,
                        }
                    }
                };
                let resp = match next {
                    Some(Ok(resp)) => resp,
                    _ => break,
                };
                let now = origin.elapsed().as_micros() as u64;
                for ev in &resp.events {
                    if let Some(sent) = ev.kv.as_ref().and_then(|kv| sent_at(&kv.value)) {
                        out.rec
                            .record(Duration::from_micros(now.saturating_sub(sent)));
                    }
                    out.events += 1;
                }
                if !resp.events.is_empty() {
                    newest_us = now;
                    unpublished += resp.events.len() as u64;
                }
            }
            last_event_us.fetch_max(newest_us, Ordering::Relaxed);
            received.fetch_add(unpublished, Ordering::Relaxed);
            out
        }));
    }
    Ok(handles)
}

fn stamped_value(origin: Instant, size: usize) -> Vec<u8> {
    let mut v = format!("{:020}", origin.elapsed().as_micros()).into_bytes();
    v.resize(size.max(20), b'v');
    v
}

fn sent_at(value: &[u8]) -> Option<u64> {
    // Parsed by hand: `str::parse` after `from_utf8` was a twentieth of the generator's CPU.
    value.get(..20)?.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Runs the puts, then waits for the watchers to receive every event of the puts that
/// succeeded (giving up once `stall` passes with nothing new), and reports delivered events
/// over the time from the first put to the last event.
async fn run(name: &str, plan: &Plan, spec: &WatchSpec, stall: Duration) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.streams > 0 && spec.watchers_per_stream > 0,
        "no watchers asked for"
    );
    let origin = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let last_event_us = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watchers = start_watchers(
        plan,
        spec,
        origin,
        received.clone(),
        last_event_us.clone(),
        stop_rx,
    )
    .await?;
    let total_watchers = spec.streams * spec.watchers_per_stream;
    let keys = spec.keys.max(1);
    let put_ok: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let channels = plan.connect().await?;
    let meter = Meter::start(&plan.target_pids);
    let puts = closed_loop(name, plan, |c| {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let (val_size, put_ok) = (spec.val_size, put_ok.clone());
        move |i| {
            let k = i as usize % keys;
            let req = PutRequest {
                key: watched_key(k).into(),
                value: stamped_value(origin, val_size).into(),
                ..Default::default()
            };
            let (mut kv, put_ok) = (kv.clone(), put_ok.clone());
            async move {
                kv.put(req).await?;
                put_ok[k].fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    })
    .await;
    // Watcher w watches key w % keys and gets one event per successful put to it.
    let want: u64 = (0..total_watchers)
        .map(|w| put_ok[w % keys].load(Ordering::Relaxed))
        .sum();
    let (mut seen, mut progress_at) = (0, Instant::now());
    loop {
        let now = received.load(Ordering::Relaxed);
        if now >= want || progress_at.elapsed() > stall {
            break;
        }
        if now != seen {
            (seen, progress_at) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(true);
    let mut rec = Recorder::default();
    let mut events = 0;
    for h in watchers {
        let r = h.await?;
        events += r.events;
        rec.merge(&r.rec);
    }
    let end = match last_event_us.load(Ordering::Relaxed) {
        0 => Instant::now(),
        last => origin + Duration::from_micros(last),
    };
    let mut report = meter.finish_at(end, name, plan, &rec);
    report
        .extra
        .insert("watchers".into(), total_watchers as f64);
    report.extra.insert("puts".into(), puts.ops as f64);
    report.extra.insert("put_errors".into(), puts.errors as f64);
    report.extra.insert("events_expected".into(), want as f64);
    report.extra.insert("events_received".into(), events as f64);
    report.errors = puts.errors + want.saturating_sub(events);
    report.error_kinds = puts.error_kinds.clone();
    if events < want {
        report
            .error_kinds
            .insert("events not delivered".into(), want - events);
    }
    Ok(report)
}

/// `watch`: events per second delivered (ops are events; latency is put-to-event).
pub async fn watch(plan: &Plan, spec: &WatchSpec) -> anyhow::Result<Report> {
    run("watch", plan, spec, Duration::from_secs(5)).await
}

/// `watch-latency`: puts at `plan.rate`, latency from put to each event.
pub async fn watch_latency(plan: &Plan, spec: &WatchSpec) -> anyhow::Result<Report> {
    run("watch-latency", plan, spec, Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time() {
        let origin = Instant::now() - Duration::from_millis(5);
        let v = stamped_value(origin, 64);
        assert_eq!(v.len(), 64);
        let t = sent_at(&v).unwrap();
        assert!(t >= 5_000, "{t}");
        assert_eq!(sent_at(b"short"), None);
        assert_eq!(sent_at(b"0000000000000000001x"), None);
        assert_eq!(sent_at(b"99999999999999999999"), None, "overflow");
        assert_eq!(sent_at(b"00000000000000000042 and more"), Some(42));
    }
}
