"""The kanban board example without a browser: its page and files over HTTP, its channel over
raw WebSockets (one node, its own process), and its room in-process (a change that cannot be
stored is undone; a board comes back from its snapshot)."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from channels import Endpoint, Rooms
from channels.placement import Lease, MemoryLeaseStore
from examples.board import app as board_app
from examples.board.app import REMEMBERED_OPS, Board
from tests.support.client import RawClient, connect
from tests.support.server import ROOT, ServerProcess, running_server

V2 = "2.0.0"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("examples.board.app:endpoint") as srv:
        yield srv


def get(server: ServerProcess, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as resp:
        return resp.status, resp.headers["content-type"], resp.read()


# -- HTTP -----------------------------------------------------------------------------------


def test_the_page_and_its_files(server: ServerProcess) -> None:
    status, ctype, body = get(server, "/")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert b'<script type="module" src="/app.js"></script>' in body
    for path in ("/app.js", "/board_model.js"):
        status, ctype, js = get(server, path)
        assert status == 200
        assert ctype.split(";")[0] in ("text/javascript", "application/javascript")
        assert b"innerHTML" not in js  # user text is only ever set with textContent
    app_js = get(server, "/app.js")[2]
    assert b'import {Presence, Socket} from "/js/phoenix.mjs";' in app_js
    assert b'import {BoardSync} from "/board_model.js";' in app_js
    assert get(server, "/style.css")[:2] == (200, "text/css; charset=utf-8")
    assert get(server, "/js/phoenix.mjs")[2] == \
        (ROOT / "node_modules/phoenix/priv/static/phoenix.mjs").read_bytes()


def test_missing_phoenix_js_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"Run `npm ci`"):
        board_app.make_endpoint(tmp_path)


# -- the channel over a raw WebSocket ----------------------------------------------------------


class Tab:
    """A raw client on one board, keeping what it receives."""

    def __init__(self, ws: RawClient, board_id: str) -> None:
        self.ws = ws
        self.topic = f"board:{board_id}"
        self.ref = 10
        self.events: list[dict[str, Any]] = []
        self.presences: dict[str, list[dict[str, Any]]] = {}

    async def join(self, user: Any) -> list[Any]:
        return await self.ws.join(self.topic, "1", "1", {"user": user})

    async def push(self, event: str, payload: Any) -> tuple[str, Any]:
        self.ref += 1
        ref = str(self.ref)
        await self.ws.send("1", ref, self.topic, event, payload)
        while True:
            m = await self.ws.recv(10)
            if m[3] == "phx_reply" and m[1] == ref:
                return m[4]["status"], m[4]["response"]
            self._keep(m)

    def _keep(self, m: list[Any]) -> None:
        if m[3] == "op":
            self.events.append(m[4])
        elif m[3] == "presence_state":
            self.presences = {k: v["metas"] for k, v in m[4].items()}
        elif m[3] == "presence_diff":
            for key, entry in m[4]["leaves"].items():
                refs = {meta["phx_ref"] for meta in entry["metas"]}
                left = [meta for meta in self.presences.get(key, []) if meta["phx_ref"] not in refs]
                if left:
                    self.presences[key] = left
                else:
                    self.presences.pop(key, None)
            for key, entry in m[4]["joins"].items():
                self.presences[key] = self.presences.get(key, []) + entry["metas"]

    async def until(self, done: Any, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not done(self):
                self._keep(await self.ws.recv(timeout))


async def test_refused_joins(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ws:
        for topic, user, reason in [
            ("board:main", "", "a display name is required"),
            ("board:main", "x" * 33, "display names are at most 32 characters"),
            ("board:main", "a\x07b", "display names cannot contain control characters"),
            ("board:Main", "Ada", "board ids are 1-32 characters: a-z, 0-9, '-' and '_', "
                                  "starting with a letter or digit"),
            ("board:", "Ada", "board ids are 1-32 characters: a-z, 0-9, '-' and '_', "
                              "starting with a letter or digit"),
        ]:
            reply = await ws.join(topic, "1", "1", {"user": user})
            assert reply[4] == {"status": "error", "response": {"reason": reason}}, topic


async def test_changes_reach_everyone_with_versions(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ws_a, connect(server.port, V2) as ws_b:
        ada, bob = Tab(ws_a, "raw-1"), Tab(ws_b, "raw-1")
        reply = await ada.join("  Ada ")
        assert reply[4]["status"] == "ok"
        response = reply[4]["response"]
        assert response["user"] == "Ada"
        board = response["board"]
        assert (board["version"], board["node"]) == (0, "local")
        assert [c["id"] for c in board["columns"]] == ["todo", "doing", "done"]
        await bob.join("Bob")

        status, event = await ada.push("op", {"type": "add", "column": "todo", "text": "one",
                                              "opid": "a-1"})
        assert status == "ok"
        assert event == {"uid": board["uid"], "version": 1, "by": "Ada", "opid": "a-1",
                         "node": "local",
                         "op": {"type": "add", "id": "c1", "column": "todo", "index": 0,
                                "text": "one"}}
        await bob.until(lambda t: len(t.events) == 1)
        assert bob.events == [event]
        await ada.until(lambda t: len(t.events) == 1)

        # the same opid again: the first answer, no second change, no broadcast
        assert await ada.push("op", {"type": "add", "column": "todo", "text": "one",
                                     "opid": "a-1"}) == ("ok", event)
        status, moved = await bob.push("op", {"type": "move", "id": "c1", "column": "done"})
        assert status == "ok" and moved["version"] == 2 and moved["by"] == "Bob"
        assert moved["op"] == {"type": "move", "id": "c1", "column": "done", "index": 0}
        await ada.until(lambda t: len(t.events) == 2)
        assert ada.events == [event, moved]
        # a change that changes nothing: ok, no version
        status, same = await bob.push("op", {"type": "move", "id": "c1", "column": "done"})
        assert status == "ok" and (same["op"], same["version"]) == (None, 2)

        status, whole = await bob.push("get", {})
        assert status == "ok" and whole["version"] == 2
        assert whole["columns"][2]["cards"] == [{"id": "c1", "text": "one"}]
        # a newcomer gets the whole board in its join reply
        async with connect(server.port, V2) as ws_c:
            reply = await Tab(ws_c, "raw-1").join("Cy")
            assert reply[4]["response"]["board"] == whole
        assert len(bob.events) == 2


async def test_bad_changes_are_refused_with_a_reason(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ws:
        tab = Tab(ws, "raw-2")
        await tab.join("Ada")
        await tab.push("op", {"type": "add", "column": "todo", "text": "keep"})
        for payload, reason in [
            ({"type": "edit", "id": "c99", "text": "x"}, "unknown card 'c99' (deleted?)"),
            ({"type": "move", "id": "c1", "column": "later"},
             "unknown column 'later' (columns: todo, doing, done)"),
            ({"type": "add", "column": "todo", "text": "x" * 501},
             "text is longer than 500 characters"),
            ({"type": "add", "column": "todo", "text": "   "}, "text is empty"),
            ({"type": "edit", "id": "c1", "text": "a\x1bb"},
             "text cannot contain control characters"),
            ({"type": "explode"}, "unknown op type 'explode' (add, edit, move, delete)"),
            ({"type": "add", "column": "todo", "text": "x", "opid": ""},
             "opid must be a string of 1-64 characters"),
            ({"type": "add", "column": "todo", "text": "x", "opid": 7},
             "opid must be a string of 1-64 characters"),
        ]:
            assert await tab.push("op", payload) == ("error", {"reason": reason}), payload
        assert await tab.push("editing", {"card": "<script>"}) == \
            ("error", {"reason": "card must be a card id or null"})
        assert await tab.push("shout", {}) == ("error", {"reason": "unknown event 'shout'"})
        assert (await tab.push("get", {}))[1]["version"] == 1  # nothing refused changed the board
        assert tab.events and all(e["version"] == 1 for e in tab.events)


async def test_presence_says_who_edits_which_card(server: ServerProcess) -> None:
    async with connect(server.port, V2) as ws_a, connect(server.port, V2) as ws_b:
        ada, bob = Tab(ws_a, "raw-3"), Tab(ws_b, "raw-3")
        await ada.join("Ada")
        await bob.join("Bob")
        await bob.until(lambda t: set(t.presences) == {"Ada", "Bob"})
        assert [m["editing"] for m in bob.presences["Ada"]] == [None]
        assert [m["node"] for m in bob.presences["Ada"]] == ["local"]
        assert await ada.push("editing", {"card": "c7"}) == ("ok", {"card": "c7"})
        await bob.until(lambda t: [m["editing"] for m in t.presences.get("Ada", [])] == ["c7"])
        assert await ada.push("editing", {"card": None}) == ("ok", {"card": None})
        await bob.until(lambda t: [m["editing"] for m in t.presences.get("Ada", [])] == [None])
    async with connect(server.port, V2) as ws:
        cy = Tab(ws, "raw-3")
        await cy.join("Cy")
        await cy.until(lambda t: set(t.presences) == {"Cy"})


# -- the room, in-process ---------------------------------------------------------------------


class FlakyStore(MemoryLeaseStore):
    """The in-memory store, whose saves can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def save(self, lease: Lease, data: bytes, ttl: float | None) -> bool:
        if self.fail:
            return False
        return await super().save(lease, data, ttl)


