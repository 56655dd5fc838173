//! Pushing stored messages, and notices of friend and group changes, to the online devices of
//! their recipients.
//!
//! The send batchers hand each committed batch to one routing task, in commit order. The task
//! reads the online status of every recipient user of the batch at once, as one Redis pipeline
//! job, and queues each message's targets on the queue of their engine node. The reads of up to
//! `ROUTE_READS_IN_FLIGHT` batches run at once, and their targets are queued in the order the
//! batches came. So the status read of a large group delays the batches behind it only by what
//! is left of that read.
//!
//! Each node has one task that takes every queued delivery, up to [`DELIVER_BATCH_MAX`], and
//! sends them in `ConnectIntService.Deliver` calls of at most [`DELIVER_BATCH_MAX_BYTES`] each,
//! one call at a time. So a node gets one call per batch of messages instead of one per message, and
//! each device gets its messages in seq order. A push that fails is logged and dropped: the
//! message is already stored, and the devices it missed get it by SYNC.
//! `im_logic_push_targets_total` counts the devices of each Deliver call by its outcome, and
//! `im_logic_pushes_dropped_total` what a full queue dropped, and
//! `im_logic_push_status_failures_total` the recipients whose status could not be read.
//!
//! Notices take the same path: the routing task reads the online status of their users and
//! queues one delivery per node. A node's task sends them in Deliver calls of their own, never
//! with messages, so that a node too old to know notices rejects only those calls. A notice
//! that is not pushed is lost: devices learn the change when they list friends and groups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};
use im_proto::v1::{
    DeliverReply, DeliverRequest, Delivery, DeliveryTarget, Message, Notice, NoticeKind,
};
use prost::Message as _;
use tokio::sync::mpsc;

use super::lease::LapsedNodes;
use super::messages::Sender;
use super::WarnLimiter;
use crate::engine::{EngineCallError, EngineClients};
use crate::error::{ErrorChain, LogicError};
use crate::ids::UserId;
use crate::metrics::{DeliverResult, PushKind, Recorder};
use crate::store::pg::user_seq::Copy;
use crate::store::redis::{OnlineDevice, RedisStore};

/// Maximum deliveries (one message or notice with its targets on one node) per Deliver call.
pub const DELIVER_BATCH_MAX: usize = 512;

/// Maximum encoded bytes of the deliveries of one Deliver call. The engine's gRPC server
/// (tonic 0.14) decodes at most 4 MiB by default and rejects a larger call as a whole. A
/// delivery that alone passes this limit goes in a call of its own. Its content is at most
/// `max_content_bytes` (1 MiB at most) and each target takes at most 35 bytes, so it passes the
/// engine's limit only with about 90,000 targets on one node.
pub const DELIVER_BATCH_MAX_BYTES: usize = 3 << 20;

/// Committed batches waiting for the routing task. A batch beyond it is not pushed.
const ROUTE_QUEUE: usize = 4096;

/// Batches and notices whose online statuses the routing task reads at once.
const ROUTE_READS_IN_FLIGHT: usize = 8;

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

/// Pushes stored messages and notices to engine nodes. Cheap to clone: every clone feeds the
/// same routing task.
#[derive(Clone)]
pub struct Pusher {
    routes: mpsc::Sender<Route>,
    shared: Arc<Shared>,
}

/// Work for the routing task.
enum Route {
    /// The messages of one committed batch.
    Messages(Vec<Push>),
    /// A notice for every online device of `users`.
    Notice { notice: Notice, users: Vec<UserId> },
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

/// One message or notice for one node, with the node's targets.
struct Queued {
    delivery: Delivery,
    /// When the send's reply was ready, for a message; `None` for a notice, whose push latency
    /// is not measured.
    replied_at: Option<Instant>,
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
        let count = pushes.len();
        if self.routes.try_send(Route::Messages(pushes)).is_err() {
            self.shared.drop_pushes(
                PushKind::Message,
                count,
                "the push routing queue is full or closed",
            );
        }
    }

