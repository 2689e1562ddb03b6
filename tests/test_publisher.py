"""The publisher (channels/publisher.py): broadcasts into a cluster through Redis from plain
threads and from asyncio, with no trio loop. Real node processes on a private redis-server,
raw WebSocket clients receiving."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from channels.publisher import (
    AsyncPublisher,
    NoNodeAvailable,
    Publisher,
    PublishError,
    _parse_reply,
    _parse_url,
)
from channels.redis import MODE_EXCEPT, decode_envelope
from tests.cluster.redis_server import RedisServer
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess

APP = "tests.support.api_app:make_endpoint"
KEY = "test-key-0123456789abcdef"


def node(redis: RedisServer, name: str) -> ServerProcess:
    return ServerProcess(APP, env={"TRIO_CHANNELS_API_KEYS": KEY},
                         args=["--redis-url", redis.url, "--node-name", name])


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def nodes(redis: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = node(redis, "pub-a"), node(redis, "pub-b")
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            b.kill()
    finally:
        a.kill()


async def receive(client: RawClient, event: str, count: int, timeout: float = 20) -> list[Any]:
    """The next ``count`` ``event`` messages' payloads (other events skipped)."""
    out = []
    with trio.fail_after(timeout):
        while len(out) < count:
            msg = await client.recv(timeout)
            if msg[3] == event:
                out.append(msg[4])
    return out


