"""The example chat app: rooms on ``room:<name>``, served with its page on one port.

Run it with ``./scripts/chat`` (or ``trio-channels serve examples.chat.app:endpoint``) and
open http://127.0.0.1:4000/. The page (``static/``) talks to the server with the official
phoenix.js client, which is served from the installed npm package (run ``npm ci`` first).

The protocol, as the page uses it:

* join ``room:<name>`` with ``{"user": "<display name>"}``; a bad name or room is refused
  with ``{"reason": "..."}``. Right after the join reply the server pushes ``history``
  ``{"messages": [...]}``: the room's last :data:`HISTORY_SIZE` messages, oldest first.
* push ``new_msg`` ``{"body": "..."}``: the reply is ``ok`` ``{"id": ...}`` or ``error``
  ``{"reason": "..."}``, and everyone in the room (sender included) receives ``new_msg``
  ``{"id", "user", "body", "at"}`` (``at``: milliseconds since the Unix epoch, UTC).
* presence: once joined, the client gets ``presence_state`` and then ``presence_diff``
  updates (the phoenix.js ``Presence`` format), keyed by display name. Each tab (channel) of
  a name is one meta ``{"online_at": <ms>, "node": <node name>, "phx_ref": ...}``, so a name
  open in two tabs is one key with two metas. A presence leaves when its channel ends.

Cluster mode (``./scripts/chat-cluster``, or ``trio-channels serve ... --redis-url URL
--node-name NAME``; see docs/cluster.md): messages and presence cross nodes through Redis.

History lives in this process's memory, so it is per node and lost on restart. Every node
records every message it receives, its own and other nodes' (through the internal
:data:`HISTORY_TOPIC` broadcast), so the nodes' histories agree for messages sent while they
were all up and connected to Redis; a node started later, or cut off from Redis for a while,
lacks what it did not receive (cross-node delivery is at most once).
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from channels import CallbackSubscriber, Channel, Endpoint, JoinError, Reply, Socket
from presence import Presence

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: The repository root, where ``npm ci`` puts ``node_modules``.
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_JS = Path("node_modules/phoenix/priv/static/phoenix.mjs")

ROOM_PREFIX = "room:"
#: Internal topic (no client can join it): every node's history recorder listens on it.
HISTORY_TOPIC = "chat:history"
ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_NAME_LENGTH = 32
MAX_BODY_LENGTH = 2000
HISTORY_SIZE = 50
#: Rooms whose history is kept; the least recently used beyond this are forgotten.
MAX_ROOMS = 1000


class RoomHistory:
    """The last ``size`` messages of up to ``max_rooms`` rooms, in memory."""

    def __init__(self, size: int = HISTORY_SIZE, max_rooms: int = MAX_ROOMS) -> None:
        self.size = size
        self.max_rooms = max_rooms
        self._rooms: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def add(self, room: str, message: dict[str, Any]) -> None:
        messages = self._rooms.get(room)
        if messages is None:
            messages = self._rooms[room] = deque(maxlen=self.size)
            while len(self._rooms) > self.max_rooms:
                self._rooms.popitem(last=False)
        self._rooms.move_to_end(room)
        messages.append(message)

    def recent(self, room: str) -> list[dict[str, Any]]:
        """The room's kept messages, oldest first."""
        return list(self._rooms.get(room, ()))

    def clear(self) -> None:
        self._rooms.clear()


#: The process-wide store every :class:`RoomChannel` shares.
history = RoomHistory()


def record_history(topic: str, event: str, payload: Any) -> None:
    """Keep a message broadcast on :data:`HISTORY_TOPIC`, by this node or another one."""
    if event != "record" or not isinstance(payload, dict):
        return
    room, message = payload.get("topic"), payload.get("message")
    if isinstance(room, str) and room.startswith(ROOM_PREFIX) and isinstance(message, dict):
        history.add(room, message)


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def validate_user(value: Any) -> str:
    """The display name, trimmed, or :class:`JoinError` saying what is wrong with it."""
    if not isinstance(value, str) or not value.strip():
        raise JoinError({"reason": "a display name is required"})
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise JoinError({"reason": f"display names are at most {MAX_NAME_LENGTH} characters"})
    if _has_control_chars(name):
        raise JoinError({"reason": "display names cannot contain control characters"})
    return name


