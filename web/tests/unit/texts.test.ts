import { describe, expect, it } from "vitest";

import { ErrorCode, KickReason } from "../../src/gen/im/v1/packet_pb";
import { closeText, errorText, kickText, needsLogin } from "../../src/texts";

describe("user-facing texts", () => {
  it("has words for every close code of the protocol", () => {
    for (const code of [1000, 1001, 1002, 1003, 1006, 1007, 1009, 4001, 4002, 4003, 4008]) {
      expect(closeText(code), `close code ${code}`).not.toContain("(code");
    }
    expect(closeText(4999)).toContain("code 4999");
  });

  it("has words for every error code", () => {
    const codes = Object.values(ErrorCode).filter((value): value is ErrorCode => typeof value === "number");
    for (const code of codes.filter((code) => code !== ErrorCode.OK)) {
      expect(errorText(code), ErrorCode[code]).not.toMatch(/^Error /);
    }
  });

  it("has words for every kick reason", () => {
    expect(kickText(KickReason.SIGNED_IN_ELSEWHERE)).toContain("another tab or device");
    expect(kickText(KickReason.LOGGED_OUT)).toContain("logged out");
  });

  it("sends the user to log in only for credential errors", () => {
    expect(needsLogin(ErrorCode.TOKEN_EXPIRED)).toBe(true);
    expect(needsLogin(ErrorCode.DEVICE_UNKNOWN)).toBe(true);
    expect(needsLogin(ErrorCode.UNAVAILABLE)).toBe(false);
  });
});
