"""The client matrix, Python side: third-party Phoenix Channels clients from PyPI against one
trio-channels server process.

The clients live in their own venv, ``.venv-clients``, made from ``tests/matrix/clients.lock``
(pinned; by ./scripts/setup, or here when missing or out of date). Each is driven by a small
script in ``tests/matrix/clients/`` run with that venv's interpreter; the three run
concurrently. Each script connects two clients of its library, joins, pushes with replies,
broadcasts from one to the other, leaves and closes, and reports what the library handed
back plus every frame on the wire.

  - ``phxsocket`` 0.1.5: V1 JSON, INTEGER refs from 0, replies matched by ``ref`` as sent.
  - ``chunnel`` 0.1.0: V1 JSON, INTEGER refs from 1, replies matched by ``ref`` as sent.
  - ``realtime`` 2.34.1 (Supabase): V1 JSON with ``join_ref``, string refs, ``realtime:``
    topics and Supabase's join/broadcast payloads (served by tests/matrix/matrix_app.py).

Refs are opaque to a Phoenix server: a reply carries the ref of its push exactly as the client
sent it, a JSON number as that number (``test_replies_echo_each_ref_verbatim``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.matrix.support import CLIENTS_LOCK, ROOT, RunError, ensure_clients_venv, run_lines
from tests.support.server import ServerProcess

APP = "tests.matrix.matrix_app:make_endpoint"
DRIVERS = ROOT / "tests" / "matrix" / "clients"
CLIENTS = ("phxsocket", "chunnel", "realtime")
PAYLOAD = {"n": 1, "s": "héllo", "list": [1, "two", None, True], "nested": {"x": 1.5}}
#: as tests/matrix/clients/_common.py's BIG
BIG = {"big": 2**70 + 1, "neg": -(2**64) - 1, "max_u64": 2**64 - 1, "min_i64": -(2**63)}


def topic_of(client: str) -> str:
    # realtime puts "realtime:" in front of the name it is given
    return f"realtime:room:py_{client}" if client == "realtime" else f"room:py_{client}"


def arg_of(client: str) -> str:
    return f"room:py_{client}" if client == "realtime" else topic_of(client)


def users(client: str) -> tuple[str, str]:
    prefix = {"phxsocket": "phx", "chunnel": "chunnel", "realtime": "rt"}[client]
    return f"{prefix}_a", f"{prefix}_b"


@pytest.fixture(scope="session")
def clients_python() -> Path:
    return ensure_clients_venv()


@pytest.fixture(scope="module")
def runs(clients_python: Path) -> Iterator[dict[str, Any]]:
    server = ServerProcess(APP)
    server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/socket"

        def drive(client: str) -> Any:
            try:
                return run_lines([str(clients_python), str(DRIVERS / f"{client}_client.py"),
                                  url, arg_of(client)], timeout=60, silence=60)
            except RunError as exc:
                return {"client": client, "steps": {}, "error": str(exc), "frames": []}

        started = time.monotonic()
        with ThreadPoolExecutor(len(CLIENTS)) as pool:
            results = dict(zip(CLIENTS, pool.map(drive, CLIENTS), strict=True))
        yield {"results": results, "elapsed": time.monotonic() - started,
               "server_output": server.output}
    finally:
        server.kill()


def step(runs: dict[str, Any], client: str, name: str) -> Any:
    """What the driver recorded for step ``name``; fails with its error when it has none."""
    out = runs["results"][client]
    got = out["steps"].get(name)
    if got is None or (isinstance(got, dict) and "error" in got):
        frames = "\n".join(f"{f['who']} {f['dir']}: {json.dumps(f['frame'])}"
                           for f in out.get("frames", [])[-30:])
        pytest.fail(f"{client}: step {name!r} not done: {out.get('error')}\n"
                    f"{out.get('traceback', '')}\nwire (tail):\n{frames}\n"
                    f"server output (tail):\n{''.join(runs['server_output'][-20:])}")
    return got


def wire(runs: dict[str, Any], client: str, who: str, direction: str) -> list[dict[str, Any]]:
    return [f["frame"] for f in runs["results"][client].get("frames", [])
            if f["who"] == who and f["dir"] == direction and isinstance(f["frame"], dict)]


clients = pytest.mark.parametrize("client", CLIENTS)


@clients
def test_runs_the_locked_release(runs: dict[str, Any], client: str) -> None:
    out = runs["results"][client]
    pins = dict(line.split("==") for line in CLIENTS_LOCK.read_text().splitlines()
                if line and not line.startswith("#"))
    assert out.get("version") == pins[client], out.get("error")
    assert out.get("websockets") == pins["websockets"]


@clients
def test_connect_and_join(runs: dict[str, Any], client: str) -> None:
    assert step(runs, client, "connect") is True
    join = step(runs, client, "join")
    if client == "realtime":
        assert join["topic"] == topic_of(client)
        assert join["states"]["b"] == ["SUBSCRIBED"]
        assert join["states"]["a"][0] == "SUBSCRIBED"  # then CLOSED when it unsubscribes
        assert join["joined"] == [True, True]
    else:
        assert join == {"a": {"joined": topic_of(client)}, "b": {"joined": topic_of(client)}}
    a, _ = users(client)
    joins = [f for f in wire(runs, client, a, "sent") if f.get("event") == "phx_join"]
    assert len(joins) == 1 and joins[0]["topic"] == topic_of(client)


@clients
def test_push_with_reply(runs: dict[str, Any], client: str) -> None:
    echo = step(runs, client, "echo")
    assert echo["payload"] == PAYLOAD
    if client == "realtime":
        # realtime hands an ok reply's response over as its postgres_changes model only
        assert echo["reply"] == {"status": "ok", "response": {"model": "ReplyPostgresChanges",
                                                              "postgres_changes": None}}
    else:
        assert echo["reply"] == {"status": "ok", "response": PAYLOAD}
    error = step(runs, client, "error_reply")
    if client == "chunnel":
        assert error == {"raised": "Response not ok!"}  # chunnel raises on any non-ok reply
    else:
        assert error == {"status": "error", "response": {"reason": "asked for it"}}
    # the replies on the wire, whatever the library keeps of them
    a, _ = users(client)
    replies = [f["payload"] for f in wire(runs, client, a, "recv")
               if f.get("event") == "phx_reply" and f.get("topic") == topic_of(client)]
    assert {"status": "ok", "response": PAYLOAD} in replies
    assert {"status": "error", "response": {"reason": "asked for it"}} in replies


@clients
def test_broadcast_reaches_the_other_client(runs: dict[str, Any], client: str) -> None:
    got = step(runs, client, "broadcast")
    if client == "realtime":
        assert got["b"] == {"event": "shout", "payload": {"from": "a", "n": 1}}
        assert got["a_self"] == 0  # a joined without config.broadcast.self
    else:
        assert got["reply"] == {"status": "ok", "response": {}}
        assert got["b"] == got["a"] == {"from": "a", "n": 1}
    _, b = users(client)
    event = "broadcast" if client == "realtime" else "shout"
    frames = [f for f in wire(runs, client, b, "recv") if f.get("event") == event]
    assert frames and frames[0]["ref"] is None and frames[0]["topic"] == topic_of(client)


@clients
def test_leave(runs: dict[str, Any], client: str) -> None:
    left = step(runs, client, "leave")
    if client == "phxsocket":
        assert left["on_close"] is True
        assert left["b"] == {"from": "b", "n": 2} and left["a_after_leave"] is None
    elif client == "chunnel":
        assert left["returned"] is True and left["phx_close"] == {}
        assert left["b"] == {"from": "b", "n": 2} and left["a_after_leave"] is None
    else:
        assert left["closed"] is True
        assert left["b"] == {"event": "shout", "payload": {"from": "b", "n": 2}}
        assert left["a_after_leave"] == 0
    a, _ = users(client)
    sent = [f for f in wire(runs, client, a, "sent") if f.get("event") == "phx_leave"]
    assert len(sent) == 1
    received = wire(runs, client, a, "recv")
    assert {"topic": topic_of(client), "event": "phx_reply", "ref": sent[0]["ref"],
            "payload": {"status": "ok", "response": {}}} in received
    assert any(f.get("event") == "phx_close" and f.get("topic") == topic_of(client)
               for f in received)
    # b's broadcast after the leave did not reach a on the wire
    last = max(i for i, f in enumerate(received) if f.get("event") == "phx_close")
    assert not [f for f in received[last:] if f.get("event") in ("shout", "broadcast")]
    assert step(runs, client, "close") is True


@clients
def test_integers_beyond_64_bits_are_echoed_exactly(runs: dict[str, Any], client: str) -> None:
    got = step(runs, client, "big_int")
    assert got["payload"] == BIG
    if client == "realtime":
        assert got["reply"]["status"] == "ok"  # the response itself only shows on the wire
    else:
        assert got["reply"] == {"status": "ok", "response": BIG}
    _, b = users(client)
    replies = [f["payload"] for f in wire(runs, client, b, "recv") if f.get("event") == "phx_reply"]
    assert {"status": "ok", "response": BIG} in replies


@clients
def test_replies_echo_each_ref_verbatim(runs: dict[str, Any], client: str) -> None:
    """Every push that carries a ref gets exactly one reply carrying that same JSON value
    (an integer stays an integer, 0 included); a null ref is answered with null."""
    step(runs, client, "connect")
    out = runs["results"][client]
    closing = out["began"].get("close", float("inf"))
    for who in users(client):
        # pushes sent once the clients started closing may go unanswered (phxsocket's timed
        # heartbeats): not counted
        sent = [f["frame"] for f in out["frames"]
                if f["who"] == who and f["dir"] == "sent" and isinstance(f["frame"], dict)
                and f["frame"].get("event") != "phx_reply" and f["t"] < closing]
        received = [f for f in wire(runs, client, who, "recv") if f.get("event") == "phx_reply"]
        assert sent, f"{client}/{who}: nothing sent"
        for push in sent:
            answers = [f for f in received if f.get("topic") == push["topic"]
                       and f.get("ref") == push["ref"]
                       and type(f.get("ref")) is type(push["ref"])]
            if push["ref"] is None:
                continue  # realtime's heartbeats: null refs, answers indistinguishable
            assert len(answers) == 1, (
                f"{client}/{who}: {push['event']} on {push['topic']} with ref "
                f"{push['ref']!r} ({type(push['ref']).__name__}) got replies "
                f"{[f.get('ref') for f in received if f.get('topic') == push['topic']]!r}")
