"""The Python client's throughput (a benchmark, not a test): ``python -m bench.client_bench``.

One trio-channels server process (``bench.apps.channels_app``: ``echo`` replies with its
payload, ``bcast`` broadcasts it) pinned to core 0, this process (the client) pinned to
core 1 when there are two. Each scenario runs ``--duration`` seconds after a 1 s warm-up:

* ``rtt-1``: one socket, one ``await channel.push("echo", …)`` at a time: round trips/s and
  latency percentiles;
* ``rtt-64``: one socket, 64 tasks each keeping one push in flight;
* ``deliver-on``: broadcasts to one receiving socket, counted by a ``channel.on`` handler;
  the publisher (another socket of this process, ``push_nowait``) keeps at most 1,000
  broadcasts not yet received, so the client's receiving side sets the pace;
* ``deliver-stream``: the same, consumed with ``async for`` over ``channel.messages()``;
* ``deliver-10``: one publisher, ten receiving sockets on the topic (handlers).

Reports operations/s, the client's CPU per 1,000 operations (``process_time``) and how busy
the server was (from /proc), so a server-bound run shows as such. Bounded: about
``5 x repeat x (duration + 3)`` seconds in all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.apps.common import BROADCAST_EVENT, PAYLOAD, TOPIC
from bench.procs import CLK_TCK, spawn, stop
from channels.client import ClientChannel, connect

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 1000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class _Meter:
    """Counts operations and CPU (this process, the server) over the measured window."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.count = 0

    def start(self) -> None:
        self.count0 = self.count
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.server0 = _cpu_seconds(self.server_pid)

    def result(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        done = self.count - self.count0
        return {
            "ops": done,
            "ops_per_s": round(done / elapsed),
            "client_cpu_ms_per_1000": round((time.process_time() - self.cpu0) / done * 1e6, 1),
            "client_cpu_pct": round((time.process_time() - self.cpu0) / elapsed * 100),
            "server_cpu_pct": round((_cpu_seconds(self.server_pid) - self.server0)
                                    / elapsed * 100),
        }


async def _rtt(url: str, server_pid: int, duration: float, inflight: int) -> dict[str, Any]:
    meter = _Meter(server_pid)
    latencies: list[float] = []
    async with connect(url) as socket:
        channel = await socket.join(TOPIC)
        measuring = False
        end = trio.current_time() + 1.0 + duration

        async def worker() -> None:
            while trio.current_time() < end:
                t = time.perf_counter()
                await channel.push("echo", PAYLOAD)
                meter.count += 1
                if measuring:
                    latencies.append(time.perf_counter() - t)

        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)
            await trio.sleep(1.0)
            measuring = True
            meter.start()
        result = meter.result()
    latencies.sort()
    result["p50_ms"] = round(statistics.median(latencies) * 1000, 3)
    result["p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 3)
    return result


async def _deliver(url: str, server_pid: int, duration: float, receivers: int,
                   stream: bool) -> dict[str, Any]:
    meter = _Meter(server_pid)
    sent = 0
    waiting: trio.Event | None = None

    def received(_: Any = None) -> None:
        nonlocal waiting
        meter.count += 1
        if waiting is not None and sent * receivers - meter.count <= WINDOW * receivers // 2:
            waiting.set()
            waiting = None

    async def consume(channel: ClientChannel) -> None:
        async with channel.messages() as messages:
            async for message in messages:
                if message.event == BROADCAST_EVENT:
                    received()

    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        publisher = await (await stack.enter_async_context(connect(url))).join(TOPIC)
        for _ in range(receivers):
            socket = await stack.enter_async_context(connect(url))
            channel = socket.channel(TOPIC)
            if stream:
                nursery.start_soon(consume, channel)
            else:
                channel.on(BROADCAST_EVENT, received)
            await channel.join()
        end = trio.current_time() + 1.0 + duration
        started = False
        while trio.current_time() < end:
            if not started and trio.current_time() >= end - duration:
                started = True
                meter.start()
            if sent * receivers - meter.count >= WINDOW * receivers:
                waiting = trio.Event()
                with trio.move_on_after(5):
                    await waiting.wait()
                continue
            publisher.push_nowait("bcast", PAYLOAD)
            sent += 1
            if sent % 32 == 0:
                await trio.lowlevel.checkpoint()  # let the writer and readers run
        result = meter.result()
        nursery.cancel_scope.cancel()
    return result


SCENARIOS = {
    "rtt-1": lambda url, pid, d: _rtt(url, pid, d, 1),
    "rtt-64": lambda url, pid, d: _rtt(url, pid, d, 64),
    "deliver-on": lambda url, pid, d: _deliver(url, pid, d, 1, stream=False),
    "deliver-stream": lambda url, pid, d: _deliver(url, pid, d, 1, stream=True),
    "deliver-10": lambda url, pid, d: _deliver(url, pid, d, 10, stream=False),
}


def _start_server(core: int | None) -> tuple[subprocess.Popen[Any], int]:
    proc = spawn([sys.executable, "-m", "channels.cli", "serve", "bench.apps.channels_app:endpoint",
                  "--port", "0", "--log-level", "WARNING"], core=core, cwd=ROOT,
                 env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if m := re.search(r"serving on http://[\d.]+:(\d+)", line):
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    stop(proc)
    raise RuntimeError("the server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario (a fresh server each); the median is kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    two_cores = (os.cpu_count() or 1) >= 2
    if two_cores:
        os.sched_setaffinity(0, {1})
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "trio": trio.__version__, "pinned": two_cores},
        "duration_s": args.duration, "payload_bytes": len(json.dumps(PAYLOAD)),
        "scenarios": {}}
    for name in args.scenarios.split(","):
        runs = []
        for _ in range(args.repeat):
            proc, port = _start_server(0 if two_cores else None)
            try:
                url = f"ws://127.0.0.1:{port}/socket"
                runs.append(trio.run(SCENARIOS[name], url, proc.pid, args.duration))
            finally:
                stop(proc)
            print(f"{name:15} {json.dumps(runs[-1])}", flush=True)
        runs.sort(key=lambda run: run["ops_per_s"])
        results["scenarios"][name] = {**runs[len(runs) // 2],
                                      "runs_ops_per_s": [run["ops_per_s"] for run in runs]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
