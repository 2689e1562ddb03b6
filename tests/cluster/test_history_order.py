"""History on Redis with many publishers at once: every node delivers every offset once, in order.

Appends queued together go to Redis in one pipeline and come back in offset order; the tasks
that waited for them resume in whatever order trio picks. These tests broadcast from many
tasks at once (one node, then two nodes) and check that subscribers see offsets 1..N with no
gap and no duplicate: nothing may depend on the order the broadcasting tasks resume in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from channels.history import History, HistoryService
from channels.pubsub import PubSub
from tests.cluster.redis_server import RedisServer
from tests.cluster.test_redis_adapter import WAIT, Recorder, make_pubsub

TOPIC = "feed:order"
CONFIG = History(size=1000, ttl=60)
PUBLISHERS, EACH = 16, 20


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def start_node(nursery: trio.Nursery, url: str, name: str) -> tuple[PubSub, HistoryService]:
    pubsub = make_pubsub(url, name)
    service = HistoryService([("feed:*", CONFIG)])
    service.attach(pubsub)
    with trio.fail_after(WAIT):
        await nursery.start(pubsub.run)
        await nursery.start(service.run)
    return pubsub, service


async def publish_all(nursery: trio.Nursery, pubsubs: list[PubSub]) -> None:
    """``PUBLISHERS`` tasks spread over ``pubsubs``, each broadcasting ``EACH`` at once."""
    async def publisher(pubsub: PubSub, who: int) -> None:
        for n in range(EACH):
            await pubsub.broadcast(TOPIC, "post", {"who": who, "n": n})

    async with trio.open_nursery() as inner:
        for who in range(PUBLISHERS):
            inner.start_soon(publisher, pubsubs[who % len(pubsubs)], who)


def offsets(recorder: Recorder) -> list[int]:
    return [int(payload["phx_pos"]["offset"]) for _, _, payload in recorder.events]


def per_publisher_order(recorder: Recorder) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for _, _, payload in recorder.events:
        seen.setdefault(int(payload["who"]), []).append(int(payload["n"]))
    return seen


async def test_one_node_many_publishers_every_offset_once_in_order(
        redis: RedisServer, nursery: trio.Nursery) -> None:
    pubsub, service = await start_node(nursery, redis.url, "n1")
    recorder = Recorder()
    pubsub.subscribe(TOPIC, recorder)
    await publish_all(nursery, [pubsub])
    total = PUBLISHERS * EACH
    await recorder.wait(total)
    assert offsets(recorder) == list(range(1, total + 1))
    assert all(ns == list(range(EACH)) for ns in per_publisher_order(recorder).values())
    # No gap had to be read back from Redis: the node's own appends arrive in order.
    stats: dict[str, Any] = service.stats()
    assert (stats["duplicates"], stats["gaps_filled"], stats["lost"]) == (0, 0, 0)


async def test_two_nodes_many_publishers_every_node_gets_every_offset(
        redis: RedisServer, nursery: trio.Nursery) -> None:
    nodes = {name: await start_node(nursery, redis.url, name) for name in "abc"}
    recorders = {name: Recorder() for name in "abc"}
    for name, (pubsub, service) in nodes.items():
        pubsub.subscribe(TOPIC, recorders[name])
        # Each node serves a join first, as a channel would: where the topic stands when it
        # is joined is where the node's delivery starts, whichever node's broadcast (its
        # own or another's) reaches it first.
        plan = await service.recover(TOPIC, CONFIG, None)
        assert (plan.recovered, plan.offset) == (False, 0)
    await publish_all(nursery, [nodes["a"][0], nodes["b"][0]])
    total = PUBLISHERS * EACH
    for name, recorder in recorders.items():
        await recorder.wait(total)
        assert offsets(recorder) == list(range(1, total + 1)), name
        assert all(ns == list(range(EACH)) for ns in per_publisher_order(recorder).values())
    # A fence: nothing more arrives after a last broadcast (no duplicates trailing behind).
    await nodes["a"][0].broadcast(TOPIC, "post", {"who": -1, "n": 0})
    for recorder in recorders.values():
        await recorder.wait(total + 1)
        assert offsets(recorder)[-1] == total + 1 and len(recorder.events) == total + 1
