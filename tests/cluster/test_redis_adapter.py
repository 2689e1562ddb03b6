"""The Redis adapter: nodes share broadcasts; names are unique; faults are survived.

Every test starts its own redis-server on a free loopback port (see ``redis_server.py``) and
runs two or three nodes (``PubSub(RedisAdapter(...))``) in one process. Waits are on events
(deliveries, log records, reconnect hooks) under ``trio.fail_after``; "nothing else arrived" is
checked with a fence: a later message on the same path, which Redis delivers in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from channels.pubsub import CallbackSubscriber, PubSub
from channels.redis import (
    MODE_EXCEPT,
    MODE_ONLY,
    MalformedEnvelope,
    NodeNameInUse,
    RedisAdapter,
    UnknownEnvelopeVersion,
    build_envelope,
    decode_envelope,
    pack_message,
)
from tests.cluster.redis_server import RedisServer

NS = "test"
WAIT = 10.0
# Short liveness and backoff so faults resolve in well under a second.
FAST: dict[str, Any] = {
    "namespace": NS,
    "liveness_ttl": 0.6,
    "liveness_interval": 0.1,
    "backoff_min": 0.05,
    "backoff_max": 0.4,
    "keepalive_interval": 1.0,
}


# -- helpers ---------------------------------------------------------------------------------

class Recorder(CallbackSubscriber):
    """Records deliveries; :meth:`wait` blocks until ``n`` arrived."""

    def __init__(self) -> None:
        super().__init__(self._record)
        self.events: list[tuple[str, str, Any]] = []
        self._changed = trio.Event()

    def _record(self, topic: str, event: str, payload: Any) -> None:
        self.events.append((topic, event, payload))
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, n: int) -> None:
        with trio.fail_after(WAIT):
            while len(self.events) < n:
                await self._changed.wait()

    @property
    def names(self) -> list[str]:
        return [event for _, event, _ in self.events]


class LogWatcher(logging.Handler):
    """Collects ``channels.redis`` log messages; lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()
        self._changed = trio.Event()

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)

    async def wait_for(self, text: str, count: int = 1) -> None:
        with trio.fail_after(WAIT):
            while self.count(text) < count:
                await self._changed.wait()


@dataclass
class Node:
    pubsub: PubSub
    adapter: RedisAdapter
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(WAIT):
            await self.done.wait()


def make_pubsub(url: str, name: str, **options: Any) -> PubSub:
    return PubSub(RedisAdapter(url, node_name=name, **{**FAST, **options}))


async def start_node(nursery: trio.Nursery, url: str, name: str, **options: Any) -> Node:
    """Run a node in ``nursery`` (anything ``run`` raises fails the test) and wait until up."""
    pubsub = make_pubsub(url, name, **options)
    done = trio.Event()

    async def runner(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    await inner.start(pubsub.run)
                    task_status.started(scope)
        finally:
            done.set()

    with trio.fail_after(WAIT):
        scope = await nursery.start(runner)
        adapter = pubsub.adapter
        assert isinstance(adapter, RedisAdapter)
        # run() reports started after the first attempt, even when Redis is away.
        while not adapter.connected:  # noqa: ASYNC110 - the adapter has no "connected" event
            await trio.sleep(0.01)
    return Node(pubsub, adapter, scope, done)


async def reconnected(node: Node) -> trio.Event:
    event = trio.Event()
    node.adapter.on_reconnect.append(event.set)
    return event


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    watcher = LogWatcher()
    logger = logging.getLogger("channels.redis")
    logger.addHandler(watcher)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)


# -- envelope codec --------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(st.tuples(st.text(), st.text(), json_like), max_size=5))
def test_envelope_round_trips_json_like_payloads_exactly(
        messages: list[tuple[str, str, Any]]) -> None:
    data = build_envelope("a", "inc1", MODE_EXCEPT, "a",
                          [pack_message(t, e, p) for t, e, p in messages])
    envelope = decode_envelope(data)
    assert (envelope.sender, envelope.incarnation, envelope.mode, envelope.target) == \
        ("a", "inc1", MODE_EXCEPT, "a")
    # repr tells True from 1, 1.0 from 1 and bytes from str.
    assert repr(envelope.messages) == repr(messages)


