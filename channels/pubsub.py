"""Topic registry, fastlane broadcast, and the adapter interface for other nodes.

A broadcast is delivered to the local subscribers of its topic (:meth:`PubSub.local_broadcast`)
and handed to the adapter, which carries it to the other nodes of a cluster (each of which
delivers it locally). Subscribers share one per-broadcast frame cache, so a payload is encoded
once per serializer and framed once, and the same bytes go to every connection.
"""

from __future__ import annotations

import abc
import logging
import secrets
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from channels.stats import Histogram

log = logging.getLogger("channels.pubsub")

# A synchronous send loop over thousands of subscribers never yields; checkpoint this often so
# other connections' latency stays bounded (measured; see docs/benchmarks.md).
CHECKPOINT_EVERY = 256

FrameCache = dict[Any, Any]


class Subscriber(Protocol):
    """Something that receives the broadcasts of a topic."""

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        """Take one broadcast. Must not block; ``cache`` is shared by all recipients."""


class BroadcastHistory(Protocol):
    """What broadcasting needs of the history service
    (:class:`~channels.history.HistoryService`)."""

    def config_for(self, topic: str) -> Any:
        """The topic's :class:`~channels.history.History`, or None when it keeps none."""

    async def broadcast(self, topic: str, config: Any, event: str, payload: Any,
                        exclude: Subscriber | None) -> None:
        """Store, position, and deliver everywhere."""


#: A hook run after an adapter re-linked to the cluster (sync or async, no arguments).
ReconnectHook = Callable[[], Awaitable[None] | None]


#: What a fastlane subscriber offers: a key shared by subscribers that receive identical bytes
#: (their serializer), the function that builds those bytes (``b""`` if it cannot), and the
#: function that writes them to its connection.
Fastlane = tuple[Any, Callable[[str, str, Any], bytes], Callable[[bytes], None]]

_Member = tuple["Subscriber", Callable[[bytes], None]]
_Group = tuple[Any, Callable[[str, str, Any], bytes], list[_Member]]
_Plan = tuple[list[_Group], list["Subscriber"]]


class CallbackSubscriber:
    """Adapts a plain callable ``fn(topic, event, payload)`` to :class:`Subscriber`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[str, str, Any], None]) -> None:
        self.fn = fn

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        self.fn(topic, event, payload)


def _make_plan(subs: dict[Subscriber, int]) -> _Plan:
    groups: dict[Any, _Group] = {}
    slow: list[Subscriber] = []
    for sub in subs:
        fastlane: Fastlane | None = getattr(sub, "fastlane", None)
        if fastlane is None:
            slow.append(sub)
            continue
        key, encode, write = fastlane
        group = groups.get(key)
        if group is None:
            group = groups[key] = (key, encode, [])
        group[2].append((sub, write))
    return list(groups.values()), slow


_NO_KEY = object()  # no subscriber is excluded
_SLOW = object()  # the excluded subscriber has no fastlane


def _log_failed(sub: Subscriber, topic: str, event: str) -> None:
    # One broken subscriber must not cost the others their delivery.
    log.exception("subscriber %r failed on %r %s", sub, event, topic)


class Adapter(abc.ABC):
    """Carries broadcasts between the nodes of a cluster.

    The local adapter has no other nodes; a Redis adapter publishes envelopes and delivers what
    other nodes publish through :meth:`PubSub.local_broadcast`.
    """

    node_name: str = "local"
    #: Unique per process start: a restarted node is a new incarnation (presence uses it).
    incarnation: str = ""
    _on_reconnect: list[ReconnectHook] | None = None

    @property
    def on_reconnect(self) -> list[ReconnectHook]:
        """Hooks run after every re-link to the other nodes (messages may have been missed
        meanwhile: history and rooms resynchronise). An adapter that never loses its link,
        such as the local one, never runs them."""
        if self._on_reconnect is None:
            self._on_reconnect = []
        return self._on_reconnect

    @on_reconnect.setter
    def on_reconnect(self, hooks: list[ReconnectHook]) -> None:
        self._on_reconnect = hooks

    @abc.abstractmethod
    async def run(self, pubsub: PubSub, *, task_status: trio.TaskStatus[None]) -> None:
        """Run until cancelled; call ``task_status.started()`` once ready."""

    @abc.abstractmethod
    async def publish(self, topic: str, event: str, payload: Any) -> None:
        """Deliver a broadcast to every other node (at most once)."""

    @abc.abstractmethod
    async def direct(self, node: str, topic: str, event: str, payload: Any) -> None:
        """Deliver a message to the subscribers of ``topic`` on ``node`` only."""

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until queued messages left this node.

        The default has no queue to wait for.
        """
        return None


