"""The example multiplayer game: a pellet arena, server-authoritative at 20 ticks a second.

Run it with ``./scripts/game`` (or ``trio-channels serve examples.game.app:endpoint``) and
open http://127.0.0.1:4000/ in two windows. Arrow keys or WASD move your dot; eat pellets
(golden ones are worth more). The rules are pure functions in :mod:`examples.game.logic`.

How it is built: each arena is an :class:`Arena` room (:mod:`channels.rooms`), keyed by its
name, alive on one node of the cluster. It owns the game state and advances it with
``self.interval(1 / 20, "tick")``; players talk to it through their :class:`GameChannel`,
which calls it to join and casts inputs to it. The room snapshots its state every
:attr:`Arena.snapshot_interval`, so a crash restarts it from there, and with ``--redis-url``
a node that used the arena recently re-activates it from the last snapshot (stored in Redis)
when the arena's node dies, within about ``lease * 1.5`` seconds (``GAME_ROOM_LEASE``,
default 5 s).

The protocol, as the page (``static/``, with the official phoenix.js) uses it:

* join ``game:<arena>`` (arena: 1-32 of ``a-z 0-9 - _``) with ``{"name": "<display name>"}``.
  The reply is ``{"id", "name", "arena", "node", "tick_rate", "world": {"width", "height"},
  "state"}``: ``id`` is your player's id in the states, ``node`` the node your socket is on,
  ``state`` the arena's current state (below). A refused join answers ``{"reason": "...",
  "retry": bool}``; ``retry`` is true when the arena is only unavailable for now (e.g. moving
  to another node), so letting phoenix.js retry the join makes sense.
* push ``input`` ``{"dx": -1|0|1, "dy": -1|0|1}``: the direction you hold (0, 0 stops). The
  reply is ``ok`` ``{}`` once it is on its way to the arena, or ``error`` ``{"reason"}``. It
  takes effect at the arena's next tick; inputs are delivered at most once, so send the
  current direction again whenever it changes.
* every tick with players in it, everyone in the arena receives ``tick``, the whole public
  state: ``{"tick", "epoch", "node", "players": [{"id", "name", "x", "y", "r", "score",
  "color", "dx", "dy"}], "pellets": [[x, y, points]]}``. ``tick`` counts up by one per tick
  (it continues from the snapshot after a restart or a move, so it can step back by up to
  a snapshot interval's worth); ``epoch`` is the room activation's fencing token (larger after
  each move to another node); ``node`` is the node running the arena. A whole state rather
  than a diff, so a lost message (cross-node delivery is at most once) costs nothing.
* the channel keeps its player alive with a cast every :data:`KEEPALIVE` seconds; a player
  not heard from for 8 s (e.g. whose node died) is dropped, and one the arena lost (restored
  from a snapshot taken before it joined) is added back by its next input or keep-alive.
  Leaving the channel (or closing the page) removes the player.

Cluster mode: ``./scripts/game-cluster`` (two nodes and a private redis-server), or
``trio-channels serve examples.game.app:endpoint --redis-url URL --node-name NAME``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import unicodedata
from pathlib import Path
from typing import Any

import trio

from channels import Channel, Endpoint, JoinError, Reply, Room, RoomError, Rooms, Socket
from examples.game import logic

log = logging.getLogger("examples.game")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: The repository root, where ``npm ci`` puts ``node_modules``.
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_JS = Path("node_modules/phoenix/priv/static/phoenix.mjs")

TOPIC_PREFIX = "game:"
ARENA_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_NAME_LENGTH = 24
#: Seconds between a channel's keep-alive casts to its arena.
KEEPALIVE = 1.0
JOIN_TIMEOUT = 5.0
#: Lease of an arena's owner node, in seconds (env ``GAME_ROOM_LEASE``): after its node dies,
#: an arena comes back on another node within about 1.5 times this.
DEFAULT_LEASE = 5.0


class Arena(Room):
    """One arena: the game state, advanced and broadcast 20 times a second."""

    #: Deactivate after a minute without joins, inputs or keep-alives (nobody is playing).
    idle_timeout = 60.0
    #: The state is small: keep the last snapshot recent, so a move loses little play.
    snapshot_interval = 0.5
    snapshot_ttl = 3600.0
    handler_timeout = 2.0

    state: logic.State
    inputs: dict[str, tuple[int, int]]

    async def init(self) -> None:
        self.state = logic.new_state(secrets.randbits(32))
        self.inputs = {}
        self.topic = TOPIC_PREFIX + self.key
        self.interval(1 / logic.TICK_RATE, "tick")

    def snapshot(self) -> Any:
        return self.state

    def restore(self, data: Any) -> None:
        try:
            self.state = logic.check_state(data)
        except ValueError as exc:
            log.warning("arena %s: ignoring an unusable snapshot (%s)", self.key, exc)
        else:
            log.info("arena %s restored at tick %d with %d player(s)", self.key,
                     self.state["tick"], len(self.state["players"]))

    def public(self) -> dict[str, Any]:
        return {**logic.public(self.state), "epoch": self.token, "node": self.rooms.node_name}

    async def handle_call(self, message: Any) -> Any:
        op = message.get("op") if isinstance(message, dict) else None
        if op == "join":
            pid, name = message.get("id"), message.get("name")
            if not (isinstance(pid, str) and isinstance(name, str)):
                return {"error": "a join needs an id and a name"}
            try:
                self.state = logic.join(self.state, pid, name)
            except logic.ArenaFull as exc:
                return {"error": str(exc)}
            return {"state": self.public()}
        if op == "state":
            return {"state": self.public()}
        return {"error": f"unknown call {op!r}"}

    async def handle_cast(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        op, pid = message.get("op"), message.get("id")
        if not isinstance(pid, str):
            return
        if op == "input":
            dx: Any = message.get("dx")
            dy: Any = message.get("dy")
            if logic.valid_direction(dx, dy):
                self.state = logic.touch(self.state, pid, str(message.get("name", "?")))
                if pid in self.state["players"]:
                    self.inputs[pid] = (dx, dy)
        elif op == "ping":
            self.state = logic.touch(self.state, pid, str(message.get("name", "?")))
        elif op == "leave":
            self.state = logic.leave(self.state, pid)
            self.inputs.pop(pid, None)

    async def handle_info(self, message: Any) -> None:
        if message == "tick":
            self.state = logic.step(self.state, self.inputs)
            self.inputs = {}
            if self.state["players"]:
                await self.broadcast(self.topic, "tick", self.public())


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def validate_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JoinError({"reason": "a display name is required", "retry": False})
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise JoinError({"reason": f"display names are at most {MAX_NAME_LENGTH} characters",
                         "retry": False})
    if _has_control_chars(name):
        raise JoinError({"reason": "display names cannot contain control characters",
                         "retry": False})
    return name


def validate_arena(topic: str) -> str:
    arena = topic.removeprefix(TOPIC_PREFIX)
    if not ARENA_RE.fullmatch(arena):
        raise JoinError({"reason": "arena names are 1-32 characters: a-z, 0-9, '-' and '_', "
                                   "starting with a letter or digit", "retry": False})
    return arena


class GameChannel(Channel):
    """One player in one arena: joins through a call, relays inputs as casts."""

    @property
    def rooms(self) -> Rooms:
        rooms = self.socket.endpoint.rooms
        assert rooms is not None, "the game endpoint has rooms"
        return rooms

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        arena = validate_arena(topic)
        name = validate_name(params.get("name"))
        pid = secrets.token_hex(6)
        try:
            reply = await self.rooms.call(Arena, arena, {"op": "join", "id": pid, "name": name},
                                          timeout=JOIN_TIMEOUT)
        except RoomError as exc:
            log.warning("join of arena %s failed: %s", arena, exc)
            raise JoinError({"reason": "the arena is unavailable right now; retrying",
                             "retry": True}) from None
        if "error" in reply:
            raise JoinError({"reason": reply["error"], "retry": False})
        self.assigns.update(arena=arena, id=pid, name=name)
        self.send_after(KEEPALIVE, "keepalive")
        return {"id": pid, "name": name, "arena": arena, "node": self.rooms.node_name,
                "tick_rate": logic.TICK_RATE,
                "world": {"width": logic.WIDTH, "height": logic.HEIGHT},
                "state": reply["state"]}

    async def _cast(self, message: dict[str, Any]) -> str | None:
        """Cast to our arena; the reason on failure (it is logged, never raised)."""
        message = {**message, "id": self.assigns["id"], "name": self.assigns["name"]}
        try:
            with trio.move_on_after(2.0):
                await self.rooms.cast(Arena, self.assigns["arena"], message)
                return None
            return "the arena did not answer in time"
        except RoomError as exc:
            log.info("cast %s to arena %s failed: %s", message["op"], self.assigns["arena"], exc)
            return "the arena is unavailable right now"

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event != "input":
            return Reply.error({"reason": f"unknown event {event!r}"})
        dx = payload.get("dx") if isinstance(payload, dict) else None
        dy = payload.get("dy") if isinstance(payload, dict) else None
        if not logic.valid_direction(dx, dy):
            return Reply.error({"reason": "dx and dy must be -1, 0 or 1"})
        problem = await self._cast({"op": "input", "dx": dx, "dy": dy})
        return Reply.error({"reason": problem}) if problem else Reply.ok()

    async def handle_info(self, message: Any) -> None:
        if message == "keepalive":
            await self._cast({"op": "ping"})
            self.send_after(KEEPALIVE, "keepalive")

    async def terminate(self, reason: str) -> None:
        if "id" in self.assigns:
            await self._cast({"op": "leave"})


class GameSocket(Socket):
    """Anyone may connect; the display name is chosen per arena at join."""

    channels = {"game:*": GameChannel}
    max_channels = 4
    max_frame_size = 16 * 1024
    # Key presses only: far below the default, far above what a player can type.
    rate_limit = (50.0, 100.0)
    # Only pages served from a loopback address may open the WebSocket (any port).
    check_origin = ["//127.0.0.1", "//localhost", "//[::1]"]


def phoenix_js(root: Path = REPO_ROOT) -> Path:
    """The phoenix.js ES module of the installed npm package, or a clear error."""
    path = root / PHOENIX_JS
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the game page loads the official phoenix.js client from the "
            f"npm package. Run `npm ci` in {root} first."
        )
    return path


def room_lease() -> float:
    """The arena lease from ``GAME_ROOM_LEASE`` (seconds), default :data:`DEFAULT_LEASE`."""
    raw = os.environ.get("GAME_ROOM_LEASE", "")
    try:
        lease = float(raw) if raw.strip() else DEFAULT_LEASE
    except ValueError:
        raise RuntimeError(f"GAME_ROOM_LEASE={raw!r} is not a number of seconds") from None
    if not lease > 0:
        raise RuntimeError(f"GAME_ROOM_LEASE={raw!r} must be > 0")
    return lease


def make_endpoint(root: Path = REPO_ROOT) -> Endpoint:
    """The game endpoint: the page, phoenix.js, the socket and the arenas."""
    static = {"/": STATIC_DIR, "/js/phoenix.mjs": phoenix_js(root)}
    rooms = Rooms(Arena, lease=room_lease())
    return Endpoint({"/socket": GameSocket}, rooms=rooms, static=static)


endpoint = make_endpoint()
