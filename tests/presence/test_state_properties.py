"""Property tests of the presence CRDT: algebra, convergence under a hostile network, and the
known Phoenix.Tracker failure modes (phoenix_pubsub#74, #136, #148).

A reference model records every entry ever created and, per replica incarnation, which dots are
live. After every simulated step the tests check safety, not just final convergence:

* no lost presence: a dot that is live at its owner and covered by an observer's causal
  context is held by that observer (a presence it will never learn about again is a bug);
* no phantom: every held entry is exactly what its owner created under that dot;
* no resurrection: nobody holds an entry once it has seen the dot that removed or replaced it;
* no going back: a row's visible counter never decreases (stale meta never returns, #148);
* reported diffs are exactly the change of the visible set;
* the indexes, clouds and generations are internally consistent.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from presence.state import (
    Delta,
    Diff,
    Dot,
    Entry,
    ReplicaRef,
    Snapshot,
    State,
    clock_from_wire,
    clock_to_wire,
    dominates,
    merge_deltas,
    payload_from_wire,
)

OWNERS: tuple[Any, ...] = (0, ("ch", 1))
ROWS = [(t, o, k) for t in ("t0", "t1") for o in OWNERS for k in ("k0", "k1")]
NAMES = ("n0", "n1", "n2", "n3")

Row = tuple[str, Any, str]
RowId = tuple[ReplicaRef, str, Any, str]


# --------------------------------------------------------------------------- helpers


def rid_of(e: Entry) -> RowId:
    return (e.dot.replica, e.topic, e.owner, e.key)


def visible(s: State) -> dict[Dot, Entry]:
    return {e.dot: e for e in s.online()}


def stored(s: State) -> dict[Dot, Entry]:
    return {e.dot: e for vals in s._values.values() for e in vals.values()}


def canon_entry(e: Entry) -> tuple[Any, ...]:
    return (e.dot, e.topic, repr(e.owner), e.key, json.dumps(e.meta, sort_keys=True))


def canon(s: State) -> tuple[Any, ...]:
    """Everything that defines the CRDT value (generations and pending delta excluded)."""
    return (
        sorted(canon_entry(e) for e in stored(s).values()),
        sorted(s._context.items()),
        sorted((r, sorted((c, repr(row)) for c, row in cl.items())) for r, cl in s._clouds.items()),
        sorted(s._down),
    )


def wire(p: Delta | Snapshot) -> Delta | Snapshot:
    return payload_from_wire(msgpack.unpackb(msgpack.packb(p.to_wire())))


def covered(s: State, d: Dot) -> bool:
    r, c = d
    return r in s._context and (c <= s._context[r] or c in s._clouds.get(r, {}))


def check_range(d: Delta, what: str) -> None:
    assert d.start.keys() == d.end.keys(), what
    assert not (d.values.keys() & d.removed.keys()), what
    for dot, e in d.values.items():
        assert e.dot == dot, what
    for r, s in d.start.items():
        assert s <= d.end[r], what
        for c in range(s + 1, d.end[r] + 1):
            assert Dot(r, c) in d.values or Dot(r, c) in d.removed, (what, r, c)


def check_transfer(q: State, s: State, answer: Delta | Snapshot) -> None:
    """After merging ``s``'s answer, ``q`` is at least at ``s``'s clock wherever it matters.

    Local changes ``s`` has not yet taken (its next heartbeat carries them) are exempt.
    """
    qc = q.clocks()
    for r, n in s.clocks().items():
        if r in qc and r != q.replica:
            want = s._delta.start[r] if r == s.replica else n
            assert qc[r] >= want, (r, qc[r], want, type(answer).__name__)


def check_answer(
    s: State, requester: ReplicaRef, clock: dict[ReplicaRef, int], answer: Delta | Snapshot
) -> None:
    """A transfer answer covers every dot between the request's clock and ours (local changes
    not yet taken excepted) and says nothing about the requester itself."""
    if isinstance(answer, Snapshot):
        assert requester not in answer.context and requester not in answer.values
    else:
        assert requester not in answer.start
        assert all(d.replica != requester for d in [*answer.values, *answer.removed])
    for r, n in s.context.items():
        if r == requester or r not in clock:
            continue
        n = s._delta.start[r] if r == s.replica else n
        if isinstance(answer, Snapshot):
            assert answer.context[r] >= n
        else:
            for c in range(clock[r] + 1, n + 1):
                assert Dot(r, c) in answer.values or Dot(r, c) in answer.removed, (r, c)


def check_structure(s: State) -> None:
    """Internal consistency of every index."""
    me = s.replica
    assert s._context[me] >= 0 and me not in s._down and s._down <= s._context.keys()
    rows: dict[RowId, Entry] = {}
    topics: dict[str, dict[str, dict[Dot, Entry]]] = {}
    owned: dict[Any, dict[tuple[str, str], Entry]] = {}
    for r, vals in s._values.items():
        assert vals and r in s._context
        for c, e in vals.items():
            assert e.dot == Dot(r, c)
            assert covered(s, e.dot), "held but not covered"
            assert rid_of(e) not in rows, "two live dots for one row"
            rows[rid_of(e)] = e
            topics.setdefault(e.topic, {}).setdefault(e.key, {})[e.dot] = e
            if r == me:
                owned.setdefault(e.owner, {})[(e.topic, e.key)] = e
    assert rows == s._rows
    assert topics == s._topics
    assert owned == s._owned
    cloud_rows: dict[RowId, int] = {}
    for r, cloud in s._clouds.items():
        assert cloud and r in s._context and r != me
        assert s._context[r] + 1 not in cloud, "cloud not compacted"
        for c, (t, o, k) in cloud.items():
            assert c > s._context[r]
            rid = (r, t, o, k)
            cloud_rows[rid] = max(cloud_rows.get(rid, 0), c)
    assert cloud_rows == s._cloud_rows
    for i, gen in enumerate(s._gens):
        check_range(gen, f"gen {i}")
        for dot in [*gen.values, *gen.removed]:
            assert dot.replica in s._context, "generation holds an unknown replica"
    check_range(s._delta, "pending delta")
    assert set(s._delta.start) == {me}


# --------------------------------------------------------------------------- cluster simulator


@dataclass
class Node:
    name: str
    state: State
    known: dict[str, ReplicaRef] = field(default_factory=dict)


Msg = tuple[str, str, ReplicaRef, bytes | None]  # kind, destination, sender, payload


class Cluster:
    """Nodes running the tracker's protocol by hand over a bag of in-flight messages."""

    def __init__(self, n: int, caps: tuple[int, ...], seed: int = 0) -> None:
        self.caps = caps
        self.rng = random.Random(seed)  # which message is delivered, dropped or duplicated
        self.nodes = {
            name: Node(name, State(ReplicaRef(name, 1), delta_caps=caps)) for name in NAMES[:n]
        }
        self.bag: list[Msg] = []
        self.blocked: set[frozenset[str]] = set()
        self.history: dict[Dot, Entry] = {}
        # Live dots per incarnation; a dead incarnation's set is frozen at its death.
        self.live: dict[ReplicaRef, dict[Dot, Entry]] = {
            n.state.replica: {} for n in self.nodes.values()
        }
        self.model: dict[ReplicaRef, dict[Row, dict[str, Any]]] = {r: {} for r in self.live}
        # Highest counter ever visible per node and row.
        self.high: dict[tuple[str, RowId], int] = {}
        self.killer: dict[Dot, Dot] = {}  # removed or replaced dot -> the dot that did it

    # ---- plumbing

    def send(self, kind: str, dest: str, sender: ReplicaRef, payload: bytes | None) -> None:
        if frozenset((dest, sender.node)) not in self.blocked:
            self.bag.append((kind, dest, sender, payload))

    def apply(self, node: Node, fn: Callable[[], Diff]) -> Diff:
        """Run a state call and check the diff it reports against the visible set."""
        before = visible(node.state)
        hidden = len(node.state) - len(before)
        diff = fn()
        after = visible(node.state)
        if len(node.state) - len(after) > hidden:
            event("hidden entries arrived or were hidden")
        assert {e.dot for e in diff.joins} == after.keys() - before.keys()
        assert {e.dot for e in diff.leaves} == before.keys() - after.keys()
        assert all(after[e.dot] == e for e in diff.joins)
        assert all(before[e.dot] == e for e in diff.leaves)
        return diff

    def hear(self, node: Node, sender: ReplicaRef) -> None:
        """Liveness as the tracker does it on a heartbeat."""
        if sender.node == node.name:
            return
        s = node.state
        known = node.known.get(sender.node)
        if known is None:
            node.known[sender.node] = sender
            self.apply(node, lambda: s.replica_restarted(sender))
        elif sender.vsn > known.vsn:
            node.known[sender.node] = sender
            self.apply(node, lambda: s.replica_restarted(sender))
        elif sender == known and s.replicas()[sender] == "down":
            self.apply(node, lambda: Diff(s.replica_up(sender), []))

    def process(self, msg: Msg) -> None:
        kind, dest, sender, payload = msg
        event(f"delivered {kind}")
        node = self.nodes[dest]
        if kind == "hb":
            self.hear(node, sender)
            assert payload is not None
            hb = msgpack.unpackb(payload)
            if hb["delta"] is not None:
                p = payload_from_wire(hb["delta"])
                self.apply(node, lambda: node.state.merge(p))
            # Clock sampling, simplified: ask the sender when it has seen more than we have.
            theirs = clock_from_wire(hb["clock"])
            ours = node.state.clocks()
            if not dominates(ours, {r: n for r, n in theirs.items() if r in ours}):
                self.sync(node.name, sender.node)
        elif kind == "req":
            assert payload is not None
            clock = clock_from_wire(msgpack.unpackb(payload))
            answer = node.state.transfer_for(sender, clock)
            check_answer(node.state, sender, clock, answer)
            kind = (
                "empty Delta" if isinstance(answer, Delta) and not answer else type(answer).__name__
            )
            event(f"transfer answered with {kind}")
            self.send("ack", sender.node, node.state.replica, msgpack.packb(answer.to_wire()))
        else:
            assert payload is not None
            p = payload_from_wire(msgpack.unpackb(payload))
            self.apply(node, lambda: node.state.merge(p))

    # ---- actions

    def op(self, name: str, row_i: int, kind: int, value: int) -> None:
        node = self.nodes[name]
        s = node.state
        topic, owner, key = ROWS[row_i]
        live, model = self.live[s.replica], self.model[s.replica]
        meta = {"v": value, "n": len(self.history)}
        old = s.lookup(owner, topic, key)
        if old is None:
            diff = self.apply(node, lambda: s.join(owner, topic, key, meta))
            assert not diff.leaves and [e.meta for e in diff.joins] == [meta]
            model[(topic, owner, key)] = meta
        elif kind == 0:
            diff = self.apply(node, lambda: s.leave(owner, topic, key))
            assert diff.leaves == [old] and not diff.joins
            del model[(topic, owner, key)]
            self.killer[old.dot] = Dot(s.replica, s.context[s.replica])
        else:
            diff = self.apply(node, lambda: s.update(owner, topic, key, meta))
            assert diff.leaves == [old] and [e.meta for e in diff.joins] == [meta]
            model[(topic, owner, key)] = meta
            self.killer[old.dot] = diff.joins[0].dot
        self._record(live, diff)

    def leave_owner(self, name: str, owner_i: int) -> None:
        s = self.nodes[name].state
        owner = OWNERS[owner_i]
        expected = {e.dot for e in s.get_by_owner(owner)}
        before = s.context[s.replica]
        diff = self.apply(self.nodes[name], lambda: s.leave_owner(owner))
        assert {e.dot for e in diff.leaves} == expected and not s.get_by_owner(owner)
        assert s.context[s.replica] == before + len(expected)
        # leave_owner removes in index order, one removal dot each.
        for n, e in enumerate(diff.leaves, start=before + 1):
            self.killer[e.dot] = Dot(s.replica, n)
        model = self.model[s.replica]
        for row in [row for row in model if row[1] == owner]:
            del model[row]
        self._record(self.live[s.replica], diff)

    def _record(self, live: dict[Dot, Entry], diff: Diff) -> None:
        for e in diff.leaves:
            del live[e.dot]
        for e in diff.joins:
            assert e.dot not in self.history
            self.history[e.dot] = e
            live[e.dot] = e

    def tick(self, name: str) -> None:
        node = self.nodes[name]
        delta = node.state.take_delta()
        assert not node.state.has_delta
        payload = msgpack.packb(
            {
                "delta": None if delta is None else delta.to_wire(),
                "clock": clock_to_wire(node.state.clocks()),
            }
        )
        for dest in self.nodes:
            if dest != name:
                self.send("hb", dest, node.state.replica, payload)

    def sync(self, q: str, s: str) -> None:
        if q != s:
            state = self.nodes[q].state
            self.send("req", s, state.replica, msgpack.packb(clock_to_wire(state.clocks())))

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        old = node.state.replica
        new = ReplicaRef(name, old.vsn + 1)
        node.state = State(new, delta_caps=self.caps)
        node.known = {}
        self.live[new] = {}
        self.model[new] = {}
        for k in [k for k in self.high if k[0] == name]:
            del self.high[k]

    def down(self, obs: str, target: str) -> None:
        node = self.nodes[obs]
        ref = node.known.get(target)
        if ref is not None:
            self.apply(node, lambda: Diff([], node.state.replica_down(ref)))
            assert ref not in node.state.clocks()

    def up(self, obs: str, target: str) -> None:
        node = self.nodes[obs]
        ref = node.known.get(target)
        if ref is not None:
            self.apply(node, lambda: Diff(node.state.replica_up(ref), []))

    def permdown(self, obs: str, target: str) -> None:
        node = self.nodes[obs]
        ref = node.known.pop(target, None)
        if ref is None:
            return
        self.apply(node, lambda: Diff([], node.state.remove_down_replica(ref)))
        s = node.state
        assert ref not in s._context and ref not in s._clouds and ref not in s.replicas()
        assert all(e.dot.replica != ref for e in stored(s).values())
        assert all(rid[0] != ref for rid in s._cloud_rows)
        # Forgetting a replica legitimately forgets how far its rows had got.
        for k in [k for k in self.high if k[0] == obs and k[1][0] == ref]:
            del self.high[k]

    def run(self, action: tuple[Any, ...]) -> None:
        kind, *args = action
        names = list(self.nodes)

        def nm(i: int) -> str:
            return names[i % len(names)]

        if kind == "op":
            self.op(nm(args[0]), *args[1:])
        elif kind == "leave_owner":
            self.leave_owner(nm(args[0]), args[1])
        elif kind == "tick":
            self.tick(nm(args[0]))
        elif kind == "sync":
            self.sync(nm(args[0]), nm(args[1]))
        elif kind in ("deliver", "dup", "drop") and self.bag:
            i = self.rng.randrange(len(self.bag))
            msg = self.bag[i] if kind == "dup" else self.bag.pop(i)
            if kind != "drop":
                self.process(msg)
        elif kind == "flush":
            batch, self.bag = self.bag, []
            self.rng.shuffle(batch)
            for msg in batch:
                if self.rng.random() >= 0.25:
                    self.process(msg)
                    self.check()
        elif kind == "partition" and nm(args[0]) != nm(args[1]):
            self.blocked ^= {frozenset((nm(args[0]), nm(args[1])))}
        elif kind == "restart":
            self.restart(nm(args[0]))
        elif kind == "down" and nm(args[0]) != nm(args[1]):
            self.down(nm(args[0]), nm(args[1]))
        elif kind == "up" and nm(args[0]) != nm(args[1]):
            self.up(nm(args[0]), nm(args[1]))
        elif kind == "permdown" and nm(args[0]) != nm(args[1]):
            self.permdown(nm(args[0]), nm(args[1]))

    # ---- checks

    def check(self) -> None:
        nodes = list(self.nodes.values())
        # transfer_for is pure: probe every pair, not just the requests that happen to be made.
        for q in nodes:
            for src in nodes:
                if q is not src:
                    clock = q.state.clocks()
                    check_answer(
                        src.state,
                        q.state.replica,
                        clock,
                        src.state.transfer_for(q.state.replica, clock),
                    )
        for node in nodes:
            s = node.state
            check_structure(s)
            held = stored(s)
            for dot, e in held.items():
                assert self.history[dot] == e, "phantom entry"
                k = self.killer.get(dot)
                assert k is None or not covered(s, k), f"{node.name} holds {dot} after seeing {k}"
            for r in s._context:
                for dot in self.live.get(r, {}):
                    if covered(s, dot):
                        assert dot in held, f"{node.name} covers live {dot} but lost it"
            for e in s.online():
                seen = (node.name, rid_of(e))
                assert e.dot.counter >= self.high.get(seen, 0), f"{node.name}: stale meta came back"
                self.high[seen] = e.dot.counter

    def settle(self, rng: random.Random) -> None:
        """Heal, flush every in-flight message (stale ones included), then run heartbeats and
        clock-driven transfers until nothing changes."""
        self.blocked.clear()
        rng.shuffle(self.bag)
        while self.bag:
            self.process(self.bag.pop(rng.randrange(len(self.bag))))
            self.check()
        nodes = list(self.nodes.values())
        for node in nodes:
            for other in nodes:
                self.hear(node, other.state.replica)
        self.check()
        for _ in range(4):
            before = [canon(n.state) for n in nodes]
            for node in nodes:
                self.tick(node.name)
            while self.bag:
                self.process(self.bag.pop(0))
            for q in nodes:
                for s in nodes:
                    if q is not s and not dominates(q.state.clocks(), s.state.clocks()):
                        answer = s.state.transfer_for(q.state.replica, q.state.clocks())
                        check_answer(s.state, q.state.replica, q.state.clocks(), answer)
                        self.apply(q, partial(q.state.merge, wire(answer)))
                        check_transfer(q.state, s.state, answer)
                        self.check()
            if [canon(n.state) for n in nodes] == before:
                break
        self.check()

    def assert_converged(self) -> None:
        nodes = list(self.nodes.values())
        current = {n.state.replica for n in nodes}
        expected = sorted(canon_entry(e) for r in current for e in self.live[r].values())
        for node in nodes:
            s = node.state
            assert sorted(canon_entry(e) for e in s.online()) == expected, node.name
            assert len(s) == len(expected), "hidden leftovers"
            assert set(s.context) == current, "context must hold exactly the live incarnations"
            assert s.clocks() == nodes[0].state.clocks()
            assert not s._clouds and not s._cloud_rows, "clouds must compact once gaps fill"
            # The model's metas agree with what everyone shows.
            for r in current:
                for (t, o, k), meta in self.model[r].items():
                    assert [
                        e.meta for e in s.get_by_key(t, k) if e.owner == o and e.dot.replica == r
                    ] == [meta]


