//! The `DeviceIntService` server: calls from engine nodes on behalf of devices, mapped onto the
//! RPC group modules.

use std::sync::Arc;

use im_proto::v1::device_int_service_server::DeviceIntService;
use im_proto::v1::{
    AckReply, ConnAckManyReply, ConnAckManyRequest, ConnAckRequest, ConnLoginRequest,
    ConnLogoutReply, ConnLogoutRequest, ConnSendManyReply, ConnSendManyRequest, ConnSendRequest,
    ConnSignInManyReply, ConnSignInManyRequest, ConnSignInReply, ConnSignInRequest,
    ConnSyncRequest, LoginReply, NodeLeaseReply, NodeLeaseRequest, OfflineManyReply,
    OfflineManyRequest, OfflineReply, OfflineRequest, RegisterReply, RegisterRequest,
    RestoreOnlineReply, RestoreOnlineRequest, SendReply, SyncReply,
};
use tonic::{Request, Response, Status};

use super::{auth, lease, messages, presence, register, respond, revoke, CallIds, Logic};
use crate::metrics::Method;

/// The `DeviceIntService` server: calls from engine nodes on behalf of devices.
#[derive(Clone)]
pub struct DeviceService {
    logic: Arc<Logic>,
}

impl DeviceService {
    /// Serves calls with `logic`.
    pub fn new(logic: Arc<Logic>) -> DeviceService {
        DeviceService { logic }
    }
}

#[tonic::async_trait]
impl DeviceIntService for DeviceService {
    async fn logout(
        &self,
        request: Request<ConnLogoutRequest>,
    ) -> Result<Response<ConnLogoutReply>, Status> {
        let request = request.into_inner();
        let mut ids = CallIds::device(request.device.as_ref());
        ids.conn_id = request.conn.as_ref().map_or(0, |conn| conn.conn_id);
        let call = revoke::logout_device(&self.logic, request);
        respond(&self.logic, Method::Logout, &ids, call).await
    }

    async fn renew_lease(
        &self,
        request: Request<NodeLeaseRequest>,
    ) -> Result<Response<NodeLeaseReply>, Status> {
        let ids = CallIds::default();
        let call = lease::renew(&self.logic, request.into_inner());
        respond(&self.logic, Method::RenewLease, &ids, call).await
    }

    async fn restore_online(
        &self,
        request: Request<RestoreOnlineRequest>,
    ) -> Result<Response<RestoreOnlineReply>, Status> {
        let ids = CallIds::default();
        let call = lease::restore_online(&self.logic, request.into_inner());
        respond(&self.logic, Method::RestoreOnline, &ids, call).await
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let ids = CallIds::default();
        let call = register::register(&self.logic, request.into_inner());
        respond(&self.logic, Method::Register, &ids, call).await
    }

    async fn conn_login(
        &self,
        request: Request<ConnLoginRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::new(
            0,
            request.login.as_ref().map_or(0, |login| login.device_id),
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        );
        respond(
            &self.logic,
            Method::ConnLogin,
            &ids,
            auth::login(&self.logic, request, &ids),
        )
        .await
    }

    async fn conn_sign_in(
        &self,
        request: Request<ConnSignInRequest>,
    ) -> Result<Response<ConnSignInReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::sign_in(&request);
        respond(
            &self.logic,
            Method::ConnSignIn,
            &ids,
            auth::sign_in(&self.logic, request),
        )
        .await
    }

    async fn conn_sign_in_many(
        &self,
        request: Request<ConnSignInManyRequest>,
    ) -> Result<Response<ConnSignInManyReply>, Status> {
        let call = auth::sign_in_many(&self.logic, request.into_inner());
        respond(
            &self.logic,
            Method::ConnSignInMany,
            &CallIds::default(),
            call,
        )
        .await
    }

    async fn offline_many(
        &self,
        request: Request<OfflineManyRequest>,
    ) -> Result<Response<OfflineManyReply>, Status> {
        let call = presence::offline_many(&self.logic, request.into_inner());
        respond(&self.logic, Method::OfflineMany, &CallIds::default(), call).await
    }

    async fn offline(
        &self,
        request: Request<OfflineRequest>,
    ) -> Result<Response<OfflineReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::new(
            request.user_id,
            request.device_id,
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        );
        respond(
            &self.logic,
            Method::Offline,
            &ids,
            presence::offline(&self.logic, request),
        )
        .await
    }

    async fn send(&self, request: Request<ConnSendRequest>) -> Result<Response<SendReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::device(request.device.as_ref());
        let call = messages::send_from_device(&self.logic, request);
        respond(&self.logic, Method::Send, &ids, call).await
    }

    async fn send_many(
        &self,
        request: Request<ConnSendManyRequest>,
    ) -> Result<Response<ConnSendManyReply>, Status> {
        let call = messages::send_many(&self.logic, request.into_inner());
        respond(&self.logic, Method::SendMany, &CallIds::default(), call).await
    }

    async fn sync(&self, request: Request<ConnSyncRequest>) -> Result<Response<SyncReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::device(request.device.as_ref());
        let call = messages::sync(&self.logic, request);
        respond(&self.logic, Method::Sync, &ids, call).await
    }

    async fn ack(&self, request: Request<ConnAckRequest>) -> Result<Response<AckReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::device(request.device.as_ref());
        let call = messages::ack(&self.logic, request);
        respond(&self.logic, Method::Ack, &ids, call).await
    }

    async fn ack_many(
        &self,
        request: Request<ConnAckManyRequest>,
    ) -> Result<Response<ConnAckManyReply>, Status> {
        let call = messages::ack_many(&self.logic, request.into_inner());
        respond(&self.logic, Method::AckMany, &CallIds::default(), call).await
    }
}
