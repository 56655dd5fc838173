//! The engine's gRPC server, ConnectIntService: the logic tier's way to act on
//! connections of this node. Calls are routed to the owning shard's inbox.

use im_proto::connect_int_service_server::ConnectIntService;
use im_proto::{KickReason, KickReply, KickRequest};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::inbox::{InboxSender, ShardMessage};
use crate::registry::ConnId;

/// Serves ConnectIntService for one node.
pub(crate) struct PushService {
    inboxes: Vec<InboxSender>,
}

impl PushService {
    pub(crate) fn new(inboxes: Vec<InboxSender>) -> Self {
        Self { inboxes }
    }
}

#[tonic::async_trait]
impl ConnectIntService for PushService {
    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        let request = request.into_inner();
        let conn_id = ConnId(request.conn_id);
        let Some(inbox) = self.inboxes.get(conn_id.shard()) else {
            return Err(Status::invalid_argument(format!(
                "conn_id {} names shard {}, but this node has {} shards",
                request.conn_id,
                conn_id.shard(),
                self.inboxes.len()
            )));
        };
        let reason = KickReason::try_from(request.reason).unwrap_or(KickReason::Unspecified);
        let (reply, found) = futures::channel::oneshot::channel();
        inbox.send(ShardMessage::Kick {
            conn_id,
            device_id: request.device_id,
            reason,
            reply: Some(reply),
        });
        // A stopped shard drops the reply sender: the connection is gone either way.
        let found = found.await.unwrap_or(false);
        debug!(
            device_id = request.device_id,
            conn_id = request.conn_id,
            found,
            "kick handled"
        );
        Ok(Response::new(KickReply { found }))
    }
}
