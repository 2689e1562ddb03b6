"""``trio-channels serve`` as a real process: serves, drains on SIGTERM/SIGINT, exits 0."""

from __future__ import annotations

import signal
import sys

import pytest
import trio

from tests.support.client import connect
from tests.support.server import ServerProcess


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_clients_with_1012_and_exits_0(signum: int) -> None:
    server = ServerProcess("tests.support.app:make_endpoint")
    await trio.to_thread.run_sync(server.start)
    try:
        async with connect(server.port) as a, connect(server.port) as b:
            await a.join("room:cli", "11", "1")
            await b.join("room:cli", "11", "1")
            assert server.proc is not None
            server.proc.send_signal(signum)
            assert await a.closed(timeout=10) == 1012
            assert await b.closed(timeout=10) == 1012
        code = await trio.to_thread.run_sync(lambda: server.proc.wait(15))  # type: ignore[union-attr]
        assert code == 0
        out = "".join(server.output)
        assert "draining 2 connections" in out
    finally:
        server.kill()


async def test_bad_app_spec_fails_clearly() -> None:
    proc = await trio.run_process(
        [sys.executable, "-m", "channels.cli", "serve", "nonexistent_module_xyz:endpoint"],
        capture_stderr=True, check=False)
    assert proc.returncode != 0
    assert b"nonexistent_module_xyz" in proc.stderr
