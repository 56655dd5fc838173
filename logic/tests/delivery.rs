//! Pushes of stored messages to engine nodes: two recording `ConnectIntService` servers on
//! loopback stand in for two engine nodes.

mod common;

use std::time::{Duration, Instant};

use common::{
    conn, create_group, login, make_friends, new_user_device, send, send_text, text_to,
    EngineRecorder, TestLogic, NODE,
};
use im_proto::v1::{ConversationType, DeliverRequest, DeliveryTarget, ServerSendRequest};

/// Returns the targets of a Deliver call that carries one message, sorted by device id.
fn single_delivery_targets(request: &DeliverRequest, message_id: u64) -> Vec<DeliveryTarget> {
    assert_eq!(request.deliveries.len(), 1, "one message per call");
    let delivery = &request.deliveries[0];
    let message = delivery.message.as_ref().expect("message present");
    assert_eq!(message.message_id, message_id);
    let mut targets = delivery.targets.clone();
    targets.sort_unstable_by_key(|target| target.device_id);
    targets
}

fn target(device_id: u64, conn_id: u64, seq: u64) -> DeliveryTarget {
    DeliveryTarget {
        device_id,
        conn_id,
        seq,
    }
}

fn sorted(mut targets: Vec<DeliveryTarget>) -> Vec<DeliveryTarget> {
    targets.sort_unstable_by_key(|target| target.device_id);
    targets
}

