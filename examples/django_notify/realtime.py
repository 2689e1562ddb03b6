"""The real-time side of the Django example: a trio-channels node (or a cluster of them) that
browsers connect to. Django never talks to it directly: it publishes through Redis
(``notifications/views.py``).

A browser gets a signed token from Django (``GET /token/``), connects with it, and joins its
own topic, ``notifications:<user id>``::

    const socket = new Socket("/socket", {params: {token}})
    socket.connect()
    socket.channel(`notifications:${userId}`).join()

Serve it next to Redis (the same ``NOTIFY_SECRET`` as the Django settings)::

    NOTIFY_SECRET=... trio-channels serve realtime:endpoint --port 4000 \\
        --redis-url redis://127.0.0.1:6379 --node-name notify-a
"""

from __future__ import annotations

import os
from typing import Any

from channels import Channel, Endpoint, JoinError, Socket
from channels.tokens import TokenError, socket_token, verify_token

#: Shared with Django (settings.NOTIFY_SECRET), which signs the tokens.
SECRET = os.environ.get("NOTIFY_SECRET", "dev-only-notify-secret-change-me")
TOKEN_SALT = "user socket"
TOKEN_MAX_AGE = 24 * 3600


class NotificationsChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if topic != f"notifications:{self.assigns['user_id']}":
            raise JoinError({"reason": "unauthorized"})
        return {}


class UserSocket(Socket):
    channels = {"notifications:*": NotificationsChannel}

    async def connect(self, params: dict[str, Any],
                      connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        try:
            user_id = verify_token(SECRET, TOKEN_SALT, socket_token(params, connect_info),
                                   max_age=TOKEN_MAX_AGE)
        except TokenError:
            return False
        return {"user_id": user_id}

    def id(self) -> str:
        # Django's "sign out everywhere" broadcasts `disconnect` here (publisher.disconnect).
        return f"user_socket:{self.assigns['user_id']}"


endpoint = Endpoint({"/socket": UserSocket})
