"""Bad input gets the protocol's error reply or close code, and never harms other clients."""

from __future__ import annotations

import socket

import pytest
import trio

from channels import Endpoint
from tests.support.client import RawClient, connect


async def _alive(c: RawClient, ref: str) -> None:
    await c.send(None, ref, "phoenix", "heartbeat", {})
    while (m := await c.recv())[1] != ref:
        assert m[3] != "phx_reply"


@pytest.mark.parametrize("frame, code", [
    ("not json", 1007),
    ('{"an": "object"}', 1007),             # V2 wants an array
    ('["11", "1", "room:x"]', 1007),         # too short
    ('[null, "1", 42, "ev", {}]', 1007),     # topic must be a string
    (b"\x07garbage", 1007),                  # unknown binary kind
    (b"\x00\xff\xff\xff\xff", 1007),         # lengths past the end
])
async def test_malformed_frames_close_only_that_connection(
    endpoint: Endpoint, frame: str | bytes, code: int
) -> None:
    async with connect(endpoint.port) as bystander, connect(endpoint.port) as bad:  # type: ignore[attr-defined]
        await bystander.join("room:calm", "1", "1")
        await bad.send_raw(frame)
        assert await bad.closed() == code
        await _alive(bystander, "2")


async def test_oversize_message_closes_1009(endpoint: Endpoint) -> None:
    async with connect(endpoint.port) as bystander, connect(endpoint.port) as bad:  # type: ignore[attr-defined]
        await bad.send(None, "1", "room:x", "echo", {"blob": "x" * (65 * 1024)})
        assert await bad.closed() == 1009
        await _alive(bystander, "1")


async def test_non_object_payloads_get_an_error_reply(endpoint: Endpoint) -> None:
    async with connect(endpoint.port) as c:  # type: ignore[attr-defined]
        for i, payload in enumerate([[1, 2], "text", 42, None], 1):
            await c.send("11", str(i), "room:x", "phx_join", payload)
            assert await c.recv() == ["11", str(i), "room:x", "phx_reply",
                                      {"status": "error", "response": {"reason": "invalid payload"}}]
        await c.join("room:x", "11", "9")
        await c.send("11", "10", "room:x", "echo", ["not", "an", "object"])
        assert await c.recv_until("phx_reply") == ["11", "10", "room:x", "phx_reply", {
            "status": "error", "response": {"reason": "invalid payload"}}]


async def test_unknown_event_gets_error_reply(endpoint: Endpoint) -> None:
    async with connect(endpoint.port) as c:  # type: ignore[attr-defined]
        await c.join("room:u", "11", "1")
        await c.send("11", "2", "room:u", "no_such_event", {})
        assert await c.recv_until("phx_reply") == ["11", "2", "room:u", "phx_reply", {
            "status": "error", "response": {"reason": "unhandled event"}}]


async def _http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        with trio.fail_after(5):
            while data := await stream.receive_some():
                chunks.append(data)
    return b"".join(chunks)


async def test_plain_get_on_websocket_path_is_400(endpoint: Endpoint) -> None:
    resp = await _http(endpoint.port, b"GET /socket/websocket HTTP/1.1\r\nhost: x\r\n"  # type: ignore[attr-defined]
                       b"connection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 ")
    assert b"'connection' header must contain 'upgrade'" in resp


async def test_healthz_and_404(endpoint: Endpoint) -> None:
    resp = await _http(endpoint.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n"  # type: ignore[attr-defined]
                       b"connection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"ok\n")
    resp = await _http(endpoint.port, b"GET /nothing HTTP/1.1\r\nhost: x\r\n"  # type: ignore[attr-defined]
                       b"connection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 404 ")


async def test_garbage_http_gets_400_and_server_lives(endpoint: Endpoint) -> None:
    resp = await _http(endpoint.port, b"\x16\x03\x01 definitely not http\r\n\r\n")  # type: ignore[attr-defined]
    assert resp.startswith(b"HTTP/1.1 400 ")
    async with connect(endpoint.port) as c:  # type: ignore[attr-defined]
        await _alive(c, "1")


async def test_keep_alive_serves_several_requests(endpoint: Endpoint) -> None:
    resp = await _http(endpoint.port,  # type: ignore[attr-defined]
                       b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
                       b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert resp.count(b"HTTP/1.1 200 ") == 2


async def test_abrupt_disconnect_mid_frame(endpoint: Endpoint) -> None:
    sock = socket.create_connection(("127.0.0.1", endpoint.port))  # type: ignore[attr-defined]
    sock.sendall(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
                 b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"sec-websocket-version: 13\r\n\r\n\x81\xfe\x10\x00abcd")  # a frame cut short
    sock.close()
    async with connect(endpoint.port) as c:  # type: ignore[attr-defined]
        await _alive(c, "1")


async def test_nul_byte_in_path_is_404(endpoint: Endpoint) -> None:
    endpoint.static = {"/": __import__("pathlib").Path(__file__).parent}
    resp = await _http(endpoint.port, b"GET /%00 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")  # type: ignore[attr-defined]
    assert resp.startswith(b"HTTP/1.1 404 ")
