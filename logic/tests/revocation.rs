//! Durable tokens and their revocation at the logic tier: PostgreSQL stores each token, Redis
//! caches it, and Logout and KickDevice revoke it in both.
//!
//! Each test runs on a private redis-server, so that FLUSHALL touches no other test's data.

mod common;

use common::redis_child::RedisChild;
use common::{
    as_device, conn, device_ref, error_code, hget_in, login, new_device, new_user_device, sign_in,
    sign_in_many, sign_in_request, TestLogic,
};
use im_proto::v1::{ConnLogoutRequest, ErrorCode, KickDeviceRequest, LogoutRequest};

const NODE_A: &str = "127.0.0.1:4";
const SERVER_SECRET: &str = "revocation-test-secret";

async fn start_logic() -> (TestLogic, RedisChild) {
    let redis = RedisChild::start(common::free_port().await).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        server_secret: SERVER_SECRET.to_owned(),
        ..common::test_config()
    };
    (TestLogic::start(config).await, redis)
}

async fn flush_all(redis: &RedisChild) {
    let mut connection = redis::Client::open(redis.url())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("FLUSHALL succeeds");
}

#[tokio::test]
async fn sign_in_after_flush_reads_postgres() {
    let (mut logic, redis) = start_logic().await;
    let device = new_device(&mut logic.client, "refill", conn(NODE_A, 1)).await;
    flush_all(&redis).await;

    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE_A, 2),
    )
    .await
    .expect("the token signs in from PostgreSQL");

    let cached = hget_in(
        &redis.url(),
        &format!("auth:{}", device.user_id),
        device.device_id,
    )
    .await;
    let cached = cached.expect("the record is cached again");
    assert!(cached.starts_with("v1:"), "{cached}");
    assert!(!cached.ends_with(":revoked"), "{cached}");
    let status = sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &"0".repeat(64),
        conn(NODE_A, 3),
    )
    .await
    .expect_err("a wrong token");
    assert_eq!(error_code(&status), ErrorCode::TokenInvalid);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn device_logout_revokes_and_removes_status() {
    let (mut logic, redis) = start_logic().await;
    let device = new_device(&mut logic.client, "devlogout", conn(NODE_A, 1)).await;

    logic
        .client
        .logout(ConnLogoutRequest {
            device: device_ref(&device),
            conn: Some(conn(NODE_A, 1)),
        })
        .await
        .expect("logout");

    let online = hget_in(
        &redis.url(),
        &format!("online:{}", device.user_id),
        device.device_id,
    )
    .await;
    assert_eq!(online, None);
    for flushed in [false, true] {
        if flushed {
            flush_all(&redis).await;
        }
        let status = sign_in(
            &mut logic.client,
            device.user_id,
            device.device_id,
            &device.token,
            conn(NODE_A, 2),
        )
        .await
        .expect_err("a revoked token");
        assert_eq!(
            error_code(&status),
            ErrorCode::TokenRevoked,
            "flushed {flushed}"
        );
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn revoked_token_is_rejected_by_the_business_api() {
    let (mut logic, _redis) = start_logic().await;
    let device = new_device(&mut logic.client, "apilogout", conn(NODE_A, 1)).await;
    let mut ext = logic.ext_client().await;

    ext.logout(as_device(&device, LogoutRequest {}))
        .await
        .expect("logout with the device token");
    let status = ext
        .logout(as_device(&device, LogoutRequest {}))
        .await
        .expect_err("the token is revoked");

    assert_eq!(error_code(&status), ErrorCode::TokenRevoked);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn kick_device_without_configured_secret_names_it() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "kicknosecret", conn(NODE_A, 1)).await;
    let mut ext = logic.ext_client().await;
    let mut request = tonic::Request::new(KickDeviceRequest {
        user_id: device.user_id,
        device_id: 0,
    });
    request
        .metadata_mut()
        .insert("im-server-secret", "".parse().expect("ASCII"));

    let status = ext.kick_device(request).await.expect_err("disabled");

    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(error_code(&status), ErrorCode::PermissionDenied);
    assert!(status.message().contains("KickDevice is off"), "{status:?}");
    assert!(!status.message().contains("ServerSend"), "{status:?}");
    assert!(
        status.message().contains("set IM_LOGIC_SERVER_SECRET"),
        "{status:?}"
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn kick_device_checks_secret_and_owner() {
    let (mut logic, _redis) = start_logic().await;
    let (name, device) =
        new_user_device(&mut logic.client, "kickcheck", false, conn(NODE_A, 1)).await;
    let other = new_device(&mut logic.client, "kickother", conn(NODE_A, 2)).await;
    let mut ext = logic.ext_client().await;
    let kick = |user_id, device_id, secret: &str| {
        let mut request = tonic::Request::new(KickDeviceRequest { user_id, device_id });
        request
            .metadata_mut()
            .insert("im-server-secret", secret.parse().expect("ASCII"));
        request
    };

    let status = ext
        .kick_device(kick(device.user_id, 0, "wrong-secret-value"))
        .await
        .expect_err("wrong secret");
    assert_eq!(error_code(&status), ErrorCode::PermissionDenied);
    let status = ext
        .kick_device(kick(device.user_id, other.device_id, SERVER_SECRET))
        .await
        .expect_err("another user's device");
    assert_eq!(error_code(&status), ErrorCode::NotFound);
    let status = ext
        .kick_device(kick(0, 0, SERVER_SECRET))
        .await
        .expect_err("user 0");
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    let unknown_user = i64::MAX as u64;
    let status = ext
        .kick_device(kick(unknown_user, 0, SERVER_SECRET))
        .await
        .expect_err("a user who does not exist");
    assert_eq!(error_code(&status), ErrorCode::NotFound);
    assert!(
        status.message().contains(&unknown_user.to_string()),
        "{}",
        status.message()
    );
    sign_in(
        &mut logic.client,
        device.user_id,
        device.device_id,
        &device.token,
        conn(NODE_A, 3),
    )
    .await
    .expect("nothing was revoked");

    let reply = ext
        .kick_device(kick(device.user_id, device.device_id, SERVER_SECRET))
        .await
        .expect("kick with the secret")
        .into_inner();
    assert_eq!(reply.revoked, 1);
    let again = ext
        .kick_device(kick(device.user_id, device.device_id, SERVER_SECRET))
        .await
        .expect("a second kick")
        .into_inner();
    assert_eq!(again.revoked, 0, "already revoked");

    let relogin = login(&mut logic.client, &name, device.device_id, conn(NODE_A, 4))
        .await
        .expect("a fresh login");
    sign_in(
        &mut logic.client,
        relogin.user_id,
        relogin.device_id,
        &relogin.token,
        conn(NODE_A, 5),
    )
    .await
    .expect("the new token signs in");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sign_in_many_after_flush_gives_each_outcome() {
    let (mut logic, redis) = start_logic().await;
    let mut devices = Vec::new();
    for index in 0..6 {
        devices.push(
            new_device(
                &mut logic.client,
                &format!("batch{index}"),
                conn(NODE_A, index),
            )
            .await,
        );
    }
    let revoked = &devices[5];
    logic
        .client
        .logout(ConnLogoutRequest {
            device: device_ref(revoked),
            conn: Some(conn(NODE_A, 5)),
        })
        .await
        .expect("the last device logs out");
    flush_all(&redis).await;
    let request = |user_id, device_id, token: &str, conn_id| {
        sign_in_request(user_id, device_id, token, conn(NODE_A, conn_id))
    };
    let mut sign_ins: Vec<_> = devices[..4]
        .iter()
        .zip(10..)
        .map(|(device, conn_id)| request(device.user_id, device.device_id, &device.token, conn_id))
        .collect();
    let wrong = &devices[4];
    sign_ins.push(request(wrong.user_id, wrong.device_id, &"0".repeat(64), 20));
    sign_ins.push(request(
        revoked.user_id,
        revoked.device_id,
        &revoked.token,
        21,
    ));
    sign_ins.push(request(
        wrong.user_id,
        devices[0].device_id,
        &devices[0].token,
        22,
    ));

    let outcomes = sign_in_many(&mut logic.client, sign_ins).await;

    let codes: Vec<ErrorCode> = outcomes
        .iter()
        .map(|outcome| ErrorCode::try_from(outcome.code).expect("known code"))
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::Ok,
            ErrorCode::Ok,
            ErrorCode::Ok,
            ErrorCode::Ok,
            ErrorCode::TokenInvalid,
            ErrorCode::TokenRevoked,
            ErrorCode::DeviceUnknown,
        ]
    );
    for device in &devices[..5] {
        let cached = hget_in(
            &redis.url(),
            &format!("auth:{}", device.user_id),
            device.device_id,
        )
        .await;
        assert!(cached.is_some(), "device {} cached again", device.device_id);
    }
    logic.server.shutdown().await;
}
