//! The backend quota: each member compares its own backend size with `--quota-backend-bytes`
//! and, once over, proposes a NOSPACE alarm for itself through Raft, as etcd does. The alarm,
//! once applied, makes every member refuse writes that need space.

use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::AlarmType;
use store::WriteRequest;
use tokio::sync::watch;

use crate::node::Node;

/// How often the backend size is compared with the quota (a directory listing).
const QUOTA_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs until `stop` fires.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(QUOTA_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if node.applier.nospace() {
            continue;
        }
        let size = node.store.size_on_disk();
        if size <= node.config.quota_backend_bytes {
            continue;
        }
        tracing::warn!(
            size,
            quota = node.config.quota_backend_bytes,
            "backend quota exceeded; raising NOSPACE alarm"
        );
        let req = WriteRequest::Alarm {
            activate: true,
            member_id: node.member.id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = node.applier.propose(req).await {
            tracing::error!(error = %e, "could not raise NOSPACE alarm");
        }
    }
}
