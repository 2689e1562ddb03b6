"""What the Prometheus metrics cost on the hot paths (a benchmark, not a test):
``python -m bench.metrics_bench``.

In one process: two endpoints built the same way, one with metrics off and one with metrics
on, run the same work in alternating batches, and the CPU time per operation of the thread
doing it (``time.thread_time``) is compared as the median of the batches. Alternating cancels
most of the noise of a shared machine. Without ``--io`` each write only counts its bytes: the
kernel is left out, so the relative cost is an upper bound. With ``--io`` each write is a
``send()`` on a Unix socket drained by another thread (not measured), as in a real node (whose
reads and trio scheduling, also left out here, would add more).

- ``push→reply``: the server side of one client push: ``_on_frame`` (decode, rate limiter,
  route, mailbox) and the channel's ``handle_message`` (``handle_in`` → ``Reply.ok(payload)``,
  encode, frame, write).
- ``fan-out N``: one ``local_broadcast`` to N fastlane subscribers (one frame built, N writes).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import threading
import time
from typing import Any

import orjson
import trio

from bench.apps.channels_app import BenchChannel, BenchSocket
from channels import Endpoint
from channels.channel import ChannelProcess
from channels.serializer import serializer_for_vsn
from channels.socket import SocketSession


class _Sink:
    """Stands in for a Connection: takes the bytes and counts them (or sends them)."""

    #: With --io: the socket every sink sends on (its peer is drained by a thread).
    sock: socket.socket | None = None

    def __init__(self, n: int) -> None:
        self.peer = ("127.0.0.1", 40000 + n)
        self.max_buffer = 1 << 20
        self.on_overflow: Any = None
        self.active = True
        self.closed = False
        self.written = 0

    def write_nowait(self, data: bytes) -> None:
        if self.sock is not None:
            try:
                self.sock.send(data)
            except BlockingIOError:
                pass  # the drain fell behind: the system call was made all the same
        self.written += len(data)


def _start_io() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    _Sink.sock = ours

    def drain() -> None:
        while theirs.recv(1 << 20):
            pass

    threading.Thread(target=drain, daemon=True).start()


def _session(endpoint: Endpoint, n: int, topic: str) -> tuple[SocketSession, ChannelProcess]:
    serializer = serializer_for_vsn("2.0.0")
    assert serializer is not None
    session = SocketSession(endpoint, BenchSocket(endpoint), serializer, _Sink(n))  # type: ignore[arg-type]
    proc = ChannelProcess(session, BenchChannel(), topic, "1")
    proc.flush_join_buffer()
    session.state.add(topic, "1", proc)
    endpoint.pubsub.subscribe(topic, proc)
    return session, proc


def _endpoint(metrics: bool) -> Endpoint:
    endpoint = Endpoint({"/socket": BenchSocket})
    if metrics:
        endpoint.enable_metrics(0)  # instruments the hot paths; nothing is served here
    return endpoint


async def push_reply(endpoint: Endpoint, ops: int) -> float:
    session, proc = getattr(endpoint, "_bench_echo", None) or _session(endpoint, 0, "room:echo")
    endpoint._bench_echo = (session, proc)  # type: ignore[attr-defined]
    payload = {"body": "x" * 100, "n": 1}
    frame = orjson.dumps(["1", "2", "room:echo", "echo", payload]).decode()
    start = time.thread_time()
    for _ in range(ops):
        await session._on_frame(frame, False)
        await proc.handle_message(proc._mailbox.get_nowait())
    return (time.thread_time() - start) / ops


async def fanout(endpoint: Endpoint, n: int, ops: int) -> float:
    topic = f"room:fan{n}"
    if endpoint.pubsub.subscriber_count(topic) != n:
        for i in range(n):
            _session(endpoint, i, topic)
    payload = {"body": "x" * 100, "n": 1}
    start = time.thread_time()
    for _ in range(ops):
        await endpoint.pubsub.local_broadcast(topic, "msg", payload)
    return (time.thread_time() - start) / ops


async def compare(name: str, run: Any, batches: int) -> dict[str, Any]:
    off, on = _endpoint(False), _endpoint(True)
    await run(off)  # warm up both (and build their sessions)
    await run(on)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(batches):
        for metrics in ((False, True) if i % 2 == 0 else (True, False)):
            times[metrics].append(await run(on if metrics else off))
    t_off, t_on = statistics.median(times[False]), statistics.median(times[True])
    result = {"case": name, "off_us": round(t_off * 1e6, 3), "on_us": round(t_on * 1e6, 3),
              "overhead_pct": round(100 * (t_on - t_off) / t_off, 2)}
    counters = on.counters
    assert counters.handle_in is not None or name.startswith("fan-out")
    print(f"{name:>16}: off {result['off_us']:8.3f} µs  on {result['on_us']:8.3f} µs  "
          f"({result['overhead_pct']:+.2f}%)", flush=True)
    return result


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = [await compare("push→reply", lambda ep: push_reply(ep, args.echo_ops),
                             args.batches)]
    for n in args.fanout:
        ops = max(1, args.fanout_deliveries // n)
        results.append(await compare(f"fan-out {n:,}", lambda ep, n=n, ops=ops:
                                     fanout(ep, n, ops), args.batches))
    return results


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=21, help="batches per setting (median)")
    p.add_argument("--echo-ops", type=int, default=20_000, help="pushes per batch")
    p.add_argument("--fanout", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100, 1000, 10_000])
    p.add_argument("--fanout-deliveries", type=int, default=200_000,
                   help="deliveries per fan-out batch")
    p.add_argument("--io", action="store_true", help="writes are send() system calls")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    if args.io:
        _start_io()
    print(f"python {platform.python_version()}, {args.batches} alternating batches per "
          f"setting, {'send() per write' if args.io else 'no I/O'}")
    results = trio.run(main_async, args)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
