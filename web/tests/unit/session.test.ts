import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { DevicePool, NoDeviceLocks } from "../../src/devices";
import { GroupInfoSchema, type GroupInfo } from "../../src/gen/im/v1/logic_pb";
import {
  ConversationType,
  ErrorCode,
  MessageAckSchema,
  MessageSchema,
  NoticeKind,
  NoticeSchema,
  PacketType,
  SendReplySchema,
  SendRequestSchema,
  SignInReplySchema,
  SyncReplySchema,
  SyncRequestSchema,
} from "../../src/gen/im/v1/packet_pb";
import { decodePacket, encodePacket } from "../../src/protocol";
import { Session } from "../../src/session";
import { FakeWebSocket } from "./support/fake-websocket";
import { MemoryStorage } from "./support/memory-storage";

const PEER_CHAT = "user:2";
const originalWebSocket = globalThis.WebSocket;
const originalFetch = globalThis.fetch;

beforeEach(() => {
  vi.useFakeTimers();
  (globalThis as { WebSocket: unknown }).WebSocket = FakeWebSocket;
  // Business calls (the group list after sign-in) fail at once instead of reaching a network.
  globalThis.fetch = () => Promise.reject(new TypeError("no network in unit tests"));
});

afterEach(() => {
  vi.useRealTimers();
  (globalThis as { WebSocket: unknown }).WebSocket = originalWebSocket;
  globalThis.fetch = originalFetch;
});

/** Returns the type and request id of the last frame the page sent. */
function lastRequest(ws: FakeWebSocket): { type: PacketType; requestId: bigint; data: Uint8Array } {
  const packet = decodePacket(ws.sent[ws.sent.length - 1]);
  return { type: packet.type, requestId: packet.requestId, data: packet.data };
}

function reply<T extends DescMessage>(
  ws: FakeWebSocket,
  type: PacketType,
  schema: T,
  init: MessageInitShape<T>,
): void {
  const request = lastRequest(ws);
  expect(PacketType[request.type]).toBe(PacketType[type]);
  const data = toBinary(schema, create(schema, init));
  ws.serverSend(encodePacket({ type, requestId: request.requestId, data }));
}

/** Returns user 2's first message to user 1, the session's user: seq 1 in user 1's inbox. */
function firstFromPeer(text: string): MessageInitShape<typeof MessageSchema> {
  return {
    seq: 1n,
    messageId: 7n,
    senderUserId: 2n,
    senderDeviceId: 20n,
    conversationType: ConversationType.USER,
    receiverId: 1n,
    content: new TextEncoder().encode(text),
    contentType: "text/plain",
    clientMsgId: "m-1",
    sentAtMs: 1n,
  };
}

/** Starts a session with one stored device and answers its SIGN_IN and first SYNC. */
async function signedInSession(): Promise<{ session: Session; ws: FakeWebSocket }> {
  const shared = new MemoryStorage();
  const pool = new DevicePool(shared, new MemoryStorage(), new NoDeviceLocks());
  await pool.save({ userId: "1", deviceId: "10", token: "token", username: "alice" });
  const session = new Session("ws://127.0.0.1:1/ws", "http://127.0.0.1:1", shared, pool);
  await session.start();
  const ws = await signIn(session);
  return { session, ws };
}

async function signIn(session: Session): Promise<FakeWebSocket> {
  const ws = FakeWebSocket.last as FakeWebSocket;
  ws.serverOpen();
  reply(ws, PacketType.SIGN_IN, SignInReplySchema, { heartbeatIntervalMs: 30_000 });
  await vi.advanceTimersByTimeAsync(0);
  reply(ws, PacketType.SYNC, SyncReplySchema, { hasMore: false });
  await vi.advanceTimersByTimeAsync(0);
  expect(session.state.signedIn).toBe(true);
  return ws;
}

/** Logs out, letting the unanswered LOGOUT reach its deadline, so no timer or socket stays. */
async function logOut(session: Session): Promise<void> {
  const done = session.logout();
  await vi.advanceTimersByTimeAsync(3_001);
  await done;
}

