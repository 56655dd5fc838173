//! The bridge from the shards to the logic tier. Shards hand calls over a bounded
//! crossbeam channel, and a dispatcher thread spawns each onto a tokio runtime. There the
//! tonic call runs with a deadline, and its reply goes back on a oneshot channel that
//! wakes the calling shard's task.
//!
//! SIGN_IN, LOGIN and REGISTER take their places among the calls in flight on the shard,
//! before they are queued. When no place is free they get BUSY at once instead of waiting.
//! Other calls wait for a place within their deadline.
//!
//! MESSAGE_ACKs and Offline calls need no reply. So the dispatcher gathers each kind for up to
//! `logic_gather_window_ms` and sends it in one AckMany or OfflineMany call, keeping the highest
//! seq of each device's acks. SENDs and SIGN_INs go out at once in SendMany and ConnSignInMany
//! calls, up to `logic_gather_calls` of each kind at a time. While every one of those is out, new ones wait and then go together, so the calls per
//! request fall as the load rises. A logic tier without these gathered calls gets one call per
//! request instead (see `many`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use futures::channel::oneshot;
use futures::FutureExt;
use im_proto::device_int_service_client::DeviceIntServiceClient;
use im_proto::{
    ConnAckManyRequest, ConnAckRequest, ConnLoginRequest, ConnLogoutReply, ConnLogoutRequest,
    ConnSendManyRequest, ConnSendRequest, ConnSignInManyRequest, ConnSignInReply,
    ConnSignInRequest, ConnSyncRequest, ErrorCode, LoginReply, OfflineManyRequest, OfflineOutcome,
    OfflineRequest, RegisterReply, RegisterRequest, SendOutcome, SendReply, SignInOutcome,
    SyncReply,
};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::many::{ManySupport, COPY_FOR, SINGLE_FOR};
use crate::metrics::{BridgeMetrics, BRIDGE_METHODS};
use im_proto::internal_secret::AttachSecret;

/// Maximum acks per AckMany call, the logic tier's limit.
const ACK_MANY_MAX: usize = 1024;

/// Index of AckMany in `BRIDGE_METHODS`.
const ACK_MANY_METHOD: usize = 6;

/// Index of OfflineMany in `BRIDGE_METHODS`.
const OFFLINE_MANY_METHOD: usize = 3;

/// Indexes in `BRIDGE_METHODS` of the gathered calls whose reply has an outcome per request, so
/// that `im_engine_logic_outcomes_total` counts requests and not calls: ConnSignInMany,
/// OfflineMany and SendMany.
const REQUEST_OUTCOME_METHODS: [usize; 3] = [2, OFFLINE_MANY_METHOD, 4];

/// Maximum Offline requests of one call logged one by one when they are given up on.
const OFFLINE_LOG_MAX: usize = 16;

/// Maximum requests per SendMany or ConnSignInMany call, the logic tier's limit.
const MANY_MAX: usize = 1024;

/// Maximum encoded bytes of the requests of one SendMany or ConnSignInMany call, below the
/// 4 MiB that a tonic server decodes by default. One request is at most a device's largest
/// message, far below it.
const MANY_MAX_BYTES: usize = 3 << 20;

/// Largest reply accepted from the logic tier. A SYNC reply contains up to the logic tier's
/// `sync_max_page_bytes` of content (16 MiB at most) and the other fields of up to 10,000
/// messages. tonic's default limit of 4 MiB failed larger pages with INTERNAL.
const LOGIC_REPLY_MAX_BYTES: usize = 32 << 20;

/// The logic tier's client, sending the internal secret with every call.
pub(crate) type LogicClient = DeviceIntServiceClient<InterceptedService<Channel, AttachSecret>>;

/// A failed call, as the device will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The code sent to the device.
    pub code: ErrorCode,
    /// Text sent to the device; names what failed and what to do.
    pub message: String,
}

impl CallError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps a gRPC status from the logic tier. The logic tier puts the device-facing
    /// code in the `im-error-code` metadata; transport failures carry none.
    pub fn from_status(status: &tonic::Status) -> Self {
        let carried = status
            .metadata()
            .get(im_proto::ERROR_CODE_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<i32>().ok())
            .and_then(|number| ErrorCode::try_from(number).ok());
        if let Some(code) = carried {
            return Self::new(code, status.message());
        }
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Self::new(
                ErrorCode::Timeout,
                "the logic tier did not reply in time; retry with back-off",
            ),
            tonic::Code::Unavailable | tonic::Code::Unknown => Self::new(
                ErrorCode::Unavailable,
                "the logic tier is unavailable; retry with back-off",
            ),
            _ => Self::new(ErrorCode::Internal, "internal error; retry later"),
        }
    }

    fn timed_out() -> Self {
        Self::new(
            ErrorCode::Timeout,
            "the logic tier did not reply in time; retry with back-off",
        )
    }

    fn busy(message: &str) -> Self {
        Self::new(ErrorCode::Busy, message)
    }

    /// True for failures that a retry may fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Busy
        )
    }
}

/// Result of a bridged call.
pub(crate) type CallResult<T> = Result<T, CallError>;

/// A call from a shard to the logic tier, with the channel for its reply.
#[derive(Debug)]
pub(crate) enum Call {
    Register {
        request: RegisterRequest,
        reply: oneshot::Sender<CallResult<RegisterReply>>,
        permits: Permits,
    },
    Login {
        request: ConnLoginRequest,
        reply: oneshot::Sender<CallResult<LoginReply>>,
        permits: Permits,
    },
    SignIn {
        request: ConnSignInRequest,
        reply: oneshot::Sender<CallResult<ConnSignInReply>>,
        permits: Permits,
    },
    /// Fire and forget; retried while the logic tier is unreachable.
    Offline { request: OfflineRequest },
    Send {
        request: ConnSendRequest,
        reply: oneshot::Sender<CallResult<SendReply>>,
    },
    Sync {
        request: ConnSyncRequest,
        reply: oneshot::Sender<CallResult<SyncReply>>,
    },
    /// Fire and forget: a lost ack only makes the next one cover more.
    Ack { request: ConnAckRequest },
    Logout {
        request: ConnLogoutRequest,
        reply: oneshot::Sender<CallResult<ConnLogoutReply>>,
    },
    /// Ends the dispatcher once every call queued before it has been spawned.
    Stop,
}

/// Places a sign-in call keeps from its admission on the shard until its reply: one among
/// `logic_max_in_flight`, and one among `logic_max_password_calls` for LOGIN and REGISTER.
#[derive(Debug)]
pub(crate) struct Permits {
    _in_flight: OwnedSemaphorePermit,
    _password: Option<OwnedSemaphorePermit>,
}

/// Kind of sign-in call, which decides the places it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInKind {
    /// SIGN_IN: checks a token.
    Token,
    /// LOGIN and REGISTER: hash a password in the logic tier.
    Password,
}

