"""The game example's Arena room on one node, in process, on trio's MockClock: its 20 Hz tick
and broadcasts, inputs, keep-alives and leaving, a crash (restarted from the last snapshot)
and idle deactivation. No sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from channels import CallbackSubscriber, Endpoint, Rooms
from examples.game import logic
from examples.game.app import Arena


@asynccontextmanager
async def arena(key: str) -> AsyncIterator[tuple[Rooms, list[dict[str, Any]]]]:
    """Rooms with the Arena on a bare endpoint, and the list of ticks broadcast in ``key``."""
    rooms = Rooms(Arena)
    endpoint = Endpoint({}, rooms=rooms)
    ticks: list[dict[str, Any]] = []
    endpoint.subscribe(f"game:{key}", CallbackSubscriber(
        lambda topic, event, payload: ticks.append(payload) if event == "tick" else None))
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.pubsub.run)
        await nursery.start(rooms.run)
        yield rooms, ticks
        nursery.cancel_scope.cancel()


def player(tick: dict[str, Any], pid: str) -> dict[str, Any] | None:
    return next((p for p in tick["players"] if p["id"] == pid), None)


async def test_ticks_inputs_and_leaving(autojump_clock: trio.testing.MockClock) -> None:
    async with arena("a") as (rooms, ticks):
        reply = await rooms.call(Arena, "a", {"op": "join", "id": "p1", "name": "Ann"})
        start = player(reply["state"], "p1")
        assert start is not None and reply["state"]["node"] == "local"
        await rooms.cast(Arena, "a", {"op": "input", "id": "p1", "name": "Ann",
                                      "dx": 1 if start["x"] < logic.WIDTH / 2 else -1, "dy": 0})
        await trio.sleep(1.0)
        # 20 ticks a second, numbered one after the other
        numbers = [t["tick"] for t in ticks]
        assert 18 <= len(numbers) <= 21
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert {t["epoch"] for t in ticks} == {reply["state"]["epoch"]}
        moved = player(ticks[-1], "p1")
        assert moved is not None and moved["dx"] != 0
        assert abs(moved["x"] - start["x"]) == pytest.approx(
            len(numbers) * logic.speed(0), abs=1.0)
        # bad casts are ignored
        for bad in ("x", {"op": "input", "id": "p1", "dx": 5, "dy": 0}, {"op": "input"},
                    {"op": "nope", "id": "p1"}):
            await rooms.cast(Arena, "a", bad)
        assert await rooms.call(Arena, "a", "what?") == {"error": "unknown call None"}
        assert await rooms.call(Arena, "a", {"op": "join", "id": 1}) == {
            "error": "a join needs an id and a name"}
        state = (await rooms.call(Arena, "a", {"op": "state"}))["state"]
        assert [p["id"] for p in state["players"]] == ["p1"]
        # leaving: the player is gone, and an empty arena broadcasts nothing
        await rooms.cast(Arena, "a", {"op": "leave", "id": "p1"})
        await trio.sleep(0.2)
        count = len(ticks)
        await trio.sleep(1.0)
        assert len(ticks) == count
        assert (await rooms.call(Arena, "a", {"op": "state"}))["state"]["players"] == []


async def test_silent_players_drop_out_and_keepalives_keep_them(
        autojump_clock: trio.testing.MockClock) -> None:
    async with arena("k") as (rooms, ticks):
        await rooms.call(Arena, "k", {"op": "join", "id": "quiet", "name": "Q"})
        await rooms.call(Arena, "k", {"op": "join", "id": "alive", "name": "A"})
        for _ in range(12):  # 12 s: pings every second from "alive" only
            await trio.sleep(1.0)
            await rooms.cast(Arena, "k", {"op": "ping", "id": "alive", "name": "A"})
        assert [p["id"] for p in ticks[-1]["players"]] == ["alive"]
        # a ping (or input) from a player the arena does not know adds it back
        await rooms.cast(Arena, "k", {"op": "ping", "id": "quiet", "name": "Q"})
        await trio.sleep(0.2)
        assert [p["id"] for p in ticks[-1]["players"]] == ["alive", "quiet"]


async def test_a_crash_restarts_from_the_last_snapshot(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async with arena("c") as (rooms, ticks):
        await rooms.call(Arena, "c", {"op": "join", "id": "p1", "name": "Ann"})
        await rooms.cast(Arena, "c", {"op": "input", "id": "p1", "name": "Ann", "dx": 0,
                                      "dy": 1})
        await trio.sleep(2.23)  # snapshots at 0.5 s, 1.0 s, ... 2.0 s; 2.25 s is a tick
        before, seen = ticks[-1]["tick"], len(ticks)
        real_step = logic.step

        def crash_once(state: logic.State, inputs: Any) -> logic.State:
            monkeypatch.setattr(logic, "step", real_step)
            raise RuntimeError("boom")

        monkeypatch.setattr(logic, "step", crash_once)
        await trio.sleep(1.0)
        assert rooms.stats()["crashes"] == 1
        assert any("room Arena:c crashed" in r.message for r in caplog.records)
        # the crashed tick broadcast nothing; the ticks after it continue from the last
        # snapshot (taken every 0.5 s, so at most 10 ticks back), not from 0, one by one
        after = [t["tick"] for t in ticks[seen:]]
        assert before - 10 <= after[0] <= before
        assert after == list(range(after[0], after[0] + len(after)))
        assert len(after) >= 15
        p = player(ticks[-1], "p1")
        assert p is not None and p["dy"] == 1


async def test_an_idle_arena_deactivates_and_comes_back_from_its_snapshot(
        autojump_clock: trio.testing.MockClock) -> None:
    async with arena("i") as (rooms, _ticks):
        await rooms.call(Arena, "i", {"op": "join", "id": "p1", "name": "Ann"})
        await rooms.cast(Arena, "i", {"op": "leave", "id": "p1"})
        await trio.sleep(1.0)
        tick = (await rooms.call(Arena, "i", {"op": "state"}))["state"]["tick"]
        await trio.sleep(Arena.idle_timeout + 1)
        assert not rooms.is_active(Arena, "i")
        again = (await rooms.call(Arena, "i", {"op": "join", "id": "p2", "name": "Bo"}))["state"]
        # handed off with a snapshot at the end: the tick count goes on from there
        assert again["tick"] >= tick + (Arena.idle_timeout - 1) * logic.TICK_RATE
        assert [p["id"] for p in again["players"]] == ["p2"]
        assert rooms.stats()["restored"] == 1
