"""The errors the client raises."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChannelClosed",
    "ClientError",
    "ConnectError",
    "PushTimeout",
    "ReplyError",
    "ReplyLost",
]


class ClientError(Exception):
    """Base class of the client's errors."""


class ConnectError(ClientError):
    """The socket could not connect: refused (``status`` is the HTTP status), unreachable,
    or not within ``connect_timeout``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ReplyError(ClientError):
    """The server replied with a status other than ``ok`` (usually ``error``)."""

    def __init__(self, topic: str, event: str, status: str, response: Any) -> None:
        super().__init__(f"{event!r} on {topic!r} was answered {status!r}: {response!r}")
        self.topic = topic
        self.event = event
        self.status = status
        self.response = response


class PushTimeout(ClientError, TimeoutError):
    """No reply came within the timeout (the server may or may not have handled it)."""


class ReplyLost(ClientError):
    """The connection closed or the channel crashed on the server before the reply came (the
    server may or may not have handled the push)."""


class ChannelClosed(ClientError):
    """The channel was left, closed by the server, or its socket was closed."""
