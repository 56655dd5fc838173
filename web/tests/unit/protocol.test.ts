import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  ConversationType,
  ErrorCode,
  KickedSchema,
  KickReason,
  LoginReplySchema,
  LoginRequestSchema,
  MessageAckSchema,
  MessageSchema,
  PacketSchema,
  PacketType,
  RegisterReplySchema,
  RegisterRequestSchema,
  SendReplySchema,
  SendRequestSchema,
  SignInReplySchema,
  SignInRequestSchema,
  SyncReplySchema,
  SyncRequestSchema,
} from "../../src/gen/im/v1/packet_pb";
import type { Packet } from "../../src/gen/im/v1/packet_pb";
import {
  ConnectionClosedError,
  DeadlineError,
  decodePacket,
  decodePush,
  decodeReply,
  encodeAck,
  encodePacket,
  encodeRequest,
  ProtocolError,
  RequestTracker,
} from "../../src/protocol";
import { backoffDelay } from "../../src/socket";

function reply(type: PacketType, requestId: bigint, data = new Uint8Array(), code = ErrorCode.OK): Packet {
  return decodePacket(encodePacket({ type, requestId, code, data }));
}

describe("request round trips", () => {
  it("REGISTER", () => {
    const packet = decodePacket(
      encodeRequest(PacketType.REGISTER, 7n, { username: "ada", password: "secret-pw", open: true }),
    );
    expect(packet.type).toBe(PacketType.REGISTER);
    expect(packet.requestId).toBe(7n);
    expect(packet.code).toBe(ErrorCode.OK);
    const request = fromBinary(RegisterRequestSchema, packet.data);
    expect(request.username).toBe("ada");
    expect(request.password).toBe("secret-pw");
    expect(request.open).toBe(true);
  });

  it("LOGIN", () => {
    const packet = decodePacket(
      encodeRequest(PacketType.LOGIN, 8n, {
        username: "ada",
        password: "secret-pw",
        deviceId: 12n,
        device: { platform: "web", model: "test", appVersion: "1" },
      }),
    );
    expect(packet.type).toBe(PacketType.LOGIN);
    const request = fromBinary(LoginRequestSchema, packet.data);
    expect(request.deviceId).toBe(12n);
    expect(request.device?.platform).toBe("web");
  });

  it("SIGN_IN", () => {
    const packet = decodePacket(
      encodeRequest(PacketType.SIGN_IN, 9n, { userId: 3n, deviceId: 4n, token: "t0k" }),
    );
    expect(packet.type).toBe(PacketType.SIGN_IN);
    const request = fromBinary(SignInRequestSchema, packet.data);
    expect(request.userId).toBe(3n);
    expect(request.deviceId).toBe(4n);
    expect(request.token).toBe("t0k");
  });

  it("HEARTBEAT and LOGOUT carry no data", () => {
    for (const type of [PacketType.HEARTBEAT, PacketType.LOGOUT] as const) {
      const packet = decodePacket(encodeRequest(type, 10n, {}));
      expect(packet.type).toBe(type);
      expect(packet.requestId).toBe(10n);
      expect(packet.data.length).toBe(0);
    }
  });

  it("SEND", () => {
    const content = new TextEncoder().encode("hello");
    const packet = decodePacket(
      encodeRequest(PacketType.SEND, 11n, {
        conversationType: ConversationType.GROUP,
        receiverId: 99n,
        content,
        contentType: "text/plain",
        clientMsgId: "c-1",
      }),
    );
    const request = fromBinary(SendRequestSchema, packet.data);
    expect(packet.type).toBe(PacketType.SEND);
    expect(request.conversationType).toBe(ConversationType.GROUP);
    expect(request.receiverId).toBe(99n);
    expect(new TextDecoder().decode(request.content)).toBe("hello");
    expect(request.clientMsgId).toBe("c-1");
  });

  it("SYNC", () => {
    const packet = decodePacket(encodeRequest(PacketType.SYNC, 12n, { afterSeq: 41n, limit: 200 }));
    const request = fromBinary(SyncRequestSchema, packet.data);
    expect(packet.type).toBe(PacketType.SYNC);
    expect(request.afterSeq).toBe(41n);
    expect(request.limit).toBe(200);
  });

  it("MESSAGE_ACK has no request id", () => {
    const packet = decodePacket(encodeAck(17n));
    expect(packet.type).toBe(PacketType.MESSAGE_ACK);
    expect(packet.requestId).toBe(0n);
    expect(fromBinary(MessageAckSchema, packet.data).seq).toBe(17n);
  });
});

