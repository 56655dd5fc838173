import { describe, expect, it } from "vitest";

import { checkGroupName, checkSearch, passwordProblem, usernameProblem } from "../../src/validation";

describe("username rule", () => {
  it("accepts the server's usernames", () => {
    for (const name of ["abc", "a.b-c_d", "Z9Z", "x".repeat(32)]) {
      expect(usernameProblem(name), name).toBe("");
    }
  });

  it("names the broken rule", () => {
    expect(usernameProblem("")).toBe("Enter a username.");
    expect(usernameProblem("ab")).toContain("3 to 32 characters");
    expect(usernameProblem("x".repeat(100_000))).toContain("this one has 100000");
    expect(usernameProblem("has space")).toContain("ASCII letters");
    expect(usernameProblem("émile")).toContain("ASCII letters");
  });
});

describe("password rule", () => {
  it("counts bytes, 8 to 128", () => {
    expect(passwordProblem("12345678")).toBe("");
    expect(passwordProblem("p".repeat(128))).toBe("");
    expect(passwordProblem("1234567")).toContain("8 to 128 bytes");
    expect(passwordProblem("p".repeat(129))).toContain("this one has 129");
    expect(passwordProblem("p".repeat(100_000))).toContain("8 to 128 bytes");
    // 4 characters, 8 bytes of UTF-8.
    expect(passwordProblem("éééé")).toBe("");
    expect(passwordProblem("é".repeat(65))).toContain("this one has 130");
  });
});

describe("group name", () => {
  it("trims and rejects names of only spaces", () => {
    expect(checkGroupName("  team  ")).toEqual({ name: "team", problem: "" });
    expect(checkGroupName("   ").problem).toContain("not only spaces");
    expect(checkGroupName("").problem).toContain("Enter a group name");
  });

  it("counts characters up to 64", () => {
    expect(checkGroupName("g".repeat(64)).problem).toBe("");
    expect(checkGroupName("😀".repeat(64)).problem).toBe("");
    expect(checkGroupName("g".repeat(65)).problem).toContain("at most 64");
  });
});

describe("user search", () => {
  it("trims the query", () => {
    expect(checkSearch("  bob ")).toEqual({ username: "bob", problem: "" });
  });

  it("rejects an empty query and impossible names", () => {
    expect(checkSearch("    ").problem).toBe("Enter the username to search for.");
    expect(checkSearch("a b").problem).toContain('No user can be named "a b"');
  });
});
