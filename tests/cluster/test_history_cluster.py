"""History and recovery across real node processes sharing one private redis-server, with the
official phoenix.js client joining through /trio-channels/history.js's ``recoverable()``.

A publisher on node a sends N numbered broadcasts, paced, each after the previous reply, while
K clients are cut off at random (their connection dies: phoenix.js reconnects to the same
node and the helper rejoins from its position) or move to ANOTHER node (a new Socket,
``recoverable(newSocket, topic, params, {position: old.position()})``), while node c is
killed with SIGKILL (its clients move elsewhere), and, in the variants, while Redis restarts
empty (the stream is lost: a new epoch) or with its data (append-only file).

The check (tests/support/history_driver.py ``judge``): every client sees each number at most
once and in increasing order, offsets strictly increasing within an epoch, ends with the last
number, and every number it missed is explained by a failed recovery it was told about
(``onRecovery`` with ``recovered: false`` and a reason). Where nothing was lost (no Redis
restart) every client must have all N. Counts and waits are bounded; nothing asserts timing.
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.cluster.redis_server import RedisServer
from tests.support.history_driver import HistoryDriver, Verdict, history_driver, judge
from tests.support.server import ServerProcess

APP = "tests.support.history_app:make_endpoint"
TOPIC = "feed:cluster"
N = 300
K = 6
INTERVAL_MS = 10


@dataclass
class Cluster:
    redis: RedisServer
    nodes: dict[str, ServerProcess]
    dead: set[str] = field(default_factory=set)

    def url(self, node: str) -> str:
        return f"ws://127.0.0.1:{self.nodes[node].port}/socket"

    def alive(self) -> list[str]:
        return [n for n in self.nodes if n not in self.dead]

    def kill(self, node: str) -> None:
        proc = self.nodes[node].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.dead.add(node)

    def stop_all(self) -> None:
        for name, node in self.nodes.items():
            print(f"--- node-{name} output (tail) ---")  # shown by pytest when a test failed
            print("".join(node.output[-40:]))
            node.kill()
        self.redis.close()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def make(env: dict[str, str] | None = None, names: str = "abc",
             appendonly: bool = False) -> Cluster:
        redis = RedisServer(appendonly=appendonly)
        redis.start()
        nodes = {n: ServerProcess(APP, env=env or {},
                                  args=["--redis-url", redis.url, "--node-name", f"node-{n}",
                                        "--log-level", "WARNING"])
                 for n in names}
        cluster = Cluster(redis, nodes)
        started.append(cluster)
        for node in nodes.values():
            node.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop_all()


@pytest.fixture
def js() -> Iterator[HistoryDriver]:
    with history_driver() as d:
        yield d


# -- the scenario ----------------------------------------------------------------------------

@dataclass
class Chaos:
    """What to do while the publisher runs: ``at`` publisher progress -> action."""

    seed: int
    churn: int = 24          # random blips and moves, at most
    kill_at: int | None = 100  # SIGKILL node c once this many were published
    redis_restart_at: int | None = None
    log: list[str] = field(default_factory=list)


def _setup(cluster: Cluster, js: HistoryDriver) -> dict[str, str]:
    where: dict[str, str] = {}
    js.connect("pub", cluster.url("a"))
    assert js.rjoin("pub", TOPIC)["ev"] == "join_ok"
    for i in range(K):
        cid = f"c{i}"
        node = "abc"[i % 3]
        js.connect(cid, cluster.url(node))
        joined = js.rjoin(cid, TOPIC)
        assert joined["ev"] == "join_ok", joined
        assert joined["resp"]["node"] == f"node-{node}"
        where[cid] = node
    return where


def _run(cluster: Cluster, js: HistoryDriver, chaos: Chaos) -> dict[str, Verdict]:
    """Publish 1..N from node a under ``chaos``; every client's verdict."""
    rng = random.Random(chaos.seed)
    where = _setup(cluster, js)
    clients = sorted(where)
    # Churn at random points between 20 and N - 20, at most one per published message.
    churn_at = sorted(rng.sample(range(20, N - 20), chaos.churn))
    since = js.mark()
    js.send(op="publish", id="pub", first=1, count=N, interval_ms=INTERVAL_MS)
    progress = 0
    cursor = since
    while True:
        event = js.wait(lambda e: e.get("id") == "pub" and e["ev"] in ("published",
                                                                       "publish_done"),
                        60, cursor)
        cursor = next(i for i in range(cursor, len(js.events)) if js.events[i] is event) + 1
        if event["ev"] == "publish_done":
            break
        progress = event["n"]
        if chaos.kill_at is not None and progress >= chaos.kill_at and "c" not in cluster.dead:
            cluster.kill("c")
            chaos.log.append(f"{progress}: kill -9 node c")
            for cid in clients:
                if where[cid] == "c":
                    to = rng.choice(cluster.alive())
                    js.send(op="move", id=cid, url=cluster.url(to))
                    chaos.log.append(f"{progress}: {cid} c -> {to}")
                    where[cid] = to
        if chaos.redis_restart_at is not None and progress >= chaos.redis_restart_at:
            chaos.redis_restart_at = None
            cluster.redis.restart()
            chaos.log.append(f"{progress}: redis restarted")
        while churn_at and churn_at[0] <= progress:
            churn_at.pop(0)
            cid = rng.choice(clients)
            others = [n for n in cluster.alive() if n != where[cid]]
            if rng.random() < 0.5 and others:
                to = rng.choice(others)
                js.send(op="move", id=cid, url=cluster.url(to))
                chaos.log.append(f"{progress}: {cid} {where[cid]} -> {to}")
                where[cid] = to
            else:
                js.send(op="blip", id=cid)
                chaos.log.append(f"{progress}: {cid} blip on {where[cid]}")
    statuses = [e["status"] for e in js.events[since:]
                if e.get("id") == "pub" and e["ev"] == "published"]
    assert statuses == ["ok"] * N, chaos.log
    expected = list(range(1, N + 1))
    verdicts = {}
    for cid in clients:
        try:
            js.wait_received(cid, N, 30)
        except AssertionError:
            pass  # judged below, with everything it saw
        verdicts[cid] = judge(js.events, cid, expected)
    problems = {cid: v.problems for cid, v in verdicts.items() if v.problems}
    if problems:
        _dump(js, chaos)
    assert not problems, (problems, chaos.log)
    return verdicts