    /// Queues `notice` for every online device of `users` and returns at once. Call it only
    /// after the change that the notice reports has committed.
    pub fn push_notice(&self, notice: Notice, users: &[UserId]) {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        tracing::debug!(
            kind = ?notice_kind(&notice),
            user_id = notice.actor_user_id,
            room_id = notice.group_id,
            users = users.len(),
            "notice queued"
        );
        let route = Route::Notice { notice, users };
        if self.routes.try_send(route).is_err() {
            self.shared.drop_pushes(
                PushKind::Notice,
                1,
                "the push routing queue is full or closed",
            );
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
            self.shared.enqueue(node.to_owned(), delivery, Some(now));
        }
    }
}

/// A route with the online statuses of its users.
enum Read {
    Messages {
        pushes: Vec<Push>,
        online: HashMap<UserId, Result<Vec<OnlineDevice>, LogicError>>,
    },
    Notice {
        notice: Notice,
        users: Vec<UserId>,
        statuses: Vec<Result<Vec<OnlineDevice>, LogicError>>,
    },
}

/// Routes each committed batch and each notice to the queues of the nodes of its targets, in
/// the order they came, reading the statuses of up to [`ROUTE_READS_IN_FLIGHT`] at once.
async fn route(shared: Arc<Shared>, mut queued: mpsc::Receiver<Route>) {
    let mut reading = FuturesOrdered::new();
    let mut open = true;
    while open || !reading.is_empty() {
        tokio::select! {
            // Queue what was read before taking more, so the reads in flight stay bounded.
            biased;
            Some(read) = reading.next(), if !reading.is_empty() => shared.queue_read(read),
            route = queued.recv(), if open && reading.len() < ROUTE_READS_IN_FLIGHT => {
                match route {
                    Some(route) => reading.push_back(shared.clone().read(route)),
                    None => open = false,
                }
            }
        }
    }
    tracing::debug!("push routing task stopped: every pusher was dropped");
}

impl Shared {
    /// Reads the online status of every user of `route`.
    async fn read(self: Arc<Self>, route: Route) -> Read {
        match route {
            Route::Messages(pushes) => {
                let mut users: Vec<UserId> = pushes
                    .iter()
                    .flat_map(|push| push.copies.iter().map(|copy| copy.user))
                    .collect();
                users.sort_unstable();
                users.dedup();
                let statuses = self.redis.online_devices(&users).await;
                let online = users.into_iter().zip(statuses).collect();
                Read::Messages { pushes, online }
            }
            Route::Notice { notice, users } => {
                let statuses = self.redis.online_devices(&users).await;
                Read::Notice {
                    notice,
                    users,
                    statuses,
                }
            }
        }
    }

    /// Queues the deliveries of a route whose statuses were read.
    fn queue_read(self: &Arc<Self>, read: Read) {
        match read {
            Read::Messages { pushes, online } => self.queue_batch(pushes, online),
            Read::Notice {
                notice,
                users,
                statuses,
            } => self.queue_notice(&notice, &users, statuses),
        }
    }

    fn queue_batch(
        self: &Arc<Self>,
        pushes: Vec<Push>,
        mut online: HashMap<UserId, Result<Vec<OnlineDevice>, LogicError>>,
    ) {
        for push in pushes {
            let copies = self.readable_copies(&push, &mut online);
            let mut by_node = group_by_node(copies, push.sender);
            by_node.retain(|node, _| !self.lapsed.contains(node));
            for (node, targets) in by_node {
                let delivery = Delivery {
                    message: Some(push.message.clone()),
                    targets,
                    notice: None,
                };
                self.enqueue(node, delivery, Some(push.replied_at));
            }
        }
    }