# --------------------------------------------------------------------------- strategies

i4 = st.integers(0, 3)
OP = st.tuples(
    st.just("op"), i4, st.integers(0, len(ROWS) - 1), st.integers(0, 2), st.integers(0, 9)
)
ACTIONS = st.one_of(
    OP,
    OP,
    OP,
    st.tuples(st.just("leave_owner"), i4, st.integers(0, len(OWNERS) - 1)),
    st.tuples(st.just("tick"), i4),
    st.tuples(st.just("tick"), i4),
    st.tuples(st.just("tick"), i4),
    st.tuples(st.just("flush")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("dup")),
    st.tuples(st.just("drop")),
    st.tuples(st.just("sync"), i4, i4),
    st.tuples(st.just("partition"), i4, i4),
    st.tuples(st.just("restart"), i4),
    st.tuples(st.just("down"), i4, i4),
    st.tuples(st.just("up"), i4, i4),
    st.tuples(st.just("permdown"), i4, i4),
)
# No generations, tiny ones (often too small: full state) or small ones.
CAPS = st.one_of(
    st.just(()),
    st.lists(st.integers(1, 3), min_size=1, max_size=2),
    st.lists(st.integers(1, 12), min_size=1, max_size=3),
).map(lambda xs: tuple(sorted(xs)))


