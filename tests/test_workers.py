"""``trio-channels serve APP --workers N``: real processes (a supervisor, its workers and its
private redis-server), raw WebSocket clients.

SO_REUSEPORT lets the kernel choose the worker of each connection, so the tests open
connections until they have one on every worker (the join reply names the worker's node).
Timeouts bound each wait; none is a timing assertion.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.redis_server import RedisServerMissing
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess

APP = "tests.support.workers_app:make_endpoint"
TOPIC = "room:main"

pytestmark = pytest.mark.skipif(
    not any((Path(d) / "redis-server").exists() for d in os.environ.get("PATH", "").split(":")),
    reason=str(RedisServerMissing("redis-server is not on PATH")))


@pytest.fixture
def supervisors() -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(workers: int = 2, args: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(APP, args=["--workers", str(workers), *(args or [])])
        started.append(server)
        server.start(timeout=60)
        return server

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(40)
            except subprocess.TimeoutExpired:
                server.kill()


def output(server: ServerProcess) -> str:
    return "".join(server.output)


async def wait_output(server: ServerProcess, pattern: str, timeout: float = 30,
                      after: int = 0) -> re.Match[str]:
    """The first match of ``pattern`` in the supervisor's output (from line ``after`` on)."""
    with trio.fail_after(timeout):
        while True:
            m = re.search(pattern, "".join(server.output[after:]), re.MULTILINE)
            if m is not None:
                return m
            await trio.sleep(0.05)


@asynccontextmanager
async def clients_on_every_worker(port: int, workers: int, topic: str = TOPIC,
                                  tries: int = 200) -> AsyncIterator[dict[str, RawClient]]:
    """One client per worker, joined to ``topic`` as user ``user-<node>``: {node: client}.

    Each connection first joins a probe topic to learn its worker; connections to a worker
    already covered are closed."""
    async with AsyncExitStack() as stack:
        found: dict[str, RawClient] = {}
        for _ in range(tries):
            client = await stack.enter_async_context(connect(port))
            reply = await client.join("room:probe", "p", "p", {"user": "probe"})
            node = reply[4]["response"]["node"]
            if node in found:
                await client.ws.aclose()
                continue
            found[node] = client
            if len(found) == workers:
                break
        assert len(found) == workers, f"connections reached only {sorted(found)}"
        for node, client in found.items():
            reply = await client.join(topic, "1", "1", {"user": f"user-{node}"})
            assert reply[4]["status"] == "ok", reply
            assert reply[4]["response"]["node"] == node
        yield found


async def next_event(client: RawClient, event: str, sender: str | None = None,
                     topic: str = TOPIC, timeout: float = 15) -> list[Any]:
    """The next ``event`` on ``topic`` (from ``sender``, when given), skipping others."""
    with trio.fail_after(timeout):
        while True:
            msg = await client.recv(timeout)
            if msg[2] == topic and msg[3] == event and \
                    (sender is None or msg[4].get("from") == sender):
                return msg


async def reply_to(client: RawClient, ref: str, timeout: float = 15) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            msg = await client.recv(timeout)
            if msg[3] == "phx_reply" and msg[1] == ref:
                assert msg[4]["status"] == "ok", msg
                response: dict[str, Any] = msg[4]["response"]
                return response


