//! Pipelining of Redis commands from many concurrent calls.
//!
//! Callers queue commands on a channel, alone or many at once. One task takes the queued
//! commands, up to `redis_batch_max`, sends them as one non-atomic pipeline and hands each caller
//! its own replies. While a pipeline is in flight, new commands queue up for the next one, so the
//! number of round trips grows with load much more slowly than the number of commands. A caller's
//! commands given at once always share one pipeline, even past `redis_batch_max`, and cost one
//! queue entry, one wakeup and one deadline instead of one per command.

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

/// Commands of one caller, with the channel for their replies.
enum Job {
    One {
        cmd: Cmd,
        reply: oneshot::Sender<RedisResult<Value>>,
    },
    Many {
        cmds: Vec<Cmd>,
        reply: oneshot::Sender<Vec<RedisResult<Value>>>,
    },
}

impl Job {
    fn commands(&self) -> usize {
        match self {
            Job::One { .. } => 1,
            Job::Many { cmds, .. } => cmds.len(),
        }
    }

    fn is_abandoned(&self) -> bool {
        match self {
            Job::One { reply, .. } => reply.is_closed(),
            Job::Many { reply, .. } => reply.is_closed(),
        }
    }
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
        let (reply, answer) = oneshot::channel();
        match self.queue_and_wait(Job::One { cmd, reply }, answer).await {
            Ok(result) => Ok(result?),
            Err(missed) => Err(self.error(missed)),
        }
    }

    /// Queues `cmds` for the next pipeline, all in the same one, and returns their replies in
    /// order. Each command succeeds or fails alone, with the errors of [`query`](Self::query).
    pub async fn query_many(&self, cmds: Vec<Cmd>) -> Vec<Result<Value, LogicError>> {
        let count = cmds.len();
        if count == 0 {
            return Vec::new();
        }
        let (reply, answer) = oneshot::channel();
        match self.queue_and_wait(Job::Many { cmds, reply }, answer).await {
            Ok(results) => results
                .into_iter()
                .map(|result| result.map_err(LogicError::from))
                .collect(),
            Err(missed) => (0..count).map(|_| Err(self.error(missed))).collect(),
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

    /// Queues `job` and waits for its replies on `answer`, within the deadline.
    async fn queue_and_wait<T>(&self, job: Job, answer: oneshot::Receiver<T>) -> Result<T, Missed> {
        let queued = async {
            self.tx.send(job).await.map_err(|_| Missed::Stopped)?;
            answer.await.map_err(|_| Missed::Stopped)
        };
        match tokio::time::timeout(self.timeout, queued).await {
            Ok(result) => result,
            Err(_) => Err(Missed::Deadline),
        }
    }

    fn error(&self, missed: Missed) -> LogicError {
        match missed {
            Missed::Deadline => LogicError::Timeout {
                store: Store::Redis,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            Missed::Stopped => LogicError::Unavailable(Store::Redis),
        }
    }
}

/// The reason a caller got no reply from the pipelining task.
#[derive(Debug, Clone, Copy)]
enum Missed {
    /// The deadline passed, in the queue or in the pipeline.
    Deadline,
    /// The task has stopped.
    Stopped,
}

struct Worker {
    conn: ConnectionManager,
    batch_max: usize,
    timeout: Duration,
    counters: Arc<PipelineCounters>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // A job taken from the queue that did not fit the last pipeline.
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            let mut commands = first.commands();
            let mut jobs = vec![first];
            while commands < self.batch_max {
                let Ok(job) = rx.try_recv() else { break };
                if commands + job.commands() > self.batch_max {
                    carried = Some(job);
                    break;
                }
                commands += job.commands();
                jobs.push(job);
            }
            // A caller that gave up has dropped its receiver; its commands are not sent.
            jobs.retain(|job| !job.is_abandoned());
            if !jobs.is_empty() {
                self.send(jobs).await;
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
        let mut commands = 0;
        for job in jobs {
            match job {
                Job::One { cmd, reply } => {
                    pipe.add_command(cmd);
                    commands += 1;
                    replies.push(Reply::One(reply));
                }
                Job::Many { cmds, reply } => {
                    let count = cmds.len();
                    for cmd in cmds {
                        pipe.add_command(cmd);
                    }
                    commands += count;
                    replies.push(Reply::Many(reply, count));
                }
            }
        }
        self.counters.pipelines.fetch_add(1, Ordering::Relaxed);
        self.counters
            .commands
            .fetch_add(commands as u64, Ordering::Relaxed);

        let sent =
            tokio::time::timeout(self.timeout, pipe.query_async::<Vec<Value>>(&mut self.conn));
        let outcome = match sent.await {
            Ok(result) => result,
            Err(_) => Err(pipeline_timed_out()),
        };
        deliver(replies, commands, outcome);
    }
}

/// The channel for the replies of one job.
enum Reply {
    One(oneshot::Sender<RedisResult<Value>>),
    /// The channel and the number of commands.
    Many(oneshot::Sender<Vec<RedisResult<Value>>>, usize),
}

impl Reply {
    fn fail(self, err: &RedisError) {
        // A caller that timed out meanwhile has dropped its receiver: nothing to do.
        match self {
            Reply::One(reply) => {
                let _ = reply.send(Err(err.clone()));
            }
            Reply::Many(reply, count) => {
                let _ = reply.send(vec![Err(err.clone()); count]);
            }
        }
    }
}

/// Hands each caller its replies, or copies of the pipeline's error.
fn deliver(replies: Vec<Reply>, commands: usize, outcome: RedisResult<Vec<Value>>) {
    let values = match outcome {
        Ok(values) if values.len() == commands => values,
        Ok(values) => {
            let err = RedisError::from((
                redis::ErrorKind::Client,
                "pipeline reply count differs from command count",
                format!("{} replies for {commands} commands", values.len()),
            ));
            return fail_all(replies, &err);
        }
        Err(err) => return fail_all(replies, &err),
    };
    let mut values = values.into_iter().map(|value| match value {
        Value::ServerError(err) => Err(RedisError::from(err)),
        value => Ok(value),
    });
    for reply in replies {
        // A caller that timed out meanwhile has dropped its receiver: nothing to do.
        match reply {
            Reply::One(reply) => {
                if let Some(result) = values.next() {
                    let _ = reply.send(result);
                }
            }
            Reply::Many(reply, count) => {
                let _ = reply.send(values.by_ref().take(count).collect());
            }
        }
    }
}

fn fail_all(replies: Vec<Reply>, err: &RedisError) {
    for reply in replies {
        reply.fail(err);
    }
}

fn pipeline_timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis pipeline timed out",
    ))
}
