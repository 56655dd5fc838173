//! Engine node leases: RenewLease from each node, and the reaper task that takes a node whose
//! lease lapsed for dead. The reaper removes the online status that names a dead node, and the
//! pusher skips dead nodes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use im_proto::v1::{
    Delivery, DeliveryTarget, NodeLeaseReply, NodeLeaseRequest, OnlineDevice, RestoreOnlineReply,
    RestoreOnlineRequest,
};
use tokio::task::JoinHandle;

use super::push::Pusher;
use super::{Logic, WarnLimiter};
use crate::error::{ErrorChain, LogicError};
use crate::ids::{is_node_char, DeviceId, UserId, NODE_MAX_BYTES};
use crate::metrics::Recorder;
use crate::store::pg::{messages, PgStore};
use crate::store::redis::RedisStore;

/// Interval between two reaper passes; a lapsed lease is acted on at most this late.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// At most one warning per this interval about failed reaper passes. A pass runs every
/// [`REAP_INTERVAL`], so a Redis outage logs one warning per 30 passes, each counting the
/// passes held back since the last one.
pub const REAPER_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Maximum online statuses one pass removes per lapsed node. A pass runs as one Lua script, so
/// this bounds how long it blocks Redis; the next passes remove the rest.
const REAP_BATCH: u32 = 1000;

/// How long a lapsed lease is remembered after its statuses are gone, in milliseconds. A node
/// is skipped by pushes while its lapsed lease is remembered.
const FORGET_AFTER_MS: u64 = 10 * 60 * 1000;

/// Delay before a reported node's devices are caught up a second time. Another logic instance
/// skips the node until its next reaper pass, so this second catch-up covers what it stored.
const CATCH_UP_AGAIN: Duration = Duration::from_secs(2);

/// Maximum lease a node may request, in milliseconds.
const MAX_TTL_MS: u32 = 10 * 60 * 1000;

/// The nodes whose lease lapsed, as the last reaper pass found them. Cheap to clone.
#[derive(Clone, Default)]
pub struct LapsedNodes {
    nodes: Arc<RwLock<HashSet<String>>>,
}

impl LapsedNodes {
    /// Returns whether `node`'s lease had lapsed at the last reaper pass.
    pub fn contains(&self, node: &str) -> bool {
        // A poisoned lock only means a writer panicked between two whole-set swaps.
        let nodes = self.nodes.read().unwrap_or_else(|err| err.into_inner());
        nodes.contains(node)
    }

    /// Forgets `node`'s lapse at once when it renews through this instance, so pushes to it
    /// resume without waiting for the next reaper pass.
    fn remove(&self, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|err| err.into_inner());
        nodes.remove(node);
    }

    fn replace(&self, lapsed: HashSet<String>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|err| err.into_inner());
        *nodes = lapsed;
    }
}

/// Renews the calling node's lease. A new incarnation at the same address clears the statuses
/// of the incarnation before it.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a node address that is not host:port, incarnation 0 or a TTL
/// outside 1 ms to 10 minutes; store errors.
pub async fn renew(logic: &Logic, request: NodeLeaseRequest) -> Result<NodeLeaseReply, LogicError> {
    validate(&request)?;
    let renewal = logic
        .redis
        .renew_lease(&request.node, request.incarnation, request.ttl_ms)
        .await?;
    let removed = renewal.removed;
    if logic.lapsed_nodes.contains(&request.node) {
        logic.lapsed_nodes.remove(&request.node);
    }
    if removed > 0 {
        logic.metrics.record_lease_statuses_removed(removed);
        tracing::info!(
            node = %request.node,
            incarnation = request.incarnation,
            removed,
            "engine node restarted; statuses of its previous run removed"
        );
    }
    if renewal.resync {
        tracing::debug!(node = %request.node, "node asked to report its devices");
    }
    Ok(NodeLeaseReply {
        resync: renewal.resync,
    })
}

