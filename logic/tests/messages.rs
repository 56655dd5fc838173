//! SEND, SYNC and MESSAGE_ACK through `DeviceIntService`, and ServerSend: checks, seqs,
//! idempotent retries and paging, against the test PostgreSQL and Redis.

mod common;

use std::collections::HashSet;

use common::redis_child::RedisChild;
use common::{
    conn, create_group, device_ref, error_code, make_friends, new_device, new_user_device,
    postgres, send, send_text, sync, text_to, TestLogic, NODE,
};
use futures::stream::{self, StreamExt};
use im_proto::v1::{
    ConnAckManyRequest, ConnAckRequest, ConnSendManyRequest, ConnSendRequest, ConversationType,
    DeviceRef, ErrorCode, ServerSendRequest, SyncReply,
};
use tonic::Code;

const SECRET: &str = "a test server secret";

fn config_with_secret() -> im_logic::Config {
    im_logic::Config {
        server_secret: SECRET.to_owned(),
        ..common::test_config()
    }
}

/// Returns the seqs of a SYNC page.
fn seqs(reply: &SyncReply) -> Vec<u64> {
    reply.messages.iter().map(|message| message.seq).collect()
}

#[tokio::test]
async fn direct_send_to_open_user_stores_both_copies() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "sender", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "open", true, conn(NODE, 2)).await;

    let reply = send_text(&mut logic.client, &sender, receiver.user_id, "hello")
        .await
        .expect("send succeeds");

    assert!(reply.message_id > 0);
    assert_eq!(reply.seq, 1, "the sender's first copy");
    assert!(reply.sent_at_ms > 1_600_000_000_000, "{}", reply.sent_at_ms);
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(inbox.messages.len(), 1);
    assert!(!inbox.has_more);
    let message = &inbox.messages[0];
    assert_eq!(message.seq, 1);
    assert_eq!(message.message_id, reply.message_id);
    assert_eq!(message.sender_user_id, sender.user_id);
    assert_eq!(message.sender_device_id, sender.device_id);
    assert_eq!(message.conversation_type, ConversationType::User as i32);
    assert_eq!(message.receiver_id, receiver.user_id);
    assert_eq!(&message.content[..], b"hello");
    assert_eq!(message.content_type, "text/plain");
    assert_eq!(message.sent_at_ms, reply.sent_at_ms);
    let outbox = sync(&mut logic.client, &sender, 0, 0).await.expect("sync");
    assert_eq!(seqs(&outbox), vec![1]);
    assert_eq!(outbox.messages[0].message_id, reply.message_id);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn send_to_self_stores_one_copy() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "self", conn(NODE, 1)).await;

    let first = send_text(&mut logic.client, &device, device.user_id, "note")
        .await
        .expect("a message to oneself is allowed");
    let second = send_text(&mut logic.client, &device, device.user_id, "note 2")
        .await
        .expect("second note");

    assert_eq!((first.seq, second.seq), (1, 2));
    let inbox = sync(&mut logic.client, &device, 0, 0).await.expect("sync");
    assert_eq!(seqs(&inbox), vec![1, 2]);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn invalid_sends_are_rejected_with_their_codes() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "invalid", conn(NODE, 1)).await;
    let to_self = |edit: fn(&mut im_proto::v1::SendRequest)| {
        let mut message = text_to(ConversationType::User, sender.user_id, "x");
        edit(&mut message);
        message
    };
    let cases = [
        (
            to_self(|m| m.content = bytes::Bytes::new()),
            ErrorCode::ContentEmpty,
        ),
        (
            to_self(|m| m.content = bytes::Bytes::from(vec![b'x'; 16_385])),
            ErrorCode::ContentTooLarge,
        ),
        (
            to_self(|m| m.content_type = "t".repeat(65)),
            ErrorCode::InvalidArgument,
        ),
        (
            to_self(|m| m.client_msg_id.clear()),
            ErrorCode::InvalidArgument,
        ),
        (
            to_self(|m| m.client_msg_id = "c".repeat(65)),
            ErrorCode::InvalidArgument,
        ),
        (
            to_self(|m| m.conversation_type = 0),
            ErrorCode::InvalidArgument,
        ),
        (to_self(|m| m.receiver_id = 0), ErrorCode::InvalidArgument),
    ];

    for (message, expected) in cases {
        let status = send(&mut logic.client, &sender, message)
            .await
            .expect_err("invalid send rejected");
        assert_eq!(error_code(&status), expected, "{}", status.message());
    }
    let at_limit = to_self(|m| m.content = bytes::Bytes::from(vec![b'x'; 16_384]));
    send(&mut logic.client, &sender, at_limit)
        .await
        .expect("content of exactly max_content_bytes is accepted");
    let no_device = ConnSendRequest {
        device: None,
        send: Some(text_to(ConversationType::User, sender.user_id, "x")),
    };
    let status = logic.client.send(no_device).await.expect_err("no device");
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn send_to_missing_receiver_is_receiver_not_found() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "missing", conn(NODE, 1)).await;

    let to_user = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::User, i64::MAX as u64, "x"),
    )
    .await
    .expect_err("no such user");
    let to_group = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::Group, i64::MAX as u64, "x"),
    )
    .await
    .expect_err("no such group");
    let beyond_bigint = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::User, u64::MAX, "x"),
    )
    .await
    .expect_err("no such user");

    assert_eq!(to_user.code(), Code::NotFound);
    assert_eq!(error_code(&to_user), ErrorCode::ReceiverNotFound);
    assert_eq!(error_code(&to_group), ErrorCode::ReceiverNotFound);
    assert_eq!(error_code(&beyond_bigint), ErrorCode::ReceiverNotFound);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn stranger_needs_friendship_to_send() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let sender = new_device(&mut logic.client, "stranger", conn(NODE, 1)).await;
    let receiver = new_device(&mut logic.client, "closed", conn(NODE, 2)).await;

    let status = send_text(&mut logic.client, &sender, receiver.user_id, "hi")
        .await
        .expect_err("not friends");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_code(&status), ErrorCode::NotFriend);
    let nothing = sync(&mut logic.client, &sender, 0, 0).await.expect("sync");
    assert!(
        nothing.messages.is_empty(),
        "a rejected send stores nothing"
    );

    make_friends(&mut ext, &sender, &receiver).await;
    let reply = send_text(&mut logic.client, &sender, receiver.user_id, "hi")
        .await
        .expect("friends may send");

    assert_eq!(reply.seq, 1, "the rejected send took no seq");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn group_send_stores_one_row_per_member() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "owner", conn(NODE, 1)).await;
    let a = new_device(&mut logic.client, "member", conn(NODE, 2)).await;
    let b = new_device(&mut logic.client, "member", conn(NODE, 3)).await;
    let outsider = new_device(&mut logic.client, "outsider", conn(NODE, 4)).await;
    let group = create_group(&mut ext, &owner, &[&a, &b]).await;
    // b already has one message, so its copy gets seq 2 while the others get 1.
    send_text(&mut logic.client, &b, b.user_id, "earlier")
        .await
        .expect("note to self");

    let reply = send(
        &mut logic.client,
        &a,
        text_to(ConversationType::Group, group.group_id, "to all"),
    )
    .await
    .expect("member sends");

    let db = postgres().await;
    let rows = db
        .query(
            "SELECT user_id, seq FROM messages WHERE message_id = $1 ORDER BY user_id",
            &[&i64::try_from(reply.message_id).expect("bigint")],
        )
        .await
        .expect("query");
    let copies: Vec<(i64, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut expected = vec![
        (owner.user_id as i64, 1),
        (a.user_id as i64, 1),
        (b.user_id as i64, 2),
    ];
    expected.sort_unstable();
    assert_eq!(copies, expected);
    assert_eq!(reply.seq, 1, "the sender's own copy");
    let inbox = sync(&mut logic.client, &owner, 0, 0).await.expect("sync");
    assert_eq!(inbox.messages[0].receiver_id, group.group_id);
    assert_eq!(
        inbox.messages[0].conversation_type,
        ConversationType::Group as i32
    );

    let status = send(
        &mut logic.client,
        &outsider,
        text_to(ConversationType::Group, group.group_id, "let me in"),
    )
    .await
    .expect_err("outsider rejected");
    assert_eq!(error_code(&status), ErrorCode::NotGroupMember);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn repeated_send_returns_first_reply_and_stores_once() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "retry", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "retry_to", true, conn(NODE, 2)).await;
    let message = text_to(ConversationType::User, receiver.user_id, "once");

    let first = send(&mut logic.client, &sender, message.clone())
        .await
        .expect("first send");
    let again = send(&mut logic.client, &sender, message.clone())
        .await
        .expect("retry");
    let concurrent = futures::future::join_all((0..5).map(|_| {
        let mut client = logic.client.clone();
        let (sender, message) = (sender.clone(), message.clone());
        async move { send(&mut client, &sender, message).await }
    }))
    .await;

    assert_eq!(again, first);
    for reply in concurrent {
        assert_eq!(reply.expect("concurrent retry"), first);
    }
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(inbox.messages.len(), 1, "stored once");
    let next = send_text(&mut logic.client, &sender, receiver.user_id, "next")
        .await
        .expect("new message");
    assert_eq!(next.seq, 2, "retries took no seq");

    logic.server.shutdown().await;
}