describe("reply and push round trips", () => {
  it("decodes each reply type", () => {
    const register = reply(PacketType.REGISTER, 1n, toBinary(RegisterReplySchema, create(RegisterReplySchema, { userId: 5n })));
    expect(decodeReply(PacketType.REGISTER, register).userId).toBe(5n);

    const loginData = toBinary(
      LoginReplySchema,
      create(LoginReplySchema, { userId: 5n, deviceId: 6n, token: "tok", heartbeatIntervalMs: 30_000 }),
    );
    const login = decodeReply(PacketType.LOGIN, reply(PacketType.LOGIN, 2n, loginData));
    expect(login.deviceId).toBe(6n);
    expect(login.token).toBe("tok");
    expect(login.heartbeatIntervalMs).toBe(30_000);

    const signInData = toBinary(SignInReplySchema, create(SignInReplySchema, { heartbeatIntervalMs: 25_000 }));
    expect(decodeReply(PacketType.SIGN_IN, reply(PacketType.SIGN_IN, 3n, signInData)).heartbeatIntervalMs).toBe(25_000);

    const sendData = toBinary(SendReplySchema, create(SendReplySchema, { messageId: 70n, seq: 8n, sentAtMs: 1_000n }));
    const send = decodeReply(PacketType.SEND, reply(PacketType.SEND, 4n, sendData));
    expect(send.messageId).toBe(70n);
    expect(send.seq).toBe(8n);

    const syncData = toBinary(
      SyncReplySchema,
      create(SyncReplySchema, { messages: [{ seq: 1n }, { seq: 2n }], hasMore: true }),
    );
    const sync = decodeReply(PacketType.SYNC, reply(PacketType.SYNC, 5n, syncData));
    expect(sync.messages.map((message) => message.seq)).toEqual([1n, 2n]);
    expect(sync.hasMore).toBe(true);

    expect(decodeReply(PacketType.HEARTBEAT, reply(PacketType.HEARTBEAT, 6n))).toBeDefined();
  });

  it("decodes MESSAGE and KICKED pushes", () => {
    const messageData = toBinary(
      MessageSchema,
      create(MessageSchema, { seq: 3n, senderUserId: 2n, receiverId: 1n, clientMsgId: "x" }),
    );
    const message = decodePush(PacketType.MESSAGE, reply(PacketType.MESSAGE, 0n, messageData));
    expect(message.seq).toBe(3n);
    expect(message.clientMsgId).toBe("x");

    const kickedData = toBinary(KickedSchema, create(KickedSchema, { reason: KickReason.SIGNED_IN_ELSEWHERE }));
    const kicked = decodePush(PacketType.KICKED, reply(PacketType.KICKED, 0n, kickedData));
    expect(kicked.reason).toBe(KickReason.SIGNED_IN_ELSEWHERE);
  });

  it("keeps the error fields of a packet", () => {
    const packet = decodePacket(
      toBinary(
        PacketSchema,
        create(PacketSchema, {
          type: PacketType.SEND,
          requestId: 4n,
          code: ErrorCode.BUSY,
          message: "busy",
          retryAfterMs: 250,
        }),
      ),
    );
    expect(packet.code).toBe(ErrorCode.BUSY);
    expect(packet.message).toBe("busy");
    expect(packet.retryAfterMs).toBe(250);
  });

  it("rejects bytes that are not a Packet", () => {
    expect(() => decodePacket(new Uint8Array([0xff, 0xff, 0xff]))).toThrow();
  });
});

