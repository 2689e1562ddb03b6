"""Rooms across real node processes sharing one private redis-server, driven by phoenix.js.

Each node is a ``trio-channels serve tests.support.rooms_app:make_endpoint`` process with its
own node name. Clients call rooms through a channel (``call``/``stats`` pushes) and record the
``tick`` broadcasts of Ticker rooms, which carry the activation's fencing token and node.
Covered: supervision (crash -> restart from snapshot; too many -> RoomGaveUp), one activation
for 100 concurrent first calls from 3 nodes, takeover after kill -9, fencing after SIGSTOP /
SIGCONT of the owner, handoff on drain, idle deactivation, a Redis restart, and bad input.

Every wait below is a bounded wait for a condition (never a timing assertion).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.redis_server import RedisServer
from tests.support.driver import Driver, Event, driver
from tests.support.server import ServerProcess

APP = "tests.support.rooms_app:make_endpoint"
LEASE = 2.0
BASE_ENV = {"TEST_ROOM_LEASE": str(LEASE), "TEST_ROOM_IDLE": "1.0", "TEST_TICK_PERIOD": "0.1"}
CALLS = "rooms:calls"
NS = "trio_channels"


@dataclass
class Cluster:
    redis: RedisServer
    nodes: dict[str, ServerProcess]

    def url(self, node: str) -> str:
        return f"ws://127.0.0.1:{self.nodes[node].port}/socket"

    def pid(self, node: str) -> int:
        proc = self.nodes[node].proc
        assert proc is not None
        return proc.pid

    def stop_all(self) -> None:
        for name, node in self.nodes.items():
            # Shown by pytest when the test failed.
            print(f"--- node-{name} output (tail) ---")
            print("".join(node.output[-40:]))
            if node.proc is not None and node.proc.poll() is None:
                try:
                    os.kill(node.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            node.kill()
        self.redis.close()


def _start_cluster(env: dict[str, str], names: str = "abc",
                   node_env: dict[str, dict[str, str]] | None = None) -> Cluster:
    redis = RedisServer()
    redis.start()
    nodes = {n: ServerProcess(APP, env={**env, **(node_env or {}).get(n, {})},
                              args=["--redis-url", redis.url, "--node-name", f"node-{n}",
                                    "--log-level", "WARNING"])
             for n in names}
    cluster = Cluster(redis, nodes)
    try:
        for node in nodes.values():
            node.start()
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@pytest.fixture(scope="module")
def shared() -> Iterator[Cluster]:
    """Three nodes for the tests that kill nothing; b and c know the Extra room class."""
    extra = {"TEST_EXTRA_ROOMS": "1"}
    cluster = _start_cluster(BASE_ENV, node_env={"b": extra, "c": extra})
    yield cluster
    cluster.stop_all()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def make(env: dict[str, str] = BASE_ENV, names: str = "abc") -> Cluster:
        cluster = _start_cluster(env, names)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop_all()


@pytest.fixture
def js() -> Iterator[Driver]:
    with driver() as d:
        yield d


# -- helpers ---------------------------------------------------------------------------------

def _connect(js: Driver, cluster: Cluster, cid: str, node: str,
             topics: tuple[str, ...] = (CALLS,)) -> None:
    js.connect(cid, cluster.url(node))
    for topic in topics:
        joined = js.join(cid, topic)
        assert joined["ev"] == "join_ok", joined
        assert joined["resp"]["node"] == f"node-{node}"


def _call(js: Driver, cid: str, room: str, key: str, msg: dict[str, Any] | None = None,
          timeout: float = 5.0, event: str = "call") -> Event:
    """A ``call`` push; the reply event (status ok with ``resp.reply``, or error)."""
    return js.push(cid, CALLS, event, {"room": room, "key": key, "msg": msg or {},
                                       "timeout": timeout}, timeout=timeout + 10)


def _ok(event: Event) -> dict[str, Any]:
    assert event["status"] == "ok", event
    return event["resp"]["reply"]  # type: ignore[no-any-return]


def _error(event: Event, kind: str) -> str:
    assert event["status"] == "error", event
    assert event["resp"]["error"] == kind, event
    return event["resp"]["message"]  # type: ignore[no-any-return]


def _stats(js: Driver, cid: str, room: str | None = None, key: str | None = None) -> dict[str, Any]:
    payload = {"room": room, "key": key} if room is not None else {}
    event = js.push(cid, CALLS, "stats", payload)
    assert event["status"] == "ok", event
    return event["resp"]  # type: ignore[no-any-return]


def _until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ticks(js: Driver, key: str, cid: str | None = None, since: int = 0) -> list[dict[str, Any]]:
    js.mark()
    return [e["payload"] for e in js.events[since:]
            if e.get("ev") == "message" and e.get("event") == "tick"
            and e.get("topic") == f"ticks:{key}" and (cid is None or e.get("id") == cid)]


def _wait_tick(js: Driver, key: str, pred: Callable[[dict[str, Any]], bool], cid: str | None,
               timeout: float, since: int = 0) -> dict[str, Any]:
    event = js.wait(lambda e: e.get("ev") == "message" and e.get("event") == "tick"
                    and e.get("topic") == f"ticks:{key}" and (cid is None or e.get("id") == cid)
                    and pred(e["payload"]), timeout, since)
    return event["payload"]  # type: ignore[no-any-return]


def _assert_fenced(ticks: list[dict[str, Any]], who: str) -> None:
    """Once a client saw a token, it never sees a smaller one, and counts never go back
    within one token."""
    highest = 0
    last_n: dict[int, int] = {}
    for tick in ticks:
        assert tick["token"] >= highest, f"{who}: tick from an old owner after a newer one: {ticks}"
        highest = tick["token"]
        assert tick["n"] > last_n.get(tick["token"], -1), f"{who}: ticks out of order: {ticks}"
        last_n[tick["token"]] = tick["n"]


# -- supervision -----------------------------------------------------------------------------

def test_crash_restarts_from_snapshot_then_gives_up_others_keep_working(
        shared: Cluster, js: Driver) -> None:
    _connect(js, shared, "a", "a")
    _connect(js, shared, "b", "b")
    key = _key("sup")
    first = _ok(_call(js, "a", "Crasher", key, {"op": "add", "n": 5, "save": True}))
    assert first["node"] == "node-a" and first["count"] == 5 and first["saved"] is True
    token = first["token"]
    assert _ok(_call(js, "a", "Crasher", key, {"op": "add", "n": 2}))["count"] == 7  # not saved

    # Crash 1 (local caller): the caller gets RoomCrashed; the room restarts from the snapshot.
    assert "crashes on demand" in _error(_call(js, "a", "Crasher", key, {"op": "crash"}),
                                         "RoomCrashed")
    after = _ok(_call(js, "a", "Crasher", key))
    assert after == {**after, "node": "node-a", "token": token, "count": 5,
                     "restored": {"count": 5}}

    # Crash 2 from another node: the error crosses nodes with its kind.
    _error(_call(js, "b", "Crasher", key, {"op": "crash"}), "RoomCrashed")
    assert _ok(_call(js, "b", "Crasher", key))["count"] == 5

    # Crash 3 within restart_period: past max_restarts (2), the room gives up.
    _error(_call(js, "a", "Crasher", key, {"op": "crash"}), "RoomCrashed")
    for cid in ("a", "b"):
        message = _error(_call(js, cid, "Crasher", key), "RoomGaveUp")
        assert "gave up" in message and f"Crasher:{key}" in message

    # Other rooms on node a, of this class and another, are unaffected.
    other = _ok(_call(js, "a", "Crasher", _key("sup-other"), {"op": "add", "n": 1}))
    assert other["node"] == "node-a" and other["count"] == 1
    counter = _ok(_call(js, "a", "Counter", _key("sup-counter"), {"op": "add", "n": 3}))
    assert counter["node"] == "node-a" and counter["count"] == 3
    stats = _stats(js, "a")
    assert stats["gave_up"] >= 1 and stats["crashes"] >= 3


# -- placement -------------------------------------------------------------------------------

def test_100_concurrent_first_calls_from_3_nodes_start_one_activation(
        shared: Cluster, js: Driver) -> None:
    nodes = "abc"
    for node in nodes:
        _connect(js, shared, node, node)
    before = sum(_stats(js, node)["activations"] for node in nodes)
    # One channel per call: a channel handles one push at a time, so 100 channels let the
    # 100 calls run concurrently (34 + 33 + 33 over the three nodes).
    topics = [f"rooms:burst-{i}" for i in range(100)]
    for i, topic in enumerate(topics):
        joined = js.join(nodes[i % 3], topic)
        assert joined["ev"] == "join_ok", joined
    key = _key("hot")
    since = js.mark()
    for i, topic in enumerate(topics):
        js.send(op="push", id=nodes[i % 3], topic=topic, event="call", tag=f"burst-{i}",
                payload={"room": "Counter", "key": key, "msg": {"op": "add", "n": 1},
                         "timeout": 10})
    replies = [js.wait(lambda e, tag=f"burst-{i}": e.get("ev") == "reply"  # type: ignore[misc]
                       and e.get("tag") == tag, 30, since)
               for i in range(100)]
    results = [_ok(reply) for reply in replies]
    owners = {(r["node"], r["token"]) for r in results}
    assert len(owners) == 1, owners
    assert sorted(r["count"] for r in results) == list(range(1, 101))
    assert {reply["resp"]["via"] for reply in replies} == {"node-a", "node-b", "node-c"}
    after = sum(_stats(js, node)["activations"] for node in nodes)
    assert after - before == 1
    active = [_stats(js, node, "Counter", key)["is_active"] for node in nodes]
    assert active.count(True) == 1


# -- takeover --------------------------------------------------------------------------------

def _ticker_on_a(js: Driver, cluster: Cluster, key: str) -> dict[str, Any]:
    """Clients on every node record the ticks of ``key``; a activates it, b and c call it
    (so they re-activate it if its owner vanishes). Returns a's first reply."""
    for node in cluster.nodes:
        _connect(js, cluster, node, node, (CALLS, f"ticks:{key}"))
    first = _ok(_call(js, "a", "Ticker", key))
    assert first["node"] == "node-a"
    for cid in ("b", "c"):
        assert _ok(_call(js, cid, "Ticker", key))["token"] == first["token"]
    for cid in cluster.nodes:
        _wait_tick(js, key, lambda t: t["token"] == first["token"], cid, 10)
    return first