junk = st.one_of(
    st.binary(max_size=64),
    json_like.map(msgpack.packb),
    st.lists(json_like, max_size=6).map(lambda fields: msgpack.packb([1, *fields])),
)


@given(junk)
def test_decoding_junk_raises_only_envelope_errors(data: bytes) -> None:
    try:
        decode_envelope(data)
    except (MalformedEnvelope, UnknownEnvelopeVersion):
        pass


def test_own_broadcasts_and_others_direct_messages_are_not_decoded() -> None:
    items = [pack_message("t", "e", {"x": 1})]
    own = build_envelope("a", "i", MODE_EXCEPT, "a", items)
    assert decode_envelope(own, skip_sender="a").messages == []
    assert decode_envelope(own, skip_sender="b").messages == [("t", "e", {"x": 1})]
    to_b = build_envelope("a", "i", MODE_ONLY, "b", items)
    assert decode_envelope(to_b, skip_sender="c").messages == []
    assert decode_envelope(to_b, skip_sender="b").messages == [("t", "e", {"x": 1})]
    with pytest.raises(UnknownEnvelopeVersion):
        decode_envelope(msgpack.packb([2, "a", "i", MODE_EXCEPT, "a", []]))


# -- delivery --------------------------------------------------------------------------------

async def test_broadcast_reaches_the_other_node_once_and_is_not_echoed(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    ra, rb, fence_a, fence_b = Recorder(), Recorder(), Recorder(), Recorder()
    a.pubsub.subscribe("room:1", ra)
    b.pubsub.subscribe("room:1", rb)
    a.pubsub.subscribe("fence:a", fence_a)
    b.pubsub.subscribe("fence:b", fence_b)

    await a.pubsub.broadcast("room:1", "new_msg", {"body": "hi"})
    assert ra.events == [("room:1", "new_msg", {"body": "hi"})]  # local delivery, synchronous
    await rb.wait(1)
    # A's own envelope came back to A before this direct fence; B got its copy before this one.
    await a.adapter.direct("a", "fence:a", "fence", {})
    await a.pubsub.broadcast("fence:b", "fence", {})
    await fence_a.wait(1)
    await fence_b.wait(1)

    assert ra.events == [("room:1", "new_msg", {"body": "hi"})]
    assert rb.events == [("room:1", "new_msg", {"body": "hi"})]
    assert a.adapter.received == 1  # the fence only
    assert b.adapter.received == 2
    assert a.adapter.dropped == 0


async def test_payloads_round_trip_between_nodes(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    rb = Recorder()
    b.pubsub.subscribe("room", rb)
    payloads: list[Any] = [
        b"\x00\xff binary \x80",
        {"text": "héllo ✓", "n": 2**63 - 1, "neg": -(2**63), "f": 0.1, "t": True, "no": None,
         "list": [1, "two", [3.0], {"four": b"\x04"}], "empty": {}},
        {},
    ]
    for payload in payloads:
        await a.pubsub.broadcast("room", "e", payload)
    await rb.wait(len(payloads))
    assert repr([p for _, _, p in rb.events]) == repr(payloads)
    assert type(rb.events[0][2]) is bytes

    # Not msgpack-able: still delivered locally, dropped (counted) for other nodes, no raise.
    ra = Recorder()
    a.pubsub.subscribe("room", ra)
    await a.pubsub.broadcast("room", "odd", {"s": {1, 2}})
    assert ra.names == ["odd"] and a.adapter.dropped == 1


async def test_direct_reaches_only_its_target(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    nodes = {name: await start_node(nursery, redis_server.url, name) for name in "abc"}
    rec = {name: Recorder() for name in nodes}
    fences = {name: Recorder() for name in nodes}
    for name, node in nodes.items():
        node.pubsub.subscribe("t", rec[name])
        node.pubsub.subscribe("fence", fences[name])

    await nodes["a"].pubsub.direct_broadcast("b", "t", "only_b", {"n": 1})
    await nodes["a"].adapter.direct("a", "fence", "f", {})
    await nodes["a"].pubsub.broadcast("fence", "f", {})
    for name in nodes:
        await fences[name].wait(1)

    assert rec["b"].events == [("t", "only_b", {"n": 1})]
    assert rec["a"].events == [] and rec["c"].events == []


async def test_order_is_preserved_and_broadcasts_are_coalesced(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    rb = Recorder()
    b.pubsub.subscribe("room", rb)
    calls_before = a.adapter.publish_calls
    for i in range(1000):
        await a.pubsub.broadcast("room", "n", {"i": i})
    await rb.wait(1000)
    assert [p["i"] for _, _, p in rb.events] == list(range(1000))
    # The publisher sends one batch at a time: once B has this fence, A has counted the rest.
    await a.pubsub.broadcast("room", "fence", {})
    await rb.wait(1001)
    calls = a.adapter.publish_calls - calls_before
    # The loop never yields, so the publisher finds all 1,000 queued: one PUBLISH in practice.
    assert calls <= 10, calls
    assert a.adapter.published == 1001 and b.adapter.received == 1001


async def test_full_queue_drops_the_excess_and_keeps_order(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    a = await start_node(nursery, redis_server.url, "a", max_queue=100)
    b = await start_node(nursery, redis_server.url, "b")
    rb = Recorder()
    b.pubsub.subscribe("room", rb)
    for i in range(300):
        await a.pubsub.broadcast("room", "n", {"i": i})
    assert a.adapter.dropped == 200
    await rb.wait(100)
    await a.pubsub.broadcast("room", "n", {"i": "fence"})
    await rb.wait(101)
    assert [p["i"] for _, _, p in rb.events] == [*range(100), "fence"]


# -- node names ------------------------------------------------------------------------------

async def test_duplicate_node_name_is_refused_while_the_owner_lives(
        nursery: trio.Nursery, redis_server: RedisServer, logs: LogWatcher) -> None:
    key = f"{NS}:alive:dup"
    first = await start_node(nursery, redis_server.url, "dup")
    second = make_pubsub(redis_server.url, "dup")
    with trio.fail_after(WAIT), pytest.raises(NodeNameInUse, match="in use by a live node"):
        await nursery.start(second.run)
    assert logs.count("is held by incarnation") == 1
    assert redis_server.command("GET", key) == first.adapter.incarnation.encode()

    # A stopped node gives its name back at once: the next owner does not wait.
    await first.stop()
    assert redis_server.command("GET", key) is None
    third = await start_node(nursery, redis_server.url, "dup")
    assert logs.count("is held by incarnation") == 1
    assert redis_server.command("GET", key) == third.adapter.incarnation.encode()


async def test_name_of_a_crashed_node_is_taken_over_once_its_key_lapses(
        nursery: trio.Nursery, redis_server: RedisServer, logs: LogWatcher) -> None:
    key = f"{NS}:alive:phoenix"
    # What a kill -9'd node leaves behind: its key, no longer refreshed.
    redis_server.command("SET", key, "deadbeef", "PX", 400)
    node = await start_node(nursery, redis_server.url, "phoenix")
    assert logs.count("is held by incarnation deadbeef") == 1
    assert logs.count("took over node name 'phoenix'") == 1
    assert redis_server.command("GET", key) == node.adapter.incarnation.encode()


# -- faults ----------------------------------------------------------------------------------

async def test_starting_before_redis_is_up_retries_then_works(
        nursery: trio.Nursery, logs: LogWatcher) -> None:
    server = RedisServer()  # picks a free port, not started yet
    try:
        nodes: list[Node] = []
        up = trio.Event()

        async def start_a() -> None:
            nodes.append(await start_node(nursery, server.url, "a"))
            up.set()

        nursery.start_soon(start_a)
        await logs.wait_for(f"redis unreachable at {server.url}", count=3)
        assert logs.count("retrying in") >= 3 and not up.is_set()
        # The node did not wait for Redis: it serves its local clients meanwhile, once said.
        assert logs.count("serving local clients meanwhile") == 1

        await trio.to_thread.run_sync(server.start)
        with trio.fail_after(WAIT):
            await up.wait()
        b = await start_node(nursery, server.url, "b")
        rb = Recorder()
        b.pubsub.subscribe("room", rb)
        await nodes[0].pubsub.broadcast("room", "hello", {})
        await rb.wait(1)
        for node in (*nodes, b):
            await node.stop()
    finally:
        server.close()


async def test_killed_pubsub_connections_resubscribe(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    back_a = await reconnected(a)
    back_b = trio.Event()

    async def async_hook() -> None:
        back_b.set()

    b.adapter.on_reconnect.append(async_hook)
    ra, rb = Recorder(), Recorder()
    a.pubsub.subscribe("room", ra)
    b.pubsub.subscribe("room", rb)

    assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
    with trio.fail_after(WAIT):
        await back_a.wait()
        await back_b.wait()
    assert a.adapter.reconnects == 1 and b.adapter.reconnects == 1
    assert a.adapter.connected and b.adapter.connected

    await a.pubsub.broadcast("room", "from_a", {})
    await b.pubsub.broadcast("room", "from_b", {})
    await rb.wait(2)
    await ra.wait(2)
    assert sorted(rb.names) == ["from_a", "from_b"]
    assert sorted(ra.names) == ["from_a", "from_b"]


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
async def test_redis_restart_drops_while_away_then_resumes(
        nursery: trio.Nursery, redis_server: RedisServer, logs: LogWatcher,
        crash: bool) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    ra, rb = Recorder(), Recorder()
    a.pubsub.subscribe("room", ra)
    b.pubsub.subscribe("room", rb)
    await a.pubsub.broadcast("room", "before", {})
    await rb.wait(1)
    back_a, back_b = await reconnected(a), await reconnected(b)

    await trio.to_thread.run_sync(lambda: redis_server.stop(kill=crash))
    await logs.wait_for("redis connection lost", count=2)
    assert not a.adapter.connected and not b.adapter.connected

    # Away from Redis: local delivery goes on, other nodes miss it, nothing blocks or raises.
    dropped = a.adapter.dropped
    with trio.fail_after(1):
        await a.pubsub.broadcast("room", "while_away", {})
    assert ra.names == ["before", "while_away"]
    assert a.adapter.dropped == dropped + 1

    await trio.to_thread.run_sync(redis_server.start)
    with trio.fail_after(WAIT):
        await back_a.wait()
        await back_b.wait()
    # The restarted Redis is empty: each node claimed its name again.
    assert redis_server.command("GET", f"{NS}:alive:a") == a.adapter.incarnation.encode()
    await a.pubsub.broadcast("room", "after", {})
    await rb.wait(2)
    assert rb.names == ["before", "after"]


async def test_malformed_envelopes_and_failing_subscribers_do_not_stop_the_loop(
        nursery: trio.Nursery, redis_server: RedisServer, logs: LogWatcher) -> None:
    a = await start_node(nursery, redis_server.url, "a")
    b = await start_node(nursery, redis_server.url, "b")
    rb = Recorder()

    def explode(topic: str, event: str, payload: Any) -> None:
        raise RuntimeError("subscriber bug")

    b.pubsub.subscribe("bug", CallbackSubscriber(explode))
    b.pubsub.subscribe("room", rb)
    channel = f"{NS}:bc"
    future = msgpack.packb([99, "z", "i", MODE_EXCEPT, "z", [["room", "e", {}]]])
    for junk in (b"\xc1 not msgpack", future, future, msgpack.packb({"v": 1}),
                 msgpack.packb([1, "z", "i", "sideways", "z", []])):
        assert redis_server.command("PUBLISH", channel, junk) == 2

    # One envelope holding a message whose subscriber raises, then a good one after it.
    await a.pubsub.broadcast("bug", "boom", {})
    await a.pubsub.broadcast("room", "ok", {})
    await rb.wait(1)
    assert rb.names == ["ok"]
    assert b.adapter.malformed == 5 and b.adapter.connected
    assert b.adapter.received == 2
    fence = Recorder()
    a.pubsub.subscribe("fence", fence)
    await a.adapter.direct("a", "fence", "f", {})
    await fence.wait(1)
    assert a.adapter.malformed == 5  # a sees the junk too, and skips it as well
    assert logs.count("unknown format version 99") == 2  # once per node, not per envelope
    # PubSub itself isolates (and logs) a failing subscriber; the loop carried on (see "ok")
