//! Whether the logic tier serves the gathered calls (SendMany, ConnSignInMany, AckMany,
//! OfflineMany), and the fallback to one call per request when it does not.
//!
//! A logic tier older than the engine returns UNIMPLEMENTED for a gathered call. The bridge then
//! sends the same requests as single calls, and keeps doing so for [`SINGLE_FOR`] before it
//! tries the gathered call again. So an engine updated before its logic tier keeps working, and
//! goes back to gathering once the logic tier is updated.
//!
//! Logic processes of both versions may share the calls until a gathered call of a kind has
//! been served, and for [`COPY_FOR`] after the last rejection. Meanwhile the bridge keeps a copy
//! of each call's requests, to resend them one by one. Otherwise it sends them without a copy. Should an older logic tier come back then (a rollback), the requests of the
//! one call it rejects get UNAVAILABLE, which devices retry, and the calls after it go one by
//! one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{info, warn};

use crate::metrics::BRIDGE_METHODS;

/// How long the bridge sends single calls after the logic tier rejected a gathered one.
pub(crate) const SINGLE_FOR: Duration = Duration::from_secs(60);

/// How long the bridge keeps copies of requests after the logic tier last rejected a gathered
/// call.
pub(crate) const COPY_FOR: Duration = Duration::from_secs(600);

/// Single calls of one batch on the wire at once.
const SINGLE_CALLS_AT_ONCE: usize = 32;

/// The state of a method whose gathered call has not been tried yet.
const UNKNOWN: u64 = 0;
/// The state of a method the logic tier serves.
const SERVED: u64 = u64::MAX;

