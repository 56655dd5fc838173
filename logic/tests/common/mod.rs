//! Helpers shared by the integration tests: store URLs from the environment, a logic server on
//! 127.0.0.1:0 with real tonic clients, unique names, and a recording engine node.
//!
//! Each test file uses a different subset, so unused helpers are expected.
#![allow(dead_code)]

pub(crate) mod log_capture;
pub(crate) mod redis_child;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use im_logic::{start, Config, LogicServer};
use im_proto::v1::connect_int_service_server::{ConnectIntService, ConnectIntServiceServer};
use im_proto::v1::device_int_service_client::DeviceIntServiceClient;
use im_proto::v1::logic_ext_service_client::LogicExtServiceClient;
use im_proto::v1::{
    ConnLoginRequest, ConnRef, ConnSendRequest, ConnSignInRequest, ConnSyncRequest,
    ConversationType, CreateGroupRequest, DeliverReply, DeliverRequest, Delivery, DeviceInfo,
    DeviceRef, ErrorCode, FriendRequest, GroupInfo, KickReply, KickRequest, LoginReply,
    LoginRequest, OfflineRequest, RegisterRequest, SendReply, SendRequest, SignInRequest,
    SyncReply, SyncRequest,
};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub(crate) type Client = DeviceIntServiceClient<Channel>;
pub(crate) type ExtClient = LogicExtServiceClient<Channel>;

/// Password used by every test user; long enough for the 8-byte minimum.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Node address for connection references whose node is never called, or whose kick may fail.
pub(crate) const NODE: &str = "127.0.0.1:1";

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run scripts/test, which starts PostgreSQL and Redis and sets \
             IM_LOGIC_DATABASE_URL and IM_LOGIC_REDIS_URL"
        )
    })
}

/// Returns the test PostgreSQL URL.
pub(crate) fn database_url() -> String {
    env_url("IM_LOGIC_DATABASE_URL")
}

/// Returns the test Redis URL.
pub(crate) fn redis_url() -> String {
    env_url("IM_LOGIC_REDIS_URL")
}

/// Starts a server for tests that wait for notices on a recording node: a Deliver call past
/// `engine_call_timeout_ms` drops its notice, and the first call to a node also connects.
pub(crate) async fn start_for_notices() -> TestLogic {
    TestLogic::start(Config {
        engine_call_timeout_ms: 10_000,
        ..test_config()
    })
    .await
}

/// Returns a configuration for the test stores, free ports and cheap Argon2id parameters.
pub(crate) fn test_config() -> Config {
    Config {
        listen_addr: "127.0.0.1:0".to_owned(),
        metrics_addr: "127.0.0.1:0".to_owned(),
        database_url: database_url(),
        redis_url: redis_url(),
        db_pool_size: 4,
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        argon2_parallelism: 1,
        engine_call_timeout_ms: 1000,
        startup_retry_ms: 0,
        // Off: the default port would clash between tests running at once.
        web_addr: String::new(),
        ..Config::default()
    }
}

/// A running logic server and a client connected to it.
pub(crate) struct TestLogic {
    pub(crate) server: LogicServer,
    pub(crate) client: Client,
}

impl TestLogic {
    /// Starts a server with `config` and connects a client.
    pub(crate) async fn start(config: Config) -> TestLogic {
        let server = start(config).await.expect("logic server starts");
        let client = Client::connect(format!("http://{}", server.local_addr()))
            .await
            .expect("client connects");
        TestLogic { server, client }
    }

    /// Starts a server with [`test_config`].
    pub(crate) async fn start_default() -> TestLogic {
        TestLogic::start(test_config()).await
    }

    /// Connects a `LogicExtService` client to the server.
    pub(crate) async fn ext_client(&self) -> ExtClient {
        ExtClient::connect(format!("http://{}", self.server.local_addr()))
            .await
            .expect("ext client connects")
    }
}

