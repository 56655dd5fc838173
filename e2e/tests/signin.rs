//! Sign-in end to end: engine shards, the bridge, the logic tier, PostgreSQL and Redis,
//! all real, over loopback WebSocket.

mod support;

use std::time::{Duration, Instant};

use im_proto::{ErrorCode, KickReason, Kicked, PacketType};
use prost::Message as _;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_heartbeat_and_close_mark_offline() {
    let stack = Stack::start().await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "close").await;
    assert!(login.user_id > 0);
    assert!(login.device_id > 0);
    assert_eq!(login.token.len(), 64, "a 256-bit token in hex");
    assert!(login.heartbeat_interval_ms > 0);

    client.heartbeat().await.expect("heartbeat answered");
    let status = online_status(login.user_id).await;
    let value = status
        .get(&login.device_id.to_string())
        .expect("device online after login");
    assert!(value.starts_with(stack.engine().node()), "status {value}");

    client.close().await.expect("close handshake");
    let offline = eventually(Duration::from_secs(5), || async {
        online_status(login.user_id).await.is_empty()
    })
    .await;
    assert!(offline, "status still present after close");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signs_in_on_new_connection() {
    let stack = Stack::start().await;
    let first = stack.connect().await;
    let (_, login) = register_and_login(&first, "token").await;
    first.close().await.unwrap();

    let second = stack.connect().await;
    let reply = second
        .sign_in(login.user_id, login.device_id, &login.token)
        .await
        .expect("sign-in with the login token");
    assert!(reply.heartbeat_interval_ms > 0);
    second.heartbeat().await.expect("heartbeat after sign-in");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_documented_codes() {
    let stack = Stack::start().await;
    let client = stack.connect().await;
    let (username, login) = register_and_login(&client, "bad").await;
    client.close().await.unwrap();

    let other = stack.connect().await;
    let wrong_token = "0".repeat(64);
    let code = server_code(
        other
            .sign_in(login.user_id, login.device_id, &wrong_token)
            .await,
    );
    assert_eq!(code, ErrorCode::TokenInvalid);

    let unknown_device = login.device_id + 1_000_000;
    let code = server_code(
        other
            .sign_in(login.user_id, unknown_device, &login.token)
            .await,
    );
    assert_eq!(code, ErrorCode::DeviceUnknown);

    let code = server_code(
        other
            .login(&username, "wrong password", 0, test_device())
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidCredentials);

    let code = server_code(other.register(&username, PASSWORD).await);
    assert_eq!(code, ErrorCode::UsernameTaken);

    // The connection survives every rejection and still signs in.
    other
        .sign_in(login.user_id, login.device_id, &login.token)
        .await
        .expect("sign-in after rejections");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_rejected() {
    let config = im_logic::Config {
        token_ttl_secs: 1,
        ..logic_config()
    };
    let stack = Stack::start_with(config, |_| {}).await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "expired").await;
    client.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let again = stack.connect().await;
    let code = server_code(
        again
            .sign_in(login.user_id, login.device_id, &login.token)
            .await,
    );
    assert_eq!(code, ErrorCode::TokenExpired);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_of_another_user_is_rejected() {
    let stack = Stack::start().await;
    let owner = stack.connect().await;
    let (_, owner_login) = register_and_login(&owner, "owner").await;
    let intruder = stack.connect().await;
    let (intruder_name, intruder_login) = register_and_login(&intruder, "intruder").await;
    intruder.close().await.unwrap();

    let second = stack.connect().await;
    let code = server_code(
        second
            .login(
                &intruder_name,
                PASSWORD,
                owner_login.device_id,
                test_device(),
            )
            .await,
    );
    assert_eq!(code, ErrorCode::DeviceNotOwned);
    // The intruder's own token does not open the owner's device either.
    let code = server_code(
        second
            .sign_in(
                intruder_login.user_id,
                owner_login.device_id,
                &intruder_login.token,
            )
            .await,
    );
    assert_eq!(code, ErrorCode::DeviceUnknown);
    owner.heartbeat().await.expect("owner unaffected");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sign_in_kicks_first_connection() {
    let stack = Stack::start().await;
    let mut first = stack.connect().await;
    let (_, login) = register_and_login(&first, "kick").await;
    let first_status = online_status(login.user_id).await[&login.device_id.to_string()].clone();

    let second = stack.connect().await;
    second
        .sign_in(login.user_id, login.device_id, &login.token)
        .await
        .expect("second sign-in");

    let push = tokio::time::timeout(Duration::from_secs(5), first.next_push())
        .await
        .expect("KICKED within 5 s")
        .expect("a push before the close");
    assert_eq!(push.r#type, PacketType::Kicked as i32);
    let kicked = Kicked::decode(push.data).unwrap();
    assert_eq!(kicked.reason, KickReason::SignedInElsewhere as i32);
    let (code, _) = first.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, im_engine::close::KICKED);

    // The first connection's Offline arrives after the second sign-in and must not
    // erase it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = online_status(login.user_id).await;
    let current = status
        .get(&login.device_id.to_string())
        .expect("status kept");
    assert_ne!(
        current, &first_status,
        "status still names the first connection"
    );
    second.heartbeat().await.expect("second connection alive");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_stopped_midway_fails_fast_and_recovers() {
    let mut stack = Stack::start().await;
    let signed_in = stack.connect().await;
    let (_, login) = register_and_login(&signed_in, "down").await;

    stack.stop_logic().await;
    let newcomer = stack.connect().await;
    let started = Instant::now();
    let result = newcomer
        .sign_in(login.user_id, login.device_id + 1, &login.token)
        .await;
    let elapsed = started.elapsed();
    let code = server_code(result);
    assert!(
        code == ErrorCode::Unavailable || code == ErrorCode::Timeout,
        "got {code:?}"
    );
    // logic_call_timeout_ms is 1 s in tests; the shard adds at most 0.5 s of grace.
    assert!(elapsed < Duration::from_millis(2_000), "took {elapsed:?}");
    signed_in
        .heartbeat()
        .await
        .expect("signed-in device keeps its heartbeats while logic is down");

    stack.restart_logic().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        let client = stack.connect().await;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .is_ok()
    })
    .await;
    assert!(
        recovered,
        "sign-in works again after the logic tier restarts"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_never_started_fails_within_deadline() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let engine = im_engine::Engine::start(engine_config(dead)).unwrap();
    let url = format!("ws://{}/ws", engine.ws_addr());
    let client = im_client::Client::connect(&url, &Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    let code = server_code(client.register(&unique_username("never"), PASSWORD).await);
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(2_000));
    drop(client);
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_and_recovers() {
    let mut redis = OwnRedis::start();
    let config = im_logic::Config {
        redis_url: redis.url(),
        redis_timeout_ms: 500,
        ..logic_config()
    };
    let stack = Stack::start_with(config, |_| {}).await;
    let signed_in = stack.connect().await;
    let (_, login) = register_and_login(&signed_in, "redis").await;

    redis.kill();
    let newcomer = stack.connect().await;
    let started = Instant::now();
    let code = server_code(
        newcomer
            .sign_in(login.user_id, login.device_id, &login.token)
            .await,
    );
    assert!(
        code == ErrorCode::Unavailable || code == ErrorCode::Timeout,
        "got {code:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2_000));
    signed_in
        .heartbeat()
        .await
        .expect("signed-in device keeps its heartbeats while Redis is down");

    // A restarted Redis is empty, but PostgreSQL keeps the token: it signs in again.
    redis.resume();
    let recovered = eventually(Duration::from_secs(10), || async {
        let client = stack.connect().await;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .is_ok()
    })
    .await;
    assert!(
        recovered,
        "Redis answers again and the token signs in from PostgreSQL"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_shutdown_marks_devices_offline() {
    let stack = Stack::start().await;
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for _ in 0..5 {
        let client = stack.connect().await;
        let (_, login) = register_and_login(&client, "shutdown").await;
        users.push(login.user_id);
        clients.push(client);
    }
    let mut stack = stack;
    let engine = stack.engine.take().unwrap();
    let stopper = tokio::task::spawn_blocking(move || engine.shutdown());
    for client in &mut clients {
        let (code, _) = client.wait_closed(Duration::from_secs(5)).await.unwrap();
        assert_eq!(code, 1001);
    }
    stopper.await.unwrap();
    for user_id in users {
        assert!(
            online_status(user_id).await.is_empty(),
            "user {user_id} still online after shutdown"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_is_closed_with_4002_and_marked_offline() {
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.heartbeat_interval_ms = 100;
        engine.heartbeat_timeout_ms = 400;
    })
    .await;
    let mut silent = stack.connect().await;
    let (_, login) = register_and_login(&silent, "silent").await;
    assert_eq!(login.heartbeat_interval_ms, 100);

    let (code, _) = silent.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, im_engine::close::HEARTBEAT_TIMEOUT);
    let offline = eventually(Duration::from_secs(5), || async {
        online_status(login.user_id).await.is_empty()
    })
    .await;
    assert!(offline, "status still present after the idle close");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_device_connected() {
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.heartbeat_interval_ms = 100;
        engine.heartbeat_timeout_ms = 400;
    })
    .await;
    let client = stack.connect().await;
    register_and_login(&client, "alive").await;
    // Ten heartbeats 150 ms apart span 1.5 s, well past the 400 ms idle timeout.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.heartbeat().await.expect("connection stays open");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_naming_another_device_is_ignored() {
    use im_proto::connect_int_service_client::ConnectIntServiceClient;
    use im_proto::KickRequest;

    let stack = Stack::start().await;
    let client = stack.connect().await;
    let (_, login) = register_and_login(&client, "stale").await;
    let status = online_status(login.user_id).await[&login.device_id.to_string()].clone();
    let conn_id: u64 = status.rsplit('|').next().unwrap().parse().unwrap();

    // A kick left over from an earlier run of a node at this address names a connection
    // id that a different device may hold now.
    let mut engine = ConnectIntServiceClient::connect(format!("http://{}", stack.engine().node()))
        .await
        .unwrap();
    let reply = engine
        .kick(KickRequest {
            device_id: login.device_id + 1,
            conn_id,
            reason: KickReason::SignedInElsewhere as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.found);
    client
        .heartbeat()
        .await
        .expect("the connection was not kicked");

    let reply = engine
        .kick(KickRequest {
            device_id: login.device_id,
            conn_id,
            reason: KickReason::SignedInElsewhere as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.found);
    stack.stop().await;
}

/// A SIGN_IN that the logic tier carries out after the engine's deadline has passed: the device
/// gets TIMEOUT, yet its online status is written. When the connection closes, the engine must
/// still send an Offline for it, or the status stays until the device signs in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_sign_in_is_undone_at_close() {
    use std::sync::Arc;
    use support::front::Play;

    // The engine gives up on each call after 1 s (engine_config).
    let script = Arc::new(|method: &str| {
        if method.starts_with("ConnSignIn") {
            Play::ReplyAfter(Duration::from_millis(1_500))
        } else {
            Play::Forward
        }
    });
    let (stack, seen) = Stack::start_behind_front(script, |_| {}).await;

    let (user, first) = stack.new_user("late-sign-in").await;
    first.close().await.unwrap();
    let offline = eventually(Duration::from_secs(5), || async {
        online_status(user.id()).await.is_empty()
    })
    .await;
    assert!(offline, "the first connection's status is removed at close");

    let late = stack.connect().await;
    let code = server_code(
        late.sign_in(user.id(), user.login.device_id, &user.login.token)
            .await,
    );
    assert_eq!(code, ErrorCode::Timeout);
    assert!(seen.count("ConnSignInMany") + seen.count("ConnSignIn") >= 1);
    let written = eventually(Duration::from_secs(5), || async {
        !online_status(user.id()).await.is_empty()
    })
    .await;
    assert!(
        written,
        "the logic tier carried the sign-in out after the deadline"
    );

    late.close().await.unwrap();
    let removed = eventually(Duration::from_secs(5), || async {
        online_status(user.id()).await.is_empty()
    })
    .await;
    assert!(removed, "the Offline sent at close removes the late status");
    stack.stop().await;
}
