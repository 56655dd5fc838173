//! Group commit of sends: concurrent sends share transactions and still get gap-free seqs,
//! idempotent retries and their own errors, against the test PostgreSQL and Redis.

mod common;

use std::collections::HashMap;

use common::{
    conn, error_code, make_friends, new_device, new_user_device, postgres, send,
    sender_and_receiver, statement_waits, sync, text_to, HeldBatch, TestLogic, NODE,
};
use im_proto::v1::{ConversationType, ErrorCode, SendReply, SyncReply};
use tonic::Status;

fn seqs(reply: &SyncReply) -> Vec<u64> {
    reply.messages.iter().map(|message| message.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sends_from_fifty_devices_share_few_transactions() {
    let mut logic = TestLogic::start_default().await;
    let mut receivers = Vec::new();
    for i in 0..10 {
        let (_, device) = new_user_device(&mut logic.client, "target", true, conn(NODE, i)).await;
        receivers.push(device);
    }
    let mut senders = Vec::new();
    for i in 0..50 {
        senders.push(new_device(&mut logic.client, "burst", conn(NODE, 100 + i)).await);
    }
    let batches_before = logic.server.send_batches().batches();

    // Sender i sends its 10 messages to receivers i, i+1, ... (mod 10): every receiver gets
    // 50 messages from many senders.
    let sends = (0..500usize).map(|n| {
        let mut client = logic.client.clone();
        let sender = senders[n % 50].clone();
        let receiver_id = receivers[(n % 50 + n / 50) % 10].user_id;
        tokio::spawn(async move {
            let message = text_to(ConversationType::User, receiver_id, &format!("m{n}"));
            send(&mut client, &sender, message).await
        })
    });
    let replies = futures::future::join_all(sends).await;
    let batches = logic.server.send_batches().batches() - batches_before;

    for reply in replies {
        reply.expect("task").expect("send succeeds");
    }
    assert!(batches <= 100, "500 sends took {batches} transactions");
    for receiver in &receivers {
        let inbox = sync(&mut logic.client, receiver, 0, 500)
            .await
            .expect("sync");
        assert_eq!(seqs(&inbox), (1..=50).collect::<Vec<u64>>());
    }
    for sender in &senders {
        let outbox = sync(&mut logic.client, sender, 0, 0).await.expect("sync");
        assert_eq!(seqs(&outbox), (1..=10).collect::<Vec<u64>>());
    }
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_repeated_in_one_burst_stores_once() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "twice", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "twice_to", true, conn(NODE, 2)).await;
    let repeated = text_to(ConversationType::User, receiver.user_id, "once");

    // The same request three times among other sends, all queued at once.
    let sends = (0..30usize).map(|n| {
        let mut client = logic.client.clone();
        let sender = sender.clone();
        let message = if n % 10 == 0 {
            repeated.clone()
        } else {
            text_to(
                ConversationType::User,
                receiver.user_id,
                &format!("other {n}"),
            )
        };
        tokio::spawn(async move { (n, send(&mut client, &sender, message).await) })
    });
    let replies = futures::future::join_all(sends).await;

    let mut repeated_replies: Vec<SendReply> = Vec::new();
    for reply in replies {
        let (n, reply) = reply.expect("task");
        let reply = reply.expect("send succeeds");
        if n % 10 == 0 {
            repeated_replies.push(reply);
        }
    }
    assert!(repeated_replies.iter().all(|r| *r == repeated_replies[0]));
    let inbox = sync(&mut logic.client, &receiver, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=28).collect::<Vec<u64>>(), "stored once");
    let once: Vec<_> = inbox
        .messages
        .iter()
        .filter(|m| m.client_msg_id == repeated.client_msg_id)
        .collect();
    assert_eq!(once.len(), 1);
    assert_eq!(once[0].message_id, repeated_replies[0].message_id);
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_sends_fail_alone_and_free_their_keys() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let sender = new_device(&mut logic.client, "mixed", conn(NODE, 1)).await;
    let (_, open) = new_user_device(&mut logic.client, "mixed_open", true, conn(NODE, 2)).await;
    let closed = new_device(&mut logic.client, "mixed_closed", conn(NODE, 3)).await;
    let requests: Vec<_> = (0..40usize)
        .map(|n| {
            let receiver = if n % 2 == 0 { &open } else { &closed };
            text_to(ConversationType::User, receiver.user_id, &format!("m{n}"))
        })
        .collect();

    let replies = send_all(&logic, &sender, &requests).await;

    for (n, reply) in replies.iter().enumerate() {
        match reply {
            Ok(_) => assert_eq!(n % 2, 0, "send {n} to the open user"),
            Err(status) => assert_eq!(error_code(status), ErrorCode::NotFriend, "send {n}"),
        }
    }
    let inbox = sync(&mut logic.client, &open, 0, 100).await.expect("sync");
    assert_eq!(seqs(&inbox), (1..=20).collect::<Vec<u64>>());
    let outbox = sync(&mut logic.client, &sender, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&outbox), (1..=20).collect::<Vec<u64>>());

    // A rejected key was released: once they are friends, the same request is stored.
    make_friends(&mut ext, &sender, &closed).await;
    let retried = send(&mut logic.client, &sender, requests[1].clone())
        .await
        .expect("retry after friendship");
    assert_eq!(retried.seq, 21);
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_controls_fail_alone() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "bidi_batch", conn(NODE, 1)).await;
    let (_, open) = new_user_device(&mut logic.client, "bidi_open", true, conn(NODE, 2)).await;
    // Every third send carries a bidirectional control in a checked text field; the content
    // contains one too, and content is opaque bytes that nothing checks.
    let requests: Vec<_> = (0..30usize)
        .map(|n| {
            let mut request = text_to(
                ConversationType::User,
                open.user_id,
                &format!("m{n} \u{202e}"),
            );
            match n % 6 {
                0 => request.content_type = "text/\u{202e}plain".to_owned(),
                3 => request.client_msg_id = format!("{}\u{2067}", request.client_msg_id),
                _ => {}
            }
            request
        })
        .collect();

    let replies = send_all(&logic, &sender, &requests).await;

    for (n, reply) in replies.iter().enumerate() {
        match (n % 6, reply) {
            (0, Err(status)) => {
                common::assert_invalid(status, "content_type", &format!("send {n}"));
                assert!(status.message().contains("U+202E at character 5"));
            }
            (3, Err(status)) => {
                common::assert_invalid(status, "client_msg_id", &format!("send {n}"));
                assert!(status.message().contains("U+2067"));
            }
            (0 | 3, Ok(_)) => panic!("send {n} was stored"),
            (_, reply) => assert!(reply.is_ok(), "send {n}: {reply:?}"),
        }
    }
    let inbox = sync(&mut logic.client, &open, 0, 100).await.expect("sync");
    assert_eq!(seqs(&inbox), (1..=20).collect::<Vec<u64>>());
    assert!(inbox
        .messages
        .iter()
        .all(|message| message.content.ends_with("\u{202e}".as_bytes())));
    logic.server.shutdown().await;
}

