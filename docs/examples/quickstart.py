"""The quickstart from docs/guide.md: a room channel with replies, broadcasts and timers.

Run it with ``trio-channels serve docs.examples.quickstart:endpoint --port 4000``.
"""

from __future__ import annotations

from typing import Any

from channels import Channel, Endpoint, JoinError, Reply, Socket


class RoomChannel(Channel):
    intercept = ("new_msg",)  # these broadcasts pass through handle_out

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if topic == "room:secret" and self.assigns.get("user") != "admin":
            raise JoinError({"reason": "unauthorized"})
        self.send_after(0, "after_join")  # pushes must wait until the join reply is out
        return {"welcome": self.assigns["user"]}

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await self.push("hello", {"topic": self.topic})
            await self.broadcast_from("user_joined", {"user": self.assigns["user"]})

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "new_msg":
            await self.broadcast("new_msg", {"user": self.assigns["user"], **payload})
            return Reply.ok()
        if event == "ping":
            return Reply.ok({"pong": payload.get("n")})
        return Reply.error({"reason": f"unknown event {event}"})

    async def handle_out(self, event: str, payload: Any) -> None:
        # Runs once per subscriber: hide messages from users this one has muted.
        if payload["user"] not in self.assigns.get("muted", ()):
            await self.push(event, payload)

    async def terminate(self, reason: str) -> None:
        await self.broadcast_from("user_left", {"user": self.assigns["user"], "why": reason})


class UserSocket(Socket):
    channels = {"room:*": RoomChannel}

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool | dict[str, Any]:
        user = params.get("user")
        if not user:
            return False  # HTTP 403 at the upgrade
        return {"user": user, "muted": params.get("muted", "").split(",")}

    def id(self) -> str | None:
        return f"user_socket:{self.assigns['user']}"


endpoint = Endpoint({"/socket": UserSocket})