class LocalAdapter(Adapter):
    """The single-node default: there is no other node to reach."""

    def __init__(self, node_name: str = "local") -> None:
        self.node_name = node_name
        self.incarnation = secrets.token_hex(8)

    async def run(self, pubsub: PubSub, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def publish(self, topic: str, event: str, payload: Any) -> None:
        return None

    async def direct(self, node: str, topic: str, event: str, payload: Any) -> None:
        return None


class PubSub:
    """The topic -> subscribers registry of one node, plus its adapter."""

    def __init__(self, adapter: Adapter | None = None) -> None:
        self.adapter: Adapter = adapter if adapter is not None else LocalAdapter()
        # topic -> subscriber -> the tick it subscribed at
        self._topics: dict[str, dict[Subscriber, int]] = {}
        self._ticks = 0
        # Per topic, subscribers grouped by fastlane key (rebuilt after (un)subscribes), so a
        # broadcast builds one frame per group and then only writes: no per-recipient calls.
        self._plans: dict[str, _Plan] = {}
        # Plain ints read by the metrics at scrape time (a few adds per broadcast, none per
        # recipient): local deliveries, fastlane frames written and their bytes.
        self.broadcasts = 0
        self.fastlane_frames = 0
        self.fastlane_bytes = 0
        #: Recipients per broadcast (the endpoint sets it while metrics are on).
        self.fanout: Histogram | None = None
        #: ``fn(topic, event, recipients)`` after each local delivery (telemetry), or None.
        self.on_broadcast: Callable[[str, str, int], None] | None = None
        #: Positions, stores and sequences the broadcasts of topics with history (set by the
        #: endpoint when a channel class declares one).
        self.history: BroadcastHistory | None = None

    @property
    def node_name(self) -> str:
        return self.adapter.node_name

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        subs = self._topics.get(topic)
        if subs is None:
            subs = self._topics[topic] = {}
        # The value orders subscriptions against other events (see tick): presence leaves
        # a new member out of a diff only if that member cannot have had an older one.
        subs[subscriber] = self.tick()
        self._plans.pop(topic, None)

    def tick(self) -> int:
        """The next number of this node's subscription order (subscribes and ``tick`` calls)."""
        self._ticks += 1
        return self._ticks

    def subscribed_at(self, topic: str, subscriber: Subscriber) -> int | None:
        """The :meth:`tick` at which ``subscriber`` subscribed ``topic`` (None: it did not)."""
        subs = self._topics.get(topic)
        return subs.get(subscriber) if subs is not None else None

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(subscriber, None)
            if not subs:
                del self._topics[topic]
            self._plans.pop(topic, None)

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    async def broadcast(
        self, topic: str, event: str, payload: Any, *, exclude: Subscriber | None = None
    ) -> None:
        """Deliver to every subscriber of ``topic`` on every node (except ``exclude``)."""
        history = self.history
        if history is not None:
            config = history.config_for(topic)
            if config is not None:
                await history.broadcast(topic, config, event, payload, exclude)
                return
        await self.local_broadcast(topic, event, payload, exclude=exclude)
        await self.adapter.publish(topic, event, payload)

    def replan(self, topic: str) -> None:
        """Rebuild ``topic``'s delivery plan (a subscriber's ``fastlane`` changed)."""
        self._plans.pop(topic, None)

    def _new_plan(self, topic: str, event: str) -> _Plan | None:
        """The delivery plan of ``topic`` (made and kept), or None when it has no
        subscribers here: that broadcast is counted as delivered to nobody."""
        subs = self._topics.get(topic)
        if not subs:
            self.broadcasts += 1
            if self.fanout is not None or self.on_broadcast is not None:
                self._observe(topic, event, 0)
            return None
        plan = self._plans[topic] = _make_plan(subs)
        return plan

    async def local_broadcast(
        self, topic: str, event: str, payload: Any, *, exclude: Subscriber | None = None
    ) -> None:
        """Deliver to the subscribers of ``topic`` on this node only."""
        plan = self._plans.get(topic) or self._new_plan(topic, event)
        if plan is None:
            return
        groups, slow = plan
        cache: FrameCache = {}
        # The excluded subscriber (broadcast_from) is in the group of its fastlane key, or
        # among the slow ones: counted out of that one.
        ex_key: Any = _NO_KEY
        if exclude is not None:
            ex_fastlane = getattr(exclude, "fastlane", None)
            ex_key = ex_fastlane[0] if ex_fastlane is not None else _SLOW
        frames = 0
        for key, encode, members in groups:
            frame = encode(topic, event, payload)
            cache[key] = frame
            if not frame:
                continue
            n = len(members) - (key is ex_key)
            frames += n
            self.fastlane_bytes += n * len(frame)
            if len(members) <= CHECKPOINT_EVERY:
                for sub, write in members:
                    if sub is not exclude:
                        write(frame)
                continue
            for start in range(0, len(members), CHECKPOINT_EVERY):
                for sub, write in members[start:start + CHECKPOINT_EVERY]:
                    if sub is not exclude:
                        write(frame)
                await trio.lowlevel.checkpoint()
        for i, sub in enumerate(slow, 1):
            if sub is not exclude:
                try:
                    sub.deliver(topic, event, payload, cache)
                except Exception:
                    _log_failed(sub, topic, event)
            if i % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
        self.broadcasts += 1
        self.fastlane_frames += frames
        fanout = self.fanout
        if fanout is not None:  # inlined Histogram.observe: this runs once per broadcast
            recipients = frames + len(slow) - (ex_key is _SLOW)
            fanout.counts[bisect_left(fanout.bounds, recipients)] += 1
            fanout.sum += recipients
        if self.on_broadcast is not None:
            self.on_broadcast(topic, event, frames + len(slow) - (ex_key is _SLOW))

    async def local_broadcast_except(self, topic: str, event: str, payload: Any,
                                     excluded: AbstractSet[Subscriber]) -> None:
        """:meth:`local_broadcast` to everyone but the members of ``excluded`` (presence
        leaves out the channels it just sent ``presence_state`` to). A separate loop, so
        that ordinary broadcasts keep their identity check per recipient."""
        if not excluded:
            await self.local_broadcast(topic, event, payload)
            return
        plan = self._plans.get(topic) or self._new_plan(topic, event)
        if plan is None:
            return
        groups, slow = plan
        cache: FrameCache = {}
        frames = 0
        for key, encode, members in groups:
            frame = encode(topic, event, payload)
            cache[key] = frame
            if not frame:
                continue
            n = 0
            for start in range(0, len(members), CHECKPOINT_EVERY):
                for sub, write in members[start:start + CHECKPOINT_EVERY]:
                    if sub not in excluded:
                        write(frame)
                        n += 1
                if len(members) > CHECKPOINT_EVERY:
                    await trio.lowlevel.checkpoint()
            frames += n
            self.fastlane_bytes += n * len(frame)
        recipients = frames
        for i, sub in enumerate(slow, 1):
            if sub not in excluded:
                recipients += 1
                try:
                    sub.deliver(topic, event, payload, cache)
                except Exception:
                    _log_failed(sub, topic, event)
            if i % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
        self.broadcasts += 1
        self.fastlane_frames += frames
        if self.fanout is not None or self.on_broadcast is not None:
            self._observe(topic, event, recipients)

    def _observe(self, topic: str, event: str, recipients: int) -> None:
        if self.fanout is not None:
            self.fanout.observe(recipients)
        if self.on_broadcast is not None:
            self.on_broadcast(topic, event, recipients)

    async def direct_broadcast(self, node: str, topic: str, event: str, payload: Any) -> None:
        """Deliver to the subscribers of ``topic`` on ``node`` (this node included)."""
        if node == self.node_name:
            await self.local_broadcast(topic, event, payload)
        else:
            await self.adapter.direct(node, topic, event, payload)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the adapter (a permanent service of the endpoint)."""
        await self.adapter.run(self, task_status=task_status)

