//! Logout, kicks and durable tokens end to end: a revoked token stays revoked across a logic
//! restart and a Redis flush, and a valid token survives a Redis flush.
//!
//! Every test runs on a Redis server of its own, so that FLUSHALL and restarts touch no other
//! test's data.

mod support;

use std::time::Duration;

use im_client::Client;
use im_proto::logic_ext_service_client::LogicExtServiceClient;
use im_proto::{
    ErrorCode, KickDeviceReply, KickDeviceRequest, KickReason, Kicked, LoginReply, LogoutRequest,
    PacketType,
};
use prost::Message as _;
use support::*;
use tonic::transport::Channel;

/// Server secret of the logic tier in these tests.
const SERVER_SECRET: &str = "revocation-test-secret";

/// Time allowed for a push or a close to arrive; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(5);

async fn start_stack(redis: &OwnRedis) -> Stack {
    let config = im_logic::Config {
        redis_url: redis.url(),
        server_secret: SERVER_SECRET.to_owned(),
        ..logic_config()
    };
    Stack::start_with(config, |_| {}).await
}

async fn flush_all(redis: &OwnRedis) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
}

async fn ext_client(stack: &Stack) -> LogicExtServiceClient<Channel> {
    LogicExtServiceClient::connect(stack.logic_url())
        .await
        .expect("logic tier accepts gRPC connections")
}

/// Returns the error code that a SIGN_IN with `login`'s token gets on a new connection.
async fn sign_in_code(stack: &Stack, login: &LoginReply) -> ErrorCode {
    let client = stack.connect().await;
    server_code(
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await,
    )
}

/// Checks that `login`'s token is rejected as revoked now, after a restart of the logic tier
/// and after FLUSHALL, and that a fresh LOGIN of the same device gets in.
async fn assert_revoked_for_good(
    stack: &mut Stack,
    redis: &OwnRedis,
    username: &str,
    login: &LoginReply,
) {
    assert_eq!(sign_in_code(stack, login).await, ErrorCode::TokenRevoked);

    stack.restart_logic().await;
    assert_eq!(
        sign_in_code(stack, login).await,
        ErrorCode::TokenRevoked,
        "after a logic restart"
    );

    flush_all(redis).await;
    assert_eq!(
        sign_in_code(stack, login).await,
        ErrorCode::TokenRevoked,
        "after FLUSHALL"
    );

    let client = stack.connect().await;
    let fresh = client
        .login(username, PASSWORD, login.device_id, test_device())
        .await
        .expect("a fresh login of the same device");
    assert_eq!(fresh.device_id, login.device_id);
    assert_ne!(fresh.token, login.token);
    client.close().await.unwrap();
    stack
        .sign_in(&fresh)
        .await
        .close()
        .await
        .expect("the new token signs in");
}

