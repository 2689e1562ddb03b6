"""The tutorial (docs/tutorial.md) works as it says: its app (docs/examples/tutorial/) in-process
with channels.testing, its page in headless Chromium with the official phoenix.js, and the
code shown in the tutorial is the code that is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from channels.testing import channel_test
from docs.examples.tutorial import app
from tests.support.excerpts import check_excerpts
from tests.support.server import ROOT, running_server

EXAMPLE = ROOT / "docs/examples/tutorial"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.mark.parametrize("lang", ["python", "js", "html"])
def test_the_code_in_the_tutorial_is_the_tested_code(lang: str) -> None:
    check_excerpts("tutorial.md", lang, {
        "app.py": EXAMPLE / "app.py",
        "static/app.js": EXAMPLE / "static/app.js",
        "static/index.html": EXAMPLE / "static/index.html",
    })


def test_tokens() -> None:
    token = app.user_token("ada")
    assert app.verify_token(app.SECRET, app.SALT, token) == "ada"


async def test_a_board_in_process() -> None:
    async with channel_test(app.endpoint) as t:
        with pytest.raises(AssertionError, match="refused"):
            await t.socket(params={"token": "forged"})
        with pytest.raises(AssertionError, match="refused"):
            await t.socket(params={})

        ada = await t.socket(params={"token": app.user_token("ada")})
        assert ada.assigns == {"user": "ada"}
        reply = await ada.join("qa:inprocess")
        assert reply["user"] == "ada" and reply["votes"] == {}
        state = await ada.assert_push("presence_state", topic="qa:inprocess")
        assert list(state) == ["ada"]

        bob = await t.socket(params={"token": app.user_token("bob")})
        await bob.join("qa:inprocess")
        diff = await ada.assert_push("presence_diff", lambda d: "bob" in d["joins"])
        assert list(diff["joins"]) == ["bob"]

        # ask: everyone gets the question, with its position in the board's history
        ref = await ada.push("qa:inprocess", "ask", {"text": "  Why trio?  "})
        qid = (await ada.assert_reply(ref, "ok"))["response"]["id"]
        question = await bob.assert_push("question")
        assert {k: question[k] for k in ("id", "user", "text")} == {
            "id": qid, "user": "ada", "text": "Why trio?"}
        assert set(question["phx_pos"]) == {"offset", "epoch"}

        # vote: the room counts one vote per person and tells everyone
        for _ in range(2):
            ref = await bob.push("qa:inprocess", "vote", {"id": qid})
            await bob.assert_reply(ref, "ok", {"count": 1})
        assert (await ada.assert_push("votes"))["count"] == 1
        await ada.refute_push("votes")
        ref = await ada.push("qa:inprocess", "vote", {"id": qid})
        await ada.assert_reply(ref, "ok", {"count": 2})

        # refusals are replies, not crashes
        for event, payload in [("ask", {"text": "   "}), ("ask", {}), ("vote", {}),
                               ("nope", {})]:
            ref = await ada.push("qa:inprocess", event, payload)
            await ada.assert_reply(ref, "error")
        with pytest.raises(AssertionError, match="board names"):
            await ada.join("qa:not a name")

        # a newcomer gets the counts in the join reply and the board so far from history
        carol = await t.socket(params={"token": app.user_token("carol")})
        reply = await carol.join("qa:inprocess", {"phx_pos": {"last": 50}})
        assert reply["votes"] == {qid: 2}
        assert reply["phx_recovery"]["replayed"] == 3  # the question and two vote updates
        assert (await carol.assert_push("question"))["id"] == qid
        assert [(await carol.assert_push("votes"))["count"] for _ in range(2)] == [1, 2]

        # a page that was away comes back with its last position and gets what it missed
        position = question["phx_pos"]
        await bob.close()
        ref = await ada.push("qa:inprocess", "ask", {"text": "And LongPoll?"})
        await ada.assert_reply(ref, "ok")
        bob = await t.socket(params={"token": app.user_token("bob")})
        reply = await bob.join("qa:inprocess", {"phx_pos": position})
        assert reply["phx_recovery"]["recovered"] is True
        assert [(await bob.assert_push("votes"))["count"] for _ in range(2)] == [1, 2]
        assert (await bob.assert_push("question"))["text"] == "And LongPoll?"


def test_the_page_in_chromium() -> None:
    """Two people on the page in headless Chromium (tests/browser/tutorial.mjs)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser tests need Node.js 18+")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test (it installs it)")
    with running_server("docs.examples.tutorial.app:endpoint") as server:
        tokens = {name: app.user_token(name) for name in ("ada", "bob", "carol")}
        proc = subprocess.run(
            [node, str(ROOT / "tests/browser/tutorial.mjs"), f"http://127.0.0.1:{server.port}/",
             json.dumps(tokens)],
            cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": CHROMIUM}, capture_output=True,
            text=True, timeout=90)
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0 and result.get("ok"), (
        f"exit {proc.returncode}: {result}\nstderr: {proc.stderr[-2000:]}\n"
        f"server: {''.join(server.output)[-2000:]}")
    assert result["problems"] == []