def _dump(js: HistoryDriver, chaos: Chaos) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="history-cluster-", suffix=".jsonl",
                                     delete=False) as out:
        out.writelines(json.dumps(e) + "\n" for e in js.events)
    print(f"--- all events: {out.name} ---")
    print("--- chaos ---")
    print("\n".join(chaos.log))
    print("--- client events (not msg) ---")
    for e in js.events:
        if e.get("id", "").startswith("c") and e["ev"] != "msg":
            print(json.dumps(e))


# -- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_churn_moves_and_a_killed_node_lose_nothing(make_cluster, js: HistoryDriver,  # type: ignore[no-untyped-def]
                                                    seed: int) -> None:
    """Nothing is lost from the stream: every client ends with all N, once, in order."""
    cluster = make_cluster()
    chaos = Chaos(seed)
    verdicts = _run(cluster, js, chaos)
    expected = list(range(1, N + 1))
    for cid, verdict in verdicts.items():
        assert verdict.numbers == expected, (cid, verdict.missing[:20], chaos.log)
        assert not verdict.told, (cid, verdict.told)
    stats = _stats(js)
    assert stats["unstored"] == 0 and stats["stored"] == N, stats
    recoveries = [e["info"] for e in js.events if e.get("ev") == "recovery"
                  and e["id"] != "pub"]
    assert sum(1 for i in recoveries if i["recovered"]) >= chaos.churn // 2
    assert any(i["replayed"] > 0 for i in recoveries)


def _stats(js: HistoryDriver) -> dict[str, int]:
    """Node a's history counters (the publisher's node)."""
    reply = js.push("pub", TOPIC, "stats")
    assert reply["status"] == "ok" and reply["resp"]["node"] == "node-a", reply
    return reply["resp"]["history"]  # type: ignore[no-any-return]


def _final_epoch(js: HistoryDriver, verdicts: dict[str, Verdict]) -> str:
    """The epoch every client ends on (they all end on the same stream)."""
    epochs = {[e for e in js.events if e.get("id") == cid and e["ev"] == "msg"][-1]["pos"]["epoch"]
              for cid in verdicts}
    assert len(epochs) == 1, epochs
    return epochs.pop()  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", [3, 5])
