//! Group commit of sends: many concurrent sends stored in one PostgreSQL transaction.
//!
//! Callers queue checked sends on a channel. One task takes every queued send, up to
//! `send_batch_max`, and stores them in one transaction of four round trips whatever the batch
//! size. Direct sends and group sends have a task each, so that a batch of group sends, which
//! writes one copy per member, never holds up the direct sends queued behind it. The first sends BEGIN and reads every permission and recipient list (pipelined). The
//! second takes every recipient's seqs in one statement, the new messages' ids, and then reads
//! the stored reply of every idempotency key (pipelined). The third gives back the seqs of sends
//! whose key turned out to be stored already, and stores the key of each new send, with its
//! message id and its sender's seq, and every copy (pipelined). The fourth is COMMIT. Then the
//! task replies to each caller and hands each new message to the push path. While one
//! transaction runs, the next batch fills.
//!
//! Each key is written once, with its final reply, so no row is updated after its insert. A
//! key's sender is always among its recipients, so by the time the keys are read, this
//! transaction has locked the user_seq row of every sender, in user order. Another transaction
//! that stores one of the keys locks that row too, until it commits. So it either committed
//! before the read, which then returns its key, or waits until this one ends. Should a key still be
//! stored meanwhile (the reads were not sent in order), the insert stores fewer keys than
//! expected, and the batch rolls back and runs again.
//!
//! A task runs its batches one at a time, so a user who receives k messages of a batch gets k
//! consecutive seqs in the order of the sends. The user_seq row lock orders the batches of the
//! other task and of other logic processes, and locking rows in user order keeps them free of
//! deadlocks. The engine waits for the reply of a device's SEND before it passes on the next,
//! so a device's sends are stored in the order it sent them, whichever task stores them. The
//! exception is a send that timed out at the engine while its transaction still ran: a later
//! send of the other kind can then take the sender's seq first. The device got TIMEOUT for
//! it, and a retry with the same `client_msg_id` returns what was stored. A send rejected by a check gets its own error. A store error fails the whole batch
//! and stores nothing, unless PostgreSQL rejected the data (SQLSTATE class 22 or 23): then each
//! send of the batch is stored alone, so only the one at fault fails. A send whose key is
//! already in the batch waits for the next batch, where it finds the first send's reply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_proto::v1::{ConversationType, SendReply};
use tokio::sync::{mpsc, oneshot};

use super::batch::batch_error;
use super::messages::{pushed_message, Draft, Sender, Stored};
use super::push::{Push, Pusher};
use crate::error::{ErrorChain, LogicError};
use crate::ids::{GroupId, MessageId, UserId};
use crate::store::pg::friendships::{self, DirectAccess};
use crate::store::pg::messages::{self, NewMessage};
use crate::store::pg::sent_messages::{self, SendKey, SentReply};
use crate::store::pg::transaction::Pipelined;
use crate::store::pg::user_seq::{self, Copy};
use crate::store::pg::{group_members, PgStore};

/// Attempts at storing one batch when a lock conflict or a key stored meanwhile rolls it back.
const STORE_ATTEMPTS: u32 = 3;

/// Queue length per batch slot: senders beyond `batch_max × QUEUE_FACTOR` wait for room, within
/// their own deadline.
const QUEUE_FACTOR: usize = 8;

/// Handle for queueing sends on the batching tasks. Cheap to clone; the tasks stop once every
/// handle is dropped.
#[derive(Clone)]
pub struct SendBatcher {
    /// Queue of the task that stores direct sends.
    direct: mpsc::Sender<Job>,
    /// Queue of the task that stores group sends.
    group: mpsc::Sender<Job>,
    timeout: Duration,
    counters: Arc<SendBatchCounters>,
}

/// Transactions and sends of the batching tasks together, for metrics and tests.
#[derive(Debug, Default)]
pub struct SendBatchCounters {
    batches: AtomicU64,
    sends: AtomicU64,
}

impl SendBatchCounters {
    /// Returns how many batch transactions the task has run so far, failed ones included.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Returns how many sends those transactions carried.
    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::Relaxed)
    }
}

