//! An engine updated before its logic tier. A logic tier built before SendMany,
//! ConnSignInMany, AckMany and OfflineMany returns UNIMPLEMENTED for them, as any gRPC server
//! does for a method it does not serve. Here a gRPC front on loopback returns that and passes
//! every other call to a real logic tier. The engine must fall back to the single calls, with
//! every sign-in, message, ack and Offline carried out.

mod support;

use std::sync::Arc;
use std::time::Duration;

use im_proto::ConversationType;
use support::front::Play;
use support::*;

/// The methods a logic tier of the older version does not serve.
const NEWER_METHODS: [&str; 4] = ["SendMany", "ConnSignInMany", "AckMany", "OfflineMany"];

/// Reads the highest seq stored for a device by its acks, straight from PostgreSQL.
async fn acked_seq(device_id: u64) -> Option<i64> {
    let (client, connection) =
        tokio_postgres::connect(&env_url("IM_LOGIC_DATABASE_URL"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_opt(
            "SELECT acked_seq FROM device_acks WHERE device_id = $1",
            &[&i64::try_from(device_id).unwrap()],
        )
        .await
        .unwrap();
    row.map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_logic_gets_single_calls() {
    let script = Arc::new(|method: &str| {
        if NEWER_METHODS.contains(&method) {
            Play::Unimplemented
        } else {
            Play::Forward
        }
    });
    let (stack, seen) = Stack::start_behind_front(script, |_| {}).await;

    let (sender, sender_client) = stack.new_user("older-sender").await;
    let (receiver, receiver_client) = stack.new_user("older-receiver").await;
    make_friends(&sender, &receiver).await;
    // The receiver's device signs in again with its token on a new connection: SIGN_IN goes
    // out as ConnSignInMany, which is rejected, and then as ConnSignIn.
    receiver_client.close().await.unwrap();
    let second = stack.sign_in(&receiver.login).await;

    let mut seqs = Vec::new();
    for index in 0..5 {
        let reply = sender_client
            .send(
                ConversationType::User,
                receiver.id(),
                format!("message {index}"),
                "text/plain",
                &format!("older-{index}"),
            )
            .await
            .expect("SEND is stored through the single call");
        assert!(reply.message_id > 0);
    }
    for index in 0..5 {
        let message = next_message(&second, Duration::from_secs(5)).await;
        assert_eq!(message.content, format!("message {index}").as_bytes());
        seqs.push(message.seq);
    }
    let last = *seqs.last().unwrap();
    second.ack(last).await.unwrap();
    let device = receiver.login.device_id;
    let stored = eventually(Duration::from_secs(5), || async {
        acked_seq(device).await == Some(i64::try_from(last).unwrap())
    })
    .await;
    assert!(stored, "the ack is stored through the single call");

    second.close().await.unwrap();
    let removed = eventually(Duration::from_secs(5), || async {
        online_status(receiver.id()).await.is_empty()
    })
    .await;
    assert!(removed, "the Offline calls remove the receiver's statuses");

    // Each newer method was tried once, then the engine kept to the single calls.
    for (many, single) in [
        ("ConnSignInMany", "ConnSignIn"),
        ("SendMany", "Send"),
        ("AckMany", "Ack"),
        ("OfflineMany", "Offline"),
    ] {
        assert_eq!(seen.count(many), 1, "{many} tried once");
        assert!(seen.count(single) >= 1, "{single} used");
    }
    assert_eq!(seen.count("Send"), 5);
    let metrics = stack.engine().metrics().render();
    assert!(
        metrics.contains("im_engine_logic_single_calls_total{method=\"SendMany\"} 5"),
        "the single SENDs are counted under SendMany"
    );
    sender_client.close().await.unwrap();
    stack.stop().await;
}
