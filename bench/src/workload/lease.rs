//! `lease-keepalive`: every client grants one lease, opens a keep-alive stream and renews its
//! lease one request at a time; each renewal's round trip is one operation.

use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::driver::{closed_loop, Plan};
use crate::report::Report;

/// TTL of the benchmark's leases, long enough that none expires during a run.
const TTL_SECS: i64 = 600;

pub async fn keepalive(plan: &Plan) -> anyhow::Result<Report> {
    let channels = plan.connect().await?;
    // Grant the leases and open the streams before the clock starts.
    let mut streams = Vec::new();
    for c in 0..plan.clients {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        let id = lease
            .lease_grant(LeaseGrantRequest {
                ttl: TTL_SECS,
                id: 0,
            })
            .await?
            .into_inner()
            .id;
        // One renewal is queued before the stream opens (its headers come with the first
        // reply) and its reply consumed, so the measured renewals start on an open stream.
        let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
        tx.send(LeaseKeepAliveRequest { id }).await?;
        let mut inbound = lease
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        inbound
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("keep-alive stream closed"))??;
        streams.push(Some((id, tx, inbound)));
    }
    let ids: Vec<i64> = streams.iter().flatten().map(|s| s.0).collect();
    let report = closed_loop("lease-keepalive", plan, |c| {
        let (id, tx, inbound) = streams[c].take().expect("one stream per client");
        let inbound = std::sync::Arc::new(tokio::sync::Mutex::new(inbound));
        move |_| {
            let (tx, inbound) = (tx.clone(), inbound.clone());
            async move {
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|_| tonic::Status::unavailable("keep-alive stream closed"))?;
                match inbound.lock().await.next().await {
                    Some(Ok(r)) if r.ttl > 0 => Ok(None),
                    Some(Ok(_)) => Err(tonic::Status::not_found("lease expired")),
                    Some(Err(e)) => Err(e),
                    None => Err(tonic::Status::unavailable("keep-alive stream ended")),
                }
            }
        }
    })
    .await;
    let mut lease = LeaseClient::new(channels[0].clone());
    for id in ids {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(report)
}
