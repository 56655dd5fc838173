//! Messaging end to end: SEND, MESSAGE pushes, SYNC and MESSAGE_ACK through the engine, the
//! logic tier, PostgreSQL and Redis, and the client's inbox on top.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use im_client::business::LogicApi;
use im_client::inbox::{Arrival, Inbox, SeqTracker};
use im_client::tungstenite::Message as WsMessage;
use im_client::{Client, ConnectOptions, InboxError};
use im_proto::{
    ConversationType, ErrorCode, LoginReply, Message, Packet, PacketType, SendReply, SendRequest,
};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use support::front;
use support::*;
use tokio::sync::{mpsc, oneshot};

/// How long a push may take on a loaded machine.
const PUSH_WAIT: Duration = Duration::from_secs(5);
/// How long to watch for a push that must not come. Pushes arrive within milliseconds on
/// loopback, so a quiet half second shows that none was sent.
const QUIET: Duration = Duration::from_millis(500);

const TEXT: &str = "text/plain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_pushed_to_online_receiver() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("dm-a").await;
    let (bob, bob_client) = stack.new_user("dm-b").await;
    make_friends(&alice, &bob).await;

    let reply = alice_client
        .send(ConversationType::User, bob.id(), "hello bob", TEXT, "m-1")
        .await
        .expect("send");
    let pushed = next_message(&bob_client, PUSH_WAIT).await;

    assert_eq!(reply.seq, 1, "first message in alice's sequence");
    assert!(reply.message_id > 0);
    assert!(reply.sent_at_ms > 0);
    assert_eq!(pushed.seq, 1, "first message in bob's sequence");
    assert_eq!(pushed.message_id, reply.message_id);
    assert_eq!(pushed.sender_user_id, alice.id());
    assert_eq!(pushed.sender_device_id, alice.login.device_id);
    assert_eq!(pushed.conversation_type, ConversationType::User as i32);
    assert_eq!(pushed.receiver_id, bob.id());
    assert_eq!(&pushed.content[..], b"hello bob");
    assert_eq!(pushed.content_type, TEXT);
    assert_eq!(pushed.client_msg_id, "m-1");
    assert_eq!(pushed.sent_at_ms, reply.sent_at_ms);
    let echo = push_within(&alice_client, QUIET).await;
    assert!(echo.is_none(), "the sending device got {echo:?}");
    bob_client.ack(pushed.seq).await.expect("ack");
    bob_client
        .heartbeat()
        .await
        .expect("connection alive after ack");
    stack.stop().await;
}

