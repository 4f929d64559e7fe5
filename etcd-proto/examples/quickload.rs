//! A quick load generator against any etcd v3 endpoint (the full one, modeled on etcd's
//! benchmark tool, is the `bench` crate's job). It runs `--total` puts or ranges from
//! `--clients` concurrent clients over `--conns` connections and prints one line: ops/s and
//! latency percentiles. Usage:
//!   quickload <endpoint[,endpoint...]> <put|range> <clients> <conns> <total> [value-bytes]
//! With several endpoints (a cluster's members), connections are spread over them in turn.

use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

const KEY_SPACE: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: quickload <endpoint> <put|range> <clients> <conns> <total> [value-bytes]"
        );
        std::process::exit(2);
    }
    let (endpoint, op) = (args[1].clone(), args[2].clone());
    let clients: usize = args[3].parse()?;
    let conns: usize = args[4].parse()?;
    let total: usize = args[5].parse()?;
    let value_bytes: usize = args.get(6).map(|v| v.parse()).transpose()?.unwrap_or(256);
    let endpoints: Vec<&str> = endpoint.split(',').collect();
    let mut channels = Vec::new();
    for i in 0..conns {
        channels.push(
            Channel::from_shared(format!("http://{}", endpoints[i % endpoints.len()]))?
                .connect()
                .await?,
        );
    }
    if op == "range" {
        // Preload the keys that ranges read.
        let mut kv = KvClient::new(channels[0].clone());
        for i in 0..KEY_SPACE {
            kv.put(PutRequest {
                key: key(i),
                value: vec![b'v'; value_bytes],
                ..Default::default()
            })
            .await?;
        }
    }
    let per_client = total / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % conns].clone());
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let k = key((c * 7919 + i * 104_729) % KEY_SPACE);
                let t = Instant::now();
                let ok = if op == "put" {
                    kv.put(PutRequest {
                        key: k,
                        value: vec![b'v'; value_bytes],
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                } else {
                    kv.range(RangeRequest {
                        key: k,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                };
                assert!(ok, "request failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "op={op} clients={clients} conns={conns} total={} ops_per_sec={:.0} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

fn key(i: usize) -> Vec<u8> {
    format!("/quickload/{i:08}").into_bytes()
}
