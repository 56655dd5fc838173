//! The `user_seq` table: the last seq given to a message of each user.
//!
//! Seqs live only in PostgreSQL, so they survive a loss of Redis. They are assigned inside the
//! transaction that stores the message copies: the row lock serialises senders to one user, and
//! a rollback returns the increment, so each user's seqs run 1, 2, 3, ... without gaps.

use deadpool_postgres::GenericClient;

use super::{execute, rows};
use crate::error::LogicError;
use crate::ids::UserId;

/// Takes the next seq of every listed user. Rows are locked in ascending user id order, which
/// every send follows, so concurrent sends to overlapping users cannot deadlock.
const ASSIGN: &str = "INSERT INTO user_seq (user_id, last_seq) \
                      SELECT recipient, 1 FROM unnest($1::bigint[]) AS recipient \
                      ORDER BY recipient \
                      ON CONFLICT (user_id) DO UPDATE SET last_seq = user_seq.last_seq + 1 \
                      RETURNING user_id, last_seq";

/// Adds each listed count to its user's last seq in one statement, creating missing rows, and
/// returns the new last seqs. Rows are locked in ascending user id order, as [`ASSIGN`] does.
const ASSIGN_COUNTS: &str = "INSERT INTO user_seq (user_id, last_seq) \
                             SELECT recipient, added \
                             FROM unnest($1::bigint[], $2::bigint[]) AS taken (recipient, added) \
                             ORDER BY recipient \
                             ON CONFLICT (user_id) DO UPDATE \
                             SET last_seq = user_seq.last_seq + EXCLUDED.last_seq \
                             RETURNING user_id, last_seq";

/// Takes back the newest $2 seqs of each user $1, which this transaction took. A row that this
/// transaction created with exactly those seqs is deleted, as if it had never been taken.
const GIVE_BACK: &str = "WITH back AS ( \
                             SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS b (user_id, surplus)), \
                         gone AS ( \
                             DELETE FROM user_seq AS s USING back \
                             WHERE s.user_id = back.user_id AND s.last_seq = back.surplus) \
                         UPDATE user_seq AS s SET last_seq = s.last_seq - back.surplus FROM back \
                         WHERE s.user_id = back.user_id AND s.last_seq > back.surplus";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[ASSIGN, ASSIGN_COUNTS, GIVE_BACK]
}

/// One recipient's copy of a message: the user and the seq the copy has in that user's
/// sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// The recipient.
    pub user: UserId,
    /// Position in the recipient's sequence, from 1.
    pub seq: u64,
}

/// Gives each of `users` its next seq, in one statement, and returns the copies in ascending
/// user id order. Call it inside the transaction that stores the copies, and hold no other
/// user_seq lock.
///
/// # Errors
///
/// [`LogicError::Internal`] when `users` is not strictly ascending or contains an id above the
/// bigint range; store errors, among them a foreign-key violation for a user that does not
/// exist.
pub async fn assign(db: &impl GenericClient, users: &[UserId]) -> Result<Vec<Copy>, LogicError> {
    if !users.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(LogicError::Internal(
            "seq recipients must be sorted and distinct",
        ));
    }
    let ids: Option<Vec<i64>> = users.iter().map(|user| user.to_sql()).collect();
    let ids = ids.ok_or(LogicError::Internal("recipient id above the bigint range"))?;

    let mut copies = Vec::with_capacity(users.len());
    for row in rows(db, ASSIGN, &[&ids]).await? {
        let seq: i64 = row.try_get(1)?;
        copies.push(Copy {
            user: UserId::from_sql(row.try_get(0)?)?,
            seq: u64::try_from(seq).map_err(|_| LogicError::Internal("negative seq"))?,
        });
    }
    copies.sort_unstable_by_key(|copy| copy.user);
    if copies.len() != users.len() {
        return Err(LogicError::Internal("seq assignment missed a recipient"));
    }
    Ok(copies)
}

/// Takes `count` consecutive seqs for each `(user, count)` entry, in one statement, and returns
/// each user's new last seq in the order of `counts`: the user's new seqs are
/// `last - count + 1 ..= last`. Call it inside the transaction that stores the copies, and hold
/// no other user_seq lock.
///
/// # Errors
///
/// [`LogicError::Internal`] when the users are not strictly ascending, a count is 0 or a value
/// is above the bigint range; store errors, among them a foreign-key violation for a user that
/// does not exist.
pub async fn assign_counts(
    db: &impl GenericClient,
    counts: &[(UserId, u64)],
) -> Result<Vec<u64>, LogicError> {
    if !counts.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Err(LogicError::Internal(
            "seq recipients must be sorted and distinct",
        ));
    }
    let ids: Option<Vec<i64>> = counts.iter().map(|(user, _)| user.to_sql()).collect();
    let added: Option<Vec<i64>> = counts
        .iter()
        .map(|(_, count)| i64::try_from(*count).ok().filter(|count| *count > 0))
        .collect();
    let (Some(ids), Some(added)) = (ids, added) else {
        return Err(LogicError::Internal("seq count or recipient out of range"));
    };

    let mut last = Vec::with_capacity(counts.len());
    for row in rows(db, ASSIGN_COUNTS, &[&ids, &added]).await? {
        let seq: i64 = row.try_get(1)?;
        let seq = u64::try_from(seq).map_err(|_| LogicError::Internal("negative seq"))?;
        last.push((UserId::from_sql(row.try_get(0)?)?, seq));
    }
    last.sort_unstable_by_key(|(user, _)| *user);
    let matches = last.len() == counts.len()
        && last
            .iter()
            .zip(counts)
            .all(|((user, _), (wanted, _))| user == wanted);
    if !matches {
        return Err(LogicError::Internal("seq assignment missed a recipient"));
    }
    Ok(last.into_iter().map(|(_, seq)| seq).collect())
}

/// Takes back the newest `count` seqs of each `(user, count)` entry, which the caller's
/// transaction took with [`assign_counts`] and still holds locked, in one statement.
///
/// # Errors
///
/// [`LogicError::Internal`] when a value is above the bigint range; store errors.
pub async fn give_back(
    db: &impl GenericClient,
    surplus: &[(UserId, u64)],
) -> Result<(), LogicError> {
    if surplus.is_empty() {
        return Ok(());
    }
    let ids: Option<Vec<i64>> = surplus.iter().map(|(user, _)| user.to_sql()).collect();
    let counts: Option<Vec<i64>> = surplus
        .iter()
        .map(|(_, count)| i64::try_from(*count).ok())
        .collect();
    let (Some(ids), Some(counts)) = (ids, counts) else {
        return Err(LogicError::Internal("seq surplus or user out of range"));
    };
    execute(db, GIVE_BACK, &[&ids, &counts]).await?;
    Ok(())
}
