"""History benchmark (not a test): ``python -m bench.history_bench [--quick] [--scenarios ...]``.

What history (channels/history.py) costs and how recovery behaves, in separate processes on
loopback, every one bounded; results in docs/benchmarks.md ("History").

* ``fanout``: one node (memory store), 1 publisher -> N subscribers on one topic, history off
  vs on: deliveries/s and the server's CPU per delivery and per broadcast (N = 1 shows the
  per-broadcast cost). The node is pinned to core 0, the load (bench/load/history.mjs) to
  core 1.
* ``cluster``: two nodes and a private redis-server; P publishers on node A, N subscribers on
  node B; history off vs on: deliveries/s on B, CPU per delivery on B and per broadcast on A,
  Redis CPU and commands per broadcast, history appends per Redis pipeline. Both nodes on
  core 0; Redis and the load on core 1.
* ``recover``: 10,000 clients on T topics lose their connections (``memory``: one node, the
  clients drop; ``redis``: a cluster node is killed with SIGKILL and a new node takes its
  port) while the publisher sends M messages per topic, then all reconnect at once with their
  last position: time until every client has its replay, per-client times, and the server's
  and Redis's load (CPU, commands/s from INFO). ``-off`` variants: the same reconnect with
  history off (what a mass reconnect costs anyway).
* ``memory``: bytes per stored message: the memory store (tracemalloc and RSS, 100,000
  messages of a ~200-byte payload, one topic and 1,000 topics) and Redis (INFO
  used_memory); with the cost of a join's history read (first join, recovery, ``last``).

This module is also the app under benchmark (``trio-channels serve
bench.history_bench:endpoint``; ``BENCH_HISTORY=off`` turns history off) and the in-process
children (``--child``). On SIGUSR2 the app writes its history, store and adapter counters to
``$BENCH_HISTORY_STATS``. Results: tables on stdout, everything in
``bench/results/history-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from channels import Channel, Endpoint, Reply, Socket
from channels.history import History, MemoryHistoryStore

ROOT = Path(__file__).resolve().parents[1]
APP = "bench.history_bench:endpoint"
GEN = ROOT / "bench" / "load" / "history.mjs"
PYSPY = ROOT / "bench" / ".venv" / "bin" / "py-spy"
SERVER_CORE = 0
LOAD_CORE = 1
#: What the child processes import from: a copy made at the start of the run (``--live``: the
#: working tree), so edits landing mid-run cannot mix versions.
SRC = ROOT
SOURCE_DIRS = ("channels", "supervisor", "presence", "bench/__init__.py", "bench/procs.py",
               "bench/report.py", "bench/history_bench.py")
RESULT = "RESULT "

#: A chat-like payload of 207 bytes of JSON (the broadcast frame with its position: ~293).
PAYLOAD_JSON = ('{"user":"bench-user-0042","room":"lobby","body":"hello from the history '
                'benchmark: a chat line of a typical length, with a few words in it to bring '
                'the whole payload to two hundred bytes","ts":1764601234567}')


# =============================================================================================
# The app under benchmark
# =============================================================================================

HISTORY_ON = os.environ.get("BENCH_HISTORY", "on") == "on"
HISTORY_SIZE = int(os.environ.get("BENCH_HISTORY_SIZE", "500"))


class HistChannel(Channel):
    """``bcast`` broadcasts ``msg`` with the payload (no reply); ``pub`` does the same and
    replies ok once the broadcast is stored and delivered here."""

    history = History(size=HISTORY_SIZE, ttl=600.0) if HISTORY_ON else None

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return None

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event == "bcast":
            await self.broadcast("msg", payload)
            return None
        if event == "pub":
            await self.broadcast("msg", payload)
            return Reply.ok()
        return Reply.error({"reason": "unknown event"})


class HistSocket(Socket):
    channels = {"room:*": HistChannel}
    # The load sends no heartbeats while it counts frames; pushes far above a real client's
    # rate; and a publisher keeps up to 500 pushes queued (the window bounds them), which
    # may wait longer than the default max_push_age when each broadcast waits for Redis.
    idle_timeout = 600.0
    rate_limit = (1e9, 1e9)
    max_queued = 100_000
    max_push_age = None
    longpoll = False  # WebSocket only (and no warning about LongPoll's secret key)


endpoint = Endpoint({"/socket": HistSocket})

# Time spent in the cyclic garbage collector, per generation (reported with the counters).
_gc_time = [0.0, 0.0, 0.0]
_gc_count = [0, 0, 0]
_gc_start = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        generation = info["generation"]
        _gc_time[generation] += time.perf_counter() - _gc_start[0]
        _gc_count[generation] += 1


gc.callbacks.append(_gc_callback)
if os.environ.get("BENCH_GC_THRESHOLD"):  # e.g. "50000,20,10": experiments only
    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))


def _dump_stats(signum: int, frame: object) -> None:
    """SIGUSR2: write the node's counters to $BENCH_HISTORY_STATS (plain int reads)."""
    out: dict[str, Any] = {"t": time.monotonic(), "pubsub_broadcasts": endpoint.pubsub.broadcasts,
                           "gc_seconds": [round(t, 3) for t in _gc_time],
                           "gc_collections": list(_gc_count)}
    history = endpoint.history
    if history is not None:
        out["history"] = history.stats()
        store = getattr(history, "_store", None)
        out["store"] = type(store).__name__
        if isinstance(store, MemoryHistoryStore):
            out["stored_entries"] = store.stored()
        for name in ("appends", "pipelines"):
            if hasattr(store, name):
                out[name] = getattr(store, name)
    adapter_stats = getattr(endpoint.pubsub.adapter, "stats", None)
    if callable(adapter_stats):
        out["adapter"] = adapter_stats()
    path = os.environ["BENCH_HISTORY_STATS"]
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)


if os.environ.get("BENCH_HISTORY_STATS"):
    signal.signal(signal.SIGUSR2, _dump_stats)


# =============================================================================================
# Helpers
# =============================================================================================

def _median(values: list[float]) -> float:
    return statistics.median(values)