/// Wraps `message` in a request whose metadata carries the credentials of `device`, as
/// `LogicExtService` calls require.
pub(crate) fn as_device<T>(device: &LoginReply, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("im-user-id", device.user_id.into());
    metadata.insert("im-device-id", device.device_id.into());
    metadata.insert("im-token", device.token.parse().expect("token is ASCII"));
    request
}

/// Returns `prefix` with a random suffix, so parallel tests never share a username.
pub(crate) fn unique_name(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}_{suffix:016x}")
}

/// Returns the ErrorCode a failed call carries in its metadata.
pub(crate) fn error_code(status: &Status) -> ErrorCode {
    let value = status
        .metadata()
        .get(im_proto::ERROR_CODE_METADATA_KEY)
        .unwrap_or_else(|| panic!("status without error code: {status:?}"));
    let number: i32 = value.to_str().expect("ascii").parse().expect("a number");
    ErrorCode::try_from(number).expect("a known ErrorCode")
}

/// Asserts that `status` rejects a request as INVALID_ARGUMENT, in its gRPC code and its
/// ErrorCode, with a message that contains `named` (a field or value). `case` labels failures.
pub(crate) fn assert_invalid(status: &Status, named: &str, case: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{case}: {status:?}"
    );
    assert_eq!(error_code(status), ErrorCode::InvalidArgument, "{case}");
    assert!(
        status.message().contains(named),
        "{case}: {}",
        status.message()
    );
}

/// Returns a connection reference on `node`.
pub(crate) fn conn(node: &str, conn_id: u64) -> ConnRef {
    ConnRef {
        node: node.to_owned(),
        conn_id,
    }
}

/// Registers `username` with [`PASSWORD`] and returns the user id.
pub(crate) async fn register(client: &mut Client, username: &str) -> u64 {
    register_with(client, username, false).await
}

/// Registers `username` with [`PASSWORD`], open to direct messages from anyone when `open`.
pub(crate) async fn register_with(client: &mut Client, username: &str, open: bool) -> u64 {
    let request = RegisterRequest {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
        open,
    };
    client
        .register(request)
        .await
        .expect("registration succeeds")
        .into_inner()
        .user_id
}

/// Sends ConnLogin for `username` and `password` on `conn`.
pub(crate) async fn login_with(
    client: &mut Client,
    username: &str,
    password: &str,
    device_id: u64,
    conn: ConnRef,
) -> Result<LoginReply, Status> {
    let request = ConnLoginRequest {
        login: Some(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            device_id,
            device: Some(DeviceInfo {
                platform: "test".to_owned(),
                model: "integration".to_owned(),
                app_version: "0.1.0".to_owned(),
            }),
        }),
        conn: Some(conn),
        client_addr: "127.0.0.1:40000".to_owned(),
    };
    client.conn_login(request).await.map(Response::into_inner)
}

/// Sends ConnLogin with [`PASSWORD`].
pub(crate) async fn login(
    client: &mut Client,
    username: &str,
    device_id: u64,
    conn: ConnRef,
) -> Result<LoginReply, Status> {
    login_with(client, username, PASSWORD, device_id, conn).await
}

/// Registers a fresh user and logs in a new device on `conn`.
pub(crate) async fn new_device(client: &mut Client, prefix: &str, conn: ConnRef) -> LoginReply {
    new_user_device(client, prefix, false, conn).await.1
}

/// Registers a fresh user, open to strangers when `open`, and logs in a new device on `conn`.
/// Returns the username and the login reply.
pub(crate) async fn new_user_device(
    client: &mut Client,
    prefix: &str,
    open: bool,
    conn: ConnRef,
) -> (String, LoginReply) {
    let username = unique_name(prefix);
    register_with(client, &username, open).await;
    let device = login(client, &username, 0, conn)
        .await
        .expect("login succeeds");
    (username, device)
}

