//! Redis stopping and returning while the logic server runs, and stores unreachable or ports in
//! use at start. Uses a private redis-server child process on a free loopback port.

mod common;

use std::time::{Duration, Instant};

use common::log_capture::LogCapture;
use common::redis_child::RedisChild;
use common::{
    conn, create_group, error_code, login, new_user_device, register, send, sign_in, sync, text_to,
    unique_name, EngineRecorder, TestLogic, NODE,
};
use im_logic::{start, StartError};
use im_proto::v1::{ConversationType, ErrorCode, LoginReply};
use tokio::net::TcpListener;

/// Starts a Redis of this test's own on a free port and a logic tier on it whose Redis calls
/// time out after 300 ms. Returns the port, the Redis and the logic tier.
async fn start_with_own_redis() -> (u16, RedisChild, TestLogic) {
    let port = common::free_port().await;
    let redis = RedisChild::start(port).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        redis_timeout_ms: 300,
        ..common::test_config()
    };
    let logic = TestLogic::start(config).await;
    (port, redis, logic)
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let (port, mut redis, mut logic) = start_with_own_redis().await;
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
    let relogin = login_until_redis_answers(&mut logic, &username, device.device_id, NODE, 3).await;
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
    let (_, redis, mut logic) = start_with_own_redis().await;
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

#[tokio::test]
async fn start_with_port_in_use_touches_no_store() {
    // Stand-ins for the stores. They never reply, so a start that contacts a store waits for
    // it, and the connection shows up as one to accept.
    let postgres = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let redis = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let postgres_addr = postgres.local_addr().expect("local addr");
    let redis_addr = redis.local_addr().expect("local addr");
    let in_use = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken_addr = in_use.local_addr().expect("local addr");
    let base = im_logic::Config {
        database_url: format!("postgres://app:secret@{postgres_addr}/im"),
        redis_url: format!("redis://{redis_addr}/"),
        startup_retry_ms: 10_000,
        ..common::test_config()
    };
    let cases = [
        (
            "listen_addr",
            im_logic::Config {
                listen_addr: taken_addr.to_string(),
                ..base.clone()
            },
        ),
        (
            "metrics_addr",
            im_logic::Config {
                metrics_addr: taken_addr.to_string(),
                ..base.clone()
            },
        ),
        (
            "web_addr",
            im_logic::Config {
                web_addr: taken_addr.to_string(),
                ..base.clone()
            },
        ),
    ];

    for (case, config) in cases {
        let started = Instant::now();
        let err = start(config).await.err().expect("start fails");
        let elapsed = started.elapsed();

        assert!(
            matches!(&err, StartError::Bind { addr, .. } if *addr == taken_addr),
            "{case}: {err:?}"
        );
        assert!(
            err.to_string().contains(&taken_addr.to_string()),
            "{case}: {err}"
        );
        assert!(elapsed < Duration::from_secs(2), "{case}: took {elapsed:?}");
        let contacted = Duration::from_millis(100);
        assert!(
            tokio::time::timeout(contacted, postgres.accept())
                .await
                .is_err(),
            "{case}: PostgreSQL was contacted"
        );
        assert!(
            tokio::time::timeout(contacted, redis.accept())
                .await
                .is_err(),
            "{case}: Redis was contacted"
        );
    }
}

#[tokio::test]
async fn lease_reaper_warns_once_per_interval_during_outage() {
    let (logs, _guard) = LogCapture::install();
    let (_, mut redis, logic) = start_with_own_redis().await;

    redis.stop();
    // The reaper runs a pass every second: about four fail in this time.
    tokio::time::sleep(Duration::from_millis(4500)).await;

    let failed = logs.lines_with("lease reaper pass failed");
    let warnings: Vec<&String> = failed.iter().filter(|line| line.contains("WARN")).collect();
    assert!(failed.len() >= 3, "passes failed: {failed:#?}");
    assert_eq!(warnings.len(), 1, "one warning per interval: {warnings:#?}");
    logic.server.shutdown().await;
}

