"""Three node processes sharing one private redis-server, driven by phoenix.js clients.

Broadcasts cross nodes; presence converges; node crashes, clean stops, Redis restarts, a node
cut off from the cluster and a node restarted under its name all heal without ghosts or
duplicates. Timeouts below bound each wait; they are not timing assertions.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.redis_server import RedisServer
from tests.support.driver import Driver, driver
from tests.support.server import ServerProcess

APP = "tests.support.presence_app:make_endpoint"
TOPIC = "room:cluster"
FAST = {"TEST_BROADCAST_PERIOD": "0.05", "TEST_MAX_SILENT_PERIODS": "4",
        "TEST_DOWN_PERIOD": "1.5", "TEST_PERMDOWN_PERIOD": "4"}
# Long liveness periods: a leave seen quickly cannot have come from down detection.
SLOW_DOWN = {**FAST, "TEST_DOWN_PERIOD": "60", "TEST_PERMDOWN_PERIOD": "120"}


@dataclass
class Cluster:
    redis: RedisServer
    nodes: dict[str, ServerProcess]

    def url(self, node: str) -> str:
        return f"ws://127.0.0.1:{self.nodes[node].port}/socket"


@pytest.fixture
def make_cluster() -> Iterator[object]:
    started: list[Cluster] = []

    def make(env: dict[str, str] = FAST, names: str = "abc") -> Cluster:
        redis = RedisServer()
        redis.start()
        nodes = {n: ServerProcess(APP, env=env, args=["--redis-url", redis.url,
                                                      "--node-name", f"node-{n}",
                                                      "--log-level", "WARNING"])
                 for n in names}
        cluster = Cluster(redis, nodes)
        started.append(cluster)
        for node in nodes.values():
            node.start()
        return cluster

    yield make
    for cluster in started:
        for node in cluster.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                try:
                    os.kill(node.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            node.kill()
        cluster.redis.close()


@pytest.fixture
def js() -> Iterator[Driver]:
    with driver() as d:
        yield d


def _everyone_on_each_node(cluster: Cluster, js: Driver, topic: str = TOPIC) -> set[str]:
    users = set()
    for node in cluster.nodes:
        user = f"user-{node}"
        js.connect(user, cluster.url(node))
        assert js.join(user, topic, user=user)["ev"] == "join_ok"
        users.add(user)
    return users


def _converged(js: Driver, users: set[str], expected: set[str], topic: str = TOPIC,
               timeout: float = 15) -> dict[str, list[str]]:
    """Every client in ``users`` sees exactly ``expected``, one presence per key."""
    final = {}
    for user in users:
        final[user] = js.wait_presence(
            user, topic, lambda lst: set(lst) == expected and all(len(r) == 1 for r in
                                                                  lst.values()), timeout)
    lists = list(final.values())
    assert all(lst == lists[0] for lst in lists), final
    return lists[0]


def test_broadcast_from_node_c_reaches_client_on_node_a(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    js.connect("on-a", cluster.url("a"))
    js.connect("on-c", cluster.url("c"))
    js.join("on-a", "room:bc", user="a")
    js.join("on-c", "room:bc", user="c")
    since = js.mark()
    assert js.push("on-c", "room:bc", "shout", {"n": 1})["status"] == "ok"
    js.wait(lambda e: e.get("id") == "on-a" and e["ev"] == "message"
            and e["payload"] == {"n": 1}, 10, since)
    # a second broadcast is the fence: the first came exactly once
    js.push("on-c", "room:bc", "shout", {"n": 2})
    js.wait(lambda e: e.get("id") == "on-a" and e["ev"] == "message"
            and e["payload"] == {"n": 2}, 10, since)
    got = [e["payload"]["n"] for e in js.events[since:]
           if e.get("id") == "on-a" and e["ev"] == "message"]
    assert got == [1, 2]


def test_presence_converges_then_kill_9_leaves_after_down_period(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    users = _everyone_on_each_node(cluster, js)
    _converged(js, users, users)
    cluster.nodes["b"].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    survivors = users - {"user-b"}
    _converged(js, survivors, survivors, timeout=20)


def test_clean_stop_leaves_at_once(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(SLOW_DOWN)
    users = _everyone_on_each_node(cluster, js)
    _converged(js, users, users)
    js.send(op="disconnect", id="user-c")  # the client goes away with its node
    assert cluster.nodes["c"].stop() == 0
    survivors = users - {"user-c"}
    # down_period is 60 s here: leaves within 15 s come from the clean stop itself
    _converged(js, survivors, survivors, timeout=15)


def test_redis_restart_broadcasts_resume_presence_converges(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    users = _everyone_on_each_node(cluster, js)
    _converged(js, users, users)
    cluster.redis.restart()
    # a newcomer after the restart is seen everywhere, and everyone is still there
    js.connect("late", cluster.url("b"))
    js.join("late", TOPIC, user="late")
    everyone = users | {"late"}
    _converged(js, everyone, everyone, timeout=20)
    since = js.mark()
    js.push("user-a", TOPIC, "shout", {"after": "restart"})
    js.wait(lambda e: e.get("id") == "user-c" and e["ev"] == "message"
            and e["payload"] == {"after": "restart"}, 15, since)


def test_node_cut_off_then_back_no_ghosts_no_duplicates(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    users = _everyone_on_each_node(cluster, js)
    _converged(js, users, users)
    pid = cluster.nodes["b"].proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        others = users - {"user-b"}
        _converged(js, others, others, timeout=20)   # b's presence left (down)
    finally:
        os.kill(pid, signal.SIGCONT)
    # b is back: its client (reconnected if its heartbeat lapsed) is present exactly once
    _converged(js, users, users, timeout=20)


def test_restart_under_same_name_purges_old_presences_at_once(make_cluster, js: Driver) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(SLOW_DOWN)
    users = _everyone_on_each_node(cluster, js)
    _converged(js, users, users)
    old_ref = js.presence("user-a", TOPIC)["user-b"]
    js.send(op="disconnect", id="user-b")
    node_b = cluster.nodes["b"]
    node_b.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    node_b.proc.wait(10)  # type: ignore[union-attr]
    node_b.start()  # same name, same port, a new incarnation
    # down_period is 60 s: the old incarnation's presence goes as soon as the new one speaks
    survivors = users - {"user-b"}
    _converged(js, survivors, survivors, timeout=20)
    js.connect("user-b2", cluster.url("b"))
    js.join("user-b2", TOPIC, user="user-b")
    clients = {"user-a", "user-c", "user-b2"}
    final = _converged(js, clients, users, timeout=20)
    assert final["user-b"] != old_ref
