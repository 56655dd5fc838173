//! Shards: one thread per core, each with its own monoio runtime (io_uring where the
//! kernel allows it, epoll otherwise), its own SO_REUSEPORT listener and its own
//! connections. Nothing on a shard's hot path takes a lock.

use std::cell::{Cell, RefCell};
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use im_ws::{DecoderLimits, HandshakeLimits};
use monoio::io::Canceller;
use monoio::net::TcpListener;
use monoio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::admission::Admission;
use crate::bridge::BridgeHandle;
use crate::config::Config;
use crate::conn::rate::{RateLimits, ShardClock};
use crate::inbox::{message_packet, InboxReceiver, PushPayload, ShardMessage, TargetedPush};
use crate::metrics::ShardMetrics;
use crate::registry::{CloseRequest, ConnId, DeviceMap, ShardRegistry};
use crate::tls::TlsCertificate;

/// Interval of the shard's deadline sweep, so the lateness bound of every deadline.
const DEADLINE_SWEEP: Duration = Duration::from_millis(100);

/// Size of the buffer each shard reads sockets into before frames are decoded.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Everything a connection task needs from its shard.
pub(crate) struct ShardContext {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    /// This node's address as the logic tier calls it.
    pub(crate) node: Arc<str>,
    pub(crate) registry: ShardRegistry,
    pub(crate) devices: Arc<DeviceMap>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) bridge: BridgeHandle,
    pub(crate) metrics: Arc<ShardMetrics>,
    /// Shared read buffer; borrowed only between two awaits.
    pub(crate) scratch: RefCell<Box<[u8]>>,
    pub(crate) handshake_limits: HandshakeLimits,
    pub(crate) decoder_limits: DecoderLimits,
    pub(crate) rate_limits: RateLimits,
    /// Time of the latest socket read on this shard, read by the rate limits and deadlines.
    pub(crate) clock: ShardClock,
    /// The wss:// certificate; `None` serves plain ws://. Read once per accepted connection.
    pub(crate) tls: Option<Arc<TlsCertificate>>,
    /// The outbox a connection points at until its handshake is done; then it gets its
    /// own, allocated after the handshake's short-lived allocations, not between them.
    /// Nothing is queued on it: a connection in its handshake has no id to be reached by.
    pub(crate) placeholder_outbox: Rc<crate::registry::Outbox>,
}

/// Settings and handles a shard thread starts with.
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) node: Arc<str>,
    pub(crate) devices: Arc<DeviceMap>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) bridge: BridgeHandle,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) listener: StdListener,
    pub(crate) inbox: InboxReceiver,
    pub(crate) shutdown_grace: Duration,
    pub(crate) tls: Option<Arc<TlsCertificate>>,
}

/// Starts the shard's thread.
pub(crate) fn spawn(setup: ShardSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("shard-{}", setup.index))
        .spawn(move || {
            let index = setup.index;
            let runtime = build_runtime(&setup.config).or_else(|err| {
                // A kernel without the flags returns EINVAL. Other errors (a memlock limit,
                // no descriptors) have other causes, so they are reported as they are.
                let flags_set = setup.config.io_uring
                    && setup.config.ring_coop_taskrun
                    && setup.config.sqpoll_idle_ms == 0;
                if !flags_set || err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(err);
                }
                warn!(shard = index, error = %err, "io_uring rejected COOP_TASKRUN or SINGLE_ISSUER; falling back to a plain ring");
                let plain = Config {
                    ring_coop_taskrun: false,
                    ..Config::clone(&setup.config)
                };
                build_runtime(&plain)
            });
            match runtime {
                Ok(mut runtime) => {
                    let driver = match &runtime {
                        monoio::FusionRuntime::Uring(_) => "io_uring",
                        monoio::FusionRuntime::Legacy(_) => "epoll",
                    };
                    if setup.config.io_uring && driver == "epoll" {
                        warn!(
                            shard = index,
                            "io_uring is unavailable (kernel too old, kernel.io_uring_disabled, \
                             or a seccomp filter); the shard runs on epoll"
                        );
                    }
                    info!(shard = index, driver, "shard runtime built");
                    runtime.block_on(run(setup))
                }
                Err(err) => error!(shard = index, error = %err, "shard runtime failed to start"),
            }
        })
}

type ShardRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// Builds a shard's runtime with the ring options of `config`.
fn build_runtime(config: &Config) -> std::io::Result<ShardRuntime> {
    if !config.io_uring {
        return Ok(monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .into());
    }
    let mut builder = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(config.ring_entries);
    if config.sqpoll_idle_ms > 0 || config.ring_coop_taskrun {
        let mut ring = io_uring::IoUring::builder();
        if config.sqpoll_idle_ms > 0 {
            ring.setup_sqpoll(config.sqpoll_idle_ms);
        }
        if config.ring_coop_taskrun && config.sqpoll_idle_ms == 0 {
            // Only this thread ever submits to or waits on the ring. The kernel rejects
            // COOP_TASKRUN together with SQPOLL, whose thread runs the completions anyway.
            ring.setup_coop_taskrun().setup_single_issuer();
        }
        builder = builder.uring_builder(ring);
    }
    builder.build()
}

async fn run(setup: ShardSetup) {
    let ShardSetup {
        index,
        config,
        node,
        devices,
        admission,
        bridge,
        metrics,
        listener,
        inbox,
        shutdown_grace,
        tls,
    } = setup;
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            error!(shard = index, error = %err, "shard listener failed");
            return;
        }
    };
    let ctx = Rc::new(ShardContext {
        index,
        handshake_limits: HandshakeLimits {
            max_header_bytes: config.max_header_bytes,
            path: config.ws_path.clone(),
        },
        decoder_limits: DecoderLimits {
            max_frame_payload: config.max_frame_bytes,
            max_message_size: config.max_message_bytes,
        },
        rate_limits: RateLimits::from_config(&config),
        clock: ShardClock::new(),
        config,
        node,
        registry: ShardRegistry::new(index),
        devices,
        admission,
        bridge,
        metrics,
        scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
        tls,
        placeholder_outbox: Rc::default(),
    });
    let stopping = Rc::new(Cell::new(false));
    let canceller = Rc::new(RefCell::new(Some(Canceller::new())));
    monoio::spawn(serve_inbox(
        ctx.clone(),
        inbox,
        stopping.clone(),
        canceller.clone(),
    ));
    monoio::spawn(sweep_deadlines(ctx.clone()));
    info!(shard = index, "shard started");
    accept_loop(&ctx, &listener, &stopping, &canceller).await;
    drop(listener);
    drain(&ctx, shutdown_grace).await;
    info!(shard = index, "shard stopped");
}

