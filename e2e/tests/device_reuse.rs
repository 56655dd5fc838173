//! A device id belongs to one user: another user can neither log in nor sign in with it, also
//! when the token check falls back to PostgreSQL after Redis lost its data. The owner's
//! connection keeps the device and its online status, and no message crosses between the two
//! users' connections.

mod support;

use std::time::Duration;

use im_proto::{ConversationType, ErrorCode};
use support::*;

/// How long to watch for a push that must not come; pushes arrive within milliseconds.
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_device_id_is_rejected_and_isolated() {
    let redis = OwnRedis::start();
    let config = im_logic::Config {
        redis_url: redis.url(),
        ..logic_config()
    };
    let stack = Stack::start_with(config, |_| {}).await;
    let (owner, owner_client) = stack.new_user("reuse-owner").await;
    let (intruder, intruder_client) = stack.new_user("reuse-intruder").await;
    let device = owner.login.device_id;
    let owner_conn = online_status_at(&redis.url(), owner.id()).await[&device.to_string()].clone();

    let attempt = stack.connect().await;
    let code = server_code(
        attempt
            .login(&intruder.username, PASSWORD, device, test_device())
            .await,
    );
    assert_eq!(code, ErrorCode::DeviceNotOwned);
    for flushed in [false, true] {
        if flushed {
            flush_all(&redis).await;
        }
        let code = server_code(
            attempt
                .sign_in(intruder.id(), device, &intruder.login.token)
                .await,
        );
        assert_eq!(code, ErrorCode::DeviceUnknown, "flushed {flushed}");
        // The owner's connection keeps the device, and the intruder's user never gets it.
        // After FLUSHALL the engine's next lease renewal writes the owner's status again.
        let owner_kept = eventually(Duration::from_secs(5), || async {
            online_status_at(&redis.url(), owner.id())
                .await
                .get(&device.to_string())
                == Some(&owner_conn)
        })
        .await;
        assert!(owner_kept, "flushed {flushed}: the owner's status changed");
        let intruder_status = online_status_at(&redis.url(), intruder.id()).await;
        assert!(
            !intruder_status.contains_key(&device.to_string()),
            "flushed {flushed}: the intruder's status names the device: {intruder_status:?}"
        );
        owner_client
            .heartbeat()
            .await
            .expect("the owner's connection stays signed in");
    }

    // Each user writes to itself; only its own connections see it.
    intruder_client
        .send(
            ConversationType::User,
            intruder.id(),
            "for the intruder",
            "text/plain",
            "r-1",
        )
        .await
        .expect("note to self");
    owner_client
        .send(
            ConversationType::User,
            owner.id(),
            "for the owner",
            "text/plain",
            "r-2",
        )
        .await
        .expect("note to self");
    assert!(push_within(&owner_client, QUIET).await.is_none());
    assert!(push_within(&intruder_client, QUIET).await.is_none());
    assert!(push_within(&attempt, QUIET).await.is_none());
    let (owner_messages, _) = sync_all(&owner_client, 0, 100).await;
    assert_eq!(texts(&owner_messages), vec!["for the owner"]);
    let (intruder_messages, _) = sync_all(&intruder_client, 0, 100).await;
    assert_eq!(texts(&intruder_messages), vec!["for the intruder"]);
    let code = server_code(attempt.sync(0, 100).await);
    assert_eq!(code, ErrorCode::NotSignedIn);
    stack.stop().await;
}

async fn flush_all(redis: &OwnRedis) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
}
