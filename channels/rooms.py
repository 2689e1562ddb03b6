"""Rooms: one supervised actor per key, alive on exactly one node of the cluster.

A :class:`Room` subclass is the code of a kind of room (a game, a shared document); a key
(``"lobby"``, ``"doc:42"``) names one room of that kind. :class:`Rooms` finds or starts it:

* it **activates on first use**, on the calling node, under an owner lease (see
  :mod:`channels.placement`), and concurrent first calls start one activation;
* it handles one message at a time (``handle_call``, ``handle_cast``, ``handle_info``), so its
  state needs no locks; a crash restarts it from its last snapshot within its restart
  intensity, and never affects anything else;
* it **lives on one node**: calls and casts from other nodes travel to the owner over the
  cluster's messaging; the owner renews its lease and stops the room before the lease can run
  out when it cannot; everything the room sends carries its fencing token, and every node
  drops what comes from an older token than one it has seen;
* it deactivates after :attr:`Room.idle_timeout` without calls or casts, and is handed off
  (snapshot, release) when its node drains.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]
import trio

from channels.logutil import Throttled
from channels.placement import Lease, LeaseStore, MemoryLeaseStore
from supervisor import Actor, MailboxClosed, RestartIntensity, TimerRef

if TYPE_CHECKING:
    from channels.pubsub import Adapter, FrameCache, PubSub
    from presence import Presence

__all__ = [
    "BadRoomKey",
    "Interval",
    "NotSerializable",
    "Room",
    "RoomCrashed",
    "RoomError",
    "RoomGaveUp",
    "RoomTimeout",
    "RoomUnavailable",
    "Rooms",
    "UnknownRoom",
]

log = logging.getLogger("channels.rooms")

#: The internal pubsub topic of routed calls, casts, replies and fenced broadcasts.
ROOMS_TOPIC = "phx_rooms"
MAX_KEY_LENGTH = 512
TERMINATE_TIMEOUT = 5.0
_MAX_SEEN = 100_000  # fencing tokens remembered per node (oldest forgotten first)
_MAX_CAST_HOPS = 3
RENEW_BATCH = 500  # leases renewed per store call

R = TypeVar("R", bound="Room")


# -- errors ----------------------------------------------------------------------------------

class RoomError(Exception):
    """Base class of the errors a room call or cast raises."""


class UnknownRoom(RoomError):
    """The room class is not registered with :class:`Rooms` (on this node or the owner's)."""


class BadRoomKey(RoomError, ValueError):
    """A room key must be a non-empty string of at most 512 characters."""


class RoomTimeout(RoomError, TimeoutError):
    """No reply within the call's timeout, or ``handle_call`` ran past the handler timeout."""


class RoomCrashed(RoomError):
    """The room raised while handling this call (it restarts; the exception is the cause)."""


class RoomGaveUp(RoomError):
    """The room crashed more often than its restart intensity allows and is stopped for now."""


class RoomUnavailable(RoomError):
    """The room cannot be placed or reached: the cluster store is down, or the node stops."""


class NotSerializable(RoomError, TypeError):
    """A message, reply or snapshot that cannot cross nodes (it must be msgpack-able)."""


class _Moved(Exception):
    """The activation ended before handling the call: resolve the room again."""


_REMOTE_ERRORS: dict[str, type[RoomError]] = {
    cls.__name__: cls for cls in (RoomError, UnknownRoom, BadRoomKey, RoomTimeout, RoomCrashed,
                                  RoomGaveUp, RoomUnavailable, NotSerializable)
}


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(str(exc) or type(exc).__name__) from exc


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- the room base class ---------------------------------------------------------------------

class Interval:
    """A fixed-rate timer made by :meth:`Room.interval`.

    Ticks are due at ``start + n * period`` whatever each tick's handler costs, so the rate
    does not drift. When a tick is handled a whole period or more late, the missed ticks are
    skipped (not bunched up), counted in :attr:`overruns` and logged.
    """

    __slots__ = ("_activation", "_timer", "active", "due", "message", "overruns", "period",
                 "ticks")

    def __init__(self, activation: _Activation, period: float, message: Any) -> None:
        self._activation = activation
        self.period = period
        self.message = message
        self.due = trio.current_time() + period
        self.ticks = 0
        self.overruns = 0
        self.active = True
        self._timer: TimerRef | None = None

    def cancel(self) -> None:
        """Stop ticking."""
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Room:
    """Base class for rooms. Override the callbacks you need.

    In every callback: ``key`` (this room's key), ``token`` (the fencing token of this
    activation: larger for every new owner) and the methods below. One instance handles one
    message at a time. After a crash or a move to another node a new instance is made:
    ``init()`` runs, then ``restore(data)`` if a snapshot exists.
    """

    #: The room class's name in the cluster (default: the class name). Unique per Rooms.
    name: ClassVar[str | None] = None
    #: Seconds without a call or cast after which the room deactivates (None: never).
    idle_timeout: ClassVar[float | None] = 300.0
    #: Restart intensity: more than ``max_restarts`` crashes within ``restart_period``
    #: seconds make the room give up for ``restart_period`` seconds (calls get RoomGaveUp).
    max_restarts: ClassVar[int] = 3
    restart_period: ClassVar[float] = 5.0
    #: A callback running longer than this (seconds) is cancelled and logged; a call gets
    #: RoomTimeout and the room goes on with its next message.
    handler_timeout: ClassVar[float] = 5.0
    #: How often (seconds) ``snapshot()`` is taken and, if it changed, stored.
    snapshot_interval: ClassVar[float] = 1.0
    #: How long a stored snapshot outlives its room (seconds; None: forever).
    snapshot_ttl: ClassVar[float | None] = 86_400.0

    key: str
    _activation: _Activation

    # -- callbacks -----------------------------------------------------------------------------

    async def init(self) -> None:
        """Runs on every activation and restart, before any message (may load state)."""

    async def handle_call(self, message: Any) -> Any:
        """A :meth:`Rooms.call`; the return value is the caller's reply."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls")

    async def handle_cast(self, message: Any) -> None:
        """A :meth:`Rooms.cast` (no reply)."""

    async def handle_info(self, message: Any) -> None:
        """A message from :meth:`send`, :meth:`send_after` or :meth:`interval`."""

    async def terminate(self, reason: str) -> None:
        """The room stops: ``"idle"``, ``"normal"`` (or yours, from :meth:`stop`),
        ``"shutdown"`` (its node drains: it is handed off), ``"lease_lost"`` (another node
        owns it now: nothing this room sends reaches anyone). Not called after a crash."""

    def snapshot(self) -> Any:
        """The state to keep across crashes and moves (msgpack-able), or None.

        Taken every :attr:`snapshot_interval` seconds, on :meth:`save` and at handoff.
        """
        return None

    def restore(self, data: Any) -> None:
        """Load what :meth:`snapshot` returned (after ``init``)."""

    # -- API -----------------------------------------------------------------------------------

    @property
    def token(self) -> int:
        """This activation's fencing token."""
        return self._activation.lease.token

    @property
    def rooms(self) -> Rooms:
        """The :class:`Rooms` this room belongs to (to call other rooms)."""
        return self._activation.rooms

    @property
    def presence(self) -> Presence:
        """The endpoint's :class:`~presence.Presence` (``await self.presence.list(topic)``)."""
        return self._activation.rooms.presence

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any] | bytes) -> bool:
        """Send ``event`` to every subscriber of ``topic`` on every node, fenced by
        :attr:`token`. Returns False (and sends nothing) once this activation lost its lease."""
        return await self._activation.rooms._broadcast_fenced(self._activation, topic, event,
                                                              payload)

    def send(self, message: Any) -> None:
        """Deliver ``message`` to :meth:`handle_info`, after what is queued."""
        self._activation.send_info(message)

    def send_after(self, delay: float, message: Any) -> TimerRef:
        """Deliver ``message`` to :meth:`handle_info` after ``delay`` seconds."""
        return self._activation.send_after(delay, (_INFO, message))

    def interval(self, period: float, message: Any) -> Interval:
        """Deliver ``message`` to :meth:`handle_info` every ``period`` seconds, at a fixed
        rate (see :class:`Interval`); e.g. ``self.interval(1 / 20, "tick")`` for 20 Hz."""
        if not period > 0:
            raise ValueError("period must be > 0")
        ref = Interval(self._activation, period, message)
        ref._timer = self._activation.send_after(period, (_TICK, ref))
        return ref

    async def save(self) -> bool:
        """Take :meth:`snapshot` now and store it; False if it could not be stored."""
        return await self._activation.save_now()

    def stop(self, reason: str = "normal") -> None:
        """Deactivate after the current callback (``terminate(reason)`` runs)."""
        self._activation.stop_reason = reason


