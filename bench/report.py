"""Tables, target checks, machine facts and profile summaries for the benchmark results."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

TIMES = "\u00d7"  # the multiplication sign, spelled out for the linter
NONE = "\u2013"  # an en dash for a missing value

TARGETS = {
    "fanout_vs_bare": 0.8,
    "fanout_vs_websockets": 1.2,
    "echo50_vs_bare": 0.5,
    "idle_kib_per_conn": 12.0,
}


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(root: Path) -> dict[str, Any]:
    lscpu = _run(["lscpu"])
    cpu = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                           "CPU max MHz", "L2 cache", "L3 cache", "Hypervisor vendor",
                           "Architecture"):
            cpu[key.strip()] = value.strip()
    pkgs = ("trio", "wsproto", "h11", "orjson", "msgpack")
    code = ("import json, importlib.metadata as m, sys; "
            "print(json.dumps({'python': sys.version.split()[0], "
            "**{p: (m.version(p) if p in {d.metadata['Name'].lower() for d in m.distributions()} "
            "else None) for p in sys.argv[1:]}}))")
    main_versions = _safe_json(_run([str(root / ".venv/bin/python"), "-c", code, *pkgs]))
    bench_pkgs = ("websockets", "python-socketio", "python-engineio", "uvicorn", "uvloop",
                  "httptools", "py-spy")
    bench_versions = _safe_json(_run([str(root / "bench/.venv/bin/python"), "-c", code,
                                      *bench_pkgs]))
    try:
        ws_version = json.loads((root / "node_modules/ws/package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        ws_version = None
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=root).strip()
    # Uncommitted edits count too: a digest of the runtime's sources.
    digest = hashlib.sha256()
    for path in sorted(p for d in ("channels", "supervisor", "presence")
                       for p in (root / d).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    dirty = bool(_run(["git", "status", "--porcelain", "--", "channels", "supervisor",
                       "presence"], cwd=root).strip())
    return {
        "cpu": cpu,
        "nproc": _run(["nproc"]).strip(),
        "memory": (_run(["free", "-h"]).splitlines() or [""])[1:2],
        "kernel": _run(["uname", "-sr"]).strip(),
        "node": _run(["node", "--version"]).strip(),
        "ws": ws_version,
        "runtime_versions": main_versions,
        "baseline_versions": bench_versions,
        "commit": commit + ("+dirty" if dirty else "") + f" (sources {digest.hexdigest()[:10]})",
    }


def _safe_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def _f(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return NONE
    if isinstance(value, float | int):
        if digits == 0:
            return f"{value:,.0f}{suffix}"
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def one_line(r: dict[str, Any]) -> str:
    base = (f"{r['connected']} conns in {r['connect_seconds']:.1f}s "
            f"({_f(r['connects_per_sec'])}/s), RSS {_f(r['rss_per_conn_kib'], 1)} KiB/conn")
    if r["scenario"] == "fanout":
        base += (f"; {_f(r['deliveries_per_sec'])} deliveries/s, server CPU "
                 f"{_f(100 * (r['server_cpu_util'] or 0))}% "
                 f"({_f(100 * (r.get('server_sys_share') or 0))}% of it kernel), "
                 f"{_f(r['cpu_ms_per_1k'], 2)} ms CPU/1k, lost {r['lost']}, "
                 f"generator CPU {_f(100 * (r['loadgen_cpu_util'] or 0))}%")
    elif r["scenario"] == "echo":
        base += (f"; {_f(r['round_trips_per_sec'])} rt/s, p50 {_f(r['p50_ms'], 2)} ms, "
                 f"p99 {_f(r['p99_ms'], 2)} ms, server CPU "
                 f"{_f(100 * (r['server_cpu_util'] or 0))}% "
                 f"({_f(100 * (r.get('server_sys_share') or 0))}% of it kernel), "
                 f"{_f(r['cpu_ms_per_1k'], 2)} ms CPU/1k, "
                 f"generator CPU {_f(100 * (r['loadgen_cpu_util'] or 0))}%")
    flags = flags_of(r)
    return base + ("  [" + "; ".join(flags) + "]" if flags else "")


def flags_of(r: dict[str, Any]) -> list[str]:
    """What makes a run's numbers suspect."""
    flags = []
    if r.get("connect_errors"):
        flags.append(f"{r['connect_errors']} connect errors ({r.get('connect_first_error')})")
    if r.get("unexpectedCloses"):
        flags.append(f"{r['unexpectedCloses']} connections dropped")
    if r.get("badLength"):
        flags.append(f"{r['badLength']} frames of unexpected length")
    if r.get("sampleOk") is False:
        flags.append("payload mismatch")
    if r.get("server_log_problem_count"):
        flags.append(f"{r['server_log_problem_count']} warnings in server log")
    if r.get("lost"):
        flags.append(f"{r['lost']} not delivered by the end of the drain")
    if r.get("badSample"):
        flags.append(f"e.g. {str(r['badSample'])[:100]}")
    return flags


