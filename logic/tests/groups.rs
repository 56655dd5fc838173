//! Group creation, membership changes and look-ups through `LogicExtService`, and the notices
//! they push to a recording engine node.

mod common;

use common::{
    as_device, conn, create_group, error_code, make_friends, new_device, new_user_device,
    EngineRecorder, TestLogic, NODE,
};
use im_proto::v1::{
    CreateGroupRequest, Delivery, ErrorCode, FriendRequest, GetGroupRequest, GroupMembersRequest,
    ListGroupsRequest, LoginReply, NoticeKind,
};
use tonic::Code;

/// Maximum group size in these tests, small enough to reach.
const MAX_MEMBERS: u32 = 4;

async fn start() -> TestLogic {
    TestLogic::start(im_logic::Config {
        max_group_members: MAX_MEMBERS,
        ..common::test_config()
    })
    .await
}

/// As `common::start_for_notices`, with this file's member limit.
async fn start_for_notices() -> TestLogic {
    TestLogic::start(im_logic::Config {
        max_group_members: MAX_MEMBERS,
        engine_call_timeout_ms: 10_000,
        ..common::test_config()
    })
    .await
}

fn members(group_id: u64, users: &[&LoginReply]) -> GroupMembersRequest {
    GroupMembersRequest {
        group_id,
        user_ids: users.iter().map(|user| user.user_id).collect(),
    }
}

