import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { PacketType } from "../../src/gen/im/v1/packet_pb";
import { ConnectionClosedError, OpenFailedError } from "../../src/protocol";
import { Socket } from "../../src/socket";
import { FakeWebSocket } from "./support/fake-websocket";

const original = globalThis.WebSocket;

beforeEach(() => {
  (globalThis as { WebSocket: unknown }).WebSocket = FakeWebSocket;
});

afterEach(() => {
  (globalThis as { WebSocket: unknown }).WebSocket = original;
});

function newSocket(): Socket {
  return new Socket("ws://127.0.0.1:1/ws", {
    onOpen: () => Promise.resolve(),
    onPacket: () => undefined,
    onClose: () => undefined,
    onState: () => undefined,
  });
}

async function openSocket(): Promise<{ socket: Socket; ws: FakeWebSocket }> {
  const socket = newSocket();
  const opened = socket.open(false);
  const ws = FakeWebSocket.last as FakeWebSocket;
  ws.serverOpen();
  await opened;
  return { socket, ws };
}

describe("socket requests", () => {
  it("rejects an unencodable request without sending it", async () => {
    const { socket, ws } = await openSocket();
    const tooLarge = 999999999999999999999n;
    await expect(
      socket.request(PacketType.SEND, { receiverId: tooLarge, clientMsgId: "c-1" }),
    ).rejects.toThrow();
    expect(ws.sent).toHaveLength(0);
    // A close afterwards must not reject a reply promise that nobody awaits; vitest fails the
    // run on an unhandled rejection.
    ws.serverClose(1006);
    await new Promise((resolve) => setTimeout(resolve, 0));
  });

  it("rejects a pending SEND with the close code", async () => {
    const { socket, ws } = await openSocket();
    const reply = socket.request(PacketType.SEND, { receiverId: 2n, clientMsgId: "c-1" });
    ws.serverClose(1009);
    const error = await reply.catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(ConnectionClosedError);
    expect((error as ConnectionClosedError).closeCode).toBe(1009);
  });

  it("reports a connection that never opened with its close code", async () => {
    const socket = newSocket();
    const opened = socket.open(false);
    (FakeWebSocket.last as FakeWebSocket).serverClose(1006);
    const error = await opened.catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(OpenFailedError);
    expect((error as OpenFailedError).closeCode).toBe(1006);
  });
});
