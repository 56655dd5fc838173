#!/usr/bin/env python3
"""Write the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Each seed is a small hand-made input, valid or invalid, named after what it contains. The
output is deterministic, so running this again rewrites the same files. Files already in a
corpus folder that this script does not write are left alone.
"""

import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"

# Masking key of every client frame here.
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])

# Setup bytes in front of each frames seed: limits mode, small message limit, split seed.
DEFAULT_LIMITS = 0x80
WHOLE = 0
BYTE_AT_A_TIME = 1

# protobuf wire types
VARINT = 0
LEN = 2

# PacketType numbers from proto/im/v1/packet.proto
REGISTER, LOGIN, SIGN_IN, HEARTBEAT, SEND, MESSAGE_ACK, SYNC = 1, 2, 3, 4, 7, 9, 10


def upgrade_request(request_line, headers, trailer=b""):
    head = request_line + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n").encode() + trailer


VALID_HEADERS = [
    ("Host", "chat.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


COMPACT_HEADERS = [("Host", "a")] + VALID_HEADERS[1:]


def headers_without(name):
    return [header for header in VALID_HEADERS if header[0] != name]


def upgrade_seeds():
    browser_headers = VALID_HEADERS + [
        ("Origin", "https://chat.example.com"),
        ("Sec-WebSocket-Protocol", "im.v1, im.v2"),
        ("User-Agent", "seed"),
        ("X-Forwarded-For", "203.0.113.7"),
    ]
    return {
        "valid-minimal": upgrade_request("GET /ws HTTP/1.1", VALID_HEADERS),
        "valid-browser": upgrade_request("GET /ws?token=abc HTTP/1.1", browser_headers),
        # Within the 160-byte limit that the target also parses with.
        "valid-chat-compact": upgrade_request("GET /chat HTTP/1.1", COMPACT_HEADERS),
        # The request is at most half the input, so it fits the limit of half the input length.
        "valid-root-half": upgrade_request("GET / HTTP/1.1", COMPACT_HEADERS, b"x" * 160),
        "valid-then-frame": upgrade_request(
            "GET /ws HTTP/1.1", VALID_HEADERS, client_frame(True, 0x1, b"hi")
        ),
        "valid-lf-only": upgrade_request("GET /ws HTTP/1.1", VALID_HEADERS).replace(b"\r\n", b"\n"),
        "incomplete": upgrade_request("GET /ws HTTP/1.1", VALID_HEADERS)[:-2],
        "http-1-0": upgrade_request("GET /ws HTTP/1.0", VALID_HEADERS),
        "post": upgrade_request("POST /ws HTTP/1.1", VALID_HEADERS),
        "wrong-path": upgrade_request("GET /other HTTP/1.1", VALID_HEADERS),
        "missing-key": upgrade_request("GET /ws HTTP/1.1", headers_without("Sec-WebSocket-Key")),
        "short-key": upgrade_request(
            "GET /ws HTTP/1.1",
            headers_without("Sec-WebSocket-Key")
            + [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ")],
        ),
        "duplicate-host": upgrade_request("GET /ws HTTP/1.1", VALID_HEADERS + [("Host", "other")]),
        "version-8": upgrade_request(
            "GET /ws HTTP/1.1",
            headers_without("Sec-WebSocket-Version") + [("Sec-WebSocket-Version", "8")],
        ),
        "with-body": upgrade_request("GET /ws HTTP/1.1", VALID_HEADERS + [("Content-Length", "5")]),
        "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    }


def client_frame(fin, opcode, payload, length_bytes=None, masked=True):
    """Build a client frame: masked, with the minimal length encoding unless given."""
    if length_bytes is None:
        if len(payload) <= 125:
            length_bytes = 0
        elif len(payload) <= 0xFFFF:
            length_bytes = 2
        else:
            length_bytes = 8
    mask_bit = 0x80 if masked else 0
    frame = bytes([(0x80 if fin else 0) | opcode])
    if length_bytes == 0:
        frame += bytes([mask_bit | len(payload)])
    elif length_bytes == 2:
        frame += bytes([mask_bit | 126]) + struct.pack(">H", len(payload))
    else:
        frame += bytes([mask_bit | 127]) + struct.pack(">Q", len(payload))
    if not masked:
        return frame + payload
    masked_payload = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
    return frame + MASK + masked_payload


def frames_seed(stream, limits=DEFAULT_LIMITS, message_limit=0, split=WHOLE):
    return bytes([limits, message_limit]) + struct.pack(">H", split) + stream


def frames_seeds():
    fragmented_text = (
        client_frame(False, 0x1, b"frag \xe2")
        + client_frame(True, 0x9, b"ping")
        + client_frame(False, 0x0, b"\x82")
        + client_frame(True, 0x0, b"\xac end")
    )
    fragmented_binary = client_frame(False, 0x2, bytes(range(20))) + client_frame(
        True, 0x0, bytes(range(20, 40))
    )
    ten_byte_fragments = client_frame(False, 0x2, b"0123456789") + client_frame(
        True, 0x0, b"0123456789"
    )
    huge_length = bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + MASK
    return {
        "text-hello": frames_seed(client_frame(True, 0x1, b"hello")),
        "binary-16-bit-length": frames_seed(client_frame(True, 0x2, bytes(200))),
        "binary-64-bit-length": frames_seed(client_frame(True, 0x2, b"long", length_bytes=8)),
        "fragmented-text-with-ping": frames_seed(fragmented_text, split=BYTE_AT_A_TIME),
        "fragmented-binary-split": frames_seed(fragmented_binary, split=0x1234),
        "close-code-reason": frames_seed(client_frame(True, 0x8, b"\x03\xe8bye")),
        "close-empty": frames_seed(client_frame(True, 0x8, b"")),
        "close-reserved-code": frames_seed(client_frame(True, 0x8, struct.pack(">H", 1005))),
        "close-one-byte": frames_seed(client_frame(True, 0x8, b"\x03")),
        "ping-pong-125": frames_seed(
            client_frame(True, 0x9, bytes(125)) + client_frame(True, 0xA, b"")
        ),
        "ping-126": frames_seed(client_frame(True, 0x9, bytes(126))),
        "ping-fragmented": frames_seed(client_frame(False, 0x9, b"")),
        "unmasked": frames_seed(client_frame(True, 0x1, b"hi", masked=False)),
        "reserved-bits": frames_seed(bytes([0xC1]) + client_frame(True, 0x1, b"hi")[1:]),
        "reserved-opcode": frames_seed(client_frame(True, 0x3, b"")),
        "continuation-first": frames_seed(client_frame(True, 0x0, b"x")),
        "text-during-fragments": frames_seed(
            client_frame(False, 0x1, b"a") + client_frame(True, 0x1, b"b")
        ),
        "text-invalid-utf8": frames_seed(client_frame(True, 0x1, b"ok \xff")),
        "length-msb-set": frames_seed(bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + MASK),
        "length-huge-no-limit": frames_seed(huge_length, limits=0xFF),
        "small-frame-too-large": frames_seed(
            client_frame(True, 0x2, bytes(17)), limits=16, message_limit=64
        ),
        "small-message-too-large": frames_seed(
            ten_byte_fragments, limits=16, message_limit=15, split=7
        ),
    }


def varint(value):
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, value):
    """Encode one field: an int as a varint, bytes or str as length-delimited."""
    if isinstance(value, int):
        return varint(number << 3 | VARINT) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | LEN) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(number, value) for number, value in fields)


def packet(packet_type, request_id, data=b""):
    return message((1, packet_type), (2, request_id), (5, data))


def packet_seeds():
    sign_in = message((1, 42), (2, 7), (3, "t0ken-seed"))
    device = message((1, "android"), (2, "seed-phone"), (3, "1.0.0"))
    login = message((1, "alice"), (2, "correct horse"), (3, 0), (4, device))
    register = message((1, "alice"), (2, "correct horse"), (3, 1))
    send = message((1, 1), (2, 43), (3, b"hello"), (4, "text/plain"), (5, "c-1"))
    return {
        "sign-in": packet(SIGN_IN, 1, sign_in),
        "login": packet(LOGIN, 2, login),
        "register": packet(REGISTER, 3, register),
        "send": packet(SEND, 4, send),
        "sync": packet(SYNC, 5, message((1, 10), (2, 100))),
        "message-ack": packet(MESSAGE_ACK, 0, message((1, 99))),
        "heartbeat": packet(HEARTBEAT, 6),
        "sign-in-request-only": sign_in,
        "negative-type": packet(-1, 7),
        "unknown-field": packet(SIGN_IN, 8, sign_in) + field(15, 1),
        "truncated-varint": packet(SIGN_IN, 9)[:-1] + b"\xff",
        "string-invalid-utf8": packet(SIGN_IN, 10, message((3, b"\xff\xfe"))),
        "wrong-wire-type": varint(1 << 3 | LEN) + varint(1) + b"\x03",
        "length-past-end": varint(5 << 3 | LEN) + varint(100) + b"abc",
    }


def write_corpus(target, seeds):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)


def main():
    write_corpus("upgrade", upgrade_seeds())
    write_corpus("frames", frames_seeds())
    write_corpus("packet", packet_seeds())


if __name__ == "__main__":
    main()