#[tokio::test]
async fn client_msg_id_is_per_device() {
    let mut logic = TestLogic::start_default().await;
    let (username, first_device) =
        new_user_device(&mut logic.client, "twodev", false, conn(NODE, 1)).await;
    let second_device = common::login(&mut logic.client, &username, 0, conn(NODE, 2))
        .await
        .expect("second device");
    let message = text_to(ConversationType::User, first_device.user_id, "same id");

    let first = send(&mut logic.client, &first_device, message.clone())
        .await
        .expect("first device");
    let second = send(&mut logic.client, &second_device, message)
        .await
        .expect("second device");

    assert_ne!(first.message_id, second.message_id);
    assert_eq!((first.seq, second.seq), (1, 2));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn expired_send_key_is_reused_and_deleted() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "expire", conn(NODE, 1)).await;
    let message = text_to(ConversationType::User, sender.user_id, "old");
    let first = send(&mut logic.client, &sender, message.clone())
        .await
        .expect("first send");
    let db = postgres().await;
    let sender_id = i64::try_from(sender.user_id).expect("bigint");
    db.execute(
        "UPDATE sent_messages SET sent_at = now() - interval '25 hours' WHERE sender_user_id = $1",
        &[&sender_id],
    )
    .await
    .expect("key aged");

    let again = send(&mut logic.client, &sender, message.clone())
        .await
        .expect("send after a day");

    assert_ne!(again.message_id, first.message_id, "a new message");
    assert_eq!(again.seq, 2);
    // Every logic server of the test suite deletes expired keys when it starts, so one that
    // starts between the aging and the cleanup below may delete them first. The round is
    // repeated then, with fresh keys.
    let pg = im_logic::store::pg::PgStore::new(&common::test_config()).expect("pool");
    let mut deleted_here = 0;
    for round in 0..3 {
        let other = text_to(
            ConversationType::User,
            sender.user_id,
            &format!("other {round}"),
        );
        send(&mut logic.client, &sender, other).await.expect("send");
        let aged = db
            .execute(
                "UPDATE sent_messages SET sent_at = now() - interval '25 hours' \
                 WHERE sender_user_id = $1",
                &[&sender_id],
            )
            .await
            .expect("keys aged");
        assert!(aged >= 1, "the new key exists");
        deleted_here = im_logic::retention::delete_expired_keys(&pg)
            .await
            .expect("cleanup");
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM sent_messages WHERE sender_user_id = $1",
                &[&sender_id],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(left, 0, "expired keys are gone");
        if deleted_here >= aged {
            break;
        }
    }
    assert!(
        deleted_here >= 1,
        "another cleanup took the keys three times over"
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn retention_deletes_only_old_copies() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "keep_s", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "keep_r", true, conn(NODE, 2)).await;
    let mut ids = Vec::new();
    for text in ["old 1", "old 2", "recent", "new"] {
        let reply = send_text(&mut logic.client, &sender, receiver.user_id, text)
            .await
            .expect("send");
        ids.push(i64::try_from(reply.message_id).expect("bigint"));
    }
    let db = postgres().await;
    db.execute(
        "UPDATE messages SET sent_at = now() - interval '49 hours' WHERE message_id = ANY($1)",
        &[&ids[..2].to_vec()],
    )
    .await
    .expect("copies aged past two days");
    db.execute(
        "UPDATE messages SET sent_at = now() - interval '47 hours' WHERE message_id = $1",
        &[&ids[2]],
    )
    .await
    .expect("copy aged below two days");

    // The task of a server with a retention runs once at start. Other test servers keep every
    // copy, so only this one deletes.
    let keeper = TestLogic::start(im_logic::Config {
        message_retention_days: 2,
        ..common::test_config()
    })
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let left = loop {
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM messages WHERE message_id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("count")
            .get(0);
        if left == 4 || tokio::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        left, 4,
        "both copies of the two old messages are gone, the rest stay"
    );
    let rendered = keeper.server.metrics().render();
    let expired: u64 = rendered
        .lines()
        .find_map(|line| line.strip_prefix("im_logic_message_copies_expired_total "))
        .expect("counter rendered")
        .parse()
        .expect("a number");
    assert!(expired >= 4, "{expired} copies counted");

    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![3, 4], "SYNC from 0 gets the copies left");
    assert_eq!(&inbox.messages[0].content[..], b"recent");
    let next = send_text(&mut logic.client, &sender, receiver.user_id, "after")
        .await
        .expect("send after the deletion");
    assert_eq!(next.seq, 5, "the sender's seqs are not reused");
    let inbox = sync(&mut logic.client, &receiver, 4, 0)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![5]);

    // A second run finds nothing more to delete.
    let pg = im_logic::store::pg::PgStore::new(&common::test_config()).expect("pool");
    let mut batches = Vec::new();
    let again = im_logic::retention::delete_expired_messages(&pg, 2, |count| batches.push(count))
        .await
        .expect("second run");
    assert_eq!(again, 0);
    assert_eq!(batches, vec![0]);

    // A build that failed leaves an invalid index. While another process holds the build lock,
    // a run leaves it alone and deletes nothing; then the next run replaces it.
    use im_logic::store::pg::messages::{ensure_sent_at_index, IndexState};
    let index_valid = "SELECT indisvalid FROM pg_index \
                       WHERE indexrelid = 'messages_sent_at_idx'::regclass";
    db.execute(
        "UPDATE pg_index SET indisvalid = false \
         WHERE indexrelid = 'messages_sent_at_idx'::regclass",
        &[],
    )
    .await
    .expect("index marked invalid");
    db.query_one("SELECT pg_advisory_lock(7596391274461143601)", &[])
        .await
        .expect("build lock taken");
    let busy = ensure_sent_at_index(&pg)
        .await
        .expect("check under the lock");
    assert_eq!(busy, IndexState::Busy);
    let skipped = im_logic::retention::delete_expired_messages(&pg, 2, |_| {})
        .await
        .expect("run while another builds");
    assert_eq!(skipped, 0);
    db.query_one("SELECT pg_advisory_unlock(7596391274461143601)", &[])
        .await
        .expect("build lock released");
    let rebuilt = ensure_sent_at_index(&pg).await.expect("rebuild");
    assert_eq!(rebuilt, IndexState::Built);
    let valid: bool = db
        .query_one(index_valid, &[])
        .await
        .expect("index exists")
        .get(0);
    assert!(valid, "the rebuilt index is valid");
    assert_eq!(
        ensure_sent_at_index(&pg).await.expect("check"),
        IndexState::Ready
    );
    keeper.server.shutdown().await;
    logic.server.shutdown().await;
}

