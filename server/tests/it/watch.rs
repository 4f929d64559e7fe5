//! Watch protocol behaviour compared with real etcd 3.5.1: the same requests on one stream to
//! each server, and each watcher's sequence of responses (created/canceled flags, reasons,
//! compact revisions, fragments, events; headers normalized) must be equal. Only the order of
//! responses *within* a watcher is etcd's contract; across watchers they may interleave.

use std::time::Duration;

use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc::{norm_header, Client};
use crate::harness::{Kind, Server};

/// One watch stream to a server.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl Stream {
    /// Opens a stream whose first request is `first` (grpc-go answers a stream's headers only
    /// with its first response, so a request must be queued before the open is awaited).
    async fn open(
        c: &mut Client,
        metadata: Option<(&'static str, &'static str)>,
        first: RequestUnion,
    ) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(first),
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some((k, v)) = metadata {
            req.metadata_mut().insert(k, v.parse().unwrap());
        }
        let rx = c.watch.watch(req).await.unwrap().into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    /// Responses until the stream is quiet for `quiet`, rendered without IDs and terms.
    async fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Ok(Some(mut r))) = tokio::time::timeout(quiet, self.rx.message()).await {
            norm_header(&mut r.header);
            out.push(format!("{r:?}"));
        }
        out
    }
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.kv.put(PutRequest {
        key: k.to_owned().into(),
        value: v.to_owned().into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Runs `scenario` against etcd and cairn and compares what each stream received.
async fn compare<F, Fut>(extra: &[&str], scenario: F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let etcd = Server::start_with(Kind::Etcd, extra);
    let cairn = Server::start_with(Kind::Cairn, extra);
    let want = per_watcher(scenario(Client::connect(&etcd.endpoint()).await).await);
    let got = per_watcher(scenario(Client::connect(&cairn.endpoint()).await).await);
    assert!(!want.is_empty());
    assert_eq!(want, got, "\netcd:  {want:#?}\ncairn: {got:#?}");
}

/// Groups rendered responses by watch ID, keeping each watcher's order.
fn per_watcher(responses: Vec<String>) -> Vec<String> {
    let id = |r: &String| {
        r.split("watch_id: ")
            .nth(1)
            .and_then(|t| t.split([',', ' ']).next())
            .unwrap_or("")
            .to_string()
    };
    let mut ids: Vec<String> = responses.iter().map(id).collect();
    ids.dedup();
    let mut seen = std::collections::BTreeSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    ids.iter()
        .flat_map(|i| {
            responses
                .iter()
                .filter(|r| id(r) == *i)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_duplicates_empty_ranges_and_cancel() {
    compare(&[], |mut c| async move {
        let mut with_id = create("a", "", 0);
        with_id.watch_id = 7;
        let mut s = Stream::open(
            &mut c,
            Some(("hasleader", "true")),
            RequestUnion::CreateRequest(with_id.clone()),
        )
        .await;
        s.send(RequestUnion::CreateRequest(with_id)).await;
        s.send(RequestUnion::CreateRequest(create("b", "", 0)))
            .await;
        s.send(RequestUnion::CreateRequest(create("z", "a", 0)))
            .await;
        s.send(RequestUnion::CreateRequest(create("k", "\0", 0)))
            .await;
        let mut out = s.drain(QUIET).await;
        put(&mut c, "a", "1").await;
        put(&mut c, "b", "2").await;
        put(&mut c, "kk", "3").await;
        out.extend(s.drain(QUIET).await);
        s.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 7,
        }))
        .await;
        s.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 99,
        }))
        .await;
        out.extend(s.drain(QUIET).await);
        put(&mut c, "a", "again").await;
        out.extend(s.drain(QUIET).await);
        out
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_prev_kv_and_progress_requests() {
    compare(&[], |mut c| async move {
        for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/a", "3")] {
            put(&mut c, k, v).await;
        }
        c.kv.delete_range(DeleteRangeRequest {
            key: "p/b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut s = Stream::open(
            &mut c,
            None,
            RequestUnion::ProgressRequest(WatchProgressRequest {}),
        )
        .await;
        let mut out = s.drain(QUIET).await;
        let mut all = create("p/", "p0", 1);
        all.prev_kv = true;
        s.send(RequestUnion::CreateRequest(all)).await;
        let mut no_put = create("p/", "p0", 1);
        no_put.filters = vec![FilterType::Noput as i32];
        s.send(RequestUnion::CreateRequest(no_put)).await;
        let mut no_delete = create("p/", "p0", 3);
        no_delete.filters = vec![FilterType::Nodelete as i32];
        s.send(RequestUnion::CreateRequest(no_delete)).await;
        out.extend(s.drain(QUIET).await);
        s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
        out.extend(s.drain(QUIET).await);
        out
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_cancelled_with_compact_revision() {
    compare(&[], |mut c| async move {
        for i in 0..6 {
            put(&mut c, "c", &i.to_string()).await;
        }
        c.kv.compact(CompactionRequest {
            revision: 5,
            physical: true,
        })
        .await
        .unwrap();
        let mut s = Stream::open(
            &mut c,
            None,
            RequestUnion::CreateRequest(create("c", "", 2)),
        )
        .await;
        s.send(RequestUnion::CreateRequest(create("c", "", 5)))
            .await;
        s.drain(QUIET).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_on_request() {
    compare(&["--max-request-bytes", "200000"], |mut c| async move {
        // The threshold is --max-request-bytes + 512 KiB = 724,288 bytes.
        for i in 0..5 {
            let value = String::from_utf8(vec![b'x'; 190_000]).unwrap();
            put(&mut c, &format!("f/{i}"), &value).await;
        }
        // Catching up from revision 1 puts all five events in one response, which exceeds the
        // limit: a watcher that asked for fragments gets it in pieces, the other in one piece.
        let mut frag = create("f/", "f0", 1);
        frag.fragment = true;
        let mut s = Stream::open(&mut c, None, RequestUnion::CreateRequest(frag)).await;
        s.send(RequestUnion::CreateRequest(create("f/", "f0", 1)))
            .await;
        let mut out = Vec::new();
        // Summarize: which watcher, fragment flag, and the keys each response carried.
        for r in s.drain(QUIET).await {
            let keys: Vec<&str> = r
                .match_indices("key: [102, 47, ")
                .map(|(i, _)| &r[i + 15..i + 17])
                .collect();
            let frag = r.contains("fragment: true");
            let id = r
                .split("watch_id: ")
                .nth(1)
                .and_then(|t| t.split(',').next())
                .unwrap_or("?")
                .to_string();
            out.push(format!("watch_id: {id} fragment={frag} keys={keys:?}"));
        }
        assert!(
            out.iter().any(|r| r.contains("fragment=true")),
            "the catch-up must be fragmented: {out:?}"
        );
        out
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications() {
    compare(
        &["--experimental-watch-progress-notify-interval", "1s"],
        |mut c| async move {
            put(&mut c, "n", "1").await;
            let mut w = create("n", "", 0);
            w.progress_notify = true;
            let mut s = Stream::open(&mut c, None, RequestUnion::CreateRequest(w)).await;
            let mut out = s.drain(QUIET).await;
            // No events: within a few intervals the watcher hears about progress.
            tokio::time::sleep(Duration::from_millis(2600)).await;
            let notes = s.drain(QUIET).await;
            out.push(format!(
                "progress notifications arrived: {}",
                !notes.is_empty()
            ));
            out.extend(notes.into_iter().take(1));
            out
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_catches_up_from_history_without_gaps() {
    // The client stops reading while far more batches are written than the hub keeps, so the
    // stream lags and must catch up from stored history: every revision exactly once, in order,
    // for each of the stream's watchers (they catch up together), with prev_kv for the one
    // that asked for it.
    let cairn = Server::start_with(Kind::Cairn, &["--log-level", "debug"]);
    let mut c = Client::connect(&cairn.endpoint()).await;
    let start = c.current_revision().await + 1;
    let mut s = Stream::open(
        &mut c,
        None,
        RequestUnion::CreateRequest(create("lag/", "lag0", 0)),
    )
    .await;
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        prev_kv: true,
        ..create("lag/3", "", 0)
    }))
    .await;
    // Both watchers exist before the first put.
    for _ in 0..2 {
        let created = s.rx.message().await.unwrap().unwrap();
        assert!(created.created);
    }
    let puts = 8000;
    let pad = String::from_utf8(vec![b'v'; 2000]).unwrap();
    for i in 0..puts {
        put(&mut c, &format!("lag/{}", i % 10), &format!("{i:06}{pad}")).await;
    }
    let last = start + puts - 1;
    // Watcher 0 sees every revision; watcher 1 every tenth, from the fourth.
    let (mut next_all, mut next_three) = (start, start + 3);
    let mut prev_three: Option<(i64, Vec<u8>)> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while next_all <= last || next_three <= last {
        let msg = tokio::time::timeout_at(deadline, s.rx.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        for e in msg.events {
            let kv = e.kv.unwrap();
            let i = kv.mod_revision - start;
            assert_eq!(&kv.value[..6], format!("{i:06}").as_bytes());
            if msg.watch_id == 0 {
                assert_eq!(kv.mod_revision, next_all, "once each, in revision order");
                assert!(e.prev_kv.is_none(), "watcher 0 did not ask for prev_kv");
                next_all += 1;
            } else {
                assert_eq!(kv.mod_revision, next_three, "once each, in revision order");
                let prev = e.prev_kv.map(|p| (p.mod_revision, p.value.to_vec()));
                assert_eq!(prev, prev_three, "prev_kv is the key's previous version");
                prev_three = Some((kv.mod_revision, kv.value.to_vec()));
                next_three += 10;
            }
        }
    }
    assert!(
        cairn.log().contains("watch stream lagged"),
        "the stream must have fallen behind the hub"
    );
}
