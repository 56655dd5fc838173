//! The `users` table: accounts and their password hashes.

use tokio_postgres::error::SqlState;

use super::PgStore;
use crate::error::LogicError;
use crate::ids::UserId;

const INSERT: &str = "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id";

const FIND_BY_USERNAME: &str = "SELECT id, password_hash FROM users WHERE username = $1";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[INSERT, FIND_BY_USERNAME]
}

/// A user's id and stored password hash.
pub struct Credentials {
    /// The user.
    pub id: UserId,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// Inserts a user and returns the new id.
///
/// # Errors
///
/// [`LogicError::UsernameTaken`] when the username exists, store errors otherwise.
pub async fn insert(
    pg: &PgStore,
    username: &str,
    password_hash: &str,
) -> Result<UserId, LogicError> {
    let row = pg
        .query_one(INSERT, &[&username, &password_hash])
        .await
        .map_err(username_taken)?;
    UserId::from_sql(row.try_get(0)?)
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

fn username_taken(err: LogicError) -> LogicError {
    match &err {
        LogicError::Database(db) if db.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            LogicError::UsernameTaken
        }
        _ => err,
    }
}