def start_cluster(n: int, caps: tuple[int, ...], connected: bool, seed: int = 0) -> Cluster:
    cluster = Cluster(n, caps, seed)
    if connected:
        for node in cluster.nodes.values():
            for other in cluster.nodes.values():
                cluster.hear(node, other.state.replica)
    return cluster


# --------------------------------------------------------------------------- convergence


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 4),
    caps=CAPS,
    connected=st.booleans(),
    actions=st.lists(ACTIONS, min_size=30, max_size=100),
    seed=st.integers(0, 2**32),
)
def test_replicas_converge_under_loss_duplication_reordering_partitions_restarts(
    n: int, caps: tuple[int, ...], connected: bool, actions: list[tuple[Any, ...]], seed: int
) -> None:
    cluster = start_cluster(n, caps, connected, seed)
    for action in actions:
        cluster.run(action)
        cluster.check()
    event(f"{len(cluster.bag)} messages left in flight at heal")
    event(f"restarts: {sum(len(r) for r in cluster.live) and len(cluster.live) - n}")
    cluster.settle(random.Random(seed + 1))
    cluster.assert_converged()


# --------------------------------------------------------------------------- algebra


def three_replicas(
    actions: Iterable[tuple[Any, ...]], caps: tuple[int, ...] = (3, 8)
) -> tuple[Cluster, list[Delta]]:
    """A connected 3-node history with lossy exchanges; also returns every delta produced.

    ``("tick", bits)`` delivers the delta to the nodes picked by ``bits``; ``("sync", q, s)``
    runs a transfer from s to q at once. Every step is checked like in the simulator.
    """
    cluster = start_cluster(3, caps, connected=True)
    nodes = list(cluster.nodes.values())
    deltas: list[Delta] = []
    for action in actions:
        if action[0] == "tick":
            node = nodes[action[1] % 3]
            d = node.state.take_delta()
            if d is not None:
                deltas.append(d)
                for j, other in enumerate(nodes):
                    if other is not node and (action[1] >> (j + 2)) & 1:
                        cluster.apply(other, partial(other.state.merge, d))
        elif action[0] == "sync":
            q, src = nodes[action[1] % 3], nodes[action[2] % 3]
            if q is not src:
                answer = src.state.transfer_for(q.state.replica, q.state.clocks())
                check_answer(src.state, q.state.replica, q.state.clocks(), answer)
                event(f"sync answered with {type(answer).__name__}")
                cluster.apply(q, partial(q.state.merge, wire(answer)))
                check_transfer(q.state, src.state, answer)
        else:
            cluster.run(action)
        cluster.check()
    return cluster, deltas


