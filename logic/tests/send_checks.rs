//! Checks of SEND and ServerSend requests. content_type and client_msg_id are stored as
//! PostgreSQL text, so a control character is rejected before the send reaches a batch, and one
//! device's bad send cannot fail the sends stored with it. A rejected send names the receiver.

mod common;

use common::{
    conn, device_ref, error_code, make_friends, new_device, send, text_to, TestLogic, NODE,
};
use im_proto::v1::{
    ConnSendManyRequest, ConnSendRequest, ConversationType, ErrorCode, SendRequest,
    ServerSendRequest,
};

const SERVER_SECRET: &str = "send-checks-server-secret";

fn with_content_type(receiver_id: u64, content_type: &str) -> SendRequest {
    SendRequest {
        content_type: content_type.to_owned(),
        ..text_to(ConversationType::User, receiver_id, "hi")
    }
}

fn with_client_msg_id(receiver_id: u64, client_msg_id: &str) -> SendRequest {
    SendRequest {
        client_msg_id: client_msg_id.to_owned(),
        ..text_to(ConversationType::User, receiver_id, "hi")
    }
}

#[tokio::test]
async fn send_fields_reject_control_characters() {
    let mut logic = TestLogic::start(im_logic::Config {
        server_secret: SERVER_SECRET.to_owned(),
        ..common::test_config()
    })
    .await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "sc_a", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "sc_b", conn(NODE, 2)).await;
    make_friends(&mut ext, &a, &b).await;
    let to = b.user_id;
    let cases = [
        (with_content_type(to, "text/plain\0"), "content_type", "NUL"),
        (
            with_content_type(to, "text/plain\r\nx: y"),
            "content_type",
            "CR LF",
        ),
        (with_client_msg_id(to, "id\0"), "client_msg_id", "NUL"),
        (
            with_client_msg_id(to, "id\n2"),
            "client_msg_id",
            "line feed",
        ),
        (
            with_client_msg_id(to, "id\u{9b}"),
            "client_msg_id",
            "C1 control",
        ),
    ];

    for (request, field, case) in cases {
        let from_device = send(&mut logic.client, &a, request.clone())
            .await
            .expect_err(case);
        let mut server_send = tonic::Request::new(ServerSendRequest {
            sender_user_id: a.user_id,
            send: Some(request),
        });
        server_send.metadata_mut().insert(
            "im-server-secret",
            SERVER_SECRET.parse().expect("ASCII secret"),
        );
        let from_back_end = ext.server_send(server_send).await.expect_err(case);

        for status in [from_device, from_back_end] {
            common::assert_invalid(&status, field, case);
        }
    }
    send(
        &mut logic.client,
        &a,
        with_content_type(to, "text/plain; charset=utf-8"),
    )
    .await
    .expect("a printable content type passes");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn rejected_send_does_not_fail_its_batch() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "sb_a", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "sb_b", conn(NODE, 2)).await;
    make_friends(&mut ext, &a, &b).await;
    let good = |text: &str| ConnSendRequest {
        device: device_ref(&b),
        send: Some(text_to(ConversationType::User, a.user_id, text)),
    };
    let bad = ConnSendRequest {
        device: device_ref(&a),
        send: Some(with_client_msg_id(b.user_id, "poison\0")),
    };
    // ConnSendMany queues its sends at once, so they share a batch transaction.
    let sends = vec![good("one"), good("two"), bad, good("three"), good("four")];

    let outcomes = logic
        .client
        .send_many(ConnSendManyRequest { sends })
        .await
        .expect("ConnSendMany")
        .into_inner()
        .outcomes;

    let codes: Vec<ErrorCode> = outcomes
        .iter()
        .map(|outcome| ErrorCode::try_from(outcome.code).expect("known code"))
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::Ok,
            ErrorCode::Ok,
            ErrorCode::InvalidArgument,
            ErrorCode::Ok,
            ErrorCode::Ok
        ],
        "{outcomes:?}"
    );
    let stored = common::sync(&mut logic.client, &a, 0, 0)
        .await
        .expect("sync")
        .messages;
    let texts: Vec<&[u8]> = stored
        .iter()
        .map(|message| message.content.as_ref())
        .collect();
    assert_eq!(texts, [&b"one"[..], b"two", b"three", b"four"]);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn send_errors_name_the_receiver() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "sr_a", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "sr_b", conn(NODE, 2)).await;
    let stranger = new_device(&mut logic.client, "sr_c", conn(NODE, 3)).await;
    let group = common::create_group(&mut ext, &b, &[]).await;
    let unknown = i64::MAX as u64;
    let cases = [
        (
            ConversationType::User,
            unknown,
            ErrorCode::ReceiverNotFound,
            "unknown user",
        ),
        (
            ConversationType::Group,
            unknown,
            ErrorCode::ReceiverNotFound,
            "unknown group",
        ),
        (
            ConversationType::User,
            stranger.user_id,
            ErrorCode::NotFriend,
            "a stranger",
        ),
        (
            ConversationType::Group,
            group.group_id,
            ErrorCode::NotGroupMember,
            "a group of others",
        ),
    ];

    for (conversation, receiver_id, expected, case) in cases {
        let status = send(
            &mut logic.client,
            &a,
            text_to(conversation, receiver_id, "hi"),
        )
        .await
        .expect_err(case);
        assert_eq!(error_code(&status), expected, "{case}");
        assert!(
            status.message().contains(&receiver_id.to_string()),
            "{case}: {}",
            status.message()
        );
    }
    logic.server.shutdown().await;
}