/// Sends ConnSignIn.
pub(crate) async fn sign_in(
    client: &mut Client,
    user_id: u64,
    device_id: u64,
    token: &str,
    conn: ConnRef,
) -> Result<(), Status> {
    let request = sign_in_request(user_id, device_id, token, conn);
    client.conn_sign_in(request).await.map(|_| ())
}

/// Builds the ConnSignIn request of a device on `conn`.
pub(crate) fn sign_in_request(
    user_id: u64,
    device_id: u64,
    token: &str,
    conn: ConnRef,
) -> ConnSignInRequest {
    ConnSignInRequest {
        sign_in: Some(SignInRequest {
            user_id,
            device_id,
            token: token.to_owned(),
        }),
        conn: Some(conn),
        client_addr: "127.0.0.1:40001".to_owned(),
    }
}

/// Sends ConnSignInMany and returns each sign-in's outcome, in request order.
pub(crate) async fn sign_in_many(
    client: &mut Client,
    sign_ins: Vec<ConnSignInRequest>,
) -> Vec<im_proto::v1::SignInOutcome> {
    client
        .conn_sign_in_many(im_proto::v1::ConnSignInManyRequest { sign_ins })
        .await
        .expect("ConnSignInMany")
        .into_inner()
        .outcomes
}

/// Sends Offline and returns `removed`.
pub(crate) async fn offline(
    client: &mut Client,
    user_id: u64,
    device_id: u64,
    conn: ConnRef,
) -> bool {
    let request = OfflineRequest {
        user_id,
        device_id,
        conn: Some(conn),
    };
    client
        .offline(request)
        .await
        .expect("offline succeeds")
        .into_inner()
        .removed
}

/// Returns the engine's view of a signed-in device.
pub(crate) fn device_ref(device: &LoginReply) -> Option<DeviceRef> {
    Some(DeviceRef {
        user_id: device.user_id,
        device_id: device.device_id,
    })
}

/// Returns a text message to `receiver_id` with a random client message id.
pub(crate) fn text_to(conversation: ConversationType, receiver_id: u64, text: &str) -> SendRequest {
    SendRequest {
        conversation_type: conversation as i32,
        receiver_id,
        content: bytes::Bytes::copy_from_slice(text.as_bytes()),
        content_type: "text/plain".to_owned(),
        client_msg_id: unique_name("msg"),
    }
}

/// Sends `send` from `device` through DeviceIntService.Send.
pub(crate) async fn send(
    client: &mut Client,
    device: &LoginReply,
    send: SendRequest,
) -> Result<SendReply, Status> {
    let request = ConnSendRequest {
        device: device_ref(device),
        send: Some(send),
    };
    client.send(request).await.map(Response::into_inner)
}

/// Sends a direct text message from `device` to user `receiver_id`.
pub(crate) async fn send_text(
    client: &mut Client,
    device: &LoginReply,
    receiver_id: u64,
    text: &str,
) -> Result<SendReply, Status> {
    let message = text_to(ConversationType::User, receiver_id, text);
    send(client, device, message).await
}

/// Sends SYNC for `device`'s user.
pub(crate) async fn sync(
    client: &mut Client,
    device: &LoginReply,
    after_seq: u64,
    limit: u32,
) -> Result<SyncReply, Status> {
    let request = ConnSyncRequest {
        device: device_ref(device),
        sync: Some(SyncRequest { after_seq, limit }),
    };
    client.sync(request).await.map(Response::into_inner)
}

/// Makes the users of `a` and `b` friends: `a` requests, `b` accepts.
pub(crate) async fn make_friends(ext: &mut ExtClient, a: &LoginReply, b: &LoginReply) {
    ext.request_friend(as_device(a, FriendRequest { user_id: b.user_id }))
        .await
        .expect("friend request succeeds");
    ext.accept_friend(as_device(b, FriendRequest { user_id: a.user_id }))
        .await
        .expect("accept succeeds");
}