def test_kill_9_owner_another_node_takes_over_from_snapshot(
        make_cluster: Callable[..., Cluster], js: Driver) -> None:
    cluster = make_cluster()
    key = _key("k9")
    first = _ticker_on_a(js, cluster, key)
    old = first["token"]
    saved = _ok(_call(js, "a", "Ticker", key, {"op": "save"}))
    assert saved["saved"] is True

    since = js.mark()
    os.kill(cluster.pid("a"), signal.SIGKILL)
    # b and c used the room: one of them re-activates it once the lease lapses (lease plus a
    # bounded delay; the bound is generous for a loaded machine).
    new_tick = _wait_tick(js, key, lambda t: t["token"] != old, None, LEASE + 15, since)
    new = new_tick["token"]
    assert new > old
    assert new_tick["node"] in ("node-b", "node-c")
    # Asked on the new owner's node: a node that still routes to the dead owner (until its
    # next check of the lease) would only get a RoomTimeout, as documented.
    info = _ok(_call(js, new_tick["node"][-1], "Ticker", key))
    assert info["node"] == new_tick["node"] and info["token"] == new
    assert info["restored"] is not None and info["restored"]["n"] >= saved["n"]
    # Ticks continue from the new owner, on both surviving nodes, counting on from the snapshot.
    for cid in ("b", "c"):
        _wait_tick(js, key, lambda t: t["token"] == new and t["n"] > info["n"] + 2, cid, 10,
                   since)
        _assert_fenced(_ticks(js, key, cid), cid)
    assert next(t["n"] for t in _ticks(js, key, "b", since) if t["token"] == new) > saved["n"]
    owners = [_stats(js, cid, "Ticker", key)["is_active"] for cid in ("b", "c")]
    assert owners.count(True) == 1


