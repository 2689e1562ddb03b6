"""A rooms test app for the cluster tests (tests/cluster/test_rooms_cluster.py).

Clients join ``rooms:<anything>`` (to call and cast rooms) or ``ticks:<key>`` (to receive the
ticks of the :class:`Ticker` room ``<key>``). Pushes on a ``rooms:`` topic:

* ``call`` ``{"room": NAME, "key": KEY, "msg": {...}, "timeout": s}`` -> ``{"reply": ...}``, or
  an error reply ``{"error": "<RoomError subclass>", "message": "..."}``;
* ``call_with_set`` the same, but ``msg["tags"]`` (a list) is turned into a Python ``set``
  first (not msgpack-able: it cannot cross nodes);
* ``cast`` ``{"room", "key", "msg"}``;
* ``stats`` ``{"room"?, "key"?}`` -> this node's ``rooms.stats()``, its name, the rooms it
  terminated (name, reason) and whether ``room``/``key`` is active here.

Every room reply carries the node that handled it and the activation's fencing token. Timings
come from the environment: ``TEST_ROOM_LEASE`` (owner lease, s, default 2), ``TEST_ROOM_IDLE``
(:class:`Idler`'s idle timeout, default 1), ``TEST_TICK_PERIOD`` (default 0.1). With
``TEST_EXTRA_ROOMS=1`` the node also registers :class:`Extra` (a class other nodes lack).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import trio

from channels import Channel, Endpoint, Reply, Room, RoomError, Rooms, Socket

LEASE = float(os.environ.get("TEST_ROOM_LEASE", "2.0"))
IDLE = float(os.environ.get("TEST_ROOM_IDLE", "1.0"))
TICK = float(os.environ.get("TEST_TICK_PERIOD", "0.1"))

#: (room name, terminate reason), in order, on this node.
TERMINATED: list[list[str]] = []


class Counter(Room):
    """A count with snapshot/restore. Snapshots are only taken on ``save``, at handoff and
    idle deactivation (the periodic one is out of the tests' way)."""

    idle_timeout: ClassVar[float | None] = None
    snapshot_interval = 600.0

    async def init(self) -> None:
        self.count = 0
        self.restored: Any = None

    def snapshot(self) -> Any:
        return {"count": self.count}

    def restore(self, data: Any) -> None:
        self.restored = data
        self.count = data["count"]

    def info(self, **extra: Any) -> dict[str, Any]:
        return {"node": self.rooms.node_name, "token": self.token, "count": self.count,
                "restored": self.restored, **extra}

    async def handle_call(self, message: Any) -> Any:
        op = message.get("op")
        if op == "add":
            self.count += int(message.get("n", 1))
            saved = await self.save() if message.get("save") else None
            return self.info(saved=saved)
        if op == "crash":
            raise RuntimeError(f"{self.key} crashes on demand")
        if op == "hang":
            await trio.sleep_forever()
        if op == "tags":
            return self.info(tags=sorted(message["tags"]))
        return self.info()

    async def handle_cast(self, message: Any) -> None:
        self.count += int(message.get("n", 1))

    async def terminate(self, reason: str) -> None:
        TERMINATED.append([f"{type(self).__name__}:{self.key}", reason])


class Crasher(Counter):
    """Gives up on the third crash within 60 s."""

    max_restarts = 2
    restart_period = 60.0


class Slow(Counter):
    """``hang`` never returns: the handler is cancelled after a second."""

    handler_timeout = 1.0


class Idler(Counter):
    idle_timeout = IDLE


class Extra(Counter):
    """Registered only on nodes started with TEST_EXTRA_ROOMS=1."""


class Ghost(Counter):
    """Never registered."""


class Ticker(Room):
    """Broadcasts ``tick`` ``{"n", "token", "node"}`` to ``ticks:<key>`` every TICK s."""

    idle_timeout = None
    snapshot_interval = 0.2

    async def init(self) -> None:
        self.n = 0
        self.restored: Any = None
        self.interval(TICK, "tick")

    def snapshot(self) -> Any:
        return {"n": self.n}

    def restore(self, data: Any) -> None:
        self.restored = data
        self.n = data["n"]

    async def handle_info(self, message: Any) -> None:
        if message == "tick":
            self.n += 1
            await self.broadcast(f"ticks:{self.key}", "tick",
                                 {"n": self.n, "token": self.token,
                                  "node": self.rooms.node_name})

    async def handle_call(self, message: Any) -> Any:
        saved = await self.save() if message.get("op") == "save" else None
        return {"node": self.rooms.node_name, "token": self.token, "n": self.n,
                "restored": self.restored, "saved": saved}

    async def terminate(self, reason: str) -> None:
        TERMINATED.append([f"Ticker:{self.key}", reason])


CLASSES: dict[str, type[Room]] = {cls.__name__: cls for cls in (
    Counter, Crasher, Slow, Idler, Extra, Ghost, Ticker)}

rooms = Rooms(Counter, Crasher, Slow, Idler, Ticker, lease=LEASE)
if os.environ.get("TEST_EXTRA_ROOMS") == "1":
    rooms.register(Extra)


def _error(exc: RoomError) -> Reply:
    return Reply.error({"error": type(exc).__name__, "message": str(exc)})


class RoomsChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": rooms.node_name}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "stats":
            out: dict[str, Any] = {"node": rooms.node_name, **rooms.stats(),
                                   "terminated": TERMINATED[-100:]}
            if "room" in payload:
                out["is_active"] = rooms.is_active(CLASSES[payload["room"]], payload["key"])
            return Reply.ok(out)
        if event not in ("call", "call_with_set", "cast"):
            return Reply.error({"reason": f"unknown event {event}"})
        cls = CLASSES.get(payload.get("room"))
        if cls is None:
            return Reply.error({"reason": f"no room class {payload.get('room')!r} in this app"})
        message = dict(payload.get("msg") or {})
        if event == "call_with_set":
            message["tags"] = set(message.get("tags", ()))
        try:
            if event == "cast":
                await rooms.cast(cls, payload["key"], message)
                return Reply.ok({"node": rooms.node_name})
            result = await rooms.call(cls, payload["key"], message,
                                      timeout=float(payload.get("timeout", 5.0)))
        except RoomError as exc:
            return _error(exc)
        return Reply.ok({"reply": result, "via": rooms.node_name})


class RoomsSocket(Socket):
    channels = {"rooms:*": RoomsChannel, "ticks:*": RoomsChannel}


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": RoomsSocket}, rooms=rooms)
