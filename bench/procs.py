"""Child processes of the orchestrator: pinned, in their own session, and always cleaned up.

Every child gets ``PR_SET_PDEATHSIG`` = SIGKILL (it dies if the orchestrator dies, even by
SIGKILL) and its own session (a Ctrl-C reaches only the orchestrator, which then stops the
children in order). :func:`stop_all` runs on every exit path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_children: list[subprocess.Popen[Any]] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _preexec() -> None:
    os.setsid()
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(cmd: Sequence[str], *, core: int | None, cwd: Path, env: dict[str, str] | None = None,
          stdin: int | IO[Any] | None = subprocess.DEVNULL,
          stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None,
          ) -> subprocess.Popen[Any]:
    """Start ``cmd`` pinned to ``core`` with ``taskset -c`` (which execs it: same pid)."""
    full = ["taskset", "-c", str(core), *cmd] if core is not None else list(cmd)
    proc = subprocess.Popen(full, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            preexec_fn=_preexec, text=True, bufsize=1)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Only our own child, by pid."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc, timeout=5.0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (all threads) in seconds: user space and kernel."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def snapshot(pid: int) -> dict[str, float]:
    mem = memory_kib(pid)
    user, system = cpu_split(pid)
    return {"t": time.monotonic(), "cpu": user + system, "sys": system,
            "rss_kib": mem.get("VmRSS", 0), "hwm_kib": mem.get("VmHWM", 0)}
