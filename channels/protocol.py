"""The socket's protocol rules as a plain object (sans-IO).

:class:`SocketState` decides what an inbound Phoenix message means for one connection:
heartbeat, join, leave, a push to forward to a channel, or a message to answer with an error
or drop. It owns the topic table (topic -> join_ref and the runtime's channel handle) and the
join_ref rules of Phoenix 1.8.12+; the trio code in :mod:`channels.socket` performs the effects.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from channels.serializer import Message, Ref

H = TypeVar("H")

HEARTBEAT_TOPIC = "phoenix"


class Route(enum.Enum):
    """What to do with one inbound message."""

    HEARTBEAT = "heartbeat"  # reply ok on topic "phoenix"
    JOIN = "join"  # run the join (possibly replacing a channel: duplicate join)
    LEAVE = "leave"  # reply ok, then phx_close with the join_ref in both slots
    LEAVE_NOT_JOINED = "leave_not_joined"  # reply ok, echoing both refs
    FORWARD = "forward"  # to the channel's mailbox
    UNMATCHED = "unmatched"  # reply error "unmatched topic" with a null join_ref
    STALE = "stale"  # join_ref from an older join: drop silently
    INVALID = "invalid"  # payload is neither an object nor binary: reply error


# Reply payloads Phoenix uses, shared by every transport.
UNMATCHED_TOPIC = {"reason": "unmatched topic"}
TOO_MANY_CHANNELS = {"reason": "too many channels joined"}
JOIN_CRASHED = {"reason": "join crashed"}
CHANNEL_CRASH = {"reason": "channel_crash"}
INVALID_PAYLOAD = {"reason": "invalid payload"}


@dataclass(slots=True)
class Joined(Generic[H]):
    """A topic this socket has joined."""

    join_ref: Ref
    handle: H


class SocketState(Generic[H]):
    """The topic table of one connection and the routing rules over it.

    ``H`` is whatever the runtime keeps per joined topic (the channel process).
    """

    __slots__ = ("max_channels", "topics")

    def __init__(self, max_channels: int = 100) -> None:
        self.max_channels = max_channels
        self.topics: dict[str, Joined[H]] = {}

    def route(self, msg: Message) -> Route:
        """Classify ``msg``; the topic table is not changed."""
        event = msg.event
        if msg.topic == HEARTBEAT_TOPIC and event == "heartbeat":
            return Route.HEARTBEAT
        if not _valid_payload(msg.payload):
            return Route.INVALID
        if event == "phx_join":
            return Route.JOIN
        joined = self.topics.get(msg.topic)
        # A null join_ref is fine on any message; another must be the join's (compared as
        # Phoenix does, with ===: the Python != settles the common case of two strings).
        jr = msg.join_ref
        if event == "phx_leave":
            if joined is None:
                return Route.LEAVE_NOT_JOINED
            if jr is not None and (
                jr != joined.join_ref or (type(jr) is not str and not same_ref(jr, joined.join_ref))
            ):
                return Route.STALE
            return Route.LEAVE
        if joined is None:
            return Route.UNMATCHED
        if jr is not None and (
            jr != joined.join_ref or (type(jr) is not str and not same_ref(jr, joined.join_ref))
        ):
            return Route.STALE
        return Route.FORWARD

    def can_join(self, topic: str) -> bool:
        """Whether a join of ``topic`` stays within ``max_channels``.

        A duplicate join replaces its old channel, so that one does not count.
        """
        count = len(self.topics) - (1 if topic in self.topics else 0)
        return count < self.max_channels

    def get(self, topic: str) -> Joined[H] | None:
        return self.topics.get(topic)

    def add(self, topic: str, join_ref: Ref, handle: H) -> Joined[H] | None:
        """Register a successful join; returns the entry it replaced (duplicate join)."""
        old = self.topics.get(topic)
        self.topics[topic] = Joined(join_ref, handle)
        return old

    def remove(self, topic: str, handle: H | None = None) -> Joined[H] | None:
        """Forget ``topic`` (only if it still belongs to ``handle``, when given)."""
        joined = self.topics.get(topic)
        if joined is None or (handle is not None and joined.handle is not handle):
            return None
        del self.topics[topic]
        return joined


def _valid_payload(payload: Any) -> bool:
    return isinstance(payload, dict | bytes)


def same_ref(a: Any, b: Any) -> bool:
    """Whether two decoded refs are the same, as Elixir's ``===`` (Phoenix's join_ref check).

    Stricter than Python's ``==``: ``1``, ``1.0`` and ``true`` are three different refs, and
    so are ``0.0`` and ``-0.0`` (as in OTP 27+); objects and arrays compare member by member.
    """
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        return a.keys() == b.keys() and all(same_ref(v, b[k]) for k, v in a.items())
    if ta is list:
        return len(a) == len(b) and all(map(same_ref, a, b))
    if ta is float:
        return bool(a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b)
