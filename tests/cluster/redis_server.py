"""A throwaway ``redis-server`` on a free loopback port, for tests that stop and restart it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class RedisServerMissing(RuntimeError):
    """``redis-server`` is not installed (``./scripts/test`` installs it with apt-get)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server --port N --save "" --appendonly no`` bound to 127.0.0.1.

    Use as a context manager (starts it, stops it on exit); :meth:`stop`, :meth:`start` and
    :meth:`restart` keep the same port, so clients can reconnect to :attr:`url`. Nothing is
    persisted: a restart comes back empty, unless ``appendonly=True`` (an append-only file
    fsynced on every write, in the server's own temporary directory: a restart, even after
    SIGKILL, comes back with the data).
    """

    def __init__(self, port: int | None = None, *, start_timeout: float = 10.0,
                 appendonly: bool = False) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisServerMissing(
                "redis-server is not on PATH: the cluster tests start their own Redis. "
                "Install it (apt-get install redis-server) or run ./scripts/test, which does.")
        self.executable = executable
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="trio-channels-redis-")
        self.log_path = Path(self._dir.name) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            return
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--dir", self._dir.name,
                 *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                   else ["--appendonly", "no"])],
                stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        # No event to wait on: poll the port, briefly and bounded.
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if self.command("PING") == b"PONG":
                    return
            except OSError:
                pass
            except RuntimeError as exc:  # "-LOADING": still reading its append-only file
                if "LOADING" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise TimeoutError(f"redis-server on port {self.port} did not start in "
                                   f"{self.start_timeout}s")
            time.sleep(0.01)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL to simulate a crash) and wait for it to exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str | bytes | int) -> bytes | int | None:
        """Run one command on a fresh connection (a sync test utility, RESP2 replies).

        Returns bytes for simple/bulk strings, int for integers, None for nil; raises
        ``RuntimeError`` for an error reply.
        """
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request)
            reader = sock.makefile("rb")
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                return rest
            if kind == b":":
                return int(rest)
            if kind == b"-":
                raise RuntimeError(rest.decode(errors="replace"))
            if kind == b"$":
                size = int(rest)
                return None if size < 0 else reader.read(size + 2)[:-2]
            raise RuntimeError(f"unsupported reply {line!r}")

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
