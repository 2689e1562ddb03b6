"""``trio-channels client URL TOPIC``: JSON lines for every event, Ctrl-C to stop."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trio

from channels.client import connect
from tests.support.server import ROOT, ServerProcess, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("tests.support.app:make_endpoint", args=["--log-level", "WARNING"]) as s:
        yield s


class Cli:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "channels.cli", "client", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(orjson.loads(line))

    async def next(self, kind: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        def wait() -> dict[str, Any]:
            while True:
                line = self.lines.get(timeout=timeout)
                if line["type"] == kind and all(line.get(k) == v for k, v in match.items()):
                    return line
        return await trio.to_thread.run_sync(wait)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(15)


async def test_cli_prints_every_event_and_stops_on_ctrl_c(server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server.port}/socket"
    cli = Cli(url, "room:cli", "--param", "user_id=cli", "--join-param", "reply:=true",
              "--token", "t0k")
    try:
        opened = await cli.next("open")
        assert opened["url"] == url
        joined = await cli.next("joined")
        assert joined["reply"] == {"joined": "room:cli"} and joined["join_ref"]
        pushed = await cli.next("message", event="joined")
        assert pushed["payload"] == {"status": "connected", "user_id": "cli"}
        with trio.fail_after(15):
            async with connect(url) as socket:
                channel = await socket.join("room:cli")
                await channel.push("shout", {"hello": "cli"})
                await channel.push("bin_broadcast", b"\x00\xff")
        shout = await cli.next("message", event="shout")
        assert shout["payload"] == {"hello": "cli"} and shout["ref"] is None
        assert (await cli.next("message", event="bin"))["payload"] == {"binary": "AP8="}
    finally:
        code = cli.stop()
    assert code == 0


async def test_cli_exits_1_on_a_refused_join_or_connection(server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server.port}/socket"
    cli = Cli(url, "room:no", "--join-param", "refuse:=true")
    refused = await cli.next("join_error")
    assert refused["reply"] == {"reason": "refused"}
    assert cli.proc.wait(15) == 1
    cli = Cli(url, "room:no", "--token", "bad-token")
    assert "HTTP 403" in (await cli.next("error"))["error"]
    assert cli.proc.wait(15) == 1
