// Packets of docs/protocol.md: encoding and decoding, request ids, replies matched to their
// requests, and per-request deadlines. Types, codes and fields all come from the code generated
// from proto/im/v1/packet.proto.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";

import {
  ErrorCode,
  KickedSchema,
  LoginReplySchema,
  LoginRequestSchema,
  MessageAckSchema,
  MessageSchema,
  NoticeSchema,
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
} from "./gen/im/v1/packet_pb";
import type { Packet } from "./gen/im/v1/packet_pb";

/** The message in `Packet.data` of a request and of its successful reply, per packet type. */
export const REQUEST_SCHEMAS = {
  [PacketType.REGISTER]: { request: RegisterRequestSchema, reply: RegisterReplySchema },
  [PacketType.LOGIN]: { request: LoginRequestSchema, reply: LoginReplySchema },
  [PacketType.SIGN_IN]: { request: SignInRequestSchema, reply: SignInReplySchema },
  [PacketType.HEARTBEAT]: { request: EmptySchema, reply: EmptySchema },
  [PacketType.SEND]: { request: SendRequestSchema, reply: SendReplySchema },
  [PacketType.SYNC]: { request: SyncRequestSchema, reply: SyncReplySchema },
  [PacketType.LOGOUT]: { request: EmptySchema, reply: EmptySchema },
} as const;

/** Packet types that take a reply. */
export type RequestType = keyof typeof REQUEST_SCHEMAS;
export type RequestInit<T extends RequestType> = MessageInitShape<
  (typeof REQUEST_SCHEMAS)[T]["request"]
>;
export type ReplyOf<T extends RequestType> = MessageShape<(typeof REQUEST_SCHEMAS)[T]["reply"]>;

/** The message in `Packet.data` of each push type. */
export const PUSH_SCHEMAS = {
  [PacketType.MESSAGE]: MessageSchema,
  [PacketType.KICKED]: KickedSchema,
  [PacketType.NOTICE]: NoticeSchema,
} as const;

/** A failed request: the reply's code and text, or a local failure such as a deadline. */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterMs = 0,
  ) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** Raised locally when a request got no reply within its deadline. */
export class DeadlineError extends Error {
  constructor(
    readonly type: PacketType,
    readonly requestId: bigint,
    readonly deadlineMs: number,
  ) {
    super(`${PacketType[type]} request ${requestId} got no reply within ${deadlineMs} ms`);
    this.name = "DeadlineError";
  }
}

/**
 * Raised for every pending request when the connection closes before its reply. `closeCode` is
 * the WebSocket close code, or 0 when it is not known.
 */
export class ConnectionClosedError extends Error {
  constructor(
    readonly type: PacketType,
    readonly closeCode = 0,
  ) {
    const code = closeCode ? ` (code ${closeCode})` : "";
    super(`the connection closed${code} before the ${PacketType[type]} reply arrived`);
    this.name = "ConnectionClosedError";
  }
}

/** Raised when a request is made while no connection is open, so nothing was sent. */
export class NotConnectedError extends Error {
  constructor(readonly type: PacketType) {
    super(`cannot send ${PacketType[type]}: the connection is not open`);
    this.name = "NotConnectedError";
  }
}

/** Raised when a WebSocket closes before it opened and signed in, with its close code. */
export class OpenFailedError extends Error {
  constructor(readonly closeCode: number) {
    super(`the connection closed (code ${closeCode}) before it was ready`);
    this.name = "OpenFailedError";
  }
}

/** Encodes a packet carrying `data` (already encoded) as one binary WebSocket message. */
export function encodePacket(init: MessageInitShape<typeof PacketSchema>): Uint8Array {
  return toBinary(PacketSchema, create(PacketSchema, init));
}

/** Decodes one binary WebSocket message; throws when it is not a Packet. */
export function decodePacket(bytes: Uint8Array): Packet {
  return fromBinary(PacketSchema, bytes);
}

