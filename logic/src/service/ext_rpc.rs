//! The `LogicExtService` server: the business API for back ends and tools. Every call except
//! Register, ServerSend and KickDevice first authenticates the calling user from the request
//! metadata; ServerSend and KickDevice check the server secret instead.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use im_proto::v1::logic_ext_service_server::{LogicExtService, LogicExtServiceServer};
use im_proto::v1::ErrorCode;
use im_proto::v1::{
    CreateGroupRequest, FindUserRequest, FriendReply, FriendRequest, GetGroupRequest,
    GetUserRequest, GroupInfo, GroupMembersRequest, KickDeviceReply, KickDeviceRequest,
    ListFriendsReply, ListFriendsRequest, ListGroupsReply, ListGroupsRequest, LogoutReply,
    LogoutRequest, RegisterReply, RegisterRequest, SendReply, ServerSendRequest, UserInfo,
};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::caller::{self, Caller, Credentials};
use super::{friends, groups, messages, register, respond, revoke, users, CallIds, Logic};
use crate::error::LogicError;
use crate::metrics::{Method, Recorder};

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
        ExtServer {
            metrics: self.logic.metrics.clone(),
            inner: LogicExtServiceServer::new(self),
        }
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

/// Start of the text of prost's `DecodeError`, which tonic-prost 0.14 (`from_decode_error`)
/// returns with code INTERNAL when a request message does not decode.
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";

/// Text of the INTERNAL status that tonic 0.14 (`Grpc::map_request_unary`) returns when the
/// request body ends before it contains one message.
const MISSING_MESSAGE: &str = "Missing request message.";

/// `LogicExtServiceServer` that rejects a request with INVALID_ARGUMENT and the `im-error-code`
/// of every other rejected call when its body is empty or its message does not decode (not
/// valid protobuf, or a string field that is not UTF-8). tonic returns INTERNAL without an
/// error code there, citing gRPC's table of status codes. But the caller sent the bad request
/// and is the one to fix it.
#[derive(Clone)]
pub struct ExtServer {
    inner: LogicExtServiceServer<ExtService>,
    /// Counts the rejected requests, which never reach a handler.
    metrics: Arc<Recorder>,
}

impl NamedService for ExtServer {
    const NAME: &'static str = <LogicExtServiceServer<ExtService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for ExtServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = call.await?;
            let Some(rejection) = reject_bad_request(&path, &response) else {
                return Ok(response);
            };
            if let Some(method) = method_of(&path) {
                metrics.record_request(method, ErrorCode::InvalidArgument, started.elapsed());
            }
            Ok(rejection)
        })
    }
}

/// Returns the method named by a request path such as `/im.v1.LogicExtService/FindUser`.
fn method_of(path: &str) -> Option<Method> {
    let name = path.rsplit('/').next()?;
    Method::ALL.into_iter().find(|method| method.name() == name)
}

/// Returns INVALID_ARGUMENT for a trailers-only response that reports an empty request body or
/// an undecodable request message, and `None` for every other response, which goes out
/// unchanged. tonic rejects such a request before the handler runs, so the response carries
/// its status in the headers.
fn reject_bad_request(path: &str, response: &http::Response<Body>) -> Option<http::Response<Body>> {
    let headers = response.headers();
    if headers.get("grpc-status").map(|value| value.as_bytes()) != Some(b"13") {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    if status.code() != Code::Internal {
        return None;
    }
    let err = if status.message() == MISSING_MESSAGE {
        LogicError::EmptyRequest
    } else if status.message().starts_with(DECODE_ERROR_PREFIX) {
        LogicError::Undecodable(status.message().to_owned())
    } else {
        return None;
    };
    tracing::debug!(path, error = %err, "request rejected before its handler");
    Some(Status::from(err).into_http())
}
