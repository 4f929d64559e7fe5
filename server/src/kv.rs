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

/// Runs a range on the blocking pool unless it names a single key (a few microseconds).
pub async fn read_range(node: &Arc<Node>, r: RangeRequest) -> Result<RangeResponse, Status> {
    if !r.serializable {
        node.applier.read_index().await?;
    }
    let mut resp = if r.range_end.is_empty() {
        range::execute(&node.store, &r).map_err(errors::from_store)?
    } else {
        let store = node.store.clone();
        tokio::task::spawn_blocking(move || range::execute(&store, &r))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_store)?
    };
    let rev = resp.header.map_or(0, |h| h.revision);
    resp.header = Some(node.header(rev));
    Ok(resp)
}

/// A read-only txn on the read path, as etcd serves it: linearizable (after the read barrier)
/// unless every range in it is serializable.
async fn read_txn(node: &Arc<Node>, r: TxnRequest) -> Result<TxnResponse, Status> {
    if !store::read_txn::is_serializable(&r) {
        node.applier.read_index().await?;
    }
    // Single-key reads run here; scans of ranges move off the async workers.
    let mut resp = if single_keys(&r) {
        store::read_txn::execute(&node.store, &r).map_err(errors::from_store)?
    } else {
        let store = node.store.clone();
        tokio::task::spawn_blocking(move || store::read_txn::execute(&store, &r))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_store)?
    };
    let rev = resp.header.map_or(0, |h| h.revision);
    resp.header = Some(node.header(rev));
    Ok(resp)
}

/// Whether every compare and range in the txn names a single key.
fn single_keys(t: &TxnRequest) -> bool {
    use etcd_proto::etcdserverpb::request_op::Request;
    t.compare.iter().all(|c| c.range_end.is_empty())
        && t.success.iter().chain(&t.failure).all(|op| match &op.request {
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
