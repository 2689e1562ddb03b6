"""An in-memory endpoint behind the client's transport seam: no network, so tests can run
the client on trio's MockClock and script the server side frame by frame."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected

from channels.serializer import V2, Message

Frame = str | bytes


class FakeClientWS:
    """The client's end (what trio-websocket's WebSocketConnection offers the client)."""

    def __init__(self, to_server: trio.MemorySendChannel[Frame],
                 from_server: trio.MemoryReceiveChannel[Frame]) -> None:
        self._to_server = to_server
        self._from_server = from_server
        self.close_reason: CloseReason | None = None  # set by the server's close
        self.client_close: tuple[int, str | None] | None = None

    async def send_message(self, message: Frame) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self._to_server.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_reason or CloseReason(1006, None)) from None

    async def get_message(self) -> Frame:
        try:
            return await self._from_server.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_reason or CloseReason(1006, None)) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.client_close is None:
            self.client_close = (code, reason)
        self._to_server.close()
        self._from_server.close()


class FakeConn:
    """The server's end of one connection."""

    def __init__(self, url: str, subprotocols: list[str] | None, client: FakeClientWS,
                 to_client: trio.MemorySendChannel[Frame],
                 from_client: trio.MemoryReceiveChannel[Frame]) -> None:
        self.url = url
        self.subprotocols = subprotocols
        self.client = client
        self._to_client = to_client
        self._from_client = from_client
        self.closed = False

    async def recv(self, timeout: float = 60) -> Message:
        """The next client frame, decoded as the server does (refs are strings)."""
        with trio.fail_after(timeout):
            data = await self._from_client.receive()
        return V2.decode(data, isinstance(data, bytes))

    async def recv_event(self, event: str, timeout: float = 60) -> Message:
        while True:
            msg = await self.recv(timeout)
            if msg.event == event:
                return msg

    def send(self, join_ref: str | None, ref: str | None, topic: str, event: str,
             payload: Any) -> None:
        self._to_client.send_nowait(orjson.dumps([join_ref, ref, topic, event, payload]).decode())

    def reply(self, msg: Message, status: str = "ok", response: Any = None) -> None:
        self.send(msg.join_ref, msg.ref, msg.topic, "phx_reply",
                  {"status": status, "response": {} if response is None else response})

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close from the server side: the client sees ConnectionClosed(code)."""
        self.closed = True
        self.client.close_reason = CloseReason(code, reason)
        self._to_client.close()
        self._from_client.close()


class FakeServer:
    """Hands out connections to the test (``await server.accept()``); ``down`` refuses TCP,
    ``refuse`` answers the upgrade with that HTTP status."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: int | None = None
        self.attempts: list[tuple[float, str, list[str] | None]] = []
        self._accepted_send, self._accepted = trio.open_memory_channel[FakeConn](math.inf)

    def transport(self, url: str, subprotocols: list[str] | None
                  ) -> AbstractAsyncContextManager[FakeClientWS]:
        return self._open(url, subprotocols)

    @asynccontextmanager
    async def _open(self, url: str, subprotocols: list[str] | None
                    ) -> AsyncIterator[FakeClientWS]:
        self.attempts.append((trio.current_time(), url, subprotocols))
        await trio.lowlevel.checkpoint()
        if self.down:
            raise OSError(111, "Connection refused")
        if self.refuse is not None:
            raise ConnectionRejected(self.refuse, (), None)
        to_server, from_client = trio.open_memory_channel[Frame](math.inf)
        to_client, from_server = trio.open_memory_channel[Frame](math.inf)
        client = FakeClientWS(to_server, from_server)
        self._accepted_send.send_nowait(FakeConn(url, subprotocols, client, to_client,
                                                 from_client))
        try:
            yield client
        finally:
            await client.aclose()

    async def accept(self, timeout: float = 60) -> FakeConn:
        with trio.fail_after(timeout):
            return await self._accepted.receive()

    async def accept_and_join(self, topic: str | None = None, timeout: float = 60,
                              response: Any = None) -> tuple[FakeConn, Message]:
        """Accept a connection and answer its first join ok."""
        conn = await self.accept(timeout)
        join = await conn.recv_event("phx_join", timeout)
        assert topic is None or join.topic == topic
        conn.reply(join, "ok", response)
        return conn, join
