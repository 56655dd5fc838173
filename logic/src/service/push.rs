//! Pushing a stored message to the online devices of its recipients.
//!
//! The online status of every recipient user is read through the Redis pipeline at once. The
//! devices are grouped by the engine node of their connection, and each node gets one
//! `ConnectIntService.Deliver` call that carries all of its targets. A push that fails is logged
//! and dropped: the message is already stored, and the devices it missed get it by SYNC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use im_proto::v1::{DeliverRequest, Delivery, DeliveryTarget, Message};

use super::lease::LapsedNodes;
use super::messages::Sender;
use super::WarnLimiter;
use crate::engine::{EngineCallError, EngineClients};
use crate::error::{ErrorChain, LogicError};
use crate::metrics::{DeliverResult, Recorder};
use crate::store::pg::user_seq::Copy;
use crate::store::redis::{OnlineDevice, RedisStore};

/// Pushes stored messages to engine nodes. Cheap to clone: each push runs in its own task.
#[derive(Clone)]
pub struct Pusher {
    redis: RedisStore,
    engines: EngineClients,
    /// Rate limit of the warnings about failed status reads and Deliver calls.
    warnings: Arc<WarnLimiter>,
    /// Push latency and Deliver call outcomes.
    metrics: Arc<Recorder>,
    /// Nodes whose lease lapsed: their statuses are being removed, and nothing is pushed there.
    lapsed: LapsedNodes,
}

/// Deliver calls of one push, grouped by engine node address.
type TargetsByNode = HashMap<String, Vec<DeliveryTarget>>;

impl Pusher {
    /// Creates a pusher that reads online status from `redis`, calls nodes through `engines`
    /// except those in `lapsed`, and records its outcomes in `metrics`.
    pub fn new(
        redis: RedisStore,
        engines: EngineClients,
        warnings: Arc<WarnLimiter>,
        metrics: Arc<Recorder>,
        lapsed: LapsedNodes,
    ) -> Pusher {
        Pusher {
            redis,
            engines,
            warnings,
            metrics,
            lapsed,
        }
    }

    /// Starts pushing `message` to every online device of the users in `copies`, except the
    /// sending device. The push runs in a spawned task, so the caller does not wait for it.
    /// `replied_at` is when the send's reply was ready; push latency is measured from it.
    ///
    /// NOTE: pushes in flight are not capped. Each one ends within the Redis deadline plus
    /// `engine_call_timeout_ms`, so their number is bounded by the send rate times that time.
    pub fn spawn(&self, message: Message, copies: Vec<Copy>, sender: Sender, replied_at: Instant) {
        tokio::spawn(self.clone().push(message, copies, sender, replied_at));
    }

    /// Pushes `message` and returns once every node has replied or failed.
    pub async fn push(
        self,
        message: Message,
        copies: Vec<Copy>,
        sender: Sender,
        replied_at: Instant,
    ) {
        let users: Vec<_> = copies.iter().map(|copy| copy.user).collect();
        let statuses = self.redis.online_devices(&users).await;
        let mut by_node = self.group_targets(&copies, statuses, sender, message.message_id);
        by_node.retain(|node, _| !self.lapsed.contains(node));
        let calls = by_node
            .into_iter()
            .map(|(node, targets)| self.deliver(node, message.clone(), targets, replied_at));
        futures::future::join_all(calls).await;
    }

    fn group_targets(
        &self,
        copies: &[Copy],
        statuses: Vec<Result<Vec<OnlineDevice>, LogicError>>,
        sender: Sender,
        message_id: u64,
    ) -> TargetsByNode {
        let mut readable = Vec::with_capacity(copies.len());
        for (copy, status) in copies.iter().zip(statuses) {
            match status {
                Ok(devices) => readable.push((*copy, devices)),
                Err(err) => self.warn_status_failed(copy, message_id, &err),
            }
        }
        group_by_node(readable, sender)
    }

    async fn deliver(
        &self,
        node: String,
        message: Message,
        targets: Vec<DeliveryTarget>,
        replied_at: Instant,
    ) {
        let message_id = message.message_id;
        let target_count = targets.len();
        let request = DeliverRequest {
            deliveries: vec![Delivery {
                message: Some(message),
                targets,
            }],
        };
        let outcome = self.engines.deliver(&node, request).await;
        self.record_deliver(&outcome, replied_at);
        match outcome {
            Ok(reply) => tracing::debug!(
                msg_id = message_id,
                node = %node,
                delivered = reply.delivered,
                missed = reply.missed,
                "message pushed"
            ),
            Err(err) => {
                let error = ErrorChain(&err);
                match self.warnings.admit() {
                    Some(suppressed) => tracing::warn!(
                        msg_id = message_id,
                        node = %node,
                        targets = target_count,
                        %error,
                        suppressed,
                        "push to engine node failed; its devices get the message by SYNC"
                    ),
                    None => tracing::debug!(
                        msg_id = message_id,
                        node = %node,
                        targets = target_count,
                        %error,
                        "push to engine node failed"
                    ),
                }
            }
        }
    }

