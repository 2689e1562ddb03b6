"""The example chat app, run as its own process: its page, its static files, its channel,
its history (the runtime's: recent messages on a first join, what was missed on a rejoin) and
its presence (who is online, per room)."""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from channels import LocalAdapter
from channels.history import History
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
    assert b'import {recoverable} from "/trio-channels/history.js";' in body
    assert b'new Socket("/socket", {longPollFallbackMs: 2500})' in body
    assert b"initial: RECENT" in body and b"const RECENT = 50;" in body
    assert b"innerHTML" not in body  # user text is only ever set with textContent


def test_history_js_is_the_runtime_helper(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/trio-channels/history.js")
    assert status == 200
    assert ctype.split(";")[0] in ("text/javascript", "application/javascript")
    assert body == (ROOT / "channels/static/history.js").read_bytes()


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


RECENT = {"phx_pos": {"last": 50}}  # what the page sends on a first join


def recovery(reply: list[Any]) -> dict[str, Any]:
    """The ``phx_recovery`` of a join reply."""
    assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply
    info: dict[str, Any] = reply[4]["response"]["phx_recovery"]
    return info


PRESENCE_EVENTS = ("presence_state", "presence_diff")


async def recv_chat(c: RawClient) -> list[Any]:
    """The next message that is not about presence (presence arrives at its own pace)."""
    while True:
        m = await c.recv()
        if m[3] not in PRESENCE_EVENTS:
            return m


async def test_chat_over_a_raw_websocket(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ada, connect(server.port, V2) as bob:
        reply = await join(ada, "room:lobby", {"user": "  Ada ", **RECENT})
        info = recovery(reply)
        assert reply == ["1", "1", "room:lobby", "phx_reply", {"status": "ok", "response": {
            "user": "Ada", "room": "lobby", "phx_recovery": {
                "recovered": False, "epoch": info["epoch"], "offset": info["offset"],
                "replayed": min(info["offset"], 50)}}}]
        assert isinstance(info["epoch"], str) and info["epoch"]
        for _ in range(info["replayed"]):  # earlier tests' messages in this room
            assert (await ada.recv())[3] == "new_msg"
        await join(bob, "room:lobby", {"user": "Bob"})  # no phx_pos: nothing replayed

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
        # its position in the room's history: the next offset of the stream Ada joined
        assert msg["phx_pos"] == {"offset": info["offset"] + 1, "epoch": info["epoch"]}
        assert set(msg) == {"id", "user", "body", "at", "phx_pos"}
        assert await recv_chat(bob) == pushed

    # a later visitor asking for the recent messages gets it replayed, last, right after the
    # join reply (before presence)
    async with connect(server.port, V2) as cy:
        info = recovery(await join(cy, "room:lobby", {"user": "Cy", **RECENT}))
        assert info["offset"] == msg["phx_pos"]["offset"] and info["replayed"] >= 1
        replayed = [await cy.recv() for _ in range(info["replayed"])]
        assert all(m[:4] == [None, None, "room:lobby", "new_msg"] for m in replayed)
        assert replayed[-1][4] == msg
        offsets = [m[4]["phx_pos"]["offset"] for m in replayed]
        assert offsets == list(range(offsets[0], msg["phx_pos"]["offset"] + 1))


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
        info = recovery(await join(c, "room:invalid-msgs", {"user": "Ada", **RECENT}))
        assert (info["offset"], info["replayed"]) == (0, 0)  # a fresh room has no history
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


async def replayed_bodies(c: RawClient, info: dict[str, Any]) -> list[str]:
    """The bodies of the ``replayed`` messages that follow a join reply, checked in order."""
    msgs = [await c.recv() for _ in range(info["replayed"])]
    assert all(m[3] == "new_msg" for m in msgs), msgs
    offsets = [m[4]["phx_pos"]["offset"] for m in msgs]
    assert offsets == list(range(info["offset"] - len(msgs) + 1, info["offset"] + 1)), offsets
    return [m[4]["body"] for m in msgs]


async def send_all(c: RawClient, topic: str, bodies: list[str]) -> list[dict[str, Any]]:
    """Send these messages one by one; the broadcasts this client got back, in order."""
    got: list[dict[str, Any]] = []
    for i, body in enumerate(bodies):
        await c.send("1", f"s{i}", topic, "new_msg", {"body": body})
        while len(got) < i + 1:
            m = await recv_chat(c)
            if m[3] == "new_msg":
                got.append(m[4])
            else:
                assert m[4]["status"] == "ok", m
    return got


async def test_history_keeps_the_last_100_and_a_first_join_gets_the_last_50(
        server: ServerProcess) -> None:
    topic = "room:history"
    async with connect(server.port, V2) as c:
        await join(c, topic, {"user": "Ada", **RECENT})
        sent = await send_all(c, topic, [f"m{i}" for i in range(120)])
    assert [m["body"] for m in sent] == [f"m{i}" for i in range(120)]
    assert [m["phx_pos"]["offset"] for m in sent] == list(range(1, 121))
    async with connect(server.port, V2) as c:
        info = recovery(await join(c, topic, {"user": "Bob", **RECENT}))
        assert info == {"recovered": False, "epoch": sent[0]["phx_pos"]["epoch"],
                        "offset": 120, "replayed": 50}
        assert await replayed_bodies(c, info) == [f"m{i}" for i in range(70, 120)]
    async with connect(server.port, V2) as c:  # asking for more gets what the room keeps
        info = recovery(await join(c, topic, {"user": "Cy", "phx_pos": {"last": 500}}))
        assert await replayed_bodies(c, info) == [f"m{i}" for i in range(20, 120)]


async def test_a_rejoin_gets_what_it_missed_once_in_order(server: ServerProcess) -> None:
    topic = "room:recovery"
    async with connect(server.port, V2) as ada:
        await join(ada, topic, {"user": "Ada", **RECENT})
        async with connect(server.port, V2) as bob:
            await join(bob, topic, {"user": "Bob", **RECENT})
            seen = await send_all(ada, topic, ["before 1", "before 2"])
            assert [await recv_chat(bob) for _ in range(2)] == [
                [None, None, topic, "new_msg", m] for m in seen]
        last = seen[-1]["phx_pos"]
        # Bob's connection is gone; Ada goes on
        await send_all(ada, topic, ["missed 1", "missed 2", "missed 3"])
        async with connect(server.port, V2) as bob:
            info = recovery(await join(bob, topic, {"user": "Bob", "phx_pos": last}))
            assert info == {"recovered": True, "epoch": last["epoch"],
                            "offset": last["offset"] + 3, "replayed": 3}
            assert await replayed_bodies(bob, info) == ["missed 1", "missed 2", "missed 3"]
            live = await send_all(ada, topic, ["live"])
            # then live, and nothing twice
            assert await recv_chat(bob) == [None, None, topic, "new_msg", live[0]]
            await bob.send("1", "9", topic, "new_msg", {"body": "bob is back"})
            got = [await recv_chat(bob), await recv_chat(bob)]
            assert sorted(m[3] for m in got) == ["new_msg", "phx_reply"], got

        # a position the history no longer covers, or from another epoch: not recovered, the
        # reason says why, nothing is replayed (the page then joins again for the recent ones)
        async with connect(server.port, V2) as bob:
            await send_all(ada, topic, [f"flood {i}" for i in range(100)])
            info = recovery(await join(bob, topic, {"user": "Bob", "phx_pos": last}))
            assert info["recovered"] is False and info["replayed"] == 0
            assert info["reason"] == "position older than the history"
            stale = {"offset": 1, "epoch": "0123456789abcdef"}
            info = recovery(await join(bob, topic, {"user": "Bob", "phx_pos": stale}, ref="2"))
            assert (info["recovered"], info["reason"]) == (False, "epoch changed")


async def test_a_restart_loses_the_history_and_says_so() -> None:
    """On one node the history is in memory: after a restart, a rejoin from a position is told
    the epoch changed, and a first join finds only what was sent since."""
    topic = "room:restart"
    with running_server("examples.chat.app:endpoint") as srv:
        async with connect(srv.port, V2) as c:
            await join(c, topic, {"user": "Ada", **RECENT})
            [before] = await send_all(c, topic, ["before the restart"])
        await trio.to_thread.run_sync(srv.restart)
        async with connect(srv.port, V2) as c:
            info = recovery(await join(c, topic, {"user": "Ada", "phx_pos": before["phx_pos"]}))
            assert info["recovered"] is False and info["reason"] == "epoch changed"
            assert info["epoch"] != before["phx_pos"]["epoch"] and info["replayed"] == 0
            [after] = await send_all(c, topic, ["after the restart"])
        async with connect(srv.port, V2) as c:
            info = recovery(await join(c, topic, {"user": "Bob", **RECENT}))
            assert await replayed_bodies(c, info) == ["after the restart"]
            assert info["offset"] == after["phx_pos"]["offset"] == 1


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
        # the presence list, which includes Ada
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


def test_module_endpoint_is_single_node_with_presence_and_history() -> None:
    assert isinstance(chat.endpoint.presence, Presence)
    assert isinstance(chat.endpoint.pubsub.adapter, LocalAdapter)
    # the rooms' history is the runtime's: the last 100 messages of each room, for a day
    config = chat.RoomChannel.history
    assert isinstance(config, History) and (config.size, config.ttl) == (100, 86400)
    assert chat.endpoint.history is not None
    assert chat.endpoint.history.config_for("room:lobby") is config
    # and the app keeps none of its own
    assert not {"HISTORY_TOPIC", "HISTORY_SIZE", "RoomHistory", "record_history",
                "history"} & set(vars(chat))
