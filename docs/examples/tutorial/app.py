"""The tutorial's app (docs/tutorial.md): a live Q&A board.

People open a board, see who else is there (presence), ask questions that everyone sees at
once (a broadcast, kept in the board's history so a page that reconnects gets what it
missed), and upvote them (a room per board counts the votes: one writer, one per cluster).
Connecting needs a token signed by the server.

Run it from the repository root::

    trio-channels serve docs.examples.tutorial.app:endpoint --port 4000
    python -m docs.examples.tutorial.app ada      # prints a URL with a token for "ada"
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from channels import Channel, Endpoint, JoinError, Reply, Room, RoomError, Rooms, Socket
from channels.history import History
from channels.tokens import TokenError, sign_token, socket_token, verify_token
from presence import Presence

HERE = Path(__file__).resolve().parent

# -- tokens ------------------------------------------------------------------------------------

#: The secret that signs tokens: set QA_SECRET (32 bytes or more) in production.
SECRET = os.environ.get("QA_SECRET", "the tutorial's secret: change it, 32+ bytes")
SALT = "user socket"


def user_token(user: str) -> str:
    """A token saying who ``user`` is, valid for a day (your login view would make it)."""
    return sign_token(SECRET, SALT, user, max_age=24 * 3600)


# -- the room: one per board, the only writer of its votes --------------------------------------


class Votes(Room):
    """Who upvoted which question on one board."""

    idle_timeout = 3600.0  # deactivate after an hour without calls

    async def init(self) -> None:
        self.voters: dict[str, list[str]] = {}  # question id -> users who upvoted it

    def snapshot(self) -> Any:
        return self.voters

    def restore(self, data: Any) -> None:
        self.voters = data

    async def handle_call(self, message: Any) -> Any:
        if message == "counts":
            return self.counts()
        question, user = message["question"], message["user"]
        voters = self.voters.setdefault(question, [])
        if user not in voters:  # one vote per person
            voters.append(user)
            await self.broadcast(f"qa:{self.key}", "votes",
                                 {"question": question, "count": len(voters)})
        return len(voters)

    def counts(self) -> dict[str, int]:
        return {question: len(users) for question, users in self.voters.items()}


rooms = Rooms(Votes)
presence = Presence()

# -- the channel: one per person per board -------------------------------------------------------


class BoardChannel(Channel):
    """``qa:<board>``: questions, votes and who is here."""

    history = History(size=500, ttl=24 * 3600)  # the last 500 events of a board, for a day

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        board = topic.removeprefix("qa:")
        if not board.isidentifier():
            raise JoinError({"reason": "board names are letters, digits and _"})
        try:
            votes = await rooms.call(Votes, board, "counts")
        except RoomError:
            raise JoinError({"reason": "the board is unavailable, try again"}) from None
        self.send("after_join")  # handled right after the join reply
        return {"user": self.assigns["user"], "votes": votes}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await presence.track(self, self.assigns["user"], {"online_at": int(time.time())})

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "ask":
            text = payload.get("text")
            if not isinstance(text, str) or not 0 < len(text.strip()) <= 500:
                return Reply.error({"reason": "a question is 1 to 500 characters"})
            question = {"id": secrets.token_hex(6), "user": self.assigns["user"],
                        "text": text.strip()}
            await self.broadcast("question", question)
            return Reply.ok({"id": question["id"]})
        if event == "vote":
            question = payload.get("id")
            if not isinstance(question, str) or not 0 < len(question) <= 32:
                return Reply.error({"reason": "vote needs the question's id"})
            board = self.topic.removeprefix("qa:")
            try:
                count = await rooms.call(Votes, board,
                                         {"question": question, "user": self.assigns["user"]})
            except RoomError:
                return Reply.error({"reason": "the board is unavailable, try again"})
            return Reply.ok({"count": count})
        return Reply.error({"reason": f"unknown event {event!r}"})


# -- the socket: who is connecting --------------------------------------------------------------


class UserSocket(Socket):
    channels = {"qa:*": BoardChannel}

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        try:
            user = verify_token(SECRET, SALT, socket_token(params, connect_info))
        except TokenError:
            return False  # HTTP 403: phoenix.js keeps retrying, the page says so
        return {"user": user}

    def id(self) -> str:
        return f"user_socket:{self.assigns['user']}"


# -- the endpoint --------------------------------------------------------------------------------


def phoenix_js() -> Path:
    """phoenix.js from ``npm install phoenix``, in this directory or one above it."""
    for folder in (HERE, *HERE.parents):
        path = folder / "node_modules/phoenix/priv/static/phoenix.mjs"
        if path.is_file():
            return path
    raise RuntimeError("phoenix.js not found: run `npm install phoenix` next to app.py")


endpoint = Endpoint(
    {"/socket": UserSocket},
    presence=presence,
    rooms=rooms,
    static={"/": HERE / "static", "/js/phoenix.mjs": phoenix_js()},
)

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "ada"
    print(f"http://127.0.0.1:4000/?token={user_token(name)}")