/** Encodes a MESSAGE_ACK packet, which has no request id and no reply. */
export function encodeAck(seq: bigint): Uint8Array {
  const data = toBinary(MessageAckSchema, create(MessageAckSchema, { seq }));
  return encodePacket({ type: PacketType.MESSAGE_ACK, data });
}

/** Encodes the request packet of `type` with id `requestId`. */
export function encodeRequest<T extends RequestType>(
  type: T,
  requestId: bigint,
  message: RequestInit<T>,
): Uint8Array {
  const schema = REQUEST_SCHEMAS[type].request as DescMessage;
  const data = toBinary(schema, create(schema, message as MessageInitShape<DescMessage>));
  return encodePacket({ type, requestId, data });
}

/** Decodes the `data` of a successful reply of `type`. */
export function decodeReply<T extends RequestType>(type: T, packet: Packet): ReplyOf<T> {
  const schema = REQUEST_SCHEMAS[type].reply as DescMessage;
  return fromBinary(schema, packet.data) as ReplyOf<T>;
}

/** Decodes the `data` of a push of `type`. */
export function decodePush<T extends keyof typeof PUSH_SCHEMAS>(
  type: T,
  packet: Packet,
): MessageShape<(typeof PUSH_SCHEMAS)[T]> {
  return fromBinary(PUSH_SCHEMAS[type] as DescMessage, packet.data) as MessageShape<
    (typeof PUSH_SCHEMAS)[T]
  >;
}

/** Timer functions, replaceable in tests. */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

interface Pending {
  type: PacketType;
  resolve(packet: Packet): void;
  reject(error: Error): void;
  timer: unknown;
}

/**
 * Request ids and replies. `start` allocates an id and returns the promise of the reply packet;
 * `settle` hands each received packet to its request. A reply with a non-zero code rejects with
 * a {@link ProtocolError}, a request without a reply within its deadline with a
 * {@link DeadlineError}.
 */
export class RequestTracker {
  private nextId = 1n;
  private readonly pending = new Map<bigint, Pending>();

  constructor(private readonly timers: Timers = realTimers) {}

  /** Returns the number of requests still waiting for a reply. */
  get size(): number {
    return this.pending.size;
  }

  /** The id that the next {@link start} allocates. */
  get nextRequestId(): bigint {
    return this.nextId;
  }

  /** Allocates a request id and returns it with the promise of its successful reply packet. */
  start(type: PacketType, deadlineMs: number): { requestId: bigint; reply: Promise<Packet> } {
    const requestId = this.nextId;
    this.nextId += 1n;
    const reply = new Promise<Packet>((resolve, reject) => {
      const timer = this.timers.setTimeout(() => {
        this.pending.delete(requestId);
        reject(new DeadlineError(type, requestId, deadlineMs));
      }, deadlineMs);
      this.pending.set(requestId, { type, resolve, reject, timer });
    });
    return { requestId, reply };
  }

  /**
   * Settles the request that `packet` replies to and returns true, or returns false when the
   * packet is a push or a late, unknown or mismatched reply. An ERROR packet with a request id
   * rejects that request.
   */
  settle(packet: Packet): boolean {
    if (packet.requestId === 0n) {
      return false;
    }
    const pending = this.pending.get(packet.requestId);
    if (!pending) {
      return false;
    }
    if (packet.type !== pending.type && packet.type !== PacketType.ERROR) {
      return false;
    }
    this.pending.delete(packet.requestId);
    this.timers.clearTimeout(pending.timer);
    if (packet.code === ErrorCode.OK && packet.type !== PacketType.ERROR) {
      pending.resolve(packet);
    } else {
      const text = packet.message || ErrorCode[packet.code] || `error ${packet.code}`;
      pending.reject(new ProtocolError(packet.code, text, packet.retryAfterMs));
    }
    return true;
  }

  /** Rejects every pending request with {@link ConnectionClosedError} carrying `closeCode`. */
  failAll(closeCode = 0): void {
    for (const pending of this.pending.values()) {
      this.timers.clearTimeout(pending.timer);
      pending.reject(new ConnectionClosedError(pending.type, closeCode));
    }
    this.pending.clear();
  }
}
