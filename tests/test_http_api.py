"""The HTTP API (channels/api.py): broadcast, disconnect, presence and history over HTTP with
API keys; refusals with clear statuses that affect nothing else. In-process endpoints over
real sockets, and a two-node cluster on a private redis-server (``trio-channels serve`` with
``TRIO_CHANNELS_API_KEYS``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import pytest
import trio

from channels import Endpoint
from channels.api import parse_api_keys
from tests.cluster.redis_server import RedisServer
from tests.support.api_app import make_endpoint
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second-key-zyxwvutsrqponm"


# -- an HTTP client that shows what went over the wire ----------------------------------------

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HttpConn:
    """One keep-alive HTTP/1.1 connection (h11 as the client)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      key: str | None = KEY, headers: list[tuple[str, str]] | None = None,
                      timeout: float = 10) -> Response:
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
        hdrs = [("host", "test")]
        if key is not None:
            hdrs.append(("authorization", f"Bearer {key}"))
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        hdrs.extend(headers or [])
        data = self.h.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if body:
            data += self.h.send(h11.Data(data=body)) or b""
        data += self.h.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        return await self.response(timeout)

    async def response(self, timeout: float = 10) -> Response:
        status, headers, chunks = 0, {}, []
        with trio.fail_after(timeout):
            while True:
                event = self.h.next_event()
                if event is h11.NEED_DATA:
                    self.h.receive_data(await self.stream.receive_some())
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return Response(status, headers, b"".join(chunks))

    async def closed_by_server(self, timeout: float = 5) -> bool:
        with trio.fail_after(timeout):
            try:
                return await self.stream.receive_some() == b""
            except trio.BrokenResourceError:
                return True


@asynccontextmanager
async def http(port: int) -> AsyncIterator[HttpConn]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield HttpConn(stream)
    finally:
        await stream.aclose()


