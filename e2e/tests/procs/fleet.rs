//! A set of device tasks over a set of users, with a shared [`Ledger`] of what they sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::device::{Device, DeviceReport, SendResult};
use super::ledger::Ledger;
use super::system::Account;

/// Devices of several users, in user order: `devices[i].user` is the user's index.
pub struct Fleet {
    pub devices: Vec<Device>,
    pub user_ids: Vec<u64>,
    pub ledger: Arc<Ledger>,
    next_id: AtomicU64,
}

impl Fleet {
    /// Starts a device task for every account and waits until all are online. Each device
    /// connects to `urls` of its user: `urls(user)`.
    pub async fn start(
        users: Vec<Vec<Account>>,
        urls: impl Fn(usize) -> Vec<String>,
    ) -> Arc<Fleet> {
        let user_ids = users.iter().map(|devices| devices[0].user_id()).collect();
        let mut devices = Vec::new();
        for (user, accounts) in users.into_iter().enumerate() {
            let urls = Arc::new(urls(user));
            for account in accounts {
                devices.push(Device::spawn(user, account, urls.clone()));
            }
        }
        let fleet = Fleet {
            devices,
            user_ids,
            ledger: Arc::new(Ledger::default()),
            next_id: AtomicU64::new(0),
        };
        let online = join_all(
            fleet
                .devices
                .iter()
                .map(|d| d.online(Duration::from_secs(30))),
        )
        .await;
        for (device, result) in fleet.devices.iter().zip(online) {
            if let Err(error) = result {
                panic!(
                    "device {} of user {} cannot get online: {error}",
                    device.device_id, device.user
                );
            }
        }
        Arc::new(fleet)
    }

    pub fn users(&self) -> usize {
        self.user_ids.len()
    }

    /// Sends a new message from device `index` to user `receiver`, and records it.
    pub async fn send(&self, index: usize, receiver: usize) -> (String, SendResult) {
        let device = &self.devices[index];
        let number = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("m{number}-u{}-d{}", device.user, device.device_id);
        let result = self.send_as(index, receiver, &id).await;
        (id, result)
    }

    /// Sends (or sends again) the message `client_msg_id` from device `index` to `receiver`.
    pub async fn send_as(&self, index: usize, receiver: usize, client_msg_id: &str) -> SendResult {
        let device = &self.devices[index];
        let content = format!("{client_msg_id} from user {}", device.user);
        let result = device
            .send(self.user_ids[receiver], client_msg_id, content)
            .await;
        self.ledger.record(
            client_msg_id,
            device.user,
            device.device_id,
            receiver,
            &result,
        );
        result
    }

    /// Every device sends one new message to the next user, all at once.
    pub async fn round(&self) -> Vec<(String, SendResult)> {
        let users = self.users();
        join_all(
            self.devices
                .iter()
                .enumerate()
                .map(|(index, device)| self.send(index, (device.user + 1) % users)),
        )
        .await
    }

    /// Sends every message that was never accepted again, with its own `client_msg_id`, until
    /// each is accepted; panics after `within`.
    pub async fn retry_until_accepted(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let pending = self.ledger.unaccepted();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} messages still not accepted after retrying for {within:?}: {:?}",
                pending.len(),
                pending.iter().take(5).collect::<Vec<_>>()
            );
            join_all(pending.iter().map(|(id, entry)| {
                let index = self.device_index(entry.sender_device_id);
                self.send_as(index, entry.receiver_user, id)
            }))
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn device_index(&self, device_id: u64) -> usize {
        self.devices
            .iter()
            .position(|device| device.device_id == device_id)
            .expect("a device of the fleet")
    }

    /// Finishes every device (final resync, SYNC from 0, close) and returns their reports.
    pub async fn finish(&self, within: Duration) -> Vec<DeviceReport> {
        let reports = join_all(self.devices.iter().map(|device| device.finish(within))).await;
        reports
            .into_iter()
            .zip(&self.devices)
            .map(|(report, device)| {
                report.unwrap_or_else(|error| {
                    panic!(
                        "device {} of user {} cannot finish: {error}",
                        device.device_id, device.user
                    )
                })
            })
            .collect()
    }
}
