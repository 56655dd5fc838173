//! The `group_members` table: who belongs to each group, and since when.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::groups::user_ids;
use super::{execute, row, rows, users};
use crate::error::LogicError;
use crate::ids::{GroupId, UserId};

const INSERT_MANY: &str =
    "INSERT INTO group_members (group_id, user_id) SELECT $1, unnest($2::bigint[])";

const DELETE_MANY: &str = "DELETE FROM group_members WHERE group_id = $1 AND user_id = ANY($2)";

const MEMBERS: &str = "SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id";

/// The member who joined first; the owner's successor when the owner leaves.
const LONGEST_MEMBER: &str = "SELECT user_id FROM group_members WHERE group_id = $1 \
                              ORDER BY joined_at, user_id LIMIT 1";

/// Whether the group exists, and its members: always one row.
const RECIPIENTS: &str = "SELECT EXISTS (SELECT 1 FROM groups WHERE id = $1), \
                          array_agg(user_id ORDER BY user_id) \
                          FROM group_members WHERE group_id = $1";

/// Every listed group that exists, with its members in ascending order.
const RECIPIENTS_MANY: &str = "SELECT g.id, array_agg(member.user_id ORDER BY member.user_id) \
                               FILTER (WHERE member.user_id IS NOT NULL) \
                               FROM groups AS g \
                               LEFT JOIN group_members AS member ON member.group_id = g.id \
                               WHERE g.id = ANY($1::bigint[]) GROUP BY g.id";

/// The number of groups each listed user is a member of. A user in no group has no row.
const GROUP_COUNTS: &str = "SELECT user_id, count(*) FROM group_members \
                            WHERE user_id = ANY($1::bigint[]) GROUP BY user_id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        INSERT_MANY,
        DELETE_MANY,
        MEMBERS,
        LONGEST_MEMBER,
        RECIPIENTS,
        RECIPIENTS_MANY,
        GROUP_COUNTS,
    ]
}

/// Adds `users` to the group.
///
/// # Errors
///
/// [`LogicError::NotFound`] when one of them does not exist, [`LogicError::AlreadyExists`]
/// when one is a member already; store errors.
pub async fn insert_many(
    db: &impl GenericClient,
    group: GroupId,
    users: &[UserId],
) -> Result<(), LogicError> {
    let group_id = group_to_sql(group)?;
    let mut ids = Vec::with_capacity(users.len());
    for user in users {
        let id = user
            .to_sql()
            .ok_or_else(|| LogicError::NotFound(format!("user {user} not found")))?;
        ids.push(id);
    }
    // The callers check each user before the insert, so these errors are a fallback. They name
    // no user, because only PostgreSQL's error detail does and callers never see it.
    match execute(db, INSERT_MANY, &[&group_id, &ids]).await {
        Ok(_) => Ok(()),
        Err(LogicError::Database(err)) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            Err(LogicError::NotFound(format!(
                "a user added to group {group} was not found"
            )))
        }
        Err(LogicError::Database(err)) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(
            LogicError::AlreadyExists(format!("a user added to group {group} is a member already")),
        ),
        Err(err) => Err(err),
    }
}

/// Locks the rows of `users` in the `users` table ([`users::lock_many`]) until the transaction
/// ends and returns the number of groups each of them is a member of, in the order of `users`.
/// Two statements for all users: the lock, then the count.
///
/// Every transaction that adds group members calls this before its insert. So a concurrent add
/// of the same user waits here until the other transaction ends, and the count, which is a
/// separate statement with a new snapshot at READ COMMITTED, then includes what it committed.
/// Locking and counting in one statement would count from the snapshot taken before the wait.
///
/// The rows are locked in ascending id order. After this call a caller locks nothing else
/// except through the foreign-key checks of its inserts, whose FOR KEY SHARE locks do not
/// conflict with these. So a transaction that holds one of these locks waits only for another
/// of them, and waits cannot form a cycle. A friend request takes the same locks, also last
/// (`friendships::lock_friend_counts`).
///
/// # Errors
///
/// Store errors.
pub async fn lock_group_counts(
    db: &impl GenericClient,
    users: &[UserId],
) -> Result<Vec<u64>, LogicError> {
    users::lock_and_count(db, users, GROUP_COUNTS).await
}

/// Removes `users` from the group and returns how many were members.
///
/// # Errors
///
/// Store errors.
pub async fn delete_many(
    db: &impl GenericClient,
    group: GroupId,
    users: &[UserId],
) -> Result<u64, LogicError> {
    let group = group_to_sql(group)?;
    let users: Vec<i64> = users.iter().filter_map(|user| user.to_sql()).collect();
    execute(db, DELETE_MANY, &[&group, &users]).await
}

/// Returns the group's members in ascending user id order.
///
/// # Errors
///
/// Store errors.
pub async fn members(db: &impl GenericClient, group: GroupId) -> Result<Vec<UserId>, LogicError> {
    let group = group_to_sql(group)?;
    rows(db, MEMBERS, &[&group])
        .await?
        .iter()
        .map(|found| UserId::from_sql(found.try_get(0)?))
        .collect()
}

/// Returns the member who joined first, or `None` for a group without members.
///
/// # Errors
///
/// Store errors.
pub async fn longest_member(
    db: &impl GenericClient,
    group: GroupId,
) -> Result<Option<UserId>, LogicError> {
    let group = group_to_sql(group)?;
    match rows(db, LONGEST_MEMBER, &[&group]).await?.first() {
        Some(found) => Ok(Some(UserId::from_sql(found.try_get(0)?)?)),
        None => Ok(None),
    }
}

/// Returns the group's members in ascending user id order, the order in which a send locks
/// their seqs, or `None` when the group does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn recipients(
    db: &impl GenericClient,
    group: GroupId,
) -> Result<Option<Vec<UserId>>, LogicError> {
    let Some(group) = group.to_sql() else {
        return Ok(None);
    };
    let found = row(db, RECIPIENTS, &[&group]).await?;
    let exists: bool = found.try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let members: Option<Vec<i64>> = found.try_get(1)?;
    user_ids(members.unwrap_or_default()).map(Some)
}

/// [`recipients`] for many groups in one statement: the members of each listed group that
/// exists, in ascending user id order. A missing group has no entry.
///
/// # Errors
///
/// Store errors.
pub async fn recipients_many(
    db: &impl GenericClient,
    groups: &[GroupId],
) -> Result<HashMap<GroupId, Vec<UserId>>, LogicError> {
    let mut found = HashMap::with_capacity(groups.len());
    if groups.is_empty() {
        return Ok(found);
    }
    // An id above the bigint range names no group: it gets no entry.
    let ids: Vec<i64> = groups.iter().filter_map(|group| group.to_sql()).collect();
    if ids.is_empty() {
        return Ok(found);
    }
    for row in rows(db, RECIPIENTS_MANY, &[&ids]).await? {
        let members: Option<Vec<i64>> = row.try_get(1)?;
        found.insert(
            GroupId::from_sql(row.try_get(0)?)?,
            user_ids(members.unwrap_or_default())?,
        );
    }
    Ok(found)
}

fn group_to_sql(group: GroupId) -> Result<i64, LogicError> {
    group
        .to_sql()
        .ok_or(LogicError::Internal("group id above the bigint range"))
}
