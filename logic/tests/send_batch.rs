//! Group commit of sends: concurrent sends share transactions and still get gap-free seqs,
//! idempotent retries and their own errors, against the test PostgreSQL and Redis.

mod common;

use std::collections::HashMap;

use common::{
    conn, error_code, make_friends, new_device, new_user_device, send, sync, text_to, TestLogic,
    NODE,
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
