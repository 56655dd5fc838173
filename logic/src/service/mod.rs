//! gRPC services of the logic tier: `DeviceIntService` for engine nodes and `LogicExtService`
//! for back ends. Each RPC group lives in its own module, and `device_rpc` and `ext_rpc` map the
//! RPCs onto them. This module contains what they share, turns results into replies and errors
//! into statuses, and logs each failure once.

pub mod ack_batch;
pub mod auth;
pub mod bad_request;
pub mod batch;
pub mod caller;
pub mod device_rpc;
pub mod ext_rpc;
pub mod friends;
pub mod groups;
pub mod lease;
pub mod messages;
mod notices;
pub mod presence;
pub mod push;
pub mod register;
pub mod revoke;
pub mod send_batch;
pub mod text;
pub mod token_batch;
pub mod users;

pub use device_rpc::DeviceService;
pub use ext_rpc::ExtService;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_proto::v1::ErrorCode;
use tonic::{Response, Status};
use tracing::Instrument;

use crate::engine::EngineClients;
use crate::error::{ErrorChain, LogicError, Side};
use crate::metrics::{Method, Recorder};
use crate::password::PasswordHasher;
use crate::store::pg::PgStore;
use crate::store::redis::RedisStore;
use ack_batch::AckBatcher;
use caller::ServerSecret;
use push::Pusher;
use send_batch::SendBatcher;

/// Everything the RPC handlers share.
pub struct Logic {
    /// Users, devices, messages, friends and groups.
    pub pg: PgStore,
    /// Tokens and online status.
    pub redis: RedisStore,
    /// Argon2id hashing.
    pub passwords: PasswordHasher,
    /// Channels to engine nodes, for kicks.
    pub engines: EngineClients,
    /// Lifetime of a token issued at LOGIN.
    pub token_ttl: Duration,
    /// Rate limit of the warnings about failed store requests.
    pub store_warnings: WarnLimiter,
    /// Rate limit of the warnings about requests turned away for overload.
    pub overload_warnings: WarnLimiter,
    /// Rate limit of the warnings about failed kicks, shared with the kick tasks.
    pub kick_warnings: Arc<WarnLimiter>,
    /// Limits on messages, groups and SYNC pages.
    pub limits: Limits,
    /// The secret that ServerSend requires.
    pub server_secret: ServerSecret,
    /// Pushes stored messages to the engine nodes of their recipients.
    pub pusher: Pusher,
    /// Stores concurrent sends in shared transactions and pushes them.
    pub sends: SendBatcher,
    /// Stores concurrent MESSAGE_ACKs with one statement.
    pub acks: AckBatcher,
    /// Reads the token records that sign-ins miss in Redis, many with one query.
    pub tokens: token_batch::TokenLoader,
    /// Counters and histograms of calls and messages, shared with the push tasks.
    pub metrics: Arc<Recorder>,
    /// Engine nodes whose lease lapsed, as the reaper last found them; shared with the pusher.
    pub lapsed_nodes: lease::LapsedNodes,
}

/// Limits from the configuration that requests are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message content, in bytes.
    pub max_content_bytes: u32,
    /// Maximum members of a group, its owner included.
    pub max_group_members: u32,
    /// Maximum groups one user is a member of.
    pub max_groups_per_user: u32,
    /// Maximum friends and pending friend requests of one user.
    pub max_friends_per_user: u32,
    /// Largest SYNC page, in messages.
    pub sync_max_page: u32,
    /// Most content bytes in one SYNC page.
    pub sync_max_page_bytes: u32,
}