async def call(port: int, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    async with http(port) as conn:
        return await conn.request(method, path, raw, **kwargs)


async def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` as is and read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    with trio.fail_after(timeout):
        await stream.send_all(data)
        try:
            while chunk := await stream.receive_some():
                received += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return received


async def assert_quiet(client: RawClient) -> None:
    """Nothing was pushed to ``client`` and its connection works: the next message it gets is
    the reply to a heartbeat sent now."""
    await client.send(None, "hb", "phoenix", "heartbeat", {})
    msg = await client.recv()
    assert msg[1:4] == ["hb", "phoenix", "phx_reply"], msg


@pytest.fixture
async def api_endpoint(nursery: trio.Nursery) -> AsyncIterator[Endpoint]:
    ep = make_endpoint(api_keys=[KEY, OTHER_KEY])
    ep.port = await nursery.start(ep.serve, "127.0.0.1", 0)  # type: ignore[attr-defined]
    yield ep


def port_of(ep: Endpoint) -> int:
    return ep.port  # type: ignore[attr-defined, no-any-return]


# -- configuration -------------------------------------------------------------------------------

def test_api_keys_are_validated() -> None:
    assert parse_api_keys(f" {KEY} , {OTHER_KEY},{KEY}") == [KEY, OTHER_KEY]
    with pytest.raises(ValueError, match="at least 16 characters"):
        parse_api_keys("short")
    with pytest.raises(ValueError, match="visible ASCII"):
        parse_api_keys([KEY + " x"])
    with pytest.raises(ValueError, match="at least 16"):
        Endpoint({}, api_keys=["0123456789"])
    with pytest.raises(ValueError, match="prefix"):
        Endpoint({}).enable_api([KEY], prefix="/api/")


async def test_off_by_default(nursery: trio.Nursery) -> None:
    ep = make_endpoint()
    assert ep.api is None
    port = await nursery.start(ep.serve, "127.0.0.1", 0)
    async with connect(port, query="user=ada") as ada:
        await ada.join("plain:lobby", "1", "1")
        response = await call(port, "POST", "/api/broadcast",
                              {"topic": "plain:lobby", "event": "x", "payload": {}})
        assert response.status == 404
        await assert_quiet(ada)


# -- refusals --------------------------------------------------------------------------------------

async def test_missing_or_wrong_keys_are_refused_with_401(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    body = json.dumps({"topic": "plain:t", "event": "x", "payload": {}}).encode()
    async with connect(port, query="user=ada") as ada:
        await ada.join("plain:t", "1", "1")
        async with http(port) as conn:
            for key, headers in [
                (None, []),
                ("wrong-key-0123456789abcdef", []),
                (KEY + "x", []),
                (KEY[:-1], []),
                (None, [("authorization", f"Basic {KEY}")]),
                (None, [("authorization", KEY)]),
                (None, [("authorization", "Bearer")]),
            ]:
                response = await conn.request("POST", "/api/broadcast", body, key=key,
                                              headers=headers)
                assert response.status == 401, (key, headers)
                assert response.json == {
                    "error": "missing or wrong API key (Authorization: Bearer <key>)"}
                assert response.headers["www-authenticate"] == 'Bearer realm="trio-channels"'
                assert "connection" in response.headers  # the unread body ends it
                assert await conn.closed_by_server()
                await conn.stream.aclose()
                conn = HttpConn(await trio.open_tcp_stream("127.0.0.1", port))
            # Without a key, even unknown routes and GETs say 401 (nothing is revealed).
            for method, path in [("GET", "/api/presence?topic=x"), ("GET", "/api/nope"),
                                 ("GET", "/api")]:
                response = await conn.request(method, path, key=None)
                assert response.status == 401
            # Both configured keys work (rotation), on the same connection.
            for key in (KEY, OTHER_KEY):
                response = await conn.request("POST", "/api/broadcast", body, key=key)
                assert response.status == 200, response.body
                assert (await ada.recv())[3:] == ["x", {}]
            await conn.stream.aclose()
        await assert_quiet(ada)
    assert api_endpoint.api is not None
    assert api_endpoint.api.responses[401] == 10


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "the request body is not valid JSON: "),
    (b"", "the request body is empty: send a JSON object"),
    (b"   ", "the request body is empty: send a JSON object"),
    (b"[1, 2]", "the request body must be a JSON object"),
    (b'"topic"', "the request body must be a JSON object"),
    (b'{"event": "x", "payload": {}}', "missing field 'topic'"),
    (b'{"topic": "plain:t", "payload": {}}', "missing field 'event'"),
    (b'{"topic": "plain:t", "event": "x", "paylod": {}}',
     "unknown field 'paylod' (expected 'topic', 'event', 'payload')"),
    (b'{"topic": "plain:t", "event": "x", "payload": [1]}', "'payload' must be a JSON object"),
    (b'{"topic": "plain:t", "event": "x", "payload": "hi"}', "'payload' must be a JSON object"),
    (b'{"topic": 7, "event": "x"}', "'topic' must be a non-empty string"),
    (b'{"topic": "", "event": "x"}', "'topic' must be a non-empty string"),
    (b'{"topic": "plain:t", "event": null}', "'event' must be a non-empty string"),
    (b'{"topic": "phx_history", "event": "m", "payload": {}}',
     "topics starting with 'phx_' are the runtime's own"),
    (b'{"topic": "plain:t", "event": "x", "payload": {"a": "\\ud800"}}',
     "the request body is not valid JSON: "),
    (b"\xff\xfe{}", "the request body is not valid JSON: "),
    (b"[" * 100_000 + b"]" * 100_000, "the request body is not valid JSON: "),
])
async def test_bad_json_and_fields_are_refused_with_400(
        api_endpoint: Endpoint, body: bytes, reason: str) -> None:
    port = port_of(api_endpoint)
    async with connect(port, query="user=ada") as ada:
        await ada.join("plain:t", "1", "1")
        async with http(port) as conn:
            response = await conn.request("POST", "/api/broadcast", body)
            assert response.status == 400
            error = response.json["error"]
            assert error.startswith(reason) if reason.endswith(": ") else error == reason
            # The body was read: the connection goes on.
            assert "connection" not in response.headers
            response = await conn.request("GET", "/api/presence?topic=room:x")
            assert response.status == 200
        await assert_quiet(ada)


async def test_disconnect_fields_are_checked(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    for body, reason in [({}, "missing field 'id'"), ({"id": 3}, "'id' must be a non-empty string"),
                         ({"id": "phx_relay"}, "topics starting with 'phx_' are the runtime's own"),
                         ({"id": "a", "x": 1}, "unknown field 'x' (expected 'id')")]:
        response = await call(port, "POST", "/api/disconnect", body)
        assert (response.status, response.json) == (400, {"error": reason})


async def test_oversized_bodies_are_refused_with_413(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    api = api_endpoint.api
    assert api is not None
    api.max_body = 1000
    auth = f"authorization: Bearer {KEY}\r\n".encode()
    big = json.dumps({"topic": "plain:t", "event": "x", "payload": {"a": "y" * 2000}}).encode()
    async with connect(port, query="user=ada") as ada:
        await ada.join("plain:t", "1", "1")
        # Content-Length over the limit: refused before reading, the body is read and dropped
        # (lingering close) so the response arrives intact.
        out = await raw_exchange(port, b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" + auth +
                                 b"content-length: %d\r\n\r\n" % len(big) + big)
        assert out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out
        assert out.endswith(b'{"error":"request body larger than 1000 bytes"}')
        assert b"connection: close\r\n" in out
        # A much larger body (MBs) still gets its 413, not a reset.
        huge = b"x" * (3 << 20)
        out = await raw_exchange(port, b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" + auth +
                                 b"content-length: %d\r\n\r\n" % len(huge) + huge)
        assert out.startswith(b"HTTP/1.1 413 "), out[:100]
        # Chunked: counted while reading.
        chunks = b"".join(b"%x\r\n%s\r\n" % (300, b"y" * 300) for _ in range(5)) + b"0\r\n\r\n"
        out = await raw_exchange(port, b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" + auth +
                                 b"transfer-encoding: chunked\r\n\r\n" + chunks)
        assert out.startswith(b"HTTP/1.1 413 "), out
        # Expect: 100-continue: refused at once, no 100 Continue, the body is never sent.
        async with http(port) as conn:
            await conn.stream.send_all(
                b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" + auth +
                b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(big))
            with trio.fail_after(5):
                head = await conn.stream.receive_some()
            assert head.startswith(b"HTTP/1.1 413 "), head
        await assert_quiet(ada)
        # At the limit it is accepted.
        body = json.dumps({"topic": "plain:t", "event": "x", "payload": {}}).encode()
        body += b" " * (1000 - len(body))
        response = await call(port, "POST", "/api/broadcast", body)
        assert response.status == 200
        assert (await ada.recv())[3:] == ["x", {}]
    assert api.responses[413] == 4


async def test_100_continue_and_chunked_bodies_work(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    body = json.dumps({"topic": "plain:t", "event": "x", "payload": {"n": 1}}).encode()
    async with connect(port, query="user=ada") as ada, http(port) as conn:
        await ada.join("plain:t", "1", "1")
        await conn.stream.send_all(
            b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" +
            f"authorization: Bearer {KEY}\r\n".encode() +
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body))
        with trio.fail_after(5):
            received = await conn.stream.receive_some()
        assert received == b"HTTP/1.1 100 Continue\r\n\r\n"
        await conn.stream.send_all(body)
        received = b""
        with trio.fail_after(5):
            while not received.endswith(b'{"ok":true}'):
                received += await conn.stream.receive_some()
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (await ada.recv())[3:] == ["x", {"n": 1}]
        # A chunked body, then another request on the same connection.
        async with http(port) as chunked:
            hdrs = [("host", "t"), ("authorization", f"Bearer {KEY}"),
                    ("transfer-encoding", "chunked")]
            data = chunked.h.send(h11.Request(method="POST", target="/api/broadcast",
                                              headers=hdrs)) or b""
            for part in (body[:10], body[10:]):
                data += chunked.h.send(h11.Data(data=part)) or b""
            data += chunked.h.send(h11.EndOfMessage()) or b""
            await chunked.stream.send_all(data)
            assert (await chunked.response()).status == 200
            assert (await chunked.request("GET", "/api/presence?topic=room:x")).status == 200
        assert (await ada.recv())[3:] == ["x", {"n": 1}]


async def test_slow_bodies_get_408(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    assert api_endpoint.api is not None
    api_endpoint.api.body_timeout = 0.3
    out = await raw_exchange(port, b"POST /api/broadcast HTTP/1.1\r\nhost: t\r\n" +
                             f"authorization: Bearer {KEY}\r\n".encode() +
                             b"content-length: 50\r\n\r\n{\"topic\"")
    assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
    assert out.endswith(b'{"error":"the request body did not arrive within 0.3s"}')


async def test_unknown_routes_404_and_wrong_methods_405(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    async with http(port) as conn:
        for method, path, status, allow in [
            ("GET", "/api/nope", 404, None),
            ("GET", "/api", 404, None),
            ("GET", "/api/", 404, None),
            ("GET", "/api/broadcast/x", 404, None),
            ("GET", "/api/broadcast", 405, "POST"),
            ("PUT", "/api/disconnect", 405, "POST"),
            ("POST", "/api/presence?topic=x", 405, "GET"),
            ("DELETE", "/api/history?topic=x", 405, "GET"),
            ("HEAD", "/api/presence?topic=x", 405, "GET"),
        ]:
            response = await conn.request(method, path)
            assert response.status == status, (method, path)
            if method != "HEAD":
                assert "error" in response.json
            assert response.headers.get("allow") == allow
            assert response.headers["content-type"] == "application/json"
    # Outside the prefix, nothing changed.
    assert (await call(port, "GET", "/apix")).status == 404
    assert (await call(port, "GET", "/healthz")).body == b"ok\n"


async def test_query_parameters_are_checked(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    for path, reason in [
        ("/api/presence", "missing query parameter 'topic'"),
        ("/api/presence?topic=", "missing query parameter 'topic'"),
        ("/api/presence?topic=x&since=1", "unknown query parameter 'since' (expected 'topic')"),
        ("/api/history?topic=feed:a&since=-1", "'since' must be a whole number"),
        ("/api/history?topic=feed:a&since=x", "'since' must be a whole number"),
        ("/api/history?topic=feed:a&limit=0", "'limit' must be between 1 and 50"),
        ("/api/history?topic=feed:a&limit=51", "'limit' must be between 1 and 50"),
        ("/api/history?topic=%ff", "the query string is not valid UTF-8"),
    ]:
        response = await call(port, "GET", path)
        assert (response.status, response.json) == (400, {"error": reason}), path
    response = await call(port, "GET", "/api/history?topic=plain:a")
    assert (response.status, response.json) == (
        404, {"error": "no history for 'plain:a': its channel declares none"})


# -- what it does ----------------------------------------------------------------------------------

async def test_broadcast_reaches_clients(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    async with connect(port, query="user=ada") as ada, \
            connect(port, query="user=bob", vsn="1.0.0") as bob:
        await ada.join("plain:t", "1", "1")
        await bob.join("plain:t", "1", "1")
        payload = {"text": "hello", "big": 2**70, "nested": {"list": [1, None, True]}}
        response = await call(port, "POST", "/api/broadcast",
                              {"topic": "plain:t", "event": "news", "payload": payload})
        assert (response.status, response.json) == (200, {"ok": True})
        assert (await ada.recv())[2:] == ["plain:t", "news", payload]
        assert (await bob.recv())[2:] == ["plain:t", "news", payload]
        # payload defaults to {}
        assert (await call(port, "POST", "/api/broadcast",
                           {"topic": "plain:t", "event": "ping"})).status == 200
        assert (await ada.recv())[3:] == ["ping", {}]


async def test_disconnect_closes_the_users_sockets(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    async with connect(port, query="user=ada") as ada1, connect(port, query="user=ada") as ada2, \
            connect(port, query="user=bob") as bob:
        for client in (ada1, ada2, bob):
            await client.join("plain:t", "1", "1")
        response = await call(port, "POST", "/api/disconnect", {"id": "user_socket:ada"})
        assert (response.status, response.json) == (200, {"ok": True})
        assert await ada1.closed() == 1001
        assert await ada2.closed() == 1001
        await assert_quiet(bob)


async def test_presence_lists_a_topic(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    async with connect(port, query="user=ada") as ada, connect(port, query="user=bob") as bob:
        await ada.join("room:lobby", "1", "1")
        await bob.join("room:lobby", "1", "1")
        await bob.recv_until("presence_state")
        response = await call(port, "GET", "/api/presence?topic=room%3Alobby")
        assert response.status == 200
        body = response.json
        assert body["topic"] == "room:lobby"
        assert sorted(body["presences"]) == ["ada", "bob"]
        meta = body["presences"]["ada"]["metas"][0]
        assert meta["node"] == "local" and meta["phx_ref"]
    empty = await call(port, "GET", "/api/presence?topic=room:empty")
    assert empty.json == {"topic": "room:empty", "presences": {}}


async def test_presence_404_without_presence(nursery: trio.Nursery) -> None:
    ep = Endpoint({}, api_keys=[KEY])
    port = await nursery.start(ep.serve, "127.0.0.1", 0)
    response = await call(port, "GET", "/api/presence?topic=x")
    assert (response.status, response.json) == (404, {"error": "this endpoint has no presence"})
    response = await call(port, "GET", "/api/history?topic=x")
    assert response.status == 404


async def test_history_is_read_and_bounded(api_endpoint: Endpoint) -> None:
    port = port_of(api_endpoint)
    async with connect(port, query="user=ada") as ada:
        await ada.join("feed:a", "1", "1")
        for n in range(1, 6):
            assert (await call(port, "POST", "/api/broadcast",
                               {"topic": "feed:a", "event": "msg", "payload": {"n": n}})).status == 200
            msg = await ada.recv()
            assert msg[3] == "msg" and msg[4]["n"] == n
            assert msg[4]["phx_pos"]["offset"] == n  # the API went through endpoint.broadcast
        epoch = msg[4]["phx_pos"]["epoch"]

        body = (await call(port, "GET", "/api/history?topic=feed:a")).json
        assert body["topic"] == "feed:a" and body["epoch"] == epoch and body["top"] == 5
        assert [(m["offset"], m["event"], m["payload"]) for m in body["messages"]] == [
            (n, "msg", {"n": n}) for n in range(1, 6)]
        assert all(isinstance(m["at"], float) for m in body["messages"])
        assert (body["complete"], body["more"]) == (True, False)

        body = (await call(port, "GET", f"/api/history?topic=feed:a&since=2&epoch={epoch}"
                                        "&limit=2")).json
        assert [m["offset"] for m in body["messages"]] == [3, 4]
        assert (body["complete"], body["more"]) == (True, True)
        body = (await call(port, "GET", "/api/history?topic=feed:a&since=5")).json
        assert (body["messages"], body["complete"], body["more"]) == ([], True, False)
        body = (await call(port, "GET", "/api/history?topic=feed:a&since=9")).json
        assert (body["complete"], body["reason"]) == (False, "position ahead of the history")
        # Another epoch's offsets mean nothing here: from the oldest, and said so.
        body = (await call(port, "GET", "/api/history?topic=feed:a&since=4&epoch=other")).json
        assert [m["offset"] for m in body["messages"]] == [1, 2, 3, 4, 5]
        assert (body["complete"], body["reason"]) == (False, "epoch changed")

        # Past retention (size 50): what is gone is said so.
        for n in range(6, 61):
            await api_endpoint.broadcast("feed:a", "msg", {"n": n})
        body = (await call(port, "GET", "/api/history?topic=feed:a&since=3&limit=50")).json
        assert [m["offset"] for m in body["messages"]] == list(range(11, 61))
        assert (body["complete"], body["reason"]) == (False, "position older than the history")
        body = (await call(port, "GET", "/api/history?topic=feed:a&since=58")).json
        assert [m["offset"] for m in body["messages"]] == [59, 60]
        assert body["complete"] is True
        # A topic with history but nothing yet.
        body = (await call(port, "GET", "/api/history?topic=feed:new")).json
        assert (body["top"], body["messages"], body["complete"]) == (0, [], True)


# -- a cluster, through trio-channels serve -------------------------------------------------------

@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def nodes(redis: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"TRIO_CHANNELS_API_KEYS": f"{KEY},{OTHER_KEY}"}
    a = ServerProcess("tests.support.api_app:make_endpoint", env=env,
                      args=["--redis-url", redis.url, "--node-name", "api-a"])
    b = ServerProcess("tests.support.api_app:make_endpoint", env=env,
                      args=["--redis-url", redis.url, "--node-name", "api-b"])
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            b.kill()
    finally:
        a.kill()


async def test_cluster_broadcast_history_presence_disconnect(
        nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    async with connect(b.port, query="user=ada") as ada, \
            connect(a.port, query="user=bob") as bob:
        assert (await ada.join("feed:c", "1", "1"))[4]["response"]["node"] == "api-b"
        await ada.join("room:c", "2", "2")
        await bob.join("room:c", "1", "1")
        # Through node A's API, to a client of node B, positioned once by the shared history.
        for n in (1, 2):
            response = await call(a.port, "POST", "/api/broadcast",
                                  {"topic": "feed:c", "event": "msg", "payload": {"n": n}})
            assert response.status == 200
        first, second = await ada.recv_until("msg"), await ada.recv_until("msg")
        assert [first[4]["n"], second[4]["n"]] == [1, 2]
        assert second[4]["phx_pos"]["offset"] == first[4]["phx_pos"]["offset"] + 1
        history = (await call(b.port, "GET", "/api/history?topic=feed:c")).json
        assert [m["payload"] for m in history["messages"]][-2:] == [{"n": 1}, {"n": 2}]
        assert history["epoch"] == first[4]["phx_pos"]["epoch"]
        # Presence of both nodes, from either.
        with trio.fail_after(10):
            while True:
                listed = (await call(a.port, "GET", "/api/presence?topic=room:c")).json
                if sorted(listed["presences"]) == ["ada", "bob"]:
                    break
                await trio.sleep(0.05)
        assert listed["presences"]["ada"]["metas"][0]["node"] == "api-b"
        # Disconnect through node A closes ada's socket on node B.
        response = await call(a.port, "POST", "/api/disconnect", {"id": "user_socket:ada"})
        assert response.status == 200
        assert await ada.closed() == 1001
        assert (await call(a.port, "GET", "/api/presence?topic=room:c",
                           key="nope-nope-nope-nope")).status == 401


def test_cli_refuses_bad_api_keys_without_printing_them() -> None:
    secret = "tooshort99"
    result = subprocess.run(
        [sys.executable, "-m", "channels.cli", "serve", "tests.support.api_app:make_endpoint",
         "--port", "0"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TRIO_CHANNELS_API_KEYS": secret},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "TRIO_CHANNELS_API_KEYS: an API key must be at least 16 characters" in result.stderr
    assert secret not in result.stderr + result.stdout


async def test_the_curl_examples_of_the_docs_work(api_endpoint: Endpoint) -> None:
    """Every ``curl`` command in docs/publishing.md's shell blocks runs against a node and
    gets a JSON answer that is not an error."""
    port = port_of(api_endpoint)
    text = (ROOT / "docs" / "publishing.md").read_text()
    commands: list[str] = []
    for block in text.split("```sh\n")[1:]:
        lines = block.split("```")[0].splitlines()
        current = ""
        for line in lines:
            if current or line.startswith("curl "):
                current += line.removesuffix("\\") + " "
                if not line.endswith("\\"):
                    commands.append(current)
                    current = ""
    assert len(commands) >= 4
    await api_endpoint.broadcast("feed:news", "story", {"title": "one"})
    async with connect(port, query="user=ada") as ada:
        await ada.join("room:lobby", "1", "1")
        for command in commands:
            result = await trio.run_process(
                ["bash", "-c", command], capture_stdout=True, capture_stderr=True, check=False,
                env={**os.environ, "NODE": f"http://127.0.0.1:{port}", "KEY": KEY})
            assert result.returncode == 0, (command, result.stderr)
            answer = json.loads(result.stdout)
            assert "error" not in answer, (command, answer)
        assert (await ada.recv_until("new_msg"))[4] == {"body": "hello from curl"}
