"""Slow consumers are judged by progress, not burst size; overload pushes back.

- Readers that keep reading receive every message of a burst far larger than any kernel
  buffer; a reader that takes no bytes for ``write_timeout`` is cut off (1013 attempted).
- Queued frames are shared by reference between connections (memory is counted once).
- A connection whose channels hold ``unhandled_high_water`` pushes is not read until they
  are down to ``unhandled_low_water``; pushes that waited longer than ``max_push_age`` are
  answered ``overloaded``; every push gets a reply.
"""

from __future__ import annotations

import logging
import socket as stdsocket
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from channels import Channel, Endpoint, Reply, Socket
from channels.channel import ChannelProcess
from channels.connection import Connection
from channels.serializer import Message
from channels.socket import SocketSession
from tests.support.client import RawClient, connect

LIVE = 10
BURST = 4000
BLOB = "x" * 4000  # a ~4 KB frame each: ~16 MB in one synchronous loop


class BurstChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None


class BurstSocket(Socket):
    channels = {"burst:*": BurstChannel}
    write_timeout = 2.0
    idle_timeout = 600.0


async def _stalled_client(port: int, topic: str) -> trio.SocketStream:
    """A raw client that joins ``topic`` and then never reads again (tiny receive buffer)."""
    sock = trio.socket.socket()
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\n"
                          b"upgrade: websocket\r\nconnection: Upgrade\r\n"
                          b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"sec-websocket-version: 13\r\n\r\n")
    join = f'["1","1","{topic}","phx_join",{{}}]'.encode()
    await stream.send_all(bytes((0x81, 0x80 | len(join))) + b"\x00\x00\x00\x00" + join)
    seen = b""
    with trio.fail_after(10):
        while b"phx_reply" not in seen:  # the upgrade and the join reply, then never again
            seen += await stream.receive_some(4096)
    return stream


async def _open(port: int, *, task_status: trio.TaskStatus[RawClient]) -> None:
    async with connect(port) as c:
        task_status.started(c)
        await trio.sleep_forever()


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        pass


def _session_of(endpoint: Endpoint, stream: trio.SocketStream) -> SocketSession:
    port = stream.socket.getsockname()[1]
    return next(s for s in endpoint.sessions if s.conn.peer[1] == port)


def _track_ends(endpoint: Endpoint) -> dict[SocketSession, trio.Event]:
    ended: dict[SocketSession, trio.Event] = {}
    session_ended = endpoint.session_ended

    def record_end(session: SocketSession) -> None:
        session_ended(session)
        ended.setdefault(session, trio.Event()).set()
    endpoint.session_ended = record_end  # type: ignore[method-assign]
    return ended


