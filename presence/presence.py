"""Presence for channels: ``track`` / ``update`` / ``untrack`` / ``list``, phoenix.js compatible.

A :class:`Presence` owns a :class:`~presence.tracker.Tracker` (the replicated CRDT) and turns its
diffs into ``presence_diff`` broadcasts on this node, in the order the tracker produced them, from
a queue of its own so replication never waits for sockets. Channels push ``presence_state`` (the
full list) after every join and rejoin, which phoenix.js needs before it applies diffs.
"""

from __future__ import annotations

import builtins
import collections
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from presence.tracker import Tracker

if TYPE_CHECKING:
    from channels.channel import Channel
    from channels.pubsub import PubSub

log = logging.getLogger("presence")

Meta = dict[str, Any]
#: ``{key: {"metas": [meta, ...]}}``, the phoenix.js presence map.
Presences = dict[str, dict[str, Any]]
Fetch = Callable[[str, Presences], Awaitable[Presences]]

_owner_ids = itertools.count(1)


def group(entries: dict[str, list[Meta]]) -> Presences:
    """``{key: [metas]}`` → ``{key: {"metas": [metas]}}``."""
    return {key: {"metas": metas} for key, metas in entries.items()}


class Presence:
    """Tracks who is present on which topic, across every node of the cluster.

    Give it to the endpoint (``Endpoint(..., presence=presence)``); in a channel::

        await presence.track(self, user_id, {"online_at": time.time()})

    ``fetch(topic, presences)`` may enrich listings and diffs (e.g. with user records); it must
    keep every key's ``"metas"``. Other keyword arguments configure the tracker.
    """

    def __init__(self, *, name: str = "presence", fetch: Fetch | None = None,
                 **tracker_options: Any) -> None:
        self.name = name
        self.fetch = fetch
        self._tracker_options = tracker_options
        self._tracker: Tracker | None = None
        self._pubsub: PubSub | None = None
        self._diffs: collections.deque[tuple[str, dict[str, list[Meta]],
                                             dict[str, list[Meta]]]] = collections.deque()
        self._wakeup = trio.Event()
        self._owners: dict[int, str] = {}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            raise RuntimeError("this Presence is not attached to a running endpoint")
        return self._tracker

    def attach(self, pubsub: PubSub) -> None:
        """Bind to the node's pubsub (the endpoint does this)."""
        self._pubsub = pubsub

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the tracker and the diff dispatcher (a service of the endpoint)."""
        if self._pubsub is None:
            raise RuntimeError("Presence.attach() was not called (give it to an Endpoint)")
        # Built here, not in attach(): the node name and adapter are final only once serving.
        self._tracker = Tracker(self._pubsub, name=self.name, on_diff=self._on_diff,
                                **self._tracker_options)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.tracker.run)
            nursery.start_soon(self._dispatch_diffs)
            task_status.started()

    # -- channel API ---------------------------------------------------------------------------

    async def track(self, channel: Channel, key: str | int, meta: Meta, *,
                    push_state: bool = True) -> Meta:
        """Track ``key`` with ``meta`` on the channel's topic until the channel ends.

        Returns the stored meta (with ``phx_ref``). With ``push_state`` (the default), the
        channel's client then gets ``presence_state``, which phoenix.js needs after every join.
        """
        owner = self._owner(channel)
        stored = self.tracker.track(owner, channel.topic, str(key), meta)
        if push_state:
            await channel.push("presence_state", await self.list(channel.topic))
        return stored

    async def update(self, channel: Channel, key: str | int, meta: Meta) -> Meta:
        """Replace the meta (clients see a leave and a join with ``phx_ref_prev``)."""
        return self.tracker.update(self._owner(channel), channel.topic, str(key), meta)

    async def untrack(self, channel: Channel, key: str | int) -> None:
        self.tracker.untrack(self._owner(channel), channel.topic, str(key))

    async def list(self, topic: str) -> Presences:
        """Everyone present on ``topic``: ``{key: {"metas": [...]}}`` (after ``fetch``)."""
        presences = group(self.tracker.list(topic))
        if self.fetch is not None and presences:
            presences = await self.fetch(topic, presences)
        return presences

    async def get_by_key(self, topic: str, key: str | int) -> builtins.list[Meta]:
        return self.tracker.get_by_key(topic, str(key))

    # -- internals -----------------------------------------------------------------------------

    def _owner(self, channel: Channel) -> str:
        owner = self._owners.get(id(channel))
        if owner is None:
            owner = f"{self.tracker.node_name}#{next(_owner_ids)}"
            self._owners[id(channel)] = owner
            channel.on_exit(self._channel_ended)
        return owner

    def _channel_ended(self, channel: Channel, reason: str) -> None:
        owner = self._owners.pop(id(channel), None)
        if owner is not None and self._tracker is not None:
            self._tracker.untrack_owner(owner)

    def _on_diff(self, topic: str, joins: dict[str, builtins.list[Meta]],
                 leaves: dict[str, builtins.list[Meta]]) -> None:
        # Called synchronously by the tracker: queue, never block replication.
        self._diffs.append((topic, joins, leaves))
        self._wakeup.set()

    async def _dispatch_diffs(self) -> None:
        assert self._pubsub is not None
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._diffs:
                topic, joins, leaves = self._diffs.popleft()
                payload = {"joins": group(joins), "leaves": group(leaves)}
                if self.fetch is not None:
                    try:
                        payload["joins"] = await self.fetch(topic, payload["joins"])
                        payload["leaves"] = await self.fetch(topic, payload["leaves"])
                    except Exception:
                        log.exception("presence fetch failed for %s; sending the diff as is",
                                      topic)
                await self._pubsub.local_broadcast(topic, "presence_diff", payload)
