"""Shared by the client drivers (run with .venv-clients' interpreter, not pytest's).

``install_tap()`` records every WebSocket frame the client library sends and receives (a
wrapper around websockets' ``Connection.send``/``recv``, which all three libraries use), keyed
by the ``user_id`` query parameter of the connection. ``Steps`` records when each step of the
scenario began, what it returned or why it failed (the scenario stops at the first failure),
and prints one ``RESULT:<json>`` line at the end.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.connection import Connection

#: Per step, seconds to wait for an answer.
STEP_TIMEOUT = 5.0
FRAMES: list[dict[str, Any]] = []
#: Integers JSON allows and Phoenix (Jason) echoes exactly, beyond 64 bits either way.
BIG = {"big": 2**70 + 1, "neg": -(2**64) - 1, "max_u64": 2**64 - 1, "min_i64": -(2**63)}


def _who(conn: Connection) -> str:
    request = getattr(conn, "request", None)
    if request is None:
        return "?"
    return parse_qs(urlsplit(request.path).query).get("user_id", ["?"])[0]


def _decode(data: Any) -> Any:
    if isinstance(data, bytes | bytearray | memoryview):
        return {"$bin": bytes(data).hex()}
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return {"$text": str(data)}


def install_tap() -> None:
    send, recv = Connection.send, Connection.recv

    async def tapped_send(self: Connection, message: Any, *args: Any, **kwargs: Any) -> Any:
        FRAMES.append({"t": time.monotonic(), "who": _who(self), "dir": "sent",
                       "frame": _decode(message)})
        return await send(self, message, *args, **kwargs)

    async def tapped_recv(self: Connection, *args: Any, **kwargs: Any) -> Any:
        message = await recv(self, *args, **kwargs)
        FRAMES.append({"t": time.monotonic(), "who": _who(self), "dir": "recv",
                       "frame": _decode(message)})
        return message

    Connection.send = tapped_send  # type: ignore[method-assign]
    Connection.recv = tapped_recv  # type: ignore[method-assign]


class StepFailed(Exception):
    pass


class Steps:
    def __init__(self, client: str, dist: str) -> None:
        self.out: dict[str, Any] = {
            "client": client, "dist": dist, "version": importlib.metadata.version(dist),
            "websockets": importlib.metadata.version("websockets"), "steps": {}, "error": None,
            "began": {},
        }

    def begin(self, name: str) -> str:
        """Note when step ``name`` starts (frames carry times too); returns the name."""
        self.out["began"][name] = time.monotonic()
        return name

    def ok(self, name: str, value: Any) -> Any:
        self.out["steps"][name] = value
        return value

    def failed(self, name: str, exc: BaseException) -> StepFailed:
        why = (f"timed out: no answer in {STEP_TIMEOUT} s"
               if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}")
        self.out["steps"][name] = {"error": why}
        self.out["error"] = f"step {name}: {why}"
        self.out["traceback"] = "".join(traceback.format_exception(exc))[-3000:]
        return StepFailed(name)

    def emit(self) -> None:
        self.out["frames"] = FRAMES
        sys.stdout.write("RESULT:" + json.dumps(self.out, default=repr) + "\n")
        sys.stdout.flush()


def in_thread(fn: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    """Run a blocking library call with a bound: TimeoutError when it does not return."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box.get("value")