def test_redis_restart_empty_clients_are_told(make_cluster, js: HistoryDriver,  # type: ignore[no-untyped-def]
                                              seed: int) -> None:
    """Redis comes back empty mid-run: the stream is lost. Every client either has all N or
    was told (a rejoin answered ``epoch changed`` / ``history unavailable``, or the helper
    saw the epoch change on a live broadcast), with no duplicates and order kept within each
    epoch; everyone ends on the same new stream."""
    cluster = make_cluster()
    chaos = Chaos(seed, redis_restart_at=170)
    verdicts = _run(cluster, js, chaos)
    first_epoch = js.events[next(i for i, e in enumerate(js.events) if e["ev"] == "msg")]
    assert _final_epoch(js, verdicts) != first_epoch["pos"]["epoch"]
    for cid, verdict in verdicts.items():
        # The stream was lost under every client: each learnt it, one way or the other.
        assert any(t["reason"] in ("epoch changed", "history unavailable")
                   for t in verdict.told), (cid, verdict.told)
    assert _stats(js)["stored"] > 0


def test_redis_restart_with_its_data(make_cluster, js: HistoryDriver) -> None:  # type: ignore[no-untyped-def]
    """Redis stops and comes back with its append-only file. Broadcasts sent while it was
    away could not be stored (delivered without a position, on node a only): the topic then
    starts a new epoch, so clients that missed them are told, never left with a silent hole.
    """
    cluster = make_cluster(appendonly=True)
    chaos = Chaos(4, redis_restart_at=150)
    verdicts = _run(cluster, js, chaos)
    stats = _stats(js)
    assert stats["unstored"] > 0, stats
    first_epoch = js.events[next(i for i, e in enumerate(js.events) if e["ev"] == "msg")]
    assert _final_epoch(js, verdicts) != first_epoch["pos"]["epoch"]
    for cid, verdict in verdicts.items():
        if verdict.missing:
            assert verdict.told, cid


def test_recent_past_and_retention_with_a_trimmed_stream(make_cluster,  # type: ignore[no-untyped-def]
                                                          js: HistoryDriver) -> None:
    """A small history (size 10) after 300 broadcasts: Redis trims the stream approximately
    (it may keep more than 10), yet a first join asking for the newest 5 gets exactly the
    newest 5, and positions older than the size are refused, on either node."""
    cluster = make_cluster({"TEST_HISTORY_SIZE": "10"}, names="ab")
    js.connect("pub", cluster.url("a"))
    assert js.rjoin("pub", TOPIC)["ev"] == "join_ok"
    since = js.mark()
    js.send(op="publish", id="pub", first=1, count=N, interval_ms=0)
    js.wait(lambda e: e.get("id") == "pub" and e["ev"] == "publish_done", 60, since)
    epoch = js.position("pub")["epoch"]  # type: ignore[index]
    kept = cluster.redis.command("XLEN", f"trio_channels:hist:{TOPIC}")
    assert isinstance(kept, int) and kept > 10  # trimmed approximately: more than size kept
    for node in "ab":
        late = f"late-{node}"
        js.connect(late, cluster.url(node))
        info = js.rjoin(late, TOPIC, initial=5)["resp"]["phx_recovery"]
        assert info == {"recovered": False, "epoch": epoch, "offset": N, "replayed": 5}, info
        js.connect(f"near-{node}", cluster.url(node))
        info = js.rjoin(f"near-{node}", TOPIC, position={"epoch": epoch, "offset": N - 4})[
            "resp"]["phx_recovery"]
        assert info == {"recovered": True, "epoch": epoch, "offset": N, "replayed": 4}, info
        js.connect(f"far-{node}", cluster.url(node))
        info = js.rjoin(f"far-{node}", TOPIC, position={"epoch": epoch, "offset": N - 50})[
            "resp"]["phx_recovery"]
        assert info["recovered"] is False, info
        assert info["reason"] == "position older than the history", info
    js.wait_received("late-b", N)
    js.wait_received("near-b", N)
    for node in "ab":
        assert js.received(f"late-{node}") == list(range(N - 4, N + 1))
        assert js.received(f"near-{node}") == list(range(N - 3, N + 1))
        assert js.received(f"far-{node}") == []
