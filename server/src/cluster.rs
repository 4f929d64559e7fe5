//! The Cluster service for a single member: MemberList reports this member; membership
//! changes need the Raft cluster and answer etcd's errors or "unimplemented" until then.

use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::{self, EtcdError};
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    fn me(&self) -> Member {
        let m = &self.node.member;
        Member {
            id: m.id,
            name: m.name.clone(),
            peer_ur_ls: m.peer_urls.clone(),
            client_ur_ls: m.client_urls.clone(),
            is_learner: false,
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(errors::unimplemented("MemberAdd (multi-member clusters)"))
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        if r.into_inner().id != self.node.member.id {
            return Err(EtcdError::MemberNotFound.into());
        }
        Err(errors::unimplemented("MemberRemove of the only member"))
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        if r.into_inner().id != self.node.member.id {
            return Err(EtcdError::MemberNotFound.into());
        }
        Err(errors::unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.current_header()),
            members: vec![self.me()],
        }))
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        if r.into_inner().id != self.node.member.id {
            return Err(EtcdError::MemberNotFound.into());
        }
        Err(EtcdError::MemberNotLearner.into())
    }
}