async fn send_all(
    logic: &TestLogic,
    sender: &im_proto::v1::LoginReply,
    requests: &[im_proto::v1::SendRequest],
) -> Vec<Result<SendReply, Status>> {
    let tasks = requests.iter().map(|request| {
        let mut client = logic.client.clone();
        let (sender, request) = (sender.clone(), request.clone());
        tokio::spawn(async move { send(&mut client, &sender, request).await })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|reply| reply.expect("task"))
        .collect()
}

/// Returns `count` direct messages to `receiver_id` with the texts m0, m1 and so on, except
/// the one at `index`, which has the text `text`.
fn texts_with(
    receiver_id: u64,
    count: usize,
    index: usize,
    text: &str,
) -> Vec<im_proto::v1::SendRequest> {
    (0..count)
        .map(|n| {
            let content = if n == index {
                text.to_owned()
            } else {
                format!("m{n}")
            };
            text_to(ConversationType::User, receiver_id, &content)
        })
        .collect()
}

/// Sends `requests` at once while `batch` keeps the batching task waiting, so that they share
/// its next transaction, then releases it after 500 ms. Returns their replies in order.
async fn send_while_held(
    logic: &TestLogic,
    sender: &im_proto::v1::LoginReply,
    requests: &[im_proto::v1::SendRequest],
    batch: HeldBatch,
) -> Vec<Result<SendReply, Status>> {
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        batch.release().await
    };
    let (replies, first_reply) = tokio::join!(send_all(logic, sender, requests), release);
    first_reply.expect("held send succeeds");
    replies
}