ALGEBRA_ACTIONS = st.lists(
    st.one_of(
        OP,
        OP,
        OP,
        st.tuples(st.just("leave_owner"), i4, st.integers(0, len(OWNERS) - 1)),
        st.tuples(st.just("tick"), st.integers(0, 63)),
        st.tuples(st.just("tick"), st.integers(0, 63)),
        st.tuples(st.just("sync"), i4, i4),
        st.tuples(st.just("down"), i4, i4),
        st.tuples(st.just("up"), i4, i4),
    ),
    min_size=10,
    max_size=60,
)


def observer(cluster: Cluster) -> State:
    o = State(ReplicaRef("obs", 1), delta_caps=())
    for node in cluster.nodes.values():
        o.replica_up(node.state.replica)
    return o


@settings(max_examples=120, deadline=None)
@given(actions=ALGEBRA_ACTIONS)
def test_merge_is_idempotent(actions: list[tuple[Any, ...]]) -> None:
    cluster, deltas = three_replicas(actions)
    states = [n.state for n in cluster.nodes.values()]
    for x in states:
        for y in states:
            if x is y:
                continue
            x.merge(y)
            before = canon(x)
            assert x.merge(y) == Diff([], [])
            assert x.merge(wire(y.extract(x.replica, x.context))) == Diff([], [])
            assert canon(x) == before
        for d in deltas:
            x.merge(d)
            before = canon(x)
            assert x.merge(wire(d)) == Diff([], [])
            assert canon(x) == before
        check_structure(x)


