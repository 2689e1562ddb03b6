"""A simulated cluster bus for tracker tests: one fake adapter per node, one PubSub per node.

Every message is round-tripped through msgpack (as the Redis adapter does) and delivered after
a delay to the receiving node's ``PubSub.local_broadcast``. The bus can drop, duplicate, delay
(and so reorder) messages and cut links; every send is logged for assertions. Meant for trio's
``MockClock``: delays are virtual time.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from channels.pubsub import Adapter, PubSub
from presence.state import Meta
from presence.tracker import Tracker


@dataclass
class Sent:
    """One message handed to the bus (before loss): ``dst`` is None for a broadcast."""

    at: float
    src: str
    dst: str | None
    topic: str
    event: str
    payload: Any


class SimBus:
    """The network. ``loss``/``dup`` are probabilities per delivery; ``delay`` is a range."""

    def __init__(
        self, nursery: trio.Nursery, *, seed: int = 0, delay: tuple[float, float] = (0.01, 0.01)
    ) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.delay = delay
        self.loss = 0.0
        self.dup = 0.0
        self.nodes: dict[str, PubSub] = {}
        self.sent: list[Sent] = []
        self._cut: set[frozenset[str]] = set()
        self._held: dict[tuple[str, str, str], list[bytes]] = {}

    # -- faults --------------------------------------------------------------------------------

    def partition(self, *groups: set[str]) -> None:
        """Cut every link between nodes of different groups."""
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self._cut.add(frozenset((x, y)))

    def heal(self) -> None:
        self._cut.clear()

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self._cut

    def hold(self, src: str, dst: str, event: str) -> None:
        """Park ``event`` messages from ``src`` to ``dst`` until :meth:`release`."""
        self._held.setdefault((src, dst, event), [])

    def release(self, src: str, dst: str, event: str) -> int:
        """Deliver the parked messages (in order, after the usual delay); returns how many."""
        held = self._held.pop((src, dst, event), [])
        for data in held:
            self.nursery.start_soon(self._deliver, src, dst, data, self.rng.uniform(*self.delay))
        return len(held)

    # -- transport -----------------------------------------------------------------------------

    def send(self, src: str, dst: str | None, topic: str, event: str, payload: Any) -> None:
        self.sent.append(Sent(trio.current_time(), src, dst, topic, event, payload))
        data = msgpack.packb([topic, event, payload], use_bin_type=True)
        targets = [n for n in self.nodes if n != src] if dst is None else [dst]
        for node in targets:
            if not self.linked(src, node) or self.rng.random() < self.loss:
                continue
            held = self._held.get((src, node, event))
            if held is not None:
                held.append(data)
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                self.nursery.start_soon(
                    self._deliver, src, node, data, self.rng.uniform(*self.delay)
                )

    async def _deliver(self, src: str, node: str, data: bytes, delay: float) -> None:
        await trio.sleep(delay)
        pubsub = self.nodes.get(node)
        # A link cut while the message was in flight loses it too.
        if pubsub is None or not self.linked(src, node):
            return
        topic, event, payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
        await pubsub.local_broadcast(topic, event, payload)

    def count(self, event: str, *, src: str | None = None, since: float = 0.0) -> int:
        return sum(
            1
            for s in self.sent
            if s.event == event and s.at >= since and (src is None or s.src == src)
        )


class SimAdapter(Adapter):
    """A node's door to the :class:`SimBus` (attached while :meth:`run` runs)."""

    def __init__(self, bus: SimBus, node_name: str) -> None:
        self.bus = bus
        self.node_name = node_name
        self.incarnation = secrets.token_hex(8)
        self.on_reconnect: list[Callable[[], None]] = []

    async def run(self, pubsub: PubSub, *, task_status: trio.TaskStatus[None]) -> None:
        self.bus.nodes[self.node_name] = pubsub
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            if self.bus.nodes.get(self.node_name) is pubsub:
                del self.bus.nodes[self.node_name]

    async def publish(self, topic: str, event: str, payload: Any) -> None:
        if self.node_name in self.bus.nodes:
            self.bus.send(self.node_name, None, topic, event, payload)

    async def direct(self, node: str, topic: str, event: str, payload: Any) -> None:
        if self.node_name in self.bus.nodes:
            self.bus.send(self.node_name, node, topic, event, payload)


Diff = tuple[str, dict[str, list[Meta]], dict[str, list[Meta]]]


@dataclass
class Node:
    """One simulated node: its pubsub, tracker, every diff it reported and a replay of them."""

    name: str
    pubsub: PubSub
    tracker: Tracker
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    tracker_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    diffs: list[Diff] = field(default_factory=list)
    #: topic -> key -> phx_ref -> meta, built only from on_diff (as a phoenix.js client would).
    seen: dict[str, dict[str, dict[str, Meta]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def on_diff(
        self, topic: str, joins: dict[str, list[Meta]], leaves: dict[str, list[Meta]]
    ) -> None:
        self.diffs.append((topic, joins, leaves))
        keys = self.seen.setdefault(topic, {})
        # phoenix.js order: joins, then leaves. A join of a ref already shown, or a leave of a
        # ref never shown, means the diff stream and the list disagree.
        for key, metas in joins.items():
            for m in metas:
                if m["phx_ref"] in keys.get(key, {}):
                    self.errors.append(f"duplicate join {topic} {key} {m}")
                keys.setdefault(key, {})[m["phx_ref"]] = m
        for key, metas in leaves.items():
            for m in metas:
                if keys.get(key, {}).pop(m["phx_ref"], None) is None:
                    self.errors.append(f"leave of unseen {topic} {key} {m}")
            if key in keys and not keys[key]:
                del keys[key]
        # Each operation changes the state fully before it reports, one call per topic: right
        # after the call for a topic, a client's view of it must equal the tracker's list.
        if self.replayed(topic) != self.listed(topic):
            self.errors.append(
                f"after a diff on {topic}: replay {self.replayed(topic)} "
                f"!= list {self.listed(topic)}"
            )

    def replayed(self, topic: str) -> dict[str, set[str]]:
        """What a client fed only with this node's diffs would show: key -> phx_refs."""
        return {k: set(refs) for k, refs in self.seen.get(topic, {}).items() if refs}

    def listed(self, topic: str) -> dict[str, set[str]]:
        """``tracker.list`` as key -> phx_refs (asserting refs are unique per key)."""
        out: dict[str, set[str]] = {}
        for key, metas in self.tracker.list(topic).items():
            refs = [m["phx_ref"] for m in metas]
            assert len(refs) == len(set(refs)), f"duplicate metas for {key}: {metas}"
            out[key] = set(refs)
        return out

    def crash(self) -> None:
        """Stop the node at once: no graceful permdown, in-flight messages to it are lost."""
        self.scope.cancel()

    def stop(self) -> None:
        """Ordered shutdown, as the endpoint does it: the tracker stops before the pubsub."""
        self.tracker_scope.cancel()


async def start_node(nursery: trio.Nursery, bus: SimBus, name: str, **options: Any) -> Node:
    """Start pubsub + tracker for ``name`` under their own cancel scope."""
    pubsub = PubSub(adapter=SimAdapter(bus, name))
    node: Node
    node = Node(name, pubsub, Tracker(pubsub, on_diff=lambda *a: node.on_diff(*a), **options))

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with node.scope:
            async with trio.open_nursery() as inner:
                await inner.start(pubsub.run)
                await inner.start(run_tracker)
                task_status.started()

    async def run_tracker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with node.tracker_scope:
            await node.tracker.run(task_status=task_status)

    await nursery.start(serve)
    return node
