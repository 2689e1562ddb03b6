"""Rooms on one node (the in-memory store), on trio's MockClock: activation, supervision,
timers, idle deactivation, handoff and bad input. No sockets."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from channels import (
    BadRoomKey,
    CallbackSubscriber,
    Endpoint,
    Room,
    RoomCrashed,
    RoomGaveUp,
    Rooms,
    RoomTimeout,
    RoomUnavailable,
    UnknownRoom,
)

EVENTS: list[tuple[str, str, Any]] = []


class Counter(Room):
    idle_timeout = 30.0
    snapshot_interval = 0.5
    inits = 0

    async def init(self) -> None:
        type(self).inits += 1
        self.count = 0
        self.restored_from: Any = None

    def snapshot(self) -> Any:
        return {"count": self.count}

    def restore(self, data: Any) -> None:
        self.restored_from = data
        self.count = data["count"]

    async def handle_call(self, message: Any) -> Any:
        if message == "get":
            return self.count
        if message == "crash":
            raise RuntimeError("boom")
        if message == "hang":
            await trio.sleep_forever()
        if message == "restored":
            return self.restored_from
        if message == "save":
            return await self.save()
        self.count += message
        return self.count

    async def handle_cast(self, message: Any) -> None:
        self.count += message

    async def terminate(self, reason: str) -> None:
        EVENTS.append(("terminate", self.key, reason))


class Ticker(Room):
    idle_timeout = None

    async def init(self) -> None:
        self.times: list[float] = []
        self.slow_at: int | None = None
        self.ref = self.interval(0.05, "tick")

    async def handle_info(self, message: Any) -> None:
        if message == "tick":
            self.times.append(trio.current_time())
            await trio.sleep(0.01)  # work that takes a fifth of the period
            if self.slow_at is not None and len(self.times) == self.slow_at:
                await trio.sleep(0.2)  # 0.21 s in all: three ticks are skipped
            if len(self.times) % 10 == 0:
                await self.broadcast("game:1", "tick", {"n": len(self.times)})

    async def handle_call(self, message: Any) -> Any:
        if message == "slow":
            self.slow_at = len(self.times) + 3
            return None
        return {"ticks": len(self.times), "times": self.times, "overruns": self.ref.overruns}


class NotSnapshottable(Room):
    async def init(self) -> None:
        self.n = 0

    def snapshot(self) -> Any:
        return {"a set": {1, 2}}

    async def handle_call(self, message: Any) -> Any:
        self.n += 1
        return self.n


class Unregistered(Room):
    pass


@asynccontextmanager
async def running(*classes: type[Room], **options: Any) -> AsyncIterator[tuple[Rooms, Endpoint]]:
    rooms = Rooms(*classes, **options)
    endpoint = Endpoint({}, rooms=rooms)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.pubsub.run)
        await nursery.start(rooms.run)
        yield rooms, endpoint
        nursery.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()
    Counter.inits = 0


async def test_call_activates_once_and_keeps_state(autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        assert await rooms.call(Counter, "a", 2) == 2
        assert await rooms.call(Counter, "a", 3) == 5
        assert await rooms.call(Counter, "b", 1) == 1
        await rooms.cast(Counter, "a", 10)
        assert await rooms.call(Counter, "a", "get") == 15
        assert rooms.is_active(Counter, "a")
        assert Counter.inits == 2
        assert rooms.stats()["activations"] == 2


async def test_concurrent_first_calls_start_one_activation(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        results: list[int] = []

        async def one() -> None:
            results.append(await rooms.call(Counter, "hot", 1))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        assert sorted(results) == list(range(1, 101))
        assert Counter.inits == 1
        assert rooms.stats()["activations"] == 1


async def test_crash_restarts_from_the_last_snapshot(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async with running(Counter) as (rooms, _):
        assert await rooms.call(Counter, "c", 7) == 7
        await trio.sleep(1.0)  # a snapshot is taken every 0.5 s
        with pytest.raises(RoomCrashed) as info:
            await rooms.call(Counter, "c", "crash")
        assert isinstance(info.value.__cause__, RuntimeError)
        assert await rooms.call(Counter, "c", "restored") == {"count": 7}
        assert await rooms.call(Counter, "c", "get") == 7
        assert rooms.stats()["crashes"] == 1
        assert any("room Counter:c crashed" in r.message for r in caplog.records)
        # Other rooms never noticed.
        assert await rooms.call(Counter, "other", 1) == 1


async def test_too_many_crashes_give_up_then_recover(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        for _ in range(Counter.max_restarts + 1):
            with pytest.raises((RoomCrashed, RoomGaveUp)):
                await rooms.call(Counter, "d", "crash")
        with pytest.raises(RoomGaveUp):
            await rooms.call(Counter, "d", 1)
        assert rooms.stats()["gave_up"] == 1
        assert await rooms.call(Counter, "e", 1) == 1  # others unaffected
        await trio.sleep(Counter.restart_period + 0.1)
        assert await rooms.call(Counter, "d", 1) == 1


async def test_a_call_that_never_returns_times_out_and_the_room_serves_on(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        assert await rooms.call(Counter, "h", 1) == 1
        with pytest.raises(RoomTimeout):
            await rooms.call(Counter, "h", "hang", timeout=1.0)
        # The handler is cancelled after handler_timeout; the room goes on.
        assert await rooms.call(Counter, "h", 1, timeout=10.0) == 2


async def test_idle_rooms_deactivate_and_come_back_from_their_snapshot(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        assert await rooms.call(Counter, "i", 4) == 4
        await trio.sleep(Counter.idle_timeout + 1)
        assert ("terminate", "i", "idle") in EVENTS
        assert not rooms.is_active(Counter, "i")
        assert await rooms.call(Counter, "i", "restored") == {"count": 4}
        assert Counter.inits == 2


async def test_interval_is_fixed_rate_and_reports_overruns(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(Ticker) as (rooms, endpoint):
        got: list[Any] = []
        endpoint.subscribe("game:1", CallbackSubscriber(lambda t, e, p: got.append(p)))
        await rooms.call(Ticker, "t", "stats")
        await trio.sleep(10.0)
        stats = await rooms.call(Ticker, "t", "stats")
        times = stats["times"]
        # 20 Hz for 10 s whatever each tick costs: no drift.
        assert 199 <= stats["ticks"] <= 201
        start = times[0]
        assert all(abs((t - start) - i * 0.05) < 1e-6 for i, t in enumerate(times))
        assert stats["overruns"] == 0
        assert got[:2] == [{"n": 10}, {"n": 20}]
        await rooms.call(Ticker, "t", "slow")
        await trio.sleep(1.0)
        stats = await rooms.call(Ticker, "t", "stats")
        assert stats["overruns"] == 3
        later = stats["times"][-5:]
        assert all(abs((b - a) - 0.05) < 1e-6 for a, b in itertools.pairwise(later))


async def test_bad_input_gets_clear_errors(autojump_clock: trio.testing.MockClock,
                                           caplog: pytest.LogCaptureFixture) -> None:
    async with running(Counter, NotSnapshottable) as (rooms, _):
        with pytest.raises(UnknownRoom, match="not registered"):
            await rooms.call(Unregistered, "x", 1)
        for key in ("", 42, "k" * 513):
            with pytest.raises(BadRoomKey):
                await rooms.call(Counter, key, 1)  # type: ignore[arg-type]
        caplog.clear()
        assert await rooms.call(NotSnapshottable, "n", None) == 1
        await trio.sleep(3.0)
        assert await rooms.call(NotSnapshottable, "n", None) == 2
        errors = [r for r in caplog.records if "not msgpack-able" in r.message]
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR


async def test_shutdown_hands_rooms_off(autojump_clock: trio.testing.MockClock) -> None:
    async with running(Counter) as (rooms, _):
        assert await rooms.call(Counter, "s", 9) == 9
        assert await rooms.call(Counter, "s", "save") is True
        await rooms.shutdown()
        assert ("terminate", "s", "shutdown") in EVENTS
        assert not rooms.is_active(Counter, "s")
        with pytest.raises(RoomUnavailable):
            await rooms.call(Counter, "s", "get")
        assert rooms.store is not None
        assert await rooms.store.load("Counter:s") is not None


async def test_lifecycle_order_and_supervised_services(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    order: list[str] = []
    crashes = 0

    @asynccontextmanager
    async def lifespan(ep: Endpoint) -> AsyncIterator[None]:
        order.append("lifespan enter")
        yield
        order.append("lifespan exit")

    class Tracked(Room):
        async def handle_call(self, message: Any) -> Any:
            return message

        async def terminate(self, reason: str) -> None:
            order.append(f"room {reason}")

    rooms = Rooms(Tracked)
    endpoint = Endpoint({}, rooms=rooms, lifespan=lifespan)

    @endpoint.on_startup
    async def started(ep: Endpoint) -> None:
        order.append("startup")

    @endpoint.on_shutdown
    def stopped(ep: Endpoint) -> None:
        order.append("shutdown")

    async def flaky() -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("flaky service")

    async def steady() -> None:
        try:
            await trio.sleep_forever()
        finally:
            order.append("service stopped")

    endpoint.service(flaky, max_restarts=2, period=60)
    endpoint.service(steady)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.serve, "127.0.0.1", 0)
        assert await rooms.call(Tracked, "k", "hi") == "hi"
        await trio.sleep(10)
        assert crashes == 3  # two restarts, then it gives up; the node serves on
        assert endpoint.services[0].gave_up
        assert await rooms.call(Tracked, "k", "still") == "still"
        await endpoint.drain()
    assert order == ["lifespan enter", "startup", "room shutdown", "service stopped",
                     "shutdown", "lifespan exit"]
    assert any("giving up" in r.message for r in caplog.records)
