"""What the parts of a node see of their :class:`~channels.Endpoint`, as protocols.

Sockets, channels, sessions, transports and the HTTP API are given the endpoint typed as
:class:`Node`, so none of them imports the endpoint module: the endpoint depends on them,
never the other way around.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from channels.history import HistoryService
    from channels.pubsub import PubSub, Subscriber
    from channels.rooms import Rooms
    from channels.stats import Counters
    from channels.telemetry import Telemetry
    from presence import Presence


class Node(Protocol):
    """The endpoint as its sockets, channels and sessions use it (``socket.endpoint``)."""

    @property
    def pubsub(self) -> PubSub: ...
    @property
    def presence(self) -> Presence | None: ...
    @property
    def rooms(self) -> Rooms | None: ...
    @property
    def history(self) -> HistoryService | None: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def telemetry(self) -> Telemetry: ...

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to every subscriber of ``topic`` on every node."""

    async def local_broadcast(self, topic: str, event: str,
                              payload: dict[str, Any] | bytes) -> None:
        """Send ``event`` to the subscribers of ``topic`` on this node only."""

    def subscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def report_protection(self, kind: str, peer: tuple[str, int],
                          topic: str | None = None) -> None:
        """Tell telemetry handlers that a protection kicked in."""
