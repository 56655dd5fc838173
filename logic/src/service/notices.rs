//! Notices of friend and group changes. The handlers in `friends` and `groups` build one after
//! their transaction commits and hand it to [`Pusher::push_notice`], which pushes it to every
//! online device of the users concerned, the calling device included. A notice is not stored:
//! it only tells online devices to reload a list.
//!
//! [`Pusher::push_notice`]: super::push::Pusher::push_notice

use im_proto::v1::{Notice, NoticeKind};

use super::auth::now_ms;
use crate::ids::{GroupId, UserId};

/// Builds a friend notice from `actor`, whose call made the change, about `other`.
pub(crate) fn friend_notice(kind: NoticeKind, actor: UserId, other: UserId) -> Notice {
    Notice {
        kind: kind as i32,
        actor_user_id: actor.0,
        user_id: other.0,
        at_ms: now_ms(),
        ..Notice::default()
    }
}

/// Builds a group notice from `actor` about `members` of `group`.
pub(crate) fn group_notice(
    kind: NoticeKind,
    actor: UserId,
    group: GroupId,
    members: &[UserId],
) -> Notice {
    Notice {
        kind: kind as i32,
        actor_user_id: actor.0,
        group_id: group.0,
        member_ids: members.iter().map(|user| user.0).collect(),
        at_ms: now_ms(),
        ..Notice::default()
    }
}
