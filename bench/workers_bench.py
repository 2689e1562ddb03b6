"""1 vs N workers (``serve --workers N``): ``.venv/bin/python -m bench.workers_bench``.

The same Node generator (bench/load/gen.mjs) and phases as ``bench/run``, against the bench app
served by the supervisor with 1, 2, ... workers. The server's CPU time is read for the whole
process tree (supervisor, workers, private redis-server) at each phase, and reported per
process, so the cost of the cluster (Redis, the receiving workers) is visible on its own.

Scenarios:

- ``fanout``: N connections on ``room:bench``, connection 0 publishes (``bench/run``'s
  fan-out): with 2 workers about half the subscribers are on the other worker, so every
  broadcast crosses Redis once;
- ``echo``: C clients with one push in flight each (local to each worker);
- ``cross``: one connection that publishes to itself, ``--cross-windows`` broadcasts in flight:
  with 2 workers the other worker receives every broadcast for no subscriber, so its CPU per
  broadcast is the cost of being a cluster node, and Redis's the cost of carrying it.

Also ``--redis-publish``: one redis-server's ``PUBLISH`` throughput and CPU per ``PUBLISH``
on a Unix socket with K subscriber connections (``redis-benchmark`` publishing, one Python
process draining the subscribers).

Results go to ``bench/results/workers-<timestamp>/results.json`` and are printed as tables.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.apps.common import DEFAULT_PAYLOAD
from bench.orchestrator import (
    GEN,
    MAIN_PY,
    ROOT,
    RunSpec,
    free_port,
    read_line,
    snapshot_sources,
    source_addrs,
    summarize,
    tail,
    wait_ready,
)

APP = "bench.apps.channels_app:endpoint"


# -- the process tree --------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, cpu seconds) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / procs.CLK_TCK


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if cmd and b"redis-server" in cmd[0]:
        return "redis"
    if b"--node-name" in cmd:
        return "worker " + cmd[cmd.index(b"--node-name") + 1].decode().rsplit("-", 1)[-1]
    return "other"


def tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every descendant, by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents[int(entry)], cpu[int(entry)] = st
    out = {}
    for pid in cpu:
        p = pid
        while p in parents and p != root and p > 1:
            p = parents[p]
        if p == root:
            out[pid] = cpu[pid]
    return out


def tree_snapshot(root: int, roles: dict[int, str], extra: tuple[int, ...] = ()
                  ) -> dict[str, Any]:
    by_pid = tree(root)
    for pid in extra:
        st = _stat(pid)
        if st is not None:
            by_pid[pid] = st[1]
    rss = 0
    for pid in by_pid:
        roles.setdefault(pid, _role(pid, root))
        try:
            rss += procs.memory_kib(pid).get("VmRSS", 0)
        except OSError:
            pass
    return {"t": time.monotonic(), "cpu": sum(by_pid.values()), "rss_kib": rss, "hwm_kib": 0,
            "by_pid": by_pid}


# -- one generator run -------------------------------------------------------------------------

def run(args: argparse.Namespace, src: Path, outdir: Path, scenario: str, spec: str,
        conns: int, window: int, index: int) -> dict[str, Any]:
    """One generator run against ``--workers N``; spec ``"Nr"``: N workers with
    ``--redis-url`` to a redis-server of the bench's own (so ``1r`` is one worker that
    publishes every broadcast to Redis for nobody: the sender's side of the cost)."""
    workers = int(spec.rstrip("r"))
    port = free_port()
    tag = f"{scenario}-w{spec}-{conns}-win{window}-{index}"
    log = outdir / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(src),
               BENCH_PAYLOAD=args.payload)
    argv = [str(MAIN_PY), "-m", "channels.cli", "serve", APP, "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "WARNING", "--workers", str(workers)]
    redis_dir = redis = None
    if spec.endswith("r"):
        redis_dir = tempfile.mkdtemp(prefix="trio-channels-bench-")
        sock_path = os.path.join(redis_dir, "redis.sock")
        redis = procs.spawn(["redis-server", "--port", "0", "--unixsocket", sock_path, "--save",
                             "", "--appendonly", "no", "--dir", redis_dir], core=None,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(250):
            if os.path.exists(sock_path):
                break
            time.sleep(0.02)
        argv += ["--redis-url", f"unix://{sock_path}"]
    extra = (redis.pid,) if redis is not None else ()
    if args.server_cpus:
        argv = ["taskset", "-c", args.server_cpus, *argv]
    mode = "fanout" if scenario in ("fanout", "cross") else "echo"
    cfg = {"url": f"ws://127.0.0.1:{port}", "proto": "phoenix", "mode": mode, "conns": conns,
           "duration": args.duration, "warmup": args.warmup, "concurrency": 100,
           "window": window, "payload": args.payload,
           "localAddrs": source_addrs(index, conns), "perAddr": 20_000,
           "connectTimeout": 15000, "drainTimeout": 10, "maxSeconds": 240}
    result: dict[str, Any] = {"scenario": scenario, "workers": spec, "conns": conns,
                              "window": window}
    print(f"- {tag}: ", end="", flush=True)
    srv = gen = None
    roles: dict[int, str] = {}
    with open(log, "w") as logf:
        try:
            srv = procs.spawn(argv, core=None, cwd=src, env=env, stdout=logf,
                              stderr=subprocess.STDOUT)
            wait_ready(srv, log, 60.0)
            gen_cmd = ["node", str(GEN), json.dumps(cfg)]
            if args.load_cpus:
                gen_cmd = ["taskset", "-c", args.load_cpus, *gen_cmd]
            gen = procs.spawn(gen_cmd, core=None, cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=None)
            deadline = time.monotonic() + 270
            snaps: dict[str, dict[str, Any]] = {}
            phases: dict[str, dict[str, Any]] = {}
            while True:
                msg = read_line(gen, deadline)
                name = str(msg.get("phase"))
                if name == "error":
                    raise RuntimeError(f"load generator: {msg.get('error')}")
                if name == "warn":
                    print(f"\n  warning from generator: {msg}", file=sys.stderr)
                    continue
                if name == "connected":
                    time.sleep(1.0)
                snaps[name] = tree_snapshot(srv.pid, roles, extra)
                snaps[name]["gen_cpu"] = procs.cpu_seconds(gen.pid)
                phases[name] = msg
                if name == "done":
                    break
                if msg.get("wait"):
                    assert gen.stdin is not None
                    gen.stdin.write("go\n")
                    gen.stdin.flush()
            result.update(summarize(RunSpec(mode, "channels", conns), snaps, phases))
            m0, m1 = snaps["measure"]["by_pid"], snaps["loaded"]["by_pid"]
            per_role: dict[str, float] = {}
            for pid, cpu in m1.items():
                role = roles.get(pid, "other")
                per_role[role] = per_role.get(role, 0.0) + cpu - m0.get(pid, cpu)
            result["cpu_by_process"] = per_role
            result["wall"] = snaps["loaded"]["t"] - snaps["measure"]["t"]
            result["ok"] = True
            print(line(result))
        except Exception as exc:
            result["ok"] = False
            result["error"] = str(exc)
            print(f"FAILED: {exc}\n{tail(log)}")
        finally:
            if gen is not None:
                procs.stop(gen, timeout=5.0)
            if srv is not None:
                procs.stop(srv, timeout=40.0)
            if redis is not None:
                procs.stop(redis, timeout=10.0)
            if redis_dir is not None:
                shutil.rmtree(redis_dir, ignore_errors=True)
    return result


def ops(r: dict[str, Any]) -> float:
    return float(r.get("deliveries") or r.get("round_trips") or 0)


def line(r: dict[str, Any]) -> str:
    wall = r["wall"]
    cpu = " ".join(f"{k} {100 * v / wall:.0f}%" for k, v in sorted(r["cpu_by_process"].items()))
    if r["scenario"] == "echo":
        head = f"{r['round_trips_per_sec']:,.0f} round trips/s, p50 {r['p50_ms']} ms"
    else:
        head = f"{r['deliveries_per_sec']:,.0f} deliveries/s ({r['broadcasts']:,} broadcasts)"
    return (f"{head}, {r['cpu_ms_per_1k']:.2f} CPU ms per 1k, lost {r.get('lost')}; "
            f"CPU: {cpu}")


# -- one Redis: PUBLISH to K subscribers ------------------------------------------------------

def redis_publish(args: argparse.Namespace, save: Any = None) -> list[dict[str, Any]]:
    """``redis-benchmark`` PUBLISH to a private redis-server on a Unix socket with K subscriber
    connections drained by one Python process; Redis CPU per PUBLISH from /proc."""
    server = shutil.which("redis-server")
    bench = shutil.which("redis-benchmark")
    if not server or not bench:
        print("redis-server / redis-benchmark not on PATH: skipping --redis-publish")
        return []
    rows = []
    with tempfile.TemporaryDirectory(prefix="trio-channels-bench-") as tmp:
        sock_path = os.path.join(tmp, "redis.sock")
        redis = subprocess.Popen([server, "--port", "0", "--unixsocket", sock_path,
                                  "--save", "", "--appendonly", "no", "--dir", tmp,
                                  "--client-output-buffer-limit", "pubsub 0 0 0",
                                  "--logfile", os.path.join(tmp, "redis.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if os.path.exists(sock_path):
                    break
                time.sleep(0.02)
            time.sleep(0.2)
            for size in args.publish_sizes:
                for k in args.publish_subscribers:
                    for pipeline in (1, 16):
                        rows.append(_publish_run(bench, sock_path, redis.pid, k, size,
                                                 pipeline, args.publish_count))
                        if save is not None:
                            save(rows)
                        print(f"- PUBLISH {size} B, {k} subscribers, pipeline {pipeline}: "
                              f"{rows[-1]['publish_per_s']:,.0f}/s, Redis "
                              f"{rows[-1]['redis_cpu_us_per_publish']:.2f} µs CPU per PUBLISH "
                              f"({rows[-1]['redis_cpu_util']:.0%} of a core), delivered "
                              f"{rows[-1]['delivered_ratio']:.3f}", flush=True)
        finally:
            redis.terminate()
            redis.wait(10)
    return rows


def _publish_run(bench: str, sock_path: str, redis_pid: int, k: int, size: int,
                 pipeline: int, count: int) -> dict[str, Any]:
    subs = []
    for _ in range(k):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        s.sendall(b"SUBSCRIBE bench\r\n")
        subs.append(s)
    for s in subs:  # the subscribe confirmation
        s.recv(4096)
        s.setblocking(False)
    # Bounded bytes to deliver (the drainer may fall behind; Redis buffers what it has not read).
    n = max(5000, min(count if pipeline > 1 else count // 4, int(3e9 / (k * (size + 40)))))
    # As many publishing connections as subscribers: N workers each publish on one connection
    # (one PUBLISH in flight each: pipeline 1) and each subscribe on another.
    cmd = [bench, "-s", sock_path, "-n", str(n), "-c", str(k), "-P", str(pipeline), "-q",
           "PUBLISH", "bench", "x" * size]
    received = 0
    cpu0 = procs.cpu_seconds(redis_pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        ready, _, _ = select.select(subs, [], [], 0.05)
        for s in ready:
            try:
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        break
                    received += len(data)
            except BlockingIOError:
                pass
    wall = time.monotonic() - t0
    cpu = procs.cpu_seconds(redis_pid) - cpu0
    deadline = time.monotonic() + 10
    per_message = len(f"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n${size}\r\n") + size + 2
    expected = n * k * per_message
    while received < expected and time.monotonic() < deadline:
        ready, _, _ = select.select(subs, [], [], 0.2)
        for s in ready:
            try:
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        break
                    received += len(data)
            except BlockingIOError:
                pass
    for s in subs:
        s.close()
    return {"size": size, "subscribers": k, "pipeline": pipeline, "publishes": n,
            "seconds": wall, "publish_per_s": n / wall, "redis_cpu_s": cpu,
            "redis_cpu_util": cpu / wall, "redis_cpu_us_per_publish": 1e6 * cpu / n,
            "delivered_ratio": received / expected if expected else 1.0}


# -- the adapter's own costs: one PUBLISH call, receiving an envelope ---------------------------

_PUBLISHER = r"""
import socket, sys
path, channel, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
data = sys.stdin.buffer.read()
cmd = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
    len(channel), channel, len(data), data)
s = socket.socket(socket.AF_UNIX); s.connect(path)
f = s.makefile("rb")
sent = 0
while sent < count:
    n = min(64, count - sent)
    s.sendall(cmd * n)
    for _ in range(n):
        f.readline()
    sent += n
"""


def adapter_costs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU of the trio process for (a) one ``PUBLISH`` through coredis, awaited one at a
    time as the adapter's publisher does, and (b) receiving envelopes of k broadcasts from
    another node (``RedisAdapter`` subscribed, its ``PubSub`` with no local subscriber, as a
    worker with no client on the topic), published from another process."""
    import resource

    import trio

    from channels.pubsub import PubSub
    from channels.redis import MODE_EXCEPT, RedisAdapter, build_envelope, pack_message

    server = shutil.which("redis-server")
    if not server:
        print("redis-server not on PATH: skipping --adapter-costs")
        return []

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rows: list[dict[str, Any]] = []
    payload = json.loads(args.payload)
    with tempfile.TemporaryDirectory(prefix="trio-channels-bench-") as tmp:
        sock_path = os.path.join(tmp, "redis.sock")
        url = f"unix://{sock_path}"
        redis = subprocess.Popen([server, "--port", "0", "--unixsocket", sock_path,
                                  "--save", "", "--appendonly", "no", "--dir", tmp,
                                  "--logfile", os.path.join(tmp, "redis.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        async def measure() -> None:
            from coredis import Redis
            from coredis.retry import NoRetryPolicy

            while not os.path.exists(sock_path):  # noqa: ASYNC110, ASYNC240 - a bench
                await trio.sleep(0.02)
            await trio.sleep(0.2)
            client: Redis[bytes] = Redis.from_url(url, retry_policy=NoRetryPolicy())
            async with client:
                for size in (1, 20):
                    data = build_envelope("bench-a", "x", MODE_EXCEPT, "bench-a",
                                          [pack_message("room:bench", "msg", payload)] * size)
                    n = 3000
                    c0, t0 = cpu(), time.monotonic()
                    for _ in range(n):
                        await client.publish("trio_channels:bc", data)
                    c1, t1 = cpu(), time.monotonic()
                    rows.append({"what": "sender: one PUBLISH call (coredis, awaited)",
                                 "broadcasts_per_envelope": size, "count": n,
                                 "cpu_us_per_envelope": 1e6 * (c1 - c0) / n,
                                 "wall_us_per_envelope": 1e6 * (t1 - t0) / n})
                    print(f"- {rows[-1]}", flush=True)
            adapter = RedisAdapter(url, "bench-b")
            pubsub = PubSub(adapter)
            async with trio.open_nursery() as nursery:
                await nursery.start(pubsub.run)
                for size in (1, 10, 100):
                    data = build_envelope("bench-a", "x", MODE_EXCEPT, "bench-a",
                                          [pack_message("room:bench", "msg", payload)] * size)
                    n = max(200, 20000 // size)
                    start = adapter.received
                    proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER,  # noqa: ASYNC220
                                             sock_path,
                                             "trio_channels:bc", str(n)],
                                            stdin=subprocess.PIPE)
                    assert proc.stdin is not None
                    proc.stdin.write(data)
                    proc.stdin.close()
                    while adapter.received == start:  # noqa: ASYNC110
                        await trio.sleep(0.0005)
                    c0, t0, got0 = cpu(), time.monotonic(), adapter.received
                    with trio.move_on_after(60):
                        while adapter.received < start + n * size:  # noqa: ASYNC110
                            await trio.sleep(0.001)
                    c1, t1 = cpu(), time.monotonic()
                    got = adapter.received - got0
                    envelopes = got / size
                    proc.wait(10)
                    rows.append({"what": "receiver: envelopes from another node, no local "
                                         "subscriber", "broadcasts_per_envelope": size,
                                 "count": got, "cpu_us_per_envelope": 1e6 * (c1 - c0) / envelopes,
                                 "cpu_us_per_broadcast": 1e6 * (c1 - c0) / got,
                                 "envelopes_per_s": envelopes / (t1 - t0)})
                    print(f"- {rows[-1]}", flush=True)
                nursery.cancel_scope.cancel()

        try:
            trio.run(measure)
        finally:
            redis.terminate()
            redis.wait(10)
    return rows


# -- main --------------------------------------------------------------------------------------

def median_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("ok"):
            groups.setdefault((r["scenario"], r["workers"], r["conns"], r["window"]), []).append(r)
    out = []
    for runs in groups.values():
        merged = dict(runs[len(runs) // 2])
        for key in ("deliveries_per_sec", "round_trips_per_sec", "cpu_ms_per_1k", "p50_ms",
                    "p99_ms", "server_cpu_util", "loadgen_cpu_util"):
            vals = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            if vals:
                merged[key] = statistics.median(vals)
        roles = {k for r in runs for k in r["cpu_by_process"]}
        merged["cpu_by_process"] = {
            k: statistics.median(r["cpu_by_process"].get(k, 0.0) / r["wall"] for r in runs)
            for k in roles}
        merged["cpu_us_per_broadcast_by_process"] = {
            k: statistics.median(1e6 * r["cpu_by_process"].get(k, 0.0) / r["broadcasts"]
                                 for r in runs if r.get("broadcasts"))
            for k in roles} if runs[0].get("broadcasts") else None
        merged["repeats"] = len(runs)
        out.append(merged)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| scenario | workers | conns | in flight | throughput | CPU ms per 1k | server CPU "
           "(share of a core, by process) | lost |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        thr = (f"{r['round_trips_per_sec']:,.0f} round trips/s" if r["scenario"] == "echo"
               else f"{r['deliveries_per_sec']:,.0f} deliveries/s")
        by = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["cpu_by_process"].items()))
        out.append(f"| {r['scenario']} | {r['workers']} | {r['conns']:,} | "
                   f"{r['window'] or ''} | {thr} | {r['cpu_ms_per_1k']:.2f} | {by} | "
                   f"{r.get('lost')} |")
    cross = [r for r in rows if r.get("cpu_us_per_broadcast_by_process")]
    if cross:
        out += ["", "| scenario | workers | conns | in flight | broadcasts/s | CPU µs per "
                "broadcast, by process |", "|---|---|---|---|---|---|"]
        for r in cross:
            per = r["cpu_us_per_broadcast_by_process"]
            by = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items()))
            rate = r["deliveries_per_sec"] / max(1, r["conns"])
            out.append(f"| {r['scenario']} | {r['workers']} | {r['conns']:,} | "
                       f"{r['window'] or ''} | {rate:,.0f} | {by} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2",
                   help="worker counts to compare (default 1,2); Nr: N workers with a Redis of "
                        "the bench's own (--redis-url), e.g. 1r")
    p.add_argument("--scenarios", default="fanout,echo,cross")
    p.add_argument("--fanout-conns", type=int, default=1000)
    p.add_argument("--fanout-window", type=int, default=20000,
                   help="deliveries in flight (as bench/run's --window)")
    p.add_argument("--echo-clients", type=int, default=50)
    p.add_argument("--cross-windows", default="1,20000",
                   help="broadcasts in flight in the cross scenario (default 1 and 20000)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--server-cpus", default="", help="taskset -c list for the server tree")
    p.add_argument("--load-cpus", default="", help="taskset -c list for the generator")
    p.add_argument("--payload", default=DEFAULT_PAYLOAD)
    p.add_argument("--redis-publish", action="store_true",
                   help="also measure one redis-server's PUBLISH rate with K subscribers")
    p.add_argument("--redis-only", action="store_true", help="only --redis-publish")
    p.add_argument("--adapter-costs", action="store_true",
                   help="only: the Redis adapter's CPU per PUBLISH call and per envelope "
                        "received, in one process")
    p.add_argument("--publish-subscribers", default="2,16,64")
    p.add_argument("--publish-sizes", default="150,4096")
    p.add_argument("--publish-count", type=int, default=400_000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    args.publish_subscribers = [int(x) for x in args.publish_subscribers.split(",")]
    args.publish_sizes = [int(x) for x in args.publish_sizes.split(",")]
    outdir = args.out / time.strftime("workers-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"results in {outdir}; load average now {os.getloadavg()[0]:.2f}")
    results: list[dict[str, Any]] = []
    publish: list[dict[str, Any]] = []
    data: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                            "loadavg_start": os.getloadavg(), "nproc": os.cpu_count()}
    if args.adapter_costs:
        data["adapter_costs"] = adapter_costs(args)
        (outdir / "results.json").write_text(json.dumps(data, indent=2))
        print(f"\nresults: {outdir / 'results.json'}")
        return 0
    try:
        if not args.redis_only:
            src = snapshot_sources(outdir / "src")
            counts = [x.strip() for x in args.workers.split(",")]
            plan: list[tuple[str, int, int]] = []
            for scenario in args.scenarios.split(","):
                if scenario == "fanout":
                    plan.append(("fanout", args.fanout_conns,
                                 max(2, args.fanout_window // args.fanout_conns)))
                elif scenario == "echo":
                    plan.append(("echo", args.echo_clients, 0))
                elif scenario == "cross":
                    plan += [("cross", 1, int(w)) for w in args.cross_windows.split(",")]
            index = 0
            for _ in range(args.repeat):
                for scenario, conns, window in plan:
                    for w in counts:  # interleaved: the machine's load drifts alike for both
                        index += 1
                        results.append(run(args, src, outdir, scenario, w, conns, window,
                                           index))
                        data["runs"] = results
                        (outdir / "results.json").write_text(json.dumps(data, indent=2))
        if args.redis_publish or args.redis_only:
            def save(rows: list[dict[str, Any]]) -> None:
                data["publish"] = rows
                (outdir / "results.json").write_text(json.dumps(data, indent=2))

            publish = redis_publish(args, save)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        procs.stop_all()
    data.update(runs=results, summary=median_rows(results), publish=publish,
                loadavg_end=os.getloadavg())
    (outdir / "results.json").write_text(json.dumps(data, indent=2))
    if results:
        print()
        print(table(data["summary"]))
    if publish:
        print()
        print("| payload B | subscribers | pipeline | PUBLISH/s | Redis CPU µs per PUBLISH | "
              "Redis CPU | delivered |")
        print("|---|---|---|---|---|---|---|")
        for r in publish:
            print(f"| {r['size']} | {r['subscribers']} | {r['pipeline']} | "
                  f"{r['publish_per_s']:,.0f} | {r['redis_cpu_us_per_publish']:.2f} | "
                  f"{r['redis_cpu_util']:.0%} | {r['delivered_ratio']:.3f} |")
    print(f"\nresults: {outdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