struct Job {
    sender: Sender,
    draft: Draft,
    reply: oneshot::Sender<Result<Stored, LogicError>>,
}

impl Job {
    fn key(&self) -> SendKey<'_> {
        SendKey {
            sender_user: self.sender.user,
            sender_device: self.sender.device,
            client_msg_id: &self.draft.request.client_msg_id,
        }
    }
}

impl SendBatcher {
    /// Spawns the batching tasks, one for direct sends and one for group sends, on the current
    /// tokio runtime.
    ///
    /// `batch_max` caps the sends per transaction (at least 1); `timeout` is the deadline of one
    /// send, queueing included, and of one transaction.
    pub fn spawn(pg: PgStore, pusher: Pusher, batch_max: usize, timeout: Duration) -> SendBatcher {
        let batch_max = batch_max.max(1);
        let counters = Arc::new(SendBatchCounters::default());
        let spawn_lane = |pusher: Pusher| {
            let (tx, rx) = mpsc::channel(batch_max.saturating_mul(QUEUE_FACTOR));
            let worker = Worker {
                pg: pg.clone(),
                pusher,
                batch_max,
                counters: counters.clone(),
            };
            tokio::spawn(worker.run(rx));
            tx
        };
        let group = spawn_lane(pusher.clone());
        let direct = spawn_lane(pusher);
        SendBatcher {
            direct,
            group,
            timeout,
            counters,
        }
    }

    /// Returns the task's counters, which stay readable after the task stops.
    pub fn counters(&self) -> Arc<SendBatchCounters> {
        self.counters.clone()
    }

    /// Queues a checked send for the next batch of its kind and returns what its transaction
    /// stored.
    pub(super) async fn store(&self, sender: Sender, draft: Draft) -> Result<Stored, LogicError> {
        let queue = match draft.conversation {
            ConversationType::Group => &self.group,
            _ => &self.direct,
        };
        super::batch::queue_for_batch(queue, self.timeout, |reply| Job {
            sender,
            draft,
            reply,
        })
        .await
    }
}

struct Worker {
    pg: PgStore,
    pusher: Pusher,
    batch_max: usize,
    counters: Arc<SendBatchCounters>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut queued: Vec<Job> = Vec::with_capacity(self.batch_max);
        loop {
            if queued.is_empty() {
                if rx.recv_many(&mut queued, self.batch_max).await == 0 {
                    break;
                }
            } else {
                while queued.len() < self.batch_max {
                    match rx.try_recv() {
                        Ok(job) => queued.push(job),
                        Err(_) => break,
                    }
                }
            }
            // A caller that gave up has dropped its receiver; its send is not stored.
            queued.retain(|job| !job.reply.is_closed());
            let (batch, later) = split_batch(std::mem::take(&mut queued), self.batch_max);
            queued = later;
            if !batch.is_empty() {
                self.run_batch(batch).await;
            }
        }
        tracing::debug!("send batching task stopped: every handle was dropped");
    }

    async fn run_batch(&self, jobs: Vec<Job>) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .sends
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match self.pg.with_deadline(store_batch(&self.pg, &jobs)).await {
            Ok(outcomes) => self.reply_and_push(jobs, outcomes),
            Err(err) if jobs.len() > 1 && is_rejected_data(&err) => {
                // One send's data may have failed the whole transaction. Storing each alone
                // confines the failure to that send instead of failing the sends of every
                // batch it joins each time its device retries.
                tracing::warn!(
                    sends = jobs.len(),
                    error = %ErrorChain(&err),
                    "send batch rejected by PostgreSQL; storing its sends one at a time"
                );
                for job in jobs {
                    self.store_alone(job).await;
                }
            }
            Err(err) => {
                tracing::warn!(sends = jobs.len(), error = %ErrorChain(&err), "send batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(send_error(&err)));
                }
            }
        }
    }

    /// Stores one send of a rejected batch in its own transaction.
    async fn store_alone(&self, job: Job) {
        // A caller that timed out while earlier sends were stored alone has its TIMEOUT reply
        // already, so its send is skipped, as the batching loop skips it.
        if job.reply.is_closed() {
            return;
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let alone = std::slice::from_ref(&job);
        match self.pg.with_deadline(store_batch(&self.pg, alone)).await {
            Ok(outcomes) => self.reply_and_push(vec![job], outcomes),
            Err(err) => {
                tracing::warn!(
                    user_id = job.sender.user.0,
                    device_id = job.sender.device.0,
                    error = %ErrorChain(&err),
                    "send failed alone"
                );
                let _ = job.reply.send(Err(send_error(&err)));
            }
        }
    }

    /// Replies to each caller and hands the new messages to the pusher.
    fn reply_and_push(&self, jobs: Vec<Job>, outcomes: Vec<Result<Stored, LogicError>>) {
        let replied_at = Instant::now();
        let mut pushes = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            if let Some(push) = to_push(&job, &outcome, replied_at) {
                pushes.push(push);
            }
            // A caller that timed out meanwhile has dropped its receiver: nothing to do.
            let _ = job.reply.send(outcome);
        }
        // The task commits its batches one at a time, so they reach the pusher in commit order.
        // A batch of the other task that shares a user waits for this commit on the user's
        // user_seq row and then for two more round trips, so it comes after this one unless
        // this task is not scheduled meanwhile. A device that gets them the other way round
        // finds a seq gap and SYNCs.
        self.pusher.push_batch(pushes);
    }
}

