"""``trio-channels serve APP --workers N``: every core of a machine.

One Python process runs on one core. With ``--workers N`` the command becomes a **supervisor**
that starts N **worker** processes, each a complete node (``trio-channels serve APP``) listening
on the same port with ``SO_REUSEPORT``: the kernel spreads new connections among their
listeners. The workers form a cluster on the engine clusters already use, Redis pub/sub
(:class:`channels.redis.RedisAdapter`), so broadcasts, presence, rooms and history work across
them as across machines:

- with ``--redis-url URL`` they join that Redis (with the other machines' nodes, if any);
- without it the supervisor starts a private ``redis-server`` on a Unix socket in a temporary
  directory (``--port 0``: no TCP; ``--save ""``, ``--appendonly no``: nothing on disk) and
  stops it last. Without ``redis-server`` on ``PATH`` it exits 2 with one line saying what to
  install.

Workers are named ``<base>-w1`` .. ``<base>-wN`` (``--node-name`` is the base; by default
``<hostname>-<supervisor pid>``), and a worker keeps its name across restarts.

What the supervisor does, each step logged (logger ``channels.workers``):

- it reserves the port first (a bound, not listening, ``SO_REUSEPORT`` socket: ``--port 0``
  picks one port for all, and a port another program holds fails at once, exit 2);
- it starts w1, then, once w1 serves, the others together (a broken app fails once, with its
  own error, not N times); a worker that exits before it ever served stops everything (exit 2
  if the worker said 2: a usage or configuration error);
- ``trio-channels: serving on http://HOST:PORT (N workers)`` on stdout once all serve;
- a worker that dies is restarted under the same node name after a back-off (0.5 s doubling to
  10 s with its recent crashes); after a crash the supervisor deletes the dead worker's
  liveness key in Redis so the new process claims its name at once (the process is gone: the
  supervisor reaped it). More than :data:`MAX_RESTARTS` restarts of one worker within
  :data:`RESTART_PERIOD` seconds: it gives up, stops every worker and exits 1;
- the private ``redis-server`` is restarted the same way if it dies (workers reconnect);
- SIGTERM / SIGINT: forwarded to every worker, which drains (clients closed with 1012);
  the supervisor waits for them (each stops within its endpoint's ``drain_timeout``; one still
  alive 10 s after that is killed), then stops the private Redis, and exits 0 (1 if a worker
  did not stop cleanly). A second signal exits at once (status 1).

Workers run in their own sessions (a terminal's Ctrl-C reaches the supervisor only, which
forwards it once) and get SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``); their stderr
is the supervisor's, each log line tagged with the worker's node name; the Redis URL reaches
them through the environment, not the command line (visible to every user).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from supervisor import RestartIntensity

if TYPE_CHECKING:
    from channels.endpoint import Endpoint

log = logging.getLogger("channels.workers")

#: Set in a worker's environment to its label (``w1``...): the CLI then tags its log lines and
#: tells the supervisor its drain timeout (see :func:`setup_worker`).
WORKER_ENV = "TRIO_CHANNELS_WORKER"
#: Restarts of one worker allowed within :data:`RESTART_PERIOD` seconds before giving up.
MAX_RESTARTS = 5
RESTART_PERIOD = 60.0
#: Back-off before a restart: ``BACKOFF_MIN`` doubling with each recent crash, at most
#: ``BACKOFF_MAX`` seconds.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
#: A worker still alive this long after its drain timeout is killed (its own backstop exits it
#: 5 s after the timeout; this one catches a process that cannot run Python any more).
KILL_MARGIN = 10.0
#: The drain timeout assumed until a worker reports its own (``Endpoint(drain_timeout=)``).
DEFAULT_DRAIN_TIMEOUT = 30.0
REDIS_START_TIMEOUT = 10.0
REDIS_MISSING = ("--workers needs Redis to connect the workers and redis-server is not on "
                 "PATH: install it (e.g. apt-get install redis-server) or pass "
                 "--redis-url redis://HOST:PORT")

#: LongPoll session tokens must verify on every worker (a poll may reach any of them).
SECRET_ENV = "TRIO_CHANNELS_SECRET_KEY"

_SERVING = "trio-channels: serving on "
_WORKER_LINE = re.compile(r"^trio-channels: worker (\S+) drain_timeout=([0-9.]+)$")
_PR_SET_PDEATHSIG = 1


class WorkersError(Exception):
    """A mistake in how the supervisor was started: one line on stderr, exit status 2."""


# -- in a worker -------------------------------------------------------------------------------

def setup_worker(label: str, node_name: str) -> None:
    """Called by the CLI in a worker: tag every log line with the worker's node name (text:
    ``[name]`` after the level; JSON: a ``node`` field)."""
    from channels.logging import TEXT_FORMAT, JsonFormatter

    class _Tag(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.node = node_name
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Tag())
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(
                TEXT_FORMAT.replace("%(name)s", "[%(node)s] %(name)s")))


def worker_ready_line(label: str, endpoint: Endpoint) -> str:
    """What a worker prints (before the usual ``serving on`` line) for its supervisor."""
    return f"trio-channels: worker {label} drain_timeout={endpoint.drain_timeout:g}"


# -- the supervisor ----------------------------------------------------------------------------

@dataclass
class Config:
    app: str
    host: str
    port: int
    workers: int
    base_name: str
    redis_url: str | None  # None: start a private redis-server
    redis_server: str | None  # its executable
    log_level: str
    log_format: str
    metrics_port: int | None
    cwd: str = field(default_factory=os.getcwd)


def supervise(args: argparse.Namespace) -> int:
    """``trio-channels serve APP --workers N``: run the supervisor; returns the exit status."""
    from channels.config import BindError

    try:
        config = _config(args)
        reservation = _reserve_port(config.host, config.port)
    except WorkersError as exc:
        print(f"trio-channels: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        print(f"trio-channels: {exc}", file=sys.stderr)
        return 2
    config.port = reservation.getsockname()[1]
    try:
        return trio.run(Supervisor(config).run)
    finally:
        reservation.close()


def _config(args: argparse.Namespace) -> Config:
    from channels.redis import check_url

    n = args.workers
    if n < 1:
        raise WorkersError(f"--workers must be 1 or more, not {n}")
    redis_server = None
    if args.redis_url:
        try:
            check_url(args.redis_url)
        except ValueError as exc:
            raise WorkersError(f"--redis-url: {exc}") from None
    elif n > 1:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise WorkersError(REDIS_MISSING)
    base = args.node_name or f"{socket.gethostname()}-{os.getpid()}"
    return Config(app=args.app, host=args.host, port=args.port, workers=n, base_name=base,
                  redis_url=args.redis_url or None, redis_server=redis_server,
                  log_level=args.log_level, log_format=args.log_format,
                  metrics_port=args.metrics_port)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT without listening: the port is ours (port 0 picks
    one for every worker), a port another program holds fails here, and the kernel never
    hands this socket a connection (only listening sockets get them)."""
    from channels.config import BindError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError("the workers' port", host, port, exc) from exc
    # SO_REUSEPORT lets any process of this user join the port, another supervisor's workers
    # included: refuse a port where something already listens rather than share it.
    bound = sock.getsockname()[1]
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((probe_host, bound), timeout=1.0):
            pass
    except OSError:
        return sock
    sock.close()
    raise BindError("the workers' port", host, port,
                    OSError(98, "something already listens there (another trio-channels "
                                "--workers?)"))


