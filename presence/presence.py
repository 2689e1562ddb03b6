"""Presence for channels: ``track`` / ``update`` / ``untrack`` / ``list``, phoenix.js compatible.

A :class:`Presence` owns a :class:`~presence.tracker.Tracker` (the replicated CRDT) and turns its
diffs into ``presence_diff`` broadcasts on this node, from a dispatcher task of its own so
replication never waits for sockets. Channels get ``presence_state`` (the full list) after
every join and rejoin, which phoenix.js needs before it applies diffs.

At scale (a crowd joining one topic) both messages are batched per topic:

* **Diffs are coalesced over** ``diff_window`` **seconds** (default 0.05): a topic's first
  change after a quiet window goes out at once; the changes that follow within the window are
  folded into one diff (:class:`~presence.coalesce.DiffWindow`) sent when it ends, so a topic
  gets at most one ``presence_diff`` per window, in order. The merged diff leaves phoenix.js
  in the same state as the individual ones would.
* **presence_state is encoded once per version of the topic**: ``track`` queues its channel,
  and at the topic's next flush every queued channel gets the same listing (fetched once
  through ``fetch``), encoded once per serializer and join ref and written as one shared
  frame; the listing is cached until the topic changes.
"""

from __future__ import annotations

import builtins
import collections
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from presence.coalesce import DiffWindow
from presence.tracker import Tracker

if TYPE_CHECKING:
    from channels.channel import Channel
    from channels.pubsub import PubSub

log = logging.getLogger("presence")

Meta = dict[str, Any]
#: ``{key: {"metas": [...]}}``, the phoenix.js presence map.
Presences = dict[str, dict[str, Any]]
Fetch = Callable[[str, Presences], Awaitable[Presences]]

#: Default ``diff_window`` in seconds.
DEFAULT_DIFF_WINDOW = 0.05
#: Topics whose encoded ``presence_state`` is kept (least recently used beyond).
STATE_CACHE_TOPICS = 1024
# Writes between checkpoints when one flush sends presence_state to many channels.
_CHECKPOINT_EVERY = 256
_SHAREABLE_REFS = (str, int, type(None))

_owner_ids = itertools.count(1)


def group(entries: dict[str, list[Meta]]) -> Presences:
    """``{key: [metas]}`` → ``{key: {"metas": [metas]}}``."""
    return {key: {"metas": metas} for key, metas in entries.items()}


#: Topics whose last diff is remembered (one waits for its state at most a window).
_DIFF_TICKS = 65536


class _Topic:
    """A topic with a window open: the diffs folded since the last flush, the channels waiting
    for ``presence_state``, and when the window ends (one heap entry per open topic)."""

    __slots__ = ("due", "waiting", "window")

    def __init__(self, due: float) -> None:
        self.due = due
        self.window = DiffWindow()
        self.waiting: dict[Channel, None] = {}


class _State:
    """A topic's listing at one version, and its frames per (serializer, join ref)."""

    __slots__ = ("frames", "payload")

    def __init__(self, payload: Presences) -> None:
        self.payload = payload
        self.frames: dict[Any, bytes] = {}


