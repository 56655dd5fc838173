//! Friends: a request, then the other user's accept, makes two users friends. Friends may send
//! each other direct messages; users who registered as open accept them from anyone. Each change
//! pushes a notice to the online devices of both users once it has committed.
//!
//! A user's friend list contains its friends and its pending requests in both directions, and
//! ListFriends returns all of it in one reply. A new request adds an entry to both users' lists,
//! and it is rejected when either list contains `max_friends_per_user` entries already, which
//! bounds that reply. Accepting a request turns its entries into friends and adds none, so the
//! cap never rejects an accept.

use im_proto::v1::{
    Friend, FriendReply, FriendRequest, FriendState, ListFriendsReply, ListFriendsRequest,
    NoticeKind,
};

use super::caller::Caller;
use super::notices::friend_notice;
use super::Logic;
use crate::error::LogicError;
use crate::ids::UserId;
use crate::store::pg::friendships::{self, FriendEntry, PairState};

/// Attempts at a friend request when the pair changes between its insert and its lock.
const REQUEST_ATTEMPTS: usize = 3;

/// Sends a friend request to `request.user_id`, or accepts the one that user already sent.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a request to oneself or to user 0,
/// [`LogicError::NotFound`] for an unknown user, [`LogicError::AlreadyExists`] when the two are
/// friends already or the caller's request is pending, [`LogicError::TooManyFriends`] when a new
/// request would pass `max_friends_per_user` for either user (nothing is stored); store errors.
pub async fn request_friend(
    logic: &Logic,
    caller: Caller,
    request: FriendRequest,
) -> Result<FriendReply, LogicError> {
    let other = other_user(caller, &request)?;
    let kind = logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            let max = logic.limits.max_friends_per_user;
            let kind = request_or_accept(&tx, caller.user, other, max).await?;
            tx.commit().await?;
            Ok(kind)
        })
        .await?;
    push_friend_notice(logic, kind, caller.user, other);
    Ok(FriendReply {})
}

/// Accepts the pending friend request that `request.user_id` sent to the caller.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for oneself or user 0, [`LogicError::NotFound`] when that
/// user sent the caller no pending request; store errors.
pub async fn accept_friend(
    logic: &Logic,
    caller: Caller,
    request: FriendRequest,
) -> Result<FriendReply, LogicError> {
    let other = other_user(caller, &request)?;
    logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            let state = friendships::lock_pair(&tx, caller.user, other).await?;
            if state != Some(PairState::Requested { by: other }) {
                return Err(LogicError::NotFound(format!(
                    "no pending friend request from user {other}"
                )));
            }
            friendships::accept_pair(&tx, caller.user, other).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
    push_friend_notice(logic, NoticeKind::FriendAccepted, caller.user, other);
    Ok(FriendReply {})
}

