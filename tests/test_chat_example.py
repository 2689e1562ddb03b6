"""The example chat app, run as its own process: its page, its static files, its channel,
and its presence (who is online, per room)."""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from trio_websocket import ConnectionRejected

from channels import LocalAdapter
from examples.chat import app as chat
from presence import Presence
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess, running_server

V2 = "2.0.0"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("examples.chat.app:endpoint") as srv:
        yield srv


def get(server: ServerProcess, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as resp:
        return resp.status, resp.headers["content-type"], resp.read()


def raw_status(server: ServerProcess, target: str) -> int:
    """GET ``target`` exactly as written (urllib would not normalise it, but be explicit)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- HTTP -----------------------------------------------------------------------------------


def test_index_page(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/")
    assert status == 200
    assert ctype == "text/html; charset=utf-8"
    assert b'<script type="module" src="/app.js"></script>' in body
    assert b'href="/style.css"' in body
    assert get(server, "/index.html")[2] == body


def test_app_js_loads_phoenix_from_the_server(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/app.js")
    assert status == 200
    assert ctype.split(";")[0] in ("text/javascript", "application/javascript")
    assert b'import {Presence, Socket} from "/js/phoenix.mjs";' in body
    assert b'new Socket("/socket")' in body
    assert b"innerHTML" not in body  # user text is only ever set with textContent


def test_style_css(server: ServerProcess) -> None:
    status, ctype, _ = get(server, "/style.css")
    assert (status, ctype) == (200, "text/css; charset=utf-8")


def test_phoenix_js_is_the_installed_npm_package(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/js/phoenix.mjs")
    assert status == 200
    assert ctype.split(";")[0] in ("text/javascript", "application/javascript")
    assert body == (ROOT / "node_modules/phoenix/priv/static/phoenix.mjs").read_bytes()
    assert b"export {" in body


@pytest.mark.parametrize("target", [
    # static/ is examples/chat/static: three levels below the repository root
    "/../pyproject.toml",
    "/../../../pyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    "/%2E%2E%2F%2E%2E%2F%2E%2E%2Fpyproject.toml",
    "/..%2f..%2f..%2fpyproject.toml",
    "/js/../../../../pyproject.toml",
    "/../app.py",  # the module next to static/
    "/%2e%2e/%2e%2e/%2e%2e/node_modules/phoenix/package.json",
    "/js/phoenix.mjs/../../../../pyproject.toml",
    "//etc/passwd",
    "/nope.html",
])
def test_outside_static_is_404(server: ServerProcess, target: str) -> None:
    assert (ROOT / "pyproject.toml").is_file()
    assert raw_status(server, target) == 404


def test_missing_phoenix_js_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"Run `npm ci`"):
        chat.make_endpoint(tmp_path)


# -- the channel over a raw WebSocket ----------------------------------------------------------


async def join(c: RawClient, topic: str, params: dict[str, Any], ref: str = "1") -> list[Any]:
    return await c.join(topic, ref, ref, params)


PRESENCE_EVENTS = ("presence_state", "presence_diff")


async def recv_chat(c: RawClient) -> list[Any]:
    """The next message that is not about presence (presence arrives at its own pace)."""
    while True:
        m = await c.recv()
        if m[3] not in PRESENCE_EVENTS:
            return m


async def test_chat_over_a_raw_websocket(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ada, connect(server.port, V2) as bob:
        assert await join(ada, "room:lobby", {"user": "  Ada "}) == [
            "1", "1", "room:lobby", "phx_reply",
            {"status": "ok", "response": {"user": "Ada", "room": "lobby"}}]
        hist = await ada.recv()  # right after the join reply, before presence
        assert hist[:4] == ["1", None, "room:lobby", "history"]
        assert isinstance(hist[4]["messages"], list)
        await join(bob, "room:lobby", {"user": "Bob"})
        await bob.recv_until("history")

        await ada.send("1", "2", "room:lobby", "new_msg", {"body": "  hello, <b>world</b>  "})
        got = [await recv_chat(ada), await recv_chat(ada)]
        reply = next(m for m in got if m[3] == "phx_reply")
        assert reply[:3] == ["1", "2", "room:lobby"] and reply[4]["status"] == "ok"
        pushed = next(m for m in got if m[3] == "new_msg")
        msg = pushed[4]
        assert pushed[:3] == [None, None, "room:lobby"]  # a broadcast
        assert msg["user"] == "Ada" and msg["body"] == "hello, <b>world</b>"
        assert isinstance(msg["at"], int) and msg["at"] > 1_600_000_000_000  # ms since epoch
        assert msg["id"] == reply[4]["response"]["id"]
        assert await recv_chat(bob) == pushed

    # a later visitor gets it as history, oldest first
    async with connect(server.port, V2) as cy:
        await join(cy, "room:lobby", {"user": "Cy"})
        hist = await cy.recv_until("history")
        assert hist[4]["messages"][-1] == msg


REFUSED_JOINS: list[tuple[str, dict[str, Any], str]] = [
    ("room:lobby", {"user": ""}, "a display name is required"),
    ("room:lobby", {"user": "   "}, "a display name is required"),
    ("room:lobby", {}, "a display name is required"),
    ("room:lobby", {"user": 42}, "a display name is required"),
    ("room:lobby", {"user": "x" * 33}, "display names are at most 32 characters"),
    ("room:lobby", {"user": "bad\x00name"}, "control characters"),
    ("room:", {"user": "Ada"}, "room names are 1-32 characters"),
    ("room:" + "a" * 33, {"user": "Ada"}, "room names are 1-32 characters"),
    ("room:Lobby", {"user": "Ada"}, "room names are 1-32 characters"),
    ("room:a b", {"user": "Ada"}, "room names are 1-32 characters"),
]


async def test_refused_joins(server: ServerProcess) -> None:
    async with connect(server.port, V2) as c:
        for ref, (topic, params, reason) in enumerate(REFUSED_JOINS, start=1):
            reply = await join(c, topic, params, str(ref))
            assert reply[3] == "phx_reply" and reply[4]["status"] == "error", reply
            assert reason in reply[4]["response"]["reason"]
        # none of them joined
        await c.send("9", "99", "room:lobby", "new_msg", {"body": "hi"})
        assert (await c.recv())[4] == {"status": "error",
                                       "response": {"reason": "unmatched topic"}}


async def test_invalid_messages_are_refused_with_a_reason(server: ServerProcess) -> None:
    async with connect(server.port, V2) as c:
        await join(c, "room:invalid-msgs", {"user": "Ada"})
        assert (await c.recv())[4] == {"messages": []}  # a fresh room has no history
        for ref, (event, payload, reason) in enumerate([
            ("new_msg", {"body": ""}, "message is empty"),
            ("new_msg", {"body": " \n\t "}, "message is empty"),
            ("new_msg", {}, "body must be a string"),
            ("new_msg", {"body": ["x"]}, "body must be a string"),
            ("new_msg", {"body": "x" * 2001}, "message is longer than 2000 characters"),
            ("shout", {"body": "x"}, "unknown event 'shout'"),
        ], start=2):
            await c.send("1", str(ref), "room:invalid-msgs", event, payload)
            assert await recv_chat(c) == ["1", str(ref), "room:invalid-msgs", "phx_reply",
                                      {"status": "error", "response": {"reason": reason}}]
        await c.send("1", "50", "room:invalid-msgs", "new_msg", {"body": "x" * 2000})
        got = [await recv_chat(c), await recv_chat(c)]
        assert {m[3] for m in got} == {"phx_reply", "new_msg"}


async def test_history_keeps_the_last_50(server: ServerProcess) -> None:
    async with connect(server.port, V2) as c:
        await join(c, "room:history", {"user": "Ada"})
        await c.recv_until("history")
        for i in range(60):
            await c.send("1", str(i + 2), "room:history", "new_msg", {"body": f"m{i}"})
        for _ in range(120):
            await recv_chat(c)
    async with connect(server.port, V2) as c:
        await join(c, "room:history", {"user": "Bob"})
        hist = (await c.recv_until("history"))[4]["messages"]
        assert [m["body"] for m in hist] == [f"m{i}" for i in range(10, 60)]


async def test_foreign_origin_is_refused(server: ServerProcess) -> None:
    with pytest.raises(ConnectionRejected) as exc:
        async with connect(server.port, V2, headers=[("origin", "https://evil.example")]):
            pass  # pragma: no cover
    assert exc.value.status_code == 403
    async with connect(server.port, V2, headers=[("origin", f"http://localhost:{server.port}")]) as c:
        assert (await join(c, "room:lobby", {"user": "Ada"}))[4]["status"] == "ok"


# -- presence ----------------------------------------------------------------------------------


async def next_diff(c: RawClient) -> dict[str, Any]:
    """The next ``presence_diff`` payload (other messages are skipped)."""
    return (await c.recv_until("presence_diff"))[4]


async def diff_where(c: RawClient, joins: Collection[str] = (),
                     leaves: Collection[str] = ()) -> dict[str, Any]:
    """The next diff that joins and leaves exactly these keys (a client's own join comes first)."""
    while True:
        diff = await next_diff(c)
        if set(diff["joins"]) == set(joins) and set(diff["leaves"]) == set(leaves):
            return diff


def check_meta(meta: dict[str, Any], before_ms: int) -> None:
    assert set(meta) == {"online_at", "node", "phx_ref"}, meta
    assert meta["node"] == "local"  # a single node: the LocalAdapter's name
    assert isinstance(meta["online_at"], int)
    assert before_ms <= meta["online_at"] <= int(time.time() * 1000)
    assert isinstance(meta["phx_ref"], str) and meta["phx_ref"]


async def test_presence_over_a_raw_websocket(server: ServerProcess) -> None:
    topic = "room:presence-raw"
    before = int(time.time() * 1000)
    async with connect(server.port, V2) as ada, connect(server.port, V2) as bob:
        await join(ada, topic, {"user": " Ada "})
        # history first (pushed during join), then the presence list, which includes Ada
        assert (await ada.recv())[3] == "history"
        state = await ada.recv_until("presence_state")
        assert state[:3] == ["1", None, topic]
        assert list(state[4]) == ["Ada"]  # the trimmed display name is the key
        [ada_meta] = state[4]["Ada"]["metas"]
        check_meta(ada_meta, before)

        await join(bob, topic, {"user": "Bob"})
        bob_state = (await bob.recv_until("presence_state"))[4]
        assert bob_state["Ada"] == {"metas": [ada_meta]}
        [bob_meta] = bob_state["Bob"]["metas"]
        check_meta(bob_meta, before)
        diff = await diff_where(ada, joins={"Bob"})
        assert diff == {"joins": {"Bob": {"metas": [bob_meta]}}, "leaves": {}}

        # a second tab of Ada: the same key, a second meta
        async with connect(server.port, V2) as ada2:
            await join(ada2, topic, {"user": "Ada"})
            state2 = (await ada2.recv_until("presence_state"))[4]
            assert set(state2) == {"Ada", "Bob"}
            assert len(state2["Ada"]["metas"]) == 2 and ada_meta in state2["Ada"]["metas"]
            [tab2] = [m for m in state2["Ada"]["metas"] if m != ada_meta]
            assert (await diff_where(bob, joins={"Ada"}))["joins"]["Ada"] == {"metas": [tab2]}
        # the tab's connection closed: that meta leaves, the first tab stays
        diff = await diff_where(bob, leaves={"Ada"})
        assert diff == {"joins": {}, "leaves": {"Ada": {"metas": [tab2]}}}

        # Bob leaves the room: everyone else sees him go
        await bob.send("1", "9", topic, "phx_leave", {})
        diff = await diff_where(ada, leaves={"Bob"})
        assert diff == {"joins": {}, "leaves": {"Bob": {"metas": [bob_meta]}}}

    # both gone: a newcomer sees only itself
    async with connect(server.port, V2) as cy:
        await join(cy, topic, {"user": "Cy"})
        assert set((await cy.recv_until("presence_state"))[4]) == {"Cy"}


async def test_presence_is_per_room(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ada, connect(server.port, V2) as bob:
        await join(ada, "room:presence-a", {"user": "Ada"})
        await ada.recv_until("presence_state")
        await join(bob, "room:presence-b", {"user": "Bob"})
        assert set((await bob.recv_until("presence_state"))[4]) == {"Bob"}
        await join(bob, "room:presence-a", {"user": "Bob"}, ref="2")
        assert set((await bob.recv_until("presence_state"))[4]) == {"Ada", "Bob"}


async def test_a_refused_join_is_not_present(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ada, connect(server.port, V2) as bad:
        await join(ada, "room:presence-refused", {"user": "Ada"})
        await ada.recv_until("presence_state")
        reply = await join(bad, "room:presence-refused", {"user": "  "})
        assert reply[4]["status"] == "error"
        await join(bad, "room:presence-refused", {"user": "Bo"}, ref="2")
        # up to Bo's join, Ada sees only joins of Ada (her own) and Bo: the refused join was
        # never tracked
        diffs = [await next_diff(ada)]
        while "Bo" not in diffs[-1]["joins"]:
            diffs.append(await next_diff(ada))
        assert all(set(d["joins"]) <= {"Ada", "Bo"} and not d["leaves"] for d in diffs), diffs
        state = (await bad.recv_until("presence_state"))[4]
        assert set(state) == {"Ada", "Bo"}


def test_module_endpoint_is_single_node_with_presence() -> None:
    assert isinstance(chat.endpoint.presence, Presence)
    assert isinstance(chat.endpoint.pubsub.adapter, LocalAdapter)
    # every node's history recorder listens on the internal history topic
    assert chat.endpoint.pubsub.subscriber_count(chat.HISTORY_TOPIC) == 1


# -- the in-memory history store -------------------------------------------------------------


def test_history_records_what_is_broadcast_on_the_history_topic() -> None:
    message = {"id": "x1", "user": "Ada", "body": "from another node", "at": 1}
    chat.record_history(chat.HISTORY_TOPIC, "record",
                        {"topic": "room:recorded", "message": message})
    assert chat.history.recent("room:recorded") == [message]
    for event, payload in [("other", {"topic": "room:recorded", "message": message}),
                           ("record", {"topic": "lobby", "message": message}),
                           ("record", {"topic": "room:recorded", "message": "text"}),
                           ("record", ["not", "a", "dict"])]:
        chat.record_history(chat.HISTORY_TOPIC, event, payload)
    assert chat.history.recent("room:recorded") == [message]
    assert chat.history.recent("lobby") == []


def test_room_history_store_is_bounded() -> None:
    store = chat.RoomHistory(size=3, max_rooms=2)
    for i in range(5):
        store.add("room:a", {"body": i})
    assert [m["body"] for m in store.recent("room:a")] == [2, 3, 4]
    store.add("room:b", {"body": "b"})
    store.add("room:a", {"body": 5})  # a is now the most recently used
    store.add("room:c", {"body": "c"})  # evicts b
    assert store.recent("room:b") == []
    assert [m["body"] for m in store.recent("room:a")] == [3, 4, 5]
    assert store.recent("room:nowhere") == []