/// Waits for KICKED on `client` and returns its reason and the close code that follows.
async fn expect_kicked(client: &mut Client) -> (i32, u16) {
    let push = tokio::time::timeout(WAIT, client.next_push())
        .await
        .expect("KICKED in time")
        .expect("a push before the close");
    assert_eq!(push.r#type, PacketType::Kicked as i32);
    let kicked = Kicked::decode(push.data).expect("Kicked decodes");
    let (code, _) = client.wait_closed(WAIT).await.expect("closed after KICKED");
    (kicked.reason, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_packet_revokes_token() {
    let redis = OwnRedis::start();
    let mut stack = start_stack(&redis).await;
    let mut client = stack.connect().await;
    let (username, login) = register_and_login(&client, "logout").await;
    assert!(online_status_at(&redis.url(), login.user_id)
        .await
        .contains_key(&login.device_id.to_string()));

    let reply = client
        .request(PacketType::Logout, Vec::new())
        .await
        .expect("LOGOUT answered");
    assert_eq!(reply.code, ErrorCode::Ok as i32);
    assert!(reply.data.is_empty());
    let (code, _) = client.wait_closed(WAIT).await.expect("closed after LOGOUT");
    assert_eq!(code, 1000);
    assert!(
        online_status_at(&redis.url(), login.user_id)
            .await
            .is_empty(),
        "status removed by the logout"
    );

    assert_revoked_for_good(&mut stack, &redis, &username, &login).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_before_sign_in_is_rejected() {
    let redis = OwnRedis::start();
    let stack = start_stack(&redis).await;
    let client = stack.connect().await;

    let code = server_code(client.request(PacketType::Logout, Vec::new()).await);

    assert_eq!(code, ErrorCode::NotSignedIn);
    client.heartbeat().await.expect_err("still not signed in");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_logout_kicks_and_revokes() {
    let redis = OwnRedis::start();
    let mut stack = start_stack(&redis).await;
    let mut client = stack.connect().await;
    let (username, login) = register_and_login(&client, "apilogout").await;
    let (_, other_device) = another_device_of(&stack, &username).await;

    let mut request = tonic::Request::new(LogoutRequest {});
    insert_user_metadata(&mut request, &login);
    ext_client(&stack)
        .await
        .logout(request)
        .await
        .expect("Logout as the device");

    let (reason, code) = expect_kicked(&mut client).await;
    assert_eq!(reason, KickReason::LoggedOut as i32);
    assert_eq!(code, 4003);
    other_device
        .heartbeat()
        .await
        .expect("the user's other device stays signed in");
    assert_revoked_for_good(&mut stack, &redis, &username, &login).await;
    other_device.close().await.unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_device_with_wrong_secret_is_rejected() {
    let redis = OwnRedis::start();
    let stack = start_stack(&redis).await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "wrongsecret").await;

    let mut request = tonic::Request::new(KickDeviceRequest {
        user_id: login.user_id,
        device_id: 0,
    });
    request
        .metadata_mut()
        .insert("im-server-secret", "not-the-server-secret".parse().unwrap());
    let status = ext_client(&stack)
        .await
        .kick_device(request)
        .await
        .expect_err("a wrong secret is rejected");

    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    client
        .heartbeat()
        .await
        .expect("the device stays signed in");
    assert!(push_within(&client, Duration::from_millis(300))
        .await
        .is_none());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_device_zero_kicks_every_device() {
    let redis = OwnRedis::start();
    let mut stack = start_stack(&redis).await;
    let mut first = stack.connect().await;
    let (username, login) = register_and_login(&first, "kickall").await;
    let (second_login, mut second) = another_device_of(&stack, &username).await;

    let reply = kick_device(&stack, login.user_id, 0).await;

    assert_eq!(reply.revoked, 2);
    assert_eq!(reply.kicked, 2);
    for client in [&mut first, &mut second] {
        let (reason, code) = expect_kicked(client).await;
        assert_eq!(reason, KickReason::KickedByServer as i32);
        assert_eq!(code, 4003);
    }
    assert_eq!(
        sign_in_code(&stack, &second_login).await,
        ErrorCode::TokenRevoked
    );
    assert_revoked_for_good(&mut stack, &redis, &username, &login).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_one_device_leaves_the_others() {
    let redis = OwnRedis::start();
    let stack = start_stack(&redis).await;
    let mut first = stack.connect().await;
    let (username, login) = register_and_login(&first, "kickone").await;
    let (second_login, second) = another_device_of(&stack, &username).await;

    let reply = kick_device(&stack, login.user_id, login.device_id).await;

    assert_eq!(reply.revoked, 1);
    assert_eq!(reply.kicked, 1);
    let (reason, _) = expect_kicked(&mut first).await;
    assert_eq!(reason, KickReason::KickedByServer as i32);
    second.heartbeat().await.expect("the other device stays");
    assert_eq!(sign_in_code(&stack, &login).await, ErrorCode::TokenRevoked);
    second.close().await.unwrap();
    stack.sign_in(&second_login).await.close().await.unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_survives_redis_flush() {
    let redis = OwnRedis::start();
    let stack = start_stack(&redis).await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "flush").await;
    client.close().await.unwrap();

    flush_all(&redis).await;
    let again = stack.sign_in(&login).await;
    again.heartbeat().await.expect("signed in after FLUSHALL");
    again.close().await.unwrap();

    // The refill put the record back: a second sign-in is served from Redis.
    let cached = redis_hget(&redis, &format!("auth:{}", login.user_id), login.device_id).await;
    assert!(cached.is_some(), "token record cached again");
    stack.sign_in(&login).await.close().await.unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_survives_redis_restart() {
    let mut redis = OwnRedis::start();
    let stack = start_stack(&redis).await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "restart").await;
    client.close().await.unwrap();

    // The server runs without persistence, so the restart loses every key.
    redis.kill();
    redis.resume();
    let signed_in = eventually(WAIT, || async {
        let client = stack.connect().await;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .is_ok()
    })
    .await;

    assert!(signed_in, "the token signs in once Redis is back");
    stack.stop().await;
}

async fn kick_device(stack: &Stack, user_id: u64, device_id: u64) -> KickDeviceReply {
    let mut request = tonic::Request::new(KickDeviceRequest { user_id, device_id });
    request
        .metadata_mut()
        .insert("im-server-secret", SERVER_SECRET.parse().unwrap());
    ext_client(stack)
        .await
        .kick_device(request)
        .await
        .expect("KickDevice with the server secret")
        .into_inner()
}

fn insert_user_metadata<T>(request: &mut tonic::Request<T>, login: &LoginReply) {
    let metadata = request.metadata_mut();
    metadata.insert("im-user-id", login.user_id.to_string().parse().unwrap());
    metadata.insert("im-device-id", login.device_id.to_string().parse().unwrap());
    metadata.insert("im-token", login.token.parse().unwrap());
}

async fn redis_hget(redis: &OwnRedis, key: &str, field: u64) -> Option<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Logs another device of the user named `username` in on a new connection.
async fn another_device_of(stack: &Stack, username: &str) -> (LoginReply, Client) {
    let client = stack.connect().await;
    let login = client
        .login(username, PASSWORD, 0, test_device())
        .await
        .expect("login of another device");
    (login, client)
}