/// The shards' side of the bridge. Cloned into every shard.
#[derive(Clone)]
pub(crate) struct BridgeHandle {
    calls: Sender<Call>,
    metrics: Arc<BridgeMetrics>,
    /// Places for calls on the wire at once, shared with the dispatcher.
    in_flight_limit: Arc<Semaphore>,
    /// Places for LOGIN and REGISTER, which hash a password in the logic tier and are far
    /// slower than the rest, so a flood of them cannot take every place.
    password_limit: Arc<Semaphore>,
}

impl BridgeHandle {
    /// Takes the places a sign-in call needs, without waiting, so a storm of sign-ins gets
    /// BUSY instead of a queue. Takes no lock (atomic operations only).
    ///
    /// # Errors
    /// BUSY when a place is not free at once.
    pub(crate) fn admit_sign_in(&self, kind: SignInKind) -> Result<Permits, CallError> {
        let password = match kind {
            SignInKind::Token => None,
            SignInKind::Password => Some(
                self.password_limit
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| CallError::busy(BUSY_PASSWORD))?,
            ),
        };
        let in_flight = self
            .in_flight_limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| CallError::busy(BUSY_IN_FLIGHT))?;
        Ok(Permits {
            _in_flight: in_flight,
            _password: password,
        })
    }

    /// Queues a call without blocking.
    ///
    /// # Errors
    /// BUSY when the queue is full, UNAVAILABLE when the bridge has stopped. The call is
    /// dropped, with any places it held.
    pub(crate) fn submit(&self, call: Call) -> Result<(), CallError> {
        // Counted before the send, so the dispatcher's decrement never comes first.
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        match self.calls.try_send(call) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics.queue_rejected.fetch_add(1, Ordering::Relaxed);
                Err(CallError::busy(BUSY_QUEUE))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                Err(CallError::new(
                    ErrorCode::Unavailable,
                    "the engine is shutting down; reconnect",
                ))
            }
        }
    }

    /// Stops the dispatcher after the calls already queued, waiting for queue space.
    pub(crate) fn stop(&self) {
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.calls.send(Call::Stop);
    }
}

const BUSY_PASSWORD: &str =
    "the engine has logic_max_password_calls LOGIN and REGISTER calls in flight; retry after retry_after_ms";
const BUSY_IN_FLIGHT: &str =
    "the engine has logic_max_in_flight calls in flight to the logic tier; retry after retry_after_ms";
const BUSY_QUEUE: &str =
    "the engine has bridge_queue calls queued for the logic tier; retry after retry_after_ms";

/// Settings of the bridge.
#[derive(Debug, Clone)]
pub(crate) struct BridgeConfig {
    pub logic_url: String,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub queue: usize,
    pub offline_retries: u32,
    pub max_in_flight: usize,
    pub max_password_calls: usize,
    /// SendMany and ConnSignInMany calls of each kind on the wire at once.
    pub gather_calls: usize,
    /// How long an ack or an Offline waits for others to share its call.
    pub gather_window: Duration,
    /// Sent in the metadata of every call; empty sends none.
    pub internal_secret: String,
}

