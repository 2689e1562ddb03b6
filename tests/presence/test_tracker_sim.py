"""Several trackers in one process over a simulated bus (tests/presence/simbus.py), on MockClock.

Every node's view is checked twice: ``tracker.list`` and a replay of the diffs it reported (what
a phoenix.js client fed with them would show), which must agree with each other and with the
ground truth (what each live node tracks itself).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from presence.state import Meta
from presence.tracker import EVENT_HEARTBEAT, EVENT_TRANSFER_ACK, EVENT_TRANSFER_REQ, Tracker
from tests.presence.simbus import Node, SimBus, start_node

P = 1.0  # broadcast_period
OPTS: dict[str, Any] = {
    "broadcast_period": P,
    "max_silent_periods": 3,  # idle heartbeat every 3 s
    "down_period": 7.0,
    "permdown_period": 30.0,
    "clock_sample_periods": 2,
}
DOWN = OPTS["down_period"]
PERMDOWN = OPTS["permdown_period"]
ROOM = "room:lobby"

Truth = dict[str, dict[str, set[str]]]  # topic -> key -> phx_refs


class Cluster:
    """Nodes on one bus, plus the ground truth of what each node tracks itself."""

    def __init__(self, nursery: trio.Nursery, bus: SimBus) -> None:
        self.nursery = nursery
        self.bus = bus
        self.nodes: dict[str, Node] = {}
        # node -> (topic, owner, key) -> phx_ref
        self.local: dict[str, dict[tuple[str, str, str], str]] = {}

    async def start(self, name: str, **options: Any) -> Node:
        node = await start_node(self.nursery, self.bus, name, **{**OPTS, **options})
        self.nodes[name] = node
        self.local[name] = {}
        return node

    def forget(self, name: str) -> None:
        """The node is gone (crashed or left): its presences leave the truth."""
        del self.nodes[name]
        del self.local[name]

    def track(
        self, name: str, topic: str, key: str, meta: Meta | None = None, owner: str = "o"
    ) -> Meta:
        stored = self.nodes[name].tracker.track(f"{name}#{owner}", topic, key, meta or {})
        self.local[name][(topic, f"{name}#{owner}", key)] = stored["phx_ref"]
        return stored

    def update(self, name: str, topic: str, key: str, meta: Meta, owner: str = "o") -> Meta:
        stored = self.nodes[name].tracker.update(f"{name}#{owner}", topic, key, meta)
        self.local[name][(topic, f"{name}#{owner}", key)] = stored["phx_ref"]
        return stored

    def untrack(self, name: str, topic: str, key: str, owner: str = "o") -> None:
        self.nodes[name].tracker.untrack(f"{name}#{owner}", topic, key)
        self.local[name].pop((topic, f"{name}#{owner}", key), None)

    def truth(self, topic: str, names: list[str] | None = None) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for name in names if names is not None else list(self.local):
            for (t, _, key), ref in self.local[name].items():
                if t == topic:
                    out.setdefault(key, set()).add(ref)
        return out

    def check(
        self, topic: str, *, on: list[str] | None = None, expect: dict[str, set[str]] | None = None
    ) -> None:
        """Every node in ``on`` lists exactly ``expect`` (default: the truth), diffs agree."""
        expected = self.truth(topic) if expect is None else expect
        for name in on if on is not None else list(self.nodes):
            node = self.nodes[name]
            assert node.listed(topic) == expected, f"{name} lists the wrong presences"
            assert node.replayed(topic) == expected, f"{name}'s diffs disagree with the truth"
            assert not node.errors, node.errors


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> Cluster:
    # Tests also take ``autojump_clock`` themselves: pytest-trio only picks up a clock that the
    # test function requests directly. The trackers' first-tick jitter uses ``random``: seed
    # it so a run is reproducible (TRACKER_SIM_SEED picks another schedule).
    random.seed(int(os.environ.get("TRACKER_SIM_SEED", "1")))
    return Cluster(nursery, SimBus(nursery))


def joined_keys(node: Node, since: int = 0) -> list[str]:
    return [k for _, joins, _ in node.diffs[since:] for k in joins]


def left_keys(node: Node, since: int = 0) -> list[str]:
    return [k for _, _, leaves in node.diffs[since:] for k in leaves]


# --------------------------------------------------------------------------- propagation


async def test_join_and_leave_propagate(autojump_clock: MockClock, cluster: Cluster) -> None:
    for n in "abc":
        await cluster.start(n)
    cluster.track("a", ROOM, "alice", {"status": "away"})
    # Local changes reach the local on_diff before anything else happens.
    assert cluster.nodes["a"].diffs[-1][1]["alice"][0]["status"] == "away"
    cluster.track("b", ROOM, "bob")
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    assert set(cluster.truth(ROOM)) == {"alice", "bob"}
    assert sorted(joined_keys(cluster.nodes["c"])) == ["alice", "bob"]
    assert cluster.nodes["c"].tracker.get_by_key(ROOM, "alice")[0]["status"] == "away"

    mark = len(cluster.nodes["c"].diffs)
    cluster.untrack("a", ROOM, "alice")
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    assert set(cluster.truth(ROOM)) == {"bob"}
    assert left_keys(cluster.nodes["c"], mark) == ["alice"]


async def test_update_is_one_diff_with_phx_ref_prev(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    a, b = await cluster.start("a"), await cluster.start("b")
    old = cluster.track("a", ROOM, "alice", {"status": "online"})
    await trio.sleep(3 * P)
    marks = {n.name: len(n.diffs) for n in (a, b)}
    new = cluster.update("a", ROOM, "alice", {"status": "typing"})
    assert new["phx_ref_prev"] == old["phx_ref"] != new["phx_ref"]
    await trio.sleep(3 * P)
    for n in (a, b):
        diffs = n.diffs[marks[n.name] :]
        assert diffs == [(ROOM, {"alice": [new]}, {"alice": [old]})], n.name
    cluster.check(ROOM)


async def test_untrack_owner_reaches_every_shard(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    a, b = await cluster.start("a", pool_size=4), await cluster.start("b", pool_size=4)
    topics = [f"room:{i}" for i in range(12)]
    assert len({a.tracker.shard_for(t) for t in topics}) == 4
    for t in topics:
        cluster.track("a", t, "alice")
    await trio.sleep(3 * P)
    assert all(b.tracker.list(t) for t in topics)
    a.tracker.untrack_owner("a#o")
    cluster.local["a"].clear()
    await trio.sleep(3 * P)
    for t in topics:
        cluster.check(t, expect={})


async def test_first_contact_between_populated_nodes(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    """phoenix_pubsub#74: nodes that each hold more presences than a generation cap meet."""
    caps = {"max_delta_sizes": (5, 20, 50)}
    a, b = await cluster.start("a", **caps), await cluster.start("b", **caps)
    cluster.bus.partition({"a"}, {"b"})
    for i, n in enumerate([3, 10, 30, 80]):
        topic = f"room:{i}"
        for k in range(n):
            cluster.track("a", topic, f"a{k}")
            cluster.track("b", topic, f"b{k}")
        await trio.sleep(P)
    await trio.sleep(2 * P)
    cluster.bus.heal()
    await trio.sleep(4 * 3 * P)
    for i, n in enumerate([3, 10, 30, 80]):
        assert len(cluster.truth(f"room:{i}")) == 2 * n
        cluster.check(f"room:{i}")
    assert a.tracker.replicas() == {b.tracker.refs[0]: "up"}


