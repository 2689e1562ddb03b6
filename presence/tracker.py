"""Presence replication between nodes: the Phoenix.Tracker protocol over :class:`PubSub`.

A :class:`Tracker` runs ``pool_size`` independent shards; a topic belongs to shard
``crc32(topic) % pool_size``. Each shard is one CRDT replica (:class:`~presence.state.State`)
named ``(node_name, vsn)`` with a vsn that grows on every start, and talks only to shard N of the
other nodes on the pubsub topic ``phx_presence:{name}_shard{N}``:

* every ``broadcast_period`` (first tick after a random 0-25 % of it) a shard broadcasts its
  pending delta as a ``heartbeat`` (an empty one after ``max_silent_periods`` quiet ticks), with
  its clock;
* every ``clock_sample_periods`` ticks it compares the clocks heard since the last sample with
  its own and sends ``transfer_req`` to the maximal ones it does not dominate; the peer answers
  with ``transfer_ack`` carrying a delta generation or its full state;
* a peer silent for ``down_period`` is *down* (its presences leave, rows kept); silent for
  ``permdown_period`` it is purged. A new vsn under a known name purges the old incarnation at
  once; ``graceful_permdown`` purges a leaving node everywhere at once.

Messages arrive synchronously through :meth:`_Shard.deliver` into the shard's inbox and are
handled by the shard task, so the pubsub's receive loop never waits for a merge. Every payload
is msgpack-able builtins (see the module-level ``EVENT_*`` names for the shapes).
"""

from __future__ import annotations

import base64
import builtins
import collections
import logging
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgpack
import trio

from presence.state import (
    Delta,
    Entry,
    Meta,
    NotTracked,
    ReplicaRef,
    Snapshot,
    State,
    WireError,
    clock_from_wire,
    clock_to_wire,
    dominates,
    payload_from_wire,
)

if TYPE_CHECKING:
    from channels.pubsub import FrameCache, PubSub

__all__ = [
    "EVENT_GRACEFUL_PERMDOWN",
    "EVENT_HEARTBEAT",
    "EVENT_TRANSFER_ACK",
    "EVENT_TRANSFER_REQ",
    "PROTOCOL_VERSION",
    "DiffCallback",
    "Tracker",
]

log = logging.getLogger("presence.tracker")

#: Version of the tracker messages below (the CRDT payloads carry their own).
PROTOCOL_VERSION = 1
#: broadcast ``{"v", "pool", "from": [node, vsn], "clock": [[node, vsn, n], ...],
#: "delta": Delta wire form | None}``
EVENT_HEARTBEAT = "heartbeat"
#: direct ``{"v", "pool", "from", "clock"}``; ``clock`` is the requester's full context
EVENT_TRANSFER_REQ = "transfer_req"
#: direct ``{"v", "pool", "from", "to": [node, vsn], "payload": Delta | Snapshot wire form}``
EVENT_TRANSFER_ACK = "transfer_ack"
#: broadcast ``{"v", "pool", "from"}``: the sender leaves for good
EVENT_GRACEFUL_PERMDOWN = "graceful_permdown"

#: ``on_diff(topic, joins, leaves)`` with ``{key: [meta, ...]}`` maps.
DiffCallback = Callable[[str, dict[str, list[Meta]], dict[str, list[Meta]]], None]

# Messages queued beyond this are dropped (the protocol repairs losses); a shard this far behind
# is overloaded and memory must stay bounded.
MAX_INBOX = 50_000
# Messages handled in a row before yielding to other tasks.
BATCH = 64
# Upper bound on the shielded graceful_permdown broadcast at shutdown, in seconds.
SHUTDOWN_TIMEOUT = 2.0

_last_vsn = 0


def _new_vsn() -> int:
    """Wall-clock nanoseconds, strictly increasing in this process.

    Peers keep the highest vsn of a name, so a restart must produce a larger one: wall time
    does that across processes, the counter within one.
    """
    global _last_vsn
    _last_vsn = max(time.time_ns(), _last_vsn + 1)
    return _last_vsn


def shard_for(topic: str, pool_size: int) -> int:
    """The shard of ``topic``: stable across processes (unlike ``hash``, which is salted)."""
    return zlib.crc32(topic.encode()) % pool_size


@dataclass(slots=True)
class _Peer:
    """Liveness of the current incarnation of one remote node, as seen by one shard."""

    ref: ReplicaRef
    last_heartbeat: float
    up: bool = True


