//! ConnLogin: credentials, device ownership, token records and online status.

mod common;

use common::{
    conn, error_code, hget, login, login_with, new_device, register, sign_in, unique_name,
    TestLogic, NODE,
};
use im_proto::v1::ErrorCode;
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test]
async fn login_issues_token_and_marks_device_online() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("login");
    let user_id = register(&mut logic.client, &username).await;
    let before_ms = now_ms();

    let reply = login(&mut logic.client, &username, 0, conn(NODE, 11))
        .await
        .expect("login succeeds");

    assert_eq!(reply.user_id, user_id);
    assert!(reply.device_id > 0);
    assert_eq!(reply.token.len(), 64);
    assert!(reply
        .token
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(reply.heartbeat_interval_ms, 0, "the engine fills it in");
    let ttl_ms = 30 * 24 * 3600 * 1000;
    assert!(reply.token_expires_at_ms >= before_ms + ttl_ms);
    assert!(reply.token_expires_at_ms <= now_ms() + ttl_ms);

    let record = hget(&format!("auth:{user_id}"), reply.device_id).await;
    let digest = hex::encode(Sha256::digest(reply.token.as_bytes()));
    let expected = format!("v1:{digest}:{}", reply.token_expires_at_ms);
    assert_eq!(record.as_deref(), Some(expected.as_str()));
    let status = hget(&format!("online:{user_id}"), reply.device_id).await;
    assert_eq!(status.as_deref(), Some("127.0.0.1:1|11"));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_matches_username_in_any_case() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("Mixed");
    let user_id = register(&mut logic.client, &username).await;

    let spellings = [username.to_uppercase(), username.to_lowercase()];
    for (conn_id, spelling) in (1..).zip(&spellings) {
        let reply = login(&mut logic.client, spelling, 0, conn(NODE, conn_id))
            .await
            .unwrap_or_else(|status| panic!("login as {spelling} failed: {status:?}"));

        assert_eq!(reply.user_id, user_id, "login as {spelling}");
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_wrong_password_is_invalid_credentials() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("wrongpw");
    register(&mut logic.client, &username).await;

    let status = login_with(
        &mut logic.client,
        &username,
        "not the password",
        0,
        conn(NODE, 1),
    )
    .await
    .expect_err("wrong password rejected");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_code(&status), ErrorCode::InvalidCredentials);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_unknown_user_is_invalid_credentials() {
    let mut logic = TestLogic::start_default().await;

    let status = login(&mut logic.client, &unique_name("nobody"), 0, conn(NODE, 1))
        .await
        .expect_err("unknown user rejected");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_code(&status), ErrorCode::InvalidCredentials);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_own_device_replaces_token() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("reuse");
    register(&mut logic.client, &username).await;
    let first = login(&mut logic.client, &username, 0, conn(NODE, 1))
        .await
        .expect("first login");

    let second = login(&mut logic.client, &username, first.device_id, conn(NODE, 2))
        .await
        .expect("second login");

    assert_eq!(second.device_id, first.device_id);
    assert_ne!(second.token, first.token);
    let old = sign_in(
        &mut logic.client,
        first.user_id,
        first.device_id,
        &first.token,
        conn(NODE, 3),
    )
    .await
    .expect_err("old token replaced");
    assert_eq!(error_code(&old), ErrorCode::TokenInvalid);
    sign_in(
        &mut logic.client,
        second.user_id,
        second.device_id,
        &second.token,
        conn(NODE, 4),
    )
    .await
    .expect("new token works");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_new_device_each_time_without_id() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("multi");
    register(&mut logic.client, &username).await;

    let first = login(&mut logic.client, &username, 0, conn(NODE, 1))
        .await
        .expect("login");
    let second = login(&mut logic.client, &username, 0, conn(NODE, 2))
        .await
        .expect("login");

    assert_ne!(first.device_id, second.device_id);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_foreign_device_is_not_owned() {
    let mut logic = TestLogic::start_default().await;
    let owner = new_device(&mut logic.client, "owner", conn(NODE, 1)).await;
    let intruder = unique_name("intruder");
    register(&mut logic.client, &intruder).await;

    let status = login(&mut logic.client, &intruder, owner.device_id, conn(NODE, 2))
        .await
        .expect_err("foreign device rejected");

    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_code(&status), ErrorCode::DeviceNotOwned);
    let device = format!("device {}", owner.device_id);
    assert!(status.message().contains(&device), "{status:?}");
    assert!(status.message().contains("device_id 0"), "{status:?}");
    let owner_status = hget(&format!("online:{}", owner.user_id), owner.device_id).await;
    assert_eq!(
        owner_status.as_deref(),
        Some("127.0.0.1:1|1"),
        "owner's status untouched"
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_with_nonexistent_device_is_device_unknown() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("ghost");
    register(&mut logic.client, &username).await;

    for device_id in [i64::MAX as u64, u64::MAX] {
        let status = login(&mut logic.client, &username, device_id, conn(NODE, 1))
            .await
            .expect_err("unknown device rejected");
        assert_eq!(
            error_code(&status),
            ErrorCode::DeviceUnknown,
            "device {device_id}"
        );
        // A LOGIN with the same id fails the same way, so "log in again" would loop.
        let device = format!("device {device_id}");
        assert!(status.message().contains(&device), "{status:?}");
        assert!(status.message().contains("device_id 0"), "{status:?}");
        assert!(!status.message().contains("no token stored"), "{status:?}");
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_without_conn_is_invalid_argument() {
    let mut logic = TestLogic::start_default().await;
    let request = im_proto::v1::ConnLoginRequest {
        login: None,
        conn: None,
        client_addr: String::new(),
    };

    let status = logic
        .client
        .conn_login(request)
        .await
        .expect_err("rejected");

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn login_rejects_control_characters_in_device() {
    let mut logic = TestLogic::start_default().await;
    let username = unique_name("devinfo");
    let user_id = register(&mut logic.client, &username).await;
    let info = |platform: &str, model: &str, app_version: &str| im_proto::v1::DeviceInfo {
        platform: platform.to_owned(),
        model: model.to_owned(),
        app_version: app_version.to_owned(),
    };
    let cases = [
        (info("we\0b", "m", "1"), "device.platform", "NUL"),
        (info("web", "two\nlines", "1"), "device.model", "line feed"),
        (
            info("web", "m", "\u{1b}[2J"),
            "device.app_version",
            "escape",
        ),
    ];

    for (device, field, case) in cases {
        let request = im_proto::v1::ConnLoginRequest {
            login: Some(im_proto::v1::LoginRequest {
                username: username.clone(),
                password: common::PASSWORD.to_owned(),
                device_id: 0,
                device: Some(device),
            }),
            conn: Some(conn(NODE, 1)),
            client_addr: "127.0.0.1:40000".to_owned(),
        };
        let status = logic.client.conn_login(request).await.expect_err(case);
        common::assert_invalid(&status, field, case);
    }
    let user_id = i64::try_from(user_id).expect("bigint id");
    let devices: i64 = common::postgres()
        .await
        .query_one(
            "SELECT count(*) FROM devices WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("count devices")
        .get(0);
    assert_eq!(devices, 0, "no rejected login created a device");
    logic.server.shutdown().await;
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    since_epoch.as_millis() as i64
}
