"""The example game, run as its own process (one node), over raw WebSockets: its page and
files, the join reply, inputs, ticks, leaving, and what it refuses."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from examples.game import logic
from tests.support.client import RawClient, connect
from tests.support.server import ServerProcess, running_server

V2 = "2.0.0"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("examples.game.app:endpoint") as srv:
        yield srv


def get(server: ServerProcess, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as resp:
        return resp.status, resp.headers["content-type"], resp.read()


def test_page_and_files(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/")
    assert status == 200 and ctype == "text/html; charset=utf-8"
    assert b'<script type="module" src="/app.js"></script>' in body
    assert b'<canvas id="board"' in body
    status, ctype, body = get(server, "/app.js")
    assert status == 200 and "javascript" in ctype
    assert b'from "/js/phoenix.mjs"' in body
    status, ctype, body = get(server, "/js/phoenix.mjs")
    assert status == 200 and "javascript" in ctype and b"Presence" in body
    assert get(server, "/style.css")[0] == 200


async def join(ws: RawClient, topic: str, name: Any, ref: str = "1") -> dict[str, Any]:
    reply = await ws.join(topic, ref, ref, {"name": name})
    return reply[4]  # type: ignore[no-any-return]


async def next_tick(ws: RawClient, topic: str) -> dict[str, Any]:
    while True:
        m = await ws.recv(10)
        if m[2] == topic and m[3] == "tick":
            return m[4]  # type: ignore[no-any-return]


async def push_input(ws: RawClient, topic: str, ref: str, payload: Any) -> dict[str, Any]:
    await ws.send("1", ref, topic, "input", payload)
    while True:
        m = await ws.recv(10)
        if m[3] == "phx_reply" and m[1] == ref:
            return m[4]  # type: ignore[no-any-return]


async def test_play_over_raw_websockets(server: ServerProcess) -> None:
    topic = "game:raw"
    async with connect(server.port, V2) as ws_a, connect(server.port, V2) as ws_b:
        a = await join(ws_a, topic, "  Ann ")
        assert a["status"] == "ok", a
        ra = a["response"]
        assert ra["name"] == "Ann" and ra["arena"] == "raw" and ra["tick_rate"] == 20
        assert ra["world"] == {"width": logic.WIDTH, "height": logic.HEIGHT}
        assert ra["node"] and ra["state"]["node"] == ra["node"]
        assert [p["name"] for p in ra["state"]["players"]] == ["Ann"]
        b = await join(ws_b, topic, "Bob")
        assert b["status"] == "ok", b
        ann, bob = ra["id"], b["response"]["id"]
        assert ann != bob
        assert {p["id"] for p in b["response"]["state"]["players"]} == {ann, bob}

        # both get the same ticks, counting up
        first = await next_tick(ws_a, topic)
        assert {p["id"] for p in first["players"]} == {ann, bob}
        seen_b = [await next_tick(ws_b, topic) for _ in range(3)]
        ticks = [t["tick"] for t in seen_b]
        assert ticks == sorted(ticks) and len(set(ticks)) == 3
        assert len(first["pellets"]) == logic.PELLET_COUNT

        # Bob's input shows in the state Ann receives
        start = next(p for p in seen_b[-1]["players"] if p["id"] == bob)
        dx = 1 if start["x"] < logic.WIDTH / 2 else -1
        assert (await push_input(ws_b, topic, "10", {"dx": dx, "dy": 0}))["status"] == "ok"
        for _ in range(200):
            tick = await next_tick(ws_a, topic)
            now = next(p for p in tick["players"] if p["id"] == bob)
            if now["dx"] == dx and (now["x"] - start["x"]) * dx > 1.0:
                break
        else:
            pytest.fail(f"Bob did not move: {now} from {start}")
        assert (await push_input(ws_b, topic, "11", {"dx": 0, "dy": 0}))["status"] == "ok"

        # bad inputs are refused, and the channel stays
        for ref, bad in (("12", {"dx": 2, "dy": 0}), ("13", {"dx": "1", "dy": 0}),
                         ("14", {"dx": 1})):
            reply = await push_input(ws_b, topic, ref, bad)
            assert reply == {"status": "error",
                             "response": {"reason": "dx and dy must be -1, 0 or 1"}}
        reply = await push_input(ws_b, topic, "15", {})
        assert reply["status"] == "error"
        await ws_b.send("1", "16", topic, "shout", {})
        while (m := await ws_b.recv(10))[1] != "16":
            pass
        assert m[4]["status"] == "error"

    # both left (connections closed): a newcomer is alone
    async with connect(server.port, V2) as ws:
        for _ in range(50):
            c = await join(ws, topic, "Cy", ref=f"j{_}")
            assert c["status"] == "ok"
            if [p["name"] for p in c["response"]["state"]["players"]] == ["Cy"]:
                break
            await ws.send(f"j{_}", "l", topic, "phx_leave", {})
            await ws.recv_until("phx_reply")
        assert [p["name"] for p in c["response"]["state"]["players"]] == ["Cy"]


@pytest.mark.parametrize(("topic", "name", "reason"), [
    ("game:lobby", "", "a display name is required"),
    ("game:lobby", None, "a display name is required"),
    ("game:lobby", "x" * 25, "display names are at most 24 characters"),
    ("game:lobby", "a\nb", "display names cannot contain control characters"),
    ("game:Bad!", "Ann", "arena names are 1-32 characters: a-z, 0-9, '-' and '_', "
                         "starting with a letter or digit"),
])
async def test_refused_joins(server: ServerProcess, topic: str, name: Any, reason: str) -> None:
    async with connect(server.port, V2) as ws:
        reply = await join(ws, topic, name)
        assert reply == {"status": "error", "response": {"reason": reason, "retry": False}}


async def test_a_full_arena(server: ServerProcess) -> None:
    topic = "game:full"
    async with AsyncExitStack() as stack:
        for i in range(logic.MAX_PLAYERS):
            ws = await stack.enter_async_context(connect(server.port, V2))
            assert (await join(ws, topic, f"P{i}"))["status"] == "ok"
        late = await stack.enter_async_context(connect(server.port, V2))
        assert await join(late, topic, "Late") == {"status": "error", "response": {
            "reason": f"the arena is full ({logic.MAX_PLAYERS} players)", "retry": False}}
