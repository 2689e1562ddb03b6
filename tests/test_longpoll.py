"""The LongPoll transport over raw HTTP (h11 over trio sockets): Phoenix 1.8's wire as
phoenix.js 1.7/1.8 sees it, sessions as full socket sessions, and bad input.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from channels import Channel, Endpoint, Reply
from channels import longpoll as lp
from channels.longpoll import LongPollSession, parse_body
from channels.tokens import sign_token, verify_token
from presence import Presence
from tests.support.app import TERMINATED, UserSocket
from tests.support.client import connect
from tests.support.longpoll_client import HTTP, LongPollClient, frame

JSON = "application/json; charset=utf-8"


class FastSocket(UserSocket):
    """Polls wait 0.3 s; a session without polls ends after 0.45 s."""

    longpoll_window = 0.3


async def serve(nursery: trio.Nursery, *sockets: tuple[str, type[Any]],
                **kwargs: Any) -> tuple[Endpoint, int]:
    ep = Endpoint(dict(sockets or [("/socket", UserSocket)]), **kwargs)
    port = await nursery.start(ep.serve, "127.0.0.1", 0)
    return ep, port


@pytest.fixture
async def client(endpoint: Endpoint) -> AsyncIterator[LongPollClient]:
    c = LongPollClient(endpoint.port)  # type: ignore[attr-defined]
    yield c
    await c.aclose()


async def until(cond: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 - conditions on the endpoint's state
            await trio.sleep(0.01)


# -- the handshake -----------------------------------------------------------------------


async def test_first_get_starts_a_session_with_a_signed_token(endpoint: Endpoint) -> None:
    c = LongPollClient(endpoint.port, query="vsn=2.0.0&user_id=ada")  # type: ignore[attr-defined]
    resp = await c.get(token="")
    assert resp.status == 200
    # the key order of Phoenix's JSON (Elixir maps are sorted)
    assert resp.body.startswith(b'{"messages":[],"status":410,"token":"')
    assert resp.headers["content-type"] == JSON
    assert resp.headers["access-control-allow-origin"] == "*"
    assert resp.headers["cache-control"] == "no-store"
    token = resp.json()["token"]
    node, sid = endpoint.longpoll.resolve(token) or ("", "")
    assert node == "local" and sid in endpoint.longpoll.sessions
    assert verify_token(endpoint.longpoll.secret, lp.SALT, token) == ["v1", "local", sid]
    session = endpoint.longpoll.sessions[sid]
    assert isinstance(session, LongPollSession) and session in endpoint.sessions
    assert session.socket.assigns["user_id"] == "ada"
    await c.aclose()


async def test_connect_sees_params_and_the_auth_token_header(endpoint: Endpoint) -> None:
    c = LongPollClient(endpoint.port, query="vsn=2.0.0&user_id=ada&x[y]=1",  # type: ignore[attr-defined]
                       headers=[("x-phoenix-authtoken", "s3cret"), ("user-agent", "lp-test")])
    assert (await c.connect())["status"] == 410
    reply = await c.join("info")
    info = reply[4]["response"]
    assert reply[4]["status"] == "ok"
    assert info["auth_token"] == "s3cret"
    assert info["params"] == {"vsn": "2.0.0", "user_id": "ada", "x": {"y": "1"}}
    assert info["path"] == "/socket/longpoll" and info["user_agent"] == "lp-test"
    # the token is not in the headers a socket might log
    assert ["x-phoenix-authtoken", "[FILTERED]"] in info["x_headers"]
    await c.aclose()


@pytest.mark.parametrize("query,headers", [
    ("vsn=2.0.0&reject=1", []),
    ("vsn=3.0.0", []),
    ("vsn=2.0.0", [("x-phoenix-authtoken", "bad-token")]),
])
async def test_a_refused_connect_answers_403(endpoint: Endpoint, query: str,
                                             headers: list[tuple[str, str]]) -> None:
    c = LongPollClient(endpoint.port, query=query, headers=headers)  # type: ignore[attr-defined]
    resp = await c.get(token="")
    assert (resp.status, resp.body) == (200, b'{"status":403}')
    assert not endpoint.longpoll.sessions
    await c.aclose()


async def test_refuse_with_another_status_is_plain_http(endpoint: Endpoint) -> None:
    # phoenix.js knows only 403 here; another status is a plain HTTP error (it retries)
    c = LongPollClient(endpoint.port, query="vsn=2.0.0&rate_limit=1")  # type: ignore[attr-defined]
    resp = await c.get(token="")
    assert resp.status == 429 and resp.body == b"slow down\n"
    await c.aclose()


async def test_unknown_forged_or_expired_tokens_start_a_new_session(
        endpoint: Endpoint, client: LongPollClient) -> None:
    first = await client.connect()
    secret = endpoint.longpoll.secret
    expired = sign_token(secret, lp.SALT, ["v1", "local", first["token"]],
                         max_age=lp.TOKEN_MAX_AGE, now=time.time() - lp.TOKEN_MAX_AGE - 5)
    other_secret = sign_token(b"x" * 32, lp.SALT, ["v1", "local", "abc"])
    gone_sid = sign_token(secret, lp.SALT, ["v1", "local", "no-such-session"])
    tampered = first["token"][:-2] + ("AA" if not first["token"].endswith("AA") else "BB")
    for token in (expired, other_secret, gone_sid, tampered, "garbage", "a.b.c"):
        resp = await client.get(token=token)
        body = resp.json()
        assert (resp.status, body["status"], body["messages"]) == (200, 410, []), token
        assert body["token"] != first["token"]
    assert len(endpoint.longpoll.sessions) == 7


async def test_v1_json_over_longpoll(endpoint: Endpoint) -> None:
    c = LongPollClient(endpoint.port, query="vsn=1.0.0")  # type: ignore[attr-defined]
    assert (await c.connect())["status"] == 410
    msg = json.dumps({"topic": "room:v1", "event": "phx_join", "payload": {"reply": True},
                      "ref": "1"})
    assert (await c.post(msg, ndjson=False)).json() == {"status": 200}
    reply = await c.until(lambda m: m.get("event") == "phx_reply")
    assert reply == {"topic": "room:v1", "event": "phx_reply", "ref": "1",
                     "payload": {"status": "ok", "response": {"joined": "room:v1"}}}
    await c.aclose()


# -- polls and posts ---------------------------------------------------------------------


async def test_join_push_reply_broadcast_and_heartbeat(endpoint: Endpoint,
                                                       client: LongPollClient) -> None:
    await client.connect()
    reply = await client.join("room:lp", {"reply": True})
    assert reply == ["1", "1", "room:lp", "phx_reply",
                     {"status": "ok", "response": {"joined": "room:lp"}}]
    # a batch: two pushes and a heartbeat, answered in order
    big = 18446744073709551616
    resp = await client.post(frame("1", "2", "room:lp", "echo", {"s": 'q"\\\n', "n": big}),
                             frame("1", "3", "room:lp", "shout", {"x": 1}),
                             frame(None, "4", "phoenix", "heartbeat", {}))
    assert (resp.status, resp.body) == (200, b'{"status":200}')
    assert resp.headers["content-type"] == JSON
    assert (await client.reply("2"))[4] == {"status": "ok",
                                            "response": {"s": 'q"\\\n', "n": big}}
    assert (await client.reply("4")) == [None, "4", "phoenix", "phx_reply",
                                         {"status": "ok", "response": {}}]
    shout = await client.until(lambda m: m[3] == "shout")
    assert shout == [None, None, "room:lp", "shout", {"x": 1}]
    # one message without ndjson (phoenix.js before 1.7)
    resp = await client.post(frame("1", "5", "room:lp", "echo", {"one": True}), ndjson=False)
    assert resp.json() == {"status": 200}
    assert (await client.reply("5"))[4]["response"] == {"one": True}


async def test_poll_waits_for_messages_then_answers_204(nursery: trio.Nursery) -> None:
    ep, port = await serve(nursery, ("/socket", FastSocket))
    c = LongPollClient(port)
    await c.connect()
    await c.join("room:wait")
    await c.until(lambda m: m[3] == "user_entered")
    start = trio.current_time()
    resp = await c.get()
    assert resp.status == 200 and resp.json()["status"] == 204
    assert resp.json() == {"messages": [], "status": 204, "token": c.token}
    assert 0.25 < trio.current_time() - start < 1.0

    async def later() -> None:
        await trio.sleep(0.1)
        await ep.broadcast("room:wait", "news", {"n": 1})

    nursery.start_soon(later)
    start = trio.current_time()
    body = await c.poll()
    assert body["status"] == 200 and trio.current_time() - start < 0.25
    assert c.messages[-1] == [None, None, "room:wait", "news", {"n": 1}]
    await c.aclose()


async def test_a_session_without_polls_ends(nursery: trio.Nursery) -> None:
    ep, port = await serve(nursery, ("/socket", FastSocket))
    c = LongPollClient(port)
    await c.connect()
    await c.join("room:idle")
    await c.poll()
    TERMINATED.clear()
    sid = next(iter(ep.longpoll.sessions))
    await until(lambda: sid not in ep.longpoll.sessions, 3)
    assert ("room:idle", "closed") in TERMINATED
    assert ep.counters.idle_closes == 1
    assert not ep.sessions
    assert (await c.post(frame("1", "2", "room:idle", "echo", {}))).json() == {"status": 410}
    # the token of an ended session starts a new one (phoenix.js 1.8 then reconnects)
    body = (await c.get()).json()
    assert body["status"] == 410 and body["token"] != c.token
    await c.aclose()


async def test_polls_keep_a_session_alive(nursery: trio.Nursery) -> None:
    ep, port = await serve(nursery, ("/socket", FastSocket))
    c = LongPollClient(port)
    await c.connect()
    with trio.move_on_after(1.5):
        while True:
            assert (await c.poll())["status"] in (200, 204)
    assert len(ep.longpoll.sessions) == 1 and ep.counters.idle_closes == 0
    await c.aclose()


async def test_a_newer_poll_answers_the_waiting_one_at_once(endpoint: Endpoint,
                                                            client: LongPollClient) -> None:
    await client.connect()
    other = HTTP(endpoint.port)  # type: ignore[attr-defined]
    results: list[tuple[str, float, dict[str, Any]]] = []

    async def poll(name: str, via: HTTP) -> None:
        start = trio.current_time()
        resp = await client.get(via=via)
        results.append((name, trio.current_time() - start, resp.json()))

    async with trio.open_nursery() as n:
        n.start_soon(poll, "first", client.poller)
        await trio.sleep(0.2)
        n.start_soon(poll, "second", other)
        await trio.sleep(0.2)
        await endpoint.broadcast("room:none", "x", {})  # not subscribed: nothing
        session = next(iter(endpoint.longpoll.sessions.values()))
        session.send_push(None, "room:direct", "hello", {"to": "second"})
    first, second = results
    assert first[0] == "first" and first[2]["status"] == 204 and first[1] < 0.5
    assert second[0] == "second" and second[2]["status"] == 200
    assert [json.loads(m)[3] for m in second[2]["messages"]] == ["hello"]
    await other.aclose()


async def test_a_poll_flood_keeps_one_waiting_poll(endpoint: Endpoint,
                                                   client: LongPollClient) -> None:
    await client.connect()
    session = next(iter(endpoint.longpoll.sessions.values()))
    conns = [HTTP(endpoint.port) for _ in range(50)]  # type: ignore[attr-defined]
    statuses: list[int] = []

    async def poll(via: HTTP) -> None:
        statuses.append((await client.get(via=via)).json()["status"])

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            for conn in conns:
                n.start_soon(poll, conn)
                await trio.sleep(0.01)
            await until(lambda: len(statuses) >= 49)
            # all but the newest were answered at once; one waits
            assert statuses == [204] * 49
            assert session.conn.waiter is not None
            session.send_push(None, "room:x", "wake", {})
    assert statuses[-1] == 200
    for conn in conns:
        await conn.aclose()


async def test_websocket_and_longpoll_subscribers_get_their_own_bytes(
        endpoint: Endpoint, client: LongPollClient) -> None:
    port = endpoint.port  # type: ignore[attr-defined]
    await client.connect()
    await client.join("room:mixed")
    async with connect(port) as ws, connect(port, vsn="1.0.0") as ws1:
        await ws.join("room:mixed", "1", "1")
        await ws1.join("room:mixed", None, "1")  # type: ignore[arg-type]
        await endpoint.broadcast("room:mixed", "both", {"n": 1})
        assert await ws.recv_until("both") == [None, None, "room:mixed", "both", {"n": 1}]
        assert (await ws1.recv_until("both"))[4] == {"n": 1}
        got = await client.until(lambda m: m[3] == "both")
        assert got == [None, None, "room:mixed", "both", {"n": 1}]
        # a push from the LongPoll client reaches the WebSocket one
        await client.push("1", "9", "room:mixed", "shout", {"from": "lp"})
        assert (await ws.recv_until("shout"))[4] == {"from": "lp"}


async def test_binary_push_in_and_binary_messages_not_out(endpoint: Endpoint,
                                                          client: LongPollClient) -> None:
    port = endpoint.port  # type: ignore[attr-defined]
    await client.connect()
    await client.join("room:bin")
    async with connect(port) as ws:
        await ws.join("room:bin", "1", "1")
        # a binary push is a base64 line (phoenix.js 1.7+)
        from channels.serializer import encode_client_binary_push
        data = encode_client_binary_push("1", "7", "room:bin", "bin_broadcast", b"\x00\xffhi")
        assert (await client.push_binary(data)) == {"status": 200}
        assert (await client.reply("7"))[4] == {"status": "ok", "response": {}}
        # the WebSocket client gets the binary broadcast; LongPoll cannot carry it
        assert (await ws.recv_until("bin"))[4] == b"\x00\xffhi"
        await client.push("1", "8", "room:bin", "echo", {"after": True})
        await client.reply("8")
        assert not [m for m in client.messages if m[3] == "bin"]


async def test_presence_over_longpoll(nursery: trio.Nursery) -> None:
    from tests.support.presence_app import PresenceSocket, presence

    _, port = await serve(nursery, ("/presence", PresenceSocket), presence=presence)
    a = LongPollClient(port, path="/presence/longpoll")
    await a.connect()
    await a.join("room:p", {"user": "ada"})
    state = await a.until(lambda m: m[3] == "presence_state" and "ada" in m[4])
    assert len(state[4]["ada"]["metas"]) == 1
    async with connect(port, path="/presence/websocket") as ws:
        await ws.join("room:p", "1", "1", {"user": "bob"})
        diff = await a.until(lambda m: m[3] == "presence_diff" and "bob" in m[4]["joins"])
        assert diff[4]["leaves"] == {}
    await a.until(lambda m: m[3] == "presence_diff" and "bob" in m[4]["leaves"])
    await a.aclose()
    assert isinstance(presence, Presence)


# -- the end of a session ----------------------------------------------------------------


async def test_disconnect_broadcast_ends_the_session_and_the_waiting_poll(
        endpoint: Endpoint) -> None:
    c = LongPollClient(endpoint.port, query="vsn=2.0.0&user_id=zed")  # type: ignore[attr-defined]
    await c.connect()
    await c.join("room:d")
    await c.until(lambda m: m[3] == "user_entered")
    results: list[dict[str, Any]] = []

    async def poll() -> None:
        results.append((await c.get()).json())

    async with trio.open_nursery() as n:
        n.start_soon(poll)
        await trio.sleep(0.1)
        await endpoint.broadcast("user_sockets:zed", "disconnect", {})
    assert results == [{"status": 410}]
    await until(lambda: not endpoint.longpoll.sessions and not endpoint.sessions)
    await c.aclose()


async def test_drain_answers_waiting_polls_and_refuses_new_sessions(nursery: trio.Nursery) -> None:
    ep, port = await serve(nursery, ("/socket", UserSocket))
    clients = [LongPollClient(port) for _ in range(3)]
    for c in clients:
        await c.connect()
        await c.join("room:drain")
    answers: list[dict[str, Any]] = []

    async def poll(c: LongPollClient) -> None:
        with trio.move_on_after(5):
            while True:
                body = await c.poll()
                if body["status"] == 410:
                    answers.append(body)
                    return

    async with trio.open_nursery() as n:
        for c in clients:
            n.start_soon(poll, c)
        await trio.sleep(0.2)
        ep.draining = True  # new sessions refused while the others end
        late = LongPollClient(port)
        resp = await late.get(token="")
        assert resp.status == 503 and resp.body == b"server is shutting down\n"
        start = trio.current_time()
        await ep.drain()
        assert trio.current_time() - start < 2.0
    assert answers == [{"status": 410}] * 3


async def test_slow_consumer_ends_the_session_not_the_others(nursery: trio.Nursery) -> None:
    class Small(FastSocket):
        max_buffer = 20_000
        longpoll_window = 1.0

    ep, port = await serve(nursery, ("/socket", Small))
    slow, fast = LongPollClient(port), LongPollClient(port)
    for c in (slow, fast):
        await c.connect()
        await c.join("room:flood")
    got = 0

    async def reader() -> None:
        nonlocal got
        while got < 200:
            await fast.poll()
            got = len([m for m in fast.messages if m[3] == "flood"])

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        for i in range(200):
            await ep.broadcast("room:flood", "flood", {"i": i, "pad": "x" * 200})
            await trio.sleep(0.001)
    assert [m[4]["i"] for m in fast.messages if m[3] == "flood"] == list(range(200))
    assert ep.counters.slow_consumers == 1
    assert len(ep.longpoll.sessions) == 1
    body = (await slow.get()).json()  # its session is gone: a new one
    assert body["status"] == 410 and body["token"] != slow.token
    for c in (slow, fast):
        await c.aclose()


# -- CORS, origins, methods ----------------------------------------------------------------


async def test_cors_preflight_origin_check_and_other_methods(endpoint: Endpoint) -> None:
    http = HTTP(endpoint.port)  # type: ignore[attr-defined]
    pre = await http.request("OPTIONS", "/socket/longpoll?vsn=2.0.0", headers=[
        ("origin", "https://example.com"), ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type, x-phoenix-authtoken")])
    assert pre.status == 200 and pre.body == b""
    assert pre.headers["access-control-allow-origin"] == "*"
    assert pre.headers["access-control-allow-headers"] == "content-type, x-phoenix-authtoken"
    assert pre.headers["access-control-allow-methods"] == "get, post, options"
    assert pre.headers["access-control-max-age"] == "3600"
    ok = await http.request("GET", "/socket/longpoll?vsn=2.0.0",
                            headers=[("origin", "https://sub.allowed.test")])
    assert ok.json()["status"] == 410
    bad = await http.request("GET", "/socket/longpoll?vsn=2.0.0",
                             headers=[("origin", "https://evil.test")])
    assert (bad.status, bad.body) == (200, b'{"status":403}')
    assert bad.headers["access-control-allow-origin"] == "*"
    for method in ("PUT", "DELETE", "HEAD"):
        resp = await http.request(method, "/socket/longpoll?vsn=2.0.0")
        assert (resp.status, resp.body) == (400, b""), method
    assert len(endpoint.longpoll.sessions) == 1
    await http.aclose()


async def test_transports_can_be_switched_off(nursery: trio.Nursery) -> None:
    class NoWebSocket(UserSocket):
        websocket = False

    class NoLongPoll(UserSocket):
        longpoll = False

    _, port = await serve(nursery, ("/lp", NoWebSocket), ("/ws", NoLongPoll))
    http = HTTP(port)
    assert (await http.request("GET", "/lp/websocket?vsn=2.0.0")).status == 404
    assert (await http.request("GET", "/ws/longpoll?vsn=2.0.0")).status == 404
    assert (await http.request("GET", "/lp/longpoll?vsn=2.0.0")).json()["status"] == 410
    async with connect(port, path="/ws/websocket") as ws:
        assert (await ws.join("room:x", "1", "1"))[4]["status"] == "ok"
    await http.aclose()


# -- bad input -----------------------------------------------------------------------------


def test_parse_body() -> None:
    nd = "application/x-ndjson"
    assert parse_body(b'["1"]\r\n\n["2"]\n', nd) == [(b'["1"]', False), (b'["2"]', False)]
    assert parse_body(base64.b64encode(b"\x00\x01") + b"\n{}", nd) == \
        [(b"\x00\x01", True), (b"{}", False)]
    assert parse_body(b'["1"]\n["2"]', "application/json") == [(b'["1"]\n["2"]', False)]
    assert parse_body(b"x", None) == [(b"x", False)]
    assert len(parse_body(b"\n".join([b"[]"] * 100), nd + "; charset=utf-8")) == 100
    with pytest.raises(lp._BadBody) as over:
        parse_body(b"\n".join([b"[]"] * 101), nd)
    assert over.value.status == 413
    with pytest.raises(lp._BadBody) as bad:
        parse_body(b"not base64!", nd)
    assert bad.value.status == 400


async def test_posts_without_a_session_answer_410(endpoint: Endpoint) -> None:
    c = LongPollClient(endpoint.port)  # type: ignore[attr-defined]
    forged = sign_token(b"y" * 32, lp.SALT, ["v1", "local", "x"])
    for token in ("", "junk", forged):
        resp = await c.post(frame("1", "1", "room:x", "phx_join", {}), token=token)
        assert (resp.status, resp.body) == (200, b'{"status":410}'), token
    assert not endpoint.longpoll.sessions
    await c.aclose()


async def test_bad_bodies_get_clear_statuses_and_touch_nobody_else(endpoint: Endpoint) -> None:
    port = endpoint.port  # type: ignore[attr-defined]
    bystander = LongPollClient(port)
    await bystander.connect()
    await bystander.join("room:bad")
    async with connect(port) as ws:
        await ws.join("room:bad", "1", "1")

        async def fresh() -> LongPollClient:
            c = LongPollClient(port)
            await c.connect()
            await c.join("room:bad")
            return c

        # a body over the limit: 413 before it is read, the connection closed
        c = await fresh()
        huge = await c.poster.request("POST", c.target(), b"", raw_body=True, headers=[
            ("content-type", "application/x-ndjson"),
            ("content-length", str(lp.MAX_BODY + 1))])
        assert (huge.status, huge.body) == (413, b'{"status":413}')
        assert huge.headers["connection"] == "close"
        # more than 100 messages in a batch: 413, none handled
        many = await c.post(*[frame("1", f"n{i}", "room:bad", "echo", {}) for i in range(101)])
        assert (many.status, many.body) == (413, b'{"status":413}')
        # a line that is neither JSON nor base64: 400, nothing handled
        bad = await c.post(frame("1", "x1", "room:bad", "echo", {}), b"%%%")
        assert (bad.status, bad.body) == (400, b'{"status":400}')
        # the session lives on after those
        assert (await c.push("1", "ok1", "room:bad", "echo", {"a": 1})) == {"status": 200}
        assert (await c.reply("ok1"))[4]["response"] == {"a": 1}
        assert not [m for m in c.messages if m[1] in [f"n{i}" for i in range(101)] + ["x1"]]
        # a message over max_frame_size ends the session (as 1009 does): 413
        big = frame("1", "b", "room:bad", "echo", {"x": "y" * (64 * 1024)})
        assert (await c.post(big)).json() == {"status": 413}
        assert (await c.post(frame("1", "2", "room:bad", "echo", {}))).json() == {"status": 410}
        # malformed JSON ends the session (as 1007 does): 400
        c2 = await fresh()
        resp = await c2.post(b'["1","1","room:bad"')
        assert (resp.status, resp.body) == (400, b'{"status":400}')
        # what was queued, then gone (a new session)
        while (body := await c2.poll())["status"] == 200:
            pass
        assert body["status"] == 410 and body.get("token") != c2.token
        # a non-JSON POST body without ndjson is one malformed message
        c3 = await fresh()
        assert (await c3.post(b"hello", ndjson=False)).json() == {"status": 400}
        # everyone else is fine
        await endpoint.broadcast("room:bad", "still", {"ok": True})
        assert (await ws.recv_until("still"))[4] == {"ok": True}
        assert (await bystander.until(lambda m: m[3] == "still"))[4] == {"ok": True}
        for x in (c, c2, c3):
            await x.aclose()
    await bystander.aclose()


async def test_slow_body_and_chunked_bodies(endpoint: Endpoint) -> None:
    port = endpoint.port  # type: ignore[attr-defined]
    c = LongPollClient(port)
    await c.connect()
    await c.join("room:chunk")
    # a chunked body (read whole, then handled)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    body = frame("1", "c1", "room:chunk", "echo", {"chunked": True})
    await stream.send_all(
        f"POST {c.target()} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        f"content-type: application/x-ndjson\r\n\r\n{len(body):x}\r\n".encode() + body +
        b"\r\n0\r\n\r\n")
    got = b""
    with trio.fail_after(5):
        while b'{"status":200}' not in got:
            got += await stream.receive_some(4096)
    assert (await c.reply("c1"))[4]["response"] == {"chunked": True}
    await stream.aclose()


async def test_concurrent_posts_are_bounded_and_ordered(nursery: trio.Nursery) -> None:
    class SlowChannel(Channel):
        async def handle_in(self, event: str, payload: Any) -> Reply | None:
            await trio.sleep(0.05)
            return Reply.ok(payload)

    class Sock(UserSocket):
        channels = {"slow:*": SlowChannel}
        unhandled_high_water = 2
        unhandled_low_water = 1
        max_push_age = None  # the later POSTs wait ~1 s for the earlier ones

    _, port = await serve(nursery, ("/socket", Sock))
    c = LongPollClient(port)
    await c.connect()
    await c.join("slow:1")
    conns = [HTTP(port) for _ in range(8)]
    statuses: list[int] = []

    async def post(i: int, via: HTTP) -> None:
        msgs = [frame("1", f"{i}-{j}", "slow:1", "n", {"i": i, "j": j}) for j in range(5)]
        statuses.append((await c.post(*msgs, via=via)).json()["status"])

    async with trio.open_nursery() as n:
        for i, conn in enumerate(conns):
            n.start_soon(post, i, conn)
            await trio.sleep(0.005)
    assert statuses.count(200) == lp.MAX_POSTS and statuses.count(429) == 8 - lp.MAX_POSTS
    replies: list[Any] = []
    with trio.fail_after(10):
        while len(replies) < 5 * lp.MAX_POSTS:
            await c.poll()
            replies = [m for m in c.messages if m[3] == "phx_reply" and m[1] != "1"]
    # each POST's messages were handled in order, one POST after the other
    order = [tuple(m[4]["response"].values()) for m in replies]
    for i in {i for i, _ in order}:
        assert [j for k, j in order if k == i] == list(range(5))
    for conn in conns:
        await conn.aclose()
    await c.aclose()


async def test_secret_key_config(monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    from channels.config import ConfigError

    assert Endpoint({"/socket": UserSocket}).longpoll.secret_generated
    assert Endpoint({"/socket": UserSocket}, secret_key="k" * 32).longpoll.secret == b"k" * 32
    monkeypatch.setenv(lp.SECRET_ENV, "e" * 40)
    ep = Endpoint({"/socket": UserSocket})
    assert ep.longpoll.secret == b"e" * 40 and not ep.longpoll.secret_generated
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Endpoint({"/socket": UserSocket}, secret_key="short").check()
    monkeypatch.delenv(lp.SECRET_ENV)

    from channels.pubsub import Adapter, PubSub

    class ClusterAdapter(Adapter):  # another node could exist: only its type matters here
        node_name = "a"

        async def run(self, pubsub: PubSub, *, task_status: Any) -> None:
            task_status.started()

        async def publish(self, topic: str, event: str, payload: Any) -> None:
            return None

        async def direct(self, node: str, topic: str, event: str, payload: Any) -> None:
            return None

    ep = Endpoint({"/socket": UserSocket})
    ep.pubsub.adapter = ClusterAdapter()
    ep.longpoll.start()
    assert "Give every node the same secret key" in caplog.text
    caplog.clear()
    ep = Endpoint({"/socket": UserSocket}, secret_key="k" * 32)
    ep.pubsub.adapter = ClusterAdapter()
    ep.longpoll.start()
    assert "same secret key" not in caplog.text


async def test_metrics_count_longpoll_sessions_apart(endpoint: Endpoint,
                                                      client: LongPollClient) -> None:
    from channels.metrics import EndpointCollector

    await client.connect()
    await client.join("room:metrics")
    async with connect(endpoint.port) as ws:  # type: ignore[attr-defined]
        await ws.join("room:metrics", "1", "1")
        [gauge] = [m for m in EndpointCollector(endpoint).collect()
                   if m.name == "channels_connections"]
        by_transport = {s.labels["transport"]: s.value for s in gauge.samples}
        assert by_transport == {"websocket": 1, "longpoll": 1}
