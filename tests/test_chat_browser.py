"""Two people chat through the example app in headless Chromium (tests/browser/chat.mjs), the
"who is online" sidebar (phoenix.js Presence) follows who comes and goes, and the room's
history (the runtime's, through /trio-channels/history.js) gives a page whose connection
dropped what it missed once and in order, a reloaded page the recent messages once, and pages
that come back after a server restart a notice and what was said since.

Needs Node, ``npm ci`` (phoenix, playwright-core) and Debian's Chromium at /usr/bin/chromium;
``./scripts/test`` installs Chromium. A missing piece fails the test rather than skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ROOT, ServerProcess, running_server

SCRIPT = ROOT / "tests/browser/chat.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: chat.mjs has its own 75 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 120


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


def run_script(server: ServerProcess, screenshot: Path) -> tuple[dict[str, Any], int, str]:
    """Run chat.mjs against ``server``, restarting it when the script asks; the script's
    result, its exit code, and a report for failures."""
    proc = subprocess.Popen(
        [_node(), str(SCRIPT), f"http://127.0.0.1:{server.port}/", str(screenshot)],
        cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM}, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    stderr: list[str] = []
    err_stream = proc.stderr
    reader = threading.Thread(target=lambda: stderr.extend(err_stream), daemon=True)
    reader.start()
    watchdog = threading.Timer(NODE_TIMEOUT, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('{"ask"'):
                answer: dict[str, Any]
                try:
                    what = json.loads(line)["ask"]
                    if what != "restart":
                        raise ValueError(f"unknown request {what!r}")
                    server.restart()
                    answer = {"restarted": True}
                except Exception as exc:  # tell the script, which then fails and reports
                    answer = {"error": repr(exc)}
                proc.stdin.write(json.dumps(answer) + "\n")
                proc.stdin.flush()
        proc.wait(10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    report = (f"exit {proc.returncode}\nstdout:\n{''.join(lines)}\nstderr:\n{''.join(stderr)}\n"
              f"server:\n{''.join(server.output)}")
    assert lines, report
    return json.loads(lines[-1]), proc.returncode, report


def test_two_browsers_chat(tmp_path: Path) -> None:
    _node()
    _check_prerequisites()
    screenshot = tmp_path / "bob.png"
    with running_server("examples.chat.app:endpoint") as server:
        result, code, detail = run_script(server, screenshot)
    assert result["ok"] is True and code == 0, detail
    assert result["problems"] == [], detail

    alice_msg = {"user": "Alice", "body": "Hello Bob! <b>not bold</b> & <img src=x onerror=alert(1)>"}
    first = {"user": "Alice", "body": "Is anyone here?"}
    answer = {"user": "Bob", "body": "Hi Alice 👋"}
    # Bob joined after Alice's first message: he got it as a recent message, then the live ones.
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

    # -- history -----------------------------------------------------------------------------
    recoveries = result["recoveries"]
    [first_join] = recoveries["bob_first_join"]  # {last: 50}: the one message there was
    assert first_join["recovered"] is False and first_join["replayed"] == 1
    assert "reason" not in first_join
    epoch = first_join["epoch"]

    # Bob's connection dropped while Alice said three things: after it came back he got them
    # once, in order, replayed from the position of the last message he had, then live.
    missed = [{"user": "Alice", "body": f"While you were away {i}"} for i in (1, 2, 3)]
    live = {"user": "Alice", "body": "And live again"}
    before = [{"system": "Joined #lobby as Bob."}, first, alice_msg, answer]
    assert result["bob_after_blip"] == [
        *before, {"system": "Connection lost. Reconnecting…"}, {"system": "Reconnected."},
        {"system": "Rejoined #lobby."}, *missed, live]
    # the rejoin: from offset 3 (Bob's last message), the three missed ones replayed
    assert recoveries["bob_after_blip"][1:] == [
        {"recovered": True, "epoch": epoch, "offset": 6, "replayed": 3}]

    # A reload is a new page: the room's recent messages, once.
    assert result["bob_after_reload"] == [
        {"system": "Joined #lobby as Bob."}, first, alice_msg, answer, *missed, live]
    assert recoveries["bob_after_reload"] == [
        {"recovered": False, "epoch": epoch, "offset": 7, "replayed": 7}]

    # The server restarted (its history was in memory). Alice's page came back by itself: its
    # rejoin could not recover, it said so, kept what it showed, and joined for the recent
    # messages (none yet). Bob, away during the restart, got the same notice, then what Alice
    # said after the restart, once; then both go on live.
    after = {"user": "Alice", "body": "After the restart"}
    back = {"user": "Bob", "body": "Back after the restart"}
    notice = {"system": "Rejoined #lobby. Messages sent while you were away may be missing "
                        "(the room's history was reset); the latest follow."}
    alice_lines = result["alice_after_restart"]
    cut = alice_lines.index({"system": "Connection lost. Reconnecting…"})
    assert [m for m in alice_lines[:cut] if "user" in m] == [
        first, alice_msg, answer, *missed, live]
    assert alice_lines[cut:] == [{"system": "Connection lost. Reconnecting…"},
                                 {"system": "Reconnected."}, notice, after, back]
    assert result["bob_after_restart"] == [
        *result["bob_after_reload"], {"system": "Connection lost. Reconnecting…"},
        {"system": "Reconnected."}, notice, after, back]
    for who in ("alice", "bob"):
        *_, failed, reload = recoveries[f"{who}_after_restart"]
        assert failed["recovered"] is False and failed["reason"] == "epoch changed"
        assert failed["epoch"] != epoch and failed["replayed"] == 0
        assert reload == {"recovered": False, "epoch": failed["epoch"],
                          "offset": failed["offset"], "replayed": failed["offset"]}
    # Alice's reload join found nothing; Bob's found Alice's message
    assert recoveries["alice_after_restart"][-1]["replayed"] == 0
    assert recoveries["bob_after_restart"][-1]["replayed"] == 1
