"""The rooms example from docs/rooms.md: one ``Poll`` room per poll, reached from a channel.

Run it with ``trio-channels serve docs.examples.poll:endpoint --port 4000`` (one node), or add
``--redis-url redis://127.0.0.1:6379 --node-name a`` on several nodes: each poll then lives on
exactly one of them, and every node's clients see the same tally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channels import Channel, Endpoint, JoinError, Reply, Room, RoomError, Rooms, Socket


class Poll(Room):
    """One poll: who voted for what. The room is the only writer of its votes."""

    idle_timeout = 600.0  # deactivate after 10 minutes without calls
    snapshot_ttl = None  # keep a poll's votes for good

    async def init(self) -> None:
        self.votes: dict[str, str] = {}

    def snapshot(self) -> Any:
        return self.votes

    def restore(self, data: Any) -> None:
        self.votes = data

    async def handle_call(self, message: Any) -> Any:
        if message == "tally":
            return self.tally()
        user, choice = message["user"], message["choice"]
        self.votes[user] = choice
        await self.save()  # a vote that was acknowledged survives the node
        await self.broadcast(f"poll:{self.key}", "tally", self.tally())
        return self.tally()

    def tally(self) -> dict[str, int]:
        return dict(Counter(self.votes.values()))


rooms = Rooms(Poll)


class PollChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return {"tally": await rooms.call(Poll, topic.removeprefix("poll:"), "tally")}
        except RoomError as exc:
            raise JoinError({"reason": str(exc)}) from None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event != "vote" or not isinstance(payload.get("choice"), str):
            return Reply.error({"reason": "expected vote {choice}"})
        tally = await rooms.call(Poll, self.topic.removeprefix("poll:"),
                                 {"user": self.assigns["user"], "choice": payload["choice"]},
                                 timeout=2.0)
        return Reply.ok({"tally": tally})


class PollSocket(Socket):
    channels = {"poll:*": PollChannel}

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        return {"user": params["user"]} if params.get("user") else False


#: What the lifespan opened, for the channels and rooms to use (a database pool, say).
resources: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(endpoint: Endpoint) -> AsyncIterator[None]:
    resources["started"] = True  # open clients here: they outlive every room and channel
    try:
        yield
    finally:
        resources.clear()  # ...and close them here, after rooms were handed off


endpoint = Endpoint({"/socket": PollSocket}, rooms=rooms, lifespan=lifespan)
