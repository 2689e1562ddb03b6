"""The example chat app: rooms on ``room:<name>``, served with its page on one port.

Run it with ``./scripts/chat`` (or ``trio-channels serve examples.chat.app:endpoint``) and
open http://127.0.0.1:4000/. The page (``static/``) talks to the server with the official
phoenix.js client, which is served from the installed npm package (run ``npm ci`` first), and
the runtime's history helper (``/trio-channels/history.js``, served by every endpoint).

The protocol, as the page uses it:

* join ``room:<name>`` with ``{"user": "<display name>"}``; a bad name or room is refused
  with ``{"reason": "..."}``. The join may carry ``"phx_pos"`` (the runtime's history, see
  below): ``{"last": N}`` on a first join, for the room's newest N messages (the page asks
  for 50), or ``{"offset", "epoch"}``, the position of the last message the client saw, on a
  rejoin. The reply is ``ok`` ``{"user", "room", "phx_recovery": {"recovered", "epoch",
  "offset", "replayed"}}`` (with ``"reason"`` when a position could not be recovered from,
  or the history could not be read).
  Right after it come the ``replayed`` messages, oldest first, as ordinary ``new_msg``
  broadcasts, then the live ones: none missing, none twice.
* push ``new_msg`` ``{"body": "..."}``: the reply is ``ok`` ``{"id": ...}`` or ``error``
  ``{"reason": "..."}``, and everyone in the room (sender included) receives ``new_msg``
  ``{"id", "user", "body", "at", "phx_pos": {"offset", "epoch"}}`` (``at``: milliseconds
  since the Unix epoch, UTC; ``phx_pos``: the message's position in the room's history,
  ``offset`` +1 per message).
* presence: once joined, the client gets ``presence_state`` and then ``presence_diff``
  updates (the phoenix.js ``Presence`` format), keyed by display name. Each tab (channel) of
  a name is one meta ``{"online_at": <ms>, "node": <node name>, "phx_ref": ...}``, so a name
  open in two tabs is one key with two metas. A presence leaves when its channel ends.

History is the runtime's (:class:`channels.history.History` on :class:`RoomChannel`; see
docs/history.md): each room keeps its last 100 messages, each for a day. On one node they live
in the process's memory (lost on restart); in a cluster in a Redis stream per room, shared by
every node (a node restart loses nothing, and every node has the same history). The app has no
history code of its own.

What the page does with it:

* **Joining a room** (or reloading the page) shows the room's last 50 messages, then the live
  ones. A reload is a new page: it shows the recent messages once. (It keeps no position in
  sessionStorage: going on from one would show an empty page only what came after it.)
* **After a reconnect** (a network blip, a server restart, a move to another node),
  phoenix.js rejoins with the position of the last message shown, and the page shows what it
  missed, once and in order, after what it already had.
* **When that cannot be done** (``recovered`` is false: the page was away for more than the
  100 kept messages or a day, or the history was lost, e.g. a single node restarted), the
  page keeps what it shows, adds a notice that messages from while it was away may be
  missing, and joins again for the room's last 50 messages, showing those it does not have
  yet (messages are told apart by their ``id``). It adds the same notice, without joining
  again, if a live message comes from a new stream (the history was lost while the page
  stayed joined, e.g. Redis restarted empty).

Cluster mode (``./scripts/chat-cluster``, or ``trio-channels serve ... --redis-url URL
--node-name NAME``; see docs/cluster.md): messages, presence and history cross nodes through
Redis.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from pathlib import Path
from typing import Any

from channels import Channel, Endpoint, JoinError, Reply, Socket
from channels.history import History
from presence import Presence

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: The repository root, where ``npm ci`` puts ``node_modules``.
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_JS = Path("node_modules/phoenix/priv/static/phoenix.mjs")

ROOM_PREFIX = "room:"
ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_NAME_LENGTH = 32
MAX_BODY_LENGTH = 2000


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

    #: Each room keeps its last 100 messages, each for a day (in memory on one node, in a
    #: Redis stream in a cluster): a join with ``phx_pos`` gets the recent ones or what it
    #: missed, and every ``new_msg`` broadcast carries its position.
    history = History(size=100, ttl=24 * 3600)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        room = validate_room(topic)
        user = validate_user(params.get("user"))
        self.assigns["user"] = user
        self.assigns["room"] = room
        # The runtime adds "phx_recovery" to this reply, then replays what the join asked for.
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
        # Stored in the room's history (which gives it its position), then delivered.
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

    Single node by default (the LocalAdapter, history in memory); ``trio-channels serve
    --redis-url`` gives it a RedisAdapter before it starts: presence replicates through that,
    and the rooms' history goes to Redis streams.
    """
    static = {"/": STATIC_DIR, "/js/phoenix.mjs": phoenix_js(root)}
    # permdown_on_shutdown: a node stopping cleanly tells the others to drop its presences at
    # once; a crashed one is dropped after down_period (30 s with the default periods).
    presence = Presence(permdown_on_shutdown=True)
    return Endpoint({"/socket": UserSocket}, presence=presence, static=static)


endpoint = make_endpoint()
