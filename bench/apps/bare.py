"""The ceiling: trio-channels' own I/O layer with no channel logic.

Same accept loop, same HTTP/1.1 upgrade (``channels.http`` on h11, freed before the session),
same :class:`channels.connection.Connection` (synchronous non-blocking sends, flushers in the
connections nursery), same frame parser (:mod:`channels.wsframe`) and the same ``ws_frame``
framing as
:mod:`channels.socket` (keep them in step when the runtime's I/O layer changes), but no JSON
decoding, no protocol rules, no channel process and no mailbox: a text frame containing
``"bcast"`` is fanned out (pre-built frame, to every connection, checkpointing every 256 sends
like ``PubSub.local_broadcast``); a join gets the pre-built join reply; anything else the
pre-built echo reply.

    python -m bench.apps.bare --port 4001
"""

from __future__ import annotations

import argparse
import logging
import socket as stdsocket

import h11
import trio

from bench.apps.common import (
    BROADCAST,
    ECHO_REPLY,
    JOIN_REPLY,
    accept_some,
    listen,
    serve_until_signal,
)
from channels import http
from channels.connection import Connection
from channels.frames import ws_frame
from channels.http import HTTPError, Request
from channels.pubsub import CHECKPOINT_EVERY
from channels.wsframe import Close, FrameParser, Ping, close_frame, pong_frame

BCAST_FRAME = ws_frame(BROADCAST)
ECHO_FRAME = ws_frame(ECHO_REPLY)
JOIN_FRAME = ws_frame(JOIN_REPLY)


class BareSession:
    """One upgraded connection: the runtime's frame parser in, pre-built frames out."""

    __slots__ = ("conn", "endpoint", "parser")

    def __init__(self, endpoint: BareEndpoint, conn: Connection, trailing: bytes) -> None:
        self.endpoint = endpoint
        self.conn = conn
        # As channels.socket.SocketSession (and its default max_frame_size).
        self.parser = FrameParser(1 << 20, trailing)

    async def run(self) -> None:
        parser, conn, conns = self.parser, self.conn, self.endpoint.conns
        conns[conn] = None
        data = b""
        try:
            while True:
                for event in parser.feed(data):
                    if type(event) is str or type(event) is bytes:
                        text = event if isinstance(event, str) else event.decode("utf-8", "replace")
                        if '"bcast"' in text:
                            await self.endpoint.fanout()
                        elif "phx_join" in text:
                            conn.write_nowait(JOIN_FRAME)
                        else:
                            conn.write_nowait(ECHO_FRAME)
                    elif type(event) is Ping:
                        conn.write_nowait(pong_frame(event.payload))
                    elif type(event) is Close:
                        conn.write_nowait(close_frame(event.code))
                        return
                    else:  # a protocol error
                        return
                data = await conn.receive_some()
                if not data:
                    return
        finally:
            conns.pop(conn, None)


class BareEndpoint:
    """Just enough of :class:`channels.Endpoint` for ``channels.http.serve_http``."""

    def __init__(self) -> None:
        # Insertion-ordered set of open WebSocket connections, like PubSub's subscriber sets.
        self.conns: dict[Connection, None] = {}
        self._connections: trio.Nursery | None = None

    async def handle_http(self, req: Request, conn: Connection,
                          h: h11.Connection) -> BareSession | None:
        if req.path != "/socket/websocket":
            raise HTTPError(404)
        http.check_handshake(req)
        offered, _token = http.parse_subprotocols(req)
        trailing = http.accept_websocket(conn, h, req, "phoenix" if offered else None)
        return BareSession(self, conn, trailing)

    async def fanout(self) -> None:
        conns = self.conns
        if len(conns) <= CHECKPOINT_EVERY:
            for c in tuple(conns):
                c.write_nowait(BCAST_FRAME)
            return
        for i, c in enumerate(tuple(conns), 1):
            c.write_nowait(BCAST_FRAME)
            if i % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()

    async def _handle_connection(self, sock: stdsocket.socket, peer: tuple[str, int],
                                 host_port: tuple[str, int]) -> None:
        # As channels.endpoint.Endpoint._handle_connection: the HTTP parser is dropped before
        # the WebSocket session runs; flushers run in the connections nursery.
        conn = Connection(sock, peer)
        assert self._connections is not None
        conn.attach(self._connections)
        try:
            session = await http.serve_http(self.handle_http, conn, host_port)
            if session is not None:
                await session.run()  # type: ignore[attr-defined]
        finally:
            conn.abort()

    async def serve(self, host: str, port: int) -> None:
        listener = listen(host, port)
        host_port = (host, listener.getsockname()[1])

        def start(nursery: trio.Nursery) -> None:
            self._connections = nursery
            nursery.start_soon(self._accept_loop, listener, nursery, host_port)

        await serve_until_signal("bare", listener, start)

    async def _accept_loop(self, listener: stdsocket.socket, nursery: trio.Nursery,
                           host_port: tuple[str, int]) -> None:
        # As channels.endpoint.Endpoint._accept_loop.
        while True:
            await trio.lowlevel.wait_readable(listener)
            accepted, error = accept_some(listener)
            for sock, peer in accepted:
                nursery.start_soon(self._handle_connection, sock, peer[:2], host_port)
            if error is not None:
                logging.error("accept failed: %s", error)
                await trio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4001)
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    trio.run(BareEndpoint().serve, args.host, args.port)


if __name__ == "__main__":
    main()