async def wait_presences(client: RawClient, expected: set[str], topic: str = TOPIC,
                         timeout: float = 15) -> None:
    """Apply presence_state/presence_diff as phoenix.js does until the keys are ``expected``."""
    users: set[str] = set()
    with trio.fail_after(timeout):
        while users != expected:
            msg = await client.recv(timeout)
            if msg[2] != topic:
                continue
            if msg[3] == "presence_state":
                users = set(msg[4])
            elif msg[3] == "presence_diff":
                users |= set(msg[4]["joins"])
                users -= set(msg[4]["leaves"]) - set(msg[4]["joins"])


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone for our purpose (its parent did not reap it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


async def test_broadcasts_presence_rooms_and_history_cross_workers(supervisors: Any) -> None:
    server = supervisors(2)
    out = output(server)
    assert re.search(r"private redis-server \(pid \d+\) at unix://", out), out
    async with clients_on_every_worker(server.port, 2) as clients:
        (node_a, a), (node_b, b) = clients.items()
        assert node_a != node_b and {node_a[-3:], node_b[-3:]} == {"-w1", "-w2"}
        users = {f"user-{node_a}", f"user-{node_b}"}
        # presence: each sees both, whichever worker tracked them
        await wait_presences(a, users)
        await wait_presences(b, users)
        # broadcasts both ways, through the private Redis
        await a.send("1", "10", TOPIC, "shout", {"from": node_a})
        from_a_on_b = await next_event(b, "shout", node_a)
        await b.send("1", "11", TOPIC, "shout", {"from": node_b})
        from_b_on_a = await next_event(a, "shout", node_b)
        # history: one stream in Redis, so both workers number the broadcasts alike
        pos_a, pos_b = from_a_on_b[4]["phx_pos"], from_b_on_a[4]["phx_pos"]
        assert pos_a["epoch"] == pos_b["epoch"] and pos_b["offset"] == pos_a["offset"] + 1
        # rooms: one Counter "k" in the cluster, whichever worker calls it
        await a.send("1", "12", TOPIC, "count", {"key": "k"})
        first = await reply_to(a, "12")
        await b.send("1", "13", TOPIC, "count", {"key": "k"})
        second = await reply_to(b, "13")
        assert first["node"] == second["node"] and [first["count"], second["count"]] == [1, 2]
        # a first join elsewhere replays the history kept in Redis
        async with connect(server.port) as c:
            reply = await c.join(TOPIC, "1", "1", {"user": "late", "phx_pos": {"last": 10}})
            assert reply[4]["response"]["phx_recovery"]["replayed"] == 2, reply
            replayed = [await next_event(c, "shout"), await next_event(c, "shout")]
            assert [m[4]["from"] for m in replayed] == [node_a, node_b]


async def test_sigterm_drains_every_worker_then_stops_redis(supervisors: Any) -> None:
    server = supervisors(2)
    m = await wait_output(server, r"private redis-server \(pid (\d+)\) at unix://(\S+)")
    redis_pid, socket_path = int(m.group(1)), Path(m.group(2))
    assert await trio.Path(socket_path).exists()
    async with clients_on_every_worker(server.port, 2) as clients:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        for client in clients.values():
            assert await client.closed(timeout=20) == 1012
    assert server.proc.wait(40) == 0, output(server)
    out = output(server)
    assert re.search(r"received SIGTERM: draining 2 workers", out), out
    assert len(re.findall(r"worker w\d \(pid \d+\) stopped \(status 0\)", out)) == 2, out
    assert "stopped the private redis-server" in out, out
    assert pid_gone(redis_pid)
    assert not await trio.Path(socket_path.parent).exists()


async def test_a_killed_worker_is_restarted_under_its_name_and_serves_again(
        supervisors: Any) -> None:
    server = supervisors(2)
    m = await wait_output(server, r"worker w2 \(pid (\d+), node (\S+)\) serving")
    pid, node = int(m.group(1)), m.group(2)
    mark = len(server.output)
    os.kill(pid, signal.SIGKILL)
    await wait_output(server, rf"worker w2 \(pid {pid}, node {re.escape(node)}\) exited "
                              rf"\(killed by SIGKILL\): restarting it", after=mark)
    again = await wait_output(server, rf"worker w2 \(pid (\d+), node {re.escape(node)}\) "
                                      r"serving again", after=mark)
    assert int(again.group(1)) != pid
    assert server.proc is not None and server.proc.poll() is None
    # the new w2 serves, and is part of the cluster again
    async with clients_on_every_worker(server.port, 2) as clients:
        assert node in clients
        other = next(n for n in clients if n != node)
        await clients[other].send("1", "10", TOPIC, "shout", {"from": other})
        await next_event(clients[node], "shout", other)
        await clients[node].send("1", "11", TOPIC, "shout", {"from": node})
        await next_event(clients[other], "shout", node)


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "channels.cli", "serve", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=60)


def test_without_redis_server_on_path_one_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _run_cli([APP, "--port", "0", "--workers", "2"], {"PATH": str(empty)})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "redis-server is not on PATH" in lines[0] and "install" in lines[0]
    assert result.stdout == ""


def test_a_broken_app_fails_once_with_exit_2() -> None:
    result = _run_cli(["no_such_module:endpoint", "--port", "0", "--workers", "3"], {})
    assert result.returncode == 2, result
    assert result.stderr.count("cannot import 'no_such_module'") == 1, result.stderr
    assert "worker w2" not in result.stderr


def test_a_port_something_listens_on_is_refused(tmp_path: Path) -> None:
    # SO_REUSEPORT would let the workers share it with that listener (same user): refused.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = _run_cli([APP, "--port", str(port), "--workers", "2"], {})
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        f"trio-channels: cannot listen on 127.0.0.1:{port} (the workers' port): something "
        f"already listens there (another trio-channels --workers?)"]