def test_sigstop_owner_past_lease_old_ticks_never_follow_new_ones(
        make_cluster: Callable[..., Cluster], js: Driver) -> None:
    cluster = make_cluster()
    key = _key("stop")
    old = _ticker_on_a(js, cluster, key)["token"]
    # A second room on a that no other node uses: nobody takes it over.
    lonely = _key("lonely")
    assert _ok(_call(js, "a", "Counter", lonely, {"op": "add", "n": 1}))["node"] == "node-a"
    lonely_owner = f"{NS}:room:Counter:{lonely}:owner"
    pid = cluster.pid("a")
    since = js.mark()
    os.kill(pid, signal.SIGSTOP)
    try:
        new_tick = _wait_tick(js, key, lambda t: t["token"] != old, None, LEASE + 15, since)
        _until(lambda: cluster.redis.command("GET", lonely_owner) is None, LEASE + 15,
               "the lonely room's lease to lapse")
    finally:
        os.kill(pid, signal.SIGCONT)
    new = new_tick["token"]
    assert new > old and new_tick["node"] in ("node-b", "node-c")

    # The old owner wakes up: it must notice it lost both rooms, and must not renew (re-grant)
    # the leases that lapsed meanwhile. A fresh client on it sees only the new owner's ticks.
    _connect(js, cluster, "a2", "a", (CALLS, f"ticks:{key}"))
    _until(lambda: _stats(js, "a2")["lost"] >= 2, 15, "node a to drop its stale activations")
    assert _stats(js, "a2", "Ticker", key)["is_active"] is False
    assert _stats(js, "a2", "Counter", lonely)["is_active"] is False
    assert cluster.redis.command("GET", lonely_owner) is None
    fresh = _ok(_call(js, "b", "Counter", lonely))
    assert fresh["node"] == "node-b" and fresh["count"] == 0  # it was never saved
    # Let every client (the old client on a reconnects and rejoins) see several more ticks.
    mark = js.mark()
    for cid in ("a", "b", "c", "a2"):
        _wait_tick(js, key, lambda t: t["token"] == new, cid, 20, mark)
        latest = _ticks(js, key, cid)[-1]["n"]
        _wait_tick(js, key, lambda t, n=latest: t["token"] == new and t["n"] >= n + 3,  # type: ignore[misc]
                   cid, 10, mark)
    for cid in ("a", "b", "c", "a2"):
        _assert_fenced(_ticks(js, key, cid), cid)
    assert {t["token"] for t in _ticks(js, key, "a2")} == {new}
    owners = [_stats(js, cid, "Ticker", key)["is_active"] for cid in ("a2", "b", "c")]
    assert owners.count(True) == 1
    got = cluster.redis.command("GET", f"{NS}:room:Ticker:{key}:owner")
    assert isinstance(got, bytes) and got.decode().endswith(f"|{new}")
    assert got.decode().startswith(new_tick["node"] + "/")