@settings(max_examples=120, deadline=None)
@given(actions=ALGEBRA_ACTIONS, order=st.permutations(range(3)))
def test_merge_is_commutative_and_associative(
    actions: list[tuple[Any, ...]], order: list[int]
) -> None:
    cluster, _ = three_replicas(actions)
    x, y, z = (n.state for n in cluster.nodes.values())
    # Commutative: any order of the three extracts into an observer gives one state.
    o1 = observer(cluster)
    for s in (x, y, z):
        o1.merge(s)
    o2 = observer(cluster)
    for i in order:
        o2.merge(wire((x, y, z)[i].extract(o2.replica, o2.context)))
    assert canon(o1) == canon(o2)
    # Associative: o ⊔ (x ⊔ (y ⊔ z)) == ((o ⊔ x) ⊔ y) ⊔ z.
    yz = copy.deepcopy(y)
    yz.merge(z)
    xyz = copy.deepcopy(x)
    xyz.merge(yz)
    o3 = observer(cluster)
    o3.merge(xyz)
    assert canon(o3) == canon(o1)
    # And a replica that merged everything shows the same visible set as the observer.
    assert sorted(map(canon_entry, stored(xyz).values())) == sorted(
        map(canon_entry, stored(o1).values())
    )
    check_structure(o1)