/// Whether the logic tier serves each gathered method, shared by every call of the node.
pub(crate) struct ManySupport {
    started: Instant,
    single_for: Duration,
    copy_for: Duration,
    /// By index of `BRIDGE_METHODS`: [`UNKNOWN`], [`SERVED`], or the millisecond since
    /// `started`, plus one, until which single calls are sent.
    states: [AtomicU64; BRIDGE_METHODS.len()],
    /// By index of `BRIDGE_METHODS`: the millisecond since `started` until which gathered calls
    /// keep a copy of their requests, 0 when no call was rejected.
    copy_until: [AtomicU64; BRIDGE_METHODS.len()],
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
    pub(crate) fn new(single_for: Duration, copy_for: Duration) -> Self {
        Self {
            started: Instant::now(),
            single_for,
            copy_for,
            states: std::array::from_fn(|_| AtomicU64::new(UNKNOWN)),
            copy_until: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn route(&self, method: usize) -> Route {
        match self.states[method].load(Ordering::Relaxed) {
            SERVED => Route::Many {
                keep_copy: self.now_ms() < self.copy_until[method].load(Ordering::Relaxed),
            },
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
        let now = self.now_ms();
        let until = (now + 1)
            .saturating_add(u64::try_from(self.single_for.as_millis()).unwrap_or(u64::MAX))
            .min(SERVED - 1);
        self.states[method].store(until, Ordering::Relaxed);
        let copy_until =
            now.saturating_add(u64::try_from(self.copy_for.as_millis()).unwrap_or(u64::MAX));
        self.copy_until[method].store(copy_until, Ordering::Relaxed);
        warn!(
            method = BRIDGE_METHODS[method],
            single_for_secs = self.single_for.as_secs(),
            "the logic tier does not serve this call (it is older than the engine); sending \
             one call per request; update the logic tier"
        );
    }

    /// Sends `requests` with `many`, as one gathered call of `method`. When the logic tier does
    /// not serve `method`, sends them with `single` instead, one call per request and
    /// [`SINGLE_CALLS_AT_ONCE`] at a time, and counts them in `singles`. Returns one outcome per
    /// request, in order, or the status of a failed gathered call.
    pub(crate) async fn send<Req, Out, ManyFut, OneFut>(
        &self,
        method: usize,
        requests: Vec<Req>,
        singles: &AtomicU64,
        many: impl FnOnce(Vec<Req>) -> ManyFut,
        single: impl FnMut(Req) -> OneFut,
    ) -> Result<Vec<Out>, tonic::Status>
    where
        Req: Clone,
        ManyFut: std::future::Future<Output = Result<Vec<Out>, tonic::Status>>,
        OneFut: std::future::Future<Output = Out>,
    {
        let copy = match self.route(method) {
            Route::Single => return Ok(one_by_one(requests, singles, single).await),
            Route::Many { keep_copy } => keep_copy.then(|| requests.clone()),
        };
        match many(requests).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                self.rejected(method);
                match copy {
                    Some(requests) => Ok(one_by_one(requests, singles, single).await),
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

/// Makes one call per request, [`SINGLE_CALLS_AT_ONCE`] at a time, and returns the outcomes
/// in request order.
// NOTE: each request gets its outcome only when the whole batch is done, so a request whose
// deadline passes meanwhile gets TIMEOUT even if its own call succeeded. This costs only
// retries, and only while the logic tier lacks the gathered calls.
async fn one_by_one<Req, Out, OneFut>(
    requests: Vec<Req>,
    singles: &AtomicU64,
    single: impl FnMut(Req) -> OneFut,
) -> Vec<Out>
where
    OneFut: std::future::Future<Output = Out>,
{
    singles.fetch_add(requests.len() as u64, Ordering::Relaxed);
    futures::stream::iter(requests.into_iter().map(single))
        .buffered(SINGLE_CALLS_AT_ONCE)
        .collect()
        .await
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
        single: AtomicUsize,
        singles: AtomicU64,
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
                    &self.singles,
                    |requests| async move {
                        self.many.fetch_add(1, Ordering::Relaxed);
                        if unimplemented {
                            Err(tonic::Status::unimplemented(""))
                        } else {
                            Ok(requests.iter().map(|request| request * 2).collect())
                        }
                    },
                    |request| async move {
                        self.single.fetch_add(1, Ordering::Relaxed);
                        request * 2
                    },
                )
                .await
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.many.load(Ordering::Relaxed),
                self.single.load(Ordering::Relaxed),
            )
        }
    }

    #[tokio::test]
    async fn rejected_batch_goes_one_by_one() {
        let support = ManySupport::new(Duration::from_secs(60), Duration::ZERO);
        let calls = Calls::default();
        let outcomes = calls.send(&support, vec![1, 2, 3], true).await.unwrap();
        assert_eq!(outcomes, vec![2, 4, 6]);
        assert_eq!(calls.counts(), (1, 3));
        assert_eq!(calls.singles.load(Ordering::Relaxed), 3);
        // The next batch skips the gathered call.
        let outcomes = calls.send(&support, vec![5], true).await.unwrap();
        assert_eq!(outcomes, vec![10]);
        assert_eq!(calls.counts(), (1, 4));
    }

    #[tokio::test]
    async fn gathered_call_retried_after_period() {
        let support = ManySupport::new(Duration::ZERO, Duration::ZERO);
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
        let support = ManySupport::new(Duration::from_secs(60), Duration::ZERO);
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
        let support = ManySupport::new(Duration::from_secs(60), Duration::ZERO);
        let status = support
            .send(
                METHOD,
                vec![1u32],
                &AtomicU64::new(0),
                |_| async { Err::<Vec<u32>, _>(tonic::Status::unavailable("down")) },
                |request| async move { request },
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(support.route(METHOD), Route::Many { keep_copy: true });
    }

    #[tokio::test]
    async fn mixed_versions_keep_copies() {
        let support = ManySupport::new(Duration::ZERO, Duration::from_secs(600));
        let calls = Calls::default();
        calls.send(&support, vec![1], true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        calls.send(&support, vec![2], false).await.unwrap();
        // A process of the older version takes the next call: its requests go one by one.
        let outcomes = calls.send(&support, vec![3, 4], true).await.unwrap();
        assert_eq!(outcomes, vec![6, 8]);
        assert_eq!(calls.counts(), (3, 3));
    }

    #[tokio::test]
    async fn single_calls_are_bounded() {
        let support = ManySupport::new(Duration::from_secs(60), Duration::ZERO);
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let outcomes = support
            .send(
                METHOD,
                (0..100u32).collect(),
                &AtomicU64::new(0),
                |_| async { Err::<Vec<u32>, _>(tonic::Status::unimplemented("")) },
                |request| {
                    let (running, peak) = (&running, &peak);
                    async move {
                        let now = running.fetch_add(1, Ordering::Relaxed) + 1;
                        peak.fetch_max(now, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        running.fetch_sub(1, Ordering::Relaxed);
                        request
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(outcomes, (0..100).collect::<Vec<u32>>());
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak > 1, "calls overlap: {peak}");
        assert!(
            peak <= SINGLE_CALLS_AT_ONCE,
            "at most {SINGLE_CALLS_AT_ONCE} at once: {peak}"
        );
    }
}
