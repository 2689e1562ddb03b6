"""trio-channels: Phoenix-Channels-style real-time channels on trio.

The public API: :class:`Endpoint`, :class:`Socket`, :class:`Channel`, :class:`Reply`,
:class:`JoinError`, :class:`Refuse`, :class:`PubSub`, :class:`CallbackSubscriber`, and rooms:
:class:`Rooms`, :class:`Room` and their errors.
"""

from channels.channel import Channel, JoinError, Reply, ReplyRef
from channels.endpoint import Endpoint
from channels.lifecycle import Service
from channels.pubsub import Adapter, CallbackSubscriber, LocalAdapter, PubSub
from channels.rooms import (
    BadRoomKey,
    Interval,
    NotSerializable,
    Room,
    RoomCrashed,
    RoomError,
    RoomGaveUp,
    Rooms,
    RoomTimeout,
    RoomUnavailable,
    UnknownRoom,
)
from channels.socket import Refuse, Socket

__all__ = [
    "Adapter",
    "BadRoomKey",
    "CallbackSubscriber",
    "Channel",
    "Endpoint",
    "Interval",
    "JoinError",
    "LocalAdapter",
    "NotSerializable",
    "PubSub",
    "Refuse",
    "Reply",
    "ReplyRef",
    "Room",
    "RoomCrashed",
    "RoomError",
    "RoomGaveUp",
    "RoomTimeout",
    "RoomUnavailable",
    "Rooms",
    "Service",
    "Socket",
    "UnknownRoom",
]