@settings(max_examples=120, deadline=None)
@given(actions=ALGEBRA_ACTIONS, seed=st.integers(0, 2**32))
def test_delta_merges_commute_and_merge_deltas_is_a_homomorphism(
    actions: list[tuple[Any, ...]], seed: int
) -> None:
    cluster, deltas = three_replicas(actions)
    rng = random.Random(seed)
    subset = [d for d in deltas if rng.random() < 0.7]
    o1, o2 = observer(cluster), observer(cluster)
    for d in subset:
        o1.merge(d)
    shuffled = subset[:]
    rng.shuffle(shuffled)
    for d in shuffled:
        o2.merge(wire(d))
    assert canon(o1) == canon(o2)
    # Folding contiguous deltas first changes nothing for the receiver.
    folded: list[Delta] = []
    for d in subset:
        if folded:
            m = merge_deltas(folded[-1], d)
            if m is not None:
                assert merge_deltas(d, folded[-1]) == m, "merge_deltas must commute"
                assert merge_deltas(m, d) == m, "merge_deltas must be idempotent"
                check_range(m, "merged")
                folded[-1] = m
                continue
        folded.append(d)
    o3 = observer(cluster)
    for d in folded:
        o3.merge(d)
    assert canon(o3) == canon(o1)


@settings(max_examples=60, deadline=None)
@given(actions=ALGEBRA_ACTIONS, cut=st.integers(0, 1000))
def test_merge_deltas_is_associative(actions: list[tuple[Any, ...]], cut: int) -> None:
    _, deltas = three_replicas(actions)
    if len(deltas) < 3:
        return
    i = cut % (len(deltas) - 2)
    a, b, c = deltas[i : i + 3]
    ab = merge_deltas(a, b)
    bc = merge_deltas(b, c)
    if ab is None or bc is None:
        return
    left, right = merge_deltas(ab, c), merge_deltas(a, bc)
    if left is not None and right is not None:
        assert left == right


