"""The app of the publishing tests (tests/test_http_api.py, tests/test_publisher.py).

Clients connect with ``?user=NAME`` (their ``Socket.id()`` is ``user_socket:NAME``) and join

* ``room:<anything>``: tracked in presence under their user name, with ``{"node": ...}``;
* ``feed:<anything>``: a channel with history (``TEST_HISTORY_SIZE``, default 50);
* ``plain:<anything>``: nothing more.

Every join replies ``{"node": name}``. API keys come from ``TRIO_CHANNELS_API_KEYS`` (read by
``trio-channels serve``) or from ``make_endpoint(api_keys=...)`` in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from channels import Channel, Endpoint, Socket
from channels.history import History
from presence import Presence

SIZE = int(os.environ.get("TEST_HISTORY_SIZE", "50"))


def _presence(channel: Channel) -> Presence:
    presence = channel.socket.endpoint.presence
    assert presence is not None
    return presence


class RoomChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        self.send_after(0, "after_join")
        return {"node": self.socket.endpoint.pubsub.node_name}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            node = self.socket.endpoint.pubsub.node_name
            await _presence(self).track(self, self.assigns["user"], {"node": node})


class FeedChannel(Channel):
    history = History(size=SIZE, ttl=600)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": self.socket.endpoint.pubsub.node_name}


class PlainChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"node": self.socket.endpoint.pubsub.node_name}


class UserSocket(Socket):
    channels = {"room:*": RoomChannel, "feed:*": FeedChannel, "plain:*": PlainChannel}

    async def connect(self, params: dict[str, Any],
                      connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        user = params.get("user")
        return {"user": user} if isinstance(user, str) and user else False

    def id(self) -> str | None:
        return f"user_socket:{self.assigns['user']}"


def make_endpoint(api_keys: Iterable[str] | None = None) -> Endpoint:
    presence = Presence(broadcast_period=0.05, max_silent_periods=4, down_period=2.0,
                        permdown_period=6.0, permdown_on_shutdown=True)
    return Endpoint({"/socket": UserSocket}, presence=presence, api_keys=api_keys)
