"""Helpers of the client matrix: a line-protocol subprocess runner and the clients' venv."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_LOCK = ROOT / "tests" / "matrix" / "clients.lock"
CLIENTS_VENV = ROOT / ".venv-clients"
_STAMP = CLIENTS_VENV / ".clients-lock-sha256"


class RunError(Exception):
    """A driver process that did not produce its ``RESULT:`` line."""


def run_lines(cmd: Sequence[str], *, steps: dict[str, Callable[[], None]] | None = None,
              timeout: float = 60.0, silence: float = 45.0,
              env: dict[str, str] | None = None) -> Any:
    """Run ``cmd`` until it prints ``RESULT:<json>``; return the parsed JSON.

    A ``READY:<name>`` line runs ``steps[name]`` and then answers ``go`` on stdin. Raises
    :class:`RunError` (with stdout noise and stderr) when the process exits without a result,
    stays silent for ``silence`` seconds or runs over ``timeout`` seconds.
    """
    proc = subprocess.Popen(list(cmd), cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    lines: queue.Queue[str | None] = queue.Queue()
    stderr: list[str] = []
    other: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        stderr.extend(proc.stderr)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=pump_err, daemon=True).start()

    def fail(why: str) -> RunError:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        return RunError(f"{' '.join(cmd[:2])}: {why}\nstdout: {other[-40:]}\n"
                        f"stderr: {''.join(stderr)[-4000:]}")

    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise fail(f"ran over {timeout} s")
            try:
                line = lines.get(timeout=min(silence, left))
            except queue.Empty:
                raise fail(f"no output for {min(silence, left):.0f} s") from None
            if line is None:
                raise fail(f"exited ({proc.wait(10)}) without a RESULT line")
            if line.startswith("READY:"):
                name = line.removeprefix("READY:")
                if not steps or name not in steps:
                    raise fail(f"unexpected step {name!r}")
                steps[name]()
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("RESULT:"):
                out = json.loads(line.removeprefix("RESULT:"))
                proc.wait(10)
                return out
            else:
                other.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- the isolated venv of the third-party Python clients ------------------------------------


def clients_python() -> Path:
    return CLIENTS_VENV / "bin" / "python"


def ensure_clients_venv(python: str | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Create ``.venv-clients`` from ``tests/matrix/clients.lock`` unless it is up to date.

    The third-party clients pin their own websockets/pydantic versions, so they live apart
    from the project's ``.venv``. A stamp (the lock's sha256) makes this quick when nothing
    changed. Returns the venv's interpreter.
    """
    say = log or (lambda msg: print(f"[setup] {msg}", file=sys.stderr, flush=True))
    want = hashlib.sha256(CLIENTS_LOCK.read_bytes()).hexdigest()
    py = clients_python()
    if py.exists() and _STAMP.exists() and _STAMP.read_text().strip() == want:
        return py
    if not py.exists():
        base = python or os.environ.get("PYTHON") or sys.executable
        say(f"creating .venv-clients (third-party Phoenix clients, isolated) with {base}")
        subprocess.run([base, "-m", "venv", "--clear", str(CLIENTS_VENV)], check=True)
    say("installing the locked client packages (tests/matrix/clients.lock) into .venv-clients...")
    subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                    "--progress-bar", "off", "-q", "--no-deps", "-r", str(CLIENTS_LOCK)],
                   check=True, stdout=sys.stderr)
    subprocess.run([str(py), "-m", "pip", "check", "--disable-pip-version-check"],
                   check=True, stdout=sys.stderr)
    _STAMP.write_text(want + "\n")
    say(".venv-clients ready")
    return py


if __name__ == "__main__":
    ensure_clients_venv()