function sentClientMsgId(ws: FakeWebSocket): string {
  const request = lastRequest(ws);
  expect(PacketType[request.type]).toBe("SEND");
  return fromBinary(SendRequestSchema, request.data).clientMsgId;
}

describe("session sends", () => {
  it("fails a SEND whose reply misses its deadline", async () => {
    const { session, ws } = await signedInSession();
    session.send(PEER_CHAT, "no reply");
    sentClientMsgId(ws);
    await vi.advanceTimersByTimeAsync(10_001);
    const [message] = session.store.messagesOf(PEER_CHAT);
    expect(message.state).toBe("failed");
    expect(message.error).toBe("The server did not confirm it in time.");
    await logOut(session);
  });

  it("fails a SEND whose connection closes, and Retry resends it", async () => {
    const { session, ws } = await signedInSession();
    session.send(PEER_CHAT, "lost");
    const first = sentClientMsgId(ws);
    ws.serverClose(1006);
    await vi.advanceTimersByTimeAsync(0);
    const [failed] = session.store.messagesOf(PEER_CHAT);
    expect(failed.state).toBe("failed");
    expect(failed.error).toBe("The connection closed before the server confirmed it.");

    // Retry while offline keeps it pending; the next sign-in sends it with the same id.
    session.retry(first);
    expect(session.store.messagesOf(PEER_CHAT)[0].state).toBe("pending");
    await vi.advanceTimersByTimeAsync(1_000);
    const next = await signIn(session);
    expect(next).not.toBe(ws);
    expect(sentClientMsgId(next)).toBe(first);
    reply(next, PacketType.SEND, SendReplySchema, { seq: 1n, messageId: 5n, sentAtMs: 1n });
    await vi.advanceTimersByTimeAsync(0);
    const [stored] = session.store.messagesOf(PEER_CHAT);
    expect(stored.state).toBe("stored");
    expect(stored.seq).toBe(1);
    await logOut(session);
  });

  it("fails an oversized message on every attempt", async () => {
    const { session, ws } = await signedInSession();
    const sentBefore = ws.sent.length;
    session.send(PEER_CHAT, "x".repeat(16 * 1024 + 1));
    const [message] = session.store.messagesOf(PEER_CHAT);
    expect(message.state).toBe("failed");
    expect(message.error).toContain("16385 bytes");
    session.retry(message.clientMsgId);
    expect(session.store.messagesOf(PEER_CHAT)[0].state).toBe("failed");
    expect(ws.sent.length).toBe(sentBefore);
    await logOut(session);
  });

  it("removes a failed message", async () => {
    const { session, ws } = await signedInSession();
    session.send(PEER_CHAT, "unwanted");
    const clientMsgId = sentClientMsgId(ws);
    await vi.advanceTimersByTimeAsync(10_001);
    session.remove(clientMsgId);
    expect(session.store.messagesOf(PEER_CHAT)).toEqual([]);
    await logOut(session);
  });
});

