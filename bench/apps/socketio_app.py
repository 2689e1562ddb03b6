"""Baseline: python-socketio (AsyncServer, ASGI) on uvicorn, as users deploy it.

Socket.IO's own protocol (Engine.IO 4 / Socket.IO 5 over the WebSocket transport only):
``join`` (with ack) enters the room; ``echo`` (with ack) acks its payload; ``bcast`` emits
``msg`` with the payload to the room (the sender included). uvicorn runs with its defaults
for a production install (uvloop, httptools, the ``websockets`` protocol), without
permessage-deflate and access logs. Engine.IO's ping interval is set past any run, since the
generator counts every frame it receives.

    bench/.venv/bin/python -m bench.apps.socketio_app --port 4003
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn

from bench.apps.common import BROADCAST_EVENT, TOPIC

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], ping_interval=600,
                           ping_timeout=600, cors_allowed_origins="*")
app = socketio.ASGIApp(sio)


@sio.on("join")
async def join(sid: str, room: Any) -> str:
    await sio.enter_room(sid, room if isinstance(room, str) else TOPIC)
    return "ok"


@sio.on("echo")
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.on("bcast")
async def bcast(sid: str, data: Any) -> None:
    await sio.emit(BROADCAST_EVENT, data, room=TOPIC)


class _Server(uvicorn.Server):
    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"bench-server: socketio ready on http://127.0.0.1:{port}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4003)
    args = parser.parse_args()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, ws_per_message_deflate=False, backlog=4096,
                            lifespan="off", ws_ping_interval=None, ws_ping_timeout=None)
    _Server(config).run()
