"""Recovering joins of one topic that wait at the same time share one read of a shared store.

When a node dies its clients come back at once, on other nodes: thousands of recovering joins
of the same topics. Each join subscribes, then reads what it missed; the joins of a topic that
wait at the same time share a read, but never one that began before they subscribed (it
could miss a broadcast stored in between). The store here is the memory store behind a gate,
standing in for Redis (a store the service treats as shared), so the tests decide when a read
completes; clocks are trio's MockClock.
"""

from __future__ import annotations

from typing import Any

import trio

from channels.history import (
    Entry,
    History,
    HistoryService,
    HistoryStore,
    MemoryHistoryStore,
    Stored,
)
from channels.pubsub import PubSub

TOPIC = "feed:crowd"
CONFIG = History(size=100, ttl=600)


class GatedStore(HistoryStore):
    """A memory store whose reads wait until the test opens the gate; counts reads.
    ``keep`` entries are kept whatever the history's size (as Redis's approximate trim may)."""

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self.inner = MemoryHistoryStore()
        self.gate = trio.Event()
        self.reads: list[tuple[int, int]] = []  # (offset, limit)
        self.waiting = 0

    async def append(self, topic: str, config: History, event: str, payload: Any,
                     stored: Stored | None = None) -> tuple[str, int]:
        if self.keep is not None:
            config = History(size=self.keep, ttl=config.ttl)
        return await self.inner.append(topic, config, event, payload, stored)

    async def since(self, topic: str, offset: int, config: History,
                    limit: int) -> tuple[str, int, list[Entry]]:
        self.reads.append((offset, limit))
        # The position is read as the read begins; the gate holds only its answer back.
        result = await self.inner.since(topic, offset, config, limit)
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return result

    async def reset(self, topic: str) -> None:
        await self.inner.reset(topic)


async def start(nursery: trio.Nursery, config: History = CONFIG,
                keep: int | None = None) -> tuple[HistoryService, GatedStore, PubSub]:
    store = GatedStore(keep)
    store.gate.set()
    pubsub = PubSub()
    service = HistoryService([("feed:*", config)], store=store)
    service.attach(pubsub)
    await nursery.start(service.run)
    return service, store, pubsub


async def test_a_crowd_of_recovering_joins_shares_one_read(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    service, store, pubsub = await start(nursery)
    for n in range(1, 31):
        await pubsub.broadcast(TOPIC, "post", {"n": n})
    epoch = store.inner.epoch
    store.gate = trio.Event()
    store.reads.clear()
    plans: dict[int, Any] = {}

    async def join(i: int, offset: int) -> None:
        plans[i] = await service.recover(TOPIC, CONFIG, {"epoch": epoch, "offset": offset})

    async with trio.open_nursery() as joins:
        for i in range(300):
            joins.start_soon(join, i, 10 + i % 20)  # positions 10..29
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
    assert len(store.reads) == 1
    assert store.reads[0] == (10, CONFIG.size + 19)  # from the oldest position, far enough
    for i, plan in plans.items():
        offset = 10 + i % 20
        assert plan.recovered and plan.offset == 30
        assert [e.offset for e in plan.replay] == list(range(offset + 1, 31))
        assert [e.payload["n"] for e in plan.replay] == list(range(offset + 1, 31))
    stats = service.stats()
    assert (stats["shared_reads"], stats["shared_read_misses"], stats["recoveries"]) == (1, 0, 300)


async def test_a_join_never_shares_a_read_that_began_before_it_subscribed(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    service, store, pubsub = await start(nursery)
    for n in range(1, 6):
        await pubsub.broadcast(TOPIC, "post", {"n": n})
    epoch = store.inner.epoch
    store.gate = trio.Event()
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}

    async def join(into: dict[str, Any], wanted: Any) -> None:
        into["plan"] = await service.recover(TOPIC, CONFIG, wanted)

    nursery.start_soon(join, first, {"epoch": epoch, "offset": 2})
    await trio.testing.wait_all_tasks_blocked()
    assert store.waiting == 1  # the first join's read has begun (and read top 5)
    await pubsub.broadcast(TOPIC, "post", {"n": 6})  # stored while that read is out
    # Two later joins (a recovering one, a first one) subscribed after that read began.
    nursery.start_soon(join, second, {"epoch": epoch, "offset": 2})
    third: dict[str, Any] = {}
    nursery.start_soon(join, third, None)
    await trio.testing.wait_all_tasks_blocked()
    assert len(store.reads) == 1  # they wait for a read of their own, after that one
    store.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(store.reads) == 2
    assert [e.offset for e in first["plan"].replay] == [3, 4, 5]
    assert first["plan"].offset == 5
    assert [e.offset for e in second["plan"].replay] == [3, 4, 5, 6]
    assert second["plan"].offset == 6 and third["plan"].offset == 6
    assert not third["plan"].replay and not third["plan"].recovered


async def test_joins_a_shared_read_does_not_cover_read_on_their_own(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    config = History(size=10, ttl=600)
    # The stream keeps all 100 though the history's size is 10 (Redis trims approximately).
    service, store, pubsub = await start(nursery, config, keep=1000)
    for n in range(1, 101):
        await pubsub.broadcast(TOPIC, "post", {"n": n})
    epoch = store.inner.epoch
    store.gate = trio.Event()
    store.reads.clear()
    plans: dict[int, Any] = {}

    async def join(offset: int) -> None:
        plans[offset] = await service.recover(TOPIC, config, {"epoch": epoch, "offset": offset})

    async with trio.open_nursery() as joins:
        for offset in (1, 95):  # one far outside the history's size, one inside
            joins.start_soon(join, offset)
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
    # The shared read (from offset 1, at most 4 x size entries) stops at 41: neither join is
    # covered, so each reads on its own, from its own position.
    assert store.reads == [(1, 40), (1, 10), (95, 10)] or \
        store.reads == [(1, 40), (95, 10), (1, 10)]
    assert not plans[1].recovered and plans[1].reason == "position older than the history"
    assert plans[95].recovered and [e.offset for e in plans[95].replay] == [96, 97, 98, 99, 100]
    assert service.stats()["shared_read_misses"] == 2
