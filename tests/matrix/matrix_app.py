"""The server app of the client matrix: the test app and the presence app on one endpoint.

``/socket`` is ``tests.support.app``'s socket (``room:*``, ``info``) plus ``realtime:*``, the
topic prefix that Supabase's ``realtime`` client puts in front of every channel name, served
the way a Supabase Realtime server answers it (a ``broadcast`` event re-broadcast as
``broadcast``). ``/presence`` is ``tests.support.presence_app``'s socket, with its Presence,
plus ``state_first:*`` for phoenix.js 1.3 (see :class:`StateFirstPresenceChannel`).

    trio-channels serve tests.matrix.matrix_app:make_endpoint
"""

from __future__ import annotations

from typing import Any

from channels import Channel, Endpoint, Reply
from tests.support.app import RoomChannel, UserSocket
from tests.support.presence_app import PresenceChannel, PresenceSocket, presence


class RealtimeChannel(Channel):
    """``realtime:<name>``: joins take Supabase's ``{"config": {...}}`` payload."""

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        config = params.get("config") or {}
        self.assigns["broadcast_self"] = bool((config.get("broadcast") or {}).get("self"))
        return {}

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "broadcast":
            # Supabase: {"type": "broadcast", "event": e, "payload": p} goes out unchanged, to
            # the sender too only when it joined with config.broadcast.self.
            if self.assigns["broadcast_self"]:
                await self.broadcast("broadcast", payload)
            else:
                await self.broadcast_from("broadcast", payload)
            return Reply.ok()
        if event == "echo":
            return Reply.ok(payload)
        if event == "error_reply":
            return Reply.error({"reason": "asked for it"})
        return Reply.error({"reason": f"unknown event {event}"})


class StateFirstPresenceChannel(PresenceChannel):
    """Presence the way Phoenix 1.3's guide wires it: push ``presence_state``, then track.

    phoenix.js 1.3's ``Presence.syncDiff`` appends the metas of a join without looking at
    their ``phx_ref`` (1.4 added the de-duplication), so a client that already has its own
    meta from ``presence_state`` (track first, then the state: the order of the 1.4+ guides
    and of ``presence.track``'s ``push_state``) lists itself twice when the diff of its own
    join arrives. Pushing the state before tracking is what 1.3 apps did.
    """

    async def handle_info(self, message: Any) -> None:
        if message == "after_join":
            await self.push("presence_state", await presence.list(self.topic))
            await presence.track(self, self.assigns["user"],
                                 {"status": "online", "node": presence.tracker.node_name},
                                 push_state=False)
        else:
            await super().handle_info(message)


class MatrixSocket(UserSocket):
    channels = {**UserSocket.channels, "realtime:*": RealtimeChannel}


class MatrixPresenceSocket(PresenceSocket):
    channels = {**PresenceSocket.channels, "state_first:*": StateFirstPresenceChannel}


def make_endpoint() -> Endpoint:
    return Endpoint({"/socket": MatrixSocket, "/presence": MatrixPresenceSocket},
                    presence=presence)


__all__ = ["MatrixPresenceSocket", "MatrixSocket", "RealtimeChannel", "RoomChannel",
           "StateFirstPresenceChannel", "make_endpoint"]
