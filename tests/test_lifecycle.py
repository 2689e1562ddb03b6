"""Heartbeat monitor, drain on shutdown, terminate on close, fastlane encoding."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel

from channels import CallbackSubscriber, Endpoint
from channels.serializer import V1, V2
from tests.support import app
from tests.support.client import connect


async def test_idle_connections_are_closed_active_ones_kept(
    endpoint: Endpoint, autojump_clock: trio.testing.MockClock
) -> None:
    async with connect(endpoint.port) as idle, connect(endpoint.port) as active:  # type: ignore[attr-defined]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def beat() -> None:
                # the phoenix.js default: a heartbeat every 30 s
                for i in range(6):
                    await active.send(None, str(i), "phoenix", "heartbeat", {})
                    assert (await active.recv())[1] == str(i)
                    await trio.sleep(30)
            nursery.start_soon(beat)
            code = await idle.closed(timeout=120)
            closed_after = trio.current_time() - start
        assert code == 1002  # Bandit's idle-timeout code: not 1000, so clients reconnect
        assert 60 <= closed_after <= 90  # idle_timeout 60 s, scanned every 15 s
        await active.send(None, "x", "phoenix", "heartbeat", {})
        assert (await active.recv())[1] == "x"
        assert trio.current_time() - start >= 180


async def test_close_by_client_calls_terminate(endpoint: Endpoint) -> None:
    app.TERMINATED.clear()
    async with connect(endpoint.port) as c:  # type: ignore[attr-defined]
        await c.join("room:bye", "11", "1")
        await c.recv_until("user_entered")
    with trio.fail_after(5):
        while ("room:bye", "closed") not in app.TERMINATED:
            await trio.lowlevel.checkpoint()
    assert not endpoint.sessions or all(s.closing for s in endpoint.sessions)


async def test_drain_closes_with_1012_and_terminates(nursery: trio.Nursery) -> None:
    app.TERMINATED.clear()
    ep = app.make_endpoint()
    ep.drain_batch_size = 2
    ep.drain_batch_interval = 0.05
    port = await nursery.start(ep.serve, "127.0.0.1", 0)
    codes: list[int | None] = []
    async with connect(port) as a, connect(port) as b, connect(port) as c:
        for i, client in enumerate((a, b, c)):
            await client.join(f"room:d{i}", "11", "1")
        async with trio.open_nursery() as inner:
            for client in (a, b, c):
                async def wait_closed(cl: Any = client) -> None:
                    codes.append(await cl.closed())
                inner.start_soon(wait_closed)
            await ep.drain()
    assert codes == [1012, 1012, 1012]
    assert {t for t, r in app.TERMINATED if r == "shutdown"} == {"room:d0", "room:d1", "room:d2"}
    assert not ep.sessions


async def test_fastlane_encodes_once_per_serializer(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for ser in (V1, V2):
        original = type(ser).encode_broadcast

        def counting(self: Any, topic: str, event: str, payload: Any,
                     _o: Any = original) -> tuple[bool, bytes]:
            calls.append(self.vsn)
            return _o(self, topic, event, payload)  # type: ignore[no-any-return]
        monkeypatch.setattr(type(ser), "encode_broadcast", counting)
    seen: list[tuple[str, str, Any]] = []
    endpoint.subscribe("room:fan", CallbackSubscriber(lambda *a: seen.append(a)))
    clients = []
    async with connect(endpoint.port) as c1, connect(endpoint.port) as c2, \
            connect(endpoint.port, "1.0.0") as c3:  # type: ignore[attr-defined]
        clients = [c1, c2, c3]
        for c in clients:
            await c.join("room:fan", "11", "1")
            await c.recv_until("joined")
        for i, c in enumerate(clients):  # each sees the user_entered of its own and later joins
            for _ in range(3 - i):
                await c.recv_until("user_entered")
        calls.clear()
        await endpoint.broadcast("room:fan", "news", {"n": 1})
        for c in clients:
            assert (await c.recv_until("news"))[4] == {"n": 1}
        assert sorted(calls) == ["1.0.0", "2.0.0"]
    assert ("room:fan", "news", {"n": 1}) in seen
