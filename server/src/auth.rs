//! The Auth service until authentication lands (the security issue): AuthStatus reports that
//! authentication is disabled, and the calls whose answer etcd gives with auth disabled get
//! that answer; the rest return "unimplemented".

use std::sync::Arc;

use etcd_proto::etcdserverpb::auth_server::Auth;
use etcd_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::errors::{self, EtcdError};
use crate::node::Node;

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.node.current_header()),
            enabled: false,
            auth_revision: 1,
        }))
    }

    async fn auth_disable(
        &self,
        _r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        // Disabling authentication that is not enabled succeeds in etcd too.
        Ok(Response::new(AuthDisableResponse {
            header: Some(self.node.current_header()),
        }))
    }

    async fn authenticate(
        &self,
        _r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(EtcdError::AuthNotEnabled.into())
    }

    async fn auth_enable(
        &self,
        _r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(errors::unimplemented("auth: auth_enable"))
    }

    async fn user_add(
        &self,
        _r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(errors::unimplemented("auth: user_add"))
    }

    async fn user_get(
        &self,
        _r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(errors::unimplemented("auth: user_get"))
    }

    async fn user_list(
        &self,
        _r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Err(errors::unimplemented("auth: user_list"))
    }

    async fn user_delete(
        &self,
        _r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(errors::unimplemented("auth: user_delete"))
    }

    async fn user_change_password(
        &self,
        _r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(errors::unimplemented("auth: user_change_password"))
    }

    async fn user_grant_role(
        &self,
        _r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(errors::unimplemented("auth: user_grant_role"))
    }

    async fn user_revoke_role(
        &self,
        _r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(errors::unimplemented("auth: user_revoke_role"))
    }

    async fn role_add(
        &self,
        _r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(errors::unimplemented("auth: role_add"))
    }

    async fn role_get(
        &self,
        _r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(errors::unimplemented("auth: role_get"))
    }

    async fn role_list(
        &self,
        _r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Err(errors::unimplemented("auth: role_list"))
    }

    async fn role_delete(
        &self,
        _r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(errors::unimplemented("auth: role_delete"))
    }

    async fn role_grant_permission(
        &self,
        _r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(errors::unimplemented("auth: role_grant_permission"))
    }

    async fn role_revoke_permission(
        &self,
        _r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(errors::unimplemented("auth: role_revoke_permission"))
    }
}
