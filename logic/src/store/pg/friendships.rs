//! The `friendships` table: two rows per pair of users, one from each side, with the state of
//! the pair and who asked. Both rows are written, changed and deleted together.
//!
//! Statements that change a pair first lock its rows with [`lock_pair`], in ascending user id
//! order, so that two users acting on the same pair at once cannot deadlock.
//!
//! Transactions that change friendships or groups take their locks in one order and leave out
//! what they do not need. A group's row comes first. Friendship rows come next: those of
//! [`lock_pair`] or [`lock_direct_access_many`], or the two rows [`insert_request`] inserts.
//! Rows of the `users` table come last, in ascending id order ([`lock_friend_counts`] and
//! `group_members::lock_group_counts`). A transaction waits only for a lock later in that order
//! than the ones it holds, or for one of the same kind taken in the same ascending order, so
//! waits cannot form a cycle.

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{execute, row_opt, rows, users, PgStore};
use crate::error::LogicError;
use crate::ids::UserId;

/// Whether `$1` may send `$2` a direct message: one row when `$2` exists.
const DIRECT_ACCESS: &str = "SELECT receiver.open, COALESCE(pair.state = 'accepted', false) \
                             FROM users AS receiver \
                             LEFT JOIN friendships AS pair \
                             ON pair.user_id = $1 AND pair.friend_id = receiver.id \
                             WHERE receiver.id = $2";

/// [`DIRECT_ACCESS`] for many (sender, receiver) pairs; a pair whose receiver does not exist has
/// no row. $3 holds each pair's position, returned with its row.
const DIRECT_ACCESS_MANY: &str = "SELECT pairs.position, receiver.open, \
                                  COALESCE(pair.state = 'accepted', false) \
                                  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
                                  AS pairs (sender, receiver, position) \
                                  JOIN users AS receiver ON receiver.id = pairs.receiver \
                                  LEFT JOIN friendships AS pair \
                                  ON pair.user_id = pairs.sender AND pair.friend_id = receiver.id";

/// [`DIRECT_ACCESS_MANY`] for one sender, $1, and many receivers, $2, that also locks the
/// sender's row of each pair that exists FOR SHARE, in receiver id order. $3 contains each
/// receiver's position, returned with its row. When the lock waits for a transaction that
/// deletes the row, PostgreSQL at READ COMMITTED skips the row once that transaction commits
/// (manual, "Read Committed Isolation Level"), so the pair counts as no friendship.
const LOCK_DIRECT_ACCESS_MANY: &str = "WITH pair AS (SELECT friend_id, state FROM friendships \
                                       WHERE user_id = $1 AND friend_id = ANY($2::bigint[]) \
                                       ORDER BY friend_id FOR SHARE) \
                                       SELECT receivers.position, receiver.open, \
                                       COALESCE(pair.state = 'accepted', false) \
                                       FROM unnest($2::bigint[], $3::bigint[]) \
                                       AS receivers (id, position) \
                                       JOIN users AS receiver ON receiver.id = receivers.id \
                                       LEFT JOIN pair ON pair.friend_id = receiver.id";

const LOCK_PAIR: &str = "SELECT user_id, state, requested_by FROM friendships \
                         WHERE user_id IN ($1, $2) AND friend_id IN ($1, $2) \
                         ORDER BY user_id FOR UPDATE";

/// $1 is the lower user id, so both rows are inserted in the order [`lock_pair`] locks them.
const INSERT_REQUEST: &str = "INSERT INTO friendships (user_id, friend_id, state, requested_by) \
                              VALUES ($1, $2, 'requested', $3), ($2, $1, 'requested', $3) \
                              ON CONFLICT DO NOTHING";

const ACCEPT_PAIR: &str = "UPDATE friendships SET state = 'accepted' \
                           WHERE user_id IN ($1, $2) AND friend_id IN ($1, $2)";

const DELETE_PAIR: &str =
    "DELETE FROM friendships WHERE user_id IN ($1, $2) AND friend_id IN ($1, $2)";

/// The entries of each listed user's friend list, friends and pending requests together. A
/// user with none has no row.
const FRIEND_COUNTS: &str = "SELECT user_id, count(*) FROM friendships \
                             WHERE user_id = ANY($1::bigint[]) GROUP BY user_id";

const LIST: &str = "SELECT pair.friend_id, friend.username, pair.state, pair.requested_by \
                    FROM friendships AS pair JOIN users AS friend ON friend.id = pair.friend_id \
                    WHERE pair.user_id = $1 ORDER BY pair.friend_id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        DIRECT_ACCESS,
        DIRECT_ACCESS_MANY,
        LOCK_DIRECT_ACCESS_MANY,
        LOCK_PAIR,
        INSERT_REQUEST,
        ACCEPT_PAIR,
        DELETE_PAIR,
        FRIEND_COUNTS,
        LIST,
    ]
}

