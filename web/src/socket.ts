// The WebSocket to the engine: opening, reconnecting with exponential back-off and full jitter,
// heartbeats, and requests matched to replies through the protocol module. Signing in after a
// reconnect is the caller's job (the `onOpen` callback), because it needs the credentials.

import { PacketType } from "./gen/im/v1/packet_pb";
import type { Packet } from "./gen/im/v1/packet_pb";
import {
  decodePacket,
  decodeReply,
  encodeAck,
  encodeRequest,
  NotConnectedError,
  OpenFailedError,
  RequestTracker,
} from "./protocol";
import type { ReplyOf, RequestInit, RequestType } from "./protocol";
import { CLOSE_KICKED } from "./texts";

/** Connection state of a {@link Socket}. */
export type SocketState = "closed" | "connecting" | "open" | "waiting";

/** Callbacks of a {@link Socket}. */
export interface SocketEvents {
  /** The socket opened; sign in here. A rejection closes the socket and reconnects. */
  onOpen(): Promise<void>;
  /** A push (request id 0) or an unmatched packet arrived. */
  onPacket(packet: Packet): void;
  /** The socket closed; `reconnectInMs` is null when no reconnect is scheduled. */
  onClose(code: number, reason: string, reconnectInMs: number | null): void;
  onState(state: SocketState): void;
}

/** Back-off settings, in milliseconds. */
export interface SocketOptions {
  firstDelayMs: number;
  maxDelayMs: number;
  requestTimeoutMs: number;
}

export const DEFAULT_SOCKET_OPTIONS: SocketOptions = {
  firstDelayMs: 500,
  maxDelayMs: 8_000,
  requestTimeoutMs: 10_000,
};

/** Client close code for a connection whose heartbeat went unanswered (4000-4999 are free). */
const CLOSE_HEARTBEAT_LOST = 4100;

/**
 * Returns the delay before reconnect attempt `attempt` (0 for the first): a uniformly random
 * value below min(max, first × 2^attempt), the "full jitter" back-off.
 */
export function backoffDelay(
  attempt: number,
  firstDelayMs: number,
  maxDelayMs: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxDelayMs, firstDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

export class Socket {
  private ws: WebSocket | null = null;
  private readonly tracker = new RequestTracker();
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private opened: Promise<void> | null = null;
  /** True while the socket should reopen after a close. */
  private keepOpen = false;

  constructor(
    private readonly url: string,
    private readonly events: SocketEvents,
    private readonly options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
  ) {}

  /** True when a WebSocket is open. */
  get isOpen(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Opens the socket if it is not open and resolves once it is (after `onOpen`). With
   * `keepOpen`, every later close reconnects with back-off until {@link stop} or a kick.
   */
  open(keepOpen: boolean): Promise<void> {
    this.keepOpen = this.keepOpen || keepOpen;
    if (this.opened) {
      return this.opened;
    }
    this.cancelReconnect();
    this.opened = this.connect();
    return this.opened;
  }

  /** Reconnects at once, for example when the browser reports that it is online again. */
  reconnectNow(): void {
    if (this.keepOpen && !this.ws) {
      this.attempt = 0;
      this.cancelReconnect();
      void this.open(true).catch(() => undefined);
    }
  }

  /** Resets the back-off; call once the connection is signed in. */
  markHealthy(): void {
    this.attempt = 0;
  }

  /** Closes the socket with 1000 and reconnects no more. */
  stop(): void {
    this.keepOpen = false;
    this.cancelReconnect();
    this.stopHeartbeat();
    this.ws?.close(1000, "closed by the user");
  }

  /** Sends a request and resolves with the decoded data of its successful reply. */
  async request<T extends RequestType>(
    type: T,
    message: RequestInit<T>,
    deadlineMs = this.options.requestTimeoutMs,
  ): Promise<ReplyOf<T>> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      throw new NotConnectedError(type);
    }
    // Encode before registering the request. A message that cannot be encoded (an id outside
    // uint64, say) then throws here, instead of leaving a reply promise that is never awaited.
    const requestId = this.tracker.nextRequestId;
    const bytes = encodeRequest(type, requestId, message);
    const { reply } = this.tracker.start(type, deadlineMs);
    ws.send(bytes);
    return decodeReply(type, await reply);
  }

  /**
   * Sends MESSAGE_ACK with the highest seq held, which has no reply. Returns false, sending
   * nothing, when the socket is not open.
   */
  acknowledge(seq: bigint): boolean {
    if (!this.isOpen || !this.ws) {
      return false;
    }
    this.ws.send(encodeAck(seq));
    return true;
  }

  /** Sends HEARTBEAT every `intervalMs`; an unanswered one closes the socket to reconnect. */
  startHeartbeat(intervalMs: number): void {
    this.stopHeartbeat();
    const interval = Math.max(1_000, intervalMs);
    this.heartbeatTimer = setInterval(() => {
      this.request(PacketType.HEARTBEAT, {}, interval).catch(() => {
        this.ws?.close(CLOSE_HEARTBEAT_LOST, "heartbeat unanswered");
      });
    }, interval);
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer !== null) {
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = null;
    }
  }

  private connect(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.events.onState("connecting");
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let settled = false;
      ws.onopen = () => {
        this.events.onState("open");
        this.events.onOpen().then(
          () => {
            settled = true;
            resolve();
          },
          (error: unknown) => {
            settled = true;
            reject(error instanceof Error ? error : new Error(String(error)));
            ws.close(1000, "sign-in failed");
          },
        );
      };
      ws.onmessage = (event: MessageEvent) => this.receive(event.data);
      ws.onclose = (event: CloseEvent) => {
        if (!settled) {
          settled = true;
          reject(new OpenFailedError(event.code));
        }
        this.closed(ws, event.code, event.reason);
      };
    });
  }

  private receive(data: unknown): void {
    if (!(data instanceof ArrayBuffer)) {
      return;
    }
    let packet: Packet;
    try {
      packet = decodePacket(new Uint8Array(data));
    } catch {
      console.warn("dropped a message that is not a Packet");
      return;
    }
    if (!this.tracker.settle(packet)) {
      this.events.onPacket(packet);
    }
  }

  private closed(ws: WebSocket, code: number, reason: string): void {
    if (this.ws !== ws) {
      return;
    }
    this.ws = null;
    this.opened = null;
    this.stopHeartbeat();
    this.tracker.failAll(code);
    if (code === CLOSE_KICKED) {
      this.keepOpen = false;
    }
    let reconnectInMs: number | null = null;
    if (this.keepOpen) {
      reconnectInMs = backoffDelay(
        this.attempt,
        this.options.firstDelayMs,
        this.options.maxDelayMs,
      );
      this.attempt += 1;
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        void this.open(true).catch(() => undefined);
      }, reconnectInMs);
      this.events.onState("waiting");
    } else {
      this.events.onState("closed");
    }
    this.events.onClose(code, reason, reconnectInMs);
  }

  private cancelReconnect(): void {
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
  }
}
