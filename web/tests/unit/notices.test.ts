import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import { NoticeKind, NoticeSchema } from "../../src/gen/im/v1/packet_pb";
import { noticeEffect } from "../../src/notices";
import { routeAfterLeavingGroup } from "../../src/router";

const SELF = "1";

describe("notice effects", () => {
  it("reloads the list each kind names", () => {
    const cases = [
      [NoticeKind.FRIEND_REQUESTED, "friends"],
      [NoticeKind.FRIEND_ACCEPTED, "friends"],
      [NoticeKind.FRIEND_REMOVED, "friends"],
      [NoticeKind.GROUP_CREATED, "groups"],
      [NoticeKind.GROUP_MEMBERS_ADDED, "groups"],
      [NoticeKind.GROUP_MEMBERS_REMOVED, "groups"],
    ] as const;
    for (const [kind, reload] of cases) {
      const notice = create(NoticeSchema, { kind, groupId: 7n, memberIds: [2n] });
      expect(noticeEffect(notice, SELF), NoticeKind[kind]).toEqual({ reload, leftGroupId: "" });
    }
  });

  it("names the group the user was removed from", () => {
    const removed = create(NoticeSchema, {
      kind: NoticeKind.GROUP_MEMBERS_REMOVED,
      groupId: 7n,
      memberIds: [3n, 1n],
    });
    expect(noticeEffect(removed, SELF)).toEqual({ reload: "groups", leftGroupId: "7" });
  });

  it("ignores kinds it does not know", () => {
    for (const kind of [NoticeKind.NOTICE_KIND_UNSPECIFIED, 99 as NoticeKind]) {
      const notice = create(NoticeSchema, { kind, groupId: 7n, memberIds: [1n] });
      expect(noticeEffect(notice, SELF)).toEqual({ reload: null, leftGroupId: "" });
    }
  });
});

describe("leaving a group", () => {
  it("leaves that group's conversation for the group list", () => {
    const next = routeAfterLeavingGroup({ name: "chat", conversation: "group:7" }, "7");
    expect(next).toEqual({ name: "groups" });
  });

  it("stays on every other view", () => {
    const routes = [
      { name: "chat", conversation: "group:8" },
      { name: "chat", conversation: "user:7" },
      { name: "groups" },
      { name: "home" },
    ] as const;
    for (const route of routes) {
      expect(routeAfterLeavingGroup(route, "7"), JSON.stringify(route)).toBeNull();
    }
  });
});