async fn accept_loop(
    ctx: &Rc<ShardContext>,
    listener: &TcpListener,
    stopping: &Cell<bool>,
    canceller: &RefCell<Option<Canceller>>,
) {
    let mut last_warning: Option<Instant> = None;
    while !stopping.get() {
        let handle = match canceller.borrow().as_ref() {
            Some(canceller) => canceller.handle(),
            None => return,
        };
        match listener.cancelable_accept(handle).await {
            Ok((stream, peer)) => {
                ShardMetrics::add(&ctx.metrics.accepted, 1);
                ctx.metrics.note_churn();
                crate::conn::spawn(ctx.clone(), stream, peer);
            }
            Err(_) if stopping.get() => return,
            Err(err) => {
                // Out of descriptors or memory: back off instead of spinning, and warn
                // at most once a second.
                let now = Instant::now();
                if last_warning.is_none_or(|at| now - at >= Duration::from_secs(1)) {
                    warn!(shard = ctx.index, error = %err, "accept failed; backing off");
                    last_warning = Some(now);
                }
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Wakes connections whose sign-in, idle or write deadline has passed, every
/// `DEADLINE_SWEEP`. One shard timer replaces a timer per connection (a monoio `Sleep` is
/// 640 bytes); a deadline is acted on at most one sweep late.
/// It runs until the shard's runtime ends, so connections still closing during a
/// shutdown keep their deadlines.
async fn sweep_deadlines(ctx: Rc<ShardContext>) {
    loop {
        monoio::time::sleep(DEADLINE_SWEEP).await;
        ctx.registry.wake_due(ctx.clock.read_ms());
    }
}

/// Handles messages from other threads until the shard stops.
async fn serve_inbox(
    ctx: Rc<ShardContext>,
    inbox: InboxReceiver,
    stopping: Rc<Cell<bool>>,
    canceller: Rc<RefCell<Option<Canceller>>>,
) {
    while let Some(message) = inbox.recv().await {
        match message {
            ShardMessage::Kick {
                conn_id,
                device_id,
                reason,
                reply,
            } => {
                let outbox = ctx
                    .registry
                    .get(conn_id)
                    .filter(|outbox| outbox.device() == device_id);
                match &outbox {
                    Some(outbox) => outbox.request_close(CloseRequest::Kicked(reason)),
                    None => debug!(
                        conn_id = conn_id.0,
                        device_id, "kick for a connection already closed"
                    ),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outbox.is_some());
                }
            }
            ShardMessage::Deliver { items, reply } => {
                let _ = reply.send(deliver(&ctx, items));
            }
            ShardMessage::Shutdown => {
                stopping.set(true);
                if let Some(canceller) = canceller.borrow_mut().take() {
                    canceller.cancel();
                }
                return;
            }
        }
    }
}

/// Queues a MESSAGE or NOTICE packet on each target's connection. Returns (delivered, missed);
/// a target is missed when its connection closed, changed device or is closing.
fn deliver(ctx: &ShardContext, items: Vec<TargetedPush>) -> (u32, u32) {
    // Counts of (delivered, missed) messages and of (delivered, missed) notices.
    let (mut messages, mut notices) = ((0u32, 0u32), (0u32, 0u32));
    for item in items {
        let counts = match *item.payload {
            PushPayload::Message(_) => &mut messages,
            PushPayload::Notice(_) => &mut notices,
        };
        if deliver_one(ctx, &item) {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    ShardMetrics::add(&ctx.metrics.messages_out, u64::from(messages.0));
    ShardMetrics::add(&ctx.metrics.messages_missed, u64::from(messages.1));
    ShardMetrics::add(&ctx.metrics.notices_out, u64::from(notices.0));
    (messages.0 + notices.0, messages.1 + notices.1)
}

/// Queues the packet of `item` on its target's connection. Returns false when the target is
/// missed.
fn deliver_one(ctx: &ShardContext, item: &TargetedPush) -> bool {
    let outbox = ctx
        .registry
        .get(ConnId(item.target.conn_id))
        .filter(|outbox| outbox.device() == item.target.device_id)
        .filter(|outbox| outbox.close_request().is_none());
    let Some(outbox) = outbox else {
        return false;
    };
    let queued = match &*item.payload {
        PushPayload::Message(without_seq) => {
            let encoded = message_packet(without_seq, item.target.seq);
            outbox.push(|buf| im_ws::encode_binary(&encoded, buf))
        }
        PushPayload::Notice(encoded) => outbox.push(|buf| im_ws::encode_binary(encoded, buf)),
    };
    let limit = ctx.config.max_outbound_bytes;
    // Past the limit, only the bytes the socket rejects count against the device.
    if queued > limit
        && ctx
            .registry
            .write_direct(ConnId(item.target.conn_id), &outbox)
            > limit
    {
        debug!(
            conn_id = item.target.conn_id,
            queued = outbox.queued(),
            "outbound queue full; closing"
        );
        outbox.request_close(CloseRequest::SlowConsumer);
        ctx.metrics.count_limit("outbound_queue");
        return false;
    }
    true
}

/// Asks every connection to close with 1001 and waits, at most `grace`, for them to go.
async fn drain(ctx: &ShardContext, grace: Duration) {
    ctx.registry.close_all(CloseRequest::Shutdown);
    let deadline = Instant::now() + grace;
    while !ctx.registry.is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if !ctx.registry.is_empty() {
        warn!(
            shard = ctx.index,
            left = ctx.registry.len(),
            "shutdown grace passed with connections still open"
        );
    }
}
