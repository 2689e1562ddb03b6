"""A crowd of official phoenix.js clients (``Presence``) joining one topic at once, against a
real server process: with diffs coalesced per window and one shared ``presence_state`` per
version, every client converges to everyone, and each client syncs far fewer times than there
are joins. Then a third of them leaves at once and another third updates its meta at once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.driver import Driver, Event, driver
from tests.support.server import ServerProcess, running_server

TOPIC = "room:crowd-js"
N = 90


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("tests.support.presence_app:make_endpoint") as s:
        yield s


@pytest.fixture
def js() -> Iterator[Driver]:
    with driver() as d:
        yield d


def wait_all(js: Driver, since: int, done: dict[str, object], timeout: float = 60.0
             ) -> dict[str, Event]:
    """Drain events until ``done[cid](event)`` held for a presence_sync of every client;
    returns the matching sync per client."""
    deadline = time.monotonic() + timeout
    got: dict[str, Event] = {}
    checked = since
    while len(got) < len(done):
        for event in js.events[checked:]:
            cid = event.get("id")
            if (event.get("ev") == "presence_sync" and event.get("topic") == TOPIC
                    and cid in done and done[cid](event)):  # type: ignore[operator]
                got[cid] = event
        checked = len(js.events)
        if len(got) == len(done):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(set(done) - set(got))[:5]
            raise AssertionError(f"{len(done) - len(got)} clients did not converge, e.g. "
                                 f"{missing}")
        js._drain(min(remaining, 1.0))
    return got


def syncs(js: Driver, since: int, until: int, cid: str) -> int:
    return sum(1 for e in js.events[since:until] if e.get("id") == cid
               and e.get("ev") == "presence_sync" and e.get("topic") == TOPIC)


def test_a_crowd_of_phoenix_js_clients_converges(server: ServerProcess, js: Driver) -> None:
    url = f"ws://127.0.0.1:{server.port}/socket"
    cids = [f"c{i:03d}" for i in range(N)]
    for cid in cids:
        js.connect(cid, url)
    since = js.mark()
    for cid in cids:  # all at once: the joins land within a window or two
        js.send(op="join", id=cid, topic=TOPIC, params={"user": cid})
    everyone = set(cids)
    got = wait_all(js, since, {cid: (lambda e: set(e["list"]) == everyone) for cid in cids})
    first = got[cids[0]]["list"]
    assert all(e["list"] == first for e in got.values())
    assert all(len(refs) == 1 for refs in first.values())
    until = len(js.events)
    # one presence_state and a few coalesced diffs each, not one diff per join
    counts = [syncs(js, since, until, cid) for cid in cids]
    assert max(counts) < N // 3, counts

    # a third leaves at once (closed tabs), a third updates its meta at once
    leaving, updating = cids[: N // 3], cids[N // 3: 2 * N // 3]
    staying = cids[N // 3:]
    since = js.mark()
    for cid in leaving:
        js.send(op="disconnect", id=cid)
    for cid in updating:
        js.send(op="push", id=cid, topic=TOPIC, event="status", payload={"status": "away"},
                tag=f"st-{cid}")
    new_refs = {}
    for cid in updating:
        reply = js.wait(lambda e, c=cid: e.get("ev") == "reply" and e.get("tag") == f"st-{c}",
                        30, since)
        assert reply["status"] == "ok"
        new_refs[cid] = reply["resp"]["phx_ref"]
    expected = {cid: [new_refs[cid]] if cid in new_refs else first[cid] for cid in staying}
    got = wait_all(js, since, {cid: (lambda e: e["list"] == expected) for cid in staying})
    for event in got.values():
        for cid in updating:
            [meta] = event["metas"][cid]
            assert meta["status"] == "away" and meta["phx_ref_prev"] == first[cid][0]
