"""trio-channels: Phoenix-Channels-style real-time channels on trio.

The public API: :class:`Endpoint`, :class:`Socket`, :class:`Channel`, :class:`Reply`,
:class:`JoinError`, :class:`Refuse`, :class:`PubSub` and :class:`CallbackSubscriber`.
"""

from channels.channel import Channel, JoinError, Reply, ReplyRef
from channels.endpoint import Endpoint
from channels.pubsub import Adapter, CallbackSubscriber, LocalAdapter, PubSub
from channels.socket import Refuse, Socket

__all__ = [
    "Adapter",
    "CallbackSubscriber",
    "Channel",
    "Endpoint",
    "JoinError",
    "LocalAdapter",
    "PubSub",
    "Refuse",
    "Reply",
    "ReplyRef",
    "Socket",
]