#[tokio::test]
async fn batch_of_one_still_stores_every_send() {
    let config = im_logic::Config {
        send_batch_max: 1,
        ..common::test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let sender = new_device(&mut logic.client, "single", conn(NODE, 1)).await;
    let (_, receiver) = new_user_device(&mut logic.client, "single_to", true, conn(NODE, 2)).await;
    let requests: Vec<_> = (0..10)
        .map(|n| text_to(ConversationType::User, receiver.user_id, &format!("m{n}")))
        .collect();

    let replies = send_all(&logic, &sender, &requests).await;

    let mut by_seq: HashMap<u64, u64> = HashMap::new();
    for reply in replies {
        let reply = reply.expect("send succeeds");
        by_seq.insert(reply.seq, reply.message_id);
    }
    assert_eq!(by_seq.len(), 10);
    assert_eq!(logic.server.send_batches().batches(), 10);
    let inbox = sync(&mut logic.client, &receiver, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=10).collect::<Vec<u64>>());
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_keys_on_two_servers_store_once() {
    let mut first = TestLogic::start_default().await;
    let second = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut first.client, "twin_to", true, conn(NODE, 1)).await;
    let sender = new_device(&mut first.client, "twin", conn(NODE, 2)).await;

    // Each message goes to both servers at once, as a device retrying on another node would.
    let sends = (0..40).map(|index| {
        let message = text_to(
            ConversationType::User,
            receiver.user_id,
            &format!("message {index}"),
        );
        let (mut one, mut other) = (first.client.clone(), second.client.clone());
        let sender = sender.clone();
        tokio::spawn(async move {
            tokio::join!(
                send(&mut one, &sender, message.clone()),
                send(&mut other, &sender, message)
            )
        })
    });
    for joined in futures::future::join_all(sends).await {
        let (one, other) = joined.expect("task");
        assert_eq!(one.expect("first server"), other.expect("second server"));
    }

    let inbox = sync(&mut first.client, &receiver, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=40).collect::<Vec<u64>>());
    let outbox = sync(&mut first.client, &sender, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&outbox), (1..=40).collect::<Vec<u64>>());
    first.server.shutdown().await;
    second.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_stored_meanwhile_returns_its_reply() {
    let mut logic = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut logic.client, "race_to", true, conn(NODE, 1)).await;
    let sender = new_device(&mut logic.client, "race", conn(NODE, 2)).await;
    let message = text_to(ConversationType::User, receiver.user_id, "raced");

    // Another transaction writes the key first and commits only once the batch waits on it.
    let mut db = postgres().await;
    let other = db.transaction().await.expect("begin");
    let row = other
        .query_one(
            "INSERT INTO sent_messages \
             (sender_user_id, sender_device_id, client_msg_id, message_id, sender_seq, sent_at) \
             VALUES ($1, $2, $3, nextval('message_ids'), 7, now()) RETURNING message_id",
            &[
                &i64::try_from(sender.user_id).unwrap(),
                &i64::try_from(sender.device_id).unwrap(),
                &message.client_msg_id,
            ],
        )
        .await
        .expect("insert the key");
    let message_id = u64::try_from(row.get::<_, i64>(0)).unwrap();
    let mut client = logic.client.clone();
    let (racing_sender, racing_message) = (sender.clone(), message.clone());
    let racing =
        tokio::spawn(async move { send(&mut client, &racing_sender, racing_message).await });

    let waited = key_insert_waits().await;
    assert!(waited, "the batch waits for the other transaction's key");
    other.commit().await.expect("commit");

    let reply = racing.await.expect("task").expect("send succeeds");
    assert_eq!(reply.message_id, message_id);
    assert_eq!(reply.seq, 7);
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert!(
        inbox.messages.is_empty(),
        "nothing stored for the repeated key"
    );
    let next = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::User, receiver.user_id, "next"),
    )
    .await
    .expect("next send");
    assert_eq!(next.seq, 1, "the rolled-back attempt took no seq");
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_stream_on_two_servers_stores_once() {
    let mut first = TestLogic::start_default().await;
    let second = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut first.client, "mirror_to", true, conn(NODE, 1)).await;
    let mut senders = Vec::new();
    for _ in 0..20 {
        senders.push(new_device(&mut first.client, "mirror", conn(NODE, 2)).await);
    }

    // Every sender streams 30 messages, each to both servers at once, 5 ms apart.
    let mut tasks = Vec::new();
    for (number, sender) in senders.iter().enumerate() {
        for index in 0..30u64 {
            let message = text_to(
                ConversationType::User,
                receiver.user_id,
                &format!("sender {number} message {index}"),
            );
            let (mut one, mut other) = (first.client.clone(), second.client.clone());
            let sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(index * 5)).await;
                tokio::join!(
                    send(&mut one, &sender, message.clone()),
                    send(&mut other, &sender, message)
                )
            }));
        }
    }
    for joined in futures::future::join_all(tasks).await {
        let (one, other) = joined.expect("task");
        assert_eq!(one.expect("first server"), other.expect("second server"));
    }

    let mut received = Vec::new();
    while received.len() < 600 {
        let after = received.last().copied().unwrap_or(0);
        let page = sync(&mut first.client, &receiver, after, 100)
            .await
            .expect("sync");
        if page.messages.is_empty() {
            break;
        }
        received.extend(seqs(&page));
    }
    assert_eq!(received, (1..=600).collect::<Vec<u64>>());
    for sender in &senders {
        let outbox = sync(&mut first.client, sender, 0, 100).await.expect("sync");
        assert_eq!(seqs(&outbox), (1..=30).collect::<Vec<u64>>());
    }
    first.server.shutdown().await;
    second.server.shutdown().await;
}

