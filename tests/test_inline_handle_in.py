"""handle_in run by the connection's own task (no task switch) once an event has shown that
its handle_in returns without waiting: callbacks stay ordered and crash-isolated, an event
that waits after all goes back to the channel's task, and channels can opt out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from channels import Channel, Endpoint, Reply, Socket
from channels import channel as channel_mod
from tests.support.client import connect

INLINE_AFTER = channel_mod.INLINE_AFTER
LOG: list[tuple[str, Any]] = []
CHANNELS: dict[str, Probe] = {}


class Probe(Channel):
    """Records which task ran each callback, and in what order."""

    gate: trio.Event | None = None

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        CHANNELS[topic] = self
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        own = trio.lowlevel.current_task() is self.assigns.get("channel_task")
        LOG.append((event, payload.get("n")))
        if event == "where":
            return Reply.ok({"own_task": own})
        if event == "then_info":  # a message to itself: handled after this push
            self.send(("info", payload["n"]))
            return Reply.ok({"n": payload["n"]})
        if event == "boom":
            raise RuntimeError("boom")
        if event == "bye":
            self.stop("done")
            return Reply.ok({})
        if event == "maybe_wait":  # waits only when asked to
            if payload.get("wait"):
                gate = Probe.gate = trio.Event()
                await gate.wait()
            return Reply.ok({"n": payload.get("n")})
        return Reply.ok({})

    async def handle_info(self, message: Any) -> None:
        if message == "where_am_i":
            self.assigns["channel_task"] = trio.lowlevel.current_task()
            await self.push("here", {})
            return
        LOG.append(message)
        await self.push("info", {"n": message[1]})

    async def terminate(self, reason: str) -> None:
        LOG.append(("terminate", reason))


class NoInline(Probe):
    inline_handle_in = False


class ProbeSocket(Socket):
    channels = {"probe:*": Probe, "noinline:*": NoInline}

    rate_limit = None


@pytest.fixture
async def ep(nursery: trio.Nursery) -> AsyncIterator[Endpoint]:
    LOG.clear()
    CHANNELS.clear()
    channel_mod._inline_stats.pop(Probe, None)
    channel_mod._inline_stats.pop(NoInline, None)
    endpoint = Endpoint({"/socket": ProbeSocket})
    endpoint.port = await nursery.start(endpoint.serve, "127.0.0.1", 0)  # type: ignore[attr-defined]
    yield endpoint


async def _join_probe(c: Any, topic: str, ref: str) -> None:
    assert (await c.join(topic, ref, ref))[4]["status"] == "ok"
    # Let the channel learn its own task (handle_info runs there).
    CHANNELS[topic].send("where_am_i")
    assert (await c.recv_until("here"))[2] == topic


def _proc(topic: str) -> channel_mod.ChannelProcess:
    return CHANNELS[topic]._process


async def _where(c: Any, topic: str, join_ref: str, ref: str) -> bool:
    await c.send(join_ref, ref, topic, "where", {})
    reply = await c.recv()
    assert reply[1] == ref
    return bool(reply[4]["response"]["own_task"])


async def test_runs_in_the_connections_task_once_learned(ep: Endpoint) -> None:
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:a", "1")
        own = [await _where(c, "probe:a", "1", str(i)) for i in range(2, 2 + INLINE_AFTER + 3)]
    # The first pushes run in the channel's task while it learns; then inline.
    assert own[:INLINE_AFTER] == [True] * INLINE_AFTER
    assert own[INLINE_AFTER:] == [False] * 3


async def test_opt_out_always_uses_the_channel_task(ep: Endpoint) -> None:
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "noinline:a", "1")
        own = [await _where(c, "noinline:a", "1", str(i)) for i in range(2, 2 + INLINE_AFTER + 3)]
    assert own == [True] * (INLINE_AFTER + 3)


async def test_order_with_messages_to_itself(ep: Endpoint) -> None:
    """A push sends the channel a message: the next push waits for it (mailbox order), even
    when both pushes arrive in one read."""
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:o", "1")
        for i in range(INLINE_AFTER):  # learned: inline from here on
            await c.send("1", f"w{i}", "probe:o", "then_info", {"n": -1 - i})
            await c.recv_until("info")
        LOG.clear()
        # One message holding 20 frames would not be WebSocket; 20 sends without waiting
        # for replies arrive in one or a few reads.
        for i in range(20):
            await c.send("1", str(i), "probe:o", "then_info", {"n": i})
        got = [await c.recv() for _ in range(40)]
    assert [x for x in LOG if x[0] != "terminate"] == [
        x for i in range(20) for x in (("then_info", i), ("info", i))]
    replies = [m[4]["response"]["n"] for m in got if m[3] == "phx_reply"]
    infos = [m[4]["n"] for m in got if m[3] == "info"]
    assert replies == list(range(20)) and infos == list(range(20))


async def test_crash_inline_errors_only_that_topic(ep: Endpoint) -> None:
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:x", "1")
        await _join_probe(c, "probe:y", "2")
        for _ in range(INLINE_AFTER + 1):  # boom is learned on other channels first
            channel_mod._returned(Probe, "boom")
        assert _proc("probe:x").runs_inline("boom")
        await c.send("1", "9", "probe:x", "boom", {})
        err = await c.recv()
        assert err[2:4] == ["probe:x", "phx_error"] and err[1] == "1"
        await _where(c, "probe:y", "2", "10")  # the other channel lives
        # The crashed topic is gone: the client rejoins it.
        await c.send("1", "11", "probe:x", "where", {})
        assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
        assert (await c.join("probe:x", "3", "12"))[4]["status"] == "ok"


async def test_stop_inline_closes_and_terminates(ep: Endpoint) -> None:
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:s", "1")
        for _ in range(INLINE_AFTER):
            channel_mod._returned(Probe, "bye")
        await c.send("1", "5", "probe:s", "bye", {})
        assert await c.recv() == ["1", "5", "probe:s", "phx_reply",
                                  {"status": "ok", "response": {}}]
        assert await c.recv() == ["1", "1", "probe:s", "phx_close", {}]
        await c.send("1", "6", "probe:s", "where", {})
        assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
    await trio.testing.wait_all_tasks_blocked()
    assert ("terminate", "done") in LOG


async def test_an_event_that_waits_goes_back_to_the_channel_task(ep: Endpoint) -> None:
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:w", "1")
        for i in range(INLINE_AFTER):
            await c.send("1", f"m{i}", "probe:w", "maybe_wait", {"n": i})
            await c.recv()
        proc = _proc("probe:w")
        assert proc.runs_inline("maybe_wait")
        # This one waits after all: it finishes where it started (the connection's task)...
        await c.send("1", "w", "probe:w", "maybe_wait", {"n": 100, "wait": True})
        await trio.testing.wait_all_tasks_blocked()
        assert Probe.gate is not None
        # ...and a message to the channel meanwhile waits for it (callbacks one at a time).
        proc.channel.send(("info", 7))
        await trio.testing.wait_all_tasks_blocked()
        assert ("info", 7) not in LOG
        Probe.gate.set()
        assert (await c.recv())[1] == "w"
        assert (await c.recv())[3:] == ["info", {"n": 7}]
        assert LOG[-2:] == [("maybe_wait", 100), ("info", 7)]
        # From now on that event goes through the channel's task.
        assert not proc.runs_inline("maybe_wait")
        assert channel_mod._inline_stats[Probe]["maybe_wait"] == channel_mod._SUSPENDS


async def test_timed_by_the_metrics_inline_too(nursery: trio.Nursery) -> None:
    """With metrics on, handle_in is learned, run inline and timed the same way."""
    channel_mod._inline_stats.pop(Probe, None)
    CHANNELS.clear()
    endpoint = Endpoint({"/socket": ProbeSocket}, metrics_port=0)
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    assert endpoint.counters.timed
    async with connect(port) as c:  # type: ignore[attr-defined]
        await _join_probe(c, "probe:m", "1")
        own = [await _where(c, "probe:m", "1", str(i)) for i in range(2, 2 + INLINE_AFTER + 3)]
        for _ in range(INLINE_AFTER):  # learned elsewhere: inline, then it crashes
            channel_mod._returned(Probe, "boom")
        await c.send("1", "20", "probe:m", "boom", {})
        assert (await c.recv())[3] == "phx_error"
    assert own == [True] * INLINE_AFTER + [False] * 3
    histograms = endpoint.counters.handle_in
    assert histograms is not None
    assert sum(histograms[Probe].counts) == INLINE_AFTER + 3 + 1


def _masked(obj: Any) -> bytes:
    data = orjson.dumps(obj)
    assert len(data) < 126
    mask = b"\x01\x02\x03\x04"
    return bytes((0x81, 0x80 | len(data))) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(data))


async def _raw_replies(stream: trio.SocketStream, n: int) -> list[Any]:
    buf, out = b"", []
    with trio.fail_after(5):
        while len(out) < n:
            buf += await stream.receive_some(65536)
            while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
                size = buf[1] & 0x7F
                msg = orjson.loads(buf[2:2 + size])
                buf = buf[2 + size:]
                if msg[3] == "phx_reply":
                    out.append(msg)
    return out


async def test_a_read_of_several_pushes_goes_through_the_mailbox(ep: Endpoint) -> None:
    """A client ahead of the server (several pushes in one read) is not run inline: queued,
    its pushes are seen by back-pressure and max_push_age."""
    stream = await trio.open_tcp_stream("127.0.0.1", ep.port)  # type: ignore[attr-defined]
    async with stream:
        await stream.send_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n"
                              b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 101")
        await stream.send_all(_masked(["1", "1", "probe:r", "phx_join", {}]))
        assert (await _raw_replies(stream, 1))[0][4]["status"] == "ok"
        CHANNELS["probe:r"].send("where_am_i")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(INLINE_AFTER + 1):  # learned, then inline
            await stream.send_all(_masked(["1", f"s{i}", "probe:r", "where", {}]))
            own = (await _raw_replies(stream, 1))[0][4]["response"]["own_task"]
        assert own is False
        await stream.send_all(b"".join(_masked(["1", f"m{i}", "probe:r", "where", {}])
                                       for i in range(3)))
        replies = await _raw_replies(stream, 3)
        assert [r[1] for r in replies] == ["m0", "m1", "m2"]
        assert [r[4]["response"]["own_task"] for r in replies] == [True] * 3