/// Most devices one RestoreOnline call may carry; the engine sends larger sets in parts.
pub const RESTORE_MAX_DEVICES: usize = 1000;

/// Writes the online status of a node's signed-in devices after its lease reply requested
/// a resync, where a device has none.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a bad node address, incarnation 0, more than
/// [`RESTORE_MAX_DEVICES`] devices or a zero id; store errors.
pub async fn restore_online(
    logic: &Logic,
    request: RestoreOnlineRequest,
) -> Result<RestoreOnlineReply, LogicError> {
    let invalid = |field, reason| Err(LogicError::InvalidArgument { field, reason });
    validate_node(&request.node)?;
    if request.incarnation == 0 {
        return invalid("incarnation", "must not be 0");
    }
    if request.devices.len() > RESTORE_MAX_DEVICES {
        return invalid("devices", "at most 1000 per call");
    }

    let devices: Vec<(u64, u64, u64)> = request
        .devices
        .iter()
        .map(|device| (device.user_id, device.device_id, device.conn_id))
        .collect();
    if devices
        .iter()
        .any(|(user, device, conn)| *user == 0 || *device == 0 || *conn == 0)
    {
        return invalid("devices", "user, device and connection ids must not be 0");
    }

    let restored = logic.redis.restore_online(&request.node, &devices).await?;

    // Messages stored while the node's statuses were missing or its lease lapsed reached none
    // of these devices. So each device that has not acked its user's newest message gets that
    // message now, and the client SYNCs the gap before it. A failed catch-up leaves the device
    // to its next SYNC.
    catch_up(&logic.pg, &logic.pusher, &request.node, &request.devices).await;
    let (pg, pusher) = (logic.pg.clone(), logic.pusher.clone());
    let (node, reported) = (request.node.clone(), request.devices);
    tokio::spawn(async move {
        tokio::time::sleep(CATCH_UP_AGAIN).await;
        catch_up(&pg, &pusher, &node, &reported).await;
    });

    tracing::info!(
        node = %request.node,
        incarnation = request.incarnation,
        reported = devices.len(),
        restored,
        "online status restored from the node's report"
    );
    Ok(RestoreOnlineReply {
        restored: u32::try_from(restored).unwrap_or(u32::MAX),
    })
}

/// Pushes each device of `devices` at `node` its user's newest message when the device has not
/// acked it. Returns how many devices it pushed to, and logs a failed read.
async fn catch_up(pg: &PgStore, pusher: &Pusher, node: &str, devices: &[OnlineDevice]) -> usize {
    let pairs: Vec<(UserId, DeviceId)> = devices
        .iter()
        .map(|device| (UserId(device.user_id), DeviceId(device.device_id)))
        .collect();
    let unacked = match messages::newest_unacked(pg, &pairs).await {
        Ok(unacked) => unacked,
        Err(err) => {
            tracing::warn!(
                node = %node,
                devices = devices.len(),
                error = %ErrorChain(&err),
                "cannot read the messages the node's devices missed; they get them at their next SYNC"
            );
            return 0;
        }
    };
    let conns: HashMap<u64, u64> = devices
        .iter()
        .map(|device| (device.device_id, device.conn_id))
        .collect();
    let mut pushed = 0;
    let mut by_user: HashMap<UserId, Delivery> = HashMap::new();
    for missed in unacked {
        let Some(&conn_id) = conns.get(&missed.device.0) else {
            continue;
        };
        pushed += 1;
        let seq = missed.message.seq;
        by_user
            .entry(missed.user)
            .or_insert_with(|| Delivery {
                message: Some(missed.message),
                targets: Vec::new(),
                notice: None,
            })
            .targets
            .push(DeliveryTarget {
                device_id: missed.device.0,
                conn_id,
                seq,
            });
    }
    if pushed > 0 {
        tracing::info!(
            node = %node,
            devices = pushed,
            "pushing the newest message to reported devices that had not acked it"
        );
        pusher.push_to_node(node, by_user.into_values().collect());
    }
    pushed
}