/// A logic process of the previous version claims a key before it takes seqs; this version
/// takes seqs before it writes keys. The same key sent through both at once deadlocks, and
/// PostgreSQL aborts one of the transactions; the send through this version still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_with_previous_version_is_retried() {
    let mut logic = TestLogic::start_default().await;
    let (_, receiver) = new_user_device(&mut logic.client, "mixed_to", true, conn(NODE, 1)).await;
    let sender = new_device(&mut logic.client, "mixed", conn(NODE, 2)).await;
    let message = text_to(ConversationType::User, receiver.user_id, "mixed");

    let mut db = postgres().await;
    let previous = db.transaction().await.expect("begin");
    // The previous version's first statement: claim the key.
    previous
        .execute(
            "INSERT INTO sent_messages \
             (sender_user_id, sender_device_id, client_msg_id, message_id, sender_seq, sent_at) \
             VALUES ($1, $2, $3, nextval('message_ids'), 0, now())",
            &[
                &i64::try_from(sender.user_id).unwrap(),
                &i64::try_from(sender.device_id).unwrap(),
                &message.client_msg_id,
            ],
        )
        .await
        .expect("claim the key");
    let mut client = logic.client.clone();
    let (racing_sender, racing_message) = (sender.clone(), message.clone());
    let racing =
        tokio::spawn(async move { send(&mut client, &racing_sender, racing_message).await });
    let waited = key_insert_waits().await;
    assert!(waited, "the batch waits for the previous version's key");

    // The previous version's second statement: take the seqs, which this version holds.
    let mut users = [
        i64::try_from(sender.user_id).unwrap(),
        i64::try_from(receiver.user_id).unwrap(),
    ];
    users.sort_unstable();
    let assigned = previous
        .execute(
            "INSERT INTO user_seq (user_id, last_seq) \
             SELECT recipient, 1 FROM unnest($1::bigint[]) AS recipient ORDER BY recipient \
             ON CONFLICT (user_id) DO UPDATE SET last_seq = user_seq.last_seq + 1",
            &[&users.to_vec()],
        )
        .await;
    if assigned.is_ok() {
        previous.commit().await.expect("commit");
    } else {
        drop(previous);
    }

    let reply = racing.await.expect("task").expect("send succeeds");
    assert!(reply.message_id > 0);
    let inbox = sync(&mut logic.client, &receiver, 0, 0)
        .await
        .expect("sync");
    assert!(inbox.messages.len() <= 1, "stored at most once");
    logic.server.shutdown().await;
}

/// Polls PostgreSQL for up to 5 s until a statement that inserts send keys waits for a lock.
/// Returns whether one did.
async fn key_insert_waits() -> bool {
    statement_waits("query LIKE 'INSERT INTO sent_messages%'").await
}

/// A send whose data PostgreSQL rejects fails alone: the sends that shared its transaction are
/// stored one at a time, and its device gets INTERNAL, not an UNAVAILABLE that invites a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rejected_by_database_fails_alone() {
    let mut logic = TestLogic::start_default().await;
    let (sender, receiver) = sender_and_receiver(&mut logic.client, "rejected", NODE).await;
    let receiver_id = i64::try_from(receiver.user_id).unwrap();

    // The trigger plays the part of data that passes the logic tier's checks but not
    // PostgreSQL's.
    let rejected_text = format!("rejected-{receiver_id}");
    let trigger = reject_content(&rejected_text, receiver_id, 0.0).await;
    let batch = HeldBatch::start(&logic.client, &sender, &receiver, "held").await;
    let requests = texts_with(receiver.user_id, 20, 7, &rejected_text);
    let replies = send_while_held(&logic, &sender, &requests, batch).await;
    drop_reject_trigger(&trigger).await;

    for (n, reply) in replies.iter().enumerate() {
        if n == 7 {
            let status = reply.as_ref().expect_err("the rejected send fails");
            assert_eq!(error_code(status), ErrorCode::Internal);
        } else {
            assert!(reply.is_ok(), "send {n}: {reply:?}");
        }
    }
    let inbox = sync(&mut logic.client, &receiver, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=21).collect::<Vec<u64>>());
    logic.server.shutdown().await;
}