/// Ends a friendship, or withdraws or declines a pending request, in either direction.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for oneself or user 0, [`LogicError::NotFound`] when the two
/// users are neither friends nor have a pending request; store errors.
pub async fn remove_friend(
    logic: &Logic,
    caller: Caller,
    request: FriendRequest,
) -> Result<FriendReply, LogicError> {
    let other = other_user(caller, &request)?;
    logic
        .pg
        .with_deadline(async {
            let mut client = logic.pg.client().await?;
            let tx = client.transaction().await?;
            if friendships::lock_pair(&tx, caller.user, other)
                .await?
                .is_none()
            {
                return Err(LogicError::NotFound(format!(
                    "user {other} is neither a friend nor in a pending friend request with you"
                )));
            }
            friendships::delete_pair(&tx, caller.user, other).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
    push_friend_notice(logic, NoticeKind::FriendRemoved, caller.user, other);
    Ok(FriendReply {})
}

/// Lists the caller's friends and pending requests in both directions, by user id.
///
/// # Errors
///
/// Store errors.
pub async fn list_friends(
    logic: &Logic,
    caller: Caller,
    _request: ListFriendsRequest,
) -> Result<ListFriendsReply, LogicError> {
    let entries = friendships::list(&logic.pg, caller.user).await?;
    let friends = entries
        .into_iter()
        .map(|entry| friend_from_entry(caller.user, entry))
        .collect();
    Ok(ListFriendsReply { friends })
}

fn other_user(caller: Caller, request: &FriendRequest) -> Result<UserId, LogicError> {
    let reason = match request.user_id {
        0 => "must not be 0",
        id if id == caller.user.0 => "must name another user",
        id => return Ok(UserId(id)),
    };
    Err(LogicError::InvalidArgument {
        field: "user_id",
        reason,
    })
}

/// Pushes a friend notice of `actor`'s change to both users' online devices.
fn push_friend_notice(logic: &Logic, kind: NoticeKind, actor: UserId, other: UserId) {
    let notice = friend_notice(kind, actor, other);
    logic.pusher.push_notice(notice, &[actor, other]);
}

/// Inserts the request, or handles the pair that exists. The insert waits for a concurrent
/// transaction on the same pair, so the following lock finds its rows. When that transaction
/// deleted them instead, the insert is tried again. Returns FRIEND_REQUESTED for a new request
/// and FRIEND_ACCEPTED when the request accepted the other user's.
///
/// A new request is checked against `max` after its insert, because the users' rows must be
/// the last lock the transaction takes (see `friendships::lock_friend_counts`). When it fails
/// the check, the caller drops the transaction, which rolls the insert back.
async fn request_or_accept(
    tx: &deadpool_postgres::Transaction<'_>,
    user: UserId,
    other: UserId,
    max: u32,
) -> Result<NoticeKind, LogicError> {
    for _ in 0..REQUEST_ATTEMPTS {
        if friendships::insert_request(tx, user, other).await? {
            check_friend_counts(tx, user, other, max).await?;
            return Ok(NoticeKind::FriendRequested);
        }
        match friendships::lock_pair(tx, user, other).await? {
            Some(PairState::Accepted) => {
                return Err(LogicError::AlreadyExists(format!(
                    "user {other} is your friend already"
                )))
            }
            Some(PairState::Requested { by }) if by == user => {
                return Err(LogicError::AlreadyExists(format!(
                    "your friend request to user {other} is pending already"
                )))
            }
            // The other user asked first: this request accepts theirs.
            Some(PairState::Requested { .. }) => {
                friendships::accept_pair(tx, user, other).await?;
                return Ok(NoticeKind::FriendAccepted);
            }
            None => continue,
        }
    }
    Err(LogicError::Internal(
        "friendship rows kept changing during a friend request",
    ))
}

/// Checks that the lists of `user` and `other`, with the request just inserted, contain at most
/// `max` entries each. The caller's own list is checked first, so a caller at the cap learns
/// about its own list.
async fn check_friend_counts(
    tx: &deadpool_postgres::Transaction<'_>,
    user: UserId,
    other: UserId,
    max: u32,
) -> Result<(), LogicError> {
    let users = [user, other];
    let counts = friendships::lock_friend_counts(tx, &users).await?;
    match users
        .iter()
        .zip(counts)
        .find(|(_, count)| *count > u64::from(max))
    {
        Some((full, _)) => Err(LogicError::TooManyFriends { user: full.0, max }),
        None => Ok(()),
    }
}

fn friend_from_entry(caller: UserId, entry: FriendEntry) -> Friend {
    let state = match entry.state {
        PairState::Accepted => FriendState::Accepted,
        PairState::Requested { by } if by == caller => FriendState::RequestSent,
        PairState::Requested { .. } => FriendState::RequestReceived,
    };
    Friend {
        user_id: entry.user.0,
        username: entry.username,
        state: state as i32,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// The size that `max_friends_per_user`'s default and range are computed from.
    #[test]
    fn largest_friend_list_entry_takes_48_bytes() {
        let entry = Friend {
            // User ids are positive bigints.
            user_id: i64::MAX as u64,
            // Usernames have at most 32 ASCII characters.
            username: "u".repeat(32),
            state: FriendState::RequestReceived as i32,
        };
        let one = ListFriendsReply {
            friends: vec![entry.clone()],
        };
        assert_eq!(one.encoded_len(), 48);
        let many = ListFriendsReply {
            friends: vec![entry; 80_000],
        };
        assert_eq!(many.encoded_len(), 3_840_000);
        assert!(many.encoded_len() < 4 * 1024 * 1024);
    }
}
