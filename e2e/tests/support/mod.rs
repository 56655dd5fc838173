//! A whole system for one test: the logic tier and an engine node in this process, on
//! loopback ports chosen by the kernel, over the PostgreSQL and Redis that
//! `scripts/test` starts. Tests may also start a Redis of their own to stop it.

#![allow(dead_code, unreachable_pub)]

pub mod front;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use im_client::business::LogicApi;
use im_client::inbox::Inbox;
use im_client::{Client, ClientError, ConnectOptions, InboxError, Packet, PacketType, Push};
use im_engine::Engine;
use im_logic::LogicServer;
use im_proto::{DeviceInfo, ErrorCode, LoginReply, Message};

/// Password used by every test user.
pub const PASSWORD: &str = "correct horse battery";

/// Reads a URL that `scripts/test` exports.
pub fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the suite with scripts/test, which starts PostgreSQL and Redis"
        )
    })
}

/// Logic settings for tests: the suite's stores, free ports and cheap password hashing.
pub fn logic_config() -> im_logic::Config {
    im_logic::Config {
        listen_addr: "127.0.0.1:0".to_owned(),
        metrics_addr: "127.0.0.1:0".to_owned(),
        database_url: env_url("IM_LOGIC_DATABASE_URL"),
        redis_url: env_url("IM_LOGIC_REDIS_URL"),
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        db_pool_size: 4,
        startup_retry_ms: 0,
        // Off: the default port would clash between tests running at once.
        web_addr: String::new(),
        ..im_logic::Config::default()
    }
}

/// Engine settings for tests: free ports, two shards, the given logic tier.
pub fn engine_config(logic_addr: SocketAddr) -> im_engine::Config {
    im_engine::Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".to_owned(),
        logic_url: format!("http://{logic_addr}"),
        shards: 2,
        logic_call_timeout_ms: 1_000,
        shutdown_grace_ms: 1_000,
        // Tests send as fast as the machine allows, faster than a device may; limits.rs and
        // engine/tests/rate_limits.rs turn the rate limits on where they test them.
        rate_packets_per_sec: 0,
        rate_bytes_per_sec: 0,
        ..im_engine::Config::default()
    }
}

/// A running logic tier and engine node.
pub struct Stack {
    pub logic: Option<LogicServer>,
    pub logic_config: im_logic::Config,
    pub engine: Option<Engine>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(logic_config(), |_| {}).await
    }

    pub async fn start_with(
        logic_config: im_logic::Config,
        adjust_engine: impl FnOnce(&mut im_engine::Config),
    ) -> Self {
        init_tracing();
        let logic = im_logic::start(logic_config.clone())
            .await
            .expect("logic tier starts");
        let mut engine_config = engine_config(logic.local_addr());
        adjust_engine(&mut engine_config);
        // The logic tier must be restartable on the same address.
        let logic_config = im_logic::Config {
            listen_addr: logic.local_addr().to_string(),
            ..logic_config
        };
        let engine = Engine::start(engine_config).expect("engine starts");
        Self {
            logic: Some(logic),
            logic_config,
            engine: Some(engine),
        }
    }

    /// Starts a stack whose engine calls the logic tier through a front that plays `script`,
    /// and returns it with the front's count of the calls it has seen.
    pub async fn start_behind_front(
        script: front::Script,
        adjust_engine: impl FnOnce(&mut im_engine::Config),
    ) -> (Self, front::Seen) {
        init_tracing();
        let logic_config = logic_config();
        let logic = im_logic::start(logic_config.clone())
            .await
            .expect("logic tier starts");
        let (front, seen) = front::start(logic.local_addr(), script).await;
        let mut engine_config = engine_config(front);
        adjust_engine(&mut engine_config);
        let engine = Engine::start(engine_config).expect("engine starts");
        let stack = Self {
            logic: Some(logic),
            logic_config,
            engine: Some(engine),
        };
        (stack, seen)
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine running")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.engine().ws_addr())
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(), &ConnectOptions::default())
            .await
            .expect("websocket connects")
    }

    /// Returns the URL of the logic tier's gRPC server, for [`LogicApi`].
    pub fn logic_url(&self) -> String {
        let logic = self.logic.as_ref().expect("logic running");
        format!("http://{}", logic.local_addr())
    }

    /// Returns an anonymous handle on the logic tier's business API.
    pub async fn logic_api(&self) -> LogicApi {
        LogicApi::connect(&self.logic_url(), Duration::from_secs(5))
            .await
            .expect("logic tier accepts gRPC connections")
    }

    /// Registers a fresh user and logs its first device in on a new connection.
    pub async fn new_user(&self, prefix: &str) -> (TestUser, Client) {
        let client = self.connect().await;
        let (username, login) = register_and_login(&client, prefix).await;
        let api = self
            .logic_api()
            .await
            .as_user(login.user_id, login.device_id, &login.token)
            .expect("token is a valid header value");
        let user = TestUser {
            username,
            login,
            api,
        };
        (user, client)
    }

    /// Logs another device of `user` in on a new connection.
    pub async fn another_device(&self, user: &TestUser) -> (LoginReply, Client) {
        let client = self.connect().await;
        let login = client
            .login(&user.username, PASSWORD, 0, test_device())
            .await
            .expect("login of another device");
        (login, client)
    }

    /// Signs a device in again with its token on a new connection.
    pub async fn sign_in(&self, login: &LoginReply) -> Client {
        let client = self.connect().await;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .expect("sign-in with the device token");
        client
    }

    pub async fn stop_logic(&mut self) {
        if let Some(logic) = self.logic.take() {
            logic.shutdown().await;
        }
    }

    pub async fn restart_logic(&mut self) {
        self.stop_logic().await;
        let logic = im_logic::start(self.logic_config.clone())
            .await
            .expect("logic tier restarts on its address");
        self.logic = Some(logic);
    }

    pub async fn stop(mut self) {
        if let Some(engine) = self.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown())
                .await
                .unwrap();
        }
        self.stop_logic().await;
    }
}

