"""The trio-channels server under benchmark.

    trio-channels serve bench.apps.channels_app:endpoint

``echo`` replies with its payload; ``bcast`` broadcasts ``msg`` with the payload to the topic
(every subscriber, the sender included) and sends no reply.

With ``BENCH_TRACEMALLOC=PREFIX`` set, tracemalloc runs (``BENCH_TRACEMALLOC_FRAMES`` frames)
and every SIGUSR1 dumps a snapshot to ``PREFIX.N.snap`` (``bench/run --memprofile``), and a
census of the objects the garbage collector tracks to ``PREFIX.N.census.json``: count and
``sys.getsizeof`` bytes per type (a coroutine's size includes its frame).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import sys
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


class SteppedChannel(BenchChannel):
    inline_handle_in = False  # every push through the channel's task


class SteppedSocket(BenchSocket):
    channels = {"room:*": SteppedChannel}


# Variants for before/after runs (bench/run servers channels-poll, -nopoll, -noinline,
# -neither): with the node's poller (the default), without it (Endpoint(poll_reads=False)),
# the poller without inline handle_in, and neither (the runtime before both).
endpoint_poll = Endpoint({"/socket": BenchSocket}, poll_reads=True)
endpoint_nopoll = Endpoint({"/socket": BenchSocket}, poll_reads=False)
endpoint_noinline = Endpoint({"/socket": SteppedSocket}, poll_reads=True)
endpoint_neither = Endpoint({"/socket": SteppedSocket}, poll_reads=False)


def _install_memory_snapshots(prefix: str) -> None:
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1")))
    counter = itertools.count()

    def dump(signum: int, frame: object) -> None:
        index = next(counter)
        census = f"{prefix}.{index}.census.json"
        with open(census + ".tmp", "w") as f:
            json.dump(_census(), f)
        os.replace(census + ".tmp", census)
        path = f"{prefix}.{index}.snap"  # last: the orchestrator waits for this file
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)


def _census() -> dict[str, list[int]]:
    """Objects tracked by the garbage collector: type name -> [count, bytes]."""
    gc.collect()
    out: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        if t.__name__ == "coroutine":  # by the function it runs: which frames stay
            name = f"coroutine {obj.cr_code.co_qualname}"
        entry = out.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    return out


if os.environ.get("BENCH_TRACEMALLOC"):
    _install_memory_snapshots(os.environ["BENCH_TRACEMALLOC"])
