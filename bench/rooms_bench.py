"""Rooms benchmark (not a test): ``python -m bench.rooms_bench [--quick] [--scenarios ...]``.

Measures the rooms layer (channels/rooms.py, channels/placement.py):

* ``local``: ``rooms.call`` round trips to an active room in one process (no network), one
  caller and 50 concurrent callers; ``rooms.cast`` throughput.
* ``cross``: the room on node A, calls from node B through a private redis-server: p50/p99
  latency and calls/s at concurrency 1 and 50, and each process's CPU.
* ``activate``: activations per second of distinct keys, memory store and Redis store.
* ``memory``: RSS per idle room at 10,000 rooms (and tracemalloc's count, by line).
* ``failover``: kill -9 of the node holding a room that ticks at 20 Hz; time until the other
  node (which called the room once) sees the next tick, for each lease in ``--leases``.
* ``tick``: a room ticking at 20 Hz broadcasting ~1 KB to 1,000 WebSocket subscribers; the
  server's CPU, deliveries/s and whether ticks stay on schedule; against the same broadcast
  from a plain service (no room), and with the Redis adapter.

This module is also the app under benchmark (``trio-channels serve bench.rooms_bench:endpoint``)
and the subscriber load (``--child clients``). With ``BENCH_ROOMS_CONTROL=1`` a node runs a small
driver service that reads JSON commands on stdin and prints ``BENCH {json}`` replies on stdout:
the orchestrator drives the nodes through it (no HTTP). Every process is pinned or bounded,
every loop bounded in count and time; children die with the orchestrator (bench/procs.py).
The machine may be shared: before each repetition the bench waits (``--quiet-wait``, 180 s at
most) for it to be less than 30% busy, and records what other processes used meanwhile.
Results: the tables on stdout, everything in ``bench/results/rooms-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import gc
import itertools
import json
import os
import platform
import queue
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from channels import CallbackSubscriber, Channel, Endpoint, PubSub, Room, Rooms, Socket

ROOT = Path(__file__).resolve().parents[1]
APP = "bench.rooms_bench:endpoint"
PYSPY = ROOT / "bench" / ".venv" / "bin" / "py-spy"
SERVER_CORE = 0
LOAD_CORE = 1
#: What the child processes import from: a copy of the runtime made at the start of the run
#: (``--live``: the working tree), so that edits landing mid-run cannot mix versions.
SRC = ROOT
SOURCE_DIRS = ("channels", "supervisor", "presence", "bench/__init__.py", "bench/procs.py",
               "bench/report.py", "bench/rooms_bench.py")
MARK = "BENCH "
RESULT = "RESULT "


# =============================================================================================
# The app under benchmark
# =============================================================================================

def _players(n: int) -> list[dict[str, Any]]:
    return [{"id": f"player-{i:03d}", "x": 100.25 + i, "y": 200.5 + i, "hp": 100, "dir": "left"}
            for i in range(n)]


#: ~1 KB of game state: the tick broadcast's payload (the JSON frame is ~1.1 KB).
PLAYERS = _players(15)
STATE_MIN_BYTES = 900  # a received frame this long or longer is a state broadcast


class EchoRoom(Room):
    """Replies with the message; counts casts (``"casts"`` returns the count)."""

    name = "echo"
    idle_timeout = None

    async def init(self) -> None:
        self.casts = 0

    async def handle_call(self, message: Any) -> Any:
        if message == "casts":
            return self.casts
        return message

    async def handle_cast(self, message: Any) -> None:
        self.casts += 1


class IdleRoom(Room):
    """A room with the defaults (idle_timeout 300 s, no snapshot): what an idle room costs."""

    name = "idle"

    async def init(self) -> None:
        self.n = 0

    async def handle_call(self, message: Any) -> Any:
        self.n += 1
        return self.n


class TickRoom(Room):
    """Ticks at ``BENCH_ROOMS_TICK_HZ`` (20) from activation on, broadcasting ~1 KB of state to
    ``game:<key>``; ``"stats"`` returns ticks, overruns and how late ticks were handled."""

    name = "tick"
    idle_timeout = None
    hz = float(os.environ.get("BENCH_ROOMS_TICK_HZ", "20"))

    async def init(self) -> None:
        self.late: list[float] = []
        self.node = self.rooms.node_name
        self.topic = f"game:{self.key}"
        self.ref = self.interval(1 / self.hz, "tick")

    async def handle_info(self, message: Any) -> None:
        if message != "tick":
            return
        ref = self.ref
        # _tick advanced ref.due before calling us: this tick was due at due - period.
        if len(self.late) < 1_000_000:
            self.late.append(trio.current_time() - (ref.due - ref.period))
        await self.broadcast(self.topic, "state", {
            "tick": ref.ticks, "node": self.node, "token": self.token,
            "t": time.monotonic(), "players": PLAYERS})

    async def handle_call(self, message: Any) -> Any:
        late = sorted(self.late)
        return {"node": self.node, "token": self.token, "ticks": self.ref.ticks,
                "overruns": self.ref.overruns, "hz": self.hz, **_late_stats(late)}


def _late_stats(late: list[float]) -> dict[str, Any]:
    if not late:
        return {}
    return {"late_p50_ms": round(_pct(late, 0.5) * 1000, 3),
            "late_p99_ms": round(_pct(late, 0.99) * 1000, 3),
            "late_max_ms": round(late[-1] * 1000, 3)}


ROOM_CLASSES: dict[str, type[Room]] = {"echo": EchoRoom, "idle": IdleRoom, "tick": TickRoom}


class GameChannel(Channel):
    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None


class BenchSocket(Socket):
    channels = {"game:*": GameChannel}
    # The subscriber load sends no heartbeats while it counts frames.
    idle_timeout = 600.0


rooms = Rooms(EchoRoom, IdleRoom, TickRoom,
              lease=float(os.environ.get("BENCH_ROOMS_LEASE", "5")))
endpoint = Endpoint({"/socket": BenchSocket}, rooms=rooms)


# -- the in-node driver (BENCH_ROOMS_CONTROL=1) -----------------------------------------------

_ticks_seen: list[tuple[float, str, int, int]] = []  # (monotonic, node, token, tick)
_background: dict[str, Any] = {}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _cmd_call(ep: Endpoint, room: str, key: str, msg: Any,
                    call_timeout: float = 5.0) -> dict[str, Any]:
    assert ep.rooms is not None
    t0 = time.perf_counter()
    reply = await ep.rooms.call(ROOM_CLASSES[room], key, msg, timeout=call_timeout)
    return {"reply": reply, "ms": round((time.perf_counter() - t0) * 1000, 3),
            "active_here": ep.rooms.is_active(ROOM_CLASSES[room], key)}


async def _cmd_calls(ep: Endpoint, room: str, key: str, concurrency: int, seconds: float,
                     warmup: float, max_calls: int = 5_000_000) -> dict[str, Any]:
    """``concurrency`` callers, each with one call in flight, for warmup + seconds."""
    rs = ep.rooms
    assert rs is not None
    cls = ROOM_CLASSES[room]
    lat: list[float] = []
    errors: list[str] = []
    state = {"measuring": False, "done": 0}
    remote0 = rs.remote_calls

    async def caller(i: int, stop_at: float) -> None:
        n = 0
        while time.perf_counter() < stop_at and state["done"] < max_calls:
            t = time.perf_counter()
            try:
                await rs.call(cls, key, n, timeout=5.0)
            except Exception as exc:
                errors.append(repr(exc))
                if len(errors) > 100:
                    return
                continue
            if state["measuring"]:
                lat.append(time.perf_counter() - t)
                state["done"] += 1
            n += 1

    t_start = time.perf_counter()
    stop_at = t_start + warmup + seconds
    cpu: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(caller, i, stop_at)
        await trio.sleep(warmup)
        state["measuring"] = True
        t0 = time.perf_counter()
        cpu["c0"] = time.process_time()
    t1 = time.perf_counter()
    cpu["c1"] = time.process_time()
    lat.sort()
    n = len(lat)
    return {
        "concurrency": concurrency, "calls": n, "elapsed": round(t1 - t0, 3),
        "calls_per_s": round(n / (t1 - t0)),
        "p50_ms": round(_pct(lat, 0.5) * 1000, 3) if n else None,
        "p90_ms": round(_pct(lat, 0.9) * 1000, 3) if n else None,
        "p99_ms": round(_pct(lat, 0.99) * 1000, 3) if n else None,
        "max_ms": round(lat[-1] * 1000, 3) if n else None,
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "remote_calls": rs.remote_calls - remote0,
        "caller_cpu_s": round(cpu["c1"] - cpu["c0"], 3),
        "active_here": rs.is_active(cls, key),
    }


async def _cmd_subscribe(ep: Endpoint, topic: str) -> dict[str, Any]:
    def seen(topic: str, event: str, payload: Any) -> None:
        if isinstance(payload, dict) and len(_ticks_seen) < 1_000_000:
            _ticks_seen.append((time.monotonic(), payload.get("node", "?"),
                                int(payload.get("token", 0)), int(payload.get("tick", 0))))

    ep.subscribe(topic, CallbackSubscriber(seen))
    return {"subscribed": topic}


async def _cmd_ticks(ep: Endpoint, since: float, node: str) -> dict[str, Any]:
    """The first tick from ``node`` after ``since``, and the last one from another node
    before it (monotonic clock: the same on every process of this machine)."""
    first = next((t for t in _ticks_seen if t[0] > since and t[1] == node), None)
    before = [t for t in _ticks_seen if t[0] <= since and t[1] != node]
    counts: dict[str, int] = {}
    for t in _ticks_seen:
        counts[t[1]] = counts.get(t[1], 0) + 1
    return {"first": first, "last_other_before": before[-1] if before else None,
            "counts": counts}


async def _cmd_caller(ep: Endpoint, room: str, key: str, every: float, call_timeout: float,
                      seconds: float) -> dict[str, Any]:
    """Start calling the room every ``every`` s in the background (bounded by ``seconds``)."""
    rs = ep.rooms
    assert rs is not None
    nursery = _background["nursery"]
    outcome = _background.setdefault("caller", {"ok": 0, "errors": 0})

    async def loop() -> None:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            try:
                await rs.call(ROOM_CLASSES[room], key, "stats", timeout=call_timeout)
                outcome["ok"] += 1
            except Exception:
                outcome["errors"] += 1
            await trio.sleep(every)

    nursery.start_soon(loop)
    return {"started": True}


async def _cmd_plain_ticker(ep: Endpoint, topic: str, hz: float,
                            seconds: float) -> dict[str, Any]:
    """The baseline of the tick scenario: the same broadcast from a plain service loop at a
    fixed rate (no room, no mailbox, no fencing). Stats via ``plain_stats``."""
    stats = _background["plain"] = {"ticks": 0, "overruns": 0, "late": []}
    period = 1 / hz
    node = ep.pubsub.node_name

    async def loop() -> None:
        due = trio.current_time() + period
        stop_at = due + seconds
        while due < stop_at:
            await trio.sleep_until(due)
            now = trio.current_time()
            late = now - due
            if late >= period:
                missed = int(late // period)
                stats["overruns"] += missed
                due += missed * period
            stats["ticks"] += 1
            stats["late"].append(now - due)
            due += period
            await ep.broadcast(topic, "state", {
                "tick": stats["ticks"], "node": node, "token": 0, "t": time.monotonic(),
                "players": PLAYERS})

    _background["nursery"].start_soon(loop)
    return {"started": True}


async def _cmd_plain_stats(ep: Endpoint) -> dict[str, Any]:
    stats = _background["plain"]
    return {"ticks": stats["ticks"], "overruns": stats["overruns"],
            **_late_stats(sorted(stats["late"]))}


async def _cmd_stats(ep: Endpoint) -> dict[str, Any]:
    import channels

    out: dict[str, Any] = {"rooms": ep.rooms.stats() if ep.rooms else None,
                           "channels_from": channels.__file__}
    adapter_stats = getattr(ep.pubsub.adapter, "stats", None)
    if callable(adapter_stats):
        out["adapter"] = adapter_stats()
    return out


COMMANDS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "call": _cmd_call, "calls": _cmd_calls, "subscribe": _cmd_subscribe, "ticks": _cmd_ticks,
    "caller": _cmd_caller, "plain_ticker": _cmd_plain_ticker, "plain_stats": _cmd_plain_stats,
    "stats": _cmd_stats,
}


async def _control(ep: Endpoint) -> None:
    """Read JSON commands from stdin, one per line; run each in its own task."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = bytearray()

    async def run(cmd: dict[str, Any]) -> None:
        try:
            result = await COMMANDS[cmd["cmd"]](ep, **cmd.get("args", {}))
            _emit({"id": cmd["id"], "ok": True, "result": result})
        except Exception as exc:
            _emit({"id": cmd["id"], "ok": False, "error": repr(exc)})

    async with trio.open_nursery() as nursery:
        _background["nursery"] = nursery
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:  # the orchestrator is gone (PR_SET_PDEATHSIG ends us too)
                await trio.sleep_forever()
            buf += data
            while (i := buf.find(b"\n")) >= 0:
                line = bytes(buf[:i])
                del buf[:i + 1]
                nursery.start_soon(run, json.loads(line))