/// Builds a lazily connecting client of the logic tier at `url`: a logic tier that is down is
/// noticed per call, within its deadline. Each call carries `secret` when it is not empty.
///
/// # Errors
/// The URL does not parse.
pub(crate) fn logic_client(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
    secret: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<LogicClient, crate::EngineError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| crate::EngineError::InvalidLogicUrl {
            url: im_settings::redact_url(url),
            reason: err.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .tcp_nodelay(true);
    // The channel's background task needs the runtime's context to be created.
    let _context = runtime.enter();
    Ok(
        DeviceIntServiceClient::with_interceptor(
            endpoint.connect_lazy(),
            AttachSecret::new(secret),
        )
        .max_decoding_message_size(LOGIC_REPLY_MAX_BYTES),
    )
}

/// Creates the channel and the dispatcher thread. Calls run on `runtime`.
///
/// # Errors
/// The logic URL does not parse, or the thread cannot start.
pub(crate) fn start(
    config: BridgeConfig,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<BridgeMetrics>,
) -> Result<(BridgeHandle, std::thread::JoinHandle<()>), crate::EngineError> {
    let client = logic_client(
        &config.logic_url,
        config.connect_timeout,
        config.call_timeout,
        &config.internal_secret,
        &runtime,
    )?;
    let (calls, receiver) = crossbeam_channel::bounded(config.queue);
    let in_flight_limit = Arc::new(Semaphore::new(config.max_in_flight));
    let context = Arc::new(CallContext {
        limit: in_flight_limit.clone(),
        metrics: metrics.clone(),
        timeout: config.call_timeout,
        many: ManySupport::new(SINGLE_FOR, COPY_FOR),
    });
    let (sends, queued_sends) = tokio::sync::mpsc::unbounded_channel();
    runtime.spawn(gather::<Sends>(
        client.clone(),
        queued_sends,
        context.clone(),
        config.gather_calls,
    ));
    let (sign_ins, queued_sign_ins) = tokio::sync::mpsc::unbounded_channel();
    runtime.spawn(gather::<SignIns>(
        client.clone(),
        queued_sign_ins,
        context.clone(),
        config.gather_calls,
    ));
    let dispatcher = Dispatcher {
        client,
        sends,
        sign_ins,
        offline_retries: config.offline_retries,
        gather_window: config.gather_window,
        runtime,
        in_flight,
        context,
        metrics: metrics.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("bridge".to_owned())
        .spawn(move || dispatcher.run(receiver))
        .map_err(crate::EngineError::Thread)?;
    info!(
        logic_url = %im_settings::redact_url(&config.logic_url),
        queue = config.queue,
        "bridge to the logic tier started"
    );
    let handle = BridgeHandle {
        calls,
        metrics,
        in_flight_limit,
        password_limit: Arc::new(Semaphore::new(config.max_password_calls)),
    };
    Ok((handle, thread))
}

struct Dispatcher {
    client: LogicClient,
    /// SENDs on their way to the task that gathers them into SendMany calls.
    sends: tokio::sync::mpsc::UnboundedSender<Pending<Sends>>,
    /// SIGN_INs on their way to the task that gathers them into ConnSignInMany calls.
    sign_ins: tokio::sync::mpsc::UnboundedSender<Pending<SignIns>>,
    offline_retries: u32,
    /// How long an ack or an Offline waits for others to share its call.
    gather_window: Duration,
    runtime: tokio::runtime::Handle,
    /// Calls spawned and not finished; shutdown waits for it to reach zero.
    in_flight: Arc<AtomicUsize>,
    context: Arc<CallContext>,
    metrics: Arc<BridgeMetrics>,
}

impl Dispatcher {
    /// Spawns each call until `Call::Stop` arrives or every sender is gone. Acks and Offline
    /// calls are gathered and spawned as one AckMany or OfflineMany call when the oldest has
    /// waited `gather_window`, when [`ACK_MANY_MAX`] or [`MANY_MAX`] of them are waiting, or when the
    /// dispatcher stops.
    fn run(self, receiver: Receiver<Call>) {
        let mut acks = PendingAcks::new(self.gather_window);
        let mut offlines = PendingOfflines::new(self.gather_window);
        loop {
            let flush_at = [acks.flush_at(), offlines.flush_at()]
                .into_iter()
                .flatten()
                .min();
            let received = match flush_at {
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => receiver.recv_deadline(at),
            };
            match received {
                Ok(call) => {
                    self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                    match call {
                        Call::Stop => break,
                        Call::Ack { request } => acks.add(request),
                        Call::Offline { request } => offlines.add(request),
                        Call::Send { request, reply } => {
                            self.queue(&self.sends, request, reply, None);
                        }
                        Call::SignIn {
                            request,
                            reply,
                            permits,
                        } => self.queue(&self.sign_ins, request, reply, Some(permits)),
                        call => self.spawn(call),
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if acks.len() >= ACK_MANY_MAX || is_due(acks.flush_at(), now) {
                self.spawn_acks(acks.take());
            }
            if offlines.requests.len() >= MANY_MAX || is_due(offlines.flush_at(), now) {
                self.spawn_offlines(offlines.take());
            }
        }
        if acks.len() > 0 {
            self.spawn_acks(acks.take());
        }
        if !offlines.requests.is_empty() {
            self.spawn_offlines(offlines.take());
        }
        info!("bridge to the logic tier stopped");
    }

    /// Hands one request to the task that gathers its kind, counted in flight until its reply.
    fn queue<G: Gathered>(
        &self,
        queue: &tokio::sync::mpsc::UnboundedSender<Pending<G>>,
        request: G::Request,
        reply: oneshot::Sender<CallResult<G::Reply>>,
        permits: Option<Permits>,
    ) {
        let in_flight = InFlight::start(&self.in_flight, &self.metrics);
        let pending = Pending::new(request, reply, Some(in_flight), permits);
        if let Err(returned) = queue.send(pending) {
            // The gathering task ended with the runtime: the engine is stopping.
            let error = CallError::new(
                ErrorCode::Unavailable,
                "the engine node is stopping; retry on another node",
            );
            let _ = returned.0.reply.send(Err(error));
        }
    }

    fn spawn(&self, call: Call) {
        let client = self.client.clone();
        let retries = self.offline_retries;
        self.spawn_counted(move |context| async move {
            execute(client, call, &context, retries).await;
        });
    }

    fn spawn_offlines(&self, offlines: Vec<OfflineRequest>) {
        let client = self.client.clone();
        let retries = self.offline_retries;
        self.spawn_counted(move |context| async move {
            send_offlines(client, offlines, &context, retries).await;
        });
    }

    fn spawn_acks(&self, acks: Vec<ConnAckRequest>) {
        let client = self.client.clone();
        self.spawn_counted(move |context| async move {
            send_acks(client, acks, &context).await;
        });
    }

    /// Spawns the future `work` makes, counted in flight until it ends.
    fn spawn_counted<F, W>(&self, work: W)
    where
        W: FnOnce(Arc<CallContext>) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let context = self.context.clone();
        let in_flight = InFlight::start(&self.in_flight, &self.metrics);
        let work = work(context);
        self.runtime.spawn(async move {
            work.await;
            drop(in_flight);
        });
    }
}

/// One call counted in flight, from its dispatch until this is dropped. Shutdown waits for
/// the count to reach zero.
struct InFlight {
    count: Arc<AtomicUsize>,
    metrics: Arc<BridgeMetrics>,
}

impl InFlight {
    fn start(count: &Arc<AtomicUsize>, metrics: &Arc<BridgeMetrics>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            count: count.clone(),
            metrics: metrics.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One kind of request that the bridge sends many at a time.
trait Gathered: Send + 'static {
    type Request: prost::Message + Clone + Send + 'static;
    type Reply: Send + 'static;
    type Outcome: Send + 'static;
    /// Index of the kind's call in `BRIDGE_METHODS`.
    const METHOD: usize;
    /// True when each request took its place among the calls in flight on the shard, so the
    /// call must not wait for a place of its own.
    const ADMITTED: bool;

    /// Makes the gathered call that carries `requests`.
    fn call(client: LogicClient, requests: Vec<Self::Request>) -> GatheredCall<Self::Outcome>;

    /// Makes the single call that carries `request`, for a logic tier without the gathered one.
    fn call_one(
        client: LogicClient,
        request: Self::Request,
    ) -> futures::future::BoxFuture<'static, Self::Outcome>;

    /// Turns one outcome of the reply into the result the device gets.
    fn result(outcome: Self::Outcome) -> CallResult<Self::Reply>;

    /// Returns the user and device ids of `request`, for logs.
    fn device(request: &Self::Request) -> (u64, u64);
}

/// A call that carries gathered requests and returns one outcome per request.
type GatheredCall<O> = futures::future::BoxFuture<'static, Result<Vec<O>, tonic::Status>>;

/// SEND, as SendMany.
struct Sends;

impl Gathered for Sends {
    type Request = ConnSendRequest;
    type Reply = SendReply;
    type Outcome = SendOutcome;
    const METHOD: usize = 4;
    const ADMITTED: bool = false;

    fn call(mut client: LogicClient, sends: Vec<ConnSendRequest>) -> GatheredCall<SendOutcome> {
        Box::pin(async move {
            let reply = client.send_many(ConnSendManyRequest { sends }).await?;
            Ok(reply.into_inner().outcomes)
        })
    }

    fn call_one(
        mut client: LogicClient,
        send: ConnSendRequest,
    ) -> futures::future::BoxFuture<'static, SendOutcome> {
        Box::pin(async move {
            let (code, message, reply) = single_outcome(client.send(send).await);
            SendOutcome {
                code,
                reply,
                message,
            }
        })
    }

    fn result(outcome: SendOutcome) -> CallResult<SendReply> {
        outcome_result(outcome.code, outcome.message)?;
        outcome.reply.ok_or_else(|| {
            warn!("SendMany outcome is OK without a reply");
            CallError::new(ErrorCode::Internal, "internal error; retry later")
        })
    }

    fn device(request: &ConnSendRequest) -> (u64, u64) {
        request
            .device
            .as_ref()
            .map_or((0, 0), |device| (device.user_id, device.device_id))
    }
}

/// SIGN_IN, as ConnSignInMany.
struct SignIns;

impl Gathered for SignIns {
    type Request = ConnSignInRequest;
    type Reply = ConnSignInReply;
    type Outcome = SignInOutcome;
    const METHOD: usize = 2;
    const ADMITTED: bool = true;

    fn call(
        mut client: LogicClient,
        sign_ins: Vec<ConnSignInRequest>,
    ) -> GatheredCall<SignInOutcome> {
        Box::pin(async move {
            let reply = client
                .conn_sign_in_many(ConnSignInManyRequest { sign_ins })
                .await?;
            Ok(reply.into_inner().outcomes)
        })
    }

    fn call_one(
        mut client: LogicClient,
        sign_in: ConnSignInRequest,
    ) -> futures::future::BoxFuture<'static, SignInOutcome> {
        Box::pin(async move {
            let (code, message, _) = single_outcome(client.conn_sign_in(sign_in).await);
            SignInOutcome { code, message }
        })
    }

    fn result(outcome: SignInOutcome) -> CallResult<ConnSignInReply> {
        outcome_result(outcome.code, outcome.message).map(|()| ConnSignInReply {})
    }

    fn device(request: &ConnSignInRequest) -> (u64, u64) {
        request
            .sign_in
            .as_ref()
            .map_or((0, 0), |sign_in| (sign_in.user_id, sign_in.device_id))
    }
}

/// Splits the result of a single call, made in place of a gathered one, into the code and text
/// of its outcome and, when it succeeded, its reply.
fn single_outcome<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> (i32, String, Option<T>) {
    match result {
        Ok(reply) => (
            ErrorCode::Ok.into(),
            String::new(),
            Some(reply.into_inner()),
        ),
        Err(status) => {
            let err = CallError::from_status(&status);
            (err.code.into(), err.message, None)
        }
    }
}

/// Turns the code and text of one outcome into OK or the error the device gets.
fn outcome_result(code: i32, message: String) -> CallResult<()> {
    match ErrorCode::try_from(code) {
        Ok(ErrorCode::Ok) => Ok(()),
        Ok(code) => Err(CallError::new(code, message)),
        Err(_) => {
            warn!(code, "outcome has an unknown code");
            Err(CallError::new(
                ErrorCode::Internal,
                "internal error; retry later",
            ))
        }
    }
}

/// A request waiting for the call that carries it.
struct Pending<G: Gathered> {
    request: G::Request,
    reply: oneshot::Sender<CallResult<G::Reply>>,
    /// When the dispatcher took it; its deadline counts from here.
    queued_at: Instant,
    reserved: Reserved,
}

impl<G: Gathered> Pending<G> {
    /// Wraps a request taken from the queue now, with the places it keeps until its reply.
    fn new(
        request: G::Request,
        reply: oneshot::Sender<CallResult<G::Reply>>,
        in_flight: Option<InFlight>,
        permits: Option<Permits>,
    ) -> Self {
        Pending {
            request,
            reply,
            queued_at: Instant::now(),
            reserved: Reserved {
                _in_flight: in_flight,
                _permits: permits,
            },
        }
    }
}

/// Places reserved for a gathered request until its reply is sent: its place in the in-flight
/// count and, for a sign-in, the places it took on the shard.
struct Reserved {
    _in_flight: Option<InFlight>,
    _permits: Option<Permits>,
}

/// Takes the queued requests of one kind and sends them in calls, at most `calls`
/// at a time. Each call carries the requests queued when a place frees up, up to [`MANY_MAX`]
/// of them and [`MANY_MAX_BYTES`] encoded. Ends once the dispatcher is gone and the queue is
/// empty.
async fn gather<G: Gathered>(
    client: LogicClient,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Pending<G>>,
    context: Arc<CallContext>,
    calls: usize,
) {
    let places = Arc::new(Semaphore::new(calls));
    // A request that did not fit in the last call; it starts the next one.
    let mut carried: Option<Pending<G>> = None;
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            break;
        };
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => break,
            },
        };
        let (batch, rest) = fill(first, &mut queue);
        carried = rest;
        let client = client.clone();
        let context = context.clone();
        tokio::spawn(async move {
            call_gathered(client, batch, &context).await;
            drop(place);
        });
    }
    debug!(
        method = BRIDGE_METHODS[G::METHOD],
        "request gathering stopped"
    );
}

