"""The node's poller (channels/poller.py): one task reads every idle connection, hands joins
and closes to the connection's task, hands over to a new poller task when an inline
handle_in waits, and the connections read by themselves when it is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from channels import Channel, Endpoint, Reply, Socket
from channels import channel as channel_mod
from channels import logging as chlog
from tests.support.client import RawClient, connect

INLINE_AFTER = channel_mod.INLINE_AFTER
GATE: dict[str, trio.Event] = {}
TASKS: list[trio.lowlevel.Task] = []


class GateChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        TASKS.append(trio.lowlevel.current_task())
        if event == "echo":
            return Reply.ok(payload)
        if event == "gate":  # returns at once, until asked to wait for a gate
            name = payload.get("wait")
            if name:
                gate = GATE[name] = trio.Event()
                await gate.wait()
            return Reply.ok({"n": payload.get("n")})
        return None


class GateSocket(Socket):
    channels = {"g:*": GateChannel}
    rate_limit = None


@pytest.fixture
async def ep(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Endpoint]:
    # With the JSON log context on, connections' own tasks handle what they read.
    monkeypatch.setattr(chlog.state, "context", False)
    GATE.clear()
    TASKS.clear()
    channel_mod._inline_stats.pop(GateChannel, None)
    endpoint = Endpoint({"/socket": GateSocket}, poll_reads=True)
    endpoint.port = await nursery.start(endpoint.serve, "127.0.0.1", 0)  # type: ignore[attr-defined]
    yield endpoint


async def _push(c: RawClient, topic: str, ref: str, event: str, payload: Any,
                join_ref: str = "1") -> Any:
    await c.send(join_ref, ref, topic, event, payload)
    reply = await c.recv()
    assert reply[1] == ref and reply[3] == "phx_reply", reply
    return reply[4]["response"]


async def _heartbeat(c: RawClient, ref: str) -> None:
    await c.send(None, ref, "phoenix", "heartbeat", {})
    assert await c.recv() == [None, ref, "phoenix", "phx_reply",
                              {"status": "ok", "response": {}}]


async def test_learned_pushes_run_in_the_poller_task(ep: Endpoint) -> None:
    assert ep.poller is not None and ep.poller.running
    async with connect(ep.port) as a, connect(ep.port) as b:  # type: ignore[attr-defined]
        for c in (a, b):
            assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        for i in range(INLINE_AFTER + 2):
            for c in (a, b):
                assert await _push(c, "g:1", f"p{i}", "echo", {"i": i}) == {"i": i}
    # Learned per channel class: the first pushes ran in each channel's own task (two of
    # them), the rest in one task for both connections: the poller's.
    learning, inline = TASKS[:INLINE_AFTER], TASKS[INLINE_AFTER:]
    assert len(set(learning)) == 2
    assert len(set(inline)) == 1 and not set(inline) & set(learning)


async def test_a_waiting_inline_push_hands_the_poller_over(ep: Endpoint) -> None:
    async with connect(ep.port) as a, connect(ep.port) as b:  # type: ignore[attr-defined]
        for c in (a, b):
            assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        assert (await a.join("g:2", "2", "2"))[4]["status"] == "ok"
        for i in range(INLINE_AFTER):
            assert await _push(a, "g:1", f"p{i}", "gate", {"n": i}) == {"n": i}
        assert ep.poller is not None and ep.poller.handovers == 0
        await a.send("1", "w", "g:1", "gate", {"wait": "a", "n": 99})
        await trio.testing.wait_all_tasks_blocked()
        assert "a" in GATE and ep.poller.handovers == 1
        # Meanwhile every connection is read: the other client, and this one's other
        # channel and heartbeats (the callback waits in the old poller task).
        await _heartbeat(b, "h1")
        assert await _push(b, "g:1", "b1", "echo", {"x": 1}) == {"x": 1}
        await _heartbeat(a, "h2")
        assert await _push(a, "g:2", "a2", "echo", {"x": 2}, join_ref="2") == {"x": 2}
        # A push to the waiting channel waits its turn (callbacks one at a time, in order).
        await a.send("1", "after", "g:1", "gate", {"n": 100})
        await trio.testing.wait_all_tasks_blocked()
        GATE["a"].set()
        assert [await a.recv(), await a.recv()] == [
            ["1", "w", "g:1", "phx_reply", {"status": "ok", "response": {"n": 99}}],
            ["1", "after", "g:1", "phx_reply", {"status": "ok", "response": {"n": 100}}]]
        assert await _push(a, "g:1", "last", "echo", {"x": 3}) == {"x": 3}


async def test_big_messages_are_read_whole(ep: Endpoint) -> None:
    """A read that fills the buffer may leave bytes no new epoll edge will announce."""
    payload = {"blob": "x" * 300_000}
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        assert (await c.join("g:big", "1", "1"))[4]["status"] == "ok"
        for i in range(INLINE_AFTER + 2):
            assert await _push(c, "g:big", str(i), "echo", payload) == payload


async def test_connections_read_by_themselves_once_the_poller_is_gone(ep: Endpoint) -> None:
    poller = ep.poller
    assert poller is not None
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        await trio.testing.wait_all_tasks_blocked()
        assert poller._nursery is not None
        poller._nursery.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not poller.running
        for i in range(INLINE_AFTER + 2):
            assert await _push(c, "g:1", str(i), "echo", {"i": i}) == {"i": i}
        await _heartbeat(c, "h")
    # New connections too.
    async with connect(ep.port) as c:  # type: ignore[attr-defined]
        assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        assert await _push(c, "g:1", "x", "echo", {}) == {}


async def test_without_a_poller(nursery: trio.Nursery) -> None:
    endpoint = Endpoint({"/socket": GateSocket}, poll_reads=False)
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as c:  # type: ignore[attr-defined]
        assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        for i in range(INLINE_AFTER + 2):
            assert await _push(c, "g:1", str(i), "echo", {"i": i}) == {"i": i}
        await _heartbeat(c, "h")
        await c.send("1", "9", "g:1", "phx_leave", {})
        assert (await c.recv())[3] == "phx_reply"


async def test_a_peer_that_resets_ends_its_session(ep: Endpoint) -> None:
    """The socket closed under a parked session (a write failed): it ends, the others live."""
    async with connect(ep.port) as a, connect(ep.port) as b:  # type: ignore[attr-defined]
        for c in (a, b):
            assert (await c.join("g:1", "1", "1"))[4]["status"] == "ok"
        await trio.testing.wait_all_tasks_blocked()
        assert len(ep.sessions) == 2
        first = next(s for s in ep.sessions if s.conn.peer[1] == _local_port(a))
        first.conn.abort()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ep.sessions) == 1
        await _heartbeat(b, "h")


def _local_port(c: RawClient) -> int:
    return int(c.ws._stream.socket.getsockname()[1])  # type: ignore[attr-defined]
