//! The `LogicExtService` server: the business API for back ends and tools. Every call except
//! Register, ServerSend and KickDevice first authenticates the calling user from the request
//! metadata; ServerSend and KickDevice check the server secret instead.

use std::future::Future;
use std::sync::Arc;

use im_proto::v1::logic_ext_service_server::{LogicExtService, LogicExtServiceServer};
use im_proto::v1::{
    CreateGroupRequest, FindUserRequest, FriendReply, FriendRequest, GetGroupRequest,
    GetUserRequest, GroupInfo, GroupMembersRequest, KickDeviceReply, KickDeviceRequest,
    ListFriendsReply, ListFriendsRequest, ListGroupsReply, ListGroupsRequest, LogoutReply,
    LogoutRequest, RegisterReply, RegisterRequest, SendReply, ServerSendRequest, UserInfo,
};
use tonic::{Request, Response, Status};

use super::bad_request::RejectBadRequests;
use super::caller::{self, Caller, Credentials};
use super::{friends, groups, messages, register, respond, revoke, users, CallIds, Logic};
use crate::error::LogicError;
use crate::metrics::Method;

/// The `LogicExtService` server: the business API for back ends.
#[derive(Clone)]
pub struct ExtService {
    logic: Arc<Logic>,
    /// Whether ServerSend and KickDevice are served. The web port rejects them, so that the
    /// server secret cannot be guessed through the port that faces browsers.
    back_end_calls: bool,
}

/// The error message of a back-end call rejected on the web port.
const BACK_END_ONLY: &str = "ServerSend and KickDevice are for back ends: call them on the \
                             logic tier's gRPC address (listen_addr), not on the web port";

impl ExtService {
    /// Serves every call with `logic`, as the gRPC server on `listen_addr` does.
    pub fn new(logic: Arc<Logic>) -> ExtService {
        ExtService {
            logic,
            back_end_calls: true,
        }
    }

    /// Serves the calls of devices with `logic`, and rejects ServerSend and KickDevice with
    /// PERMISSION_DENIED, as the web port does.
    pub fn for_web(logic: Arc<Logic>) -> ExtService {
        ExtService {
            logic,
            back_end_calls: false,
        }
    }

    /// Returns PERMISSION_DENIED when this service rejects back-end calls.
    fn check_back_end_call(&self) -> Result<(), LogicError> {
        if self.back_end_calls {
            Ok(())
        } else {
            Err(LogicError::PermissionDenied(BACK_END_ONLY))
        }
    }

    /// Returns the tower service that serves these calls over HTTP/2 or, behind
    /// `tonic_web::GrpcWebLayer`, over gRPC-Web.
    pub fn into_server(self) -> ExtServer {
        let metrics = self.logic.metrics.clone();
        RejectBadRequests::new(LogicExtServiceServer::new(self), metrics)
    }

    /// Authenticates the calling user from the metadata of `request`, then runs `handler` as
    /// that user. A failed check ends the call with UNAUTHENTICATED.
    async fn as_user<'a, T, R, F>(
        &'a self,
        method: Method,
        request: Request<T>,
        handler: impl FnOnce(&'a Logic, Caller, T) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<R, LogicError>>,
    {
        let credentials = Credentials::from_metadata(request.metadata());
        let ids = CallIds::new(
            credentials.claimed_user_id(),
            credentials.claimed_device_id(),
            0,
        );
        let body = request.into_inner();
        let logic = &*self.logic;
        let call = async move {
            let caller = caller::authenticate(logic, &credentials).await?;
            handler(logic, caller, body).await
        };
        respond(logic, method, &ids, call).await
    }
}

#[tonic::async_trait]
impl LogicExtService for ExtService {
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        self.as_user(Method::Logout, request, revoke::logout).await
    }

    async fn kick_device(
        &self,
        request: Request<KickDeviceRequest>,
    ) -> Result<Response<KickDeviceReply>, Status> {
        let credentials = Credentials::from_metadata(request.metadata());
        let request = request.into_inner();
        let ids = CallIds::new(request.user_id, request.device_id, 0);
        let allowed = self.check_back_end_call();
        let call = async {
            allowed?;
            revoke::kick_device(&self.logic, &credentials, request).await
        };
        respond(&self.logic, Method::KickDevice, &ids, call).await
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let ids = CallIds::default();
        let call = register::register(&self.logic, request.into_inner());
        respond(&self.logic, Method::Register, &ids, call).await
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        self.as_user(Method::GetUser, request, users::get_user)
            .await
    }

    async fn find_user(
        &self,
        request: Request<FindUserRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        self.as_user(Method::FindUser, request, users::find_user)
            .await
    }

    async fn request_friend(
        &self,
        request: Request<FriendRequest>,
    ) -> Result<Response<FriendReply>, Status> {
        self.as_user(Method::RequestFriend, request, friends::request_friend)
            .await
    }

    async fn accept_friend(
        &self,
        request: Request<FriendRequest>,
    ) -> Result<Response<FriendReply>, Status> {
        self.as_user(Method::AcceptFriend, request, friends::accept_friend)
            .await
    }

    async fn list_friends(
        &self,
        request: Request<ListFriendsRequest>,
    ) -> Result<Response<ListFriendsReply>, Status> {
        self.as_user(Method::ListFriends, request, friends::list_friends)
            .await
    }

    async fn remove_friend(
        &self,
        request: Request<FriendRequest>,
    ) -> Result<Response<FriendReply>, Status> {
        self.as_user(Method::RemoveFriend, request, friends::remove_friend)
            .await
    }

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        self.as_user(Method::CreateGroup, request, groups::create_group)
            .await
    }

    async fn add_group_members(
        &self,
        request: Request<GroupMembersRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        self.as_user(Method::AddGroupMembers, request, groups::add_group_members)
            .await
    }

    async fn remove_group_members(
        &self,
        request: Request<GroupMembersRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        self.as_user(
            Method::RemoveGroupMembers,
            request,
            groups::remove_group_members,
        )
        .await
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsReply>, Status> {
        self.as_user(Method::ListGroups, request, groups::list_groups)
            .await
    }

    async fn get_group(
        &self,
        request: Request<GetGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        self.as_user(Method::GetGroup, request, groups::get_group)
            .await
    }

    async fn server_send(
        &self,
        request: Request<ServerSendRequest>,
    ) -> Result<Response<SendReply>, Status> {
        let credentials = Credentials::from_metadata(request.metadata());
        let request = request.into_inner();
        let ids = CallIds::new(request.sender_user_id, 0, 0);
        let allowed = self.check_back_end_call();
        let call = async {
            allowed?;
            messages::server_send(&self.logic, &credentials, request).await
        };
        respond(&self.logic, Method::ServerSend, &ids, call).await
    }
}

/// `LogicExtServiceServer` that rejects an empty or undecodable request with INVALID_ARGUMENT.
pub type ExtServer = RejectBadRequests<LogicExtServiceServer<ExtService>>;
