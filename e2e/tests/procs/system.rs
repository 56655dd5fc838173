//! One test's whole system: PostgreSQL, Redis, the logic tier and engine nodes, each a child
//! process, plus user accounts created through an engine.

use std::time::Duration;

use im_client::{Client, ConnectOptions, DeviceInfo, LoginReply, PacketType};
use im_proto::v1::{RegisterReply, RegisterRequest};
use prost::Message as _;

use super::process::Scratch;
use super::servers::{Engine, EngineSettings, Logic, LogicSettings};
use super::stores::{Postgres, Redis};
use super::PASSWORD;

/// Time limit of every client request and of connecting. Longer than any server deadline, so
/// a server that replies late shows up as TIMEOUT from the server or as a client timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The processes of one test. Fields drop in declaration order: the engines and the logic
/// tier stop before the stores, and the scratch directory goes last.
pub struct System {
    pub engines: Vec<Engine>,
    pub logic: Logic,
    pub redis: Redis,
    pub pg: Postgres,
    pub scratch: Scratch,
}

impl System {
    /// Starts the stores, the logic tier and `engines` engine nodes.
    pub fn start(test: &str, engines: usize, engine: &EngineSettings) -> System {
        Self::start_with(test, engines, &LogicSettings::default(), engine)
    }

    pub fn start_with(
        test: &str,
        engines: usize,
        logic: &LogicSettings,
        engine: &EngineSettings,
    ) -> System {
        let scratch = Scratch::new(test);
        let pg = Postgres::start(&scratch);
        let redis = Redis::start(&scratch);
        let logic = Logic::start(&scratch, &pg.url(), &redis.url(), logic);
        let engines = (0..engines)
            .map(|index| Engine::start(&scratch, &format!("engine{index}"), &logic.url(), engine))
            .collect();
        System {
            engines,
            logic,
            redis,
            pg,
            scratch,
        }
    }

    pub fn ws_url(&self, engine: usize) -> String {
        self.engines[engine].ws_url()
    }

    /// Returns the online status of a user's devices: device id -> "node|conn_id".
    pub async fn online_status(&self, user_id: u64) -> std::collections::HashMap<String, String> {
        let client = redis::Client::open(self.redis.url()).expect("valid Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis");
        redis::cmd("HGETALL")
            .arg(format!("online:{user_id}"))
            .query_async(&mut conn)
            .await
            .expect("HGETALL")
    }

    /// Number of `online:*` hashes in Redis: users with a device marked online.
    pub async fn online_users(&self) -> usize {
        self.redis.keys("online:*").await.len()
    }
}

pub fn connect_options() -> ConnectOptions {
    ConnectOptions {
        timeout: CLIENT_TIMEOUT,
        ..ConnectOptions::default()
    }
}

pub async fn connect(url: &str) -> Client {
    Client::connect(url, &connect_options())
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

/// A user account and one of its devices.
#[derive(Debug, Clone)]
pub struct Account {
    pub username: String,
    pub login: LoginReply,
}

impl Account {
    pub fn user_id(&self) -> u64 {
        self.login.user_id
    }

    pub fn device_id(&self) -> u64 {
        self.login.device_id
    }
}

pub fn test_device() -> DeviceInfo {
    DeviceInfo {
        platform: "test".to_owned(),
        model: "faults".to_owned(),
        app_version: "1".to_owned(),
    }
}

/// Registers an open user (anyone may message it, so no friendships are needed) through the
/// engine at `url`, and logs in `devices` devices. Returns one account per device; the
/// connections are closed.
pub async fn open_user(url: &str, prefix: &str, devices: usize) -> Vec<Account> {
    let username = format!("{prefix}-{:012x}", rand::random::<u64>() >> 16);
    let client = connect(url).await;
    let request = RegisterRequest {
        username: username.clone(),
        password: PASSWORD.to_owned(),
        open: true,
    };
    let reply = client
        .request(PacketType::Register, request.encode_to_vec())
        .await
        .expect("register an open user");
    RegisterReply::decode(reply.data).expect("register reply decodes");
    client.close().await.expect("close after register");

    let mut accounts = Vec::with_capacity(devices);
    for _ in 0..devices {
        let client = connect(url).await;
        let login = client
            .login(&username, PASSWORD, 0, test_device())
            .await
            .expect("login of a new device");
        client.close().await.expect("close after login");
        accounts.push(Account {
            username: username.clone(),
            login,
        });
    }
    accounts
}

/// Creates `users` open users with `devices_each` devices each: `result[user][device]`.
pub async fn open_users(
    url: &str,
    prefix: &str,
    users: usize,
    devices_each: usize,
) -> Vec<Vec<Account>> {
    let mut all = Vec::with_capacity(users);
    for index in 0..users {
        all.push(open_user(url, &format!("{prefix}{index}"), devices_each).await);
    }
    all
}

impl System {
    /// Devices marked online in Redis, over all users.
    pub async fn online_devices(&self) -> usize {
        let client = redis::Client::open(self.redis.url()).expect("valid Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis");
        let mut total = 0;
        for key in self.redis.keys("online:*").await {
            let count: usize = redis::cmd("HLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("HLEN");
            total += count;
        }
        total
    }
}
