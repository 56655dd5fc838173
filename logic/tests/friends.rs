//! Friend requests, accepts, lists and removal through `LogicExtService`, and the notices they
//! push to a recording engine node.

mod common;

use common::{
    as_device, conn, error_code, login, make_friends, new_device, new_user_device, send_text,
    EngineRecorder, TestLogic, NODE,
};
use im_proto::v1::{
    Delivery, DeliveryTarget, ErrorCode, FriendRequest, FriendState, ListFriendsReply,
    ListFriendsRequest, LoginReply, NoticeKind,
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

/// Returns the targets of a notice delivery as (device id, conn id), sorted, after checking
/// that no target carries a seq.
fn notice_targets(delivery: &Delivery) -> Vec<(u64, u64)> {
    let mut targets: Vec<(u64, u64)> = delivery
        .targets
        .iter()
        .map(|target: &DeliveryTarget| {
            assert_eq!(target.seq, 0, "a notice target with a seq");
            (target.device_id, target.conn_id)
        })
        .collect();
    targets.sort_unstable();
    targets
}

/// Checks a friend notice: its kind, the acting user and the other user.
fn assert_friend_notice(delivery: &Delivery, kind: NoticeKind, actor: u64, other: u64) {
    let notice = delivery.notice.as_ref().expect("a notice");
    assert_eq!(notice.kind, kind as i32, "{notice:?}");
    assert_eq!(notice.actor_user_id, actor, "{notice:?}");
    assert_eq!(notice.user_id, other, "{notice:?}");
    assert_eq!(notice.group_id, 0, "{notice:?}");
    assert!(notice.member_ids.is_empty(), "{notice:?}");
    assert!(notice.at_ms > 0, "{notice:?}");
}

#[tokio::test]
async fn friend_changes_push_notices_to_both_users() {
    let mut logic = common::start_for_notices().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let (a_name, a) =
        new_user_device(&mut logic.client, "n_asker", false, conn(&node.node(), 1)).await;
    let a_second = login(&mut logic.client, &a_name, 0, conn(&node.node(), 2))
        .await
        .expect("second device of the asker");
    let b = new_device(&mut logic.client, "n_asked", conn(&node.node(), 3)).await;
    // Every online device of both users, the calling one included.
    let mut everyone = vec![(a.device_id, 1), (a_second.device_id, 2), (b.device_id, 3)];
    everyone.sort_unstable();

    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");
    let requested = node.next_notice().await;
    assert_friend_notice(
        &requested,
        NoticeKind::FriendRequested,
        a.user_id,
        b.user_id,
    );
    assert_eq!(notice_targets(&requested), everyone);

    ext.accept_friend(as_device(&b, to(&a)))
        .await
        .expect("accept");
    let accepted = node.next_notice().await;
    assert_friend_notice(&accepted, NoticeKind::FriendAccepted, b.user_id, a.user_id);
    assert_eq!(notice_targets(&accepted), everyone);

    ext.remove_friend(as_device(&a, to(&b)))
        .await
        .expect("remove");
    let removed = node.next_notice().await;
    assert_friend_notice(&removed, NoticeKind::FriendRemoved, a.user_id, b.user_id);
    assert_eq!(notice_targets(&removed), everyone);

    node.assert_no_more_notices().await;
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn request_back_pushes_friend_accepted() {
    let mut logic = common::start_for_notices().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let a = new_device(&mut logic.client, "n_first", conn(&node.node(), 1)).await;
    let b = new_device(&mut logic.client, "n_second", conn(&node.node(), 2)).await;
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("a asks");
    let requested = node.next_notice().await;
    assert_friend_notice(
        &requested,
        NoticeKind::FriendRequested,
        a.user_id,
        b.user_id,
    );

    ext.request_friend(as_device(&b, to(&a)))
        .await
        .expect("b asks back");

    let accepted = node.next_notice().await;
    assert_friend_notice(&accepted, NoticeKind::FriendAccepted, b.user_id, a.user_id);
    let mut both = vec![(a.device_id, 1), (b.device_id, 2)];
    both.sort_unstable();
    assert_eq!(notice_targets(&accepted), both);
    node.assert_no_more_notices().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn failed_friend_changes_push_no_notice() {
    let mut logic = common::start_for_notices().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let a = new_device(&mut logic.client, "n_fail_a", conn(&node.node(), 1)).await;
    let b = new_device(&mut logic.client, "n_fail_b", conn(&node.node(), 2)).await;

    let accept = ext.accept_friend(as_device(&b, to(&a))).await;
    assert_eq!(
        error_code(&accept.expect_err("nothing to accept")),
        ErrorCode::NotFound
    );
    let remove = ext.remove_friend(as_device(&a, to(&b))).await;
    assert_eq!(
        error_code(&remove.expect_err("nothing to remove")),
        ErrorCode::NotFound
    );
    node.assert_no_more_notices().await;

    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");
    let requested = node.next_notice().await;
    assert_friend_notice(
        &requested,
        NoticeKind::FriendRequested,
        a.user_id,
        b.user_id,
    );
    let again = ext.request_friend(as_device(&a, to(&b))).await;
    assert_eq!(
        error_code(&again.expect_err("a pending request")),
        ErrorCode::AlreadyExists
    );
    node.assert_no_more_notices().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn friend_errors_name_the_other_user() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "fname", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "fname", conn(NODE, 2)).await;
    let c = new_device(&mut logic.client, "fname", conn(NODE, 3)).await;
    ext.request_friend(as_device(&a, to(&b)))
        .await
        .expect("request");
    make_friends(&mut ext, &a, &c).await;
    let unknown = i64::MAX as u64;

    let pending = ext
        .request_friend(as_device(&a, to(&b)))
        .await
        .expect_err("pending");
    let friends = ext
        .request_friend(as_device(&a, to(&c)))
        .await
        .expect_err("friends");
    let missing = ext
        .request_friend(as_device(&a, FriendRequest { user_id: unknown }))
        .await
        .expect_err("unknown user");
    let no_request = ext
        .accept_friend(as_device(&c, to(&b)))
        .await
        .expect_err("no request to accept");
    let no_pair = ext
        .remove_friend(as_device(&b, to(&c)))
        .await
        .expect_err("nothing to remove");

    let cases = [
        (pending, ErrorCode::AlreadyExists, b.user_id, "pending"),
        (friends, ErrorCode::AlreadyExists, c.user_id, "friends"),
        (missing, ErrorCode::NotFound, unknown, "unknown user"),
        (no_request, ErrorCode::NotFound, b.user_id, "no request"),
        (no_pair, ErrorCode::NotFound, c.user_id, "no pair"),
    ];
    for (status, expected, named, case) in cases {
        assert_eq!(error_code(&status), expected, "{case}");
        assert!(
            status.message().contains(&named.to_string()),
            "{case}: {}",
            status.message()
        );
    }
    logic.server.shutdown().await;
}

/// `max_friends_per_user` in the friend cap tests, small enough to reach.
const MAX_FRIENDS: u32 = 3;

/// Starts a server with `max_friends_per_user` at [`MAX_FRIENDS`] and enough pooled
/// connections for the concurrent calls to hold transactions at once.
async fn start_with_friend_cap() -> TestLogic {
    TestLogic::start(im_logic::Config {
        max_friends_per_user: MAX_FRIENDS,
        db_pool_size: 16,
        ..common::test_config()
    })
    .await
}

/// Asserts that `status` is TOO_MANY_FRIENDS naming `user` and the setting.
fn assert_too_many_friends(status: &tonic::Status, user: &LoginReply, case: &str) {
    assert_eq!(
        error_code(status),
        ErrorCode::TooManyFriends,
        "{case}: {status:?}"
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{case}");
    let message = status.message();
    assert!(
        message.contains(&format!("user {} ", user.user_id)),
        "{case}: {message}"
    );
    assert!(
        message.contains("max_friends_per_user"),
        "{case}: {message}"
    );
    assert!(
        message.contains(&MAX_FRIENDS.to_string()),
        "{case}: {message}"
    );
}

#[tokio::test]
async fn request_past_friend_cap_is_rejected() {
    let mut logic = start_with_friend_cap().await;
    let mut ext = logic.ext_client().await;
    let full = new_device(&mut logic.client, "cap_full", conn(NODE, 1)).await;
    // Two requests sent and one received: every kind of entry counts.
    let sent_to = new_device(&mut logic.client, "cap_sent", conn(NODE, 2)).await;
    let friend = new_device(&mut logic.client, "cap_friend", conn(NODE, 3)).await;
    let asker = new_device(&mut logic.client, "cap_asker", conn(NODE, 4)).await;
    ext.request_friend(as_device(&full, to(&sent_to)))
        .await
        .expect("first entry");
    make_friends(&mut ext, &full, &friend).await;
    ext.request_friend(as_device(&asker, to(&full)))
        .await
        .expect("third entry");
    let before = friend_states(&mut ext, &full).await;
    assert_eq!(before.len(), MAX_FRIENDS as usize);

    let outsider = new_device(&mut logic.client, "cap_out", conn(NODE, 5)).await;
    let by_full = ext
        .request_friend(as_device(&full, to(&outsider)))
        .await
        .expect_err("a request by a user at the cap");
    assert_too_many_friends(&by_full, &full, "request by the full user");
    let to_full = ext
        .request_friend(as_device(&outsider, to(&full)))
        .await
        .expect_err("a request to a user at the cap");
    assert_too_many_friends(&to_full, &full, "request to the full user");
    assert_eq!(friend_states(&mut ext, &full).await, before);
    assert_eq!(
        friend_states(&mut ext, &outsider).await,
        vec![],
        "a rejected request was stored"
    );

    // Accepting turns a pending entry into a friend: the list does not grow.
    ext.accept_friend(as_device(&full, to(&asker)))
        .await
        .expect("an accept at the cap");
    assert_eq!(
        friend_states(&mut ext, &full).await.len(),
        MAX_FRIENDS as usize
    );

    ext.remove_friend(as_device(&full, to(&sent_to)))
        .await
        .expect("withdraw a request");
    ext.request_friend(as_device(&outsider, to(&full)))
        .await
        .expect("a request below the cap");
    assert_eq!(
        friend_states(&mut ext, &full).await.len(),
        MAX_FRIENDS as usize
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_respect_friend_cap() {
    let mut logic = start_with_friend_cap().await;
    let ext = logic.ext_client().await;
    // Each round gives a fresh user more concurrent requests than the cap allows, some sent by
    // it and some to it, so that requests race on both of its rows.
    const ROUNDS: usize = 4;
    const TO_TARGET: usize = 5;
    const BY_TARGET: usize = 4;
    for round in 0..ROUNDS {
        let target = new_device(&mut logic.client, "race_target", conn(NODE, 1)).await;
        let mut others = Vec::new();
        for _ in 0..TO_TARGET + BY_TARGET {
            others.push(new_device(&mut logic.client, "race_other", conn(NODE, 2)).await);
        }
        let calls = others.iter().enumerate().map(|(index, other)| {
            let mut ext = ext.clone();
            let target = &target;
            async move {
                if index < TO_TARGET {
                    ext.request_friend(as_device(other, to(target))).await
                } else {
                    ext.request_friend(as_device(target, to(other))).await
                }
            }
        });
        let results = futures::future::join_all(calls).await;

        let codes: Vec<Option<ErrorCode>> = results
            .iter()
            .map(|result| result.as_ref().err().map(error_code))
            .collect();
        let stored = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(stored, MAX_FRIENDS as usize, "round {round}: {codes:?}");
        for result in &results {
            if let Err(status) = result {
                assert_too_many_friends(status, &target, &format!("round {round}"));
            }
        }
        let mut ext = ext.clone();
        assert_eq!(
            friend_states(&mut ext, &target).await.len(),
            MAX_FRIENDS as usize,
            "round {round}"
        );
    }
    logic.server.shutdown().await;
}

/// Codes that show a failure of the server rather than a rejection: a transaction that
/// PostgreSQL aborted to break a deadlock is INTERNAL, one that waited too long TIMEOUT.
fn is_fault(status: &tonic::Status) -> bool {
    matches!(
        error_code(status),
        ErrorCode::Internal | ErrorCode::Timeout | ErrorCode::Unavailable
    )
}

#[tokio::test]
async fn concurrent_friend_and_group_changes_do_not_deadlock() {
    let mut logic = start_with_friend_cap().await;
    let mut ext = logic.ext_client().await;
    // Four users who are friends of each other, so each is at the cap. Every wave runs these
    // calls at once. Each user requests each other user again, which locks the pair's rows.
    // Each creates a group with the others, which locks its friendship rows and then the
    // members' users rows. A stranger requests each user, which inserts a pair and then locks
    // the users rows of both. A transaction that took these locks in another order would
    // deadlock with the others.
    const USERS: usize = 4;
    const WAVES: usize = 20;
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(new_device(&mut logic.client, "lock_order", conn(NODE, 1)).await);
    }
    for (index, a) in users.iter().enumerate() {
        for b in &users[index + 1..] {
            make_friends(&mut ext, a, b).await;
        }
    }
    let mut strangers = Vec::new();
    for _ in 0..USERS {
        strangers.push(new_device(&mut logic.client, "lock_stranger", conn(NODE, 2)).await);
    }

    for wave in 0..WAVES {
        let mut calls: Vec<futures::future::BoxFuture<'_, Result<(), tonic::Status>>> = Vec::new();
        for (index, caller) in users.iter().enumerate() {
            for other in users.iter().filter(|other| other.user_id != caller.user_id) {
                let mut ext = ext.clone();
                calls.push(Box::pin(async move {
                    ext.request_friend(as_device(caller, to(other)))
                        .await
                        .map(|_| ())
                }));
            }
            let mut ext_group = ext.clone();
            let request = im_proto::v1::CreateGroupRequest {
                name: "lock order".to_owned(),
                member_ids: users
                    .iter()
                    .filter(|member| member.user_id != caller.user_id)
                    .map(|member| member.user_id)
                    .collect(),
            };
            calls.push(Box::pin(async move {
                ext_group
                    .create_group(as_device(caller, request))
                    .await
                    .map(|_| ())
            }));
            let mut ext_stranger = ext.clone();
            let stranger = &strangers[(index + wave) % USERS];
            calls.push(Box::pin(async move {
                ext_stranger
                    .request_friend(as_device(stranger, to(caller)))
                    .await
                    .map(|_| ())
            }));
        }
        let results = futures::future::join_all(calls).await;

        let codes: Vec<Option<ErrorCode>> = results
            .iter()
            .map(|result| result.as_ref().err().map(error_code))
            .collect();
        let faults: Vec<_> = results
            .iter()
            .filter_map(|result| result.as_ref().err())
            .filter(|status| is_fault(status))
            .collect();
        assert!(faults.is_empty(), "wave {wave}: {faults:?}");
        let rejected = codes
            .iter()
            .filter(|code| **code == Some(ErrorCode::TooManyFriends))
            .count();
        assert_eq!(rejected, USERS, "wave {wave}: {codes:?}");
    }
    for user in &users {
        let states = friend_states(&mut ext, user).await;
        assert_eq!(states.len(), MAX_FRIENDS as usize, "user {}", user.user_id);
    }
    logic.server.shutdown().await;
}
