//! The `groups` table: each group's name and owner. Members live in `group_members`.
//!
//! Calls that change a group's members lock its row with [`lock`] first, so that concurrent
//! changes of one group run one after the other and its size limit holds.

use deadpool_postgres::GenericClient;

use super::{execute, row, row_opt, PgStore};
use crate::error::LogicError;
use crate::ids::{GroupId, UserId};

const INSERT: &str = "INSERT INTO groups (name, owner_id) VALUES ($1, $2) RETURNING id";

const LOCK: &str = "SELECT name, owner_id FROM groups WHERE id = $1 FOR UPDATE";

const SET_OWNER: &str = "UPDATE groups SET owner_id = $2 WHERE id = $1";

const DELETE: &str = "DELETE FROM groups WHERE id = $1";

/// A group with its members; every group has at least one member.
const FIND_WITH_MEMBERS: &str = "SELECT g.name, g.owner_id, \
                                 array_agg(member.user_id ORDER BY member.user_id) \
                                 FROM groups AS g \
                                 JOIN group_members AS member ON member.group_id = g.id \
                                 WHERE g.id = $1 GROUP BY g.id";

const LIST_FOR_MEMBER: &str = "SELECT g.id, g.name, g.owner_id, \
                               array_agg(member.user_id ORDER BY member.user_id) \
                               FROM group_members AS mine \
                               JOIN groups AS g ON g.id = mine.group_id \
                               JOIN group_members AS member ON member.group_id = g.id \
                               WHERE mine.user_id = $1 GROUP BY g.id ORDER BY g.id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        INSERT,
        LOCK,
        SET_OWNER,
        DELETE,
        FIND_WITH_MEMBERS,
        LIST_FOR_MEMBER,
    ]
}

/// A group's name and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHead {
    /// 1 to 64 characters.
    pub name: String,
    /// The member who may remove others.
    pub owner: UserId,
}

/// A group with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group.
    pub id: GroupId,
    /// Name and owner.
    pub head: GroupHead,
    /// Members in ascending user id order, the owner included.
    pub members: Vec<UserId>,
}

/// Inserts a group owned by `owner` and returns its id. Add the owner as a member in the same
/// transaction.
///
/// # Errors
///
/// Store errors.
pub async fn insert(
    db: &impl GenericClient,
    name: &str,
    owner: UserId,
) -> Result<GroupId, LogicError> {
    let owner = owner
        .to_sql()
        .ok_or(LogicError::Internal("owner id above the bigint range"))?;
    let found = row(db, INSERT, &[&name, &owner]).await?;
    GroupId::from_sql(found.try_get(0)?)
}

/// Locks the group's row for the rest of the transaction and returns its name and owner, or
/// `None` when the group does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn lock(
    db: &impl GenericClient,
    group: GroupId,
) -> Result<Option<GroupHead>, LogicError> {
    let Some(group) = group.to_sql() else {
        return Ok(None);
    };
    match row_opt(db, LOCK, &[&group]).await? {
        Some(found) => Ok(Some(GroupHead {
            name: found.try_get(0)?,
            owner: UserId::from_sql(found.try_get(1)?)?,
        })),
        None => Ok(None),
    }
}

/// Makes `owner` the group's owner.
///
/// # Errors
///
/// Store errors.
pub async fn set_owner(
    db: &impl GenericClient,
    group: GroupId,
    owner: UserId,
) -> Result<(), LogicError> {
    let (Some(group), Some(owner)) = (group.to_sql(), owner.to_sql()) else {
        return Err(LogicError::Internal(
            "group or owner id above the bigint range",
        ));
    };
    execute(db, SET_OWNER, &[&group, &owner]).await.map(|_| ())
}

/// Deletes the group and, by cascade, its member rows.
///
/// # Errors
///
/// Store errors.
pub async fn delete(db: &impl GenericClient, group: GroupId) -> Result<(), LogicError> {
    let group = group
        .to_sql()
        .ok_or(LogicError::Internal("group id above the bigint range"))?;
    execute(db, DELETE, &[&group]).await.map(|_| ())
}

/// Returns the group with its members, or `None` when it does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn find(pg: &PgStore, group: GroupId) -> Result<Option<Group>, LogicError> {
    let Some(id) = group.to_sql() else {
        return Ok(None);
    };
    let Some(found) = pg.query_opt(FIND_WITH_MEMBERS, &[&id]).await? else {
        return Ok(None);
    };
    Ok(Some(Group {
        id: group,
        head: GroupHead {
            name: found.try_get(0)?,
            owner: UserId::from_sql(found.try_get(1)?)?,
        },
        members: user_ids(found.try_get(2)?)?,
    }))
}

/// Returns the groups `user` is a member of, by group id, with their members.
///
/// # Errors
///
/// Store errors.
pub async fn list_for_member(pg: &PgStore, user: UserId) -> Result<Vec<Group>, LogicError> {
    let Some(user) = user.to_sql() else {
        return Ok(Vec::new());
    };
    let mut groups = Vec::new();
    for found in pg.query(LIST_FOR_MEMBER, &[&user]).await? {
        groups.push(Group {
            id: GroupId::from_sql(found.try_get(0)?)?,
            head: GroupHead {
                name: found.try_get(1)?,
                owner: UserId::from_sql(found.try_get(2)?)?,
            },
            members: user_ids(found.try_get(3)?)?,
        });
    }
    Ok(groups)
}

/// Converts a `bigint[]` of user ids.
pub(crate) fn user_ids(ids: Vec<i64>) -> Result<Vec<UserId>, LogicError> {
    ids.into_iter().map(UserId::from_sql).collect()
}