class Tracker:
    """Replicates presences between nodes; see the module docstring for the protocol.

    Local operations (:meth:`track`, :meth:`update`, :meth:`untrack`, :meth:`untrack_owner`)
    are synchronous and report their diff through ``on_diff`` before returning; remote changes
    are reported from the shard tasks started by :meth:`run`. ``on_diff`` must not block.
    """

    def __init__(
        self,
        pubsub: PubSub,
        *,
        name: str = "presence",
        on_diff: DiffCallback | None = None,
        pool_size: int = 1,
        broadcast_period: float = 1.5,
        max_silent_periods: int = 10,
        down_period: float | None = None,
        permdown_period: float = 1200.0,
        clock_sample_periods: int = 2,
        max_delta_sizes: Sequence[int] = (100, 1000, 10_000),
        permdown_on_shutdown: bool = False,
    ) -> None:
        if down_period is None:
            down_period = broadcast_period * max_silent_periods * 2
        _validate(pool_size, broadcast_period, max_silent_periods, down_period, permdown_period,
                  clock_sample_periods)
        self.pubsub = pubsub
        self.name = name
        self.node_name: str = pubsub.node_name
        self.on_diff = on_diff
        self.pool_size = pool_size
        self.broadcast_period = broadcast_period
        self.max_silent_periods = max_silent_periods
        self.down_period = down_period
        self.permdown_period = permdown_period
        self.clock_sample_periods = clock_sample_periods
        self.max_delta_sizes = tuple(max_delta_sizes)
        self.permdown_on_shutdown = permdown_on_shutdown
        self.stats: collections.Counter[str] = collections.Counter()
        self._shards = [_Shard(self, i) for i in range(pool_size)]
        incarnation = getattr(pubsub.adapter, "incarnation", "")
        self._ref_salt = zlib.crc32(f"{self.node_name}/{incarnation}/{_new_vsn()}".encode())
        self._last_ref_ns = 0
        self._warned: set[tuple[str, str]] = set()
        self._cancel: trio.CancelScope | None = None
        self._running = False
        self._left = False

    # -- local operations ----------------------------------------------------------------------

    def track(self, owner: str, topic: str, key: str, meta: Meta) -> Meta:
        """Track ``key`` on ``topic`` for ``owner``; returns the stored meta (with ``phx_ref``).

        Raises :class:`~presence.state.AlreadyTracked` if ``owner`` already tracks ``key`` there,
        and ``TypeError`` if ``meta`` cannot cross the wire (msgpack).
        """
        stored = self._stamp(meta, None)
        diff = self._shard(topic).state.join(owner, topic, key, stored)
        self._emit(diff.joins, diff.leaves)
        return dict(stored)

    def update(self, owner: str, topic: str, key: str, meta: Meta) -> Meta:
        """Replace the meta of a tracked presence; one diff (old leave, new join).

        The new meta gets a fresh ``phx_ref`` and ``phx_ref_prev`` (the old ref). Raises
        :class:`~presence.state.NotTracked` if nothing is tracked.
        """
        shard = self._shard(topic)
        old = shard.state.lookup(owner, topic, key)
        if old is None:
            raise NotTracked((topic, owner, key))
        stored = self._stamp(meta, old.meta.get("phx_ref"))
        diff = shard.state.update(owner, topic, key, stored)
        self._emit(diff.joins, diff.leaves)
        return dict(stored)

    def untrack(self, owner: str, topic: str, key: str) -> None:
        """Stop tracking one presence (a no-op if it is not tracked)."""
        diff = self._shard(topic).state.leave(owner, topic, key)
        self._emit(diff.joins, diff.leaves)

    def untrack_owner(self, owner: str) -> None:
        """Stop tracking everything ``owner`` tracks, on every topic (its channel ended)."""
        for shard in self._shards:
            diff = shard.state.leave_owner(owner)
            self._emit(diff.joins, diff.leaves)

    def list(self, topic: str) -> dict[str, list[Meta]]:
        """Visible presences of ``topic`` on every up node: ``{key: [meta, ...]}``."""
        return {k: [dict(m) for m in ms]
                for k, ms in self._shard(topic).state.get_by_topic(topic).items()}

    def get_by_key(self, topic: str, key: str) -> builtins.list[Meta]:
        """Visible metas of ``key`` on ``topic`` (one per tracking owner)."""
        return [dict(e.meta) for e in self._shard(topic).state.get_by_key(topic, key)]

    # -- introspection -------------------------------------------------------------------------

    def shard_for(self, topic: str) -> int:
        """Index of the shard that replicates ``topic``."""
        return shard_for(topic, self.pool_size)

    @property
    def refs(self) -> builtins.list[ReplicaRef]:
        """This node's replica ref per shard."""
        return [s.ref for s in self._shards]

    def replicas(self) -> dict[ReplicaRef, Literal["up", "down"]]:
        """Remote replicas known to any shard (up or down; permdowned ones are forgotten)."""
        return {p.ref: ("up" if p.up else "down") for s in self._shards for p in s.peers.values()}

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replicate until cancelled (or until :meth:`graceful_permdown`).

        With ``permdown_on_shutdown`` the shards broadcast ``graceful_permdown`` on the way out,
        so peers drop this node's presences at once instead of after ``down_period``.
        """
        if self._running:
            raise RuntimeError(f"tracker {self.name!r} is already running")
        if self._left:
            task_status.started()
            return
        self._running = True
        hooks: builtins.list[Any] | None = getattr(self.pubsub.adapter, "on_reconnect", None)
        if hooks is not None:
            hooks.append(self._on_reconnect)
        for shard in self._shards:
            self.pubsub.subscribe(shard.topic, shard)
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                for shard in self._shards:
                    nursery.start_soon(shard.run)
                task_status.started()
        finally:
            self._cancel = None
            self._running = False
            for shard in self._shards:
                self.pubsub.unsubscribe(shard.topic, shard)
            if hooks is not None and self._on_reconnect in hooks:
                hooks.remove(self._on_reconnect)
            if self.permdown_on_shutdown and not self._left:
                with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
                    await self._leave()
            elif not self._left:
                # A clean stop: send what changed since the last tick (typically the leaves
                # of the clients just drained), so peers see them now, not after down_period.
                with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
                    for shard in self._shards:
                        await shard.flush()

    async def graceful_permdown(self) -> None:
        """Leave the cluster now: peers purge this node's presences at once, and :meth:`run`
        returns. Local reads and writes keep working but are no longer replicated."""
        await self._leave()
        if self._cancel is not None:
            self._cancel.cancel()

    async def _leave(self) -> None:
        if self._left:
            return
        self._left = True
        for shard in self._shards:
            await shard.send_permdown()

    def _on_reconnect(self) -> None:
        # Messages from the gap are lost: pull what we missed and announce our clock soon.
        for shard in self._shards:
            shard.request_resync()

    # -- internals -----------------------------------------------------------------------------

    def _shard(self, topic: str) -> _Shard:
        return self._shards[shard_for(topic, self.pool_size)]

    def _stamp(self, meta: Meta, prev_ref: Any) -> Meta:
        if not isinstance(meta, dict):
            raise TypeError(f"presence meta must be a dict, not {type(meta).__name__}")
        stored = dict(meta)
        stored.pop("phx_ref_prev", None)
        stored["phx_ref"] = self._new_ref()
        if prev_ref is not None:
            stored["phx_ref_prev"] = prev_ref
        try:
            msgpack.packb(stored, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            # Checked here because a meta that cannot be packed would break every heartbeat
            # and transfer that carries it, far from the caller.
            raise TypeError(f"presence meta must be msgpack-able builtins: {exc}") from exc
        return stored

    def _new_ref(self) -> str:
        """12 bytes (strictly increasing ns + node salt) as 16 url-safe base64 chars."""
        ns = max(time.time_ns(), self._last_ref_ns + 1)
        self._last_ref_ns = ns
        raw = struct.pack(">QI", ns & 0xFFFF_FFFF_FFFF_FFFF, self._ref_salt)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def _emit(self, joins: Iterable[Entry], leaves: Iterable[Entry]) -> None:
        on_diff = self.on_diff
        if on_diff is None:
            return
        by_topic: dict[str, tuple[dict[str, list[Meta]], dict[str, list[Meta]]]] = {}
        for e in joins:
            by_topic.setdefault(e.topic, ({}, {}))[0].setdefault(e.key, []).append(dict(e.meta))
        for e in leaves:
            by_topic.setdefault(e.topic, ({}, {}))[1].setdefault(e.key, []).append(dict(e.meta))
        for topic, (j, lv) in by_topic.items():
            try:
                on_diff(topic, j, lv)
            except Exception:
                log.exception("presence on_diff callback failed for %r", topic)

    def _warn_once(self, key: tuple[str, str], level: int, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, msg, *args)


def _validate(pool_size: int, broadcast_period: float, max_silent_periods: int,
              down_period: float, permdown_period: float, clock_sample_periods: int) -> None:
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    if broadcast_period <= 0:
        raise ValueError(f"broadcast_period must be positive, got {broadcast_period}")
    if max_silent_periods < 1:
        raise ValueError(f"max_silent_periods must be at least 1, got {max_silent_periods}")
    if clock_sample_periods < 1:
        raise ValueError(f"clock_sample_periods must be at least 1, got {clock_sample_periods}")
    idle = broadcast_period * max_silent_periods
    if down_period <= idle:
        raise ValueError(
            f"down_period ({down_period}s) must exceed the idle heartbeat interval "
            f"broadcast_period * max_silent_periods ({idle}s), or idle peers would flap "
            "between down and up")
    if permdown_period <= down_period:
        raise ValueError(
            f"permdown_period ({permdown_period}s) must exceed down_period ({down_period}s)")


def _ref_from_wire(obj: Any) -> ReplicaRef:
    node, vsn = obj
    if not isinstance(node, str) or not isinstance(vsn, int) or isinstance(vsn, bool):
        raise WireError("bad replica ref")
    return ReplicaRef(node, vsn)


class _Shard:
    """One replica: its state, liveness table, inbox and tick loop. Also the pubsub subscriber
    of its topic."""

    def __init__(self, tracker: Tracker, index: int) -> None:
        self.tracker = tracker
        self.index = index
        self.topic = f"phx_presence:{tracker.name}_shard{index}"
        self.ref = ReplicaRef(tracker.node_name, _new_vsn())
        self.state = State(self.ref, delta_caps=tracker.max_delta_sizes)
        self.peers: dict[str, _Peer] = {}
        # Highest incarnation per node that left for good or was replaced: late or duplicated
        # messages from it must not bring it back. Value: (vsn, retired at).
        self.retired: dict[str, tuple[int, float]] = {}
        self.pending_clocks: dict[ReplicaRef, dict[ReplicaRef, int]] = {}
        # The first tick always sends something, so peers learn about us at once.
        self.silent_periods = tracker.max_silent_periods
        self.sample_count = tracker.clock_sample_periods
        self.inbox: collections.deque[tuple[str, Any, float]] = collections.deque()
        self.wakeup = trio.Event()
        self.resync = False
        self.next_tick = 0.0

    def __repr__(self) -> str:
        return f"<tracker shard {self.topic} {self.ref.node}/{self.ref.vsn}>"

    # -- subscriber ----------------------------------------------------------------------------

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        """Queue a message for the shard task (called by pubsub; never blocks)."""
        if len(self.inbox) >= MAX_INBOX:
            self.tracker.stats["inbox_dropped"] += 1
            self.tracker._warn_once(("inbox", self.topic), logging.WARNING,
                                    "presence shard %s is overloaded: dropping messages", self)
            return
        self.inbox.append((event, payload, trio.current_time()))
        self.wakeup.set()

    def request_resync(self) -> None:
        self.resync = True
        self.wakeup.set()

    # -- the shard task ------------------------------------------------------------------------

    async def run(self) -> None:
        period = self.tracker.broadcast_period
        # Jitter so that nodes started together do not tick in lockstep.
        self.next_tick = trio.current_time() + random.uniform(0, 0.25) * period
        while True:
            self.wakeup = trio.Event()
            if not self.inbox and not self.resync:
                with trio.move_on_at(self.next_tick):
                    await self.wakeup.wait()
            handled = 0
            while self.inbox and trio.current_time() < self.next_tick:
                event, payload, at = self.inbox.popleft()
                await self._handle(event, payload, at)
                handled += 1
                if handled % BATCH == 0:
                    await trio.lowlevel.checkpoint()
            if self.resync:
                self.resync = False
                await self._resync()
            now = trio.current_time()
            if now >= self.next_tick:
                await self._tick(now)
                # Keep the phase; after a stall, skip the missed ticks rather than burst.
                self.next_tick += period
                if self.next_tick <= now:
                    self.next_tick = now + period

    async def _tick(self, now: float) -> None:
        t = self.tracker
        # 1. broadcast the pending delta, or an empty heartbeat once in a while.
        delta = self.state.take_delta()
        if delta is not None or self.silent_periods + 1 >= t.max_silent_periods:
            self.silent_periods = 0
            await self._broadcast(EVENT_HEARTBEAT, {
                **self._header(),
                "clock": clock_to_wire(self.state.clocks()),
                "delta": None if delta is None else delta.to_wire(),
            })
            t.stats["heartbeats_sent"] += 1
        else:
            self.silent_periods += 1
        # 2. clock sampling: pull from whoever knows more than we do.
        self.sample_count -= 1
        if self.sample_count <= 0:
            self.sample_count = t.clock_sample_periods
            for ref in self._sync_targets():
                await self._request_transfer(ref)
        # 3. liveness.
        self._detect_downs(now)

    def _sync_targets(self) -> list[ReplicaRef]:
        """The maximal clocks heard since the last sample that ours does not dominate.

        Clocks are compared on the replicas we know and consider up: values of others cannot
        be merged anyway, so asking for them would repeat forever (phoenix_pubsub#135).
        """
        mine = self.state.clocks()
        candidates: list[tuple[ReplicaRef, dict[ReplicaRef, int]]] = []
        for ref, clock in self.pending_clocks.items():
            peer = self.peers.get(ref.node)
            if peer is None or peer.ref != ref or not peer.up:
                continue
            shared = {r: n for r, n in clock.items() if r in mine}
            if not dominates(mine, shared):
                candidates.append((ref, shared))
        self.pending_clocks.clear()
        out: list[ReplicaRef] = []
        for i, (ref, clock) in enumerate(candidates):
            # Drop clocks another candidate dominates; of equal clocks keep the first.
            if not any(dominates(other, clock) and (j < i or not dominates(clock, other))
                       for j, (_, other) in enumerate(candidates) if j != i):
                out.append(ref)
        return out

    def _detect_downs(self, now: float) -> None:
        t = self.tracker
        for node, peer in list(self.peers.items()):
            silent = now - peer.last_heartbeat
            if silent > t.permdown_period:
                log.info("presence %s: replica %s/%d is permanently down", self.topic,
                         node, peer.ref.vsn)
                del self.peers[node]
                self.pending_clocks.pop(peer.ref, None)
                t._emit((), self.state.remove_down_replica(peer.ref))
            elif silent > t.down_period and peer.up:
                log.info("presence %s: replica %s/%d is down", self.topic, node, peer.ref.vsn)
                peer.up = False
                self.pending_clocks.pop(peer.ref, None)
                t._emit((), self.state.replica_down(peer.ref))
        for node, (_, at) in list(self.retired.items()):
            if now - at > t.permdown_period:
                del self.retired[node]

    async def _resync(self) -> None:
        # Our next heartbeat tells peers our clock, so they pull what they missed from us.
        self.silent_periods = self.tracker.max_silent_periods
        for peer in list(self.peers.values()):
            await self._request_transfer(peer.ref)

    async def flush(self) -> None:
        """Broadcast the pending delta now, if there is one."""
        delta = self.state.take_delta()
        if delta is not None:
            await self._broadcast(EVENT_HEARTBEAT, {
                **self._header(),
                "clock": clock_to_wire(self.state.clocks()),
                "delta": delta.to_wire(),
            })
            self.tracker.stats["heartbeats_sent"] += 1

    async def send_permdown(self) -> None:
        await self._broadcast(EVENT_GRACEFUL_PERMDOWN, self._header())

    # -- incoming ------------------------------------------------------------------------------

    async def _handle(self, event: str, payload: Any, at: float) -> None:
        t = self.tracker
        try:
            if not isinstance(payload, dict) or payload.get("v") != PROTOCOL_VERSION:
                raise WireError(f"unsupported tracker message version in {event!r}")
            sender = _ref_from_wire(payload["from"])
            if not self._accept(sender, payload.get("pool")):
                return
            if event == EVENT_HEARTBEAT:
                clock = clock_from_wire(payload["clock"])
                delta = None if payload["delta"] is None else Delta.from_wire(payload["delta"])
                self._on_heartbeat(sender, clock, delta, at)
            elif event == EVENT_TRANSFER_REQ:
                await self._on_transfer_req(sender, clock_from_wire(payload["clock"]))
            elif event == EVENT_TRANSFER_ACK:
                if _ref_from_wire(payload["to"]) == self.ref:
                    self._merge(payload_from_wire(payload["payload"]))
                    t.stats["transfers_received"] += 1
            elif event == EVENT_GRACEFUL_PERMDOWN:
                self._on_graceful_permdown(sender, at)
        except (WireError, KeyError, TypeError, ValueError) as exc:
            t.stats["malformed"] += 1
            t._warn_once(("malformed", repr(payload.get("from") if isinstance(payload, dict)
                                            else None)),
                         logging.WARNING, "presence %s: ignoring malformed %r message: %s",
                         self.topic, event, exc)

    def _accept(self, sender: ReplicaRef, pool: Any) -> bool:
        t = self.tracker
        if sender.node == self.ref.node:
            if sender != self.ref:
                t._warn_once(("self", sender.node), logging.ERROR,
                             "presence %s: another tracker uses our node name %r; node names "
                             "must be unique: ignoring it", self.topic, sender.node)
            return False
        if pool != t.pool_size:
            t.stats["refused"] += 1
            t._warn_once(("pool", sender.node), logging.ERROR,
                         "presence %s: refusing node %r: its pool_size is %r, ours is %d; every "
                         "node must use the same pool_size or presences diverge", self.topic,
                         sender.node, pool, t.pool_size)
            return False
        retired = self.retired.get(sender.node)
        return retired is None or sender.vsn > retired[0]

    def _on_heartbeat(self, sender: ReplicaRef, clock: dict[ReplicaRef, int],
                      delta: Delta | None, at: float) -> None:
        t = self.tracker
        peer = self.peers.get(sender.node)
        if peer is None or sender.vsn > peer.ref.vsn:
            if peer is not None:
                log.info("presence %s: %s restarted (vsn %d -> %d): purging the old one",
                         self.topic, sender.node, peer.ref.vsn, sender.vsn)
                self.retired[sender.node] = (peer.ref.vsn, at)
                self.pending_clocks.pop(peer.ref, None)
            self.peers[sender.node] = _Peer(sender, at)
            diff = self.state.replica_restarted(sender)
            t._emit(diff.joins, diff.leaves)
        elif sender.vsn < peer.ref.vsn:
            return  # a late message from an incarnation that was already replaced
        else:
            peer.last_heartbeat = max(peer.last_heartbeat, at)
            if not peer.up:
                log.info("presence %s: replica %s/%d is up again", self.topic, sender.node,
                         sender.vsn)
                peer.up = True
                t._emit(self.state.replica_up(sender), ())
        if delta is not None:
            self._merge(delta)
        self.pending_clocks[sender] = clock

    async def _on_transfer_req(self, sender: ReplicaRef, context: dict[ReplicaRef, int]) -> None:
        reply = self.state.transfer_for(sender, context)
        if isinstance(reply, Delta) and not reply:
            return  # nothing it lacks
        self.tracker.stats["transfers_sent"] += 1
        await self._direct(sender.node, EVENT_TRANSFER_ACK, {
            **self._header(), "to": [sender.node, sender.vsn], "payload": reply.to_wire(),
        })

    def _on_graceful_permdown(self, sender: ReplicaRef, at: float) -> None:
        peer = self.peers.get(sender.node)
        if peer is not None and peer.ref.vsn > sender.vsn:
            return
        log.info("presence %s: %s/%d left the cluster", self.topic, sender.node, sender.vsn)
        self.retired[sender.node] = (sender.vsn, at)
        if peer is not None:
            del self.peers[sender.node]
        self.pending_clocks.pop(sender, None)
        if sender in self.state.context:
            self.tracker._emit((), self.state.remove_down_replica(sender))

    def _merge(self, payload: Delta | Snapshot) -> None:
        diff = self.state.merge(payload)
        self.tracker.stats["merges"] += 1
        self.tracker._emit(diff.joins, diff.leaves)

    # -- outgoing ------------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "pool": self.tracker.pool_size,
                "from": [self.ref.node, self.ref.vsn]}

    async def _request_transfer(self, ref: ReplicaRef) -> None:
        self.tracker.stats["transfer_requests_sent"] += 1
        await self._direct(ref.node, EVENT_TRANSFER_REQ, {
            **self._header(), "clock": clock_to_wire(self.state.context),
        })

    async def _broadcast(self, event: str, payload: dict[str, Any]) -> None:
        try:
            await self.tracker.pubsub.broadcast(self.topic, event, payload, exclude=self)
        except Exception:
            # Replication is best effort; a failing adapter must not kill the shard.
            log.exception("presence %s: broadcasting %s failed", self.topic, event)

    async def _direct(self, node: str, event: str, payload: dict[str, Any]) -> None:
        try:
            await self.tracker.pubsub.direct_broadcast(node, self.topic, event, payload)
        except Exception:
            log.exception("presence %s: sending %s to %s failed", self.topic, event, node)