    /// Queues one notice-only delivery per node for the online devices of `users`, the device
    /// whose call made the change included.
    fn queue_notice(
        self: &Arc<Self>,
        notice: &Notice,
        users: &[UserId],
        statuses: Vec<Result<Vec<OnlineDevice>, LogicError>>,
    ) {
        let mut by_node = TargetsByNode::new();
        for (user, status) in users.iter().zip(statuses) {
            let devices = match status {
                Ok(devices) => devices,
                Err(err) => {
                    self.warn_notice_status_failed(*user, notice, &err);
                    continue;
                }
            };
            for online in devices {
                add_target(&mut by_node, online, 0);
            }
        }
        by_node.retain(|node, _| !self.lapsed.contains(node));
        for (node, targets) in by_node {
            let delivery = Delivery {
                message: None,
                targets,
                notice: Some(notice.clone()),
            };
            self.enqueue(node, delivery, None);
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
    fn enqueue(self: &Arc<Self>, node: String, delivery: Delivery, replied_at: Option<Instant>) {
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
        if let Err(err) = queue.try_send(queued) {
            drop(nodes);
            let kind = kind_of(&err.into_inner());
            self.drop_pushes(kind, 1, "the node's push queue is full");
        }
    }

    /// Counts and logs `count` pushes of `kind` dropped for `reason`.
    fn drop_pushes(&self, kind: PushKind, count: usize, reason: &str) {
        self.metrics.record_pushes_dropped(kind, count as u64);
        match self.warnings.admit() {
            Some(suppressed) => tracing::warn!(
                kind = kind.label(),
                count,
                reason,
                suppressed,
                recovery = recovery(kind),
                "push dropped"
            ),
            None => tracing::debug!(kind = kind.label(), count, reason, "push dropped"),
        }
    }

    /// Sends one Deliver call with the deliveries of `batch`, all messages or all notices as
    /// `kind` names, and logs its outcome.
    async fn deliver(&self, node: &str, kind: PushKind, batch: Vec<Queued>) {
        let replied_at: Vec<Instant> = batch
            .iter()
            .filter_map(|queued| queued.replied_at)
            .collect();
        let target_count: usize = batch
            .iter()
            .map(|queued| queued.delivery.targets.len())
            .sum();
        let request = DeliverRequest {
            deliveries: batch.into_iter().map(|queued| queued.delivery).collect(),
        };
        let deliveries = request.deliveries.len();
        let outcome = self.engines.deliver(node, request).await;
        self.record_deliver(kind, &outcome, &replied_at, target_count);
        match outcome {
            Ok(reply) => tracing::debug!(
                node = %node,
                kind = kind.label(),
                deliveries,
                delivered = reply.delivered,
                missed = reply.missed,
                "pushed to engine node"
            ),
            Err(err) => {
                let error = ErrorChain(&err);
                match self.warnings.admit() {
                    Some(suppressed) => tracing::warn!(
                        node = %node,
                        kind = kind.label(),
                        deliveries,
                        targets = target_count,
                        %error,
                        suppressed,
                        recovery = recovery(kind),
                        "push to engine node failed"
                    ),
                    None => tracing::debug!(
                        node = %node,
                        kind = kind.label(),
                        deliveries,
                        targets = target_count,
                        %error,
                        "push to engine node failed"
                    ),
                }
            }
        }
    }

    fn record_deliver(
        &self,
        kind: PushKind,
        outcome: &Result<DeliverReply, EngineCallError>,
        replied_at: &[Instant],
        targets: usize,
    ) {
        match outcome {
            Ok(reply) => {
                for replied_at in replied_at {
                    self.metrics.observe_push(replied_at.elapsed());
                }
                self.metrics.record_deliver(DeliverResult::Ok);
                let (delivered, missed) = target_counts(targets, reply);
                self.metrics.record_push_targets(kind, delivered, missed, 0);
            }
            Err(err) => {
                self.metrics.record_deliver(deliver_failure(err));
                self.metrics.record_push_targets(kind, 0, 0, targets as u64);
            }
        }
    }

    fn warn_notice_status_failed(&self, user: UserId, notice: &Notice, err: &LogicError) {
        self.metrics.record_status_reads_failed(PushKind::Notice, 1);
        let error = ErrorChain(err);
        let kind = notice_kind(notice);
        match self.warnings.admit() {
            Some(suppressed) => tracing::warn!(
                user_id = user.0,
                ?kind,
                %error,
                suppressed,
                "cannot read online status; the user's devices get no notice of the change"
            ),
            None => tracing::debug!(
                user_id = user.0,
                ?kind,
                %error,
                "cannot read online status for a notice"
            ),
        }
    }

    fn warn_status_failed(&self, copy: &Copy, message_id: u64, err: &LogicError) {
        self.metrics
            .record_status_reads_failed(PushKind::Message, 1);
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

/// Returns the delivered and missed targets of a Deliver call to `targets` devices that got
/// `reply`. A target that the reply does not account for counts as missed: a node whose shard
/// stopped during the call leaves its targets out of both counts.
fn target_counts(targets: usize, reply: &DeliverReply) -> (u64, u64) {
    let delivered = u64::from(reply.delivered);
    let missed = (targets as u64)
        .saturating_sub(delivered)
        .max(reply.missed.into());
    (delivered, missed)
}

/// Returns what `queued` carries.
fn kind_of(queued: &Queued) -> PushKind {
    match queued.delivery.notice {
        Some(_) => PushKind::Notice,
        None => PushKind::Message,
    }
}

/// Returns how the devices that a failed push of `kind` missed catch up.
fn recovery(kind: PushKind) -> &'static str {
    match kind {
        PushKind::Message => "the devices get the messages by SYNC",
        PushKind::Notice => "the devices learn the changes when they list friends and groups",
    }
}

/// Sends the deliveries queued for `node`, up to [`DELIVER_BATCH_MAX`] per Deliver call and
/// one call at a time, until the queue's sender is dropped. Each run of [`split_runs`] goes in
/// a call of its own, in queue order.
async fn deliver_to_node(shared: Arc<Shared>, node: String, mut queue: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(DELIVER_BATCH_MAX);
    while queue.recv_many(&mut batch, DELIVER_BATCH_MAX).await > 0 {
        for (kind, run) in split_runs(std::mem::take(&mut batch), DELIVER_BATCH_MAX_BYTES) {
            shared.deliver(&node, kind, run).await;
        }
    }
    tracing::debug!(node = %node, "push task of engine node stopped");
}

/// Cuts `batch` wherever it turns from messages to notices or back, and wherever the next
/// delivery would take a run past `max_bytes` encoded, and returns the runs in queue order.
/// So no Deliver call mixes the two kinds or grows past what the engine decodes, and devices
/// still get messages and notices in the order they were queued. Each run contains at least
/// one delivery.
fn split_runs(mut batch: Vec<Queued>, max_bytes: usize) -> Vec<(PushKind, Vec<Queued>)> {
    let mut runs = Vec::new();
    while let Some(first) = batch.first() {
        let kind = kind_of(first);
        let mut bytes = 0;
        let length = batch
            .iter()
            .enumerate()
            .take_while(|(index, queued)| {
                bytes += queued.delivery.encoded_len();
                kind_of(queued) == kind && (*index == 0 || bytes <= max_bytes)
            })
            .count();
        let rest = batch.split_off(length);
        runs.push((kind, batch));
        batch = rest;
    }
    runs
}

/// Returns the notice's kind, or UNSPECIFIED for a number this build does not know.
fn notice_kind(notice: &Notice) -> NoticeKind {
    NoticeKind::try_from(notice.kind).unwrap_or(NoticeKind::Unspecified)
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

/// Adds `online` to the targets of its node, with `seq` (0 for a notice).
fn add_target(by_node: &mut TargetsByNode, online: OnlineDevice, seq: u64) {
    by_node
        .entry(online.conn.node)
        .or_default()
        .push(DeliveryTarget {
            device_id: online.device.0,
            conn_id: online.conn.conn_id.0,
            seq,
        });
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
            add_target(&mut by_node, online, copy.seq);
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

    fn queued(message_id: u64, notice: bool) -> Queued {
        let delivery = if notice {
            Delivery {
                notice: Some(Notice {
                    group_id: message_id,
                    ..Notice::default()
                }),
                ..Delivery::default()
            }
        } else {
            Delivery {
                message: Some(Message {
                    message_id,
                    ..Message::default()
                }),
                ..Delivery::default()
            }
        };
        Queued {
            delivery,
            replied_at: None,
        }
    }

    /// Returns the kind and the ids (message id or notice group id) of each run.
    #[test]
    fn unaccounted_targets_count_as_missed() {
        let reply = |delivered, missed| DeliverReply { delivered, missed };

        assert_eq!(target_counts(3, &reply(1, 2)), (1, 2));
        assert_eq!(target_counts(3, &reply(0, 0)), (0, 3));
        assert_eq!(target_counts(3, &reply(2, 0)), (2, 1));
        // A node that counts more than it was sent is taken at its word.
        assert_eq!(target_counts(1, &reply(1, 1)), (1, 1));
    }

    fn run_ids(runs: &[(PushKind, Vec<Queued>)]) -> Vec<(PushKind, Vec<u64>)> {
        let id = |queued: &Queued| match (&queued.delivery.message, &queued.delivery.notice) {
            (Some(message), _) => message.message_id,
            (None, Some(notice)) => notice.group_id,
            (None, None) => 0,
        };
        runs.iter()
            .map(|(kind, run)| (*kind, run.iter().map(id).collect()))
            .collect()
    }

    #[test]
    fn batch_splits_into_runs_of_one_kind() {
        let batch = vec![
            queued(1, false),
            queued(2, false),
            queued(3, true),
            queued(4, false),
            queued(5, true),
            queued(6, true),
        ];

        let runs = split_runs(batch, DELIVER_BATCH_MAX_BYTES);

        assert_eq!(
            run_ids(&runs),
            vec![
                (PushKind::Message, vec![1, 2]),
                (PushKind::Notice, vec![3]),
                (PushKind::Message, vec![4]),
                (PushKind::Notice, vec![5, 6]),
            ]
        );
    }

    #[test]
    fn batch_of_one_kind_is_one_run() {
        let runs = split_runs(
            vec![queued(1, false), queued(2, false)],
            DELIVER_BATCH_MAX_BYTES,
        );
        assert_eq!(run_ids(&runs), vec![(PushKind::Message, vec![1, 2])]);
        assert!(split_runs(Vec::new(), DELIVER_BATCH_MAX_BYTES).is_empty());
    }

    /// Returns a queued message delivery whose content takes `content_bytes`.
    fn queued_with_content(message_id: u64, content_bytes: usize) -> Queued {
        let mut queued = queued(message_id, false);
        if let Some(message) = queued.delivery.message.as_mut() {
            message.content = vec![b'x'; content_bytes].into();
        }
        queued
    }

    #[test]
    fn batch_splits_before_passing_byte_limit() {
        let size = queued_with_content(1, 1000).delivery.encoded_len();
        // Room for two deliveries and part of a third.
        let max_bytes = 2 * size + size / 2;
        let batch = (1..=5)
            .map(|message_id| queued_with_content(message_id, 1000))
            .collect();

        let runs = split_runs(batch, max_bytes);

        assert_eq!(
            run_ids(&runs),
            vec![
                (PushKind::Message, vec![1, 2]),
                (PushKind::Message, vec![3, 4]),
                (PushKind::Message, vec![5]),
            ]
        );
    }

    #[test]
    fn delivery_over_byte_limit_goes_alone() {
        let batch = vec![
            queued_with_content(1, 10),
            queued_with_content(2, 5000),
            queued_with_content(3, 10),
        ];

        let runs = split_runs(batch, 1000);

        assert_eq!(
            run_ids(&runs),
            vec![
                (PushKind::Message, vec![1]),
                (PushKind::Message, vec![2]),
                (PushKind::Message, vec![3]),
            ]
        );
    }

    #[test]
    fn full_batch_of_largest_messages_fits_engine_limit() {
        // The default max_content_bytes; the engine's server decodes 4 MiB.
        let batch: Vec<Queued> = (1..=DELIVER_BATCH_MAX as u64)
            .map(|message_id| queued_with_content(message_id, 16_384))
            .collect();

        let runs = split_runs(batch, DELIVER_BATCH_MAX_BYTES);

        let delivered: usize = runs.iter().map(|(_, run)| run.len()).sum();
        assert_eq!(delivered, DELIVER_BATCH_MAX);
        for (_, run) in runs {
            let request = DeliverRequest {
                deliveries: run.into_iter().map(|queued| queued.delivery).collect(),
            };
            assert!(request.encoded_len() < 4 * 1024 * 1024);
        }
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