/// Returns the error for the caller of a send that failed with `err`. Rejected data is the
/// send's own fault, so it gets INTERNAL, which a retry cannot mend, whether the send was alone
/// in its batch or stored alone after the batch failed. Other errors go through
/// [`batch_error`].
fn send_error(err: &LogicError) -> LogicError {
    if is_rejected_data(err) {
        LogicError::Internal(
            "PostgreSQL rejected the data of this message; sending it again fails the same way",
        )
    } else {
        batch_error(err)
    }
}

/// Tells whether PostgreSQL rejected the data of a statement: a data exception (SQLSTATE class
/// 22, such as a NUL byte in text) or a violated constraint (class 23). Such an error follows
/// the data of one send, while errors of other classes (a lost connection, a shutdown, a
/// timeout) would fail any transaction.
fn is_rejected_data(err: &LogicError) -> bool {
    let LogicError::Database(err) = err else {
        return false;
    };
    err.as_db_error()
        .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

/// Returns the push of a newly stored message, or `None` for a repeated or failed send.
fn to_push(job: &Job, outcome: &Result<Stored, LogicError>, replied_at: Instant) -> Option<Push> {
    let Ok(Stored::New { reply, copies }) = outcome else {
        return None;
    };
    Some(Push {
        message: pushed_message(job.sender, &job.draft, reply),
        copies: copies.clone(),
        sender: job.sender,
        replied_at,
    })
}

/// Splits queued sends into one batch of up to `batch_max` sends with distinct keys, in queue
/// order, and the sends left for later batches.
fn split_batch(queued: Vec<Job>, batch_max: usize) -> (Vec<Job>, Vec<Job>) {
    let mut batch = Vec::with_capacity(queued.len().min(batch_max));
    let mut later = Vec::new();
    let mut keys = HashSet::with_capacity(queued.len());
    for job in queued {
        let key = (
            job.sender.user,
            job.sender.device,
            job.draft.request.client_msg_id.clone(),
        );
        if batch.len() < batch_max && !keys.contains(&key) {
            keys.insert(key);
            batch.push(job);
        } else {
            later.push(job);
        }
    }
    (batch, later)
}

/// What the first round trip decided for one send.
enum Decision {
    /// A live row has the key: return its reply.
    Repeated(SentReply),
    /// The key is new and the sender may send to these recipients, in ascending order.
    Accepted { recipients: Vec<UserId> },
    /// A check failed: return the error.
    Rejected(LogicError),
}

/// Stores a batch and returns each send's outcome, in order. A transaction that PostgreSQL
/// aborts to break a deadlock (with a logic process of an older version, which locks keys
/// before seqs), or that finds one of its keys stored meanwhile, is run again.
async fn store_batch(
    pg: &PgStore,
    jobs: &[Job],
) -> Result<Vec<Result<Stored, LogicError>>, LogicError> {
    for attempt in 1..=STORE_ATTEMPTS {
        match try_store_batch(pg, jobs).await {
            Ok(Some(outcomes)) => return Ok(outcomes),
            Ok(None) => tracing::debug!(
                attempt,
                sends = jobs.len(),
                "another transaction stored a send key of the batch; storing the batch again"
            ),
            Err(err) if attempt < STORE_ATTEMPTS && is_lock_conflict(&err) => tracing::warn!(
                attempt,
                sends = jobs.len(),
                error = %ErrorChain(&err),
                "send batch aborted by a lock conflict; storing the batch again"
            ),
            Err(err) => return Err(err),
        }
    }
    Err(LogicError::Internal(
        "other transactions kept storing send keys of the batch",
    ))
}

/// Tells whether PostgreSQL aborted a transaction to break a deadlock or a serialization
/// conflict, so that running it again may succeed.
fn is_lock_conflict(err: &LogicError) -> bool {
    let LogicError::Database(err) = err else {
        return false;
    };
    err.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "40P01" | "40001"))
}