@pytest.mark.parametrize("last_op", ["update", "untrack"])
async def test_stale_transfer_never_brings_back_old_meta(autojump_clock: MockClock, cluster: Cluster,
                                                          last_op: str) -> None:
    """phoenix_pubsub#148: c holds a's newest change (parked behind a gap) when b's older full
    transfer arrives; the older meta must not come back, not even briefly."""
    bus = cluster.bus
    _, b, c = [await cluster.start(n) for n in "abc"]
    await trio.sleep(2 * 3 * P)
    bus.partition({"a"}, {"c"})
    bus.hold("b", "c", EVENT_TRANSFER_ACK)
    bus.hold("a", "c", EVENT_TRANSFER_ACK)
    v1 = cluster.track("a", ROOM, "alice", {"v": 1})
    await trio.sleep(3 * 3 * P)  # b has v1; c asked b for it; b's answer is parked
    assert bus.count(EVENT_TRANSFER_REQ, src="c") >= 1
    assert b.tracker.get_by_key(ROOM, "alice") == [v1]
    cluster.update("a", ROOM, "alice", {"v": 2})
    await trio.sleep(2 * P)  # c misses this delta
    bus.heal()
    if last_op == "update":
        cluster.update("a", ROOM, "alice", {"v": 3})
    else:
        cluster.untrack("a", ROOM, "alice")
    await trio.sleep(2 * P)  # c gets this delta, behind a gap
    assert c.tracker._shards[0].state.clouds
    assert bus.release("b", "c", EVENT_TRANSFER_ACK) >= 1
    await trio.sleep(0.5)
    cluster.check(ROOM, on=["c"])
    bus.release("a", "c", EVENT_TRANSFER_ACK)
    await trio.sleep(3 * 3 * P)
    cluster.check(ROOM)
    assert not any(m.get("v") == 1 for _, joins, _ in c.diffs for ms in joins.values()
                   for m in ms)