/// A send that waits on a row lock past `db_timeout_ms` fails with TIMEOUT. The server cancels
/// its statement at the same deadline instead of leaving it queued on the lock, so the pooled
/// connection and its locks are free again.
#[tokio::test]
async fn send_past_deadline_is_cancelled() {
    let config = im_logic::Config {
        db_timeout_ms: 500,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let sender = new_device(&mut logic.client, "deadline", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "open", true, conn(NODE, 2)).await;
    send_text(&mut logic.client, &sender, receiver.user_id, "first")
        .await
        .expect("first send");
    let receiver_id = i64::try_from(receiver.user_id).expect("id fits");

    let mut holder = postgres().await;
    let lock = holder.transaction().await.expect("begin");
    lock.execute(
        "SELECT 1 FROM user_seq WHERE user_id = $1 FOR UPDATE",
        &[&receiver_id],
    )
    .await
    .expect("lock the receiver's seq");
    let holder_pid: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);

    let status = send_text(&mut logic.client, &sender, receiver.user_id, "blocked")
        .await
        .expect_err("a send behind the lock fails");
    assert_eq!(error_code(&status), ErrorCode::Timeout, "{status:?}");
    let observer = postgres().await;
    let mut waiting = i64::MAX;
    for _ in 0..40 {
        waiting = observer
            .query_one(
                // Index builds of other tests in this file wait on every open transaction.
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE $1 = ANY(pg_blocking_pids(pid)) AND query LIKE '%user_seq%'",
                &[&holder_pid],
            )
            .await
            .expect("count waiters")
            .get(0);
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        waiting, 0,
        "a statement still waits on the lock after its deadline"
    );

    lock.rollback().await.expect("release the lock");
    let reply = send_text(&mut logic.client, &sender, receiver.user_id, "after")
        .await
        .expect("send after the lock is gone");
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![1, 2], "the cut-off send stored nothing");
    assert_eq!(inbox.messages[1].message_id, reply.message_id);
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_get_gapless_seqs() {
    let mut logic = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut logic.client, "busy", true, conn(NODE, 1)).await;
    let mut senders = Vec::new();
    for i in 0..5 {
        senders.push(new_device(&mut logic.client, "crowd", conn(NODE, 10 + i)).await);
    }

    let sends = (0..50).map(|i| {
        let mut client = logic.client.clone();
        let sender = senders[i % senders.len()].clone();
        let receiver_id = receiver.user_id;
        tokio::spawn(async move {
            send_text(&mut client, &sender, receiver_id, &format!("message {i}")).await
        })
    });
    let replies = futures::future::join_all(sends).await;

    for reply in replies {
        reply.expect("task").expect("send succeeds");
    }
    let inbox = sync(&mut logic.client, &receiver, 0, 500)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=50).collect::<Vec<u64>>());
    let ids: HashSet<u64> = inbox.messages.iter().map(|m| m.message_id).collect();
    assert_eq!(ids.len(), 50, "distinct messages");
    for sender in &senders {
        let outbox = sync(&mut logic.client, sender, 0, 0).await.expect("sync");
        assert_eq!(seqs(&outbox), (1..=10).collect::<Vec<u64>>());
    }
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_and_direct_sends_keep_seqs_gapless() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let mut users = Vec::new();
    for i in 0..4 {
        let (_, user) = new_user_device(&mut logic.client, "mix", true, conn(NODE, 1 + i)).await;
        users.push(user);
    }
    // Two overlapping groups: users 0, 1, 2 and users 1, 2, 3.
    let first = create_group(&mut ext, &users[0], &[&users[1], &users[2]]).await;
    let second = create_group(&mut ext, &users[3], &[&users[1], &users[2]]).await;
    let plan: Vec<(usize, ConversationType, u64)> = (0..60)
        .map(|i| match i % 4 {
            0 => (0, ConversationType::Group, first.group_id),
            1 => (3, ConversationType::Group, second.group_id),
            2 => (1, ConversationType::User, users[3].user_id),
            _ => (2, ConversationType::User, users[0].user_id),
        })
        .collect();

    let sends = plan.into_iter().map(|(from, conversation, receiver)| {
        let mut client = logic.client.clone();
        let sender = users[from].clone();
        tokio::spawn(async move {
            send(
                &mut client,
                &sender,
                text_to(conversation, receiver, "mixed"),
            )
            .await
        })
    });
    for reply in futures::future::join_all(sends).await {
        reply.expect("task").expect("no send fails, none deadlocks");
    }

    // Each kind of send runs 15 times. Users 1 and 2 are in both groups and each sends 15
    // direct messages, so they get 45 copies. Users 0 and 3 are in one group and each receives
    // 15 direct messages, so they get 30.
    for (user, expected) in users.iter().zip([30u64, 45, 45, 30]) {
        let inbox = sync(&mut logic.client, user, 0, 500).await.expect("sync");
        assert_eq!(seqs(&inbox), (1..=expected).collect::<Vec<u64>>());
    }
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pages_through_a_thousand_messages_in_order() {
    let mut logic = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut logic.client, "pager", true, conn(NODE, 1)).await;
    let sender = new_device(&mut logic.client, "pages", conn(NODE, 2)).await;
    let sent: Vec<u64> = stream::iter(0..1000)
        .map(|i| {
            let mut client = logic.client.clone();
            let sender = sender.clone();
            let receiver_id = receiver.user_id;
            async move {
                send_text(&mut client, &sender, receiver_id, &format!("page {i}"))
                    .await
                    .expect("send succeeds")
                    .message_id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut received = Vec::new();
    let mut pages = 0;
    let mut after_seq = 0;
    loop {
        let page = sync(&mut logic.client, &receiver, after_seq, 300)
            .await
            .expect("sync");
        pages += 1;
        received.extend(page.messages.iter().cloned());
        after_seq = page.messages.last().map_or(after_seq, |m| m.seq);
        if !page.has_more {
            break;
        }
        assert_eq!(page.messages.len(), 300, "a full page before the last");
    }

    assert_eq!(pages, 4);
    let received_seqs: Vec<u64> = received.iter().map(|m| m.seq).collect();
    assert_eq!(received_seqs, (1..=1000).collect::<Vec<u64>>());
    let mut received_ids: Vec<u64> = received.iter().map(|m| m.message_id).collect();
    let mut sent_ids = sent;
    received_ids.sort_unstable();
    sent_ids.sort_unstable();
    assert_eq!(received_ids, sent_ids, "each message exactly once");
    let default_page = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(default_page.messages.len(), 100, "limit 0 means 100");
    assert!(default_page.has_more);
    let exact_end = sync(&mut logic.client, &receiver, 900, 100)
        .await
        .expect("sync");
    assert_eq!(exact_end.messages.len(), 100);
    assert!(!exact_end.has_more, "the page ends at the last message");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn sync_limit_above_max_is_invalid_argument() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "limit", conn(NODE, 1)).await;

    let status = sync(&mut logic.client, &device, 0, 501)
        .await
        .expect_err("limit above sync_max_page");
    let too_far = sync(&mut logic.client, &device, u64::MAX, 10)
        .await
        .expect_err("after_seq above bigint");

    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    assert_eq!(
        status.message(),
        "invalid limit: 501 is above this server's maximum of 500"
    );
    assert_eq!(error_code(&too_far), ErrorCode::InvalidArgument);
    let empty = sync(&mut logic.client, &device, 0, 500)
        .await
        .expect("the maximum is allowed");
    assert!(empty.messages.is_empty());
    assert!(!empty.has_more);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn seq_continues_after_redis_flushall() {
    let port = common::free_port().await;
    let redis = RedisChild::start(port).await;
    let config = im_logic::Config {
        redis_url: redis.url(),
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let sender = new_device(&mut logic.client, "flush", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "flush_to", true, conn(NODE, 2)).await;
    for i in 0..3 {
        send_text(
            &mut logic.client,
            &sender,
            receiver.user_id,
            &format!("before {i}"),
        )
        .await
        .expect("send before the flush");
    }

    let mut connection = redis::Client::open(redis.url())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("private Redis reachable");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("FLUSHALL");
    let reply = send_text(&mut logic.client, &sender, receiver.user_id, "after")
        .await
        .expect("send after the flush");

    assert_eq!(reply.seq, 4, "the sender's seq continues");
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![1, 2, 3, 4]);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn ack_keeps_the_highest_seq_of_own_device() {
    let mut logic = TestLogic::start_default().await;
    let device = new_device(&mut logic.client, "ack", conn(NODE, 1)).await;
    let other = new_device(&mut logic.client, "ack_other", conn(NODE, 2)).await;
    let ack = |device_ref: DeviceRef, seq: u64| ConnAckRequest {
        device: Some(device_ref),
        seq,
    };
    let own = DeviceRef {
        user_id: device.user_id,
        device_id: device.device_id,
    };

    logic.client.ack(ack(own, 5)).await.expect("ack 5");
    logic.client.ack(ack(own, 3)).await.expect("ack 3");

    let db = postgres().await;
    let acked = acked_seq(&db, device.device_id).await;
    assert_eq!(acked, 5, "an older ack does not lower it");
    let foreign = DeviceRef {
        user_id: device.user_id,
        device_id: other.device_id,
    };
    let status = logic
        .client
        .ack(ack(foreign, 1))
        .await
        .expect_err("another user's device");
    assert_eq!(error_code(&status), ErrorCode::DeviceNotOwned);
    let unknown = DeviceRef {
        user_id: device.user_id,
        device_id: i64::MAX as u64,
    };
    let status = logic
        .client
        .ack(ack(unknown, 1))
        .await
        .expect_err("unknown device");
    assert_eq!(error_code(&status), ErrorCode::DeviceUnknown);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_acks_keep_each_device_highest() {
    let logic = TestLogic::start_default().await;
    let mut client = logic.client.clone();
    let first = new_device(&mut client, "ack_many_a", conn(NODE, 1)).await;
    let second = new_device(&mut client, "ack_many_b", conn(NODE, 2)).await;
    let acks = (1..=50u64).flat_map(|seq| {
        [&first, &second].map(|device| ConnAckRequest {
            device: Some(DeviceRef {
                user_id: device.user_id,
                device_id: device.device_id,
            }),
            // The second device's acks arrive in falling order.
            seq: if device.device_id == first.device_id {
                seq
            } else {
                51 - seq
            },
        })
    });
    let calls = acks.map(|request| {
        let mut client = logic.client.clone();
        async move { client.ack(request).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("ack");
    }

    let db = postgres().await;
    for device in [&first, &second] {
        let acked = acked_seq(&db, device.device_id).await;
        assert_eq!(acked, 50, "device {}", device.device_id);
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn send_many_replies_each_outcome_in_order() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "many_from", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "many_to", true, conn(NODE, 2)).await;
    let to = |text: &str| ConnSendRequest {
        device: device_ref(&sender),
        send: Some(text_to(ConversationType::User, receiver.user_id, text)),
    };
    let mut empty = to("");
    empty.send.as_mut().expect("send").content = bytes::Bytes::new();
    let repeated = to("again");
    let sends = vec![
        to("first"),
        empty,
        to("second"),
        repeated.clone(),
        ConnSendRequest {
            device: device_ref(&sender),
            send: None,
        },
    ];

    let outcomes = logic
        .client
        .send_many(ConnSendManyRequest { sends })
        .await
        .expect("SendMany")
        .into_inner()
        .outcomes;
    let codes: Vec<i32> = outcomes.iter().map(|outcome| outcome.code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::Ok as i32,
            ErrorCode::ContentEmpty as i32,
            ErrorCode::Ok as i32,
            ErrorCode::Ok as i32,
            ErrorCode::InvalidArgument as i32,
        ]
    );
    assert!(!outcomes[1].message.is_empty());
    assert!(outcomes[1].reply.is_none());
    let seqs_sent: Vec<u64> = [0, 2, 3]
        .iter()
        .map(|&i| outcomes[i].reply.as_ref().expect("reply").seq)
        .collect();
    assert_eq!(seqs_sent, vec![1, 2, 3], "sender seqs follow request order");

    // A repeated client_msg_id gets the first reply and stores nothing new.
    let again = logic
        .client
        .send_many(ConnSendManyRequest {
            sends: vec![repeated],
        })
        .await
        .expect("SendMany again")
        .into_inner()
        .outcomes;
    assert_eq!(again[0].reply, outcomes[3].reply);
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![1, 2, 3]);

    let too_many = vec![to("x"); 1025];
    let status = logic
        .client
        .send_many(ConnSendManyRequest { sends: too_many })
        .await
        .expect_err("1025 sends");
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn ack_many_stores_valid_and_counts_failed() {
    let mut logic = TestLogic::start_default().await;
    let first = new_device(&mut logic.client, "acks_a", conn(NODE, 1)).await;
    let second = new_device(&mut logic.client, "acks_b", conn(NODE, 2)).await;
    let ack = |user_id: u64, device_id: u64, seq: u64| ConnAckRequest {
        device: Some(DeviceRef { user_id, device_id }),
        seq,
    };
    let acks = vec![
        ack(first.user_id, first.device_id, 7),
        ack(second.user_id, second.device_id, 3),
        // The same device twice: the higher seq counts.
        ack(second.user_id, second.device_id, 9),
        // Another user's device.
        ack(first.user_id, second.device_id, 20),
        // An unknown device.
        ack(first.user_id, i64::MAX as u64, 1),
        // A seq above the bigint range.
        ack(first.user_id, first.device_id, u64::MAX),
        // No device at all.
        ConnAckRequest {
            device: None,
            seq: 1,
        },
    ];

    let reply = logic
        .client
        .ack_many(ConnAckManyRequest { acks })
        .await
        .expect("AckMany")
        .into_inner();
    assert_eq!(reply.failed, 4);

    let db = postgres().await;
    assert_eq!(acked_seq(&db, first.device_id).await, 7);
    assert_eq!(acked_seq(&db, second.device_id).await, 9);

    let too_many = vec![ack(first.user_id, first.device_id, 1); 1025];
    let status = logic
        .client
        .ack_many(ConnAckManyRequest { acks: too_many })
        .await
        .expect_err("1025 acks");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_code(&status), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn server_send_posts_as_user_with_device_zero() {
    let mut logic = TestLogic::start(config_with_secret()).await;
    let mut ext = logic.ext_client().await;
    let (_, bot) = new_user_device(&mut logic.client, "bot", false, conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "bot_to", true, conn(NODE, 2)).await;
    let request = |secret: Option<&str>, sender_user_id: u64| {
        let mut request = tonic::Request::new(ServerSendRequest {
            sender_user_id,
            send: Some(text_to(ConversationType::User, receiver.user_id, "notice")),
        });
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert("im-server-secret", secret.parse().expect("ascii"));
        }
        request
    };

    let reply = ext
        .server_send(request(Some(SECRET), bot.user_id))
        .await
        .expect("server send")
        .into_inner();

    assert_eq!(reply.seq, 1);
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert_eq!(inbox.messages[0].sender_user_id, bot.user_id);
    assert_eq!(inbox.messages[0].sender_device_id, 0);
    for wrong in [None, Some("a wrong server secret")] {
        let status = ext
            .server_send(request(wrong, bot.user_id))
            .await
            .expect_err("wrong secret");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(error_code(&status), ErrorCode::PermissionDenied);
    }
    let status = ext
        .server_send(request(Some(SECRET), i64::MAX as u64))
        .await
        .expect_err("unknown sender");
    assert_eq!(error_code(&status), ErrorCode::NotFound);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn server_send_without_configured_secret_is_denied() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let bot = new_device(&mut logic.client, "nosecret", conn(NODE, 1)).await;
    let mut request = tonic::Request::new(ServerSendRequest {
        sender_user_id: bot.user_id,
        send: Some(text_to(ConversationType::User, bot.user_id, "x")),
    });
    request
        .metadata_mut()
        .insert("im-server-secret", "".parse().expect("ascii"));

    let status = ext.server_send(request).await.expect_err("disabled");

    assert_eq!(error_code(&status), ErrorCode::PermissionDenied);
    assert!(
        status.message().contains("set IM_LOGIC_SERVER_SECRET"),
        "{status:?}"
    );
    assert!(status.message().contains("ServerSend"), "{status:?}");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn friends_may_message_each_other_both_ways() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "pair", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "pair", conn(NODE, 2)).await;
    make_friends(&mut ext, &a, &b).await;

    send_text(&mut logic.client, &a, b.user_id, "a to b")
        .await
        .expect("a to b");
    send_text(&mut logic.client, &b, a.user_id, "b to a")
        .await
        .expect("b to a");

    let inbox = sync(&mut logic.client, &a, 0, 0).await.expect("sync");
    assert_eq!(seqs(&inbox), vec![1, 2]);
    logic.server.shutdown().await;
}

/// Reads the acked seq stored for `device_id`.
async fn acked_seq(db: &tokio_postgres::Client, device_id: u64) -> i64 {
    db.query_one(
        "SELECT acked_seq FROM device_acks WHERE device_id = $1",
        &[&i64::try_from(device_id).expect("bigint")],
    )
    .await
    .expect("ack row")
    .get(0)
}