/// Stores a batch in one transaction and returns each send's outcome, in order, or `None`
/// when another transaction stored one of its keys meanwhile. An error or `None` rolls the
/// transaction back.
async fn try_store_batch(
    pg: &PgStore,
    jobs: &[Job],
) -> Result<Option<Vec<Result<Stored, LogicError>>>, LogicError> {
    let tx = Pipelined::new(pg.client().await?);
    match store_in(&tx, jobs).await {
        Ok(Some(outcomes)) => {
            tx.commit().await?;
            Ok(Some(outcomes))
        }
        other => {
            tx.rollback().await;
            other
        }
    }
}

/// Runs the statements of [`try_store_batch`] in `tx`, which it begins, and leaves the end
/// of the transaction to the caller.
async fn store_in(
    tx: &Pipelined,
    jobs: &[Job],
) -> Result<Option<Vec<Result<Stored, LogicError>>>, LogicError> {
    let keys: Vec<SendKey<'_>> = jobs.iter().map(Job::key).collect();

    let pairs: Vec<(UserId, UserId)> = jobs.iter().filter_map(direct_pair).collect();
    let mut groups: Vec<GroupId> = jobs.iter().filter_map(group_of).collect();
    groups.sort_unstable();
    groups.dedup();
    let db = tx.db();
    let (access, members) = tx
        .begin_with(async {
            tokio::try_join!(
                friendships::direct_access_many(db, &pairs),
                group_members::recipients_many(db, &groups)
            )
        })
        .await?;
    let checked = check_all(jobs, access, &members);

    // Sent in this order on the connection, so the keys are read once the senders' user_seq
    // rows are locked: no other transaction can store one of these keys until this one ends.
    let counts = seq_counts(&checked);
    let allowed = checked.iter().filter(|check| check.is_ok()).count();
    // Joined without stopping at the first error to arrive, so that the error of the statement
    // sent first wins: after it, PostgreSQL only reports the transaction as aborted.
    let (last_seqs, ids, found) = tokio::join!(
        assign_if_any(db, &counts),
        sent_messages::new_ids(db, allowed),
        sent_messages::find_many(db, &keys)
    );
    let (last_seqs, ids, found) = (last_seqs?, ids?, found?);
    let surplus = seq_counts_of(
        checked
            .iter()
            .zip(&found)
            .filter(|(_, first)| first.is_some())
            .map(|(check, _)| check),
    );
    let decisions = decide(checked, found)?;
    let mut next_seq: HashMap<UserId, u64> = counts
        .iter()
        .zip(&last_seqs)
        .map(|((user, count), last)| (*user, last + 1 - count))
        .collect();

    let accepted = decisions
        .iter()
        .filter(|decision| matches!(decision, Decision::Accepted { .. }))
        .count();
    let mut new_messages = Vec::with_capacity(accepted);
    let mut copies = Vec::new();
    let mut accepted_keys = Vec::with_capacity(accepted);
    let mut message_ids = Vec::with_capacity(accepted);
    let mut sender_seqs = Vec::with_capacity(accepted);
    let mut stored_copies: Vec<Option<(MessageId, Vec<Copy>)>> = Vec::with_capacity(jobs.len());
    let mut ids_left = ids.message_ids.iter();
    for ((job, decision), key) in jobs.iter().zip(&decisions).zip(&keys) {
        let Decision::Accepted { recipients } = decision else {
            stored_copies.push(None);
            continue;
        };
        let message_id = *ids_left.next().ok_or(LogicError::Internal(
            "fewer message ids than accepted sends",
        ))?;
        let message_copies = take_seqs(&mut next_seq, recipients)?;
        let sender_seq = sender_copy_seq(&message_copies, job.sender.user)?;
        let index = new_messages.len();
        new_messages.push(new_message(job, message_id));
        copies.extend(message_copies.iter().map(|copy| (index, *copy)));
        accepted_keys.push(*key);
        message_ids.push(message_id);
        sender_seqs.push(sender_seq);
        stored_copies.push(Some((message_id, message_copies)));
    }
    let (given_back, stored_keys, inserted) = tokio::join!(
        user_seq::give_back(db, &surplus),
        sent_messages::insert_many(db, &accepted_keys, &message_ids, &sender_seqs),
        messages::insert_batch(db, &new_messages, &copies)
    );
    given_back?;
    let stored_keys = stored_keys?;
    inserted?;
    if stored_keys != accepted_keys.len() as u64 {
        return Ok(None);
    }

    Ok(Some(outcomes(
        jobs,
        decisions,
        stored_copies,
        ids.sent_at_ms,
    )))
}

