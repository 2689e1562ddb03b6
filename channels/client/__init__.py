"""A Phoenix Channels client for Python on trio (protocol V2: JSON and binary frames).

    from channels.client import connect

    async with connect("ws://127.0.0.1:4000/socket", params={"user": "ada"}) as socket:
        channel = socket.channel("room:lobby")
        channel.on("new_msg", print)
        await channel.join()
        reply = await channel.push("new_msg", {"body": "hi"})

Works with trio-channels and Phoenix servers; reconnects, rejoins, heartbeats and Presence
follow phoenix.js. See docs/client.md.
"""

from channels.client.channel import ClientChannel, JoinParams, MessageStream
from channels.client.errors import (
    ChannelClosed,
    ClientError,
    ConnectError,
    PushTimeout,
    ReplyError,
    ReplyLost,
)
from channels.client.presence import ClientPresence
from channels.client.socket import (
    ClientSocket,
    Transport,
    WebSocketLike,
    connect,
    default_reconnect_after,
    default_rejoin_after,
    websocket_transport,
)
from channels.serializer import Message

__all__ = [
    "ChannelClosed",
    "ClientChannel",
    "ClientError",
    "ClientPresence",
    "ClientSocket",
    "ConnectError",
    "JoinParams",
    "Message",
    "MessageStream",
    "PushTimeout",
    "ReplyError",
    "ReplyLost",
    "Transport",
    "WebSocketLike",
    "connect",
    "default_reconnect_after",
    "default_rejoin_after",
    "websocket_transport",
]
