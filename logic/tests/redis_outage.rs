//! Redis stopping and returning while the logic server runs, and stores unreachable at start.
//! Uses a private redis-server child process on a free loopback port.

mod common;

use std::time::{Duration, Instant};

use common::redis_child::RedisChild;
use common::{conn, error_code, login, register, sign_in, unique_name, TestLogic, NODE};
use im_logic::{start, StartError};
use im_proto::v1::ErrorCode;

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let port = common::free_port().await;
    let mut redis = RedisChild::start(port).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        redis_timeout_ms: 300,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let username = unique_name("outage");
    register(&mut logic.client, &username).await;
    let device = login(&mut logic.client, &username, 0, conn(NODE, 1))
        .await
        .expect("login with Redis up");

    redis.stop();
    let started = Instant::now();
    let status = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect_err("sign-in fails with Redis down");
    let elapsed = started.elapsed();

    let code = error_code(&status);
    assert!(
        code == ErrorCode::Unavailable || code == ErrorCode::Timeout,
        "{code:?}"
    );
    // 300 ms deadline plus a margin for the gRPC round trip on a busy machine.
    assert!(
        elapsed < Duration::from_millis(1000),
        "failed after {elapsed:?}"
    );

    let _redis = RedisChild::start(port).await;
    // The restarted Redis is empty; the device logs in again here, although its token would
    // still sign in from PostgreSQL. The connection manager reconnects on the next command, so
    // 10 s is ample.
    let deadline = Instant::now() + Duration::from_secs(10);
    let relogin = loop {
        match login(
            &mut logic.client,
            &username,
            device.device_id,
            conn(NODE, 3),
        )
        .await
        {
            Ok(reply) => break reply,
            Err(status) => {
                let code = error_code(&status);
                assert!(
                    code == ErrorCode::Unavailable || code == ErrorCode::Timeout,
                    "{code:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "Redis not usable 10 s after restart"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    sign_in(
        &mut logic.client,
        relogin.user_id,
        relogin.device_id,
        &relogin.token,
        conn(NODE, 4),
    )
    .await
    .expect("sign-in works after Redis returned");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn hung_redis_times_out_within_deadline() {
    let port = common::free_port().await;
    let redis = RedisChild::start(port).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        redis_timeout_ms: 300,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let username = unique_name("hung");
    register(&mut logic.client, &username).await;
    let device = login(&mut logic.client, &username, 0, conn(NODE, 1))
        .await
        .expect("login with Redis up");

    redis.signal("-STOP");
    let started = Instant::now();
    let outcome = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await;
    let elapsed = started.elapsed();
    redis.signal("-CONT");

    let status = outcome.expect_err("sign-in fails while Redis is stopped");
    assert_eq!(error_code(&status), ErrorCode::Timeout);
    assert!(
        elapsed >= Duration::from_millis(300),
        "failed after {elapsed:?}"
    );
    // 300 ms deadline plus a margin for the gRPC round trip on a busy machine.
    assert!(
        elapsed < Duration::from_millis(1000),
        "failed after {elapsed:?}"
    );
    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 3),
    )
    .await
    .expect("sign-in works once Redis answers again");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn start_with_unreachable_redis_names_url() {
    let port = common::free_port().await;
    let config = im_logic::Config {
        redis_url: format!("redis://:secret@127.0.0.1:{port}/"),
        redis_timeout_ms: 300,
        ..common::test_config()
    };

    let err = start(config).await.err().expect("start fails");

    assert!(matches!(err, StartError::Redis { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn start_with_unreachable_postgres_names_url() {
    let port = common::free_port().await;
    let config = im_logic::Config {
        database_url: format!("postgres://app:secret@127.0.0.1:{port}/im"),
        ..common::test_config()
    };

    let err = start(config).await.err().expect("start fails");

    assert!(matches!(err, StartError::Postgres { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/im")),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn start_retries_until_redis_appears() {
    let port = common::free_port().await;
    let config = im_logic::Config {
        redis_url: format!("redis://127.0.0.1:{port}/"),
        redis_timeout_ms: 300,
        startup_retry_ms: 10_000,
        ..common::test_config()
    };
    let starting = tokio::spawn(start(config));

    // Let a few attempts fail before Redis comes up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = RedisChild::start(port).await;
    let server = starting
        .await
        .expect("task finished")
        .expect("start succeeds");

    server.shutdown().await;
}
