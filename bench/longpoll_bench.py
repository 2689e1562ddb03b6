"""LongPoll next to WebSocket (a benchmark, not a test): ``python -m bench.longpoll_bench``.

One trio-channels server process (``bench.apps.channels_app``: ``echo`` replies with its
payload, ``bcast`` broadcasts it) pinned to core 0; this process generates the load on core 1
with lean clients of its own for both transports (raw sockets: HTTP/1.1 keep-alive for
LongPoll, like phoenix.js with one poll always waiting and one POST at a time; masked
frames for WebSocket), so both pay the same small client cost. Scenarios (each after a 1 s
warm-up, ``--duration`` seconds):

* ``rtt-1`` / ``rtt-50``: 1 or 50 clients, each with one ``echo`` push in flight: round
  trips/s (a LongPoll round trip is a POST answered 200 plus the poll that delivers the
  reply, then the next poll);
* ``deliver-100``: 100 clients joined to one topic, one more publishing ``bcast`` with at
  most 1,000 broadcasts not yet received by everyone: deliveries/s (and, for LongPoll, the
  messages a poll answer carried);
* ``idle`` (``--idle`` clients, default 2,000): each joined to one channel, doing nothing;
  server RSS per client. For LongPoll twice: the sessions alone (the clients closed their
  connections; a session lives on for 15 s), then with each client's poll waiting (what
  phoenix.js always has: a connection and its request).

Reports operations/s, the server's CPU per 1,000 operations (the comparable figure on a
shared machine) and how busy both processes were.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench.apps.common import PAYLOAD, TOPIC
from bench.procs import cpu_seconds, memory_kib, spawn, stop

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 1000


class Meter:
    """Operations and CPU (this process, the server) over the measured window."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.count = 0

    def start(self) -> None:
        self.count0 = self.count
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.server0 = cpu_seconds(self.server_pid)

    def result(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        done = max(self.count - self.count0, 1)
        server = cpu_seconds(self.server_pid) - self.server0
        return {
            "ops_per_s": round(done / elapsed),
            "server_cpu_ms_per_1000": round(server / done * 1e6, 1),
            "server_cpu_pct": round(server / elapsed * 100),
            "client_cpu_pct": round((time.process_time() - self.cpu0) / elapsed * 100),
        }


# -- lean clients -------------------------------------------------------------------------------


class HTTPConn:
    """One keep-alive HTTP/1.1 connection: a request at a time, Content-Length answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def request(self, method: str, target: str, body: bytes = b"",
                      ctype: str = "application/x-ndjson") -> bytes:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.buf = b""
        head = f"{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        if method == "POST":
            head += f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
        await self.stream.send_all(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        head_b, _, rest = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head_b, re.I)
        length = int(m.group(1)) if m else 0
        while len(rest) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed")
            rest += data
        self.buf = rest[length:]
        return rest[:length]

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


class LongPollClient:
    """phoenix.js's LongPoll, minus the browser: a poll always waiting, one POST at a time."""

    def __init__(self, port: int, on_message: Any) -> None:
        self.port = port
        self.poller = HTTPConn(port)
        self.poster = HTTPConn(port)
        self.on_message = on_message
        self.target = ""
        self.polls = 0

    async def connect(self) -> None:
        body = json.loads(await self.poller.request("GET", "/socket/longpoll?vsn=2.0.0"))
        assert body["status"] == 410, body
        self.target = f"/socket/longpoll?vsn=2.0.0&token={body['token']}"

    async def post(self, *frames: bytes) -> None:
        answer = await self.poster.request("POST", self.target, b"\n".join(frames))
        assert answer == b'{"status":200}', answer

    async def poll_forever(self) -> None:
        while True:
            body = json.loads(await self.poller.request("GET", self.target))
            self.polls += 1
            for m in body.get("messages") or ():
                self.on_message(json.loads(m))

    async def aclose(self) -> None:
        await self.poller.aclose()
        await self.poster.aclose()


class WSClient:
    """A WebSocket client: masked text frames out, unmasked frames in."""

    def __init__(self, port: int, on_message: Any) -> None:
        self.port = port
        self.on_message = on_message
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        await self.stream.send_all(
            f"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\n"
            f"sec-websocket-version: 13\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self.stream.receive_some(65536)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    async def post(self, *frames: bytes) -> None:
        out = []
        for data in frames:
            n = len(data)
            if n < 126:
                hdr = bytes((0x81, 0x80 | n))
            elif n < 65536:
                hdr = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
            else:
                hdr = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
            out.append(hdr + b"\0\0\0\0" + data)  # a zero mask leaves the bytes as they are
        assert self.stream is not None
        await self.stream.send_all(b"".join(out))

    async def poll_forever(self) -> None:
        assert self.stream is not None
        buf = self.buf
        while True:
            while True:
                if len(buf) < 2:
                    break
                n = buf[1] & 0x7F
                start = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, start = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, start = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < start + n:
                    break
                payload, buf = buf[start:start + n], buf[start + n:]
                self.on_message(json.loads(payload))
            data = await self.stream.receive_some(65536)
            if not data:
                return
            buf += data

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


def frame(ref: str, event: str, payload: Any, topic: str = TOPIC) -> bytes:
    return json.dumps(["1", ref, topic, event, payload], separators=(",", ":")).encode()


Client = LongPollClient | WSClient


async def joined(kind: str, port: int, nursery: trio.Nursery, on_message: Any,
                 topic: str = TOPIC) -> Client:
    """A connected client, joined to ``topic``, its reader running in ``nursery``."""
    got = trio.Event()

    def handle(m: list[Any]) -> None:
        if m[3] == "phx_reply" and m[1] == "1":
            got.set()
        else:
            on_message(m)

    client: Client = LongPollClient(port, handle) if kind == "longpoll" else \
        WSClient(port, handle)
    await client.connect()
    nursery.start_soon(client.poll_forever)
    await client.post(frame("1", "phx_join", {}, topic))
    with trio.fail_after(30):
        await got.wait()
    return client


# -- scenarios ------------------------------------------------------------------------------------


async def rtt(kind: str, port: int, pid: int, clients: int, duration: float) -> dict[str, Any]:
    meter = Meter(pid)
    latencies: list[float] = []
    measuring = False
    async with trio.open_nursery() as nursery:
        end = trio.current_time() + 1.0 + duration + 5.0

        async def one(i: int) -> None:
            replies: dict[str, trio.Event] = {}

            def on_message(m: list[Any]) -> None:
                if m[3] == "phx_reply" and m[1] in replies:
                    replies[m[1]].set()

            client = await joined(kind, port, nursery, on_message, f"{TOPIC}:{i}")
            n = 0
            while trio.current_time() < end:
                n += 1
                ref = str(n + 1)
                event = replies[ref] = trio.Event()
                t = time.perf_counter()
                await client.post(frame(ref, "echo", PAYLOAD, f"{TOPIC}:{i}"))
                await event.wait()
                del replies[ref]
                meter.count += 1
                if measuring:
                    latencies.append(time.perf_counter() - t)

        for i in range(clients):
            nursery.start_soon(one, i)
        while meter.count < clients:  # noqa: ASYNC110 - everyone joined and answered once
            await trio.sleep(0.05)
        await trio.sleep(1.0)
        measuring = True
        meter.start()
        await trio.sleep(duration)
        result = meter.result()
        nursery.cancel_scope.cancel()
    latencies.sort()
    result["p50_ms"] = round(statistics.median(latencies) * 1000, 2)
    result["p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 2)
    return result


async def deliver(kind: str, port: int, pid: int, receivers: int,
                  duration: float) -> dict[str, Any]:
    meter = Meter(pid)
    received: dict[int, int] = {}
    complete = 0  # broadcasts every receiver got
    progress = trio.Event()

    def counter(m: list[Any]) -> None:
        nonlocal complete
        if m[3] == "msg":
            meter.count += 1
            n = m[4]["n"]
            got = received[n] = received.get(n, 0) + 1
            if got == receivers:
                del received[n]
                complete += 1
                progress.set()

    async with trio.open_nursery() as nursery:
        clients = [await joined(kind, port, nursery, counter) for _ in range(receivers)]
        publisher = await joined(kind, port, nursery, lambda m: None)
        sent = 0

        async def publish(until: float) -> None:
            nonlocal sent, progress
            while trio.current_time() < until:
                while sent - complete >= WINDOW:  # at most WINDOW not yet everywhere
                    progress = trio.Event()
                    await progress.wait()
                batch = [frame("p", "bcast", {**PAYLOAD, "n": sent + i}) for i in range(20)]
                sent += len(batch)
                await publisher.post(*batch)

        await publish(trio.current_time() + 1.0)
        polls = sum(c.polls for c in clients if isinstance(c, LongPollClient))
        meter.start()
        await publish(trio.current_time() + duration)
        result = meter.result()
        if kind == "longpoll":  # how many messages a poll's answer carried
            polls = sum(c.polls for c in clients if isinstance(c, LongPollClient)) - polls
            result["messages_per_poll"] = round((meter.count - meter.count0) / max(polls, 1), 1)
        nursery.cancel_scope.cancel()
    return result


async def idle(kind: str, port: int, pid: int, n: int) -> dict[str, Any]:
    before = memory_kib(pid)["VmRSS"]
    result: dict[str, Any] = {"clients": n}
    if kind == "longpoll":
        # first the sessions alone (joined, then the clients closed their connections; a
        # session lives 15 s after its last poll), then each with a waiting poll
        clients = []
        for i in range(n):
            c = LongPollClient(port, lambda m: None)
            await c.connect()
            await c.post(frame("1", "phx_join", {}))
            while not await _polled_join(c):
                pass
            await c.aclose()
            clients.append(c)
            if i % 200 == 0:
                await trio.lowlevel.checkpoint()
        await trio.sleep(1.0)
        result["rss_kib_per_session"] = round((memory_kib(pid)["VmRSS"] - before) / n, 1)
    async with trio.open_nursery() as nursery:
        if kind == "longpoll":
            for c in clients:
                nursery.start_soon(c.poll_forever)
        else:
            for i in range(n):
                await joined(kind, port, nursery, lambda m: None)
                if i % 200 == 0:
                    await trio.lowlevel.checkpoint()
        await trio.sleep(2.0)
        result["rss_kib_per_client"] = round((memory_kib(pid)["VmRSS"] - before) / n, 1)
        nursery.cancel_scope.cancel()
    return result


async def _polled_join(c: LongPollClient) -> bool:
    body = json.loads(await c.poller.request("GET", c.target))
    return any(json.loads(m)[3] == "phx_reply" for m in body.get("messages") or ())


# -- running it -----------------------------------------------------------------------------------


def start_server(core: int | None) -> tuple[subprocess.Popen[Any], int]:
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


SCENARIOS = ("rtt-1", "rtt-50", "deliver-100", "idle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--transports", default="websocket,longpoll")
    parser.add_argument("--idle", type=int, default=2000, help="clients in the idle scenario")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case (a fresh server each); the median ops/s is kept")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    two_cores = (os.cpu_count() or 1) >= 2
    if two_cores:
        os.sched_setaffinity(0, {1})
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "load": os.getloadavg(),
                                           "python": platform.python_version()}}
    for scenario in args.scenarios.split(","):
        for kind in args.transports.split(","):
            runs = []
            for _ in range(args.repeat):
                proc, port = start_server(0 if two_cores else None)
                try:
                    if scenario.startswith("rtt-"):
                        runs.append(trio.run(rtt, kind, port, proc.pid, int(scenario[4:]),
                                             args.duration))
                    elif scenario.startswith("deliver-"):
                        runs.append(trio.run(deliver, kind, port, proc.pid,
                                             int(scenario[8:]), args.duration))
                    else:
                        runs.append(trio.run(idle, kind, port, proc.pid, args.idle))
                finally:
                    stop(proc)
            key = "rss_kib_per_client" if scenario == "idle" else "ops_per_s"
            runs.sort(key=lambda r: r[key])
            results[f"{scenario} {kind}"] = {**runs[len(runs) // 2], "runs": [r[key] for r in runs]}
            print(f"{scenario:12} {kind:9} {json.dumps(results[f'{scenario} {kind}'])}",
                  flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
