//! RenewLease and the lease reaper: a restarted node's old statuses are cleared, a lapsed
//! node's statuses are removed only where they still name it, and pushes skip a lapsed node.
//!
//! Each test runs on a private redis-server, so that no other test's reaper acts on its leases
//! and the metrics count only its own work.

mod common;

use std::time::Duration;

use common::redis_child::RedisChild;
use common::{
    conn, error_code, hget_in, login, new_user_device, send_text, sign_in, EngineRecorder,
    TestLogic,
};
use im_proto::v1::{ErrorCode, NodeLeaseRequest, OnlineDevice, RestoreOnlineRequest};

/// A node address that nothing listens on; no test here calls it.
const DEAD_NODE: &str = "127.0.0.1:2";
const OTHER_NODE: &str = "127.0.0.1:3";

/// The reaper runs every second; three passes cover a loaded machine.
const REAP_WAIT: Duration = Duration::from_secs(3);

async fn start_logic() -> (TestLogic, RedisChild) {
    let redis = RedisChild::start(common::free_port().await).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        ..common::test_config()
    };
    (TestLogic::start(config).await, redis)
}

async fn renew(logic: &mut TestLogic, node: &str, incarnation: u64, ttl_ms: u32) {
    let request = NodeLeaseRequest {
        node: node.to_owned(),
        incarnation,
        ttl_ms,
    };
    logic
        .client
        .renew_lease(request)
        .await
        .expect("lease renewed");
}

async fn status(redis: &RedisChild, user_id: u64, device_id: u64) -> Option<String> {
    hget_in(&redis.url(), &format!("online:{user_id}"), device_id).await
}

/// Returns the value of the metric line that starts with `name `.
fn metric(logic: &TestLogic, name: &str) -> u64 {
    let text = logic.server.metrics().render();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from the metrics"))
        .parse()
        .expect("a number")
}

