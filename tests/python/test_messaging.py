"""Messaging through the engine with Python's websockets: a direct message from one user to
another who registered as open to strangers."""

from __future__ import annotations

import uuid

from imclient import (
    PASSWORD,
    assert_reply,
    connect,
    login,
    next_request_id,
    pb,
    receive_packet,
    request,
    run,
    unique_username,
)


async def _register_open(ws, username: str) -> None:
    request_id = next_request_id()
    body = pb.RegisterRequest(username=username, password=PASSWORD, open=True)
    reply = await request(ws, pb.REGISTER, body, request_id)
    assert_reply(reply, pb.REGISTER, request_id)


async def _send_and_receive() -> None:
    async with connect() as receiver_ws, connect() as sender_ws:
        receiver_name = unique_username()
        await _register_open(receiver_ws, receiver_name)
        receiver = await login(receiver_ws, receiver_name)

        sender_name = unique_username()
        await _register_open(sender_ws, sender_name)
        sender = await login(sender_ws, sender_name)

        client_msg_id = uuid.uuid4().hex
        send = pb.SendRequest(
            conversation_type=pb.USER,
            receiver_id=receiver.user_id,
            content="hello from python".encode(),
            content_type="text/plain",
            client_msg_id=client_msg_id,
        )
        request_id = next_request_id()
        reply = await request(sender_ws, pb.SEND, send, request_id)
        assert_reply(reply, pb.SEND, request_id)
        sent = pb.SendReply()
        sent.ParseFromString(reply.data)
        assert sent.message_id > 0
        assert sent.seq >= 1

        push = await receive_packet(receiver_ws)
        assert push.type == pb.MESSAGE, f"expected MESSAGE, got {pb.PacketType.Name(push.type)}"
        assert push.request_id == 0
        message = pb.Message()
        message.ParseFromString(push.data)
        assert message.message_id == sent.message_id
        assert message.seq == 1, "the receiver's first message has seq 1"
        assert message.sender_user_id == sender.user_id
        assert message.content == b"hello from python"
        assert message.client_msg_id == client_msg_id

        # The receiver acknowledges, then finds the same message through SYNC.
        await receiver_ws.send(
            pb.Packet(type=pb.MESSAGE_ACK, data=pb.MessageAck(seq=message.seq).SerializeToString()).SerializeToString()
        )
        request_id = next_request_id()
        reply = await request(receiver_ws, pb.SYNC, pb.SyncRequest(after_seq=0, limit=10), request_id)
        assert_reply(reply, pb.SYNC, request_id)
        synced = pb.SyncReply()
        synced.ParseFromString(reply.data)
        assert [m.message_id for m in synced.messages] == [sent.message_id]
        assert not synced.has_more


def test_direct_message_is_pushed_and_synced():
    run(_send_and_receive())
