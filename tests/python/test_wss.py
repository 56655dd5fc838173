"""wss:// against an engine of its own, with a certificate made by the openssl command.

The engine serves TLS only, so this module starts target/debug/im-engine itself (or the binary
named by IM_ENGINE_BIN) on a free loopback port, with no logic tier. The engine replies to a
HEARTBEAT sent before sign-in with NOT_SIGNED_IN on its own.
"""

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidMessage

import imclient as im
from imclient import pb

REPO = Path(__file__).resolve().parents[2]
ENGINE_BIN = Path(os.environ.get("IM_ENGINE_BIN", REPO / "target" / "debug" / "im-engine"))
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed P-256 certificate for localhost and its key, and return both paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def wait_until_listening(port: int, engine: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert engine.poll() is None, f"im-engine exited with {engine.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"im-engine did not listen on port {port} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory):
    """Start a wss:// engine and yield (port, certificate path)."""
    if not ENGINE_BIN.exists():
        pytest.skip(f"{ENGINE_BIN} not built: run cargo build -p im-engine")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    port = free_port()
    env = dict(
        os.environ,
        IM_ENGINE_WS_ADDR=f"127.0.0.1:{port}",
        IM_ENGINE_GRPC_ADDR=f"127.0.0.1:{free_port()}",
        IM_ENGINE_METRICS_ADDR="",
        IM_ENGINE_SHARDS="1",
        IM_ENGINE_LOGIC_URL=f"http://127.0.0.1:{free_port()}",
        IM_ENGINE_TLS_CERT_FILE=str(cert),
        IM_ENGINE_TLS_KEY_FILE=str(key),
    )
    env.pop("IM_CONFIG", None)
    # The engine rejects every IM_ENGINE_* variable that is not a setting.
    env.pop("IM_ENGINE_BIN", None)
    engine = subprocess.Popen([str(ENGINE_BIN), "--config", os.devnull], env=env)
    try:
        wait_until_listening(port, engine)
        yield port, cert
    finally:
        engine.terminate()
        engine.wait(timeout=10)


def wss_connect(port: int, context: ssl.SSLContext) -> ws_connect:
    return ws_connect(
        f"wss://127.0.0.1:{port}/ws",
        ssl=context,
        server_hostname="localhost",
        open_timeout=im.REPLY_TIMEOUT_S,
        close_timeout=im.REPLY_TIMEOUT_S,
        ping_interval=None,
        proxy=None,
    )


def test_wss_heartbeat_before_sign_in(tls_engine):
    port, cert = tls_engine

    async def scenario():
        context = ssl.create_default_context(cafile=str(cert))
        async with wss_connect(port, context) as ws:
            assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            reply = await im.heartbeat(ws, 5)
            im.assert_reply(reply, pb.HEARTBEAT, 5, pb.NOT_SIGNED_IN)

    im.run(scenario())


def test_wss_untrusted_certificate_fails(tls_engine):
    port, cert = tls_engine

    async def scenario():
        # The system's trust store, which does not contain the test certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with wss_connect(port, ssl.create_default_context()):
                pass
        async with wss_connect(port, ssl.create_default_context(cafile=str(cert))) as ws:
            reply = await im.heartbeat(ws, 6)
            im.assert_reply(reply, pb.HEARTBEAT, 6, pb.NOT_SIGNED_IN)

    im.run(scenario())


def test_plain_ws_against_wss_fails(tls_engine):
    port, _ = tls_engine

    async def scenario():
        # The engine replies to a plain HTTP request with a TLS alert at most, never with HTTP.
        with pytest.raises(InvalidMessage):
            async with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=im.REPLY_TIMEOUT_S, proxy=None):
                pass

    im.run(scenario())
