"""Soak and overload runs (not tests): ``python -m bench.soak [options]``.

**Soak**: thousands of connections, each joined to one of ``--topics`` topics, one publisher
per topic broadcasting ``--rate`` messages/s with a sequence number and a send timestamp,
``--churn`` connections/s closed (half with a close frame, half by dropping TCP) and replaced,
phoenix-style heartbeats every 30 s, for ``--minutes``. Reports the server's RSS slope, open
fds, publish→receive latency percentiles, lost and duplicated messages (sequence gaps and
repeats per subscriber, and the tail each live subscriber missed at the end).

**Overload**: the server burns ``--work-us`` of CPU per push (``SOAK_WORK_US``), so its
capacity is known: first measured closed-loop (``--pubs`` publishers, 4 pushes in flight
each), then offered open-loop at ``--factor`` (1.5) times it for ``--overload-seconds``. Every
push broadcasts to its topic (the publisher and one more subscriber). Reports the
publish→receive latency of what is delivered (overall and per 10 s of the run), replies by
status, pushes left without a reply, the server's RSS over time and CPU.

The server is ``bench/apps/soak_app.py`` under ``trio-channels serve``, pinned to core 0 with
``taskset``; this generator pins itself to core 1. Loopback only; every phase is bounded.
``--server-src DIR`` runs the server from another copy of ``channels/`` (e.g. an older
commit: ``git archive <rev> channels supervisor presence | tar -x -C DIR``) for comparison.
Results: printed, and ``bench/results/soak-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
MAIN_PY = ROOT / ".venv" / "bin" / "python"

UPGRADE = (b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: 127.0.0.1\r\n"
           b"upgrade: websocket\r\nconnection: Upgrade\r\n"
           b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
CLOSE_1000 = b"\x03\xe8"


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame with mask key 0 (the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Client:
    """A minimal Phoenix V2 JSON client over a raw TCP stream (the server never fragments)."""

    def __init__(self, stream: trio.SocketStream, on_message: Callable[[list[Any]], None]
                 ) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.on_message = on_message
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int, on_message: Callable[[list[Any]], None]) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(UPGRADE)
            head = bytearray()
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    raise ConnectionError("closed during the upgrade")
                head += chunk
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if not head.startswith(b"HTTP/1.1 101"):
            await trio.aclose_forcefully(stream)
            raise ConnectionError(bytes(head[:60]))
        client = cls(stream, on_message)
        client.buf += head[head.index(b"\r\n\r\n") + 4:]
        return client

    async def send(self, msg: list[Any]) -> None:
        await self.stream.send_all(client_frame(orjson.dumps(msg)))

    async def run(self) -> int:
        """Read until the connection ends; the close code (1006: no close frame)."""
        while True:
            code = self._parse()
            if code is not None:
                return code
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return 1006
            if not chunk:
                return 1006
            self.buf += chunk

    def _parse(self) -> int | None:
        buf = self.buf
        pos, n = 0, len(buf)
        try:
            while n - pos >= 2:
                length = buf[pos + 1] & 0x7F
                hdr = 2
                if length == 126:
                    if n - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                    hdr = 4
                elif length == 127:
                    if n - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    hdr = 10
                if n - pos < hdr + length:
                    break
                op = buf[pos] & 0x0F
                payload = bytes(buf[pos + hdr:pos + hdr + length])
                pos += hdr + length
                if op == 1:
                    self.on_message(orjson.loads(payload))
                elif op == 8:
                    self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                    return self.close_code
        finally:
            del buf[:pos]
        return None

    async def close(self, graceful: bool) -> None:
        if graceful:
            try:
                await self.stream.send_all(client_frame(CLOSE_1000, opcode=8))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass
        await trio.aclose_forcefully(self.stream)


class Histogram:
    """Latencies in log buckets (~2.5% wide), from 1 µs."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        i = int(math.log(max(seconds * 1e6, 1.0)) * 40)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.n += 1
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.n += other.n
        self.max = max(self.max, other.max)

    def pct(self, p: float) -> float:
        """The p-th percentile in milliseconds (upper edge of its bucket)."""
        if not self.n:
            return math.nan
        rank = p / 100 * self.n
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(math.exp((i + 1) / 40) / 1e3, self.max * 1e3)
        return self.max * 1e3

    def summary(self) -> dict[str, float]:
        return {"n": self.n, "p50_ms": self.pct(50), "p90_ms": self.pct(90),
                "p99_ms": self.pct(99), "p999_ms": self.pct(99.9), "max_ms": self.max * 1e3}


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, work_us: int, server_src: Path | None, log: Path
                 ) -> subprocess.Popen[Any]:
    env = dict(os.environ, SOAK_WORK_US=str(work_us))
    cwd = ROOT
    if server_src is not None:  # its channels/ first (python -m puts the cwd first)
        env["PYTHONPATH"] = f"{server_src}{os.pathsep}{ROOT}"
        cwd = server_src
    with open(log, "w") as out:  # the child has its own copy of the descriptor
        proc = procs.spawn([str(MAIN_PY), "-m", "channels.cli", "serve",
                            "bench.apps.soak_app:endpoint", "--host", "127.0.0.1", "--port",
                            str(port), "--log-level", "WARNING"],
                           core=0, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def run_delay(pid: int) -> float:
    """Seconds the server's main thread waited for a CPU while runnable (other processes on
    its core: the machine is shared), from /proc/<pid>/schedstat."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def server_sample(pid: int, t0: float) -> dict[str, float]:
    snap = procs.snapshot(pid)
    return {"t": round(snap["t"] - t0, 2), "rss_mib": round(snap["rss_kib"] / 1024, 2),
            "cpu_s": snap["cpu"], "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "run_delay_s": run_delay(pid)}


def busy(samples: list[dict[str, float]]) -> dict[str, float]:
    """Server CPU and time waiting for a CPU while runnable, % of wall time between the first
    and last sample."""
    if len(samples) < 2:
        return {"cpu_pct": math.nan, "waiting_for_cpu_pct": math.nan}
    a, b = samples[0], samples[-1]
    wall = max(b["t"] - a["t"], 1e-9)
    return {"cpu_pct": round(100 * (b["cpu_s"] - a["cpu_s"]) / wall, 1),
            "waiting_for_cpu_pct": round(100 * (b["run_delay_s"] - a["run_delay_s"]) / wall, 1)}


def slope_per_minute(samples: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of ``key`` per minute."""
    if len(samples) < 3:
        return math.nan
    xs = [s["t"] for s in samples]
    ys = [s[key] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den \
        else math.nan


# -- soak --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Sub:
    topic: str
    last: int = -1
    client: Client | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class SoakStats:
    latency: Histogram = field(default_factory=Histogram)
    delivered: int = 0
    lost: int = 0
    dup: int = 0
    published: int = 0
    replies: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    churned: int = 0
    connect_errors: int = 0
    unexpected_closes: dict[int, int] = field(default_factory=dict)


async def soak(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    stats = SoakStats()
    topics = [f"room:t{i}" for i in range(args.topics)]
    last_pub = dict.fromkeys(topics, -1)
    subs: set[Sub] = set()
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()

    def on_sub_message(sub: Sub) -> Callable[[list[Any]], None]:
        def handle(m: list[Any]) -> None:
            if m[3] != "msg":
                return
            payload = m[4]
            s = payload["s"]
            stats.latency.add(time.monotonic() - payload["t"])
            stats.delivered += 1
            if sub.last >= 0:
                if s == sub.last + 1:
                    pass
                elif s <= sub.last:
                    stats.dup += 1
                    return
                else:
                    stats.lost += s - sub.last - 1
            sub.last = s
        return handle

    async def run_sub(sub: Sub, *, task_status: trio.TaskStatus[None]) -> None:
        with sub.scope:
            try:
                client = await Client.open(port, on_sub_message(sub))
                await client.send(["1", "1", sub.topic, "phx_join", {}])
            except (OSError, ConnectionError, trio.BrokenResourceError):
                stats.connect_errors += 1
                task_status.started()
                return
            sub.client = client
            subs.add(sub)
            stats.opened += 1
            task_status.started()
            try:
                code = await client.run()
                stats.unexpected_closes[code] = stats.unexpected_closes.get(code, 0) + 1
            finally:
                subs.discard(sub)
        if sub.scope.cancelled_caught and sub.client is not None:
            await sub.client.close(graceful=random.random() < 0.5)

    async def publisher(topic: str) -> None:
        def on_reply(m: list[Any]) -> None:
            if m[3] == "phx_reply" and m[1] != "join":
                status = m[4]["status"]
                stats.replies[status] = stats.replies.get(status, 0) + 1
        client = await Client.open(port, on_reply)
        await client.send(["1", "join", topic, "phx_join", {}])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await trio.sleep(1.0 + random.random())  # after the subscribers joined
            interval = 1.0 / args.rate
            seq = 0
            next_at = trio.current_time()
            while True:
                next_at += interval
                await trio.sleep_until(next_at)
                await client.send(["1", str(seq), topic, "pub",
                                   {"s": seq, "t": time.monotonic()}])
                last_pub[topic] = seq
                stats.published += 1
                seq += 1

    async def heartbeat(client: Client, ref: str) -> None:
        try:
            await client.send([None, ref, "phoenix", "heartbeat", {}])
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def heartbeats() -> None:
        n = 0
        async with trio.open_nursery() as wave:
            while True:
                await trio.sleep(30.0)
                # One task per send: a wave that awaited each send in turn took a scheduler
                # round per subscriber, 25 s and more for 3,000 of them with this generator
                # busy, and the subscribers at the end of the list crossed the server's 60 s
                # idle_timeout (closed 1002: the server was right).
                for sub in list(subs):  # publishers send all the time: no heartbeat needed
                    n += 1
                    if sub.client is not None:
                        wave.start_soon(heartbeat, sub.client, f"hb{n}")

    async def sampler() -> None:
        while True:
            sample = server_sample(pid, t0)
            sample.update(conns=len(subs), delivered=stats.delivered, lost=stats.lost)
            samples.append(sample)
            await trio.sleep(5.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for i in range(args.conns):
            await nursery.start(run_sub, Sub(topics[i % len(topics)]))
        log(f"soak: {len(subs)} subscribers joined in {time.monotonic() - t0:.1f}s")
        pubs_scope = trio.CancelScope()

        async def publishers() -> None:
            with pubs_scope:
                async with trio.open_nursery() as p:
                    for topic in topics:
                        p.start_soon(publisher, topic)
        nursery.start_soon(publishers)
        nursery.start_soon(heartbeats)
        end = trio.current_time() + args.minutes * 60
        churn_every = 1.0 / args.churn if args.churn else math.inf
        next_report = trio.current_time() + 30
        while trio.current_time() < end:
            await trio.sleep(min(churn_every, 1.0))
            if args.churn and subs:
                victim = random.choice(list(subs))
                victim.scope.cancel()
                stats.churned += 1
                await nursery.start(run_sub, Sub(victim.topic))
            if trio.current_time() >= next_report:
                next_report += 30
                s = samples[-1]
                log(f"  t={s['t']:.0f}s rss={s['rss_mib']:.1f} MiB fds={s['fds']:.0f} "
                    f"conns={len(subs)} delivered={stats.delivered} lost={stats.lost} "
                    f"dup={stats.dup} p99={stats.latency.pct(99):.2f} ms")
        pubs_scope.cancel()
        await trio.sleep(3.0)  # in-flight broadcasts arrive
        tail_lost = sum(last_pub[s.topic] - s.last for s in subs if s.last >= 0)
        live = len(subs)
        samples.append(server_sample(pid, t0))
        nursery.cancel_scope.cancel()
    warm = [s for s in samples if s["t"] >= samples[-1]["t"] * 0.2]
    return {
        "connections": args.conns, "topics": args.topics, "rate_per_topic": args.rate,
        "churn_per_s": args.churn, "minutes": args.minutes,
        "published": stats.published, "delivered": stats.delivered,
        "lost_gaps": stats.lost, "lost_tail": tail_lost, "duplicates": stats.dup,
        "replies": stats.replies, "opened": stats.opened, "churned": stats.churned,
        "connect_errors": stats.connect_errors,
        "server_closed": {str(k): v for k, v in stats.unexpected_closes.items()},
        "live_at_end": live,
        "latency": stats.latency.summary(),
        "rss_mib": {"start": warm[0]["rss_mib"], "end": samples[-1]["rss_mib"],
                    "max": max(s["rss_mib"] for s in samples),
                    "slope_mib_per_min_after_warmup": slope_per_minute(warm, "rss_mib")},
        "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples)},
        "server": busy(samples),
        "samples": samples,
    }


# -- overload ----------------------------------------------------------------------------------


@dataclass
class Pub:
    topic: str
    client: Client | None = None
    outstanding: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    freed: trio.Event = field(default_factory=trio.Event)


@dataclass
class LoadStats:
    replies: dict[str, int] = field(default_factory=dict)
    ok_count: int = 0
    reply_latency: dict[str, Histogram] = field(default_factory=dict)
    delivery: Histogram = field(default_factory=Histogram)
    by_window: dict[int, Histogram] = field(default_factory=dict)
    sent: int = 0
    t0: float = 0.0


async def overload(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    stats = LoadStats()
    pubs = [Pub(f"load:{i}") for i in range(args.pubs)]
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    recording = [False]

    def on_pub(pub: Pub) -> Callable[[list[Any]], None]:
        def handle(m: list[Any]) -> None:
            if m[3] != "phx_reply" or m[1] == "join":
                return
            sent = pub.outstanding.pop(m[1], None)
            if sent is None:
                return
            p = m[4]
            status = p["status"] if p["status"] == "ok" else str(p["response"].get("reason"))
            if status == "ok":
                stats.ok_count += 1
            if recording[0]:
                stats.replies[status] = stats.replies.get(status, 0) + 1
                h = stats.reply_latency.get(status)
                if h is None:
                    h = stats.reply_latency[status] = Histogram()
                h.add(time.monotonic() - sent)
            pub.freed.set()
        return handle

    def on_sub(m: list[Any]) -> None:
        if m[3] != "msg" or not recording[0]:
            return
        sent = m[4]["t"]
        latency = time.monotonic() - sent
        stats.delivery.add(latency)
        window = int((sent - stats.t0) // 10)
        h = stats.by_window.get(window)
        if h is None:
            h = stats.by_window[window] = Histogram()
        h.add(latency)

    async with trio.open_nursery() as nursery:
        async def sampler() -> None:
            while True:
                samples.append(server_sample(pid, t0))
                await trio.sleep(2.0)
        nursery.start_soon(sampler)
        subs: list[Client] = []
        for pub in pubs:
            pub.client = await Client.open(port, on_pub(pub))
            await pub.client.send(["1", "join", pub.topic, "phx_join", {}])
            nursery.start_soon(pub.client.run)
            sub = await Client.open(port, on_sub)
            await sub.send(["1", "join", pub.topic, "phx_join", {}])
            nursery.start_soon(sub.run)
            subs.append(sub)

        async def heartbeats() -> None:  # subscribers only listen: keep them under idle_timeout
            n = 0
            while True:
                await trio.sleep(20.0)
                for sub in subs:  # one task per send, as in the soak
                    n += 1
                    nursery.start_soon(sub.send, [None, f"hb{n}", "phoenix", "heartbeat", {}])
        nursery.start_soon(heartbeats)
        await trio.sleep(1.0)

        async def push(pub: Pub) -> None:
            assert pub.client is not None
            ref = str(pub.seq)
            pub.seq += 1
            now = time.monotonic()
            pub.outstanding[ref] = now
            stats.sent += 1
            await pub.client.send(["1", ref, pub.topic, "pub", {"t": now}])

        # 1. capacity: closed loop, 4 pushes in flight per publisher
        stop = [False]

        async def closed_loop(pub: Pub) -> None:
            while not stop[0]:
                if len(pub.outstanding) >= 4:
                    pub.freed = trio.Event()
                    await pub.freed.wait()
                    continue
                await push(pub)

        async with trio.open_nursery() as loops:
            for pub in pubs:
                loops.start_soon(closed_loop, pub)
            await trio.sleep(3.0)  # warm-up
            ok0, s0 = stats.ok_count, server_sample(pid, t0)
            m0 = time.monotonic()
            await trio.sleep(args.capacity_seconds)
            capacity = (stats.ok_count - ok0) / (time.monotonic() - m0)
            cap_busy = busy([s0, server_sample(pid, t0)])
            cap_cpu = cap_busy["cpu_pct"]
            stop[0] = True
            for pub in pubs:
                pub.freed.set()
        with trio.move_on_after(15):
            while any(p.outstanding for p in pubs):  # noqa: ASYNC110 (a bounded poll)
                await trio.sleep(0.1)
        log(f"overload: capacity {capacity:,.0f} pushes/s (server CPU {cap_cpu:.0f}%, waiting "
            f"for a CPU {cap_busy['waiting_for_cpu_pct']}%), "
            f"offering {args.factor} x = {capacity * args.factor:,.0f}/s")

        # 2. open loop at factor x capacity
        rate = capacity * args.factor / len(pubs)
        behind = [0.0]
        start = trio.current_time()
        end = start + args.overload_seconds
        stats.sent = 0
        stats.t0 = time.monotonic()
        recording[0] = True
        first_sample = len(samples)
        samples.append(server_sample(pid, t0))

        async def open_loop(pub: Pub, phase: float) -> None:
            next_at = start + phase
            while next_at < end:
                await trio.sleep_until(next_at)
                await push(pub)  # blocks while TCP pushes back
                behind[0] = max(behind[0], trio.current_time() - next_at)
                next_at += 1.0 / rate

        async with trio.open_nursery() as senders:
            for pub in pubs:
                senders.start_soon(open_loop, pub, random.random() / rate)
        offered_end = time.monotonic()
        samples.append(server_sample(pid, t0))
        load_busy = busy(samples[first_sample:])
        # every push must get a reply: wait (bounded) for the rest
        with trio.move_on_after(args.reply_wait):
            while any(p.outstanding for p in pubs):  # noqa: ASYNC110 (a bounded poll)
                await trio.sleep(0.1)
        unanswered = sum(len(p.outstanding) for p in pubs)
        waited = time.monotonic() - offered_end
        recording[0] = False
        samples.append(server_sample(pid, t0))
        nursery.cancel_scope.cancel()
    load_samples = samples[first_sample:]
    return {
        "work_us": args.work_us, "publishers": args.pubs, "factor": args.factor,
        "capacity_per_s": capacity, "capacity_server": cap_busy,
        "offered_per_s": capacity * args.factor, "seconds": args.overload_seconds,
        "sent": stats.sent, "sent_per_s": stats.sent / args.overload_seconds,
        "max_behind_schedule_s": behind[0],
        "replies": stats.replies, "unanswered": unanswered,
        "waited_for_replies_s": waited,
        "reply_latency": {k: h.summary() for k, h in stats.reply_latency.items()},
        "delivery_latency": stats.delivery.summary(),
        "delivery_p99_ms_by_10s": {str(k * 10): round(h.pct(99), 1)
                                   for k, h in sorted(stats.by_window.items())},
        "server": load_busy,
        "rss_mib": {"start": load_samples[0]["rss_mib"] if load_samples else math.nan,
                    "end": samples[-1]["rss_mib"],
                    "max": max(s["rss_mib"] for s in load_samples) if load_samples else math.nan,
                    "slope_mib_per_min": slope_per_minute(load_samples, "rss_mib")},
        "samples": load_samples,
    }



def log(msg: str) -> None:
    print(msg, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="soak duration")
    ap.add_argument("--conns", type=int, default=3000, help="soak subscribers")
    ap.add_argument("--topics", type=int, default=30)
    ap.add_argument("--rate", type=float, default=10.0, help="broadcasts/s per topic")
    ap.add_argument("--churn", type=float, default=20.0, help="connections replaced per second")
    ap.add_argument("--work-us", type=int, default=1000, help="overload: CPU per push")
    ap.add_argument("--pubs", type=int, default=100, help="overload: publisher connections")
    ap.add_argument("--factor", type=float, default=1.5, help="overload: x capacity")
    ap.add_argument("--capacity-seconds", type=float, default=10.0)
    ap.add_argument("--overload-seconds", type=float, default=120.0)
    ap.add_argument("--reply-wait", type=float, default=30.0,
                    help="overload: how long to wait for the last replies")
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--server-src", type=Path, help="run the server from this copy of the "
                    "sources (a directory with channels/, supervisor/, presence/)")
    ap.add_argument("--label", default="", help="stored with the results")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.conns + 200 > hard // 2:
        sys.exit(f"--conns {args.conns} needs about {2 * args.conns + 400} open files "
                 f"(hard limit {hard}); lower it")
    os.sched_setaffinity(0, {1})
    outdir = args.out / time.strftime("soak-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"label": args.label, "server_src": str(args.server_src or ROOT),
                               "load_average": os.getloadavg()}
    try:
        if not args.skip_soak:
            port = free_port()
            server = start_server(port, 0, args.server_src, outdir / "soak-server.log")
            try:
                results["soak"] = trio.run(soak, args, port, server.pid)
            finally:
                procs.stop(server)
            print_soak(results["soak"])
        if not args.skip_overload:
            port = free_port()
            server = start_server(port, args.work_us, args.server_src,
                                  outdir / "overload-server.log")
            try:
                results["overload"] = trio.run(overload, args, port, server.pid)
            finally:
                procs.stop(server)
            print_overload(results["overload"])
    finally:
        procs.stop_all()
        (outdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        log(f"results: {outdir}/results.json")


def print_soak(r: dict[str, Any]) -> None:
    lat, rss, fds = r["latency"], r["rss_mib"], r["fds"]
    log(f"""
soak: {r['connections']} connections on {r['topics']} topics, {r['rate_per_topic']}
broadcasts/s per topic, {r['churn_per_s']} connections/s replaced, {r['minutes']} min
  published {r['published']:,}, delivered {r['delivered']:,}; lost {r['lost_gaps']} (gaps) +
  {r['lost_tail']} (tail), duplicated {r['duplicates']}; replies {r['replies']}
  connections opened {r['opened']:,}, churned {r['churned']:,}, connect errors
  {r['connect_errors']}, closed by the server {r['server_closed']}, live at end
  {r['live_at_end']}
  latency ms: p50 {lat['p50_ms']:.2f} p90 {lat['p90_ms']:.2f} p99 {lat['p99_ms']:.2f}
  p99.9 {lat['p999_ms']:.2f} max {lat['max_ms']:.1f}
  server RSS MiB: {rss['start']} -> {rss['end']} (max {rss['max']}), slope after warm-up
  {rss['slope_mib_per_min_after_warmup']:+.2f} MiB/min; fds {fds['start']} -> {fds['end']}
  (max {fds['max']}); server CPU {r['server']['cpu_pct']}%, waiting for a CPU
  {r['server']['waiting_for_cpu_pct']}%""")


def print_overload(r: dict[str, Any]) -> None:
    d, rss = r["delivery_latency"], r["rss_mib"]
    log(f"""
overload: capacity {r['capacity_per_s']:,.0f} pushes/s ({r['work_us']} µs CPU each), offered
{r['offered_per_s']:,.0f}/s ({r['factor']}x) for {r['seconds']:.0f}s over {r['publishers']}
connections; sent {r['sent']:,} ({r['sent_per_s']:,.0f}/s; at most {r['max_behind_schedule_s']:.1f}s
behind schedule)
  replies {r['replies']}; unanswered {r['unanswered']} (after waiting
  {r['waited_for_replies_s']:.1f}s)
  delivered broadcasts, publish->receive ms: p50 {d['p50_ms']:.0f} p99 {d['p99_ms']:.0f}
  max {d['max_ms']:.0f} (n={d['n']:,}); p99 per 10 s of send time:
  {r['delivery_p99_ms_by_10s']}
  reply latency ms: { {k: round(v['p99_ms']) for k, v in r['reply_latency'].items()} } (p99)
  server RSS MiB {rss['start']} -> {rss['end']} (max {rss['max']}, slope
  {rss['slope_mib_per_min']:+.2f} MiB/min); server CPU {r['server']['cpu_pct']}%, waiting
  for a CPU {r['server']['waiting_for_cpu_pct']}%""")


if __name__ == "__main__":
    main()
