//! Watch fan-out: one cairn member runs in-process; N watchers (on 10 gRPC streams) watch one
//! key; an iteration is one put and the wait until every watcher has its event. Throughput is
//! events delivered per second, so the curve over N shows what one more watcher costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    flags: server::Flags,
}

const STREAMS: usize = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Opens `n` watchers on `key`; every event received bumps `seen` and wakes `notify`.
async fn watchers(ch: &Channel, key: &[u8], n: usize, seen: Arc<AtomicU64>, notify: Arc<Notify>) {
    for s in 0..STREAMS {
        let per = n / STREAMS + usize::from(s < n % STREAMS);
        if per == 0 {
            continue;
        }
        let (tx, rx) = mpsc::channel(per + 1);
        for _ in 0..per {
            let create = WatchCreateRequest {
                key: key.to_vec(),
                ..Default::default()
            };
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .unwrap();
        }
        let mut inbound = WatchClient::new(ch.clone())
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut created = 0;
        while created < per {
            created += usize::from(inbound.next().await.unwrap().unwrap().created);
        }
        let (seen, notify) = (seen.clone(), notify.clone());
        tokio::spawn(async move {
            let _open = tx;
            while let Some(Ok(resp)) = inbound.next().await {
                seen.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
                notify.notify_one();
            }
        });
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let cli = Cli::parse_from([
        "cairn".to_string(),
        format!("--data-dir={}", dir.path().display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
    ]);
    let config = cli.flags.validate().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(server::server::run(config, async move {
        let _ = stop_rx.await;
    }));
    let ch = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("http://127.0.0.1:{client}");
            if let Ok(ch) = Channel::from_shared(url).unwrap().connect().await {
                if KvClient::new(ch.clone())
                    .put(PutRequest {
                        key: b"ready".to_vec().into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    break ch;
                }
            }
            assert!(Instant::now() < deadline, "in-process server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut group = c.benchmark_group("watch_fanout");
    for n in [1usize, 100, 1000] {
        let key = format!("fan-{n}").into_bytes();
        let seen = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        rt.block_on(watchers(&ch, &key, n, seen.clone(), notify.clone()));
        let mut kv = KvClient::new(ch.clone());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n}_watchers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let want = seen.load(Ordering::Relaxed) + n as u64;
                        kv.put(PutRequest {
                            key: key.clone().into(),
                            value: vec![b'v'; 256].into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                        while seen.load(Ordering::Relaxed) < want {
                            notify.notified().await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = fanout
}
criterion_main!(benches);