/// Lets one warning through per interval and counts the ones it holds back, so that an outage
/// does not log one line per request.
pub struct WarnLimiter {
    started: Instant,
    interval_ms: u64,
    /// Milliseconds after `started` of the last warning let through, plus one; 0 before the
    /// first.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    /// Creates a limiter that lets one warning through per `interval`.
    pub fn new(interval: Duration) -> WarnLimiter {
        WarnLimiter {
            started: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(n)` when a warning may be logged now, where `n` warnings were held back
    /// since the last one, or `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stamp = now_ms.saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || stamp.saturating_sub(last) >= self.interval_ms;
        let won = due
            && self
                .last_ms
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if won {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Ids of one call, for its span and its failure log. The user id of a LOGIN is learnt from the
/// database, so a handler may set it while the call runs.
#[derive(Debug, Default)]
pub struct CallIds {
    user_id: AtomicU64,
    device_id: u64,
    conn_id: u64,
}

impl CallIds {
    /// Returns the ids of a call about `device`, with no connection.
    pub(super) fn device(device: Option<&im_proto::v1::DeviceRef>) -> CallIds {
        CallIds::new(
            device.map_or(0, |device| device.user_id),
            device.map_or(0, |device| device.device_id),
            0,
        )
    }

    /// Returns the ids of a ConnSignIn call.
    pub(super) fn sign_in(request: &im_proto::v1::ConnSignInRequest) -> CallIds {
        let sign_in = request.sign_in.as_ref();
        CallIds::new(
            sign_in.map_or(0, |sign_in| sign_in.user_id),
            sign_in.map_or(0, |sign_in| sign_in.device_id),
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        )
    }

    pub(super) fn new(user_id: u64, device_id: u64, conn_id: u64) -> CallIds {
        CallIds {
            user_id: AtomicU64::new(user_id),
            device_id,
            conn_id,
        }
    }

    /// Records the user the call acts for.
    pub fn set_user_id(&self, user_id: u64) {
        self.user_id.store(user_id, Ordering::Relaxed);
    }

    fn user_id(&self) -> u64 {
        self.user_id.load(Ordering::Relaxed)
    }
}

/// Runs one RPC in a span with its ids and counts it in the metrics. On failure it logs the
/// error once, at the level of the side that caused it, and converts the error to a status.
///
/// A call that the client cancels is dropped before it finishes, so it is not counted.
async fn respond<T>(
    logic: &Logic,
    method: Method,
    ids: &CallIds,
    call: impl Future<Output = Result<T, LogicError>>,
) -> Result<Response<T>, Status> {
    let rpc = method.name();
    let span = tracing::debug_span!(
        "rpc",
        rpc,
        user_id = ids.user_id(),
        device_id = ids.device_id,
        conn_id = ids.conn_id
    );
    let started = Instant::now();
    let result = call.instrument(span).await;
    record_outcome(logic, method, ids, started, &result);
    result.map(Response::new).map_err(Status::from)
}

/// Counts one finished call of `method` under its result code and logs its error, if any.
/// Returns the code.
fn record_outcome<T>(
    logic: &Logic,
    method: Method,
    ids: &CallIds,
    started: Instant,
    result: &Result<T, LogicError>,
) -> ErrorCode {
    let code = result
        .as_ref()
        .map_or_else(LogicError::code, |_| ErrorCode::Ok);
    logic
        .metrics
        .record_request(method, code, started.elapsed());
    if let Err(err) = result {
        report(logic, method.name(), ids, err);
    }
    code
}

/// Maximum requests per `...Many` call.
pub const MANY_MAX: usize = 1024;

/// Runs `call` on every request of a `...Many` call at once, so that they share the store
/// batches. Each request is counted and logged as a `method` call of its own. Returns each
/// one's reply or error code and text, in request order.
async fn run_each<Req, Rep, Fut>(
    logic: &Logic,
    method: Method,
    requests: Vec<Req>,
    ids: impl Fn(&Req) -> CallIds,
    call: impl Fn(Req) -> Fut,
) -> Vec<Result<Rep, (ErrorCode, String)>>
where
    Fut: Future<Output = Result<Rep, LogicError>>,
{
    let calls = requests.into_iter().map(|request| {
        let ids = ids(&request);
        let started = Instant::now();
        let result = call(request);
        async move {
            let result = result.await;
            let code = record_outcome(logic, method, &ids, started, &result);
            result.map_err(|err| (code, err.to_string()))
        }
    });
    futures::future::join_all(calls).await
}

/// Splits one result of [`run_each`] into the fields of a `...Many` outcome: the code number,
/// the reply when OK, and the error text (empty when OK).
fn outcome_fields<Rep>(result: Result<Rep, (ErrorCode, String)>) -> (i32, Option<Rep>, String) {
    match result {
        Ok(reply) => (ErrorCode::Ok as i32, Some(reply), String::new()),
        Err((code, message)) => (code as i32, None, message),
    }
}

/// Rejects a `...Many` call that carries more than [`MANY_MAX`] requests.
fn check_many(field: &'static str, count: usize) -> Result<(), LogicError> {
    if count > MANY_MAX {
        return Err(LogicError::InvalidArgument {
            field,
            reason: "at most 1024 per call",
        });
    }
    Ok(())
}

fn report(logic: &Logic, rpc: &'static str, ids: &CallIds, err: &LogicError) {
    let (user_id, device_id, conn_id) = (ids.user_id(), ids.device_id, ids.conn_id);
    let code = err.code().as_str_name();
    match err.side() {
        Side::Client => {
            tracing::debug!(rpc, user_id, device_id, conn_id, code, error = %err, "request rejected");
        }
        Side::Dependency => {
            let error = ErrorChain(err);
            match logic.store_warnings.admit() {
                Some(suppressed) => tracing::warn!(
                    rpc, user_id, device_id, conn_id, code, %error, suppressed,
                    "store request failed"
                ),
                None => tracing::debug!(
                    rpc, user_id, device_id, conn_id, code, %error,
                    "store request failed"
                ),
            }
        }
        Side::Internal => {
            let error = ErrorChain(err);
            tracing::error!(rpc, user_id, device_id, conn_id, code, %error, "request failed");
        }
        Side::Overload => match logic.overload_warnings.admit() {
            Some(suppressed) => tracing::warn!(
                rpc, user_id, device_id, conn_id, code, error = %err, suppressed,
                "request rejected: overloaded"
            ),
            None => tracing::debug!(
                rpc, user_id, device_id, conn_id, code, error = %err,
                "request rejected: overloaded"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_limiter_holds_back_repeats() {
        let limiter = WarnLimiter::new(Duration::from_secs(3600));

        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn warn_limiter_with_zero_interval_admits_all() {
        let limiter = WarnLimiter::new(Duration::ZERO);

        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), Some(0));
    }
}