/// Creates a trigger that raises check_violation on every message copy whose content is
/// `content`, after sleeping `sleep_secs`, and returns its name for [`drop_reject_trigger`].
/// It matches only the caller's content, because other tests share the table.
async fn reject_content(content: &str, tag: i64, sleep_secs: f64) -> String {
    let trigger = format!("reject_message_{tag}");
    postgres()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             PERFORM pg_sleep({sleep_secs}); \
             RAISE EXCEPTION 'rejected by the test trigger' USING ERRCODE = 'check_violation'; \
             END $$; \
             CREATE TRIGGER {trigger} BEFORE INSERT ON messages FOR EACH ROW \
             WHEN (NEW.content = '{content}'::bytea) EXECUTE FUNCTION {trigger}();"
        ))
        .await
        .expect("create the trigger");
    trigger
}

async fn drop_reject_trigger(trigger: &str) {
    postgres()
        .await
        .batch_execute(&format!(
            "DROP TRIGGER {trigger} ON messages; DROP FUNCTION {trigger}();"
        ))
        .await
        .expect("drop the trigger");
}

/// A send whose data PostgreSQL rejects gets INTERNAL also when it is the only send of its
/// batch, as on a quiet server, and takes no seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_send_alone_in_batch_is_internal() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "rejected_one", conn(NODE, 1)).await;
    let (_, receiver) =
        new_user_device(&mut logic.client, "rejected_one_to", true, conn(NODE, 2)).await;
    let receiver_id = i64::try_from(receiver.user_id).unwrap();
    let rejected_text = format!("rejected-{receiver_id}");
    let trigger = reject_content(&rejected_text, receiver_id, 0.0).await;

    let rejected = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::User, receiver.user_id, &rejected_text),
    )
    .await;
    let after = send(
        &mut logic.client,
        &sender,
        text_to(ConversationType::User, receiver.user_id, "after"),
    )
    .await;
    drop_reject_trigger(&trigger).await;

    let status = rejected.expect_err("the rejected send fails");
    assert_eq!(error_code(&status), ErrorCode::Internal, "{status:?}");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(after.expect("the next send is stored").seq, 1);
    let inbox = sync(&mut logic.client, &receiver, 0, 100)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), vec![1]);
    logic.server.shutdown().await;
}

/// When a rejected batch is stored again one send at a time, a send whose caller already gave
/// up (and got TIMEOUT) is not stored, as it would not be in a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_timed_out_before_rerun_are_not_stored() {
    let mut logic = TestLogic::start(im_logic::Config {
        db_timeout_ms: 1500,
        ..common::test_config()
    })
    .await;
    let (sender, receiver) = sender_and_receiver(&mut logic.client, "rerun_late", NODE).await;
    let receiver_id = i64::try_from(receiver.user_id).unwrap();
    // The rejected copy takes 0.9 s each time it is inserted: once in the batch, and again when
    // it is stored alone, so the sends after it are stored alone past their 1.5 s deadline.
    let rejected_text = format!("slow-rejected-{receiver_id}");
    let trigger = reject_content(&rejected_text, receiver_id, 0.9).await;

    let batch = HeldBatch::start(&logic.client, &sender, &receiver, "held").await;
    let mut client = logic.client.clone();
    let rejected_sender = sender.clone();
    let rejected_request = text_to(ConversationType::User, receiver.user_id, &rejected_text);
    let rejected =
        tokio::spawn(async move { send(&mut client, &rejected_sender, rejected_request).await });
    // Queued after the rejected send, so they come after it in the next batch.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let requests: Vec<_> = (0..10usize)
        .map(|n| {
            text_to(
                ConversationType::User,
                receiver.user_id,
                &format!("late{n}"),
            )
        })
        .collect();
    let queued = {
        let (logic, sender, requests) = (&logic, &sender, &requests);
        async move { send_all(logic, sender, requests).await }
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        batch.release().await
    };
    let (replies, first_reply) = tokio::join!(queued, release);
    let rejected = rejected.await.expect("task");
    first_reply.expect("held send succeeds");
    // Lets the batching task finish the sends it still stores alone.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    drop_reject_trigger(&trigger).await;

    assert!(rejected.is_err(), "the rejected send fails: {rejected:?}");
    let inbox = sync(&mut logic.client, &receiver, 0, 100)
        .await
        .expect("sync");
    let stored: Vec<&[u8]> = inbox.messages.iter().map(|m| &m.content[..]).collect();
    for (n, reply) in replies.iter().enumerate() {
        let content = format!("late{n}");
        let is_stored = stored.contains(&content.as_bytes());
        match reply {
            Ok(_) => assert!(is_stored, "send {n} got OK but is not stored"),
            Err(status) => assert!(!is_stored, "send {n} got {status:?} but is stored"),
        }
    }
    let expected: Vec<u64> = (1..=u64::try_from(stored.len()).unwrap()).collect();
    assert_eq!(seqs(&inbox), expected, "no seq gaps");
    logic.server.shutdown().await;
}