/// Returns `first` and the requests queued behind it, up to [`MANY_MAX`] of them and
/// [`MANY_MAX_BYTES`] encoded, and the request taken from the queue that did not fit.
fn fill<G: Gathered>(
    first: Pending<G>,
    queue: &mut tokio::sync::mpsc::UnboundedReceiver<Pending<G>>,
) -> (Vec<Pending<G>>, Option<Pending<G>>) {
    let mut bytes = first.request.encoded_len();
    let mut batch = vec![first];
    while batch.len() < MANY_MAX {
        let Ok(pending) = queue.try_recv() else {
            break;
        };
        bytes += pending.request.encoded_len();
        if bytes > MANY_MAX_BYTES {
            return (batch, Some(pending));
        }
        batch.push(pending);
    }
    (batch, None)
}

/// Sends `batch` in one call and replies to each request. Each request keeps its own deadline,
/// `logic_call_timeout_ms` after the dispatcher took it. A request already past it gets a
/// TIMEOUT reply and stays out of the call. A request that passes it while the call runs gets
/// its TIMEOUT reply then. The call itself runs until the newest request's deadline.
async fn call_gathered<G: Gathered>(
    client: LogicClient,
    batch: Vec<Pending<G>>,
    context: &CallContext,
) {
    let now = Instant::now();
    let mut requests = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for pending in batch {
        let deadline = pending.queued_at + context.timeout;
        if deadline <= now || pending.reply.is_canceled() {
            context.metrics.count_outcome(G::METHOD, ErrorCode::Timeout);
            let _ = pending.reply.send(Err(CallError::timed_out()));
            continue;
        }
        requests.push(pending.request);
        waiting.push(Waiting {
            reply: Some(pending.reply),
            deadline,
            _reserved: pending.reserved,
        });
    }
    let Some(last) = waiting.iter().map(|waiting| waiting.deadline).max() else {
        return;
    };
    let first_device = requests.first().map(G::device);
    let count = requests.len();
    let many = &context.many;
    let call = async move {
        let gathered = client.clone();
        let outcomes = many
            .send(
                G::METHOD,
                requests,
                &context.metrics.single_calls[G::METHOD],
                |requests| G::call(gathered, requests),
                |request| G::call_one(client.clone(), request),
            )
            .await?;
        Ok(tonic::Response::new(outcomes))
    };
    let call = if G::ADMITTED {
        context.run_unlimited(G::METHOD, last - now, call).boxed()
    } else {
        context.run_within(G::METHOD, last - now, call).boxed()
    };
    let result = answer_expired(call, &mut waiting, &context.metrics, G::METHOD).await;
    match result {
        Ok(outcomes) => {
            if outcomes.len() != count {
                warn!(
                    method = BRIDGE_METHODS[G::METHOD],
                    requests = count,
                    outcomes = outcomes.len(),
                    "reply does not match its request; failing the requests without an outcome"
                );
            }
            let mut outcomes = outcomes.into_iter();
            for waiting in &mut waiting {
                let result = outcomes.next().map_or_else(
                    || {
                        Err(CallError::new(
                            ErrorCode::Internal,
                            "internal error; retry later",
                        ))
                    },
                    G::result,
                );
                if let Err(err) = &result {
                    context.metrics.count_failure(G::METHOD, err.code);
                }
                waiting.answer(result, &context.metrics, G::METHOD);
            }
        }
        Err(err) => {
            debug!(
                method = BRIDGE_METHODS[G::METHOD],
                requests = count,
                first_user_id = first_device.map_or(0, |(user, _)| user),
                first_device_id = first_device.map_or(0, |(_, device)| device),
                code = ?err.code,
                "gathered call failed"
            );
            for waiting in &mut waiting {
                waiting.answer(Err(err.clone()), &context.metrics, G::METHOD);
            }
        }
    }
}

