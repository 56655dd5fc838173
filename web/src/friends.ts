// The signed-in user's relation to a user found by search, read from the friend list, so that
// the search result offers only the action that can succeed.

import { FriendState } from "./gen/im/v1/logic_pb";

/** The signed-in user's relation to another user. */
export type Relation = "self" | "friend" | "requestSent" | "requestReceived" | "none";

/** Returns the relation to `userId` given the caller's id and friend list (ids as decimal text). */
export function relationTo(
  userId: string,
  selfId: string,
  friends: readonly { userId: bigint; state: FriendState }[],
): Relation {
  if (userId === selfId) {
    return "self";
  }
  const entry = friends.find((friend) => friend.userId.toString() === userId);
  switch (entry?.state) {
    case FriendState.ACCEPTED:
      return "friend";
    case FriendState.REQUEST_SENT:
      return "requestSent";
    case FriendState.REQUEST_RECEIVED:
      return "requestReceived";
    default:
      return "none";
  }
}

/** Returns the sentence shown beside a search result for a relation, or "" for none. */
export function relationText(relation: Relation, username: string): string {
  switch (relation) {
    case "self":
      return "This is you.";
    case "friend":
      return `You and ${username} are friends.`;
    case "requestSent":
      return `Friend request sent to ${username}. It shows as a friend once they accept.`;
    case "requestReceived":
      return `${username} sent you a friend request. Accept it in the list below.`;
    default:
      return "";
  }
}
