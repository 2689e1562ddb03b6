"""History on one node process, with the official phoenix.js client joining through the
helper served at /trio-channels/history.js (tests/js/history_driver.mjs).

A server restart loses the memory store: clients are told (``epoch changed``) and go on from
the new stream. Network blips on the same node lose nothing: every message arrives exactly
once and in order. A client away for longer than the history holds is told. A first join may
ask for the recent past. Every wait is bounded; nothing asserts timing.
"""

from __future__ import annotations

import random
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.history_driver import HistoryDriver, history_driver, judge
from tests.support.server import ROOT, ServerProcess

APP = "tests.support.history_app:make_endpoint"
TOPIC = "feed:js"


@pytest.fixture
def js() -> Iterator[HistoryDriver]:
    with history_driver() as d:
        yield d


@pytest.fixture
def make_server() -> Iterator[object]:
    started: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(APP, env=env or {}, args=["--log-level", "WARNING"])
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.kill()


def _url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/socket"


def _publish(js: HistoryDriver, first: int, count: int, interval_ms: int = 0,
             timeout: float = 60) -> None:
    since = js.mark()
    js.send(op="publish", id="pub", first=first, count=count, interval_ms=interval_ms)
    js.wait(lambda e: e.get("id") == "pub" and e["ev"] == "publish_done", timeout, since)
    statuses = {e["status"] for e in js.events[since:]
                if e.get("id") == "pub" and e["ev"] == "published"}
    assert statuses == {"ok"}, statuses


def _start_clients(js: HistoryDriver, server: ServerProcess, names: list[str]) -> None:
    for cid in [*names, "pub"]:
        js.connect(cid, _url(server))
        joined = js.rjoin(cid, TOPIC)
        assert joined["ev"] == "join_ok", joined
        info = joined["resp"]["phx_recovery"]
        assert info["recovered"] is False and "reason" not in info  # a first join


def test_served_helper_is_the_module_the_driver_imports(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/trio-channels/history.js",
                                timeout=10) as resp:
        body = resp.read()
        assert "javascript" in resp.headers["content-type"]
    assert body == (ROOT / "channels/static/history.js").read_bytes()


def test_server_restart_clients_are_told_the_epoch_changed(make_server,  # type: ignore[no-untyped-def]
                                                           js: HistoryDriver) -> None:
    server = make_server()
    names = ["c1", "c2", "c3"]
    _start_clients(js, server, names)
    _publish(js, 1, 40)
    for cid in names:
        js.wait_received(cid, 40)
    before = {cid: js.position(cid) for cid in names}
    since = js.mark()
    server.restart()  # SIGTERM (drain: close 1012), then a new process on the same port
    # phoenix.js reconnects by itself and the helper rejoins from the last position.
    told = {}
    for cid in [*names, "pub"]:
        event = js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "recovery", 30, since)
        told[cid] = event["info"]
    for cid, info in told.items():
        assert info["recovered"] is False and info["reason"] == "epoch changed", (cid, info)
        assert info["offset"] == 0 and info["replayed"] == 0
    assert len({info["epoch"] for info in told.values()}) == 1
    assert all(told[cid]["epoch"] != before[cid]["epoch"] for cid in names)  # type: ignore[index]
    _publish(js, 41, 40)
    for cid in names:
        js.wait_received(cid, 80)
    expected = list(range(1, 81))
    for cid in names:
        verdict = judge(js.events, cid, expected)
        assert not verdict.problems, (cid, verdict.problems)
        assert verdict.numbers == expected  # nothing was published while it was down
        after = [e["pos"] for e in js.events[since:] if e.get("id") == cid and e["ev"] == "msg"]
        assert [p["offset"] for p in after] == list(range(1, 41))
        assert {p["epoch"] for p in after} == {told[cid]["epoch"]}


