"""Two people on one kanban board in headless Chromium, one node (tests/browser/board.mjs):
changes by one reach the other, presence shows who is on the board and who edits which card,
and a reload shows the same board.

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

SCRIPT = ROOT / "tests/browser/board.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: board.mjs has its own 60 s watchdog; this only catches a wedged node process.
NODE_TIMEOUT = 90


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser tests need Node.js 18+")
    return node


def check_prerequisites() -> None:
    if not (ROOT / "node_modules/playwright-core/package.json").is_file():
        pytest.fail("node_modules/playwright-core is missing: run `npm ci`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test (it installs it) "
                    "or `apt-get install chromium`")


def test_two_browsers_share_a_board(tmp_path: Path) -> None:
    node = node_executable()
    check_prerequisites()
    screenshot = tmp_path / "bob.png"
    with running_server("examples.board.app:endpoint") as server:
        proc = subprocess.run(
            [node, str(SCRIPT), f"http://127.0.0.1:{server.port}/", "team-1", str(screenshot)],
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
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    boards = result["boards"]
    empty = boards["empty"]
    assert (empty["version"], empty["node"], empty["channel"], empty["pending"]) == \
        (0, "local", "joined", 0)
    assert [(c["id"], c["cards"]) for c in empty["columns"]] == \
        [("todo", []), ("doing", []), ("done", [])]

    ship = "Ship it <b>not bold</b>"
    # buttons: "Buy milk" todo -> doing, "Ship it" doing -> todo, then up above "Write tests"
    assert boards["after_buttons"] == {"todo": [ship, "Write tests"], "doing": ["Buy milk"],
                                       "done": []}
    # drag and drop onto the "done" column
    assert boards["after_drag"] == {"todo": [ship], "doing": ["Buy milk"],
                                    "done": ["Write tests"]}
    # while Alice edits "Buy milk", Bob sees a badge on it, Alice (on her own page) none
    assert boards["bob_badges_alice"] == {"Buy milk": "✎ Alice"}
    assert boards["alice_badges"] == {}
    assert boards["after_edit"] == {"todo": [ship], "doing": ["Buy oat milk"],
                                    "done": ["Write tests"]}
    assert boards["alice_badges_bob"] == {ship: "✎ Bob"}
    # Alice deleted the card Bob was editing: his editor closed and said so
    assert boards["after_delete"] == {"todo": [], "doing": ["Buy oat milk"],
                                      "done": ["Write tests"]}
    assert result["bob_notice"] == "The card you were editing was deleted."
    assert boards["reloaded"] == boards["after_delete"]
    final = boards["final"]
    assert texts_of(final) == {"todo": ["After the reload"], "doing": ["Buy oat milk"],
                              "done": ["Write tests"]}
    # 3 adds, 3 moves with buttons, 1 drag, 1 edit, 1 delete, 1 add
    assert final["version"] == result["version"] == 10
    assert [c["count"] for c in final["columns"]] == [1, 1, 1]

    people = result["people"]

    def sidebar(*entries: tuple[str, bool, list[str]]) -> dict[str, object]:
        return {"title": f"On this board ({len(entries)})", "state": "live",
                "people": [{"name": n, "me": me, "editing": e} for n, me, e in entries]}

    assert people["alice_alone"] == sidebar(("Alice", True, []))
    assert people["alice"] == sidebar(("Alice", True, []), ("Bob", False, []))
    assert people["bob"] == sidebar(("Alice", False, []), ("Bob", True, []))
    assert people["bob_sees_alice_editing"] == sidebar(
        ("Alice", False, ["editing “Buy milk”"]), ("Bob", True, []))
    assert people["bob_after_alice_edit"] == sidebar(("Alice", False, []), ("Bob", True, []))
    assert people["alice_after_delete"] == sidebar(("Alice", True, []), ("Bob", False, []))
    assert people["after_reload"] == sidebar(("Alice", True, []), ("Bob", False, []))
    assert people["alice_after_bob_left"] == sidebar(("Alice", True, []))


def texts_of(board: dict[str, object]) -> dict[str, list[str]]:
    columns = board["columns"]
    assert isinstance(columns, list)
    return {c["id"]: [card["text"] for card in c["cards"]] for c in columns}