def validate_room(topic: str) -> str:
    """The room name of ``room:<name>``, or :class:`JoinError`."""
    room = topic.removeprefix(ROOM_PREFIX)
    if not ROOM_RE.fullmatch(room):
        raise JoinError({"reason": "room names are 1-32 characters: a-z, 0-9, '-' and '_', "
                                   "starting with a letter or digit"})
    return room


def validate_body(payload: Any) -> str | Reply:
    """The message text, trimmed, or an error :class:`Reply` saying what is wrong."""
    body = payload.get("body") if isinstance(payload, dict) else None
    if not isinstance(body, str):
        return Reply.error({"reason": "body must be a string"})
    body = body.strip()
    if not body:
        return Reply.error({"reason": "message is empty"})
    if len(body) > MAX_BODY_LENGTH:
        return Reply.error({"reason": f"message is longer than {MAX_BODY_LENGTH} characters"})
    return body


class RoomChannel(Channel):
    """One user in one chat room."""

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        room = validate_room(topic)
        user = validate_user(params.get("user"))
        self.assigns["user"] = user
        self.assigns["room"] = room
        # Pushed during join(), so it goes out right after the join reply and before any
        # broadcast: join() does not await, so no message can slip between this snapshot
        # and the subscription (none is missed, none arrives twice).
        await self.push("history", {"messages": history.recent(topic)})
        # Tracked from the channel's own task, first thing after the join: the presence then
        # lives exactly as long as the channel (it is untracked when the channel ends).
        self.send("after_join")
        return {"user": user, "room": room}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            presence = presence_of(self)
            await presence.track(self, self.assigns["user"], {
                "online_at": int(time.time() * 1000),
                "node": presence.tracker.node_name,
            })

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event != "new_msg":
            return Reply.error({"reason": f"unknown event {event!r}"})
        body = validate_body(payload)
        if isinstance(body, Reply):
            return body
        message = {
            "id": secrets.token_hex(8),
            "user": self.assigns["user"],
            "body": body,
            "at": int(time.time() * 1000),
        }
        # Recorded, then delivered, on every node (neither call waits, so nobody joins in
        # between): a joining client finds the message either in history or live.
        await self.socket.endpoint.broadcast(HISTORY_TOPIC, "record",
                                             {"topic": self.topic, "message": message})
        await self.broadcast("new_msg", message)
        return Reply.ok({"id": message["id"]})


class UserSocket(Socket):
    """Anyone may connect; the display name is chosen per room at join."""

    channels = {"room:*": RoomChannel}
    max_channels = 10
    max_frame_size = 64 * 1024
    # Only pages served from a loopback address may open the WebSocket (any port).
    check_origin = ["//127.0.0.1", "//localhost", "//[::1]"]


def phoenix_js(root: Path = REPO_ROOT) -> Path:
    """The phoenix.js ES module of the installed npm package, or a clear error."""
    path = root / PHOENIX_JS
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the chat page loads the official phoenix.js client from the "
            f"npm package. Run `npm ci` in {root} first."
        )
    return path


def presence_of(channel: Channel) -> Presence:
    """The :class:`Presence` of the channel's endpoint."""
    presence = channel.socket.endpoint.presence
    if presence is None:
        raise RuntimeError("the chat channel needs an endpoint with presence (make_endpoint)")
    return presence


def make_endpoint(root: Path = REPO_ROOT) -> Endpoint:
    """The chat endpoint with its own :class:`Presence`.

    Single node by default (the LocalAdapter); ``trio-channels serve --redis-url`` gives it a
    RedisAdapter before it starts, and presence replicates through that.
    """
    static = {"/": STATIC_DIR, "/js/phoenix.mjs": phoenix_js(root)}
    # permdown_on_shutdown: a node stopping cleanly tells the others to drop its presences at
    # once; a crashed one is dropped after down_period (30 s with the default periods).
    presence = Presence(permdown_on_shutdown=True)
    endpoint = Endpoint({"/socket": UserSocket}, presence=presence, static=static)
    endpoint.subscribe(HISTORY_TOPIC, CallbackSubscriber(record_history))
    return endpoint


endpoint = make_endpoint()