describe("RequestTracker", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("allocates distinct increasing request ids", () => {
    const tracker = new RequestTracker();
    const first = tracker.start(PacketType.HEARTBEAT, 1_000);
    const second = tracker.start(PacketType.HEARTBEAT, 1_000);
    expect(first.requestId).toBe(1n);
    expect(second.requestId).toBe(2n);
    expect(tracker.size).toBe(2);
    tracker.failAll();
    void first.reply.catch(() => undefined);
    void second.reply.catch(() => undefined);
  });

  it("matches replies that arrive out of order", async () => {
    const tracker = new RequestTracker();
    const sync = tracker.start(PacketType.SYNC, 1_000);
    const send = tracker.start(PacketType.SEND, 1_000);
    expect(tracker.settle(reply(PacketType.SEND, send.requestId))).toBe(true);
    expect(tracker.settle(reply(PacketType.SYNC, sync.requestId))).toBe(true);
    expect((await send.reply).type).toBe(PacketType.SEND);
    expect((await sync.reply).type).toBe(PacketType.SYNC);
    expect(tracker.size).toBe(0);
  });

  it("leaves pushes, unknown ids and other types to the caller", () => {
    const tracker = new RequestTracker();
    const pending = tracker.start(PacketType.SEND, 1_000);
    expect(tracker.settle(reply(PacketType.MESSAGE, 0n))).toBe(false);
    expect(tracker.settle(reply(PacketType.SEND, 999n))).toBe(false);
    expect(tracker.settle(reply(PacketType.SYNC, pending.requestId))).toBe(false);
    expect(tracker.size).toBe(1);
    tracker.failAll();
    void pending.reply.catch(() => undefined);
  });

  it("rejects a reply with an error code", async () => {
    const tracker = new RequestTracker();
    const pending = tracker.start(PacketType.SEND, 1_000);
    const packet = decodePacket(
      encodePacket({
        type: PacketType.SEND,
        requestId: pending.requestId,
        code: ErrorCode.NOT_FRIEND,
        message: "not a friend",
        retryAfterMs: 0,
      }),
    );
    expect(tracker.settle(packet)).toBe(true);
    const error = await pending.reply.catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(ProtocolError);
    expect((error as ProtocolError).code).toBe(ErrorCode.NOT_FRIEND);
    expect((error as ProtocolError).message).toBe("not a friend");
  });

  it("rejects a request answered by ERROR", async () => {
    const tracker = new RequestTracker();
    const pending = tracker.start(PacketType.SEND, 1_000);
    const packet = reply(PacketType.ERROR, pending.requestId, new Uint8Array(), ErrorCode.UNKNOWN_TYPE);
    expect(tracker.settle(packet)).toBe(true);
    const error = await pending.reply.catch((failure: unknown) => failure);
    expect((error as ProtocolError).code).toBe(ErrorCode.UNKNOWN_TYPE);
  });

  it("rejects a request at its deadline and ignores the late reply", async () => {
    const tracker = new RequestTracker();
    const pending = tracker.start(PacketType.SIGN_IN, 1_000);
    const outcome = pending.reply.catch((failure: unknown) => failure);
    vi.advanceTimersByTime(999);
    expect(tracker.size).toBe(1);
    vi.advanceTimersByTime(1);
    const error = await outcome;
    expect(error).toBeInstanceOf(DeadlineError);
    expect((error as DeadlineError).deadlineMs).toBe(1_000);
    expect(tracker.size).toBe(0);
    expect(tracker.settle(reply(PacketType.SIGN_IN, pending.requestId))).toBe(false);
  });

  it("a reply before the deadline cancels it", async () => {
    const tracker = new RequestTracker();
    const pending = tracker.start(PacketType.SYNC, 1_000);
    tracker.settle(reply(PacketType.SYNC, pending.requestId));
    vi.advanceTimersByTime(5_000);
    expect((await pending.reply).requestId).toBe(pending.requestId);
  });

  it("fails every pending request when the connection closes", async () => {
    const tracker = new RequestTracker();
    const first = tracker.start(PacketType.SEND, 1_000);
    const second = tracker.start(PacketType.SYNC, 1_000);
    tracker.failAll();
    await expect(first.reply).rejects.toBeInstanceOf(ConnectionClosedError);
    await expect(second.reply).rejects.toBeInstanceOf(ConnectionClosedError);
    expect(tracker.size).toBe(0);
  });
});

describe("backoffDelay", () => {
  it("stays below an exponential ceiling capped at the maximum", () => {
    const almostOne = () => 0.999_999;
    expect(backoffDelay(0, 500, 8_000, almostOne)).toBe(499);
    expect(backoffDelay(1, 500, 8_000, almostOne)).toBe(999);
    expect(backoffDelay(3, 500, 8_000, almostOne)).toBe(3_999);
    expect(backoffDelay(4, 500, 8_000, almostOne)).toBe(7_999);
    expect(backoffDelay(50, 500, 8_000, almostOne)).toBe(7_999);
  });

  it("draws the full range down to zero", () => {
    expect(backoffDelay(5, 500, 8_000, () => 0)).toBe(0);
    expect(backoffDelay(2, 500, 8_000, () => 0.5)).toBe(1_000);
  });
});
