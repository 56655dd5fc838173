//! gRPC services of the logic tier: `DeviceIntService` for engine nodes and `LogicExtService`
//! for back ends. Each RPC group lives in its own module. This one turns requests into calls and
//! errors into statuses, logging each failure once.

pub mod auth;
pub mod presence;
pub mod register;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_proto::v1::device_int_service_server::DeviceIntService;
use im_proto::v1::logic_ext_service_server::LogicExtService;
use im_proto::v1::{
    ConnLoginRequest, ConnSignInReply, ConnSignInRequest, LoginReply, OfflineReply, OfflineRequest,
    RegisterReply, RegisterRequest,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::engine::EngineClients;
use crate::error::{ErrorChain, LogicError, Side};
use crate::password::PasswordHasher;
use crate::store::pg::PgStore;
use crate::store::redis::RedisStore;

/// Everything the RPC handlers share.
pub struct Logic {
    /// Users and devices.
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
    /// Rate limit of the warnings about failed kicks, shared with the kick tasks.
    pub kick_warnings: Arc<WarnLimiter>,
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

/// The `DeviceIntService` server: calls from engine nodes on behalf of devices.
#[derive(Clone)]
pub struct DeviceService {
    logic: Arc<Logic>,
}

impl DeviceService {
    /// Serves calls with `logic`.
    pub fn new(logic: Arc<Logic>) -> DeviceService {
        DeviceService { logic }
    }
}

/// The `LogicExtService` server: the business API for back ends.
#[derive(Clone)]
pub struct ExtService {
    logic: Arc<Logic>,
}

impl ExtService {
    /// Serves calls with `logic`.
    pub fn new(logic: Arc<Logic>) -> ExtService {
        ExtService { logic }
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
    fn new(user_id: u64, device_id: u64, conn_id: u64) -> CallIds {
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

#[tonic::async_trait]
impl DeviceIntService for DeviceService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let ids = CallIds::default();
        let call = register::register(&self.logic, request.into_inner());
        respond(&self.logic, "Register", &ids, call).await
    }

    async fn conn_login(
        &self,
        request: Request<ConnLoginRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::new(
            0,
            request.login.as_ref().map_or(0, |login| login.device_id),
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        );
        respond(
            &self.logic,
            "ConnLogin",
            &ids,
            auth::login(&self.logic, request, &ids),
        )
        .await
    }

    async fn conn_sign_in(
        &self,
        request: Request<ConnSignInRequest>,
    ) -> Result<Response<ConnSignInReply>, Status> {
        let request = request.into_inner();
        let sign_in = request.sign_in.as_ref();
        let ids = CallIds::new(
            sign_in.map_or(0, |s| s.user_id),
            sign_in.map_or(0, |s| s.device_id),
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        );
        respond(
            &self.logic,
            "ConnSignIn",
            &ids,
            auth::sign_in(&self.logic, request),
        )
        .await
    }

    async fn offline(
        &self,
        request: Request<OfflineRequest>,
    ) -> Result<Response<OfflineReply>, Status> {
        let request = request.into_inner();
        let ids = CallIds::new(
            request.user_id,
            request.device_id,
            request.conn.as_ref().map_or(0, |conn| conn.conn_id),
        );
        respond(
            &self.logic,
            "Offline",
            &ids,
            presence::offline(&self.logic, request),
        )
        .await
    }
}

#[tonic::async_trait]
impl LogicExtService for ExtService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let ids = CallIds::default();
        let call = register::register(&self.logic, request.into_inner());
        respond(&self.logic, "Register", &ids, call).await
    }
}

/// Runs one RPC in a span with its ids. On failure it logs the error once, at the level of the
/// side that caused it, and converts the error to a status.
async fn respond<T>(
    logic: &Logic,
    rpc: &'static str,
    ids: &CallIds,
    call: impl Future<Output = Result<T, LogicError>>,
) -> Result<Response<T>, Status> {
    let span = tracing::debug_span!(
        "rpc",
        rpc,
        user_id = ids.user_id(),
        device_id = ids.device_id,
        conn_id = ids.conn_id
    );
    match call.instrument(span).await {
        Ok(reply) => Ok(Response::new(reply)),
        Err(err) => {
            report(logic, rpc, ids, &err);
            Err(err.into())
        }
    }
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
