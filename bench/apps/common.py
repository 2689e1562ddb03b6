"""Wire constants shared by the benchmark servers (stdlib only: the baselines run in bench/.venv).

Every Phoenix-shaped server answers with byte-identical frames, so the load generator treats
them alike: the join reply, the echo reply and the broadcast that ``bcast`` fans out.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

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
