"""Presence benchmarks (not tests): ``python -m bench.presence_bench [--crowd SIZES]``.

* In one process (the default): a ``Tracker`` with the local pubsub (no network): track and
  untrack throughput and ``list`` latency, for 10,000 presences on one topic and for 10,000
  topics of one presence each.
* ``--crowd 1000,2000,4000,10000``: **N users joining one presence topic at once**, in
  separate processes on loopback: a server (``trio-channels serve bench.presence_bench:endpoint``,
  pinned to core 0) whose channel tracks every joiner, and the Node load
  (``bench/load/presence_crowd.mjs``, pinned to core 1) with N Phoenix V2 clients that connect,
  then all send ``phx_join`` at once and apply ``presence_state`` / ``presence_diff`` as
  phoenix.js does, until every client has seen everyone. Reported: wall time from the joins to
  the last client converged, the server's CPU time over that span (``/proc``), messages and
  bytes the clients received (= what the server sent them), the server's RSS and peak RSS.
  ``--presence-rev REV`` runs the server with ``presence/`` as of that git revision (the
  "before" numbers); ``--window S`` sets ``Presence(diff_window=S)`` on the server.

Sources are frozen for a run: ``channels/``, ``supervisor/``, ``presence/`` and this module are
copied to ``bench/results/presence-<timestamp>/src/`` and the server imports from there.
Results: a table on stdout and ``results.json`` in that directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio

from channels import Channel, Endpoint, Socket
from channels.pubsub import PubSub
from presence import Presence
from presence.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
LOAD = ROOT / "bench" / "load" / "presence_crowd.mjs"
PYSPY = ROOT / "bench" / ".venv" / "bin" / "py-spy"
SERVER_CORE = 0
LOAD_CORE = 1
TOPIC = "crowd:one"

# =============================================================================================
# The crowd app (the server under benchmark)
# =============================================================================================

# Only given when set: the same app runs on a presence/ without diff_window (--presence-rev).
_window = os.environ.get("BENCH_PRESENCE_WINDOW")
_options: dict[str, Any] = {"diff_window": float(_window)} if _window else {}
presence = Presence(**_options)


class CrowdChannel(Channel):
    """Tracks every joiner under its ``user`` param, with an empty meta (only ``phx_ref``)."""

    async def join(self, topic: str, params: dict[str, Any]) -> dict[str, Any] | None:
        self.assigns["user"] = str(params.get("user", "anon"))
        self.send_after(0, "track")
        return None

    async def handle_info(self, message: Any) -> None:
        if message == "track":
            await presence.track(self, self.assigns["user"], {})


class CrowdSocket(Socket):
    channels = {"crowd:*": CrowdChannel}
    # The load sends no heartbeats; a crowd joins faster than a real client pushes.
    idle_timeout = 600.0
    rate_limit = None
    write_timeout = 120.0


endpoint = Endpoint({"/socket": CrowdSocket}, presence=presence)


async def scenario(n: int, one_topic: bool) -> dict[str, Any]:
    diffs = 0

    def on_diff(topic: str, joins: Any, leaves: Any) -> None:
        nonlocal diffs
        diffs += 1

    pubsub = PubSub()
    tracker = Tracker(pubsub, on_diff=on_diff)
    out: dict[str, Any] = {"presences": n, "layout": "1 topic" if one_topic else f"{n} topics"}
    async with trio.open_nursery() as nursery:
        await nursery.start(pubsub.run)
        await nursery.start(tracker.run)

        def topic(i: int) -> str:
            return "room:big" if one_topic else f"room:{i}"

        t0 = time.perf_counter()
        for i in range(n):
            tracker.track(f"owner-{i}", topic(i), f"user-{i}", {"online_at": i})
        out["track_per_s"] = round(n / (time.perf_counter() - t0))

        samples = []
        for i in range(50 if one_topic else 2000):
            t = time.perf_counter()
            result = tracker.list(topic(i))
            samples.append(time.perf_counter() - t)
            assert result
        samples.sort()
        out["list_p50_ms"] = round(statistics.median(samples) * 1000, 3)
        out["list_p99_ms"] = round(samples[int(len(samples) * 0.99) - 1] * 1000, 3)
        if one_topic:
            assert len(tracker.list("room:big")) == n

        t0 = time.perf_counter()
        for i in range(n):
            tracker.untrack(f"owner-{i}", topic(i), f"user-{i}")
        out["untrack_per_s"] = round(n / (time.perf_counter() - t0))
        assert diffs == 2 * n
        nursery.cancel_scope.cancel()
    return out


# =============================================================================================
# The crowd orchestrator
# =============================================================================================

SERVING = re.compile(r"serving on http://([\d.]+):(\d+)")


def _freeze(dest: Path, presence_rev: str | None) -> Path:
    """Copy what the server imports to ``dest/src`` (``presence/`` from ``presence_rev`` if
    given), so that edits landing mid-run cannot mix versions."""
    src = dest / "src"
    for name in ("channels", "supervisor", "presence"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "bench").mkdir(parents=True)
    for name in ("__init__.py", "procs.py", "presence_bench.py"):
        shutil.copy2(ROOT / "bench" / name, src / "bench" / name)
    if presence_rev:
        shutil.rmtree(src / "presence")
        archive = subprocess.run(["git", "archive", presence_rev, "presence"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def crowd_run(n: int, src: Path, window: float | None, converge_seconds: float,
              verify: int, profile: Path | None = None) -> dict[str, Any]:
    """One server, one load process: N clients join one presence topic at once. With
    ``profile``, py-spy samples the server from the joins to convergence (raw stacks there)."""
    from bench import procs

    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("BENCH_PRESENCE_WINDOW", None)
    if window is not None:
        env["BENCH_PRESENCE_WINDOW"] = str(window)
    server = procs.spawn(
        [sys.executable, "-m", "channels.cli", "serve", "bench.presence_bench:endpoint",
         "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING"],
        core=SERVER_CORE, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            log.append(line)
            m = SERVING.search(line)
            if m and not ready.is_set():
                port.append(int(m.group(2)))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    load = None
    try:
        if not ready.wait(30):
            raise RuntimeError("server did not start:\n" + "".join(log))
        config = {"url": f"ws://127.0.0.1:{port[0]}", "n": n, "topic": TOPIC,
                  "concurrency": 200, "verify": verify, "convergeSeconds": converge_seconds,
                  "maxSeconds": converge_seconds + 300}
        load = procs.spawn(["node", str(LOAD), json.dumps(config)], core=LOAD_CORE, cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert load.stdin is not None and load.stdout is not None
        phases: dict[str, Any] = {}
        spy = None
        snaps: dict[str, dict[str, float]] = {"idle": procs.snapshot(server.pid)}
        for line in load.stdout:
            msg = json.loads(line)
            name = msg.get("phase")
            if name == "error":
                raise RuntimeError(f"load failed: {msg['error']}")
            phases[name] = msg
            if msg.get("wait"):
                snaps[name] = procs.snapshot(server.pid)
                if spy is not None:
                    procs.stop(spy, timeout=20, sig=signal.SIGINT)
                    spy = None
                if name == "connected" and profile is not None and PYSPY.exists():
                    spy = procs.spawn([str(PYSPY), "record", "--nonblocking", "--rate", "200",
                                       "-p", str(server.pid), "-f", "raw", "-o", str(profile)],
                                      core=LOAD_CORE, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                load.stdin.write("\n")
                load.stdin.flush()
            if name == "result":
                break
        if "result" not in phases:
            raise RuntimeError(f"the load ended without a result (exit {load.wait(10)})")
        result = phases["result"]
        go, end = snaps["connected"], snaps["converged"]
        out = {
            "n": n,
            "converged": result["converged"],
            "wall_s": round(result["wall"], 3),
            "server_cpu_s": round(end["cpu"] - go["cpu"], 2),
            "messages": result["frames"],
            "bytes": result["bytes"],
            "by_event": result["byEvent"],
            "converged_p50_s": result["convergedP50"],
            "converged_p99_s": result["convergedP99"],
            "converged_max_s": result["convergedMax"],
            "join_reply_max_s": result["joinReplyMax"],
            "join_ok": result["joinOk"],
            "bad_frames": result["badFrames"],
            "closed": result["closed"],
            "rss_idle_mib": round(snaps["idle"]["rss_kib"] / 1024, 1),
            "rss_connected_mib": round(go["rss_kib"] / 1024, 1),
            "rss_converged_mib": round(end["rss_kib"] / 1024, 1),
            "rss_peak_mib": round(end["hwm_kib"] / 1024, 1),
            "connect_s": round(phases["connected"]["seconds"], 2),
            "load_cpu_s": round(result["loadCpuSeconds"], 2),
            "load_user_s": round(result.get("loadUserSeconds", 0), 2),
            "load_system_s": round(result.get("loadSystemSeconds", 0), 2),
            "distinct_payloads": result["distinctPayloads"],
            "verified": result["verified"],
            "verified_same": result["verifiedSame"],
        }
        return out
    finally:
        if load is not None:
            procs.stop(load, timeout=5)
        procs.stop(server, timeout=10)


def crowd_main(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.crowd.split(",")]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = ROOT / "bench" / "results" / f"presence-{stamp}"
    src = _freeze(dest, args.presence_rev)
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--short", "--", "channels", "presence", "supervisor")),
        "presence_rev": args.presence_rev,
        "window": args.window,
        "python": platform.python_version(),
        "node": subprocess.run(["node", "--version"], capture_output=True,
                               text=True).stdout.strip(),
        "nproc": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    runs = []
    for n in sizes:
        for rep in range(args.repeat):
            print(f"crowd n={n} rep={rep + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
            profile = dest / f"profile-{n}-{rep + 1}.txt" if args.profile else None
            run = crowd_run(n, src, args.window, args.converge_seconds, args.verify, profile)
            run["rep"] = rep + 1
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k not in ("by_event", "verified")}),
                  file=sys.stderr, flush=True)
    (dest / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    print(json.dumps(meta))
    print("\n| N | converged | wall s | server CPU s | messages | MB sent | p50 / max client s "
          "| server RSS connected → peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        p50 = r["converged_p50_s"]
        mx = r["converged_max_s"]
        times = f"{p50:.2f} / {mx:.2f}" if p50 is not None and mx is not None else "-"
        print(f"| {r['n']:,} | {r['converged']:,} | {r['wall_s']:.2f} | {r['server_cpu_s']:.2f} "
              f"| {r['messages']:,} | {r['bytes'] / 1e6:,.0f} | {times} "
              f"| {r['rss_connected_mib']} → {r['rss_peak_mib']} |")
    print(f"\nresults: {dest / 'results.json'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--crowd", metavar="SIZES",
                        help="run the crowd scenario for these N (comma-separated) instead")
    parser.add_argument("--presence-rev", help="crowd: presence/ from this git revision")
    parser.add_argument("--window", type=float, help="crowd: Presence(diff_window=...)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--converge-seconds", type=float, default=120.0,
                        help="crowd: give up waiting for convergence after this long")
    parser.add_argument("--profile", action="store_true",
                        help="crowd: py-spy the server (bench/.venv, see bench/run)")
    parser.add_argument("--verify", type=int, default=3,
                        help="crowd: clients that also keep phoenix.js's own Presence state")
    args = parser.parse_args()
    if args.crowd:
        crowd_main(args)
        return
    results = [trio.run(scenario, args.n, True), trio.run(scenario, args.n, False)]
    print(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
    print("\n| layout | presences | track/s | untrack/s | list p50 (ms) | list p99 (ms) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['presences']:,} | {r['track_per_s']:,} | "
              f"{r['untrack_per_s']:,} | {r['list_p50_ms']} | {r['list_p99_ms']} |")


if __name__ == "__main__":
    main()
