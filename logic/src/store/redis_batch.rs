//! Pipelining of Redis commands from many concurrent calls.
//!
//! Callers queue single commands on a channel. One task takes every queued command, up to
//! `redis_batch_max`, sends them as one non-atomic pipeline and hands each caller its own reply.
//! While a pipeline is in flight, new commands queue up for the next one, so the number of round
//! trips grows with load much more slowly than the number of commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{LogicError, Store};

/// Queue length per pipeline slot: callers beyond `batch_max × QUEUE_FACTOR` wait for room,
/// within their own deadline.
const QUEUE_FACTOR: usize = 8;

/// Handle for queueing commands on the pipelining task. Cheap to clone; the task stops once
/// every handle is dropped.
#[derive(Clone)]
pub struct RedisBatcher {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
    counters: Arc<PipelineCounters>,
}

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<Value>>,
}

/// Pipelines and commands sent by one pipelining task, for metrics.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    pipelines: AtomicU64,
    commands: AtomicU64,
}

impl PipelineCounters {
    /// Returns how many pipelines the task has sent so far.
    pub fn pipelines_sent(&self) -> u64 {
        self.pipelines.load(Ordering::Relaxed)
    }

    /// Returns how many commands the task has sent so far, over all pipelines.
    pub fn commands_sent(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}

impl RedisBatcher {
    /// Spawns the pipelining task on the current tokio runtime.
    ///
    /// `batch_max` caps the commands per pipeline (at least 1); `timeout` is the deadline of one
    /// command, queueing included, and of one pipeline.
    pub fn spawn(conn: ConnectionManager, batch_max: usize, timeout: Duration) -> RedisBatcher {
        let batch_max = batch_max.max(1);
        let (tx, rx) = mpsc::channel(batch_max.saturating_mul(QUEUE_FACTOR));
        let counters = Arc::new(PipelineCounters::default());
        let worker = Worker {
            conn,
            batch_max,
            timeout,
            counters: counters.clone(),
        };
        tokio::spawn(worker.run(rx));
        RedisBatcher {
            tx,
            timeout,
            counters,
        }
    }

    /// Queues `cmd` for the next pipeline and returns its reply.
    ///
    /// # Errors
    ///
    /// [`LogicError::Timeout`] when no reply arrives within the deadline, [`LogicError::Redis`]
    /// for an error reply or a connection failure, [`LogicError::Unavailable`] when the task
    /// has stopped.
    pub async fn query(&self, cmd: Cmd) -> Result<Value, LogicError> {
        match tokio::time::timeout(self.timeout, self.queue_and_wait(cmd)).await {
            Ok(result) => result,
            Err(_) => Err(LogicError::Timeout {
                store: Store::Redis,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Returns how many pipelines the task has sent so far.
    pub fn pipelines_sent(&self) -> u64 {
        self.counters.pipelines_sent()
    }

    /// Returns how many commands the task has sent so far, over all pipelines.
    pub fn commands_sent(&self) -> u64 {
        self.counters.commands_sent()
    }

    /// Returns the task's counters, which stay readable after the task stops.
    pub fn counters(&self) -> Arc<PipelineCounters> {
        self.counters.clone()
    }

    async fn queue_and_wait(&self, cmd: Cmd) -> Result<Value, LogicError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| LogicError::Unavailable(Store::Redis))?;
        let result = answer
            .await
            .map_err(|_| LogicError::Unavailable(Store::Redis))?;
        Ok(result?)
    }
}

struct Worker {
    conn: ConnectionManager,
    batch_max: usize,
    timeout: Duration,
    counters: Arc<PipelineCounters>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(self.batch_max);
        while rx.recv_many(&mut jobs, self.batch_max).await > 0 {
            // A caller that gave up has dropped its receiver; its command is not sent.
            jobs.retain(|job| !job.reply.is_closed());
            if !jobs.is_empty() {
                self.send(std::mem::take(&mut jobs)).await;
            }
        }
        tracing::debug!("Redis pipeline task stopped: every handle was dropped");
    }

    async fn send(&mut self, jobs: Vec<Job>) {
        let mut pipe = redis::pipe();
        // Without MULTI, so not atomic, and with ignore_errors an error reply fails only its own
        // command instead of the whole pipeline.
        pipe.ignore_errors();
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            pipe.add_command(job.cmd);
            replies.push(job.reply);
        }
        self.counters.pipelines.fetch_add(1, Ordering::Relaxed);
        self.counters
            .commands
            .fetch_add(replies.len() as u64, Ordering::Relaxed);

        let sent =
            tokio::time::timeout(self.timeout, pipe.query_async::<Vec<Value>>(&mut self.conn));
        let outcome = match sent.await {
            Ok(result) => result,
            Err(_) => Err(pipeline_timed_out()),
        };
        deliver(replies, outcome);
    }
}

/// Hands each caller its reply, or a copy of the pipeline's error.
fn deliver(replies: Vec<oneshot::Sender<RedisResult<Value>>>, outcome: RedisResult<Vec<Value>>) {
    let values = match outcome {
        Ok(values) if values.len() == replies.len() => values,
        Ok(values) => {
            let err = RedisError::from((
                redis::ErrorKind::Client,
                "pipeline reply count differs from command count",
                format!("{} replies for {} commands", values.len(), replies.len()),
            ));
            return fail_all(replies, &err);
        }
        Err(err) => return fail_all(replies, &err),
    };
    for (reply, value) in replies.into_iter().zip(values) {
        let result = match value {
            Value::ServerError(err) => Err(RedisError::from(err)),
            value => Ok(value),
        };
        // A caller that timed out meanwhile has dropped its receiver: nothing to do.
        let _ = reply.send(result);
    }
}

fn fail_all(replies: Vec<oneshot::Sender<RedisResult<Value>>>, err: &RedisError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

fn pipeline_timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis pipeline timed out",
    ))
}