/// Group messages sent in the outage of `group_sends_store_during_redis_outage`.
const OUTAGE_GROUP_SENDS: u64 = 20;

/// Group sends while Redis is down are stored, because they need only PostgreSQL. Their pushes
/// are dropped with a warning, because the members' online statuses cannot be read. The group's
/// routing task keeps running, so once Redis is back and the members logged in again, a group
/// message is pushed again.
#[tokio::test]
async fn group_sends_store_during_redis_outage() {
    let (logs, _guard) = LogCapture::install();
    let (port, mut redis, mut logic) = start_with_own_redis().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let (_, sender) =
        new_user_device(&mut logic.client, "outage_g", false, conn(&node.node(), 1)).await;
    let mut members: Vec<(String, LoginReply)> = Vec::new();
    for conn_id in 2..5 {
        let member = new_user_device(
            &mut logic.client,
            "outage_m",
            false,
            conn(&node.node(), conn_id),
        )
        .await;
        members.push(member);
    }
    let member_logins: Vec<&LoginReply> = members.iter().map(|(_, login)| login).collect();
    let group = create_group(&mut ext, &sender, &member_logins).await;
    let group_text = |text: &str| text_to(ConversationType::Group, group.group_id, text);
    send(&mut logic.client, &sender, group_text("before"))
        .await
        .expect("group send with Redis up");
    let before = node.next_delivery().await;
    assert_eq!(before.deliveries.len(), 1);
    assert_eq!(before.deliveries[0].targets.len(), members.len());

    redis.stop();
    for index in 0..OUTAGE_GROUP_SENDS {
        send(
            &mut logic.client,
            &sender,
            group_text(&format!("down {index}")),
        )
        .await
        .unwrap_or_else(|status| panic!("group send {index} with Redis down: {status:?}"));
    }
    node.assert_no_more_deliveries().await;
    let warnings = logs.lines_with("cannot read online status");
    assert!(!warnings.is_empty(), "no dropped push was logged");
    // Each outage send reads the status of the three members and of the sender, whose other
    // devices would get the message.
    let unread = format!(
        r#"im_logic_push_status_failures_total{{kind="message"}} {}"#,
        OUTAGE_GROUP_SENDS * (members.len() as u64 + 1)
    );
    let metrics = logic.server.metrics().render();
    assert!(metrics.lines().any(|line| line == unread), "{metrics}");
    let stored = sync(&mut logic.client, member_logins[0], 0, 100)
        .await
        .expect("sync with Redis down");
    let stored_seqs: Vec<u64> = stored.messages.iter().map(|message| message.seq).collect();
    assert_eq!(
        stored_seqs,
        (1..=OUTAGE_GROUP_SENDS + 1).collect::<Vec<_>>()
    );

    // The restarted Redis is empty, so each member logs in again to be online.
    let _redis = RedisChild::start(port).await;
    for (index, (username, member)) in members.iter().enumerate() {
        let conn_id = 10 + index as u64;
        login_until_redis_answers(
            &mut logic,
            username,
            member.device_id,
            &node.node(),
            conn_id,
        )
        .await;
    }
    send(&mut logic.client, &sender, group_text("after"))
        .await
        .expect("group send after Redis returned");
    let after = node.next_delivery().await;

    assert_eq!(after.deliveries.len(), 1);
    let targets = &after.deliveries[0].targets;
    assert_eq!(targets.len(), members.len());
    assert!(
        targets
            .iter()
            .all(|target| target.seq == OUTAGE_GROUP_SENDS + 2),
        "{targets:?}"
    );
    logic.server.shutdown().await;
}

/// Logs device `device_id` of `username` in on `node`, retrying for up to 10 s while the
/// connection to a restarted Redis comes back, and returns the reply.
async fn login_until_redis_answers(
    logic: &mut TestLogic,
    username: &str,
    device_id: u64,
    node: &str,
    conn_id: u64,
) -> LoginReply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = match login(&mut logic.client, username, device_id, conn(node, conn_id)).await
        {
            Ok(reply) => return reply,
            Err(status) => status,
        };
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
