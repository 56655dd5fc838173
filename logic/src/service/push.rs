//! Pushing stored messages to the online devices of their recipients.
//!
//! The send batcher hands each committed batch to one routing task, in commit order. The task
//! reads the online status of every recipient user of the batch at once, through the Redis
//! pipeline, and queues each message's targets on the queue of their engine node. Each node
//! has one task that takes every queued delivery, up to [`DELIVER_BATCH_MAX`], and sends them
//! in one `ConnectIntService.Deliver` call, one call at a time. So a node gets one call per
//! batch of messages instead of one per message, and each device gets its messages in seq
//! order. A push that fails is logged and dropped: the message is already stored, and the
//! devices it missed get it by SYNC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use im_proto::v1::{DeliverRequest, Delivery, DeliveryTarget, Message};
use tokio::sync::mpsc;

use super::lease::LapsedNodes;
use super::messages::Sender;
use super::WarnLimiter;
use crate::engine::{EngineCallError, EngineClients};
use crate::error::{ErrorChain, LogicError};
use crate::ids::UserId;
use crate::metrics::{DeliverResult, Recorder};
use crate::store::pg::user_seq::Copy;
use crate::store::redis::{OnlineDevice, RedisStore};

/// Maximum deliveries (one message with its targets on one node) per Deliver call.
pub const DELIVER_BATCH_MAX: usize = 512;

/// Committed batches waiting for the routing task. A batch beyond it is not pushed.
const ROUTE_QUEUE: usize = 4096;

/// Deliveries waiting for one node's Deliver call. A delivery beyond it is not pushed.
const NODE_QUEUE: usize = 65_536;

/// Node queues kept before the map is emptied. Engine nodes are few, so reaching it means that
/// node addresses change often (for example on every restart) and old ones are no longer needed.
const MAX_NODE_QUEUES: usize = 1024;

/// One stored message to push: its copies and its sender.
pub struct Push {
    /// The message; each delivery target carries its own seq.
    pub message: Message,
    /// The recipient users and the seq of each one's copy.
    pub copies: Vec<Copy>,
    /// The sending device, which gets no push.
    pub sender: Sender,
    /// When the send's reply was ready; push latency is measured from it.
    pub replied_at: Instant,
}

/// Pushes stored messages to engine nodes. Cheap to clone: every clone feeds the same routing
/// task.
#[derive(Clone)]
pub struct Pusher {
    routes: mpsc::Sender<Vec<Push>>,
    shared: Arc<Shared>,
}

/// State shared by the routing task and the node tasks.
struct Shared {
    redis: RedisStore,
    engines: EngineClients,
    /// Rate limit of the warnings about failed status reads and Deliver calls.
    warnings: Arc<WarnLimiter>,
    /// Push latency and Deliver call outcomes.
    metrics: Arc<Recorder>,
    /// Nodes whose lease lapsed: their statuses are being removed, and nothing is pushed there.
    lapsed: LapsedNodes,
    /// The queue of each node's Deliver task, by node address.
    nodes: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
}

/// One message for one node, with the node's targets.
struct Queued {
    delivery: Delivery,
    replied_at: Instant,
}

/// Deliver targets of one push, grouped by engine node address.
type TargetsByNode = HashMap<String, Vec<DeliveryTarget>>;

impl Pusher {
    /// Creates a pusher that reads online status from `redis`, calls nodes through `engines`
    /// except those in `lapsed`, and records its outcomes in `metrics`. Spawns the routing task
    /// on the current tokio runtime; it stops once every clone is dropped.
    pub fn new(
        redis: RedisStore,
        engines: EngineClients,
        warnings: Arc<WarnLimiter>,
        metrics: Arc<Recorder>,
        lapsed: LapsedNodes,
    ) -> Pusher {
        let shared = Arc::new(Shared {
            redis,
            engines,
            warnings,
            metrics,
            lapsed,
            nodes: Mutex::new(HashMap::new()),
        });
        let (routes, queued) = mpsc::channel(ROUTE_QUEUE);
        tokio::spawn(route(shared.clone(), queued));
        Pusher { routes, shared }
    }

    /// Queues the messages of one committed batch for pushing, in order, and returns at once.
    /// Each message goes to every online device of the users in its copies, except the
    /// sending device. Call it in commit order, so each device gets its messages in seq order.
    pub fn push_batch(&self, pushes: Vec<Push>) {
        if pushes.is_empty() {
            return;
        }
        if let Err(err) = self.routes.try_send(pushes) {
            let dropped = match &err {
                mpsc::error::TrySendError::Full(pushes)
                | mpsc::error::TrySendError::Closed(pushes) => pushes.len(),
            };
            self.shared
                .warn_dropped("the push routing queue is full or closed", dropped);
        }
    }
}

impl Pusher {
    /// Queues `deliveries` for `node` as they are, past the routing task and whether or not the
    /// node's lease is taken for lapsed, and returns at once. For catching up the devices of a
    /// node that just reported them after a lapse.
    pub fn push_to_node(&self, node: &str, deliveries: Vec<Delivery>) {
        let now = Instant::now();
        for delivery in deliveries {
            self.shared.enqueue(node.to_owned(), delivery, now);
        }
    }
}

