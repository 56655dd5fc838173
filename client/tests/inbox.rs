//! Inbox behaviour against the in-process test server in `support`: hole filling by SYNC,
//! own sends, duplicates and acknowledgements over a real WebSocket.

mod support;

use std::time::Duration;

use im_client::inbox::Inbox;
use im_client::{
    Client, ClientError, ConnectOptions, ConversationType, ErrorCode, InboxError, Message,
    PacketType,
};
use support::TestServer;

/// Generous enough for a loaded CI machine.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(server: &TestServer) -> Client {
    let options = ConnectOptions {
        timeout: TIMEOUT,
        ..ConnectOptions::default()
    };
    Client::connect(&server.url, &options)
        .await
        .expect("connect to test server")
}

/// Makes the server push stored message `seq`. The push precedes the heartbeat reply.
async fn push(client: &Client, seq: u64) {
    client
        .request(PacketType::Heartbeat, format!("push:{seq}").into_bytes())
        .await
        .expect("push request");
}

/// Waits until the server has handled every packet sent so far, which it does in order.
async fn round_trip(client: &Client) {
    client.heartbeat().await.expect("heartbeat");
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

#[tokio::test]
async fn push_ahead_syncs_hole_in_pages() {
    let server = TestServer::start().await;
    server.store_messages(25);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99).with_page_limit(10);

    push(&client, 21).await;
    let batch = tokio::time::timeout(TIMEOUT, inbox.recv(&client))
        .await
        .expect("batch in time")
        .expect("batch");
    round_trip(&client).await;

    assert_eq!(seqs(&batch), (1..=25).collect::<Vec<_>>());
    assert_eq!(inbox.last_seq(), 25);
    assert_eq!(inbox.held(), 0);
    let observed = server.observed();
    // Page 11..=20 released the held 21, so the last page starts after 21.
    assert_eq!(observed.syncs, vec![(0, 10), (10, 10), (21, 10)]);
    assert_eq!(observed.acks, vec![25]);
}

/// A push that comes after a later one, within the grace, fills the hole without a SYNC.
#[tokio::test]
async fn late_push_within_grace_needs_no_sync() {
    let server = TestServer::start().await;
    server.store_messages(2);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99).with_hole_grace(TIMEOUT);

    push(&client, 2).await;
    let late_push = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        push(&client, 1).await;
    };
    let (batch, ()) = tokio::join!(
        tokio::time::timeout(TIMEOUT, inbox.recv(&client)),
        late_push
    );
    let batch = batch.expect("batch in time").expect("batch");
    round_trip(&client).await;

    assert_eq!(seqs(&batch), vec![1, 2]);
    let observed = server.observed();
    assert_eq!(observed.syncs, vec![], "the push filled the hole");
    assert_eq!(observed.acks, vec![2]);
}

#[tokio::test]
async fn own_send_delivered_at_reply_seq() {
    let server = TestServer::start().await;
    server.store_messages(3);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);

    let synced = inbox.resync(&client).await.expect("resync");
    let reply = inbox
        .send(
            &client,
            ConversationType::User,
            8,
            "hello",
            "text/plain",
            "m-1",
        )
        .await
        .expect("send");
    let before_recv = inbox.last_seq();
    let own = inbox.recv(&client).await.expect("own message");
    round_trip(&client).await;

    assert_eq!(seqs(&synced), vec![1, 2, 3]);
    assert_eq!(reply.seq, 4);
    assert_eq!(before_recv, 3, "the own copy counts once recv returns it");
    assert_eq!(inbox.last_seq(), 4);
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].seq, 4);
    assert_eq!(own[0].message_id, reply.message_id);
    assert_eq!(own[0].sender_user_id, 7);
    assert_eq!(own[0].sender_device_id, 99);
    assert_eq!(own[0].receiver_id, 8);
    assert_eq!(&own[0].content[..], b"hello");
    assert_eq!(own[0].client_msg_id, "m-1");
    assert_eq!(server.observed().acks, vec![3, 4]);
}

#[tokio::test]
async fn duplicate_pushes_delivered_once() {
    let server = TestServer::start().await;
    server.store_messages(2);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);

    push(&client, 1).await;
    push(&client, 1).await;
    push(&client, 2).await;
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let batch = tokio::time::timeout(TIMEOUT, inbox.recv(&client))
            .await
            .expect("batch in time")
            .expect("batch");
        delivered.extend(batch);
    }
    push(&client, 2).await;
    let more = tokio::time::timeout(Duration::from_millis(300), inbox.recv(&client)).await;

    assert_eq!(seqs(&delivered), vec![1, 2]);
    assert!(more.is_err(), "a duplicate was delivered: {more:?}");
    assert!(server.observed().syncs.is_empty());
}

