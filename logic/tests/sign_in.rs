//! ConnSignIn: token checks against the record that LOGIN stored.

mod common;

use common::{conn, error_code, new_device, redis_connection, sign_in, TestLogic, NODE};
use im_proto::v1::ErrorCode;
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test]
async fn sign_in_marks_new_conn_online() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "signin", conn(NODE, 1)).await;

    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect("sign-in succeeds");

    let status = common::hget(&format!("online:{}", device.user_id), device.device_id).await;
    assert_eq!(status.as_deref(), Some("127.0.0.1:1|2"));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_wrong_token_is_token_invalid() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "badtoken", conn(NODE, 1)).await;
    let wrong = "0".repeat(64);

    for token in [wrong.as_str(), "", &"f".repeat(10_000)] {
        let status = sign_in(
            &mut logic.client,
            device.user_id,
            device.device_id,
            token,
            conn(NODE, 2),
        )
        .await
        .expect_err("wrong token rejected");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            error_code(&status),
            ErrorCode::TokenInvalid,
            "{} bytes",
            token.len()
        );
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_expired_token_is_token_expired() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "expired", conn(NODE, 1)).await;
    let digest = hex::encode(Sha256::digest(device.token.as_bytes()));
    let mut redis = redis_connection().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("auth:{}", device.user_id))
        .arg(device.device_id)
        .arg(format!("v1:{digest}:1000"))
        .query_async(&mut redis)
        .await
        .expect("HSET succeeds");

    let status = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect_err("expired token rejected");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_code(&status), ErrorCode::TokenExpired);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_after_token_ttl_is_token_expired() {
    let config = im_logic::Config {
        token_ttl_secs: 1,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let device = new_device(&mut logic.client, "ttl", conn(NODE, 1)).await;

    // The token lives 1 s; wait a little longer so the expiry has surely passed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let status = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect_err("expired token rejected");

    // The key expires with its token, so Redis may already have dropped the record.
    let code = error_code(&status);
    assert!(
        code == ErrorCode::TokenExpired || code == ErrorCode::DeviceUnknown,
        "{code:?}"
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_unknown_device_is_device_unknown() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "nodev", conn(NODE, 1)).await;

    let status = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id + 1_000_000,
        &device.token,
        conn(NODE, 2),
    )
    .await
    .expect_err("unknown device rejected");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_code(&status), ErrorCode::DeviceUnknown);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_zero_ids_are_invalid_argument() {
    let mut logic = TestLogic::start_default().await;

    for (user_id, device_id) in [(0, 1), (1, 0)] {
        let status = sign_in(&mut logic.client, user_id, device_id, "x", conn(NODE, 1))
            .await
            .expect_err("zero id rejected");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_invalid_node_is_invalid_argument() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "badnode", conn(NODE, 1)).await;

    for node in ["", "a|b", "has space"] {
        let status = sign_in(
            &mut logic.client,
            device.user_id,
            device.device_id,
            &device.token,
            conn(node, 2),
        )
        .await
        .expect_err("invalid node rejected");
        assert_eq!(error_code(&status), ErrorCode::InvalidArgument, "{node:?}");
    }
    logic.server.shutdown().await;
}

/// The sign-in script sets the online status only for a valid token, so a rejected token
/// leaves the status of the device's connection alone.
#[tokio::test]
async fn rejected_sign_in_keeps_online_status() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "keepstatus", conn(NODE, 1)).await;
    let auth_key = format!("auth:{}", device.user_id);
    let online_key = format!("online:{}", device.user_id);
    let digest = hex::encode(Sha256::digest(device.token.as_bytes()));
    let mut redis = redis_connection().await;
    let cases = [
        ("wrong token", "0".repeat(64), None, ErrorCode::TokenInvalid),
        (
            "oversized token",
            "f".repeat(10_000),
            None,
            ErrorCode::TokenInvalid,
        ),
        (
            "revoked token",
            device.token.clone(),
            Some(format!("v1:{digest}:99999999999999:revoked")),
            ErrorCode::TokenRevoked,
        ),
        (
            "expired token",
            device.token.clone(),
            Some(format!("v1:{digest}:1000")),
            ErrorCode::TokenExpired,
        ),
    ];

    for (case, token, record, expected) in cases {
        if let Some(record) = record {
            let _: () = redis::cmd("HSET")
                .arg(&auth_key)
                .arg(device.device_id)
                .arg(record)
                .query_async(&mut redis)
                .await
                .expect("HSET succeeds");
        }
        let status = sign_in(
            &mut logic.client,
            device.user_id,
            device.device_id,
            &token,
            conn(NODE, 2),
        )
        .await
        .expect_err(case);
        assert_eq!(error_code(&status), expected, "{case}");
        let online = common::hget(&online_key, device.device_id).await;
        assert_eq!(online.as_deref(), Some("127.0.0.1:1|1"), "{case}");
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_many_replies_each_outcome_in_order() {
    let mut logic = TestLogic::start_default().await;
    let first = new_device(&mut logic.client, "signin_many_a", conn(NODE, 1)).await;
    let second = new_device(&mut logic.client, "signin_many_b", conn(NODE, 2)).await;
    let request = |device: &im_proto::v1::LoginReply, token: &str, conn_id: u64| {
        common::sign_in_request(device.user_id, device.device_id, token, conn(NODE, conn_id))
    };
    let sign_ins = vec![
        request(&first, &first.token, 11),
        request(&second, "not the token", 12),
        request(&second, &second.token, 13),
    ];

    let outcomes = common::sign_in_many(&mut logic.client, sign_ins).await;
    let codes: Vec<i32> = outcomes.iter().map(|outcome| outcome.code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::Ok as i32,
            ErrorCode::TokenInvalid as i32,
            ErrorCode::Ok as i32
        ]
    );
    assert!(!outcomes[1].message.is_empty());
    for (device, conn_id) in [(&first, 11), (&second, 13)] {
        let status = common::hget(&format!("online:{}", device.user_id), device.device_id).await;
        assert_eq!(status, Some(format!("127.0.0.1:1|{conn_id}")));
    }

    let too_many = vec![request(&first, &first.token, 14); 1025];
    let status = logic
        .client
        .conn_sign_in_many(im_proto::v1::ConnSignInManyRequest { sign_ins: too_many })
        .await
        .expect_err("1025 sign-ins");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}
