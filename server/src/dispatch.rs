//! `Dispatch`: the client port's request router. A gRPC request goes to the service its path
//! names (`/etcdserverpb.KV/Range` → the KV service); anything else goes to the HTTP
//! endpoints (`http`). Every response then passes the same two rewrites
//! (`grpc_status`, `date`), and a request counts in `raftlog::transport::HANDLING` while its
//! handler runs.
//!
//! tonic's own router (an axum `Router`) does the same with path-pattern matching, a boxed
//! clone of the route's service, a second boxing of the request body and a future per layer
//! for each request: a tenth of the server's CPU on a one-key serializable range. Here a
//! request costs one string comparison per service and the generated service's own future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use etcd_proto::etcdserverpb::auth_server::AuthServer;
use etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use etcd_proto::etcdserverpb::kv_server::KvServer;
use etcd_proto::etcdserverpb::lease_server::LeaseServer;
use etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use http::{Request, Response};
use netio::Entered;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::unary::KvUnary;
use crate::watch_wire::WatchServer;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The services served on a client URL.
pub struct Services {
    pub kv: KvUnary,
    pub watch: WatchServer,
    pub lease: LeaseServer<LeaseService>,
    pub cluster: ClusterServer<ClusterService>,
    pub maintenance: MaintenanceServer<MaintenanceService>,
    pub auth: AuthServer<AuthService>,
    /// `/health`, `/version`, `/metrics`.
    pub http: axum::Router,
}

/// Routes requests to `Services`; cheap to clone (the transport clones it per request).
#[derive(Clone)]
pub struct Dispatch(Arc<Services>);

impl Dispatch {
    pub fn new(services: Services) -> Self {
        Dispatch(Arc::new(services))
    }
}

/// The gRPC service a path names, as grpc-go reads it: what lies between the leading slash
/// and the last one. `None`: the path names no method.
fn service_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    Some(&rest[..rest.rfind('/')?])
}

/// Whether a request is gRPC (its content type is `application/grpc` or a subtype).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Handled;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Handled {
        let handling = raftlog::transport::HANDLING.enter();
        let s = &*self.0;
        // Kept (a reference count) to name an unknown method in the answer; see `Handled`.
        let path = req.uri().path_and_query().cloned();
        let inner = match service_of(req.uri().path()) {
            Some(KvServer::<KvService>::NAME) => s.kv.call(req),
            Some(WatchServer::NAME) => s.watch.clone().call(req),
            Some(LeaseServer::<LeaseService>::NAME) => s.lease.clone().call(req),
            Some(ClusterServer::<ClusterService>::NAME) => s.cluster.clone().call(req),
            Some(MaintenanceServer::<MaintenanceService>::NAME) => s.maintenance.clone().call(req),
            Some(AuthServer::<AuthService>::NAME) => s.auth.clone().call(req),
            // An unknown gRPC service or a malformed path: grpc-go's answers.
            _ if is_grpc(&req) => {
                let resp = unserved(req.uri().path());
                Box::pin(std::future::ready(Ok(resp)))
            }
            _ => {
                let call = s.http.clone().call(req);
                Box::pin(async move {
                    let resp = call.await?;
                    Ok(resp.map(Body::new))
                })
            }
        };
        Handled {
            inner,
            handling: Some(handling),
            path,
        }
    }
}

/// grpc-go's (1.41, etcd 3.5's) answer to a gRPC request for a service it does not serve:
/// Unimplemented, "unknown service <name>"; or for a path that names no method,
/// ResourceExhausted, "malformed method name: <quoted path>".
fn unserved(path: &str) -> Response<Body> {
    let status = match service_of(path) {
        Some(name) => tonic::Status::unimplemented(format!("unknown service {name}")),
        None => tonic::Status::resource_exhausted(format!("malformed method name: {path:?}")),
    };
    status_response(status)
}

/// grpc-go's answer to a served service's unknown method: Unimplemented, "unknown method
/// <method> for service <service>". (tonic's generated services send the code alone.)
fn unknown_method(path: &str) -> Response<Body> {
    let service = service_of(path).unwrap_or_default();
    let method = &path[path.rfind('/').map_or(0, |i| i + 1)..];
    status_response(tonic::Status::unimplemented(format!(
        "unknown method {method} for service {service}"
    )))
}

fn status_response(status: tonic::Status) -> Response<Body> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    Response::from_parts(parts, Body::empty())
}

/// Whether a response is tonic's answer to an unknown method: Unimplemented in the headers,
/// without a message. (Every Unimplemented that cairn's handlers send has etcd's message.)
fn is_unnamed_unimplemented<B>(resp: &Response<B>) -> bool {
    let h = resp.headers();
    h.get("grpc-status").is_some_and(|v| v == "12") && !h.contains_key("grpc-message")
}

/// A request being handled: the service's future, counted in `HANDLING` until it is ready.
pub struct Handled {
    inner: BoxFuture,
    handling: Option<Entered>,
    /// The request's path, to name an unknown method as grpc-go does.
    path: Option<http::uri::PathAndQuery>,
}

impl Future for Handled {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = ready!(self.inner.as_mut().poll(cx))?;
        self.handling = None;
        let resp = match &self.path {
            Some(path) if is_unnamed_unimplemented(&resp) => unknown_method(path.path()),
            _ => resp,
        };
        let resp = crate::date::simulated(crate::grpc_status::etcd_compatible(resp));
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_path_up_to_its_last_slash() {
        assert_eq!(
            service_of("/etcdserverpb.KV/Range"),
            Some("etcdserverpb.KV")
        );
        assert_eq!(
            service_of("/etcdserverpb.Watch/Watch"),
            Some("etcdserverpb.Watch")
        );
        assert_eq!(service_of("/a/b/Range"), Some("a/b"));
        assert_eq!(service_of("/health"), None);
        assert_eq!(service_of("health"), None);
        assert_eq!(service_of("/"), None);
    }

    #[test]
    fn an_unknown_method_is_named_as_grpc_go_names_it() {
        let resp = unknown_method("/etcdserverpb.KV/Nope");
        assert_eq!(resp.headers()["grpc-status"], "12");
        let status = tonic::Status::from_header_map(resp.headers()).expect("a status");
        assert_eq!(
            status.message(),
            "unknown method Nope for service etcdserverpb.KV"
        );
        assert!(!is_unnamed_unimplemented(&resp));
    }
}
