"""Two people chat through the example app in headless Chromium (tests/browser/chat.mjs), and
the "who is online" sidebar (phoenix.js Presence) follows who comes and goes.

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

SCRIPT = ROOT / "tests/browser/chat.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: chat.mjs has its own 30 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 60


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser tests need Node.js 18+")
    return node


def _check_prerequisites() -> None:
    if not (ROOT / "node_modules/playwright-core/package.json").is_file():
        pytest.fail("node_modules/playwright-core is missing: run `npm ci`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test (it installs it) "
                    "or `apt-get install chromium`")


def test_two_browsers_chat(tmp_path: Path) -> None:
    node = _node()
    _check_prerequisites()
    screenshot = tmp_path / "bob.png"
    with running_server("examples.chat.app:endpoint") as server:
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
    result = json.loads(lines[-1])
    assert result["ok"] is True and proc.returncode == 0, detail
    assert result["problems"] == []

    alice_msg = {"user": "Alice", "body": "Hello Bob! <b>not bold</b> & <img src=x onerror=alert(1)>"}
    first = {"user": "Alice", "body": "Is anyone here?"}
    answer = {"user": "Bob", "body": "Hi Alice 👋"}
    # Bob joined after Alice's first message: he got it as history, then the live ones.
    assert result["bob"] == [{"system": "Joined #lobby as Bob."}, first, alice_msg, answer]
    assert [m for m in result["alice"] if "user" in m] == [first, alice_msg, answer]
    assert result["carol"][-1] == {
        "system": "Could not join #lobby: a display name is required"}
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The sidebar: names in order, one entry per name with its tab count, "me" marked; on a
    # single node no node names are shown.
    online = result["online"]

    def people(*entries: tuple[str, int, bool]) -> list[dict[str, object]]:
        return [{"name": n, "tabs": t, "me": me, "nodes": None} for n, t, me in entries]

    def sidebar(count: int, *entries: tuple[str, int, bool]) -> dict[str, object]:
        return {"title": f"Online in #lobby ({count})", "people": people(*entries),
                "state": "live"}

    assert online["alice_alone"] == sidebar(1, ("Alice", 1, True))
    # Bob appears in Alice's list, and Bob sees both
    assert online["alice_with_bob"] == sidebar(2, ("Alice", 1, True), ("Bob", 1, False))
    assert online["bob_with_alice"] == sidebar(2, ("Alice", 1, False), ("Bob", 1, True))
    # a second tab of Alice: still two people, Alice with two tabs; closing it leaves one
    assert online["bob_sees_two_alice_tabs"] == sidebar(2, ("Alice", 2, False), ("Bob", 1, True))
    assert online["bob_after_tab_closed"] == sidebar(2, ("Alice", 1, False), ("Bob", 1, True))
    # a refused join is in nobody's list and sees none
    assert online["carol"] == {"title": "Online", "people": [], "state": "none"}
    assert online["alice_after_carol"] == sidebar(2, ("Alice", 1, True), ("Bob", 1, False))
    # Bob closed his page: he leaves Alice's list
    assert online["alice_after_bob_left"] == sidebar(1, ("Alice", 1, True))