#[tokio::test]
async fn group_send_calls_each_node_once() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let mut node_a = EngineRecorder::start().await;
    let mut node_b = EngineRecorder::start().await;
    let (sender_name, sender) = new_user_device(
        &mut logic.client,
        "g_sender",
        false,
        conn(&node_a.node(), 1),
    )
    .await;
    let sender_second = login(&mut logic.client, &sender_name, 0, conn(&node_b.node(), 2))
        .await
        .expect("sender's second device");
    let (member_name, member) = new_user_device(
        &mut logic.client,
        "g_member",
        false,
        conn(&node_a.node(), 3),
    )
    .await;
    let member_second = login(&mut logic.client, &member_name, 0, conn(&node_b.node(), 4))
        .await
        .expect("member's second device");
    let (_, third) =
        new_user_device(&mut logic.client, "g_third", false, conn(&node_a.node(), 5)).await;
    let (_, offline) = new_user_device(&mut logic.client, "g_offline", false, conn(NODE, 6)).await;
    common::offline(
        &mut logic.client,
        offline.user_id,
        offline.device_id,
        conn(NODE, 6),
    )
    .await;
    let group = create_group(&mut ext, &sender, &[&member, &third, &offline]).await;

    let reply = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::Group, group.group_id, "to every node"),
    )
    .await
    .expect("group send");

    let on_a = node_a.next_delivery().await;
    let on_b = node_b.next_delivery().await;
    // Sender and members each have no earlier message, so every copy has seq 1.
    assert_eq!(
        single_delivery_targets(&on_a, reply.message_id),
        sorted(vec![
            target(member.device_id, 3, 1),
            target(third.device_id, 5, 1)
        ]),
        "the sending device is left out"
    );
    assert_eq!(
        single_delivery_targets(&on_b, reply.message_id),
        sorted(vec![
            target(sender_second.device_id, 2, 1),
            target(member_second.device_id, 4, 1)
        ])
    );
    let message = on_a.deliveries[0].message.as_ref().expect("message");
    assert_eq!(&message.content[..], b"to every node");
    assert_eq!(message.sender_device_id, sender.device_id);
    assert_eq!(message.sent_at_ms, reply.sent_at_ms);
    node_a.assert_no_more_deliveries().await;
    node_b.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn direct_send_reaches_receiver_and_other_sender_devices() {
    let mut logic = TestLogic::start_default().await;
    let mut node = EngineRecorder::start().await;
    let (sender_name, sender) =
        new_user_device(&mut logic.client, "d_sender", false, conn(&node.node(), 1)).await;
    let sender_second = login(&mut logic.client, &sender_name, 0, conn(&node.node(), 2))
        .await
        .expect("second device");
    let (_, receiver) =
        new_user_device(&mut logic.client, "d_open", true, conn(&node.node(), 3)).await;
    send_text(
        &mut logic.client,
        &receiver,
        receiver.user_id,
        "a note first",
    )
    .await
    .expect("note to self");
    // The only device of that user sent the note, so no node is called for it.
    node.assert_no_more_deliveries().await;

    let reply = send_text(&mut logic.client, &sender, receiver.user_id, "hi")
        .await
        .expect("send");

    let request = node.next_delivery().await;
    assert_eq!(
        single_delivery_targets(&request, reply.message_id),
        sorted(vec![
            target(sender_second.device_id, 2, reply.seq),
            target(receiver.device_id, 3, 2)
        ])
    );
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn server_send_reaches_every_sender_device() {
    let secret = "a test server secret";
    let config = im_logic::Config {
        server_secret: secret.to_owned(),
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let (_, bot) = new_user_device(&mut logic.client, "s_bot", false, conn(&node.node(), 1)).await;
    let (_, receiver) =
        new_user_device(&mut logic.client, "s_open", true, conn(&node.node(), 2)).await;
    let mut request = tonic::Request::new(ServerSendRequest {
        sender_user_id: bot.user_id,
        send: Some(text_to(ConversationType::User, receiver.user_id, "notice")),
    });
    request
        .metadata_mut()
        .insert("im-server-secret", secret.parse().expect("ascii"));

    let reply = ext
        .server_send(request)
        .await
        .expect("server send")
        .into_inner();

    let delivered = node.next_delivery().await;
    assert_eq!(
        single_delivery_targets(&delivered, reply.message_id),
        sorted(vec![
            target(bot.device_id, 1, 1),
            target(receiver.device_id, 2, 1)
        ])
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn unreachable_node_does_not_fail_or_delay_send() {
    let config = im_logic::Config {
        engine_call_timeout_ms: 3000,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    // The kernel completes TCP handshakes on this listener, but nothing ever replies, so the
    // push hangs until its 3 s deadline.
    let silent = common::bind_node().await;
    let node = silent.local_addr().expect("local addr").to_string();
    let (_, sender) = new_user_device(&mut logic.client, "u_sender", false, conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "u_open", true, conn(&node, 2)).await;

    let started = Instant::now();
    let reply = send_text(
        &mut logic.client,
        &sender,
        receiver.user_id,
        "stored anyway",
    )
    .await
    .expect("send succeeds");

    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.seq, 1);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn send_burst_pushed_in_seq_order() {
    let logic = TestLogic::start_default().await;
    let mut client = logic.client.clone();
    let mut node = EngineRecorder::start().await;
    let (_, receiver) = new_user_device(&mut client, "o_open", true, conn(&node.node(), 1)).await;
    let mut senders = Vec::new();
    for index in 0..10u64 {
        let (_, sender) =
            new_user_device(&mut client, "o_sender", false, conn(NODE, 2 + index)).await;
        senders.push(sender);
    }
    let sends = (0..200).map(|index| {
        let mut client = logic.client.clone();
        let sender = senders[index % senders.len()].clone();
        async move { send_text(&mut client, &sender, receiver.user_id, "burst").await }
    });
    for result in futures::future::join_all(sends).await {
        result.expect("send");
    }

    let mut seqs = Vec::new();
    let mut calls = 0;
    while seqs.len() < 200 {
        let request = node.next_delivery().await;
        calls += 1;
        for delivery in &request.deliveries {
            assert_eq!(
                delivery.targets.len(),
                1,
                "only the receiver is on this node"
            );
            seqs.push(delivery.targets[0].seq);
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "pushed in seq order");
    assert!(calls < 200, "{calls} Deliver calls for 200 messages");
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn node_without_notices_still_gets_messages() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start_without_notices().await;
    let (_, alice) =
        new_user_device(&mut logic.client, "old_a", false, conn(&node.node(), 1)).await;
    let (_, bob) = new_user_device(&mut logic.client, "old_b", false, conn(&node.node(), 2)).await;

    // Both notices of the friendship are sent to the node, in calls of their own, and rejected.
    make_friends(&mut ext, &alice, &bob).await;
    node.next_notice().await;
    node.next_notice().await;
    let reply = send_text(&mut logic.client, &alice, bob.user_id, "after the notices")
        .await
        .expect("send");

    let request = node.next_delivery().await;
    assert_eq!(
        single_delivery_targets(&request, reply.message_id),
        vec![target(bob.device_id, 2, 1)]
    );
    assert!(request.deliveries[0].notice.is_none());
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}
