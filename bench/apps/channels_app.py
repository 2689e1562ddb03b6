"""The trio-channels server under benchmark.

    trio-channels serve bench.apps.channels_app:endpoint

``echo`` replies with its payload; ``bcast`` broadcasts ``msg`` with the payload to the topic
(every subscriber, the sender included) and sends no reply.

With ``BENCH_TRACEMALLOC=PREFIX`` set, tracemalloc runs (``BENCH_TRACEMALLOC_FRAMES`` frames)
and every SIGUSR1 dumps a snapshot to ``PREFIX.N.snap`` (``bench/run --memprofile``).
"""

from __future__ import annotations

import itertools
import os
import signal
import tracemalloc
from typing import Any

from bench.apps.common import BROADCAST_EVENT
from channels import Channel, Endpoint, Reply, Socket


class BenchChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "echo":
            return Reply.ok(payload)
        if event == "bcast":
            await self.broadcast(BROADCAST_EVENT, payload)
            return None
        return Reply.error({"reason": "unknown event"})


class BenchSocket(Socket):
    channels = {"room:*": BenchChannel}
    # Runs are short, but the generator sends no heartbeats while it counts frames: keep the
    # heartbeat monitor out of the way (no server in this suite sends keepalives during a run).
    idle_timeout = 600.0
    # One benchmark client pushes far more than the default 1,000 messages/s a real client
    # may; keep the limiter on (its per-message check is part of the cost) but out of reach.
    rate_limit = (1e9, 1e9)


endpoint = Endpoint({"/socket": BenchSocket})


def _install_memory_snapshots(prefix: str) -> None:
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1")))
    counter = itertools.count()

    def dump(signum: int, frame: object) -> None:
        path = f"{prefix}.{next(counter)}.snap"
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)


if os.environ.get("BENCH_TRACEMALLOC"):
    _install_memory_snapshots(os.environ["BENCH_TRACEMALLOC"])
