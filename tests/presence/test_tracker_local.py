"""The tracker's local API, wire details and lifecycle (one or two nodes, MockClock)."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import msgpack
import pytest
import trio
from trio.testing import MockClock

from channels.pubsub import PubSub
from presence.state import AlreadyTracked, Meta, NotTracked
from presence.tracker import (
    EVENT_HEARTBEAT,
    EVENT_TRANSFER_ACK,
    EVENT_TRANSFER_REQ,
    PROTOCOL_VERSION,
    Tracker,
    shard_for,
)
from tests.presence.simbus import Node, SimBus, start_node

OPTS: dict[str, Any] = {"broadcast_period": 1.0, "max_silent_periods": 3, "down_period": 7.0,
                        "permdown_period": 30.0}

Diffs = list[tuple[str, dict[str, list[Meta]], dict[str, list[Meta]]]]


def local_tracker(**options: Any) -> tuple[Tracker, Diffs]:
    diffs: Diffs = []
    t = Tracker(PubSub(), on_diff=lambda *d: diffs.append(d), **options)
    return t, diffs


# --------------------------------------------------------------------------- local operations


async def test_track_stamps_phx_ref_and_reports_at_once() -> None:
    t, diffs = local_tracker()
    meta = {"status": "online", "phx_ref": "forged", "phx_ref_prev": "forged"}
    stored = t.track("n#1", "room:1", "alice", meta)
    assert meta == {"status": "online", "phx_ref": "forged", "phx_ref_prev": "forged"}
    assert stored["status"] == "online" and stored["phx_ref"] != "forged"
    assert "phx_ref_prev" not in stored
    assert diffs == [("room:1", {"alice": [stored]}, {})]
    assert t.list("room:1") == {"alice": [stored]}
    assert t.get_by_key("room:1", "alice") == [stored]
    # Callers get copies: mutating them does not touch the replicated state.
    stored["status"] = "mutated"
    t.list("room:1")["alice"][0]["status"] = "mutated"
    assert t.get_by_key("room:1", "alice")[0]["status"] == "online"


async def test_phx_refs_are_16_url_safe_chars_and_unique() -> None:
    t1, _ = local_tracker()
    t2, _ = local_tracker()
    refs = [t.track("o", "room", f"k{i}", {})["phx_ref"] for t in (t1, t2) for i in range(2000)]
    assert len(set(refs)) == len(refs)
    for ref in refs[:50] + refs[-50:]:
        assert len(ref) == 16 and "=" not in ref
        assert len(base64.urlsafe_b64decode(ref)) == 12


async def test_same_key_may_be_tracked_by_several_owners_but_not_twice() -> None:
    t, diffs = local_tracker()
    t.track("n#1", "room", "alice", {"tab": 1})
    t.track("n#2", "room", "alice", {"tab": 2})
    t.track("n#1", "other", "alice", {})
    with pytest.raises(AlreadyTracked):
        t.track("n#1", "room", "alice", {"tab": 3})
    assert len(diffs) == 3
    assert sorted(m["tab"] for m in t.list("room")["alice"]) == [1, 2]


async def test_update_reports_one_diff_with_phx_ref_prev() -> None:
    t, diffs = local_tracker()
    old = t.track("n#1", "room", "alice", {"s": 1})
    new = t.update("n#1", "room", "alice", {"s": 2})
    assert new["phx_ref_prev"] == old["phx_ref"] and new["phx_ref"] != old["phx_ref"]
    assert diffs[-1] == ("room", {"alice": [new]}, {"alice": [old]})
    newer = t.update("n#1", "room", "alice", new)  # a meta carrying refs gets fresh ones
    assert newer["phx_ref_prev"] == new["phx_ref"]
    assert t.list("room") == {"alice": [newer]}
    with pytest.raises(NotTracked):
        t.update("n#1", "room", "bob", {})
    with pytest.raises(NotTracked):
        t.update("n#2", "room", "alice", {})


async def test_untrack_and_untrack_owner() -> None:
    t, diffs = local_tracker(pool_size=4)
    topics = [f"room:{i}" for i in range(10)]
    assert len({t.shard_for(x) for x in topics}) == 4
    for x in topics:
        t.track("n#1", x, "alice", {})
        t.track("n#2", x, "bob", {})
    t.untrack("n#1", "room:0", "alice")
    assert diffs[-1][0] == "room:0" and list(diffs[-1][2]) == ["alice"]
    n = len(diffs)
    t.untrack("n#1", "room:0", "alice")  # a no-op
    t.untrack("n#9", "room:0", "bob")
    assert len(diffs) == n
    t.untrack_owner("n#1")
    # One diff per topic, each with alice's leave only.
    assert sorted(d[0] for d in diffs[n:]) == sorted(topics[1:])
    assert all(d[1] == {} and list(d[2]) == ["alice"] for d in diffs[n:])
    assert all(set(t.list(x)) == {"bob"} for x in topics)
    t.untrack_owner("n#1")
    assert len(diffs) == n + 9


async def test_meta_must_survive_msgpack() -> None:
    t, diffs = local_tracker()
    with pytest.raises(TypeError, match="msgpack"):
        t.track("n#1", "room", "alice", {"when": object()})
    with pytest.raises(TypeError):
        t.track("n#1", "room", "alice", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert t.list("room") == {} and diffs == []
    t.track("n#1", "room", "alice", {"ok": [1, "x", None, 2.5, {"n": True}]})


async def test_a_failing_on_diff_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("boom")

    t = Tracker(PubSub(), on_diff=boom)
    t.track("n#1", "room", "alice", {})
    assert set(t.list("room")) == {"alice"}
    assert "on_diff callback failed" in caplog.text


def test_shard_routing_is_stable_across_processes() -> None:
    # crc32, not the per-process salted hash(): every node routes a topic to the same shard.
    assert shard_for("room:lobby", 8) == zlib.crc32(b"room:lobby") % 8 == 5
    assert shard_for("room:lobby", 1) == 0


# --------------------------------------------------------------------------- over the bus


async def two_nodes(nursery: trio.Nursery, **options: Any) -> tuple[SimBus, Node, Node]:
    bus = SimBus(nursery)
    a = await start_node(nursery, bus, "a", **{**OPTS, **options})
    b = await start_node(nursery, bus, "b", **{**OPTS, **options})
    return bus, a, b


async def test_wire_messages(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    bus, a, b = await two_nodes(nursery)
    a.tracker.track("a#1", "room", "alice", {"s": 1})
    await trio.sleep(4.0)
    hb = next(s for s in bus.sent if s.src == "a" and s.event == EVENT_HEARTBEAT)
    assert hb.topic == "phx_presence:presence_shard0" and hb.dst is None
    ref = a.tracker.refs[0]
    assert hb.payload["v"] == PROTOCOL_VERSION and hb.payload["pool"] == 1
    assert hb.payload["from"] == [ref.node, ref.vsn]
    assert [ref.node, ref.vsn, 1] in hb.payload["clock"]
    assert hb.payload["delta"]["kind"] == "delta"
    # b merged the delta carried by the very heartbeat that introduced a.
    assert b.tracker.list("room")["alice"][0]["s"] == 1
    for s in bus.sent:
        msgpack.packb(s.payload, use_bin_type=True)
        if s.event in (EVENT_TRANSFER_REQ, EVENT_TRANSFER_ACK):
            assert s.dst is not None and s.dst != s.src


async def test_idle_heartbeats_keep_peers_up(autojump_clock: MockClock,
                                             nursery: trio.Nursery) -> None:
    bus, a, b = await two_nodes(nursery)
    # The first tick (within 25 % of a period) always announces the node, even an idle one.
    await trio.sleep(0.26)
    assert bus.count(EVENT_HEARTBEAT, src="a") == bus.count(EVENT_HEARTBEAT, src="b") == 1
    assert a.tracker.replicas() == {b.tracker.refs[0]: "up"}
    a.tracker.track("a#1", "room", "alice", {})
    start = trio.current_time()
    await trio.sleep(60.0)
    # A delta at the first tick, then one empty heartbeat every max_silent_periods ticks.
    assert bus.count(EVENT_HEARTBEAT, src="a", since=start) == 20
    assert a.tracker.replicas() == {b.tracker.refs[0]: "up"}
    assert b.tracker.replicas() == {a.tracker.refs[0]: "up"}
    assert [d for d in b.diffs if d[2]] == []  # never a leave: no flapping


async def test_reconnect_hook_requests_transfers_from_every_peer(
        autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    bus, a, b = await two_nodes(nursery, pool_size=2)
    await trio.sleep(4.0)
    hooks = a.pubsub.adapter.on_reconnect  # type: ignore[attr-defined]
    assert len(hooks) == 1
    # A change b made while a's link was down is not advertised again until b's next
    # heartbeat; the hook pulls it at once.
    bus.partition({"a"}, {"b"})
    b.tracker.track("b#1", "room", "bob", {})
    await trio.sleep(1.5)
    bus.heal()
    since = trio.current_time()
    hooks[0]()
    await trio.sleep(0.1)
    assert bus.count(EVENT_TRANSFER_REQ, src="a", since=since) == 2  # one per shard
    assert set(a.tracker.list("room")) == {"bob"}
    a.stop()
    await trio.sleep(0.1)
    assert hooks == []


async def test_malformed_messages_are_ignored_and_logged_once(
        autojump_clock: MockClock, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    bus, a, b = await two_nodes(nursery)
    topic = "phx_presence:presence_shard0"
    good = {"v": 1, "pool": 1, "from": ["x", 1], "clock": [], "delta": None}
    for payload in [None, {"v": 99}, {**good, "clock": "nope"}, {**good, "from": [1, 2]},
                    {**good, "delta": {"kind": "delta", "v": 1}}, {**good, "clock": [["x"]]}]:
        bus.send("x", "a", topic, EVENT_HEARTBEAT, payload)
    to = [a.tracker.refs[0].node, a.tracker.refs[0].vsn]
    bus.send("x", "a", topic, EVENT_TRANSFER_ACK, {**good, "to": to, "payload": 3})
    await trio.sleep(0.1)
    assert a.tracker.stats["malformed"] == 7
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 3  # once per distinct "from" field
    a.tracker.track("a#1", "room", "alice", {})
    await trio.sleep(3.0)
    assert set(b.tracker.list("room")) == {"alice"}


async def test_graceful_permdown_stops_run_and_is_idempotent(
        autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    bus, a, b = await two_nodes(nursery)
    a.tracker.track("a#1", "room", "alice", {})
    await trio.sleep(3.0)
    await a.tracker.graceful_permdown()
    await a.tracker.graceful_permdown()
    await trio.sleep(0.1)
    assert bus.count("graceful_permdown") == 1
    assert b.tracker.list("room") == {}
    # Local operations still work, unreplicated.
    a.tracker.track("a#1", "room", "bob", {})
    assert set(a.tracker.list("room")) == {"alice", "bob"}
    await trio.sleep(10.0)
    assert b.tracker.list("room") == {}
    with trio.fail_after(1):
        await a.tracker.run()  # returns at once: this tracker has left