# -- handoff and idle ------------------------------------------------------------------------

def test_drain_hands_the_room_off_without_waiting_for_the_lease(
        make_cluster: Callable[..., Cluster], js: Driver) -> None:
    long_lease = 30.0
    cluster = make_cluster({**BASE_ENV, "TEST_ROOM_LEASE": str(long_lease)})
    for node in cluster.nodes:
        _connect(js, cluster, node, node)
    key = _key("drain")
    first = _ok(_call(js, "a", "Counter", key, {"op": "add", "n": 4}))
    assert first["node"] == "node-a"
    # b knows the owner (it called it); the last change is not in any stored snapshot yet.
    assert _ok(_call(js, "b", "Counter", key, {"op": "add", "n": 3}))["count"] == 7

    assert cluster.nodes["a"].stop() == 0  # SIGTERM: drain, hand off, exit
    started = time.monotonic()
    # The next call (from b, which last saw a as the owner) activates the room from the
    # handoff snapshot. A correctness bound well under the 30 s lease, not a timing check.
    moved = _ok(_call(js, "b", "Counter", key, timeout=10))
    assert time.monotonic() - started < long_lease / 2
    assert moved["node"] == "node-b" and moved["token"] > first["token"]
    assert moved["count"] == 7 and moved["restored"] == {"count": 7}
    again = _ok(_call(js, "c", "Counter", key, {"op": "add", "n": 1}, timeout=10))
    assert again["node"] == "node-b" and again["count"] == 8


def test_idle_room_deactivates_then_reactivates_from_its_snapshot(
        shared: Cluster, js: Driver) -> None:
    _connect(js, shared, "a", "a")
    _connect(js, shared, "b", "b")
    key = _key("idle")
    first = _ok(_call(js, "a", "Idler", key, {"op": "add", "n": 3}))
    assert first["node"] == "node-a"
    _until(lambda: not _stats(js, "a", "Idler", key)["is_active"], 15,
           "the idle room to deactivate")
    assert [f"Idler:{key}", "idle"] in _stats(js, "a")["terminated"]
    assert shared.redis.command("GET", f"{NS}:room:Idler:{key}:owner") is None
    again = _ok(_call(js, "b", "Idler", key))
    assert again["node"] == "node-b" and again["token"] > first["token"]
    assert again["count"] == 3 and again["restored"] == {"count": 3}


# -- redis restart ---------------------------------------------------------------------------

