"""Start and stop in every state, readiness, and misuse that fails at start with one line.

Real ``trio-channels serve`` processes; waits are bounded (correctness bounds, not timings).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import trio

from tests.cluster.redis_server import RedisServer, free_port
from tests.support.client import connect
from tests.support.server import ROOT, ServerProcess

APP = "tests.support.ops_app:make_endpoint"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "channels.cli", "serve", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


async def test_without_redis_the_node_serves_local_clients_and_retries() -> None:
    redis = RedisServer(free_port())  # not started: nothing listens there yet
    node = ServerProcess(APP, args=["--redis-url", redis.url, "--node-name", "ops-a"])
    await trio.to_thread.run_sync(node.start)
    try:
        assert _get(node.port, "/healthz") == (200, "ok\n")
        status, body = _get(node.port, "/readyz")
        assert status == 503 and "cluster link down" in body
        async with connect(node.port) as client:
            assert (await client.join("echo:1", "1", "1"))[4]["status"] == "ok"
            await client.send("1", "2", "echo:1", "ping", {"n": 1})
            assert (await client.recv_until("phx_reply"))[4] == {
                "status": "ok", "response": {"n": 1}}
        await trio.to_thread.run_sync(redis.start)
        await trio.to_thread.run_sync(
            _wait_for, lambda: _get(node.port, "/readyz")[0] == 200, 20, "/readyz 200")
        out = "".join(node.output)
        assert "serving local clients meanwhile" in out
        assert out.count("Traceback") == 0
        assert node.stop(timeout=15) == 0
    finally:
        node.kill()
        redis.close()


@pytest.mark.parametrize("state", ["redis down", "clients stalled in terminate"])
async def test_sigterm_exits_within_the_drain_timeout(state: str) -> None:
    args = ["--redis-url", f"redis://127.0.0.1:{free_port()}"] if state == "redis down" else []
    node = ServerProcess(APP, env={"TEST_DRAIN_TIMEOUT": "6", "TEST_TERMINATE_SECONDS": "30"},
                         args=args)
    await trio.to_thread.run_sync(node.start)
    try:
        async with connect(node.port) as client:
            await client.join("slow:1", "1", "1")
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            assert await client.closed(timeout=10) == 1012
            code = await trio.to_thread.run_sync(lambda: node.proc.wait(6 + 5))  # type: ignore[union-attr]
        assert code == 0
    finally:
        node.kill()


async def test_a_second_signal_exits_at_once() -> None:
    node = ServerProcess(APP, env={"TEST_DRAIN_TIMEOUT": "60", "TEST_TERMINATE_SECONDS": "30",
                                   "TEST_SHUTDOWN_SECONDS": "60"})
    await trio.to_thread.run_sync(node.start)
    try:
        async with connect(node.port) as client:
            await client.join("slow:1", "1", "1")
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            assert await client.closed(timeout=10) == 1012
            # Draining (the channel's slow terminate holds it for 5 s): health is answered,
            # readiness is not.
            assert _get(node.port, "/readyz") == (503, "draining\n")
            assert _get(node.port, "/healthz")[0] == 200
        await trio.to_thread.run_sync(
            _wait_for, lambda: "slow shutdown hook running" in "".join(node.output), 20,
            "the slow shutdown hook")
        node.proc.send_signal(signal.SIGINT)
        code = await trio.to_thread.run_sync(lambda: node.proc.wait(10))  # type: ignore[union-attr]
        assert code == 1
        assert "again: exiting now" in "".join(node.output)
    finally:
        node.kill()


@pytest.mark.parametrize(("args", "expected"), [
    (["tests.support.ops_app:make_endpoint", "--redis-url", "foo://bar"],
     "--redis-url: 'foo://bar' is not a Redis URL"),
    (["tests.support.ops_app:make_endpoint", "--redis-url", "localhost:6379"],
     "is not a Redis URL"),
    (["tests/support/ops_app.py:make_endpoint"],
     "is a file path: give the module name, e.g. tests.support.ops_app:make_endpoint"),
    (["no_such_module_xyz:endpoint"], "cannot import 'no_such_module_xyz'"),
    (["tests.support.ops_app:nothing_here"], "has no attribute 'nothing_here'"),
    (["tests.support.ops_app"], "expected MODULE:ATTR"),
    (["tests.support.ops_app:bad_route"],
     "BadRouteSocket.channels['room:*']: <class 'tests.support.ops_app.NotAChannel'> is not a "
     "Channel subclass"),
])
def test_misuse_fails_at_start_with_one_line(args: list[str], expected: str) -> None:
    proc = _run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("trio-channels:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_configuration_error_is_listed() -> None:
    proc = _run_cli("tests.support.ops_app:shadowed", "--port", "0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "configuration:" in line]
    assert any("'room:lobby'" in e and "never matches" in e for e in errors), proc.stderr
    assert any("'a:*:b'" in e and "only a trailing '*'" in e for e in errors), proc.stderr
    assert any("SyncJoin.join must be defined with 'async def'" in e for e in errors)


def test_a_busy_port_is_one_line() -> None:
    node = ServerProcess(APP)
    node.start()
    try:
        proc = _run_cli(APP, "--port", str(node.port))
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.startswith("trio-channels:")]
        assert lines == [f"trio-channels: cannot listen on 127.0.0.1:{node.port} (the endpoint): "
                         "address already in use"], proc.stderr
        proc = _run_cli(APP, "--port", "0", "--metrics-port", str(node.port))
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.startswith("trio-channels:")]
        assert lines == [f"trio-channels: cannot listen on 127.0.0.1:{node.port} (metrics): "
                         "address already in use"], proc.stderr
    finally:
        node.kill()


async def test_a_bad_return_value_gets_an_error_reply_and_the_channel_lives_on(
        nursery: trio.Nursery) -> None:
    from tests.support.ops_app import make_endpoint

    endpoint = make_endpoint()
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as client:
        await client.join("echo:1", "1", "1")
        await client.send("1", "2", "echo:1", "dict_reply", {})
        assert (await client.recv_until("phx_reply"))[4] == {
            "status": "error", "response": {"reason": "invalid reply"}}
        await client.send("1", "3", "echo:1", "ping", {"still": "here"})
        assert (await client.recv_until("phx_reply"))[4] == {
            "status": "ok", "response": {"still": "here"}}


async def test_repeated_identical_errors_are_logged_once_per_interval(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    from supervisor._dynamic import _log_crash_once
    from tests.support.app import make_endpoint

    endpoint = make_endpoint()
    port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
    async with connect(port) as client:
        await client.join("room:dup", "1", "1")
        for ref in range(2, 22):
            await client.send("1", str(ref), "room:dup", "no_such_event", {})
            assert (await client.recv_until("phx_reply"))[4]["status"] == "error"
    unhandled = [r for r in caplog.records if "unhandled event" in r.getMessage()]
    assert len(unhandled) == 1

    caplog.clear()
    for n in range(50):
        try:
            raise RuntimeError("the same bug")
        except RuntimeError as exc:
            _log_crash_once("channels", f"room:{n}", exc)
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None