/// Routes each committed batch, in order, to the queues of the nodes of its targets.
async fn route(shared: Arc<Shared>, mut queued: mpsc::Receiver<Vec<Push>>) {
    while let Some(pushes) = queued.recv().await {
        shared.route_batch(pushes).await;
    }
    tracing::debug!("push routing task stopped: every pusher was dropped");
}

impl Shared {
    async fn route_batch(self: &Arc<Self>, pushes: Vec<Push>) {
        let mut users: Vec<UserId> = pushes
            .iter()
            .flat_map(|push| push.copies.iter().map(|copy| copy.user))
            .collect();
        users.sort_unstable();
        users.dedup();
        let statuses = self.redis.online_devices(&users).await;
        let mut online: HashMap<UserId, Result<Vec<OnlineDevice>, LogicError>> =
            users.into_iter().zip(statuses).collect();
        for push in pushes {
            let copies = self.readable_copies(&push, &mut online);
            let mut by_node = group_by_node(copies, push.sender);
            by_node.retain(|node, _| !self.lapsed.contains(node));
            for (node, targets) in by_node {
                let delivery = Delivery {
                    message: Some(push.message.clone()),
                    targets,
                };
                self.enqueue(node, delivery, push.replied_at);
            }
        }
    }

    /// Returns each copy of `push` with the online devices of its user, warning about the
    /// users whose status could not be read.
    fn readable_copies(
        &self,
        push: &Push,
        online: &mut HashMap<UserId, Result<Vec<OnlineDevice>, LogicError>>,
    ) -> Vec<(Copy, Vec<OnlineDevice>)> {
        let mut readable = Vec::with_capacity(push.copies.len());
        for copy in &push.copies {
            match online.get(&copy.user) {
                Some(Ok(devices)) => readable.push((*copy, devices.clone())),
                Some(Err(err)) => self.warn_status_failed(copy, push.message.message_id, err),
                None => {}
            }
        }
        readable
    }

    /// Queues `delivery` for `node`, starting the node's Deliver task on first use.
    fn enqueue(self: &Arc<Self>, node: String, delivery: Delivery, replied_at: Instant) {
        let queued = Queued {
            delivery,
            replied_at,
        };
        // A poisoned lock only means another caller panicked while inserting; the map itself
        // is still valid.
        let mut nodes = self.nodes.lock().unwrap_or_else(|err| err.into_inner());
        if !nodes.contains_key(&node) && nodes.len() >= MAX_NODE_QUEUES {
            // Dropping a queue's sender ends its task once the queue is drained.
            nodes.clear();
        }
        let queue = nodes.entry(node.clone()).or_insert_with(|| {
            let (queue, receiver) = mpsc::channel(NODE_QUEUE);
            tokio::spawn(deliver_to_node(self.clone(), node.clone(), receiver));
            queue
        });
        if queue.try_send(queued).is_err() {
            drop(nodes);
            self.warn_dropped("the node's push queue is full", 1);
        }
    }

    fn warn_dropped(&self, reason: &str, messages: usize) {
        match self.warnings.admit() {
            Some(suppressed) => tracing::warn!(
                messages,
                reason,
                suppressed,
                "push dropped; its devices get the messages by SYNC"
            ),
            None => tracing::debug!(messages, reason, "push dropped"),
        }
    }

    /// Sends one Deliver call with the deliveries of `batch` and logs its outcome.
    async fn deliver(&self, node: &str, batch: Vec<Queued>) {
        let replied_at: Vec<Instant> = batch.iter().map(|queued| queued.replied_at).collect();
        let target_count: usize = batch
            .iter()
            .map(|queued| queued.delivery.targets.len())
            .sum();
        let request = DeliverRequest {
            deliveries: batch.into_iter().map(|queued| queued.delivery).collect(),
        };
        let messages = request.deliveries.len();
        let outcome = self.engines.deliver(node, request).await;
        self.record_deliver(&outcome, &replied_at);
        match outcome {
            Ok(reply) => tracing::debug!(
                node = %node,
                messages,
                delivered = reply.delivered,
                missed = reply.missed,
                "messages pushed"
            ),
            Err(err) => {
                let error = ErrorChain(&err);
                match self.warnings.admit() {
                    Some(suppressed) => tracing::warn!(
                        node = %node,
                        messages,
                        targets = target_count,
                        %error,
                        suppressed,
                        "push to engine node failed; its devices get the messages by SYNC"
                    ),
                    None => tracing::debug!(
                        node = %node,
                        messages,
                        targets = target_count,
                        %error,
                        "push to engine node failed"
                    ),
                }
            }
        }
    }

    fn record_deliver<T>(&self, outcome: &Result<T, EngineCallError>, replied_at: &[Instant]) {
        match outcome {
            Ok(_) => {
                for replied_at in replied_at {
                    self.metrics.observe_push(replied_at.elapsed());
                }
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

/// Sends the deliveries queued for `node`, up to [`DELIVER_BATCH_MAX`] per Deliver call and
/// one call at a time, until the queue's sender is dropped.
async fn deliver_to_node(shared: Arc<Shared>, node: String, mut queue: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(DELIVER_BATCH_MAX);
    while queue.recv_many(&mut batch, DELIVER_BATCH_MAX).await > 0 {
        shared.deliver(&node, std::mem::take(&mut batch)).await;
    }
    tracing::debug!(node = %node, "push task of engine node stopped");
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