/// A registered user, its first device, and the business API acting as that device.
pub struct TestUser {
    pub username: String,
    pub login: LoginReply,
    pub api: LogicApi,
}

impl TestUser {
    pub fn id(&self) -> u64 {
        self.login.user_id
    }
}

/// Makes `a` and `b` friends through the business API.
pub async fn make_friends(a: &TestUser, b: &TestUser) {
    a.api.request_friend(b.id()).await.expect("friend request");
    b.api.accept_friend(a.id()).await.expect("friend accept");
}

/// Pages SYNC from `after_seq` until the server has no more. Returns every message and the
/// number of pages, and checks that each page is in seq order without gaps.
pub async fn sync_all(client: &Client, after_seq: u64, limit: u32) -> (Vec<Message>, usize) {
    let mut messages: Vec<Message> = Vec::new();
    let mut after = after_seq;
    let mut pages = 0;
    loop {
        let page = client.sync(after, limit).await.expect("sync");
        pages += 1;
        for (offset, message) in page.messages.iter().enumerate() {
            assert_eq!(message.seq, after + 1 + offset as u64, "page after {after}");
        }
        let Some(last) = page.messages.last() else {
            assert!(!page.has_more, "an empty page claims more");
            return (messages, pages);
        };
        after = last.seq;
        messages.extend(page.messages);
        if !page.has_more {
            return (messages, pages);
        }
    }
}

/// Waits for the next push that is not a NOTICE and returns it decoded as a MESSAGE; panics on
/// any other push or after `timeout`. Notices are skipped because the helpers that make
/// friends and groups cause them on every signed-in device of the users involved.
pub async fn next_message(client: &Client, timeout: Duration) -> Message {
    let packet = push_within(client, timeout)
        .await
        .expect("a MESSAGE push in time on an open connection");
    message_of(packet)
}

/// Decodes a MESSAGE push; panics on any other packet.
pub fn message_of(packet: Packet) -> Message {
    match Push::decode(packet) {
        Ok(Push::Message(message)) => message,
        other => panic!("expected a MESSAGE push, got {other:?}"),
    }
}

/// Returns the first push other than a NOTICE that arrives within `wait`, if any.
pub async fn push_within(client: &Client, wait: Duration) -> Option<Packet> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let packet = tokio::time::timeout_at(deadline, client.next_push())
            .await
            .ok()
            .flatten()?;
        if !is_notice(&packet) {
            return Some(packet);
        }
    }
}

