//! Online status across connections: replacement, kicks and the conditional Offline.

mod common;

use std::time::{Duration, Instant};

use common::{conn, hget, new_device, offline, sign_in, EngineRecorder, TestLogic, NODE};
use im_proto::v1::{ErrorCode, KickReason};

#[tokio::test]
async fn second_sign_in_kicks_old_conn() {
    let mut logic = TestLogic::start_default().await;
    let mut engine = EngineRecorder::start().await;
    let node = engine.addr.to_string();
    let device = new_device(&mut logic.client, "kick", conn(&node, 1)).await;

    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(&node, 2),
    )
    .await
    .expect("second sign-in succeeds");

    let status = hget(&format!("online:{}", device.user_id), device.device_id).await;
    assert_eq!(status, Some(format!("{node}|2")));
    let kick = engine.next_kick().await;
    assert_eq!(kick.device_id, device.device_id);
    assert_eq!(kick.conn_id, 1);
    assert_eq!(kick.reason, KickReason::SignedInElsewhere as i32);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_on_same_conn_kicks_nobody() {
    let mut logic = TestLogic::start_default().await;
    let mut engine = EngineRecorder::start().await;
    let node = engine.addr.to_string();
    let device = new_device(&mut logic.client, "same", conn(&node, 5)).await;

    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(&node, 5),
    )
    .await
    .expect("sign-in succeeds");

    // Nothing is sent, so only a bounded wait can show it: 300 ms is far above a loopback call.
    let kick = tokio::time::timeout(Duration::from_millis(300), engine.kicks.recv()).await;
    assert!(kick.is_err(), "unexpected kick {kick:?}");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn late_offline_of_old_conn_keeps_new_status() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "late", conn(NODE, 1)).await;
    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect("second sign-in succeeds");
    let key = format!("online:{}", device.user_id);

    let stale = offline(
        &mut logic.client,
        device.user_id,
        device.device_id,
        conn(NODE, 1),
    )
    .await;

    assert!(!stale, "old connection's Offline removes nothing");
    assert_eq!(
        hget(&key, device.device_id).await.as_deref(),
        Some("127.0.0.1:1|2")
    );

    let current = offline(
        &mut logic.client,
        device.user_id,
        device.device_id,
        conn(NODE, 2),
    )
    .await;

    assert!(current, "current connection's Offline removes the status");
    assert_eq!(hget(&key, device.device_id).await, None);
    let again = offline(
        &mut logic.client,
        device.user_id,
        device.device_id,
        conn(NODE, 2),
    )
    .await;
    assert!(!again, "a repeated Offline finds nothing");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn offline_from_other_node_removes_nothing() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "othernode", conn(NODE, 7)).await;

    let removed = offline(
        &mut logic.client,
        device.user_id,
        device.device_id,
        conn("127.0.0.1:2", 7),
    )
    .await;

    assert!(!removed);
    let status = hget(&format!("online:{}", device.user_id), device.device_id).await;
    assert_eq!(status.as_deref(), Some("127.0.0.1:1|7"));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn hanging_old_node_does_not_delay_sign_in() {
    let config = im_logic::Config {
        engine_call_timeout_ms: 3000,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    // The kernel completes TCP handshakes on this listener, but nothing ever replies, so the
    // kick hangs until its 3 s deadline.
    let silent = common::bind_node().await;
    let node = silent.local_addr().expect("local addr").to_string();
    let device = new_device(&mut logic.client, "hang", conn(&node, 1)).await;

    let started = Instant::now();
    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect("sign-in succeeds");

    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn offline_many_replies_each_outcome_in_order() {
    let mut logic = TestLogic::start_default().await;
    let first = new_device(&mut logic.client, "offline_many_a", conn(NODE, 1)).await;
    let second = new_device(&mut logic.client, "offline_many_b", conn(NODE, 2)).await;
    let request = |device: &im_proto::v1::LoginReply, conn_id: u64| im_proto::v1::OfflineRequest {
        user_id: device.user_id,
        device_id: device.device_id,
        conn: Some(conn(NODE, conn_id)),
    };
    let offlines = vec![
        request(&first, 1),
        // An old connection of the second device: its status names connection 2.
        request(&second, 9),
        im_proto::v1::OfflineRequest {
            user_id: 0,
            device_id: second.device_id,
            conn: Some(conn(NODE, 2)),
        },
    ];

    let outcomes = logic
        .client
        .offline_many(im_proto::v1::OfflineManyRequest { offlines })
        .await
        .expect("OfflineMany")
        .into_inner()
        .outcomes;
    let codes: Vec<i32> = outcomes.iter().map(|outcome| outcome.code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::Ok as i32,
            ErrorCode::Ok as i32,
            ErrorCode::InvalidArgument as i32
        ]
    );
    assert!(outcomes[0].removed);
    assert!(!outcomes[1].removed);
    assert!(!outcomes[2].message.is_empty());
    assert_eq!(
        hget(&format!("online:{}", first.user_id), first.device_id).await,
        None
    );
    assert_eq!(
        hget(&format!("online:{}", second.user_id), second.device_id)
            .await
            .as_deref(),
        Some("127.0.0.1:1|2")
    );

    let too_many = vec![request(&first, 1); 1025];
    let status = logic
        .client
        .offline_many(im_proto::v1::OfflineManyRequest { offlines: too_many })
        .await
        .expect_err("1025 requests");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    logic.server.shutdown().await;
}
