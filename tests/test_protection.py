"""One slow or abusive client never costs another client anything."""

from __future__ import annotations

import socket as stdsocket
from typing import Any

import pytest
import trio

from channels import Endpoint
from channels.socket import SocketSession
from tests.support.app import UserSocket
from tests.support.client import RawClient, connect

FRAME = 64 * 1024
FLOOD = 80
LIVE = 200


class SmallBufferSocket(UserSocket):
    max_buffer = 512 * 1024


def _stalled_client(port: int) -> stdsocket.socket:
    """A raw client that joins a topic and then never reads again."""
    sock = stdsocket.socket()
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\n"
                 b"upgrade: websocket\r\nconnection: Upgrade\r\n"
                 b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"sec-websocket-version: 13\r\n\r\n")
    join = b'["1","1","room:flood","phx_join",{}]'
    # a masked client frame (mask 0 keeps the bytes readable)
    sock.sendall(bytes((0x81, 0x80 | len(join))) + b"\x00\x00\x00\x00" + join)
    seen = b""
    while b"phx_reply" not in seen:  # read the upgrade and the join reply, then never again
        seen += sock.recv(4096)
    return sock


async def test_stalled_client_is_dropped_live_ones_get_everything(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": SmallBufferSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    counts = [0] * LIVE
    progress = trio.Event()
    all_joined = trio.Event()
    joined = 0
    peak_buffer = 0
    ended: dict[SocketSession, trio.Event] = {}
    session_ended = endpoint.session_ended

    def record_end(session: SocketSession) -> None:
        session_ended(session)
        ended.setdefault(session, trio.Event()).set()
    endpoint.session_ended = record_end  # type: ignore[method-assign]

    async def live(i: int, c: RawClient) -> None:
        nonlocal progress, joined
        await c.join("room:flood", "1", "1")
        joined += 1
        if joined == LIVE:
            all_joined.set()
        while counts[i] < FLOOD:
            m = await c.recv(timeout=30)
            if m[3] == "flood":
                assert m[4]["n"] == counts[i]  # in order, none lost
                counts[i] += 1
                progress.set()

    stalled = await trio.to_thread.run_sync(_stalled_client, port)
    try:
        async with trio.open_nursery() as clients:
            conns: list[Any] = []
            for _ in range(LIVE):
                conns.append(await clients.start(_open, port))
            for i, c in enumerate(conns):
                clients.start_soon(live, i, c)
            with trio.fail_after(30):
                await all_joined.wait()
            assert endpoint.pubsub.subscriber_count("room:flood") == LIVE + 1
            stalled_session = next(s for s in endpoint.sessions if s.conn.peer[1] ==
                                   stalled.getsockname()[1])
            blob = "x" * FRAME
            with trio.fail_after(60):
                for n in range(FLOOD):
                    # pace the flood on the live clients only (they keep up; the stalled one never does)
                    while min(counts) < n - 5:
                        progress = trio.Event()
                        await progress.wait()
                    await endpoint.broadcast("room:flood", "flood", {"n": n, "blob": blob})
                    peak_buffer = max(peak_buffer, stalled_session.conn.buffered)
                    await trio.lowlevel.checkpoint()
                while min(counts) < FLOOD:
                    progress = trio.Event()
                    await progress.wait()
            assert stalled_session.closing, "the stalled client was not disconnected"
            with trio.fail_after(10):
                await ended.setdefault(stalled_session, trio.Event()).wait()
            assert stalled_session not in endpoint.sessions
            clients.cancel_scope.cancel()
    finally:
        stalled.close()
    assert counts == [FLOOD] * LIVE
    # bounded: at most max_buffer plus the one frame that crossed it (and the close frame)
    assert peak_buffer <= SmallBufferSocket.max_buffer + FRAME + 1024


async def _open(port: int, *, task_status: trio.TaskStatus[RawClient]) -> None:
    async with connect(port) as c:
        task_status.started(c)
        await trio.sleep_forever()


async def test_overflow_queues_nothing_but_the_close_frame() -> None:
    # The sans-socket part: once over the limit nothing else is queued but the close frame
    # (behind the rest of the frame already begun).
    a, b = stdsocket.socketpair()
    a.setblocking(False)
    from channels.connection import Connection
    conn = Connection(a, ("test", 0), max_buffer=100)
    fired: list[bool] = []
    conn.on_overflow = lambda: fired.append(True)
    async with trio.open_nursery() as nursery:
        conn.attach(nursery)
        big = b"y" * (1 << 22)  # far more than the socketpair buffer takes
        conn.write_nowait(big)
        assert fired == [True] and conn.overflowed
        before = conn.buffered
        conn.write_nowait(b"dropped")
        assert conn.buffered == before
        conn.cut(b"CLOSE")
        assert conn.buffered == before + 5
        conn.abort()
    b.close()



class LimitedSocket(UserSocket):
    rate_limit = (10.0, 5.0)


async def test_rate_limit_replies_then_closes_1008(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": LimitedSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as bystander, connect(port) as c:
        # a burst of 5 passes; the rest of a quick flurry is refused with a clear reason
        for i in range(8):
            await c.send(None, str(i), "phoenix", "heartbeat", {})
        replies = [await c.recv() for _ in range(8)]
        statuses = [r[4]["status"] for r in replies]
        assert statuses[:5] == ["ok"] * 5
        assert replies[-1][4] == {"status": "error", "response": {"reason": "rate_limited"}}
        # keeping on while refused is abuse: the connection is closed with 1008
        for i in range(100):
            try:
                await c.send(None, f"x{i}", "phoenix", "heartbeat", {})
            except Exception:
                break
        assert await c.closed() == 1008
        await bystander.send(None, "1", "phoenix", "heartbeat", {})
        assert (await bystander.recv())[4]["status"] == "ok"


async def test_connection_limits_answer_503(nursery: trio.Nursery) -> None:
    from trio_websocket import ConnectionRejected

    endpoint = Endpoint({"/socket": UserSocket}, max_connections=2)
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port), connect(port):
        with pytest.raises(ConnectionRejected) as err:
            async with connect(port):
                pass
        assert err.value.status_code == 503
    rate_limited = Endpoint({"/socket": UserSocket}, connection_rate=(0.001, 2))
    port = await nursery.start(rate_limited.serve, "127.0.0.1", 0)
    async with connect(port), connect(port):
        pass
    with pytest.raises(ConnectionRejected) as err:
        async with connect(port):
            pass
    assert err.value.status_code == 503


class AutoOriginSocket(UserSocket):
    check_origin = None


@pytest.mark.parametrize("host, origin, ok", [
    ("127.0.0.1:4000", "https://evil.example", True),     # loopback host: development
    ("localhost:4000", "http://anything.test", True),
    ("chat.example.com", "https://chat.example.com", True),  # same host
    ("chat.example.com", "https://evil.example", False),     # cross-site WebSocket hijacking
    ("chat.example.com", "null", False),                     # sandboxed iframe / file://
    ("chat.example.com", None, True),                        # not a browser
])
async def test_check_origin_default(nursery: trio.Nursery, host: str, origin: str | None,
                                    ok: bool) -> None:
    endpoint = Endpoint({"/socket": AutoOriginSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    request = (f"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: {host}\r\n"
               "upgrade: websocket\r\nconnection: Upgrade\r\n"
               "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
               + (f"origin: {origin}\r\n" if origin else "") + "\r\n").encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(5):
            head = await stream.receive_some()
    assert head.startswith(b"HTTP/1.1 101 " if ok else b"HTTP/1.1 403 "), head


async def test_connect_info_never_carries_the_token_in_headers(endpoint: Endpoint) -> None:
    from tests.support import app

    protos = ["phoenix", "base64url.bearer.phx.dG9rPT8"]
    async with connect(endpoint.port, subprotocols=protos) as c:  # type: ignore[attr-defined]
        await c.join("room:mask", "1", "1")
        session = next(iter(endpoint.sessions))
        info = session.socket.assigns["connect_info"]
        assert info["auth_token"] == "tok=?"
        assert "dG9rPT8" not in repr(info["headers"]) + repr(info["sec_websocket_headers"])
    assert app


async def test_slowloris_request_head_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    endpoint = Endpoint({"/socket": UserSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: a")  # never finished
        with trio.fail_after(60):
            assert await stream.receive_some() == b""  # closed by the server
        assert trio.current_time() - start >= 10  # HEADER_TIMEOUT
    async with connect(port) as c:
        await c.send(None, "1", "phoenix", "heartbeat", {})
        assert (await c.recv())[1] == "1"


class SmallQueueSocket(UserSocket):
    max_queued = 5
    max_push_age = None  # this test is about max_queued alone (the age limit has its own)


async def test_slow_channel_answers_overloaded_instead_of_queueing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    endpoint = Endpoint({"/socket": SmallQueueSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:
        await c.join("room:slow", "1", "1")
        await c.recv_until("user_entered")
        for i in range(20):  # each takes 1 s to handle: at most 5 may wait
            await c.send("1", str(i), "room:slow", "slow", {})
        replies = {}
        while len(replies) < 20:
            m = await c.recv(timeout=120)
            if m[3] == "phx_reply":
                replies[m[1]] = m[4]
        overloaded = [r for r in replies.values()
                      if r == {"status": "error", "response": {"reason": "overloaded"}}]
        assert 10 <= len(overloaded) <= 15
        assert sum(r["status"] == "ok" for r in replies.values()) == 20 - len(overloaded)
