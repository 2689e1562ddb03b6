"""The example kanban board: each board is a room, the single writer of its state.

Run it with ``./scripts/board`` (or ``trio-channels serve examples.board.app:endpoint``) and
open http://127.0.0.1:4000/ (``#<board id>`` picks a board; the default is ``main``). As a
two-node cluster: ``./scripts/board-cluster``. The page (``static/``) uses the official
phoenix.js client, served from the installed npm package (run ``npm ci`` first).

How it fits together:

* a board ``<id>`` is the :class:`Board` room with key ``<id>``: it alone changes the board.
  It validates and applies each op (:mod:`examples.board.model`), counts a version, stores its
  snapshot (``await self.save()``) *before* anyone hears about the change, then broadcasts
  the change on ``board:<id>`` (fenced by the room's token) and replies. A change whose
  snapshot cannot be stored is undone and refused, so every acknowledged change survives a
  crash, a restart or a move to another node. With ``--redis-url`` the room lives on one node
  of the cluster and its snapshot in Redis; a node that drains hands its boards off and the
  next call activates them on another node (see :mod:`channels.rooms`).
* a :class:`BoardChannel` (one per browser tab) turns pushes into ``rooms.call(Board, id,
  ...)``, and tracks the tab's presence.

The protocol, as the page uses it:

* join ``board:<id>`` (id: 1-32 of ``a-z 0-9 _ -``, starting with a letter or digit) with
  ``{"user": "<display name>"}``. The reply is ``{"user", "board"}`` where ``board`` is the
  whole board: ``{"uid", "version", "node", "columns": [{"id", "title", "cards": [{"id",
  "text"}]}]}`` (``node``: where the room runs). A refused join says ``{"reason"}``, with
  ``"retry": true`` when it may work later (the board is moving between nodes): phoenix.js
  then retries the join by itself; otherwise the page leaves.
* right after the join the server checks the board again and pushes ``board`` (the whole
  board, same shape) if it changed in between, so no change is missed.
* push ``op``: ``{"type": "add", "column", "text", "index"?}``, ``{"type": "edit", "id",
  "text"}``, ``{"type": "move", "id", "column", "index"?}`` or ``{"type": "delete", "id"}``,
  each with an optional ``"opid"`` (a client-made unique string, at most 64 characters). The
  reply is ``ok`` with the change event (below; ``"op": null`` if nothing changed) or
  ``error`` ``{"reason"}`` (a bad op: unknown card, unknown column, text empty, too long or
  with control characters, a full board), with ``"retry": true`` when the board could not be
  reached or could not store the change (then nothing changed). Sending the same ``opid``
  again is safe: the room remembers the last :data:`REMEMBERED_OPS` opids and answers a
  repeat with the first answer instead of applying it twice.
* everyone on the board (the sender too) receives ``op`` ``{"uid", "version", "op", "by",
  "opid", "node"}``: ``op`` is the normalized op (see :mod:`examples.board.model`),
  ``version`` the board's version after it, ``by`` who made it, ``node`` where the room ran. A client at version ``v`` applies an event
  with version ``v + 1``, ignores older ones, and on a gap (or another ``uid``) fetches the
  board again with push ``get`` (reply: the whole board) and applies what it kept meanwhile.
* presence: ``presence_state`` / ``presence_diff`` (phoenix.js ``Presence``), keyed by display
  name; each tab is one meta ``{"online_at", "node", "editing"}`` where ``editing`` is the id
  of the card that tab is editing, or null. Push ``editing`` ``{"card": <id or null>}`` when
  a tab starts or stops editing a card.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any

from channels import (
    Channel,
    Endpoint,
    JoinError,
    Reply,
    Room,
    RoomCrashed,
    RoomError,
    RoomGaveUp,
    Rooms,
    RoomTimeout,
    RoomUnavailable,
    Socket,
)
from examples.board.model import Board as BoardState
from examples.board.model import OpError
from presence import Presence

log = logging.getLogger("examples.board")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: The repository root, where ``npm ci`` puts ``node_modules``.
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_JS = Path("node_modules/phoenix/priv/static/phoenix.mjs")

TOPIC_PREFIX = "board:"
BOARD_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
CARD_ID_RE = re.compile(r"c[1-9][0-9]{0,8}")
MAX_NAME_LENGTH = 32
MAX_OPID_LENGTH = 64
#: Opids (and their answers) a board remembers, to answer a resent op without applying it
#: twice. Kept in the snapshot, so a resend after a move to another node is recognized too.
REMEMBERED_OPS = 256
#: How long a channel waits for its board (seconds); phoenix.js gives up on a push after 10.
CALL_TIMEOUT = 4.0


# -- the room --------------------------------------------------------------------------------

class Board(Room):
    """One board, the only writer of its state (on one node of the cluster at a time)."""

    #: Deactivate after this long without calls (its snapshot stays; the next call restores).
    idle_timeout = 600.0
    #: Every change is saved at once (see handle_call); this only catches what slipped by.
    snapshot_interval = 5.0
    #: Boards are kept forever.
    snapshot_ttl = None

    board: BoardState
    answers: OrderedDict[str, dict[str, Any]]

    async def init(self) -> None:
        self.board = BoardState(uid=secrets.token_hex(6))
        self.answers = OrderedDict()

    def snapshot(self) -> Any:
        return {"board": self.board.snapshot(),
                "answers": [[opid, event] for opid, event in self.answers.items()]}

    def restore(self, data: Any) -> None:
        self.board = BoardState.restore(data["board"])
        self.answers = OrderedDict((opid, event) for opid, event in data["answers"])

    @property
    def topic(self) -> str:
        return TOPIC_PREFIX + self.key

    def whole(self) -> dict[str, Any]:
        return {**self.board.to_client(), "node": self.rooms.node_name}

    async def handle_call(self, message: Any) -> Any:
        call = message.get("call") if isinstance(message, dict) else None
        if call == "get":
            return self.whole()
        if call == "op":
            return await self.change(message.get("op"), message.get("opid"),
                                     str(message.get("user", "")))
        return {"error": f"unknown call {call!r}"}

    async def change(self, op: Any, opid: str | None, user: str) -> dict[str, Any]:
        if opid is not None and opid in self.answers:
            return {"ok": self.answers[opid]}  # a resend: the first answer, not a second change
        before = self.board.copy()
        try:
            change = self.board.apply(op)
        except OpError as exc:
            return {"error": exc.reason}
        event = {"uid": self.board.uid, "version": self.board.version, "op": change,
                 "by": user, "opid": opid, "node": self.rooms.node_name}
        if change is not None:
            if opid is not None:
                self.answers[opid] = event  # stored with the change: a resend is recognized
            # Stored before anyone hears of it: what is acknowledged is never lost.
            if not await self.save():
                self.board = before
                if opid is not None:
                    self.answers.pop(opid, None)
                log.warning("board %s: could not store version %d; undone", self.key,
                            event["version"])
                return {"error": "the board could not store the change; try again",
                        "retry": True}
            while len(self.answers) > REMEMBERED_OPS:
                self.answers.popitem(last=False)
            await self.broadcast(self.topic, "op", event)
        return {"ok": event}


# -- the channel -----------------------------------------------------------------------------

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


def validate_board(topic: str) -> str:
    """The board id of ``board:<id>``, or :class:`JoinError`."""
    board_id = topic.removeprefix(TOPIC_PREFIX)
    if not BOARD_RE.fullmatch(board_id):
        raise JoinError({"reason": "board ids are 1-32 characters: a-z, 0-9, '-' and '_', "
                                   "starting with a letter or digit"})
    return board_id


def room_error(exc: RoomError) -> dict[str, Any]:
    """What a client is told when its board cannot be reached."""
    if isinstance(exc, RoomTimeout):
        return {"reason": "the board did not answer in time", "retry": True}
    if isinstance(exc, RoomUnavailable):
        return {"reason": "the board is unavailable right now", "retry": True}
    if isinstance(exc, RoomGaveUp):
        return {"reason": "the board is failing; try again later", "retry": True}
    if isinstance(exc, RoomCrashed):
        return {"reason": "the board failed to handle this"}
    return {"reason": "the board cannot be reached"}


class BoardChannel(Channel):
    """One tab on one board."""

    @property
    def rooms(self) -> Rooms:
        rooms = self.socket.endpoint.rooms
        if rooms is None:
            raise RuntimeError("the board channel needs an endpoint with Rooms (make_endpoint)")
        return rooms

    async def get_board(self) -> dict[str, Any]:
        board: dict[str, Any] = await self.rooms.call(
            Board, self.assigns["board"], {"call": "get"}, timeout=CALL_TIMEOUT)
        return board

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        board_id = validate_board(topic)
        user = validate_user(params.get("user"))
        self.assigns.update(board=board_id, user=user, editing=None)
        try:
            board = await self.get_board()
        except RoomError as exc:
            log.info("join of %s refused: %s", topic, exc)
            raise JoinError(room_error(exc)) from None
        self.assigns["seen"] = (board["uid"], board["version"])
        # Runs once we are subscribed: catches changes made since the call above.
        self.send("after_join")
        return {"user": user, "board": board}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await self.presence.track(self, self.assigns["user"], self.meta())
            try:
                board = await self.get_board()
            except RoomError:
                return  # the client notices a gap at the next change and asks again
            if (board["uid"], board["version"]) != self.assigns["seen"]:
                await self.push("board", board)

    @property
    def presence(self) -> Presence:
        presence = self.socket.endpoint.presence
        if presence is None:
            raise RuntimeError("the board channel needs an endpoint with presence")
        return presence

    def meta(self) -> dict[str, Any]:
        return {"online_at": self.assigns.setdefault("online_at", int(time.time() * 1000)),
                "node": self.presence.tracker.node_name,
                "editing": self.assigns["editing"]}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "op":
            return await self.op(payload)
        if event == "get":
            try:
                return Reply.ok(await self.get_board())
            except RoomError as exc:
                return Reply.error(room_error(exc))
        if event == "editing":
            return await self.editing(payload)
        return Reply.error({"reason": f"unknown event {event[:40]!r}"})

    async def op(self, payload: Any) -> Reply:
        if not isinstance(payload, dict):
            return Reply.error({"reason": "an op must be an object"})
        op = dict(payload)
        opid = op.pop("opid", None)
        if opid is not None and (not isinstance(opid, str) or not opid
                                 or len(opid) > MAX_OPID_LENGTH):
            return Reply.error({"reason": f"opid must be a string of 1-{MAX_OPID_LENGTH} "
                                          "characters"})
        try:
            answer = await self.rooms.call(
                Board, self.assigns["board"],
                {"call": "op", "op": op, "opid": opid, "user": self.assigns["user"]},
                timeout=CALL_TIMEOUT)
        except RoomError as exc:
            log.info("op on %s failed: %s", self.topic, exc)
            return Reply.error(room_error(exc))
        if "ok" in answer:
            return Reply.ok(answer["ok"])
        error = {"reason": answer["error"]}
        if answer.get("retry"):
            error["retry"] = True
        return Reply.error(error)

    async def editing(self, payload: Any) -> Reply:
        card = payload.get("card") if isinstance(payload, dict) else None
        if card is not None and not (isinstance(card, str) and CARD_ID_RE.fullmatch(card)):
            return Reply.error({"reason": "card must be a card id or null"})
        if card != self.assigns["editing"]:
            self.assigns["editing"] = card
            await self.presence.update(self, self.assigns["user"], self.meta())
        return Reply.ok({"card": card})


class UserSocket(Socket):
    """Anyone may connect; the display name is chosen per board at join."""

    channels = {"board:*": BoardChannel}
    max_channels = 10
    max_frame_size = 64 * 1024
    # Only pages served from a loopback address may open the WebSocket (any port).
    check_origin = ["//127.0.0.1", "//localhost", "//[::1]"]


# -- the endpoint ----------------------------------------------------------------------------

def phoenix_js(root: Path = REPO_ROOT) -> Path:
    """The phoenix.js ES module of the installed npm package, or a clear error."""
    path = root / PHOENIX_JS
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the board page loads the official phoenix.js client from the "
            f"npm package. Run `npm ci` in {root} first."
        )
    return path


def make_endpoint(root: Path = REPO_ROOT) -> Endpoint:
    """The board endpoint: its Rooms, its Presence, the page and phoenix.js.

    Single node by default; ``trio-channels serve --redis-url`` gives it a RedisAdapter before
    it starts, and then rooms (leases, snapshots) and presence go through that Redis.
    """
    static = {"/": STATIC_DIR, "/js/phoenix.mjs": phoenix_js(root)}
    presence = Presence(permdown_on_shutdown=True)
    return Endpoint({"/socket": UserSocket}, presence=presence, rooms=Rooms(Board),
                    static=static)


endpoint = make_endpoint()
