//! The record of every SEND a test made, and the final check that each accepted message is
//! stored once and delivered to every device of its recipients once and in order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use im_client::Message;

use super::device::{DeviceReport, SendResult};

/// One message a test tried to send, under one `client_msg_id`, possibly in several attempts.
#[derive(Debug, Clone)]
pub struct Entry {
    pub sender_user: usize,
    pub sender_device_id: u64,
    pub receiver_user: usize,
    /// Message id and the sender's seq from the first successful reply.
    pub accepted: Option<(u64, u64)>,
    /// Outcome labels of every attempt, in order.
    pub attempts: Vec<String>,
}

/// Every message a test sent, by `client_msg_id`. Shared between sending tasks.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Ledger {
    /// Records one attempt of the message `client_msg_id`.
    pub fn record(
        &self,
        client_msg_id: &str,
        sender_user: usize,
        sender_device_id: u64,
        receiver_user: usize,
        result: &SendResult,
    ) {
        let mut entries = self.entries.lock().expect("ledger lock");
        let entry = entries.entry(client_msg_id.to_owned()).or_insert(Entry {
            sender_user,
            sender_device_id,
            receiver_user,
            accepted: None,
            attempts: Vec::new(),
        });
        entry.attempts.push(result.outcome.label());
        if let Some(reply) = result.outcome.reply() {
            match entry.accepted {
                None => entry.accepted = Some((reply.message_id, reply.seq)),
                Some(first) => assert_eq!(
                    first,
                    (reply.message_id, reply.seq),
                    "a retried SEND of {client_msg_id} got another reply than the first"
                ),
            }
        }
    }

    pub fn entries(&self) -> BTreeMap<String, Entry> {
        self.entries.lock().expect("ledger lock").clone()
    }

    /// Number of attempts by outcome label.
    pub fn tally(&self) -> BTreeMap<String, usize> {
        let mut tally = BTreeMap::new();
        for entry in self.entries.lock().expect("ledger lock").values() {
            for label in &entry.attempts {
                *tally.entry(label.clone()).or_insert(0) += 1;
            }
        }
        tally
    }

    /// Client message ids that were tried but never accepted.
    pub fn unaccepted(&self) -> Vec<(String, Entry)> {
        self.entries
            .lock()
            .expect("ledger lock")
            .iter()
            .filter(|(_, entry)| entry.accepted.is_none())
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect()
    }
}

/// The figures of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Messages tried (distinct client message ids).
    pub sent: usize,
    /// Messages whose SEND got a reply with a seq.
    pub accepted: usize,
    /// Distinct messages found in the recipients' stored sequences.
    pub stored: usize,
    /// Messages delivered by the devices' inboxes, over all devices.
    pub delivered: usize,
    /// Accepted messages missing from a recipient's stored sequence or a device's inbox.
    pub lost: usize,
    /// Extra copies of a message in a stored sequence or an inbox.
    pub duplicated: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, accepted {}, stored {}, delivered {}, lost {}, duplicated {}",
            self.sent, self.accepted, self.stored, self.delivered, self.lost, self.duplicated
        )
    }
}

/// The outcome of [`verify`]: the figures, and a line for each fault found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub counts: Counts,
    pub problems: Vec<String>,
}

