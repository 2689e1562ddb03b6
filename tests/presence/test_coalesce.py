"""Coalesced presence diffs (presence.coalesce.DiffWindow) against phoenix.js's syncDiff.

The client side is ``channels.client.ClientPresence.sync_diff`` / ``sync_state``: a line-for-line
port of phoenix.js's ``Presence`` that tests/client/test_client_presence_js.py checks against
phoenix.js itself; the last test here also replays coalesced windows through phoenix.js (node).

A model server keeps presences per key and produces the diffs the tracker would: tracks,
untracks, updates (leave + join with ``phx_ref_prev``), a replica going down (its metas leave)
and coming back (the same metas join again), several changes in one diff (a merge), and
listings taken mid-window (a client that gets ``presence_state`` then). Properties:

* a client whose state was the topic's state when a window opened gets, from the merged diff,
  exactly the state the individual diffs give it: same keys, same metas in the same order;
* a client that got a listing during the window ends with the same keys and metas (as sets)
  as with the individual diffs after its listing;
* both equal the server's presences: nothing lost, nothing left behind, window after window.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from channels.client import ClientPresence
from presence.coalesce import DiffWindow, merge_diffs
from presence.presence import group

ROOT = Path(__file__).resolve().parents[2]
ORACLE = ROOT / "tests" / "client" / "presence_oracle.mjs"

Meta = dict[str, Any]
Metas = dict[str, list[Meta]]
KEYS = ["a", "b", "c", "1", "10"]


def clone(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def apply(state: Any, joins: Metas, leaves: Metas) -> Any:
    """phoenix.js syncDiff on a copy (it mutates the presences of the state it is given)."""
    return ClientPresence.sync_diff(clone(state), {"joins": group(clone(joins)),
                                                   "leaves": group(clone(leaves))})


def from_listing(listing: Metas) -> Any:
    return ClientPresence.sync_state({}, group(clone(listing)))


def as_sets(state: Any) -> dict[str, set[str]]:
    return {k: {m["phx_ref"] for m in p["metas"]} for k, p in state.items()}


def exact(state: Any) -> dict[str, list[Meta]]:
    """Keys (any order) with their metas in order: what phoenix.js lists."""
    return {k: p["metas"] for k, p in state.items()}


# --------------------------------------------------------------------------- the model server


class Server:
    """Presences per key, visible or hidden (down), producing tracker-shaped diffs."""

    def __init__(self) -> None:
        self.visible: dict[str, dict[str, Meta]] = {}  # key -> ref -> meta, in join order
        self.hidden: list[tuple[str, Meta]] = []
        self._refs = itertools.count(1)

    def listing(self) -> Metas:
        return {k: list(refs.values()) for k, refs in self.visible.items() if refs}

    def _meta(self, **extra: Any) -> Meta:
        return {"phx_ref": f"r{next(self._refs)}", **extra}

    def _join(self, key: str, meta: Meta, joins: Metas) -> None:
        self.visible.setdefault(key, {})[meta["phx_ref"]] = meta
        joins.setdefault(key, []).append(meta)

    def _leave(self, key: str, ref: str, leaves: Metas) -> Meta:
        meta = self.visible[key].pop(ref)
        if not self.visible[key]:
            del self.visible[key]
        leaves.setdefault(key, []).append(meta)
        return meta

    def present(self) -> list[tuple[str, str]]:
        return [(k, r) for k, refs in self.visible.items() for r in refs]

    def step(self, op: str, pick: int, key: str) -> tuple[Metas, Metas] | None:
        joins: Metas = {}
        leaves: Metas = {}
        present = self.present()
        if op == "track":
            self._join(key, self._meta(v=pick % 3), joins)
        elif op == "untrack" and present:
            k, r = present[pick % len(present)]
            self._leave(k, r, leaves)
        elif op == "update" and present:
            k, r = present[pick % len(present)]
            self._leave(k, r, leaves)
            self._join(k, self._meta(v=pick % 3, phx_ref_prev=r), joins)
        elif op == "down" and present:
            # A replica goes down: every other present meta leaves, in one diff.
            for k, r in present[pick % 2::2]:
                self.hidden.append((k, self._leave(k, r, leaves)))
        elif op == "up" and self.hidden:
            for k, meta in self.hidden:
                self._join(k, meta, joins)
            self.hidden = []
        elif op == "merge":
            # A merge from another node: a few joins and leaves at once.
            for i in range(1 + pick % 3):
                self._join(KEYS[(pick + i) % len(KEYS)], self._meta(), joins)
            if present:
                k, r = present[pick % len(present)]
                self._leave(k, r, leaves)
        else:
            return None
        return joins, leaves


OPS = st.lists(st.tuples(
    st.sampled_from(["track", "track", "untrack", "update", "down", "up", "merge", "observe",
                     "flush"]),
    st.integers(0, 20),
    st.sampled_from(KEYS)), max_size=60)


def run_windows(ops: list[tuple[str, int, str]]) -> None:
    server = Server()
    merged_client = from_listing({})     # gets one merged diff per window
    single_client = from_listing({})     # gets every diff
    window = DiffWindow()
    # Clients that got a listing during the current window: [state, diffs since].
    observers: list[tuple[Any, list[tuple[Metas, Metas]]]] = []
    window_diffs: list[tuple[Metas, Metas]] = []

    def flush() -> None:
        nonlocal merged_client, window, observers, window_diffs
        joins, leaves = window.diff()
        # The merged diff itself is well formed: no ref both joins and leaves, no empty key.
        for key in set(joins) & set(leaves):
            assert not ({m["phx_ref"] for m in joins[key]} & {m["phx_ref"] for m in leaves[key]})
        assert all(joins.values()) and all(leaves.values())
        merged_client = apply(merged_client, joins, leaves)
        assert exact(merged_client) == exact(single_client)
        assert as_sets(merged_client) == as_sets(from_listing(server.listing()))
        for state, since in observers:
            one_by_one = state
            for j, lv in since:
                one_by_one = apply(one_by_one, j, lv)
            coalesced = apply(state, joins, leaves)
            assert as_sets(coalesced) == as_sets(one_by_one) == as_sets(merged_client)
        window = DiffWindow()
        observers = []
        window_diffs = []

    for op, pick, key in ops:
        if op == "flush":
            flush()
            continue
        if op == "observe":
            window.observed()
            observers.append((from_listing(server.listing()), []))
            continue
        diff = server.step(op, pick, key)
        if diff is None:
            continue
        joins, leaves = diff
        window.add(joins, leaves)
        window_diffs.append(diff)
        single_client = apply(single_client, joins, leaves)
        for _, since in observers:
            since.append(diff)
    flush()


@settings(max_examples=600, deadline=None)
@given(ops=OPS)
@example(ops=[("track", 0, "a"), ("untrack", 0, "a")])  # join + leave: nets out
@example(ops=[("track", 0, "a"), ("flush", 0, "a"), ("down", 0, "a"), ("up", 0, "a")])
@example(ops=[("track", 0, "a"), ("observe", 0, "a"), ("untrack", 0, "a")])
# down, another meta of the key joins, up: the returning meta goes after it
@example(ops=[("track", 0, "a"), ("flush", 0, "a"), ("down", 0, "a"), ("track", 0, "a"),
              ("up", 0, "a")])
@example(ops=[("track", 0, "a"), ("track", 1, "a"), ("flush", 0, "a"), ("update", 0, "a"),
              ("update", 1, "a")])
def test_merged_diff_gives_the_same_state(ops: list[tuple[str, int, str]]) -> None:
    run_windows(ops)


# --------------------------------------------------------------------------- specific cases


def m(ref: str, **extra: Any) -> Meta:
    return {"phx_ref": ref, **extra}


def test_join_and_leave_inside_one_window_net_out() -> None:
    assert merge_diffs([({"a": [m("1")]}, {}), ({}, {"a": [m("1")]})]) == ({}, {})


def test_a_listing_taken_in_between_keeps_the_leave() -> None:
    window = DiffWindow()
    window.add({"a": [m("1")]}, {})
    window.observed()
    window.add({}, {"a": [m("1")]})
    assert window.diff() == ({}, {"a": [m("1")]})


def test_an_update_is_a_leave_and_a_join_with_phx_ref_prev() -> None:
    joins, leaves = merge_diffs([({"a": [m("2", phx_ref_prev="1")]}, {"a": [m("1")]})])
    assert joins == {"a": [m("2", phx_ref_prev="1")]} and leaves == {"a": [m("1")]}
    # two updates in one window: the first new meta never reached anyone
    joins, leaves = merge_diffs([({"a": [m("2", phx_ref_prev="1")]}, {"a": [m("1")]}),
                                 ({"a": [m("3", phx_ref_prev="2")]}, {"a": [m("2")]})])
    assert joins == {"a": [m("3", phx_ref_prev="2")]} and leaves == {"a": [m("1")]}


def test_a_replica_down_and_up_again_is_one_join() -> None:
    # present before the window: it leaves (down) and comes back (up) with the same ref
    joins, leaves = merge_diffs([({}, {"a": [m("1")], "b": [m("2")]}),
                                 ({"a": [m("1")], "b": [m("2")]}, {})])
    assert joins == {"a": [m("1")], "b": [m("2")]} and leaves == {}
    # ... and leaves again: a leave, nothing else
    assert merge_diffs([({}, {"a": [m("1")]}), ({"a": [m("1")]}, {}),
                        ({}, {"a": [m("1")]})]) == ({}, {"a": [m("1")]})


def test_joins_keep_the_order_of_the_last_join() -> None:
    joins, _ = merge_diffs([({"a": [m("1"), m("2")]}, {}), ({"a": [m("3")]}, {}),
                            ({}, {"a": [m("1")]}), ({"a": [m("1")]}, {})])
    assert [x["phx_ref"] for x in joins["a"]] == ["2", "3", "1"]


# --------------------------------------------------------------------------- phoenix.js itself


@pytest.fixture(scope="module")
def oracle() -> Iterator[subprocess.Popen[bytes]]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "phoenix").is_dir():
        pytest.skip("node and node_modules/phoenix are needed (./scripts/setup)")
    proc = subprocess.Popen([node, str(ORACLE)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait()


def js_sync_diff(proc: subprocess.Popen[bytes], state: Any, joins: Metas,
                 leaves: Metas) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(orjson.dumps({"op": "diff", "state": state, "arg": {
        "joins": group(joins), "leaves": group(leaves)}}) + b"\n")
    proc.stdin.flush()
    return orjson.loads(proc.stdout.readline())["state"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_phoenix_js_agrees(oracle: subprocess.Popen[bytes],
                           ops: list[tuple[str, int, str]]) -> None:
    """Windows of diffs through phoenix.js: merged per window == one by one, exactly."""
    server = Server()
    merged: Any = {}
    single: Any = {}
    window = DiffWindow()
    for op, pick, key in [*ops, ("flush", 0, "a")]:
        if op == "flush":
            merged = js_sync_diff(oracle, merged, *window.diff())
            assert exact(merged) == exact(single)
            assert as_sets(merged) == as_sets(from_listing(server.listing()))
            window = DiffWindow()
            continue
        diff = server.step(op, pick, key) if op != "observe" else None
        if diff is not None:
            window.add(*diff)
            single = js_sync_diff(oracle, single, *diff)
