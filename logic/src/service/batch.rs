//! Batching of concurrent PostgreSQL calls that each carry one small item.
//!
//! Callers queue one item each on a channel and wait for their own output. One task takes
//! every queued item, up to the batch size, hands them all to its [`BatchWork`], which serves
//! them with one statement, and replies to each caller. While one batch runs, the next fills, so
//! under load the statements grow instead of multiplying.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{ErrorChain, LogicError, Store};

/// Queue length per batch slot: callers beyond `batch_max × QUEUE_FACTOR` wait for room,
/// within their own deadline.
const QUEUE_FACTOR: usize = 8;

/// The work one batching task does with each batch.
pub trait BatchWork: Send + Sync + 'static {
    /// The item a caller queues.
    type Item: Send + 'static;
    /// The output a caller receives.
    type Output: Send + 'static;
    /// Names the items in logs, in the plural: "tokens", "acks".
    const ITEMS: &'static str;

    /// Serves `items` together and returns one output per item, in the same order.
    fn run(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, LogicError>> + Send;
}

/// Handle for queueing items on one batching task. It is cheap to clone, and the task stops
/// once every handle is dropped.
pub struct Batcher<W: BatchWork> {
    tx: mpsc::Sender<Job<W>>,
    timeout: Duration,
}

impl<W: BatchWork> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            timeout: self.timeout,
        }
    }
}

struct Job<W: BatchWork> {
    item: W::Item,
    reply: oneshot::Sender<Result<W::Output, LogicError>>,
}

impl<W: BatchWork> Batcher<W> {
    /// Spawns the batching task on the current tokio runtime. `batch_max` caps the items per
    /// batch (at least 1), and `timeout` is the deadline of one item, queueing included.
    pub fn spawn(work: W, batch_max: usize, timeout: Duration) -> Batcher<W> {
        let batch_max = batch_max.max(1);
        let (tx, rx) = mpsc::channel(batch_max.saturating_mul(QUEUE_FACTOR));
        tokio::spawn(run(work, batch_max, rx));
        Batcher { tx, timeout }
    }

    /// Queues `item` for the next batch and returns its output.
    ///
    /// # Errors
    ///
    /// The batch's error as [`batch_error`] copies it, [`LogicError::Timeout`] past the
    /// deadline, [`LogicError::Unavailable`] when the task has stopped.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output, LogicError> {
        queue_for_batch(&self.tx, self.timeout, |reply| Job { item, reply }).await
    }
}

async fn run<W: BatchWork>(work: W, batch_max: usize, mut rx: mpsc::Receiver<Job<W>>) {
    let mut jobs = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut jobs, batch_max).await > 0 {
        // A caller that gave up has dropped its receiver, so its item is left out.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (items, replies): (Vec<W::Item>, Vec<_>) =
            jobs.drain(..).map(|job| (job.item, job.reply)).unzip();
        match work.run(&items).await {
            Ok(outputs) if outputs.len() == replies.len() => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    // A caller that timed out meanwhile has dropped its receiver.
                    let _ = reply.send(Ok(output));
                }
            }
            Ok(outputs) => {
                tracing::error!(
                    items = W::ITEMS,
                    queued = replies.len(),
                    outputs = outputs.len(),
                    "batch returned a different number of outputs than items"
                );
                for reply in replies {
                    let _ = reply.send(Err(LogicError::Internal(
                        "batch output count differs from its items",
                    )));
                }
            }
            Err(err) => {
                tracing::warn!(
                    items = W::ITEMS,
                    count = replies.len(),
                    error = %ErrorChain(&err),
                    "batch failed"
                );
                for reply in replies {
                    let _ = reply.send(Err(batch_error(&err)));
                }
            }
        }
    }
    tracing::debug!(
        items = W::ITEMS,
        "batching task stopped: every handle was dropped"
    );
}