/// Shards on epoll instead of io_uring (`io_uring = false`, and the fallback on kernels without
/// io_uring) sign in, push short and long messages and close as the default shards do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoll_shards_carry_messages() {
    let stack = Stack::start_with(logic_config(), |engine| engine.io_uring = false).await;
    let (alice, alice_client) = stack.new_user("epoll-a").await;
    let (bob, bob_client) = stack.new_user("epoll-b").await;
    make_friends(&alice, &bob).await;

    // A short message, then one of 12,000 bytes.
    let long = "x".repeat(12_000);
    for (index, text) in ["hello", long.as_str()].into_iter().enumerate() {
        alice_client
            .send(
                ConversationType::User,
                bob.id(),
                text.to_owned(),
                TEXT,
                &format!("e-{index}"),
            )
            .await
            .expect("send");
        let pushed = next_message(&bob_client, PUSH_WAIT).await;
        assert_eq!(&pushed.content[..], text.as_bytes());
    }
    bob_client.heartbeat().await.expect("heartbeat answered");
    alice_client.close().await.unwrap();
    bob_client.close().await.unwrap();
    let offline = eventually(PUSH_WAIT, || async {
        online_status(alice.id()).await.is_empty() && online_status(bob.id()).await.is_empty()
    })
    .await;
    assert!(offline, "closing removes both statuses");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_receiver_syncs_missed_messages() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("off-a").await;
    let (bob, bob_client) = stack.new_user("off-b").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.expect("bob goes offline");

    for index in 0..3 {
        alice_client
            .send(
                ConversationType::User,
                bob.id(),
                format!("m{index}"),
                TEXT,
                &format!("off-{index}"),
            )
            .await
            .expect("send while bob is offline");
    }
    let bob_client = stack.sign_in(&bob.login).await;
    let page = bob_client.sync(0, 0).await.expect("sync");
    let mut inbox = Inbox::new(bob.id(), bob.login.device_id);
    let synced = inbox.resync(&bob_client).await.expect("inbox resync");

    assert_eq!(seqs(&page.messages), vec![1, 2, 3]);
    assert!(!page.has_more);
    assert_eq!(texts(&page.messages), vec!["m0", "m1", "m2"]);
    assert!(page
        .messages
        .iter()
        .all(|message| message.sender_user_id == alice.id()));
    assert_eq!(synced, page.messages);
    assert_eq!(inbox.last_seq(), 3);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_second_device_gets_copy() {
    let stack = Stack::start().await;
    let (alice, first) = stack.new_user("dev-a").await;
    let (second_login, second) = stack.another_device(&alice).await;
    let (bob, bob_client) = stack.new_user("dev-b").await;
    make_friends(&alice, &bob).await;
    assert_ne!(second_login.device_id, alice.login.device_id);

    let reply = first
        .send(
            ConversationType::User,
            bob.id(),
            "from device 1",
            TEXT,
            "d-1",
        )
        .await
        .expect("send");
    let copy = next_message(&second, PUSH_WAIT).await;
    let received = next_message(&bob_client, PUSH_WAIT).await;

    assert_eq!(
        copy.seq, reply.seq,
        "the copy has the seq of alice's sequence"
    );
    assert_eq!(copy.message_id, reply.message_id);
    assert_eq!(copy.sender_user_id, alice.id());
    assert_eq!(copy.sender_device_id, alice.login.device_id);
    assert_eq!(copy.receiver_id, bob.id());
    assert_eq!(received.message_id, reply.message_id);
    let echo = push_within(&first, QUIET).await;
    assert!(echo.is_none(), "the sending device got {echo:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_message_reaches_online_and_offline_members() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("grp-a").await;
    let (bob, bob_client) = stack.new_user("grp-b").await;
    let (carol, carol_client) = stack.new_user("grp-c").await;
    make_friends(&alice, &bob).await;
    make_friends(&alice, &carol).await;
    let group = alice
        .api
        .create_group("team", &[bob.id(), carol.id()])
        .await
        .expect("create group");
    carol_client.close().await.expect("carol goes offline");

    let reply = alice_client
        .send(
            ConversationType::Group,
            group.group_id,
            "hi team",
            TEXT,
            "g-1",
        )
        .await
        .expect("send to group");
    let pushed = next_message(&bob_client, PUSH_WAIT).await;
    let carol_client = stack.sign_in(&carol.login).await;
    let page = carol_client.sync(0, 0).await.expect("carol syncs");

    assert_eq!(group.owner_id, alice.id());
    assert_eq!(reply.seq, 1);
    assert_eq!(pushed.seq, 1);
    assert_eq!(pushed.message_id, reply.message_id);
    assert_eq!(pushed.conversation_type, ConversationType::Group as i32);
    assert_eq!(pushed.receiver_id, group.group_id);
    assert_eq!(pushed.sender_user_id, alice.id());
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].message_id, reply.message_id);
    assert_eq!(page.messages[0].seq, 1);
    assert_eq!(page.messages[0].receiver_id, group.group_id);
    let echo = push_within(&alice_client, QUIET).await;
    assert!(echo.is_none(), "the sending device got {echo:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_of_1000_missed_messages_during_live_sends() {
    const MISSED: u64 = 1000;
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("many-a").await;
    let (bob, bob_client) = stack.new_user("many-b").await;
    let (carol, carol_client) = stack.new_user("many-c").await;
    make_friends(&alice, &bob).await;
    make_friends(&carol, &bob).await;
    bob_client.close().await.expect("bob goes offline");
    for index in 0..MISSED {
        alice_client
            .send(
                ConversationType::User,
                bob.id(),
                format!("a{index}"),
                TEXT,
                &format!("a-{index}"),
            )
            .await
            .expect("send while bob is offline");
    }

    // Carol sends 5 messages a second to bob from before his sign-in until after his SYNC.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let bob_id = bob.id();
    let live = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let mut sent = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return sent,
            }
            carol_client
                .send(
                    ConversationType::User,
                    bob_id,
                    format!("c{sent}"),
                    TEXT,
                    &format!("c-{sent}"),
                )
                .await
                .expect("live send");
            sent += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bob_client = stack.sign_in(&bob.login).await;
    let mut inbox = Inbox::new(bob.id(), bob.login.device_id).with_page_limit(100);
    let mut delivered = inbox.resync(&bob_client).await.expect("resync");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send_replace(true);
    let live_sent = live.await.expect("live sender");
    let total = MISSED + live_sent;
    let rest = recv_until(&mut inbox, &bob_client, total, PUSH_WAIT)
        .await
        .expect("live messages");
    delivered.extend(rest);
    let (stored, pages) = sync_all(&bob_client, 0, 100).await;

    assert!(live_sent >= 5, "carol sent {live_sent}");
    assert_eq!(seqs(&delivered), (1..=total).collect::<Vec<_>>());
    let ids: HashSet<u64> = delivered.iter().map(|message| message.message_id).collect();
    assert_eq!(ids.len() as u64, total, "a message id was delivered twice");
    let from_alice: Vec<String> = texts(&delivered)
        .into_iter()
        .filter(|text| text.starts_with('a'))
        .collect();
    let expected_alice: Vec<String> = (0..MISSED).map(|index| format!("a{index}")).collect();
    assert_eq!(from_alice, expected_alice);
    let from_carol: Vec<String> = texts(&delivered)
        .into_iter()
        .filter(|text| text.starts_with('c'))
        .collect();
    let expected_carol: Vec<String> = (0..live_sent).map(|index| format!("c{index}")).collect();
    assert_eq!(from_carol, expected_carol);
    assert_eq!(
        stored, delivered,
        "the database holds what the inbox delivered"
    );
    assert_eq!(pages as u64, total.div_ceil(100));
    assert_eq!(last_stored_seq(bob.id()).await, Some(total));
    assert_eq!(inbox.last_seq(), total, "the device's cursor");
    // The inbox acks each batch, and the logic tier stores acks in batches of their own.
    let acked = eventually(PUSH_WAIT, || async {
        acked_seq(bob.login.device_id).await == Some(total)
    })
    .await;
    assert!(
        acked,
        "the device's stored ack is {:?}, not seq {total}",
        acked_seq(bob.login.device_id).await
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_retried_after_lost_reply_is_stored_once() {
    let stack = Stack::start().await;
    let (alice, first) = stack.new_user("retry-a").await;
    let (bob, bob_client) = stack.new_user("retry-b").await;
    make_friends(&alice, &bob).await;

    // Write the SEND and drop the connection at once, so its reply cannot arrive.
    let request = SendRequest {
        conversation_type: ConversationType::User as i32,
        receiver_id: bob.id(),
        content: "once".into(),
        content_type: TEXT.into(),
        client_msg_id: "retry-1".into(),
    };
    let packet = Packet {
        r#type: PacketType::Send as i32,
        request_id: 1,
        data: request.encode_to_vec().into(),
        ..Packet::default()
    };
    first
        .send_raw(WsMessage::Binary(packet.encode_to_vec().into()))
        .await
        .expect("write SEND");
    drop(first);
    // The engine may store the message before it notices the close, or drop the request.
    let first_push = push_within(&bob_client, Duration::from_secs(2)).await;

    let second = stack.sign_in(&alice.login).await;
    let retried = second
        .send(ConversationType::User, bob.id(), "once", TEXT, "retry-1")
        .await
        .expect("retry");
    let again = second
        .send(ConversationType::User, bob.id(), "once", TEXT, "retry-1")
        .await
        .expect("second retry");
    let later_push = push_within(&bob_client, QUIET).await;
    let bob_copies = bob_client.sync(0, 0).await.expect("bob syncs");
    let alice_copies = second.sync(0, 0).await.expect("alice syncs");

    assert_eq!(again, retried, "a repeated send returns the first reply");
    assert_eq!(bob_copies.messages.len(), 1, "stored once for bob");
    assert_eq!(alice_copies.messages.len(), 1, "stored once for alice");
    assert_eq!(bob_copies.messages[0].message_id, retried.message_id);
    assert_eq!(alice_copies.messages[0].seq, retried.seq);
    match first_push {
        Some(packet) => {
            // The first attempt was stored: the retries return it and push nothing new.
            assert_eq!(message_of(packet).message_id, retried.message_id);
            assert!(later_push.is_none(), "a retry pushed again: {later_push:?}");
        }
        None => {
            // The first attempt was dropped: the retry stored and pushed the message.
            let later = later_push.expect("the retry pushes the message");
            assert_eq!(message_of(later).message_id, retried.message_id);
            eprintln!("the engine dropped the SEND of the closed connection");
        }
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_sends_store_nothing() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("rej-a").await;
    let (bob, bob_client) = stack.new_user("rej-b").await;
    let (carol, carol_client) = stack.new_user("rej-c").await;
    make_friends(&alice, &bob).await;
    make_friends(&bob, &carol).await;
    let foreign_group = bob
        .api
        .create_group("without alice", &[carol.id()])
        .await
        .expect("create group");
    let oversized = vec![b'x'; 16 * 1024 + 1];
    let cases = [
        (
            ConversationType::Group,
            foreign_group.group_id,
            b"hi".to_vec(),
            ErrorCode::NotGroupMember,
        ),
        (
            ConversationType::User,
            carol.id(),
            b"hi".to_vec(),
            ErrorCode::NotFriend,
        ),
        (
            ConversationType::User,
            bob.id(),
            Vec::new(),
            ErrorCode::ContentEmpty,
        ),
        (
            ConversationType::User,
            bob.id(),
            oversized,
            ErrorCode::ContentTooLarge,
        ),
        (
            ConversationType::User,
            1 << 62,
            b"hi".to_vec(),
            ErrorCode::ReceiverNotFound,
        ),
        (
            ConversationType::Group,
            1 << 62,
            b"hi".to_vec(),
            ErrorCode::ReceiverNotFound,
        ),
    ];

    for (index, (conversation, receiver_id, content, expected)) in cases.into_iter().enumerate() {
        let result = alice_client
            .send(
                conversation,
                receiver_id,
                content,
                TEXT,
                &format!("rej-{index}"),
            )
            .await;
        assert_eq!(server_code(result), expected, "case {index}");
    }

    alice_client
        .heartbeat()
        .await
        .expect("connection survives rejections");
    for (name, client) in [
        ("alice", &alice_client),
        ("bob", &bob_client),
        ("carol", &carol_client),
    ] {
        let page = client.sync(0, 0).await.expect("sync");
        assert!(page.messages.is_empty(), "{name} has {:?}", page.messages);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_push_racing_sync_delivers_each_once() {
    let stack = Stack::start().await;
    let (alice, alice_client) = stack.new_user("race-a").await;
    let (bob, bob_client) = stack.new_user("race-b").await;
    make_friends(&alice, &bob).await;
    alice_client.close().await.expect("alice goes offline");
    for index in 0..20 {
        bob_client
            .send(
                ConversationType::User,
                alice.id(),
                format!("b{index}"),
                TEXT,
                &format!("race-{index}"),
            )
            .await
            .expect("send while alice is offline");
    }

    let alice_client = stack.sign_in(&alice.login).await;
    let mut inbox = Inbox::new(alice.id(), alice.login.device_id).with_page_limit(5);
    let live_sends = async {
        for index in 20..23 {
            bob_client
                .send(
                    ConversationType::User,
                    alice.id(),
                    format!("b{index}"),
                    TEXT,
                    &format!("race-{index}"),
                )
                .await
                .expect("live send");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (synced, ()) = tokio::join!(inbox.resync(&alice_client), live_sends);
    let mut delivered = synced.expect("resync");
    let rest = recv_until(&mut inbox, &alice_client, 23, PUSH_WAIT)
        .await
        .expect("live pushes");
    delivered.extend(rest);
    // Late pushes of seqs the SYNC already returned must be dropped, not delivered again.
    let extra = tokio::time::timeout(QUIET, inbox.recv(&alice_client)).await;

    assert_eq!(seqs(&delivered), (1..=23).collect::<Vec<_>>());
    let expected: Vec<String> = (0..23).map(|index| format!("b{index}")).collect();
    assert_eq!(texts(&delivered), expected);
    assert_eq!(inbox.held(), 0);
    assert!(extra.is_err(), "delivered after seq 23: {extra:?}");
    stack.stop().await;
}

/// Members of the group in `group_fanout_calls_each_node_per_message`: online on each of two
/// nodes, offline with a device, and without any device. The sender is a member as well.
const FANOUT_ONLINE_PER_NODE: usize = 20;
const FANOUT_OFFLINE_DEVICES: usize = 10;
const FANOUT_WITHOUT_DEVICE: usize = 100;
/// Messages the sender posts to the group, at 50 a second.
const FANOUT_MESSAGES: u64 = 20;

/// A logic tier with two engine nodes, and the business API of the logic tier.
struct TwoNodes {
    logic: im_logic::LogicServer,
    nodes: [im_engine::Engine; 2],
    urls: [String; 2],
    api: LogicApi,
}

impl TwoNodes {
    async fn start() -> Self {
        init_tracing();
        let logic = im_logic::start(logic_config())
            .await
            .expect("logic tier starts");
        let nodes = [
            im_engine::Engine::start(engine_config(logic.local_addr())).expect("engine starts"),
            im_engine::Engine::start(engine_config(logic.local_addr())).expect("engine starts"),
        ];
        let urls = nodes
            .each_ref()
            .map(|node| format!("ws://{}/ws", node.ws_addr()));
        let api = LogicApi::connect(
            &format!("http://{}", logic.local_addr()),
            Duration::from_secs(5),
        )
        .await
        .expect("business API reachable");
        Self {
            logic,
            nodes,
            urls,
            api,
        }
    }
}

/// A group spread over two engine nodes. The logic tier must send each node one Deliver call
/// per message that carries all of that node's recipients (or fewer calls, each carrying
/// several messages), not one call per member. Every online member gets every message once
/// and in order, and offline members get them by SYNC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fanout_calls_each_node_per_message() {
    let TwoNodes {
        logic,
        nodes,
        urls,
        api,
    } = TwoNodes::start().await;

    let sender = connect_to(&urls[0]).await;
    let (_, sender_login) = register_and_login(&sender, "fan-sender").await;
    let mut online = Vec::new();
    for index in 0..2 * FANOUT_ONLINE_PER_NODE {
        let client = connect_to(&urls[index % 2]).await;
        let login = login_open_user(&api, &client, "fan-on").await;
        online.push((login, client));
    }
    let mut offline = Vec::new();
    for _ in 0..FANOUT_OFFLINE_DEVICES {
        let client = connect_to(&urls[1]).await;
        offline.push(login_open_user(&api, &client, "fan-off").await);
        client.close().await.expect("the member goes offline");
    }
    let mut member_ids: Vec<u64> = online.iter().map(|(login, _)| login.user_id).collect();
    member_ids.extend(offline.iter().map(|login| login.user_id));
    let mut without_device = Vec::new();
    for _ in 0..FANOUT_WITHOUT_DEVICE {
        let username = unique_username("fan-none");
        let user_id = api
            .register(&username, PASSWORD, true)
            .await
            .expect("register an open user");
        member_ids.push(user_id);
        without_device.push(username);
    }
    let calls_before = nodes.each_ref().map(deliver_calls);
    let group = api
        .as_user(
            sender_login.user_id,
            sender_login.device_id,
            &sender_login.token,
        )
        .expect("token is a valid header value")
        .create_group("fan-out", &member_ids)
        .await
        .expect("create group");
    for (login, client) in &online {
        let push = tokio::time::timeout(PUSH_WAIT, client.next_push()).await;
        let notice = push.ok().flatten();
        assert!(
            notice.as_ref().is_some_and(is_notice),
            "user {} got {notice:?} instead of the group notice",
            login.user_id
        );
    }

    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for index in 0..FANOUT_MESSAGES {
        ticker.tick().await;
        sender
            .send(
                ConversationType::Group,
                group.group_id,
                format!("g{index}"),
                TEXT,
                &format!("fan-{index}"),
            )
            .await
            .expect("send to the group");
    }
    let expected: Vec<String> = (0..FANOUT_MESSAGES)
        .map(|index| format!("g{index}"))
        .collect();
    for (login, client) in &online {
        let mut received = Vec::new();
        for _ in 0..FANOUT_MESSAGES {
            received.push(next_message(client, PUSH_WAIT).await);
        }
        assert_eq!(
            seqs(&received),
            (1..=FANOUT_MESSAGES).collect::<Vec<_>>(),
            "user {}",
            login.user_id
        );
        assert_eq!(texts(&received), expected, "user {}", login.user_id);
    }
    tokio::time::sleep(QUIET).await;
    for (login, client) in &online {
        while let Some(packet) = client.try_next_push() {
            assert!(
                is_notice(&packet),
                "user {} got a push after the last message: {packet:?}",
                login.user_id
            );
        }
    }
    let calls = [0, 1].map(|index| deliver_calls(&nodes[index]) - calls_before[index]);

    // One call more for the group's notice.
    for (index, calls) in calls.iter().enumerate() {
        assert!(*calls >= 2, "node {index} got {calls} Deliver calls");
        assert!(
            *calls <= FANOUT_MESSAGES + 1,
            "node {index} got {calls} Deliver calls for the notice and {FANOUT_MESSAGES} \
             messages to {FANOUT_ONLINE_PER_NODE} online members"
        );
    }
    for login in &offline {
        let client = connect_to(&urls[0]).await;
        client
            .sign_in(login.user_id, login.device_id, &login.token)
            .await
            .expect("sign-in after the messages");
        let (messages, _) = sync_all(&client, 0, 100).await;
        assert_eq!(texts(&messages), expected, "user {}", login.user_id);
        client.close().await.expect("close");
    }
    // A member without a device gets the messages on the first device it logs in.
    let client = connect_to(&urls[1]).await;
    client
        .login(&without_device[0], PASSWORD, 0, test_device())
        .await
        .expect("login of a first device");
    let (messages, _) = sync_all(&client, 0, 100).await;
    assert_eq!(texts(&messages), expected);

    drop(online);
    for node in nodes {
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .unwrap();
    }
    logic.shutdown().await;
}

/// Group members in `direct_messages_flow_under_group_traffic`: online on each of two nodes,
/// and without any device.
const BUSY_GROUP_ONLINE_PER_NODE: usize = 50;
const BUSY_GROUP_WITHOUT_DEVICE: usize = 399;
/// Interval between two group messages: 50 a second.
const BUSY_GROUP_EVERY: Duration = Duration::from_millis(20);
/// Direct messages sent while the group is busy, and the interval between them: 25 a second.
const DIRECT_SAMPLES: usize = 100;
const DIRECT_EVERY: Duration = Duration::from_millis(40);

/// A busy group spread over two nodes does not hold up direct messages between two other users
/// on those nodes: each is pushed within the push wait, while every online member gets every
/// group message in order. The latency itself is the bench's to measure (`im-bench group`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_flow_under_group_traffic() {
    let TwoNodes {
        logic,
        nodes,
        urls,
        api,
    } = TwoNodes::start().await;

    let group_sender = connect_to(&urls[0]).await;
    let group_sender_login = login_open_user(&api, &group_sender, "busy-sender").await;
    let mut members = Vec::new();
    for index in 0..2 * BUSY_GROUP_ONLINE_PER_NODE {
        let client = connect_to(&urls[index % 2]).await;
        let login = login_open_user(&api, &client, "busy-on").await;
        members.push((login, client));
    }
    let mut member_ids: Vec<u64> = members.iter().map(|(login, _)| login.user_id).collect();
    for _ in 0..BUSY_GROUP_WITHOUT_DEVICE {
        let user_id = api
            .register(&unique_username("busy-none"), PASSWORD, true)
            .await
            .expect("register an open user");
        member_ids.push(user_id);
    }
    let group = api
        .as_user(
            group_sender_login.user_id,
            group_sender_login.device_id,
            &group_sender_login.token,
        )
        .expect("token is a valid header value")
        .create_group("busy", &member_ids)
        .await
        .expect("create group");
    // The direct pair: sender on one node, receiver on the other.
    let direct_sender = connect_to(&urls[0]).await;
    login_open_user(&api, &direct_sender, "direct-a").await;
    let direct_receiver = connect_to(&urls[1]).await;
    let receiver_login = login_open_user(&api, &direct_receiver, "direct-b").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let group_traffic = {
        let stop = Arc::clone(&stop);
        let group_id = group.group_id;
        async move {
            let mut ticker = tokio::time::interval(BUSY_GROUP_EVERY);
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ticker.tick().await;
                group_sender
                    .send(
                        ConversationType::Group,
                        group_id,
                        format!("busy {sent}"),
                        TEXT,
                        &format!("busy-{sent}"),
                    )
                    .await
                    .expect("send to the busy group");
                sent += 1;
            }
            sent
        }
    };
    let measured = async {
        // Let the group traffic reach its rate first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        send_direct_messages(&direct_sender, &direct_receiver, receiver_login.user_id).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (group_sent, ()) = tokio::join!(group_traffic, measured);
    assert!(group_sent > 0, "no group message went out");

    // Every online member got every group message, in order.
    for (login, client) in &members {
        let mut received = Vec::new();
        while let Some(packet) = client.try_next_push() {
            if !is_notice(&packet) {
                received.push(message_of(packet));
            }
        }
        while (received.len() as u64) < group_sent {
            received.push(next_message(client, PUSH_WAIT).await);
        }
        assert_eq!(
            seqs(&received),
            (1..=group_sent).collect::<Vec<_>>(),
            "user {}",
            login.user_id
        );
    }

    drop(members);
    for node in nodes {
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .unwrap();
    }
    logic.shutdown().await;
}

/// Sends [`DIRECT_SAMPLES`] direct messages from `sender` to `receiver`, one every
/// [`DIRECT_EVERY`], each pushed within [`PUSH_WAIT`].
async fn send_direct_messages(sender: &Client, receiver: &Client, receiver_id: u64) {
    let mut ticker = tokio::time::interval(DIRECT_EVERY);
    for index in 0..DIRECT_SAMPLES {
        ticker.tick().await;
        let reply = sender
            .send(
                ConversationType::User,
                receiver_id,
                format!("direct {index}"),
                TEXT,
                &format!("direct-{index}"),
            )
            .await
            .expect("direct send");
        let pushed = next_message(receiver, PUSH_WAIT).await;
        assert_eq!(pushed.message_id, reply.message_id);
    }
}

async fn connect_to(url: &str) -> Client {
    Client::connect(url, &ConnectOptions::default())
        .await
        .expect("websocket connects")
}

/// Registers a user open to messages from anyone and logs its first device in on `client`.
async fn login_open_user(api: &LogicApi, client: &Client, prefix: &str) -> LoginReply {
    let username = unique_username(prefix);
    api.register(&username, PASSWORD, true)
        .await
        .expect("register an open user");
    client
        .login(&username, PASSWORD, 0, test_device())
        .await
        .expect("login")
}

/// Returns how many Deliver calls `node` has served, from its metrics.
fn deliver_calls(node: &im_engine::Engine) -> u64 {
    node.metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("im_engine_deliver_seconds_count "))
        .and_then(|value| value.parse().ok())
        .expect("im_engine_deliver_seconds_count in the engine metrics")
}

/// Receivers in `large_messages_in_one_batch_all_pushed`, messages each receives, and their
/// content size: 512 messages of 32 KiB, 16 MiB in all, and 256 KiB for each connection, below
/// the engine's default `max_outbound_bytes` (1 MiB).
const LARGE_RECEIVERS: usize = 64;
const LARGE_EACH: u64 = 8;
const LARGE_CONTENT_BYTES: usize = 32 * 1024;

/// Many large messages stored in one send batch reach one node together. However many the
/// logic tier has queued for a node, each Deliver call must stay below the 4 MiB that the
/// engine's gRPC server decodes, or the whole call fails and every device in it misses its
/// pushes. A device that gets no later message would then never see the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_in_one_batch_all_pushed() {
    const SECRET: &str = "e2e-server-secret-0123456789";
    let config = im_logic::Config {
        server_secret: SECRET.to_owned(),
        max_content_bytes: LARGE_CONTENT_BYTES as u32,
        ..logic_config()
    };
    let stack = Stack::start_with(config, |_| {}).await;
    let api = stack.logic_api().await;
    // A sender without a device online, so that only the receivers get pushes.
    let sender_id = api
        .register(&unique_username("large-s"), PASSWORD, true)
        .await
        .expect("register the sender");
    let mut receivers = Vec::new();
    for _ in 0..LARGE_RECEIVERS {
        let client = stack.connect().await;
        let login = login_open_user(&api, &client, "large-r").await;
        receivers.push((login, client));
    }

    // Every send at once, so that the logic tier stores them in few large batches.
    let content = prost::bytes::Bytes::from(vec![b'x'; LARGE_CONTENT_BYTES]);
    let mut sends = Vec::new();
    for index in 0..LARGE_EACH {
        for (login, _) in &receivers {
            let send = SendRequest {
                conversation_type: ConversationType::User as i32,
                receiver_id: login.user_id,
                content: content.clone(),
                content_type: TEXT.into(),
                client_msg_id: format!("large-{}-{index}", login.user_id),
            };
            let api = api.clone();
            sends.push(async move { api.server_send(SECRET, sender_id, send).await });
        }
    }
    for (index, result) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|error| panic!("send {index} failed: {error}"));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let received = futures::future::join_all(receivers.iter().map(|(_, client)| async move {
        let mut pushed = Vec::new();
        while (pushed.len() as u64) < LARGE_EACH {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match push_within(client, wait).await {
                Some(packet) => pushed.push(message_of(packet)),
                None => break,
            }
        }
        pushed
    }))
    .await;

    for ((login, _), pushed) in receivers.iter().zip(&received) {
        assert_eq!(
            seqs(pushed),
            (1..=LARGE_EACH).collect::<Vec<_>>(),
            "pushes to user {}",
            login.user_id
        );
        assert!(
            pushed
                .iter()
                .all(|message| message.content.len() == LARGE_CONTENT_BYTES),
            "user {} got cut content",
            login.user_id
        );
    }
    stack.stop().await;
}

/// How long the logic tier's front holds back each SYNC reply in
/// `pushes_during_held_sync_wait_behind_hole`.
const SYNC_HOLD: Duration = Duration::from_secs(2);

/// A SYNC whose reply comes late, as from a slow logic tier: the messages sent meanwhile reach
/// the device before the page with the older ones. The client's cursor must stay below the hole
/// until the page fills it, and then every message is delivered once and in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_held_sync_wait_behind_hole() {
    let script = front::hold_replies(&["Sync"], SYNC_HOLD);
    let (stack, seen) = Stack::start_behind_front(script, |engine| {
        // Longer than the hold, so that the engine waits for the late reply.
        engine.logic_call_timeout_ms = 10_000;
    })
    .await;
    let (alice, alice_client) = stack.new_user("held-a").await;
    let (bob, bob_client) = stack.new_user("held-b").await;
    make_friends(&alice, &bob).await;
    alice_client.close().await.expect("alice goes offline");
    for index in 0..20 {
        bob_client
            .send(
                ConversationType::User,
                alice.id(),
                format!("b{index}"),
                TEXT,
                &format!("held-{index}"),
            )
            .await
            .expect("send while alice is offline");
    }

    let alice_client = stack.sign_in(&alice.login).await;
    let live_sends = async {
        let holding = eventually(PUSH_WAIT, || async { seen.count("Sync") == 1 }).await;
        assert!(holding, "the SYNC did not reach the logic tier's front");
        // The front passed the call on at once, so the logic tier has read the page by now and
        // it ends at seq 20.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for index in 20..23 {
            bob_client
                .send(
                    ConversationType::User,
                    alice.id(),
                    format!("b{index}"),
                    TEXT,
                    &format!("held-{index}"),
                )
                .await
                .expect("live send");
        }
    };
    let mut tracker = SeqTracker::new(0);
    let mut delivered = Vec::new();
    let mut early_arrivals = Vec::new();
    let mut sends_done = false;
    let mut sync = std::pin::pin!(alice_client.sync(0, 100));
    let mut live_sends = std::pin::pin!(live_sends);
    // Pushes first: the engine handles a connection's packets one at a time, so it writes the
    // pushes queued while the SYNC waited just ahead of the reply. They are in the client's
    // push queue by the time the reply resolves the request.
    let page = loop {
        tokio::select! {
            biased;
            push = alice_client.next_push() => {
                let packet = push.expect("alice's connection stays open");
                if is_notice(&packet) {
                    continue;
                }
                let message = message_of(packet);
                let seq = message.seq;
                early_arrivals.push((seq, tracker.accept(message, &mut delivered)));
                assert_eq!(tracker.last_seq(), 0, "the push of seq {seq} moved the cursor");
            }
            () = &mut live_sends, if !sends_done => sends_done = true,
            page = &mut sync => break page.expect("sync"),
        }
    };
    assert!(sends_done, "the live sends outlasted the held SYNC");
    assert_eq!(
        early_arrivals,
        vec![
            (21, Arrival::Held),
            (22, Arrival::Held),
            (23, Arrival::Held)
        ],
        "pushes taken in while the SYNC reply was held back"
    );
    assert!(
        delivered.is_empty(),
        "delivered before the page: {delivered:?}"
    );
    assert_eq!(seqs(&page.messages), (1..=20).collect::<Vec<_>>());
    assert!(!page.has_more);

    let next = tracker.accept_page(0, page, &mut delivered);
    let extra = push_within(&alice_client, QUIET).await;

    assert_eq!(next, None, "one page holds every stored message");
    assert_eq!(seqs(&delivered), (1..=23).collect::<Vec<_>>());
    let expected: Vec<String> = (0..23).map(|index| format!("b{index}")).collect();
    assert_eq!(texts(&delivered), expected);
    assert_eq!(tracker.last_seq(), 23);
    assert_eq!(tracker.held(), 0);
    assert!(extra.is_none(), "pushed again after the page: {extra:?}");
    assert_eq!(seen.count("Sync"), 1);
    stack.stop().await;
}

