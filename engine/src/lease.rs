//! This node's lease with the logic tier. A task on the bridge's tokio runtime calls
//! `DeviceIntService.RenewLease` every `lease_interval_ms`. When the renewals stop, because the
//! node died or lost the logic tier, the lease lapses after `lease_ttl_ms`. The logic tier then
//! removes the online status of this node's devices and stops pushing to it.
//!
//! The incarnation is random per start, so the logic tier distinguishes a restarted node at the same
//! address from the run before it and clears that run's statuses.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use im_proto::{NodeLeaseRequest, OnlineDevice, RestoreOnlineRequest};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::bridge::LogicClient;
use crate::registry::DeviceMap;

/// Devices per RestoreOnline call, the logic tier's limit.
const RESTORE_CHUNK: usize = 1000;

/// Settings of the renewal task.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    pub(crate) logic_url: String,
    pub(crate) node: String,
    pub(crate) interval: Duration,
    pub(crate) ttl: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// Secret sent with every renewal, like the bridge's calls. An empty one sends none.
    pub(crate) internal_secret: String,
}

/// The running renewal task.
pub(crate) struct Lease {
    /// The renewal task, and whether [`Lease::stop`] stopped it.
    task: Mutex<(AbortHandle, bool)>,
    incarnation: u64,
    /// Inputs of the renewal task, kept so that [`Lease::resume`] can start it again.
    client: LogicClient,
    config: LeaseConfig,
    devices: Arc<DeviceMap>,
    runtime: tokio::runtime::Handle,
}

impl Lease {
    /// Starts renewing on `runtime` and waits up to the call deadline for the first renewal, so
    /// that devices signing in afterwards are counted under this incarnation. A first renewal
    /// that fails or is late is logged; the task keeps trying.
    ///
    /// # Errors
    /// The logic URL does not parse.
    pub(crate) fn start(
        config: LeaseConfig,
        devices: Arc<DeviceMap>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, crate::EngineError> {
        let client = crate::bridge::logic_client(
            &config.logic_url,
            config.connect_timeout,
            config.call_timeout,
            &config.internal_secret,
            runtime,
        )?;
        // Zero is not a valid incarnation for the logic tier.
        let incarnation = rand::random::<u64>().max(1);
        let (first_done, first) = mpsc::channel();
        let wait = config.call_timeout;
        let task = runtime
            .spawn(renew_forever(
                client.clone(),
                config.clone(),
                devices.clone(),
                incarnation,
                false,
                first_done,
            ))
            .abort_handle();
        if first.recv_timeout(wait).is_err() {
            warn!("first lease renewal did not finish in time; renewals go on in the background");
        }
        info!(incarnation, "lease renewals started");
        Ok(Self {
            task: Mutex::new((task, false)),
            incarnation,
            client,
            config,
            devices,
            runtime: runtime.clone(),
        })
    }

    /// Returns this run's incarnation.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Stops renewing; the lease lapses `lease_ttl_ms` after the last renewal.
    pub(crate) fn stop(&self) {
        let mut task = self.task();
        task.0.abort();
        task.1 = true;
    }

    /// Starts renewing again after [`Lease::stop`], under the same incarnation. When the lease
    /// lapsed meanwhile, the first renewal's reply requests this node's devices, as after any
    /// lapse. The new task also reports the devices once, in case a report was still due when
    /// renewals stopped. Does nothing unless renewals were stopped.
    pub(crate) fn resume(&self) {
        let mut task = self.task();
        if !task.1 {
            return;
        }
        // An aborted task may not have seen its abort yet; it ends at its next await.
        task.0.abort();
        // No caller waits for this task's first renewal.
        let (first_done, _) = mpsc::channel();
        let handle = self
            .runtime
            .spawn(renew_forever(
                self.client.clone(),
                self.config.clone(),
                self.devices.clone(),
                self.incarnation,
                true,
                first_done,
            ))
            .abort_handle();
        *task = (handle, false);
        info!(incarnation = self.incarnation, "lease renewals resumed");
    }

    fn task(&self) -> std::sync::MutexGuard<'_, (AbortHandle, bool)> {
        // The guarded handle stays valid even if a holder panicked.
        self.task.lock().unwrap_or_else(|err| err.into_inner())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task().0.abort();
    }
}

async fn renew_forever(
    mut client: LogicClient,
    config: LeaseConfig,
    devices: Arc<DeviceMap>,
    incarnation: u64,
    mut report_pending: bool,
    first_done: mpsc::Sender<()>,
) {
    let request = NodeLeaseRequest {
        node: config.node.clone(),
        incarnation,
        ttl_ms: u32::try_from(config.ttl.as_millis()).unwrap_or(u32::MAX),
    };
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let call = client.renew_lease(request.clone());
        match tokio::time::timeout(config.call_timeout, call).await {
            Ok(Ok(reply)) => {
                if failing {
                    info!(node = %config.node, "lease renewal succeeded again");
                }
                failing = false;
                debug!(node = %config.node, "lease renewed");
                // The logic tier requests a report only once, so a failed report is retried after
                // each renewal until it succeeds.
                report_pending |= reply.into_inner().resync;
                if report_pending {
                    report_pending = !restore(&mut client, &config, &devices, incarnation).await;
                }
            }
            Ok(Err(status)) => {
                failing = true;
                warn!(node = %config.node, code = ?status.code(), error = %status.message(), "lease renewal failed; retrying at the next interval");
            }
            Err(_) => {
                failing = true;
                warn!(node = %config.node, "lease renewal timed out; retrying at the next interval");
            }
        }
        // Only the first send matters; the receiver is gone after start returned.
        let _ = first_done.send(());
    }
}

/// Reports every signed-in device of this node to the logic tier, which writes the online
/// status of those that have none (after Redis lost it, or after this node's lease lapsed).
/// Returns false when a call failed.
async fn restore(
    client: &mut LogicClient,
    config: &LeaseConfig,
    devices: &DeviceMap,
    incarnation: u64,
) -> bool {
    if devices.is_empty() {
        return true;
    }
    let snapshot: Vec<OnlineDevice> = devices
        .iter()
        .map(|entry| OnlineDevice {
            user_id: entry.value().user_id,
            device_id: *entry.key(),
            conn_id: entry.value().conn.0,
        })
        .collect();
    let mut restored = 0u64;
    for chunk in snapshot.chunks(RESTORE_CHUNK) {
        let request = RestoreOnlineRequest {
            node: config.node.clone(),
            incarnation,
            devices: chunk.to_vec(),
        };
        match tokio::time::timeout(config.call_timeout, client.restore_online(request)).await {
            Ok(Ok(reply)) => restored += u64::from(reply.into_inner().restored),
            Ok(Err(status)) => {
                warn!(node = %config.node, code = ?status.code(), error = %status.message(), "online status report failed; retrying after the next renewal");
                return false;
            }
            Err(_) => {
                warn!(node = %config.node, "online status report timed out; retrying after the next renewal");
                return false;
            }
        }
    }
    info!(
        node = %config.node,
        reported = snapshot.len(),
        restored,
        "reported signed-in devices to the logic tier"
    );
    true
}