# --------------------------------------------------------------------------- failures


async def test_netsplit_then_heal(autojump_clock: MockClock, cluster: Cluster) -> None:
    for n in "abc":
        await cluster.start(n)
    for n in "abc":
        cluster.track(n, ROOM, f"user_{n}")
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    marks = {name: len(n.diffs) for name, n in cluster.nodes.items()}

    cluster.bus.partition({"a"}, {"b", "c"})
    await trio.sleep(DOWN + 3 * 3 * P)
    cluster.check(ROOM, on=["a"], expect=cluster.truth(ROOM, ["a"]))
    cluster.check(ROOM, on=["b", "c"], expect=cluster.truth(ROOM, ["b", "c"]))
    assert sorted(left_keys(cluster.nodes["a"], marks["a"])) == ["user_b", "user_c"]
    assert left_keys(cluster.nodes["b"], marks["b"]) == ["user_a"]
    # Changes on both sides while split.
    cluster.track("a", ROOM, "user_a2")
    cluster.untrack("b", ROOM, "user_b")
    cluster.update("c", ROOM, "user_c", {"away": True})
    await trio.sleep(3 * P)

    cluster.bus.heal()
    await trio.sleep(4 * 3 * P)
    cluster.check(ROOM)
    assert set(cluster.truth(ROOM)) == {"user_a", "user_a2", "user_c"}
    for node in cluster.nodes.values():
        assert set(node.tracker.replicas().values()) == {"up"}
    # The retained rows came back as joins.
    assert "user_a" in joined_keys(cluster.nodes["b"], marks["b"])