/// Users of the property test, each with two devices.
const USERS: usize = 4;
/// Messages the property test sends in total.
const SENDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inboxes_exact_under_random_disconnects() {
    let seed = std::env::var("IM_E2E_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("inboxes_exact_under_random_disconnects seed = {seed} (set IM_E2E_SEED to repeat)");
    let run = run_random_disconnects(seed);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: the run took longer than 60 s"));
}

async fn run_random_disconnects(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let stack = Stack::start().await;
    let mut users = Vec::new();
    let mut devices = Vec::new();
    for index in 0..USERS {
        let (user, first) = stack.new_user(&format!("prop{index}")).await;
        let (second_login, second) = stack.another_device(&user).await;
        devices.push(Device::spawn(&stack, index, user.login.clone(), first));
        devices.push(Device::spawn(&stack, index, second_login, second));
        users.push(user);
    }
    for (index, user) in users.iter().enumerate() {
        for other in &users[index + 1..] {
            make_friends(user, other).await;
        }
    }
    let member_ids: Vec<u64> = users[1..].iter().map(TestUser::id).collect();
    let group = users[0]
        .api
        .create_group("everyone", &member_ids)
        .await
        .expect("create group");

    // Message ids each user must hold, whoever sent them.
    let mut expected: Vec<HashSet<u64>> = vec![HashSet::new(); USERS];
    for step in 0..SENDS {
        shake_connections(&mut rng, &devices).await;
        let sender = rng.random_range(0..devices.len());
        let sender_user = devices[sender].user;
        let (conversation, receiver_id, recipients) = if rng.random_bool(0.3) {
            (
                ConversationType::Group,
                group.group_id,
                (0..USERS).collect(),
            )
        } else {
            let mut other = rng.random_range(0..USERS - 1);
            if other >= sender_user {
                other += 1;
            }
            (
                ConversationType::User,
                users[other].id(),
                vec![sender_user, other],
            )
        };
        let reply = devices[sender]
            .send(
                conversation,
                receiver_id,
                format!("step {step}"),
                format!("p-{step}"),
            )
            .await
            .unwrap_or_else(|error| panic!("seed {seed}, step {step}: send failed: {error}"));
        for user in recipients {
            expected[user].insert(reply.message_id);
        }
    }

    for device in &devices {
        let held = device.finish(expected[device.user].len() as u64).await;
        check_inbox(seed, device.user, &held, &expected[device.user]);
    }
    for (index, user) in users.iter().enumerate() {
        let client = stack.sign_in(&user.login).await;
        let (stored, _) = sync_all(&client, 0, 100).await;
        check_inbox(seed, index, &stored, &expected[index]);
    }
    stack.stop().await;
}

/// Disconnects or reconnects a random device now and then.
async fn shake_connections(rng: &mut StdRng, devices: &[Device]) {
    let roll: f64 = rng.random();
    let device = &devices[rng.random_range(0..devices.len())];
    if roll < 0.1 {
        let graceful = rng.random_bool(0.5);
        device
            .command(|done| Command::Disconnect { graceful, done })
            .await;
    } else if roll < 0.2 {
        device.command(|done| Command::Reconnect { done }).await;
    }
}

/// Asserts that `messages` contains each expected message once, in seq order 1, 2, 3, ...
fn check_inbox(seed: u64, user: usize, messages: &[Message], expected: &HashSet<u64>) {
    let count = expected.len() as u64;
    assert_eq!(
        seqs(messages),
        (1..=count).collect::<Vec<_>>(),
        "seed {seed}: user {user} seqs"
    );
    let ids: HashSet<u64> = messages.iter().map(|message| message.message_id).collect();
    assert_eq!(
        ids.len(),
        messages.len(),
        "seed {seed}: user {user} holds a message twice"
    );
    assert_eq!(&ids, expected, "seed {seed}: user {user} message ids");
}

/// A request to a device task.
enum Command {
    Send {
        conversation: ConversationType,
        receiver_id: u64,
        content: String,
        client_msg_id: String,
        reply: oneshot::Sender<Result<SendReply, InboxError>>,
    },
    Disconnect {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
    Reconnect {
        done: oneshot::Sender<()>,
    },
    /// Reconnect if needed, receive up to `last_seq`, close, and return every message held.
    Finish {
        last_seq: u64,
        reply: oneshot::Sender<Vec<Message>>,
    },
}

/// A handle on one device's task, which owns its connection and its inbox.
struct Device {
    user: usize,
    commands: mpsc::Sender<Command>,
}

impl Device {
    fn spawn(stack: &Stack, user: usize, login: LoginReply, client: Client) -> Device {
        let (commands, receiver) = mpsc::channel(4);
        let task = DeviceTask {
            url: stack.ws_url(),
            inbox: Inbox::new(login.user_id, login.device_id).with_page_limit(7),
            login,
            client: Some(client),
            held: Vec::new(),
        };
        tokio::spawn(task.run(receiver));
        Device { user, commands }
    }

    async fn send(
        &self,
        conversation: ConversationType,
        receiver_id: u64,
        content: String,
        client_msg_id: String,
    ) -> Result<SendReply, InboxError> {
        let (reply, result) = oneshot::channel();
        let command = Command::Send {
            conversation,
            receiver_id,
            content,
            client_msg_id,
            reply,
        };
        self.commands.send(command).await.expect("device task runs");
        result.await.expect("device task replies")
    }

    async fn command(&self, make: impl FnOnce(oneshot::Sender<()>) -> Command) {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(make(done))
            .await
            .expect("device task runs");
        finished.await.expect("device task replies");
    }

    async fn finish(&self, last_seq: u64) -> Vec<Message> {
        let (reply, held) = oneshot::channel();
        let command = Command::Finish { last_seq, reply };
        self.commands.send(command).await.expect("device task runs");
        held.await.expect("device task replies")
    }
}

/// What woke a device task.
enum Wake {
    Command(Option<Command>),
    Received(Result<Vec<Message>, InboxError>),
}

struct DeviceTask {
    url: String,
    login: LoginReply,
    client: Option<Client>,
    inbox: Inbox,
    /// Every message the inbox delivered, in delivery order.
    held: Vec<Message>,
}

impl DeviceTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let wake = match &self.client {
                Some(client) => tokio::select! {
                    command = commands.recv() => Wake::Command(command),
                    received = self.inbox.recv(client) => Wake::Received(received),
                },
                None => Wake::Command(commands.recv().await),
            };
            match wake {
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => self.handle(command).await,
                Wake::Received(Ok(messages)) => self.held.extend(messages),
                Wake::Received(Err(error)) => {
                    panic!(
                        "device {} lost its connection: {error}",
                        self.login.device_id
                    )
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Send {
                conversation,
                receiver_id,
                content,
                client_msg_id,
                reply,
            } => {
                self.go_online().await;
                let client = self.client.as_ref().expect("online");
                let result = self
                    .inbox
                    .send(
                        client,
                        conversation,
                        receiver_id,
                        content,
                        "text/plain",
                        &client_msg_id,
                    )
                    .await;
                let _ = reply.send(result);
            }
            Command::Disconnect { graceful, done } => {
                if let Some(client) = self.client.take() {
                    if graceful {
                        client.close().await.expect("close handshake");
                    }
                }
                let _ = done.send(());
            }
            Command::Reconnect { done } => {
                self.go_online().await;
                let _ = done.send(());
            }
            Command::Finish { last_seq, reply } => {
                self.go_online().await;
                let client = self.client.as_ref().expect("online");
                let rest = recv_until(&mut self.inbox, client, last_seq, Duration::from_secs(10))
                    .await
                    .expect("messages up to the last seq");
                self.held.extend(rest);
                if let Some(client) = self.client.take() {
                    client.close().await.expect("close handshake");
                }
                let _ = reply.send(std::mem::take(&mut self.held));
            }
        }
    }

    /// Connects, signs in and syncs when offline.
    async fn go_online(&mut self) {
        if self.client.is_some() {
            return;
        }
        let client = Client::connect(&self.url, &im_client::ConnectOptions::default())
            .await
            .expect("reconnect");
        client
            .sign_in(self.login.user_id, self.login.device_id, &self.login.token)
            .await
            .expect("sign-in after reconnect");
        let synced = self
            .inbox
            .resync(&client)
            .await
            .expect("resync after reconnect");
        self.held.extend(synced);
        self.client = Some(client);
    }
}

/// A SYNC page above 4 MiB, which `sync_max_page_bytes` allows up to 16 MiB, reaches the
/// device whole: the engine's client of the logic tier decodes replies of that size.
#[tokio::test]
async fn sync_page_above_four_mib_arrives() {
    const MESSAGES: u64 = 300;
    const CONTENT_BYTES: usize = 16_384;
    let logic_config = im_logic::Config {
        sync_max_page: 1000,
        sync_max_page_bytes: 8 << 20,
        ..logic_config()
    };
    let stack = Stack::start_with(logic_config, |engine| {
        engine.max_message_bytes = 9 << 20;
        engine.max_outbound_bytes = 9 << 20;
    })
    .await;
    let (alice, alice_client) = stack.new_user("page-a").await;
    let (bob, bob_client) = stack.new_user("page-b").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.expect("bob goes offline");
    let content = "x".repeat(CONTENT_BYTES);
    for index in 0..MESSAGES {
        alice_client
            .send(
                ConversationType::User,
                bob.id(),
                content.clone(),
                TEXT,
                &format!("page-{index}"),
            )
            .await
            .expect("send while bob is offline");
    }

    let bob_client = stack.sign_in(&bob.login).await;
    let page = bob_client.sync(0, 1000).await.expect("one SYNC page");

    assert_eq!(page.messages.len() as u64, MESSAGES);
    assert!(!page.has_more);
    assert!(
        page.messages.iter().map(|m| m.content.len()).sum::<usize>() > 4 << 20,
        "the page holds more than 4 MiB of content"
    );
    stack.stop().await;
}

/// Messages of each kind in `inbox_exact_under_mixed_group_and_direct`.
const MIXED_EACH: u64 = 200;

/// Group sends and direct sends are stored by two batching tasks that take the same user's
/// seqs in turn. Their pushes are queued in commit order, but should two reach the device the
/// other way round, its inbox keeps the later one back and fills the hole by SYNC. Either way the
/// device delivers every message once, with seqs 1, 2, 3, ... and each sender's messages in the
/// order they were sent. The test prints the SYNC calls that filled holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_exact_under_mixed_group_and_direct() {
    let stack = Stack::start().await;
    let (receiver, receiver_client) = stack.new_user("mixed-u").await;
    let (group_sender, group_client) = stack.new_user("mixed-g").await;
    let (direct_sender, direct_client) = stack.new_user("mixed-d").await;
    make_friends(&group_sender, &receiver).await;
    make_friends(&direct_sender, &receiver).await;
    let mut member_ids = vec![receiver.id()];
    for index in 0..2 {
        let (member, client) = stack.new_user(&format!("mixed-m{index}")).await;
        make_friends(&group_sender, &member).await;
        client.close().await.expect("member goes offline");
        member_ids.push(member.id());
    }
    let group = group_sender
        .api
        .create_group("mixed", &member_ids)
        .await
        .expect("create group");

    let total = 2 * MIXED_EACH;
    let mut inbox = Inbox::new(receiver.id(), receiver.login.device_id);
    let (group_ids, direct_ids, delivered) = tokio::join!(
        send_each(
            &group_client,
            ConversationType::Group,
            group.group_id,
            "group"
        ),
        send_each(
            &direct_client,
            ConversationType::User,
            receiver.id(),
            "direct"
        ),
        recv_until(&mut inbox, &receiver_client, total, Duration::from_secs(60)),
    );
    let delivered = delivered.expect("the receiver's connection stays open");
    let extra = tokio::time::timeout(QUIET, inbox.recv(&receiver_client)).await;

    assert_eq!(seqs(&delivered), (1..=total).collect::<Vec<_>>());
    assert!(extra.is_err(), "delivered after the last seq: {extra:?}");
    let delivered_ids: HashSet<u64> = delivered.iter().map(|message| message.message_id).collect();
    assert_eq!(
        delivered_ids.len(),
        delivered.len(),
        "a message was delivered twice"
    );
    let sent_ids: HashSet<u64> = group_ids.iter().chain(&direct_ids).copied().collect();
    assert_eq!(delivered_ids, sent_ids);
    for prefix in ["group", "direct"] {
        let in_seq_order: Vec<String> = texts(&delivered)
            .into_iter()
            .filter(|text| text.starts_with(prefix))
            .collect();
        let in_send_order: Vec<String> = (0..MIXED_EACH)
            .map(|index| format!("{prefix} {index}"))
            .collect();
        assert_eq!(
            in_seq_order, in_send_order,
            "{prefix} messages out of order"
        );
    }
    assert_eq!(last_stored_seq(receiver.id()).await, Some(total));
    let acked = eventually(PUSH_WAIT, || async {
        acked_seq(receiver.login.device_id).await == Some(total)
    })
    .await;
    assert!(acked, "the receiver's device did not ack seq {total}");

    // Only the receiver's inbox sends SYNC, to fill holes that out-of-order pushes left.
    let syncs = stack
        .logic
        .as_ref()
        .expect("logic running")
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(r#"im_logic_requests_total{method="Sync",code="OK"} "#))
        .map(str::to_owned);
    println!("inbox_exact_under_mixed_group_and_direct: SYNC calls {syncs:?}");
    stack.stop().await;
}

/// Sends [`MIXED_EACH`] messages from `client` to one conversation, each after the previous
/// reply, and returns their message ids in send order.
async fn send_each(
    client: &Client,
    conversation: ConversationType,
    receiver_id: u64,
    prefix: &str,
) -> Vec<u64> {
    let mut message_ids = Vec::new();
    for index in 0..MIXED_EACH {
        let reply = client
            .send(
                conversation,
                receiver_id,
                format!("{prefix} {index}"),
                TEXT,
                &format!("{prefix}-{index}"),
            )
            .await
            .unwrap_or_else(|error| panic!("{prefix} send {index} failed: {error}"));
        message_ids.push(reply.message_id);
    }
    message_ids
}
