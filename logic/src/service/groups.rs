//! Groups: the creator is the owner and a member; members add members; the owner removes
//! anyone and other members only themselves. When the owner leaves, the member who joined first
//! becomes the owner; when the last member leaves, the group is deleted.
//!
//! Each change pushes a notice to the online devices of every member once it has committed; a
//! removal also to the removed users.
//!
//! A user joins a group only through a friend: the user who creates the group or adds it must
//! be its friend, unless it is `open`, the same rule as for a direct message. So a stranger
//! cannot put a user in a group and message it there. Since anyone may add an `open` user, no
//! user joins more than `max_groups_per_user` groups, which bounds the ListGroups reply.

use im_proto::v1::{
    CreateGroupRequest, GetGroupRequest, GroupInfo, GroupMembersRequest, ListGroupsReply,
    ListGroupsRequest, NoticeKind,
};

use super::caller::Caller;
use super::notices::group_notice;
use super::text::check_no_control;
use super::Logic;
use crate::error::LogicError;
use crate::ids::{GroupId, UserId};
use crate::store::pg::groups::{self, Group, GroupHead};
use crate::store::pg::{friendships, group_members};

/// Length of a group name, in characters.
const NAME_CHARS: std::ops::RangeInclusive<usize> = 1..=64;

/// Creates a group owned by the caller, with the caller and `member_ids` as members.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a name outside 1 to 64 characters or of white space only,
/// or a member id 0, [`LogicError::ControlCharacter`] for a name with a control character,
/// [`LogicError::GroupFull`] for more than `max_group_members` members,
/// [`LogicError::NotFound`] when a member does not exist, [`LogicError::NotFriendToAdd`] when a
/// member is neither the caller's friend nor open, [`LogicError::TooManyGroups`] when the caller
/// or a member is in `max_groups_per_user` groups already; store errors.
pub async fn create_group(
    logic: &Logic,
    caller: Caller,
    request: CreateGroupRequest,
) -> Result<GroupInfo, LogicError> {
    validate_name(&request.name)?;
    let mut members = distinct_users("member_ids", &request.member_ids)?;
    if let Err(at) = members.binary_search(&caller.user) {
        members.insert(at, caller.user);
    }
    check_size(logic, members.len())?;

    let id = logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            check_may_add(&tx, caller, &members).await?;
            check_group_counts(&tx, logic, &members).await?;
            let id = groups::insert(&tx, &request.name, caller.user).await?;
            group_members::insert_many(&tx, id, &members).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await?;
    tracing::debug!(user_id = caller.user.0, room_id = id.0, "group created");
    let notice = group_notice(NoticeKind::GroupCreated, caller.user, id, &members);
    logic.pusher.push_notice(notice, &members);
    let head = GroupHead {
        name: request.name,
        owner: caller.user,
    };
    Ok(group_info(id, head, &members))
}

/// Adds `user_ids` to the group; the caller must be a member.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for group 0, an empty list or user 0,
/// [`LogicError::NotFound`] for an unknown group or user, [`LogicError::NotGroupMember`] when
/// the caller is not a member,
/// [`LogicError::AlreadyExists`] when one of them is a member already (nobody is added),
/// [`LogicError::GroupFull`], [`LogicError::NotFriendToAdd`] when one of them is neither the
/// caller's friend nor open (no user is added), [`LogicError::TooManyGroups`] when one of them
/// is in `max_groups_per_user` groups already (no user is added); store errors.
pub async fn add_group_members(
    logic: &Logic,
    caller: Caller,
    request: GroupMembersRequest,
) -> Result<GroupInfo, LogicError> {
    let group = requested_group(request.group_id)?;
    let added = requested_users(&request)?;
    let (info, members) = logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            let (head, mut members) = lock_as_member(&tx, group, caller).await?;
            if let Some(user) = added
                .iter()
                .find(|user| members.binary_search(user).is_ok())
            {
                return Err(LogicError::AlreadyExists(format!(
                    "user {user} is a member of group {group} already"
                )));
            }
            check_size(logic, members.len() + added.len())?;
            check_may_add(&tx, caller, &added).await?;
            check_group_counts(&tx, logic, &added).await?;
            group_members::insert_many(&tx, group, &added).await?;
            tx.commit().await?;

            members.extend_from_slice(&added);
            members.sort_unstable();
            Ok((group_info(group, head, &members), members))
        })
        .await?;
    let notice = group_notice(NoticeKind::GroupMembersAdded, caller.user, group, &added);
    logic.pusher.push_notice(notice, &members);
    Ok(info)
}

