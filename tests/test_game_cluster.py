"""The example game as a two-node cluster (game-a, game-b: two ``trio-channels serve`` processes
sharing a private redis-server, as ``./scripts/game-cluster`` runs them but on free ports and
with a 2 s arena lease), one Chromium page per node (tests/browser/game_cluster.mjs).

The arena starts on node a (its first player is there); a player on node b plays in it through
Redis. Then node a is killed with SIGKILL: the arena comes back on node b from the snapshot
node a last stored in Redis, its ticks continuing from there, and node b's players keep
playing. Needs redis-server, Node, ``npm ci`` and Debian's Chromium (``./scripts/test``
installs them); a missing piece fails the test rather than skipping it. The timeouts below
bound waits; they are not timing assertions.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from tests.cluster.redis_server import RedisServer
from tests.support.server import ROOT, ServerProcess
from tests.test_game_browser import CHROMIUM, check_browser_prerequisites, node_executable

APP = "examples.game.app:endpoint"
SCRIPT = ROOT / "tests/browser/game_cluster.mjs"
ARENA = "failover"
LEASE = "2"
#: game_cluster.mjs has its own 110 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 150.0


def stored_snapshot(redis: RedisServer, arena: str) -> dict[str, Any]:
    """The arena's snapshot as stored in Redis (channels.placement.RedisLeaseStore's keys)."""
    data = redis.command("HGET", f"trio_channels:room:Arena:{arena}:snap", "d")
    assert isinstance(data, bytes), f"no snapshot of arena {arena!r} in Redis: {data!r}"
    state = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert isinstance(state, dict)
    return state


def test_the_arena_survives_the_loss_of_its_node(tmp_path: Path) -> None:
    node = node_executable()
    check_browser_prerequisites()
    screenshot = tmp_path / "bea.png"
    lines: list[str] = []
    killed: dict[str, Any] = {}
    with RedisServer() as redis:
        a, b = (ServerProcess(APP, env={"GAME_ROOM_LEASE": LEASE},
                              args=["--redis-url", redis.url, "--node-name", name])
                for name in ("game-a", "game-b"))
        try:
            a.start()
            b.start()
            proc = subprocess.Popen(
                [node, str(SCRIPT), f"http://127.0.0.1:{a.port}/", f"http://127.0.0.1:{b.port}/",
                 str(screenshot), ARENA],
                cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            out: queue.Queue[str | None] = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.put(line)
                out.put(None)

            threading.Thread(target=pump, daemon=True).start()
            deadline = time.monotonic() + NODE_TIMEOUT
            try:
                while True:
                    line = out.get(timeout=max(0.0, deadline - time.monotonic()))
                    if line is None:
                        break
                    lines.append(line)
                    if line.startswith('{"kill":'):
                        # SIGKILL, then read what node a last stored: node b cannot have taken
                        # the arena over yet (that waits for node a's lease to run out).
                        a.kill()
                        killed = stored_snapshot(redis, ARENA)
                        assert proc.stdin is not None
                        proc.stdin.write(json.dumps({"killed": True,
                                                     "stored_tick": killed["tick"]}) + "\n")
                        proc.stdin.flush()
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                stderr = proc.stderr.read() if proc.stderr else ""
        finally:
            a.kill()
            b.kill()
    detail = (f"exit {proc.returncode}\nstdout:\n{''.join(lines)}\nstderr:\n{stderr}\n"
              f"--- game-a ---\n{''.join(a.output)}--- game-b ---\n{''.join(b.output)}")
    assert lines, detail
    r = json.loads(lines[-1])
    assert r["ok"] is True and proc.returncode == 0, detail
    assert r["problems"] == []

    # the arena ran on node a; Ada is connected there, Bea on node b
    assert r["adaJoin"]["node"] == "game-a" and r["beaJoin"]["node"] == "game-b"
    assert r["adaJoin"]["state"]["node"] == r["beaJoin"]["state"]["node"] == "game-a"
    for seen in (r["adaSees"], r["beaSees"]):
        assert seen["node"] == "game-a"
        assert sorted(p["name"] for p in seen["players"]) == ["Ada", "Bea"]
    # both pages received the same states for the same ticks (node b's through Redis)
    assert r["sameTicks"]["common"] > 10 and r["sameTicks"]["differing"] == []
    # Bea's input crossed to node a: Ada's page saw her move and stop
    moved = r["beaMovesBefore"]
    assert moved["id"] == r["beaJoin"]["id"]
    seen = next(p for p in moved["moving"]["players"] if p["id"] == moved["id"])
    assert seen["dx"] == moved["dx"] and (seen["x"] - moved["from"]["x"]) * moved["dx"] > 2

    # node a killed: what it last stored is a state of this game with both players
    stored_tick = killed["tick"]
    assert r["killed"] == {"killed": True, "stored_tick": stored_tick}
    assert stored_tick > 0
    assert {p["name"] for p in killed["players"].values()} == {"Ada", "Bea"}
    before, first = r["before"], r["firstAfter"]
    assert before["node"] == "game-a"
    # the arena came back on node b under a newer fencing token, and its ticks continue from
    # the stored snapshot (the first tick after it) instead of starting again from 0
    assert first["node"] == "game-b" and first["epoch"] > before["epoch"]
    assert first["tick"] == stored_tick + 1, (first, stored_tick)
    assert r["afterEpochs"] == [f"{first['epoch']}@game-b"]
    ticks = r["afterTicks"]
    assert ticks[0] == first["tick"] and ticks[-1] >= first["tick"] + 20
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)

    # newcomers on node b join it; Bea's keys still move her (seen by Cy)
    assert r["cyJoin"]["node"] == "game-b" and r["cyJoin"]["state"]["node"] == "game-b"
    moved = r["beaMovesAfter"]
    assert moved["id"] == r["beaJoin"]["id"]
    seen = next(p for p in moved["moving"]["players"] if p["id"] == moved["id"])
    assert seen["dx"] == moved["dx"] and (seen["x"] - moved["from"]["x"]) * moved["dx"] > 2
    # Ada's node is gone, and so (after the keep-alive timeout) is she
    assert r["beaFinal"] == r["cyFinal"] == ["Bea", "Cy"]
    assert r["sameTicksAfter"]["common"] > 10 and r["sameTicksAfter"]["differing"] == []
    assert r["final"]["node"] == "game-b" and r["final"]["tick"] > first["tick"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