    fn record_deliver<T>(&self, outcome: &Result<T, EngineCallError>, replied_at: Instant) {
        match outcome {
            Ok(_) => {
                self.metrics.observe_push(replied_at.elapsed());
                self.metrics.record_deliver(DeliverResult::Ok);
            }
            Err(err) => self.metrics.record_deliver(deliver_failure(err)),
        }
    }

    fn warn_status_failed(&self, copy: &Copy, message_id: u64, err: &LogicError) {
        let error = ErrorChain(err);
        match self.warnings.admit() {
            Some(suppressed) => tracing::warn!(
                user_id = copy.user.0,
                msg_id = message_id,
                %error,
                suppressed,
                "cannot read online status; the user's devices get the message by SYNC"
            ),
            None => tracing::debug!(
                user_id = copy.user.0,
                msg_id = message_id,
                %error,
                "cannot read online status"
            ),
        }
    }
}

/// Classifies a failed Deliver call. tonic reports its own client deadline as CANCELLED.
fn deliver_failure(err: &EngineCallError) -> DeliverResult {
    match err {
        EngineCallError::InvalidAddress { .. } => DeliverResult::InvalidAddress,
        EngineCallError::Call(status) => match status.code() {
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => DeliverResult::Timeout,
            tonic::Code::Unavailable => DeliverResult::Unavailable,
            _ => DeliverResult::Failed,
        },
    }
}

/// Groups the online devices of each copy's user by node, with the copy's seq, leaving out the
/// sending device: it has the reply already. A back end's device 0 is never online, so a
/// ServerSend reaches every device of the sender.
fn group_by_node(copies: Vec<(Copy, Vec<OnlineDevice>)>, sender: Sender) -> TargetsByNode {
    let mut by_node = TargetsByNode::new();
    for (copy, devices) in copies {
        for online in devices {
            if copy.user == sender.user && online.device == sender.device {
                continue;
            }
            by_node
                .entry(online.conn.node)
                .or_default()
                .push(DeliveryTarget {
                    device_id: online.device.0,
                    conn_id: online.conn.conn_id.0,
                    seq: copy.seq,
                });
        }
    }
    by_node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConnId, ConnRef, DeviceId, UserId};

    fn online(device: u64, node: &str, conn_id: u64) -> OnlineDevice {
        OnlineDevice {
            device: DeviceId(device),
            conn: ConnRef {
                node: node.to_owned(),
                conn_id: ConnId(conn_id),
            },
        }
    }

    fn target(device_id: u64, conn_id: u64, seq: u64) -> DeliveryTarget {
        DeliveryTarget {
            device_id,
            conn_id,
            seq,
        }
    }

    #[test]
    fn targets_are_grouped_by_node_without_sending_device() {
        let sender = Sender {
            user: UserId(1),
            device: DeviceId(10),
        };
        let copies = vec![
            (
                Copy {
                    user: UserId(1),
                    seq: 4,
                },
                vec![online(10, "a:1", 100), online(11, "b:1", 101)],
            ),
            (
                Copy {
                    user: UserId(2),
                    seq: 9,
                },
                vec![online(20, "a:1", 200), online(21, "b:1", 201)],
            ),
            (
                Copy {
                    user: UserId(3),
                    seq: 1,
                },
                Vec::new(),
            ),
        ];

        let by_node = group_by_node(copies, sender);

        assert_eq!(by_node.len(), 2);
        assert_eq!(by_node["a:1"], vec![target(20, 200, 9)]);
        assert_eq!(by_node["b:1"], vec![target(11, 101, 4), target(21, 201, 9)]);
    }

    #[test]
    fn deliver_failures_are_classified() {
        let cases = [
            (
                tonic::Status::cancelled("Timeout expired"),
                DeliverResult::Timeout,
            ),
            (
                tonic::Status::deadline_exceeded("late"),
                DeliverResult::Timeout,
            ),
            (
                tonic::Status::unavailable("refused"),
                DeliverResult::Unavailable,
            ),
            (tonic::Status::internal("broken"), DeliverResult::Failed),
        ];
        for (status, expected) in cases {
            let code = status.code();
            let result = deliver_failure(&EngineCallError::Call(status));
            assert_eq!(result, expected, "{code:?}");
        }
    }

    #[test]
    fn server_send_reaches_every_sender_device() {
        let sender = Sender {
            user: UserId(1),
            device: DeviceId(0),
        };
        let copies = vec![(
            Copy {
                user: UserId(1),
                seq: 2,
            },
            vec![online(10, "a:1", 100)],
        )];

        let by_node = group_by_node(copies, sender);

        assert_eq!(by_node["a:1"], vec![target(10, 100, 2)]);
    }
}