/// Makes `owner`'s user a friend of each of `members`, so that the owner may add them to a
/// group, then creates a group owned by the owner with `members` besides the owner.
pub(crate) async fn create_group(
    ext: &mut ExtClient,
    owner: &LoginReply,
    members: &[&LoginReply],
) -> GroupInfo {
    for member in members {
        make_friends(ext, owner, member).await;
    }
    let request = CreateGroupRequest {
        name: "test group".to_owned(),
        member_ids: members.iter().map(|member| member.user_id).collect(),
    };
    ext.create_group(as_device(owner, request))
        .await
        .expect("group created")
        .into_inner()
}

/// Opens a PostgreSQL connection to the test database for direct checks.
pub(crate) async fn postgres() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable");
    tokio::spawn(connection);
    client
}

/// Opens a Redis connection to the test Redis for direct checks.
pub(crate) async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable")
}

/// Returns a field of a Redis hash.
pub(crate) async fn hget(key: &str, field: u64) -> Option<String> {
    let mut redis = redis_connection().await;
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut redis)
        .await
        .expect("HGET succeeds")
}

/// Returns a field of a Redis hash on the server at `url`.
pub(crate) async fn hget_in(url: &str, key: &str, field: u64) -> Option<String> {
    let mut redis = redis::Client::open(url)
        .expect("valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut redis)
        .await
        .expect("HGET succeeds")
}

/// Binds a listener for a stand-in engine node on a random loopback address, such as
/// 127.83.5.201, with a port the kernel picks.
///
/// Every test shares one Redis, where the address of a node whose lease lapsed is remembered
/// for ten minutes: pushes skip it and the reaper removes the statuses that name it. Engines of
/// earlier tests leave such addresses on 127.0.0.1, and the kernel may give their ports to a
/// later listener there, whose devices would then get nothing. A random address among 16
/// million makes such a repeat negligible. 127.0.0.0/16 is left to the fixed node addresses of
/// the tests and to the bench's source addresses.
pub(crate) async fn bind_node() -> TcpListener {
    let [_, b, c, d] = rand::rng().random::<u32>().to_be_bytes();
    let ip = std::net::Ipv4Addr::new(127, b.max(1), c, d.clamp(1, 254));
    TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|err| panic!("bind a node listener on {ip}: {err}"))
}

/// Returns a loopback port that was free a moment ago.
pub(crate) async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// A `ConnectIntService` endpoint on loopback that records the kicks and deliveries it
/// receives, standing in for an engine node. Deliver calls with a notice in any delivery go to
/// `notices`, all others to `deliveries`, so that tests of messages see no notices.
pub(crate) struct EngineRecorder {
    pub(crate) addr: SocketAddr,
    pub(crate) kicks: mpsc::UnboundedReceiver<KickRequest>,
    pub(crate) deliveries: mpsc::UnboundedReceiver<DeliverRequest>,
    pub(crate) notices: mpsc::UnboundedReceiver<DeliverRequest>,
    /// Notice deliveries of calls already received and not yet returned by `next_notice`.
    pending_notices: VecDeque<Delivery>,
    stop: Option<oneshot::Sender<()>>,
}

struct Recorder {
    kicks: mpsc::UnboundedSender<KickRequest>,
    deliveries: mpsc::UnboundedSender<DeliverRequest>,
    notices: mpsc::UnboundedSender<DeliverRequest>,
    /// Rejects Deliver calls with a notice after recording them, as an engine node built
    /// before notices does: it reads only `message` and finds none.
    rejects_notices: bool,
}

#[tonic::async_trait]
impl ConnectIntService for Recorder {
    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        let _ = self.kicks.send(request.into_inner());
        Ok(Response::new(KickReply { found: true }))
    }

    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        let request = request.into_inner();
        let targets: usize = request.deliveries.iter().map(|d| d.targets.len()).sum();
        let has_notice = request.deliveries.iter().any(|d| d.notice.is_some());
        let _ = if has_notice {
            self.notices.send(request)
        } else {
            self.deliveries.send(request)
        };
        if has_notice && self.rejects_notices {
            return Err(Status::invalid_argument("a delivery has no message"));
        }
        Ok(Response::new(DeliverReply {
            delivered: u32::try_from(targets).expect("few targets"),
            missed: 0,
        }))
    }
}