# --------------------------------------------------------------------------- phoenix_pubsub#148


@settings(max_examples=300, deadline=None)
# The two shapes of #148: C misses the update, then receives a later update or the leave.
@example(ops=[(0, False, 1), (0, False, 2), (0, False, 3)], b_sees=1, c_gets=[0, 0, 1], c_first=0)
@example(ops=[(0, False, 1), (0, False, 2), (0, True, 0)], b_sees=1, c_gets=[0, 0, 1], c_first=0)
@given(
    # Mostly one row, so that joins, updates and leaves of the same presence pile up.
    ops=st.lists(
        st.tuples(st.sampled_from((0, 0, 0, 1)), st.booleans(), st.integers(0, 9)),
        min_size=2,
        max_size=10,
    ),
    b_sees=st.integers(0, 10),
    c_gets=st.lists(st.booleans(), min_size=10, max_size=10),
    c_first=st.booleans(),
)
def test_stale_full_extract_never_brings_back_old_meta(
    ops: list[tuple[int, bool, int]], b_sees: int, c_gets: list[int], c_first: int
) -> None:
    """A's deltas reach C with gaps; B saw only a prefix; B's stale extract then reaches C.

    C must never show an entry whose removal or replacement it has seen (as a cloud dot or in
    its context), and after A's own state arrives it must match A exactly.
    """
    A, B, C = ReplicaRef("a", 1), ReplicaRef("b", 1), ReplicaRef("c", 1)
    a, b, c = State(A), State(B), State(C)
    for s in (a, b, c):
        for r in (A, B, C):
            s.replica_up(r)
    deltas: list[Delta] = []
    killer: dict[Dot, Dot] = {}
    for row_i, leave, value in ops:
        topic, owner, key = ROWS[row_i]  # two rows: many updates and leaves per row
        old = a.lookup(owner, topic, key)
        if old is None:
            a.join(owner, topic, key, {"v": value})
        elif leave:
            a.leave(owner, topic, key)
            killer[old.dot] = Dot(A, a.context[A])
        else:
            killer[old.dot] = a.update(owner, topic, key, {"v": value}).joins[0].dot
        d = a.take_delta()
        assert d is not None
        deltas.append(d)
    for d in deltas[:b_sees]:
        b.merge(d)
    stale = wire(b.extract(C, c.context))
    if c_first:
        c.merge(stale)
    for d, take in zip(deltas, c_gets, strict=False):
        if take:
            c.merge(wire(d))
    c.merge(stale)
    check_structure(c)
    for dot, e in stored(c).items():
        k = killer.get(dot)
        assert k is None or not covered(c, k), f"C shows {e} although it has seen {k}"
    c.merge(a)
    assert sorted(map(canon_entry, c.online())) == sorted(map(canon_entry, a.online()))
    assert not c._clouds


