"""Run a trio-channels node as a separate OS process for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"serving on http://([\d.]+):(\d+)")


class ServerProcess:
    """A running ``trio-channels serve`` process; ``port`` is where it listens."""

    def __init__(self, app: str, port: int = 0, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.app = app
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.args = args or []
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "channels.cli", "serve", self.app, "--host", "127.0.0.1",
             "--port", str(self.port or self.requested_port), *self.args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.port = int(m.group(2))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (drain) and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop cleanly and start again on the same port."""
        self.stop()
        self.start()


@contextmanager
def running_server(app: str = "tests.support.app:make_endpoint", **kwargs: object) -> Iterator[ServerProcess]:
    server = ServerProcess(app, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.kill()
