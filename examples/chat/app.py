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

History lives in this process's memory, so it is per node and lost on restart.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from channels import Channel, Endpoint, JoinError, Reply, Socket

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: The repository root, where ``npm ci`` puts ``node_modules``.
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_JS = Path("node_modules/phoenix/priv/static/phoenix.mjs")

ROOM_PREFIX = "room:"
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
        return {"user": user, "room": room}

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
        history.add(self.topic, message)
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


def make_endpoint(root: Path = REPO_ROOT) -> Endpoint:
    return Endpoint(
        {"/socket": UserSocket},
        static={"/": STATIC_DIR, "/js/phoenix.mjs": phoenix_js(root)},
    )


endpoint = make_endpoint()