/// A request of a gathered call that is on the wire.
struct Waiting<R> {
    /// Taken once the request has its reply.
    reply: Option<oneshot::Sender<CallResult<R>>>,
    deadline: Instant,
    /// Released when the call ends, not when the request has its reply, so that the places
    /// count the call's work.
    _reserved: Reserved,
}

impl<R> Waiting<R> {
    /// Sends `result` unless the request has its reply already, and counts it as an outcome of
    /// method number `method`.
    fn answer(&mut self, result: CallResult<R>, metrics: &BridgeMetrics, method: usize) {
        if let Some(reply) = self.reply.take() {
            let code = result
                .as_ref()
                .map_or_else(|err| err.code, |_| ErrorCode::Ok);
            metrics.count_outcome(method, code);
            let _ = reply.send(result);
        }
    }
}

/// Runs `call` and sends a TIMEOUT reply to each request of `waiting` whose deadline passes
/// first. `waiting` is in queue order, so its deadlines do not decrease.
async fn answer_expired<T, R>(
    call: futures::future::BoxFuture<'_, CallResult<T>>,
    waiting: &mut [Waiting<R>],
    metrics: &BridgeMetrics,
    method: usize,
) -> CallResult<T> {
    let mut call = call;
    let mut next = 0;
    loop {
        let Some(deadline) = waiting.get(next).map(|waiting| waiting.deadline) else {
            return call.await;
        };
        tokio::select! {
            result = &mut call => return result,
            () = tokio::time::sleep_until(deadline.into()) => {
                waiting[next].answer(Err(CallError::timed_out()), metrics, method);
                next += 1;
            }
        }
    }
}

/// Acks waiting in the dispatcher for their AckMany call: the highest seq of each device.
struct PendingAcks {
    /// Highest seq by (user id, device id).
    seqs: HashMap<(u64, u64), u64>,
    window: GatherWindow,
}

impl PendingAcks {
    fn new(window: Duration) -> Self {
        Self {
            seqs: HashMap::new(),
            window: GatherWindow::new(window),
        }
    }

    fn add(&mut self, request: ConnAckRequest) {
        let device = request
            .device
            .as_ref()
            .map_or((0, 0), |device| (device.user_id, device.device_id));
        let seq = self.seqs.entry(device).or_insert(request.seq);
        *seq = (*seq).max(request.seq);
        self.window.open();
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Returns when the waiting acks must be sent, or `None` when none wait.
    fn flush_at(&self) -> Option<Instant> {
        self.window.flush_at()
    }

    /// Empties the set and returns its acks.
    fn take(&mut self) -> Vec<ConnAckRequest> {
        self.window.close();
        self.seqs
            .drain()
            .map(|((user_id, device_id), seq)| ConnAckRequest {
                device: Some(im_proto::DeviceRef { user_id, device_id }),
                seq,
            })
            .collect()
    }
}

/// Offline requests waiting in the dispatcher for their OfflineMany call.
struct PendingOfflines {
    requests: Vec<OfflineRequest>,
    window: GatherWindow,
}

impl PendingOfflines {
    fn new(window: Duration) -> Self {
        Self {
            requests: Vec::new(),
            window: GatherWindow::new(window),
        }
    }

    fn add(&mut self, request: OfflineRequest) {
        self.requests.push(request);
        self.window.open();
    }

    /// Returns when the waiting requests must be sent, or `None` when none wait.
    fn flush_at(&self) -> Option<Instant> {
        self.window.flush_at()
    }

    fn take(&mut self) -> Vec<OfflineRequest> {
        self.window.close();
        std::mem::take(&mut self.requests)
    }
}

/// The time window of requests gathered in the dispatcher: it opens with the first request and
/// closes when they are sent, its length later at the latest.
struct GatherWindow {
    /// When the oldest waiting request arrived.
    opened: Option<Instant>,
    /// How long the oldest request may wait.
    length: Duration,
}

impl GatherWindow {
    fn new(length: Duration) -> Self {
        Self {
            opened: None,
            length,
        }
    }

    /// Opens the window, unless a request is already waiting.
    fn open(&mut self) {
        self.opened.get_or_insert_with(Instant::now);
    }

    /// Returns when the waiting requests must be sent, or `None` when none wait.
    fn flush_at(&self) -> Option<Instant> {
        self.opened.map(|opened| opened + self.length)
    }