def _pick(rows: list[dict[str, Any]], scenario: str, server: str, n: int) -> dict[str, Any] | None:
    for r in rows:
        if (r["scenario"], r["server"], r["conns"]) == (scenario, server, n) and r.get("ok") \
                and not r.get("profile"):
            return r
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return float(a[key]) / float(b[key])


def _rx(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f}{TIMES}"


def _ratio_cell(row: dict[str, Any], other: dict[str, Any] | None, key: str) -> str:
    if row["server"] != "channels" or other is None:
        return ""
    return f"{_rx(_ratio(row, other, key))} / {_rx(_ratio(row, other, 'per_cpu_second'))}"


def _ceiling_cell(row: dict[str, Any], ceiling: dict[str, Any] | None, key: str) -> str:
    """How close a trio path (ours, bare) comes to the plain-trio ceiling."""
    if row["server"] not in ("channels", "bare") or ceiling is None:
        return ""
    return f"{_rx(_ratio(row, ceiling, key))} / {_rx(_ratio(row, ceiling, 'per_cpu_second'))}"


def _label(r: dict[str, Any], notes: list[str]) -> str:
    flags = flags_of(r)
    if not flags:
        return str(r["label"])
    notes.append(f"{r['scenario']} {r['conns']:,} {r['label']}: " + "; ".join(flags))
    return f"{r['label']} (!{len(notes)})"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    notes: list[str] = []
    order = {"channels": 0, "channels-nopoll": 0.1, "channels-noinline": 0.2,
             "channels-neither": 0.3, "bare": 1, "ceiling": 2, "ceiling-mux": 2.5,
             "websockets": 3, "socketio": 4}
    rows = sorted((r for r in rows if not r.get("profile")),
                  key=lambda r: (r["conns"], order.get(r["server"], 9)))
    lines: list[str] = []
    load = meta.get("loadavg_start")
    lines.append("**PRELIMINARY** (machine shared with other jobs; load average at start "
                 f"{load[0]:.2f})" if load else "**PRELIMINARY**")
    lines.append("")
    commit, end = meta.get("commit"), meta.get("commit_end")
    live = (meta.get("args") or {}).get("live")
    lines.append(f"Runtime at commit {commit}" + (
        "" if end in (None, commit) or not live else f", **changed during the run to {end}**")
        + ("" if live else " (a copy taken at the start of the run)") + ".")
    lines.append("")
    fan = [r for r in rows if r["scenario"] == "fanout"]
    if fan:
        lines += [
            "### Fan-out: 1 publisher → N subscribers on one topic",
            "",
            "Ratios are *deliveries/s ratio / deliveries-per-server-CPU-second ratio* (the "
            "second stays meaningful when the load generator, not the server, is the limit).",
            "",
            "| N | server | deliveries/s | server CPU | CPU ms per 1k deliveries "
            "| deliveries per CPU-s | vs bare | vs ceiling | vs websockets | lost |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fan:
            if not r.get("ok"):
                lines.append(f"| {r['conns']:,} | {r['label']} | failed: {r.get('error', '')[:60]} "
                             "| | | | | | | |")
                continue
            bare = _pick(rows, "fanout", "bare", r["conns"])
            ceil = _pick(rows, "fanout", "ceiling", r["conns"])
            wsb = _pick(rows, "fanout", "websockets", r["conns"])
            lines.append(
                f"| {r['conns']:,} | {_label(r, notes)} | {_f(r['deliveries_per_sec'])} "
                f"| {_f(100 * (r['server_cpu_util'] or 0))}% | {_f(r['cpu_ms_per_1k'], 2)} "
                f"| {_f(r['per_cpu_second'])} | {_ratio_cell(r, bare, 'deliveries_per_sec')} "
                f"| {_ceiling_cell(r, ceil, 'deliveries_per_sec')} "
                f"| {_ratio_cell(r, wsb, 'deliveries_per_sec')} | {r.get('lost', '')} |")
        lines.append("")
    echo = [r for r in rows if r["scenario"] == "echo"]
    if echo:
        lines += [
            "### Push → reply round trips (each client keeps one request in flight)",
            "",
            "| clients | server | round trips/s | p50 ms | p99 ms | server CPU "
            "| CPU ms per 1k round trips | round trips per CPU-s | vs bare | vs ceiling |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in echo:
            if not r.get("ok"):
                lines.append(f"| {r['conns']} | {r['label']} | failed: {r.get('error', '')[:60]} "
                             "| | | | | | | |")
                continue
            bare = _pick(rows, "echo", "bare", r["conns"])
            ceil = _pick(rows, "echo", "ceiling", r["conns"])
            lines.append(
                f"| {r['conns']} | {_label(r, notes)} | {_f(r['round_trips_per_sec'])} "
                f"| {_f(r['p50_ms'], 2)} | {_f(r['p99_ms'], 2)} "
                f"| {_f(100 * (r['server_cpu_util'] or 0))}% | {_f(r['cpu_ms_per_1k'], 2)} "
                f"| {_f(r['per_cpu_second'])} | {_ratio_cell(r, bare, 'round_trips_per_sec')} "
                f"| {_ceiling_cell(r, ceil, 'round_trips_per_sec')} |")
        lines.append("")
    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        lines += [
            "### Idle connections (one joined channel each) and connect + join rate",
            "",
            "| N | server | RSS per connection (KiB) | server RSS before → after (MiB) "
            "| connect+join/s | server CPU ms per connect+join |",
            "|---|---|---|---|---|---|",
        ]
        for r in idle:
            if not r.get("ok"):
                lines.append(f"| {r['conns']:,} | {r['label']} | failed: "
                             f"{r.get('error', '')[:60]} | | | |")
                continue
            lines.append(
                f"| {r['connected']:,} | {_label(r, notes)} | {_f(r['rss_per_conn_kib'], 1)} "
                f"| {r['rss_before_kib'] / 1024:.0f} → {r['rss_connected_kib'] / 1024:.0f} "
                f"| {_f(r['connects_per_sec'])} | {_f(r['connect_cpu_ms_per_conn'], 3)} |")
        lines.append("")
    growth = [r for r in fan if r.get("ok") and r["server"] in ("channels", "bare", "ceiling")]
    if len({r["conns"] for r in growth}) > 1:
        lines += [
            "### How cost grows (fan-out runs)",
            "",
            "CPU per delivery relative to bare and to the ceiling of the same N (>1: costlier).",
            "",
            "| N | server | deliveries/s | CPU ms per 1k deliveries | CPU vs bare "
            "| CPU vs ceiling | RSS per connection (KiB) | server RSS (MiB) | connect+join/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(growth, key=lambda r: (order.get(r["server"], 9), r["conns"])):
            cpu_bare = _ratio(r, _pick(rows, "fanout", "bare", r["conns"]), "cpu_ms_per_1k")
            cpu_ceil = _ratio(r, _pick(rows, "fanout", "ceiling", r["conns"]), "cpu_ms_per_1k")
            lines.append(
                f"| {r['conns']:,} | {_label(r, notes)} | {_f(r['deliveries_per_sec'])} "
                f"| {_f(r['cpu_ms_per_1k'], 2)} | {_rx(cpu_bare)} | {_rx(cpu_ceil)} "
                f"| {_f(r['rss_per_conn_kib'], 1)} "
                f"| {r['rss_connected_kib'] / 1024:.0f} | {_f(r['connects_per_sec'])} |")
        lines.append("")
    if notes:
        lines += [f"(!{i}) {note}" for i, note in enumerate(notes, 1)] + [""]
    checks = targets(rows)
    if checks:
        lines += ["### Targets", "", "| target | measured | met? |", "|---|---|---|"]
        for name, measured, ok in checks:
            lines.append(f"| {name} | {measured} | {'yes' if ok else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for n in sorted({r["conns"] for r in rows if r["scenario"] == "fanout"}):
        ch = _pick(rows, "fanout", "channels", n)
        for base, goal, key in (("bare", TARGETS["fanout_vs_bare"], "bare"),
                                ("websockets", TARGETS["fanout_vs_websockets"], "websockets")):
            other = _pick(rows, "fanout", base, n)
            thr = _ratio(ch, other, "deliveries_per_sec")
            eff = _ratio(ch, other, "per_cpu_second")
            if thr is None or eff is None:
                continue
            out.append((f"fan-out 1→{n:,} ≥ {goal}{TIMES} {key}",
                        f"{thr:.2f}{TIMES} deliveries/s, {eff:.2f}{TIMES} per CPU-s",
                        min(thr, eff) >= goal))
    ch = _pick(rows, "echo", "channels", 50)
    bare = _pick(rows, "echo", "bare", 50)
    thr = _ratio(ch, bare, "round_trips_per_sec")
    eff = _ratio(ch, bare, "per_cpu_second")
    if thr is not None and eff is not None:
        out.append((f"push→reply, 50 clients ≥ {TARGETS['echo50_vs_bare']}{TIMES} bare echo",
                    f"{thr:.2f}{TIMES} round trips/s, {eff:.2f}{TIMES} per CPU-s",
                    min(thr, eff) >= TARGETS["echo50_vs_bare"]))
    for r in rows:
        if r["scenario"] == "idle" and r["server"] == "channels" and r.get("ok"):
            kib = r["rss_per_conn_kib"]
            out.append((f"idle ≤ {TARGETS['idle_kib_per_conn']:.0f} KiB per connection with one "
                        f"joined channel ({r['connected']:,} connections)", f"{kib:.1f} KiB",
                        kib <= TARGETS["idle_kib_per_conn"]))
    return out


_LINE = re.compile(r":\d+\)$")


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)``, site-packages trimmed."""
    frame = _LINE.sub(")", frame.strip())
    m = re.match(r"(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    return f"{func} ({_short(path)})"


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    lines_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        raw = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        # The innermost frame of our own code, with its line: where the time is spent.
        for f in reversed(raw):
            m = re.match(r"(.*) \((.*)\)$", f.strip())
            if m and re.match(r"(channels|supervisor|presence)/", _short(m.group(2))):
                lines_c[f"{m.group(1)} ({_short(m.group(2))})"] += count
                break
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # Skip py-spy's thread/process header frames.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl_c[f] += count
    return {
        "samples": total,
        "self": [(name, round(100 * c / total, 1)) for name, c in self_c.most_common(top)]
        if total else [],
        "inclusive": [(name, round(100 * c / total, 1)) for name, c in incl_c.most_common(top)]
        if total else [],
        "own_code_lines": [(name, round(100 * c / total, 1))
                           for name, c in lines_c.most_common(top)] if total else [],
    }


def memory_diff(before: Path, after: Path, conns: int, top: int = 30) -> dict[str, Any]:
    """Python allocations that appeared between two tracemalloc snapshots, per connection."""
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(filters), new.filter_traces(filters)
    stats = new.compare_to(old, "traceback" if len(new.traces) and
                           len(new.traces[0].traceback) > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    rows = []
    for st in stats[:top]:
        frames = [f"{_short(fr.filename)}:{fr.lineno}" for fr in reversed(st.traceback)]
        rows.append({"where": " <- ".join(frames), "bytes_per_conn": st.size_diff / conns,
                     "blocks_per_conn": st.count_diff / conns})
    by_file: Counter[str] = Counter()
    by_own: Counter[str] = Counter()
    for st in stats:
        frames = list(st.traceback)  # most recent call last
        by_file[_short(frames[-1].filename)] += st.size_diff
        # With a deep traceback: charge each allocation to the innermost line of our code.
        own = next((fr for fr in reversed(frames)
                    if re.match(r"(channels|supervisor|presence|bench)/", _short(fr.filename))),
                   None)
        where = f"{_short(own.filename)}:{own.lineno}" if own else "(outside our code)"
        by_own[where] += st.size_diff
    return {"conns": conns, "python_bytes_per_conn": total / conns, "top": rows,
            "by_file": [(f, b / conns) for f, b in by_file.most_common(15)],
            "by_own_line": [(f, b / conns) for f, b in by_own.most_common(top)],
            "by_kind": census_diff(before, after, conns, top)}


def census_diff(before: Path, after: Path, conns: int,
                top: int = 30) -> list[tuple[str, float, float]]:
    """Per connection, from the servers' gc censuses next to the snapshots: (type, objects,
    ``sys.getsizeof`` bytes) that appeared, largest first; empty without census files."""
    paths = [p.with_name(p.name.removesuffix(".snap") + ".census.json") for p in (before, after)]
    if not all(p.exists() for p in paths):
        return []
    old, new = (json.loads(p.read_text()) for p in paths)
    rows = []
    for name, (count, size) in new.items():
        count0, size0 = old.get(name, (0, 0))
        if size - size0 > 0:
            rows.append((name, (count - count0) / conns, (size - size0) / conns))
    rows.sort(key=lambda r: -r[2])
    return rows[:top]


def _short(path: str) -> str:
    """Paths relative to the project (runs import the runtime from bench/results/*/src/)."""
    path = re.sub(r".*/bench/results/[^/]+/src/", "", path)
    path = re.sub(r"^bench/results/[^/]+/src/", "", path)
    path = re.sub(r".*site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "stdlib/", path)
    return re.sub(r"^/work/main/", "", path)


def memory_text(mem: dict[str, Any] | None) -> str:
    if not mem:
        return "(no memory profile)"
    lines = [f"Python heap growth per connection (tracemalloc): "
             f"{mem['python_bytes_per_conn'] / 1024:.1f} KiB over {mem['conns']:,} connections",
             "", "by file (B/conn):"]
    lines += [f"  {b:8.0f}  {f}" for f, b in mem["by_file"]]
    lines += ["", "charged to the innermost line of our code (B/conn):"]
    lines += [f"  {b:8.0f}  {f}" for f, b in mem.get("by_own_line", [])]
    if mem.get("by_kind"):
        lines += ["", "by object kind (gc census, sys.getsizeof; objects/conn, B/conn):"]
        lines += [f"  {b:8.0f}  {n:6.2f}  {name}" for name, n, b in mem["by_kind"]]
    lines += ["", "by allocation site (B/conn, blocks/conn):"]
    lines += [f"  {r['bytes_per_conn']:8.0f}  {r['blocks_per_conn']:6.2f}  {r['where']}"
              for r in mem["top"]]
    return "\n".join(lines)
