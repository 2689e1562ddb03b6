"""The test app for the phoenix.js conformance tests (tests/test_phoenix_js.py).

It is :mod:`tests.support.app` plus server-side triggers the official JS client cannot
produce on its own: ``disconnect_me`` broadcasts ``disconnect`` on the caller's socket id
(``user_sockets:<user_id>``), as ``Endpoint.broadcast("user_sockets:42", "disconnect", %{})``
does in Phoenix.
"""

from __future__ import annotations

from typing import Any

from channels import Endpoint, Reply
from tests.support.app import InfoChannel, RoomChannel, UserSocket


class JsRoomChannel(RoomChannel):
    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "disconnect_me":
            uid = self.assigns.get("user_id")
            if not uid:
                return Reply.error({"reason": "no user_id"})
            await self.socket.endpoint.broadcast(f"user_sockets:{uid}", "disconnect", {})
            return Reply.ok()
        return await super().handle_in(event, payload)


class JsUserSocket(UserSocket):
    channels = {"room:*": JsRoomChannel, "info": InfoChannel}


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": JsUserSocket})
