"""LongPoll without sticky sessions: two node processes sharing a private redis-server, with
one client's requests alternating between them (raw HTTP, then phoenix.js's LongPoll behind
a round-robin proxy). A request reaching the node that does not hold its session is served
through the cluster (direct messages over Redis), as Phoenix does through its PubSub.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from channels import longpoll as lp
from tests.cluster.redis_server import RedisServer
from tests.support.client import connect
from tests.support.driver import Driver, driver
from tests.support.longpoll_client import HTTP, LongPollClient, frame
from tests.support.proxy import running_proxy
from tests.support.server import ServerProcess

APP = "tests.matrix.matrix_app:make_endpoint"
SECRET = "a shared secret of the test cluster, 32+ bytes"
ENV = {"TEST_BROADCAST_PERIOD": "0.05", "TEST_DOWN_PERIOD": "1.5",
       "TEST_PERMDOWN_PERIOD": "4", lp.SECRET_ENV: SECRET}


@dataclass
class Cluster:
    redis: RedisServer
    a: ServerProcess
    b: ServerProcess

    def output(self) -> str:
        return "".join(self.a.output[-40:]) + "\n---\n" + "".join(self.b.output[-40:])


def _start(env: dict[str, str]) -> Cluster:
    redis = RedisServer()
    redis.start()
    a, b = (ServerProcess(APP, env=env, args=["--redis-url", redis.url, "--node-name", name])
            for name in ("a", "b"))
    a.start()
    b.start()
    return Cluster(redis, a, b)


def _stop(cluster: Cluster) -> None:
    for node in (cluster.a, cluster.b):
        if node.proc is not None and node.proc.poll() is None:
            try:
                os.kill(node.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        node.kill()
    cluster.redis.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = _start(ENV)
    try:
        yield c
    finally:
        _stop(c)


class Alternating:
    """A LongPoll client whose every request goes to the other node than the one before."""

    def __init__(self, ports: tuple[int, int]) -> None:
        self.client = LongPollClient(ports[0])
        self.conns = [HTTP(ports[0]), HTTP(ports[1])]
        self.turn = 0
        self.sent_to: list[int] = []

    def next(self) -> HTTP:
        conn = self.conns[self.turn % 2]
        self.turn += 1
        self.sent_to.append(conn.port)
        return conn

    async def poll(self) -> dict[str, Any]:
        return await self.client.poll(via=self.next())

    async def post(self, *messages: bytes) -> dict[str, Any]:
        return dict((await self.client.post(*messages, via=self.next())).json())

    async def until(self, pred: Any, timeout: float = 10.0) -> Any:
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for m in self.client.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.client.messages)
                body = await self.poll()
                assert body["status"] in (200, 204), body

    async def aclose(self) -> None:
        for conn in self.conns:
            await conn.aclose()
        await self.client.aclose()


async def test_requests_alternating_between_two_nodes(cluster: Cluster) -> None:
    ports = (cluster.a.port, cluster.b.port)
    alt = Alternating(ports)
    c = alt.client
    first = json.loads((await c.get(token="", via=alt.next())).body)
    assert first["status"] == 410
    c.token = first["token"]
    # the session lives on node a: every other request reaches it through node b
    assert await alt.post(frame("1", "1", "room:alt", "phx_join", {"reply": True})) == \
        {"status": 200}
    join = await alt.until(lambda m: m[3] == "phx_reply" and m[1] == "1")
    assert join[4] == {"status": "ok", "response": {"joined": "room:alt"}}
    async with connect(cluster.b.port) as ws:
        await ws.join("room:alt", "1", "1")
        # pushes and their replies, through either node, in order
        for i in range(6):
            assert await alt.post(frame("1", f"e{i}", "room:alt", "echo", {"i": i})) == \
                {"status": 200}
        replies = []
        with trio.fail_after(10):
            while len(replies) < 6:
                await alt.poll()
                replies = [m for m in c.messages if m[3] == "phx_reply" and m[1].startswith("e")]
        assert [m[4]["response"]["i"] for m in replies] == list(range(6))
        # a batch of 50 through node b is handled on node a in order
        batch = [frame("1", f"b{i}", "room:alt", "echo", {"i": i}) for i in range(50)]
        if alt.turn % 2 == 0:
            alt.next()  # make the batch go to node b
        assert await alt.post(*batch) == {"status": 200}
        await alt.until(lambda m: m[3] == "phx_reply" and m[1] == "b49")
        assert [m[1] for m in c.messages if m[3] == "phx_reply" and m[1].startswith("b")] == \
            [f"b{i}" for i in range(50)]
        # a broadcast from the LongPoll client reaches the WebSocket client on node b ...
        await alt.post(frame("1", "s1", "room:alt", "shout", {"from": "lp"}))
        assert (await ws.recv_until("shout"))[4] == {"from": "lp"}
        # ... and one from it reaches the LongPoll client's poll, waiting on either node
        for n in range(2):
            got: list[float] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_shout, alt, n, got)
                await trio.sleep(0.3)
                await ws.send("1", f"w{n}", "room:alt", "shout", {"n": n})
            assert got[0] < 3.0  # it came when sent, not at the end of the window
    assert set(alt.sent_to) == set(ports)
    await alt.aclose()


async def test_the_owner_dies_and_the_client_starts_over_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.a.port, cluster.b.port
    c = LongPollClient(a)
    await c.connect()
    await c.join("room:die")
    via_b = HTTP(b)
    assert (await c.poll(via=via_b))["status"] in (200, 204)
    cluster.a.kill()
    # node b gets no answer from a within PUBSUB_TIMEOUT: a new session, on b
    start = trio.current_time()
    body = (await c.get(via=via_b)).json()
    assert body["status"] == 410 and body["token"] != c.token
    assert lp.PUBSUB_TIMEOUT <= trio.current_time() - start < lp.PUBSUB_TIMEOUT + 2
    assert json.loads(_token_data(body["token"]))["d"][1] == "b"
    resp = await c.post(frame("1", "2", "room:die", "echo", {}), via=via_b)
    assert resp.json() == {"status": 410}  # the old session is gone (answered in 2 s)
    await via_b.aclose()
    await c.aclose()


async def _wait_shout(alt: Alternating, n: int, got: list[float]) -> None:
    start = trio.current_time()
    await alt.until(lambda m: m[3] == "shout" and m[4].get("n") == n)
    got.append(trio.current_time() - start)


def _token_data(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_without_a_shared_secret_nodes_refuse_each_others_tokens() -> None:
    env = {k: v for k, v in ENV.items() if k != lp.SECRET_ENV}
    c_ = _start(env)
    try:
        assert "Give every node the same secret key" in "".join(c_.a.output)
        c = LongPollClient(c_.a.port)
        await c.connect()
        body = (await c.get(via=HTTP(c_.b.port))).json()
        assert body["status"] == 410 and body["token"] != c.token  # b cannot read a's token
        await c.aclose()
    finally:
        _stop(c_)


def test_phoenix_js_longpoll_behind_a_round_robin_proxy(cluster: Cluster) -> None:
    ports = (cluster.a.port, cluster.b.port)
    with running_proxy(ports, round_robin=True) as proxy, driver() as js:
        _connect_lp(js, "lp", f"ws://127.0.0.1:{proxy.port}/presence")
        js.connect("ws_b", f"ws://127.0.0.1:{cluster.b.port}/presence")
        assert js.join("lp", "room:rr", user="lp")["ev"] == "join_ok"
        assert js.join("ws_b", "room:rr", user="ws_b")["ev"] == "join_ok"
        both = js.wait_presence("lp", "room:rr", lambda p: set(p) == {"lp", "ws_b"}, 15)
        assert len(both["lp"]) == 1
        js.wait_presence("ws_b", "room:rr", lambda p: set(p) == {"lp", "ws_b"}, 15)
        for i in range(5):
            reply = js.push("lp", "room:rr", "shout", {"i": i})
            assert reply["status"] == "ok"
        since = 0
        for i in range(5):
            js.wait(lambda e, i=i: e.get("id") == "ws_b" and e.get("ev") == "message"
                    and e.get("event") == "shout" and e["payload"] == {"i": i}, 10, since)
        js.push("ws_b", "room:rr", "shout", {"from": "b"})
        js.wait(lambda e: e.get("id") == "lp" and e.get("ev") == "message"
                and e["payload"] == {"from": "b"}, 10)
        lp_requests = [(m, port) for m, path, port, status in proxy.log if "/longpoll" in path]
        assert {port for _, port in lp_requests} == set(ports), proxy.log
        assert {m for m, _ in lp_requests} == {"GET", "POST"}
        assert all(status == 200 for _, path, _, status in proxy.log if "/longpoll" in path)
        # one session for the whole run: it never had to start over
        assert sum(1 for e in js.events if e.get("id") == "lp" and e["ev"] == "open") == 1


def _connect_lp(js: Driver, cid: str, url: str, **params: Any) -> None:
    since = js.mark()
    js.send(op="connect", id=cid, url=url, params=params, transport="longpoll")
    js.wait(lambda e: e.get("id") == cid and e["ev"] == "open", 10, since)