async def assert_quiet(client: RawClient) -> None:
    await client.send(None, "hb", "phoenix", "heartbeat", {})
    msg = await client.recv()
    assert msg[1:4] == ["hb", "phoenix", "phx_reply"], msg


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` plain threads at once; returns what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def target(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def http_get_json(port: int, path: str) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
                     "connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    return json.loads(body)


async def wait_ready(port: int, timeout: float = 15) -> None:
    """Until the node says it is linked to Redis again (/readyz 200)."""
    with trio.fail_after(timeout):
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            await stream.aclose()
            if data.startswith(b"HTTP/1.1 200 "):
                return
            await trio.sleep(0.05)


# -- pure parts -------------------------------------------------------------------------------------

def test_urls() -> None:
    t = _parse_url("redis://127.0.0.1:6390")
    assert (t.host, t.port, t.db, t.password, t.username, t.tls, t.path) == \
        ("127.0.0.1", 6390, 0, None, None, False, None)
    t = _parse_url("rediss://app:p%40ss@redis.example.com/3")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == \
        ("redis.example.com", 6379, 3, "app", "p@ss", True)
    t = _parse_url("redis://:secret@h:1?db=2")
    assert (t.username, t.password, t.db) == (None, "secret", 2)
    t = _parse_url("unix:///run/redis.sock?db=4")
    assert (t.path, t.db) == ("/run/redis.sock", 4)
    with pytest.raises(ValueError, match="not a Redis URL"):
        Publisher("http://x")
    with pytest.raises(ValueError, match="not a number"):
        Publisher("redis://h/zero")


def test_reply_parser() -> None:
    def parse(data: bytes) -> Any:
        parser = _parse_reply()
        want = next(parser)
        try:
            while True:
                if want < 0:
                    line, _, data = data.partition(b"\r\n")
                    want = parser.send(line + b"\r\n")
                else:
                    chunk, data = data[:want], data[want:]
                    want = parser.send(chunk)
        except StopIteration as done:
            return done.value

    assert parse(b":3\r\n") == 3
    assert parse(b"+OK\r\n") == b"OK"
    assert parse(b"$5\r\nh\r\nlo\r\n") == b"h\r\nlo"
    assert parse(b"$-1\r\n") is None
    assert parse(b"*2\r\n$1\r\n0\r\n*2\r\n$3\r\nabc\r\n:1\r\n") == [b"0", [b"abc", 1]]
    assert str(parse(b"-ERR no\r\n")) == "ERR no"


def test_bad_payloads_are_refused_before_any_io() -> None:
    publisher = Publisher("redis://127.0.0.1:1", connect_timeout=0.5)
    with pytest.raises(TypeError, match="payload must be a dict"):
        publisher.broadcast("t", "e", [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be encoded"):
        publisher.broadcast("t", "e", {"s": {1, 2}})
    with pytest.raises(TypeError, match="cannot be encoded"):
        publisher.broadcast("t", "e", {"n": 2**70})
    with pytest.raises(ValueError, match="topic"):
        publisher.broadcast("", "e", {})
    with pytest.raises(ValueError, match="event"):
        publisher.broadcast("t", "", {})
    with pytest.raises(ValueError, match="runtime's own"):
        publisher.broadcast("phx_presence:presence_shard0", "e", {})
    with pytest.raises(ValueError, match="nothing to publish"):
        publisher.broadcast_many([])
    assert publisher.stats()["connects"] == 0
    with pytest.raises(PublishError, match=r"cannot connect to Redis at 127\.0\.0\.1:1"):
        publisher.broadcast("t", "e", {})
    assert publisher.stats()["errors"] == 1


# -- against Redis alone -----------------------------------------------------------------------------

class RawRedis:
    """A raw Redis connection to look at what the publisher sends."""

    def __init__(self, port: int, password: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")
        if password:
            assert self.call("AUTH", password) == b"OK"

    def call(self, *args: str) -> Any:
        self._send(*args)
        return self.read()

    def _send(self, *args: str) -> None:
        self.sock.sendall(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))

    def read(self) -> Any:
        parser = _parse_reply()
        want = next(parser)
        try:
            while True:
                want = parser.send(self.file.readline() if want < 0 else self.file.read(want))
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_envelope_auth_and_db() -> None:
    with RedisServer() as server:
        assert server.command("CONFIG", "SET", "requirepass", "s3cret") == b"OK"
        sub = RawRedis(server.port, password="s3cret")
        admin = RawRedis(server.port, password="s3cret")
        assert sub.call("SUBSCRIBE", "ns1:bc")[0] == b"subscribe"
        try:
            publisher = Publisher(f"redis://:s3cret@127.0.0.1:{server.port}/2",
                                  namespace="ns1")
            assert publisher.broadcast("room:1", "hi", {"a": [1, "x"]}) == 1
            assert publisher.broadcast_many([("room:1", "one", {}),
                                             ("room:2", "two", b"\x00bin")]) == 1
            kind, channel, data = sub.read()
            assert (kind, channel) == (b"message", b"ns1:bc")
            envelope = decode_envelope(data, skip_sender="node-a")  # a node decodes it
            assert (envelope.sender, envelope.mode, envelope.target) == \
                (publisher.name, MODE_EXCEPT, publisher.name)
            assert envelope.messages == [("room:1", "hi", {"a": [1, "x"]})]
            envelope = decode_envelope(sub.read()[2], skip_sender="node-a")
            assert envelope.messages == [("room:1", "one", {}), ("room:2", "two", b"\x00bin")]
            # The connection selected database 2 and says who it is.
            clients = admin.call("CLIENT", "LIST")
            mine = [line for line in clients.decode().splitlines()
                    if f"name={publisher.name} " in line]
            assert len(mine) == 1 and " db=2 " in mine[0]
            assert publisher.stats() == {"published": 3, "publish_calls": 2, "connects": 1,
                                         "errors": 0, "relay_node": None}
            publisher.close()

            wrong = Publisher(f"redis://:nope@127.0.0.1:{server.port}")
            with pytest.raises(PublishError, match="Redis refused AUTH"):
                wrong.broadcast("t", "e", {})
            with pytest.raises(NoNodeAvailable, match="no live trio-channels node"):
                Publisher(f"redis://:s3cret@127.0.0.1:{server.port}", relay=True) \
                    .broadcast("t", "e", {})
        finally:
            sub.close()
            admin.close()


# -- into a cluster ----------------------------------------------------------------------------------

async def test_threads_share_one_publisher(redis: RedisServer,
                                           nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    threads, each = 8, 50
    publisher = Publisher(redis.url)
    results: list[int] = []
    async with connect(a.port, query="user=ada") as ada, \
            connect(b.port, query="user=bob") as bob:
        await ada.join("plain:threads", "1", "1")
        await bob.join("plain:threads", "1", "1")

        def work(t: int) -> None:
            for i in range(each):
                results.append(publisher.broadcast("plain:threads", "msg", {"t": t, "i": i}))

        got: dict[str, list[Any]] = {}

        async def collect(name: str, client: RawClient) -> None:
            got[name] = await receive(client, "msg", threads * each)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "ada", ada)
            nursery.start_soon(collect, "bob", bob)
            assert await trio.to_thread.run_sync(run_threads, threads, work) == []
        for messages in got.values():
            assert len(messages) == threads * each
            for t in range(threads):  # every message once, each thread's in its order
                assert [m["i"] for m in messages if m["t"] == t] == list(range(each))
        assert results == [2] * (threads * each)  # both nodes were subscribed
        assert publisher.stats()["connects"] == 1
        await assert_quiet(ada)
    publisher.close()


async def test_disconnect_closes_the_users_sockets_on_every_node(
        redis: RedisServer, nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    with Publisher(redis.url) as publisher:
        async with connect(a.port, query="user=eve") as eve_a, \
                connect(b.port, query="user=eve") as eve_b, \
                connect(a.port, query="user=bob") as bob:
            for client in (eve_a, eve_b, bob):
                await client.join("plain:d", "1", "1")
            assert await trio.to_thread.run_sync(publisher.disconnect, "user_socket:eve") == 2
            assert await eve_a.closed() == 1001
            assert await eve_b.closed() == 1001
            await assert_quiet(bob)


async def test_history_topics_need_the_relay(
        redis: RedisServer, nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    relayed = Publisher(redis.url, relay=True)
    direct = Publisher(redis.url)
    threads, each = 4, 10
    async with connect(a.port, query="user=ada") as ada, \
            connect(b.port, query="user=bob") as bob:
        await ada.join("feed:relay", "1", "1")
        await bob.join("feed:relay", "1", "1")

        def work(t: int) -> None:
            for i in range(each):
                assert relayed.broadcast("feed:relay", "msg", {"t": t, "i": i}) == 1

        got: dict[str, list[Any]] = {}

        async def collect(name: str, client: RawClient) -> None:
            got[name] = await receive(client, "msg", threads * each)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "ada", ada)
            nursery.start_soon(collect, "bob", bob)
            assert await trio.to_thread.run_sync(run_threads, threads, work) == []
        # Positioned by one node, stored once: offsets 1..40, in order on both nodes.
        for messages in got.values():
            assert [m["phx_pos"]["offset"] for m in messages] == list(range(1, 41))
            for t in range(threads):
                assert [m["i"] for m in messages if m["t"] == t] == list(range(each))
        assert relayed.stats()["relay_node"] in ("pub-a", "pub-b")
        history = await trio.to_thread.run_sync(http_get_json, b.port,
                                                "/api/history?topic=feed:relay")
        assert history["top"] == 40 and len(history["messages"]) == 40
        assert history["messages"][0]["payload"] == {
            k: v for k, v in got["ada"][0].items() if k != "phx_pos"}

        # Straight to the nodes (relay=False): delivered, but without a position, not stored.
        assert await trio.to_thread.run_sync(direct.broadcast, "feed:relay", "msg",
                                             {"direct": True}) == 2
        for client in (ada, bob):
            assert (await receive(client, "msg", 1))[0] == {"direct": True}
        history = await trio.to_thread.run_sync(http_get_json, a.port,
                                                "/api/history?topic=feed:relay&since=40")
        assert (history["top"], history["messages"]) == (40, [])
    relayed.close()
    direct.close()


async def test_asyncio_publisher(redis: RedisServer,
                                 nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    tasks, each = 5, 20

    async def main() -> dict[str, Any]:
        async with AsyncPublisher(redis.url) as publisher, \
                AsyncPublisher(redis.url, relay=True) as relayed:
            async def work(t: int) -> list[int]:
                return [await publisher.broadcast("plain:aio", "msg", {"t": t, "i": i})
                        for i in range(each)]

            results = await asyncio.gather(*(work(t) for t in range(tasks)))
            # Redis drops the idle connection: noticed (EOF) and replaced before the next use.
            clients = redis.command("CLIENT", "LIST")
            assert isinstance(clients, bytes)
            ids = [line.split()[0].partition("=")[2] for line in clients.decode().splitlines()
                   if f"name={publisher.name} " in line]
            assert redis.command("CLIENT", "KILL", "ID", ids[0]) == 1
            reader = publisher._reader
            assert reader is not None
            for _ in range(500):  # until the close reached us (as an idle timeout's would)
                if reader.at_eof():
                    break
                await asyncio.sleep(0.01)
            results.append([await publisher.broadcast("plain:aio", "msg", {"t": tasks, "i": 0})])
            positioned = [await relayed.broadcast("feed:aio", "msg", {"i": i})
                          for i in range(3)]
            closed = await publisher.disconnect("user_socket:zed")
            return {"results": results, "positioned": positioned, "closed": closed,
                    "stats": publisher.stats()}

    async with connect(a.port, query="user=ada") as ada, \
            connect(b.port, query="user=zed") as zed:
        await ada.join("plain:aio", "1", "1")
        await ada.join("feed:aio", "2", "2")
        await zed.join("plain:aio", "1", "1")
        got: dict[str, list[Any]] = {}

        async def collect(name: str, client: RawClient) -> None:
            got[name] = await receive(client, "msg", tasks * each + 1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "ada", ada)
            nursery.start_soon(collect, "zed", zed)
            out = await trio.to_thread.run_sync(asyncio.run, main())
        assert out["results"] == [[2] * each] * tasks + [[2]]
        assert out["positioned"] == [1, 1, 1]
        assert out["closed"] == 2
        assert out["stats"]["connects"] == 2
        for messages in got.values():
            for t in range(tasks):
                assert [m["i"] for m in messages if m["t"] == t] == list(range(each))
        feed = await receive(ada, "msg", 3)
        assert [(m["i"], m["phx_pos"]["offset"]) for m in feed] == [(0, 1), (1, 2), (2, 3)]
        assert await zed.closed() == 1001


async def test_reconnects_after_redis_restarts_or_drops_the_connection() -> None:
    with RedisServer() as redis:
        server = node(redis, "solo")
        server.start()
        publisher = Publisher(redis.url, connect_timeout=1.0)
        try:
            async with connect(server.port, query="user=ada") as ada:
                await ada.join("plain:r", "1", "1")

                def publish(n: int) -> int:
                    return publisher.broadcast("plain:r", "msg", {"n": n})

                assert await trio.to_thread.run_sync(publish, 1) == 1
                # Redis closes our connection (as on an idle timeout): replaced before use.
                clients = redis.command("CLIENT", "LIST")
                assert isinstance(clients, bytes)
                ids = [line.split()[0].partition("=")[2] for line in clients.decode().splitlines()
                       if f"name={publisher.name} " in line]
                assert redis.command("CLIENT", "KILL", "ID", ids[0]) == 1
                conn = publisher._conn
                assert conn is not None
                with trio.fail_after(5):  # until the close reached us (as an idle timeout's)
                    while True:
                        if not conn.usable():
                            break
                        await trio.sleep(0.01)
                assert await trio.to_thread.run_sync(publish, 2) == 1
                # Redis restarts: down, a clear error at once; back, publishing goes on.
                redis.stop()
                started = time.monotonic()
                with pytest.raises(PublishError, match="cannot connect to Redis"):
                    await trio.to_thread.run_sync(publish, 0)
                assert time.monotonic() - started < 2
                redis.start()
                await wait_ready(server.port)
                assert await trio.to_thread.run_sync(publish, 3) == 1
                assert [m["n"] for m in await receive(ada, "msg", 3)] == [1, 2, 3]
                assert publisher.stats()["connects"] == 3
                await assert_quiet(ada)
        finally:
            publisher.close()
            server.kill()


async def test_relay_moves_to_another_node_and_says_when_none_is_left() -> None:
    with RedisServer() as redis:
        servers = {"r-a": node(redis, "r-a"), "r-b": node(redis, "r-b")}
        for server in servers.values():
            server.start()
        publisher = Publisher(redis.url, relay=True)
        try:
            first = await trio.to_thread.run_sync(publisher.broadcast, "feed:m", "msg", {"n": 1})
            assert first == 1
            used = publisher.stats()["relay_node"]
            other = "r-b" if used == "r-a" else "r-a"
            # The node got it when PUBLISH returned; it is stored a moment later.
            with trio.fail_after(10):
                while True:
                    history = await trio.to_thread.run_sync(
                        http_get_json, servers[other].port, "/api/history?topic=feed:m")
                    if history["top"] == 1:
                        break
                    await trio.sleep(0.02)
            async with connect(servers[other].port, query="user=ada") as ada:
                await ada.join("feed:m", "1", "1")
                # The node it used dies without a word (its liveness key stays for seconds).
                servers[used].kill()
                assert await trio.to_thread.run_sync(
                    publisher.broadcast, "feed:m", "msg", {"n": 2}) == 1
                assert publisher.stats()["relay_node"] == other
                message = (await receive(ada, "msg", 1))[0]
                if message["n"] == 1:  # node X's own broadcast of it can still be on its way
                    message = (await receive(ada, "msg", 1))[0]
                assert message["n"] == 2 and message["phx_pos"]["offset"] == 2
            assert servers[other].stop() == 0
            with pytest.raises(NoNodeAvailable, match="nothing was published"):
                await trio.to_thread.run_sync(publisher.broadcast, "feed:m", "msg", {"n": 3})
        finally:
            publisher.close()
            for server in servers.values():
                server.kill()


def test_fork_safe(redis: RedisServer, nodes: tuple[ServerProcess, ServerProcess]) -> None:
    """A Celery/gunicorn-style fork: the child opens its own connection."""
    script = textwrap.dedent(f"""
        import json, os
        from channels.publisher import Publisher
        p = Publisher({redis.url!r})
        p.broadcast("plain:fork", "msg", {{"who": "parent-1"}})
        pid = os.fork()
        if pid == 0:
            p.broadcast("plain:fork", "msg", {{"who": "child"}})
            os._exit(0 if p.stats()["connects"] == 2 else 3)  # its own connection
        _, status = os.waitpid(pid, 0)
        p.broadcast("plain:fork", "msg", {{"who": "parent-2"}})
        print(json.dumps({{"child": status, "connects": p.stats()["connects"]}}))
    """)

    async def main() -> None:
        a, _ = nodes
        async with connect(a.port, query="user=ada") as ada:
            await ada.join("plain:fork", "1", "1")
            result = await trio.run_process(
                [sys.executable, "-c", script], cwd=ROOT, capture_stdout=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert json.loads(result.stdout) == {"child": 0, "connects": 1}
            whos = sorted(m["who"] for m in await receive(ada, "msg", 3))
            assert whos == ["child", "parent-1", "parent-2"]

    trio.run(main)


async def test_least_privilege_acl(redis: RedisServer,
                                   nodes: tuple[ServerProcess, ServerProcess]) -> None:
    """The Redis ACL docs/publishing.md suggests for publishers is enough, and no more."""
    assert redis.command(
        "ACL", "SETUSER", "publisher", "on", ">pub-password-0123456789", "resetchannels",
        "&trio_channels:bc", "&trio_channels:node:*", "resetkeys",
        "-@all", "+publish", "+scan", "+select", "+client|setname") == b"OK"
    url = redis.url.replace("redis://", "redis://publisher:pub-password-0123456789@")
    a, _ = nodes
    async with connect(a.port, query="user=ada") as ada:
        await ada.join("feed:acl", "1", "1")
        with Publisher(url) as direct, Publisher(url, relay=True) as relayed:
            assert await trio.to_thread.run_sync(direct.broadcast, "feed:acl", "m", {"n": 1}) == 2
            assert await trio.to_thread.run_sync(relayed.broadcast, "feed:acl", "m", {"n": 2}) == 1
        assert [m["n"] for m in await receive(ada, "m", 2)] == [1, 2]
    with Publisher(url, namespace="other") as elsewhere, \
            pytest.raises(PublishError, match="NOPERM"):
        elsewhere.broadcast("t", "e", {})
    with Publisher(url) as publisher, pytest.raises(PublishError, match="NOPERM"):
        publisher._call_checked("GET", "trio_channels:alive:pub-a")  # no reads beyond SCAN