/// The state of a pair of users as one of them sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairState {
    /// Both are friends.
    Accepted,
    /// A request waits for the other user's accept; `by` sent it.
    Requested {
        /// The user who sent the request.
        by: UserId,
    },
}

/// What decides whether a sender may message a user directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAccess {
    /// The receiver accepts direct messages from anyone.
    pub open: bool,
    /// The sender and the receiver are friends.
    pub friends: bool,
}

/// One entry of a user's friend list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendEntry {
    /// The other user.
    pub user: UserId,
    /// The other user's name.
    pub username: String,
    /// The pair's state.
    pub state: PairState,
}

/// Returns whether `receiver` is open and whether it is `sender`'s friend, or `None` when the
/// receiver does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn direct_access(
    db: &impl GenericClient,
    sender: UserId,
    receiver: UserId,
) -> Result<Option<DirectAccess>, LogicError> {
    let (Some(sender), Some(receiver)) = (sender.to_sql(), receiver.to_sql()) else {
        return Ok(None);
    };
    let Some(row) = row_opt(db, DIRECT_ACCESS, &[&sender, &receiver]).await? else {
        return Ok(None);
    };
    Ok(Some(DirectAccess {
        open: row.try_get(0)?,
        friends: row.try_get(1)?,
    }))
}

/// [`direct_access`] for many (sender, receiver) pairs in one statement; returns one entry per
/// pair, `None` when the receiver does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn direct_access_many(
    db: &impl GenericClient,
    pairs: &[(UserId, UserId)],
) -> Result<Vec<Option<DirectAccess>>, LogicError> {
    let mut access = vec![None; pairs.len()];
    // An id above the bigint range names no user: its pair keeps `None` and is not sent.
    let mut senders = Vec::with_capacity(pairs.len());
    let mut receivers = Vec::with_capacity(pairs.len());
    let mut positions = Vec::with_capacity(pairs.len());
    for (index, (sender, receiver)) in pairs.iter().enumerate() {
        if let (Some(sender), Some(receiver)) = (sender.to_sql(), receiver.to_sql()) {
            senders.push(sender);
            receivers.push(receiver);
            positions.push(index as i64);
        }
    }
    if positions.is_empty() {
        return Ok(access);
    }
    let found = rows(db, DIRECT_ACCESS_MANY, &[&senders, &receivers, &positions]).await?;
    fill_access(&mut access, &found)?;
    Ok(access)
}

/// Locks the sender's row of each pair FOR SHARE until the transaction ends and returns one
/// entry per receiver as [`direct_access_many`] does, `None` when the receiver does not exist.
/// One statement for all receivers.
///
/// The lock conflicts with the FOR UPDATE of [`lock_pair`]. So a concurrent change of a pair
/// waits for this transaction to end, unless it locked the pair first. In that case this
/// statement waits for the change to commit and then reads the pair as the change left it,
/// without the rows it deleted.
///
/// A pair change that holds the sender's row and still waits has locked the row whose
/// `user_id` is the lower id and waits for the other row. So it can wait only for this
/// statement run by a sender with a higher id, and waits between pair changes and these
/// statements cannot form a cycle. Only registration sets a receiver's `open` flag, so the
/// statement reads it without a lock.
///
/// # Errors
///
/// Store errors.
pub async fn lock_direct_access_many(
    db: &impl GenericClient,
    sender: UserId,
    receivers: &[UserId],
) -> Result<Vec<Option<DirectAccess>>, LogicError> {
    let mut access = vec![None; receivers.len()];
    let Some(sender) = sender.to_sql() else {
        return Ok(access);
    };
    // An id above the bigint range names no user: its receiver keeps `None` and is not sent.
    let mut ids = Vec::with_capacity(receivers.len());
    let mut positions = Vec::with_capacity(receivers.len());
    for (index, receiver) in receivers.iter().enumerate() {
        if let Some(id) = receiver.to_sql() {
            ids.push(id);
            positions.push(index as i64);
        }
    }
    if positions.is_empty() {
        return Ok(access);
    }
    let found = rows(db, LOCK_DIRECT_ACCESS_MANY, &[&sender, &ids, &positions]).await?;
    fill_access(&mut access, &found)?;
    Ok(access)
}

/// Locks both rows of the pair for the rest of the transaction and returns its state as `user`
/// sees it, or `None` when the pair has no rows.
///
/// # Errors
///
/// [`LogicError::Internal`] when only one of the two rows exists; store errors.
pub async fn lock_pair(
    db: &impl GenericClient,
    user: UserId,
    other: UserId,
) -> Result<Option<PairState>, LogicError> {
    let (a, b) = pair_to_sql(user, other)?;
    let found = rows(db, LOCK_PAIR, &[&a, &b]).await?;
    if found.is_empty() {
        return Ok(None);
    }
    if found.len() != 2 {
        return Err(LogicError::Internal("friendship pair has one row"));
    }
    let state: String = found[0].try_get(1)?;
    let requested_by = UserId::from_sql(found[0].try_get(2)?)?;
    pair_state(&state, requested_by).map(Some)
}

