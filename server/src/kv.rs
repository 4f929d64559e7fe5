//! The KV service: Range, Put, DeleteRange, Txn, Compact. Each handler validates, then reads
//! the store locally or proposes a write through Raft. A linearizable range first waits for
//! the read barrier (this member has applied all the leader had committed when the read
//! arrived); a serializable one reads this member's store as it is.

use std::sync::Arc;

use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use store::{range, WriteRequest, WriteResponse};
use tonic::{Request, Response, Status};

use crate::compactor::Compactor;
use crate::errors::{self, EtcdError};
use crate::node::Node;
use crate::validate;

pub struct KvService {
    node: Arc<Node>,
    compactor: Compactor,
}

impl KvService {
    pub fn new(node: Arc<Node>, compactor: Compactor) -> Self {
        KvService { node, compactor }
    }

    /// etcd refuses a write whose encoding exceeds `--max-request-bytes`.
    fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.node.config.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        Ok(())
    }

    async fn propose(&self, req: WriteRequest) -> Result<store::Applied, Status> {
        self.node.applier.propose(req).await
    }
}

/// A range: after the read barrier unless serializable, then read on the store (`on_store`).
pub async fn read_range(node: &Arc<Node>, r: RangeRequest) -> Result<RangeResponse, Status> {
    if !r.serializable && !node.config.fault_local_linearizable_reads {
        node.applier.read_index().await?;
    }
    let single = r.range_end.is_empty();
    let mut resp = on_store(node, single, move |store| range::execute(store, &r)).await?;
    let rev = resp.header.map_or(0, |h| h.revision);
    resp.header = Some(node.header(rev));
    Ok(resp)
}

/// Runs a read on the store: here if it is `small` (a single key: a few microseconds), else
/// on the blocking pool, off the async workers (inline in a simulation: see
/// `raftlog::determinism`).
async fn on_store<T: Send + 'static>(
    node: &Arc<Node>,
    small: bool,
    read: impl FnOnce(&store::Store) -> store::Result<T> + Send + 'static,
) -> Result<T, Status> {
    if small {
        return read(&node.store).map_err(errors::from_store);
    }
    let store = node.store.clone();
    raftlog::determinism::blocking(move || read(&store))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(errors::from_store)
}

/// A read-only txn on the read path, as etcd serves it: linearizable (after the read barrier)
/// unless every range in it is serializable.
async fn read_txn(node: &Arc<Node>, r: TxnRequest) -> Result<TxnResponse, Status> {
    if !store::read_txn::is_serializable(&r) {
        node.applier.read_index().await?;
    }
    let single = single_keys(&r);
    let mut resp = on_store(node, single, move |store| {
        store::read_txn::execute(store, &r)
    })
    .await?;
    let rev = resp.header.map_or(0, |h| h.revision);
    resp.header = Some(node.header(rev));
    Ok(resp)
}

/// Whether every compare and range in the txn names a single key.
fn single_keys(t: &TxnRequest) -> bool {
    use etcd_proto::etcdserverpb::request_op::Request;
    t.compare.iter().all(|c| c.range_end.is_empty())
        && t.success
            .iter()
            .chain(&t.failure)
            .all(|op| match &op.request {
                Some(Request::RequestRange(r)) => r.range_end.is_empty(),
                _ => true,
            })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let r = request.into_inner();
        if !r.serializable {
            self.node.reject_learner()?;
        }
        validate::range(&r)?;
        Ok(Response::new(read_range(&self.node, r).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        validate::put(&r)?;
        self.check_size(r.encoded_len())?;
        let applied = self.propose(WriteRequest::Put(r)).await?;
        match applied.response {
            WriteResponse::Put(mut resp) => {
                resp.header = Some(self.node.header(applied.revision));
                Ok(Response::new(resp))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        validate::delete_range(&r)?;
        self.check_size(r.encoded_len())?;
        let applied = self.propose(WriteRequest::DeleteRange(r)).await?;
        match applied.response {
            WriteResponse::DeleteRange(mut resp) => {
                resp.header = Some(self.node.header(applied.revision));
                Ok(Response::new(resp))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        validate::txn(&r, self.node.config.txn_ops_max)?;
        // As etcd: only what is proposed to Raft is held to --max-request-bytes.
        if store::read_txn::is_read_only(&r) {
            return Ok(Response::new(read_txn(&self.node, r).await?));
        }
        self.check_size(r.encoded_len())?;
        let applied = self.propose(WriteRequest::Txn(r)).await?;
        match applied.response {
            WriteResponse::Txn(mut resp) => {
                resp.header = Some(self.node.header(applied.revision));
                Ok(Response::new(resp))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.node.reject_learner()?;
        let r = request.into_inner();
        let applied = self
            .propose(WriteRequest::Compact {
                revision: r.revision,
            })
            .await?;
        if r.physical {
            self.compactor.wait_for(r.revision).await;
        }
        Ok(Response::new(CompactionResponse {
            header: Some(self.node.header(applied.revision)),
        }))
    }
}
