"""The app of tests/test_workers.py: served with ``trio-channels serve --workers N``.

Every join reply says which worker (node) answered, ``{"node": NAME}``, so a test can open
connections until it has clients on every worker (SO_REUSEPORT does not let it choose).
Joined clients are tracked in presence under their ``user`` param. Pushes:

* ``shout`` -> broadcast ``shout`` with the payload (the topic keeps history, so the
  broadcast carries ``phx_pos``), reply ok;
* ``count`` -> ``rooms.call(Counter, payload["key"], "add")``: the room's node and count;
* ``list`` -> ``presence.list(topic)``.
"""

from __future__ import annotations

from typing import Any

from channels import Channel, Endpoint, Reply, Room, Rooms, Socket
from channels.history import History
from presence import Presence

presence = Presence(broadcast_period=0.05, max_silent_periods=4, down_period=2.0,
                    permdown_period=6.0, permdown_on_shutdown=True)


class Counter(Room):
    async def init(self) -> None:
        self.count = 0

    async def handle_call(self, message: Any) -> Any:
        self.count += 1
        return {"node": self.rooms.node_name, "count": self.count}


rooms = Rooms(Counter)


class WorkerChannel(Channel):
    history = History(size=100, ttl=600)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        self.assigns["user"] = str(params.get("user", "anon"))
        self.send_after(0, "after_join")
        return {"node": presence.tracker.node_name}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await presence.track(self, self.assigns["user"],
                                 {"node": presence.tracker.node_name})

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "shout":
            await self.broadcast("shout", payload)
            return Reply.ok()
        if event == "count":
            return Reply.ok(await rooms.call(Counter, str(payload["key"]), "add"))
        if event == "list":
            return Reply.ok(await presence.list(self.topic))
        return Reply.error({"reason": "unknown"})


class WorkerSocket(Socket):
    channels = {"room:*": WorkerChannel}


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": WorkerSocket}, presence=presence, rooms=rooms)