/// Tells whether `packet` is a NOTICE push.
pub fn is_notice(packet: &Packet) -> bool {
    packet.request_id == 0 && packet.r#type == PacketType::Notice as i32
}

/// Runs `inbox.recv` until the inbox has delivered up to `last_seq`. Returns every message
/// delivered meanwhile; panics after `timeout`.
pub async fn recv_until(
    inbox: &mut Inbox,
    client: &Client,
    last_seq: u64,
    timeout: Duration,
) -> Result<Vec<Message>, InboxError> {
    let mut delivered = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while inbox.last_seq() < last_seq {
        let batch = tokio::time::timeout_at(deadline, inbox.recv(client))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "inbox reached seq {} of {last_seq}, {} held",
                    inbox.last_seq(),
                    inbox.held()
                )
            })?;
        delivered.extend(batch);
    }
    Ok(delivered)
}

/// Seqs of `messages`, in their order.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

/// Content of each message as text, in order.
pub fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|message| String::from_utf8_lossy(&message.content).into_owned())
        .collect()
}

/// Returns a username no other test or run uses.
pub fn unique_username(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Registers a fresh user and logs in on `client`, which is then signed in.
pub async fn register_and_login(client: &Client, prefix: &str) -> (String, LoginReply) {
    let username = unique_username(prefix);
    client
        .register(&username, PASSWORD)
        .await
        .expect("register");
    let reply = client
        .login(&username, PASSWORD, 0, test_device())
        .await
        .expect("login");
    (username, reply)
}

pub fn test_device() -> DeviceInfo {
    DeviceInfo {
        platform: "test".to_owned(),
        model: "e2e".to_owned(),
        app_version: "1".to_owned(),
    }
}

/// Returns the error code of a failed call. Panics on success or on a non-server error.
pub fn server_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error code, got {other:?}"),
    }
}

/// Online status of a user's devices, straight from Redis: device id -> "node|conn_id".
pub async fn online_status(user_id: u64) -> std::collections::HashMap<String, String> {
    online_status_at(&env_url("IM_LOGIC_REDIS_URL"), user_id).await
}

/// Online status of a user's devices in the Redis at `redis_url`.
pub async fn online_status_at(
    redis_url: &str,
    user_id: u64,
) -> std::collections::HashMap<String, String> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGETALL")
        .arg(format!("online:{user_id}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Returns the connection id of a user's device on the stack's engine, from its online status
/// in Redis.
pub async fn conn_id_of(user_id: u64, device_id: u64) -> u64 {
    let status = online_status(user_id).await;
    let value = &status[&device_id.to_string()];
    let (_, conn_id) = value.rsplit_once('|').expect("status is node|conn_id");
    conn_id.parse().expect("a numeric conn id")
}

/// Returns the seq the device's acks reached in PostgreSQL, if it acked any.
pub async fn acked_seq(device_id: u64) -> Option<u64> {
    let (db, connection) =
        tokio_postgres::connect(&env_url("IM_LOGIC_DATABASE_URL"), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let device = i64::try_from(device_id).expect("device id in bigint range");
    db.query_opt(
        "SELECT acked_seq FROM device_acks WHERE device_id = $1",
        &[&device],
    )
    .await
    .expect("read device_acks")
    .map(|row| u64::try_from(row.get::<_, i64>(0)).expect("acked seq not negative"))
}

/// Returns the highest seq stored for the user in PostgreSQL, if any message was stored.
pub async fn last_stored_seq(user_id: u64) -> Option<u64> {
    let (db, connection) =
        tokio_postgres::connect(&env_url("IM_LOGIC_DATABASE_URL"), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let user = i64::try_from(user_id).expect("user id in bigint range");
    db.query_opt("SELECT last_seq FROM user_seq WHERE user_id = $1", &[&user])
        .await
        .expect("read user_seq")
        .map(|row| u64::try_from(row.get::<_, i64>(0)).expect("last seq not negative"))
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A throw-away redis-server on a free loopback port, killed on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = free_port();
        let mut redis = Self { port, child: None };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn resume(&mut self) {
        let binary = std::env::var("IM_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary}: {err}; run scripts/test"));
        self.child = Some(child);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not start within 5 s",
            self.port
        );
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Sends logs to the test's output when RUST_LOG is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