impl EngineRecorder {
    /// Starts the endpoint on a random loopback address (see [`bind_node`]).
    pub(crate) async fn start() -> EngineRecorder {
        EngineRecorder::start_with(false).await
    }

    /// Starts an endpoint that records Deliver calls with a notice and then rejects them, as an
    /// engine node built before notices does.
    pub(crate) async fn start_without_notices() -> EngineRecorder {
        EngineRecorder::start_with(true).await
    }

    async fn start_with(rejects_notices: bool) -> EngineRecorder {
        let listener = bind_node().await;
        let addr = listener.local_addr().expect("local addr");
        let (kicks_tx, kicks) = mpsc::unbounded_channel();
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = ConnectIntServiceServer::new(Recorder {
            kicks: kicks_tx,
            deliveries: deliveries_tx,
            notices: notices_tx,
            rejects_notices,
        });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("recorder serves");
        });
        EngineRecorder {
            addr,
            kicks,
            deliveries,
            notices,
            pending_notices: VecDeque::new(),
            stop: Some(stop),
        }
    }

    /// Returns the node address to put in connection references.
    pub(crate) fn node(&self) -> String {
        self.addr.to_string()
    }

    /// Returns the next kick, waiting up to 5 s: the kick is sent from a spawned task after the
    /// sign-in reply, over a channel that connects on first use.
    pub(crate) async fn next_kick(&mut self) -> KickRequest {
        tokio::time::timeout(Duration::from_secs(5), self.kicks.recv())
            .await
            .expect("a kick arrives within 5 s")
            .expect("recorder running")
    }

    /// Returns the next Deliver call, waiting up to 5 s: the push runs in a spawned task after
    /// the send reply, over a channel that connects on first use.
    pub(crate) async fn next_delivery(&mut self) -> DeliverRequest {
        tokio::time::timeout(Duration::from_secs(5), self.deliveries.recv())
            .await
            .expect("a delivery arrives within 5 s")
            .expect("recorder running")
    }

    /// Returns the next notice delivery, waiting up to 5 s for its Deliver call: like messages,
    /// notices are pushed from a spawned task after the reply. One call may carry several
    /// notices. Asserts that the call carries notices only.
    pub(crate) async fn next_notice(&mut self) -> Delivery {
        if let Some(delivery) = self.pending_notices.pop_front() {
            return delivery;
        }
        let request = tokio::time::timeout(Duration::from_secs(5), self.notices.recv())
            .await
            .expect("a notice delivery arrives within 5 s")
            .expect("recorder running");
        for delivery in &request.deliveries {
            assert!(
                delivery.message.is_none(),
                "a message in a notice call: {request:?}"
            );
            assert!(
                delivery.notice.is_some(),
                "a delivery without a notice: {request:?}"
            );
        }
        self.pending_notices.extend(request.deliveries);
        self.pending_notices
            .pop_front()
            .expect("a Deliver call with at least one delivery")
    }

    /// Waits 300 ms and asserts that no further notice arrived.
    pub(crate) async fn assert_no_more_notices(&mut self) {
        assert!(
            self.pending_notices.is_empty(),
            "unexpected notices {:?}",
            self.pending_notices
        );
        let extra = tokio::time::timeout(Duration::from_millis(300), self.notices.recv()).await;
        assert!(extra.is_err(), "unexpected notice delivery {extra:?}");
    }

    /// Waits 300 ms and asserts that no further Deliver call arrived. Nothing is sent, so only
    /// a bounded wait can show it; 300 ms is far above a loopback call.
    pub(crate) async fn assert_no_more_deliveries(&mut self) {
        let extra = tokio::time::timeout(Duration::from_millis(300), self.deliveries.recv()).await;
        assert!(extra.is_err(), "unexpected delivery {extra:?}");
    }
}