/// Inserts a request from `from` to `to` and returns whether it did; false when the pair
/// already has rows.
///
/// # Errors
///
/// [`LogicError::NotFound`] when `to` does not exist; store errors.
pub async fn insert_request(
    db: &impl GenericClient,
    from: UserId,
    to: UserId,
) -> Result<bool, LogicError> {
    let Some(from_sql) = from.to_sql() else {
        return Err(user_not_found(from));
    };
    let Some(to_sql) = to.to_sql() else {
        return Err(user_not_found(to));
    };
    let (low, high) = (from_sql.min(to_sql), from_sql.max(to_sql));
    match execute(db, INSERT_REQUEST, &[&low, &high, &from_sql]).await {
        Ok(2) => Ok(true),
        Ok(0) => Ok(false),
        Ok(_) => Err(LogicError::Internal("friendship pair has one row")),
        // `from` is the caller, whose row exists.
        Err(LogicError::Database(err)) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            Err(user_not_found(to))
        }
        Err(err) => Err(err),
    }
}

/// Locks the rows of `users` in the `users` table ([`users::lock_many`]) until the transaction
/// ends and returns the number of entries in each one's friend list, friends and pending
/// requests in both directions, in the order of `users`. The count includes rows this
/// transaction inserted.
///
/// Call it after [`insert_request`], as the last lock of the transaction (see the module's lock
/// order). A concurrent request that involves one of these users waits here until this
/// transaction ends, and its count, a separate statement with a new snapshot at READ
/// COMMITTED, then includes what this one committed. Until this transaction ends, the only
/// statement that waits for the rows [`insert_request`] inserted is another insert of the same
/// pair, which a transaction makes before it holds any lock. The locking reads of other
/// transactions do not see the rows at all.
///
/// # Errors
///
/// Store errors.
pub async fn lock_friend_counts(
    db: &impl GenericClient,
    users: &[UserId],
) -> Result<Vec<u64>, LogicError> {
    users::lock_and_count(db, users, FRIEND_COUNTS).await
}

/// Marks the pair as friends. Lock it with [`lock_pair`] first.
///
/// # Errors
///
/// Store errors.
pub async fn accept_pair(
    db: &impl GenericClient,
    user: UserId,
    other: UserId,
) -> Result<(), LogicError> {
    let (a, b) = pair_to_sql(user, other)?;
    execute(db, ACCEPT_PAIR, &[&a, &b]).await.map(|_| ())
}

/// Deletes both rows of the pair. Lock it with [`lock_pair`] first.
///
/// # Errors
///
/// Store errors.
pub async fn delete_pair(
    db: &impl GenericClient,
    user: UserId,
    other: UserId,
) -> Result<(), LogicError> {
    let (a, b) = pair_to_sql(user, other)?;
    execute(db, DELETE_PAIR, &[&a, &b]).await.map(|_| ())
}

/// Returns `user`'s friends and pending requests in both directions, by user id.
///
/// # Errors
///
/// Store errors.
pub async fn list(pg: &PgStore, user: UserId) -> Result<Vec<FriendEntry>, LogicError> {
    let Some(user) = user.to_sql() else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for row in pg.query(LIST, &[&user]).await? {
        let state: String = row.try_get(2)?;
        entries.push(FriendEntry {
            user: UserId::from_sql(row.try_get(0)?)?,
            username: row.try_get(1)?,
            state: pair_state(&state, UserId::from_sql(row.try_get(3)?)?)?,
        });
    }
    Ok(entries)
}

/// Stores each row of a direct access statement (position, open, friends) in `access` at its
/// position.
fn fill_access(access: &mut [Option<DirectAccess>], found: &[Row]) -> Result<(), LogicError> {
    for row in found {
        let position: i64 = row.try_get(0)?;
        let slot = usize::try_from(position)
            .ok()
            .and_then(|index| access.get_mut(index))
            .ok_or(LogicError::Internal("direct access row out of range"))?;
        *slot = Some(DirectAccess {
            open: row.try_get(1)?,
            friends: row.try_get(2)?,
        });
    }
    Ok(())
}

fn pair_state(state: &str, requested_by: UserId) -> Result<PairState, LogicError> {
    match state {
        "accepted" => Ok(PairState::Accepted),
        "requested" => Ok(PairState::Requested { by: requested_by }),
        _ => Err(LogicError::Internal("unknown friendship state")),
    }
}

fn pair_to_sql(user: UserId, other: UserId) -> Result<(i64, i64), LogicError> {
    match (user.to_sql(), other.to_sql()) {
        (Some(a), Some(b)) => Ok((a, b)),
        (None, _) => Err(user_not_found(user)),
        (_, None) => Err(user_not_found(other)),
    }
}

fn user_not_found(user: UserId) -> LogicError {
    LogicError::NotFound(format!("user {user} not found"))
}
