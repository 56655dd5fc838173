"""Sign-in flow of the engine, driven by an independent WebSocket client (the websockets package).

Needs a running engine and logic tier: scripts/test starts both and sets IM_WS_URL.
"""

import asyncio
import time

import pytest
from websockets.exceptions import ConnectionClosed

import imclient as im
from imclient import pb

# RFC 6455 close codes.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003


def altered_token(token: str) -> str:
    """Return TOKEN with its first character swapped for another character of the same token.

    The result keeps the token's length and alphabet, so only its value is wrong.
    """
    replacement = next(c for c in token if c != token[0])
    return replacement + token[1:]


async def expect_closed(ws) -> ConnectionClosed:
    """Wait until the engine closes WS and return the exception that reports the close."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), im.REPLY_TIMEOUT_S)
    return closed.value


def test_login_then_heartbeat():
    async def scenario():
        async with im.connect() as ws:
            _, registered, logged_in = await im.register_and_login(ws)
            assert registered.user_id > 0
            assert logged_in.user_id == registered.user_id
            assert logged_in.device_id > 0
            assert logged_in.token != ""
            assert logged_in.token_expires_at_ms > time.time() * 1000
            assert logged_in.heartbeat_interval_ms > 0

            request_id = im.next_request_id()
            reply = await im.heartbeat(ws, request_id)
            im.assert_reply(reply, pb.HEARTBEAT, request_id)

    im.run(scenario())


def test_client_close_is_echoed():
    async def scenario():
        async with im.connect() as ws:
            await im.register_and_login(ws)
            await ws.close(code=CLOSE_NORMAL)
            # close_code is the code of the Close frame the engine sent back, 1006 if none came.
            assert ws.close_code == CLOSE_NORMAL

    im.run(scenario())


def test_sign_in_with_login_token():
    async def scenario():
        async with im.connect() as first:
            _, _, logged_in = await im.register_and_login(first)
            await first.close(code=CLOSE_NORMAL)

        async with im.connect() as second:
            sign_in = pb.SignInRequest(
                user_id=logged_in.user_id, device_id=logged_in.device_id, token=logged_in.token
            )
            request_id = im.next_request_id()
            reply = await im.request(second, pb.SIGN_IN, sign_in, request_id)
            im.assert_reply(reply, pb.SIGN_IN, request_id)
            body = pb.SignInReply()
            body.ParseFromString(reply.data)
            assert body.heartbeat_interval_ms > 0

            request_id = im.next_request_id()
            reply = await im.heartbeat(second, request_id)
            im.assert_reply(reply, pb.HEARTBEAT, request_id)

            await second.close(code=CLOSE_NORMAL)
            assert second.close_code == CLOSE_NORMAL

    im.run(scenario())


def test_sign_in_elsewhere_kicks_first_connection():
    async def scenario():
        async with im.connect() as first:
            _, _, logged_in = await im.register_and_login(first)

            async with im.connect() as second:
                sign_in = pb.SignInRequest(
                    user_id=logged_in.user_id, device_id=logged_in.device_id, token=logged_in.token
                )
                request_id = im.next_request_id()
                reply = await im.request(second, pb.SIGN_IN, sign_in, request_id)
                im.assert_reply(reply, pb.SIGN_IN, request_id)

                kicked = await im.receive_packet(first)
                assert kicked.type == pb.KICKED
                assert kicked.request_id == 0
                body = pb.Kicked()
                body.ParseFromString(kicked.data)
                assert body.reason == pb.SIGNED_IN_ELSEWHERE
                await expect_closed(first)

                request_id = im.next_request_id()
                reply = await im.heartbeat(second, request_id)
                im.assert_reply(reply, pb.HEARTBEAT, request_id)

    im.run(scenario())


def test_text_frame_closes_with_1003():
    async def scenario():
        async with im.connect() as ws:
            await ws.send("a text frame")
            closed = await expect_closed(ws)
            assert closed.rcvd is not None, "engine dropped the connection without a Close frame"
            assert closed.rcvd.code == CLOSE_UNSUPPORTED_DATA

    im.run(scenario())


def test_sign_in_wrong_token_is_token_invalid():
    async def scenario():
        async with im.connect() as first:
            _, _, logged_in = await im.register_and_login(first)
            await first.close(code=CLOSE_NORMAL)

        async with im.connect() as second:
            sign_in = pb.SignInRequest(
                user_id=logged_in.user_id,
                device_id=logged_in.device_id,
                token=altered_token(logged_in.token),
            )
            request_id = im.next_request_id()
            reply = await im.request(second, pb.SIGN_IN, sign_in, request_id)
            im.assert_reply(reply, pb.SIGN_IN, request_id, code=pb.TOKEN_INVALID)
            assert reply.message != ""

    im.run(scenario())


def test_heartbeat_before_sign_in_is_not_signed_in():
    async def scenario():
        async with im.connect() as ws:
            request_id = im.next_request_id()
            reply = await im.heartbeat(ws, request_id)
            im.assert_reply(reply, pb.HEARTBEAT, request_id, code=pb.NOT_SIGNED_IN)

    im.run(scenario())


def test_login_wrong_password_is_invalid_credentials():
    async def scenario():
        async with im.connect() as ws:
            username = im.unique_username()
            await im.register(ws, username)
            login = pb.LoginRequest(username=username, password="not-the-password")
            request_id = im.next_request_id()
            reply = await im.request(ws, pb.LOGIN, login, request_id)
            im.assert_reply(reply, pb.LOGIN, request_id, code=pb.INVALID_CREDENTIALS)

    im.run(scenario())


def test_register_taken_username_is_rejected():
    async def scenario():
        async with im.connect() as ws:
            username = im.unique_username()
            await im.register(ws, username)
            again = pb.RegisterRequest(username=username, password=im.PASSWORD)
            request_id = im.next_request_id()
            reply = await im.request(ws, pb.REGISTER, again, request_id)
            im.assert_reply(reply, pb.REGISTER, request_id, code=pb.USERNAME_TAKEN)

    im.run(scenario())