/// Turns each send's decision and stored rows into its outcome.
fn outcomes(
    jobs: &[Job],
    decisions: Vec<Decision>,
    stored_copies: Vec<Option<(MessageId, Vec<Copy>)>>,
    sent_at_ms: i64,
) -> Vec<Result<Stored, LogicError>> {
    let mut results = Vec::with_capacity(jobs.len());
    for ((job, decision), stored) in jobs.iter().zip(decisions).zip(stored_copies) {
        let result = match (decision, stored) {
            (Decision::Repeated(first), _) => Ok(Stored::Repeated(SendReply {
                message_id: first.message_id.0,
                seq: first.sender_seq,
                sent_at_ms: first.sent_at_ms,
            })),
            (Decision::Rejected(err), _) => Err(err),
            (Decision::Accepted { .. }, Some((message_id, copies))) => {
                match sender_copy_seq(&copies, job.sender.user) {
                    Ok(seq) => Ok(Stored::New {
                        reply: SendReply {
                            message_id: message_id.0,
                            seq,
                            sent_at_ms,
                        },
                        copies,
                    }),
                    Err(err) => Err(err),
                }
            }
            (Decision::Accepted { .. }, None) => {
                Err(LogicError::Internal("accepted send has no copies"))
            }
        };
        results.push(result);
    }
    results
}

/// Checks, per send, that the sender may send, and returns its recipients or its error.
fn check_all(
    jobs: &[Job],
    access: Vec<Option<DirectAccess>>,
    members: &HashMap<GroupId, Vec<UserId>>,
) -> Vec<Result<Vec<UserId>, LogicError>> {
    let mut access = access.into_iter();
    jobs.iter()
        .map(|job| {
            // Consumed for every direct send to another user, in job order, as `direct_pair`
            // built the pairs.
            let direct = direct_pair(job).map(|_| access.next().flatten());
            recipients(job, direct, members)
        })
        .collect()
}

/// Decides, per send, from its check and the reply stored for its key. A repeated key returns
/// its first reply even when the sender may no longer send.
fn decide(
    checked: Vec<Result<Vec<UserId>, LogicError>>,
    found: Vec<Option<SentReply>>,
) -> Result<Vec<Decision>, LogicError> {
    if found.len() != checked.len() {
        return Err(LogicError::Internal(
            "stored reply count differs from sends",
        ));
    }
    Ok(checked
        .into_iter()
        .zip(found)
        .map(|(check, first)| match (first, check) {
            (Some(first), _) => Decision::Repeated(first),
            (None, Ok(recipients)) => Decision::Accepted { recipients },
            (None, Err(err)) => Decision::Rejected(err),
        })
        .collect())
}