def test_network_blips_lose_nothing_and_duplicate_nothing(make_server,  # type: ignore[no-untyped-def]
                                                          js: HistoryDriver) -> None:
    server = make_server()
    names = [f"c{i}" for i in range(5)]
    _start_clients(js, server, names)
    rng = random.Random(7)
    total = 300
    since = js.mark()
    js.send(op="publish", id="pub", first=1, count=total, interval_ms=5)
    blips = 0
    while blips < 25:
        event = js.wait(lambda e: e.get("id") == "pub" and e["ev"] in ("published",
                                                                       "publish_done"), 60)
        if event["ev"] == "publish_done" or event["n"] > total - 20:
            break
        cid = rng.choice(names)
        mark = js.mark()
        js.send(op="blip", id=cid)
        blips += 1
        # Back in before the next blip (its rejoin says it recovered).
        info = js.wait(lambda e, c=cid: e.get("id") == c and e["ev"] == "recovery", 20,
                       mark)["info"]
        assert info["recovered"] is True, (cid, info)
    js.wait(lambda e: e.get("id") == "pub" and e["ev"] == "publish_done", 60, since)
    for cid in names:
        js.wait_received(cid, total, 30)
    assert blips >= 10
    expected = list(range(1, total + 1))
    replayed = 0
    for cid in names:
        verdict = judge(js.events, cid, expected)
        assert not verdict.problems, (cid, verdict.problems)
        assert verdict.numbers == expected
        infos = [e["info"] for e in js.events if e.get("id") == cid and e["ev"] == "recovery"]
        assert all(i["recovered"] for i in infos[1:]), infos
        replayed += sum(i["replayed"] for i in infos)
    assert replayed > 0  # the blips did lose messages in flight, and recovery sent them


def test_away_longer_than_the_history_is_told(make_server, js: HistoryDriver) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"TEST_HISTORY_SIZE": "20"})
    _start_clients(js, server, ["stay", "away"])
    _publish(js, 1, 10)
    js.wait_received("away", 10)
    since = js.mark()
    js.send(op="move", id="away", url=_url(server), delay_ms=60_000)  # away for now
    js.wait(lambda e: e.get("id") == "away" and e["ev"] == "left_socket", 10, since)
    _publish(js, 11, 50)  # 50 > 20: offsets 11..30 are gone
    js.wait_received("stay", 60)
    # Come back (a second move replaces the pending one: same id, the position it left with).
    js.send(op="move", id="away", url=_url(server))
    info = js.wait(lambda e: e.get("id") == "away" and e["ev"] == "recovery", 20, since)["info"]
    assert info["recovered"] is False and info["reason"] == "position older than the history"
    assert info["offset"] == 60 and info["replayed"] == 0
    _publish(js, 61, 5)
    js.wait_received("away", 65)
    expected = list(range(1, 66))
    stay = judge(js.events, "stay", expected)
    assert not stay.problems and stay.numbers == expected
    away = judge(js.events, "away", expected)
    assert not away.problems, away.problems
    assert away.missing == list(range(11, 61)) and len(away.told) == 1


def test_first_join_asks_for_the_recent_past(make_server, js: HistoryDriver) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"TEST_HISTORY_SIZE": "20"})
    _start_clients(js, server, [])
    _publish(js, 1, 30)
    js.connect("late", _url(server))
    joined = js.rjoin("late", TOPIC, initial=5)
    info = joined["resp"]["phx_recovery"]
    assert info["recovered"] is False and info["replayed"] == 5 and info["offset"] == 30
    js.connect("greedy", _url(server))
    info = js.rjoin("greedy", TOPIC, initial=10**6)["resp"]["phx_recovery"]
    assert info["replayed"] == 20  # never more than the history holds
    _publish(js, 31, 3)
    js.wait_received("late", 33)
    js.wait_received("greedy", 33)
    assert js.received("late") == [26, 27, 28, 29, 30, 31, 32, 33]
    assert js.received("greedy") == list(range(11, 34))