@asynccontextmanager
async def running_rooms(store: MemoryLeaseStore) -> AsyncIterator[Rooms]:
    rooms = Rooms(Board, store=store)
    endpoint = Endpoint({}, rooms=rooms)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.pubsub.run)
        await nursery.start(rooms.run)
        yield rooms
        nursery.cancel_scope.cancel()


def op_call(op: dict[str, Any], opid: str | None = None) -> dict[str, Any]:
    return {"call": "op", "op": op, "opid": opid, "user": "Ada"}


async def test_a_change_that_cannot_be_stored_is_undone(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FlakyStore()
    async with running_rooms(store) as rooms:
        add = {"type": "add", "column": "todo", "text": "kept"}
        assert (await rooms.call(Board, "b", op_call(add, "1")))["ok"]["version"] == 1
        store.fail = True
        lost = {"type": "add", "column": "todo", "text": "not stored"}
        assert await rooms.call(Board, "b", op_call(lost, "2")) == {
            "error": "the board could not store the change; try again", "retry": True}
        board = await rooms.call(Board, "b", {"call": "get"})
        assert board["version"] == 1
        assert [c["text"] for c in board["columns"][0]["cards"]] == ["kept"]
        store.fail = False
        # the client sends it again (same opid): applied once, as the next version, new id
        answer = (await rooms.call(Board, "b", op_call(lost, "2")))["ok"]
        assert answer["version"] == 2 and answer["op"]["id"] == "c2"
        assert (await rooms.call(Board, "b", op_call(lost, "2")))["ok"] == answer


async def test_a_board_comes_back_from_its_snapshot(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running_rooms(MemoryLeaseStore()) as rooms:
        for i in range(REMEMBERED_OPS + 5):
            await rooms.call(Board, "s", op_call(
                {"type": "add", "column": "doing", "text": f"card {i}"}, f"op-{i}"))
        before = await rooms.call(Board, "s", {"call": "get"})
        await trio.sleep(Board.idle_timeout + 10)
        assert not rooms.is_active(Board, "s")
        assert await rooms.call(Board, "s", {"call": "get"}) == before
        assert rooms.stats()["restored"] == 1
        # the last opids are remembered across the restore, the oldest are forgotten
        last = f"op-{REMEMBERED_OPS + 4}"
        resend = await rooms.call(Board, "s", op_call({"type": "delete", "id": "c1"}, last))
        assert resend["ok"]["version"] == REMEMBERED_OPS + 5
        forgotten = await rooms.call(Board, "s", op_call({"type": "delete", "id": "c1"}, "op-0"))
        assert forgotten["ok"]["version"] == REMEMBERED_OPS + 6
        assert await rooms.call(Board, "s", {"call": "nope"}) == {"error": "unknown call 'nope'"}
