"""phoenix.js ``Presence`` (onSync / onJoin / onLeave / list) against a real server process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.driver import Driver, driver
from tests.support.server import ServerProcess, running_server

TOPIC = "room:presence"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("tests.support.presence_app:make_endpoint") as s:
        yield s


@pytest.fixture
def js() -> Iterator[Driver]:
    with driver() as d:
        yield d


def url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/socket"


def keys(expected: set[str]):  # type: ignore[no-untyped-def]
    return lambda lst: set(lst) == expected


def test_three_clients_see_each_other_and_updates(server: ServerProcess, js: Driver) -> None:
    topic = TOPIC + ":a"
    for cid in ("alice", "bob", "carol"):
        js.connect(cid, url(server))
        assert js.join(cid, topic, user=cid)["ev"] == "join_ok"
    everyone = {"alice", "bob", "carol"}
    lists = {cid: js.wait_presence(cid, topic, keys(everyone)) for cid in everyone}
    assert lists["alice"] == lists["bob"] == lists["carol"]
    assert all(len(refs) == 1 for refs in lists["alice"].values())

    # an update is seen as a leave of the old meta and a join of the new one
    old_ref = lists["alice"]["bob"][0]
    since = js.mark()
    reply = js.push("bob", topic, "status", {"status": "away"})
    new_ref = reply["resp"]["phx_ref"]
    assert new_ref != old_ref
    for cid in ("alice", "carol"):
        js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "presence_leave"
                and e["key"] == "bob" and e["refs"] == [old_ref], 10, since)
        js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "presence_join"
                and e["key"] == "bob" and new_ref in e["refs"], 10, since)
        sync = js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "presence_sync"
                       and e["list"].get("bob") == [new_ref], 10, since)
        meta = sync["metas"]["bob"][0]
        assert meta["status"] == "away" and meta["phx_ref_prev"] == old_ref

    # a closed tab (client disconnect) leaves everywhere
    since = js.mark()
    js.send(op="disconnect", id="carol")
    for cid in ("alice", "bob"):
        js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "presence_leave"
                and e["key"] == "carol", 10, since)
        js.wait_presence(cid, topic, keys({"alice", "bob"}))


def test_crashed_channel_leaves_and_returns(server: ServerProcess, js: Driver) -> None:
    topic = TOPIC + ":b"
    for cid in ("alice", "bob", "carol"):
        js.connect(cid, url(server))
        js.join(cid, topic, user=cid)
    everyone = {"alice", "bob", "carol"}
    before = js.wait_presence("bob", topic, keys(everyone))
    since = js.mark()
    js.send(op="push", id="alice", topic=topic, event="boom", payload={}, tag="boom")
    js.wait(lambda e: e.get("id") == "alice" and e["ev"] == "chan_error", 10, since)
    # alice's presence left with her channel, then came back with the automatic rejoin
    js.wait(lambda e: e.get("id") == "bob" and e["ev"] == "presence_leave"
            and e["key"] == "alice" and e["refs"] == before["alice"], 10, since)
    after = js.wait_presence("bob", topic, lambda lst: set(lst) == everyone
                             and lst["alice"] != before["alice"])
    assert len(after["alice"]) == 1
    # alice's own client got a fresh presence_state after the rejoin: it sees everyone
    js.wait_presence("alice", topic, lambda lst: lst == after)


def test_diff_around_a_rejoin_is_not_lost(server: ServerProcess, js: Driver) -> None:
    topic = TOPIC + ":c"
    js.connect("alice", url(server))
    js.join("alice", topic, user="alice")
    js.wait_presence("alice", topic, keys({"alice"}))
    js.connect("dave", url(server))
    since = js.mark()
    # crash alice's channel and let dave join while alice is rejoining
    js.send(op="push", id="alice", topic=topic, event="boom", payload={}, tag="boom")
    js.send(op="join", id="dave", topic=topic, params={"user": "dave"})
    js.wait(lambda e: e.get("id") == "alice" and e["ev"] == "chan_error", 10, since)
    final = js.wait_presence("alice", topic, keys({"alice", "dave"}))
    assert js.wait_presence("dave", topic, keys({"alice", "dave"})) == final