    fn close(&mut self) {
        self.opened = None;
    }
}

/// Tells whether a flush time has come.
fn is_due(flush_at: Option<Instant>, now: Instant) -> bool {
    flush_at.is_some_and(|at| now >= at)
}

/// Shared state of every call besides its request: the in-flight limit, the metrics, the
/// deadline and which gathered calls the logic tier serves.
struct CallContext {
    limit: Arc<Semaphore>,
    metrics: Arc<BridgeMetrics>,
    timeout: Duration,
    many: ManySupport,
}

impl CallContext {
    /// Runs `call` as method number `method` of `BRIDGE_METHODS`, timing it. It waits for
    /// a place among the calls in flight first, within its deadline, so a burst (every
    /// device of a node closing at once) waits here instead of failing in the transport.
    async fn run<T>(
        &self,
        method: usize,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> CallResult<T> {
        self.run_within(method, self.timeout, call).await
    }

    /// Runs `call` as [`CallContext::run`] does, with `timeout` for its deadline.
    async fn run_within<T>(
        &self,
        method: usize,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> CallResult<T> {
        let started = Instant::now();
        let limited = async {
            let _permit = self.limit.acquire().await;
            call.await
        };
        let result = with_deadline(timeout, limited).await;
        self.record(method, started, result)
    }

    /// Runs a sign-in call that took its places on the shard; they are released when the
    /// call ends.
    async fn run_admitted<T>(
        &self,
        method: usize,
        permits: Permits,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> CallResult<T> {
        let result = self.run_unlimited(method, self.timeout, call).await;
        drop(permits);
        result
    }

    /// Runs `call` within `timeout` without waiting for a place among the calls in flight,
    /// for requests that took their places on the shard.
    async fn run_unlimited<T>(
        &self,
        method: usize,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> CallResult<T> {
        let started = Instant::now();
        let result = with_deadline(timeout, call).await;
        self.record(method, started, result)
    }

    /// Times a call and counts it as failed when it failed on the server's side or in transport.
    /// Counts its outcome too, unless the method counts the outcome of each request it carries.
    fn record<T>(&self, method: usize, started: Instant, result: CallResult<T>) -> CallResult<T> {
        self.metrics.call_seconds[method].observe(started.elapsed());
        let code = result
            .as_ref()
            .map_or_else(|err| err.code, |_| ErrorCode::Ok);
        self.metrics.count_failure(method, code);
        if !REQUEST_OUTCOME_METHODS.contains(&method) {
            self.metrics.count_outcome(method, code);
        }
        result
    }
}

async fn execute(mut client: LogicClient, call: Call, context: &CallContext, offline_retries: u32) {
    match call {
        Call::Register {
            request,
            reply,
            permits,
        } => {
            let result = context.run_admitted(0, permits, client.register(request));
            let _ = reply.send(result.await);
        }
        Call::Login {
            request,
            reply,
            permits,
        } => {
            let result = context.run_admitted(1, permits, client.conn_login(request));
            let _ = reply.send(result.await);
        }
        // The dispatcher queues SIGN_INs for the gathering task.
        Call::SignIn {
            request,
            reply,
            permits,
        } => {
            let pending = Pending::<SignIns>::new(request, reply, None, Some(permits));
            call_gathered(client, vec![pending], context).await;
        }
        // The dispatcher gathers Offline calls for send_offlines.
        Call::Offline { request } => {
            send_offlines(client, vec![request], context, offline_retries).await;
        }
        // The dispatcher queues SENDs for the gathering task.
        Call::Send { request, reply } => {
            let pending = Pending::<Sends>::new(request, reply, None, None);
            call_gathered(client, vec![pending], context).await;
        }
        Call::Sync { request, reply } => {
            let _ = reply.send(context.run(5, client.sync(request)).await);
        }
        // The dispatcher sends acks together, through send_acks.
        Call::Ack { request } => send_acks(client, vec![request], context).await,
        Call::Logout { request, reply } => {
            let _ = reply.send(context.run(7, client.logout(request)).await);
        }
        Call::Stop => {}
    }
}

/// Sends `acks` in one AckMany call. A lost ack only makes the device's next one cover more, so
/// failures are logged at debug level.
async fn send_acks(client: LogicClient, acks: Vec<ConnAckRequest>, context: &CallContext) {
    let count = acks.len();
    let call = async {
        let mut gathered = client.clone();
        let failed = context
            .many
            .send(
                ACK_MANY_METHOD,
                acks,
                &context.metrics.single_calls[ACK_MANY_METHOD],
                |acks| async move {
                    let reply = gathered.ack_many(ConnAckManyRequest { acks }).await?;
                    Ok(vec![reply.into_inner().failed])
                },
                |ack| {
                    let mut client = client.clone();
                    async move { u32::from(client.ack(ack).await.is_err()) }
                },
            )
            .await?;
        Ok(tonic::Response::new(failed.into_iter().sum::<u32>()))
    };
    match context.run(ACK_MANY_METHOD, call).await {
        Ok(failed) if failed > 0 => {
            debug!(acks = count, failed, "some acks were not stored");
        }
        Ok(_) => {}
        Err(err) => debug!(code = ?err.code, acks = count, "ack call failed"),
    }
}

/// Runs one call under `timeout`, so a logic tier that never replies still yields TIMEOUT.
async fn with_deadline<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> CallResult<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => {
            debug!(code = ?status.code(), status = %status.message(), "logic call failed");
            Err(CallError::from_status(&status))
        }
        Err(_) => Err(CallError::timed_out()),
    }
}

/// Sends `offlines` in one OfflineMany call, and again, with a backoff doubling from 200 ms,
/// those that failed with a retryable error, up to `retries` times. A request given up on
/// leaves its device's status in place until the device signs in again, or until this node's
/// lease lapses if the node stops too.
async fn send_offlines(
    client: LogicClient,
    mut offlines: Vec<OfflineRequest>,
    context: &CallContext,
    retries: u32,
) {
    let metrics = &context.metrics;
    let mut backoff = Duration::from_millis(200);
    for attempt in 0..=retries {
        let call = offline_many(
            &client,
            offlines.clone(),
            &context.many,
            &context.metrics.single_calls[OFFLINE_MANY_METHOD],
        );
        // `run` counts the call's own failure, and this loop the outcome of each request, on
        // every attempt.
        let failed: Vec<(OfflineRequest, CallError)> =
            match context.run(OFFLINE_MANY_METHOD, call).await {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    offlines
                        .drain(..)
                        .filter_map(|request| {
                            let result = outcomes.next().map_or_else(
                                || {
                                    Err(CallError::new(
                                        ErrorCode::Internal,
                                        "internal error; retry later",
                                    ))
                                },
                                |outcome| outcome_result(outcome.code, outcome.message),
                            );
                            let code = result
                                .as_ref()
                                .map_or_else(|err| err.code, |()| ErrorCode::Ok);
                            metrics.count_outcome(OFFLINE_MANY_METHOD, code);
                            metrics.count_failure(OFFLINE_MANY_METHOD, code);
                            result.err().map(|err| (request, err))
                        })
                        .collect()
                }
                Err(err) => offlines
                    .drain(..)
                    .map(|request| {
                        metrics.count_outcome(OFFLINE_MANY_METHOD, err.code);
                        (request, err.clone())
                    })
                    .collect(),
            };
        let mut given_up = 0usize;
        for (request, err) in failed {
            if err.is_retryable() && attempt < retries {
                offlines.push(request);
                continue;
            }
            given_up += 1;
            // One line per device, up to a bound, so that a mass failure does not flood the log.
            if given_up <= OFFLINE_LOG_MAX {
                warn!(
                    user_id = request.user_id,
                    device_id = request.device_id,
                    conn_id = request.conn.as_ref().map_or(0, |conn| conn.conn_id),
                    code = ?err.code,
                    error = %err.message,
                    "offline failed, giving up; the status stays until the device signs in again"
                );
            }
        }
        if given_up > OFFLINE_LOG_MAX {
            warn!(
                requests = given_up,
                logged = OFFLINE_LOG_MAX,
                "offline failed, giving up on more devices than logged"
            );
        }
        if offlines.is_empty() {
            return;
        }
        warn!(
            requests = offlines.len(),
            attempt, "offline failed, retrying"
        );
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

/// Sends `offlines` in one OfflineMany call, or one Offline call each when the logic tier
/// does not serve OfflineMany, and returns one outcome per request.
async fn offline_many(
    client: &LogicClient,
    offlines: Vec<OfflineRequest>,
    many: &ManySupport,
    singles: &AtomicU64,
) -> Result<tonic::Response<Vec<OfflineOutcome>>, tonic::Status> {
    let mut gathered = client.clone();
    let outcomes = many
        .send(
            OFFLINE_MANY_METHOD,
            offlines,
            singles,
            |offlines| async move {
                let reply = gathered
                    .offline_many(OfflineManyRequest { offlines })
                    .await?;
                Ok(reply.into_inner().outcomes)
            },
            |offline| {
                let mut client = client.clone();
                async move {
                    let (code, message, reply) = single_outcome(client.offline(offline).await);
                    OfflineOutcome {
                        code,
                        removed: reply.is_some_and(|reply| reply.removed),
                        message,
                    }
                }
            },
        )
        .await?;
    Ok(tonic::Response::new(outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(user_id: u64, device_id: u64, seq: u64) -> ConnAckRequest {
        ConnAckRequest {
            device: Some(im_proto::DeviceRef { user_id, device_id }),
            seq,
        }
    }

    #[test]
    fn send_outcomes_become_device_results() {
        let reply = SendReply {
            message_id: 7,
            seq: 3,
            sent_at_ms: 1,
        };
        let stored = SendOutcome {
            code: ErrorCode::Ok as i32,
            reply: Some(reply),
            message: String::new(),
        };
        assert_eq!(Sends::result(stored), Ok(reply));

        let rejected = SendOutcome {
            code: ErrorCode::NotFriend as i32,
            reply: None,
            message: "not a friend".to_owned(),
        };
        let err = Sends::result(rejected).expect_err("rejected");
        assert_eq!(err, CallError::new(ErrorCode::NotFriend, "not a friend"));

        let no_reply = SendOutcome {
            code: ErrorCode::Ok as i32,
            reply: None,
            message: String::new(),
        };
        let err = Sends::result(no_reply).expect_err("OK without a reply");
        assert_eq!(err.code, ErrorCode::Internal);

        let unknown = SendOutcome {
            code: 9999,
            reply: None,
            message: String::new(),
        };
        let err = Sends::result(unknown).expect_err("unknown code");
        assert_eq!(err.code, ErrorCode::Internal);
    }

    #[test]
    fn sign_in_outcomes_become_device_results() {
        let signed_in = SignInOutcome {
            code: ErrorCode::Ok as i32,
            message: String::new(),
        };
        assert_eq!(SignIns::result(signed_in), Ok(ConnSignInReply {}));

        let expired = SignInOutcome {
            code: ErrorCode::TokenExpired as i32,
            message: "token expired".to_owned(),
        };
        let err = SignIns::result(expired).expect_err("expired");
        assert_eq!(
            err,
            CallError::new(ErrorCode::TokenExpired, "token expired")
        );
    }

    fn queued_send(content_bytes: usize) -> Pending<Sends> {
        let (reply, _) = oneshot::channel();
        let request = ConnSendRequest {
            device: Some(im_proto::DeviceRef {
                user_id: 1,
                device_id: 2,
            }),
            send: Some(im_proto::SendRequest {
                content: vec![b'x'; content_bytes].into(),
                ..Default::default()
            }),
        };
        Pending::new(request, reply, None, None)
    }

    #[test]
    fn fill_stops_at_byte_budget() {
        let (queue, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        // 60 KiB each: 51 fit in 3 MiB, the 52nd does not.
        for _ in 0..60 {
            queue.send(queued_send(60 << 10)).unwrap();
        }
        let first = receiver.try_recv().unwrap();

        let (batch, carried) = fill(first, &mut receiver);
        let bytes: usize = batch
            .iter()
            .map(|pending| pending.request.encoded_len())
            .sum();
        assert_eq!(batch.len(), 51);
        assert!(bytes <= MANY_MAX_BYTES, "{bytes}");
        assert!(carried.is_some());
        assert_eq!(receiver.len(), 60 - 52);
    }

    #[test]
    fn fill_stops_at_request_count() {
        let (queue, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..MANY_MAX + 5 {
            queue.send(queued_send(10)).unwrap();
        }
        let first = receiver.try_recv().unwrap();

        let (batch, carried) = fill(first, &mut receiver);
        assert_eq!(batch.len(), MANY_MAX);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 5);
    }

    #[tokio::test]
    async fn expired_requests_get_timeout_while_call_runs() {
        let start = Instant::now();
        let mut replies = Vec::new();
        let mut waiting: Vec<Waiting<u32>> = [20, 5_000]
            .into_iter()
            .map(|ms| {
                let (reply, receiver) = oneshot::channel();
                replies.push(receiver);
                Waiting {
                    reply: Some(reply),
                    deadline: start + Duration::from_millis(ms),
                    _reserved: Reserved {
                        _in_flight: None,
                        _permits: None,
                    },
                }
            })
            .collect();
        let call = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<u32, CallError>(7)
        };

        let metrics = BridgeMetrics::default();
        let result = answer_expired(call.boxed(), &mut waiting, &metrics, 4).await;
        assert_eq!(result, Ok(7));
        let first = replies.remove(0).await.expect("first answered");
        assert_eq!(first, Err(CallError::timed_out()));
        assert!(waiting[1].reply.is_some(), "the second is still waiting");
    }

    fn call_context() -> CallContext {
        CallContext {
            limit: Arc::new(Semaphore::new(8)),
            metrics: Arc::default(),
            timeout: Duration::from_secs(5),
            many: ManySupport::new(SINGLE_FOR, COPY_FOR),
        }
    }

    fn outcome_count(metrics: &BridgeMetrics, method: usize, code: ErrorCode) -> u64 {
        let index = crate::metrics::OUTCOME_CODES
            .iter()
            .position(|known| *known == code)
            .expect("code is in the label list");
        metrics.outcomes[method][index].load(Ordering::Relaxed)
    }

    fn status_with_code(code: ErrorCode, message: &str) -> tonic::Status {
        let mut status = tonic::Status::unauthenticated(message);
        let value = (code as i32).to_string().parse().unwrap();
        status
            .metadata_mut()
            .insert(im_proto::ERROR_CODE_METADATA_KEY, value);
        status
    }

    #[tokio::test]
    async fn wrong_password_is_not_a_failed_call() {
        let context = call_context();
        let login = 1;
        let wrong_password = status_with_code(ErrorCode::InvalidCredentials, "wrong password");

        let result = context
            .run(login, async {
                Err::<tonic::Response<()>, _>(wrong_password)
            })
            .await;

        assert_eq!(result.unwrap_err().code, ErrorCode::InvalidCredentials);
        let metrics = &context.metrics;
        assert_eq!(metrics.call_errors[login].load(Ordering::Relaxed), 0);
        assert_eq!(
            outcome_count(metrics, login, ErrorCode::InvalidCredentials),
            1
        );
    }

    #[tokio::test]
    async fn unreachable_logic_is_a_failed_call() {
        let context = call_context();
        let login = 1;
        let refused = tonic::Status::unavailable("connection refused");

        let result = context
            .run(login, async { Err::<tonic::Response<()>, _>(refused) })
            .await;
        let ok = context
            .run(login, async { Ok(tonic::Response::new(())) })
            .await;

        assert_eq!(result.unwrap_err().code, ErrorCode::Unavailable);
        assert!(ok.is_ok());
        let metrics = &context.metrics;
        assert_eq!(metrics.call_errors[login].load(Ordering::Relaxed), 1);
        assert_eq!(outcome_count(metrics, login, ErrorCode::Unavailable), 1);
        assert_eq!(outcome_count(metrics, login, ErrorCode::Ok), 1);
    }

    /// SEND through a gathered call whose reply carries the outcomes queued in `OUTCOMES`.
    struct ScriptedSends;

    static OUTCOMES: std::sync::Mutex<Vec<SendOutcome>> = std::sync::Mutex::new(Vec::new());

    impl Gathered for ScriptedSends {
        type Request = ConnSendRequest;
        type Reply = SendReply;
        type Outcome = SendOutcome;
        const METHOD: usize = Sends::METHOD;
        const ADMITTED: bool = false;

        fn call(_client: LogicClient, requests: Vec<ConnSendRequest>) -> GatheredCall<SendOutcome> {
            let outcomes: Vec<SendOutcome> = OUTCOMES.lock().unwrap().drain(..).collect();
            assert_eq!(outcomes.len(), requests.len(), "one outcome per request");
            Box::pin(async move { Ok(outcomes) })
        }

        fn call_one(
            _client: LogicClient,
            _request: ConnSendRequest,
        ) -> futures::future::BoxFuture<'static, SendOutcome> {
            unreachable!("the gathered call is served")
        }

        fn result(outcome: SendOutcome) -> CallResult<SendReply> {
            Sends::result(outcome)
        }

        fn device(request: &ConnSendRequest) -> (u64, u64) {
            Sends::device(request)
        }
    }

    #[tokio::test]
    async fn gathered_outcomes_count_only_server_failures() {
        // Never connected: the scripted calls do not use it.
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = DeviceIntServiceClient::with_interceptor(channel, AttachSecret::new("test"));
        let context = call_context();
        let outcome = |code: ErrorCode| SendOutcome {
            code: code.into(),
            reply: (code == ErrorCode::Ok).then(SendReply::default),
            message: String::new(),
        };
        *OUTCOMES.lock().unwrap() = vec![
            outcome(ErrorCode::Ok),
            outcome(ErrorCode::NotFriend),
            outcome(ErrorCode::Internal),
        ];
        let mut replies = Vec::new();
        let batch = (0..3)
            .map(|_| {
                let (reply, receiver) = oneshot::channel();
                replies.push(receiver);
                Pending::<ScriptedSends>::new(ConnSendRequest::default(), reply, None, None)
            })
            .collect();

        call_gathered(client, batch, &context).await;

        let mut codes = Vec::new();
        for receiver in replies {
            let result = receiver.await.expect("answered");
            codes.push(result.map_or_else(|err| err.code, |_| ErrorCode::Ok));
        }
        assert_eq!(
            codes,
            vec![ErrorCode::Ok, ErrorCode::NotFriend, ErrorCode::Internal]
        );
        let metrics = &context.metrics;
        let send = Sends::METHOD;
        assert_eq!(metrics.call_errors[send].load(Ordering::Relaxed), 1);
        assert_eq!(outcome_count(metrics, send, ErrorCode::Ok), 1);
        assert_eq!(outcome_count(metrics, send, ErrorCode::NotFriend), 1);
        assert_eq!(outcome_count(metrics, send, ErrorCode::Internal), 1);
    }

    #[test]
    fn pending_acks_keep_highest_per_device() {
        let window = Duration::from_millis(5);
        let mut acks = PendingAcks::new(window);
        assert_eq!(acks.flush_at(), None);

        let before = Instant::now();
        acks.add(ack(1, 10, 5));
        acks.add(ack(1, 10, 3));
        acks.add(ack(2, 20, 1));
        acks.add(ack(2, 20, 4));
        acks.add(ack(1, 11, 2));
        assert_eq!(acks.len(), 3);
        let due = acks.flush_at().expect("acks wait");
        assert!(due >= before + window);
        assert!(!is_due(acks.flush_at(), due - Duration::from_millis(1)));
        assert!(is_due(acks.flush_at(), due));

        let mut sent: Vec<(u64, u64, u64)> = acks
            .take()
            .into_iter()
            .map(|request| {
                let device = request.device.expect("device");
                (device.user_id, device.device_id, request.seq)
            })
            .collect();
        sent.sort_unstable();
        assert_eq!(sent, vec![(1, 10, 5), (1, 11, 2), (2, 20, 4)]);
        assert_eq!(acks.len(), 0);
        assert_eq!(acks.flush_at(), None);
    }

    #[test]
    fn carried_code_wins_over_grpc_code() {
        let mut status = tonic::Status::unauthenticated("token expired");
        status.metadata_mut().insert(
            im_proto::ERROR_CODE_METADATA_KEY,
            (ErrorCode::TokenExpired as i32)
                .to_string()
                .parse()
                .unwrap(),
        );
        let err = CallError::from_status(&status);
        assert_eq!(err.code, ErrorCode::TokenExpired);
        assert_eq!(err.message, "token expired");
    }

    #[test]
    fn transport_failure_is_unavailable() {
        let err = CallError::from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(err.is_retryable());
    }

    #[test]
    fn deadline_is_timeout() {
        let err = CallError::from_status(&tonic::Status::deadline_exceeded("late"));
        assert_eq!(err.code, ErrorCode::Timeout);
    }

    fn handle(
        queue: usize,
        in_flight: usize,
        password_calls: usize,
    ) -> (BridgeHandle, Receiver<Call>) {
        let (calls, receiver) = crossbeam_channel::bounded(queue);
        let handle = BridgeHandle {
            calls,
            metrics: Arc::default(),
            in_flight_limit: Arc::new(Semaphore::new(in_flight)),
            password_limit: Arc::new(Semaphore::new(password_calls)),
        };
        (handle, receiver)
    }

    #[test]
    fn full_queue_is_busy_at_once() {
        let (bridge, _receiver) = handle(1, 1, 1);
        let offline = || Call::Offline {
            request: OfflineRequest::default(),
        };
        assert!(bridge.submit(offline()).is_ok());
        let err = bridge.submit(offline()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        assert_eq!(bridge.metrics.queue_rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn password_places_are_not_waited_for() {
        let (bridge, _receiver) = handle(8, 8, 2);
        let first = bridge.admit_sign_in(SignInKind::Password).unwrap();
        let _second = bridge.admit_sign_in(SignInKind::Password).unwrap();
        let err = bridge.admit_sign_in(SignInKind::Password).unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        assert!(bridge.admit_sign_in(SignInKind::Token).is_ok());
        drop(first);
        assert!(bridge.admit_sign_in(SignInKind::Password).is_ok());
    }

    #[test]
    fn in_flight_places_bound_token_sign_ins() {
        let (bridge, _receiver) = handle(8, 1, 8);
        let held = bridge.admit_sign_in(SignInKind::Token).unwrap();
        let err = bridge.admit_sign_in(SignInKind::Token).unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        assert!(
            err.message.contains("logic_max_in_flight"),
            "{}",
            err.message
        );
        drop(held);
        assert!(bridge.admit_sign_in(SignInKind::Token).is_ok());
    }
}
