"""A raw Phoenix protocol client for tests: frames in and out, nothing hidden."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from channels.serializer import decode_server_frame, encode_client_binary_push


class RawClient:
    def __init__(self, ws: WebSocketConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn

    async def send(self, join_ref: str | None, ref: str | None, topic: str, event: str,
                   payload: Any) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_message(encode_client_binary_push(join_ref, ref, topic, event,
                                                                 payload))
        elif self.vsn.startswith("1."):
            msg: dict[str, Any] = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            if join_ref is not None:
                msg["join_ref"] = join_ref
            await self.ws.send_message(orjson.dumps(msg).decode())
        else:
            await self.ws.send_message(orjson.dumps([join_ref, ref, topic, event, payload])
                                       .decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def recv(self, timeout: float = 5) -> list[Any]:
        """The next message as ``[join_ref, ref, topic, event, payload]``."""
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        if self.vsn.startswith("1."):
            assert isinstance(data, str)
            m = orjson.loads(data)
            assert "join_ref" not in m, "V1 must never emit join_ref"
            return [None, m["ref"], m["topic"], m["event"], m["payload"]]
        msg = decode_server_frame(data, isinstance(data, bytes))
        return [msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]

    async def recv_until(self, event: str, timeout: float = 5) -> list[Any]:
        while True:
            m = await self.recv(timeout)
            if m[3] == event:
                return m

    async def join(self, topic: str, join_ref: str, ref: str,
                   params: dict[str, Any] | None = None) -> list[Any]:
        await self.send(join_ref, ref, topic, "phx_join", params or {})
        return await self.recv_until("phx_reply")

    async def closed(self, timeout: float = 5) -> int | None:
        """Wait for the server to close; returns the close code."""
        with trio.fail_after(timeout):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code
        return None  # pragma: no cover


@asynccontextmanager
async def connect(port: int, vsn: str | None = "2.0.0", path: str = "/socket/websocket",
                  query: str = "", subprotocols: list[str] | None = None,
                  headers: list[tuple[str, str]] | None = None) -> AsyncIterator[RawClient]:
    params = [p for p in (query, f"vsn={vsn}" if vsn else "") if p]
    url = f"ws://127.0.0.1:{port}{path}" + ("?" + "&".join(params) if params else "")
    async with open_websocket_url(url, subprotocols=subprotocols,
                                  extra_headers=[(k.encode(), v.encode()) for k, v in headers or []]) as ws:
        yield RawClient(ws, vsn or "1.0.0")