def _cpu(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds (/proc/<pid>/stat)."""
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


def _machine_busy(sample: float = 2.0) -> float:
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    t0, i0 = read()
    time.sleep(sample)
    t1, i1 = read()
    return 1 - (i1 - i0) / max(1, t1 - t0)


QUIET = {"max_busy": 0.3, "timeout": 120.0}


def wait_quiet() -> float | None:
    """Before a run: wait (bounded) until the shared machine is less than ``max_busy`` busy."""
    if QUIET["timeout"] <= 0:
        return None
    deadline = time.monotonic() + QUIET["timeout"]
    busy = _machine_busy()
    while busy > QUIET["max_busy"] and time.monotonic() < deadline:
        busy = _machine_busy()
    if busy > QUIET["max_busy"]:
        print(f"history_bench: machine still {busy:.0%} busy; measuring anyway",
              file=sys.stderr, flush=True)
    return round(busy, 3)


def _pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-pc", str(core), str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def redis_info(redis: Any, section: str) -> dict[str, str]:
    raw = redis.command("INFO", section)
    out: dict[str, str] = {}
    for line in (raw or b"").decode().splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k] = v
    return out


def redis_commandstats(redis: Any) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec, usec_per_call}}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in redis_info(redis, "commandstats").items():
        name = key.removeprefix("cmdstat_")
        fields = dict(kv.split("=", 1) for kv in value.split(","))
        out[name] = {"calls": int(fields["calls"]), "usec": int(fields["usec"]),
                     "usec_per_call": float(fields["usec_per_call"])}
    return out


class Sampler:
    """Polls Redis's total_commands_processed and some processes' CPU every ``every`` s in a
    thread (bounded by ``max_seconds``): the peak commands/s and CPU over short windows."""

    def __init__(self, redis: Any | None, pids: dict[str, int], every: float = 0.25,
                 max_seconds: float = 300.0) -> None:
        self.redis = redis
        self.pids = pids
        self.every = every
        self.max_seconds = max_seconds
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        t_end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < t_end:
            s: dict[str, float] = {"t": time.monotonic()}
            with contextlib.suppress(Exception):
                if self.redis is not None:
                    s["cmds"] = int(redis_info(self.redis, "stats")["total_commands_processed"])
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    s[name] = _cpu(pid)
            self.samples.append(s)
            self._stop.wait(self.every)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        out: dict[str, Any] = {}
        pairs = list(zip(self.samples, self.samples[1:], strict=False))
        for key in ["cmds", *self.pids]:
            rates = [(b[key] - a[key]) / (b["t"] - a["t"]) for a, b in pairs
                     if key in a and key in b and b["t"] > a["t"]]
            if rates:
                out[f"peak_{key}_per_s"] = round(max(rates), 2)
        return out


# =============================================================================================
# Child processes
# =============================================================================================

class Node:
    """A ``trio-channels serve bench.history_bench:endpoint`` process pinned to ``core``."""

    def __init__(self, name: str, *, port: int, core: int | None, history: bool,
                 logdir: Path, redis_url: str | None = None, size: int = 500) -> None:
        self.name = name
        self.port = port
        self.core = core
        self.history = history
        self.redis_url = redis_url
        self.size = size
        self.logdir = logdir
        self.log = logdir / f"{name}-{port}-{time.monotonic_ns()}.log"
        self.stats_path = logdir / f"{name}-{port}.stats.json"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Node:
        from bench import procs

        self.logdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "channels.cli", "serve", APP, "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "WARNING"]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url, "--node-name", self.name]
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1",
               "BENCH_HISTORY": "on" if self.history else "off",
               "BENCH_HISTORY_SIZE": str(self.size),
               "BENCH_HISTORY_STATS": str(self.stats_path)}
        with open(self.log, "w") as logf:
            self.proc = procs.spawn(cmd, core=self.core, cwd=SRC, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "serving on http://" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not start:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln for ln in lines if "serving on" not in ln][:20]

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError):
            self.stats_path.unlink()
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not self.stats_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} wrote no stats")
            time.sleep(0.02)
        return json.loads(self.stats_path.read_text())  # type: ignore[no-any-return]

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        from bench import procs

        if self.proc is not None:
            procs.stop(self.proc, timeout=10.0)


class Gen:
    """bench/load/history.mjs on the load core, driven phase by phase."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from bench import procs

        self.max_seconds = cfg["maxSeconds"]
        self.proc = procs.spawn(["node", str(GEN), json.dumps(cfg)], core=LOAD_CORE, cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self.deadline = time.monotonic() + self.max_seconds + 30

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the load generator did not answer in time")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the load generator exited ({self.proc.wait(5)})")
            try:
                msg: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                print(f"  [gen] {line.rstrip()}", file=sys.stderr)
                continue
            if msg.get("phase") == "error":
                raise RuntimeError(f"load generator: {msg.get('error')}")
            return msg

    def expect(self, phase: str) -> dict[str, Any]:
        msg = self.next()
        if msg.get("phase") != phase:
            raise RuntimeError(f"expected phase {phase!r}, got {msg}")
        return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        from bench import procs

        procs.stop(self.proc, timeout=5.0)


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
        return {"raw": str(self.path.relative_to(ROOT)),
                **report.profile_summary(self.path, top=20)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_all(pids: dict[str, int]) -> dict[str, float]:
    out = {"t": time.monotonic()}
    for name, pid in pids.items():
        out[name] = _cpu(pid)
    return out


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a if k in b}


# =============================================================================================
# Scenario: fan-out on one node, and across two nodes
# =============================================================================================

def _window(n: int) -> int:
    # gen.mjs's rule (20,000 deliveries in flight, >= 2 broadcasts), capped at 500 broadcasts.
    return min(500, max(2, 20_000 // n))


def fanout_run(args: argparse.Namespace, outdir: Path, *, subs: int, pubs: int,
               history: bool, cluster: bool, profile: str | None) -> dict[str, Any]:
    """One run: fresh nodes (and Redis), the load, CPU of every process per phase."""
    from tests.cluster.redis_server import RedisServer

    busy = wait_quiet()
    res: dict[str, Any] = {"subs": subs, "pubs": pubs, "history": history,
                           "busy_before": busy}
    with contextlib.ExitStack() as stack:
        pids: dict[str, int] = {}
        redis = None
        logdir = outdir / "logs"
        if cluster:
            redis = stack.enter_context(RedisServer())
            assert redis.process is not None
            _pin(redis.process.pid, LOAD_CORE)
            pids["redis"] = redis.process.pid
            a = Node("bench-a", port=_free_port(), core=SERVER_CORE, history=history,
                     logdir=logdir, redis_url=redis.url).start()
            stack.callback(a.stop)
            b = Node("bench-b", port=_free_port(), core=SERVER_CORE, history=history,
                     logdir=logdir, redis_url=redis.url).start()
            stack.callback(b.stop)
            pids["a"], pids["b"] = a.pid, b.pid
            nodes = {"a": a, "b": b}
            cfg_urls = {"pubUrl": a.url, "subUrl": b.url, "countPubs": False}
            per_broadcast = subs
        else:
            a = Node("single", port=_free_port(), core=SERVER_CORE, history=history,
                     logdir=logdir).start()
            stack.callback(a.stop)
            pids["a"] = a.pid
            nodes = {"a": a}
            cfg_urls = {"pubUrl": a.url, "subUrl": a.url, "countPubs": True}
            per_broadcast = subs + pubs
        gen = Gen({"mode": "fanout", "topic": "room:bench", **cfg_urls, "subs": subs,
                   "pubs": pubs, "window": _window(per_broadcast), "duration": args.seconds,
                   "warmup": args.warmup, "payload": PAYLOAD_JSON, "history": history,
                   "concurrency": 100, "settleMs": 500,
                   "maxSeconds": args.seconds + args.warmup + 120})
        stack.callback(gen.stop)
        pids["gen"] = gen.pid
        snaps: dict[str, dict[str, float]] = {}
        stats: dict[str, dict[str, Any]] = {}
        rinfo: dict[str, dict[str, str]] = {}
        rcmds: dict[str, dict[str, dict[str, float]]] = {}
        spy = None
        while True:
            msg = gen.next()
            name = msg["phase"]
            for node in nodes.values():
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"node {node.name} died:\n{node.tail()}")
            snaps[name] = _cpu_all(pids)
            if name in ("measure", "loaded"):
                stats[name] = {k: n.stats() for k, n in nodes.items()}
                if redis is not None:
                    rinfo[name] = redis_info(redis, "stats")
                    rcmds[name] = redis_commandstats(redis)
            if name == "connected":
                res["connected"] = msg
            if name == "measure" and profile is not None and PYSPY.exists():
                spy = Profiler(nodes[profile].pid, outdir / "profiles" /
                               f"{'cluster' if cluster else 'fanout'}-{subs}-{pubs}-"
                               f"{'on' if history else 'off'}-{profile}.txt", args.seconds)
            if name == "loaded":
                loaded = msg
            if name == "done":
                break
            if msg.get("wait"):
                gen.go()
        m = _delta(snaps["measure"], snaps["loaded"])
        wall = m["t"]
        d = loaded["deliveries"]
        bc = loaded["broadcasts"]
        res.update({
            "deliveries": d, "broadcasts": bc, "elapsed": round(loaded["elapsed"], 3),
            "deliveries_per_s": round(loaded["deliveriesPerSec"]),
            "broadcasts_per_s": round(bc / loaded["elapsed"]),
            "lost": loaded["lost"], "backlog_at_stop": loaded["backlogAtStop"],
            "drain_s": round(loaded["drainSeconds"], 3),
            "check": loaded["check"], "window": _window(per_broadcast),
            "gen_cpu_pct": round(100 * m["gen"] / wall, 1),
        })
        for k in nodes:
            res[f"{k}_cpu_pct"] = round(100 * m[k] / wall, 1)
            res[f"{k}_rss_mib"] = round(_rss_kib(pids[k]) / 1024, 1)
        if cluster:
            res["b_us_per_delivery"] = round(1e6 * m["b"] / d, 3) if d else None
            res["a_us_per_broadcast"] = round(1e6 * m["a"] / bc, 2) if bc else None
            res["redis_cpu_pct"] = round(100 * m["redis"] / wall, 1)
            res["redis_us_per_broadcast"] = round(1e6 * m["redis"] / bc, 2) if bc else None
            cmds = (int(rinfo["loaded"]["total_commands_processed"])
                    - int(rinfo["measure"]["total_commands_processed"]))
            res["redis_cmds_per_s"] = round(cmds / wall)
            res["redis_cmds_per_broadcast"] = round(cmds / bc, 3) if bc else None
            c0, c1 = rcmds["measure"], rcmds["loaded"]
            res["redis_commands_per_broadcast"] = {
                k: round((v["calls"] - c0.get(k, {}).get("calls", 0)) / bc, 3)
                for k, v in c1.items() if bc and v["calls"] > c0.get(k, {}).get("calls", 0)}
            sa0, sa1 = stats["measure"]["a"], stats["loaded"]["a"]
            if "appends" in sa1:
                appends = sa1["appends"] - sa0["appends"]
                pipelines = sa1["pipelines"] - sa0["pipelines"]
                res["appends"] = appends
                res["pipelines"] = pipelines
                res["appends_per_pipeline"] = round(appends / pipelines, 2) if pipelines else None
            ad0, ad1 = sa0.get("adapter", {}), sa1.get("adapter", {})
            if ad1:
                calls = ad1["publish_calls"] - ad0["publish_calls"]
                res["a_publish_calls"] = calls
                res["broadcasts_per_publish"] = round(
                    (ad1["published"] - ad0["published"]) / calls, 2) if calls else None
        else:
            res["us_per_delivery"] = round(1e6 * m["a"] / d, 3) if d else None
            res["us_per_broadcast"] = round(1e6 * m["a"] / bc, 2) if bc else None
        res["node_stats"] = stats.get("loaded")
        if cluster and history:
            # Cumulative since the nodes started (warm-up included): how often a node had to
            # fill a gap from the stream, and what it never delivered.
            ha, hb = stats["loaded"]["a"]["history"], stats["loaded"]["b"]["history"]
            res["stored"] = ha["stored"]
            res["gap_fills_b"] = hb["gaps_filled"]
            res["duplicates_b"] = hb["duplicates"]
            res["undelivered_b"] = ha["stored"] - hb["delivered"]
            res["undelivered_a"] = ha["stored"] - ha["delivered"]
            res["gap_fills_per_broadcast"] = round(hb["gaps_filled"] / ha["stored"], 3) \
                if ha["stored"] else None
        res["problems"] = {k: n.problems() for k, n in nodes.items() if n.problems()}
        if spy is not None:
            res["profile"] = spy.finish()
    return res


_FANOUT_KEYS = ("deliveries_per_s", "broadcasts_per_s", "us_per_delivery", "us_per_broadcast",
                "a_cpu_pct", "gen_cpu_pct")
_CLUSTER_KEYS = ("deliveries_per_s", "broadcasts_per_s", "b_us_per_delivery",
                 "a_us_per_broadcast", "redis_us_per_broadcast", "redis_cmds_per_s",
                 "redis_cmds_per_broadcast", "appends_per_pipeline", "broadcasts_per_publish",
                 "gap_fills_per_broadcast", "a_cpu_pct", "b_cpu_pct", "redis_cpu_pct",
                 "gen_cpu_pct")


def _medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = _median(vals)
    out["lost"] = sum(r["lost"] for r in runs)
    for k in ("undelivered_b", "undelivered_a", "gap_fills_b", "stored"):
        if any(k in r for r in runs):
            out[k] = [r.get(k) for r in runs]
    out["check"] = {k: sum(r["check"][k] for r in runs)
                    for k in ("frames", "badPayload", "noPos", "dup", "gap")}
    return out


def scenario_fanout(args: argparse.Namespace, outdir: Path, cluster: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sizes = args.cluster_subs if cluster else args.subs
    pub_counts = args.cluster_pubs if cluster else [1]
    for n in sizes:
        for p in pub_counts:
            key = f"{n}x{p}" if cluster else str(n)
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for rep in range(args.repeat):
                order = ("off", "on") if rep % 2 == 0 else ("on", "off")
                for variant in order:
                    profile = None
                    if args.profile and rep == 0 and variant == "on":
                        profile = ("a" if n <= 10 else "b") if cluster else "a"
                    subs = n if cluster else n - 1
                    label = (f"cluster subs={n} pubs={p}" if cluster else f"fanout N={n}")
                    print(f"history_bench: {label} history {variant} rep {rep + 1}",
                          file=sys.stderr, flush=True)
                    try:
                        r = fanout_run(args, outdir, subs=subs, pubs=p,
                                       history=variant == "on", cluster=cluster,
                                       profile=profile)
                    except Exception as exc:
                        print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
                        r = {"error": str(exc)}
                    runs[variant].append(r)
                    if "error" not in r:
                        print("  " + json.dumps({k: r.get(k) for k in (
                            _CLUSTER_KEYS if cluster else _FANOUT_KEYS)} | {"lost": r["lost"]}),
                            file=sys.stderr, flush=True)
            ok = {v: [r for r in rs if "error" not in r] for v, rs in runs.items()}
            results[key] = {
                "n": n, "pubs": p, "runs": runs,
                "median": {v: _medians(rs, _CLUSTER_KEYS if cluster else _FANOUT_KEYS)
                           for v, rs in ok.items() if rs}}
    return results


# =============================================================================================
# Scenario: 10,000 clients recover at once
# =============================================================================================

def recover_run(args: argparse.Namespace, outdir: Path, *, variant: str, topics: int,
                profile: bool) -> dict[str, Any]:
    from tests.cluster.redis_server import RedisServer

    cluster = variant.startswith("redis")
    history = not variant.endswith("-off")
    positions = history and not variant.endswith("-nopos")
    busy = wait_quiet()
    res: dict[str, Any] = {"variant": variant, "topics": topics, "conns": args.recover_conns,
                           "missed_per_topic": args.missed, "busy_before": busy}
    logdir = outdir / "logs"
    with contextlib.ExitStack() as stack:
        pids: dict[str, int] = {}
        redis = None
        port_b = _free_port()
        if cluster:
            redis = stack.enter_context(RedisServer())
            assert redis.process is not None
            _pin(redis.process.pid, LOAD_CORE)
            pids["redis"] = redis.process.pid
            a = Node("bench-a", port=_free_port(), core=LOAD_CORE, history=history,
                     logdir=logdir, redis_url=redis.url).start()
            stack.callback(a.stop)
            pids["a"] = a.pid
            b = Node("bench-b", port=port_b, core=SERVER_CORE, history=history, logdir=logdir,
                     redis_url=redis.url).start()
            pub_url = a.url
        else:
            b = Node("single", port=port_b, core=SERVER_CORE, history=history,
                     logdir=logdir).start()
            pub_url = b.url
        nodes = {"b": b}
        stack.callback(lambda: nodes["b"].stop())
        pids["b"] = b.pid
        gen = Gen({"mode": "recover", "url": b.url, "pubUrl": pub_url,
                   "conns": args.recover_conns, "topics": topics, "warm": args.warm,
                   "missed": args.missed, "drop": "server" if cluster else "client",
                   "positions": positions, "history": history, "payload": PAYLOAD_JSON,
                   "concurrency": 200, "reconnectConcurrency": args.reconnect_concurrency,
                   "connectTimeout": 60000, "catchUpTimeout": 180,
                   "maxSeconds": 600})
        stack.callback(gen.stop)
        pids["gen"] = gen.pid
        sampler = None
        spy = None
        snaps: dict[str, dict[str, float]] = {}
        while True:
            msg = gen.next()
            name = msg["phase"]
            if name == "connected":
                res["connect"] = msg
                res["b_rss_connected_mib"] = round(_rss_kib(b.pid) / 1024, 1)
            elif name == "ready":
                res["ready"] = msg
                if cluster:
                    b.kill9()  # the node dies with its 10,000 clients
                    res["killed"] = "bench-b"
            elif name == "published":
                res["published"] = msg
                if cluster:
                    # A new node takes the dead one's port (a new name: the old name's
                    # liveness key would hold it back for up to its TTL).
                    b = Node("bench-b2", port=port_b, core=SERVER_CORE, history=history,
                             logdir=logdir, redis_url=redis.url if redis else None).start()
                    nodes["b"] = b
                    pids["b"] = b.pid
                    time.sleep(1.0)  # subscribed to Redis, history store connected
                if redis is not None:
                    redis.command("CONFIG", "RESETSTAT")
                    res["redis_used_memory_mib"] = round(int(redis_info(
                        redis, "memory")["used_memory"]) / 2**20, 1)
                snaps["go"] = _cpu_all(pids)
                sampler = Sampler(redis, {k: v for k, v in pids.items()},
                                  max_seconds=200).start()
                if profile and PYSPY.exists():
                    spy = Profiler(b.pid, outdir / "profiles" /
                                   f"recover-{variant}-{topics}.txt", 15)
            elif name == "recovered":
                snaps["recovered"] = _cpu_all(pids)
                assert sampler is not None
                res["peaks"] = sampler.stop()
                res["recovered"] = msg
                res["b_rss_after_mib"] = round(_rss_kib(b.pid) / 1024, 1)
                if redis is not None:
                    res["redis_commandstats"] = redis_commandstats(redis)
                    res["redis_stats"] = {k: v for k, v in redis_info(redis, "stats").items()
                                          if k in ("total_commands_processed",
                                                   "total_net_output_bytes",
                                                   "total_net_input_bytes")}
                res["b_stats"] = b.stats()
            elif name == "done":
                break
            if msg.get("wait"):
                gen.go()
        m = _delta(snaps["go"], snaps["recovered"])
        wall = m["t"]
        res["window_s"] = round(wall, 3)
        for k in pids:
            res[f"{k}_cpu_s"] = round(m[k], 3)
            res[f"{k}_cpu_pct"] = round(100 * m[k] / wall, 1)
        if redis is not None:
            cmds = int(res["redis_stats"]["total_commands_processed"])
            res["redis_cmds"] = cmds
            res["redis_cmds_per_s"] = round(cmds / wall)
        rec = res["recovered"]
        replayed = rec.get("replayed") or 0
        res["b_us_per_reconnect"] = round(1e6 * m["b"] / args.recover_conns, 1)
        res["b_us_per_replayed"] = round(1e6 * m["b"] / replayed, 2) if replayed else None
        res["problems"] = {k: n.problems() for k, n in nodes.items() if n.problems()}
        if spy is not None:
            res["profile"] = spy.finish()
    return res


_RECOVER_KEYS = ("all_caught_up_s", "all_settled_s", "all_joined_s", "caught_p50_s", "caught_p99_s",
                 "join_reply_p50_ms", "join_reply_p99_ms", "b_cpu_s", "b_cpu_pct",
                 "b_us_per_reconnect", "b_us_per_replayed", "redis_cpu_s", "redis_cpu_pct",
                 "redis_cmds_per_s", "redis_cmds", "gen_cpu_pct", "peak_cmds_per_s")


def scenario_recover(args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for topics in args.recover_topics:
        for variant in args.recover_variants:
            key = f"{variant} T={topics}"
            runs = []
            for rep in range(args.repeat):
                print(f"history_bench: recover {key} rep {rep + 1}", file=sys.stderr,
                      flush=True)
                try:
                    r = recover_run(args, outdir, variant=variant, topics=topics,
                                    profile=args.profile and rep == 0)
                    rec = r["recovered"]
                    r.update({"all_caught_up_s": rec["allCaughtUpS"],
                              "all_settled_s": rec["allSettledS"],
                              "all_joined_s": rec["allJoinedS"],
                              "caught_p50_s": rec["caughtP50S"],
                              "caught_p99_s": rec["caughtP99S"],
                              "join_reply_p50_ms": rec["joinReplyP50Ms"],
                              "join_reply_p99_ms": rec["joinReplyP99Ms"],
                              "peak_cmds_per_s": r["peaks"].get("peak_cmds_per_s")})
                    print("  " + json.dumps({k: r.get(k) for k in _RECOVER_KEYS} | {
                        k: rec[k] for k in ("recovered", "notRecovered", "reasons", "replayed",
                                            "duplicates", "gaps", "errors", "notCaughtUp")}),
                          file=sys.stderr, flush=True)
                except Exception as exc:
                    print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
                    r = {"error": str(exc)}
                runs.append(r)
            ok = [r for r in runs if "error" not in r]
            med: dict[str, Any] = {}
            for k in _RECOVER_KEYS:
                vals = [r[k] for r in ok if r.get(k) is not None]
                if vals:
                    med[k] = _median(vals)
            for k in ("recovered", "notRecovered", "refused", "replayed", "duplicates", "gaps",
                      "errors", "notCaughtUp", "badEpoch"):
                med[k] = [r["recovered"][k] for r in ok]
            med["reasons"] = [r["recovered"]["reasons"] for r in ok]
            results[key] = {"runs": runs, "median": med}
    return results


# =============================================================================================
# Scenario: memory per stored message, and the cost of a join's history read
# =============================================================================================

def _payloads(count: int) -> Any:
    """``count`` distinct decoded payloads, as the server gets them from pushes (orjson)."""
    import orjson

    base = PAYLOAD_JSON
    for i in range(count):
        # Same length, distinct strings (a counter in the body and the timestamp).
        text = base.replace("0042", f"{i % 10000:04d}").replace("1764601234567",
                                                               str(1764601234567 + i))
        yield orjson.loads(text)


def _child_memstore(count: int, topics: int, trace: bool) -> dict[str, Any]:
    """The memory store: ``count`` messages over ``topics`` topics, each topic's size
    ``count // topics`` (every message kept). With ``trace``: tracemalloc's count (its own
    bookkeeping inflates RSS, so RSS is read in a run without it)."""
    per_topic = count // topics
    config = History(size=per_topic, ttl=3600.0)
    store = MemoryHistoryStore()
    names = [f"room:t{k}" for k in range(topics)]
    gen = _payloads(count)
    # Warm up allocator and code paths on a throwaway store.
    warm = MemoryHistoryStore()
    for i, p in enumerate(_payloads(2000)):
        warm.append_now(f"room:w{i % 10}", config, "msg", p)
    del warm
    gc.collect()
    if trace:
        tracemalloc.start(1)
        t0 = tracemalloc.get_traced_memory()[0]
        snap0 = tracemalloc.take_snapshot()
    rss0 = _rss_kib()
    c0 = time.process_time()
    for i, payload in enumerate(gen):
        store.append_now(names[i % topics], config, "msg", payload)
    cpu = time.process_time() - c0
    del payload
    gc.collect()
    rss1 = _rss_kib()
    assert store.stored() == count, store.stored()
    out: dict[str, Any] = {"count": count, "topics": topics, "size": per_topic,
                           "trace": trace, "json_bytes": len(PAYLOAD_JSON)}
    if not trace:
        out.update({"rss_bytes_per_msg": round((rss1 - rss0) * 1024 / count, 1),
                    "rss_mib_per_100k": round((rss1 - rss0) / 1024 * 100_000 / count, 1),
                    "append_cpu_us": round(1e6 * cpu / count, 3)})
        return out
    t1 = tracemalloc.get_traced_memory()[0]
    snap1 = tracemalloc.take_snapshot()
    top = []
    for stat in snap1.compare_to(snap0, "lineno")[:6]:
        frame = stat.traceback[0]
        top.append({"where": f"{Path(frame.filename).name}:{frame.lineno}",
                    "bytes_per_msg": round(stat.size_diff / count, 1)})
    # What the stored parts are, by sys.getsizeof (one entry).
    entry = store._streams[names[0]].entries[0]
    out.update({"traced_bytes_per_msg": round((t1 - t0) / count, 1),
                "getsizeof_entry": sys.getsizeof(entry),
                "getsizeof_payload_dict_and_values": sys.getsizeof(entry.payload) + sum(
                    sys.getsizeof(v) for v in entry.payload.values()),
                "top_lines": top})
    return out


async def _redis_appends(url: str, count: int, topics: int, concurrency: int,
                         redis_pid: int) -> dict[str, Any]:
    import trio

    from channels.history import RedisHistoryStore

    per_topic = count // topics
    config = History(size=per_topic, ttl=3600.0)
    store = RedisHistoryStore(url)
    names = [f"room:t{k}" for k in range(topics)]
    payloads = list(_payloads(count))
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < count:
                i = next_i
                next_i += 1
                await store.append(names[i % topics], config, "msg", payloads[i])

        c0, r0, w0 = time.process_time(), _cpu(redis_pid), time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(worker)
        wall = time.perf_counter() - w0
        out.update({
            "appends_per_s": round(count / wall),
            "client_cpu_us_per_append": round(1e6 * (time.process_time() - c0) / count, 2),
            "redis_cpu_us_per_append": round(1e6 * (_cpu(redis_pid) - r0) / count, 2),
            "appends_per_pipeline": round(store.appends / store.pipelines, 2),
        })
        nursery.cancel_scope.cancel()
    return out


def _child_redismem(url: str, count: int, topics: int, concurrency: int,
                    redis_pid: int) -> dict[str, Any]:
    import trio

    from tests.cluster.redis_server import RedisServer

    port = int(url.rsplit(":", 1)[1])
    rs = RedisServer(port=port)  # a handle for command(); the orchestrator owns the process

    def used() -> int:
        return int(redis_info(rs, "memory")["used_memory"])

    m0 = used()
    out = trio.run(_redis_appends, url, count, topics, concurrency, redis_pid)
    m1 = used()
    length = rs.command("XLEN", "trio_channels:hist:room:t0")
    return {"count": count, "topics": topics, "size": count // topics,
            "concurrency": concurrency, **out,
            "used_memory_bytes_per_msg": round((m1 - m0) / count, 1),
            "used_memory_mib_per_100k": round((m1 - m0) / 2**20 * 100_000 / count, 1),
            "stream_length_t0": length}


async def _join_reads(url: str | None, size: int, calls: int) -> dict[str, Any]:
    """What a join's history read costs with a full history of ``size`` entries: a first join
    (no position), a join at the top (nothing missed), 50 missed, and ``{"last": 10}``."""
    import trio

    from channels.history import HistoryService, RedisHistoryStore

    config = History(size=size, ttl=3600.0)
    store: Any = RedisHistoryStore(url) if url else MemoryHistoryStore()
    service = HistoryService([("room:*", config)], store)
    out: dict[str, Any] = {"store": "redis" if url else "memory", "size": size}
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        payloads = list(_payloads(size))
        for p in payloads:
            await store.append("room:j", config, "msg", p)
        epoch, top, _ = await store.since("room:j", 0, config, 1)
        cases = {"first join (no position)": None,
                 "at the top (0 missed)": {"epoch": epoch, "offset": top},
                 "50 missed": {"epoch": epoch, "offset": top - 50},
                 "last 10": {"last": 10}}
        for name, wanted in cases.items():
            for _ in range(min(50, calls)):  # warm-up
                await service.recover("room:j", config, wanted)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                plan = await service.recover("room:j", config, wanted)
            out[name] = {"cpu_us": round(1e6 * (time.process_time() - c0) / calls, 1),
                         "wall_us": round(1e6 * (time.perf_counter() - w0) / calls, 1),
                         "replayed": len(plan.replay),
                         "replayed_offsets": [plan.replay[0].offset, plan.replay[-1].offset]
                         if plan.replay else None, "top": top}
        nursery.cancel_scope.cancel()
    return out


def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    from bench import procs
    from tests.cluster.redis_server import RedisServer

    def child(kind: str, extra: list[str], core: int | None = SERVER_CORE) -> dict[str, Any]:
        wait_quiet()
        proc = procs.spawn([sys.executable, "-m", "bench.history_bench", "--child", kind,
                            *extra], core=core, cwd=SRC,
                           env={**os.environ, "PYTHONPATH": str(SRC)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            procs.stop(proc)
        for line in out.splitlines():
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])  # type: ignore[no-any-return]
        raise RuntimeError(f"child {kind} failed ({proc.returncode}):\n{out[-2000:]}\n"
                           f"{err[-3000:]}")

    res: dict[str, Any] = {"memory_store": [], "redis": [], "joins": []}
    for topics in args.mem_topics:
        for _ in range(args.repeat):
            for trace in ([], ["--trace"]):
                r = child("memstore", ["--count", str(args.mem_count), "--topics", str(topics),
                                       *trace])
                print("  " + json.dumps(r), file=sys.stderr, flush=True)
                res["memory_store"].append(r)
    for topics in args.mem_topics:
        for _ in range(args.repeat):
            with RedisServer() as redis:
                assert redis.process is not None
                _pin(redis.process.pid, LOAD_CORE)
                r = child("redismem", ["--count", str(args.mem_count), "--topics", str(topics),
                                       "--redis-url", redis.url, "--redis-pid",
                                       str(redis.process.pid)])
                r["redis_version"] = redis_info(redis, "server").get("redis_version")
            print("  " + json.dumps(r), file=sys.stderr, flush=True)
            res["redis"].append(r)
    res["joins"].append(child("joins", ["--count", str(args.join_calls)]))
    with RedisServer() as redis:
        assert redis.process is not None
        _pin(redis.process.pid, LOAD_CORE)
        res["joins"].append(child("joins", ["--count", str(args.join_calls // 4),
                                            "--redis-url", redis.url]))
    for j in res["joins"]:
        print("  " + json.dumps(j), file=sys.stderr, flush=True)
    return res


# =============================================================================================
# Tables
# =============================================================================================

def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    if isinstance(x, (int, float)):
        return f"{round(x):,}" if abs(x) >= 100 or not digits else f"{x:,.{digits}f}"
    return str(x)


def print_tables(res: dict[str, Any]) -> None:
    if "fanout" in res:
        print("\n### One node (memory store): 1 publisher -> N subscribers, history off / on\n")
        print("| N | history | deliveries/s | broadcasts/s | server CPU | CPU µs per delivery "
              "| CPU µs per broadcast | lost | checked (dup/gap) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for key, r in res["fanout"].items():
            for v in ("off", "on"):
                m = r["median"].get(v)
                if not m:
                    continue
                c = m["check"]
                print(f"| {int(key):,} | {v} | {_fmt(m.get('deliveries_per_s'))} | "
                      f"{_fmt(m.get('broadcasts_per_s'))} | {_fmt(m.get('a_cpu_pct'), 1)}% | "
                      f"{_fmt(m.get('us_per_delivery'), 2)} | {_fmt(m.get('us_per_broadcast'), 1)}"
                      f" | {m['lost']} | {c['frames']:,} ({c['dup']}/{c['gap']}) |")
    if "cluster" in res:
        print("\n### Two nodes + Redis: P publishers on A -> N subscribers on B, "
              "history off / on\n")
        print("| N on B | P on A | history | deliveries/s on B | broadcasts/s | B µs/delivery "
              "| A µs/broadcast | Redis µs/broadcast | Redis cmds/broadcast | appends/pipeline "
              "| gap fills/broadcast | CPU A / B / Redis | lost (undelivered on B) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["cluster"].values():
            for v in ("off", "on"):
                m = r["median"].get(v)
                if not m:
                    continue
                print(f"| {r['n']:,} | {r['pubs']} | {v} | {_fmt(m.get('deliveries_per_s'))} | "
                      f"{_fmt(m.get('broadcasts_per_s'))} | "
                      f"{_fmt(m.get('b_us_per_delivery'), 2)} | "
                      f"{_fmt(m.get('a_us_per_broadcast'), 1)} | "
                      f"{_fmt(m.get('redis_us_per_broadcast'), 1)} | "
                      f"{_fmt(m.get('redis_cmds_per_broadcast'), 2)} | "
                      f"{_fmt(m.get('appends_per_pipeline'), 2)} | "
                      f"{_fmt(m.get('gap_fills_per_broadcast'), 3)} | "
                      f"{_fmt(m.get('a_cpu_pct'))}% / {_fmt(m.get('b_cpu_pct'))}% / "
                      f"{_fmt(m.get('redis_cpu_pct'))}% | {m['lost']} "
                      f"({m.get('undelivered_b', '-')}) |")
    if "recover" in res:
        conns = res.get("args", {}).get("recover_conns", 10_000)
        print(f"\n### {conns:,} clients reconnect at once and recover\n")
        print("| variant | all joined s | all settled s (all caught up?) | caught up p50 / p99 s "
              "| join reply p50 / p99 ms | recovered (refused) | dup / gap | node CPU s (%) | "
              "node µs per client | Redis CPU s (%) | Redis cmds/s (peak) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for key, r in res["recover"].items():
            m = r["median"]
            if "all_settled_s" not in m:
                continue
            runs = [x for x in r["runs"] if "error" not in x]
            caught = "yes" if all(x.get("all_caught_up_s") is not None for x in runs) else "no"
            print(f"| {key} | {_fmt(m.get('all_joined_s'), 2)} | "
                  f"{_fmt(m.get('all_settled_s'), 2)} ({caught}) | "
                  f"{_fmt(m.get('caught_p50_s'), 2)} / {_fmt(m.get('caught_p99_s'), 2)} | "
                  f"{_fmt(m.get('join_reply_p50_ms'), 1)} / "
                  f"{_fmt(m.get('join_reply_p99_ms'), 1)} | "
                  f"{', '.join(str(x) for x in m['recovered'])} "
                  f"({', '.join(str(x) for x in m['notRecovered'])}) "
                  f"| {sum(m['duplicates'])} / {sum(m['gaps'])} | {_fmt(m.get('b_cpu_s'), 2)} "
                  f"({_fmt(m.get('b_cpu_pct'))}%) | {_fmt(m.get('b_us_per_reconnect'))} | "
                  f"{_fmt(m.get('redis_cpu_s'), 2)} ({_fmt(m.get('redis_cpu_pct'))}%) | "
                  f"{_fmt(m.get('redis_cmds_per_s'))} ({_fmt(m.get('peak_cmds_per_s'))}) |")
    if "memory" in res:
        mem = res["memory"]
        print("\n### Memory per stored message (~200-byte payload)\n")
        print("| store | layout | bytes per message | per 100k messages | runs |")
        print("|---|---|---|---|---|")
        for topics in sorted({r["topics"] for r in mem["memory_store"]}):
            rt = [r for r in mem["memory_store"] if r["topics"] == topics and r["trace"]]
            rr = [r for r in mem["memory_store"] if r["topics"] == topics and not r["trace"]]
            print(f"| memory (tracemalloc) | {topics:,} topics x {rt[0]['size']:,} | "
                  f"{_median([r['traced_bytes_per_msg'] for r in rt]):,.0f} | "
                  f"{_median([r['traced_bytes_per_msg'] for r in rt]) * 1e5 / 2**20:.1f} MiB | "
                  f"{', '.join(str(round(r['traced_bytes_per_msg'])) for r in rt)} |")
            print(f"| memory (RSS) | {topics:,} topics x {rr[0]['size']:,} | "
                  f"{_median([r['rss_bytes_per_msg'] for r in rr]):,.0f} | "
                  f"{_median([r['rss_mib_per_100k'] for r in rr]):.1f} MiB | "
                  f"{', '.join(str(round(r['rss_bytes_per_msg'])) for r in rr)} |")
        for topics in sorted({r["topics"] for r in mem["redis"]}):
            rs = [r for r in mem["redis"] if r["topics"] == topics]
            print(f"| Redis (used_memory) | {topics:,} topics x {rs[0]['size']:,} | "
                  f"{_median([r['used_memory_bytes_per_msg'] for r in rs]):,.0f} | "
                  f"{_median([r['used_memory_mib_per_100k'] for r in rs]):.1f} MiB | "
                  f"{', '.join(str(round(r['used_memory_bytes_per_msg'])) for r in rs)} |")
        print("\n| store | layout | appends/s | appends per pipeline | client CPU µs/append | "
              "Redis CPU µs/append |")
        print("|---|---|---|---|---|---|")
        for r in mem["redis"]:
            print(f"| Redis, {r['concurrency']} appenders | {r['topics']:,} topics | "
                  f"{r['appends_per_s']:,} | {r['appends_per_pipeline']} | "
                  f"{r['client_cpu_us_per_append']} | {r['redis_cpu_us_per_append']} |")
        print("\n| store | history read by a join (full history of 500) | CPU µs | wall µs | "
              "replayed |")
        print("|---|---|---|---|---|")
        for j in mem["joins"]:
            for case, v in j.items():
                if isinstance(v, dict):
                    print(f"| {j['store']} | {case} | {v['cpu_us']} | {v['wall_us']} | "
                          f"{v['replayed']} {v['replayed_offsets'] or ''} (top {v['top']}) |")


# =============================================================================================
# Main
# =============================================================================================

def _snapshot_sources(dest: Path) -> Path:
    import shutil

    for rel in SOURCE_DIRS:
        src = ROOT / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / rel)
    tests = dest / "tests" / "cluster"
    tests.mkdir(parents=True, exist_ok=True)
    for rel in ("tests/__init__.py", "tests/cluster/__init__.py",
                "tests/cluster/redis_server.py"):
        if (ROOT / rel).exists():
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "channels", "supervisor",
                                "presence"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout
        if dirty.strip():
            return head + " + uncommitted edits to " + ", ".join(
                line[3:] for line in dirty.splitlines() if line.strip())
        return head
    except (OSError, subprocess.SubprocessError):
        return "?"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    all_scenarios = ["fanout", "cluster", "recover", "memory"]
    parser.add_argument("--scenarios", default=",".join(all_scenarios),
                        help="comma-separated subset of: " + ", ".join(all_scenarios))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition, 2 s phases, small sizes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--subs", default="1,10,100,1000",
                        help="fanout: N (connections on the topic, the publisher included)")
    parser.add_argument("--cluster-subs", default="1,100,1000", help="cluster: N on node B")
    parser.add_argument("--cluster-pubs", default="1,16", help="cluster: publishers on node A")
    parser.add_argument("--recover-conns", type=int, default=10_000)
    parser.add_argument("--recover-topics", default="100",
                        help="recover: topics the clients are spread over")
    parser.add_argument("--recover-variants", default="memory,memory-off,redis,redis-off",
                        help="memory[-off|-nopos], redis[-off|-nopos]")
    parser.add_argument("--warm", type=int, default=5,
                        help="recover: messages per topic before the clients go away")
    parser.add_argument("--missed", type=int, default=50,
                        help="recover: messages per topic while they are away")
    parser.add_argument("--reconnect-concurrency", type=int, default=1000,
                        help="recover: handshakes in flight when the clients come back")
    parser.add_argument("--mem-count", type=int, default=100_000)
    parser.add_argument("--mem-topics", default="1,1000")
    parser.add_argument("--join-calls", type=int, default=2000)
    parser.add_argument("--quiet-busy", type=float, default=0.3,
                        help="before each run, wait until the machine is less busy than this "
                             "(fraction of all CPUs over 2 s; the machine may be shared)")
    parser.add_argument("--quiet-wait", type=float, default=120,
                        help="wait at most this long for that (0: do not wait)")
    parser.add_argument("--live", action="store_true",
                        help="children import the working tree, not a copy made at the start")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the node(s) of the first history-on repetition")
    parser.add_argument("--tables", metavar="RESULTS_JSON",
                        help="print the tables of an earlier run's results.json and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topics", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        return _child(args)
    if args.tables:
        print_tables(json.loads(Path(args.tables).read_text()))
        return 0
    if args.quick:
        args.repeat = 1
        args.seconds = 2.0
        args.subs = "1,100"
        args.cluster_subs = "1,100"
        args.cluster_pubs = "1"
        args.recover_conns = min(args.recover_conns, 1000)
        args.recover_topics = "10"
        args.mem_count = 20_000
        args.join_calls = 400
    args.subs = _ints(args.subs)
    args.cluster_subs = _ints(args.cluster_subs)
    args.cluster_pubs = _ints(args.cluster_pubs)
    args.recover_topics = _ints(args.recover_topics)
    args.recover_variants = args.recover_variants.split(",")
    args.mem_topics = _ints(args.mem_topics)
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(all_scenarios)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    from bench import procs, report

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "bench" / "results" / f"history-{stamp}"
    outdir.mkdir(parents=True, exist_ok=True)
    global SRC
    QUIET.update(max_busy=args.quiet_busy, timeout=args.quiet_wait)
    if not args.live:
        SRC = _snapshot_sources(outdir / "src")
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git_commit(), "python": platform.python_version(),
        "machine": report.machine_info(ROOT), "load_before": os.getloadavg(),
        "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True).stdout.strip(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for name in scenarios:
            t0 = time.monotonic()
            print(f"history_bench: {name} ...", file=sys.stderr, flush=True)
            if name == "fanout":
                res["fanout"] = scenario_fanout(args, outdir, cluster=False)
            elif name == "cluster":
                res["cluster"] = scenario_fanout(args, outdir, cluster=True)
            elif name == "recover":
                res["recover"] = scenario_recover(args, outdir)
            elif name == "memory":
                res["memory"] = scenario_memory(args)
            print(f"history_bench: {name} done in {time.monotonic() - t0:.0f}s",
                  file=sys.stderr, flush=True)
            (outdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    finally:
        procs.stop_all()
    res["load_after"] = os.getloadavg()
    (outdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"# history benchmark {res['date']}, commit {res['commit']}, load before "
          f"{res['load_before'][0]:.2f}, after {res['load_after'][0]:.2f}")
    print_tables(res)
    print(f"\nresults: {(outdir / 'results.json').relative_to(ROOT)}", file=sys.stderr)
    return 0


def _child(args: argparse.Namespace) -> int:
    import trio

    if args.child == "memstore":
        out = _child_memstore(args.count, args.topics, args.trace)
    elif args.child == "redismem":
        out = _child_redismem(args.redis_url, args.count, args.topics, 64, args.redis_pid)
    elif args.child == "joins":
        out = trio.run(_join_reads, args.redis_url, 500, args.count)
    else:
        raise SystemExit(f"unknown child {args.child}")
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