def test_redis_restart_room_keeps_one_owner_and_calls_succeed(
        make_cluster: Callable[..., Cluster], js: Driver) -> None:
    cluster = make_cluster()
    nodes = ("a", "b", "c")
    for node in nodes:
        _connect(js, cluster, node, node)
    key = _key("redis")
    owner_key = f"{NS}:room:Counter:{key}:owner"
    first = _ok(_call(js, "a", "Counter", key, {"op": "add", "n": 5, "save": True}))
    for cid in ("b", "c"):
        assert _ok(_call(js, cid, "Counter", key))["token"] == first["token"]
    activations = {cid: _stats(js, cid)["activations"] for cid in nodes}

    cluster.redis.restart()  # comes back empty: leases, epochs and snapshots are gone

    # Someone writes the lease again: the owner at its next renewal. (b and c, which used the
    # room, must not take it from a live owner in the meantime.)
    got = _until(lambda: cluster.redis.command("GET", owner_key), 15,
                 "the room's lease to be in Redis again")
    assert isinstance(got, bytes)
    holder, _, token = got.decode().rpartition("|")

    def answered(cid: str) -> dict[str, Any] | None:
        event = _call(js, cid, "Counter", key, timeout=2)
        return _ok(event) if event["status"] == "ok" else None

    seen = [_until(lambda cid=cid: answered(cid), 30, f"a call from {cid} to succeed")  # type: ignore[misc]
            for cid in nodes]
    for cid in nodes:
        _ok(_call(js, cid, "Counter", key, {"op": "add", "n": 1}))
    final = [_ok(_call(js, cid, "Counter", key)) for cid in nodes]
    owners = {(r["node"], r["token"]) for r in seen + final}
    assert owners == {(holder.rpartition("/")[0], int(token))}, (got, seen, final)
    assert final[0]["count"] == seen[0]["count"] + 3
    active = [_stats(js, cid, "Counter", key)["is_active"] for cid in nodes]
    assert active.count(True) == 1, active
    assert cluster.redis.command("GET", owner_key) == got
    output = "".join(cluster.nodes["a"].output)
    assert "another node took its lease over" not in output, output
    if int(token) == first["token"]:
        # The owner kept the room (it re-granted its lease): its state went on, and no other
        # node activated it.
        assert holder.startswith("node-a/") and seen[0]["count"] == 5
        for cid in ("b", "c"):
            assert _stats(js, cid)["activations"] == activations[cid]
    else:
        # Only if the owner could not renew within its lease (a slow restart) did it stop the
        # room by itself, and another node re-activated it (without a snapshot: Redis lost it).
        assert "its lease could not be renewed in time" in output, output


# -- bad input -------------------------------------------------------------------------------

def test_bad_input_across_nodes_gets_clear_errors(shared: Cluster, js: Driver) -> None:
    _connect(js, shared, "a", "a")
    _connect(js, shared, "b", "b")
    key = _key("bad")
    assert _ok(_call(js, "a", "Counter", key, {"op": "add", "n": 1}))["node"] == "node-a"

    # A message that is not msgpack-able cannot reach a room on another node...
    message = _error(_call(js, "b", "Counter", key, {"op": "tags", "tags": [1, 2]},
                           event="call_with_set"), "NotSerializable")
    assert "cannot cross nodes" in message and f"Counter:{key}" in message
    # ... though a local caller may pass it; the room is fine either way.
    assert _ok(_call(js, "a", "Counter", key, {"op": "tags", "tags": [2, 1]},
                     event="call_with_set"))["tags"] == [1, 2]
    assert _ok(_call(js, "b", "Counter", key))["count"] == 1

    # A room class the app never registered.
    assert "not registered" in _error(_call(js, "b", "Ghost", key), "UnknownRoom")
    # A class this node knows but the owner does not (a mixed-version cluster): the owner
    # says so. node-a (without Extra) is made the owner of an Extra room by hand.
    extra = _key("extra")
    assert shared.redis.command("SET", f"{NS}:room:Extra:{extra}:owner", "node-a/gone|1",
                                "PX", 60_000) == b"OK"
    message = _error(_call(js, "b", "Extra", extra), "UnknownRoom")
    assert "node-a" in message and "not registered" in message


def test_handle_call_that_never_returns_times_out_the_caller_room_keeps_serving(
        shared: Cluster, js: Driver) -> None:
    _connect(js, shared, "a", "a")
    _connect(js, shared, "b", "b")
    key = _key("hang")
    first = _ok(_call(js, "a", "Slow", key, {"op": "add", "n": 1}))
    assert first["node"] == "node-a"
    for cid in ("b", "a"):  # remote, then local
        _error(_call(js, cid, "Slow", key, {"op": "hang"}, timeout=0.5), "RoomTimeout")
        # Slow's handler_timeout (1 s) cancels the hung handler; the room goes on.
        after = _ok(_call(js, cid, "Slow", key, {"op": "add", "n": 1}))
        assert after["node"] == "node-a" and after["token"] == first["token"]
    assert _ok(_call(js, "b", "Slow", key))["count"] == 3
