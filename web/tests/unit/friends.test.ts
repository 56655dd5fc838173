import { describe, expect, it } from "vitest";

import { relationText, relationTo } from "../../src/friends";
import { FriendState } from "../../src/gen/im/v1/logic_pb";

const SELF = "1";
const FRIENDS = [
  { userId: 2n, state: FriendState.ACCEPTED },
  { userId: 3n, state: FriendState.REQUEST_SENT },
  { userId: 4n, state: FriendState.REQUEST_RECEIVED },
];

describe("relation to a found user", () => {
  it("recognizes the caller", () => {
    expect(relationTo(SELF, SELF, FRIENDS)).toBe("self");
    expect(relationText("self", "alice")).toBe("This is you.");
  });

  it("follows the friend list", () => {
    expect(relationTo("2", SELF, FRIENDS)).toBe("friend");
    expect(relationTo("3", SELF, FRIENDS)).toBe("requestSent");
    expect(relationTo("4", SELF, FRIENDS)).toBe("requestReceived");
    expect(relationTo("5", SELF, FRIENDS)).toBe("none");
  });

  it("turns a sent request into a friendship on reload", () => {
    const before = relationTo("3", SELF, FRIENDS);
    const after = relationTo("3", SELF, [{ userId: 3n, state: FriendState.ACCEPTED }]);
    expect(before).toBe("requestSent");
    expect(after).toBe("friend");
    expect(relationText(after, "bob")).toBe("You and bob are friends.");
  });

  it("has no text when there is no relation", () => {
    expect(relationText("none", "bob")).toBe("");
  });
});
