"""Two players in the example game, in headless Chromium, on one node (tests/browser/game.mjs):
they see each other, a key held on one page moves that player on the other, the server's ticks
count up, and a closed page leaves the arena.

Needs Node, ``npm ci`` (phoenix, playwright-core) and Debian's Chromium at /usr/bin/chromium;
``./scripts/test`` installs Chromium. A missing piece fails the test rather than skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ROOT, running_server

SCRIPT = ROOT / "tests/browser/game.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: game.mjs has its own 60 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 90


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser tests need Node.js 18+")
    return node


def check_browser_prerequisites() -> None:
    if not (ROOT / "node_modules/playwright-core/package.json").is_file():
        pytest.fail("node_modules/playwright-core is missing: run `npm ci`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test (it installs it) "
                    "or `apt-get install chromium`")


def test_two_players_in_one_arena(tmp_path: Path) -> None:
    node = node_executable()
    check_browser_prerequisites()
    screenshot = tmp_path / "alice.png"
    with running_server("examples.game.app:endpoint") as server:
        proc = subprocess.run(
            [node, str(SCRIPT), f"http://127.0.0.1:{server.port}/", str(screenshot)],
            cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
            capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
        )
        server_log = "".join(server.output)
    lines = proc.stdout.strip().splitlines()
    detail = (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
              f"server:\n{server_log}")
    assert lines, detail
    r = json.loads(lines[-1])
    assert r["ok"] is True and proc.returncode == 0, detail
    assert r["problems"] == []

    alice, bob = r["aliceJoin"], r["bobJoin"]
    assert (alice["name"], alice["arena"], bob["name"]) == ("Alice", "browser-test", "Bob")
    assert alice["id"] != bob["id"] and alice["tick_rate"] >= 20
    # each page sees both players, and its own is marked in the scoreboard
    assert r["aliceSees"] == r["bobSees"] == ["Alice", "Bob"]
    assert r["aliceScoreboard"] == [{"name": "Alice", "me": True}, {"name": "Bob", "me": False}]
    assert r["hud"].startswith("#browser-test · tick ")

    # the server ticks: tick numbers go up, one per state, and each page's log is in order
    assert r["ticks"]["later"] >= r["ticks"]["start"] + 20
    ticks = r["aliceLogTicks"]
    assert len(ticks) > 20 and ticks == sorted(ticks) and len(set(ticks)) == len(ticks)

    # a held key moved each player, as the other page saw it, and releasing it stopped it
    for moved, who in ((r["bobMoves"], bob), (r["aliceMoves"], alice)):
        assert moved["id"] == who["id"]
        seen = next(p for p in moved["moving"]["players"] if p["id"] == who["id"])
        assert seen["dx"] == moved["dx"] and (seen["x"] - moved["from"]["x"]) * moved["dx"] > 2
        still = next(p for p in moved["stopped"]["players"] if p["id"] == who["id"])
        assert (still["dx"], still["dy"]) == (0, 0)

    # the two pages got identical states for the ticks both logged
    assert r["commonTicks"] > 20 and r["differing"] == []

    assert r["aliceAlone"] == ["Alice"]
    assert r["carolNotice"] == "Could not join: a display name is required"
    assert r["carolChannel"] == "none"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