# --------------------------------------------------------------------------- phoenix_pubsub#74


def populate(s: State, n: int, batch: int, topic: str = "room") -> None:
    for i in range(n):
        s.join(i, topic, f"{s.replica.node}-{i}", {"i": i})
        if (i + 1) % batch == 0:
            s.take_delta()
    s.take_delta()


@settings(max_examples=80, deadline=None)
@example(caps=(1, 2), pick=1, offsets=(1, 0), batches=(2, 1))
@given(
    caps=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
    pick=st.integers(0, 2),
    offsets=st.tuples(st.integers(-1, 1), st.integers(-1, 1)),
    batches=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_first_contact_between_populated_replicas_on_both_sides_of_each_cap(
    caps: tuple[int, ...], pick: int, offsets: tuple[int, int], batches: tuple[int, int]
) -> None:
    cap = caps[pick % len(caps)]
    n_a, n_b = max(0, cap + offsets[0]), max(0, cap + offsets[1])
    check_first_contact(caps, n_a, n_b, batches)


def check_first_contact(
    caps: tuple[int, ...], n_a: int, n_b: int, batches: tuple[int, int]
) -> None:
    A, B = ReplicaRef("a", 1), ReplicaRef("b", 2)
    a, b = State(A, delta_caps=caps), State(B, delta_caps=caps)
    populate(a, n_a, batches[0])
    populate(b, n_b, batches[1])
    a.replica_up(B)
    b.replica_up(A)
    to_b = a.transfer_for(B, b.clocks())
    to_a = b.transfer_for(A, a.clocks())
    check_answer(a, B, b.clocks(), to_b)
    check_answer(b, A, a.clocks(), to_a)
    # The smallest generation covering the whole history is used iff one exists (#74: too
    # small a generation must fall back to the full state).
    # A generation still starts at 0 iff the whole history fits the largest cap, or it all
    # came in a single delta (a lone delta is kept even when it exceeds every cap).
    for answer, n, batch in ((to_b, n_a, batches[0]), (to_a, n_b, batches[1])):
        if n == 0:
            assert isinstance(answer, Delta) and not answer
        elif caps and (n <= caps[-1] or n <= batch):
            assert isinstance(answer, Delta) and len(answer) == n
        else:
            assert isinstance(answer, Snapshot) and len(answer) == n
    b.merge(wire(to_b))
    a.merge(wire(to_a))
    # Memory bound: a level outgrows its cap only when a single delta alone does.
    for s, biggest in ((a, max(batches[0], len(to_a))), (b, max(batches[1], len(to_b)))):
        for cap, gen in zip(caps, s.generations, strict=True):
            assert len(gen) <= max(cap, biggest)
    for s in (a, b):
        assert len(list(s.online())) == n_a + n_b
        assert s.clocks() == {A: n_a, B: n_b}
        assert not s._clouds
        check_structure(s)
    # Later catch-up after a lost heartbeat goes through a generation again.
    a.join("late", "room", "late", {})
    a.take_delta()  # lost
    later = a.transfer_for(B, b.clocks())
    assert isinstance(later, Delta) == bool(caps)
    b.merge(wire(later))
    assert sorted(map(canon_entry, b.online())) == sorted(map(canon_entry, a.online()))


@settings(max_examples=150, deadline=None)
@given(
    actions=ALGEBRA_ACTIONS,
    caps=CAPS,
    seed=st.integers(0, 2**32),
)
def test_transfer_answer_always_brings_requester_to_our_clock(
    actions: list[tuple[Any, ...]], caps: tuple[int, ...], seed: int
) -> None:
    """Whatever the generations hold, merging a transfer answer leaves the requester at least
    at our clock on every replica it knows, with the same visible entries for them."""
    cluster, _ = three_replicas(actions, caps)
    rng = random.Random(seed)
    states = [n.state for n in cluster.nodes.values()]
    s = rng.choice(states)
    q = rng.choice([x for x in states if x is not s])
    answer = s.transfer_for(q.replica, q.clocks())
    check_answer(s, q.replica, q.clocks(), answer)
    q.merge(wire(answer))
    check_structure(q)
    check_transfer(q, s, answer)