/// Polls `check` every 50 ms until it returns true or `wait` passes.
async fn eventually<F, Fut>(wait: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

#[tokio::test]
async fn new_incarnation_clears_previous_statuses() {
    let (mut logic, redis) = start_logic().await;
    renew(&mut logic, DEAD_NODE, 1, 60_000).await;
    let (_, first) = new_user_device(&mut logic.client, "inc_a", false, conn(DEAD_NODE, 1)).await;
    let (_, second) = new_user_device(&mut logic.client, "inc_b", false, conn(DEAD_NODE, 2)).await;
    let (_, moved) = new_user_device(&mut logic.client, "inc_c", false, conn(DEAD_NODE, 3)).await;
    sign_in(
        &mut logic.client,
        moved.user_id,
        moved.device_id,
        &moved.token,
        conn(OTHER_NODE, 1),
    )
    .await
    .expect("sign-in on another node");

    renew(&mut logic, DEAD_NODE, 2, 60_000).await;

    assert_eq!(status(&redis, first.user_id, first.device_id).await, None);
    assert_eq!(status(&redis, second.user_id, second.device_id).await, None);
    assert_eq!(
        status(&redis, moved.user_id, moved.device_id).await,
        Some(format!("{OTHER_NODE}|1")),
        "a status on another node stays"
    );
    assert_eq!(metric(&logic, "im_logic_lease_statuses_removed_total"), 2);

    // A device that signs in at the new incarnation keeps its status on later renewals.
    sign_in(
        &mut logic.client,
        first.user_id,
        first.device_id,
        &first.token,
        conn(DEAD_NODE, 1),
    )
    .await
    .expect("sign-in at the new incarnation");
    renew(&mut logic, DEAD_NODE, 2, 60_000).await;
    assert_eq!(
        status(&redis, first.user_id, first.device_id).await,
        Some(format!("{DEAD_NODE}|1"))
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn lapsed_lease_removes_only_its_statuses() {
    let (mut logic, redis) = start_logic().await;
    renew(&mut logic, DEAD_NODE, 7, 200).await;
    let (_, stranded) =
        new_user_device(&mut logic.client, "lapse_a", false, conn(DEAD_NODE, 1)).await;
    let (_, moved) = new_user_device(&mut logic.client, "lapse_b", false, conn(DEAD_NODE, 2)).await;
    sign_in(
        &mut logic.client,
        moved.user_id,
        moved.device_id,
        &moved.token,
        conn(OTHER_NODE, 5),
    )
    .await
    .expect("sign-in on another node");

    let reaped = eventually(REAP_WAIT, || async {
        status(&redis, stranded.user_id, stranded.device_id)
            .await
            .is_none()
    })
    .await;

    assert!(reaped, "the stranded device still names the dead node");
    assert_eq!(
        status(&redis, moved.user_id, moved.device_id).await,
        Some(format!("{OTHER_NODE}|5"))
    );
    assert_eq!(metric(&logic, "im_logic_leases_reaped_total"), 1);
    assert_eq!(metric(&logic, "im_logic_lease_statuses_removed_total"), 1);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn push_skips_lapsed_node() {
    let (mut logic, _redis) = start_logic().await;
    let mut node = EngineRecorder::start().await;
    let (_, sender) = new_user_device(&mut logic.client, "skip_s", false, conn(DEAD_NODE, 1)).await;
    let (receiver_name, receiver) =
        new_user_device(&mut logic.client, "skip_r", true, conn(&node.node(), 1)).await;
    renew(&mut logic, &node.node(), 3, 200).await;
    // Wait for two reaper passes: one finds the lease lapsed and removes the status.
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    // The node came back without renewing: its sign-in is stored, but nothing is pushed there.
    login(
        &mut logic.client,
        &receiver_name,
        receiver.device_id,
        conn(&node.node(), 2),
    )
    .await
    .expect("login at the lapsed node");
    send_text(&mut logic.client, &sender, receiver.user_id, "skipped")
        .await
        .expect("the message is stored");
    node.assert_no_more_deliveries().await;

    // A renewal ends the lapse; pushes resume.
    renew(&mut logic, &node.node(), 3, 60_000).await;
    login(
        &mut logic.client,
        &receiver_name,
        receiver.device_id,
        conn(&node.node(), 3),
    )
    .await
    .expect("login after the renewal");
    send_text(&mut logic.client, &sender, receiver.user_id, "pushed")
        .await
        .expect("the message is stored");
    let delivery = node.next_delivery().await;
    let message = delivery.deliveries[0].message.as_ref().expect("a message");
    assert_eq!(&message.content[..], b"pushed");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn invalid_lease_requests_are_rejected() {
    let (mut logic, _redis) = start_logic().await;
    let cases = [
        ("", 1, 6_000),
        ("a|b", 1, 6_000),
        (DEAD_NODE, 0, 6_000),
        (DEAD_NODE, 1, 0),
        (DEAD_NODE, 1, 600_001),
    ];
    for (node, incarnation, ttl_ms) in cases {
        let request = NodeLeaseRequest {
            node: node.to_owned(),
            incarnation,
            ttl_ms,
        };
        let status = logic
            .client
            .renew_lease(request)
            .await
            .expect_err("invalid lease request");
        assert_eq!(
            error_code(&status),
            ErrorCode::InvalidArgument,
            "{node:?} {incarnation} {ttl_ms}"
        );
    }
    logic.server.shutdown().await;
}

async fn renew_resync(logic: &mut TestLogic, node: &str, incarnation: u64) -> bool {
    let request = NodeLeaseRequest {
        node: node.to_owned(),
        incarnation,
        ttl_ms: 60_000,
    };
    logic
        .client
        .renew_lease(request)
        .await
        .expect("lease renewed")
        .into_inner()
        .resync
}

fn online(user_id: u64, device_id: u64, conn_id: u64) -> OnlineDevice {
    OnlineDevice {
        user_id,
        device_id,
        conn_id,
    }
}

#[tokio::test]
async fn node_restores_statuses_after_redis_loses_them() {
    let (mut logic, redis) = start_logic().await;
    assert!(
        renew_resync(&mut logic, DEAD_NODE, 4).await,
        "a first renewal asks"
    );
    assert!(
        !renew_resync(&mut logic, DEAD_NODE, 4).await,
        "a known node is not asked"
    );
    let (_, first) = new_user_device(&mut logic.client, "rest_a", false, conn(DEAD_NODE, 1)).await;
    let (_, second) = new_user_device(&mut logic.client, "rest_b", false, conn(DEAD_NODE, 2)).await;
    let (_, moved) = new_user_device(&mut logic.client, "rest_c", false, conn(DEAD_NODE, 3)).await;

    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("FLUSHALL");
    // A sign-in elsewhere after the loss is newer than anything the node reports.
    sign_in(
        &mut logic.client,
        moved.user_id,
        moved.device_id,
        &moved.token,
        conn(OTHER_NODE, 9),
    )
    .await
    .expect("sign-in on another node");

    assert!(
        renew_resync(&mut logic, DEAD_NODE, 4).await,
        "a lost lease asks"
    );
    let request = RestoreOnlineRequest {
        node: DEAD_NODE.to_owned(),
        incarnation: 4,
        devices: vec![
            online(first.user_id, first.device_id, 1),
            online(second.user_id, second.device_id, 2),
            online(moved.user_id, moved.device_id, 3),
        ],
    };
    let reply = logic
        .client
        .restore_online(request)
        .await
        .expect("restored")
        .into_inner();

    assert_eq!(reply.restored, 2);
    assert_eq!(
        status(&redis, first.user_id, first.device_id).await,
        Some(format!("{DEAD_NODE}|1"))
    );
    assert_eq!(
        status(&redis, second.user_id, second.device_id).await,
        Some(format!("{DEAD_NODE}|2"))
    );
    assert_eq!(
        status(&redis, moved.user_id, moved.device_id).await,
        Some(format!("{OTHER_NODE}|9")),
        "a newer status is kept"
    );
    // The restored statuses are indexed under the node: its next incarnation clears them.
    renew(&mut logic, DEAD_NODE, 5, 60_000).await;
    assert_eq!(status(&redis, first.user_id, first.device_id).await, None);
    assert_eq!(status(&redis, second.user_id, second.device_id).await, None);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn restore_rejects_zero_ids_and_oversized_reports() {
    let (mut logic, _redis) = start_logic().await;
    let zero = RestoreOnlineRequest {
        node: DEAD_NODE.to_owned(),
        incarnation: 1,
        devices: vec![online(1, 0, 1)],
    };
    let status = logic
        .client
        .restore_online(zero)
        .await
        .expect_err("zero id");
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);

    let oversized = RestoreOnlineRequest {
        node: DEAD_NODE.to_owned(),
        incarnation: 1,
        devices: (1..=1001).map(|id| online(id, id, id)).collect(),
    };
    let status = logic
        .client
        .restore_online(oversized)
        .await
        .expect_err("too many devices");
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}
