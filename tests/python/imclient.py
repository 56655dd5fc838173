"""Test client for the engine's WebSocket protocol.

Every binary WebSocket message carries one ``im.v1.Packet`` (proto/im/v1/packet.proto). The
Python code for it is generated into ``gen/`` by scripts/test, which also starts the engine and
sets ``IM_WS_URL``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

GEN_DIR = Path(__file__).resolve().parent / "gen"
if not (GEN_DIR / "im" / "v1" / "packet_pb2.py").is_file():
    raise ImportError(f"{GEN_DIR}/im/v1/packet_pb2.py is missing: run scripts/test, which generates it")
sys.path.insert(0, str(GEN_DIR))

from im.v1 import packet_pb2 as pb  # noqa: E402

# Seconds to wait for one reply. Generous, because the debug builds of the engine and the logic
# tier handle each sign-in with PostgreSQL, Redis and password hashing.
REPLY_TIMEOUT_S = 10.0
# Seconds a whole test may take, as a bound for tests that hang.
TEST_TIMEOUT_S = 60.0

PASSWORD = "correct-horse-battery-staple"

_request_ids = itertools.count(1000)


def ws_url() -> str:
    """Return the engine's WebSocket URL from IM_WS_URL."""
    url = os.environ.get("IM_WS_URL")
    if not url:
        raise RuntimeError("IM_WS_URL is not set: run scripts/test, which starts the engine and sets it")
    return url


def run(coroutine) -> None:
    """Run a test coroutine to completion, bounded by TEST_TIMEOUT_S."""
    asyncio.run(asyncio.wait_for(coroutine, TEST_TIMEOUT_S))


def unique_username() -> str:
    """Return a username that no earlier run has registered (3 to 32 allowed characters)."""
    return "py_" + uuid.uuid4().hex[:24]


def next_request_id() -> int:
    return next(_request_ids)


def connect() -> ws_connect:
    """Open a WebSocket to the engine; use as ``async with connect() as ws``.

    Keepalive pings are off so that the only frames on the wire are the ones a test sends, and
    no proxy from the environment is used for the loopback address.
    """
    return ws_connect(
        ws_url(),
        open_timeout=REPLY_TIMEOUT_S,
        close_timeout=REPLY_TIMEOUT_S,
        ping_interval=None,
        proxy=None,
    )


async def send_packet(ws: ClientConnection, packet: pb.Packet) -> None:
    await ws.send(packet.SerializeToString())


async def receive_packet(ws: ClientConnection) -> pb.Packet:
    """Receive the next message, which must be a binary message containing one Packet."""
    message = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S)
    assert isinstance(message, bytes), f"expected a binary message, got text {message!r}"
    packet = pb.Packet()
    packet.ParseFromString(message)
    return packet


async def request(ws: ClientConnection, packet_type: int, body=None, request_id: int | None = None) -> pb.Packet:
    """Send a request packet with BODY (a protobuf message or None) and return the next packet."""
    packet = pb.Packet(type=packet_type, request_id=request_id or next_request_id())
    if body is not None:
        packet.data = body.SerializeToString()
    await send_packet(ws, packet)
    return await receive_packet(ws)


def assert_reply(reply: pb.Packet, packet_type: int, request_id: int, code: int = pb.OK) -> None:
    """Check the type, echoed request id and result code of a reply, each on its own."""
    assert reply.request_id == request_id, f"reply echoes request id {reply.request_id}, expected {request_id}"
    assert reply.code == code, (
        f"reply code {pb.ErrorCode.Name(reply.code)} ({reply.message!r}), expected {pb.ErrorCode.Name(code)}"
    )
    assert reply.type == packet_type, (
        f"reply type {pb.PacketType.Name(reply.type)}, expected {pb.PacketType.Name(packet_type)}"
    )


async def register(ws: ClientConnection, username: str, password: str = PASSWORD) -> pb.RegisterReply:
    """REGISTER a user and return the decoded reply; fails the test unless the code is OK."""
    request_id = next_request_id()
    reply = await request(ws, pb.REGISTER, pb.RegisterRequest(username=username, password=password), request_id)
    assert_reply(reply, pb.REGISTER, request_id)
    body = pb.RegisterReply()
    body.ParseFromString(reply.data)
    return body


async def login(ws: ClientConnection, username: str, password: str = PASSWORD) -> pb.LoginReply:
    """LOGIN as a new device and return the decoded reply; fails the test unless the code is OK."""
    device = pb.DeviceInfo(platform="test", model="pytest", app_version="0.1.0")
    login_request = pb.LoginRequest(username=username, password=password, device_id=0, device=device)
    request_id = next_request_id()
    reply = await request(ws, pb.LOGIN, login_request, request_id)
    assert_reply(reply, pb.LOGIN, request_id)
    body = pb.LoginReply()
    body.ParseFromString(reply.data)
    return body


async def register_and_login(ws: ClientConnection) -> tuple[str, pb.RegisterReply, pb.LoginReply]:
    """Register a fresh user and log in on WS, which is then signed in."""
    username = unique_username()
    registered = await register(ws, username)
    logged_in = await login(ws, username)
    return username, registered, logged_in


async def heartbeat(ws: ClientConnection, request_id: int) -> pb.Packet:
    """Send HEARTBEAT and return the reply packet, unchecked."""
    return await request(ws, pb.HEARTBEAT, None, request_id)