/// The sends of a rejected batch that are stored one at a time reach the receiver's engine
/// node in seq order, without the rejected one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_alone_pushes_in_seq_order() {
    let mut node = common::EngineRecorder::start().await;
    let mut logic = common::start_for_notices().await;
    let (sender, receiver) =
        sender_and_receiver(&mut logic.client, "rerun_push", &node.node()).await;
    let receiver_id = i64::try_from(receiver.user_id).unwrap();
    node.next_delivery().await;
    let rejected_text = format!("push-rejected-{receiver_id}");
    let trigger = reject_content(&rejected_text, receiver_id, 0.0).await;

    let batch = HeldBatch::start(&logic.client, &sender, &receiver, "held").await;
    let requests = texts_with(receiver.user_id, 12, 5, &rejected_text);
    let replies = send_while_held(&logic, &sender, &requests, batch).await;
    drop_reject_trigger(&trigger).await;

    let accepted = replies.iter().filter(|reply| reply.is_ok()).count();
    assert_eq!(accepted, 11, "every send but the rejected one: {replies:?}");
    let mut pushed = Vec::new();
    while pushed.len() < accepted + 1 {
        let request = node.next_delivery().await;
        for delivery in &request.deliveries {
            let message = delivery.message.as_ref().expect("message present");
            assert_ne!(&message.content[..], rejected_text.as_bytes());
            for target in &delivery.targets {
                pushed.push(target.seq);
            }
        }
    }
    assert_eq!(pushed, (2..=13).collect::<Vec<u64>>());
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

/// Group sends have a batching task of their own: while a group send waits for a member's seq
/// row, direct sends between other users are stored, and the group send is stored after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_pass_a_waiting_group_send() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "lane_owner", conn(NODE, 1)).await;
    let member = new_device(&mut logic.client, "lane_member", conn(NODE, 2)).await;
    let group = common::create_group(&mut ext, &owner, &[&member]).await;
    let first = text_to(ConversationType::Group, group.group_id, "first");
    send(&mut logic.client, &owner, first)
        .await
        .expect("first group send creates the seq rows");
    let (sender, receiver) = sender_and_receiver(&mut logic.client, "lane_direct", NODE).await;

    let request = text_to(ConversationType::Group, group.group_id, "held");
    let held = HeldBatch::start_send(&logic.client, &owner, member.user_id, request).await;
    let direct = (0..5).map(|n| {
        let mut client = logic.client.clone();
        let sender = sender.clone();
        let request = text_to(ConversationType::User, receiver.user_id, &format!("d{n}"));
        async move { send(&mut client, &sender, request).await }
    });
    let direct = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        futures::future::join_all(direct),
    )
    .await
    .expect("direct sends are stored while the group send waits");
    let held_reply = held.release().await.expect("held group send succeeds");

    for reply in direct {
        reply.expect("direct send succeeds");
    }
    let inbox = sync(&mut logic.client, &receiver, 0, 10)
        .await
        .expect("sync");
    assert_eq!(seqs(&inbox), (1..=6).collect::<Vec<u64>>());
    let member_inbox = sync(&mut logic.client, &member, 0, 10).await.expect("sync");
    assert_eq!(seqs(&member_inbox), [1, 2]);
    assert_eq!(member_inbox.messages[1].message_id, held_reply.message_id);
    logic.server.shutdown().await;
}