/// Returns the users who get a copy, in ascending id order, after checking that the sender may
/// send: a direct message goes to the receiver and the sender (once, for a message to
/// oneself), a group message to every member, the sender included. `direct` is the access read
/// for a direct send to another user.
fn recipients(
    job: &Job,
    direct: Option<Option<DirectAccess>>,
    members: &HashMap<GroupId, Vec<UserId>>,
) -> Result<Vec<UserId>, LogicError> {
    let sender = job.sender.user;
    if let Some(group) = group_of(job) {
        let members = members.get(&group).ok_or(LogicError::ReceiverNotFound {
            kind: "group",
            id: group.0,
        })?;
        if members.binary_search(&sender).is_err() {
            return Err(LogicError::NotGroupMember(group.0));
        }
        return Ok(members.clone());
    }
    let receiver = UserId(job.draft.receiver_id);
    let Some(access) = direct else {
        return Ok(vec![sender]);
    };
    let access = access.ok_or(LogicError::ReceiverNotFound {
        kind: "user",
        id: receiver.0,
    })?;
    if !access.open && !access.friends {
        return Err(LogicError::NotFriend(receiver.0));
    }
    let mut users = vec![sender, receiver];
    users.sort_unstable();
    Ok(users)
}

/// The (sender, receiver) pair whose access a direct send to another user needs.
fn direct_pair(job: &Job) -> Option<(UserId, UserId)> {
    let receiver = UserId(job.draft.receiver_id);
    (job.draft.conversation != ConversationType::Group && receiver != job.sender.user)
        .then_some((job.sender.user, receiver))
}

fn group_of(job: &Job) -> Option<GroupId> {
    (job.draft.conversation == ConversationType::Group).then_some(GroupId(job.draft.receiver_id))
}

/// Returns how many copies each recipient gets over the sends that passed their checks, by
/// ascending user id.
fn seq_counts(checked: &[Result<Vec<UserId>, LogicError>]) -> Vec<(UserId, u64)> {
    seq_counts_of(checked.iter())
}

fn seq_counts_of<'a>(
    checked: impl Iterator<Item = &'a Result<Vec<UserId>, LogicError>>,
) -> Vec<(UserId, u64)> {
    let mut counts = BTreeMap::new();
    for recipients in checked.flatten() {
        for user in recipients {
            *counts.entry(*user).or_insert(0u64) += 1;
        }
    }
    counts.into_iter().collect()
}

async fn assign_if_any(
    db: &impl deadpool_postgres::GenericClient,
    counts: &[(UserId, u64)],
) -> Result<Vec<u64>, LogicError> {
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    user_seq::assign_counts(db, counts).await
}

/// Gives each recipient the next of the seqs its user took for this batch.
fn take_seqs(
    next_seq: &mut HashMap<UserId, u64>,
    recipients: &[UserId],
) -> Result<Vec<Copy>, LogicError> {
    recipients
        .iter()
        .map(|user| {
            let next = next_seq
                .get_mut(user)
                .ok_or(LogicError::Internal("recipient has no seqs taken"))?;
            let seq = *next;
            *next += 1;
            Ok(Copy { user: *user, seq })
        })
        .collect()
}

fn sender_copy_seq(copies: &[Copy], sender: UserId) -> Result<u64, LogicError> {
    copies
        .iter()
        .find(|copy| copy.user == sender)
        .map(|copy| copy.seq)
        .ok_or(LogicError::Internal(
            "the sender has no copy of its message",
        ))
}

fn new_message(job: &Job, message_id: MessageId) -> NewMessage<'_> {
    NewMessage {
        message_id,
        sender_user: job.sender.user,
        sender_device: job.sender.device,
        conversation_type: job.draft.conversation as i16,
        receiver_id: job.draft.receiver_id,
        content: &job.draft.request.content[..],
        content_type: &job.draft.request.content_type,
        client_msg_id: &job.draft.request.client_msg_id,
    }
}
