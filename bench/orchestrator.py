"""The benchmark orchestrator: ``bench/run [options]`` (``python -m bench``).

For every scenario and server it starts a fresh server pinned to the server core, then the
Node load generator pinned to the load core, and reads the server's CPU time and RSS from
/proc at each phase boundary the generator announces. Results go to
``bench/results/<timestamp>/`` (JSON, a Markdown table, server logs, profiles).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs, report
from bench.apps.common import DEFAULT_PAYLOAD

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MAIN_PY = ROOT / ".venv" / "bin" / "python"
BENCH_PY = BENCH / ".venv" / "bin" / "python"
PYSPY = BENCH / ".venv" / "bin" / "py-spy"
GEN = BENCH / "load" / "gen.mjs"

READY = re.compile(r"serving on http://|ready on http://")
SERVERS = ("channels", "bare", "ceiling", "websockets", "socketio")
SCENARIOS = ("fanout", "echo", "idle")
VARIANTS = {"channels-poll": "poller on", "channels-nopoll": "no poller",
            "channels-noinline": "poller, no inline handle_in", "channels-neither": "neither"}
PER_SOURCE_ADDR = 20_000  # connections per loopback source address (ephemeral ports)


@dataclass
class Server:
    name: str
    label: str
    proto: str
    argv: list[str]


def server_spec(name: str, port: int) -> Server:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name in ("channels", "channels-metrics"):
        # channels-metrics (not in the default list): the same server with the Prometheus
        # metrics on (handle_in timed, fan-out histogram), to measure what they cost.
        metrics = ["--metrics-port", "0"] if name == "channels-metrics" else []
        return Server(name, "trio-channels" + (" (metrics on)" if metrics else ""), "phoenix",
                      [str(MAIN_PY), "-m", "channels.cli", "serve",
                       "bench.apps.channels_app:endpoint", *host, "--log-level", "WARNING",
                       *metrics])
    if name in VARIANTS:
        # (not in the default list): trio-channels without the poller, without inline
        # handle_in, or without either, for before/after runs.
        return Server(name, f"trio-channels ({VARIANTS[name]})", "phoenix",
                      [str(MAIN_PY), "-m", "channels.cli", "serve",
                       f"bench.apps.channels_app:endpoint_{name.split('-')[1]}", *host,
                       "--log-level", "WARNING"])
    if name == "bare":
        return Server(name, "bare (same I/O layer)", "phoenix",
                      [str(MAIN_PY), "-m", "bench.apps.bare", *host])
    if name == "ceiling":
        return Server(name, "ceiling (plain trio)", "phoenix",
                      [str(MAIN_PY), "-m", "bench.apps.ceiling", *host])
    if name == "ceiling-mux":
        # (not in the default list): the ceiling with one reading task for every socket.
        return Server(name, "ceiling, one reader (plain trio)", "phoenix",
                      [str(MAIN_PY), "-m", "bench.apps.ceiling", "--mux", *host])
    if name == "websockets":
        return Server(name, "websockets.broadcast", "phoenix",
                      [str(BENCH_PY), "-m", "bench.apps.websockets_app", *host])
    if name == "socketio":
        return Server(name, "python-socketio+uvicorn", "socketio",
                      [str(BENCH_PY), "-m", "bench.apps.socketio_app", *host])
    raise SystemExit(f"unknown server {name!r} (choose from {', '.join(SERVERS)}, "
                     f"channels-metrics, {', '.join(VARIANTS)}, ceiling-mux)")


@dataclass
class RunSpec:
    scenario: str  # fanout | echo | idle
    server: str
    conns: int
    repeat: int = 0


@dataclass
class Context:
    args: argparse.Namespace
    outdir: Path
    src: Path = ROOT
    run_index: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


SOURCE_DIRS = ("channels", "supervisor", "presence", "bench/apps")


def snapshot_sources(dest: Path) -> Path:
    """Copy the runtime's working tree (uncommitted edits included) and the bench apps.

    Every server of a run imports from this copy, so edits made to the tree while the run
    goes on (on a shared machine, they happen) cannot mix two versions in one table.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in SOURCE_DIRS:
        shutil.copytree(ROOT / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    (dest / "bench" / "__init__.py").write_text((BENCH / "__init__.py").read_text())
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source_addrs(run_index: int, conns: int) -> list[str]:
    """Loopback source addresses for ``conns`` clients, rotated per run so that ports left in
    TIME_WAIT by the previous run are not in the way."""
    need = max(1, math.ceil(conns / PER_SOURCE_ADDR))
    third = run_index % 200 + 1
    return [f"127.0.{third}.{j + 1}" for j in range(need)]


def wait_ready(proc: subprocess.Popen[Any], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready; "
                               f"see {log}:\n{tail(log)}")
        if READY.search(log.read_text(errors="replace")):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout}s; see {log}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_line(proc: subprocess.Popen[Any], deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("load generator did not answer in time")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({proc.wait(5)})")
        line = line.strip()
        if not line:
            continue
        try:
            msg: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            print(f"  [gen] {line}", file=sys.stderr)
            continue
        return msg


def run_one(ctx: Context, spec: RunSpec, *, profile: bool = False,
            memprofile: bool = False) -> dict[str, Any]:
    args = ctx.args
    ctx.run_index += 1
    port = free_port()
    server = server_spec(spec.server, port)
    tag = f"{spec.scenario}-{spec.server}-{spec.conns}"
    if spec.repeat:
        tag += f"-r{spec.repeat}"
    if profile:
        tag += "-profile"
    if memprofile:
        tag += "-memprofile"
    log = ctx.outdir / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Servers import the runtime from the run's source snapshot (see snapshot_sources).
    src = ctx.src
    env = dict(os.environ, BENCH_PAYLOAD=args.payload, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(src))
    snap_prefix = ctx.outdir / "profiles" / tag
    if memprofile:
        snap_prefix.parent.mkdir(parents=True, exist_ok=True)
        env.update(BENCH_TRACEMALLOC=str(snap_prefix),
                   BENCH_TRACEMALLOC_FRAMES=str(args.memprofile_frames))
    result: dict[str, Any] = {"scenario": spec.scenario, "server": spec.server,
                              "label": server.label, "conns": spec.conns, "repeat": spec.repeat,
                              "profile": profile or memprofile, "memprofile": memprofile}
    mode = spec.scenario
    window = max(2, args.window // spec.conns) if mode == "fanout" else 0
    gen_cfg = {
        "url": f"ws://127.0.0.1:{port}", "proto": server.proto, "mode": mode,
        "conns": spec.conns, "duration": args.duration, "warmup": args.warmup,
        "concurrency": args.concurrency, "window": window, "payload": args.payload,
        "localAddrs": source_addrs(ctx.run_index, spec.conns), "perAddr": PER_SOURCE_ADDR,
        "connectTimeout": 15000, "drainTimeout": 10,
        "maxSeconds": args.max_run_seconds,
    }
    result["window_broadcasts"] = window or None
    print(f"- {tag}: ", end="", flush=True)
    srv = gen = spy = None
    with open(log, "w") as logf:
        try:
            srv = procs.spawn(server.argv, core=args.server_core, cwd=src, env=env,
                              stdout=logf, stderr=subprocess.STDOUT)
            wait_ready(srv, log, 30.0)
            pid = srv.pid
            gen = procs.spawn(["node", str(GEN), json.dumps(gen_cfg)], core=args.load_core,
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=None)
            deadline = time.monotonic() + args.max_run_seconds + 30
            snaps: dict[str, dict[str, float]] = {}
            phases: dict[str, dict[str, Any]] = {}
            while True:
                msg = read_line(gen, deadline)
                name = msg.get("phase")
                if name == "error":
                    raise RuntimeError(f"load generator: {msg.get('error')}")
                if name == "warn":
                    print(f"\n  warning from generator: {msg}", file=sys.stderr)
                    continue
                if srv.poll() is not None:
                    raise RuntimeError(f"server died (exit {srv.returncode}):\n{tail(log)}")
                if name == "connected":
                    time.sleep(args.settle)  # let the server finish and settle first
                if memprofile and name in ("start", "connected"):
                    memory_snapshot(srv, snap_prefix, 0 if name == "start" else 1)
                snaps[name] = procs.snapshot(pid)
                snaps[name]["gen_cpu"] = procs.cpu_seconds(gen.pid)
                phases[name] = msg
                if name == "measure" and profile:
                    spy = start_profiler(ctx, args, pid, tag)
                if name == "done":
                    break
                if msg.get("wait"):
                    assert gen.stdin is not None
                    gen.stdin.write("go\n")
                    gen.stdin.flush()
            result.update(summarize(spec, snaps, phases))
            if memprofile:
                result["memory_top"] = report.memory_diff(
                    Path(f"{snap_prefix}.0.snap"), Path(f"{snap_prefix}.1.snap"),
                    result["connected"])
            result["ok"] = True
        except Exception as exc:  # one failed run must not lose the others
            result["ok"] = False
            result["error"] = str(exc)
            print(f"FAILED: {exc}")
        finally:
            if gen is not None:
                procs.stop(gen, timeout=5.0)
            if spy is not None:
                finish_profiler(spy, result, args)
            if srv is not None:
                alive = srv.poll() is None
                procs.stop(srv, timeout=10.0)
                if not alive:
                    result.setdefault("server_exit", srv.returncode)
    problems = [ln for ln in log.read_text(errors="replace").splitlines()
                if re.search(r"Traceback|ERROR|WARNING|Exception", ln)]
    if problems:
        result["server_log_problems"] = problems[:20]
        result["server_log_problem_count"] = len(problems)
    result["log"] = str(log.relative_to(ROOT))
    if result.get("ok"):
        print(report.one_line(result))
    return result


def summarize(spec: RunSpec, snaps: dict[str, dict[str, float]],
              phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conn = phases["connected"]
    start, connected = snaps["start"], snaps["connected"]
    n = conn["connected"]
    out["connected"] = n
    out["connect_errors"] = conn["errors"]
    if conn["errors"]:
        out["connect_first_error"] = conn.get("firstError")
    out["connect_seconds"] = conn["elapsed"]
    out["connects_per_sec"] = n / conn["elapsed"] if conn["elapsed"] else None
    connect_cpu = connected["cpu"] - start["cpu"]
    out["connect_cpu_ms_per_conn"] = 1000 * connect_cpu / n if n else None
    connect_wall = connected["t"] - start["t"]
    out["connect_server_cpu_util"] = connect_cpu / connect_wall if connect_wall else None
    out["connect_loadgen_cpu_util"] = ((connected["gen_cpu"] - start["gen_cpu"]) / connect_wall
                                       if connect_wall else None)
    out["rss_before_kib"] = start["rss_kib"]
    out["rss_connected_kib"] = connected["rss_kib"]
    out["rss_per_conn_kib"] = (connected["rss_kib"] - start["rss_kib"]) / n if n else None
    if spec.scenario == "idle":
        return out
    m0, m1 = snaps["measure"], snaps["loaded"]
    loaded = phases["loaded"]
    cpu = m1["cpu"] - m0["cpu"]
    wall = m1["t"] - m0["t"]
    out["server_cpu_seconds"] = cpu
    # The kernel's share (system time: sends, receives, epoll): what no server in Python
    # can take away, and what the ceiling is mostly made of.
    out["server_sys_share"] = (m1["sys"] - m0["sys"]) / cpu if cpu else None
    out["server_cpu_util"] = cpu / wall if wall else None
    out["loadgen_cpu_util"] = (m1["gen_cpu"] - m0["gen_cpu"]) / wall if wall else None
    out["rss_peak_kib"] = m1["hwm_kib"]
    for key in ("lost", "badLength", "badSample", "controlFrames", "sampleOk", "unexpectedCloses",
                "elapsed"):
        out[key] = loaded.get(key)
    if spec.scenario == "fanout":
        d = loaded["deliveries"]
        out["broadcasts"] = loaded["broadcasts"]
        out["deliveries"] = d
        out["deliveries_per_sec"] = loaded["deliveriesPerSec"]
        out["cpu_ms_per_1k"] = 1e6 * cpu / d if d else None
        out["per_cpu_second"] = d / cpu if cpu else None
        out["expected"] = loaded["expected"]
        if not loaded.get("sampleOk"):
            out["sample"] = loaded.get("sample")
    else:
        rt = loaded["roundTrips"]
        out["round_trips"] = rt
        out["round_trips_per_sec"] = loaded["roundTripsPerSec"]
        out["p50_ms"] = loaded["p50ms"]
        out["p90_ms"] = loaded["p90ms"]
        out["p99_ms"] = loaded["p99ms"]
        out["max_ms"] = loaded["maxms"]
        out["cpu_ms_per_1k"] = 1e6 * cpu / rt if rt else None
        out["per_cpu_second"] = rt / cpu if cpu else None
    return out


def memory_snapshot(srv: subprocess.Popen[Any], prefix: Path, index: int) -> None:
    """Ask the server (tracemalloc on) for snapshot ``index`` and wait until it is written."""
    path = Path(f"{prefix}.{index}.snap")
    srv.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline or srv.poll() is not None:
            raise RuntimeError(f"no memory snapshot {path}")
        time.sleep(0.1)


def start_profiler(ctx: Context, args: argparse.Namespace, pid: int,
                   tag: str) -> tuple[subprocess.Popen[Any], Path]:
    path = ctx.outdir / "profiles" / f"{tag}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(PYSPY), "record", "--pid", str(pid), "--duration", str(max(1, int(args.duration))),
           "--rate", str(args.profile_rate), "--nonblocking", "--format", "raw", "-o", str(path)]
    proc = procs.spawn(cmd, core=args.load_core, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    return proc, path


def finish_profiler(spy: tuple[subprocess.Popen[Any], Path], result: dict[str, Any],
                    args: argparse.Namespace) -> None:
    proc, path = spy
    try:
        proc.wait(args.duration + 20)
    except subprocess.TimeoutExpired:
        pass
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    procs.stop(proc, timeout=5.0, sig=signal.SIGINT)
    if path.exists():
        result["profile_raw"] = str(path.relative_to(ROOT))
        result["profile_top"] = report.profile_summary(path)
    else:
        result["profile_error"] = (err or "py-spy wrote nothing").strip()[-500:]


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_plan(args: argparse.Namespace) -> list[RunSpec]:
    plan: list[RunSpec] = []
    for rep in range(args.repeat):
        r = rep if args.repeat > 1 else 0
        for scenario in args.scenarios:
            sizes = {"fanout": args.fanout_conns, "echo": args.echo_clients,
                     "idle": args.idle_conns}[scenario]
            for n in sizes:
                servers = args.servers
                if scenario == "fanout" and n > args.baseline_max_conns:
                    # The scaling points past 10k are for our runtime and its ceilings.
                    servers = [s for s in servers if s in ("channels", "bare", "ceiling")]
                for server in servers:
                    plan.append(RunSpec(scenario, server, n, r))
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma list from {','.join(SERVERS)} (default: all)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma list from {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before it")
    p.add_argument("--fanout-conns", type=parse_list, default=[1000, 10000])
    p.add_argument("--echo-clients", type=parse_list, default=[1, 50])
    p.add_argument("--idle-conns", type=parse_list, default=[10000])
    p.add_argument("--baseline-max-conns", type=int, default=10000,
                   help="fan-out sizes above this run only channels and bare")
    p.add_argument("--window", type=int, default=20000,
                   help="fan-out: deliveries in flight (broadcasts in flight = this / conns)")
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds between the last join and the RSS reading")
    p.add_argument("--repeat", type=int, default=1, help="run everything N times (median)")
    p.add_argument("--payload", default=DEFAULT_PAYLOAD, help="JSON object pushed and broadcast")
    p.add_argument("--profile", action="store_true",
                   help="also profile trio-channels with py-spy in fan-out and echo runs")
    p.add_argument("--profile-only", action="store_true", help="only the profiled runs")
    p.add_argument("--profile-rate", type=int, default=200)
    p.add_argument("--memprofile", action="store_true",
                   help="only: where trio-channels' per-connection memory goes (tracemalloc, "
                        "idle scenario at the first --idle-conns size)")
    p.add_argument("--memprofile-frames", type=int, default=1,
                   help="traceback depth for --memprofile (1 = by line)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--max-run-seconds", type=int, default=240,
                   help="hard deadline of one generator run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s, fan-out 1000, echo 50, idle 2000")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--live", action="store_true",
                   help="servers import the working tree as it is at each server start, "
                        "instead of a copy taken when the run starts")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.servers:
        server_spec(s, 0)
    for s in args.scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
        args.fanout_conns, args.echo_clients, args.idle_conns = [1000], [50], [2000]
    json.loads(args.payload)

    # A server holds one descriptor per connection (the generator too): sizes past the
    # open-file limit cannot run here (bench/run raises the soft limit to the hard one).
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft - 200
    skipped = sorted({n for n in (*args.fanout_conns, *args.idle_conns, *args.echo_clients)
                      if n > limit})
    if skipped:
        print(f"skipping sizes {skipped}: the open-file limit here is {soft} "
              f"(ulimit -Hn; raising it needs CAP_SYS_RESOURCE)", file=sys.stderr)
        args.fanout_conns = [n for n in args.fanout_conns if n <= limit]
        args.idle_conns = [n for n in args.idle_conns if n <= limit]
        args.echo_clients = [n for n in args.echo_clients if n <= limit]
    if os.cpu_count() and max(args.server_core, args.load_core) >= os.cpu_count():  # type: ignore[operator]
        raise SystemExit("--server-core/--load-core beyond this machine's cores")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = args.out / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, outdir)
    meta = report.machine_info(ROOT)  # before pinning ourselves, or nproc says 1
    if not args.live:
        ctx.src = snapshot_sources(outdir / "src")
        meta["sources"] = "snapshot taken at the start: " + meta["commit"]
    # The orchestrator itself mostly sleeps; keep it off the server's core.
    os.sched_setaffinity(0, {args.load_core})

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    meta.update(started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), note=args.note,
                args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                loadavg_start=os.getloadavg(), skipped_sizes=skipped, nofile_limit=soft)
    plan = [] if args.profile_only or args.memprofile else build_plan(args)
    print(f"trio-channels benchmark: {len(plan)} runs, results in {outdir.relative_to(ROOT)}")
    print(f"load average now: {os.getloadavg()[0]:.2f} (other processes skew the numbers)")
    interrupted = False
    try:
        for spec in plan:
            ctx.results.append(run_one(ctx, spec))
            write(ctx, meta)
        if args.memprofile:
            ctx.results.append(run_one(ctx, RunSpec("idle", "channels",
                                                    (args.idle_conns or [10000])[0]),
                                       memprofile=True))
            write(ctx, meta)
            print(report.memory_text(ctx.results[-1].get("memory_top")))
        if args.profile or args.profile_only:
            for scenario, n in (("fanout", args.fanout_conns[0] if args.fanout_conns else 1000),
                                ("echo", max(args.echo_clients or [50]))):
                ctx.results.append(run_one(ctx, RunSpec(scenario, "channels", n), profile=True))
                write(ctx, meta)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers and generators", file=sys.stderr)
    finally:
        procs.stop_all()
    meta["loadavg_end"] = os.getloadavg()
    meta["commit_end"] = report.machine_info(ROOT)["commit"]
    if meta["commit_end"] != meta["commit"] and args.live:
        print(f"WARNING: the runtime changed during the run ({meta['commit']} -> "
              f"{meta['commit_end']}): compare only runs made at one commit", file=sys.stderr)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write(ctx, meta)
    print()
    print(report.markdown(meta, aggregate(ctx.results)))
    print(f"\nresults: {(outdir / 'results.json').relative_to(ROOT)}")
    return 130 if interrupted else 0


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats of each (scenario, server, conns); profiled runs kept apart."""
    groups: dict[tuple[str, str, int, bool], list[dict[str, Any]]] = {}
    for r in results:
        key = (r["scenario"], r["server"], r["conns"], r["profile"] or r.get("memprofile", False))
        groups.setdefault(key, []).append(r)
    out = []
    for runs in groups.values():
        ok = [r for r in runs if r.get("ok")]
        if len(ok) <= 1:
            out.append(ok[0] if ok else runs[0])
            continue
        merged = dict(ok[0])
        for key, value in ok[0].items():
            if key in ("conns", "repeat") or isinstance(value, bool) \
                    or not isinstance(value, int | float):
                continue
            vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
            if len(set(vals)) > 1:
                merged[key] = statistics.median(vals)
        merged["repeats"] = len(ok)
        out.append(merged)
    return out


def write(ctx: Context, meta: dict[str, Any]) -> None:
    data = {"meta": meta, "runs": ctx.results, "summary": aggregate(ctx.results)}
    (ctx.outdir / "results.json").write_text(json.dumps(data, indent=2, default=str))
    (ctx.outdir / "table.md").write_text(report.markdown(meta, data["summary"]) + "\n")
    latest = ctx.args.out / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(ctx.outdir.name)
    except OSError:
        pass
