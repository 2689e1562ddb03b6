"""Wire constants shared by the benchmark servers (stdlib only: the baselines run in bench/.venv).

Every Phoenix-shaped server answers with byte-identical frames, so the load generator treats
them alike: the join reply, the echo reply and the broadcast that ``bcast`` fans out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

TOPIC = "room:bench"
BROADCAST_EVENT = "msg"

# The payload of echo and bcast pushes; the orchestrator passes the same JSON to the generator.
DEFAULT_PAYLOAD = '{"user":"bench","body":"hello from the load generator 0123456789"}'
PAYLOAD: dict[str, Any] = json.loads(os.environ.get("BENCH_PAYLOAD", DEFAULT_PAYLOAD))


def dumps(value: Any) -> bytes:
    """Compact JSON, byte-identical to orjson's and to JavaScript's JSON.stringify here."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# What trio-channels sends for the join, an echo push and a broadcast (V2 JSON).
JOIN_REPLY = dumps(["1", "1", TOPIC, "phx_reply", {"status": "ok", "response": {}}])
ECHO_REPLY = dumps(["1", "2", TOPIC, "phx_reply", {"status": "ok", "response": PAYLOAD}])
BROADCAST = dumps([None, None, TOPIC, BROADCAST_EVENT, PAYLOAD])


def ready(name: str, port: int) -> None:
    """The line the orchestrator waits for."""
    print(f"bench-server: {name} ready on http://127.0.0.1:{port}", flush=True)
    sys.stdout.flush()


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    listener.setblocking(False)
    return listener


def accept_some(listener: socket.socket,
                limit: int = 64) -> tuple[list[tuple[socket.socket, Any]], OSError | None]:
    """Up to ``limit`` pending connections (non-blocking, TCP_NODELAY), and the error that
    stopped accepting early (e.g. out of descriptors: the caller backs off), if any."""
    accepted: list[tuple[socket.socket, Any]] = []
    for _ in range(limit):
        try:
            sock, peer = listener.accept()
        except BlockingIOError:
            break
        except OSError as exc:
            return accepted, exc
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted.append((sock, peer))
    return accepted, None


async def serve_until_signal(name: str, listener: socket.socket,
                             start: Callable[[trio.Nursery], None]) -> None:
    """Run ``start(nursery)``'s tasks until SIGINT or SIGTERM, then close ``listener``."""
    import trio  # only the trio servers come here (the baselines' venv has no trio)

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                start(nursery)
                ready(name, listener.getsockname()[1])
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        trio.lowlevel.notify_closing(listener)
        listener.close()
