"""phoenix.js 1.8's own LongPoll transport in Node (its Ajax on Node's fetch) against a server
process: the authToken option (sent as X-Phoenix-AuthToken on LongPoll), and a session the
server ends (a ``disconnect`` through the HTTP API): the waiting poll gets 410, phoenix.js
closes with 3410 "session_gone", reconnects with a new session and rejoins.
(Joins, pushes, broadcasts, presence and a server restart over LongPoll for 1.7 and 1.8 are
in the client matrix, tests/matrix/test_phoenix_versions.py.)
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.driver import Driver, driver
from tests.support.server import ServerProcess, running_server

API_KEY = "longpoll-test-api-key-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(env={"TRIO_CHANNELS_API_KEYS": API_KEY}) as s:
        yield s


@pytest.fixture
def js() -> Iterator[Driver]:
    with driver() as d:
        yield d


def connect_lp(js: Driver, cid: str, url: str, params: dict[str, Any],
               opts: dict[str, Any] | None = None) -> None:
    since = js.mark()
    js.send(op="connect", id=cid, url=url, params=params, opts=opts or {},
            transport="longpoll")
    js.wait(lambda e: e.get("id") == cid and e["ev"] == "open", 10, since)


def test_auth_token_over_longpoll(server: ServerProcess, js: Driver) -> None:
    connect_lp(js, "a", f"ws://127.0.0.1:{server.port}/socket", {"user_id": "ada"},
               {"authToken": "lp-secret-token"})
    joined = js.join("a", "info")
    assert joined["ev"] == "join_ok"
    info = joined["resp"]
    assert info["auth_token"] == "lp-secret-token"
    assert info["path"] == "/socket/longpoll"
    assert info["params"] == {"user_id": "ada", "vsn": "2.0.0"}
    assert ["x-phoenix-authtoken", "[FILTERED]"] in info["x_headers"]
    # a refused token: 403, and phoenix.js closes (1008 "forbidden") and retries
    since = js.mark()
    js.send(op="connect", id="b", url=f"ws://127.0.0.1:{server.port}/socket",
            params={}, opts={"authToken": "bad-token"}, transport="longpoll")
    closed = js.wait(lambda e: e.get("id") == "b" and e["ev"] == "close", 10, since)
    assert closed["code"] == 1008
    js.send(op="disconnect", id="b")


def test_a_session_ended_by_the_server_reconnects_and_rejoins(server: ServerProcess,
                                                               js: Driver) -> None:
    connect_lp(js, "k", f"ws://127.0.0.1:{server.port}/socket", {"user_id": "kicked"})
    first = js.join("k", "room:kick", reply=True)
    assert first["ev"] == "join_ok"
    assert js.push("k", "room:kick", "echo", {"n": 1})["resp"] == {"n": 1}
    since = js.mark()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/api/disconnect", body=json.dumps({"id": "user_sockets:kicked"}),
                 headers={"authorization": f"Bearer {API_KEY}",
                          "content-type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    closed = js.wait(lambda e: e.get("id") == "k" and e["ev"] == "close", 10, since)
    assert closed["code"] == 3410  # phoenix.js 1.8: "session_gone"
    js.wait(lambda e: e.get("id") == "k" and e["ev"] == "open", 10, since)
    rejoined = js.wait(lambda e: e.get("id") == "k" and e["ev"] == "join_ok", 10, since)
    assert rejoined["join_ref"] != first["join_ref"]
    assert js.push("k", "room:kick", "echo", {"n": 2})["resp"] == {"n": 2}
