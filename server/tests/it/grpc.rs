//! A small gRPC client over our own generated stubs, for tests that need whole responses.

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::ResponseHeader;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
}

impl Client {
    /// The server's current revision (from the header of a one-key range).
    pub async fn current_revision(&mut self) -> i64 {
        let req = etcd_proto::etcdserverpb::RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        };
        self.kv
            .range(req)
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
    }

    /// This member's own revision (a serializable read: no leader needed, no barrier).
    pub async fn serializable_revision(&mut self) -> i64 {
        let req = etcd_proto::etcdserverpb::RangeRequest {
            key: b"x".to_vec(),
            serializable: true,
            ..Default::default()
        };
        match self.kv.range(req).await {
            Ok(r) => r.into_inner().header.unwrap().revision,
            Err(_) => 0,
        }
    }

    pub async fn connect(endpoint: &str) -> Client {
        let channel = Channel::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel).max_decoding_message_size(64 << 20),
        }
    }
}

/// Clears what legitimately differs between two servers: member and cluster IDs and the term.
pub fn norm_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// A comparable form of a failed call: etcd's code and message.
pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