fn sorted_ids(users: &[&LoginReply]) -> Vec<u64> {
    let mut ids: Vec<u64> = users.iter().map(|user| user.user_id).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn create_group_makes_creator_owner_and_member() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "g_owner", conn(NODE, 1)).await;
    let member = new_device(&mut logic.client, "g_member", conn(NODE, 2)).await;
    make_friends(&mut ext, &owner, &member).await;

    let request = CreateGroupRequest {
        name: "weekend plans".to_owned(),
        member_ids: vec![member.user_id, member.user_id, owner.user_id],
    };
    let group = ext
        .create_group(as_device(&owner, request))
        .await
        .expect("create")
        .into_inner();

    assert!(group.group_id > 0);
    assert_eq!(group.name, "weekend plans");
    assert_eq!(group.owner_id, owner.user_id);
    assert_eq!(group.member_ids, sorted_ids(&[&owner, &member]));
    let fetched = ext
        .get_group(as_device(
            &member,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect("member reads the group")
        .into_inner();
    assert_eq!(fetched, group);
    let listed = ext
        .list_groups(as_device(&member, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.groups, vec![group]);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn invalid_group_creations_are_rejected() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "bad_group", conn(NODE, 1)).await;
    let mut others = Vec::new();
    for i in 0..MAX_MEMBERS {
        let other = new_device(&mut logic.client, "crowd", conn(NODE, 10 + u64::from(i))).await;
        make_friends(&mut ext, &owner, &other).await;
        others.push(other);
    }
    let request = |name: &str, member_ids: Vec<u64>| CreateGroupRequest {
        name: name.to_owned(),
        member_ids,
    };
    let all_others: Vec<u64> = others.iter().map(|user| user.user_id).collect();
    let cases = [
        (
            request("", vec![]),
            ErrorCode::InvalidArgument,
            "empty name",
        ),
        (
            request(&"n".repeat(65), vec![]),
            ErrorCode::InvalidArgument,
            "long name",
        ),
        (
            request("ghosts", vec![i64::MAX as u64]),
            ErrorCode::NotFound,
            "unknown member",
        ),
        (
            request("crowd", all_others.clone()),
            ErrorCode::GroupFull,
            "one over the maximum",
        ),
    ];

    for (request, expected, case) in cases {
        let status = ext
            .create_group(as_device(&owner, request))
            .await
            .expect_err(case);
        assert_eq!(error_code(&status), expected, "{case}");
    }
    let full = ext
        .create_group(as_device(&owner, request("full", all_others[1..].to_vec())))
        .await
        .expect("exactly the maximum")
        .into_inner();
    assert_eq!(full.member_ids.len(), MAX_MEMBERS as usize);
    let listed = ext
        .list_groups(as_device(&owner, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.groups.len(), 1, "failed creations left nothing");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn strangers_join_only_when_open() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "st_owner", conn(NODE, 1)).await;
    let friend = new_device(&mut logic.client, "st_friend", conn(NODE, 2)).await;
    let stranger = new_device(&mut logic.client, "st_closed", conn(NODE, 3)).await;
    let (_, open) = new_user_device(&mut logic.client, "st_open", true, conn(NODE, 4)).await;
    make_friends(&mut ext, &owner, &friend).await;

    let rejected = ext
        .create_group(as_device(
            &owner,
            CreateGroupRequest {
                name: "uninvited".to_owned(),
                member_ids: vec![friend.user_id, stranger.user_id],
            },
        ))
        .await
        .expect_err("a stranger in a new group");
    assert_eq!(error_code(&rejected), ErrorCode::NotFriend);
    assert!(
        rejected.message().starts_with(&format!(
            "user {} joins groups only through friends",
            stranger.user_id
        )),
        "{}",
        rejected.message()
    );
    let listed = ext
        .list_groups(as_device(&owner, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.groups.is_empty(),
        "the rejected group was not created"
    );

    let group = ext
        .create_group(as_device(
            &owner,
            CreateGroupRequest {
                name: "invited".to_owned(),
                member_ids: vec![friend.user_id, open.user_id],
            },
        ))
        .await
        .expect("a friend and an open user")
        .into_inner();
    assert_eq!(group.member_ids, sorted_ids(&[&owner, &friend, &open]));

    // The friend is the newcomer's friend but not the stranger's, so adding both fails, and
    // a rejected add adds no user.
    let newcomer = new_device(&mut logic.client, "st_new", conn(NODE, 5)).await;
    make_friends(&mut ext, &friend, &newcomer).await;
    let mixed = ext
        .add_group_members(as_device(
            &friend,
            members(group.group_id, &[&newcomer, &stranger]),
        ))
        .await
        .expect_err("a stranger among the added");
    assert_eq!(error_code(&mixed), ErrorCode::NotFriend);
    let unchanged = ext
        .get_group(as_device(
            &owner,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged.member_ids, group.member_ids);

    make_friends(&mut ext, &friend, &stranger).await;
    let grown = ext
        .add_group_members(as_device(
            &friend,
            members(group.group_id, &[&newcomer, &stranger]),
        ))
        .await
        .expect("both are the friend's friends now")
        .into_inner();
    assert_eq!(
        grown.member_ids,
        sorted_ids(&[&owner, &friend, &open, &newcomer, &stranger])
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn members_add_members_within_the_limit() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "add_owner", conn(NODE, 1)).await;
    let member = new_device(&mut logic.client, "add_member", conn(NODE, 2)).await;
    let newcomer = new_device(&mut logic.client, "add_new", conn(NODE, 3)).await;
    let outsider = new_device(&mut logic.client, "add_out", conn(NODE, 4)).await;
    let extra = new_device(&mut logic.client, "add_extra", conn(NODE, 5)).await;
    let group = create_group(&mut ext, &owner, &[&member]).await;
    make_friends(&mut ext, &member, &newcomer).await;
    make_friends(&mut ext, &owner, &extra).await;

    let grown = ext
        .add_group_members(as_device(&member, members(group.group_id, &[&newcomer])))
        .await
        .expect("a member adds")
        .into_inner();
    assert_eq!(grown.member_ids, sorted_ids(&[&owner, &member, &newcomer]));

    let cases = [
        (
            &outsider,
            members(group.group_id, &[&extra]),
            ErrorCode::NotGroupMember,
            "caller outside the group",
        ),
        (
            &member,
            members(group.group_id, &[&newcomer]),
            ErrorCode::AlreadyExists,
            "already a member",
        ),
        (
            &member,
            members(group.group_id, &[&outsider, &extra]),
            ErrorCode::GroupFull,
            "over the maximum",
        ),
        (
            &member,
            members(i64::MAX as u64, &[&extra]),
            ErrorCode::NotFound,
            "unknown group",
        ),
        (
            &member,
            GroupMembersRequest {
                group_id: group.group_id,
                user_ids: vec![i64::MAX as u64],
            },
            ErrorCode::NotFound,
            "unknown user",
        ),
        (
            &member,
            members(group.group_id, &[]),
            ErrorCode::InvalidArgument,
            "empty list",
        ),
    ];
    for (caller, request, expected, case) in cases {
        let status = ext
            .add_group_members(as_device(caller, request))
            .await
            .expect_err(case);
        assert_eq!(error_code(&status), expected, "{case}");
    }
    let fourth = ext
        .add_group_members(as_device(&owner, members(group.group_id, &[&extra])))
        .await
        .expect("up to the maximum")
        .into_inner();
    assert_eq!(fourth.member_ids.len(), MAX_MEMBERS as usize);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn only_the_owner_removes_others() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "rm_owner", conn(NODE, 1)).await;
    let a = new_device(&mut logic.client, "rm_a", conn(NODE, 2)).await;
    let b = new_device(&mut logic.client, "rm_b", conn(NODE, 3)).await;
    let outsider = new_device(&mut logic.client, "rm_out", conn(NODE, 4)).await;
    let group = create_group(&mut ext, &owner, &[&a, &b]).await;

    let denied = ext
        .remove_group_members(as_device(&a, members(group.group_id, &[&b])))
        .await
        .expect_err("a member removes another");
    let outside = ext
        .remove_group_members(as_device(&outsider, members(group.group_id, &[&outsider])))
        .await
        .expect_err("not a member");
    let not_member = ext
        .remove_group_members(as_device(&owner, members(group.group_id, &[&outsider])))
        .await
        .expect_err("removing a non-member");
    let left = ext
        .remove_group_members(as_device(&a, members(group.group_id, &[&a])))
        .await
        .expect("a member leaves")
        .into_inner();
    let removed = ext
        .remove_group_members(as_device(&owner, members(group.group_id, &[&b])))
        .await
        .expect("the owner removes b")
        .into_inner();

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(error_code(&denied), ErrorCode::PermissionDenied);
    assert_eq!(error_code(&outside), ErrorCode::NotGroupMember);
    assert_eq!(error_code(&not_member), ErrorCode::NotFound);
    assert_eq!(left.member_ids, sorted_ids(&[&owner, &b]));
    assert_eq!(removed.member_ids, vec![owner.user_id]);
    let status = ext
        .get_group(as_device(
            &b,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect_err("b is out");
    assert_eq!(error_code(&status), ErrorCode::NotGroupMember);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn group_outlives_owner_until_empty() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "ho_owner", conn(NODE, 1)).await;
    let first = new_device(&mut logic.client, "ho_first", conn(NODE, 2)).await;
    let group = create_group(&mut ext, &owner, &[&first]).await;
    let later = new_device(&mut logic.client, "ho_later", conn(NODE, 3)).await;
    make_friends(&mut ext, &owner, &later).await;
    ext.add_group_members(as_device(&owner, members(group.group_id, &[&later])))
        .await
        .expect("add later");

    let handed_over = ext
        .remove_group_members(as_device(&owner, members(group.group_id, &[&owner])))
        .await
        .expect("owner leaves")
        .into_inner();

    assert_eq!(handed_over.owner_id, first.user_id, "the longest member");
    assert_eq!(handed_over.member_ids, sorted_ids(&[&first, &later]));
    let emptied = ext
        .remove_group_members(as_device(
            &first,
            members(group.group_id, &[&first, &later]),
        ))
        .await
        .expect("the new owner removes everyone")
        .into_inner();
    assert!(emptied.member_ids.is_empty());
    assert_eq!(emptied.owner_id, 0);
    let status = ext
        .get_group(as_device(
            &first,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect_err("deleted");
    assert_eq!(error_code(&status), ErrorCode::NotFound);
    logic.server.shutdown().await;
}

/// Returns the device ids of a notice delivery's targets, sorted.
fn target_devices(delivery: &Delivery) -> Vec<u64> {
    let mut devices: Vec<u64> = delivery
        .targets
        .iter()
        .map(|target| target.device_id)
        .collect();
    devices.sort_unstable();
    devices
}

fn sorted_devices(devices: &[&LoginReply]) -> Vec<u64> {
    let mut ids: Vec<u64> = devices.iter().map(|device| device.device_id).collect();
    ids.sort_unstable();
    ids
}

/// Checks a group notice: its kind, the acting user, the group and the members it names.
fn assert_group_notice(
    delivery: &Delivery,
    kind: NoticeKind,
    actor: &LoginReply,
    group_id: u64,
    member_ids: Vec<u64>,
) {
    let notice = delivery.notice.as_ref().expect("a notice");
    assert_eq!(notice.kind, kind as i32, "{notice:?}");
    assert_eq!(notice.actor_user_id, actor.user_id, "{notice:?}");
    assert_eq!(notice.group_id, group_id, "{notice:?}");
    assert_eq!(notice.member_ids, member_ids, "{notice:?}");
    assert_eq!(notice.user_id, 0, "{notice:?}");
}

/// Makes `a` and `b` friends and takes the two notices that this pushes to the node.
async fn befriend(
    ext: &mut common::ExtClient,
    node: &mut EngineRecorder,
    a: &LoginReply,
    b: &LoginReply,
) {
    make_friends(ext, a, b).await;
    for kind in [NoticeKind::FriendRequested, NoticeKind::FriendAccepted] {
        let notice = node.next_notice().await;
        assert_eq!(notice.notice.expect("a notice").kind, kind as i32);
    }
}

#[tokio::test]
async fn group_changes_push_notices_to_members() {
    let mut logic = start_for_notices().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let owner = new_device(&mut logic.client, "n_owner", conn(&node.node(), 1)).await;
    let first = new_device(&mut logic.client, "n_first", conn(&node.node(), 2)).await;
    let second = new_device(&mut logic.client, "n_second", conn(&node.node(), 3)).await;
    befriend(&mut ext, &mut node, &owner, &first).await;
    befriend(&mut ext, &mut node, &owner, &second).await;

    let request = CreateGroupRequest {
        name: "notices".to_owned(),
        member_ids: vec![first.user_id],
    };
    let group = ext
        .create_group(as_device(&owner, request))
        .await
        .expect("group created")
        .into_inner();
    let created = node.next_notice().await;
    assert_group_notice(
        &created,
        NoticeKind::GroupCreated,
        &owner,
        group.group_id,
        sorted_ids(&[&owner, &first]),
    );
    assert_eq!(target_devices(&created), sorted_devices(&[&owner, &first]));

    ext.add_group_members(as_device(&owner, members(group.group_id, &[&second])))
        .await
        .expect("owner adds");
    let added = node.next_notice().await;
    assert_group_notice(
        &added,
        NoticeKind::GroupMembersAdded,
        &owner,
        group.group_id,
        vec![second.user_id],
    );
    assert_eq!(
        target_devices(&added),
        sorted_devices(&[&owner, &first, &second]),
        "every member after the add, the new one included"
    );

    ext.remove_group_members(as_device(&owner, members(group.group_id, &[&first])))
        .await
        .expect("owner removes");
    let removed = node.next_notice().await;
    assert_group_notice(
        &removed,
        NoticeKind::GroupMembersRemoved,
        &owner,
        group.group_id,
        vec![first.user_id],
    );
    assert_eq!(
        target_devices(&removed),
        sorted_devices(&[&owner, &first, &second]),
        "the remaining members and the removed one"
    );

    node.assert_no_more_notices().await;
    node.assert_no_more_deliveries().await;
    logic.server.shutdown().await;
}

#[tokio::test]
async fn failed_group_changes_push_no_notice() {
    let mut logic = start_for_notices().await;
    let mut ext = logic.ext_client().await;
    let mut node = EngineRecorder::start().await;
    let owner = new_device(&mut logic.client, "nf_owner", conn(&node.node(), 1)).await;
    let member = new_device(&mut logic.client, "nf_member", conn(&node.node(), 2)).await;
    let stranger = new_device(&mut logic.client, "nf_stranger", conn(&node.node(), 3)).await;
    befriend(&mut ext, &mut node, &owner, &member).await;
    let request = CreateGroupRequest {
        name: "no notices".to_owned(),
        member_ids: vec![member.user_id],
    };
    let group = ext
        .create_group(as_device(&owner, request))
        .await
        .expect("group created")
        .into_inner();
    let created = node.next_notice().await;
    assert_group_notice(
        &created,
        NoticeKind::GroupCreated,
        &owner,
        group.group_id,
        sorted_ids(&[&owner, &member]),
    );

    let not_friend = ext
        .add_group_members(as_device(&owner, members(group.group_id, &[&stranger])))
        .await
        .expect_err("a stranger who is not open");
    assert_eq!(error_code(&not_friend), ErrorCode::NotFriend);
    let not_owner = ext
        .remove_group_members(as_device(&member, members(group.group_id, &[&owner])))
        .await
        .expect_err("a member removes the owner");
    assert_eq!(error_code(&not_owner), ErrorCode::PermissionDenied);
    let not_friend_create = CreateGroupRequest {
        name: "with a stranger".to_owned(),
        member_ids: vec![stranger.user_id],
    };
    let create = ext
        .create_group(as_device(&owner, not_friend_create))
        .await
        .expect_err("a group with a stranger");
    assert_eq!(error_code(&create), ErrorCode::NotFriend);

    node.assert_no_more_notices().await;
    logic.server.shutdown().await;
}

/// Begins a transaction on `holder` that ends the friendship of `a` and `b` as RemoveFriend
/// does: it locks both rows of the pair FOR UPDATE and deletes them, and does not commit yet.
/// Returns the transaction and the process id of its backend.
async fn begin_unfriend<'a>(
    holder: &'a mut tokio_postgres::Client,
    a: &LoginReply,
    b: &LoginReply,
) -> (tokio_postgres::Transaction<'a>, i32) {
    let a = i64::try_from(a.user_id).expect("id fits");
    let b = i64::try_from(b.user_id).expect("id fits");
    let unfriend = holder.transaction().await.expect("begin");
    let locked = unfriend
        .execute(
            "SELECT 1 FROM friendships WHERE user_id IN ($1, $2) AND friend_id IN ($1, $2) \
             ORDER BY user_id FOR UPDATE",
            &[&a, &b],
        )
        .await
        .expect("lock the pair");
    assert_eq!(locked, 2, "the pair has two rows");
    let deleted = unfriend
        .execute(
            "DELETE FROM friendships WHERE user_id IN ($1, $2) AND friend_id IN ($1, $2)",
            &[&a, &b],
        )
        .await
        .expect("delete the pair");
    assert_eq!(deleted, 2, "both rows deleted");
    let pid: i32 = unfriend
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (unfriend, pid)
}

/// Polls until a statement on `friendships` waits for a lock that `holder_pid` holds, or until
/// `call` has ended. Returns whether such a waiter was seen, within about 5 s.
async fn friendship_waiter_seen<T>(holder_pid: i32, call: &tokio::task::JoinHandle<T>) -> bool {
    let observer = common::postgres().await;
    for _ in 0..100 {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE $1 = ANY(pg_blocking_pids(pid)) AND query LIKE '%friendships%'",
                &[&holder_pid],
            )
            .await
            .expect("count waiters")
            .get(0);
        if waiting > 0 {
            return true;
        }
        if call.is_finished() {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn add_racing_unfriend_is_rejected() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "race_owner", conn(NODE, 1)).await;
    let friend = new_device(&mut logic.client, "race_friend", conn(NODE, 2)).await;
    let group = create_group(&mut ext, &owner, &[]).await;
    make_friends(&mut ext, &owner, &friend).await;

    let mut holder = common::postgres().await;
    let (unfriend, holder_pid) = begin_unfriend(&mut holder, &friend, &owner).await;
    let add = {
        let mut ext = ext.clone();
        let request = as_device(&owner, members(group.group_id, &[&friend]));
        tokio::spawn(async move { ext.add_group_members(request).await })
    };
    let waited = friendship_waiter_seen(holder_pid, &add).await;
    unfriend.commit().await.expect("commit the unfriending");

    let status = add
        .await
        .expect("add task")
        .expect_err("an add racing the unfriending fails");
    assert_eq!(error_code(&status), ErrorCode::NotFriend, "{status:?}");
    assert!(waited, "the add waited for the unfriending's lock");
    let after = ext
        .get_group(as_device(
            &owner,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(after.member_ids, vec![owner.user_id], "nobody was added");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn create_racing_unfriend_is_rejected() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "race_creator", conn(NODE, 1)).await;
    let friend = new_device(&mut logic.client, "race_invited", conn(NODE, 2)).await;
    make_friends(&mut ext, &owner, &friend).await;

    let mut holder = common::postgres().await;
    let (unfriend, holder_pid) = begin_unfriend(&mut holder, &owner, &friend).await;
    let create = {
        let mut ext = ext.clone();
        let request = as_device(
            &owner,
            CreateGroupRequest {
                name: "too late".to_owned(),
                member_ids: vec![friend.user_id],
            },
        );
        tokio::spawn(async move { ext.create_group(request).await })
    };
    let waited = friendship_waiter_seen(holder_pid, &create).await;
    unfriend.commit().await.expect("commit the unfriending");

    let status = create
        .await
        .expect("create task")
        .expect_err("a creation racing the unfriending fails");
    assert_eq!(error_code(&status), ErrorCode::NotFriend, "{status:?}");
    assert!(waited, "the creation waited for the unfriending's lock");
    let listed = ext
        .list_groups(as_device(&owner, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.groups.is_empty(), "no group was created");
    logic.server.shutdown().await;
}

/// Runs three adds and two unfriendings over the same friendship rows at once. None may fail
/// with a deadlock (INTERNAL), and each add adds all its users or none. This is a smoke test
/// because 10 rounds need not hit every interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_and_unfriends_do_not_deadlock() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let a = new_device(&mut logic.client, "mesh_a", conn(NODE, 1)).await;
    let b = new_device(&mut logic.client, "mesh_b", conn(NODE, 2)).await;
    let c = new_device(&mut logic.client, "mesh_c", conn(NODE, 3)).await;
    make_friends(&mut ext, &a, &c).await;

    for round in 0..10 {
        make_friends(&mut ext, &a, &b).await;
        make_friends(&mut ext, &b, &c).await;
        let mut groups = Vec::new();
        for owner in [&a, &b, &c] {
            groups.push(create_group(&mut ext, owner, &[]).await);
        }

        let adds = [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])]
            .into_iter()
            .zip(&groups)
            .map(|((caller, added), group)| {
                let mut ext = ext.clone();
                let request = as_device(caller, members(group.group_id, &added));
                tokio::spawn(async move { ext.add_group_members(request).await })
            })
            .collect::<Vec<_>>();
        let removes = [(&b, &a), (&c, &b)]
            .into_iter()
            .map(|(caller, other)| {
                let mut ext = ext.clone();
                let request = as_device(
                    caller,
                    FriendRequest {
                        user_id: other.user_id,
                    },
                );
                tokio::spawn(async move { ext.remove_friend(request).await })
            })
            .collect::<Vec<_>>();

        for remove in removes {
            remove
                .await
                .expect("remove task")
                .unwrap_or_else(|status| panic!("round {round}: remove failed: {status:?}"));
        }
        for (add, (group, owner)) in adds.into_iter().zip(groups.iter().zip([&a, &b, &c])) {
            let expected = match add.await.expect("add task") {
                Ok(_) => 3,
                Err(status) => {
                    assert_eq!(
                        error_code(&status),
                        ErrorCode::NotFriend,
                        "round {round}: {status:?}"
                    );
                    1
                }
            };
            let after = ext
                .get_group(as_device(
                    owner,
                    GetGroupRequest {
                        group_id: group.group_id,
                    },
                ))
                .await
                .expect("get")
                .into_inner();
            assert_eq!(after.member_ids.len(), expected, "round {round}: {after:?}");
        }
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn group_names_reject_control_characters() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "ctl_owner", conn(NODE, 1)).await;
    let cases = [
        (
            "nul\0byte",
            "name",
            "NUL, which PostgreSQL text cannot hold",
        ),
        ("two\nlines", "U+000A", "line feed"),
        ("bell\u{7}", "U+0007", "bell"),
        ("\u{1b}[31mred", "U+001B", "terminal escape"),
        ("c1\u{85}", "U+0085", "C1 control"),
        ("   ", "white space", "only spaces"),
        ("\u{3000}\u{a0}", "white space", "only other white space"),
    ];

    for (name, named, case) in cases {
        let request = CreateGroupRequest {
            name: name.to_owned(),
            member_ids: Vec::new(),
        };
        let status = ext
            .create_group(as_device(&owner, request))
            .await
            .expect_err(case);
        common::assert_invalid(&status, "name", case);
        assert!(
            status.message().contains(named),
            "{case}: {}",
            status.message()
        );
    }
    let listed = ext
        .list_groups(as_device(&owner, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.groups.is_empty(), "no rejected name was stored");

    let request = CreateGroupRequest {
        name: "Ünïcode 👋 tab-free".to_owned(),
        member_ids: Vec::new(),
    };
    let group = ext
        .create_group(as_device(&owner, request))
        .await
        .expect("printable Unicode passes")
        .into_inner();
    assert_eq!(group.name, "Ünïcode 👋 tab-free");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn group_names_reject_bidirectional_controls() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "bidi_owner", conn(NODE, 1)).await;
    // Each would make the name display as other text than it holds.
    let cases = [
        (
            "txt.\u{202e}exe",
            "U+202E at character 4",
            "right-to-left override",
        ),
        (
            "\u{202a}left",
            "U+202A at character 0",
            "left-to-right embedding",
        ),
        (
            "a\u{2067}b\u{2069}",
            "U+2067 at character 1",
            "right-to-left isolate",
        ),
        ("ab\u{200f}", "U+200F at character 2", "right-to-left mark"),
        ("x\u{061c}", "U+061C at character 1", "Arabic letter mark"),
        (
            "👨\u{200d}👩\u{2066}",
            "U+2066 at character 3",
            "after a joiner",
        ),
    ];

    for (name, named, case) in cases {
        let request = CreateGroupRequest {
            name: name.to_owned(),
            member_ids: Vec::new(),
        };
        let status = ext
            .create_group(as_device(&owner, request))
            .await
            .expect_err(case);
        common::assert_invalid(&status, "name", case);
        assert!(
            status.message().contains(named),
            "{case}: {}",
            status.message()
        );
        assert!(
            status.message().contains("bidirectional"),
            "{case}: {}",
            status.message()
        );
    }
    let listed = ext
        .list_groups(as_device(&owner, ListGroupsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.groups.is_empty(), "no rejected name was stored");

    // The zero-width joiner builds emoji sequences, and right-to-left scripts need no control.
    let name = "👨\u{200d}👩\u{200d}👧 עברית";
    let request = CreateGroupRequest {
        name: name.to_owned(),
        member_ids: Vec::new(),
    };
    let group = ext
        .create_group(as_device(&owner, request))
        .await
        .expect("a joiner and a right-to-left script pass")
        .into_inner();
    assert_eq!(group.name, name);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn zero_ids_in_group_calls_are_invalid() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "zero_owner", conn(NODE, 1)).await;
    let member = new_device(&mut logic.client, "zero_member", conn(NODE, 2)).await;
    let group = create_group(&mut ext, &owner, &[&member]).await;

    let get = ext
        .get_group(as_device(&owner, GetGroupRequest { group_id: 0 }))
        .await
        .expect_err("group 0");
    let create = ext
        .create_group(as_device(
            &owner,
            CreateGroupRequest {
                name: "zero".to_owned(),
                member_ids: vec![member.user_id, 0],
            },
        ))
        .await
        .expect_err("member 0");
    let add_to_zero = ext
        .add_group_members(as_device(&owner, members(0, &[&member])))
        .await
        .expect_err("add to group 0");
    let add_zero = ext
        .add_group_members(as_device(
            &owner,
            GroupMembersRequest {
                group_id: group.group_id,
                user_ids: vec![0],
            },
        ))
        .await
        .expect_err("add user 0");
    let remove_from_zero = ext
        .remove_group_members(as_device(&owner, members(0, &[&member])))
        .await
        .expect_err("remove from group 0");
    let remove_zero = ext
        .remove_group_members(as_device(
            &owner,
            GroupMembersRequest {
                group_id: group.group_id,
                user_ids: vec![member.user_id, 0],
            },
        ))
        .await
        .expect_err("remove user 0");

    let cases = [
        (get, "group_id", "GetGroup"),
        (create, "member_ids", "CreateGroup"),
        (add_to_zero, "group_id", "AddGroupMembers to group 0"),
        (add_zero, "user_ids", "AddGroupMembers of user 0"),
        (
            remove_from_zero,
            "group_id",
            "RemoveGroupMembers from group 0",
        ),
        (remove_zero, "user_ids", "RemoveGroupMembers of user 0"),
    ];
    for (status, field, case) in cases {
        common::assert_invalid(&status, field, case);
    }
    let unchanged = ext
        .get_group(as_device(
            &owner,
            GetGroupRequest {
                group_id: group.group_id,
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged.member_ids, group.member_ids);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn group_errors_name_the_user_and_group() {
    let mut logic = start().await;
    let mut ext = logic.ext_client().await;
    let owner = new_device(&mut logic.client, "name_owner", conn(NODE, 1)).await;
    let member = new_device(&mut logic.client, "name_member", conn(NODE, 2)).await;
    let outsider = new_device(&mut logic.client, "name_out", conn(NODE, 3)).await;
    let group = create_group(&mut ext, &owner, &[&member]).await;
    let group_id = group.group_id.to_string();
    let unknown_user = i64::MAX as u64;
    let unknown_group = i64::MAX as u64;

    let by_id = |group_id, user_ids| GroupMembersRequest { group_id, user_ids };
    let get = |group_id| GetGroupRequest { group_id };
    let add_self = ext
        .add_group_members(as_device(&owner, members(group.group_id, &[&owner])))
        .await;
    let add_unknown = ext
        .add_group_members(as_device(&owner, by_id(group.group_id, vec![unknown_user])))
        .await;
    let remove_outsider = ext
        .remove_group_members(as_device(&owner, members(group.group_id, &[&outsider])))
        .await;
    let get_unknown = ext.get_group(as_device(&owner, get(unknown_group))).await;
    let read_outside = ext
        .get_group(as_device(&outsider, get(group.group_id)))
        .await;
    // Ids far above any registered user, so the group would have these and the owner.
    let crowd: Vec<u64> = (1 << 40..).take(100_000).collect();
    let too_many = ext
        .create_group(as_device(
            &owner,
            CreateGroupRequest {
                name: "crowd".to_owned(),
                member_ids: crowd,
            },
        ))
        .await
        .map(|_| ());

    let (owner_id, outsider_id) = (owner.user_id.to_string(), outsider.user_id.to_string());
    let (unknown_user, unknown_group) = (unknown_user.to_string(), unknown_group.to_string());
    let max = MAX_MEMBERS.to_string();
    let cases = [
        (
            add_self.map(|_| ()),
            ErrorCode::AlreadyExists,
            vec![owner_id.as_str(), group_id.as_str()],
            "the owner adds itself again",
        ),
        (
            add_unknown.map(|_| ()),
            ErrorCode::NotFound,
            vec![unknown_user.as_str()],
            "an unknown user",
        ),
        (
            remove_outsider.map(|_| ()),
            ErrorCode::NotFound,
            vec![outsider_id.as_str(), group_id.as_str()],
            "a user outside the group",
        ),
        (
            get_unknown.map(|_| ()),
            ErrorCode::NotFound,
            vec![unknown_group.as_str()],
            "an unknown group",
        ),
        (
            read_outside.map(|_| ()),
            ErrorCode::NotGroupMember,
            vec![group_id.as_str()],
            "a non-member reads the group",
        ),
        (
            too_many,
            ErrorCode::GroupFull,
            vec![max.as_str(), "100001"],
            "100,000 members",
        ),
    ];
    for (result, code, named, case) in cases {
        let status = result.expect_err(case);
        assert_eq!(error_code(&status), code, "{case}");
        for value in named {
            assert!(
                status.message().contains(value),
                "{case}: {}",
                status.message()
            );
        }
    }
    logic.server.shutdown().await;
}

/// `max_groups_per_user` in the group cap tests, small enough to reach.
const MAX_GROUPS: u32 = 3;

async fn start_with_group_cap() -> TestLogic {
    TestLogic::start(im_logic::Config {
        max_groups_per_user: MAX_GROUPS,
        ..common::test_config()
    })
    .await
}

/// Creates a group owned by `owner` with `members`, each of whom must be open or a friend of
/// the owner.
async fn try_create_group(
    ext: &mut common::ExtClient,
    owner: &LoginReply,
    members: &[&LoginReply],
) -> Result<im_proto::v1::GroupInfo, tonic::Status> {
    let request = CreateGroupRequest {
        name: "capped".to_owned(),
        member_ids: members.iter().map(|member| member.user_id).collect(),
    };
    ext.create_group(as_device(owner, request))
        .await
        .map(tonic::Response::into_inner)
}

/// Registers an open user and puts it in `groups` groups, each with its own owner.
async fn open_user_in_groups(
    logic: &mut TestLogic,
    ext: &mut common::ExtClient,
    prefix: &str,
    groups: u32,
) -> (LoginReply, Vec<u64>) {
    let (_, user) = new_user_device(&mut logic.client, prefix, true, conn(NODE, 1)).await;
    let mut group_ids = Vec::new();
    for _ in 0..groups {
        let owner = new_device(&mut logic.client, "cap_owner", conn(NODE, 2)).await;
        let group = try_create_group(ext, &owner, &[&user])
            .await
            .expect("group below the cap");
        group_ids.push(group.group_id);
    }
    (user, group_ids)
}

async fn group_count(ext: &mut common::ExtClient, user: &LoginReply) -> usize {
    ext.list_groups(as_device(user, ListGroupsRequest {}))
        .await
        .expect("list groups")
        .into_inner()
        .groups
        .len()
}

#[tokio::test]
async fn add_past_group_cap_is_rejected() {
    let mut logic = start_with_group_cap().await;
    let mut ext = logic.ext_client().await;
    let (target, group_ids) =
        open_user_in_groups(&mut logic, &mut ext, "cap_add", MAX_GROUPS).await;
    let adder = new_device(&mut logic.client, "cap_adder", conn(NODE, 3)).await;
    let fourth = try_create_group(&mut ext, &adder, &[])
        .await
        .expect("the adder's own group");

    let rejected = ext
        .add_group_members(as_device(&adder, members(fourth.group_id, &[&target])))
        .await
        .expect_err("a user at the cap added to a fourth group");
    assert_eq!(error_code(&rejected), ErrorCode::TooManyGroups);
    assert_eq!(rejected.code(), Code::FailedPrecondition);
    let message = rejected.message();
    assert!(
        message.contains(&format!("user {} ", target.user_id)),
        "{message}"
    );
    assert!(message.contains("max_groups_per_user"), "{message}");
    assert!(message.contains(&MAX_GROUPS.to_string()), "{message}");

    let after = ext
        .get_group(as_device(
            &adder,
            GetGroupRequest {
                group_id: fourth.group_id,
            },
        ))
        .await
        .expect("get the fourth group")
        .into_inner();
    assert_eq!(after, fourth, "the rejected add changed the group");
    assert_eq!(group_count(&mut ext, &target).await, MAX_GROUPS as usize);

    ext.remove_group_members(as_device(&target, members(group_ids[0], &[&target])))
        .await
        .expect("the user leaves a group");
    let added = ext
        .add_group_members(as_device(&adder, members(fourth.group_id, &[&target])))
        .await
        .expect("an add below the cap")
        .into_inner();
    assert_eq!(added.member_ids, sorted_ids(&[&adder, &target]));
    assert_eq!(group_count(&mut ext, &target).await, MAX_GROUPS as usize);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn create_past_group_cap_is_rejected() {
    let mut logic = start_with_group_cap().await;
    let mut ext = logic.ext_client().await;
    let (target, _) = open_user_in_groups(&mut logic, &mut ext, "cap_create", MAX_GROUPS).await;
    let creator = new_device(&mut logic.client, "cap_creator", conn(NODE, 3)).await;

    let as_member = try_create_group(&mut ext, &creator, &[&target])
        .await
        .expect_err("a new group with a member at the cap");
    assert_eq!(error_code(&as_member), ErrorCode::TooManyGroups);
    let message = as_member.message();
    assert!(
        message.contains(&format!("user {} ", target.user_id)),
        "{message}"
    );
    assert_eq!(
        group_count(&mut ext, &creator).await,
        0,
        "a group was stored"
    );

    let as_creator = try_create_group(&mut ext, &target, &[])
        .await
        .expect_err("a new group by a creator at the cap");
    assert_eq!(error_code(&as_creator), ErrorCode::TooManyGroups);
    let message = as_creator.message();
    assert!(
        message.contains(&format!("user {} ", target.user_id)),
        "{message}"
    );
    assert_eq!(group_count(&mut ext, &target).await, MAX_GROUPS as usize);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_adds_respect_group_cap() {
    let mut logic = start_with_group_cap().await;
    let mut ext = logic.ext_client().await;
    // Several users, each added to two groups at once, so that a race has several chances.
    const ROUNDS: usize = 6;
    let mut targets = Vec::new();
    let mut adds = Vec::new();
    for _ in 0..ROUNDS {
        let (target, _) =
            open_user_in_groups(&mut logic, &mut ext, "cap_race", MAX_GROUPS - 1).await;
        for _ in 0..2 {
            let adder = new_device(&mut logic.client, "cap_racer", conn(NODE, 3)).await;
            let group = try_create_group(&mut ext, &adder, &[])
                .await
                .expect("the adder's own group");
            adds.push((adder, group.group_id, target.user_id));
        }
        targets.push(target);
    }

    let calls = adds.iter().map(|(adder, group_id, user_id)| {
        let mut ext = ext.clone();
        let request = GroupMembersRequest {
            group_id: *group_id,
            user_ids: vec![*user_id],
        };
        async move { ext.add_group_members(as_device(adder, request)).await }
    });
    let results = futures::future::join_all(calls).await;

    for (round, target) in targets.iter().enumerate() {
        let pair = &results[2 * round..2 * round + 2];
        let added = pair.iter().filter(|result| result.is_ok()).count();
        assert_eq!(added, 1, "user {}: {pair:?}", target.user_id);
        for result in pair {
            if let Err(status) = result {
                assert_eq!(error_code(status), ErrorCode::TooManyGroups, "{status:?}");
            }
        }
        assert_eq!(group_count(&mut ext, target).await, MAX_GROUPS as usize);
    }
    logic.server.shutdown().await;
}
