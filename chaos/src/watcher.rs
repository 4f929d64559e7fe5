//! Simulated watchers. Each watches the whole keyspace with `prev_kv` from revision 1, through
//! a random member, for a random while; then (or when its stream breaks) it resumes from the
//! revision after the last event it got, through another member. It asks for progress every
//! 300 ms; canceled for compaction, it goes on from the compact revision. Everything it
//! receives is recorded, per stream, for `watch_check`. Also the recorder and the final reading
//! of the whole event history, which the watchers are checked against.

use std::cell::Cell;
use std::time::Duration;

use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use etcd_proto::mvccpb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::net::client_channel;
use crate::watch_check::{same, Ev, Resp, Segment, WatchLog};
use crate::workload::{now, sleep_until, Shared};

const PROGRESS_EVERY: Duration = Duration::from_millis(300);

fn create(start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision,
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An event as the checker compares it.
pub fn event(e: &mvccpb::Event) -> Ev {
    let kv = e.kv.clone().unwrap_or_default();
    Ev {
        delete: e.r#type == mvccpb::event::EventType::Delete as i32,
        key: text(&kv.key),
        value: text(&kv.value),
        mod_rev: kv.mod_revision,
        create_rev: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        prev: e.prev_kv.as_ref().map(|p| (text(&p.value), p.mod_revision)),
    }
}

/// A watch stream through `member` from `start`, kept open until `end` (simulated time) or
/// until an event at revision `stop_at` or later arrives. `upto`, if given, follows the
/// revision after the last event received.
async fn segment(
    member: &str,
    start: i64,
    end: Duration,
    stop_at: i64,
    shared: &Shared,
    upto: Option<&Cell<i64>>,
) -> Segment {
    let mut seg = Segment {
        member: member.to_string(),
        start,
        responses: Vec::new(),
        end: String::new(),
        compacted: 0,
    };
    let (tx, rx) = mpsc::channel(8);
    let _ = tx.send(create(start)).await;
    let mut client = WatchClient::new(client_channel(member));
    let opened =
        tokio::time::timeout(Duration::from_secs(1), client.watch(tokio_stream_of(rx))).await;
    let mut stream = match opened {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(s)) => {
            seg.end = format!("not opened: {}", s.message());
            return seg;
        }
        Err(_) => {
            seg.end = "not opened: timed out".into();
            return seg;
        }
    };
    let mut ask_at = now() + PROGRESS_EVERY;
    loop {
        let t = now();
        if t >= end {
            seg.end = "moved on".into();
            return seg;
        }
        let wait = end
            .min(ask_at)
            .saturating_sub(t)
            .max(Duration::from_millis(1));
        match tokio::time::timeout(wait, stream.message()).await {
            Err(_) => {
                if now() >= ask_at {
                    let _ = tx.try_send(progress());
                    ask_at = now() + PROGRESS_EVERY;
                }
            }
            Ok(Ok(Some(resp))) if resp.created => {}
            Ok(Ok(Some(resp))) if resp.canceled => {
                seg.end = format!("canceled: {}", resp.cancel_reason);
                seg.compacted = resp.compact_revision;
                return seg;
            }
            Ok(Ok(Some(resp))) => {
                let done = resp
                    .events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .is_some_and(|kv| kv.mod_revision >= stop_at);
                seg.responses.push(Resp {
                    revision: resp.header.map_or(0, |h| h.revision),
                    events: resp.events.iter().map(event).collect(),
                    compacted: shared
                        .compactions
                        .borrow()
                        .iter()
                        .copied()
                        .max()
                        .unwrap_or(0),
                });
                if let (Some(p), Some(kv)) = (upto, resp.events.last().and_then(|e| e.kv.as_ref()))
                {
                    p.set(kv.mod_revision + 1);
                }
                if done {
                    seg.end = "reached the last revision".into();
                    return seg;
                }
            }
            Ok(Ok(None)) => {
                seg.end = "stream ended".into();
                return seg;
            }
            Ok(Err(s)) => {
                seg.end = format!("stream failed: {}", s.message());
                return seg;
            }
        }
    }
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<WatchRequest>,
) -> impl futures::Stream<Item = WatchRequest> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A watcher from `start` until `until`.
pub async fn watcher(
    id: usize,
    seed: u64,
    (start, until): (Duration, Duration),
    shared: std::rc::Rc<Shared>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5741_5443_4845_5200 ^ id as u64);
    let mut log = WatchLog {
        watcher: id,
        segments: Vec::new(),
    };
    let mut next = 1;
    sleep_until(start).await;
    while now() < until {
        let member = &shared.pick(&mut rng);
        let end = (now() + Duration::from_millis(rng.random_range(500..2500))).min(until);
        let seg = segment(member, next, end, i64::MAX, &shared, None).await;
        if let Some(last) = seg.responses.iter().flat_map(|r| &r.events).last() {
            next = last.mod_rev + 1;
        }
        // Asked for compacted revisions: go on from the oldest one left.
        next = next.max(seg.compacted);
        let opened = !seg.end.starts_with("not opened");
        log.segments.push(seg);
        if !opened {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shared.watch_logs.borrow_mut().push(log);
    shared.finished();
    Ok(())
}

/// The recorder: a watcher from revision 1 that keeps every event, resuming through another
/// member whenever its stream ends, until `until`. The compactor never compacts past what it
/// has received, so what it records is the cluster's whole event history.
pub async fn recorder(seed: u64, until: Duration, shared: std::rc::Rc<Shared>) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5245_434f_5244_0000);
    shared.recorded_next.set(1);
    while now() < until {
        let member = shared.pick(&mut rng);
        let next = shared.recorded_next.get();
        let seg = segment(
            &member,
            next,
            until,
            i64::MAX,
            &shared,
            Some(&shared.recorded_next),
        )
        .await;
        if seg.compacted > 0 {
            // The compactor stays behind the recorder: this is the server's doing.
            *shared.recorder_failed.borrow_mut() = Some(format!(
                "the recorder, at revision {next}, was canceled as compacted at {} via {member}",
                seg.compacted
            ));
            break;
        }
        let opened = !seg.end.starts_with("not opened");
        shared
            .recorded
            .borrow_mut()
            .extend(seg.responses.into_iter().flat_map(|r| r.events));
        if !opened {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shared.finished();
    Ok(())
}

/// Every event up to `upto`: what the recorder got, then the rest read by a watch through
/// `member`. That read starts just after the newest compaction asked for, so it also reads
/// back, from the member's store, part of what the recorder got live; the two must agree.
pub async fn full_history(member: &str, upto: i64, shared: &Shared) -> Result<Vec<Ev>, String> {
    if let Some(e) = shared.recorder_failed.borrow().clone() {
        return Err(e);
    }
    let next = shared.recorded_next.get().max(1);
    let compacted = shared
        .compactions
        .borrow()
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let from = (compacted + 1).min(next);
    let read = if from <= upto {
        history(member, from, upto, shared).await?
    } else {
        Vec::new()
    };
    let recorded = shared.recorded.borrow();
    let live: Vec<&Ev> = recorded
        .iter()
        .filter(|e| e.mod_rev >= from && e.mod_rev < next && e.mod_rev <= upto)
        .collect();
    let stored: Vec<&Ev> = read.iter().take_while(|e| e.mod_rev < next).collect();
    for i in 0..live.len().max(stored.len()) {
        let agree = match (stored.get(i), live.get(i)) {
            (Some(s), Some(l)) => same(s, l, compacted),
            _ => false,
        };
        if !agree {
            let show = |e: Option<&&Ev>| e.map_or("nothing".to_string(), |e| e.to_string());
            return Err(format!(
                "event #{i} from revision {from}: the recorder got {}, the store has {}",
                show(live.get(i)),
                show(stored.get(i))
            ));
        }
    }
    let mut events: Vec<Ev> = recorded
        .iter()
        .filter(|e| e.mod_rev <= upto)
        .cloned()
        .collect();
    events.extend(read.into_iter().filter(|e| e.mod_rev >= next));
    Ok(events)
}

/// Every event from revision `from` to `upto`, read by a watch through `member`.
async fn history(member: &str, from: i64, upto: i64, shared: &Shared) -> Result<Vec<Ev>, String> {
    let deadline = now() + Duration::from_secs(20);
    let seg = segment(member, from, deadline, upto, shared, None).await;
    let end = seg.end;
    let mut events = Vec::new();
    for e in seg.responses.into_iter().flat_map(|r| r.events) {
        if e.mod_rev > upto {
            break;
        }
        events.push(e);
    }
    match events.last() {
        Some(e) if e.mod_rev == upto => Ok(events),
        _ => Err(format!(
            "the history read through {member} stops before revision {upto} ({end})"
        )),
    }
}
