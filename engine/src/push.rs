//! The engine's gRPC server, ConnectIntService: the logic tier's way to act on
//! connections of this node. Calls are routed to the owning shard's inbox.

use std::sync::Arc;

use im_proto::connect_int_service_server::ConnectIntService;
use im_proto::{
    DeliverReply, DeliverRequest, Delivery, KickReason, KickReply, KickRequest, Packet, PacketType,
};
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::inbox::{InboxSender, PushPayload, ShardMessage, TargetedPush};
use crate::metrics::Histogram;
use crate::registry::ConnId;

/// Serves ConnectIntService for one node.
pub(crate) struct PushService {
    inboxes: Vec<InboxSender>,
    deliver_seconds: Arc<Histogram>,
}

impl PushService {
    pub(crate) fn new(inboxes: Vec<InboxSender>, deliver_seconds: Arc<Histogram>) -> Self {
        Self {
            inboxes,
            deliver_seconds,
        }
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

    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        let started = std::time::Instant::now();
        let mut per_shard: Vec<Vec<TargetedPush>> =
            (0..self.inboxes.len()).map(|_| Vec::new()).collect();
        let mut missed = 0u32;
        for (index, mut delivery) in request.into_inner().deliveries.into_iter().enumerate() {
            let payload = Arc::new(take_payload(index, &mut delivery)?);
            for target in delivery.targets {
                match per_shard.get_mut(ConnId(target.conn_id).shard()) {
                    Some(items) => items.push(TargetedPush {
                        payload: payload.clone(),
                        target,
                    }),
                    None => missed += 1,
                }
            }
        }
        let mut replies = Vec::new();
        for (inbox, items) in self.inboxes.iter().zip(per_shard) {
            if items.is_empty() {
                continue;
            }
            let targets = u32::try_from(items.len()).unwrap_or(u32::MAX);
            let (reply, counts) = futures::channel::oneshot::channel();
            inbox.send(ShardMessage::Deliver { items, reply });
            replies.push((targets, counts));
        }
        let mut delivered = 0u32;
        for (targets, counts) in replies {
            // A stopped shard drops the reply: its targets count as missed, and they sync later.
            let (shard_delivered, shard_missed) = counts.await.unwrap_or((0, targets));
            delivered += shard_delivered;
            missed += shard_missed;
        }
        self.deliver_seconds.observe(started.elapsed());
        Ok(Response::new(DeliverReply { delivered, missed }))
    }
}

/// Takes what `delivery` pushes: its message, or its notice encoded once as a NOTICE packet.
///
/// # Errors
///
/// INVALID_ARGUMENT, naming the delivery's index, when it has both a message and a notice or
/// neither. The call is then rejected as a whole, before any target is written to.
fn take_payload(index: usize, delivery: &mut Delivery) -> Result<PushPayload, Status> {
    match (delivery.message.take(), delivery.notice.take()) {
        (Some(mut message), None) => {
            // Each target gets its own seq, added by the shard.
            message.seq = 0;
            Ok(PushPayload::Message(message.encode_to_vec()))
        }
        (None, Some(notice)) => {
            let packet = Packet {
                r#type: PacketType::Notice as i32,
                data: notice.encode_to_vec().into(),
                ..Packet::default()
            };
            Ok(PushPayload::Notice(packet.encode_to_vec()))
        }
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "delivery {index} has both a message and a notice; send one per delivery"
        ))),
        (None, None) => Err(Status::invalid_argument(format!(
            "delivery {index} has neither a message nor a notice"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use im_proto::{DeliveryTarget, Message};

    use super::*;
    use crate::inbox::inbox;

    fn target(shard: usize, slot: usize) -> DeliveryTarget {
        DeliveryTarget {
            device_id: 1,
            conn_id: ConnId::new(shard, 1, slot).0,
            seq: 1,
        }
    }

    #[test]
    fn stopped_shard_targets_count_as_missed() {
        let (sender, receiver) = inbox();
        // The shard has stopped: nothing receives its inbox.
        drop(receiver);
        let service = PushService::new(vec![sender], Arc::default());
        let request = DeliverRequest {
            deliveries: vec![Delivery {
                message: Some(Message::default()),
                // Two targets on the stopped shard, one on a shard this node lacks.
                targets: vec![target(0, 1), target(0, 2), target(3, 1)],
                notice: None,
            }],
        };

        let reply = futures::executor::block_on(service.deliver(Request::new(request)))
            .expect("deliver")
            .into_inner();

        assert_eq!(reply.delivered, 0);
        assert_eq!(reply.missed, 3);
    }
}
