import { describe, expect, it } from "vitest";

import { ErrorCode, KickReason } from "../../src/gen/im/v1/packet_pb";
import { PacketType } from "../../src/gen/im/v1/packet_pb";
import {
  ConnectionClosedError,
  DeadlineError,
  NotConnectedError,
  OpenFailedError,
  ProtocolError,
} from "../../src/protocol";
import { closeText, errorText, failureText, kickText, needsLogin } from "../../src/texts";

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

  it("tells what to do about a message to a non-friend", () => {
    const text = errorText(ErrorCode.NOT_FRIEND);
    expect(text).toContain("friend request");
    expect(text).not.toContain("anyone");
  });
});

describe("failure texts", () => {
  it("explains an unreachable server in words", () => {
    const text = failureText(new OpenFailedError(1006));
    expect(text).toContain("Cannot reach the server");
    expect(text).not.toContain("code 1006");
    expect(text).toMatch(/^[A-Z]/);
  });

  it("explains a request over the frame limit", () => {
    for (const error of [
      new ConnectionClosedError(PacketType.LOGIN, 1009),
      new OpenFailedError(1009),
    ]) {
      const text = failureText(error);
      expect(text).toContain("too large");
      expect(text).not.toContain("Try again.");
    }
  });

  it("keeps the close code beside words for other closes", () => {
    expect(failureText(new OpenFailedError(4001))).toContain("close code 4001");
    expect(failureText(new ConnectionClosedError(PacketType.SEND, 1006))).toBe(
      "The connection closed before the server replied. Try again.",
    );
  });

  it("words protocol, deadline and offline failures", () => {
    expect(failureText(new ProtocolError(ErrorCode.INVALID_CREDENTIALS, "bad"))).toBe(
      "Wrong username or password.",
    );
    expect(failureText(new DeadlineError(PacketType.LOGIN, 1n, 10))).toContain("in time");
    expect(failureText(new NotConnectedError(PacketType.LOGIN))).toContain("Not connected");
  });
});