def _pdeathsig() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (children are spawned from
    the supervisor's main thread, so the signal is tied to the process's life)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Child:
    """A child process spawned from the trio thread, its exit awaited through a pidfd.

    (``trio.lowlevel.open_process`` forks from a worker thread, and ``PR_SET_PDEATHSIG``
    fires when the thread that forked exits, not the process.)
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: str | None = None, stdout: int | None = None,
                 stderr: int | None = None) -> None:
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=stdout, stderr=stderr, start_new_session=True,
                                      preexec_fn=_pdeathsig)
        self.pid = self.popen.pid
        self._pidfd = os.pidfd_open(self.pid)
        self._waiting = False
        self._changed = trio.Event()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    async def wait(self) -> int:
        """Wait for the exit (any number of tasks may wait) and return the status."""
        while self.popen.poll() is None:
            if self._waiting:  # one task waits on the pidfd, the others on it
                await self._changed.wait()
                continue
            self._waiting = True
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
            finally:
                self._waiting = False
                changed, self._changed = self._changed, trio.Event()
                changed.set()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        return self.popen.returncode


def describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


@dataclass(eq=False)
class Worker:
    index: int
    label: str
    name: str
    proc: Child | None = None
    lives: int = 0
    ready: bool = False
    ever_ready: bool = False
    ready_event: trio.Event = field(default_factory=trio.Event)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    final_status: int | None = None
    crashes: deque[float] = field(default_factory=deque)
    intensity: RestartIntensity = field(
        default_factory=lambda: RestartIntensity(MAX_RESTARTS, RESTART_PERIOD))


class PrivateRedis:
    """``redis-server`` on a Unix socket in a private temporary directory (mode 0700 and
    ``--unixsocketperm 700``: only this user), no TCP, nothing written to disk but its log."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        base = tempfile.gettempdir()
        if len(base) > 60:  # a Unix socket path is at most ~107 bytes
            base = "/tmp"
        self.dir = Path(tempfile.mkdtemp(prefix="trio-channels-", dir=base))
        self.socket_path = self.dir / "redis.sock"
        self.log_path = self.dir / "redis.log"
        self.proc: Child | None = None
        self.stopping = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        argv = [self.executable, "--port", "0", "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.log_path)]
        self.proc = Child(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with trio.move_on_after(REDIS_START_TIMEOUT):
            while True:
                if not self.proc.alive():
                    raise RuntimeError(f"redis-server exited with "
                                       f"{describe_status(self.proc.popen.wait())}: "
                                       f"{self.log_tail()}")
                if await _ping(self.socket_path):
                    return
                await trio.sleep(0.02)
        self.proc.signal(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not answer within {REDIS_START_TIMEOUT:g}s: "
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.alive():
            self.proc.signal(signal.SIGTERM)
            with trio.move_on_after(5.0):
                await self.proc.wait()
            if self.proc.alive():
                self.proc.signal(signal.SIGKILL)
                await self.proc.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


async def _ping(path: Path) -> bool:
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError:
        return False
    async with stream:
        with trio.move_on_after(1.0):
            await stream.send_all(b"PING\r\n")
            return (await stream.receive_some(64)).startswith(b"+PONG")
    return False


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers = [Worker(i, f"w{i}", f"{config.base_name}-w{i}")
                        for i in range(1, config.workers + 1)]
        self.redis = PrivateRedis(config.redis_server) if config.redis_server else None
        self.redis_url = self.redis.url if self.redis else config.redis_url
        self.stopping = False
        self.signals = 0
        self.exit_code = 0
        self.announced = False
        self.secret = secrets.token_urlsafe(32)
        self._stop_event = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- main flow ---------------------------------------------------------------------------

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals, signals)
                try:
                    await self._main()
                finally:
                    if self.redis is not None:
                        with trio.CancelScope(shield=True):
                            await self._stop_redis()
                nursery.cancel_scope.cancel()
        statuses = [w.final_status for w in self.workers if w.final_status is not None]
        if self.exit_code == 0 and any(s != 0 for s in statuses):
            self.exit_code = 1
        log.info("stopped (exit status %d)", self.exit_code)
        return self.exit_code

    async def _main(self) -> None:
        c = self.config
        if self.redis is not None:
            try:
                await self.redis.start()
            except RuntimeError as exc:
                log.error("could not start the private redis-server: %s", exc)
                self.exit_code = 1
                return
            assert self.redis.proc is not None
            log.info("private redis-server (pid %d) at %s", self.redis.proc.pid, self.redis.url)
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_redis)
        cluster = ("through " + _redact(self.redis_url) if self.redis_url
                   else "alone (one worker, no Redis)")
        log.info("starting %d worker%s on http://%s:%d (SO_REUSEPORT), node names %s, %s",
                 c.workers, "s" if c.workers > 1 else "", c.host, c.port,
                 self._names(), cluster)
        async with trio.open_nursery() as workers:
            first = self.workers[0]
            workers.start_soon(self._run_worker, first)
            await first.ready_event.wait()  # set on ready, and when stopping
            if not self.stopping:
                for w in self.workers[1:]:
                    workers.start_soon(self._run_worker, w)
        # Every worker's loop has ended: they all stopped.

    def _names(self) -> str:
        names = [w.name for w in self.workers]
        return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"

    # -- workers -----------------------------------------------------------------------------

    def _worker_argv(self, w: Worker) -> tuple[list[str], dict[str, str]]:
        c = self.config
        argv = [sys.executable, "-m", "channels.cli", "serve", c.app, "--host", c.host,
                "--port", str(c.port), "--reuse-port", "--node-name", w.name,
                "--log-level", c.log_level, "--log-format", c.log_format]
        if c.metrics_port is not None:
            argv += ["--metrics-port", str(c.metrics_port + w.index - 1 if c.metrics_port
                                           else 0)]
        env = {k: v for k, v in os.environ.items()
               if k not in ("TRIO_CHANNELS_WORKERS", "TRIO_CHANNELS_REDIS_URL")}
        env[WORKER_ENV] = w.label
        if self.redis is not None and not env.get(SECRET_ENV):
            # The private cluster is exactly these workers: give them one secret key (with
            # --redis-url other machines' nodes need the same: the operator sets it).
            env[SECRET_ENV] = self.secret
        env["PYTHONUNBUFFERED"] = "1"
        if self.redis_url:  # not in argv: a command line is visible to every user
            env["TRIO_CHANNELS_REDIS_URL"] = self.redis_url
        return argv, env

    async def _run_worker(self, w: Worker) -> None:
        while not self.stopping:
            argv, env = self._worker_argv(w)
            read_fd, write_fd = os.pipe()
            try:
                proc = Child(argv, env=env, cwd=self.config.cwd, stdout=write_fd)
            except OSError as exc:
                os.close(read_fd)
                log.error("could not start worker %s: %s", w.label, exc)
                self._stop(1)
                return
            finally:
                os.close(write_fd)
            w.proc, w.ready = proc, False
            w.lives += 1
            log.info("worker %s started (pid %d, node %s)", w.label, proc.pid, w.name)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_output, w, proc, trio.lowlevel.FdStream(read_fd))
                status = await proc.wait()
            w.proc, w.ready = None, False
            if self.stopping:
                w.final_status = status
                level = logging.INFO if status == 0 else logging.WARNING
                log.log(level, "worker %s (pid %d) stopped (%s)", w.label, proc.pid,
                        describe_status(status))
                return
            if not w.ever_ready and w.lives == 1:
                w.final_status = status
                log.error("worker %s (pid %d) exited (%s) before it served: stopping",
                          w.label, proc.pid, describe_status(status))
                self._stop(2 if status == 2 else 1)
                return
            now = trio.current_time()
            w.crashes.append(now)
            while w.crashes and now - w.crashes[0] > RESTART_PERIOD:
                w.crashes.popleft()
            if not w.intensity.record(now):
                w.final_status = status
                log.error("worker %s (pid %d) exited (%s): %d restarts within %gs, giving up: "
                          "stopping every worker", w.label, proc.pid, describe_status(status),
                          MAX_RESTARTS, RESTART_PERIOD)
                self._stop(1)
                return
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (len(w.crashes) - 1))
            log.warning("worker %s (pid %d, node %s) exited (%s): restarting it in %gs under "
                        "the same node name (restart %d within %gs; at most %d)",
                        w.label, proc.pid, w.name, describe_status(status), delay,
                        len(w.crashes), RESTART_PERIOD, MAX_RESTARTS)
            if status != 0:
                await self._release_name(w)
            with trio.move_on_after(delay):
                await self._stop_event.wait()

    async def _read_output(self, w: Worker, proc: Child, stream: trio.lowlevel.FdStream) -> None:
        """The worker's stdout: its ready line and drain timeout; anything else (the app's
        prints) is passed on to ours."""
        buffer = b""
        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._worker_line(w, proc, line.decode(errors="replace"))
        if buffer:
            self._worker_line(w, proc, buffer.decode(errors="replace"))

    def _worker_line(self, w: Worker, proc: Child, line: str) -> None:
        if (m := _WORKER_LINE.match(line)) is not None:
            w.drain_timeout = float(m.group(2))
        elif line.startswith(_SERVING):
            w.ready = True
            again = w.ever_ready or w.lives > 1
            w.ever_ready = True
            log.info("worker %s (pid %d, node %s) serving%s", w.label, proc.pid, w.name,
                     " again" if again else "")
            w.ready_event.set()
            if not self.announced and all(x.ever_ready for x in self.workers) \
                    and not self.stopping:
                self.announced = True
                c = self.config
                n = c.workers
                print(f"{_SERVING}http://{c.host}:{c.port} ({n} worker{'s' if n > 1 else ''})",
                      flush=True)
        else:
            print(line, flush=True)

    async def _release_name(self, w: Worker) -> None:
        """Delete a dead worker's liveness key, so its successor claims the name at once
        instead of waiting for the key's TTL (8 s). Safe: that process is reaped."""
        if not self.redis_url:
            return
        from coredis import Redis
        from coredis.retry import NoRetryPolicy

        from channels.redis import RedisAdapter

        key = RedisAdapter(self.redis_url, w.name).alive_key
        try:
            with trio.fail_after(2.0):
                client: Redis[bytes] = Redis.from_url(
                    self.redis_url, retry_policy=NoRetryPolicy(), connect_timeout=1.0,
                    stream_timeout=1.0)
                async with client:
                    await client.delete([key])
        except Exception as exc:
            log.warning("could not release node name %s in Redis (%s): the new worker waits "
                        "for it to lapse (8 s at most)", w.name, exc)

    # -- stopping ----------------------------------------------------------------------------

    def _stop(self, code: int) -> None:
        """Stop every worker (SIGTERM: they drain); the worker loops end as they exit."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self._stop_event.set()
        for w in self.workers:
            w.ready_event.set()
            if w.proc is not None:
                w.proc.signal(signal.SIGTERM)
        assert self._nursery is not None
        self._nursery.start_soon(self._backstop)

    async def _backstop(self) -> None:
        limit = max(w.drain_timeout for w in self.workers) + KILL_MARGIN
        await trio.sleep(limit)
        for w in self.workers:
            if w.proc is not None and w.proc.alive():
                log.error("worker %s (pid %d) still running %gs after the stop: killing it",
                          w.label, w.proc.pid, limit)
                w.proc.signal(signal.SIGKILL)

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            self.signals += 1
            if self.signals > 1:
                log.warning("received %s again: exiting now", name)
                self._exit_now(signum)
            live = [w for w in self.workers if w.proc is not None]
            if self.stopping:
                log.info("received %s: already stopping; send it again to exit at once", name)
                continue
            log.info("received %s: draining %d worker%s (at most %gs; send it again to exit at "
                     "once)", name, len(live), "" if len(live) == 1 else "s",
                     max(w.drain_timeout for w in self.workers))
            self._stop(0)

    def _exit_now(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None:
                w.proc.signal(signum)  # a worker's second signal: it exits at once
        if self.redis is not None:
            if self.redis.proc is not None:
                self.redis.proc.signal(signal.SIGKILL)
            self.redis.cleanup()
        logging.shutdown()
        os._exit(1)

    # -- the private Redis -------------------------------------------------------------------

    async def _watch_redis(self) -> None:
        redis = self.redis
        assert redis is not None
        intensity = RestartIntensity(MAX_RESTARTS, RESTART_PERIOD)
        while True:
            assert redis.proc is not None
            status = await redis.proc.wait()
            if redis.stopping:
                return
            log.error("the private redis-server (pid %d) exited (%s): %s; restarting it "
                      "(workers reconnect; cross-worker broadcasts are lost meanwhile)",
                      redis.proc.pid, describe_status(status), redis.log_tail())
            if not intensity.record(trio.current_time()):
                log.error("the private redis-server died %d times within %gs: giving up",
                          MAX_RESTARTS, RESTART_PERIOD)
                self._stop(1)
                return
            await trio.sleep(BACKOFF_MIN)
            try:
                await redis.start()
            except RuntimeError as exc:
                log.error("could not restart the private redis-server: %s", exc)
                self._stop(1)
                return
            log.info("private redis-server restarted (pid %d)", redis.proc.pid)

    async def _stop_redis(self) -> None:
        redis = self.redis
        assert redis is not None
        pid = redis.proc.pid if redis.proc is not None else None
        await redis.stop()
        if pid is not None:
            log.info("stopped the private redis-server (pid %d)", pid)


def _redact(url: str | None) -> str:
    from channels.redis import _redact as redact

    return redact(url) if url else ""
