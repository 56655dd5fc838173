// Words shown to the user for error codes, WebSocket close codes and kicks, as docs/protocol.md
// describes them.

import { ErrorCode, KickReason } from "./gen/im/v1/packet_pb";
import {
  ConnectionClosedError,
  DeadlineError,
  NotConnectedError,
  OpenFailedError,
  ProtocolError,
} from "./protocol";

const ERROR_TEXTS: Partial<Record<ErrorCode, string>> = {
  [ErrorCode.INVALID_PACKET]: "The client sent a malformed packet.",
  [ErrorCode.UNKNOWN_TYPE]: "The server does not accept this kind of request.",
  [ErrorCode.NOT_SIGNED_IN]: "Not signed in yet.",
  [ErrorCode.ALREADY_SIGNED_IN]: "This connection is already signed in.",
  [ErrorCode.INVALID_ARGUMENT]: "A field is missing or out of range.",
  [ErrorCode.INVALID_CREDENTIALS]: "Wrong username or password.",
  [ErrorCode.TOKEN_INVALID]: "Your session is no longer valid. Log in again.",
  [ErrorCode.TOKEN_EXPIRED]: "Your session has expired. Log in again.",
  [ErrorCode.TOKEN_REVOKED]: "Your session was ended. Log in again.",
  [ErrorCode.DEVICE_UNKNOWN]: "This device is not known to the server. Log in again.",
  [ErrorCode.DEVICE_NOT_OWNED]: "This device belongs to another user. Log in again.",
  [ErrorCode.USERNAME_TAKEN]: "That username is taken. Pick another one.",
  [ErrorCode.UNAVAILABLE]: "The server is unavailable. Retrying shortly.",
  [ErrorCode.TIMEOUT]: "The server did not respond in time. Try again.",
  [ErrorCode.INTERNAL]: "The server had an internal error. Try again later.",
  [ErrorCode.RATE_LIMITED]: "Too many requests. Wait a moment.",
  [ErrorCode.BUSY]: "The server is busy. Try again shortly.",
  [ErrorCode.RECEIVER_NOT_FOUND]: "That user or group does not exist.",
  [ErrorCode.NOT_FRIEND]:
    "Only this user's friends can message them or add them to a group. Send a friend request " +
    "under Friends, and try again once they accept it.",
  [ErrorCode.NOT_GROUP_MEMBER]: "You are not a member of this group.",
  [ErrorCode.CONTENT_EMPTY]: "The message is empty.",
  [ErrorCode.CONTENT_TOO_LARGE]: "The message is too long.",
  [ErrorCode.GROUP_FULL]: "The group is full.",
  [ErrorCode.PERMISSION_DENIED]: "You are not allowed to do that.",
  [ErrorCode.ALREADY_EXISTS]: "That friend request, friendship or group member already exists.",
  [ErrorCode.NOT_FOUND]: "The user, friend request or group was not found.",
  [ErrorCode.TOO_MANY_GROUPS]:
    "You or a user you added is in as many groups as the server allows. That user must leave " +
    "a group first.",
  [ErrorCode.TOO_MANY_FRIENDS]:
    "You or that user has as many friends and pending friend requests as the server allows. " +
    "Remove a friend or a pending request first.",
};

/** Returns the user-facing sentence for an error code, with the server's detail when given. */
export function errorText(code: ErrorCode, detail = ""): string {
  const base = ERROR_TEXTS[code] ?? `Error ${ErrorCode[code] ?? code}.`;
  return detail && code === ErrorCode.INVALID_ARGUMENT ? `${base} (${detail})` : base;
}

/** Error codes after which the stored token is useless and the user must log in again. */
export function needsLogin(code: ErrorCode): boolean {
  return (
    code === ErrorCode.TOKEN_INVALID ||
    code === ErrorCode.TOKEN_EXPIRED ||
    code === ErrorCode.TOKEN_REVOKED ||
    code === ErrorCode.DEVICE_UNKNOWN ||
    code === ErrorCode.DEVICE_NOT_OWNED
  );
}

/** WebSocket close code 4003: the device signed in on another connection (KICKED). */
export const CLOSE_KICKED = 4003;

const CLOSE_TEXTS: Record<number, string> = {
  1000: "The connection was closed.",
  1001: "The server is restarting. Reconnecting…",
  1002: "The connection broke a WebSocket rule (client error).",
  1003: "The server only accepts binary messages (client error).",
  1006: "The connection was lost. Reconnecting…",
  1007: "The client sent text that is not UTF-8 (client error).",
  1009: "The server closed the connection because a request was too large. Reconnecting…",
  4001: "Signing in took too long. Reconnecting…",
  4002: "No heartbeat reached the server in time. Reconnecting…",
  4003: "You signed in on another tab or device, so this one was disconnected.",
  4008: "This connection read too slowly and was dropped. Reconnecting…",
};

/** Returns the user-facing sentence for a WebSocket close code. */
export function closeText(code: number): string {
  return CLOSE_TEXTS[code] ?? `The connection closed (code ${code}). Reconnecting…`;
}

const KICK_TEXTS: Record<KickReason, string> = {
  [KickReason.KICK_REASON_UNSPECIFIED]: "The server disconnected this device.",
  [KickReason.SIGNED_IN_ELSEWHERE]:
    "You signed in on another tab or device, so this one was disconnected.",
  [KickReason.LOGGED_OUT]: "This device was logged out.",
  [KickReason.KICKED_BY_SERVER]: "The server signed this device out.",
};

/** Returns the user-facing sentence for a KICKED push. */
export function kickText(reason: KickReason): string {
  return KICK_TEXTS[reason] ?? KICK_TEXTS[KickReason.KICK_REASON_UNSPECIFIED];
}

/** Close code of a WebSocket closed without a close frame, for example by an unreachable server. */
const CLOSE_ABNORMAL = 1006;
/** Close code for a frame or message over the engine's size limits. */
const CLOSE_TOO_LARGE = 1009;

/** Returns the user-facing sentence for a failed WebSocket request or connection attempt. */
export function failureText(error: unknown): string {
  if (error instanceof ProtocolError) {
    return errorText(error.code, error.message);
  }
  if (error instanceof DeadlineError) {
    return "The server did not respond in time. Try again.";
  }
  const closeCode =
    error instanceof ConnectionClosedError || error instanceof OpenFailedError
      ? error.closeCode
      : 0;
  if (closeCode === CLOSE_TOO_LARGE) {
    return "The request was too large for the server. Shorten what you entered and try again.";
  }
  if (error instanceof OpenFailedError) {
    if (closeCode === CLOSE_ABNORMAL) {
      return "Cannot reach the server. Check your network connection and try again in a moment.";
    }
    return (
      `The server closed the connection before it was ready (close code ${closeCode}). ` +
      "Try again in a moment."
    );
  }
  if (error instanceof ConnectionClosedError) {
    return "The connection closed before the server replied. Try again.";
  }
  if (error instanceof NotConnectedError) {
    return "Not connected to the server. Try again in a moment.";
  }
  return error instanceof Error ? error.message : String(error);
}