async def test_live_readers_get_all_of_a_16mb_burst_a_stalled_one_is_cut(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    caplog.set_level(logging.WARNING, "channels.socket")
    endpoint = Endpoint({"/socket": BurstSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    ended = _track_ends(endpoint)
    counts = [0] * LIVE
    stalled = await _stalled_client(port, "burst:a")
    async with trio.open_nursery() as clients:
        conns: list[RawClient] = [await clients.start(_open, port) for _ in range(LIVE)]
        for c in conns:
            await c.join("burst:a", "1", "1")
        assert endpoint.pubsub.subscriber_count("burst:a") == LIVE + 1
        stalled_session = _session_of(endpoint, stalled)

        async def read_all(i: int, c: RawClient) -> None:
            while counts[i] < BURST:
                m = await c.recv(timeout=30)
                assert m[3] == "b" and m[4]["n"] == counts[i]  # in order, none lost
                counts[i] += 1

        _reset_peak_rss()
        rss_before = _vm_kib("VmRSS")
        tracemalloc.start()
        try:
            # One loop, no checkpoint: all of it is queued before anyone reads a byte.
            for n in range(BURST):
                await endpoint.broadcast("burst:a", "b", {"n": n, "blob": BLOB})
            queued = sum(s.conn.buffered for s in endpoint.sessions)
            traced, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()  # it would slow the readers down ~5x
        with trio.fail_after(120):
            async with trio.open_nursery() as readers:
                for i, c in enumerate(conns):
                    readers.start_soon(read_all, i, c)
            await ended.setdefault(stalled_session, trio.Event()).wait()
        rss_growth = (_vm_kib("VmHWM") - rss_before) * 1024
        clients.cancel_scope.cancel()
    assert counts == [BURST] * LIVE
    assert any("write_timeout" in r.getMessage() and "slow consumer" in r.getMessage()
               for r in caplog.records), "the stalled reader was not cut for no progress"
    assert not any("max_buffer" in r.getMessage() for r in caplog.records)
    # What the stalled reader sees when it reads again: what the kernel held, then the end
    # of the stream (its close frame was behind bytes it never read).
    tail = b""
    with trio.fail_after(10):
        while chunk := await stalled.receive_some(65536):
            tail += chunk
    await stalled.aclose()
    close_seen = b"\x03\xf5slow consumer" in tail[-64:]
    burst_bytes = BURST * (len(BLOB) + 50)
    print(f"\nburst {burst_bytes / 1e6:.1f} MB to {LIVE + 1} readers: {queued / 1e6:.1f} MB "
          f"queued in all right after the loop, {traced / 1e6:.1f} MB allocated by it "
          f"(traced peak {traced_peak / 1e6:.1f} MB); peak RSS growth of the whole process "
          f"(clients included) {rss_growth / 1e6:.1f} MB; the stalled reader then read "
          f"{len(tail) / 1e6:.2f} MB, close frame seen: {close_seen}")
    record_property("queued_bytes_after_loop", queued)
    record_property("traced_bytes_after_loop", traced)
    record_property("peak_rss_growth_bytes", rss_growth)
    # Frames are queued by reference: copies per connection would need ~11 x 16 MB.
    assert queued > 3 * burst_bytes
    assert traced_peak < 2 * burst_bytes


class CapSocket(BurstSocket):
    max_buffer = 256 * 1024
    write_timeout = 600.0


async def test_over_max_buffer_the_queue_is_dropped_and_1013_arrives(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "channels.socket")
    endpoint = Endpoint({"/socket": CapSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:
        await c.join("burst:cap", "1", "1")
        for n in range(2000):  # ~8 MB before the client reads anything
            await endpoint.broadcast("burst:cap", "b", {"n": n, "blob": BLOB})
        assert any("max_buffer" in r.getMessage() for r in caplog.records)
        received = 0
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            while True:
                m = await c.recv(timeout=10)
                assert m[4]["n"] == received  # whole frames, in order, then the close
                received += 1
        assert closed.value.reason.code == 1013
        assert 0 < received < 2000


# -- Connection: references, cut, progress ---------------------------------------------------


async def test_queued_frames_are_shared_and_cut_keeps_the_frame_begun() -> None:
    a1, b1 = stdsocket.socketpair()
    a2, b2 = stdsocket.socketpair()
    for s in (a1, a2):
        s.setblocking(False)
    for s in (b1, b2):
        s.setblocking(False)
    conn1, conn2 = Connection(a1, ("t", 1)), Connection(a2, ("t", 2))
    async with trio.open_nursery() as nursery:
        conn1.attach(nursery)
        conn2.attach(nursery)
        first = b"A" * (1 << 22)  # more than a socketpair takes: sent in part
        frames = [bytes([66 + i]) * 1000 for i in range(5)]
        conn1.write_nowait(first)
        for f in frames:
            conn1.write_nowait(f)
            conn2.write_nowait(first)
        assert all(q is f for q, f in zip(list(conn1._pending or ())[1:], frames, strict=True))
        assert (conn2._pending or [None])[-1] is first  # the same object, not a copy
        rest = conn1.buffered - 5000
        assert 0 < rest < len(first)
        conn1.cut(b"CLOSE")
        assert conn1.buffered == rest + 5 and conn1.overflowed
        conn1.write_nowait(b"ignored")
        assert conn1.buffered == rest + 5
        # The peer gets the whole first frame, then CLOSE, and nothing else.
        got = bytearray()
        with trio.fail_after(10):
            while len(got) < len(first) + 5:
                await trio.lowlevel.wait_readable(b1)
                got += b1.recv(1 << 20)
        assert bytes(got) == first + b"CLOSE"
        conn1.abort()
        conn2.abort()
    for s in (b1, b2):
        s.close()


async def test_write_stall_counts_only_time_without_progress() -> None:
    a, b = stdsocket.socketpair()
    a.setblocking(False)
    conn = Connection(a, ("t", 0))
    async with trio.open_nursery() as nursery:
        conn.attach(nursery)
        assert conn.write_stall(100.0) == 0.0  # nothing queued
        conn.write_nowait(b"x" * (1 << 22))
        assert conn.buffered
        assert conn.write_stall(101.0) == 0.0  # the clock starts at the first scan
        assert conn.write_stall(105.0) == 4.0
        b.recv(1 << 16)  # the peer reads: the kernel's queue shrinks (not yet writable)
        assert conn.write_stall(106.0) == 0.0
        assert conn.write_stall(107.5) == 1.5
        b.recv(1 << 20)
        conn._send_pending()  # the flusher hands bytes to the kernel
        assert conn.write_stall(108.0) == 0.0
        assert conn.write_stall(109.5) == 1.5
        conn.abort()
        assert conn.write_stall(110.0) == 0.0
    b.close()


# -- Back-pressure and push age ----------------------------------------------------------------

HIGH, LOW = 20, 10


class SlowChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "slow":
            await trio.sleep(0.005)
        return Reply.ok({"n": payload["n"]})


class PushBackSocket(Socket):
    channels = {"room:*": SlowChannel}
    rate_limit = None
    unhandled_high_water = HIGH
    unhandled_low_water = LOW
    max_push_age = 0.05
    idle_timeout = 600.0


async def test_a_flood_is_pushed_back_every_push_answered_others_served(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = Endpoint({"/socket": PushBackSocket})
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    peak = {"mailbox": 0, "unhandled": 0}
    forward = ChannelProcess.forward

    def watched(self: ChannelProcess, msg: Message, since: float | None = None) -> None:
        forward(self, msg, since)
        peak["mailbox"] = max(peak["mailbox"], self.queued)
        peak["unhandled"] = max(peak["unhandled"], self.session.unhandled)
    monkeypatch.setattr(ChannelProcess, "forward", watched)

    flood_n = 1500
    replies: dict[str, dict[str, Any]] = {}
    async with connect(port) as flood, connect(port) as other:
        await flood.join("room:flood", "1", "1")
        await other.join("room:other", "1", "1")
        flood_session = next(s for s in endpoint.sessions if "room:flood" in s.state.topics)

        async def send_flood() -> None:
            for i in range(flood_n):  # blocks when TCP pushes back
                await flood.send("1", str(i), "room:flood", "slow", {"n": i})

        async def read_flood() -> None:
            while len(replies) < flood_n:
                m = await flood.recv(timeout=30)
                if m[3] == "phx_reply":
                    replies[m[1]] = m[4]

        async with trio.open_nursery() as tasks:
            tasks.start_soon(send_flood)
            tasks.start_soon(read_flood)
            # Meanwhile another client's pushes are answered (bounded wait for each).
            for i in range(30):
                await other.send("1", f"o{i}", "room:other", "fast", {"n": i})
                m = await other.recv(timeout=5)
                assert m[1] == f"o{i}" and m[4] == {"status": "ok", "response": {"n": i}}
                await trio.sleep(0.01)
    assert sorted(replies, key=int) == [str(i) for i in range(flood_n)]  # every push answered
    ok = sum(r == {"status": "ok", "response": {"n": int(ref)}} for ref, r in replies.items())
    overloaded = sum(r == {"status": "error", "response": {"reason": "overloaded"}}
                     for r in replies.values())
    assert ok + overloaded == flood_n and ok > 0
    assert flood_session.read_pauses > 0  # the server stopped reading from it
    assert peak["mailbox"] <= HIGH and peak["unhandled"] <= HIGH
    print(f"\nflood of {flood_n}: {ok} ok, {overloaded} overloaded, reading paused "
          f"{flood_session.read_pauses} times, peak mailbox {peak['mailbox']}")


class AgeSocket(Socket):
    max_push_age = 4.5


class SleepyChannel(Channel):
    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        await trio.sleep(1)
        return Reply.ok()


class FakeSession:
    """What a ChannelProcess needs of its session, without a connection."""

    def __init__(self) -> None:
        self.socket = AgeSocket(None)  # type: ignore[arg-type]
        self.counters = SimpleNamespace(replies={}, timed=False, overloaded=0)
        self.unhandled = 0
        self.replies: list[tuple[str | None, str]] = []
        self.done = trio.Event()

    def pushes_taken(self, n: int = 1) -> None:
        self.unhandled -= n

    def send_reply(self, join_ref: str | None, ref: str | None, topic: str,
                   reply: Reply) -> None:
        response = reply.response
        assert isinstance(response, dict)
        self.replies.append((ref, reply.status if reply.status == "ok" else response["reason"]))
        if len(self.replies) == 10:
            self.done.set()

    def refuse_late(self, msg: Message) -> None:
        self.counters.overloaded += 1
        self.send_reply(msg.join_ref, msg.ref, msg.topic, Reply.error({"reason": "overloaded"}))


def _push(i: int) -> Message:
    return Message("1", str(i), "room:age", "work", {})


async def test_pushes_older_than_max_push_age_are_answered_overloaded(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    session = FakeSession()
    proc = ChannelProcess(session, SleepyChannel(), "room:age", "1")  # type: ignore[arg-type]
    proc.flush_join_buffer()
    for i in range(10):  # all at t=0; each takes 1 s to handle
        proc.forward(_push(i))
    assert session.unhandled == proc.unhandled == 10
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.run)
        await session.done.wait()
        # Pushes 0-4 started within 4.5 s of arriving; 5-9 had waited 5 s or more.
        assert session.replies == [(str(i), "ok") for i in range(5)] + \
            [(str(i), "overloaded") for i in range(5, 10)]
        assert session.unhandled == 0 and session.counters.overloaded == 5
        assert sum("max_push_age" in r.getMessage() for r in caplog.records) == 1
        await trio.sleep(1)  # idle now: a push that will not wait is not stamped
        proc.forward(_push(10))
        assert proc._mailbox._items is not None and proc._mailbox._items[0][2] is None
        nursery.cancel_scope.cancel()
    # The channel ended with one push queued: the session no longer counts it.
    assert session.unhandled == 0 and proc.unhandled == 0
    proc.forward(_push(11))  # an ended channel drops pushes and counts nothing
    assert session.unhandled == 0


def test_pushes_read_after_a_pause_count_their_age_from_their_arrival() -> None:
    """The marks taken when reading pauses and resumes bound when each later chunk had
    arrived (in the kernel); never later than true, so an age is never overestimated."""
    a, b = stdsocket.socketpair()
    session: Any = SimpleNamespace(conn=SimpleNamespace(sock=a), _marks=None, _received=0)

    def read(n: int) -> float | None:
        assert len(a.recv(n)) == n
        session._received += n
        return SocketSession._chunk_arrived_by(session)  # type: ignore[no-any-return]

    b.send(b"x" * 100)
    SocketSession._mark(session, 1.0)  # reading pauses at t=1: 100 bytes had arrived
    b.send(b"y" * 50)
    SocketSession._mark(session, 2.0)  # and resumes at t=2: 150 had
    assert read(64) == 1.0
    assert read(50) == 2.0  # bytes 100-113 came during the pause: arrived by 2
    assert read(36) == 2.0
    b.send(b"z" * 10)
    assert read(10) is None and session._marks is None  # caught up: ages count from now
    a.close()
    b.close()
