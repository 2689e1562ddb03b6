"""Baseline: ``websockets`` (asyncio implementation, stdlib event loop) with its ``broadcast()``.

Same Phoenix-shaped frames as the bare server: ``"bcast"`` → ``websockets.broadcast`` of the
pre-built broadcast text to every connection; a join → the join reply; anything else → the
echo reply. No compression, no server pings (the generator counts every frame).

    bench/.venv/bin/python -m bench.apps.websockets_app --port 4002
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.apps.common import BROADCAST, ECHO_REPLY, JOIN_REPLY, ready

BCAST_TEXT = BROADCAST.decode()
ECHO_TEXT = ECHO_REPLY.decode()
JOIN_TEXT = JOIN_REPLY.decode()

CONNS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CONNS.add(ws)
    try:
        async for msg in ws:
            if isinstance(msg, bytes):
                msg = msg.decode("utf-8", "replace")
            if '"bcast"' in msg:
                broadcast(CONNS, BCAST_TEXT)
            elif "phx_join" in msg:
                await ws.send(JOIN_TEXT)
            else:
                await ws.send(ECHO_TEXT)
    except ConnectionClosed:
        pass  # the generator drops its sockets without a close handshake at the end
    finally:
        CONNS.discard(ws)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, compression=None, ping_interval=None,
                     max_size=1 << 20, backlog=4096) as server:
        ready("websockets", server.sockets[0].getsockname()[1])
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4002)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