/// Queues the job that `job` builds around its reply channel on a PostgreSQL batching task,
/// and waits for the reply, both within `timeout`. A stopped task makes the call UNAVAILABLE.
pub(super) async fn queue_for_batch<J, T>(
    queue: &mpsc::Sender<J>,
    timeout: Duration,
    job: impl FnOnce(oneshot::Sender<Result<T, LogicError>>) -> J,
) -> Result<T, LogicError> {
    let (reply, answer) = oneshot::channel();
    let queued = async {
        queue
            .send(job(reply))
            .await
            .map_err(|_| LogicError::Unavailable(Store::Postgres))?;
        answer
            .await
            .map_err(|_| LogicError::Unavailable(Store::Postgres))?
    };
    match tokio::time::timeout(timeout, queued).await {
        Ok(result) => result,
        Err(_) => Err(LogicError::Timeout {
            store: Store::Postgres,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Returns the error each caller of a failed batch gets: TIMEOUT when the batch ran out of
/// time, UNAVAILABLE otherwise. The cause is logged once for the batch.
pub(super) fn batch_error(err: &LogicError) -> LogicError {
    match err {
        LogicError::Timeout { store, timeout_ms } => LogicError::Timeout {
            store: *store,
            timeout_ms: *timeout_ms,
        },
        _ => LogicError::Unavailable(Store::Postgres),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Doubles each number once the gate lets it, remembers each batch, and fails a batch that
    /// contains 0.
    struct Doubler {
        batches: Batches,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl BatchWork for Doubler {
        type Item = u32;
        type Output = u32;
        const ITEMS: &'static str = "numbers";

        async fn run(&self, items: &[u32]) -> Result<Vec<u32>, LogicError> {
            self.batches
                .lock()
                .expect("not poisoned")
                .push(items.to_vec());
            let _permit = self.gate.acquire().await;
            if items.contains(&0) {
                return Err(LogicError::Internal("zero"));
            }
            Ok(items.iter().map(|item| item * 2).collect())
        }
    }

    /// The batches a [`Doubler`] ran, in order.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    fn doubler() -> (Batcher<Doubler>, Batches, Arc<tokio::sync::Semaphore>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let work = Doubler {
            batches: batches.clone(),
            gate: gate.clone(),
        };
        let batcher = Batcher::spawn(work, 4, Duration::from_secs(5));
        (batcher, batches, gate)
    }

    #[tokio::test]
    async fn batch_gathers_items_queued_meanwhile() {
        let (batcher, batches, gate) = doubler();
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        // Let the task take the first item and wait at the gate with it.
        while batches.lock().expect("not poisoned").is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rest: Vec<_> = (2..=6)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(n).await })
            })
            .collect();
        gate.add_permits(100);

        assert_eq!(first.await.expect("joined").expect("doubled"), 2);
        let mut outputs = Vec::new();
        for task in rest {
            outputs.push(task.await.expect("joined").expect("doubled"));
        }
        assert_eq!(outputs, vec![4, 6, 8, 10, 12]);
        let batches = batches.lock().expect("not poisoned").clone();
        assert_eq!(batches[0], vec![1]);
        assert!(
            batches[1..].iter().all(|batch| batch.len() <= 4),
            "{batches:?}"
        );
        assert_eq!(batches[1..].concat(), vec![2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn batch_failure_fails_each_caller() {
        let (batcher, _batches, gate) = doubler();
        gate.add_permits(100);

        let err = batcher.submit(0).await.expect_err("zero fails its batch");
        assert!(
            matches!(err, LogicError::Unavailable(Store::Postgres)),
            "{err:?}"
        );
        assert_eq!(batcher.submit(3).await.expect("next batch works"), 6);
    }

    #[tokio::test]
    async fn batch_past_deadline_times_out() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let work = Doubler { batches, gate };
        let batcher = Batcher::spawn(work, 4, Duration::from_millis(50));

        let err = batcher.submit(1).await.expect_err("the gate never opens");
        assert!(matches!(err, LogicError::Timeout { .. }), "{err:?}");
    }
}