class Presence:
    """Tracks who is present on which topic, across every node of the cluster.

    Give it to the endpoint (``Endpoint(..., presence=presence)``); in a channel::

        await presence.track(self, user_id, {"online_at": time.time()})

    ``fetch(topic, presences)`` may enrich listings and diffs (e.g. with user records); it must
    keep every key's ``"metas"``. ``diff_window`` (seconds, default 0.05) is how long a topic's
    diffs are coalesced; 0 sends them as soon as the dispatcher runs (still merging what
    arrived meanwhile). Other keyword arguments configure the tracker.
    """

    def __init__(self, *, name: str = "presence", fetch: Fetch | None = None,
                 diff_window: float = DEFAULT_DIFF_WINDOW, **tracker_options: Any) -> None:
        if not (diff_window >= 0 and math.isfinite(diff_window)):
            raise ValueError(f"diff_window must be a finite number >= 0, got {diff_window!r}")
        self.name = name
        self.fetch = fetch
        self.diff_window = float(diff_window)
        self._tracker_options = tracker_options
        self._tracker: Tracker | None = None
        self._pubsub: PubSub | None = None
        self._topics: dict[str, _Topic] = {}
        # topic -> the pubsub tick of its last presence_diff (the newest _DIFF_TICKS topics)
        self._diff_ticks: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._states: collections.OrderedDict[str, _State] = collections.OrderedDict()
        self._wakeup = trio.Event()
        self._owners: dict[int, str] = {}
        #: Counters: ``diffs_in`` (from the tracker), ``diffs_sent`` (presence_diff
        #: broadcasts), ``states_sent`` (presence_state pushes), ``state_listings`` (listings
        #: built for presence_state), ``state_encodes`` (frames encoded for them).
        self.stats: collections.Counter[str] = collections.Counter()

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
            nursery.start_soon(self._dispatch)
            task_status.started()

    # -- channel API ---------------------------------------------------------------------------

    async def track(self, channel: Channel, key: str | int, meta: Meta, *,
                    push_state: bool = True) -> Meta:
        """Track ``key`` with ``meta`` on the channel's topic until the channel ends.

        Returns the stored meta (with ``phx_ref``). With ``push_state`` (the default), the
        channel's client then gets ``presence_state`` (which phoenix.js needs after every
        join) at the topic's next flush: at once on a quiet topic, else when the current
        window ends. It includes this presence.
        """
        owner = self._owner(channel)
        stored = self.tracker.track(owner, channel.topic, str(key), meta)
        if push_state:
            self._want_state(channel)
        return stored

    async def push_state(self, channel: Channel) -> None:
        """Send ``presence_state`` to the channel's client at the topic's next flush (what
        ``track`` does), e.g. for a client that watches without being tracked. The listing is
        shared with every channel waiting for it and encoded once."""
        self._owner(channel)  # its end removes it from the queue
        self._want_state(channel)

    async def update(self, channel: Channel, key: str | int, meta: Meta) -> Meta:
        """Replace the meta (clients see a leave and a join with ``phx_ref_prev``)."""
        return self.tracker.update(self._owner(channel), channel.topic, str(key), meta)

    async def untrack(self, channel: Channel, key: str | int) -> None:
        self.tracker.untrack(self._owner(channel), channel.topic, str(key))

    async def list(self, topic: str) -> Presences:
        """Everyone present on ``topic``: ``{key: {"metas": [...]}}`` (after ``fetch``).

        A fresh copy; pushing it as ``presence_state`` is fine (the diffs that follow take it
        into account), though :meth:`push_state` is cheaper for many clients.
        """
        self._observed(topic)
        presences = group(self.tracker.list(topic))
        if self.fetch is not None and presences:
            presences = await self.fetch(topic, presences)
        return presences

    async def get_by_key(self, topic: str, key: str | int) -> builtins.list[Meta]:
        self._observed(topic)
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
        topic = self._topics.get(channel.topic)
        if topic is not None:
            topic.waiting.pop(channel, None)
        owner = self._owners.pop(id(channel), None)
        if owner is not None and self._tracker is not None:
            self._tracker.untrack_owner(owner)

    def _open(self, topic: str) -> _Topic:
        """Open a window on a quiet topic: it is flushed at once (the leading edge)."""
        now = trio.current_time()
        t = self._topics[topic] = _Topic(now)
        heapq.heappush(self._heap, (now, next(self._seq), topic))
        self._wakeup.set()
        return t

    def _want_state(self, channel: Channel) -> None:
        t = self._topics.get(channel.topic)
        if t is None:
            t = self._open(channel.topic)
        t.waiting[channel] = None

    def _observed(self, topic: str) -> None:
        # A listing taken mid-window may reach a client: what joined so far must leave
        # explicitly from now on (see DiffWindow.observed).
        t = self._topics.get(topic)
        if t is not None:
            t.window.observed()

    def _on_diff(self, topic: str, joins: dict[str, builtins.list[Meta]],
                 leaves: dict[str, builtins.list[Meta]]) -> None:
        # Called synchronously by the tracker: fold into the topic's window, never block.
        self.stats["diffs_in"] += 1
        self._states.pop(topic, None)
        t = self._topics.get(topic)
        if t is None:
            t = self._open(topic)
        t.window.add(joins, leaves)

    async def _dispatch(self) -> None:
        """Flush each open topic when its window ends, in order of the ends."""
        heap = self._heap
        turns = 0
        while True:
            self._wakeup = trio.Event()
            if heap and heap[0][0] <= trio.current_time():
                turns += 1
                if turns % 64 == 0:  # many small topics due at once: let others run
                    await trio.lowlevel.checkpoint()
                _, _, name = heapq.heappop(heap)
                t = self._topics[name]
                if t.window or t.waiting:
                    try:
                        await self._flush(name, t)
                    except Exception:
                        # One topic's failure (a broken subscriber, say) must not stop presence.
                        log.exception("presence: flushing %s failed", name)
                else:
                    del self._topics[name]  # a quiet window: the topic is quiet again
                continue
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wakeup.wait()

    async def _flush(self, topic: str, t: _Topic) -> None:
        assert self._pubsub is not None
        window, waiting = t.window, t.waiting
        # What arrives from here on belongs to the next window, which ends diff_window later.
        t.window = DiffWindow()
        t.waiting = {}
        t.due = trio.current_time() + self.diff_window
        heapq.heappush(self._heap, (t.due, next(self._seq), topic))
        # First the listing, to the channels waiting for it: it already holds everything in
        # this window's diff, so they are left out of the diff, unless they subscribed
        # before the topic's previous diff went out. Such a member may have that older diff
        # (phoenix.js applies diffs that come before the state after it) and needs this one,
        # which may undo it: an update's leave of the old ref, say.
        got_state = await self._send_states(topic, waiting) if waiting else set()
        if not window:
            return
        last = self._diff_ticks.get(topic)
        if got_state and last is not None:
            pubsub = self._pubsub
            got_state = {p for p in got_state if (pubsub.subscribed_at(topic, p) or 0) > last}
        joins, leaves = window.diff()
        payload = {"joins": group(joins), "leaves": group(leaves)}
        if self.fetch is not None:
            try:
                if joins:
                    payload["joins"] = await self.fetch(topic, payload["joins"])
                if leaves:
                    payload["leaves"] = await self.fetch(topic, payload["leaves"])
            except Exception:
                log.exception("presence fetch failed for %s; sending the diff as is", topic)
        self.stats["diffs_sent"] += 1
        ticks = self._diff_ticks
        ticks[topic] = self._pubsub.tick()
        ticks.move_to_end(topic)
        if len(ticks) > _DIFF_TICKS:
            ticks.popitem(last=False)
        await self._pubsub.local_broadcast_except(topic, "presence_diff", payload, got_state)

    async def _state(self, topic: str) -> _State:
        """The topic's listing (after ``fetch``), built once per version of the topic."""
        state = self._states.get(topic)
        if state is not None:
            self._states.move_to_end(topic)
            return state
        self._observed(topic)
        presences = group(self.tracker.list(topic))
        state = _State(presences)
        self.stats["state_listings"] += 1
        # Cached before fetch runs: a change meanwhile drops it (it stays right for the
        # channels it is sent to now: the change reaches them as the next diff).
        self._states[topic] = state
        if len(self._states) > STATE_CACHE_TOPICS:
            self._states.popitem(last=False)
        if self.fetch is not None and presences:
            try:
                state.payload = await self.fetch(topic, presences)
            except Exception:
                log.exception("presence fetch failed for %s; sending presence_state as is",
                              topic)
                if self._states.get(topic) is state:
                    del self._states[topic]  # try again for the next joiner
        return state

    async def _send_states(self, topic: str, waiting: dict[Channel, None]) -> set[Any]:
        """Send the listing to the waiting channels; returns the subscribers it reached."""
        state = await self._state(topic)
        reached: set[Any] = set()
        for i, channel in enumerate(waiting, 1):
            try:
                if self._send_state(channel, topic, state):
                    reached.add(channel._process)
            except Exception:
                log.exception("presence_state for %s could not be sent", topic)
            if i % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
        return reached

    def _send_state(self, channel: Channel, topic: str, state: _State) -> bool:
        """Push ``presence_state`` to one channel (False if it has ended); a WebSocket session
        writes the frame shared by every channel with the same serializer and join ref."""
        from channels.frames import ws_frame
        from channels.serializer import EncodeError
        from channels.socket import SocketSession

        proc = channel._process
        if getattr(proc, "_ended", False):
            return False
        self.stats["states_sent"] += 1
        session = proc.session
        join_ref = proc.join_ref
        if (getattr(proc, "_join_buffer", None) is not None  # joining: after the reply
                or not isinstance(session, SocketSession)
                or type(session)._write is not SocketSession._write  # not a WebSocket frame
                or type(join_ref) not in _SHAREABLE_REFS):
            proc.push("presence_state", state.payload)
            return True
        serializer = session.serializer
        key = (serializer, type(join_ref), join_ref)
        frame = state.frames.get(key)
        if frame is None:
            self.stats["state_encodes"] += 1
            try:
                is_binary, data = serializer.encode(join_ref, None, topic, "presence_state",
                                                    state.payload)
            except EncodeError as exc:
                log.warning("presence_state on %s cannot be sent with vsn %s: %s", topic,
                            serializer.vsn, exc)
                frame = b""
            else:
                frame = ws_frame(data, is_binary)
            state.frames[key] = frame
        if frame:
            counters = session.counters
            counters.messages_out += 1
            counters.bytes_out += len(frame)
            session.conn.write_nowait(frame)
        return True