/// Removes `user_ids` from the group. The owner may remove anyone, itself included; another
/// member only itself. The reply shows the group afterwards: with owner 0 and no members when
/// the last member left and the group was deleted.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for group 0, an empty list or user 0.
/// [`LogicError::NotFound`] for an unknown group or a user who is not a member.
/// [`LogicError::NotGroupMember`] when the caller is not a member.
/// [`LogicError::PermissionDenied`] when a member who is not the owner removes someone else.
/// Store errors.
pub async fn remove_group_members(
    logic: &Logic,
    caller: Caller,
    request: GroupMembersRequest,
) -> Result<GroupInfo, LogicError> {
    let group = requested_group(request.group_id)?;
    let removed = requested_users(&request)?;
    let (info, members) = logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            let (mut head, members) = lock_as_member(&tx, group, caller).await?;
            if head.owner != caller.user && removed != [caller.user] {
                return Err(LogicError::PermissionDenied(
                    "only the group owner removes other members",
                ));
            }
            if let Some(user) = removed
                .iter()
                .find(|user| members.binary_search(user).is_err())
            {
                return Err(LogicError::NotFound(format!(
                    "user {user} is not a member of group {group}"
                )));
            }
            group_members::delete_many(&tx, group, &removed).await?;
            let remaining: Vec<UserId> = members
                .iter()
                .copied()
                .filter(|user| removed.binary_search(user).is_err())
                .collect();
            head.owner = settle_owner(&tx, group, head.owner, &remaining).await?;
            tx.commit().await?;
            Ok((group_info(group, head, &remaining), members))
        })
        .await?;
    // The members before the removal: the remaining ones and the removed ones.
    let notice = group_notice(
        NoticeKind::GroupMembersRemoved,
        caller.user,
        group,
        &removed,
    );
    logic.pusher.push_notice(notice, &members);
    Ok(info)
}

/// Lists the groups the caller is a member of, by group id.
///
/// # Errors
///
/// Store errors.
pub async fn list_groups(
    logic: &Logic,
    caller: Caller,
    _request: ListGroupsRequest,
) -> Result<ListGroupsReply, LogicError> {
    let groups = groups::list_for_member(&logic.pg, caller.user).await?;
    let groups = groups
        .into_iter()
        .map(|group| group_info(group.id, group.head, &group.members))
        .collect();
    Ok(ListGroupsReply { groups })
}

/// Returns a group the caller is a member of.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for group 0, [`LogicError::NotFound`] for an unknown group,
/// [`LogicError::NotGroupMember`] when the caller is not a member; store errors.
pub async fn get_group(
    logic: &Logic,
    caller: Caller,
    request: GetGroupRequest,
) -> Result<GroupInfo, LogicError> {
    let group = requested_group(request.group_id)?;
    let Group { id, head, members } = groups::find(&logic.pg, group)
        .await?
        .ok_or_else(|| group_not_found(group))?;
    if members.binary_search(&caller.user).is_err() {
        return Err(LogicError::NotGroupMember(group.0));
    }
    Ok(group_info(id, head, &members))
}

/// Locks the group and returns its head and members, checking that the caller is a member.
async fn lock_as_member(
    tx: &deadpool_postgres::Transaction<'_>,
    group: GroupId,
    caller: Caller,
) -> Result<(GroupHead, Vec<UserId>), LogicError> {
    let head = groups::lock(tx, group)
        .await?
        .ok_or_else(|| group_not_found(group))?;
    let members = group_members::members(tx, group).await?;
    if members.binary_search(&caller.user).is_err() {
        return Err(LogicError::NotGroupMember(group.0));
    }
    Ok((head, members))
}

