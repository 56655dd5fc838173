//! NOTICE pushes end to end: friend and group changes made through the business API reach the
//! signed-in devices of the users involved, and the engine writes a notice delivery of its
//! Deliver call as a NOTICE packet. Engine, logic tier, PostgreSQL and Redis are real; devices
//! speak WebSocket over loopback.

mod support;

use std::time::Duration;

use im_client::inbox::Inbox;
use im_client::{Client, Push};
use im_proto::connect_int_service_client::ConnectIntServiceClient;
use im_proto::{
    ConversationType, DeliverRequest, Delivery, DeliveryTarget, Notice, NoticeKind, PacketType,
};
use support::*;

/// Generous for a loaded machine; a push normally takes milliseconds.
const PUSH_WAIT: Duration = Duration::from_secs(10);

/// Waits for the next push and returns it decoded as a NOTICE; panics on any other push.
async fn next_notice(client: &Client) -> Notice {
    let packet = tokio::time::timeout(PUSH_WAIT, client.next_push())
        .await
        .expect("a NOTICE push in time")
        .expect("connection open");
    assert_eq!(packet.request_id, 0, "a push has request id 0");
    assert_eq!(packet.code, 0, "a push has code OK");
    match Push::decode(packet) {
        Ok(Push::Notice(notice)) => notice,
        other => panic!("expected a NOTICE push, got {other:?}"),
    }
}

fn kind_of(notice: &Notice) -> NoticeKind {
    NoticeKind::try_from(notice.kind).expect("a known notice kind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_changes_push_notices() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("notice-a").await;
    let (bob, bob_client) = stack.new_user("notice-b").await;

    alice.api.request_friend(bob.id()).await.expect("request");
    let requested = next_notice(&bob_client).await;
    assert_eq!(kind_of(&requested), NoticeKind::FriendRequested);
    assert_eq!(requested.actor_user_id, alice.id());
    assert_eq!(requested.user_id, bob.id());
    assert!(requested.at_ms > 0);
    // The acting user's own signed-in device gets the notice as well.
    let own = next_notice(&alice_client).await;
    assert_eq!(kind_of(&own), NoticeKind::FriendRequested);

    bob.api.accept_friend(alice.id()).await.expect("accept");
    let accepted = next_notice(&bob_client).await;
    assert_eq!(kind_of(&accepted), NoticeKind::FriendAccepted);
    assert_eq!(accepted.actor_user_id, bob.id());
    assert_eq!(accepted.user_id, alice.id());
    assert_eq!(
        kind_of(&next_notice(&alice_client).await),
        NoticeKind::FriendAccepted
    );

    let group = alice
        .api
        .create_group("notices", &[])
        .await
        .expect("group created");
    assert_eq!(
        kind_of(&next_notice(&alice_client).await),
        NoticeKind::GroupCreated
    );
    alice
        .api
        .add_group_members(group.group_id, &[bob.id()])
        .await
        .expect("bob added");
    let added = next_notice(&bob_client).await;
    assert_eq!(kind_of(&added), NoticeKind::GroupMembersAdded);
    assert_eq!(added.actor_user_id, alice.id());
    assert_eq!(added.group_id, group.group_id);
    assert_eq!(added.member_ids, vec![bob.id()]);

    // Notices take no seq: the first message bob receives is still seq 1.
    alice_client
        .send(
            ConversationType::User,
            bob.id(),
            "after the notices",
            "text/plain",
            "notice-1",
        )
        .await
        .expect("send");
    let message = next_message(&bob_client, PUSH_WAIT).await;
    assert_eq!(message.seq, 1);
    assert_eq!(message.content, b"after the notices".as_slice());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_keeps_notices_apart_from_messages() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("inbox-notice-a").await;
    let (bob, bob_client) = stack.new_user("inbox-notice-b").await;
    let mut inbox = Inbox::new(bob.id(), bob.login.device_id);

    make_friends(&alice, &bob).await;
    alice_client
        .send(
            ConversationType::User,
            bob.id(),
            "hello",
            "text/plain",
            "inbox-notice-1",
        )
        .await
        .expect("send");
    let messages = recv_until(&mut inbox, &bob_client, 1, PUSH_WAIT)
        .await
        .expect("the inbox delivers the message");

    assert_eq!(seqs(&messages), vec![1]);
    // Both notices were pushed before the message, so the inbox read them on the way.
    let kinds: Vec<NoticeKind> = inbox.take_notices().iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        vec![NoticeKind::FriendRequested, NoticeKind::FriendAccepted]
    );
    assert!(inbox.take_notices().is_empty(), "taken once");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_writes_notice_packet() {
    let stack = Stack::start().await;
    let (bob, bob_client) = stack.new_user("deliver-notice").await;
    let conn_id = conn_id_of(bob.id(), bob.login.device_id).await;
    let mut engine = ConnectIntServiceClient::connect(format!("http://{}", stack.engine().node()))
        .await
        .expect("engine gRPC reachable");
    let notice = Notice {
        kind: NoticeKind::GroupMembersRemoved as i32,
        actor_user_id: 7,
        group_id: 70,
        member_ids: vec![bob.id()],
        at_ms: 1_700_000_000_000,
        ..Notice::default()
    };
    let target = DeliveryTarget {
        device_id: bob.login.device_id,
        conn_id,
        // Ignored for a notice.
        seq: 99,
    };

    let reply = engine
        .deliver(DeliverRequest {
            deliveries: vec![Delivery {
                message: None,
                targets: vec![target],
                notice: Some(notice.clone()),
            }],
        })
        .await
        .expect("a notice delivery is accepted")
        .into_inner();

    assert_eq!(reply.delivered, 1);
    assert_eq!(reply.missed, 0);
    let pushed = tokio::time::timeout(PUSH_WAIT, bob_client.next_push())
        .await
        .expect("a push in time")
        .expect("connection open");
    assert_eq!(pushed.r#type, PacketType::Notice as i32);
    assert_eq!(Push::decode(pushed), Ok(Push::Notice(notice)));
    let metrics = stack.engine().metrics().render();
    assert!(
        metrics.contains("im_engine_notices_out_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("im_engine_messages_out_total 0\n"),
        "{metrics}"
    );
    stack.stop().await;
}