impl Drop for EngineRecorder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls PostgreSQL for up to 5 s until a statement that matches `condition`, a condition on
/// `pg_stat_activity`, waits for a lock. Returns whether one did.
pub(crate) async fn statement_waits(condition: &str) -> bool {
    let watcher = postgres().await;
    let count = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND {condition}"
    );
    for _ in 0..250 {
        let waiting: i64 = watcher
            .query_one(&count, &[])
            .await
            .expect("read pg_stat_activity")
            .get(0);
        if waiting > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A lock on a receiver's seq row, taken in a transaction of its own, with one send waiting
/// behind it in the batching task. Sends queued until [`HeldBatch::release`] share the next
/// transaction. The receiver must have received a message before, so that its row exists.
pub(crate) struct HeldBatch {
    locker: tokio_postgres::Client,
    waiting_send: tokio::task::JoinHandle<Result<SendReply, Status>>,
}

impl HeldBatch {
    /// Locks the seq row of `receiver` and starts a send of `text` from `sender` to it, which
    /// waits for the lock.
    pub(crate) async fn start(
        client: &Client,
        sender: &LoginReply,
        receiver: &LoginReply,
        text: &str,
    ) -> HeldBatch {
        let request = text_to(ConversationType::User, receiver.user_id, text);
        HeldBatch::start_send(client, sender, receiver.user_id, request).await
    }

    /// Locks the seq row of user `locked`, a recipient of `request`, and starts `request`
    /// from `sender`, which waits for the lock.
    pub(crate) async fn start_send(
        client: &Client,
        sender: &LoginReply,
        locked: u64,
        request: SendRequest,
    ) -> HeldBatch {
        let locker = postgres().await;
        locker.batch_execute("BEGIN").await.expect("begin");
        let locked = i64::try_from(locked).expect("id fits");
        locker
            .execute(
                "SELECT 1 FROM user_seq WHERE user_id = $1 FOR UPDATE",
                &[&locked],
            )
            .await
            .expect("lock the seq row");
        let mut client = client.clone();
        let sender = sender.clone();
        let waiting_send = tokio::spawn(async move { send(&mut client, &sender, request).await });
        let waits = statement_waits("query LIKE '%user_seq%' AND query NOT LIKE '%FOR UPDATE%'");
        assert!(waits.await, "the held send waits for the lock");
        HeldBatch {
            locker,
            waiting_send,
        }
    }

    /// Releases the lock and returns the reply of the held send.
    pub(crate) async fn release(self) -> Result<SendReply, Status> {
        self.locker
            .batch_execute("ROLLBACK")
            .await
            .expect("rollback");
        self.waiting_send.await.expect("task")
    }
}

/// Creates a sender's device and an open receiver's device on `receiver_node`, named after
/// `name`, and sends the receiver one message, "first", so that its seq row exists (as
/// [`HeldBatch::start`] needs). Returns the sender and the receiver.
pub(crate) async fn sender_and_receiver(
    client: &mut Client,
    name: &str,
    receiver_node: &str,
) -> (LoginReply, LoginReply) {
    let sender = new_device(client, name, conn(NODE, 1)).await;
    let receiver_name = format!("{name}_to");
    let (_, receiver) = new_user_device(client, &receiver_name, true, conn(receiver_node, 2)).await;
    send(
        client,
        &sender,
        text_to(ConversationType::User, receiver.user_id, "first"),
    )
    .await
    .expect("first send creates the seq rows");
    (sender, receiver)
}

/// Opens an HTTP/2 connection to `addr` for requests with bodies of type `B`, and drives it
/// in a spawned task.
pub(crate) async fn http2_sender<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}
