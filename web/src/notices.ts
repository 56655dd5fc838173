// NOTICE pushes (docs/protocol.md): the list each notice makes the page reload. A notice only
// names the list that changed. The page reloads the list through the business API and never
// applies the notice as the new state, because a page misses the notices sent while it is
// offline.

import { NoticeKind } from "./gen/im/v1/packet_pb";
import type { Notice } from "./gen/im/v1/packet_pb";

/** The page's reaction to one notice. */
export interface NoticeEffect {
  /** The list to reload, or null for a kind this page does not know. */
  reload: "friends" | "groups" | null;
  /** The group that the signed-in user was removed from, as decimal text; "" otherwise. */
  leftGroupId: string;
}

/** Returns the page's reaction to `notice`, given the signed-in user's id as decimal text. */
export function noticeEffect(notice: Notice, selfUserId: string): NoticeEffect {
  switch (notice.kind) {
    case NoticeKind.FRIEND_REQUESTED:
    case NoticeKind.FRIEND_ACCEPTED:
    case NoticeKind.FRIEND_REMOVED:
      return { reload: "friends", leftGroupId: "" };
    case NoticeKind.GROUP_CREATED:
    case NoticeKind.GROUP_MEMBERS_ADDED:
      return { reload: "groups", leftGroupId: "" };
    case NoticeKind.GROUP_MEMBERS_REMOVED: {
      const left = notice.memberIds.some((id) => id.toString() === selfUserId);
      return { reload: "groups", leftGroupId: left ? notice.groupId.toString() : "" };
    }
    default:
      return { reload: null, leftGroupId: "" };
  }
}
