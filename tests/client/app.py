"""The client tests' own app: join params echoed back, a feed with history, a way for a
client to get its own connection closed by the server (``kick``)."""

from __future__ import annotations

from typing import Any

from channels import Channel, Endpoint, Reply, Socket
from channels.history import History


class ParamsChannel(Channel):
    """Replies to every join with the params it got; ``crash`` makes it crash (phx_error)."""

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"params": params}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "crash":
            raise RuntimeError("asked to crash")
        if event == "kick":
            await _kick(self)
            return None
        return Reply.ok(payload)


class FeedChannel(Channel):
    """A topic with history: ``post`` broadcasts its payload, positioned."""

    history = History(size=1000, ttl=600)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return {"hello": topic}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "post":
            await self.broadcast("post", payload)
            return Reply.ok()
        if event == "kick":
            await _kick(self)
            return None
        return Reply.error({"reason": "unknown event"})


async def _kick(channel: Channel) -> None:
    socket_id = channel.socket.id()
    assert socket_id is not None
    await channel.socket.endpoint.broadcast(socket_id, "disconnect", {})


class ClientTestSocket(Socket):
    channels = {"params:*": ParamsChannel, "feed:*": FeedChannel}

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]
                      ) -> bool | dict[str, Any]:
        return {"user": params.get("user")}

    def id(self) -> str | None:
        user = self.assigns.get("user")
        return f"client_socket:{user}" if user else None


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": ClientTestSocket})
