"""The test application: channels that exercise every part of the protocol.

Modelled on Phoenix's own integration-test channels. Used in-process by the raw protocol
tests and as a separate server process (``trio-channels serve support.app:make_endpoint``)
by the phoenix.js conformance tests.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from channels import Channel, Endpoint, JoinError, Refuse, Reply, Socket

#: (topic, reason) of every terminate() call in this process, for assertions.
TERMINATED: list[tuple[str, str]] = []
#: The latest RoomChannel joined on each topic, so tests can message it from other tasks.
CHANNELS: dict[str, RoomChannel] = {}


class RoomChannel(Channel):
    intercept = ("new_msg",)

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if params.get("refuse"):
            raise JoinError({"reason": "refused"})
        if params.get("crash"):
            raise RuntimeError("join blew up")
        if params.get("refuse_until") and int(params["refuse_until"]) > _count(topic):
            raise JoinError({"reason": "not yet"})
        self.assigns["params"] = params
        CHANNELS[topic] = self
        self.send_after(0, "after_join")
        return {"joined": topic} if params.get("reply") else None

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await self.push("joined", {"status": "connected",
                                       "user_id": self.assigns.get("user_id")})
            await self.broadcast("user_entered", {"user": self.assigns.get("user_id")})
        elif isinstance(message, tuple) and message[0] == "reply_later":
            await self.reply(message[1], Reply.ok({"later": True}))
        elif isinstance(message, tuple) and message[0] == "push":
            await self.push(message[1], message[2])

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "new_msg":
            await self.broadcast("new_msg", payload)
            return Reply.ok()
        if event == "echo":
            return Reply.ok(payload)
        if event == "error_reply":
            return Reply.error({"reason": "asked for it"})
        if event == "noreply":
            return None
        if event == "boom":
            raise RuntimeError("boom")
        if event == "later":
            self.send_after(0.05, ("reply_later", self.socket_ref()))
            return None
        if event == "stop":
            self.stop()
            return Reply.ok({"stopping": True})
        if event == "shout":
            await self.broadcast("shout", payload)
            return Reply.ok()
        if event == "shout_from":
            await self.broadcast_from("shout", payload)
            return Reply.ok()
        if event == "binary_event":
            assert isinstance(payload, bytes)
            self.send(("push", "binary_event", b"\x00\x01"))
            return Reply.ok(payload + b"\x03\x04")
        if event == "bin_broadcast":
            await self.broadcast("bin", payload)
            return Reply.ok()
        if event == "slow":
            await trio.sleep(1)
            return Reply.ok()
        if event == "assigns":
            return Reply.ok({"user_id": self.assigns.get("user_id"),
                             "join_ref": self.join_ref})
        return await super().handle_in(event, payload)

    async def handle_out(self, event: str, payload: Any) -> None:
        await self.push(event, {**payload, "transport": "websocket"})

    async def terminate(self, reason: str) -> None:
        TERMINATED.append((self.topic, reason))
        await self.push("you_left", {"message": "bye"})


class InfoChannel(Channel):
    """Reports what the socket saw at connect time."""

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        info = self.assigns["connect_info"]
        return {
            "params": self.assigns.get("params"),
            "auth_token": info["auth_token"],
            "user_agent": info["user_agent"],
            "peer": info["peer_data"]["address"],
            "path": info["uri"]["path"],
            "x_headers": [list(p) for p in info["x_headers"]],
        }


_join_counts: dict[str, int] = {}


def _count(topic: str) -> int:
    _join_counts[topic] = _join_counts.get(topic, 0) + 1
    return _join_counts[topic]


class UserSocket(Socket):
    channels = {"room:*": RoomChannel, "info": InfoChannel}
    max_channels = int(os.environ.get("TEST_MAX_CHANNELS", "100"))
    idle_timeout = float(os.environ.get("TEST_IDLE_TIMEOUT", "60"))
    max_frame_size = 64 * 1024
    check_origin = ["https://example.com", "//*.allowed.test"]

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        if params.get("reject"):
            return False
        if params.get("rate_limit"):
            raise Refuse(429, "slow down")
        if connect_info["auth_token"] == "bad-token":
            return False
        return {"user_id": params.get("user_id"), "params": params,
                "connect_info": connect_info}

    def id(self) -> str | None:
        uid = self.assigns.get("user_id")
        return f"user_sockets:{uid}" if uid else None


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": UserSocket, "/ws/admin": UserSocket})
