//! The Cluster service: MemberList from the membership config this member has applied (after
//! a read barrier when asked to be linearizable), and etcd's membership changes, made by the
//! leader whichever member the client asked (see `membership`).

use std::sync::Arc;

use etcd_proto::cairnraftpb::{member_change_request::Kind, MemberAttrs, MemberChangeRequest};
use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::membership;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    fn members(&self) -> Vec<Member> {
        membership::applied_members(&self.node.store)
            .iter()
            .map(membership::to_etcd)
            .collect()
    }

    async fn change(
        &self,
        kind: Kind,
        member: MemberAttrs,
        is_learner: bool,
    ) -> Result<Option<MemberAttrs>, Status> {
        let req = MemberChangeRequest {
            kind: kind as i32,
            member: Some(member),
            is_learner,
        };
        let added = self.node.applier.change_member(req).await?;
        // Answer with the membership as this member has applied it, as etcd does.
        self.node.applier.read_index().await?;
        Ok(added)
    }
}

fn with_id(id: u64) -> MemberAttrs {
    MemberAttrs {
        id,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.node.reject_learner()?;
        let r = r.into_inner();
        let member = MemberAttrs {
            peer_urls: r.peer_ur_ls,
            ..Default::default()
        };
        let added = self.change(Kind::Add, member, r.is_learner).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.node.current_header()),
            member: added.as_ref().map(membership::to_etcd),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.node.reject_learner()?;
        self.change(Kind::Remove, with_id(r.into_inner().id), false)
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.node.current_header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.node.reject_learner()?;
        let r = r.into_inner();
        let member = MemberAttrs {
            id: r.id,
            peer_urls: r.peer_ur_ls,
            ..Default::default()
        };
        self.change(Kind::Update, member, false).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.node.current_header()),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if r.into_inner().linearizable {
            self.node.applier.read_index().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.current_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.change(Kind::Promote, with_id(r.into_inner().id), false)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.node.current_header()),
            members: self.members(),
        }))
    }
}
