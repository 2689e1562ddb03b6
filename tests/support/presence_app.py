"""A presence test app: each joined client is tracked under its ``user`` param.

Tracker periods come from the environment so cluster tests can run them fast:
``TEST_BROADCAST_PERIOD`` (default 0.05 s), ``TEST_DOWN_PERIOD`` (2 s),
``TEST_PERMDOWN_PERIOD`` (6 s), ``TEST_PERMDOWN_ON_SHUTDOWN`` ("1" to enable).
"""

from __future__ import annotations

import os
from typing import Any

from channels import Channel, Endpoint, Reply, Socket
from presence import Presence

_period = float(os.environ.get("TEST_BROADCAST_PERIOD", "0.05"))
presence = Presence(
    broadcast_period=_period,
    max_silent_periods=int(os.environ.get("TEST_MAX_SILENT_PERIODS", "4")),
    down_period=float(os.environ.get("TEST_DOWN_PERIOD", "2.0")),
    permdown_period=float(os.environ.get("TEST_PERMDOWN_PERIOD", "6.0")),
    permdown_on_shutdown=os.environ.get("TEST_PERMDOWN_ON_SHUTDOWN") == "1",
)


class PresenceChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        self.assigns["user"] = str(params.get("user", "anon"))
        self.send_after(0, "after_join")
        return None

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await presence.track(self, self.assigns["user"], {"status": "online",
                                                               "node": presence.tracker.node_name})

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "status":
            meta = await presence.update(self, self.assigns["user"],
                                         {"status": payload["status"],
                                          "node": presence.tracker.node_name})
            return Reply.ok({"phx_ref": meta["phx_ref"]})
        if event == "boom":
            raise RuntimeError("boom")
        if event == "shout":
            await self.broadcast("shout", payload)
            return Reply.ok()
        if event == "list":
            return Reply.ok(await presence.list(self.topic))
        return Reply.error({"reason": "unknown"})


class PresenceSocket(Socket):
    channels = {"room:*": PresenceChannel}


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": PresenceSocket}, presence=presence)