#[tokio::test]
async fn resume_syncs_after_cursor_only() {
    let server = TestServer::start().await;
    server.store_messages(5);
    let client = connect(&server).await;
    let mut inbox = Inbox::resume(7, 99, 3);

    let synced = inbox.resync(&client).await.expect("resync");

    assert_eq!(seqs(&synced), vec![4, 5]);
    assert_eq!(server.observed().syncs, vec![(3, 100)]);
}

#[tokio::test]
async fn send_error_keeps_cursor() {
    let server = TestServer::start().await;
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);

    let error = inbox
        .send(&client, ConversationType::User, 8, "", "text/plain", "m-1")
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            InboxError::Client(ClientError::Server {
                code: ErrorCode::ContentEmpty,
                ..
            })
        ),
        "got {error:?}"
    );
    assert_eq!(inbox.last_seq(), 0);
}

#[tokio::test]
async fn closed_connection_is_client_error() {
    let server = TestServer::start().await;
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);
    // The server ends the TCP connection without a close frame on this token.
    let _ = client.sign_in(7, 99, "drop").await;

    let error = tokio::time::timeout(TIMEOUT, inbox.recv(&client))
        .await
        .expect("error in time")
        .unwrap_err();

    assert!(
        matches!(
            error,
            InboxError::Client(ClientError::Closed { code: 1006, .. })
        ),
        "got {error:?}"
    );
}

#[tokio::test]
async fn rejected_sync_retried_after_wait() {
    let server = TestServer::start().await;
    server.store_messages(25);
    server.reject_syncs(3, 30);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99).with_page_limit(10);

    let started = tokio::time::Instant::now();
    let batch = tokio::time::timeout(TIMEOUT, inbox.resync(&client))
        .await
        .expect("resync in time")
        .expect("resync");
    let waited = started.elapsed();
    round_trip(&client).await;

    assert_eq!(seqs(&batch), (1..=25).collect::<Vec<_>>());
    let syncs = server.observed().syncs.clone();
    assert_eq!(
        syncs.iter().map(|(after, _)| *after).collect::<Vec<_>>(),
        [0, 0, 0, 0, 10, 20],
        "three rejections of the first page, then three pages"
    );
    assert!(
        waited >= Duration::from_millis(90),
        "asked again before the named wait: {waited:?}"
    );
    assert_eq!(server.observed().acks, [25]);
}

#[tokio::test]
async fn endless_sync_rejections_fail() {
    let server = TestServer::start().await;
    server.store_messages(5);
    server.reject_syncs(u32::MAX, 1);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);

    let error = tokio::time::timeout(TIMEOUT, inbox.resync(&client))
        .await
        .expect("gives up in time")
        .unwrap_err();

    assert!(
        matches!(
            &error,
            InboxError::Client(ClientError::Server {
                code: ErrorCode::RateLimited,
                retry_after_ms: 1,
                ..
            })
        ),
        "got {error:?}"
    );
    assert_eq!(server.observed().syncs.len(), 21, "the first and 20 more");
    assert_eq!(inbox.last_seq(), 0);
}

/// Resyncs messages 1 to 3 from a test server that rejects the ack of 3 for rate, and returns
/// the server, the connection, the inbox and the resynced messages.
async fn resync_with_rejected_ack() -> (TestServer, Client, Inbox, Vec<Message>) {
    let server = TestServer::start().await;
    server.store_messages(3);
    server.reject_acks(1);
    let client = connect(&server).await;
    let mut inbox = Inbox::new(7, 99);
    let first = tokio::time::timeout(TIMEOUT, inbox.resync(&client))
        .await
        .expect("resync in time")
        .expect("resync");
    (server, client, inbox, first)
}

#[tokio::test]
async fn rejected_ack_resent_next_batch() {
    let (server, client, mut inbox, first) = resync_with_rejected_ack().await;
    server.store_messages(1);
    push(&client, 4).await;
    let second = tokio::time::timeout(TIMEOUT, inbox.recv(&client))
        .await
        .expect("batch in time")
        .expect("a rejected ack is no error");
    round_trip(&client).await;

    assert_eq!(seqs(&first), [1, 2, 3]);
    assert_eq!(seqs(&second), [4]);
    let acks = server.observed().acks.clone();
    // The inbox acks 3 again after the rejection's 20 ms when message 4 comes later.
    assert!(
        acks == [4] || acks == [3, 4],
        "the rejected ack of 3 is covered by 4, got {acks:?}"
    );
}

#[tokio::test]
async fn rejected_ack_resent_after_wait() {
    let (server, client, mut inbox, first) = resync_with_rejected_ack().await;
    // No message follows, so only the retry acks 3, after the 20 ms that the test server's
    // rejection names.
    let waiting = tokio::time::timeout(Duration::from_millis(500), inbox.recv(&client)).await;
    round_trip(&client).await;

    assert_eq!(seqs(&first), [1, 2, 3]);
    assert!(waiting.is_err(), "no batch without a message");
    assert_eq!(server.observed().acks, [3]);
}