fn validate_node(node: &str) -> Result<(), LogicError> {
    if node.is_empty() || node.len() > NODE_MAX_BYTES || !node.chars().all(is_node_char) {
        return Err(LogicError::InvalidArgument {
            field: "node",
            reason: "host:port of 1 to 255 bytes",
        });
    }
    Ok(())
}

fn validate(request: &NodeLeaseRequest) -> Result<(), LogicError> {
    let invalid = |field, reason| Err(LogicError::InvalidArgument { field, reason });
    validate_node(&request.node)?;
    if request.incarnation == 0 {
        return invalid("incarnation", "must not be 0");
    }
    if request.ttl_ms == 0 || request.ttl_ms > MAX_TTL_MS {
        return invalid("ttl_ms", "1 to 600000");
    }
    Ok(())
}

/// Starts the reaper task, which runs a pass every [`REAP_INTERVAL`] until it is aborted.
pub fn spawn_reaper(
    redis: RedisStore,
    lapsed: LapsedNodes,
    metrics: Arc<Recorder>,
    warnings: Arc<WarnLimiter>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(REAP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed_passes = 0u64;
        loop {
            ticks.tick().await;
            match reap_once(&redis, &lapsed, &metrics).await {
                Ok(()) if failed_passes > 0 => {
                    tracing::info!(failed_passes, "lease reaper pass succeeded again");
                    failed_passes = 0;
                }
                Ok(()) => {}
                Err(err) => {
                    failed_passes = failed_passes.saturating_add(1);
                    warn_failed(&warnings, &err);
                }
            }
        }
    })
}

/// Runs one reaper pass and updates `lapsed`.
async fn reap_once(
    redis: &RedisStore,
    lapsed: &LapsedNodes,
    metrics: &Recorder,
) -> Result<(), LogicError> {
    let nodes = redis.reap_leases(REAP_BATCH, FORGET_AFTER_MS).await?;
    for node in &nodes {
        if node.first {
            metrics.record_lease_reaped();
        }
        if node.removed > 0 {
            metrics.record_lease_statuses_removed(node.removed);
        }
        if node.first || node.removed > 0 {
            tracing::info!(
                node = %node.node,
                removed = node.removed,
                "engine node lease lapsed; its online statuses removed"
            );
        }
    }
    lapsed.replace(nodes.into_iter().map(|node| node.node).collect());
    Ok(())
}

fn warn_failed(warnings: &WarnLimiter, err: &LogicError) {
    let error = ErrorChain(err);
    match warnings.admit() {
        Some(suppressed) => {
            tracing::warn!(%error, suppressed, "lease reaper pass failed; retrying");
        }
        None => tracing::debug!(%error, "lease reaper pass failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(node: &str, incarnation: u64, ttl_ms: u32) -> NodeLeaseRequest {
        NodeLeaseRequest {
            node: node.to_owned(),
            incarnation,
            ttl_ms,
        }
    }

    #[test]
    fn lease_requests_are_validated() {
        assert!(validate(&request("127.0.0.1:7100", 1, 6000)).is_ok());
        assert!(validate(&request("", 1, 6000)).is_err());
        assert!(validate(&request("a|b", 1, 6000)).is_err());
        assert!(validate(&request(&"a".repeat(256), 1, 6000)).is_err());
        assert!(validate(&request("127.0.0.1:7100", 0, 6000)).is_err());
        assert!(validate(&request("127.0.0.1:7100", 1, 0)).is_err());
        assert!(validate(&request("127.0.0.1:7100", 1, MAX_TTL_MS + 1)).is_err());
    }

    #[test]
    fn lapsed_nodes_are_replaced_whole() {
        let lapsed = LapsedNodes::default();
        lapsed.replace(["a:1".to_owned()].into_iter().collect());
        assert!(lapsed.contains("a:1"));
        lapsed.replace(HashSet::new());
        assert!(!lapsed.contains("a:1"));
    }
}
