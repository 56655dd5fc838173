//! The `users` table: accounts, their password hashes and whether strangers may message them.

use std::collections::HashMap;
use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{epoch_ms, rows, PgStore};
use crate::error::LogicError;
use crate::ids::UserId;

const INSERT: &str =
    "INSERT INTO users (username, password_hash, open) VALUES ($1, $2, $3) RETURNING id";

// Usernames match in any letter case, through the unique index on lower(username).
const FIND_BY_USERNAME: &str =
    "SELECT id, password_hash FROM users WHERE lower(username) = lower($1)";

const PROFILE_BY_ID: &str = "SELECT id, username, open, created_at FROM users WHERE id = $1";

const PROFILE_BY_USERNAME: &str =
    "SELECT id, username, open, created_at FROM users WHERE lower(username) = lower($1)";

/// Locks the listed users' rows in ascending id order. FOR NO KEY UPDATE conflicts with itself
/// but not with the FOR KEY SHARE locks that foreign-key checks take, so inserts of rows that
/// reference these users do not wait for it.
const LOCK_MANY: &str = "SELECT id FROM users WHERE id = ANY($1::bigint[]) \
                         ORDER BY id FOR NO KEY UPDATE";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        INSERT,
        FIND_BY_USERNAME,
        PROFILE_BY_ID,
        PROFILE_BY_USERNAME,
        LOCK_MANY,
    ]
}

/// What anyone may see of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The user.
    pub id: UserId,
    /// The unique username.
    pub username: String,
    /// True when anyone may send the user direct messages.
    pub open: bool,
    /// When the user registered, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A user's id and stored password hash.
pub struct Credentials {
    /// The user.
    pub id: UserId,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// Inserts a user and returns the new id. `open` lets anyone send the user direct messages.
///
/// # Errors
///
/// [`LogicError::UsernameTaken`] when the username exists, store errors otherwise.
pub async fn insert(
    pg: &PgStore,
    username: &str,
    password_hash: &str,
    open: bool,
) -> Result<UserId, LogicError> {
    let row = pg
        .query_one(INSERT, &[&username, &password_hash, &open])
        .await
        .map_err(|err| username_taken(err, username))?;
    UserId::from_sql(row.try_get(0)?)
}

/// Locks the rows of `ids` FOR NO KEY UPDATE, in ascending id order, until the transaction
/// ends. Ids without a row are skipped.
///
/// Transactions that count what a user holds before adding to it (its groups, its friend list)
/// take this lock as their last one, so that two of them for the same user count one after the
/// other. A transaction that holds one of these locks then waits only for another of them,
/// taken in the same order, so waits cannot form a cycle.
///
/// # Errors
///
/// Store errors.
pub async fn lock_many(db: &impl GenericClient, ids: &[i64]) -> Result<(), LogicError> {
    rows(db, LOCK_MANY, &[&ids]).await.map(|_| ())
}

/// Locks the rows of `users` as [`lock_many`] does, then runs `count_statement`, which returns
/// (user id, count) rows for the ids in `$1`, and returns each user's count in the order of
/// `users`, 0 for a user without a row. The count is a statement of its own, so it reads what
/// transactions committed before the lock was granted.
///
/// # Errors
///
/// Store errors.
pub async fn lock_and_count(
    db: &impl GenericClient,
    users: &[UserId],
    count_statement: &str,
) -> Result<Vec<u64>, LogicError> {
    // An id above the bigint range names no user, so its count is 0.
    let ids: Vec<i64> = users.iter().filter_map(|user| user.to_sql()).collect();
    lock_many(db, &ids).await?;
    let mut counts = HashMap::with_capacity(ids.len());
    for found in rows(db, count_statement, &[&ids]).await? {
        let count: i64 = found.try_get(1)?;
        let count = u64::try_from(count).map_err(|_| LogicError::Internal("negative count"))?;
        counts.insert(UserId::from_sql(found.try_get(0)?)?, count);
    }
    Ok(users
        .iter()
        .map(|user| counts.get(user).copied().unwrap_or(0))
        .collect())
}

/// Returns the id and password hash of `username`, or `None` when no such user exists.
///
/// # Errors
///
/// Store errors.
pub async fn find_by_username(
    pg: &PgStore,
    username: &str,
) -> Result<Option<Credentials>, LogicError> {
    let Some(row) = pg.query_opt(FIND_BY_USERNAME, &[&username]).await? else {
        return Ok(None);
    };
    Ok(Some(Credentials {
        id: UserId::from_sql(row.try_get(0)?)?,
        password_hash: row.try_get(1)?,
    }))
}

/// Returns the profile of `user`, or `None` when no such user exists.
///
/// # Errors
///
/// Store errors.
pub async fn profile(pg: &PgStore, user: UserId) -> Result<Option<Profile>, LogicError> {
    let Some(user) = user.to_sql() else {
        return Ok(None);
    };
    match pg.query_opt(PROFILE_BY_ID, &[&user]).await? {
        Some(row) => Ok(Some(profile_from_row(&row)?)),
        None => Ok(None),
    }
}

/// Returns the profile of `username`, or `None` when no such user exists.
///
/// # Errors
///
/// Store errors.
pub async fn profile_by_username(
    pg: &PgStore,
    username: &str,
) -> Result<Option<Profile>, LogicError> {
    match pg.query_opt(PROFILE_BY_USERNAME, &[&username]).await? {
        Some(row) => Ok(Some(profile_from_row(&row)?)),
        None => Ok(None),
    }
}

fn profile_from_row(row: &Row) -> Result<Profile, LogicError> {
    let created_at: SystemTime = row.try_get(3)?;
    Ok(Profile {
        id: UserId::from_sql(row.try_get(0)?)?,
        username: row.try_get(1)?,
        open: row.try_get(2)?,
        created_at_ms: epoch_ms(created_at),
    })
}

fn username_taken(err: LogicError, username: &str) -> LogicError {
    match &err {
        LogicError::Database(db) if db.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            LogicError::UsernameTaken(username.to_owned())
        }
        _ => err,
    }
}
