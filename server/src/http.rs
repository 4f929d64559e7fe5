//! HTTP endpoints served beside gRPC on the client port, as etcd serves them: `/health`,
//! `/version` and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use etcd_proto::etcdserverpb::RangeRequest;

use etcd_proto::etcdserverpb::AlarmType;

use crate::config::CLUSTER_VERSION;
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// Healthy when no alarm is raised (except those named by `?exclude=NOSPACE`) and a
/// linearizable read succeeds, as etcd checks.
async fn health(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let query = query.unwrap_or_default();
    let excluded: Vec<&str> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .collect();
    let alarms = node.store.alarms().unwrap_or_default();
    let raised = alarms.iter().find_map(|&(_, a)| {
        let name = AlarmType::try_from(a)
            .map(|t| t.as_str_name())
            .unwrap_or("UNKNOWN");
        (!excluded.contains(&name)).then_some(name)
    });
    let (ok, reason) = if let Some(name) = raised {
        (false, format!("ALARM {name}"))
    } else {
        let probe = RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        };
        match crate::kv::read_range(&node, probe).await {
            Ok(_) => (true, String::new()),
            Err(e) => (false, format!("RANGE ERROR:{}", e.message())),
        }
    };
    let body = format!("{{\"health\":\"{ok}\",\"reason\":\"{reason}\"}}");
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn version(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = format!(
        "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{CLUSTER_VERSION}\"}}",
        node.config.reported_etcd_version
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = &node.metrics;
    m.has_leader.set(1);
    m.is_leader.set(1);
    m.db_total_size.set(node.store.size_on_disk() as i64);
    m.db_in_use_size.set(node.store.size_in_use() as i64);
    m.current_revision.set(node.store.current_revision());
    m.compact_revision.set(node.store.compacted_revision());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}
