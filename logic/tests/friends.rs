//! Friend requests, accepts, lists and removal through `LogicExtService`.

mod common;

use common::{as_device, conn, error_code, make_friends, new_device, send_text, TestLogic, NODE};
use im_proto::v1::{
    ErrorCode, FriendRequest, FriendState, ListFriendsReply, ListFriendsRequest, LoginReply,
};
use tonic::Code;

fn to(user: &LoginReply) -> FriendRequest {
    FriendRequest {
        user_id: user.user_id,
    }
}

/// Returns the caller's list as (user id, state) pairs.
async fn friend_states(
    ext: &mut common::ExtClient,
    caller: &LoginReply,
) -> Vec<(u64, FriendState)> {
    let reply: ListFriendsReply = ext
        .list_friends(as_device(caller, ListFriendsRequest {}))
        .await
        .expect("list friends")
        .into_inner();
    reply
        .friends
        .iter()
        .map(|friend| {
            let state = FriendState::try_from(friend.state).expect("known state");
            (friend.user_id, state)
        })
        .collect()
}

#[tokio::test]
async fn request_then_accept_makes_friends() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "asker", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "asked", conn(NODE, 2)).await;

    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");

    assert_eq!(
        friend_states(&mut ext, &a).await,
        vec![(b.user_id, FriendState::RequestSent)]
    );
    assert_eq!(
        friend_states(&mut ext, &b).await,
        vec![(a.user_id, FriendState::RequestReceived)]
    );

    ext.accept_friend(as_device(&b, to(&a)))
        .await
        .expect("accept");

    assert_eq!(
        friend_states(&mut ext, &a).await,
        vec![(b.user_id, FriendState::Accepted)]
    );
    assert_eq!(
        friend_states(&mut ext, &b).await,
        vec![(a.user_id, FriendState::Accepted)]
    );
    let list = ext
        .list_friends(as_device(&a, ListFriendsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert!(list.friends[0].username.starts_with("asked_"));
    logic.server.shutdown().await;
}

#[tokio::test]
async fn request_to_a_user_who_asked_first_accepts() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "first", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "second", conn(NODE, 2)).await;
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("a asks");

    ext.request_friend(as_device(&b, to(&a)))
        .await
        .expect("b asks back");

    assert_eq!(
        friend_states(&mut ext, &a).await,
        vec![(b.user_id, FriendState::Accepted)]
    );
    send_text(&mut logic.client, &a, b.user_id, "friends now")
        .await
        .expect("friends may send");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_mutual_requests_make_friends() {
    let mut logic = TestLogic::start_default().await;
    let ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "mutual", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "mutual", conn(NODE, 2)).await;

    let (mut ext_a, mut ext_b) = (ext.clone(), ext.clone());
    let (from_a, from_b) = tokio::join!(
        ext_a.request_friend(as_device(&a, to(&b))),
        ext_b.request_friend(as_device(&b, to(&a)))
    );

    from_a.expect("a's request");
    from_b.expect("b's request");
    let mut ext = ext;
    assert_eq!(
        friend_states(&mut ext, &a).await,
        vec![(b.user_id, FriendState::Accepted)]
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn invalid_friend_requests_are_rejected() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "bad_req", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "bad_req", conn(NODE, 2)).await;
    let c = new_device(&mut logic.client, "bad_req", conn(NODE, 3)).await;
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("first request");
    make_friends(&mut ext, &a, &c).await;

    let cases = [
        (to(&a), ErrorCode::InvalidArgument, "to oneself"),
        (
            FriendRequest { user_id: 0 },
            ErrorCode::InvalidArgument,
            "to user 0",
        ),
        (
            FriendRequest {
                user_id: i64::MAX as u64,
            },
            ErrorCode::NotFound,
            "to an unknown user",
        ),
        (
            FriendRequest { user_id: u64::MAX },
            ErrorCode::NotFound,
            "to an id above bigint",
        ),
        (to(&b), ErrorCode::AlreadyExists, "while pending"),
        (to(&c), ErrorCode::AlreadyExists, "to a friend"),
    ];
    for (request, expected, case) in cases {
        let status = ext
            .request_friend(as_device(&a, request))
            .await
            .expect_err(case);
        assert_eq!(error_code(&status), expected, "{case}");
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn accept_needs_a_pending_request_from_that_user() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "acc", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "acc", conn(NODE, 2)).await;

    let nothing = ext
        .accept_friend(as_device(&b, to(&a)))
        .await
        .expect_err("no request");
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");
    let own = ext
        .accept_friend(as_device(&a, to(&b)))
        .await
        .expect_err("the asker cannot accept its own request");
    ext.accept_friend(as_device(&b, to(&a)))
        .await
        .expect("accept");
    let twice = ext
        .accept_friend(as_device(&b, to(&a)))
        .await
        .expect_err("already friends");

    assert_eq!(nothing.code(), Code::NotFound);
    assert_eq!(error_code(&nothing), ErrorCode::NotFound);
    assert_eq!(error_code(&own), ErrorCode::NotFound);
    assert_eq!(error_code(&twice), ErrorCode::NotFound);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn remove_friend_ends_direct_messages() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "rm", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "rm", conn(NODE, 2)).await;
    make_friends(&mut ext, &a, &b).await;

    ext.remove_friend(as_device(&b, to(&a)))
        .await
        .expect("remove");

    assert!(friend_states(&mut ext, &a).await.is_empty());
    assert!(friend_states(&mut ext, &b).await.is_empty());
    let status = send_text(&mut logic.client, &a, b.user_id, "still there?")
        .await
        .expect_err("no longer friends");
    assert_eq!(error_code(&status), ErrorCode::NotFriend);
    let again = ext
        .remove_friend(as_device(&b, to(&a)))
        .await
        .expect_err("nothing to remove");
    assert_eq!(error_code(&again), ErrorCode::NotFound);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn remove_friend_declines_a_pending_request() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "decline", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "decline", conn(NODE, 2)).await;
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");

    ext.remove_friend(as_device(&b, to(&a)))
        .await
        .expect("decline");

    assert!(friend_states(&mut ext, &a).await.is_empty());
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("a new request after the decline");
    logic.server.shutdown().await;
}