if os.environ.get("BENCH_ROOMS_CONTROL"):
    endpoint.service(_control, endpoint, name="rooms-bench-control")


# =============================================================================================
# Helpers
# =============================================================================================

def _pct(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _machine_busy(sample: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``sample`` seconds (from /proc/stat)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t0, i0 = read()
    time.sleep(sample)
    t1, i1 = read()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def _machine_cpu_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


QUIET = {"max_busy": 0.3, "timeout": 180.0}


def _quiet() -> float | None:
    if QUIET["timeout"] <= 0:
        return None
    return wait_quiet(QUIET["max_busy"], QUIET["timeout"])


def wait_quiet(max_busy: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until the machine is less than ``max_busy`` busy, so runs
    of a shared machine avoid other people's bursts; returns the last reading."""
    deadline = time.monotonic() + timeout
    busy = _machine_busy()
    while busy > max_busy and time.monotonic() < deadline:
        busy = _machine_busy()
    if busy > max_busy:
        print(f"rooms_bench: machine still {busy:.0%} busy after waiting {timeout:.0f}s; "
              "measuring anyway", file=sys.stderr, flush=True)
    return round(busy, 3)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# =============================================================================================
# Child processes driven by the orchestrator
# =============================================================================================

class NodeProc:
    """A ``trio-channels serve bench.rooms_bench:endpoint`` node with the driver service."""

    _ids = itertools.count(1)

    def __init__(self, name: str, *, core: int | None, redis_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.core = core
        self.redis_url = redis_url
        self.env = {**os.environ, "PYTHONPATH": str(SRC), "BENCH_ROOMS_CONTROL": "1",
                    **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> NodeProc:
        from bench import procs

        cmd = [sys.executable, "-m", "channels.cli", "serve", APP, "--host", "127.0.0.1",
               "--port", "0", "--log-level", "WARNING", "--node-name", self.name]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        self.proc = procs.spawn(cmd, core=self.core, cwd=SRC, env=self.env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.port:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.name} did not start:\n" + self.tail())
                self._cond.wait(0.1)
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                if line.startswith(MARK):
                    reply = json.loads(line[len(MARK):])
                    self._replies[reply["id"]] = reply
                else:
                    if "serving on http://" in line and not self.port:
                        self.port = int(line.rsplit(":", 1)[1])
                    self.log.append(line)
                    del self.log[:-300]
                self._cond.notify_all()

    def tail(self, n: int = 30) -> str:
        return "".join(self.log[-n:])

    def cmd(self, name: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        cid = next(self._ids)
        self.proc.stdin.write(json.dumps({"id": cid, "cmd": name, "args": args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._replies:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.name}: no reply to {name}:\n" + self.tail())
                self._cond.wait(0.1)
            reply = self._replies.pop(cid)
        if not reply["ok"]:
            raise RuntimeError(f"node {self.name}: {name} failed: {reply['error']}\n"
                               + self.tail())
        return reply["result"]  # type: ignore[no-any-return]

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        from bench import procs

        if self.proc is not None:
            procs.stop(self.proc, timeout=10.0)


class ClientsProc:
    """The subscriber load: ``--child clients`` (raw sockets, counts frames), on core 1."""

    def __init__(self, port: int, conns: int, topic: str, max_seconds: float) -> None:
        from bench import procs

        self.proc = procs.spawn(
            [sys.executable, "-m", "bench.rooms_bench", "--child", "clients", "--port",
             str(port), "--conns", str(conns), "--topic", topic,
             "--max-seconds", str(max_seconds)],
            core=LOAD_CORE, cwd=SRC, env={**os.environ, "PYTHONPATH": str(SRC)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("the subscriber load did not answer in time")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])  # type: ignore[no-any-return]
            sys.stderr.write("clients: " + line)

    def count(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return self.read(10)

    def stop(self) -> None:
        from bench import procs

        procs.stop(self.proc, timeout=5.0)


def _spawn_child(kind: str, extra: list[str], timeout: float, core: int | None = SERVER_CORE,
                 ) -> dict[str, Any]:
    """Run an in-process scenario in a fresh interpreter pinned to ``core``."""
    from bench import procs

    busy = _quiet()
    proc = procs.spawn([sys.executable, "-m", "bench.rooms_bench", "--child", kind, *extra],
                       core=core, cwd=SRC, env={**os.environ, "PYTHONPATH": str(SRC)},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        procs.stop(proc)
    for line in out.splitlines():
        if line.startswith(RESULT):
            result: dict[str, Any] = json.loads(line[len(RESULT):])
            result["busy_before"] = busy
            result["log"] = _log_summary(err)
            return result
    raise RuntimeError(f"child {kind} failed (exit {proc.returncode}):\n{out[-2000:]}\n"
                       f"{err[-3000:]}")


def _log_summary(text: str, top: int = 6) -> list[tuple[str, int]]:
    """What a child logged (warnings and errors), room names and details folded."""
    import collections
    import re

    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if not line.strip() or line.startswith((" ", "Traceback")):
            continue
        counts[re.sub(r"\(.*", "(…)", re.sub(r"room \S+", "room R", line))[:120]] += 1
    return counts.most_common(top)


def _pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-pc", str(core), str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


class Profiler:
    """``py-spy record`` of one process for ``seconds`` (raw collapsed stacks)."""

    def __init__(self, pid: int, path: Path, seconds: float) -> None:
        from bench import procs

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.seconds = seconds
        self.proc = procs.spawn(
            [str(PYSPY), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
             "--rate", "200", "--nonblocking", "--format", "raw", "-o", str(path)],
            core=LOAD_CORE, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self) -> dict[str, Any]:
        from bench import procs, report

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(self.seconds + 20)
        procs.stop(self.proc, timeout=5.0, sig=signal.SIGINT)
        if not self.path.exists():
            return {"error": "py-spy wrote nothing"}
        summary = report.profile_summary(self.path, top=15)
        return {"raw": str(self.path.relative_to(ROOT)), **summary}


# =============================================================================================
# In-process scenarios (run as --child, pinned to one core)
# =============================================================================================

async def _with_rooms(fn: Callable[[Rooms], Awaitable[dict[str, Any]]], *classes: type[Room],
                      redis_url: str | None = None) -> dict[str, Any]:
    pubsub = None
    if redis_url:
        from channels.redis import RedisAdapter

        pubsub = PubSub(RedisAdapter(redis_url, node_name=f"rooms-bench-{os.getpid()}"))
    rs = Rooms(*classes)
    ep = Endpoint({}, rooms=rs, pubsub=pubsub)
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.pubsub.run)
        await nursery.start(rs.run)
        try:
            return await fn(rs)
        finally:
            nursery.cancel_scope.cancel()


async def _local(rs: Rooms, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await rs.call(EchoRoom, "k", 0)
    for i in range(5000):  # warm-up
        await rs.call(EchoRoom, "k", i)

    # One caller: throughput (no per-call timing), then latencies of 20,000 calls.
    # Wall-clock rates suffer from other processes on a shared machine; the CPU time this
    # process spent per operation (process_time) does much less.
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    stop_at = t0 + seconds
    while n < 20_000_000 and (n % 1000 or time.perf_counter() < stop_at):
        await rs.call(EchoRoom, "k", n)
        n += 1
    elapsed = time.perf_counter() - t0
    out["calls_per_s"] = round(n / elapsed)
    out["us_per_call"] = round(elapsed / n * 1e6, 2)
    out["cpu_us_per_call"] = round((time.process_time() - c0) / n * 1e6, 2)
    lat = []
    for i in range(20_000):
        t = time.perf_counter()
        await rs.call(EchoRoom, "k", i)
        lat.append(time.perf_counter() - t)
    lat.sort()
    out["p50_us"] = round(_pct(lat, 0.5) * 1e6, 2)
    out["p99_us"] = round(_pct(lat, 0.99) * 1e6, 2)

    # 50 callers, one call in flight each.
    done = 0

    async def caller(stop: float) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop and i < 10_000_000:
            await rs.call(EchoRoom, "k", i)
            i += 1
        done += i

    t0, c0 = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(caller, t0 + seconds)
    elapsed = time.perf_counter() - t0
    out["calls_per_s_c50"] = round(done / elapsed)
    out["cpu_us_per_call_c50"] = round((time.process_time() - c0) / done * 1e6, 2)

    # Casts: 200,000 in a row (a cast to a local room never yields), then one call that
    # returns the count once the room has handled them all.
    casts = 200_000
    before = await rs.call(EchoRoom, "k", "casts")
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(casts):
        await rs.cast(EchoRoom, "k", i)
    t1 = time.perf_counter()
    handled = await rs.call(EchoRoom, "k", "casts", timeout=60)
    t2, c2 = time.perf_counter(), time.process_time()
    out["cpu_us_per_cast"] = round((c2 - c0) / casts * 1e6, 2)
    assert handled - before == casts, (handled, before)
    out["casts_enqueued_per_s"] = round(casts / (t1 - t0))
    out["casts_per_s"] = round(casts / (t2 - t0))
    out["us_per_cast"] = round((t2 - t0) / casts * 1e6, 2)
    return out


async def _activate(rs: Rooms, count: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tag = os.getpid()  # fresh names: a shared Redis may hold earlier runs' leases
    await rs.call(IdleRoom, f"{tag}-warm", 0)
    a0 = rs.activations
    t0, c0 = time.perf_counter(), time.process_time()
    stop_at = t0 + seconds
    i = 0
    while i < count and time.perf_counter() < stop_at:
        await rs.call(IdleRoom, f"{tag}-s{i}", 0)
        i += 1
    elapsed = time.perf_counter() - t0
    done = rs.activations - a0
    out["sequential"] = {"activations": done, "per_s": round(done / elapsed),
                         "cpu_us_each": round((time.process_time() - c0) / done * 1e6, 1)}

    a0 = rs.activations
    keys = iter(range(count))

    async def worker(stop: float) -> None:
        for k in keys:
            if time.perf_counter() >= stop:
                return
            await rs.call(IdleRoom, f"{tag}-c{k}", 0, timeout=30)

    t0, c0 = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(worker, t0 + seconds)
    elapsed = time.perf_counter() - t0
    done = rs.activations - a0
    out["concurrent_50"] = {"activations": done, "per_s": round(done / elapsed),
                            "cpu_us_each": round((time.process_time() - c0) / done * 1e6, 1)}
    stats = rs.stats()
    # Every activation above is still wanted (idle_timeout 300 s): any room gone stopped
    # itself, e.g. because its lease could not be renewed in time (see "log").
    out["active"] = stats["active"]
    out["lost"] = stats["lost"]
    return out


async def _memory(rs: Rooms, count: int, trace: bool) -> dict[str, Any]:
    for i in range(200):  # warm-up: code paths, first allocations
        await rs.call(IdleRoom, f"w{i}", 0)
    gc.collect()
    await trio.sleep(0.3)
    t = time.perf_counter()
    gc.collect()
    gc0_ms = (time.perf_counter() - t) * 1000
    objects0 = len(gc.get_objects())
    rss0 = _rss_kib()
    snap0 = tracemalloc.take_snapshot() if trace else None
    t0 = time.perf_counter()
    for i in range(count):
        await rs.call(IdleRoom, f"m{i}", 0)
    elapsed = time.perf_counter() - t0
    await trio.sleep(0.5)  # every room parked on its mailbox
    gc.collect()
    t = time.perf_counter()
    gc.collect()  # a full collection's pause: it visits every tracked object of every room
    gc1_ms = (time.perf_counter() - t) * 1000
    objects1 = len(gc.get_objects())
    rss1 = _rss_kib()
    out: dict[str, Any] = {"rooms": count, "active": rs.stats()["active"],
                           "rss_before_mib": round(rss0 / 1024, 1),
                           "rss_after_mib": round(rss1 / 1024, 1),
                           "rss_per_room_kib": round((rss1 - rss0) / count, 2),
                           "activate_s": round(elapsed, 2),
                           "gc_objects_per_room": round((objects1 - objects0) / count, 1),
                           "full_gc_ms_before": round(gc0_ms, 1),
                           "full_gc_ms_after": round(gc1_ms, 1)}
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        snap0, snap1 = snap0.filter_traces(filters), snap1.filter_traces(filters)
        stats = snap1.compare_to(snap0, "lineno")
        total = sum(s.size_diff for s in stats)
        out["traced_per_room_bytes"] = round(total / count)
        out["top"] = [(f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
                       round(s.size_diff / count), round(s.count_diff / count, 2))
                      for s in stats[:15]]
    return out


# -- the subscriber load ----------------------------------------------------------------------

def _client_frame(text: str) -> bytes:
    """A masked client text frame with a zero masking key."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def _frame_bounds(buf: bytearray, i: int) -> tuple[int, int, int] | None:
    """(opcode, payload start, payload end) of the frame at ``i``, or None if incomplete."""
    n = len(buf)
    if n - i < 2:
        return None
    ln = buf[i + 1] & 0x7F
    h = 2
    if ln == 126:
        if n - i < 4:
            return None
        ln = int.from_bytes(buf[i + 2:i + 4], "big")
        h = 4
    elif ln == 127:
        if n - i < 10:
            return None
        ln = int.from_bytes(buf[i + 2:i + 10], "big")
        h = 10
    if n - i < h + ln:
        return None
    return buf[i] & 0x0F, i + h, i + h + ln


def _clients_main(port: int, conns: int, topic: str, max_seconds: float) -> None:
    """Connect and join ``conns`` clients (Phoenix V2 JSON), then count frames until told to
    quit: a ``count`` line on stdin prints the counters. Bounded by ``max_seconds``."""
    deadline = time.monotonic() + max_seconds
    join = _client_frame(json.dumps(["1", "1", topic, "phx_join", {}]))
    socks: list[socket.socket] = []
    bufs: dict[int, bytearray] = {}
    t0 = time.monotonic()
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("closed during the handshake")
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        s.sendall(join)
        buf = bytearray(rest)
        while (fb := _frame_bounds(buf, 0)) is None:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("closed during the join")
            buf += chunk
        reply = json.loads(bytes(buf[fb[1]:fb[2]]))
        if reply[3] != "phx_reply" or reply[4].get("status") != "ok":
            raise RuntimeError(f"join refused: {reply}")
        del buf[:fb[2]]
        s.setblocking(False)
        socks.append(s)
        bufs[s.fileno()] = buf
    print(RESULT + json.dumps({"connected": len(socks),
                               "connect_s": round(time.monotonic() - t0, 2)}), flush=True)

    by_fd = {s.fileno(): s for s in socks}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    state = other = nbytes = closed = 0
    min_len = max_len = 0
    cmdbuf = b""
    while time.monotonic() < deadline:
        for fd, _ev in ep.poll(0.5):
            if fd == stdin:
                data = os.read(stdin, 4096)
                if not data:
                    return
                cmdbuf += data
                while b"\n" in cmdbuf:
                    line, cmdbuf = cmdbuf.split(b"\n", 1)
                    if line.strip() == b"quit":
                        return
                    print(RESULT + json.dumps({
                        "t": time.monotonic(), "state": state, "other": other, "bytes": nbytes,
                        "closed": closed, "min_len": min_len, "max_len": max_len}), flush=True)
                continue
            s = by_fd[fd]
            try:
                data = s.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed += 1
                ep.unregister(fd)
                continue
            nbytes += len(data)
            buf = bufs[fd]
            buf += data
            i = 0
            while (fb := _frame_bounds(buf, i)) is not None:
                op, start, end = fb
                ln = end - start
                if op in (0, 1, 2) and ln >= STATE_MIN_BYTES:
                    state += 1
                    if not min_len or ln < min_len:
                        min_len = ln
                    max_len = max(max_len, ln)
                else:
                    other += 1
                i = end
            del buf[:i]


# =============================================================================================
# Orchestrated scenarios
# =============================================================================================

def scenario_local(args: argparse.Namespace) -> dict[str, Any]:
    runs = [_spawn_child("local", ["--seconds", str(args.seconds)], timeout=args.seconds * 4 + 120)
            for _ in range(args.repeat)]
    keys = [k for k in runs[0] if k != "busy_before"]
    return {"runs": runs, "median": {k: _median([r[k] for r in runs]) for k in keys}}


def scenario_activate(args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    runs = []
    for _ in range(args.repeat):
        extra = ["--count", str(args.activations), "--seconds", str(args.seconds * 4)]
        if redis_url:
            extra += ["--redis-url", redis_url]
        runs.append(_spawn_child("activate", extra, timeout=args.seconds * 8 + 120))
    median = {mode: _median([r[mode]["per_s"] for r in runs])
              for mode in ("sequential", "concurrent_50")}
    cpu = {mode: _median([r[mode]["cpu_us_each"] for r in runs])
           for mode in ("sequential", "concurrent_50")}
    return {"runs": runs, "median_per_s": median, "median_cpu_us_each": cpu}


def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    runs = [_spawn_child("memory", ["--count", str(args.rooms)], timeout=300)
            for _ in range(args.repeat)]
    traced = _spawn_child("memory", ["--count", str(args.rooms), "--tracemalloc"], timeout=600)
    return {"runs": runs,
            "median_rss_per_room_kib": _median([r["rss_per_room_kib"] for r in runs]),
            "median_full_gc_ms": _median([r["full_gc_ms_after"] for r in runs]),
            "tracemalloc": traced}


def scenario_cross(args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    from tests.cluster.redis_server import RedisServer

    results: dict[str, Any] = {"runs": {}, "median": {}}
    for conc in args.concurrency:
        runs = []
        for rep in range(args.repeat):
            busy = _quiet()
            with RedisServer() as redis:
                assert redis.process is not None
                a = NodeProc("rooms-a", core=None, redis_url=redis.url).start()
                b = NodeProc("rooms-b", core=None, redis_url=redis.url).start()
                try:
                    placed = a.cmd("call", room="echo", key="x", msg="hello")
                    assert placed["active_here"], placed
                    first = b.cmd("call", room="echo", key="x", msg="hello")
                    assert not first["active_here"], first
                    pids = {"a": a.pid, "b": b.pid, "redis": redis.process.pid}
                    cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
                    m0 = _machine_cpu_seconds()
                    w0 = time.monotonic()
                    spies = {}
                    if args.profile and rep == 0 and PYSPY.exists():
                        for k in ("a", "b"):
                            spies[k] = Profiler(pids[k], outdir / "profiles" /
                                                f"cross-c{conc}-{k}.txt", args.seconds)
                    res = b.cmd("calls", timeout=args.seconds * 3 + 60, room="echo", key="x",
                                concurrency=conc, seconds=args.seconds, warmup=1.0)
                    wall = time.monotonic() - w0
                    ours = {k: _cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
                    cpu = {k: round(100 * v / wall, 1) for k, v in ours.items()}
                    # Everything else on the machine meanwhile (other people's work).
                    cpu["others"] = round(
                        100 * (_machine_cpu_seconds() - m0 - sum(ours.values())) / wall, 1)
                    res["cpu_pct"] = cpu
                    res["busy_before"] = busy
                    res["a_stats"] = a.cmd("stats")
                    res["b_stats"] = b.cmd("stats")
                    if spies:
                        res["profiles"] = {k: s.finish() for k, s in spies.items()}
                    runs.append(res)
                finally:
                    a.stop()
                    b.stop()
        results["runs"][conc] = runs
        results["median"][conc] = {k: _median([r[k] for r in runs])
                                   for k in ("calls_per_s", "p50_ms", "p99_ms")}
        results["median"][conc]["cpu_pct"] = {
            k: _median([r["cpu_pct"][k] for r in runs]) for k in ("a", "b", "redis", "others")}
    return results


def scenario_failover(args: argparse.Namespace) -> dict[str, Any]:
    from tests.cluster.redis_server import RedisServer

    rng = random.Random(1234)
    results: dict[str, Any] = {}
    for lease in args.leases:
        for variant in args.failover_variants:
            runs = []
            for _ in range(args.failover_runs):
                renew = (lease - lease * 0.3) / 3
                busy = _quiet()
                with RedisServer() as redis:
                    env = {"BENCH_ROOMS_LEASE": str(lease)}
                    a = NodeProc("fo-a", core=SERVER_CORE, redis_url=redis.url, env=env).start()
                    b = NodeProc("fo-b", core=LOAD_CORE, redis_url=redis.url, env=env).start()
                    try:
                        placed = a.cmd("call", room="tick", key="f", msg="stats")
                        assert placed["active_here"], placed
                        b.cmd("subscribe", topic="game:f")
                        seen = b.cmd("call", room="tick", key="f", msg="stats")
                        assert seen["reply"]["node"] == "fo-a", seen
                        if variant == "caller":
                            b.cmd("caller", room="tick", key="f", every=0.1, call_timeout=0.5,
                                  seconds=lease * 3 + 20)
                        # A random phase against the owner's renewals (every `renew` s).
                        time.sleep(1.0 + rng.uniform(0, renew))
                        t_kill = time.monotonic()
                        a.kill9()
                        give_up = t_kill + 2 * lease + 15
                        found = None
                        while time.monotonic() < give_up:
                            got = b.cmd("ticks", since=t_kill, node="fo-b")
                            if got["first"] is not None:
                                found = got
                                break
                            time.sleep(0.05)
                        if found is None:
                            runs.append({"recovered": False, "log_b": b.tail(10)})
                            continue
                        first = found["first"]
                        last_a = found["last_other_before"]
                        runs.append({
                            "recovered": True, "busy_before": busy,
                            "kill_to_next_tick_s": round(first[0] - t_kill, 3),
                            "last_tick_before_kill_ms": round((t_kill - last_a[0]) * 1000, 1)
                            if last_a else None,
                            "token_a": last_a[2] if last_a else None, "token_b": first[2],
                            "ticks_from_a_seen_on_b": found["counts"].get("fo-a", 0),
                            "b_stats": b.cmd("stats")["rooms"],
                        })
                    finally:
                        a.stop()
                        b.stop()
            gaps = [float(str(r["kill_to_next_tick_s"])) for r in runs if r["recovered"]]
            results[f"lease={lease} {variant}"] = {
                "lease": lease, "variant": variant, "runs": runs,
                "observed_s": gaps, "min_s": min(gaps) if gaps else None,
                "median_s": _median(gaps) if gaps else None, "max_s": max(gaps) if gaps else None,
                "failed": sum(1 for r in runs if not r["recovered"])}
    return results


def scenario_tick(args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    from tests.cluster.redis_server import RedisServer

    results: dict[str, Any] = {}
    for variant in args.tick_variants:
        runs = []
        for rep in range(args.repeat):
            busy = _quiet()
            with contextlib.ExitStack() as stack:
                redis_url = None
                redis_pid = None
                if variant == "room+redis":
                    redis = stack.enter_context(RedisServer())
                    assert redis.process is not None
                    redis_url, redis_pid = redis.url, redis.process.pid
                    _pin(redis_pid, LOAD_CORE)
                srv = NodeProc("tick-srv", core=SERVER_CORE, redis_url=redis_url,
                               env={"BENCH_ROOMS_TICK_HZ": str(args.tick_hz)}).start()
                stack.callback(srv.stop)
                clients = ClientsProc(srv.port, args.players, "game:bench",
                                      max_seconds=args.tick_seconds * 3 + 120)
                stack.callback(clients.stop)
                conn = clients.read(120)
                if conn["connected"] != args.players:
                    raise RuntimeError(f"only {conn['connected']} subscribers connected")
                time.sleep(1.0)
                # Idle: subscribers connected, nothing ticking.
                i0 = _cpu_seconds(srv.pid), time.monotonic()
                time.sleep(3.0)
                idle_pct = 100 * (_cpu_seconds(srv.pid) - i0[0]) / (time.monotonic() - i0[1])
                if variant == "plain":
                    srv.cmd("plain_ticker", topic="game:bench", hz=args.tick_hz,
                            seconds=args.tick_seconds + 30)
                else:
                    placed = srv.cmd("call", room="tick", key="bench", msg="stats")
                    assert placed["active_here"], placed
                time.sleep(2.0)  # warm-up
                c0 = clients.count()
                s0 = _cpu_seconds(srv.pid), time.monotonic()
                r0 = _cpu_seconds(redis_pid) if redis_pid else 0.0
                k0 = _cpu_seconds(clients.proc.pid), _machine_cpu_seconds()
                spy = None
                if args.profile and rep == 0 and PYSPY.exists():
                    spy = Profiler(srv.pid, outdir / "profiles" / f"tick-{variant}.txt",
                                   args.tick_seconds)
                time.sleep(args.tick_seconds)
                c1 = clients.count()
                s1 = _cpu_seconds(srv.pid), time.monotonic()
                r1 = _cpu_seconds(redis_pid) if redis_pid else 0.0
                k1 = _cpu_seconds(clients.proc.pid), _machine_cpu_seconds()
                if variant == "plain":
                    stats = srv.cmd("plain_stats")
                else:
                    stats = srv.cmd("call", room="tick", key="bench", msg="stats")["reply"]
                wall = s1[1] - s0[1]
                cpu_s = s1[0] - s0[0]
                deliveries = c1["state"] - c0["state"]
                res = {
                    "players": conn["connected"], "connect_s": conn["connect_s"],
                    "busy_before": busy,
                    "idle_cpu_pct": round(idle_pct, 2),
                    "cpu_pct": round(100 * cpu_s / wall, 2),
                    "cpu_ms_per_tick": round(cpu_s * 1000 / (wall * args.tick_hz), 3),
                    "deliveries_per_s": round(deliveries / (c1["t"] - c0["t"])),
                    "expected_per_s": round(args.tick_hz * conn["connected"]),
                    "frame_bytes": [c1["min_len"], c1["max_len"]],
                    "closed": c1["closed"], "other_frames": c1["other"],
                    "rss_mib": round(_rss_kib(srv.pid) / 1024, 1),
                    "tick_stats": stats,
                    "redis_cpu_pct": round(100 * (r1 - r0) / wall, 2) if redis_pid else None,
                    "clients_cpu_pct": round(100 * (k1[0] - k0[0]) / wall, 2),
                    "others_cpu_pct": round(100 * ((k1[1] - k0[1]) - cpu_s - (r1 - r0)
                                                   - (k1[0] - k0[0])) / wall, 1),
                }
                res["cpu_us_per_delivery"] = round(cpu_s * 1e6 / max(1, deliveries), 3)
                if spy is not None:
                    res["profile"] = spy.finish()
                runs.append(res)
        results[variant] = {"runs": runs, "median": {
            k: _median([r[k] for r in runs])
            for k in ("cpu_pct", "cpu_ms_per_tick", "deliveries_per_s", "idle_cpu_pct",
                      "cpu_us_per_delivery", "others_cpu_pct")}}
        results[variant]["median"]["overruns"] = [r["tick_stats"]["overruns"] for r in runs]
        results[variant]["median"]["late_p99_ms"] = _median(
            [r["tick_stats"].get("late_p99_ms", 0) for r in runs])
        results[variant]["median"]["late_max_ms"] = max(
            r["tick_stats"].get("late_max_ms", 0) for r in runs)
    return results


# =============================================================================================
# Report
# =============================================================================================

def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def print_tables(res: dict[str, Any]) -> None:
    p = print
    if "local" in res:
        m = res["local"]["median"]
        p("\n### Local calls and casts (one process, memory store)\n")
        p("| measure | value |\n|---|---|")
        p(f"| call, 1 caller: calls/s | {_fmt(m['calls_per_s'])} |")
        p(f"| call, 1 caller: µs per call wall (p50 / p99); CPU µs per call | "
          f"{m['us_per_call']} ({m['p50_us']} / {m['p99_us']}); {m['cpu_us_per_call']} |")
        p(f"| call, 50 callers: calls/s; CPU µs per call | {_fmt(m['calls_per_s_c50'])}; "
          f"{m['cpu_us_per_call_c50']} |")
        p(f"| cast: casts/s handled; µs per cast wall / CPU | {_fmt(m['casts_per_s'])}; "
          f"{m['us_per_cast']} / {m['cpu_us_per_cast']} |")
        p(f"| cast: casts/s enqueued | {_fmt(m['casts_enqueued_per_s'])} |")
    if "cross" in res:
        p("\n### Cross-node calls (room on A, caller on B, one Redis)\n")
        p("| concurrency | calls/s | p50 ms | p99 ms | CPU A / B / redis % | others % |")
        p("|---|---|---|---|---|---|")
        for conc, m in res["cross"]["median"].items():
            c = m["cpu_pct"]
            p(f"| {conc} | {_fmt(m['calls_per_s'])} | {m['p50_ms']} | {m['p99_ms']} | "
              f"{c['a']} / {c['b']} / {c['redis']} | {c['others']} |")
    if "activate" in res:
        p("\n### Activations of distinct keys\n")
        p("| store | sequential /s | 50 concurrent /s | CPU µs each (seq / 50) |")
        p("|---|---|---|---|")
        for store, r in res["activate"].items():
            m, c = r["median_per_s"], r["median_cpu_us_each"]
            p(f"| {store} | {_fmt(m['sequential'])} | {_fmt(m['concurrent_50'])} | "
              f"{c['sequential']} / {c['concurrent_50']} |")
    if "memory" in res:
        r = res["memory"]
        p("\n### Memory per idle room\n")
        p(f"RSS per room (median): {r['median_rss_per_room_kib']} KiB at "
          f"{r['runs'][0]['rooms']:,} rooms; tracemalloc: "
          f"{r['tracemalloc'].get('traced_per_room_bytes')} B per room; "
          f"{r['runs'][0]['gc_objects_per_room']} GC-tracked objects per room; a full "
          f"gc.collect() takes {r['median_full_gc_ms']} ms (median)")
        for line, size, count in r["tracemalloc"].get("top", [])[:10]:
            p(f"  {size:>6} B  {count:>5} blocks  {line}")
    if "failover" in res:
        p("\n### Owner loss (kill -9) → next tick on the other node\n")
        p("| lease | variant | observed s | min | median | max | failed |")
        p("|---|---|---|---|---|---|---|")
        for r in res["failover"].values():
            p(f"| {r['lease']} | {r['variant']} | {', '.join(str(g) for g in r['observed_s'])} "
              f"| {r['min_s']} | {r['median_s']} | {r['max_s']} | {r['failed']} |")
    if "tick" in res:
        p("\n### 20 Hz tick broadcast to subscribers\n")
        p("| variant | server CPU % | CPU ms per tick | deliveries/s | µs CPU per delivery | "
          "idle CPU % | overruns | late p99 / max ms | others % |")
        p("|---|---|---|---|---|---|---|---|---|")
        for variant, r in res["tick"].items():
            m = r["median"]
            p(f"| {variant} | {m['cpu_pct']} | {m['cpu_ms_per_tick']} | "
              f"{_fmt(m['deliveries_per_s'])} | {m['cpu_us_per_delivery']} | "
              f"{m['idle_cpu_pct']} | {m['overruns']} | {m['late_p99_ms']} / "
              f"{m['late_max_ms']} | {m['others_cpu_pct']} |")


def _snapshot_sources(dest: Path) -> Path:
    """Copy the runtime's working tree (uncommitted edits included) and this benchmark."""
    import shutil

    for rel in SOURCE_DIRS:
        src = ROOT / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / rel)
    return dest


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "channels", "supervisor",
                                "presence"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout
        if dirty.strip():
            return out.stdout.strip() + " + uncommitted edits to " + ", ".join(
                line[3:] for line in dirty.splitlines() if line.strip())
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rooms_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    all_scenarios = ["local", "cross", "activate", "memory", "failover", "tick"]
    parser.add_argument("--scenarios", default=",".join(all_scenarios),
                        help="comma-separated subset of: " + ", ".join(all_scenarios))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition, short phases, small sizes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured seconds per throughput run")
    parser.add_argument("--concurrency", default="1,50", help="cross-node callers")
    parser.add_argument("--activations", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=10_000, help="idle rooms (memory)")
    parser.add_argument("--leases", default="5,1.5", help="failover: lease seconds")
    parser.add_argument("--failover-runs", type=int, default=5)
    parser.add_argument("--failover-variants", default="watch,caller",
                        help="watch: the other node only used the room once; caller: it "
                             "also calls it every 100 ms (timeout 0.5 s)")
    parser.add_argument("--players", type=int, default=1000, help="tick: subscribers")
    parser.add_argument("--tick-hz", type=float, default=20.0)
    parser.add_argument("--tick-seconds", type=float, default=10.0)
    parser.add_argument("--tick-variants", default="room,plain,room+redis")
    parser.add_argument("--quiet-busy", type=float, default=0.3,
                        help="before each run, wait until the machine is less busy than this "
                             "(fraction of all CPUs over 2 s; the machine may be shared)")
    parser.add_argument("--quiet-wait", type=float, default=180,
                        help="wait at most this long for that (0: do not wait)")
    parser.add_argument("--live", action="store_true",
                        help="children import the working tree, not a copy made at the start")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the nodes (cross) and the server (tick), first repetition")
    # Internal: the child processes.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--conns", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=300, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        return _child(args)

    if args.quick:
        args.repeat = 1
        args.seconds = 1.5
        args.activations = 2000
        args.rooms = 2000
        args.failover_runs = 1
        args.players = 200
        args.tick_seconds = 3.0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.leases = [float(x) for x in args.leases.split(",")]
    args.failover_variants = args.failover_variants.split(",")
    args.tick_variants = args.tick_variants.split(",")
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(all_scenarios)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    from bench import procs

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "bench" / "results" / f"rooms-{stamp}"
    outdir.mkdir(parents=True, exist_ok=True)
    global SRC
    QUIET.update(max_busy=args.quiet_busy, timeout=args.quiet_wait)
    if not args.live:
        SRC = _snapshot_sources(outdir / "src")
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git_commit(), "python": platform.python_version(),
        "trio": trio.__version__, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith(("child", "port"))},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for name in scenarios:
            t0 = time.monotonic()
            print(f"rooms_bench: {name} ...", file=sys.stderr, flush=True)
            if name == "local":
                res["local"] = scenario_local(args)
            elif name == "activate":
                from tests.cluster.redis_server import RedisServer

                res["activate"] = {"memory": scenario_activate(args, None)}
                with RedisServer() as redis:
                    assert redis.process is not None
                    _pin(redis.process.pid, LOAD_CORE)
                    res["activate"]["redis"] = scenario_activate(args, redis.url)
            elif name == "memory":
                res["memory"] = scenario_memory(args)
            elif name == "cross":
                res["cross"] = scenario_cross(args, outdir)
            elif name == "failover":
                res["failover"] = scenario_failover(args)
            elif name == "tick":
                res["tick"] = scenario_tick(args, outdir)
            print(f"rooms_bench: {name} done in {time.monotonic() - t0:.0f}s",
                  file=sys.stderr, flush=True)
            (outdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    finally:
        procs.stop_all()
    res["load_after"] = os.getloadavg()
    (outdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"# rooms benchmark {res['date']}, commit {res['commit']}, load before "
          f"{res['load_before'][0]:.2f}, after {res['load_after'][0]:.2f}")
    print_tables(res)
    print(f"\nresults: {(outdir / 'results.json').relative_to(ROOT)}", file=sys.stderr)
    return 0


def _child(args: argparse.Namespace) -> int:
    if args.child == "clients":
        _clients_main(args.port, args.conns, args.topic, args.max_seconds)
        return 0
    if args.child == "local":
        out = trio.run(_with_rooms, lambda rs: _local(rs, args.seconds), EchoRoom)
    elif args.child == "activate":
        out = trio.run(lambda: _with_rooms(
            lambda rs: _activate(rs, args.count, args.seconds), IdleRoom,
            redis_url=args.redis_url))
    elif args.child == "memory":
        if args.tracemalloc:
            tracemalloc.start(1)
        out = trio.run(_with_rooms, lambda rs: _memory(rs, args.count, args.tracemalloc),
                       IdleRoom)
    else:
        raise SystemExit(f"unknown child {args.child}")
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
