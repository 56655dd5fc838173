import { describe, expect, it } from "vitest";

import { parseRoute, routePath } from "../../src/router";

describe("routes", () => {
  it("parses chat, friends, groups and home", () => {
    expect(parseRoute("/chat/user/7")).toEqual({ name: "chat", conversation: "user:7" });
    expect(parseRoute("/chat/group/9/")).toEqual({ name: "chat", conversation: "group:9" });
    expect(parseRoute("/friends")).toEqual({ name: "friends" });
    expect(parseRoute("/groups")).toEqual({ name: "groups" });
    expect(parseRoute("/")).toEqual({ name: "home" });
  });

  it("sends bad chat ids to the not-found view", () => {
    for (const path of [
      "/chat/user/999999999999999999999",
      "/chat/user/18446744073709551616",
      "/chat/user/0",
      "/chat/group/abc",
      "/chat/user/-3",
    ]) {
      expect(parseRoute(path), path).toEqual({ name: "notFound", path });
    }
  });

  it("sends unknown paths to the not-found view", () => {
    expect(parseRoute("/chats")).toEqual({ name: "notFound", path: "/chats" });
    expect(parseRoute("/chat/room/1")).toEqual({ name: "notFound", path: "/chat/room/1" });
  });

  it("round-trips paths", () => {
    expect(routePath(parseRoute("/chat/user/18446744073709551615"))).toBe(
      "/chat/user/18446744073709551615",
    );
    expect(routePath({ name: "home" })).toBe("/");
  });
});