# -- one activation --------------------------------------------------------------------------

_CALL, _CAST, _INFO, _TICK, _IDLE, _SNAP = range(6)


class _PendingCall:
    __slots__ = ("abandoned", "error", "event", "message", "result")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.result: Any = None
        self.error: BaseException | None = None
        self.event = trio.Event()
        self.abandoned = False

    def done(self, result: Any) -> None:
        self.result = result
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


class _Activation(Actor[tuple[Any, ...]]):
    """Runs one room on this node while its lease is held: the restart loop, the mailbox,
    the timers, snapshots and the end (terminate, snapshot, release)."""

    def __init__(self, rooms: Rooms, cls: type[Room], key: str, lease: Lease,
                 snapshot: bytes | None, valid_until: float) -> None:
        super().__init__()
        self.rooms = rooms
        self.cls = cls
        self.key = key
        self.name = lease.name
        self.lease = lease
        self.valid_until = valid_until
        self.snapshot_bytes = snapshot
        self.room: Room | None = None
        self.state = "starting"  # starting | serving | stopping | gave_up
        self.ready = trio.Event()
        self.ended = trio.Event()
        self.stop_reason: str | None = None
        self.end_reason = "normal"
        self.handoff = True
        self.holds_lease = True
        self.last_used = trio.current_time()
        self.restarts = 0
        self.scope = trio.CancelScope()
        self._snapshots = type(self).has_snapshot(cls)

    @staticmethod
    def has_snapshot(cls: type[Room]) -> bool:
        return cls.snapshot is not Room.snapshot

    # -- from other tasks ----------------------------------------------------------------------

    async def call_at(self, message: Any, deadline: float) -> Any:
        return await self.wait_call(self.enqueue_call(message), deadline)

    def enqueue_call(self, message: Any) -> _PendingCall:
        """Queue a call now (so calls keep their arrival order); wait with :meth:`wait_call`."""
        if self.state == "gave_up":
            raise RoomGaveUp(f"room {self.name} gave up after repeated crashes; retry later")
        if self.state == "stopping" or not self._lease_valid():
            raise _Moved
        pending = _PendingCall(message)
        try:
            self.send((_CALL, pending))
        except MailboxClosed:
            raise _Moved from None
        self.last_used = trio.current_time()
        return pending

    async def wait_call(self, pending: _PendingCall, deadline: float) -> Any:
        if self.state == "starting":
            await self.ready.wait()
        with trio.move_on_at(deadline):
            await pending.event.wait()
        if not pending.event.is_set():
            pending.abandoned = True
            raise RoomTimeout(f"no reply from room {self.name} in time")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def cast(self, message: Any) -> None:
        if self.state in ("gave_up", "stopping") or not self._lease_valid():
            raise _Moved
        try:
            self.send((_CAST, message))
        except MailboxClosed:
            raise _Moved from None
        self.last_used = trio.current_time()

    def _lease_valid(self) -> bool:
        """False once the lease may have run out (e.g. this process was stopped): the room
        ends at once, so a resumed ex-owner never answers a call."""
        if self.holds_lease and trio.current_time() >= self.valid_until:
            self.rooms._lose(self, "its lease could not be renewed in time")
        return self.holds_lease

    def send_info(self, message: Any) -> None:
        try:
            self.send((_INFO, message))
        except MailboxClosed:
            pass  # a room that has ended drops its messages

    def send_after(self, delay: float, msg: tuple[Any, ...]) -> TimerRef:
        try:
            return super().send_after(delay, msg)
        except MailboxClosed:  # stopping: the timer would never fire anyway
            ref = TimerRef(self, msg, math.inf)
            ref.cancel()
            return ref

    def end(self, reason: str, *, handoff: bool) -> None:
        """Stop after the current message (or at once when the lease is lost)."""
        if self.state == "stopping":
            return
        gave_up = self.state == "gave_up"
        self.state = "stopping"
        self.end_reason = reason
        self.handoff = handoff
        self._fail_queued()
        self.stop()
        if not handoff:
            self.holds_lease = False
        if gave_up or not handoff:
            self.scope.cancel()

    # -- the task ------------------------------------------------------------------------------

    async def main(self) -> None:
        cls = self.cls
        intensity = RestartIntensity(cls.max_restarts, cls.restart_period)
        rooms = self.rooms
        with self.scope:
            try:
                while True:
                    try:
                        await self._start()
                        await self.run()
                        if self.stop_reason is not None and self.state != "stopping":
                            self.end(self.stop_reason, handoff=True)
                        break
                    except Exception as exc:
                        rooms.crashes += 1
                        log.error("room %s crashed", self.name, exc_info=exc)
                        self.cancel_timers()
                        self.room = None
                        if self.state == "stopping":
                            break
                        if not intensity.record(trio.current_time()):
                            await self._give_up(exc)
                            break
                        self.restarts += 1
            finally:
                await self._finish()

    async def _start(self) -> None:
        room = self.cls()
        room.key = self.key
        room._activation = self
        self.room = room
        with trio.fail_after(self.cls.handler_timeout):
            await room.init()
            if self.snapshot_bytes is not None and self._snapshots:
                room.restore(_unpack(self.snapshot_bytes))
        if self._snapshots and self.cls.snapshot_interval > 0:
            self.send_after(self.cls.snapshot_interval, (_SNAP,))
        if self.cls.idle_timeout is not None:
            self.send_after(self.cls.idle_timeout, (_IDLE,))
        if self.state == "starting":
            self.state = "serving"
        self.ready.set()

    async def _give_up(self, exc: Exception) -> None:
        rooms = self.rooms
        rooms.gave_up += 1
        self.state = "gave_up"
        self.end_reason = "gave_up"
        log.error("room %s crashed more than %d times in %gs: giving up for %gs (calls get "
                  "RoomGaveUp)", self.name, self.cls.max_restarts, self.cls.restart_period,
                  self.cls.restart_period)
        error = RoomGaveUp(f"room {self.name} gave up after repeated crashes ({exc!r})")
        error.__cause__ = exc
        while self._mailbox:
            item = self._mailbox.get_nowait()
            if item[0] == _CALL:
                item[1].fail(error)
        self.ready.set()
        # Keep the lease while given up, so every node's callers get the same answer.
        await trio.sleep(self.cls.restart_period)

    async def _finish(self) -> None:
        self.ready.set()
        self.state = "stopping"
        self._fail_queued()
        self.stop()
        rooms = self.rooms
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = TERMINATE_TIMEOUT
            room = self.room
            if room is not None and self.end_reason != "gave_up":
                try:
                    await room.terminate(self.end_reason)
                except Exception:
                    log.exception("terminate() of room %s raised", self.name)
            if self.holds_lease:
                if self.handoff and room is not None and self._snapshots:
                    self._take_snapshot()
                    if self.snapshot_bytes is not None:
                        await rooms._save(self)
                try:
                    await rooms.store.release(self.lease)
                except Exception as exc:
                    log.warning("could not release room %s (%s); its lease lapses in %gs",
                                self.name, exc, rooms.lease)
        rooms._ended(self)
        self.ended.set()

    def _fail_queued(self) -> None:
        mailbox = self._mailbox
        while mailbox:
            item = mailbox.get_nowait()
            if item[0] == _CALL:
                item[1].fail(_Moved())

    # -- messages ------------------------------------------------------------------------------

    async def handle_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        room = self.room
        assert room is not None
        if kind == _CALL:
            call: _PendingCall = msg[1]
            if call.abandoned:
                return
            with trio.move_on_after(self.cls.handler_timeout) as scope:
                try:
                    result = await room.handle_call(call.message)
                except Exception as exc:
                    error = RoomCrashed(f"room {self.name} crashed handling the call: {exc!r}")
                    error.__cause__ = exc
                    call.fail(error)
                    raise
            if scope.cancelled_caught:
                self._handler_overran("handle_call")
                call.fail(RoomTimeout(f"room {self.name}: handle_call ran past its "
                                      f"handler_timeout ({self.cls.handler_timeout}s)"))
            else:
                call.done(result)
        elif kind == _CAST:
            await self._bounded(room.handle_cast(msg[1]), "handle_cast")
        elif kind == _INFO:
            await self._bounded(room.handle_info(msg[1]), "handle_info")
        elif kind == _TICK:
            await self._tick(msg[1])
        elif kind == _IDLE:
            self._check_idle()
        elif kind == _SNAP:
            if self._take_snapshot():
                self.rooms._queue_save(self)
            self.send_after(self.cls.snapshot_interval, (_SNAP,))
        if self.stop_reason is not None and self.state != "stopping":
            self.end(self.stop_reason, handoff=True)

    async def _bounded(self, awaitable: Any, what: str) -> None:
        with trio.move_on_after(self.cls.handler_timeout) as scope:
            await awaitable
        if scope.cancelled_caught:
            self._handler_overran(what)

    def _handler_overran(self, what: str) -> None:
        self.rooms._warn((self.name, what), logging.ERROR,
                         "room %s: %s ran past its handler_timeout (%gs) and was cancelled",
                         self.name, what, self.cls.handler_timeout)

    async def _tick(self, ref: Interval) -> None:
        if not ref.active:
            return
        now = trio.current_time()
        late = now - ref.due
        if late >= ref.period:
            missed = int(late // ref.period)
            ref.overruns += missed
            ref.due += missed * ref.period
            self.rooms.overruns += missed
            self.rooms._warn((self.name, "overrun"), logging.WARNING,
                             "room %s: interval %r overran: %d tick(s) skipped (%d in all)",
                             self.name, ref.message, missed, ref.overruns)
        ref.due += ref.period
        ref._timer = self.send_after(max(0.0, ref.due - now), (_TICK, ref))
        ref.ticks += 1
        room = self.room
        assert room is not None
        await self._bounded(room.handle_info(ref.message), "handle_info")

    def _check_idle(self) -> None:
        timeout = self.cls.idle_timeout
        assert timeout is not None
        idle = trio.current_time() - self.last_used
        if idle >= timeout:
            log.debug("room %s idle for %.1fs: deactivating", self.name, idle)
            self.end("idle", handoff=True)
        else:
            self.send_after(timeout - idle, (_IDLE,))

    # -- snapshots -----------------------------------------------------------------------------

    def _take_snapshot(self) -> bool:
        """Take the room's snapshot; True if it differs from the last one."""
        room = self.room
        if room is None:
            return False
        try:
            data = _pack(room.snapshot())
        except NotSerializable as exc:
            self.rooms._warn((self.name, "snapshot"), logging.ERROR,
                             "room %s: snapshot() returned something that is not msgpack-able "
                             "(%s); keeping the previous snapshot", self.name, exc)
            return False
        except Exception:
            log.exception("room %s: snapshot() raised; keeping the previous snapshot",
                          self.name)
            return False
        if data == self.snapshot_bytes:
            return False
        self.snapshot_bytes = data
        return True

    async def save_now(self) -> bool:
        if not self._snapshots:
            return False
        self._take_snapshot()
        if self.snapshot_bytes is None:
            return False
        return await self.rooms._save(self)


# -- the registry and router -----------------------------------------------------------------

class _RoomsSubscriber:
    """Receives the internal ``phx_rooms`` topic (routed calls, replies, fenced broadcasts)."""

    __slots__ = ("rooms",)

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms

    def deliver(self, topic: str, event: str, payload: Any, cache: FrameCache) -> None:
        self.rooms._inbox.append((event, payload))
        self.rooms._inbox_wakeup.set()


class _Remote:
    __slots__ = ("event", "node", "reply")

    def __init__(self, node: str) -> None:
        self.node = node
        self.event = trio.Event()
        self.reply: list[Any] | None = None


class Rooms:
    """The rooms of an endpoint: give it the room classes, and it to the endpoint::

        rooms = Rooms(GameRoom, BoardRoom)
        endpoint = Endpoint({"/socket": UserSocket}, rooms=rooms)

        # in a channel
        state = await rooms.call(GameRoom, "arena-1", {"join": user}, timeout=2.0)
        await rooms.cast(GameRoom, "arena-1", {"input": "left"})

    On a single node (the default pubsub) leases and snapshots live in memory; with the
    Redis adapter they live in the cluster's Redis, and ``lease`` bounds how long a room is
    unreachable after its node dies: the next call or cast (or a node that used the room
    recently) activates it elsewhere within ``lease + lease / 2`` seconds.
    """

    def __init__(self, *classes: type[Room], lease: float = 5.0, margin: float | None = None,
                 store: LeaseStore | None = None) -> None:
        if not lease > 0:
            raise ValueError("lease must be > 0")
        self.lease = lease
        #: The owner stops a room this long before its lease could expire unrenewed.
        self.margin = margin if margin is not None else lease * 0.3
        if not 0 < self.margin < lease:
            raise ValueError("need 0 < margin < lease")
        self.renew_interval = (lease - self.margin) / 3
        self.watch_interval = lease / 2
        self._store = store
        self._classes: dict[str, type[Room]] = {}
        for cls in classes:
            self.register(cls)
        self._presence: Presence | None = None
        self._pubsub: PubSub | None = None
        self._nursery: trio.Nursery | None = None
        self._active: dict[str, _Activation] = {}
        self._starting: dict[str, trio.Event] = {}
        self._owner_cache: dict[str, str] = {}
        self._interest: dict[str, tuple[type[Room], str, float]] = {}
        self._max_seen: dict[str, int] = {}
        # Owner ids (node/incarnation) of nodes whose rooms stopped: never routed to again.
        self._stopped_owners: dict[str, None] = {}
        self._relinked_at = -math.inf  # when the cluster link last came back after a loss
        self._pending: dict[int, _Remote] = {}
        self._ids = itertools.count(1)
        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_wakeup = trio.Event()
        self._dirty: dict[str, _Activation] = {}
        self._dirty_wakeup = trio.Event()
        self._all_ended = trio.Event()
        self._stopping = False
        self._running = False
        self._shared = False
        self._owner_id = "local"
        self._warn = Throttled(log)
        # Counters.
        self.activations = 0
        self.restored = 0
        self.crashes = 0
        self.gave_up = 0
        self.lost = 0
        self.overruns = 0
        self.fenced_dropped = 0
        self.remote_calls = 0

    # -- configuration -------------------------------------------------------------------------

    def register(self, cls: type[Room]) -> type[Room]:
        """Add a room class (also usable as a class decorator)."""
        if not (isinstance(cls, type) and issubclass(cls, Room)):
            raise TypeError(f"{cls!r} is not a Room subclass")
        name = cls.name or cls.__name__
        if "|" in name or "/" in name:
            raise ValueError(f"room class name {name!r} must not contain '|' or '/'")
        other = self._classes.get(name)
        if other is not None and other is not cls:
            raise ValueError(f"two room classes are named {name!r}: {other!r} and {cls!r}")
        self._classes[name] = cls
        return cls

    def attach(self, pubsub: PubSub, presence: Presence | None = None) -> None:
        """Bind to an endpoint's pubsub and presence (the endpoint does this)."""
        self._pubsub = pubsub
        self._presence = presence

    @property
    def store(self) -> LeaseStore:
        if self._store is None:
            raise RoomUnavailable("rooms are not running (give Rooms to a served Endpoint)")
        return self._store

    @property
    def presence(self) -> Presence:
        if self._presence is None:
            raise RuntimeError("the endpoint has no Presence (Endpoint(..., presence=...))")
        return self._presence

    @property
    def node_name(self) -> str:
        return self._adapter.node_name

    @property
    def _adapter(self) -> Adapter:
        if self._pubsub is None:
            raise RoomUnavailable("rooms are not attached to an endpoint")
        return self._pubsub.adapter

    # -- public API ------------------------------------------------------------------------------

    async def call(self, room: type[Room], key: str, message: Any, *,
                   timeout: float = 5.0) -> Any:
        """Send ``message`` to the room's ``handle_call`` and return its reply.

        Activates the room if needed (on this node when nobody owns it). Raises
        :class:`RoomTimeout` after ``timeout`` seconds, :class:`RoomCrashed` if handling it
        crashed the room, :class:`RoomGaveUp`, :class:`RoomUnavailable`,
        :class:`UnknownRoom`, :class:`BadRoomKey`, or :class:`NotSerializable` when the room
        lives on another node and the message or reply is not msgpack-able.
        """
        cls, name = self._check(room, key)
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_at(deadline):
                while True:
                    target = await self._resolve(cls, key, name)
                    try:
                        if isinstance(target, _Activation):
                            return await target.call_at(message, deadline)
                        return await self._remote_call(target, cls, key, name, message, deadline)
                    except _Moved:
                        self._owner_cache.pop(name, None)
                        await trio.sleep(0.005)
        except trio.TooSlowError:
            self._owner_cache.pop(name, None)
            raise RoomTimeout(f"no reply from room {name} within {timeout}s") from None

    async def cast(self, room: type[Room], key: str, message: Any) -> None:
        """Send ``message`` to the room's ``handle_cast`` without waiting for it.

        Activates the room if needed. Delivery to another node is at most once.
        """
        cls, name = self._check(room, key)
        await self._cast(cls, key, name, message, 0)

    def is_active(self, room: type[Room], key: str) -> bool:
        """True if the room is active on this node."""
        name = self._check(room, key)[1]
        act = self._active.get(name)
        return act is not None and act.state in ("starting", "serving")

    def stats(self) -> dict[str, int]:
        """Counters for monitoring."""
        return {
            "active": len(self._active),
            "activations": self.activations,
            "restored": self.restored,
            "crashes": self.crashes,
            "gave_up": self.gave_up,
            "lost": self.lost,
            "overruns": self.overruns,
            "fenced_dropped": self.fenced_dropped,
            "remote_calls": self.remote_calls,
        }

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the rooms of this node (a service of the endpoint) until cancelled."""
        if self._pubsub is None:
            raise RuntimeError("Rooms.attach() was not called (give it to an Endpoint)")
        if self._running:
            raise RuntimeError("these Rooms are already running")
        self._running = True
        self._stopping = False
        adapter = self._pubsub.adapter
        if self._store is None:
            from channels.redis import RedisAdapter  # the Redis store only with its adapter

            if isinstance(adapter, RedisAdapter):
                from channels.placement import RedisLeaseStore

                self._store = RedisLeaseStore(adapter.url, adapter.namespace)
            else:
                self._store = MemoryLeaseStore()
        self._shared = not isinstance(self._store, MemoryLeaseStore)
        self._owner_id = f"{adapter.node_name}/{adapter.incarnation or 'x'}"
        subscriber = _RoomsSubscriber(self)
        self._pubsub.subscribe(ROOMS_TOPIC, subscriber)
        hooks = adapter.on_reconnect
        hooks.append(self._relinked)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._store.run)
                for loop in (self._dispatch, self._writer, *((self._renewer, self._watchdog,
                             self._watch_interest) if self._shared else ())):
                    nursery.start_soon(self._keep, loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._running = False
            self._pubsub.unsubscribe(ROOMS_TOPIC, subscriber)
            if self._relinked in hooks:
                hooks.remove(self._relinked)
            for remote in self._pending.values():
                remote.event.set()

    async def _keep(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop; a bug in it is logged and the loop restarted."""
        while True:
            try:
                await loop()
                return
            except Exception:
                log.exception("rooms: %s failed; restarting it", loop.__name__)
                await trio.sleep(1.0)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Hand every room off: terminate, store its snapshot, release its lease.

        New calls on this node get :class:`RoomUnavailable`; calls from other nodes move to
        whichever node calls next.
        """
        self._stopping = True
        acts = list(self._active.values())
        if acts:
            log.info("handing off %d room(s)", len(acts))
        for act in acts:
            act.end("shutdown", handoff=True)
        with trio.move_on_after(timeout):
            while self._active:
                self._all_ended = trio.Event()
                await self._all_ended.wait()
        if self._active:
            log.warning("%d room(s) did not stop within %gs", len(self._active), timeout)
        elif self._shared:
            # Nodes that routed calls here must not wait for this node's lapsed subscription:
            # they drop it as an owner and retry their calls in flight (no room runs here any
            # more, so a retried call cannot run twice).
            await self._adapter.publish(ROOMS_TOPIC, "stopped", [self._owner_id])

    # -- placement -------------------------------------------------------------------------------

    def _check(self, room: type[Room], key: str) -> tuple[type[Room], str]:
        name = getattr(room, "name", None) or getattr(room, "__name__", repr(room))
        cls = self._classes.get(name) if isinstance(name, str) else None
        if cls is None or cls is not room:
            raise UnknownRoom(f"{room!r} is not registered with Rooms (known: "
                              f"{', '.join(sorted(self._classes)) or 'none'})")
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise BadRoomKey(f"room key must be a non-empty str of at most {MAX_KEY_LENGTH} "
                             f"characters, got {key!r:.80}")
        return cls, f"{name}:{key}"

    async def _resolve(self, cls: type[Room], key: str, name: str) -> _Activation | str:
        """The local activation of ``name``, or the node that owns it."""
        while True:
            act = self._active.get(name)
            if act is not None:
                if act.state == "starting":
                    await act.ready.wait()
                return act
            if self._stopping or not self._running:
                raise RoomUnavailable(f"room {name}: this node's rooms are "
                                      f"{'stopping' if self._stopping else 'not running'}")
            owner = self._owner_cache.get(name)
            if owner is not None:
                return owner
            starting = self._starting.get(name)
            if starting is not None:
                await starting.wait()
                continue
            event = self._starting[name] = trio.Event()
            try:
                await self._place(cls, key, name)
            finally:
                del self._starting[name]
                event.set()

    def _relinked(self) -> None:
        self._relinked_at = trio.current_time()

    def _settling(self) -> bool:
        """True while a lease missing from the store may only mean that Redis restarted
        empty: the cluster link is down, or came back less than ``lease - margin`` ago (a
        live owner re-grants its lease within that time, or its watchdog stops the room)."""
        if not self._shared:
            return False
        if getattr(self._adapter, "connected", True) is False:
            return True
        return trio.current_time() - self._relinked_at < self.lease - self.margin

    async def _place(self, cls: type[Room], key: str, name: str) -> None:
        """Acquire the lease and activate here, or learn the owner (one attempt)."""
        t0 = trio.current_time()
        try:
            if self._settling() and (await self.store.owners([name]))[0] is None:
                # Do not take a room whose live owner is about to re-grant its lease.
                await trio.sleep(0.05)
                return
            got = await self.store.acquire(name, self._owner_id, self.lease)
        except Exception as exc:
            self._warn(("place", type(exc)), logging.WARNING,
                       "cannot place room %s: %s", name, exc)
            raise RoomUnavailable(f"cannot place room {name}: {exc}") from exc
        if isinstance(got, Lease):
            await self._activate(cls, key, got, t0 + self.lease - self.margin)
            return
        if got is None:
            await trio.sleep(0.01)
            return
        holder, _token = got
        node = holder.rpartition("/")[0]
        if holder == self._owner_id:
            # Ours, but ending or released a moment ago: look again shortly.
            await trio.sleep(0.01)
            return
        if node == self.node_name or holder in self._stopped_owners:
            # Our node name under an earlier incarnation, or a node whose rooms stopped: that
            # process is gone or going (names are unique among live nodes), so wait for its
            # lease rather than call a ghost.
            await trio.sleep(min(0.1, self.lease / 10))
            return
        self._owner_cache[name] = node

    async def _activate(self, cls: type[Room], key: str, lease: Lease,
                        valid_until: float) -> None:
        try:
            snapshot = await self.store.load(lease.name) if _Activation.has_snapshot(cls) \
                else None
        except Exception as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self.store.release(lease)
                except Exception:
                    pass
            raise RoomUnavailable(f"cannot load the snapshot of room {lease.name}: {exc}") \
                from exc
        if self._nursery is None:
            raise RoomUnavailable("rooms are not running")
        act = _Activation(self, cls, key, lease, snapshot,
                          valid_until if self._shared else math.inf)
        self._active[lease.name] = act
        self._owner_cache.pop(lease.name, None)
        self._admit(lease.name, lease.token)
        self.activations += 1
        if snapshot is not None:
            self.restored += 1
        log.debug("room %s activated (token %d%s)", lease.name, lease.token,
                  ", from a snapshot" if snapshot is not None else "")
        self._nursery.start_soon(act.main, name=f"room {lease.name}")
        await act.ready.wait()

    def _ended(self, act: _Activation) -> None:
        if self._active.get(act.name) is act:
            del self._active[act.name]
        self._dirty.pop(act.name, None)
        if not self._active:
            self._all_ended.set()

    def _lose(self, act: _Activation, why: str) -> None:
        if not act.holds_lease:
            return
        self.lost += 1
        log.warning("room %s stops on this node: %s", act.name, why)
        act.end("lease_lost", handoff=False)

    # -- calls and casts across nodes ------------------------------------------------------------

    async def _remote_call(self, node: str, cls: type[Room], key: str, name: str, message: Any,
                           deadline: float) -> Any:
        self._interest[name] = (cls, key, trio.current_time())
        try:
            _pack(message)
        except NotSerializable as exc:
            log.error("call to room %s on node %s: the message is not msgpack-able (%s)",
                      name, node, exc)
            raise NotSerializable(f"call to room {name} on node {node}: the message cannot "
                                  f"cross nodes: {exc}") from None
        self._check_link(name)
        call_id = next(self._ids)
        remote = self._pending[call_id] = _Remote(node)
        self.remote_calls += 1
        try:
            timeout = max(0.0, deadline - trio.current_time())
            await self._adapter.direct(node, ROOMS_TOPIC, "call",
                                       [call_id, self.node_name, name, key, message, timeout])
            await remote.event.wait()
        finally:
            self._pending.pop(call_id, None)
        reply = remote.reply
        if reply is None:
            raise RoomUnavailable(f"room {name}: this node's rooms stopped")
        status = reply[0]
        if status == "ok":
            return reply[1]
        if status == "moved":
            raise _Moved
        kind = _REMOTE_ERRORS.get(reply[1], RoomError) if len(reply) > 2 else RoomError
        raise kind(reply[2] if len(reply) > 2 else f"room {name}: error on node {node}")

    def _check_link(self, name: str) -> None:
        if getattr(self._adapter, "connected", True) is False:
            raise RoomUnavailable(f"room {name} is on another node and the cluster link is down")

    async def _cast(self, cls: type[Room], key: str, name: str, message: Any, hops: int) -> None:
        for _ in range(_MAX_CAST_HOPS):
            target = await self._resolve(cls, key, name)
            if isinstance(target, _Activation):
                try:
                    target.cast(message)
                    return
                except _Moved:
                    await trio.sleep(0.005)
                    continue
            if hops >= _MAX_CAST_HOPS:
                log.warning("cast to room %s dropped: it moved %d times", name, hops)
                return
            self._interest[name] = (cls, key, trio.current_time())
            try:
                _pack(message)
            except NotSerializable as exc:
                raise NotSerializable(f"cast to room {name} on node {target}: the message "
                                      f"cannot cross nodes: {exc}") from None
            self._check_link(name)
            await self._adapter.direct(target, ROOMS_TOPIC, "cast",
                                       [name, key, message, hops + 1])
            return

    async def _dispatch(self) -> None:
        inbox = self._inbox
        while True:
            await self._inbox_wakeup.wait()
            self._inbox_wakeup = trio.Event()
            while inbox:
                event, payload = inbox.popleft()
                try:
                    await self._handle_routed(event, payload)
                except Exception as exc:
                    self._warn(("routed", event), logging.WARNING,
                               "bad %r message on %s: %s", event, ROOMS_TOPIC, exc)

    async def _handle_routed(self, event: str, payload: Any) -> None:
        assert self._nursery is not None
        if event == "fenced":
            name, token, topic, ev, data = payload
            if self._admit(name, int(token)):
                assert self._pubsub is not None
                await self._pubsub.local_broadcast(topic, ev, data)
            else:
                self.fenced_dropped += 1
        elif event == "reply":
            remote = self._pending.get(payload[0])
            if remote is not None:
                remote.reply = list(payload[1:])
                remote.event.set()
        elif event == "stopped":
            self._owner_stopped(str(payload[0]))
        elif event == "call":
            call_id, reply_to, name, key, message, timeout = payload
            act = self._active.get(name)
            pending: _PendingCall | BaseException | None = None
            if act is not None:
                # Queued here, in arrival order: a task per call could reorder them.
                try:
                    pending = act.enqueue_call(message)
                except (_Moved, RoomError) as exc:
                    pending = exc
            self._nursery.start_soon(self._serve_call, call_id, reply_to, name, act, pending,
                                     float(timeout))
        elif event == "cast":
            name, key, message, hops = payload
            act = self._active.get(name)
            if act is not None:
                try:
                    act.cast(message)
                    return
                except _Moved:
                    pass
            self._nursery.start_soon(self._serve_cast, name, key, message, hops)

    def _owner_stopped(self, owner_id: str) -> None:
        """Another node's rooms stopped (it drains): forget it as an owner."""
        if len(self._stopped_owners) >= 1000:
            del self._stopped_owners[next(iter(self._stopped_owners))]
        self._stopped_owners[owner_id] = None
        node = owner_id.rpartition("/")[0]
        for name, cached in list(self._owner_cache.items()):
            if cached == node:
                del self._owner_cache[name]
        for remote in self._pending.values():
            if remote.node == node and not remote.event.is_set():
                remote.reply = ["moved"]
                remote.event.set()

    def _class_of(self, name: str) -> type[Room] | None:
        return self._classes.get(name.split(":", 1)[0])

    async def _serve_call(self, call_id: int, reply_to: str, name: str,
                          act: _Activation | None, pending: _PendingCall | BaseException | None,
                          timeout: float) -> None:
        reply: list[Any]
        try:
            if self._class_of(name) is None:
                raise UnknownRoom(f"room class of {name!r} is not registered on node "
                                  f"{self.node_name}")
            if act is None or pending is None:
                raise _Moved
            if isinstance(pending, BaseException):
                raise pending
            result = await act.wait_call(pending, trio.current_time() + timeout)
            _pack(result)
            reply = ["ok", result]
        except _Moved:
            reply = ["moved"]
        except NotSerializable as exc:
            log.error("room %s: the reply to a call from node %s is not msgpack-able (%s)",
                      name, reply_to, exc)
            reply = ["error", "NotSerializable",
                     f"room {name}: the reply cannot cross nodes: {exc}"]
        except RoomError as exc:
            reply = ["error", type(exc).__name__, str(exc)]
        await self._adapter.direct(reply_to, ROOMS_TOPIC, "reply", [call_id, *reply])

    async def _serve_cast(self, name: str, key: str, message: Any, hops: int) -> None:
        cls = self._class_of(name)
        if cls is None:
            self._warn(("cast", name), logging.WARNING,
                       "cast for unknown room class %r dropped", name)
            return
        try:
            if not self._stopping:
                await self._cast(cls, key, name, message, int(hops))
        except RoomError as exc:
            self._warn(("cast", name), logging.WARNING, "cast to room %s dropped: %s",
                       name, exc)

    # -- fencing ---------------------------------------------------------------------------------

    def _admit(self, name: str, token: int) -> bool:
        """Record ``token`` for ``name``; False if a newer owner was seen already."""
        seen = self._max_seen.get(name)
        if seen is not None and token < seen:
            return False
        if seen is None and len(self._max_seen) >= _MAX_SEEN:
            del self._max_seen[next(iter(self._max_seen))]
        self._max_seen[name] = token
        act = self._active.get(name)
        if act is not None and act.lease.token < token:
            self._lose(act, f"a newer owner (token {token}) is broadcasting")
        return True

    async def _broadcast_fenced(self, act: _Activation, topic: str, event: str,
                                payload: Any) -> bool:
        if not act.holds_lease or trio.current_time() >= act.valid_until:
            self._lose(act, "its lease could not be renewed in time")
            return False
        token = act.lease.token
        if not self._admit(act.name, token):
            return False
        assert self._pubsub is not None
        history = self._pubsub.history
        if history is not None and history.config_for(topic) is not None:
            # Positioned by the history (receivers order and dedupe by offset).
            await self._pubsub.broadcast(topic, event, payload)
            return True
        await self._pubsub.local_broadcast(topic, event, payload)
        if self._shared:
            await self._adapter.publish(ROOMS_TOPIC, "fenced",
                                        [act.name, token, topic, event, payload])
        return True

    # -- background work (cluster) ---------------------------------------------------------------

    def _queue_save(self, act: _Activation) -> None:
        self._dirty[act.name] = act
        self._dirty_wakeup.set()

    async def _save(self, act: _Activation) -> bool:
        data = act.snapshot_bytes
        if data is None:
            return False
        try:
            ok = await self.store.save(act.lease, data, act.cls.snapshot_ttl)
        except Exception as exc:
            self._warn(("save", type(exc)), logging.WARNING,
                       "could not store the snapshot of room %s: %s", act.name, exc)
            return False
        if not ok:
            self._warn(("save", act.name), logging.WARNING,
                       "snapshot of room %s refused: token %d no longer owns it", act.name,
                       act.lease.token)
        return ok

    async def _writer(self) -> None:
        """Stores changed snapshots, latest first-come, one at a time (never in a room's way)."""
        while True:
            await self._dirty_wakeup.wait()
            self._dirty_wakeup = trio.Event()
            while self._dirty:
                name = next(iter(self._dirty))
                act = self._dirty.pop(name)
                if act.holds_lease:
                    await self._save(act)

    async def _renewer(self) -> None:
        while True:
            await trio.sleep(self.renew_interval)
            t0 = trio.current_time()
            acts = []
            for act in list(self._active.values()):
                if not act.holds_lease:
                    continue
                if t0 >= act.valid_until:
                    # Past its validity (e.g. this process was stopped): renewing would
                    # re-grant a lapsed lease, which another node may have held meanwhile.
                    self._lose(act, "its lease could not be renewed in time")
                else:
                    acts.append(act)
            # Batch by batch, each counted renewed when it returns (from when it was sent):
            # a pass slower than the margin (many rooms, a slow link) must not stop rooms
            # whose leases Redis did renew.
            for start in range(0, len(acts), RENEW_BATCH):
                await self._renew_batch(acts[start:start + RENEW_BATCH])

    async def _renew_batch(self, acts: list[_Activation]) -> None:
        t0 = trio.current_time()
        try:
            with trio.fail_after(self.lease - self.margin):
                held = await self.store.renew([act.lease for act in acts], self.lease)
        except (Exception, trio.TooSlowError) as exc:
            self._warn("renew", logging.WARNING,
                       "cannot renew %d room lease(s): %s; they stop in at most %.1fs "
                       "unless the store answers", len(acts), exc or type(exc).__name__,
                       self.lease - self.margin)
            return
        for act, ok in zip(acts, held, strict=True):
            if ok and (act.state == "stopping" or not act.holds_lease):
                # It stops while the renewal was under way, which may re-grant the lease
                # it gives up: release it again once it has ended.
                assert self._nursery is not None
                self._nursery.start_soon(self._release_ended, act)
            if not act.holds_lease:
                continue
            if ok:
                act.valid_until = max(act.valid_until, t0 + self.lease - self.margin)
            else:
                self._lose(act, "another node took its lease over")

    async def _release_ended(self, act: _Activation) -> None:
        await act.ended.wait()
        try:
            await self.store.release(act.lease)
        except Exception as exc:
            log.info("could not release room %s (%s); its lease lapses in %gs", act.name,
                     exc, self.lease)

    async def _watchdog(self) -> None:
        """Stops rooms whose lease may have run out: checked often and independently of
        Redis, so a room never acts past ``lease - margin`` after its last renewal."""
        while True:
            await trio.sleep(self.margin / 4)
            now = trio.current_time()
            for act in list(self._active.values()):
                if act.holds_lease and now >= act.valid_until:
                    self._lose(act, "its lease could not be renewed in time")

    async def _watch_interest(self) -> None:
        """Re-activates, here, rooms this node used recently whose owner vanished."""
        while True:
            await trio.sleep(self.watch_interval)
            if self._stopping or self._settling():
                continue
            now = trio.current_time()
            names: list[str] = []
            for name, (cls, _key, used) in list(self._interest.items()):
                idle = cls.idle_timeout
                if name in self._active or (idle is not None and now - used > idle):
                    del self._interest[name]
                else:
                    names.append(name)
            if not names:
                continue
            try:
                owners = await self.store.owners(names)
            except Exception as exc:
                self._warn("watch", logging.WARNING, "cannot look up room owners: %s", exc)
                continue
            for name, owner in zip(names, owners, strict=True):
                entry = self._interest.get(name)
                if entry is None:
                    continue
                if owner is None:
                    self._owner_cache.pop(name, None)
                    if name not in self._starting and name not in self._active:
                        assert self._nursery is not None
                        self._nursery.start_soon(self._reactivate, entry[0], entry[1], name)
                else:
                    node = owner[0].rpartition("/")[0]
                    if node != self.node_name:
                        self._owner_cache[name] = node

    async def _reactivate(self, cls: type[Room], key: str, name: str) -> None:
        try:
            await self._resolve(cls, key, name)
        except RoomError as exc:
            log.info("could not re-activate room %s: %s", name, exc)


def room_classes(rooms: Rooms) -> Iterable[type[Room]]:
    """The registered room classes (for tools and tests)."""
    return tuple(rooms._classes.values())
