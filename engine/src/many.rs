//! Whether the logic tier serves the gathered calls (SendMany, ConnSignInMany, AckMany,
//! OfflineMany), and the fallback to one call per request when it does not.
//!
//! A logic tier older than the engine returns UNIMPLEMENTED for a gathered call. The bridge then
//! sends the same requests as single calls, and keeps doing so for [`SINGLE_FOR`] before it
//! tries the gathered call again, so an engine updated before its logic tier keeps working and
//! goes back to gathering once the logic tier is updated.
//!
//! Until a gathered call of a kind has once been served, the bridge keeps a copy of its
//! requests to resend them one by one. After that it sends them without a copy; should an older
//! logic tier come back (a rollback), the requests of the one call it rejects get UNAVAILABLE,
//! which devices retry, and the calls after it go one by one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::{info, warn};

use crate::metrics::BRIDGE_METHODS;

/// How long the bridge sends single calls after the logic tier rejected a gathered one.
pub(crate) const SINGLE_FOR: Duration = Duration::from_secs(60);

/// The state of a method whose gathered call has not been tried yet.
const UNKNOWN: u64 = 0;
/// The state of a method the logic tier serves.
const SERVED: u64 = u64::MAX;

/// Whether the logic tier serves each gathered method, shared by every call of the node.
pub(crate) struct ManySupport {
    started: Instant,
    single_for: Duration,
    /// By index of `BRIDGE_METHODS`: [`UNKNOWN`], [`SERVED`], or the millisecond since
    /// `started`, plus one, until which single calls are sent.
    states: [AtomicU64; BRIDGE_METHODS.len()],
}

/// How to send one batch of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// As a gathered call, keeping a copy of the requests if `keep_copy`.
    Many { keep_copy: bool },
    /// As one call per request.
    Single,
}

impl ManySupport {
    pub(crate) fn new(single_for: Duration) -> Self {
        Self {
            started: Instant::now(),
            single_for,
            states: std::array::from_fn(|_| AtomicU64::new(UNKNOWN)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn route(&self, method: usize) -> Route {
        match self.states[method].load(Ordering::Relaxed) {
            SERVED => Route::Many { keep_copy: false },
            UNKNOWN => Route::Many { keep_copy: true },
            until if self.now_ms() < until => Route::Single,
            _ => Route::Many { keep_copy: true },
        }
    }

    fn served(&self, method: usize) {
        let was = self.states[method].swap(SERVED, Ordering::Relaxed);
        if was != SERVED && was != UNKNOWN {
            info!(
                method = BRIDGE_METHODS[method],
                "the logic tier serves the gathered call again; gathering requests"
            );
        }
    }

    fn rejected(&self, method: usize) {
        let until = (self.now_ms() + 1)
            .saturating_add(u64::try_from(self.single_for.as_millis()).unwrap_or(u64::MAX))
            .min(SERVED - 1);
        self.states[method].store(until, Ordering::Relaxed);
        warn!(
            method = BRIDGE_METHODS[method],
            single_for_secs = self.single_for.as_secs(),
            "the logic tier does not serve this call (it is older than the engine); sending \
             one call per request; update the logic tier"
        );
    }

    /// Sends `requests` with `many`, as one gathered call of `method`, or with `one`, one call
    /// per request, concurrently, when the logic tier does not serve `method`. Returns one
    /// outcome per request, in order, or the status of a failed gathered call.
    pub(crate) async fn send<Req, Out, ManyFut, OneFut>(
        &self,
        method: usize,
        requests: Vec<Req>,
        many: impl FnOnce(Vec<Req>) -> ManyFut,
        one: impl FnMut(Req) -> OneFut,
    ) -> Result<Vec<Out>, tonic::Status>
    where
        Req: Clone,
        ManyFut: std::future::Future<Output = Result<Vec<Out>, tonic::Status>>,
        OneFut: std::future::Future<Output = Out>,
    {
        let copy = match self.route(method) {
            Route::Single => return Ok(join_all(requests.into_iter().map(one)).await),
            Route::Many { keep_copy } => keep_copy.then(|| requests.clone()),
        };
        match many(requests).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                self.rejected(method);
                match copy {
                    Some(requests) => Ok(join_all(requests.into_iter().map(one)).await),
                    None => Err(tonic::Status::unavailable(
                        "the logic tier is being updated; retry with back-off",
                    )),
                }
            }
            Err(status) => Err(status),
            Ok(outcomes) => {
                self.served(method);
                Ok(outcomes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const METHOD: usize = 4;

    /// Counts the gathered and single calls made. A gathered call returns UNIMPLEMENTED if
    /// `unimplemented`, and each call returns its request doubled otherwise.
    #[derive(Default)]
    struct Calls {
        many: AtomicUsize,
        one: AtomicUsize,
    }

    impl Calls {
        async fn send(
            &self,
            support: &ManySupport,
            requests: Vec<u32>,
            unimplemented: bool,
        ) -> Result<Vec<u32>, tonic::Status> {
            support
                .send(
                    METHOD,
                    requests,
                    |requests| async move {
                        self.many.fetch_add(1, Ordering::Relaxed);
                        if unimplemented {
                            Err(tonic::Status::unimplemented(""))
                        } else {
                            Ok(requests.iter().map(|request| request * 2).collect())
                        }
                    },
                    |request| async move {
                        self.one.fetch_add(1, Ordering::Relaxed);
                        request * 2
                    },
                )
                .await
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.many.load(Ordering::Relaxed),
                self.one.load(Ordering::Relaxed),
            )
        }
    }

    #[tokio::test]
    async fn rejected_batch_goes_one_by_one() {
        let support = ManySupport::new(Duration::from_secs(60));
        let calls = Calls::default();
        let outcomes = calls.send(&support, vec![1, 2, 3], true).await.unwrap();
        assert_eq!(outcomes, vec![2, 4, 6]);
        assert_eq!(calls.counts(), (1, 3));
        // The next batch skips the gathered call.
        let outcomes = calls.send(&support, vec![5], true).await.unwrap();
        assert_eq!(outcomes, vec![10]);
        assert_eq!(calls.counts(), (1, 4));
    }

    #[tokio::test]
    async fn gathered_call_retried_after_period() {
        let support = ManySupport::new(Duration::ZERO);
        let calls = Calls::default();
        calls.send(&support, vec![1], true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let outcomes = calls.send(&support, vec![1, 2], false).await.unwrap();
        assert_eq!(outcomes, vec![2, 4]);
        assert_eq!(calls.counts(), (2, 1));
        assert_eq!(support.route(METHOD), Route::Many { keep_copy: false });
    }

    #[tokio::test]
    async fn rollback_fails_retryably_then_single() {
        let support = ManySupport::new(Duration::from_secs(60));
        let calls = Calls::default();
        calls.send(&support, vec![1], false).await.unwrap();
        // A rolled-back logic tier: the requests, sent without a copy, fail retryably.
        let status = calls.send(&support, vec![1, 2], true).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(calls.counts(), (2, 0));
        let outcomes = calls.send(&support, vec![3], true).await.unwrap();
        assert_eq!(outcomes, vec![6]);
        assert_eq!(calls.counts(), (2, 1));
    }

    #[tokio::test]
    async fn other_failures_keep_gathering() {
        let support = ManySupport::new(Duration::from_secs(60));
        let status = support
            .send(
                METHOD,
                vec![1u32],
                |_| async { Err::<Vec<u32>, _>(tonic::Status::unavailable("down")) },
                |request| async move { request },
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(support.route(METHOD), Route::Many { keep_copy: true });
    }
}