impl Verdict {
    /// Panics with the problems, the first 20 of them, when there are any.
    pub fn assert_clean(&self, test: &str) {
        println!("{test}: {}", self.counts);
        assert!(
            self.problems.is_empty() && self.counts.lost == 0 && self.counts.duplicated == 0,
            "{test}: {} ({} problems):\n{}",
            self.counts,
            self.problems.len(),
            self.problems
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Checks the devices' final reports against the ledger. `users` is the number of users;
/// every device of every user must have reported.
pub fn verify(ledger: &Ledger, reports: &[DeviceReport]) -> Verdict {
    let entries = ledger.entries();
    let mut verdict = Verdict::default();
    verdict.counts.sent = entries.len();
    verdict.counts.accepted = entries.values().filter(|e| e.accepted.is_some()).count();

    let mut by_user: BTreeMap<usize, Vec<&DeviceReport>> = BTreeMap::new();
    for report in reports {
        by_user.entry(report.user).or_default().push(report);
    }
    let mut stored_ids = std::collections::HashSet::new();
    for (user, devices) in &by_user {
        let stored = &devices[0].synced;
        check_stored_sequence(*user, stored, &entries, &mut verdict);
        for message in stored {
            stored_ids.insert(message.client_msg_id.clone());
        }
        for device in devices {
            check_same_sequence(device, stored, &mut verdict);
            check_inbox(device, &mut verdict);
        }
        check_accepted_present(*user, stored, &entries, &mut verdict);
    }
    verdict.counts.stored = stored_ids.len();
    verdict
}

/// Seqs 1..n without gaps, each known message once, nothing the test did not send.
fn check_stored_sequence(
    user: usize,
    stored: &[Message],
    entries: &BTreeMap<String, Entry>,
    verdict: &mut Verdict,
) {
    for (index, message) in stored.iter().enumerate() {
        if message.seq != index as u64 + 1 {
            verdict.problems.push(format!(
                "user {user}: SYNC from 0 has seq {} at position {}",
                message.seq,
                index + 1
            ));
            break;
        }
    }
    let mut copies: HashMap<(&str, u64), usize> = HashMap::new();
    for message in stored {
        *copies
            .entry((message.client_msg_id.as_str(), message.sender_device_id))
            .or_insert(0) += 1;
        if !entries.contains_key(&message.client_msg_id) {
            verdict.problems.push(format!(
                "user {user}: stored message {:?} (seq {}) was never sent",
                message.client_msg_id, message.seq
            ));
        }
    }
    for ((id, _), count) in copies {
        if count > 1 {
            verdict.counts.duplicated += count - 1;
            verdict
                .problems
                .push(format!("user {user}: message {id:?} stored {count} times"));
        }
    }
}

/// Checks that every device of a user sees the same stored sequence.
fn check_same_sequence(device: &DeviceReport, stored: &[Message], verdict: &mut Verdict) {
    if key(&device.synced) != key(stored) {
        verdict.problems.push(format!(
            "user {} device {}: SYNC from 0 differs from another device of the same user",
            device.user,
            device.account.device_id()
        ));
    }
}

/// Checks that the inbox delivered exactly the stored sequence, in order.
fn check_inbox(device: &DeviceReport, verdict: &mut Verdict) {
    verdict.counts.delivered += device.inbox.len();
    let delivered = key(&device.inbox);
    let stored = key(&device.synced);
    if delivered == stored {
        return;
    }
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (seq, _) in &delivered {
        *seen.entry(*seq).or_insert(0) += 1;
    }
    let extra: usize = seen.values().map(|count| count - 1).sum();
    let missing = stored
        .iter()
        .filter(|(seq, _)| !seen.contains_key(seq))
        .count();
    verdict.counts.duplicated += extra;
    verdict.counts.lost += missing;
    verdict.problems.push(format!(
        "user {} device {}: inbox delivered {} messages ({missing} missing, {extra} extra), \
         stored {}; first seqs delivered {:?}",
        device.user,
        device.account.device_id(),
        delivered.len(),
        stored.len(),
        delivered
            .iter()
            .take(10)
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>()
    ));
}

/// Checks that each accepted message of which `user` is a recipient is in the user's stored
/// sequence, with the message id of its reply.
fn check_accepted_present(
    user: usize,
    stored: &[Message],
    entries: &BTreeMap<String, Entry>,
    verdict: &mut Verdict,
) {
    let by_id: HashMap<&str, &Message> = stored
        .iter()
        .map(|message| (message.client_msg_id.as_str(), message))
        .collect();
    for (id, entry) in entries {
        let Some((message_id, seq)) = entry.accepted else {
            continue;
        };
        if entry.sender_user != user && entry.receiver_user != user {
            continue;
        }
        match by_id.get(id.as_str()) {
            None => {
                verdict.counts.lost += 1;
                verdict.problems.push(format!(
                    "user {user}: accepted message {id:?} is not stored"
                ));
            }
            Some(message) if message.message_id != message_id => verdict.problems.push(format!(
                "user {user}: message {id:?} has id {} but its reply said {message_id}",
                message.message_id
            )),
            Some(message) if entry.sender_user == user && message.seq != seq => {
                verdict.problems.push(format!(
                    "user {user}: own message {id:?} has seq {} but its reply said {seq}",
                    message.seq
                ))
            }
            Some(_) => {}
        }
    }
}

fn key(messages: &[Message]) -> Vec<(u64, u64)> {
    messages
        .iter()
        .map(|message| (message.seq, message.message_id))
        .collect()
}