/// Checks that the caller may put each of `users` in a group: each is the caller, the caller's
/// friend or open. One statement for all of them.
///
/// The statement locks the caller's friendship rows FOR SHARE until `tx` ends. So a
/// RemoveFriend of one of these users either waits for `tx`, or commits first and the check
/// no longer finds the friendship. RequestFriend, AcceptFriend and RemoveFriend take no lock on
/// a group row (see `friendships::lock_pair`), so waiting here with the group's lock held cannot
/// deadlock with them.
async fn check_may_add(
    tx: &deadpool_postgres::Transaction<'_>,
    caller: Caller,
    users: &[UserId],
) -> Result<(), LogicError> {
    let others: Vec<UserId> = users
        .iter()
        .copied()
        .filter(|user| *user != caller.user)
        .collect();
    let access = friendships::lock_direct_access_many(tx, caller.user, &others).await?;
    for (user, access) in others.iter().zip(access) {
        match access {
            None => return Err(LogicError::NotFound(format!("user {user} not found"))),
            Some(access) if !access.open && !access.friends => {
                return Err(LogicError::NotFriendToAdd(user.0))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks that each of `users` is a member of fewer than `max_groups_per_user` groups, so that
/// joining one more keeps them within it. Locks their `users` rows until `tx` ends, so that
/// concurrent adds of the same user are checked one after the other. Call it as the last step
/// before the insert, because `group_members::lock_group_counts` must be the last lock taken.
async fn check_group_counts(
    tx: &deadpool_postgres::Transaction<'_>,
    logic: &Logic,
    users: &[UserId],
) -> Result<(), LogicError> {
    let max = logic.limits.max_groups_per_user;
    let counts = group_members::lock_group_counts(tx, users).await?;
    if let Some((user, _)) = users
        .iter()
        .zip(counts)
        .find(|(_, count)| *count >= u64::from(max))
    {
        return Err(LogicError::TooManyGroups { user: user.0, max });
    }
    Ok(())
}

/// Returns the owner after a removal: the same owner if still a member, else the member who
/// joined first, or 0 after deleting the group when nobody is left.
async fn settle_owner(
    tx: &deadpool_postgres::Transaction<'_>,
    group: GroupId,
    owner: UserId,
    remaining: &[UserId],
) -> Result<UserId, LogicError> {
    if remaining.is_empty() {
        groups::delete(tx, group).await?;
        return Ok(UserId(0));
    }
    if remaining.binary_search(&owner).is_ok() {
        return Ok(owner);
    }
    let successor = group_members::longest_member(tx, group)
        .await?
        .ok_or(LogicError::Internal("group without members kept its row"))?;
    groups::set_owner(tx, group, successor).await?;
    Ok(successor)
}

/// Checks a group name: 1 to 64 characters, not white space only, and no control character.
fn validate_name(name: &str) -> Result<(), LogicError> {
    if !NAME_CHARS.contains(&name.chars().count()) {
        return Err(LogicError::InvalidArgument {
            field: "name",
            reason: "must have 1 to 64 characters",
        });
    }
    check_no_control("name", name)?;
    if name.chars().all(char::is_whitespace) {
        return Err(LogicError::InvalidArgument {
            field: "name",
            reason: "must contain a character other than white space",
        });
    }
    Ok(())
}

/// Returns the group a request names, rejecting id 0.
fn requested_group(group_id: u64) -> Result<GroupId, LogicError> {
    if group_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "group_id",
            reason: "must not be 0",
        });
    }
    Ok(GroupId(group_id))
}

fn group_not_found(group: GroupId) -> LogicError {
    LogicError::NotFound(format!("group {group} not found"))
}

/// Returns the request's users, sorted and without repeats.
fn requested_users(request: &GroupMembersRequest) -> Result<Vec<UserId>, LogicError> {
    if request.user_ids.is_empty() {
        return Err(LogicError::InvalidArgument {
            field: "user_ids",
            reason: "must name at least one user",
        });
    }
    distinct_users("user_ids", &request.user_ids)
}

/// Returns the users of list `field`, sorted and without repeats, rejecting user 0.
fn distinct_users(field: &'static str, ids: &[u64]) -> Result<Vec<UserId>, LogicError> {
    if ids.contains(&0) {
        return Err(LogicError::InvalidArgument {
            field,
            reason: "must not contain user 0",
        });
    }
    let mut users: Vec<UserId> = ids.iter().map(|&id| UserId(id)).collect();
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

fn check_size(logic: &Logic, members: usize) -> Result<(), LogicError> {
    let max = logic.limits.max_group_members;
    if members > max as usize {
        return Err(LogicError::GroupFull { max, members });
    }
    Ok(())
}

fn group_info(id: GroupId, head: GroupHead, members: &[UserId]) -> GroupInfo {
    GroupInfo {
        group_id: id.0,
        name: head.name,
        owner_id: head.owner.0,
        member_ids: members.iter().map(|user| user.0).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(validate_name("a").is_ok());
        assert!(validate_name(" padded ").is_ok());
        assert!(
            validate_name(&"é".repeat(64)).is_ok(),
            "characters, not bytes"
        );
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(" \u{3000}").is_err(), "white space only");
    }

    #[test]
    fn requested_users_are_sorted_and_distinct() {
        let request = GroupMembersRequest {
            group_id: 1,
            user_ids: vec![5, 3, 5, 1],
        };
        let users = requested_users(&request).expect("not empty");
        assert_eq!(users, vec![UserId(1), UserId(3), UserId(5)]);

        let empty = GroupMembersRequest {
            group_id: 1,
            user_ids: Vec::new(),
        };
        assert!(requested_users(&empty).is_err());
        let with_zero = GroupMembersRequest {
            group_id: 1,
            user_ids: vec![4, 0],
        };
        assert!(requested_users(&with_zero).is_err());
    }
}