async def test_netsplit_longer_than_permdown_heals(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    """Each side purges the other; on heal they meet again as new replicas and resync fully."""
    a, b = await cluster.start("a"), await cluster.start("b")
    cluster.track("a", ROOM, "alice")
    cluster.track("b", ROOM, "bob")
    await trio.sleep(3 * P)
    cluster.bus.partition({"a"}, {"b"})
    await trio.sleep(PERMDOWN + 3 * 3 * P)
    assert a.tracker.replicas() == {} and b.tracker.replicas() == {}
    cluster.check(ROOM, on=["a"], expect=cluster.truth(ROOM, ["a"]))
    cluster.update("b", ROOM, "bob", {"back": True})
    cluster.bus.heal()
    await trio.sleep(4 * 3 * P)
    cluster.check(ROOM)
    assert a.tracker.get_by_key(ROOM, "bob")[0]["back"] is True


async def test_crashed_node_leaves_after_down_period_and_is_purged_later(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    a, b = await cluster.start("a"), await cluster.start("b")
    cluster.track("a", ROOM, "alice")
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    a_ref = a.tracker.refs[0]
    mark = len(b.diffs)
    a.crash()
    cluster.forget("a")
    # Zombie by design until down_period passes (the last heartbeat was <= 3 s before).
    await trio.sleep(DOWN - 3 * P - P)
    assert set(b.tracker.list(ROOM)) == {"alice"}
    await trio.sleep(3 * P + 2 * P)
    cluster.check(ROOM, expect={})
    assert left_keys(b, mark) == ["alice"]
    assert b.tracker.replicas() == {a_ref: "down"}
    await trio.sleep(PERMDOWN)
    assert b.tracker.replicas() == {}
    assert a_ref not in b.tracker._shards[0].state.context
    assert left_keys(b, mark) == ["alice"]  # no second leave at permdown


async def test_restart_with_new_incarnation_purges_the_old_one_at_once(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    a, b = await cluster.start("a"), await cluster.start("b")
    cluster.track("a", ROOM, "alice")
    await trio.sleep(3 * P)
    old_ref = a.tracker.refs[0]
    old_heartbeats = [s for s in cluster.bus.sent if s.src == "a" and s.event == EVENT_HEARTBEAT]
    mark = len(b.diffs)
    a.crash()
    cluster.forget("a")
    a2 = await cluster.start("a")
    assert a2.tracker.refs[0].vsn > old_ref.vsn
    cluster.track("a", ROOM, "alice", {"v": 2})
    await trio.sleep(2 * P)  # far less than down_period
    cluster.check(ROOM)
    assert left_keys(b, mark) == ["alice"]
    assert b.tracker.get_by_key(ROOM, "alice")[0]["v"] == 2
    assert b.tracker.replicas() == {a2.tracker.refs[0]: "up"}
    # Late copies of the old incarnation's heartbeats must not bring it back.
    for s in old_heartbeats:
        cluster.bus.send("a", None, s.topic, s.event, s.payload)
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    assert b.tracker.replicas() == {a2.tracker.refs[0]: "up"}


async def test_graceful_permdown_drops_presences_at_once(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    a, b, c = [await cluster.start(n) for n in "abc"]
    cluster.track("a", ROOM, "alice")
    cluster.track("b", ROOM, "bob")
    await trio.sleep(3 * P)
    old_heartbeats = [s for s in cluster.bus.sent if s.src == "a" and s.event == EVENT_HEARTBEAT]
    marks = {n.name: len(n.diffs) for n in (b, c)}
    await a.tracker.graceful_permdown()
    cluster.forget("a")
    await trio.sleep(0.1)
    cluster.check(ROOM)
    for n in (b, c):
        assert left_keys(n, marks[n.name]) == ["alice"]
        assert a.tracker.refs[0] not in n.tracker.replicas()
    # Duplicated or late heartbeats from the departed replica are ignored.
    for s in old_heartbeats:
        cluster.bus.send("a", None, s.topic, s.event, s.payload)
    await trio.sleep(3 * P)
    cluster.check(ROOM)
    # And it stopped: no heartbeats from "a" since.
    since = trio.current_time() - 3 * P
    assert cluster.bus.count(EVENT_HEARTBEAT, src="a", since=since) == len(old_heartbeats)


async def test_permdown_on_shutdown(autojump_clock: MockClock, cluster: Cluster) -> None:
    a, b = await cluster.start("a", permdown_on_shutdown=True), await cluster.start("b")
    cluster.track("a", ROOM, "alice")
    await trio.sleep(3 * P)
    a.stop()
    cluster.forget("a")
    await trio.sleep(0.1)
    cluster.check(ROOM, expect={})
    assert b.tracker.replicas() == {}


async def test_rolling_restart_sends_a_single_transfer_request(
    autojump_clock: MockClock, cluster: Cluster
) -> None:
    """phoenix_pubsub#135: a new node must stop requesting transfers once it is in sync, even
    while the node it replaces is still down (not permdowned) on its peers."""
    opts = {"permdown_period": 120.0}
    for n in "abc":
        await cluster.start(n, **opts)
        cluster.track(n, ROOM, f"user_{n}")
    await trio.sleep(3 * 3 * P)
    cluster.nodes["c"].crash()
    cluster.forget("c")
    await trio.sleep(DOWN + 2 * 3 * P)
    c_ref = next(r for r, st in cluster.nodes["a"].tracker.replicas().items() if st == "down")
    assert c_ref.node == "c"
    # phoenix_pubsub#136: heartbeats leave the down replica out of the advertised clock.
    last = [s for s in cluster.bus.sent if s.src == "a" and s.event == EVENT_HEARTBEAT][-1]
    assert [c_ref.node, c_ref.vsn] not in [entry[:2] for entry in last.payload["clock"]]
    assert c_ref in cluster.nodes["a"].tracker._shards[0].state.context

    start = trio.current_time()
    await cluster.start("d", **opts)
    cluster.track("d", ROOM, "user_d")
    await trio.sleep(4 * 3 * P)
    cluster.check(ROOM)
    # a and b advertise equal clocks and heartbeat within 0.25 s of each other (start jitter),
    # far from d's sampling ticks: d asks one of them, once.
    assert cluster.bus.count(EVENT_TRANSFER_REQ, src="d", since=start) == 1
    synced = trio.current_time()
    await trio.sleep(20 * OPTS["clock_sample_periods"] * P)
    assert cluster.bus.count(EVENT_TRANSFER_REQ, since=synced) == 0
    cluster.check(ROOM)


@pytest.mark.parametrize("seed", range(int(os.environ.get("TRACKER_LOSSY_SEEDS", "3"))))
async def test_lossy_network_converges(
    autojump_clock: MockClock, cluster: Cluster, seed: int
) -> None:
    bus = cluster.bus
    bus.rng.seed(seed)
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"]
    for n in names:
        await cluster.start(n, pool_size=2)
    topics = ["room:1", "room:2", "room:3"]
    bus.loss, bus.dup, bus.delay = 0.3, 0.1, (0.01, 1.5)
    for _ in range(120):
        name, topic = rng.choice(names), rng.choice(topics)
        key, owner = rng.choice(["k1", "k2", "k3"]), rng.choice(["x", "y"])
        tracked = (topic, f"{name}#{owner}", key) in cluster.local[name]
        if not tracked:
            cluster.track(name, topic, key, {"n": rng.random()}, owner=owner)
        elif rng.random() < 0.5:
            cluster.update(name, topic, key, {"n": rng.random()}, owner=owner)
        else:
            cluster.untrack(name, topic, key, owner=owner)
        await trio.sleep(rng.uniform(0, 0.5))
    bus.loss = bus.dup = 0.0
    await trio.sleep(DOWN + 6 * OPTS["clock_sample_periods"] * P)
    assert any(cluster.truth(t) for t in topics)
    for t in topics:
        cluster.check(t)
    for node in cluster.nodes.values():
        assert len(node.tracker.replicas()) == 2 * 3
        assert set(node.tracker.replicas().values()) == {"up"}


# --------------------------------------------------------------------------- configuration


async def test_pool_size_mismatch_is_refused_loudly(
    autojump_clock: MockClock, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="presence.tracker")
    a, b = await cluster.start("a", pool_size=2), await cluster.start("b", pool_size=1)
    topics = [f"room:{i}" for i in range(6)]
    for t in topics:
        cluster.track("a", t, "alice")
        cluster.track("b", t, "bob")
    await trio.sleep(4 * 3 * P)
    for t in topics:
        assert set(a.tracker.list(t)) == {"alice"}
        assert set(b.tracker.list(t)) == {"bob"}
    refusals = [r.getMessage() for r in caplog.records if "pool_size" in r.getMessage()]
    # Once per peer, however many messages were ignored.
    assert len(refusals) == 2, refusals
    assert any("refusing node 'a'" in m and "pool_size is 2" in m for m in refusals)
    assert any("refusing node 'b'" in m and "pool_size is 1" in m for m in refusals)
    assert a.tracker.stats["refused"] > 2 and b.tracker.stats["refused"] > 2
    assert a.tracker.replicas() == {} and b.tracker.replicas() == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"broadcast_period": 1.5, "max_silent_periods": 10, "down_period": 15.0},
            "must exceed the idle heartbeat interval",
        ),
        (
            {"broadcast_period": 1.0, "max_silent_periods": 5, "down_period": 4.0},
            "must exceed the idle heartbeat interval",
        ),
        ({"down_period": 40.0, "permdown_period": 40.0}, "permdown_period"),
        ({"pool_size": 0}, "pool_size"),
        ({"broadcast_period": 0}, "broadcast_period"),
        ({"max_silent_periods": 0}, "max_silent_periods"),
        ({"clock_sample_periods": 0}, "clock_sample_periods"),
        ({"max_delta_sizes": (10, 0)}, "caps"),
    ],
)
async def test_config_validation(options: dict[str, Any], message: str) -> None:
    bus = SimBus.__new__(SimBus)  # no network needed to construct a tracker
    from channels.pubsub import PubSub
    from tests.presence.simbus import SimAdapter

    with pytest.raises(ValueError, match=message):
        Tracker(PubSub(adapter=SimAdapter(bus, "a")), **options)


async def test_config_defaults() -> None:
    from channels.pubsub import PubSub

    t = Tracker(PubSub())
    assert (t.broadcast_period, t.max_silent_periods, t.down_period) == (1.5, 10, 30.0)
    assert (t.permdown_period, t.clock_sample_periods, t.pool_size) == (1200.0, 2, 1)
    assert t.max_delta_sizes == (100, 1000, 10_000) and not t.permdown_on_shutdown
