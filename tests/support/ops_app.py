"""Apps for the operations tests: start and stop in every state, and misconfigurations.

``make_endpoint`` reads ``TEST_DRAIN_TIMEOUT`` (seconds, default 30), and
``TEST_SHUTDOWN_SECONDS`` (a shutdown hook that takes that long). Its ``slow:*`` channel takes
``TEST_TERMINATE_SECONDS`` (default 4) to terminate, so a drain has something to wait for.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from channels import Channel, Endpoint, Reply, Socket

TERMINATE_SECONDS = float(os.environ.get("TEST_TERMINATE_SECONDS", "4"))


class EchoChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": "up"}

    async def handle_in(self, event: str, payload: Any) -> Any:
        if event == "dict_reply":
            return {"oops": "a dict, not a Reply"}
        return Reply.ok(payload)


class SlowChannel(EchoChannel):
    async def terminate(self, reason: str) -> None:
        await trio.sleep(TERMINATE_SECONDS)


class OpsSocket(Socket):
    channels = {"slow:*": SlowChannel, "echo:*": EchoChannel}


def make_endpoint() -> Endpoint:
    endpoint = Endpoint({"/socket": OpsSocket},
                        drain_timeout=float(os.environ.get("TEST_DRAIN_TIMEOUT", "30")))
    hold = float(os.environ.get("TEST_SHUTDOWN_SECONDS", "0"))
    if hold:
        @endpoint.on_shutdown
        async def slow_goodbye(endpoint: Endpoint) -> None:
            print("slow shutdown hook running", flush=True)
            await trio.sleep(hold)
    return endpoint


class NotAChannel:
    pass


class BadRouteSocket(Socket):
    channels = {"room:*": NotAChannel}  # type: ignore[dict-item]


class SyncJoin(Channel):
    def join(self, topic: str, params: dict[str, Any]) -> None:  # type: ignore[override]
        return None


class ShadowedSocket(Socket):
    channels = {"room:*": EchoChannel, "room:lobby": SyncJoin, "a:*:b": EchoChannel}


bad_route = Endpoint({"/socket": BadRouteSocket})
shadowed = Endpoint({"/socket": ShadowedSocket})