describe("session sync", () => {
  it("asks again for a SYNC page rejected by the rate limit", async () => {
    const shared = new MemoryStorage();
    const pool = new DevicePool(shared, new MemoryStorage(), new NoDeviceLocks());
    await pool.save({ userId: "1", deviceId: "10", token: "token", username: "alice" });
    const session = new Session("ws://127.0.0.1:1/ws", "http://127.0.0.1:1", shared, pool);
    await session.start();
    const ws = FakeWebSocket.last as FakeWebSocket;
    ws.serverOpen();
    reply(ws, PacketType.SIGN_IN, SignInReplySchema, { heartbeatIntervalMs: 30_000 });
    await vi.advanceTimersByTimeAsync(0);

    const rejected = lastRequest(ws);
    expect(PacketType[rejected.type]).toBe("SYNC");
    ws.serverSend(
      encodePacket({
        type: PacketType.SYNC,
        requestId: rejected.requestId,
        code: ErrorCode.RATE_LIMITED,
        message: "rate limit exceeded",
        retryAfterMs: 250,
      }),
    );
    await vi.advanceTimersByTimeAsync(249);
    expect(lastRequest(ws).requestId).toBe(rejected.requestId);
    await vi.advanceTimersByTimeAsync(1);
    const again = lastRequest(ws);
    expect(PacketType[again.type]).toBe("SYNC");
    expect(again.requestId).not.toBe(rejected.requestId);
    expect(fromBinary(SyncRequestSchema, again.data).afterSeq).toBe(0n);

    reply(ws, PacketType.SYNC, SyncReplySchema, {
      hasMore: false,
      messages: [firstFromPeer("caught up")],
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(session.store.heldSeq).toBe(1);
    await logOut(session);
  });
});

/** Pushes a MESSAGE to the page, as the engine does: request id 0. */
async function pushMessage(ws: FakeWebSocket, init: MessageInitShape<typeof MessageSchema>): Promise<void> {
  const data = toBinary(MessageSchema, create(MessageSchema, init));
  ws.serverSend(encodePacket({ type: PacketType.MESSAGE, data }));
  await vi.advanceTimersByTimeAsync(0);
}

function sentTypes(ws: FakeWebSocket, from: number): string[] {
  return ws.sent.slice(from).map((frame) => PacketType[decodePacket(frame).type]);
}

describe("session gaps", () => {
  const second = { ...firstFromPeer("second"), seq: 2n, messageId: 8n, clientMsgId: "m-2" };

  it("fills a gap from a late push without a SYNC", async () => {
    const { session, ws } = await signedInSession();
    const sentBefore = ws.sent.length;
    await pushMessage(ws, second);
    await vi.advanceTimersByTimeAsync(100);
    await pushMessage(ws, firstFromPeer("first"));
    await vi.advanceTimersByTimeAsync(1_000);

    expect(session.store.heldSeq).toBe(2);
    expect(sentTypes(ws, sentBefore)).toEqual(["MESSAGE_ACK"]);
    expect(fromBinary(MessageAckSchema, lastRequest(ws).data).seq).toBe(2n);
    await logOut(session);
  });

  it("syncs a gap that its push does not fill in time", async () => {
    const { session, ws } = await signedInSession();
    const sentBefore = ws.sent.length;
    await pushMessage(ws, second);
    await vi.advanceTimersByTimeAsync(249);
    expect(sentTypes(ws, sentBefore)).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(sentTypes(ws, sentBefore)).toEqual(["SYNC"]);
    expect(fromBinary(SyncRequestSchema, lastRequest(ws).data).afterSeq).toBe(0n);

    reply(ws, PacketType.SYNC, SyncReplySchema, {
      hasMore: false,
      messages: [firstFromPeer("first"), second],
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(session.store.heldSeq).toBe(2);
    expect(fromBinary(MessageAckSchema, lastRequest(ws).data).seq).toBe(2n);
    await logOut(session);
  });
});

describe("session acks", () => {
  it("acks again after the rate limit rejects an ack", async () => {
    const { session, ws } = await signedInSession();
    const pushed = create(MessageSchema, firstFromPeer("hello"));
    ws.serverSend(encodePacket({ type: PacketType.MESSAGE, data: toBinary(MessageSchema, pushed) }));
    await vi.advanceTimersByTimeAsync(0);
    const ack = lastRequest(ws);
    expect(PacketType[ack.type]).toBe("MESSAGE_ACK");
    expect(fromBinary(MessageAckSchema, ack.data).seq).toBe(1n);
    const sentBefore = ws.sent.length;

    // The engine's reply to a dropped MESSAGE_ACK: ERROR with request id 0. Two of them share
    // one retry.
    for (let i = 0; i < 2; i++) {
      ws.serverSend(
        encodePacket({
          type: PacketType.ERROR,
          code: ErrorCode.RATE_LIMITED,
          message: "rate limit exceeded",
          retryAfterMs: 300,
        }),
      );
    }
    await vi.advanceTimersByTimeAsync(299);
    expect(ws.sent.length).toBe(sentBefore);
    await vi.advanceTimersByTimeAsync(1);
    expect(ws.sent.length).toBe(sentBefore + 1);
    const again = lastRequest(ws);
    expect(PacketType[again.type]).toBe("MESSAGE_ACK");
    expect(fromBinary(MessageAckSchema, again.data).seq).toBe(1n);

    await vi.advanceTimersByTimeAsync(1_000);
    expect(ws.sent.length).toBe(sentBefore + 1);
    await logOut(session);
  });
});

/** Pushes a NOTICE to the page, as the engine does: request id 0. */
async function pushNotice(ws: FakeWebSocket, init: MessageInitShape<typeof NoticeSchema>): Promise<void> {
  const data = toBinary(NoticeSchema, create(NoticeSchema, init));
  ws.serverSend(encodePacket({ type: PacketType.NOTICE, data }));
  await vi.advanceTimersByTimeAsync(0);
}

describe("session notices", () => {
  it("reloads the friend list on a friend notice", async () => {
    const { session, ws } = await signedInSession();
    const { friendListVersion, groupListVersion } = session.state;

    await pushNotice(ws, { kind: NoticeKind.FRIEND_REQUESTED, actorUserId: 2n, userId: 1n });

    expect(session.state.friendListVersion).toBe(friendListVersion + 1);
    expect(session.state.groupListVersion).toBe(groupListVersion);
    await logOut(session);
  });

  it("drops a group the user was removed from", async () => {
    const { session, ws } = await signedInSession();
    session.state.groups["70"] = create(GroupInfoSchema, {
      groupId: 70n,
      name: "left",
      ownerId: 2n,
      memberIds: [1n, 2n],
    });
    const { groupListVersion } = session.state;

    await pushNotice(ws, {
      kind: NoticeKind.GROUP_MEMBERS_REMOVED,
      actorUserId: 2n,
      groupId: 70n,
      memberIds: [1n],
    });

    expect(session.state.groups["70"]).toBeUndefined();
    expect(session.state.leftGroup).toEqual({ groupId: "70" });
    expect(session.state.groupListVersion).toBe(groupListVersion + 1);
    await logOut(session);
  });

  it("keeps a group when others were removed", async () => {
    const { session, ws } = await signedInSession();

    await pushNotice(ws, {
      kind: NoticeKind.GROUP_MEMBERS_REMOVED,
      actorUserId: 2n,
      groupId: 70n,
      memberIds: [3n],
    });

    expect(session.state.leftGroup).toBeNull();
    await logOut(session);
  });

  it("ignores a notice of an unknown kind", async () => {
    const { session, ws } = await signedInSession();
    const before = { ...session.state };

    await pushNotice(ws, { kind: 99 as NoticeKind, groupId: 70n, memberIds: [1n] });

    expect(session.state.friendListVersion).toBe(before.friendListVersion);
    expect(session.state.groupListVersion).toBe(before.groupListVersion);
    expect(session.state.leftGroup).toBeNull();
    await logOut(session);
  });

  it("replaces the group list and shares reloads asked for meanwhile", async () => {
    const { session } = await signedInSession();
    const group = (id: bigint) =>
      create(GroupInfoSchema, { groupId: id, name: `g${id}`, ownerId: 1n, memberIds: [1n] });
    const replies: Array<(groups: GroupInfo[]) => void> = [];
    const listGroups = vi
      .spyOn(session.api, "listGroups")
      .mockImplementation(() => new Promise((resolve) => replies.push(resolve)));

    const first = session.refreshGroups();
    const second = session.refreshGroups();
    const third = session.refreshGroups();
    expect(listGroups).toHaveBeenCalledTimes(1);
    replies[0]([group(70n), group(71n)]);
    await first;
    expect(Object.keys(session.state.groups).sort()).toEqual(["70", "71"]);
    await vi.advanceTimersByTimeAsync(0);
    expect(listGroups).toHaveBeenCalledTimes(2);
    replies[1]([group(71n)]);
    expect(second).toBe(third);
    await second;

    expect(listGroups).toHaveBeenCalledTimes(2);
    expect(Object.keys(session.state.groups)).toEqual(["71"]);
    listGroups.mockRestore();
    await logOut(session);
  });

  it("reloads both lists after each sign-in", async () => {
    const { session, ws } = await signedInSession();
    const { friendListVersion, groupListVersion } = session.state;

    ws.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    await signIn(session);

    expect(session.state.friendListVersion).toBe(friendListVersion + 1);
    expect(session.state.groupListVersion).toBe(groupListVersion + 1);
    await logOut(session);
  });
});
